//! Exchanges: built-ins, declare/passive/delete, equivalence, reserved names,
//! exchange-to-exchange bindings, auto-delete, and direct/fanout routing.

mod common;

use common::*;
use lapin::options::*;
use lapin::ExchangeKind;

#[tokio::test]
async fn default_exchange_routes_by_queue_name() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    publish_confirmed(&ch, "", &q, b"hello").await;
    assert_eq!(get_body(&ch, &q).await.as_deref(), Some(&b"hello"[..]));
    broker.shutdown().await;
}

#[tokio::test]
async fn default_exchange_drops_messages_for_unknown_queues() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    // Unroutable but not mandatory: confirmed (acked) and dropped.
    publish_confirmed(&ch, "", &unique("nobody-home"), b"lost").await;
    broker.shutdown().await;
}

#[tokio::test]
async fn builtin_exchanges_exist_with_their_types() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        // A passive declare ignores the type, so also check an equivalent
        // redeclare-by-passive works; type is checked via routing below.
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .unwrap_or_else(|e| panic!("{name} should exist: {e:?}"));
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn amq_direct_routes_by_exact_key() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = temp_queue(&ch).await;
    let key = unique("key");
    bind(&ch, &q, "amq.direct", &key).await;
    publish_confirmed(&ch, "amq.direct", &key, b"hit").await;
    publish_confirmed(&ch, "amq.direct", &format!("{key}.other"), b"miss").await;
    assert_eq!(drain(&ch, &q).await, bodies(["hit"]));
    broker.shutdown().await;
}

#[tokio::test]
async fn fanout_ignores_the_routing_key_and_copies_to_every_queue() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Fanout).await;
    let q1 = temp_queue(&ch).await;
    let q2 = temp_queue(&ch).await;
    bind(&ch, &q1, &x, "").await;
    bind(&ch, &q2, &x, "whatever").await;
    publish_confirmed(&ch, &x, "any.key", b"copy").await;
    assert_eq!(drain(&ch, &q1).await, bodies(["copy"]));
    assert_eq!(drain(&ch, &q2).await, bodies(["copy"]));
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_queue_bound_twice_receives_one_copy() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Direct).await;
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "a").await;
    bind(&ch, &q, &x, "a").await; // idempotent
    publish_confirmed(&ch, &x, "a", b"once").await;
    assert_eq!(message_count(&ch, &q).await, 1);
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn declare_then_passive_declare_succeeds() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Topic).await;
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .expect("passive declare of an existing exchange");
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn passive_declare_of_a_missing_exchange_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = unique("missing");
    assert_amqp_error(
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        ),
        404,
        &format!("NOT_FOUND - no exchange '{x}' in vhost '/'"),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn redeclare_with_another_type_fails_with_406_inequivalent_type() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Direct).await;
    assert_amqp_error(
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            no_args(),
        ),
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' in vhost '/': received 'fanout' but current is 'direct'"
        ),
    )
    .await;
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn redeclare_with_another_durable_flag_fails_with_406_inequivalent_durable() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Direct).await;
    assert_amqp_error(
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            no_args(),
        ),
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '{x}' in vhost '/': received 'true' but current is 'false'"
        ),
    )
    .await;
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn equivalent_redeclare_succeeds() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Headers).await;
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Headers,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await
    .expect("equivalent redeclare");
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn declaring_an_amq_prefixed_exchange_fails_with_403() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = format!("amq.{}", unique("mine"));
    assert_amqp_error(
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            no_args(),
        ),
        403,
        &format!("ACCESS_REFUSED - exchange name '{x}' contains reserved prefix 'amq.*'"),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn equivalent_redeclare_of_a_builtin_amq_exchange_succeeds() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    ch.exchange_declare(
        "amq.direct".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .expect("amq.direct is a durable direct exchange");
    broker.shutdown().await;
}

/// For an existing amq.* exchange RabbitMQ checks equivalence (the reserved
/// prefix is only refused when it would create a new exchange).
#[tokio::test]
async fn inequivalent_redeclare_of_a_builtin_amq_exchange_fails_with_406() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.exchange_declare(
            "amq.direct".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            no_args(),
        ),
        406,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'amq.direct' in vhost '/': received 'false' but current is 'true'",
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn unknown_exchange_type_closes_the_connection_with_503() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = unique("x");
    assert_amqp_error(
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Custom("x-no-such-type".into()),
            ExchangeDeclareOptions::default(),
            no_args(),
        ),
        503,
        "COMMAND_INVALID - unknown exchange type 'x-no-such-type'",
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn delete_removes_the_exchange() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Fanout).await;
    ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    assert!(!exchange_exists(&conn, &x).await);
    broker.shutdown().await;
}

#[tokio::test]
async fn deleting_a_missing_exchange_succeeds() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    ch.exchange_delete(
        unique("missing").as_str().into(),
        ExchangeDeleteOptions::default(),
    )
    .await
    .expect("exchange.delete is idempotent");
    broker.shutdown().await;
}

#[tokio::test]
async fn delete_if_unused_fails_with_406_while_bound() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Direct).await;
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "k").await;
    assert_amqp_error(
        ch.exchange_delete(
            x.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
        406,
        &format!("PRECONDITION_FAILED - exchange '{x}' in vhost '/' in use"),
    )
    .await;
    assert!(exchange_exists(&conn, &x).await);
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn delete_if_unused_succeeds_without_bindings() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Direct).await;
    ch.exchange_delete(
        x.as_str().into(),
        ExchangeDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    )
    .await
    .expect("unused exchange is deleted");
    assert!(!exchange_exists(&conn, &x).await);
    broker.shutdown().await;
}

#[tokio::test]
async fn deleting_an_exchange_removes_its_bindings() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Direct).await;
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "k").await;
    ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    // Recreate: the old binding must not come back.
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await
    .unwrap();
    publish_confirmed(&ch, &x, "k", b"x").await;
    assert_eq!(message_count(&ch, &q).await, 0);
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn binding_to_the_default_exchange_fails_with_403() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    assert_amqp_error(
        ch.queue_bind(
            q.as_str().into(),
            "".into(),
            "k".into(),
            QueueBindOptions::default(),
            no_args(),
        ),
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn unbinding_from_the_default_exchange_fails_with_403() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    assert_amqp_error(
        ch.queue_unbind(q.as_str().into(), "".into(), q.as_str().into(), no_args()),
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn deleting_the_default_exchange_fails_with_403() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.exchange_delete("".into(), ExchangeDeleteOptions::default()),
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn deleting_a_builtin_amq_exchange_fails_with_403() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.exchange_delete("amq.fanout".into(), ExchangeDeleteOptions::default()),
        403,
        "ACCESS_REFUSED - deletion of system exchange 'amq.fanout' in vhost '/' not allowed",
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn binding_to_a_missing_exchange_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let q = temp_queue(&ch).await;
    let x = unique("missing");
    assert_amqp_error(
        ch.queue_bind(
            q.as_str().into(),
            x.as_str().into(),
            "k".into(),
            QueueBindOptions::default(),
            no_args(),
        ),
        404,
        &format!("NOT_FOUND - no exchange '{x}' in vhost '/'"),
    )
    .await;
    broker.shutdown().await;
}

#[tokio::test]
async fn exchange_to_exchange_binding_routes_end_to_end() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let src = temp_exchange(&ch, ExchangeKind::Topic).await;
    let dst = temp_exchange(&ch, ExchangeKind::Direct).await;
    let q = temp_queue(&ch).await;
    ch.exchange_bind(
        dst.as_str().into(),
        src.as_str().into(),
        "orders.*".into(),
        ExchangeBindOptions::default(),
        no_args(),
    )
    .await
    .expect("exchange.bind");
    bind(&ch, &q, &dst, "orders.new").await;
    publish_confirmed(&ch, &src, "orders.new", b"routed").await;
    publish_confirmed(&ch, &src, "orders.old", b"filtered by dst").await;
    publish_confirmed(&ch, &src, "invoices.new", b"filtered by src").await;
    assert_eq!(drain(&ch, &q).await, bodies(["routed"]));
    delete_exchange(&conn, &src).await;
    delete_exchange(&conn, &dst).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn exchange_unbind_stops_routing() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let src = temp_exchange(&ch, ExchangeKind::Fanout).await;
    let dst = temp_exchange(&ch, ExchangeKind::Fanout).await;
    let q = temp_queue(&ch).await;
    ch.exchange_bind(
        dst.as_str().into(),
        src.as_str().into(),
        "".into(),
        ExchangeBindOptions::default(),
        no_args(),
    )
    .await
    .unwrap();
    bind(&ch, &q, &dst, "").await;
    publish_confirmed(&ch, &src, "", b"before").await;
    ch.exchange_unbind(
        dst.as_str().into(),
        src.as_str().into(),
        "".into(),
        ExchangeUnbindOptions::default(),
        no_args(),
    )
    .await
    .expect("exchange.unbind");
    publish_confirmed(&ch, &src, "", b"after").await;
    assert_eq!(drain(&ch, &q).await, bodies(["before"]));
    delete_exchange(&conn, &src).await;
    delete_exchange(&conn, &dst).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn exchange_binding_loops_deliver_each_message_once_per_queue() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let a = temp_exchange(&ch, ExchangeKind::Fanout).await;
    let b = temp_exchange(&ch, ExchangeKind::Fanout).await;
    let q = temp_queue(&ch).await;
    for (dst, src) in [(&b, &a), (&a, &b)] {
        ch.exchange_bind(
            dst.as_str().into(),
            src.as_str().into(),
            "".into(),
            ExchangeBindOptions::default(),
            no_args(),
        )
        .await
        .unwrap();
    }
    bind(&ch, &q, &a, "").await;
    bind(&ch, &q, &b, "").await;
    publish_confirmed(&ch, &a, "", b"loop").await;
    assert_eq!(drain(&ch, &q).await, bodies(["loop"]));
    delete_exchange(&conn, &a).await;
    delete_exchange(&conn, &b).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn exchange_bound_to_itself_routes_once() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let a = temp_exchange(&ch, ExchangeKind::Fanout).await;
    let q = temp_queue(&ch).await;
    ch.exchange_bind(
        a.as_str().into(),
        a.as_str().into(),
        "".into(),
        ExchangeBindOptions::default(),
        no_args(),
    )
    .await
    .unwrap();
    bind(&ch, &q, &a, "").await;
    publish_confirmed(&ch, &a, "", b"self").await;
    assert_eq!(drain(&ch, &q).await, bodies(["self"]));
    delete_exchange(&conn, &a).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn exchange_bind_with_missing_source_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let dst = temp_exchange(&ch, ExchangeKind::Fanout).await;
    let src = unique("missing");
    assert_amqp_error(
        ch.exchange_bind(
            dst.as_str().into(),
            src.as_str().into(),
            "".into(),
            ExchangeBindOptions::default(),
            no_args(),
        ),
        404,
        &format!("NOT_FOUND - no exchange '{src}' in vhost '/'"),
    )
    .await;
    delete_exchange(&conn, &dst).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn auto_delete_exchange_is_removed_when_its_last_queue_binding_goes() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = unique("ad");
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "a").await;
    bind(&ch, &q, &x, "b").await;
    ch.queue_unbind(q.as_str().into(), x.as_str().into(), "a".into(), no_args())
        .await
        .unwrap();
    assert!(exchange_exists(&conn, &x).await, "one binding is left");
    ch.queue_unbind(q.as_str().into(), x.as_str().into(), "b".into(), no_args())
        .await
        .unwrap();
    assert!(
        !exchange_exists(&conn, &x).await,
        "removed with its last binding"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn auto_delete_exchange_without_bindings_is_kept() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = unique("ad");
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    assert!(exchange_exists(&conn, &x).await);
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn auto_delete_exchange_is_removed_when_its_bound_queue_is_deleted() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = unique("ad");
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    let q = temp_queue(&ch).await;
    bind(&ch, &q, &x, "").await;
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert!(!exchange_exists(&conn, &x).await);
    broker.shutdown().await;
}

#[tokio::test]
async fn auto_delete_source_exchange_is_removed_when_its_last_exchange_binding_goes() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let src = unique("ad");
    ch.exchange_declare(
        src.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    let dst = temp_exchange(&ch, ExchangeKind::Fanout).await;
    ch.exchange_bind(
        dst.as_str().into(),
        src.as_str().into(),
        "".into(),
        ExchangeBindOptions::default(),
        no_args(),
    )
    .await
    .unwrap();
    ch.exchange_unbind(
        dst.as_str().into(),
        src.as_str().into(),
        "".into(),
        ExchangeUnbindOptions::default(),
        no_args(),
    )
    .await
    .unwrap();
    assert!(!exchange_exists(&conn, &src).await);
    assert!(
        exchange_exists(&conn, &dst).await,
        "the destination is not auto-delete"
    );
    delete_exchange(&conn, &dst).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn internal_exchange_refuses_direct_publishes_with_403() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let (aconn, _) = broker.amqprs_with_events().await;
    let ch = channel(&conn).await;
    let x = unique("internal");
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .unwrap();
    let (ach, mut events) = amqprs_channel(&aconn).await;
    ach.basic_publish(
        amqprs::BasicProperties::default(),
        b"x".to_vec(),
        amqprs::channel::BasicPublishArguments::new(&x, ""),
    )
    .await
    .unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!(code, 403);
    assert_eq!(
        text,
        format!("ACCESS_REFUSED - cannot publish to internal exchange '{x}' in vhost '/'")
    );
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn amqprs_declares_binds_and_routes_through_a_direct_exchange() {
    use amqprs::channel::{
        BasicPublishArguments, ConfirmSelectArguments, ExchangeDeclareArguments,
        ExchangeDeleteArguments, QueueBindArguments,
    };
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let x = unique("ax");
    ch.exchange_declare(ExchangeDeclareArguments::new(&x, "direct"))
        .await
        .unwrap();
    let q = amqprs_temp_queue(&ch).await;
    ch.queue_bind(QueueBindArguments::new(&q, &x, "rk"))
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectArguments::default())
        .await
        .unwrap();
    ch.basic_publish(
        amqprs::BasicProperties::default(),
        b"via amqprs".to_vec(),
        BasicPublishArguments::new(&x, "rk"),
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
    let (get_ok, _, body) = ch
        .basic_get(
            amqprs::channel::BasicGetArguments::new(&q)
                .no_ack(true)
                .finish(),
        )
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(body, b"via amqprs");
    assert_eq!(get_ok.exchange(), &x);
    assert_eq!(get_ok.routing_key(), "rk");
    ch.exchange_delete(ExchangeDeleteArguments::new(&x))
        .await
        .unwrap();
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn passive_declare_ignores_the_type() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = temp_exchange(&ch, ExchangeKind::Fanout).await;
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .expect("passive declare does not compare the type");
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn declaring_the_default_exchange_fails_with_403() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    assert_amqp_error(
        ch.exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            no_args(),
        ),
        403,
        "ACCESS_REFUSED - operation not permitted on the default exchange",
    )
    .await;
    broker.shutdown().await;
}

/// "amq.default" is only a display name: RabbitMQ has no exchange by that name.
#[tokio::test]
async fn publishing_to_amq_default_fails_with_404() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let (ch, mut events) = amqprs_channel(&conn).await;
    let q = amqprs_temp_queue(&ch).await;
    ch.basic_publish(
        amqprs::BasicProperties::default(),
        b"x".to_vec(),
        amqprs::channel::BasicPublishArguments::new("amq.default", &q),
    )
    .await
    .unwrap();
    let (code, text) = expect_amqprs_channel_close(&mut events).await;
    assert_eq!(
        (code, text.as_str()),
        (404, "NOT_FOUND - no exchange 'amq.default' in vhost '/'")
    );
    broker.shutdown().await;
}

/// Two exchanges naming each other as alternate exchange: an unroutable publish
/// must end (no route) instead of looping, and the broker keeps serving.
#[tokio::test]
async fn alternate_exchange_cycle_is_broken() {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let (a, b) = (unique("ae-a"), unique("ae-b"));
    for (name, alt) in [(&a, &b), (&b, &a)] {
        let mut args = FieldTable::default();
        args.insert(
            "alternate-exchange".into(),
            AMQPValue::LongString(LongString::from(alt.as_bytes().to_vec())),
        );
        ch.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            args,
        )
        .await
        .expect("exchange.declare");
    }
    let q = temp_queue(&ch).await;
    // Unroutable through both: confirmed, nothing delivered, connection alive.
    publish_confirmed(&ch, &a, "nowhere", b"loop?").await;
    bind(&ch, &q, &b, "k").await;
    // Routable only through the alternate: lands in q.
    publish_confirmed(&ch, &a, "k", b"via alternate").await;
    assert_eq!(get_body(&ch, &q).await, Some(b"via alternate".to_vec()));
    broker.shutdown().await;
}

#[tokio::test]
async fn redeclare_compares_only_the_alternate_exchange_argument() {
    use lapin::types::{AMQPValue, FieldTable};
    let arg = |key: &str, value: AMQPValue| {
        let mut t = FieldTable::default();
        t.insert(key.into(), value);
        t
    };
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = channel(&conn).await;
    let x = unique("x-args");
    let declare = |args: FieldTable| {
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            args,
        )
    };
    declare(arg("x-foo", AMQPValue::LongInt(1))).await.unwrap();
    // RabbitMQ compares no other argument of an exchange.
    declare(arg("x-foo", AMQPValue::LongInt(2)))
        .await
        .expect("other arguments may differ");
    assert_amqp_error(
        declare(arg("alternate-exchange", AMQPValue::LongString("ae".into()))),
        406,
        &format!(
            "PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange '{x}' in vhost '/': received the value 'ae' of type 'longstr' but current is none"
        ),
    )
    .await;
    delete_exchange(&conn, &x).await;
    broker.shutdown().await;
}
