//! Connection handshake: protocol header, connection.start properties,
//! authentication, vhost access and tuning.

mod common;

use common::raw::{Enc, Outcome, RawConn, Tune, Value};
use common::*;

/// The capabilities WarrenMQ announces (RabbitMQ announces more).
const CAPABILITIES: [&str; 8] = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "per_consumer_qos",
    "direct_reply_to",
    "authentication_failure_close",
    "connection.blocked",
];

#[tokio::test]
async fn connection_start_announces_amqp_0_9_with_plain_and_en_us() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    let start = c.start().await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    assert!(
        start.mechanisms.split(' ').any(|m| m == "PLAIN"),
        "mechanisms: {}",
        start.mechanisms
    );
    assert!(
        start.locales.split(' ').any(|l| l == "en_US"),
        "locales: {}",
        start.locales
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn server_properties_name_product_version_and_platform() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    let props = c.start().await.server_properties;
    for key in ["product", "version", "platform"] {
        match props.get(key) {
            Some(Value::LongStr(v)) => assert!(!v.is_empty(), "{key} is empty"),
            other => panic!("server property {key} should be a long string, got {other:?}"),
        }
    }
    // RabbitMQ also sends these; if present they must be long strings too.
    for key in ["copyright", "information", "cluster_name"] {
        if let Some(v) = props.get(key) {
            assert!(matches!(v, Value::LongStr(_)), "{key}: {v:?}");
        }
    }
    let product = props["product"].as_str().unwrap();
    if broker.is_external() {
        assert_eq!(product, "RabbitMQ");
    } else {
        assert_eq!(product, "WarrenMQ");
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn server_capabilities_are_advertised_as_true() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    let props = c.start().await.server_properties;
    let Some(Value::Table(caps)) = props.get("capabilities") else {
        panic!("capabilities should be a table: {props:?}");
    };
    for key in CAPABILITIES {
        assert_eq!(caps.get(key), Some(&Value::Bool(true)), "capability {key}");
    }
    if !broker.is_external() {
        let mut keys: Vec<&str> = caps.keys().map(String::as_str).collect();
        keys.sort();
        let mut expected = CAPABILITIES.to_vec();
        expected.sort();
        assert_eq!(
            keys, expected,
            "WarrenMQ advertises exactly these capabilities"
        );
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn amqprs_decodes_the_capabilities() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    let props = conn.server_properties();
    let caps = props.capabilities();
    assert!(caps.publisher_confirms());
    assert!(caps.exchange_exchange_bindings());
    assert!(caps.basic_nack());
    assert!(caps.consumer_cancel_notify());
    assert!(caps.per_consumer_qos());
    assert!(caps.direct_reply_to());
    assert!(caps.authentication_failure_close());
    assert!(!props.version().is_empty());
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn tune_offers_channel_max_2047_frame_max_131072_heartbeat_60() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok(&broker.target.user, &broker.target.password)
        .await;
    let tune = c.read_tune().await;
    assert_eq!(
        tune,
        Tune {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 60
        }
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn amqprs_negotiates_the_offered_limits() {
    let broker = TestBroker::start().await;
    let conn = broker.amqprs().await;
    assert_eq!(conn.channel_max(), 2047);
    assert_eq!(conn.frame_max(), 131072);
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn full_raw_handshake_opens_the_default_vhost() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawConn::open_connection(&broker).await;
    c.open_channel(1).await;
    // connection.close from the client is answered with close-ok
    c.send_method(
        0,
        10,
        50,
        &Enc::new().u16(200).short_str("done").u16(0).u16(0).build(),
    )
    .await;
    c.expect_method(0, 10, 51).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn bad_password_is_refused_with_403_access_refused() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok(&broker.target.user, "definitely-wrong").await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.code, 403);
    assert_eq!(
        reason.text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    assert!(c.wait_eof().await);
    broker.shutdown().await;
}

#[tokio::test]
async fn unknown_user_is_refused_with_403_access_refused() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok(&unique("nobody"), "pw").await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.code, 403);
    assert_eq!(
        reason.text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn bad_password_without_auth_failure_close_capability_just_drops_the_socket() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok_with(&broker.target.user, "definitely-wrong", false)
        .await;
    assert_eq!(c.read_outcome().await, Outcome::Eof);
    broker.shutdown().await;
}

#[tokio::test]
async fn lapin_reports_bad_password_as_403() {
    let broker = TestBroker::start().await;
    let url = broker.url_for(
        &broker.target.user.clone(),
        "definitely-wrong",
        &broker.target.vhost.clone(),
    );
    let res = within(
        "lapin connect",
        lapin::Connection::connect(&url, lapin::ConnectionProperties::default()),
    )
    .await;
    let (code, text) = expect_amqp_error(res.map(|_| ()));
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn unknown_vhost_is_refused_with_530_not_allowed() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok(&broker.target.user, &broker.target.password)
        .await;
    let tune = c.read_tune().await;
    c.tune_ok(Tune {
        heartbeat: 0,
        ..tune
    })
    .await;
    c.open("no-such-vhost").await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.code, 530);
    assert_eq!(reason.text, "NOT_ALLOWED - vhost no-such-vhost not found");
    assert_eq!(
        (reason.class_id, reason.method_id),
        (10, 40),
        "blames connection.open"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn amqprs_reports_unknown_vhost() {
    let broker = TestBroker::start().await;
    let args = amqprs::connection::OpenConnectionArguments::new(
        &broker.target.host,
        broker.target.port,
        &broker.target.user,
        &broker.target.password,
    )
    .virtual_host("no-such-vhost")
    .finish();
    let res = within(
        "amqprs connect",
        amqprs::connection::Connection::open(&args),
    )
    .await;
    let err = match res {
        Ok(_) => panic!("opening an unknown vhost must fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("530"), "{err}");
    assert!(
        err.contains("NOT_ALLOWED - vhost no-such-vhost not found"),
        "{err}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn client_may_negotiate_a_smaller_frame_max_and_channel_max() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok(&broker.target.user, &broker.target.password)
        .await;
    c.read_tune().await;
    c.tune_ok(Tune {
        channel_max: 8,
        frame_max: 4096,
        heartbeat: 0,
    })
    .await;
    c.open(&broker.target.vhost).await;
    c.expect_method(0, 10, 41).await;
    c.open_channel(8).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn opening_more_channels_than_channel_max_closes_the_connection_with_530() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok(&broker.target.user, &broker.target.password)
        .await;
    c.read_tune().await;
    c.tune_ok(Tune {
        channel_max: 3,
        frame_max: 131072,
        heartbeat: 0,
    })
    .await;
    c.open(&broker.target.vhost).await;
    c.expect_method(0, 10, 41).await;
    for ch in 1..=3 {
        c.open_channel(ch).await;
    }
    c.send_method(4, 20, 10, &Enc::new().short_str("").build())
        .await;
    let reason = c.expect_connection_close().await;
    assert_eq!(reason.code, 530);
    assert_eq!(
        reason.text,
        "NOT_ALLOWED - number of channels opened (3) has reached the negotiated channel_max (3)"
    );
    broker.shutdown().await;
}

/// Errors while tuning (before connection.open) are not reported with a
/// connection.close: RabbitMQ logs "failed to negotiate connection parameters"
/// and drops the socket.
#[tokio::test]
async fn tune_ok_frame_max_below_4096_drops_the_connection() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok(&broker.target.user, &broker.target.password)
        .await;
    c.read_tune().await;
    c.tune_ok(Tune {
        channel_max: 2047,
        frame_max: 1024,
        heartbeat: 0,
    })
    .await;
    c.open(&broker.target.vhost).await;
    assert_eq!(c.read_outcome().await, Outcome::Eof);
    broker.shutdown().await;
}

#[tokio::test]
async fn tune_ok_frame_max_above_the_offer_drops_the_connection() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok(&broker.target.user, &broker.target.password)
        .await;
    c.read_tune().await;
    c.tune_ok(Tune {
        channel_max: 2047,
        frame_max: 1_000_000,
        heartbeat: 0,
    })
    .await;
    c.open(&broker.target.vhost).await;
    assert_eq!(c.read_outcome().await, Outcome::Eof);
    broker.shutdown().await;
}

#[tokio::test]
async fn server_sends_heartbeats_at_the_negotiated_interval() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok(&broker.target.user, &broker.target.password)
        .await;
    let tune = c.read_tune().await;
    c.tune_ok(Tune {
        heartbeat: 1,
        ..tune
    })
    .await;
    c.open(&broker.target.vhost).await;
    c.expect_method(0, 10, 41).await;
    // With a 1 s interval the server must send a heartbeat well within TIMEOUT.
    match c.read_frame().await.expect("connection stays open") {
        common::raw::Frame::Heartbeat { channel } => assert_eq!(channel, 0),
        other => panic!("unexpected frame {other:?}"),
    }
    broker.shutdown().await;
}

/// With heartbeat 1 s negotiated, a client that sends nothing is dropped after
/// a couple of missed intervals (RabbitMQ closes the socket without a close
/// method and logs "missed heartbeats from client").
#[tokio::test]
async fn server_drops_a_client_that_sends_no_heartbeats() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok(&broker.target.user, &broker.target.password)
        .await;
    let tune = c.read_tune().await;
    c.tune_ok(Tune {
        heartbeat: 1,
        ..tune
    })
    .await;
    c.open(&broker.target.vhost).await;
    c.expect_method(0, 10, 41).await;
    let started = std::time::Instant::now();
    loop {
        match c.read_frame().await {
            None => break,
            Some(common::raw::Frame::Heartbeat { .. }) => continue,
            Some(other) => panic!("unexpected frame {other:?}"),
        }
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "not dropped before one interval"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn client_heartbeats_keep_an_idle_connection_open() {
    let broker = TestBroker::start().await;
    let mut c = RawConn::connect(&broker).await;
    c.start().await;
    c.start_ok(&broker.target.user, &broker.target.password)
        .await;
    let tune = c.read_tune().await;
    c.tune_ok(Tune {
        heartbeat: 1,
        ..tune
    })
    .await;
    c.open(&broker.target.vhost).await;
    c.expect_method(0, 10, 41).await;
    // Answer each server heartbeat with one of ours for a few intervals, then
    // check the connection still works.
    for _ in 0..4 {
        match c.read_frame().await.expect("connection stays open") {
            common::raw::Frame::Heartbeat { .. } => c.send(&common::raw::frame(8, 0, &[])).await,
            other => panic!("unexpected frame {other:?}"),
        }
    }
    c.open_channel(1).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn lapin_connection_closes_cleanly() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    assert!(conn.status().connected());
    conn.close(200, "bye".into())
        .await
        .expect("connection.close");
    // lapin resolves close() before its I/O loop records the closed state.
    assert!(common::wait_for(|| conn.status().closed(), std::time::Duration::from_secs(5)).await);
    broker.shutdown().await;
}
