//! Consuming: `basic.qos`, `consume`, `cancel`, `get`, and settling deliveries
//! (`ack`, `nack`, `reject`, `recover`) against the tag-ordered unacked list.

use super::{Channel, ChannelConsumer, ConnCtx, UnackedEntry};
use crate::broker::{ReplyConsumer, REPLY_TO_QUEUE};
use crate::protocol::{AmqpError, AmqpResult};
use crate::queue::args::ConsumerArgs;
use crate::queue::{ConsumerSpec, QueueCmd, QueueHandle, Settle};
use amq_protocol::protocol::{basic, AMQPClass};
use std::sync::Arc;

impl Channel {
    /// `basic.qos`.
    pub fn basic_qos(&mut self, ctx: &mut ConnCtx, q: basic::Qos) -> AmqpResult<()> {
        if q.global {
            self.limiter.global_prefetch.store(
                q.prefetch_count as u32,
                std::sync::atomic::Ordering::Release,
            );
            self.limiter.wake();
        } else {
            // As RabbitMQ (rabbit_limiter:unlimit_prefetch): a per-consumer qos
            // also lifts an earlier channel-wide limit.
            self.consumer_prefetch = q.prefetch_count as u32;
            self.limiter
                .global_prefetch
                .store(0, std::sync::atomic::Ordering::Release);
            self.limiter.wake();
        }
        ctx.send_method(
            self.id,
            &AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        );
        Ok(())
    }

    /// Resolves an empty queue name to the channel's last declared queue.
    pub fn queue_name(&self, name: &str) -> AmqpResult<String> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    /// `basic.consume`.
    pub async fn basic_consume(&mut self, ctx: &mut ConnCtx, c: basic::Consume) -> AmqpResult<()> {
        let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
            generate_tag("amq.ctag-").into()
        } else {
            c.consumer_tag.as_str().into()
        };
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::not_allowed(format_args!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let queue_name = self.queue_name(c.queue.as_str())?;
        if queue_name == REPLY_TO_QUEUE {
            return self.consume_reply_to(ctx, c, tag);
        }
        let queue = ctx.vhost.queue_for(&queue_name, ctx.conn.id)?;
        let args = ConsumerArgs::parse(
            &c.arguments,
            &queue.info.name,
            &ctx.vhost.name,
            queue.info.args.queue_type,
        )?;
        let spec = ConsumerSpec {
            chan_key: self.key,
            tag: tag.clone(),
            conn: ctx.conn.clone(),
            no_ack: c.no_ack,
            prefetch: self.consumer_prefetch,
            exclusive: c.exclusive,
            priority: args.priority,
            limiter: self.limiter.clone(),
        };
        let ack_timeout = ack_timeout(ctx, &queue, args.consumer_timeout);
        match queue.ask(|reply| QueueCmd::Consume(spec, reply)).await {
            Some(result) => result?,
            None => return Err(AmqpError::no_queue(&queue_name, &ctx.vhost.name)),
        }
        self.consumers.insert(
            tag.clone(),
            ChannelConsumer {
                queue: Some(queue),
                no_ack: c.no_ack,
                ack_timeout,
            },
        );
        if !c.nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.as_ref().into(),
                })),
            );
        }
        Ok(())
    }

    fn consume_reply_to(
        &mut self,
        ctx: &mut ConnCtx,
        c: basic::Consume,
        tag: Arc<str>,
    ) -> AmqpResult<()> {
        if !c.no_ack {
            return Err(AmqpError::precondition("reply consumer cannot acknowledge"));
        }
        if self.reply_key.is_some() {
            return Err(AmqpError::precondition("reply consumer already set"));
        }
        let key = ctx.broker.register_reply_consumer(ReplyConsumer {
            conn: ctx.conn.clone(),
            chan_key: self.key,
            consumer_tag: tag.clone(),
        });
        self.reply_key = Some(key);
        self.consumers.insert(
            tag.clone(),
            ChannelConsumer {
                queue: None,
                no_ack: true,
                ack_timeout: None,
            },
        );
        if !c.nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.as_ref().into(),
                })),
            );
        }
        Ok(())
    }

    /// `basic.cancel`.
    pub async fn basic_cancel(&mut self, ctx: &mut ConnCtx, c: basic::Cancel) -> AmqpResult<()> {
        let tag: Arc<str> = c.consumer_tag.as_str().into();
        if let Some(consumer) = self.consumers.remove(&tag) {
            match consumer.queue {
                Some(q) => {
                    q.ask(|reply| QueueCmd::Cancel(self.key, tag.clone(), Some(reply)))
                        .await;
                }
                None => {
                    if let Some(key) = self.reply_key.take() {
                        ctx.broker.unregister_reply_consumer(&key);
                    }
                }
            }
        }
        if !c.nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                    consumer_tag: c.consumer_tag,
                })),
            );
        }
        Ok(())
    }

    /// `basic.get`.
    pub async fn basic_get(&mut self, ctx: &mut ConnCtx, g: basic::Get) -> AmqpResult<()> {
        let queue_name = self.queue_name(g.queue.as_str())?;
        let queue = ctx.vhost.queue_for(&queue_name, ctx.conn.id)?;
        let chan_key = self.key;
        let result = queue
            .ask(|reply| QueueCmd::Get {
                chan_key,
                no_ack: g.no_ack,
                reply,
            })
            .await
            .flatten();
        let Some(got) = result else {
            ctx.send_method(
                self.id,
                &AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
            return Ok(());
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        if !g.no_ack {
            let timeout = ack_timeout(ctx, &queue, None);
            self.push_unacked(
                ctx,
                UnackedEntry {
                    tag,
                    queue,
                    msg_id: got.msg_id,
                    counted_global: false,
                    ack_timeout: None,
                },
                timeout,
                std::time::Instant::now(),
            );
        }
        ctx.send_method(
            self.id,
            &AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: tag,
                redelivered: got.redelivered,
                exchange: got.msg.exchange.as_ref().into(),
                routing_key: got.msg.routing_key.as_ref().into(),
                message_count: got.remaining,
            })),
        );
        ctx.send_content(self.id, &got.msg);
        Ok(())
    }

    /// Removes and returns the unacked entries a (tag, multiple) pair names.
    fn take_unacked(&mut self, tag: u64, multiple: bool) -> AmqpResult<Vec<UnackedEntry>> {
        if multiple {
            if tag == 0 {
                return Ok(self.unacked.drain(..).collect());
            }
            // As RabbitMQ: the named tag itself must be outstanding.
            return match self.unacked.binary_search_by_key(&tag, |e| e.tag) {
                Ok(i) => Ok(self.unacked.drain(..=i).collect()),
                Err(_) => Err(AmqpError::unknown_delivery_tag(tag)),
            };
        }
        match self.unacked.binary_search_by_key(&tag, |e| e.tag) {
            Ok(i) => Ok(vec![self.unacked.remove(i).expect("index from search")]),
            Err(_) => Err(AmqpError::unknown_delivery_tag(tag)),
        }
    }

    fn settle_entries(&mut self, ctx: &mut ConnCtx, entries: Vec<UnackedEntry>, how: Settle) {
        if let Some(tx) = self.tx.as_mut() {
            tx.how.extend(std::iter::repeat_n(how, entries.len()));
            tx.acked.extend(entries);
            return;
        }
        let mut released = 0;
        for e in entries {
            released += e.counted_global as u32;
            ctx.settle(&e.queue, self.key, how, e.msg_id);
        }
        self.limiter.release(released);
    }

    /// `basic.ack`.
    pub fn basic_ack(&mut self, ctx: &mut ConnCtx, tag: u64, multiple: bool) -> AmqpResult<()> {
        let entries = self.take_unacked(tag, multiple)?;
        self.settle_entries(ctx, entries, Settle::Ack);
        Ok(())
    }

    /// `basic.reject` and `basic.nack`.
    pub fn basic_reject(
        &mut self,
        ctx: &mut ConnCtx,
        tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> AmqpResult<()> {
        let entries = self.take_unacked(tag, multiple)?;
        let how = if requeue {
            Settle::Requeue
        } else {
            Settle::Discard
        };
        self.settle_entries(ctx, entries, how);
        Ok(())
    }

    /// `basic.recover` / `recover-async`: every unacked message goes back to its queue.
    pub fn basic_recover(
        &mut self,
        ctx: &mut ConnCtx,
        requeue: bool,
        reply: bool,
    ) -> AmqpResult<()> {
        if !requeue {
            // RabbitMQ does not support redelivering to the original recipient.
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        let entries: Vec<UnackedEntry> = self.unacked.drain(..).collect();
        let mut released = 0;
        for e in entries {
            released += e.counted_global as u32;
            ctx.settle(&e.queue, self.key, Settle::Requeue, e.msg_id);
        }
        self.limiter.release(released);
        if reply {
            ctx.send_method(
                self.id,
                &AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
            );
        }
        Ok(())
    }
}

/// The consumer acknowledgement timeout for deliveries from `queue`: the
/// consumer's `x-consumer-timeout`, else the queue's, else the broker's
/// `amqp.consumer_timeout` (RabbitMQ 4's precedence). `None` (0) = no timeout.
fn ack_timeout(ctx: &ConnCtx, queue: &QueueHandle, consumer: Option<u64>) -> Option<u64> {
    let ms = consumer
        .or(queue.info.args.consumer_timeout)
        .unwrap_or(ctx.broker.config.amqp.consumer_timeout);
    (ms > 0).then_some(ms)
}

/// A tag like RabbitMQ's: prefix plus 22 URL-safe random characters.
pub fn generate_tag(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let mut tag = String::with_capacity(prefix.len() + 22);
    tag.push_str(prefix);
    for _ in 0..22 {
        tag.push(ALPHABET[rng.gen_range(0..64)] as char);
    }
    tag
}
