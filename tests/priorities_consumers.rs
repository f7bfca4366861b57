//! Priority queues (`x-max-priority` + the `priority` property), consumer
//! priorities (`x-priority`), single active consumer (`x-single-active-consumer`)
//! and the consumer acknowledgement timeout (`consumer_timeout`,
//! `x-consumer-timeout`).
//!
//! Everything but the ack timeout runs against RabbitMQ 3.10 too (it has
//! `consumer_timeout` only as a broker setting checked once a minute, and ignores
//! `x-consumer-timeout`), so those tests skip with `WARRENMQ_TEST_URL`.

mod common;

use amqprs::channel::{BasicAckArguments, BasicConsumeArguments, BasicGetArguments};
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, LongString};
use lapin::BasicProperties;

static ONE_RESTART_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn prio(p: Option<u8>) -> BasicProperties {
    match p {
        Some(p) => BasicProperties::default().with_priority(p),
        None => BasicProperties::default(),
    }
}

/// Publishes `(body, priority)` pairs with confirms.
async fn publish_prios(ch: &lapin::Channel, q: &str, items: &[(&str, Option<u8>)]) {
    for (body, p) in items {
        publish_confirmed_props(ch, "", q, body.as_bytes(), prio(*p)).await;
    }
}

async fn consume_with(ch: &lapin::Channel, q: &str, args: &[(&str, AMQPValue)]) -> lapin::Consumer {
    ch.basic_consume(
        q.into(),
        "".into(),
        BasicConsumeOptions::default(),
        table(args),
    )
    .await
    .expect("basic.consume")
}

async fn qos(ch: &lapin::Channel, n: u16) {
    ch.basic_qos(n, BasicQosOptions::default())
        .await
        .expect("basic.qos");
}

// ---------------------------------------------------------------- priorities

#[tokio::test]
async fn priority_queue_delivers_highest_first_and_fifo_within_a_priority() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("prio");
    declare(&ch, &q, false, &[("x-max-priority", AMQPValue::LongInt(5))]).await;
    publish_prios(
        &ch,
        &q,
        &[
            ("none", None),
            ("p3-a", Some(3)),
            ("p9-above-max", Some(9)),
            ("p3-b", Some(3)),
            ("p5", Some(5)),
            ("p0", Some(0)),
        ],
    )
    .await;
    assert_eq!(message_count(&ch, &q).await, 6);
    assert_eq!(
        drain(&ch, &q).await,
        bodies(["p9-above-max", "p5", "p3-a", "p3-b", "none", "p0"]),
        "above the maximum counts as the maximum; absent counts as 0"
    );
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn queue_without_max_priority_ignores_the_priority_property() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_prios(&ch, &q, &[("a", Some(1)), ("b", Some(9)), ("c", None)]).await;
    assert_eq!(drain(&ch, &q).await, bodies(["a", "b", "c"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn requeued_messages_return_to_their_place_within_their_priority() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("prio-requeue");
    declare(&ch, &q, false, &[("x-max-priority", AMQPValue::LongInt(2))]).await;
    publish_prios(
        &ch,
        &q,
        &[
            ("a1", Some(1)),
            ("b1", Some(1)),
            ("c2", Some(2)),
            ("d0", None),
        ],
    )
    .await;
    let c2 = get(&ch, &q).await.expect("c2");
    let a1 = get(&ch, &q).await.expect("a1");
    assert_eq!(
        (c2.delivery.data.as_slice(), a1.delivery.data.as_slice()),
        (&b"c2"[..], &b"a1"[..])
    );
    a1.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    c2.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let order: Vec<(Vec<u8>, bool)> = {
        let mut v = Vec::new();
        while let Some(m) = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            v.push((m.delivery.data.clone(), m.delivery.redelivered));
        }
        v
    };
    assert_eq!(
        order,
        vec![
            (b"c2".to_vec(), true),
            (b"a1".to_vec(), true),
            (b"b1".to_vec(), false),
            (b"d0".to_vec(), false)
        ]
    );
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn consumers_of_a_priority_queue_get_the_backlog_highest_first() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("prio-consume");
    declare(
        &ch,
        &q,
        false,
        &[("x-max-priority", AMQPValue::ShortShortUInt(10))],
    )
    .await;
    publish_prios(
        &ch,
        &q,
        &[("low", Some(1)), ("high", Some(8)), ("mid", Some(4))],
    )
    .await;
    let mut c = consume_no_ack(&ch, &q).await;
    let got: Vec<String> = vec![
        body_str(&next(&mut c).await),
        body_str(&next(&mut c).await),
        body_str(&next(&mut c).await),
    ];
    assert_eq!(got, ["high", "mid", "low"]);
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn max_priority_above_255_is_refused_with_rabbitmq_text() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("prio-bad");
    assert_amqp_error(
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            table(&[("x-max-priority", AMQPValue::LongInt(256))]),
        ),
        406,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}' in vhost '/': {{max_value_exceeded,256}}"
        ),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn durable_priority_queue_keeps_its_order_across_a_restart() {
    let _turn = ONE_RESTART_AT_A_TIME.lock().await;
    let Some(mut broker) = TestBroker::start_alt_restartable().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("prio-durable");
    declare(&ch, &q, true, &[("x-max-priority", AMQPValue::LongInt(3))]).await;
    for (body, p) in [("a0", 0), ("b2", 2), ("c1", 1), ("d2", 2), ("e3", 3)] {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(p);
        publish_confirmed_props(&ch, "", &q, body.as_bytes(), props).await;
    }
    // One delivered, unacked, at the restart: it comes back in its place.
    let held = get(&ch, &q).await.expect("e3");
    assert_eq!(held.delivery.data, b"e3");
    conn.close(200, "restart".into()).await.unwrap();
    broker.restart().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    assert_eq!(drain(&ch, &q).await, bodies(["e3", "b2", "d2", "c1", "a0"]));
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

// ------------------------------------------------------- consumer priorities

#[tokio::test]
async fn higher_priority_consumer_gets_messages_until_its_prefetch_is_full() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let pch = confirm_channel(&conn).await;
    let q = unique("cprio");
    declare(&pch, &q, false, &[]).await;
    let low_ch = channel(&conn).await;
    qos(&low_ch, 3).await;
    let mut low = consume_with(&low_ch, &q, &[("x-priority", AMQPValue::LongInt(-5))]).await;
    let high_ch = channel(&conn).await;
    qos(&high_ch, 2).await;
    let mut high = consume_with(&high_ch, &q, &[("x-priority", AMQPValue::LongInt(10))]).await;
    for i in 0..5 {
        publish_confirmed(&pch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let h1 = next(&mut high).await;
    let h2 = next(&mut high).await;
    assert_eq!((body_str(&h1), body_str(&h2)), ("m0".into(), "m1".into()));
    let l: Vec<String> = vec![
        body_str(&next(&mut low).await),
        body_str(&next(&mut low).await),
        body_str(&next(&mut low).await),
    ];
    assert_eq!(
        l,
        ["m2", "m3", "m4"],
        "the low one only while the high one is full"
    );
    // Credit back on the high-priority consumer: it takes the next message.
    // (The low one is full too, so the ack racing the publish cannot matter.)
    h1.ack(BasicAckOptions::default()).await.unwrap();
    h2.ack(BasicAckOptions::default()).await.unwrap();
    publish_confirmed(&pch, "", &q, b"m5").await;
    assert_eq!(body_str(&next(&mut high).await), "m5");
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn equal_priority_consumers_share_round_robin_and_lower_ones_get_nothing() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let pch = confirm_channel(&conn).await;
    let q = unique("cprio-rr");
    declare(&pch, &q, false, &[]).await;
    let ch = channel(&conn).await;
    let mut low = consume_with(&ch, &q, &[]).await; // priority 0
    let mut a = consume_with(&ch, &q, &[("x-priority", AMQPValue::LongInt(7))]).await;
    let mut b = consume_with(&ch, &q, &[("x-priority", AMQPValue::ShortInt(7))]).await;
    for i in 0..6 {
        publish_confirmed(&pch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..3 {
        got_a.push(body_str(&next(&mut a).await));
        got_b.push(body_str(&next(&mut b).await));
    }
    got_a.sort();
    got_b.sort();
    assert_eq!(got_a.len() + got_b.len(), 6);
    assert_eq!(
        (got_a.len(), got_b.len()),
        (3, 3),
        "round robin: {got_a:?} {got_b:?}"
    );
    // All six went to the priority-7 pair: the queue is empty, and the
    // priority-0 consumer got nothing (a delivery to it would come before the
    // cancel-ok on its channel).
    assert_eq!(message_count(&pch, &q).await, 0);
    ch.basic_cancel(low.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    expect_consumer_end(&mut low).await;
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn non_integer_x_priority_is_refused_with_rabbitmq_text() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    assert_amqp_error(
        ch.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            table(&[(
                "x-priority",
                AMQPValue::LongString(LongString::from("high")),
            )]),
        ),
        406,
        &format!(
            "PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost '/': \"expected integer, got longstr\""
        ),
    )
    .await;
    broker.shutdown().await;
}

// --------------------------------------------------- single active consumer

fn sac() -> (&'static str, AMQPValue) {
    ("x-single-active-consumer", AMQPValue::Boolean(true))
}

#[tokio::test]
async fn single_active_consumer_gets_everything_and_the_next_takes_over() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let pch = confirm_channel(&conn).await;
    let q = unique("sac");
    declare(&pch, &q, false, &[sac()]).await;
    let ch1 = channel(&conn).await;
    let mut c1 = consume(&ch1, &q).await;
    let ch2 = channel(&conn).await;
    let mut c2 = consume(&ch2, &q).await;
    let ch3 = channel(&conn).await;
    let mut c3 = consume(&ch3, &q).await;
    assert_eq!(
        consumer_count(&pch, &q).await,
        3,
        "waiting consumers count too"
    );
    for i in 0..3 {
        publish_confirmed(&pch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut held = Vec::new();
    for i in 0..3 {
        let d = next(&mut c1).await;
        assert_eq!(body_str(&d), format!("m{i}"));
        held.push(d);
    }
    held.pop()
        .unwrap()
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    // The active consumer's channel closes: its two unacked messages are
    // requeued and go, in order, to the next registered consumer.
    ch1.close(200, "bye".into()).await.unwrap();
    let d = next(&mut c2).await;
    assert_eq!((body_str(&d), d.redelivered), ("m0".into(), true));
    let d = next(&mut c2).await;
    assert_eq!((body_str(&d), d.redelivered), ("m1".into(), true));
    publish_confirmed(&pch, "", &q, b"m3").await;
    assert_eq!(body_str(&next(&mut c2).await), "m3");
    // Cancelling the active consumer hands over to the third one.
    ch2.basic_cancel(c2.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish_confirmed(&pch, "", &q, b"m4").await;
    let d = next(&mut c3).await;
    assert_eq!(body_str(&d), "m4");
    assert_eq!(consumer_count(&pch, &q).await, 1);
    drop(c1);
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn exclusive_consume_on_a_single_active_consumer_queue_is_refused() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("sac-excl");
    declare(&ch, &q, false, &[sac()]).await;
    assert_amqp_error(
        ch.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            no_args(),
        ),
        403,
        &format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"),
    )
    .await;
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

// ------------------------------------------------- consumer ack timeout

fn timeout_text(channel: u16, ms: u64) -> String {
    format!(
        "PRECONDITION_FAILED - delivery acknowledgement on channel {channel} timed out. \
         Timeout value used: {ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
    )
}

/// Declares a queue with `args` over amqprs.
async fn amqprs_declare(ch: &amqprs::channel::Channel, q: &str, args: amqprs::FieldTable) {
    ch.queue_declare(
        amqprs::channel::QueueDeclareArguments::new(q)
            .arguments(args)
            .finish(),
    )
    .await
    .expect("queue.declare");
}

fn amqprs_timeout_args(ms: i64) -> amqprs::FieldTable {
    let mut t = amqprs::FieldTable::new();
    t.insert(
        "x-consumer-timeout".try_into().unwrap(),
        amqprs::FieldValue::l(ms),
    );
    t
}

async fn amqprs_publish(ch: &amqprs::channel::Channel, q: &str, body: &[u8]) {
    ch.basic_publish(
        amqprs::BasicProperties::default(),
        body.to_vec(),
        amqprs::channel::BasicPublishArguments::new("", q),
    )
    .await
    .expect("basic.publish");
}

#[tokio::test]
async fn queue_consumer_timeout_closes_the_channel_and_requeues() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        eprintln!("skipped: RabbitMQ 3.10 has no x-consumer-timeout");
        return;
    }
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let q = unique("ack-timeout");
    amqprs_declare(&ch, &q, amqprs_timeout_args(100)).await;
    amqprs_publish(&ch, &q, b"slow").await;
    let (_tag, mut rx) = amqprs_consume(&ch, &q, false).await;
    let m = amqprs_next(&mut rx).await;
    assert_eq!(amqprs_body(&m), b"slow");
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!((code, text), (406, timeout_text(ch.channel_id(), 100)));
    // The unacked message went back to the queue, flagged redelivered.
    let (ch2, _ev) = amqprs_channel(&conn).await;
    let (_, (redelivered, body)) = within("basic.get", eventually_get(&ch2, &q)).await;
    assert!(redelivered);
    assert_eq!(body, b"slow");
    ch2.queue_delete(amqprs::channel::QueueDeleteArguments::new(&q))
        .await
        .unwrap();
    broker.shutdown().await;
}

/// basic.get (ack mode) until a message comes: (delivery tag, (redelivered, body)).
async fn eventually_get(ch: &amqprs::channel::Channel, q: &str) -> (u64, (bool, Vec<u8>)) {
    loop {
        if let Some((get_ok, _props, body)) = ch
            .basic_get(BasicGetArguments::new(q))
            .await
            .expect("basic.get")
        {
            return (get_ok.delivery_tag(), (get_ok.redelivered(), body));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn broker_consumer_timeout_applies_to_basic_get_and_zero_disables_per_queue() {
    let broker = TestBroker::start_with(|c| c.amqp.consumer_timeout = 150).await;
    if broker.is_external() {
        eprintln!("skipped: RabbitMQ checks consumer_timeout once a minute");
        return;
    }
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let never = unique("ack-timeout-off");
    amqprs_declare(&ch, &never, amqprs_timeout_args(0)).await;
    let default = unique("ack-timeout-default");
    amqprs_declare(&ch, &default, amqprs::FieldTable::new()).await;
    amqprs_publish(&ch, &never, b"kept").await;
    amqprs_publish(&ch, &default, b"late").await;
    // The older delivery has no timeout (0 disables it); the newer one times
    // out with the broker's setting.
    let (_, (_, body)) = eventually_get(&ch, &never).await;
    assert_eq!(body, b"kept");
    let (_, (_, body)) = eventually_get(&ch, &default).await;
    assert_eq!(body, b"late");
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!((code, text), (406, timeout_text(ch.channel_id(), 150)));
    broker.shutdown().await;
}

#[tokio::test]
async fn consumer_argument_overrides_the_queue_timeout_and_acks_in_time_keep_the_channel() {
    let broker = TestBroker::start().await;
    if broker.is_external() {
        eprintln!("skipped: RabbitMQ 3.10 has no x-consumer-timeout");
        return;
    }
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let q = unique("ack-timeout-consumer");
    amqprs_declare(&ch, &q, amqprs_timeout_args(600_000)).await;
    amqprs_publish(&ch, &q, b"acked").await;
    amqprs_publish(&ch, &q, b"held").await;
    let args = BasicConsumeArguments::new(&q, "")
        .manual_ack(true)
        .arguments(amqprs_timeout_args(200))
        .finish();
    let (_tag, mut rx) = ch.basic_consume_rx(args).await.expect("basic.consume");
    let first = amqprs_next(&mut rx).await;
    assert_eq!(amqprs_body(&first), b"acked");
    ch.basic_ack(BasicAckArguments::new(
        first.deliver.as_ref().unwrap().delivery_tag(),
        false,
    ))
    .await
    .unwrap();
    let second = amqprs_next(&mut rx).await;
    assert_eq!(amqprs_body(&second), b"held");
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!((code, text), (406, timeout_text(ch.channel_id(), 200)));
    broker.shutdown().await;
}
