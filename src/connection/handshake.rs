//! The connection handshake, as one straight-line `async fn`:
//! protocol header → start/start-ok (SASL) → tune/tune-ok → open/open-ok.
//!
//! Nothing else runs on the connection until it succeeds, and the whole
//! exchange is bounded by `amqp.handshake_timeout`.

use crate::auth::{self, User, UserStore};
use crate::broker::{Broker, VHost};
use crate::protocol::codec::{self, Frame, PROTOCOL_HEADER};
use crate::protocol::{AmqpError, ReplyCode};
use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

/// What the handshake settled.
#[derive(Debug)]
pub struct Negotiated {
    /// Highest usable channel number.
    pub channel_max: u16,
    /// Largest frame either side may send.
    pub frame_max: u32,
    /// Heartbeat interval in seconds (0 = off).
    pub heartbeat: u16,
    /// The authenticated user.
    pub user: Arc<User>,
    /// The opened vhost.
    pub vhost: Arc<VHost>,
    /// Client capability: `consumer_cancel_notify`.
    pub consumer_cancel_notify: bool,
    /// Client capability: `connection.blocked`.
    pub connection_blocked: bool,
    /// Client-supplied connection name, if any.
    pub client_name: Option<String>,
    /// Bytes read past the handshake.
    pub buf: BytesMut,
}

/// The capabilities WarrenMQ implements, advertised in `connection.start`.
pub const CAPABILITIES: &[&str] = &[
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "per_consumer_qos",
    "direct_reply_to",
    "authentication_failure_close",
    "connection.blocked",
];

/// Runs the handshake; `None` means the connection is finished (error already reported).
pub async fn run(
    stream: &mut TcpStream,
    peer: SocketAddr,
    broker: &Broker,
    users: &UserStore,
) -> Option<Negotiated> {
    let timeout = Duration::from_secs(broker.config.amqp.handshake_timeout.max(1));
    match tokio::time::timeout(timeout, exchange(stream, peer, broker, users)).await {
        Ok(result) => result,
        Err(_) => {
            warn!("handshake timeout, closing connection");
            None
        }
    }
}

async fn exchange(
    stream: &mut TcpStream,
    peer: SocketAddr,
    broker: &Broker,
    users: &UserStore,
) -> Option<Negotiated> {
    let cfg = &broker.config.amqp;
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await.ok()?;
    if &header != PROTOCOL_HEADER {
        debug!(?header, "bad protocol header");
        let _ = stream.write_all(PROTOCOL_HEADER).await;
        let _ = stream.shutdown().await;
        return None;
    }
    let mut io = FrameIo {
        stream,
        buf: BytesMut::with_capacity(2048),
        frame_max: cfg.frame_max,
    };
    io.send(&start_method(broker)).await?;

    let start_ok = match io.expect_method().await? {
        AMQPClass::Connection(connection::AMQPMethod::StartOk(s)) => s,
        _ => {
            return io
                .fail(AmqpError::command_invalid("expected 'connection.start_ok'"))
                .await
        }
    };
    let caps = match start_ok.client_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        _ => FieldTable::default(),
    };
    let cap = |name: &str| matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)));
    let mechanism = start_ok.mechanism.as_str();
    let login = auth::parse_response(mechanism, start_ok.response.as_bytes())
        .and_then(|(name, pass)| users.authenticate(&name, &pass, peer.ip()));
    let user = match login {
        Ok(user) => user,
        Err(e) => {
            warn!(reason = %e.log_text(mechanism), "authentication failed");
            if e.sends_close(cap("authentication_failure_close")) {
                return io.fail(e.to_amqp_error(mechanism)).await;
            }
            // RabbitMQ closes the socket without a reason, after a delay that
            // slows down password guessing.
            tokio::time::sleep(auth::SILENT_CLOSE_DELAY).await;
            return None;
        }
    };

    let offered_frame_max = cfg.frame_max;
    io.send(&AMQPClass::Connection(connection::AMQPMethod::Tune(
        connection::Tune {
            channel_max: cfg.channel_max,
            frame_max: offered_frame_max,
            heartbeat: cfg.heartbeat,
        },
    )))
    .await?;
    let tune_ok = match io.expect_method().await? {
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(t)) => t,
        _ => {
            return io
                .fail(AmqpError::command_invalid("expected 'connection.tune_ok'"))
                .await
        }
    };
    let channel_max = negotiate(tune_ok.channel_max as u32, cfg.channel_max as u32) as u16;
    let frame_max = negotiate(tune_ok.frame_max, offered_frame_max);
    // 0 on both sides means "no limit".
    if (frame_max != 0 && frame_max < 4096)
        || (offered_frame_max != 0 && tune_ok.frame_max > offered_frame_max)
    {
        // RabbitMQ drops the socket without a reason for an out-of-range frame_max.
        warn!(
            frame_max = tune_ok.frame_max,
            "client tuned an unacceptable frame_max, closing"
        );
        return None;
    }
    io.frame_max = frame_max;

    let open = match io.expect_method().await? {
        AMQPClass::Connection(connection::AMQPMethod::Open(o)) => o,
        _ => {
            return io
                .fail(AmqpError::command_invalid("expected 'connection.open'"))
                .await
        }
    };
    let vhost_name = open.virtual_host.as_str();
    let Some(vhost) = broker.vhost(vhost_name) else {
        let e =
            AmqpError::not_allowed(format_args!("vhost {vhost_name} not found")).on_method(10, 40);
        return io.fail(e).await;
    };
    if let Err(e) = users.check_vhost_access(&user, vhost_name) {
        return io.fail(e.on_method(10, 40)).await;
    }
    io.send(&AMQPClass::Connection(connection::AMQPMethod::OpenOk(
        connection::OpenOk {},
    )))
    .await?;
    let client_name = match start_ok.client_properties.inner().get("connection_name") {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    };
    Some(Negotiated {
        channel_max,
        frame_max,
        heartbeat: tune_ok.heartbeat,
        user,
        vhost,
        consumer_cancel_notify: cap("consumer_cancel_notify"),
        connection_blocked: cap("connection.blocked"),
        client_name,
        buf: io.buf,
    })
}

/// Tune rule: 0 means "no limit" on either side; otherwise the lower value wins.
fn negotiate(client: u32, server: u32) -> u32 {
    match (client, server) {
        (0, s) => s,
        (c, 0) => c,
        (c, s) => c.min(s),
    }
}

fn start_method(broker: &Broker) -> AMQPClass {
    let mut caps = FieldTable::default();
    for c in CAPABILITIES {
        caps.insert((*c).into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    let long = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props.insert("product".into(), long(&broker.config.amqp.product));
    props.insert("version".into(), long(env!("CARGO_PKG_VERSION")));
    props.insert("platform".into(), long("Rust"));
    props.insert(
        "cluster_name".into(),
        long(&format!("warrenmq@{}", hostname())),
    );
    props.insert(
        "copyright".into(),
        long("Copyright (c) the WarrenMQ authors"),
    );
    props.insert(
        "information".into(),
        long("Licensed under the MIT license. An AMQP 0-9-1 broker for RabbitMQ clients."),
    );
    AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: props,
        mechanisms: LongString::from(auth::mechanisms().as_bytes().to_vec()),
        locales: LongString::from(b"en_US".to_vec()),
    }))
}

/// This machine's name (read once per process, not per connection).
fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into())
    })
}

/// Minimal framed I/O used only during the handshake.
struct FrameIo<'a> {
    stream: &'a mut TcpStream,
    buf: BytesMut,
    frame_max: u32,
}

impl FrameIo<'_> {
    async fn send(&mut self, method: &AMQPClass) -> Option<()> {
        let mut out = Vec::with_capacity(512);
        codec::encode_method(&mut out, 0, method);
        self.stream.write_all(&out).await.ok()
    }

    /// Reads the next method on channel 0, skipping heartbeats.
    async fn expect_method(&mut self) -> Option<AMQPClass> {
        loop {
            match codec::parse_frame(&mut self.buf, self.frame_max) {
                Ok(Some(Frame::Method(0, m))) => {
                    if let AMQPClass::Connection(connection::AMQPMethod::Close(_)) = *m {
                        let _ = self
                            .send(&AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )))
                            .await;
                        return None;
                    }
                    return Some(*m);
                }
                Ok(Some(Frame::Heartbeat(_))) => continue,
                Ok(Some(_)) => {
                    let _: Option<()> = self
                        .fail(AmqpError::command_invalid(
                            "unexpected frame during connection handshake",
                        ))
                        .await;
                    return None;
                }
                Ok(None) => {
                    if self.stream.read_buf(&mut self.buf).await.ok()? == 0 {
                        return None;
                    }
                }
                Err(e) => {
                    let _: Option<()> = self.fail(e).await;
                    return None;
                }
            }
        }
    }

    /// Sends `connection.close` with the error and waits briefly for close-ok.
    async fn fail<T>(&mut self, e: AmqpError) -> Option<T> {
        warn!(code = e.code as u16, text = %e.text, "closing connection during handshake");
        let _ = self.send(&close_method(&e)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut scratch = [0u8; 512];
            while let Ok(n) = self.stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        None
    }
}

/// The `connection.close` method for an error.
pub fn close_method(e: &AmqpError) -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: e.code as u16,
        reply_text: e.text.as_str().into(),
        class_id: e.class_id,
        method_id: e.method_id,
    }))
}

/// 320 CONNECTION_FORCED as RabbitMQ sends it when the broker shuts down.
pub fn shutdown_error() -> AmqpError {
    AmqpError::new(
        ReplyCode::ConnectionForced,
        "broker forced connection closure with reason 'shutdown'",
    )
}
