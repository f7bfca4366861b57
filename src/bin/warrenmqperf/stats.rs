//! Counters, latency histograms, the per-second progress line, and the final
//! report (human-readable and JSON).
//!
//! Hot loops touch only relaxed atomics (once per socket read or write, not per
//! message) and their own consumer's latency sink (one uncontended lock per
//! read batch). The reporter swaps the sinks out once per second.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Run-wide counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages written to producer sockets.
    pub published: AtomicU64,
    /// Messages confirmed with basic.ack.
    pub confirmed: AtomicU64,
    /// Messages refused with basic.nack.
    pub nacked: AtomicU64,
    /// Messages received by consumers (duplicates included).
    pub consumed: AtomicU64,
    /// basic.return frames received by producers.
    pub returned: AtomicU64,
    /// connection.blocked notifications received.
    pub blocked: AtomicU64,
    /// Time of the last delivery, ns since the epoch.
    pub last_delivery_ns: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> [u64; 3] {
        [
            self.published.load(Ordering::Relaxed),
            self.confirmed.load(Ordering::Relaxed),
            self.consumed.load(Ordering::Relaxed),
        ]
    }
}

/// Highest latency a histogram records (larger values are clamped), in ns.
const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

/// An empty latency histogram (ns, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// One consumer's latency samples since the reporter last looked.
pub struct LatencySink {
    hist: Mutex<Histogram<u64>>,
}

impl Default for LatencySink {
    fn default() -> Self {
        LatencySink {
            hist: Mutex::new(new_histogram()),
        }
    }
}

impl LatencySink {
    /// Records a batch of latencies (ns).
    pub fn record(&self, samples: &[u64]) {
        let mut h = self.hist.lock();
        for &s in samples {
            h.saturating_record(s.max(1));
        }
    }

    /// Adds everything recorded since the last call into `into`, and clears.
    pub fn drain_into(&self, into: &mut Histogram<u64>) {
        let mut h = self.hist.lock();
        into.add(&*h).expect("histograms share bounds");
        h.reset();
    }
}

/// Latency percentiles, in µs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 75th percentile.
    pub p75: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of a histogram of ns values; `None` if it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Percentiles {
            count: h.len(),
            min: us(h.min()),
            p50: us(h.value_at_quantile(0.50)),
            p75: us(h.value_at_quantile(0.75)),
            p95: us(h.value_at_quantile(0.95)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        })
    }
}

/// Formats µs with a readable unit (`850 µs`, `2.10 ms`, `1.50 s`).
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

/// Formats an integer with thousands separators.
pub fn fmt_n(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Produces one progress line per interval and accumulates the run's latency histogram.
pub struct Reporter {
    last: [u64; 3],
    last_at: Instant,
    started: Instant,
    interval: Histogram<u64>,
    batch: Histogram<u64>,
    /// Every latency sample of the run.
    pub total: Histogram<u64>,
}

impl Reporter {
    /// A reporter whose clock starts now.
    pub fn new(started: Instant) -> Reporter {
        Reporter {
            last: [0; 3],
            last_at: started,
            started,
            interval: new_histogram(),
            batch: new_histogram(),
            total: new_histogram(),
        }
    }

    /// Collects the sinks and returns the progress line for the time since the last tick.
    pub fn tick(&mut self, counters: &Counters, sinks: &[std::sync::Arc<LatencySink>]) -> String {
        self.collect(sinks);
        let now = Instant::now();
        let secs = now.duration_since(self.last_at).as_secs_f64().max(1e-9);
        let cur = counters.snapshot();
        let rate = |i: usize| ((cur[i] - self.last[i]) as f64 / secs).round() as u64;
        let mut line = format!(
            "{:>6.1}s  published {:>9}/s  confirmed {:>9}/s  consumed {:>9}/s",
            now.duration_since(self.started).as_secs_f64(),
            fmt_n(rate(0)),
            fmt_n(rate(1)),
            fmt_n(rate(2)),
        );
        match Percentiles::of(&self.interval) {
            Some(p) => {
                let _ = write!(
                    line,
                    "  latency p50 {} p99 {}",
                    fmt_us(p.p50),
                    fmt_us(p.p99)
                );
            }
            None => line.push_str("  latency -"),
        }
        self.interval.reset();
        self.last = cur;
        self.last_at = now;
        line
    }

    /// Folds the sinks' samples into the interval and total histograms.
    pub fn collect(&mut self, sinks: &[std::sync::Arc<LatencySink>]) {
        self.batch.reset();
        for s in sinks {
            s.drain_into(&mut self.batch);
        }
        if !self.batch.is_empty() {
            self.interval.add(&self.batch).expect("same bounds");
            self.total.add(&self.batch).expect("same bounds");
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `throughput` or `latency`.
    pub mode: &'static str,
    /// Producers.
    pub producers: usize,
    /// Consumers.
    pub consumers: usize,
    /// Message size.
    pub size: usize,
    /// Confirm window, if confirms were on.
    pub confirm: Option<usize>,
    /// Persistent messages / durable queue.
    pub persistent: bool,
    /// Consumers used no-ack.
    pub autoack: bool,
    /// Per-consumer prefetch (0 = unlimited).
    pub prefetch: u16,
    /// Rate limit per producer.
    pub rate: Option<f64>,
    /// Seconds producers were publishing.
    pub publish_secs: f64,
    /// Seconds from start to the last delivery.
    pub consume_secs: f64,
    /// Messages published.
    pub published: u64,
    /// Messages confirmed (ack).
    pub confirmed: u64,
    /// Messages nacked.
    pub nacked: u64,
    /// Messages consumed (duplicates included).
    pub consumed: u64,
    /// Messages consumed more than once.
    pub duplicates: u64,
    /// Published (and not nacked) but never consumed; `None` when not checked.
    pub lost: Option<u64>,
    /// Messages with a stamp from another run.
    pub foreign: u64,
    /// basic.return frames.
    pub returned: u64,
    /// connection.blocked notifications.
    pub blocked: u64,
    /// End-to-end latency.
    pub latency: Option<Percentiles>,
    /// The drain after publishing gave up before every message arrived.
    pub drain_timed_out: bool,
    /// The run was interrupted (Ctrl-C).
    pub interrupted: bool,
    /// Connection or protocol errors.
    pub errors: Vec<String>,
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

impl Report {
    /// Messages published per second while publishing.
    pub fn publish_rate(&self) -> f64 {
        rate(self.published, self.publish_secs)
    }
    /// Confirms per second while publishing.
    pub fn confirm_rate(&self) -> f64 {
        rate(self.confirmed, self.publish_secs)
    }
    /// Messages consumed per second, up to the last delivery.
    pub fn consume_rate(&self) -> f64 {
        rate(self.consumed, self.consume_secs)
    }

    /// The human-readable summary.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "summary ({}): {} producer(s), {} consumer(s), {} B, {}, {}, {}, {}",
            self.mode,
            self.producers,
            self.consumers,
            self.size,
            if self.persistent {
                "persistent"
            } else {
                "transient"
            },
            match self.confirm {
                Some(w) => format!("confirms (window {w})"),
                None => "no confirms".into(),
            },
            if self.autoack {
                "autoack".to_owned()
            } else if self.prefetch == 0 {
                "manual ack, prefetch unlimited".to_owned()
            } else {
                format!("manual ack, prefetch {}", self.prefetch)
            },
            match self.rate {
                Some(r) => format!("rate {r} msg/s per producer"),
                None => "unlimited rate".into(),
            },
        );
        let _ = writeln!(
            s,
            "  published  {:>14} msgs in {:>7.2} s = {:>10} msg/s",
            fmt_n(self.published),
            self.publish_secs,
            fmt_n(self.publish_rate().round() as u64)
        );
        if self.confirm.is_some() {
            let _ = writeln!(
                s,
                "  confirmed  {:>14} msgs                = {:>10} msg/s   (nacked {})",
                fmt_n(self.confirmed),
                fmt_n(self.confirm_rate().round() as u64),
                fmt_n(self.nacked)
            );
        }
        let _ = writeln!(
            s,
            "  consumed   {:>14} msgs in {:>7.2} s = {:>10} msg/s",
            fmt_n(self.consumed),
            self.consume_secs,
            fmt_n(self.consume_rate().round() as u64)
        );
        match &self.latency {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "  latency    min {}  p50 {}  p75 {}  p95 {}  p99 {}  p99.9 {}  max {}",
                    fmt_us(p.min),
                    fmt_us(p.p50),
                    fmt_us(p.p75),
                    fmt_us(p.p95),
                    fmt_us(p.p99),
                    fmt_us(p.p999),
                    fmt_us(p.max)
                );
            }
            None => s.push_str("  latency    - (no messages consumed)\n"),
        }
        match self.lost {
            Some(lost) => {
                let _ = writeln!(
                    s,
                    "  check      lost {}, duplicates {}{}{}",
                    fmt_n(lost),
                    fmt_n(self.duplicates),
                    if self.foreign > 0 {
                        format!(", from other runs {}", fmt_n(self.foreign))
                    } else {
                        String::new()
                    },
                    if self.drain_timed_out {
                        " (drain timed out: unconsumed messages count as lost)"
                    } else {
                        ""
                    }
                );
            }
            None => s.push_str("  check      not done (needs producers and consumers)\n"),
        }
        if self.returned > 0 || self.blocked > 0 {
            let _ = writeln!(
                s,
                "  broker     returned {}, connection.blocked {}",
                self.returned, self.blocked
            );
        }
        if self.interrupted {
            s.push_str("  (interrupted)\n");
        }
        for e in &self.errors {
            let _ = writeln!(s, "  error      {e}");
        }
        s
    }

    /// One JSON object on one line.
    pub fn json(&self) -> String {
        let mut j = Json::default();
        j.str("mode", self.mode);
        j.num("producers", self.producers as f64);
        j.num("consumers", self.consumers as f64);
        j.num("size", self.size as f64);
        j.opt("confirm_window", self.confirm.map(|w| w as f64));
        j.bool("persistent", self.persistent);
        j.bool("autoack", self.autoack);
        j.num("prefetch", f64::from(self.prefetch));
        j.opt("rate", self.rate);
        j.num("publish_secs", round3(self.publish_secs));
        j.num("consume_secs", round3(self.consume_secs));
        j.num("published", self.published as f64);
        j.num("confirmed", self.confirmed as f64);
        j.num("nacked", self.nacked as f64);
        j.num("consumed", self.consumed as f64);
        j.num("duplicates", self.duplicates as f64);
        j.opt("lost", self.lost.map(|l| l as f64));
        j.num("foreign", self.foreign as f64);
        j.num("returned", self.returned as f64);
        j.num("blocked", self.blocked as f64);
        j.num("publish_rate", self.publish_rate().round());
        j.num("confirm_rate", self.confirm_rate().round());
        j.num("consume_rate", self.consume_rate().round());
        let p = self.latency;
        let pick = |f: fn(&Percentiles) -> f64| p.as_ref().map(|p| round3(f(p)));
        j.opt("latency_samples", p.map(|p| p.count as f64));
        j.opt("latency_min_us", pick(|p| p.min));
        j.opt("latency_p50_us", pick(|p| p.p50));
        j.opt("latency_p75_us", pick(|p| p.p75));
        j.opt("latency_p95_us", pick(|p| p.p95));
        j.opt("latency_p99_us", pick(|p| p.p99));
        j.opt("latency_p999_us", pick(|p| p.p999));
        j.opt("latency_max_us", pick(|p| p.max));
        j.bool("drain_timed_out", self.drain_timed_out);
        j.bool("interrupted", self.interrupted);
        j.strs("errors", &self.errors);
        j.finish()
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A tiny JSON object writer (flat: numbers, booleans, strings, string arrays).
#[derive(Default)]
struct Json(String);

impl Json {
    fn key(&mut self, k: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        push_json_str(&mut self.0, k);
        self.0.push(':');
    }
    fn num(&mut self, k: &str, v: f64) {
        self.key(k);
        if v.is_finite() {
            let _ = write!(self.0, "{v}");
        } else {
            self.0.push_str("null");
        }
    }
    fn opt(&mut self, k: &str, v: Option<f64>) {
        match v {
            Some(v) => self.num(k, v),
            None => {
                self.key(k);
                self.0.push_str("null");
            }
        }
    }
    fn bool(&mut self, k: &str, v: bool) {
        self.key(k);
        self.0.push_str(if v { "true" } else { "false" });
    }
    fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        push_json_str(&mut self.0, v);
    }
    fn strs(&mut self, k: &str, v: &[String]) {
        self.key(k);
        self.0.push('[');
        for (i, s) in v.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            push_json_str(&mut self.0, s);
        }
        self.0.push(']');
    }
    fn finish(mut self) -> String {
        if self.0.is_empty() {
            self.0.push('{');
        }
        self.0.push('}');
        self.0
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_json() {
        assert_eq!(fmt_n(0), "0");
        assert_eq!(fmt_n(1234567), "1,234,567");
        assert_eq!(fmt_us(850.0), "850 µs");
        assert_eq!(fmt_us(2100.0), "2.10 ms");
        let r = Report {
            mode: "throughput",
            published: 10,
            lost: Some(0),
            errors: vec!["a \"quoted\"\nline".into()],
            ..Report::default()
        };
        let j = r.json();
        assert!(j.starts_with("{\"mode\":\"throughput\""), "{j}");
        assert!(j.contains("\"published\":10,"), "{j}");
        assert!(j.contains("\"lost\":0,"), "{j}");
        assert!(j.contains("\"latency_p50_us\":null"), "{j}");
        assert!(
            j.ends_with("\"errors\":[\"a \\\"quoted\\\"\\nline\"]}"),
            "{j}"
        );
    }
}
