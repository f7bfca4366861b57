//! The server: builds the broker, binds the AMQP listener, accepts connections,
//! and shuts everything down in one order (stop accepting → close clients with
//! 320 CONNECTION_FORCED → wait for connection tasks).

use crate::auth::UserStore;
use crate::broker::Broker;
use crate::config::Config;
use crate::connection;
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
}

/// Errors that prevent the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
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
        let broker = Broker::new(config.clone());
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
        info!(addr = %amqp_addr, "AMQP listener started");
        Ok(RunningServer {
            amqp_addr,
            broker,
            shutdown,
            tasks,
        })
    }
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
    pub async fn shutdown(self) {
        info!("shutting down");
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("some connections did not close in time");
        }
        info!("shutdown complete");
    }
}
