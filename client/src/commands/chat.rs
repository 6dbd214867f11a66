//! `sotto chat [NAME]`: live chat over one long-lived connection.
//!
//! Line mode (the one mode so far, also used on a terminal): each line of
//! stdin is sealed and sent to the current partner, a contact or a group;
//! every incoming message is printed on stdout as one line, `[time] NAME: TEXT`
//! (`[time] GROUP/NAME: TEXT` in a group), flushed at once. Notices (reconnecting,
//! command answers, warnings) go to stderr, so stdout carries messages only.
//!
//! The connection asks for the mailbox with `Fetch { live: true }`: what waited
//! comes first, in order, then the relay pushes new envelopes as they arrive.
//! Each is handled exactly as `sotto inbox` handles it (same opening,
//! duplicate suppression, unknown-sender and neutralising rules, see
//! [`super::inbox::process`]): printed, remembered, then acknowledged.
//!
//! Sending: a typed message is sealed once (one envelope per recipient) and
//! kept in an outbox until the relay answers `Stored`. When the connection
//! drops, or the relay restarts, the client reconnects with a doubling backoff
//! ([`BACKOFF_START`] to [`BACKOFF_MAX`]) and sends the outbox again, the
//! same envelope bytes: if the relay had stored one already, the receiver's
//! seen store shows it once. Lines typed while disconnected wait in the outbox.
//! A keepalive `Ping` goes out every [`PING_EVERY`]; a relay not heard from for
//! [`DEAD_AFTER`] counts as gone.
//!
//! End: EOF on stdin or `/quit`, once the waiting mailbox has been shown,
//! every send has been stored and every acknowledgement answered.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_bytes::ByteBuf;
use sotto_crypto::envelope::{self, Body, Content};
use sotto_crypto::link::{LinkReader, LinkWriter};
use sotto_crypto::wire::{ClientMsg, ErrorCode, RelayMsg};
use sotto_crypto::EnvelopeError;
use sotto_keys::{Contact, ContactBook, PublicKey, RelayAddr, SecretKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::contact::{list_lines, unknown_contact};
use super::inbox::{self, Files};
use super::send::{check_text, explain, MAX_TEXT_LEN};
use super::{block_on, note, warn, Ctx};
use crate::cli::ChatArgs;
use crate::config::{Config, RelayPin};
use crate::history::{self, History};
use crate::identity;
use crate::relay_client::{self, recv_from, refused, write_to, Delivery, RelayConn, RelayError};
use crate::seen::{self, SeenStore};

/// How often a keepalive goes to the relay.
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// Silence from the relay after which the connection counts as dead (the
/// relay answers every `Ping`, so this is more than two missed answers).
pub const DEAD_AFTER: Duration = Duration::from_secs(75);
/// First wait before reconnecting.
pub const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest wait between reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

const HELP: &[&str] = &[
    "type a line and press Enter to send it to the current partner",
    "/to NAME     talk to the contact or group NAME from now on",
    "/contacts    list contacts and groups",
    "/history     the messages exchanged with the current partner (on stderr)",
    "/help        this help",
    "/quit        leave once every message sent is stored (as end of input does)",
    "//text       send a line that starts with /",
];

/// Who typed lines go to.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// One contact.
    Contact(Contact),
    /// A group: one envelope per member.
    Group {
        /// The group's name in my contacts.
        name: String,
        /// Its members.
        members: Vec<Contact>,
    },
}

impl Target {
    /// Its name in my contacts.
    pub(crate) fn name(&self) -> &str {
        match self {
            Target::Contact(c) => c.name.as_str(),
            Target::Group { name, .. } => name,
        }
    }
}

/// The contact (first) or group called `name`; only a group when
/// `group_only`.
pub(crate) fn resolve(book: &ContactBook, name: &str, group_only: bool) -> Result<Target> {
    if !group_only {
        if let Some(c) = book.get(name) {
            return Ok(Target::Contact(c.clone()));
        }
    }
    if let Some(g) = book.group(name) {
        let members: Vec<Contact> = g
            .members
            .iter()
            .filter_map(|m| book.get(m.as_str()).cloned())
            .collect();
        if members.is_empty() {
            bail!("the group '{name}' has no members; list them in contacts.toml under [groups.{name}] members = [...]");
        }
        return Ok(Target::Group {
            name: g.name.to_string(),
            members,
        });
    }
    if group_only {
        if book.get(name).is_some() {
            bail!("'{name}' is a contact, not a group; leave out --group");
        }
        let name = crate::display::sanitize(name);
        bail!("unknown group '{name}': define it in contacts.toml as [groups.{name}] members = [\"NAME\", ...]");
    }
    Err(unknown_contact(name))
}

/// One envelope for one recipient.
#[derive(Debug, Clone)]
pub(crate) struct Sealed {
    /// The recipient's key (the relay's address for it).
    pub to: PublicKey,
    /// Their name in my contacts.
    pub name: String,
    /// The sealed envelope.
    pub envelope: Vec<u8>,
}

/// Seals `text` for `target`: one envelope per recipient (never to myself),
/// all carrying the same body, so a group message has one id. Returns the
/// envelopes and the history entry for the message.
pub(crate) fn seal_to(
    me: &SecretKey,
    target: &Target,
    text: String,
) -> Result<(Vec<Sealed>, history::Entry)> {
    check_text(&text)?;
    let mine = me.public();
    let (content, peer, group, recipients) = match target {
        Target::Contact(c) => (
            Content::Text(text.clone()),
            Some(c.key),
            None,
            vec![c.clone()],
        ),
        Target::Group { name, members } => (
            Content::GroupText {
                group: name.clone(),
                text: text.clone(),
            },
            None,
            Some(name.clone()),
            members.iter().filter(|c| c.key != mine).cloned().collect(),
        ),
    };
    if recipients.is_empty() {
        bail!(
            "nobody to send to: you are the only member of '{}'",
            target.name()
        );
    }
    let body = Body::new(content);
    let mut sealed = Vec::with_capacity(recipients.len());
    for c in recipients {
        let envelope = envelope::seal(me, &c.key, &body).map_err(|e| match e {
            // Only a group message can get here: its group name takes room.
            EnvelopeError::TooLarge { .. } => anyhow!(
                "message too long: with the group name, at most about {} bytes of text fit in one message",
                MAX_TEXT_LEN.saturating_sub(target.name().len() + 3)
            ),
            other => anyhow!("cannot seal the message: {other}"),
        })?;
        sealed.push(Sealed {
            to: c.key,
            name: c.name.to_string(),
            envelope,
        });
    }
    let entry = history::Entry {
        at_ms: body.sent_at_ms,
        direction: history::Direction::Sent,
        peer,
        group,
        text,
    };
    Ok((sealed, entry))
}

/// Runs `sotto chat`.
pub fn run(ctx: &Ctx, args: ChatArgs) -> Result<()> {
    ctx.home.require_identity()?;
    let book = ContactBook::load(&ctx.home.contacts())?;
    let target = match &args.name {
        Some(name) => Some(resolve(&book, name, args.group)?),
        None if args.group => bail!("--group needs the group's NAME"),
        None => None,
    };
    let pin = Config::load(&ctx.home.config())?.relay()?;
    let me = identity::load(&ctx.home, ctx.passphrase_file.as_deref())?;
    let store = SeenStore::open(&ctx.home.seen(), seen::now_secs())?;

    if std::io::stdin().is_terminal() {
        note("line mode: type a message and press Enter to send it; /help lists the commands");
    }
    let (tx, rx) = mpsc::channel(64);
    spawn_stdin_reader(tx);
    let mut chat = Chat {
        me: Arc::new(me),
        pin,
        book,
        store,
        history: History::at(ctx.home.history()),
        target,
        outbox: Vec::new(),
        acks_pending: HashSet::new(),
        next_req: 1,
        input_done: false,
        drained: false,
        noted_unknown: HashSet::new(),
        announced: HashSet::new(),
    };
    block_on(chat.run(rx))?
}

/// A line of stdin, as the reader thread saw it.
#[derive(Debug)]
enum Input {
    Line(String),
    NotUtf8,
}

/// Reads stdin on a thread of its own (reading a pipe or a terminal blocks),
/// line by line; the channel closes at end of input.
fn spawn_stdin_reader(tx: mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        // A line longer than any message is cut here and refused later
        // instead of growing memory without bound.
        let limit = (MAX_TEXT_LEN + 2) as u64;
        loop {
            let mut buf = Vec::new();
            match (&mut stdin).take(limit + 1).read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if buf.last() == Some(&b'\n') {
                buf.pop();
                if buf.last() == Some(&b'\r') {
                    buf.pop();
                }
            } else if buf.len() as u64 > limit {
                // Skip the rest of the overlong line.
                let mut rest = Vec::new();
                let _ = stdin.read_until(b'\n', &mut rest);
            }
            let input = match String::from_utf8(buf) {
                Ok(line) => Input::Line(line),
                Err(_) => Input::NotUtf8,
            };
            if tx.blocking_send(input).is_err() {
                return;
            }
        }
    });
}

/// A sealed envelope not yet stored by the relay.
#[derive(Debug)]
struct Outgoing {
    sealed: Sealed,
    /// The `Send` request number on the current connection, once sent on it.
    req: Option<u32>,
}

/// Why a connection ended.
enum Stop {
    /// The link failed: reconnect (unless the error says it is pointless).
    Link(RelayError),
    /// Something local failed (stdout, the seen store): end the chat.
    Fatal(anyhow::Error),
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Self {
        Stop::Fatal(e)
    }
}

impl From<RelayError> for Stop {
    fn from(e: RelayError) -> Self {
        Stop::Link(e)
    }
}

/// Errors that reconnecting cannot fix.
fn is_fatal(e: &RelayError) -> bool {
    matches!(
        e,
        RelayError::KeyMismatch { .. }
            | RelayError::Version { .. }
            | RelayError::Refused {
                code: ErrorCode::NotAllowed | ErrorCode::BadRequest,
                ..
            }
    )
}

/// Refusals of a `Send` that are worth another try on a new connection.
fn is_retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Internal
            | ErrorCode::ShuttingDown
            | ErrorCode::RateLimited
            | ErrorCode::OutOfSpace
    )
}

struct Chat {
    me: Arc<SecretKey>,
    pin: RelayPin,
    book: ContactBook,
    store: SeenStore,
    history: History,
    target: Option<Target>,
    /// Envelopes not yet stored, in the order they were typed.
    outbox: Vec<Outgoing>,
    /// `Ack` requests on the current connection not yet answered.
    acks_pending: HashSet<u32>,
    next_req: u32,
    /// Stdin ended or `/quit` was typed.
    input_done: bool,
    /// The waiting mailbox has been shown on the current connection.
    drained: bool,
    /// Unknown senders already pointed out.
    noted_unknown: HashSet<PublicKey>,
    /// Relay ids of file offers announced: they stay on the relay for
    /// `receive-all`, so they come again on every connection.
    announced: HashSet<u64>,
}

impl Chat {
    fn finished(&self) -> bool {
        self.input_done && self.drained && self.outbox.is_empty() && self.acks_pending.is_empty()
    }

    fn req(&mut self) -> u32 {
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        req
    }

    async fn run(&mut self, mut inputs: mpsc::Receiver<Input>) -> Result<()> {
        let mut delay = BACKOFF_START;
        let mut connected_once = false;
        let mut said_waiting = false;
        loop {
            let (pin, me) = (self.pin.clone(), self.me.clone());
            let attempt = async move { relay_client::connect(&pin, &me).await };
            tokio::pin!(attempt);
            let conn = loop {
                tokio::select! {
                    r = &mut attempt => break r,
                    input = inputs.recv(), if !self.input_done => self.on_input(input),
                }
            };
            let conn = match conn {
                Ok(conn) => conn,
                // The first connection says at once whether the relay is
                // there at all, as every other command does.
                Err(e) if !connected_once || is_fatal(&e) => return Err(e.into()),
                Err(e) => {
                    tracing::debug!(error = %e, "reconnecting failed");
                    if self.input_done && !self.outbox.is_empty() && !said_waiting {
                        said_waiting = true;
                        note(&format!(
                            "{} message(s) not yet stored by the relay: waiting for it to come back (Ctrl-C gives up on them)",
                            self.outbox.len()
                        ));
                    }
                    self.wait(delay, &mut inputs).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            if connected_once {
                note("reconnected to the relay");
            } else {
                // Said once connected, so that a relay that cannot be
                // reached is the one line on stderr, as for other commands.
                match &self.target {
                    Some(t) => note(&format!("connected; talking to {}", t.name())),
                    None => note("connected; `/to NAME` chooses whom to write to"),
                }
            }
            connected_once = true;
            delay = BACKOFF_START;
            match self.session(conn, &mut inputs).await {
                Ok(()) => return Ok(()),
                Err(Stop::Fatal(e)) => return Err(e),
                Err(Stop::Link(e)) if is_fatal(&e) => return Err(e.into()),
                Err(Stop::Link(e)) => {
                    note(&format!(
                        "{}; reconnecting",
                        crate::error_line(&anyhow::Error::new(e))
                    ));
                    self.wait(delay, &mut inputs).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Waits `delay`, taking typed lines meanwhile.
    async fn wait(&mut self, delay: Duration, inputs: &mut mpsc::Receiver<Input>) {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return,
                input = inputs.recv(), if !self.input_done => self.on_input(input),
            }
        }
    }

    async fn session<R, W>(
        &mut self,
        conn: RelayConn<R, W>,
        inputs: &mut mpsc::Receiver<Input>,
    ) -> Result<(), Stop>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin,
    {
        let (reader, mut writer, addr) = conn.into_parts();
        let (tx, mut from_relay) = mpsc::channel(16);
        let _reader = AbortOnDrop(tokio::spawn(read_loop(reader, addr.clone(), tx)));
        self.drained = false;
        self.acks_pending.clear();
        write_to(&mut writer, &addr, &ClientMsg::Fetch { live: true }, true).await?;
        // Everything not yet stored goes (again) on this connection.
        for o in &mut self.outbox {
            o.req = None;
        }
        self.send_pending(&mut writer, &addr).await?;

        let start = Instant::now() + PING_EVERY;
        let mut ping = tokio::time::interval_at(start, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        loop {
            if self.finished() {
                let _ = tokio::time::timeout(Duration::from_secs(2), writer.shutdown()).await;
                return Ok(());
            }
            tokio::select! {
                msg = from_relay.recv() => {
                    let msg = match msg {
                        Some(Ok(msg)) => msg,
                        Some(Err(e)) => return Err(Stop::Link(e)),
                        None => return Err(Stop::Link(RelayError::Closed { addr })),
                    };
                    last_heard = Instant::now();
                    self.on_relay(msg, &mut writer, &addr).await?;
                }
                input = inputs.recv(), if !self.input_done => {
                    self.on_input(input);
                    self.send_pending(&mut writer, &addr).await?;
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > DEAD_AFTER {
                        return Err(Stop::Link(RelayError::NoAnswer { addr }));
                    }
                    write_to(&mut writer, &addr, &ClientMsg::Ping, true).await?;
                }
            }
        }
    }

    /// Sends every outbox entry not yet sent on this connection.
    async fn send_pending<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut LinkWriter<W>,
        addr: &RelayAddr,
    ) -> Result<(), Stop> {
        for i in 0..self.outbox.len() {
            if self.outbox[i].req.is_some() {
                continue;
            }
            let req = self.req();
            let o = &mut self.outbox[i];
            o.req = Some(req);
            let msg = ClientMsg::Send {
                req,
                to: o.sealed.to,
                envelope: ByteBuf::from(o.sealed.envelope.clone()),
            };
            write_to(writer, addr, &msg, true).await?;
        }
        Ok(())
    }

    async fn on_relay<W: AsyncWrite + Unpin>(
        &mut self,
        msg: RelayMsg,
        writer: &mut LinkWriter<W>,
        addr: &RelayAddr,
    ) -> Result<(), Stop> {
        match msg {
            RelayMsg::Deliver {
                id,
                received_at,
                envelope,
            } => {
                let delivery = Delivery {
                    id,
                    received_at,
                    envelope: envelope.into_vec(),
                };
                self.on_delivery(delivery, writer, addr).await?;
            }
            RelayMsg::Drained => self.drained = true,
            RelayMsg::Stored { req } => self.outbox.retain(|o| o.req != Some(req)),
            RelayMsg::Acked { req, .. } => {
                self.acks_pending.remove(&req);
            }
            RelayMsg::Pong => {}
            RelayMsg::Error { req, code, detail } => {
                let err = refused(addr, code, &detail);
                if let Some(pos) = self.outbox.iter().position(|o| o.req == Some(req)) {
                    if is_retryable(code) {
                        return Err(Stop::Link(err));
                    }
                    let o = self.outbox.remove(pos);
                    warn(&format!(
                        "a message to {} was not sent: {}",
                        o.sealed.name,
                        crate::error_line(&explain(err, &o.sealed.name))
                    ));
                } else if self.acks_pending.remove(&req) {
                    // Not deleted: it comes again on the next connection,
                    // and the seen store hides it then.
                    tracing::debug!(error = %err, "an acknowledgement was refused");
                } else {
                    return Err(Stop::Link(err));
                }
            }
            other => tracing::debug!(?other, "ignoring a message during a chat"),
        }
        Ok(())
    }

    async fn on_delivery<W: AsyncWrite + Unpin>(
        &mut self,
        delivery: Delivery,
        writer: &mut LinkWriter<W>,
        addr: &RelayAddr,
    ) -> Result<(), Stop> {
        let id = delivery.id;
        if self.announced.contains(&id) {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        let mut outcome = inbox::process(
            &self.me,
            &self.book,
            &self.store,
            vec![delivery],
            seen::now_secs(),
            Files::Announce,
            &mut |line| {
                writeln!(stdout, "{line}")?;
                stdout.flush()
            },
        )?;
        drop(stdout);
        if outcome.announced > 0 && !outcome.ack.contains(&id) {
            self.announced.insert(id);
        }
        inbox::record_history(&self.history, &outcome.messages);
        let noted = &mut self.noted_unknown;
        outcome.unknown_senders.retain(|k| noted.insert(*k));
        inbox::report(&outcome);
        if let Some(e) = outcome.print_error.take() {
            return Err(Stop::Fatal(
                anyhow::Error::new(e).context("cannot write to stdout"),
            ));
        }
        if !outcome.ack.is_empty() {
            let req = self.req();
            let msg = ClientMsg::Ack {
                req,
                ids: std::mem::take(&mut outcome.ack),
            };
            write_to(writer, addr, &msg, true).await?;
            self.acks_pending.insert(req);
        }
        Ok(())
    }

    fn on_input(&mut self, input: Option<Input>) {
        let line = match input {
            None => {
                self.input_done = true;
                return;
            }
            Some(Input::NotUtf8) => {
                warn("a line that is not UTF-8 text was not sent");
                return;
            }
            Some(Input::Line(line)) => line,
        };
        if line.trim().is_empty() {
            return;
        }
        if let Some(escaped) = line.strip_prefix("//") {
            self.send_text(format!("/{escaped}"));
            return;
        }
        if !line.starts_with('/') {
            self.send_text(line);
            return;
        }
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let arg = words.next();
        match (command, arg) {
            ("/to", Some(name)) => match resolve(&self.book, name, false) {
                Ok(target) => {
                    note(&format!("talking to {}", target.name()));
                    self.target = Some(target);
                }
                Err(e) => warn(&crate::error_line(&e)),
            },
            ("/to", None) => warn("/to needs a NAME: `/to bob`"),
            ("/contacts", _) => {
                let lines = list_lines(&self.book);
                if lines.is_empty() {
                    note("no contacts yet; add one with `sotto contact add NAME KEY`");
                }
                for l in lines {
                    note(&l);
                }
            }
            ("/history", _) => self.show_history(),
            ("/help", _) => {
                for l in HELP {
                    note(l);
                }
            }
            ("/quit", _) => self.input_done = true,
            _ => warn(&format!(
                "unknown command {}; /help lists the commands (start a message with // to send a /)",
                crate::display::sanitize(command)
            )),
        }
    }

    /// `/history`: on stderr, so stdout keeps carrying incoming messages only.
    fn show_history(&self) {
        let Some(target) = &self.target else {
            warn("no partner yet: type `/to NAME` first");
            return;
        };
        let lines = self
            .history
            .read_all()
            .and_then(|entries| super::history::lines_for(&self.book, target.name(), &entries));
        match lines {
            Ok(lines) if lines.is_empty() => {
                note(&format!("no messages with {} yet", target.name()))
            }
            Ok(lines) => {
                let mut err = std::io::stderr().lock();
                for l in lines {
                    let _ = writeln!(err, "{l}");
                }
            }
            Err(e) => warn(&crate::error_line(&e)),
        }
    }

    /// Seals a typed message and queues it; sent at once when connected.
    fn send_text(&mut self, text: String) {
        let Some(target) = &self.target else {
            warn("nobody to send to yet: type `/to NAME` first; the message was not sent");
            return;
        };
        match seal_to(&self.me, target, text) {
            Ok((sealed, entry)) => {
                inbox::record_history(&self.history, std::slice::from_ref(&entry));
                self.outbox.extend(
                    sealed
                        .into_iter()
                        .map(|sealed| Outgoing { sealed, req: None }),
                );
            }
            Err(e) => warn(&format!("not sent: {}", crate::error_line(&e))),
        }
    }
}

/// Passes every message from the relay on, until the link fails or the chat
/// stops listening. Reading in a task of its own keeps a half-read message
/// safe from the chat loop's `select!`.
async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: LinkReader<R>,
    addr: RelayAddr,
    tx: mpsc::Sender<Result<RelayMsg, RelayError>>,
) {
    loop {
        let received = recv_from(&mut reader, &addr, None).await;
        let failed = received.is_err();
        if tx.send(received).await.is_err() || failed {
            return;
        }
    }
}

/// Stops a task when the connection it serves is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book_with(dir: &std::path::Path, text: &str) -> ContactBook {
        let path = dir.join("contacts.toml");
        std::fs::write(&path, text).unwrap();
        ContactBook::load(&path).unwrap()
    }

    #[test]
    fn a_group_message_is_sealed_once_per_member_but_never_to_myself() {
        let dir = tempfile::tempdir().unwrap();
        let me = SecretKey::generate();
        let bob = SecretKey::generate();
        let carol = SecretKey::generate();
        let book = book_with(
            dir.path(),
            &format!(
                "[contacts.bob]\nkey = \"{}\"\n[contacts.carol]\nkey = \"{}\"\n[contacts.self]\nkey = \"{}\"\n[groups.team]\nmembers = [\"bob\", \"carol\", \"self\"]\n",
                bob.public(),
                carol.public(),
                me.public()
            ),
        );
        let target = resolve(&book, "team", false).unwrap();
        assert_eq!(target.name(), "team");
        let (sealed, entry) = seal_to(&me, &target, "hi all".into()).unwrap();
        assert_eq!(
            sealed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["bob", "carol"]
        );
        assert_eq!(entry.group.as_deref(), Some("team"));
        assert_eq!(entry.peer, None);
        let opened = envelope::open(&carol, &sealed[1].envelope).unwrap();
        assert_eq!(opened.sender, me.public());
        assert_eq!(
            opened.body.content,
            Content::GroupText {
                group: "team".into(),
                text: "hi all".into()
            }
        );
        // One body for all: one id.
        let at_bob = envelope::open(&bob, &sealed[0].envelope).unwrap();
        assert_eq!(at_bob.body.id, opened.body.id);

        assert!(resolve(&book, "bob", true).is_err());
        assert!(matches!(
            resolve(&book, "bob", false).unwrap(),
            Target::Contact(_)
        ));
        let err = resolve(&book, "nobody", false).unwrap_err().to_string();
        assert!(err.starts_with("unknown contact 'nobody'"), "{err}");
        let err = resolve(&book, "nobody", true).unwrap_err().to_string();
        assert!(err.starts_with("unknown group 'nobody'"), "{err}");
        assert!(seal_to(&me, &target, String::new()).is_err());
        let err = seal_to(&me, &target, "a".repeat(MAX_TEXT_LEN))
            .unwrap_err()
            .to_string();
        assert!(err.contains("with the group name"), "{err}");
    }

    fn test_chat(dir: &std::path::Path, bob: &SecretKey) -> Chat {
        let book = book_with(
            dir,
            &format!("[contacts.bob]\nkey = \"{}\"\n", bob.public()),
        );
        let target = resolve(&book, "bob", false).ok();
        Chat {
            me: Arc::new(SecretKey::generate()),
            pin: RelayPin {
                addr: "127.0.0.1:1".parse().unwrap(),
                key: sotto_keys::RelayKey::from_bytes([1; 32]),
            },
            book,
            store: SeenStore::open(&dir.join("seen.redb"), seen::now_secs()).unwrap(),
            history: History::at(dir.join("history.log")),
            target,
            outbox: Vec::new(),
            acks_pending: HashSet::new(),
            next_req: 1,
            input_done: false,
            drained: false,
            noted_unknown: HashSet::new(),
            announced: HashSet::new(),
        }
    }

    #[tokio::test]
    async fn a_send_not_confirmed_goes_again_with_the_same_bytes_after_a_drop() {
        use crate::relay_client::test_relay::fake_relay;
        let dir = tempfile::tempdir().unwrap();
        let bob = SecretKey::generate();
        let mut chat = test_chat(dir.path(), &bob);
        chat.on_input(Some(Input::Line("hello bob".into())));
        assert_eq!(chat.outbox.len(), 1);
        let (_typing, mut inputs) = mpsc::channel(1);

        // The first relay takes the `Send`, then hangs up before `Stored`.
        let (tx, first) = tokio::sync::oneshot::channel();
        let conn = fake_relay(|mut r, mut w| async move {
            assert_eq!(
                r.recv::<ClientMsg>().await.unwrap(),
                Some(ClientMsg::Fetch { live: true })
            );
            w.send(&RelayMsg::Drained).await.unwrap();
            w.flush().await.unwrap();
            let Some(ClientMsg::Send { envelope, .. }) = r.recv().await.unwrap() else {
                panic!("expected a Send")
            };
            tx.send(envelope.into_vec()).unwrap();
        })
        .await;
        let stop = chat.session(conn, &mut inputs).await;
        assert!(matches!(stop, Err(Stop::Link(_))));
        assert_eq!(chat.outbox.len(), 1, "kept until stored");
        let first = first.await.unwrap();

        // The next one gets the very same envelope, and stores it.
        chat.input_done = true;
        let (tx, second) = tokio::sync::oneshot::channel();
        let conn = fake_relay(|mut r, mut w| async move {
            assert_eq!(
                r.recv::<ClientMsg>().await.unwrap(),
                Some(ClientMsg::Fetch { live: true })
            );
            let Some(ClientMsg::Send { req, envelope, .. }) = r.recv().await.unwrap() else {
                panic!("expected a Send")
            };
            tx.send(envelope.into_vec()).unwrap();
            w.send(&RelayMsg::Stored { req }).await.unwrap();
            w.send(&RelayMsg::Drained).await.unwrap();
            w.flush().await.unwrap();
            // Until the client closes.
            while let Ok(Some(_)) = r.recv::<ClientMsg>().await {}
        })
        .await;
        assert!(chat.session(conn, &mut inputs).await.is_ok());
        assert!(chat.outbox.is_empty());
        assert_eq!(second.await.unwrap(), first);
        let opened = envelope::open(&bob, &first).unwrap();
        assert_eq!(opened.body.content, Content::Text("hello bob".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_that_stops_answering_pings_counts_as_gone() {
        use crate::relay_client::test_relay::fake_relay;
        let dir = tempfile::tempdir().unwrap();
        let mut chat = test_chat(dir.path(), &SecretKey::generate());
        let (_typing, mut inputs) = mpsc::channel(1);
        let (tx, pings) = tokio::sync::oneshot::channel();
        let conn = fake_relay(|mut r, mut w| async move {
            let _fetch = r.recv::<ClientMsg>().await;
            w.send(&RelayMsg::Drained).await.unwrap();
            w.flush().await.unwrap();
            // Reads everything, answers nothing.
            let mut pings = 0;
            while let Ok(Some(msg)) = r.recv::<ClientMsg>().await {
                if msg == ClientMsg::Ping {
                    pings += 1;
                }
            }
            let _ = tx.send(pings);
        })
        .await;
        let stop = chat.session(conn, &mut inputs).await;
        assert!(
            matches!(stop, Err(Stop::Link(RelayError::NoAnswer { .. }))),
            "the chat gave up on a silent relay"
        );
        drop(chat);
        // Keepalives went out before it gave up.
        assert!(pings.await.unwrap() >= 2);
    }

    #[tokio::test]
    async fn a_send_the_relay_refuses_for_good_is_dropped_not_retried() {
        use crate::relay_client::test_relay::fake_relay;
        let dir = tempfile::tempdir().unwrap();
        let mut chat = test_chat(dir.path(), &SecretKey::generate());
        chat.on_input(Some(Input::Line("too many".into())));
        chat.input_done = true;
        let (_typing, mut inputs) = mpsc::channel(1);
        let conn = fake_relay(|mut r, mut w| async move {
            let _fetch = r.recv::<ClientMsg>().await;
            let Some(ClientMsg::Send { req, .. }) = r.recv().await.unwrap() else {
                panic!("expected a Send")
            };
            w.send(&RelayMsg::Error {
                req,
                code: ErrorCode::QuotaExceeded,
                detail: "full".into(),
            })
            .await
            .unwrap();
            w.send(&RelayMsg::Drained).await.unwrap();
            w.flush().await.unwrap();
            while let Ok(Some(_)) = r.recv::<ClientMsg>().await {}
        })
        .await;
        assert!(chat.session(conn, &mut inputs).await.is_ok());
        assert!(chat.outbox.is_empty());
    }

    #[test]
    fn typed_lines_become_messages_or_commands() {
        let dir = tempfile::tempdir().unwrap();
        let bob = SecretKey::generate();
        let mut chat = test_chat(dir.path(), &bob);
        for line in ["", "   ", "/help", "/to nobody", "/contacts", "/bogus"] {
            chat.on_input(Some(Input::Line(line.into())));
        }
        assert!(chat.outbox.is_empty());
        chat.on_input(Some(Input::Line("//not a command".into())));
        let opened = envelope::open(&bob, &chat.outbox[0].sealed.envelope).unwrap();
        assert_eq!(opened.body.content, Content::Text("/not a command".into()));
        assert!(!chat.input_done);
        chat.on_input(Some(Input::Line("/quit".into())));
        assert!(chat.input_done);
        chat.target = None;
        chat.input_done = false;
        chat.on_input(Some(Input::Line("to nobody".into())));
        assert_eq!(chat.outbox.len(), 1);
        chat.on_input(None);
        assert!(chat.input_done);
    }

    #[test]
    fn only_link_failures_are_retried() {
        let addr: RelayAddr = "127.0.0.1:1".parse().unwrap();
        assert!(!is_fatal(&RelayError::Closed { addr: addr.clone() }));
        assert!(is_fatal(&refused(&addr, ErrorCode::NotAllowed, "")));
        assert!(is_retryable(ErrorCode::ShuttingDown));
        assert!(!is_retryable(ErrorCode::QuotaExceeded));
    }
}
