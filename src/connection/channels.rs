//! A connection's open channels, indexed directly by channel number.
//!
//! Every frame names its channel, so the lookup is on the per-frame path: a
//! slot vector is one bounds check and a load, where a hash map hashes and
//! probes. The vector only grows to the highest channel number a client has
//! used (clients number channels from 1), so an idle connection pays nothing.

use crate::channel::Channel;

/// Open channels by number.
#[derive(Debug, Default)]
pub struct ChannelTable {
    slots: Vec<Option<Box<Channel>>>,
    open: usize,
}

impl ChannelTable {
    /// The channel numbered `ch`, if open.
    pub fn get_mut(&mut self, ch: u16) -> Option<&mut Channel> {
        self.slots.get_mut(usize::from(ch))?.as_deref_mut()
    }

    /// Adds channel `ch` (replacing any channel of that number).
    pub fn insert(&mut self, ch: u16, chan: Box<Channel>) {
        let i = usize::from(ch);
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace(chan).is_none() {
            self.open += 1;
        }
    }

    /// Removes channel `ch`, returning it if it was open.
    pub fn remove(&mut self, ch: u16) -> Option<Box<Channel>> {
        let removed = self.slots.get_mut(usize::from(ch))?.take();
        if removed.is_some() {
            self.open -= 1;
        }
        removed
    }

    /// Number of open channels.
    pub fn len(&self) -> usize {
        self.open
    }

    /// Whether no channel is open.
    pub fn is_empty(&self) -> bool {
        self.open == 0
    }

    /// Open channels with their numbers.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Channel)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((i as u16, c.as_deref()?)))
    }

    /// Open channels, mutably.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Channel> {
        self.slots.iter_mut().filter_map(|c| c.as_deref_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{ChannelLimiter, ConnShared};
    use std::sync::Arc;

    fn chan(id: u16) -> Box<Channel> {
        let limiter = Arc::new(ChannelLimiter::new(Arc::new(ConnShared::default())));
        Box::new(Channel::new(id, u64::from(id), limiter))
    }

    #[test]
    fn insert_get_remove_and_count() {
        let mut t = ChannelTable::default();
        assert!(t.get_mut(1).is_none() && t.is_empty());
        t.insert(3, chan(3));
        t.insert(1, chan(1));
        assert_eq!(t.len(), 2);
        assert_eq!(t.get_mut(3).map(|c| c.id), Some(3));
        assert!(t.get_mut(2).is_none() && t.get_mut(65535).is_none());
        assert_eq!(t.iter().map(|(i, _)| i).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(t.remove(3).map(|c| c.id), Some(3));
        assert!(t.remove(3).is_none());
        assert_eq!(t.len(), 1);
        assert_eq!(t.values_mut().count(), 1);
    }
}
