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
//!
//! **Compact tail** ([`ReadyQueue::with_compact_tail`], queues without priorities): beyond
//! the first `head` messages, entries that have a compact form ([`HasId::compact`]: a body on
//! disk and no per-message state) are kept as *runs* — consecutive ids whose records follow
//! each other in the same log — costing 4 bytes per message (its body size) instead of a whole
//! entry, so a backlog of 10 million paged messages costs tens of megabytes, not hundreds.
//! Runs are expanded back into entries as the head drains below `head / 2`, so the head
//! (where delivery, expiry and the pager's read-ahead window work) always holds real entries.
//! Every item of the tail comes after every item of the head in delivery order; requeued
//! messages always belong in the head (they are older than anything in the tail).

use std::collections::VecDeque;

/// Most messages in one run of the compact tail (bounds the slack of its size vector).
const RUN_MAX: usize = 65_536;

/// What a compact-tail entry keeps of a message (see [`HasId::compact`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Seq of its page-log record; 0 = in the queue's durable log, under its id.
    pub page_seq: u64,
    /// Body size in bytes.
    pub size: u32,
    /// The message's `priority` property.
    pub priority: u8,
}

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
    /// The compact form of this entry, if it can live in the compact tail: equal to
    /// [`expand`](Self::expand)`(id, slot)`. The default: none.
    fn compact(&self) -> Option<Slot> {
        None
    }
    /// Rebuilds an entry from what [`compact`](Self::compact) returned for it; never called
    /// for types whose `compact` returns `None`.
    fn expand(id: u64, slot: Slot) -> Self
    where
        Self: Sized,
    {
        unreachable!("expand({id}, {slot:?}) for a type without a compact form")
    }
}

/// Consecutive ids whose bodies are consecutive records of one log.
#[derive(Debug, Clone)]
struct Run {
    /// Id of `sizes[start]`.
    first_id: u64,
    /// Page-log seq of `sizes[start]`; 0 = durable log (the seq is the id).
    page_seq: u64,
    priority: u8,
    /// Index of the first message still in the run.
    start: usize,
    sizes: Vec<u32>,
}

impl Run {
    fn len(&self) -> usize {
        self.sizes.len() - self.start
    }

    fn last_id(&self) -> u64 {
        self.first_id + self.len() as u64 - 1
    }

    /// Appends `(id, slot)` if it continues the run.
    fn try_push(&mut self, id: u64, slot: Slot) -> bool {
        let n = self.len() as u64;
        let follows = id == self.first_id + n
            && slot.priority == self.priority
            && if self.page_seq == 0 {
                slot.page_seq == 0
            } else {
                slot.page_seq == self.page_seq + n
            };
        if !follows || self.sizes.len() >= RUN_MAX {
            return false;
        }
        self.sizes.push(slot.size);
        true
    }

    /// Takes the first message (the run must not be empty).
    fn pop(&mut self) -> (u64, Slot) {
        let slot = Slot {
            page_seq: self.page_seq,
            size: self.sizes[self.start],
            priority: self.priority,
        };
        let id = self.first_id;
        self.start += 1;
        self.first_id += 1;
        if self.page_seq != 0 {
            self.page_seq += 1;
        }
        (id, slot)
    }
}

/// An item of the compact tail.
#[derive(Debug, Clone)]
enum Tail<T> {
    Run(Run),
    /// An entry without a compact form, kept whole to keep the order.
    One(T),
}

impl<T: HasId> Tail<T> {
    fn last_id(&self) -> u64 {
        match self {
            Tail::Run(r) => r.last_id(),
            Tail::One(t) => t.id(),
        }
    }

    fn covers(&self, id: u64) -> bool {
        match self {
            Tail::Run(r) => (r.first_id..=r.last_id()).contains(&id),
            Tail::One(t) => t.id() == id,
        }
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
    /// Messages after the head (`levels[0]`) in compact form; empty unless `compact_after > 0`.
    tail: VecDeque<Tail<T>>,
    /// Head length beyond which new messages go to the compact tail (0 = no tail).
    compact_after: usize,
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
            tail: VecDeque::new(),
            compact_after: 0,
        }
    }

    /// Keeps messages beyond the first `head` in the compact tail when they have a compact
    /// form (see the module docs). Queues with priorities keep no tail; 0 = no tail.
    pub fn with_compact_tail(mut self, head: usize) -> Self {
        if self.levels.len() == 1 {
            self.compact_after = head;
        }
        self
    }

    /// Appends to the compact tail, extending its last run when `item` continues it.
    fn push_tail(&mut self, item: T) {
        match item.compact() {
            Some(slot) => {
                let id = item.id();
                if let Some(Tail::Run(run)) = self.tail.back_mut() {
                    if run.try_push(id, slot) {
                        return;
                    }
                }
                self.tail.push_back(Tail::Run(Run {
                    first_id: id,
                    page_seq: slot.page_seq,
                    priority: slot.priority,
                    start: 0,
                    sizes: vec![slot.size],
                }));
            }
            None => self.tail.push_back(Tail::One(item)),
        }
    }

    /// Takes the first message of the compact tail, as an entry.
    fn pop_tail(&mut self) -> Option<T> {
        let item = match self.tail.front_mut()? {
            Tail::Run(run) => {
                let (id, slot) = run.pop();
                if run.len() == 0 {
                    self.tail.pop_front();
                }
                T::expand(id, slot)
            }
            Tail::One(_) => match self.tail.pop_front() {
                Some(Tail::One(t)) => t,
                _ => unreachable!("front is a Tail::One"),
            },
        };
        Some(item)
    }

    /// Expands tail messages into the head once it has drained below half of
    /// `compact_after`, so that it never runs dry while the tail holds messages.
    fn refill(&mut self) {
        let head = &self.levels[0];
        if self.tail.is_empty() || (!head.is_empty() && head.len() >= self.compact_after / 2) {
            return;
        }
        while self.levels[0].len() < self.compact_after.max(1) {
            let Some(item) = self.pop_tail() else { break };
            self.levels[0].push_back(item);
        }
        self.mark(0);
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
        if self.compact_after > 0
            && (!self.tail.is_empty() || self.levels[0].len() >= self.compact_after)
        {
            let size = item.body_size();
            self.push_tail(item);
            self.added(0, size);
            return;
        }
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
        self.refill();
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

    /// Whether a message with this id is ready (a binary search per non-empty level and in
    /// the compact tail).
    pub fn contains_id(&self, id: u64) -> bool {
        let in_tail = || {
            let i = self.tail.partition_point(|t| t.last_id() < id);
            self.tail.get(i).is_some_and(|t| t.covers(id))
        };
        self.levels
            .iter()
            .any(|q| !q.is_empty() && q.binary_search_by_key(&id, |e| e.id()).is_ok())
            || in_tail()
    }

    /// The ready messages held as entries, in delivery order, mutably: all but those in
    /// compact runs (whose bodies are on disk and which have no per-message state). Callers
    /// must not change what [`HasId`] reports (id, size, priority, compact form): the levels,
    /// byte count and runs depend on it.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        let tail = self.tail.iter_mut().filter_map(|t| match t {
            Tail::One(item) => Some(item),
            Tail::Run(_) => None,
        });
        self.levels.iter_mut().rev().flatten().chain(tail)
    }

    /// The ready messages held as entries, in delivery order (see [`iter_mut`](Self::iter_mut)).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
        let tail = self.tail.iter().filter_map(|t| match t {
            Tail::One(item) => Some(item),
            Tail::Run(_) => None,
        });
        self.levels.iter().rev().flatten().chain(tail)
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
        // The compact tail: each message is looked at as an entry; kept ones are re-packed.
        let old_tail = std::mem::take(&mut self.tail);
        for t in old_tail {
            let mut run = match t {
                Tail::One(item) => {
                    count += self.keep_or_remove(item, &mut pred, &mut removed);
                    continue;
                }
                Tail::Run(run) => run,
            };
            while run.len() > 0 {
                let (id, slot) = run.pop();
                count += self.keep_or_remove(T::expand(id, slot), &mut pred, &mut removed);
            }
        }
        self.refill();
        count
    }

    /// Part of [`remove_where`](Self::remove_where) for one tail message: 1 if removed.
    fn keep_or_remove(
        &mut self,
        item: T,
        pred: &mut impl FnMut(&T) -> bool,
        removed: &mut impl FnMut(T),
    ) -> usize {
        if pred(&item) {
            self.len -= 1;
            self.bytes -= item.body_size();
            removed(item);
            1
        } else {
            self.push_tail(item);
            0
        }
    }

    /// Removes every message (purge), handing them to `f` in delivery order; compact runs are
    /// expanded one message at a time, so a large backlog is never materialised at once.
    pub fn drain_with(&mut self, mut f: impl FnMut(T)) {
        for level in self.levels.iter_mut().rev() {
            level.drain(..).for_each(&mut f);
        }
        while let Some(item) = self.pop_tail() {
            f(item);
        }
        self.occupied = [0; 4];
        self.len = 0;
        self.bytes = 0;
    }

    /// Removes every message (purge), returning them in delivery order.
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.len);
        self.drain_with(|item| out.push(item));
        out
    }

    /// Removes every message, returning how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.len;
        for level in &mut self.levels {
            level.clear();
        }
        self.tail.clear();
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
        // Every fifth message has no compact form (it stays whole in the tail).
        fn compact(&self) -> Option<Slot> {
            (!self.id.is_multiple_of(5)).then_some(Slot {
                page_seq: 0,
                size: self.size as u32,
                priority: self.prio,
            })
        }
        fn expand(id: u64, slot: Slot) -> Self {
            M {
                id,
                prio: slot.priority,
                size: u64::from(slot.size),
            }
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
    /// A paged entry: `page` is its page-log seq (0 = durable log); `state` = not compactable.
    #[derive(Debug, Clone, PartialEq)]
    struct P {
        id: u64,
        page: u64,
        state: bool,
    }

    impl HasId for P {
        fn id(&self) -> u64 {
            self.id
        }
        fn body_size(&self) -> u64 {
            100 + self.id
        }
        fn compact(&self) -> Option<Slot> {
            (!self.state).then_some(Slot {
                page_seq: self.page,
                size: (100 + self.id) as u32,
                priority: 0,
            })
        }
        fn expand(id: u64, slot: Slot) -> Self {
            P {
                id,
                page: slot.page_seq,
                state: false,
            }
        }
    }

    #[test]
    fn compact_tail_keeps_order_counts_and_ids() {
        let mut q = ReadyQueue::new(None).with_compact_tail(4);
        // ids 1..=1000 in the durable log, then 1001..=1100 in the page log (seqs 1..),
        // with a whole entry (1050) and a gap in page seqs (after 1080) breaking runs.
        let mut all = Vec::new();
        for id in 1..=1100u64 {
            let page = match id {
                ..=1000 => 0,
                1001..=1080 => id - 1000,
                _ => id - 1000 + 7,
            };
            all.push(P {
                id,
                page,
                state: id == 1050,
            });
        }
        for p in all.iter().cloned() {
            q.push_back(p);
        }
        assert_eq!(q.len(), 1100);
        assert_eq!(q.bytes(), all.iter().map(|p| p.body_size()).sum::<u64>());
        // Head of 4 entries; tail: durable run, page run 1001..=1049, 1050 whole,
        // page run 1051..=1080, page run 1081..=1100.
        assert_eq!(
            q.tail.len(),
            5,
            "{:?}",
            q.tail.iter().map(Tail::last_id).collect::<Vec<_>>()
        );
        assert_eq!(
            q.iter().map(|p| p.id).collect::<Vec<_>>(),
            [1, 2, 3, 4, 1050]
        );
        for id in [1, 4, 5, 999, 1000, 1001, 1049, 1050, 1051, 1100] {
            assert!(q.contains_id(id), "{id}");
        }
        assert!(!q.contains_id(0) && !q.contains_id(1101));
        // Pop half, requeue two of them, drop some from the tail, then drain in order.
        let mut popped: Vec<P> = (0..600).map(|_| q.pop_front().unwrap()).collect();
        assert_eq!(popped, all[..600]);
        assert!(!q.contains_id(600) && q.contains_id(601));
        let back = vec![popped.remove(599), popped.remove(10)];
        q.requeue_all(back);
        let mut gone = Vec::new();
        assert_eq!(q.remove_where(|p| p.id % 100 == 0, |p| gone.push(p.id)), 6);
        assert_eq!(gone, [600, 700, 800, 900, 1000, 1100]);
        let mut expect: Vec<P> = vec![all[10].clone()];
        expect.extend(all[600..].iter().filter(|p| p.id % 100 != 0).cloned());
        assert_eq!(q.len(), expect.len());
        assert_eq!(q.bytes(), expect.iter().map(|p| p.body_size()).sum::<u64>());
        let mut drained = Vec::new();
        q.drain_with(|p| drained.push(p));
        assert_eq!(drained, expect);
        assert!(q.is_empty() && q.tail.is_empty() && q.front().is_none());
    }

    #[test]
    fn compact_tail_costs_four_bytes_a_message() {
        let mut q = ReadyQueue::new(None).with_compact_tail(4096);
        for id in 1..=1_000_000u64 {
            q.push_back(P {
                id,
                page: 0,
                state: false,
            });
        }
        let heap: usize = q
            .tail
            .iter()
            .map(|t| match t {
                Tail::Run(r) => r.sizes.capacity() * 4,
                Tail::One(_) => 0,
            })
            .sum();
        assert_eq!(q.tail.len(), (1_000_000 - 4096usize).div_ceil(RUN_MAX));
        assert!(heap <= 1_000_000 * 4 + RUN_MAX * 4, "{heap} bytes");
        assert_eq!(q.pop_front().unwrap().id, 1);
        assert_eq!(q.len(), 999_999);
    }

    #[test]
    fn matches_a_simple_model() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let shapes = [
            (None, 0),
            (Some(0), 0),
            (Some(3), 0),
            (Some(10), 0),
            (Some(255), 0),
            (None, 2),
            (None, 16),
            (Some(3), 16), // priority queues keep no tail
        ];
        for (max, tail) in shapes {
            let levels = max.map_or(1, |m: u8| u64::from(m) + 1);
            let mut q = ReadyQueue::new(max).with_compact_tail(tail);
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
            let all: Vec<u64> = q.drain().into_iter().map(|x| x.id).collect();
            assert_eq!(all, model.iter().map(|x| x.id).collect::<Vec<_>>());
        }
    }
}
