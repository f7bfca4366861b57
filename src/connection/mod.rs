//! One task per client connection.
//!
//! After the [`handshake`], the task owns the socket's read half, every channel's
//! state, and the inbox through which queues hand it deliveries and confirms. Its
//! loop parses *every* complete frame of a read before sending the batched
//! enqueues and the encoded replies, so one wake-up serves many frames. The
//! socket's write half belongs to the [`writer`] task. Hard errors close only this
//! connection; soft errors close only the channel.

pub mod channels;
pub mod handshake;
pub mod inbox;
pub mod writer;

use crate::alarm::AlarmState;
use crate::auth::UserStore;
use crate::broker::Broker;
use crate::channel::{Channel, ConnCtx};
use crate::protocol::assembler::Command;
use crate::protocol::codec::{self, Frame};
use crate::protocol::AmqpError;
use crate::queue::{ChanKey, ChannelLimiter, ConnEvent, ConnHandle, ConnShared};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use bytes::BytesMut;
use channels::ChannelTable;
use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use writer::WriterHandle;

/// How long to wait for `connection.close-ok` after sending `connection.close`.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);
/// Why a connection ended when the client sent `connection.close`.
const CLIENT_CLOSED: &str = "client closed the connection";
/// How long to wait for the client to close the socket after close-ok.
const CLIENT_EOF_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest a publisher pauses for one congested queue before reading again.
const FLOW_PAUSE_MAX: Duration = Duration::from_millis(50);
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;
/// The read size an idle or quiet connection starts with (RSS per idle connection).
const READ_MIN: usize = 2 * 1024;

/// Serves one accepted socket until it closes.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    users: Arc<UserStore>,
    shutdown: CancellationToken,
) {
    let id = broker.ids.next();
    let span = tracing::info_span!(
        "conn",
        id,
        peer = %peer,
        user = tracing::field::Empty,
        vhost = tracing::field::Empty
    );
    async move {
        let _ = stream.set_nodelay(true);
        let started = Instant::now();
        // Boxed: the handshake's state would otherwise size this task for its
        // whole life.
        let handshake = Box::pin(handshake::run(&mut stream, peer, &broker, &users));
        let Some(neg) = handshake.await else {
            return;
        };
        let span = tracing::Span::current();
        span.record("user", neg.user.name());
        span.record("vhost", &*neg.vhost.name);
        info!(
            name = neg.client_name.as_deref().unwrap_or(""),
            "connection opened"
        );
        let (events_tx, events) = inbox::inbox();
        let conn = ConnHandle {
            id,
            tx: events_tx,
            shared: Arc::new(ConnShared::default()),
        };
        let alarms = broker.alarms.subscribe();
        let alarm = *alarms.borrow();
        let (read_half, write_half) = stream.into_split();
        let (writer, writer_task) = writer::spawn(write_half);
        let mut c = Connection {
            ctx: ConnCtx::new(
                broker.clone(),
                neg.vhost.clone(),
                conn,
                neg.user.clone(),
                neg.frame_max,
                neg.consumer_cancel_notify,
            ),
            channels: ChannelTable::default(),
            by_key: FxHashMap::default(),
            channel_max: neg.channel_max,
            heartbeat: neg.heartbeat,
            read_half,
            buf: neg.buf,
            events,
            writer,
            closing: None,
            last_read: Instant::now(),
            last_write: Instant::now(),
            read_size: READ_MIN,
            alarms,
            alarm,
            blocked_capable: neg.connection_blocked,
            blocked: None,
        };
        let reason = c.run(shutdown).await;
        if reason == CLIENT_CLOSED {
            // The client, having received close-ok, closes the socket (AMQP
            // 0-9-1 §2.2.4), as RabbitMQ expects. Closing first races with
            // clients that still write frames queued before their
            // connection.close (amqplib: EPIPE) or that treat an early EOF as
            // an error (amqp091-go's concurrent Close).
            c.await_client_eof().await;
        }
        c.release_all().await;
        neg.vhost.delete_exclusive_queues(id).await;
        drop(c);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
        info!(duration = ?started.elapsed(), reason, "connection closed");
    }
    .instrument(span)
    .await
}

struct Connection {
    ctx: ConnCtx,
    /// Open channels, boxed so that the map's buckets stay small (memory per idle connection).
    channels: ChannelTable,
    by_key: FxHashMap<ChanKey, u16>,
    channel_max: u16,
    heartbeat: u16,
    read_half: OwnedReadHalf,
    buf: BytesMut,
    events: inbox::Inbox<ConnEvent>,
    writer: WriterHandle,
    /// Set once we sent `connection.close`: the deadline for close-ok.
    closing: Option<Instant>,
    last_read: Instant,
    last_write: Instant,
    /// How much room the next read gets: doubles while reads fill it, up to
    /// `READ_CHUNK`, so idle connections keep small buffers and busy ones batch.
    read_size: usize,
    /// Resource-alarm changes (see [`crate::alarm`]).
    alarms: watch::Receiver<AlarmState>,
    /// The alarm state as last seen (a local copy: publishes must not touch shared state).
    alarm: AlarmState,
    /// The client announced the `connection.blocked` capability.
    blocked_capable: bool,
    /// Blocked by a resource alarm (we stopped reading); `Some(true)` if `connection.blocked`
    /// was sent. RabbitMQ's reader states: an alarm makes a connection *blocking*, and the
    /// first publish after that makes it *blocked*; connections that only consume or ack are
    /// never blocked.
    blocked: Option<bool>,
}

/// Whether the read loop goes on.
enum Flow {
    Continue,
    Stop(&'static str),
}

impl Connection {
    async fn run(&mut self, shutdown: CancellationToken) -> &'static str {
        let hb = Duration::from_secs(self.heartbeat as u64);
        let mut tick = tokio::time::interval(if hb.is_zero() {
            Duration::from_secs(3600)
        } else {
            hb / 2
        });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events = Vec::new();
        let mut alarms_open = true;
        loop {
            // Boxed: frame handling is the largest state of this task, and
            // keeping it out of the task keeps idle connections small (one
            // allocation per read, not per frame).
            if !self.buf.is_empty() {
                if let Flow::Stop(reason) = Box::pin(self.process_frames()).await {
                    self.flush_out();
                    return reason;
                }
            }
            self.ctx.flush().await;
            self.flush_out();
            if self.buf.capacity() - self.buf.len() < self.read_size / 4 {
                self.buf.reserve(self.read_size);
            }
            let room = self.buf.capacity() - self.buf.len();
            let close_deadline = self.closing;
            let congested = self.ctx.congested.take();
            let ack_deadline = self.ctx.ack_deadline.filter(|_| self.closing.is_none());
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if self.closing.is_none() => {
                    self.close_connection(handshake::shutdown_error()).await;
                }
                _ = sleep_until(close_deadline), if close_deadline.is_some() => {
                    return "close-ok timeout";
                }
                _ = wait_drained(congested.as_ref()), if congested.is_some() => {}
                changed = self.alarms.changed(), if alarms_open => match changed {
                    Ok(()) => {
                        self.alarm = *self.alarms.borrow_and_update();
                        if !self.alarm.any() {
                            self.unblock();
                        }
                    }
                    Err(_) => alarms_open = false,
                },
                read = self.read_half.read_buf(&mut self.buf), if congested.is_none() && self.blocked.is_none() => match read {
                    Ok(0) => return "client closed the socket",
                    Ok(n) => {
                        self.last_read = Instant::now();
                        if n == room {
                            self.read_size = (self.read_size * 2).min(READ_CHUNK);
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "read failed");
                        return "socket error";
                    }
                },
                n = self.events.recv_many(&mut events, 256), if !self.writer.saturated() => {
                    if n == 0 {
                        return "inbox closed";
                    }
                    for event in events.drain(..) {
                        if let Flow::Stop(reason) = self.event(event).await {
                            self.flush_out();
                            return reason;
                        }
                    }
                }
                _ = sleep_until(ack_deadline), if ack_deadline.is_some() => {
                    self.check_ack_timeouts().await;
                }
                // Deliveries wait while the socket is behind; resume once it drains.
                _ = self.writer.wait_drained(), if self.writer.saturated() => {}
                _ = tick.tick(), if !hb.is_zero() => {
                    // A blocked connection is not read, so its heartbeats go unseen
                    // (RabbitMQ pauses its heartbeat monitor too).
                    if self.blocked.is_none() && self.last_read.elapsed() >= hb * 2 {
                        warn!(timeout_s = self.heartbeat, "missed heartbeats from client, closing");
                        return "missed heartbeats";
                    }
                    if self.last_write.elapsed() >= hb / 2 {
                        codec::encode_heartbeat(self.ctx.out.buf());
                    }
                }
            }
        }
    }

    /// Waits (bounded) for the client to close its end after our close-ok.
    async fn await_client_eof(&mut self) {
        let mut scratch = [0u8; 256];
        let _ = tokio::time::timeout(CLIENT_EOF_TIMEOUT, async {
            while let Ok(n) = self.read_half.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    /// A publish arrived during a resource alarm: stop reading until the alarm clears, and
    /// tell the client why if it can take `connection.blocked`.
    fn block(&mut self) {
        if self.blocked_capable {
            self.ctx.send_method(
                0,
                &AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: self.alarm.reason().into(),
                })),
            );
        }
        debug!(
            reason = self.alarm.reason(),
            "publisher blocked by resource alarm"
        );
        self.blocked = Some(self.blocked_capable);
    }

    /// The alarms cleared: read again (the rest of the buffer is processed next).
    fn unblock(&mut self) {
        if let Some(notified) = self.blocked.take() {
            if notified {
                self.ctx.send_method(
                    0,
                    &AMQPClass::Connection(connection::AMQPMethod::Unblocked(
                        connection::Unblocked {},
                    )),
                );
            }
            self.last_read = Instant::now();
            debug!("publisher unblocked");
        }
    }

    fn flush_out(&mut self) {
        if !self.ctx.out.is_empty() {
            self.writer.send(&mut self.ctx.out);
            self.last_write = Instant::now();
        }
    }

    /// Processes every complete frame in the read buffer (none while blocked by an alarm).
    async fn process_frames(&mut self) -> Flow {
        loop {
            if self.blocked.is_some() {
                return Flow::Continue;
            }
            let frame_max = self.ctx.frame_max;
            match codec::parse_frame(&mut self.buf, frame_max) {
                Ok(None) => return Flow::Continue,
                Ok(Some(frame)) => {
                    let publish = self.alarm.any() && is_publish(&frame);
                    if let Flow::Stop(reason) = self.frame(frame).await {
                        return Flow::Stop(reason);
                    }
                    if publish && self.closing.is_none() {
                        self.block();
                    }
                }
                Err(e) => {
                    self.buf.clear();
                    if self.closing.is_some() {
                        return Flow::Stop("malformed frame while closing");
                    }
                    self.close_connection(e).await;
                    return Flow::Continue;
                }
            }
        }
    }

    async fn frame(&mut self, frame: Frame) -> Flow {
        if self.closing.is_some() {
            return self.frame_while_closing(frame);
        }
        let ch = frame.channel();
        if ch == 0 {
            return self.channel_zero(frame).await;
        }
        if let Frame::Heartbeat(_) = frame {
            let e = AmqpError::unexpected_frame("type 8, all octets = <<>>");
            self.close_connection(e).await;
            return Flow::Continue;
        }
        let Some(chan) = self.channels.get_mut(ch) else {
            return self.unopened_channel(ch, frame).await;
        };
        if chan.closing {
            if let Frame::Method(_, m) = &frame {
                match **m {
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {
                        self.remove_channel(ch);
                    }
                    AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                        self.ctx.send_method(ch, &channel_close_ok());
                    }
                    _ => {}
                }
            }
            return Flow::Continue;
        }
        if let Frame::Method(_, m) = &frame {
            match **m {
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    chan.release(&mut self.ctx).await;
                    self.ctx.send_method(ch, &channel_close_ok());
                    self.remove_channel(ch);
                    return Flow::Continue;
                }
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => return Flow::Continue,
                _ => {}
            }
        }
        let max = self.ctx.max_message_size;
        let result = match chan.assembler.push(frame, max) {
            // Publishes never wait: skip building the general command future.
            Ok(Some(Command::Publish(p, header, body))) => {
                chan.basic_publish(&mut self.ctx, *p, header, body)
            }
            Ok(Some(cmd)) => chan.handle(&mut self.ctx, cmd).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.error(ch, e).await;
        }
        Flow::Continue
    }

    /// Frames on a channel that is not open: only `channel.open` is valid.
    async fn unopened_channel(&mut self, ch: u16, frame: Frame) -> Flow {
        let is_open = matches!(
            &frame,
            Frame::Method(_, m) if matches!(**m, AMQPClass::Channel(channel::AMQPMethod::Open(_)))
        );
        if !is_open {
            self.close_connection(AmqpError::channel_error("expected 'channel.open'"))
                .await;
            return Flow::Continue;
        }
        if self.channel_max != 0 && self.channels.len() >= self.channel_max as usize {
            let e = AmqpError::not_allowed(format_args!(
                "number of channels opened ({}) has reached the negotiated channel_max ({})",
                self.channels.len(),
                self.channel_max
            ))
            .on_method(20, 10);
            self.close_connection(e).await;
            return Flow::Continue;
        }
        let key = self.ctx.broker.ids.next();
        let limiter = Arc::new(ChannelLimiter::new(self.ctx.conn.shared.clone()));
        self.channels
            .insert(ch, Box::new(Channel::new(ch, key, limiter)));
        self.by_key.insert(key, ch);
        self.ctx.send_method(
            ch,
            &AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        );
        Flow::Continue
    }

    fn remove_channel(&mut self, ch: u16) {
        if let Some(chan) = self.channels.remove(ch) {
            self.by_key.remove(&chan.key);
        }
    }

    async fn channel_zero(&mut self, frame: Frame) -> Flow {
        match frame {
            Frame::Heartbeat(_) => Flow::Continue,
            Frame::Method(_, m) => match *m {
                AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                    debug!(code = c.reply_code, text = %c.reply_text.as_str(), "client closed connection");
                    self.ctx.send_method(
                        0,
                        &AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    );
                    Flow::Stop(CLIENT_CLOSED)
                }
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Flow::Stop("close-ok"),
                AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                    self.ctx.send_method(
                        0,
                        &AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                            connection::UpdateSecretOk {},
                        )),
                    );
                    Flow::Continue
                }
                AMQPClass::Connection(connection::AMQPMethod::Blocked(_))
                | AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) => Flow::Continue,
                other => {
                    let e =
                        AmqpError::channel_error("unexpected method in connection state running")
                            .on_method(other.get_amqp_class_id(), other.get_amqp_method_id());
                    self.close_connection(e).await;
                    Flow::Continue
                }
            },
            Frame::Header(..) | Frame::Body(..) => {
                self.close_connection(AmqpError::unexpected_frame("content frame on channel 0"))
                    .await;
                Flow::Continue
            }
        }
    }

    fn frame_while_closing(&mut self, frame: Frame) -> Flow {
        if let Frame::Method(0, m) = frame {
            match *m {
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                    return Flow::Stop("closed after error")
                }
                AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                    self.ctx.send_method(
                        0,
                        &AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    );
                    return Flow::Stop("closed after error");
                }
                _ => {}
            }
        }
        Flow::Continue
    }

    /// Consumer acknowledgement timeouts: closes every channel whose oldest
    /// unsettled delivery timed out (406, its unacked messages are requeued),
    /// and sets the next check to the earliest remaining deadline.
    async fn check_ack_timeouts(&mut self) {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut timed_out = Vec::new();
        for (id, chan) in self.channels.iter() {
            if chan.closing {
                continue;
            }
            match chan.check_ack_timeout(now) {
                Ok(Some(d)) => next = Some(next.map_or(d, |n| n.min(d))),
                Ok(None) => {}
                Err(e) => timed_out.push((id, e)),
            }
        }
        self.ctx.ack_deadline = next;
        for (id, e) in timed_out {
            self.error(id, e).await;
        }
    }

    /// Routes an error to `channel.close` (soft) or `connection.close` (hard).
    async fn error(&mut self, ch: u16, e: AmqpError) {
        if e.is_hard() {
            self.close_connection(e).await;
            return;
        }
        warn!(channel = ch, code = e.code as u16, text = %e.text, "channel error");
        if let Some(chan) = self.channels.get_mut(ch) {
            chan.closing = true;
            chan.release(&mut self.ctx).await;
            self.ctx.send_method(
                ch,
                &AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code: e.code as u16,
                    reply_text: e.text.as_str().into(),
                    class_id: e.class_id,
                    method_id: e.method_id,
                })),
            );
        }
    }

    /// Sends `connection.close` and discards everything but close/close-ok from now on.
    async fn close_connection(&mut self, e: AmqpError) {
        if self.closing.is_some() {
            return;
        }
        warn!(code = e.code as u16, text = %e.text, "closing connection");
        self.ctx.send_method(0, &handshake::close_method(&e));
        self.closing = Some(Instant::now() + CLOSE_OK_TIMEOUT);
        self.release_all().await;
    }

    /// Releases every channel (consumers removed, unacked requeued).
    async fn release_all(&mut self) {
        for chan in self.channels.values_mut() {
            if !chan.closing {
                chan.closing = true;
                chan.release(&mut self.ctx).await;
            }
        }
    }

    async fn event(&mut self, event: ConnEvent) -> Flow {
        match event {
            ConnEvent::Deliver(deliveries) => {
                let n = deliveries.len();
                let now = Instant::now();
                for d in deliveries {
                    let chan = self
                        .by_key
                        .get(&d.chan_key)
                        .and_then(|&ch| self.channels.get_mut(ch));
                    match chan {
                        Some(chan) if !chan.closing => chan.deliver(&mut self.ctx, d, now),
                        // The channel is gone; its queues requeue on ChannelClosed.
                        _ => {}
                    }
                }
                self.ctx.conn.shared.delivered(n);
            }
            ConnEvent::Confirms { tags, ok } => {
                let mut i = 0;
                while i < tags.len() {
                    let key = tags[i].chan_key;
                    let run = tags[i..].iter().take_while(|t| t.chan_key == key).count();
                    if let Some(chan) = self
                        .by_key
                        .get(&key)
                        .and_then(|&ch| self.channels.get_mut(ch))
                    {
                        if !chan.closing {
                            chan.confirmed(
                                &mut self.ctx,
                                tags[i..i + run].iter().map(|t| t.seq),
                                ok,
                            );
                        }
                    }
                    i += run;
                }
            }
            ConnEvent::ConsumerCancelled {
                chan_key,
                consumer_tag,
            } => {
                if let Some(chan) = self
                    .by_key
                    .get(&chan_key)
                    .and_then(|&ch| self.channels.get_mut(ch))
                {
                    chan.consumer_cancelled(&mut self.ctx, consumer_tag);
                }
            }
            ConnEvent::ForceClose(text) => {
                self.close_connection(AmqpError::new(
                    crate::protocol::ReplyCode::ConnectionForced,
                    text,
                ))
                .await;
            }
        }
        Flow::Continue
    }
}

/// `basic.publish` on any channel.
fn is_publish(frame: &Frame) -> bool {
    matches!(frame, Frame::Method(_, m) if matches!(**m, AMQPClass::Basic(basic::AMQPMethod::Publish(_))))
}

fn channel_close_ok() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}))
}

/// Publisher flow control: pauses reading while a target queue is congested.
async fn wait_drained(queue: Option<&crate::queue::QueueHandle>) {
    if let Some(q) = queue {
        q.gauge.wait_drained(FLOW_PAUSE_MAX).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
