//! The sqlx flavour (feature `sqlx`): a named lock that owns a sqlx connection (a
//! `MySqlConnection` or a `PoolConnection<MySql>`). It is a transport: the machine decides,
//! and this only sends what it asks for and hands back what it read.
//!
//! A statement whose future was dropped leaves the connection given up, as the tokio flavour
//! leaves its own (the machine's rule for replies nobody read): the lock is unusable, and its
//! drop closes the connection (a pooled one is closed by its pool, not reused), which ends its
//! session and frees its locks. A lock dropped holding, on a connection it can still trust,
//! hands the connection to a task on the current tokio runtime, which releases and then lets it
//! go. sqlx hides the server version it read from the handshake: a try and a wait without
//! timeout go in forms both server families read alike, the session's mark of a passed check
//! proves the version was checked, and the version is asked only where a form needs it.

use std::fmt;
use std::time::Duration;

use ::sqlx::mysql::{MySql, MySqlConnection, MySqlDatabaseError, MySqlRow};
use ::sqlx::pool::PoolConnection;
use ::sqlx::{Row as _, ValueRef as _};
use dlock_core::trace::TracedOperation;
use dlock_core::{AsyncLock, Error, Key, KeyPolicy, Result, SessionId, Wait};

use crate::asynchronous::within_grace;
use crate::machine::{Acquire, LockState, Operation, Release, Reply, Step, Verify};
use crate::sql::{self, Failed, Failure, Server};

mod sealed {
    pub trait Sealed {}
}

/// A sqlx connection a [`SqlxMySqlLock`] can own: `MySqlConnection`, or a
/// `PoolConnection<MySql>` (closed instead of returned to its pool when its lock cannot prove
/// it clean). Sealed.
pub trait SqlxMySqlConnection: Send + 'static + sealed::Sealed {
    /// The connection the lock sends its statements through.
    fn connection(&mut self) -> &mut MySqlConnection;

    /// Makes sure the connection is closed, not reused, once dropped.
    #[doc(hidden)]
    fn discard(&mut self) {}
}

impl sealed::Sealed for MySqlConnection {}

/// Dropping it closes it.
impl SqlxMySqlConnection for MySqlConnection {
    fn connection(&mut self) -> &mut MySqlConnection {
        self
    }
}

impl sealed::Sealed for PoolConnection<MySql> {}

impl SqlxMySqlConnection for PoolConnection<MySql> {
    fn connection(&mut self) -> &mut MySqlConnection {
        self
    }

    fn discard(&mut self) {
        self.close_on_drop();
    }
}

/// A MySQL or MariaDB named lock that owns a sqlx connection `C`: a `MySqlConnection`, or a
/// `PoolConnection<MySql>` from your `MySqlPool` ([`SqlxMySqlConnection`]). Names, policies,
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
            Ok(())
        };
        let mut conn = self
            .conn
            .take()
            .expect("the connection is only taken when the lock is consumed");
        if released.is_err() || self.state.is_unusable() {
            conn.discard();
        }
        (conn, released)
    }

    /// Steps one operation of the machine on this lock's connection.
    async fn run<O: Operation>(&mut self, op: O) -> Result<O::Output> {
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
        self.traced(TracedOperation::Acquire(wait))
            .around(async {
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

    /// Asks the server whether this session holds the name.
    ///
    /// # Cancel Safety
    ///
    /// A drop before the reply gives the connection up.
    async fn verify(&mut self) -> Result<bool> {
        self.traced(TracedOperation::Verify)
            .around(async {
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
        if self.state.is_unusable() {
            conn.discard();
            return;
        }
        if self.state.held().is_none() {
            return;
        }
        let mut state = std::mem::replace(&mut self.state, LockState::new(Key::from(""), false));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %state.key, "a sqlx lock dropped outside a tokio runtime: its connection is closed, which frees its locks");
            conn.discard();
            return;
        };
        tracing::debug!(key = %state.key, "dropping a held MySQL lock: a task releases it");
        runtime.spawn(async move {
            let released = match Release::start(&mut state) {
                Ok(op) => {
                    let mut lock = SqlxMySqlLock {
                        conn: Some(conn),
                        state,
                    };
                    let outcome = lock.run(op).await;
                    let conn = lock.conn.take();
                    (conn, outcome)
                }
                Err(error) => (Some(conn), Err(error)),
            };
            if let (Some(mut conn), Err(error)) = released {
                tracing::warn!(%error, "a dropped sqlx lock could not be released: its connection is closed, which frees its locks");
                conn.discard();
            }
        });
    }
}

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
