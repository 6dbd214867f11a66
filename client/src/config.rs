//! `config.toml`: who I am called, which relay I read from, whether history
//! is kept, and how large a file is received.
//!
//! The file is meant to be read and, carefully, edited by people, so it is
//! written with a comment header, updated in place (a person's comments and
//! layout survive `sotto relay set`), and every error names the file and the
//! line. Unknown keys are errors rather than silently ignored: a typo such as
//! `relay-key` would otherwise turn into a confusing "no relay configured".
//!
//! The relay key is a pin: it changes only through `sotto relay set` (or an
//! edit), never because a relay presented another key.

use std::io::{Read, Write};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use sotto_keys::{relay_addr::RelayAddr, RelayKey};
use toml_edit::DocumentMut;

/// Largest config file read, in bytes: it holds a few short values.
const MAX_CONFIG_LEN: u64 = 64 * 1024;

const HEADER: &str = "\
# sotto client settings, written by `sotto init` and `sotto relay set`.
#
# name      = the name you go by (optional, for your own reference)
# relay     = HOST:PORT of the relay you read your messages from
# relay_key = that relay's public key (sottorelay1...). It is pinned: a relay
#             that proves any other key is refused. Change it only on purpose,
#             with `sotto relay set HOST:PORT KEY`.
# relay_nodes = [\"HOST:PORT\", ...]: other addresses of the same relay (its
#             other nodes, same key), tried in order when `relay` does not
#             answer; `sotto relay set HOST:PORT KEY --node HOST:PORT` sets them.
# history   = false keeps no history of messages on this device (default
#             true: kept in history.sealed, sealed with the identity key).
#             Turning it off keeps what is there; `sotto history --clear`
#             removes it.
# max_download_size = largest file `sotto receive-all` downloads, in bytes
#             (default 17179869184, 16 GiB); a larger offer waits on the relay.
# first_contact = false refuses messages from anyone not given your token
#             (in an invite, or with your first message to them); default
#             true: taken, under the relay's tighter limits for strangers.
# draining  = relays read from before `sotto relay set` moved to another, as
#             [{ relay = \"HOST:PORT\", relay_key = \"sottorelay1...\" }]: still
#             read by `inbox`, `chat` and `receive-all` until they are empty.
";

/// Default for `max_download_size`: 16 GiB, twice the largest file a relay
/// on its defaults accepts (8 GiB), so any file such a relay takes is
/// received, while an offer that claims far more (the format allows 2^48
/// bytes) is refused before a byte is written.
pub const DEFAULT_MAX_DOWNLOAD_SIZE: u64 = 16 << 30;

/// The settings in `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The name I go by.
    pub name: Option<String>,
    /// The relay I read from.
    pub relay: Option<RelayAddr>,
    /// That relay's pinned key.
    pub relay_key: Option<RelayKey>,
    /// Other addresses of that relay (its other nodes), tried in order.
    #[serde(default)]
    pub relay_nodes: Vec<RelayAddr>,
    /// Whether messages are kept in the local history (default: yes).
    pub history: Option<bool>,
    /// Largest file `receive-all` downloads, in bytes.
    pub max_download_size: Option<NonZeroU64>,
    /// Relays read from before a move, read until they are empty.
    #[serde(default)]
    pub draining: Vec<OldRelay>,
    /// Whether my relay takes deliveries from senders without my token
    /// (default: yes, under the relay's tighter first-contact limits).
    pub first_contact: Option<bool>,
}

/// A relay read from before `sotto relay set` moved to another one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OldRelay {
    /// Where it listens.
    pub relay: RelayAddr,
    /// Its pinned key.
    pub relay_key: RelayKey,
}

impl OldRelay {
    /// It as a pin.
    pub fn pin(&self) -> RelayPin {
        RelayPin {
            addr: self.relay.clone(),
            key: self.relay_key,
            nodes: Vec::new(),
        }
    }
}

/// A relay and its pinned key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPin {
    /// Where it listens.
    pub addr: RelayAddr,
    /// The key it must prove.
    pub key: RelayKey,
    /// Other addresses of the same relay (its other nodes, proving the same
    /// key), tried in order after `addr` (see [`crate::dial`]).
    pub nodes: Vec<RelayAddr>,
}

impl RelayPin {
    /// The relay at `addr` proving `key`, with no other address known.
    pub fn new(addr: RelayAddr, key: RelayKey) -> Self {
        Self {
            addr,
            key,
            nodes: Vec::new(),
        }
    }

    /// `pin` with the other addresses this pin knows of the same relay
    /// (same key) added: a contact's relay that is also mine is reached on
    /// any of my relay's nodes.
    pub fn reaching(&self, pin: &RelayPin) -> RelayPin {
        if pin.key != self.key {
            return pin.clone();
        }
        let mut nodes = pin.nodes.clone();
        for addr in std::iter::once(&self.addr).chain(&self.nodes) {
            if *addr != pin.addr && !nodes.contains(addr) {
                nodes.push(addr.clone());
            }
        }
        RelayPin {
            addr: pin.addr.clone(),
            key: pin.key,
            nodes,
        }
    }
}

/// Parses a relay's address and key as typed (`init --relay --relay-key`,
/// `relay set HOST:PORT KEY`), with what each should look like.
pub fn parse_pin(addr: &str, key: &str) -> Result<RelayPin> {
    let addr: RelayAddr = addr.parse().with_context(|| {
        format!(
            "`{}` is not a relay address",
            crate::display::sanitize(addr)
        )
    })?;
    let key: RelayKey = key.parse().map_err(anyhow::Error::new).context(
        "invalid relay key (it should be the sottorelay1... key that sotto-relay prints)",
    )?;
    Ok(RelayPin {
        addr,
        key,
        nodes: Vec::new(),
    })
}

impl Config {
    /// Reads the config at `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self> {
        let Some(text) = read_text(path)? else {
            return Ok(Self::default());
        };
        Self::parse(&text, path)
    }

    /// Parses config text; errors say `PATH:LINE: what`.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| {
            anyhow!(
                "{}: {}",
                location(path, text, e.span().map(|s| s.start)),
                one_line(e.message())
            )
        })?;
        match (&config.relay, &config.relay_key) {
            (Some(_), None) => bail!(
                "{}: `relay` is set but `relay_key` is missing; run `sotto relay set HOST:PORT KEY`",
                path.display()
            ),
            (None, Some(_)) => bail!(
                "{}: `relay_key` is set but `relay` is missing; run `sotto relay set HOST:PORT KEY`",
                path.display()
            ),
            _ => Ok(config),
        }
    }

    /// Whether deliveries without my token are taken (first contacts).
    pub fn accepts_first_contact(&self) -> bool {
        self.first_contact.unwrap_or(true)
    }

    /// Whether messages are kept in the local history.
    pub fn keeps_history(&self) -> bool {
        self.history.unwrap_or(true)
    }

    /// Largest file `receive-all` downloads, in bytes.
    pub fn max_download_size(&self) -> u64 {
        self.max_download_size
            .map_or(DEFAULT_MAX_DOWNLOAD_SIZE, NonZeroU64::get)
    }

    /// The configured relay, or the standard error saying how to set one.
    pub fn relay(&self) -> Result<RelayPin> {
        match (&self.relay, &self.relay_key) {
            (Some(addr), Some(key)) => Ok(RelayPin {
                addr: addr.clone(),
                key: *key,
                nodes: self.relay_nodes.clone(),
            }),
            _ => Err(anyhow!(
                "no relay configured: run `sotto relay set HOST:PORT KEY`"
            )),
        }
    }
}

/// Sets values in `config.toml`, keeping whatever else the file holds
/// (comments included); creates the file, with its header, if missing.
///
/// `None` leaves a value as it is.
pub fn update(path: &Path, name: Option<&str>, relay: Option<&RelayPin>) -> Result<()> {
    apply(
        path,
        &Changes {
            name,
            relay,
            history: None,
            draining: None,
        },
    )
}

/// Values to set in `config.toml`; `None` leaves one as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Changes<'a> {
    /// `name`.
    pub name: Option<&'a str>,
    /// `relay` and `relay_key`.
    pub relay: Option<&'a RelayPin>,
    /// `history`.
    pub history: Option<bool>,
    /// `draining`, replaced whole (an empty list removes it).
    pub draining: Option<&'a [RelayPin]>,
}

/// Sets `changes` in `config.toml` as [`update`] does.
pub fn apply(path: &Path, changes: &Changes<'_>) -> Result<()> {
    let Changes {
        name,
        relay,
        history,
        draining,
    } = *changes;
    let text = read_text(path)?;
    let mut doc = match &text {
        Some(text) => text.parse::<DocumentMut>().map_err(|e| {
            anyhow!(
                "{}: {}",
                location(path, text, e.span().map(|s| s.start)),
                one_line(e.message())
            )
        })?,
        None => DocumentMut::new(),
    };
    if let Some(name) = name {
        doc["name"] = toml_edit::value(name);
    }
    if let Some(pin) = relay {
        doc["relay"] = toml_edit::value(pin.addr.to_string());
        doc["relay_key"] = toml_edit::value(pin.key.to_string());
        if pin.nodes.is_empty() {
            doc.remove("relay_nodes");
        } else {
            let nodes: toml_edit::Array = pin.nodes.iter().map(ToString::to_string).collect();
            doc["relay_nodes"] = toml_edit::value(nodes);
        }
    }
    if let Some(keep) = history {
        doc["history"] = toml_edit::value(keep);
    }
    if let Some(old) = draining {
        if old.is_empty() {
            doc.remove("draining");
        } else {
            let mut list = toml_edit::Array::new();
            for pin in old {
                let mut t = toml_edit::InlineTable::new();
                t.insert("relay", pin.addr.to_string().into());
                t.insert("relay_key", pin.key.to_string().into());
                list.push(t);
            }
            doc["draining"] = toml_edit::value(list);
        }
    }
    let mut out = doc.to_string();
    if text.is_none() {
        out = format!("{HEADER}\n{out}");
    }
    // What we write must read back: refuse to leave a file we cannot load.
    Config::parse(&out, path)?;
    write_atomic(path, out.as_bytes())
}

fn read_text(path: &Path) -> Result<Option<String>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_CONFIG_LEN + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?;
    if text.len() as u64 > MAX_CONFIG_LEN {
        bail!(
            "{} is larger than {MAX_CONFIG_LEN} bytes; it is not a sotto config",
            path.display()
        );
    }
    Ok(Some(text))
}

/// `PATH:LINE` for a byte offset into `text`, or `PATH` without one.
fn location(path: &Path, text: &str, offset: Option<usize>) -> String {
    match offset {
        Some(at) => {
            let at = at.min(text.len());
            let line = text.as_bytes()[..at]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            format!("{}:{line}", path.display())
        }
        None => path.display().to_string(),
    }
}

fn one_line(message: &str) -> String {
    message.trim().replace('\n', "; ")
}

/// Replaces `path` atomically: a temporary file in the same directory is
/// written, synced and renamed over it, so a crash leaves the old file or the
/// new one, never half of one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let context = || format!("cannot write {}", path.display());
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).with_context(context)?;
    tmp.write_all(bytes).with_context(context)?;
    tmp.as_file().sync_all().with_context(context)?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(context)?;
    if let Ok(d) = std::fs::File::open(&dir) {
        // Best effort: makes the rename itself durable.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_keys::PublicKey;

    fn pin() -> RelayPin {
        RelayPin {
            addr: "relay.example.org:7300".parse().unwrap(),
            key: RelayKey::from(PublicKey::from_bytes([4; 32])),
            nodes: Vec::new(),
        }
    }

    #[test]
    fn a_relays_other_nodes_are_kept_and_read_back_and_dropped_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let mut with_nodes = pin();
        with_nodes.nodes = vec![
            "node2.example.org:7300".parse().unwrap(),
            "[2001:db8::1]:7300".parse().unwrap(),
        ];
        update(&path, None, Some(&with_nodes)).unwrap();
        assert_eq!(Config::load(&path).unwrap().relay().unwrap(), with_nodes);
        update(&path, None, Some(&pin())).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\nrelay_nodes ="), "{text}");
        assert_eq!(Config::load(&path).unwrap().relay().unwrap(), pin());
    }

    #[test]
    fn my_relays_nodes_stand_in_for_it_and_for_no_other_relay() {
        let mut mine = pin();
        mine.nodes = vec!["node2.example.org:7300".parse().unwrap()];
        // A contact's route to my relay, under its first address.
        let route = RelayPin::new(mine.addr.clone(), mine.key);
        assert_eq!(mine.reaching(&route), mine);
        // Under the second: the first becomes the other node.
        let second = RelayPin::new(mine.nodes[0].clone(), mine.key);
        assert_eq!(mine.reaching(&second).nodes, [mine.addr.clone()]);
        // Another relay (another key) at my relay's address gains nothing.
        let other = RelayPin::new(mine.addr.clone(), RelayKey::from_bytes([9; 32]));
        assert_eq!(mine.reaching(&other), other);
    }

    #[test]
    fn round_trip_through_the_file_keeps_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
        update(&path, Some("alice"), None).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# sotto client settings"), "{text}");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.name.as_deref(), Some("alice"));
        assert!(c
            .relay()
            .unwrap_err()
            .to_string()
            .starts_with("no relay configured"));

        std::fs::write(&path, format!("{text}# my own note\n")).unwrap();
        update(&path, None, Some(&pin())).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.relay().unwrap(), pin());
        assert_eq!(c.name.as_deref(), Some("alice"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# my own note"), "{text}");
        assert!(text.contains("relay_key = \"sottorelay1"), "{text}");
    }

    #[test]
    fn old_relays_are_kept_until_drained_and_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        update(&path, Some("alice"), Some(&pin())).unwrap();
        let other = RelayPin {
            addr: "127.0.0.1:9".parse().unwrap(),
            key: RelayKey::from(PublicKey::from_bytes([5; 32])),
            nodes: Vec::new(),
        };
        let both = [pin(), other.clone()];
        let changes = Changes {
            draining: Some(&both),
            ..Changes::default()
        };
        apply(&path, &changes).unwrap();
        let c = Config::load(&path).unwrap();
        let pins: Vec<RelayPin> = c.draining.iter().map(OldRelay::pin).collect();
        assert_eq!(pins, both);
        assert_eq!(c.relay().unwrap(), pin(), "the pin itself is unchanged");
        let changes = Changes {
            draining: Some(&[]),
            ..Changes::default()
        };
        apply(&path, &changes).unwrap();
        assert!(Config::load(&path).unwrap().draining.is_empty());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.lines().any(|l| l.starts_with("draining")), "{text}");
        let err = Config::parse("draining = [{ relay = \"h:1\" }]\n", &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("relay_key"), "{err}");
    }

    #[test]
    fn a_broken_line_is_named_with_the_file() {
        let path = Path::new("/h/config.toml");
        let text = "# comment\nname = \"a\"\nrelay = \"nope\"\nrelay_key = \"x\"\n";
        let err = Config::parse(text, path).unwrap_err().to_string();
        assert!(err.starts_with("/h/config.toml:3: "), "{err}");
        assert!(err.contains("invalid relay address"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        let err = Config::parse("name = \"a\"\n\nrelay-key = \"x\"\n", path)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/h/config.toml:3: unknown field `relay-key`"),
            "{err}"
        );

        let err = Config::parse("name = \n", path).unwrap_err().to_string();
        assert!(err.starts_with("/h/config.toml:1: "), "{err}");
    }

    #[test]
    fn history_and_download_size_have_defaults_and_refuse_nonsense() {
        let path = Path::new("/h/config.toml");
        let c = Config::parse("", path).unwrap();
        assert!(c.keeps_history());
        assert_eq!(c.max_download_size(), DEFAULT_MAX_DOWNLOAD_SIZE);
        let c = Config::parse("history = false\nmax_download_size = 1000\n", path).unwrap();
        assert!(!c.keeps_history());
        assert_eq!(c.max_download_size(), 1000);
        let err = Config::parse("name = \"a\"\nmax_download_size = 0\n", path)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/h/config.toml:2: "), "{err}");
        let err = Config::parse("history = \"no\"\n", path)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/h/config.toml:1: "), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        apply(
            &path,
            &Changes {
                name: Some("a"),
                history: Some(false),
                ..Changes::default()
            },
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("# history   = false keeps no history"),
            "{text}"
        );
        assert!(text.contains("\nhistory = false\n"), "{text}");
        assert!(!Config::load(&path).unwrap().keeps_history());
    }

    #[test]
    fn a_relay_without_its_key_is_refused() {
        let err = Config::parse("relay = \"h:1\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`relay_key` is missing"), "{err}");
    }

    #[test]
    fn an_unparsable_file_is_not_overwritten_by_update() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "name = [\n").unwrap();
        let err = update(&path, None, Some(&pin())).unwrap_err().to_string();
        assert!(err.contains("config.toml:"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "name = [\n");
    }

    #[test]
    fn relay_arguments_are_checked_with_a_hint() {
        let key = RelayKey::from_bytes([3; 32]).to_string();
        let pin = parse_pin("relay.example.org:7300", &key).unwrap();
        assert_eq!(pin.addr.port(), 7300);
        let err = format!("{:#}", parse_pin("nope", &key).unwrap_err());
        assert!(
            err.starts_with("`nope` is not a relay address: invalid relay address"),
            "{err}"
        );
        let user = PublicKey::from_bytes([3; 32]).to_string();
        let err = format!("{:#}", parse_pin("h:1", &user).unwrap_err());
        assert!(
            err.contains("this is a contact key, not a relay key"),
            "{err}"
        );
    }
}
