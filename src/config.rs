//! Broker configuration: TOML parsed into plain serde structs.
//!
//! Defaults come from the embedded `config/default.toml` (printed by
//! `warrenmq --print-default-config`). Every table denies unknown keys, so a typo
//! is a startup error that names the key. Nothing here touches other modules; the
//! resulting [`Config`] is handed down at construction time (no global singleton).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The embedded default configuration file, with a comment on every key.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/default.toml");

/// Everything that can go wrong while loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path of the file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type (the message names the key).
    #[error("invalid config{}: {message}", origin.as_deref().map(|p| format!(" in {p}")).unwrap_or_default())]
    Parse {
        /// File the text came from, if any.
        origin: Option<String>,
        /// The parser's message, which names the offending key.
        message: String,
    },
    /// A value that parses but is not usable.
    #[error("invalid value for '{key}': {message}")]
    Invalid {
        /// Dotted key path, e.g. `amqp.frame_max`.
        key: String,
        /// Why it is rejected.
        message: String,
    },
}

/// Root of the configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory for definitions, message segments and runtime files.
    pub data_dir: PathBuf,
    /// The AMQP listener and protocol limits.
    pub amqp: AmqpConfig,
    /// Users and authentication.
    pub auth: AuthConfig,
    /// Virtual hosts created at start.
    pub vhosts: VhostsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Durable storage.
    pub storage: StorageConfig,
    /// Memory and disk resource alarms.
    pub resources: ResourcesConfig,
}

/// `[resources]`: memory and disk watermarks (RabbitMQ's resource alarms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourcesConfig {
    /// Memory high watermark as a fraction of total RAM.
    pub vm_memory_high_watermark: f64,
    /// Memory high watermark in bytes; when non-zero it replaces the relative one.
    pub vm_memory_high_watermark_absolute: u64,
    /// Fraction of the high watermark above which queues page message bodies out of RAM.
    pub vm_memory_high_watermark_paging_ratio: f64,
    /// Free disk space (bytes) on the data directory's file system below which publishers block.
    pub disk_free_limit: u64,
    /// How often memory and disk are sampled, in milliseconds.
    pub check_interval_ms: u64,
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        ResourcesConfig {
            vm_memory_high_watermark: 0.4,
            vm_memory_high_watermark_absolute: 0,
            vm_memory_high_watermark_paging_ratio: 0.5,
            disk_free_limit: 50_000_000,
            check_interval_ms: 250,
        }
    }
}

/// `[storage]`: how durable messages reach the disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// When publisher confirms for persistent messages are sent.
    pub fsync: FsyncPolicy,
    /// Messages from the head of each durable queue whose bodies are kept in memory; bodies
    /// of persistent messages further back are read back from disk (0 = keep all in memory).
    pub queue_memory_window: usize,
    /// Ready messages from the head of each queue whose bodies stay in memory when they are
    /// not in a durable log (transient messages, or any message in a non-durable queue);
    /// further back they go to the queue's page log. 0 = only under memory pressure.
    pub transient_memory_window: usize,
}

/// `storage.fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Confirm only after the message is fsynced (group commit). The default.
    Always,
    /// Confirm after the write reaches the OS; a machine crash can lose confirmed messages.
    Never,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            fsync: FsyncPolicy::Always,
            queue_memory_window: 2048,
            transient_memory_window: 81_920,
        }
    }
}

/// `[amqp]`: listener address and protocol negotiation limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// Listen address.
    pub bind: IpAddr,
    /// Listen port (0 = an ephemeral port, useful in tests).
    pub port: u16,
    /// Highest channel number offered in `connection.tune`.
    pub channel_max: u16,
    /// Largest frame offered in `connection.tune`.
    pub frame_max: u32,
    /// Heartbeat interval offered in `connection.tune`, in seconds.
    pub heartbeat: u16,
    /// Maximum simultaneous connections (0 = unlimited).
    pub max_connections: usize,
    /// Largest accepted message body in bytes.
    pub max_message_size: u64,
    /// Seconds allowed for the handshake.
    pub handshake_timeout: u64,
    /// The `product` server property.
    pub product: String,
    /// Consumer acknowledgement timeout in milliseconds (RabbitMQ's
    /// `consumer_timeout`): a channel whose oldest unacknowledged delivery is
    /// older is closed with 406. 0 disables it. Queues and consumers can
    /// override it with `x-consumer-timeout`.
    pub consumer_timeout: u64,
}

/// `[auth]`: users and loopback restrictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Users allowed to connect from loopback addresses only.
    pub loopback_users: Vec<String>,
    /// Users created at start.
    pub users: Vec<UserConfig>,
}

/// One `[[auth.users]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// User name.
    pub name: String,
    /// Plain-text password.
    pub password: String,
    /// Management tags (informational).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Vhosts the user gets full permissions on.
    #[serde(default)]
    pub vhosts: Vec<String>,
}

/// `[vhosts]`: virtual hosts created at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VhostsConfig {
    /// Names of the vhosts.
    pub names: Vec<String>,
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing EnvFilter directive.
    pub level: String,
}

// The code defaults below must equal `config/default.toml`; the unit test
// `embedded_default_equals_code_defaults` keeps them in step. (`Config::default`
// cannot parse the embedded file itself: `#[serde(default)]` calls
// `Default::default()` while deserializing, which would recurse forever.)
impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            amqp: AmqpConfig::default(),
            auth: AuthConfig::default(),
            vhosts: VhostsConfig::default(),
            log: LogConfig::default(),
            storage: StorageConfig::default(),
            resources: ResourcesConfig::default(),
        }
    }
}
impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 5672,
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 60,
            max_connections: 0,
            max_message_size: 134_217_728,
            handshake_timeout: 10,
            product: "WarrenMQ".into(),
            consumer_timeout: 1_800_000,
        }
    }
}
impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            loopback_users: vec!["guest".into()],
            users: vec![UserConfig {
                name: "guest".into(),
                password: "guest".into(),
                tags: vec!["administrator".into()],
                vhosts: vec!["/".into()],
            }],
        }
    }
}
impl Default for VhostsConfig {
    fn default() -> Self {
        VhostsConfig {
            names: vec!["/".into()],
        }
    }
}
impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

impl Config {
    /// Parses TOML text; `origin` names the file in error messages.
    pub fn from_toml_str(text: &str, origin: Option<&str>) -> Result<Config, ConfigError> {
        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| ConfigError::Parse {
                origin: origin.map(str::to_owned),
                message: describe_parse_error(text, &e),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, Some(&path.display().to_string()))
    }

    /// Checks rules that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message,
            })
        };
        if self.amqp.frame_max != 0 && self.amqp.frame_max < 4096 {
            return invalid(
                "amqp.frame_max",
                format!("{} is below the AMQP minimum of 4096", self.amqp.frame_max),
            );
        }
        if self.amqp.max_message_size == 0 || self.amqp.max_message_size > 512 * 1024 * 1024 {
            return invalid(
                "amqp.max_message_size",
                format!(
                    "{} must be between 1 and 536870912",
                    self.amqp.max_message_size
                ),
            );
        }
        for (i, user) in self.auth.users.iter().enumerate() {
            if user.name.is_empty() {
                return invalid(&format!("auth.users[{i}].name"), "must not be empty".into());
            }
            for vhost in &user.vhosts {
                if !self.vhosts.names.contains(vhost) {
                    return invalid(
                        &format!("auth.users[{i}].vhosts"),
                        format!("vhost '{vhost}' is not listed in vhosts.names"),
                    );
                }
            }
        }
        for (i, user) in self.auth.users.iter().enumerate() {
            if self.auth.users[..i].iter().any(|u| u.name == user.name) {
                return invalid(
                    &format!("auth.users[{i}].name"),
                    format!("user '{}' is defined more than once", user.name),
                );
            }
        }
        let r = &self.resources;
        for (key, value) in [
            (
                "resources.vm_memory_high_watermark",
                r.vm_memory_high_watermark,
            ),
            (
                "resources.vm_memory_high_watermark_paging_ratio",
                r.vm_memory_high_watermark_paging_ratio,
            ),
        ] {
            if !value.is_finite() || value < 0.0 {
                return invalid(key, format!("{value} must be a number >= 0"));
            }
        }
        if r.check_interval_ms == 0 {
            return invalid("resources.check_interval_ms", "must be at least 1".into());
        }
        if self.vhosts.names.iter().any(|v| v.is_empty()) {
            return invalid("vhosts.names", "a vhost name must not be empty".into());
        }
        Ok(())
    }
}

/// One line naming the key path, the problem and the position, e.g.
/// `key 'amqp.port': invalid type: string "abc", expected u16 (line 2, column 8)`.
/// (toml's own `Display` spans several lines and names the key only in a snippet.)
fn describe_parse_error(text: &str, err: &serde_path_to_error::Error<toml::de::Error>) -> String {
    let message = err
        .inner()
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let path = err.path().to_string();
    let mut out = if path.is_empty() || path == "." {
        message
    } else {
        format!("key '{path}': {message}")
    };
    if let Some(span) = err.inner().span() {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        out.push_str(&format!(" (line {line}, column {column})"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_matches_code_defaults() {
        let c = Config::from_toml_str(DEFAULT_CONFIG_TOML, None).unwrap();
        assert_eq!(c.amqp.port, 5672);
        assert_eq!(c.amqp.frame_max, 131072);
        assert_eq!(c.amqp.channel_max, 2047);
        assert_eq!(c.amqp.heartbeat, 60);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        let code = AmqpConfig::default();
        assert_eq!(c.amqp.max_message_size, code.max_message_size);
        assert_eq!(c.amqp.product, code.product);
    }

    #[test]
    fn embedded_default_equals_code_defaults() {
        let parsed = Config::from_toml_str(DEFAULT_CONFIG_TOML, None).unwrap();
        assert_eq!(parsed, Config::default());
        assert_eq!(Config::from_toml_str("", None).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str("[amqp]\nprot = 1\n", Some("x.toml")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("prot"), "{text}");
        assert!(text.contains("x.toml"), "{text}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::from_toml_str("[amqp]\nport = \"abc\"\n", None).unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn parse_errors_are_one_line_with_the_key_path() {
        let err = Config::from_toml_str("[amqp]\nport = \"abc\"\n", Some("x.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid config in x.toml: key 'amqp.port': invalid type: string \"abc\", expected u16 (line 2, column 8)"
        );
        let err = Config::from_toml_str(
            "[[auth.users]]\nname = 'a'\npassword = 'b'\nvhostz = []\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("invalid config: key 'auth.users[0].vhostz': unknown field `vhostz`"),
            "{err}"
        );
        assert!(err.ends_with("(line 4, column 1)"), "{err}");
        let err = Config::from_toml_str("[amqp\n", None)
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn duplicate_user_rejected() {
        let text = "[[auth.users]]\nname = 'a'\npassword = 'b'\n[[auth.users]]\nname = 'a'\npassword = 'c'\n";
        let err = Config::from_toml_str(text, None).unwrap_err();
        assert!(err.to_string().contains("auth.users[1].name"), "{err}");
    }

    #[test]
    fn small_frame_max_rejected() {
        let err = Config::from_toml_str("[amqp]\nframe_max = 100\n", None).unwrap_err();
        assert!(err.to_string().contains("amqp.frame_max"), "{err}");
    }
}
