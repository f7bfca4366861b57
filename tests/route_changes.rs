//! Routes follow topology changes made by *other* connections at once, even
//! though a connection remembers the routes of its headerless publishes: binds,
//! unbinds, queue deletion and re-creation, exchange re-declaration with another
//! type, exchange-to-exchange bindings, and exclusive queues vanishing with
//! their connection.

mod common;

use common::*;
use lapin::options::*;
use lapin::ExchangeKind;

/// Publishes `body` to `exchange`/`key` from the publisher channel (confirmed).
async fn send(ch: &lapin::Channel, exchange: &str, key: &str, body: &str) {
    publish_confirmed(ch, exchange, key, body.as_bytes()).await;
}

/// Declares exclusive queue `queue` (again) and binds it to `exchange` with key `k`.
async fn redeclare_bound(ch: &lapin::Channel, queue: &str, exchange: &str) {
    ch.queue_declare(queue.into(), QueueDeclareOptions::exclusive(), no_args())
        .await
        .expect("queue.declare");
    bind(ch, queue, exchange, "k").await;
}

/// A broker, a publishing connection and an admin connection, each with a confirm channel.
async fn setup() -> (
    TestBroker,
    lapin::Connection,
    lapin::Channel,
    lapin::Connection,
    lapin::Channel,
) {
    let broker = TestBroker::start().await;
    let publisher = broker.lapin().await;
    let p = confirm_channel(&publisher).await;
    let admin = broker.lapin().await;
    let a = confirm_channel(&admin).await;
    (broker, publisher, p, admin, a)
}

#[tokio::test]
async fn remembered_routes_follow_binds_unbinds_and_queue_recreation() {
    let (broker, _publisher, p, _admin, a) = setup().await;

    let x = temp_exchange(&a, ExchangeKind::Direct).await;
    let q1 = temp_queue(&a).await;
    let q2 = temp_queue(&a).await;
    bind(&a, &q1, &x, "k").await;
    send(&p, &x, "k", "one").await;
    send(&p, &x, "k", "two").await;

    bind(&a, &q2, &x, "k").await;
    send(&p, &x, "k", "three").await;

    a.queue_unbind(q1.as_str().into(), x.as_str().into(), "k".into(), no_args())
        .await
        .expect("queue.unbind");
    send(&p, &x, "k", "four").await;
    assert_eq!(drain(&a, &q1).await, bodies(["one", "two", "three"]));
    assert_eq!(drain(&a, &q2).await, bodies(["three", "four"]));

    // Deleted and declared again under the same name: a new queue.
    a.queue_delete(q2.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    send(&p, &x, "k", "nowhere").await;
    redeclare_bound(&a, &q2, &x).await;
    send(&p, &x, "k", "five").await;
    assert_eq!(drain(&a, &q2).await, bodies(["five"]));

    // The default exchange: a queue declared after a publish missed it.
    let late = unique("late");
    send(&p, "", &late, "dropped").await;
    a.queue_declare(
        late.as_str().into(),
        QueueDeclareOptions::exclusive(),
        no_args(),
    )
    .await
    .expect("queue.declare");
    send(&p, "", &late, "kept").await;
    assert_eq!(drain(&a, &late).await, bodies(["kept"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn remembered_routes_follow_exchange_changes() {
    let (broker, _publisher, p, _admin, a) = setup().await;

    let x = temp_exchange(&a, ExchangeKind::Direct).await;
    let downstream = temp_exchange(&a, ExchangeKind::Fanout).await;
    let q = temp_queue(&a).await;
    let tail = temp_queue(&a).await;
    bind(&a, &q, &x, "other").await;
    bind(&a, &tail, &downstream, "").await;
    send(&p, &x, "k", "unrouted").await;

    // An exchange-to-exchange binding added later.
    a.exchange_bind(
        downstream.as_str().into(),
        x.as_str().into(),
        "k".into(),
        ExchangeBindOptions::default(),
        no_args(),
    )
    .await
    .expect("exchange.bind");
    send(&p, &x, "k", "via e2e").await;
    assert_eq!(drain(&a, &tail).await, bodies(["via e2e"]));

    // The same name declared again as a fanout: the key no longer matters.
    a.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("exchange.delete");
    a.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await
    .expect("exchange.declare");
    bind(&a, &q, &x, "other").await;
    send(&p, &x, "k", "fanned").await;
    assert_eq!(drain(&a, &q).await, bodies(["fanned"]));
    assert!(drain(&a, &tail).await.is_empty());
    broker.shutdown().await;
}

#[tokio::test]
async fn remembered_routes_drop_exclusive_queues_of_closed_connections() {
    let (broker, _publisher, p, admin, a) = setup().await;
    let x = temp_exchange(&a, ExchangeKind::Direct).await;

    let owner = broker.lapin().await;
    let o = confirm_channel(&owner).await;
    let q = temp_queue(&o).await;
    bind(&o, &q, &x, "k").await;
    send(&p, &x, "k", "to the old queue").await;
    owner
        .close(200, "bye".into())
        .await
        .expect("connection.close");

    // The owner's exclusive queue is gone; a new queue of that name gets the next publish.
    let mut gone = false;
    for _ in 0..500 {
        // A failed passive declare closes its channel: a fresh one each try. While the owner's
        // queue still exists the answer is 405 RESOURCE_LOCKED; only 404 means it is gone.
        let probe = channel(&admin).await;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match probe
            .queue_declare(q.as_str().into(), passive, no_args())
            .await
        {
            Err(e) if format!("{e:?}").contains("NOT_FOUND") => {
                gone = true;
                break;
            }
            _ => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(gone, "the exclusive queue outlived its connection");
    let a = confirm_channel(&admin).await;
    redeclare_bound(&a, &q, &x).await;
    send(&p, &x, "k", "to the new queue").await;
    assert_eq!(drain(&a, &q).await, bodies(["to the new queue"]));
    broker.shutdown().await;
}
