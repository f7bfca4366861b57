//! Message deduplication (`x-message-deduplication`), shared by exchanges and queues.
//!
//! A [`DedupCache`] remembers the deduplication keys it has seen: the value of
//! the header named by `x-deduplication-header` (the header
//! `x-deduplication-header` by default, as in LavinMQ and the
//! `rabbitmq-message-deduplication` plugin). A message without that header is
//! never a duplicate and is not remembered.
//!
//! How long a key is remembered:
//!
//! - **exchanges** (owner-less entries): for `x-cache-ttl` ms (or the message's
//!   own `x-cache-ttl` header), forever without a TTL;
//! - **queues** (entries owned by a queue message id): while that message is in
//!   the queue (ready or delivered but unacknowledged, the plugin's rule), and in
//!   addition for the TTL if there is one (LavinMQ's window). The queue answers
//!   "is message `id` still here?" through the `holds` callback, so no hook is
//!   needed where messages leave the queue: such keys simply become stale.
//!
//! At most `x-cache-size` keys are remembered (oldest first out). Stale entries
//! are swept when the map has doubled since the last sweep, so memory stays
//! proportional to the live keys.
//!
//! Plain data, no locks: an exchange wraps its cache in a small mutex of its own
//! (only exchanges with deduplication have one); a queue actor owns its cache.

use amq_protocol::types::{AMQPValue, FieldTable};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The header that names the key, unless `x-deduplication-header` says otherwise.
pub const DEFAULT_HEADER: &str = "x-deduplication-header";

/// Per-message header overriding the cache TTL (milliseconds).
pub const TTL_HEADER: &str = "x-cache-ttl";

/// Cache size of an exchange without `x-cache-size` (LavinMQ's default).
pub const DEFAULT_EXCHANGE_CACHE_SIZE: u32 = 128;

/// Sweeps never run below this many entries.
const MIN_SWEEP: usize = 1024;

/// Validated deduplication arguments of an exchange or queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DedupArgs {
    /// `x-cache-size`: most keys remembered (`None` = the owner's default).
    pub cache_size: Option<u32>,
    /// `x-cache-ttl`: how long a key is remembered, in ms.
    pub cache_ttl: Option<u64>,
    /// `x-deduplication-header`: the header holding the key.
    pub header: Option<String>,
}

/// What [`DedupCache::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The message has no key: not checked, not remembered.
    NoKey,
    /// First sighting (within the window): the key is now remembered.
    Unique,
    /// The key is remembered: drop the message.
    Duplicate,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Insertion number, to match entries of `order` with the current slot.
    gen: u64,
    expires: Option<Instant>,
    /// The queue message id that holds the key (queues only).
    owner: Option<u64>,
}

/// A bounded map of recently seen deduplication keys.
#[derive(Debug)]
pub struct DedupCache {
    header: Box<str>,
    default_ttl: Option<Duration>,
    capacity: usize,
    map: HashMap<Arc<[u8]>, Slot>,
    /// Keys in insertion order, for eviction; entries whose `gen` no longer
    /// matches the map are leftovers of replaced keys.
    order: VecDeque<(u64, Arc<[u8]>)>,
    next_gen: u64,
    sweep_at: usize,
    /// Reused buffer for encoding the key of a lookup.
    scratch: Vec<u8>,
}

impl DedupCache {
    /// A cache for `args`; `default_size` applies without `x-cache-size`
    /// (`None` = unbounded).
    pub fn new(args: &DedupArgs, default_size: Option<u32>) -> Self {
        let capacity = args
            .cache_size
            .or(default_size)
            .map_or(usize::MAX, |n| n as usize);
        DedupCache {
            header: args.header.as_deref().unwrap_or(DEFAULT_HEADER).into(),
            default_ttl: args.cache_ttl.map(Duration::from_millis),
            capacity,
            map: HashMap::new(),
            order: VecDeque::new(),
            next_gen: 0,
            sweep_at: MIN_SWEEP,
            scratch: Vec::new(),
        }
    }

    /// Checks a message's key and remembers it if it is new (exchanges).
    pub fn check(&mut self, headers: Option<&FieldTable>, now: Instant) -> Verdict {
        self.check_owned(headers, now, None, |_| false)
    }

    /// Checks a message's key for a queue: `owner` is the id the message gets in
    /// the queue, `holds(id)` tells whether message `id` is still in the queue.
    pub fn check_owned(
        &mut self,
        headers: Option<&FieldTable>,
        now: Instant,
        owner: Option<u64>,
        holds: impl Fn(u64) -> bool,
    ) -> Verdict {
        let Some(headers) = headers else {
            return Verdict::NoKey;
        };
        let Some(value) = headers.inner().get(&*self.header) else {
            return Verdict::NoKey;
        };
        self.scratch.clear();
        encode_key(value, &mut self.scratch);
        if let Some(slot) = self.map.get(self.scratch.as_slice()) {
            if is_live(slot, now, &holds) {
                return Verdict::Duplicate;
            }
        }
        let ttl = message_ttl(headers).or(self.default_ttl);
        self.insert(now, ttl, owner);
        if self.map.len() >= self.sweep_at {
            self.sweep(now, &holds);
        }
        Verdict::Unique
    }

    /// Remembers the key in `scratch` (replacing a stale entry for it).
    fn insert(&mut self, now: Instant, ttl: Option<Duration>, owner: Option<u64>) {
        if self.capacity == 0 {
            return;
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        let slot = Slot {
            gen,
            expires: ttl.map(|t| now + t),
            owner,
        };
        let key: Arc<[u8]> = match self.map.get_key_value(self.scratch.as_slice()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(self.scratch.as_slice()),
        };
        self.map.insert(key.clone(), slot);
        self.order.push_back((gen, key));
        while self.map.len() > self.capacity {
            self.evict_oldest();
        }
        // Replaced keys leave stale entries in `order`; keep it proportional.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(gen, key)| map.get(key).is_some_and(|s| s.gen == *gen));
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((gen, key)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|s| s.gen == gen) {
                self.map.remove(&key);
                return;
            }
        }
    }

    /// Drops every entry that no longer counts.
    fn sweep(&mut self, now: Instant, holds: &impl Fn(u64) -> bool) {
        self.map.retain(|_, slot| is_live(slot, now, holds));
        let map = &self.map;
        self.order
            .retain(|(gen, key)| map.get(key).is_some_and(|s| s.gen == *gen));
        self.sweep_at = (2 * self.map.len()).max(MIN_SWEEP);
    }

    /// Number of remembered keys (stale ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The cache of a queue declared with `x-message-deduplication`, remembering the
/// keys of the messages it starts with (`(id, message)` pairs, recovered from its log).
pub fn for_queue<'a>(
    args: &super::args::QueueArgs,
    messages: impl Iterator<Item = (u64, &'a crate::message::Message)>,
) -> Option<DedupCache> {
    if !args.message_deduplication {
        return None;
    }
    let mut cache = DedupCache::new(
        &DedupArgs {
            cache_size: args.dedup_cache_size,
            cache_ttl: args.dedup_cache_ttl,
            header: args.dedup_header.clone(),
        },
        None,
    );
    let now = Instant::now();
    for (id, msg) in messages {
        cache.check_owned(msg.headers(), now, Some(id), |_| true);
    }
    Some(cache)
}

fn is_live(slot: &Slot, now: Instant, holds: &impl Fn(u64) -> bool) -> bool {
    let held = || slot.owner.is_some_and(holds);
    match slot.expires {
        Some(t) if t > now => true,
        Some(_) => held(),
        // Without a TTL an exchange remembers until evicted, a queue while it holds the message.
        None => slot.owner.is_none() || held(),
    }
}

/// The message's own `x-cache-ttl` header (an integer ≥ 0), if any.
fn message_ttl(headers: &FieldTable) -> Option<Duration> {
    let v = super::args::int_value(headers.inner().get(TTL_HEADER)?)?;
    u64::try_from(v).ok().map(Duration::from_millis)
}

/// Encodes a header value as a map key: strings by their bytes, every integer
/// type as the same number, anything else by its type and printed value.
fn encode_key(value: &AMQPValue, out: &mut Vec<u8>) {
    match value {
        AMQPValue::LongString(s) => {
            out.push(b'S');
            out.extend_from_slice(s.as_bytes());
        }
        AMQPValue::ShortString(s) => {
            out.push(b'S');
            out.extend_from_slice(s.as_str().as_bytes());
        }
        AMQPValue::ByteArray(b) => {
            out.push(b'x');
            out.extend_from_slice(b.as_slice());
        }
        other => match super::args::int_value(other) {
            Some(n) => {
                out.push(b'l');
                out.extend_from_slice(&n.to_le_bytes());
            }
            None => {
                use std::io::Write;
                out.push(b'?');
                let _ = write!(out, "{other:?}");
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn key(v: &str) -> FieldTable {
        headers(&[(DEFAULT_HEADER, AMQPValue::LongString(v.into()))])
    }

    fn args(size: Option<u32>, ttl: Option<u64>) -> DedupArgs {
        DedupArgs {
            cache_size: size,
            cache_ttl: ttl,
            header: None,
        }
    }

    #[test]
    fn messages_without_the_header_are_not_checked() {
        let mut c = DedupCache::new(&args(None, None), None);
        let now = Instant::now();
        assert_eq!(c.check(None, now), Verdict::NoKey);
        assert_eq!(c.check(Some(&headers(&[])), now), Verdict::NoKey);
        assert!(c.is_empty());
    }

    #[test]
    fn second_sighting_is_a_duplicate() {
        let mut c = DedupCache::new(&args(None, None), None);
        let now = Instant::now();
        assert_eq!(c.check(Some(&key("a")), now), Verdict::Unique);
        assert_eq!(c.check(Some(&key("a")), now), Verdict::Duplicate);
        assert_eq!(c.check(Some(&key("b")), now), Verdict::Unique);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn integer_types_are_one_key_strings_another() {
        let mut c = DedupCache::new(&args(None, None), None);
        let now = Instant::now();
        let h = |v| headers(&[(DEFAULT_HEADER, v)]);
        assert_eq!(
            c.check(Some(&h(AMQPValue::LongInt(7))), now),
            Verdict::Unique
        );
        assert_eq!(
            c.check(Some(&h(AMQPValue::LongLongInt(7))), now),
            Verdict::Duplicate
        );
        assert_eq!(
            c.check(Some(&h(AMQPValue::LongString("7".into()))), now),
            Verdict::Unique
        );
    }

    #[test]
    fn custom_header_names_the_key() {
        let mut a = args(None, None);
        a.header = Some("msg-id".into());
        let mut c = DedupCache::new(&a, None);
        let now = Instant::now();
        assert_eq!(c.check(Some(&key("a")), now), Verdict::NoKey);
        let h = headers(&[("msg-id", AMQPValue::LongString("a".into()))]);
        assert_eq!(c.check(Some(&h), now), Verdict::Unique);
        assert_eq!(c.check(Some(&h), now), Verdict::Duplicate);
    }

    #[test]
    fn keys_expire_after_the_ttl_and_the_header_overrides_it() {
        let mut c = DedupCache::new(&args(None, Some(100)), None);
        let t0 = Instant::now();
        assert_eq!(c.check(Some(&key("a")), t0), Verdict::Unique);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(c.check(Some(&key("a")), at(99)), Verdict::Duplicate);
        assert_eq!(c.check(Some(&key("a")), at(100)), Verdict::Unique);
        // Per-message TTL.
        let long = headers(&[
            (DEFAULT_HEADER, AMQPValue::LongString("b".into())),
            (TTL_HEADER, AMQPValue::LongInt(1000)),
        ]);
        assert_eq!(c.check(Some(&long), t0), Verdict::Unique);
        assert_eq!(c.check(Some(&key("b")), at(500)), Verdict::Duplicate);
        assert_eq!(c.check(Some(&key("b")), at(1000)), Verdict::Unique);
    }

    #[test]
    fn the_oldest_key_is_evicted_when_full() {
        let mut c = DedupCache::new(&args(Some(2), None), None);
        let now = Instant::now();
        for k in ["a", "b", "c"] {
            assert_eq!(c.check(Some(&key(k)), now), Verdict::Unique);
        }
        assert_eq!(c.len(), 2);
        assert_eq!(c.check(Some(&key("c")), now), Verdict::Duplicate);
        assert_eq!(c.check(Some(&key("b")), now), Verdict::Duplicate);
        assert_eq!(c.check(Some(&key("a")), now), Verdict::Unique, "evicted");
    }

    #[test]
    fn size_zero_remembers_nothing() {
        let mut c = DedupCache::new(&args(Some(0), None), None);
        let now = Instant::now();
        assert_eq!(c.check(Some(&key("a")), now), Verdict::Unique);
        assert_eq!(c.check(Some(&key("a")), now), Verdict::Unique);
    }

    #[test]
    fn default_size_bounds_exchange_caches() {
        let mut c = DedupCache::new(&args(None, None), Some(DEFAULT_EXCHANGE_CACHE_SIZE));
        let now = Instant::now();
        for i in 0..1000 {
            c.check(Some(&key(&i.to_string())), now);
        }
        assert_eq!(c.len(), DEFAULT_EXCHANGE_CACHE_SIZE as usize);
        assert!(c.order.len() <= 2 * c.len() + 64);
    }

    #[test]
    fn queue_keys_are_held_while_the_message_is_in_the_queue() {
        let mut c = DedupCache::new(&args(None, None), None);
        let now = Instant::now();
        let in_queue = std::cell::RefCell::new(vec![1u64]);
        let holds = |id| in_queue.borrow().contains(&id);
        assert_eq!(
            c.check_owned(Some(&key("a")), now, Some(1), holds),
            Verdict::Unique
        );
        assert_eq!(
            c.check_owned(Some(&key("a")), now, Some(2), holds),
            Verdict::Duplicate
        );
        in_queue.borrow_mut().clear(); // message 1 acked
        assert_eq!(
            c.check_owned(Some(&key("a")), now, Some(3), holds),
            Verdict::Unique
        );
        assert_eq!(
            c.check_owned(Some(&key("a")), now, Some(4), holds),
            Verdict::Unique
        );
    }

    #[test]
    fn queue_keys_with_a_ttl_outlive_their_message() {
        let mut c = DedupCache::new(&args(None, Some(100)), None);
        let t0 = Instant::now();
        let gone = |_| false;
        assert_eq!(
            c.check_owned(Some(&key("a")), t0, Some(1), gone),
            Verdict::Unique
        );
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(
            c.check_owned(Some(&key("a")), at(50), Some(2), gone),
            Verdict::Duplicate
        );
        assert_eq!(
            c.check_owned(Some(&key("a")), at(150), Some(3), gone),
            Verdict::Unique
        );
        // Still in the queue after the TTL: still a duplicate.
        let held = |id| id == 3;
        assert_eq!(
            c.check_owned(Some(&key("a")), at(400), Some(4), held),
            Verdict::Duplicate
        );
    }

    #[test]
    fn stale_queue_keys_are_swept() {
        let mut c = DedupCache::new(&args(None, None), None);
        let now = Instant::now();
        for i in 0..(10 * MIN_SWEEP as u64) {
            // Only the latest message is still in the queue.
            let latest = i;
            c.check_owned(Some(&key(&i.to_string())), now, Some(i), |id| id == latest);
        }
        assert!(c.len() <= MIN_SWEEP, "{}", c.len());
    }
}
