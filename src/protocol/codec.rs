//! Frame splitting and encoding.
//!
//! The splitter reads the 7-byte frame header itself, enforces the negotiated
//! `frame_max` and the `0xCE` end octet, and slices each frame out of the read
//! buffer with `split_to().freeze()`: body payloads and content-header property
//! bytes are never copied. Methods and properties are decoded with `amq-protocol`.
//! Encoders append to a `Vec<u8>` (methods) or hand out `Bytes` (bodies) for
//! vectored writes.

use super::error::AmqpError;
use amq_protocol::protocol::{basic, basic::AMQPProperties, AMQPClass};
use bytes::{Buf, Bytes, BytesMut};
use nom::Parser;

/// Frame type octets (AMQP 0-9-1 §4.2.3).
pub const FRAME_METHOD: u8 = 1;
/// Content header frame type.
pub const FRAME_HEADER: u8 = 2;
/// Content body frame type.
pub const FRAME_BODY: u8 = 3;
/// Heartbeat frame type.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The end-of-frame octet.
pub const FRAME_END: u8 = 0xCE;
/// Bytes of framing around a payload: 7-byte header + end octet.
pub const FRAME_OVERHEAD: usize = 8;
/// The protocol header a 0-9-1 client sends first, and the one we answer with on mismatch.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// A content header: the decoded properties plus their original encoding.
#[derive(Debug, Clone)]
pub struct ContentHeader {
    /// Class id (must be 60, basic).
    pub class_id: u16,
    /// Total body size announced.
    pub body_size: u64,
    /// Decoded properties (for routing, TTL, persistence decisions); boxed so
    /// a header moves through the publish path as a pointer, not ~340 bytes.
    pub properties: Box<AMQPProperties>,
    /// The property flags + property list exactly as received, re-sent verbatim on delivery.
    pub raw_properties: Bytes,
}

/// One decoded frame.
#[derive(Debug)]
pub enum Frame {
    /// A method frame.
    Method(u16, Box<AMQPClass>),
    /// A content header frame.
    Header(u16, ContentHeader),
    /// A content body frame; the payload is a zero-copy slice of the read buffer.
    Body(u16, Bytes),
    /// A heartbeat frame (channel recorded so non-zero channels can be rejected).
    Heartbeat(u16),
}

impl Frame {
    /// The channel the frame was sent on.
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method(c, _) | Frame::Header(c, _) | Frame::Body(c, _) | Frame::Heartbeat(c) => {
                *c
            }
        }
    }
}

/// Splits the next complete frame off `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. `frame_max` is the negotiated
/// maximum total frame size (0 = no limit beyond `u32`).
pub fn parse_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let frame_type = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    // Checks in RabbitMQ's order (rabbit_reader): size, then the end octet, then the type.
    if frame_max != 0 && size + FRAME_OVERHEAD > frame_max as usize {
        return Err(AmqpError::frame_error(format_args!(
            "type {frame_type}, all octets = <<>>: {{frame_too_large,{size},{}}}",
            frame_max as usize - FRAME_OVERHEAD
        )));
    }
    if buf.len() < size + FRAME_OVERHEAD {
        buf.reserve(size + FRAME_OVERHEAD - buf.len());
        return Ok(None);
    }
    if buf[7 + size] != FRAME_END {
        return Err(AmqpError::frame_error(format_args!(
            "type {frame_type}, all octets = {}: {{invalid_frame_end_marker,{}}}",
            ErlangBinary(&buf[7..7 + size]),
            buf[7 + size]
        )));
    }
    if !matches!(
        frame_type,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(AmqpError::frame_error(format_args!(
            "type {frame_type}, all octets = {}: unknown_frame",
            ErlangBinary(&buf[7..7 + size])
        )));
    }
    // Methods and bare content headers are decoded in place; only payloads the
    // frame keeps (bodies, property bytes) are split off the read buffer.
    let frame = match frame_type {
        FRAME_METHOD => {
            let class = decode_method(&buf[7..7 + size]);
            buf.advance(size + FRAME_OVERHEAD);
            Frame::Method(channel, Box::new(class?))
        }
        FRAME_HEADER => {
            let (class_id, body_size) = header_prefix(&buf[7..7 + size])?;
            let raw_properties = if buf[7 + 12..7 + size] == BARE_PROPERTIES {
                buf.advance(size + FRAME_OVERHEAD);
                Bytes::from_static(&BARE_PROPERTIES)
            } else {
                buf.advance(7 + 12);
                let raw = buf.split_to(size - 12).freeze();
                buf.advance(1);
                raw
            };
            Frame::Header(channel, decode_header(class_id, body_size, raw_properties)?)
        }
        _ => {
            buf.advance(7);
            let payload = buf.split_to(size).freeze();
            buf.advance(1);
            match frame_type {
                FRAME_BODY => Frame::Body(channel, payload),
                _ => Frame::Heartbeat(channel),
            }
        }
    };
    Ok(Some(frame))
}

/// Decodes a method payload.
fn decode_method(payload: &[u8]) -> Result<AMQPClass, AmqpError> {
    if payload.len() < 4 {
        return Err(AmqpError::frame_error(format_args!(
            "cannot decode {}",
            ErlangBinary(payload)
        )));
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    if !is_known_method(class_id, method_id) {
        return Err(AmqpError::command_invalid(format_args!(
            "unknown method: class {class_id}, method {method_id}"
        ))
        .on_method(class_id, method_id));
    }
    if (class_id, method_id) == (60, 40) {
        if let Some(publish) = decode_publish(&payload[4..]) {
            return Ok(AMQPClass::Basic(basic::AMQPMethod::Publish(publish)));
        }
        // Anything unusual takes the generic parser below, for its exact error.
    }
    match nom::combinator::all_consuming(amq_protocol::protocol::parse_class).parse(payload) {
        Ok((_, class)) => {
            check_unsupported_fields(class_id, method_id, &payload[4..])?;
            Ok(class)
        }
        Err(_) => Err(AmqpError::frame_error(format_args!(
            "cannot decode {}",
            ErlangBinary(&payload[4..])
        ))
        .on_method(class_id, method_id)),
    }
}

/// `basic.publish` arguments (reserved short, exchange, routing key, flag bits), decoded by
/// hand: it is the one method on the per-message path, and the generic parser builds it
/// byte by byte and allocates a named flag list per call. `None` for anything the generic
/// parser must judge (short input, trailing bytes, invalid UTF-8), so errors stay the same.
fn decode_publish(args: &[u8]) -> Option<basic::Publish> {
    fn short_str(buf: &[u8]) -> Option<(&str, &[u8])> {
        let (&len, rest) = buf.split_first()?;
        let (s, rest) = rest.split_at_checked(usize::from(len))?;
        Some((std::str::from_utf8(s).ok()?, rest))
    }
    let (exchange, rest) = short_str(args.get(2..)?)?;
    let (routing_key, rest) = short_str(rest)?;
    let [bits] = rest else { return None };
    Some(basic::Publish {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        mandatory: bits & 1 != 0,
        immediate: bits & 2 != 0,
    })
}

/// Fields amq-protocol parses but drops, which RabbitMQ refuses when set.
fn check_unsupported_fields(class_id: u16, method_id: u16, args: &[u8]) -> Result<(), AmqpError> {
    if (class_id, method_id) == (60, 10) && args.len() >= 4 {
        let prefetch_size = u32::from_be_bytes([args[0], args[1], args[2], args[3]]);
        if prefetch_size != 0 {
            return Err(AmqpError::not_implemented(format_args!(
                "prefetch_size!=0 ({prefetch_size})"
            ))
            .on_method(60, 10));
        }
    }
    Ok(())
}

/// Formats bytes the way Erlang's `~p` prints a binary in RabbitMQ's reply texts:
/// `<<"text">>` when every byte is printable, `<<0,50,10>>` otherwise.
pub struct ErlangBinary<'a>(pub &'a [u8]);

impl std::fmt::Display for ErlangBinary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let printable = !self.0.is_empty()
            && self
                .0
                .iter()
                .all(|b| (0x20..0x7f).contains(b) || matches!(b, b'\n' | b'\t' | b'\r'));
        f.write_str("<<")?;
        if printable {
            f.write_str("\"")?;
            for &b in self.0 {
                match b {
                    b'"' => f.write_str("\\\"")?,
                    b'\\' => f.write_str("\\\\")?,
                    b'\n' => f.write_str("\\n")?,
                    b'\t' => f.write_str("\\t")?,
                    b'\r' => f.write_str("\\r")?,
                    _ => write!(f, "{}", b as char)?,
                }
            }
            f.write_str("\"")?;
        } else {
            for (i, b) in self.0.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{b}")?;
            }
        }
        f.write_str(">>")
    }
}

/// Whether (class, method) names a method of AMQP 0-9-1 with RabbitMQ's extensions.
fn is_known_method(class_id: u16, method_id: u16) -> bool {
    match class_id {
        10 => matches!(
            method_id,
            10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51 | 60 | 61 | 70 | 71
        ),
        20 => matches!(method_id, 10 | 11 | 20 | 21 | 40 | 41),
        30 => matches!(method_id, 10 | 11),
        40 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 51),
        50 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31 | 40 | 41 | 50 | 51),
        60 => matches!(
            method_id,
            10 | 11
                | 20
                | 21
                | 30
                | 31
                | 40
                | 50
                | 60
                | 70
                | 71
                | 72
                | 80
                | 90
                | 100
                | 110
                | 111
                | 120
        ),
        85 => matches!(method_id, 10 | 11),
        90 => matches!(method_id, 10 | 11 | 20 | 21 | 30 | 31),
        _ => false,
    }
}

/// Decodes a content header payload, keeping the raw property bytes.
/// Property flags with no property set: what most bare publishes carry.
const BARE_PROPERTIES: [u8; 2] = [0, 0];

/// A content header's class id and body size (the properties follow at offset 12).
fn header_prefix(payload: &[u8]) -> Result<(u16, u64), AmqpError> {
    if payload.len() < 14 {
        return Err(AmqpError::frame_error("content header frame too short"));
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let body_size = u64::from_be_bytes(payload[4..12].try_into().expect("8 bytes checked"));
    Ok((class_id, body_size))
}

fn decode_header(
    class_id: u16,
    body_size: u64,
    raw_properties: Bytes,
) -> Result<ContentHeader, AmqpError> {
    let properties = if raw_properties[..] == BARE_PROPERTIES {
        Box::default()
    } else {
        match decode_properties(&raw_properties) {
            Some(p) => Box::new(p),
            None => {
                return Err(AmqpError::syntax_error(
                    "malformed content header properties",
                ))
            }
        }
    };
    Ok(ContentHeader {
        class_id,
        body_size,
        properties,
        raw_properties,
    })
}

/// Appends a method frame to `out`.
pub fn encode_method(out: &mut Vec<u8>, channel: u16, method: &AMQPClass) {
    let start = out.len();
    out.extend_from_slice(&[FRAME_METHOD, 0, 0, 0, 0, 0, 0]);
    out[start + 1..start + 3].copy_from_slice(&channel.to_be_bytes());
    let buf = std::mem::take(out);
    let (buf, _) = cookie_factory::gen(amq_protocol::protocol::gen_class(method), buf)
        .expect("encoding into a Vec cannot fail");
    *out = buf;
    finish_frame(out, start);
}

/// Appends a method frame from raw argument bytes (for fields amq-protocol omits).
pub fn encode_raw_method(
    out: &mut Vec<u8>,
    channel: u16,
    class_id: u16,
    method_id: u16,
    args: &[u8],
) {
    let start = out.len();
    out.extend_from_slice(&[FRAME_METHOD, 0, 0, 0, 0, 0, 0]);
    out[start + 1..start + 3].copy_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&class_id.to_be_bytes());
    out.extend_from_slice(&method_id.to_be_bytes());
    out.extend_from_slice(args);
    finish_frame(out, start);
}

/// Appends a content header frame built from raw property bytes.
pub fn encode_header(out: &mut Vec<u8>, channel: u16, body_size: u64, raw_properties: &[u8]) {
    let size = 12 + raw_properties.len();
    out.reserve(size + FRAME_OVERHEAD);
    out.push(FRAME_HEADER);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(size as u32).to_be_bytes());
    out.extend_from_slice(&60u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&body_size.to_be_bytes());
    out.extend_from_slice(raw_properties);
    out.push(FRAME_END);
}

/// Appends the 7-byte header of a body frame carrying `len` bytes.
pub fn encode_body_frame_header(out: &mut Vec<u8>, channel: u16, len: usize) {
    out.push(FRAME_BODY);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

/// Appends a heartbeat frame.
pub fn encode_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Appends a `basic.deliver` method frame, hand-encoded because it is the hottest frame.
pub fn encode_deliver(
    out: &mut Vec<u8>,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let start = out.len();
    out.extend_from_slice(&[FRAME_METHOD, 0, 0, 0, 0, 0, 0]);
    out[start + 1..start + 3].copy_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&[0, 60, 0, 60]);
    push_short_str(out, consumer_tag);
    out.extend_from_slice(&delivery_tag.to_be_bytes());
    out.push(redelivered as u8);
    push_short_str(out, exchange);
    push_short_str(out, routing_key);
    finish_frame(out, start);
}

/// Encodes the raw property bytes for `properties` (used when a message's properties change).
pub fn encode_properties(properties: &AMQPProperties) -> Bytes {
    let (buf, _) = cookie_factory::gen(
        amq_protocol::protocol::basic::gen_properties(properties),
        Vec::with_capacity(64),
    )
    .expect("encoding into a Vec cannot fail");
    Bytes::from(buf)
}

/// Decodes stored property bytes (the inverse of [`encode_properties`]).
pub fn decode_properties(raw: &[u8]) -> Option<AMQPProperties> {
    nom::combinator::all_consuming(amq_protocol::protocol::basic::parse_properties)
        .parse(raw)
        .ok()
        .map(|(_, p)| p)
}

/// Content header frame for a freshly built message (used by tests and the broker itself).
pub fn content_header(body_size: u64, properties: AMQPProperties) -> ContentHeader {
    let raw_properties = encode_properties(&properties);
    ContentHeader {
        class_id: 60,
        body_size,
        properties: Box::new(properties),
        raw_properties,
    }
}

fn push_short_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len().min(255);
    out.push(len as u8);
    out.extend_from_slice(&s.as_bytes()[..len]);
}

fn finish_frame(out: &mut Vec<u8>, start: usize) {
    let size = (out.len() - start - 7) as u32;
    out[start + 3..start + 7].copy_from_slice(&size.to_be_bytes());
    out.push(FRAME_END);
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::{basic, queue};

    fn frame_bytes(method: &AMQPClass) -> BytesMut {
        let mut v = Vec::new();
        encode_method(&mut v, 3, method);
        BytesMut::from(&v[..])
    }

    /// The hand decoder agrees with amq-protocol's parser on every input it accepts, and
    /// declines (leaving the error to the generic parser) everything that parser refuses.
    #[test]
    fn publish_fast_path_matches_the_generic_parser() {
        let generic = |payload: &[u8]| {
            nom::combinator::all_consuming(amq_protocol::protocol::parse_class)
                .parse(payload)
                .ok()
                .map(|(_, c)| c)
        };
        let mut inputs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0, 0],
            vec![0, 0, 0, 0, 0],
            vec![0, 0, 0, 0, 0, 0],    // trailing byte
            vec![0, 0, 1, 0xff, 0, 0], // invalid UTF-8
            vec![0, 0, 5, b'a', b'b'], // short string past the end
        ];
        for bits in 0..=255u8 {
            inputs.push(vec![
                0, 7, 3, b'a', b'm', b'q', 4, b'k', b'e', b'y', b'1', bits,
            ]);
        }
        let long = "x".repeat(255);
        let mut max = vec![0, 0, 255];
        max.extend_from_slice(long.as_bytes());
        max.extend_from_slice(&[255]);
        max.extend_from_slice("é".repeat(127).as_bytes());
        max.push(1); // 254-byte routing key cut in a character: invalid UTF-8
        inputs.push(max.clone());
        max.truncate(max.len() - 2 - 254);
        max.extend_from_slice(&[4, b'r', b'k', 0xc3, 0xa9, 3]);
        inputs.push(max);
        for args in inputs {
            let fast =
                decode_publish(&args).map(|p| AMQPClass::Basic(basic::AMQPMethod::Publish(p)));
            assert_eq!(
                fast,
                generic(&[&[0, 60, 0, 40], &args[..]].concat()),
                "{args:?}"
            );
        }
    }

    #[test]
    fn method_round_trip_and_partial_input() {
        let m = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "q".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Default::default(),
        }));
        let full = frame_bytes(&m);
        for cut in 0..full.len() {
            let mut partial = BytesMut::from(&full[..cut]);
            assert!(parse_frame(&mut partial, 131072).unwrap().is_none());
        }
        let mut buf = full.clone();
        match parse_frame(&mut buf, 131072).unwrap() {
            Some(Frame::Method(3, got)) => assert_eq!(*got, m),
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn deliver_matches_amq_protocol_encoding() {
        let mut ours = Vec::new();
        encode_deliver(&mut ours, 7, "ctag", 42, true, "ex", "rk");
        let mut theirs = Vec::new();
        encode_method(
            &mut theirs,
            7,
            &AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 42,
                redelivered: true,
                exchange: "ex".into(),
                routing_key: "rk".into(),
            })),
        );
        assert_eq!(ours, theirs);
    }

    #[test]
    fn body_is_zero_copy_slice() {
        let mut v = Vec::new();
        encode_body_frame_header(&mut v, 1, 5);
        v.extend_from_slice(b"hello");
        v.push(FRAME_END);
        let mut buf = BytesMut::from(&v[..]);
        let base = buf.as_ptr() as usize;
        match parse_frame(&mut buf, 131072).unwrap() {
            Some(Frame::Body(1, b)) => {
                assert_eq!(&b[..], b"hello");
                assert_eq!(b.as_ptr() as usize, base + 7);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_keeps_raw_properties() {
        let props = AMQPProperties::default()
            .with_delivery_mode(2)
            .with_content_type("text/plain".into());
        let raw = encode_properties(&props);
        let mut v = Vec::new();
        encode_header(&mut v, 1, 10, &raw);
        let mut buf = BytesMut::from(&v[..]);
        match parse_frame(&mut buf, 131072).unwrap() {
            Some(Frame::Header(1, h)) => {
                assert_eq!(h.body_size, 10);
                assert_eq!(*h.properties, props);
                assert_eq!(h.raw_properties, raw);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_bad_end_and_unknown_type_are_frame_errors() {
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 2, 0, 0][..]);
        assert_eq!(
            parse_frame(&mut buf, 4096).unwrap_err().code,
            super::super::ReplyCode::FrameError
        );
        let mut buf = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xAB][..]);
        assert!(parse_frame(&mut buf, 4096).is_err());
        let mut buf = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
        assert!(parse_frame(&mut buf, 4096).is_err());
    }
}
