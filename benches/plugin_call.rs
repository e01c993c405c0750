//! Cost of one hook call: noop (pre + post) at 16 B, 256 B and 4 KiB payloads,
//! on a reused instance and on a fresh instance (instantiate + configure +
//! call), plus sensor-normalize's pre hook on a typical reading.
//!
//! `cargo bench --bench plugin_call` (plugins built with `bash plugins/build.sh`).

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fxbridge::config::{PluginsConfig, TransformLimits};
use fxbridge::message::QoS;
use fxbridge::transform::{HookMessage, PluginHost, RouteTransform};

fn dist(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("plugins/dist/{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `bash plugins/build.sh`",
        path.display()
    );
    path
}

fn hook<'a>(topic: &'a str, captures: &'a [String], payload: &'a [u8]) -> HookMessage<'a> {
    HookMessage {
        route: "bench",
        function: "echo",
        topic,
        captures,
        payload,
        qos: QoS::AtLeastOnce,
        retain: false,
        user_properties: &[],
        content_type: None,
        utf8: false,
        response_topic: None,
        correlation_data: None,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let host = PluginHost::new(&PluginsConfig {
        cache_dir: Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-plugin-cache"),
        ),
        ..PluginsConfig::default()
    })
    .expect("host");
    let limits = TransformLimits::default();
    let noop = host.load(&dist("noop")).expect("noop");
    let t = RouteTransform::new(&host, noop, "bench", "null".into(), &limits);
    let captures: Vec<String> = Vec::new();

    let mut g = c.benchmark_group("noop");
    for size in [16usize, 256, 4096] {
        let payload = vec![b'x'; size];
        let reply = "y".repeat(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("reused/pre", size), &size, |b, _| {
            b.iter(|| {
                rt.block_on(t.before_invoke(&hook("bench/in", &captures, &payload)))
                    .expect("call")
            })
        });
        g.bench_with_input(BenchmarkId::new("reused/post", size), &size, |b, _| {
            b.iter(|| {
                rt.block_on(t.after_invoke(&hook("bench/in", &captures, &payload), &reply))
                    .expect("call")
            })
        });
        g.bench_with_input(BenchmarkId::new("fresh/pre", size), &size, |b, _| {
            b.iter(|| {
                t.discard_idle();
                rt.block_on(t.before_invoke(&hook("bench/in", &captures, &payload)))
                    .expect("call")
            })
        });
    }
    g.finish();

    let sn = host
        .load(&dist("sensor-normalize"))
        .expect("sensor-normalize");
    let cfg = r#"{"reply_topic":"results/{device}","ranges":{"temperature":{"min":-40,"max":85}}}"#;
    let t = RouteTransform::new(&host, sn, "bench", cfg.into(), &limits);
    let captures = vec!["dev-1".to_string()];
    let payload = br#"{"temp": 98.6, "unit": "F", "ts": 1732600000}"#.to_vec();
    let mut g = c.benchmark_group("sensor-normalize");
    g.bench_function("reused/pre", |b| {
        b.iter(|| {
            rt.block_on(t.before_invoke(&hook("sensors/dev-1/temp", &captures, &payload)))
                .expect("call")
        })
    });
    g.bench_function("fresh/pre", |b| {
        b.iter(|| {
            t.discard_idle();
            rt.block_on(t.before_invoke(&hook("sensors/dev-1/temp", &captures, &payload)))
                .expect("call")
        })
    });
    g.finish();
    drop(Arc::clone(&host));
}

criterion_group!(benches, bench);
criterion_main!(benches);
