//! A deliberately hostile transform for the host's sandbox tests.
//!
//! Each hook reads a command from its input (the payload for the pre hook,
//! the function's reply for the post hook), trimmed of surrounding
//! whitespace, and misbehaves accordingly; any other input takes the normal
//! path (pre: invoke with the payload unchanged, post: publish the reply
//! once to the route's topic). One route can therefore send a hostile
//! message and then a good one, to check that the bridge recovers.
//!
//! | command       | what the guest does                                        | expected host outcome |
//! |---------------|------------------------------------------------------------|-----------------------|
//! | `loop`        | spins forever                                              | timeout trap          |
//! | `sleep`       | blocks 30 s in the WASI monotonic clock (a host call)      | timeout trap          |
//! | `alloc`       | grows memory in 8 MiB chunks without bound                 | memory-cap trap       |
//! | `recurse`     | recurses without bound, 1 KiB of stack per frame           | stack-overflow trap   |
//! | `deep`        | recurses without bound in wasm locals only (no shadow stack) | `call stack exhausted` trap |
//! | `unreachable` | executes the `unreachable` instruction                     | trap                  |
//! | `panic`       | panics (panic = abort: message on stderr, then a trap)     | trap                  |
//! | `fail`        | returns `err("hostile: asked to fail")`                    | guest error           |
//! | `file`        | reads `/etc/passwd`, `bridge.yaml`, lists `.`              | guest error `file access denied: ...` |
//! | `socket`      | TCP connect to 127.0.0.1:1883, resolves `localhost`        | guest error `socket access denied: ...` |
//! | `env`         | lists the names of visible environment variables           | input `{"env_vars":0,"names":[]}` |
//! | `print`       | writes a line to stdout and one to stderr, then passes     | both lines in the host's log |
//! | `log`         | calls the host `log` import once per level, then passes    | five lines in the host's log |
//! | `count`       | returns `{"messages":n,"configured":c}` for this instance   | n counts calls on the instance, c its `configure` calls |
//! | `describe`    | (pre hook only) the input is the message's MQTT 5 request fields as JSON | `{"content_type","utf8","response_topic","correlation_data"}` |
//!
//! The post hook also takes commands with an argument, for the output policy:
//!
//! | command            | results of the post hook                                  |
//! |--------------------|-----------------------------------------------------------|
//! | `to:<topic>`       | one result on `<topic>`                                   |
//! | `retained:<topic>` | one result on `<topic>` with RETAIN                       |
//! | `mixed:<topic>`    | one result on the route's topic, then one on `<topic>`    |
//! | `many:<n>`         | `n` results on the route's topic                          |
//! | `flood:<n>`        | logs `n` lines at `error`, then one result                |
//! | `typed:<type>`     | one result marked UTF-8 with content type `<type>`        |
//! | `correlate:<data>` | one result with correlation data `<data>`                 |
//!
//! Its config may be `{"configure_spin_ms": n}`: `configure` then keeps the
//! CPU busy for `n` ms of wall time, like a slow interpreter start.
//!
//! A probe that unexpectedly succeeds (`file`, `socket`) returns a normal
//! result naming what it reached, so a test expecting the error fails.

use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

use fxbridge_plugin::{log, Invocation, Level, Message, Outgoing, Plugin, PreAction};

/// How many times `configure` ran in this instance (a fresh instance starts at 0).
static CONFIGURED: AtomicU32 = AtomicU32::new(0);

/// Per-instance state: the number of hook calls seen.
pub struct Hostile {
    messages: u32,
}

/// What a command produced when it returned at all.
enum Outcome {
    /// Carry on normally with this input / reply text.
    Pass(Vec<u8>),
    /// Fail the message with this guest error.
    Fail(String),
}

impl Plugin for Hostile {
    fn configure(config_json: &str) -> Result<Self, String> {
        CONFIGURED.fetch_add(1, Ordering::SeqCst);
        let config: serde_json::Value = serde_json::from_str(config_json).unwrap_or_default();
        if let Some(ms) = config.get("configure_spin_ms").and_then(|v| v.as_u64()) {
            // A slow start (an interpreter's, say): busy for `ms` of wall time.
            let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            while std::time::Instant::now() < until {
                black_box(0u64);
            }
        }
        Ok(Hostile { messages: 0 })
    }

    fn before_invoke(&mut self, msg: Message) -> Result<PreAction, String> {
        if msg.payload == b"describe" {
            // What the hook sees of an MQTT 5 message (contract 0.2.0).
            let input = serde_json::json!({
                "content_type": msg.content_type,
                "utf8": msg.utf8,
                "response_topic": msg.response_topic,
                "correlation_data": msg.correlation_data.map(|c| String::from_utf8_lossy(&c).into_owned()),
            });
            return Ok(PreAction::Invoke(Invocation {
                input: input.to_string().into_bytes(),
                function: None,
            }));
        }
        match self.run(msg.payload) {
            Outcome::Pass(input) => Ok(PreAction::Invoke(Invocation {
                input,
                function: None,
            })),
            Outcome::Fail(reason) => Err(reason),
        }
    }

    fn after_invoke(&mut self, _msg: Message, reply: String) -> Result<Vec<Outgoing>, String> {
        if let Some(outputs) = outputs(reply.trim()) {
            return Ok(outputs);
        }
        match self.run(reply.into_bytes()) {
            Outcome::Pass(payload) => Ok(vec![Outgoing::new(None, payload)]),
            Outcome::Fail(reason) => Err(reason),
        }
    }
}

impl Hostile {
    fn run(&mut self, input: Vec<u8>) -> Outcome {
        self.messages += 1;
        let command = String::from_utf8_lossy(&input).trim().to_string();
        match command.as_str() {
            "loop" => spin_forever(),
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(30));
                Outcome::Pass(
                    b"slept 30 s: the host did not interrupt a blocking host call".to_vec(),
                )
            }
            "alloc" => exhaust_memory(),
            "recurse" => Outcome::Pass(recurse(0).to_string().into_bytes()),
            "deep" => Outcome::Pass(deep(0, 1).to_string().into_bytes()),
            "unreachable" => execute_unreachable(),
            "panic" => panic!("hostile: asked to panic"),
            "fail" => Outcome::Fail("hostile: asked to fail".to_string()),
            "file" => probe_files(),
            "socket" => probe_socket(),
            "env" => Outcome::Pass(environment_report().into_bytes()),
            "print" => {
                // Errors writing to stdio are the host's business; ignore them.
                let _ = writeln!(std::io::stdout(), "hostile: this line went to stdout");
                let _ = writeln!(std::io::stderr(), "hostile: this line went to stderr");
                Outcome::Pass(input)
            }
            "log" => {
                for level in [
                    Level::Trace,
                    Level::Debug,
                    Level::Info,
                    Level::Warn,
                    Level::Error,
                ] {
                    log(level, &format!("hostile: log at {level:?}"));
                }
                Outcome::Pass(input)
            }
            "count" => Outcome::Pass(
                serde_json::json!({
                    "messages": self.messages,
                    "configured": CONFIGURED.load(Ordering::SeqCst),
                })
                .to_string()
                .into_bytes(),
            ),
            _ => Outcome::Pass(input),
        }
    }
}

/// The results of a post-hook command with an argument (see the table
/// above), or `None` for any other reply.
fn outputs(command: &str) -> Option<Vec<Outgoing>> {
    let (verb, arg) = command.split_once(':')?;
    let count = || arg.parse::<usize>().unwrap_or(0);
    Some(match verb {
        "to" => vec![Outgoing::new(Some(arg.to_string()), arg)],
        "retained" => {
            let mut o = Outgoing::new(Some(arg.to_string()), arg);
            o.retain = true;
            vec![o]
        }
        "mixed" => vec![
            Outgoing::new(None, "first"),
            Outgoing::new(Some(arg.to_string()), "second"),
        ],
        "many" => (0..count())
            .map(|i| Outgoing::new(None, i.to_string()))
            .collect(),
        "typed" => vec![Outgoing::new(None, "typed").text(arg)],
        "correlate" => {
            let mut o = Outgoing::new(None, "correlated");
            o.correlation_data = Some(arg.as_bytes().to_vec());
            vec![o]
        }
        "flood" => {
            for i in 0..count() {
                log(Level::Error, &format!("hostile: flood line {i}"));
            }
            vec![Outgoing::new(None, "flooded")]
        }
        _ => return None,
    })
}

/// Spins forever; `black_box` keeps the compiler from proving the loop
/// side-effect free.
fn spin_forever() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Allocates and touches 8 MiB chunks until allocation fails, which aborts
/// (a trap) unless the host's memory limiter traps first.
fn exhaust_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 8 << 20];
        for byte in chunk.iter_mut().step_by(4096) {
            *byte = 1;
        }
        hoard.push(black_box(chunk));
        black_box(&hoard);
    }
}

/// Recurses without a reachable base case, keeping 1 KiB live per frame so
/// neither tail-call elimination nor frame merging can remove the depth.
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 1024];
    frame[(depth % 1024) as usize] = depth as u8;
    let frame = black_box(frame);
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let below = recurse(depth + 1);
    below.wrapping_add(u64::from(frame[(depth % 7) as usize]))
}

/// Recurses without bound keeping its state in wasm locals only: no address is
/// taken, so nothing goes to Rust's shadow stack in linear memory, and what
/// stops it is the host's limit on the native wasm stack (`plugins.max_stack`),
/// not an out-of-bounds access. The work after the call (a rotate, then an xor)
/// is not an accumulator LLVM can turn into a loop.
#[inline(never)]
fn deep(depth: u64, salt: u64) -> u64 {
    if depth == u64::MAX {
        return salt;
    }
    let below = deep(depth + 1, salt.rotate_left(7) ^ depth);
    below.rotate_left((depth & 63) as u32) ^ salt
}

#[cfg(target_arch = "wasm32")]
fn execute_unreachable() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn execute_unreachable() -> ! {
    panic!("hostile: unreachable (native build)")
}

/// Tries to read an absolute and a relative file and to list the current
/// directory.
fn probe_files() -> Outcome {
    let mut denied = Vec::new();
    for path in ["/etc/passwd", "bridge.yaml"] {
        match std::fs::read(path) {
            Ok(bytes) => {
                return Outcome::Pass(
                    format!("file access succeeded: {path}: {} bytes", bytes.len()).into_bytes(),
                )
            }
            Err(e) => denied.push(format!("{path}: {e}")),
        }
    }
    match std::fs::read_dir(".") {
        Ok(entries) => {
            return Outcome::Pass(
                format!("file access succeeded: .: {} entries", entries.count()).into_bytes(),
            )
        }
        Err(e) => denied.push(format!(".: {e}")),
    }
    Outcome::Fail(format!("file access denied: {}", denied.join("; ")))
}

/// Tries to reach the local MQTT port and to resolve a host name.
fn probe_socket() -> Outcome {
    use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
    use std::time::Duration;

    let mut denied = Vec::new();
    let broker = SocketAddr::from(([127, 0, 0, 1], 1883));
    match TcpStream::connect_timeout(&broker, Duration::from_secs(2)) {
        Ok(_) => {
            return Outcome::Pass(
                format!("socket access succeeded: connected to {broker}").into_bytes(),
            )
        }
        Err(e) => denied.push(format!("connect {broker}: {e}")),
    }
    match ("localhost", 1883).to_socket_addrs() {
        Ok(addrs) => {
            return Outcome::Pass(
                format!(
                    "socket access succeeded: localhost resolved to {} addresses",
                    addrs.count()
                )
                .into_bytes(),
            )
        }
        Err(e) => denied.push(format!("resolve localhost: {e}")),
    }
    Outcome::Fail(format!("socket access denied: {}", denied.join("; ")))
}

/// Names (not values) of the visible environment variables, as JSON.
fn environment_report() -> String {
    let names: Vec<String> = std::env::vars_os()
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .collect();
    serde_json::json!({ "env_vars": names.len(), "names": names }).to_string()
}

fxbridge_plugin::export_plugin!(Hostile, world: transform);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(action: PreAction) -> String {
        match action {
            PreAction::Invoke(inv) => String::from_utf8(inv.input).unwrap(),
            PreAction::Skip(reason) => panic!("unexpected skip: {reason}"),
        }
    }

    #[test]
    fn harmless_input_passes_and_count_counts_calls() {
        let mut plugin = Hostile::configure("null").unwrap();
        let out = plugin.before_invoke(Message::new("t", "  hello ")).unwrap();
        assert_eq!(input(out), "  hello ");
        let out = plugin.before_invoke(Message::new("t", "count")).unwrap();
        let report: serde_json::Value = serde_json::from_str(&input(out)).unwrap();
        assert_eq!(report["messages"], 2);
        assert!(report["configured"].as_u64().unwrap() >= 1);
    }

    #[test]
    fn fail_is_a_guest_error_in_both_hooks() {
        let mut plugin = Hostile::configure("null").unwrap();
        let err = plugin
            .before_invoke(Message::new("t", "fail\n"))
            .unwrap_err();
        assert_eq!(err, "hostile: asked to fail");
        let err = plugin
            .after_invoke(Message::new("t", "x"), "fail".into())
            .unwrap_err();
        assert_eq!(err, "hostile: asked to fail");
        let out = plugin
            .after_invoke(Message::new("t", "x"), "fine".into())
            .unwrap();
        assert_eq!(out, vec![Outgoing::new(None, "fine")]);
    }

    #[test]
    fn env_report_lists_variable_names() {
        let report: serde_json::Value = serde_json::from_str(&environment_report()).unwrap();
        let names = report["names"].as_array().unwrap();
        assert_eq!(report["env_vars"].as_u64().unwrap() as usize, names.len());
        // A native test process does see its environment (PATH at least).
        assert!(names.iter().any(|n| n == "PATH"), "{report}");
    }
}
