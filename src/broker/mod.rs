//! The broker: the registry of vhosts, id allocation, and the direct reply-to
//! registry. Shared by every connection as `Arc<Broker>`.

pub mod definitions;
pub mod delayed;
pub mod route_cache;
pub mod sender_selected;
pub mod vhost;

use crate::config::Config;
use crate::queue::{ChanKey, ConnHandle};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
pub use vhost::{Destination, Exchange, ExchangeDecl, QueueDecl, VHost};

/// Allocator of broker-unique ids (connections, channels, queues).
#[derive(Debug, Default)]
pub struct Ids(AtomicU64);

impl Ids {
    /// The next id (never 0).
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// What durable vhosts need: the message store and where definitions go.
#[derive(Debug)]
pub struct Storage {
    /// The message store.
    pub store: crate::store::StoreHandle,
    /// The data directory.
    pub data_dir: std::path::PathBuf,
    /// Serialises definitions writes.
    pub definitions_lock: Mutex<()>,
    /// Messages per queue whose bodies stay in memory (`storage.queue_memory_window`).
    pub queue_memory_window: usize,
    /// Messages per queue whose transient bodies stay in memory
    /// (`storage.transient_memory_window`; 0 = paged only under memory pressure).
    pub transient_memory_window: usize,
    /// The broker's resource alarms (queues page transient bodies out under memory pressure).
    pub alarms: Arc<crate::alarm::ResourceAlarms>,
}

/// The pseudo-queue name for direct reply-to.
pub const REPLY_TO_QUEUE: &str = "amq.rabbitmq.reply-to";

/// A consumer of the direct reply-to pseudo-queue.
#[derive(Debug, Clone)]
pub struct ReplyConsumer {
    /// Its connection.
    pub conn: ConnHandle,
    /// Its channel instance.
    pub chan_key: ChanKey,
    /// Its consumer tag.
    pub consumer_tag: Arc<str>,
}

/// Everything shared by all connections.
#[derive(Debug)]
pub struct Broker {
    /// The configuration the broker was started with.
    pub config: Arc<Config>,
    /// Id allocator.
    pub ids: Arc<Ids>,
    /// Memory and disk alarms (sampled by the monitor task the server starts).
    pub alarms: Arc<crate::alarm::ResourceAlarms>,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    reply_to: Mutex<HashMap<String, ReplyConsumer>>,
}

impl Broker {
    /// A broker with the configured vhosts.
    pub fn new(config: Arc<Config>, storage: Option<Arc<Storage>>) -> Arc<Broker> {
        let ids = Arc::new(Ids::default());
        let vhosts = config
            .vhosts
            .names
            .iter()
            .map(|n| (n.clone(), VHost::new(n, ids.clone(), storage.clone())))
            .collect();
        let alarms = storage.as_ref().map_or_else(
            || Arc::new(crate::alarm::ResourceAlarms::new(&config.resources)),
            |s| s.alarms.clone(),
        );
        Arc::new(Broker {
            config,
            ids,
            alarms,
            vhosts: RwLock::new(vhosts),
            reply_to: Mutex::new(HashMap::new()),
        })
    }

    /// Looks up a vhost.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// Every vhost.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.read().values().cloned().collect()
    }

    /// Registers a direct reply-to consumer and returns the reply-to name suffix.
    pub fn register_reply_consumer(&self, consumer: ReplyConsumer) -> String {
        use rand::Rng;
        let nonce: u64 = rand::thread_rng().gen();
        let key = format!("g{:x}{:016x}", consumer.chan_key, nonce);
        self.reply_to.lock().insert(key.clone(), consumer);
        key
    }

    /// Removes the direct reply-to consumer of a channel.
    pub fn unregister_reply_consumer(&self, key: &str) {
        self.reply_to.lock().remove(key);
    }

    /// Finds the consumer a `amq.rabbitmq.reply-to.<key>` routing key names.
    pub fn reply_consumer(&self, key: &str) -> Option<ReplyConsumer> {
        self.reply_to.lock().get(key).cloned()
    }
}
