//! `fxbridge plugin new`: writes the skeleton of a transform plugin in Rust,
//! JavaScript or Python, ready to build with one command (`bash build.sh` in
//! the new folder, which writes `<name>.wasm` next to it) and to pass
//! `fxbridge plugin test <name>.wasm cases.yaml` as generated.
//!
//! The templates live in `src/tools/scaffold/` and are compiled into the
//! binary, together with the contract (`wit/transform.wit`) and the pins of
//! the toolchains the repository's own plugins are built and tested with:
//! `plugins/js-csv/package-lock.json` (componentize-js) and
//! `plugins/py-fanout/requirements.txt` (componentize-py). The Rust skeleton
//! depends on wit-bindgen directly (the version of `plugins/Cargo.toml`)
//! with its own copy of the WIT, not on the repository's `fxbridge-plugin`
//! helper crate, and has a `[workspace]` table of its own: every skeleton
//! builds wherever it is generated, inside this repository or not.
//!
//! Every skeleton behaves the same, so one `cases.yaml` serves all three: the
//! pre hook skips an empty payload and otherwise invokes the route's function
//! (or the config's `function`) with the payload unchanged; the post hook
//! publishes a non-empty reply once with the user property
//! `plugin=<name>`.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The contract every skeleton gets a copy of (`wit/transform.wit`).
const WIT: &str = include_str!("../../wit/transform.wit");
/// The npm lock of the repository's JavaScript plugin: the skeleton's
/// `package-lock.json` is this one under the new name, so `npm ci` installs
/// exactly the componentize-js the repository builds and tests with.
const JS_LOCK: &str = include_str!("../../plugins/js-csv/package-lock.json");
/// The pip requirements of the repository's Python plugin (componentize-py).
const PY_REQUIREMENTS: &str = include_str!("../../plugins/py-fanout/requirements.txt");

const CASES: &str = include_str!("scaffold/cases.yaml");
const GITIGNORE: &str = include_str!("scaffold/gitignore");

const RUST_CARGO: &str = include_str!("scaffold/rust/Cargo.toml.tmpl");
const RUST_LIB: &str = include_str!("scaffold/rust/lib.rs");
const RUST_BUILD: &str = include_str!("scaffold/rust/build.sh");
const RUST_README: &str = include_str!("scaffold/rust/README.md");

const JS_PLUGIN: &str = include_str!("scaffold/js/plugin.js");
const JS_BUILD_MJS: &str = include_str!("scaffold/js/build.mjs");
const JS_BUILD: &str = include_str!("scaffold/js/build.sh");
const JS_README: &str = include_str!("scaffold/js/README.md");

const PY_APP: &str = include_str!("scaffold/python/app.py");
const PY_BUILD: &str = include_str!("scaffold/python/build.sh");
const PY_README: &str = include_str!("scaffold/python/README.md");

/// The longest accepted plugin name (crates.io's limit for crate names).
const MAX_NAME_LEN: usize = 64;

/// Names a Rust crate cannot have here: keywords (cargo refuses them), the
/// standard crates, and the skeleton's own dependencies (the crate's library
/// would shadow them). Compared with `-` read as `_`.
const RUST_RESERVED: &[&str] = &[
    "abstract",
    "alloc",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "core",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "override",
    "priv",
    "proc_macro",
    "pub",
    "ref",
    "return",
    "self",
    "serde",
    "serde_json",
    "static",
    "std",
    "struct",
    "super",
    "test",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "wit_bindgen",
    "yield",
];

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, built with cargo for wasm32-wasip2 (wit-bindgen).
    Rust,
    /// JavaScript, built with componentize-js (npm).
    #[value(alias = "javascript")]
    Js,
    /// Python, built with componentize-py (pip).
    #[value(alias = "py")]
    Python,
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "Rust",
            Lang::Js => "JavaScript",
            Lang::Python => "Python",
        })
    }
}

/// One file of a skeleton, relative to the plugin's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: &'static str,
    pub contents: String,
    /// Written with mode 0755 (the build script).
    pub executable: bool,
}

/// What [`create`] wrote, and how to go on.
#[derive(Debug)]
pub struct Created {
    pub name: String,
    pub lang: Lang,
    pub dir: PathBuf,
    /// Relative to `dir`, in the order written.
    pub files: Vec<&'static str>,
    /// The command that builds the component, runnable from the current
    /// directory (paths shell-quoted as needed).
    pub build: String,
    /// The `fxbridge plugin test` command for the built component.
    pub test: String,
}

impl fmt::Display for Created {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "created {} plugin {:?} in {}: {}",
            self.lang,
            self.name,
            self.dir.display(),
            self.files.join(" ")
        )?;
        writeln!(f, "build it, then run its cases:")?;
        writeln!(f, "  {}", self.build)?;
        writeln!(f, "  {}", self.test)
    }
}

/// The folder `fxbridge plugin new <name>` writes to without `--dir`:
/// `./<name>`, as `cargo new` does. A skeleton is self-contained, so it does
/// not need to live under this repository's `plugins/` (where
/// `scripts/test.sh` would look for a `plugins/dist/<name>.wasm` that
/// `plugins/build.sh` does not build).
pub fn default_dir(name: &str) -> PathBuf {
    PathBuf::from(name)
}

/// Checks that `name` works as a crate, npm package and file name: lower-case
/// ASCII letters and digits in words joined by single `-` or `_`, starting
/// with a letter, at most 64 characters; for Rust, not a keyword or a name
/// the skeleton's crate cannot take.
pub fn validate_name(name: &str, lang: Lang) -> Result<()> {
    let rule = "use lower-case letters, digits, and single '-' or '_' between them, \
                starting with a letter (for example my-plugin)";
    if name.is_empty() {
        bail!("the plugin name is empty; {rule}");
    }
    if name.len() > MAX_NAME_LEN {
        bail!(
            "the plugin name {name:?} is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        );
    }
    let mut previous: Option<char> = None;
    for (i, c) in name.chars().enumerate() {
        let ok = match c {
            'a'..='z' => true,
            '0'..='9' => i > 0,
            '-' | '_' => i > 0 && !matches!(previous, Some('-' | '_')),
            _ => false,
        };
        if !ok {
            bail!("invalid plugin name {name:?} (at {c:?}): {rule}");
        }
        previous = Some(c);
    }
    if let Some(last @ ('-' | '_')) = previous {
        bail!("invalid plugin name {name:?} (ends with {last:?}): {rule}");
    }
    if lang == Lang::Rust && RUST_RESERVED.contains(&crate_name(name).as_str()) {
        bail!(
            "the plugin name {name:?} cannot be a Rust crate name here (a keyword, a standard \
             crate or one of the skeleton's dependencies); choose another"
        );
    }
    Ok(())
}

/// The crate's library name, which names the Rust build output.
fn crate_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The files of the skeleton of plugin `name` in `lang` (no validation).
pub fn files(name: &str, lang: Lang) -> Result<Vec<File>> {
    let fill = |template: &str| {
        template
            .replace("__NAME__", name)
            .replace("__CRATE__", &crate_name(name))
    };
    let file = |path, contents| File {
        path,
        contents,
        executable: false,
    };
    let build = |template: &str| File {
        path: "build.sh",
        contents: fill(template),
        executable: true,
    };
    let mut files = vec![
        file(".gitignore", fill(GITIGNORE)),
        file("cases.yaml", fill(CASES)),
        file("wit/transform.wit", WIT.to_string()),
    ];
    match lang {
        Lang::Rust => files.extend([
            file("README.md", fill(RUST_README)),
            file("Cargo.toml", fill(RUST_CARGO)),
            file("src/lib.rs", fill(RUST_LIB)),
            build(RUST_BUILD),
        ]),
        Lang::Js => {
            let (package, lock) = js_package(name)?;
            files.extend([
                file("README.md", fill(JS_README)),
                file("package.json", package),
                file("package-lock.json", lock),
                file("plugin.js", fill(JS_PLUGIN)),
                file("build.mjs", JS_BUILD_MJS.to_string()),
                build(JS_BUILD),
            ]);
        }
        Lang::Python => files.extend([
            file("README.md", fill(PY_README)),
            file("requirements.txt", PY_REQUIREMENTS.to_string()),
            file("src/app.py", fill(PY_APP)),
            build(PY_BUILD),
        ]),
    }
    Ok(files)
}

/// `package.json` and `package-lock.json` of a JavaScript skeleton: the
/// repository's js-csv lock under the new name, and a package declaring
/// exactly the lock's dev dependencies (so `npm ci` accepts the pair).
fn js_package(name: &str) -> Result<(String, String)> {
    let lock: serde_json::Value =
        serde_json::from_str(JS_LOCK).context("the embedded js-csv package-lock.json")?;
    let old_name = lock
        .get("name")
        .and_then(|n| n.as_str())
        .context("the embedded package-lock.json has no name")?;
    let version = lock
        .get("version")
        .and_then(|v| v.as_str())
        .context("the embedded package-lock.json has no version")?;
    let dev = lock
        .pointer("/packages//devDependencies") // `packages[""]`: the root package
        .and_then(|d| d.as_object())
        .context("the embedded package-lock.json has no root devDependencies")?;
    let mut deps = Vec::new();
    for (package, pin) in dev {
        let pin = pin
            .as_str()
            .with_context(|| format!("package-lock.json: the pin of {package} is not a string"))?;
        deps.push(format!(
            "    {}: {}",
            serde_json::Value::from(package.as_str()),
            serde_json::Value::from(pin)
        ));
    }
    let package = format!(
        r#"{{
  "name": {name},
  "version": {version},
  "private": true,
  "description": "fxbridge transform plugin, generated by `fxbridge plugin new`",
  "type": "module",
  "scripts": {{
    "build": "bash build.sh"
  }},
  "devDependencies": {{
{deps}
  }},
  "//": "Pinned exactly, with package-lock.json, as in fxbridge's plugins/js-csv. componentize-js imports @bytecodealliance/preview2-shim at build time without declaring it, hence the second pin."
}}
"#,
        name = serde_json::Value::from(name),
        version = serde_json::Value::from(version),
        deps = deps.join(",\n"),
    );
    // Rename by text, to keep the lock byte for byte otherwise.
    let from = format!("\"name\": {}", serde_json::Value::from(old_name));
    let to = format!("\"name\": {}", serde_json::Value::from(name));
    if !JS_LOCK.contains(&from) {
        bail!("the embedded package-lock.json does not contain {from}");
    }
    Ok((package, JS_LOCK.replace(&from, &to)))
}

/// Writes the skeleton of plugin `name` in `lang` to `dir` (default:
/// [`default_dir`]). Refuses a name [`validate_name`] rejects, and a `dir`
/// that exists and is not an empty folder. A new folder is written under a
/// temporary name next to it and renamed when complete, so a failure leaves
/// nothing behind.
pub fn create(name: &str, lang: Lang, dir: Option<&Path>) -> Result<Created> {
    validate_name(name, lang)?;
    let dir = dir.map_or_else(|| default_dir(name), Path::to_path_buf);
    let files = files(name, lang)?;
    match std::fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => {
            let mut entries = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot read {}", dir.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty; not overwriting it (choose another \
                     --dir, or remove it)",
                    dir.display()
                );
            }
            if let Err(e) = write_files(&dir, &files) {
                // It was empty: everything in it is what this call wrote.
                clear(&dir);
                return Err(e);
            }
        }
        Ok(_) => bail!("{} already exists and is not a folder", dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(&dir).is_ok() {
                bail!("{} is a symbolic link to nothing", dir.display());
            }
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let leaf = dir
                .file_name()
                .with_context(|| format!("{} does not name a folder", dir.display()))?;
            std::fs::create_dir_all(&parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            let staging = parent.join(format!(
                ".{}.fxbridge-new-{}",
                leaf.to_string_lossy(),
                std::process::id()
            ));
            let written = write_files(&staging, &files).and_then(|()| {
                std::fs::rename(&staging, &dir).with_context(|| {
                    format!("cannot rename {} to {}", staging.display(), dir.display())
                })
            });
            if let Err(e) = written {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        }
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
    }
    let wasm = dir.join(format!("{name}.wasm"));
    Ok(Created {
        name: name.to_string(),
        lang,
        build: format!("bash {}", shell_quote(&dir.join("build.sh"))),
        test: format!(
            "fxbridge plugin test {} {}",
            shell_quote(&wasm),
            shell_quote(&dir.join("cases.yaml"))
        ),
        files: files.iter().map(|f| f.path).collect(),
        dir,
    })
}

/// Writes `files` under `root`, creating folders as needed.
fn write_files(root: &Path, files: &[File]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    for file in files {
        let path = root.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, &file.contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        if file.executable {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot make {} executable", path.display()))?;
        }
    }
    Ok(())
}

/// Best effort: removes everything inside `dir` (after a failed write into a
/// folder that was empty).
fn clear(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// `path` as one shell word: unchanged when it has only safe characters,
/// otherwise in single quotes.
fn shell_quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if safe {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_work_everywhere_are_accepted() {
        for name in ["a", "my-plugin", "sensor_filter2", "x1-y2_z3"] {
            for lang in [Lang::Rust, Lang::Js, Lang::Python] {
                validate_name(name, lang).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        validate_name(&"a".repeat(MAX_NAME_LEN), Lang::Js).unwrap();
    }

    #[test]
    fn other_names_are_refused_with_the_reason() {
        let cases = [
            ("", "empty"),
            ("My-Plugin", "at 'M'"),
            ("1plugin", "at '1'"),
            ("-plugin", "at '-'"),
            ("my--plugin", "at '-'"),
            ("my-_plugin", "at '_'"),
            ("plugin-", "ends with '-'"),
            ("my plugin", "at ' '"),
            ("../evil", "at '.'"),
            ("a/b", "at '/'"),
            ("café", "at 'é'"),
        ];
        for (name, reason) in cases {
            let err = validate_name(name, Lang::Js).unwrap_err().to_string();
            assert!(err.contains(reason), "{name:?}: {err}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        let err = validate_name(&long, Lang::Python).unwrap_err().to_string();
        assert!(err.contains("at most 64"), "{err}");
    }

    #[test]
    fn rust_refuses_keywords_and_shadowing_names_only_for_rust() {
        for name in ["fn", "test", "std", "wit-bindgen", "serde_json"] {
            let err = validate_name(name, Lang::Rust).unwrap_err().to_string();
            assert!(err.contains("cannot be a Rust crate name"), "{name}: {err}");
        }
        validate_name("match", Lang::Js).unwrap();
        validate_name("test", Lang::Python).unwrap();
    }

    #[test]
    fn templates_are_filled_in() {
        for lang in [Lang::Rust, Lang::Js, Lang::Python] {
            for file in files("my-plugin", lang).unwrap() {
                assert!(
                    !file.contents.contains("__NAME__") && !file.contents.contains("__CRATE__"),
                    "{lang} {}: a placeholder is left",
                    file.path
                );
            }
        }
        let rust = files("my-plugin", Lang::Rust).unwrap();
        let build = rust.iter().find(|f| f.path == "build.sh").unwrap();
        assert!(build.executable);
        assert!(build.contents.contains("release/my_plugin.wasm"));
        assert!(build.contents.contains("/my-plugin.wasm"));
    }

    #[test]
    fn rust_skeleton_uses_the_wit_bindgen_of_the_plugins_workspace() {
        // The skeleton is not built by `plugins/build.sh`; this keeps its
        // wit-bindgen the version the repository's plugins are built with.
        let workspace = include_str!("../../plugins/Cargo.toml");
        let line = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("wit-bindgen = "))
                .map(str::to_string)
        };
        assert!(
            line(workspace).is_some(),
            "plugins/Cargo.toml: no wit-bindgen"
        );
        assert_eq!(line(RUST_CARGO), line(workspace));
    }

    #[test]
    fn js_lock_is_renamed_and_matches_the_package() {
        let (package, lock) = js_package("my-plugin").unwrap();
        let package: serde_json::Value = serde_json::from_str(&package).unwrap();
        let lock: serde_json::Value = serde_json::from_str(&lock).unwrap();
        assert_eq!(package["name"], "my-plugin");
        assert_eq!(lock["name"], "my-plugin");
        assert_eq!(lock["packages"][""]["name"], "my-plugin");
        assert_eq!(
            package["devDependencies"],
            lock["packages"][""]["devDependencies"]
        );
        let pin = package["devDependencies"]["@bytecodealliance/componentize-js"]
            .as_str()
            .unwrap();
        assert!(
            pin.chars().all(|c| c.is_ascii_digit() || c == '.'),
            "not an exact pin: {pin}"
        );
    }

    #[test]
    fn paths_are_quoted_for_the_shell_only_when_needed() {
        assert_eq!(
            shell_quote(Path::new("plugins/a-b/build.sh")),
            "plugins/a-b/build.sh"
        );
        assert_eq!(shell_quote(Path::new("/tmp/my dir/x")), "'/tmp/my dir/x'");
        assert_eq!(shell_quote(Path::new("it's")), r"'it'\''s'");
    }
}
