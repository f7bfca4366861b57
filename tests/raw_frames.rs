//! Malformed input on a raw socket: each case checks what the broker replies and
//! then proves that a new, well-behaved connection is still served.

mod common;

use common::raw::{
    assert_broker_still_serves, frame, header_frame, method_frame, Enc, Outcome, RawConn,
    FRAME_BODY, FRAME_HEADER, FRAME_METHOD, PROTOCOL_HEADER,
};
use common::*;

/// Sends `header` instead of the AMQP 0-9-1 protocol header and returns what the
/// server wrote back before closing.
async fn reply_to_protocol_header(broker: &TestBroker, header: &[u8]) -> Vec<u8> {
    let mut c = RawConn::connect(broker).await;
    c.send(header).await;
    let reply = c.read_bytes(8).await;
    assert!(
        c.wait_eof().await,
        "server closes the socket after a bad protocol header"
    );
    reply
}

#[tokio::test]
async fn http_request_gets_the_supported_protocol_header_and_close() {
    let broker = TestBroker::start().await;
    let reply = reply_to_protocol_header(&broker, b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(reply, PROTOCOL_HEADER);
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn unsupported_amqp_version_gets_the_supported_protocol_header_and_close() {
    let broker = TestBroker::start().await;
    let reply = reply_to_protocol_header(&broker, b"AMQP\x00\x00\x0a\x00").await;
    assert_eq!(reply, PROTOCOL_HEADER);
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn amqp_1_0_header_gets_the_supported_protocol_header_and_close() {
    let broker = TestBroker::start().await;
    let reply = reply_to_protocol_header(&broker, b"AMQP\x00\x01\x00\x00").await;
    assert_eq!(reply, PROTOCOL_HEADER);
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

/// An open connection with channel 1 open.
async fn open(broker: &TestBroker) -> RawConn {
    let (mut c, _) = RawConn::open_connection(broker).await;
    c.open_channel(1).await;
    c
}

fn squash_whitespace(s: &str) -> String {
    s.split_whitespace().collect()
}

async fn expect_connection_error(c: &mut RawConn, code: u16) -> String {
    match c.read_outcome().await {
        Outcome::ConnectionClose(r) => {
            assert_eq!(r.code, code, "reply code (text: {})", r.text);
            r.text
        }
        other => panic!("expected connection.close {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn frame_larger_than_frame_max_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let mut c = open(&broker).await;
    // A body frame of 200000 bytes, after a valid publish and header.
    let publish = Enc::new()
        .u16(0)
        .short_str("")
        .short_str("nowhere")
        .u8(0)
        .build();
    c.send(&method_frame(1, 60, 40, &publish)).await;
    c.send(&header_frame(1, 200_000)).await;
    c.send_lenient(&frame(FRAME_BODY, 1, &vec![b'x'; 200_000]))
        .await;
    let text = expect_connection_error(&mut c, 501).await;
    // RabbitMQ reports the payload size and the largest payload frame_max allows
    // (frame_max - 8 octets of frame header and frame-end).
    assert_eq!(
        text,
        "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,200000,131064}"
    );
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn unknown_frame_type_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let mut c = open(&broker).await;
    c.send(&frame(9, 1, b"hello")).await;
    let text = expect_connection_error(&mut c, 501).await;
    assert_eq!(
        text,
        r#"FRAME_ERROR - type 9, all octets = <<"hello">>: unknown_frame"#
    );
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn body_frame_without_header_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let mut c = open(&broker).await;
    c.send(&frame(FRAME_BODY, 1, b"orphan body")).await;
    let text = expect_connection_error(&mut c, 505).await;
    assert_eq!(
        text,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
    );
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn header_frame_without_publish_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let mut c = open(&broker).await;
    c.send(&header_frame(1, 5)).await;
    let text = expect_connection_error(&mut c, 505).await;
    assert_eq!(
        text,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
    );
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn method_frame_instead_of_content_header_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let mut c = open(&broker).await;
    let publish = Enc::new()
        .u16(0)
        .short_str("")
        .short_str("nowhere")
        .u8(0)
        .build();
    c.send(&method_frame(1, 60, 40, &publish)).await;
    c.send(&method_frame(1, 60, 40, &publish)).await;
    let text = expect_connection_error(&mut c, 505).await;
    assert_eq!(text, "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead");
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn method_on_a_channel_that_was_never_opened_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let mut c = open(&broker).await;
    // queue.declare on channel 7, which was never opened
    let args = Enc::new().u16(0).short_str("").u8(0).empty_table().build();
    c.send(&method_frame(7, 50, 10, &args)).await;
    let text = expect_connection_error(&mut c, 504).await;
    assert_eq!(text, "CHANNEL_ERROR - expected 'channel.open'");
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn second_channel_open_on_the_same_channel_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let mut c = open(&broker).await;
    c.send(&method_frame(1, 20, 10, &Enc::new().short_str("").build()))
        .await;
    let text = expect_connection_error(&mut c, 504).await;
    assert_eq!(text, "CHANNEL_ERROR - second 'channel.open' seen");
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn bad_frame_end_octet_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let mut c = open(&broker).await;
    let mut bytes = method_frame(
        1,
        50,
        10,
        &Enc::new().u16(0).short_str("").u8(0).empty_table().build(),
    );
    *bytes.last_mut().unwrap() = 0x00;
    c.send(&bytes).await;
    let text = expect_connection_error(&mut c, 501).await;
    // RabbitMQ pretty-prints the Erlang term, so it may break the line inside the
    // tuple; compare without whitespace.
    assert_eq!(
        squash_whitespace(&text),
        squash_whitespace(
            "FRAME_ERROR - type 1, all octets = <<0,50,0,10,0,0,0,0,0,0,0,0>>: {invalid_frame_end_marker,0}"
        )
    );
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

/// RabbitMQ 3.10's reader crashes on an unknown method id and drops the socket
/// without a connection.close; a connection.close (e.g. 540 NOT_IMPLEMENTED) is
/// also acceptable. Either way the connection ends and the broker keeps serving.
#[tokio::test]
async fn unknown_method_ends_the_connection() {
    let broker = TestBroker::start().await;
    let mut c = open(&broker).await;
    c.send(&method_frame(1, 60, 999, &[])).await;
    match c.read_outcome().await {
        Outcome::Eof => {}
        Outcome::ConnectionClose(r) => assert!(matches!(r.code, 503 | 540), "{r:?}"),
        other => panic!("expected the connection to end, got {other:?}"),
    }
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn truncated_method_arguments_close_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let mut c = open(&broker).await;
    // queue.declare whose queue name claims 200 bytes but carries 3
    let args = Enc::new().u16(0).u8(200).bytes(b"abc").build();
    c.send(&method_frame(1, 50, 10, &args)).await;
    let text = expect_connection_error(&mut c, 501).await;
    assert_eq!(text, "FRAME_ERROR - cannot decode <<0,0,200,97,98,99>>");
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn heartbeat_on_a_nonzero_channel_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let mut c = open(&broker).await;
    c.send(&frame(8, 1, &[])).await;
    let text = expect_connection_error(&mut c, 505).await;
    assert_eq!(text, "UNEXPECTED_FRAME - type 8, all octets = <<>>");
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn garbage_after_the_handshake_does_not_affect_other_connections() {
    let broker = TestBroker::start().await;
    let (mut good, _) = RawConn::open_connection(&broker).await;
    good.open_channel(1).await;
    let mut bad = open(&broker).await;
    bad.send_lenient(&[0xFFu8; 64]).await;
    let outcome = bad.read_outcome().await;
    assert!(
        matches!(outcome, Outcome::ConnectionClose(_) | Outcome::Eof),
        "garbage must end the bad connection: {outcome:?}"
    );
    // The connection opened before the garbage keeps working.
    let args = Enc::new()
        .u16(0)
        .short_str("")
        .u8(0b0000_1100)
        .empty_table()
        .build();
    good.send(&method_frame(1, 50, 10, &args)).await;
    good.expect_method(1, 50, 11).await;
    assert_broker_still_serves(&broker).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn publish_with_header_and_body_split_over_frames_is_accepted() {
    let broker = TestBroker::start().await;
    let mut c = open(&broker).await;
    // exclusive server-named queue
    let args = Enc::new()
        .u16(0)
        .short_str("")
        .u8(0b0000_1100)
        .empty_table()
        .build();
    c.send(&method_frame(1, 50, 10, &args)).await;
    let ok = c.expect_method(1, 50, 11).await;
    let queue = common::raw::Dec::new(&ok).short_str();
    let publish = Enc::new()
        .u16(0)
        .short_str("")
        .short_str(&queue)
        .u8(0)
        .build();
    c.send(&method_frame(1, 60, 40, &publish)).await;
    c.send(&header_frame(1, 10)).await;
    c.send(&frame(FRAME_BODY, 1, b"hello")).await;
    c.send(&frame(FRAME_BODY, 1, b"world")).await;
    // basic.get no-ack
    let get = Enc::new().u16(0).short_str(&queue).u8(1).build();
    c.send(&method_frame(1, 60, 70, &get)).await;
    c.expect_method(1, 60, 71).await;
    let mut body = Vec::new();
    while body.len() < 10 {
        match c.read_frame().await.expect("open") {
            common::raw::Frame::Header { body_size, .. } => assert_eq!(body_size, 10),
            common::raw::Frame::Body { data, .. } => body.extend(data),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(body, b"helloworld");
    let _ = (FRAME_HEADER, FRAME_METHOD);
    broker.shutdown().await;
}
