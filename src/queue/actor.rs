//! The queue task: owns ready messages, consumers and unacked deliveries.
//!
//! Invariants: `ready` is ordered by message id (requeued messages return to
//! their original position, as in RabbitMQ); every id is either in `ready`, in
//! `unacked`, or gone. Deliveries are grouped into one `ConnEvent::Deliver` per
//! connection per dispatch round. The actor never waits on a connection: it only
//! uses unbounded sends to connection inboxes, so no cycle of bounded channels
//! can deadlock.

use super::limiter::Credit;
use super::{
    ChanKey, ConnEvent, ConnHandle, ConsumerSpec, Delivery, GetResult, PublishBatch, QueueCmd,
    QueueHandle, QueueInfo, Settle,
};
use crate::message::Message;
use crate::protocol::{AmqpError, ReplyCode};
use crate::store::{QueueKey, StoreHandle, StoredMessage};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{debug, Instrument};

/// Capacity of a queue's inbox, in commands (each command may carry a batch).
pub const INBOX_CAPACITY: usize = 1024;

/// Called when the queue removes itself (auto-delete); unregisters it from its vhost.
pub type OnAutoDelete = Box<dyn FnOnce(&QueueHandle) + Send>;

#[derive(Debug)]
struct Entry {
    id: u64,
    msg: Arc<Message>,
    redelivered: bool,
    /// Written to this queue's log (persistent message in a durable queue).
    persisted: bool,
    /// How many times it was handed to a consumer.
    deliveries: u32,
}

/// A durable queue's link to the message store.
pub struct QueueStore {
    /// The store.
    pub handle: StoreHandle,
    /// This queue's key in the store.
    pub key: QueueKey,
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
}

impl Consumer {
    fn has_credit(&self) -> bool {
        self.spec.no_ack || self.spec.prefetch == 0 || self.unacked < self.spec.prefetch
    }
}

struct Queue {
    me: QueueHandle,
    ready: VecDeque<Entry>,
    unacked: HashMap<u64, Unacked>,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    next_id: u64,
    had_consumer: bool,
    on_auto_delete: Option<OnAutoDelete>,
    store: Option<QueueStore>,
}

/// Starts a queue task and returns its handle. A durable queue gets its store
/// link and the messages recovered from its log.
pub fn spawn(
    id: super::QueueId,
    info: QueueInfo,
    on_auto_delete: OnAutoDelete,
    store: Option<QueueStore>,
    recovered: Vec<StoredMessage>,
) -> QueueHandle {
    let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
    let (ctl, ctl_rx) = mpsc::unbounded_channel();
    let handle = QueueHandle {
        id,
        info: Arc::new(info),
        tx,
        ctl,
        gauge: Arc::new(super::QueueGauge::default()),
    };
    let span = tracing::info_span!("queue", vhost = %handle.info.vhost, name = %handle.info.name);
    let mut ready = VecDeque::with_capacity(recovered.len());
    let mut next_id = 1;
    for m in recovered {
        next_id = next_id.max(m.seq + 1);
        match Message::restore(&m.exchange, &m.routing_key, m.header, m.body) {
            Some(msg) => ready.push_back(Entry {
                id: m.seq,
                msg,
                redelivered: m.redelivered || m.delivery_count > 0,
                persisted: true,
                deliveries: m.delivery_count,
            }),
            None => tracing::error!(
                seq = m.seq,
                "dropping recovered message with undecodable properties"
            ),
        }
    }
    let queue = Queue {
        me: handle.clone(),
        ready,
        unacked: HashMap::new(),
        consumers: Vec::new(),
        next_consumer: 0,
        next_id,
        had_consumer: false,
        on_auto_delete: Some(on_auto_delete),
        store,
    };
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
        let mut batch = Vec::with_capacity(64);
        let mut control = Vec::with_capacity(256);
        loop {
            // Control first: acks free consumer credit, which is what lets the
            // backlog of publishes drain.
            let n = tokio::select! {
                biased;
                n = ctl.recv_many(&mut control, 256) => n,
                n = rx.recv_many(&mut batch, 16) => n,
            };
            if n == 0 {
                break;
            }
            batch.append(&mut control);
            for cmd in batch.drain(..) {
                if let Flow::Stop = self.handle(cmd) {
                    debug!("queue stopped");
                    return;
                }
            }
            self.dispatch();
            self.me.gauge.update(self.ready.len(), self.consumers.len());
            if self.should_auto_delete() {
                self.auto_delete();
                return;
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
                self.consumers
                    .retain(|c| !(c.spec.chan_key == chan_key && c.spec.tag == tag));
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
                let _ = reply.send((self.ready.len() as u32, self.consumers.len() as u32));
            }
            QueueCmd::Purge(reply) => {
                let n = self.ready.len() as u32;
                let gone = self
                    .ready
                    .drain(..)
                    .filter(|e| e.persisted)
                    .map(|e| e.id)
                    .collect();
                self.forget(gone);
                let _ = reply.send(n);
            }
            QueueCmd::Sync(reply) => match &self.store {
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
                let _ = reply.send(());
                return Flow::Stop;
            }
            QueueCmd::Wake => {}
        }
        Flow::Continue
    }

    fn publish(&mut self, items: PublishBatch, conn: Option<ConnHandle>) {
        let mut confirms = Vec::new();
        let mut durable_confirms = Vec::new();
        let mut stored = Vec::new();
        for (msg, confirm) in items {
            let id = self.next_id;
            self.next_id += 1;
            let persisted = self.store.is_some() && msg.is_persistent();
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
            self.ready.push_back(Entry {
                id,
                msg,
                redelivered: false,
                persisted,
                deliveries: 0,
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
                let done = match (&conn, durable_confirms.is_empty()) {
                    (Some(conn), false) => {
                        let tx = conn.tx.clone();
                        let name = self.me.info.name.clone();
                        Some(Box::new(move |result: std::io::Result<()>| {
                            if let Err(e) = &result {
                                tracing::error!(queue = %name, error = %e, "store write failed, nacking");
                            }
                            let _ = tx.send(ConnEvent::Confirms {
                                tags: durable_confirms,
                                ok: result.is_ok(),
                            });
                        }) as crate::store::Completion)
                    }
                    _ => None,
                };
                store.handle.append(&store.key, stored, done);
            }
        }
        if let (false, Some(conn)) = (confirms.is_empty(), conn) {
            let _ = conn.tx.send(ConnEvent::Confirms {
                tags: confirms,
                ok: true,
            });
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
        if spec.exclusive && !self.consumers.is_empty() {
            return Err(in_exclusive_use());
        }
        self.had_consumer = true;
        self.consumers.push(Consumer { spec, unacked: 0 });
        Ok(())
    }

    fn get(&mut self, chan_key: ChanKey, no_ack: bool) -> Option<GetResult> {
        let mut entry = self.ready.pop_front()?;
        entry.deliveries += 1;
        let result = GetResult {
            msg: entry.msg.clone(),
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
        for id in ids {
            let Some(u) = self.unacked.remove(id) else {
                continue;
            };
            debug_assert_eq!(u.chan_key, chan_key);
            self.release_consumer_credit(u.chan_key, u.consumer_tag.as_ref());
            if how == Settle::Requeue {
                requeue.push(u.entry);
            } else if u.entry.persisted {
                gone.push(u.entry.id);
            }
        }
        self.forget(gone);
        self.requeue(requeue);
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

    /// Puts entries back at their original positions, flagged redelivered.
    fn requeue(&mut self, mut entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        entries.sort_unstable_by_key(|e| e.id);
        for mut e in entries.into_iter().rev() {
            e.redelivered = true;
            let pos = self.ready.partition_point(|r| r.id < e.id);
            self.ready.insert(pos, e);
        }
    }

    fn channel_closed(&mut self, chan_key: ChanKey) {
        self.consumers.retain(|c| c.spec.chan_key != chan_key);
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

    /// Hands ready messages to consumers with credit, round-robin.
    fn dispatch(&mut self) {
        if self.consumers.is_empty() || self.ready.is_empty() {
            return;
        }
        let n = self.consumers.len();
        let mut blocked = vec![false; n];
        let mut out: Vec<(ConnHandle, Vec<Delivery>)> = Vec::new();
        'messages: while !self.ready.is_empty() {
            let mut chosen = None;
            for attempt in 0..n {
                let idx = (self.next_consumer + attempt) % n;
                let c = &self.consumers[idx];
                if blocked[idx] || !c.has_credit() {
                    continue;
                }
                match c.spec.limiter.acquire(&self.me, !c.spec.no_ack) {
                    Credit::Granted { counted } => {
                        chosen = Some((idx, counted));
                        break;
                    }
                    Credit::Blocked => blocked[idx] = true,
                }
            }
            let Some((idx, counted_global)) = chosen else {
                break 'messages;
            };
            self.next_consumer = (idx + 1) % n;
            let mut entry = self.ready.pop_front().expect("checked non-empty");
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
                msg: entry.msg.clone(),
                msg_id: entry.id,
                redelivered: entry.redelivered,
                queue: Some(self.me.clone()),
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
                        msg: d.msg,
                        redelivered: true,
                        persisted: false,
                        deliveries: 1,
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
    }

    fn should_auto_delete(&self) -> bool {
        self.me.info.auto_delete && self.had_consumer && self.consumers.is_empty()
    }

    /// Deletes the queue's log (the queue itself is being deleted).
    fn drop_log(&self) {
        if let Some(store) = &self.store {
            store.handle.delete_queue(&store.key);
        }
    }

    fn auto_delete(&mut self) {
        if let Some(unregister) = self.on_auto_delete.take() {
            unregister(&self.me);
        }
        self.drop_log();
        debug!("auto-deleted");
    }
}
