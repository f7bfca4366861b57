//! On-disk record formats: segment files (`.seg`) and their ack side files (`.ack`).
//!
//! Owns: encoding and decoding of the byte layout described in `docs/storage-format.md`
//! (format version [`FORMAT_VERSION`]). It does no file management of its own, apart from the
//! small positional reader used by [`super::StoreReader`] and [`SegmentReader`].
//!
//! Invariants:
//! - Every record carries its own length and a CRC-32C over the length field and the payload, so
//!   a torn tail (crash mid-write) or a flipped bit is detected by [`next_record`].
//! - Encoding never copies a body of [`EXTERNAL_BODY_MIN`] bytes or more: it is queued as an
//!   external `Bytes` part of the [`WriteBuf`] and written with `write_vectored`.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use super::{PagedRecord, StoredMessage};

/// Version of the on-disk format written by this code (segment header and `VERSION` file).
pub const FORMAT_VERSION: u32 = 1;

/// Magic bytes at the start of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 4] = *b"WMQS";
/// Segment header: magic (4) | format version u32 LE (4) | first seq u64 LE (8).
pub(crate) const SEGMENT_HEADER_LEN: usize = 16;
/// Record prefix: payload length u32 LE (4) | CRC-32C u32 LE (4).
pub(crate) const RECORD_PREFIX_LEN: usize = 8;
/// Fixed payload part: seq u64 | flags u8 | delivery_count u32 | exchange_len u16 |
/// routing_key_len u16 | header_len u32.
pub(crate) const RECORD_FIXED_LEN: usize = 8 + 1 + 4 + 2 + 2 + 4;
/// Largest payload accepted (writing and reading); anything larger is treated as corruption.
pub(crate) const MAX_PAYLOAD_LEN: usize = 1 << 30;
/// Record flag: the message had been delivered before it was appended (e.g. requeued to a new log).
pub(crate) const FLAG_REDELIVERED: u8 = 0x01;
/// Bodies at least this large are written straight from their `Bytes` (vectored), not copied.
pub(crate) const EXTERNAL_BODY_MIN: usize = 4096;
/// Length of one ack-file entry.
pub(crate) const ACK_ENTRY_LEN: usize = 20;
/// Ack-file entry kind: `count` consecutive seqs starting at `seq` were removed.
pub(crate) const ACK_KIND_RANGE: u8 = 1;
/// Ack-file entry kind: the delivery count of `seq` is now `value`.
pub(crate) const ACK_KIND_DELIVERY_COUNT: u8 = 2;
/// Largest number of `IoSlice`s handed to one `writev` (Linux `IOV_MAX`).
const MAX_IOVECS: usize = 1024;

/// Builds the 16-byte header of a segment whose first record has sequence `first_seq`.
pub(crate) fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..4].copy_from_slice(&SEGMENT_MAGIC);
    h[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&first_seq.to_le_bytes());
    h
}

/// Why a segment header could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Fewer than 16 bytes: the crash happened while the segment was being created.
    Short,
    /// Wrong magic: not a segment file, or overwritten.
    BadMagic,
    /// Written by a format version this code does not read.
    Version(u32),
}

/// Parses a segment header and returns the first sequence number it names.
pub(crate) fn parse_segment_header(data: &[u8]) -> Result<u64, HeaderError> {
    if data.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderError::Short);
    }
    if data[0..4] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let version = u32::from_le_bytes(data[4..8].try_into().expect("4-byte slice"));
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    Ok(u64::from_le_bytes(
        data[8..16].try_into().expect("8-byte slice"),
    ))
}

/// Checks that a message can be encoded and returns its full record length (prefix included).
pub(crate) fn record_len(msg: &StoredMessage) -> io::Result<usize> {
    if msg.exchange.len() > u16::MAX as usize || msg.routing_key.len() > u16::MAX as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "exchange or routing key longer than 65535 bytes",
        ));
    }
    let payload = RECORD_FIXED_LEN
        + msg.exchange.len()
        + msg.routing_key.len()
        + msg.header.len()
        + msg.body.len();
    if payload > MAX_PAYLOAD_LEN || msg.header.len() > u32::MAX as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message too large for the store (1 GiB record limit)",
        ));
    }
    Ok(RECORD_PREFIX_LEN + payload)
}

/// A batch of bytes for one file: a reused contiguous buffer plus large bodies kept as `Bytes`.
///
/// External parts are spliced in at recorded buffer positions, so the file receives
/// `buf[..p0] ext0 buf[p0..p1] ext1 ... buf[pn..]` in one vectored write.
#[derive(Default)]
pub(crate) struct WriteBuf {
    buf: Vec<u8>,
    ext: Vec<(usize, Bytes)>,
    ext_len: usize,
}

impl WriteBuf {
    /// Total number of bytes queued.
    pub(crate) fn len(&self) -> usize {
        self.buf.len() + self.ext_len
    }

    /// True when nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a copy of `data`.
    pub(crate) fn put(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Queues `data`, by reference when it is large enough to be worth a separate iovec.
    fn put_bytes(&mut self, data: &Bytes) {
        if data.len() >= EXTERNAL_BODY_MIN {
            self.ext.push((self.buf.len(), data.clone()));
            self.ext_len += data.len();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    /// Drops everything queued; keeps (bounded) capacity for the next batch.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.ext.clear();
        self.ext_len = 0;
        if self.buf.capacity() > 1 << 20 {
            self.buf.shrink_to(256 << 10);
        }
    }

    /// Writes everything queued to `out` (which must be opened in append mode) and clears.
    pub(crate) fn write_to(&mut self, out: &mut File) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(self.ext.len() * 2 + 1);
        let mut pos = 0;
        for (at, bytes) in &self.ext {
            if *at > pos {
                slices.push(IoSlice::new(&self.buf[pos..*at]));
            }
            slices.push(IoSlice::new(bytes));
            pos = *at;
        }
        if pos < self.buf.len() {
            slices.push(IoSlice::new(&self.buf[pos..]));
        }
        let res = write_all_vectored(out, &mut slices);
        drop(slices);
        self.clear();
        res
    }
}

/// `write_all` for a list of slices, at most [`MAX_IOVECS`] per system call.
fn write_all_vectored(out: &mut File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        let n = slices.len().min(MAX_IOVECS);
        match out.write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Encodes one record into `out`. The caller has validated it with [`record_len`].
pub(crate) fn encode_record(msg: &StoredMessage, out: &mut WriteBuf) {
    let payload_len = (record_len(msg).expect("validated by caller") - RECORD_PREFIX_LEN) as u32;
    let mut fixed = [0u8; RECORD_FIXED_LEN];
    fixed[0..8].copy_from_slice(&msg.seq.to_le_bytes());
    fixed[8] = if msg.redelivered { FLAG_REDELIVERED } else { 0 };
    fixed[9..13].copy_from_slice(&msg.delivery_count.to_le_bytes());
    fixed[13..15].copy_from_slice(&(msg.exchange.len() as u16).to_le_bytes());
    fixed[15..17].copy_from_slice(&(msg.routing_key.len() as u16).to_le_bytes());
    fixed[17..21].copy_from_slice(&(msg.header.len() as u32).to_le_bytes());
    let len_bytes = payload_len.to_le_bytes();
    let mut crc = crc32c::crc32c(&len_bytes);
    for part in [
        &fixed[..],
        msg.exchange.as_bytes(),
        msg.routing_key.as_bytes(),
        &msg.header[..],
        &msg.body[..],
    ] {
        crc = crc32c::crc32c_append(crc, part);
    }
    out.put(&len_bytes);
    out.put(&crc.to_le_bytes());
    out.put(&fixed);
    out.put(msg.exchange.as_bytes());
    out.put(msg.routing_key.as_bytes());
    out.put_bytes(&msg.header);
    out.put_bytes(&msg.body);
}

/// A decoded record inside a buffer: fixed fields plus byte ranges of the variable parts.
#[derive(Debug, Clone)]
pub(crate) struct RecordRef {
    /// Offset of the record (its length field) in the segment.
    pub offset: usize,
    /// Offset just past the record.
    pub end: usize,
    /// Sequence number.
    pub seq: u64,
    /// Flag bits (`FLAG_*`).
    pub flags: u8,
    /// Delivery count at append time.
    pub delivery_count: u32,
    /// Exchange name bytes.
    pub exchange: Range<usize>,
    /// Routing key bytes.
    pub routing_key: Range<usize>,
    /// Encoded content-header bytes.
    pub header: Range<usize>,
    /// Body bytes.
    pub body: Range<usize>,
}

/// Result of decoding at one position of a segment.
#[derive(Debug)]
pub(crate) enum Next {
    /// A complete, valid record.
    Record(RecordRef),
    /// Clean end of data.
    End,
    /// The bytes from here on are not a valid record (torn write or corruption).
    Bad(&'static str),
}

/// Decodes the record at `pos` in `data` (a whole segment or a record read on its own).
///
/// With `verify` false (clean restart) the CRC is not computed, but lengths are still checked.
pub(crate) fn next_record(data: &[u8], pos: usize, verify: bool) -> Next {
    if pos == data.len() {
        return Next::End;
    }
    let rest = &data[pos..];
    if rest.len() < RECORD_PREFIX_LEN {
        return Next::Bad("truncated record prefix");
    }
    let payload_len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if payload_len == 0 && crc == 0 {
        // Preallocated or zero-filled space after a crash (e.g. ext4 delayed allocation).
        return Next::Bad("zero-filled tail");
    }
    if !(RECORD_FIXED_LEN..=MAX_PAYLOAD_LEN).contains(&payload_len) {
        return Next::Bad("invalid record length");
    }
    if rest.len() < RECORD_PREFIX_LEN + payload_len {
        return Next::Bad("truncated record");
    }
    let payload = &rest[RECORD_PREFIX_LEN..RECORD_PREFIX_LEN + payload_len];
    if verify {
        let actual = crc32c::crc32c_append(crc32c::crc32c(&rest[0..4]), payload);
        if actual != crc {
            return Next::Bad("checksum mismatch");
        }
    }
    let seq = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
    let flags = payload[8];
    let delivery_count = u32::from_le_bytes(payload[9..13].try_into().expect("4 bytes"));
    let ex_len = u16::from_le_bytes(payload[13..15].try_into().expect("2 bytes")) as usize;
    let rk_len = u16::from_le_bytes(payload[15..17].try_into().expect("2 bytes")) as usize;
    let hdr_len = u32::from_le_bytes(payload[17..21].try_into().expect("4 bytes")) as usize;
    if RECORD_FIXED_LEN + ex_len + rk_len + hdr_len > payload_len {
        return Next::Bad("field lengths exceed record");
    }
    let base = pos + RECORD_PREFIX_LEN + RECORD_FIXED_LEN;
    let exchange = base..base + ex_len;
    let routing_key = exchange.end..exchange.end + rk_len;
    let header = routing_key.end..routing_key.end + hdr_len;
    let end = pos + RECORD_PREFIX_LEN + payload_len;
    let body = header.end..end;
    Next::Record(RecordRef {
        offset: pos,
        end,
        seq,
        flags,
        delivery_count,
        exchange,
        routing_key,
        header,
        body,
    })
}

/// Builds a [`StoredMessage`] from a record in `data`.
///
/// With `share` the header and body are zero-copy slices of `data` (which then stays alive as
/// long as they do); otherwise they are copied out so `data` can be freed.
pub(crate) fn to_message(data: &Bytes, r: &RecordRef, share: bool) -> StoredMessage {
    let part = |range: &Range<usize>| {
        if share {
            data.slice(range.clone())
        } else {
            Bytes::copy_from_slice(&data[range.clone()])
        }
    };
    StoredMessage {
        seq: r.seq,
        header: part(&r.header),
        body: part(&r.body),
        exchange: String::from_utf8_lossy(&data[r.exchange.clone()]).into_owned(),
        routing_key: String::from_utf8_lossy(&data[r.routing_key.clone()]).into_owned(),
        delivery_count: r.delivery_count,
        redelivered: r.flags & FLAG_REDELIVERED != 0,
    }
}

/// Property-flag bits (first two bytes of the encoded properties) a queue needs without the
/// body: `headers` (deduplication), `priority` and `expiration`.
const PAGED_HEADER_NEEDS: u16 = 0x2000 | 0x0800 | 0x0100;

/// The index form of a live record beyond the recovery window: no body, and the properties
/// only when they carry something the queue needs before the body is read back.
pub(crate) fn to_paged(data: &[u8], r: &RecordRef, delivery_count: Option<u32>) -> PagedRecord {
    let header = &data[r.header.clone()];
    let flags = header
        .get(..2)
        .map_or(0, |f| u16::from_be_bytes([f[0], f[1]]));
    let delivery_count = delivery_count.unwrap_or(r.delivery_count);
    PagedRecord {
        seq: r.seq,
        body_size: u32::try_from(r.body.len()).unwrap_or(u32::MAX),
        delivery_count,
        redelivered: r.flags & FLAG_REDELIVERED != 0 || delivery_count > 0,
        header: (flags & PAGED_HEADER_NEEDS != 0).then(|| header.into()),
    }
}

/// Reads one record at `offset` of the segment file at `path`, verifying its CRC.
pub(crate) fn read_record_at(path: &Path, offset: u64) -> io::Result<StoredMessage> {
    let file = File::open(path)?;
    let mut prefix = [0u8; RECORD_PREFIX_LEN];
    file.read_exact_at(&mut prefix, offset)?;
    let payload_len = u32::from_le_bytes(prefix[0..4].try_into().expect("4 bytes")) as usize;
    if !(RECORD_FIXED_LEN..=MAX_PAYLOAD_LEN).contains(&payload_len) {
        return Err(invalid_data("invalid record length"));
    }
    let mut buf = vec![0u8; RECORD_PREFIX_LEN + payload_len];
    buf[..RECORD_PREFIX_LEN].copy_from_slice(&prefix);
    file.read_exact_at(
        &mut buf[RECORD_PREFIX_LEN..],
        offset + RECORD_PREFIX_LEN as u64,
    )?;
    let data = Bytes::from(buf);
    match next_record(&data, 0, true) {
        Next::Record(r) => Ok(to_message(&data, &r, true)),
        Next::End => Err(invalid_data("no record")),
        Next::Bad(why) => Err(invalid_data(why)),
    }
}

/// Builds an `InvalidData` error.
pub(crate) fn invalid_data(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// Reads a whole file into a `Bytes` (segments are bounded, so this is one allocation).
pub(crate) fn read_file(path: &Path) -> io::Result<Bytes> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len() as usize;
    let mut buf = Vec::with_capacity(len);
    file.read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

/// Lazily yields the raw records of one segment as `(offset, message)`, acked ones included.
///
/// The segment is read into memory once when opened; records are decoded on demand. Iteration
/// stops at the first invalid record (after yielding one `InvalidData` error).
pub struct SegmentReader {
    data: Bytes,
    pos: usize,
    done: bool,
}

impl SegmentReader {
    /// Opens the segment file at `path` and checks its header.
    pub fn open(path: &Path) -> io::Result<Self> {
        let data = read_file(path)?;
        parse_segment_header(&data)
            .map_err(|e| invalid_data(&format!("bad segment header: {e:?}")))?;
        Ok(SegmentReader {
            data,
            pos: SEGMENT_HEADER_LEN,
            done: false,
        })
    }
}

impl Iterator for SegmentReader {
    type Item = io::Result<(u64, StoredMessage)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match next_record(&self.data, self.pos, true) {
            Next::Record(r) => {
                self.pos = r.end;
                Some(Ok((r.offset as u64, to_message(&self.data, &r, true))))
            }
            Next::End => {
                self.done = true;
                None
            }
            Next::Bad(why) => {
                self.done = true;
                Some(Err(invalid_data(why)))
            }
        }
    }
}

/// One entry of an ack file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckEntry {
    /// `count` consecutive sequence numbers starting at `seq` were removed from the queue.
    Range {
        /// First removed seq.
        seq: u64,
        /// Number of seqs in the run (at least 1).
        count: u32,
    },
    /// The delivery count of `seq` is now `count`.
    DeliveryCount {
        /// Message seq.
        seq: u64,
        /// New delivery count.
        count: u32,
    },
}

/// Appends the 20-byte encoding of `entry` to `out`:
/// crc32c u32 (over the next 16 bytes) | kind u8 | 3 zero bytes | seq u64 | value u32.
pub(crate) fn encode_ack_entry(entry: AckEntry, out: &mut Vec<u8>) {
    let (kind, seq, value) = match entry {
        AckEntry::Range { seq, count } => (ACK_KIND_RANGE, seq, count),
        AckEntry::DeliveryCount { seq, count } => (ACK_KIND_DELIVERY_COUNT, seq, count),
    };
    let mut body = [0u8; ACK_ENTRY_LEN - 4];
    body[0] = kind;
    body[4..12].copy_from_slice(&seq.to_le_bytes());
    body[12..16].copy_from_slice(&value.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// Decodes an ack file. Returns the valid entries and the length of the valid prefix; bytes
/// after it are a torn or corrupt tail.
pub(crate) fn decode_ack_entries(data: &[u8]) -> (Vec<AckEntry>, usize) {
    let mut entries = Vec::with_capacity(data.len() / ACK_ENTRY_LEN);
    let mut pos = 0;
    while pos + ACK_ENTRY_LEN <= data.len() {
        let e = &data[pos..pos + ACK_ENTRY_LEN];
        let crc = u32::from_le_bytes(e[0..4].try_into().expect("4 bytes"));
        if crc32c::crc32c(&e[4..]) != crc {
            break;
        }
        let seq = u64::from_le_bytes(e[8..16].try_into().expect("8 bytes"));
        let value = u32::from_le_bytes(e[16..20].try_into().expect("4 bytes"));
        let entry = match e[4] {
            ACK_KIND_RANGE if value > 0 => AckEntry::Range { seq, count: value },
            ACK_KIND_DELIVERY_COUNT => AckEntry::DeliveryCount { seq, count: value },
            _ => break,
        };
        entries.push(entry);
        pos += ACK_ENTRY_LEN;
    }
    (entries, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, body_len: usize) -> StoredMessage {
        StoredMessage {
            seq,
            header: Bytes::from_static(b"\x00\x3c\x00\x00hdr"),
            body: Bytes::from(vec![b'x'; body_len]),
            exchange: "amq.direct".into(),
            routing_key: "rk".into(),
            delivery_count: 3,
            redelivered: true,
        }
    }

    fn encode_all(msgs: &[StoredMessage]) -> Bytes {
        let mut wb = WriteBuf::default();
        wb.put(&segment_header(msgs[0].seq));
        for m in msgs {
            encode_record(m, &mut wb);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        wb.write_to(&mut f).unwrap();
        assert!(wb.is_empty());
        read_file(&path).unwrap()
    }

    #[test]
    fn record_round_trip_small_and_external_bodies() {
        let msgs = vec![msg(7, 10), msg(8, EXTERNAL_BODY_MIN * 3), msg(9, 0)];
        let data = encode_all(&msgs);
        assert_eq!(parse_segment_header(&data), Ok(7));
        let mut pos = SEGMENT_HEADER_LEN;
        for m in &msgs {
            let r = match next_record(&data, pos, true) {
                Next::Record(r) => r,
                other => panic!("{other:?}"),
            };
            assert_eq!(r.end - r.offset, record_len(m).unwrap());
            assert_eq!(&to_message(&data, &r, false), m);
            pos = r.end;
        }
        assert!(matches!(next_record(&data, pos, true), Next::End));
    }

    #[test]
    fn torn_and_corrupt_records_are_detected() {
        let data = encode_all(&[msg(1, 100)]);
        let full = data.len();
        for cut in SEGMENT_HEADER_LEN + 1..full {
            assert!(
                matches!(
                    next_record(&data[..cut], SEGMENT_HEADER_LEN, true),
                    Next::Bad(_)
                ),
                "cut at {cut}"
            );
        }
        for i in SEGMENT_HEADER_LEN..full {
            let mut bad = data.to_vec();
            bad[i] ^= 0x40;
            assert!(
                matches!(next_record(&bad, SEGMENT_HEADER_LEN, true), Next::Bad(_)),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn ack_entries_round_trip_and_stop_at_torn_tail() {
        let mut buf = Vec::new();
        let a = AckEntry::Range { seq: 5, count: 3 };
        let b = AckEntry::DeliveryCount { seq: 9, count: 2 };
        encode_ack_entry(a, &mut buf);
        encode_ack_entry(b, &mut buf);
        assert_eq!(decode_ack_entries(&buf), (vec![a, b], 2 * ACK_ENTRY_LEN));
        assert_eq!(
            decode_ack_entries(&buf[..ACK_ENTRY_LEN + 7]),
            (vec![a], ACK_ENTRY_LEN)
        );
        buf[ACK_ENTRY_LEN + 9] ^= 1;
        assert_eq!(decode_ack_entries(&buf), (vec![a], ACK_ENTRY_LEN));
    }

    #[test]
    fn oversized_names_are_rejected() {
        let mut m = msg(1, 1);
        m.exchange = "e".repeat(70_000);
        assert_eq!(
            record_len(&m).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
