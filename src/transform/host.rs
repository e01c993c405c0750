//! [`PluginHost`]: the one wasmtime [`Engine`] of the process, its [`Linker`]
//! (WASI p2 + the `host` interface), the epoch ticker, and the compile cache
//! (on disk, keyed by the component's sha256 and the engine; in memory,
//! keyed by sha256, so one file used by several routes compiles once).
//!
//! Pooling allocator limits (fixed, see [`super::sandbox`]): up to 512
//! component instances at once, each linear memory at most
//! [`MAX_MEMORY`] (a route's `limits.memory` above that is refused at load),
//! with a reservation of the same size, so the pool reserves about
//! 512 × (512 MiB + guard) of *virtual* address space and commits only what
//! instances touch.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings;
use super::plugin::{Origin, Plugin};
use super::sandbox::{hex, wt, EPOCH_TICK, MAX_MEMORY, POOL, TABLE_ELEMENTS};
use super::state::HostState;
use crate::config::PluginsConfig;

/// The wasmtime version this binary links, from Cargo.lock at build time
/// (`build.rs`): compiled code is only valid for the engine that made it.
const WASMTIME_VERSION: &str = env!("FXBRIDGE_WASMTIME_VERSION");

/// Compile-cache statistics of a host.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Components compiled by cranelift.
    pub compiled: AtomicU64,
    /// Components loaded from the disk cache.
    pub disk_hits: AtomicU64,
    /// Loads served by a component already in memory (same sha256).
    pub memory_hits: AtomicU64,
    /// Disk cache entries that could not be used (corrupt, incompatible).
    pub disk_rejected: AtomicU64,
    /// Components loaded from a precompiled file shipped next to them.
    pub precompiled: AtomicU64,
    /// Precompiled files that could not be used (stale, damaged, another
    /// engine or architecture).
    pub precompiled_rejected: AtomicU64,
}

/// A copy of [`CacheStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheSnapshot {
    pub compiled: u64,
    pub disk_hits: u64,
    pub memory_hits: u64,
    pub disk_rejected: u64,
    pub precompiled: u64,
    pub precompiled_rejected: u64,
}

/// The WebAssembly runtime of the process: one per process (tests may make more).
pub struct PluginHost {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    engine_key: String,
    loaded: Mutex<HashMap<[u8; 32], Arc<Plugin>>>,
    stats: CacheStats,
    pub(crate) fuel_metering: bool,
    stop_ticker: Arc<AtomicBool>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("cache_dir", &self.cache_dir)
            .field("engine_key", &self.engine_key)
            .finish_non_exhaustive()
    }
}

/// The default cache directory: `$XDG_CACHE_HOME/fxbridge` or `~/.cache/fxbridge`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("fxbridge"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("fxbridge"))
}

/// The suffix of a precompiled component shipped next to its `.wasm`.
pub const PRECOMPILED_EXTENSION: &str = "cwasm";

/// The precompiled file `fxbridge plugin compile` writes for `component`, and
/// the host looks for: `<dir>/<stem>.cwasm`.
pub fn precompiled_path(component: &Path) -> PathBuf {
    component.with_extension(PRECOMPILED_EXTENSION)
}

/// The engine settings of every plugin host; a precompiled component must
/// have been made with the same ones (wasmtime checks it when loading).
fn engine_config(cfg: &PluginsConfig) -> Result<Config> {
    let max_stack = usize::try_from(cfg.max_stack.0).context("plugins.max_stack")?;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL.component_instances)
        .total_core_instances(POOL.core_instances)
        .total_memories(POOL.memories)
        .total_tables(POOL.tables)
        .total_stacks(POOL.stacks)
        .max_memory_size(MAX_MEMORY as usize)
        .table_elements(TABLE_ELEMENTS)
        .max_unused_warm_slots(64);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(cfg.fuel_metering)
        .max_wasm_stack(max_stack)
        // Room for host functions above the guest's stack.
        .async_stack_size(max_stack + (1 << 20))
        .memory_reservation(MAX_MEMORY)
        .memory_reservation_for_growth(0)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(config)
}

/// Compiles the component at `path` ahead of time for `target` (a target
/// triple, e.g. `aarch64-unknown-linux-musl`; this machine when `None`) with
/// the engine settings of `cfg`, in the format [`PluginHost::load`] takes
/// from [`precompiled_path`]: the serialized component, the sha256 of the
/// `.wasm` it was made from, and a sha256 of both. With a target, Cranelift
/// uses that architecture's baseline features (not this machine's), so the
/// file runs on every device of the architecture.
pub fn precompile(cfg: &PluginsConfig, path: &Path, target: Option<&str>) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read plugin {}", path.display()))?;
    if !wasmparser_is_component(&bytes) {
        bail!("{} is not a WebAssembly component", path.display());
    }
    let mut config = engine_config(cfg)?;
    let cross = |triple: &str| {
        format!(
            "cannot compile for {triple} (this fxbridge compiles for {}; build it with \
             the cargo feature `cross-compile` for other architectures, or run the \
             target's own fxbridge, e.g. under qemu)",
            std::env::consts::ARCH
        )
    };
    if let Some(triple) = target {
        config
            .target(triple)
            .map_err(wt)
            .with_context(|| cross(triple))?;
    }
    let engine = Engine::new(&config)
        .map_err(wt)
        .with_context(|| match target {
            Some(triple) => cross(triple),
            None => "creating the wasmtime engine".to_string(),
        })?;
    let mut out = engine
        .precompile_component(&bytes)
        .map_err(wt)
        .with_context(|| format!("{} does not compile", path.display()))?;
    out.extend_from_slice(&Sha256::digest(&bytes));
    let seal = Sha256::digest(&out);
    out.extend_from_slice(&seal);
    Ok(out)
}

impl PluginHost {
    /// Builds the engine, the linker and the epoch ticker.
    pub fn new(cfg: &PluginsConfig) -> Result<Arc<PluginHost>> {
        let config = engine_config(cfg)?;
        let engine = Engine::new(&config)
            .map_err(wt)
            .context("creating the wasmtime engine")?;

        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(wt)
            .context("adding WASI to the linker")?;
        bindings::add_host_to_linker(&mut linker)
            .map_err(wt)
            .context("adding the host interface to the linker")?;
        // componentize-py's `exports` instance and the like are not ours.
        linker.allow_shadowing(false);

        let cache_dir = if cfg.cache {
            cfg.cache_dir.clone().or_else(default_cache_dir)
        } else {
            None
        };
        let engine_key = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            format!("wasmtime{}-{:016x}", WASMTIME_VERSION, h.finish())
        };

        let stop_ticker = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = Arc::clone(&stop_ticker);
            std::thread::Builder::new()
                .name("fxbridge-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .context("starting the epoch ticker")?;
        }
        Ok(Arc::new(PluginHost {
            engine,
            linker,
            cache_dir,
            engine_key,
            loaded: Mutex::new(HashMap::new()),
            stats: CacheStats::default(),
            fuel_metering: cfg.fuel_metering,
            stop_ticker,
        }))
    }

    /// The directory of the compile cache, when the cache is on.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// Compile-cache statistics.
    pub fn cache_stats(&self) -> CacheSnapshot {
        CacheSnapshot {
            compiled: self.stats.compiled.load(Ordering::Relaxed),
            disk_hits: self.stats.disk_hits.load(Ordering::Relaxed),
            memory_hits: self.stats.memory_hits.load(Ordering::Relaxed),
            disk_rejected: self.stats.disk_rejected.load(Ordering::Relaxed),
            precompiled: self.stats.precompiled.load(Ordering::Relaxed),
            precompiled_rejected: self.stats.precompiled_rejected.load(Ordering::Relaxed),
        }
    }

    /// The file a component with this digest is cached in.
    pub fn cache_path(&self, sha256: &[u8; 32]) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{}-{}.cwasm", hex(sha256), self.engine_key)))
    }

    /// Loads, validates, compiles (or fetches from the caches) and links a
    /// component. Errors name the file and what is wrong with it.
    pub fn load(&self, path: &Path) -> Result<Arc<Plugin>> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read plugin {}", path.display()))?;
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        // Hold the lock while compiling: the same content loaded twice compiles once.
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| anyhow!("plugin table poisoned"))?;
        if let Some(p) = loaded.get(&sha) {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Arc::clone(p));
        }
        if !wasmparser_is_component(&bytes) {
            bail!(
                "{} is not a WebAssembly component{}",
                path.display(),
                if bytes.starts_with(b"\0asm") {
                    " (it is a core module; componentize it, e.g. build for wasm32-wasip2)"
                } else {
                    ""
                }
            );
        }
        let started = Instant::now();
        let (component, origin) = self.compile(path, &bytes, &sha)?;
        let plugin = Plugin::link(
            &self.engine,
            &self.linker,
            path,
            component,
            sha,
            started.elapsed(),
            origin,
        )?;
        let plugin = Arc::new(plugin);
        loaded.insert(sha, Arc::clone(&plugin));
        Ok(plugin)
    }

    fn compile(&self, path: &Path, bytes: &[u8], sha: &[u8; 32]) -> Result<(Component, Origin)> {
        let shipped = precompiled_path(path);
        match self.read_precompiled(&shipped, sha) {
            Ok(Some(c)) => {
                self.stats.precompiled.fetch_add(1, Ordering::Relaxed);
                return Ok((c, Origin::Precompiled));
            }
            Ok(None) => {}
            Err(e) => {
                // Left in place: it is the operator's file, not ours.
                self.stats
                    .precompiled_rejected
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %shipped.display(), error = %format!("{e:#}"), "precompiled component unusable here; compiling the .wasm instead");
            }
        }
        let cache_file = self.cache_path(sha);
        if let Some(file) = &cache_file {
            match self.read_cache(file) {
                Ok(Some(c)) => {
                    self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((c, Origin::Cache));
                }
                Ok(None) => {}
                Err(e) => {
                    self.stats.disk_rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(file = %file.display(), error = %format!("{e:#}"), "compile cache entry unusable; recompiling");
                    let _ = std::fs::remove_file(file);
                }
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(wt)
            .with_context(|| format!("{} does not compile", path.display()))?;
        self.stats.compiled.fetch_add(1, Ordering::Relaxed);
        if let Some(file) = &cache_file {
            if let Err(e) = self.store_cache(file, &component) {
                tracing::warn!(file = %file.display(), error = %format!("{e:#}"), "cannot write the compile cache");
            }
        }
        Ok((component, Origin::Compiled))
    }

    /// A precompiled component shipped as `file` for the `.wasm` whose sha256
    /// is `sha`: `None` when there is none; an error when it is for another
    /// `.wasm`, damaged, or made for another engine or architecture.
    fn read_precompiled(&self, file: &Path, sha: &[u8; 32]) -> Result<Option<Component>> {
        let data = match std::fs::read(file) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("reading"),
        };
        if data.len() < 64 {
            bail!("truncated");
        }
        let (sealed, seal) = data.split_at(data.len() - 32);
        if Sha256::digest(sealed).as_slice() != seal {
            bail!("checksum mismatch: the file is damaged");
        }
        let (artifact, source) = sealed.split_at(sealed.len() - 32);
        if source != sha {
            bail!(
                "it was compiled from another version of the component (sha256 {}, this one {}): run `fxbridge plugin compile` again",
                hex(source),
                hex(sha)
            );
        }
        // SAFETY: the file is the operator's, next to the component it names
        // by sha256 and sealed with a checksum, as trusted as the component
        // itself and the configuration that points at both; wasmtime checks
        // its header (version, engine settings, target, CPU features) against
        // this engine and refuses what would not run here.
        let component = unsafe { Component::deserialize(&self.engine, artifact) }
            .map_err(wt)
            .context("wasmtime refused it (made for another fxbridge version, engine setting or architecture)")?;
        Ok(Some(component))
    }

    /// A cache entry is the serialized component followed by its sha256.
    fn read_cache(&self, file: &Path) -> Result<Option<Component>> {
        let data = match std::fs::read(file) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("reading"),
        };
        if data.len() < 32 {
            bail!("truncated");
        }
        let (artifact, digest) = data.split_at(data.len() - 32);
        if Sha256::digest(artifact).as_slice() != digest {
            bail!("checksum mismatch");
        }
        // SAFETY: the artifact was written by `store_cache` of an engine with the
        // same compatibility hash (it is in the file name), and its checksum
        // matches, so it is what wasmtime serialized; wasmtime checks its header
        // against this engine again.
        let component = unsafe { Component::deserialize(&self.engine, artifact) }.map_err(wt)?;
        Ok(Some(component))
    }

    fn store_cache(&self, file: &Path, component: &Component) -> Result<()> {
        let dir = file
            .parent()
            .ok_or_else(|| anyhow!("no parent directory"))?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut data = component.serialize().map_err(wt)?;
        let digest = Sha256::digest(&data);
        data.extend_from_slice(&digest);
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            file.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
            std::process::id()
        ));
        std::fs::write(&tmp, &data).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, file).with_context(|| format!("renaming to {}", file.display()))?;
        Ok(())
    }
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// A component's binary starts with the magic and a layer of 1 (core modules: 0).
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}
