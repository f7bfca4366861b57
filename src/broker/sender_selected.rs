//! Sender-selected distribution: the `CC` and `BCC` headers (RabbitMQ's
//! `rabbit_basic:header_routes/1`).
//!
//! A message whose headers hold `CC` and/or `BCC` arrays of strings is routed
//! with its routing key **and** each of those keys, as one routing decision (the
//! alternate exchange is used only if no key matched anything). `BCC` is removed
//! from the headers before the message is enqueued; `CC` stays. Array elements
//! that are not strings are ignored. A `CC`/`BCC` header that is not an array
//! fails the publish:
//! `PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,"CC",longstr}`.
//!
//! The body is never copied: stripping `BCC` re-encodes only the properties,
//! once per publish.

use crate::message::Message;
use crate::protocol::{AmqpError, AmqpResult};
use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use std::borrow::Cow;
use std::sync::Arc;

/// The headers that carry extra routing keys, in RabbitMQ's order.
const ROUTING_HEADERS: [&str; 2] = ["CC", "BCC"];

/// Refuses a publish whose `CC` or `BCC` header is not an array (checked with
/// the other publish checks, before routing).
pub fn check_headers(props: &AMQPProperties) -> AmqpResult<()> {
    let Some(headers) = props.headers() else {
        return Ok(());
    };
    for name in ROUTING_HEADERS {
        match headers.inner().get(name) {
            None | Some(AMQPValue::FieldArray(_)) => {}
            Some(other) => {
                return Err(AmqpError::precondition(format_args!(
                    "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                    crate::queue::args::type_name(other)
                )))
            }
        }
    }
    Ok(())
}

/// Whether the headers name extra routing keys or carry a `BCC` to strip.
pub fn has_routing_headers(headers: Option<&FieldTable>) -> bool {
    headers.is_some_and(|h| ROUTING_HEADERS.iter().any(|k| h.contains_key(k)))
}

/// The `CC` then `BCC` keys of `headers` (string elements only).
pub fn extra_keys(headers: &FieldTable) -> Vec<Cow<'_, str>> {
    let mut keys = Vec::new();
    for name in ROUTING_HEADERS {
        if let Some(AMQPValue::FieldArray(a)) = headers.inner().get(name) {
            for v in a.as_slice() {
                match v {
                    AMQPValue::LongString(s) => keys.push(String::from_utf8_lossy(s.as_bytes())),
                    AMQPValue::ShortString(s) => keys.push(Cow::Borrowed(s.as_str())),
                    _ => {}
                }
            }
        }
    }
    keys
}

/// `msg` without its `BCC` header (the same `Arc` when it has none). The body
/// is shared; the properties are encoded once.
pub fn strip_bcc(msg: &Arc<Message>) -> Arc<Message> {
    match msg.headers() {
        Some(h) if h.contains_key("BCC") => {
            let kept = FieldTable::from(without_bcc(h));
            msg.with_properties(msg.properties.clone().with_headers(kept))
        }
        _ => msg.clone(),
    }
}

/// A copy of `headers` without `BCC`.
pub fn without_bcc(headers: &FieldTable) -> std::collections::BTreeMap<ShortString, AMQPValue> {
    headers
        .inner()
        .iter()
        .filter(|(k, _)| k.as_str() != "BCC")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, AMQPValue)]) -> AMQPProperties {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        AMQPProperties::default().with_headers(t)
    }

    fn arr(items: &[AMQPValue]) -> AMQPValue {
        AMQPValue::FieldArray(items.to_vec().into())
    }

    fn ls(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.into())
    }

    #[test]
    fn non_array_routing_headers_are_refused_with_rabbitmqs_text() {
        assert!(check_headers(&AMQPProperties::default()).is_ok());
        assert!(check_headers(&props(&[("CC", arr(&[ls("a")]))])).is_ok());
        let e = check_headers(&props(&[("CC", ls("a"))])).unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,\"CC\",longstr}"
        );
        let e = check_headers(&props(&[("BCC", AMQPValue::LongInt(5))])).unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,\"BCC\",signedint}"
        );
    }

    #[test]
    fn extra_keys_are_cc_then_bcc_strings_only() {
        let p = props(&[
            ("BCC", arr(&[ls("b1")])),
            ("CC", arr(&[ls("c1"), AMQPValue::LongInt(5), ls("c2")])),
        ]);
        let h = p.headers().as_ref().unwrap();
        assert!(has_routing_headers(Some(h)));
        assert_eq!(extra_keys(h), vec!["c1", "c2", "b1"]);
        assert!(!has_routing_headers(None));
    }

    #[test]
    fn strip_bcc_keeps_everything_else_and_shares_the_body() {
        let p = props(&[("BCC", arr(&[ls("b")])), ("CC", arr(&[ls("c")]))]);
        let header = crate::protocol::codec::content_header(3, p);
        let msg = Message::new("x", "k", header, bytes::Bytes::from_static(b"abc"));
        let stripped = strip_bcc(&msg);
        let h = stripped.headers().unwrap();
        assert!(!h.contains_key("BCC"));
        assert!(h.contains_key("CC"));
        assert_eq!(stripped.body.as_ptr(), msg.body.as_ptr());
        assert_eq!(
            crate::protocol::codec::decode_properties(&stripped.raw_properties)
                .unwrap()
                .headers(),
            stripped.properties.headers()
        );
        // Without BCC: the same message.
        assert!(Arc::ptr_eq(&strip_bcc(&stripped), &stripped));
    }
}
