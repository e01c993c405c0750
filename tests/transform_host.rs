//! The WebAssembly host against real components from `plugins/dist`: the
//! hostile plugin's every mode (and recovery after each), state on reused
//! instances, concurrency, one-hook worlds, config failures, fuel, the compile
//! cache, and load errors.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dist;
use common::plugins::{host, limits, transform, Msg};
use fxbridge::config::{PluginsConfig, TransformLimits};
use fxbridge::message::PreDecision;
use fxbridge::transform::{PluginHost, RouteTransform, TransformError};

/// The pre hook's input as text, or a description of what happened instead.
async fn before(t: &RouteTransform, payload: &str) -> Result<String, TransformError> {
    let m = Msg::new("hostile/in", payload);
    match t.before_invoke(&m.hook()).await? {
        PreDecision::Invoke { input, .. } => Ok(String::from_utf8_lossy(&input).into_owned()),
        PreDecision::Skip { reason } => Ok(format!("skip: {reason}")),
    }
}

async fn count(t: &RouteTransform) -> serde_json::Value {
    let text = before(t, "count").await.expect("count");
    serde_json::from_str(&text).expect("count is JSON")
}

/// `tasks` tasks at once, each passing `each` distinct payloads through the
/// pre hook one after another; every one must come back unchanged.
async fn pass_through_concurrently(t: &Arc<RouteTransform>, tasks: usize, each: usize) {
    let mut running = Vec::new();
    for i in 0..tasks {
        let t = Arc::clone(t);
        running.push(tokio::spawn(async move {
            for j in 0..each {
                let p = format!("msg {i}/{j}");
                let m = Msg::new("hostile/in", &p);
                match t.before_invoke(&m.hook()).await {
                    Ok(PreDecision::Invoke { input, .. }) => assert_eq!(&input[..], p.as_bytes()),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }));
    }
    for task in running {
        task.await.unwrap();
    }
}

fn hostile() -> Arc<RouteTransform> {
    transform("hostile", "null", &limits(100, 64))
}

/// After a failure the next call runs on a fresh instance, configured once.
async fn assert_fresh(t: &RouteTransform) {
    let c = count(t).await;
    assert_eq!(
        c,
        serde_json::json!({"messages": 1, "configured": 1}),
        "fresh instance expected"
    );
}

#[tokio::test]
async fn loop_times_out_at_the_deadline_and_the_next_call_recovers() {
    let t = hostile();
    assert_eq!(before(&t, "hello").await.unwrap(), "hello");
    let started = Instant::now();
    let e = before(&t, "loop").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind(), "timeout", "{e}");
    assert!(
        took >= Duration::from_millis(100),
        "stopped before the deadline: {took:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "stopped far too late: {took:?}"
    );
    assert_fresh(&t).await;
    let s = t.snapshot();
    assert_eq!(s.timeouts, 1);
    assert_eq!(s.instances_discarded, 1);
}

#[tokio::test]
async fn a_guest_blocked_in_a_wasi_sleep_is_stopped_at_the_deadline() {
    let t = hostile();
    let started = Instant::now();
    let e = before(&t, "sleep").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind(), "timeout", "{e}");
    assert!(
        took < Duration::from_secs(5),
        "the 30 s sleep was not interrupted: {took:?}"
    );
    assert_fresh(&t).await;
}

#[tokio::test]
async fn a_memory_bomb_is_reported_as_memory_limit() {
    // A deadline far beyond what growing to the cap takes even on a loaded
    // machine: only the memory cap can stop this call.
    let t = transform("hostile", "null", &limits(10_000, 64));
    let e = before(&t, "alloc").await.unwrap_err();
    assert_eq!(e.kind(), "memory_limit", "{e}");
    assert_fresh(&t).await;
    assert_eq!(t.snapshot().memory_limits, 1);
}

#[tokio::test]
async fn unbounded_recursion_traps() {
    let t = hostile();
    let e = before(&t, "recurse").await.unwrap_err();
    assert_eq!(e.kind(), "trap", "{e}");
    // Rust keeps the 1 KiB frames on its shadow stack in linear memory;
    // overflowing it is an out-of-bounds access below address 0.
    assert!(e.to_string().contains("wasm trap"), "{e}");
    assert_fresh(&t).await;
}

#[tokio::test]
async fn recursion_in_wasm_locals_hits_the_hosts_stack_limit() {
    let t = hostile();
    let e = before(&t, "deep").await.unwrap_err();
    assert_eq!(e.kind(), "trap", "{e}");
    // No shadow stack involved: wasmtime's `max_wasm_stack` stops it.
    assert!(e.to_string().contains("call stack exhausted"), "{e}");
    assert_fresh(&t).await;
}

#[tokio::test]
async fn unreachable_traps() {
    let t = hostile();
    let e = before(&t, "unreachable").await.unwrap_err();
    assert_eq!(e.kind(), "trap", "{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");
    assert_fresh(&t).await;
}

#[tokio::test]
async fn a_panic_traps_and_its_message_is_reported() {
    let t = hostile();
    let e = before(&t, "panic").await.unwrap_err();
    assert_eq!(e.kind(), "trap", "{e}");
    assert!(
        e.to_string().contains("asked to panic"),
        "panic message from stderr expected: {e}"
    );
    assert!(t.snapshot().stderr_lines >= 1);
    assert_fresh(&t).await;
}

#[tokio::test]
async fn a_guest_error_keeps_the_instance() {
    let t = hostile();
    let e = before(&t, "fail").await.unwrap_err();
    assert_eq!(e, TransformError::Guest("hostile: asked to fail".into()));
    assert_eq!(e.kind(), "guest_error");
    // Same instance: the failed call counted.
    assert_eq!(
        count(&t).await,
        serde_json::json!({"messages": 2, "configured": 1})
    );
    assert_eq!(t.snapshot().instances_discarded, 0);
}

#[tokio::test]
async fn files_are_denied() {
    let t = hostile();
    let e = before(&t, "file").await.unwrap_err();
    let TransformError::Guest(reason) = &e else {
        panic!("guest error expected: {e}")
    };
    assert!(
        reason.starts_with("file access denied: /etc/passwd: "),
        "{reason}"
    );
    assert!(reason.contains("bridge.yaml: "), "{reason}");
}

#[tokio::test]
async fn sockets_and_name_lookup_are_denied() {
    let t = hostile();
    let e = before(&t, "socket").await.unwrap_err();
    let TransformError::Guest(reason) = &e else {
        panic!("guest error expected: {e}")
    };
    assert!(
        reason.starts_with("socket access denied: connect 127.0.0.1:1883: "),
        "{reason}"
    );
    assert!(reason.contains("resolve localhost: "), "{reason}");
}

#[tokio::test]
async fn no_environment_is_visible() {
    let t = hostile();
    let out = before(&t, "env").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, serde_json::json!({"env_vars": 0, "names": []}));
}

#[tokio::test]
async fn stdout_stderr_and_host_log_are_forwarded() {
    let t = hostile();
    assert_eq!(before(&t, "print").await.unwrap(), "print");
    let s = t.snapshot();
    assert_eq!((s.stdout_lines, s.stderr_lines), (1, 1));
    assert_eq!(before(&t, "log").await.unwrap(), "log");
    assert_eq!(t.snapshot().log_lines, 5);
}

#[tokio::test]
async fn state_persists_on_a_reused_instance_and_resets_after_a_trap() {
    let t = hostile();
    for n in 1..=3 {
        assert_eq!(count(&t).await["messages"], n);
    }
    assert_eq!(before(&t, "unreachable").await.unwrap_err().kind(), "trap");
    assert_fresh(&t).await;
    assert_eq!(count(&t).await["messages"], 2);
    let s = t.snapshot();
    assert_eq!(s.instances_created, 2);
    assert_eq!(s.traps, 1);
    assert_eq!(s.calls, 6);
}

#[tokio::test]
async fn sensor_normalize_deadband_state_carries_over() {
    let cfg = r#"{"deadband":{"temperature":0.5}}"#;
    let t = transform("sensor-normalize", cfg, &limits(100, 64));
    let send = |p: &'static str| {
        let t = Arc::clone(&t);
        async move {
            let m = Msg::new("sensors/dev-1/temp", p).with_captures(&["dev-1"]);
            t.before_invoke(&m.hook()).await
        }
    };
    assert!(matches!(
        send(r#"{"temp": 20.0}"#).await,
        Ok(PreDecision::Invoke { .. })
    ));
    assert!(matches!(
        send(r#"{"temp": 20.2}"#).await,
        Ok(PreDecision::Skip { .. })
    ));
    t.discard_idle();
    // A fresh instance has no memory of the last value.
    assert!(matches!(
        send(r#"{"temp": 20.2}"#).await,
        Ok(PreDecision::Invoke { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_route() {
    let t = hostile();
    pass_through_concurrently(&t, 16, 10).await;
    let s = t.snapshot();
    assert_eq!(s.calls, 160);
    assert_eq!(s.errors(), 0);
    assert!(
        s.instances_created >= 1 && s.instances_created <= 16,
        "{s:?}"
    );
    assert_eq!(t.idle_instances() as u64, s.instances_created);
}

/// A burst on a route with no idle instance creates instances one at a time,
/// and each waiter first looks for one that came back: 32 messages at once
/// against a plugin that takes 200 ms to start share one or two instances
/// (before, each of the 32 started its own, all at once, and on a slow or
/// busy machine all of them missed the setup deadline together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_creates_instances_one_at_a_time() {
    let t = transform(
        "hostile",
        r#"{"configure_spin_ms": 200}"#,
        &limits(2_000, 64),
    );
    pass_through_concurrently(&t, 32, 1).await;
    let s = t.snapshot();
    assert_eq!((s.calls, s.errors()), (32, 0), "{s:?}");
    assert!(s.instances_created <= 4, "{s:?}");
}

#[tokio::test]
async fn a_loop_in_the_post_hook_is_stopped_too() {
    let t = hostile();
    let m = Msg::new("hostile/in", "hello");
    let outs = t.after_invoke(&m.hook(), "fine").await.unwrap();
    assert_eq!(outs.len(), 1);
    assert_eq!(&outs[0].payload[..], b"fine");
    assert_eq!(outs[0].topic, None);
    let e = t.after_invoke(&m.hook(), "loop").await.unwrap_err();
    assert_eq!(e.kind(), "timeout");
    assert_fresh(&t).await;
}

#[tokio::test]
async fn a_pre_transform_component_keeps_the_default_post_hook() {
    let t = transform("template", "null", &TransformLimits::default());
    assert!(t.has_before());
    assert!(!t.has_after());
    assert_eq!(t.plugin().world(), "pre-transform");
    let m = Msg::new("example/in", "hello");
    let outs = t.after_invoke(&m.hook(), "reply").await.unwrap();
    assert_eq!(&outs[0].payload[..], b"reply");
    assert!(matches!(
        t.before_invoke(&Msg::new("example/in", "").hook()).await,
        Ok(PreDecision::Skip { .. })
    ));
}

#[tokio::test]
async fn a_config_the_plugin_refuses_fails_prepare() {
    let t = transform(
        "template",
        r#"{"fucntion":"x"}"#,
        &TransformLimits::default(),
    );
    let e = t.prepare().await.unwrap_err();
    assert_eq!(e.kind(), "configure_failed", "{e}");
    assert!(e.to_string().contains("unknown field `fucntion`"), "{e}");
    assert_eq!(t.snapshot().configure_failed, 1);
    // On the message path the failure is the message's, counted once more.
    let e = t
        .before_invoke(&Msg::new("example/in", "hello").hook())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "configure_failed");
    let s = t.snapshot();
    assert_eq!((s.configure_failed, s.calls, s.errors()), (2, 1, 2));
    let good = transform(
        "template",
        r#"{"function":"other"}"#,
        &TransformLimits::default(),
    );
    good.prepare().await.unwrap();
    assert_eq!(good.idle_instances(), 1);
}

#[tokio::test]
async fn fuel_runs_out_when_metered() {
    let dir = tempfile::tempdir().unwrap();
    let host = PluginHost::new(&PluginsConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        fuel_metering: true,
        ..PluginsConfig::default()
    })
    .unwrap();
    let plugin = host.load(&dist("hostile")).unwrap();
    let mut l = limits(2000, 64);
    l.fuel = Some(5_000_000);
    let t = RouteTransform::new(&host, plugin, "fuel", "null".into(), &l);
    assert_eq!(before(&t, "hello").await.unwrap(), "hello");
    let e = before(&t, "loop").await.unwrap_err();
    assert_eq!(e.kind(), "fuel_exhausted", "{e}");
    assert_fresh(&t).await;
}

#[tokio::test]
async fn the_compile_cache_is_written_and_hit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = PluginsConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..PluginsConfig::default()
    };
    let first = PluginHost::new(&cfg).unwrap();
    let p = first.load(&dist("sensor-normalize")).unwrap();
    assert!(!p.from_cache());
    let entry = first.cache_path(&p.sha256()).unwrap();
    assert!(entry.is_file(), "{} not written", entry.display());
    assert_eq!(first.cache_stats().compiled, 1);

    // The same content under another name compiles once per host.
    let copy = dir.path().join("copy.wasm");
    std::fs::copy(dist("sensor-normalize"), &copy).unwrap();
    let again = first.load(&copy).unwrap();
    assert!(Arc::ptr_eq(&p, &again));
    assert_eq!(first.cache_stats().memory_hits, 1);

    let second = PluginHost::new(&cfg).unwrap();
    let q = second.load(&dist("sensor-normalize")).unwrap();
    assert!(q.from_cache());
    let s = second.cache_stats();
    assert_eq!((s.compiled, s.disk_hits), (0, 1));
    let t = RouteTransform::new(&second, q, "r", "null".into(), &TransformLimits::default());
    t.prepare().await.unwrap();

    // A corrupt entry is recompiled, not fatal.
    std::fs::write(&entry, b"garbage").unwrap();
    let third = PluginHost::new(&cfg).unwrap();
    let r = third.load(&dist("sensor-normalize")).unwrap();
    let s = third.cache_stats();
    assert_eq!((s.compiled, s.disk_hits, s.disk_rejected), (1, 0, 1));
    assert!(!r.from_cache());
    assert!(
        std::fs::read(&entry).unwrap().len() > 1000,
        "entry rewritten"
    );
}

#[test]
fn load_errors_name_the_file_and_the_problem() {
    let host = host();
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.wasm");
    let e = format!("{:#}", host.load(&missing).unwrap_err());
    assert!(e.contains("missing.wasm"), "{e}");

    let text = dir.path().join("text.wasm");
    std::fs::write(&text, "not wasm at all").unwrap();
    let e = format!("{:#}", host.load(&text).unwrap_err());
    assert!(
        e.contains("text.wasm is not a WebAssembly component"),
        "{e}"
    );

    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let e = format!("{:#}", host.load(&core).unwrap_err());
    assert!(e.contains("core module"), "{e}");

    // An empty component: valid, but implements nothing.
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let e = format!("{:#}", host.load(&empty).unwrap_err());
    assert!(
        e.contains("empty.wasm does not implement the fxbridge transform world"),
        "{e}"
    );
    assert!(e.contains("fxbridge:transform/setup"), "{e}");
}

#[tokio::test]
async fn js_and_python_components_load_and_run() {
    // Generous deadline: this is about loading and running, not speed (the
    // interpreters' first call is slow on a loaded machine).
    let relaxed = limits(2000, 64);
    let t = transform("js-csv", "null", &relaxed);
    let m = Msg::new("csv/dev-7", "dev-7,21.5,C\n").with_captures(&["dev-7"]);
    match t.before_invoke(&m.hook()).await.unwrap() {
        PreDecision::Invoke { input, .. } => {
            assert_eq!(&input[..], br#"{"device":"dev-7","temp":21.5,"unit":"C"}"#)
        }
        other => panic!("{other:?}"),
    }
    let t = transform(
        "py-fanout",
        r#"{"prefix":"plant/metrics","qos":0}"#,
        &relaxed,
    );
    assert!(
        t.plugin().exports().iter().any(|e| e == "exports"),
        "componentize-py's extra export"
    );
    let m = Msg::new("sensors/dev-1", r#"{"temp": 21.5}"#).with_captures(&["dev-1"]);
    let outs = t
        .after_invoke(&m.hook(), r#"{"metrics":{"a":1,"b":2}}"#)
        .await
        .unwrap();
    assert_eq!(outs.len(), 2);
}

fn config_with_transform(component: &std::path::Path, config: &str) -> fxbridge::config::Config {
    let text = format!(
        "
mqtt:
  url: mqtt://127.0.0.1:1883
  client_id: t
gateway:
  url: http://127.0.0.1:31113
routes:
  - name: temp
    topic: sensors/+/temp
    function: echo
    transform:
      component: {}
      config: {config}
      limits: {{timeout: 50ms, memory: 32MiB}}
",
        component.display()
    );
    fxbridge::config::Config::parse(&text, "bridge.yaml", std::path::Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn for_route_loads_and_configures_eagerly() {
    let host = host();
    let cfg = config_with_transform(&dist("template"), "{function: other-fn}");
    let t = RouteTransform::for_route(&host, &cfg.routes[0])
        .await
        .unwrap();
    assert_eq!(t.idle_instances(), 1, "configured at load");
    assert_eq!(t.snapshot().instances_created, 1);
    let m = Msg::new("sensors/a/temp", "x");
    match t.before_invoke(&m.hook()).await.unwrap() {
        PreDecision::Invoke { function, .. } => assert_eq!(function.as_deref(), Some("other-fn")),
        other => panic!("{other:?}"),
    }

    // A config the plugin refuses fails the load, naming route and file.
    let cfg = config_with_transform(&dist("template"), "{fucntion: other-fn}");
    let e = format!(
        "{:#}",
        RouteTransform::for_route(&host, &cfg.routes[0])
            .await
            .unwrap_err()
    );
    assert!(e.contains("route temp"), "{e}");
    assert!(e.contains("template.wasm"), "{e}");
    assert!(e.contains("configure failed"), "{e}");
}

/// A copy of plugin `name` in a fresh folder (its `.cwasm` goes next to it).
fn copy_of(name: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let to = dir.join(format!("{name}.wasm"));
    std::fs::copy(dist(name), &to).unwrap();
    to
}

#[tokio::test]
async fn a_precompiled_component_is_loaded_instead_of_compiled_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let no_cache = PluginsConfig {
        cache: false,
        ..PluginsConfig::default()
    };
    let wasm = copy_of("sensor-normalize", dir.path());
    let cwasm = fxbridge::transform::precompiled_path(&wasm);
    assert_eq!(cwasm, dir.path().join("sensor-normalize.cwasm"));

    // For this machine, and for its architecture's baseline (a device's
    // file): both load without compiling, and run.
    let arch_triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    for target in [None, Some(arch_triple.as_str())] {
        let bytes = fxbridge::transform::precompile(&no_cache, &wasm, target).unwrap();
        std::fs::write(&cwasm, &bytes).unwrap();
        let host = PluginHost::new(&no_cache).unwrap();
        let p = host.load(&wasm).unwrap();
        assert_eq!(
            p.origin(),
            fxbridge::transform::Origin::Precompiled,
            "{target:?}"
        );
        let s = host.cache_stats();
        assert_eq!((s.compiled, s.precompiled), (0, 1), "{target:?}");
        let t = RouteTransform::new(&host, p, "r", "null".into(), &TransformLimits::default());
        assert_eq!(
            before(&t, r#"{"device":"d","temp":20}"#).await.unwrap(),
            r#"{"device":"d","temperature_c":20.0}"#
        );
    }

    // Made from another version of the component: refused, compiled instead,
    // and the operator's file left alone.
    let other = copy_of("tagger", dir.path());
    std::fs::write(
        fxbridge::transform::precompiled_path(&other),
        fxbridge::transform::precompile(&no_cache, &dist("tagger-v2"), None).unwrap(),
    )
    .unwrap();
    let host = PluginHost::new(&no_cache).unwrap();
    let p = host.load(&other).unwrap();
    assert_eq!(p.origin(), fxbridge::transform::Origin::Compiled);
    let s = host.cache_stats();
    assert_eq!((s.compiled, s.precompiled_rejected), (1, 1));
    assert!(fxbridge::transform::precompiled_path(&other).is_file());

    // Damaged: refused by its checksum, compiled instead.
    let mut bytes = std::fs::read(&cwasm).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&cwasm, &bytes).unwrap();
    let host = PluginHost::new(&no_cache).unwrap();
    let p = host.load(&wasm).unwrap();
    assert_eq!(p.origin(), fxbridge::transform::Origin::Compiled);
    assert_eq!(host.cache_stats().precompiled_rejected, 1);

    // Another architecture needs the `cross-compile` feature, and says so.
    if !cfg!(feature = "cross-compile") {
        let other_arch = if cfg!(target_arch = "aarch64") {
            "x86_64-unknown-linux-musl"
        } else {
            "aarch64-unknown-linux-musl"
        };
        let e = fxbridge::transform::precompile(&no_cache, &wasm, Some(other_arch)).unwrap_err();
        assert!(format!("{e:#}").contains("cross-compile"), "{e:#}");
    }
}
