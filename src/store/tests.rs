//! Store tests: recovery order, acks, segment deletion, delivery counts, torn tails, clean
//! marker, group commit, completions, queue deletion, ENOSPC, reads by location.
//!
//! A crash is simulated by shutting down and removing the clean-shutdown marker: the files are
//! then exactly what a crash after the last completed batch leaves, and recovery takes the
//! unclean path (CRC verification). Torn writes are made by editing the files.

use super::*;
use std::fs::OpenOptions;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn msg(seq: u64, body: &str) -> StoredMessage {
    StoredMessage {
        seq,
        header: Bytes::from(format!("hdr-{seq}")),
        body: Bytes::from(body.to_string()),
        exchange: "amq.direct".into(),
        routing_key: format!("rk.{seq}"),
        delivery_count: 0,
        redelivered: false,
    }
}

fn msg_len(seq: u64, len: usize) -> StoredMessage {
    StoredMessage {
        body: Bytes::from(vec![(seq % 251) as u8; len]),
        ..msg(seq, "")
    }
}

fn open(dir: &Path) -> (Store, StoreHandle, Vec<RecoveredQueue>) {
    Store::open(dir, FsyncMode::Always).expect("open store")
}

fn open_small(dir: &Path, segment_bytes: u64) -> (Store, StoreHandle, Vec<RecoveredQueue>) {
    Store::open_with_options(
        dir,
        StoreOptions {
            fsync: FsyncMode::Always,
            segment_bytes,
            recovery_window: None,
        },
    )
    .expect("open store")
}

/// Appends and waits for the completion.
fn append_wait(h: &StoreHandle, q: &str, msgs: Vec<StoredMessage>) -> io::Result<()> {
    let (tx, rx) = std_mpsc::channel();
    h.append(
        &q.to_string(),
        msgs,
        Some(Box::new(move |r| tx.send(r).expect("test receiver alive"))),
    );
    rx.recv_timeout(WAIT).expect("append completion")
}

fn flush_wait(h: &StoreHandle) -> io::Result<()> {
    let (tx, rx) = std_mpsc::channel();
    h.flush(Box::new(move |r| tx.send(r).expect("test receiver alive")));
    rx.recv_timeout(WAIT).expect("flush completion")
}

/// Two flushes: the second batch starts only after the first one's deletions are done.
fn settle(h: &StoreHandle) {
    flush_wait(h).unwrap();
    flush_wait(h).unwrap();
}

/// Shuts down and removes the clean marker, as if the process had died after its last batch.
fn crash(store: Store, dir: &Path) {
    store.shutdown();
    fs::remove_file(dir.join(CLEAN_MARKER)).expect("marker written by shutdown");
}

fn find<'a>(rqs: &'a [RecoveredQueue], key: &str) -> &'a RecoveredQueue {
    rqs.iter()
        .find(|q| q.key == key)
        .unwrap_or_else(|| panic!("queue {key} not recovered"))
}

fn seqs(rq: &RecoveredQueue) -> Vec<u64> {
    rq.messages.iter().map(|m| m.seq).collect()
}

fn files(dir: &Path, key: &str, ext: &str) -> Vec<PathBuf> {
    let qdir = dir.join("queues").join(queue_log::dir_name(key));
    let mut v: Vec<PathBuf> = fs::read_dir(qdir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn append_and_recover_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (store, h, rec) = open(dir);
    assert!(rec.is_empty());
    let mut expected: HashMap<String, Vec<StoredMessage>> = HashMap::new();
    for q in 0..12u64 {
        let key = format!("vh {q}/queue.{q}/ü");
        let mut all = Vec::new();
        for chunk in 0..3u64 {
            let batch: Vec<_> = (0..5)
                .map(|i| {
                    let seq = 1 + chunk * 5 + i;
                    if seq == 7 {
                        msg_len(seq, 100_000) // external (vectored) body path
                    } else {
                        msg(seq, &format!("body {q} {seq}"))
                    }
                })
                .collect();
            all.extend(batch.clone());
            append_wait(&h, &key, batch).unwrap();
        }
        expected.insert(key, all);
    }
    store.shutdown();

    let (store, _h, rec) = open(dir);
    assert_eq!(rec.len(), 12);
    for (key, msgs) in &expected {
        assert_eq!(&find(&rec, key).messages, msgs);
    }
    let rs = store.recovery_stats();
    assert_eq!((rs.queues, rs.messages, rs.truncated), (12, 180, 0));
    crash(store, dir);

    // Same result on the unclean (CRC-verifying) path.
    let (_store, _h, rec) = open(dir);
    for (key, msgs) in &expected {
        assert_eq!(&find(&rec, key).messages, msgs);
    }
}

#[test]
fn acked_messages_are_not_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let q = "/".to_string() + "q";
    let (store, h, _) = open(dir);
    append_wait(&h, &q, (1..=10).map(|s| msg(s, "x")).collect()).unwrap();
    h.ack(&q, vec![9, 2, 4, 3]);
    h.ack(&q, vec![1, 1, 100]); // duplicate and unknown seqs are ignored
    h.ack(&"/nope".to_string(), vec![1]); // unknown queue: ignored, no directory created
    settle(&h);
    assert!(!dir
        .join("queues")
        .join(queue_log::dir_name("/nope"))
        .exists());
    crash(store, dir);

    let (store, h, rec) = open(dir);
    assert_eq!(rec.len(), 1);
    // Delivered-but-unacked messages are simply not acked: they come back too.
    assert_eq!(seqs(find(&rec, &q)), vec![5, 6, 7, 8, 10]);
    h.ack(&q, vec![5, 10]);
    store.shutdown();
    let (_store, _h, rec) = open(dir);
    assert_eq!(seqs(find(&rec, &q)), vec![6, 7, 8]);
}

#[test]
fn fully_acked_segments_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let q = "/seg".to_string();
    let (store, h, _) = open_small(dir, 4096);
    for s in 1..=100 {
        append_wait(&h, &q, vec![msg_len(s, 200)]).unwrap();
    }
    let before = files(dir, &q, "seg").len();
    assert!(before >= 6, "expected several segments, got {before}");
    h.ack(&q, (1..=50).collect());
    settle(&h);
    let mid = files(dir, &q, "seg").len();
    assert!(mid < before - 2, "{mid} segments left of {before}");
    assert!(store.stats().segments_deleted.load(Relaxed) >= 2);
    // Acking the rest leaves at most the active segment (retired once it is big enough).
    h.ack(&q, (51..=100).collect());
    settle(&h);
    assert!(files(dir, &q, "seg").len() <= 1);
    assert!(files(dir, &q, "ack").len() <= 1);
    crash(store, dir);

    let (_store, _h, rec) = open_small(dir, 4096);
    assert!(find(&rec, &q).messages.is_empty());
    assert!(
        files(dir, &q, "seg").is_empty(),
        "recovery deletes fully-acked segments"
    );
    assert!(files(dir, &q, "ack").is_empty());
}

#[test]
fn delivery_counts_survive_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let q = "/dc".to_string();
    let (store, h, _) = open(dir);
    append_wait(&h, &q, (1..=3).map(|s| msg(s, "x")).collect()).unwrap();
    h.set_delivery_count(&q, 2, 1);
    h.set_delivery_count(&q, 2, 2);
    h.set_delivery_count(&q, 3, 5);
    h.set_delivery_count(&q, 99, 1); // unknown seq: ignored
    h.ack(&q, vec![3]);
    flush_wait(&h).unwrap();
    crash(store, dir);

    let (store, h, rec) = open(dir);
    let m = &find(&rec, &q).messages;
    assert_eq!(seqs(find(&rec, &q)), vec![1, 2]);
    assert_eq!((m[0].delivery_count, m[0].redelivered), (0, false));
    assert_eq!((m[1].delivery_count, m[1].redelivered), (2, true));
    // Counts keep being updatable after recovery.
    h.set_delivery_count(&q, 1, 7);
    store.shutdown();
    let (_store, _h, rec) = open(dir);
    assert_eq!(find(&rec, &q).messages[0].delivery_count, 7);
}

#[test]
fn ack_file_with_delivery_count_churn_is_compacted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let q = "/churn".to_string();
    let (store, h, _) = open(dir);
    append_wait(&h, &q, (1..=3).map(|s| msg(s, "x")).collect()).unwrap();
    h.ack(&q, vec![2]);
    // Four times the compaction threshold in updates. Where the store thread's batches end
    // depends on scheduling, so the file may hold up to one threshold's worth of updates
    // written after the last compaction, but never the whole churn.
    let updates = (4 * queue_log::ACK_COMPACT_MIN / segment::ACK_ENTRY_LEN as u64) as u32;
    for c in 1..=updates {
        h.set_delivery_count(&q, 1, c);
    }
    settle(&h);
    let ack = &files(dir, &q, "ack")[0];
    let len = fs::metadata(ack).unwrap().len();
    assert!(
        len <= queue_log::ACK_COMPACT_MIN,
        "ack file not compacted: {len} bytes after {updates} updates"
    );
    crash(store, dir);
    let (_store, _h, rec) = open(dir);
    let m = &find(&rec, &q).messages;
    assert_eq!(seqs(find(&rec, &q)), vec![1, 3]);
    assert_eq!(m[0].delivery_count, updates);
}

#[test]
fn recovery_window_returns_the_rest_as_index_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (q, keep) = ("/win".to_string(), "keep:log".to_string());
    let (store, h, _) = open(dir);
    let mut msgs: Vec<_> = (1..=10).map(|s| msg_len(s, 100 + s as usize)).collect();
    // Only delivery-mode set: nothing a queue needs before the body, so no header is kept.
    msgs[9].header = Bytes::from_static(&[0x10, 0x00, 0x02]);
    append_wait(&h, &q, msgs).unwrap();
    append_wait(&h, &keep, (1..=10).map(|s| msg(s, "k")).collect()).unwrap();
    h.ack(&q, vec![2, 8]);
    h.set_delivery_count(&q, 9, 2);
    settle(&h);
    crash(store, dir);
    let options = StoreOptions {
        recovery_window: Some(RecoveryWindow {
            records: 3,
            whole_prefix: "keep:",
        }),
        ..StoreOptions::default()
    };
    let (_store, _h, rec) = Store::open_with_options(dir, options).expect("open store");
    let r = find(&rec, &q);
    assert_eq!(seqs(r), vec![1, 3, 4]);
    let paged: Vec<_> = r.paged.iter().map(|p| p.seq).collect();
    assert_eq!(paged, vec![5, 6, 7, 9, 10]);
    for p in &r.paged {
        assert_eq!(p.body_size as usize, 100 + p.seq as usize);
        let redelivered = p.seq == 9;
        assert_eq!(
            (p.delivery_count, p.redelivered),
            (if redelivered { 2 } else { 0 }, redelivered)
        );
        let header =
            (p.seq != 10).then(|| format!("hdr-{}", p.seq).into_bytes().into_boxed_slice());
        assert_eq!(p.header, header, "header of {}", p.seq);
    }
    let k = find(&rec, &keep);
    assert_eq!(k.messages.len(), 10);
    assert!(k.paged.is_empty());
}

/// Appends 1..=5 (100-byte bodies), crashes, and returns the segment path and record length.
fn five_then_crash(dir: &Path, q: &str) -> (PathBuf, u64) {
    let (store, h, _) = open(dir);
    append_wait(&h, q, (1..=5).map(|s| msg_len(s, 100)).collect()).unwrap();
    crash(store, dir);
    let seg = files(dir, q, "seg").remove(0);
    (seg, segment::record_len(&msg_len(5, 100)).unwrap() as u64)
}

#[test]
fn torn_tail_mid_record_is_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let q = "/torn".to_string();
    let (seg, rec_len) = five_then_crash(dir, &q);
    let full = fs::metadata(&seg).unwrap().len();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(full - 30).unwrap();
    drop(f);

    let (store, h, rec) = open(dir);
    assert_eq!(seqs(find(&rec, &q)), vec![1, 2, 3, 4]);
    let rs = store.recovery_stats();
    assert_eq!((rs.truncated, rs.bytes_dropped), (1, rec_len - 30));
    assert_eq!(fs::metadata(&seg).unwrap().len(), full - rec_len);
    // The store keeps working: seq 5 can be written again, into a new segment.
    append_wait(&h, &q, vec![msg_len(5, 100)]).unwrap();
    crash(store, dir);
    let (store, _h, rec) = open(dir);
    assert_eq!(seqs(find(&rec, &q)), vec![1, 2, 3, 4, 5]);
    assert_eq!(store.recovery_stats().truncated, 0);
}

#[test]
fn flipped_byte_in_last_record_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let q = "/flip".to_string();
    let (seg, rec_len) = five_then_crash(dir, &q);
    let mut data = fs::read(&seg).unwrap();
    let n = data.len();
    data[n - 10] ^= 0x01; // inside the last body
    fs::write(&seg, &data).unwrap();

    let (store, _h, rec) = open(dir);
    assert_eq!(seqs(find(&rec, &q)), vec![1, 2, 3, 4]);
    let rs = store.recovery_stats();
    assert_eq!((rs.truncated, rs.bytes_dropped), (1, rec_len));
}

#[test]
fn torn_ack_file_tail_is_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let q = "/tornack".to_string();
    let (store, h, _) = open(dir);
    append_wait(&h, &q, (1..=5).map(|s| msg(s, "x")).collect()).unwrap();
    h.ack(&q, vec![1]);
    flush_wait(&h).unwrap();
    h.ack(&q, vec![3]);
    flush_wait(&h).unwrap();
    crash(store, dir);
    let ack = files(dir, &q, "ack").remove(0);
    let len = fs::metadata(&ack).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&ack)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let (store, _h, rec) = open(dir);
    assert_eq!(seqs(find(&rec, &q)), vec![2, 3, 4, 5]); // the torn ack of 3 is lost
    assert_eq!(store.recovery_stats().truncated, 1);
}

#[test]
fn clean_marker_lifecycle_and_crc_skip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let q = "/clean".to_string();
    let marker = dir.join(CLEAN_MARKER);
    let (store, h, _) = open(dir);
    assert!(!marker.exists());
    append_wait(&h, &q, (1..=3).map(|s| msg_len(s, 100)).collect()).unwrap();
    store.shutdown();
    assert_eq!(fs::read(&marker).unwrap(), CLEAN_MARKER_CONTENTS);

    // Corrupt a body byte of a sealed segment (bit rot, not a torn write).
    let seg = files(dir, &q, "seg").remove(0);
    let mut data = fs::read(&seg).unwrap();
    let n = data.len();
    data[n - 10] ^= 0x01;
    fs::write(&seg, &data).unwrap();

    // Clean restart: CRCs are not recomputed, the marker is consumed at open.
    let (store, h, rec) = open(dir);
    assert!(!marker.exists(), "marker must be gone while running");
    assert_eq!(seqs(find(&rec, &q)), vec![1, 2, 3]);
    assert_eq!(store.recovery_stats().truncated, 0);
    append_wait(&h, &q, vec![msg(4, "y")]).unwrap();
    crash(store, dir);

    // Unclean restart: every record is verified, the bad one (and its segment tail) is cut.
    let (store, _h, rec) = open(dir);
    assert_eq!(seqs(find(&rec, &q)), vec![1, 2, 4]);
    assert_eq!(store.recovery_stats().truncated, 1);
}

#[test]
fn scratch_logs_are_never_fsynced() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, h, _) = open(tmp.path());
    let scratch = format!("{SCRATCH_KEY_PREFIX}page/1/x");
    assert!(is_scratch(&scratch) && !is_scratch("1/x"));
    for s in 1..=3 {
        append_wait(&h, &scratch, vec![msg(s, "paged")]).unwrap();
    }
    h.ack(&scratch, vec![1]);
    flush_wait(&h).unwrap();
    assert_eq!(store.stats().fsyncs.load(Relaxed), 0, "scratch log fsynced");
    // The same appends to a real queue log are fsynced (`storage.fsync = "always"`).
    append_wait(&h, "1/x", vec![msg(1, "durable")]).unwrap();
    assert!(store.stats().fsyncs.load(Relaxed) > 0);
    // Scratch records read back like any other.
    let mut reader = h.reader().seq_reader(&scratch);
    let (_, res) = reader.read(&[2]).pop().unwrap();
    assert_eq!(res.unwrap().body, Bytes::from("paged"));
}

#[test]
fn group_commit_batches_fsyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, h, _) = open(tmp.path());
    let q = "/gc".to_string();

    // Idle store: one append is confirmed after its own fsync (plus the directory fsync for
    // the new segment), without waiting for more work.
    append_wait(&h, &q, vec![msg(1, "first")]).unwrap();
    let fsyncs0 = store.stats().fsyncs.load(Relaxed);
    assert!((1..=2).contains(&fsyncs0), "fsyncs {fsyncs0}");
    append_wait(&h, &q, vec![msg(2, "second")]).unwrap();
    assert_eq!(store.stats().fsyncs.load(Relaxed), fsyncs0 + 1);

    // Loaded store: 1000 appends in flight share a handful of fsyncs.
    let done = Arc::new(AtomicUsize::new(0));
    let batches0 = store.stats().batches.load(Relaxed);
    for s in 3..1003 {
        let done = done.clone();
        h.append(
            &q,
            vec![msg(s, "load")],
            Some(Box::new(move |r| {
                r.expect("append ok");
                done.fetch_add(1, Relaxed);
            })),
        );
    }
    flush_wait(&h).unwrap();
    assert_eq!(
        done.load(Relaxed),
        1000,
        "all completions ran before the flush"
    );
    let fsyncs = store.stats().fsyncs.load(Relaxed) - fsyncs0 - 1;
    let batches = store.stats().batches.load(Relaxed) - batches0;
    assert!(fsyncs < 100, "1000 appends took {fsyncs} fsyncs");
    assert!(batches < 100, "1000 appends took {batches} batches");
}

#[test]
fn completion_runs_after_the_record_is_written() {
    for mode in [FsyncMode::Always, FsyncMode::Never] {
        let tmp = tempfile::tempdir().unwrap();
        let (store, h, _) = Store::open(tmp.path(), mode).unwrap();
        let q = "/after".to_string();
        let reader = h.reader();
        let (tx, rx) = std_mpsc::channel();
        let q2 = q.clone();
        h.append(
            &q,
            vec![msg(1, "a"), msg(2, "b")],
            Some(Box::new(move |r| {
                // Runs on the store thread: the records must already be in the file.
                let seg = reader.segments(&q2).unwrap()[0];
                let found: Vec<u64> = reader
                    .segment_reader(&q2, seg)
                    .unwrap()
                    .map(|r| r.unwrap().1.seq)
                    .collect();
                tx.send((r.is_ok(), found)).unwrap();
            })),
        );
        assert_eq!(
            rx.recv_timeout(WAIT).unwrap(),
            (true, vec![1, 2]),
            "{mode:?}"
        );
        if mode == FsyncMode::Never {
            assert_eq!(store.stats().fsyncs.load(Relaxed), 0);
        }
        store.shutdown();
        let (_store, _h, rec) = Store::open(tmp.path(), mode).unwrap();
        assert_eq!(seqs(find(&rec, &q)), vec![1, 2]);
    }
}

#[test]
fn delete_queue_removes_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (q1, q2) = ("/del1".to_string(), "/del2".to_string());
    let (store, h, _) = open(dir);
    append_wait(&h, &q1, (1..=3).map(|s| msg(s, "a")).collect()).unwrap();
    append_wait(&h, &q2, (1..=3).map(|s| msg(s, "b")).collect()).unwrap();
    // Pending work for the queue in the same batch as the delete is completed first.
    let (tx, rx) = std_mpsc::channel();
    h.append(
        &q1,
        vec![msg(4, "a")],
        Some(Box::new(move |r| tx.send(r).unwrap())),
    );
    h.delete_queue(&q1);
    rx.recv_timeout(WAIT).unwrap().unwrap();
    settle(&h);
    assert!(!dir.join("queues").join(queue_log::dir_name(&q1)).exists());
    assert!(fs::read_dir(dir.join("trash")).unwrap().next().is_none());
    // A re-declared queue starts from scratch (seqs may restart).
    append_wait(&h, &q1, vec![msg(1, "new")]).unwrap();
    h.delete_queue(&"/never-existed".to_string());
    crash(store, dir);
    let (_store, _h, rec) = open(dir);
    assert_eq!(rec.len(), 2);
    assert_eq!(find(&rec, &q1).messages, vec![msg(1, "new")]);
    assert_eq!(seqs(find(&rec, &q2)), vec![1, 2, 3]);
}

#[test]
fn full_disk_fails_the_completion_and_keeps_running() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let q = "/full".to_string();
    let (store, h, _) = open(dir);
    append_wait(&h, &q, vec![msg(1, "ok")]).unwrap();
    store.stats().inject_enospc.store(true, Relaxed);
    let err = append_wait(&h, &q, vec![msg(2, "lost")]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    h.ack(&q, vec![2]); // ack of the failed seq: harmless
    store.stats().inject_enospc.store(false, Relaxed);
    append_wait(&h, &q, vec![msg(3, "ok again")]).unwrap();
    flush_wait(&h).unwrap();
    assert!(store.stats().write_errors.load(Relaxed) >= 1);
    store.shutdown();
    assert!(
        !dir.join(CLEAN_MARKER).exists(),
        "a store that saw I/O errors is not marked clean"
    );
    let (store, _h, rec) = open(dir);
    assert_eq!(seqs(find(&rec, &q)), vec![1, 3]);
    assert_eq!(
        store.recovery_stats().truncated,
        0,
        "partial write was cut back"
    );
}

#[test]
fn seqs_must_increase_but_acked_seqs_may_be_reused_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let q = "/seq".to_string();
    let (store, h, _) = open(dir);
    append_wait(&h, &q, (1..=10).map(|s| msg(s, "old")).collect()).unwrap();
    let e = append_wait(&h, &q, vec![msg(10, "dup")]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    let e = append_wait(&h, &q, vec![msg(12, "a"), msg(11, "b")]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    h.ack(&q, (2..=10).collect());
    crash(store, dir);

    // Only seq 1 is live: a broker continuing at last+1 reuses the acked seqs 2..=4.
    let (store, h, rec) = open(dir);
    assert_eq!(seqs(find(&rec, &q)), vec![1]);
    assert!(append_wait(&h, &q, vec![msg(1, "dup")]).is_err());
    append_wait(&h, &q, (2..=4).map(|s| msg(s, "new")).collect()).unwrap();
    h.ack(&q, vec![3]);
    h.set_delivery_count(&q, 4, 1);
    crash(store, dir);
    let (_store, _h, rec) = open(dir);
    let m = &find(&rec, &q).messages;
    assert_eq!(seqs(find(&rec, &q)), vec![1, 2, 4]);
    assert_eq!(&m[0].body[..], b"old");
    assert_eq!(&m[1].body[..], b"new");
    assert_eq!(m[2].delivery_count, 1);
}

#[test]
fn reader_reads_records_by_location() {
    let tmp = tempfile::tempdir().unwrap();
    let q = "/read".to_string();
    let (_store, h, _) = open(tmp.path());
    let msgs = vec![msg(1, "a"), msg_len(2, 10_000), msg(3, "c")];
    append_wait(&h, &q, msgs.clone()).unwrap();
    let reader = h.reader();
    let seg = reader.segments(&q).unwrap();
    assert_eq!(seg, vec![1]);
    let located: Vec<(u64, StoredMessage)> = reader
        .segment_reader(&q, 1)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        located.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
        msgs
    );
    for (offset, m) in &located {
        assert_eq!(&reader.read(&q, 1, *offset).unwrap(), m);
    }
    assert!(reader.read(&q, 1, located[1].0 + 1).is_err());
    assert_eq!(
        reader.read(&q, 999, 16).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
}

#[test]
fn seq_reader_reads_across_segments_and_skips_acked_records() {
    let dir = tempfile::tempdir().unwrap();
    let (store, h, _) = open_small(dir.path(), 4096);
    let q = "/seqread";
    for chunk in (1..=200u64).collect::<Vec<_>>().chunks(20) {
        let msgs = chunk.iter().map(|&s| msg_len(s, 300)).collect();
        append_wait(&h, q, msgs).unwrap();
    }
    h.ack(&q.to_string(), (1..=50).chain(120..=130).collect());
    settle(&h);
    let mut r = h.reader().seq_reader(&q.to_string());
    assert!(h.reader().segments(&q.to_string()).unwrap().len() > 5);
    // In order, in batches, as a queue drains; then out of order; then a gap.
    let wanted: Vec<u64> = (51..120).chain(131..=200).collect();
    for batch in wanted.chunks(17) {
        for (seq, res) in r.read(batch) {
            assert_eq!(res.unwrap(), msg_len(seq, 300));
        }
    }
    let got = r.read(&[190, 60, 61]);
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![60, 61, 190]
    );
    assert!(got.iter().all(|(s, m)| m.as_ref().unwrap().seq == *s));
    // Seqs that are not stored: beyond the end, and in a deleted (fully acked) segment.
    let missing = r.read(&[5, 5000]);
    assert!(missing
        .iter()
        .all(|(_, m)| m.as_ref().unwrap_err().kind() == io::ErrorKind::NotFound));
    assert_eq!(r.read(&[199])[0].1.as_ref().unwrap().seq, 199);
    store.shutdown();
}

#[test]
fn commands_after_shutdown_fail_their_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, h, _) = open(tmp.path());
    store.shutdown();
    let err = append_wait(&h, "/late", vec![msg(1, "x")]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    assert!(flush_wait(&h).is_err());
    h.ack(&"/late".to_string(), vec![1]); // no completion: silently dropped, no panic
}

#[test]
fn leftovers_from_a_crash_are_cleaned_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let q = "/left".to_string();
    let (store, h, _) = open(dir);
    append_wait(&h, &q, vec![msg(1, "x")]).unwrap();
    crash(store, dir);
    let qdir = dir.join("queues").join(queue_log::dir_name(&q));
    // Unfinished queue creation, deleted-queue trash, orphan ack file, torn new segment.
    fs::create_dir_all(dir.join("queues/.tmp-%2Fhalf")).unwrap();
    fs::create_dir_all(dir.join("trash/1-%2Fgone")).unwrap();
    fs::write(qdir.join(format!("{:020}.ack", 500)), b"").unwrap();
    fs::write(qdir.join(format!("{:020}.seg", 900)), b"WMQ").unwrap();
    let (store, _h, rec) = open(dir);
    assert_eq!(rec.len(), 1);
    assert_eq!(seqs(find(&rec, &q)), vec![1]);
    assert!(!dir.join("queues/.tmp-%2Fhalf").exists());
    assert!(!dir.join("trash/1-%2Fgone").exists());
    assert_eq!(files(dir, &q, "seg").len(), 1);
    assert!(files(dir, &q, "ack").is_empty());
    assert_eq!(store.recovery_stats().truncated, 1);
}

#[test]
fn incompatible_format_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(VERSION_FILE), "warrenmq-store 99\n").unwrap();
    let err = Store::open(tmp.path(), FsyncMode::Always).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

/// Throughput check, not a pass/fail test: `cargo test --release --lib store::tests::bench --
/// --ignored --nocapture`. Several publisher threads, each with a window of unconfirmed
/// appends (like publishers waiting for confirms), 1 KiB bodies.
#[test]
#[ignore]
fn bench_group_commit() {
    let total: usize = std::env::var("STORE_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    for (mode, threads, per_append, window) in [
        (FsyncMode::Always, 4, 1, 1000),
        (FsyncMode::Always, 4, 10, 100),
        (FsyncMode::Always, 1, 1, 1),
        (FsyncMode::Never, 4, 1, 1000),
    ] {
        let total = if window == 1 { total / 50 } else { total };
        let tmp = tempfile::tempdir().unwrap();
        let (store, h, _) = Store::open(tmp.path(), mode).unwrap();
        let body = Bytes::from(vec![b'x'; 1024]);
        let started = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let h = h.clone();
                let body = body.clone();
                s.spawn(move || {
                    let q = format!("/bench-{t}");
                    let (tx, rx) = std_mpsc::channel::<()>();
                    let mut in_flight = 0;
                    let per_thread = total / threads;
                    let mut seq = 0u64;
                    while (seq as usize) < per_thread {
                        let msgs: Vec<_> = (0..per_append)
                            .map(|_| {
                                seq += 1;
                                StoredMessage {
                                    body: body.clone(),
                                    ..msg(seq, "")
                                }
                            })
                            .collect();
                        let tx = tx.clone();
                        h.append(
                            &q,
                            msgs,
                            Some(Box::new(move |r| {
                                r.unwrap();
                                let _ = tx.send(());
                            })),
                        );
                        in_flight += 1;
                        while in_flight >= window {
                            rx.recv().unwrap();
                            in_flight -= 1;
                        }
                    }
                    for _ in 0..in_flight {
                        rx.recv().unwrap();
                    }
                });
            }
        });
        let secs = started.elapsed().as_secs_f64();
        let st = store.stats();
        let (batches, fsyncs) = (st.batches.load(Relaxed), st.fsyncs.load(Relaxed));
        let n = st.messages_appended.load(Relaxed);
        println!(
            "{mode:?} threads={threads} msgs/append={per_append} window={window}: {n} msgs in {secs:.2}s = {:.0} msgs/s, {batches} batches, {fsyncs} fsyncs, {:.1} msgs/batch, {:.2} fsyncs/batch, {:.1} MiB/s",
            n as f64 / secs,
            n as f64 / batches as f64,
            fsyncs as f64 / batches as f64,
            st.bytes_written.load(Relaxed) as f64 / secs / (1 << 20) as f64,
        );
        store.shutdown();
    }
}
