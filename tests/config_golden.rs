//! Golden files for configuration errors: each `tests/config/invalid/<name>.yaml`
//! sits next to `<name>.err`, the exact output of `fxbridge check` on it. The
//! check must fail (exit 1) and print exactly that text.
//!
//! After an intended change of wording, `UPDATE_GOLDEN=1 cargo test --test
//! config_golden` rewrites the `.err` files; review the diff before committing.

use std::path::Path;
use std::process::Command;

#[test]
fn every_invalid_config_fails_with_its_golden_message() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/config/invalid");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 5,
        "expected the golden cases in {}",
        dir.display()
    );
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let rel = case.strip_prefix(root).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_fxbridge"))
            .current_dir(root)
            .args(["check", "-c"])
            .arg(rel)
            .env_remove("FXBRIDGE_TEST_SURELY_UNSET_PASSWORD")
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let golden = case.with_extension("err");
        if update {
            std::fs::write(&golden, &stdout).unwrap();
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("missing {}; run with UPDATE_GOLDEN=1", golden.display()));
        if out.status.code() != Some(1) {
            failures.push(format!(
                "{}: exit status {:?}, expected 1",
                rel.display(),
                out.status.code()
            ));
        }
        if stdout != want {
            failures.push(format!(
                "{}: output differs\n--- expected\n{want}--- got\n{stdout}",
                rel.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_shipped_example_config_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_fxbridge"))
        .current_dir(root)
        .args(["check", "-c", "bridge.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "bridge.yaml: OK (2 routes)\n"
    );
}
