//! The sqlx flavour (feature `sqlx`): a named lock and a session over a sqlx connection (a
//! `MySqlConnection` or a `PoolConnection<MySql>`, owned, or a `&mut PoolConnection`). It is a
//! transport: the machine decides, and this only sends what it asks for and hands back what it
//! read.
//!
//! A statement whose future was dropped leaves the connection given up, as the tokio flavour
//! leaves its own (the machine's rule for replies nobody read): the lock is unusable, and its
//! drop closes the connection (a pooled one is closed by its pool, not reused), which ends its
//! session and frees its locks. A lock or session dropped holding, on a connection it can still
//! trust, hands the connection to a task on the current tokio runtime, which releases and then
//! lets it go; a lock on a session leaves its hold to the session instead, and a borrowed pooled
//! connection, which cannot move into a task, is marked to be closed by its pool. sqlx hides the server version it read from the handshake: a try and a wait without
//! timeout go in forms both server families read alike, the session's mark of a passed check
//! proves the version was checked, and the version is asked only where a form needs it.

use std::fmt;
use std::time::Duration;

use ::sqlx::mysql::{MySql, MySqlConnection, MySqlDatabaseError, MySqlRow};
use ::sqlx::{Row as _, ValueRef as _};
use dlock_core::trace::TracedOperation;
use dlock_core::{AsyncLock, Error, Key, KeyPolicy, Result, SessionId, Wait};

use crate::asynchronous::within_grace;
use crate::machine::{Acquire, LockState, Operation, Release, Reply, SessionFacts, Step, Verify};
use crate::sql::{self, Failed, Failure, Server};

mod sealed {
    pub trait Sealed {}
}

/// A sqlx connection a [`SqlxMySqlLock`] or a [`SqlxMySqlSession`] can run on: a
/// `MySqlConnection` or a `PoolConnection<MySql>` it owns, a `&mut PoolConnection<MySql>`, or
/// a `&mut SqlxMySqlSession` (a lock on that session). Sealed.
///
/// A bare `&mut MySqlConnection` (or a transaction's) is not one: a lock dropped while it
/// holds must either release from a task that owns the connection, or close the connection,
/// which a bare borrow allows neither.
pub trait SqlxMySqlConnection: Send + sealed::Sealed {
    /// The connection the lock sends its statements through.
    fn connection(&mut self) -> &mut MySqlConnection;

    /// Makes sure the connection is closed, not reused, once dropped.
    #[doc(hidden)]
    fn discard(&mut self) {}

    /// What the server session is known to hold and owe, when the connection is a
    /// [`SqlxMySqlSession`]'s: it outlives each lock object on it.
    #[doc(hidden)]
    fn session_facts(&mut self) -> Option<&mut SessionFacts> {
        None
    }

    /// The connection as a task can own it, or, when it is borrowed, itself back.
    #[doc(hidden)]
    fn into_owned(self) -> std::result::Result<Box<dyn SqlxMySqlConnection>, Self>
    where
        Self: Sized;
}

dlock_core::__sqlx_connections!(
    SqlxMySqlConnection,
    MySqlConnection,
    MySql,
    SqlxMySqlSession,
    SessionFacts
);

/// A MySQL or MariaDB named lock over a sqlx connection `C`: a `MySqlConnection` or a
/// `PoolConnection<MySql>` from your `MySqlPool` that it owns, a `&mut PoolConnection`, or a
/// [`SqlxMySqlSession`] ([`SqlxMySqlConnection`]). Names, policies,
/// fencing, the deployment check and the contract are those of
/// [`AsyncMySqlLock`](crate::AsyncMySqlLock); what differs is what sqlx allows:
///
/// - **Dropped futures** give the connection up, as they do on `mysql_async`: the lock is
///   unusable afterwards, and its drop closes the connection (a pooled one is closed by its
///   pool), which ends the session and frees whatever it held. The server notices a closed
///   connection that waits in `GET_LOCK` only once that wait ends: prefer
///   [`acquire_timeout`](AsyncLock::acquire_timeout)'s own timeout to an outer one.
/// - **Dropping a lock** that holds hands its connection to a task on the current tokio
///   runtime, which releases and then lets the connection go (back to its pool); release on
///   drop is not immediate. Without a runtime, or if that fails, the connection is closed.
///   A lock on a `&mut PoolConnection` dropped holding marks the connection to be closed by
///   its pool; a lock on a [`SqlxMySqlSession`] leaves its hold owed to the session, which
///   releases it before its next statement.
/// - **The server's version** is hidden by sqlx, and it says how the server counts a wait
///   (MariaDB in microseconds, MySQL in whole seconds). A try or a wait without a timeout on
///   a session a check passed on needs none: the session's mark says which server it is. A
///   lock's first timed or fenced acquire, and the first lock on a new session, ask it once
///   (one round trip more).
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use dlock_mysql::{AsyncLock, SqlxMySqlLock};
///
/// let pool = sqlx::MySqlPool::connect("mysql://app:secret@localhost/app").await?;
/// let mut lock = SqlxMySqlLock::new(pool.acquire().await?, "nightly-report");
/// if lock.try_acquire().await? {
///     // Only one session anywhere gets here at a time.
///     sqlx::query("UPDATE reports SET running = 1").execute(lock.connection()).await?;
///     lock.release().await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct SqlxMySqlLock<C: SqlxMySqlConnection> {
    /// Always `Some` until `into_inner` or drop takes it.
    conn: Option<C>,
    state: LockState,
}

impl<C: SqlxMySqlConnection> SqlxMySqlLock<C> {
    /// A lock on `key` over `conn`, unlocked, under the default key policy (the key's text is
    /// the lock name, as in sqlalchemy-dlock).
    pub fn new(conn: C, key: impl Into<Key>) -> Self {
        SqlxMySqlLock {
            conn: Some(conn),
            // The lock owns its connection, and closes it when in doubt: closing ends the
            // session, so no marker needs to prove a grant's session to anyone.
            state: LockState::new(key.into(), false),
        }
    }

    crate::methods::lock_methods!();

    dlock_core::__naming_session!();
    dlock_core::__connection_accessors!();

    /// Says that a whole deployment check passed on another session of the pool `conn` came
    /// from, so its server keeps more than one named lock a session: the lock then reads
    /// its own session's mark beside its `GET_LOCK` instead of around it, as where the
    /// server's version is known (an unmarked session gives the grant back and checks).
    /// For [`SqlxLockPool`](https://docs.rs/dlock-pool), whose locks are made per acquire.
    #[doc(hidden)]
    pub fn checked_elsewhere(mut self, checked: bool) -> Self {
        self.state.checked_elsewhere = checked;
        self
    }

    /// The sqlx connection, for work under the lock. After a dropped future gave it up (see
    /// the type's docs) it must not be used.
    pub fn connection(&mut self) -> &mut MySqlConnection {
        self.conn
            .as_mut()
            .expect("the connection is only taken when the lock is consumed")
            .connection()
    }

    /// Releases the lock if held, and gives the connection back with the outcome. A
    /// connection the lock gave up, or could not release on, is marked to be closed when
    /// dropped (a pooled one is then not reused).
    ///
    /// # Cancel Safety
    ///
    /// A drop before the reply gives the connection up, and the lock's drop closes it.
    pub async fn into_inner(mut self) -> (C, Result<()>) {
        let released = if self.state.held().is_some() {
            self.release().await
        } else {
            self.learn();
            self.ready().await;
            self.pay_owed().await
        };
        let mut conn = self
            .conn
            .take()
            .expect("the connection is only taken when the lock is consumed");
        if let Some(facts) = conn.session_facts() {
            // What is still held or owed is the session's to settle.
            self.state.leave_to(facts);
        } else if released.is_err() || self.state.is_unusable() {
            conn.discard();
        }
        (conn, released)
    }

    /// Runs one operation of the machine on this lock's connection, after paying what its
    /// session owes, and tells the session what the lock learned.
    async fn run<O: Operation>(&mut self, op: O) -> Result<O::Output> {
        self.pay_owed().await?;
        let outcome = self.step(op).await;
        let Self { conn, state } = self;
        if let Some(facts) = conn.as_mut().and_then(SqlxMySqlConnection::session_facts) {
            state.teach(facts);
        }
        outcome
    }

    /// Releases what lock objects dropped while they held on this lock's session left owed.
    async fn pay_owed(&mut self) -> Result<()> {
        let Self { conn, state } = self;
        let Some(mut payment) = conn
            .as_mut()
            .and_then(SqlxMySqlConnection::session_facts)
            .and_then(|facts| facts.payment(state))
        else {
            return Ok(());
        };
        let paid = self.step(&mut payment).await;
        if let Some(facts) = self.session_facts() {
            facts.unpaid(payment);
        }
        paid
    }

    /// Reads what a dropped statement of yours left unanswered, before an operation starts.
    ///
    /// sqlx reads it before it writes the next statement, inside that one's future: dropped
    /// there, the statement would not have been sent, while the machine counts a release as
    /// sent from its start. Reading it first (no I/O when nothing is left) makes each
    /// statement written on the poll that sends it.
    async fn ready(&mut self) {
        // A statement of ours left unanswered gave the connection up: its reply may never
        // come (a wait), and the operation refuses to go on anyway.
        if self.state.is_unusable() {
            return;
        }
        if let Some(conn) = self.conn.as_mut() {
            // A connection that fails here fails the statement as well, whose failure the
            // machine reads as it reads any lost connection.
            let _ = ::sqlx::Connection::flush(conn.connection()).await;
        }
    }

    /// What the session this lock is on knows, if it is on one.
    fn session_facts(&mut self) -> Option<&mut SessionFacts> {
        self.conn
            .as_mut()
            .and_then(SqlxMySqlConnection::session_facts)
    }

    /// Takes on what the session knows (see [`LockState::learn_from`]).
    fn learn(&mut self) {
        let Self { conn, state } = self;
        if let Some(facts) = conn.as_mut().and_then(SqlxMySqlConnection::session_facts) {
            state.learn_from(facts);
        }
    }

    /// Steps one operation of the machine on this lock's connection.
    async fn step<O: Operation>(&mut self, op: O) -> Result<O::Output> {
        let conn = self
            .conn
            .as_mut()
            .expect("the connection is only taken when the lock is consumed")
            .connection();
        let mut driver = Driver {
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
                    reply = Some(query(conn, statement).await);
                    driver.sent = false;
                }
                Step::Execute(statement) => {
                    driver.sent = true;
                    reply = Some(execute(conn, statement).await);
                    driver.sent = false;
                }
            }
        }
    }

    async fn take(&mut self, wait: Wait) -> Result<bool> {
        self.learn();
        self.traced(TracedOperation::Acquire(wait))
            .around(async {
                self.ready().await;
                let op = Acquire::start(&self.state, None, wait)?;
                match wait {
                    Wait::For(timeout) => {
                        // A server not known yet is asked first; MySQL's rounding is the longer.
                        let server = self.state.server().unwrap_or(Server::MySql);
                        let asked = sql::server_wait(server, wait).unwrap_or(timeout);
                        within_grace(asked, self.run(op)).await
                    }
                    _ => self.run(op).await,
                }
            })
            .await
    }
}

/// A MySQL or MariaDB server session over a sqlx connection `C` ([`SqlxMySqlConnection`]: a
/// `MySqlConnection` or a `PoolConnection<MySql>` it owns, or a `&mut PoolConnection`), as
/// dlock knows it: it holds locks on any number of names, released in any order, and keeps
/// what outlives any one lock object on it.
///
/// - **Many names.** [`acquire`](SqlxMySqlSession::acquire),
///   [`try_acquire`](SqlxMySqlSession::try_acquire) and
///   [`acquire_timeout`](SqlxMySqlSession::acquire_timeout) take a name's lock for the
///   session, [`release`](SqlxMySqlSession::release) gives back any of them, in any order.
///   Taking a name the session holds already takes a second hold (the server counts them),
///   and each release gives back one. For a fenced lock, use a one-name lock on the session
///   ([`lock`](SqlxMySqlSession::lock)).
/// - **Holds owed by dropped locks.** A lock on the session dropped while it holds leaves
///   its hold owed to the session, which releases it before its next statement through
///   dlock: exactly that hold, never another of the same name.
/// - **The deployment check's verdict and the server's version**, shared by the locks made
///   on it one after another: locks made per use check once per session, not once per lock
///   object.
/// - **A dropped future** gives the whole session up, as for [`SqlxMySqlLock`]: no lock on
///   it can be used afterwards, and its drop closes the connection, which frees its locks.
///
/// Dropping the session cannot wait: when it holds or owes anything, it hands its connection
/// to a task on the current tokio runtime, which releases and then lets the connection go
/// (back to its pool). A borrowed `&mut PoolConnection` cannot move into that task, so it is
/// marked to be closed by its pool instead, as is any connection dropped outside a runtime;
/// closing ends the session and frees every lock. Call
/// [`into_inner`](SqlxMySqlSession::into_inner) to know the outcome.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use dlock_mysql::SqlxMySqlSession;
///
/// let pool = sqlx::MySqlPool::connect("mysql://app:secret@localhost/app").await?;
/// let mut session = SqlxMySqlSession::new(pool.acquire().await?);
/// session.acquire("accounts/1").await?;
/// session.acquire("accounts/2").await?;
/// session.release("accounts/1").await?; // In any order.
/// sqlx::query("UPDATE accounts SET frozen = 1 WHERE id = 2")
///     .execute(session.connection())
///     .await?;
/// session.release("accounts/2").await?;
/// # Ok(())
/// # }
/// ```
pub struct SqlxMySqlSession<C: SqlxMySqlConnection> {
    /// Always `Some` until `into_inner` or drop takes it.
    conn: Option<C>,
    facts: SessionFacts,
    policy: KeyPolicy,
    /// What the session holds through its own methods, oldest first.
    holds: Vec<LockState>,
}

impl<C: SqlxMySqlConnection> SqlxMySqlSession<C> {
    /// The session of `conn`, of which dlock knows nothing yet.
    pub fn new(conn: C) -> Self {
        SqlxMySqlSession {
            conn: Some(conn),
            facts: SessionFacts::default(),
            policy: KeyPolicy::default(),
            holds: Vec::new(),
        }
    }

    /// A lock on `key` on this session, unlocked, under the default key policy; it shares
    /// what the session knows and owes.
    pub fn lock(&mut self, key: impl Into<Key>) -> SqlxMySqlLock<&mut Self> {
        SqlxMySqlLock::new(self, key)
    }

    /// The sqlx connection, for work of your own. Do not release locks through it with raw
    /// SQL: the session would no longer know what it holds. After a dropped future gave the
    /// session up, it must not be used.
    pub fn connection(&mut self) -> &mut MySqlConnection {
        self.conn
            .as_mut()
            .expect("the connection is only taken by into_inner and drop")
            .connection()
    }

    dlock_core::__session_methods!(async, SqlxMySqlLock<&mut Self>);

    /// A lock on this session over a state the session holds.
    fn with_state(&mut self, state: LockState) -> SqlxMySqlLock<&mut Self> {
        SqlxMySqlLock {
            conn: Some(self),
            state,
        }
    }

    /// Releases everything the session's own methods hold and pays what it owes, then gives
    /// the connection back with the first failure, if any (the connection is then marked to
    /// be closed, not reused).
    ///
    /// # Cancel Safety
    ///
    /// Dropping this future drops the session, with the guarantees of drop.
    pub async fn into_inner(mut self) -> (C, Result<()>) {
        let mut outcome = Ok(());
        while let Some(state) = self.holds.pop() {
            let (_, released) = self.with_state(state).into_inner().await;
            outcome = outcome.and(released);
        }
        let (_, paid) = SqlxMySqlLock::new(&mut self, Key::from(0_i64))
            .into_inner()
            .await;
        outcome = outcome.and(paid);
        let abandoned = self.facts.abandoned;
        let mut conn = self
            .conn
            .take()
            .expect("the connection is only taken by into_inner and drop");
        if outcome.is_err() || abandoned {
            conn.discard();
        }
        (conn, outcome)
    }
}

impl<C: SqlxMySqlConnection> Drop for SqlxMySqlSession<C> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // What the session's own methods hold is settled as dropped locks' holds are.
        for mut state in self.holds.drain(..) {
            state.leave_to(&mut self.facts);
        }
        if self.facts.abandoned {
            // Replies that cannot be trusted cannot confirm a release: closing ends the session.
            conn.discard();
            return;
        }
        if self.facts.owed.is_empty() {
            return;
        }
        let facts = std::mem::take(&mut self.facts);
        settle_in_task(conn, &"a sqlx session", async move |owned| {
            SqlxMySqlSession {
                conn: Some(owned),
                facts,
                policy: KeyPolicy::default(),
                holds: Vec::new(),
            }
            .into_inner()
            .await
        });
    }
}

impl<C: SqlxMySqlConnection> fmt::Debug for SqlxMySqlSession<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxMySqlSession")
            .field("held", &self.held().collect::<Vec<_>>())
            .field("owed", &self.facts.owed.len())
            .field("abandoned", &self.facts.abandoned)
            .finish_non_exhaustive()
    }
}

/// Keeps what a dropped future leaves: the machine gives the connection up.
struct Driver<'a, O: Operation> {
    state: &'a mut LockState,
    op: O,
    /// Set while a statement is in flight.
    sent: bool,
}

impl<O: Operation> Drop for Driver<'_, O> {
    fn drop(&mut self) {
        if self.sent {
            // The proofs a KILL from elsewhere would need are not used: the lock owns its
            // connection, and closing it ends the session.
            let _ = self.state.abandon(self.op.in_flight());
        }
    }
}

/// The session of `conn` as a lock watcher names it, for [`still_held`]: the sqlx form of
/// the tokio flavour's `session` (the session also takes its unique marker lock). One round
/// trip.
///
/// # Errors
///
/// What the server or the connection reports.
///
/// # Cancel Safety
///
/// Not cancel safe: a drop before the reply may leave the marker taken without its name
/// known; close the connection then.
pub async fn session(conn: &mut MySqlConnection) -> Result<SessionId> {
    let tag = dlock_core::attempt_token();
    let row = query(conn, sql::session(tag))
        .await
        .map_err(|failed| failed.error)?;
    sql::read_session(&row, tag)
}

/// Whether each of `locks` (a session from [`session`], and a lock name it took) is still
/// held by that session, asked through `conn` from another session: the sqlx form of the
/// tokio flavour's `still_held`.
///
/// # Errors
///
/// What the server or the connection reports.
///
/// # Cancel Safety
///
/// Cancel safe: it only reads.
pub async fn still_held(
    conn: &mut MySqlConnection,
    locks: &[(SessionId, String)],
) -> Result<Vec<bool>> {
    let mut held = Vec::with_capacity(locks.len());
    for chunk in locks.chunks(sql::WATCHED_PER_STATEMENT) {
        let row = query(conn, sql::still_held(chunk))
            .await
            .map_err(|failed| failed.error)?;
        held.extend(sql::read_still_held(&row, chunk));
    }
    Ok(held)
}

/// Creates the table of fencing tokens `table` (`name` or `database.name`; `None`: the
/// default, `dlock.dlock_fence`, and its database), and on MariaDB its clock, if they do not
/// exist: the sqlx form of the tokio flavour's `install_fencing_in`. Idempotent.
///
/// # Errors
///
/// [`Error::InvalidKey`] for a name that is not plain, or what the server reports.
///
/// # Cancel Safety
///
/// Cancel safe: every statement is idempotent.
pub async fn install_fencing(conn: &mut MySqlConnection, table: Option<&str>) -> Result<()> {
    let execute = async |conn: &mut MySqlConnection, statement: String| {
        ::sqlx::raw_sql(::sqlx::AssertSqlSafe(statement))
            .execute(conn)
            .await
            .map(drop)
            .map_err(|error| failed(error).error)
    };
    if table.is_none() {
        execute(&mut *conn, sql::install_fence_database()).await?;
    }
    let table = sql::fence_table(table.unwrap_or(sql::DEFAULT_FENCE_TABLE))?;
    let version = query(&mut *conn, sql::server_version())
        .await
        .map_err(|failed| failed.error)?;
    let server = sql::Server::from_version(sql::read_version(&version)?);
    execute(conn, sql::install_fencing(server, &table)).await
}

/// Sends `statement` and reads its reply as the machine does: the first row's integers, or
/// for a fencing upsert the id it generated.
/// Sends `statement`, which returns no rows, and reads its OK packet as
/// `[last insert id, rows changed]`.
async fn execute(conn: &mut MySqlConnection, statement: String) -> Reply {
    let done = ::sqlx::raw_sql(::sqlx::AssertSqlSafe(statement))
        .execute(conn)
        .await
        .map_err(failed)?;
    Ok(vec![
        i64::try_from(done.last_insert_id()).ok(),
        i64::try_from(done.rows_affected()).ok(),
    ])
}

async fn query(conn: &mut MySqlConnection, statement: String) -> Reply {
    let row = ::sqlx::raw_sql(::sqlx::AssertSqlSafe(statement.clone()))
        .fetch_optional(conn)
        .await
        .map_err(failed)?;
    let row = row.ok_or_else(|| Failed {
        failure: Failure::Other,
        error: Error::backend(format!("the server sent no row for `{statement}`")),
    })?;
    Ok(integers(&row))
}

/// A text-protocol row's values as integers (NULL and anything else as `None`).
fn integers(row: &MySqlRow) -> Vec<Option<i64>> {
    (0..row.len())
        .map(|index| {
            if row.try_get_raw(index).ok()?.is_null() {
                return None;
            }
            // The text protocol sends every value as text, whatever the column's type.
            row.try_get_unchecked::<i64, _>(index).ok().or_else(|| {
                let text = row.try_get_unchecked::<String, _>(index).ok()?;
                text.trim().parse().ok()
            })
        })
        .collect()
}

/// Sorts an error of sqlx as the machine reads it.
fn failed(error: ::sqlx::Error) -> Failed {
    if let ::sqlx::Error::Database(database) = &error
        && let Some(server) = database.try_downcast_ref::<MySqlDatabaseError>()
    {
        let code = server.number();
        return sql::server_failure(code, Box::new(error));
    }
    match &error {
        ::sqlx::Error::Io(io) => {
            let ended = sql::closed_by_peer(io);
            sql::connection_lost(Box::new(error), ended)
        }
        ::sqlx::Error::Protocol(_) | ::sqlx::Error::Tls(_) => {
            sql::connection_lost(Box::new(error), false)
        }
        _ => Failed {
            failure: Failure::Other,
            error: Error::backend(error),
        },
    }
}

impl<C: SqlxMySqlConnection> AsyncLock for SqlxMySqlLock<C> {
    fn key(&self) -> &Key {
        &self.state.key
    }

    /// # Cancel Safety
    ///
    /// Dropping the future while it waits gives the connection up: the lock is unusable, and
    /// its drop closes the connection, which ends the session once the server notices.
    async fn acquire(&mut self) -> Result<()> {
        self.take(Wait::Forever).await.map(drop)
    }

    /// # Cancel Safety
    ///
    /// As [`acquire`](Self::acquire).
    async fn try_acquire(&mut self) -> Result<bool> {
        self.take(Wait::Never).await
    }

    /// Waits at most `timeout` in the server, rounded up (MariaDB counts microseconds, MySQL
    /// whole seconds); a zero timeout is a try. If the server has not answered
    /// [`REPLY_GRACE`](dlock_core::REPLY_GRACE) after the wait it was asked for, this returns
    /// [`Error::no_reply`] and gives the connection up.
    ///
    /// # Cancel Safety
    ///
    /// As [`acquire`](Self::acquire): prefer this method's own timeout to an outer one.
    async fn acquire_timeout(&mut self, timeout: Duration) -> Result<bool> {
        self.take(Wait::for_timeout(timeout)).await
    }

    /// # Cancel Safety
    ///
    /// A drop before the reply gives the connection up; closing it frees the lock.
    async fn release(&mut self) -> Result<()> {
        self.learn();
        self.traced(TracedOperation::Release)
            .around(async {
                self.ready().await;
                let op = Release::start(&mut self.state)?;
                self.run(op).await
            })
            .await
    }

    fn is_acquired(&self) -> bool {
        self.state.held().is_some()
    }

    /// Asks the server whether this session holds the name.
    ///
    /// # Cancel Safety
    ///
    /// A drop before the reply gives the connection up.
    async fn verify(&mut self) -> Result<bool> {
        self.learn();
        self.traced(TracedOperation::Verify)
            .around(async {
                self.ready().await;
                let op = Verify::start(&self.state)?;
                self.run(op).await
            })
            .await
    }
}

dlock_core::__connection_lock!(
    SqlxMySqlLock,
    SqlxMySqlConnection,
    KeyPolicy::mysql_name,
    async
);

impl<C: SqlxMySqlConnection> Drop for SqlxMySqlLock<C> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if let Some(facts) = conn.session_facts() {
            // The session outlives this lock: it settles the hold (or the abandoned reply)
            // at its next statement, or as it ends.
            self.state.leave_to(facts);
            return;
        }
        if self.state.is_unusable() {
            conn.discard();
            return;
        }
        if self.state.held().is_none() {
            return;
        }
        let state = self.detach();
        let key = state.key.clone();
        settle_in_task(conn, &key, async move |owned| {
            SqlxMySqlLock {
                conn: Some(owned),
                state,
            }
            .into_inner()
            .await
        });
    }
}

dlock_core::__sqlx_settle_in_task!(SqlxMySqlConnection);

impl<C: SqlxMySqlConnection> fmt::Debug for SqlxMySqlLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxMySqlLock")
            .field("key", &self.state.key)
            .field("policy", &self.state.policy)
            .field("held", &self.state.held().map(|held| &held.name))
            .field("unusable", &self.state.is_unusable())
            .finish_non_exhaustive()
    }
}
