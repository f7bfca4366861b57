//! A virtual host: its exchanges, queues and bindings, and the metadata
//! operations on them (declare, bind, delete) with RabbitMQ's checks and texts.
//!
//! The maps are read-mostly: a publish takes read locks for a few lookups;
//! declares, binds and deletes take write locks. No lock is held across an
//! `.await` (the queue-actor round trips happen outside the critical sections).

use super::definitions::{self, BindingDef, ExchangeDef, QueueDef, VhostDefinitions};
use super::delayed::{self, DelayedHandle, DELAYED_TYPE};
use super::{sender_selected, Ids, Storage};
use crate::exchange::{Bindings, ExchangeKind};
use crate::message::Message;
use crate::protocol::{AmqpError, AmqpResult};
use crate::queue::actor::QueueStore;
use crate::queue::args::{ExchangeArgs, QueueArgs};
use crate::queue::dedup::{self, DedupCache, Verdict};
use crate::queue::{actor, ConfirmTag, ConnHandle, QueueCmd, QueueHandle, QueueInfo};
use crate::store::{RecoveredQueue, StoredMessage};
use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A queue, by name.
    Queue(Arc<str>),
    /// An exchange, by name (exchange-to-exchange binding).
    Exchange(Arc<str>),
}

/// An exchange and its bindings.
#[derive(Debug)]
pub struct Exchange {
    /// Name ("" is the default exchange).
    pub name: Arc<str>,
    /// How its bindings route (for `x-delayed-message`, its `x-delayed-type`).
    pub kind: ExchangeKind,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Clients may not publish to it directly.
    pub internal: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
    /// Bindings with this exchange as the source.
    pub bindings: RwLock<Bindings<Destination>>,
    /// Type `x-delayed-message`: the scheduler holding its delayed messages.
    pub delayed: Option<DelayedHandle>,
    /// `x-message-deduplication`: the keys seen (a lock of its own, taken only
    /// by publishes to this exchange).
    pub dedup: Option<Mutex<DedupCache>>,
}

impl Exchange {
    /// The type name as declared (`x-delayed-message` for delayed exchanges).
    pub fn type_name(&self) -> &'static str {
        match self.delayed {
            Some(_) => DELAYED_TYPE,
            None => self.kind.as_str(),
        }
    }
}

/// What [`VHost::publish`] did with a message.
#[derive(Debug)]
pub struct Published {
    /// The message as enqueued (without its `BCC` header).
    pub msg: Arc<Message>,
    /// A delayed exchange holds it and will send the publisher's confirm itself.
    pub held: bool,
}

/// Parameters of `exchange.declare`.
#[derive(Debug, Clone)]
pub struct ExchangeDecl {
    /// Name.
    pub name: String,
    /// Type name as sent.
    pub kind: String,
    /// Durable flag.
    pub durable: bool,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Internal flag.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// Parameters of `queue.declare`.
#[derive(Debug, Clone)]
pub struct QueueDecl {
    /// Name ("" = server-named).
    pub name: String,
    /// Durable flag.
    pub durable: bool,
    /// Exclusive flag.
    pub exclusive: bool,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// A virtual host.
#[derive(Debug)]
pub struct VHost {
    /// Name.
    pub name: Arc<str>,
    exchanges: RwLock<HashMap<Arc<str>, Arc<Exchange>>>,
    /// Bumped after every change to `exchanges`, so connections can cache lookups.
    exchanges_version: AtomicU64,
    /// Bumped after every change that can alter where a publish routes (queues,
    /// exchanges, bindings), so connections can cache routes ([`super::route_cache::RouteCache`]).
    routes_version: AtomicU64,
    queues: RwLock<HashMap<Arc<str>, QueueHandle>>,
    ids: Arc<Ids>,
    storage: Option<Arc<Storage>>,
    me: Weak<VHost>,
}

const DEFAULT_EXCHANGE_DENIED: &str = "operation not permitted on the default exchange";

impl VHost {
    /// Creates a vhost with the default and `amq.*` exchanges.
    pub fn new(name: &str, ids: Arc<Ids>, storage: Option<Arc<Storage>>) -> Arc<VHost> {
        let vhost = Arc::new_cyclic(|me| VHost {
            name: name.into(),
            exchanges: RwLock::new(HashMap::new()),
            exchanges_version: AtomicU64::new(0),
            routes_version: AtomicU64::new(0),
            queues: RwLock::new(HashMap::new()),
            ids,
            storage,
            me: me.clone(),
        });
        {
            let mut ex = vhost.exchanges.write();
            for (n, k) in [
                ("", ExchangeKind::Direct),
                ("amq.direct", ExchangeKind::Direct),
                ("amq.fanout", ExchangeKind::Fanout),
                ("amq.topic", ExchangeKind::Topic),
                ("amq.headers", ExchangeKind::Headers),
                ("amq.match", ExchangeKind::Headers),
            ] {
                ex.insert(
                    n.into(),
                    Arc::new(new_exchange(
                        n,
                        k,
                        true,
                        false,
                        false,
                        FieldTable::default(),
                    )),
                );
            }
        }
        vhost
    }

    /// Looks up an exchange.
    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.read().get(name).cloned()
    }

    /// Changes whenever an exchange is added or removed (see [`ExchangeCache`]).
    pub fn exchanges_version(&self) -> u64 {
        self.exchanges_version.load(Ordering::Acquire)
    }

    fn exchanges_changed(&self) {
        self.exchanges_version.fetch_add(1, Ordering::Release);
        self.routes_changed();
    }

    /// Changes whenever routing may have changed (see [`super::route_cache::RouteCache`]).
    pub fn routes_version(&self) -> u64 {
        self.routes_version.load(Ordering::Acquire)
    }

    /// Called *after* a change is visible, so a route computed from the old
    /// topology is never remembered under the new version.
    fn routes_changed(&self) {
        self.routes_version.fetch_add(1, Ordering::Release);
    }

    /// Looks up a queue.
    pub fn queue(&self, name: &str) -> Option<QueueHandle> {
        self.queues.read().get(name).cloned()
    }

    /// Every exchange (for the management view and definitions).
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    /// Every queue.
    pub fn queues(&self) -> Vec<QueueHandle> {
        self.queues.read().values().cloned().collect()
    }

    /// `exchange.declare` (non-passive).
    pub fn declare_exchange(&self, d: &ExchangeDecl) -> AmqpResult<()> {
        if d.name.is_empty() {
            return Err(AmqpError::access_refused(DEFAULT_EXCHANGE_DENIED));
        }
        let builtin = ExchangeKind::parse(&d.kind);
        if builtin.is_none() && d.kind != DELAYED_TYPE {
            return Err(AmqpError::command_invalid(format_args!(
                "unknown exchange type '{}'",
                d.kind
            )));
        }
        if let Some(existing) = self.exchange(&d.name) {
            return self.check_exchange_equivalent(&existing, d);
        }
        if d.name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format_args!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        if let Some(alt) = d.arguments.inner().get("alternate-exchange") {
            if !matches!(alt, AMQPValue::LongString(_) | AMQPValue::ShortString(_)) {
                return Err(AmqpError::precondition(format_args!(
                    "invalid arg 'alternate-exchange' for exchange '{}' in vhost '{}'",
                    d.name, self.name
                )));
            }
        }
        // The exchange type's own validation (the delayed plugin's `validate/1`).
        let kind = match builtin {
            Some(kind) => kind,
            None => delayed::delayed_kind(&d.arguments)?,
        };
        let ext = ExchangeArgs::parse(&d.arguments, &d.name, &self.name)?;
        let mut exchanges = self.exchanges.write();
        // Another connection may have declared it since the read above.
        if let Some(existing) = exchanges.get(d.name.as_str()).cloned() {
            drop(exchanges);
            return self.check_exchange_equivalent(&existing, d);
        }
        let ex = self.build_exchange(d, kind, &ext, None);
        let durable = ex.durable;
        exchanges.insert(ex.name.clone(), Arc::new(ex));
        drop(exchanges);
        self.exchanges_changed();
        if durable {
            self.persist();
        }
        Ok(())
    }

    /// A new exchange with its extensions: the scheduler of a delayed exchange
    /// (holding `recovered` messages until [`DelayedHandle::start`] when given)
    /// and the deduplication cache.
    fn build_exchange(
        &self,
        d: &ExchangeDecl,
        kind: ExchangeKind,
        ext: &ExchangeArgs,
        recovered: Option<Vec<StoredMessage>>,
    ) -> Exchange {
        let mut ex = new_exchange(
            &d.name,
            kind,
            d.durable,
            d.auto_delete,
            d.internal,
            d.arguments.clone(),
        );
        if d.kind == DELAYED_TYPE {
            let store = match (&self.storage, d.durable) {
                (Some(storage), true) => Some((
                    storage.store.clone(),
                    delayed::delayed_key(&self.name, &d.name),
                )),
                _ => None,
            };
            ex.delayed = Some(delayed::spawn(delayed::SchedulerSpec {
                id: self.ids.next(),
                exchange: ex.name.clone(),
                vhost: self.me.clone(),
                store,
                started: recovered.is_none(),
                recovered: recovered.unwrap_or_default(),
            }));
        }
        ex.dedup = ext.dedup.as_ref().map(|args| {
            Mutex::new(DedupCache::new(
                args,
                Some(dedup::DEFAULT_EXCHANGE_CACHE_SIZE),
            ))
        });
        ex
    }

    fn check_exchange_equivalent(&self, ex: &Exchange, d: &ExchangeDecl) -> AmqpResult<()> {
        let ineq =
            |arg: &str, received: &dyn std::fmt::Display, current: &dyn std::fmt::Display| {
                Err(AmqpError::inequivalent_arg(
                    arg, "exchange", &d.name, &self.name, received, current,
                ))
            };
        if ex.type_name() != d.kind {
            return ineq("type", &d.kind, &ex.type_name());
        }
        if ex.durable != d.durable {
            return ineq("durable", &d.durable, &ex.durable);
        }
        if ex.auto_delete != d.auto_delete {
            return ineq("auto_delete", &d.auto_delete, &ex.auto_delete);
        }
        if ex.internal != d.internal {
            return ineq("internal", &d.internal, &ex.internal);
        }
        // RabbitMQ compares only `alternate-exchange` for exchanges (other
        // arguments, `x-delayed-type` included, may differ on a redeclare).
        crate::queue::args::check_keys_equivalent(
            &ex.arguments,
            &d.arguments,
            &["alternate-exchange"],
            "exchange",
            &d.name,
            &self.name,
        )
    }

    /// `exchange.declare` with `passive`.
    pub fn exchange_exists(&self, name: &str) -> AmqpResult<()> {
        if name.is_empty() || self.exchanges.read().contains_key(name) {
            Ok(())
        } else {
            Err(AmqpError::no_exchange(name, &self.name))
        }
    }

    /// `exchange.delete`.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> AmqpResult<()> {
        if name.is_empty() {
            return Err(AmqpError::access_refused(DEFAULT_EXCHANGE_DENIED));
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format_args!(
                "deletion of system exchange '{}' in vhost '{}' not allowed",
                name, self.name
            )));
        }
        let Some(ex) = self.exchange(name) else {
            // RabbitMQ 3.10: deleting a missing exchange succeeds.
            return Ok(());
        };
        if if_unused && !ex.bindings.read().is_empty() {
            return Err(AmqpError::precondition(format_args!(
                "exchange '{}' in vhost '{}' in use",
                name, self.name
            )));
        }
        self.remove_exchange(name);
        Ok(())
    }

    /// Removes an exchange and every binding that leads to it.
    fn remove_exchange(&self, name: &str) {
        let Some(ex) = self.exchanges.write().remove(name) else {
            return;
        };
        self.exchanges_changed();
        if let Some(delayed) = &ex.delayed {
            delayed.delete();
        }
        self.remove_destination(&Destination::Exchange(name.into()));
        if ex.durable {
            self.persist();
        }
    }

    /// Removes every binding to `dest`, then auto-deletes sources left without bindings.
    fn remove_destination(&self, dest: &Destination) {
        let mut emptied = Vec::new();
        for ex in self.exchanges() {
            let mut b = ex.bindings.write();
            if b.unbind_all(dest) > 0 && ex.auto_delete && b.is_empty() {
                emptied.push(ex.name.clone());
            }
        }
        self.routes_changed();
        for name in emptied {
            self.remove_exchange(&name);
        }
    }

    /// `queue.declare`: returns the queue (created if needed).
    pub fn declare_queue(&self, d: &QueueDecl, conn_id: u64) -> AmqpResult<QueueHandle> {
        let name: String = if d.name.is_empty() {
            crate::channel::consume::generate_tag("amq.gen-")
        } else {
            d.name.clone()
        };
        if let Some(q) = self.queue(&name) {
            self.check_exclusive(&q, conn_id)?;
            self.check_queue_equivalent(&q, d)?;
            return Ok(q);
        }
        if d.name.is_empty() {
            QueueArgs::check_server_named(&d.arguments)?;
        }
        let args = QueueArgs::parse(
            &d.arguments,
            &name,
            &self.name,
            d.durable,
            d.exclusive,
            d.auto_delete,
        )?;
        if name.starts_with("amq.") && !d.name.is_empty() {
            return Err(AmqpError::access_refused(format_args!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                name
            )));
        }
        let mut queues = self.queues.write();
        if let Some(q) = queues.get(name.as_str()).cloned() {
            drop(queues);
            self.check_exclusive(&q, conn_id)?;
            self.check_queue_equivalent(&q, d)?;
            return Ok(q);
        }
        let info = QueueInfo {
            name: name.as_str().into(),
            vhost: self.name.clone(),
            durable: d.durable,
            exclusive_owner: d.exclusive.then_some(conn_id),
            auto_delete: d.auto_delete,
            arguments: d.arguments.clone(),
            args,
        };
        let handle = self.spawn_queue(info, None);
        queues.insert(handle.info.name.clone(), handle.clone());
        drop(queues);
        self.routes_changed();
        if is_stored(&handle) {
            self.persist();
        }
        Ok(handle)
    }

    /// Starts a queue actor; durable, non-exclusive queues get their store log (and what was
    /// recovered from it), every queue a page log for paging under memory pressure.
    fn spawn_queue(&self, info: QueueInfo, recovered: Option<RecoveredQueue>) -> QueueHandle {
        let store = self.storage.as_ref().map(|storage| QueueStore {
            handle: storage.store.clone(),
            key: queue_key(&self.name, &info.name),
            window: storage.queue_memory_window,
            transient_window: storage.transient_memory_window,
            durable: info.durable && info.exclusive_owner.is_none(),
            alarms: Some(storage.alarms.clone()),
        });
        let me = self.me.clone();
        actor::spawn(
            self.ids.next(),
            info,
            self.me.clone(),
            Box::new(move |q: &QueueHandle| {
                if let Some(vhost) = me.upgrade() {
                    vhost.unregister_queue(q);
                }
            }),
            store,
            recovered,
        )
    }

    /// A redeclare must match the existing queue: `exclusive` (405, RabbitMQ's
    /// "exclusive property value does not match" lock text), `durable` and
    /// `auto_delete` (406) and the arguments the queue's type takes.
    fn check_queue_equivalent(&self, q: &QueueHandle, d: &QueueDecl) -> AmqpResult<()> {
        let info = &q.info;
        let ineq = |arg: &str, received: bool, current: bool| {
            Err(AmqpError::inequivalent_arg(
                arg, "queue", &info.name, &self.name, received, current,
            ))
        };
        // RabbitMQ's order: exclusive access (strict), durable, auto_delete, arguments.
        if info.exclusive_owner.is_some() != d.exclusive {
            return Err(AmqpError::exclusive_locked(&info.name, &self.name));
        }
        if info.durable != d.durable {
            return ineq("durable", d.durable, info.durable);
        }
        if info.auto_delete != d.auto_delete {
            return ineq("auto_delete", d.auto_delete, info.auto_delete);
        }
        crate::queue::args::check_equivalent(
            &info.arguments,
            &d.arguments,
            info.args.queue_type,
            &info.name,
            &self.name,
        )
    }

    /// 405 if `q` is exclusive to another connection.
    pub fn check_exclusive(&self, q: &QueueHandle, conn_id: u64) -> AmqpResult<()> {
        match q.info.exclusive_owner {
            Some(owner) if owner != conn_id => {
                Err(AmqpError::exclusive_locked(&q.info.name, &self.name))
            }
            _ => Ok(()),
        }
    }

    /// Finds a queue usable by `conn_id` (404 if missing, 405 if exclusive elsewhere).
    pub fn queue_for(&self, name: &str, conn_id: u64) -> AmqpResult<QueueHandle> {
        let q = self
            .queue(name)
            .ok_or_else(|| AmqpError::no_queue(name, &self.name))?;
        self.check_exclusive(&q, conn_id)?;
        Ok(q)
    }

    /// `queue.delete`: asks the actor to stop, then unregisters it. A missing queue is not an error.
    pub async fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn_id: u64,
    ) -> AmqpResult<u32> {
        let Some(q) = self.queue(name) else {
            return Ok(0);
        };
        self.check_exclusive(&q, conn_id)?;
        let reply = q
            .ask(|reply| QueueCmd::Delete {
                if_unused,
                if_empty,
                reply,
            })
            .await;
        let count = match reply {
            Some(r) => r?,
            None => 0,
        };
        self.unregister_queue(&q);
        Ok(count)
    }

    /// Removes a (stopped) queue from the registry and its bindings.
    fn unregister_queue(&self, q: &QueueHandle) {
        {
            let mut queues = self.queues.write();
            match queues.get(&*q.info.name) {
                Some(current) if current.id == q.id => {
                    queues.remove(&*q.info.name);
                }
                _ => return,
            }
        }
        self.routes_changed();
        self.remove_destination(&Destination::Queue(q.info.name.clone()));
        if is_stored(q) {
            self.persist();
        }
    }

    /// Deletes every queue exclusively owned by `conn_id` (its connection closed).
    pub async fn delete_exclusive_queues(&self, conn_id: u64) {
        let owned: Vec<QueueHandle> = self
            .queues
            .read()
            .values()
            .filter(|q| q.info.exclusive_owner == Some(conn_id))
            .cloned()
            .collect();
        for q in owned {
            let _ = q
                .ask(|reply| QueueCmd::Delete {
                    if_unused: false,
                    if_empty: false,
                    reply,
                })
                .await;
            self.unregister_queue(&q);
        }
    }

    /// `queue.bind` / `exchange.bind`.
    pub fn bind(
        &self,
        source: &str,
        dest: Destination,
        routing_key: &str,
        args: &FieldTable,
    ) -> AmqpResult<()> {
        let ex = self.bindable_source(source)?;
        self.check_destination(&dest)?;
        Bindings::<Destination>::validate_args(ex.kind, args).map_err(AmqpError::precondition)?;
        let added = ex.bindings.write().bind(dest, routing_key, args);
        if added {
            self.routes_changed();
        }
        if added && ex.durable {
            self.persist();
        }
        Ok(())
    }

    /// `queue.unbind` / `exchange.unbind` (a missing binding is not an error).
    pub fn unbind(
        &self,
        source: &str,
        dest: Destination,
        routing_key: &str,
        args: &FieldTable,
    ) -> AmqpResult<()> {
        if source.is_empty() {
            return Err(AmqpError::access_refused(DEFAULT_EXCHANGE_DENIED));
        }
        // RabbitMQ 3.10: unbinding from or to something that no longer exists succeeds.
        let Some(ex) = self.exchange(source) else {
            return Ok(());
        };
        if self.check_destination(&dest).is_err() {
            return Ok(());
        }
        let (removed, emptied) = {
            let mut b = ex.bindings.write();
            let removed = b.unbind(&dest, routing_key, args);
            (removed, removed && ex.auto_delete && b.is_empty())
        };
        if removed {
            self.routes_changed();
        }
        if emptied {
            self.remove_exchange(source);
        } else if removed && ex.durable {
            self.persist();
        }
        Ok(())
    }

    fn bindable_source(&self, source: &str) -> AmqpResult<Arc<Exchange>> {
        if source.is_empty() {
            return Err(AmqpError::access_refused(DEFAULT_EXCHANGE_DENIED));
        }
        self.exchange(source)
            .ok_or_else(|| AmqpError::no_exchange(source, &self.name))
    }

    fn check_destination(&self, dest: &Destination) -> AmqpResult<()> {
        match dest {
            Destination::Queue(q) if !self.queues.read().contains_key(q) => {
                Err(AmqpError::no_queue(q, &self.name))
            }
            Destination::Exchange(e) if e.is_empty() => {
                Err(AmqpError::access_refused(DEFAULT_EXCHANGE_DENIED))
            }
            Destination::Exchange(e) if !self.exchanges.read().contains_key(e) => {
                Err(AmqpError::no_exchange(e, &self.name))
            }
            _ => Ok(()),
        }
    }

    /// The durable part of this vhost, as written to its definitions file.
    pub fn definitions(&self) -> VhostDefinitions {
        let exchanges: Vec<Arc<Exchange>> = self.exchanges();
        let queues = self.queues();
        let durable_queue =
            |name: &str| queues.iter().any(|q| &*q.info.name == name && is_stored(q));
        let durable_exchange = |name: &str| {
            exchanges
                .iter()
                .any(|e| &*e.name == name && e.durable && !e.name.is_empty())
        };
        let mut defs = VhostDefinitions {
            version: definitions::DEFINITIONS_VERSION,
            vhost: self.name.to_string(),
            ..Default::default()
        };
        for ex in &exchanges {
            if ex.durable && !ex.name.is_empty() && !ex.name.starts_with("amq.") {
                defs.exchanges.push(ExchangeDef {
                    name: ex.name.to_string(),
                    kind: ex.type_name().into(),
                    auto_delete: ex.auto_delete,
                    internal: ex.internal,
                    arguments: ex.arguments.clone(),
                });
            }
            if !ex.durable {
                continue;
            }
            for (dest, key, args) in ex.bindings.read().iter() {
                let (name, kind, durable) = match dest {
                    Destination::Queue(q) => (q, "queue", durable_queue(q)),
                    Destination::Exchange(e) => (e, "exchange", durable_exchange(e)),
                };
                if durable {
                    defs.bindings.push(BindingDef {
                        source: ex.name.to_string(),
                        destination: name.to_string(),
                        destination_type: kind.into(),
                        routing_key: key.into(),
                        arguments: args.clone(),
                    });
                }
            }
        }
        for q in queues.iter().filter(|q| is_stored(q)) {
            defs.queues.push(QueueDef {
                name: q.info.name.to_string(),
                auto_delete: q.info.auto_delete,
                arguments: q.info.arguments.clone(),
            });
        }
        defs.exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        defs.queues.sort_by(|a, b| a.name.cmp(&b.name));
        defs
    }

    /// Rewrites the definitions file after a change to a durable entity.
    fn persist(&self) {
        let Some(storage) = &self.storage else {
            return;
        };
        // One writer at a time, and the snapshot is taken under the same lock so
        // an older snapshot can never overwrite a newer file.
        let _guard = storage.definitions_lock.lock();
        let defs = self.definitions();
        let path = definitions::path(&storage.data_dir, &self.name);
        if let Err(e) = definitions::save(&path, &defs) {
            tracing::error!(vhost = %self.name, error = %e, "cannot write definitions");
        }
    }

    /// Recreates the durable entities of a previous run, handing each durable
    /// queue the messages recovered from its log (taken out of `recovered`).
    pub fn restore(
        &self,
        defs: &VhostDefinitions,
        recovered: &mut HashMap<String, RecoveredQueue>,
    ) -> (usize, usize) {
        let mut messages = 0;
        for ex in &defs.exchanges {
            let decl = ExchangeDecl {
                name: ex.name.clone(),
                kind: ex.kind.clone(),
                durable: true,
                auto_delete: ex.auto_delete,
                internal: ex.internal,
                arguments: ex.arguments.clone(),
            };
            let kind = match ExchangeKind::parse(&ex.kind) {
                None if ex.kind == DELAYED_TYPE => delayed::delayed_kind(&ex.arguments).ok(),
                kind => kind,
            };
            let Some(kind) = kind else {
                tracing::warn!(exchange = %ex.name, kind = %ex.kind, "skipping exchange of unknown type");
                continue;
            };
            let ext = ExchangeArgs::parse(&ex.arguments, &ex.name, &self.name).unwrap_or_else(|e| {
                tracing::warn!(exchange = %ex.name, error = %e.text, "ignoring invalid exchange arguments");
                ExchangeArgs::default()
            });
            let held = (ex.kind == DELAYED_TYPE).then(|| {
                recovered
                    .remove(&delayed::delayed_key(&self.name, &ex.name))
                    .map(|log| log.messages)
                    .unwrap_or_default()
            });
            messages += held.as_ref().map_or(0, Vec::len);
            let e = self.build_exchange(&decl, kind, &ext, held);
            self.exchanges.write().insert(e.name.clone(), Arc::new(e));
            self.exchanges_changed();
        }
        for q in &defs.queues {
            let log = recovered.remove(&queue_key(&self.name, &q.name));
            messages += log.as_ref().map_or(0, |l| l.messages.len() + l.paged.len());
            let info = QueueInfo {
                name: q.name.as_str().into(),
                vhost: self.name.clone(),
                durable: true,
                exclusive_owner: None,
                auto_delete: q.auto_delete,
                arguments: q.arguments.clone(),
                args: QueueArgs::parse(
                    &q.arguments,
                    &q.name,
                    &self.name,
                    true,
                    false,
                    q.auto_delete,
                )
                .unwrap_or_default(),
            };
            let handle = self.spawn_queue(info, log);
            self.queues.write().insert(handle.info.name.clone(), handle);
        }
        for b in &defs.bindings {
            let dest = match b.destination_type.as_str() {
                "exchange" => Destination::Exchange(b.destination.as_str().into()),
                _ => Destination::Queue(b.destination.as_str().into()),
            };
            if let Some(ex) = self.exchange(&b.source) {
                ex.bindings.write().bind(dest, &b.routing_key, &b.arguments);
            }
        }
        self.routes_changed();
        // Bindings are back: delayed messages that fell due meanwhile may go.
        for ex in self.exchanges() {
            if let Some(delayed) = &ex.delayed {
                delayed.start();
            }
        }
        (defs.queues.len(), messages)
    }

    /// Stops the schedulers of delayed exchanges (broker shutdown; their logs stay).
    pub async fn stop_delayed(&self) {
        for ex in self.exchanges() {
            if let Some(delayed) = &ex.delayed {
                delayed.stop().await;
            }
        }
    }

    /// Routes a message through `ex` (following exchange-to-exchange bindings and
    /// alternate exchanges) and appends each target queue once to `out`.
    pub fn route(
        &self,
        ex: &Exchange,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<QueueHandle>,
    ) {
        self.route_keys(ex, &[routing_key], headers, out);
    }

    /// [`VHost::route`] with several routing keys (the routing key plus the
    /// `CC`/`BCC` keys) as one decision: the alternate exchange is tried only if
    /// no key routed anywhere.
    pub fn route_keys(
        &self,
        ex: &Exchange,
        keys: &[&str],
        headers: Option<&FieldTable>,
        out: &mut Vec<QueueHandle>,
    ) {
        let mut visited: Vec<Arc<str>> = Vec::new();
        self.route_from(ex, keys, headers, out, &mut visited);
    }

    /// A client publish to `ex`: exchange deduplication, sender-selected
    /// distribution (`CC`/`BCC`), delayed messages, then routing into `out`.
    ///
    /// `confirm` is the publisher's, for a delayed exchange that confirms once
    /// its log is on disk ([`Published::held`]). A duplicate routes nowhere.
    pub fn publish(
        &self,
        ex: &Exchange,
        msg: Arc<Message>,
        confirm: Option<(&ConnHandle, ConfirmTag)>,
        out: &mut Vec<QueueHandle>,
    ) -> Published {
        if let Some(cache) = &ex.dedup {
            let verdict = cache.lock().check(msg.headers(), std::time::Instant::now());
            if verdict == Verdict::Duplicate {
                return Published { msg, held: false };
            }
        }
        if !sender_selected::has_routing_headers(msg.headers()) {
            let keys = [&*msg.routing_key];
            let held = self.hold_delayed(ex, &msg, &keys, msg.headers(), confirm, out);
            if held.is_none() {
                self.route_keys(ex, &keys, msg.headers(), out);
            }
            let held = held.unwrap_or(false);
            return Published { msg, held };
        }
        let stripped = sender_selected::strip_bcc(&msg);
        let extra = sender_selected::extra_keys(msg.headers().expect("has routing headers"));
        let mut keys: Vec<&str> = Vec::with_capacity(1 + extra.len());
        keys.push(&msg.routing_key);
        keys.extend(extra.iter().map(|k| &**k));
        let headers = stripped.headers();
        let held = self.hold_delayed(ex, &msg, &keys, headers, confirm, out);
        if held.is_none() {
            self.route_keys(ex, &keys, headers, out);
        }
        Published {
            held: held.unwrap_or(false),
            msg: stripped,
        }
    }

    /// A message with a positive `x-delay` published to a delayed exchange: the
    /// scheduler takes it (unchanged: `BCC` is stripped when it is routed) and,
    /// as the plugin's exchange routes it nowhere now, it goes to the alternate
    /// exchange at once. `None` if it is not delayed; else whether the scheduler
    /// sends the publisher's confirm.
    fn hold_delayed(
        &self,
        ex: &Exchange,
        msg: &Arc<Message>,
        keys: &[&str],
        headers: Option<&FieldTable>,
        confirm: Option<(&ConnHandle, ConfirmTag)>,
        out: &mut Vec<QueueHandle>,
    ) -> Option<bool> {
        let scheduler = ex.delayed.as_ref()?;
        let delay = delayed::delay_of(msg.headers())?;
        let held = scheduler.delay(msg.clone(), delay, confirm);
        if let Some(alt) = alternate_exchange(&ex.arguments) {
            if let Some(alt_ex) = self.exchange(&alt).filter(|a| a.name != ex.name) {
                let mut visited = vec![ex.name.clone()];
                self.route_from(&alt_ex, keys, headers, out, &mut visited);
            }
        }
        Some(held)
    }

    /// One routing step; `visited` spans the whole walk, alternate exchanges
    /// included, so no cycle of bindings or alternates can loop.
    fn route_from(
        &self,
        ex: &Exchange,
        keys: &[&str],
        headers: Option<&FieldTable>,
        out: &mut Vec<QueueHandle>,
        visited: &mut Vec<Arc<str>>,
    ) {
        if ex.name.is_empty() {
            for key in keys {
                if let Some(q) = self.queue(key) {
                    if !out.iter().any(|o| o.id == q.id) {
                        out.push(q);
                    }
                }
            }
            return;
        }
        visited.push(ex.name.clone());
        let mut dests: Vec<Destination> = Vec::new();
        route_table(ex, keys, headers, &mut dests);
        let mut i = 0;
        while i < dests.len() {
            if let Destination::Exchange(name) = &dests[i] {
                if !visited.iter().any(|v| v == name) {
                    visited.push(name.clone());
                    if let Some(next) = self.exchange(name) {
                        let mut more = Vec::new();
                        route_table(&next, keys, headers, &mut more);
                        dests.extend(more);
                    }
                }
            }
            i += 1;
        }
        let start = out.len();
        if dests.iter().any(|d| matches!(d, Destination::Queue(_))) {
            let queues = self.queues.read();
            for d in &dests {
                if let Destination::Queue(name) = d {
                    if let Some(q) = queues.get(name) {
                        if !out[start..].iter().any(|o| o.id == q.id) {
                            out.push(q.clone());
                        }
                    }
                }
            }
        }
        if out.len() == start {
            let Some(alt) = alternate_exchange(&ex.arguments) else {
                return;
            };
            if visited.iter().any(|v| **v == *alt) {
                return;
            }
            if let Some(alt_ex) = self.exchange(&alt) {
                self.route_from(&alt_ex, keys, headers, out, visited);
            }
        }
    }
}

/// Matches one exchange's bindings for every routing key (once for fanout and
/// headers exchanges, which ignore the key).
fn route_table(
    ex: &Exchange,
    keys: &[&str],
    headers: Option<&FieldTable>,
    out: &mut Vec<Destination>,
) {
    let bindings = ex.bindings.read();
    match ex.kind {
        ExchangeKind::Fanout | ExchangeKind::Headers => {
            bindings.route(keys.first().copied().unwrap_or(""), headers, out)
        }
        ExchangeKind::Direct | ExchangeKind::Topic => {
            for key in keys {
                bindings.route(key, headers, out);
            }
        }
    }
}

/// Whether a queue keeps a log in the store (durable and not exclusive).
fn is_stored(q: &QueueHandle) -> bool {
    q.info.durable && q.info.exclusive_owner.is_none()
}

/// The store key of a queue: unambiguous for any vhost and queue name.
pub fn queue_key(vhost: &str, queue: &str) -> String {
    format!("{}:{}{}", vhost.len(), vhost, queue)
}

/// The vhost part of a [`queue_key`].
pub fn key_vhost(key: &str) -> Option<&str> {
    let (len, rest) = key.split_once(':')?;
    rest.get(..len.parse::<usize>().ok()?)
}

fn alternate_exchange(args: &FieldTable) -> Option<String> {
    match args.inner().get("alternate-exchange")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn new_exchange(
    name: &str,
    kind: ExchangeKind,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: FieldTable,
) -> Exchange {
    Exchange {
        name: name.into(),
        kind,
        durable,
        auto_delete,
        internal,
        arguments,
        bindings: RwLock::new(Bindings::new(kind)),
        delayed: None,
        dedup: None,
    }
}

/// A connection's memo of exchange lookups, so that publishing takes no lock on
/// the vhost's exchange map: valid while [`VHost::exchanges_version`] is
/// unchanged, cleared otherwise.
#[derive(Debug, Default)]
pub struct ExchangeCache {
    version: u64,
    last: Option<Arc<Exchange>>,
    by_name: HashMap<Arc<str>, Arc<Exchange>>,
}

/// Exchanges a connection remembers at most (beyond that it looks them up).
const EXCHANGE_CACHE_MAX: usize = 64;

impl ExchangeCache {
    /// The exchange `name` of `vhost` (`None` if it does not exist).
    pub fn get(&mut self, vhost: &VHost, name: &str) -> Option<Arc<Exchange>> {
        let version = vhost.exchanges_version();
        if version != self.version {
            self.version = version;
            self.last = None;
            self.by_name.clear();
        }
        if let Some(ex) = self.last.as_ref().filter(|ex| &*ex.name == name) {
            return Some(ex.clone());
        }
        let ex = match self.by_name.get(name) {
            Some(ex) => ex.clone(),
            None => {
                let ex = vhost.exchange(name)?;
                if self.by_name.len() < EXCHANGE_CACHE_MAX {
                    self.by_name.insert(ex.name.clone(), ex.clone());
                }
                ex
            }
        };
        self.last = Some(ex.clone());
        Some(ex)
    }
}
