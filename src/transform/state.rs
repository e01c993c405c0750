//! Per-store host state: the WASI context with every capability off, the
//! memory limiter, the call deadline and the forwarding of stdout/stderr and of
//! the `host.log` import to `tracing`, tagged with the route.
//!
//! WASI: no preopened directories, no environment, no arguments, empty stdin,
//! no TCP/UDP (every socket address is refused) and no name lookup. Clocks and
//! random numbers work. stdout and stderr are split into lines (at most
//! [`MAX_LINE`] bytes each; longer lines are cut) and logged at `info`/`warn`,
//! within the route's log budget ([`super::log::LogGate`]) like `host.log`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings;
use super::log::LogGate;
use super::Counters;
use crate::config::LogLevel;

/// Longest line of guest output or of a `host.log` message forwarded to the log.
pub const MAX_LINE: usize = 4096;
/// How many of the last stderr lines a trap report quotes.
const STDERR_TAIL: usize = 4;

/// Data of one store (one instance).
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    counters: Arc<Counters>,
    /// Wall-clock deadline of the running call, checked on every epoch tick.
    pub(crate) deadline: Option<Instant>,
    /// Set when the epoch callback stopped the guest at the deadline.
    pub(crate) timed_out: bool,
    /// The last lines the guest wrote to stderr (a panic message, a traceback).
    pub(crate) stderr_tail: Arc<Mutex<std::collections::VecDeque<String>>>,
    /// The route's log budget, shared by its instances.
    log: Arc<LogGate>,
}

impl HostState {
    pub fn new(memory_limit: usize, counters: Arc<Counters>, log: Arc<LogGate>) -> HostState {
        let stderr_tail = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let stdout = OutputSink {
            stream: Stream::Stdout,
            counters: Arc::clone(&counters),
            tail: None,
            log: Arc::clone(&log),
        };
        let stderr = OutputSink {
            stream: Stream::Stderr,
            counters: Arc::clone(&counters),
            tail: Some(Arc::clone(&stderr_tail)),
            log: Arc::clone(&log),
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
            counters,
            deadline: None,
            timed_out: false,
            stderr_tail,
            log,
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

impl HostState {
    fn plugin_log(&mut self, level: LogLevel, message: &str) {
        self.counters.log_lines.fetch_add(1, Ordering::Relaxed);
        self.log.log(level, truncate(message), None);
    }
}

/// The `host` interface of one contract version (each has its own `Level`).
macro_rules! host_interface {
    ($v:ident) => {
        impl bindings::$v::fxbridge::transform::host::Host for HostState {
            fn log(
                &mut self,
                level: bindings::$v::fxbridge::transform::host::Level,
                message: String,
            ) {
                use bindings::$v::fxbridge::transform::host::Level;
                let level = match level {
                    Level::Trace => LogLevel::Trace,
                    Level::Debug => LogLevel::Debug,
                    Level::Info => LogLevel::Info,
                    Level::Warn => LogLevel::Warn,
                    Level::Error => LogLevel::Error,
                };
                self.plugin_log(level, &message);
            }
        }

        impl bindings::$v::fxbridge::transform::types::Host for HostState {}
    };
}

host_interface!(v0_2);
host_interface!(v0_1);

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
    stream: Stream,
    counters: Arc<Counters>,
    tail: Option<Arc<Mutex<std::collections::VecDeque<String>>>>,
    log: Arc<LogGate>,
}

impl IsTerminal for OutputSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl OutputSink {
    fn writer(&self) -> LineWriter {
        LineWriter {
            stream: self.stream,
            counters: Arc::clone(&self.counters),
            tail: self.tail.clone(),
            log: Arc::clone(&self.log),
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
    stream: Stream,
    counters: Arc<Counters>,
    tail: Option<Arc<Mutex<std::collections::VecDeque<String>>>>,
    log: Arc<LogGate>,
    buf: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        match self.stream {
            Stream::Stdout => {
                self.counters.stdout_lines.fetch_add(1, Ordering::Relaxed);
                self.log.log(LogLevel::Info, line, Some("stdout"));
            }
            Stream::Stderr => {
                self.counters.stderr_lines.fetch_add(1, Ordering::Relaxed);
                self.log.log(LogLevel::Warn, line, Some("stderr"));
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
