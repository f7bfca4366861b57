//! The wire format: everything that knows how AMQP 0-9-1 bytes look.

pub mod error;

pub use error::{AmqpError, AmqpResult, ReplyCode};
