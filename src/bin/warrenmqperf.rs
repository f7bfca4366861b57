//! `warrenmqperf`: a load generator for AMQP 0-9-1 brokers (WarrenMQ, RabbitMQ, ...),
//! in the spirit of RabbitMQ's PerfTest and `lavinmqperf`.
//!
//! Modes:
//! - `throughput` (the default): N producers and M consumers on one queue, as fast as
//!   they can (or at `--rate`), with a progress line per second and a summary.
//! - `latency`: fixed-rate publishing, end-to-end latency percentiles.
//!
//! Every run also checks delivery: each body carries the producer id and a sequence
//! number, and lost or duplicated messages are counted. Exit codes: 0 success, 1 error,
//! 2 usage error, 3 messages were lost.
//!
//! The client is built in: `amq-protocol` encodes and decodes the setup methods, and
//! the hot paths (publish, deliver, ack, confirm) work on raw frames; see `wire.rs`.
//! It shares no code with the broker.

// A crate root in src/bin/ resolves `mod x;` to src/bin/x.rs, so point at the submodule dir.
#[path = "warrenmqperf/client.rs"]
mod client;
#[path = "warrenmqperf/payload.rs"]
mod payload;
#[path = "warrenmqperf/run.rs"]
mod run;
#[path = "warrenmqperf/stats.rs"]
mod stats;
#[path = "warrenmqperf/wire.rs"]
mod wire;

use clap::{Args, Parser, Subcommand};
use run::RunConfig;
use std::process::ExitCode;
use std::time::Duration;

/// Load generator for AMQP 0-9-1 brokers: throughput, latency and delivery checks.
#[derive(Parser, Debug)]
#[command(
    name = "warrenmqperf",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Without a subcommand, runs `throughput`. Exit codes: 0 ok, 1 error, 2 usage, 3 messages lost."
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    throughput: ThroughputArgs,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Producers and consumers as fast as possible (or at --rate); the default mode.
    Throughput(ThroughputArgs),
    /// Fixed-rate publishing; reports end-to-end latency percentiles.
    Latency(LatencyArgs),
}

/// Options of `throughput`.
#[derive(Args, Debug)]
struct ThroughputArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Publish at most this many messages per second per producer (default: unlimited).
    #[arg(long, value_name = "MSGS")]
    rate: Option<f64>,
}

/// Options of `latency`.
#[derive(Args, Debug)]
struct LatencyArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Messages per second per producer. Latency is measured from each message's
    /// scheduled send time, so a stalled broker cannot hide its stall.
    #[arg(long, value_name = "MSGS", default_value_t = 1000.0)]
    rate: f64,
}

/// Options shared by every mode.
#[derive(Args, Debug)]
struct CommonArgs {
    /// Broker URI: amqp://user:password@host:port/vhost (vhost percent-encoded, `%2f` = `/`).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// Producer connections (one channel each).
    #[arg(long, short = 'x', default_value_t = 1)]
    producers: usize,
    /// Consumer connections (one channel each), all on --queue.
    #[arg(long, short = 'y', default_value_t = 1)]
    consumers: usize,
    /// Message body size in bytes (at least 16: send time, producer id, sequence).
    #[arg(long, short = 's', default_value_t = 16)]
    size: usize,
    /// Publisher confirms, with at most WINDOW unconfirmed messages per producer.
    #[arg(long, short = 'c', value_name = "WINDOW", num_args = 0..=1, default_missing_value = "1000")]
    confirm: Option<usize>,
    /// Persistent messages (delivery_mode 2) on a durable queue (and exchange).
    #[arg(long)]
    persistent: bool,
    /// Per-consumer prefetch (basic.qos); 0 = unlimited. Ignored with --autoack.
    #[arg(long, short = 'q', default_value_t = 1000)]
    prefetch: u16,
    /// Consume with no-ack (the broker settles on delivery).
    #[arg(long, short = 'a')]
    autoack: bool,
    /// Manual acks: a multiple-ack every N messages (capped at --prefetch);
    /// 0 = one multiple-ack per socket read.
    #[arg(long, value_name = "N", default_value_t = 0)]
    multi_ack_every: u64,
    /// Publish for this many seconds (default 10 unless --count is given).
    #[arg(long, short = 'z', value_name = "SECS")]
    duration: Option<f64>,
    /// Publish this many messages per producer.
    #[arg(long, short = 'C', value_name = "N")]
    count: Option<u64>,
    /// Queue to consume from. Without it, a queue named `warrenmqperf` is deleted,
    /// declared, and deleted again at the end; a named queue is declared and kept.
    #[arg(long, short = 'u')]
    queue: Option<String>,
    /// Exchange to publish to (declared unless it is "" or amq.*; the queue is bound to it).
    #[arg(long, short = 'e', default_value = "")]
    exchange: String,
    /// Type of --exchange when it is declared.
    #[arg(long, short = 't', default_value = "direct")]
    exchange_type: String,
    /// Routing key (default: the queue name).
    #[arg(long, short = 'k')]
    routing_key: Option<String>,
    /// Longest wait, in seconds, for consumers to receive everything after publishing stops.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    drain_timeout: f64,
    /// Stop draining after this many seconds without a delivery.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    idle_timeout: f64,
    /// Print one JSON object at the end on stdout (human output goes to stderr).
    #[arg(long)]
    json: bool,
    /// No per-second progress lines.
    #[arg(long)]
    quiet: bool,
    /// Tokio worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

fn seconds(name: &str, s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|_| format!("--{name} must be a non-negative number"))
}

impl CommonArgs {
    fn into_config(self, mode: &'static str, rate: Option<f64>) -> Result<RunConfig, String> {
        let uri = wire::Uri::parse(&self.uri)?;
        if let Some(r) = rate {
            if !(r > 0.0 && r.is_finite()) {
                return Err("--rate must be a positive number".into());
            }
        }
        if self.confirm == Some(0) {
            return Err("--confirm window must be at least 1".into());
        }
        if self.size < payload::STAMP_LEN {
            return Err(format!(
                "--size must be at least {} bytes (the body stamp)",
                payload::STAMP_LEN
            ));
        }
        let duration = match (self.duration, self.count) {
            (Some(d), _) => Some(seconds("duration", d)?),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        };
        let own_queue = self.queue.is_none();
        let queue = self.queue.unwrap_or_else(|| "warrenmqperf".to_owned());
        let routing_key = self.routing_key.unwrap_or_else(|| queue.clone());
        Ok(RunConfig {
            mode,
            uri,
            producers: self.producers,
            consumers: self.consumers,
            size: self.size,
            confirm: self.confirm,
            persistent: self.persistent,
            prefetch: self.prefetch,
            autoack: self.autoack,
            multi_ack_every: self.multi_ack_every,
            rate,
            duration,
            count: self.count,
            queue,
            own_queue,
            exchange: self.exchange,
            exchange_type: self.exchange_type,
            routing_key,
            stamp_intended: mode == "latency",
            drain_timeout: seconds("drain-timeout", self.drain_timeout)?,
            idle_timeout: seconds("idle-timeout", self.idle_timeout)?,
            progress: !self.quiet,
            to_stderr: self.json,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (mode, common, rate) = match cli.mode {
        None => ("throughput", cli.throughput.common, cli.throughput.rate),
        Some(Mode::Throughput(a)) => ("throughput", a.common, a.rate),
        Some(Mode::Latency(a)) => ("latency", a.common, Some(a.rate)),
    };
    let (json, threads) = (common.json, common.threads);
    let cfg = match common.into_config(mode, rate) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warrenmqperf: error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = threads.filter(|&n| n > 0) {
        rt.worker_threads(n);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warrenmqperf: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let report = match rt.block_on(run::run(cfg)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warrenmqperf: error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let human = report.human();
    if json {
        eprint!("{human}");
        println!("{}", report.json());
    } else {
        print!("{human}");
    }
    if report.lost.unwrap_or(0) > 0 {
        ExitCode::from(3)
    } else if !report.errors.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
