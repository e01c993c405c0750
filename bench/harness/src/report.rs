//! The report: one row per scenario, the targets with met/missed,
//! and the machine it ran on; as Markdown (stdout and `bench/out/`) and JSON.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::scenarios::Scenario;
use crate::Args;

/// What one scenario measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    pub name: String,
    pub about: String,
    /// `ok`, `failed: ...` or `unavailable: <error>`.
    pub status: String,
    pub qos: u8,
    pub size: usize,
    pub topics: u32,
    pub sent: u64,
    /// Inputs whose result (marker) came back.
    pub delivered: u64,
    /// Every message on the result topics (fan-out counts each).
    pub messages: u64,
    pub msgs_per_s: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// CPU (user+system) of the subject per delivered input.
    pub cpu_us_per_msg: Option<f64>,
    pub broker_us_per_msg: Option<f64>,
    pub gateway_us_per_msg: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub idle_rss_mb: Option<f64>,
    pub ready_ms: Option<f64>,
    pub ready_cached_ms: Option<f64>,
    pub order_violations: u64,
    pub load_before: String,
    pub load_after: String,
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn new(s: &Scenario) -> Outcome {
        Outcome {
            name: s.name.to_string(),
            about: s.about.to_string(),
            status: "not run".into(),
            qos: match s.qos {
                rumqttc::QoS::AtMostOnce => 0,
                rumqttc::QoS::AtLeastOnce => 1,
                rumqttc::QoS::ExactlyOnce => 2,
            },
            size: s.size,
            topics: s.topics,
            ..Outcome::default()
        }
    }

    pub fn summary(&self) -> String {
        if self.status != "ok" {
            return self.status.clone();
        }
        format!(
            "{}/{} delivered, {} msg/s, p99 {} ms, {} µs CPU/msg, ready {} ms",
            self.delivered,
            self.sent,
            f0(self.msgs_per_s),
            f2(self.p99_ms),
            f1(self.cpu_us_per_msg),
            f0(self.ready_ms)
        )
    }
}

fn f0(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.0}"))
}
fn f1(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}
fn f2(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2}"))
}

fn find<'a>(all: &'a [Outcome], name: &str) -> Option<&'a Outcome> {
    all.iter().find(|o| o.name == name && o.status == "ok")
}

/// One target of the issue: (text, verdict, figures).
fn targets(all: &[Outcome]) -> Vec<(String, String, String)> {
    let mut t = Vec::new();
    let verdict = |ok: bool| if ok { "met" } else { "missed" }.to_string();
    let missing = |what: &str| ("not measured".to_string(), format!("needs {what}"));
    let pass = find(all, "pass-qos1-64");
    let relay = find(all, "relay-qos1-64");
    let base = find(all, "baseline-qos1-64");

    let (v, f) = match (
        pass.and_then(|o| o.msgs_per_s),
        relay.and_then(|o| o.msgs_per_s),
    ) {
        (Some(p), Some(r)) => (
            verdict(p >= 0.8 * r),
            format!("{:.0}% of relay ({p:.0} vs {r:.0} msg/s)", 100.0 * p / r),
        ),
        _ => missing("pass-qos1-64 and relay-qos1-64"),
    };
    t.push(("passthrough QoS1 64 B ≥ 80% of relay msgs/s".into(), v, f));

    let (v, f) = match (
        find(all, "journal-qos1-64").and_then(|o| o.msgs_per_s),
        pass.and_then(|o| o.msgs_per_s),
    ) {
        (Some(j), Some(p)) => (
            verdict(j >= 0.7 * p),
            format!(
                "{:.0}% of memory mode ({j:.0} vs {p:.0} msg/s)",
                100.0 * j / p
            ),
        ),
        _ => missing("journal-qos1-64 and pass-qos1-64"),
    };
    t.push((
        "disk journal QoS1 64 B ≥ 70% of memory-mode msgs/s".into(),
        v,
        f,
    ));

    let (v, f) = match (
        pass.and_then(|o| o.msgs_per_s),
        base.and_then(|o| o.msgs_per_s),
    ) {
        (Some(p), Some(b)) => (
            verdict(p >= 10.0 * b),
            format!("{:.1}× baseline ({p:.0} vs {b:.0} msg/s)", p / b),
        ),
        _ => missing("pass-qos1-64 and baseline-qos1-64"),
    };
    t.push(("passthrough QoS1 64 B ≥ 10× baseline msgs/s".into(), v, f));

    let (v, f) = match (
        pass.and_then(|o| o.cpu_us_per_msg),
        base.and_then(|o| o.cpu_us_per_msg),
    ) {
        (Some(p), Some(b)) => (
            verdict(p * 40.0 <= b),
            format!("1/{:.0} of baseline ({p:.1} vs {b:.1} µs/msg)", b / p),
        ),
        _ => missing("pass-qos1-64 and baseline-qos1-64"),
    };
    t.push((
        "passthrough QoS1 64 B CPU/msg ≤ 1/40 of baseline".into(),
        v,
        f,
    ));

    let (v, f) = match (
        find(all, "plugin-rust-prepost").and_then(|o| o.cpu_us_per_msg),
        pass.and_then(|o| o.cpu_us_per_msg),
    ) {
        (Some(r), Some(p)) => (
            verdict(r <= 1.2 * p),
            format!("{:+.0}% ({r:.1} vs {p:.1} µs/msg)", 100.0 * (r - p) / p),
        ),
        _ => missing("plugin-rust-prepost and pass-qos1-64"),
    };
    t.push((
        "Rust plugin pre+post ≤ 20% more CPU/msg than passthrough".into(),
        v,
        f,
    ));

    let (v, f) = match find(all, "open-pass-qos1-64").and_then(|o| o.p99_ms) {
        Some(p) => (verdict(p <= 5.0), format!("p99 {p:.2} ms")),
        None => missing("open-pass-qos1-64"),
    };
    t.push((
        "p99 ≤ 5 ms at 1,000 msg/s open loop, passthrough".into(),
        v,
        f,
    ));

    let idle = find(all, "idle-10rust");
    let (v, f) = match idle.and_then(|o| o.idle_rss_mb) {
        Some(m) => (verdict(m <= 60.0), format!("{m:.1} MB")),
        None => missing("idle-10rust"),
    };
    t.push(("idle RSS, 10 Rust-plugin routes ≤ 60 MB".into(), v, f));

    let (v, f) = match idle.and_then(|o| o.ready_cached_ms) {
        Some(m) => (verdict(m <= 200.0), format!("{m:.0} ms")),
        None => missing("idle-10rust"),
    };
    t.push((
        "start-to-ready with cached compiled plugins ≤ 200 ms".into(),
        v,
        f,
    ));
    t
}

/// The machine: CPU model, cores, memory.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("?".to_string(), |(_, m)| m.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or("?".to_string(), |kb| {
            format!("{:.1} GiB", kb as f64 / 1_048_576.0)
        });
    format!("{model}, {cores} cores (nproc), {mem} RAM")
}

/// The command that produced this report.
fn command() -> String {
    std::env::var("FXBRIDGE_BENCH_COMMAND")
        .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "))
}

/// The Markdown report.
pub fn render(all: &[Outcome], args: &Args, took: Duration) -> String {
    let mut s = String::new();
    let now = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(s, "# fxbridge-bench report {now}\n");
    let _ = writeln!(s, "- command: `{}`", command());
    if !args.label.is_empty() {
        let _ = writeln!(s, "- label: {}", args.label);
    }
    if !args.bridge_env.is_empty() {
        let _ = writeln!(s, "- bridge environment: {}", args.bridge_env.join(" "));
    }
    let _ = writeln!(s, "- machine: {}", machine());
    let _ = writeln!(
        s,
        "- took {:.0} s; window {}, rate {} msg/s{}\n",
        took.as_secs_f64(),
        args.window,
        args.rate,
        if args.smoke {
            "; SMOKE (tiny N, figures not meaningful)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "| scenario | status | QoS | size | topics | delivered/sent | msg/s | p50 ms | p99 ms | p99.9 ms | subject CPU µs/msg | broker µs/msg | gateway µs/msg | peak RSS MB | idle RSS MB | ready ms (cached) | order viol. | load before → after |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for o in all {
        let status = if o.notes.is_empty() {
            o.status.clone()
        } else {
            format!("{} ({})", o.status, o.notes.join("; "))
        };
        let ready = match (o.ready_ms, o.ready_cached_ms) {
            (Some(a), Some(b)) => format!("{a:.0} ({b:.0})"),
            (a, _) => f0(a),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} → {} |",
            o.name,
            status.replace('|', "\\|"),
            o.qos,
            o.size,
            o.topics,
            o.delivered,
            o.sent,
            f0(o.msgs_per_s),
            f2(o.p50_ms),
            f2(o.p99_ms),
            f2(o.p999_ms),
            f1(o.cpu_us_per_msg),
            f1(o.broker_us_per_msg),
            f1(o.gateway_us_per_msg),
            f1(o.peak_rss_mb),
            f1(o.idle_rss_mb),
            ready,
            o.order_violations,
            o.load_before,
            o.load_after
        );
    }
    let _ = writeln!(s, "\n## Targets\n");
    let _ = writeln!(s, "| target | verdict | measured |");
    let _ = writeln!(s, "|---|---|---|");
    for (t, v, f) in targets(all) {
        let _ = writeln!(s, "| {t} | {v} | {f} |");
    }
    s
}

/// Writes `report.md`, `results.json` and timestamped copies into `out`.
pub fn write(out: &Path, text: &str, all: &[Outcome]) -> Result<()> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let json = serde_json::to_string_pretty(all).context("cannot encode the results")?;
    for (name, body) in [
        ("report.md".to_string(), text),
        (format!("report-{stamp}.md"), text),
        ("results.json".to_string(), json.as_str()),
        (format!("results-{stamp}.json"), json.as_str()),
    ] {
        let p = out.join(name);
        std::fs::write(&p, body).with_context(|| format!("cannot write {}", p.display()))?;
    }
    eprintln!("report: {}", out.join("report.md").display());
    Ok(())
}
