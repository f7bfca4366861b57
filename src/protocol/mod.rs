//! The wire format: everything that knows how AMQP 0-9-1 bytes look.
//!
//! May touch `bytes` and `amq-protocol`; nothing in the broker.

pub mod assembler;
pub mod codec;
pub mod error;

pub use error::{AmqpError, AmqpResult, ReplyCode};
