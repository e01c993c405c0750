//! `fxbridge-bench`: the end-to-end benchmark of fxbridge.
//!
//! For each scenario it starts a private mosquitto and the stand-in gateway
//! (`fxbridge standin-gateway`, out of process so CPU is attributed to the
//! right process) on free loopback ports, then the subject: `fxbridge run`
//! with a generated configuration, the `mosquitto_sub | mosquitto_pub` relay
//! (the ceiling), or the Python baseline connector. A rumqttc publisher offers
//! the load and a rumqttc collector receives every result; the report gives
//! delivered/sent, msgs/s, latency percentiles, the subject's CPU per message
//! and peak RSS, start-to-ready and the load average around each run.
//!
//! A scenario whose subject fails to start is reported as
//! `unavailable: <error>`; the run goes on. `bash bench/run.sh` is the usual
//! entry point (it builds, prepares the Python venv and passes the paths).

mod load;
mod procs;
mod report;
mod scenarios;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rumqttc::QoS;

use load::{Collector, Load, Mode, Publisher};
use procs::Proc;
use report::Outcome;
use scenarios::{BridgeEnv, Offer, Scenario, Subject};

/// Command line of the benchmark.
#[derive(Debug, Clone, Parser)]
#[command(name = "fxbridge-bench", about = "End-to-end benchmark of fxbridge")]
pub struct Args {
    /// Tiny N and short waits (CI): finishes in seconds.
    #[arg(long)]
    pub smoke: bool,
    /// Run only these scenarios (comma-separated or repeated); see --list.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Messages per closed-loop scenario (default 50000; --smoke 200).
    #[arg(short, long)]
    pub n: Option<u64>,
    /// Messages for the Python baseline, which is slow (default 2000; --smoke 50).
    #[arg(long)]
    pub baseline_n: Option<u64>,
    /// Rate of the open-loop scenarios, msgs/s.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Duration of the open-loop scenarios, seconds (default 10; --smoke 1).
    #[arg(long)]
    pub open_secs: Option<u64>,
    /// Payload size in bytes for every plain-payload scenario (overrides 64/1k/16k).
    #[arg(long)]
    pub size: Option<usize>,
    /// Distinct topics for the scenarios that use the default (100).
    #[arg(long)]
    pub topics: Option<u32>,
    /// Closed-loop window: messages sent and not yet delivered.
    #[arg(long, default_value_t = 256)]
    pub window: u64,
    /// Directory with the `fxbridge` binary.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Python of the baseline's venv.
    #[arg(long, default_value = "bench/.venv/bin/python")]
    pub python: PathBuf,
    /// Directory of the generated Python gRPC stubs.
    #[arg(long, default_value = "bench/.venv/fxgen")]
    pub stubs: PathBuf,
    /// Directory of the compiled plugins.
    #[arg(long, default_value = "plugins/dist")]
    pub plugins_dir: PathBuf,
    /// Where logs, generated configs and the report go.
    #[arg(long, default_value = "bench/out")]
    pub out: PathBuf,
    /// mosquitto broker binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    pub mosquitto: PathBuf,
    /// Record a `perf record` profile of the subject of these scenarios.
    #[arg(long, value_delimiter = ',')]
    pub perf: Vec<String>,
    /// Extra environment of the bridge process, KEY=VALUE (repeatable), e.g.
    /// `TOKIO_WORKER_THREADS=1` for an experiment.
    #[arg(long)]
    pub bridge_env: Vec<String>,
    /// A label for the report (e.g. "quiet" or "during builds").
    #[arg(long, default_value = "")]
    pub label: String,
}

/// Settings derived from the arguments.
struct Ctx {
    args: Args,
    n: u64,
    baseline_n: u64,
    open_secs: u64,
    idle_wait: Duration,
    /// A closed loop with no delivery for this long stops publishing.
    stall: Duration,
    /// After the last publish, collection ends when nothing arrives for this long.
    drain_idle: Duration,
    logs: PathBuf,
    cache_dir: PathBuf,
    epoch: Instant,
    root: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fxbridge-bench: cannot start tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fxbridge-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<std::process::ExitCode> {
    let mut list = scenarios::all();
    if args.list {
        for s in &list {
            println!("{:<22} {}", s.name, s.about);
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if !args.only.is_empty() {
        for o in &args.only {
            if !list.iter().any(|s| s.name == o) {
                bail!("unknown scenario {o:?} (see --list)");
            }
        }
        list.retain(|s| args.only.iter().any(|o| o == s.name));
    }
    if let Some(size) = args.size {
        for s in list.iter_mut() {
            if s.format() == load::Format::Plain {
                s.size = size;
            }
        }
    }
    if let Some(t) = args.topics {
        for s in list.iter_mut() {
            if s.topics == scenarios::TOPICS {
                s.topics = t.max(1);
            }
        }
    }
    let out = args.out.clone();
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let cache_dir = std::path::absolute(out.join("wasm-cache")).context("no current directory")?;
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let smoke = args.smoke;
    let ctx = Ctx {
        n: args.n.unwrap_or(if smoke { 200 } else { 50_000 }),
        baseline_n: args.baseline_n.unwrap_or(if smoke { 50 } else { 2_000 }),
        open_secs: args.open_secs.unwrap_or(if smoke { 1 } else { 10 }),
        idle_wait: Duration::from_millis(if smoke { 300 } else { 2_000 }),
        stall: Duration::from_secs(if smoke { 3 } else { 10 }),
        drain_idle: Duration::from_secs(if smoke { 2 } else { 5 }),
        logs,
        cache_dir,
        epoch: Instant::now(),
        root,
        args,
    };

    let started = Instant::now();
    let mut outcomes = Vec::new();
    for s in &list {
        eprintln!("== {} ({}); load {}", s.name, s.about, procs::load_avg());
        let t0 = Instant::now();
        let o = match run_scenario(&ctx, s).await {
            Ok(o) => o,
            Err(e) => {
                let mut o = Outcome::new(s);
                o.load_before = procs::load_avg();
                o.load_after = o.load_before.clone();
                o.status = format!("unavailable: {}", one_line(&format!("{e:#}")));
                o
            }
        };
        eprintln!(
            "   {} in {:.1} s: {}",
            s.name,
            t0.elapsed().as_secs_f64(),
            o.summary()
        );
        outcomes.push(o);
    }
    let text = report::render(&outcomes, &ctx.args, started.elapsed());
    println!("{text}");
    report::write(&out, &text, &outcomes)?;
    // A subject that ran but lost messages fails the run (CI runs --smoke);
    // one that could not start (e.g. plugins not yet available) does not.
    let count = |p: &str| outcomes.iter().filter(|o| o.status.starts_with(p)).count();
    let (ok, failed) = (count("ok"), count("failed"));
    let skipped = outcomes.len() - ok - failed;
    println!("bench: {ok} passed, {failed} failed, {skipped} skipped");
    Ok(if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

/// The last `n` lines of a log, for an error message.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A private mosquitto on a free port.
async fn start_broker(ctx: &Ctx, name: &str, inflight: u32) -> Result<(Proc, u16)> {
    let port = procs::free_port()?;
    let conf = ctx.logs.join(format!("{name}-mosquitto.conf"));
    let mut text = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
max_queued_messages 0\nmax_inflight_messages {inflight}\nlog_type error\nlog_type warning\n"
    );
    if ctx.root {
        text.push_str("user root\n");
    }
    std::fs::write(&conf, text).with_context(|| format!("cannot write {}", conf.display()))?;
    let mut cmd = Command::new(&ctx.args.mosquitto);
    cmd.arg("-c").arg(&conf);
    let p = Proc::spawn(
        "mosquitto",
        cmd,
        &ctx.logs.join(format!("{name}-mosquitto.log")),
    )?;
    procs::wait_listening(localhost(port), Duration::from_secs(5)).await?;
    Ok((p, port))
}

/// The stand-in gateway (echo) on a free port.
async fn start_gateway(ctx: &Ctx, name: &str) -> Result<(Proc, u16)> {
    let port = procs::free_port()?;
    let mut cmd = Command::new(ctx.args.bin_dir.join("fxbridge"));
    cmd.arg("standin-gateway")
        .arg("--listen")
        .arg(localhost(port).to_string())
        .env("RUST_LOG", "warn");
    let p = Proc::spawn(
        "standin-gateway",
        cmd,
        &ctx.logs.join(format!("{name}-gateway.log")),
    )?;
    procs::wait_listening(localhost(port), Duration::from_secs(5)).await?;
    Ok((p, port))
}

/// Starts `fxbridge run` and waits for /readyz; returns it and the start-to-ready time.
async fn start_bridge(
    ctx: &Ctx,
    log_name: &str,
    yaml: &str,
    admin: u16,
) -> Result<(Proc, Duration)> {
    let conf = std::path::absolute(ctx.logs.join(format!("{log_name}.yaml")))
        .context("no current directory")?;
    std::fs::write(&conf, yaml).with_context(|| format!("cannot write {}", conf.display()))?;
    let log = ctx.logs.join(format!("{log_name}.log"));
    let mut cmd = Command::new(ctx.args.bin_dir.join("fxbridge"));
    cmd.arg("run")
        .arg("-c")
        .arg(&conf)
        .env("RUST_LOG", "warn,rumqttd=off");
    for kv in &ctx.args.bridge_env {
        match kv.split_once('=') {
            Some((k, v)) => {
                cmd.env(k, v);
            }
            None => bail!("--bridge-env {kv:?}: expected KEY=VALUE"),
        }
    }
    let t0 = Instant::now();
    let mut p = Proc::spawn("fxbridge", cmd, &log)?;
    match procs::wait_ready(&mut p, localhost(admin), Duration::from_secs(60)).await {
        Ok(()) => Ok((p, t0.elapsed())),
        Err(e) => {
            drop(p);
            bail!("{e}; log: {}", log_tail(&log, 3))
        }
    }
}

/// `mosquitto_sub -t 'in/#' | mosquitto_pub -l -t out/relay`, both at the scenario's QoS.
fn start_relay(ctx: &Ctx, name: &str, port: u16, qos: QoS) -> Result<Vec<Proc>> {
    let q = if qos == QoS::AtMostOnce { "0" } else { "1" };
    let p = port.to_string();
    let mut sub = Command::new("mosquitto_sub");
    sub.args([
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-q",
        q,
        "-i",
        "relay-sub",
        "-t",
        "in/#",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut sub = Proc::spawn_raw("mosquitto_sub", sub)?;
    let pipe = sub
        .child_mut()
        .stdout
        .take()
        .context("mosquitto_sub has no stdout")?;
    let log = std::fs::File::create(ctx.logs.join(format!("{name}-relay.log")))
        .context("cannot create the relay log")?;
    let mut publ = Command::new("mosquitto_pub");
    publ.args([
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-q",
        q,
        "-i",
        "relay-pub",
        "-M",
        "1000",
        "-l",
        "-t",
        "out/relay",
    ])
    .stdin(Stdio::from(pipe))
    .stdout(Stdio::null())
    .stderr(log);
    let publ = Proc::spawn_raw("mosquitto_pub", publ)?;
    Ok(vec![sub, publ])
}

/// The Python baseline connector.
fn start_baseline(ctx: &Ctx, name: &str, port: u16, gateway: u16) -> Result<Proc> {
    if !ctx.args.python.exists() {
        bail!(
            "{} missing (bench/run.sh sets up the venv)",
            ctx.args.python.display()
        );
    }
    let mut cmd = Command::new(&ctx.args.python);
    cmd.arg("bench/baseline_connector.py")
        .args(["--port", &port.to_string()])
        .args(["--gateway", &format!("127.0.0.1:{gateway}")])
        .args(["--topic", "in/#", "--function", "echo"])
        .env("PYTHONPATH", &ctx.args.stubs)
        .env("PYTHONUNBUFFERED", "1");
    Proc::spawn(
        "baseline",
        cmd,
        &ctx.logs.join(format!("{name}-baseline.log")),
    )
}

/// Publishes probes (no marker) until one comes back: the subject is connected.
async fn warm_up(
    publisher: &Publisher,
    collector: &Collector,
    procs: &mut [Proc],
    topic: &str,
    qos: QoS,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        publisher.publish(topic, qos, b"probe".to_vec()).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = collector.seen.lock().map(|s| s.messages).unwrap_or(0);
        if seen > 0 {
            return Ok(());
        }
    }
    bail!("no probe came back within 15 s")
}

fn cpu_sum(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|&p| procs::cpu_time(p).ok()).sum()
}

/// Runs one scenario from start to stop.
async fn run_scenario(ctx: &Ctx, s: &Scenario) -> Result<Outcome> {
    let mut o = Outcome::new(s);
    o.load_before = procs::load_avg();
    let (broker, broker_port) = start_broker(ctx, s.name, s.broker_inflight).await?;
    if let Subject::Idle { routes, plugin } = s.subject {
        return idle_scenario(ctx, s, o, broker_port, routes, plugin).await;
    }
    let gateway = if s.subject == Subject::Relay {
        None
    } else {
        Some(start_gateway(ctx, s.name).await?)
    };
    let gateway_port = gateway.as_ref().map_or(0, |g| g.1);
    let collector = load::CollectorGuard(
        Collector::start(broker_port, "out/#", s.qos, ctx.epoch, s.topics).await?,
    );

    let mut subject: Vec<Proc> = Vec::new();
    // The admin port of a bridge that runs through the disk journal.
    let mut journal_admin: Option<u16> = None;
    match s.subject {
        Subject::Bridge { routes, plugin } => {
            if let Some(p) = plugin {
                let path = ctx.args.plugins_dir.join(p.file());
                if !path.exists() {
                    bail!("{} missing (bash plugins/build.sh)", path.display());
                }
            }
            let admin = procs::free_port()?;
            let plugins_dir =
                std::path::absolute(&ctx.args.plugins_dir).context("no current directory")?;
            let env = BridgeEnv {
                broker_port,
                gateway_port,
                admin_port: admin,
                plugins_dir: &plugins_dir,
                cache_dir: &ctx.cache_dir,
            };
            if s.stuck.is_some() && !ctx.args.plugins_dir.join("hostile.wasm").exists() {
                bail!("hostile.wasm missing (bash plugins/build.sh)");
            }
            let journal_path = std::path::absolute(ctx.logs.join(format!("{}.journal.db", s.name)))
                .context("no current directory")?;
            if s.journal {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", journal_path.display()));
                }
            }
            let extras = scenarios::Extras {
                stuck: s.stuck,
                mqtt5: s.mqtt5,
                journal: s.journal.then_some(journal_path.as_path()),
            };
            journal_admin = s.journal.then_some(admin);
            let yaml = scenarios::bridge_yaml(s.name, routes, plugin, s.qos, &env, extras);
            let (p, ready) = start_bridge(ctx, s.name, &yaml, admin).await?;
            o.ready_ms = Some(ready.as_secs_f64() * 1e3);
            subject.push(p);
        }
        Subject::Relay => subject.extend(start_relay(ctx, s.name, broker_port, s.qos)?),
        Subject::Baseline => subject.push(start_baseline(ctx, s.name, broker_port, gateway_port)?),
        Subject::Idle { .. } => bail!("idle scenarios are run by idle_scenario"),
    }
    let publisher = Publisher::connect(broker_port).await?;
    if matches!(s.subject, Subject::Relay | Subject::Baseline) {
        warm_up(&publisher, &collector, &mut subject, "in/probe", s.qos).await?;
        // Let late probes arrive before the counters are cleared.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    collector.reset(s.topics);

    let n = match (s.subject, s.offer) {
        (_, Offer::Open) => ctx.args.rate * ctx.open_secs,
        (Subject::Baseline, _) => ctx.baseline_n,
        _ => ctx.n,
    };
    let load = Load {
        n,
        topics: s.topics,
        qos: s.qos,
        size: s.size,
        format: s.format(),
        mode: match s.offer {
            Offer::Open => Mode::Open {
                rate: ctx.args.rate,
            },
            _ => Mode::Closed {
                window: ctx.args.window,
            },
        },
        topic_names: (0..s.topics).map(|t| s.topic_name(t)).collect(),
    };
    let subject_pids: Vec<u32> = subject.iter().map(Proc::pid).collect();
    let broker_pid = broker.pid();
    let gateway_pid = gateway.as_ref().map(|g| g.0.pid());
    let perf = if ctx.args.perf.iter().any(|p| p == s.name) {
        let pid = *subject_pids
            .first()
            .context("no subject process to profile")?;
        Some(start_perf(ctx, s.name, pid)?)
    } else {
        None
    };

    // A stuck neighbour: messages its plugin cannot finish within 100 ms, at
    // 20 per second on 8 topics, for as long as the measured load runs.
    let noise = match s.stuck {
        Some(stuck) => Some(stuck_noise(broker_port, stuck.payload()).await?),
        None => None,
    };
    let cpu0 = cpu_sum(&subject_pids);
    let broker0 = cpu_sum(&[broker_pid]);
    let gw0 = gateway_pid.map(|p| cpu_sum(&[p]));
    let journal_at = |admin: u16| async move {
        let page = procs::http_body(([127, 0, 0, 1], admin).into(), "/metrics")
            .await
            .unwrap_or_default();
        procs::metric(&page, "fxbridge_journal_commits_total").unwrap_or(0.0)
    };
    let journal0 = match journal_admin {
        Some(a) => Some((
            journal_at(a).await,
            subject_pids
                .first()
                .and_then(|p| procs::write_bytes(*p))
                .unwrap_or(0),
            Instant::now(),
        )),
        None => None,
    };
    let sent = load::publish(&load, &publisher, &collector, ctx.epoch, ctx.stall).await?;
    if let Some(noise) = noise {
        noise.abort();
    }
    collector
        .wait_for(sent.sent, ctx.drain_idle, Duration::from_secs(300))
        .await;
    let cpu1 = cpu_sum(&subject_pids);
    if let (Some(a), Some((commits0, written0, t0))) = (journal_admin, journal0) {
        let commits = journal_at(a).await - commits0;
        let written = subject_pids
            .first()
            .and_then(|p| procs::write_bytes(*p))
            .unwrap_or(0)
            .saturating_sub(written0);
        let secs = t0.elapsed().as_secs_f64();
        o.notes.push(format!(
            "journal: {commits:.0} commits ({:.0} fsyncs/s), {:.0} B written per message",
            commits / secs,
            written as f64 / sent.sent.max(1) as f64
        ));
    }
    let broker1 = cpu_sum(&[broker_pid]);
    let gw1 = gateway_pid.map(|p| cpu_sum(&[p]));
    if let Some(p) = perf {
        p.signal("INT");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut p = p;
        while Instant::now() < deadline && p.check_alive().is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    o.peak_rss_mb = subject_pids
        .iter()
        .filter_map(|&p| procs::status_bytes(p, "VmHWM").ok())
        .map(|b| b as f64 / 1_048_576.0)
        .reduce(f64::max);
    for p in subject.iter_mut() {
        if let Err(e) = p.check_alive() {
            o.notes.push(e.to_string());
        }
    }
    collector.shutdown();

    let seen = {
        let mut seen = collector
            .seen
            .lock()
            .map_err(|_| anyhow::anyhow!("collector state poisoned"))?;
        std::mem::take(&mut *seen)
    };
    o.sent = sent.sent;
    o.delivered = seen.delivered;
    o.messages = seen.messages;
    o.order_violations = seen.order_violations;
    if sent.stalled {
        o.notes.push("closed loop stalled".into());
    }
    if let Some(last) = seen.last_at {
        let secs = last.duration_since(sent.started).as_secs_f64();
        if secs > 0.0 {
            o.msgs_per_s = Some(seen.delivered as f64 / secs);
        }
    }
    let mut lat = seen.latencies;
    lat.sort_unstable();
    o.p50_ms = load::quantile_ms(&lat, 0.5);
    o.p99_ms = load::quantile_ms(&lat, 0.99);
    o.p999_ms = load::quantile_ms(&lat, 0.999);
    if seen.delivered > 0 {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / seen.delivered as f64;
        o.cpu_us_per_msg = Some(per(cpu1.saturating_sub(cpu0)));
        o.broker_us_per_msg = Some(per(broker1.saturating_sub(broker0)));
        if let (Some(a), Some(b)) = (gw0, gw1) {
            o.gateway_us_per_msg = Some(per(b.saturating_sub(a)));
        }
    }
    o.load_after = procs::load_avg();
    o.status = if o.delivered == 0 {
        "failed: nothing delivered".into()
    } else if s.qos != QoS::AtMostOnce && o.delivered < o.sent {
        // At-least-once end to end: a missing result is a bug, not a figure.
        format!(
            "failed: {} of {} QoS 1 messages lost",
            o.sent - o.delivered,
            o.sent
        )
    } else {
        "ok".into()
    };
    for p in subject {
        p.stop(Duration::from_secs(3));
    }
    drop(publisher);
    drop(gateway);
    drop(broker);
    Ok(o)
}

/// Publishes the stuck neighbour's messages (`payload` is the hostile
/// plugin's command) until aborted.
async fn stuck_noise(port: u16, payload: &'static [u8]) -> Result<tokio::task::JoinHandle<()>> {
    let publisher = Publisher::connect_as(port, "bench-stuck-noise").await?;
    Ok(tokio::spawn(async move {
        let mut next = tokio::time::Instant::now();
        for i in 0u64.. {
            next += Duration::from_millis(50);
            tokio::time::sleep_until(next).await;
            let topic = format!("{}/{}", scenarios::STUCK_PREFIX, i % 8);
            if publisher
                .publish(&topic, QoS::AtLeastOnce, payload.to_vec())
                .await
                .is_err()
            {
                return;
            }
        }
    }))
}

/// `perf record` of `pid` until SIGINT.
fn start_perf(ctx: &Ctx, name: &str, pid: u32) -> Result<Proc> {
    let data = ctx.args.out.join(format!("perf-{name}.data"));
    // Extra `perf record` options, e.g. `--call-graph dwarf,16384` (release
    // builds have unwind tables but no frame pointers).
    let extra = std::env::var("FXBRIDGE_BENCH_PERF_ARGS").unwrap_or_else(|_| "-F 1999".into());
    let mut cmd = Command::new("perf");
    cmd.arg("record")
        .args(extra.split_whitespace())
        .args(["-p", &pid.to_string(), "-o"])
        .arg(&data);
    let p = Proc::spawn("perf", cmd, &ctx.logs.join(format!("{name}-perf.log")))?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(p)
}

/// Starts the bridge twice without load: cold (compiles plugins into the
/// cache) and warm (cached), and reads the idle RSS of the warm start.
async fn idle_scenario(
    ctx: &Ctx,
    s: &Scenario,
    mut o: Outcome,
    broker_port: u16,
    routes: u32,
    plugin: Option<scenarios::Plugin>,
) -> Result<Outcome> {
    if let Some(p) = plugin {
        let path = ctx.args.plugins_dir.join(p.file());
        if !path.exists() {
            bail!("{} missing (bash plugins/build.sh)", path.display());
        }
    }
    let (_gw, gateway_port) = start_gateway(ctx, s.name).await?;
    let plugins_dir = std::path::absolute(&ctx.args.plugins_dir).context("no current directory")?;
    // A cache of this scenario only, emptied first: the first start is cold.
    let cache = ctx.cache_dir.join(s.name);
    let _ = std::fs::remove_dir_all(&cache);
    for (i, label) in ["cold", "cached"].iter().enumerate() {
        let admin = procs::free_port()?;
        let env = BridgeEnv {
            broker_port,
            gateway_port,
            admin_port: admin,
            plugins_dir: &plugins_dir,
            cache_dir: &cache,
        };
        let yaml = scenarios::bridge_yaml(s.name, routes, plugin, s.qos, &env, Default::default());
        let (p, ready) = start_bridge(ctx, &format!("{}-{label}", s.name), &yaml, admin).await?;
        let ms = ready.as_secs_f64() * 1e3;
        if i == 0 {
            o.ready_ms = Some(ms);
        } else {
            o.ready_cached_ms = Some(ms);
        }
        tokio::time::sleep(ctx.idle_wait).await;
        let rss = procs::status_bytes(p.pid(), "VmRSS")? as f64 / 1_048_576.0;
        let hwm = procs::status_bytes(p.pid(), "VmHWM")? as f64 / 1_048_576.0;
        o.idle_rss_mb = Some(rss);
        o.peak_rss_mb = Some(hwm);
        p.stop(Duration::from_secs(3));
    }
    o.status = "ok".into();
    o.load_after = procs::load_avg();
    Ok(o)
}
