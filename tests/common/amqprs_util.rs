//! amqprs helpers: callbacks that record server-initiated methods into channels,
//! so tests can assert on asynchronous errors (channel.close, connection.close),
//! server cancels, confirms and returns.

use super::{within, TIMEOUT};
use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::{BasicConsumeArguments, Channel, ConsumerMessage, QueueDeclareArguments};
use amqprs::connection::Connection;
type Result<T> = std::result::Result<T, amqprs::error::Error>;
use amqprs::{Ack, BasicProperties, Cancel, Close, CloseChannel, Nack, Return};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// A server-initiated connection-level event.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnEvent {
    Close {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    Blocked(String),
    Unblocked,
}

/// A server-initiated channel-level event.
#[derive(Debug, Clone, PartialEq)]
pub enum ChanEvent {
    Close {
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    Cancel {
        consumer_tag: String,
    },
    Flow(bool),
    Ack {
        delivery_tag: u64,
        multiple: bool,
    },
    Nack {
        delivery_tag: u64,
        multiple: bool,
    },
    Return {
        code: u16,
        text: String,
        exchange: String,
        routing_key: String,
        body: Vec<u8>,
    },
}

pub struct RecordingConnectionCallback(UnboundedSender<ConnEvent>);

impl RecordingConnectionCallback {
    pub fn new() -> (Self, UnboundedReceiver<ConnEvent>) {
        let (tx, rx) = unbounded_channel();
        (Self(tx), rx)
    }
}

#[async_trait::async_trait]
impl ConnectionCallback for RecordingConnectionCallback {
    async fn close(&mut self, _: &Connection, close: Close) -> Result<()> {
        let _ = self.0.send(ConnEvent::Close {
            code: close.reply_code(),
            text: close.reply_text().clone(),
            class_id: close.class_id(),
            method_id: close.method_id(),
        });
        Ok(())
    }
    async fn blocked(&mut self, _: &Connection, reason: String) {
        let _ = self.0.send(ConnEvent::Blocked(reason));
    }
    async fn unblocked(&mut self, _: &Connection) {
        let _ = self.0.send(ConnEvent::Unblocked);
    }
    async fn secret_updated(&mut self, _: &Connection) {}
}

pub struct RecordingChannelCallback(UnboundedSender<ChanEvent>);

#[async_trait::async_trait]
impl ChannelCallback for RecordingChannelCallback {
    async fn close(&mut self, _: &Channel, close: CloseChannel) -> Result<()> {
        let _ = self.0.send(ChanEvent::Close {
            code: close.reply_code(),
            text: close.reply_text().clone(),
            class_id: close.class_id(),
            method_id: close.method_id(),
        });
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, cancel: Cancel) -> Result<()> {
        let _ = self.0.send(ChanEvent::Cancel {
            consumer_tag: cancel.consumer_tag().clone(),
        });
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool> {
        let _ = self.0.send(ChanEvent::Flow(active));
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        let _ = self.0.send(ChanEvent::Ack {
            delivery_tag: ack.delivery_tag(),
            multiple: ack.mutiple(),
        });
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        let _ = self.0.send(ChanEvent::Nack {
            delivery_tag: nack.delivery_tag(),
            multiple: nack.multiple(),
        });
    }
    async fn publish_return(
        &mut self,
        _: &Channel,
        ret: Return,
        _props: BasicProperties,
        content: Vec<u8>,
    ) {
        let _ = self.0.send(ChanEvent::Return {
            code: ret.reply_code(),
            text: ret.reply_text().clone(),
            exchange: ret.exchange().clone(),
            routing_key: ret.routing_key().clone(),
            body: content,
        });
    }
}

/// Opens an amqprs channel whose server-initiated events are recorded.
pub async fn amqprs_channel(conn: &Connection) -> (Channel, UnboundedReceiver<ChanEvent>) {
    let ch = conn.open_channel(None).await.expect("amqprs open channel");
    let (tx, rx) = unbounded_channel();
    ch.register_callback(RecordingChannelCallback(tx))
        .await
        .expect("register channel callback");
    (ch, rx)
}

/// Waits for the next recorded channel event.
pub async fn next_chan_event(rx: &mut UnboundedReceiver<ChanEvent>) -> ChanEvent {
    within("a channel event", rx.recv())
        .await
        .expect("channel event stream ended")
}

/// Waits for a channel.close from the server and returns (reply code, reply text).
pub async fn expect_amqprs_channel_close(rx: &mut UnboundedReceiver<ChanEvent>) -> (u16, String) {
    loop {
        match next_chan_event(rx).await {
            ChanEvent::Close { code, text, .. } => return (code, text),
            _ => continue,
        }
    }
}

/// Waits for a connection.close from the server and returns (reply code, reply text).
pub async fn expect_amqprs_connection_close(
    rx: &mut UnboundedReceiver<ConnEvent>,
) -> (u16, String) {
    loop {
        match within("connection.close", rx.recv())
            .await
            .expect("connection event stream ended")
        {
            ConnEvent::Close { code, text, .. } => return (code, text),
            _ => continue,
        }
    }
}

/// Declares an exclusive, server-named queue and returns its name.
pub async fn amqprs_temp_queue(ch: &Channel) -> String {
    let (name, _, _) = ch
        .queue_declare(QueueDeclareArguments::exclusive_server_named())
        .await
        .expect("queue.declare")
        .expect("declare-ok");
    name
}

/// Starts a consumer that delivers into an unbounded receiver.
pub async fn amqprs_consume(
    ch: &Channel,
    queue: &str,
    no_ack: bool,
) -> (String, UnboundedReceiver<ConsumerMessage>) {
    let args = BasicConsumeArguments::new(queue, "")
        .manual_ack(!no_ack)
        .finish();
    ch.basic_consume_rx(args).await.expect("basic.consume")
}

/// Waits for the next delivery on an amqprs consumer.
pub async fn amqprs_next(rx: &mut UnboundedReceiver<ConsumerMessage>) -> ConsumerMessage {
    within("an amqprs delivery", rx.recv())
        .await
        .expect("consumer ended")
}

pub fn amqprs_body(m: &ConsumerMessage) -> Vec<u8> {
    m.content.clone().unwrap_or_default()
}

pub const AMQPRS_TIMEOUT: std::time::Duration = TIMEOUT;
