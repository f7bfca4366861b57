//! The fanout exchange's routing table: every bound destination, whatever the
//! routing key.
//!
//! Owns one reference-counted destination list; routing copies it out.

use super::DestSet;

/// Every bound destination, each once, with its binding count.
#[derive(Debug, Clone)]
pub(super) struct FanoutTable<D> {
    dests: DestSet<D>,
}

impl<D: Clone + Eq> FanoutTable<D> {
    pub(super) fn new() -> Self {
        FanoutTable {
            dests: DestSet::default(),
        }
    }

    /// Counts one binding of `dest` (any key, any arguments).
    pub(super) fn add(&mut self, dest: D) {
        self.dests.add(dest);
    }

    /// Uncounts one binding of `dest`.
    pub(super) fn remove(&mut self, dest: &D) {
        self.dests.remove(dest);
    }

    /// Drops every binding of `dest`.
    pub(super) fn remove_dest(&mut self, dest: &D) {
        self.dests.remove_all(dest);
    }

    /// Appends every bound destination, each once.
    pub(super) fn route(&self, out: &mut Vec<D>) {
        self.dests.push_into(out);
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::FieldTable;

    use super::super::test_util::{routed, s, table};
    use super::super::{Bindings, ExchangeKind};

    #[test]
    fn routes_to_every_destination_whatever_the_key() {
        let mut b = Bindings::new(ExchangeKind::Fanout);
        b.bind(1u32, "", &FieldTable::default());
        b.bind(2u32, "some.key", &FieldTable::default());
        b.bind(3u32, "#", &FieldTable::default());
        for key in ["", "some.key", "other", "a.b.c", "#"] {
            assert_eq!(routed(&b, key, None), vec![1, 2, 3], "{key:?}");
        }
        let h = table(&[("a", s("b"))]);
        assert_eq!(routed(&b, "x", Some(&h)), vec![1, 2, 3]);
    }

    #[test]
    fn each_destination_once_even_with_several_bindings() {
        let mut b = Bindings::new(ExchangeKind::Fanout);
        b.bind(1u32, "a", &FieldTable::default());
        b.bind(1u32, "b", &FieldTable::default());
        b.bind(1u32, "a", &table(&[("k", s("v"))]));
        b.bind(2u32, "a", &FieldTable::default());
        assert_eq!(b.len(), 4);
        let mut out = Vec::new();
        b.route("zzz", None, &mut out);
        assert_eq!(out, vec![1, 2], "bind order, no duplicates");

        assert!(b.unbind(&1, "a", &FieldTable::default()));
        assert_eq!(routed(&b, "", None), vec![1, 2]);
        assert!(b.unbind(&1, "b", &FieldTable::default()));
        assert_eq!(routed(&b, "", None), vec![1, 2]);
        assert!(b.unbind(&1, "a", &table(&[("k", s("v"))])));
        assert_eq!(routed(&b, "", None), vec![2]);
    }

    #[test]
    fn unbind_all_drops_the_destination() {
        let mut b = Bindings::new(ExchangeKind::Fanout);
        b.bind(1u32, "a", &FieldTable::default());
        b.bind(1u32, "b", &FieldTable::default());
        b.bind(2u32, "a", &FieldTable::default());
        assert_eq!(b.unbind_all(&1), 2);
        assert_eq!(routed(&b, "", None), vec![2]);
        // Rebinding after unbind_all starts a fresh count.
        b.bind(1u32, "c", &FieldTable::default());
        assert!(b.unbind(&1, "c", &FieldTable::default()));
        assert_eq!(routed(&b, "", None), vec![2]);
    }
}
