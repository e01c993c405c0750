//! The benchmark's scenarios and the bridge configuration each one runs with.
//!
//! Every scenario names what is under test (the bridge with some routes and
//! maybe a plugin, the mosquitto relay that is the ceiling, or the Python
//! baseline connector) and the load offered to it.

use std::fmt::Write as _;
use std::path::Path;

use rumqttc::QoS;

use crate::load::Format;

/// A WebAssembly plugin from `plugins/dist/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    /// Rust, pre and post hooks that do nothing: the host's own cost.
    Noop,
    /// Rust, pre and post hooks.
    SensorNormalize,
    /// JavaScript (componentize-js), pre and post hooks.
    JsCsv,
    /// Python (componentize-py), pre hook and a fan-out post hook.
    PyFanout,
}

impl Plugin {
    pub fn file(self) -> &'static str {
        match self {
            Plugin::Noop => "noop.wasm",
            Plugin::SensorNormalize => "sensor-normalize.wasm",
            Plugin::JsCsv => "js-csv.wasm",
            Plugin::PyFanout => "py-fanout.wasm",
        }
    }
    /// `transform.config` (a YAML flow mapping or `null`).
    fn config(self) -> &'static str {
        match self {
            Plugin::Noop | Plugin::SensorNormalize | Plugin::JsCsv => "null",
            // Results go to out/fan/<device>/<metric>, under the collector's filter.
            Plugin::PyFanout => "{prefix: out/fan}",
        }
    }
    pub fn format(self) -> Format {
        match self {
            Plugin::Noop => Format::Plain,
            Plugin::SensorNormalize => Format::SensorJson,
            Plugin::JsCsv => Format::Csv,
            Plugin::PyFanout => Format::FanoutJson,
        }
    }
}

/// What is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// `fxbridge run` with this many routes, each with the plugin if any.
    Bridge { routes: u32, plugin: Option<Plugin> },
    /// `mosquitto_sub | mosquitto_pub`: the ceiling (no gRPC).
    Relay,
    /// `bench/baseline_connector.py`: OpenFx's original connector logic.
    Baseline,
    /// Start the bridge twice (cold, then with cached compiled plugins) and
    /// measure start-to-ready and idle RSS; no load.
    Idle { routes: u32, plugin: Option<Plugin> },
}

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Closed loop (window from the command line): peak throughput.
    Closed,
    /// Open loop at the command line's rate: latency.
    Open,
    /// No load.
    NoLoad,
}

/// A second route next to the measured one whose plugin runs into its
/// 100 ms timeout on every message, fed in the background: what a healthy
/// route pays for a stuck neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stuck {
    /// Both routes in one subscriber session (`session: shared`) instead of
    /// one each (the default).
    pub shared_session: bool,
    /// The plugin spins on the CPU until its timeout (the hostile plugin's
    /// `loop`) instead of waiting in a host call (`sleep`): on a 2-core
    /// machine that also takes CPU from the healthy route.
    pub spin: bool,
}

impl Stuck {
    /// The hostile plugin's command.
    pub fn payload(self) -> &'static [u8] {
        if self.spin {
            b"loop"
        } else {
            b"sleep"
        }
    }
}

/// One scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub subject: Subject,
    pub qos: QoS,
    pub size: usize,
    pub topics: u32,
    pub offer: Offer,
    /// The broker's `max_inflight_messages`: 1000 for throughput, mosquitto's
    /// default 20 where acknowledgement order matters.
    pub broker_inflight: u32,
    pub stuck: Option<Stuck>,
    pub mqtt5: bool,
    /// `buffer: {kind: disk}`: through the durable journal.
    pub journal: bool,
}

impl Scenario {
    pub fn format(&self) -> Format {
        match self.subject {
            Subject::Bridge {
                plugin: Some(p), ..
            } => p.format(),
            _ => Format::Plain,
        }
    }
    /// Topic of topic index `t`.
    pub fn topic_name(&self, t: u32) -> String {
        match self.subject {
            Subject::Bridge { routes, .. } if routes > 1 => format!("in/r{}/d{t}", t % routes),
            _ => format!("in/d{t}"),
        }
    }
}

/// The default number of distinct topics of a throughput scenario.
pub const TOPICS: u32 = 100;

/// Every scenario, in the order they run.
pub fn all() -> Vec<Scenario> {
    use Offer::{Closed, NoLoad, Open};
    use QoS::{AtLeastOnce, AtMostOnce};
    let bridge = |routes, plugin| Subject::Bridge { routes, plugin };
    let s = |name, about, subject, qos, size, topics, offer| Scenario {
        name,
        about,
        subject,
        qos,
        size,
        topics,
        offer,
        broker_inflight: 1000,
        stuck: None,
        mqtt5: false,
        journal: false,
    };
    // Head of line: open loop on one route, mosquitto's default window (20),
    // with or without a stuck neighbour, MQTT 3.1.1 or 5.
    let hol = |name, about, stuck, mqtt5| Scenario {
        broker_inflight: 20,
        stuck,
        mqtt5,
        ..s(name, about, bridge(1, None), AtLeastOnce, 64, 10, Open)
    };
    let own = Some(Stuck {
        shared_session: false,
        spin: false,
    });
    let shared = Some(Stuck {
        shared_session: true,
        spin: false,
    });
    let own_spinning = Some(Stuck {
        shared_session: false,
        spin: true,
    });
    vec![
        s(
            "relay-qos1-64",
            "ceiling: mosquitto_sub | mosquitto_pub, no gRPC",
            Subject::Relay,
            AtLeastOnce,
            64,
            TOPICS,
            Closed,
        ),
        s(
            "baseline-qos1-64",
            "OpenFx's original connector (Python, channel per message)",
            Subject::Baseline,
            AtLeastOnce,
            64,
            TOPICS,
            Closed,
        ),
        s(
            "pass-qos1-64",
            "passthrough, 1 route, QoS 1, 64 B",
            bridge(1, None),
            AtLeastOnce,
            64,
            TOPICS,
            Closed,
        ),
        Scenario {
            journal: true,
            ..s(
                "journal-qos1-64",
                "passthrough through the disk journal (buffer: disk), QoS 1, 64 B",
                bridge(1, None),
                AtLeastOnce,
                64,
                TOPICS,
                Closed,
            )
        },
        s(
            "pass-qos1-1k",
            "passthrough, 1 route, QoS 1, 1 KiB",
            bridge(1, None),
            AtLeastOnce,
            1024,
            TOPICS,
            Closed,
        ),
        s(
            "pass-qos1-16k",
            "passthrough, 1 route, QoS 1, 16 KiB",
            bridge(1, None),
            AtLeastOnce,
            16 * 1024,
            TOPICS,
            Closed,
        ),
        s(
            "pass-qos0-64",
            "passthrough, 1 route, QoS 0 in and out, 64 B",
            bridge(1, None),
            AtMostOnce,
            64,
            TOPICS,
            Closed,
        ),
        s(
            "routes50-qos1-64",
            "50 routes (in/r<k>/+), load spread over all",
            bridge(50, None),
            AtLeastOnce,
            64,
            TOPICS,
            Closed,
        ),
        s(
            "topics1-qos1-64",
            "1 topic: per-topic order serialises everything",
            bridge(1, None),
            AtLeastOnce,
            64,
            1,
            Closed,
        ),
        s(
            "topics1000-qos1-64",
            "1,000 distinct topics, per-topic order checked",
            bridge(1, None),
            AtLeastOnce,
            64,
            1000,
            Closed,
        ),
        s(
            "open-pass-qos1-64",
            "open loop at --rate, passthrough: latency",
            bridge(1, None),
            AtLeastOnce,
            64,
            TOPICS,
            Open,
        ),
        s(
            "open-relay-qos1-64",
            "open loop at --rate, relay: latency floor",
            Subject::Relay,
            AtLeastOnce,
            64,
            TOPICS,
            Open,
        ),
        s(
            "plugin-noop-prepost",
            "noop (Rust) pre+post hooks: the host's cost per message, no plugin work",
            bridge(1, Some(Plugin::Noop)),
            AtLeastOnce,
            64,
            TOPICS,
            Closed,
        ),
        s(
            "plugin-rust-prepost",
            "sensor-normalize (Rust) pre+post hooks",
            bridge(1, Some(Plugin::SensorNormalize)),
            AtLeastOnce,
            64,
            TOPICS,
            Closed,
        ),
        s(
            "plugin-js-csv",
            "js-csv (JavaScript) pre+post hooks",
            bridge(1, Some(Plugin::JsCsv)),
            AtLeastOnce,
            64,
            TOPICS,
            Closed,
        ),
        s(
            "plugin-py-fanout",
            "py-fanout (Python) pre hook + fan-out post hook (2 results per input)",
            bridge(1, Some(Plugin::PyFanout)),
            AtLeastOnce,
            64,
            TOPICS,
            Closed,
        ),
        hol(
            "hol-alone-311",
            "head of line: one healthy route, open loop, window 20 (the reference)",
            None,
            false,
        ),
        hol(
            "hol-stuck-own-311",
            "head of line: + a route stuck 100 ms per message (waiting), each in its own session (default)",
            own,
            false,
        ),
        hol(
            "hol-stuck-shared-311",
            "head of line: + a stuck route sharing the healthy route's session",
            shared,
            false,
        ),
        hol(
            "hol-spin-own-311",
            "head of line: + a route whose plugin spins 100 ms on the CPU per message, own session",
            own_spinning,
            false,
        ),
        hol(
            "hol-alone-5",
            "head of line, MQTT 5: one healthy route (the reference)",
            None,
            true,
        ),
        hol(
            "hol-stuck-shared-5",
            "head of line, MQTT 5: a stuck route sharing the session (Receive Maximum 1000)",
            shared,
            true,
        ),
        s(
            "idle-10plain",
            "10 routes, no plugin: idle RSS, start-to-ready",
            Subject::Idle {
                routes: 10,
                plugin: None,
            },
            AtLeastOnce,
            64,
            TOPICS,
            NoLoad,
        ),
        s(
            "idle-10rust",
            "10 routes with sensor-normalize: idle RSS, start-to-ready cold and cached",
            Subject::Idle {
                routes: 10,
                plugin: Some(Plugin::SensorNormalize),
            },
            AtLeastOnce,
            64,
            TOPICS,
            NoLoad,
        ),
    ]
}

fn qos_num(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// Ports and paths a bridge configuration needs.
pub struct BridgeEnv<'a> {
    pub broker_port: u16,
    pub gateway_port: u16,
    pub admin_port: u16,
    pub plugins_dir: &'a Path,
    pub cache_dir: &'a Path,
}

/// What a bridge configuration adds for a head-of-line scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    pub stuck: Option<Stuck>,
    pub mqtt5: bool,
    /// The journal's file, for a scenario through the disk journal.
    pub journal: Option<&'a Path>,
}

/// The topic the stuck neighbour's messages go to (`stuck/<k>`).
pub const STUCK_PREFIX: &str = "stuck";

/// The bridge.yaml of `routes` routes (each with `plugin`, if any) at `qos`.
pub fn bridge_yaml(
    name: &str,
    routes: u32,
    plugin: Option<Plugin>,
    qos: QoS,
    env: &BridgeEnv<'_>,
    extras: Extras<'_>,
) -> String {
    let q = qos_num(qos);
    let mut y = format!(
        "# Generated by fxbridge-bench for scenario {name}.\n\
mqtt:\n  url: mqtt://127.0.0.1:{bp}\n  client_id: fxbridge-bench\n  protocol: \"{proto}\"\n  \
persistent_session: false\n  max_pending: 1000\n\
gateway:\n  url: http://127.0.0.1:{gp}\n  timeout: 10s\n  max_concurrent: 64\n\
admin:\n  listen: 127.0.0.1:{ap}\n\
plugins:\n  cache_dir: {cache}\n\
shutdown:\n  drain_timeout: 1s\n\
routes:\n",
        bp = env.broker_port,
        proto = if extras.mqtt5 { "5" } else { "3.1.1" },
        gp = env.gateway_port,
        ap = env.admin_port,
        cache = env.cache_dir.display(),
    );
    if let Some(path) = extras.journal {
        y = y.replacen(
            "routes:\n",
            &format!(
                "buffer: {{kind: disk, path: {:?}}}\nroutes:\n",
                path.display().to_string()
            ),
            1,
        );
    }
    for k in 0..routes {
        let filter = if routes == 1 {
            "in/+".to_string()
        } else {
            format!("in/r{k}/+")
        };
        let _ = write!(
            y,
            "  - name: r{k}\n    topic: {filter}\n    qos: {q}\n    function: echo\n    \
republish: {{topic: \"out/{{1}}\", qos: {q}, allow: [\"out/#\"]}}\n    ordering: per-topic\n    max_in_flight: 64\n"
        );
        if let Some(p) = plugin {
            // A generous deadline: the benchmark measures the cost of calls
            // that succeed; a debug build (--smoke) on a loaded machine can
            // take longer than the default 100 ms for the Python plugin.
            let _ = write!(
                y,
                "    transform:\n      component: {}\n      config: {}\n      limits: {{timeout: 2s}}\n",
                env.plugins_dir.join(p.file()).display(),
                p.config()
            );
        }
        if extras.stuck.is_some_and(|s| s.shared_session) {
            y.push_str("    session: shared\n");
        }
    }
    if let Some(stuck) = extras.stuck {
        let _ = write!(
            y,
            "  - name: stuck\n    topic: {STUCK_PREFIX}/+\n    function: echo\n    \
republish: {{topic: \"out/stuck/{{1}}\"}}\n    transform:\n      component: {}\n      \
limits: {{timeout: 100ms}}\n",
            env.plugins_dir.join("hostile.wasm").display()
        );
        if stuck.shared_session {
            y.push_str("    session: shared\n");
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_configs_are_valid() {
        let env = BridgeEnv {
            broker_port: 1883,
            gateway_port: 31113,
            admin_port: 9090,
            plugins_dir: Path::new("/nonexistent"),
            cache_dir: Path::new("/tmp/cache"),
        };
        for (routes, qos) in [(1, QoS::AtLeastOnce), (50, QoS::AtMostOnce)] {
            let y = bridge_yaml("t", routes, None, qos, &env, Extras::default());
            let cfg = fxbridge::config::Config::parse(&y, "t.yaml", Path::new("."));
            let cfg = match cfg {
                Ok(c) => c,
                Err(e) => panic!("{e}\n{y}"),
            };
            assert_eq!(cfg.routes.len(), routes as usize);
            assert!(cfg.admin.is_some());
        }
    }

    #[test]
    fn names_are_unique() {
        let all = all();
        let mut names: Vec<_> = all.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }
}
