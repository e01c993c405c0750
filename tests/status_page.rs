//! The operator's view (issue #16), through the real binary: `/api/status`
//! reports each live route's rates, latency percentiles, dead letters by kind
//! with their reasons, its plugin (file, sha256, WIT version) and the reload
//! history; and the page at `/` renders that in a real browser (Debian's
//! `chromium`, headless) while messages flow, checked through its DOM, with a
//! screenshot kept under `target/tmp/` (its path is printed).

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::bridge::http_get;
use common::wait::wait_until_async;
use common::{
    free_port, publish_all, BridgeConfig, BridgeProcess, ConfigFile, Mosquitto, TestGateway,
};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);

/// Two routes: `temperature` through the sensor-normalize plugin (which
/// rejects a reading that is not JSON, so it dead-letters), and `orders`
/// without a plugin.
fn config(broker: &Mosquitto, gw: &TestGateway, admin: u16) -> BridgeConfig {
    let plugin = common::dist("sensor-normalize").display().to_string();
    let mut cfg = BridgeConfig::new(broker.port(), &gw.url())
        .route(&format!(
            r#"{{name: temperature, topic: "sensors/+/temp", function: normalize, republish: {{topic: "results/{{1}}"}}, transform: {{component: {plugin:?}}}}}"#
        ))
        .route(r#"{name: orders, topic: "orders/+", function: echo, ordering: none, republish: {topic: "orders-out/{1}"}}"#);
    cfg.admin_port = Some(admin);
    cfg.extra = format!(
        "plugins:\n  cache_dir: {:?}\n",
        common::plugins::shared_cache_dir().display().to_string()
    );
    cfg
}

/// `n` good readings from three devices and `n` orders.
fn traffic(n: usize, from: usize) -> Vec<(String, Vec<u8>)> {
    let mut msgs = Vec::with_capacity(2 * n);
    for i in from..from + n {
        let dev = format!("dev-{}", i % 3);
        msgs.push((
            format!("sensors/{dev}/temp"),
            format!(r#"{{"temp": {}, "seq": {i}}}"#, 20 + i % 40).into_bytes(),
        ));
        msgs.push((
            format!("orders/{}", i % 5),
            format!("order-{i}").into_bytes(),
        ));
    }
    msgs
}

async fn status(admin: u16) -> Value {
    let (code, body) = http_get(admin, "/api/status")
        .await
        .expect("GET /api/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/status is not JSON ({e}): {body}"))
}

fn route<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["routes"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no route {name} in {status:#}"))
}

fn sha256_hex(path: &std::path::Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).expect("read plugin");
    format!("{:x}", sha2::Sha256::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_status_reports_routes_rates_latency_dead_letters_plugins_and_reloads() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let admin = free_port();
    let cfg = config(&broker, &gw, admin);
    let file = ConfigFile::with(&cfg.to_yaml());
    let bridge = BridgeProcess::spawn(file.path());
    bridge.wait_ready(admin, LONG).await;

    let mut msgs = traffic(30, 0);
    for bad in ["not json", "{\"temp\": \"warm\"}", "[]"] {
        msgs.push(("sensors/dev-9/temp".to_string(), bad.as_bytes().to_vec()));
    }
    publish_all(broker.port(), &msgs).await;
    // Every message finished: 30 + 30 invoked, 3 dead-lettered.
    wait_until_async(LONG, "63 messages acknowledged", || async {
        status(admin).await["totals"]["acked"] == 63
    })
    .await;

    // Rates need a window of a second at least (they are `null` before).
    wait_until_async(LONG, "a window of 1 s", || async {
        status(admin).await["window_seconds"]
            .as_f64()
            .unwrap_or_default()
            >= 1.0
    })
    .await;
    let s = status(admin).await;
    assert_eq!(s["ready"], true, "{s:#}");
    assert_eq!(s["broker"]["connected"], true);
    assert_eq!(s["gateway"]["connected"], true);
    assert!(s["journal"].is_null());
    let names: Vec<&str> = s["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["temperature", "orders"], "config order");

    let t = route(&s, "temperature");
    assert_eq!(t["topic"], "sensors/+/temp");
    assert_eq!(t["function"], "normalize");
    assert_eq!(t["republish"], "results/{1}");
    let plugin = &t["plugin"];
    let wasm = common::dist("sensor-normalize");
    assert_eq!(plugin["sha256"], sha256_hex(&wasm), "{plugin}");
    assert_eq!(plugin["wit_version"], "0.2.0");
    assert_eq!(plugin["before_invoke"], true);
    assert_eq!(plugin["after_invoke"], true);
    assert!(
        plugin["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("sensor-normalize.wasm")),
        "{plugin}"
    );
    assert_eq!(t["published"], 30);
    assert_eq!(t["dead_letters"], 3);
    assert_eq!(t["dead_letter_kinds"]["transform-before"], 3, "{t:#}");
    let reasons: Vec<&str> = t["recent_dead_letters"]
        .as_array()
        .expect("recent dead letters")
        .iter()
        .filter_map(|d| d["reason"].as_str())
        .collect();
    assert_eq!(reasons.len(), 3, "{t:#}");
    assert!(
        reasons.iter().all(|r| !r.is_empty()) && reasons[0].contains("JSON"),
        "the plugin's reasons: {reasons:?}"
    );
    assert!(t["recent_dead_letters"][0]["topic"] == "sensors/dev-9/temp");
    // The window holds this traffic: rates and latency are there.
    for name in ["temperature", "orders"] {
        let r = route(&s, name);
        let rate = r["rate_in"].as_f64().unwrap_or_default();
        assert!(rate > 0.0, "{name} rate_in {rate}: {r:#}");
        let (p50, p99) = (
            r["p50_ms"].as_f64().unwrap_or(-1.0),
            r["p99_ms"].as_f64().unwrap_or(-1.0),
        );
        assert!(p50 > 0.0 && p99 >= p50, "{name}: p50 {p50} p99 {p99}");
        assert_eq!(r["in_flight"], 0);
    }
    let o = route(&s, "orders");
    assert!(o["plugin"].is_null());
    assert_eq!(o["published"], 30);
    assert_eq!(o["dead_letters"], 0);
    assert!(s["broker"]["sessions"]
        .as_array()
        .is_some_and(|ss| ss.len() == 2 && ss.iter().all(|x| x["ready"] == true)));

    // The same kinds in /metrics, for dashboards.
    let page = http_get(admin, "/metrics").await.expect("metrics").1;
    assert_eq!(
        common::bridge::metric(
            &page,
            r#"route_dead_letters_by_kind_total{route="temperature",kind="transform-before"}"#
        ),
        Some(3),
        "{page}"
    );

    // A rejected reload, then an applied one: both in the history.
    assert_eq!(s["reloads"]["applied"], 0);
    let bad_route = r#"  - {name: broken, topic: "x/+", function: f, qos: 7}"#;
    let broken = cfg
        .to_yaml()
        .replace("routes:\n", &format!("routes:\n{bad_route}\n"));
    file.write(&broken);
    wait_until_async(LONG, "the rejected reload in /api/status", || async {
        status(admin).await["reloads"]["rejected"] == 1
    })
    .await;
    let cfg = cfg.route(r#"{name: extra, topic: "extra/+", function: echo}"#);
    file.write(&cfg.to_yaml());
    wait_until_async(LONG, "the applied reload in /api/status", || async {
        status(admin).await["reloads"]["applied"] == 1
    })
    .await;
    let s = status(admin).await;
    let history = s["reloads"]["history"].as_array().expect("history");
    assert_eq!(history.len(), 2, "{s:#}");
    assert_eq!(history[0]["ok"], false);
    let error = history[0]["summary"].as_str().unwrap_or_default();
    let line = broken
        .lines()
        .position(|l| l == bad_route)
        .map(|i| i + 1)
        .expect("the broken line");
    assert!(
        error.contains(&format!("bridge.yaml:{line}:")),
        "the error names line {line}: {error}"
    );
    assert_eq!(history[1]["ok"], true);
    assert!(
        history[1]["summary"]
            .as_str()
            .is_some_and(|x| x.contains("extra")),
        "{history:?}"
    );
    let names: Vec<&str> = s["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["temperature", "orders", "extra"]);
    // The counters survived the reload.
    assert_eq!(route(&s, "temperature")["dead_letters"], 3);
    bridge.terminate();
}

/// Headless chromium on `url`: `--dump-dom` after `budget_ms` of virtual time
/// (the page's timers run; its fetches are real), or a screenshot to `png`.
async fn chromium(url: &str, budget_ms: u32, png: Option<&std::path::Path>) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        // No background connections: this machine's network is closed.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--hide-scrollbars",
        "--window-size=1500,1100",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--virtual-time-budget={budget_ms}"));
    match png {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    cmd.arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .expect("chromium is needed for this test (Debian: apt-get install chromium; scripts/test.sh installs it)");
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium ran");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the cell `<td class="num {class}...">` in the row of `route`.
fn cell(dom: &str, route: &str, class: &str) -> String {
    let row_start = dom
        .find(&format!("data-route=\"{route}\""))
        .unwrap_or_else(|| panic!("no row for route {route} in the page:\n{dom}"));
    let row = &dom[row_start..];
    let row = &row[..row.find("</tr>").unwrap_or(row.len())];
    let at = row
        .find(&format!("class=\"num {class}"))
        .unwrap_or_else(|| panic!("no {class} cell in the {route} row: {row}"));
    let text = &row[at..];
    let text = &text[text.find('>').map_or(text.len(), |i| i + 1)..];
    text[..text.find('<').unwrap_or(text.len())].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_live_routes_in_a_headless_browser() {
    let broker = Mosquitto::start();
    let gw = TestGateway::start().await;
    let admin = free_port();
    let cfg = config(&broker, &gw, admin);
    let file = ConfigFile::with(&cfg.to_yaml());
    let bridge = BridgeProcess::spawn(file.path());
    bridge.wait_ready(admin, LONG).await;

    // Messages flow for as long as the browser looks (20 s at most), with
    // one bad reading per batch for the dead-letter table.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flow = {
        let (stop, sent, port) = (Arc::clone(&stop), Arc::clone(&sent), broker.port());
        tokio::spawn(async move {
            for batch in 0..100 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut msgs = traffic(10, batch * 10);
                msgs.push(("sensors/dev-9/temp".into(), b"not json".to_vec()));
                publish_all(port, &msgs).await;
                sent.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    wait_until_async(LONG, "messages flowing", || async {
        let s = status(admin).await;
        route(&s, "orders")["rate_in"].as_f64().unwrap_or_default() > 0.0
    })
    .await;

    let url = format!("http://127.0.0.1:{admin}/");
    let dom = chromium(&url, 3000, None).await;
    for name in ["temperature", "orders"] {
        let rate: f64 = cell(&dom, name, "rate-in")
            .parse()
            .unwrap_or_else(|e| panic!("{name}'s rate is not a number ({e}):\n{dom}"));
        assert!(rate > 0.0, "{name} shows rate {rate}");
        assert!(
            cell(&dom, name, "p99").ends_with("ms"),
            "{name}'s p99 is a duration:\n{dom}"
        );
    }
    let dead: u64 = cell(&dom, "temperature", "dead-letters")
        .replace(',', "")
        .parse()
        .expect("dead letters is a number");
    assert!(dead >= 1, "the bad readings show as dead letters");
    assert!(dom.contains("sensor-normalize.wasm"), "the plugin file");
    let sha = sha256_hex(&common::dist("sensor-normalize"));
    assert!(dom.contains(&format!("sha256 {}", &sha[..12])), "the hash");
    assert!(dom.contains("WIT 0.2.0"));
    assert!(dom.contains("transform-before 1") || dom.contains("transform-before"));
    assert!(
        dom.contains("class=\"wrap reason\""),
        "a dead letter's reason"
    );
    assert!(
        dom.contains(r#"id="gateway" class="badge up">connected"#),
        "gateway state:\n{dom}"
    );
    assert!(dom.contains(r#"id="broker" class="badge up">connected"#));
    assert!(dom.contains("no reload since start"));

    let png: PathBuf = [env!("CARGO_TARGET_TMPDIR"), "status-page.png"]
        .iter()
        .collect();
    let _ = std::fs::remove_file(&png);
    chromium(&url, 3000, Some(&png)).await;
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "a screenshot of a rendered page, {size} bytes"
    );
    println!("status page screenshot: {}", png.display());

    stop.store(true, Ordering::Relaxed);
    flow.await.expect("publisher");
    assert!(sent.load(Ordering::Relaxed) > 0);
    bridge.terminate();
}
