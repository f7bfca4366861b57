//! AMQP 0-9-1 wire helpers for the load generator.
//!
//! Control methods (handshake, declares, consume) are encoded and decoded with
//! `amq-protocol`, so they are checked by an independent codec. The hot paths
//! are hand-written: a publish is a pre-encoded template (method + header +
//! body frames) copied per message with the body stamp patched in, acks are a
//! fixed 21-byte frame, and `basic.deliver` / `basic.ack` are decoded in place
//! without allocating.
//!
//! This file is also compiled into `benches/hot_paths.rs` (via `#[path]`), so
//! it depends on nothing else in the binary.

use amq_protocol::protocol::AMQPClass;
use nom::Parser;

/// Method frame type.
pub const FRAME_METHOD: u8 = 1;
/// Content header frame type.
pub const FRAME_HEADER: u8 = 2;
/// Content body frame type.
pub const FRAME_BODY: u8 = 3;
/// Heartbeat frame type.
pub const FRAME_HEARTBEAT: u8 = 8;
/// End-of-frame octet.
pub const FRAME_END: u8 = 0xCE;
/// The protocol header a 0-9-1 client opens with.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
/// A heartbeat frame.
pub const HEARTBEAT: [u8; 8] = [FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END];

/// (class, method) ids of the methods the hot paths look at.
pub mod ids {
    /// connection.close
    pub const CONNECTION_CLOSE: (u16, u16) = (10, 50);
    /// connection.close-ok
    pub const CONNECTION_CLOSE_OK: (u16, u16) = (10, 51);
    /// connection.blocked
    pub const CONNECTION_BLOCKED: (u16, u16) = (10, 60);
    /// connection.unblocked
    pub const CONNECTION_UNBLOCKED: (u16, u16) = (10, 61);
    /// channel.close
    pub const CHANNEL_CLOSE: (u16, u16) = (20, 40);
    /// basic.cancel (server-sent when the queue goes away)
    pub const BASIC_CANCEL: (u16, u16) = (60, 30);
    /// basic.cancel-ok
    pub const BASIC_CANCEL_OK: (u16, u16) = (60, 31);
    /// basic.return
    pub const BASIC_RETURN: (u16, u16) = (60, 50);
    /// basic.deliver
    pub const BASIC_DELIVER: (u16, u16) = (60, 60);
    /// basic.ack
    pub const BASIC_ACK: (u16, u16) = (60, 80);
    /// basic.nack
    pub const BASIC_NACK: (u16, u16) = (60, 120);
}

/// Broker address and credentials from an `amqp://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Virtual host.
    pub vhost: String,
}

impl Uri {
    /// Parses `amqp://[user[:password]@]host[:port][/vhost]` with the AMQP URI spec's
    /// defaults (guest/guest, port 5672, vhost `/`) and percent-decoding.
    pub fn parse(uri: &str) -> Result<Uri, String> {
        let rest = uri
            .strip_prefix("amqp://")
            .ok_or_else(|| format!("only amqp:// URIs are supported, got '{uri}'"))?;
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, vhost) = match rest.split_once('/') {
            Some((a, "")) => (a, "/".to_owned()),
            Some((a, v)) => (a, percent_decode(v)?),
            None => (rest, "/".to_owned()),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((n, p)) => (percent_decode(n)?, percent_decode(p)?),
                None => (percent_decode(u)?, String::new()),
            },
            None => ("guest".to_owned(), "guest".to_owned()),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, tail) = v6
                .split_once(']')
                .ok_or_else(|| format!("unterminated IPv6 address in '{uri}'"))?;
            (h, tail.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| format!("invalid port '{p}' in '{uri}'"))?,
            None => 5672,
        };
        Ok(Uri {
            host: if host.is_empty() { "localhost" } else { host }.to_owned(),
            port,
            user,
            password,
            vhost,
        })
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape in '{s}'"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' is not UTF-8 once decoded"))
}

/// One complete frame borrowed from a read buffer.
#[derive(Debug, Clone, Copy)]
pub struct RawFrame<'a> {
    /// Frame type octet.
    pub kind: u8,
    /// Channel number.
    pub channel: u16,
    /// Payload (between the 7-byte header and the end octet).
    pub payload: &'a [u8],
}

/// The frame starting at `buf[0]`, and its total length, if it is complete.
#[inline]
pub fn split_frame(buf: &[u8]) -> Result<Option<(RawFrame<'_>, usize)>, String> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    let total = size + 8;
    if buf.len() < total {
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(format!(
            "protocol error: frame of type {} and size {size} does not end with 0xCE",
            buf[0]
        ));
    }
    let frame = RawFrame {
        kind: buf[0],
        channel: u16::from_be_bytes([buf[1], buf[2]]),
        payload: &buf[7..total - 1],
    };
    Ok(Some((frame, total)))
}

/// The (class, method) ids of a method payload.
#[inline]
pub fn method_ids(payload: &[u8]) -> (u16, u16) {
    match payload {
        [a, b, c, d, ..] => (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d])),
        _ => (0, 0),
    }
}

/// Appends a method frame encoded by `amq-protocol`.
pub fn encode_method(out: &mut Vec<u8>, channel: u16, method: &AMQPClass) {
    let start = out.len();
    out.push(FRAME_METHOD);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    let buf = std::mem::take(out);
    let (buf, _) = cookie_factory::gen(amq_protocol::protocol::gen_class(method), buf)
        .expect("encoding into a Vec cannot fail");
    *out = buf;
    let size = (out.len() - start - 7) as u32;
    out[start + 3..start + 7].copy_from_slice(&size.to_be_bytes());
    out.push(FRAME_END);
}

/// Decodes a method payload with `amq-protocol`.
pub fn decode_method(payload: &[u8]) -> Result<AMQPClass, String> {
    nom::combinator::all_consuming(amq_protocol::protocol::parse_class)
        .parse(payload)
        .map(|(_, m)| m)
        .map_err(|_| {
            let (c, m) = method_ids(payload);
            format!("cannot decode method {c}.{m}")
        })
}

/// `"<code> <text>"` from a connection.close or channel.close payload.
pub fn close_reason(payload: &[u8]) -> String {
    match decode_method(payload) {
        Ok(AMQPClass::Connection(amq_protocol::protocol::connection::AMQPMethod::Close(c))) => {
            format!("{} {}", c.reply_code, c.reply_text)
        }
        Ok(AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Close(c))) => {
            format!("{} {}", c.reply_code, c.reply_text)
        }
        _ => "(undecodable close)".to_owned(),
    }
}

/// The wire bytes of one publish: `basic.publish` + content header + body frame(s).
///
/// Every message of a producer has the same exchange, routing key, properties and
/// size, so publishing is a copy of `bytes` with the body stamp written at `stamp_at`.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    /// Encoded frames with a zero body.
    pub bytes: Vec<u8>,
    /// Offset of the first body byte.
    pub stamp_at: usize,
}

impl PublishTemplate {
    /// Builds the template. Bodies larger than `frame_max - 8` are split over several
    /// body frames. `size` must be at least 1.
    pub fn new(
        channel: u16,
        exchange: &str,
        routing_key: &str,
        size: usize,
        persistent: bool,
        frame_max: u32,
    ) -> PublishTemplate {
        use amq_protocol::protocol::basic;
        let mut bytes = Vec::with_capacity(size + 128);
        encode_method(
            &mut bytes,
            channel,
            &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            })),
        );
        let mut props = basic::AMQPProperties::default();
        if persistent {
            props = props.with_delivery_mode(2);
        }
        let (props, _) = cookie_factory::gen(basic::gen_properties(&props), Vec::new())
            .expect("encoding into a Vec cannot fail");
        let header_len = 12 + props.len();
        bytes.push(FRAME_HEADER);
        bytes.extend_from_slice(&channel.to_be_bytes());
        bytes.extend_from_slice(&(header_len as u32).to_be_bytes());
        bytes.extend_from_slice(&60u16.to_be_bytes()); // class basic
        bytes.extend_from_slice(&0u16.to_be_bytes()); // weight
        bytes.extend_from_slice(&(size as u64).to_be_bytes());
        bytes.extend_from_slice(&props);
        bytes.push(FRAME_END);
        let max_payload = (frame_max.max(4096) as usize) - 8;
        let mut stamp_at = 0;
        let mut left = size;
        while left > 0 {
            let n = left.min(max_payload);
            bytes.push(FRAME_BODY);
            bytes.extend_from_slice(&channel.to_be_bytes());
            bytes.extend_from_slice(&(n as u32).to_be_bytes());
            if stamp_at == 0 {
                stamp_at = bytes.len();
            }
            bytes.resize(bytes.len() + n, 0);
            bytes.push(FRAME_END);
            left -= n;
        }
        PublishTemplate { bytes, stamp_at }
    }
}

/// Appends `basic.ack(tag, multiple)` on `channel` (a fixed 21-byte frame).
#[inline]
pub fn put_ack(out: &mut Vec<u8>, channel: u16, tag: u64, multiple: bool) {
    let ch = channel.to_be_bytes();
    out.extend_from_slice(&[FRAME_METHOD, ch[0], ch[1], 0, 0, 0, 13, 0, 60, 0, 80]);
    out.extend_from_slice(&tag.to_be_bytes());
    out.push(multiple as u8);
    out.push(FRAME_END);
}

/// The delivery tag of a `basic.deliver` payload (class/method ids included).
#[inline]
pub fn deliver_tag(payload: &[u8]) -> Option<u64> {
    // class(2) method(2) consumer-tag(shortstr) delivery-tag(u64) ...
    let tag_len = *payload.get(4)? as usize;
    let at = 5 + tag_len;
    let tag = payload.get(at..at + 8)?;
    Some(u64::from_be_bytes(tag.try_into().ok()?))
}

/// `(delivery_tag, multiple)` of a `basic.ack` or `basic.nack` payload.
#[inline]
pub fn ack_args(payload: &[u8]) -> Option<(u64, bool)> {
    let tag = payload.get(4..12)?;
    let flags = *payload.get(12)?;
    Some((u64::from_be_bytes(tag.try_into().ok()?), flags & 1 == 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_defaults_and_decoding() {
        let u = Uri::parse("amqp://guest:gu%40st@127.0.0.1:5699/%2f").unwrap();
        assert_eq!(
            (
                u.user.as_str(),
                u.password.as_str(),
                u.host.as_str(),
                u.port,
                u.vhost.as_str()
            ),
            ("guest", "gu@st", "127.0.0.1", 5699, "/")
        );
        let u = Uri::parse("amqp://broker").unwrap();
        assert_eq!(
            (u.user.as_str(), u.port, u.vhost.as_str()),
            ("guest", 5672, "/")
        );
        let u = Uri::parse("amqp://a:b@[::1]:1/v?heartbeat=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.vhost.as_str()), ("::1", 1, "v"));
        assert!(Uri::parse("amqps://x").is_err());
        assert!(Uri::parse("amqp://x:notaport").is_err());
    }

    fn frames(mut b: &[u8]) -> Vec<(u8, u16, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((f, n)) = split_frame(b).unwrap() {
            out.push((f.kind, f.channel, f.payload.to_vec()));
            b = &b[n..];
        }
        assert!(b.is_empty(), "trailing bytes");
        out
    }

    #[test]
    fn publish_template_round_trips_through_amq_protocol() {
        use amq_protocol::protocol::basic;
        let t = PublishTemplate::new(1, "ex", "rk", 10_000, true, 4096);
        let f = frames(&t.bytes);
        assert_eq!(f.len(), 5, "method, header, 3 body frames");
        match decode_method(&f[0].2).unwrap() {
            AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => {
                assert_eq!((p.exchange.as_str(), p.routing_key.as_str()), ("ex", "rk"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f[1].0, FRAME_HEADER);
        assert_eq!(&f[1].2[4..12], &10_000u64.to_be_bytes());
        let (_, props) = basic::parse_properties(&f[1].2[12..]).unwrap();
        assert_eq!(props.delivery_mode(), &Some(2));
        let sizes: Vec<usize> = f[2..].iter().map(|x| x.2.len()).collect();
        assert_eq!(sizes, vec![4088, 4088, 1824]);
        assert_eq!(t.stamp_at, t.bytes.len() - 3 * 8 - 10_000 + 7);
    }

    #[test]
    fn hot_decoders_agree_with_amq_protocol() {
        use amq_protocol::protocol::basic;
        let mut v = Vec::new();
        encode_method(
            &mut v,
            1,
            &AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "ctag-1".into(),
                delivery_tag: 77,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
            })),
        );
        let (f, _) = split_frame(&v).unwrap().unwrap();
        assert_eq!(method_ids(f.payload), ids::BASIC_DELIVER);
        assert_eq!(deliver_tag(f.payload), Some(77));

        let mut ours = Vec::new();
        put_ack(&mut ours, 3, 99, true);
        let mut theirs = Vec::new();
        encode_method(
            &mut theirs,
            3,
            &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 99,
                multiple: true,
            })),
        );
        assert_eq!(ours, theirs);
        let (f, _) = split_frame(&ours).unwrap().unwrap();
        assert_eq!(ack_args(f.payload), Some((99, true)));
    }

    #[test]
    fn split_frame_needs_whole_frame_and_end_octet() {
        let mut v = Vec::new();
        put_ack(&mut v, 1, 1, false);
        for cut in 0..v.len() {
            assert!(split_frame(&v[..cut]).unwrap().is_none());
        }
        *v.last_mut().unwrap() = 0;
        assert!(split_frame(&v).is_err());
    }
}
