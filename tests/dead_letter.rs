//! Dead-lettering (reason `rejected`) with RabbitMQ's x-death headers.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};

fn dlx_args(exchange: &str, routing_key: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(exchange.as_bytes().to_vec())),
    );
    if let Some(rk) = routing_key {
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(rk.as_bytes().to_vec())),
        );
    }
    args
}

async fn declare(ch: &lapin::Channel, name: &str, args: FieldTable) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            auto_delete: false,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("queue.declare");
}

#[tokio::test]
async fn rejected_message_goes_to_the_dead_letter_queue_with_x_death() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let dlx = temp_exchange(&ch, lapin::ExchangeKind::Fanout).await;
    let dlq = unique("dlq");
    declare(&ch, &dlq, FieldTable::default()).await;
    bind(&ch, &dlq, &dlx, "").await;
    let q = unique("work");
    declare(&ch, &q, dlx_args(&dlx, None)).await;

    publish_confirmed(&ch, "", &q, b"poison").await;
    let m = get(&ch, &q).await.expect("message in the work queue");
    ch.basic_reject(m.delivery_tag, BasicRejectOptions { requeue: false })
        .await
        .unwrap();

    let mut dead = None;
    assert!(
        eventually(|| {
            let ch = ch.clone();
            let dlq = dlq.clone();
            async move { message_count(&ch, &dlq).await == 1 }
        })
        .await,
        "the rejected message reaches the dead-letter queue"
    );
    if let Some(d) = get(&ch, &dlq).await {
        dead = Some(d);
    }
    let d = dead.expect("dead-lettered message");
    assert_eq!(d.data, b"poison");
    assert_eq!(d.exchange.as_str(), dlx);
    assert_eq!(d.routing_key.as_str(), q);
    let headers = d.properties.headers().clone().expect("x-death headers");
    let deaths = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        other => panic!("x-death: {other:?}"),
    };
    assert_eq!(deaths.len(), 1);
    let AMQPValue::FieldTable(death) = &deaths[0] else {
        panic!("x-death entry is a table")
    };
    let field = |k: &str| death.inner().get(k).cloned();
    assert_eq!(
        field("reason"),
        Some(AMQPValue::LongString(LongString::from(
            b"rejected".to_vec()
        )))
    );
    assert_eq!(
        field("queue"),
        Some(AMQPValue::LongString(LongString::from(
            q.as_bytes().to_vec()
        )))
    );
    assert_eq!(field("count"), Some(AMQPValue::LongLongInt(1)));
    assert_eq!(
        headers.inner().get("x-first-death-reason"),
        Some(&AMQPValue::LongString(LongString::from(
            b"rejected".to_vec()
        )))
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn dead_letter_routing_key_overrides_the_original_key() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let dlx = temp_exchange(&ch, lapin::ExchangeKind::Direct).await;
    let dlq = unique("dlq");
    declare(&ch, &dlq, FieldTable::default()).await;
    bind(&ch, &dlq, &dlx, "dead").await;
    let q = unique("work");
    declare(&ch, &q, dlx_args(&dlx, Some("dead"))).await;
    publish_confirmed(&ch, "", &q, b"m").await;
    let m = get(&ch, &q).await.expect("message");
    ch.basic_nack(
        m.delivery_tag,
        BasicNackOptions {
            requeue: false,
            multiple: false,
        },
    )
    .await
    .unwrap();
    assert!(
        eventually(|| {
            let ch = ch.clone();
            let dlq = dlq.clone();
            async move { message_count(&ch, &dlq).await == 1 }
        })
        .await
    );
    let d = get(&ch, &dlq).await.expect("dead letter");
    assert_eq!(d.routing_key.as_str(), "dead");
    broker.shutdown().await;
}

#[tokio::test]
async fn invalid_queue_argument_is_refused_with_rabbitmq_text() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = unique("bad");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(-1));
    let err = ch
        .queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .expect_err("negative x-max-length is refused");
    let (code, text) = amqp_error(&err).expect("a channel close");
    assert_eq!(code, 406);
    assert_eq!(
        text,
        format!(
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue '{q}' in vhost '/': {{value_negative,-1}}"
        )
    );
    broker.shutdown().await;
}
