//! One durable queue's log: a directory of segment files, their ack side files and a `meta` file.
//!
//! Owns: the per-queue in-memory index (which seqs of which segment are still live), the write
//! buffers of the current batch, segment rotation, and deletion of fully-acked segments.
//! Called only from the store thread (see [`super`]); it never blocks on anything but the
//! filesystem and never panics on I/O errors.
//!
//! Invariants:
//! - Every appended seq is greater than every seq still live in the queue (checked on append).
//!   So the segment that can hold a live seq `s` is the one with the greatest `first_seq <= s`,
//!   even after a restart reuses seqs of *acked* records: the newer segment holding the reused
//!   seqs has a greater `first_seq` than any seq still live in the older one, and each segment's
//!   ack file only ever describes that segment's own records.
//! - A segment's `live` set holds the seqs written to it and not yet acked; a sealed segment whose
//!   set is empty is deleted after the batch that emptied it.
//! - Buffered bytes are written only in the batch write phase ([`QueueLog::write_batch`]), so all
//!   files touched by a batch are written before any is fsynced and before any completion runs.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use tracing::{error, warn};

use super::segment::{self, AckEntry, WriteBuf};
use super::{QueueKey, StoreStats, StoredMessage};

/// A segment is sealed and a new one started once it would grow past this size.
pub(crate) const SEGMENT_MAX_BYTES: u64 = 8 << 20;
/// A fully-acked *active* segment at least this large is retired (deleted) right away, so an
/// idle, empty queue keeps at most this much on disk without churning files for small batches.
pub(crate) const ACTIVE_RETIRE_BYTES: u64 = 1 << 20;
/// Largest seq distance inside one segment; keeps the live bitmap small if seqs jump.
const MAX_SEQ_SPAN: u64 = 1 << 22;
/// An ack file larger than this (and than [`ACK_COMPACT_RATIO`] times its compacted size) is
/// rewritten. Only delivery-count updates can make it grow beyond ~20 bytes per record.
pub(crate) const ACK_COMPACT_MIN: u64 = 1 << 20;
/// See [`ACK_COMPACT_MIN`].
const ACK_COMPACT_RATIO: u64 = 4;
/// Name of the per-queue file holding the original queue key.
pub(crate) const META_FILE: &str = "meta";
/// First line of the meta file.
pub(crate) const META_MAGIC: &str = "warrenmq-queue 1\n";
/// Longest directory name produced by [`dir_name`] (file systems allow 255 bytes).
const MAX_DIR_NAME: usize = 200;

/// Filesystem-safe, injective-in-practice directory name for a queue key.
///
/// ASCII letters, digits, `-`, `_` and non-leading `.` are kept; every other byte becomes `%XX`.
/// Names longer than 200 bytes keep a 160-byte prefix plus `~` and a 64-bit FNV-1a hash of the
/// whole key. The original key is stored in the `meta` file, so this never needs decoding.
pub(crate) fn dir_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for (i, b) in key.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    if out.len() > MAX_DIR_NAME {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            hash = (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        out.truncate(160); // all ASCII, so any index is a char boundary
        let _ = write!(out, "~{hash:016x}");
    }
    out
}

/// Path of the segment file starting at `first_seq` in `dir`.
pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

/// Path of the ack file of the segment starting at `first_seq` in `dir`.
pub(crate) fn ack_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.ack"))
}

/// fsyncs a directory so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A copyable description of an I/O error, so one failure can be reported to many completions.
#[derive(Debug, Clone)]
pub(crate) struct ErrorInfo {
    kind: io::ErrorKind,
    text: String,
}

impl ErrorInfo {
    /// Captures `e` with some context.
    pub(crate) fn new(e: &io::Error, context: &str) -> Self {
        ErrorInfo {
            kind: e.kind(),
            text: format!("{context}: {e}"),
        }
    }

    /// A fresh `io::Error` with the same kind and text.
    pub(crate) fn to_error(&self) -> io::Error {
        io::Error::new(self.kind, self.text.clone())
    }
}

/// Bitmap of live seqs of one segment, relative to its first seq.
#[derive(Debug, Default)]
pub(crate) struct LiveSet {
    base: u64,
    words: Vec<u64>,
    count: u64,
}

impl LiveSet {
    /// An empty set for seqs `>= base`.
    pub(crate) fn new(base: u64) -> Self {
        LiveSet {
            base,
            words: Vec::new(),
            count: 0,
        }
    }

    /// Adds `seq`; returns true if it was not present.
    pub(crate) fn insert(&mut self, seq: u64) -> bool {
        debug_assert!(seq >= self.base);
        let i = (seq - self.base) as usize;
        if i / 64 >= self.words.len() {
            self.words.resize(i / 64 + 1, 0);
        }
        let bit = 1u64 << (i % 64);
        let w = &mut self.words[i / 64];
        let new = *w & bit == 0;
        *w |= bit;
        self.count += new as u64;
        new
    }

    /// Removes `seq`; returns true if it was present.
    pub(crate) fn remove(&mut self, seq: u64) -> bool {
        if seq < self.base {
            return false;
        }
        let i = seq - self.base;
        let Some(w) = self.words.get_mut((i / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (i % 64);
        let was = *w & bit != 0;
        *w &= !bit;
        self.count -= was as u64;
        was
    }

    /// True if `seq` is live.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        seq >= self.base
            && self
                .words
                .get(((seq - self.base) / 64) as usize)
                .is_some_and(|w| w & (1u64 << ((seq - self.base) % 64)) != 0)
    }

    /// Number of live seqs.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Highest live seq, if any.
    pub(crate) fn max(&self) -> Option<u64> {
        let (i, w) = self
            .words
            .iter()
            .enumerate()
            .rev()
            .find(|(_, w)| **w != 0)?;
        Some(self.base + i as u64 * 64 + 63 - w.leading_zeros() as u64)
    }

    /// Runs `(start, len)` of seqs in `[base, upto]` that are *not* live.
    fn gaps(&self, upto: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        let mut run: Option<(u64, u32)> = None;
        for seq in self.base..=upto {
            if self.contains(seq) {
                if let Some(r) = run.take() {
                    out.push(r);
                }
            } else {
                match &mut run {
                    Some((_, n)) if *n < u32::MAX => *n += 1,
                    _ => {
                        if let Some(r) = run.take() {
                            out.push(r);
                        }
                        run = Some((seq, 1));
                    }
                }
            }
        }
        out.extend(run);
        out
    }
}

/// One segment file plus its ack file, with in-memory state.
pub(crate) struct Segment {
    /// Seq of the first record; also the file name.
    pub(crate) first_seq: u64,
    /// Highest seq written to this segment (meaningful once `has_records`).
    pub(crate) max_seq: u64,
    /// At least one record has been buffered or written.
    has_records: bool,
    /// Bytes successfully written to the segment file (header included).
    len: u64,
    /// Open append handle, if any (reopened on demand).
    file: Option<File>,
    /// Bytes buffered for the segment file in the current batch.
    wbuf: WriteBuf,
    /// Seqs buffered in the current batch (to undo on a failed write).
    batch_seqs: Vec<u64>,
    /// Bytes successfully written to the ack file.
    ack_len: u64,
    /// Open append handle of the ack file, if any.
    ack_file: Option<File>,
    /// Ack entries buffered (kept across batches while the ack file cannot be written).
    ack_buf: Vec<u8>,
    /// Live (written, not acked) seqs.
    pub(crate) live: LiveSet,
    /// Delivery counts recorded for live seqs (only redelivered messages have one).
    dcounts: HashMap<u64, u32>,
    /// Segment data written but not fsynced.
    data_dirty: bool,
    /// Ack data written but not fsynced.
    ack_dirty: bool,
    /// Touched in the current batch (listed in `QueueLog::touched`).
    in_batch: bool,
    /// First error of the current batch for this segment's data.
    batch_err: Option<ErrorInfo>,
    /// A failed write could not be undone or an fsync failed: never append to this file again.
    poisoned: bool,
}

impl Segment {
    /// A segment found on disk by recovery (sealed, no open handles).
    pub(crate) fn recovered(
        first_seq: u64,
        max_seq: u64,
        len: u64,
        ack_len: u64,
        live: LiveSet,
        dcounts: HashMap<u64, u32>,
    ) -> Self {
        Segment {
            first_seq,
            max_seq,
            has_records: true,
            len,
            file: None,
            wbuf: WriteBuf::default(),
            batch_seqs: Vec::new(),
            ack_len,
            ack_file: None,
            ack_buf: Vec::new(),
            live,
            dcounts,
            data_dirty: false,
            ack_dirty: false,
            in_batch: false,
            batch_err: None,
            poisoned: false,
        }
    }

    /// Bytes on disk plus bytes buffered.
    fn logical_len(&self) -> u64 {
        self.len + self.wbuf.len() as u64
    }
}

/// A durable queue's log (see the module docs).
pub(crate) struct QueueLog {
    /// The broker's queue key.
    pub(crate) key: QueueKey,
    /// The queue's directory.
    pub(crate) dir: PathBuf,
    /// Segments by first seq.
    pub(crate) segments: BTreeMap<u64, Segment>,
    /// First seq of the segment appends go to (always created in this process run).
    active: Option<u64>,
    /// Highest seq appended (or recovered live); new appends must be greater.
    pub(crate) last_seq: Option<u64>,
    /// Size at which the active segment is sealed.
    pub(crate) segment_bytes: u64,
    /// Segments touched in the current batch.
    touched: Vec<u64>,
    /// Segments that may have become deletable in the current batch.
    delete_candidates: Vec<u64>,
    /// Segments with data or ack bytes written but not fsynced.
    unsynced: Vec<u64>,
    /// A file was created in the current batch: fsync the directory before completing.
    dir_sync_needed: bool,
    /// Entries were removed or renamed: fsync the directory at the next flush/shutdown.
    dir_dirty_lazy: bool,
    /// Listed in the engine's touched list for the current batch.
    pub(crate) in_batch: bool,
    /// Listed in the engine's list of queues with unsynced state.
    pub(crate) in_unsynced: bool,
    /// A scratch log ([`super::is_scratch`]): never fsynced.
    scratch: bool,
}

impl QueueLog {
    /// Creates a new, empty queue directory atomically (`.tmp-<name>` + meta, then rename).
    pub(crate) fn create(queues_dir: &Path, key: &QueueKey, sync: bool) -> io::Result<Self> {
        let name = dir_name(key);
        let dir = queues_dir.join(&name);
        let tmp = queues_dir.join(format!(".tmp-{name}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir(&tmp)?;
        let mut meta = Vec::with_capacity(META_MAGIC.len() + key.len());
        meta.extend_from_slice(META_MAGIC.as_bytes());
        meta.extend_from_slice(key.as_bytes());
        let res = (|| {
            let mut f = File::create(tmp.join(META_FILE))?;
            io::Write::write_all(&mut f, &meta)?;
            if sync {
                f.sync_all()?;
                sync_dir(&tmp)?;
            }
            fs::rename(&tmp, &dir)?;
            if sync {
                sync_dir(queues_dir)?;
            }
            Ok(())
        })();
        if let Err(e) = res {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(Self::from_parts(key.clone(), dir, BTreeMap::new()))
    }

    /// A queue log assembled by recovery.
    pub(crate) fn from_parts(
        key: QueueKey,
        dir: PathBuf,
        segments: BTreeMap<u64, Segment>,
    ) -> Self {
        // New seqs only have to exceed the live ones: a broker that continues numbering after
        // the last recovered message may reuse seqs of acked records, which is safe because
        // they then land in a newer segment (see the module invariants).
        let last_seq = segments.values().filter_map(|s| s.live.max()).max();
        let scratch = super::is_scratch(&key);
        QueueLog {
            key,
            dir,
            segments,
            active: None,
            last_seq,
            segment_bytes: SEGMENT_MAX_BYTES,
            touched: Vec::new(),
            delete_candidates: Vec::new(),
            unsynced: Vec::new(),
            dir_sync_needed: false,
            dir_dirty_lazy: false,
            in_batch: false,
            in_unsynced: false,
            scratch,
        }
    }

    fn touch(&mut self, id: u64) {
        let seg = self.segments.get_mut(&id).expect("touched segment exists");
        if !seg.in_batch {
            seg.in_batch = true;
            self.touched.push(id);
        }
    }

    /// Buffers `msgs` for this batch. Returns the range of segment ids that will hold them.
    ///
    /// All messages are validated first (sizes, strictly increasing seqs), so an invalid batch
    /// writes nothing. An error while rotating stops the append part-way; the completion then
    /// reports it (records buffered before it are still written: at-least-once).
    pub(crate) fn append(
        &mut self,
        msgs: &[StoredMessage],
        stats: &StoreStats,
    ) -> Result<(u64, u64), io::Error> {
        let mut prev = self.last_seq;
        for m in msgs {
            segment::record_len(m)?;
            if prev.is_some_and(|p| m.seq <= p) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "queue {:?}: seq {} not greater than {} (seqs must keep increasing, also across restarts)",
                        self.key,
                        m.seq,
                        prev.unwrap_or_default()
                    ),
                ));
            }
            prev = Some(m.seq);
        }
        let mut lo = None;
        let mut hi = 0;
        for m in msgs {
            let rec_len = segment::record_len(m)? as u64;
            let needs_new = match self.active.and_then(|id| self.segments.get(&id)) {
                None => true,
                Some(seg) => {
                    seg.poisoned
                        || (seg.has_records && seg.logical_len() + rec_len > self.segment_bytes)
                        || m.seq - seg.first_seq > MAX_SEQ_SPAN
                }
            };
            if needs_new {
                self.rotate(m.seq, stats)?;
            }
            let id = self.active.expect("rotate sets the active segment");
            let seg = self.segments.get_mut(&id).expect("active segment exists");
            segment::encode_record(m, &mut seg.wbuf);
            seg.live.insert(m.seq);
            seg.batch_seqs.push(m.seq);
            seg.max_seq = m.seq;
            seg.has_records = true;
            self.last_seq = Some(m.seq);
            self.touch(id);
            lo.get_or_insert(id);
            hi = id;
        }
        Ok((lo.unwrap_or(hi), hi))
    }

    /// Seals the active segment and creates a new one starting at `first_seq`.
    fn rotate(&mut self, first_seq: u64, stats: &StoreStats) -> io::Result<()> {
        if let Some(old) = self.active.take() {
            if let Some(seg) = self.segments.get_mut(&old) {
                if seg.live.count() == 0 {
                    self.delete_candidates.push(old);
                }
                if !seg.in_batch && seg.file.take().is_some() {
                    stats.open_files.fetch_sub(1, Relaxed);
                }
            }
        }
        let path = segment_path(&self.dir, first_seq);
        // A stale ack file of that name (its deletion failed earlier) must not describe the new
        // segment's records.
        match fs::remove_file(ack_path(&self.dir, first_seq)) {
            Ok(()) => warn!(queue = %self.key, segment = first_seq, "removed stale ack file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        stats.open_files.fetch_add(1, Relaxed);
        stats.segments_created.fetch_add(1, Relaxed);
        let mut seg = Segment::recovered(
            first_seq,
            first_seq,
            0,
            0,
            LiveSet::new(first_seq),
            HashMap::new(),
        );
        seg.file = Some(file);
        seg.has_records = false;
        seg.wbuf.put(&segment::segment_header(first_seq));
        self.segments.insert(first_seq, seg);
        self.active = Some(first_seq);
        self.dir_sync_needed = true;
        Ok(())
    }

    /// Records the removal of `seqs` (sorted in place). Unknown or already-acked seqs are ignored.
    pub(crate) fn ack(&mut self, seqs: &mut [u64]) {
        seqs.sort_unstable();
        let mut i = 0;
        while i < seqs.len() {
            let seq = seqs[i];
            let Some((&id, _)) = self.segments.range(..=seq).next_back() else {
                i += 1;
                continue;
            };
            let end = self
                .segments
                .range((Bound::Excluded(seq), Bound::Unbounded))
                .next()
                .map_or(u64::MAX, |(&next, _)| next);
            let seg = self.segments.get_mut(&id).expect("found above");
            let mut run: Option<(u64, u32)> = None;
            let mut any = false;
            while i < seqs.len() && seqs[i] < end {
                let s = seqs[i];
                i += 1;
                if !seg.live.remove(s) {
                    continue;
                }
                seg.dcounts.remove(&s);
                any = true;
                match &mut run {
                    Some((start, n)) if *start + *n as u64 == s && *n < u32::MAX => *n += 1,
                    _ => {
                        if let Some((seq, count)) = run.take() {
                            segment::encode_ack_entry(
                                AckEntry::Range { seq, count },
                                &mut seg.ack_buf,
                            );
                        }
                        run = Some((s, 1));
                    }
                }
            }
            if let Some((seq, count)) = run {
                segment::encode_ack_entry(AckEntry::Range { seq, count }, &mut seg.ack_buf);
            }
            if any {
                if seg.live.count() == 0 {
                    self.delete_candidates.push(id);
                }
                self.touch(id);
            }
        }
    }

    /// Records a new delivery count for a live `seq` (ignored if the seq is not live).
    pub(crate) fn set_delivery_count(&mut self, seq: u64, count: u32) {
        let Some((&id, seg)) = self.segments.range_mut(..=seq).next_back() else {
            return;
        };
        if !seg.live.contains(seq) {
            return;
        }
        seg.dcounts.insert(seq, count);
        segment::encode_ack_entry(AckEntry::DeliveryCount { seq, count }, &mut seg.ack_buf);
        self.touch(id);
    }

    /// Batch write phase: writes every touched segment's buffered data and ack entries.
    pub(crate) fn write_batch(&mut self, stats: &StoreStats) {
        for i in 0..self.touched.len() {
            let id = self.touched[i];
            let dir = &self.dir;
            let seg = self.segments.get_mut(&id).expect("touched segment exists");
            if !seg.wbuf.is_empty() {
                let n = seg.wbuf.len() as u64;
                let res = open_append(&mut seg.file, &segment_path(dir, id), stats).and_then(|f| {
                    #[cfg(test)]
                    if stats.inject_enospc.load(Relaxed) {
                        // Simulated full disk after a partial write.
                        io::Write::write_all(f, b"partial junk")?;
                        return Err(io::Error::from_raw_os_error(28));
                    }
                    seg.wbuf.write_to(f)
                });
                seg.wbuf.clear();
                match res {
                    Ok(()) => {
                        seg.len += n;
                        stats.bytes_written.fetch_add(n, Relaxed);
                        seg.data_dirty = true;
                        self.unsynced.push(id);
                    }
                    Err(e) => {
                        stats.write_errors.fetch_add(1, Relaxed);
                        error!(queue = %self.key, segment = id, error = %e, "segment write failed");
                        seg.batch_err = Some(ErrorInfo::new(&e, "segment write failed"));
                        // Undo: cut the file back to the last good record, forget the seqs, and
                        // seal the segment (the next append starts a fresh file), so a partial
                        // write can never end up in front of later records.
                        if let Some(f) = &seg.file {
                            if let Err(e2) = f.set_len(seg.len) {
                                error!(queue = %self.key, segment = id, error = %e2, "cannot truncate after failed write");
                            }
                        }
                        seg.poisoned = true;
                        for s in seg.batch_seqs.drain(..) {
                            seg.live.remove(s);
                        }
                        if seg.live.count() == 0 {
                            self.delete_candidates.push(id);
                        }
                    }
                }
            }
            seg.batch_seqs.clear();
            if !seg.ack_buf.is_empty() {
                let n = seg.ack_buf.len() as u64;
                let path = ack_path(dir, id);
                let created = seg.ack_file.is_none() && seg.ack_len == 0 && !path.exists();
                let res = open_append(&mut seg.ack_file, &path, stats)
                    .and_then(|f| io::Write::write_all(f, &seg.ack_buf));
                match res {
                    Ok(()) => {
                        seg.ack_buf.clear();
                        seg.ack_len += n;
                        stats.bytes_written.fetch_add(n, Relaxed);
                        self.dir_dirty_lazy |= created;
                        seg.ack_dirty = true;
                        self.unsynced.push(id);
                    }
                    Err(e) => {
                        // Keep the entries and retry next batch; acks are at-least-once anyway.
                        stats.write_errors.fetch_add(1, Relaxed);
                        error!(queue = %self.key, segment = id, error = %e, "ack write failed; will retry");
                        if let Some(f) = &seg.ack_file {
                            let _ = f.set_len(seg.ack_len);
                        }
                        if seg.ack_buf.len() > 16 << 20 {
                            error!(queue = %self.key, segment = id, "dropping pending acks (redelivered after restart)");
                            seg.ack_buf.clear();
                        }
                    }
                }
            }
        }
        self.unsynced.sort_unstable();
        self.unsynced.dedup();
    }

    /// Batch sync phase (`FsyncMode::Always`): fdatasync every touched segment file that was
    /// written, and the directory if files were created.
    pub(crate) fn sync_batch(&mut self, stats: &StoreStats) {
        if self.scratch {
            return;
        }
        for &id in &self.touched {
            let seg = self.segments.get_mut(&id).expect("touched segment exists");
            if !seg.data_dirty || seg.batch_err.is_some() {
                continue;
            }
            let Some(file) = &seg.file else { continue };
            stats.fsyncs.fetch_add(1, Relaxed);
            match file.sync_data() {
                Ok(()) => seg.data_dirty = false,
                Err(e) => {
                    stats.write_errors.fetch_add(1, Relaxed);
                    error!(queue = %self.key, segment = id, error = %e, "fdatasync failed; sealing segment");
                    seg.batch_err = Some(ErrorInfo::new(&e, "fdatasync failed"));
                    seg.poisoned = true;
                }
            }
        }
        if self.dir_sync_needed {
            stats.fsyncs.fetch_add(1, Relaxed);
            if let Err(e) = sync_dir(&self.dir) {
                error!(queue = %self.key, error = %e, "directory fsync failed");
                let info = ErrorInfo::new(&e, "directory fsync failed");
                for &id in &self.touched {
                    let seg = self.segments.get_mut(&id).expect("touched segment exists");
                    seg.batch_err.get_or_insert_with(|| info.clone());
                }
            } else {
                self.dir_sync_needed = false;
            }
        }
    }

    /// fsyncs everything written but not yet synced (data, acks, directory). Used by flush and
    /// shutdown. Returns the first error.
    pub(crate) fn sync_unsynced(&mut self, stats: &StoreStats) -> io::Result<()> {
        if self.scratch {
            self.unsynced.clear();
            self.dir_sync_needed = false;
            self.dir_dirty_lazy = false;
            return Ok(());
        }
        let mut first_err = None;
        for id in std::mem::take(&mut self.unsynced) {
            let Some(seg) = self.segments.get_mut(&id) else {
                continue;
            };
            if seg.data_dirty {
                stats.fsyncs.fetch_add(1, Relaxed);
                match sync_path(&seg.file, &segment_path(&self.dir, id)) {
                    Ok(()) => seg.data_dirty = false,
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if seg.ack_dirty {
                stats.fsyncs.fetch_add(1, Relaxed);
                match sync_path(&seg.ack_file, &ack_path(&self.dir, id)) {
                    Ok(()) => seg.ack_dirty = false,
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if seg.data_dirty || seg.ack_dirty {
                self.unsynced.push(id);
            }
        }
        if self.dir_sync_needed || self.dir_dirty_lazy {
            stats.fsyncs.fetch_add(1, Relaxed);
            match sync_dir(&self.dir) {
                Ok(()) => {
                    self.dir_sync_needed = false;
                    self.dir_dirty_lazy = false;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => {
                stats.write_errors.fetch_add(1, Relaxed);
                error!(queue = %self.key, error = %e, "fsync failed during flush");
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// True if anything is written but not fsynced.
    pub(crate) fn has_unsynced(&self) -> bool {
        !self.scratch && (!self.unsynced.is_empty() || self.dir_sync_needed || self.dir_dirty_lazy)
    }

    /// Result of the current batch for an append that went to segments `lo..=hi`.
    pub(crate) fn batch_result(&self, lo: u64, hi: u64) -> io::Result<()> {
        for seg in self.segments.range(lo..=hi).map(|(_, s)| s) {
            if let Some(e) = &seg.batch_err {
                return Err(e.to_error());
            }
        }
        Ok(())
    }

    /// True if the current batch had any error in this queue.
    pub(crate) fn batch_failed(&self) -> bool {
        self.touched
            .iter()
            .any(|id| self.segments.get(id).is_some_and(|s| s.batch_err.is_some()))
    }

    /// Ends the batch: clears per-batch state, deletes fully-acked sealed segments, retires a
    /// large fully-acked active segment, and compacts oversized ack files.
    pub(crate) fn end_batch(&mut self, stats: &StoreStats) {
        for id in std::mem::take(&mut self.touched) {
            if let Some(seg) = self.segments.get_mut(&id) {
                seg.in_batch = false;
                seg.batch_err = None;
                if seg.poisoned && self.active == Some(id) {
                    self.active = None;
                }
                // Sealed segments are never appended to again: release the handle.
                if self.active != Some(id) && seg.file.take().is_some() {
                    stats.open_files.fetch_sub(1, Relaxed);
                }
                if seg.ack_len > ACK_COMPACT_MIN {
                    self.maybe_compact(id, stats);
                }
            }
        }
        self.in_batch = false;
        if let Some(id) = self.active {
            let seg = &self.segments[&id];
            let retire_at = ACTIVE_RETIRE_BYTES.min(self.segment_bytes / 2);
            if seg.live.count() == 0 && seg.len >= retire_at {
                self.active = None;
                self.delete_candidates.push(id);
            }
        }
        for id in std::mem::take(&mut self.delete_candidates) {
            let deletable = self.active != Some(id)
                && self
                    .segments
                    .get(&id)
                    .is_some_and(|s| s.live.count() == 0 && s.wbuf.is_empty());
            if deletable {
                self.delete_segment(id, stats);
            }
        }
    }

    /// Removes a segment's files (segment first, so a crash never leaves a segment without its
    /// acks) and forgets it.
    fn delete_segment(&mut self, id: u64, stats: &StoreStats) {
        let Some(mut seg) = self.segments.remove(&id) else {
            return;
        };
        for f in [seg.file.take(), seg.ack_file.take()].into_iter().flatten() {
            drop(f);
            stats.open_files.fetch_sub(1, Relaxed);
        }
        let mut failed = false;
        for path in [segment_path(&self.dir, id), ack_path(&self.dir, id)] {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!(queue = %self.key, path = %path.display(), error = %e, "cannot delete acked segment file");
                    failed = true;
                }
            }
        }
        self.unsynced.retain(|&u| u != id);
        self.dir_dirty_lazy = true;
        if !failed {
            stats.segments_deleted.fetch_add(1, Relaxed);
        }
    }

    /// Rewrites an ack file that grew large (delivery-count churn) to its compact form.
    fn maybe_compact(&mut self, id: u64, stats: &StoreStats) {
        let dir = self.dir.clone();
        let seg = self.segments.get_mut(&id).expect("caller checked");
        if !seg.ack_buf.is_empty() {
            return; // retrying a failed write; compact later
        }
        let mut entries = Vec::new();
        for (seq, count) in seg.live.gaps(seg.max_seq) {
            segment::encode_ack_entry(AckEntry::Range { seq, count }, &mut entries);
        }
        let mut dcounts: Vec<_> = seg.dcounts.iter().map(|(&s, &c)| (s, c)).collect();
        dcounts.sort_unstable();
        for (seq, count) in dcounts {
            segment::encode_ack_entry(AckEntry::DeliveryCount { seq, count }, &mut entries);
        }
        if seg.ack_len < ACK_COMPACT_RATIO * entries.len() as u64 {
            return;
        }
        let path = ack_path(&dir, id);
        let tmp = dir.join(format!("{id:020}.ack.tmp"));
        let res = (|| {
            let mut f = File::create(&tmp)?;
            io::Write::write_all(&mut f, &entries)?;
            f.sync_data()?;
            fs::rename(&tmp, &path)
        })();
        match res {
            Ok(()) => {
                if seg.ack_file.take().is_some() {
                    stats.open_files.fetch_sub(1, Relaxed);
                }
                seg.ack_len = entries.len() as u64;
                seg.ack_dirty = false;
                self.dir_dirty_lazy = true;
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                warn!(queue = %self.key, segment = id, error = %e, "ack file compaction failed");
            }
        }
    }

    /// Closes the file handles of segments not touched in the current batch.
    pub(crate) fn close_idle_files(&mut self, stats: &StoreStats) {
        for seg in self.segments.values_mut() {
            if seg.in_batch {
                continue;
            }
            for f in [seg.file.take(), seg.ack_file.take()].into_iter().flatten() {
                drop(f);
                stats.open_files.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Closes every handle (queue deleted or store shut down).
    pub(crate) fn close_all(&mut self, stats: &StoreStats) {
        self.touched.clear();
        for seg in self.segments.values_mut() {
            seg.in_batch = false;
        }
        self.close_idle_files(stats);
    }
}

/// Returns the open append handle in `slot`, opening `path` if needed.
fn open_append<'a>(
    slot: &'a mut Option<File>,
    path: &Path,
    stats: &StoreStats,
) -> io::Result<&'a mut File> {
    if slot.is_none() {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        stats.open_files.fetch_add(1, Relaxed);
        *slot = Some(f);
    }
    Ok(slot.as_mut().expect("set above"))
}

/// fdatasync through an open handle, or by reopening `path` (fsync is per inode on Linux).
fn sync_path(handle: &Option<File>, path: &Path) -> io::Result<()> {
    match handle {
        Some(f) => f.sync_data(),
        None => match File::open(path) {
            Ok(f) => f.sync_data(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_are_safe_and_distinct() {
        assert_eq!(dir_name("/q1"), "%2Fq1");
        assert_eq!(dir_name("vh/.hidden"), "vh%2F.hidden");
        assert_eq!(dir_name(".x"), "%2Ex");
        assert_eq!(dir_name(""), "%");
        assert_eq!(dir_name("a b%"), "a%20b%25");
        let long_a = format!("/{}", "a".repeat(300));
        let long_b = format!("/{}b", "a".repeat(299));
        let (a, b) = (dir_name(&long_a), dir_name(&long_b));
        assert!(a.len() <= MAX_DIR_NAME && b.len() <= MAX_DIR_NAME);
        assert_ne!(a, b);
        assert!(dir_name("ü/é").is_ascii());
    }

    #[test]
    fn live_set_insert_remove_gaps() {
        let mut s = LiveSet::new(100);
        for seq in [100, 101, 102, 105, 170] {
            assert!(s.insert(seq));
        }
        assert!(!s.insert(101));
        assert_eq!(s.count(), 5);
        assert!(s.remove(101));
        assert!(!s.remove(101));
        assert!(!s.remove(99));
        assert!(!s.remove(10_000));
        assert!(s.contains(170) && !s.contains(171));
        assert_eq!(s.max(), Some(170));
        assert_eq!(LiveSet::new(5).max(), None);
        assert_eq!(s.gaps(171), vec![(101, 1), (103, 2), (106, 64), (171, 1)]);
        assert_eq!(s.count(), 4);
    }
}
