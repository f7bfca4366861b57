//! Boot-time recovery: rebuilds every queue log from its directory and returns the ready messages.
//!
//! Owns: the scan of `queues/`, torn-tail truncation, removal of leftovers (`.tmp-*` dirs,
//! orphan ack files, fully-acked segments) and progress logging. Runs before the store thread
//! starts, with one worker thread per core pulling queues from a shared counter.
//!
//! Invariants:
//! - Never panics and never refuses to start because of damaged data: a bad record ends its
//!   segment (the file is truncated there, with a `warn!` giving the bytes dropped), an
//!   unreadable segment is renamed aside (`.corrupt`), an unreadable queue dir is skipped.
//! - With the clean-shutdown marker present, record CRCs are not recomputed (lengths still are
//!   checked); ack-file CRCs are always checked (they are tiny).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::queue_log::{self, LiveSet, QueueLog, Segment, META_FILE, META_MAGIC};
use super::segment::{self, AckEntry, HeaderError, Next, SEGMENT_HEADER_LEN};
use super::{PagedRecord, RecoveredQueue, RecoveryWindow, StoredMessage};

/// Totals of a recovery run, for logging and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Queue directories recovered.
    pub queues: u64,
    /// Ready messages returned.
    pub messages: u64,
    /// Segment files read.
    pub segments: u64,
    /// Bytes of segment data read.
    pub bytes: u64,
    /// Segments or ack files whose tail was cut off (torn write or corruption).
    pub truncated: u64,
    /// Bytes dropped by those truncations.
    pub bytes_dropped: u64,
}

/// Shared counters updated by the worker threads.
#[derive(Default)]
struct Progress {
    queues: AtomicU64,
    messages: AtomicU64,
    segments: AtomicU64,
    bytes: AtomicU64,
    truncated: AtomicU64,
    bytes_dropped: AtomicU64,
}

/// How often a long recovery logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Recovers all queue directories under `queues_dir`.
///
/// `clean` = the previous run shut down cleanly (skip record CRCs). `sync` = fsync repairs.
/// `window`: how many live records per log come back with their bodies (all if `None`).
pub(crate) fn recover_all(
    queues_dir: &Path,
    clean: bool,
    sync: bool,
    window: Option<RecoveryWindow>,
) -> io::Result<(Vec<(QueueLog, RecoveredQueue)>, RecoveryStats)> {
    let started = Instant::now();
    let mut dirs = Vec::new();
    for entry in fs::read_dir(queues_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if name.starts_with(".tmp-") {
            // A queue whose creation did not finish: it never held a confirmed message.
            if let Err(e) = fs::remove_dir_all(&path) {
                warn!(path = %path.display(), error = %e, "cannot remove unfinished queue dir");
            }
            continue;
        }
        if entry.file_type()?.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort();
    info!(
        queues = dirs.len(),
        clean_shutdown = clean,
        dir = %queues_dir.display(),
        "store recovery started"
    );

    let progress = Progress::default();
    let next = AtomicUsize::new(0);
    let last_log = Mutex::new(Instant::now());
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(dirs.len())
        .max(1);
    let mut results: Vec<(usize, QueueLog, RecoveredQueue)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Relaxed);
                        let Some(dir) = dirs.get(i) else { break };
                        if let Some((log, rq)) = recover_queue(dir, clean, sync, window, &progress)
                        {
                            out.push((i, log, rq));
                        }
                        let done = progress.queues.fetch_add(1, Relaxed) + 1;
                        let mut last = last_log.lock().unwrap_or_else(|p| p.into_inner());
                        if last.elapsed() >= PROGRESS_EVERY {
                            *last = Instant::now();
                            info!(
                                queues_done = done,
                                queues_total = dirs.len(),
                                messages = progress.messages.load(Relaxed),
                                segments = progress.segments.load(Relaxed),
                                "store recovery in progress"
                            );
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(v) => v,
                Err(_) => {
                    // A bug in recovery code; the queues it held are skipped, the rest still load.
                    error!("store recovery worker panicked");
                    Vec::new()
                }
            })
            .collect()
    });
    results.sort_by_key(|(i, _, _)| *i);
    let stats = RecoveryStats {
        queues: results.len() as u64,
        messages: progress.messages.load(Relaxed),
        segments: progress.segments.load(Relaxed),
        bytes: progress.bytes.load(Relaxed),
        truncated: progress.truncated.load(Relaxed),
        bytes_dropped: progress.bytes_dropped.load(Relaxed),
    };
    info!(
        queues = stats.queues,
        messages = stats.messages,
        segments = stats.segments,
        bytes = stats.bytes,
        truncated = stats.truncated,
        bytes_dropped = stats.bytes_dropped,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "store recovery finished"
    );
    Ok((results.into_iter().map(|(_, l, r)| (l, r)).collect(), stats))
}

/// Reads the queue key from a queue directory's meta file.
fn read_meta(dir: &Path) -> io::Result<String> {
    let data = fs::read(dir.join(META_FILE))?;
    let key = data
        .strip_prefix(META_MAGIC.as_bytes())
        .ok_or_else(|| segment::invalid_data("bad meta header"))?;
    String::from_utf8(key.to_vec()).map_err(|_| segment::invalid_data("meta key not UTF-8"))
}

/// Recovers one queue directory; `None` if it is unusable (logged).
fn recover_queue(
    dir: &Path,
    clean: bool,
    sync: bool,
    window: Option<RecoveryWindow>,
    progress: &Progress,
) -> Option<(QueueLog, RecoveredQueue)> {
    let key = match read_meta(dir) {
        Ok(k) => k,
        Err(e) => {
            error!(dir = %dir.display(), error = %e, "queue dir without a valid meta file; skipped");
            return None;
        }
    };
    let whole = window
        .filter(|w| w.whole_prefix.is_empty() || !key.starts_with(w.whole_prefix))
        .map_or(usize::MAX, |w| w.records);
    match recover_segments(dir, &key, clean, sync, whole, progress) {
        Ok((segments, messages, paged)) => {
            progress
                .messages
                .fetch_add((messages.len() + paged.len()) as u64, Relaxed);
            let log = QueueLog::from_parts(key.clone(), dir.to_path_buf(), segments);
            Some((
                log,
                RecoveredQueue {
                    key,
                    messages,
                    paged,
                },
            ))
        }
        Err(e) => {
            error!(queue = %key, dir = %dir.display(), error = %e, "cannot read queue dir; skipped");
            None
        }
    }
}

/// File ids found in a queue directory.
fn list_ids(dir: &Path) -> io::Result<(Vec<u64>, Vec<u64>)> {
    let (mut segs, mut acks) = (Vec::new(), Vec::new());
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".ack.tmp") {
            let _ = fs::remove_file(entry.path()); // interrupted compaction; original is intact
            continue;
        }
        let parse = |stem: &str| (stem.len() == 20).then(|| stem.parse::<u64>().ok())?;
        if let Some(id) = name.strip_suffix(".seg").and_then(parse) {
            segs.push(id);
        } else if let Some(id) = name.strip_suffix(".ack").and_then(parse) {
            acks.push(id);
        }
    }
    segs.sort_unstable();
    acks.sort_unstable();
    Ok((segs, acks))
}

/// Cuts `path` to `len` bytes (and fsyncs when `sync`).
fn truncate(path: &Path, len: u64, sync: bool) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    if sync {
        f.sync_all()?;
    }
    Ok(())
}

/// Removed seqs and delivery counts from one ack file.
struct AckState {
    /// Merged, sorted `[start, end)` ranges of removed seqs.
    ranges: Vec<(u64, u64)>,
    /// Latest delivery count per seq.
    dcounts: HashMap<u64, u32>,
    /// Length of the valid prefix of the file.
    len: u64,
}

impl AckState {
    fn is_acked(&self, seq: u64) -> bool {
        let i = self.ranges.partition_point(|&(start, _)| start <= seq);
        i > 0 && seq < self.ranges[i - 1].1
    }
}

/// Loads an ack file, truncating a torn tail.
fn load_acks(path: &Path, key: &str, sync: bool, progress: &Progress) -> io::Result<AckState> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let (entries, valid) = segment::decode_ack_entries(&data);
    if valid < data.len() {
        let dropped = (data.len() - valid) as u64;
        warn!(
            queue = %key,
            file = %path.display(),
            offset = valid,
            bytes_dropped = dropped,
            "torn or corrupt ack file tail truncated"
        );
        progress.truncated.fetch_add(1, Relaxed);
        progress.bytes_dropped.fetch_add(dropped, Relaxed);
        truncate(path, valid as u64, sync)?;
    }
    let mut ranges = Vec::new();
    let mut dcounts = HashMap::new();
    for e in entries {
        match e {
            AckEntry::Range { seq, count } => {
                ranges.push((seq, seq.saturating_add(count as u64)));
            }
            AckEntry::DeliveryCount { seq, count } => {
                dcounts.insert(seq, count);
            }
        }
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    Ok(AckState {
        ranges: merged,
        dcounts,
        len: valid as u64,
    })
}

/// Removes a segment and its ack file (segment first).
fn remove_segment(dir: &Path, id: u64) {
    for path in [
        queue_log::segment_path(dir, id),
        queue_log::ack_path(dir, id),
    ] {
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(path = %path.display(), error = %e, "cannot remove segment file");
            }
        }
    }
}

/// What [`recover_segments`] finds: the live segments, the first ready messages whole, and
/// the index entries of the rest.
type RecoveredSegments = (BTreeMap<u64, Segment>, Vec<StoredMessage>, Vec<PagedRecord>);

/// Recovers all segments of one queue: returns the live segments, the first `whole` ready
/// messages and the index entries of the rest.
fn recover_segments(
    dir: &Path,
    key: &str,
    clean: bool,
    sync: bool,
    whole: usize,
    progress: &Progress,
) -> io::Result<RecoveredSegments> {
    let (seg_ids, ack_ids) = list_ids(dir)?;
    let mut changed = false;
    for id in ack_ids
        .iter()
        .filter(|id| seg_ids.binary_search(id).is_err())
    {
        // The segment was deleted (fully acked) but the crash came before its ack file went.
        let _ = fs::remove_file(queue_log::ack_path(dir, *id));
        changed = true;
    }
    let mut segments = BTreeMap::new();
    let mut messages: Vec<StoredMessage> = Vec::new();
    let mut paged: Vec<PagedRecord> = Vec::new();
    for id in seg_ids {
        let seg_path = queue_log::segment_path(dir, id);
        let acks = load_acks(&queue_log::ack_path(dir, id), key, sync, progress)?;
        let data = segment::read_file(&seg_path)?;
        progress.segments.fetch_add(1, Relaxed);
        progress.bytes.fetch_add(data.len() as u64, Relaxed);
        match segment::parse_segment_header(&data) {
            Ok(first) if first == id => {}
            Err(HeaderError::Short) => {
                // Crash while the segment was being created: it holds no record.
                if !data.is_empty() {
                    warn!(queue = %key, segment = id, bytes_dropped = data.len(), "torn segment header; segment removed");
                    progress.truncated.fetch_add(1, Relaxed);
                    progress.bytes_dropped.fetch_add(data.len() as u64, Relaxed);
                }
                remove_segment(dir, id);
                changed = true;
                continue;
            }
            other => {
                let aside = seg_path.with_extension("seg.corrupt");
                error!(
                    queue = %key,
                    segment = id,
                    header = ?other,
                    moved_to = %aside.display(),
                    "unreadable segment header; segment moved aside"
                );
                fs::rename(&seg_path, &aside)?;
                changed = true;
                continue;
            }
        }

        let mut pos = SEGMENT_HEADER_LEN;
        let mut live_refs = Vec::new();
        let mut live_bytes = 0usize;
        let mut max_seq = id;
        let mut prev: Option<u64> = None;
        let bad = loop {
            match segment::next_record(&data, pos, !clean) {
                Next::Record(r) => {
                    if r.seq < id || prev.is_some_and(|p| r.seq <= p) {
                        break Some("sequence out of order");
                    }
                    prev = Some(r.seq);
                    max_seq = r.seq;
                    pos = r.end;
                    if !acks.is_acked(r.seq) {
                        live_bytes += r.end - r.offset;
                        live_refs.push(r);
                    }
                }
                Next::End => break None,
                Next::Bad(why) => break Some(why),
            }
        };
        if let Some(why) = bad {
            let dropped = (data.len() - pos) as u64;
            warn!(
                queue = %key,
                segment = id,
                offset = pos,
                bytes_dropped = dropped,
                reason = why,
                "torn or corrupt segment tail truncated"
            );
            progress.truncated.fetch_add(1, Relaxed);
            progress.bytes_dropped.fetch_add(dropped, Relaxed);
            truncate(&seg_path, pos as u64, sync)?;
        }
        if live_refs.is_empty() {
            remove_segment(dir, id);
            changed = true;
            continue;
        }
        // Keep the segment buffer alive (zero-copy) only if most of it is still needed and all
        // of its live records come back whole (a window's worth must not pin a whole segment).
        let share =
            live_bytes * 2 >= data.len() && messages.len().saturating_add(live_refs.len()) <= whole;
        let mut live = LiveSet::new(id);
        let mut dcounts = HashMap::new();
        for r in &live_refs {
            let count = acks.dcounts.get(&r.seq).copied();
            if let Some(c) = count {
                dcounts.insert(r.seq, c);
            }
            live.insert(r.seq);
            if messages.len() < whole {
                let mut m = segment::to_message(&data, r, share);
                if let Some(c) = count {
                    m.delivery_count = c;
                }
                m.redelivered |= m.delivery_count > 0;
                messages.push(m);
            } else {
                // Beyond the window: the body stays on disk, and `data` is freed with this
                // segment since nothing slices it.
                paged.push(segment::to_paged(&data, r, count));
            }
        }
        segments.insert(
            id,
            Segment::recovered(id, max_seq, pos as u64, acks.len, live, dcounts),
        );
    }
    if changed && sync {
        queue_log::sync_dir(dir)?;
    }
    if !messages.is_sorted_by_key(|m| m.seq) {
        messages.sort_by_key(|m| m.seq);
    }
    if !paged.is_sorted_by_key(|p| p.seq) {
        paged.sort_by_key(|p| p.seq);
    }
    Ok((segments, messages, paged))
}
