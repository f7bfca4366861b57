//! Authentication: SASL response parsing (PLAIN, AMQPLAIN), the user store,
//! and the reply texts RabbitMQ sends when a login is refused.
//!
//! Owns: decoding `connection.start-ok`'s `response` into a user name and
//! password, and checking them against [`UserStore`]. Pure: no I/O and no
//! async, so the handshake can call it inline. It may use `protocol` (reply
//! codes and [`AmqpError`]) and `config`; nothing else.
//!
//! What the handshake has to do with an [`AuthError`] (RabbitMQ's
//! `rabbit_reader:auth_phase/2`, `auth_fail/5` and `handle_exception/3`):
//! - a refused login ([`AuthError::is_refusal`]): log
//!   [`AuthError::log_text`]; if the client's `capabilities` table has
//!   `authentication_failure_close = true`, send `connection.close` with
//!   [`AuthError::reply_code`] (403) and [`AuthError::reply_text`], class and
//!   method 0; then close the socket after [`SILENT_CLOSE_DELAY`]
//!   ([`AuthError::sends_close`] says whether to send the close);
//! - an unknown mechanism or a malformed response: log it and close the
//!   socket after [`SILENT_CLOSE_DELAY`] without sending anything.

mod users;

pub use users::{is_loopback, vhost_access_refused, PasswordHash, User, UserStore};

use crate::protocol::{AmqpError, ReplyCode};
use amq_protocol::types::{parsing::parse_field_table, AMQPValue};
use std::fmt;
use std::time::Duration;

/// How long RabbitMQ waits before closing the socket of a client that failed
/// the handshake (`?SILENT_CLOSE_DELAY` in `rabbit_reader.erl`), so repeated
/// failed logins cannot be used to flood the broker.
pub const SILENT_CLOSE_DELAY: Duration = Duration::from_secs(3);

/// Reply texts are AMQP short strings: RabbitMQ cuts them at 255 characters
/// (`rabbit_binary_generator:amqp_exception_explanation/2`).
const MAX_REPLY_TEXT: usize = 255;

/// A SASL mechanism the broker offers in `connection.start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// RFC 4616 `PLAIN`: `[authzid] NUL authcid NUL passwd`.
    Plain,
    /// RabbitMQ/Qpid `AMQPLAIN`: a field table with `LOGIN` and `PASSWORD`.
    Amqplain,
}

impl Mechanism {
    /// The mechanism named `name`, matched exactly (RabbitMQ's registry is case-sensitive).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "AMQPLAIN" => Some(Mechanism::Amqplain),
            _ => None,
        }
    }

    /// The name as it appears on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Amqplain => "AMQPLAIN",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `mechanisms` field of `connection.start` (RabbitMQ's default
/// `auth_mechanisms` list, space-separated).
pub fn mechanisms() -> &'static str {
    "PLAIN AMQPLAIN"
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `start-ok` named a mechanism we do not offer.
    #[error("unknown authentication mechanism '{0}'")]
    UnknownMechanism(String),
    /// The response could not be decoded for its mechanism.
    #[error("{mechanism} response invalid: {reason}")]
    InvalidResponse {
        /// The mechanism whose format was violated.
        mechanism: Mechanism,
        /// What was wrong, for the log.
        reason: String,
    },
    /// The user does not exist or the password does not match.
    #[error("user '{username}' - invalid credentials")]
    InvalidCredentials {
        /// The user name the client sent.
        username: String,
    },
    /// The password was empty; RabbitMQ's internal backend refuses those outright.
    #[error("user '{username}' attempted to log in with a blank password, which is prohibited by the internal authN backend. To use TLS/x509 certificate-based authentication, see the rabbitmq_auth_mechanism_ssl plugin and configure the client to use the EXTERNAL authentication mechanism. Alternatively change the password for the user to be non-blank.")]
    BlankPassword {
        /// The user name the client sent.
        username: String,
    },
    /// A user listed in `auth.loopback_users` connected from a non-loopback address.
    #[error("user '{username}' can only connect via localhost")]
    LoopbackOnly {
        /// The user name the client sent.
        username: String,
    },
}

impl AuthError {
    /// True for a refused login (bad credentials, blank password, loopback-only user).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            AuthError::InvalidCredentials { .. }
                | AuthError::BlankPassword { .. }
                | AuthError::LoopbackOnly { .. }
        )
    }

    /// The user name the client sent, when the response got that far.
    pub fn username(&self) -> Option<&str> {
        match self {
            AuthError::InvalidCredentials { username }
            | AuthError::BlankPassword { username }
            | AuthError::LoopbackOnly { username } => Some(username),
            AuthError::UnknownMechanism(_) | AuthError::InvalidResponse { .. } => None,
        }
    }

    /// The reply code RabbitMQ uses: 403 for refusals, 503 for an unknown
    /// mechanism, 502 for a malformed response.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            AuthError::UnknownMechanism(_) => ReplyCode::CommandInvalid,
            AuthError::InvalidResponse { .. } => ReplyCode::SyntaxError,
            _ => ReplyCode::AccessRefused,
        }
    }

    /// Whether the handshake sends `connection.close` before dropping the
    /// socket: only for refusals, and only to clients that announced the
    /// `authentication_failure_close` capability (`rabbit_reader:auth_fail/5`).
    pub fn sends_close(&self, authentication_failure_close: bool) -> bool {
        self.is_refusal() && authentication_failure_close
    }

    /// The full reply text for `connection.close`, as RabbitMQ sends it.
    ///
    /// `mechanism` is the name the client sent in `start-ok`. For refusals
    /// the text deliberately hides the reason (`rabbit_reader:auth_fail/5`):
    /// `ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.`
    pub fn reply_text(&self, mechanism: &str) -> String {
        let text = if self.is_refusal() {
            format!(
                "{} - Login was refused using authentication mechanism {mechanism}. For details see the broker logfile.",
                self.reply_code().name()
            )
        } else {
            format!("{} - {self}", self.reply_code().name())
        };
        truncate(text)
    }

    /// The full explanation RabbitMQ logs (never sent to the client), e.g.
    /// `ACCESS_REFUSED - PLAIN login refused: user 'guest' - invalid credentials`.
    pub fn log_text(&self, mechanism: &str) -> String {
        if self.is_refusal() {
            format!(
                "{} - {mechanism} login refused: {self}",
                self.reply_code().name()
            )
        } else {
            format!("{} - {self}", self.reply_code().name())
        }
    }

    /// This error as a connection-level [`AmqpError`] (class and method 0, as
    /// RabbitMQ sends it), carrying [`AuthError::reply_text`].
    pub fn to_amqp_error(&self, mechanism: &str) -> AmqpError {
        AmqpError {
            code: self.reply_code(),
            text: self.reply_text(mechanism),
            class_id: 0,
            method_id: 0,
        }
    }
}

/// Cuts `text` to at most [`MAX_REPLY_TEXT`] bytes on a character boundary.
fn truncate(mut text: String) -> String {
    if text.len() > MAX_REPLY_TEXT {
        let mut end = MAX_REPLY_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Decodes the `response` field of `connection.start-ok` into `(user, password)`.
///
/// - `PLAIN`: `authzid NUL authcid NUL passwd` (RFC 4616). RabbitMQ
///   (`rabbit_auth_mechanism_plain.erl`) only accepts an empty authzid; we also
///   accept a non-empty one and ignore it, so the login is always as `authcid`
///   (nobody can act as another user). Neither name nor password may contain NUL.
/// - `AMQPLAIN`: the *contents* of an AMQP field table, without the 4-byte
///   length prefix (`rabbit_binary_parser:parse_table/1` on the raw response;
///   clients such as amq-protocol and py-amqp strip the prefix), with `LOGIN` and
///   `PASSWORD` entries of type long string (`S`) or byte array (`x`).
///
/// Names and passwords must be UTF-8: the users in the store come from a TOML
/// file, so other bytes could never match.
pub fn parse_response(mechanism: &str, response: &[u8]) -> Result<(String, String), AuthError> {
    match Mechanism::from_name(mechanism) {
        Some(Mechanism::Plain) => parse_plain(response),
        Some(Mechanism::Amqplain) => parse_amqplain(response),
        None => Err(AuthError::UnknownMechanism(mechanism.to_owned())),
    }
}

fn invalid(mechanism: Mechanism, reason: impl Into<String>) -> AuthError {
    AuthError::InvalidResponse {
        mechanism,
        reason: reason.into(),
    }
}

fn utf8(mechanism: Mechanism, what: &str, bytes: &[u8]) -> Result<String, AuthError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| invalid(mechanism, format!("{what} is not valid UTF-8")))
}

fn parse_plain(response: &[u8]) -> Result<(String, String), AuthError> {
    let m = Mechanism::Plain;
    let mut parts = response.split(|&b| b == 0);
    // `split` yields exactly three parts for exactly two NULs.
    let (Some(_authzid), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(
            m,
            "expected [authzid] NUL user NUL password with exactly two NUL bytes",
        ));
    };
    Ok((utf8(m, "user name", user)?, utf8(m, "password", pass)?))
}

fn parse_amqplain(response: &[u8]) -> Result<(String, String), AuthError> {
    let m = Mechanism::Amqplain;
    // amq-protocol parses a table with its length prefix; put one back.
    let len = u32::try_from(response.len()).map_err(|_| invalid(m, "response too large"))?;
    let mut framed = Vec::with_capacity(response.len() + 4);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(response);
    let table = match parse_field_table(framed.as_slice()) {
        Ok(([], table)) => table,
        _ => return Err(invalid(m, "auth info is not a valid field table")),
    };
    let field = |name: &str| -> Result<Option<&[u8]>, AuthError> {
        match table.inner().get(name) {
            None => Ok(None),
            Some(AMQPValue::LongString(s)) => Ok(Some(s.as_bytes())),
            Some(AMQPValue::ShortString(s)) => Ok(Some(s.as_str().as_bytes())),
            Some(AMQPValue::ByteArray(b)) => Ok(Some(b.as_slice())),
            Some(_) => Err(invalid(
                m,
                "auth info uses unsupported type for LOGIN or PASSWORD field",
            )),
        }
    };
    match (field("LOGIN")?, field("PASSWORD")?) {
        (Some(user), Some(pass)) => Ok((utf8(m, "LOGIN", user)?, utf8(m, "PASSWORD", pass)?)),
        _ => Err(invalid(m, "auth info is missing LOGIN or PASSWORD field")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::auth::{Credentials, SASLMechanism};
    use amq_protocol::types::{generation::gen_field_table, FieldTable, LongString};

    /// What lapin (amq-protocol) sends for `mechanism`.
    fn client_response(mechanism: SASLMechanism, user: &str, pass: &str) -> Vec<u8> {
        Credentials::new(user.into(), pass.into())
            .sasl_auth_string(mechanism)
            .as_bytes()
            .to_vec()
    }

    /// The contents of `table` without its length prefix, as clients send AMQPLAIN.
    fn table_body(table: &FieldTable) -> Vec<u8> {
        let (buf, _) = gen_field_table(table)(Vec::new().into())
            .expect("table encodes")
            .into_inner();
        buf[4..].to_vec()
    }

    #[test]
    fn mechanism_names() {
        assert_eq!(mechanisms(), "PLAIN AMQPLAIN");
        for name in mechanisms().split(' ') {
            assert_eq!(Mechanism::from_name(name).unwrap().name(), name);
        }
        assert_eq!(Mechanism::from_name("plain"), None);
        assert_eq!(Mechanism::from_name("EXTERNAL"), None);
    }

    #[test]
    fn plain_from_real_client() {
        let r = client_response(SASLMechanism::Plain, "guest", "guest");
        assert_eq!(r, b"\0guest\0guest");
        assert_eq!(
            parse_response("PLAIN", &r).unwrap(),
            ("guest".into(), "guest".into())
        );
    }

    #[test]
    fn plain_with_authzid_and_utf8() {
        assert_eq!(
            parse_response("PLAIN", "admin\0jürgen\0pässwörd".as_bytes()).unwrap(),
            ("jürgen".into(), "pässwörd".into())
        );
        // Empty user and password decode; the user store refuses them.
        assert_eq!(
            parse_response("PLAIN", b"\0\0").unwrap(),
            (String::new(), String::new())
        );
    }

    #[test]
    fn plain_malformed() {
        for bad in [
            &b""[..],
            b"guest",
            b"\0guest",
            b"\0guest\0guest\0",
            b"a\0b\0c\0d",
        ] {
            let err = parse_response("PLAIN", bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    AuthError::InvalidResponse {
                        mechanism: Mechanism::Plain,
                        ..
                    }
                ),
                "{bad:?}: {err:?}"
            );
            assert_eq!(err.reply_code(), ReplyCode::SyntaxError);
            assert!(!err.sends_close(true));
        }
        let err = parse_response("PLAIN", b"\0gu\xffest\0x").unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    #[test]
    fn amqplain_from_real_client() {
        let r = client_response(SASLMechanism::AMQPlain, "guest", "s3cr3t");
        // No length prefix: the first byte is the length of "LOGIN".
        assert_eq!(r[0], 5);
        assert_eq!(
            parse_response("AMQPLAIN", &r).unwrap(),
            ("guest".into(), "s3cr3t".into())
        );
    }

    #[test]
    fn amqplain_accepts_byte_arrays_and_extra_fields() {
        // (RabbitMQ also lists `shortstr`, but 0-9-1 tables have no short-string
        // type tag: 's' is a short int, as in RabbitMQ's own parser.)
        let mut t = FieldTable::default();
        t.insert("LOGIN".into(), AMQPValue::LongString("bob".into()));
        t.insert(
            "PASSWORD".into(),
            AMQPValue::ByteArray(b"pw".to_vec().into()),
        );
        t.insert("OTHER".into(), AMQPValue::Boolean(true));
        assert_eq!(
            parse_response("AMQPLAIN", &table_body(&t)).unwrap(),
            ("bob".into(), "pw".into())
        );
    }

    #[test]
    fn amqplain_malformed() {
        let mut only_login = FieldTable::default();
        only_login.insert("LOGIN".into(), AMQPValue::LongString("bob".into()));
        let err = parse_response("AMQPLAIN", &table_body(&only_login)).unwrap_err();
        assert!(
            err.to_string().contains("missing LOGIN or PASSWORD"),
            "{err}"
        );

        let mut wrong_type = only_login.clone();
        wrong_type.insert("PASSWORD".into(), AMQPValue::LongInt(7));
        let err = parse_response("AMQPLAIN", &table_body(&wrong_type)).unwrap_err();
        assert!(err.to_string().contains("unsupported type"), "{err}");

        // With the length prefix (a client bug): not a valid table body.
        let mut full = only_login.clone();
        full.insert(
            "PASSWORD".into(),
            AMQPValue::LongString(LongString::from("pw")),
        );
        let (prefixed, _) = gen_field_table(&full)(Vec::new().into())
            .unwrap()
            .into_inner();
        assert!(parse_response("AMQPLAIN", &prefixed).is_err());

        // Truncated.
        let body = table_body(&full);
        let err = parse_response("AMQPLAIN", &body[..body.len() - 1]).unwrap_err();
        assert_eq!(err.reply_code(), ReplyCode::SyntaxError);
    }

    #[test]
    fn unknown_mechanism() {
        let err = parse_response("EXTERNAL", b"").unwrap_err();
        assert_eq!(err, AuthError::UnknownMechanism("EXTERNAL".into()));
        assert_eq!(err.reply_code(), ReplyCode::CommandInvalid);
        assert_eq!(
            err.reply_text("EXTERNAL"),
            "COMMAND_INVALID - unknown authentication mechanism 'EXTERNAL'"
        );
        assert!(!err.sends_close(true));
    }

    #[test]
    fn refusal_texts_match_rabbitmq() {
        let bad = AuthError::InvalidCredentials {
            username: "guest".into(),
        };
        assert_eq!(
            bad.reply_text("PLAIN"),
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
        );
        assert_eq!(
            bad.log_text("PLAIN"),
            "ACCESS_REFUSED - PLAIN login refused: user 'guest' - invalid credentials"
        );
        let loopback = AuthError::LoopbackOnly {
            username: "guest".into(),
        };
        // The wire text hides the reason; only the log says it.
        assert_eq!(
            loopback.reply_text("AMQPLAIN"),
            "ACCESS_REFUSED - Login was refused using authentication mechanism AMQPLAIN. For details see the broker logfile."
        );
        assert_eq!(
            loopback.log_text("AMQPLAIN"),
            "ACCESS_REFUSED - AMQPLAIN login refused: user 'guest' can only connect via localhost"
        );
        let e = loopback.to_amqp_error("PLAIN");
        assert_eq!(e.code, ReplyCode::AccessRefused);
        assert_eq!((e.class_id, e.method_id), (0, 0));
        assert!(e.text.starts_with("ACCESS_REFUSED - Login was refused"));
        assert!(loopback.sends_close(true));
        assert!(!loopback.sends_close(false));
        assert_eq!(loopback.username(), Some("guest"));
    }

    #[test]
    fn reply_text_is_a_short_string() {
        let long = "M".repeat(300);
        let text = AuthError::UnknownMechanism(long.clone()).reply_text(&long);
        assert_eq!(text.len(), 255);
        let text = AuthError::UnknownMechanism("é".repeat(200)).reply_text("x");
        assert!(text.len() <= 255);
    }
}
