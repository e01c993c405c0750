//! [`Plugin`]: a compiled, linked component (an [`InstancePre`]) with its
//! sha256, the hooks it exports and the WIT package version it targets.
//!
//! Validation at link time: every import must be satisfiable by the host (WASI
//! p2 and `fxbridge:transform/host`), `setup` must be exported, and at least
//! one of `before-invoke` / `after-invoke`. Other exports (componentize-py's
//! `exports` instance, for one) are ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use wasmtime::component::{Component, InstancePre};

use super::bindings::{AfterIndices, BeforeIndices, SetupIndices, Version};
use super::sandbox::{hex, wt};
use super::state::HostState;

/// The contract's package, and the newest version this host implements (it
/// runs every version of [`Version::ALL`]).
pub const WIT_PACKAGE: &str = "fxbridge:transform";
pub const WIT_VERSION: &str = "0.2.0";
const SETUP: &str = "fxbridge:transform/setup";
const BEFORE: &str = "fxbridge:transform/before-invoke";
const AFTER: &str = "fxbridge:transform/after-invoke";

/// A loaded component, ready to be instantiated for any number of routes.
pub struct Plugin {
    path: PathBuf,
    sha256: [u8; 32],
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) setup: SetupIndices,
    pub(crate) before: Option<BeforeIndices>,
    pub(crate) after: Option<AfterIndices>,
    imports: Vec<String>,
    exports: Vec<String>,
    wit_version: String,
    load_time: Duration,
    origin: Origin,
}

/// Where a plugin's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled by Cranelift when it was loaded.
    Compiled,
    /// The compile cache (`plugins.cache_dir`), written by an earlier load.
    Cache,
    /// A precompiled file shipped next to the component (`<name>.cwasm`,
    /// made by `fxbridge plugin compile`).
    Precompiled,
}

impl Origin {
    /// How `plugin inspect` says it.
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Compiled => "compiled now",
            Origin::Cache => "from the compile cache",
            Origin::Precompiled => "precompiled (the .cwasm next to the component)",
        }
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("sha256", &self.sha256_hex())
            .field("before", &self.before.is_some())
            .field("after", &self.after.is_some())
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub(crate) fn link(
        engine: &wasmtime::Engine,
        linker: &wasmtime::component::Linker<HostState>,
        path: &Path,
        component: Component,
        sha256: [u8; 32],
        load_time: Duration,
        origin: Origin,
    ) -> Result<Plugin> {
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let export_names: Vec<String> = ty
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let ours: Vec<&String> = export_names
            .iter()
            .filter(|n| n.starts_with(&format!("{WIT_PACKAGE}/")))
            .collect();
        let wit_version = ours
            .iter()
            .find_map(|n| n.split_once('@').map(|(_, v)| v.to_string()))
            .unwrap_or_default();
        if ours.is_empty() {
            bail!(
                "{} does not implement the fxbridge transform world: it exports none of \
                 {SETUP}, {BEFORE}, {AFTER} (its exports: {})",
                path.display(),
                list(&export_names)
            );
        }
        let Some(version) = Version::parse(&wit_version) else {
            bail!(
                "{} targets {WIT_PACKAGE}@{wit_version}; this bridge runs @{}",
                path.display(),
                Version::ALL.map(Version::as_str).join(" and @")
            );
        };
        let v = version.as_str();
        let pre = linker
            .instantiate_pre(&component)
            .map_err(wt)
            .with_context(|| {
                format!(
                    "{} imports something the bridge does not provide (it provides WASI 0.2 \
                 and {WIT_PACKAGE}/host@{v}; the component imports: {})",
                    path.display(),
                    list(&imports)
                )
            })?;
        let setup = SetupIndices::new(&pre, version)
            .map_err(wt)
            .with_context(|| {
                format!(
                    "{} does not implement the transform world: missing export {SETUP}@{v} \
                 (configure)",
                    path.display()
                )
            })?;
        let has = |name: &str| export_names.iter().any(|n| *n == format!("{name}@{v}"));
        let before = if has(BEFORE) {
            Some(
                BeforeIndices::new(&pre, version)
                    .map_err(wt)
                    .with_context(|| {
                        format!("{}: export {BEFORE}@{v} is malformed", path.display())
                    })?,
            )
        } else {
            None
        };
        let after = if has(AFTER) {
            Some(
                AfterIndices::new(&pre, version)
                    .map_err(wt)
                    .with_context(|| {
                        format!("{}: export {AFTER}@{v} is malformed", path.display())
                    })?,
            )
        } else {
            None
        };
        if before.is_none() && after.is_none() {
            bail!(
                "{} does not implement a transform world: it exports neither {BEFORE} nor {AFTER}",
                path.display()
            );
        }
        Ok(Plugin {
            path: path.to_path_buf(),
            sha256,
            pre,
            setup,
            before,
            after,
            imports,
            exports: export_names,
            wit_version,
            load_time,
            origin,
        })
    }

    /// The file it was first loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// sha256 of the component file.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }
    /// sha256 of the component file, in hex.
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
    /// Exports `before-invoke`.
    pub fn has_before(&self) -> bool {
        self.before.is_some()
    }
    /// Exports `after-invoke`.
    pub fn has_after(&self) -> bool {
        self.after.is_some()
    }
    /// The world its exports match: `transform`, `pre-transform` or `post-transform`.
    pub fn world(&self) -> &'static str {
        match (self.has_before(), self.has_after()) {
            (true, true) => "transform",
            (true, false) => "pre-transform",
            _ => "post-transform",
        }
    }
    /// Version of the `fxbridge:transform` package it was built against.
    pub fn wit_version(&self) -> &str {
        &self.wit_version
    }
    /// Names of the component's imports (interfaces), as in the binary.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }
    /// Names of the component's exports.
    pub fn exports(&self) -> &[String] {
        &self.exports
    }
    /// How long compiling (or reading from the disk cache) and linking took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }
    /// Whether the compiled code came from the disk cache.
    pub fn from_cache(&self) -> bool {
        self.origin == Origin::Cache
    }
    /// Where the compiled code came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}
