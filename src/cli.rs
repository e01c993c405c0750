//! The command line: `run` (the default), `check`, `demo`, `plugin test|inspect|new|compile`
//! and `standin-gateway`. Parses arguments, sets up logging and signals, and
//! calls into the library; no bridge logic lives here.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "fxbridge",
    version,
    about = "Routes MQTT messages to OpenFx functions and republishes their results"
)]
pub struct Cli {
    /// Log format; the level comes from RUST_LOG (default: info).
    #[arg(
        long,
        value_enum,
        global = true,
        env = "FXBRIDGE_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Threads that run the bridge's tasks (default: one per CPU). On a small
    /// machine shared with the broker, 1 uses less CPU per message (BENCHMARKS.md).
    #[arg(
        long,
        global = true,
        env = "FXBRIDGE_WORKER_THREADS",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub worker_threads: Option<u16>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bridge (the default command).
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "bridge.yaml", env = "FXBRIDGE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file exactly as a reload would (plugins compiled
    /// and configured); print every problem; exits 1 on any.
    Check {
        #[arg(short, long, default_value = "bridge.yaml", env = "FXBRIDGE_CONFIG")]
        config: PathBuf,
    },
    /// Demo: an embedded broker, a stand-in gateway (echo) and a WebAssembly
    /// transform (sensor-normalize); sample readings through a route over real
    /// MQTT and real gRPC. Not an OpenFx deployment.
    Demo {
        /// Keep the bridge and its status page running after the readings,
        /// until Ctrl-C.
        #[arg(long)]
        stay: bool,
    },
    /// Work with WebAssembly transform plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Serve a stand-in for the OpenFx gateway that echoes its input (for local
    /// trials and benchmarks; it runs no functions).
    StandinGateway {
        #[arg(long, default_value = "127.0.0.1:31113")]
        listen: std::net::SocketAddr,
        /// Put in front of every reply, like OpenFx's runtime templates (`[Go] `).
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a plugin against the cases in a YAML file, in the production sandbox.
    Test { plugin: PathBuf, cases: PathBuf },
    /// Show which hooks and which WIT version a component implements.
    Inspect { plugin: PathBuf },
    /// Compile components ahead of time into `<name>.cwasm` next to each
    /// `.wasm`, where the bridge loads them instead of compiling on start
    /// (a device then never runs Cranelift). The file is checked when loaded:
    /// made from this very `.wasm`, by this fxbridge version with these engine
    /// settings, for this architecture; anything else is compiled as usual.
    Compile {
        #[arg(required = true)]
        plugins: Vec<PathBuf>,
        /// The target triple of the device, e.g. `aarch64-unknown-linux-musl`
        /// (default: this machine, with its CPU's features). A target uses the
        /// architecture's baseline features, so the file runs on any such device.
        #[arg(long)]
        target: Option<String>,
    },
    /// Write the skeleton of a new plugin (source, build script, cases.yaml)
    /// that builds with one command and passes `plugin test` as generated.
    New {
        /// Name of the plugin (and of its crate or package): lower-case
        /// letters, digits, single '-' or '_' between them.
        name: String,
        /// Language of the plugin.
        #[arg(long, value_enum)]
        lang: crate::tools::scaffold::Lang,
        /// Folder to create (it may exist if empty) [default: ./<NAME>].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn init_logging(format: LogFormat, default: &str) {
    // rumqttd (the embedded broker) logs every client disconnect as an error.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(std::io::stderr().is_terminal()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Whether log lines get ANSI colours: only on a terminal, and not when
/// `NO_COLOR` is set to anything but the empty string (no-color.org).
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Completes on SIGTERM or SIGINT.
pub async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// Entry point of the binary; returns the process exit code.
pub fn main() -> Result<std::process::ExitCode> {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Some(Command::Demo { .. }) => "error,rumqttd=off",
        _ => "info,rumqttd=warn",
    };
    init_logging(cli.log_format, default_filter);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.worker_threads {
        builder.worker_threads(usize::from(n));
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let command = cli.command.unwrap_or(Command::Run {
        config: PathBuf::from("bridge.yaml"),
    });
    runtime.block_on(async move {
        match command {
            Command::Run { config } => {
                crate::reload::run(config, stop_signal()).await?;
                Ok(std::process::ExitCode::SUCCESS)
            }
            Command::Check { config } => Ok(check(&config).await),
            Command::Demo { stay } => crate::demo::run(stay).await,
            Command::Plugin { command } => plugin(command).await,
            Command::StandinGateway { listen, prefix } => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                tracing::info!(%listen, "stand-in gateway (echo) serving pb.FxGateway");
                crate::gateway::standin::serve(
                    listener,
                    crate::gateway::standin::Echo { prefix },
                    stop_signal(),
                )
                .await?;
                Ok(std::process::ExitCode::SUCCESS)
            }
        }
    })
}

/// Validates a config file and loads its plugins, exactly as a reload would.
async fn check(path: &std::path::Path) -> std::process::ExitCode {
    let cfg = match Config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            println!("{e}");
            let n = e.errors.len();
            eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
            return std::process::ExitCode::FAILURE;
        }
    };
    match crate::reload::check_plugins(&cfg).await {
        Ok(_) => {
            println!(
                "{}: OK ({} route{})",
                path.display(),
                cfg.routes.len(),
                if cfg.routes.len() == 1 { "" } else { "s" }
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}: {e:#}", path.display());
            std::process::ExitCode::FAILURE
        }
    }
}

async fn plugin(command: PluginCommand) -> Result<std::process::ExitCode> {
    use crate::tools::{cases, inspect, scaffold};
    use crate::transform::PluginHost;
    let host = || PluginHost::new(&crate::config::PluginsConfig::default());
    match command {
        PluginCommand::Test { plugin, cases } => {
            let report = cases::run_file(&host()?, &plugin, &cases).await?;
            Ok(if report.failed == 0 {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            })
        }
        PluginCommand::Inspect { plugin } => {
            print!("{}", inspect::inspect(&host()?, &plugin)?);
            Ok(std::process::ExitCode::SUCCESS)
        }
        PluginCommand::Compile { plugins, target } => {
            let settings = crate::config::PluginsConfig::default();
            for plugin in &plugins {
                let started = std::time::Instant::now();
                let out = crate::transform::precompile(&settings, plugin, target.as_deref())?;
                let file = crate::transform::precompiled_path(plugin);
                std::fs::write(&file, &out)
                    .with_context(|| format!("cannot write {}", file.display()))?;
                println!(
                    "{} -> {} ({} bytes, for {}, {:.1} s)",
                    plugin.display(),
                    file.display(),
                    out.len(),
                    target.as_deref().unwrap_or("this machine"),
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        PluginCommand::New { name, lang, dir } => {
            print!("{}", scaffold::create(&name, lang, dir.as_deref())?);
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}
