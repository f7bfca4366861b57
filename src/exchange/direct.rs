//! The direct exchange's routing table: exact routing-key equality.
//!
//! Owns a map from routing key to the destinations bound with that key.
//! Routing looks the key up with `get` (never `entry`), so a publish to an
//! unbound key neither allocates nor changes the map.

use std::collections::HashMap;

use super::DestSet;

/// Routing key → destinations bound with exactly that key.
#[derive(Debug, Clone)]
pub(super) struct DirectTable<D> {
    keys: HashMap<Box<str>, DestSet<D>>,
}

impl<D: Clone + Eq> DirectTable<D> {
    pub(super) fn new() -> Self {
        DirectTable {
            keys: HashMap::new(),
        }
    }

    /// Counts one binding of `dest` with `key`.
    pub(super) fn add(&mut self, dest: D, key: &str) {
        match self.keys.get_mut(key) {
            Some(set) => set.add(dest),
            None => {
                let mut set = DestSet::default();
                set.add(dest);
                self.keys.insert(key.into(), set);
            }
        }
    }

    /// Uncounts one binding of `dest` with `key`.
    pub(super) fn remove(&mut self, dest: &D, key: &str) {
        if let Some(set) = self.keys.get_mut(key) {
            set.remove(dest);
            if set.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Drops every binding of `dest` with `key`.
    pub(super) fn remove_dest(&mut self, dest: &D, key: &str) {
        if let Some(set) = self.keys.get_mut(key) {
            set.remove_all(dest);
            if set.is_empty() {
                self.keys.remove(key);
            }
        }
    }

    /// Appends the destinations bound with exactly `key`.
    pub(super) fn route(&self, key: &str, out: &mut Vec<D>) {
        if let Some(set) = self.keys.get(key) {
            set.push_into(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::FieldTable;

    use super::super::test_util::{routed, s, table};
    use super::super::{Bindings, ExchangeKind};

    fn direct(bindings: &[(u32, &str)]) -> Bindings<u32> {
        let mut b = Bindings::new(ExchangeKind::Direct);
        for (dest, key) in bindings {
            b.bind(*dest, key, &FieldTable::default());
        }
        b
    }

    #[test]
    fn routes_on_exact_key_only() {
        let b = direct(&[(1, "a"), (2, "a.b"), (3, "A"), (4, "*"), (5, "#")]);
        assert_eq!(routed(&b, "a", None), vec![1]);
        assert_eq!(routed(&b, "a.b", None), vec![2]);
        assert_eq!(routed(&b, "A", None), vec![3], "case-sensitive");
        assert_eq!(routed(&b, "*", None), vec![4], "no wildcards");
        assert_eq!(routed(&b, "#", None), vec![5], "no wildcards");
        for key in ["", "b", "a.", ".a", "a.b.c", "a ", "ab"] {
            assert_eq!(routed(&b, key, None), Vec::<u32>::new(), "{key:?}");
        }
    }

    #[test]
    fn empty_key_is_an_ordinary_key() {
        let b = direct(&[(1, ""), (2, "a")]);
        assert_eq!(routed(&b, "", None), vec![1]);
        assert_eq!(routed(&b, "a", None), vec![2]);
    }

    #[test]
    fn several_destinations_per_key() {
        let b = direct(&[(1, "k"), (2, "k"), (3, "k"), (4, "other")]);
        assert_eq!(routed(&b, "k", None), vec![1, 2, 3]);
    }

    #[test]
    fn one_destination_under_several_keys() {
        let mut b = direct(&[(1, "a"), (1, "b")]);
        assert_eq!(routed(&b, "a", None), vec![1]);
        assert_eq!(routed(&b, "b", None), vec![1]);
        assert!(b.unbind(&1, "a", &FieldTable::default()));
        assert_eq!(routed(&b, "a", None), Vec::<u32>::new());
        assert_eq!(routed(&b, "b", None), vec![1]);
    }

    #[test]
    fn arguments_do_not_affect_routing() {
        let mut b = Bindings::new(ExchangeKind::Direct);
        b.bind(1u32, "k", &table(&[("x-match", s("any")), ("h", s("v"))]));
        assert_eq!(routed(&b, "k", None), vec![1]);
        assert_eq!(routed(&b, "k", Some(&table(&[("h", s("other"))]))), vec![1]);
    }

    #[test]
    fn unicode_and_long_keys() {
        let long = "k".repeat(255);
        let b = direct(&[(1, "传感器.温度"), (2, &long)]);
        assert_eq!(routed(&b, "传感器.温度", None), vec![1]);
        assert_eq!(routed(&b, &long, None), vec![2]);
        assert_eq!(routed(&b, &long[1..], None), Vec::<u32>::new());
    }

    #[test]
    fn table_drops_keys_when_their_last_binding_goes() {
        let mut b = direct(&[(1, "a"), (2, "a")]);
        b.unbind(&1, "a", &FieldTable::default());
        b.unbind(&2, "a", &FieldTable::default());
        match &b.table {
            super::super::Table::Direct(t) => assert!(t.keys.is_empty()),
            _ => unreachable!(),
        }
        b.bind(3, "a", &FieldTable::default());
        b.unbind_all(&3);
        match &b.table {
            super::super::Table::Direct(t) => assert!(t.keys.is_empty()),
            _ => unreachable!(),
        }
    }
}
