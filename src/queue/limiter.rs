//! Credit shared between a channel and the queues that deliver to it.
//!
//! Per-consumer prefetch lives inside each queue actor. What spans queues lives
//! here (RabbitMQ's `rabbit_limiter`): the channel-wide prefetch of
//! `basic.qos(global=true)` and the connection's count of
//! deliveries not yet written to the socket. A queue that finds no credit
//! registers itself in `waiting` and is sent [`QueueCmd::Wake`] when credit frees.

use super::{QueueCmd, QueueHandle};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

/// Deliveries a connection may have queued but not yet written before queues pause.
pub const CONN_DELIVERY_HIGH_WATER: usize = 4096;

/// Per-connection counters.
#[derive(Debug, Default)]
pub struct ConnShared {
    /// Deliveries handed to the connection and not yet encoded for the socket.
    pub queued_deliveries: AtomicUsize,
    waiting: Mutex<Vec<QueueHandle>>,
}

impl ConnShared {
    /// Whether queues should stop sending deliveries for now.
    pub fn saturated(&self) -> bool {
        self.queued_deliveries.load(Ordering::Relaxed) >= CONN_DELIVERY_HIGH_WATER
    }

    /// Registers a queue to wake when the connection drains.
    pub fn wait(&self, queue: &QueueHandle) {
        push_unique(&mut self.waiting.lock(), queue);
    }

    /// Called by the connection after writing deliveries.
    pub fn delivered(&self, n: usize) {
        let before = self.queued_deliveries.fetch_sub(n, Ordering::Relaxed);
        if before >= CONN_DELIVERY_HIGH_WATER && before - n < CONN_DELIVERY_HIGH_WATER {
            wake_all(&self.waiting);
        }
    }
}

/// Per-channel limits.
#[derive(Debug)]
pub struct ChannelLimiter {
    /// `basic.qos(global=true)` prefetch count (0 = unlimited).
    pub global_prefetch: AtomicU32,
    /// Unsettled deliveries counted against the global prefetch.
    pub global_unacked: AtomicU32,
    /// The connection's counters.
    pub conn: Arc<ConnShared>,
    waiting: Mutex<Vec<QueueHandle>>,
}

/// Outcome of asking the limiter for one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credit {
    /// Go ahead; `counted` says whether the global prefetch was charged.
    Granted {
        /// Whether the global prefetch counter was charged.
        counted: bool,
    },
    /// Blocked; the queue has been registered for a wake-up.
    Blocked,
}

impl ChannelLimiter {
    /// A limiter with no limits for a channel of `conn`.
    pub fn new(conn: Arc<ConnShared>) -> Self {
        ChannelLimiter {
            global_prefetch: AtomicU32::new(0),
            global_unacked: AtomicU32::new(0),
            conn,
            waiting: Mutex::new(Vec::new()),
        }
    }

    /// Asks for credit for one delivery to a consumer (`acked` = not no-ack).
    pub fn acquire(&self, queue: &QueueHandle, acked: bool) -> Credit {
        // Register first and re-check, so a wake-up that races with the
        // registration is never lost.
        if self.conn.saturated() {
            self.conn.wait(queue);
            if self.conn.saturated() {
                return Credit::Blocked;
            }
        }
        let limit = self.global_prefetch.load(Ordering::Acquire);
        if !acked || limit == 0 {
            return Credit::Granted { counted: false };
        }
        let prev = self.global_unacked.fetch_add(1, Ordering::AcqRel);
        if prev >= limit {
            self.global_unacked.fetch_sub(1, Ordering::AcqRel);
            let mut waiting = self.waiting.lock();
            push_unique(&mut waiting, queue);
            // Re-check after registering: an ack may have freed credit in between.
            if self.global_unacked.load(Ordering::Acquire) < limit {
                drop(waiting);
                return self.acquire(queue, acked);
            }
            return Credit::Blocked;
        }
        Credit::Granted { counted: true }
    }

    /// Returns global credit for `n` settled deliveries and wakes blocked queues.
    pub fn release(&self, n: u32) {
        if n == 0 {
            return;
        }
        self.global_unacked.fetch_sub(n, Ordering::AcqRel);
        self.wake();
    }

    /// Wakes every queue waiting on this channel.
    pub fn wake(&self) {
        wake_all(&self.waiting);
    }
}

fn push_unique(waiting: &mut Vec<QueueHandle>, queue: &QueueHandle) {
    if !waiting.iter().any(|q| q.id == queue.id) {
        waiting.push(queue.clone());
    }
}

fn wake_all(waiting: &Mutex<Vec<QueueHandle>>) {
    let queues = std::mem::take(&mut *waiting.lock());
    for q in queues {
        q.send_control(QueueCmd::Wake);
    }
}
