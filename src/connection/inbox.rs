//! A connection's event inbox: many senders (queues, other connections), one
//! receiver (the connection task).
//!
//! Same contract as an unbounded tokio mpsc channel (send never waits, fails
//! once the receiver is gone; `recv_many` takes a batch), but built on a
//! per-connection `Vec` behind a mutex and a `Notify`: an idle connection
//! allocates nothing for it, where an mpsc channel allocates a 32-slot block
//! up front, which was a tenth of an idle connection's memory. The mutex is
//! per connection and held for a push or a swap, never across an await.

use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::mpsc::error::SendError;
use tokio::sync::Notify;

#[derive(Debug)]
struct Shared<T> {
    /// Pending events; `None` once the receiver is gone.
    queue: Mutex<Option<Vec<T>>>,
    /// Wakes the receiver after a push.
    ready: Notify,
}

/// The sending side; clone it freely.
#[derive(Debug)]
pub struct InboxSender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for InboxSender<T> {
    fn clone(&self) -> Self {
        InboxSender {
            shared: self.shared.clone(),
        }
    }
}

/// The receiving side, owned by the connection task.
#[derive(Debug)]
pub struct Inbox<T> {
    shared: Arc<Shared<T>>,
}

/// A new, empty inbox.
pub fn inbox<T>() -> (InboxSender<T>, Inbox<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Some(Vec::new())),
        ready: Notify::new(),
    });
    (
        InboxSender {
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

impl<T> InboxSender<T> {
    /// Whether both senders feed the same inbox.
    pub fn same_channel(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Queues `event`; gives it back if the receiver is gone.
    pub fn send(&self, event: T) -> Result<(), SendError<T>> {
        match self.shared.queue.lock().as_mut() {
            Some(queue) => queue.push(event),
            None => return Err(SendError(event)),
        }
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl<T> Inbox<T> {
    /// Waits until at least one event is queued, then moves up to `limit`
    /// events onto `out` in order and returns how many. Cancel-safe: events
    /// stay queued until a call returns them.
    pub async fn recv_many(&mut self, out: &mut Vec<T>, limit: usize) -> usize {
        loop {
            {
                let mut guard = self.shared.queue.lock();
                let queue = guard.as_mut().expect("only the receiver closes the inbox");
                if !queue.is_empty() {
                    let n = queue.len().min(limit);
                    if out.is_empty() && n == queue.len() {
                        // The common case: take the whole batch, hand back our
                        // (empty) buffer for the next pushes.
                        std::mem::swap(queue, out);
                    } else {
                        out.extend(queue.drain(..n));
                    }
                    return n;
                }
            }
            self.shared.ready.notified().await;
        }
    }
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        // Later sends fail; queued events are dropped, as with a closed channel.
        let queued = self.shared.queue.lock().take();
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_in_batches_up_to_the_limit() {
        let (tx, mut rx) = inbox();
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(rx.recv_many(&mut out, 3).await, 3);
        assert_eq!(out, [0, 1, 2]);
        out.clear();
        assert_eq!(rx.recv_many(&mut out, 10).await, 2);
        assert_eq!(out, [3, 4]);
    }

    #[tokio::test]
    async fn wakes_the_receiver_on_send_from_another_task() {
        let (tx, mut rx) = inbox();
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send("hello").unwrap();
        });
        let mut out = Vec::new();
        assert_eq!(rx.recv_many(&mut out, 8).await, 1);
        assert_eq!(out, ["hello"]);
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn send_fails_once_the_receiver_is_dropped() {
        let (tx, rx) = inbox();
        tx.send(1).unwrap();
        drop(rx);
        assert_eq!(tx.send(2).unwrap_err().0, 2);
    }
}
