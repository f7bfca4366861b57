//! # Durable message store
//!
//! Owns all message-store file I/O, on **one dedicated OS thread** (`std::fs`, never `tokio::fs`)
//! fed by an unbounded channel of `StoreCmd`s. Each durable queue has a directory of
//! append-only, checksummed segment files plus per-segment ack files; the format is in
//! `docs/storage-format.md`.
//!
//! **Group commit.** The thread blocks for one command, then drains everything else pending,
//! buffers all of it per file, writes each touched file once, runs **one `fdatasync` per touched
//! file** (plus the queue directory when a segment was created), and only then runs the
//! completions of that batch. Batching comes from the backlog, not a timer: an idle store
//! confirms after a single fsync, a loaded one confirms thousands of messages per fsync.
//!
//! Callers: queue actors (append/ack/delivery counts/delete), channels (flush for `tx.commit`),
//! the server (open/recovery/shutdown). Completions run **on the store thread**: they must be
//! cheap and non-blocking (e.g. send on a tokio channel).
//!
//! Invariants:
//! - Commands are applied in channel order, so an ack is always ordered after the append it
//!   refers to. Acks and delivery counts are written in the batch but fsynced only by
//!   [`StoreHandle::flush`] and shutdown (losing them in an OS crash means a redelivery).
//! - Every completion runs exactly once: with `Ok` after its data is durable (or written, with
//!   [`FsyncMode::Never`]), with `Err` on any I/O failure (e.g. ENOSPC), or with `Err` if the
//!   store has stopped. I/O errors never stop the thread.
//! - A queue's seqs must keep increasing, also across restarts: continue above the highest seq
//!   returned by recovery.

pub mod definitions;
mod queue_log;
mod read_back;
mod recovery;
mod segment;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use tracing::{debug, error, info, warn};

use queue_log::QueueLog;
pub use read_back::SeqReader;
pub use recovery::RecoveryStats;
pub use segment::{SegmentReader, FORMAT_VERSION};

/// When appended data is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncMode {
    /// `fdatasync` every touched file per batch before running completions (publisher confirms
    /// mean "on disk").
    #[default]
    Always,
    /// Never fsync while running (completions run after the `write`); data survives a process
    /// crash but not an OS crash or power loss. Shutdown still syncs everything.
    Never,
}

/// A queue's identity in the store, chosen by the broker (e.g. `"<vhost>/<queue>"`).
pub type QueueKey = String;

/// Keys starting with this are *scratch* logs (the page logs of `queue/paging.rs`): disposable
/// caches that are deleted at startup, so they are never fsynced, whatever `storage.fsync` says.
pub const SCRATCH_KEY_PREFIX: char = '\u{0}';

/// Whether `key` names a scratch log (see [`SCRATCH_KEY_PREFIX`]).
pub fn is_scratch(key: &str) -> bool {
    key.starts_with(SCRATCH_KEY_PREFIX)
}

/// One persistent message as stored in (and recovered from) a queue log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Queue-assigned sequence number; strictly increasing per queue.
    pub seq: u64,
    /// Encoded AMQP content-header properties payload (opaque to the store).
    pub header: Bytes,
    /// Message body.
    pub body: Bytes,
    /// Exchange the message was published to.
    pub exchange: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// Number of earlier deliveries (latest value recorded with `set_delivery_count`).
    pub delivery_count: u32,
    /// Whether the message was delivered before (set on recovery if `delivery_count > 0`).
    pub redelivered: bool,
}

/// A queue found on disk at startup.
#[derive(Debug)]
pub struct RecoveredQueue {
    /// The key the queue's log was created with.
    pub key: QueueKey,
    /// Messages not acked before the stop, in seq order (delivered-but-unacked ones included).
    /// With a [`RecoveryWindow`], only the first [`RecoveryWindow::records`] of them.
    pub messages: Vec<StoredMessage>,
    /// The live records after those, without their bodies (empty without a window).
    pub paged: Vec<PagedRecord>,
}

/// A live record recovered without its body, which stays in the log to be read back by seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagedRecord {
    /// Sequence number.
    pub seq: u64,
    /// Body size in bytes.
    pub body_size: u32,
    /// Latest recorded delivery count.
    pub delivery_count: u32,
    /// Whether the message was delivered before.
    pub redelivered: bool,
    /// The encoded properties, kept (copied out of the segment) only when they carry what a
    /// queue needs without the body: `headers`, `priority` or `expiration`.
    pub header: Option<Box<[u8]>>,
}

/// How much of each log recovery returns whole: the rest comes back as [`PagedRecord`]s, so
/// start-up memory is bounded by the window, not by the backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryWindow {
    /// Live records per log returned with their bodies.
    pub records: usize,
    /// Logs whose key starts with this prefix always come back whole (their owner needs
    /// every message in memory); empty = none.
    pub whole_prefix: &'static str,
}

/// Callback run on the store thread when an append or flush is durable (or failed).
pub type Completion = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Tuning knobs; [`Store::open`] uses the defaults with the given [`FsyncMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Durability mode.
    pub fsync: FsyncMode,
    /// Size at which a segment is sealed and a new one started (default 8 MiB).
    pub segment_bytes: u64,
    /// Recover only this much of each log with bodies (default: everything).
    pub recovery_window: Option<RecoveryWindow>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            fsync: FsyncMode::Always,
            segment_bytes: queue_log::SEGMENT_MAX_BYTES,
            recovery_window: None,
        }
    }
}

/// Counters kept by the store thread (relaxed atomics; read them for metrics and tests).
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Group-commit batches processed.
    pub batches: AtomicU64,
    /// `fdatasync`/`fsync` calls made (files and directories).
    pub fsyncs: AtomicU64,
    /// Messages appended (accepted for writing).
    pub messages_appended: AtomicU64,
    /// Bytes written to segment and ack files.
    pub bytes_written: AtomicU64,
    /// Failed writes or fsyncs (e.g. ENOSPC, EIO).
    pub write_errors: AtomicU64,
    /// Segment files created.
    pub segments_created: AtomicU64,
    /// Segment files deleted because every message in them was acked.
    pub segments_deleted: AtomicU64,
    /// File handles currently open by the store thread.
    pub open_files: AtomicU64,
    /// Test hook: fail the next segment writes with ENOSPC (after writing a few junk bytes).
    #[cfg(test)]
    pub(crate) inject_enospc: std::sync::atomic::AtomicBool,
}

/// Commands processed by the store thread, in order.
pub(crate) enum StoreCmd {
    /// Append messages to a queue's log.
    Append {
        queue: QueueKey,
        messages: Vec<StoredMessage>,
        done: Option<Done>,
    },
    /// Record removed messages.
    Ack { queue: QueueKey, seqs: Vec<u64> },
    /// Record a new delivery count.
    SetDeliveryCount {
        queue: QueueKey,
        seq: u64,
        count: u32,
    },
    /// Delete a queue's log.
    DeleteQueue { queue: QueueKey },
    /// Complete once everything before it is durable.
    Flush { done: Done },
    /// Flush, fsync, write the clean-shutdown marker and exit.
    Shutdown,
}

/// A completion that is guaranteed to run: if it is dropped unused (store stopped, command lost
/// with the channel), it runs with an error.
pub(crate) struct Done(Option<Completion>);

impl Done {
    fn new(c: Completion) -> Self {
        Done(Some(c))
    }

    /// Runs the completion with `res` (a panic in it is logged, not propagated).
    fn complete(mut self, res: io::Result<()>) {
        if let Some(f) = self.0.take() {
            run_completion(f, res);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            run_completion(
                f,
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "message store is not running",
                )),
            );
        }
    }
}

fn run_completion(f: Completion, res: io::Result<()>) {
    if catch_unwind(AssertUnwindSafe(|| f(res))).is_err() {
        error!("store completion callback panicked");
    }
}

/// Name of the clean-shutdown marker file in the store root.
const CLEAN_MARKER: &str = "clean_shutdown";
/// Contents of the clean-shutdown marker.
const CLEAN_MARKER_CONTENTS: &[u8] = b"warrenmq-clean 1\n";
/// Name of the format version file in the store root.
const VERSION_FILE: &str = "VERSION";
/// Most commands drained into one batch.
const MAX_BATCH_CMDS: usize = 65_536;
/// Most message bytes drained into one batch (bounds buffer memory).
const MAX_BATCH_BYTES: usize = 64 << 20;
/// Above this many open handles, handles not used by the current batch are closed.
const MAX_OPEN_FILES: u64 = 512;

/// The running store: owns the store thread. Dropping it shuts down like [`Store::shutdown`].
pub struct Store {
    tx: Sender<StoreCmd>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<StoreStats>,
    queues_dir: PathBuf,
    recovery: RecoveryStats,
}

/// Cheap, cloneable sender of store commands. Never blocks (the channel is unbounded; the
/// queues' own bounded inboxes limit how much can be in flight).
#[derive(Clone)]
pub struct StoreHandle {
    tx: Sender<StoreCmd>,
    stats: Arc<StoreStats>,
    queues_dir: PathBuf,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("queues_dir", &self.queues_dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store dir, recovers everything, starts the thread.
    pub fn open(
        dir: &Path,
        fsync: FsyncMode,
    ) -> io::Result<(Store, StoreHandle, Vec<RecoveredQueue>)> {
        Self::open_with_options(
            dir,
            StoreOptions {
                fsync,
                ..StoreOptions::default()
            },
        )
    }

    /// [`Store::open`] with explicit [`StoreOptions`].
    pub fn open_with_options(
        dir: &Path,
        opts: StoreOptions,
    ) -> io::Result<(Store, StoreHandle, Vec<RecoveredQueue>)> {
        let sync = opts.fsync == FsyncMode::Always;
        fs::create_dir_all(dir)?;
        check_version(dir)?;
        let queues_dir = dir.join("queues");
        let trash_dir = dir.join("trash");
        fs::create_dir_all(&queues_dir)?;
        if trash_dir.exists() {
            // Queues deleted just before a crash: finish deleting them.
            fs::remove_dir_all(&trash_dir)?;
        }
        fs::create_dir_all(&trash_dir)?;
        let marker = dir.join(CLEAN_MARKER);
        let clean = fs::read(&marker).is_ok_and(|m| m == CLEAN_MARKER_CONTENTS);
        let (recovered, recovery) =
            recovery::recover_all(&queues_dir, clean, sync, opts.recovery_window)?;
        if marker.exists() {
            // Must be durably gone before anything new is written: from now on a crash is not
            // a clean shutdown.
            fs::remove_file(&marker)?;
        }
        queue_log::sync_dir(dir)?;

        let stats = Arc::new(StoreStats::default());
        let mut queues = HashMap::with_capacity(recovered.len());
        let mut out = Vec::with_capacity(recovered.len());
        for (mut log, rq) in recovered {
            log.segment_bytes = opts.segment_bytes;
            queues.insert(log.key.clone(), log);
            out.push(rq);
        }
        let engine = Engine {
            root: dir.to_path_buf(),
            queues_dir: queues_dir.clone(),
            trash_dir,
            opts,
            stats: stats.clone(),
            queues,
            touched: Vec::new(),
            unsynced: Vec::new(),
            pending: Vec::new(),
            flush_requested: false,
            trash_seq: 0,
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("warrenmq-store".into())
            .spawn(move || engine.run(rx))?;
        let handle = StoreHandle {
            tx: tx.clone(),
            stats: stats.clone(),
            queues_dir: queues_dir.clone(),
        };
        Ok((
            Store {
                tx,
                thread: Some(thread),
                stats,
                queues_dir,
                recovery,
            },
            handle,
            out,
        ))
    }

    /// Flushes, fsyncs, writes the clean-shutdown marker, joins the thread.
    ///
    /// Commands sent after this (from remaining handles) fail their completions.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.tx.send(StoreCmd::Shutdown);
            if thread.join().is_err() {
                error!("store thread panicked");
            }
        }
    }

    /// The store's counters.
    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }

    /// What recovery found when this store was opened.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.recovery
    }

    /// A reader for records by location (see [`StoreReader`]).
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            queues_dir: self.queues_dir.clone(),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop();
    }
}

impl StoreHandle {
    fn send(&self, cmd: StoreCmd) {
        if let Err(mpsc::SendError(cmd)) = self.tx.send(cmd) {
            debug!("store command after shutdown");
            drop(cmd); // a `Done` inside reports the error
        }
    }

    /// Appends messages (already assigned increasing seqs by the queue) to a queue's log. `done`
    /// runs on the store thread after the batch containing it is durable (fsynced). Must be
    /// cheap to call from async code (never blocks).
    pub fn append(&self, queue: &QueueKey, messages: Vec<StoredMessage>, done: Option<Completion>) {
        self.send(StoreCmd::Append {
            queue: queue.clone(),
            messages,
            done: done.map(Done::new),
        });
    }

    /// Records acks (message removed: acked, dropped, expired, dead-lettered). Acks need not be
    /// fsynced before returning but are ordered after the appends they refer to.
    pub fn ack(&self, queue: &QueueKey, seqs: Vec<u64>) {
        if !seqs.is_empty() {
            self.send(StoreCmd::Ack {
                queue: queue.clone(),
                seqs,
            });
        }
    }

    /// Records a new delivery count for a message (on redelivery/requeue), so it survives a crash.
    pub fn set_delivery_count(&self, queue: &QueueKey, seq: u64, count: u32) {
        self.send(StoreCmd::SetDeliveryCount {
            queue: queue.clone(),
            seq,
            count,
        });
    }

    /// Deletes all data of a queue (queue deleted or purged; purge = ack all).
    pub fn delete_queue(&self, queue: &QueueKey) {
        self.send(StoreCmd::DeleteQueue {
            queue: queue.clone(),
        });
    }

    /// Completion once everything sent before it is durable (tx.commit, shutdown). With
    /// [`FsyncMode::Always`] this also fsyncs pending acks and delivery counts.
    pub fn flush(&self, done: Completion) {
        self.send(StoreCmd::Flush {
            done: Done::new(done),
        });
    }

    /// The store's counters.
    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }

    /// A reader for records by location (see [`StoreReader`]).
    pub fn reader(&self) -> StoreReader {
        StoreReader {
            queues_dir: self.queues_dir.clone(),
        }
    }
}

/// Reads stored records by `(queue, segment, offset)`, from any thread, without the store thread.
///
/// Groundwork for backlogs larger than RAM: a queue can keep `(seq, segment, offset)` and read
/// bodies back on demand. Calls block on file I/O (use `spawn_blocking` from async code). Only
/// records already written (their append completed) can be read; a segment deleted because it
/// was fully acked reads as `NotFound`. Ack state is not applied: this returns raw records.
#[derive(Debug, Clone)]
pub struct StoreReader {
    queues_dir: PathBuf,
}

impl StoreReader {
    fn queue_dir(&self, queue: &QueueKey) -> PathBuf {
        self.queues_dir.join(queue_log::dir_name(queue))
    }

    /// First seqs (segment ids) of the queue's segment files, ascending.
    pub fn segments(&self, queue: &QueueKey) -> io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(self.queue_dir(queue))? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".seg").and_then(|s| s.parse().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Reads and CRC-checks the record at byte `offset` of segment `segment` of `queue`.
    pub fn read(&self, queue: &QueueKey, segment: u64, offset: u64) -> io::Result<StoredMessage> {
        segment::read_record_at(
            &queue_log::segment_path(&self.queue_dir(queue), segment),
            offset,
        )
    }

    /// A reader of `queue`'s messages by seq (see [`SeqReader`]).
    pub fn seq_reader(&self, queue: &QueueKey) -> SeqReader {
        SeqReader::new(self.clone(), queue.clone())
    }

    /// Iterates the records of one segment lazily, yielding `(offset, message)`.
    pub fn segment_reader(&self, queue: &QueueKey, segment: u64) -> io::Result<SegmentReader> {
        SegmentReader::open(&queue_log::segment_path(&self.queue_dir(queue), segment))
    }
}

/// Creates or checks the store's `VERSION` file.
fn check_version(dir: &Path) -> io::Result<()> {
    let path = dir.join(VERSION_FILE);
    let expected = format!("warrenmq-store {FORMAT_VERSION}\n");
    match definitions::load(&path)? {
        None => definitions::save_atomic(&path, expected.as_bytes()),
        Some(found) if found == expected.as_bytes() => Ok(()),
        Some(found) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "store at {} has format {:?}; this build reads {expected:?}",
                dir.display(),
                String::from_utf8_lossy(&found).trim()
            ),
        )),
    }
}

/// What to do with a completion once the batch is committed.
enum Pending {
    /// Result of the append that went to segments `lo..=hi` of `queue`.
    Append {
        queue: QueueKey,
        lo: u64,
        hi: u64,
        done: Done,
    },
    /// Already decided (validation error, or an empty append).
    Ready { done: Done, res: io::Result<()> },
    /// Flush: fails if anything in the batch failed.
    Flush { done: Done },
}

/// State of the store thread.
struct Engine {
    root: PathBuf,
    queues_dir: PathBuf,
    trash_dir: PathBuf,
    opts: StoreOptions,
    stats: Arc<StoreStats>,
    queues: HashMap<QueueKey, QueueLog>,
    /// Queues touched in the current batch.
    touched: Vec<QueueKey>,
    /// Queues that may have written-but-unsynced data.
    unsynced: Vec<QueueKey>,
    /// Completions of the current batch.
    pending: Vec<Pending>,
    /// The current batch contains a flush.
    flush_requested: bool,
    /// Counter for unique names in `trash/`.
    trash_seq: u64,
}

impl Engine {
    /// The store thread's loop: one group-commit batch per iteration.
    fn run(mut self, rx: Receiver<StoreCmd>) {
        let mut batch = Vec::with_capacity(1024);
        loop {
            let Ok(first) = rx.recv() else {
                // Every handle and the Store are gone without a Shutdown: still close cleanly.
                self.shutdown();
                return;
            };
            let mut bytes = cmd_bytes(&first);
            batch.push(first);
            while batch.len() < MAX_BATCH_CMDS && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(cmd) => {
                        bytes += cmd_bytes(&cmd);
                        batch.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            let mut stop = false;
            for cmd in batch.drain(..) {
                if stop {
                    continue; // dropped: its completion reports "not running"
                }
                match cmd {
                    StoreCmd::Append {
                        queue,
                        messages,
                        done,
                    } => self.append(queue, messages, done),
                    StoreCmd::Ack { queue, mut seqs } => {
                        if let Some(log) = self.queues.get_mut(&queue) {
                            log.ack(&mut seqs);
                            Self::touch(&mut self.touched, log);
                        }
                    }
                    StoreCmd::SetDeliveryCount { queue, seq, count } => {
                        if let Some(log) = self.queues.get_mut(&queue) {
                            log.set_delivery_count(seq, count);
                            Self::touch(&mut self.touched, log);
                        }
                    }
                    StoreCmd::DeleteQueue { queue } => {
                        self.commit();
                        self.delete_queue(&queue);
                    }
                    StoreCmd::Flush { done } => {
                        self.flush_requested = true;
                        self.pending.push(Pending::Flush { done });
                    }
                    StoreCmd::Shutdown => stop = true,
                }
            }
            self.commit();
            if stop {
                self.shutdown();
                while let Ok(cmd) = rx.try_recv() {
                    drop(cmd);
                }
                return;
            }
        }
    }

    fn touch(touched: &mut Vec<QueueKey>, log: &mut QueueLog) {
        if !log.in_batch {
            log.in_batch = true;
            touched.push(log.key.clone());
        }
    }

    fn append(&mut self, queue: QueueKey, messages: Vec<StoredMessage>, done: Option<Done>) {
        if messages.is_empty() {
            if let Some(done) = done {
                self.pending.push(Pending::Ready { done, res: Ok(()) });
            }
            return;
        }
        let log = match self.queues.entry(queue) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let sync = self.opts.fsync == FsyncMode::Always && !is_scratch(e.key());
                match QueueLog::create(&self.queues_dir, e.key(), sync) {
                    Ok(mut log) => {
                        log.segment_bytes = self.opts.segment_bytes;
                        e.insert(log)
                    }
                    Err(err) => {
                        self.stats.write_errors.fetch_add(1, Relaxed);
                        error!(queue = %e.key(), error = %err, "cannot create queue log");
                        if let Some(done) = done {
                            self.pending.push(Pending::Ready {
                                done,
                                res: Err(err),
                            });
                        }
                        return;
                    }
                }
            }
        };
        let res = log.append(&messages, &self.stats);
        Self::touch(&mut self.touched, log);
        match res {
            Ok((lo, hi)) => {
                self.stats
                    .messages_appended
                    .fetch_add(messages.len() as u64, Relaxed);
                if let Some(done) = done {
                    self.pending.push(Pending::Append {
                        queue: log.key.clone(),
                        lo,
                        hi,
                        done,
                    });
                }
            }
            Err(err) => {
                error!(queue = %log.key, error = %err, "append rejected");
                if let Some(done) = done {
                    self.pending.push(Pending::Ready {
                        done,
                        res: Err(err),
                    });
                }
            }
        }
    }

    /// Writes, fsyncs and completes the current batch.
    fn commit(&mut self) {
        if self.touched.is_empty() && self.pending.is_empty() {
            return;
        }
        self.stats.batches.fetch_add(1, Relaxed);
        let stats_arc = self.stats.clone();
        let stats = &*stats_arc;
        for key in &self.touched {
            if let Some(log) = self.queues.get_mut(key) {
                log.write_batch(stats);
            }
        }
        if self.opts.fsync == FsyncMode::Always {
            for key in &self.touched {
                if let Some(log) = self.queues.get_mut(key) {
                    log.sync_batch(stats);
                }
            }
        }
        let mut batch_failed = self
            .touched
            .iter()
            .any(|k| self.queues.get(k).is_some_and(|l| l.batch_failed()));
        for key in &self.touched {
            if let Some(log) = self.queues.get_mut(key) {
                if log.has_unsynced() && !log.in_unsynced {
                    log.in_unsynced = true;
                    self.unsynced.push(key.clone());
                }
            }
        }
        if self.flush_requested && self.opts.fsync == FsyncMode::Always {
            batch_failed |= self.sync_unsynced().is_err();
        }
        self.flush_requested = false;

        for p in self.pending.drain(..) {
            match p {
                Pending::Append {
                    queue,
                    lo,
                    hi,
                    done,
                } => {
                    let res = self
                        .queues
                        .get(&queue)
                        .map_or(Ok(()), |log| log.batch_result(lo, hi));
                    done.complete(res);
                }
                Pending::Ready { done, res } => done.complete(res),
                Pending::Flush { done } => done.complete(if batch_failed {
                    Err(io::Error::other("a write or fsync in this batch failed"))
                } else {
                    Ok(())
                }),
            }
        }

        if self.stats.open_files.load(Relaxed) > MAX_OPEN_FILES {
            for log in self.queues.values_mut() {
                if !log.in_batch {
                    log.close_all(stats);
                } else {
                    log.close_idle_files(stats);
                }
            }
        }
        for key in self.touched.drain(..) {
            if let Some(log) = self.queues.get_mut(&key) {
                log.end_batch(stats);
            }
        }
    }

    /// fsyncs everything written but not yet synced, in every queue.
    fn sync_unsynced(&mut self) -> io::Result<()> {
        let mut res = Ok(());
        for key in std::mem::take(&mut self.unsynced) {
            let Some(log) = self.queues.get_mut(&key) else {
                continue;
            };
            if let Err(e) = log.sync_unsynced(&self.stats) {
                res = Err(e);
            }
            if log.has_unsynced() {
                self.unsynced.push(key);
            } else {
                log.in_unsynced = false;
            }
        }
        res
    }

    /// Deletes a queue's log: rename its directory into `trash/` (atomic), then remove it.
    fn delete_queue(&mut self, queue: &QueueKey) {
        let Some(mut log) = self.queues.remove(queue) else {
            return;
        };
        log.close_all(&self.stats);
        self.trash_seq += 1;
        let trash =
            self.trash_dir
                .join(format!("{}-{}", self.trash_seq, queue_log::dir_name(queue)));
        let target = match fs::rename(&log.dir, &trash) {
            Ok(()) => {
                if let Err(e) = queue_log::sync_dir(&self.queues_dir) {
                    warn!(queue = %queue, error = %e, "directory fsync after queue delete failed");
                }
                trash
            }
            Err(e) => {
                warn!(queue = %queue, error = %e, "cannot move queue dir to trash; deleting in place");
                log.dir.clone()
            }
        };
        if let Err(e) = fs::remove_dir_all(&target) {
            warn!(queue = %queue, path = %target.display(), error = %e, "cannot remove deleted queue data");
        }
        debug!(queue = %queue, "queue log deleted");
    }

    /// Final commit: fsync everything (whatever the mode) and write the clean marker.
    fn shutdown(&mut self) {
        self.commit();
        let mut ok = self.sync_unsynced().is_ok();
        for log in self.queues.values_mut() {
            ok &= log.sync_unsynced(&self.stats).is_ok();
            log.close_all(&self.stats);
        }
        ok &= queue_log::sync_dir(&self.queues_dir).is_ok();
        let errors = self.stats.write_errors.load(Relaxed);
        if ok && errors == 0 {
            match definitions::save_atomic(&self.root.join(CLEAN_MARKER), CLEAN_MARKER_CONTENTS) {
                Ok(()) => info!(
                    queues = self.queues.len(),
                    "message store shut down cleanly"
                ),
                Err(e) => warn!(error = %e, "cannot write clean-shutdown marker"),
            }
        } else {
            warn!(
                write_errors = errors,
                "message store had I/O errors; not marking shutdown clean (next start verifies all CRCs)"
            );
        }
    }
}

/// Message bytes carried by a command (batch size limit).
fn cmd_bytes(cmd: &StoreCmd) -> usize {
    match cmd {
        StoreCmd::Append { messages, .. } => messages
            .iter()
            .map(|m| m.body.len() + m.header.len() + 64)
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests;
