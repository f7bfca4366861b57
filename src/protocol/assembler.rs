//! Per-channel content assembly: method → content header → body frames.
//!
//! A pure state machine (RabbitMQ's `rabbit_command_assembler`): frames go in,
//! complete commands come out. A single-frame body stays a zero-copy slice of
//! the read buffer; a multi-frame body is copied once into a buffer sized from
//! the header's `body_size`, which is checked against `max_message_size` before
//! any allocation.

use super::codec::{ContentHeader, Frame};
use super::error::AmqpError;
use amq_protocol::protocol::{basic, AMQPClass};
use bytes::{Bytes, BytesMut};

/// A complete command from one channel.
#[derive(Debug)]
pub enum Command {
    /// A method without content.
    Method(Box<AMQPClass>),
    /// A `basic.publish` with its assembled content.
    Publish(Box<basic::Publish>, ContentHeader, Bytes),
}

/// Assembly state of one channel.
#[derive(Debug, Default)]
pub enum Assembler {
    /// Waiting for a method.
    #[default]
    Idle,
    /// Got a content-bearing method, waiting for its header.
    AwaitHeader(Box<basic::Publish>),
    /// Waiting for body frames.
    AwaitBody {
        /// The method.
        publish: Box<basic::Publish>,
        /// The content header.
        header: ContentHeader,
        /// Bytes still expected.
        remaining: u64,
        /// The first body frame (kept zero-copy if it turns out to be the only one).
        first: Option<Bytes>,
        /// Concatenation buffer once a second frame arrives.
        joined: Option<BytesMut>,
    },
}

impl Assembler {
    /// Feeds one frame (method, header or body) of this channel.
    ///
    /// Errors are hard (505 UNEXPECTED_FRAME, 501 FRAME_ERROR) except an oversized
    /// message, which RabbitMQ reports as a soft 406.
    pub fn push(
        &mut self,
        frame: Frame,
        max_message_size: u64,
    ) -> Result<Option<Command>, AmqpError> {
        match (std::mem::take(self), frame) {
            (Assembler::Idle, Frame::Method(_, method)) => match *method {
                AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => {
                    *self = Assembler::AwaitHeader(Box::new(p));
                    Ok(None)
                }
                other => Ok(Some(Command::Method(Box::new(other)))),
            },
            (Assembler::Idle, Frame::Header(..) | Frame::Body(..)) => Err(
                AmqpError::unexpected_frame("expected method frame, got non method frame instead"),
            ),
            (Assembler::AwaitHeader(publish), Frame::Header(ch, header)) => {
                if header.class_id != 60 {
                    return Err(AmqpError::frame_error(format_args!(
                        "content header class {} does not match method class 60 on channel {ch}",
                        header.class_id
                    ))
                    .on_method(60, 40));
                }
                if header.body_size > max_message_size {
                    return Err(AmqpError::precondition(format_args!(
                        "message size {} is larger than configured max size {}",
                        header.body_size, max_message_size
                    ))
                    .on_method(60, 40));
                }
                if header.body_size == 0 {
                    return Ok(Some(Command::Publish(publish, header, Bytes::new())));
                }
                *self = Assembler::AwaitBody {
                    remaining: header.body_size,
                    publish,
                    header,
                    first: None,
                    joined: None,
                };
                Ok(None)
            }
            (Assembler::AwaitHeader(_), _) => Err(AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .on_method(60, 40)),
            (
                Assembler::AwaitBody {
                    publish,
                    header,
                    remaining,
                    first,
                    joined,
                },
                Frame::Body(ch, body),
            ) => {
                let len = body.len() as u64;
                if len > remaining {
                    return Err(AmqpError::unexpected_frame(format_args!(
                        "received body of {} bytes exceeding the announced content size on channel {ch}",
                        len
                    ))
                    .on_method(60, 40));
                }
                let remaining = remaining - len;
                let (first, joined) = match (first, joined) {
                    (None, None) => (Some(body), None),
                    (Some(first), None) => {
                        let mut buf = BytesMut::with_capacity(header.body_size as usize);
                        buf.extend_from_slice(&first);
                        buf.extend_from_slice(&body);
                        (None, Some(buf))
                    }
                    (_, Some(mut buf)) => {
                        buf.extend_from_slice(&body);
                        (None, Some(buf))
                    }
                };
                if remaining == 0 {
                    let body = match (first, joined) {
                        (Some(b), _) => b,
                        (_, Some(buf)) => buf.freeze(),
                        (None, None) => Bytes::new(),
                    };
                    Ok(Some(Command::Publish(publish, header, body)))
                } else {
                    *self = Assembler::AwaitBody {
                        publish,
                        header,
                        remaining,
                        first,
                        joined,
                    };
                    Ok(None)
                }
            }
            (Assembler::AwaitBody { .. }, _) => Err(AmqpError::unexpected_frame(
                "expected content body, got non content body frame instead",
            )
            .on_method(60, 40)),
            (state, Frame::Heartbeat(_)) => {
                *self = state;
                Ok(None)
            }
        }
    }

    /// Whether a content-bearing method is half-assembled.
    pub fn is_idle(&self) -> bool {
        matches!(self, Assembler::Idle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::content_header;
    use crate::protocol::ReplyCode;
    use amq_protocol::protocol::basic::AMQPProperties;

    fn publish() -> Frame {
        Frame::Method(
            1,
            Box::new(AMQPClass::Basic(basic::AMQPMethod::Publish(
                basic::Publish {
                    exchange: "".into(),
                    routing_key: "q".into(),
                    mandatory: false,
                    immediate: false,
                },
            ))),
        )
    }

    fn header(size: u64) -> Frame {
        Frame::Header(1, content_header(size, AMQPProperties::default()))
    }

    #[test]
    fn single_frame_body_is_not_copied() {
        let mut a = Assembler::default();
        assert!(a.push(publish(), 1 << 20).unwrap().is_none());
        assert!(a.push(header(3), 1 << 20).unwrap().is_none());
        let body = Bytes::from_static(b"abc");
        match a.push(Frame::Body(1, body.clone()), 1 << 20).unwrap() {
            Some(Command::Publish(_, _, b)) => assert_eq!(b.as_ptr(), body.as_ptr()),
            other => panic!("{other:?}"),
        }
        assert!(a.is_idle());
    }

    #[test]
    fn multi_frame_body_joined_and_empty_body_completes_on_header() {
        let mut a = Assembler::default();
        a.push(publish(), 1 << 20).unwrap();
        a.push(header(6), 1 << 20).unwrap();
        assert!(a
            .push(Frame::Body(1, Bytes::from_static(b"abc")), 1 << 20)
            .unwrap()
            .is_none());
        match a
            .push(Frame::Body(1, Bytes::from_static(b"def")), 1 << 20)
            .unwrap()
        {
            Some(Command::Publish(_, _, b)) => assert_eq!(&b[..], b"abcdef"),
            other => panic!("{other:?}"),
        }
        a.push(publish(), 1 << 20).unwrap();
        assert!(matches!(
            a.push(header(0), 1 << 20).unwrap(),
            Some(Command::Publish(..))
        ));
    }

    #[test]
    fn protocol_violations() {
        let mut a = Assembler::default();
        let e = a
            .push(Frame::Body(1, Bytes::from_static(b"x")), 100)
            .unwrap_err();
        assert_eq!(e.code, ReplyCode::UnexpectedFrame);
        let mut a = Assembler::default();
        a.push(publish(), 100).unwrap();
        let e = a.push(publish(), 100).unwrap_err();
        assert_eq!(e.code, ReplyCode::UnexpectedFrame);
        let mut a = Assembler::default();
        a.push(publish(), 100).unwrap();
        a.push(header(2), 100).unwrap();
        let e = a
            .push(Frame::Body(1, Bytes::from_static(b"abc")), 100)
            .unwrap_err();
        assert_eq!(e.code, ReplyCode::UnexpectedFrame);
        let mut a = Assembler::default();
        a.push(publish(), 100).unwrap();
        let e = a.push(header(101), 100).unwrap_err();
        assert_eq!(e.code, ReplyCode::PreconditionFailed);
    }
}
