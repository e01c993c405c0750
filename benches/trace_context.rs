//! The per-message cost of trace context with `telemetry.otlp` unset (the
//! default): what `pipeline` does for one message on one route, against a
//! bridge with `telemetry.propagate: false`.
//!
//! `cargo bench --bench trace_context`

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use fxbridge::config::TelemetryConfig;
use fxbridge::message::{Message, QoS};
use fxbridge::telemetry::Telemetry;

fn per_message(t: &Telemetry, msg: &Message) -> usize {
    let trace = t.start(msg, Some("route"), Instant::now());
    // The gateway's metadata and one result's user properties.
    let to_gateway = trace.properties(None, &msg.user_properties);
    let mut result = msg.clone();
    trace.mark(None, &mut result);
    to_gateway.len() + result.user_properties.len()
}

fn bench(c: &mut Criterion) {
    let on = Telemetry::new(&TelemetryConfig::default()).expect("telemetry");
    let off = Telemetry::new(&TelemetryConfig {
        propagate: false,
        otlp: None,
    })
    .expect("telemetry");
    let plain = Message::new("s/dev-1/temp", &b"{\"t\":21.5}"[..], QoS::AtLeastOnce);
    let mut traced = plain.clone();
    traced.user_properties = vec![(
        "traceparent".to_string(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
    )];
    let mut g = c.benchmark_group("trace_context");
    g.bench_function("off", |b| b.iter(|| per_message(&off, &plain)));
    g.bench_function("started_by_the_bridge", |b| {
        b.iter(|| per_message(&on, &plain))
    });
    g.bench_function("from_the_message", |b| b.iter(|| per_message(&on, &traced)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
