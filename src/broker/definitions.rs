//! Durable definitions: the durable exchanges, queues and bindings of a vhost,
//! kept in one JSON file per vhost and rewritten atomically (temp file, fsync,
//! rename) after every change to a durable entity, so a crash leaves either the
//! old or the new file.

use amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of the definitions file layout.
pub const DEFINITIONS_VERSION: u32 = 1;

/// Everything durable in one vhost.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VhostDefinitions {
    /// Layout version.
    pub version: u32,
    /// Vhost name.
    pub vhost: String,
    /// Durable exchanges (not the predeclared ones).
    pub exchanges: Vec<ExchangeDef>,
    /// Durable, non-exclusive queues.
    pub queues: Vec<QueueDef>,
    /// Bindings whose source and destination are both durable.
    pub bindings: Vec<BindingDef>,
}

/// A durable exchange.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExchangeDef {
    /// Name.
    pub name: String,
    /// Type name.
    pub kind: String,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Internal flag.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// A durable queue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueDef {
    /// Name.
    pub name: String,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// A binding between durable entities.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BindingDef {
    /// Source exchange.
    pub source: String,
    /// Destination name.
    pub destination: String,
    /// `"queue"` or `"exchange"`.
    pub destination_type: String,
    /// Routing key.
    pub routing_key: String,
    /// Arguments.
    pub arguments: FieldTable,
}

/// Where a vhost's definitions live: `<data_dir>/vhosts/<hex of name>/definitions.json`.
pub fn path(data_dir: &Path, vhost: &str) -> PathBuf {
    let hex: String = vhost.bytes().map(|b| format!("{b:02x}")).collect();
    data_dir
        .join("vhosts")
        .join(if hex.is_empty() { "_".into() } else { hex })
        .join("definitions.json")
}

/// Writes the definitions atomically.
pub fn save(path: &Path, defs: &VhostDefinitions) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes = serde_json::to_vec_pretty(defs).map_err(std::io::Error::other)?;
    crate::store::definitions::save_atomic(path, &bytes)
}

/// Reads the definitions, if the file exists.
pub fn load(path: &Path) -> std::io::Result<Option<VhostDefinitions>> {
    match crate::store::definitions::load(path)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;

    #[test]
    fn round_trip_with_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "/");
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
        let defs = VhostDefinitions {
            version: DEFINITIONS_VERSION,
            vhost: "/".into(),
            exchanges: vec![ExchangeDef {
                name: "x".into(),
                kind: "topic".into(),
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            }],
            queues: vec![QueueDef {
                name: "q".into(),
                auto_delete: false,
                arguments: args.clone(),
            }],
            bindings: vec![BindingDef {
                source: "x".into(),
                destination: "q".into(),
                destination_type: "queue".into(),
                routing_key: "a.#".into(),
                arguments: args,
            }],
        };
        save(&p, &defs).unwrap();
        assert_eq!(load(&p).unwrap(), Some(defs));
        assert_eq!(load(&path(dir.path(), "other")).unwrap(), None);
    }
}
