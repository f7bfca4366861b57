//! Outbound bytes: the [`Outbox`] the connection task encodes into, and the
//! writer task that owns the socket's write half.
//!
//! The connection task encodes a whole batch of frames (replies, deliveries,
//! confirms) into one outbox, then appends it to the writer's queue (a
//! per-connection mutex-protected list of `Bytes` chunks) and wakes it. Large bodies travel as their own chunk (the shared message body, not a
//! copy); small ones are copied next to their frame header because one memcpy of
//! a few hundred bytes is cheaper than an extra iovec. The writer drains every
//! pending batch and issues vectored writes, so one syscall carries many frames.

use crate::protocol::codec::{self, FRAME_END};
use bytes::Bytes;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

/// Bodies at most this large are copied into the frame buffer instead of sent as their own chunk.
const COPY_BODY_MAX: usize = 2048;
/// Bytes handed to the writer and not yet written above which the connection stops taking deliveries.
pub const WRITER_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Chunks per `writev` call.
const IOV_MAX: usize = 64;
/// Chunk-list capacity the writer keeps between batches.
const CHUNKS_KEEP: usize = 1024;

/// Frames encoded during one loop iteration of the connection task.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
    chunks: Vec<Bytes>,
    len: usize,
}

impl Outbox {
    /// The buffer that frame encoders append to.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Appends the body frames of a message, split at `frame_max`.
    pub fn push_body(&mut self, channel: u16, body: &Bytes, frame_max: u32) {
        let max_payload = (frame_max as usize)
            .saturating_sub(codec::FRAME_OVERHEAD)
            .max(1);
        let mut offset = 0;
        while offset < body.len() {
            let end = (offset + max_payload).min(body.len());
            let part = end - offset;
            codec::encode_body_frame_header(&mut self.buf, channel, part);
            if part <= COPY_BODY_MAX {
                self.buf.extend_from_slice(&body[offset..end]);
            } else {
                self.seal();
                self.len += part;
                self.chunks.push(body.slice(offset..end));
            }
            self.buf.push(FRAME_END);
            offset = end;
        }
    }

    fn seal(&mut self) {
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            self.len += buf.len();
            self.chunks.push(Bytes::from(buf));
        }
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.chunks.is_empty()
    }

    /// Moves everything encoded so far onto `dst` (keeping this outbox's
    /// capacity) and returns the number of bytes moved.
    fn drain_into(&mut self, dst: &mut Vec<Bytes>) -> usize {
        self.seal();
        dst.append(&mut self.chunks);
        std::mem::take(&mut self.len)
    }
}

/// State shared by the connection task and its writer task (one per
/// connection, so its mutex is never contended by other connections).
#[derive(Debug, Default)]
struct Shared {
    /// Chunks handed over and not yet taken by the writer.
    queue: parking_lot::Mutex<Vec<Bytes>>,
    /// Bytes handed over and not yet written.
    pending: AtomicUsize,
    /// Wakes the writer: chunks queued, or the handle dropped.
    work: Notify,
    /// Wakes the connection task once the writer is below the high water mark.
    drained: Notify,
    /// The handle was dropped: write what is queued, then shut the socket down.
    closed: AtomicBool,
    /// The writer stopped on a socket error.
    failed: AtomicBool,
}

/// Handle the connection task uses to send batches to its writer; dropping it
/// lets the writer finish what is queued and shut the socket down.
#[derive(Debug)]
pub struct WriterHandle {
    shared: Arc<Shared>,
}

impl WriterHandle {
    /// Hands the outbox's contents to the writer. Returns false if the writer has stopped.
    pub fn send(&self, outbox: &mut Outbox) -> bool {
        if outbox.is_empty() {
            return true;
        }
        let len = outbox.drain_into(&mut self.shared.queue.lock());
        self.shared.pending.fetch_add(len, Ordering::Relaxed);
        self.shared.work.notify_one();
        !self.shared.failed.load(Ordering::Relaxed)
    }

    /// Whether the socket is behind by more than [`WRITER_HIGH_WATER`] bytes.
    pub fn saturated(&self) -> bool {
        self.shared.pending.load(Ordering::Relaxed) > WRITER_HIGH_WATER
    }

    /// Resolves once the writer has caught up below [`WRITER_HIGH_WATER`]
    /// (the connection stops taking deliveries while it is above).
    pub async fn wait_drained(&self) {
        self.shared.drained.notified().await;
    }

    /// Bytes not yet written.
    pub fn pending(&self) -> usize {
        self.shared.pending.load(Ordering::Relaxed)
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.work.notify_one();
    }
}

/// Starts the writer task; it ends when the handle is dropped (after writing
/// everything sent) or on a socket error, and then shuts the socket down.
pub fn spawn(mut socket: OwnedWriteHalf) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let shared = Arc::new(Shared::default());
    let state = shared.clone();
    let task = tokio::spawn(async move {
        let mut chunks: Vec<Bytes> = Vec::new();
        loop {
            // Read `closed` first: everything sent before the drop is then in the queue.
            let closed = state.closed.load(Ordering::Acquire);
            std::mem::swap(&mut *state.queue.lock(), &mut chunks);
            if chunks.is_empty() {
                if closed {
                    break;
                }
                state.work.notified().await;
                continue;
            }
            let written: usize = chunks.iter().map(|c| c.len()).sum();
            if let Err(e) = write_all_vectored(&mut socket, &mut chunks).await {
                tracing::debug!(error = %e, "socket write failed");
                state.failed.store(true, Ordering::Relaxed);
                return;
            }
            if chunks.capacity() > CHUNKS_KEEP {
                chunks.shrink_to(CHUNKS_KEEP);
            }
            let before = state.pending.fetch_sub(written, Ordering::Relaxed);
            if before > WRITER_HIGH_WATER && before - written <= WRITER_HIGH_WATER {
                // One waiter (the connection task); a stored permit only costs it
                // one extra loop turn.
                state.drained.notify_one();
            }
        }
        let _ = socket.shutdown().await;
    });
    (WriterHandle { shared }, task)
}

/// Writes every chunk, advancing through partial writes; leaves `chunks` empty.
async fn write_all_vectored(
    socket: &mut OwnedWriteHalf,
    chunks: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let mut slices = [IoSlice::new(&[]); IOV_MAX];
        let mut count = 0;
        for (slot, c) in slices.iter_mut().zip(&chunks[first..]) {
            *slot = IoSlice::new(c);
            count += 1;
        }
        let mut n = socket.write_vectored(&slices[..count]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let len = chunks[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                bytes::Buf::advance(&mut chunks[first], n);
                n = 0;
            }
        }
    }
    chunks.clear();
    Ok(())
}
