//! Reading messages back by seq, for queues that keep only an index in memory.
//!
//! Owns: a per-queue read cursor over the segment files, so reading the next window of a
//! backlog in seq order is one sequential pass over the files, not a search per message.
//! Runs on whatever thread calls it (queues use `spawn_blocking`), never on the store thread,
//! and only reads files.
//!
//! Invariants:
//! - A live seq `s` is in the segment with the greatest first seq `<= s` (see `queue_log`), and
//!   seqs increase inside a segment, so a forward scan from the segment start finds it.
//! - Callers ask only for seqs whose append has completed: a record is never read while it is
//!   being written.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use bytes::Bytes;

use super::segment::{self, Next, RECORD_PREFIX_LEN, SEGMENT_HEADER_LEN};
use super::{QueueKey, StoreReader, StoredMessage};

/// Read buffer of the cursor (sequential reads of a segment).
const READ_BUF: usize = 256 << 10;

/// Where the last read stopped.
struct Cursor {
    segment: u64,
    file: BufReader<File>,
    /// Seq of the record at the current position, or the next one expected.
    next_seq: u64,
}

/// Reads stored messages of one queue by seq (see the module docs).
pub struct SeqReader {
    reader: StoreReader,
    key: QueueKey,
    segments: Vec<u64>,
    cursor: Option<Cursor>,
}

impl std::fmt::Debug for SeqReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqReader")
            .field("key", &self.key)
            .field("segment", &self.cursor.as_ref().map(|c| c.segment))
            .finish_non_exhaustive()
    }
}

impl SeqReader {
    /// A reader of `key`'s log.
    pub fn new(reader: StoreReader, key: QueueKey) -> Self {
        SeqReader {
            reader,
            key,
            segments: Vec::new(),
            cursor: None,
        }
    }

    /// Reads the records with these seqs (any order; sorted internally). Each seq gets its
    /// message or the error that kept it from being read (`NotFound` if it is not on disk).
    pub fn read(&mut self, seqs: &[u64]) -> Vec<(u64, io::Result<StoredMessage>)> {
        let mut sorted = seqs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut out = Vec::with_capacity(sorted.len());
        let listed = self.refresh_segments();
        for seq in sorted {
            let res = match &listed {
                Ok(()) => self.read_one(seq),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            if res.is_err() {
                self.cursor = None; // start over cleanly next time
            }
            out.push((seq, res));
        }
        out
    }

    fn refresh_segments(&mut self) -> io::Result<()> {
        self.segments = self.reader.segments(&self.key)?;
        Ok(())
    }

    fn read_one(&mut self, seq: u64) -> io::Result<StoredMessage> {
        let idx = self.segments.partition_point(|&s| s <= seq);
        let Some(&segment) = idx.checked_sub(1).and_then(|i| self.segments.get(i)) else {
            return Err(not_found(seq));
        };
        let reuse = self
            .cursor
            .as_ref()
            .is_some_and(|c| c.segment == segment && c.next_seq <= seq);
        if !reuse {
            self.cursor = Some(self.open(segment)?);
        }
        let cursor = self.cursor.as_mut().expect("opened above");
        loop {
            let mut prefix = [0u8; RECORD_PREFIX_LEN];
            match cursor.file.read_exact(&mut prefix) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(not_found(seq)),
                Err(e) => return Err(e),
            }
            let len = u32::from_le_bytes(prefix[0..4].try_into().expect("4 bytes")) as usize;
            if !(segment::RECORD_FIXED_LEN..=segment::MAX_PAYLOAD_LEN).contains(&len) {
                return Err(segment::invalid_data("invalid record length"));
            }
            // The seq is the first payload field: peek at it before reading a skipped body.
            let mut seq_bytes = [0u8; 8];
            cursor.file.read_exact(&mut seq_bytes)?;
            let rec_seq = u64::from_le_bytes(seq_bytes);
            if rec_seq < seq {
                cursor.file.seek_relative((len - 8) as i64)?;
                cursor.next_seq = rec_seq + 1;
                continue;
            }
            if rec_seq > seq {
                // Not in this segment (acked and gone, or never written). Stay at this record.
                cursor
                    .file
                    .seek_relative(-((RECORD_PREFIX_LEN + 8) as i64))?;
                cursor.next_seq = rec_seq;
                return Err(not_found(seq));
            }
            let mut buf = vec![0u8; RECORD_PREFIX_LEN + len];
            buf[..RECORD_PREFIX_LEN].copy_from_slice(&prefix);
            buf[RECORD_PREFIX_LEN..RECORD_PREFIX_LEN + 8].copy_from_slice(&seq_bytes);
            cursor.file.read_exact(&mut buf[RECORD_PREFIX_LEN + 8..])?;
            cursor.next_seq = seq + 1;
            let data = Bytes::from(buf);
            return match segment::next_record(&data, 0, true) {
                Next::Record(r) => Ok(segment::to_message(&data, &r, true)),
                Next::End => Err(not_found(seq)),
                Next::Bad(why) => Err(segment::invalid_data(why)),
            };
        }
    }

    fn open(&self, segment: u64) -> io::Result<Cursor> {
        let path = super::queue_log::segment_path(&self.reader.queue_dir(&self.key), segment);
        let mut file = BufReader::with_capacity(READ_BUF, File::open(path)?);
        file.seek(SeekFrom::Start(SEGMENT_HEADER_LEN as u64))?;
        Ok(Cursor {
            segment,
            file,
            next_seq: segment,
        })
    }
}

fn not_found(seq: u64) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("seq {seq} is not stored"))
}
