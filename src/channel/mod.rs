//! Channels: per-channel state owned by the connection task, with no lock and no
//! task of its own.
//!
//! [`Channel::handle`] dispatches one assembled command to a handler named after
//! the AMQP method (`basic_publish`, `queue_declare`, …). Handlers return soft
//! errors as `Err(AmqpError)`; the connection turns them into `channel.close`
//! (or `connection.close` for hard codes). Must only be used from the owning
//! connection task.

pub mod confirm;
pub mod consume;
pub mod ctx;
pub mod declare;
pub mod publish;

use crate::protocol::assembler::{Assembler, Command};
use crate::protocol::{AmqpError, AmqpResult};
use crate::queue::{ChanKey, ChannelLimiter, Delivery, QueueCmd, QueueHandle};
use amq_protocol::protocol::{
    access, basic, channel, confirm as confirm_class, exchange, queue, tx, AMQPClass,
};
pub use ctx::ConnCtx;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// A delivery the client has not settled yet.
#[derive(Debug)]
pub struct UnackedEntry {
    /// Delivery tag on this channel.
    pub tag: u64,
    /// Source queue.
    pub queue: QueueHandle,
    /// Queue-local message id.
    pub msg_id: u64,
    /// Whether it counts against the channel's global prefetch.
    pub counted_global: bool,
    /// Consumer acknowledgement timeout: (deadline, timeout in ms).
    pub ack_timeout: Option<(Instant, u64)>,
}

/// A consumer on this channel.
#[derive(Debug)]
pub struct ChannelConsumer {
    /// The queue (`None` for the direct reply-to pseudo-queue).
    pub queue: Option<QueueHandle>,
    /// `no_ack` mode.
    pub no_ack: bool,
    /// Acknowledgement timeout for its deliveries, in ms (`None`: none).
    pub ack_timeout: Option<u64>,
}

/// State of one open channel.
#[derive(Debug)]
pub struct Channel {
    /// Channel number.
    pub id: u16,
    /// Broker-unique key of this channel instance.
    pub key: ChanKey,
    /// Content assembly state.
    pub assembler: Assembler,
    /// We sent `channel.close` and wait for `close-ok`.
    pub closing: bool,
    /// Next delivery tag.
    pub next_tag: u64,
    /// Unsettled deliveries, ordered by tag.
    pub unacked: VecDeque<UnackedEntry>,
    /// Consumers by tag.
    pub consumers: FxHashMap<Arc<str>, ChannelConsumer>,
    /// Prefetch applied to new consumers (`basic.qos` with global=false).
    pub consumer_prefetch: u32,
    /// Channel-wide credit shared with queues.
    pub limiter: Arc<ChannelLimiter>,
    /// Publisher confirms, once `confirm.select` was received.
    pub confirms: Option<confirm::Confirms>,
    /// Transaction buffer, once `tx.select` was received.
    pub tx: Option<publish::TxBuffer>,
    /// Last queue declared on this channel (for empty queue names).
    pub last_queue: Option<String>,
    /// Direct reply-to registration key.
    pub reply_key: Option<String>,
}

impl Channel {
    /// A newly opened channel.
    pub fn new(id: u16, key: ChanKey, limiter: Arc<ChannelLimiter>) -> Self {
        Channel {
            id,
            key,
            assembler: Assembler::default(),
            closing: false,
            next_tag: 1,
            unacked: VecDeque::new(),
            consumers: FxHashMap::default(),
            consumer_prefetch: 0,
            limiter,
            confirms: None,
            tx: None,
            last_queue: None,
            reply_key: None,
        }
    }

    /// Handles one assembled command.
    pub async fn handle(&mut self, ctx: &mut ConnCtx, cmd: Command) -> AmqpResult<()> {
        match cmd {
            Command::Publish(p, header, body) => self.basic_publish(ctx, *p, header, body),
            Command::Method(m) => {
                let (class_id, method_id) = (m.get_amqp_class_id(), m.get_amqp_method_id());
                // Anything but a publish or an ack must observe earlier publishes and acks.
                if !matches!(
                    *m,
                    AMQPClass::Basic(
                        basic::AMQPMethod::Ack(_)
                            | basic::AMQPMethod::Nack(_)
                            | basic::AMQPMethod::Reject(_)
                    )
                ) {
                    ctx.flush().await;
                }
                self.method(ctx, *m)
                    .await
                    .map_err(|e| e.on_method(class_id, method_id))
            }
        }
    }

    async fn method(&mut self, ctx: &mut ConnCtx, m: AMQPClass) -> AmqpResult<()> {
        match m {
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => self.channel_flow(ctx, f.active),
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(_)) => Ok(()),
            AMQPClass::Channel(channel::AMQPMethod::Open(_)) => {
                Err(AmqpError::channel_error("second 'channel.open' seen"))
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(d)) => self.exchange_declare(ctx, d),
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(d)) => self.exchange_delete(ctx, d),
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(b)) => self.exchange_bind(ctx, b),
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(u)) => self.exchange_unbind(ctx, u),
            AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => self.queue_declare(ctx, d).await,
            AMQPClass::Queue(queue::AMQPMethod::Bind(b)) => self.queue_bind(ctx, b),
            AMQPClass::Queue(queue::AMQPMethod::Unbind(u)) => self.queue_unbind(ctx, u),
            AMQPClass::Queue(queue::AMQPMethod::Purge(p)) => self.queue_purge(ctx, p).await,
            AMQPClass::Queue(queue::AMQPMethod::Delete(d)) => self.queue_delete(ctx, d).await,
            AMQPClass::Basic(basic::AMQPMethod::Qos(q)) => self.basic_qos(ctx, q),
            AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => self.basic_consume(ctx, c).await,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(c)) => self.basic_cancel(ctx, c).await,
            AMQPClass::Basic(basic::AMQPMethod::Get(g)) => self.basic_get(ctx, g).await,
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                self.basic_ack(ctx, a.delivery_tag, a.multiple)
            }
            AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
                self.basic_reject(ctx, n.delivery_tag, n.multiple, n.requeue)
            }
            AMQPClass::Basic(basic::AMQPMethod::Reject(r)) => {
                self.basic_reject(ctx, r.delivery_tag, false, r.requeue)
            }
            AMQPClass::Basic(basic::AMQPMethod::Recover(r)) => {
                self.basic_recover(ctx, r.requeue, true)
            }
            AMQPClass::Basic(basic::AMQPMethod::RecoverAsync(r)) => {
                self.basic_recover(ctx, r.requeue, false)
            }
            AMQPClass::Confirm(confirm_class::AMQPMethod::Select(s)) => {
                self.confirm_select(ctx, s.nowait)
            }
            AMQPClass::Tx(tx::AMQPMethod::Select(_)) => self.tx_select(ctx),
            AMQPClass::Tx(tx::AMQPMethod::Commit(_)) => self.tx_commit(ctx).await,
            AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => self.tx_rollback(ctx),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                // Deprecated in 0-9-1; RabbitMQ still answers with ticket 1.
                // amq-protocol's RequestOk has no ticket field, so encode it by hand.
                crate::protocol::codec::encode_raw_method(ctx.out.buf(), self.id, 30, 11, &[0, 1]);
                Ok(())
            }
            other => Err(AmqpError::command_invalid(format_args!(
                "unexpected method {}.{} on channel {}",
                other.get_amqp_class_id(),
                other.get_amqp_method_id(),
                self.id
            ))),
        }
    }

    /// `channel.flow`: like RabbitMQ (since 3.3), only `active=true` is accepted;
    /// clients' own test suites (amqp091-go) rely on the 540 for `active=false`.
    fn channel_flow(&mut self, ctx: &mut ConnCtx, active: bool) -> AmqpResult<()> {
        if !active {
            return Err(AmqpError::not_implemented("active=false"));
        }
        ctx.send_method(
            self.id,
            &AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk { active })),
        );
        Ok(())
    }

    /// Writes a delivery from a queue (or drops it if its consumer is gone).
    /// `now` is when the connection took the batch (ack timeouts count from it).
    pub fn deliver(&mut self, ctx: &mut ConnCtx, d: Delivery, now: Instant) {
        let Some(consumer) = self.consumers.get(&d.consumer_tag) else {
            // Cancelled while the delivery was in flight: give it back untouched.
            if let (true, Some(q)) = (d.needs_ack, &d.queue) {
                ctx.settle(q, self.key, crate::queue::Settle::Requeue, d.msg_id);
                if d.counted_global {
                    self.limiter.release(1);
                }
            }
            return;
        };
        let timeout = consumer.ack_timeout;
        let tag = self.next_tag;
        self.next_tag += 1;
        if let (true, Some(queue)) = (d.needs_ack, d.queue) {
            self.push_unacked(
                ctx,
                UnackedEntry {
                    tag,
                    queue,
                    msg_id: d.msg_id,
                    counted_global: d.counted_global,
                    ack_timeout: None,
                },
                timeout,
                now,
            );
        }
        crate::protocol::codec::encode_deliver(
            ctx.out.buf(),
            self.id,
            &d.consumer_tag,
            tag,
            d.redelivered,
            &d.msg.exchange,
            &d.msg.routing_key,
        );
        ctx.send_content(self.id, &d.msg);
    }

    /// Records an unsettled delivery; with an ack timeout, makes sure the
    /// connection's ack-timeout timer fires by its deadline.
    pub fn push_unacked(
        &mut self,
        ctx: &mut ConnCtx,
        mut entry: UnackedEntry,
        timeout_ms: Option<u64>,
        now: Instant,
    ) {
        if let Some(ms) = timeout_ms {
            let deadline = now + std::time::Duration::from_millis(ms);
            entry.ack_timeout = Some((deadline, ms));
            if ctx.ack_deadline.is_none_or(|d| deadline < d) {
                ctx.ack_deadline = Some(deadline);
            }
        }
        self.unacked.push_back(entry);
    }

    /// The consumer acknowledgement timeout (RabbitMQ's `consumer_timeout`):
    /// like RabbitMQ, only the oldest unsettled delivery that has a timeout is
    /// checked. Returns the 406 that closes the channel if it timed out, else
    /// the deadline to check again at.
    pub fn check_ack_timeout(&self, now: Instant) -> Result<Option<Instant>, AmqpError> {
        let Some((deadline, ms)) = self.unacked.iter().find_map(|u| u.ack_timeout) else {
            return Ok(None);
        };
        if deadline > now {
            return Ok(Some(deadline));
        }
        Err(AmqpError::precondition(format_args!(
            "delivery acknowledgement on channel {} timed out. Timeout value used: {ms} ms. \
             This timeout value can be configured, see consumers doc guide to learn more",
            self.id
        )))
    }

    /// Notifies the client that the broker cancelled one of its consumers.
    pub fn consumer_cancelled(&mut self, ctx: &mut ConnCtx, tag: Arc<str>) {
        if self.consumers.remove(&tag).is_some() && ctx.consumer_cancel_notify {
            ctx.send_method(
                self.id,
                &AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: tag.as_ref().into(),
                    nowait: true,
                })),
            );
        }
    }

    /// Releases everything the channel holds: consumers are removed and unacked
    /// messages go back to their queues. Called once, when the channel closes.
    pub async fn release(&mut self, ctx: &mut ConnCtx) {
        ctx.flush().await;
        let mut queues: Vec<QueueHandle> = Vec::new();
        let touched = self
            .consumers
            .values()
            .filter_map(|c| c.queue.clone())
            .chain(self.unacked.iter().map(|u| u.queue.clone()))
            .chain(
                self.tx
                    .iter()
                    .flat_map(|t| t.acked.iter().map(|u| u.queue.clone())),
            );
        for q in touched {
            if !queues.iter().any(|x| x.id == q.id) {
                queues.push(q);
            }
        }
        for q in queues {
            q.send(QueueCmd::ChannelClosed(self.key)).await;
        }
        self.consumers.clear();
        self.unacked.clear();
        self.tx = None;
        if let Some(key) = self.reply_key.take() {
            ctx.broker.unregister_reply_consumer(&key);
        }
    }
}
