//! A connection's memo of where publishes route.
//!
//! Most publishers send to the same few (exchange, routing key) pairs, and
//! for a message without headers to an exchange without deduplication or
//! delays, the route depends on nothing else. Remembering it saves the
//! per-message binding match, the walk over exchange-to-exchange bindings and
//! the lookups in the vhost's queue registry (a shared lock). The memo is
//! dropped whenever [`VHost::routes_version`] moves, which every change to
//! queues, exchanges or bindings does.

use super::{Exchange, VHost};
use crate::queue::QueueHandle;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// Routes a connection remembers at most (beyond that it routes each time).
const ROUTE_CACHE_MAX: usize = 1024;

/// The queues one route reaches, shared between the memo and the publish.
type Targets = Arc<[QueueHandle]>;

/// Remembered routes of one connection, valid for one routes version.
#[derive(Debug, Default)]
pub struct RouteCache {
    version: u64,
    /// The route computed last, checked before hashing.
    last: Option<(Arc<str>, Box<str>, Targets)>,
    by_exchange: FxHashMap<Arc<str>, FxHashMap<Box<str>, Targets>>,
    entries: usize,
}

impl RouteCache {
    /// Whether a publish to `ex` whose message has `has_headers` routes by
    /// (exchange, routing key) alone, so its route may come from the cache.
    pub fn applies(ex: &Exchange, has_headers: bool) -> bool {
        !has_headers && ex.dedup.is_none() && ex.delayed.is_none()
    }

    /// The queues a headerless publish to `ex` with `routing_key` reaches
    /// (alternate exchanges and exchange-to-exchange bindings included).
    pub fn route(&mut self, vhost: &VHost, ex: &Exchange, routing_key: &str) -> Targets {
        // Read before routing: a change racing with the walk below moves the
        // version past this one, so its result is never reused.
        let version = vhost.routes_version();
        if version != self.version {
            self.version = version;
            self.last = None;
            self.by_exchange.clear();
            self.entries = 0;
        }
        if let Some((e, k, targets)) = &self.last {
            if **e == *ex.name && **k == *routing_key {
                return targets.clone();
            }
        }
        if let Some(targets) = self
            .by_exchange
            .get(&*ex.name)
            .and_then(|keys| keys.get(routing_key))
        {
            return targets.clone();
        }
        let mut out = Vec::new();
        vhost.route_keys(ex, &[routing_key], None, &mut out);
        let targets: Targets = out.into();
        if self.entries < ROUTE_CACHE_MAX {
            self.entries += 1;
            self.by_exchange
                .entry(ex.name.clone())
                .or_default()
                .insert(routing_key.into(), targets.clone());
        }
        self.last = Some((ex.name.clone(), routing_key.into(), targets.clone()));
        targets
    }
}
