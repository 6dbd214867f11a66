//! `sotto chat [NAME]`: live chat over one long-lived connection.
//!
//! Line mode (when stdin or stdout is not a terminal, or with `--plain`): each
//! line of stdin is sealed and sent to the current partner, a contact or a
//! group; every incoming message is printed on stdout as one line,
//! `[time] NAME: TEXT` (`[time] GROUP/NAME: TEXT` in a group), flushed at once.
//! Notices (reconnecting, command answers, warnings) go to stderr, so stdout
//! carries messages only. On a terminal the same chat runs behind the
//! interactive screen ([`crate::screen`]): typed lines come through the same
//! channel, and what line mode prints goes to the screen instead
//! ([`view`]).
//!
//! The connection asks for the mailbox with `Fetch { live: true }`: what waited
//! comes first, in order, then the relay pushes new envelopes as they arrive.
//! Each is handled exactly as `sotto inbox` handles it (same opening,
//! duplicate suppression, unknown-sender and neutralising rules, see
//! [`crate::inbound`]): printed, remembered, then acknowledged.
//!
//! Sending: a typed message is sealed once (one envelope per recipient,
//! [`crate::outbox`]) and kept in an outbox until its relay answers
//! `Stored`. Each envelope goes to its recipient's relay
//! ([`crate::outbox::route_for`]) over a delivery link of the chat's
//! [`crate::delivery_pool`]: one per relay and recipient, opened on demand,
//! closed when idle, reconnected with backoff on its own, so one contact's
//! relay being down never delays the others. A resend is the same envelope
//! bytes: if the relay had stored one already, the receiver shows it once.
//! What waits for a relay that cannot be reached is also kept in the home
//! ([`crate::undelivered`]), so quitting loses nothing: the next `chat` or
//! `send` delivers it. The connection that reads my mailbox is separate:
//! when it drops, or my relay restarts, the client reconnects with a
//! doubling backoff ([`BACKOFF_START`] to [`BACKOFF_MAX`]). A keepalive
//! `Ping` goes out every [`PING_EVERY`]; a relay not heard from for
//! [`DEAD_AFTER`] counts as gone.
//!
//! Sessions and receipts: typed lines are sealed through the session state
//! ([`crate::sessions`], one short locked batch per line, saved before it is
//! sent), so once both sides have spoken they are forward-secret; renewals,
//! session accepts and receipts go out through the same outbox. Each of my
//! messages is followed per recipient and its states are said once each on
//! stderr (`sotto: bob: stored "..."`, `delivered`, `read`). A message shown
//! while its sender (or its group) is the partner is answered as read, any
//! other as delivered, and `/to` that sender sends read for those.
//!
//! Presence ([`presence`]): once the mailbox is shown, the chat tells every
//! contact it is online with a live-only notice, repeats it as a heartbeat
//! and says `Offline` at a clean end; contacts' notices become `sotto: bob is
//! online` / `went offline` on stderr, and `/online` lists who is. `/file
//! PATH` sends a file in the background ([`file`]).
//!
//! After a move (`sotto relay set`), the relays read from before are read
//! once, when the mailbox has been shown, so what contacts sent there before
//! they heard of the move is shown too (`inbox` drops them once empty).
//!
//! End: EOF on stdin or `/quit`, once the waiting mailbox has been shown,
//! every send has been stored, every acknowledgement answered and every file
//! sent with `/file` has ended.

mod file;
mod presence;
mod receive;
mod transfers;
mod view;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, IsTerminal, Read};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use sotto_crypto::envelope::{MessageId, Presence, ReceiptState};
use sotto_crypto::link::{LinkReader, LinkWriter};
use sotto_crypto::wire::{ClientMsg, ErrorCode, RelayMsg};
use sotto_keys::{ContactBook, PublicKey, RelayAddr, SecretKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{note, say, tell, warn, Ctx};
use crate::cli::ChatArgs;
use crate::config::{Config, OldRelay, RelayPin};
use crate::contacts::list_lines;
use crate::delivery_link::DeliveryLinks;
use crate::delivery_pool::{Event, Policy, Pool};
use crate::download_limits::DownloadLimits;
use crate::history::History;
use crate::identity;
use crate::inbound::{self, Files, ShownMessage};
use crate::outbox::{self, resolve, Sealed, Target, MAX_TEXT_LEN};
use crate::presence::Roster;
use crate::reach::{self, Mine};
use crate::relay_client::{self, recv_from, refused, write_to, Delivery, RelayConn, RelayError};
use crate::screen::{self, Link, Mark, MsgId, Screen};
use crate::sessions::SessionFiles;
use crate::upload_state::UploadStates;
use view::View;

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
    "/online      the contacts online now (they tell their contacts, end to end)",
    "/file PATH   send a file or directory to the current partner, in the background",
    "/receive [DIR]  receive the files contacts sent, into DIR (default: here), in the background",
    "/history     the messages exchanged with the current partner (on stderr in line mode)",
    "/help        this help",
    "/quit        leave once every message sent is stored (as end of input does)",
    "//text       send a line that starts with /",
];

/// How far one of my messages got at one recipient, as the chat shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Progress {
    /// Handed to the relay.
    Sent,
    /// The relay answered `Stored`.
    Stored,
    /// The recipient's client opened and recorded it.
    Delivered,
    /// It was shown to the recipient.
    Read,
}

/// A new state of one of my messages, as the view shows it.
#[derive(Debug, PartialEq, Eq)]
enum News {
    /// A line on stderr (line mode).
    Say(String),
    /// A mark on the message on the screen.
    Mark(MsgId, Mark),
}

impl Progress {
    fn mark(self) -> Option<Mark> {
        match self {
            Progress::Sent => None,
            Progress::Stored => Some(Mark::Stored),
            Progress::Delivered => Some(Mark::Delivered),
            Progress::Read => Some(Mark::Read),
        }
    }

    fn word(self) -> &'static str {
        match self {
            Progress::Sent => "sent",
            Progress::Stored => "stored",
            Progress::Delivered => "delivered",
            Progress::Read => "read",
        }
    }
}

impl From<ReceiptState> for Progress {
    fn from(s: ReceiptState) -> Self {
        match s {
            ReceiptState::Delivered => Progress::Delivered,
            ReceiptState::Read => Progress::Read,
        }
    }
}

/// Characters of a message shown next to its state.
const SNIPPET_CHARS: usize = 24;

/// The start of `text`, safe to print, with `…` when cut.
fn snippet(text: &str) -> String {
    let mut short: String = text.chars().take(SNIPPET_CHARS).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    crate::display::sanitize(&short)
}

/// One of my messages whose receipts the chat follows.
#[derive(Debug)]
struct Tracked {
    snippet: String,
    /// Where the message is on the screen, which marks it instead of saying.
    on_screen: Option<MsgId>,
    /// Recipient -> (name, how far it got).
    recipients: HashMap<PublicKey, (String, Progress)>,
}

/// My messages of this chat and how far each got, per recipient. Each state
/// is said once, on stderr; a later state implies the earlier ones.
#[derive(Debug, Default)]
pub(crate) struct Receipts {
    tracked: HashMap<MessageId, Tracked>,
}

impl Receipts {
    /// Follows a message just sealed for `recipients`.
    fn track(
        &mut self,
        id: MessageId,
        text: &str,
        recipients: &[(PublicKey, String)],
        on_screen: Option<MsgId>,
    ) {
        self.tracked.insert(
            id,
            Tracked {
                snippet: snippet(text),
                on_screen,
                recipients: recipients
                    .iter()
                    .map(|(k, n)| (*k, (n.clone(), Progress::Sent)))
                    .collect(),
            },
        );
    }

    /// Moves message `id` at `from` on to `state`; returns what to show, if
    /// it is news. A message everyone has read is forgotten.
    fn advance(&mut self, id: &MessageId, from: &PublicKey, state: Progress) -> Option<News> {
        let tracked = self.tracked.get_mut(id)?;
        let (name, progress) = tracked.recipients.get_mut(from)?;
        if state <= *progress {
            return None;
        }
        *progress = state;
        let line = format!("{name}: {} \"{}\"", state.word(), tracked.snippet);
        // On the screen a message carries one mark: how far it got with
        // every recipient (a group message is read once all have read it).
        let least = tracked.recipients.values().map(|(_, p)| *p).min();
        let news = match (tracked.on_screen, least.and_then(Progress::mark)) {
            (Some(at), Some(mark)) => News::Mark(at, mark),
            (Some(_), None) => return None,
            (None, _) => News::Say(line),
        };
        if least == Some(Progress::Read) {
            self.tracked.remove(id);
        }
        Some(news)
    }
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
    let config = Config::load(&ctx.home.config())?;
    let pin = config.relay()?;
    let draining: Vec<RelayPin> = config.draining.iter().map(OldRelay::pin).collect();
    let holders = std::iter::once(pin.clone())
        .chain(draining.iter().cloned())
        .collect();
    let me = identity::load(&ctx.home, ctx.passphrase_file.as_deref())?;
    let sessions = SessionFiles::of(&ctx.home);

    let (tx, rx) = mpsc::channel(64);
    // Dropped last, after the chat: the terminal comes back before an error
    // is printed.
    let (view, _screen) = if !args.plain
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal()
    {
        let partner = target.as_ref().map(Target::name);
        let screen = Screen::start(partner, move |line| {
            tx.blocking_send(Input::Line(line)).is_ok()
        })?;
        note("type a message and press Enter to send it; /help lists the commands and keys");
        (View::Screen(screen.handle()), Some(screen))
    } else {
        if std::io::stdin().is_terminal() {
            note("line mode: type a message and press Enter to send it; /help lists the commands");
        }
        spawn_stdin_reader(tx);
        (View::Lines, None)
    };
    let history = History::open(&ctx.home, &me)?;
    let mine = reach::mine(&ctx.home, &pin)?;
    let (pool, events) = Pool::new(DeliveryLinks::new(&pin), Policy::CHAT);
    let mut chat = Chat {
        view,
        me: Arc::new(me),
        pin,
        book,
        sessions,
        history,
        target,
        receipts: Receipts::default(),
        unread: Vec::new(),
        outbox: Vec::new(),
        pool,
        events,
        mine,
        draining,
        first_contact: config.accepts_first_contact(),
        acks_pending: HashSet::new(),
        next_req: 1,
        input_done: false,
        drained: false,
        noted_unknown: HashSet::new(),
        announced: HashSet::new(),
        roster: Roster::default(),
        uploads: JoinSet::new(),
        upload_states: UploadStates::new(ctx.home.uploads()),
        holders,
        limits: DownloadLimits::from_config(&config),
        transfers: transfers::Transfers::default(),
        receiving: receive::Receiving::default(),
    };
    super::block_on_threaded(async move {
        chat.queue_kept();
        chat.run(rx).await
    })?
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

/// A sealed envelope not yet stored by its relay.
#[derive(Debug)]
struct Outgoing {
    sealed: Sealed,
    /// Its id in the delivery pool and the undelivered list.
    id: u64,
    /// Kept in the home's undelivered list (its relay could not be reached).
    kept: bool,
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

struct Chat {
    /// Where messages and the chat's state are shown.
    view: View,
    me: Arc<SecretKey>,
    pin: RelayPin,
    book: ContactBook,
    sessions: SessionFiles,
    history: History,
    target: Option<Target>,
    /// My messages and how far they got.
    receipts: Receipts,
    /// Messages shown while their sender was not the partner: delivered, not
    /// yet read (`/to` them makes them read).
    unread: Vec<ShownMessage>,
    /// Envelopes not yet stored, in the order they were typed.
    outbox: Vec<Outgoing>,
    /// The delivery links to the relays I write to.
    pool: Pool<DeliveryLinks>,
    /// What the links report.
    events: mpsc::UnboundedReceiver<Event>,
    /// Where contacts reach me.
    mine: Mine,
    /// Relays read from before a move, read once when the chat starts.
    draining: Vec<RelayPin>,
    /// Whether my relay takes first contacts (config.toml).
    first_contact: bool,
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
    /// Which contacts are online.
    roster: Roster,
    /// Files being sent with `/file` and received with `/receive`.
    uploads: JoinSet<()>,
    /// Every relay I read from: files may wait on any (`/receive`).
    holders: Vec<RelayPin>,
    /// What a download may take (config.toml).
    limits: DownloadLimits,
    /// Files moving, for the status line.
    transfers: transfers::Transfers,
    /// Files being received, so none is fetched twice.
    receiving: receive::Receiving,
    /// Where interrupted uploads are remembered.
    upload_states: UploadStates,
}

impl Chat {
    fn finished(&self) -> bool {
        self.input_done
            && self.drained
            && self.outbox.iter().all(|o| o.kept)
            && self.acks_pending.is_empty()
            && self.uploads.is_empty()
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
                    // Said once connected: a relay that cannot be reached at
                    // the start is the one line on stderr.
                    Some(event) = self.events.recv(), if connected_once => self.on_event(event),
                }
            };
            let conn = match conn {
                Ok(conn) => conn,
                // The first connection says at once whether the relay is
                // there at all, as every other command does.
                Err(e) if !connected_once || is_fatal(&e) => {
                    self.keep_unsent();
                    return Err(e.into());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reconnecting failed");
                    self.view.link(Link::Reconnecting);
                    if self.input_done && !said_waiting {
                        said_waiting = true;
                        note("waiting for your relay to come back to finish reading your mailbox (Ctrl-C ends the chat; nothing sent is lost)");
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
            self.view.link(Link::Connected);
            delay = BACKOFF_START;
            match self.session(conn, &mut inputs).await {
                Ok(()) => return Ok(()),
                Err(Stop::Fatal(e)) => {
                    self.keep_unsent();
                    return Err(e);
                }
                Err(Stop::Link(e)) if is_fatal(&e) => {
                    self.keep_unsent();
                    return Err(e.into());
                }
                Err(Stop::Link(e)) => {
                    self.view.link(Link::Reconnecting);
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
                Some(event) = self.events.recv() => self.on_event(event),
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
        let mut conn = conn;
        reach::register(
            &mut conn,
            &self.sessions,
            &self.me,
            &self.mine,
            self.first_contact,
        )
        .await?;
        let (reader, mut writer, addr) = conn.into_parts();
        let (tx, mut from_relay) = mpsc::channel(16);
        let _reader = AbortOnDrop(tokio::spawn(read_loop(reader, addr.clone(), tx)));
        self.drained = false;
        self.acks_pending.clear();
        write_to(&mut writer, &addr, &ClientMsg::Fetch { live: true }, true).await?;

        let start = Instant::now() + PING_EVERY;
        let mut ping = tokio::time::interval_at(start, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let start = Instant::now() + presence::PRESENCE_EVERY;
        let mut heartbeat = tokio::time::interval_at(start, presence::PRESENCE_EVERY);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.finished() {
                self.announce(Presence::Offline);
                self.say_kept();
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    // The notices go out on their links meanwhile.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    writer.shutdown().await
                })
                .await;
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
                    let (deliveries, after) = gather_deliveries(msg, &mut from_relay);
                    if !deliveries.is_empty() {
                        self.on_deliveries(deliveries, &mut writer, &addr).await?;
                    }
                    match after {
                        Some(Ok(msg)) => self.on_relay(msg, &mut writer, &addr).await?,
                        Some(Err(e)) => return Err(Stop::Link(e)),
                        None => {}
                    }
                }
                input = inputs.recv(), if !self.input_done => self.on_input(input),
                Some(event) = self.events.recv() => self.on_event(event),
                _ = ping.tick() => {
                    if last_heard.elapsed() > DEAD_AFTER {
                        return Err(Stop::Link(RelayError::NoAnswer { addr }));
                    }
                    write_to(&mut writer, &addr, &ClientMsg::Ping, true).await?;
                    self.expire_presence();
                }
                _ = heartbeat.tick(), if self.drained => {
                    self.announce(Presence::Online { reply: false });
                }
                Some(_) = self.uploads.join_next(), if !self.uploads.is_empty() => {}
            }
        }
    }

    /// What a delivery link reports.
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Stored { id } => {
                let Some(pos) = self.outbox.iter().position(|o| o.id == id) else {
                    return;
                };
                let o = self.outbox.remove(pos);
                if let Some(message) = o.sealed.message {
                    self.say(&message, &o.sealed.to, Progress::Stored);
                }
                if o.kept {
                    self.unkeep(vec![id]);
                }
            }
            Event::Failed { id, error, .. } => {
                let Some(pos) = self.outbox.iter().position(|o| o.id == id) else {
                    return;
                };
                let o = self.outbox.remove(pos);
                if o.kept {
                    self.unkeep(vec![id]);
                }
                if o.sealed.message.is_some() {
                    warn(&format!(
                        "a message to {} was not sent: {}",
                        o.sealed.name,
                        crate::error_line(&outbox::explain_shared(&error, &o.sealed.name))
                    ));
                }
            }
            Event::Unreachable { link, error } => {
                let waiting: Vec<&mut Outgoing> = self
                    .outbox
                    .iter_mut()
                    .filter(|o| !o.kept && o.sealed.route.link() == link)
                    .collect();
                let name = self
                    .book
                    .by_key(&link.to)
                    .map_or_else(|| link.to.to_string(), |c| c.name.to_string());
                let mut keep = Vec::new();
                for o in waiting {
                    o.kept = true;
                    let mut p = o.sealed.pending();
                    p.id = o.id;
                    keep.push(p);
                }
                let n = keep.len();
                if n > 0 {
                    let kept = off_runtime(|| {
                        self.sessions.with_undelivered(&self.me, |list| {
                            list.add(keep)?;
                            list.save()
                        })
                    });
                    if let Err(e) = kept {
                        warn(&format!(
                            "messages to {name} could not be kept on disk: {}",
                            crate::error_line(&e)
                        ));
                    }
                }
                note(&format!(
                    "{error}; messages to {name} wait and go when it is back"
                ));
            }
            Event::Reached { link } => {
                let name = self
                    .book
                    .by_key(&link.to)
                    .map_or_else(|| link.to.to_string(), |c| c.name.to_string());
                note(&format!("reached {name}'s relay at {} again", link.relay));
            }
        }
    }

    /// Drops delivered entries from the home's undelivered list.
    fn unkeep(&self, ids: Vec<u64>) {
        let done = off_runtime(|| {
            self.sessions.with_undelivered(&self.me, |list| {
                list.remove(&ids);
                list.save()
            })
        });
        if let Err(e) = done {
            tracing::debug!(error = %e, "a delivered message stays in the undelivered list");
        }
    }

    /// Ending early: what is not yet stored is kept in the home, for the
    /// next `chat` or `send` to deliver.
    fn keep_unsent(&mut self) {
        let keep: Vec<_> = self
            .outbox
            .iter_mut()
            .filter(|o| !o.kept)
            .map(|o| {
                o.kept = true;
                let mut p = o.sealed.pending();
                p.id = o.id;
                p
            })
            .collect();
        if keep.is_empty() {
            return;
        }
        let kept = off_runtime(|| {
            self.sessions.with_undelivered(&self.me, |list| {
                list.add(keep)?;
                list.save()
            })
        });
        if let Err(e) = kept {
            tracing::warn!(error = %e, "messages not yet stored could not be kept");
        }
    }

    /// At the end: what waits for relays that could not be reached.
    fn say_kept(&self) {
        let kept = self.outbox.iter().filter(|o| o.kept).count();
        if kept > 0 {
            note(&format!(
                "{kept} message(s) wait for relays that cannot be reached; they are kept, and the next `sotto chat` or `sotto send` delivers them"
            ));
        }
    }

    /// Puts what earlier commands could not deliver back in the outbox.
    fn queue_kept(&mut self) {
        let kept = off_runtime(|| {
            self.sessions
                .with_undelivered(&self.me, |list| Ok(list.list().to_vec()))
        });
        match kept {
            Ok(kept) => {
                for p in kept {
                    let sealed = Sealed {
                        to: p.route.to,
                        name: p.name.clone(),
                        route: p.route.clone(),
                        envelope: p.envelope.clone(),
                        message: None,
                    };
                    self.outbox.push(Outgoing {
                        sealed,
                        id: p.id,
                        kept: true,
                    });
                    self.pool.send(p);
                }
            }
            Err(e) => warn(&format!(
                "messages kept from before cannot be read: {}",
                crate::error_line(&e)
            )),
        }
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
                self.on_deliveries(vec![delivery], writer, addr).await?;
            }
            RelayMsg::Drained => {
                if !self.drained {
                    self.drained = true;
                    self.drain_old().await?;
                    self.announce(Presence::Online { reply: true });
                }
            }
            RelayMsg::Notice { envelope } => self.on_notice(&envelope),
            RelayMsg::Acked { req, .. } => {
                self.acks_pending.remove(&req);
            }
            RelayMsg::Pong => {}
            RelayMsg::Error { req, code, detail } => {
                let err = refused(addr, code, &detail);
                if self.acks_pending.remove(&req) {
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

    /// Handles deliveries that arrived together as one batch: one locked
    /// load and save of the session state, one acknowledgement.
    async fn on_deliveries<W: AsyncWrite + Unpin>(
        &mut self,
        mut deliveries: Vec<Delivery>,
        writer: &mut LinkWriter<W>,
        addr: &RelayAddr,
    ) -> Result<(), Stop> {
        deliveries.retain(|d| !self.announced.contains(&d.id));
        if deliveries.is_empty() {
            return Ok(());
        }
        let ids: Vec<u64> = deliveries.iter().map(|d| d.id).collect();
        let ack = self.take_batch(deliveries)?;
        // What is not acknowledged stays on the relay and comes again on
        // every connection: a file offer (already announced), or the rest of
        // a batch that could not be printed (which ends the chat anyway).
        for id in ids {
            if !ack.contains(&id) {
                self.announced.insert(id);
            }
        }
        if !ack.is_empty() {
            let req = self.req();
            let msg = ClientMsg::Ack { req, ids: ack };
            write_to(writer, addr, &msg, true).await?;
            self.acks_pending.insert(req);
        }
        Ok(())
    }

    /// Shows, remembers and answers a batch of deliveries, as `inbox`
    /// does; returns the relay ids that may be acknowledged.
    fn take_batch(&mut self, deliveries: Vec<Delivery>) -> Result<Vec<u64>, Stop> {
        let mut printer = self.view.printer();
        let partner = self.target.clone();
        let (mut outcome, to_send) = off_runtime(|| {
            inbound::process_batch(
                &self.me,
                &self.book,
                &self.sessions,
                &self.pin,
                Some(&self.mine),
                deliveries,
                Files::AnnounceInChat,
                &mut |line| printer.line(line),
                &|m| {
                    if is_partner(partner.as_ref(), m) {
                        ReceiptState::Read
                    } else {
                        ReceiptState::Delivered
                    }
                },
            )
        })?;
        self.view.received(&self.book, &outcome.messages, printer);
        for m in std::mem::take(&mut outcome.shown_ids) {
            if !is_partner(self.target.as_ref(), &m) {
                self.unread.push(m);
            }
        }
        for r in std::mem::take(&mut outcome.receipts) {
            for id in &r.ids {
                self.say(id, &r.from, r.state.into());
            }
        }
        self.queue(to_send);
        if !outcome.moved.is_empty() {
            // Contacts told me where they read now: route there from here on.
            match ContactBook::load(self.book.path()) {
                Ok(book) => self.book = book,
                Err(e) => warn(&crate::error_line(&anyhow::Error::new(e))),
            }
        }
        // A disk write under the history's lock: off the runtime's threads.
        if let Some(n) = off_runtime(|| self.history.record(&outcome.messages)) {
            tell(&n);
        }
        let noted = &mut self.noted_unknown;
        outcome.unknown_senders.retain(|k| noted.insert(*k));
        for n in inbound::notices(&outcome) {
            tell(&n);
        }
        if let Some(e) = outcome.print_error.take() {
            return Err(Stop::Fatal(
                anyhow::Error::new(e).context("cannot write to stdout"),
            ));
        }
        Ok(std::mem::take(&mut outcome.ack))
    }

    /// Reads, once, each relay I read from before a move (`draining` in
    /// `config.toml`): what contacts sent there before they heard of it is
    /// shown like any delivery and acknowledged there. An old relay that
    /// cannot be reached is said and left for the next time.
    async fn drain_old(&mut self) -> Result<(), Stop> {
        for old in std::mem::take(&mut self.draining) {
            let unread = |e: RelayError| {
                warn(&format!(
                    "the old relay at {} was not read: {}",
                    old.addr,
                    crate::error_line(&anyhow::Error::new(e))
                ));
            };
            let mut conn = match relay_client::connect(&old, &self.me).await {
                Ok(conn) => conn,
                Err(e) => {
                    unread(e);
                    continue;
                }
            };
            let fetched = match conn.fetch_pending().await {
                Ok(fetched) => fetched,
                Err(e) => {
                    unread(e);
                    continue;
                }
            };
            if !fetched.deliveries.is_empty() {
                let ack = self.take_batch(fetched.deliveries)?;
                if let Err(e) = conn.ack(&ack).await {
                    tracing::debug!(error = %e, "the old relay did not take the acknowledgement");
                }
            }
            conn.close().await;
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
        if let Some(path) = line
            .strip_prefix("/file")
            .filter(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
        {
            match path.trim() {
                "" => warn("/file needs a PATH: `/file photo.jpg`"),
                path => self.send_file(path),
            }
            return;
        }
        if let Some(dir) = line
            .strip_prefix("/receive")
            .filter(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
        {
            self.receive(dir.trim());
            return;
        }
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let arg = words.next();
        match (command, arg) {
            ("/to", Some(name)) => match resolve(&self.book, name, false) {
                Ok(target) => {
                    note(&format!("talking to {}", target.name()));
                    self.view.partner(target.name());
                    self.target = Some(target);
                    self.mark_read();
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
            ("/online", _) => self.show_online(),
            ("/help", _) => {
                for l in HELP {
                    note(l);
                }
                if screen::is_active() {
                    for l in screen::KEYS {
                        note(l);
                    }
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
        let lines = off_runtime(|| self.history.read_all())
            .and_then(|entries| crate::history::lines_for(&self.book, target.name(), &entries));
        match lines {
            Ok(lines) if lines.is_empty() => {
                note(&format!("no messages with {} yet", target.name()))
            }
            Ok(lines) => {
                for l in lines {
                    say(&l);
                }
            }
            Err(e) => warn(&crate::error_line(&e)),
        }
    }

    /// Says a new state of one of my messages, once.
    fn say(&mut self, id: &MessageId, from: &PublicKey, state: Progress) {
        match self.receipts.advance(id, from, state) {
            Some(News::Say(line)) => note(&line),
            Some(News::Mark(at, mark)) => self.view.mark(at, mark),
            None => {}
        }
    }

    /// Queues envelopes on their delivery links, after what waits there.
    fn queue(&mut self, to_send: Vec<Sealed>) {
        for sealed in to_send {
            let pending = sealed.pending();
            self.outbox.push(Outgoing {
                sealed,
                id: pending.id,
                kept: false,
            });
            self.pool.send(pending);
        }
    }

    /// The new partner's messages that were only delivered are now read.
    fn mark_read(&mut self) {
        let target = self.target.as_ref();
        let (now_read, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unread)
            .into_iter()
            .partition(|m| is_partner(target, m));
        self.unread = still;
        if now_read.is_empty() {
            return;
        }
        let sealed = off_runtime(|| {
            inbound::seal_receipts_and_save(
                &self.me,
                &self.book,
                &self.sessions,
                &self.pin,
                &now_read,
                &|_| ReceiptState::Read,
            )
        });
        match sealed {
            Ok(to_send) => self.queue(to_send),
            Err(e) => tracing::debug!(error = %e, "read receipts not sent"),
        }
    }

    /// Seals a typed message and queues it; sent at once when connected.
    fn send_text(&mut self, text: String) {
        let Some(target) = &self.target else {
            warn("nobody to send to yet: type `/to NAME` first; the message was not sent");
            return;
        };
        // Saved before anything sealed on it goes out.
        let sealed = off_runtime(|| {
            outbox::seal_and_save(
                &self.sessions,
                &self.me,
                target,
                text.clone(),
                &self.pin,
                Some(&self.mine),
            )
        });
        match sealed {
            Ok(sealed) => {
                if let Some(n) =
                    off_runtime(|| self.history.record(std::slice::from_ref(&sealed.entry)))
                {
                    tell(&n);
                }
                let on_screen = self.view.sent(&sealed.entry);
                self.receipts
                    .track(sealed.id, &text, &sealed.recipients(), on_screen);
                self.queue(sealed.sealed);
            }
            Err(e) => warn(&format!("not sent: {}", crate::error_line(&e))),
        }
    }
}

/// Whether `m` belongs to the conversation with `partner`: the contact's own
/// messages, or the group's.
fn is_partner(partner: Option<&Target>, m: &ShownMessage) -> bool {
    match (partner, &m.group) {
        (Some(Target::Contact(c)), None) => c.key == m.sender,
        (Some(Target::Group { name, members }), Some(group)) => {
            group == name && members.iter().any(|c| c.key == m.sender)
        }
        _ => false,
    }
}

/// Most deliveries handled as one batch.
const DELIVERY_BATCH: usize = 256;

/// `first` and the deliveries already waiting behind it, as one batch; and
/// the first other message taken from `rx`, to handle after the batch.
fn gather_deliveries(
    first: RelayMsg,
    rx: &mut mpsc::Receiver<Result<RelayMsg, RelayError>>,
) -> (Vec<Delivery>, Option<Result<RelayMsg, RelayError>>) {
    let mut batch = Vec::new();
    let mut next = Some(Ok(first));
    while let Some(Ok(RelayMsg::Deliver {
        id,
        received_at,
        envelope,
    })) = next
    {
        batch.push(Delivery {
            id,
            received_at,
            envelope: envelope.into_vec(),
        });
        next = if batch.len() < DELIVERY_BATCH {
            rx.try_recv().ok()
        } else {
            None
        };
    }
    (batch, next)
}

/// Runs `f`, which waits on files (the session lock, an fsync), without
/// holding up the runtime's other tasks: on a multi-threaded runtime they
/// move to another thread meanwhile (the chat runs on one).
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
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
    use sotto_crypto::envelope::{Body, Content};
    use sotto_crypto::session::{SessionConfig, SessionStore};
    use std::time::SystemTime;

    /// Opens what the chat sealed, as the recipient's client would.
    fn open_at(to: &SecretKey, envelope: &[u8]) -> (PublicKey, Body) {
        let mut store = SessionStore::new(to.public(), SessionConfig::default());
        let r = store
            .open(to, envelope, SystemTime::now(), |_| true)
            .unwrap();
        (r.sender, r.body.unwrap())
    }

    fn book_with(dir: &std::path::Path, text: &str) -> ContactBook {
        let path = dir.join("contacts.toml");
        std::fs::write(&path, text).unwrap();
        ContactBook::load(&path).unwrap()
    }

    fn test_chat(dir: &std::path::Path, bob: &SecretKey) -> Chat {
        let book = book_with(
            dir,
            &format!("[contacts.bob]\nkey = \"{}\"\n", bob.public()),
        );
        let target = resolve(&book, "bob", false).ok();
        let pin = RelayPin {
            addr: "127.0.0.1:1".parse().unwrap(),
            key: sotto_keys::RelayKey::from_bytes([1; 32]),
            nodes: Vec::new(),
        };
        let (pool, events) = Pool::new(DeliveryLinks::new(&pin), Policy::CHAT);
        let mine = Mine::new(&pin, sotto_keys::DeliveryToken::generate());
        Chat {
            view: View::Lines,
            me: Arc::new(SecretKey::generate()),
            pin: RelayPin {
                addr: "127.0.0.1:1".parse().unwrap(),
                key: sotto_keys::RelayKey::from_bytes([1; 32]),
                nodes: Vec::new(),
            },
            book,
            sessions: SessionFiles::of(&crate::home::Home::at(dir)),
            history: History::with_setting(
                &crate::home::Home::at(dir),
                &SecretKey::generate(),
                true,
            )
            .unwrap(),
            target,
            receipts: Receipts::default(),
            unread: Vec::new(),
            outbox: Vec::new(),
            pool,
            events,
            mine,
            draining: Vec::new(),
            first_contact: true,
            acks_pending: HashSet::new(),
            next_req: 1,
            input_done: false,
            drained: false,
            noted_unknown: HashSet::new(),
            announced: HashSet::new(),
            roster: Roster::default(),
            uploads: JoinSet::new(),
            upload_states: UploadStates::new(dir.join("uploads")),
            holders: Vec::new(),
            limits: DownloadLimits::new(u64::MAX),
            transfers: transfers::Transfers::default(),
            receiving: receive::Receiving::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_that_stops_answering_pings_counts_as_gone() {
        use crate::relay_client::test_relay::fake_relay;
        let dir = tempfile::tempdir().unwrap();
        let mut chat = test_chat(dir.path(), &SecretKey::generate());
        let (_typing, mut inputs) = mpsc::channel(1);
        let (tx, pings) = tokio::sync::oneshot::channel();
        let conn = fake_relay(|mut r, mut w| async move {
            // The chat registers its token first, then asks for its mailbox.
            let Ok(Some(ClientMsg::SetDeliveryToken { req, .. })) = r.recv::<ClientMsg>().await
            else {
                panic!("expected the token first")
            };
            w.send(&RelayMsg::TokenSet { req }).await.unwrap();
            w.flush().await.unwrap();
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
    async fn typed_lines_become_messages_or_commands() {
        let dir = tempfile::tempdir().unwrap();
        let bob = SecretKey::generate();
        let mut chat = test_chat(dir.path(), &bob);
        for line in ["", "   ", "/help", "/to nobody", "/contacts", "/bogus"] {
            chat.on_input(Some(Input::Line(line.into())));
        }
        assert!(chat.outbox.is_empty());
        chat.on_input(Some(Input::Line("//not a command".into())));
        // The first message to bob is preceded by where to reach me.
        assert_eq!(chat.outbox.len(), 2);
        assert!(chat.outbox[0].sealed.message.is_none());
        let (_, opened) = open_at(&bob, &chat.outbox[1].sealed.envelope);
        assert_eq!(opened.content, Content::Text("/not a command".into()));
        assert!(!chat.input_done);
        chat.on_input(Some(Input::Line("/quit".into())));
        assert!(chat.input_done);
        chat.target = None;
        chat.input_done = false;
        chat.on_input(Some(Input::Line("to nobody".into())));
        assert_eq!(chat.outbox.len(), 2, "nothing sealed without a partner");
        chat.on_input(None);
        assert!(chat.input_done);
    }

    #[tokio::test]
    async fn on_the_screen_typed_messages_show_as_mine() {
        let dir = tempfile::tempdir().unwrap();
        let mut chat = test_chat(dir.path(), &SecretKey::generate());
        let (handle, mut screen) = crate::screen::Detached::new();
        chat.view = View::Screen(handle);
        chat.on_input(Some(Input::Line("hello bob".into())));
        chat.on_input(Some(Input::Line("//slash".into())));
        let shown: Vec<_> = screen
            .model()
            .entries
            .iter()
            .map(|e| (e.kind.clone(), e.text.clone()))
            .collect();
        assert!(
            matches!(&shown[..], [
                (crate::screen::model::Kind::Message { who: crate::screen::Who::Me { group: None }, .. }, a),
                (crate::screen::model::Kind::Message { .. }, b),
            ] if a == "hello bob" && b == "/slash"),
            "{shown:?}"
        );
        let messages = chat.outbox.iter().filter(|o| o.sealed.message.is_some());
        assert_eq!(messages.count(), 2);
    }

    #[test]
    fn only_link_failures_are_retried() {
        let addr: RelayAddr = "127.0.0.1:1".parse().unwrap();
        assert!(!is_fatal(&RelayError::Closed { addr: addr.clone() }));
        assert!(is_fatal(&refused(&addr, ErrorCode::NotAllowed, "")));
    }

    #[test]
    fn receipts_are_said_in_line_mode_and_marked_on_the_screen() {
        let (bob, carol) = (
            SecretKey::generate().public(),
            SecretKey::generate().public(),
        );
        let both = [(bob, "bob".to_owned()), (carol, "carol".to_owned())];
        let id = MessageId::random();

        // Line mode: each recipient's news once, never backwards.
        let mut r = Receipts::default();
        r.track(id, "hello both", &both, None);
        assert_eq!(
            r.advance(&id, &bob, Progress::Delivered),
            Some(News::Say("bob: delivered \"hello both\"".into()))
        );
        assert_eq!(r.advance(&id, &bob, Progress::Stored), None);
        assert_eq!(r.advance(&id, &bob, Progress::Delivered), None);
        let stranger = SecretKey::generate().public();
        assert_eq!(r.advance(&id, &stranger, Progress::Read), None);

        // On the screen: one mark, as far as every recipient got.
        let (screen, _detached) = screen::Detached::new();
        let at = screen.message(0, screen::Who::Me { group: None }, "hello both");
        let mut r = Receipts::default();
        r.track(id, "hello both", &both, Some(at));
        assert_eq!(r.advance(&id, &bob, Progress::Stored), None, "carol: sent");
        assert_eq!(
            r.advance(&id, &carol, Progress::Stored),
            Some(News::Mark(at, Mark::Stored))
        );
        assert_eq!(
            r.advance(&id, &bob, Progress::Read),
            Some(News::Mark(at, Mark::Stored))
        );
        assert_eq!(
            r.advance(&id, &carol, Progress::Read),
            Some(News::Mark(at, Mark::Read))
        );
        // Everyone read it: forgotten.
        assert!(r.tracked.is_empty());
    }

    #[tokio::test]
    async fn deliveries_waiting_together_make_one_batch_and_the_rest_comes_after() {
        let deliver = |id: u64| RelayMsg::Deliver {
            id,
            received_at: 0,
            envelope: serde_bytes::ByteBuf::from(vec![id as u8]),
        };
        let (tx, mut rx) = mpsc::channel(8);
        for msg in [deliver(2), deliver(3), RelayMsg::Pong, deliver(4)] {
            tx.send(Ok(msg)).await.unwrap();
        }
        let (batch, after) = gather_deliveries(deliver(1), &mut rx);
        assert_eq!(batch.iter().map(|d| d.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(batch[2].envelope, [3]);
        assert!(matches!(after, Some(Ok(RelayMsg::Pong))));
        // The next batch starts after the other message.
        let first = rx.recv().await.unwrap().unwrap();
        let (batch, after) = gather_deliveries(first, &mut rx);
        assert_eq!(batch.iter().map(|d| d.id).collect::<Vec<_>>(), [4]);
        assert!(after.is_none());
        // A non-delivery alone is no batch.
        let (batch, after) = gather_deliveries(RelayMsg::Drained, &mut rx);
        assert!(batch.is_empty());
        assert!(matches!(after, Some(Ok(RelayMsg::Drained))));
    }
}
