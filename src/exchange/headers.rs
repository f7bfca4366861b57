//! The headers exchange's routing table: message headers matched against
//! binding arguments, with RabbitMQ's rules (`rabbit_exchange_type_headers`).
//!
//! Owns the list of headers bindings, each compiled at bind time into its
//! match mode and the conditions to check, so routing only looks headers up.
//!
//! The rules, as RabbitMQ 4.x applies them:
//! - `x-match` is `all` (also when absent or invalid), `any`, `all-with-x` or
//!   `any-with-x`. Plain `all`/`any` ignore every binding argument whose name
//!   starts with `x-`; the `-with-x` modes ignore only `x-match` itself.
//! - `all` with no conditions left matches every message (with or without
//!   headers); `any` with no conditions matches none.
//! - A binding argument of type void matches when the header is present,
//!   whatever its value (even void).
//! - Otherwise values are compared as Erlang terms after decoding, so the AMQP
//!   type is not compared at the top level: integers of every width and
//!   signedness are equal when their values are (`1` as a byte equals `1` as
//!   a 64-bit long), `f32` and `f64` are equal when their values are, a long
//!   string equals a byte array with the same bytes. An integer never equals a
//!   float, a bool never equals a number. Nested tables and arrays keep their
//!   types, so they compare with types.
//! - A *message* header of type timestamp is compared in milliseconds (its
//!   value × 1000, `mc_amqpl:routing_value/2`), while a timestamp binding
//!   argument is compared as is. So a timestamp header only matches a binding
//!   argument holding the same instant in milliseconds.

use std::fmt::Write as _;

use crate::queue::args::type_name;
use amq_protocol::types::{AMQPValue, FieldTable};

/// The `x-match` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    All,
    Any,
}

/// What a binding argument requires of the message header with its name.
#[derive(Debug, Clone)]
enum Expect {
    /// Void argument: the header is present.
    Present,
    /// Any integer type (and a timestamp argument, unscaled).
    Int(i128),
    /// `f32` or `f64`.
    Float(f64),
    /// Long string, short string or byte array.
    Bytes(Box<[u8]>),
    Bool(bool),
    Decimal(u8, u32),
    /// Table or array: equal with types, as Erlang compares the nested terms.
    Nested(AMQPValue),
}

impl Expect {
    fn from_arg(v: &AMQPValue) -> Expect {
        if let Some(i) = int_value(v) {
            return Expect::Int(i);
        }
        match v {
            AMQPValue::Void => Expect::Present,
            AMQPValue::Boolean(b) => Expect::Bool(*b),
            AMQPValue::Float(f) => Expect::Float(f64::from(*f)),
            AMQPValue::Double(f) => Expect::Float(*f),
            AMQPValue::DecimalValue(d) => Expect::Decimal(d.scale, d.value),
            AMQPValue::ShortString(s) => Expect::Bytes(s.as_str().as_bytes().into()),
            AMQPValue::LongString(s) => Expect::Bytes(s.as_bytes().into()),
            AMQPValue::ByteArray(b) => Expect::Bytes(b.as_slice().into()),
            // A timestamp binding argument is not scaled (only headers are).
            AMQPValue::Timestamp(t) => Expect::Int(i128::from(*t)),
            // Tables and arrays (integers returned above).
            _ => Expect::Nested(v.clone()),
        }
    }

    /// Whether the header value `v` (present in the message) satisfies this.
    fn matches(&self, v: &AMQPValue) -> bool {
        match self {
            Expect::Present => true,
            Expect::Int(i) => header_int(v) == Some(*i),
            Expect::Float(f) => match v {
                AMQPValue::Float(x) => f64::from(*x) == *f,
                AMQPValue::Double(x) => x == f,
                _ => false,
            },
            Expect::Bytes(b) => match v {
                AMQPValue::LongString(s) => s.as_bytes() == &**b,
                AMQPValue::ShortString(s) => s.as_str().as_bytes() == &**b,
                AMQPValue::ByteArray(s) => s.as_slice() == &**b,
                _ => false,
            },
            Expect::Bool(b) => matches!(v, AMQPValue::Boolean(x) if x == b),
            Expect::Decimal(scale, value) => {
                matches!(v, AMQPValue::DecimalValue(d) if d.scale == *scale && d.value == *value)
            }
            Expect::Nested(n) => n == v,
        }
    }
}

/// The value of an integer field of any width.
fn int_value(v: &AMQPValue) -> Option<i128> {
    Some(match v {
        AMQPValue::ShortShortInt(i) => i128::from(*i),
        AMQPValue::ShortShortUInt(i) => i128::from(*i),
        AMQPValue::ShortInt(i) => i128::from(*i),
        AMQPValue::ShortUInt(i) => i128::from(*i),
        AMQPValue::LongInt(i) => i128::from(*i),
        AMQPValue::LongUInt(i) => i128::from(*i),
        AMQPValue::LongLongInt(i) => i128::from(*i),
        _ => return None,
    })
}

/// The integer value of a message header, timestamps in milliseconds.
fn header_int(v: &AMQPValue) -> Option<i128> {
    match v {
        // mc_amqpl:routing_value/2 scales 0-9-1 timestamps to milliseconds.
        AMQPValue::Timestamp(t) => Some(i128::from(*t) * 1000),
        _ => int_value(v),
    }
}

/// One headers binding, compiled.
#[derive(Debug, Clone)]
struct HeadersBinding<D> {
    dest: D,
    mode: Mode,
    conditions: Box<[(Box<str>, Expect)]>,
    /// The arguments as bound, to find this binding again on unbind.
    args: FieldTable,
}

impl<D> HeadersBinding<D> {
    fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let satisfied = |(name, expect): &(Box<str>, Expect)| {
            headers
                .and_then(|h| h.inner().get(&**name))
                .is_some_and(|v| expect.matches(v))
        };
        match self.mode {
            Mode::All => self.conditions.iter().all(satisfied),
            Mode::Any => self.conditions.iter().any(satisfied),
        }
    }
}

/// Every headers binding, in bind order; routing tests each in turn.
#[derive(Debug, Clone)]
pub(super) struct HeadersTable<D> {
    bindings: Vec<HeadersBinding<D>>,
}

impl<D: Clone + Eq> HeadersTable<D> {
    pub(super) fn new() -> Self {
        HeadersTable {
            bindings: Vec::new(),
        }
    }

    /// Adds one binding of `dest` with arguments `args`.
    pub(super) fn add(&mut self, dest: D, args: &FieldTable) {
        let (mode, with_x) = match x_match(args) {
            Some(b"any") => (Mode::Any, false),
            Some(b"any-with-x") => (Mode::Any, true),
            Some(b"all-with-x") => (Mode::All, true),
            // "all", absent, or invalid (RabbitMQ's fallback for unvalidated args).
            _ => (Mode::All, false),
        };
        let conditions = args
            .inner()
            .iter()
            .filter(|(name, _)| {
                let name = name.as_str();
                name != "x-match" && (with_x || !name.starts_with("x-"))
            })
            .map(|(name, v)| (name.as_str().into(), Expect::from_arg(v)))
            .collect();
        self.bindings.push(HeadersBinding {
            dest,
            mode,
            conditions,
            args: args.clone(),
        });
    }

    /// Removes one binding of `dest` with arguments `args`.
    ///
    /// Bindings that differ only in routing key compile to the same thing, so
    /// removing any one of them is right.
    pub(super) fn remove(&mut self, dest: &D, args: &FieldTable) {
        if let Some(pos) = self
            .bindings
            .iter()
            .position(|b| b.dest == *dest && super::args_identical(&b.args, args))
        {
            self.bindings.remove(pos);
        }
    }

    /// Removes every binding of `dest`.
    pub(super) fn remove_dest(&mut self, dest: &D) {
        self.bindings.retain(|b| b.dest != *dest);
    }

    /// Appends the destination of every binding the headers satisfy.
    pub(super) fn route(&self, headers: Option<&FieldTable>, out: &mut Vec<D>) {
        for b in &self.bindings {
            if b.matches(headers) {
                out.push(b.dest.clone());
            }
        }
    }
}

/// The `x-match` argument's bytes, if it is a string.
fn x_match(args: &FieldTable) -> Option<&[u8]> {
    match args.inner().get("x-match")? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// `rabbit_exchange_type_headers:validate_binding/2`.
pub(super) fn validate_args(args: &FieldTable) -> Result<(), String> {
    let value = match args.inner().get("x-match") {
        None => return Ok(()),
        Some(v) => v,
    };
    match x_match(args) {
        Some(b"all" | b"any" | b"all-with-x" | b"any-with-x") => Ok(()),
        Some(other) => {
            let mut text = String::from("Invalid x-match field value ");
            erl_binary(other, &mut text);
            text.push_str("; expected all, any, all-with-x, or any-with-x");
            Err(text)
        }
        None => {
            let mut text = String::from("Invalid x-match field type ");
            text.push_str(type_name(value));
            text.push_str(" (value ");
            erl_term(value, &mut text);
            text.push_str("); expected longstr");
            Err(text)
        }
    }
}

/// Writes `v` as Erlang's `~tp` prints RabbitMQ's decoded value (single line;
/// floats and non-ASCII binaries are best effort).
fn erl_term(v: &AMQPValue, out: &mut String) {
    // `write!` to a String cannot fail.
    match v {
        AMQPValue::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        AMQPValue::ShortShortInt(i) => _ = write!(out, "{i}"),
        AMQPValue::ShortShortUInt(i) => _ = write!(out, "{i}"),
        AMQPValue::ShortInt(i) => _ = write!(out, "{i}"),
        AMQPValue::ShortUInt(i) => _ = write!(out, "{i}"),
        AMQPValue::LongInt(i) => _ = write!(out, "{i}"),
        AMQPValue::LongUInt(i) => _ = write!(out, "{i}"),
        AMQPValue::LongLongInt(i) => _ = write!(out, "{i}"),
        AMQPValue::Timestamp(i) => _ = write!(out, "{i}"),
        AMQPValue::Float(f) => erl_float(f64::from(*f), out),
        AMQPValue::Double(f) => erl_float(*f, out),
        AMQPValue::DecimalValue(d) => _ = write!(out, "{{{},{}}}", d.scale, d.value),
        AMQPValue::ShortString(s) => erl_binary(s.as_str().as_bytes(), out),
        AMQPValue::LongString(s) => erl_binary(s.as_bytes(), out),
        AMQPValue::ByteArray(b) => erl_binary(b.as_slice(), out),
        AMQPValue::Void => out.push_str("undefined"),
        AMQPValue::FieldTable(t) => {
            out.push('[');
            for (i, (k, v)) in t.inner().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('{');
                erl_binary(k.as_str().as_bytes(), out);
                out.push(',');
                out.push_str(type_name(v));
                out.push(',');
                erl_term(v, out);
                out.push('}');
            }
            out.push(']');
        }
        AMQPValue::FieldArray(a) => {
            out.push('[');
            for (i, v) in a.as_slice().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('{');
                out.push_str(type_name(v));
                out.push(',');
                erl_term(v, out);
                out.push('}');
            }
            out.push(']');
        }
    }
}

/// An Erlang binary as `~tp` prints it: `<<"text">>` when every byte is
/// printable ASCII or a common escape, else `<<1,2,3>>`.
fn erl_binary(bytes: &[u8], out: &mut String) {
    let printable = bytes
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) || matches!(b, 8..=13 | 27));
    out.push_str("<<");
    if printable && !bytes.is_empty() {
        out.push('"');
        for &b in bytes {
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                8 => out.push_str("\\b"),
                9 => out.push_str("\\t"),
                10 => out.push_str("\\n"),
                11 => out.push_str("\\v"),
                12 => out.push_str("\\f"),
                13 => out.push_str("\\r"),
                27 => out.push_str("\\e"),
                _ => out.push(char::from(b)),
            }
        }
        out.push('"');
    } else {
        for (i, b) in bytes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            _ = write!(out, "{b}");
        }
    }
    out.push_str(">>");
}

/// An Erlang float as `~p` prints it (OTP's `io_lib_format:fwrite_g/1`):
/// shortest round-trip digits, in fixed notation unless scientific is shorter
/// or the magnitude reaches 2^53 (`1.0`, `0.001`, `100.0`, `1.0e3`, `1.5e-7`).
fn erl_float(f: f64, out: &mut String) {
    if f == 0.0 {
        out.push_str(if f.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    if !f.is_finite() {
        // Not representable in Erlang; RabbitMQ would not have decoded it.
        _ = write!(out, "{f}");
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.25e-3".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let len = i32::try_from(digits.len()).expect("an f64 has few digits");
    // value = digits × 10^place
    let place = exp - len + 1;
    let exp_str = exp.to_string();
    let exp_cost = i32::try_from(exp_str.len()).expect("short") + 2;
    if f < 0.0 {
        out.push('-');
    }
    let scientific = |out: &mut String| {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { "0" } else { rest };
        _ = write!(out, "{first}.{rest}e{exp_str}");
    };
    if place < 0 {
        if exp >= 0 {
            let (int, frac) = digits.split_at(usize::try_from(len + place).expect("exp >= 0"));
            _ = write!(out, "{int}.{frac}");
        } else if 2 - place - len <= exp_cost {
            out.push_str("0.");
            for _ in 0..(-place - len) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            scientific(out);
        }
    } else {
        let dot = i32::from(len == 1);
        if exp_cost + dot >= place + 2 && f.abs() < 9_007_199_254_740_992.0 {
            out.push_str(&digits);
            for _ in 0..place {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            scientific(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::{AMQPValue as V, DecimalValue, FieldTable};

    use super::super::test_util::{routed, s, table};
    use super::super::{Bindings, ExchangeKind};
    use super::*;

    fn headers(bindings: &[(u32, FieldTable)]) -> Bindings<u32> {
        let mut b = Bindings::new(ExchangeKind::Headers);
        for (dest, args) in bindings {
            assert_eq!(
                Bindings::<u32>::validate_args(ExchangeKind::Headers, args),
                Ok(())
            );
            b.bind(*dest, "", args);
        }
        b
    }

    fn route(b: &Bindings<u32>, h: Option<&FieldTable>) -> Vec<u32> {
        routed(b, "ignored", h)
    }

    fn err(args: &FieldTable) -> String {
        Bindings::<u32>::validate_args(ExchangeKind::Headers, args).unwrap_err()
    }

    /// RabbitMQ deps/rabbit/test/exchanges_SUITE.erl `headers_exchange`.
    #[test]
    fn all_and_any() {
        let b = headers(&[
            (
                1,
                table(&[("x-match", s("all")), ("foo", s("bar")), ("fuu", s("ber"))]),
            ),
            (
                2,
                table(&[("x-match", s("any")), ("foo", s("bar")), ("fuu", s("ber"))]),
            ),
        ]);
        let both = table(&[("foo", s("bar")), ("fuu", s("ber"))]);
        let one = table(&[("foo", s("bar"))]);
        assert_eq!(route(&b, Some(&both)), vec![1, 2]);
        assert_eq!(route(&b, Some(&one)), vec![2]);
        assert_eq!(route(&b, None), Vec::<u32>::new());
        assert_eq!(route(&b, Some(&FieldTable::default())), Vec::<u32>::new());
        let extra = table(&[("foo", s("bar")), ("fuu", s("ber")), ("zzz", s("1"))]);
        assert_eq!(
            route(&b, Some(&extra)),
            vec![1, 2],
            "extra headers are fine"
        );
        let wrong = table(&[("foo", s("bar")), ("fuu", s("nope"))]);
        assert_eq!(route(&b, Some(&wrong)), vec![2]);
    }

    /// RabbitMQ exchanges_SUITE `headers_exchange_key_presence_only`.
    #[test]
    fn void_matches_presence_with_x() {
        let b = headers(&[
            (
                1,
                table(&[
                    ("x-match", s("all-with-x")),
                    ("foo", V::Void),
                    ("x-foo", V::Void),
                ]),
            ),
            (
                2,
                table(&[
                    ("x-match", s("any-with-x")),
                    ("foo", V::Void),
                    ("x-foo", V::Void),
                ]),
            ),
        ]);
        let m1 = table(&[("foo", s("anything")), ("x-foo", V::LongLongInt(42))]);
        let m2 = table(&[("foo", s("whatever"))]);
        let m3 = table(&[("x-foo", s("something"))]);
        let m4 = table(&[("other", s("value"))]);
        assert_eq!(route(&b, Some(&m1)), vec![1, 2]);
        assert_eq!(route(&b, Some(&m2)), vec![2]);
        assert_eq!(route(&b, Some(&m3)), vec![2]);
        assert_eq!(route(&b, Some(&m4)), Vec::<u32>::new());
        assert_eq!(route(&b, None), Vec::<u32>::new());
        // A void header is present too.
        let void = table(&[("foo", V::Void), ("x-foo", V::Void)]);
        assert_eq!(route(&b, Some(&void)), vec![1, 2]);
    }

    #[test]
    fn x_arguments_are_ignored_without_with_x() {
        let b = headers(&[
            (
                1,
                table(&[("x-match", s("all")), ("x-foo", s("1")), ("a", s("1"))]),
            ),
            (2, table(&[("x-match", s("any")), ("x-foo", s("1"))])),
            (
                3,
                table(&[
                    ("x-match", s("all-with-x")),
                    ("x-foo", s("1")),
                    ("a", s("1")),
                ]),
            ),
            (4, table(&[("x-match", s("any-with-x")), ("x-foo", s("1"))])),
        ]);
        let only_a = table(&[("a", s("1"))]);
        let both = table(&[("a", s("1")), ("x-foo", s("1"))]);
        let only_x = table(&[("x-foo", s("1"))]);
        assert_eq!(route(&b, Some(&only_a)), vec![1]);
        assert_eq!(route(&b, Some(&both)), vec![1, 3, 4]);
        assert_eq!(route(&b, Some(&only_x)), vec![4]);
        // `any` with only x- arguments never matches.
        assert_eq!(route(&b, None), Vec::<u32>::new());
    }

    #[test]
    fn x_match_itself_is_never_a_condition() {
        let b = headers(&[
            (1, table(&[("x-match", s("all-with-x"))])),
            (2, table(&[("x-match", s("any-with-x"))])),
            (3, table(&[("x-match", s("any-with-x")), ("k", s("v"))])),
        ]);
        let h = table(&[("x-match", s("something else"))]);
        assert_eq!(route(&b, Some(&h)), vec![1]);
        assert_eq!(route(&b, Some(&table(&[("k", s("v"))]))), vec![1, 3]);
    }

    #[test]
    fn all_without_conditions_matches_everything_any_nothing() {
        let b = headers(&[
            (1, FieldTable::default()),
            (2, table(&[("x-match", s("all"))])),
            (3, table(&[("x-match", s("all")), ("x-ignored", s("v"))])),
            (4, table(&[("x-match", s("any"))])),
            (5, table(&[("x-match", s("any")), ("x-ignored", s("v"))])),
        ]);
        assert_eq!(route(&b, None), vec![1, 2, 3]);
        assert_eq!(route(&b, Some(&FieldTable::default())), vec![1, 2, 3]);
        assert_eq!(
            route(&b, Some(&table(&[("x-ignored", s("v"))]))),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn default_mode_is_all() {
        let b = headers(&[(1, table(&[("a", s("1")), ("b", s("2"))]))]);
        assert_eq!(route(&b, Some(&table(&[("a", s("1"))]))), Vec::<u32>::new());
        assert_eq!(
            route(&b, Some(&table(&[("a", s("1")), ("b", s("2"))]))),
            vec![1]
        );
    }

    #[test]
    fn invalid_x_match_binds_as_all_when_not_validated() {
        let mut b = Bindings::new(ExchangeKind::Headers);
        b.bind(
            1u32,
            "",
            &table(&[("x-match", s("foo")), ("a", s("1")), ("b", s("2"))]),
        );
        b.bind(
            2u32,
            "",
            &table(&[("x-match", V::LongInt(1)), ("a", s("1"))]),
        );
        assert_eq!(route(&b, Some(&table(&[("a", s("1"))]))), vec![2]);
        assert_eq!(
            route(&b, Some(&table(&[("a", s("1")), ("b", s("2"))]))),
            vec![1, 2]
        );
    }

    #[test]
    fn integers_compare_by_value_across_widths() {
        let b = headers(&[
            (1, table(&[("n", V::LongInt(1))])),
            (2, table(&[("n", V::ShortShortUInt(200))])),
            (3, table(&[("n", V::LongLongInt(-5))])),
        ]);
        for one in [
            V::ShortShortInt(1),
            V::ShortShortUInt(1),
            V::ShortInt(1),
            V::ShortUInt(1),
            V::LongInt(1),
            V::LongUInt(1),
            V::LongLongInt(1),
        ] {
            assert_eq!(
                route(&b, Some(&table(&[("n", one.clone())]))),
                vec![1],
                "{one:?}"
            );
        }
        assert_eq!(
            route(&b, Some(&table(&[("n", V::LongLongInt(200))]))),
            vec![2]
        );
        assert_eq!(
            route(&b, Some(&table(&[("n", V::ShortShortInt(-56))]))),
            Vec::<u32>::new()
        );
        assert_eq!(
            route(&b, Some(&table(&[("n", V::ShortShortInt(-5))]))),
            vec![3]
        );
        assert_eq!(
            route(&b, Some(&table(&[("n", V::LongUInt(u32::MAX))]))),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn integers_never_equal_floats_bools_or_strings() {
        let b = headers(&[
            (1, table(&[("n", V::LongInt(1))])),
            (2, table(&[("f", V::Double(1.0))])),
        ]);
        for v in [V::Double(1.0), V::Float(1.0), V::Boolean(true), s("1")] {
            assert_eq!(
                route(&b, Some(&table(&[("n", v.clone())]))),
                Vec::<u32>::new(),
                "{v:?}"
            );
        }
        for v in [V::LongInt(1), V::Boolean(true), s("1.0")] {
            assert_eq!(
                route(&b, Some(&table(&[("f", v.clone())]))),
                Vec::<u32>::new(),
                "{v:?}"
            );
        }
    }

    #[test]
    fn floats_compare_by_value_across_widths() {
        let b = headers(&[
            (1, table(&[("f", V::Double(1.5))])),
            (2, table(&[("f", V::Float(0.1))])),
        ]);
        assert_eq!(route(&b, Some(&table(&[("f", V::Float(1.5))]))), vec![1]);
        assert_eq!(route(&b, Some(&table(&[("f", V::Double(1.5))]))), vec![1]);
        // f32 0.1 widened is not f64 0.1.
        assert_eq!(
            route(&b, Some(&table(&[("f", V::Double(0.1))]))),
            Vec::<u32>::new()
        );
        assert_eq!(route(&b, Some(&table(&[("f", V::Float(0.1))]))), vec![2]);
        assert_eq!(
            route(&b, Some(&table(&[("f", V::Double(f64::from(0.1f32)))]))),
            vec![2]
        );
    }

    #[test]
    fn strings_and_byte_arrays_are_the_same_binary() {
        let b = headers(&[
            (1, table(&[("k", s("abc"))])),
            (2, table(&[("k", V::ByteArray(b"xyz".to_vec().into()))])),
            (3, table(&[("k", s(""))])),
        ]);
        assert_eq!(
            route(
                &b,
                Some(&table(&[("k", V::ByteArray(b"abc".to_vec().into()))]))
            ),
            vec![1]
        );
        assert_eq!(route(&b, Some(&table(&[("k", s("xyz"))]))), vec![2]);
        assert_eq!(
            route(&b, Some(&table(&[("k", s("ABC"))]))),
            Vec::<u32>::new()
        );
        assert_eq!(route(&b, Some(&table(&[("k", s(""))]))), vec![3]);
        assert_eq!(
            route(&b, Some(&table(&[("k", V::Void)]))),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn bools_and_decimals() {
        let dec = |scale, value| V::DecimalValue(DecimalValue { scale, value });
        let b = headers(&[
            (1, table(&[("b", V::Boolean(true))])),
            (2, table(&[("d", dec(2, 150))])),
        ]);
        assert_eq!(route(&b, Some(&table(&[("b", V::Boolean(true))]))), vec![1]);
        assert_eq!(
            route(&b, Some(&table(&[("b", V::Boolean(false))]))),
            Vec::<u32>::new()
        );
        assert_eq!(
            route(&b, Some(&table(&[("b", V::ShortShortUInt(1))]))),
            Vec::<u32>::new()
        );
        assert_eq!(route(&b, Some(&table(&[("d", dec(2, 150))]))), vec![2]);
        // Same number, different scale: different Erlang tuples.
        assert_eq!(
            route(&b, Some(&table(&[("d", dec(1, 15))]))),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn message_timestamps_compare_in_milliseconds() {
        let b = headers(&[
            (1, table(&[("t", V::Timestamp(1_700_000_000))])),
            (2, table(&[("t", V::LongLongInt(1_700_000_000_000))])),
            (3, table(&[("t", V::Timestamp(1_700_000_000_000))])),
        ]);
        // A timestamp header is scaled to ms; the binding argument is not.
        assert_eq!(
            route(&b, Some(&table(&[("t", V::Timestamp(1_700_000_000))]))),
            vec![2, 3]
        );
        // A plain integer header equal to the binding's raw timestamp value.
        assert_eq!(
            route(&b, Some(&table(&[("t", V::LongLongInt(1_700_000_000))]))),
            vec![1]
        );
        // u64::MAX seconds in ms does not overflow.
        assert_eq!(
            route(&b, Some(&table(&[("t", V::Timestamp(u64::MAX))]))),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn nested_tables_and_arrays_compare_with_types() {
        let inner = table(&[("a", V::LongInt(1))]);
        let arr = V::FieldArray(vec![s("x"), V::LongInt(2)].into());
        let b = headers(&[
            (1, table(&[("t", V::FieldTable(inner.clone()))])),
            (2, table(&[("a", arr.clone())])),
        ]);
        assert_eq!(
            route(&b, Some(&table(&[("t", V::FieldTable(inner))]))),
            vec![1]
        );
        let other_width = table(&[("a", V::LongLongInt(1))]);
        assert_eq!(
            route(&b, Some(&table(&[("t", V::FieldTable(other_width))]))),
            Vec::<u32>::new()
        );
        assert_eq!(route(&b, Some(&table(&[("a", arr)]))), vec![2]);
        let arr2 = V::FieldArray(vec![s("x"), V::LongLongInt(2)].into());
        assert_eq!(route(&b, Some(&table(&[("a", arr2)]))), Vec::<u32>::new());
        // A void argument matches a nested value by presence.
        let p = headers(&[(3, table(&[("t", V::Void)]))]);
        assert_eq!(
            route(
                &p,
                Some(&table(&[("t", V::FieldTable(FieldTable::default()))]))
            ),
            vec![3]
        );
    }

    #[test]
    fn header_names_are_case_sensitive() {
        let b = headers(&[(1, table(&[("Key", s("v"))]))]);
        assert_eq!(
            route(&b, Some(&table(&[("key", s("v"))]))),
            Vec::<u32>::new()
        );
        assert_eq!(route(&b, Some(&table(&[("Key", s("v"))]))), vec![1]);
    }

    #[test]
    fn routing_key_is_part_of_identity_but_not_of_matching() {
        let mut b = Bindings::new(ExchangeKind::Headers);
        let args = table(&[("x-match", s("any")), ("a", s("1"))]);
        assert!(b.bind(1u32, "k1", &args));
        assert!(b.bind(1u32, "k2", &args));
        assert_eq!(b.len(), 2);
        let h = table(&[("a", s("1"))]);
        assert_eq!(routed(&b, "anything", Some(&h)), vec![1]);
        assert!(b.unbind(&1, "k1", &args));
        assert_eq!(routed(&b, "anything", Some(&h)), vec![1]);
        assert!(b.unbind(&1, "k2", &args));
        assert_eq!(routed(&b, "anything", Some(&h)), Vec::<u32>::new());
    }

    #[test]
    fn unbind_removes_the_binding_with_those_args() {
        let mut b = Bindings::new(ExchangeKind::Headers);
        let a1 = table(&[("a", s("1"))]);
        let a2 = table(&[("a", s("2"))]);
        b.bind(1u32, "", &a1);
        b.bind(1u32, "", &a2);
        b.bind(2u32, "", &a1);
        assert!(b.unbind(&1, "", &a1));
        assert_eq!(route(&b, Some(&a1)), vec![2]);
        assert_eq!(route(&b, Some(&a2)), vec![1]);
        assert_eq!(b.unbind_all(&1), 1);
        assert_eq!(route(&b, Some(&a2)), Vec::<u32>::new());
        assert_eq!(route(&b, Some(&a1)), vec![2]);
    }

    #[test]
    fn validate_accepts_the_four_modes_and_absence() {
        for mode in ["all", "any", "all-with-x", "any-with-x"] {
            let args = table(&[("x-match", s(mode)), ("a", s("1"))]);
            assert_eq!(validate_args(&args), Ok(()), "{mode}");
        }
        assert_eq!(validate_args(&FieldTable::default()), Ok(()));
        assert_eq!(validate_args(&table(&[("a", V::LongInt(5))])), Ok(()));
    }

    /// Texts from rabbit_exchange_type_headers:validate_binding/2, formatted
    /// as io_lib:format("~tp") would.
    #[test]
    fn validate_rejects_other_values_with_rabbitmq_text() {
        let tail = "; expected all, any, all-with-x, or any-with-x";
        assert_eq!(
            err(&table(&[("x-match", s("foo"))])),
            format!("Invalid x-match field value <<\"foo\">>{tail}")
        );
        assert_eq!(
            err(&table(&[("x-match", s("ALL"))])),
            format!("Invalid x-match field value <<\"ALL\">>{tail}")
        );
        assert_eq!(
            err(&table(&[("x-match", s(""))])),
            format!("Invalid x-match field value <<>>{tail}")
        );
        assert_eq!(
            err(&table(&[("x-match", s("a\"b\\c\n"))])),
            format!("Invalid x-match field value <<\"a\\\"b\\\\c\\n\">>{tail}")
        );
        assert_eq!(
            err(&table(&[("x-match", V::LongString(vec![0u8, 200].into()))])),
            format!("Invalid x-match field value <<0,200>>{tail}")
        );
    }

    #[test]
    fn validate_rejects_other_types_with_rabbitmq_text() {
        let cases = [
            (V::LongInt(5), "signedint (value 5)"),
            (V::LongLongInt(-7), "long (value -7)"),
            (V::ShortShortInt(1), "byte (value 1)"),
            (V::ShortShortUInt(1), "unsignedbyte (value 1)"),
            (V::ShortInt(1), "short (value 1)"),
            (V::ShortUInt(1), "unsignedshort (value 1)"),
            (V::LongUInt(1), "unsignedint (value 1)"),
            (V::Boolean(true), "bool (value true)"),
            (V::Double(1.5), "double (value 1.5)"),
            (V::Float(2.0), "float (value 2.0)"),
            (V::Timestamp(9), "timestamp (value 9)"),
            (V::Void, "void (value undefined)"),
            (
                V::ByteArray(b"all".to_vec().into()),
                "binary (value <<\"all\">>)",
            ),
            (
                V::DecimalValue(DecimalValue {
                    scale: 2,
                    value: 150,
                }),
                "decimal (value {2,150})",
            ),
            (
                V::FieldTable(table(&[("a", s("b")), ("n", V::LongInt(1))])),
                "table (value [{<<\"a\">>,longstr,<<\"b\">>},{<<\"n\">>,signedint,1}])",
            ),
            (
                V::FieldArray(vec![s("all"), V::Boolean(false)].into()),
                "array (value [{longstr,<<\"all\">>},{bool,false}])",
            ),
        ];
        for (v, expected) in cases {
            assert_eq!(
                err(&table(&[("x-match", v.clone())])),
                format!("Invalid x-match field type {expected}; expected longstr"),
                "{v:?}"
            );
        }
    }

    #[test]
    fn erlang_float_formatting() {
        let f = |x: f64| {
            let mut s = String::new();
            erl_float(x, &mut s);
            s
        };
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (-3.0, "-3.0"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (-1.25, "-1.25"),
            (12.0, "12.0"),
            (100.0, "100.0"),
            (120.0, "120.0"),
            (1000.0, "1.0e3"),
            (1200.0, "1.2e3"),
            (123456.0, "123456.0"),
            (0.001, "0.001"),
            (0.0001, "1.0e-4"),
            (0.00015, "1.5e-4"),
            (2.71, "2.71"),
            (1e20, "1.0e20"),
            (9007199254740992.0, "9.007199254740992e15"),
        ];
        for (x, expected) in cases {
            assert_eq!(f(x), expected, "{x}");
        }
    }
}
