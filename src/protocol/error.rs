//! The one protocol error type the whole broker speaks, with RabbitMQ's reply
//! codes and reply texts.
//!
//! Every reply text a client can see is built by a constructor in this file, so
//! they can be checked against RabbitMQ in one place. Routing an error to a
//! `channel.close` or a `connection.close` follows RabbitMQ's rule: hard codes
//! (and anything on channel 0) close the connection.

use std::fmt;

/// AMQP 0-9-1 reply codes (spec §1.2 plus RabbitMQ's usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ReplyCode {
    /// 200: normal close.
    Success = 200,
    /// 311: message too large.
    ContentTooLarge = 311,
    /// 312: mandatory message could not be routed.
    NoRoute = 312,
    /// 313: immediate message had no consumer.
    NoConsumers = 313,
    /// 320: operator or broker closed the connection.
    ConnectionForced = 320,
    /// 402: invalid path (vhost).
    InvalidPath = 402,
    /// 403: access refused.
    AccessRefused = 403,
    /// 404: entity not found.
    NotFound = 404,
    /// 405: resource locked (exclusive queue).
    ResourceLocked = 405,
    /// 406: precondition failed.
    PreconditionFailed = 406,
    /// 501: malformed frame.
    FrameError = 501,
    /// 502: malformed method arguments.
    SyntaxError = 502,
    /// 503: invalid command in this state.
    CommandInvalid = 503,
    /// 504: channel error (channel not open, …).
    ChannelError = 504,
    /// 505: unexpected frame.
    UnexpectedFrame = 505,
    /// 506: resource error.
    ResourceError = 506,
    /// 530: not allowed.
    NotAllowed = 530,
    /// 540: not implemented.
    NotImplemented = 540,
    /// 541: internal error.
    InternalError = 541,
}

impl ReplyCode {
    /// Whether this code closes the connection rather than the channel (RabbitMQ's table).
    pub fn is_hard(self) -> bool {
        !matches!(
            self,
            ReplyCode::Success
                | ReplyCode::ContentTooLarge
                | ReplyCode::NoRoute
                | ReplyCode::NoConsumers
                | ReplyCode::AccessRefused
                | ReplyCode::NotFound
                | ReplyCode::ResourceLocked
                | ReplyCode::PreconditionFailed
        )
    }

    /// The upper-case name RabbitMQ puts in front of reply texts.
    pub fn name(self) -> &'static str {
        match self {
            ReplyCode::Success => "OK",
            ReplyCode::ContentTooLarge => "CONTENT_TOO_LARGE",
            ReplyCode::NoRoute => "NO_ROUTE",
            ReplyCode::NoConsumers => "NO_CONSUMERS",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::InvalidPath => "INVALID_PATH",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::FrameError => "FRAME_ERROR",
            ReplyCode::SyntaxError => "SYNTAX_ERROR",
            ReplyCode::CommandInvalid => "COMMAND_INVALID",
            ReplyCode::ChannelError => "CHANNEL_ERROR",
            ReplyCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ReplyCode::ResourceError => "RESOURCE_ERROR",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }
}

/// A protocol error: reply code, full reply text, and the failing method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    /// Reply code.
    pub code: ReplyCode,
    /// Full reply text as sent, e.g. `NOT_FOUND - no queue 'x' in vhost '/'`.
    pub text: String,
    /// Class id of the method that failed (0 if none).
    pub class_id: u16,
    /// Method id of the method that failed (0 if none).
    pub method_id: u16,
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.text, self.code as u16)
    }
}

impl std::error::Error for AmqpError {}

/// Longest reply text that fits the short-string field.
pub const MAX_REPLY_TEXT: usize = 255;

/// Cuts a reply text to 252 bytes plus `...` when it would not fit a short
/// string, as RabbitMQ does (a longer text cannot be encoded at all).
pub fn cap_reply_text(mut text: String) -> String {
    if text.len() > MAX_REPLY_TEXT {
        let mut end = MAX_REPLY_TEXT - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// Result alias for operations that fail with a protocol error.
pub type AmqpResult<T> = Result<T, AmqpError>;

impl AmqpError {
    /// An error with `code` and a detail; the text becomes `NAME - detail`.
    pub fn new(code: ReplyCode, detail: impl fmt::Display) -> Self {
        AmqpError {
            code,
            text: cap_reply_text(format!("{} - {}", code.name(), detail)),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Records the method that caused the error, unless one is already set.
    pub fn on_method(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// Whether this error closes the connection.
    pub fn is_hard(&self) -> bool {
        self.code.is_hard()
    }

    /// `NOT_FOUND - no queue 'q' in vhost '/'`.
    pub fn no_queue(name: &str, vhost: &str) -> Self {
        Self::new(
            ReplyCode::NotFound,
            format_args!("no queue '{name}' in vhost '{vhost}'"),
        )
    }

    /// `NOT_FOUND - no exchange 'x' in vhost '/'`.
    pub fn no_exchange(name: &str, vhost: &str) -> Self {
        Self::new(
            ReplyCode::NotFound,
            format_args!("no exchange '{name}' in vhost '{vhost}'"),
        )
    }

    /// `PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'`.
    pub fn inequivalent_arg(
        arg: &str,
        kind: &str,
        name: &str,
        vhost: &str,
        received: impl fmt::Display,
        current: impl fmt::Display,
    ) -> Self {
        Self::new(
            ReplyCode::PreconditionFailed,
            format_args!(
                "inequivalent arg '{arg}' for {kind} '{name}' in vhost '{vhost}': received '{received}' but current is '{current}'"
            ),
        )
    }

    /// `ACCESS_REFUSED - access to queue 'q' in vhost '/' refused for user 'guest'`-style texts.
    pub fn access_refused(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::AccessRefused, detail)
    }

    /// `RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'q' in vhost '/'. ...`.
    pub fn exclusive_locked(name: &str, vhost: &str) -> Self {
        Self::new(
            ReplyCode::ResourceLocked,
            format_args!(
                "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
            ),
        )
    }

    /// `PRECONDITION_FAILED - unknown delivery tag 7`.
    pub fn unknown_delivery_tag(tag: u64) -> Self {
        Self::new(
            ReplyCode::PreconditionFailed,
            format_args!("unknown delivery tag {tag}"),
        )
    }

    /// `PRECONDITION_FAILED - ...` with a free detail.
    pub fn precondition(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::PreconditionFailed, detail)
    }

    /// `NOT_FOUND - ...` with a free detail.
    pub fn not_found(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::NotFound, detail)
    }

    /// `COMMAND_INVALID - ...` (hard).
    pub fn command_invalid(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::CommandInvalid, detail)
    }

    /// `CHANNEL_ERROR - ...` (hard).
    pub fn channel_error(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::ChannelError, detail)
    }

    /// `UNEXPECTED_FRAME - ...` (hard).
    pub fn unexpected_frame(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::UnexpectedFrame, detail)
    }

    /// `FRAME_ERROR - ...` (hard).
    pub fn frame_error(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::FrameError, detail)
    }

    /// `SYNTAX_ERROR - ...` (hard).
    pub fn syntax_error(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::SyntaxError, detail)
    }

    /// `NOT_ALLOWED - ...` (hard).
    pub fn not_allowed(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::NotAllowed, detail)
    }

    /// `NOT_IMPLEMENTED - ...` (hard).
    pub fn not_implemented(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::NotImplemented, detail)
    }

    /// `INTERNAL_ERROR` (hard); the cause is logged, not sent.
    pub fn internal(detail: impl fmt::Display) -> Self {
        Self::new(ReplyCode::InternalError, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_texts() {
        assert_eq!(
            AmqpError::no_queue("x", "/").text,
            "NOT_FOUND - no queue 'x' in vhost '/'"
        );
        assert_eq!(
            AmqpError::inequivalent_arg("durable", "queue", "q", "/", true, false).text,
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'"
        );
        let long = AmqpError::no_queue(&"q".repeat(400), "/");
        assert_eq!(long.text.len(), 255);
        assert!(long.text.ends_with("..."));
        assert!(!ReplyCode::NotFound.is_hard());
        assert!(ReplyCode::FrameError.is_hard());
        assert!(ReplyCode::NotAllowed.is_hard());
    }
}
