//! The blocking flavour (feature `blocking`): locks, sessions and helpers over the `mysql`
//! client, named as the tokio flavour's are.

use std::fmt;
use std::time::Duration;

use dlock_core::trace::TracedOperation;
use dlock_core::{Error, Key, KeyPolicy, Lock, Result, SessionId, Wait};
use mysql::prelude::Queryable;
use mysql::{Conn, PooledConn};

use crate::machine::{
    self, Acquire, LockState, Operation, Release, Reply, SessionFacts, Step, Verify,
};
use crate::sql::{self, Failed, Failure};

/// A connection a [`MySqlLock`] can run on: the driver's [`Conn`], a [`PooledConn`] of a
/// `mysql::Pool`, a box of either, or a `&mut` to any of them. For an r2d2 pooled
/// connection pass `&mut *conn`, or use dlock-pool, which manages the connection for you.
///
/// Implement it for your own wrapper to lend its connection to a lock.
pub trait MySqlConnection {
    /// The connection the lock sends its statements through.
    fn connection(&mut self) -> &mut Conn;

    /// What dlock knows of the session this value is or borrows (a [`MySqlSession`] answers).
    #[doc(hidden)]
    fn session_facts(&mut self) -> Option<&mut SessionFacts> {
        None
    }
}

impl MySqlConnection for Conn {
    fn connection(&mut self) -> &mut Conn {
        self
    }
}

impl MySqlConnection for PooledConn {
    fn connection(&mut self) -> &mut Conn {
        self.as_mut()
    }
}

impl<T: MySqlConnection + ?Sized> MySqlConnection for &mut T {
    fn connection(&mut self) -> &mut Conn {
        (**self).connection()
    }

    fn session_facts(&mut self) -> Option<&mut SessionFacts> {
        (**self).session_facts()
    }
}

impl<T: MySqlConnection + ?Sized> MySqlConnection for Box<T> {
    fn connection(&mut self) -> &mut Conn {
        (**self).connection()
    }
}

/// A MySQL or MariaDB server session over a blocking [`Conn`] (owned, borrowed or pooled),
/// as dlock knows it: it holds locks on any number of names, released in any order, and
/// keeps what outlives any one lock object on it (the deployment check's verdict, so that
/// locks made per use on it run the check once).
///
/// [`acquire`](MySqlSession::acquire), [`try_acquire`](MySqlSession::try_acquire) and
/// [`acquire_timeout`](MySqlSession::acquire_timeout) take a key's lock for the session,
/// [`release`](MySqlSession::release) gives back any of them, in any order. Taking a key the
/// session holds already takes a second hold (the server counts them), and each release
/// gives back one. Dropping the session releases what it holds (failures are logged with
/// `tracing`); [`into_inner`](MySqlSession::into_inner) does the same and says how it went.
///
/// # Examples
///
/// ```no_run
/// use dlock_mysql::{Lock, MySqlSession};
/// use mysql::{Conn, Opts};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = Conn::new(Opts::from_url("mysql://app:secret@localhost/app")?)?;
/// let mut session = MySqlSession::new(conn);
/// session.acquire("accounts/1")?;
/// session.acquire("accounts/2")?;
/// session.release("accounts/1")?; // In any order.
/// session.release("accounts/2")?;
/// for job in ["a", "b"] {
///     // Per use: the deployment check ran once, for the whole session.
///     let mut lock = session.lock(format!("jobs/{job}"));
///     if lock.try_acquire()? {
///         lock.release()?;
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub struct MySqlSession<C: MySqlConnection> {
    /// Always `Some` until `into_inner` takes it.
    conn: Option<C>,
    facts: SessionFacts,
    policy: KeyPolicy,
    /// What the session holds through its own methods, oldest first.
    holds: Vec<LockState>,
}

impl<C: MySqlConnection> MySqlSession<C> {
    /// The session of `conn`, holding nothing.
    pub fn new(conn: C) -> Self {
        MySqlSession {
            conn: Some(conn),
            facts: SessionFacts::default(),
            policy: KeyPolicy::default(),
            holds: Vec::new(),
        }
    }

    /// A one-key lock on this session, unlocked, under the default key policy; it shares
    /// what the session knows.
    pub fn lock(&mut self, key: impl Into<Key>) -> MySqlLock<&mut Self> {
        MySqlLock::new(self, key)
    }

    /// The connection, for work of your own. Do not release locks through it with raw SQL:
    /// the session would no longer know what it holds.
    pub fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("the connection is only taken by into_inner")
            .connection()
    }

    dlock_core::__session_methods!(blocking, MySqlLock<&mut Self>);

    /// A lock on this session over a state the session holds.
    fn with_state(&mut self, state: LockState) -> MySqlLock<&mut Self> {
        MySqlLock {
            conn: Some(self),
            state,
        }
    }

    /// Releases everything the session's own methods hold, then gives the connection back
    /// with the first failure, if any.
    pub fn into_inner(mut self) -> (C, Result<()>) {
        let released = self.release_all();
        let conn = self
            .conn
            .take()
            .expect("the connection is only taken by into_inner");
        (conn, released)
    }

    /// Releases the holds, newest first.
    fn release_all(&mut self) -> Result<()> {
        let mut outcome = Ok(());
        while let Some(state) = self.holds.pop() {
            let (_, released) = self.with_state(state).into_inner();
            outcome = outcome.and(released);
        }
        outcome
    }
}

impl<C: MySqlConnection> MySqlConnection for MySqlSession<C> {
    fn connection(&mut self) -> &mut Conn {
        MySqlSession::conn(self)
    }

    fn session_facts(&mut self) -> Option<&mut SessionFacts> {
        Some(&mut self.facts)
    }
}

impl<C: MySqlConnection> Drop for MySqlSession<C> {
    fn drop(&mut self) {
        if self.conn.is_none() || self.holds.is_empty() {
            return;
        }
        if let Err(error) = self.release_all() {
            tracing::warn!(%error, "dropping a MySQL session: a release failed; its locks stay held until the session ends");
        }
    }
}

impl<C: MySqlConnection> fmt::Debug for MySqlSession<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlSession")
            .field("held", &self.held().collect::<Vec<_>>())
            .field("checked", &self.facts.checked)
            .finish_non_exhaustive()
    }
}

/// A MySQL or MariaDB named lock (`GET_LOCK`) over the blocking [`mysql::Conn`].
///
/// `C` is the connection, a `&mut` to it, a pooled connection of a `mysql::Pool`, or
/// anything else that implements [`MySqlConnection`]. The lock holds on to its connection
/// from creation to drop: a named lock lives in exactly one session.
///
/// Every operation is one round trip; waiting happens in the server. The contract is the
/// [`Lock`] trait's; in short: created unlocked, `acquire` waits, `try_acquire` never waits,
/// `acquire_timeout` waits at most its timeout, `release` says whether the server agreed, and
/// dropping a held lock releases it (a failure to do so is logged with `tracing`). A panic
/// inside the critical section drops the lock and so releases it.
///
/// Two lock objects with the same name on the same session both acquire (MySQL 5.7 and later
/// and MariaDB 10.0.2 and later count the holds), and each must release its own. Older
/// servers release a session's lock when it takes another: dlock does not support them.
///
/// The server family is read from the connection's handshake, without a query: MariaDB gets
/// timeouts in microseconds and "forever" as a one-year wait, repeated if it ever runs out
/// (MariaDB answers a negative timeout with NULL); MySQL gets whole seconds rounded up and a
/// negative timeout for "forever".
///
/// # Examples
///
/// ```no_run
/// use dlock_mysql::{Lock, MySqlLock};
/// use mysql::prelude::Queryable;
/// use mysql::{Conn, Opts};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = Conn::new(Opts::from_url("mysql://app:secret@localhost/app")?)?;
/// let mut lock = MySqlLock::new(conn, "nightly-report");
/// if lock.try_acquire()? {
///     // Only one process anywhere gets here at a time.
///     lock.conn().query_drop("UPDATE reports SET running = 1")?;
///     lock.release()?;
/// }
/// # Ok(())
/// # }
/// ```
#[must_use = "a lock does nothing until it is acquired"]
pub struct MySqlLock<C: MySqlConnection> {
    /// Always `Some` until `into_inner` takes it.
    conn: Option<C>,
    state: LockState,
}

impl<C: MySqlConnection> MySqlLock<C> {
    /// A lock on `key` over `conn`, unlocked, under the default key policy (the key's text
    /// is the lock name, as in sqlalchemy-dlock).
    pub fn new(conn: C, key: impl Into<Key>) -> Self {
        MySqlLock {
            conn: Some(conn),
            state: LockState::new(key.into(), false),
        }
    }

    crate::methods::lock_methods!();

    dlock_core::__connection_accessors!();

    /// The connection, for work inside the critical section.
    pub fn conn(&mut self) -> &mut Conn {
        self.get_mut().connection()
    }

    /// The id of the connection that holds this lock's name, from any session: `None` when
    /// nobody holds it. Compare with `conn().connection_id()`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for a key that cannot be a name; what the server or the
    /// connection reports.
    pub fn holder(&mut self) -> Result<Option<u64>> {
        let name = self.name()?;
        holder(self.conn(), &name)
    }

    /// Releases the lock if held, and gives the connection back with the outcome of the
    /// release (`Ok(())` when nothing was held).
    pub fn into_inner(mut self) -> (C, Result<()>) {
        let released = if self.state.held().is_some() {
            self.release()
        } else {
            Ok(())
        };
        let conn = self
            .conn
            .take()
            .expect("the connection is only taken by into_inner");
        (conn, released)
    }

    /// Sends what the machine asks until it is done; then tells the session what the
    /// operation learned.
    fn run<O: Operation>(&mut self, mut op: O) -> Result<O::Output> {
        let conn = self
            .conn
            .as_mut()
            .expect("the connection is only taken by into_inner");
        let mut reply = None;
        let outcome = loop {
            match op.step(&mut self.state, reply.take()) {
                Step::Done(outcome) => break outcome,
                Step::Send(statement) => reply = Some(query(conn.connection(), &statement)),
                Step::Execute(statement) => reply = Some(execute(conn.connection(), &statement)),
            }
        };
        if let Some(facts) = conn.session_facts() {
            self.state.teach(facts);
        }
        outcome
    }

    fn take(&mut self, wait: Wait) -> Result<bool> {
        self.traced(TracedOperation::Acquire(wait))
            .around_blocking(|| {
                if let Some(facts) = self.conn.as_mut().and_then(MySqlConnection::session_facts) {
                    self.state.learn_from(facts);
                }
                let version = self.conn().server_version();

                Acquire::start(&self.state, Some(version), wait).and_then(|op| self.run(op))
            })
    }
}

dlock_core::__connection_lock!(MySqlLock, MySqlConnection, KeyPolicy::mysql_name, blocking);

impl<C: MySqlConnection> Lock for MySqlLock<C> {
    fn key(&self) -> &Key {
        &self.state.key
    }

    fn acquire(&mut self) -> Result<()> {
        self.take(Wait::Forever).map(drop)
    }

    fn try_acquire(&mut self) -> Result<bool> {
        self.take(Wait::Never)
    }

    /// Waits at most `timeout` in the server. MariaDB counts microseconds and MySQL whole
    /// seconds; either way the timeout is rounded up, never down, and a zero timeout is a
    /// try.
    fn acquire_timeout(&mut self, timeout: Duration) -> Result<bool> {
        self.take(Wait::for_timeout(timeout))
    }

    fn release(&mut self) -> Result<()> {
        self.traced(TracedOperation::Release)
            .around_blocking(|| Release::start(&mut self.state).and_then(|op| self.run(op)))
    }

    fn is_acquired(&self) -> bool {
        self.state.held().is_some()
    }

    /// Asks the server whether this session holds the name (`IS_USED_LOCK(name) =
    /// CONNECTION_ID()`). After the connection was lost this is `Ok(false)`: the server freed
    /// the session's locks.
    fn verify(&mut self) -> Result<bool> {
        self.traced(TracedOperation::Verify)
            .around_blocking(|| Verify::start(&self.state).and_then(|op| self.run(op)))
    }
}

impl<C: MySqlConnection> Drop for MySqlLock<C> {
    fn drop(&mut self) {
        if self.state.held().is_none() || self.conn.is_none() {
            return;
        }
        if let Err(error) = self.release() {
            // Drop cannot return the error. A lock that could not be released is still held
            // by the session until it ends; the pool wrapper closes such sessions.
            tracing::warn!(key = %self.state.key, %error, "dropping a MySQL lock: release failed");
        }
    }
}

impl<C: MySqlConnection> fmt::Debug for MySqlLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlLock")
            .field("key", &self.state.key)
            .field("policy", &self.state.policy)
            .field("held", &self.state.held().map(|held| &held.name))
            .finish_non_exhaustive()
    }
}

/// The id of the connection that holds the lock named `name` (`IS_USED_LOCK`), asked
/// through `conn`: `None` when nobody holds it.
///
/// # Errors
///
/// What the server or the connection reports.
pub fn holder(conn: &mut Conn, name: &str) -> Result<Option<u64>> {
    let row = query(conn, &sql::holder(name)).map_err(|failed| failed.error)?;
    sql::read_holder(row.first().copied().flatten())
}

/// The session of `conn` as a lock watcher names it, for [`still_held`]: its connection id,
/// and a unique marker lock it takes now and holds until it ends (a later session with the
/// same id, after a restart, does not hold it). One round trip.
///
/// # Errors
///
/// What the server or the connection reports.
pub fn session(conn: &mut Conn) -> Result<SessionId> {
    let tag = dlock_core::attempt_token();
    let row = query(conn, &sql::session(tag)).map_err(|failed| failed.error)?;
    sql::read_session(&row, tag)
}

/// Whether each of `locks` (a session from [`session`], and a lock name it took) is still
/// held by that session, asked through `conn` from another session without touching the
/// holders' connections: what a pool's watcher sends. One statement per thousand locks.
///
/// # Errors
///
/// What the server or the connection reports.
pub fn still_held(conn: &mut Conn, locks: &[(SessionId, String)]) -> Result<Vec<bool>> {
    let mut held = Vec::with_capacity(locks.len());
    for chunk in locks.chunks(sql::WATCHED_PER_STATEMENT) {
        let row = query(conn, &sql::still_held(chunk)).map_err(|failed| failed.error)?;
        held.extend(sql::read_still_held(&row, chunk));
    }
    Ok(held)
}

/// Creates the table of fencing tokens, the default one (`dlock.dlock_fence`, and its
/// database; on MariaDB also its clock, the sequence `dlock.dlock_fence_clock`), if it does
/// not exist: what
/// [`fenced`](MySqlLock::fenced) locks need. Idempotent; run it once per database. The table
/// has one row per lock name, never deleted.
///
/// # Errors
///
/// What the server reports (for example a missing privilege).
pub fn install_fencing(conn: &mut Conn) -> Result<()> {
    conn.query_drop(sql::install_fence_database())
        .map_err(|error| classify(error).error)?;
    install_fencing_in(conn, crate::sql::DEFAULT_FENCE_TABLE)
}

/// Creates the table of fencing tokens `table` (`name` or `database.name`), and on MariaDB
/// its clock (the sequence `<table>_clock`), if it does not exist, for locks made [`fenced_in`](MySqlLock::fenced_in) it.
///
/// # Errors
///
/// [`Error::InvalidKey`] for a name that is not plain, or
/// what the server reports.
pub fn install_fencing_in(conn: &mut Conn, table: &str) -> Result<()> {
    let table = sql::fence_table(table)?;
    conn.query_drop(sql::install_fencing(
        sql::Server::from_version(conn.server_version()),
        &table,
    ))
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
/// [`Error::CannotExclude`] where a lock would exclude
/// nobody, or what the connection reports.
pub fn check_deployment(conn: &mut Conn) -> Result<()> {
    let version = conn.server_version();
    let [tidb, cluster, read_only] = machine::deployment_check(version)?;
    let replies = [
        query(conn, &tidb),
        query(conn, &cluster),
        query(conn, &read_only),
    ];
    machine::deployment_checked(version, replies)
}

/// Sends `statement`, which returns no rows, and reads its OK packet as
/// `[last insert id, rows changed]`.
fn execute(conn: &mut Conn, statement: &str) -> Reply {
    match conn.query_drop(statement) {
        Ok(()) => Ok(vec![
            i64::try_from(conn.last_insert_id()).ok(),
            i64::try_from(conn.affected_rows()).ok(),
        ]),
        Err(error) => Err(classify(error)),
    }
}

/// Sends `statement` and reads the values of its first row.
fn query(conn: &mut Conn, statement: &str) -> Reply {
    match conn.query_first::<mysql::Row, _>(statement) {
        Ok(row) => sql::read_row(row, statement),
        Err(error) => Err(classify(error)),
    }
}

/// Sorts an error of the blocking driver.
fn classify(error: mysql::Error) -> Failed {
    match error {
        mysql::Error::MySqlError(ref server) => {
            let code = server.code;
            sql::server_failure(code, Box::new(error))
        }
        mysql::Error::IoError(ref io) => {
            let ended = sql::closed_by_peer(io);
            sql::connection_lost(Box::new(error), ended)
        }
        mysql::Error::CodecError(ref codec) => {
            // A codec error's source is the I/O error under it, if there is one.
            let ended = std::error::Error::source(codec)
                .and_then(|source| source.downcast_ref::<std::io::Error>())
                .is_some_and(sql::closed_by_peer);
            sql::connection_lost(Box::new(error), ended)
        }
        other => Failed {
            failure: Failure::Other,
            error: Error::backend(other),
        },
    }
}
