//! Outbound bytes: the [`Outbox`] the connection task encodes into, and the
//! writer task that owns the socket's write half.
//!
//! The connection task encodes a whole batch of frames (replies, deliveries,
//! confirms) into one outbox, then hands it to the writer as a list of `Bytes`
//! chunks. Large bodies travel as their own chunk (the shared message body, not a
//! copy); small ones are copied next to their frame header because one memcpy of
//! a few hundred bytes is cheaper than an extra iovec. The writer drains every
//! pending batch and issues vectored writes, so one syscall carries many frames.

use crate::protocol::codec::{self, FRAME_END};
use bytes::Bytes;
use std::io::IoSlice;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, Notify};

/// Bodies at most this large are copied into the frame buffer instead of sent as their own chunk.
const COPY_BODY_MAX: usize = 2048;
/// Bytes handed to the writer and not yet written above which the connection stops taking deliveries.
pub const WRITER_HIGH_WATER: usize = 4 * 1024 * 1024;

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

    /// Takes everything encoded so far as chunks plus their total length.
    pub fn take(&mut self) -> (Vec<Bytes>, usize) {
        self.seal();
        let len = std::mem::take(&mut self.len);
        (std::mem::take(&mut self.chunks), len)
    }
}

/// Handle the connection task uses to send batches to its writer.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: mpsc::UnboundedSender<Vec<Bytes>>,
    pending: Arc<AtomicUsize>,
    drained: Arc<Notify>,
}

impl WriterHandle {
    /// Hands the outbox's contents to the writer. Returns false if the writer has stopped.
    pub fn send(&self, outbox: &mut Outbox) -> bool {
        if outbox.is_empty() {
            return true;
        }
        let (chunks, len) = outbox.take();
        self.pending.fetch_add(len, Ordering::Relaxed);
        self.tx.send(chunks).is_ok()
    }

    /// Whether the socket is behind by more than [`WRITER_HIGH_WATER`] bytes.
    pub fn saturated(&self) -> bool {
        self.pending.load(Ordering::Relaxed) > WRITER_HIGH_WATER
    }

    /// Resolves once the writer has caught up below [`WRITER_HIGH_WATER`]
    /// (the connection stops taking deliveries while it is above).
    pub async fn wait_drained(&self) {
        self.drained.notified().await;
    }

    /// Bytes not yet written.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

/// Starts the writer task; it ends when every handle is dropped (after writing
/// everything sent) or on a socket error, and then shuts the socket down.
pub fn spawn(mut socket: OwnedWriteHalf) -> (WriterHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Bytes>>();
    let pending = Arc::new(AtomicUsize::new(0));
    let counter = pending.clone();
    let drained = Arc::new(Notify::new());
    let wake = drained.clone();
    let task = tokio::spawn(async move {
        let mut batch: Vec<Vec<Bytes>> = Vec::new();
        let mut chunks: Vec<Bytes> = Vec::new();
        while rx.recv_many(&mut batch, 256).await > 0 {
            chunks.extend(batch.drain(..).flatten());
            let written: usize = chunks.iter().map(|c| c.len()).sum();
            if let Err(e) = write_all_vectored(&mut socket, &mut chunks).await {
                tracing::debug!(error = %e, "socket write failed");
                return;
            }
            let before = counter.fetch_sub(written, Ordering::Relaxed);
            if before > WRITER_HIGH_WATER && before - written <= WRITER_HIGH_WATER {
                // One waiter (the connection task); a stored permit only costs it
                // one extra loop turn.
                wake.notify_one();
            }
        }
        let _ = socket.shutdown().await;
    });
    (
        WriterHandle {
            tx,
            pending,
            drained,
        },
        task,
    )
}

/// Writes every chunk, advancing through partial writes; leaves `chunks` empty.
async fn write_all_vectored(
    socket: &mut OwnedWriteHalf,
    chunks: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let slices: Vec<IoSlice<'_>> = chunks[first..]
            .iter()
            .take(64)
            .map(|c| IoSlice::new(c))
            .collect();
        let mut n = socket.write_vectored(&slices).await?;
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
