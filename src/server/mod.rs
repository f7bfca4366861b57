//! The server: builds the broker, binds the AMQP listener, accepts connections,
//! and shuts everything down in one order (stop accepting → close clients with
//! 320 CONNECTION_FORCED → wait for connection tasks).

use crate::auth::UserStore;
use crate::broker::{definitions, Broker, Storage};
use crate::config::Config;
use crate::config::FsyncPolicy;
use crate::connection;
use crate::store::{FsyncMode, RecoveredQueue, RecoveryWindow, Store, StoreOptions};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn, Instrument};

/// How long shutdown waits for connections to finish closing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Entry point for starting a broker.
pub struct Server;

/// A started broker. Call [`RunningServer::shutdown`] to stop it.
pub struct RunningServer {
    amqp_addr: SocketAddr,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    store: Option<Store>,
}

/// Errors that prevent the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory or the message store could not be opened.
    #[error("cannot open the message store in {dir}: {error}")]
    Store {
        /// The store directory.
        dir: std::path::PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {}", without_os_error(error))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause (not chained: the message already says it).
        error: std::io::Error,
    },
}

/// `Address already in use (os error 98)` → `Address already in use`.
fn without_os_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_owned(),
        _ => text,
    }
}

impl Server {
    /// Starts the broker with `config`; returns once the listener is bound.
    pub async fn start(config: Config) -> Result<RunningServer, StartError> {
        let config = Arc::new(config);
        let addr = SocketAddr::new(config.amqp.bind, config.amqp.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| StartError::Bind { addr, error })?;
        let amqp_addr = listener
            .local_addr()
            .map_err(|error| StartError::Bind { addr, error })?;
        let users = Arc::new(UserStore::from_config(&config.auth));
        let (store, broker) = open_storage(config.clone()).await?;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let limit = match config.amqp.max_connections {
            0 => Semaphore::MAX_PERMITS,
            n => n,
        };
        tasks.spawn(
            accept_loop(
                listener,
                broker.clone(),
                users,
                shutdown.clone(),
                tasks.clone(),
                Arc::new(Semaphore::new(limit)),
            )
            .instrument(tracing::info_span!("listener", addr = %amqp_addr)),
        );
        tasks.spawn(
            broker
                .alarms
                .clone()
                .run(config.data_dir.clone(), shutdown.clone()),
        );
        info!(addr = %amqp_addr, "AMQP listener started");
        Ok(RunningServer {
            amqp_addr,
            broker,
            shutdown,
            tasks,
            store: Some(store),
        })
    }
}

/// Opens the message store (recovering every queue log), builds the broker, and
/// recreates each vhost's durable definitions with their messages.
async fn open_storage(config: Arc<Config>) -> Result<(Store, Arc<Broker>), StartError> {
    let started = std::time::Instant::now();
    let dir = config.data_dir.join("store");
    let fsync = match config.storage.fsync {
        FsyncPolicy::Always => FsyncMode::Always,
        FsyncPolicy::Never => FsyncMode::Never,
    };
    // Bodies beyond each queue's memory window stay on disk from the start (delayed
    // exchanges hold all of theirs in memory, so their logs come back whole).
    let options = StoreOptions {
        fsync,
        recovery_window: (config.storage.queue_memory_window > 0).then_some(RecoveryWindow {
            records: config.storage.queue_memory_window,
            whole_prefix: crate::broker::delayed::DELAYED_KEY_PREFIX,
        }),
        ..StoreOptions::default()
    };
    let open_dir = dir.clone();
    let opened = tokio::task::spawn_blocking(move || Store::open_with_options(&open_dir, options))
        .await
        .expect("store recovery task panicked");
    let (store, handle, recovered) = opened.map_err(|error| StartError::Store {
        dir: dir.clone(),
        error,
    })?;
    let mut logs: HashMap<String, RecoveredQueue> =
        recovered.into_iter().map(|q| (q.key.clone(), q)).collect();
    let storage = Arc::new(Storage {
        store: handle.clone(),
        data_dir: config.data_dir.clone(),
        definitions_lock: parking_lot::Mutex::new(()),
        queue_memory_window: config.storage.queue_memory_window,
        transient_memory_window: config.storage.transient_memory_window,
        alarms: Arc::new(crate::alarm::ResourceAlarms::new(&config.resources)),
    });
    let broker = Broker::new(config.clone(), Some(storage));
    let (mut queues, mut messages) = (0, 0);
    for vhost in broker.vhosts() {
        let path = definitions::path(&config.data_dir, &vhost.name);
        match definitions::load(&path) {
            Ok(Some(defs)) => {
                let (q, m) = vhost.restore(&defs, &mut logs);
                queues += q;
                messages += m;
            }
            Ok(None) => {}
            Err(error) => return Err(StartError::Store { dir: path, error }),
        }
    }
    for (key, log) in logs {
        if key.starts_with(crate::queue::paging::PAGE_KEY_PREFIX) {
            // Paged-out transient messages of the previous run: gone with the restart.
            handle.delete_queue(&key);
            continue;
        }
        warn!(
            key,
            messages = log.messages.len() + log.paged.len(),
            "deleting the log of a queue that no longer exists"
        );
        handle.delete_queue(&key);
    }
    info!(
        queues,
        messages,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered durable queues"
    );
    Ok((store, broker))
}

async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    users: Arc<UserStore>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    limit: Arc<Semaphore>,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = limit.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                let (broker, users, token) = (broker.clone(), users.clone(), shutdown.clone());
                tasks.spawn(async move {
                    connection::serve(stream, peer, broker, users, token).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                error!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

impl RunningServer {
    /// The bound AMQP address (the real port when configured with port 0).
    pub fn amqp_addr(&self) -> SocketAddr {
        self.amqp_addr
    }

    /// The broker (vhosts, queues, exchanges).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Closes every client with 320 CONNECTION_FORCED and waits for their tasks.
    pub async fn shutdown(mut self) {
        info!("shutting down");
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("some connections did not close in time");
        }
        // Delayed exchanges stop firing (their logs stay for the next start).
        for vhost in self.broker.vhosts() {
            vhost.stop_delayed().await;
        }
        // Queues finish what is in their inboxes (so every append reaches the
        // store) and stop; then the store syncs and marks a clean shutdown.
        for vhost in self.broker.vhosts() {
            for queue in vhost.queues() {
                queue.ask(crate::queue::QueueCmd::Stop).await;
            }
        }
        if let Some(store) = self.store.take() {
            // Flushes, fsyncs and writes the clean-shutdown marker.
            let _ = tokio::task::spawn_blocking(move || store.shutdown()).await;
        }
        info!("shutdown complete");
    }
}
