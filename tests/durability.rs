//! Durability across a broker restart: durable queues, exchanges and bindings and
//! persistent messages survive; transient ones do not. Clients are disconnected
//! with 320 CONNECTION_FORCED on shutdown.
//!
//! Against an external broker these need WARRENMQ_TEST_ALT_URL and
//! WARRENMQ_TEST_ALT_RESTART (see tests/rabbitmq/start-alt-node.sh); the tests of
//! this file then take turns, since each restarts the shared broker.

mod common;

use common::*;
use lapin::options::*;
use lapin::{BasicProperties, ExchangeKind};

static ONE_RESTART_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn transient() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(1)
}

async fn declare_durable_queue(ch: &lapin::Channel) -> String {
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
    q
}

#[tokio::test]
async fn durable_queue_keeps_persistent_messages_across_a_restart() {
    let _turn = ONE_RESTART_AT_A_TIME.lock().await;
    let Some(mut broker) = TestBroker::start_alt_restartable().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = declare_durable_queue(&ch).await;
    publish_confirmed_props(&ch, "", &q, b"persistent-1", persistent()).await;
    publish_confirmed_props(&ch, "", &q, b"transient", transient()).await;
    publish_confirmed_props(&ch, "", &q, b"persistent-2", persistent()).await;
    conn.close(200, "restart".into()).await.unwrap();
    broker.restart().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let m = get(&ch, &q).await.expect("a persistent message survived");
    assert_eq!(m.delivery.data, b"persistent-1");
    assert_eq!(m.delivery.properties.delivery_mode(), &Some(2));
    assert_eq!(m.message_count, 1, "the transient message is gone");
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(drain(&ch, &q).await, bodies(["persistent-2"]));
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn non_durable_queue_is_gone_after_a_restart() {
    let _turn = ONE_RESTART_AT_A_TIME.lock().await;
    let Some(mut broker) = TestBroker::start_alt_restartable().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = shared_queue(&ch).await;
    publish_confirmed_props(&ch, "", &q, b"lost", persistent()).await;
    conn.close(200, "restart".into()).await.unwrap();
    broker.restart().await;
    let conn = broker.lapin().await;
    assert!(!queue_exists(&conn, &q).await);
    broker.shutdown().await;
}

#[tokio::test]
async fn durable_exchange_and_its_bindings_survive_a_restart() {
    let _turn = ONE_RESTART_AT_A_TIME.lock().await;
    let Some(mut broker) = TestBroker::start_alt_restartable().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = unique("dx");
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    let transient_x = temp_exchange(&ch, ExchangeKind::Fanout).await;
    let q = declare_durable_queue(&ch).await;
    bind(&ch, &q, &x, "orders.#").await;
    conn.close(200, "restart".into()).await.unwrap();
    broker.restart().await;
    let conn = broker.lapin().await;
    assert!(exchange_exists(&conn, &x).await);
    assert!(
        !exchange_exists(&conn, &transient_x).await,
        "a non-durable exchange is gone"
    );
    let ch = confirm_channel(&conn).await;
    publish_confirmed_props(&ch, &x, "orders.new", b"routed", persistent()).await;
    assert_eq!(drain(&ch, &q).await, bodies(["routed"]));
    delete_queue(&conn, &q).await;
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn unacked_persistent_message_is_redelivered_after_a_restart() {
    let _turn = ONE_RESTART_AT_A_TIME.lock().await;
    let Some(mut broker) = TestBroker::start_alt_restartable().await else {
        return;
    };
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = declare_durable_queue(&ch).await;
    publish_confirmed_props(&ch, "", &q, b"in flight", persistent()).await;
    let held = get(&ch, &q).await.expect("a message");
    assert!(!held.delivery.redelivered);
    broker.restart().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let m = get(&ch, &q).await.expect("the unacked message is back");
    assert_eq!(m.delivery.data, b"in flight");
    assert!(
        m.delivery.redelivered,
        "it was delivered before the restart"
    );
    delete_queue(&conn, &q).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_clients_with_320_connection_forced() {
    let _turn = ONE_RESTART_AT_A_TIME.lock().await;
    let Some(mut broker) = TestBroker::start_alt_restartable().await else {
        return;
    };
    let (conn, mut events) = broker.amqprs_with_events().await;
    let (_ch, _) = amqprs_channel(&conn).await;
    let restart = broker.restart();
    let observe = async {
        let (code, text) = expect_amqprs_connection_close(&mut events).await;
        assert_eq!(code, 320);
        assert_eq!(
            text,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
        );
    };
    tokio::join!(restart, observe);
    broker.shutdown().await;
}
