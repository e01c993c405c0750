//! The limits every plugin runs under, whichever route it serves, and small
//! helpers shared by the host's modules (a leaf: it imports none of them).

use anyhow::anyhow;
use std::time::Duration;

/// How often the epoch advances; deadlines are checked at this granularity.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);
/// Largest linear memory any instance may have (the pool's slot size).
pub const MAX_MEMORY: u64 = 512 << 20;
/// Largest table (elements) an instance may have; CPython needs many.
pub const TABLE_ELEMENTS: usize = 100_000;

/// The pooling allocator's fixed limits.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub component_instances: u32,
    pub core_instances: u32,
    pub memories: u32,
    pub tables: u32,
    pub stacks: u32,
}

/// The limits used by [`PluginHost::new`].
pub const POOL: PoolLimits = PoolLimits {
    component_instances: 512,
    core_instances: 4096,
    memories: 512,
    tables: 2048,
    stacks: 512,
};

/// `wasmtime::Error` to `anyhow::Error`, keeping the whole chain as text.
pub(crate) fn wt(e: wasmtime::Error) -> anyhow::Error {
    anyhow!("{e:?}")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
