//! Publisher confirms and transactions.

mod common;

use common::*;
use lapin::options::*;
use lapin::BasicProperties;

/// Collects amqprs confirm events until every tag in 1..=n is covered; returns
/// the acked tags (expanding `multiple`) and whether any nack was seen.
async fn collect_acks(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<ChanEvent>,
    n: u64,
) -> Vec<u64> {
    let mut acked: Vec<u64> = Vec::new();
    while (acked.len() as u64) < n {
        match next_chan_event(events).await {
            ChanEvent::Ack {
                delivery_tag,
                multiple,
            } => {
                assert!(
                    delivery_tag >= 1 && delivery_tag <= n,
                    "ack for unknown tag {delivery_tag}"
                );
                if multiple {
                    for t in 1..=delivery_tag {
                        if !acked.contains(&t) {
                            acked.push(t);
                        }
                    }
                } else {
                    assert!(
                        !acked.contains(&delivery_tag),
                        "tag {delivery_tag} acked twice"
                    );
                    acked.push(delivery_tag);
                }
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    acked.sort();
    acked
}

#[tokio::test]
async fn confirms_ack_every_publish_with_tags_counting_from_one() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    ch.confirm_select(amqprs::channel::ConfirmSelectArguments::default())
        .await
        .unwrap();
    for i in 0..50 {
        ch.basic_publish(
            amqprs::BasicProperties::default(),
            format!("{i}").into_bytes(),
            amqprs::channel::BasicPublishArguments::new("", &q),
        )
        .await
        .unwrap();
    }
    let acked = collect_acks(&mut events, 50).await;
    assert_eq!(acked, (1..=50).collect::<Vec<u64>>());
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn single_publish_is_acked_with_tag_one_not_multiple() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    ch.confirm_select(amqprs::channel::ConfirmSelectArguments::default())
        .await
        .unwrap();
    ch.basic_publish(
        amqprs::BasicProperties::default(),
        b"x".to_vec(),
        amqprs::channel::BasicPublishArguments::new("", &unique("nobody")),
    )
    .await
    .unwrap();
    assert_eq!(
        next_chan_event(&mut events).await,
        ChanEvent::Ack {
            delivery_tag: 1,
            multiple: false
        }
    );
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn lapin_wait_for_confirms_sees_all_acks() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let mut confirms = Vec::new();
    for i in 0..20 {
        confirms.push(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    let returned = within("wait_for_confirms", ch.wait_for_confirms())
        .await
        .unwrap();
    assert!(returned.is_empty());
    for c in confirms {
        assert!(within("confirm", c).await.unwrap().is_ack());
    }
    assert_eq!(message_count(&ch, &q).await, 20);
    broker.shutdown().await;
}

#[tokio::test]
async fn mandatory_unroutable_is_returned_before_it_is_acked() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    ch.confirm_select(amqprs::channel::ConfirmSelectArguments::default())
        .await
        .unwrap();
    let key = unique("nowhere");
    let mut args = amqprs::channel::BasicPublishArguments::new("amq.direct", &key);
    args.mandatory = true;
    ch.basic_publish(amqprs::BasicProperties::default(), b"r".to_vec(), args)
        .await
        .unwrap();
    assert!(matches!(
        next_chan_event(&mut events).await,
        ChanEvent::Return { code: 312, .. }
    ));
    assert_eq!(
        next_chan_event(&mut events).await,
        ChanEvent::Ack {
            delivery_tag: 1,
            multiple: false
        }
    );
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn confirm_select_is_idempotent() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("second confirm.select");
    broker.shutdown().await;
}

#[tokio::test]
async fn confirm_select_on_a_transactional_channel_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    ch.tx_select().await.unwrap();
    assert_amqp_error(
        ch.confirm_select(ConfirmSelectOptions::default()),
        406,
        "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn tx_select_on_a_confirm_channel_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    assert_amqp_error(
        ch.tx_select(),
        406,
        "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn tx_publishes_are_invisible_until_commit() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let observer = channel(&conn).await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    ch.tx_select().await.unwrap();
    publish(&ch, "", &q, b"a").await;
    publish(&ch, "", &q, b"b").await;
    // queue.declare on the same channel is ordered after the publishes.
    assert_eq!(message_count(&ch, &q).await, 0, "not visible before commit");
    ch.tx_commit().await.expect("tx.commit");
    assert_eq!(drain(&observer, &q).await, bodies(["a", "b"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn tx_rollback_discards_publishes() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    ch.tx_select().await.unwrap();
    publish(&ch, "", &q, b"discarded").await;
    ch.tx_rollback().await.expect("tx.rollback");
    publish(&ch, "", &q, b"kept").await;
    ch.tx_commit().await.unwrap();
    assert_eq!(drain(&ch, &q).await, bodies(["kept"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn tx_rollback_discards_acks() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let pch = confirm_channel(&conn).await;
    let q = temp_queue(&pch).await;
    publish_confirmed(&pch, "", &q, b"m").await;
    let ch = channel(&conn).await;
    ch.tx_select().await.unwrap();
    let m = get(&ch, &q).await.unwrap();
    ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    ch.tx_rollback().await.unwrap();
    // The ack was discarded: the message is still unacked, so closing the
    // channel requeues it.
    ch.close(200, "bye".into()).await.unwrap();
    let again = get(&pch, &q).await.expect("requeued after rollback");
    assert!(again.delivery.redelivered);
    broker.shutdown().await;
}

#[tokio::test]
async fn tx_commit_applies_acks() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let pch = confirm_channel(&conn).await;
    let q = temp_queue(&pch).await;
    publish_confirmed(&pch, "", &q, b"m").await;
    let ch = channel(&conn).await;
    ch.tx_select().await.unwrap();
    let m = get(&ch, &q).await.unwrap();
    ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    ch.tx_commit().await.unwrap();
    ch.close(200, "bye".into()).await.unwrap();
    assert_eq!(message_count(&pch, &q).await, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn tx_rollback_discards_rejects_with_requeue() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let pch = confirm_channel(&conn).await;
    let q = temp_queue(&pch).await;
    publish_confirmed(&pch, "", &q, b"m").await;
    let ch = channel(&conn).await;
    ch.tx_select().await.unwrap();
    let m = get(&ch, &q).await.unwrap();
    ch.basic_reject(
        m.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    )
    .await
    .unwrap();
    ch.tx_rollback().await.unwrap();
    assert_eq!(
        message_count(&pch, &q).await,
        0,
        "reject was rolled back; still unacked"
    );
    ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    ch.tx_commit().await.unwrap();
    ch.close(200, "bye".into()).await.unwrap();
    assert_eq!(message_count(&pch, &q).await, 0);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_channel_can_commit_many_transactions() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    ch.tx_select().await.unwrap();
    for i in 0..3 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
        ch.tx_commit().await.unwrap();
    }
    assert_eq!(drain(&ch, &q).await, bodies(["0", "1", "2"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn tx_commit_without_tx_select_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.tx_commit(),
        406,
        "PRECONDITION_FAILED - channel is not transactional",
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn tx_rollback_without_tx_select_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.tx_rollback(),
        406,
        "PRECONDITION_FAILED - channel is not transactional",
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn amqprs_tx_commit_and_rollback() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, _events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    ch.tx_select().await.unwrap();
    let publish = |body: &'static [u8]| {
        ch.basic_publish(
            amqprs::BasicProperties::default(),
            body.to_vec(),
            amqprs::channel::BasicPublishArguments::new("", &q),
        )
    };
    publish(b"rolled back").await.unwrap();
    ch.tx_rollback().await.unwrap();
    publish(b"committed").await.unwrap();
    ch.tx_commit().await.unwrap();
    let (_, props, body) = ch
        .basic_get(
            amqprs::channel::BasicGetArguments::new(&q)
                .no_ack(true)
                .finish(),
        )
        .await
        .unwrap()
        .expect("the committed message");
    let _ = props;
    assert_eq!(body, b"committed");
    assert!(ch
        .basic_get(
            amqprs::channel::BasicGetArguments::new(&q)
                .no_ack(true)
                .finish()
        )
        .await
        .unwrap()
        .is_none());
    conn.close().await.unwrap();
    broker.shutdown().await;
}
