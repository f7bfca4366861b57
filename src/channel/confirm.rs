//! Publisher confirms: sequence numbers, outstanding counts, and coalesced acks.
//!
//! A publish routed to N queues is confirmed once all N accepted it (and, for
//! persistent messages in durable queues, once the store has fsynced it). Acks
//! for everything below the oldest outstanding publish are sent as one
//! `basic.ack(multiple=true)`.

use super::{Channel, ConnCtx};
use crate::protocol::{AmqpError, AmqpResult};
use amq_protocol::protocol::{basic, confirm, AMQPClass};
use std::collections::BTreeMap;

/// Confirm-mode state of a channel.
#[derive(Debug, Default)]
pub struct Confirms {
    last_seq: u64,
    /// seq → queues that still have to accept it.
    outstanding: BTreeMap<u64, u32>,
    /// Seqs completed since the last flush of acks.
    done: Vec<u64>,
    nacked: Vec<u64>,
}

impl Confirms {
    /// Allocates the next publish sequence number (starting at 1).
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Records that `seq` waits for `queues` acceptances (0 = confirm at once).
    pub fn expect(&mut self, seq: u64, queues: u32) {
        if queues == 0 {
            self.done.push(seq);
        } else {
            self.outstanding.insert(seq, queues);
        }
    }

    /// One queue accepted (`ok`) or refused `seq`.
    pub fn complete(&mut self, seq: u64, ok: bool) {
        let Some(remaining) = self.outstanding.get_mut(&seq) else {
            return;
        };
        if !ok {
            self.outstanding.remove(&seq);
            self.nacked.push(seq);
            return;
        }
        *remaining -= 1;
        if *remaining == 0 {
            self.outstanding.remove(&seq);
            self.done.push(seq);
        }
    }

    /// Writes the acks and nacks owed since the last call.
    pub fn flush(&mut self, channel: u16, ctx: &mut ConnCtx) {
        if !self.done.is_empty() {
            self.done.sort_unstable();
            // A multiple ack must not cover a seq nacked in this round.
            let lowest_nack = self.nacked.iter().min().copied().unwrap_or(u64::MAX);
            let oldest_outstanding = self
                .outstanding
                .keys()
                .next()
                .copied()
                .unwrap_or(u64::MAX)
                .min(lowest_nack);
            let below = self.done.partition_point(|s| *s < oldest_outstanding);
            match below {
                0 => {}
                1 => send_ack(ctx, channel, self.done[0], false),
                n => send_ack(ctx, channel, self.done[n - 1], true),
            }
            for seq in &self.done[below..] {
                send_ack(ctx, channel, *seq, false);
            }
            self.done.clear();
        }
        for seq in self.nacked.drain(..) {
            ctx.send_method(
                channel,
                &AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: seq,
                    multiple: false,
                    requeue: false,
                })),
            );
        }
    }
}

fn send_ack(ctx: &mut ConnCtx, channel: u16, seq: u64, multiple: bool) {
    ctx.send_method(
        channel,
        &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: seq,
            multiple,
        })),
    );
}

impl Channel {
    /// `confirm.select`.
    pub fn confirm_select(&mut self, ctx: &mut ConnCtx, nowait: bool) -> AmqpResult<()> {
        if self.tx.is_some() {
            return Err(AmqpError::precondition(
                "cannot switch from tx to confirm mode",
            ));
        }
        if self.confirms.is_none() {
            self.confirms = Some(Confirms::default());
        }
        if !nowait {
            ctx.send_method(
                self.id,
                &AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
            );
        }
        Ok(())
    }

    /// Applies queue confirmations and writes the resulting acks.
    pub fn confirmed(&mut self, ctx: &mut ConnCtx, seqs: impl Iterator<Item = u64>, ok: bool) {
        if let Some(c) = self.confirms.as_mut() {
            for seq in seqs {
                c.complete(seq, ok);
            }
            c.flush(self.id, ctx);
        }
    }
}
