//! `basic.publish`: checks (in RabbitMQ's order), routing, mandatory returns,
//! direct reply-to, and transactions (`tx.select/commit/rollback`).

use super::{Channel, ConnCtx, UnackedEntry};
use crate::broker::route_cache::RouteCache;
use crate::broker::{Exchange, REPLY_TO_QUEUE};
use crate::message::Message;
use crate::protocol::codec::ContentHeader;
use crate::protocol::{AmqpError, AmqpResult, ReplyCode};
use crate::queue::{ConfirmTag, ConnEvent, Delivery, Settle};
use amq_protocol::protocol::{basic, tx, AMQPClass};
use bytes::Bytes;
use std::sync::Arc;

/// Publishes and acks held back until `tx.commit`.
#[derive(Debug, Default)]
pub struct TxBuffer {
    /// Publishes in order.
    pub publishes: Vec<(basic::Publish, ContentHeader, Bytes)>,
    /// Settlements in order (entries already removed from the unacked list).
    pub acked: Vec<UnackedEntry>,
    /// How each entry of `acked` is settled.
    pub how: Vec<Settle>,
}

impl Channel {
    /// `basic.publish` with its content. Never waits: flow control happens
    /// when the connection flushes its per-queue batches.
    pub fn basic_publish(
        &mut self,
        ctx: &mut ConnCtx,
        p: basic::Publish,
        header: ContentHeader,
        body: Bytes,
    ) -> AmqpResult<()> {
        let check = self.check_publish(ctx, &p, &header);
        let ex = check.map_err(|e| e.on_method(60, 40))?;
        if let Some(tx) = self.tx.as_mut() {
            tx.publishes.push((p, header, body));
            return Ok(());
        }
        self.route_publish(ctx, p, header, body, ex);
        Ok(())
    }

    /// RabbitMQ's publish checks; returns the target exchange (looked up once,
    /// from the connection's cache).
    fn check_publish(
        &self,
        ctx: &mut ConnCtx,
        p: &basic::Publish,
        header: &ContentHeader,
    ) -> AmqpResult<Option<Arc<Exchange>>> {
        if p.immediate {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        let exchange = p.exchange.as_str();
        let ex = ctx.exchanges.get(&ctx.vhost, exchange);
        if !exchange.is_empty() {
            match &ex {
                None => return Err(AmqpError::no_exchange(exchange, &ctx.vhost.name)),
                Some(ex) if ex.internal => {
                    return Err(AmqpError::access_refused(format_args!(
                        "cannot publish to internal exchange '{}' in vhost '{}'",
                        exchange, ctx.vhost.name
                    )))
                }
                Some(_) => {}
            }
        }
        crate::queue::args::message_expiration(&header.properties)?;
        crate::broker::sender_selected::check_headers(&header.properties)?;
        let reply_to = header.properties.reply_to().as_ref().map(|r| r.as_str());
        if reply_to == Some(REPLY_TO_QUEUE) && self.reply_key.is_none() {
            return Err(AmqpError::precondition(
                "fast reply consumer does not exist",
            ));
        }
        if let Some(user_id) = header.properties.user_id() {
            if user_id.as_str() != ctx.user.name() {
                return Err(AmqpError::precondition(format_args!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    user_id.as_str(),
                    ctx.user.name()
                )));
            }
        }
        Ok(ex)
    }

    /// Routes one publish to `ex` (its exchange, if it exists) and queues it
    /// into the per-queue batches.
    fn route_publish(
        &mut self,
        ctx: &mut ConnCtx,
        p: basic::Publish,
        mut header: ContentHeader,
        body: Bytes,
        ex: Option<Arc<Exchange>>,
    ) {
        if header.properties.reply_to().as_ref().map(|r| r.as_str()) == Some(REPLY_TO_QUEUE) {
            // Direct reply-to: name the caller's pseudo-queue instead.
            let key = self.reply_key.as_deref().unwrap_or_default();
            let props = header
                .properties
                .clone()
                .with_reply_to(format!("{REPLY_TO_QUEUE}.{key}").into());
            header = crate::protocol::codec::content_header(header.body_size, props);
        }
        let mandatory = p.mandatory;
        let mut msg = Message::new(
            String::from(p.exchange),
            String::from(p.routing_key),
            header,
            body,
        );
        let direct = msg.exchange.is_empty() && msg.routing_key.starts_with(REPLY_TO_QUEUE);
        let seq = self.confirms.as_mut().map(|c| c.next_seq());
        let confirm = seq.map(|seq| ConfirmTag {
            chan_key: self.key,
            seq,
        });

        let mut routed = 0u32;
        // A delayed exchange confirms this publish itself, once its log is on disk.
        let mut held = false;
        if direct {
            routed = self.publish_reply(ctx, &msg);
        } else if let Some(ex) = ex
            .as_ref()
            .filter(|ex| RouteCache::applies(ex, msg.headers().is_some()))
        {
            let targets = ctx.routes.route(&ctx.vhost, ex, &msg.routing_key);
            routed = targets.len() as u32;
            for q in targets.iter() {
                ctx.enqueue(q, msg.clone(), confirm);
            }
        } else if let Some(ex) = ex {
            let mut targets = std::mem::take(&mut ctx.route_buf);
            let published =
                ctx.vhost
                    .publish(&ex, msg, confirm.map(|tag| (&ctx.conn, tag)), &mut targets);
            (msg, held) = (published.msg, published.held);
            routed = targets.len() as u32;
            for q in targets.drain(..) {
                ctx.enqueue(&q, msg.clone(), confirm);
            }
            ctx.route_buf = targets;
        }

        if routed == 0 && mandatory {
            ctx.send_method(
                self.id,
                &AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: ReplyCode::NoRoute as u16,
                    reply_text: "NO_ROUTE".into(),
                    exchange: (*msg.exchange).into(),
                    routing_key: (*msg.routing_key).into(),
                })),
            );
            ctx.send_content(self.id, &msg);
        }
        if let (Some(c), Some(seq)) = (self.confirms.as_mut(), seq) {
            let waits_for = if direct { 0 } else { routed + held as u32 };
            c.expect(seq, waits_for);
            if waits_for == 0 {
                c.flush(self.id, ctx);
            }
        }
    }

    /// Delivers a reply straight to the direct reply-to consumer it names.
    fn publish_reply(&mut self, ctx: &mut ConnCtx, msg: &Arc<Message>) -> u32 {
        let key = msg
            .routing_key
            .strip_prefix(REPLY_TO_QUEUE)
            .and_then(|k| k.strip_prefix('.'))
            .unwrap_or("");
        let Some(consumer) = ctx.broker.reply_consumer(key) else {
            return 0;
        };
        consumer
            .conn
            .shared
            .queued_deliveries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sent = consumer.conn.tx.send(ConnEvent::Deliver(vec![Delivery {
            chan_key: consumer.chan_key,
            consumer_tag: consumer.consumer_tag.clone(),
            msg: msg.clone(),
            msg_id: 0,
            redelivered: false,
            queue: None,
            needs_ack: false,
            counted_global: false,
        }]));
        sent.is_ok() as u32
    }

    /// `tx.select`.
    pub fn tx_select(&mut self, ctx: &mut ConnCtx) -> AmqpResult<()> {
        if self.confirms.is_some() {
            return Err(AmqpError::precondition(
                "cannot switch from confirm to tx mode",
            ));
        }
        if self.tx.is_none() {
            self.tx = Some(TxBuffer::default());
        }
        ctx.send_method(
            self.id,
            &AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
        );
        Ok(())
    }

    /// `tx.commit`: applies buffered publishes and acks, then replies.
    pub async fn tx_commit(&mut self, ctx: &mut ConnCtx) -> AmqpResult<()> {
        let Some(buffer) = self.tx.take() else {
            return Err(AmqpError::precondition("channel is not transactional"));
        };
        self.tx = Some(TxBuffer::default());
        for (p, header, body) in buffer.publishes {
            let ex = ctx.exchanges.get(&ctx.vhost, p.exchange.as_str());
            self.route_publish(ctx, p, header, body, ex);
        }
        let mut released = 0;
        for (entry, how) in buffer.acked.into_iter().zip(buffer.how) {
            released += entry.counted_global as u32;
            ctx.settle(&entry.queue, self.key, how, entry.msg_id);
        }
        self.limiter.release(released);
        let targets = ctx.pending_queues();
        ctx.flush().await;
        // commit-ok only once the committed persistent messages are on disk.
        for q in targets.iter().filter(|q| q.info.durable) {
            q.ask(crate::queue::QueueCmd::Sync).await;
        }
        ctx.send_method(
            self.id,
            &AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        );
        Ok(())
    }

    /// `tx.rollback`: drops buffered publishes; buffered acks become unacked again.
    pub fn tx_rollback(&mut self, ctx: &mut ConnCtx) -> AmqpResult<()> {
        let Some(buffer) = self.tx.as_mut() else {
            return Err(AmqpError::precondition("channel is not transactional"));
        };
        buffer.publishes.clear();
        buffer.how.clear();
        let mut restored: Vec<UnackedEntry> = buffer.acked.drain(..).collect();
        restored.extend(self.unacked.drain(..));
        restored.sort_unstable_by_key(|e| e.tag);
        self.unacked = restored.into();
        ctx.send_method(
            self.id,
            &AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
        );
        Ok(())
    }
}
