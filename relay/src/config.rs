//! Relay settings: embedded defaults, overridden by a TOML file, overridden by flags.
//!
//! Zero configuration must give a working, safe relay (loopback, local data dir,
//! bounded everything); the file exists for the limits a self-hoster tunes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sotto_keys::PublicKey;

use crate::blobs::BlobLimits;
use crate::budget::{self, BufferLimits};
use crate::delivery::DeliveryLimits;
use crate::limits::RateLimits;
use crate::rendezvous::PairingLimits;
use crate::store::StoreLimits;

/// Default listening address: loopback only, so a first start exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7300";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "sotto-relay-data";

/// Everything the relay needs to run.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the key file and the store.
    pub data_dir: PathBuf,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Handshakes in flight at once (counted from a connection's first
    /// handshake message); when all are taken, a newer one closes the
    /// handshake that has run longest.
    pub max_handshakes: usize,
    /// Connections from one source address (an IPv6 /64) that have not
    /// finished their handshake, silent ones included; a newer one closes
    /// that address's oldest.
    pub max_handshakes_per_address: usize,
    /// Authenticated connections of one key at once; one more is refused.
    pub max_connections_per_key: usize,
    /// Authenticated connections from one source address at once; one more
    /// is refused.
    pub max_connections_per_address: usize,
    /// Time a new connection has to send its first handshake message; until
    /// it has, it holds no handshake slot.
    pub first_message_timeout: Duration,
    /// Time a new connection has to finish the Noise handshake.
    pub handshake_timeout: Duration,
    /// A connection silent for this long is closed (clients ping more often).
    pub idle_timeout: Duration,
    /// A connection whose client takes nothing of what the relay sends it
    /// for this long is closed: a client that stops reading must not hold
    /// its connection, and what is queued for it, for ever.
    pub write_timeout: Duration,
    /// How often expired mailbox entries are collected.
    pub gc_interval: Duration,
    /// Time allowed for in-flight work at shutdown.
    pub shutdown_grace: Duration,
    /// Mailbox limits.
    pub mailbox: StoreLimits,
    /// File cache limits.
    pub files: BlobLimits,
    /// Rate limits per client key.
    pub rate: RateLimits,
    /// Bytes held in memory for clients: per connection, key, address and
    /// over the whole relay.
    pub buffers: BufferLimits,
    /// What delivery links (no key proven) may do: first contact, token
    /// grace, rates per connection, address and first-contact recipient.
    pub delivery: DeliveryLimits,
    /// Rendezvous slots for `sotto pair`: expiry, slots in total and per
    /// address, opens per address per minute, message size.
    pub pairing: PairingLimits,
    /// If set, only these client keys may open owner links (a private
    /// relay): who owns a mailbox here, not who delivers to one.
    pub allow: Option<Vec<PublicKey>>,
    /// Where mailboxes are kept: the embedded file, or a NATS JetStream
    /// cluster shared by several relay nodes.
    pub store: StoreBackend,
}

/// The store backend a relay runs on (`[store]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// The redb file in the data dir (the default).
    Embedded,
    /// A NATS JetStream cluster shared by the relay's nodes.
    JetStream(crate::store::JetStreamConfig),
}

/// The NATS URL used when `backend = "nats"` names no `servers`.
pub const DEFAULT_NATS_SERVER: &str = "nats://127.0.0.1:4222";
/// Default `[store] replicas`.
pub const DEFAULT_NATS_REPLICAS: usize = 3;
/// Default `[store] prefix`.
pub const DEFAULT_NATS_PREFIX: &str = "SOTTO";

impl RelayConfig {
    /// The embedded defaults.
    pub fn defaults() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 7300))),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            max_connections: 16_384,
            max_handshakes: 512,
            max_handshakes_per_address: 64,
            max_connections_per_key: crate::occupancy::DEFAULT_MAX_PER_KEY,
            max_connections_per_address: crate::occupancy::DEFAULT_MAX_PER_ADDRESS,
            first_message_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(60),
            gc_interval: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(10),
            mailbox: StoreLimits::default(),
            files: BlobLimits::default(),
            rate: RateLimits::default(),
            buffers: BufferLimits::default(),
            delivery: DeliveryLimits::default(),
            pairing: PairingLimits::default(),
            allow: None,
            store: StoreBackend::Embedded,
        }
    }

    /// Defaults with a TOML file's settings applied.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Defaults with the settings of a config file's text applied; `path` is
    /// what errors name.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            line: e
                .span()
                .map(|s| {
                    text.as_bytes()[..s.start.min(text.len())]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count()
                        + 1
                })
                .unwrap_or(0),
            message: e.message().to_owned(),
        })?;
        let mut cfg = Self::defaults();
        file.apply(&mut cfg);
        Ok(cfg)
    }
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// The TOML file: every field optional, unknown fields refused (a typo in a
/// limit must not be silently ignored).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data: Option<PathBuf>,
    max_connections: Option<usize>,
    max_handshakes: Option<usize>,
    #[serde(default, deserialize_with = "at_least_one")]
    max_handshakes_per_address: Option<usize>,
    #[serde(default, deserialize_with = "at_least_one")]
    max_connections_per_key: Option<usize>,
    #[serde(default, deserialize_with = "at_least_one")]
    max_connections_per_address: Option<usize>,
    #[serde(default, deserialize_with = "longer_than_zero")]
    first_message_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "longer_than_zero")]
    handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "longer_than_zero")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "longer_than_zero")]
    write_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "longer_than_zero")]
    gc_interval: Option<Duration>,
    allow: Option<Vec<PublicKey>>,
    #[serde(default)]
    mailbox: MailboxFile,
    #[serde(default)]
    files: FilesFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    buffers: BuffersFile,
    #[serde(default)]
    delivery: DeliveryFile,
    #[serde(default)]
    store: StoreFile,
    #[serde(default)]
    pairing: PairingFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    backend: Option<BackendName>,
    #[serde(default, deserialize_with = "nats_urls")]
    servers: Option<Vec<String>>,
    #[serde(default, deserialize_with = "replicas")]
    replicas: Option<usize>,
    #[serde(default, deserialize_with = "nats_prefix")]
    prefix: Option<String>,
    credentials: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum BackendName {
    Embedded,
    Nats,
}

/// A list of at least one `nats://` or `tls://` URL.
fn nats_urls<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    let value: Option<Vec<String>> = Option::deserialize(deserializer)?;
    if let Some(urls) = &value {
        if urls.is_empty() {
            return Err(serde::de::Error::custom("must name at least one server"));
        }
        if let Some(bad) = urls
            .iter()
            .find(|u| !(u.starts_with("nats://") || u.starts_with("tls://")))
        {
            return Err(serde::de::Error::custom(format!(
                "{bad:?} is not a nats:// or tls:// URL"
            )));
        }
    }
    Ok(value)
}

/// JetStream's replica counts: 1, 3 or 5 (an even count buys nothing).
fn replicas<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    let value: Option<usize> = Option::deserialize(deserializer)?;
    if value.is_some_and(|v| ![1, 3, 5].contains(&v)) {
        return Err(serde::de::Error::custom("must be 1, 3 or 5"));
    }
    Ok(value)
}

/// A stream-name prefix: letters, digits and `_`, as NATS names allow.
fn nats_prefix<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let value: Option<String> = Option::deserialize(deserializer)?;
    if value.as_ref().is_some_and(|p| {
        p.is_empty() || p.len() > 32 || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }) {
        return Err(serde::de::Error::custom(
            "must be 1 to 32 letters, digits or _",
        ));
    }
    Ok(value)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairingFile {
    #[serde(default, deserialize_with = "longer_than_zero")]
    slot_expiry: Option<Duration>,
    max_slots: Option<usize>,
    max_slots_per_address: Option<usize>,
    opens_per_minute: Option<u32>,
    #[serde(default, deserialize_with = "a_pairing_message")]
    max_message_len: Option<usize>,
}

/// The size limit of pairing messages, which must let the largest one
/// (an answer with the longest invite) through, or no pairing could finish.
fn a_pairing_message<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    let value: Option<usize> = Option::deserialize(deserializer)?;
    let min = sotto_crypto::pairing::MAX_PAIR_MSG_LEN;
    if value.is_some_and(|v| v < min) {
        return Err(serde::de::Error::custom(format!(
            "must be at least {min} (the largest pairing message)"
        )));
    }
    Ok(value)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryFile {
    first_contact: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    token_grace: Option<Duration>,
    first_contact_max_messages: Option<u64>,
    first_contact_per_second: Option<u32>,
    first_contact_burst: Option<u32>,
    envelopes_per_second: Option<u32>,
    envelope_burst: Option<u32>,
    upload_bytes_per_second: Option<u64>,
    upload_burst_bytes: Option<u64>,
    address_envelopes_per_second: Option<u32>,
    address_envelope_burst: Option<u32>,
    address_upload_bytes_per_second: Option<u64>,
    address_upload_burst_bytes: Option<u64>,
}

/// A timeout or interval setting (humantime, e.g. `"90s"`) that must not be
/// zero: a zero timeout would end every connection at its first wait, and a
/// zero interval is none (the collector's timer refuses it). Refused where
/// it is written, with the file and line.
fn longer_than_zero<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let value: Option<Duration> = humantime_serde::deserialize(deserializer)?;
    if value.is_some_and(|d| d.is_zero()) {
        return Err(serde::de::Error::custom("must be longer than zero"));
    }
    Ok(value)
}

/// A limit on connections that must let at least one in.
fn at_least_one<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    let value: Option<usize> = Option::deserialize(deserializer)?;
    if value == Some(0) {
        return Err(serde::de::Error::custom("must be at least 1"));
    }
    Ok(value)
}

/// A byte budget, which must hold the largest message twice over, or a
/// connection could wait for room that never comes.
fn a_budget<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    let value: Option<usize> = Option::deserialize(deserializer)?;
    if value.is_some_and(|v| v < budget::MIN_BUDGET) {
        return Err(serde::de::Error::custom(format!(
            "must be at least {} (two of the largest messages)",
            budget::MIN_BUDGET
        )));
    }
    Ok(value)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuffersFile {
    #[serde(default, deserialize_with = "a_budget")]
    total: Option<usize>,
    #[serde(default, deserialize_with = "a_budget")]
    per_address: Option<usize>,
    #[serde(default, deserialize_with = "a_budget")]
    per_key: Option<usize>,
    #[serde(default, deserialize_with = "a_budget")]
    per_connection: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    envelopes_per_second: Option<u32>,
    envelope_burst: Option<u32>,
    upload_bytes_per_second: Option<u64>,
    upload_burst_bytes: Option<u64>,
    min_free_disk: Option<u64>,
    max_stored_bytes: Option<u64>,
}

/// A percentage of 1 to 100, refused where it is written otherwise.
fn percent<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    let value: Option<u64> = Option::deserialize(deserializer)?;
    match value {
        Some(p @ 1..=100) => Ok(Some(p as u8)),
        Some(_) => Err(serde::de::Error::custom(
            "must be a percentage from 1 to 100",
        )),
        None => Ok(None),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxFile {
    #[serde(default, with = "humantime_serde")]
    expiry: Option<Duration>,
    max_messages: Option<u64>,
    max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesFile {
    max_file_size: Option<u64>,
    max_bytes_per_recipient: Option<u64>,
    max_files_per_recipient: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    expiry: Option<Duration>,
    checkpoint_bytes: Option<u64>,
    #[serde(default, deserialize_with = "percent")]
    uploader_share_percent: Option<u8>,
    #[serde(default, deserialize_with = "longer_than_zero")]
    upload_idle_timeout: Option<Duration>,
    max_uploads_per_key: Option<u64>,
    max_uploads_per_address: Option<u64>,
}

impl FileConfig {
    fn apply(self, cfg: &mut RelayConfig) {
        macro_rules! set {
            ($($src:expr => $dst:expr),* $(,)?) => { $( if let Some(v) = $src { $dst = v; } )* };
        }
        set! {
            self.listen => cfg.listen,
            self.data => cfg.data_dir,
            self.max_connections => cfg.max_connections,
            self.max_handshakes => cfg.max_handshakes,
            self.max_handshakes_per_address => cfg.max_handshakes_per_address,
            self.max_connections_per_key => cfg.max_connections_per_key,
            self.max_connections_per_address => cfg.max_connections_per_address,
            self.first_message_timeout => cfg.first_message_timeout,
            self.handshake_timeout => cfg.handshake_timeout,
            self.idle_timeout => cfg.idle_timeout,
            self.write_timeout => cfg.write_timeout,
            self.gc_interval => cfg.gc_interval,
            self.mailbox.expiry => cfg.mailbox.expiry,
            self.mailbox.max_messages => cfg.mailbox.max_messages_per_recipient,
            self.mailbox.max_bytes => cfg.mailbox.max_bytes_per_recipient,
            self.files.max_file_size => cfg.files.max_file_size,
            self.files.max_bytes_per_recipient => cfg.files.max_bytes_per_recipient,
            self.files.max_files_per_recipient => cfg.files.max_files_per_recipient,
            self.files.expiry => cfg.files.expiry,
            self.files.checkpoint_bytes => cfg.files.checkpoint_bytes,
            self.files.uploader_share_percent => cfg.files.uploader_share_percent,
            self.files.upload_idle_timeout => cfg.files.upload_idle_timeout,
            self.files.max_uploads_per_key => cfg.files.max_uploads_per_key,
            self.files.max_uploads_per_address => cfg.files.max_uploads_per_address,
            self.limits.envelopes_per_second => cfg.rate.envelopes_per_second,
            self.limits.envelope_burst => cfg.rate.envelope_burst,
            self.limits.upload_bytes_per_second => cfg.rate.upload_bytes_per_second,
            self.limits.upload_burst_bytes => cfg.rate.upload_burst_bytes,
            self.limits.min_free_disk => cfg.mailbox.min_free_disk,
            self.buffers.total => cfg.buffers.total,
            self.buffers.per_address => cfg.buffers.per_address,
            self.buffers.per_key => cfg.buffers.per_key,
            self.buffers.per_connection => cfg.buffers.per_connection,
            self.delivery.first_contact => cfg.delivery.first_contact,
            self.delivery.token_grace => cfg.delivery.token_grace,
            self.delivery.first_contact_max_messages => cfg.delivery.first_contact_max_messages,
            self.delivery.first_contact_per_second => cfg.delivery.first_contact_rate.envelopes_per_second,
            self.delivery.first_contact_burst => cfg.delivery.first_contact_rate.envelope_burst,
            self.delivery.envelopes_per_second => cfg.delivery.per_connection.envelopes_per_second,
            self.delivery.envelope_burst => cfg.delivery.per_connection.envelope_burst,
            self.delivery.upload_bytes_per_second => cfg.delivery.per_connection.upload_bytes_per_second,
            self.delivery.upload_burst_bytes => cfg.delivery.per_connection.upload_burst_bytes,
            self.delivery.address_envelopes_per_second => cfg.delivery.per_address.envelopes_per_second,
            self.delivery.address_envelope_burst => cfg.delivery.per_address.envelope_burst,
            self.delivery.address_upload_bytes_per_second => cfg.delivery.per_address.upload_bytes_per_second,
            self.delivery.address_upload_burst_bytes => cfg.delivery.per_address.upload_burst_bytes,
            self.pairing.slot_expiry => cfg.pairing.slot_expiry,
            self.pairing.max_slots => cfg.pairing.max_slots,
            self.pairing.max_slots_per_address => cfg.pairing.max_slots_per_address,
            self.pairing.opens_per_minute => cfg.pairing.opens_per_minute,
            self.pairing.max_message_len => cfg.pairing.max_message_len,
        }
        if let Some(budget) = self.limits.max_stored_bytes {
            cfg.mailbox.max_stored_bytes = Some(budget);
        }
        if self.allow.is_some() {
            cfg.allow = self.allow;
        }
        let store = self.store;
        cfg.store = match store.backend {
            None | Some(BackendName::Embedded) => StoreBackend::Embedded,
            Some(BackendName::Nats) => StoreBackend::JetStream(crate::store::JetStreamConfig {
                servers: store
                    .servers
                    .unwrap_or_else(|| vec![DEFAULT_NATS_SERVER.to_owned()]),
                replicas: store.replicas.unwrap_or(DEFAULT_NATS_REPLICAS),
                prefix: store
                    .prefix
                    .unwrap_or_else(|| DEFAULT_NATS_PREFIX.to_owned()),
                credentials: store.credentials,
                tls_ca: store.tls_ca,
            }),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_section_chooses_the_backend_and_refuses_unknown_keys_with_a_line() {
        assert_eq!(RelayConfig::defaults().store, StoreBackend::Embedded);
        let cfg = RelayConfig::from_toml(
            "[store]\nbackend = \"nats\"\nservers = [\"nats://10.0.0.1:4222\", \"tls://10.0.0.2:4222\"]\nreplicas = 5\nprefix = \"RELAY_A\"\ncredentials = \"/etc/sotto/relay.creds\"\ntls_ca = \"/etc/sotto/ca.pem\"\n",
            Path::new("relay.toml"),
        )
        .unwrap();
        let StoreBackend::JetStream(js) = cfg.store else {
            panic!("not the nats backend: {:?}", cfg.store);
        };
        assert_eq!(js.servers, ["nats://10.0.0.1:4222", "tls://10.0.0.2:4222"]);
        assert_eq!((js.replicas, js.prefix.as_str()), (5, "RELAY_A"));
        assert_eq!(
            js.credentials.as_deref(),
            Some(Path::new("/etc/sotto/relay.creds"))
        );
        assert_eq!(js.tls_ca.as_deref(), Some(Path::new("/etc/sotto/ca.pem")));

        let cfg =
            RelayConfig::from_toml("[store]\nbackend = \"nats\"\n", Path::new("r.toml")).unwrap();
        let StoreBackend::JetStream(js) = cfg.store else {
            panic!("not the nats backend");
        };
        assert_eq!(js.servers, [DEFAULT_NATS_SERVER]);
        assert_eq!(js.replicas, DEFAULT_NATS_REPLICAS);

        for (bad, line) in [
            ("[store]\nbackend = \"etcd\"\n", 2),
            ("[store]\n\nreplicas = 2\n", 3),
            ("[store]\nservers = []\n", 2),
            ("[store]\nservers = [\"http://x\"]\n", 2),
            ("[store]\nprefix = \"a.b\"\n", 2),
            ("[store]\n\nserver = [\"nats://x\"]\n", 3),
        ] {
            let err = RelayConfig::from_toml(bad, Path::new("relay.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("relay.toml:{line}:")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn the_delivery_section_is_read_and_unknown_keys_refused_with_a_line() {
        let cfg = RelayConfig::from_toml(
            "[delivery]\nfirst_contact = false\ntoken_grace = \"1h\"\nfirst_contact_max_messages = 3\nfirst_contact_per_second = 2\nfirst_contact_burst = 4\nenvelopes_per_second = 5\nenvelope_burst = 6\nupload_bytes_per_second = 7\nupload_burst_bytes = 8\naddress_envelopes_per_second = 9\naddress_envelope_burst = 10\naddress_upload_bytes_per_second = 11\naddress_upload_burst_bytes = 12\n",
            Path::new("relay.toml"),
        )
        .unwrap();
        let d = cfg.delivery;
        assert!(!d.first_contact);
        assert_eq!(d.token_grace, Duration::from_secs(3600));
        assert_eq!(d.first_contact_max_messages, 3);
        assert_eq!(
            (
                d.first_contact_rate.envelopes_per_second,
                d.first_contact_rate.envelope_burst
            ),
            (2, 4)
        );
        let rates = |r: RateLimits| {
            (
                r.envelopes_per_second,
                r.envelope_burst,
                r.upload_bytes_per_second,
                r.upload_burst_bytes,
            )
        };
        assert_eq!(rates(d.per_connection), (5, 6, 7, 8));
        assert_eq!(rates(d.per_address), (9, 10, 11, 12));
        let err = RelayConfig::from_toml("[delivery]\n\nsender_key = 1\n", Path::new("relay.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("relay.toml:3:"), "{err}");
        assert_eq!(RelayConfig::defaults().delivery, DeliveryLimits::default());
    }

    #[test]
    fn the_pairing_section_is_read_and_unusable_values_refused() {
        let cfg = RelayConfig::from_toml(
            "[pairing]\nslot_expiry = \"2s\"\nmax_slots = 5\nmax_slots_per_address = 1\nopens_per_minute = 2\nmax_message_len = 2048\n",
            Path::new("relay.toml"),
        )
        .unwrap();
        assert_eq!(
            cfg.pairing,
            PairingLimits {
                slot_expiry: Duration::from_secs(2),
                max_slots: 5,
                max_slots_per_address: 1,
                opens_per_minute: 2,
                max_message_len: 2048,
            }
        );
        assert_eq!(RelayConfig::defaults().pairing, PairingLimits::default());
        assert_eq!(
            PairingLimits::default().slot_expiry,
            Duration::from_secs(600)
        );
        for (text, line, why) in [
            ("[pairing]\nmax_message_len = 100\n", 2, "at least 1024"),
            ("[pairing]\n\nslot_expiry = \"0s\"\n", 3, "longer than zero"),
            ("[pairing]\nslots = 3\n", 2, "unknown field"),
        ] {
            let err = RelayConfig::from_toml(text, Path::new("relay.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("relay.toml:{line}:")), "{err}");
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn zero_timeouts_and_intervals_are_refused_with_a_line() {
        for key in [
            "first_message_timeout",
            "handshake_timeout",
            "idle_timeout",
            "write_timeout",
            "gc_interval",
        ] {
            let text = format!("listen = \"127.0.0.1:1\"\n{key} = \"0s\"\n");
            let err = RelayConfig::from_toml(&text, Path::new("relay.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("relay.toml:2:"), "{err}");
            assert!(err.contains("longer than zero"), "{err}");
        }
        let cfg =
            RelayConfig::from_toml("gc_interval = \"1s\"\n", Path::new("relay.toml")).unwrap();
        assert_eq!(cfg.gc_interval, Duration::from_secs(1));
    }

    #[test]
    fn connection_limits_and_buffers_are_read_and_unusable_values_refused() {
        let text = "max_connections_per_key = 3\nmax_connections_per_address = 40\n\
                    max_handshakes_per_address = 7\nfirst_message_timeout = \"2s\"\n\
                    [buffers]\ntotal = 33554432\nper_address = 8388608\n\
                    per_key = 4194304\nper_connection = 1048576\n";
        let cfg = RelayConfig::from_toml(text, Path::new("relay.toml")).unwrap();
        assert_eq!(cfg.max_connections_per_key, 3);
        assert_eq!(cfg.max_connections_per_address, 40);
        assert_eq!(cfg.max_handshakes_per_address, 7);
        assert_eq!(cfg.first_message_timeout, Duration::from_secs(2));
        assert_eq!(
            cfg.buffers,
            BufferLimits {
                total: 32 << 20,
                per_address: 8 << 20,
                per_key: 4 << 20,
                per_connection: 1 << 20,
            }
        );
        for (text, line, why) in [
            ("\nmax_connections_per_key = 0\n", 2, "at least 1"),
            ("max_handshakes_per_address = 0\n", 1, "at least 1"),
            ("[buffers]\nper_connection = 1000\n", 2, "at least 524288"),
        ] {
            let err = RelayConfig::from_toml(text, Path::new("relay.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("relay.toml:{line}:")), "{err}");
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn file_overrides_defaults_and_typos_are_refused_with_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\nidle_timeout = \"90s\"\nwrite_timeout = \"45s\"\n[mailbox]\nexpiry = \"2days\"\nmax_messages = 5\n",
        )
        .unwrap();
        let cfg = RelayConfig::from_file(&path).unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.idle_timeout, Duration::from_secs(90));
        assert_eq!(cfg.write_timeout, Duration::from_secs(45));
        assert_eq!(cfg.mailbox.expiry, Duration::from_secs(2 * 86400));
        assert_eq!(cfg.mailbox.max_messages_per_recipient, 5);
        assert_eq!(cfg.max_connections, RelayConfig::defaults().max_connections);
        assert_eq!(cfg.files, BlobLimits::default());

        std::fs::write(
            &path,
            "[files]\nmax_file_size = 1000\nmax_bytes_per_recipient = 5000\nmax_files_per_recipient = 3\nexpiry = \"1day\"\ncheckpoint_bytes = 1048576\nuploader_share_percent = 50\nupload_idle_timeout = \"45s\"\nmax_uploads_per_key = 4\nmax_uploads_per_address = 9\n",
        )
        .unwrap();
        let cfg = RelayConfig::from_file(&path).unwrap();
        assert_eq!(
            cfg.files,
            BlobLimits {
                max_file_size: 1000,
                max_bytes_per_recipient: 5000,
                max_files_per_recipient: 3,
                uploader_share_percent: 50,
                upload_idle_timeout: Duration::from_secs(45),
                max_uploads_per_key: 4,
                max_uploads_per_address: 9,
                expiry: Duration::from_secs(86400),
                checkpoint_bytes: 1 << 20,
            }
        );
        assert_eq!(cfg.mailbox, StoreLimits::default());
        assert_eq!(cfg.rate, RateLimits::default());

        std::fs::write(
            &path,
            "[limits]\nenvelopes_per_second = 5\nenvelope_burst = 7\nupload_bytes_per_second = 1000\nupload_burst_bytes = 2000\nmin_free_disk = 0\nmax_stored_bytes = 123456\n",
        )
        .unwrap();
        let cfg = RelayConfig::from_file(&path).unwrap();
        assert_eq!(
            cfg.rate,
            RateLimits {
                envelopes_per_second: 5,
                envelope_burst: 7,
                upload_bytes_per_second: 1000,
                upload_burst_bytes: 2000,
            }
        );
        assert_eq!(cfg.mailbox.min_free_disk, 0);
        assert_eq!(cfg.mailbox.max_stored_bytes, Some(123_456));
        assert_eq!(RelayConfig::defaults().mailbox.max_stored_bytes, None);
        for bad in ["0", "101"] {
            std::fs::write(&path, format!("[files]\nuploader_share_percent = {bad}\n")).unwrap();
            let err = RelayConfig::from_file(&path).unwrap_err().to_string();
            assert!(err.contains("relay.toml:2:"), "{err}");
            assert!(err.contains("percentage"), "{err}");
        }
        std::fs::write(&path, "[files]\n\nupload_idle_timeout = \"0s\"\n").unwrap();
        let err = RelayConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("relay.toml:3:"), "{err}");
        std::fs::write(&path, "[files]\nmax_size = 1\n").unwrap();
        let err = RelayConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("relay.toml:2:"), "{err}");

        std::fs::write(&path, "listen = \"127.0.0.1:1\"\n\nmax_conections = 3\n").unwrap();
        let err = RelayConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("relay.toml:3:"), "{err}");
        assert!(err.contains("max_conections"), "{err}");
    }
}
