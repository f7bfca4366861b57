//! The ready-message container of a queue: FIFO, or priority order for queues
//! declared with `x-max-priority`.
//!
//! Order is RabbitMQ's: higher priorities first (`rabbit_priority_queue` keeps
//! one sub-queue per priority), FIFO by message id within a priority. A message
//! without a `priority` property has priority 0; one above the queue's maximum is
//! treated as the maximum. Requeued messages go back to their original place
//! (their id's position within their priority), as in RabbitMQ.
//!
//! Invariant: every level is sorted by id (ids are handed out in increasing
//! order and [`ReadyQueue::push_back`] is for new messages only); `len` and
//! `bytes` are the sums over all levels; bit `p` of `occupied` is set iff level
//! `p` is non-empty, so finding the head is O(1) even with 256 levels.
//!
//! Costs: push/pop O(1) amortised; requeue O(1) when the message belongs at
//! either end of its level (the usual case: a consumer's unacked messages are
//! older than everything ready), otherwise a binary search plus a
//! `VecDeque::insert`, which moves the shorter side.

use std::collections::VecDeque;

/// What the container needs to know about an entry.
pub trait HasId {
    /// Queue-local message id, increasing in publish order.
    fn id(&self) -> u64;
    /// Body size in bytes (counted for `x-max-length-bytes`).
    fn body_size(&self) -> u64;
    /// The message's `priority` property (absent = 0).
    fn priority(&self) -> u8 {
        0
    }
}

/// Ready messages of one queue.
#[derive(Debug, Clone)]
pub struct ReadyQueue<T> {
    /// Index = priority level (one level without `x-max-priority`).
    levels: Vec<VecDeque<T>>,
    /// Bit `p` set iff `levels[p]` is non-empty.
    occupied: [u64; 4],
    len: usize,
    bytes: u64,
    max_priority: Option<u8>,
}

impl<T: HasId> Default for ReadyQueue<T> {
    fn default() -> Self {
        ReadyQueue::new(None)
    }
}

impl<T: HasId> ReadyQueue<T> {
    /// An empty container; `max_priority` is the queue's `x-max-priority`.
    pub fn new(max_priority: Option<u8>) -> Self {
        let levels = max_priority.map_or(1, |m| usize::from(m) + 1);
        ReadyQueue {
            levels: (0..levels).map(|_| VecDeque::new()).collect(),
            occupied: [0; 4],
            len: 0,
            bytes: 0,
            max_priority,
        }
    }

    /// The queue's `x-max-priority`, if it is a priority queue.
    pub fn max_priority(&self) -> Option<u8> {
        self.max_priority
    }

    /// Number of ready messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no ready messages.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total body bytes of the ready messages.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The level `item` lives in: its priority, capped at the maximum.
    fn level_of(&self, item: &T) -> usize {
        if self.max_priority.is_none() {
            return 0; // not a priority queue: the property is not even read
        }
        usize::from(item.priority()).min(self.levels.len() - 1)
    }

    fn mark(&mut self, level: usize) {
        self.occupied[level / 64] |= 1 << (level % 64);
    }

    fn unmark_if_empty(&mut self, level: usize) {
        if self.levels[level].is_empty() {
            self.occupied[level / 64] &= !(1 << (level % 64));
        }
    }

    /// The highest non-empty level.
    fn head_level(&self) -> Option<usize> {
        (0..4).rev().find_map(|w| {
            let bits = self.occupied[w];
            (bits != 0).then(|| w * 64 + 63 - bits.leading_zeros() as usize)
        })
    }

    fn added(&mut self, level: usize, size: u64) {
        self.mark(level);
        self.len += 1;
        self.bytes += size;
    }

    fn removed(&mut self, level: usize, item: &T) {
        self.unmark_if_empty(level);
        self.len -= 1;
        self.bytes -= item.body_size();
    }

    /// Appends a newly published message (its id must be the highest so far).
    pub fn push_back(&mut self, item: T) {
        let level = self.level_of(&item);
        debug_assert!(
            self.levels[level].back().is_none_or(|b| b.id() < item.id()),
            "push_back with an id that is not the highest"
        );
        let size = item.body_size();
        self.levels[level].push_back(item);
        self.added(level, size);
    }

    /// The next message to deliver.
    pub fn front(&self) -> Option<&T> {
        self.head_level().and_then(|l| self.levels[l].front())
    }

    /// Takes the next message to deliver.
    pub fn pop_front(&mut self) -> Option<T> {
        let level = self.head_level()?;
        let item = self.levels[level].pop_front().expect("occupied level");
        self.removed(level, &item);
        Some(item)
    }

    /// Takes the next message if `pred` holds for it. Loop on it to expire or
    /// drop from the head: RabbitMQ only looks at the head (`dropwhile`), also
    /// across priorities.
    pub fn pop_front_if(&mut self, pred: impl FnOnce(&T) -> bool) -> Option<T> {
        if pred(self.front()?) {
            self.pop_front()
        } else {
            None
        }
    }

    /// Removes the message `x-overflow: drop-head` drops: the next one to deliver
    /// (in a priority queue, from the highest priority, as RabbitMQ does).
    pub fn drop_head(&mut self) -> Option<T> {
        self.pop_front()
    }

    /// Puts a delivered message back at its original position within its priority.
    pub fn requeue(&mut self, item: T) {
        let level = self.level_of(&item);
        let id = item.id();
        let size = item.body_size();
        let q = &mut self.levels[level];
        match (q.front(), q.back()) {
            (Some(f), _) if id < f.id() => q.push_front(item),
            (_, Some(b)) if id > b.id() => q.push_back(item),
            (None, None) => q.push_back(item),
            _ => {
                let pos = q.partition_point(|e| e.id() < id);
                debug_assert!(
                    q.get(pos).is_none_or(|e| e.id() != id),
                    "requeue of a ready id"
                );
                q.insert(pos, item);
            }
        }
        self.added(level, size);
    }

    /// Requeues many messages. Highest ids go first so that a batch older than
    /// everything ready costs one `push_front` each.
    pub fn requeue_all(&mut self, items: impl IntoIterator<Item = T>) {
        let mut items: Vec<T> = items.into_iter().collect();
        items.sort_unstable_by_key(|i| std::cmp::Reverse(i.id()));
        for item in items {
            self.requeue(item);
        }
    }

    /// Whether a message with this id is ready (a binary search per non-empty level).
    pub fn contains_id(&self, id: u64) -> bool {
        self.levels
            .iter()
            .any(|q| !q.is_empty() && q.binary_search_by_key(&id, |e| e.id()).is_ok())
    }

    /// The ready messages in delivery order, mutably. Callers must not change
    /// what [`HasId`] reports (id, size, priority): the levels and byte count
    /// depend on it.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.levels.iter_mut().rev().flatten()
    }

    /// The ready messages in delivery order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
        self.levels.iter().rev().flatten()
    }

    /// Keeps only the messages for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.remove_where(|t| !keep(t), drop);
    }

    /// Removes the messages for which `pred` holds and hands them, in delivery
    /// order, to `removed` (for dead-lettering or confirms). Returns how many.
    pub fn remove_where(
        &mut self,
        mut pred: impl FnMut(&T) -> bool,
        mut removed: impl FnMut(T),
    ) -> usize {
        let mut count = 0;
        for level in (0..self.levels.len()).rev() {
            // Untouched prefix stays in place; `pred` sees each item once.
            let Some(first) = self.levels[level].iter().position(&mut pred) else {
                continue;
            };
            let tail: Vec<T> = self.levels[level].drain(first..).collect();
            for (i, item) in tail.into_iter().enumerate() {
                if i == 0 || pred(&item) {
                    self.len -= 1;
                    self.bytes -= item.body_size();
                    count += 1;
                    removed(item);
                } else {
                    self.levels[level].push_back(item);
                }
            }
            self.unmark_if_empty(level);
        }
        count
    }

    /// Removes every message (purge), returning them in delivery order.
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.len);
        for level in self.levels.iter_mut().rev() {
            out.extend(level.drain(..));
        }
        self.occupied = [0; 4];
        self.len = 0;
        self.bytes = 0;
        out
    }

    /// Removes every message, returning how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.len;
        for level in &mut self.levels {
            level.clear();
        }
        self.occupied = [0; 4];
        self.len = 0;
        self.bytes = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct M {
        id: u64,
        prio: u8,
        size: u64,
    }

    impl HasId for M {
        fn id(&self) -> u64 {
            self.id
        }
        fn body_size(&self) -> u64 {
            self.size
        }
        fn priority(&self) -> u8 {
            self.prio
        }
    }

    fn m(id: u64, prio: u8) -> M {
        M {
            id,
            prio,
            size: id * 10,
        }
    }

    fn ids(q: &ReadyQueue<M>) -> Vec<u64> {
        q.iter().map(|m| m.id).collect()
    }

    #[test]
    fn fifo_without_priorities() {
        let mut q = ReadyQueue::new(None);
        assert_eq!(q.max_priority(), None);
        for id in 1..=5 {
            q.push_back(m(id, 9)); // priorities are ignored
        }
        assert_eq!((q.len(), q.bytes()), (5, 150));
        assert_eq!(ids(&q), [1, 2, 3, 4, 5]);
        assert_eq!(q.pop_front().unwrap().id, 1);
        assert_eq!(q.front().unwrap().id, 2);
        assert_eq!((q.len(), q.bytes()), (4, 140));
        let all: Vec<u64> = std::iter::from_fn(|| q.pop_front()).map(|m| m.id).collect();
        assert_eq!(all, [2, 3, 4, 5]);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
        assert!(q.pop_front().is_none());
    }

    #[test]
    fn priorities_higher_first_fifo_within_and_clamped() {
        let mut q = ReadyQueue::new(Some(5));
        assert_eq!(q.max_priority(), Some(5));
        q.push_back(m(1, 0));
        q.push_back(m(2, 3));
        q.push_back(m(3, 200)); // above max: treated as 5
        q.push_back(m(4, 3));
        q.push_back(m(5, 5));
        q.push_back(m(6, 0));
        assert_eq!(ids(&q), [3, 5, 2, 4, 1, 6]);
        let order: Vec<u64> = std::iter::from_fn(|| q.pop_front()).map(|m| m.id).collect();
        assert_eq!(order, [3, 5, 2, 4, 1, 6]);
    }

    #[test]
    fn max_priority_zero_and_255() {
        let mut q = ReadyQueue::new(Some(0));
        assert_eq!(q.max_priority(), Some(0));
        q.push_back(m(1, 0));
        q.push_back(m(2, 7));
        assert_eq!(ids(&q), [1, 2]);
        let mut q = ReadyQueue::new(Some(255));
        for (id, p) in [(1, 0), (2, 255), (3, 64), (4, 63), (5, 128), (6, 255)] {
            q.push_back(m(id, p));
        }
        assert_eq!(ids(&q), [2, 6, 5, 3, 4, 1]);
        let order: Vec<u64> = std::iter::from_fn(|| q.pop_front()).map(|m| m.id).collect();
        assert_eq!(order, [2, 6, 5, 3, 4, 1]);
    }

    #[test]
    fn requeue_returns_to_original_position() {
        let mut q = ReadyQueue::new(Some(2));
        for (id, p) in [(1, 0), (2, 1), (3, 0), (4, 1), (5, 0), (6, 2)] {
            q.push_back(m(id, p));
        }
        let taken: Vec<M> = (0..4).map(|_| q.pop_front().unwrap()).collect();
        assert_eq!(taken.iter().map(|m| m.id).collect::<Vec<_>>(), [6, 2, 4, 1]);
        assert_eq!(ids(&q), [3, 5]);
        q.requeue(taken[3].clone()); // 1, before 3
        q.requeue(taken[0].clone()); // 6, its own level
        assert_eq!(ids(&q), [6, 1, 3, 5]);
        q.requeue_all([taken[2].clone(), taken[1].clone()]);
        assert_eq!(ids(&q), [6, 2, 4, 1, 3, 5]);
        assert_eq!(q.bytes(), 210);
        // In the middle, and at the back.
        let mut q = ReadyQueue::new(None);
        for id in [1, 3, 5] {
            q.push_back(m(id, 0));
        }
        q.requeue(m(4, 0));
        q.requeue(m(2, 0));
        q.requeue(m(9, 0));
        assert_eq!(ids(&q), [1, 2, 3, 4, 5, 9]);
    }

    #[test]
    fn pop_front_if_and_drop_head() {
        let mut q = ReadyQueue::new(Some(1));
        for (id, p) in [(1, 1), (2, 1), (3, 0), (4, 1)] {
            q.push_back(m(id, p));
        }
        // A sweep from the head (RabbitMQ's dropwhile) crosses into lower
        // priorities once a level is empty, and stops at the first survivor.
        let expired: Vec<u64> = std::iter::from_fn(|| q.pop_front_if(|m| m.id != 3))
            .map(|m| m.id)
            .collect();
        assert_eq!(expired, [1, 2, 4]);
        assert_eq!(ids(&q), [3]);
        assert!(q.pop_front_if(|_| false).is_none());
        assert_eq!(q.drop_head().unwrap().id, 3);
        assert!(q.pop_front_if(|_| true).is_none());
        assert!(q.drop_head().is_none());
    }

    #[test]
    fn retain_remove_drain_clear_keep_counts() {
        let mut q = ReadyQueue::new(Some(3));
        for id in 1..=10 {
            q.push_back(m(id, (id % 4) as u8));
        }
        let total: u64 = (1..=10).map(|i| i * 10).sum();
        assert_eq!(q.bytes(), total);
        let mut gone = Vec::new();
        let n = q.remove_where(|m| m.id % 2 == 0, |m| gone.push(m.id));
        assert_eq!(n, 5);
        assert_eq!(gone, [2, 6, 10, 4, 8]); // delivery order: priority 2, then 0
        assert_eq!(ids(&q), [3, 7, 1, 5, 9]);
        assert_eq!(q.bytes(), total - 300);
        q.retain(|m| m.id > 3);
        assert_eq!(ids(&q), [7, 5, 9]);
        assert_eq!((q.len(), q.bytes()), (3, 210));
        assert_eq!(q.front().unwrap().id, 7);
        let drained: Vec<u64> = q.drain().into_iter().map(|m| m.id).collect();
        assert_eq!(drained, [7, 5, 9]);
        assert!(q.is_empty() && q.bytes() == 0 && q.front().is_none());
        q.push_back(m(11, 1));
        assert_eq!(q.clear(), 1);
        assert!(q.pop_front().is_none());
    }

    /// Random operations against a sorted-vector model.
    #[test]
    fn matches_a_simple_model() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for max in [None, Some(0), Some(3), Some(10), Some(255)] {
            let levels = max.map_or(1, |m: u8| u64::from(m) + 1);
            let mut q = ReadyQueue::new(max);
            let mut model: Vec<M> = Vec::new();
            let mut out: Vec<M> = Vec::new();
            let mut next = 1;
            let key = |x: &M| {
                let lvl = if max.is_none() {
                    0
                } else {
                    u64::from(x.prio).min(levels - 1)
                };
                (std::cmp::Reverse(lvl), x.id)
            };
            for _ in 0..5000 {
                match rnd(10) {
                    0..=3 => {
                        let item = m(next, rnd(u64::from(max.unwrap_or(3)) + 3) as u8);
                        next += 1;
                        model.push(item.clone());
                        q.push_back(item);
                    }
                    4..=6 => {
                        model.sort_by_key(key);
                        let expected = (!model.is_empty()).then(|| model.remove(0));
                        let got = q.pop_front();
                        assert_eq!(got, expected);
                        out.extend(got);
                    }
                    7 | 8 if !out.is_empty() => {
                        let k = (rnd(3) + 1).min(out.len() as u64) as usize;
                        let back: Vec<M> = (0..k)
                            .map(|_| out.remove(rnd(out.len() as u64) as usize))
                            .collect();
                        model.extend(back.iter().cloned());
                        q.requeue_all(back);
                    }
                    _ => {
                        let r = rnd(7);
                        model.retain(|x| x.id % 7 != r);
                        q.retain(|x| x.id % 7 != r);
                    }
                }
                model.sort_by_key(key);
                assert_eq!(q.len(), model.len());
                assert_eq!(q.bytes(), model.iter().map(|x| x.size).sum::<u64>());
                assert_eq!(q.front(), model.first());
            }
            assert_eq!(ids(&q), model.iter().map(|x| x.id).collect::<Vec<_>>());
        }
    }
}
