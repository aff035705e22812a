//! Locks over `mysql_async`, on the tokio runtime.

use std::fmt;
use std::time::Duration;

use dlock_core::trace::TracedOperation;
use dlock_core::{AsyncLock, Error, Key, KeyPolicy, Result, SessionId, SharedOp, Wait};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use crate::machine::{
    self, Acquire, LockState, OnDrop, Operation, Release, Reply, SessionFacts, Step, Verify,
};
use crate::sql::{self, Failed, Failure, Proof, Server};

/// A connection an [`AsyncMySqlLock`] can run on: the driver's [`Conn`] (also what a
/// `mysql_async::Pool` hands out), a box of it, or a `&mut` to either. For a bb8 pooled
/// connection use dlock-pool, which manages the connection for you.
///
/// What a lock can do when it is dropped while it holds depends on the connection, because
/// drop cannot wait: an owned connection is released from a spawned task, a discardable one
/// (pooled) is closed by its pool, and a borrowed one has its session ended (see
/// [`AsyncMySqlLock`]).
pub trait AsyncMySqlConnection: Send {
    /// The connection the lock sends its statements through.
    fn connection(&mut self) -> &mut Conn;

    /// The connection, shared.
    fn connection_ref(&self) -> &Conn;

    /// The connection itself, when `self` owns it. Borrows return `None` (the default).
    fn into_owned(self) -> Option<Conn>
    where
        Self: Sized,
    {
        None
    }

    /// Whether `self` owns its connection, so that [`into_owned`](Self::into_owned) gives it.
    fn is_owned(&self) -> bool {
        false
    }

    /// Asks for the connection to be closed instead of reused, which frees every lock of its
    /// session; `true` when it will be. Pooled connections answer `true` by marking
    /// themselves broken (dlock-pool's do); the default is `false`.
    fn discard(&mut self) -> bool {
        false
    }

    /// Whether [`discard`](Self::discard) would close the connection.
    fn is_discardable(&self) -> bool {
        false
    }

    /// What dlock knows of the session this value is (an [`AsyncMySqlSession`] answers).
    #[doc(hidden)]
    fn session_facts(&mut self) -> Option<&mut SessionFacts> {
        None
    }

    /// What dlock knows of a session that outlives this value: the one it borrows.
    #[doc(hidden)]
    fn kept_session_facts(&mut self) -> Option<&mut SessionFacts> {
        None
    }
}

impl AsyncMySqlConnection for Conn {
    fn connection(&mut self) -> &mut Conn {
        self
    }

    fn connection_ref(&self) -> &Conn {
        self
    }

    fn into_owned(self) -> Option<Conn> {
        Some(self)
    }

    fn is_owned(&self) -> bool {
        true
    }
}

impl AsyncMySqlConnection for Box<Conn> {
    fn connection(&mut self) -> &mut Conn {
        self
    }

    fn connection_ref(&self) -> &Conn {
        self
    }

    fn into_owned(self) -> Option<Conn> {
        Some(*self)
    }

    fn is_owned(&self) -> bool {
        true
    }
}

impl<T: AsyncMySqlConnection + ?Sized> AsyncMySqlConnection for &mut T {
    fn connection(&mut self) -> &mut Conn {
        (**self).connection()
    }

    fn connection_ref(&self) -> &Conn {
        (**self).connection_ref()
    }

    fn discard(&mut self) -> bool {
        (**self).discard()
    }

    fn is_discardable(&self) -> bool {
        (**self).is_discardable()
    }

    fn session_facts(&mut self) -> Option<&mut SessionFacts> {
        (**self).session_facts()
    }

    // Through a borrow, the session outlives this value.
    fn kept_session_facts(&mut self) -> Option<&mut SessionFacts> {
        (**self).session_facts()
    }
}

/// A MySQL or MariaDB server session over a mysql_async connection (owned, borrowed or
/// pooled), as dlock knows it: the home of what outlives any one lock object on it. Every
/// [`AsyncMySqlLock`] keeps one (its [`conn`](AsyncMySqlLock::conn) hands it out), and a lock
/// built on a `&mut AsyncMySqlSession` shares it.
///
/// What the session keeps:
///
/// - **Holds owed by dropped locks.** A drop cannot wait for the server, so a lock dropped
///   while it holds leaves its hold owed to the session, which releases it before its next
///   statement through dlock (any lock on it), exactly: other holds of the same name on the
///   session, by other lock objects, stay held (the server counts them). When the session
///   itself ends with holds owed, its connection is released from a spawned task (owned),
///   closed by its pool (pooled), or its session ended from another connection, proven by
///   the session's unique marker lock (borrowed), as [`AsyncMySqlLock`] describes.
/// - **The deployment check's verdict**: locks made per use on a long-lived session run it
///   once, not per lock object.
/// - **An abandoned reply**: after a future was dropped mid-statement, no lock on the session
///   can trust its replies.
///
/// It dereferences to the driver's [`Conn`] for work of your own.
///
/// # Examples
///
/// ```no_run
/// use dlock_mysql::{AsyncLock, AsyncMySqlSession};
/// use mysql_async::{Conn, Opts};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = Conn::new(Opts::from_url("mysql://app:secret@localhost/app")?).await?;
/// let mut session = AsyncMySqlSession::new(conn);
/// for job in ["a", "b", "c"] {
///     // Per use: the deployment check ran once, for the whole session.
///     let mut lock = session.lock(format!("jobs/{job}"));
///     if lock.try_acquire().await? {
///         lock.release().await?;
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub struct AsyncMySqlSession<C: AsyncMySqlConnection> {
    /// Always `Some` until a lock consumes its session or the drop takes it.
    conn: Option<C>,
    facts: SessionFacts,
    policy: KeyPolicy,
    /// What the session holds through its own methods, oldest first.
    holds: Vec<LockState>,
}

impl<C: AsyncMySqlConnection> AsyncMySqlSession<C> {
    /// The session of `conn`, of which dlock knows nothing yet.
    pub fn new(conn: C) -> Self {
        AsyncMySqlSession {
            conn: Some(conn),
            facts: SessionFacts::default(),
            policy: KeyPolicy::default(),
            holds: Vec::new(),
        }
    }

    /// A lock on `key` on this session, unlocked, under the default key policy.
    pub fn lock(&mut self, key: impl Into<Key>) -> AsyncMySqlLock<&mut Self> {
        AsyncMySqlLock::new(self, key)
    }

    dlock_core::__session_methods!(async, AsyncMySqlLock<&mut Self>);

    /// A lock on this session over a state the session holds.
    fn with_state(&mut self, state: LockState) -> AsyncMySqlLock<&mut Self> {
        AsyncMySqlLock {
            conn: Some(AsyncMySqlSession::new(self)),
            state,
        }
    }

    /// Releases everything the session's own methods hold and pays what it owes, then gives
    /// the connection back with the first failure, if any (a pooled connection is then
    /// closed by its pool).
    ///
    /// # Cancel Safety
    ///
    /// Dropping this future drops the session, with the guarantees of drop.
    pub async fn into_inner(mut self) -> (C, Result<()>) {
        let mut outcome = Ok(());
        while let Some(state) = self.holds.pop() {
            let lock = self.with_state(state);
            let (_, released) = lock.into_inner().await;
            outcome = outcome.and(released);
        }
        let (_, paid) = AsyncMySqlLock::new(&mut self, Key::from(0_i64))
            .into_inner()
            .await;
        outcome = outcome.and(paid);
        if outcome.is_err() {
            self.get_mut().discard();
        }
        (self.take_connection(), outcome)
    }

    /// The connection as it was given.
    pub fn get_ref(&self) -> &C {
        self.conn
            .as_ref()
            .expect("the connection is only taken when the session ends")
    }

    /// The connection as it was given, mutably. Do not release locks through it with raw
    /// SQL: their objects would no longer know what they hold.
    pub fn get_mut(&mut self) -> &mut C {
        self.conn
            .as_mut()
            .expect("the connection is only taken when the session ends")
    }

    /// What dlock knows of this session: the facts of the session it borrows, if any, else
    /// its own.
    fn facts(&mut self) -> &mut SessionFacts {
        if self.get_mut().kept_session_facts().is_some() {
            return self
                .get_mut()
                .kept_session_facts()
                .expect("just seen to be there");
        }
        &mut self.facts
    }

    /// Takes the connection out, with nothing owed; the session's drop then does nothing.
    fn take_connection(&mut self) -> C {
        self.conn
            .take()
            .expect("the connection is only taken when the session ends")
    }
}

impl<C: AsyncMySqlConnection> std::ops::Deref for AsyncMySqlSession<C> {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        self.get_ref().connection_ref()
    }
}

impl<C: AsyncMySqlConnection> std::ops::DerefMut for AsyncMySqlSession<C> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.get_mut().connection()
    }
}

impl<C: AsyncMySqlConnection> AsyncMySqlConnection for AsyncMySqlSession<C> {
    fn connection(&mut self) -> &mut Conn {
        self.get_mut().connection()
    }

    fn connection_ref(&self) -> &Conn {
        self.get_ref().connection_ref()
    }

    fn discard(&mut self) -> bool {
        self.get_mut().discard()
    }

    fn is_discardable(&self) -> bool {
        self.get_ref().is_discardable()
    }

    fn session_facts(&mut self) -> Option<&mut SessionFacts> {
        Some(self.facts())
    }

    fn kept_session_facts(&mut self) -> Option<&mut SessionFacts> {
        self.get_mut().kept_session_facts()
    }
}

impl<C: AsyncMySqlConnection> Drop for AsyncMySqlSession<C> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // What the session's own methods hold is settled as dropped locks' holds are.
        let facts = match conn.kept_session_facts() {
            Some(kept) => kept,
            None => &mut self.facts,
        };
        for mut state in self.holds.drain(..) {
            state.leave_to(facts);
        }
        if conn.kept_session_facts().is_some() {
            // What is owed is the borrowed session's, which pays it.
            return;
        }
        let plan = self.facts.on_drop(conn.is_owned(), conn.is_discardable());
        let session = {
            let conn = conn.connection();
            (conn.opts().clone(), conn.id())
        };
        match plan {
            OnDrop::Nothing => {}
            OnDrop::Discard => {
                conn.discard();
            }
            OnDrop::End(proofs) => end_session(session.0, session.1, proofs),
            OnDrop::Close | OnDrop::Release(_) => {
                let Some(mut owned) = conn.into_owned() else {
                    return;
                };
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    // Without a runtime no I/O is possible: dropping the connection closes the
                    // socket, and the server ends the session (freeing the lock) when it
                    // notices.
                    tracing::warn!(
                        connection_id = session.1,
                        "dropped a held MySQL lock outside a tokio runtime; its lock is freed \
                         when the server notices the closed connection"
                    );
                    return;
                };
                runtime.spawn(async move {
                    let OnDrop::Release(owed) = plan else {
                        // Its replies cannot be trusted: close it, never hand it back to a pool.
                        let _ = owned.disconnect().await;
                        return;
                    };
                    if let Err(failed) = query(&mut owned, &sql::pay_owed(&owed)).await {
                        tracing::warn!(error = %failed.error, "dropped MySQL lock: release failed");
                        // The session may still hold the lock: end it.
                        let _ = owned.disconnect().await;
                    }
                    // Otherwise the connection drops as usual (a pool's goes back to it).
                });
            }
        }
    }
}

impl<C: AsyncMySqlConnection> fmt::Debug for AsyncMySqlSession<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncMySqlSession")
            .field("held", &self.held().collect::<Vec<_>>())
            .field("owed", &self.facts.owed.len())
            .field("abandoned", &self.facts.abandoned)
            .field("checked", &self.facts.checked)
            .finish_non_exhaustive()
    }
}

/// A MySQL or MariaDB named lock (`GET_LOCK`) over [`mysql_async::Conn`], for tokio.
///
/// The same contract as `MySqlLock` (feature `blocking`; see the [`AsyncLock`] trait), with
/// what async Rust changes:
///
/// - **A future dropped mid-statement ends the session.** mysql_async cannot resynchronize a
///   connection whose query future was dropped before the reply arrived: the next query on
///   it would read the stale reply (measured with a dropped `GET_LOCK`). So the lock is
///   unusable afterwards ([`Error::ConnectionUnusable`]), and a spawned task ends the session
///   from a fresh connection (`KILL`) once it has proven that the session is still the one the
///   lock used: still running the statement tagged with the attempt's token (the process list
///   shows it), or holding its unique marker lock: the first grant on a session through dlock
///   takes one in its lock statement and the session keeps it for its life (not on a
///   connection of its own that its pool closes in doubt, such as dlock-pool's, where closing
///   the connection ends the session). A connection id alone proves nothing: ids start again
///   when the server restarts.
///   A session with neither took nothing from the attempt, and its connection is closed by
///   its owner: when the lock drops if it owns it, by its pool if pooled, by you if borrowed
///   (the error says so). Use [`acquire_timeout`](AsyncLock::acquire_timeout) for a bounded
///   wait that keeps the connection.
/// - **Release on drop is not immediate.** A held lock dropped without
///   [`release`](AsyncLock::release) is released by a task spawned on the current tokio
///   runtime when the lock owns its connection ([`AsyncMySqlConnection::into_owned`]); a
///   pooled connection is closed by its pool. On a borrowed connection (`&mut Conn`) the lock
///   can neither release without waiting nor close the connection, so its session is ended,
///   proven by the session's marker: call `release().await` (or `into_inner().await`) to keep a
///   borrowed connection.
///
/// One residual window: a statement sent just before its future was dropped, which the
/// server has not started when the fresh connection looks (it needs a TCP and login
/// handshake first), shows neither proof; its session is then not ended, and the connection
/// is closed by its owner as above.
///
/// # Examples
///
/// ```no_run
/// use dlock_mysql::{AsyncLock, AsyncMySqlLock};
/// use mysql_async::prelude::Queryable;
/// use mysql_async::{Conn, Opts};
/// use std::time::Duration;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = Conn::new(Opts::from_url("mysql://app:secret@localhost/app")?).await?;
/// let mut lock = AsyncMySqlLock::new(conn, "nightly-report");
/// if lock.acquire_timeout(Duration::from_secs(5)).await? {
///     lock.conn().query_drop("UPDATE reports SET running = 1").await?;
///     lock.release().await?;
/// }
/// # Ok(())
/// # }
/// ```
#[must_use = "a lock does nothing until it is acquired"]
pub struct AsyncMySqlLock<C: AsyncMySqlConnection> {
    /// Always `Some` until `into_inner` or drop takes it.
    conn: Option<AsyncMySqlSession<C>>,
    state: LockState,
}

/// Drives one operation; if its future is dropped with a statement in flight, the connection
/// is given up and its session ended once proven.
struct Driver<'a, O: Operation> {
    state: &'a mut LockState,
    op: O,
    /// The options to open a fresh connection with, and the session id.
    session: (Opts, u32),
    /// Set while a statement is in flight.
    sent: bool,
}

impl<O: Operation> Drop for Driver<'_, O> {
    fn drop(&mut self) {
        if !self.sent {
            return;
        }
        let proofs = self.state.abandon(self.op.in_flight());
        let (opts, id) = self.session.clone();
        end_session(opts, id, proofs);
    }
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

/// Ends session `id` from a fresh connection, once one of `proofs` shows it is still the
/// session a lock used. Spawned on the current runtime; without one the session ends when its
/// connection closes.
fn end_session(opts: Opts, id: u32, proofs: Vec<Proof>) {
    if proofs.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            connection_id = id,
            "a MySQL lock's session cannot be ended outside a tokio runtime; it ends when its \
             connection closes"
        );
        return;
    };
    runtime.spawn(async move {
        let ended = async {
            let mut killer = Conn::new(opts).await.map_err(classify)?;
            let mut proven = false;
            for proof in &proofs {
                let row = query(&mut killer, &sql::proves(id, proof)).await?;
                if row.first().copied().flatten() == Some(1) {
                    proven = true;
                    break;
                }
            }
            if proven {
                match killer.query_drop(sql::kill(id)).await {
                    // The session had ended already: its locks are free, which is the point.
                    Err(mysql_async::Error::Server(error)) if error.code == ER_NO_SUCH_THREAD => {}
                    other => other.map_err(classify)?,
                }
            }
            let _ = killer.disconnect().await;
            Ok::<bool, Failed>(proven)
        };
        match ended.await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(
                connection_id = id,
                "the session of a dropped MySQL lock statement could not be proven; its \
                 connection is closed by its owner instead"
            ),
            Err(failed) => tracing::warn!(
                connection_id = id,
                error = %failed.error,
                "could not end the session of a dropped MySQL lock statement; it ends when its \
                 connection closes"
            ),
        }
    });
}

impl<C: AsyncMySqlConnection> AsyncMySqlLock<C> {
    /// A lock on `key` over `conn`, unlocked, under the default key policy (the key's text is
    /// the lock name, as in sqlalchemy-dlock).
    pub fn new(conn: C, key: impl Into<Key>) -> Self {
        let mut conn = conn;
        // A session marker proves a grant's session to a KILL from elsewhere, here and on a
        // session a pool shares between lock objects (it keeps the session's facts). A
        // connection of its own that its pool closes when in doubt needs none: closing it
        // ends the session and frees its locks.
        let proves_holds = !conn.is_discardable() || conn.kept_session_facts().is_some();
        AsyncMySqlLock {
            conn: Some(AsyncMySqlSession::new(conn)),
            state: LockState::new(key.into(), proves_holds),
        }
    }

    crate::methods::lock_methods!();

    /// The session of the lock's connection, for work inside the critical section: it
    /// dereferences to the driver's [`Conn`], and another lock built on it
    /// (`AsyncMySqlLock::new(lock.conn(), key)`) shares what dlock knows of the session, so
    /// that dropping one lock settles exactly its own hold.
    ///
    /// After a dropped future gave the connection up (see the type's docs) it must not be
    /// used: close it.
    pub fn conn(&mut self) -> &mut AsyncMySqlSession<C> {
        self.session()
    }

    /// The connection as it was given (a pooled connection, a box, a borrow), for what its
    /// own type offers.
    pub fn get_ref(&self) -> &C {
        self.conn
            .as_ref()
            .expect("the connection is only taken when the lock is consumed")
            .get_ref()
    }

    /// The connection as it was given, mutably. Do not release the lock through it with raw
    /// SQL: the lock would no longer know what it holds.
    pub fn get_mut(&mut self) -> &mut C {
        self.session().get_mut()
    }

    fn session(&mut self) -> &mut AsyncMySqlSession<C> {
        self.conn
            .as_mut()
            .expect("the connection is only taken when the lock is consumed")
    }

    /// Takes the connection out, so that the lock's drop finds none and sends nothing. What
    /// the session still owes then goes with the connection only if the pool can close it.
    fn disown_connection(&mut self) -> C {
        let mut session = self
            .conn
            .take()
            .expect("the connection is only taken when the lock is consumed");
        let owes = !session.facts.owed.is_empty() || session.facts.abandoned;
        let mut conn = session.take_connection();
        if owes {
            conn.discard();
        }
        conn
    }

    /// The id of the connection that holds this lock's name, from any session: `None` when
    /// nobody holds it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for a key that cannot be a name; what the server or the
    /// connection reports.
    ///
    /// # Cancel Safety
    ///
    /// Not cancel safe: a drop before the reply leaves the connection unable to read the next
    /// reply correctly (a mysql_async limitation); close the connection then.
    pub async fn holder(&mut self) -> Result<Option<u64>> {
        if self.state.is_unusable() {
            return Err(sql::unusable());
        }
        let name = self.name()?;
        holder_async(self.conn(), &name).await
    }

    /// Releases the lock if held, and gives the connection back with the outcome of the
    /// release (`Ok(())` when nothing was held).
    ///
    /// # Cancel Safety
    ///
    /// Dropping the future while the release is in flight gives the connection up, as for
    /// every method, and drops the lock.
    pub async fn into_inner(mut self) -> (C, Result<()>) {
        let released = if self.state.held().is_some() {
            self.release().await
        } else {
            self.pay_owed().await
        };
        if released.is_err() {
            // What the session still owes must not go unnoticed with the connection: the
            // error says so, and a pooled connection is closed by its pool.
            self.session().get_mut().discard();
        }
        let mut session = self
            .conn
            .take()
            .expect("the connection is only taken when the lock is consumed");
        (session.take_connection(), released)
    }

    /// Runs one operation of the machine on this lock's connection, after paying what the
    /// session owes.
    async fn run<O: Operation>(&mut self, op: O) -> Result<O::Output> {
        self.pay_owed().await?;
        let outcome = self.step(op).await;
        let Self { conn, state } = self;
        let session = conn
            .as_mut()
            .expect("the connection is only taken when the lock is consumed");
        state.teach(session.facts());
        outcome
    }

    /// Releases what lock objects dropped while they held on this session left owed.
    async fn pay_owed(&mut self) -> Result<()> {
        let Self { conn, state } = self;
        let session = conn
            .as_mut()
            .expect("the connection is only taken when the lock is consumed");
        let Some(mut payment) = session.facts().payment(state) else {
            return Ok(());
        };
        let paid = self.step(&mut payment).await;
        self.session().facts().unpaid(payment);
        paid
    }

    /// Steps one operation of the machine on this lock's connection.
    async fn step<O: Operation>(&mut self, op: O) -> Result<O::Output> {
        let conn = self
            .conn
            .as_mut()
            .expect("the connection is only taken when the lock is consumed")
            .connection();
        let mut driver = Driver {
            session: (conn.opts().clone(), conn.id()),
            state: &mut self.state,
            op,
            sent: false,
        };
        let mut reply = None;
        loop {
            match driver.op.step(driver.state, reply.take()) {
                Step::Done(outcome) => return outcome,
                Step::Send(statement) => {
                    driver.sent = true;
                    reply = Some(query(conn, &statement).await);
                    driver.sent = false;
                }
                Step::Execute(statement) => {
                    driver.sent = true;
                    reply = Some(execute(conn, &statement).await);
                    driver.sent = false;
                }
            }
        }
    }

    /// Takes on what the session knows (see [`LockState::learn_from`]).
    fn learn(&mut self) {
        let Self { conn, state } = self;
        let session = conn
            .as_mut()
            .expect("the connection is only taken when the lock is consumed");
        state.learn_from(session.facts());
    }

    async fn take(&mut self, wait: Wait) -> Result<bool> {
        self.learn();
        self.traced(TracedOperation::Acquire(wait))
            .around(async {
                let version = self.conn().server_version();
                let op = Acquire::start(&self.state, Some(version), wait)?;
                self.run(op).await
            })
            .await
    }
}

dlock_core::__connection_lock!(
    AsyncMySqlLock,
    AsyncMySqlConnection,
    KeyPolicy::mysql_name,
    async
);

impl<C: AsyncMySqlConnection> AsyncLock for AsyncMySqlLock<C> {
    fn key(&self) -> &Key {
        &self.state.key
    }

    /// # Cancel Safety
    ///
    /// Dropping the future while it waits ends the session: a spawned task `KILL`s it from a
    /// fresh connection once proven (see the type's docs), which stops the wait and frees
    /// anything granted meanwhile. The lock (and its connection) cannot be used afterwards.
    async fn acquire(&mut self) -> Result<()> {
        self.take(Wait::Forever).await.map(drop)
    }

    /// # Cancel Safety
    ///
    /// As [`acquire`](Self::acquire): a drop before the reply gives the connection up.
    async fn try_acquire(&mut self) -> Result<bool> {
        self.take(Wait::Never).await
    }

    /// Waits at most `timeout` in the server, rounded up (MariaDB counts microseconds, MySQL
    /// whole seconds); a zero timeout is a try.
    ///
    /// # Cancel Safety
    ///
    /// As [`acquire`](Self::acquire): a drop before the reply gives the connection up. Prefer
    /// this method's own timeout to an outer `tokio::time::timeout`.
    ///
    /// If the server has not answered [`REPLY_GRACE`](dlock_core::REPLY_GRACE) after the wait
    /// it was asked for (on MySQL, the timeout rounded up to whole seconds), the server or the
    /// network is stalled: this returns [`Error::no_reply`] and gives the connection up as a
    /// dropped future does. Needs a runtime with timers enabled.
    async fn acquire_timeout(&mut self, timeout: Duration) -> Result<bool> {
        let wait = Wait::for_timeout(timeout);
        self.learn();
        self.traced(TracedOperation::Acquire(wait))
            .around(async {
                let version = self.conn().server_version();
                let op = Acquire::start(&self.state, Some(version), wait)?;
                let asked =
                    sql::server_wait(Server::from_version(version), wait).unwrap_or(timeout);
                within_grace(asked, self.run(op)).await
            })
            .await
    }

    /// # Cancel Safety
    ///
    /// A drop before the reply gives the connection up; ending or closing the session frees
    /// the lock.
    async fn release(&mut self) -> Result<()> {
        self.learn();
        self.traced(TracedOperation::Release)
            .around(async {
                let op = Release::start(&mut self.state)?;
                self.run(op).await
            })
            .await
    }

    fn is_acquired(&self) -> bool {
        self.state.held().is_some()
    }

    /// Asks the server whether this session holds the name. After the connection was lost,
    /// or given up by a dropped future, this is `Ok(false)`.
    ///
    /// # Cancel Safety
    ///
    /// A drop before the reply gives the connection up.
    async fn verify(&mut self) -> Result<bool> {
        self.learn();
        self.traced(TracedOperation::Verify)
            .around(async {
                let op = Verify::start(&self.state)?;
                self.run(op).await
            })
            .await
    }
}

impl<C: AsyncMySqlConnection> Drop for AsyncMySqlLock<C> {
    /// Leaves the hold to the session, which settles it: at its next statement through
    /// dlock when the session outlives the lock, or as the lock's own session ends (see
    /// [`AsyncMySqlSession`]).
    fn drop(&mut self) {
        let Self { conn, state } = self;
        if let Some(session) = conn.as_mut() {
            state.leave_to(session.facts());
        }
    }
}

impl<C: AsyncMySqlConnection> fmt::Debug for AsyncMySqlLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncMySqlLock")
            .field("key", &self.state.key)
            .field("policy", &self.state.policy)
            .field("held", &self.state.held().map(|held| &held.name))
            .field("unusable", &self.state.is_unusable())
            .finish_non_exhaustive()
    }
}

/// The id of the connection that holds the lock named `name` (`IS_USED_LOCK`), asked through
/// `conn`: `None` when nobody holds it.
///
/// # Errors
///
/// What the server or the connection reports.
///
/// # Cancel Safety
///
/// Not cancel safe: a drop before the reply leaves `conn` unable to read the next reply
/// correctly (a mysql_async limitation); discard the connection then.
pub async fn holder_async(conn: &mut Conn, name: &str) -> Result<Option<u64>> {
    let row = query(conn, &sql::holder(name))
        .await
        .map_err(|failed| failed.error)?;
    sql::read_holder(row.first().copied().flatten())
}

/// The session holding the lock named `name` (or, for `None`, every session holding any
/// named lock, ordered by name), with its client host, user and the seconds in its current
/// state (`information_schema.PROCESSLIST`). One round trip for a name; two for every lock,
/// which needs MySQL's performance schema, or MariaDB's `metadata_lock_info` plugin.
///
/// # Errors
///
/// [`Error::Unsupported`](dlock_core::Error::Unsupported) for every lock on a server that
/// cannot list them (the error says what to install or switch on); what the server or the
/// connection reports.
///
/// # Cancel Safety
///
/// Not cancel safe, as [`holder_async`].
pub async fn holder_sessions_async(
    conn: &mut Conn,
    name: Option<&str>,
) -> Result<Vec<sql::HolderSession>> {
    /// The lock's name, and the process list's `ID`, `HOST`, `USER`, `TIME`.
    type Held = (String, u64, Option<String>, Option<String>, Option<u64>);
    let rows: Vec<Held> = match name {
        Some(name) => {
            type Process = (u64, Option<String>, Option<String>, Option<u64>);
            let row: Option<Process> = conn
                .query_first(sql::holder_session(name))
                .await
                .map_err(|error| classify(error).error)?;
            row.map(|(id, host, user, seconds)| (name.to_owned(), id, host, user, seconds))
                .into_iter()
                .collect()
        }
        None => {
            let lists = query(conn, sql::LOCK_LISTS)
                .await
                .map_err(|failed| failed.error)?;
            conn.query(sql::every_holder_session(&lists)?)
                .await
                .map_err(|error| classify(error).error)?
        }
    };
    Ok(rows
        .into_iter()
        .map(|(name, id, host, user, seconds)| sql::HolderSession {
            name,
            id,
            host,
            user,
            seconds,
        })
        .collect())
}

/// One try of the lock named `name` on `conn`, never a wait: `Ok(true)` when granted. With
/// `fence`, a grant also takes the name's next fencing token from that table (`database.name`;
/// `Some(None)`: `dlock.dlock_fence`), one statement more: `Ok(Some(token))` then. Nothing is
/// checked or remembered (no deployment check, and the session's reentrancy grants a name it
/// holds again): for a session that dlock-pool's multiplexed pool shares, which keeps that
/// account.
///
/// # Errors
///
/// [`Error::FencingNotInstalled`](dlock_core::Error::FencingNotInstalled) (the grant is
/// released first); what the server or the connection reports.
///
/// # Cancel Safety
///
/// Not cancel safe: a drop before the reply leaves `conn` unable to read the next reply
/// correctly (a mysql_async limitation), and may leave the name granted; run it to the end
/// (in a task of its own), or close the connection.
pub async fn try_lock_async(
    conn: &mut Conn,
    name: &str,
    fence: Option<Option<&str>>,
) -> Result<Option<Option<u64>>> {
    let granted = query(conn, &sql::try_get_lock(name))
        .await
        .map_err(|failed| failed.error)?;
    match granted.first().copied().flatten() {
        Some(1) => {}
        Some(0) => return Ok(None),
        other => {
            return Err(Error::backend(format!(
                "GET_LOCK(name, 0) answered {other:?}, which no MySQL or MariaDB version documents"
            )));
        }
    }
    let Some(table) = fence else {
        return Ok(Some(None));
    };
    let fenced = async {
        let table = sql::fence_table(table.unwrap_or(sql::DEFAULT_FENCE_TABLE))?;
        let server = sql::Server::from_version(conn.server_version());
        let token = execute(conn, &sql::fence(server, &table, name))
            .await
            .map_err(|failed| failed.error.naming_fence_table(Some(&table)))?;
        sql::read_token(&token)
    }
    .await;
    match fenced {
        Ok(token) => Ok(Some(Some(token))),
        Err(error) => {
            // No token, no lock: the grant goes back before the error does.
            query(conn, &sql::shared_batch(&[(SharedOp::UnlockIfHeld, name)]))
                .await
                .map_err(|failed| failed.error)?;
            Err(error)
        }
    }
}

/// Does each of `ops` (a try, a release, or a release if held, of the lock named by each)
/// through `conn` in one statement: whether each was granted or released, in order. Many
/// tasks' operations on a shared session cost the server one statement together. Nothing
/// is checked or remembered, as for [`try_lock_async`]. Give a name at most once per batch:
/// the server evaluates the entries in order, but dlock does not lean on it.
///
/// # Errors
///
/// What the server or the connection reports; a failed statement may have done some of its
/// entries (named locks ignore the statement's failure), so after an error the caller
/// releases what its tries may hold ([`SharedOp::UnlockIfHeld`]), or closes the connection.
///
/// # Cancel Safety
///
/// Not cancel safe, as [`try_lock_async`].
pub async fn batch_async(conn: &mut Conn, ops: &[(SharedOp, &str)]) -> Result<Vec<bool>> {
    if ops.is_empty() {
        return Ok(Vec::new());
    }
    let row = query(conn, &sql::shared_batch(ops))
        .await
        .map_err(|failed| failed.error)?;
    sql::read_shared_batch(&row, ops)
}

/// The session of `conn` as a lock watcher names it, for [`still_held_async`]: the async
/// form of the blocking `session`. One round trip.
///
/// # Errors
///
/// What the server or the connection reports.
///
/// # Cancel Safety
///
/// Not cancel safe: a drop before the reply leaves `conn` unable to read the next reply
/// correctly (a mysql_async limitation); discard the connection then.
pub async fn session_async(conn: &mut Conn) -> Result<SessionId> {
    let tag = dlock_core::attempt_token();
    let row = query(conn, &sql::session(tag))
        .await
        .map_err(|failed| failed.error)?;
    sql::read_session(&row, tag)
}

/// Whether each of `locks` (a session from [`session_async`], and a lock name it took) is
/// still held by that session, asked through `conn` from another session: the async form of
/// the blocking `still_held`.
///
/// # Errors
///
/// What the server or the connection reports.
///
/// # Cancel Safety
///
/// Not cancel safe, as [`session_async`].
pub async fn still_held_async(conn: &mut Conn, locks: &[(SessionId, String)]) -> Result<Vec<bool>> {
    let mut held = Vec::with_capacity(locks.len());
    for chunk in locks.chunks(sql::WATCHED_PER_STATEMENT) {
        let row = query(conn, &sql::still_held(chunk))
            .await
            .map_err(|failed| failed.error)?;
        held.extend(sql::read_still_held(&row, chunk));
    }
    Ok(held)
}

/// Creates the table of fencing tokens, the default one (`dlock.dlock_fence`, and its
/// database; on MariaDB also its clock, the sequence `dlock.dlock_fence_clock`), if it does
/// not exist: the async form
/// of the blocking `install_fencing`. Idempotent.
///
/// # Errors
///
/// What the server reports (for example a missing privilege).
///
/// # Cancel Safety
///
/// Not cancel safe: a drop before the reply leaves `conn` unable to read the next reply
/// correctly (a mysql_async limitation); discard the connection then.
pub async fn install_fencing_async(conn: &mut Conn) -> Result<()> {
    conn.query_drop(sql::install_fence_database())
        .await
        .map_err(|error| classify(error).error)?;
    install_fencing_in_async(conn, crate::sql::DEFAULT_FENCE_TABLE).await
}

/// Creates the table of fencing tokens `table` (`name` or `database.name`), and on MariaDB
/// its clock (the sequence `<table>_clock`), if it does not exist, for locks made `fenced_in` it.
///
/// # Errors
///
/// [`Error::InvalidKey`](dlock_core::Error::InvalidKey) for a name that is not plain, or
/// what the server reports.
///
/// # Cancel Safety
///
/// As [`install_fencing_async`].
pub async fn install_fencing_in_async(conn: &mut Conn, table: &str) -> Result<()> {
    let table = sql::fence_table(table)?;
    conn.query_drop(sql::install_fencing(
        sql::Server::from_version(conn.server_version()),
        &table,
    ))
    .await
    .map_err(|error| classify(error).error)
}

/// Checks that a lock over `conn` excludes: that the server is no MariaDB Galera node, no
/// MySQL Group Replication member and not read-only (a replica), where `GET_LOCK` is local to
/// it, and not so old that a session holds one named lock at a time (MySQL before 5.7.5,
/// MariaDB before 10.0.2, told by the handshake). Two round trips.
/// Locks run this check before their first acquire; this is for connections you check
/// yourself, before you build locks on them with `skip_deployment_check()`.
///
/// # Errors
///
/// [`Error::CannotExclude`](dlock_core::Error::CannotExclude) where a lock would exclude
/// nobody, or what the connection reports.
///
/// # Cancel Safety
///
/// Not cancel safe: a drop before the reply leaves `conn` unable to read the next reply
/// correctly (a mysql_async limitation); discard the connection then.
pub async fn check_deployment_async(conn: &mut Conn) -> Result<()> {
    let version = conn.server_version();
    let [tidb, cluster, read_only] = machine::deployment_check(version)?;
    let replies = [
        query(conn, &tidb).await,
        query(conn, &cluster).await,
        query(conn, &read_only).await,
    ];
    machine::deployment_checked(version, replies)
}

/// Sends `statement`, which returns no rows, and reads its OK packet as
/// `[last insert id, rows changed]`.
async fn execute(conn: &mut Conn, statement: &str) -> Reply {
    match conn.query_drop(statement).await {
        Ok(()) => Ok(vec![
            conn.last_insert_id().and_then(|id| i64::try_from(id).ok()),
            i64::try_from(conn.affected_rows()).ok(),
        ]),
        Err(error) => Err(classify(error)),
    }
}

/// Sends `statement` and reads the values of its first row.
async fn query(conn: &mut Conn, statement: &str) -> Reply {
    match conn.query_first::<mysql_async::Row, _>(statement).await {
        Ok(row) => sql::read_row(row, statement),
        Err(error) => Err(classify(error)),
    }
}

/// Sorts an error of mysql_async.
fn classify(error: mysql_async::Error) -> Failed {
    match error {
        mysql_async::Error::Server(ref server) => {
            let code = server.code;
            sql::server_failure(code, Box::new(error))
        }
        mysql_async::Error::Io(ref io) => {
            #[allow(unreachable_patterns, reason = "TLS errors exist with a TLS feature")]
            let ended = match io {
                mysql_async::IoError::Io(io) => sql::closed_by_peer(io),
                _ => false,
            };
            sql::connection_lost(Box::new(error), ended)
        }
        mysql_async::Error::Driver(ref driver) => {
            let ended = matches!(driver, mysql_async::DriverError::ConnectionClosed);
            sql::connection_lost(Box::new(error), ended)
        }
        other => Failed {
            failure: Failure::Other,
            error: Error::backend(other),
        },
    }
}

/// `KILL` of a session that no longer exists (`ER_NO_SUCH_THREAD`).
const ER_NO_SUCH_THREAD: u16 = 1094;
