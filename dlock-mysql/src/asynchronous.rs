//! Locks over `mysql_async`, on the tokio runtime.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dlock_core::{AsyncLock, Error, Key, KeyPolicy, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

use crate::sql::{self, Acquired, Spec, Wait};

/// A connection an [`AsyncMySqlLock`] can run on: the driver's [`Conn`] (also what a
/// `mysql_async::Pool` hands out), a box of it, or a `&mut` to either. For a bb8 pooled
/// connection pass `&mut *conn`, or use dlock-pool, which manages the connection for you.
///
/// Whether the lock owns its connection decides what a drop can do, because drop cannot
/// wait: see [`into_owned`](AsyncMySqlConnection::into_owned).
pub trait AsyncMySqlConnection: Send {
    /// The connection the lock sends its statements through.
    fn connection(&mut self) -> &mut Conn;

    /// The connection itself, when `self` owns it: a lock dropped while it holds its name
    /// moves the connection into a spawned task that releases the name. Borrows return
    /// `None` (the default), and the release is owed instead.
    fn into_owned(self) -> Option<Conn>
    where
        Self: Sized,
    {
        None
    }

    /// Asks for the connection to be closed instead of reused, which frees every lock of its
    /// session; `true` when it will be. A lock that cannot release (dropped while it holds its
    /// name, on a borrowed connection) calls this before it records an owed release. Pooled
    /// connections answer `true` by marking themselves broken (dlock-pool does); the default
    /// is `false`.
    fn discard(&mut self) -> bool {
        false
    }
}

impl AsyncMySqlConnection for Conn {
    fn connection(&mut self) -> &mut Conn {
        self
    }

    fn into_owned(self) -> Option<Conn> {
        Some(self)
    }
}

impl AsyncMySqlConnection for Box<Conn> {
    fn connection(&mut self) -> &mut Conn {
        self
    }

    fn into_owned(self) -> Option<Conn> {
        Some(*self)
    }
}

impl<T: AsyncMySqlConnection + ?Sized> AsyncMySqlConnection for &mut T {
    fn connection(&mut self) -> &mut Conn {
        (**self).connection()
    }

    fn discard(&mut self) -> bool {
        (**self).discard()
    }
}

/// A MySQL or MariaDB named lock (`GET_LOCK`) over [`mysql_async::Conn`], for tokio.
///
/// The same contract as [`MySqlLock`](crate::MySqlLock) (see the [`AsyncLock`] trait), with
/// what async Rust changes:
///
/// - **A future dropped mid-statement ends the session.** mysql_async cannot resynchronize a
///   connection whose query future was dropped before the reply arrived: the next query on
///   it would read the stale reply (measured with a dropped `GET_LOCK`). So when any future of
///   this lock is dropped while its statement is in flight (an `acquire` under
///   `tokio::time::timeout` or `select!`), a spawned task opens a fresh connection with the
///   same options and `KILL`s the session. The server then stops the wait and frees every
///   lock the session held, so no lock is ever granted to a session nobody tracks. Every later
///   call through this lock returns [`Error::ConnectionUnusable`]; the connection is dead,
///   and an owned one is disconnected when the lock drops. Use
///   [`acquire_timeout`](AsyncLock::acquire_timeout) for a bounded wait that keeps the
///   connection.
/// - **Release on drop is not immediate.** A held lock dropped without
///   [`release`](AsyncLock::release) is released by a task spawned on the current tokio
///   runtime when the lock owns its connection ([`AsyncMySqlConnection::into_owned`]). On
///   a borrowed connection the release is owed: the next operation of any
///   `AsyncMySqlLock` on that session pays it first. Plain queries do not, so until then the
///   session still holds the name. Call `release().await` to know the outcome.
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
    conn: Option<C>,
    spec: Spec,
    /// The name this object holds, as taken.
    held: Option<String>,
    /// Set while a statement is in flight, and left set when its future is dropped: the
    /// session is then being killed and the connection must not be used again.
    unusable: bool,
}

impl<C: AsyncMySqlConnection> AsyncMySqlLock<C> {
    /// A lock on `key` over `conn`, unlocked, under the default key policy (the key's text is
    /// the lock name, as in sqlalchemy-dlock).
    pub fn new(conn: C, key: impl Into<Key>) -> Self {
        AsyncMySqlLock {
            conn: Some(conn),
            spec: Spec::new(key.into()),
            held: None,
            unusable: false,
        }
    }

    /// Uses `policy` to turn the key into a lock name. Affects the next acquire.
    pub fn policy(mut self, policy: KeyPolicy) -> Self {
        self.spec.policy = policy;
        self
    }

    /// Asks for a shared lock, which MySQL and MariaDB do not have: every acquire then fails
    /// with [`Error::Unsupported`].
    pub fn shared(mut self) -> Self {
        self.spec.shared();
        self
    }

    /// Asks for a transaction-scoped lock, which MySQL and MariaDB do not have: every acquire
    /// then fails with [`Error::Unsupported`].
    pub fn transaction_scoped(mut self) -> Self {
        self.spec.transaction_scoped();
        self
    }

    /// The lock name this lock takes, under its policy.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when the key cannot be a MySQL lock name under the policy.
    pub fn name(&self) -> Result<String> {
        self.spec.name()
    }

    /// The connection, for work inside the critical section.
    ///
    /// After a dropped future ended the session (see the type's docs) the connection is dead;
    /// do not use it.
    pub fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("the connection is only taken by into_inner and drop")
            .connection()
    }

    /// The connection as it was given (a pooled connection, a box, a borrow), for what its
    /// own type offers.
    pub fn get_ref(&self) -> &C {
        self.conn
            .as_ref()
            .expect("the connection is only taken by into_inner and drop")
    }

    /// The connection as it was given, mutably. Do not release the lock's name through it
    /// with raw SQL: the lock would no longer know what it holds.
    pub fn get_mut(&mut self) -> &mut C {
        self.conn
            .as_mut()
            .expect("the connection is only taken by into_inner and drop")
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
    /// Dropping the future mid-statement ends the session, as for every method.
    pub async fn holder(&mut self) -> Result<Option<u64>> {
        let name = self.name()?;
        let reply = self.query(&sql::holder(&name)).await?;
        sql::read_holder(reply)
    }

    /// Releases the lock if held, and gives the connection back with the outcome of the
    /// release (`Ok(())` when nothing was held).
    ///
    /// # Cancel Safety
    ///
    /// Dropping the future while the release is in flight ends the session (which frees the
    /// lock) and drops the connection.
    pub async fn into_inner(mut self) -> (C, Result<()>) {
        let released = if self.held.is_some() {
            self.release().await
        } else {
            Ok(())
        };
        let conn = self
            .conn
            .take()
            .expect("the connection is only taken by into_inner and drop");
        (conn, released)
    }

    /// Sends `statement` and reads its single value, after paying owed releases. A drop of
    /// the returned future before it completes ends the session.
    async fn query(&mut self, statement: &str) -> Result<Option<i64>> {
        if self.unusable {
            return Err(sql::unusable());
        }
        self.unusable = true;
        let conn = self
            .conn
            .as_mut()
            .expect("the connection is only taken by into_inner and drop")
            .connection();
        let in_flight = InFlight::arm(conn);
        pay_owed(conn).await;
        let reply = query(conn, statement).await;
        in_flight.disarm();
        self.unusable = false;
        reply
    }

    async fn take(&mut self, wait: Wait) -> Result<bool> {
        let version = self.conn().server_version();
        let (name, statement) = self.spec.acquire(self.held.is_some(), version, wait)?;
        loop {
            let reply = self.query(&statement).await?;
            match sql::read_acquired(wait, reply)? {
                Acquired::Granted => {
                    self.held = Some(name);
                    return Ok(true);
                }
                Acquired::TimedOut => return Ok(false),
                Acquired::WaitAgain => continue,
            }
        }
    }
}

impl<C: AsyncMySqlConnection> AsyncLock for AsyncMySqlLock<C> {
    fn key(&self) -> &Key {
        &self.spec.key
    }

    /// # Cancel Safety
    ///
    /// Dropping the future while it waits ends the session: a spawned task `KILL`s it from a
    /// fresh connection, which stops the wait and frees anything granted meanwhile. The lock
    /// (and its connection) can not be used afterwards.
    async fn acquire(&mut self) -> Result<()> {
        self.take(Wait::Forever).await.map(drop)
    }

    /// # Cancel Safety
    ///
    /// As [`acquire`](Self::acquire): a drop before the reply ends the session.
    async fn try_acquire(&mut self) -> Result<bool> {
        self.take(Wait::Never).await
    }

    /// Waits at most `timeout` in the server, rounded up (MariaDB counts microseconds, MySQL
    /// whole seconds); a zero timeout is a try.
    ///
    /// # Cancel Safety
    ///
    /// As [`acquire`](Self::acquire): a drop before the reply ends the session. Prefer this
    /// method's own timeout to an outer `tokio::time::timeout`.
    ///
    /// If the server has not answered [`REPLY_GRACE`](dlock_core::REPLY_GRACE) after the
    /// timeout (a frozen server or a partition, where its timer cannot fire), this returns
    /// [`Error::no_reply`] and gives the connection up as a dropped future does: the session
    /// is killed once the server answers, and the lock is unusable. Needs a runtime with
    /// timers enabled.
    async fn acquire_timeout(&mut self, timeout: Duration) -> Result<bool> {
        let limit = timeout.saturating_add(dlock_core::REPLY_GRACE);
        match tokio::time::timeout(limit, self.take(Wait::for_timeout(timeout))).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::no_reply(limit)),
        }
    }

    /// # Cancel Safety
    ///
    /// A drop before the reply ends the session, which frees the lock.
    async fn release(&mut self) -> Result<()> {
        let name = self.held.take().ok_or(Error::NotAcquired)?;
        let reply = self.query(&sql::release_lock(&name)).await?;
        sql::read_released(reply)
    }

    fn is_acquired(&self) -> bool {
        self.held.is_some()
    }

    /// Asks the server whether this session holds the name. After the connection was lost,
    /// or the session ended by a dropped future, this is `Ok(false)`.
    ///
    /// # Cancel Safety
    ///
    /// A drop before the reply ends the session.
    async fn verify(&mut self) -> Result<bool> {
        if self.unusable {
            return Ok(false);
        }
        let name = match &self.held {
            Some(name) => name.clone(),
            None => self.name()?,
        };
        match self.query(&sql::held_by_session(&name)).await {
            Ok(reply) => sql::read_held(reply),
            Err(error) if error.is_connection_error() => Ok(false),
            Err(error) => Err(error),
        }
    }
}

impl<C: AsyncMySqlConnection> Drop for AsyncMySqlLock<C> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let held = self.held.take();
        if held.is_none() && !self.unusable {
            return;
        }
        let (endpoint, id) = session(conn.connection());
        if conn.discard() {
            // Closing the connection ends the session, and with it the lock.
            return;
        }
        let runtime = tokio::runtime::Handle::try_current();
        match (conn.into_owned(), runtime) {
            (Some(conn), Ok(runtime)) => {
                let unusable = self.unusable;
                let key = self.spec.key.to_string();
                runtime.spawn(async move {
                    if unusable {
                        // The session is being killed; close our end too.
                        let _ = conn.disconnect().await;
                        return;
                    }
                    let mut conn = conn;
                    if let Some(name) = held {
                        let released = query(&mut conn, &sql::release_lock(&name)).await;
                        if let Err(error) = released.and_then(sql::read_released) {
                            tracing::warn!(%key, %error, "dropped MySQL lock: release failed");
                        }
                    }
                });
            }
            (Some(_conn), Err(_)) => {
                // Without a runtime no I/O is possible: dropping the connection closes the
                // socket, and the server ends the session (freeing the lock) when it notices.
                tracing::warn!(
                    key = %self.spec.key,
                    "dropped a held MySQL lock outside a tokio runtime; the lock is freed when \
                     the server notices the closed connection"
                );
            }
            // A session being killed frees its locks by itself: nothing is owed then.
            (None, _) if self.unusable => {}
            (None, _) => {
                if let Some(name) = held {
                    owe(Owed {
                        endpoint,
                        connection_id: id,
                        name,
                    });
                }
            }
        }
    }
}

impl<C: AsyncMySqlConnection> fmt::Debug for AsyncMySqlLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncMySqlLock")
            .field("key", &self.spec.key)
            .field("policy", &self.spec.policy)
            .field("held", &self.held)
            .field("unusable", &self.unusable)
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
    sql::read_holder(query(conn, &sql::holder(name)).await?)
}

/// Sends `statement` and reads its single value.
async fn query(conn: &mut Conn, statement: &str) -> Result<Option<i64>> {
    match conn.query_first::<Option<i64>, _>(statement).await {
        Ok(Some(value)) => Ok(value),
        Ok(None) => Err(Error::backend(format!(
            "the server sent no row for `{statement}`"
        ))),
        Err(error) => Err(classify(error)),
    }
}

/// dlock's error for an error of mysql_async.
fn classify(error: mysql_async::Error) -> Error {
    match error {
        mysql_async::Error::Server(ref server) => {
            let code = server.code;
            sql::server_error(code, Box::new(error))
        }
        mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => Error::ConnectionLost {
            source: Some(Box::new(error)),
        },
        other => Error::backend(other),
    }
}

/// Where a session lives, as far as the client can tell, and its id: together they name the
/// session for owed releases.
fn session(conn: &Conn) -> (String, u32) {
    let opts = conn.opts();
    let endpoint = match opts.socket() {
        Some(socket) => socket.to_owned(),
        None => format!("{}:{}", opts.ip_or_hostname(), opts.tcp_port()),
    };
    (endpoint, conn.id())
}

/// Kills the session of a statement whose future is dropped before it completes.
struct InFlight {
    /// `Some` while armed: the options to open a fresh connection with, and the session id.
    session: Option<(Opts, u32)>,
}

impl InFlight {
    fn arm(conn: &Conn) -> InFlight {
        InFlight {
            session: Some((conn.opts().clone(), conn.id())),
        }
    }

    fn disarm(mut self) {
        self.session = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let Some((opts, id)) = self.session.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                connection_id = id,
                "a MySQL lock statement was dropped outside a tokio runtime; its session is \
                 ended when the connection closes"
            );
            return;
        };
        runtime.spawn(async move {
            let killed = match Conn::new(opts).await {
                Ok(mut killer) => {
                    let killed = killer.query_drop(sql::kill(id)).await;
                    let _ = killer.disconnect().await;
                    killed
                }
                Err(error) => Err(error),
            };
            match killed {
                Ok(()) => {}
                // The session had ended already: its locks are free, which is the point.
                Err(mysql_async::Error::Server(error)) if error.code == ER_NO_SUCH_THREAD => {}
                Err(error) => tracing::warn!(
                    connection_id = id,
                    %error,
                    "could not end the session of a dropped MySQL lock statement; it ends when \
                     its connection closes"
                ),
            }
        });
    }
}

/// `KILL` of a session that no longer exists (`ER_NO_SUCH_THREAD`).
const ER_NO_SUCH_THREAD: u16 = 1094;

/// A release owed by a lock dropped on a borrowed connection.
#[derive(Debug)]
struct Owed {
    endpoint: String,
    connection_id: u32,
    name: String,
}

/// Releases owed by dropped locks, until a lock operation on their session pays them. The
/// count lets every operation skip the mutex when nothing is owed, which is almost always.
static OWED: Mutex<Vec<Owed>> = Mutex::new(Vec::new());
static OWED_COUNT: AtomicUsize = AtomicUsize::new(0);

fn owe(owed: Owed) {
    let mut all = OWED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    all.push(owed);
    OWED_COUNT.store(all.len(), Ordering::Release);
}

/// Sends the releases owed on `conn`'s session, before the operation that is about to run.
/// Their outcome is logged, not returned: the operation at hand is what the caller asked for.
async fn pay_owed(conn: &mut Conn) {
    if OWED_COUNT.load(Ordering::Acquire) == 0 {
        return;
    }
    let (endpoint, connection_id) = session(conn);
    let due: Vec<Owed> = {
        let mut all = OWED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (due, rest) = std::mem::take(&mut *all)
            .into_iter()
            .partition(|owed| owed.connection_id == connection_id && owed.endpoint == endpoint);
        *all = rest;
        OWED_COUNT.store(all.len(), Ordering::Release);
        due
    };
    for owed in due {
        let released = query(conn, &sql::release_lock(&owed.name)).await;
        if let Err(error) = released.and_then(sql::read_released) {
            tracing::warn!(name = %owed.name, %error, "paying an owed MySQL lock release failed");
        }
    }
}
