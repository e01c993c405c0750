//! Every plugin's `cases.yaml` passes under `fxbridge plugin test`, both through
//! the library (`cases::run_file`) and through the binary (exit code, output).

mod common;

use std::path::Path;
use std::process::Command;

use common::dist;
use common::plugins::host;
use fxbridge::tools::cases;

const PLUGINS: &[&str] = &[
    "noop",
    "template",
    "sensor-normalize",
    "hostile",
    "js-csv",
    "py-fanout",
];

/// A cache shared by the CLI runs of this build (compiling py-fanout is slow).
fn xdg() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg")
}

fn cases_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .join(name)
        .join("cases.yaml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_plugin_passes_its_cases() {
    let host = host();
    let mut failed = Vec::new();
    for name in PLUGINS {
        let report = cases::run_file(&host, &dist(name), &cases_file(name))
            .await
            .unwrap();
        assert!(report.passed > 0, "{name}: no cases ran");
        if report.failed > 0 {
            failed.push(format!(
                "{name}: {:?}",
                report
                    .cases
                    .iter()
                    .filter(|(_, v)| *v != cases::Verdict::Ok)
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn the_cli_reports_a_mismatch_with_a_diff_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "cases:\n  - name: wrong on purpose\n    message: {topic: t, payload: hello}\n    before:\n      invoke: {input: goodbye}\n  - name: right\n    message: {topic: t, payload: hello}\n    before:\n      invoke: {input: hello}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fxbridge"))
        .env("XDG_CACHE_HOME", xdg())
        .args(["plugin", "test"])
        .arg(dist("noop"))
        .arg(&cases)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL  wrong on purpose"), "{stdout}");
    assert!(
        stdout.contains("expected: invoke with \"goodbye\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("got:      invoke with \"hello\""),
        "{stdout}"
    );
    assert!(stdout.contains("ok    right"), "{stdout}");
}

#[test]
fn the_cli_inspects_a_component() {
    let out = Command::new(env!("CARGO_BIN_EXE_fxbridge"))
        .env("XDG_CACHE_HOME", xdg())
        .args(["plugin", "inspect"])
        .arg(dist("py-fanout"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("fxbridge:transform@0.1.0 (world transform)"),
        "{stdout}"
    );
    assert!(stdout.contains("wasi:cli/"), "{stdout}");
    assert!(stdout.contains("exports (ignored)"), "{stdout}");
}
