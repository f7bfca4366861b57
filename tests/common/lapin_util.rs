//! lapin helpers: short names for the calls every test makes, and error extraction.

use super::{unique, within};
use futures_util::StreamExt;
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::*;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer, ExchangeKind};

/// The AMQP reply code and text carried by a lapin error, if it is a protocol error.
pub fn amqp_error(e: &lapin::Error) -> Option<(u16, String)> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(err) => {
            Some((err.get_id(), err.get_message().as_str().to_string()))
        }
        _ => None,
    }
}

/// Unwraps the protocol error (reply code, reply text) of a failed lapin call;
/// panics if the call succeeded or failed for another reason.
pub fn expect_amqp_error<T: std::fmt::Debug>(r: lapin::Result<T>) -> (u16, String) {
    match r {
        Ok(v) => panic!("expected an AMQP error, got Ok({v:?})"),
        Err(e) => amqp_error(&e).unwrap_or_else(|| panic!("expected an AMQP error, got {e:?}")),
    }
}

/// Awaits a lapin call that must fail with `code` and exactly `text`.
pub async fn assert_amqp_error<T: std::fmt::Debug>(
    fut: impl std::future::Future<Output = lapin::Result<T>>,
    code: u16,
    text: &str,
) {
    let (c, t) = expect_amqp_error(within("an AMQP error reply", fut).await);
    assert_eq!((c, t.as_str()), (code, text), "reply code and text");
}

pub async fn channel(conn: &Connection) -> Channel {
    conn.create_channel().await.expect("channel.open")
}

/// A channel in publisher-confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = channel(conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch
}

pub fn no_args() -> FieldTable {
    FieldTable::default()
}

/// Declares an exclusive queue with a unique name (deleted with the connection).
pub async fn temp_queue(ch: &Channel) -> String {
    let name = unique("q");
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions::exclusive(),
        no_args(),
    )
    .await
    .expect("queue.declare");
    name
}

/// Declares a non-exclusive, non-durable queue with a unique name; other
/// connections can use it. Callers delete it when done.
pub async fn shared_queue(ch: &Channel) -> String {
    let name = unique("sq");
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions::default(),
        no_args(),
    )
    .await
    .expect("queue.declare");
    name
}

/// Declares a non-durable exchange of `kind` with a unique name.
pub async fn temp_exchange(ch: &Channel, kind: ExchangeKind) -> String {
    let name = unique("x");
    ch.exchange_declare(
        name.as_str().into(),
        kind,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await
    .expect("exchange.declare");
    name
}

pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    bind_args(ch, queue, exchange, key, no_args()).await
}

pub async fn bind_args(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    )
    .await
    .expect("queue.bind");
}

/// Publishes without waiting for anything.
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_props(ch, exchange, key, body, BasicProperties::default()).await
}

pub async fn publish_props(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("basic.publish");
}

/// Publishes on a confirm channel and waits for the broker's ack, so the message
/// has been routed (and enqueued) when this returns.
pub async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_confirmed_props(ch, exchange, key, body, BasicProperties::default()).await
}

pub async fn publish_confirmed_props(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("basic.publish");
    let confirmation = within("publisher confirm", confirm).await.expect("confirm");
    assert!(
        confirmation.is_ack(),
        "message was nacked: {confirmation:?}"
    );
}

/// Number of ready messages, via a passive queue.declare.
pub async fn message_count(ch: &Channel, queue: &str) -> u32 {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .expect("passive queue.declare");
    q.message_count()
}

/// Number of consumers, via a passive queue.declare.
pub async fn consumer_count(ch: &Channel, queue: &str) -> u32 {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .expect("passive queue.declare");
    q.consumer_count()
}

/// basic.get with manual ack.
pub async fn get(ch: &Channel, queue: &str) -> Option<BasicGetMessage> {
    ch.basic_get(queue.into(), BasicGetOptions::default())
        .await
        .expect("basic.get")
}

/// basic.get with no-ack, returning the body.
pub async fn get_body(ch: &Channel, queue: &str) -> Option<Vec<u8>> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .map(|m| m.delivery.data.clone())
}

/// Drains a queue with no-ack basic.get and returns the bodies in order.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(body) = get_body(ch, queue).await {
        out.push(body);
    }
    out
}

/// Starts a manual-ack consumer with a server-generated tag.
///
/// Keep the returned `Consumer` alive (`let _c = ...`): lapin cancels the
/// consumer when it is dropped.
pub async fn consume(ch: &Channel, queue: &str) -> Consumer {
    consume_opts(ch, queue, BasicConsumeOptions::default()).await
}

pub async fn consume_no_ack(ch: &Channel, queue: &str) -> Consumer {
    consume_opts(
        ch,
        queue,
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
    )
    .await
}

pub async fn consume_opts(ch: &Channel, queue: &str, opts: BasicConsumeOptions) -> Consumer {
    ch.basic_consume(queue.into(), "".into(), opts, no_args())
        .await
        .expect("basic.consume")
}

/// The next delivery on a consumer (fails the test after the timeout).
pub async fn next(consumer: &mut Consumer) -> Delivery {
    within("a delivery", consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery error")
}

/// Waits until the consumer stream ends (lapin ends it on basic.cancel from the
/// server or the client).
pub async fn expect_consumer_end(consumer: &mut Consumer) {
    loop {
        match within("the consumer to end", consumer.next()).await {
            None => return,
            Some(Ok(d)) => panic!("unexpected delivery {:?}", String::from_utf8_lossy(&d.data)),
            Some(Err(_)) => continue,
        }
    }
}

pub fn body_str(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

pub fn bodies<const N: usize>(items: [&str; N]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

pub fn short(s: &str) -> ShortString {
    s.into()
}

/// Polls an async condition every millisecond until true or [`super::TIMEOUT`].
pub async fn eventually<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + super::TIMEOUT;
    loop {
        if f().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// True if the queue exists (passive declare on a throw-away channel).
pub async fn queue_exists(conn: &Connection, queue: &str) -> bool {
    let ch = channel(conn).await;
    let res = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await;
    match res {
        Ok(_) => {
            let _ = ch.close(200, "".into()).await;
            true
        }
        Err(e) => {
            let (code, _) = amqp_error(&e).unwrap_or_else(|| panic!("passive declare: {e:?}"));
            assert_eq!(code, 404, "{e:?}");
            false
        }
    }
}

/// True if the exchange exists (passive declare on a throw-away channel).
pub async fn exchange_exists(conn: &Connection, exchange: &str) -> bool {
    let ch = channel(conn).await;
    let res = ch
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await;
    match res {
        Ok(_) => {
            let _ = ch.close(200, "".into()).await;
            true
        }
        Err(e) => {
            let (code, _) = amqp_error(&e).unwrap_or_else(|| panic!("passive declare: {e:?}"));
            assert_eq!(code, 404, "{e:?}");
            false
        }
    }
}

/// Deletes a queue (best effort cleanup for shared brokers).
pub async fn delete_queue(conn: &Connection, queue: &str) {
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Deletes an exchange (best effort cleanup for shared brokers).
pub async fn delete_exchange(conn: &Connection, exchange: &str) {
    if let Ok(ch) = conn.create_channel().await {
        let _ = ch
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// Number of ready messages in each queue, in order.
pub async fn message_counts(ch: &Channel, queues: &[String]) -> Vec<u32> {
    let mut out = Vec::new();
    for q in queues {
        out.push(message_count(ch, q).await);
    }
    out
}

/// A field table from `(key, value)` pairs (queue and consume arguments).
pub fn table(args: &[(&str, lapin::types::AMQPValue)]) -> lapin::types::FieldTable {
    let mut t = lapin::types::FieldTable::default();
    for (k, v) in args {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// Declares queue `name` (durable or not) with arguments.
pub async fn declare(
    ch: &Channel,
    name: &str,
    durable: bool,
    args: &[(&str, lapin::types::AMQPValue)],
) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        table(args),
    )
    .await
    .expect("queue.declare");
}
