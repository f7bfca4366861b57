//! Message TTL (`x-message-ttl`, `expiration`) and length limits
//! (`x-max-length`, `x-max-length-bytes`, `x-overflow`).

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

async fn declare_with(ch: &lapin::Channel, name: &str, args: &[(&str, AMQPValue)]) {
    let mut table = FieldTable::default();
    for (k, v) in args {
        table.insert((*k).into(), v.clone());
    }
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), table)
        .await
        .expect("queue.declare");
}

async fn wait_count(ch: &lapin::Channel, q: &str, n: u32) -> bool {
    eventually(|| {
        let (ch, q) = (ch.clone(), q.to_owned());
        async move { message_count(&ch, &q).await == n }
    })
    .await
}

#[tokio::test]
async fn queue_ttl_expires_messages_into_the_dead_letter_exchange() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let dlq = unique("ttl-dlq");
    declare_with(&ch, &dlq, &[]).await;
    let q = unique("ttl");
    declare_with(
        &ch,
        &q,
        &[
            ("x-message-ttl", AMQPValue::LongInt(50)),
            ("x-dead-letter-exchange", long_str("")),
            ("x-dead-letter-routing-key", long_str(&dlq)),
        ],
    )
    .await;
    publish_confirmed(&ch, "", &q, b"short-lived").await;
    assert!(
        wait_count(&ch, &dlq, 1).await,
        "expired message is dead-lettered"
    );
    assert_eq!(message_count(&ch, &q).await, 0);
    let d = get(&ch, &dlq).await.expect("dead letter");
    let headers = d.properties.headers().clone().expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("x-death missing")
    };
    let AMQPValue::FieldTable(death) = &deaths.as_slice()[0] else {
        panic!("x-death entry")
    };
    assert_eq!(death.inner().get("reason"), Some(&long_str("expired")));
    broker.shutdown().await;
}

#[tokio::test]
async fn per_message_expiration_is_recorded_as_original_expiration() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let dlq = unique("exp-dlq");
    declare_with(&ch, &dlq, &[]).await;
    let q = unique("exp");
    declare_with(
        &ch,
        &q,
        &[
            ("x-dead-letter-exchange", long_str("")),
            ("x-dead-letter-routing-key", long_str(&dlq)),
        ],
    )
    .await;
    publish_confirmed_props(
        &ch,
        "",
        &q,
        b"m",
        BasicProperties::default().with_expiration("30".into()),
    )
    .await;
    assert!(wait_count(&ch, &dlq, 1).await);
    let d = get(&ch, &dlq).await.expect("dead letter");
    assert!(d.properties.expiration().is_none(), "expiration is removed");
    let headers = d.properties.headers().clone().expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("x-death missing")
    };
    let AMQPValue::FieldTable(death) = &deaths.as_slice()[0] else {
        panic!("x-death entry")
    };
    assert_eq!(
        death.inner().get("original-expiration"),
        Some(&long_str("30"))
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn invalid_expiration_is_refused_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let result = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default().with_expiration("abc".into()),
        )
        .await;
    let err = match result {
        Err(e) => e,
        Ok(confirm) => confirm.await.expect_err("the channel is closed"),
    };
    let (code, text) = amqp_error(&err).expect("channel close");
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - invalid expiration 'abc': no_integer"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn max_length_drops_the_head_by_default() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("maxlen");
    declare_with(&ch, &q, &[("x-max-length", AMQPValue::LongInt(2))]).await;
    for body in [b"1", b"2", b"3"] {
        publish_confirmed(&ch, "", &q, body).await;
    }
    assert_eq!(drain(&ch, &q).await, bodies(["2", "3"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn max_length_bytes_counts_body_bytes() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("maxbytes");
    declare_with(&ch, &q, &[("x-max-length-bytes", AMQPValue::LongInt(10))]).await;
    for body in [b"aaaa", b"bbbb", b"cccc"] {
        publish_confirmed(&ch, "", &q, body).await;
    }
    assert_eq!(drain(&ch, &q).await, bodies(["bbbb", "cccc"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn reject_publish_nacks_the_publisher_when_full() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("reject");
    declare_with(
        &ch,
        &q,
        &[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", long_str("reject-publish")),
        ],
    )
    .await;
    publish_confirmed(&ch, "", &q, b"kept").await;
    let confirm = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"refused",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_nack(), "publisher gets basic.nack: {confirm:?}");
    assert_eq!(drain(&ch, &q).await, bodies(["kept"]));
    broker.shutdown().await;
}
