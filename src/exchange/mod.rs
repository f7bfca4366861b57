//! Binding tables and routing for the four AMQP exchange types.
//!
//! This module owns one thing: given an exchange's bindings, which destinations
//! does a message with this routing key (and these headers) go to? It is pure
//! data, with no I/O, no locks, no tasks and no awaits. The broker wraps each
//! [`Bindings`] in its exchange's lock, calls [`Bindings::validate_args`] before
//! [`Bindings::bind`], and turns the destinations (queues, or exchanges for e2e
//! bindings) into enqueues, recursing through exchange destinations itself.
//!
//! [`Bindings`] keeps two views of the same set of bindings:
//! - a per-destination index `dest → routing key → [args]` that answers
//!   [`Bindings::contains`], [`Bindings::has_destination`], [`Bindings::iter`]
//!   and makes [`Bindings::unbind_all`] cheap;
//! - a routing table specialised for the exchange kind ([`direct`],
//!   [`fanout`], [`topic`], [`headers`]), which is all that the hot path reads.
//!
//! Invariant: a binding is identified by `(dest, routing_key, args)` as in
//! RabbitMQ (arguments are compared with their types, so `1` as a 32-bit int
//! and `1` as a 64-bit int are different bindings). Both views hold exactly the
//! same bindings; the direct, fanout and topic tables keep a reference count
//! per destination so that two bindings that differ only in arguments route
//! once and unbinding one of them keeps the other.

mod direct;
mod fanout;
mod headers;
mod topic;

use std::collections::HashMap;
use std::hash::Hash;

use amq_protocol::types::{AMQPValue, FieldTable};

/// The exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Routes on exact routing-key equality.
    Direct,
    /// Routes to every bound destination, ignoring the routing key.
    Fanout,
    /// Routes on dot-separated routing-key patterns with `*` and `#`.
    Topic,
    /// Routes on message headers matched against binding arguments.
    Headers,
}

impl ExchangeKind {
    /// Parses the AMQP type name (`"direct"`, `"fanout"`, `"topic"`, `"headers"`);
    /// case-sensitive, as in RabbitMQ.
    pub fn parse(s: &str) -> Option<ExchangeKind> {
        match s {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    /// The AMQP type name, as sent in `exchange.declare`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// The routing table of one exchange kind.
#[derive(Debug, Clone)]
enum Table<D> {
    Direct(direct::DirectTable<D>),
    Fanout(fanout::FanoutTable<D>),
    Topic(topic::TopicTable<D>),
    Headers(headers::HeadersTable<D>),
}

/// A binding table for one exchange, generic over the destination type `D`
/// (the broker uses an enum of queue handle / exchange name).
#[derive(Debug, Clone)]
pub struct Bindings<D> {
    kind: ExchangeKind,
    table: Table<D>,
    /// Every binding: destination → routing key → distinct argument tables.
    by_dest: HashMap<D, HashMap<Box<str>, Vec<FieldTable>>>,
    len: usize,
}

impl<D: Clone + Eq + Hash> Bindings<D> {
    /// An empty binding table for an exchange of `kind`.
    pub fn new(kind: ExchangeKind) -> Self {
        let table = match kind {
            ExchangeKind::Direct => Table::Direct(direct::DirectTable::new()),
            ExchangeKind::Fanout => Table::Fanout(fanout::FanoutTable::new()),
            ExchangeKind::Topic => Table::Topic(topic::TopicTable::new()),
            ExchangeKind::Headers => Table::Headers(headers::HeadersTable::new()),
        };
        Bindings {
            kind,
            table,
            by_dest: HashMap::new(),
            len: 0,
        }
    }

    /// The exchange kind this table routes for.
    pub fn kind(&self) -> ExchangeKind {
        self.kind
    }

    /// Validates binding arguments (headers exchange: the `x-match` value).
    ///
    /// `Err(text)` carries RabbitMQ's reply text for a 406 PRECONDITION_FAILED,
    /// without the `"PRECONDITION_FAILED - "` prefix.
    pub fn validate_args(kind: ExchangeKind, args: &FieldTable) -> Result<(), String> {
        match kind {
            ExchangeKind::Headers => headers::validate_args(args),
            ExchangeKind::Direct | ExchangeKind::Fanout | ExchangeKind::Topic => Ok(()),
        }
    }

    /// Adds a binding; returns false if the identical `(dest, key, args)`
    /// binding already existed (idempotent, as RabbitMQ).
    ///
    /// Does not validate: call [`Bindings::validate_args`] first. A headers
    /// binding with an invalid `x-match` matches as `all` (RabbitMQ's fallback).
    pub fn bind(&mut self, dest: D, routing_key: &str, args: &FieldTable) -> bool {
        let keys = self.by_dest.entry(dest.clone()).or_default();
        let list = match keys.get_mut(routing_key) {
            Some(list) => list,
            None => keys.entry(routing_key.into()).or_default(),
        };
        if list.iter().any(|a| args_identical(a, args)) {
            return false;
        }
        list.push(args.clone());
        self.len += 1;
        match &mut self.table {
            Table::Direct(t) => t.add(dest, routing_key),
            Table::Fanout(t) => t.add(dest),
            Table::Topic(t) => t.add(dest, routing_key),
            Table::Headers(t) => t.add(dest, args),
        }
        true
    }

    /// Removes a binding; returns false if it did not exist.
    pub fn unbind(&mut self, dest: &D, routing_key: &str, args: &FieldTable) -> bool {
        let Some(keys) = self.by_dest.get_mut(dest) else {
            return false;
        };
        let Some(list) = keys.get_mut(routing_key) else {
            return false;
        };
        let Some(pos) = list.iter().position(|a| args_identical(a, args)) else {
            return false;
        };
        list.remove(pos);
        if list.is_empty() {
            keys.remove(routing_key);
            if keys.is_empty() {
                self.by_dest.remove(dest);
            }
        }
        self.len -= 1;
        match &mut self.table {
            Table::Direct(t) => t.remove(dest, routing_key),
            Table::Fanout(t) => t.remove(dest),
            Table::Topic(t) => t.remove(dest, routing_key),
            Table::Headers(t) => t.remove(dest, args),
        }
        true
    }

    /// Removes every binding to `dest` (queue or exchange deleted); returns how many.
    pub fn unbind_all(&mut self, dest: &D) -> usize {
        let Some(keys) = self.by_dest.remove(dest) else {
            return 0;
        };
        let removed: usize = keys.values().map(Vec::len).sum();
        self.len -= removed;
        match &mut self.table {
            Table::Direct(t) => keys.keys().for_each(|k| t.remove_dest(dest, k)),
            Table::Fanout(t) => t.remove_dest(dest),
            Table::Topic(t) => keys.keys().for_each(|k| t.remove_dest(dest, k)),
            Table::Headers(t) => t.remove_dest(dest),
        }
        removed
    }

    /// Whether the binding `(dest, key, args)` exists (for `queue.bind`
    /// idempotence and passive checks).
    pub fn contains(&self, dest: &D, routing_key: &str, args: &FieldTable) -> bool {
        self.by_dest
            .get(dest)
            .and_then(|keys| keys.get(routing_key))
            .is_some_and(|list| list.iter().any(|a| args_identical(a, args)))
    }

    /// Whether any binding to `dest` exists.
    pub fn has_destination(&self, dest: &D) -> bool {
        self.by_dest.contains_key(dest)
    }

    /// Appends every matching destination to `out`.
    ///
    /// Hot path: no allocation when nothing matches (the topic table keeps a
    /// per-thread scratch buffer that is allocated once per thread), no
    /// `String`s, no `format!`. May push the same destination more than once
    /// (the caller dedups); order is unspecified.
    pub fn route(&self, routing_key: &str, headers: Option<&FieldTable>, out: &mut Vec<D>) {
        match &self.table {
            Table::Direct(t) => t.route(routing_key, out),
            Table::Fanout(t) => t.route(out),
            Table::Topic(t) => t.route(routing_key, out),
            Table::Headers(t) => t.route(headers, out),
        }
    }

    /// The number of bindings.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bindings.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every binding as `(dest, routing_key, args)`, in unspecified order, for
    /// the management API and the definitions file.
    pub fn iter(&self) -> impl Iterator<Item = (&D, &str, &FieldTable)> {
        self.by_dest.iter().flat_map(|(dest, keys)| {
            keys.iter()
                .flat_map(move |(key, list)| list.iter().map(move |args| (dest, &**key, args)))
        })
    }
}

/// Destinations with a reference count each: one entry per destination, the
/// count being how many bindings (differing in arguments or key) lead to it.
///
/// Linear scans: the number of destinations behind one direct key or one topic
/// pattern is small in practice, and binding is not on the hot path.
#[derive(Debug, Clone)]
struct DestSet<D> {
    entries: Vec<(D, u32)>,
}

impl<D> Default for DestSet<D> {
    fn default() -> Self {
        DestSet {
            entries: Vec::new(),
        }
    }
}

impl<D: Clone + Eq> DestSet<D> {
    /// Counts one more binding to `dest`.
    fn add(&mut self, dest: D) {
        match self.entries.iter_mut().find(|(d, _)| *d == dest) {
            Some((_, count)) => *count += 1,
            None => self.entries.push((dest, 1)),
        }
    }

    /// Counts one binding less to `dest`, dropping it at zero.
    fn remove(&mut self, dest: &D) {
        if let Some(pos) = self.entries.iter().position(|(d, _)| d == dest) {
            let count = &mut self.entries[pos].1;
            *count -= 1;
            if *count == 0 {
                self.entries.remove(pos);
            }
        }
    }

    /// Drops `dest` whatever its count.
    fn remove_all(&mut self, dest: &D) {
        self.entries.retain(|(d, _)| d != dest);
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends each destination once; does not touch `out` when empty.
    fn push_into(&self, out: &mut Vec<D>) {
        out.extend(self.entries.iter().map(|(d, _)| d.clone()));
    }
}

/// Binding identity for arguments: structural equality including AMQP types
/// (as Erlang term equality on RabbitMQ's typed field tables), with floats
/// compared bit for bit so that a NaN argument can still be unbound.
fn args_identical(a: &FieldTable, b: &FieldTable) -> bool {
    let (a, b) = (a.inner(), b.inner());
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && value_identical(va, vb))
}

fn value_identical(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (a, b) {
        (AMQPValue::Float(x), AMQPValue::Float(y)) => x.to_bits() == y.to_bits(),
        (AMQPValue::Double(x), AMQPValue::Double(y)) => x.to_bits() == y.to_bits(),
        (AMQPValue::FieldTable(x), AMQPValue::FieldTable(y)) => args_identical(x, y),
        (AMQPValue::FieldArray(x), AMQPValue::FieldArray(y)) => {
            let (x, y) = (x.as_slice(), y.as_slice());
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| value_identical(x, y))
        }
        _ => a == b,
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use amq_protocol::types::{AMQPValue, FieldTable};

    /// Builds a field table from `(key, value)` pairs.
    pub(crate) fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    /// A long-string value.
    pub(crate) fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    /// Routes and returns the sorted, deduplicated destinations.
    pub(crate) fn routed<D: Clone + Eq + std::hash::Hash + Ord>(
        b: &super::Bindings<D>,
        key: &str,
        headers: Option<&FieldTable>,
    ) -> Vec<D> {
        let mut out = Vec::new();
        b.route(key, headers, &mut out);
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{routed, s, table};
    use super::*;

    const KINDS: [ExchangeKind; 4] = [
        ExchangeKind::Direct,
        ExchangeKind::Fanout,
        ExchangeKind::Topic,
        ExchangeKind::Headers,
    ];

    #[test]
    fn kind_parse_and_as_str_round_trip() {
        for kind in KINDS {
            assert_eq!(ExchangeKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ExchangeKind::parse("direct"), Some(ExchangeKind::Direct));
        assert_eq!(ExchangeKind::parse("fanout"), Some(ExchangeKind::Fanout));
        assert_eq!(ExchangeKind::parse("topic"), Some(ExchangeKind::Topic));
        assert_eq!(ExchangeKind::parse("headers"), Some(ExchangeKind::Headers));
    }

    #[test]
    fn kind_parse_rejects_unknown_and_wrong_case() {
        for s in [
            "",
            "Direct",
            "TOPIC",
            "x-delayed-message",
            "match",
            " fanout",
        ] {
            assert_eq!(ExchangeKind::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn new_table_is_empty() {
        for kind in KINDS {
            let b: Bindings<u32> = Bindings::new(kind);
            assert_eq!(b.kind(), kind);
            assert!(b.is_empty());
            assert_eq!(b.len(), 0);
            assert_eq!(b.iter().count(), 0);
            assert_eq!(routed(&b, "", None), Vec::<u32>::new());
        }
    }

    #[test]
    fn bind_is_idempotent_for_every_kind() {
        let args = table(&[("x-match", s("any")), ("a", s("1"))]);
        for kind in KINDS {
            let mut b = Bindings::new(kind);
            assert!(b.bind(1u32, "k", &args), "{kind:?}");
            assert!(!b.bind(1u32, "k", &args), "{kind:?}");
            assert!(!b.bind(1u32, "k", &args.clone()), "{kind:?}");
            assert_eq!(b.len(), 1);
            assert_eq!(b.iter().count(), 1);
            // Routing still yields the destination once.
            let mut out = Vec::new();
            b.route("k", Some(&table(&[("a", s("1"))])), &mut out);
            assert_eq!(out, vec![1], "{kind:?}");
        }
    }

    #[test]
    fn bindings_differing_in_key_or_args_are_distinct() {
        for kind in KINDS {
            let mut b = Bindings::new(kind);
            let empty = FieldTable::default();
            let a1 = table(&[("foo", s("bar"))]);
            let a2 = table(&[("foo", s("baz"))]);
            assert!(b.bind(1u32, "k", &empty));
            assert!(b.bind(1u32, "k", &a1));
            assert!(b.bind(1u32, "k", &a2));
            assert!(b.bind(1u32, "other", &empty));
            assert!(b.bind(2u32, "k", &empty));
            assert_eq!(b.len(), 5, "{kind:?}");
            assert!(b.contains(&1, "k", &a1));
            assert!(b.contains(&1, "other", &empty));
            assert!(!b.contains(&2, "other", &empty));
            assert!(!b.contains(&1, "k", &table(&[("foo", s("qux"))])));
        }
    }

    #[test]
    fn args_identity_is_type_sensitive() {
        let mut b = Bindings::new(ExchangeKind::Direct);
        let i32_one = table(&[("n", AMQPValue::LongInt(1))]);
        let i64_one = table(&[("n", AMQPValue::LongLongInt(1))]);
        assert!(b.bind(1u32, "k", &i32_one));
        assert!(b.bind(1u32, "k", &i64_one));
        assert_eq!(b.len(), 2);
        assert!(b.unbind(&1, "k", &i32_one));
        assert!(!b.contains(&1, "k", &i32_one));
        assert!(b.contains(&1, "k", &i64_one));
    }

    #[test]
    fn nan_arguments_can_be_unbound() {
        let mut b = Bindings::new(ExchangeKind::Fanout);
        let nan = table(&[("f", AMQPValue::Double(f64::NAN))]);
        let nested = table(&[(
            "t",
            AMQPValue::FieldArray(vec![AMQPValue::Float(f32::NAN)].into()),
        )]);
        assert!(b.bind(1u32, "", &nan));
        assert!(!b.bind(1u32, "", &nan));
        assert!(b.bind(1u32, "", &nested));
        assert!(!b.bind(1u32, "", &nested));
        assert!(b.unbind(&1, "", &nan));
        assert!(b.unbind(&1, "", &nested));
        assert!(b.is_empty());
        assert_eq!(routed(&b, "", None), Vec::<u32>::new());
    }

    #[test]
    fn unbind_removes_only_that_binding() {
        for kind in KINDS {
            let mut b = Bindings::new(kind);
            let empty = FieldTable::default();
            let a1 = table(&[("foo", s("bar"))]);
            assert!(b.bind(1u32, "k", &empty));
            assert!(b.bind(1u32, "k", &a1));
            assert!(b.bind(2u32, "k", &empty));

            assert!(!b.unbind(&3, "k", &empty), "{kind:?}");
            assert!(!b.unbind(&1, "nope", &empty), "{kind:?}");
            assert!(!b.unbind(&1, "k", &table(&[("foo", s("baz"))])));

            assert!(b.unbind(&1, "k", &empty), "{kind:?}");
            assert!(!b.unbind(&1, "k", &empty), "{kind:?}");
            assert_eq!(b.len(), 2);
            assert!(b.has_destination(&1));
            assert!(b.contains(&1, "k", &a1));

            assert!(b.unbind(&1, "k", &a1));
            assert!(!b.has_destination(&1));
            assert!(b.has_destination(&2));
            assert_eq!(b.len(), 1);
            assert!(b.unbind(&2, "k", &empty));
            assert!(b.is_empty());
            assert_eq!(b.iter().count(), 0);
        }
    }

    #[test]
    fn unbind_of_one_alias_keeps_routing_through_the_other() {
        // RabbitMQ routing_SUITE "Note aliasing": same queue and key, two args.
        for kind in [
            ExchangeKind::Direct,
            ExchangeKind::Fanout,
            ExchangeKind::Topic,
        ] {
            let mut b = Bindings::new(kind);
            let bar = table(&[("foo", s("bar"))]);
            let baz = table(&[("foo", s("baz"))]);
            b.bind(27u32, "args-test", &bar);
            b.bind(27u32, "args-test", &baz);
            let mut out = Vec::new();
            b.route("args-test", None, &mut out);
            assert_eq!(out, vec![27], "{kind:?}: routed once despite two bindings");
            assert!(b.unbind(&27, "args-test", &bar));
            assert_eq!(routed(&b, "args-test", None), vec![27], "{kind:?}");
            assert!(b.unbind(&27, "args-test", &baz));
            assert_eq!(routed(&b, "args-test", None), Vec::<u32>::new());
        }
    }

    #[test]
    fn unbind_all_removes_every_binding_of_a_destination() {
        for kind in KINDS {
            let mut b = Bindings::new(kind);
            let empty = FieldTable::default();
            let a1 = table(&[("foo", s("bar"))]);
            b.bind(1u32, "a", &empty);
            b.bind(1u32, "a", &a1);
            b.bind(1u32, "b.#", &empty);
            b.bind(1u32, "", &empty);
            b.bind(2u32, "a", &empty);
            b.bind(2u32, "b.#", &a1);

            assert_eq!(b.unbind_all(&3), 0);
            assert_eq!(b.unbind_all(&1), 4, "{kind:?}");
            assert_eq!(b.unbind_all(&1), 0);
            assert_eq!(b.len(), 2);
            assert!(!b.has_destination(&1));
            for key in ["a", "b.c", ""] {
                let mut out = Vec::new();
                b.route(key, Some(&table(&[("foo", s("bar"))])), &mut out);
                assert!(!out.contains(&1), "{kind:?} {key:?}: {out:?}");
            }
            assert_eq!(b.unbind_all(&2), 2);
            assert!(b.is_empty());
            assert_eq!(routed(&b, "a", None), Vec::<u32>::new());
        }
    }

    #[test]
    fn iter_lists_every_binding() {
        let mut b = Bindings::new(ExchangeKind::Topic);
        let empty = FieldTable::default();
        let a1 = table(&[("foo", s("bar"))]);
        b.bind("q1".to_string(), "a.*", &empty);
        b.bind("q1".to_string(), "a.*", &a1);
        b.bind("q1".to_string(), "#", &empty);
        b.bind("q2".to_string(), "a.*", &empty);
        let mut all: Vec<(String, String, bool)> = b
            .iter()
            .map(|(d, k, a)| (d.clone(), k.to_string(), a.inner().is_empty()))
            .collect();
        all.sort();
        assert_eq!(
            all,
            vec![
                ("q1".into(), "#".into(), true),
                ("q1".into(), "a.*".into(), false),
                ("q1".into(), "a.*".into(), true),
                ("q2".into(), "a.*".into(), true),
            ]
        );
        assert_eq!(b.iter().count(), b.len());
    }

    #[test]
    fn route_does_not_allocate_when_nothing_matches() {
        let empty = FieldTable::default();
        let hdr = table(&[("x-match", s("all")), ("h", s("v"))]);
        for kind in KINDS {
            let mut b = Bindings::new(kind);
            if kind != ExchangeKind::Fanout {
                b.bind(1u32, "a.b", &hdr);
                b.bind(2u32, "a.*.c", &hdr);
            }
            let mut out = Vec::new();
            b.route("x.y", Some(&empty), &mut out);
            b.route("x.y", None, &mut out);
            assert!(out.is_empty(), "{kind:?}");
            assert_eq!(out.capacity(), 0, "{kind:?}");
        }
    }

    #[test]
    fn route_appends_without_clearing() {
        let mut b = Bindings::new(ExchangeKind::Direct);
        b.bind(2u32, "k", &FieldTable::default());
        let mut out = vec![7];
        b.route("k", None, &mut out);
        assert_eq!(out, vec![7, 2]);
    }

    #[test]
    fn validate_args_only_checks_headers() {
        let bad = table(&[("x-match", s("foo"))]);
        assert!(Bindings::<u32>::validate_args(ExchangeKind::Direct, &bad).is_ok());
        assert!(Bindings::<u32>::validate_args(ExchangeKind::Fanout, &bad).is_ok());
        assert!(Bindings::<u32>::validate_args(ExchangeKind::Topic, &bad).is_ok());
        assert_eq!(
            Bindings::<u32>::validate_args(ExchangeKind::Headers, &bad),
            Err("Invalid x-match field value <<\"foo\">>; \
                 expected all, any, all-with-x, or any-with-x"
                .to_string())
        );
    }

    #[test]
    fn works_with_an_enum_destination() {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        enum Dest {
            Queue(u32),
            Exchange(std::sync::Arc<str>),
        }
        let mut b = Bindings::new(ExchangeKind::Topic);
        let empty = FieldTable::default();
        b.bind(Dest::Queue(1), "events.*.critical", &empty);
        b.bind(Dest::Exchange("x-dest".into()), "events.#", &empty);
        b.bind(Dest::Queue(2), "events.app.critical", &empty);
        assert_eq!(
            routed(&b, "events.app.critical", None),
            vec![
                Dest::Queue(1),
                Dest::Queue(2),
                Dest::Exchange("x-dest".into())
            ]
        );
        assert_eq!(
            routed(&b, "events.db.info", None),
            vec![Dest::Exchange("x-dest".into())]
        );
        assert_eq!(b.unbind_all(&Dest::Exchange("x-dest".into())), 1);
        assert_eq!(routed(&b, "events.db.info", None), vec![]);
    }
}
