//! One load run: topology setup, producers, consumers, the per-second
//! reporter, the drain after publishing, teardown and the report.
//!
//! Every producer and consumer has its own connection with one channel, all
//! connected before the clock starts. Producers write batches of pre-encoded
//! publishes (one `write` per batch of up to ~64 KiB); a reader task per
//! producer counts confirms and returns window permits. Consumers parse every
//! complete frame of a socket read in place, record latencies and stamps, and
//! ack once per read (or per `--multi-ack-every` messages).

use super::client::{close_frame, Client};
use super::payload::{Stamp, Tracker, MAX_SEQ, STAMP_LEN};
use super::stats::{Counters, LatencySink, Percentiles, Report, Reporter};
use super::wire::{self, ids, split_frame, PublishTemplate, Uri, FRAME_BODY, FRAME_METHOD};
use anyhow::{anyhow, bail};
use bytes::{Buf as _, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The channel every connection uses.
const CH: u16 = 1;
/// Target bytes per producer write.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Most messages per producer write.
const WRITE_BATCH_MSGS: usize = 1000;

/// Everything that shapes a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `throughput` or `latency` (report label).
    pub mode: &'static str,
    /// Broker.
    pub uri: Uri,
    /// Producer connections.
    pub producers: usize,
    /// Consumer connections.
    pub consumers: usize,
    /// Body size (>= [`STAMP_LEN`]).
    pub size: usize,
    /// Publisher confirms with this many unconfirmed messages in flight per producer.
    pub confirm: Option<usize>,
    /// delivery_mode 2 and a durable queue.
    pub persistent: bool,
    /// Per-consumer prefetch (0 = unlimited; ignored with autoack).
    pub prefetch: u16,
    /// Consume with no-ack.
    pub autoack: bool,
    /// Manual acks: 0 = one multiple-ack per socket read, k = a multiple-ack every k messages.
    pub multi_ack_every: u64,
    /// Messages per second per producer.
    pub rate: Option<f64>,
    /// How long producers publish.
    pub duration: Option<Duration>,
    /// Messages per producer.
    pub count: Option<u64>,
    /// Queue consumers read from (and the default routing key).
    pub queue: String,
    /// Delete the queue before and after the run (the default, generated name).
    pub own_queue: bool,
    /// Exchange producers publish to ("" = default exchange).
    pub exchange: String,
    /// Exchange type when the exchange is declared.
    pub exchange_type: String,
    /// Routing key producers publish with.
    pub routing_key: String,
    /// Stamp each message with its scheduled send time instead of the actual one
    /// (rate-limited latency runs: avoids coordinated omission).
    pub stamp_intended: bool,
    /// Longest wait for consumers to catch up after publishing stops.
    pub drain_timeout: Duration,
    /// Give up draining after this long without a delivery.
    pub idle_timeout: Duration,
    /// Print a progress line per second.
    pub progress: bool,
    /// Print progress and notices to stderr instead of stdout.
    pub to_stderr: bool,
}

impl RunConfig {
    fn say(&self, line: &str) {
        if self.to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

/// Shared between the tasks of a run.
struct Shared {
    epoch: Instant,
    counters: Counters,
    /// Producers stop publishing.
    stop_publishing: CancellationToken,
    /// Messages written per producer.
    sent: Vec<AtomicU64>,
}

impl Shared {
    #[inline]
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// What a producer did.
#[derive(Debug, Default)]
struct ProducerResult {
    sent: u64,
    nacked_seqs: Vec<u64>,
    error: Option<String>,
}

/// What a consumer saw.
#[derive(Debug, Default)]
struct ConsumerResult {
    tracker: Tracker,
    error: Option<String>,
}

/// Runs the load and returns the report. Errors only for setup failures; errors
/// of individual connections during the run end up in [`Report::errors`].
pub async fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    if cfg.size < STAMP_LEN {
        bail!("--size must be at least {STAMP_LEN} bytes (the body stamp)");
    }
    if cfg.producers > usize::from(u16::MAX) {
        bail!("at most {} producers", u16::MAX);
    }
    let cfg = Arc::new(cfg);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        counters: Counters::default(),
        stop_publishing: CancellationToken::new(),
        sent: (0..cfg.producers).map(|_| AtomicU64::new(0)).collect(),
    });

    // Topology.
    let mut setup = Client::connect(&cfg.uri, "warrenmqperf setup").await?;
    setup.open_channel(CH).await?;
    if !cfg.exchange.is_empty() && !cfg.exchange.starts_with("amq.") {
        setup
            .declare_exchange(CH, &cfg.exchange, &cfg.exchange_type, cfg.persistent)
            .await?;
    }
    if cfg.own_queue {
        setup.delete_queue(CH, &cfg.queue).await?;
    }
    let state = setup.declare_queue(CH, &cfg.queue, cfg.persistent).await?;
    if state.messages > 0 {
        cfg.say(&format!(
            "warning: queue '{}' already holds {} messages; they will be consumed and may skew the loss and duplicate counts",
            cfg.queue, state.messages
        ));
    }
    if state.consumers > 0 {
        cfg.say(&format!(
            "warning: queue '{}' already has {} consumer(s) outside this run; messages they take count as lost",
            cfg.queue, state.consumers
        ));
    }
    if !cfg.exchange.is_empty() {
        setup
            .bind_queue(CH, &cfg.queue, &cfg.exchange, &cfg.routing_key)
            .await?;
    }

    // Consumers first, so nothing published piles up before they are ready.
    let consumer_stop = CancellationToken::new();
    let mut sinks = Vec::with_capacity(cfg.consumers);
    let mut consumers = Vec::with_capacity(cfg.consumers);
    for i in 0..cfg.consumers {
        let mut c = Client::connect(&cfg.uri, &format!("warrenmqperf consumer {i}")).await?;
        c.open_channel(CH).await?;
        if !cfg.autoack && cfg.prefetch > 0 {
            c.qos(CH, cfg.prefetch).await?;
        }
        c.consume(CH, &cfg.queue, &format!("warrenmqperf-{i}"), cfg.autoack)
            .await?;
        let sink = Arc::new(LatencySink::default());
        sinks.push(sink.clone());
        let (stream, rbuf) = c.into_parts();
        consumers.push(tokio::spawn(consumer(
            cfg.clone(),
            shared.clone(),
            stream,
            rbuf,
            sink,
            consumer_stop.clone(),
        )));
    }
    let mut ready = Vec::with_capacity(cfg.producers);
    for i in 0..cfg.producers {
        let mut c = Client::connect(&cfg.uri, &format!("warrenmqperf producer {i}")).await?;
        c.open_channel(CH).await?;
        if cfg.confirm.is_some() {
            c.confirm_select(CH).await?;
        }
        let template = PublishTemplate::new(
            CH,
            &cfg.exchange,
            &cfg.routing_key,
            cfg.size,
            cfg.persistent,
            c.frame_max,
        );
        ready.push((c.into_parts(), template));
    }

    // Go.
    let start = Instant::now();
    let start_ns = shared.now_ns();
    let mut producers: Vec<JoinHandle<ProducerResult>> = ready
        .into_iter()
        .enumerate()
        .map(|(i, ((stream, rbuf), template))| {
            tokio::spawn(producer(
                i as u16,
                cfg.clone(),
                shared.clone(),
                stream,
                rbuf,
                template,
                start,
            ))
        })
        .collect();
    let mut reporter = Reporter::new(start);
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::from_std(start) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = cfg.duration.map(|d| start + d);
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    // Publishing phase: until the duration passes, every producer finishes its
    // count, or Ctrl-C. Without producers, consumers run for the duration.
    loop {
        let all_done = if producers.is_empty() {
            false
        } else {
            producers.iter().all(|p| p.is_finished())
        };
        if all_done {
            break;
        }
        let until_deadline = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if until_deadline == Some(Duration::ZERO) {
            break;
        }
        tokio::select! {
            _ = ticker.tick() => {
                let line = reporter.tick(&shared.counters, &sinks);
                if cfg.progress {
                    cfg.say(&line);
                }
            }
            _ = tokio::time::sleep(until_deadline.unwrap_or(Duration::from_millis(50)).min(Duration::from_millis(50))) => {}
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                break;
            }
        }
    }
    shared.stop_publishing.cancel();
    // A producer may be stuck in a write the broker does not read (flow control);
    // give them the drain timeout, then abandon them.
    let give_up = tokio::time::Instant::now() + cfg.drain_timeout;
    let mut results = Vec::with_capacity(producers.len());
    for (id, mut p) in producers.drain(..).enumerate() {
        let result = match tokio::time::timeout_at(give_up, &mut p).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => ProducerResult {
                error: Some(format!("producer {id}: task failed: {e}")),
                ..ProducerResult::default()
            },
            Err(_) => {
                p.abort();
                ProducerResult {
                    error: Some(format!(
                        "producer {id}: still blocked writing {:?} after the end (broker flow control?)",
                        cfg.drain_timeout
                    )),
                    ..ProducerResult::default()
                }
            }
        };
        results.push(ProducerResult {
            // Counted per completed write, so it is right even for an abandoned task.
            sent: shared.sent[id].load(Ordering::Relaxed),
            ..result
        });
    }
    let publish_secs = if cfg.producers > 0 {
        start.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let sent: u64 = results.iter().map(|r| r.sent).sum();
    let nacked: u64 = results.iter().map(|r| r.nacked_seqs.len() as u64).sum();

    // Drain: wait for consumers to receive everything that was accepted.
    let mut drain_timed_out = false;
    if cfg.consumers > 0 && cfg.producers > 0 && !interrupted {
        let expected = sent - nacked;
        let drain_start = Instant::now();
        let mut last_progress = Instant::now();
        let mut last_count = shared.counters.consumed.load(Ordering::Relaxed);
        loop {
            let consumed = shared.counters.consumed.load(Ordering::Relaxed);
            if consumed >= expected {
                break;
            }
            if consumed != last_count {
                last_count = consumed;
                last_progress = Instant::now();
            }
            if last_progress.elapsed() >= cfg.idle_timeout
                || drain_start.elapsed() >= cfg.drain_timeout
            {
                drain_timed_out = true;
                break;
            }
            tokio::select! {
                _ = ticker.tick() => {
                    let line = reporter.tick(&shared.counters, &sinks);
                    if cfg.progress {
                        cfg.say(&line);
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = &mut ctrl_c => {
                    interrupted = true;
                    break;
                }
            }
        }
    }
    consumer_stop.cancel();
    let mut consumer_results = Vec::with_capacity(consumers.len());
    for c in consumers {
        consumer_results.push(c.await.unwrap_or_else(|e| ConsumerResult {
            error: Some(format!("consumer task failed: {e}")),
            ..ConsumerResult::default()
        }));
    }
    reporter.collect(&sinks);

    // Teardown.
    let mut errors = Vec::new();
    if cfg.own_queue {
        if let Err(e) = setup.delete_queue(CH, &cfg.queue).await {
            errors.push(format!("deleting queue '{}': {e}", cfg.queue));
        }
    }
    let _ = setup.close().await;

    // Results.
    let mut tracker = Tracker::new(cfg.producers);
    for r in &consumer_results {
        tracker.merge(&r.tracker);
        errors.extend(r.error.clone());
    }
    for r in &results {
        errors.extend(r.error.clone());
    }
    let lost = (cfg.consumers > 0 && cfg.producers > 0 && !interrupted).then(|| {
        results
            .iter()
            .enumerate()
            .map(|(p, r)| {
                let p = p as u16;
                let nacked_unseen = r
                    .nacked_seqs
                    .iter()
                    .filter(|&&s| !tracker.contains(p, s))
                    .count() as u64;
                tracker.missing(p, r.sent) - nacked_unseen
            })
            .sum::<u64>()
    });
    let c = &shared.counters;
    let last_delivery = c.last_delivery_ns.load(Ordering::Relaxed);
    Ok(Report {
        mode: cfg.mode,
        producers: cfg.producers,
        consumers: cfg.consumers,
        size: cfg.size,
        confirm: cfg.confirm,
        persistent: cfg.persistent,
        autoack: cfg.autoack,
        prefetch: if cfg.autoack { 0 } else { cfg.prefetch },
        rate: cfg.rate,
        publish_secs,
        consume_secs: last_delivery.saturating_sub(start_ns) as f64 / 1e9,
        published: sent,
        confirmed: c.confirmed.load(Ordering::Relaxed),
        nacked,
        consumed: c.consumed.load(Ordering::Relaxed),
        duplicates: tracker.duplicates,
        lost,
        foreign: tracker.foreign,
        returned: c.returned.load(Ordering::Relaxed),
        blocked: c.blocked.load(Ordering::Relaxed),
        latency: Percentiles::of(&reporter.total),
        drain_timed_out,
        interrupted,
        errors,
    })
}

/// Publishes until told to stop or `count` is reached.
async fn producer(
    id: u16,
    cfg: Arc<RunConfig>,
    shared: Arc<Shared>,
    stream: TcpStream,
    rbuf: BytesMut,
    template: PublishTemplate,
    start: Instant,
) -> ProducerResult {
    let (rd, mut wr) = stream.into_split();
    let window = cfg.confirm.map(|w| Arc::new(Semaphore::new(w)));
    let failed = CancellationToken::new();
    let reader = tokio::spawn(producer_reader(
        rd,
        rbuf,
        window.clone(),
        shared.clone(),
        failed.clone(),
    ));
    let mut result = ProducerResult::default();
    if let Err(e) = publish_loop(
        &cfg,
        &shared,
        &mut wr,
        &template,
        window.as_deref(),
        &failed,
        id,
        start,
        &mut result.sent,
    )
    .await
    {
        result.error = Some(format!("producer {id}: {e}"));
    }
    // Wait for outstanding confirms, then close; the reader ends at close-ok.
    if let (Some(window), Some(size), None) = (&window, cfg.confirm, &result.error) {
        let all = window.acquire_many(size as u32);
        tokio::select! {
            r = tokio::time::timeout(cfg.drain_timeout, all) => {
                if r.is_err() {
                    result.error = Some(format!(
                        "producer {id}: {} confirms still outstanding after {:?}",
                        size - window.available_permits(), cfg.drain_timeout
                    ));
                }
            }
            _ = failed.cancelled() => {}
        }
    }
    let _ = wr.write_all(&close_frame()).await;
    match tokio::time::timeout(Duration::from_secs(5), reader).await {
        Ok(Ok(r)) => {
            result.nacked_seqs = r.nacked_seqs;
            if result.error.is_none() {
                result.error = r.error.map(|e| format!("producer {id}: {e}"));
            }
        }
        Ok(Err(e)) => result.error = Some(format!("producer {id}: reader failed: {e}")),
        Err(_) => {
            if result.error.is_none() {
                result.error = Some(format!("producer {id}: no connection.close-ok within 5 s"));
            }
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn publish_loop(
    cfg: &RunConfig,
    shared: &Shared,
    wr: &mut OwnedWriteHalf,
    template: &PublishTemplate,
    window: Option<&Semaphore>,
    failed: &CancellationToken,
    id: u16,
    start: Instant,
    sent: &mut u64,
) -> anyhow::Result<()> {
    let per_write = (WRITE_BATCH_BYTES / template.bytes.len()).clamp(1, WRITE_BATCH_MSGS);
    let limit = cfg.count.unwrap_or(MAX_SEQ + 1).min(MAX_SEQ + 1);
    let start_ns = start.duration_since(shared.epoch).as_nanos() as u64;
    let mut buf = Vec::with_capacity(per_write * template.bytes.len());
    let stop = &shared.stop_publishing;
    while *sent < limit && !stop.is_cancelled() {
        if failed.is_cancelled() {
            return Ok(()); // the reader has the error
        }
        let mut n = per_write.min((limit - *sent) as usize);
        if let Some(rate) = cfg.rate {
            // Messages due by now: 1 at t=0, then one every 1/rate seconds.
            let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
            if due <= *sent {
                let next = start + Duration::from_secs_f64(*sent as f64 / rate);
                tokio::select! {
                    _ = tokio::time::sleep_until(next.into()) => {}
                    _ = stop.cancelled() => {}
                }
                continue;
            }
            n = n.min((due - *sent) as usize);
        }
        if let Some(window) = window {
            tokio::select! {
                permit = window.acquire() => permit?.forget(),
                _ = stop.cancelled() => break,
                _ = failed.cancelled() => return Ok(()),
            }
            let more = (n - 1).min(window.available_permits());
            if more > 0 {
                window
                    .try_acquire_many(more as u32)
                    .expect("only this task takes permits")
                    .forget();
            }
            n = 1 + more;
        }
        buf.clear();
        let now_ns = shared.now_ns();
        for i in 0..n as u64 {
            let seq = *sent + i;
            let sent_ns = match cfg.rate {
                Some(rate) if cfg.stamp_intended => start_ns + (seq as f64 * 1e9 / rate) as u64,
                _ => now_ns,
            };
            let at = buf.len();
            buf.extend_from_slice(&template.bytes);
            Stamp {
                sent_ns,
                producer: id,
                seq,
            }
            .write(&mut buf[at + template.stamp_at..]);
        }
        tokio::select! {
            r = wr.write_all(&buf) => r?,
            _ = failed.cancelled() => return Ok(()),
        }
        *sent += n as u64;
        shared.sent[id as usize].store(*sent, Ordering::Relaxed);
        shared
            .counters
            .published
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Publish sequence numbers not yet confirmed, as a window starting at the lowest one.
#[derive(Debug)]
struct Unconfirmed {
    /// Lowest unsettled delivery tag (tags start at 1).
    base: u64,
    /// Settled flags for tags `base..`.
    settled: VecDeque<bool>,
}

impl Unconfirmed {
    fn new() -> Self {
        Unconfirmed {
            base: 1,
            settled: VecDeque::new(),
        }
    }

    /// Settles `tag` (and everything below it when `multiple`); calls `each` per newly
    /// settled tag and returns how many there were.
    fn settle(&mut self, tag: u64, multiple: bool, mut each: impl FnMut(u64)) -> u64 {
        if tag < self.base {
            return 0;
        }
        let idx = (tag - self.base) as usize;
        if idx >= self.settled.len() {
            self.settled.resize(idx + 1, false);
        }
        let from = if multiple { 0 } else { idx };
        let mut n = 0;
        for i in from..=idx {
            if !self.settled[i] {
                self.settled[i] = true;
                n += 1;
                each(self.base + i as u64);
            }
        }
        while self.settled.front() == Some(&true) {
            self.settled.pop_front();
            self.base += 1;
        }
        n
    }
}

#[derive(Debug, Default)]
struct ReaderResult {
    nacked_seqs: Vec<u64>,
    error: Option<String>,
}

/// Reads a producer's socket: confirms, returns, blocked notices, closes.
async fn producer_reader(
    mut rd: OwnedReadHalf,
    mut rbuf: BytesMut,
    window: Option<Arc<Semaphore>>,
    shared: Arc<Shared>,
    failed: CancellationToken,
) -> ReaderResult {
    let mut result = ReaderResult::default();
    let mut unconfirmed = Unconfirmed::new();
    let outcome: anyhow::Result<()> = async {
        loop {
            let mut pos = 0;
            let (mut acked, mut nacked) = (0u64, 0u64);
            while let Some((f, len)) = split_frame(&rbuf[pos..]).map_err(|e| anyhow!(e))? {
                pos += len;
                if f.kind != FRAME_METHOD {
                    continue; // heartbeats, and the content of basic.return
                }
                match wire::method_ids(f.payload) {
                    ids::BASIC_ACK => {
                        let (tag, multiple) =
                            wire::ack_args(f.payload).ok_or_else(|| anyhow!("short basic.ack"))?;
                        acked += unconfirmed.settle(tag, multiple, |_| {});
                    }
                    ids::BASIC_NACK => {
                        let (tag, multiple) =
                            wire::ack_args(f.payload).ok_or_else(|| anyhow!("short basic.nack"))?;
                        let seqs = &mut result.nacked_seqs;
                        nacked += unconfirmed.settle(tag, multiple, |t| seqs.push(t - 1));
                    }
                    ids::BASIC_RETURN => {
                        shared.counters.returned.fetch_add(1, Ordering::Relaxed);
                    }
                    ids::CONNECTION_BLOCKED => {
                        shared.counters.blocked.fetch_add(1, Ordering::Relaxed);
                    }
                    ids::CONNECTION_UNBLOCKED => {}
                    ids::CONNECTION_CLOSE_OK => return Ok(()),
                    ids::CONNECTION_CLOSE => {
                        bail!(
                            "connection closed by the broker: {}",
                            wire::close_reason(f.payload)
                        )
                    }
                    ids::CHANNEL_CLOSE => {
                        bail!(
                            "channel closed by the broker: {}",
                            wire::close_reason(f.payload)
                        )
                    }
                    (c, m) => bail!("unexpected method {c}.{m}"),
                }
            }
            rbuf.advance(pos);
            if acked + nacked > 0 {
                let c = &shared.counters;
                c.confirmed.fetch_add(acked, Ordering::Relaxed);
                c.nacked.fetch_add(nacked, Ordering::Relaxed);
                if let Some(w) = &window {
                    w.add_permits((acked + nacked) as usize);
                }
            }
            rbuf.reserve(16 * 1024);
            if rd.read_buf(&mut rbuf).await? == 0 {
                bail!("connection closed by the broker");
            }
        }
    }
    .await;
    if let Err(e) = outcome {
        result.error = Some(e.to_string());
        failed.cancel();
    }
    result
}

/// Consumes until `stop`, then closes the connection.
async fn consumer(
    cfg: Arc<RunConfig>,
    shared: Arc<Shared>,
    stream: TcpStream,
    rbuf: BytesMut,
    sink: Arc<LatencySink>,
    stop: CancellationToken,
) -> ConsumerResult {
    let (mut rd, mut wr) = stream.into_split();
    let mut result = ConsumerResult {
        tracker: Tracker::new(cfg.producers),
        error: None,
    };
    if let Err(e) = consume_loop(
        &cfg,
        &shared,
        &mut rd,
        &mut wr,
        rbuf,
        &sink,
        &stop,
        &mut result.tracker,
    )
    .await
    {
        result.error = Some(format!("consumer: {e}"));
        return result;
    }
    // Close: discard deliveries until close-ok.
    let closed = async {
        wr.write_all(&close_frame()).await?;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            while let Some((f, len)) = split_frame(&buf).map_err(|e| anyhow!(e))? {
                if f.kind == FRAME_METHOD && wire::method_ids(f.payload) == ids::CONNECTION_CLOSE_OK
                {
                    return anyhow::Ok(());
                }
                buf.advance(len);
            }
            buf.reserve(64 * 1024);
            if rd.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    };
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), closed).await {
        result.error = Some(format!("consumer: closing: {e}"));
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn consume_loop(
    cfg: &RunConfig,
    shared: &Shared,
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    mut rbuf: BytesMut,
    sink: &LatencySink,
    stop: &CancellationToken,
    tracker: &mut Tracker,
) -> anyhow::Result<()> {
    let manual = !cfg.autoack;
    // A multiple-ack every k messages; never more than the prefetch, or it would stall.
    let every = match (cfg.multi_ack_every, cfg.prefetch) {
        (0, _) => u64::MAX,
        (k, 0) => k,
        (k, p) => k.min(u64::from(p)),
    };
    let mut latencies = Vec::with_capacity(4096);
    let mut acks = Vec::with_capacity(4096);
    let mut awaiting_body = false;
    let (mut last_tag, mut acked_to) = (0u64, 0u64);
    loop {
        let mut pos = 0;
        let mut n = 0u64;
        let now = shared.now_ns();
        while let Some((f, len)) = split_frame(&rbuf[pos..]).map_err(|e| anyhow!(e))? {
            pos += len;
            match f.kind {
                FRAME_BODY if awaiting_body => {
                    // The stamp is in the first body frame (frame_max >= 4096 > STAMP_LEN).
                    awaiting_body = false;
                    n += 1;
                    match Stamp::read(f.payload) {
                        Some(s) => {
                            tracker.record(s.producer, s.seq);
                            latencies.push(now.saturating_sub(s.sent_ns));
                        }
                        None => tracker.foreign += 1,
                    }
                    if manual && last_tag - acked_to >= every {
                        wire::put_ack(&mut acks, CH, last_tag, true);
                        acked_to = last_tag;
                    }
                }
                FRAME_METHOD => match wire::method_ids(f.payload) {
                    ids::BASIC_DELIVER => {
                        last_tag = wire::deliver_tag(f.payload)
                            .ok_or_else(|| anyhow!("short basic.deliver"))?;
                        awaiting_body = true;
                    }
                    ids::BASIC_CANCEL => {
                        bail!("the broker cancelled the consumer (queue deleted?)")
                    }
                    ids::CONNECTION_CLOSE => {
                        bail!(
                            "connection closed by the broker: {}",
                            wire::close_reason(f.payload)
                        )
                    }
                    ids::CHANNEL_CLOSE => {
                        bail!(
                            "channel closed by the broker: {}",
                            wire::close_reason(f.payload)
                        )
                    }
                    ids::CONNECTION_BLOCKED | ids::CONNECTION_UNBLOCKED | ids::BASIC_CANCEL_OK => {}
                    (c, m) => bail!("unexpected method {c}.{m}"),
                },
                _ => {} // content headers, further body frames, heartbeats
            }
        }
        rbuf.advance(pos);
        if n > 0 {
            let c = &shared.counters;
            c.consumed.fetch_add(n, Ordering::Relaxed);
            c.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
            sink.record(&latencies);
            latencies.clear();
        }
        if manual && every == u64::MAX && last_tag > acked_to {
            wire::put_ack(&mut acks, CH, last_tag, true);
            acked_to = last_tag;
        }
        if !acks.is_empty() {
            wr.write_all(&acks).await?;
            acks.clear();
        }
        if rbuf.capacity() - rbuf.len() < 32 * 1024 {
            rbuf.reserve(128 * 1024);
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            r = rd.read_buf(&mut rbuf) => {
                if r? == 0 {
                    bail!("connection closed by the broker");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Unconfirmed;

    #[test]
    fn unconfirmed_window_handles_single_multiple_and_out_of_order() {
        let mut u = Unconfirmed::new();
        let mut seen = Vec::new();
        assert_eq!(u.settle(3, false, |t| seen.push(t)), 1);
        assert_eq!(u.base, 1);
        assert_eq!(u.settle(2, true, |t| seen.push(t)), 2);
        assert_eq!(u.base, 4, "1..=3 settled");
        assert_eq!(u.settle(2, true, |_| {}), 0, "already settled");
        assert_eq!(u.settle(10, true, |t| seen.push(t)), 7);
        assert_eq!(seen, vec![3, 1, 2, 4, 5, 6, 7, 8, 9, 10]);
        assert!(u.settled.is_empty());
    }
}
