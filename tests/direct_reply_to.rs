//! Direct reply-to: the pseudo-queue `amq.rabbitmq.reply-to`.

mod common;

use common::*;
use lapin::options::*;
use lapin::BasicProperties;

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

#[tokio::test]
async fn rpc_round_trip_through_direct_reply_to() {
    let broker = TestBroker::start().await;
    // Responder
    let server_conn = broker.lapin().await;
    let sch = channel(&server_conn).await;
    let requests = shared_queue(&sch).await;
    let mut server = consume(&sch, &requests).await;
    // Requester: consume the pseudo-queue (no-ack), then publish the request.
    let client_conn = broker.lapin().await;
    let cch = channel(&client_conn).await;
    let mut replies = consume_no_ack(&cch, REPLY_TO).await;
    publish_props(
        &cch,
        "",
        &requests,
        b"ping",
        BasicProperties::default()
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id("c-1".into()),
    )
    .await;
    // The responder sees a generated reply address and answers it.
    let request = next(&mut server).await;
    let reply_to = request
        .properties
        .reply_to()
        .clone()
        .expect("reply_to")
        .to_string();
    assert!(reply_to.starts_with("amq.rabbitmq.reply-to."), "{reply_to}");
    assert_ne!(reply_to, REPLY_TO);
    assert_eq!(request.data, b"ping");
    publish_props(
        &sch,
        "",
        &reply_to,
        b"pong",
        BasicProperties::default().with_correlation_id("c-1".into()),
    )
    .await;
    request.ack(BasicAckOptions::default()).await.unwrap();
    // The requester receives the reply on its reply-to consumer.
    let reply = next(&mut replies).await;
    assert_eq!(reply.data, b"pong");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("c-1")
    );
    assert_eq!(reply.exchange.as_str(), "");
    assert_eq!(reply.routing_key.as_str(), reply_to);
    delete_queue(&server_conn, &requests).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn amqprs_rpc_round_trip_through_direct_reply_to() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (requester, _) = amqprs_channel(&conn).await;
    let (responder, _) = amqprs_channel(&conn).await;
    let requests = amqprs_temp_queue(&responder).await;
    let (_, mut incoming) = amqprs_consume(&responder, &requests, true).await;
    let (_, mut replies) = amqprs_consume(&requester, REPLY_TO, true).await;
    let props = amqprs::BasicProperties::default()
        .with_reply_to(REPLY_TO)
        .finish();
    requester
        .basic_publish(
            props,
            b"2+2".to_vec(),
            amqprs::channel::BasicPublishArguments::new("", &requests),
        )
        .await
        .unwrap();
    let req = amqprs_next(&mut incoming).await;
    let reply_to = req
        .basic_properties
        .as_ref()
        .unwrap()
        .reply_to()
        .unwrap()
        .clone();
    assert!(reply_to.starts_with("amq.rabbitmq.reply-to."), "{reply_to}");
    responder
        .basic_publish(
            amqprs::BasicProperties::default(),
            b"4".to_vec(),
            amqprs::channel::BasicPublishArguments::new("", &reply_to),
        )
        .await
        .unwrap();
    assert_eq!(amqprs_body(&amqprs_next(&mut replies).await), b"4");
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn each_request_gets_the_same_reply_address_on_one_channel() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let sch = channel(&conn).await;
    let requests = temp_queue(&sch).await;
    let mut server = consume_no_ack(&sch, &requests).await;
    let cch = channel(&conn).await;
    let _replies = consume_no_ack(&cch, REPLY_TO).await;
    for body in [&b"a"[..], b"b"] {
        publish_props(
            &cch,
            "",
            &requests,
            body,
            BasicProperties::default().with_reply_to(REPLY_TO.into()),
        )
        .await;
    }
    let a = next(&mut server)
        .await
        .properties
        .reply_to()
        .clone()
        .unwrap();
    let b = next(&mut server)
        .await
        .properties
        .reply_to()
        .clone()
        .unwrap();
    assert_eq!(a, b);
    broker.shutdown().await;
}

#[tokio::test]
async fn publishing_with_reply_to_without_consuming_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    let props = amqprs::BasicProperties::default()
        .with_reply_to(REPLY_TO)
        .finish();
    ch.basic_publish(
        props,
        b"x".to_vec(),
        amqprs::channel::BasicPublishArguments::new("", &q),
    )
    .await
    .unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!(
        (code, text.as_str()),
        (
            406,
            "PRECONDITION_FAILED - fast reply consumer does not exist"
        )
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn consuming_reply_to_with_acks_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions::default(),
            no_args(),
        ),
        406,
        "PRECONDITION_FAILED - reply consumer cannot acknowledge",
    )
    .await;
    broker.shutdown().await;
}

/// A mandatory reply to the address of a requester that has gone away is
/// returned with 312 NO_ROUTE (and acked).
#[tokio::test]
async fn mandatory_reply_to_a_requester_that_went_away_is_returned() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let sch = confirm_channel(&conn).await;
    let requests = temp_queue(&sch).await;
    let mut server = consume_no_ack(&sch, &requests).await;
    // The requester sends a request, then closes its channel.
    let cch = channel(&conn).await;
    let replies = consume_no_ack(&cch, REPLY_TO).await;
    publish_props(
        &cch,
        "",
        &requests,
        b"req",
        BasicProperties::default().with_reply_to(REPLY_TO.into()),
    )
    .await;
    let reply_to = next(&mut server)
        .await
        .properties
        .reply_to()
        .clone()
        .unwrap();
    drop(replies);
    cch.close(200, "gone".into()).await.unwrap();
    let confirm = sch
        .basic_publish(
            "".into(),
            reply_to.clone(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"late",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let confirmation = within("confirm", confirm).await.unwrap();
    assert!(confirmation.is_ack());
    let returned = confirmation.take_message().expect("returned");
    assert_eq!(
        (returned.reply_code, returned.reply_text.as_str()),
        (312, "NO_ROUTE")
    );
    assert_eq!(returned.delivery.routing_key, reply_to);
    // The responder's channel is still usable.
    temp_queue(&sch).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn passive_declare_of_the_reply_to_pseudo_queue_succeeds() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = ch
        .queue_declare(
            REPLY_TO.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .expect("amq.rabbitmq.reply-to can be declared passively");
    // RabbitMQ reports no messages and one consumer for the pseudo-queue.
    assert_eq!((q.message_count(), q.consumer_count()), (0, 1));
    broker.shutdown().await;
}
