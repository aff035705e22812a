//! `LockPool`: blocking locks that check out a dedicated r2d2 connection.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dlock_core::{
    ConnectionLock, Error, IntoConnection, Key, KeyPolicy, Lock, Result, SessionId, Wait,
};

use crate::core::{self, PoolCore};
use crate::deadline;
use crate::manager::{self, BlockingManager, LockManager, Retry};
use crate::watch::{Next, Rounds, Running, Signal, Stop, Watch, Watched, WatchedLock};

/// An r2d2 connection checked out for one lock, lent to the backend's lock type.
///
/// It derefs to the driver's connection. Its broken mark sends it to be closed instead of
/// reused when it comes back to the pool.
pub struct Pooled<M: BlockingManager>(r2d2::PooledConnection<LockManager<M>>);

impl<M: BlockingManager> Pooled<M> {
    /// Marks the connection so that the pool closes it when it comes back, which ends its
    /// session and frees its locks.
    pub fn mark_broken(&self) {
        self.0.mark_broken();
    }
}

impl<M: BlockingManager> Deref for Pooled<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.0
    }
}

impl<M: BlockingManager> DerefMut for Pooled<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.0
    }
}

impl<M: BlockingManager> fmt::Debug for Pooled<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pooled").field(&*self.0).finish()
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A blocking driver connection that [`LockPool`] can lock through: `postgres::Client`
/// (feature `postgres`) and `mysql::Conn` (feature `mysql`). Sealed: each backend names its
/// lock type here, and the lock type does the rest ([`IntoConnection`]).
pub trait BlockingConnection: Sized + Send + 'static + sealed::Sealed {
    /// The backend's lock over a connection of a pool of manager `M`.
    type Lock<M: BlockingManager<Connection = Self>>: IntoConnection<Pooled<M>>;

    /// Checks that a lock on `conn` excludes (the backend's `check_deployment`), with a
    /// second connection from `manager` where the backend needs one.
    #[doc(hidden)]
    fn check_deployment<M: BlockingManager<Connection = Self>>(
        conn: &mut Self,
        manager: &M,
    ) -> Result<()>;

    /// Names the session of `conn` for the watcher (the backend's `session`).
    #[doc(hidden)]
    fn session(conn: &mut Self) -> Result<SessionId>;

    /// Whether each of `locks` is still held, asked through `conn` (the backend's
    /// `still_held`).
    #[doc(hidden)]
    fn still_held(conn: &mut Self, policy: &KeyPolicy, locks: &[WatchedLock]) -> Result<Vec<bool>>;

    /// Creates the fence table `table` (the backend's default for `None`) if it is missing
    /// (the backend's `install_fencing` and `install_fencing_in`).
    #[doc(hidden)]
    fn install_fencing(conn: &mut Self, table: Option<&str>) -> Result<()>;

    /// Refuses, before any checkout, a thread where the driver cannot block.
    #[doc(hidden)]
    fn usable_here() -> Result<()> {
        Ok(())
    }
}

/// The lock type of a pool of manager `M`.
type LockOf<M> = <<M as r2d2::ManageConnection>::Connection as BlockingConnection>::Lock<M>;

#[cfg(feature = "postgres")]
mod postgres_backend {
    use dlock_postgres::postgres::Client;
    use dlock_postgres::{PgConnection, PgLock};

    use super::*;

    impl<M: BlockingManager<Connection = Client>> PgConnection for Pooled<M> {
        fn client(&mut self) -> &mut Client {
            self
        }
    }

    impl sealed::Sealed for Client {}

    impl BlockingConnection for Client {
        type Lock<M: BlockingManager<Connection = Self>> = PgLock<Pooled<M>>;

        /// The postgres client panics inside a tokio runtime's `block_on`.
        fn usable_here() -> Result<()> {
            dlock_postgres::refuse_inside_runtime()
        }

        /// A transaction pooler shows when two connections share a server session.
        fn check_deployment<M: BlockingManager<Connection = Self>>(
            conn: &mut Self,
            manager: &M,
        ) -> Result<()> {
            let mut second = manager.connect().map_err(Error::pool)?;
            dlock_postgres::check_deployment(conn, Some(&mut second))
        }

        fn session(conn: &mut Self) -> Result<SessionId> {
            dlock_postgres::session(conn)
        }

        fn still_held(
            conn: &mut Self,
            policy: &KeyPolicy,
            locks: &[WatchedLock],
        ) -> Result<Vec<bool>> {
            let locks = crate::watch::in_backend_form(policy, locks, KeyPolicy::pg_key)?;
            dlock_postgres::still_held(conn, &locks)
        }

        fn install_fencing(conn: &mut Self, table: Option<&str>) -> Result<()> {
            match table {
                Some(table) => dlock_postgres::install_fencing_in(conn, table),
                None => dlock_postgres::install_fencing(conn),
            }
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql_backend {
    use dlock_mysql::mysql::Conn;
    use dlock_mysql::{MySqlConnection, MySqlLock};

    use super::*;

    impl<M: BlockingManager<Connection = Conn>> MySqlConnection for Pooled<M> {
        fn connection(&mut self) -> &mut Conn {
            self
        }
    }

    impl sealed::Sealed for Conn {}

    impl BlockingConnection for Conn {
        type Lock<M: BlockingManager<Connection = Self>> = MySqlLock<Pooled<M>>;

        /// A cluster node says so itself: no second connection.
        fn check_deployment<M: BlockingManager<Connection = Self>>(
            conn: &mut Self,
            _manager: &M,
        ) -> Result<()> {
            dlock_mysql::check_deployment(conn)
        }

        fn session(conn: &mut Self) -> Result<SessionId> {
            dlock_mysql::session(conn)
        }

        fn still_held(
            conn: &mut Self,
            policy: &KeyPolicy,
            locks: &[WatchedLock],
        ) -> Result<Vec<bool>> {
            let locks = crate::watch::in_backend_form(policy, locks, KeyPolicy::mysql_name)?;
            dlock_mysql::still_held(conn, &locks)
        }

        fn install_fencing(conn: &mut Self, table: Option<&str>) -> Result<()> {
            match table {
                Some(table) => dlock_mysql::install_fencing_in(conn, table),
                None => dlock_mysql::install_fencing(conn),
            }
        }
    }
}

/// Blocking distributed locks over an r2d2 pool: each lock checks out a dedicated connection
/// and keeps it until release, so a session lock never shares its session.
///
/// `M` is the user's r2d2 manager (`r2d2_postgres::PostgresConnectionManager`,
/// `r2d2_mysql::MySqlConnectionManager`); the pool wraps it in a [`LockManager`] that can
/// close a connection instead of reusing it. The pool never gets back a connection that
/// holds a lock: when a release fails or its outcome is unknown, the connection is closed,
/// which ends the session and frees its locks in the server.
///
/// It blocks its thread: from async code use `AsyncLockPool` (feature `bb8`), or this pool
/// inside `tokio::task::spawn_blocking`. On PostgreSQL, in the body of `#[tokio::main]` or
/// `#[tokio::test]`, an acquire returns [`Error::Unsupported`] saying so (the blocking client
/// would panic there); inside a spawned task the driver itself panics.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(all(feature = "r2d2", feature = "postgres"))]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use dlock_pool::{LockGuard, LockPool};
/// use r2d2_postgres::{PostgresConnectionManager, postgres::NoTls};
/// use std::time::Duration;
///
/// let manager = PostgresConnectionManager::new(
///     "host=localhost user=postgres".parse()?,
///     NoTls,
/// );
/// let pool = LockPool::new(manager)?;
/// if let Some(mut guard) = pool.acquire_timeout("nightly-report", Duration::from_secs(5))? {
///     // The guard derefs to the connection that holds the lock.
///     guard.execute("UPDATE reports SET running = true", &[])?;
///     LockGuard::release(guard)?;
/// }
/// # Ok(())
/// # }
/// # #[cfg(not(all(feature = "r2d2", feature = "postgres")))]
/// # fn main() {}
/// ```
pub struct LockPool<M: BlockingManager> {
    pool: r2d2::Pool<LockManager<M>>,
    core: PoolCore<M>,
}

/// A clone shares the connections, the watcher and the options; change the clone's options
/// (`shared`, `fenced`) to acquire differently over the same connections.
impl<M: BlockingManager> Clone for LockPool<M> {
    fn clone(&self) -> Self {
        LockPool {
            pool: self.pool.clone(),
            core: self.core.clone(),
        }
    }
}

impl<M> LockPool<M>
where
    M: BlockingManager,
    M::Connection: BlockingConnection,
{
    /// A pool with r2d2's default settings (10 connections, 30 s checkout timeout) over
    /// `manager`, under the default key policy.
    ///
    /// A checkout does not test the connection with a round trip of its own: the lock
    /// statement is the test. When it finds that the server ended the connection's session
    /// (killed, timed out, restarted), the connection is closed and the acquire is tried once
    /// more on another connection, within the same timeout, and every connection of the pool
    /// is tested before its next use.
    ///
    /// # Errors
    ///
    /// [`Error::Pool`] when the pool cannot open its first connections in time; its source
    /// is the last connect error.
    pub fn new(manager: M) -> Result<Self> {
        Self::build(
            r2d2::Pool::builder(),
            LockManager::checking_in_doubt(manager),
        )
    }

    /// A pool built by `builder` (size, timeouts) over `manager`. The builder's
    /// `test_on_check_out` (on unless turned off) says whether each checkout tests its
    /// connection; an acquire whose connection's session turns out ended is tried once more,
    /// as with [`new`](LockPool::new).
    ///
    /// # Errors
    ///
    /// [`Error::Pool`] when the pool cannot open its first connections in time; its source
    /// is the last connect error.
    pub fn with_builder(builder: r2d2::Builder<LockManager<M>>, manager: M) -> Result<Self> {
        Self::build(builder, LockManager::new(manager))
    }

    fn build(builder: r2d2::Builder<LockManager<M>>, manager: LockManager<M>) -> Result<Self> {
        let core = PoolCore::new(&manager);
        // r2d2 reports a pool that could not fill itself as a timeout.
        let pool = builder
            .build(manager)
            .map_err(|error| core.checkout_error(error, true))?;
        Ok(LockPool { pool, core })
    }

    crate::manager::pool_options!();

    /// Uses `policy` to turn keys into the backend's keys.
    pub fn policy(mut self, policy: KeyPolicy) -> Self {
        self.core.set_policy(policy);
        self
    }

    /// The r2d2 pool, for its state or for plain work on its connections.
    pub fn pool(&self) -> &r2d2::Pool<LockManager<M>> {
        &self.pool
    }

    /// Checks out a connection (waiting up to the pool's connection timeout) and waits, in
    /// the server, until it holds `key`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] before any checkout; [`Error::Pool`] when no connection came in
    /// time; otherwise what the lock reports.
    pub fn acquire(&self, key: impl Into<Key>) -> Result<LockGuard<M>> {
        let guard = self.take(key.into(), None, Wait::Forever)?;
        guard.ok_or_else(|| Error::backend("an unbounded lock wait returned without the lock"))
    }

    /// Checks out a connection and takes `key` if it is free: `Ok(None)` when it is busy, and
    /// the connection goes back to the pool at once.
    ///
    /// # Errors
    ///
    /// As [`acquire`](LockPool::acquire).
    pub fn try_acquire(&self, key: impl Into<Key>) -> Result<Option<LockGuard<M>>> {
        self.take(key.into(), None, Wait::Never)
    }

    /// Checks out a connection and waits for `key`, both within `timeout`: `Ok(None)` when
    /// the lock was busy until then. The lock gets what the checkout left of the timeout,
    /// and at least a try.
    ///
    /// # Errors
    ///
    /// [`Error::Pool`] when no connection came within `timeout`; otherwise as
    /// [`acquire`](LockPool::acquire).
    pub fn acquire_timeout(
        &self,
        key: impl Into<Key>,
        timeout: Duration,
    ) -> Result<Option<LockGuard<M>>> {
        let deadline = deadline::deadline(Instant::now(), timeout);
        self.take(key.into(), deadline, Wait::Forever)
    }

    /// Creates the table of fencing tokens that this pool's locks use, if it does not exist:
    /// the one [`fenced_in`](LockPool::fenced_in) named, else the backend's default. It runs
    /// on a connection of the pool, which goes back to the pool afterwards. Run it once per
    /// database (at startup, or in a migration) with a login that may create tables.
    ///
    /// # Errors
    ///
    /// [`Error::Pool`] when no connection came; otherwise what the server reports.
    pub fn install_fencing(&self) -> Result<()> {
        M::Connection::usable_here()?;
        let mut conn = self
            .pool
            .get()
            .map_err(|error| self.core.checkout_error(error, true))?;
        BlockingConnection::install_fencing(&mut **conn, self.core.fence_table_name())
    }

    /// Checks out a connection and takes `key` on it: within `deadline` for both when there
    /// is one, else as `wait` says. Once more on another connection if the server had ended
    /// the first one's session.
    fn take(
        &self,
        key: Key,
        deadline: Option<Instant>,
        wait: Wait,
    ) -> Result<Option<LockGuard<M>>> {
        LockOf::<M>::check_key(&self.core.policy, &key)?;
        M::Connection::usable_here()?;
        let mut retry = Retry::default();
        loop {
            let conn = match deadline {
                Some(deadline) => {
                    let left = deadline::remaining(deadline, Instant::now());
                    self.pool.get_timeout(left)
                }
                None => self.pool.get(),
            }
            .map_err(|error| self.core.checkout_error(error, true))?;
            let wait = match deadline {
                Some(_) => deadline::lock_wait(deadline, Instant::now()),
                None => wait,
            };
            let outcome = self.lock_on(Pooled(conn), key.clone(), wait);
            if !retry.again(&outcome, &self.core.doubt) {
                return outcome;
            }
        }
    }

    fn lock_on(&self, mut conn: Pooled<M>, key: Key, wait: Wait) -> Result<Option<LockGuard<M>>> {
        let mark = conn.0.close_mark();
        if self.core.check_deployment && !conn.0.deployment_checked() {
            BlockingConnection::check_deployment(&mut *conn, &*self.core.manager)
                .map_err(|error| core::refused(&mark, error))?;
            conn.0.set_deployment_checked();
        }
        let held = if self.core.watch.is_on() {
            Some(self.held(&mut conn, &key)?)
        } else {
            None
        };
        let session_state = conn.0.take_session_state();
        let mut lock: LockOf<M> = (self.core).lock_on(conn, key, session_state)?;
        let outcome = match wait {
            Wait::Forever => lock.acquire().map(|()| true),
            Wait::Never => lock.try_acquire(),
            Wait::For(timeout) => lock.acquire_timeout(timeout),
        };
        match outcome {
            Ok(true) => {
                let (signal, watched) = (self.core).granted(held, lock.key(), mark, |running| {
                    self.start_watcher(running)
                });
                Ok(Some(LockGuard {
                    lock: Some(lock),
                    signal,
                    watched,
                }))
            }
            // Not held: dropping the lock sends the connection straight back.
            Ok(false) => Ok(None),
            Err(error) => {
                // A failed acquire can leave the session holding the lock (a cancel that
                // lands as the lock is granted): never give such a connection back.
                mark.set();
                manager::discarded_in_doubt(&error);
                Err(error)
            }
        }
    }

    /// The lock on `key` over `conn` as the watcher will ask about it; the first time on a
    /// connection, this asks the server for the session's name (a failure closes the
    /// connection, as in the async pool).
    fn held(&self, conn: &mut Pooled<M>, key: &Key) -> Result<WatchedLock> {
        let session = match conn.0.session() {
            Some(session) => session,
            None => {
                let session =
                    BlockingConnection::session(&mut **conn).inspect_err(|_| conn.mark_broken())?;
                conn.0.set_session(session);
                session
            }
        };
        Ok((session, key.clone()))
    }

    /// Starts the pool's watcher thread. It stops when the pool and all its guards are gone.
    fn start_watcher(&self, running: Running) {
        let watch = Arc::downgrade(&self.core.watch);
        let stop = self.core.watch.stop();
        let manager = Arc::clone(&self.core.manager);
        let policy = self.core.policy.clone();
        let started = std::thread::Builder::new()
            .name("dlock-watcher".into())
            .spawn(move || {
                let _running = running;
                watch_from_thread::<M>(watch, &stop, &manager, &policy);
            });
        if let Err(error) = started {
            // Nothing confirms the locks then, and each counts as lost once the bound runs out.
            tracing::error!(target: "dlock", %error, "the lock watcher thread could not start");
        }
    }

    /// Acquires `key` (waiting as [`acquire`](LockPool::acquire) does), runs `work` with the
    /// guard, and releases, whatever `work` returned.
    ///
    /// `work` returns `Result<T, E>` with an error type of yours that dlock's errors convert
    /// into (`dlock_pool::Error` itself, `anyhow::Error`, or your own with a
    /// `From<dlock_pool::Error>`), so the outcome is one `Result` to match: `work`'s error, or
    /// dlock's. `work` should look at [`LockGuard::is_lost`] between steps: a blocking closure
    /// cannot be stopped from outside.
    ///
    /// ```no_run
    /// # #[cfg(all(feature = "r2d2", feature = "postgres"))]
    /// # fn run(
    /// #     pool: &dlock_pool::LockPool<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>>,
    /// # ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let updated = pool.with_lock("nightly-report", |guard| {
    ///     let rows = guard.execute("UPDATE reports SET running = true", &[])?;
    ///     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(rows)
    /// })?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// `work`'s error; as [`acquire`](LockPool::acquire); [`Error::LockLost`] when the lock
    /// was lost while `work` ran, even if `work` finished (its result is then dropped: it was
    /// not done under the lock); what the release reports.
    pub fn with_lock<T, E: From<Error>>(
        &self,
        key: impl Into<Key>,
        work: impl FnOnce(&mut LockGuard<M>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let guard = self.acquire(key)?;
        run_locked(guard, work)
    }

    /// Like [`with_lock`](LockPool::with_lock), without waiting for the lock: `Ok(None)`
    /// when it is busy, and `work` does not run.
    ///
    /// # Errors
    ///
    /// As [`with_lock`](LockPool::with_lock).
    pub fn try_with_lock<T, E: From<Error>>(
        &self,
        key: impl Into<Key>,
        work: impl FnOnce(&mut LockGuard<M>) -> std::result::Result<T, E>,
    ) -> std::result::Result<Option<T>, E> {
        self.try_acquire(key)?
            .map(|guard| run_locked(guard, work))
            .transpose()
    }

    /// Like [`with_lock`](LockPool::with_lock), waiting for the lock up to `timeout`:
    /// `Ok(None)` when it stayed busy, and `work` does not run.
    ///
    /// # Errors
    ///
    /// As [`with_lock`](LockPool::with_lock).
    pub fn with_lock_timeout<T, E: From<Error>>(
        &self,
        key: impl Into<Key>,
        timeout: Duration,
        work: impl FnOnce(&mut LockGuard<M>) -> std::result::Result<T, E>,
    ) -> std::result::Result<Option<T>, E> {
        self.acquire_timeout(key, timeout)?
            .map(|guard| run_locked(guard, work))
            .transpose()
    }
}

/// Runs `work` under `guard`'s lock, then releases it: `work`'s error first, then the
/// release's.
fn run_locked<M, T, E: From<Error>>(
    mut guard: LockGuard<M>,
    work: impl FnOnce(&mut LockGuard<M>) -> std::result::Result<T, E>,
) -> std::result::Result<T, E>
where
    M: BlockingManager,
    M::Connection: BlockingConnection,
{
    let done = work(&mut guard);
    let released = LockGuard::release(guard);
    let done = done?;
    released?;
    Ok(done)
}

/// The watcher of a pool, on a thread of its own: a round per interval, through a
/// connection from `manager` that it opens again after a failure. A check that never returns
/// (a frozen server) holds the thread up; the locks it could not confirm count as lost once
/// the bound runs out, whatever the thread does.
fn watch_from_thread<M>(
    watch: Weak<Watch<WatchedLock>>,
    stop: &Stop,
    manager: &M,
    policy: &KeyPolicy,
) where
    M: BlockingManager,
    M::Connection: BlockingConnection,
{
    let mut rounds = Rounds::new(watch);
    let mut conn: Option<M::Connection> = None;
    while let Some((pause, _)) = rounds.pause() {
        if stop.sleep(pause) {
            return;
        }
        let round = match rounds.next() {
            Next::Stop => return,
            Next::Skip { close_connection } => {
                if close_connection {
                    conn = None;
                }
                continue;
            }
            Next::Check(round) => round,
        };
        let answer = match conn.as_mut() {
            Some(conn) => Ok(conn),
            None => manager
                .connect()
                .map(|connected| conn.insert(connected))
                .map_err(Error::pool),
        }
        .and_then(|conn| BlockingConnection::still_held(conn, policy, &round.held));
        if answer.is_err() {
            // A fresh connection for the next round.
            conn = None;
        }
        if !rounds.finish(round, answer) {
            return;
        }
    }
}

impl<M: BlockingManager> fmt::Debug for LockPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockPool")
            .field("state", &self.pool.state())
            .field("core", &self.core)
            .finish()
    }
}

/// A held lock and the pooled connection it holds it on, from [`LockPool`].
///
/// It derefs to the connection, for work inside the critical section. Its own functions are
/// associated functions (`LockGuard::verify(&mut guard)`), so they never shadow the
/// connection's methods. Dropping it releases the lock and returns the connection; if the
/// release fails the connection is closed instead, which frees the lock in the server. A
/// panic inside the critical section drops the guard, and so releases.
///
/// The pool's watcher tells the guard when its lock is lost ([`is_lost`](LockGuard::is_lost),
/// [`wait_lost`](LockGuard::wait_lost)); a lost guard's connection is closed, never reused.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard<M>
where
    M: BlockingManager,
    M::Connection: BlockingConnection,
{
    /// Always `Some` until `release` or drop takes it.
    lock: Option<LockOf<M>>,
    /// Whether the lock is lost, and why.
    signal: Arc<Signal>,
    /// The watcher's registration, dropped as a release begins.
    watched: Option<Watched<WatchedLock>>,
}

impl<M> LockGuard<M>
where
    M: BlockingManager,
    M::Connection: BlockingConnection,
{
    fn lock(&self) -> &LockOf<M> {
        self.lock
            .as_ref()
            .expect("the lock is only taken on release")
    }

    fn lock_mut(&mut self) -> &mut LockOf<M> {
        self.lock
            .as_mut()
            .expect("the lock is only taken on release")
    }

    /// Releases the lock, then returns the connection to the pool (or closes it when the
    /// release failed, which frees the lock in the server).
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] when the lock was lost while held (the watcher found it, or the
    /// server said so at release): the connection is closed, and nothing is sent when the
    /// loss was already known. A connection error when the session is gone.
    pub fn release(mut this: Self) -> Result<()> {
        let lock = this.lock.take().expect("the lock is only taken on release");
        settle::<M>(lock, this.watched.take(), &this.signal)
    }

    /// Whether the lock is known lost: the watcher found it no longer held, or could not
    /// confirm it for longer than the pool's bound, or a verify found it gone. No I/O.
    pub fn is_lost(this: &Self) -> bool {
        this.signal.lost_now().is_some()
    }

    /// Waits up to `timeout` for the lock to be lost: whether it was. For a thread that
    /// watches over work running elsewhere.
    pub fn wait_lost(this: &Self, timeout: Duration) -> bool {
        this.signal.wait_lost(timeout)
    }

    /// Asks the server whether this guard's session still holds the lock. A lock known lost
    /// is `Ok(false)` without asking: it stays lost.
    ///
    /// # Errors
    ///
    /// What the server or the connection reports.
    pub fn verify(this: &mut Self) -> Result<bool> {
        if this.signal.lost_now().is_some() {
            return Ok(false);
        }
        let verified = this.lock_mut().verify();
        crate::watch::note_verified(&this.signal, &verified);
        verified
    }

    /// The key of the held lock.
    pub fn key(this: &Self) -> &Key {
        this.lock().key()
    }

    /// The fencing token of the held lock, when the pool is fenced; `None` otherwise.
    pub fn fencing_token(this: &Self) -> Option<u64> {
        this.lock().fencing_token()
    }
}

/// Releases `lock` and sends its connection back, closing it when the release failed or the
/// lock was lost. The watcher stops watching first, so that it cannot take this unlock for a
/// loss.
fn settle<M>(lock: LockOf<M>, watched: Option<Watched<WatchedLock>>, signal: &Signal) -> Result<()>
where
    M: BlockingManager,
    M::Connection: BlockingConnection,
{
    drop(watched);
    if let Some(reason) = signal.lost_now() {
        // The lost signal marked the connection: closing it frees whatever is left, and an
        // unlock could hang on a frozen server.
        drop(lock.disown());
        return Err(signal.error(reason));
    }
    let mut lock = lock;
    let released = Lock::release(&mut lock);
    // What the lock learned of the session (prepared statements) stays with the connection.
    let session_state = match released {
        Ok(()) => lock.take_session_state(),
        Err(_) => None,
    };
    let (mut conn, rest) = lock.into_connection();
    let released = released.and(rest);
    match released {
        Ok(()) => conn.0.set_session_state(session_state),
        Err(_) => conn.mark_broken(),
    }
    core::released(signal, released)
}

impl<M> Deref for LockGuard<M>
where
    M: BlockingManager,
    M::Connection: BlockingConnection,
{
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        self.lock().connection()
    }
}

impl<M> DerefMut for LockGuard<M>
where
    M: BlockingManager,
    M::Connection: BlockingConnection,
{
    fn deref_mut(&mut self) -> &mut M::Connection {
        self.lock_mut().connection_mut()
    }
}

impl<M> Drop for LockGuard<M>
where
    M: BlockingManager,
    M::Connection: BlockingConnection,
{
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        let key = lock.key().to_string();
        if let Err(error) = settle::<M>(lock, self.watched.take(), &self.signal) {
            tracing::warn!(%key, %error, "dropping a pooled lock: release failed, connection closed");
        }
    }
}

impl<M> fmt::Debug for LockGuard<M>
where
    M: BlockingManager,
    M::Connection: BlockingConnection,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.lock.as_ref().map(|lock| lock.key()))
            .finish_non_exhaustive()
    }
}
