//! The queue task: owns ready messages, consumers and unacked deliveries.
//!
//! Invariants: `ready` is a [`ReadyQueue`]: ordered by priority (queues with
//! `x-max-priority`), then by message id (requeued messages return to their
//! original position, as in RabbitMQ); every id is either in `ready`, in
//! `unacked`, or gone. `consumers` is sorted by consumer priority (`x-priority`,
//! highest first), then registration order. Deliveries are grouped into one
//! `ConnEvent::Deliver` per connection per dispatch round. The actor never waits
//! on a connection: it only uses unbounded sends to connection inboxes, so no
//! cycle of bounded channels can deadlock.

use super::args::{Overflow, QueueArgs, QueueType};
use super::dead_letter::{self, Reason};
use super::limiter::Credit;
use super::paging::{Body, Head, Pager, PagingSetup};
use super::ready::{HasId, ReadyQueue, Slot};
use super::{
    ChanKey, ConnEvent, ConnHandle, ConsumerSpec, Delivery, GetResult, PublishBatch, QueueCmd,
    QueueHandle, QueueInfo, Settle,
};
use crate::broker::VHost;
use crate::message::Message;
use crate::protocol::{AmqpError, ReplyCode};
use crate::store::{PagedRecord, QueueKey, RecoveredQueue, StoreHandle, StoredMessage};
use amq_protocol::types::AMQPValue;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, Instrument};

/// Capacity of a queue's inbox, in commands (each command may carry a batch).
pub const INBOX_CAPACITY: usize = 1024;

/// Called when the queue removes itself (auto-delete); unregisters it from its vhost.
pub type OnAutoDelete = Box<dyn FnOnce(&QueueHandle) + Send>;

#[derive(Debug)]
struct Entry {
    id: u64,
    /// The message, or only its index data when the body is paged out (`queue/paging.rs`).
    msg: Body,
    redelivered: bool,
    /// Written to this queue's log (persistent message in a durable queue).
    persisted: bool,
    /// How many times it was handed to a consumer.
    deliveries: u32,
    /// When it expires (queue `x-message-ttl` or the message's `expiration`).
    expires_at: Option<Instant>,
}

impl HasId for Entry {
    fn id(&self) -> u64 {
        self.id
    }
    fn body_size(&self) -> u64 {
        self.msg.body_size()
    }
    fn priority(&self) -> u8 {
        self.msg.priority()
    }
    /// A paged message that was never delivered and has no expiry: its body is on disk
    /// (page seq 0 = in the durable log under its id) and nothing else needs keeping.
    fn compact(&self) -> Option<Slot> {
        match self.msg {
            Body::Paged {
                size,
                priority,
                page_seq,
            } if !self.redelivered
                && self.deliveries == 0
                && self.expires_at.is_none()
                && self.persisted == (page_seq == 0) =>
            {
                Some(Slot {
                    page_seq,
                    size,
                    priority,
                })
            }
            _ => None,
        }
    }
    fn expand(id: u64, slot: Slot) -> Self {
        Entry {
            id,
            msg: Body::Paged {
                size: slot.size,
                priority: slot.priority,
                page_seq: slot.page_seq,
            },
            redelivered: false,
            persisted: slot.page_seq == 0,
            deliveries: 0,
            expires_at: None,
        }
    }
}

/// A queue's link to the message store: its durable log (durable queues) and its page log.
pub struct QueueStore {
    /// The store.
    pub handle: StoreHandle,
    /// This queue's key in the store.
    pub key: QueueKey,
    /// Messages from the head whose bodies stay in memory (`storage.queue_memory_window`).
    pub window: usize,
    /// Messages from the head whose transient bodies stay in memory
    /// (`storage.transient_memory_window`; 0 = paged only under memory pressure).
    pub transient_window: usize,
    /// Persistent messages are written to the durable log `key` (durable, non-exclusive queue).
    pub durable: bool,
    /// Memory watermarks, for paging transient messages out under memory pressure.
    pub alarms: Option<Arc<crate::alarm::ResourceAlarms>>,
}

#[derive(Debug)]
struct Unacked {
    entry: Entry,
    chan_key: ChanKey,
    consumer_tag: Option<Arc<str>>,
}

#[derive(Debug)]
struct Consumer {
    spec: ConsumerSpec,
    unacked: u32,
    /// Registration order (single active consumer takes over in this order).
    seq: u64,
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.spec.no_ack || self.spec.prefetch == 0 || self.unacked < self.spec.prefetch
    }
}

struct Queue {
    me: QueueHandle,
    ready: ReadyQueue<Entry>,
    unacked: HashMap<u64, Unacked>,
    /// Sorted by `spec.priority` (highest first), then `seq`.
    consumers: Vec<Consumer>,
    /// Round-robin cursor: the index to try first within its priority group.
    next_consumer: usize,
    next_consumer_seq: u64,
    /// `x-single-active-consumer`: the `seq` of the consumer that receives.
    active_consumer: Option<u64>,
    next_id: u64,
    had_consumer: bool,
    on_auto_delete: Option<OnAutoDelete>,
    store: Option<QueueStore>,
    vhost: Weak<VHost>,
    /// `x-message-deduplication`: keys of the messages in the queue (and within the TTL).
    dedup: Option<super::dedup::DedupCache>,
    /// `x-expires`: when the queue deletes itself if it stays unused.
    unused_until: Option<Instant>,
    /// `consumers` index ranges of equal priority, highest first (with a
    /// single active consumer: just that one).
    groups: Vec<(usize, usize)>,
    /// Dispatch scratch, reused: consumers and groups found blocked in this round.
    blocked: Vec<bool>,
    group_blocked: Vec<bool>,
    /// Keeps bodies beyond the in-memory window on disk only.
    pager: Pager,
}

/// Starts a queue task and returns its handle. A durable queue gets its store
/// link and what was recovered from its log.
pub fn spawn(
    id: super::QueueId,
    info: QueueInfo,
    vhost: Weak<VHost>,
    on_auto_delete: OnAutoDelete,
    store: Option<QueueStore>,
    recovered: Option<RecoveredQueue>,
) -> QueueHandle {
    let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
    let (ctl, ctl_rx) = mpsc::unbounded_channel();
    let handle = QueueHandle::new(
        id,
        Arc::new(info),
        Arc::new(super::QueueGauge::default()),
        tx,
        ctl,
    );
    let span = tracing::info_span!("queue", vhost = %handle.info.vhost, name = %handle.info.name);
    let mut pager = Pager::new(store.as_ref().map(|s| PagingSetup {
        store: s.handle.clone(),
        log_key: s.durable.then(|| s.key.clone()),
        page_key: super::paging::page_key(id, &s.key),
        window: s.window,
        transient_window: s.transient_window,
        alarms: s.alarms.clone(),
    }));
    // Twice the pager's window in full entries, so its read-ahead always sees entries.
    let mut ready =
        ReadyQueue::new(handle.info.args.max_priority).with_compact_tail(2 * pager.window());
    let mut next_id = 1;
    let (mut recovered, paged) = recovered.map_or_else(Default::default, |r| (r.messages, r.paged));
    recovered.sort_unstable_by_key(|m| m.seq);
    let mut restored = Vec::with_capacity(recovered.len());
    for m in recovered {
        next_id = next_id.max(m.seq + 1);
        pager.recovered_upto(m.seq);
        match Message::restore(&m.exchange, &m.routing_key, m.header, m.body) {
            Some(msg) => restored.push((m.seq, m.redelivered, m.delivery_count, msg)),
            None => tracing::error!(
                seq = m.seq,
                "dropping recovered message with undecodable properties"
            ),
        }
    }
    let mut dedup = super::dedup::for_queue(
        &handle.info.args,
        restored.iter().map(|(id, _, _, msg)| (*id, &**msg)),
    );
    for (id, redelivered, delivery_count, msg) in restored {
        ready.push_back(Entry {
            id,
            expires_at: expiry(&handle.info.args, &msg),
            msg: pager.admit(msg, true, ready.len()),
            redelivered: redelivered || delivery_count > 0,
            persisted: true,
            deliveries: delivery_count,
        });
    }
    // Beyond the recovery window (after every whole message, in seq order): index entries
    // whose bodies are read back from the log when consumers get near them.
    for p in paged {
        next_id = next_id.max(p.seq + 1);
        pager.recovered_upto(p.seq);
        if let Some(entry) = paged_entry(&handle.info.args, p, &mut pager, dedup.as_mut()) {
            ready.push_back(entry);
        }
    }
    let mut queue = Queue {
        me: handle.clone(),
        ready,
        unacked: HashMap::new(),
        consumers: Vec::new(),
        next_consumer: 0,
        next_consumer_seq: 0,
        active_consumer: None,
        next_id,
        had_consumer: false,
        on_auto_delete: Some(on_auto_delete),
        store,
        vhost,
        dedup,
        unused_until: None,
        groups: Vec::new(),
        blocked: Vec::new(),
        group_blocked: Vec::new(),
        pager,
    };
    queue.touch();
    tokio::spawn(queue.run(rx, ctl_rx).instrument(span));
    handle
}

enum Flow {
    Continue,
    Stop,
}

impl Queue {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<QueueCmd>,
        mut ctl: mpsc::UnboundedReceiver<QueueCmd>,
    ) {
        debug!("queue started");
        let mut recovery_checked = false;
        let mut batch = Vec::with_capacity(64);
        let mut control = Vec::with_capacity(256);
        loop {
            // Control first: acks free consumer credit, which is what lets the
            // backlog of publishes drain.
            let next_expiry = self.ready.front().and_then(|e| e.expires_at);
            let unused_until = self.unused_until;
            let n = tokio::select! {
                biased;
                n = ctl.recv_many(&mut control, 256) => n,
                n = rx.recv_many(&mut batch, 16) => n,
                _ = sleep_until(next_expiry), if next_expiry.is_some() => usize::MAX,
                _ = sleep_until(unused_until), if unused_until.is_some() => usize::MAX,
            };
            if n == 0 {
                break;
            }
            if !recovery_checked {
                // Recovered messages already past the delivery limit (their last
                // delivery ended with the restart) leave as a return would make
                // them. Not before the first wake-up: at spawn, the vhost is still
                // restoring the bindings their dead-letter exchange may need.
                recovery_checked = true;
                self.over_delivery_limit();
            }
            batch.append(&mut control);
            let mut cmds = batch.drain(..);
            while let Some(cmd) = cmds.next() {
                if let Flow::Stop = self.handle(cmd) {
                    let rest: Vec<QueueCmd> = cmds.collect();
                    Self::release_pending(rest, &mut rx, &mut ctl);
                    debug!("queue stopped");
                    return;
                }
            }
            drop(cmds);
            self.expire();
            self.dispatch();
            self.pager.page_out_existing(
                self.ready
                    .iter_mut()
                    .map(|e| (e.id, e.persisted, &mut e.msg)),
            );
            self.pager
                .prefetch(self.ready.iter().map(|e| (e.id, &e.msg)), &self.me);
            self.me.gauge.update(self.ready.len(), self.consumers.len());
            if self.should_auto_delete() || self.unused_expired() {
                self.auto_delete();
                Self::release_pending(Vec::new(), &mut rx, &mut ctl);
                return;
            }
        }
    }

    /// After the queue stopped: publishes that were already routed here are
    /// confirmed (as RabbitMQ confirms messages routed to a queue deleted in
    /// flight), and every question is dropped, which its asker sees as "gone".
    fn release_pending(
        rest: Vec<QueueCmd>,
        rx: &mut mpsc::Receiver<QueueCmd>,
        ctl: &mut mpsc::UnboundedReceiver<QueueCmd>,
    ) {
        rx.close();
        ctl.close();
        let mut pending = rest;
        while let Ok(cmd) = rx.try_recv() {
            pending.push(cmd);
        }
        for cmd in pending {
            if let QueueCmd::Publish {
                items,
                conn: Some(conn),
            } = cmd
            {
                let tags: Vec<_> = items.into_iter().filter_map(|(_, t)| t).collect();
                if !tags.is_empty() {
                    let _ = conn.tx.send(ConnEvent::Confirms { tags, ok: true });
                }
            }
        }
    }

    fn handle(&mut self, cmd: QueueCmd) -> Flow {
        match cmd {
            QueueCmd::Publish { items, conn } => self.publish(items, conn),
            QueueCmd::Consume(spec, reply) => {
                let _ = reply.send(self.consume(spec));
            }
            QueueCmd::Cancel(chan_key, tag, reply) => {
                self.remove_consumers(|c| c.chan_key == chan_key && c.tag == tag);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            QueueCmd::Settle(chan_key, ids, how) => self.settle(chan_key, &ids, how),
            QueueCmd::Get {
                chan_key,
                no_ack,
                reply,
            } => {
                let _ = reply.send(self.get(chan_key, no_ack));
            }
            QueueCmd::Stats(reply) => {
                // queue.declare (also passive) counts as use for x-expires, as in RabbitMQ.
                self.touch();
                let _ = reply.send((self.ready.len() as u32, self.consumers.len() as u32));
            }
            QueueCmd::Purge(reply) => {
                let n = self.ready.len() as u32;
                let mut gone = Vec::new();
                self.ready.drain_with(|e| {
                    self.pager.forget(e.id, &e.msg);
                    if e.persisted {
                        gone.push(e.id);
                    }
                });
                self.forget(gone);
                let _ = reply.send(n);
            }
            QueueCmd::Sync(reply) => match self.store.as_ref().filter(|s| s.durable) {
                Some(store) => store.handle.flush(Box::new(move |_| {
                    let _ = reply.send(());
                })),
                None => {
                    let _ = reply.send(());
                }
            },
            QueueCmd::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                let info = &self.me.info;
                if if_unused && !self.consumers.is_empty() {
                    let _ = reply.send(Err(AmqpError::precondition(format_args!(
                        "queue '{}' in vhost '{}' in use",
                        info.name, info.vhost
                    ))));
                } else if if_empty && !self.ready.is_empty() {
                    let _ = reply.send(Err(AmqpError::precondition(format_args!(
                        "queue '{}' in vhost '{}' not empty",
                        info.name, info.vhost
                    ))));
                } else {
                    let _ = reply.send(Ok(self.ready.len() as u32));
                    self.cancel_all_consumers();
                    self.drop_log();
                    return Flow::Stop;
                }
            }
            QueueCmd::ChannelClosed(chan_key) => self.channel_closed(chan_key),
            QueueCmd::Stop(reply) => {
                // Paged-out transient messages do not survive a restart anyway.
                self.pager.drop_page_log();
                let _ = reply.send(());
                return Flow::Stop;
            }
            QueueCmd::Wake => {}
            QueueCmd::PagedIn(batch) => self.pager.paged_in(*batch),
        }
        Flow::Continue
    }

    fn publish(&mut self, items: PublishBatch, conn: Option<ConnHandle>) {
        let mut confirms = Vec::new();
        let mut durable_confirms = Vec::new();
        let mut stored = Vec::new();
        let mut refused = Vec::new();
        let mut dropped = Vec::new();
        for (msg, confirm) in items {
            if self.is_duplicate(&msg) {
                // Dropped, and confirmed like an accepted message.
                confirms.extend(confirm);
                continue;
            }
            if self.would_overflow(&msg) {
                match self.me.info.args.overflow {
                    Overflow::DropHead => {
                        while self.would_overflow(&msg) {
                            match self.pop_ready() {
                                Some(head) => dropped.push(head),
                                None => break,
                            }
                        }
                    }
                    Overflow::RejectPublish | Overflow::RejectPublishDlx => {
                        refused.extend(confirm);
                        if self.me.info.args.overflow == Overflow::RejectPublishDlx {
                            self.dead_letter(vec![msg], Reason::Maxlen);
                        }
                        continue;
                    }
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            let persisted = self.store.as_ref().is_some_and(|s| s.durable) && msg.is_persistent();
            if persisted {
                stored.push(StoredMessage {
                    seq: id,
                    header: msg.raw_properties.clone(),
                    body: msg.body.clone(),
                    exchange: msg.exchange.to_string(),
                    routing_key: msg.routing_key.to_string(),
                    delivery_count: 0,
                    redelivered: false,
                });
            }
            let expires_at = expiry(&self.me.info.args, &msg);
            let msg = self.pager.admit(msg, persisted, self.ready.len());
            self.push_ready(Entry {
                id,
                msg,
                redelivered: false,
                persisted,
                deliveries: 0,
                expires_at,
            });
            match (confirm, persisted) {
                (Some(tag), true) => durable_confirms.push(tag),
                (Some(tag), false) => confirms.push(tag),
                (None, _) => {}
            }
        }
        if let Some(store) = &self.store {
            if !stored.is_empty() {
                // Confirms for persistent messages wait for the group commit.
                let confirm_to = match (&conn, durable_confirms.is_empty()) {
                    (Some(conn), false) => Some(conn.tx.clone()),
                    _ => None,
                };
                let name = self.me.info.name.clone();
                let (hi, me, appended) = (
                    stored.last().map_or(0, |m| m.seq),
                    self.me.clone(),
                    self.pager.appended(),
                );
                let done: crate::store::Completion = Box::new(move |result| {
                    if let Err(e) = &result {
                        tracing::error!(queue = %name, error = %e, "store write failed, nacking");
                    }
                    appended(hi, &me);
                    if let Some(tx) = confirm_to {
                        let _ = tx.send(ConnEvent::Confirms {
                            tags: durable_confirms,
                            ok: result.is_ok(),
                        });
                    }
                });
                store.handle.append(&store.key, stored, Some(done));
            }
        }
        if let Some(conn) = &conn {
            if !confirms.is_empty() {
                let _ = conn.tx.send(ConnEvent::Confirms {
                    tags: confirms,
                    ok: true,
                });
            }
            if !refused.is_empty() {
                // x-overflow reject-publish: the publisher gets basic.nack.
                let _ = conn.tx.send(ConnEvent::Confirms {
                    tags: refused,
                    ok: false,
                });
            }
        }
        self.discard(dropped, Reason::Maxlen);
    }

    /// `x-message-deduplication`: whether a message with `msg`'s key is still in
    /// the queue (or was published within the cache TTL). Remembers the key of a
    /// message that is not, under the id it is about to get.
    fn is_duplicate(&mut self, msg: &Message) -> bool {
        let Some(dedup) = self.dedup.as_mut() else {
            return false;
        };
        let (ready, unacked) = (&self.ready, &self.unacked);
        let holds = |id: u64| unacked.contains_key(&id) || ready.contains_id(id);
        let now = std::time::Instant::now();
        let verdict = dedup.check_owned(msg.headers(), now, Some(self.next_id), holds);
        verdict == super::dedup::Verdict::Duplicate
    }

    /// Whether enqueueing `msg` would break `x-max-length` / `x-max-length-bytes`.
    fn would_overflow(&self, msg: &Message) -> bool {
        let args = &self.me.info.args;
        args.max_length
            .is_some_and(|max| self.ready.len() as u64 + 1 > max)
            || args
                .max_length_bytes
                .is_some_and(|max| self.ready.bytes() + msg.body_size() > max)
    }

    fn push_ready(&mut self, entry: Entry) {
        self.ready.push_back(entry);
    }

    fn pop_ready(&mut self) -> Option<Entry> {
        self.ready.pop_front()
    }

    /// Removes ready messages for good (expired, dropped for length): forgets
    /// persisted ones and dead-letters them if the queue has a DLX.
    fn discard(&mut self, entries: Vec<Entry>, reason: Reason) {
        if entries.is_empty() {
            return;
        }
        let gone = entries
            .iter()
            .filter(|e| e.persisted)
            .map(|e| e.id)
            .collect();
        self.forget(gone);
        let msgs = self.messages_of(entries);
        self.dead_letter(msgs, reason);
    }

    /// The messages of entries leaving the queue, for dead-lettering: paged bodies are read
    /// back only if the queue has a dead-letter exchange.
    fn messages_of(&mut self, entries: Vec<Entry>) -> Vec<Arc<Message>> {
        let dlx = self.me.info.args.dead_letter_exchange.is_some();
        let mut out = Vec::with_capacity(entries.len());
        for mut e in entries {
            if dlx {
                out.extend(self.pager.load_now(e.id, &mut e.msg));
            } else {
                self.pager.forget(e.id, &e.msg);
                out.extend(e.msg.loaded().cloned());
            }
        }
        out
    }

    /// Drops heads whose bodies were lost; false if the head's body is still being read.
    fn head_ready(&mut self) -> bool {
        while let Some(e) = self.ready.front() {
            match self.pager.head(e.id, &e.msg) {
                Head::Ready => return true,
                Head::Wait => return false,
                Head::Lost => {
                    let e = self.pop_ready().expect("front exists");
                    self.pager.forget(e.id, &e.msg);
                    self.forget(vec![e.id]);
                }
            }
        }
        false
    }

    /// Drops expired messages from the head (they are never delivered).
    fn expire(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        while let Some(e) = self
            .ready
            .pop_front_if(|e| e.expires_at.is_some_and(|t| t <= now))
        {
            expired.push(e);
        }
        self.discard(expired, Reason::Expired);
    }

    /// Republishes messages to the queue's dead-letter exchange, if it has one,
    /// with RabbitMQ's x-death headers (the body is shared, not copied).
    fn dead_letter(&self, msgs: Vec<Arc<Message>>, reason: Reason) {
        let args = &self.me.info.args;
        let (Some(dlx), false) = (args.dead_letter_exchange.as_deref(), msgs.is_empty()) else {
            return;
        };
        let Some(vhost) = self.vhost.upgrade() else {
            return;
        };
        let Some(exchange) = vhost.exchange(dlx) else {
            // RabbitMQ drops dead letters whose exchange does not exist.
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let queue = &*self.me.info.name;
        let mut targets = Vec::new();
        let mut batches: Vec<(QueueHandle, super::PublishBatch)> = Vec::new();
        for msg in msgs {
            let props = dead_letter::dead_letter_properties(
                &msg.properties,
                reason,
                queue,
                &msg.exchange,
                &[&msg.routing_key],
                now,
            );
            let (props, keys) = dead_letter::republish_routing(
                props,
                &msg.routing_key,
                args.dead_letter_routing_key.as_deref(),
            );
            let dead = Arc::new(Message {
                exchange: dlx.into(),
                routing_key: keys[0].as_str().into(),
                raw_properties: crate::protocol::codec::encode_properties(&props),
                properties: Box::new(props),
                body: msg.body.clone(),
            });
            targets.clear();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            vhost.route_keys(&exchange, &keys, dead.headers(), &mut targets);
            for q in targets.drain(..) {
                if dead_letter::is_cycle(&dead.properties, &q.info.name, reason) {
                    continue;
                }
                match batches.iter_mut().find(|(b, _)| b.id == q.id) {
                    Some((_, items)) => items.push((dead.clone(), None)),
                    None => batches.push((q, vec![(dead.clone(), None)])),
                }
            }
        }
        for (q, items) in batches {
            q.send_dead_lettered(items);
        }
    }

    /// Records that persisted messages left the queue for good.
    fn forget(&self, seqs: Vec<u64>) {
        if let (Some(store), false) = (&self.store, seqs.is_empty()) {
            store.handle.ack(&store.key, seqs);
        }
    }

    /// Records a delivery of a persisted message, so a crash brings it back redelivered.
    fn record_delivery(&self, entry: &Entry) {
        if let (Some(store), true) = (&self.store, entry.persisted) {
            store
                .handle
                .set_delivery_count(&store.key, entry.id, entry.deliveries);
        }
    }

    fn consume(&mut self, spec: ConsumerSpec) -> Result<(), AmqpError> {
        let info = &self.me.info;
        let in_exclusive_use = || {
            AmqpError::new(
                ReplyCode::AccessRefused,
                format_args!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    info.name, info.vhost
                ),
            )
        };
        if self.consumers.iter().any(|c| c.spec.exclusive) {
            return Err(in_exclusive_use());
        }
        // A single-active-consumer queue refuses every exclusive consume (RabbitMQ 3.10).
        if spec.exclusive && (!self.consumers.is_empty() || info.args.single_active_consumer) {
            return Err(in_exclusive_use());
        }
        self.had_consumer = true;
        let seq = self.next_consumer_seq;
        self.next_consumer_seq += 1;
        if info.args.single_active_consumer && self.active_consumer.is_none() {
            self.active_consumer = Some(seq);
        }
        // Highest priority first; registration order within a priority.
        let pos = self
            .consumers
            .partition_point(|c| c.spec.priority >= spec.priority);
        if pos <= self.next_consumer && pos < self.consumers.len() {
            self.next_consumer += 1;
        }
        self.consumers.insert(
            pos,
            Consumer {
                spec,
                unacked: 0,
                seq,
            },
        );
        self.consumers_changed();
        self.unused_until = None;
        Ok(())
    }

    /// Removes the consumers `gone` selects.
    fn remove_consumers(&mut self, gone: impl Fn(&ConsumerSpec) -> bool) {
        let before = self.consumers.len();
        self.consumers.retain(|c| !gone(&c.spec));
        if self.consumers.len() == before {
            return;
        }
        self.consumers_changed();
        self.touch();
    }

    fn get(&mut self, chan_key: ChanKey, no_ack: bool) -> Option<GetResult> {
        self.touch();
        self.expire();
        let mut entry = self.pop_ready()?;
        let Some(msg) = self.pager.load_now(entry.id, &mut entry.msg) else {
            // Its body could not be read back (logged): it is gone; try the next one.
            self.forget(vec![entry.id]);
            return self.get(chan_key, no_ack);
        };
        let msg = self.outgoing(&entry, &msg, true);
        entry.deliveries += 1;
        let result = GetResult {
            msg,
            msg_id: entry.id,
            redelivered: entry.redelivered,
            remaining: self.ready.len() as u32,
        };
        if no_ack {
            if entry.persisted {
                self.forget(vec![entry.id]);
            }
        } else {
            self.record_delivery(&entry);
            self.unacked.insert(
                entry.id,
                Unacked {
                    entry,
                    chan_key,
                    consumer_tag: None,
                },
            );
        }
        Some(result)
    }

    fn settle(&mut self, chan_key: ChanKey, ids: &[u64], how: Settle) {
        let mut requeue = Vec::new();
        let mut gone = Vec::new();
        let mut rejected = Vec::new();
        for id in ids {
            let Some(u) = self.unacked.remove(id) else {
                continue;
            };
            debug_assert_eq!(u.chan_key, chan_key);
            self.release_consumer_credit(u.chan_key, u.consumer_tag.as_ref());
            if how == Settle::Requeue {
                requeue.push(u.entry);
                continue;
            }
            if u.entry.persisted {
                gone.push(u.entry.id);
            }
            if how == Settle::Discard {
                rejected.extend(u.entry.msg.loaded().cloned());
            }
        }
        self.forget(gone);
        self.requeue(requeue);
        self.dead_letter(rejected, Reason::Rejected);
    }

    fn release_consumer_credit(&mut self, chan_key: ChanKey, tag: Option<&Arc<str>>) {
        if let Some(tag) = tag {
            if let Some(c) = self
                .consumers
                .iter_mut()
                .find(|c| c.spec.chan_key == chan_key && &c.spec.tag == tag)
            {
                c.unacked = c.unacked.saturating_sub(1);
            }
        }
    }

    /// Whether deliveries carry `x-delivery-count` and the limit applies:
    /// quorum queues (as RabbitMQ) and queues with an `x-delivery-limit`.
    fn counts_deliveries(&self) -> bool {
        let args = &self.me.info.args;
        args.queue_type == QueueType::Quorum || args.delivery_limit.is_some()
    }

    /// The message as handed out: after a failed delivery it carries
    /// `x-delivery-count` (deliveries that ended in a return), as RabbitMQ's
    /// quorum queues add it. A first delivery to a consumer is the message as
    /// published; `basic.get` (`always`) carries the header from the first
    /// delivery on, with 0, as RabbitMQ 3.10's quorum dequeue does.
    fn outgoing(&self, entry: &Entry, msg: &Arc<Message>, always: bool) -> Arc<Message> {
        if !self.counts_deliveries() || (entry.deliveries == 0 && !always) {
            return msg.clone();
        }
        let mut props = (*msg.properties).clone();
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(
            "x-delivery-count".into(),
            AMQPValue::LongLongInt(i64::from(entry.deliveries)),
        );
        props = props.with_headers(headers);
        msg.with_properties(props)
    }

    /// Puts entries back at their original positions, flagged redelivered.
    /// Those past `x-delivery-limit` (each ready message's deliveries all ended
    /// in a return, so `deliveries` is RabbitMQ's delivery count) are
    /// dead-lettered with reason `delivery_limit`, or dropped.
    fn requeue(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let (poison, entries): (Vec<Entry>, Vec<Entry>) = match self.me.info.args.delivery_limit {
            Some(limit) => entries.into_iter().partition(|e| e.deliveries > limit),
            None => (Vec::new(), entries),
        };
        self.ready.requeue_all(entries.into_iter().map(|mut e| {
            e.redelivered = true;
            e
        }));
        self.discard(poison, Reason::DeliveryLimit);
    }

    /// Drops (or dead-letters) ready messages already past the delivery limit.
    fn over_delivery_limit(&mut self) {
        let Some(limit) = self.me.info.args.delivery_limit else {
            return;
        };
        let mut poison = Vec::new();
        self.ready
            .remove_where(|e| e.deliveries > limit, |e| poison.push(e));
        self.discard(poison, Reason::DeliveryLimit);
    }

    fn channel_closed(&mut self, chan_key: ChanKey) {
        self.remove_consumers(|c| c.chan_key == chan_key);
        self.touch();
        let ids: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.chan_key == chan_key)
            .map(|(id, _)| *id)
            .collect();
        let entries = ids
            .into_iter()
            .filter_map(|id| self.unacked.remove(&id))
            .map(|u| u.entry)
            .collect();
        self.requeue(entries);
    }

    /// Rebuilds what dispatch derives from `consumers` (after a consumer came or went).
    fn consumers_changed(&mut self) {
        self.groups.clear();
        let mut start = 0;
        while start < self.consumers.len() {
            let prio = self.consumers[start].spec.priority;
            let len = self.consumers[start..]
                .iter()
                .take_while(|c| c.spec.priority == prio)
                .count();
            self.groups.push((start, start + len));
            start += len;
        }
        if self.next_consumer >= self.consumers.len() {
            self.next_consumer = 0;
        }
        if let Some(active) = self.active_consumer {
            // Single active consumer: if it went, the next one takes over
            // (highest priority, then earliest registered, as RabbitMQ's
            // `rabbit_queue_consumers:get_consumer`); clients are not told.
            let i = self.consumers.iter().position(|c| c.seq == active);
            let i = i.or((!self.consumers.is_empty()).then_some(0));
            self.active_consumer = i.map(|i| self.consumers[i].seq);
            self.groups.clear();
            self.groups.extend(i.map(|i| (i, i + 1)));
        }
    }

    /// The next consumer to deliver to, or `None` if every candidate is out of
    /// credit. Consumer priorities: the highest-priority group with a consumer
    /// that has credit wins; round-robin within a group (from `next_consumer`);
    /// lower priorities only get messages while every higher one is blocked.
    /// With a single active consumer only that one is a candidate (its own
    /// group). A consumer (or group) found blocked stays blocked for the rest
    /// of this dispatch round: credit only comes back with settles, which are
    /// handled between rounds.
    fn pick_consumer(&mut self) -> Option<(usize, bool)> {
        for g in 0..self.groups.len() {
            if self.group_blocked[g] {
                continue;
            }
            let (start, end) = self.groups[g];
            let len = end - start;
            let first = if (start..end).contains(&self.next_consumer) {
                self.next_consumer - start
            } else {
                0
            };
            for attempt in 0..len {
                let idx = start + (first + attempt) % len;
                if self.blocked[idx] {
                    continue;
                }
                let c = &self.consumers[idx];
                if !c.has_credit() {
                    self.blocked[idx] = true;
                    continue;
                }
                match c.spec.limiter.acquire(&self.me, !c.spec.no_ack) {
                    Credit::Granted { counted } => {
                        self.next_consumer = if idx + 1 == end { start } else { idx + 1 };
                        return Some((idx, counted));
                    }
                    Credit::Blocked => self.blocked[idx] = true,
                }
            }
            self.group_blocked[g] = true;
        }
        None
    }

    /// Hands ready messages to consumers with credit (see [`Self::pick_consumer`]).
    fn dispatch(&mut self) {
        if self.consumers.is_empty() || self.ready.is_empty() {
            return;
        }
        self.blocked.clear();
        self.blocked.resize(self.consumers.len(), false);
        self.group_blocked.clear();
        self.group_blocked.resize(self.groups.len(), false);
        let mut out: Vec<(ConnHandle, Vec<Delivery>)> = Vec::new();
        while self.head_ready() {
            let Some((idx, counted_global)) = self.pick_consumer() else {
                break;
            };
            let mut entry = self.pop_ready().expect("checked non-empty");
            if entry.expires_at.is_some_and(|t| t <= Instant::now()) {
                if counted_global {
                    self.consumers[idx].spec.limiter.release(1);
                }
                self.discard(vec![entry], Reason::Expired);
                continue;
            }
            let msg = self
                .pager
                .take(entry.id, &mut entry.msg)
                .expect("head_ready checked the body is in memory");
            let msg = self.outgoing(&entry, &msg, false);
            entry.deliveries += 1;
            if entry.persisted {
                if self.consumers[idx].spec.no_ack {
                    self.forget(vec![entry.id]);
                } else {
                    self.record_delivery(&entry);
                }
            }
            let c = &mut self.consumers[idx];
            let delivery = Delivery {
                chan_key: c.spec.chan_key,
                consumer_tag: c.spec.tag.clone(),
                msg,
                msg_id: entry.id,
                redelivered: entry.redelivered,
                queue: (!c.spec.no_ack).then(|| self.me.clone()),
                needs_ack: !c.spec.no_ack,
                counted_global,
            };
            if !c.spec.no_ack {
                c.unacked += 1;
                self.unacked.insert(
                    entry.id,
                    Unacked {
                        entry,
                        chan_key: c.spec.chan_key,
                        consumer_tag: Some(c.spec.tag.clone()),
                    },
                );
            }
            let conn = &c.spec.conn;
            conn.shared
                .queued_deliveries
                .fetch_add(1, Ordering::Relaxed);
            match out.iter_mut().find(|(h, _)| h.id == conn.id) {
                Some((_, v)) => v.push(delivery),
                None => out.push((conn.clone(), vec![delivery])),
            }
        }
        for (conn, deliveries) in out {
            if let Err(mpsc::error::SendError(ConnEvent::Deliver(lost))) =
                conn.tx.send(ConnEvent::Deliver(deliveries))
            {
                // The connection task is gone: take its consumers out and requeue.
                let keys: Vec<ChanKey> = lost.iter().map(|d| d.chan_key).collect();
                for key in keys {
                    self.channel_closed(key);
                }
                let back = lost
                    .into_iter()
                    .filter(|d| !d.needs_ack)
                    .map(|d| Entry {
                        id: d.msg_id,
                        msg: Body::Loaded(d.msg),
                        redelivered: true,
                        persisted: false,
                        deliveries: 1,
                        expires_at: None,
                    })
                    .collect();
                self.requeue(back);
            }
        }
    }

    fn cancel_all_consumers(&mut self) {
        for c in self.consumers.drain(..) {
            let _ = c.spec.conn.tx.send(ConnEvent::ConsumerCancelled {
                chan_key: c.spec.chan_key,
                consumer_tag: c.spec.tag.clone(),
            });
        }
        self.consumers_changed();
    }

    /// `x-expires`: (re)starts the unused-queue timer while the queue has no
    /// consumers (called on declare, basic.get and when consumers go, as
    /// RabbitMQ's `ensure_expiry_timer`); a queue with consumers never expires.
    fn touch(&mut self) {
        self.unused_until = match self.me.info.args.expires {
            Some(ms) if self.consumers.is_empty() => {
                Some(Instant::now() + std::time::Duration::from_millis(ms))
            }
            _ => None,
        };
    }

    /// Whether `x-expires` ran out: no consumers, and not used for that long.
    fn unused_expired(&self) -> bool {
        self.consumers.is_empty() && self.unused_until.is_some_and(|t| t <= Instant::now())
    }

    fn should_auto_delete(&self) -> bool {
        self.me.info.auto_delete && self.had_consumer && self.consumers.is_empty()
    }

    /// Deletes the queue's log (the queue itself is being deleted).
    fn drop_log(&mut self) {
        if let Some(store) = self.store.as_ref().filter(|s| s.durable) {
            store.handle.delete_queue(&store.key);
        }
        self.pager.drop_page_log();
    }

    fn auto_delete(&mut self) {
        if let Some(unregister) = self.on_auto_delete.take() {
            unregister(&self.me);
        }
        self.drop_log();
        debug!("auto-deleted");
    }
}

/// When a message expires in a queue with these arguments (the lower of the
/// queue's `x-message-ttl` and the message's `expiration` wins).
fn expiry(args: &QueueArgs, msg: &Message) -> Option<Instant> {
    expiry_of(args, Some(msg))
}

/// When a message entering now expires: the lower of the queue's TTL and the message's own
/// `expiration` (`None`: a message whose properties were not kept, so it has none).
fn expiry_of(args: &QueueArgs, msg: Option<&Message>) -> Option<Instant> {
    let per_message = msg.and_then(|m| {
        super::args::message_expiration(&m.properties)
            .ok()
            .flatten()
    });
    args.effective_ttl(per_message)
        .map(|ms| Instant::now() + std::time::Duration::from_millis(ms))
}

/// The ready entry of a message recovered without its body. Its properties, kept only when
/// they hold `headers`, `priority` or `expiration`, give its expiry, priority and
/// deduplication key; `None` (logged) if they cannot be decoded, as for a whole message.
fn paged_entry(
    args: &QueueArgs,
    p: PagedRecord,
    pager: &mut Pager,
    dedup: Option<&mut super::dedup::DedupCache>,
) -> Option<Entry> {
    let props = match p.header {
        Some(raw) => match Message::restore("", "", bytes::Bytes::from(raw), bytes::Bytes::new()) {
            Some(m) => Some(m),
            None => {
                tracing::error!(
                    seq = p.seq,
                    "dropping recovered message with undecodable properties"
                );
                return None;
            }
        },
        None => None,
    };
    let expires_at = expiry_of(args, props.as_deref());
    let priority = props
        .as_ref()
        .and_then(|m| *m.properties.priority())
        .unwrap_or(0);
    if let (Some(cache), Some(m)) = (dedup, &props) {
        cache.check_owned(m.headers(), std::time::Instant::now(), Some(p.seq), |_| {
            true
        });
    }
    Some(Entry {
        id: p.seq,
        expires_at,
        msg: pager.recovered_paged(p.body_size, priority),
        redelivered: p.redelivered,
        persisted: true,
        deliveries: p.delivery_count,
    })
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
