//! plugin-check: a developer tool for fxbridge transform plugins.
//!
//! `plugin-check wit <plugin.wasm>` lists the component's imports and
//! exports; `plugin-check test <plugin.wasm> <cases.yaml>` runs the cases in
//! wasmtime and ends with `N passed, M failed` (exit status 1 on failures).

mod cases;
mod runner;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: plugin-check wit <plugin.wasm>\n       \
    plugin-check test <plugin.wasm> <cases.yaml> [--timeout-ms N] [--memory-mib N]";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("wit") if args.len() == 2 => list_world(&PathBuf::from(&args[1])),
        Some("test") if args.len() >= 3 => {
            let mut limits = runner::Limits {
                timeout: Duration::from_millis(2000),
                memory_bytes: 256 << 20,
            };
            let mut rest = args[3..].iter();
            while let Some(flag) = rest.next() {
                let value: u64 = rest
                    .next()
                    .with_context(|| format!("{flag} needs a value"))?
                    .parse()
                    .with_context(|| format!("{flag} needs a number"))?;
                match flag.as_str() {
                    "--timeout-ms" => limits.timeout = Duration::from_millis(value),
                    "--memory-mib" => limits.memory_bytes = usize::try_from(value << 20)?,
                    other => bail!("unknown flag {other}\n{USAGE}"),
                }
            }
            let file = cases::CaseFile::load(&PathBuf::from(&args[2]))?;
            let plugin = runner::Plugin::load(&PathBuf::from(&args[1]), limits)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            let (passed, failed) = rt.block_on(plugin.run(&file))?;
            println!("{passed} passed, {failed} failed");
            if failed > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

/// Prints `import NAME` / `export NAME` for each item of the component's world.
fn list_world(path: &PathBuf) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let decoded = wit_component::decode(&bytes).context("decoding the component")?;
    let wit_component::DecodedWasm::Component(resolve, world) = decoded else {
        bail!("{} is a WIT package, not a component", path.display());
    };
    let world = &resolve.worlds[world];
    for key in world.imports.keys() {
        println!("import {}", resolve.name_world_key(key));
    }
    for key in world.exports.keys() {
        println!("export {}", resolve.name_world_key(key));
    }
    Ok(())
}
