//! The topic exchange's routing table: a word trie over binding keys.
//!
//! Owns the trie. Keys are split on every `.`, so `"a..b"` has an empty middle
//! word and `".a"` an empty first word; the empty key has no words at all (as
//! RabbitMQ's `split_topic_key_binary`). In a binding key `*` matches exactly
//! one word and `#` zero or more; any other word (including the empty word)
//! matches itself.
//!
//! Routing walks the trie as a nondeterministic automaton: it keeps the set of
//! trie nodes reachable after each word (a `#` node stays in the set while it
//! swallows words, and entering a node also enters its `#` child, which
//! matches zero words), then collects the destinations of the final set. Each
//! node enters the set at most once per word, so the cost is bounded by
//! `words × nodes` however many `#` a key has; backtracking, by contrast, is
//! exponential in the number of `#` (RabbitMQ memoises its walk for this).
//! The sets live in a per-thread scratch buffer, so routing allocates nothing
//! once a thread has routed through a trie of this size.
//!
//! Invariant: every non-root node has a destination or a child; nodes are
//! pruned as the last binding under them goes.

use std::cell::RefCell;
use std::collections::HashMap;

use super::DestSet;

const ROOT: u32 = 0;

/// How a node hangs off its parent.
#[derive(Debug, Clone)]
enum Edge {
    Root,
    Word(Box<str>),
    Star,
    Hash,
}

#[derive(Debug, Clone)]
struct Node<D> {
    /// Children by literal word.
    words: HashMap<Box<str>, u32>,
    star: Option<u32>,
    hash: Option<u32>,
    parent: u32,
    edge: Edge,
    /// Destinations of binding keys that end at this node.
    dests: DestSet<D>,
}

impl<D> Node<D> {
    fn new(parent: u32, edge: Edge) -> Self {
        Node {
            words: HashMap::new(),
            star: None,
            hash: None,
            parent,
            edge,
            dests: DestSet::default(),
        }
    }

    /// A `#` node loops on every word.
    fn is_hash(&self) -> bool {
        matches!(self.edge, Edge::Hash)
    }

    /// No destination and no child: can be pruned.
    fn is_bare(&self) -> bool {
        self.dests.entries.is_empty()
            && self.words.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

/// The words of a routing or binding key.
fn words(key: &str) -> std::iter::Take<std::str::Split<'_, char>> {
    // `"".split('.')` yields one empty word, but RabbitMQ gives the empty key
    // no words: "" is matched by "#" and "", not by "*".
    key.split('.')
        .take(if key.is_empty() { 0 } else { usize::MAX })
}

/// Binding-key trie; node 0 is the root. Freed nodes are reused.
#[derive(Debug, Clone)]
pub(super) struct TopicTable<D> {
    nodes: Vec<Node<D>>,
    free: Vec<u32>,
}

impl<D: Clone + Eq> TopicTable<D> {
    pub(super) fn new() -> Self {
        TopicTable {
            nodes: vec![Node::new(ROOT, Edge::Root)],
            free: Vec::new(),
        }
    }

    /// Counts one binding of `dest` with binding key `key`.
    pub(super) fn add(&mut self, dest: D, key: &str) {
        let mut n = ROOT;
        for w in words(key) {
            n = match self.child(n, w) {
                Some(c) => c,
                None => self.insert_child(n, w),
            };
        }
        self.nodes[n as usize].dests.add(dest);
    }

    /// Uncounts one binding of `dest` with binding key `key`.
    pub(super) fn remove(&mut self, dest: &D, key: &str) {
        if let Some(n) = self.find(key) {
            self.nodes[n as usize].dests.remove(dest);
            self.prune(n);
        }
    }

    /// Drops every binding of `dest` with binding key `key`.
    pub(super) fn remove_dest(&mut self, dest: &D, key: &str) {
        if let Some(n) = self.find(key) {
            self.nodes[n as usize].dests.remove_all(dest);
            self.prune(n);
        }
    }

    /// Appends the destinations of every binding key that matches `key`.
    pub(super) fn route(&self, key: &str, out: &mut Vec<D>) {
        if self.nodes[ROOT as usize].is_bare() {
            return;
        }
        // A reentrant call or one during thread teardown gets its own buffers.
        let done = SCRATCH
            .try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut scratch) => {
                    self.route_with(&mut scratch, key, out);
                    true
                }
                Err(_) => false,
            })
            .unwrap_or(false);
        if !done {
            self.route_with(&mut Scratch::default(), key, out);
        }
    }

    fn route_with(&self, scratch: &mut Scratch, key: &str, out: &mut Vec<D>) {
        let Scratch {
            cur,
            next,
            mark,
            stamp,
        } = scratch;
        if mark.len() < self.nodes.len() {
            mark.resize(self.nodes.len(), 0);
        }
        cur.clear();
        let s = next_stamp(stamp, mark);
        self.enter(ROOT, s, mark, cur);
        for w in words(key) {
            let s = next_stamp(stamp, mark);
            next.clear();
            for &n in cur.iter() {
                let node = &self.nodes[n as usize];
                if node.is_hash() {
                    self.enter(n, s, mark, next);
                }
                if let Some(&c) = node.words.get(w) {
                    self.enter(c, s, mark, next);
                }
                if let Some(c) = node.star {
                    self.enter(c, s, mark, next);
                }
            }
            std::mem::swap(cur, next);
            if cur.is_empty() {
                return;
            }
        }
        for &n in cur.iter() {
            self.nodes[n as usize].dests.push_into(out);
        }
    }

    /// Adds `n` to `set` unless already there, then its `#` child (which
    /// matches zero words), and so on down a chain of `#`s.
    fn enter(&self, mut n: u32, stamp: u32, mark: &mut [u32], set: &mut Vec<u32>) {
        loop {
            let m = &mut mark[n as usize];
            if *m == stamp {
                return;
            }
            *m = stamp;
            set.push(n);
            match self.nodes[n as usize].hash {
                Some(h) => n = h,
                None => return,
            }
        }
    }

    fn child(&self, n: u32, w: &str) -> Option<u32> {
        let node = &self.nodes[n as usize];
        match w {
            "*" => node.star,
            "#" => node.hash,
            _ => node.words.get(w).copied(),
        }
    }

    fn insert_child(&mut self, n: u32, w: &str) -> u32 {
        let edge = match w {
            "*" => Edge::Star,
            "#" => Edge::Hash,
            _ => Edge::Word(w.into()),
        };
        let node = Node::new(n, edge);
        let c = match self.free.pop() {
            Some(c) => {
                self.nodes[c as usize] = node;
                c
            }
            None => {
                self.nodes.push(node);
                u32::try_from(self.nodes.len() - 1).expect("topic trie exceeds u32::MAX nodes")
            }
        };
        let parent = &mut self.nodes[n as usize];
        match w {
            "*" => parent.star = Some(c),
            "#" => parent.hash = Some(c),
            _ => {
                parent.words.insert(w.into(), c);
            }
        }
        c
    }

    /// The node where binding key `key` ends, if it is in the trie.
    fn find(&self, key: &str) -> Option<u32> {
        words(key).try_fold(ROOT, |n, w| self.child(n, w))
    }

    /// Frees `n` and its ancestors while they have neither destinations nor children.
    fn prune(&mut self, mut n: u32) {
        while n != ROOT && self.nodes[n as usize].is_bare() {
            let node = std::mem::replace(&mut self.nodes[n as usize], Node::new(ROOT, Edge::Root));
            let parent = &mut self.nodes[node.parent as usize];
            match node.edge {
                Edge::Word(w) => {
                    parent.words.remove(&w);
                }
                Edge::Star => parent.star = None,
                Edge::Hash => parent.hash = None,
                Edge::Root => unreachable!("only the root hangs off nothing"),
            }
            self.free.push(n);
            n = node.parent;
        }
        if self.free.len() + 1 == self.nodes.len() {
            // Everything but the root is free: give the memory back.
            self.nodes.truncate(1);
            self.nodes.shrink_to_fit();
            self.free = Vec::new();
        }
    }

    #[cfg(test)]
    fn live_nodes(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

/// Per-thread buffers for [`TopicTable::route`]: the node sets before and
/// after each word, and a stamp per node recording which set it is in.
#[derive(Default)]
struct Scratch {
    cur: Vec<u32>,
    next: Vec<u32>,
    mark: Vec<u32>,
    stamp: u32,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch { cur: Vec::new(), next: Vec::new(), mark: Vec::new(), stamp: 0 })
    };
}

/// A stamp never used before in `mark` (marks from other tries are older).
fn next_stamp(stamp: &mut u32, mark: &mut [u32]) -> u32 {
    if *stamp == u32::MAX {
        mark.fill(0);
        *stamp = 0;
    }
    *stamp += 1;
    *stamp
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::FieldTable;

    use super::super::test_util::routed;
    use super::super::{Bindings, ExchangeKind, Table};
    use super::*;

    fn topic(bindings: &[(&str, &str)]) -> Bindings<String> {
        let mut b = Bindings::new(ExchangeKind::Topic);
        for (key, dest) in bindings {
            b.bind(dest.to_string(), key, &FieldTable::default());
        }
        b
    }

    fn expect(b: &Bindings<String>, cases: &[(&str, &[&str])]) {
        for (key, expected) in cases {
            let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
            expected.sort();
            assert_eq!(routed(b, key, None), expected, "routing key {key:?}");
        }
    }

    fn trie(b: &Bindings<String>) -> &TopicTable<String> {
        match &b.table {
            Table::Topic(t) => t,
            _ => unreachable!(),
        }
    }

    /// Reference matcher: the definition, by backtracking over words.
    fn reference_match(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|i| reference_match(rest, &key[i..])),
            Some((&"*", rest)) => !key.is_empty() && reference_match(rest, &key[1..]),
            Some((w, rest)) => key.first() == Some(w) && reference_match(rest, &key[1..]),
        }
    }

    #[test]
    fn words_of_keys() {
        fn w(k: &str) -> Vec<&str> {
            words(k).collect()
        }
        assert_eq!(w(""), Vec::<&str>::new());
        assert_eq!(w("a"), vec!["a"]);
        assert_eq!(w("."), vec!["", ""]);
        assert_eq!(w("a..b"), vec!["a", "", "b"]);
        assert_eq!(w(".a"), vec!["", "a"]);
        assert_eq!(w("a."), vec!["a", ""]);
        assert_eq!(w("#.*"), vec!["#", "*"]);
    }

    /// RabbitMQ deps/rabbit/test/routing_SUITE.erl `topic1`.
    #[test]
    fn rabbitmq_routing_suite_table() {
        let mut b = topic(&[
            ("a.b.c", "t1"),
            ("a.*.c", "t2"),
            ("a.#.b", "t3"),
            ("a.b.b.c", "t4"),
            ("#", "t5"),
            ("#.#", "t6"),
            ("#.b", "t7"),
            ("*.*", "t8"),
            ("a.*", "t9"),
            ("*.b.c", "t10"),
            ("a.#", "t11"),
            ("a.#.#", "t12"),
            ("b.b.c", "t13"),
            ("a.b.b", "t14"),
            ("a.b", "t15"),
            ("b.c", "t16"),
            ("", "t17"),
            ("*.*.*", "t18"),
            ("vodka.martini", "t19"),
            ("a.b.c", "t20"),
            ("*.#", "t21"),
            ("#.*.#", "t22"),
            ("*.#.#", "t23"),
            ("*", "t25"),
            ("#.b.#", "t26"),
        ]);
        let bar = super::super::test_util::table(&[("foo", super::super::test_util::s("bar"))]);
        let baz = super::super::test_util::table(&[("foo", super::super::test_util::s("baz"))]);
        b.bind("t27".to_string(), "args-test", &bar);
        b.bind("t27".to_string(), "args-test", &baz);
        expect(
            &b,
            &[
                (
                    "a.b.c",
                    &[
                        "t1", "t2", "t5", "t6", "t10", "t11", "t12", "t18", "t20", "t21", "t22",
                        "t23", "t26",
                    ],
                ),
                (
                    "a.b",
                    &[
                        "t3", "t5", "t6", "t7", "t8", "t9", "t11", "t12", "t15", "t21", "t22",
                        "t23", "t26",
                    ],
                ),
                (
                    "a.b.b",
                    &[
                        "t3", "t5", "t6", "t7", "t11", "t12", "t14", "t18", "t21", "t22", "t23",
                        "t26",
                    ],
                ),
                ("", &["t5", "t6", "t17"]),
                ("b.c.c", &["t5", "t6", "t18", "t21", "t22", "t23", "t26"]),
                (
                    "a.a.a.a.a",
                    &["t5", "t6", "t11", "t12", "t21", "t22", "t23"],
                ),
                ("vodka.gin", &["t5", "t6", "t8", "t21", "t22", "t23"]),
                (
                    "vodka.martini",
                    &["t5", "t6", "t8", "t19", "t21", "t22", "t23"],
                ),
                (
                    "b.b.c",
                    &["t5", "t6", "t10", "t13", "t18", "t21", "t22", "t23", "t26"],
                ),
                ("nothing.here.at.all", &["t5", "t6", "t21", "t22", "t23"]),
                ("oneword", &["t5", "t6", "t21", "t22", "t23", "t25"]),
                (
                    "args-test",
                    &["t5", "t6", "t21", "t22", "t23", "t25", "t27"],
                ),
            ],
        );

        // Remove bindings 1, 5, 11, 19, 21 and 27 (the first "args-test" alias).
        let empty = FieldTable::default();
        for (key, dest) in [
            ("a.b.c", "t1"),
            ("#", "t5"),
            ("a.#", "t11"),
            ("vodka.martini", "t19"),
            ("*.#", "t21"),
        ] {
            assert!(b.unbind(&dest.to_string(), key, &empty), "{key}");
        }
        assert!(b.unbind(&"t27".to_string(), "args-test", &bar));
        expect(
            &b,
            &[
                (
                    "a.b.c",
                    &["t2", "t6", "t10", "t12", "t18", "t20", "t22", "t23", "t26"],
                ),
                (
                    "a.b",
                    &[
                        "t3", "t6", "t7", "t8", "t9", "t12", "t15", "t22", "t23", "t26",
                    ],
                ),
                (
                    "a.b.b",
                    &["t3", "t6", "t7", "t12", "t14", "t18", "t22", "t23", "t26"],
                ),
                ("", &["t6", "t17"]),
                ("b.c.c", &["t6", "t18", "t22", "t23", "t26"]),
                ("a.a.a.a.a", &["t6", "t12", "t22", "t23"]),
                ("vodka.gin", &["t6", "t8", "t22", "t23"]),
                ("vodka.martini", &["t6", "t8", "t22", "t23"]),
                ("b.b.c", &["t6", "t10", "t13", "t18", "t22", "t23", "t26"]),
                ("nothing.here.at.all", &["t6", "t22", "t23"]),
                ("oneword", &["t6", "t22", "t23", "t25"]),
                ("args-test", &["t6", "t22", "t23", "t25", "t27"]),
            ],
        );

        // Deleting every destination empties the trie back to its root.
        let dests: Vec<String> = b.iter().map(|(d, _, _)| d.clone()).collect();
        for d in dests {
            b.unbind_all(&d);
        }
        assert!(b.is_empty());
        assert_eq!(trie(&b).live_nodes(), 1);
        expect(&b, &[("a.b.c", &[]), ("b.b.c", &[]), ("", &[])]);
    }

    /// RabbitMQ deps/rabbit/test/rabbit_db_topic_exchange_SUITE.erl cases.
    #[test]
    fn rabbitmq_db_topic_exchange_suite_cases() {
        // topic_match_basic
        let b = topic(&[
            ("foo.bar", "q-foo"),
            ("foo.baz", "q-bar"),
            ("other.key", "q-baz"),
        ]);
        expect(
            &b,
            &[
                ("foo.bar", &["q-foo"]),
                ("foo.baz", &["q-bar"]),
                ("other.key", &["q-baz"]),
                ("no.match", &[]),
            ],
        );

        // topic_match_wildcards
        let b = topic(&[
            ("foo.*", "star"),
            ("foo.#", "hash"),
            ("foo.bar", "exact"),
            ("foo.*.baz", "deep"),
            ("#", "all"),
        ]);
        expect(
            &b,
            &[
                ("foo.bar", &["all", "exact", "hash", "star"]),
                ("foo.bar.baz", &["all", "deep", "hash"]),
                ("foo.bar.baz.qux", &["all", "hash"]),
                ("foo.qux", &["all", "hash", "star"]),
                ("bar.foo", &["all"]),
            ],
        );

        // topic_match_hash_middle
        let b = topic(&[
            ("#.c", "q1"),
            ("#.b.c", "q2"),
            ("a.#.d", "q3"),
            ("#.*.#", "q4"),
        ]);
        expect(
            &b,
            &[
                ("a.b.c", &["q1", "q2", "q4"]),
                ("c", &["q1", "q4"]),
                ("x.y.b.c", &["q1", "q2", "q4"]),
                ("a.d", &["q3", "q4"]),
                ("a.b.c.d", &["q3", "q4"]),
                ("x", &["q4"]),
                ("x.c", &["q1", "q4"]),
            ],
        );

        // topic_match_empty_routing_key
        let b = topic(&[("#", "hash"), ("foo.bar", "exact")]);
        expect(&b, &[("", &["hash"]), ("foo.bar", &["exact", "hash"])]);

        // topic_match_deep_hierarchy
        let t = "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z";
        let b = topic(&[
            ("#", "all"),
            (&format!("{t}.#"), "prefix"),
            (&format!("{t}.*"), "prefix-star"),
        ]);
        expect(
            &b,
            &[
                (t, &["all", "prefix"]),
                (&format!("{t}.1"), &["all", "prefix", "prefix-star"]),
            ],
        );

        // topic_match_all_wildcards
        let w = format!("{}#", "*.".repeat(26));
        let b = topic(&[(&w, "wild")]);
        expect(&b, &[(t, &["wild"]), ("a.b", &[])]);

        // topic_match_many_hashes: 15 '#' against 31 words
        let many = vec!["#"; 15].join(".");
        let key = vec!["a"; 31].join(".");
        let b = topic(&[(&many, "many")]);
        expect(&b, &[(&key, &["many"]), ("", &["many"])]);

        // topic_match_alternating_wildcards
        let b = topic(&[(
            "a.*.c.*.e.*.g.*.i.*.k.*.m.*.o.*.q.*.s.*.u.*.w.*.y.*.#",
            "alt",
        )]);
        expect(&b, &[(t, &["alt"])]);

        // topic_match_overlapping_filters
        let b = topic(&[
            ("a.b", "q1"),
            ("a.b.#", "q2"),
            ("a.b.c", "q3"),
            ("a.b.*", "q4"),
            ("a.b.d", "q5"),
            ("a.*.*", "q6"),
            ("a.*.#", "q7"),
            ("*.b.c", "q8"),
        ]);
        expect(
            &b,
            &[
                ("a.b.c", &["q2", "q3", "q4", "q6", "q7", "q8"]),
                ("a.b", &["q1", "q2", "q7"]),
            ],
        );

        // topic_match_empty_segments
        let b = topic(&[(".#", "hash"), (".*", "star"), (".*.a.b.c", "deep")]);
        expect(&b, &[(".0.a.b.c", &["deep", "hash"])]);

        // topic_match_unicode
        let b = topic(&[
            ("传感器.温度.摄氏", "cjk"),
            ("🏠.🌡️.📊", "emoji"),
            ("датчик.температура.цельсий", "cyrillic"),
            ("sensor.données.état", "mixed"),
            ("传感器.*.摄氏", "wild"),
            ("датчик.#", "hash"),
            ("#", "all"),
        ]);
        expect(
            &b,
            &[
                ("传感器.温度.摄氏", &["all", "cjk", "wild"]),
                ("传感器.湿度.摄氏", &["all", "wild"]),
                ("🏠.🌡️.📊", &["all", "emoji"]),
                ("датчик.температура.цельсий", &["all", "cyrillic", "hash"]),
                ("датчик", &["all", "hash"]),
                ("sensor.données.état", &["all", "mixed"]),
                ("sensor.donnees.etat", &["all"]),
            ],
        );
    }

    #[test]
    fn empty_words_and_edge_keys() {
        let b = topic(&[
            ("", "empty"),
            ("*", "star"),
            ("#", "hash"),
            ("*.*", "star2"),
            ("a..b", "a-empty-b"),
            ("a.*.b", "a-star-b"),
            ("a.#.b", "a-hash-b"),
            (".", "dot"),
            ("a.", "a-dot"),
            (".a", "dot-a"),
            ("#.", "hash-dot"),
            ("..", "dotdot"),
        ]);
        expect(
            &b,
            &[
                // "" has zero words: only "" and "#".
                ("", &["empty", "hash"]),
                // "." is two empty words.
                (".", &["dot", "hash", "hash-dot", "star2"]),
                ("..", &["dotdot", "hash", "hash-dot"]),
                ("a", &["hash", "star"]),
                ("a..b", &["a-empty-b", "a-hash-b", "a-star-b", "hash"]),
                ("a.b", &["a-hash-b", "hash", "star2"]),
                ("a.x.y.b", &["a-hash-b", "hash"]),
                ("a.", &["a-dot", "hash", "hash-dot", "star2"]),
                (".a", &["dot-a", "hash", "star2"]),
                ("x.", &["hash", "hash-dot", "star2"]),
            ],
        );
    }

    #[test]
    fn wildcards_in_the_routing_key_are_plain_words() {
        let b = topic(&[
            ("a.*", "a-star"),
            ("a.b", "a-b"),
            ("a.#", "a-hash"),
            ("#", "all"),
        ]);
        // "*" and "#" in a routing key are just words; the exact binding "a.b"
        // must not match "a.*", and the wildcard bindings match as for any word.
        expect(
            &b,
            &[
                ("a.*", &["a-hash", "a-star", "all"]),
                ("a.#", &["a-hash", "a-star", "all"]),
                ("*", &["all"]),
            ],
        );
    }

    #[test]
    fn hash_runs_are_equivalent_to_one_hash() {
        let b = topic(&[
            ("#", "h1"),
            ("#.#", "h2"),
            ("#.#.#", "h3"),
            ("#.*", "hs"),
            ("*.#", "sh"),
            ("#.*.#.*.#", "two"),
        ]);
        expect(
            &b,
            &[
                ("", &["h1", "h2", "h3"]),
                ("a", &["h1", "h2", "h3", "hs", "sh"]),
                ("a.b", &["h1", "h2", "h3", "hs", "sh", "two"]),
                ("a.b.c.d.e.f", &["h1", "h2", "h3", "hs", "sh", "two"]),
            ],
        );
    }

    #[test]
    fn same_destination_at_several_matching_nodes_may_repeat() {
        let b = topic(&[("a.*", "q"), ("a.#", "q"), ("#", "q")]);
        let mut out = Vec::new();
        b.route("a.b", None, &mut out);
        assert!(!out.is_empty() && out.iter().all(|d| d == "q"), "{out:?}");
        assert_eq!(routed(&b, "a.b", None), vec!["q".to_string()]);
    }

    #[test]
    fn pathological_keys_route_quickly() {
        // 20 '#' separated by literals against a 255-byte key of 128 words:
        // exponential by backtracking, linear here.
        let pattern = vec!["#.a"; 20].join(".");
        let key = vec!["a"; 128].join(".");
        let b = topic(&[(&pattern, "q"), ("#.b.#.c.#.d.#", "never")]);
        let start = std::time::Instant::now();
        expect(&b, &[(&key, &["q"])]);
        let dots = ".".repeat(255);
        expect(&b, &[(&dots, &[])]);
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn trie_is_pruned_on_unbind() {
        let mut b = topic(&[("a.b.c", "q1"), ("a.b", "q2"), ("a.*.#", "q3")]);
        let empty = FieldTable::default();
        let live = trie(&b).live_nodes();
        assert_eq!(live, 1 + 3 + 2); // root, a, b, c, *, #
        assert!(b.unbind(&"q1".to_string(), "a.b.c", &empty));
        assert_eq!(trie(&b).live_nodes(), live - 1);
        // Unbinding a key that is a prefix of a live key keeps the path.
        assert!(b.unbind(&"q2".to_string(), "a.b", &empty));
        assert_eq!(trie(&b).live_nodes(), 4);
        expect(&b, &[("a.b", &["q3"]), ("a.b.c", &["q3"]), ("a", &[])]);
        // Freed nodes are reused.
        b.bind("q4".to_string(), "x.y", &empty);
        assert_eq!(trie(&b).nodes.len(), live);
        expect(&b, &[("x.y", &["q4"])]);
        assert_eq!(b.unbind_all(&"q3".to_string()), 1);
        assert!(b.unbind(&"q4".to_string(), "x.y", &empty));
        assert_eq!(trie(&b).nodes.len(), 1);
        // Unbinding something absent leaves the trie alone.
        assert!(!b.unbind(&"q4".to_string(), "x.y", &empty));
        assert_eq!(trie(&b).nodes.len(), 1);
    }

    #[test]
    fn unbinding_keeps_other_destinations_on_the_same_node() {
        let mut b = topic(&[("a.#", "q1"), ("a.#", "q2")]);
        assert!(b.unbind(&"q1".to_string(), "a.#", &FieldTable::default()));
        expect(&b, &[("a.b", &["q2"])]);
        assert_eq!(b.unbind_all(&"q2".to_string()), 1);
        expect(&b, &[("a.b", &[])]);
    }

    #[test]
    fn routing_between_tries_of_different_sizes_on_one_thread() {
        // The scratch buffer is shared by every trie routed on a thread.
        let big: Vec<(String, String)> = (0..200)
            .map(|i| (format!("k{i}.*.#"), format!("q{i}")))
            .collect();
        let mut big_b = Bindings::new(ExchangeKind::Topic);
        for (k, d) in &big {
            big_b.bind(d.clone(), k, &FieldTable::default());
        }
        let small = topic(&[("k1.#", "small")]);
        for _ in 0..3 {
            expect(
                &big_b,
                &[("k7.x", &["q7"]), ("k199.x.y", &["q199"]), ("k7", &[])],
            );
            expect(&small, &[("k1", &["small"]), ("k7.x", &[])]);
        }
    }

    #[test]
    fn stamp_wraparound_clears_marks() {
        let b = topic(&[("a.#", "q")]);
        let t = trie(&b);
        let mut scratch = Scratch {
            stamp: u32::MAX - 2,
            ..Scratch::default()
        };
        for _ in 0..5 {
            let mut out = Vec::new();
            t.route_with(&mut scratch, "a.b.c", &mut out);
            assert_eq!(out, vec!["q".to_string()]);
        }
        assert!(scratch.stamp < 100, "the stamp wrapped around");
    }

    #[test]
    fn matches_reference_definition_on_generated_cases() {
        // Deterministic xorshift so failures reproduce.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let pattern_words = ["a", "b", "", "*", "#"];
        let key_words = ["a", "b", "", "c"];
        for round in 0..40 {
            let mut b = Bindings::new(ExchangeKind::Topic);
            let mut patterns = Vec::new();
            for i in 0..25 {
                let len = rand(5);
                let p: Vec<&str> = (0..len).map(|_| pattern_words[rand(5) as usize]).collect();
                let p = p.join(".");
                b.bind(i, &p, &FieldTable::default());
                patterns.push(p);
            }
            for _ in 0..60 {
                let len = rand(6);
                let k: Vec<&str> = (0..len).map(|_| key_words[rand(4) as usize]).collect();
                let key = k.join(".");
                let key_words_split: Vec<&str> = words(&key).collect();
                let expected: Vec<usize> = patterns
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        let pw: Vec<&str> = words(p).collect();
                        reference_match(&pw, &key_words_split)
                    })
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(
                    routed(&b, &key, None),
                    expected,
                    "round {round}, key {key:?}, patterns {patterns:?}"
                );
            }
        }
    }
}
