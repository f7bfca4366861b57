//! Resource alarms: the memory high watermark and the free-disk low watermark.
//!
//! One monitor task ([`ResourceAlarms::run`]) samples the broker's resident memory
//! (`/proc/self/statm`) and the free space of the data directory's file system
//! (`statvfs`) every `resources.check_interval_ms`, and raises or clears two alarms, as
//! RabbitMQ's `vm_memory_monitor` and `rabbit_disk_monitor` do. Connections subscribe to the
//! alarm state ([`ResourceAlarms::subscribe`]) and block publishers while an alarm is set
//! (`connection.blocked`, see `connection/mod.rs`). The current memory figure is also read by
//! queues to decide when to page message bodies out ([`ResourceAlarms::memory_pressure`]).
//!
//! The watermarks can be changed at run time ([`ResourceAlarms::set_memory_high_watermark`],
//! [`ResourceAlarms::set_disk_free_limit`]), like `rabbitmqctl set_vm_memory_high_watermark`;
//! a change is re-evaluated at once.
//!
//! May call: the file system (`/proc`, `statvfs`). Nothing else.

use crate::config::ResourcesConfig;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Which resource alarms are set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmState {
    /// Broker memory is above the high watermark.
    pub memory: bool,
    /// Free disk space is below the limit.
    pub disk: bool,
}

impl AlarmState {
    /// True if publishers must be blocked.
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// The `connection.blocked` reason, as RabbitMQ 3.10 words it (`rabbit_reader`).
    pub fn reason(self) -> &'static str {
        match (self.disk, self.memory) {
            (true, true) => "low on disk & memory",
            (true, false) => "low on disk",
            _ => "low on memory",
        }
    }
}

/// A memory high watermark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Watermark {
    /// A fraction of the machine's total RAM (RabbitMQ's `vm_memory_high_watermark.relative`).
    Relative(f64),
    /// A number of bytes (`vm_memory_high_watermark.absolute`).
    Absolute(u64),
}

impl Watermark {
    /// The watermark configured in `[resources]`.
    pub fn from_config(c: &ResourcesConfig) -> Self {
        if c.vm_memory_high_watermark_absolute > 0 {
            Watermark::Absolute(c.vm_memory_high_watermark_absolute)
        } else {
            Watermark::Relative(c.vm_memory_high_watermark)
        }
    }

    /// The limit in bytes on a machine with `total` bytes of RAM.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            Watermark::Relative(f) => (total as f64 * f) as u64,
            Watermark::Absolute(b) => b,
        }
    }
}

/// The broker's resource alarms (shared as `Arc`, see the module docs).
#[derive(Debug)]
pub struct ResourceAlarms {
    state: watch::Sender<AlarmState>,
    /// Total RAM of the machine (or 0 if unknown).
    total_memory: u64,
    /// Memory high watermark, in bytes.
    memory_limit: AtomicU64,
    /// `paging ratio × 1e6` (kept as an integer for an atomic).
    paging_ratio_ppm: AtomicU64,
    /// Free-disk limit, in bytes.
    disk_limit: AtomicU64,
    /// Broker RSS at the last sample.
    memory_used: AtomicU64,
    /// Free disk bytes at the last sample (`u64::MAX` before the first).
    disk_free: AtomicU64,
    /// Wakes the monitor after a watermark change.
    recheck: Notify,
    interval: Duration,
}

impl ResourceAlarms {
    /// Alarms with the configured watermarks (nothing is sampled until [`run`](Self::run)).
    pub fn new(c: &ResourcesConfig) -> Self {
        let total_memory = total_memory().unwrap_or(0);
        let limit = match Watermark::from_config(c) {
            // Unknown RAM size: a relative watermark cannot be computed, so it never fires.
            Watermark::Relative(_) if total_memory == 0 => u64::MAX,
            w => w.bytes(total_memory),
        };
        ResourceAlarms {
            state: watch::Sender::new(AlarmState::default()),
            total_memory,
            memory_limit: AtomicU64::new(limit),
            paging_ratio_ppm: AtomicU64::new(
                (c.vm_memory_high_watermark_paging_ratio * 1e6) as u64,
            ),
            disk_limit: AtomicU64::new(c.disk_free_limit),
            memory_used: AtomicU64::new(0),
            disk_free: AtomicU64::new(u64::MAX),
            recheck: Notify::new(),
            interval: Duration::from_millis(c.check_interval_ms.max(1)),
        }
    }

    /// The alarm state now; `changed()` on the receiver wakes on every change.
    pub fn subscribe(&self) -> watch::Receiver<AlarmState> {
        self.state.subscribe()
    }

    /// The alarm state now.
    pub fn state(&self) -> AlarmState {
        *self.state.borrow()
    }

    /// Sets the memory high watermark (like `rabbitmqctl set_vm_memory_high_watermark`) and
    /// re-evaluates the alarms at once.
    pub fn set_memory_high_watermark(&self, w: Watermark) {
        let limit = w.bytes(self.total_memory);
        info!(?w, limit_bytes = limit, "memory high watermark set");
        self.memory_limit.store(limit, Relaxed);
        self.recheck.notify_one();
    }

    /// Sets the free-disk limit in bytes (like `rabbitmqctl set_disk_free_limit`) and
    /// re-evaluates the alarms at once.
    pub fn set_disk_free_limit(&self, bytes: u64) {
        info!(limit_bytes = bytes, "disk free limit set");
        self.disk_limit.store(bytes, Relaxed);
        self.recheck.notify_one();
    }

    /// Memory high watermark in bytes.
    pub fn memory_limit(&self) -> u64 {
        self.memory_limit.load(Relaxed)
    }

    /// Broker RSS at the last sample, in bytes.
    pub fn memory_used(&self) -> u64 {
        self.memory_used.load(Relaxed)
    }

    /// True when memory use is above the paging watermark (`high watermark × paging ratio`):
    /// queues then keep message bodies on disk instead of in RAM.
    pub fn memory_pressure(&self) -> bool {
        let ratio = self.paging_ratio_ppm.load(Relaxed) as f64 / 1e6;
        let paging = (self.memory_limit() as f64 * ratio) as u64;
        self.memory_used() > paging
    }

    /// Samples both resources once and updates the alarms.
    pub fn check(&self, data_dir: &Path) {
        if let Some(rss) = resident_memory() {
            self.memory_used.store(rss, Relaxed);
        }
        let free = disk_free(data_dir);
        if let Some(free) = free {
            self.disk_free.store(free, Relaxed);
        }
        let (used, limit) = (self.memory_used(), self.memory_limit());
        let (disk_free, disk_limit) = (self.disk_free.load(Relaxed), self.disk_limit.load(Relaxed));
        let new = AlarmState {
            memory: used > limit,
            disk: free.is_some() && disk_free < disk_limit,
        };
        let old = self.state();
        if new == old {
            return;
        }
        if new.memory != old.memory {
            if new.memory {
                warn!(
                    used_bytes = used,
                    limit_bytes = limit,
                    "memory resource limit alarm set: publishers blocked"
                );
            } else {
                info!(
                    used_bytes = used,
                    limit_bytes = limit,
                    "memory resource limit alarm cleared"
                );
            }
        }
        if new.disk != old.disk {
            if new.disk {
                warn!(
                    free_bytes = disk_free,
                    limit_bytes = disk_limit,
                    "disk resource limit alarm set: publishers blocked"
                );
            } else {
                info!(
                    free_bytes = disk_free,
                    limit_bytes = disk_limit,
                    "disk resource limit alarm cleared"
                );
            }
        }
        self.state.send_replace(new);
    }

    /// The monitor loop: samples every interval (or at once after a watermark change) until
    /// `shutdown`.
    pub async fn run(self: std::sync::Arc<Self>, data_dir: PathBuf, shutdown: CancellationToken) {
        loop {
            self.check(&data_dir);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.recheck.notified() => {}
            }
        }
    }
}

/// Resident set size of this process, from `/proc/self/statm` (pages × page size).
fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// Total RAM, from `/proc/meminfo` (`MemTotal`), capped by a cgroup v2 `memory.max` if lower.
fn total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let total = kb * 1024;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |c| c.min(total)))
}

/// Bytes available to unprivileged users on the file system holding `dir`.
fn disk_free(dir: &Path) -> Option<u64> {
    match rustix::fs::statvfs(dir) {
        Ok(s) => Some(s.f_bavail.saturating_mul(s.f_frsize)),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "statvfs failed; disk alarm not evaluated");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ResourcesConfig {
        ResourcesConfig::default()
    }

    #[test]
    fn reasons_match_rabbitmq() {
        let s = |memory, disk| AlarmState { memory, disk };
        assert_eq!(s(true, false).reason(), "low on memory");
        assert_eq!(s(false, true).reason(), "low on disk");
        assert_eq!(s(true, true).reason(), "low on disk & memory");
        assert!(!s(false, false).any());
    }

    #[test]
    fn samples_and_raises_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let alarms = ResourceAlarms::new(&config());
        alarms.check(dir.path());
        assert!(alarms.memory_used() > 0);
        assert!(!alarms.state().any());
        alarms.set_memory_high_watermark(Watermark::Absolute(1));
        alarms.check(dir.path());
        assert_eq!(
            alarms.state(),
            AlarmState {
                memory: true,
                disk: false
            }
        );
        assert!(alarms.memory_pressure());
        alarms.set_disk_free_limit(u64::MAX);
        alarms.check(dir.path());
        assert!(alarms.state().disk);
        alarms.set_memory_high_watermark(Watermark::Relative(1e6));
        alarms.set_disk_free_limit(0);
        alarms.check(dir.path());
        assert!(!alarms.state().any());
        assert!(!alarms.memory_pressure());
    }

    #[test]
    fn watermark_from_config() {
        let mut c = config();
        assert_eq!(Watermark::from_config(&c), Watermark::Relative(0.4));
        assert_eq!(Watermark::Relative(0.5).bytes(1000), 500);
        c.vm_memory_high_watermark_absolute = 123;
        assert_eq!(Watermark::from_config(&c), Watermark::Absolute(123));
    }
}
