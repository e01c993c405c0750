//! `fxbridge plugin new` on the real binary: what it writes, what it prints,
//! and what it refuses. Building the skeletons and running their cases is
//! `scripts/plugin-new-check.sh` (minutes, toolchains); these take seconds.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fxbridge::tools::cases::CaseFile;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `fxbridge plugin new <args>` in `cwd`.
fn plugin_new(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fxbridge"))
        .current_dir(cwd)
        .args(["plugin", "new"])
        .args(args)
        .output()
        .expect("run fxbridge")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    files.sort();
    files
}

/// The files common to every skeleton, written to `cwd/shown`, and the
/// printed commands (which name the folder as given, `shown`).
fn check_common(cwd: &Path, shown: &str, name: &str, out: &Output) {
    assert!(out.status.success(), "plugin new failed: {}", stderr(out));
    let printed = stdout(out);
    let dir = &cwd.join(shown);
    assert!(
        printed.contains(&format!("\n  bash {shown}/build.sh\n")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "\n  fxbridge plugin test {shown}/{name}.wasm {shown}/cases.yaml\n"
        )),
        "{printed}"
    );
    assert_eq!(
        read(&dir.join("wit/transform.wit")),
        read(&Path::new(REPO).join("wit/transform.wit")),
        "the skeleton carries the current contract"
    );
    let build = dir.join("build.sh");
    let mode = std::fs::metadata(&build)
        .expect("build.sh")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "build.sh is executable");
    assert!(read(&build).contains(&format!("/{name}.wasm")));
    let cases = CaseFile::load(&dir.join("cases.yaml")).expect("cases.yaml loads");
    assert!(cases.cases.len() >= 4, "{} cases", cases.cases.len());
    for file in tree(dir) {
        let text = read(&dir.join(&file));
        assert!(
            !text.contains("__NAME__") && !text.contains("__CRATE__"),
            "{file}: a placeholder is left"
        );
    }
    let readme = read(&dir.join("README.md"));
    assert!(readme.starts_with(&format!("# {name}\n")), "{readme}");
    assert!(readme.contains("bash build.sh"), "{readme}");
    assert!(readme.contains(&format!("fxbridge plugin test {name}.wasm cases.yaml")));
}

#[test]
fn rust_skeleton_is_a_standalone_crate() {
    // Under target/, that is inside this repository's cargo workspace: the
    // skeleton's own [workspace] table must keep cargo from claiming it.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let dir = tmp.path().join("edge-filter");
    let out = plugin_new(
        tmp.path(),
        &["edge-filter", "--lang", "rust", "--dir", "edge-filter"],
    );
    check_common(tmp.path(), "edge-filter", "edge-filter", &out);
    assert!(stdout(&out).starts_with("created Rust plugin \"edge-filter\""));
    assert_eq!(
        tree(&dir),
        [
            ".gitignore",
            "Cargo.toml",
            "README.md",
            "build.sh",
            "cases.yaml",
            "src/lib.rs",
            "wit/transform.wit"
        ]
    );
    let manifest = read(&dir.join("Cargo.toml"));
    assert!(manifest.contains("name = \"edge-filter\""), "{manifest}");
    assert!(manifest.contains("\n[workspace]\n"), "{manifest}");
    assert!(
        !manifest.contains("path ="),
        "no path dependency: {manifest}"
    );
    assert!(read(&dir.join("build.sh")).contains("release/edge_filter.wasm"));
    assert!(read(&dir.join("src/lib.rs")).contains("const NAME: &str = \"edge-filter\";"));
    let metadata = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(metadata.status.success(), "{}", stderr(&metadata));
    let metadata: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).expect("metadata JSON");
    assert_eq!(
        PathBuf::from(metadata["workspace_root"].as_str().expect("workspace_root")),
        dir.canonicalize().expect("canonical dir"),
        "the skeleton is its own workspace"
    );
}

#[test]
fn js_skeleton_pins_componentize_js_as_the_repository_does() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("csv2json");
    let out = plugin_new(
        tmp.path(),
        &["csv2json", "--lang", "js", "--dir", "csv2json"],
    );
    check_common(tmp.path(), "csv2json", "csv2json", &out);
    assert_eq!(
        tree(&dir),
        [
            ".gitignore",
            "README.md",
            "build.mjs",
            "build.sh",
            "cases.yaml",
            "package-lock.json",
            "package.json",
            "plugin.js",
            "wit/transform.wit"
        ]
    );
    let json = |path: &Path| -> serde_json::Value {
        serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let package = json(&dir.join("package.json"));
    let lock = json(&dir.join("package-lock.json"));
    let repo_package = json(&Path::new(REPO).join("plugins/js-csv/package.json"));
    assert_eq!(package["name"], "csv2json");
    assert_eq!(lock["name"], "csv2json");
    assert_eq!(lock["packages"][""]["name"], "csv2json");
    assert_eq!(package["devDependencies"], repo_package["devDependencies"]);
    assert_eq!(
        lock["packages"][""]["devDependencies"],
        package["devDependencies"]
    );
    let repo_lock = json(&Path::new(REPO).join("plugins/js-csv/package-lock.json"));
    assert_eq!(
        lock["packages"]["node_modules/@bytecodealliance/componentize-js"],
        repo_lock["packages"]["node_modules/@bytecodealliance/componentize-js"],
        "the same resolved componentize-js"
    );
    assert!(read(&dir.join("plugin.js")).contains("const NAME = 'csv2json';"));
}

#[test]
fn python_skeleton_pins_componentize_py_as_the_repository_does() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fan_out");
    let out = plugin_new(
        tmp.path(),
        &["fan_out", "--lang", "python", "--dir", "fan_out"],
    );
    check_common(tmp.path(), "fan_out", "fan_out", &out);
    assert_eq!(
        tree(&dir),
        [
            ".gitignore",
            "README.md",
            "build.sh",
            "cases.yaml",
            "requirements.txt",
            "src/app.py",
            "wit/transform.wit"
        ]
    );
    assert_eq!(
        read(&dir.join("requirements.txt")),
        read(&Path::new(REPO).join("plugins/py-fanout/requirements.txt"))
    );
    let build = read(&dir.join("build.sh"));
    assert!(
        build.contains("-d wit -w fxbridge:transform/transform@0.2.0"),
        "{build}"
    );
    assert!(read(&dir.join("src/app.py")).contains("NAME = \"fan_out\""));
}

#[test]
fn default_folder_is_the_name_in_the_current_folder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = plugin_new(tmp.path(), &["my-plugin", "--lang", "python"]);
    check_common(tmp.path(), "my-plugin", "my-plugin", &out);
    assert!(tmp.path().join("my-plugin/src/app.py").is_file());
    assert_eq!(
        std::fs::read_dir(tmp.path()).expect("read_dir").count(),
        1,
        "only the plugin's folder, no staging left over"
    );
}

#[test]
fn an_empty_folder_is_filled_and_paths_are_quoted_in_the_commands() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("my dir");
    std::fs::create_dir(&dir).expect("mkdir");
    let out = plugin_new(tmp.path(), &["p", "--lang", "js", "--dir", "my dir"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("plugin.js").is_file());
    let printed = stdout(&out);
    assert!(
        printed.contains("\n  bash 'my dir/build.sh'\n"),
        "{printed}"
    );
    assert!(
        printed.contains("\n  fxbridge plugin test 'my dir/p.wasm' 'my dir/cases.yaml'\n"),
        "{printed}"
    );
}

#[test]
fn an_existing_non_empty_folder_or_a_file_is_not_overwritten() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("taken");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("cases.yaml"), "mine").expect("write");
    let out = plugin_new(tmp.path(), &["taken", "--lang", "rust"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("taken already exists and is not empty"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tree(&dir), ["cases.yaml"]);
    assert_eq!(read(&dir.join("cases.yaml")), "mine");

    std::fs::write(tmp.path().join("file"), "x").expect("write");
    let out = plugin_new(tmp.path(), &["p", "--lang", "rust", "--dir", "file"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("file already exists and is not a folder"),
        "{}",
        stderr(&out)
    );
    assert_eq!(read(&tmp.path().join("file")), "x");

    std::os::unix::fs::symlink(tmp.path().join("nowhere"), tmp.path().join("link"))
        .expect("symlink");
    let out = plugin_new(tmp.path(), &["p", "--lang", "rust", "--dir", "link"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("link is a symbolic link to nothing"),
        "{}",
        stderr(&out)
    );
    assert!(!tmp.path().join("nowhere").exists());
}

#[test]
fn bad_names_are_refused_with_the_rule_and_nothing_is_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (name, lang, expected) in [
        (
            "MyPlugin",
            "js",
            "invalid plugin name \"MyPlugin\" (at 'M')",
        ),
        ("2fast", "rust", "invalid plugin name \"2fast\" (at '2')"),
        ("a/b", "python", "invalid plugin name \"a/b\" (at '/')"),
        ("my--plugin", "js", "(at '-')"),
        ("plugin_", "js", "(ends with '_')"),
        ("fn", "rust", "cannot be a Rust crate name"),
        ("wit-bindgen", "rust", "cannot be a Rust crate name"),
    ] {
        let out = plugin_new(tmp.path(), &[name, "--lang", lang]);
        assert!(!out.status.success(), "{name} was accepted");
        let err = stderr(&out);
        assert!(err.contains(expected), "{name}: {err}");
        if expected.starts_with("invalid") {
            assert!(err.contains("lower-case letters, digits"), "{name}: {err}");
        }
    }
    let out = plugin_new(tmp.path(), &["fn", "--lang", "js"]);
    assert!(out.status.success(), "a Rust keyword is fine in JavaScript");
    assert_eq!(tree(tmp.path()).len(), tree(&tmp.path().join("fn")).len());
}

#[test]
fn the_language_is_required_and_checked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = plugin_new(tmp.path(), &["p"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--lang <LANG>"), "{}", stderr(&out));
    let out = plugin_new(tmp.path(), &["p", "--lang", "go"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("invalid value 'go'") && err.contains("rust, js, python"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(tmp.path()).expect("read_dir").count(), 0);
}
