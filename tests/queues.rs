//! Queues: naming, passive/durable/exclusive/auto-delete, declare-ok counts,
//! bind/unbind, purge, delete conditions, FIFO order and requeue position.

mod common;

use common::*;
use lapin::options::*;
use lapin::ExchangeKind;

#[tokio::test]
async fn server_named_queue_starts_with_amq_gen() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = ch
        .queue_declare("".into(), QueueDeclareOptions::exclusive(), no_args())
        .await
        .unwrap();
    let name = q.name().as_str();
    assert!(name.starts_with("amq.gen-"), "{name}");
    assert!(name.len() > "amq.gen-".len());
    broker.shutdown().await;
}

#[tokio::test]
async fn server_named_queues_are_distinct() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, _events) = amqprs_channel(&conn).await;
    let a = amqprs_temp_queue(&ch).await;
    let b = amqprs_temp_queue(&ch).await;
    assert!(
        a.starts_with("amq.gen-") && b.starts_with("amq.gen-"),
        "{a} {b}"
    );
    assert_ne!(a, b);
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn declare_ok_reports_message_and_consumer_counts() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    for n in 0..3 {
        publish_confirmed(&ch, "", &q, format!("{n}").as_bytes()).await;
    }
    let ok = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::exclusive(),
            no_args(),
        )
        .await
        .unwrap();
    assert_eq!((ok.message_count(), ok.consumer_count()), (3, 0));
    // A consumer limited to one unacked message takes one of the three.
    let ch2 = channel(&conn).await;
    ch2.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&ch2, &q).await;
    next(&mut consumer).await;
    let ok = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::exclusive(),
            no_args(),
        )
        .await
        .unwrap();
    assert_eq!((ok.message_count(), ok.consumer_count()), (2, 1));
    broker.shutdown().await;
}

#[tokio::test]
async fn passive_declare_reports_ready_messages() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    for _ in 0..4 {
        publish_confirmed(&ch, "", &q, b"m").await;
    }
    assert_eq!(message_count(&ch, &q).await, 4);
    assert_eq!(consumer_count(&ch, &q).await, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn passive_declare_of_a_missing_queue_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("missing");
    assert_amqp_error(
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        ),
        404,
        &format!("NOT_FOUND - no queue '{q}' in vhost '/'"),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn durable_queue_can_be_declared_and_redeclared() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("durable");
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(q.as_str().into(), opts, no_args())
        .await
        .unwrap();
    ch.queue_declare(q.as_str().into(), opts, no_args())
        .await
        .expect("equivalent redeclare");
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn redeclare_with_another_durable_flag_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = shared_queue(&ch).await;
    assert_amqp_error(
        ch.queue_declare(q.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, no_args()),
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' in vhost '/': received 'true' but current is 'false'"
        ),
    )
    .await;
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn redeclare_with_another_auto_delete_flag_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = shared_queue(&ch).await;
    assert_amqp_error(
        ch.queue_declare(q.as_str().into(), QueueDeclareOptions { auto_delete: true, ..Default::default() }, no_args()),
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue '{q}' in vhost '/': received 'true' but current is 'false'"
        ),
    )
    .await;
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn declaring_an_amq_prefixed_queue_fails_with_403() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = format!("amq.{}", unique("mine"));
    assert_amqp_error(
        ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), no_args()),
        403,
        &format!("ACCESS_REFUSED - queue name '{q}' contains reserved prefix 'amq.*'"),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn exclusive_queue_is_locked_for_other_connections_with_405() {
    let broker = TestBroker::start().await;
    let owner = broker.lapin().await;
    let ch = channel(&owner).await;
    let q = temp_queue(&ch).await;
    let other = broker.lapin().await;
    let och = channel(&other).await;
    assert_amqp_error(
        och.queue_declare(q.as_str().into(), QueueDeclareOptions::exclusive(), no_args()),
        405,
        &format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        ),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn exclusive_queue_refuses_passive_declare_from_other_connections_with_405() {
    let broker = TestBroker::start().await;
    let owner = broker.lapin().await;
    let ch = channel(&owner).await;
    let q = temp_queue(&ch).await;
    let other = broker.lapin().await;
    let och = channel(&other).await;
    assert_amqp_error(
        och.queue_declare(q.as_str().into(), QueueDeclareOptions { passive: true, ..Default::default() }, no_args()),
        405,
        &format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        ),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn exclusive_queue_refuses_consumers_from_other_connections_with_405() {
    let broker = TestBroker::start().await;
    let owner = broker.lapin().await;
    let ch = channel(&owner).await;
    let q = temp_queue(&ch).await;
    let other = broker.lapin().await;
    let och = channel(&other).await;
    assert_amqp_error(
        och.basic_consume(q.as_str().into(), "".into(), BasicConsumeOptions::default(), no_args()),
        405,
        &format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        ),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn exclusive_queue_can_be_used_from_another_channel_of_the_owner() {
    let broker = TestBroker::start().await;
    let owner = broker.lapin().await;
    let ch = confirm_channel(&owner).await;
    let q = temp_queue(&ch).await;
    let ch2 = channel(&owner).await;
    publish_confirmed(&ch, "", &q, b"mine").await;
    assert_eq!(get_body(&ch2, &q).await.as_deref(), Some(&b"mine"[..]));
    broker.shutdown().await;
}

#[tokio::test]
async fn exclusive_queue_is_deleted_when_its_connection_closes() {
    let broker = TestBroker::start().await;
    let owner = broker.lapin().await;
    let ch = channel(&owner).await;
    let q = temp_queue(&ch).await;
    let observer = broker.lapin().await;
    owner.close(200, "bye".into()).await.unwrap();
    assert!(
        eventually(|| async { !queue_exists(&observer, &q).await }).await,
        "exclusive queue outlived its connection"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn non_exclusive_queue_survives_its_declaring_connection() {
    let broker = TestBroker::start().await;
    let owner = broker.lapin().await;
    let ch = channel(&owner).await;
    let q = shared_queue(&ch).await;
    owner.close(200, "bye".into()).await.unwrap();
    let other = broker.lapin().await;
    assert!(queue_exists(&other, &q).await);
    delete_queue(&other, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn auto_delete_queue_is_deleted_after_its_last_consumer_cancels() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("ad");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    let c1 = consume(&ch, &q).await;
    let c2 = consume(&ch, &q).await;
    ch.basic_cancel(c1.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert!(queue_exists(&conn, &q).await, "one consumer is left");
    ch.basic_cancel(c2.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    assert!(
        eventually(|| async { !queue_exists(&conn, &q).await }).await,
        "auto-delete queue outlived its last consumer"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn auto_delete_queue_without_consumers_is_kept() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("ad");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    assert!(queue_exists(&conn, &q).await);
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn auto_delete_queue_is_deleted_when_its_consumer_channel_closes() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("ad");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    let cch = channel(&conn).await;
    let _c = consume(&cch, &q).await;
    cch.close(200, "bye".into()).await.unwrap();
    assert!(eventually(|| async { !queue_exists(&conn, &q).await }).await);
    broker.shutdown().await;
}

#[tokio::test]
async fn bind_routes_and_unbind_stops_routing() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Direct).await;
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "k").await;
    publish_confirmed(&ch, &x, "k", b"bound").await;
    ch.queue_unbind(q.as_str().into(), x.as_str().into(), "k".into(), no_args())
        .await
        .expect("queue.unbind");
    publish_confirmed(&ch, &x, "k", b"unbound").await;
    assert_eq!(drain(&ch, &q).await, bodies(["bound"]));
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn unbinding_a_missing_binding_succeeds() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Direct).await;
    let q = temp_queue(&ch).await;
    ch.queue_unbind(
        q.as_str().into(),
        x.as_str().into(),
        "never-bound".into(),
        no_args(),
    )
    .await
    .expect("queue.unbind is idempotent");
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn binding_a_missing_queue_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("missing");
    assert_amqp_error(
        ch.queue_bind(
            q.as_str().into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            no_args(),
        ),
        404,
        &format!("NOT_FOUND - no queue '{q}' in vhost '/'"),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn purge_returns_the_number_of_purged_messages() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    for _ in 0..5 {
        publish_confirmed(&ch, "", &q, b"m").await;
    }
    let purged = ch
        .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
        .await
        .unwrap();
    assert_eq!(purged, 5);
    assert_eq!(message_count(&ch, &q).await, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn purge_leaves_unacked_messages_alone() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_confirmed(&ch, "", &q, b"held").await;
    publish_confirmed(&ch, "", &q, b"ready").await;
    let held = get(&ch, &q).await.expect("a message");
    assert_eq!(
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default())
            .await
            .unwrap(),
        1
    );
    ch.basic_reject(
        held.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    )
    .await
    .unwrap();
    assert_eq!(drain(&ch, &q).await, bodies(["held"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn purging_a_missing_queue_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("missing");
    assert_amqp_error(
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()),
        404,
        &format!("NOT_FOUND - no queue '{q}' in vhost '/'"),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn delete_returns_the_number_of_ready_messages() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    for _ in 0..3 {
        publish_confirmed(&ch, "", &q, b"m").await;
    }
    let n = ch
        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert!(!queue_exists(&conn, &q).await);
    broker.shutdown().await;
}

#[tokio::test]
async fn deleting_a_missing_queue_succeeds_with_zero() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let n = ch
        .queue_delete(
            unique("missing").as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("queue.delete is idempotent");
    assert_eq!(n, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn delete_if_unused_fails_with_406_while_consumed() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    let _c = consume(&ch, &q).await;
    let ch2 = channel(&conn).await;
    assert_amqp_error(
        ch2.queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
        406,
        &format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' in use"),
    )
    .await;
    assert!(queue_exists(&conn, &q).await);
    broker.shutdown().await;
}

#[tokio::test]
async fn delete_if_empty_fails_with_406_while_messages_are_ready() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_confirmed(&ch, "", &q, b"m").await;
    assert_amqp_error(
        ch.queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ),
        406,
        &format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty"),
    )
    .await;
    assert!(queue_exists(&conn, &q).await);
    broker.shutdown().await;
}

#[tokio::test]
async fn delete_if_empty_and_if_unused_succeed_on_an_idle_empty_queue() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    let n = ch
        .queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_empty: true,
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert!(!queue_exists(&conn, &q).await);
    broker.shutdown().await;
}

#[tokio::test]
async fn messages_are_delivered_in_fifo_order() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let sent: Vec<Vec<u8>> = (0..50).map(|n| format!("m{n}").into_bytes()).collect();
    for b in &sent {
        publish(&ch, "", &q, b).await;
    }
    within("confirms", ch.wait_for_confirms()).await.unwrap();
    let mut consumer = consume_no_ack(&ch, &q).await;
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        got.push(next(&mut consumer).await.data);
    }
    assert_eq!(got, sent);
    broker.shutdown().await;
}

#[tokio::test]
async fn requeued_message_returns_to_its_original_position() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    for b in ["1", "2", "3"] {
        publish_confirmed(&ch, "", &q, b.as_bytes()).await;
    }
    let first = get(&ch, &q).await.unwrap();
    assert_eq!(first.delivery.data, b"1");
    ch.basic_reject(
        first.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    )
    .await
    .unwrap();
    assert_eq!(drain(&ch, &q).await, bodies(["1", "2", "3"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn requeued_messages_keep_their_relative_order() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    for b in ["1", "2", "3", "4"] {
        publish_confirmed(&ch, "", &q, b.as_bytes()).await;
    }
    let m1 = get(&ch, &q).await.unwrap();
    let m2 = get(&ch, &q).await.unwrap();
    // Requeue in reverse order: RabbitMQ still puts them back as 1, 2.
    ch.basic_reject(
        m2.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    )
    .await
    .unwrap();
    ch.basic_reject(
        m1.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    )
    .await
    .unwrap();
    assert_eq!(drain(&ch, &q).await, bodies(["1", "2", "3", "4"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn amqprs_declare_bind_purge_and_delete() {
    use amqprs::channel::{
        BasicPublishArguments, QueueBindArguments, QueueDeclareArguments, QueueDeleteArguments,
        QueuePurgeArguments, QueueUnbindArguments,
    };
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, _events) = amqprs_channel(&conn).await;
    let q = unique("aq");
    let (name, messages, consumers) = ch
        .queue_declare(QueueDeclareArguments::new(&q).exclusive(true).finish())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((name.as_str(), messages, consumers), (q.as_str(), 0, 0));
    ch.queue_bind(QueueBindArguments::new(&q, "amq.direct", &q))
        .await
        .unwrap();
    ch.basic_publish(
        amqprs::BasicProperties::default(),
        b"a".to_vec(),
        BasicPublishArguments::new("amq.direct", &q),
    )
    .await
    .unwrap();
    ch.basic_publish(
        amqprs::BasicProperties::default(),
        b"b".to_vec(),
        BasicPublishArguments::new("", &q),
    )
    .await
    .unwrap();
    // queue.declare is synchronous and ordered after the publishes on this channel.
    let ok = eventually(|| async {
        let (_, n, _) = ch
            .queue_declare(QueueDeclareArguments::new(&q).passive(true).finish())
            .await
            .unwrap()
            .unwrap();
        n == 2
    })
    .await;
    assert!(ok);
    ch.queue_unbind(QueueUnbindArguments::new(&q, "amq.direct", &q))
        .await
        .unwrap();
    assert_eq!(
        ch.queue_purge(QueuePurgeArguments::new(&q)).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        ch.queue_delete(QueueDeleteArguments::new(&q))
            .await
            .unwrap(),
        Some(0)
    );
    conn.close().await.unwrap();
    broker.shutdown().await;
}

/// AMQP 0-9-1 lets an empty queue name mean "the queue last declared on this
/// channel" in queue.bind, basic.consume, basic.get, queue.purge and queue.delete.
#[tokio::test]
async fn empty_queue_name_refers_to_the_last_declared_queue() {
    use common::raw::{frame, header_frame, method_frame, Dec, Enc, RawConn, FRAME_BODY};
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(1).await;
    let declare = Enc::new()
        .u16(0)
        .short_str("")
        .u8(0b0000_1100)
        .empty_table()
        .build();
    c.send_method(1, 50, 10, &declare).await;
    let ok = c.expect_method(1, 50, 11).await;
    let q = Dec::new(&ok).short_str();
    let key = unique("k");
    // queue.bind with an empty queue name
    let bind = Enc::new()
        .u16(0)
        .short_str("")
        .short_str("amq.direct")
        .short_str(&key)
        .u8(0)
        .empty_table()
        .build();
    c.send_method(1, 50, 20, &bind).await;
    c.expect_method(1, 50, 21).await;
    let publish = Enc::new()
        .u16(0)
        .short_str("amq.direct")
        .short_str(&key)
        .u8(0)
        .build();
    c.send(&method_frame(1, 60, 40, &publish)).await;
    c.send(&header_frame(1, 2)).await;
    c.send(&frame(FRAME_BODY, 1, b"hi")).await;
    // queue.purge with an empty name reports the message routed to `q`
    c.send_method(1, 50, 30, &Enc::new().u16(0).short_str("").u8(0).build())
        .await;
    let purged = c.expect_method(1, 50, 31).await;
    assert_eq!(Dec::new(&purged).u32(), 1, "the message was routed to {q}");
    broker.shutdown().await;
}

#[tokio::test]
async fn empty_queue_name_without_a_declared_queue_fails_with_404() {
    use common::raw::{Enc, Outcome, RawConn};
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(1).await;
    c.send_method(1, 50, 30, &Enc::new().u16(0).short_str("").u8(0).build())
        .await;
    match c.read_outcome().await {
        Outcome::ChannelClose(1, r) => {
            assert_eq!(r.code, 404);
            assert_eq!(r.text, "NOT_FOUND - no previously declared queue");
        }
        other => panic!("expected channel.close, got {other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn redeclare_with_another_exclusive_flag_fails_with_405() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let locked = |q: &str| {
        format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
        )
    };
    // Short names: the text is near the 255-byte reply-text limit.
    let short = |tag: &str| format!("{tag}-{}", std::process::id());
    // Shared queue redeclared as exclusive by the same connection.
    let ch = channel(&conn).await;
    let q = short("sx");
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), no_args())
        .await
        .unwrap();
    assert_amqp_error(
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::exclusive(),
            no_args(),
        ),
        405,
        &locked(&q),
    )
    .await;
    delete_queue(&conn, &q).await;
    // Exclusive queue redeclared as shared by its owner.
    let ch = channel(&conn).await;
    let q = short("xs");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::exclusive(),
        no_args(),
    )
    .await
    .unwrap();
    assert_amqp_error(
        ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), no_args()),
        405,
        &locked(&q),
    )
    .await;
    broker.shutdown().await;
}

fn one_arg(key: &str, value: lapin::types::AMQPValue) -> lapin::types::FieldTable {
    let mut t = lapin::types::FieldTable::default();
    t.insert(key.into(), value);
    t
}

#[tokio::test]
async fn redeclare_compares_only_the_arguments_rabbitmq_knows() {
    use lapin::types::AMQPValue;
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("args");
    let opts = QueueDeclareOptions::default();
    ch.queue_declare(
        q.as_str().into(),
        opts,
        one_arg("x-foo", AMQPValue::LongInt(1)),
    )
    .await
    .unwrap();
    // RabbitMQ ignores arguments it does not know on a redeclare.
    ch.queue_declare(
        q.as_str().into(),
        opts,
        one_arg("x-foo", AMQPValue::LongInt(2)),
    )
    .await
    .expect("an unknown argument may differ");
    // An absent x-queue-type is the same as "classic".
    ch.queue_declare(
        q.as_str().into(),
        opts,
        one_arg("x-queue-type", AMQPValue::LongString("classic".into())),
    )
    .await
    .expect("x-queue-type classic is the default");
    // A known argument the queue lacks is named with its type.
    assert_amqp_error(
        ch.queue_declare(q.as_str().into(), opts, one_arg("x-message-ttl", AMQPValue::LongInt(100))),
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': received the value '100' of type 'signedint' but current is none"
        ),
    )
    .await;
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}
