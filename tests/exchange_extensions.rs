//! Exchange-side extensions: sender-selected distribution (`CC`/`BCC`, also run
//! against RabbitMQ), delayed messages (`x-delayed-message`, the RabbitMQ
//! plugin's exchange type, durable across restarts), and deduplication
//! (`x-message-deduplication` on exchanges and queues, as LavinMQ and the
//! deduplication plugin). Plugin features are skipped against an external broker.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

/// An in-process broker; `None` (skip) when testing an external broker, which
/// has none of the plugins these features come from.
async fn warren_only() -> Option<TestBroker> {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        eprintln!("skipped: a WarrenMQ (plugin) feature");
        return None;
    }
    Some(broker)
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn ls(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn keys(items: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        items.iter().map(|s| ls(s)).collect::<Vec<_>>(),
    ))
}

fn with_headers(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
    BasicProperties::default().with_headers(table(pairs))
}

fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref().and_then(|h| h.inner().get(name))
}

async fn declare_exchange(ch: &Channel, kind: &str, durable: bool, args: FieldTable) -> String {
    let name = unique("xx");
    ch.exchange_declare(
        name.as_str().into(),
        ExchangeKind::Custom(kind.into()),
        ExchangeDeclareOptions {
            durable,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("exchange.declare");
    name
}

async fn delayed_exchange(ch: &Channel, delayed_type: &str) -> String {
    let args = table(&[("x-delayed-type", ls(delayed_type))]);
    declare_exchange(ch, "x-delayed-message", false, args).await
}

fn delayed(ms: i32) -> BasicProperties {
    with_headers(&[("x-delay", AMQPValue::LongInt(ms))])
}

/// Publishes with `mandatory` on a confirm channel; returns the returned message's
/// reply code, if it was returned, once the publish is acked.
async fn publish_mandatory(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Option<u16> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await
        .unwrap();
    let confirmation = within("confirm", confirm).await.unwrap();
    assert!(confirmation.is_ack(), "{confirmation:?}");
    confirmation.take_message().map(|m| m.reply_code)
}

// ------------------------------------------------ sender-selected distribution

#[tokio::test]
async fn cc_and_bcc_keys_get_copies_and_bcc_is_stripped() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let (q1, q2, q3) = (
        temp_queue(&ch).await,
        temp_queue(&ch).await,
        temp_queue(&ch).await,
    );
    let props = with_headers(&[
        ("CC", keys(&[&q2])),
        ("BCC", keys(&[&q3])),
        ("other", AMQPValue::LongInt(1)),
    ]);
    publish_confirmed_props(&ch, "", &q1, b"copies", props).await;
    for q in [&q1, &q2, &q3] {
        let m = get(&ch, q).await.unwrap_or_else(|| panic!("a copy in {q}"));
        let d = &m.delivery;
        assert_eq!(d.data, b"copies");
        assert_eq!(d.routing_key.as_str(), q1, "the publish routing key");
        assert_eq!(header(&d.properties, "CC"), Some(&keys(&[&q2])), "CC stays");
        assert_eq!(header(&d.properties, "BCC"), None, "BCC is stripped");
        assert_eq!(header(&d.properties, "other"), Some(&AMQPValue::LongInt(1)));
        assert_eq!(m.message_count, 0);
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    // BCC alone: the headers table stays, empty.
    publish_confirmed_props(&ch, "", &q1, b"bcc", with_headers(&[("BCC", keys(&[&q2]))])).await;
    for q in [&q1, &q2] {
        let m = get(&ch, q).await.expect("a copy");
        assert_eq!(
            m.delivery.properties.headers().as_ref(),
            Some(&FieldTable::default())
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn cc_keys_route_through_direct_and_topic_exchanges_once_per_queue() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let (qa, qb, qt) = (
        temp_queue(&ch).await,
        temp_queue(&ch).await,
        temp_queue(&ch).await,
    );
    let (a, b) = (unique("a"), unique("b"));
    bind(&ch, &qa, "amq.direct", &a).await;
    bind(&ch, &qb, "amq.direct", &b).await;
    // Non-string array elements are ignored; a key listed twice routes once.
    let cc = AMQPValue::FieldArray(FieldArray::from(vec![
        ls(&b),
        AMQPValue::LongInt(5),
        ls(&a),
        ls(&b),
    ]));
    publish_confirmed_props(&ch, "amq.direct", &a, b"d", with_headers(&[("CC", cc)])).await;
    assert_eq!(drain(&ch, &qa).await, bodies(["d"]));
    assert_eq!(drain(&ch, &qb).await, bodies(["d"]));

    let topic = unique("t");
    bind(&ch, &qt, "amq.topic", &format!("{topic}.*.cc")).await;
    let props = with_headers(&[("BCC", keys(&[&format!("{topic}.x.cc")]))]);
    publish_confirmed_props(&ch, "amq.topic", &format!("{topic}.nothing"), b"t", props).await;
    assert_eq!(drain(&ch, &qt).await, bodies(["t"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn cc_keys_are_one_routing_decision_for_mandatory_and_alternate_exchanges() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let (q, q_alt) = (temp_queue(&ch).await, temp_queue(&ch).await);
    let alt = temp_exchange(&ch, ExchangeKind::Fanout).await;
    bind(&ch, &q_alt, &alt, "").await;
    let x = unique("x");
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        table(&[("alternate-exchange", ls(&alt))]),
    )
    .await
    .unwrap();
    let key = unique("k");
    bind(&ch, &q, &x, &key).await;
    // Only the CC key routes: not returned, and the alternate exchange is not used.
    let cc = with_headers(&[("CC", keys(&[&key]))]);
    let returned = publish_mandatory(&ch, &x, "unbound", b"via-cc", cc).await;
    assert_eq!(returned, None);
    assert_eq!(drain(&ch, &q).await, bodies(["via-cc"]));
    assert_eq!(message_count(&ch, &q_alt).await, 0);
    // No key routes: the alternate exchange gets it once.
    let cc = with_headers(&[("CC", keys(&["nope1", "nope2"]))]);
    publish_confirmed_props(&ch, &x, "unbound", b"to-alt", cc).await;
    assert_eq!(drain(&ch, &q_alt).await, bodies(["to-alt"]));
    // Without an alternate exchange, mandatory returns it.
    let cc = with_headers(&[("CC", keys(&["nope1"]))]);
    let returned = publish_mandatory(&ch, "amq.direct", &unique("none"), b"r", cc).await;
    assert_eq!(returned, Some(312));
    broker.shutdown().await;
}

#[tokio::test]
async fn a_cc_or_bcc_header_that_is_not_an_array_fails_the_publish_with_406() {
    use amqprs::{FieldTable, FieldValue};
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    for (name, value, type_name) in [
        ("CC", FieldValue::S("q".try_into().unwrap()), "longstr"),
        ("BCC", FieldValue::I(5), "signedint"),
    ] {
        let (ch, mut events) = amqprs_channel(&conn).await;
        let mut headers = FieldTable::new();
        headers.insert(name.try_into().unwrap(), value);
        let mut props = amqprs::BasicProperties::default();
        props.with_headers(headers);
        let args = amqprs::channel::BasicPublishArguments::new("", &unique("q"));
        ch.basic_publish(props, b"bad".to_vec(), args)
            .await
            .unwrap();
        let (code, text) = expect_amqprs_channel_close(&mut events).await;
        assert_eq!(code, 406);
        assert_eq!(
            text,
            format!(
                "PRECONDITION_FAILED - invalid message: {{unacceptable_type_in_header,\"{name}\",{type_name}}}"
            )
        );
    }
    conn.close().await.unwrap();
    broker.shutdown().await;
}

// ------------------------------------------------------------ delayed messages

#[tokio::test]
async fn a_delayed_message_is_routed_after_its_delay_with_x_delay_negated() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = delayed_exchange(&ch, "direct").await;
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "k").await;
    let start = Instant::now();
    publish_confirmed_props(&ch, &x, "k", b"later", delayed(300)).await;
    assert_eq!(message_count(&ch, &q).await, 0, "held, not routed yet");
    let mut consumer = consume(&ch, &q).await;
    let d = next(&mut consumer).await;
    assert!(
        start.elapsed() >= Duration::from_millis(290),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(d.data, b"later");
    assert_eq!(d.exchange.as_str(), x);
    assert_eq!(d.routing_key.as_str(), "k");
    assert_eq!(
        header(&d.properties, "x-delay"),
        Some(&AMQPValue::LongInt(-300))
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn messages_without_a_positive_delay_are_routed_at_once() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = delayed_exchange(&ch, "fanout").await;
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "").await;
    publish_confirmed(&ch, &x, "", b"no-header").await;
    publish_confirmed_props(&ch, &x, "", b"zero", delayed(0)).await;
    publish_confirmed_props(&ch, &x, "", b"negative", delayed(-5)).await;
    let not_a_number = with_headers(&[("x-delay", ls("soon"))]);
    publish_confirmed_props(&ch, &x, "", b"text", not_a_number).await;
    assert_eq!(
        drain(&ch, &q).await,
        bodies(["no-header", "zero", "negative", "text"])
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn delayed_messages_come_out_in_due_order_through_the_delayed_type() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = delayed_exchange(&ch, "topic").await;
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "orders.*").await;
    let string_delay = with_headers(&[("x-delay", ls("250"))]);
    publish_confirmed_props(&ch, &x, "orders.late", b"400", delayed(400)).await;
    publish_confirmed_props(&ch, &x, "orders.early", b"100", delayed(100)).await;
    publish_confirmed_props(&ch, &x, "orders.mid", b"250", string_delay).await;
    publish_confirmed_props(&ch, &x, "other.key", b"unbound", delayed(50)).await;
    let mut consumer = consume_no_ack(&ch, &q).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(body_str(&next(&mut consumer).await));
    }
    assert_eq!(got, ["100", "250", "400"]);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_delayed_message_uses_the_bindings_of_when_it_is_due() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = delayed_exchange(&ch, "direct").await;
    let (early, late) = (temp_queue(&ch).await, temp_queue(&ch).await);
    bind(&ch, &early, &x, "k").await;
    publish_confirmed_props(&ch, &x, "k", b"first", delayed(300)).await;
    publish_confirmed_props(&ch, &x, "k", b"second", delayed(600)).await;
    // Rebind before the first is due.
    ch.queue_unbind(
        early.as_str().into(),
        x.as_str().into(),
        "k".into(),
        no_args(),
    )
    .await
    .unwrap();
    bind(&ch, &late, &x, "k").await;
    let mut consumer = consume_no_ack(&ch, &late).await;
    assert_eq!(body_str(&next(&mut consumer).await), "first");
    assert_eq!(body_str(&next(&mut consumer).await), "second");
    assert_eq!(message_count(&ch, &early).await, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_mandatory_delayed_message_is_returned_at_once_and_still_delivered() {
    // The plugin cannot know, at publish time, where the message will go: its
    // exchange routes it nowhere, so mandatory publishes are always returned.
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = delayed_exchange(&ch, "direct").await;
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "k").await;
    let returned = publish_mandatory(&ch, &x, "k", b"bounced", delayed(100)).await;
    assert_eq!(returned, Some(312));
    let mut consumer = consume_no_ack(&ch, &q).await;
    assert_eq!(body_str(&next(&mut consumer).await), "bounced");
    // Not delayed: routed, not returned.
    assert_eq!(
        publish_mandatory(&ch, &x, "k", b"now", delayed(0)).await,
        None
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn delayed_messages_keep_cc_keys_and_lose_bcc_when_routed() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = delayed_exchange(&ch, "direct").await;
    let (q1, q2, q3) = (
        temp_queue(&ch).await,
        temp_queue(&ch).await,
        temp_queue(&ch).await,
    );
    bind(&ch, &q1, &x, "k1").await;
    bind(&ch, &q2, &x, "k2").await;
    bind(&ch, &q3, &x, "k3").await;
    let props = with_headers(&[
        ("x-delay", AMQPValue::LongLongInt(150)),
        ("CC", keys(&["k2"])),
        ("BCC", keys(&["k3"])),
    ]);
    publish_confirmed_props(&ch, &x, "k1", b"m", props).await;
    for q in [&q1, &q2, &q3] {
        let mut c = consume_no_ack(&ch, q).await;
        let d = next(&mut c).await;
        assert_eq!(header(&d.properties, "BCC"), None);
        assert_eq!(header(&d.properties, "CC"), Some(&keys(&["k2"])));
        assert_eq!(
            header(&d.properties, "x-delay"),
            Some(&AMQPValue::LongInt(-150))
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn x_delayed_type_is_required_and_checked_like_the_plugin() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    for (args, text) in [
        (
            no_args(),
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type",
        ),
        (
            table(&[("x-delayed-type", AMQPValue::LongInt(1))]),
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type",
        ),
        (
            table(&[("x-delayed-type", ls("x-delayed-message"))]),
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
        ),
    ] {
        let ch = channel(&conn).await;
        let fut = ch.exchange_declare(
            unique("bad").as_str().into(),
            ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions::default(),
            args,
        );
        assert_amqp_error(fut, 406, text).await;
    }
    // Redeclaring with another type is inequivalent.
    let ch = channel(&conn).await;
    let x = delayed_exchange(&ch, "direct").await;
    let fut = ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        no_args(),
    );
    let text = format!(
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' in vhost '/': received 'direct' but current is 'x-delayed-message'"
    );
    assert_amqp_error(fut, 406, &text).await;
    // An unknown delayed type is a connection error, as an unknown exchange type.
    let ch = channel(&conn).await;
    let fut = ch.exchange_declare(
        unique("bad").as_str().into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions::default(),
        table(&[("x-delayed-type", ls("nope"))]),
    );
    assert_amqp_error(fut, 503, "COMMAND_INVALID - unknown exchange type 'nope'").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn deleting_a_delayed_exchange_drops_its_pending_messages() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = delayed_exchange(&ch, "direct").await;
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "k").await;
    publish_confirmed_props(&ch, &x, "k", b"dropped", delayed(100)).await;
    ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions::default(),
        table(&[("x-delayed-type", ls("direct"))]),
    )
    .await
    .unwrap();
    bind(&ch, &q, &x, "k").await;
    // Due after the dropped one: had that survived, it would come first.
    publish_confirmed_props(&ch, &x, "k", b"marker", delayed(300)).await;
    let mut consumer = consume_no_ack(&ch, &q).await;
    assert_eq!(body_str(&next(&mut consumer).await), "marker");
    broker.shutdown().await;
}

#[tokio::test]
async fn durable_delayed_messages_survive_a_restart() {
    let Some(mut broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let args = table(&[("x-delayed-type", ls("direct"))]);
    let x = declare_exchange(&ch, "x-delayed-message", true, args).await;
    let q = unique("dq");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    bind(&ch, &q, &x, "k").await;
    let persistent = |ms| delayed(ms).with_delivery_mode(2);
    // The confirm comes once the delayed message is on disk.
    publish_confirmed_props(&ch, &x, "k", b"p-early", persistent(300)).await;
    publish_confirmed_props(&ch, &x, "k", b"transient", delayed(700)).await;
    publish_confirmed_props(&ch, &x, "k", b"p-late", persistent(1500)).await;
    conn.close(200, "restart".into()).await.unwrap();
    broker.restart().await;

    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let mut consumer = consume(&ch, &q).await;
    let first = next(&mut consumer).await;
    assert_eq!(body_str(&first), "p-early");
    first.ack(BasicAckOptions::default()).await.unwrap();
    let second = next(&mut consumer).await;
    // The transient one (due in between) did not survive.
    assert_eq!(body_str(&second), "p-late");
    assert_eq!(
        header(&second.properties, "x-delay"),
        Some(&AMQPValue::LongInt(-1500))
    );
    second.ack(BasicAckOptions::default()).await.unwrap();
    // Routed messages are gone from the delayed log: nothing comes back after
    // another restart.
    conn.close(200, "restart".into()).await.unwrap();
    broker.restart().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    publish_confirmed_props(&ch, &x, "k", b"marker", persistent(200)).await;
    let mut consumer = consume_no_ack(&ch, &q).await;
    assert_eq!(body_str(&next(&mut consumer).await), "marker");
    broker.shutdown().await;
}

// --------------------------------------------------------------- deduplication

fn dedup_key(key: &str) -> BasicProperties {
    with_headers(&[("x-deduplication-header", ls(key))])
}

async fn dedup_exchange(ch: &Channel, extra: &[(&str, AMQPValue)]) -> String {
    let mut args = table(&[("x-message-deduplication", AMQPValue::Boolean(true))]);
    for (k, v) in extra {
        args.insert((*k).into(), v.clone());
    }
    declare_exchange(ch, "fanout", false, args).await
}

#[tokio::test]
async fn an_exchange_drops_duplicates_and_still_confirms_them() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = dedup_exchange(&ch, &[]).await;
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "").await;
    for (body, key) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")] {
        publish_confirmed_props(&ch, &x, "", body.as_bytes(), dedup_key(key)).await;
    }
    publish_confirmed(&ch, &x, "", b"no-key").await;
    publish_confirmed(&ch, &x, "", b"no-key").await;
    assert_eq!(
        drain(&ch, &q).await,
        bodies(["a1", "b1", "no-key", "no-key"])
    );
    // A mandatory duplicate routes nowhere: returned, as LavinMQ does.
    assert_eq!(
        publish_mandatory(&ch, &x, "", b"a3", dedup_key("a")).await,
        Some(312)
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn exchange_dedup_keys_expire_after_the_cache_ttl() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = dedup_exchange(&ch, &[("x-cache-ttl", AMQPValue::LongInt(100))]).await;
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "").await;
    // The message's own x-cache-ttl overrides the exchange's: a long one holds.
    let long = with_headers(&[
        ("x-deduplication-header", ls("long")),
        ("x-cache-ttl", AMQPValue::LongInt(60_000)),
    ]);
    publish_confirmed_props(&ch, &x, "", b"long", long).await;
    publish_confirmed_props(&ch, &x, "", b"short", dedup_key("short")).await;
    publish_confirmed_props(&ch, &x, "", b"short-dup", dedup_key("short")).await;
    assert_eq!(drain(&ch, &q).await, bodies(["long", "short"]));
    // Once the 100 ms have passed, the key is accepted again.
    let accepted = eventually(|| {
        let ch = ch.clone();
        let (x, q) = (x.clone(), q.clone());
        async move {
            publish_confirmed_props(&ch, &x, "", b"short-again", dedup_key("short")).await;
            message_count(&ch, &q).await == 1
        }
    })
    .await;
    assert!(accepted);
    publish_confirmed_props(&ch, &x, "", b"long-dup", dedup_key("long")).await;
    assert_eq!(drain(&ch, &q).await, bodies(["short-again"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn exchange_dedup_cache_size_forgets_the_oldest_key_and_the_header_is_configurable() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = dedup_exchange(
        &ch,
        &[
            ("x-cache-size", AMQPValue::LongInt(2)),
            ("x-deduplication-header", ls("msg-id")),
        ],
    )
    .await;
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "").await;
    let id = |k: &str| with_headers(&[("msg-id", ls(k))]);
    for k in ["a", "b", "c", "c", "b", "a"] {
        publish_confirmed_props(&ch, &x, "", k.as_bytes(), id(k)).await;
    }
    // The default header is not the key here.
    publish_confirmed_props(&ch, &x, "", b"d", dedup_key("c")).await;
    assert_eq!(drain(&ch, &q).await, bodies(["a", "b", "c", "a", "d"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn concurrent_publishers_to_a_dedup_exchange_deliver_each_key_once() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = dedup_exchange(&ch, &[("x-cache-size", AMQPValue::LongInt(10_000))]).await;
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "").await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let conn = broker.lapin().await;
        let x = x.clone();
        tasks.push(tokio::spawn(async move {
            let ch = confirm_channel(&conn).await;
            for i in 0..200 {
                let key = format!("k{i}");
                let props = dedup_key(&key);
                ch.basic_publish(
                    x.as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    key.as_bytes(),
                    props,
                )
                .await
                .unwrap();
            }
            ch.wait_for_confirms().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(message_count(&ch, &q).await, 200);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_queue_refuses_a_duplicate_while_the_first_is_still_in_it() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("dedup-q");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        table(&[("x-message-deduplication", AMQPValue::Boolean(true))]),
    )
    .await
    .unwrap();
    publish_confirmed_props(&ch, "", &q, b"a1", dedup_key("a")).await;
    publish_confirmed_props(&ch, "", &q, b"a2", dedup_key("a")).await;
    publish_confirmed_props(&ch, "", &q, b"b1", dedup_key("b")).await;
    assert_eq!(message_count(&ch, &q).await, 2);
    // Delivered but not acked: still in the queue.
    let m = get(&ch, &q).await.expect("a1");
    assert_eq!(m.delivery.data, b"a1");
    publish_confirmed_props(&ch, "", &q, b"a3", dedup_key("a")).await;
    assert_eq!(message_count(&ch, &q).await, 1);
    // Acked: the key is free again.
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    publish_confirmed_props(&ch, "", &q, b"a4", dedup_key("a")).await;
    assert_eq!(drain(&ch, &q).await, bodies(["b1", "a4"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn a_durable_dedup_queue_remembers_the_keys_of_its_messages_after_a_restart() {
    let Some(mut broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("dedup-dq");
    let declare = |ch: Channel, q: String| async move {
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            table(&[("x-message-deduplication", AMQPValue::Boolean(true))]),
        )
        .await
        .unwrap();
    };
    declare(ch.clone(), q.clone()).await;
    let persistent = |k| dedup_key(k).with_delivery_mode(2);
    publish_confirmed_props(&ch, "", &q, b"a1", persistent("a")).await;
    conn.close(200, "restart".into()).await.unwrap();
    broker.restart().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    publish_confirmed_props(&ch, "", &q, b"a2", persistent("a")).await;
    publish_confirmed_props(&ch, "", &q, b"b1", persistent("b")).await;
    assert_eq!(drain(&ch, &q).await, bodies(["a1", "b1"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn dedup_arguments_are_validated_on_exchanges() {
    let Some(broker) = warren_only().await else {
        return;
    };
    let conn = broker.lapin().await;
    for (arg, value, detail) in [
        (
            "x-cache-size",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
        (
            "x-cache-ttl",
            ls("soon"),
            "\"expected integer, got longstr\"",
        ),
        (
            "x-message-deduplication",
            AMQPValue::LongInt(1),
            "{unacceptable_type,signedint}",
        ),
        (
            "x-cache-persistence",
            ls("tape"),
            "\"unsupported cache persistence 'tape'\"",
        ),
    ] {
        let ch = channel(&conn).await;
        let name = unique("bad");
        let fut = ch.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            table(&[(arg, value)]),
        );
        let text = format!(
            "PRECONDITION_FAILED - invalid arg '{arg}' for exchange '{name}' in vhost '/': {detail}"
        );
        assert_amqp_error(fut, 406, &text).await;
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn exchange_redeclare_compares_only_the_alternate_exchange() {
    // RabbitMQ 3.10: other exchange arguments may differ on a redeclare.
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = unique("x");
    let declare = |args: FieldTable| {
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            args,
        )
    };
    declare(table(&[("x-foo", AMQPValue::LongInt(1))]))
        .await
        .unwrap();
    declare(table(&[("x-foo", AMQPValue::LongInt(2))]))
        .await
        .unwrap();
    declare(no_args()).await.unwrap();
    let text = format!(
        "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange '{x}' in vhost '/': received the value 'ae' of type 'longstr' but current is none"
    );
    assert_amqp_error(
        declare(table(&[("alternate-exchange", ls("ae"))])),
        406,
        &text,
    )
    .await;
    broker.shutdown().await;
}
