//! Locks over `tokio-postgres`.

use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use dlock_core::trace::{Traced, TracedOperation};
use dlock_core::{AsyncLock, Error, Key, KeyPolicy, PgKey, Result, SessionId, SharedOp, Wait};
use futures_util::TryStreamExt;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{CancelToken, Client, Config, NoTls, SimpleQueryMessage, Socket, Transaction};

use crate::deployment::{Check, CheckStep, On, Route};
use crate::machine::{
    self, Abandon, Acquire, Failed, LockState, Operation, PayOwed, Release, Reply, Request,
    SessionFacts, Settles, Step, Verify, Waits, XactOptions, XactOutcome, XactSlices,
};
use crate::sql::{self, Failure, Hold, Holder, HolderSession, Mode};

/// A connection an [`AsyncPgLock`] can run on: the driver's [`Client`], a box of it, or a
/// `&mut` to either. For a bb8 pooled connection pass `&mut *conn`, or use dlock-pool, which
/// manages the connection for you.
///
/// Whether the lock owns its connection decides what a drop can do, because drop cannot
/// wait: see [`into_owned`](AsyncPgConnection::into_owned) and
/// [`discard`](AsyncPgConnection::discard).
pub trait AsyncPgConnection: Send {
    /// The client the lock sends its statements through.
    fn client(&mut self) -> &mut Client;

    /// The client itself, when `self` owns it: it is closed when the lock drops, which ends
    /// the session and frees its locks. Borrows return `None` (the default).
    fn into_owned(self) -> Option<Client>
    where
        Self: Sized,
    {
        None
    }

    /// Asks for the connection to be closed instead of reused, which frees every lock of its
    /// session; `true` when it will be. Pooled connections answer `true` by marking
    /// themselves broken (dlock-pool's do); the default is `false`.
    fn discard(&mut self) -> bool {
        false
    }

    /// What dlock knows of the session this value is or borrows (an [`AsyncPgSession`]
    /// answers).
    #[doc(hidden)]
    fn session_facts(&mut self) -> Option<&mut AsyncSessionFacts> {
        None
    }
}

impl AsyncPgConnection for Client {
    fn client(&mut self) -> &mut Client {
        self
    }

    fn into_owned(self) -> Option<Client> {
        Some(self)
    }
}

impl AsyncPgConnection for Box<Client> {
    fn client(&mut self) -> &mut Client {
        self
    }

    fn into_owned(self) -> Option<Client> {
        Some(*self)
    }
}

impl<T: AsyncPgConnection + ?Sized> AsyncPgConnection for &mut T {
    fn client(&mut self) -> &mut Client {
        (**self).client()
    }

    fn discard(&mut self) -> bool {
        (**self).discard()
    }

    fn session_facts(&mut self) -> Option<&mut AsyncSessionFacts> {
        (**self).session_facts()
    }
}

/// What dlock knows of one server session, as an [`AsyncPgSession`] keeps it: the replies
/// dropped locks left in flight there, beside what the machine keeps.
#[doc(hidden)]
#[derive(Default)]
pub struct AsyncSessionFacts {
    facts: SessionFacts,
    pending: Vec<Pending>,
}

impl fmt::Debug for AsyncSessionFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncSessionFacts")
            .field("facts", &self.facts)
            .field("in_flight", &self.pending.len())
            .finish()
    }
}

/// A PostgreSQL server session over a tokio-postgres [`Client`] (owned, borrowed or pooled),
/// as dlock knows it: it holds locks on any number of keys, released in any order, and keeps
/// what outlives any one lock object on it.
///
/// - **Many keys.** [`acquire`](AsyncPgSession::acquire),
///   [`try_acquire`](AsyncPgSession::try_acquire) and
///   [`acquire_timeout`](AsyncPgSession::acquire_timeout) take a key's lock for the session,
///   [`release`](AsyncPgSession::release) gives back any of them, in any order. Taking a key
///   the session holds already takes a second hold (PostgreSQL counts them), and each release
///   gives back one. For a shared, fenced or side-connection lock, use a one-key lock on the
///   session ([`lock`](AsyncPgSession::lock)).
/// - **Holds owed by dropped locks.** A lock on the session dropped while it holds queues its
///   unlock at once; the session reads the reply before its next statement through dlock, and
///   if the server refused it (a transaction of yours was aborted), releases that hold again
///   then, after your `ROLLBACK`: exactly that hold, never another of the same key.
/// - **Prepared statements and the deployment check's verdict**, shared by the locks made
///   on it one after another.
///
/// Dropping the session cannot wait: it queues the unlocks of what it holds and owes on the
/// client (an owned client then closes, which ends the session and frees every lock; a pooled
/// one is discarded). Call [`into_inner`](AsyncPgSession::into_inner) to know the outcome.
///
/// # Cancel Safety
///
/// Every method's future can be dropped: what it leaves in flight is the session's to read
/// and settle before its next statement, as for [`AsyncPgLock`].
///
/// # Examples
///
/// ```no_run
/// use dlock_postgres::AsyncPgSession;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let (client, connection) =
///     tokio_postgres::connect("postgres://postgres@localhost/postgres", tokio_postgres::NoTls)
///         .await?;
/// tokio::spawn(connection);
/// let mut session = AsyncPgSession::new(client);
/// session.acquire("accounts/1").await?;
/// session.acquire("accounts/2").await?;
/// session.release("accounts/1").await?; // In any order.
/// session.client().execute("UPDATE accounts SET frozen = true WHERE id = 2", &[]).await?;
/// session.release("accounts/2").await?;
/// # Ok(())
/// # }
/// ```
pub struct AsyncPgSession<C: AsyncPgConnection> {
    /// Always `Some` until `into_inner` or drop takes it.
    conn: Option<C>,
    facts: AsyncSessionFacts,
    policy: KeyPolicy,
    /// What the session holds through its own methods, oldest first.
    holds: Vec<LockState>,
}

impl<C: AsyncPgConnection> AsyncPgSession<C> {
    /// The session of `conn`, holding nothing.
    pub fn new(conn: C) -> Self {
        AsyncPgSession {
            conn: Some(conn),
            facts: AsyncSessionFacts::default(),
            policy: KeyPolicy::default(),
            holds: Vec::new(),
        }
    }

    /// A one-key lock on this session, unlocked, under the default key policy; it shares
    /// what the session knows and owes.
    pub fn lock(&mut self, key: impl Into<Key>) -> AsyncPgLock<&mut Self> {
        AsyncPgLock::new(self, key)
    }

    /// The client, for work of your own. Do not release locks through it with raw SQL: the
    /// session would no longer know what it holds.
    pub fn client(&mut self) -> &mut Client {
        self.conn
            .as_mut()
            .expect("the connection is only taken by into_inner and drop")
            .client()
    }

    dlock_core::__session_methods!(async, AsyncPgLock<&mut Self>);

    /// A lock on this session over a state the session holds.
    fn with_state(&mut self, state: LockState) -> AsyncPgLock<&mut Self> {
        AsyncPgLock {
            conn: Some(self),
            state,
            pending: None,
            side: None,
            connector: None,
        }
    }

    /// Releases everything the session's own methods hold and pays what it owes, then gives
    /// the connection back with the first failure, if any.
    ///
    /// # Cancel Safety
    ///
    /// Dropping this future drops the session, with the guarantees of drop.
    pub async fn into_inner(mut self) -> (C, Result<()>) {
        let mut outcome = Ok(());
        while let Some(state) = self.holds.pop() {
            let lock = self.with_state(state);
            // A refused release leaves the hold owed to the session.
            let (_, released) = lock.into_inner().await;
            outcome = outcome.and(released);
        }
        let (_, paid) = AsyncPgLock::new(&mut self, Key::from(0_i64))
            .into_inner()
            .await;
        outcome = outcome.and(paid);
        let conn = self
            .conn
            .take()
            .expect("the connection is only taken by into_inner and drop");
        (conn, outcome)
    }
}

impl<C: AsyncPgConnection> AsyncPgConnection for AsyncPgSession<C> {
    fn client(&mut self) -> &mut Client {
        AsyncPgSession::client(self)
    }

    fn discard(&mut self) -> bool {
        self.conn.as_mut().is_some_and(AsyncPgConnection::discard)
    }

    fn session_facts(&mut self) -> Option<&mut AsyncSessionFacts> {
        Some(&mut self.facts)
    }
}

impl<C: AsyncPgConnection> Drop for AsyncPgSession<C> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let owed = self.facts.facts.owed();
        if self.holds.is_empty() && owed.is_empty() && self.facts.pending.is_empty() {
            return;
        }
        let client = conn.client();
        if client.is_closed() {
            return;
        }
        // Queued behind whatever is in flight, in order: an unlock the server refused in
        // flight is owed, but cannot be known refused before the drop returns.
        for state in &self.holds {
            if let Some(hold) = state.held() {
                drop(send_now(client, &sql::unlock(hold)));
            }
        }
        // A cleanup already in flight runs once; sending it again could take another hold.
        let mut unsent: Vec<Hold> = owed.to_vec();
        for pending in &self.facts.pending {
            if let Settles::Cleanup(hold) = pending.settles {
                if let Some(at) = unsent.iter().position(|owed| *owed == hold) {
                    unsent.remove(at);
                }
            }
        }
        for hold in unsent {
            drop(send_now(client, &sql::cleanup(hold)));
        }
        // A pooled connection is closed rather than trusted; an owned client closes as it
        // drops, after what it queued, which ends the session and frees every lock.
        conn.discard();
    }
}

impl<C: AsyncPgConnection> fmt::Debug for AsyncPgSession<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncPgSession")
            .field("held", &self.held().collect::<Vec<_>>())
            .field("owed", &self.facts.facts.owed().len())
            .field("in_flight", &self.facts.pending.len())
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL session-level advisory lock over a [`tokio_postgres::Client`].
///
/// `C` is the client itself, a `&mut Client`, or anything else that implements
/// [`AsyncPgConnection`]. A lock that owns its client is `Send + 'static` and can move into
/// a spawned task.
///
/// The contract is the [`AsyncLock`] trait's, the same as the blocking
/// `PgLock`'s (feature `blocking`): one round trip per operation, waiting in the server, and
/// two lock objects with the same key on one session both hold (each releases its own).
///
/// # Cancel safety and drop
///
/// Every future of this type can be dropped at any point (under `tokio::time::timeout`,
/// `select!`) without leaving a lock that nobody tracks, and without touching any other
/// statement or any other hold of the session:
///
/// - A dropped acquire queues one cleanup behind its statement, which unlocks the key if,
///   and only if, that statement was granted it; the lock reads its reply before its next
///   operation, so it runs exactly once.
/// - No cancel request is sent that could end another statement. A wait goes in slices
///   instead: a try, then waits in the server of at most 400 ms each. A dropped wait ends on
///   its own within one slice, so what you send on the client meanwhile waits at most that
///   long; a slice that runs out neither aborts your transaction nor logs an error. With a
///   [`side_connection`](AsyncPgLock::side_connection) a dropped wait ends at once: the side
///   connection cancels exactly that statement, seen waiting in the server. An owned client
///   dropped mid-wait (or a discarded pooled connection) is closing, and its wait is
///   cancelled outright.
/// - A dropped release has either not started (the lock is still held) or sent its unlock,
///   which the connection completes on its own.
/// - Drop cannot await, so release on drop is not immediate: dropping a held lock queues its
///   unlock on the connection, which runs it after whatever the client sent before. If the
///   lock owned its client, the client closes after that, which ends the session and frees
///   its locks in any case. Call `release().await` to know the outcome.
///
/// This relies on tokio-postgres handing a statement to its connection task on the first
/// poll of the statement's future; the tests pin that behaviour.
///
/// # Examples
///
/// ```no_run
/// use dlock_postgres::{AsyncLock, AsyncPgLock};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (client, connection) =
///     tokio_postgres::connect("postgres://postgres@localhost/postgres", tokio_postgres::NoTls)
///         .await?;
/// tokio::spawn(connection);
/// let mut lock = AsyncPgLock::new(client, "nightly-report");
/// if lock.acquire_timeout(Duration::from_secs(5)).await? {
///     lock.client().execute("UPDATE reports SET running = true", &[]).await?;
///     lock.release().await?;
/// }
/// # Ok(())
/// # }
/// ```
#[must_use = "a lock does nothing until it is acquired"]
pub struct AsyncPgLock<C: AsyncPgConnection> {
    /// Always `Some` until `into_inner` or drop takes it.
    conn: Option<C>,
    state: LockState,
    /// The reply of a statement a dropped future left in flight, read before the next
    /// operation.
    pending: Option<Pending>,
    /// Where a side connection that ends a dropped wait connects to, if the user gave it.
    side: Option<Config>,
    /// How the side connection and a cancel request connect: plain text unless the user gave
    /// a TLS connector.
    connector: Option<SideTls>,
}

/// A reply that outlives the future that sent its statement.
type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// A future of the driver's that outlives what started it.
type DriverFuture<T> =
    Pin<Box<dyn Future<Output = std::result::Result<T, tokio_postgres::Error>> + Send>>;

/// How a lock opens the connections it needs beside its own (the side connection, the cancel
/// request after a dropped acquire): through your TLS connector, or, by default, in plain
/// text. The connector's type is erased, so that a lock's type does not name it; clones share
/// the connector.
///
/// Build it once from the connector your own connections use, and hand it to each lock
/// ([`AsyncPgLock::side_tls`]) or to a pool, which hands it to each of its locks.
///
/// ```no_run
/// # fn run<T>(tls: T)
/// # where
/// #     T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Clone + Send + Sync + 'static,
/// #     T::Stream: Send + 'static,
/// #     T::TlsConnect: Send,
/// #     <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
/// # {
/// let side = dlock_postgres::tokio::SideTls::new(tls);
/// # drop(side);
/// # }
/// ```
#[derive(Clone)]
pub struct SideTls {
    connect: Arc<dyn Fn(Config) -> DriverFuture<Client> + Send + Sync>,
    cancel: Arc<dyn Fn(CancelToken) -> DriverFuture<()> + Send + Sync>,
}

impl SideTls {
    /// Opens side connections and sends cancel requests through `tls`.
    pub fn new<T>(tls: T) -> SideTls
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let for_cancel = tls.clone();
        SideTls {
            connect: Arc::new(move |config: Config| {
                let tls = tls.clone();
                Box::pin(async move {
                    let (client, connection) = config.connect(tls).await?;
                    tokio::spawn(connection);
                    Ok(client)
                })
            }),
            cancel: Arc::new(move |token: CancelToken| {
                let tls = for_cancel.clone();
                Box::pin(async move { token.cancel_query(tls).await })
            }),
        }
    }

    /// Connects with `config`, the connection driven by a spawned task.
    fn connect(&self, config: Config) -> DriverFuture<Client> {
        (self.connect)(config)
    }

    /// Sends the cancel request of `token`'s session.
    fn cancel(&self, token: CancelToken) -> DriverFuture<()> {
        (self.cancel)(token)
    }
}

/// Plain text, as without a connector.
impl Default for SideTls {
    fn default() -> SideTls {
        SideTls::new(NoTls)
    }
}

impl fmt::Debug for SideTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SideTls")
    }
}

/// The reply of a statement a dropped future left in flight, and what it settles.
struct Pending {
    settles: Settles,
    reply: ReplyFuture,
}

/// `reply`, or [`Error::no_reply`] when the server has not answered
/// [`REPLY_GRACE`](dlock_core::REPLY_GRACE) after the wait it was asked for (`asked`): a
/// dropped reply future, which leaves the attempt as a dropped acquire does.
pub(crate) async fn within_grace<T>(
    asked: Duration,
    reply: impl Future<Output = Result<T>>,
) -> Result<T> {
    let limit = asked.saturating_add(dlock_core::REPLY_GRACE);
    tokio::time::timeout(limit, reply)
        .await
        .unwrap_or_else(|_| Err(Error::no_reply(limit)))
}

/// Sends a simple query at once, and returns its reply as a future of its own that does not
/// borrow the client: tokio-postgres hands a query to its connection task on the first poll
/// of `simple_query_raw`, which completes then.
fn send_now(client: &Client, statement: &str) -> ReplyFuture {
    let mut sending = pin!(client.simple_query_raw(statement));
    match sending
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(Ok(stream)) => Box::pin(async move {
            let reply: Vec<SimpleQueryMessage> = stream.try_collect().await?;
            Ok(sql::last_row(&reply))
        }),
        Poll::Ready(Err(error)) => Box::pin(std::future::ready(Err(Failed::from(error)))),
        Poll::Pending => Box::pin(std::future::ready(Err(Failed {
            failure: Failure::Other,
            error: Error::backend(
                "tokio-postgres did not send a query on its first poll, which dlock relies on",
            ),
        }))),
    }
}

/// Drives one operation; if its future is dropped with a statement in flight, tells the
/// machine, and keeps or queues what it asks for.
struct Driver<'a, O: Operation> {
    client: &'a Client,
    state: &'a mut LockState,
    pending: &'a mut Option<Pending>,
    /// Where a side connection that ends a dropped wait connects to, and how.
    side: Option<(&'a Config, Option<&'a SideTls>)>,
    op: O,
    /// The reply of the simple query in flight, kept so that a drop can hand it on.
    in_flight: Option<ReplyFuture>,
    /// Set while any statement is in flight.
    sent: bool,
}

impl<O: Operation> Driver<'_, O> {
    async fn run(mut self) -> Result<O::Output> {
        let mut reply = None;
        loop {
            let request = match self.op.step(self.state, reply.take()) {
                Step::Done(outcome) => return outcome,
                Step::Send(request) => request,
            };
            self.sent = true;
            reply = Some(match request {
                Request::Simple(statement) => {
                    let in_flight = self.in_flight.insert(send_now(self.client, &statement));
                    let reply = in_flight.await;
                    self.in_flight = None;
                    reply
                }
                // Nothing is locked before the lock statement: a drop here leaves nothing.
                Request::Prepare(kind, shape) => {
                    let (text, types) = self.state.statement_sql(kind, shape);
                    match self.client.prepare_typed(&text, types).await {
                        Ok(statement) => {
                            self.state.keep(kind, shape, statement);
                            Ok(None)
                        }
                        Err(error) => Err(Failed::from(error)),
                    }
                }
                Request::Prepared(kind, hold) => {
                    let statement = self
                        .state
                        .prepared(kind, hold)
                        .expect("the machine asks only for kept statements")
                        .clone();
                    self.client
                        .query(&statement, &sql::params(&hold.key))
                        .await
                        .map(|rows| sql::prepared_row(&rows))
                        .map_err(Failed::from)
                }
            });
            self.sent = false;
        }
    }
}

impl<O: Operation> Drop for Driver<'_, O> {
    fn drop(&mut self) {
        if !self.sent {
            return;
        }
        let kept = self.in_flight.take();
        *self.pending = match self.state.abandon(self.op.in_flight()) {
            Abandon::Nothing => None,
            Abandon::Keep(settles) => kept.map(|reply| Pending { settles, reply }),
            Abandon::Queue {
                fence,
                cleanup,
                settles,
            } => {
                if let (Some(token), Some((config, connector))) = (fence, self.side) {
                    end_wait(self.client, config, connector, token);
                }
                Some(Pending {
                    settles,
                    reply: send_now(self.client, &cleanup),
                })
            }
        };
    }
}

/// Ends the server-side wait of a dropped statement tagged with `token`, from a side
/// connection opened with `config`, without touching any other statement of the session.
///
/// A fence queued here, behind the dropped statement, waits for the attempt's gate. The side
/// connection first takes the gate, then sends at most one cancel request, and only while the
/// server shows the tagged statement waiting for its lock (the check and the request are one
/// statement): so the request can reach only the waiting statement or the fence, which cannot
/// pass the gate. The side connection releases the gate once the server shows the fence
/// waiting for it, seen after the request was made: a request still pending then is delivered
/// to the fence before its wait, so nothing is left pending for a later statement. Without a
/// tokio runtime nothing is queued, and the wait goes on until it ends.
fn end_wait(client: &Client, config: &Config, connector: Option<&SideTls>, token: u64) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let fence = send_now(client, &sql::fence(token));
    let (config, connector) = (config.clone(), connector.cloned().unwrap_or_default());
    runtime.spawn(async move {
        if let Err(error) = watch(config, &connector, token, fence).await {
            tracing::warn!(%error, "the side connection could not end a dropped lock wait");
        }
    });
}

/// The side connection's part of [`end_wait`].
async fn watch(
    config: Config,
    connector: &SideTls,
    token: u64,
    mut fence: ReplyFuture,
) -> std::result::Result<(), tokio_postgres::Error> {
    let side = connector.connect(config).await?;
    side.simple_query(&sql::side::take_gate(token)).await?;
    let mut canceled = false;
    loop {
        // The fence ended (through the gate, a cancel request, or an error): nothing waits
        // behind it and nothing can be pending for later statements.
        let over = std::future::poll_fn(|cx| Poll::Ready(fence.as_mut().poll(cx).is_ready()));
        if over.await {
            break;
        }
        if !canceled {
            let sent = side.simple_query(&sql::side::cancel_waiting(token)).await?;
            canceled = sql::last_row(&sent)
                .and_then(|row| row.into_iter().next().flatten())
                .is_some_and(|count| count != "0");
            if canceled {
                continue;
            }
        }
        let waits = side.simple_query(&sql::side::fence_waits(token)).await?;
        if sql::read_bool(&sql::last_row(&waits), 0).unwrap_or(false) {
            break;
        }
        tokio::task::yield_now().await;
    }
    side.simple_query(&sql::side::release_gate(token)).await?;
    Ok(())
}

impl<C: AsyncPgConnection> AsyncPgLock<C> {
    /// An exclusive lock on `key` over `conn`, unlocked, under the default key policy.
    pub fn new(conn: C, key: impl Into<Key>) -> Self {
        let mut state = LockState::new(key.into());
        state.waits = Waits::Sliced;
        AsyncPgLock {
            conn: Some(conn),
            state,
            pending: None,
            side: None,
            connector: None,
        }
    }

    crate::methods::lock_methods!();

    /// Vouches that the connection goes through a pooler in session mode (pgbouncer's
    /// `pool_mode = session`), which keeps one server session per client connection.
    ///
    /// Without it, the first acquire proves that the connection is direct: the pid in its
    /// cancel key is the server session's own, which a pooler in any mode replaces with a key
    /// of its own; a pooler is refused ([`Deployment::UnprovenPooler`](dlock_core::Deployment::UnprovenPooler)),
    /// since nothing a client sees tells session mode from transaction mode. With it, the
    /// check infers instead, as the blocking `PgLock` does: it still refuses a pooler whose
    /// statements it sees move between server sessions, but not an idle transaction pooler
    /// that happens to keep them on one. The risk of a wrong pool mode is yours.
    pub fn trust_session_pooler(mut self) -> Self {
        self.state.route = Route::TrustedSessionPooler;
        self
    }

    /// Lets a dropped acquire end its wait in the server at once, through a side connection
    /// opened with `config` for the user the lock's own connection logs in as (in plain text,
    /// unless [`tls`](AsyncPgLock::tls) gives a connector).
    ///
    /// Without it, a wait goes in slices of at most 400 ms, and statements sent on the client
    /// after a dropped acquire wait behind it for at most one slice. With it, a wait is one
    /// tagged statement (sent as text, which costs about a tenth of a plain acquire's cycle
    /// while it waits), the side connection cancels exactly that wait when its future is
    /// dropped, and a fence holds the session back until no request can be pending (see the
    /// type's docs). The side connection is opened only when a waiting acquire is dropped.
    pub fn side_connection(mut self, config: Config) -> Self {
        self.state.waits = Waits::Tagged;
        self.side = Some(config);
        self
    }

    /// Opens the connections this lock needs beside its own with `tls`, your TLS connector
    /// (the one your own connection uses, `tokio-postgres-rustls`' or `postgres-native-tls`'):
    /// the [`side_connection`](AsyncPgLock::side_connection), and the cancel request that
    /// ends the wait of an acquire dropped while its connection closes. Without it they go in
    /// plain text, which a server that takes only TLS refuses, and which shows the session's
    /// cancel key to the network.
    ///
    /// ```no_run
    /// # async fn run<T>(client: tokio_postgres::Client, tls: T, config: tokio_postgres::Config)
    /// # where
    /// #     T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Clone + Send + Sync + 'static,
    /// #     T::Stream: Send + 'static,
    /// #     T::TlsConnect: Send,
    /// #     <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
    /// # {
    /// use dlock_postgres::AsyncPgLock;
    /// let lock = AsyncPgLock::new(client, "nightly-report")
    ///     .side_connection(config)
    ///     .tls(tls);
    /// # drop(lock);
    /// # }
    /// ```
    pub fn tls<T>(self, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        self.side_tls(SideTls::new(tls))
    }

    /// As [`tls`](AsyncPgLock::tls), with a connector already erased: what a pool hands to
    /// each of its locks.
    pub fn side_tls(mut self, tls: SideTls) -> Self {
        self.connector = Some(tls);
        self
    }

    /// The client, for work inside the critical section.
    pub fn client(&mut self) -> &mut Client {
        self.get_mut().client()
    }

    /// Every session of this database that holds this lock's key, with its mode.
    ///
    /// # Errors
    ///
    /// What the server or the connection reports.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: it only reads.
    pub async fn holders(&mut self) -> Result<Vec<Holder>> {
        let key = self.pg_key()?;
        holders_async(self.client(), key).await
    }

    /// Releases the lock if held (or runs the cleanup a dropped acquire left owed), and gives
    /// the connection back with the outcome (`Ok(())` when there was nothing to do).
    ///
    /// # Cancel Safety
    ///
    /// Dropping this future drops the lock, with the guarantees of drop.
    pub async fn into_inner(mut self) -> (C, Result<()>) {
        let released = if self.state.held().is_some() {
            self.release().await
        } else {
            self.run(|_| Ok(PayOwed::start())).await
        };
        // On a session, a hold whose release the server refused is left owed to it.
        if let Some(session) = self
            .conn
            .as_mut()
            .and_then(AsyncPgConnection::session_facts)
        {
            self.state.hand_back(&mut session.facts, true);
        }
        let conn = self
            .conn
            .take()
            .expect("the connection is only taken by into_inner and drop");
        (conn, released)
    }

    /// Reads the replies dropped futures (of this lock, and of dropped locks on its session)
    /// left in flight, and settles what they were for. A reply stays kept until it is read,
    /// whatever happens to this future.
    async fn settle_pending(&mut self) {
        if let Some(pending) = self.pending.as_mut() {
            let reply = pending.reply.as_mut().await;
            let settles = pending.settles;
            self.pending = None;
            self.state.settle(settles, reply);
        }
        while let Some(session) = self
            .conn
            .as_mut()
            .and_then(AsyncPgConnection::session_facts)
        {
            let Some(pending) = session.pending.first_mut() else {
                break;
            };
            let reply = pending.reply.as_mut().await;
            let settles = pending.settles;
            session.pending.remove(0);
            session.facts.settle(settles, reply);
        }
    }

    /// Takes over what the session knows and owes, once what was left in flight is read.
    async fn adopt_session(&mut self) {
        self.settle_pending().await;
        if let Some(session) = self
            .conn
            .as_mut()
            .and_then(AsyncPgConnection::session_facts)
        {
            self.state.adopt(&mut session.facts);
        }
    }

    /// Runs one operation of the machine on this lock's connection, started from the lock's
    /// state once it has taken over what the session knows and owes.
    async fn run<O: Operation>(
        &mut self,
        start: impl FnOnce(&LockState) -> Result<O>,
    ) -> Result<O::Output> {
        self.adopt_session().await;
        self.run_adopted(start).await
    }

    /// [`run`](Self::run), for an operation whose caller took over the session already.
    async fn run_adopted<O: Operation>(
        &mut self,
        start: impl FnOnce(&LockState) -> Result<O>,
    ) -> Result<O::Output> {
        let conn = self
            .conn
            .as_mut()
            .expect("the connection is only taken by into_inner and drop");
        let outcome = match start(&self.state) {
            Ok(op) => {
                Driver {
                    client: conn.client(),
                    state: &mut self.state,
                    pending: &mut self.pending,
                    side: self
                        .side
                        .as_ref()
                        .map(|config| (config, self.connector.as_ref())),
                    op,
                    in_flight: None,
                    sent: false,
                }
                .run()
                .await
            }
            Err(error) => Err(error),
        };
        // A future dropped before this point leaves the facts with the lock, which hands them
        // back at its next operation or its drop.
        if let Some(session) = conn.session_facts() {
            self.state.hand_back(&mut session.facts, false);
        }
        outcome
    }

    async fn take(&mut self, wait: Wait) -> Result<bool> {
        self.traced(TracedOperation::Acquire(wait))
            .around(async {
                self.adopt_session().await;
                if self.state.check_deployment && self.state.route == Route::Unknown {
                    self.state.route = route_of(self.client()).await;
                }
                self.run_adopted(|state| Acquire::start(state, wait)).await
            })
            .await
    }
}

dlock_core::__connection_lock!(AsyncPgLock, AsyncPgConnection, KeyPolicy::pg_key, async);

impl<C: AsyncPgConnection> AsyncLock for AsyncPgLock<C> {
    fn key(&self) -> &Key {
        &self.state.key
    }

    /// Waits, in the server, until this session holds the lock.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: a dropped acquire's wait ends in the server within one slice (or at once,
    /// with a side connection), and its cleanup unlocks the key if it was granted (see the
    /// type's docs).
    async fn acquire(&mut self) -> Result<()> {
        self.take(Wait::Forever).await.map(drop)
    }

    /// Takes the lock if it is free, without waiting.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: if the future is dropped after the statement was sent, a queued
    /// cleanup unlocks the key if it was granted.
    async fn try_acquire(&mut self) -> Result<bool> {
        self.take(Wait::Never).await
    }

    /// Waits at most `timeout` in the server: a try, then slices that each set
    /// `lock_timeout` for their one wait, with `statement_timeout` off (the session's settings
    /// are unchanged afterwards), until the timeout has passed; `Ok(false)` comes no earlier.
    /// Whole milliseconds, rounded up; a zero timeout is a try. The timeout also bounds the
    /// wait for a statement an earlier dropped future left running.
    ///
    /// If the server has not answered [`REPLY_GRACE`](dlock_core::REPLY_GRACE) after the
    /// timeout (a frozen server or a partition, where its timer cannot fire), this returns
    /// [`Error::no_reply`] and leaves the attempt as a dropped acquire does: its cleanup is
    /// queued, and runs when the server answers again. Needs a runtime with timers enabled.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe, as [`acquire`](AsyncLock::acquire).
    async fn acquire_timeout(&mut self, timeout: Duration) -> Result<bool> {
        let started = Instant::now();
        let session_pending = self
            .conn
            .as_mut()
            .and_then(AsyncPgConnection::session_facts)
            .is_some_and(|session| !session.pending.is_empty());
        if (self.pending.is_some() || session_pending)
            && tokio::time::timeout(timeout, self.settle_pending())
                .await
                .is_err()
        {
            // The connection is still busy with what a dropped future left running.
            return Ok(false);
        }
        let left = timeout.saturating_sub(started.elapsed());
        // The grace is counted from the wait the server is asked for.
        within_grace(left, self.take(Wait::for_timeout(left))).await
    }

    /// Releases the lock.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: once polled, the lock counts as released and its unlock is on its way
    /// to the server, which runs it whether or not the future completes. If the server
    /// refuses it (an aborted transaction), the lock counts as held again at its next
    /// operation.
    async fn release(&mut self) -> Result<()> {
        self.traced(TracedOperation::Release)
            .around(self.run(Release::start))
            .await
    }

    fn is_acquired(&self) -> bool {
        self.state.held().is_some()
    }

    /// Asks `pg_locks` whether this session holds the lock in this lock's mode. After the
    /// connection was lost this is `Ok(false)`.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: it only reads (an owed cleanup it started still runs).
    async fn verify(&mut self) -> Result<bool> {
        self.traced(TracedOperation::Verify)
            .around(async {
                if self.client().is_closed() {
                    return Verify::start(&self.state).map(|_| false);
                }
                self.run(Verify::start).await
            })
            .await
    }
}

impl<C: AsyncPgConnection> Drop for AsyncPgLock<C> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if conn.client().is_closed() {
            return;
        }
        if conn.session_facts().is_some() {
            // The session outlives this lock: what is in flight is read, and what is owed paid,
            // before its next statement through dlock.
            let mut queued: Vec<Pending> = self.pending.take().into_iter().collect();
            if let Some(hold) = self.state.held() {
                tracing::debug!(key = %self.state.key, "dropping a held PostgreSQL lock: unlock queued");
                queued.push(Pending {
                    settles: Settles::Unlock(hold),
                    reply: send_now(conn.client(), &sql::unlock(hold)),
                });
            }
            if let Some(session) = conn.session_facts() {
                session.pending.extend(queued);
                self.state.hand_back(&mut session.facts, false);
            }
            return;
        }
        let client = conn.client();
        // A reply that is already there settles what it was for; one still on its way means a
        // statement a dropped future left running may still occupy the session.
        let mut busy = false;
        if let Some(mut pending) = self.pending.take() {
            let waker = Waker::noop();
            match pending.reply.as_mut().poll(&mut Context::from_waker(waker)) {
                Poll::Ready(reply) => self.state.settle(pending.settles, reply),
                Poll::Pending => busy = true,
            }
        }
        if let Some(hold) = self.state.held() {
            tracing::debug!(key = %self.state.key, "dropping a held PostgreSQL lock: unlock queued");
            drop(send_now(client, &sql::unlock(hold)));
        } else if let (Some(hold), false) = (self.state.owes(), busy) {
            // Owed and not on its way (never sent, or refused): send it once more.
            drop(send_now(client, &sql::cleanup(hold)));
        }
        // When the connection is closing, nothing else can run on the session, so a cancel
        // request can end only the wait a dropped future left running.
        let token = client.cancel_token();
        if busy && (conn.discard() || conn.into_owned().is_some()) {
            let cancel = self.connector.take().unwrap_or_default().cancel(token);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        if let Err(error) = cancel.await {
                            tracing::debug!(%error, "could not cancel the wait of a dropped acquire");
                        }
                    });
                }
                Err(_) => tracing::debug!(
                    "a dropped acquire's wait goes on until the server notices the closed connection"
                ),
            }
        }
    }
}

impl<C: AsyncPgConnection> fmt::Debug for AsyncPgLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncPgLock")
            .field("key", &self.state.key)
            .field("policy", &self.state.policy)
            .field("mode", &self.state.mode)
            .field("held", &self.state.held())
            .field("cleanup_owed", &self.state.owes().is_some())
            .finish_non_exhaustive()
    }
}

/// Creates the table of fencing tokens, the default one (`public.dlock_fence`), and its clock
/// (the sequence `public.dlock_fence_clock`), if they do not exist: the async form of the
/// blocking `install_fencing`. Idempotent.
///
/// Cancel safety: `CREATE TABLE IF NOT EXISTS` either ran or did not; run it again.
///
/// # Errors
///
/// What the server reports (for example a missing privilege).
pub async fn install_fencing_async(client: &Client) -> Result<()> {
    install_fencing_in_async(client, crate::sql::DEFAULT_FENCE_TABLE).await
}

/// Creates the table of fencing tokens `table` (`name` or `schema.name`) and its clock (the
/// sequence `<table>_clock`) if they do not exist, for locks made `fenced_in` it.
///
/// Cancel safety: as [`install_fencing_async`].
///
/// # Errors
///
/// [`Error::InvalidKey`](dlock_core::Error::InvalidKey) for a name that is not plain, or
/// what the server reports.
pub async fn install_fencing_in_async(client: &Client, table: &str) -> Result<()> {
    let statement = crate::sql::install_fencing(&crate::sql::fence_table(table)?);
    match client.batch_execute(&statement).await {
        Err(error) if sql::lost_the_create_race(&error) => client.batch_execute(&statement).await,
        outcome => outcome,
    }
    .map_err(sql::error)
}

/// Checks that a session lock over `client` excludes: that the server is no hot standby, and
/// that no pooler in transaction or statement mode stands between (the error names what was
/// found and what to do).
///
/// With a `second` connection to the same place (same address, database and user), a
/// transaction pooler is found at once: it lets the two connections share a server session,
/// which neither a direct connection nor session pooling ever does. Alone, `client` shows a
/// pooler only when its statements happen to move between server sessions. Locks run the
/// one-connection check before their first acquire; this is for connections you open
/// yourself, before you build locks on them with `skip_deployment_check()`.
///
/// Cancel safety: the check only reads, so dropping it leaves nothing behind.
///
/// # Errors
///
/// [`Error::CannotExclude`](dlock_core::Error::CannotExclude) when a lock would exclude
/// nobody, or what the server or the connection reports.
pub async fn check_deployment_async(client: &Client, second: Option<&Client>) -> Result<()> {
    check_route(client, second, route_of(client).await).await
}

/// The deployment check for a pooler in session mode that you vouch for, which no client can
/// tell from a pooler in transaction mode by what it sees: refuses a hot standby and engines
/// whose locks exclude nobody, and a pooler that moves `client`'s statements between server
/// sessions (with `second`, as [`check_deployment_async`] does without a cancel key). Locks
/// built with `trust_session_pooler()` run it.
///
/// # Errors
///
/// As [`check_deployment_async`].
///
/// # Cancel Safety
///
/// Cancel safe: a dropped check leaves a session setting of its own, nothing else.
pub async fn check_session_pooler_async(client: &Client, second: Option<&Client>) -> Result<()> {
    check_route(client, second, Route::TrustedSessionPooler).await
}

/// What the client knows of its route to the server: the process id in its cancel key (see
/// [`cancel_key_async`]).
async fn route_of(client: &Client) -> Route {
    match cancel_key_async(client).await {
        Some(key) => Route::CancelKey(key.pid),
        None => Route::Unknown,
    }
}

/// The cancel key the server (or a pooler) gave `client` as it connected: the process id and
/// the secret a cancel request carries. It names the client's server session (on a direct
/// connection) or its pooler connection, for as long as the connection lives: two clients
/// with equal keys are one connection. Its `Debug` shows the process id, never the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// The process id of the key: the server session's on a direct connection.
    pub pid: i32,
    secret: i32,
}

impl fmt::Debug for CancelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelKey")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// The cancel key of `client`, read by letting the key's cancel request write itself into an
/// in-memory stream: no I/O to the server. `None` when the request cannot be read (a TLS mode
/// the reader does not follow). A client whose TLS mode asks for TLS first sends its TLS
/// request there; the stream accepts it, and the request follows as written, since no bytes
/// leave the process.
///
/// # Cancel Safety
///
/// Cancel safe: nothing leaves the process.
pub async fn cancel_key_async(client: &Client) -> Option<CancelKey> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ours, theirs) = tokio::io::duplex(64);
    let token = client.cancel_token();
    let read = async move {
        let mut request = [0u8; 16];
        ours.read_exact(&mut request[..8]).await.ok()?;
        // An SSLRequest (length 8, code 80877103): say yes, and the cancel request follows.
        if request[..8] == [0, 0, 0, 8, 4, 210, 22, 47] {
            ours.write_all(b"S").await.ok()?;
            ours.read_exact(&mut request[..8]).await.ok()?;
        }
        ours.read_exact(&mut request[8..]).await.ok()?;
        // Closing our end lets the token's write return.
        drop(ours);
        Some(request)
    };
    let (_, request) =
        futures_util::future::join(token.cancel_query_raw(theirs, InMemory), read).await;
    // A CancelRequest: length 16, code 80877102, then the pid and the secret.
    match request {
        Some([0, 0, 0, 16, 4, 210, 22, 46, a, b, c, d, e, f, g, h]) => Some(CancelKey {
            pid: i32::from_be_bytes([a, b, c, d]),
            secret: i32::from_be_bytes([e, f, g, h]),
        }),
        _ => None,
    }
}

/// The "TLS" of [`route_of`]'s in-memory stream: the stream itself, as nothing on it leaves
/// the process.
struct InMemory;

/// [`InMemory`]'s stream.
struct InMemoryStream(tokio::io::DuplexStream);

impl tokio_postgres::tls::TlsConnect<tokio::io::DuplexStream> for InMemory {
    type Stream = InMemoryStream;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<std::result::Result<InMemoryStream, Self::Error>>;

    fn connect(self, stream: tokio::io::DuplexStream) -> Self::Future {
        std::future::ready(Ok(InMemoryStream(stream)))
    }
}

impl tokio_postgres::tls::TlsStream for InMemoryStream {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

impl tokio::io::AsyncRead for InMemoryStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for InMemoryStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

async fn check_route(client: &Client, second: Option<&Client>, route: Route) -> Result<()> {
    let mut check = Check::new(second.is_some(), route);
    let mut reply = None;
    loop {
        match check.step(reply.take()) {
            CheckStep::Done(outcome) => return outcome,
            CheckStep::Send(on, statement) => {
                let conn = match (on, second) {
                    (On::Second, Some(second)) => second,
                    _ => client,
                };
                let answer = conn.simple_query(&statement).await.map_err(sql::error);
                reply = Some(answer.map(|answer| sql::last_row(&answer)));
            }
        }
    }
}

/// Every session of the client's database that holds `key`, with its mode, from
/// `pg_locks`.
///
/// # Errors
///
/// What the server or the connection reports.
///
/// # Cancel Safety
///
/// Cancel safe: it only reads.
pub async fn holders_async(client: &Client, key: PgKey) -> Result<Vec<Holder>> {
    let reply = client
        .simple_query(&sql::holders(key))
        .await
        .map_err(sql::error)?;
    sql::read_holders(&reply)
}

/// Every session holding the lock on `key` (or, for `None`, any advisory lock of this
/// database, ordered by key), as [`holders_async`] finds them, with where each connects from,
/// its application name and when it started (`pg_stat_activity`). One round trip.
///
/// # Errors
///
/// What the server or the connection reports.
///
/// # Cancel Safety
///
/// Cancel safe: it only reads.
pub async fn holder_sessions_async(
    client: &Client,
    key: Option<PgKey>,
) -> Result<Vec<HolderSession>> {
    let reply = client
        .simple_query(&sql::holder_sessions(key))
        .await
        .map_err(sql::error)?;
    sql::read_holder_sessions(&reply)
}

/// The session of `client` as a lock watcher names it, for [`still_held_async`]: the async
/// form of the blocking `session`. One round trip.
///
/// # Errors
///
/// What the server or the connection reports.
///
/// # Cancel Safety
///
/// Cancel safe: it only reads.
pub async fn session_async(client: &Client) -> Result<SessionId> {
    let reply = client
        .simple_query(&sql::session())
        .await
        .map_err(sql::error)?;
    sql::read_session(sql::rows(&reply))
}

/// Whether each of `locks` (a session from [`session_async`], and a key it took) is still
/// held by that session, asked through `client` from another session in one statement: the
/// async form of the blocking `still_held`.
///
/// # Errors
///
/// What the server or the connection reports.
///
/// # Cancel Safety
///
/// Cancel safe: it only reads.
pub async fn still_held_async(client: &Client, locks: &[(SessionId, PgKey)]) -> Result<Vec<bool>> {
    let statement = sql::still_held(locks.iter().map(|(session, _)| session.id));
    let reply = client.simple_query(&statement).await.map_err(sql::error)?;
    Ok(sql::read_still_held(sql::rows(&reply), locks))
}

/// One try of `key`'s exclusive session lock through a client that many tasks share, that
/// also takes the key's next fencing token when granted, in the same statement, from `table`
/// (`schema.name`; `None`: `public.dlock_fence`): `Ok(Some(token))` when granted. Unfenced
/// tries and releases on such a client go through [`batch_async`]. Nothing is checked or
/// remembered (no deployment check, and the session's reentrancy grants a key it holds
/// again): for dlock-pool's multiplexed pool, which keeps that account.
///
/// # Errors
///
/// [`Error::InvalidKey`](dlock_core::Error::InvalidKey) for a table name that is not plain;
/// [`Error::FencingNotInstalled`](dlock_core::Error::FencingNotInstalled); what the server or
/// the connection reports.
///
/// # Cancel Safety
///
/// Not cancel safe: once sent, the statement runs even if the future is dropped, and may
/// grant the lock. After a drop, send [`SharedOp::UnlockIfHeld`](crate::tokio::SharedOp) for
/// the key through [`batch_async`], which the connection runs after it.
pub async fn try_lock_fenced_async(
    client: &Client,
    key: PgKey,
    table: Option<&str>,
) -> Result<Option<u64>> {
    let hold = exclusive(key);
    let table = sql::fence_table(table.unwrap_or(sql::DEFAULT_FENCE_TABLE))?;
    let statement = sql::fenced(
        &sql::try_lock(hold, sql::Scope::Session),
        hold,
        &table,
        true,
    );
    let reply = client.simple_query(&statement).await.map_err(sql::error)?;
    let row = sql::last_row(&reply);
    if !sql::read_bool(&row, 0)? {
        return Ok(None);
    }
    sql::read_token(&row, 1)
        .map(Some)
        .ok_or_else(|| Error::backend("a fenced grant came without its token"))
}

/// Does each of `ops` (a try, a release, or a release if held, of a key's exclusive session
/// lock) through a client that many tasks share, in one statement: one boolean each, in
/// order. Many tasks' operations on a shared session cost the server one statement together.
/// Nothing is checked or remembered, as for [`try_lock_fenced_async`].
///
/// # Errors
///
/// What the server or the connection reports; a failed statement may have done some of its
/// entries (advisory session locks ignore the statement's failure), so after an error the
/// caller releases what its tries may hold ([`SharedOp::UnlockIfHeld`](crate::tokio::SharedOp::UnlockIfHeld)).
///
/// # Cancel Safety
///
/// Not cancel safe: once sent, the statement runs even if the future is dropped.
pub async fn batch_async(client: &Client, ops: &[(SharedOp, PgKey)]) -> Result<Vec<bool>> {
    if ops.is_empty() {
        return Ok(Vec::new());
    }
    let reply = client
        .simple_query(&sql::shared_batch(ops))
        .await
        .map_err(sql::error)?;
    sql::read_shared_batch(&sql::last_row(&reply), ops.len())
}

/// An exclusive hold of `key`.
fn exclusive(key: PgKey) -> Hold {
    Hold {
        key,
        mode: Mode::Exclusive,
    }
}

/// A PostgreSQL transaction-level advisory lock taken through a
/// [`tokio_postgres::Transaction`], held until it commits or rolls back. There is no
/// release: the transaction's end is the release.
///
/// [`acquire_timeout`](AsyncPgXactLock::acquire_timeout) waits inside a savepoint, so a
/// timeout leaves the transaction usable and its `lock_timeout` as it was.
///
/// # Cancel Safety
///
/// A lock taken by a dropped acquire future belongs to the transaction, so it ends with
/// the transaction like every lock this type takes; dropping the `Transaction` rolls it
/// back. A wait goes in slices, as [`AsyncPgLock`]'s does: a dropped wait ends on its own
/// within 400 ms, and a slice that runs out neither aborts the transaction nor logs an error,
/// so the transaction stays usable. With a
/// [`side_connection`](AsyncPgXactLock::side_connection) a dropped wait ends at once, aimed as
/// [`AsyncPgLock`] aims it (inside `acquire_timeout`'s savepoint the transaction stays
/// usable; a plain `acquire` leaves it aborted, to be rolled back).
///
/// # Examples
///
/// ```no_run
/// use dlock_postgres::AsyncPgXactLock;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (mut client, connection) =
///     tokio_postgres::connect("postgres://postgres@localhost/postgres", tokio_postgres::NoTls)
///         .await?;
/// tokio::spawn(connection);
/// let tx = client.transaction().await?;
/// if AsyncPgXactLock::new("invoice/42").try_acquire(&tx).await? {
///     tx.execute("UPDATE invoices SET paid = true WHERE id = 42", &[]).await?;
/// }
/// tx.commit().await?; // Releases the lock.
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a lock does nothing until it is acquired"]
pub struct AsyncPgXactLock {
    key: Key,
    policy: KeyPolicy,
    mode: Mode,
    /// The standby check, the fence table and the last token.
    options: XactOptions,
    /// Where a side connection that ends a dropped wait connects to, if the user gave it.
    side: Option<Config>,
    /// How the side connection connects: plain text unless the user gave a TLS connector.
    connector: Option<SideTls>,
}

impl AsyncPgXactLock {
    /// An exclusive transaction lock on `key`, under the default key policy.
    pub fn new(key: impl Into<Key>) -> Self {
        AsyncPgXactLock {
            key: key.into(),
            policy: KeyPolicy::default(),
            mode: Mode::Exclusive,
            options: XactOptions::default(),
            side: None,
            connector: None,
        }
    }

    /// Opens the side connection with `tls`, your TLS connector, as
    /// [`AsyncPgLock::tls`] does.
    pub fn tls<T>(mut self, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        self.connector = Some(SideTls::new(tls));
        self
    }

    /// Lets a dropped acquire end its wait in the server at once, through a side connection
    /// opened with `config` (in plain text unless [`tls`](Self::tls) gives a connector), as
    /// [`AsyncPgLock::side_connection`] does. A wait
    /// ended so fails the statement, which aborts the transaction unless the wait was inside
    /// a savepoint ([`acquire_timeout`](Self::acquire_timeout) waits in one, and a dropped
    /// one is rolled back to it).
    pub fn side_connection(mut self, config: Config) -> Self {
        self.side = Some(config);
        self
    }

    /// Waits for the lock through `tx`: with a side connection in one tagged statement, whose
    /// wait the side connection ends if the future is dropped first; otherwise in slices.
    async fn wait(&self, tx: &Transaction<'_>, wait: Wait) -> XactOutcome {
        let hold = match self.hold() {
            Ok(hold) => hold,
            Err(error) => return XactOutcome::Failed(error),
        };
        let Some(config) = &self.side else {
            let mut slices = XactSlices::new(hold, wait, &self.options);
            while let Some(statement) = slices.next_statement() {
                match slices.read(send_text(tx, &statement).await) {
                    XactOutcome::Answered(false, _) => {}
                    outcome => return self.options.noted(outcome),
                }
            }
            return XactOutcome::Answered(false, None);
        };
        let token = dlock_core::attempt_token();
        let statement = machine::xact_statement(hold, wait, Some(token), &self.options);
        let mut armed = XactWait {
            client: tx.client(),
            side: Some((config, self.connector.as_ref(), token)),
        };
        let reply = send_text(tx, &statement).await;
        armed.side = None;
        self.options.noted(machine::xact_outcome(wait, reply))
    }

    crate::methods::xact_methods!();

    /// Waits, in the server, until the transaction holds the lock. No session setting
    /// (`lock_timeout`, `statement_timeout`) cuts the wait short.
    ///
    /// # Errors
    ///
    /// What the server reports (a deadlock aborts the transaction).
    ///
    /// # Cancel Safety
    ///
    /// See the type's docs: a late grant ends with the transaction.
    pub async fn acquire(&self, tx: &Transaction<'_>) -> Result<()> {
        let outcome = self.traced(Wait::Forever, async {
            self.wait(tx, Wait::Forever).await.into_result()
        });
        outcome.await.map(drop)
    }

    /// Runs an acquire with `wait` in its span.
    async fn traced(
        &self,
        wait: Wait,
        acquire: impl Future<Output = Result<bool>>,
    ) -> Result<bool> {
        Traced::acquire("postgres", self.mode.traced(), wait, || {
            sql::traced_key(&self.policy, &self.key)
        })
        .around(acquire)
        .await
    }

    /// Takes the lock if it is free: `Ok(true)` held until the transaction ends.
    ///
    /// # Errors
    ///
    /// What the server reports.
    ///
    /// # Cancel Safety
    ///
    /// See the type's docs.
    pub async fn try_acquire(&self, tx: &Transaction<'_>) -> Result<bool> {
        self.traced(Wait::Never, async {
            let statement = machine::xact_statement(self.hold()?, Wait::Never, None, &self.options);
            let reply = send_text(tx, &statement).await;
            let outcome = machine::xact_outcome(Wait::Never, reply);
            self.options.noted(outcome).into_result()
        })
        .await
    }

    /// Waits at most `timeout` for the lock, inside a savepoint: on a timeout the savepoint
    /// is rolled back, so the transaction stays usable and no lock is left behind.
    ///
    /// # Errors
    ///
    /// What the server reports.
    ///
    /// # Cancel Safety
    ///
    /// Dropping the future drops the savepoint, which tokio-postgres rolls back.
    pub async fn acquire_timeout(
        &self,
        tx: &mut Transaction<'_>,
        timeout: Duration,
    ) -> Result<bool> {
        let wait = Wait::for_timeout(timeout);
        if wait == Wait::Never {
            return self.try_acquire(tx).await;
        }
        self.traced(wait, async {
            let savepoint = tx.savepoint("dlock_acquire").await.map_err(sql::error)?;
            // Rolling the savepoint back also frees a lock granted with a failure.
            match self.wait(&savepoint, wait).await {
                XactOutcome::Answered(granted, _) => {
                    savepoint.commit().await.map_err(sql::error)?;
                    Ok(granted)
                }
                XactOutcome::TimedOut => savepoint
                    .rollback()
                    .await
                    .map_err(sql::error)
                    .map(|()| false),
                XactOutcome::Failed(error) => {
                    let _ = savepoint.rollback().await;
                    Err(error)
                }
            }
        })
        .await
    }

    /// Asks `pg_locks` whether the transaction's session holds the lock in this mode.
    ///
    /// # Errors
    ///
    /// What the server reports.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: it only reads.
    pub async fn verify(&self, tx: &Transaction<'_>) -> Result<bool> {
        let statement = sql::held_by_session(self.hold()?);
        let reply = tx.simple_query(&statement).await.map_err(sql::error)?;
        sql::read_bool(&sql::last_row(&reply), 0)
    }
}

/// Sends one simple query through a transaction and reads its last row.
async fn send_text(tx: &Transaction<'_>, statement: &str) -> Reply {
    tx.simple_query(statement)
        .await
        .map(|reply| sql::last_row(&reply))
        .map_err(Failed::from)
}

/// Armed while a transaction lock's waiting statement is in flight: a drop (the future was
/// dropped) ends the wait from the side connection, when there is one.
struct XactWait<'a> {
    client: &'a Client,
    side: Option<(&'a Config, Option<&'a SideTls>, u64)>,
}

impl Drop for XactWait<'_> {
    fn drop(&mut self) {
        if let Some((config, connector, token)) = self.side {
            end_wait(self.client, config, connector, token);
        }
    }
}
