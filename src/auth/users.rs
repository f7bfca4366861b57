//! The user store: users from `[auth]` with RabbitMQ-compatible salted SHA-256
//! password hashes, the loopback-only rule, and vhost access.
//!
//! Built once at start from [`AuthConfig`] and shared read-only (`Arc`), so a
//! login takes no lock. Plain-text passwords from the config are hashed at
//! build time and dropped.

use super::AuthError;
use crate::config::AuthConfig;
use crate::protocol::AmqpError;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

const SALT_LEN: usize = 4;
const HASH_LEN: usize = 32;

/// A password hash in RabbitMQ's `rabbit_password_hashing_sha256` format:
/// `sha256(salt ++ utf8(password))` with a 4-byte random salt, exported as
/// `base64(salt ++ hash)` (the `password_hash` of a RabbitMQ definitions file).
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    salt: [u8; SALT_LEN],
    hash: [u8; HASH_LEN],
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt (`rabbit_password:hash/1`).
    pub fn new(password: &str) -> PasswordHash {
        let mut salt = [0u8; SALT_LEN];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        PasswordHash::with_salt(salt, password)
    }

    /// Hashes `password` with the given salt (`rabbit_password:salted_hash/3`).
    pub fn with_salt(salt: [u8; SALT_LEN], password: &str) -> PasswordHash {
        let mut hasher = Sha256::new();
        hasher.update(salt);
        hasher.update(password.as_bytes());
        PasswordHash {
            salt,
            hash: hasher.finalize().into(),
        }
    }

    /// Decodes `base64(salt ++ sha256)`; `None` if it is not 36 bytes of base64.
    pub fn from_base64(text: &str) -> Option<PasswordHash> {
        let bytes = BASE64.decode(text.trim()).ok()?;
        let (salt, hash) = bytes.split_first_chunk::<SALT_LEN>()?;
        Some(PasswordHash {
            salt: *salt,
            hash: (*hash).try_into().ok()?,
        })
    }

    /// Encodes as `base64(salt ++ sha256)`, importable by RabbitMQ.
    pub fn to_base64(&self) -> String {
        let mut bytes = [0u8; SALT_LEN + HASH_LEN];
        bytes[..SALT_LEN].copy_from_slice(&self.salt);
        bytes[SALT_LEN..].copy_from_slice(&self.hash);
        BASE64.encode(bytes)
    }

    /// Whether `password` matches, comparing digests in constant time.
    pub fn verify(&self, password: &str) -> bool {
        let candidate = PasswordHash::with_salt(self.salt, password);
        candidate
            .hash
            .iter()
            .zip(self.hash.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print hashes into logs.
        f.write_str("PasswordHash(..)")
    }
}

/// An authenticated (or authenticatable) user.
#[derive(Debug, Clone)]
pub struct User {
    name: String,
    tags: Vec<String>,
    vhosts: HashSet<String>,
    password_hash: PasswordHash,
}

impl User {
    /// A user with `password` hashed now, full permissions on `vhosts`.
    pub fn new(
        name: impl Into<String>,
        password: &str,
        tags: Vec<String>,
        vhosts: impl IntoIterator<Item = String>,
    ) -> User {
        User::with_hash(name, PasswordHash::new(password), tags, vhosts)
    }

    /// A user with an existing hash (e.g. from a RabbitMQ definitions export).
    pub fn with_hash(
        name: impl Into<String>,
        password_hash: PasswordHash,
        tags: Vec<String>,
        vhosts: impl IntoIterator<Item = String>,
    ) -> User {
        User {
            name: name.into(),
            tags,
            vhosts: vhosts.into_iter().collect(),
            password_hash,
        }
    }

    /// The user name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Management tags (`administrator`, `monitoring`, ...).
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The password hash.
    pub fn password_hash(&self) -> &PasswordHash {
        &self.password_hash
    }

    /// Whether the user has permissions on `vhost`.
    pub fn can_access_vhost(&self, vhost: &str) -> bool {
        self.vhosts.contains(vhost)
    }

    /// Vhosts the user has permissions on, in no particular order.
    pub fn vhosts(&self) -> impl Iterator<Item = &str> {
        self.vhosts.iter().map(String::as_str)
    }
}

/// All users the broker knows, plus the loopback-only list. Read-only after
/// construction; share it as `Arc<UserStore>`.
#[derive(Debug, Default)]
pub struct UserStore {
    users: HashMap<String, Arc<User>>,
    loopback_users: HashSet<String>,
    /// Hash checked when the user does not exist, so that a missing user
    /// costs the same time as a wrong password (no user enumeration by timing,
    /// as `rabbit_auth_backend_internal:dummy_sentinel_user/0`).
    dummy: PasswordHash,
}

impl Default for PasswordHash {
    fn default() -> Self {
        PasswordHash {
            salt: [0; SALT_LEN],
            hash: [0; HASH_LEN],
        }
    }
}

impl UserStore {
    /// Builds the store from `[auth]`, hashing each plain-text password.
    /// Later entries with the same name replace earlier ones (config
    /// validation rejects duplicates).
    pub fn from_config(auth: &AuthConfig) -> UserStore {
        let mut store = UserStore {
            loopback_users: auth.loopback_users.iter().cloned().collect(),
            ..UserStore::default()
        };
        for u in &auth.users {
            store.insert(User::new(
                u.name.clone(),
                &u.password,
                u.tags.clone(),
                u.vhosts.iter().cloned(),
            ));
        }
        store
    }

    /// Adds or replaces a user.
    pub fn insert(&mut self, user: User) {
        self.users.insert(user.name.clone(), Arc::new(user));
    }

    /// Marks `name` as allowed to connect from loopback addresses only.
    pub fn add_loopback_user(&mut self, name: impl Into<String>) {
        self.loopback_users.insert(name.into());
    }

    /// The user called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<User>> {
        self.users.get(name).cloned()
    }

    /// All users, in no particular order.
    pub fn users(&self) -> impl Iterator<Item = &Arc<User>> {
        self.users.values()
    }

    /// Whether `name` may only connect from loopback addresses.
    pub fn is_loopback_only(&self, name: &str) -> bool {
        self.loopback_users.contains(name)
    }

    /// Checks a user name and password from a client at `peer`.
    ///
    /// Order as in RabbitMQ: a blank password is refused before any lookup
    /// (`rabbit_auth_backend_internal:user_login_authentication/2`), then the
    /// password is checked, and only a correct login is then checked against
    /// `loopback_users` (`rabbit_reader:auth_phase/2`), so the loopback
    /// refusal does not reveal whether a password was right to anyone else.
    pub fn authenticate(
        &self,
        username: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<Arc<User>, AuthError> {
        if password.is_empty() {
            return Err(AuthError::BlankPassword {
                username: username.to_owned(),
            });
        }
        let Some(user) = self.users.get(username) else {
            let _ = self.dummy.verify(password);
            return Err(AuthError::InvalidCredentials {
                username: username.to_owned(),
            });
        };
        if !user.password_hash.verify(password) {
            return Err(AuthError::InvalidCredentials {
                username: username.to_owned(),
            });
        }
        if self.is_loopback_only(username) && !is_loopback(peer) {
            return Err(AuthError::LoopbackOnly {
                username: username.to_owned(),
            });
        }
        Ok(Arc::clone(user))
    }

    /// Whether `user` has permissions on `vhost`. The vhost's existence is the
    /// broker's business; RabbitMQ sends the same refusal for both
    /// (see [`vhost_access_refused`]).
    pub fn can_access_vhost(&self, user: &User, vhost: &str) -> bool {
        user.can_access_vhost(vhost)
    }

    /// [`UserStore::can_access_vhost`] as the error `connection.open` fails with.
    pub fn check_vhost_access(&self, user: &User, vhost: &str) -> Result<(), AmqpError> {
        if self.can_access_vhost(user, vhost) {
            Ok(())
        } else {
            Err(vhost_access_refused(vhost, user.name()))
        }
    }
}

/// `NOT_ALLOWED - access to vhost '/' refused for user 'bob'` (530, closes the
/// connection): RabbitMQ's reply to `connection.open` both for a vhost the user
/// has no permissions on and for a vhost that does not exist
/// (`rabbit_access_control:check_vhost_access/4`).
pub fn vhost_access_refused(vhost: &str, user: &str) -> AmqpError {
    AmqpError::not_allowed(format_args!(
        "access to vhost '{vhost}' refused for user '{user}'"
    ))
}

/// Loopback as RabbitMQ's `rabbit_net:is_loopback/1` sees it: 127.0.0.0/8,
/// `::1`, and IPv4-mapped 127.x addresses (`::ffff:127.0.0.1`).
pub fn is_loopback(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, UserConfig};
    use crate::protocol::ReplyCode;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    fn store() -> UserStore {
        let mut auth = Config::default().auth;
        auth.users.push(UserConfig {
            name: "bob".into(),
            password: "hunter2".into(),
            tags: vec![],
            vhosts: vec!["/".into(), "prod".into()],
        });
        UserStore::from_config(&auth)
    }

    #[test]
    fn hash_matches_rabbitmq_reference_vector() {
        // The worked example in RabbitMQ's "Credentials and Passwords" guide
        // (section "Computing Password Hash"): salt 908D C60A, password "test12".
        let h = PasswordHash::with_salt([0x90, 0x8d, 0xc6, 0x0a], "test12");
        let b64 = h.to_base64();
        assert_eq!(b64, "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR");
        let back = PasswordHash::from_base64(&b64).unwrap();
        assert_eq!(back, h);
        assert!(back.verify("test12"));
        assert!(!back.verify("test13"));
    }

    #[test]
    fn random_salts_differ_and_verify() {
        let a = PasswordHash::new("pw");
        let b = PasswordHash::new("pw");
        assert!(a.verify("pw") && b.verify("pw"));
        assert!(!a.verify("pW") && !a.verify(""));
        // 4 random bytes: a collision would be a 1 in 2^32 event.
        assert_ne!(a.to_base64(), b.to_base64());
        assert_eq!(a.to_base64().len(), 48);
        assert_eq!(format!("{a:?}"), "PasswordHash(..)");
    }

    #[test]
    fn from_base64_rejects_garbage() {
        assert!(PasswordHash::from_base64("not base64!").is_none());
        assert!(PasswordHash::from_base64(&BASE64.encode([0u8; 35])).is_none());
        assert!(PasswordHash::from_base64(&BASE64.encode([0u8; 37])).is_none());
        assert!(PasswordHash::from_base64(&BASE64.encode([0u8; 36])).is_some());
    }

    #[test]
    fn guest_from_loopback_only() {
        let s = store();
        let user = s.authenticate("guest", "guest", LOCAL).unwrap();
        assert_eq!(user.name(), "guest");
        assert_eq!(user.tags(), ["administrator"]);
        assert!(s
            .authenticate("guest", "guest", "::1".parse().unwrap())
            .is_ok());
        assert!(s
            .authenticate("guest", "guest", "::ffff:127.0.0.1".parse().unwrap())
            .is_ok());
        let err = s.authenticate("guest", "guest", REMOTE).unwrap_err();
        assert_eq!(
            err,
            AuthError::LoopbackOnly {
                username: "guest".into()
            }
        );
        assert_eq!(err.reply_code(), ReplyCode::AccessRefused);
        // A wrong password from afar is a credentials error, not a loopback one.
        assert!(matches!(
            s.authenticate("guest", "nope", REMOTE),
            Err(AuthError::InvalidCredentials { .. })
        ));
    }

    #[test]
    fn other_users_connect_from_anywhere() {
        let s = store();
        assert!(s.authenticate("bob", "hunter2", REMOTE).is_ok());
        assert!(!s.is_loopback_only("bob"));
    }

    #[test]
    fn refusals() {
        let s = store();
        assert_eq!(
            s.authenticate("bob", "wrong", LOCAL).unwrap_err(),
            AuthError::InvalidCredentials {
                username: "bob".into()
            }
        );
        assert_eq!(
            s.authenticate("nobody", "x", LOCAL).unwrap_err(),
            AuthError::InvalidCredentials {
                username: "nobody".into()
            }
        );
        let err = s.authenticate("bob", "", LOCAL).unwrap_err();
        assert_eq!(
            err,
            AuthError::BlankPassword {
                username: "bob".into()
            }
        );
        assert!(err
            .log_text("PLAIN")
            .starts_with("ACCESS_REFUSED - PLAIN login refused: user 'bob' attempted to log in with a blank password"));
    }

    #[test]
    fn vhost_access() {
        let s = store();
        let bob = s.get("bob").unwrap();
        let guest = s.get("guest").unwrap();
        assert!(s.can_access_vhost(&bob, "prod"));
        assert!(s.can_access_vhost(&guest, "/"));
        assert!(!s.can_access_vhost(&guest, "prod"));
        let err = s.check_vhost_access(&guest, "prod").unwrap_err();
        assert_eq!(err.code, ReplyCode::NotAllowed);
        assert!(err.is_hard());
        assert_eq!(
            err.text,
            "NOT_ALLOWED - access to vhost 'prod' refused for user 'guest'"
        );
        assert!(s.check_vhost_access(&bob, "prod").is_ok());
    }

    #[test]
    fn loopback_addresses() {
        for a in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(a.parse().unwrap()), "{a}");
        }
        for a in ["10.0.0.1", "0.0.0.0", "::", "::ffff:10.0.0.1", "fe80::1"] {
            assert!(!is_loopback(a.parse().unwrap()), "{a}");
        }
    }
}
