//! Per-store host state: the WASI context with every capability off, the
//! memory limiter, the call deadline and the forwarding of stdout/stderr and of
//! the `host.log` import to `tracing`, tagged with the route.
//!
//! WASI: no preopened directories, no environment, no arguments, empty stdin,
//! no TCP/UDP (every socket address is refused) and no name lookup. Clocks and
//! random numbers work. stdout and stderr are split into lines (at most
//! [`MAX_LINE`] bytes each; longer lines are cut) and logged at `info`/`warn`;
//! a call forwards at most [`MAX_LINES_PER_CALL`] lines (output and `host.log`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, Level};
use super::Counters;

/// Longest line of guest output or of a `host.log` message forwarded to the log.
pub const MAX_LINE: usize = 4096;
/// Lines (stdout, stderr and `host.log` together) forwarded per call; the rest
/// of a call's output is dropped, with one warning.
pub const MAX_LINES_PER_CALL: u64 = 200;
/// How many of the last stderr lines a trap report quotes.
const STDERR_TAIL: usize = 4;

/// Data of one store (one instance).
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    route: Arc<str>,
    counters: Arc<Counters>,
    /// Wall-clock deadline of the running call, checked on every epoch tick.
    pub(crate) deadline: Option<Instant>,
    /// Set when the epoch callback stopped the guest at the deadline.
    pub(crate) timed_out: bool,
    /// The last lines the guest wrote to stderr (a panic message, a traceback).
    pub(crate) stderr_tail: Arc<Mutex<std::collections::VecDeque<String>>>,
    /// Lines the current call may still log.
    pub(crate) budget: Arc<AtomicU64>,
}

impl HostState {
    pub fn new(route: Arc<str>, memory_limit: usize, counters: Arc<Counters>) -> HostState {
        let stderr_tail = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let budget = Arc::new(AtomicU64::new(MAX_LINES_PER_CALL));
        let stdout = OutputSink {
            route: Arc::clone(&route),
            stream: Stream::Stdout,
            counters: Arc::clone(&counters),
            tail: None,
            budget: Arc::clone(&budget),
        };
        let stderr = OutputSink {
            route: Arc::clone(&route),
            stream: Stream::Stderr,
            counters: Arc::clone(&counters),
            tail: Some(Arc::clone(&stderr_tail)),
            budget: Arc::clone(&budget),
        };
        let wasi = WasiCtx::builder()
            .stdout(stdout)
            .stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: memory_limit,
                hit: Arc::new(AtomicBool::new(false)),
            },
            route,
            counters,
            deadline: None,
            timed_out: false,
            stderr_tail,
            budget,
        }
    }

    /// The last lines of stderr, joined, for a trap report.
    pub fn stderr_tail(&self) -> Option<String> {
        let tail = self.stderr_tail.lock().ok()?;
        if tail.is_empty() {
            None
        } else {
            Some(tail.iter().cloned().collect::<Vec<_>>().join(" | "))
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::fxbridge::transform::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        self.counters.log_lines.fetch_add(1, Ordering::Relaxed);
        if !spend(&self.budget, &self.route) {
            return;
        }
        let message = truncate(&message);
        let route = &*self.route;
        match level {
            Level::Trace => tracing::trace!(target: "fxbridge::plugin", route, "{message}"),
            Level::Debug => tracing::debug!(target: "fxbridge::plugin", route, "{message}"),
            Level::Info => tracing::info!(target: "fxbridge::plugin", route, "{message}"),
            Level::Warn => tracing::warn!(target: "fxbridge::plugin", route, "{message}"),
            Level::Error => tracing::error!(target: "fxbridge::plugin", route, "{message}"),
        }
    }
}

impl bindings::fxbridge::transform::types::Host for HostState {}

/// Takes one line from the call's budget; warns once when it runs out.
fn spend(budget: &AtomicU64, route: &str) -> bool {
    match budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1)) {
        Ok(1) => {
            tracing::warn!(target: "fxbridge::plugin", route, "plugin output limit reached ({MAX_LINES_PER_CALL} lines per call); dropping the rest of this call's output");
            false
        }
        Ok(_) => true,
        Err(_) => false,
    }
}

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_LINE {
        return s;
    }
    let mut end = MAX_LINE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Caps every linear memory of an instance at `limit` bytes and remembers
/// whether the cap was hit, so that the trap that follows (an allocator abort)
/// is reported as `memory_limit`.
pub struct MemoryLimiter {
    limit: usize,
    pub(crate) hit: Arc<AtomicBool>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit.store(true, Ordering::Relaxed);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= super::sandbox::TABLE_ELEMENTS)
    }
}

#[derive(Clone, Copy, Debug)]
enum Stream {
    Stdout,
    Stderr,
}

/// stdout or stderr of an instance: lines go to `tracing`.
struct OutputSink {
    route: Arc<str>,
    stream: Stream,
    counters: Arc<Counters>,
    tail: Option<Arc<Mutex<std::collections::VecDeque<String>>>>,
    budget: Arc<AtomicU64>,
}

impl IsTerminal for OutputSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl OutputSink {
    fn writer(&self) -> LineWriter {
        LineWriter {
            route: Arc::clone(&self.route),
            stream: self.stream,
            counters: Arc::clone(&self.counters),
            tail: self.tail.clone(),
            budget: Arc::clone(&self.budget),
            buf: Vec::new(),
        }
    }
}

impl StdoutStream for OutputSink {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.writer())
    }

    /// Lines are logged synchronously during the guest's write (no background
    /// task), so the log has them by the time the call returns.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.writer())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LineWriter {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.buf.extend_from_slice(&bytes);
        self.take_lines();
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

struct LineWriter {
    route: Arc<str>,
    stream: Stream,
    counters: Arc<Counters>,
    tail: Option<Arc<Mutex<std::collections::VecDeque<String>>>>,
    budget: Arc<AtomicU64>,
    buf: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        let route = &*self.route;
        let forward = spend(&self.budget, route);
        match self.stream {
            Stream::Stdout => {
                self.counters.stdout_lines.fetch_add(1, Ordering::Relaxed);
                if forward {
                    tracing::info!(target: "fxbridge::plugin", route, stream = "stdout", "{line}");
                }
            }
            Stream::Stderr => {
                self.counters.stderr_lines.fetch_add(1, Ordering::Relaxed);
                if forward {
                    tracing::warn!(target: "fxbridge::plugin", route, stream = "stderr", "{line}");
                }
            }
        }
        if let Some(tail) = &self.tail {
            if let Ok(mut tail) = tail.lock() {
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.chars().take(256).collect());
            }
        }
    }

    fn take_lines(&mut self) {
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            self.emit(&line[..line.len() - 1]);
        }
        if self.buf.len() > MAX_LINE {
            // An endless line: log what fits and drop the rest of it.
            let line: Vec<u8> = self.buf.drain(..).take(MAX_LINE).collect();
            self.emit(&line);
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.buf.extend_from_slice(data);
        self.take_lines();
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.emit(&rest);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.emit(&rest);
        }
    }
}
