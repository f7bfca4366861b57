//! The `warrenmq` binary: parses the command line, loads the configuration,
//! sets up logging and the process limits, runs the broker until SIGINT or
//! SIGTERM, and shuts it down in order.
//!
//! Exit codes: 0 after a clean shutdown, 1 for a runtime failure (e.g. the
//! port is taken), 2 for a configuration or usage error. Every failure is one
//! line on stderr starting with `warrenmq: error: `.

#![deny(unsafe_code)]

use anyhow::Context as _;
use clap::Parser;
use std::io::IsTerminal as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use warrenmq::config::{Config, DEFAULT_CONFIG_TOML};
use warrenmq::Server;

/// WarrenMQ: an AMQP 0-9-1 message broker that RabbitMQ clients can use unchanged.
///
/// Without --config, the embedded defaults are used (see --print-default-config):
/// AMQP on 0.0.0.0:5672, data in ./data. Flags override the file.
#[derive(Debug, Parser)]
#[command(name = "warrenmq", version)]
struct Cli {
    /// Configuration file (TOML). Keys not in the file keep their defaults.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// AMQP listen port; overrides `amqp.port` (0 picks a free port).
    #[arg(short, long, value_name = "N")]
    port: Option<u16>,

    /// AMQP listen address; overrides `amqp.bind`.
    #[arg(short, long, value_name = "ADDR")]
    bind: Option<IpAddr>,

    /// Data directory; overrides `data_dir`.
    #[arg(short, long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Print the default configuration file, with comments, and exit.
    #[arg(long)]
    print_default_config: bool,
}

/// Why the process stops early; decides the exit code.
enum Failure {
    /// Bad configuration or environment (exit 2).
    Config(anyhow::Error),
    /// The broker could not start or run (exit 1).
    Runtime(anyhow::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("warrenmq: error: {}", one_line(&e));
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("warrenmq: error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// The error chain joined with `: ` on a single line, skipping causes whose
/// text the previous message already includes (thiserror messages often do).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

fn run(cli: Cli) -> Result<(), Failure> {
    let config = load_config(&cli).map_err(Failure::Config)?;
    init_tracing(&config).map_err(Failure::Config)?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %cli.config.as_deref().map_or("embedded defaults".into(), |p| p.display().to_string()),
        data_dir = %config.data_dir.display(),
        "starting warrenmq"
    );
    raise_nofile_limit();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warrenmq-worker")
        .build()
        .context("cannot start the tokio runtime")
        .map_err(Failure::Runtime)?;
    runtime.block_on(serve(config)).map_err(Failure::Runtime)
}

/// The embedded defaults or `--config`, then the command-line overrides.
fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(port) = cli.port {
        config.amqp.port = port;
    }
    if let Some(bind) = cli.bind {
        config.amqp.bind = bind;
    }
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    config.validate()?;
    Ok(config)
}

/// Compact logs to stderr, filtered by `RUST_LOG` if set, else `log.level`.
fn init_tracing(config: &Config) -> anyhow::Result<()> {
    // `log.level` is checked even when RUST_LOG replaces it, so a bad file
    // fails the same way in every environment.
    let mut filter = EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("invalid value for 'log.level': '{}'", config.log.level))?;
    if let Ok(directives) = std::env::var("RUST_LOG") {
        if !directives.trim().is_empty() {
            filter = EnvFilter::try_new(&directives)
                .with_context(|| format!("invalid RUST_LOG '{directives}'"))?;
        }
    }
    tracing_subscriber::fmt()
        .compact()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot initialise logging: {e}"))
}

/// Raises the soft open-file limit to the hard limit: every client connection
/// and every durable queue's segment holds a descriptor, and the usual soft
/// default (1024) would cap the broker far below what it can serve. The
/// `rlimit` crate wraps getrlimit/setrlimit safely (so this binary stays
/// `deny(unsafe_code)`) and clamps to the kernel's per-process maximum where
/// the hard limit is "unlimited".
fn raise_nofile_limit() {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(e) => {
            warn!(error = %e, "cannot read the open-file limit");
            return;
        }
    };
    match rlimit::increase_nofile_limit(hard) {
        Ok(now) if now > soft => info!(from = soft, to = now, hard, "raised open-file limit"),
        Ok(now) => info!(limit = now, hard, "open-file limit"),
        Err(e) => warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
    }
}

/// Starts the broker, waits for SIGINT/SIGTERM, and shuts it down.
async fn serve(config: Config) -> anyhow::Result<()> {
    // Install the handlers before the broker is reachable, so a signal sent as
    // soon as "listening" is logged is never handled by the default action.
    let mut signals = Signals::new()?;
    let running = Server::start(config).await?;
    info!(protocol = "amqp", "listening on {}", running.amqp_addr());

    let name = signals.recv().await;
    info!(signal = name, "shutting down");
    tokio::select! {
        () = running.shutdown() => info!("stopped"),
        name = signals.recv() => {
            anyhow::bail!("received {name} again during shutdown, exiting without waiting");
        }
    }
    Ok(())
}

/// SIGINT and SIGTERM, whichever comes first.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?,
        })
    }

    /// Waits for the next signal and returns its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli::parse_from([
            "warrenmq",
            "--port",
            "5673",
            "--bind",
            "127.0.0.1",
            "--data-dir",
            "/tmp/x",
        ]);
        let config = load_config(&cli).unwrap();
        assert_eq!(config.amqp.port, 5673);
        assert_eq!(config.amqp.bind, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
    }
}
