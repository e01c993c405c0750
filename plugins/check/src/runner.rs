//! Runs a plugin's cases in wasmtime: one instance reused across cases
//! (a fresh one after a trap, on `fresh_instance`, or for another config),
//! WASI with no files, no network, no environment and captured stdio, a
//! per-call deadline (epoch interruption for guest code, a wall-clock
//! timeout around host calls) and a memory cap.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentType, InstancePre, Lift, Linker, Lower,
    ResourceTable, TypedFunc,
};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::cases::{AfterExpect, BeforeExpect, Bytes, Case, CaseFile, SkipExpect};

#[derive(ComponentType, Lift, Lower, Clone, Copy, Debug, PartialEq)]
#[component(enum)]
#[repr(u8)]
enum Qos {
    #[component(name = "at-most-once")]
    AtMostOnce,
    #[component(name = "at-least-once")]
    AtLeastOnce,
    #[component(name = "exactly-once")]
    ExactlyOnce,
}

impl Qos {
    fn from_level(level: u8) -> Result<Qos> {
        Ok(match level {
            0 => Qos::AtMostOnce,
            1 => Qos::AtLeastOnce,
            2 => Qos::ExactlyOnce,
            other => bail!("qos {other} is not 0, 1 or 2"),
        })
    }

    fn level(self) -> u8 {
        self as u8
    }
}

#[derive(ComponentType, Lift, Lower, Clone, Copy, Debug)]
#[component(enum)]
#[repr(u8)]
enum Level {
    #[component(name = "trace")]
    Trace,
    #[component(name = "debug")]
    Debug,
    #[component(name = "info")]
    Info,
    #[component(name = "warn")]
    Warn,
    #[component(name = "error")]
    Error,
}

#[derive(ComponentType, Lift, Lower, Clone, Debug)]
#[component(record)]
struct Message {
    route: String,
    function: String,
    topic: String,
    captures: Vec<String>,
    payload: Vec<u8>,
    qos: Qos,
    retain: bool,
    #[component(name = "user-properties")]
    user_properties: Vec<(String, String)>,
    #[component(name = "content-type")]
    content_type: Option<String>,
}

#[derive(ComponentType, Lift, Lower, Clone, Debug)]
#[component(record)]
struct Invocation {
    input: Vec<u8>,
    function: Option<String>,
}

#[derive(ComponentType, Lift, Lower, Clone, Debug)]
#[component(variant)]
enum PreAction {
    #[component(name = "invoke")]
    Invoke(Invocation),
    #[component(name = "skip")]
    Skip(String),
}

#[derive(ComponentType, Lift, Lower, Clone, Debug)]
#[component(record)]
struct Outgoing {
    topic: Option<String>,
    payload: Vec<u8>,
    qos: Option<Qos>,
    retain: bool,
    #[component(name = "user-properties")]
    user_properties: Vec<(String, String)>,
}

type ConfigureFn = TypedFunc<(String,), (Result<(), String>,)>;
type BeforeFn = TypedFunc<(Message,), (Result<PreAction, String>,)>;
type AfterFn = TypedFunc<(Message, String), (Result<Vec<Outgoing>, String>,)>;

/// Limits applied to every instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: usize,
}

/// Per-store host state.
struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    log: Arc<Mutex<Vec<String>>>,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

const EPOCH_TICK: Duration = Duration::from_millis(10);
const STDIO_CAPACITY: usize = 1 << 20;

/// A compiled plugin ready to be instantiated.
pub struct Plugin {
    engine: Engine,
    pre: InstancePre<Host>,
    limits: Limits,
}

/// One live instance with its hooks.
struct Live {
    store: Store<Host>,
    before: Option<BeforeFn>,
    after: Option<AfterFn>,
    config_json: String,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    printed: (usize, usize),
}

/// The result of one guest call.
enum Call<T> {
    Returned(T),
    Trapped(String),
}

impl Plugin {
    pub fn load(path: &std::path::Path, limits: Limits) -> Result<Plugin> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let component = Component::from_file(&engine, path)
            .with_context(|| format!("compiling {}", path.display()))?;
        let mut linker: Linker<Host> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        linker.instance("fxbridge:transform/host@0.1.0")?.func_wrap(
            "log",
            |store: wasmtime::StoreContextMut<'_, Host>, (level, message): (Level, String)| {
                if let Ok(mut log) = store.data().log.lock() {
                    log.push(format!("{level:?}: {message}"));
                }
                Ok(())
            },
        )?;
        let pre = linker
            .instantiate_pre(&component)
            .context("the component's imports cannot be satisfied")?;
        Ok(Plugin {
            engine,
            pre,
            limits,
        })
    }

    /// Runs every case; returns (passed, failed).
    pub async fn run(&self, file: &CaseFile) -> Result<(usize, usize)> {
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = self.engine.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
        };
        let result = self.run_cases(file).await;
        stop.store(true, Ordering::Relaxed);
        ticker
            .join()
            .map_err(|_| anyhow!("epoch ticker panicked"))?;
        result
    }

    async fn run_cases(&self, file: &CaseFile) -> Result<(usize, usize)> {
        let file_config = match &file.config {
            Some(c) => crate::cases::yaml_to_json(c)?.to_string(),
            None => "null".to_string(),
        };
        let mut live: Option<Live> = None;
        let (mut passed, mut failed) = (0, 0);
        for case in &file.cases {
            let config_json = match &case.config {
                Some(c) => crate::cases::yaml_to_json(c)?.to_string(),
                None => file_config.clone(),
            };
            let started = std::time::Instant::now();
            let outcome = self
                .run_case(file, case, &config_json, &mut live)
                .await
                .with_context(|| format!("case {:?}", case.name))?;
            let ms = started.elapsed().as_millis();
            match outcome {
                Ok(()) => {
                    passed += 1;
                    println!("ok    {} ({ms} ms)", case.name);
                }
                Err(why) => {
                    failed += 1;
                    println!("FAIL  {} ({ms} ms): {why}", case.name);
                }
            }
            if let Some(l) = live.as_mut() {
                l.print_output();
            }
        }
        Ok((passed, failed))
    }

    async fn instantiate(&self, config_json: &str) -> Result<(Live, Call<Result<(), String>>)> {
        let stdout = MemoryOutputPipe::new(STDIO_CAPACITY);
        let stderr = MemoryOutputPipe::new(STDIO_CAPACITY);
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let host = Host {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.limits.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|host| &mut host.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.deadline_ticks());
        let instance = self.pre.instantiate_async(&mut store).await?;
        let hook = |store: &mut Store<Host>, iface: &str, func: &str| -> Option<ComponentExportIndex> {
            let i = instance.get_export_index(&mut *store, None, iface)?;
            instance.get_export_index(&mut *store, Some(&i), func)
        };
        let configure_index = hook(&mut store, "fxbridge:transform/setup@0.1.0", "configure")
            .ok_or_else(|| anyhow!("component does not export setup.configure"))?;
        let configure: ConfigureFn = instance.get_typed_func(&mut store, configure_index)?;
        let before = match hook(&mut store, "fxbridge:transform/before-invoke@0.1.0", "transform") {
            Some(i) => Some(instance.get_typed_func(&mut store, i)?),
            None => None,
        };
        let after = match hook(&mut store, "fxbridge:transform/after-invoke@0.1.0", "transform") {
            Some(i) => Some(instance.get_typed_func(&mut store, i)?),
            None => None,
        };
        let mut live = Live {
            store,
            before,
            after,
            config_json: config_json.to_string(),
            stdout,
            stderr,
            printed: (0, 0),
        };
        let configured = self
            .call(&mut live.store, &configure, (config_json.to_string(),))
            .await;
        Ok((live, configured))
    }

    fn deadline_ticks(&self) -> u64 {
        (self.limits.timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }

    async fn call<P, R>(&self, store: &mut Store<Host>, func: &TypedFunc<P, (R,)>, params: P) -> Call<R>
    where
        P: wasmtime::component::ComponentNamedList + Lower + Send + Sync + 'static,
        R: ComponentType + Lift + Send + Sync + 'static,
    {
        store.set_epoch_deadline(self.deadline_ticks());
        // Epoch interruption stops guest code; the wall-clock timeout (with
        // slack) stops a guest blocked inside a host call such as a sleep.
        let wall = self.limits.timeout + Duration::from_millis(500);
        match tokio::time::timeout(wall, func.call_async(&mut *store, params)).await {
            Ok(Ok((value,))) => Call::Returned(value),
            Ok(Err(e)) => Call::Trapped(format!("{e:?}")),
            Err(_) => Call::Trapped(format!("no return within {wall:?} (blocked in a host call)")),
        }
    }

    /// Runs one case; the outer `Result` is for broken case files, the inner
    /// one is pass/fail.
    async fn run_case(
        &self,
        file: &CaseFile,
        case: &Case,
        config_json: &str,
        live: &mut Option<Live>,
    ) -> Result<std::result::Result<(), String>> {
        let message = build_message(file, case)?;
        let reuse = !case.fresh_instance
            && live.as_ref().is_some_and(|l| l.config_json == config_json);
        if !reuse {
            let (new, configured) = self.instantiate(config_json).await?;
            *live = Some(new);
            let failure = match configured {
                Call::Returned(Ok(())) => None,
                Call::Returned(Err(e)) => Some(Err(e)),
                Call::Trapped(t) => Some(Ok(t)),
            };
            if let Some(failure) = failure {
                // The configure failure is what the message that needed the
                // instance sees; an instance that failed configure is dropped.
                let verdict = match (&case.before, &case.after) {
                    (Some(b), _) => check_before_failure(b, &failure),
                    (None, Some(a)) => check_after_failure(a, &failure),
                    (None, None) => Err(format!("configure failed: {failure:?}")),
                };
                if let Some(l) = live.as_mut() {
                    l.print_output();
                }
                *live = None;
                return Ok(verdict);
            }
        }
        let l = live.as_mut().ok_or_else(|| anyhow!("no instance"))?;

        if let Some(expect) = &case.before {
            let result = match l.before.clone() {
                Some(f) => self.call(&mut l.store, &f, (message.clone(),)).await,
                None => Call::Returned(Ok(PreAction::Invoke(Invocation {
                    input: message.payload.clone(),
                    function: None,
                }))),
            };
            let trapped = matches!(result, Call::Trapped(_));
            let verdict = check_before(expect, result)?;
            if trapped {
                l.print_output();
                *live = None;
            }
            if verdict.is_err() || trapped {
                return Ok(verdict);
            }
        }

        match (&case.reply, &case.after) {
            (Some(reply), Some(expect)) => {
                let l = live.as_mut().ok_or_else(|| anyhow!("no instance"))?;
                let result = match l.after.clone() {
                    Some(f) => self.call(&mut l.store, &f, (message, reply.clone())).await,
                    None => Call::Returned(Ok(vec![Outgoing {
                        topic: None,
                        payload: reply.clone().into_bytes(),
                        qos: None,
                        retain: false,
                        user_properties: Vec::new(),
                    }])),
                };
                let trapped = matches!(result, Call::Trapped(_));
                let verdict = check_after(expect, result)?;
                if trapped {
                    l.print_output();
                    *live = None;
                }
                Ok(verdict)
            }
            (None, None) => Ok(Ok(())),
            _ => bail!("`reply` and `after` go together"),
        }
    }
}

impl Live {
    /// Prints what the guest wrote to stdout/stderr and the host log since
    /// the last call.
    fn print_output(&mut self) {
        let out = self.stdout.contents();
        let err = self.stderr.contents();
        for line in String::from_utf8_lossy(&out[self.printed.0..]).lines() {
            println!("      stdout| {line}");
        }
        for line in String::from_utf8_lossy(&err[self.printed.1..]).lines() {
            println!("      stderr| {line}");
        }
        self.printed = (out.len(), err.len());
        if let Ok(mut log) = self.store.data().log.lock() {
            for line in log.drain(..) {
                println!("      log   | {line}");
            }
        }
    }
}

fn build_message(file: &CaseFile, case: &Case) -> Result<Message> {
    let m = &case.message;
    let payload = match (&m.payload, &m.payload_base64) {
        (Some(text), None) => text.clone().into_bytes(),
        (None, Some(b64)) => crate::cases::decode_base64(b64)?,
        _ => bail!("message: give exactly one of payload and payload_base64"),
    };
    Ok(Message {
        route: file.route.clone(),
        function: file.function.clone(),
        topic: m.topic.clone(),
        captures: m.captures.clone(),
        payload,
        qos: Qos::from_level(m.qos)?,
        retain: m.retain,
        user_properties: m.user_properties.clone(),
        content_type: m.content_type.clone(),
    })
}

fn one_of(keys: &[bool], what: &str) -> Result<()> {
    if keys.iter().filter(|k| **k).count() != 1 {
        bail!("{what}: give exactly one expectation");
    }
    Ok(())
}

fn contains(what: &str, actual: &str, needle: &str) -> std::result::Result<(), String> {
    if actual.contains(needle) {
        Ok(())
    } else {
        Err(format!("{what} {actual:?} does not contain {needle:?}"))
    }
}

/// `failure` is `Err(guest error)` or `Ok(trap)` from configure.
fn check_before_failure(
    expect: &BeforeExpect,
    failure: &std::result::Result<String, String>,
) -> std::result::Result<(), String> {
    match (failure, &expect.error, expect.trap) {
        (Err(e), Some(needle), _) => contains("configure error", e, needle),
        (Ok(_), _, Some(true)) => Ok(()),
        (f, _, _) => Err(format!("configure failed unexpectedly: {f:?}")),
    }
}

fn check_after_failure(
    expect: &AfterExpect,
    failure: &std::result::Result<String, String>,
) -> std::result::Result<(), String> {
    match (failure, &expect.error, expect.trap) {
        (Err(e), Some(needle), _) => contains("configure error", e, needle),
        (Ok(_), _, Some(true)) => Ok(()),
        (f, _, _) => Err(format!("configure failed unexpectedly: {f:?}")),
    }
}

fn check_before(
    expect: &BeforeExpect,
    result: Call<Result<PreAction, String>>,
) -> Result<std::result::Result<(), String>> {
    one_of(
        &[
            expect.invoke.is_some(),
            expect.skip.is_some(),
            expect.error.is_some(),
            expect.trap.is_some(),
        ],
        "before",
    )?;
    let verdict = match result {
        Call::Trapped(t) => match expect.trap {
            Some(true) => Ok(()),
            _ => Err(format!("before-invoke trapped: {t}")),
        },
        Call::Returned(Err(e)) => match &expect.error {
            Some(needle) => contains("guest error", &e, needle),
            None => Err(format!("before-invoke returned error {e:?}")),
        },
        Call::Returned(Ok(PreAction::Skip(reason))) => match &expect.skip {
            Some(SkipExpect::Any(true)) => Ok(()),
            Some(SkipExpect::Reason(needle)) => contains("skip reason", &reason, needle),
            _ => Err(format!("before-invoke skipped: {reason:?}")),
        },
        Call::Returned(Ok(PreAction::Invoke(inv))) => match &expect.invoke {
            Some(want) => {
                let bytes = Bytes::from_keys(
                    "before.invoke.input",
                    &want.input,
                    &want.input_json,
                    &want.input_base64,
                )?;
                bytes.check(&inv.input).and_then(|()| {
                    if inv.function == want.function {
                        Ok(())
                    } else {
                        Err(format!(
                            "function override: expected {:?}, got {:?}",
                            want.function, inv.function
                        ))
                    }
                })
            }
            None => Err(format!(
                "before-invoke invoked with {:?}",
                String::from_utf8_lossy(&inv.input)
            )),
        },
    };
    Ok(verdict)
}

fn check_after(
    expect: &AfterExpect,
    result: Call<Result<Vec<Outgoing>, String>>,
) -> Result<std::result::Result<(), String>> {
    one_of(
        &[
            expect.publish.is_some(),
            expect.error.is_some(),
            expect.trap.is_some(),
        ],
        "after",
    )?;
    let verdict = match result {
        Call::Trapped(t) => match expect.trap {
            Some(true) => Ok(()),
            _ => Err(format!("after-invoke trapped: {t}")),
        },
        Call::Returned(Err(e)) => match &expect.error {
            Some(needle) => contains("guest error", &e, needle),
            None => Err(format!("after-invoke returned error {e:?}")),
        },
        Call::Returned(Ok(out)) => match &expect.publish {
            None => Err(format!("after-invoke published {} messages", out.len())),
            Some(want) if want.len() != out.len() => Err(format!(
                "expected {} messages, got {}: {:?}",
                want.len(),
                out.len(),
                out.iter()
                    .map(|o| (o.topic.clone(), String::from_utf8_lossy(&o.payload).into_owned()))
                    .collect::<Vec<_>>()
            )),
            Some(want) => {
                let mut verdict = Ok(());
                for (i, (w, o)) in want.iter().zip(&out).enumerate() {
                    let bytes = Bytes::from_keys(
                        "after.publish.payload",
                        &w.payload,
                        &w.payload_json,
                        &w.payload_base64,
                    )?;
                    let check = bytes
                        .check(&o.payload)
                        .and_then(|()| same("topic", &w.topic, &o.topic))
                        .and_then(|()| same("qos", &w.qos, &o.qos.map(Qos::level)))
                        .and_then(|()| same("retain", &w.retain, &o.retain))
                        .and_then(|()| same("user_properties", &w.user_properties, &o.user_properties));
                    if let Err(why) = check {
                        verdict = Err(format!("message {i}: {why}"));
                        break;
                    }
                }
                verdict
            }
        },
    };
    Ok(verdict)
}

fn same<T: PartialEq + std::fmt::Debug>(
    what: &str,
    expected: &T,
    actual: &T,
) -> std::result::Result<(), String> {
    if expected == actual {
        Ok(())
    } else {
        Err(format!("{what}: expected {expected:?}, got {actual:?}"))
    }
}
