//! Resource alarms: a memory or disk alarm blocks connections that publish
//! (`connection.blocked` for clients that announce the capability), consumers keep
//! draining, and clearing the alarm sends `connection.unblocked` and resumes.
//!
//! The watermarks are changed at run time through the broker's alarm handle (WarrenMQ's
//! equivalent of `rabbitmqctl set_vm_memory_high_watermark`), so these tests need the
//! in-process broker and skip with `WARRENMQ_TEST_URL`. The reason texts and the
//! "blocked only once it publishes" rule were checked against RabbitMQ 3.10 with
//! `rabbitmqctl set_vm_memory_high_watermark 0.0000001` / `set_disk_free_limit 1000GB`.

mod common;

use common::*;
use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use std::sync::Arc;
use warrenmq::alarm::{ResourceAlarms, Watermark};

/// The in-process broker plus its alarm handle, or `None` (test skipped) for an external one.
async fn start() -> Option<(TestBroker, Arc<ResourceAlarms>)> {
    let broker = TestBroker::start().await;
    let Some(alarms) = broker.alarms() else {
        eprintln!("skipped: needs the in-process broker (changes the watermarks at run time)");
        return None;
    };
    Some((broker, alarms))
}

/// Waits for the next `connection.blocked`/`unblocked` event from lapin.
async fn next_blocking_event(
    events: &mut (impl futures_util::Stream<Item = lapin::Event> + Unpin),
) -> lapin::Event {
    loop {
        let e = within("a connection event", events.next())
            .await
            .expect("event stream ended");
        if matches!(
            e,
            lapin::Event::ConnectionBlocked(_) | lapin::Event::ConnectionUnblocked
        ) {
            return e;
        }
    }
}

async fn wait_alarm(alarms: &ResourceAlarms, on: bool) {
    assert!(
        wait_for(|| alarms.state().any() == on, TIMEOUT).await,
        "alarm state did not become {on}"
    );
}

#[tokio::test]
async fn memory_alarm_blocks_publisher_while_consumers_drain() {
    let Some((broker, alarms)) = start().await else {
        return;
    };
    let publisher = broker.lapin().await;
    let mut events = Box::pin(publisher.events_listener());
    let pub_ch = channel(&publisher).await;
    let consumer_conn = broker.lapin().await;
    let cons_ch = channel(&consumer_conn).await;
    let backlog = shared_queue(&cons_ch).await;
    let live = shared_queue(&cons_ch).await;
    let confirms = confirm_channel(&publisher).await;
    for i in 0..3 {
        publish_confirmed(&confirms, "", &backlog, format!("b{i}").as_bytes()).await;
    }

    alarms.set_memory_high_watermark(Watermark::Absolute(1));
    wait_alarm(&alarms, true).await;
    // An alarm alone blocks nobody: this connection has not published since.
    assert_eq!(message_count(&pub_ch, &backlog).await, 3);

    publish(&pub_ch, "", &live, b"during").await;
    match next_blocking_event(&mut events).await {
        lapin::Event::ConnectionBlocked(reason) => assert_eq!(reason, "low on memory"),
        other => panic!("expected connection.blocked, got {other:?}"),
    }

    // The consuming connection is not blocked: it drains the backlog and acks.
    let mut consumer = consume(&cons_ch, &backlog).await;
    for i in 0..3 {
        let d = next(&mut consumer).await;
        assert_eq!(body_str(&d), format!("b{i}"));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert!(
        eventually(|| async { message_count(&cons_ch, &backlog).await == 0 }).await,
        "acks were not processed during the alarm"
    );
    // The publish made during the alarm has not been taken in.
    assert_eq!(message_count(&cons_ch, &live).await, 0);

    alarms.set_memory_high_watermark(Watermark::Absolute(u64::MAX));
    assert!(matches!(
        next_blocking_event(&mut events).await,
        lapin::Event::ConnectionUnblocked
    ));
    let mut live_consumer = consume(&cons_ch, &live).await;
    assert_eq!(body_str(&next(&mut live_consumer).await), "during");
    // The publisher works normally again.
    publish_confirmed(&confirms, "", &live, b"after").await;
    assert_eq!(body_str(&next(&mut live_consumer).await), "after");
}

#[tokio::test]
async fn disk_alarm_blocks_with_rabbitmq_reason() {
    let Some((broker, alarms)) = start().await else {
        return;
    };
    let publisher = broker.lapin().await;
    let mut events = Box::pin(publisher.events_listener());
    let ch = channel(&publisher).await;
    let q = temp_queue(&ch).await;
    alarms.set_disk_free_limit(u64::MAX);
    wait_alarm(&alarms, true).await;
    publish(&ch, "", &q, b"x").await;
    match next_blocking_event(&mut events).await {
        lapin::Event::ConnectionBlocked(reason) => assert_eq!(reason, "low on disk"),
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    alarms.set_disk_free_limit(0);
    assert!(matches!(
        next_blocking_event(&mut events).await,
        lapin::Event::ConnectionUnblocked
    ));
    assert!(eventually(|| async { message_count(&ch, &q).await == 1 }).await);
}

/// amqprs does not announce `connection.blocked`: it is blocked all the same, without
/// the notification. The watermark comes from the configuration here.
#[tokio::test]
async fn configured_watermark_blocks_client_without_capability_silently() {
    let broker =
        TestBroker::start_with(|c| c.resources.vm_memory_high_watermark_absolute = 1).await;
    let Some(alarms) = broker.alarms() else {
        eprintln!("skipped: needs the in-process broker");
        return;
    };
    wait_alarm(&alarms, true).await;
    let (conn, mut conn_events) = broker.amqprs_with_events().await;
    let (ch, _) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    let args = amqprs::channel::BasicPublishArguments::new("", &q);
    ch.basic_publish(amqprs::BasicProperties::default(), b"held".to_vec(), args)
        .await
        .expect("publish");
    // Give the broker the chance to take the message in if it were not blocked: a
    // passive declare on the blocked connection itself must not be answered.
    let declare = ch.queue_declare(
        amqprs::channel::QueueDeclareArguments::new(&q)
            .passive(true)
            .finish(),
    );
    tokio::pin!(declare);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut declare)
            .await
            .is_err(),
        "a blocked connection was still read"
    );
    alarms.set_memory_high_watermark(Watermark::Absolute(u64::MAX));
    let (_, count, _) = within("declare-ok after unblocking", declare)
        .await
        .expect("queue.declare")
        .expect("declare-ok");
    assert_eq!(count, 1);
    assert!(
        conn_events.try_recv().is_err(),
        "no connection.blocked/unblocked for a client without the capability"
    );
}
