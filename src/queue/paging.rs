//! Message bodies of a queue: in memory near the head, on disk further back.
//!
//! A queue keeps the bodies of only its first `storage.queue_memory_window` ready messages in
//! memory. Further back, an entry can be a compact index entry (id, size, priority, expiry,
//! flags: the actor's `Entry` with a [`Body::Paged`]) whose body lives on disk:
//!
//! - **persistent messages in durable queues** always, in the queue's own log (they are
//!   written there anyway);
//! - **transient messages** (and persistent ones in non-durable queues) beyond the larger
//!   `storage.transient_memory_window` (a queue whose consumers keep up never gets there, so
//!   it never pays a write and a read per message), or beyond the memory window while the
//!   broker's memory is above the paging watermark ([`ResourceAlarms::memory_pressure`]), in a
//!   separate *page log* of the store (key [`page_key`]): a scratch log, never fsynced, deleted
//!   with the queue and at startup.
//!
//! The [`Pager`] reads bodies back before they reach the head: after each round of work the
//! actor calls [`Pager::prefetch`] with its ready messages in delivery order; the pager asks a
//! blocking-pool task to read the missing bodies of the window (one sequential pass over the
//! segment files per log with a [`SeqReader`]), and the result comes back to the actor as
//! [`QueueCmd::PagedIn`] on its control lane. The actor never waits on the disk, except for the
//! rare `basic.get` or dead-lettering of a message that was not prefetched yet
//! ([`Pager::load_now`]).
//!
//! Invariants:
//! - A body is dropped only at enqueue time, after its record was handed to the store; a read
//!   is only issued for seqs whose append has completed (per-log watermarks), so a record is
//!   never read while it is being written.
//! - Unacked messages always hold their message (a delivered entry is [`Body::Loaded`]).
//! - The cache holds bodies only for entries in the window; it is trimmed on every scan.
//! - Page-log records are acked as soon as their body is back in memory or the entry is gone,
//!   so page-log segments are deleted as the queue drains.

use super::{QueueCmd, QueueHandle};
use crate::alarm::ResourceAlarms;
use crate::message::Message;
use crate::store::{QueueKey, SeqReader, StoreHandle, StoredMessage};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tracing::{debug, error};

/// Prefix of page-log keys in the store (real queue keys start with a digit). It makes page
/// logs store *scratch* logs ([`crate::store::is_scratch`]), which are never fsynced.
pub const PAGE_KEY_PREFIX: &str = "\u{0}page/";

/// The store key of the page log of queue instance `id` with store key `key`.
pub fn page_key(id: u64, key: &str) -> QueueKey {
    format!("{PAGE_KEY_PREFIX}{id}/{key}")
}

/// A ready message's body: in memory, or only on disk.
#[derive(Debug, Clone)]
pub enum Body {
    /// The whole message is in memory.
    Loaded(Arc<Message>),
    /// Only on disk; the index keeps what the queue needs without it.
    Paged {
        /// Body size in bytes (for `x-max-length-bytes`).
        size: u32,
        /// The message's `priority` property (0 if absent).
        priority: u8,
        /// `0`: in the queue's durable log, under its id. Otherwise the seq of its record in
        /// the page log (page-log seqs are the pager's own, so older messages can be paged
        /// out after newer ones).
        page_seq: u64,
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

/// The readers of both logs, moved into the read task while a read is in flight.
#[derive(Debug)]
struct Readers {
    log: Option<SeqReader>,
    page: SeqReader,
}

/// Bodies read back from disk, on their way to the queue actor.
#[derive(Debug)]
pub struct PageIn {
    readers: Readers,
    /// `(id, message)`; `None` when the record could not be read.
    loaded: Vec<(u64, Option<Arc<Message>>)>,
}

/// Append watermarks shared with the store completions of a queue's appends.
#[derive(Debug, Default)]
struct Durable {
    /// Every seq up to this one has had its append to the durable log completed.
    log: AtomicU64,
    /// The same for the page log.
    page: AtomicU64,
    /// The pager is waiting for appends to complete before it can read: wake the queue.
    waiting: AtomicBool,
}

impl Durable {
    fn raise(&self, page: bool, hi: u64, me: &QueueHandle) {
        let mark = if page { &self.page } else { &self.log };
        mark.fetch_max(hi, Relaxed);
        if self.waiting.swap(false, Relaxed) {
            me.send_control(QueueCmd::Wake);
        }
    }
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

/// Where a queue's bodies can go (see [`Pager::new`]).
#[derive(Debug, Clone)]
pub struct PagingSetup {
    /// The store.
    pub store: StoreHandle,
    /// The queue's durable log key, for a durable queue.
    pub log_key: Option<QueueKey>,
    /// The page-log key ([`page_key`]).
    pub page_key: QueueKey,
    /// Messages from the head whose bodies stay in memory (0 = never page).
    pub window: usize,
    /// Messages from the head whose transient bodies stay in memory without memory pressure
    /// (`storage.transient_memory_window`; 0 = paged only under memory pressure).
    pub transient_window: usize,
    /// Memory watermarks (transient messages are paged under memory pressure).
    pub alarms: Option<Arc<ResourceAlarms>>,
}

/// Pages bodies of a queue out and back in (see the module docs).
#[derive(Debug)]
pub struct Pager {
    /// Messages from the head whose bodies stay (or are brought back) in memory; 0 = paging off.
    window: usize,
    setup: Option<PagingSetup>,
    /// Bodies read back for paged entries in the window.
    cache: HashMap<u64, Arc<Message>>,
    /// Ids whose bodies could not be read back.
    lost: HashSet<u64>,
    /// The readers, `None` while a read is in flight.
    readers: Option<Readers>,
    /// Ready entries that are [`Body::Paged`] (an upper bound: purges do not report).
    paged: usize,
    /// Paged entries that left the ready queue since the window was last scanned.
    since_scan: usize,
    durable: Arc<Durable>,
    /// Transient messages to write to the page log at the end of this round.
    page_out: Vec<StoredMessage>,
    /// Page-log records no longer needed.
    page_acks: Vec<u64>,
    /// The page log may exist on disk.
    page_log_used: bool,
    /// Seq of the next page-log record.
    next_page_seq: u64,
    /// When ready messages already in memory were last paged out (see
    /// [`Pager::page_out_existing`]).
    last_sweep: Option<std::time::Instant>,
}

impl Pager {
    /// A pager; without a setup (no store) or with a zero window nothing is ever paged.
    pub fn new(setup: Option<PagingSetup>) -> Self {
        let setup = setup.filter(|s| s.window > 0);
        let readers = setup.as_ref().map(|s| Readers {
            log: s.log_key.as_ref().map(|k| s.store.reader().seq_reader(k)),
            page: s.store.reader().seq_reader(&s.page_key),
        });
        Pager {
            window: setup.as_ref().map_or(0, |s| s.window),
            setup,
            cache: HashMap::new(),
            lost: HashSet::new(),
            readers,
            paged: 0,
            since_scan: usize::MAX,
            durable: Arc::default(),
            page_out: Vec::new(),
            page_acks: Vec::new(),
            page_log_used: false,
            next_page_seq: 1,
            last_sweep: None,
        }
    }

    /// Whether paging is on for this queue.
    pub fn enabled(&self) -> bool {
        self.window > 0
    }

    /// Messages from the head whose bodies are kept in memory (0 = paging off).
    pub fn window(&self) -> usize {
        self.window
    }

    /// The body to keep for a message entering the ready queue at `position` (0 = head).
    /// Beyond the window, a `persisted` message (already on its way to the durable log) keeps
    /// only its index entry, and so does any other message beyond the transient window or
    /// while memory is under pressure (it is written to the page log at the end of the round).
    pub fn admit(&mut self, msg: Arc<Message>, persisted: bool, position: usize) -> Body {
        let Some(setup) = &self.setup else {
            return Body::Loaded(msg);
        };
        if position < self.window {
            return Body::Loaded(msg);
        }
        let beyond_transient_window =
            setup.transient_window > 0 && position >= setup.transient_window.max(self.window);
        let pressure = || setup.alarms.as_ref().is_some_and(|a| a.memory_pressure());
        if persisted || beyond_transient_window || pressure() {
            self.page_out_one(&msg, persisted)
        } else {
            Body::Loaded(msg)
        }
    }

    /// The body of a message recovered without it: it is in the queue's durable log.
    pub fn recovered_paged(&mut self, size: u32, priority: u8) -> Body {
        self.paged += 1;
        Body::Paged {
            size,
            priority,
            page_seq: 0,
        }
    }

    /// Drops the body of `msg` from memory: a persisted one is in the durable log already;
    /// any other is queued for the page log.
    fn page_out_one(&mut self, msg: &Message, persisted: bool) -> Body {
        let page_seq = if persisted {
            0
        } else {
            let seq = self.next_page_seq;
            self.next_page_seq += 1;
            self.page_out.push(StoredMessage {
                seq,
                header: msg.raw_properties.clone(),
                body: msg.body.clone(),
                exchange: msg.exchange.to_string(),
                routing_key: msg.routing_key.to_string(),
                delivery_count: 0,
                redelivered: false,
            });
            seq
        };
        self.paged += 1;
        Body::Paged {
            size: u32::try_from(msg.body_size()).unwrap_or(u32::MAX),
            priority: msg.properties.priority().unwrap_or(0),
            page_seq,
        }
    }

    /// Under memory pressure, pages out the bodies still in memory beyond the window (messages
    /// that arrived before the pressure began, or were requeued there), as RabbitMQ pages a
    /// queue out when it passes the paging watermark. At most once a second: it walks the
    /// whole ready queue. `ready` yields `(id, persisted, body)` in delivery order.
    pub fn page_out_existing<'a>(
        &mut self,
        ready: impl Iterator<Item = (u64, bool, &'a mut Body)>,
    ) {
        let Some(setup) = &self.setup else { return };
        if !setup.alarms.as_ref().is_some_and(|a| a.memory_pressure())
            || self
                .last_sweep
                .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(std::time::Instant::now());
        let has_log = setup.log_key.is_some();
        let mut n = 0;
        for (_, persisted, body) in ready.skip(self.window) {
            if let Body::Loaded(msg) = body {
                let msg = msg.clone();
                *body = self.page_out_one(&msg, persisted && has_log);
                n += 1;
            }
        }
        if n > 0 {
            debug!(messages = n, "paged out under memory pressure");
        }
    }

    /// Records seqs that are durable at startup (recovered from the log).
    pub fn recovered_upto(&self, seq: u64) {
        self.durable.log.fetch_max(seq, Relaxed);
    }

    /// Run by the store completion of a durable-log append whose highest seq is `hi` (success
    /// or not: a failed append's seqs read back as lost). Wakes the queue if the pager waits.
    pub fn appended(&self) -> impl Fn(u64, &QueueHandle) + Send + 'static {
        let durable = self.durable.clone();
        move |hi, me| durable.raise(false, hi, me)
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

    /// A paged entry becomes loaded or leaves the queue.
    fn unpage(&mut self, page_seq: u64) {
        self.paged = self.paged.saturating_sub(1);
        self.since_scan = self.since_scan.saturating_add(1);
        if page_seq != 0 {
            self.page_acks.push(page_seq);
        }
    }

    /// The message of an entry leaving the ready queue, from memory or the cache; the entry's
    /// body becomes [`Body::Loaded`]. `None` if it is paged and not read back yet (or lost).
    pub fn take(&mut self, id: u64, body: &mut Body) -> Option<Arc<Message>> {
        if let Body::Paged { page_seq, .. } = *body {
            self.lost.remove(&id);
            *body = Body::Loaded(self.cache.remove(&id)?);
            self.unpage(page_seq);
        }
        body.loaded().cloned()
    }

    /// Like [`take`](Self::take), but reads a paged body synchronously if needed (basic.get,
    /// dead-lettering). Blocks the caller on one record read.
    pub fn load_now(&mut self, id: u64, body: &mut Body) -> Option<Arc<Message>> {
        if let Some(m) = self.take(id, body) {
            return Some(m);
        }
        let Body::Paged { page_seq, .. } = *body else {
            return None;
        };
        let transient = page_seq != 0;
        if transient {
            self.flush_page_out(None);
        }
        let setup = self.setup.as_ref()?;
        let key = if transient {
            &setup.page_key
        } else {
            setup.log_key.as_ref()?
        };
        let mut reader = setup.store.reader().seq_reader(key);
        if transient {
            // The record may still be on its way to the file: wait for the store.
            let (tx, rx) = std::sync::mpsc::channel();
            setup.store.flush(Box::new(move |_| {
                let _ = tx.send(());
            }));
            let _ = rx.recv();
        }
        let (_, res) = reader
            .read(&[if transient { page_seq } else { id }])
            .pop()?;
        self.unpage(page_seq);
        let msg = restore(id, res)?;
        *body = Body::Loaded(msg.clone());
        Some(msg)
    }

    /// Forgets an entry that left the queue without being delivered.
    pub fn forget(&mut self, id: u64, body: &Body) {
        if let Body::Paged { page_seq, .. } = *body {
            self.cache.remove(&id);
            self.lost.remove(&id);
            self.unpage(page_seq);
        }
    }

    /// The queue is being deleted: delete its page log too.
    pub fn drop_page_log(&mut self) {
        if let (Some(setup), true) = (&self.setup, self.page_log_used) {
            setup.store.delete_queue(&setup.page_key);
            self.page_log_used = false;
        }
    }

    /// Hands this round's page-outs and page-log acks to the store.
    fn flush_page_out(&mut self, me: Option<&QueueHandle>) {
        let Some(setup) = &self.setup else { return };
        if !self.page_out.is_empty() {
            let msgs = std::mem::take(&mut self.page_out);
            let hi = msgs.last().map_or(0, |m| m.seq);
            let (durable, me) = (self.durable.clone(), me.cloned());
            setup.store.append(
                &setup.page_key,
                msgs,
                Some(Box::new(move |res| {
                    if let Err(e) = &res {
                        error!(error = %e, "cannot page messages out; they will be dropped");
                    }
                    match &me {
                        Some(me) => durable.raise(true, hi, me),
                        None => {
                            durable.page.fetch_max(hi, Relaxed);
                        }
                    }
                })),
            );
            self.page_log_used = true;
        }
        if !self.page_acks.is_empty() {
            setup
                .store
                .ack(&setup.page_key, std::mem::take(&mut self.page_acks));
        }
    }

    /// Writes this round's page-outs, and starts reading the missing bodies of the window if
    /// none is being read. `ready` yields the ready entries in delivery order.
    ///
    /// Cost: the window is scanned only when the head waits for its body or a quarter of a
    /// window has been delivered since the last scan, so this is O(1) per message amortised.
    pub fn prefetch<'a>(&mut self, ready: impl Iterator<Item = (u64, &'a Body)>, me: &QueueHandle) {
        if self.setup.is_none() {
            return;
        }
        self.flush_page_out(Some(me));
        if self.paged == 0 || self.readers.is_none() {
            return;
        }
        let mut ready = ready.peekable();
        let head_waits = matches!(ready.peek(), Some((id, Body::Paged { .. }))
            if !self.cache.contains_key(id) && !self.lost.contains(id));
        if !head_waits && self.since_scan < self.window / 4 {
            return;
        }
        self.since_scan = 0;
        let (log_upto, page_upto) = (
            self.durable.log.load(Relaxed),
            self.durable.page.load(Relaxed),
        );
        let mut window = HashSet::new();
        let (mut wanted_log, mut wanted_page) = (Vec::new(), Vec::new());
        let mut blocked = false;
        let mut head_missing = false;
        let mut seen = 0;
        for (pos, (id, body)) in ready.take(self.window).enumerate() {
            seen = pos + 1;
            if let Body::Paged { page_seq, .. } = *body {
                window.insert(id);
                if self.cache.contains_key(&id) || self.lost.contains(&id) {
                    continue;
                }
                let durable = if page_seq != 0 {
                    page_seq <= page_upto
                } else {
                    id <= log_upto
                };
                if !durable {
                    blocked = true;
                    continue;
                }
                head_missing |= pos == 0;
                if page_seq != 0 {
                    wanted_page.push((page_seq, id));
                } else {
                    wanted_log.push(id);
                }
            }
        }
        if seen == 0 {
            // The queue is empty (purged): nothing on disk is needed any more.
            self.paged = 0;
            self.drop_page_log();
        }
        self.cache.retain(|id, _| window.contains(id));
        self.lost.retain(|id| window.contains(id));
        if blocked {
            self.durable.waiting.store(true, Relaxed);
            // A completion may have moved a watermark before `waiting` was set.
            if (
                self.durable.log.load(Relaxed),
                self.durable.page.load(Relaxed),
            ) != (log_upto, page_upto)
            {
                self.durable.waiting.store(false, Relaxed);
                me.send_control(QueueCmd::Wake);
            }
        }
        // Read in batches worth the trip (a quarter of the window), unless the head waits.
        let n = wanted_log.len() + wanted_page.len();
        if n == 0 || (n < self.window / 4 && !head_missing) {
            return;
        }
        let mut readers = self.readers.take().expect("checked above");
        let me = me.clone();
        tokio::task::spawn_blocking(move || {
            let mut loaded = Vec::with_capacity(n);
            if let Some(log) = &mut readers.log {
                loaded.extend(log.read(&wanted_log));
            }
            if !wanted_page.is_empty() {
                let ids: HashMap<u64, u64> = wanted_page.iter().copied().collect();
                let seqs: Vec<u64> = wanted_page.iter().map(|(s, _)| *s).collect();
                loaded.extend(
                    readers
                        .page
                        .read(&seqs)
                        .into_iter()
                        .map(|(seq, res)| (ids[&seq], res)),
                );
            }
            let loaded = loaded
                .into_iter()
                .map(|(id, res)| (id, restore(id, res)))
                .collect();
            me.send_control(QueueCmd::PagedIn(Box::new(PageIn { readers, loaded })));
        });
    }

    /// Takes the bodies read back (the actor got [`QueueCmd::PagedIn`]).
    pub fn paged_in(&mut self, batch: PageIn) {
        self.readers = Some(batch.readers);
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
fn restore(id: u64, res: std::io::Result<StoredMessage>) -> Option<Arc<Message>> {
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
        let h = QueueHandle::new(1, Arc::new(info), Arc::default(), tx, ctl);
        (h, ctl_rx)
    }

    fn setup(
        store: &crate::store::StoreHandle,
        alarms: Option<Arc<ResourceAlarms>>,
    ) -> PagingSetup {
        PagingSetup {
            store: store.clone(),
            log_key: Some("/q".into()),
            page_key: page_key(1, "/q"),
            window: 4,
            transient_window: 0,
            alarms,
        }
    }

    #[test]
    fn admit_pages_transient_messages_beyond_the_transient_window() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, h, _) = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let mut p = Pager::new(Some(PagingSetup {
            transient_window: 50,
            ..setup(&h, None)
        }));
        let m = message(7);
        assert!(matches!(p.admit(m.clone(), false, 49), Body::Loaded(_)));
        assert!(p.page_out.is_empty());
        let b = p.admit(m.clone(), false, 50);
        assert!(matches!(b, Body::Paged { page_seq: 1, .. }), "{b:?}");
        assert_eq!(p.page_out.len(), 1);
        // A transient window below the memory window acts as the memory window.
        let mut p = Pager::new(Some(PagingSetup {
            transient_window: 2,
            ..setup(&h, None)
        }));
        assert!(matches!(p.admit(m.clone(), false, 3), Body::Loaded(_)));
        assert!(matches!(p.admit(m, false, 4), Body::Paged { .. }));
    }

    #[test]
    fn admit_pages_only_persisted_messages_beyond_the_window() {
        let off = Pager::new(None);
        assert!(!off.enabled());
        let dir = tempfile::tempdir().unwrap();
        let (_store, h, _) = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let mut p = Pager::new(Some(setup(&h, None)));
        let m = message(7);
        assert!(matches!(p.admit(m.clone(), true, 3), Body::Loaded(_)));
        assert!(matches!(p.admit(m.clone(), false, 100), Body::Loaded(_)));
        assert!(p.page_out.is_empty());
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
        let mut disabled = Pager::new(None);
        assert!(matches!(disabled.admit(m, true, 100), Body::Loaded(_)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefetch_reads_the_window_back_after_the_append_completes() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, store, _) = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let (me, mut ctl) = handle();
        let mut p = Pager::new(Some(setup(&store, None)));
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
                page_seq: 0,
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transient_messages_are_paged_out_only_under_memory_pressure() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, store, _) = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let (me, mut ctl) = handle();
        let alarms = Arc::new(ResourceAlarms::new(&Default::default()));
        let mut p = Pager::new(Some(setup(&store, Some(alarms.clone()))));
        alarms.check(dir.path());
        let m = message(1);
        assert!(matches!(p.admit(m.clone(), false, 10), Body::Loaded(_)));
        // Pressure: paging watermark below the process's RSS.
        alarms.set_memory_high_watermark(crate::alarm::Watermark::Absolute(1));
        alarms.check(dir.path());
        let msgs: Vec<_> = (2..=9).map(message).collect();
        let mut ready: Vec<(u64, Body)> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| (i as u64 + 2, p.admit(m.clone(), false, 4 + i)))
            .collect();
        assert!(ready
            .iter()
            .all(|(_, b)| matches!(b, Body::Paged { page_seq: 1.., .. })));
        assert_eq!(p.page_out.len(), 8);
        // The round ends: page-outs go to the page log; the head waits for them, then reads.
        p.prefetch(ready.iter().map(|(id, b)| (*id, b)), &me);
        assert!(p.page_out.is_empty());
        loop {
            match ctl.recv().await {
                Some(QueueCmd::Wake) => p.prefetch(ready.iter().map(|(id, b)| (*id, b)), &me),
                Some(QueueCmd::PagedIn(batch)) => {
                    p.paged_in(*batch);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        for (id, body) in ready.iter_mut().take(4) {
            let got = p.take(*id, body).expect("paged in");
            assert_eq!(got.body, msgs[*id as usize - 2].body);
        }
        assert_eq!(p.page_acks, vec![1, 2, 3, 4], "page-log seqs of ids 2..=5");
        // A synchronous read (basic.get) of one not prefetched yet.
        let (id, body) = &mut ready[6];
        let got = p.load_now(*id, body).expect("read synchronously");
        assert_eq!(got.body, msgs[6].body);
        // Messages that were already in memory beyond the window are paged out too.
        let mut early: Vec<Body> = (0..6).map(|i| Body::Loaded(message(i))).collect();
        p.page_out_existing(
            early
                .iter_mut()
                .enumerate()
                .map(|(i, b)| (i as u64 + 100, false, b)),
        );
        assert!(early[..4].iter().all(|b| b.loaded().is_some()));
        assert!(matches!(early[4], Body::Paged { page_seq: 9, .. }));
        assert!(matches!(early[5], Body::Paged { page_seq: 10, .. }));
        // At most one sweep a second.
        let mut more = vec![Body::Loaded(message(1)); 6];
        p.page_out_existing(more.iter_mut().map(|b| (0, false, b)));
        assert!(more.iter().all(|b| b.loaded().is_some()));
        p.drop_page_log();
        assert!(!p.page_log_used);
    }
}
