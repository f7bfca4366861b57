//! The message body stamp and the loss/duplicate tracker.
//!
//! Every body starts with a 16-byte stamp (little endian):
//!
//! | bytes    | field                                                   |
//! |----------|---------------------------------------------------------|
//! | `0..8`   | send time, ns since the run's epoch (one process clock) |
//! | `8..10`  | producer id                                             |
//! | `10..16` | per-producer sequence number (48 bits, from 0)          |
//!
//! and is zero-padded up to `--size`. Producers and consumers share one
//! monotonic clock, so latency is `receive time - send time`.

/// Length of the stamp, and so the smallest message size.
pub const STAMP_LEN: usize = 16;
/// Largest sequence number the stamp can carry.
pub const MAX_SEQ: u64 = (1 << 48) - 1;

/// What a body stamp says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Send time, ns since the run's epoch.
    pub sent_ns: u64,
    /// Producer id.
    pub producer: u16,
    /// Sequence number within that producer.
    pub seq: u64,
}

impl Stamp {
    /// Writes the stamp into the first [`STAMP_LEN`] bytes of `body`.
    #[inline]
    pub fn write(&self, body: &mut [u8]) {
        body[0..8].copy_from_slice(&self.sent_ns.to_le_bytes());
        body[8..10].copy_from_slice(&self.producer.to_le_bytes());
        body[10..16].copy_from_slice(&self.seq.to_le_bytes()[..6]);
    }

    /// Reads a stamp from the start of a body, if it is long enough.
    #[inline]
    pub fn read(body: &[u8]) -> Option<Stamp> {
        let b: &[u8; STAMP_LEN] = body.get(..STAMP_LEN)?.try_into().ok()?;
        let mut seq = [0u8; 8];
        seq[..6].copy_from_slice(&b[10..16]);
        Some(Stamp {
            sent_ns: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            producer: u16::from_le_bytes([b[8], b[9]]),
            seq: u64::from_le_bytes(seq),
        })
    }
}

/// Which sequence numbers of which producers were seen, as bitmaps.
///
/// Each consumer keeps its own tracker (no sharing on the hot path); the run merges
/// them at the end, counting a sequence seen by two consumers as a duplicate.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    seen: Vec<Vec<u64>>,
    /// Messages seen more than once.
    pub duplicates: u64,
    /// Messages whose stamp names a producer this run does not have.
    pub foreign: u64,
}

impl Tracker {
    /// A tracker for `producers` producers.
    pub fn new(producers: usize) -> Tracker {
        Tracker {
            seen: vec![Vec::new(); producers],
            duplicates: 0,
            foreign: 0,
        }
    }

    /// Records one received message.
    #[inline]
    pub fn record(&mut self, producer: u16, seq: u64) {
        let Some(bits) = self.seen.get_mut(producer as usize) else {
            self.foreign += 1;
            return;
        };
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= bits.len() {
            bits.resize((word + 1).next_power_of_two(), 0);
        }
        if bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
        } else {
            bits[word] |= 1 << bit;
        }
    }

    /// Folds another consumer's tracker into this one.
    pub fn merge(&mut self, other: &Tracker) {
        self.duplicates += other.duplicates;
        self.foreign += other.foreign;
        for (mine, theirs) in self.seen.iter_mut().zip(&other.seen) {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (m, t) in mine.iter_mut().zip(theirs) {
                self.duplicates += u64::from((*m & *t).count_ones());
                *m |= *t;
            }
        }
    }

    /// Whether `producer` sent `seq` and it was seen.
    pub fn contains(&self, producer: u16, seq: u64) -> bool {
        self.seen
            .get(producer as usize)
            .and_then(|b| b.get((seq / 64) as usize))
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// How many of `producer`'s sequences `0..sent` were never seen.
    pub fn missing(&self, producer: u16, sent: u64) -> u64 {
        let Some(bits) = self.seen.get(producer as usize) else {
            return sent;
        };
        let full_words = (sent / 64) as usize;
        let mut seen: u64 = bits
            .iter()
            .take(full_words)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = sent % 64;
        if rest > 0 {
            if let Some(w) = bits.get(full_words) {
                seen += u64::from((w & ((1u64 << rest) - 1)).count_ones());
            }
        }
        sent - seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trip() {
        let s = Stamp {
            sent_ns: 123_456_789_012,
            producer: 513,
            seq: MAX_SEQ,
        };
        let mut body = [0xAAu8; 20];
        s.write(&mut body);
        assert_eq!(Stamp::read(&body), Some(s));
        assert_eq!(Stamp::read(&body[..15]), None);
    }

    #[test]
    fn tracker_counts_missing_and_duplicates_across_consumers() {
        let mut a = Tracker::new(2);
        let mut b = Tracker::new(2);
        for seq in 0..100 {
            if seq % 2 == 0 {
                a.record(0, seq);
            } else if seq != 99 {
                b.record(0, seq);
            }
        }
        a.record(0, 10); // duplicate within a consumer
        b.record(0, 20); // duplicate across consumers
        b.record(7, 1); // unknown producer
        a.merge(&b);
        assert_eq!(a.duplicates, 2);
        assert_eq!(a.foreign, 1);
        assert_eq!(a.missing(0, 100), 1);
        assert!(!a.contains(0, 99) && a.contains(0, 98));
        assert_eq!(a.missing(0, 64), 0);
        assert_eq!(a.missing(1, 5), 5);
    }
}
