//! Topology methods: `exchange.*` and `queue.*`. The checks and reply texts
//! live in the vhost; these handlers translate arguments and send the `-ok`s.

use super::{Channel, ConnCtx};
use crate::broker::{Destination, ExchangeDecl, QueueDecl};
use crate::protocol::{AmqpError, AmqpResult};
use crate::queue::QueueCmd;
use amq_protocol::protocol::{exchange, queue, AMQPClass};

impl Channel {
    /// `exchange.declare`.
    pub fn exchange_declare(&mut self, ctx: &mut ConnCtx, d: exchange::Declare) -> AmqpResult<()> {
        if d.passive {
            ctx.vhost.exchange_exists(d.exchange.as_str())?;
        } else {
            ctx.vhost.declare_exchange(&ExchangeDecl {
                name: d.exchange.as_str().to_owned(),
                kind: d.kind.as_str().to_owned(),
                durable: d.durable,
                auto_delete: d.auto_delete,
                internal: d.internal,
                arguments: d.arguments,
            })?;
        }
        if !d.nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
            );
        }
        Ok(())
    }

    /// `exchange.delete`.
    pub fn exchange_delete(&mut self, ctx: &mut ConnCtx, d: exchange::Delete) -> AmqpResult<()> {
        ctx.vhost
            .delete_exchange(d.exchange.as_str(), d.if_unused)?;
        if !d.nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
            );
        }
        Ok(())
    }

    /// `exchange.bind` (destination ← source).
    pub fn exchange_bind(&mut self, ctx: &mut ConnCtx, b: exchange::Bind) -> AmqpResult<()> {
        ctx.vhost.bind(
            b.source.as_str(),
            Destination::Exchange(b.destination.as_str().into()),
            b.routing_key.as_str(),
            &b.arguments,
        )?;
        if !b.nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
            );
        }
        Ok(())
    }

    /// `exchange.unbind`.
    pub fn exchange_unbind(&mut self, ctx: &mut ConnCtx, u: exchange::Unbind) -> AmqpResult<()> {
        ctx.vhost.unbind(
            u.source.as_str(),
            Destination::Exchange(u.destination.as_str().into()),
            u.routing_key.as_str(),
            &u.arguments,
        )?;
        if !u.nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
            );
        }
        Ok(())
    }

    /// `queue.declare`.
    pub async fn queue_declare(&mut self, ctx: &mut ConnCtx, d: queue::Declare) -> AmqpResult<()> {
        let name = d.queue.as_str();
        if d.passive && name == crate::broker::REPLY_TO_QUEUE {
            // RabbitMQ answers for the pseudo-queue with 0 messages and 1 consumer.
            if !d.nowait {
                ctx.send_method(
                    self.id,
                    &AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                        queue: d.queue,
                        message_count: 0,
                        consumer_count: 1,
                    })),
                );
            }
            return Ok(());
        }
        let queue = if d.passive {
            if name.is_empty() {
                let last = self.queue_name(name)?;
                ctx.vhost.queue_for(&last, ctx.conn.id)?
            } else {
                ctx.vhost.queue_for(name, ctx.conn.id)?
            }
        } else {
            ctx.vhost.declare_queue(
                &QueueDecl {
                    name: name.to_owned(),
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments,
                },
                ctx.conn.id,
            )?
        };
        let (messages, consumers) = queue
            .ask(QueueCmd::Stats)
            .await
            .ok_or_else(|| AmqpError::no_queue(&queue.info.name, &ctx.vhost.name))?;
        self.last_queue = Some(queue.info.name.to_string());
        if !d.nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                    queue: queue.info.name.as_ref().into(),
                    message_count: messages,
                    consumer_count: consumers,
                })),
            );
        }
        Ok(())
    }

    /// Empty queue name → last declared queue; empty key with it → that queue's name.
    fn binding_target(&self, queue: &str, routing_key: &str) -> AmqpResult<(String, String)> {
        let name = self.queue_name(queue)?;
        let key = if queue.is_empty() && routing_key.is_empty() {
            name.clone()
        } else {
            routing_key.to_owned()
        };
        Ok((name, key))
    }

    /// `queue.bind`.
    pub fn queue_bind(&mut self, ctx: &mut ConnCtx, b: queue::Bind) -> AmqpResult<()> {
        let (name, key) = self.binding_target(b.queue.as_str(), b.routing_key.as_str())?;
        if let Some(q) = ctx.vhost.queue(&name) {
            ctx.vhost.check_exclusive(&q, ctx.conn.id)?;
        }
        ctx.vhost.bind(
            b.exchange.as_str(),
            Destination::Queue(name.as_str().into()),
            &key,
            &b.arguments,
        )?;
        if !b.nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
            );
        }
        Ok(())
    }

    /// `queue.unbind`.
    pub fn queue_unbind(&mut self, ctx: &mut ConnCtx, u: queue::Unbind) -> AmqpResult<()> {
        let (name, key) = self.binding_target(u.queue.as_str(), u.routing_key.as_str())?;
        if let Some(q) = ctx.vhost.queue(&name) {
            ctx.vhost.check_exclusive(&q, ctx.conn.id)?;
        }
        ctx.vhost.unbind(
            u.exchange.as_str(),
            Destination::Queue(name.as_str().into()),
            &key,
            &u.arguments,
        )?;
        ctx.send_method(
            self.id,
            &AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
        );
        Ok(())
    }

    /// `queue.purge`.
    pub async fn queue_purge(&mut self, ctx: &mut ConnCtx, p: queue::Purge) -> AmqpResult<()> {
        let name = self.queue_name(p.queue.as_str())?;
        let queue = ctx.vhost.queue_for(&name, ctx.conn.id)?;
        let count = queue.ask(QueueCmd::Purge).await.unwrap_or(0);
        if !p.nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                    message_count: count,
                })),
            );
        }
        Ok(())
    }

    /// `queue.delete`.
    pub async fn queue_delete(&mut self, ctx: &mut ConnCtx, d: queue::Delete) -> AmqpResult<()> {
        let name = self.queue_name(d.queue.as_str())?;
        let count = ctx
            .vhost
            .delete_queue(&name, d.if_unused, d.if_empty, ctx.conn.id)
            .await?;
        if !d.nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                    message_count: count,
                })),
            );
        }
        Ok(())
    }
}
