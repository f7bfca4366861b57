//! Queues: a cheap cloneable [`QueueHandle`] and the commands its actor task takes.
//!
//! Each queue is one tokio task ([`actor`]) that owns all of its state; nobody
//! else touches a queue's messages, so publishers and consumers share no lock.
//! Commands are batch-shaped (a `Publish` carries every message a connection
//! routed to this queue in one read), and the actor drains its inbox with
//! `recv_many` so one wake-up serves many commands.

pub mod actor;
pub mod args;
pub mod dead_letter;
pub mod dedup;
pub mod limiter;
pub mod paging;
pub mod ready;

use crate::message::Message;
use crate::protocol::AmqpResult;
use amq_protocol::types::FieldTable;
pub use limiter::{ChannelLimiter, ConnShared};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Unique id of a queue instance (a re-declared queue after deletion gets a new id).
pub type QueueId = u64;

/// Identifies one opened channel across the whole broker (never reused).
pub type ChanKey = u64;

/// Static facts about a queue, fixed at declaration.
#[derive(Debug)]
pub struct QueueInfo {
    /// Queue name.
    pub name: Arc<str>,
    /// Vhost name.
    pub vhost: Arc<str>,
    /// Survives restarts.
    pub durable: bool,
    /// Connection id of the exclusive owner.
    pub exclusive_owner: Option<u64>,
    /// Deleted when the last consumer goes.
    pub auto_delete: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
    /// The arguments, parsed and validated.
    pub args: args::QueueArgs,
}

/// Ready messages above which a queue with consumers asks its publishers to pause.
pub const CONGESTION_HIGH: usize = 20_000;
/// Ready messages below which paused publishers resume.
pub const CONGESTION_LOW: usize = 10_000;

/// A queue's backlog as its publishers see it (publisher flow control).
///
/// A queue that has consumers and more than [`CONGESTION_HIGH`] ready messages is
/// congested: its publishers stop reading their sockets until it drains below
/// [`CONGESTION_LOW`] (or a short timeout passes, so a client that publishes and
/// consumes on one connection still makes progress). Queues without consumers
/// are never congested: a backlog is what they are for.
#[derive(Debug, Default)]
pub struct QueueGauge {
    ready: std::sync::atomic::AtomicUsize,
    consumers: std::sync::atomic::AtomicUsize,
    drained: tokio::sync::Notify,
}

impl QueueGauge {
    /// Whether publishers should pause.
    pub fn congested(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.consumers.load(Relaxed) > 0 && self.ready.load(Relaxed) > CONGESTION_HIGH
    }

    /// Called by the queue actor after each batch of work.
    pub fn update(&self, ready: usize, consumers: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.ready.swap(ready, Relaxed);
        self.consumers.store(consumers, Relaxed);
        if before >= CONGESTION_LOW && ready < CONGESTION_LOW || consumers == 0 {
            self.drained.notify_waiters();
        }
    }

    /// Waits until the queue drains, at most `limit`.
    pub async fn wait_drained(&self, limit: std::time::Duration) {
        let notified = self.drained.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.congested() {
            let _ = tokio::time::timeout(limit, notified).await;
        }
    }
}

/// A cheap, cloneable reference to a queue actor: one `Arc`, so routing a
/// message or handing out a delivery costs a single refcount bump.
#[derive(Clone, Debug)]
pub struct QueueHandle(Arc<QueueLink>);

/// What a [`QueueHandle`] points at (reached through `Deref`).
#[derive(Debug)]
pub struct QueueLink {
    /// Unique instance id.
    pub id: QueueId,
    /// Declaration facts.
    pub info: Arc<QueueInfo>,
    /// Backlog gauge read by publishers for flow control.
    pub gauge: Arc<QueueGauge>,
    /// Publishes and every operation that must observe them, in order (bounded: backpressure).
    tx: mpsc::Sender<QueueCmd>,
    /// Settlements, cancels and wake-ups: bounded by consumer credit, never stuck
    /// behind a backlog of publishes.
    ctl: mpsc::UnboundedSender<QueueCmd>,
}

impl std::ops::Deref for QueueHandle {
    type Target = QueueLink;
    fn deref(&self) -> &QueueLink {
        &self.0
    }
}

impl QueueHandle {
    /// A handle over a queue actor's two inbox lanes.
    pub fn new(
        id: QueueId,
        info: Arc<QueueInfo>,
        gauge: Arc<QueueGauge>,
        tx: mpsc::Sender<QueueCmd>,
        ctl: mpsc::UnboundedSender<QueueCmd>,
    ) -> Self {
        QueueHandle(Arc::new(QueueLink {
            id,
            info,
            gauge,
            tx,
            ctl,
        }))
    }
}

impl PartialEq for QueueHandle {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for QueueHandle {}

/// The sending side of a connection's event inbox, as queues see it.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    /// Connection id (unique per broker run).
    pub id: u64,
    /// Event inbox of the connection task.
    pub tx: crate::connection::inbox::InboxSender<ConnEvent>,
    /// Counters shared with the connection for backpressure.
    pub shared: Arc<ConnShared>,
}

/// One message handed to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// Channel instance the consumer lives on.
    pub chan_key: ChanKey,
    /// Consumer tag (`None` for `basic.get`, which is answered directly).
    pub consumer_tag: Arc<str>,
    /// The message.
    pub msg: Arc<Message>,
    /// Queue-local message id (for settling).
    pub msg_id: u64,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// The queue, for settling (`None` when nothing will be settled: no-ack
    /// consumers and direct reply-to).
    pub queue: Option<QueueHandle>,
    /// Whether the consumer acks (otherwise it was settled on delivery).
    pub needs_ack: bool,
    /// Whether this delivery counts against the channel's global prefetch.
    pub counted_global: bool,
}

/// A publisher confirm owed for a message.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmTag {
    /// Channel instance that published.
    pub chan_key: ChanKey,
    /// Publish sequence number on that channel.
    pub seq: u64,
}

/// Events delivered to a connection task.
#[derive(Debug)]
pub enum ConnEvent {
    /// Messages for consumers on this connection.
    Deliver(Vec<Delivery>),
    /// Queues accepted (`ok`) or refused these publishes.
    Confirms {
        /// The confirmed publishes.
        tags: Vec<ConfirmTag>,
        /// `false` → basic.nack.
        ok: bool,
    },
    /// The broker cancelled a consumer (its queue was deleted).
    ConsumerCancelled {
        /// Channel instance.
        chan_key: ChanKey,
        /// The consumer tag.
        consumer_tag: Arc<str>,
    },
    /// Close the connection with 320 CONNECTION_FORCED (shutdown).
    ForceClose(String),
}

/// A consumer registration.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Channel instance.
    pub chan_key: ChanKey,
    /// Consumer tag.
    pub tag: Arc<str>,
    /// Connection to deliver to.
    pub conn: ConnHandle,
    /// `no_ack` mode.
    pub no_ack: bool,
    /// Per-consumer prefetch (0 = unlimited).
    pub prefetch: u32,
    /// Exclusive consumer.
    pub exclusive: bool,
    /// Consumer priority (`x-priority`, default 0): higher ones get messages first.
    pub priority: i64,
    /// Channel limiter (global prefetch, flow).
    pub limiter: Arc<ChannelLimiter>,
}

/// How to settle delivered messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// basic.ack.
    Ack,
    /// reject/nack/recover with requeue.
    Requeue,
    /// reject/nack without requeue (discarded).
    Discard,
}

/// What `basic.get` returns.
#[derive(Debug)]
pub struct GetResult {
    /// The message.
    pub msg: Arc<Message>,
    /// Queue-local id.
    pub msg_id: u64,
    /// Redelivered flag.
    pub redelivered: bool,
    /// Messages left in the queue.
    pub remaining: u32,
}

/// A batch of messages for one queue, each with the confirm it owes.
pub type PublishBatch = Vec<(Arc<Message>, Option<ConfirmTag>)>;

/// Commands a queue actor takes.
#[derive(Debug)]
pub enum QueueCmd {
    /// Enqueue messages; confirms go back to `conn`.
    Publish {
        /// Messages with the confirm they owe, if any.
        items: PublishBatch,
        /// Where confirms go.
        conn: Option<ConnHandle>,
    },
    /// Add a consumer.
    Consume(ConsumerSpec, oneshot::Sender<AmqpResult<()>>),
    /// Remove a consumer; replies once removed.
    Cancel(ChanKey, Arc<str>, Option<oneshot::Sender<()>>),
    /// Settle delivered messages.
    Settle(ChanKey, Vec<u64>, Settle),
    /// basic.get.
    Get {
        /// Channel instance.
        chan_key: ChanKey,
        /// Settle on delivery.
        no_ack: bool,
        /// Reply.
        reply: oneshot::Sender<Option<GetResult>>,
    },
    /// (messages ready, consumers).
    Stats(oneshot::Sender<(u32, u32)>),
    /// Drop all ready messages; replies with the count.
    Purge(oneshot::Sender<u32>),
    /// Stop the actor; replies with the number of messages dropped, or the refusal.
    Delete {
        /// Refuse if it has consumers.
        if_unused: bool,
        /// Refuse if it has messages.
        if_empty: bool,
        /// Reply.
        reply: oneshot::Sender<AmqpResult<u32>>,
    },
    /// Broker shutdown: stop after the commands before it, keeping the log.
    Stop(oneshot::Sender<()>),
    /// Replies once everything enqueued before it is durable (`tx.commit`).
    Sync(oneshot::Sender<()>),
    /// A channel closed: drop its consumers and requeue its unacked messages.
    ChannelClosed(ChanKey),
    /// Capacity freed somewhere (flow on, global prefetch, connection drained).
    Wake,
    /// Message bodies read back from the store (see [`paging`]).
    PagedIn(Box<paging::PageIn>),
}

impl QueueCmd {
    /// Whether the command may overtake publishes (it does not need to observe them).
    pub fn is_control(&self) -> bool {
        matches!(
            self,
            QueueCmd::Settle(..)
                | QueueCmd::Cancel(..)
                | QueueCmd::ChannelClosed(_)
                | QueueCmd::Wake
                | QueueCmd::PagedIn(_)
        )
    }
}

impl QueueHandle {
    /// Sends a command. Settlements, cancels, channel closes and wake-ups take the
    /// control lane; everything else waits for space in the ordered data lane
    /// (backpressure). Returns false if the queue is gone.
    pub async fn send(&self, cmd: QueueCmd) -> bool {
        if cmd.is_control() {
            self.ctl.send(cmd).is_ok()
        } else {
            self.tx.send(cmd).await.is_ok()
        }
    }

    /// Hands over dead-lettered messages without waiting: a queue actor must never
    /// wait on another queue's inbox (two queues dead-lettering into each other
    /// would deadlock), so these take the unbounded lane.
    pub fn send_dead_lettered(&self, items: PublishBatch) -> bool {
        self.ctl
            .send(QueueCmd::Publish { items, conn: None })
            .is_ok()
    }

    /// Sends a control command without waiting.
    pub fn send_control(&self, cmd: QueueCmd) -> bool {
        debug_assert!(cmd.is_control());
        self.ctl.send(cmd).is_ok()
    }

    /// Queue name.
    pub fn name(&self) -> &Arc<str> {
        &self.info.name
    }

    /// Asks a question and awaits the answer; `None` if the queue is gone.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> QueueCmd) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        if !self.send(make(tx)).await {
            return None;
        }
        rx.await.ok()
    }
}
