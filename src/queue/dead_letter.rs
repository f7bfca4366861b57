//! Dead-lettering: the properties a dead-lettered message carries (`x-death` and
//! friends) and RabbitMQ's rule for dropping messages that cycle between queues.
//!
//! This follows RabbitMQ 3.10's `rabbit_dead_letter` exactly, quirks included,
//! because clients read these headers (retry counters are built on `x-death`
//! `count`):
//!
//! - one `x-death` entry per (queue, reason), each a table with `count` (long),
//!   `reason`, `queue`, `time` (timestamp, seconds), `exchange`, `routing-keys`
//!   (the publish routing key followed by the `CC` header's keys) and, when the
//!   message had a per-message TTL, `original-expiration`; the `expiration`
//!   property is removed so the message does not expire again in the next queue;
//! - dying again in the same queue for the same reason increments that entry's
//!   `count` and moves it to the front. Only the count changes: `time`,
//!   `exchange` and `routing-keys` keep their first values (RabbitMQ 3.13 updates
//!   them; 3.10 does not);
//! - a new (queue, reason) is put in front. The other entries go through 3.10's
//!   `group_by_queue_and_reason/1`, which reverses them when there are two or
//!   more: after `q1 → q2 → q3` the array reads `[q3, q1, q2]` (checked live
//!   against RabbitMQ 3.10.8);
//! - `x-first-death-reason`, `x-first-death-queue` and `x-first-death-exchange`
//!   are set when the message has no `x-death` yet. 3.10 has no `x-last-death-*`
//!   headers (3.13 added them);
//! - an `x-death` that is not an array (a client re-published it as a string) is
//!   replaced by a fresh one-entry array.
//!
//! Table keys come out in name order (amq-protocol's `FieldTable` is sorted);
//! RabbitMQ writes a first entry's keys unsorted. Readers look keys up by name.
//!
//! Pure functions over `AMQPProperties`: the queue actor calls them and republishes.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// basic.reject / basic.nack with `requeue = false`.
    Rejected,
    /// Its TTL (per-message or per-queue) ran out.
    Expired,
    /// Dropped from the head by `x-max-length`/`x-max-length-bytes`, or refused
    /// with `reject-publish-dlx`.
    Maxlen,
    /// Redelivered more often than `x-delivery-limit` (quorum queues).
    DeliveryLimit,
}

impl Reason {
    /// The value RabbitMQ writes in `x-death` `reason` and `x-first-death-reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Returns the properties a dead-lettered message carries.
///
/// `props` are the message's properties as it sat in `queue`; `exchange` and
/// `routing_keys` are the exchange and routing keys it was last published with
/// (RabbitMQ uses the first key, then adds the keys of the `CC` and `BCC`
/// headers); `now_secs` is the Unix time in seconds. The `CC` header is kept:
/// use [`republish_routing`] to get the keys to publish to the dead-letter
/// exchange with (it drops `CC` when the queue has a dead-letter routing key).
pub fn dead_letter_properties(
    props: &AMQPProperties,
    reason: Reason,
    queue: &str,
    exchange: &str,
    routing_keys: &[&str],
    now_secs: u64,
) -> AMQPProperties {
    let old_headers = props.headers().clone().unwrap_or_default();

    let mut death_keys: Vec<AMQPValue> = routing_keys
        .first()
        .map(|k| longstr(k.as_bytes()))
        .into_iter()
        .collect();
    death_keys.extend(header_routes(&old_headers).into_iter().map(longstr));

    let mut info = FieldTable::default();
    info.insert("reason".into(), longstr(reason.as_str().as_bytes()));
    info.insert("queue".into(), longstr(queue.as_bytes()));
    info.insert("time".into(), AMQPValue::Timestamp(now_secs));
    info.insert("exchange".into(), longstr(exchange.as_bytes()));
    info.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(death_keys)),
    );
    if let Some(exp) = props.expiration() {
        info.insert(
            "original-expiration".into(),
            longstr(exp.as_str().as_bytes()),
        );
    }

    let mut headers = old_headers.clone();
    let deaths = match old_headers.inner().get("x-death") {
        None => {
            // First death: its own top-level headers (rabbitmq-server#1332).
            headers.insert(
                "x-first-death-reason".into(),
                longstr(reason.as_str().as_bytes()),
            );
            headers.insert("x-first-death-queue".into(), longstr(queue.as_bytes()));
            headers.insert(
                "x-first-death-exchange".into(),
                longstr(exchange.as_bytes()),
            );
            vec![with_count(info, 1)]
        }
        Some(AMQPValue::FieldArray(entries)) => {
            let tables: Vec<&FieldTable> = entries
                .as_slice()
                .iter()
                .filter_map(|e| match e {
                    AMQPValue::FieldTable(t) => Some(t),
                    _ => None,
                })
                .collect();
            let me = (
                Val::Str(queue.as_bytes()),
                Val::Str(reason.as_str().as_bytes()),
            );
            let grouped = group_by_queue_and_reason(&tables);
            let (matches, others): (Vec<FieldTable>, Vec<FieldTable>) =
                grouped.into_iter().partition(|t| key_of(t) == some_key(me));
            let first = match matches.into_iter().next() {
                None => with_count(info, 1),
                Some(m) => {
                    let n = m.inner().get("count").and_then(super::args::int_value);
                    with_count(m, n.map_or(1, |n| n.saturating_add(1)))
                }
            };
            std::iter::once(first).chain(others).collect()
        }
        // Some client turned x-death into something else: start over (rabbitmq-server#767).
        Some(_) => vec![with_count(info, 1)],
    };
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(
            deaths
                .into_iter()
                .map(AMQPValue::FieldTable)
                .collect::<Vec<_>>(),
        )),
    );
    rebuild(props, Some(headers), false)
}

/// The properties and routing keys to publish a dead-lettered message to the
/// dead-letter exchange with.
///
/// With an `x-dead-letter-routing-key` the message goes out with that key alone
/// and its `CC` header is removed; without one it keeps `routing_key` and its `CC`
/// keys (RabbitMQ also keeps `BCC` keys it saw at publish time; WarrenMQ's
/// message keeps only its routing key, so those are lost).
pub fn republish_routing(
    props: AMQPProperties,
    routing_key: &str,
    dead_letter_routing_key: Option<&str>,
) -> (AMQPProperties, Vec<String>) {
    match dead_letter_routing_key {
        Some(rk) => {
            let props = match props.headers() {
                Some(h) if h.contains_key("CC") => {
                    let kept: std::collections::BTreeMap<ShortString, AMQPValue> = h
                        .inner()
                        .iter()
                        .filter(|(k, _)| k.as_str() != "CC")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    rebuild(&props, Some(FieldTable::from(kept)), true)
                }
                _ => props,
            };
            (props, vec![rk.to_string()])
        }
        None => {
            let mut keys = vec![routing_key.to_string()];
            if let Some(h) = props.headers() {
                keys.extend(
                    route_list(h, "CC")
                        .into_iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                );
            }
            (props, keys)
        }
    }
}

/// Whether publishing the dead-lettered message to `target_queue` closes a cycle
/// that RabbitMQ drops (`rabbit_dead_letter:detect_cycles/3`).
///
/// `props` are the dead-lettered properties (the output of
/// [`dead_letter_properties`], so the newest death is included). Rejections are
/// never cycles. Otherwise the message cycles when `target_queue` already
/// appears in `x-death` and no entry up to and including the first one for
/// `target_queue` has reason `rejected`: a loop that only expiry or length
/// limits drive would never end, while one that goes through a client reject
/// is under the client's control.
pub fn is_cycle(props: &AMQPProperties, target_queue: &str, reason: Reason) -> bool {
    if reason == Reason::Rejected {
        return false;
    }
    let Some(AMQPValue::FieldArray(deaths)) = props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
    else {
        return false;
    };
    let deaths = deaths.as_slice();
    let is_target = |d: &AMQPValue| match d {
        AMQPValue::FieldTable(t) => {
            t.inner().get("queue").and_then(str_bytes) == Some(target_queue.as_bytes())
        }
        _ => false,
    };
    let Some(pos) = deaths.iter().position(is_target) else {
        return false;
    };
    deaths[..=pos].iter().all(|d| match d {
        AMQPValue::FieldTable(t) => {
            t.inner().get("reason").and_then(str_bytes) != Some(b"rejected".as_slice())
        }
        // Something a client put there: the cycle is not fully automatic.
        _ => false,
    })
}

/// The value part of an `x-death` key, compared as RabbitMQ does (value only).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Val<'a> {
    Str(&'a [u8]),
    Other(&'a AMQPValue),
}

type Key<'a> = (Option<Val<'a>>, Option<Val<'a>>);

fn some_key<'a>(k: (Val<'a>, Val<'a>)) -> Key<'a> {
    (Some(k.0), Some(k.1))
}

fn val(v: &AMQPValue) -> Val<'_> {
    str_bytes(v).map_or(Val::Other(v), Val::Str)
}

fn key_of(t: &FieldTable) -> Key<'_> {
    (
        t.inner().get("queue").map(val),
        t.inner().get("reason").map(val),
    )
}

/// 3.10's `group_by_queue_and_reason/1`: merges duplicate (queue, reason) entries
/// left by brokers before rabbitmq-server#78, keeping the first of each with
/// `count` defaulting to the number of duplicates. With two or more entries the
/// result comes out reversed (RabbitMQ builds it by prepending), and so does
/// the rest of the `x-death` array after a new death.
fn group_by_queue_and_reason(tables: &[&FieldTable]) -> Vec<FieldTable> {
    if tables.len() <= 1 {
        return tables.iter().map(|t| (*t).clone()).collect();
    }
    let mut seen: Vec<Key<'_>> = Vec::new();
    let mut acc: Vec<FieldTable> = Vec::new(); // in RabbitMQ's order, front first
    for t in tables {
        let key = key_of(t);
        let mut matches = tables.iter().filter(|o| key_of(o) == key);
        let first = matches.next().expect("a table matches itself");
        let n = 1 + matches.count() as i64;
        let augmented = if first.contains_key("count") {
            (*first).clone()
        } else {
            with_count((*first).clone(), n)
        };
        if acc.is_empty() {
            acc.push(augmented);
        } else if !seen.contains(&key) {
            acc.insert(0, augmented);
        }
        seen.push(key);
    }
    acc
}

fn with_count(mut t: FieldTable, n: i64) -> FieldTable {
    t.insert("count".into(), AMQPValue::LongLongInt(n));
    t
}

fn longstr(s: &[u8]) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_vec()))
}

fn str_bytes(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// The longstr keys of a `CC`/`BCC` header array.
fn route_list<'a>(headers: &'a FieldTable, name: &str) -> Vec<&'a [u8]> {
    match headers.inner().get(name) {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().iter().filter_map(str_bytes).collect(),
        _ => Vec::new(),
    }
}

/// `rabbit_basic:header_routes/1`: the `CC` then `BCC` keys.
fn header_routes(headers: &FieldTable) -> Vec<&[u8]> {
    let mut keys = route_list(headers, "CC");
    keys.extend(route_list(headers, "BCC"));
    keys
}

/// A copy of `props` with `headers` and, unless `keep_expiration`, no `expiration`
/// (amq-protocol has setters but no way to clear a property).
fn rebuild(
    props: &AMQPProperties,
    headers: Option<FieldTable>,
    keep_expiration: bool,
) -> AMQPProperties {
    let mut p = AMQPProperties::default();
    macro_rules! copy {
        ($get:ident, $set:ident) => {
            if let Some(v) = props.$get() {
                p = p.$set(v.clone());
            }
        };
    }
    copy!(content_type, with_content_type);
    copy!(content_encoding, with_content_encoding);
    copy!(delivery_mode, with_delivery_mode);
    copy!(priority, with_priority);
    copy!(correlation_id, with_correlation_id);
    copy!(reply_to, with_reply_to);
    copy!(message_id, with_message_id);
    copy!(timestamp, with_timestamp);
    copy!(kind, with_type);
    copy!(user_id, with_user_id);
    copy!(app_id, with_app_id);
    copy!(cluster_id, with_cluster_id);
    if keep_expiration {
        copy!(expiration, with_expiration);
    }
    if let Some(h) = headers {
        p = p.with_headers(h);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls(s: &str) -> AMQPValue {
        longstr(s.as_bytes())
    }

    fn headers(p: &AMQPProperties) -> &FieldTable {
        p.headers().as_ref().expect("headers")
    }

    fn deaths(p: &AMQPProperties) -> Vec<FieldTable> {
        match headers(p).inner().get("x-death") {
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .map(|v| match v {
                    AMQPValue::FieldTable(t) => t.clone(),
                    other => panic!("not a table: {other:?}"),
                })
                .collect(),
            other => panic!("x-death: {other:?}"),
        }
    }

    fn get<'a>(t: &'a FieldTable, k: &str) -> &'a AMQPValue {
        t.inner()
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in {t:?}"))
    }

    /// (queue, reason, count) of each x-death entry, front first.
    fn summary(p: &AMQPProperties) -> Vec<(String, String, i64)> {
        deaths(p)
            .iter()
            .map(|t| {
                let s = |k| String::from_utf8(str_bytes(get(t, k)).unwrap().to_vec()).unwrap();
                let AMQPValue::LongLongInt(n) = get(t, "count") else {
                    panic!("count is not a long")
                };
                (s("queue"), s("reason"), *n)
            })
            .collect()
    }

    fn published() -> AMQPProperties {
        let mut h = FieldTable::default();
        h.insert("h".into(), AMQPValue::LongInt(1));
        h.insert("CC".into(), AMQPValue::FieldArray(vec![ls("cc1")].into()));
        AMQPProperties::default()
            .with_expiration("50".into())
            .with_headers(h)
            .with_delivery_mode(2)
            .with_priority(3)
            .with_message_id("m1".into())
            .with_type("t".into())
    }

    #[test]
    fn first_death() {
        let p = dead_letter_properties(
            &published(),
            Reason::Expired,
            "d1",
            "ex",
            &["rk"],
            1_700_000_000,
        );
        // Captured from RabbitMQ 3.10.8 (via pika):
        // {'count': 1, 'reason': 'expired', 'queue': 'd1', 'time': <ts>, 'exchange': '',
        //  'routing-keys': ['d1', 'cc1'], 'original-expiration': '50'}
        let d = deaths(&p);
        assert_eq!(d.len(), 1);
        let e = &d[0];
        assert_eq!(get(e, "count"), &AMQPValue::LongLongInt(1));
        assert_eq!(get(e, "reason"), &ls("expired"));
        assert_eq!(get(e, "queue"), &ls("d1"));
        assert_eq!(get(e, "time"), &AMQPValue::Timestamp(1_700_000_000));
        assert_eq!(get(e, "exchange"), &ls("ex"));
        assert_eq!(
            get(e, "routing-keys"),
            &AMQPValue::FieldArray(vec![ls("rk"), ls("cc1")].into())
        );
        assert_eq!(get(e, "original-expiration"), &ls("50"));
        assert_eq!(e.inner().len(), 7);
        let h = headers(&p);
        assert_eq!(get(h, "x-first-death-reason"), &ls("expired"));
        assert_eq!(get(h, "x-first-death-queue"), &ls("d1"));
        assert_eq!(get(h, "x-first-death-exchange"), &ls("ex"));
        assert!(
            !h.contains_key("x-last-death-reason"),
            "3.10 has no x-last-death-*"
        );
        assert_eq!(get(h, "h"), &AMQPValue::LongInt(1));
        assert!(h.contains_key("CC"), "CC stays until republish_routing");
        // The per-message TTL is gone, everything else is kept.
        assert_eq!(p.expiration(), &None);
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.priority(), &Some(3));
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("m1"));
        assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("t"));
    }

    #[test]
    fn no_expiration_no_original_expiration_and_no_headers_needed() {
        let p = dead_letter_properties(
            &AMQPProperties::default(),
            Reason::Rejected,
            "q",
            "",
            &["q"],
            5,
        );
        let d = deaths(&p);
        assert!(!d[0].contains_key("original-expiration"));
        assert_eq!(
            get(&d[0], "routing-keys"),
            &AMQPValue::FieldArray(vec![ls("q")].into())
        );
        assert_eq!(summary(&p), vec![("q".into(), "rejected".into(), 1)]);
    }

    #[test]
    fn same_queue_and_reason_increments_count_and_keeps_first_time() {
        // RabbitMQ 3.10.8: rejected twice from 'dr' → count 2, time of the first death.
        let p1 = dead_letter_properties(
            &AMQPProperties::default(),
            Reason::Rejected,
            "dr",
            "",
            &["dr"],
            100,
        );
        let p2 =
            dead_letter_properties(&p1, Reason::Rejected, "dr", "other-ex", &["other-rk"], 200);
        assert_eq!(summary(&p2), vec![("dr".into(), "rejected".into(), 2)]);
        let e = &deaths(&p2)[0];
        assert_eq!(get(e, "time"), &AMQPValue::Timestamp(100));
        assert_eq!(get(e, "exchange"), &ls(""));
        assert_eq!(
            get(e, "routing-keys"),
            &AMQPValue::FieldArray(vec![ls("dr")].into())
        );
        assert_eq!(get(headers(&p2), "x-first-death-exchange"), &ls(""));
        let p3 = dead_letter_properties(&p2, Reason::Rejected, "dr", "", &["dr"], 300);
        assert_eq!(summary(&p3), vec![("dr".into(), "rejected".into(), 3)]);
    }

    #[test]
    fn a_new_reason_goes_in_front() {
        let p1 = dead_letter_properties(
            &AMQPProperties::default(),
            Reason::Rejected,
            "q",
            "",
            &["q"],
            1,
        );
        let p2 = dead_letter_properties(&p1, Reason::Expired, "q", "", &["q"], 2);
        assert_eq!(
            summary(&p2),
            vec![
                ("q".into(), "expired".into(), 1),
                ("q".into(), "rejected".into(), 1)
            ]
        );
        // First-death headers are set once.
        assert_eq!(get(headers(&p2), "x-first-death-reason"), &ls("rejected"));
        // An old entry that dies again moves to the front.
        let p3 = dead_letter_properties(&p2, Reason::Rejected, "q", "", &["q"], 3);
        assert_eq!(
            summary(&p3),
            vec![
                ("q".into(), "rejected".into(), 2),
                ("q".into(), "expired".into(), 1)
            ]
        );
    }

    #[test]
    fn three_hops_come_out_in_rabbitmq_310_order() {
        // Live RabbitMQ 3.10.8: d1 -(expired)-> d2 -(expired)-> d3 -(expired)-> d4
        // gives x-death [d3, d1, d2]: 3.10 reverses the older entries.
        let p1 = dead_letter_properties(&published(), Reason::Expired, "d1", "", &["d1"], 1);
        let (p1, keys) = republish_routing(p1, "d1", Some("d2"));
        assert_eq!(keys, vec!["d2".to_string()]);
        let p2 = dead_letter_properties(&p1, Reason::Expired, "d2", "", &["d2"], 2);
        let p3 = dead_letter_properties(&p2, Reason::Expired, "d3", "", &["d3"], 3);
        let order: Vec<String> = summary(&p3).into_iter().map(|(q, _, _)| q).collect();
        assert_eq!(order, ["d3", "d1", "d2"]);
        let d = deaths(&p3);
        // d1's entry kept its CC key and original expiration; the others have neither.
        assert_eq!(
            get(&d[1], "routing-keys"),
            &AMQPValue::FieldArray(vec![ls("d1"), ls("cc1")].into())
        );
        assert_eq!(get(&d[1], "original-expiration"), &ls("50"));
        assert!(!d[0].contains_key("original-expiration"));
        assert_eq!(
            get(&d[2], "routing-keys"),
            &AMQPValue::FieldArray(vec![ls("d2")].into())
        );
        assert!(
            !headers(&p3).contains_key("CC"),
            "removed at the first republish with a DLX routing key"
        );
        assert_eq!(get(headers(&p3), "x-first-death-queue"), &ls("d1"));
    }

    #[test]
    fn republish_without_dead_letter_routing_key_keeps_cc() {
        let p = dead_letter_properties(&published(), Reason::Expired, "dcc_t", "", &["dcc_t"], 1);
        let (p, keys) = republish_routing(p, "dcc_t", None);
        assert_eq!(keys, vec!["dcc_t".to_string(), "cc1".to_string()]);
        assert!(headers(&p).contains_key("CC"));
        assert_eq!(p.expiration(), &None);
    }

    #[test]
    fn invalid_x_death_is_reset() {
        let mut h = FieldTable::default();
        h.insert("x-death".into(), ls("garbage"));
        let p = AMQPProperties::default().with_headers(h);
        let p = dead_letter_properties(&p, Reason::Maxlen, "q", "", &["q"], 1);
        assert_eq!(summary(&p), vec![("q".into(), "maxlen".into(), 1)]);
        assert!(
            !headers(&p).contains_key("x-first-death-reason"),
            "RabbitMQ does not set it here"
        );
    }

    #[test]
    fn legacy_duplicate_entries_are_merged() {
        // Entries from brokers before rabbitmq-server#78: one per death, no count.
        // Same result as RabbitMQ 3.10.8 given these headers.
        let entry = |q: &str, r: &str| {
            let mut t = FieldTable::default();
            t.insert("queue".into(), ls(q));
            t.insert("reason".into(), ls(r));
            AMQPValue::FieldTable(t)
        };
        let mut h = FieldTable::default();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(
                vec![
                    entry("a", "expired"),
                    entry("a", "expired"),
                    entry("b", "expired"),
                ]
                .into(),
            ),
        );
        let p = AMQPProperties::default().with_headers(h);
        let p = dead_letter_properties(&p, Reason::Maxlen, "c", "", &["c"], 1);
        assert_eq!(
            summary(&p),
            vec![
                ("c".into(), "maxlen".into(), 1),
                ("b".into(), "expired".into(), 1),
                ("a".into(), "expired".into(), 2),
            ]
        );
    }

    #[test]
    fn delivery_limit_reason() {
        assert_eq!(Reason::DeliveryLimit.as_str(), "delivery_limit");
        let p = dead_letter_properties(
            &AMQPProperties::default(),
            Reason::DeliveryLimit,
            "qq",
            "",
            &["qq"],
            1,
        );
        assert_eq!(
            get(headers(&p), "x-first-death-reason"),
            &ls("delivery_limit")
        );
    }

    #[test]
    fn cycles() {
        // Expiring into itself: dropped (RabbitMQ 3.10.8 drops it: the queue stays empty).
        let p = dead_letter_properties(
            &AMQPProperties::default(),
            Reason::Expired,
            "self",
            "",
            &["self"],
            1,
        );
        assert!(is_cycle(&p, "self", Reason::Expired));
        assert!(!is_cycle(&p, "elsewhere", Reason::Expired));
        // Rejections are never cycles.
        let r = dead_letter_properties(
            &AMQPProperties::default(),
            Reason::Rejected,
            "self",
            "",
            &["self"],
            1,
        );
        assert!(!is_cycle(&r, "self", Reason::Rejected));
        // a -(rejected)-> b -(expired)-> a: a client reject is part of the loop, so no
        // cycle (RabbitMQ 3.10.8 delivers it back to a).
        let p = dead_letter_properties(
            &AMQPProperties::default(),
            Reason::Rejected,
            "a",
            "",
            &["a"],
            1,
        );
        let p = dead_letter_properties(&p, Reason::Expired, "b", "", &["b"], 2);
        assert!(!is_cycle(&p, "a", Reason::Expired));
        // a -(expired)-> b -(maxlen)-> a: fully automatic, dropped.
        let p = dead_letter_properties(
            &AMQPProperties::default(),
            Reason::Expired,
            "a",
            "",
            &["a"],
            1,
        );
        let p = dead_letter_properties(&p, Reason::Maxlen, "b", "", &["b"], 2);
        assert!(is_cycle(&p, "a", Reason::Maxlen));
        assert!(is_cycle(&p, "b", Reason::Maxlen));
        // No headers, or no x-death: no cycle.
        assert!(!is_cycle(&AMQPProperties::default(), "a", Reason::Expired));
        // A rejection further back than the target does not matter.
        let p = dead_letter_properties(
            &AMQPProperties::default(),
            Reason::Rejected,
            "z",
            "",
            &["z"],
            1,
        );
        let p = dead_letter_properties(&p, Reason::Expired, "a", "", &["a"], 2);
        assert!(is_cycle(&p, "a", Reason::Expired));
    }
}
