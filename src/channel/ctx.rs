//! What a channel needs from its connection: the broker, the vhost, the outbox,
//! and the per-read batches of enqueues and settlements.
//!
//! Channels never send to a queue per message. Publishes and acks accumulate
//! here, one batch per target queue, and [`ConnCtx::flush`] sends them after
//! the connection has processed every complete frame of a socket read (or
//! before any method that must observe their effect, such as `basic.get`).

use crate::auth::User;
use crate::broker::{Broker, VHost};
use crate::connection::writer::Outbox;
use crate::message::Message;
use crate::protocol::codec;
use crate::queue::{
    ChanKey, ConfirmTag, ConnEvent, ConnHandle, PublishBatch, QueueCmd, QueueHandle, Settle,
};
use amq_protocol::protocol::AMQPClass;
use std::sync::Arc;

/// Connection-wide state shared by all channels of one connection.
#[derive(Debug)]
pub struct ConnCtx {
    /// The broker.
    pub broker: Arc<Broker>,
    /// The vhost opened by this connection.
    pub vhost: Arc<VHost>,
    /// This connection as queues see it.
    pub conn: ConnHandle,
    /// The authenticated user.
    pub user: Arc<User>,
    /// Frames waiting to be written.
    pub out: Outbox,
    /// Negotiated frame_max.
    pub frame_max: u32,
    /// Client understands server-sent `basic.cancel`.
    pub consumer_cancel_notify: bool,
    /// Largest accepted body.
    pub max_message_size: u64,
    /// Reused buffer for routing results.
    pub route_buf: Vec<QueueHandle>,
    publishes: Vec<(QueueHandle, PublishBatch)>,
    settles: Vec<(QueueHandle, ChanKey, Settle, Vec<u64>)>,
    /// A queue this connection published to that asked publishers to pause.
    pub congested: Option<QueueHandle>,
    /// When to check the channels' consumer acknowledgement timeouts next
    /// (never later than the earliest deadline; may be earlier).
    pub ack_deadline: Option<std::time::Instant>,
    /// Exchange lookups for publishing, without the vhost's lock.
    pub exchanges: crate::broker::vhost::ExchangeCache,
    /// Remembered routes of headerless publishes.
    pub routes: crate::broker::route_cache::RouteCache,
}

impl ConnCtx {
    /// A context for a freshly opened connection.
    pub fn new(
        broker: Arc<Broker>,
        vhost: Arc<VHost>,
        conn: ConnHandle,
        user: Arc<User>,
        frame_max: u32,
        consumer_cancel_notify: bool,
    ) -> Self {
        let max_message_size = broker.config.amqp.max_message_size;
        ConnCtx {
            broker,
            vhost,
            conn,
            user,
            out: Outbox::default(),
            frame_max,
            consumer_cancel_notify,
            max_message_size,
            route_buf: Vec::new(),
            publishes: Vec::new(),
            settles: Vec::new(),
            congested: None,
            ack_deadline: None,
            exchanges: Default::default(),
            routes: Default::default(),
        }
    }

    /// Appends a method frame to the outbox.
    pub fn send_method(&mut self, channel: u16, method: &AMQPClass) {
        codec::encode_method(self.out.buf(), channel, method);
    }

    /// Appends a content header and body (used for deliver, get-ok and return).
    pub fn send_content(&mut self, channel: u16, msg: &Message) {
        codec::encode_header(
            self.out.buf(),
            channel,
            msg.body_size(),
            &msg.raw_properties,
        );
        let frame_max = self.frame_max;
        self.out.push_body(channel, &msg.body, frame_max);
    }

    /// Adds a message to this read's batch for `queue`.
    pub fn enqueue(&mut self, queue: &QueueHandle, msg: Arc<Message>, confirm: Option<ConfirmTag>) {
        match self.publishes.iter_mut().find(|(q, _)| q.id == queue.id) {
            Some((_, items)) => items.push((msg, confirm)),
            None => self.publishes.push((queue.clone(), vec![(msg, confirm)])),
        }
    }

    /// Adds a settlement to this read's batch for `queue`.
    pub fn settle(&mut self, queue: &QueueHandle, chan_key: ChanKey, how: Settle, msg_id: u64) {
        match self
            .settles
            .iter_mut()
            .find(|(q, k, h, _)| q.id == queue.id && *k == chan_key && *h == how)
        {
            Some((_, _, _, ids)) => ids.push(msg_id),
            None => self
                .settles
                .push((queue.clone(), chan_key, how, vec![msg_id])),
        }
    }

    /// Queues with publishes waiting in this read's batches.
    pub fn pending_queues(&self) -> Vec<QueueHandle> {
        self.publishes.iter().map(|(q, _)| q.clone()).collect()
    }

    /// Sends every pending batch to its queue (waits for inbox space: backpressure).
    pub async fn flush(&mut self) {
        for (queue, items) in self.publishes.drain(..) {
            let tags: Vec<ConfirmTag> = items.iter().filter_map(|(_, c)| *c).collect();
            let delivered = queue
                .send(QueueCmd::Publish {
                    items,
                    conn: Some(self.conn.clone()),
                })
                .await;
            if queue.gauge.congested() {
                self.congested = Some(queue.clone());
            }
            if !delivered && !tags.is_empty() {
                // The queue was deleted after routing: RabbitMQ confirms such messages.
                let _ = self.conn.tx.send(ConnEvent::Confirms { tags, ok: true });
            }
        }
        for (queue, chan_key, how, ids) in self.settles.drain(..) {
            queue.send(QueueCmd::Settle(chan_key, ids, how)).await;
        }
    }
}
