//! A minimal AMQP 0-9-1 client connection: handshake, synchronous calls for
//! setup (channel open, declares, qos, consume, confirm.select), and a clean
//! close. Once set up, a connection is taken apart with [`Client::into_parts`]
//! and the hot loops in `run.rs` drive the socket directly.
//!
//! Heartbeats are negotiated off (a load generator keeps the socket busy, and a
//! stalled broker should show up as a stall, not as a disconnect).
//!
//! Also compiled into `benches/hot_paths.rs`; depends only on [`super::wire`].

use super::wire::{self, ids, split_frame, Uri, FRAME_HEARTBEAT, FRAME_METHOD, HEARTBEAT};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use anyhow::{anyhow, bail, Context as _};
use bytes::{Buf as _, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long any setup call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest frame we ask for (RabbitMQ's default).
const MAX_FRAME: u32 = 131_072;

/// An open AMQP connection in setup mode.
pub struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    /// Negotiated `frame_max`.
    pub frame_max: u32,
}

/// What `queue.declare-ok` reported.
#[derive(Debug, Clone, Copy)]
pub struct QueueState {
    /// Ready messages.
    pub messages: u32,
    /// Consumers.
    pub consumers: u32,
}

impl Client {
    /// Connects, authenticates with PLAIN and opens the URI's vhost.
    pub async fn connect(uri: &Uri, name: &str) -> anyhow::Result<Client> {
        let stream = TcpStream::connect((uri.host.as_str(), uri.port))
            .await
            .with_context(|| format!("cannot connect to {}:{}", uri.host, uri.port))?;
        stream.set_nodelay(true)?;
        let mut c = Client {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            frame_max: MAX_FRAME,
        };
        tokio::time::timeout(CALL_TIMEOUT, c.handshake(uri, name))
            .await
            .map_err(|_| anyhow!("handshake with {}:{} timed out", uri.host, uri.port))??;
        Ok(c)
    }

    async fn handshake(&mut self, uri: &Uri, name: &str) -> anyhow::Result<()> {
        self.stream.write_all(wire::PROTOCOL_HEADER).await?;
        let start = match self.expect(0, (10, 10)).await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s,
            _ => unreachable!("expect checked the method"),
        };
        let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
        if !mechanisms.split(' ').any(|m| m == "PLAIN") {
            bail!("broker does not offer PLAIN authentication (offers: {mechanisms})");
        }
        let mut caps = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
        ] {
            caps.insert(cap.into(), AMQPValue::Boolean(true));
        }
        let mut props = FieldTable::default();
        props.insert(
            "product".into(),
            AMQPValue::LongString("warrenmqperf".into()),
        );
        props.insert(
            "version".into(),
            AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
        );
        props.insert("connection_name".into(), AMQPValue::LongString(name.into()));
        props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        let response = format!("\0{}\0{}", uri.user, uri.password);
        self.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: response.into(),
                locale: "en_US".into(),
            })),
        )
        .await?;
        let tune = match self.expect(0, (10, 30)).await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            _ => unreachable!("expect checked the method"),
        };
        self.frame_max = match tune.frame_max {
            0 => MAX_FRAME,
            n => n.min(MAX_FRAME),
        };
        self.send(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: self.frame_max,
                heartbeat: 0,
            })),
        )
        .await?;
        self.call(
            0,
            &AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: uri.vhost.as_str().into(),
            })),
            (10, 41),
        )
        .await?;
        Ok(())
    }

    /// Sends one method frame.
    pub async fn send(&mut self, ch: u16, method: &AMQPClass) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(128);
        wire::encode_method(&mut out, ch, method);
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Sends `method` and waits for the reply `(class, method)` on the same channel.
    pub async fn call(
        &mut self,
        ch: u16,
        method: &AMQPClass,
        reply: (u16, u16),
    ) -> anyhow::Result<AMQPClass> {
        self.send(ch, method).await?;
        tokio::time::timeout(CALL_TIMEOUT, self.expect(ch, reply))
            .await
            .map_err(|_| anyhow!("no reply {}.{} within {CALL_TIMEOUT:?}", reply.0, reply.1))?
    }

    /// Reads until the method `want` arrives on `ch`. Answers heartbeats; a
    /// connection.close or channel.close from the broker becomes an error.
    pub async fn expect(&mut self, ch: u16, want: (u16, u16)) -> anyhow::Result<AMQPClass> {
        loop {
            let Some((frame, len)) = split_frame(&self.rbuf).map_err(|e| anyhow!(e))? else {
                self.rbuf.reserve(64 * 1024);
                if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                    bail!("connection closed by the broker");
                }
                continue;
            };
            let (kind, channel) = (frame.kind, frame.channel);
            let payload = frame.payload.to_vec();
            self.rbuf.advance(len);
            match kind {
                FRAME_HEARTBEAT => self.stream.write_all(&HEARTBEAT).await?,
                FRAME_METHOD => {
                    let got = wire::method_ids(&payload);
                    if got == ids::CONNECTION_CLOSE {
                        let mut ok = Vec::new();
                        wire::encode_method(
                            &mut ok,
                            0,
                            &AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        let _ = self.stream.write_all(&ok).await;
                        bail!(
                            "connection closed by the broker: {}",
                            wire::close_reason(&payload)
                        );
                    }
                    if got == ids::CHANNEL_CLOSE {
                        self.send(
                            channel,
                            &AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                        )
                        .await?;
                        bail!(
                            "channel {channel} closed by the broker: {}",
                            wire::close_reason(&payload)
                        );
                    }
                    if got == want && channel == ch {
                        return wire::decode_method(&payload).map_err(|e| anyhow!(e));
                    }
                    // Anything else during setup (e.g. connection.blocked) is ignored.
                }
                _ => {}
            }
        }
    }

    /// channel.open.
    pub async fn open_channel(&mut self, ch: u16) -> anyhow::Result<()> {
        self.call(
            ch,
            &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            (20, 11),
        )
        .await?;
        Ok(())
    }

    /// exchange.declare (non-passive).
    pub async fn declare_exchange(
        &mut self,
        ch: u16,
        name: &str,
        kind: &str,
        durable: bool,
    ) -> anyhow::Result<()> {
        self.call(
            ch,
            &AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: name.into(),
                kind: kind.into(),
                passive: false,
                durable,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
            (40, 11),
        )
        .await?;
        Ok(())
    }

    /// queue.declare (non-passive, not exclusive, not auto-delete).
    pub async fn declare_queue(
        &mut self,
        ch: u16,
        name: &str,
        durable: bool,
    ) -> anyhow::Result<QueueState> {
        let reply = self
            .call(
                ch,
                &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: name.into(),
                    passive: false,
                    durable,
                    exclusive: false,
                    auto_delete: false,
                    nowait: false,
                    arguments: FieldTable::default(),
                })),
                (50, 11),
            )
            .await?;
        match reply {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(QueueState {
                messages: ok.message_count,
                consumers: ok.consumer_count,
            }),
            _ => unreachable!("call checked the method"),
        }
    }

    /// queue.bind.
    pub async fn bind_queue(
        &mut self,
        ch: u16,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> anyhow::Result<()> {
        self.call(
            ch,
            &AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: queue.into(),
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                nowait: false,
                arguments: FieldTable::default(),
            })),
            (50, 21),
        )
        .await?;
        Ok(())
    }

    /// queue.delete (unconditional); returns the number of messages dropped.
    pub async fn delete_queue(&mut self, ch: u16, name: &str) -> anyhow::Result<u32> {
        let reply = self
            .call(
                ch,
                &AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                    queue: name.into(),
                    if_unused: false,
                    if_empty: false,
                    nowait: false,
                })),
                (50, 41),
            )
            .await?;
        match reply {
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(ok)) => Ok(ok.message_count),
            _ => unreachable!("call checked the method"),
        }
    }

    /// basic.qos with a per-consumer prefetch count.
    pub async fn qos(&mut self, ch: u16, prefetch: u16) -> anyhow::Result<()> {
        self.call(
            ch,
            &AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: prefetch,
                global: false,
            })),
            (60, 11),
        )
        .await?;
        Ok(())
    }

    /// confirm.select.
    pub async fn confirm_select(&mut self, ch: u16) -> anyhow::Result<()> {
        self.call(
            ch,
            &AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
            (85, 11),
        )
        .await?;
        Ok(())
    }

    /// basic.consume; waits for consume-ok.
    pub async fn consume(
        &mut self,
        ch: u16,
        queue: &str,
        tag: &str,
        no_ack: bool,
    ) -> anyhow::Result<()> {
        self.call(
            ch,
            &AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.into(),
                consumer_tag: tag.into(),
                no_local: false,
                no_ack,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
            (60, 21),
        )
        .await?;
        Ok(())
    }

    /// The socket and any bytes already read past the last reply.
    pub fn into_parts(self) -> (TcpStream, BytesMut) {
        (self.stream, self.rbuf)
    }

    /// connection.close, then waits (briefly) for close-ok.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let close = close_frame();
        self.stream.write_all(&close).await?;
        let wait = self.expect(0, ids::CONNECTION_CLOSE_OK);
        match tokio::time::timeout(Duration::from_secs(5), wait).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => bail!("no connection.close-ok within 5 s"),
        }
    }
}

/// A `connection.close(200, "bye")` frame.
pub fn close_frame() -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_method(
        &mut out,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    out
}
