//! `fxbridge demo`, the README's first command, on the real binary: six
//! readings through the sensor-normalize component built into the binary, each
//! with the outcome the script expects (a result carrying the plugin's
//! canonical document, a skip inside the deadband, a dead letter with the
//! plugin's reason), and the status page's address.

use std::process::Command;

#[test]
fn the_demo_shows_the_wasm_transform_before_and_after() {
    let out = Command::new(env!("CARGO_BIN_EXE_fxbridge"))
        .arg("demo")
        .env_remove("RUST_LOG")
        .output()
        .expect("run fxbridge demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let shows = |text: &str| assert!(stdout.contains(text), "no {text:?} in:\n{stdout}");
    // Before the plugin: °F from dev-1; after: °C in the canonical document.
    shows(r#"dev-1 sends   sensors/dev-1/temperature  {"temp":98.6,"unit":"F"}"#);
    shows(
        r#"results/dev-1/temperature  {"device":"dev-1","function":"echo","result":{"device":"dev-1","temperature_c":37.0}}"#,
    );
    // dev-2's calibration (-0.5 °C) and humidity as a percentage.
    shows(r#""temperature_c":21.0,"humidity_pct":45.0"#);
    shows("skipped    by the plugin");
    shows("dead letter fxbridge/dead-letter/temperature  transform-before: plugin error: temperature 93.33 °C out of range [-40, 85] for device dev-3");
    shows("6 of 6 readings came out as expected");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("status:  http://127.0.0.1:")
                && l.contains("/  (the status page")),
        "the status page's address:\n{stdout}"
    );
    assert!(
        !stderr.contains("WARN") && !stderr.contains("ERROR"),
        "the demo's output is not interleaved with log lines:\n{stderr}"
    );
}
