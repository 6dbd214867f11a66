//! The delivery links a client writes on: one per relay and recipient,
//! opened on demand, closed when idle, reconnected with backoff.
//!
//! A chat writes to contacts on many relays at once. One of them being down
//! must never hold up the others, and what is written meanwhile must go once
//! that relay is back, in order and once. So each link ([`LinkId`]: relay,
//! its key, recipient) has a worker task of its own with a queue: it connects
//! when there is something to deliver, hands the envelopes over one after the
//! other (each waits for the relay's `Stored`, so order holds and nothing is
//! counted as delivered before it is durable), closes the link after
//! [`Policy::idle`] without work, and after a failure tries again after a
//! delay that doubles up to [`Policy::backoff_max`], keeping its queue. It
//! tells its owner what happened through [`Event`]s.
//!
//! Live-only notices (presence) are not queued across a failure: a notice
//! that cannot go now is worthless later, so it is dropped.
//!
//! The pool knows nothing of how a link is made: [`Connect`] does that (the
//! delivery link of [`crate::relay_client`] in use, a scripted one in tests).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sotto_crypto::wire::ErrorCode;
use sotto_keys::{DeliveryToken, PublicKey};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::config::RelayPin;
use crate::relay_client::RelayError;
use crate::routes::{LinkId, Route};
use crate::undelivered::Pending;

/// Makes delivery links.
pub trait Connect: Clone + Send + Sync + 'static {
    /// The link it makes.
    type Link: Deliver;
    /// Opens a delivery link to `pin`, the relay proving the pinned key.
    fn connect(
        &self,
        pin: &RelayPin,
    ) -> impl Future<Output = Result<Self::Link, RelayError>> + Send;
}

/// One open delivery link.
pub trait Deliver: Send + 'static {
    /// Hands `envelope` to `to`'s mailbox; done once the relay has stored
    /// it durably.
    fn send(
        &mut self,
        to: &PublicKey,
        token: Option<&DeliveryToken>,
        envelope: &[u8],
    ) -> impl Future<Output = Result<(), RelayError>> + Send;
    /// Hands a live-only notice to `to`, if they are connected; never stored,
    /// never answered.
    fn notify(
        &mut self,
        to: &PublicKey,
        token: Option<&DeliveryToken>,
        envelope: &[u8],
    ) -> impl Future<Output = Result<(), RelayError>> + Send;
}

/// How the workers wait and give up.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// A link with nothing to deliver for this long is closed.
    pub idle: Duration,
    /// First wait after a failure.
    pub backoff_start: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// Give up on the first failure to reach a relay instead of trying
    /// again (a one-shot `sotto send`, which keeps what failed for later).
    pub give_up: bool,
}

impl Policy {
    /// A chat: keep trying.
    pub const CHAT: Policy = Policy {
        idle: Duration::from_secs(30),
        backoff_start: Duration::from_millis(500),
        backoff_max: Duration::from_secs(30),
        give_up: false,
    };
    /// One command that delivers and exits.
    pub const ONCE: Policy = Policy {
        idle: Duration::from_secs(1),
        backoff_start: Duration::ZERO,
        backoff_max: Duration::ZERO,
        give_up: true,
    };
}

/// What happened to deliveries.
#[derive(Debug)]
pub enum Event {
    /// The relay stored this envelope ([`Pending::id`]).
    Stored {
        /// Its local id.
        id: u64,
    },
    /// This envelope was not delivered.
    Failed {
        /// Its local id.
        id: u64,
        /// Why (shared by every envelope one failure stopped).
        error: Arc<RelayError>,
        /// Whether delivering the same bytes later can work (the relay was
        /// unreachable), as opposed to a refusal for good (a wrong token,
        /// too large).
        retry: bool,
    },
    /// A relay could not be reached: what is queued for this link waits.
    Unreachable {
        /// The link.
        link: LinkId,
        /// Why.
        error: RelayError,
    },
    /// The relay of a link that was unreachable is back.
    Reached {
        /// The link.
        link: LinkId,
    },
}

enum Job {
    Send(Pending),
    Notify(Route, Vec<u8>),
}

/// The workers, one per link.
pub struct Pool<C: Connect> {
    connect: C,
    policy: Policy,
    workers: HashMap<LinkId, mpsc::UnboundedSender<Job>>,
    tasks: JoinSet<()>,
    events: mpsc::UnboundedSender<Event>,
}

impl<C: Connect> Pool<C> {
    /// A pool that makes links with `connect`, and the events it reports.
    pub fn new(connect: C, policy: Policy) -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let pool = Self {
            connect,
            policy,
            workers: HashMap::new(),
            tasks: JoinSet::new(),
            events,
        };
        (pool, rx)
    }

    /// Queues `pending` on its link, after what is queued there already.
    pub fn send(&mut self, pending: Pending) {
        let link = pending.route.link();
        self.job(link, Job::Send(pending));
    }

    /// Hands a live-only notice over now, if its link is up or can be
    /// opened; dropped otherwise.
    pub fn notify(&mut self, route: Route, envelope: Vec<u8>) {
        let link = route.link();
        self.job(link, Job::Notify(route, envelope));
    }

    fn job(&mut self, link: LinkId, job: Job) {
        let job = match self.workers.get(&link) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                // The worker ended (its relay is not one to try again):
                // start another, which reports for itself.
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(job);
        self.workers.insert(link.clone(), tx);
        let worker = Worker {
            connect: self.connect.clone(),
            policy: self.policy,
            link,
            jobs: rx,
            events: self.events.clone(),
            queue: VecDeque::new(),
            conn: None,
            down: false,
        };
        self.tasks.spawn(worker.run());
    }

    /// Stops taking work and waits until every worker is done with what it
    /// has (delivered, failed or, with [`Policy::give_up`], given up).
    pub async fn finish(mut self) {
        self.workers.clear();
        while self.tasks.join_next().await.is_some() {}
    }
}

struct Worker<C: Connect> {
    connect: C,
    policy: Policy,
    link: LinkId,
    jobs: mpsc::UnboundedReceiver<Job>,
    events: mpsc::UnboundedSender<Event>,
    queue: VecDeque<Pending>,
    conn: Option<C::Link>,
    /// Unreachable was said, Reached not yet.
    down: bool,
}

/// Refusals of a delivery worth another try later.
fn is_retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Internal
            | ErrorCode::ShuttingDown
            | ErrorCode::RateLimited
            | ErrorCode::OutOfSpace
    )
}

/// Failures that trying again cannot mend: the relay is not the pinned one,
/// or speaks another version.
fn is_fatal(e: &RelayError) -> bool {
    matches!(
        e,
        RelayError::KeyMismatch { .. } | RelayError::Version { .. }
    )
}

impl<C: Connect> Worker<C> {
    fn pin(&self) -> RelayPin {
        RelayPin {
            addr: self.link.relay.clone(),
            key: self.link.relay_key,
            nodes: Vec::new(),
        }
    }

    async fn run(mut self) {
        let mut delay = self.policy.backoff_start;
        loop {
            if self.queue.is_empty() {
                let job = if self.conn.is_some() {
                    match tokio::time::timeout(self.policy.idle, self.jobs.recv()).await {
                        Ok(job) => job,
                        Err(_) => {
                            // Idle: close, and connect again when needed.
                            self.conn = None;
                            continue;
                        }
                    }
                } else {
                    self.jobs.recv().await
                };
                match job {
                    Some(job) => self.take(job).await,
                    None => return,
                }
            }
            while let Ok(job) = self.jobs.try_recv() {
                self.take(job).await;
            }
            if self.queue.is_empty() {
                continue;
            }
            if self.conn.is_none() {
                match self.connect.connect(&self.pin()).await {
                    Ok(conn) => {
                        self.conn = Some(conn);
                        delay = self.policy.backoff_start;
                        if self.down {
                            self.down = false;
                            let _ = self.events.send(Event::Reached {
                                link: self.link.clone(),
                            });
                        }
                    }
                    Err(error) => {
                        if self.policy.give_up || is_fatal(&error) {
                            let retry = !is_fatal(&error);
                            self.fail_all(&Arc::new(error), retry);
                            if !retry {
                                return;
                            }
                            continue;
                        }
                        if !self.down {
                            self.down = true;
                            let _ = self.events.send(Event::Unreachable {
                                link: self.link.clone(),
                                error,
                            });
                        } else {
                            tracing::debug!(error = %error, "a relay is still unreachable");
                        }
                        if !self.wait(delay).await {
                            return;
                        }
                        delay = (delay * 2).min(self.policy.backoff_max);
                        continue;
                    }
                }
            }
            self.deliver_front(&mut delay).await;
        }
    }

    /// Takes one job: a send is queued; a notice goes now if it can.
    async fn take(&mut self, job: Job) {
        match job {
            Job::Send(p) => self.queue.push_back(p),
            Job::Notify(route, envelope) => {
                if self.down {
                    return;
                }
                if self.conn.is_none() {
                    match self.connect.connect(&self.pin()).await {
                        Ok(conn) => self.conn = Some(conn),
                        Err(e) => {
                            tracing::debug!(error = %e, "a notice was not delivered");
                            return;
                        }
                    }
                }
                if let Some(conn) = &mut self.conn {
                    if let Err(e) = conn
                        .notify(&route.to, route.token.as_ref(), &envelope)
                        .await
                    {
                        tracing::debug!(error = %e, "a notice was not delivered");
                        self.conn = None;
                    }
                }
            }
        }
    }

    async fn deliver_front(&mut self, delay: &mut Duration) {
        let (Some(conn), Some(p)) = (&mut self.conn, self.queue.front()) else {
            return;
        };
        let result = conn
            .send(&p.route.to, p.route.token.as_ref(), &p.envelope)
            .await;
        let id = p.id;
        match result {
            Ok(()) => {
                self.queue.pop_front();
                let _ = self.events.send(Event::Stored { id });
            }
            Err(RelayError::Refused { code, .. }) if is_retryable(code) && !self.policy.give_up => {
                // Kept, and tried again on a new link after a pause.
                self.conn = None;
                let _ = self.wait(*delay).await;
                *delay = (*delay * 2).clamp(self.policy.backoff_start, self.policy.backoff_max);
            }
            Err(error @ RelayError::Refused { .. }) => {
                self.queue.pop_front();
                let retry =
                    matches!(&error, RelayError::Refused { code, .. } if is_retryable(*code));
                let _ = self.events.send(Event::Failed {
                    id,
                    error: Arc::new(error),
                    retry,
                });
            }
            Err(error) => {
                // The link failed: the envelope may or may not be stored;
                // it goes again (the receiver shows it once).
                self.conn = None;
                if self.policy.give_up {
                    self.fail_all(&Arc::new(error), true);
                } else {
                    tracing::debug!(error = %error, "a delivery link failed; trying again");
                    let _ = self.wait(*delay).await;
                    *delay = (*delay * 2).clamp(self.policy.backoff_start, self.policy.backoff_max);
                }
            }
        }
    }

    fn fail_all(&mut self, error: &Arc<RelayError>, retry: bool) {
        for p in self.queue.drain(..) {
            let _ = self.events.send(Event::Failed {
                id: p.id,
                error: error.clone(),
                retry,
            });
        }
    }

    /// Waits `delay`, queueing what comes meanwhile; false once the pool is
    /// gone.
    async fn wait(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                job = self.jobs.recv() => match job {
                    Some(Job::Send(p)) => self.queue.push_back(p),
                    Some(Job::Notify(..)) => {}
                    // The owner is gone; it keeps what was not stored.
                    None => return false,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_keys::{RelayAddr, RelayKey, SecretKey};
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// An envelope a relay stored, and for whom.
    type StoredAt = (RelayAddr, PublicKey, Vec<u8>);

    /// Relays that are up or down at the test's command, recording what
    /// each stored.
    #[derive(Clone, Default)]
    struct Net {
        down: Arc<Mutex<HashSet<RelayAddr>>>,
        stored: Arc<Mutex<Vec<StoredAt>>>,
        notices: Arc<Mutex<Vec<Vec<u8>>>>,
        connects: Arc<AtomicUsize>,
        refused: Arc<Mutex<HashSet<Vec<u8>>>>,
    }

    struct Link {
        net: Net,
        addr: RelayAddr,
    }

    impl Connect for Net {
        type Link = Link;
        async fn connect(&self, pin: &RelayPin) -> Result<Link, RelayError> {
            self.connects.fetch_add(1, Ordering::SeqCst);
            if self.down.lock().unwrap().contains(&pin.addr) {
                return Err(RelayError::Unreachable {
                    addr: pin.addr.clone(),
                    reason: "connection refused".into(),
                });
            }
            Ok(Link {
                net: self.clone(),
                addr: pin.addr.clone(),
            })
        }
    }

    impl Deliver for Link {
        async fn send(
            &mut self,
            to: &PublicKey,
            _token: Option<&DeliveryToken>,
            envelope: &[u8],
        ) -> Result<(), RelayError> {
            if self.net.down.lock().unwrap().contains(&self.addr) {
                return Err(RelayError::Closed {
                    addr: self.addr.clone(),
                });
            }
            if self.net.refused.lock().unwrap().contains(envelope) {
                return Err(RelayError::Refused {
                    addr: self.addr.clone(),
                    code: ErrorCode::TooLarge,
                    detail: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.net
                .stored
                .lock()
                .unwrap()
                .push((self.addr.clone(), *to, envelope.to_vec()));
            Ok(())
        }

        async fn notify(
            &mut self,
            _to: &PublicKey,
            _token: Option<&DeliveryToken>,
            envelope: &[u8],
        ) -> Result<(), RelayError> {
            self.net.notices.lock().unwrap().push(envelope.to_vec());
            Ok(())
        }
    }

    fn route(port: u16, to: PublicKey) -> Route {
        let pin = RelayPin {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            key: RelayKey::from_bytes([1; 32]),
            nodes: Vec::new(),
        };
        Route::new(&pin, to, None)
    }

    fn pending(route: &Route, text: &str) -> Pending {
        Pending::new(route.clone(), text.as_bytes().to_vec(), None, "x")
    }

    async fn next(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
        tokio::time::timeout(Duration::from_secs(600), events.recv())
            .await
            .expect("an event")
            .expect("the pool is alive")
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_down_delays_only_its_own_messages_which_go_once_in_order_when_back() {
        let net = Net::default();
        let (bob, carol) = (
            SecretKey::generate().public(),
            SecretKey::generate().public(),
        );
        let (to_bob, to_carol) = (route(1, bob), route(2, carol));
        net.down.lock().unwrap().insert(to_bob.relay.clone());
        let (mut pool, mut events) = Pool::new(net.clone(), Policy::CHAT);

        let b1 = pending(&to_bob, "b1");
        let b2 = pending(&to_bob, "b2");
        let c1 = pending(&to_carol, "c1");
        let (b1_id, b2_id, c1_id) = (b1.id, b2.id, c1.id);
        pool.send(b1);
        pool.send(c1);
        pool.send(b2);

        let mut stored = Vec::new();
        let mut unreachable = 0;
        while stored.is_empty() || unreachable < 1 {
            match next(&mut events).await {
                Event::Stored { id } => stored.push(id),
                Event::Unreachable { link, .. } => {
                    assert_eq!(link, to_bob.link());
                    unreachable += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            stored,
            [c1_id],
            "carol's message went while bob's relay was down"
        );

        // Minutes pass; bob's relay comes back.
        tokio::time::sleep(Duration::from_secs(120)).await;
        net.down.lock().unwrap().clear();
        let mut reached = false;
        while stored.len() < 3 {
            match next(&mut events).await {
                Event::Stored { id } => stored.push(id),
                Event::Reached { link } => {
                    assert_eq!(link, to_bob.link());
                    reached = true;
                }
                Event::Unreachable { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(reached);
        assert_eq!(stored, [c1_id, b1_id, b2_id]);
        let log = net.stored.lock().unwrap().clone();
        let bobs: Vec<&[u8]> = log
            .iter()
            .filter(|(_, to, _)| *to == bob)
            .map(|(_, _, e)| e.as_slice())
            .collect();
        assert_eq!(bobs, [b"b1".as_slice(), b"b2".as_slice()], "in order, once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_shot_pool_gives_up_and_says_which_can_go_later() {
        let net = Net::default();
        let bob = route(1, SecretKey::generate().public());
        let carol = route(2, SecretKey::generate().public());
        net.down.lock().unwrap().insert(bob.relay.clone());
        net.refused.lock().unwrap().insert(b"too big".to_vec());
        let (mut pool, mut events) = Pool::new(net.clone(), Policy::ONCE);
        let (b, c, big) = (
            pending(&bob, "b"),
            pending(&carol, "c"),
            pending(&carol, "too big"),
        );
        let (b_id, c_id, big_id) = (b.id, c.id, big.id);
        pool.send(b);
        pool.send(big);
        pool.send(c);
        pool.finish().await;
        let mut seen = HashMap::new();
        while let Ok(e) = events.try_recv() {
            match e {
                Event::Stored { id } => {
                    seen.insert(id, "stored");
                }
                Event::Failed { id, retry, .. } => {
                    seen.insert(id, if retry { "later" } else { "refused" });
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen[&b_id], "later");
        assert_eq!(seen[&big_id], "refused");
        assert_eq!(
            seen[&c_id], "stored",
            "a refusal does not stop the next one"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_link_is_closed_and_opened_again_when_needed() {
        let net = Net::default();
        let bob = route(1, SecretKey::generate().public());
        let (mut pool, mut events) = Pool::new(net.clone(), Policy::CHAT);
        pool.send(pending(&bob, "1"));
        pool.send(pending(&bob, "2"));
        for _ in 0..2 {
            assert!(matches!(next(&mut events).await, Event::Stored { .. }));
        }
        assert_eq!(net.connects.load(Ordering::SeqCst), 1, "one link for both");
        tokio::time::sleep(Policy::CHAT.idle * 2).await;
        pool.send(pending(&bob, "3"));
        assert!(matches!(next(&mut events).await, Event::Stored { .. }));
        assert_eq!(net.connects.load(Ordering::SeqCst), 2, "closed when idle");
    }

    #[tokio::test(start_paused = true)]
    async fn notices_go_now_or_never() {
        let net = Net::default();
        let bob = route(1, SecretKey::generate().public());
        let carol = route(2, SecretKey::generate().public());
        net.down.lock().unwrap().insert(carol.relay.clone());
        let (mut pool, _events) = Pool::new(net.clone(), Policy::CHAT);
        pool.notify(bob.clone(), b"online".to_vec());
        pool.notify(carol.clone(), b"online".to_vec());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(net.notices.lock().unwrap().len(), 1);
        net.down.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            net.notices.lock().unwrap().len(),
            1,
            "a notice that could not go is not sent later"
        );
    }
}
