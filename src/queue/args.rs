//! Queue (and consumer) `x-` arguments: parsing and validation, with RabbitMQ's
//! exact reply texts.
//!
//! [`QueueArgs::parse`] runs the checks RabbitMQ 3.10 runs on `queue.declare`, in
//! RabbitMQ's order, so the first error a client sees is the one RabbitMQ would send:
//!
//! 1. `x-dead-letter-exchange` must be a longstr (`rabbit_channel`'s check, which
//!    runs before everything else):
//!    `invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'`.
//! 2. `x-queue-type` is validated (`rabbit_amqqueue:check_declare_arguments/2`).
//! 3. Every argument the queue type knows is validated, in the order of
//!    `rabbit_amqqueue:declare_args/0`:
//!    `invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-1}`.
//! 4. Arguments that belong to another queue type are refused (`check_arguments_key`):
//!    `invalid arg 'x-max-age' for queue 'q' in vhost '/' of queue type rabbit_classic_queue`.
//!    (`x-delivery-limit` is taken by classic queues too: a WarrenMQ extension.)
//! 5. Quorum queues must be durable, not exclusive and not auto-delete
//!    (`rabbit_queue_type_util`): `invalid property 'non-durable' for queue 'q' in vhost '/'`.
//!
//! WarrenMQ's extensions (`x-consumer-timeout` as in RabbitMQ 4, and LavinMQ-style
//! deduplication arguments) are validated last, with texts in the same format.
//! Unknown `x-` arguments are ignored, as RabbitMQ does.
//!
//! The detail after the colon is Erlang's `~p` rendering of an error term; the small
//! pretty printer at the bottom of this file reproduces `io_lib_pretty`'s line
//! breaking for the terms these errors use (it shows in `basic.publish`'s
//! `invalid expiration` texts, which RabbitMQ formats with an 80-column `~p`).
//! Reply texts are capped at 255 bytes the way RabbitMQ caps them (252 bytes + `...`).
//!
//! Known differences: RabbitMQ reports the first offending argument in wire order
//! for step 4; `FieldTable` is a sorted map, so WarrenMQ reports the first one in
//! name order. `x-queue-type: stream` is refused with RabbitMQ's "unsupported queue
//! type" text (streams are not implemented).
//!
//! Pure functions: no I/O, no broker state.

use super::dedup::DedupArgs;
use crate::protocol::error::cap_reply_text;
use crate::protocol::{AmqpError, ReplyCode};
use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldTable};

/// RabbitMQ's upper bound for TTLs and expiries: ten years in milliseconds (`rabbit_misc:check_expiry/1`).
pub const MAX_EXPIRY_MS: u64 = 315_360_000_000;

/// Default `x-delivery-limit` of quorum queues (RabbitMQ 4.0; 3.x had no limit).
pub const QUORUM_DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// What a queue does when a publish would exceed `x-max-length`/`x-max-length-bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) messages from the head to make room (the default).
    #[default]
    DropHead,
    /// Refuse the publish (basic.nack with confirms).
    RejectPublish,
    /// Refuse the publish and dead-letter the refused message.
    RejectPublishDlx,
}

impl Overflow {
    /// The `x-overflow` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
            Overflow::RejectPublishDlx => "reject-publish-dlx",
        }
    }
}

/// The declared queue type (`x-queue-type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueType {
    /// A classic queue (the default).
    #[default]
    Classic,
    /// A quorum queue, accepted for compatibility: same engine as classic, with
    /// quorum-queue argument rules (durable only, delivery limit, no priorities).
    Quorum,
}

impl QueueType {
    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }

    /// The Erlang module name RabbitMQ puts in its reply texts.
    pub fn module_name(self) -> &'static str {
        match self {
            QueueType::Classic => "rabbit_classic_queue",
            QueueType::Quorum => "rabbit_quorum_queue",
        }
    }

    /// Arguments this queue type takes (RabbitMQ 3.10 `capabilities()`).
    fn queue_arguments(self) -> &'static [&'static str] {
        match self {
            QueueType::Classic => CLASSIC_ARGS,
            QueueType::Quorum => QUORUM_ARGS,
        }
    }

    /// Consumer arguments this queue type takes (RabbitMQ 3.10 `capabilities()`).
    fn consumer_arguments(self) -> &'static [&'static str] {
        match self {
            QueueType::Classic => &["x-cancel-on-ha-failover", "x-priority", "x-credit"],
            QueueType::Quorum => &["x-priority", "x-credit"],
        }
    }
}

const CLASSIC_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-master-locator",
    // WarrenMQ: poison-message limits on classic queues too (RabbitMQ: quorum only).
    "x-delivery-limit",
];

const QUORUM_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-message-ttl",
    "x-queue-leader-locator",
];

/// Stream queue arguments: known to RabbitMQ, so refused on classic and quorum queues.
const STREAM_ARGS: &[&str] = &[
    "x-max-length-bytes",
    "x-queue-type",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
];

/// Consumer arguments of every queue type (RabbitMQ 3.10, streams included).
const ALL_CONSUMER_ARGS: &[&str] = &[
    "x-cancel-on-ha-failover",
    "x-priority",
    "x-credit",
    "x-stream-offset",
];

/// Whether some queue type takes `key` but `qtype` does not (RabbitMQ refuses those).
fn belongs_to_other_type(key: &str, qtype: QueueType) -> bool {
    let known =
        CLASSIC_ARGS.contains(&key) || QUORUM_ARGS.contains(&key) || STREAM_ARGS.contains(&key);
    known && !qtype.queue_arguments().contains(&key)
}

/// Validated queue declaration arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArgs {
    /// `x-message-ttl`: per-queue message TTL in ms (0 allowed: expire unless delivered at once).
    pub message_ttl: Option<u64>,
    /// `x-expires`: delete the queue after this many ms unused (> 0).
    pub expires: Option<u64>,
    /// `x-dead-letter-exchange` (may be `""`, the default exchange; existence is not checked).
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key` (only with a dead-letter exchange).
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-length`: ready-message limit.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: ready body-bytes limit.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow` (quorum queues turn `reject-publish-dlx` into `drop-head`, as RabbitMQ 3.10).
    pub overflow: Overflow,
    /// `x-max-priority`: 0..=255 (classic only; RabbitMQ accepts 0).
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-delivery-limit`: a message returned more often is dead-lettered or dropped.
    /// Quorum queues default to [`QUORUM_DEFAULT_DELIVERY_LIMIT`]; a negative value
    /// means unlimited (RabbitMQ 4). Classic queues take it too (WarrenMQ), no default.
    pub delivery_limit: Option<u32>,
    /// `x-consumer-timeout` in ms (RabbitMQ 4 queue argument).
    pub consumer_timeout: Option<u64>,
    /// `x-queue-type`.
    pub queue_type: QueueType,
    /// `x-message-deduplication`: drop publishes whose deduplication header was seen.
    pub message_deduplication: bool,
    /// `x-cache-size`: deduplication cache entries.
    pub dedup_cache_size: Option<u32>,
    /// `x-cache-ttl`: how long a deduplication key is remembered, in ms.
    pub dedup_cache_ttl: Option<u64>,
    /// `x-deduplication-header`: header carrying the deduplication key
    /// (`None` = `x-deduplication-header`).
    pub dedup_header: Option<String>,
}

/// Validated `basic.consume` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerArgs {
    /// `x-priority`: higher-priority consumers get messages first (any integer, default 0).
    pub priority: i64,
    /// `x-cancel-on-ha-failover` (classic only; accepted, no effect).
    pub cancel_on_ha_failover: bool,
    /// `x-consumer-timeout` in ms (RabbitMQ 4 consumer argument).
    pub consumer_timeout: Option<u64>,
}

/// Where a value error is reported.
struct Ctx<'a> {
    /// `"queue"` or `"exchange"`.
    kind: &'a str,
    queue: &'a str,
    vhost: &'a str,
}

impl Ctx<'_> {
    /// `invalid arg 'k' for queue 'q' in vhost 'v': <term>` (`~255p`).
    fn invalid(&self, key: &str, term: erl::Term) -> AmqpError {
        let prefix = format!(
            "invalid arg '{key}' for {} '{}' in vhost '{}': ",
            self.kind, self.queue, self.vhost
        );
        let detail = erl::pretty(&term, erl::column_after(prefix.as_bytes()), 255);
        precondition(prefix.into_bytes().into_iter().chain(detail))
    }

    /// `invalid arg 'k' for queue 'q' in vhost 'v' of queue type rabbit_classic_queue`.
    fn wrong_type(&self, key: &str, qtype: QueueType) -> AmqpError {
        precondition(
            format!(
                "invalid arg '{key}' for queue '{}' in vhost '{}' of queue type {}",
                self.queue,
                self.vhost,
                qtype.module_name()
            )
            .into_bytes(),
        )
    }

    /// `invalid property 'non-durable' for queue 'q' in vhost 'v'`.
    fn property(&self, property: &str) -> AmqpError {
        precondition(
            format!(
                "invalid property '{property}' for queue '{}' in vhost '{}'",
                self.queue, self.vhost
            )
            .into_bytes(),
        )
    }
}

/// A 406 with RabbitMQ's 255-byte cap applied to the whole reply text.
fn precondition(detail: impl IntoIterator<Item = u8>) -> AmqpError {
    let detail: Vec<u8> = detail.into_iter().collect();
    let mut e = AmqpError::new(
        ReplyCode::PreconditionFailed,
        String::from_utf8_lossy(&detail),
    );
    e.text = cap_reply_text(e.text);
    e
}

/// The Erlang type name RabbitMQ uses for a field value in its texts.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        // Never on the wire (amq-protocol has no tag for it); treated as a string.
        AMQPValue::ShortString(_) => "longstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// The value of an integer-typed field. RabbitMQ's `?INTEGER_ARG_TYPES`: byte, short,
/// signedint, long, unsignedbyte, unsignedshort, unsignedint (not timestamp, not floats).
pub fn int_value(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    })
}

/// The bytes of a longstr field.
fn str_value(v: &AMQPValue) -> Option<&[u8]> {
    match v {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

fn unacceptable_type(v: &AMQPValue) -> erl::Term {
    erl::Term::tuple2("unacceptable_type", erl::Term::atom(type_name(v)))
}

/// `check_int_arg`: `"expected integer, got longstr"`.
fn check_int(v: &AMQPValue) -> Result<i64, erl::Term> {
    int_value(v).ok_or_else(|| erl::Term::chars(format!("expected integer, got {}", type_name(v))))
}

/// `check_non_neg_int_arg`: `{value_negative,-1}`.
fn check_non_neg(v: &AMQPValue) -> Result<u64, erl::Term> {
    let n = check_int(v)?;
    u64::try_from(n).map_err(|_| erl::Term::tuple2("value_negative", erl::Term::int(n)))
}

/// `rabbit_misc:check_expiry/1` on an already integer value.
fn check_expiry(n: i64) -> Result<u64, erl::Term> {
    match u64::try_from(n) {
        Err(_) => Err(erl::Term::tuple2("value_negative", erl::Term::int(n))),
        Ok(ms) if ms > MAX_EXPIRY_MS => {
            Err(erl::Term::tuple2("value_too_large", erl::Term::int(n)))
        }
        Ok(ms) => Ok(ms),
    }
}

fn check_bool(v: &AMQPValue) -> Result<bool, erl::Term> {
    match v {
        AMQPValue::Boolean(b) => Ok(*b),
        _ => Err(unacceptable_type(v)),
    }
}

/// A longstr that must be one of `allowed`; `bad` is the error term for other strings.
fn check_enum<'v>(
    v: &'v AMQPValue,
    allowed: &[&str],
    bad: impl FnOnce(&[u8]) -> erl::Term,
) -> Result<&'v [u8], erl::Term> {
    let s = str_value(v).ok_or_else(|| unacceptable_type(v))?;
    if allowed.iter().any(|a| a.as_bytes() == s) {
        Ok(s)
    } else {
        Err(bad(s))
    }
}

fn quoted(prefix: &str, s: &[u8]) -> erl::Term {
    let mut chars = prefix.as_bytes().to_vec();
    chars.extend_from_slice(s);
    chars.push(b'\'');
    erl::Term::Chars(chars)
}

/// The deduplication arguments (`x-message-deduplication`, `x-cache-size`,
/// `x-cache-ttl`, `x-deduplication-header`), checked whether or not deduplication
/// is on: returns whether it is on, and the rest.
fn parse_dedup(args: &FieldTable, ctx: &Ctx<'_>) -> Result<(bool, DedupArgs), AmqpError> {
    let get = |k: &str| args.inner().get(k);
    let mut enabled = false;
    let mut out = DedupArgs::default();
    let check = |key: &str, f: &mut dyn FnMut(&AMQPValue) -> Result<(), erl::Term>| match get(key) {
        Some(v) => f(v).map_err(|t| ctx.invalid(key, t)),
        None => Ok(()),
    };
    check("x-message-deduplication", &mut |v| {
        enabled = match str_value(v) {
            Some(s) if s.eq_ignore_ascii_case(b"true") => true,
            Some(s) if s.eq_ignore_ascii_case(b"false") => false,
            _ => check_bool(v)?,
        };
        Ok(())
    })?;
    check("x-cache-size", &mut |v| {
        let n = check_non_neg(v)?;
        out.cache_size = Some(u32::try_from(n).unwrap_or(u32::MAX));
        Ok(())
    })?;
    check("x-cache-ttl", &mut |v| {
        out.cache_ttl = Some(check_non_neg(v)?);
        Ok(())
    })?;
    check("x-deduplication-header", &mut |v| {
        let s = str_value(v).ok_or_else(|| unacceptable_type(v))?;
        out.header = Some(utf8(s));
        Ok(())
    })?;
    Ok((enabled, out))
}

/// Validated `exchange.declare` arguments of WarrenMQ's exchange extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeArgs {
    /// `x-message-deduplication` with its cache settings (LavinMQ style).
    pub dedup: Option<DedupArgs>,
}

impl ExchangeArgs {
    /// Parses the deduplication arguments of an exchange being created, with the
    /// queue arguments' texts (`invalid arg 'x-cache-size' for exchange 'e' in
    /// vhost '/': {value_negative,-1}`). `x-cache-persistence` (the plugin's) must
    /// be `memory` or `disk`; both keep the cache in memory.
    pub fn parse(args: &FieldTable, exchange: &str, vhost: &str) -> Result<Self, AmqpError> {
        let ctx = Ctx {
            kind: "exchange",
            queue: exchange,
            vhost,
        };
        let (enabled, dedup) = parse_dedup(args, &ctx)?;
        if let Some(v) = args.inner().get("x-cache-persistence") {
            check_enum(v, &["memory", "disk"], |s| {
                quoted("unsupported cache persistence '", s)
            })
            .map_err(|t| ctx.invalid("x-cache-persistence", t))?;
        }
        Ok(ExchangeArgs {
            dedup: enabled.then_some(dedup),
        })
    }
}

fn utf8(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

impl QueueArgs {
    /// Parses and validates `queue.declare` arguments for a queue being created.
    ///
    /// `durable`, `exclusive` and `auto_delete` are the declare flags (an exclusive
    /// queue is never durable, as in RabbitMQ). Errors are complete 406 replies with
    /// RabbitMQ 3.10's texts; the caller sets the method ids.
    pub fn parse(
        args: &FieldTable,
        queue: &str,
        vhost: &str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
    ) -> Result<QueueArgs, AmqpError> {
        let ctx = Ctx {
            kind: "queue",
            queue,
            vhost,
        };
        let get = |k: &str| args.inner().get(k);
        let mut out = QueueArgs::default();

        // 1. rabbit_channel checks the DLX name's type before declaring.
        if let Some(v) = get("x-dead-letter-exchange") {
            if str_value(v).is_none() {
                return Err(precondition(
                    format!(
                        "invalid type '{}' for arg 'x-dead-letter-exchange' in queue '{queue}' in vhost '{vhost}'",
                        type_name(v)
                    )
                    .into_bytes(),
                ));
            }
        }

        // 2. The queue type decides which arguments are checked.
        if let Some(v) = get("x-queue-type") {
            let s = check_enum(v, &["classic", "quorum"], |s| {
                quoted("unsupported queue type '", s)
            })
            .map_err(|t| ctx.invalid("x-queue-type", t))?;
            out.queue_type = if s == b"quorum" {
                QueueType::Quorum
            } else {
                QueueType::Classic
            };
        }
        let qtype = out.queue_type;
        let takes = |k: &str| qtype.queue_arguments().contains(&k);

        // 3. Values, in the order of rabbit_amqqueue:declare_args/0.
        macro_rules! check {
            ($key:literal, |$v:ident| $body:expr) => {
                if takes($key) || !belongs_to_other_type($key, qtype) {
                    if let Some($v) = get($key) {
                        #[allow(clippy::redundant_closure_call)]
                        (|| -> Result<(), erl::Term> { $body })()
                            .map_err(|t| ctx.invalid($key, t))?;
                    }
                }
            };
        }
        check!("x-expires", |v| {
            let n = check_int(v)?;
            if n == 0 {
                return Err(erl::Term::tuple2("value_zero", erl::Term::int(0)));
            }
            out.expires = Some(check_expiry(n)?);
            Ok(())
        });
        check!("x-message-ttl", |v| {
            out.message_ttl = Some(check_expiry(check_int(v)?)?);
            Ok(())
        });
        check!("x-dead-letter-exchange", |v| {
            out.dead_letter_exchange = str_value(v).map(utf8);
            Ok(())
        });
        check!("x-dead-letter-routing-key", |v| {
            let s = str_value(v).ok_or_else(|| unacceptable_type(v))?;
            if get("x-dead-letter-exchange").is_none() {
                return Err(erl::Term::atom("routing_key_but_no_dlx_defined"));
            }
            out.dead_letter_routing_key = Some(utf8(s));
            Ok(())
        });
        check!("x-dead-letter-strategy", |v| {
            check_enum(v, &["at-most-once", "at-least-once"], |_| {
                erl::Term::atom("invalid_dlx_strategy")
            })?;
            Ok(())
        });
        check!("x-max-length", |v| {
            out.max_length = Some(check_non_neg(v)?);
            Ok(())
        });
        check!("x-max-length-bytes", |v| {
            out.max_length_bytes = Some(check_non_neg(v)?);
            Ok(())
        });
        check!("x-max-in-memory-length", |v| check_non_neg(v).map(drop));
        check!("x-max-in-memory-bytes", |v| check_non_neg(v).map(drop));
        check!("x-max-priority", |v| {
            let n = check_non_neg(v)?;
            let p = u8::try_from(n)
                .map_err(|_| erl::Term::tuple2("max_value_exceeded", erl::Term::int(n as i64)))?;
            out.max_priority = Some(p);
            Ok(())
        });
        check!("x-overflow", |v| {
            let s = check_enum(
                v,
                &["drop-head", "reject-publish", "reject-publish-dlx"],
                |_| erl::Term::atom("invalid_overflow"),
            )?;
            out.overflow = match s {
                b"reject-publish" => Overflow::RejectPublish,
                // Quorum queues in 3.10 log a warning and fall back to drop-head.
                b"reject-publish-dlx" if qtype == QueueType::Classic => Overflow::RejectPublishDlx,
                _ => Overflow::DropHead,
            };
            Ok(())
        });
        check!("x-queue-mode", |v| {
            check_enum(v, &["default", "lazy"], |s| {
                quoted("unsupported queue mode '", s)
            })?;
            Ok(())
        });
        check!("x-queue-version", |v| {
            let n = check_non_neg(v)?;
            if n != 1 && n != 2 {
                return Err(erl::Term::chars(format!("unsupported queue version '{n}'")));
            }
            Ok(())
        });
        check!("x-single-active-consumer", |v| {
            out.single_active_consumer = check_bool(v)?;
            Ok(())
        });
        // RabbitMQ 4 validates x-consumer-timeout here; 3.10 ignores it.
        check!("x-consumer-timeout", |v| {
            out.consumer_timeout = Some(check_non_neg(v)?);
            Ok(())
        });
        check!("x-quorum-initial-group-size", |v| {
            if check_non_neg(v)? == 0 {
                return Err(erl::Term::tuple2("value_zero", erl::Term::int(0)));
            }
            Ok(())
        });
        check!("x-queue-leader-locator", |v| {
            check_enum(
                v,
                &["client-local", "balanced", "random", "least-leaders"],
                |_| erl::Term::atom("invalid_queue_locator_arg"),
            )?;
            Ok(())
        });

        // 4. Arguments of other queue types.
        if let Some((key, _)) = args
            .inner()
            .iter()
            .find(|(k, _)| belongs_to_other_type(k.as_str(), qtype))
        {
            return Err(ctx.wrong_type(key.as_str(), qtype));
        }

        // 5. Quorum queue properties (rabbit_quorum_queue:declare/2), in RabbitMQ's order.
        if qtype == QueueType::Quorum {
            if auto_delete {
                return Err(ctx.property("auto-delete"));
            }
            if exclusive {
                return Err(ctx.property("exclusive-owner"));
            }
            if !durable {
                return Err(ctx.property("non-durable"));
            }
        }
        // RabbitMQ 4: negative = unlimited, non-integer = the default (quorum
        // queues: 20; classic queues, where the limit is a WarrenMQ extension: none).
        out.delivery_limit = match get("x-delivery-limit").and_then(int_value) {
            Some(n) if n < 0 => None,
            Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            None if qtype == QueueType::Quorum => Some(QUORUM_DEFAULT_DELIVERY_LIMIT),
            None => None,
        };

        // 6. Deduplication (LavinMQ / rabbitmq-message-deduplication arguments).
        let (enabled, d) = parse_dedup(args, &ctx)?;
        out.message_deduplication = enabled;
        out.dedup_cache_size = d.cache_size;
        out.dedup_cache_ttl = d.cache_ttl;
        out.dedup_header = d.header;
        Ok(out)
    }

    /// The TTL that applies to a message: the smaller of the queue's `x-message-ttl`
    /// and the message's `expiration` (RabbitMQ uses the lower of the two).
    pub fn effective_ttl(&self, message_expiration: Option<u64>) -> Option<u64> {
        match (self.message_ttl, message_expiration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Refuses a server-named (empty-name) declare of a queue type that needs a
    /// name, before the name is generated:
    /// `PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue`.
    pub fn check_server_named(args: &FieldTable) -> Result<(), AmqpError> {
        let module = match args.inner().get("x-queue-type").and_then(str_value) {
            Some(b"quorum") => "rabbit_quorum_queue",
            Some(b"stream") => "rabbit_stream_queue",
            _ => return Ok(()),
        };
        Err(precondition(
            format!("Cannot declare a server-named queue for type {module}").into_bytes(),
        ))
    }
}

impl ConsumerArgs {
    /// Parses and validates `basic.consume` arguments for a consumer on `queue`
    /// (RabbitMQ 3.10 `check_consume_arguments/3`, plus RabbitMQ 4's `x-consumer-timeout`).
    pub fn parse(
        args: &FieldTable,
        queue: &str,
        vhost: &str,
        queue_type: QueueType,
    ) -> Result<ConsumerArgs, AmqpError> {
        let ctx = Ctx {
            kind: "queue",
            queue,
            vhost,
        };
        let takes = |k: &str| queue_type.consumer_arguments().contains(&k);
        let mut out = ConsumerArgs::default();
        if let (true, Some(v)) = (takes("x-priority"), args.inner().get("x-priority")) {
            out.priority = check_int(v).map_err(|t| ctx.invalid("x-priority", t))?;
        }
        if let (true, Some(v)) = (
            takes("x-cancel-on-ha-failover"),
            args.inner().get("x-cancel-on-ha-failover"),
        ) {
            out.cancel_on_ha_failover =
                check_bool(v).map_err(|t| ctx.invalid("x-cancel-on-ha-failover", t))?;
        }
        if let Some(v) = args.inner().get("x-consumer-timeout") {
            out.consumer_timeout =
                Some(check_non_neg(v).map_err(|t| ctx.invalid("x-consumer-timeout", t))?);
        }
        if let Some((key, _)) = args
            .inner()
            .iter()
            .find(|(k, _)| ALL_CONSUMER_ARGS.contains(&k.as_str()) && !takes(k.as_str()))
        {
            return Err(ctx.wrong_type(key.as_str(), queue_type));
        }
        Ok(out)
    }
}

/// Checks a redeclare's arguments against the existing queue's, as RabbitMQ's
/// `rabbit_misc:assert_args_equivalence/4` does (new arguments are not validated
/// on a redeclare, only compared).
///
/// Only the arguments the existing queue's type takes are compared, in RabbitMQ's
/// order; integer types are interchangeable (`signedint` 10 equals `long` 10), an
/// absent `x-queue-type` equals `classic`. Texts (RabbitMQ 3.10.8):
/// `inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received '20' but current is '10'`,
/// `... received none but current is the value '10' of type 'signedint'`.
pub fn check_equivalent(
    current: &FieldTable,
    new: &FieldTable,
    current_type: QueueType,
    queue: &str,
    vhost: &str,
) -> Result<(), AmqpError> {
    check_keys_equivalent(
        current,
        new,
        current_type.queue_arguments(),
        "queue",
        queue,
        vhost,
    )
}

/// [`check_equivalent`] for the arguments `keys` of a `kind` (`"queue"`,
/// `"exchange"`: RabbitMQ compares only `alternate-exchange` for exchanges).
pub fn check_keys_equivalent(
    current: &FieldTable,
    new: &FieldTable,
    keys: &[&str],
    kind: &str,
    queue: &str,
    vhost: &str,
) -> Result<(), AmqpError> {
    for key in keys {
        let (c, n) = (current.inner().get(*key), new.inner().get(*key));
        let same = match (c, n) {
            (None, None) => true,
            (Some(c), Some(n)) => equivalent_values(c, n),
            (None, Some(v)) | (Some(v), None) => {
                *key == "x-queue-type" && str_value(v) == Some(b"classic".as_slice())
            }
        };
        if !same {
            let describe = |v: Option<&AMQPValue>| match v {
                None => b"none".to_vec(),
                // val(undefined) when both are present: void's value is `undefined`.
                Some(AMQPValue::Void) if c.is_some() && n.is_some() => b"none".to_vec(),
                Some(v) if c.is_some() && n.is_some() => {
                    let mut out = b"'".to_vec();
                    out.extend(erl_value_text(v, 2));
                    out.push(b'\'');
                    out
                }
                Some(v) => {
                    let mut out = b"the value '".to_vec();
                    out.extend(erl_value_text(v, 12));
                    out.extend_from_slice(format!("' of type '{}'", type_name(v)).as_bytes());
                    out
                }
            };
            let mut text = format!(
                "inequivalent arg '{key}' for {kind} '{queue}' in vhost '{vhost}': received "
            )
            .into_bytes();
            text.extend(describe(n));
            text.extend_from_slice(b" but current is ");
            text.extend(describe(c));
            return Err(precondition(text));
        }
    }
    Ok(())
}

/// RabbitMQ's test: same type class (every integer type is `int`) and `==`
/// values, or else `=:=` values whatever the types (`longstr` "x" equals
/// `binary` "x", `timestamp` 10 equals `long` 10). Both come down to equal
/// Erlang terms for the value parts.
fn equivalent_values(a: &AMQPValue, b: &AMQPValue) -> bool {
    erl_term(a) == erl_term(b)
}

/// How `rabbit_misc:val/1` prints a value: binaries raw (`~s`), the rest as `~p`
/// at column `col` (80-column lines).
fn erl_value_text(v: &AMQPValue, col: i64) -> Vec<u8> {
    match v {
        AMQPValue::LongString(s) => s.as_bytes().to_vec(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
        AMQPValue::ByteArray(b) => b.as_slice().to_vec(),
        v => erl::pretty(&erl_term(v), col, 80),
    }
}

/// The Erlang term RabbitMQ holds for a field value (`{Type, Value}` inside arrays,
/// `{Key, Type, Value}` inside tables).
fn erl_term(v: &AMQPValue) -> erl::Term {
    use erl::Term;
    match v {
        AMQPValue::Boolean(b) => Term::atom(if *b { "true" } else { "false" }),
        AMQPValue::Float(f) => Term::Float(f64::from(*f)),
        AMQPValue::Double(f) => Term::Float(*f),
        AMQPValue::DecimalValue(d) => Term::Tuple(vec![
            Term::int(i64::from(d.scale)),
            Term::int(i64::from(d.value)),
        ]),
        AMQPValue::LongString(s) => Term::Binary(s.as_bytes().to_vec()),
        AMQPValue::ShortString(s) => Term::Binary(s.as_str().as_bytes().to_vec()),
        AMQPValue::ByteArray(b) => Term::Binary(b.as_slice().to_vec()),
        AMQPValue::Timestamp(t) => Term::Int(t.to_string()),
        AMQPValue::Void => Term::atom("undefined"),
        AMQPValue::FieldArray(a) => Term::List(
            a.as_slice()
                .iter()
                .map(|v| Term::Tuple(vec![Term::atom(type_name(v)), erl_term(v)]))
                .collect(),
        ),
        AMQPValue::FieldTable(t) => Term::List(
            t.inner()
                .iter()
                .map(|(k, v)| {
                    Term::Tuple(vec![
                        Term::Binary(k.as_str().as_bytes().to_vec()),
                        Term::atom(type_name(v)),
                        erl_term(v),
                    ])
                })
                .collect(),
        ),
        v => Term::int(int_value(v).expect("the remaining types are integers")),
    }
}

/// The per-message TTL in the `expiration` property, validated as `basic.publish` does.
///
/// RabbitMQ parses the string with Erlang's `string:to_integer/1` (one optional sign,
/// then digits) and refuses the publish with a 406 (channel error):
/// `PRECONDITION_FAILED - invalid expiration 'abc': no_integer`,
/// `... invalid expiration '10x': {leftover_string,"x"}`,
/// `... invalid expiration '-1': {value_negative,-1}`,
/// `... invalid expiration '315360000001': {value_too_large,315360000001}`.
pub fn message_expiration(props: &AMQPProperties) -> Result<Option<u64>, AmqpError> {
    let Some(exp) = props.expiration() else {
        return Ok(None);
    };
    let raw = exp.as_str().as_bytes();
    parse_expiration(raw).map(Some).map_err(|term| {
        let mut prefix = b"invalid expiration '".to_vec();
        prefix.extend_from_slice(raw);
        prefix.extend_from_slice(b"': ");
        let detail = erl::pretty(&term, erl::column_after(&prefix), 80);
        precondition(prefix.into_iter().chain(detail))
    })
}

/// `rabbit_basic:parse_expiration/1` on the property's bytes.
fn parse_expiration(raw: &[u8]) -> Result<u64, erl::Term> {
    let (negative, digits_start) = match raw.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    let digits_len = raw[digits_start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits_len == 0 {
        return Err(erl::Term::atom("no_integer"));
    }
    let rest = &raw[digits_start + digits_len..];
    if !rest.is_empty() {
        return Err(erl::Term::tuple2(
            "leftover_string",
            erl::Term::Chars(rest.to_vec()),
        ));
    }
    // An arbitrary-precision integer, as Erlang has: normalise the digits.
    let digits =
        std::str::from_utf8(&raw[digits_start..digits_start + digits_len]).expect("ASCII digits");
    let digits = match digits.trim_start_matches('0') {
        "" => "0",
        d => d,
    };
    let text = if negative && digits != "0" {
        format!("-{digits}")
    } else {
        digits.to_string()
    };
    if text.starts_with('-') {
        return Err(erl::Term::tuple2("value_negative", erl::Term::Int(text)));
    }
    match digits.parse::<u64>() {
        Ok(ms) if ms <= MAX_EXPIRY_MS => Ok(ms),
        _ => Err(erl::Term::tuple2("value_too_large", erl::Term::Int(text))),
    }
}

/// Just enough of Erlang's `~p` (`io_lib_pretty`) to render RabbitMQ's error terms
/// byte for byte, line breaks included.
mod erl {
    /// An Erlang term.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Term {
        /// An atom that needs no quoting.
        Atom(&'static str),
        /// An integer, as its decimal digits.
        Int(String),
        /// A list of bytes (an Erlang string).
        Chars(Vec<u8>),
        /// A tuple.
        Tuple(Vec<Term>),
        /// A list of terms.
        List(Vec<Term>),
        /// A binary.
        Binary(Vec<u8>),
        /// A float.
        Float(f64),
    }

    impl Term {
        pub fn atom(a: &'static str) -> Term {
            Term::Atom(a)
        }
        pub fn int(n: i64) -> Term {
            Term::Int(n.to_string())
        }
        pub fn chars(s: impl Into<Vec<u8>>) -> Term {
            Term::Chars(s.into())
        }
        pub fn tuple2(tag: &'static str, v: Term) -> Term {
            Term::Tuple(vec![Term::Atom(tag), v])
        }
    }

    /// The 1-based column `io_lib_format` passes to `~p` after `prefix` (tabs to multiples of 8).
    pub fn column_after(prefix: &[u8]) -> i64 {
        let mut col = 0i64;
        for &b in prefix {
            col = match b {
                b'\n' => 0,
                b'\t' => col + 8 - col % 8,
                _ => col + 1,
            };
        }
        col + 1
    }

    /// `io_lib:format("~Np", [Term])` at column `col` with line length `ll`.
    pub fn pretty(term: &Term, col: i64, ll: i64) -> Vec<u8> {
        let node = Node::of(term);
        if matches!(term, Term::Atom(_) | Term::Int(_) | Term::Float(_)) {
            return node.write();
        }
        let m = node.len;
        if node.len < ll - col {
            return node.write();
        }
        let tind = [-1, 4]
            .into_iter()
            .find(|&i| cind(&node, col, ll, m, i, 0, 0).is_ok())
            .unwrap_or(1);
        let mut out = Vec::new();
        pp(&node, col, ll, m, tind, col - 1, 0, 0, &mut out);
        out
    }

    /// Erlang's shortest float text: round-trip digits, fixed or scientific
    /// notation, whichever is shorter (fixed on a tie; scientific from 2^53):
    /// `10.0`, `1.0e3`, `0.0012`.
    fn float(f: f64) -> String {
        if f == 0.0 {
            return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
        }
        let sci = format!("{:e}", f.abs()); // shortest round-trip digits, e.g. "1.2345e3"
        let (mantissa, exp) = sci.split_once('e').expect("LowerExp has an exponent");
        let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
        let exp: i64 = exp.parse().expect("integer exponent");
        let sign = if f < 0.0 { "-" } else { "" };
        let n = digits.len() as i64;
        // Value = 0.DIGITS × 10^(exp+1).
        let point = exp + 1;
        let fixed = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point < n {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        } else {
            format!("{}{}.0", digits, "0".repeat((point - n) as usize))
        };
        let frac = if n > 1 { &digits[1..] } else { "0" };
        let scientific = format!("{}.{}e{}", &digits[..1], frac, exp);
        // float_to_list(F, [short]): from 2^53 on, integers are not exact, so always scientific.
        if fixed.len() <= scientific.len() && f.abs() < 9_007_199_254_740_992.0 {
            format!("{sign}{fixed}")
        } else {
            format!("{sign}{scientific}")
        }
    }

    /// `io_lib:printable_latin1_list/1`.
    fn printable_latin1(s: &[u8]) -> bool {
        s.iter()
            .all(|&c| matches!(c, 8..=13 | 27 | 32..=126 | 160..=255))
    }

    /// `io_lib_pretty`'s intermediate format.
    struct Node {
        kind: Kind,
        len: i64,
    }

    enum Kind {
        Leaf(Vec<u8>),
        List(Vec<Node>),
        Tuple { tagged: bool, items: Vec<Node> },
    }

    impl Node {
        fn leaf(s: Vec<u8>) -> Node {
            Node {
                len: s.len() as i64,
                kind: Kind::Leaf(s),
            }
        }

        fn of(term: &Term) -> Node {
            match term {
                Term::Atom(a) => Node::leaf(a.as_bytes().to_vec()),
                Term::Int(d) => Node::leaf(d.as_bytes().to_vec()),
                Term::Chars(s) if s.is_empty() => Node::leaf(b"[]".to_vec()),
                Term::Chars(s) if printable_latin1(s) => {
                    let mut q = vec![b'"'];
                    for &c in s {
                        match c {
                            b'"' => q.extend_from_slice(b"\\\""),
                            b'\\' => q.extend_from_slice(b"\\\\"),
                            b'\n' => q.extend_from_slice(b"\\n"),
                            b'\r' => q.extend_from_slice(b"\\r"),
                            b'\t' => q.extend_from_slice(b"\\t"),
                            11 => q.extend_from_slice(b"\\v"),
                            8 => q.extend_from_slice(b"\\b"),
                            12 => q.extend_from_slice(b"\\f"),
                            27 => q.extend_from_slice(b"\\e"),
                            c => q.push(c),
                        }
                    }
                    q.push(b'"');
                    Node::leaf(q)
                }
                Term::List(items) if items.is_empty() => Node::leaf(b"[]".to_vec()),
                Term::List(items) => Node::seq(items.iter().map(Node::of).collect(), Kind::List),
                Term::Float(f) => Node::leaf(float(*f).into_bytes()),
                // Printable binaries as <<"...">>, others as bytes (OTP 25 also
                // prints UTF-8 text as <<"..."/utf8>>; not needed for our texts).
                Term::Binary(b) if b.is_empty() => Node::leaf(b"<<>>".to_vec()),
                Term::Binary(b) if printable_latin1(b) => {
                    let Kind::Leaf(q) = Node::of(&Term::Chars(b.clone())).kind else {
                        unreachable!("a printable string is a leaf")
                    };
                    let mut s = b"<<".to_vec();
                    s.extend(q);
                    s.extend_from_slice(b">>");
                    Node::leaf(s)
                }
                Term::Binary(b) => {
                    let items: Vec<String> = b.iter().map(|c| c.to_string()).collect();
                    Node::leaf(format!("<<{}>>", items.join(",")).into_bytes())
                }
                Term::Chars(s) => Node::seq(
                    s.iter()
                        .map(|c| Node::leaf(c.to_string().into_bytes()))
                        .collect(),
                    Kind::List,
                ),
                Term::Tuple(items) => {
                    let tagged = items.len() > 1 && matches!(items[0], Term::Atom(_));
                    Node::seq(items.iter().map(Node::of).collect(), |items| Kind::Tuple {
                        tagged,
                        items,
                    })
                }
            }
        }

        fn seq(items: Vec<Node>, kind: impl FnOnce(Vec<Node>) -> Kind) -> Node {
            let len =
                2 + items.iter().map(|n| n.len).sum::<i64>() + (items.len() as i64 - 1).max(0);
            Node {
                kind: kind(items),
                len,
            }
        }

        fn atomic(&self) -> bool {
            matches!(self.kind, Kind::Leaf(_))
        }

        fn write(&self) -> Vec<u8> {
            let mut out = Vec::new();
            self.write_into(&mut out);
            out
        }

        fn write_into(&self, out: &mut Vec<u8>) {
            let (open, close, items) = match &self.kind {
                Kind::Leaf(s) => return out.extend_from_slice(s),
                Kind::List(items) => (b'[', b']', items),
                Kind::Tuple { items, .. } => (b'{', b'}', items),
            };
            out.push(open);
            for (i, n) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                n.write_into(out);
            }
            out.push(close);
        }
    }

    struct NoGood;

    fn last_depth(rest: &[Node], ld: i64) -> i64 {
        if rest.is_empty() {
            ld + 1
        } else {
            0
        }
    }

    /// Whether element `e` (with its separator) still fits on the current line.
    // Written as in io_lib_pretty, so the two can be compared line by line.
    #[allow(clippy::int_plus_one)]
    fn tail_fits(e: &Node, col: i64, ll: i64, m: i64, ld1: i64, w: i64) -> bool {
        let elen = 1 + e.len;
        e.atomic()
            && if ld1 == 0 {
                elen + 1 < ll - col && w + elen + 1 <= m
            } else {
                elen < ll - col - ld1 && w + elen + ld1 <= m
            }
    }

    fn fits(n: &Node, col: i64, ll: i64, m: i64, ld: i64, w: i64) -> bool {
        n.len < ll - col - ld && n.len + w + ld <= m
    }

    #[allow(clippy::too_many_arguments)]
    fn pp(
        n: &Node,
        col: i64,
        ll: i64,
        m: i64,
        tind: i64,
        ind: i64,
        ld: i64,
        w: i64,
        out: &mut Vec<u8>,
    ) {
        if fits(n, col, ll, m, ld, w) {
            return n.write_into(out);
        }
        match &n.kind {
            Kind::Leaf(s) => out.extend_from_slice(s),
            Kind::List(items) => {
                out.push(b'[');
                pp_list(items, col + 1, ll, m, tind, ind + 1, ld, w + 1, out);
                out.push(b']');
            }
            Kind::Tuple {
                tagged: true,
                items,
            } => {
                out.push(b'{');
                let tag = &items[0];
                let (tlen, rest) = (tag.len, &items[1..]);
                let tag_ind = tlen + 2;
                let tcol = col + tag_ind;
                tag.write_into(out);
                if tind > 0 && tag_ind > tind {
                    pp_tail(
                        rest,
                        col + tind,
                        tcol,
                        ll,
                        m,
                        tind,
                        ind + tind,
                        ld,
                        w + 1 + tlen,
                        out,
                    );
                } else {
                    out.push(b',');
                    pp_list(
                        rest,
                        tcol,
                        ll,
                        m,
                        tind,
                        ind + tag_ind,
                        ld,
                        w + 1 + tlen + 1,
                        out,
                    );
                }
                out.push(b'}');
            }
            Kind::Tuple {
                tagged: false,
                items,
            } => {
                out.push(b'{');
                pp_list(items, col + 1, ll, m, tind, ind + 1, ld, w + 1, out);
                out.push(b'}');
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pp_list(
        items: &[Node],
        col0: i64,
        ll: i64,
        m: i64,
        tind: i64,
        ind: i64,
        ld: i64,
        w: i64,
        out: &mut Vec<u8>,
    ) {
        let Some((e, rest)) = items.split_first() else {
            return;
        };
        let we = pp_element(e, col0, ll, m, tind, ind, last_depth(rest, ld), w, out);
        pp_tail(rest, col0, col0 + we, ll, m, tind, ind, ld, w + we, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn pp_tail(
        items: &[Node],
        col0: i64,
        col: i64,
        ll: i64,
        m: i64,
        tind: i64,
        ind: i64,
        ld: i64,
        w: i64,
        out: &mut Vec<u8>,
    ) {
        let Some((e, rest)) = items.split_first() else {
            return;
        };
        let ld1 = last_depth(rest, ld);
        out.push(b',');
        if tail_fits(e, col, ll, m, ld1, w) {
            e.write_into(out);
            let elen = 1 + e.len;
            pp_tail(rest, col0, col + elen, ll, m, tind, ind, ld, w + elen, out);
        } else {
            out.push(b'\n');
            out.extend(std::iter::repeat_n(b' ', ind.max(0) as usize));
            let we = pp_element(e, col0, ll, m, tind, ind, ld1, 0, out);
            pp_tail(rest, col0, col0 + we, ll, m, tind, ind, ld, we, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pp_element(
        e: &Node,
        col: i64,
        ll: i64,
        m: i64,
        tind: i64,
        ind: i64,
        ld: i64,
        w: i64,
        out: &mut Vec<u8>,
    ) -> i64 {
        if e.atomic() && fits(e, col, ll, m, ld, w) {
            e.write_into(out);
            e.len
        } else {
            pp(e, col, ll, m, tind, ind, ld, w, out);
            ll // forces a new line for what follows
        }
    }

    /// `io_lib_pretty:cind/7`: whether indentation `ind` works for tagged tuples.
    fn cind(n: &Node, col: i64, ll: i64, m: i64, ind: i64, ld: i64, w: i64) -> Result<i64, NoGood> {
        if fits(n, col, ll, m, ld, w) {
            return Ok(ind);
        }
        match &n.kind {
            Kind::Leaf(_) => Ok(ind),
            Kind::List(items)
            | Kind::Tuple {
                tagged: false,
                items,
            } => cind_list(items, col + 1, ll, m, ind, ld, w + 1),
            Kind::Tuple {
                tagged: true,
                items,
            } => {
                let w = w + 1;
                let (tlen, rest) = (items[0].len, &items[1..]);
                let tag_ind = tlen + 2;
                let tcol = col + tag_ind;
                if ind > 0 && tag_ind > ind {
                    let col1 = col + ind;
                    if m + col1 <= ll || col1 <= ll / 2 {
                        cind_tail(rest, col1, tcol, ll, m, ind, ld, w + tlen)
                    } else {
                        Err(NoGood)
                    }
                } else if m + tcol < ll || tcol < ll / 2 {
                    cind_list(rest, tcol, ll, m, ind, ld, w + tlen + 1)
                } else {
                    Err(NoGood)
                }
            }
        }
    }

    fn cind_list(
        items: &[Node],
        col0: i64,
        ll: i64,
        m: i64,
        ind: i64,
        ld: i64,
        w: i64,
    ) -> Result<i64, NoGood> {
        let Some((e, rest)) = items.split_first() else {
            return Ok(ind);
        };
        let we = cind_element(e, col0, ll, m, ind, last_depth(rest, ld), w)?;
        cind_tail(rest, col0, col0 + we, ll, m, ind, ld, w + we)
    }

    #[allow(clippy::too_many_arguments)]
    fn cind_tail(
        items: &[Node],
        col0: i64,
        col: i64,
        ll: i64,
        m: i64,
        ind: i64,
        ld: i64,
        w: i64,
    ) -> Result<i64, NoGood> {
        let Some((e, rest)) = items.split_first() else {
            return Ok(ind);
        };
        let ld1 = last_depth(rest, ld);
        if tail_fits(e, col, ll, m, ld1, w) {
            let elen = 1 + e.len;
            cind_tail(rest, col0, col + elen, ll, m, ind, ld, w + elen)
        } else {
            let we = cind_element(e, col0, ll, m, ind, ld1, 0)?;
            cind_tail(rest, col0, col0 + we, ll, m, ind, ld, we)
        }
    }

    fn cind_element(
        e: &Node,
        col: i64,
        ll: i64,
        m: i64,
        ind: i64,
        ld: i64,
        w: i64,
    ) -> Result<i64, NoGood> {
        if e.atomic() && fits(e, col, ll, m, ld, w) {
            Ok(e.len)
        } else {
            cind(e, col, ll, m, ind, ld, w)?;
            Ok(ll)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{FieldArray, LongString};

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    fn i(n: i32) -> AMQPValue {
        AMQPValue::LongInt(n)
    }

    /// Declares classic, non-durable `q` in `/`.
    fn classic(entries: &[(&str, AMQPValue)]) -> Result<QueueArgs, AmqpError> {
        QueueArgs::parse(&table(entries), "q", "/", false, false, false)
    }

    fn quorum(entries: &[(&str, AMQPValue)]) -> Result<QueueArgs, AmqpError> {
        let mut e = vec![("x-queue-type", s("quorum"))];
        e.extend_from_slice(entries);
        QueueArgs::parse(&table(&e), "qq", "/", true, false, false)
    }

    const PF: &str = "PRECONDITION_FAILED - ";

    /// Reply texts captured from RabbitMQ 3.10.8 (classic queue 'q' unless noted).
    #[test]
    fn invalid_values_have_rabbitmq_texts() {
        let inv =
            |k: &str, d: &str| format!("{PF}invalid arg '{k}' for queue 'q' in vhost '/': {d}");
        let cases: Vec<(&str, AMQPValue, String)> = vec![
            ("x-max-length", i(-1), inv("x-max-length", "{value_negative,-1}")),
            ("x-max-length", s("5"), inv("x-max-length", "\"expected integer, got longstr\"")),
            ("x-max-length", AMQPValue::ShortShortInt(-2), inv("x-max-length", "{value_negative,-2}")),
            ("x-max-length", AMQPValue::ShortInt(-3), inv("x-max-length", "{value_negative,-3}")),
            ("x-max-length", AMQPValue::LongLongInt(-9), inv("x-max-length", "{value_negative,-9}")),
            ("x-max-length", AMQPValue::Float(1.0), inv("x-max-length", "\"expected integer, got float\"")),
            ("x-max-length", AMQPValue::Double(1.5), inv("x-max-length", "\"expected integer, got double\"")),
            ("x-max-length", AMQPValue::Boolean(true), inv("x-max-length", "\"expected integer, got bool\"")),
            ("x-max-length", AMQPValue::Void, inv("x-max-length", "\"expected integer, got void\"")),
            ("x-max-length", AMQPValue::FieldArray(FieldArray::default()), inv("x-max-length", "\"expected integer, got array\"")),
            ("x-max-length", AMQPValue::FieldTable(FieldTable::default()), inv("x-max-length", "\"expected integer, got table\"")),
            ("x-max-length", AMQPValue::ByteArray(b"x".to_vec().into()), inv("x-max-length", "\"expected integer, got binary\"")),
            ("x-max-length", AMQPValue::Timestamp(5), inv("x-max-length", "\"expected integer, got timestamp\"")),
            ("x-max-length", AMQPValue::LongLongInt(-(1 << 62)), inv("x-max-length", "{value_negative,-4611686018427387904}")),
            ("x-max-length-bytes", i(-5), inv("x-max-length-bytes", "{value_negative,-5}")),
            ("x-message-ttl", i(-1), inv("x-message-ttl", "{value_negative,-1}")),
            ("x-message-ttl", AMQPValue::LongLongInt(315_360_000_001), inv("x-message-ttl", "{value_too_large,315360000001}")),
            ("x-message-ttl", s("100"), inv("x-message-ttl", "\"expected integer, got longstr\"")),
            ("x-expires", i(0), inv("x-expires", "{value_zero,0}")),
            ("x-expires", i(-1), inv("x-expires", "{value_negative,-1}")),
            ("x-expires", AMQPValue::LongLongInt(315_360_000_001), inv("x-expires", "{value_too_large,315360000001}")),
            ("x-expires", s("1000"), inv("x-expires", "\"expected integer, got longstr\"")),
            ("x-max-priority", i(256), inv("x-max-priority", "{max_value_exceeded,256}")),
            ("x-max-priority", i(-1), inv("x-max-priority", "{value_negative,-1}")),
            ("x-max-priority", s("3"), inv("x-max-priority", "\"expected integer, got longstr\"")),
            ("x-max-priority", AMQPValue::LongLongInt(1 << 62), inv("x-max-priority", "{max_value_exceeded,4611686018427387904}")),
            ("x-overflow", s("bogus"), inv("x-overflow", "invalid_overflow")),
            ("x-overflow", i(1), inv("x-overflow", "{unacceptable_type,signedint}")),
            ("x-overflow", AMQPValue::ByteArray(b"drop-head".to_vec().into()), inv("x-overflow", "{unacceptable_type,binary}")),
            ("x-single-active-consumer", i(1), inv("x-single-active-consumer", "{unacceptable_type,signedint}")),
            ("x-single-active-consumer", s("true"), inv("x-single-active-consumer", "{unacceptable_type,longstr}")),
            ("x-dead-letter-routing-key", s("rk"), inv("x-dead-letter-routing-key", "routing_key_but_no_dlx_defined")),
            ("x-dead-letter-routing-key", AMQPValue::ByteArray(b"x".to_vec().into()), inv("x-dead-letter-routing-key", "{unacceptable_type,binary}")),
            ("x-queue-type", s("foo"), inv("x-queue-type", "\"unsupported queue type 'foo'\"")),
            ("x-queue-type", i(1), inv("x-queue-type", "{unacceptable_type,signedint}")),
            ("x-queue-type", AMQPValue::Void, inv("x-queue-type", "{unacceptable_type,void}")),
            ("x-queue-type", s("a\"b"), inv("x-queue-type", "\"unsupported queue type 'a\\\"b'\"")),
            ("x-queue-type", s("a\tb"), inv("x-queue-type", "\"unsupported queue type 'a\\tb'\"")),
            ("x-queue-type", s("a\\b"), inv("x-queue-type", "\"unsupported queue type 'a\\\\b'\"")),
            ("x-queue-type", s("é"), inv("x-queue-type", "\"unsupported queue type 'é'\"")),
            ("x-queue-type", s("€"), inv("x-queue-type", "[117,110,115,117,112,112,111,114,116,101,100,32,113,117,101,117,101,32,116,121,112,101,32,39,226,130,172,39]")),
            ("x-queue-mode", s("foo"), inv("x-queue-mode", "\"unsupported queue mode 'foo'\"")),
            ("x-queue-version", i(3), inv("x-queue-version", "\"unsupported queue version '3'\"")),
            ("x-queue-version", i(-1), inv("x-queue-version", "{value_negative,-1}")),
        ];
        for (key, value, expected) in cases {
            let e = classic(&[(key, value.clone())]).expect_err(key);
            assert_eq!(e.code, ReplyCode::PreconditionFailed);
            assert_eq!(e.text, expected, "{key} = {value:?}");
        }
    }

    #[test]
    fn unsigned_and_small_integer_types_are_accepted() {
        for v in [
            AMQPValue::ShortShortUInt(7),
            AMQPValue::ShortUInt(7),
            AMQPValue::LongUInt(7),
            AMQPValue::ShortShortInt(7),
            AMQPValue::ShortInt(7),
            AMQPValue::LongInt(7),
            AMQPValue::LongLongInt(7),
        ] {
            assert_eq!(classic(&[("x-max-length", v)]).unwrap().max_length, Some(7));
        }
    }

    #[test]
    fn dead_letter_exchange_type_is_checked_first() {
        let e = classic(&[("x-dead-letter-exchange", i(5)), ("x-message-ttl", i(-1))]).unwrap_err();
        assert_eq!(e.text, format!("{PF}invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'"));
        let e = classic(&[("x-dead-letter-exchange", AMQPValue::Void)]).unwrap_err();
        assert_eq!(e.text, format!("{PF}invalid type 'void' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'"));
        let e = classic(&[(
            "x-dead-letter-exchange",
            AMQPValue::ByteArray(b"d".to_vec().into()),
        )])
        .unwrap_err();
        assert_eq!(e.text, format!("{PF}invalid type 'binary' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'"));
        // Before the queue type check too.
        let e =
            classic(&[("x-dead-letter-exchange", i(5)), ("x-queue-type", s("foo"))]).unwrap_err();
        assert!(e.text.contains("invalid type 'signedint'"), "{}", e.text);
    }

    #[test]
    fn checks_run_in_rabbitmq_order() {
        // Queue type before values.
        let e = classic(&[("x-queue-type", s("foo")), ("x-message-ttl", i(-1))]).unwrap_err();
        assert!(e.text.contains("'x-queue-type'"), "{}", e.text);
        // declare_args order: x-message-ttl before x-max-length before x-max-priority.
        let e = classic(&[("x-max-length", i(-1)), ("x-message-ttl", i(-1))]).unwrap_err();
        assert!(e.text.contains("'x-message-ttl'"), "{}", e.text);
        let e = classic(&[("x-max-priority", i(300)), ("x-max-length", i(-1))]).unwrap_err();
        assert!(e.text.contains("'x-max-length'"), "{}", e.text);
        // Values before arguments of other queue types.
        let e = classic(&[("x-max-age", i(1)), ("x-message-ttl", i(-1))]).unwrap_err();
        assert!(e.text.contains("'x-message-ttl'"), "{}", e.text);
        // Values before quorum properties.
        let e = QueueArgs::parse(
            &table(&[("x-queue-type", s("quorum")), ("x-max-length", i(-1))]),
            "qq",
            "/",
            false,
            false,
            false,
        )
        .unwrap_err();
        assert!(e.text.contains("{value_negative,-1}"), "{}", e.text);
    }

    #[test]
    fn arguments_of_other_queue_types_are_refused() {
        for key in [
            "x-dead-letter-strategy",
            "x-max-age",
            "x-quorum-initial-group-size",
            "x-max-in-memory-length",
            "x-max-in-memory-bytes",
            "x-queue-leader-locator",
            "x-stream-max-segment-size-bytes",
            "x-initial-cluster-size",
        ] {
            let e = classic(&[(key, i(1))]).unwrap_err();
            assert_eq!(e.text, format!("{PF}invalid arg '{key}' for queue 'q' in vhost '/' of queue type rabbit_classic_queue"));
        }
        for key in [
            "x-max-priority",
            "x-queue-mode",
            "x-queue-version",
            "x-queue-master-locator",
            "x-max-age",
        ] {
            // Even an invalid value: quorum does not validate arguments it does not take.
            let e = quorum(&[(key, i(-5))]).unwrap_err();
            assert_eq!(e.text, format!("{PF}invalid arg '{key}' for queue 'qq' in vhost '/' of queue type rabbit_quorum_queue"));
        }
    }

    #[test]
    fn quorum_properties_have_rabbitmq_texts() {
        let qt = table(&[("x-queue-type", s("quorum"))]);
        let prop = |p: &str| format!("{PF}invalid property '{p}' for queue 'qq' in vhost '/'");
        let cases = [
            // (durable, exclusive, auto_delete) → property
            ((false, false, false), "non-durable"),
            ((true, true, false), "exclusive-owner"),
            ((false, true, false), "exclusive-owner"),
            ((true, false, true), "auto-delete"),
            ((true, true, true), "auto-delete"),
            ((false, false, true), "auto-delete"),
        ];
        for ((durable, exclusive, auto_delete), p) in cases {
            let e = QueueArgs::parse(&qt, "qq", "/", durable, exclusive, auto_delete).unwrap_err();
            assert_eq!(e.text, prop(p));
        }
        assert_eq!(
            QueueArgs::parse(&qt, "qq", "/", true, false, false)
                .unwrap()
                .queue_type,
            QueueType::Quorum
        );
    }

    #[test]
    fn quorum_values() {
        let q = quorum(&[]).unwrap();
        assert_eq!(q.delivery_limit, Some(QUORUM_DEFAULT_DELIVERY_LIMIT));
        assert_eq!(
            quorum(&[("x-delivery-limit", i(5))])
                .unwrap()
                .delivery_limit,
            Some(5)
        );
        assert_eq!(
            quorum(&[("x-delivery-limit", i(0))])
                .unwrap()
                .delivery_limit,
            Some(0)
        );
        assert_eq!(
            quorum(&[("x-delivery-limit", i(-1))])
                .unwrap()
                .delivery_limit,
            None
        );
        assert_eq!(
            quorum(&[("x-delivery-limit", s("abc"))])
                .unwrap()
                .delivery_limit,
            Some(QUORUM_DEFAULT_DELIVERY_LIMIT)
        );
        assert_eq!(
            quorum(&[("x-overflow", s("reject-publish-dlx"))])
                .unwrap()
                .overflow,
            Overflow::DropHead
        );
        assert_eq!(
            quorum(&[("x-overflow", s("reject-publish"))])
                .unwrap()
                .overflow,
            Overflow::RejectPublish
        );
        let q = quorum(&[
            ("x-message-ttl", i(1000)),
            ("x-expires", i(1000)),
            ("x-single-active-consumer", AMQPValue::Boolean(true)),
        ])
        .unwrap();
        assert_eq!(
            (q.message_ttl, q.expires, q.single_active_consumer),
            (Some(1000), Some(1000), true)
        );
        let e = quorum(&[("x-dead-letter-strategy", s("x"))]).unwrap_err();
        assert_eq!(e.text, format!("{PF}invalid arg 'x-dead-letter-strategy' for queue 'qq' in vhost '/': invalid_dlx_strategy"));
        quorum(&[("x-dead-letter-strategy", s("at-least-once"))]).unwrap();
        let e = quorum(&[("x-quorum-initial-group-size", i(0))]).unwrap_err();
        assert_eq!(e.text, format!("{PF}invalid arg 'x-quorum-initial-group-size' for queue 'qq' in vhost '/': {{value_zero,0}}"));
        let e = quorum(&[("x-queue-leader-locator", s("x"))]).unwrap_err();
        assert!(
            e.text.ends_with(": invalid_queue_locator_arg"),
            "{}",
            e.text
        );
        // Classic queues take x-delivery-limit too (WarrenMQ), without a default.
        assert_eq!(
            classic(&[("x-delivery-limit", i(1))])
                .unwrap()
                .delivery_limit,
            Some(1)
        );
        assert_eq!(
            classic(&[("x-delivery-limit", i(-1))])
                .unwrap()
                .delivery_limit,
            None
        );
        assert_eq!(classic(&[]).unwrap().delivery_limit, None);
    }

    #[test]
    fn valid_arguments_are_parsed() {
        let a = classic(&[
            ("x-message-ttl", i(0)),
            ("x-expires", AMQPValue::LongLongInt(315_360_000_000)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dead")),
            ("x-max-length", AMQPValue::LongLongInt(1 << 62)),
            ("x-max-length-bytes", AMQPValue::ShortUInt(1000)),
            ("x-overflow", s("reject-publish-dlx")),
            ("x-max-priority", AMQPValue::ShortShortUInt(255)),
            ("x-single-active-consumer", AMQPValue::Boolean(false)),
            ("x-queue-mode", s("lazy")),
            ("x-queue-version", i(2)),
            ("x-queue-type", s("classic")),
            ("x-queue-master-locator", s("anything")),
            ("x-consumer-timeout", i(60_000)),
            ("x-some-unknown-thing", s("ignored")),
        ])
        .unwrap();
        assert_eq!(
            a,
            QueueArgs {
                message_ttl: Some(0),
                expires: Some(MAX_EXPIRY_MS),
                dead_letter_exchange: Some(String::new()),
                dead_letter_routing_key: Some("dead".into()),
                max_length: Some(1 << 62),
                max_length_bytes: Some(1000),
                overflow: Overflow::RejectPublishDlx,
                max_priority: Some(255),
                single_active_consumer: false,
                consumer_timeout: Some(60_000),
                ..QueueArgs::default()
            }
        );
        assert_eq!(
            classic(&[("x-max-priority", i(0))]).unwrap().max_priority,
            Some(0)
        );
        assert_eq!(classic(&[]).unwrap(), QueueArgs::default());
        // An exclusive classic queue may be declared durable (it is not, in effect).
        QueueArgs::parse(&table(&[]), "q", "/", true, true, false).unwrap();
    }

    #[test]
    fn extension_arguments() {
        let a = classic(&[
            ("x-message-deduplication", AMQPValue::Boolean(true)),
            ("x-cache-size", i(1000)),
            ("x-cache-ttl", AMQPValue::LongLongInt(60_000)),
            ("x-deduplication-header", s("msg-id")),
        ])
        .unwrap();
        assert!(a.message_deduplication);
        assert_eq!(
            (
                a.dedup_cache_size,
                a.dedup_cache_ttl,
                a.dedup_header.as_deref()
            ),
            (Some(1000), Some(60_000), Some("msg-id"))
        );
        assert!(
            classic(&[("x-message-deduplication", s("true"))])
                .unwrap()
                .message_deduplication
        );
        let e = classic(&[("x-message-deduplication", i(5))]).unwrap_err();
        assert_eq!(e.text, format!("{PF}invalid arg 'x-message-deduplication' for queue 'q' in vhost '/': {{unacceptable_type,signedint}}"));
        let e = classic(&[("x-cache-size", i(-1))]).unwrap_err();
        assert_eq!(
            e.text,
            format!(
                "{PF}invalid arg 'x-cache-size' for queue 'q' in vhost '/': {{value_negative,-1}}"
            )
        );
        let e = classic(&[("x-consumer-timeout", s("abc"))]).unwrap_err();
        assert_eq!(e.text, format!("{PF}invalid arg 'x-consumer-timeout' for queue 'q' in vhost '/': \"expected integer, got longstr\""));
    }

    #[test]
    fn server_named_quorum_is_refused() {
        let e =
            QueueArgs::check_server_named(&table(&[("x-queue-type", s("quorum"))])).unwrap_err();
        assert_eq!(
            e.text,
            format!("{PF}Cannot declare a server-named queue for type rabbit_quorum_queue")
        );
        QueueArgs::check_server_named(&table(&[("x-queue-type", s("classic"))])).unwrap();
        QueueArgs::check_server_named(&table(&[])).unwrap();
    }

    #[test]
    fn long_texts_are_capped_like_rabbitmq() {
        let name = "q".repeat(200);
        let e = QueueArgs::parse(
            &table(&[("x-max-length", i(-1))]),
            &name,
            "/",
            false,
            false,
            false,
        )
        .unwrap_err();
        assert_eq!(e.text.len(), 255);
        let prefix = format!("{PF}invalid arg 'x-max-length' for queue '");
        assert_eq!(
            e.text,
            format!("{prefix}{}...", "q".repeat(252 - prefix.len()))
        );
        // Non-ASCII names count in bytes and still give a valid string.
        let e = QueueArgs::parse(
            &table(&[("x-max-length", i(-1))]),
            &"é".repeat(120),
            "/",
            false,
            false,
            false,
        )
        .unwrap_err();
        assert!(e.text.len() <= 255 && e.text.ends_with("..."));
        let short = QueueArgs::parse(
            &table(&[("x-max-length", i(-1))]),
            "é€",
            "/",
            false,
            false,
            false,
        )
        .unwrap_err();
        assert_eq!(
            short.text,
            format!(
                "{PF}invalid arg 'x-max-length' for queue 'é€' in vhost '/': {{value_negative,-1}}"
            )
        );
    }

    #[test]
    fn consumer_arguments() {
        let parse = |e: &[(&str, AMQPValue)], t| ConsumerArgs::parse(&table(e), "cq", "/", t);
        assert_eq!(
            parse(&[("x-priority", i(-5))], QueueType::Classic)
                .unwrap()
                .priority,
            -5
        );
        assert_eq!(
            parse(
                &[("x-priority", AMQPValue::LongLongInt(1 << 40))],
                QueueType::Classic
            )
            .unwrap()
            .priority,
            1 << 40
        );
        let e = parse(&[("x-priority", s("abc"))], QueueType::Classic).unwrap_err();
        assert_eq!(e.text, format!("{PF}invalid arg 'x-priority' for queue 'cq' in vhost '/': \"expected integer, got longstr\""));
        let e = parse(&[("x-priority", AMQPValue::Double(1.5))], QueueType::Quorum).unwrap_err();
        assert_eq!(e.text, format!("{PF}invalid arg 'x-priority' for queue 'cq' in vhost '/': \"expected integer, got double\""));
        let e = parse(&[("x-cancel-on-ha-failover", i(1))], QueueType::Classic).unwrap_err();
        assert_eq!(e.text, format!("{PF}invalid arg 'x-cancel-on-ha-failover' for queue 'cq' in vhost '/': {{unacceptable_type,signedint}}"));
        let e = parse(&[("x-stream-offset", s("first"))], QueueType::Classic).unwrap_err();
        assert_eq!(e.text, format!("{PF}invalid arg 'x-stream-offset' for queue 'cq' in vhost '/' of queue type rabbit_classic_queue"));
        let e = parse(
            &[("x-cancel-on-ha-failover", AMQPValue::Boolean(true))],
            QueueType::Quorum,
        )
        .unwrap_err();
        assert_eq!(e.text, format!("{PF}invalid arg 'x-cancel-on-ha-failover' for queue 'cq' in vhost '/' of queue type rabbit_quorum_queue"));
        parse(
            &[
                ("x-credit", AMQPValue::FieldTable(FieldTable::default())),
                ("x-foo", i(1)),
            ],
            QueueType::Classic,
        )
        .unwrap();
        assert_eq!(
            parse(&[("x-consumer-timeout", i(5))], QueueType::Classic)
                .unwrap()
                .consumer_timeout,
            Some(5)
        );
    }

    #[test]
    fn redeclare_equivalence_has_rabbitmq_texts() {
        let ineq = |k: &str, d: &str| {
            format!("{PF}inequivalent arg '{k}' for queue 'eq' in vhost '/': {d}")
        };
        let check = |cur: &[(&str, AMQPValue)], new: &[(&str, AMQPValue)]| {
            check_equivalent(&table(cur), &table(new), QueueType::Classic, "eq", "/")
                .map_err(|e| e.text)
        };
        let ten = [("x-max-length", i(10))];
        // Captured from RabbitMQ 3.10.8.
        type Args<'a> = Vec<(&'a str, AMQPValue)>;
        let cases: Vec<(&str, Args, Args, &str)> = vec![
            ("x-max-length", ten.to_vec(), vec![("x-max-length", i(20))], "received '20' but current is '10'"),
            ("x-max-length", ten.to_vec(), vec![], "received none but current is the value '10' of type 'signedint'"),
            ("x-max-length", vec![], ten.to_vec(), "received the value '10' of type 'signedint' but current is none"),
            ("x-message-ttl", vec![("x-message-ttl", i(10))], vec![("x-message-ttl", s("10"))], "received '10' but current is '10'"),
            ("x-max-length", ten.to_vec(), vec![("x-max-length", i(-1))], "received '-1' but current is '10'"),
            ("x-max-length", ten.to_vec(), vec![("x-max-length", AMQPValue::Double(1.5))], "received '1.5' but current is '10'"),
            ("x-max-length", ten.to_vec(), vec![("x-max-length", AMQPValue::Float(1.1))], "received '1.100000023841858' but current is '10'"),
            ("x-max-length", ten.to_vec(), vec![("x-max-length", AMQPValue::Double(1000.0))], "received '1.0e3' but current is '10'"),
            ("x-max-length", ten.to_vec(), vec![("x-max-length", AMQPValue::FieldArray(vec![s("a"), i(1)].into()))], "received '[{longstr,<<\"a\">>},{signedint,1}]' but current is '10'"),
            ("x-max-length", ten.to_vec(), vec![("x-max-length", AMQPValue::FieldTable(table(&[("k", s("v")), ("n", i(2))])))], "received '[{<<\"k\">>,longstr,<<\"v\">>},{<<\"n\">>,signedint,2}]' but current is '10'"),
            ("x-max-length", ten.to_vec(), vec![("x-max-length", AMQPValue::Boolean(true))], "received 'true' but current is '10'"),
            ("x-max-length", ten.to_vec(), vec![("x-max-length", AMQPValue::Void)], "received none but current is '10'"),
            ("x-max-length", ten.to_vec(), vec![("x-max-length", AMQPValue::Timestamp(1_577_836_800))], "received '1577836800' but current is '10'"),
            ("x-max-length", ten.to_vec(), vec![("x-max-length", s("é€"))], "received 'é€' but current is '10'"),
            ("x-max-length", ten.to_vec(), vec![("x-max-length", AMQPValue::FieldArray(FieldArray::default()))], "received '[]' but current is '10'"),
            ("x-max-length", vec![], vec![("x-max-length", AMQPValue::Void)], "received the value 'undefined' of type 'void' but current is none"),
            ("x-max-length", vec![], vec![("x-max-length", AMQPValue::FieldArray(vec![s("a")].into()))], "received the value '[{longstr,<<\"a\">>}]' of type 'array' but current is none"),
            ("x-max-length", vec![], vec![("x-max-length", AMQPValue::Boolean(true))], "received the value 'true' of type 'bool' but current is none"),
            ("x-dead-letter-exchange", vec![("x-dead-letter-exchange", s("a"))], vec![("x-dead-letter-exchange", s("b"))], "received 'b' but current is 'a'"),
            ("x-single-active-consumer", vec![("x-single-active-consumer", AMQPValue::Boolean(true))], vec![("x-single-active-consumer", AMQPValue::Boolean(false))], "received 'false' but current is 'true'"),
            ("x-overflow", vec![("x-overflow", s("drop-head"))], vec![("x-overflow", s("reject-publish"))], "received 'reject-publish' but current is 'drop-head'"),
            ("x-message-ttl", vec![("x-max-length", i(10)), ("x-message-ttl", i(5))], vec![("x-max-length", i(11)), ("x-message-ttl", i(6))], "received '6' but current is '5'"),
        ];
        for (key, cur, new, detail) in cases {
            assert_eq!(
                check(&cur, &new),
                Err(ineq(key, detail)),
                "{cur:?} → {new:?}"
            );
        }
        // Equivalent: any integer types, longstr vs binary, classic vs no type, unknown args.
        check(&ten, &[("x-max-length", AMQPValue::LongLongInt(10))]).unwrap();
        check(&ten, &[("x-max-length", AMQPValue::ShortShortInt(10))]).unwrap();
        check(
            &[("x-dead-letter-exchange", s("x"))],
            &[(
                "x-dead-letter-exchange",
                AMQPValue::ByteArray(b"x".to_vec().into()),
            )],
        )
        .unwrap();
        check(&[("x-queue-type", s("classic"))], &[]).unwrap();
        check(&[], &[("x-queue-type", s("classic"))]).unwrap();
        check(&[("x-foo", i(1))], &[("x-foo", i(2))]).unwrap();
        // Quorum queues compare their own arguments.
        let e = check_equivalent(
            &table(&[("x-delivery-limit", i(5))]),
            &table(&[("x-delivery-limit", i(6))]),
            QueueType::Quorum,
            "qq",
            "/",
        )
        .unwrap_err();
        assert_eq!(e.text, format!("{PF}inequivalent arg 'x-delivery-limit' for queue 'qq' in vhost '/': received '6' but current is '5'"));
    }

    fn expiration(e: &str) -> Result<Option<u64>, String> {
        let props = AMQPProperties::default().with_expiration(e.into());
        message_expiration(&props).map_err(|e| {
            assert_eq!(e.code, ReplyCode::PreconditionFailed);
            e.text
        })
    }

    #[test]
    fn expiration_property() {
        assert_eq!(
            message_expiration(&AMQPProperties::default()).unwrap(),
            None
        );
        for (input, ms) in [
            ("0", 0),
            ("+5", 5),
            ("007", 7),
            ("-0", 0),
            ("315360000000", MAX_EXPIRY_MS),
        ] {
            assert_eq!(expiration(input), Ok(Some(ms)), "{input}");
        }
        // Captured from RabbitMQ 3.10.8, with the line breaks of Erlang's ~p (80 columns).
        let cases = [
            ("abc", "no_integer"),
            ("", "no_integer"),
            ("  5", "no_integer"),
            ("+-5", "no_integer"),
            ("-1", "{value_negative,-1}"),
            ("10x", "{leftover_string,\"x\"}"),
            ("5 ", "{leftover_string,\" \"}"),
            ("1.5", "{leftover_string,\".5\"}"),
            ("0x10", "{leftover_string,\"x10\"}"),
            ("5\t", "{leftover_string,\"\\t\"}"),
            ("5\"", "{leftover_string,\"\\\"\"}"),
            ("5\\", "{leftover_string,\"\\\\\"}"),
            ("5\n", "{leftover_string,\"\\n\"}"),
            ("5\u{1b}", "{leftover_string,\"\\e\"}"),
            ("5'", "{leftover_string,\"'\"}"),
            ("5\u{1}", "{leftover_string,[1]}"),
            ("5\u{7f}", "{leftover_string,[127]}"),
            ("5é", "{leftover_string,\"é\"}"),
            ("5\u{a0}", "{leftover_string,\"\u{a0}\"}"),
            ("5€", "{leftover_string,[226,130,172]}"),
            ("5\u{9f}", "{leftover_string,[194,159]}"),
            ("315360000001", "{value_too_large,315360000001}"),
            ("999999999999999999", "{value_too_large,999999999999999999}"),
            ("9999999999999999999", "{value_too_large,\n                                           9999999999999999999}"),
            ("-999999999999999999999999999999", "{value_negative,\n                                                       -999999999999999999999999999999}"),
            ("1xxxxxxxxxxxxxxxxx", "{leftover_string,\"xxxxxxxxxxxxxxxxx\"}"),
            ("1xxxxxxxxxxxxxxxxxx", "{leftover_string,\n                                           \"xxxxxxxxxxxxxxxxxx\"}"),
            ("5€€€", "{leftover_string,\n                                     [226,130,172,226,130,172,226,130,172]}"),
            ("5€€€€€", "{leftover_string,\n                                        [226,130,172,226,130,172,226,130,172,\n                                         226,130,172,226,130,172]}"),
            // Generated with Erlang/OTP 25's io_lib:format (tabs and newlines move the column).
            ("5x112x2929+\\€-", "{leftover_string,\n                                        [120,49,49,50,120,50,57,50,57,43,92,\n                                         226,130,172,45]}"),
            ("7\t\t\t\t\t\t\t", "{leftover_string,\n                                                                            \"\\t\\t\\t\\t\\t\\t\\t\"}"),
            ("+3\n2\u{1}\u{a0}€\t+1\u{1}\u{a0}-9-\\9", "{leftover_string,[10,50,1,194,160,226,130,172,9,43,49,1,\n                                       194,160,45,57,45,92,57]}"),
        ];
        for (input, detail) in cases {
            assert_eq!(
                expiration(input),
                Err(format!("{PF}invalid expiration '{input}': {detail}")),
                "{input:?}"
            );
        }
        // Over 255 bytes: cut like RabbitMQ.
        let long = format!("1{}", "€".repeat(12));
        let text = expiration(&long).unwrap_err();
        assert_eq!(
            text,
            format!("{PF}invalid expiration '{long}': {{leftover_string,\n{}[226,130,172,226,\n{}130,172,226...", " ".repeat(61), " ".repeat(62))
        );
    }

    #[test]
    fn effective_ttl_is_the_lower() {
        let q = QueueArgs {
            message_ttl: Some(100),
            ..QueueArgs::default()
        };
        assert_eq!(q.effective_ttl(Some(50)), Some(50));
        assert_eq!(q.effective_ttl(Some(500)), Some(100));
        assert_eq!(q.effective_ttl(None), Some(100));
        assert_eq!(QueueArgs::default().effective_ttl(Some(7)), Some(7));
        assert_eq!(QueueArgs::default().effective_ttl(None), None);
    }
}
