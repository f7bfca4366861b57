//! Prefetch (basic.qos, RabbitMQ semantics), acknowledgements, requeueing and
//! redelivery.
//!
//! RabbitMQ semantics: `global=false` sets the limit for each consumer started
//! afterwards on the channel; `global=true` sets one limit shared by all the
//! channel's consumers. A limit never affects consumers already started.

mod common;

use common::*;
use lapin::options::*;

async fn publish_n(ch: &lapin::Channel, queue: &str, n: usize) {
    for i in 1..=n {
        publish_confirmed(ch, "", queue, format!("{i}").as_bytes()).await;
    }
}

#[tokio::test]
async fn per_consumer_prefetch_limits_unacked_deliveries() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_n(&ch, &q, 5).await;
    let cch = channel(&conn).await;
    cch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&cch, &q).await;
    let d1 = next(&mut consumer).await;
    let d2 = next(&mut consumer).await;
    assert_eq!((body_str(&d1), body_str(&d2)), ("1".into(), "2".into()));
    assert_eq!(message_count(&ch, &q).await, 3, "only two may be unacked");
    d1.ack(BasicAckOptions::default()).await.unwrap();
    let d3 = next(&mut consumer).await;
    assert_eq!(body_str(&d3), "3");
    assert_eq!(message_count(&ch, &q).await, 2);
    broker.shutdown().await;
}

#[tokio::test]
async fn per_consumer_prefetch_applies_to_each_consumer_separately() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q1 = temp_queue(&ch).await;
    let q2 = temp_queue(&ch).await;
    publish_n(&ch, &q1, 4).await;
    publish_n(&ch, &q2, 4).await;
    let cch = channel(&conn).await;
    cch.basic_qos(1, BasicQosOptions { global: false })
        .await
        .unwrap();
    let mut c1 = consume(&cch, &q1).await;
    let mut c2 = consume(&cch, &q2).await;
    next(&mut c1).await;
    next(&mut c2).await;
    assert_eq!(message_counts(&ch, &[q1, q2]).await, vec![3, 3]);
    broker.shutdown().await;
}

#[tokio::test]
async fn global_prefetch_is_shared_by_the_channels_consumers() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q1 = temp_queue(&ch).await;
    let q2 = temp_queue(&ch).await;
    publish_n(&ch, &q1, 5).await;
    publish_n(&ch, &q2, 5).await;
    let cch = channel(&conn).await;
    cch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut c1 = consume(&cch, &q1).await;
    let mut c2 = consume(&cch, &q2).await;
    // Collect three deliveries from whichever consumers get them.
    let mut received = 0;
    while received < 3 {
        tokio::select! {
            d = next(&mut c1) => { let _ = d; received += 1; }
            d = next(&mut c2) => { let _ = d; received += 1; }
        }
    }
    let counts = message_counts(&ch, &[q1, q2]).await;
    assert_eq!(
        counts.iter().sum::<u32>(),
        7,
        "three unacked in total: {counts:?}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn qos_does_not_change_consumers_already_started() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let cch = channel(&conn).await;
    let mut consumer = consume(&cch, &q).await;
    cch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    publish_n(&ch, &q, 3).await;
    for _ in 0..3 {
        next(&mut consumer).await;
    }
    assert_eq!(message_count(&ch, &q).await, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn prefetch_zero_means_unlimited() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_n(&ch, &q, 20).await;
    let cch = channel(&conn).await;
    cch.basic_qos(0, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&cch, &q).await;
    for _ in 0..20 {
        next(&mut consumer).await;
    }
    assert_eq!(message_count(&ch, &q).await, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn prefetch_size_is_not_implemented_and_closes_the_connection_with_540() {
    let broker = TestBroker::start().await;
    let mut c = common::raw::RawConn::open_connection(&broker).await.0;
    c.open_channel(1).await;
    // basic.qos prefetch-size=1, prefetch-count=0, global=false
    let args = common::raw::Enc::new().u32(1).u16(0).u8(0).build();
    c.send_method(1, 60, 10, &args).await;
    let reason = c.expect_connection_close().await;
    assert_eq!(
        (reason.code, reason.text.as_str()),
        (540, "NOT_IMPLEMENTED - prefetch_size!=0 (1)")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn ack_multiple_acknowledges_everything_up_to_the_tag() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_n(&ch, &q, 4).await;
    let cch = channel(&conn).await;
    let mut consumer = consume(&cch, &q).await;
    let mut tags = Vec::new();
    for _ in 0..4 {
        tags.push(next(&mut consumer).await.delivery_tag);
    }
    assert_eq!(tags, vec![1, 2, 3, 4]);
    cch.basic_ack(3, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    // Closing the channel requeues only the one message that was not acked.
    drop(consumer);
    cch.close(200, "bye".into()).await.unwrap();
    assert_eq!(drain(&ch, &q).await, bodies(["4"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn ack_multiple_with_tag_zero_acknowledges_all_outstanding() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_n(&ch, &q, 3).await;
    let cch = channel(&conn).await;
    let mut consumer = consume(&cch, &q).await;
    for _ in 0..3 {
        next(&mut consumer).await;
    }
    cch.basic_ack(0, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    drop(consumer);
    cch.close(200, "bye".into()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn nack_multiple_with_requeue_redelivers_in_order() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_n(&ch, &q, 3).await;
    let cch = channel(&conn).await;
    let mut consumer = consume(&cch, &q).await;
    for _ in 0..3 {
        next(&mut consumer).await;
    }
    cch.basic_nack(
        3,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .unwrap();
    let mut again = Vec::new();
    for _ in 0..3 {
        let d = next(&mut consumer).await;
        assert!(d.redelivered, "requeued messages are flagged redelivered");
        again.push(body_str(&d));
    }
    assert_eq!(again, ["1", "2", "3"]);
    broker.shutdown().await;
}

#[tokio::test]
async fn nack_without_requeue_discards() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_n(&ch, &q, 2).await;
    let m = get(&ch, &q).await.unwrap();
    m.delivery
        .nack(BasicNackOptions {
            multiple: false,
            requeue: false,
        })
        .await
        .unwrap();
    assert_eq!(drain(&ch, &q).await, bodies(["2"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn reject_without_requeue_discards() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_n(&ch, &q, 2).await;
    let m = get(&ch, &q).await.unwrap();
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    assert_eq!(drain(&ch, &q).await, bodies(["2"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn reject_with_requeue_redelivers_with_the_redelivered_flag() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_n(&ch, &q, 1).await;
    let m = get(&ch, &q).await.unwrap();
    assert!(!m.delivery.redelivered);
    m.delivery
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let again = get(&ch, &q).await.expect("requeued");
    assert!(again.delivery.redelivered);
    assert_eq!(again.delivery.data, b"1");
    assert_eq!(
        again.delivery.delivery_tag, 2,
        "a redelivery gets a new delivery tag"
    );
    broker.shutdown().await;
}

async fn amqprs_get_one(ch: &amqprs::channel::Channel, queue: &str) -> u64 {
    let conn_publish = amqprs::channel::BasicPublishArguments::new("", queue);
    ch.basic_publish(
        amqprs::BasicProperties::default(),
        b"m".to_vec(),
        conn_publish,
    )
    .await
    .unwrap();
    let (_, mut rx) = amqprs_consume(ch, queue, false).await;
    amqprs_next(&mut rx).await.deliver.unwrap().delivery_tag()
}

#[tokio::test]
async fn acking_an_unknown_delivery_tag_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    ch.basic_ack(amqprs::channel::BasicAckArguments::new(42, false))
        .await
        .unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!(
        (code, text.as_str()),
        (406, "PRECONDITION_FAILED - unknown delivery tag 42")
    );
    assert!(conn.is_open(), "a soft error leaves the connection open");
    broker.shutdown().await;
}

#[tokio::test]
async fn acking_a_delivery_twice_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    let tag = amqprs_get_one(&ch, &q).await;
    ch.basic_ack(amqprs::channel::BasicAckArguments::new(tag, false))
        .await
        .unwrap();
    ch.basic_ack(amqprs::channel::BasicAckArguments::new(tag, false))
        .await
        .unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!(
        (code, text),
        (
            406,
            format!("PRECONDITION_FAILED - unknown delivery tag {tag}")
        )
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn nacking_an_unknown_delivery_tag_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    ch.basic_nack(amqprs::channel::BasicNackArguments::new(7, false, true))
        .await
        .unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!(
        (code, text.as_str()),
        (406, "PRECONDITION_FAILED - unknown delivery tag 7")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn rejecting_an_unknown_delivery_tag_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    ch.basic_reject(amqprs::channel::BasicRejectArguments::new(9, false))
        .await
        .unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!(
        (code, text.as_str()),
        (406, "PRECONDITION_FAILED - unknown delivery tag 9")
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn ack_multiple_beyond_the_last_tag_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    let tag = amqprs_get_one(&ch, &q).await;
    ch.basic_ack(amqprs::channel::BasicAckArguments::new(tag + 5, true))
        .await
        .unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!(
        (code, text),
        (
            406,
            format!("PRECONDITION_FAILED - unknown delivery tag {}", tag + 5)
        )
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn acking_a_no_ack_delivery_closes_the_channel_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    ch.basic_publish(
        amqprs::BasicProperties::default(),
        b"m".to_vec(),
        amqprs::channel::BasicPublishArguments::new("", &q),
    )
    .await
    .unwrap();
    let (_, mut rx) = amqprs_consume(&ch, &q, true).await;
    let tag = amqprs_next(&mut rx).await.deliver.unwrap().delivery_tag();
    ch.basic_ack(amqprs::channel::BasicAckArguments::new(tag, false))
        .await
        .unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!(
        (code, text),
        (
            406,
            format!("PRECONDITION_FAILED - unknown delivery tag {tag}")
        )
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn basic_recover_requeues_unacked_messages_as_redelivered() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_n(&ch, &q, 2).await;
    let cch = channel(&conn).await;
    let mut consumer = consume(&cch, &q).await;
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    assert!(!first.redelivered && !second.redelivered);
    cch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .expect("basic.recover");
    let a = next(&mut consumer).await;
    let b = next(&mut consumer).await;
    assert!(a.redelivered && b.redelivered);
    assert_eq!((body_str(&a), body_str(&b)), ("1".into(), "2".into()));
    broker.shutdown().await;
}

#[tokio::test]
async fn closing_a_channel_requeues_its_unacked_messages() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_n(&ch, &q, 3).await;
    let cch = channel(&conn).await;
    let mut consumer = consume(&cch, &q).await;
    let d1 = next(&mut consumer).await;
    next(&mut consumer).await;
    next(&mut consumer).await;
    d1.ack(BasicAckOptions::default()).await.unwrap();
    drop(consumer);
    cch.close(200, "bye".into()).await.unwrap();
    let m = get(&ch, &q).await.expect("requeued");
    assert!(m.delivery.redelivered);
    assert_eq!(m.delivery.data, b"2");
    let m = get(&ch, &q).await.expect("requeued");
    assert!(m.delivery.redelivered);
    assert_eq!(m.delivery.data, b"3");
    broker.shutdown().await;
}

#[tokio::test]
async fn closing_a_connection_requeues_its_unacked_messages() {
    let broker = TestBroker::start().await;
    let owner = broker.lapin().await;
    let ch = confirm_channel(&owner).await;
    let q = shared_queue(&ch).await;
    publish_n(&ch, &q, 1).await;
    let consumer_conn = broker.lapin().await;
    let cch = channel(&consumer_conn).await;
    let mut consumer = consume(&cch, &q).await;
    next(&mut consumer).await;
    consumer_conn.close(200, "bye".into()).await.unwrap();
    assert!(eventually(|| async { message_count(&ch, &q).await == 1 }).await);
    let m = get(&ch, &q).await.expect("requeued");
    assert!(m.delivery.redelivered);
    delete_queue(&owner, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn unacked_message_from_a_closed_channel_goes_to_another_consumer() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let c1ch = channel(&conn).await;
    let mut c1 = consume(&c1ch, &q).await;
    publish_n(&ch, &q, 1).await;
    next(&mut c1).await;
    let c2ch = channel(&conn).await;
    let mut c2 = consume(&c2ch, &q).await;
    drop(c1);
    c1ch.close(200, "bye".into()).await.unwrap();
    let d = next(&mut c2).await;
    assert!(d.redelivered);
    assert_eq!(body_str(&d), "1");
    broker.shutdown().await;
}

#[tokio::test]
async fn delivery_tags_are_per_channel() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_n(&ch, &q, 2).await;
    let a = channel(&conn).await;
    let b = channel(&conn).await;
    let ma = get(&a, &q).await.unwrap();
    let mb = get(&b, &q).await.unwrap();
    assert_eq!((ma.delivery.delivery_tag, mb.delivery.delivery_tag), (1, 1));
    broker.shutdown().await;
}

#[tokio::test]
async fn basic_get_ignores_the_prefetch_limit() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_n(&ch, &q, 3).await;
    let gch = channel(&conn).await;
    gch.basic_qos(1, BasicQosOptions { global: true })
        .await
        .unwrap();
    for expected in ["1", "2", "3"] {
        let m = get(&gch, &q)
            .await
            .expect("basic.get is not limited by qos");
        assert_eq!(m.delivery.data, expected.as_bytes());
    }
    broker.shutdown().await;
}

/// Three queues with two messages each, one manual-ack consumer per queue on a
/// channel configured by `qos`; waits for `expect` deliveries and returns the
/// ready counts left in the queues.
async fn deliveries_under_qos(qos: &[(u16, bool)], expect: usize) -> Vec<u32> {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let queues = vec![
        temp_queue(&ch).await,
        temp_queue(&ch).await,
        temp_queue(&ch).await,
    ];
    for q in &queues {
        publish_n(&ch, q, 2).await;
    }
    let cch = channel(&conn).await;
    for (count, global) in qos {
        cch.basic_qos(*count, BasicQosOptions { global: *global })
            .await
            .unwrap();
    }
    let mut consumers = Vec::new();
    for q in &queues {
        consumers.push(consume(&cch, q).await);
    }
    let mut received = 0;
    while received < expect {
        let (a, rest) = consumers.split_at_mut(1);
        let (b, c) = rest.split_at_mut(1);
        tokio::select! {
            _ = next(&mut a[0]) => received += 1,
            _ = next(&mut b[0]) => received += 1,
            _ = next(&mut c[0]) => received += 1,
        }
    }
    let counts = message_counts(&ch, &queues).await;
    broker.shutdown().await;
    counts
}

#[tokio::test]
async fn global_limit_set_after_a_per_consumer_limit_applies_on_top_of_it() {
    // Each consumer may hold 1, the channel 2 in total.
    let counts = deliveries_under_qos(&[(1, false), (2, true)], 2).await;
    assert_eq!(
        counts.iter().sum::<u32>(),
        4,
        "two unacked in total: {counts:?}"
    );
    assert!(
        counts.iter().all(|&n| n >= 1),
        "no consumer exceeds its own limit: {counts:?}"
    );
}

/// RabbitMQ quirk: basic.qos with global=false also lifts the channel-wide
/// limit set earlier by basic.qos with global=true.
#[tokio::test]
async fn per_consumer_qos_clears_an_earlier_global_limit() {
    let counts = deliveries_under_qos(&[(2, true), (1, false)], 3).await;
    assert_eq!(counts, vec![1, 1, 1]);
}

#[tokio::test]
async fn no_ack_consumers_ignore_the_prefetch_limit() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_n(&ch, &q, 5).await;
    let cch = channel(&conn).await;
    cch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume_no_ack(&cch, &q).await;
    for _ in 0..5 {
        next(&mut consumer).await;
    }
    assert_eq!(message_count(&ch, &q).await, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn amqprs_prefetch_and_ack_release_the_next_message() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, _events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    for i in 1..=3 {
        ch.basic_publish(
            amqprs::BasicProperties::default(),
            format!("{i}").into_bytes(),
            amqprs::channel::BasicPublishArguments::new("", &q),
        )
        .await
        .unwrap();
    }
    ch.basic_qos(amqprs::channel::BasicQosArguments::new(0, 1, false))
        .await
        .unwrap();
    let (_, mut rx) = amqprs_consume(&ch, &q, false).await;
    for expected in ["1", "2", "3"] {
        let m = amqprs_next(&mut rx).await;
        assert_eq!(amqprs_body(&m), expected.as_bytes());
        let tag = m.deliver.unwrap().delivery_tag();
        ch.basic_ack(amqprs::channel::BasicAckArguments::new(tag, false))
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
    broker.shutdown().await;
}
