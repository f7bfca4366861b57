//! The message as the broker holds it: immutable and shared.
//!
//! A [`Message`] is built once per publish and shared as `Arc<Message>` by every
//! queue it is routed to, so fan-out costs one refcount bump per queue and never
//! copies the body. The content header's property bytes are kept exactly as the
//! publisher sent them and written verbatim on delivery (RabbitMQ's
//! `properties_bin`), so properties are not re-encoded per consumer.

use crate::protocol::codec::{encode_properties, ContentHeader};
use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;
use std::sync::Arc;

/// A published message.
#[derive(Debug)]
pub struct Message {
    /// Exchange it was published to.
    pub exchange: Box<str>,
    /// Routing key it was published with.
    pub routing_key: Box<str>,
    /// Decoded properties (boxed: moved and shared as a pointer).
    pub properties: Box<AMQPProperties>,
    /// Encoded properties, sent as-is in deliveries.
    pub raw_properties: Bytes,
    /// The body (a zero-copy slice of the publisher's read buffer when it fit one frame).
    pub body: Bytes,
}

impl Message {
    /// Builds a message from an assembled publish.
    /// Owned names (`String`s from the decoded method) move in without a copy.
    pub fn new(
        exchange: impl Into<Box<str>>,
        routing_key: impl Into<Box<str>>,
        header: ContentHeader,
        body: Bytes,
    ) -> Arc<Self> {
        Arc::new(Message {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            properties: header.properties,
            raw_properties: header.raw_properties,
            body,
        })
    }

    /// Rebuilds a message read back from the store.
    pub fn restore(
        exchange: &str,
        routing_key: &str,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Option<Arc<Self>> {
        let properties = crate::protocol::codec::decode_properties(&raw_properties)?;
        Some(Arc::new(Message {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            properties: Box::new(properties),
            raw_properties,
            body,
        }))
    }

    /// A copy with changed properties; the body is shared, not copied.
    pub fn with_properties(&self, properties: AMQPProperties) -> Arc<Self> {
        Arc::new(Message {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            raw_properties: encode_properties(&properties),
            properties: Box::new(properties),
            body: self.body.clone(),
        })
    }

    /// Whether `delivery_mode` is 2.
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode() == &Some(2)
    }

    /// Body size in bytes.
    pub fn body_size(&self) -> u64 {
        self.body.len() as u64
    }

    /// The headers table, if any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.properties.headers().as_ref()
    }

    /// A header value by name.
    pub fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.headers().and_then(|h| h.inner().get(name))
    }
}
