//! Delayed messages: exchanges of type `x-delayed-message`, as the
//! `rabbitmq-delayed-message-exchange` plugin has them.
//!
//! Such an exchange routes like the type named by its `x-delayed-type` argument,
//! except that a message published to it with a positive `x-delay` header
//! (milliseconds) is held for that long, then routed through the exchange's
//! bindings **as they are then**, with `x-delay` set to minus the delay (so it is
//! not delayed again further down an exchange-to-exchange chain).
//!
//! One [`Scheduler`] task per delayed exchange owns its pending messages in a
//! binary heap ordered by due time, and sleeps until the earliest one: no timer
//! per message. Entries are compact: small messages (routing key, properties
//! and a body of at most [`PACK_LIMIT`] bytes) are packed into one allocation,
//! so that a pending message does not keep its publisher's read buffer alive;
//! larger bodies are kept as the shared `Bytes` they arrived in.
//!
//! **Durability.** A durable delayed exchange on a broker with a store keeps its
//! *persistent* messages in a hidden log of the message store, under the key
//! [`delayed_key`] (the record format is the queues'; the record's `exchange`
//! field holds the due time, see `docs/storage-format.md`). The publisher's
//! confirm waits for that log's fsync. When the message is due, it is handed to
//! its queues and removed from the log only once every queue has accepted it
//! (their own confirms), so a crash in between re-delivers it rather than losing
//! it. At startup the log is read back and the timers re-armed; messages whose
//! time passed while the broker was down are routed at once, after the bindings
//! are restored. Transient messages and non-durable exchanges stay in memory.
//!
//! As in the plugin, a delayed message is not routed at publish time: with
//! `mandatory` it is returned (312 `NO_ROUTE`) at once even though it will be
//! delivered later, and it goes to the exchange's alternate exchange at once.

use super::sender_selected;
use super::VHost;
use crate::connection::inbox::{inbox, Inbox, InboxSender};
use crate::exchange::ExchangeKind;
use crate::message::Message;
use crate::protocol::{AmqpError, AmqpResult};
use crate::queue::{ConfirmTag, ConnEvent, ConnHandle, PublishBatch, QueueCmd, QueueHandle};
use crate::store::{QueueKey, StoreHandle, StoredMessage};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Weak};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn, Instrument};

/// The exchange type name.
pub const DELAYED_TYPE: &str = "x-delayed-message";

/// The longest delay honoured (an Erlang timer's limit in the plugin); a longer
/// one, like a delay ≤ 0, routes the message at once.
pub const MAX_DELAY_MS: u64 = 4_294_967_295;

/// Bodies up to this size are copied into the pending entry's single allocation.
pub const PACK_LIMIT: usize = 512;

/// Most messages routed in one go before the scheduler looks at its inbox again.
const FIRE_BATCH: usize = 4096;

/// How long a stopping scheduler waits for queues to confirm what it routed.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The underlying exchange type of an `x-delayed-message` exchange, checked as
/// the plugin's `validate/1` does.
pub fn delayed_kind(args: &FieldTable) -> AmqpResult<ExchangeKind> {
    let name = match args.inner().get("x-delayed-type") {
        Some(AMQPValue::LongString(s)) => s.as_bytes(),
        Some(AMQPValue::ShortString(s)) => s.as_str().as_bytes(),
        Some(AMQPValue::ByteArray(b)) => b.as_slice(),
        _ => {
            return Err(AmqpError::precondition(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type",
            ))
        }
    };
    if name == DELAYED_TYPE.as_bytes() {
        return Err(AmqpError::precondition(
            "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
        ));
    }
    let name = String::from_utf8_lossy(name);
    ExchangeKind::parse(&name)
        .ok_or_else(|| AmqpError::command_invalid(format_args!("unknown exchange type '{name}'")))
}

/// The delay a message asks for: its `x-delay` header as the plugin reads it
/// (integer types; strings of an integer; floats and decimals truncated), if it
/// is in `1 ..= MAX_DELAY_MS`.
pub fn delay_of(headers: Option<&FieldTable>) -> Option<u64> {
    let v = headers?.inner().get("x-delay")?;
    let ms: i128 = match v {
        AMQPValue::LongString(s) => parse_int(s.as_bytes())?,
        AMQPValue::ShortString(s) => parse_int(s.as_str().as_bytes())?,
        AMQPValue::Float(f) => f.trunc() as i128,
        AMQPValue::Double(f) => f.trunc() as i128,
        AMQPValue::DecimalValue(d) => {
            let v = i128::from(d.value);
            v / 10i128.pow(u32::from(d.scale.min(38)))
        }
        other => i128::from(crate::queue::args::int_value(other)?),
    };
    u64::try_from(ms)
        .ok()
        .filter(|ms| (1..=MAX_DELAY_MS).contains(ms))
}

/// Erlang's `binary_to_integer/1`: an optional sign, then decimal digits only.
fn parse_int(s: &[u8]) -> Option<i128> {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 30 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: i128 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(if neg { -n } else { n })
}

/// Prefix of every delayed exchange's store key (a queue's key starts with a digit).
pub const DELAYED_KEY_PREFIX: &str = "x-delayed:";

/// The store key of a delayed exchange's log (never equal to a queue's key,
/// which starts with a digit).
pub fn delayed_key(vhost: &str, exchange: &str) -> QueueKey {
    format!("{DELAYED_KEY_PREFIX}{}:{}{}", vhost.len(), vhost, exchange)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A pending message's routing key, properties and body.
#[derive(Debug)]
enum Payload {
    /// `[rk_len: u8][props_len: u32 LE][routing key][properties][body]`.
    Packed(Box<[u8]>),
    /// Too large to copy.
    Shared(Box<(Box<str>, Bytes, Bytes)>),
}

impl Payload {
    fn new(routing_key: &str, props: &[u8], body: &Bytes) -> Payload {
        let rk = &routing_key.as_bytes()[..routing_key.len().min(255)];
        if body.len() > PACK_LIMIT {
            return Payload::Shared(Box::new((
                routing_key.into(),
                Bytes::copy_from_slice(props),
                body.clone(),
            )));
        }
        let mut buf = Vec::with_capacity(5 + rk.len() + props.len() + body.len());
        buf.push(rk.len() as u8);
        buf.extend_from_slice(&(props.len() as u32).to_le_bytes());
        buf.extend_from_slice(rk);
        buf.extend_from_slice(props);
        buf.extend_from_slice(body);
        Payload::Packed(buf.into_boxed_slice())
    }

    /// (routing key, properties, body); the packed buffer is sliced, not copied.
    fn into_parts(self) -> (String, Bytes, Bytes) {
        match self {
            Payload::Shared(b) => {
                let (rk, props, body) = *b;
                (rk.into(), props, body)
            }
            Payload::Packed(buf) => {
                let all = Bytes::from(Vec::from(buf));
                let rk_len = all[0] as usize;
                let props_len = u32::from_le_bytes([all[1], all[2], all[3], all[4]]) as usize;
                let rk = String::from_utf8_lossy(&all[5..5 + rk_len]).into_owned();
                let props = all.slice(5 + rk_len..5 + rk_len + props_len);
                let body = all.slice(5 + rk_len + props_len..);
                (rk, props, body)
            }
        }
    }
}

/// One message waiting for its time.
#[derive(Debug)]
struct Pending {
    /// Unix time in ms.
    due: u64,
    /// Order among equal due times, and the record's seq in the log.
    seq: u64,
    /// Written to the exchange's log.
    stored: bool,
    data: Payload,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest must come out first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

enum Cmd {
    Delay {
        msg: Arc<Message>,
        delay: u64,
        stored: bool,
        confirm: Option<(InboxSender<ConnEvent>, ConfirmTag)>,
    },
    /// Start routing due messages (after startup restored the bindings).
    Start,
    /// Broker shutdown: stop, keeping the log.
    Stop(oneshot::Sender<()>),
    /// The exchange was deleted: drop everything, log included.
    Delete,
}

/// The sending side of a delayed exchange's scheduler (cheap to clone).
#[derive(Debug, Clone)]
pub struct DelayedHandle {
    /// Identifies this scheduler instance (a redeclared exchange gets a new one).
    pub id: u64,
    /// Whether persistent messages are written to a log.
    stored: bool,
    tx: mpsc::UnboundedSender<Cmd>,
}

impl DelayedHandle {
    /// Holds `msg` for `delay` ms. Returns true when the publisher's confirm
    /// will come from the scheduler (after the log's fsync); otherwise the
    /// caller confirms at once.
    pub fn delay(
        &self,
        msg: Arc<Message>,
        delay: u64,
        confirm: Option<(&ConnHandle, ConfirmTag)>,
    ) -> bool {
        let stored = self.stored && msg.is_persistent();
        let confirm = confirm
            .filter(|_| stored)
            .map(|(conn, tag)| (conn.tx.clone(), tag));
        let held = confirm.is_some();
        let sent = self.tx.send(Cmd::Delay {
            msg,
            delay,
            stored,
            confirm,
        });
        held && sent.is_ok()
    }

    /// Starts routing due messages (see [`spawn`]'s `started`).
    pub fn start(&self) {
        let _ = self.tx.send(Cmd::Start);
    }

    /// Stops the scheduler for a broker shutdown (the log is kept).
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The exchange is gone: drops its pending messages and its log.
    pub fn delete(&self) {
        let _ = self.tx.send(Cmd::Delete);
    }
}

/// Where a scheduler routes and stores.
pub struct SchedulerSpec {
    /// Unique id (also the id of its pseudo-connection for queue confirms).
    pub id: u64,
    /// The exchange's name.
    pub exchange: Arc<str>,
    /// Its vhost.
    pub vhost: Weak<VHost>,
    /// The store and log key (durable exchange on a broker with a store).
    pub store: Option<(StoreHandle, QueueKey)>,
    /// Messages recovered from the log.
    pub recovered: Vec<StoredMessage>,
    /// Whether to route due messages at once (false at startup until [`DelayedHandle::start`]).
    pub started: bool,
}

/// Starts the scheduler task of one delayed exchange.
pub fn spawn(spec: SchedulerSpec) -> DelayedHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (events_tx, events) = inbox::<ConnEvent>();
    let now = now_ms();
    let mut heap = BinaryHeap::with_capacity(spec.recovered.len());
    let mut next_seq = 1;
    for m in spec.recovered {
        next_seq = next_seq.max(m.seq + 1);
        heap.push(Pending {
            // A record whose due time cannot be read is routed at once.
            due: m.exchange.parse().unwrap_or(now),
            seq: m.seq,
            stored: true,
            data: Payload::new(&m.routing_key, &m.header, &m.body),
        });
    }
    let handle = DelayedHandle {
        id: spec.id,
        stored: spec.store.is_some(),
        tx,
    };
    let span = tracing::info_span!("delayed", exchange = %spec.exchange);
    let scheduler = Scheduler {
        exchange: spec.exchange,
        vhost: spec.vhost,
        store: spec.store,
        heap,
        next_seq,
        started: spec.started,
        me: ConnHandle {
            id: spec.id,
            tx: events_tx,
            shared: Arc::default(),
        },
        id: spec.id,
        inflight: HashMap::new(),
    };
    tokio::spawn(scheduler.run(rx, events).instrument(span));
    handle
}

struct Scheduler {
    exchange: Arc<str>,
    vhost: Weak<VHost>,
    store: Option<(StoreHandle, QueueKey)>,
    heap: BinaryHeap<Pending>,
    next_seq: u64,
    started: bool,
    /// Queues send the confirms of routed stored messages here.
    me: ConnHandle,
    id: u64,
    /// Stored messages handed to queues: seq → queues yet to confirm.
    inflight: HashMap<u64, u32>,
}

type Confirms = Vec<(InboxSender<ConnEvent>, Vec<ConfirmTag>)>;

/// What the scheduler does after a batch of commands.
enum Next {
    Continue,
    /// Broker shutdown: reply once in-flight messages are settled.
    Stop(oneshot::Sender<()>),
    /// Exchange deleted.
    End,
}

impl Scheduler {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>, mut events: Inbox<ConnEvent>) {
        debug!(pending = self.heap.len(), "delayed exchange started");
        let mut cmds = Vec::with_capacity(256);
        let mut confirmed = Vec::new();
        loop {
            let next = self.heap.peek().map(|p| p.due).filter(|_| self.started);
            tokio::select! {
                biased;
                n = rx.recv_many(&mut cmds, 4096) => {
                    if n == 0 {
                        return;
                    }
                    match self.handle(&mut cmds) {
                        Next::Continue => {}
                        Next::End => return,
                        Next::Stop(reply) => {
                            self.drain_inflight(&mut events).await;
                            let _ = reply.send(());
                            return;
                        }
                    }
                }
                _ = events.recv_many(&mut confirmed, 256) => {
                    for ev in confirmed.drain(..) {
                        self.confirmed(ev);
                    }
                }
                _ = sleep_until_ms(next), if next.is_some() => {
                    if !self.fire().await {
                        return;
                    }
                }
            }
        }
    }

    /// A clean stop: waits (a bounded time) for the queues to confirm the
    /// messages already handed to them, so that they leave the log and are not
    /// routed a second time after the restart.
    async fn drain_inflight(&mut self, events: &mut Inbox<ConnEvent>) {
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        let mut confirmed = Vec::new();
        while !self.inflight.is_empty() {
            if tokio::time::timeout_at(deadline, events.recv_many(&mut confirmed, 256))
                .await
                .is_err()
            {
                return;
            }
            for ev in confirmed.drain(..) {
                self.confirmed(ev);
            }
        }
    }

    /// Applies commands.
    fn handle(&mut self, cmds: &mut Vec<Cmd>) -> Next {
        let now = now_ms();
        let mut stored = Vec::new();
        let mut confirms: Confirms = Vec::new();
        let mut next = Next::Continue;
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Delay {
                    msg,
                    delay,
                    stored: store_it,
                    confirm,
                } => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let due = now.saturating_add(delay);
                    let store_it = store_it && self.store.is_some();
                    if store_it {
                        stored.push(StoredMessage {
                            seq,
                            header: msg.raw_properties.clone(),
                            body: msg.body.clone(),
                            exchange: due.to_string(),
                            routing_key: msg.routing_key.to_string(),
                            delivery_count: 0,
                            redelivered: false,
                        });
                        if let Some((tx, tag)) = confirm {
                            match confirms.iter_mut().find(|(t, _)| t.same_channel(&tx)) {
                                Some((_, tags)) => tags.push(tag),
                                None => confirms.push((tx, vec![tag])),
                            }
                        }
                    }
                    self.heap.push(Pending {
                        due,
                        seq,
                        stored: store_it,
                        data: Payload::new(&msg.routing_key, &msg.raw_properties, &msg.body),
                    });
                }
                Cmd::Start => self.started = true,
                Cmd::Stop(reply) => {
                    next = Next::Stop(reply);
                    break;
                }
                Cmd::Delete => {
                    if let Some((store, key)) = &self.store {
                        store.delete_queue(key);
                    }
                    self.heap.clear();
                    return Next::End;
                }
            }
        }
        if let (Some((store, key)), false) = (&self.store, stored.is_empty()) {
            let done = (!confirms.is_empty()).then(|| {
                Box::new(move |res: std::io::Result<()>| {
                    for (tx, tags) in confirms {
                        let _ = tx.send(ConnEvent::Confirms {
                            tags,
                            ok: res.is_ok(),
                        });
                    }
                }) as crate::store::Completion
            });
            store.append(key, stored, done);
        }
        next
    }

    /// Queues accepted (or refused) fired messages: a stored message leaves the
    /// log once all its queues answered. A refused one is not retried (one
    /// attempt, as the plugin).
    fn confirmed(&mut self, ev: ConnEvent) {
        let ConnEvent::Confirms { tags, .. } = ev else {
            return;
        };
        let mut done = Vec::new();
        for tag in tags {
            self.settle(tag.seq, &mut done);
        }
        self.forget(done);
    }

    fn settle(&mut self, seq: u64, done: &mut Vec<u64>) {
        if let Some(left) = self.inflight.get_mut(&seq) {
            *left -= 1;
            if *left == 0 {
                self.inflight.remove(&seq);
                done.push(seq);
            }
        }
    }

    fn forget(&self, seqs: Vec<u64>) {
        if let (Some((store, key)), false) = (&self.store, seqs.is_empty()) {
            store.ack(key, seqs);
        }
    }

    /// Routes every due message (at most [`FIRE_BATCH`]); false if the vhost is gone.
    async fn fire(&mut self) -> bool {
        let Some(vhost) = self.vhost.upgrade() else {
            return false;
        };
        let exchange = vhost
            .exchange(&self.exchange)
            .filter(|ex| ex.delayed.as_ref().is_some_and(|d| d.id == self.id));
        let now = now_ms();
        let mut batches: Vec<(QueueHandle, PublishBatch)> = Vec::new();
        let mut done = Vec::new();
        let mut targets = Vec::new();
        let mut fired = 0;
        while fired < FIRE_BATCH && self.heap.peek().is_some_and(|p| p.due <= now) {
            fired += 1;
            let p = self.heap.pop().expect("peeked");
            let (seq, stored) = (p.seq, p.stored);
            targets.clear();
            if let (Some(ex), Some((msg, keys))) = (&exchange, self.message(p)) {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                vhost.route_keys(ex, &keys, msg.headers(), &mut targets);
                let tag = stored.then_some(ConfirmTag { chan_key: 0, seq });
                for q in targets.iter() {
                    match batches.iter_mut().find(|(b, _)| b.id == q.id) {
                        Some((_, items)) => items.push((msg.clone(), tag)),
                        None => batches.push((q.clone(), vec![(msg.clone(), tag)])),
                    }
                }
            }
            if stored {
                if targets.is_empty() {
                    done.push(seq);
                } else {
                    self.inflight.insert(seq, targets.len() as u32);
                }
            }
        }
        drop(vhost);
        for (q, items) in batches {
            let seqs: Vec<u64> = items.iter().filter_map(|(_, t)| t.map(|t| t.seq)).collect();
            let conn = Some(self.me.clone());
            if !q.send(QueueCmd::Publish { items, conn }).await {
                // Deleted since routing: as good as delivered.
                for seq in seqs {
                    self.settle(seq, &mut done);
                }
            }
        }
        self.forget(done);
        true
    }

    /// The message to route and its routing keys: `x-delay` turned negative,
    /// `BCC` stripped, routing key plus `CC`/`BCC` keys.
    fn message(&self, p: Pending) -> Option<(Arc<Message>, Vec<String>)> {
        let (routing_key, props, body) = p.data.into_parts();
        let Some(msg) = Message::restore(&self.exchange, &routing_key, props, body) else {
            warn!(
                seq = p.seq,
                "dropping a delayed message with undecodable properties"
            );
            return None;
        };
        let mut keys = vec![routing_key];
        let Some(headers) = msg.headers() else {
            return Some((msg, keys));
        };
        if sender_selected::has_routing_headers(Some(headers)) {
            keys.extend(
                sender_selected::extra_keys(headers)
                    .into_iter()
                    .map(|k| k.into_owned()),
            );
        }
        let mut kept = sender_selected::without_bcc(headers);
        if let Some(delay) = delay_of(Some(headers)) {
            let back = -(delay as i64);
            let v = i32::try_from(back).map_or(AMQPValue::LongLongInt(back), AMQPValue::LongInt);
            kept.insert("x-delay".into(), v);
        }
        let props = msg.properties.clone().with_headers(FieldTable::from(kept));
        Some((msg.with_properties(props), keys))
    }
}

async fn sleep_until_ms(due: Option<u64>) {
    match due {
        Some(due) => {
            let wait = due.saturating_sub(now_ms());
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::DecimalValue;

    fn h(v: AMQPValue) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("x-delay".into(), v);
        t
    }

    #[test]
    fn delay_is_read_as_the_plugin_reads_it() {
        assert_eq!(delay_of(None), None);
        assert_eq!(delay_of(Some(&FieldTable::default())), None);
        assert_eq!(delay_of(Some(&h(AMQPValue::LongInt(500)))), Some(500));
        assert_eq!(delay_of(Some(&h(AMQPValue::ShortShortUInt(5)))), Some(5));
        assert_eq!(delay_of(Some(&h(AMQPValue::LongLongInt(0)))), None);
        assert_eq!(delay_of(Some(&h(AMQPValue::LongInt(-5)))), None);
        assert_eq!(
            delay_of(Some(&h(AMQPValue::LongLongInt(4_294_967_295)))),
            Some(4_294_967_295)
        );
        assert_eq!(
            delay_of(Some(&h(AMQPValue::LongLongInt(4_294_967_296)))),
            None
        );
        assert_eq!(
            delay_of(Some(&h(AMQPValue::LongString("250".into())))),
            Some(250)
        );
        assert_eq!(
            delay_of(Some(&h(AMQPValue::LongString("+7".into())))),
            Some(7)
        );
        assert_eq!(delay_of(Some(&h(AMQPValue::LongString("x".into())))), None);
        assert_eq!(
            delay_of(Some(&h(AMQPValue::LongString("1.5".into())))),
            None
        );
        assert_eq!(delay_of(Some(&h(AMQPValue::Double(99.9)))), Some(99));
        assert_eq!(delay_of(Some(&h(AMQPValue::Float(0.5)))), None);
        let d = DecimalValue {
            scale: 2,
            value: 12345,
        };
        assert_eq!(delay_of(Some(&h(AMQPValue::DecimalValue(d)))), Some(123));
        assert_eq!(delay_of(Some(&h(AMQPValue::Boolean(true)))), None);
        assert_eq!(delay_of(Some(&h(AMQPValue::Timestamp(5)))), None);
    }

    #[test]
    fn delayed_type_is_validated_with_the_plugins_texts() {
        let args = |v: Option<AMQPValue>| {
            let mut t = FieldTable::default();
            if let Some(v) = v {
                t.insert("x-delayed-type".into(), v);
            }
            t
        };
        assert_eq!(
            delayed_kind(&args(Some(AMQPValue::LongString("topic".into())))).unwrap(),
            ExchangeKind::Topic
        );
        let e = delayed_kind(&args(None)).unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type"
        );
        let e = delayed_kind(&args(Some(AMQPValue::LongInt(1)))).unwrap_err();
        assert_eq!(e.code, crate::protocol::ReplyCode::PreconditionFailed);
        let e = delayed_kind(&args(Some(AMQPValue::LongString(DELAYED_TYPE.into())))).unwrap_err();
        assert_eq!(
            e.text,
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'"
        );
        let e = delayed_kind(&args(Some(AMQPValue::LongString("nope".into())))).unwrap_err();
        assert_eq!(e.code, crate::protocol::ReplyCode::CommandInvalid);
        assert_eq!(e.text, "COMMAND_INVALID - unknown exchange type 'nope'");
    }

    #[test]
    fn delayed_keys_never_look_like_queue_keys() {
        let k = delayed_key("/", "x");
        assert_eq!(k, "x-delayed:1:/x");
        assert!(super::super::vhost::key_vhost(&k).is_none());
    }

    #[test]
    fn pending_entries_are_compact_and_come_out_earliest_first() {
        assert!(
            std::mem::size_of::<Pending>() <= 48,
            "{}",
            std::mem::size_of::<Pending>()
        );
        let mut heap = BinaryHeap::new();
        for (due, seq) in [(30, 1), (10, 2), (20, 3), (10, 4)] {
            heap.push(Pending {
                due,
                seq,
                stored: false,
                data: Payload::new("k", b"", &Bytes::new()),
            });
        }
        let order: Vec<(u64, u64)> =
            std::iter::from_fn(|| heap.pop().map(|p| (p.due, p.seq))).collect();
        assert_eq!(order, vec![(10, 2), (10, 4), (20, 3), (30, 1)]);
    }

    #[test]
    fn payloads_round_trip_packed_and_shared() {
        for body_len in [0, 16, PACK_LIMIT, PACK_LIMIT + 1, 10_000] {
            let body = Bytes::from(vec![7u8; body_len]);
            let p = Payload::new("rk.1", b"props", &body);
            assert_eq!(matches!(p, Payload::Packed(_)), body_len <= PACK_LIMIT);
            let (rk, props, b) = p.into_parts();
            assert_eq!(rk, "rk.1");
            assert_eq!(&props[..], b"props");
            assert_eq!(b, body);
        }
    }
}
