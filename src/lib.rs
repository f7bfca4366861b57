//! # WarrenMQ
//!
//! An AMQP 0-9-1 message broker that RabbitMQ clients can use unchanged.
//!
//! ## Layout
//! - [`config`]: TOML configuration with embedded defaults.
//! - [`protocol`]: the wire format: frame splitting (zero-copy bodies), method and
//!   content-header codec (via `amq-protocol`), content assembly, reply codes.
//! - [`server`]: listener, accept loop, ordered shutdown.
//! - [`connection`]: one task per client connection: handshake, frame dispatch,
//!   heartbeats, and a writer task that batches socket writes.
//! - [`channel`]: per-channel state owned by the connection task: publishing,
//!   consumers, unacked deliveries, confirms, transactions.
//! - [`broker`]: vhosts with their exchanges, queues and bindings.
//! - [`exchange`]: binding tables and routing for direct/fanout/topic/headers.
//! - [`queue`]: one actor task per queue: ready messages, consumers, credit.
//! - [`message`]: the immutable, shared message.
//! - [`auth`]: SASL mechanisms and users.
//! - [`alarm`]: memory and disk resource alarms (`connection.blocked`).
//!
//! ## Data path
//! socket bytes → frame splitter → per-channel assembler → channel handler →
//! exchange router → per-queue batch → queue actor → consumer credit →
//! connection outbox → writer task → socket.

#![deny(unsafe_code)]

pub mod alarm;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod exchange;
pub mod message;
pub mod protocol;
pub mod queue;
pub mod server;
pub mod store;

pub use config::Config;
pub use server::{RunningServer, Server};
