//! `fxbridge plugin inspect`: what a component is, as the host sees it: its
//! hooks (world), the `fxbridge:transform` version, its imports (which WASI
//! interfaces it uses) and exports, its size, sha256 and compile time.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;

use crate::transform::{Plugin, PluginHost, WIT_PACKAGE};

/// Loads `path` (validating it like the bridge does) and describes it.
pub fn inspect(host: &Arc<PluginHost>, path: &Path) -> Result<String> {
    let plugin = host.load(path)?;
    Ok(describe(
        &plugin,
        std::fs::metadata(path).map(|m| m.len()).ok(),
    ))
}

/// A human-readable description of a loaded plugin.
pub fn describe(plugin: &Plugin, size: Option<u64>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "component: {}", plugin.path().display());
    if let Some(size) = size {
        let _ = writeln!(s, "size:      {size} bytes");
    }
    let _ = writeln!(s, "sha256:    {}", plugin.sha256_hex());
    let _ = writeln!(
        s,
        "contract:  {}@{} (world {})",
        WIT_PACKAGE,
        plugin.wit_version(),
        plugin.world()
    );
    let _ = writeln!(
        s,
        "hooks:     before-invoke: {}, after-invoke: {}",
        if plugin.has_before() {
            "yes"
        } else {
            "no (default: invoke with the payload)"
        },
        if plugin.has_after() {
            "yes"
        } else {
            "no (default: publish the reply)"
        },
    );
    let _ = writeln!(
        s,
        "compiled:  {:.1} ms ({})",
        plugin.load_time().as_secs_f64() * 1e3,
        plugin.origin().describe()
    );
    let (wasi, other): (Vec<&String>, Vec<&String>) = plugin
        .imports()
        .iter()
        .partition(|n| n.starts_with("wasi:"));
    let _ = writeln!(
        s,
        "imports:   {} ({} WASI)",
        plugin.imports().len(),
        wasi.len()
    );
    for name in other.iter().chain(wasi.iter()) {
        let _ = writeln!(s, "  - {name}");
    }
    let _ = writeln!(s, "exports:");
    for name in plugin.exports() {
        let ours = name.starts_with(&format!("{}/", WIT_PACKAGE));
        let _ = writeln!(s, "  - {name}{}", if ours { "" } else { " (ignored)" });
    }
    s
}
