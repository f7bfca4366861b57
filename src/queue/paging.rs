//! Message bodies of a queue: in memory near the head, on disk further back.
//!
//! A durable queue keeps only a compact index entry per message (id, size, priority, expiry,
//! flags: the actor's `Entry` with a [`Body::Paged`]) for persistent messages beyond its
//! in-memory window (`storage.queue_memory_window` messages from the head). Their bodies live
//! only in the queue's segment files. The [`Pager`] reads them back before they reach the head:
//! after each round of work the actor calls [`Pager::prefetch`] with its ready messages in
//! delivery order; the pager asks a blocking-pool task to read the missing bodies of the
//! window (one sequential pass over the segment files with a [`SeqReader`]), and the result
//! comes back to the actor as [`QueueCmd::PagedIn`] on its control lane. The actor never waits
//! on the disk, except for the rare `basic.get` or dead-lettering of a message that was not
//! prefetched yet ([`Pager::load_now`]).
//!
//! Invariants:
//! - Only persistent messages of durable queues are ever paged, and only by dropping the
//!   body at enqueue time; the store has (or will have) the record, and a read is only issued
//!   for seqs whose append has completed (`durable` watermark), so a record is never read
//!   while it is being written.
//! - Unacked messages always hold their message (a delivered entry is [`Body::Loaded`]).
//! - The cache holds bodies only for entries in the window; it is trimmed on every prefetch.

use super::{QueueCmd, QueueHandle};
use crate::message::Message;
use crate::store::{SeqReader, StoreHandle};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tracing::{debug, error};

/// A ready message's body: in memory, or only on disk.
#[derive(Debug, Clone)]
pub enum Body {
    /// The whole message is in memory.
    Loaded(Arc<Message>),
    /// Only in the queue's log; the index keeps what the queue needs without it.
    Paged {
        /// Body size in bytes (for `x-max-length-bytes`).
        size: u32,
        /// The message's `priority` property (0 if absent).
        priority: u8,
    },
}

impl Body {
    /// Body size in bytes.
    pub fn body_size(&self) -> u64 {
        match self {
            Body::Loaded(m) => m.body_size(),
            Body::Paged { size, .. } => u64::from(*size),
        }
    }

    /// The message's priority property (absent = 0).
    pub fn priority(&self) -> u8 {
        match self {
            Body::Loaded(m) => m.properties.priority().unwrap_or(0),
            Body::Paged { priority, .. } => *priority,
        }
    }

    /// The message, if it is in memory.
    pub fn loaded(&self) -> Option<&Arc<Message>> {
        match self {
            Body::Loaded(m) => Some(m),
            Body::Paged { .. } => None,
        }
    }
}

/// Bodies read back from disk, on their way to the queue actor.
#[derive(Debug)]
pub struct PageIn {
    reader: SeqReader,
    /// `(id, message)`; `None` when the record could not be read.
    loaded: Vec<(u64, Option<Arc<Message>>)>,
}

/// Durability watermark shared with the store completions of a queue's appends.
#[derive(Debug, Default)]
struct Durable {
    /// Every seq up to this one has had its append completed.
    upto: AtomicU64,
    /// The pager is waiting for appends to complete before it can read: wake the queue.
    waiting: AtomicBool,
}

/// State of the head of the ready queue, for dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Its message is in memory (or in the cache): deliver it.
    Ready,
    /// Its body is being read: wait for [`QueueCmd::PagedIn`].
    Wait,
    /// Its body could not be read back: it is lost (drop it).
    Lost,
}

/// Pages bodies of a durable queue out and back in (see the module docs).
#[derive(Debug)]
pub struct Pager {
    /// Messages from the head whose bodies stay (or are brought back) in memory; 0 = paging off.
    window: usize,
    /// Bodies read back for paged entries in the window.
    cache: HashMap<u64, Arc<Message>>,
    /// Ids whose bodies could not be read back.
    lost: HashSet<u64>,
    /// The reader, `None` while a read is in flight.
    reader: Option<SeqReader>,
    /// Ready entries that are [`Body::Paged`] (an upper bound: purges do not report).
    paged: usize,
    durable: Arc<Durable>,
}

impl Pager {
    /// A pager for the queue `key` in `store` keeping `window` messages in memory; without a
    /// store (non-durable queue) or with `window == 0` nothing is ever paged.
    pub fn new(store: Option<(&StoreHandle, &str)>, window: usize) -> Self {
        let reader = store.map(|(h, key)| h.reader().seq_reader(&key.to_string()));
        Pager {
            window: if reader.is_some() { window } else { 0 },
            cache: HashMap::new(),
            lost: HashSet::new(),
            reader,
            paged: 0,
            durable: Arc::default(),
        }
    }

    /// Whether paging is on for this queue.
    pub fn enabled(&self) -> bool {
        self.window > 0
    }

    /// The body to keep for a message entering the ready queue at `position` (0 = head):
    /// persisted messages beyond the window keep only their index entry.
    pub fn admit(&mut self, msg: Arc<Message>, persisted: bool, position: usize) -> Body {
        if !persisted || !self.enabled() || position < self.window {
            return Body::Loaded(msg);
        }
        self.paged += 1;
        Body::Paged {
            size: u32::try_from(msg.body_size()).unwrap_or(u32::MAX),
            priority: msg.properties.priority().unwrap_or(0),
        }
    }

    /// Records seqs that are durable at startup (recovered from the log).
    pub fn recovered_upto(&self, seq: u64) {
        self.durable.upto.fetch_max(seq, Relaxed);
    }

    /// Run by the store completion of an append whose highest seq is `hi` (success or not:
    /// a failed append's seqs read back as lost). Wakes the queue if the pager waits for it.
    pub fn appended(&self) -> impl Fn(u64, &QueueHandle) + Send + 'static {
        let durable = self.durable.clone();
        move |hi, me| {
            durable.upto.fetch_max(hi, Relaxed);
            if durable.waiting.swap(false, Relaxed) {
                me.send_control(QueueCmd::Wake);
            }
        }
    }

    /// Whether the head entry can be delivered now.
    pub fn head(&self, id: u64, body: &Body) -> Head {
        match body {
            Body::Loaded(_) => Head::Ready,
            Body::Paged { .. } if self.cache.contains_key(&id) => Head::Ready,
            Body::Paged { .. } if self.lost.contains(&id) => Head::Lost,
            Body::Paged { .. } => Head::Wait,
        }
    }

    /// The message of an entry leaving the ready queue, from memory or the cache; the entry's
    /// body becomes [`Body::Loaded`]. `None` if it is paged and not read back yet (or lost).
    pub fn take(&mut self, id: u64, body: &mut Body) -> Option<Arc<Message>> {
        if let Body::Paged { .. } = body {
            self.lost.remove(&id);
            *body = Body::Loaded(self.cache.remove(&id)?);
            self.paged = self.paged.saturating_sub(1);
        }
        body.loaded().cloned()
    }

    /// Like [`take`](Self::take), but reads a paged body synchronously if needed (basic.get,
    /// dead-lettering). Blocks the caller on one record read.
    pub fn load_now(
        &mut self,
        store: &StoreHandle,
        key: &str,
        id: u64,
        body: &mut Body,
    ) -> Option<Arc<Message>> {
        if let Some(m) = self.take(id, body) {
            return Some(m);
        }
        let mut reader = store.reader().seq_reader(&key.to_string());
        let (_, res) = reader.read(&[id]).pop()?;
        self.paged = self.paged.saturating_sub(1);
        let msg = restore(id, res)?;
        *body = Body::Loaded(msg.clone());
        Some(msg)
    }

    /// Forgets an entry that left the queue without being delivered.
    pub fn forget(&mut self, id: u64, body: &Body) {
        if let Body::Paged { .. } = body {
            self.cache.remove(&id);
            self.lost.remove(&id);
            self.paged = self.paged.saturating_sub(1);
        }
    }

    /// Starts reading the missing bodies of the window, if none is being read. `ready` yields
    /// the ready entries in delivery order.
    pub fn prefetch<'a>(&mut self, ready: impl Iterator<Item = (u64, &'a Body)>, me: &QueueHandle) {
        if self.paged == 0 || self.reader.is_none() {
            return;
        }
        let upto = self.durable.upto.load(Relaxed);
        let mut window = HashSet::new();
        let mut wanted = Vec::new();
        let mut blocked = false;
        let mut head_missing = false;
        let mut seen = 0;
        for (pos, (id, body)) in ready.take(self.window).enumerate() {
            seen = pos + 1;
            if let Body::Paged { .. } = body {
                window.insert(id);
                if self.cache.contains_key(&id) || self.lost.contains(&id) {
                    continue;
                }
                if id > upto {
                    blocked = true;
                    continue;
                }
                head_missing |= pos == 0;
                wanted.push(id);
            }
        }
        if seen == 0 {
            self.paged = 0; // the queue is empty (purged)
        }
        self.cache.retain(|id, _| window.contains(id));
        self.lost.retain(|id| window.contains(id));
        if blocked {
            self.durable.waiting.store(true, Relaxed);
            // A completion may have moved the watermark before `waiting` was set.
            if self.durable.upto.load(Relaxed) != upto {
                self.durable.waiting.store(false, Relaxed);
                me.send_control(QueueCmd::Wake);
            }
        }
        // Read in batches worth the trip (a quarter of the window), unless the head waits.
        if wanted.is_empty() || (wanted.len() < self.window / 4 && !head_missing) {
            return;
        }
        let mut reader = self.reader.take().expect("checked above");
        let me = me.clone();
        tokio::task::spawn_blocking(move || {
            let loaded = reader
                .read(&wanted)
                .into_iter()
                .map(|(id, res)| (id, restore(id, res)))
                .collect();
            me.send_control(QueueCmd::PagedIn(Box::new(PageIn { reader, loaded })));
        });
    }

    /// Takes the bodies read back (the actor got [`QueueCmd::PagedIn`]).
    pub fn paged_in(&mut self, batch: PageIn) {
        self.reader = Some(batch.reader);
        for (id, msg) in batch.loaded {
            match msg {
                Some(m) => {
                    self.cache.insert(id, m);
                }
                None => {
                    self.lost.insert(id);
                }
            }
        }
        debug!(cached = self.cache.len(), "bodies paged in");
    }
}

/// A message from a read-back record, or `None` (logged) if it could not be read.
fn restore(id: u64, res: std::io::Result<crate::store::StoredMessage>) -> Option<Arc<Message>> {
    match res {
        Ok(m) => {
            let msg = Message::restore(&m.exchange, &m.routing_key, m.header, m.body);
            if msg.is_none() {
                error!(
                    seq = id,
                    "dropping paged message with undecodable properties"
                );
            }
            msg
        }
        Err(e) => {
            error!(seq = id, error = %e, "cannot read a paged message back from the store; dropping it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec;
    use crate::store::{FsyncMode, Store, StoredMessage};
    use amq_protocol::protocol::basic::AMQPProperties;
    use bytes::Bytes;
    use tokio::sync::mpsc;

    fn message(i: u64) -> Arc<Message> {
        let props = AMQPProperties::default()
            .with_delivery_mode(2)
            .with_priority((i % 5) as u8);
        let body = Bytes::from(format!("body-{i}").repeat(i as usize % 3 + 1));
        Message::new(
            "ex",
            "rk",
            codec::content_header(body.len() as u64, props),
            body,
        )
    }

    fn stored(seq: u64, m: &Message) -> StoredMessage {
        StoredMessage {
            seq,
            header: m.raw_properties.clone(),
            body: m.body.clone(),
            exchange: m.exchange.to_string(),
            routing_key: m.routing_key.to_string(),
            delivery_count: 0,
            redelivered: false,
        }
    }

    /// A queue handle whose control lane the test reads.
    fn handle() -> (QueueHandle, mpsc::UnboundedReceiver<QueueCmd>) {
        let (tx, _rx) = mpsc::channel(1);
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let info = super::super::QueueInfo {
            name: "q".into(),
            vhost: "/".into(),
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: Default::default(),
            args: Default::default(),
        };
        let h = QueueHandle {
            id: 1,
            info: Arc::new(info),
            gauge: Arc::default(),
            tx,
            ctl,
        };
        (h, ctl_rx)
    }

    #[test]
    fn admit_pages_only_persisted_messages_beyond_the_window() {
        let off = Pager::new(None, 4);
        assert!(!off.enabled());
        let dir = tempfile::tempdir().unwrap();
        let (_store, h, _) = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let mut p = Pager::new(Some((&h, "/q")), 4);
        let m = message(7);
        assert!(matches!(p.admit(m.clone(), true, 3), Body::Loaded(_)));
        assert!(matches!(p.admit(m.clone(), false, 100), Body::Loaded(_)));
        let b = p.admit(m.clone(), true, 4);
        assert!(b.loaded().is_none());
        assert_eq!(b.body_size(), m.body_size());
        assert_eq!(b.priority(), 2);
        assert_eq!(p.head(9, &b), Head::Wait);
        let mut b2 = b.clone();
        assert!(p.take(9, &mut b2).is_none(), "not read back yet");
        assert_eq!(p.paged, 1);
        p.forget(9, &b);
        assert_eq!(p.paged, 0);
        let mut disabled = Pager::new(None, 4);
        assert!(matches!(disabled.admit(m, true, 100), Body::Loaded(_)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefetch_reads_the_window_back_after_the_append_completes() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, store, _) = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let (me, mut ctl) = handle();
        let mut p = Pager::new(Some((&store, "/q")), 4);
        let msgs: Vec<_> = (1..=20).map(message).collect();
        let mut ready: Vec<(u64, Body)> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| (i as u64 + 1, p.admit(m.clone(), true, i)))
            .collect();
        assert_eq!(p.paged, 16);
        // Nothing is durable yet: no read, but a wake-up once the append completes.
        ready.drain(..4);
        p.prefetch(ready.iter().map(|(id, b)| (*id, b)), &me);
        assert!(ctl.try_recv().is_err());
        let (tx, rx) = std::sync::mpsc::channel();
        let appended = p.appended();
        let me2 = me.clone();
        store.append(
            &"/q".to_string(),
            msgs.iter()
                .enumerate()
                .map(|(i, m)| stored(i as u64 + 1, m))
                .collect(),
            Some(Box::new(move |r| {
                appended(20, &me2);
                tx.send(r).unwrap();
            })),
        );
        rx.recv().unwrap().unwrap();
        assert!(matches!(ctl.recv().await, Some(QueueCmd::Wake)));
        // Now the window (ids 5..=8) is read back in one batch.
        p.prefetch(ready.iter().map(|(id, b)| (*id, b)), &me);
        match ctl.recv().await {
            Some(QueueCmd::PagedIn(batch)) => p.paged_in(*batch),
            other => panic!("expected PagedIn, got {other:?}"),
        }
        for (id, body) in ready.iter_mut().take(4) {
            assert_eq!(p.head(*id, body), Head::Ready);
            let m = p.take(*id, body).expect("read back");
            let want = &msgs[*id as usize - 1];
            assert_eq!(m.body, want.body);
            assert_eq!(m.raw_properties, want.raw_properties);
            assert_eq!(m.properties.priority(), want.properties.priority());
        }
        assert_eq!(p.paged, 12);
        // Sliding on: the next window is read, entries outside it are not cached.
        ready.drain(..4);
        p.prefetch(ready.iter().map(|(id, b)| (*id, b)), &me);
        match ctl.recv().await {
            Some(QueueCmd::PagedIn(batch)) => p.paged_in(*batch),
            other => panic!("expected PagedIn, got {other:?}"),
        }
        assert_eq!(p.cache.len(), 4);
        assert!(p.cache.contains_key(&9) && !p.cache.contains_key(&13));
        // A seq the store does not have comes back lost, not as a hang.
        let mut ghost = vec![(
            99u64,
            Body::Paged {
                size: 1,
                priority: 0,
            },
        )];
        p.paged += 1;
        p.prefetch(ghost.iter().map(|(id, b)| (*id, b)), &me);
        assert!(ctl.try_recv().is_err(), "99 is above the durable watermark");
        p.recovered_upto(99);
        p.prefetch(ghost.iter().map(|(id, b)| (*id, b)), &me);
        match ctl.recv().await {
            Some(QueueCmd::PagedIn(batch)) => p.paged_in(*batch),
            other => panic!("expected PagedIn, got {other:?}"),
        }
        assert_eq!(p.head(99, &ghost[0].1), Head::Lost);
        let (id, body) = ghost.pop().unwrap();
        p.forget(id, &body);
    }
}
