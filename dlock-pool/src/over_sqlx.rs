//! `SqlxLockPool`: pooled locks over the user's own sqlx pool (feature `sqlx`), PostgreSQL
//! (`sqlx::PgPool`) and MySQL/MariaDB (`sqlx::MySqlPool`). Each lock checks a connection out
//! of that pool for as long as it holds, and gives it back when it released cleanly; a
//! connection that may still hold anything is closed instead (`close_on_drop`), which ends
//! its session.
//!
//! sqlx gives a connection no identity dlock could key what it learns by, so with the watcher
//! on each lock statement names its server session too, from what the session keeps (its
//! start in a setting on PostgreSQL, a marker lock on MySQL); a session's first lock takes
//! that with one statement more.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dlock_core::{
    AsyncLock, ConnectionLock, Error, IntoConnectionAsync, Key, KeyPolicy, LostReason, Result,
    SessionId, Wait,
};
use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};

use crate::asynchronous::{
    Held, HeldGuard, Settled, WatchSource, acquire_pooled, bounded_with_lock, checkout_within,
    held_guard_functions, run_locked, take_on_checkouts, user_pool_entry_points,
};
use crate::core::PoolCore;
use crate::deadline;
use crate::manager::CloseMark;
use crate::watch::WatchedLock;

mod sealed {
    pub trait Sealed {}
}

/// A database a [`SqlxLockPool`] locks on: `sqlx::Postgres` (feature `postgres`) or
/// `sqlx::MySql` (feature `mysql`). Sealed.
pub trait SqlxBackend: Database + sealed::Sealed {
    /// The backend's sqlx lock over a connection of the pool.
    #[doc(hidden)]
    type Lock: IntoConnectionAsync<PoolConnection<Self>> + Send + 'static;

    /// The connection a guard derefs to (`PgConnection`, `MySqlConnection`).
    #[doc(hidden)]
    fn connection_of(lock: &Self::Lock) -> &Self::Connection;

    /// The same, mutably.
    #[doc(hidden)]
    fn connection_of_mut(lock: &mut Self::Lock) -> &mut Self::Connection;

    /// A lock on `key` over `conn`, under `policy`, with its own deployment check (once per
    /// server session) unless `check` is off, naming its server session with each grant
    /// when `names_session`; `checked_elsewhere` where a check passed on another session of
    /// the pool (a MySQL lock then locks before it reads its session's mark).
    #[doc(hidden)]
    fn lock_on(
        conn: PoolConnection<Self>,
        key: Key,
        policy: KeyPolicy,
        check: bool,
        names_session: bool,
        checked_elsewhere: bool,
    ) -> Self::Lock;

    /// The name a watcher knows the session of a granted `lock` made to name it by.
    #[doc(hidden)]
    fn named_session(lock: &Self::Lock) -> Option<SessionId>;

    /// Whether each of `locks` is still held, asked through `conn`.
    #[doc(hidden)]
    fn still_held(
        conn: &mut Self::Connection,
        policy: &KeyPolicy,
        locks: &[WatchedLock],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;

    /// Creates the fence table `table` (`None`: the backend's default) if it is missing.
    #[doc(hidden)]
    fn install_fencing(
        conn: &mut Self::Connection,
        table: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// Implements [`SqlxBackend`] for sqlx's database `$db`, whose connection is `$conn`, with the
/// sqlx lock `$lock` and the helpers of `$backend`'s sqlx module; `$server_key` turns keys
/// into the backend's; `$checked_elsewhere` tells a lock that a check passed on another
/// session of the pool.
#[cfg(any(feature = "postgres", feature = "mysql"))]
macro_rules! sqlx_backend {
    ($db:ty, $conn:ty, $lock:ident, $backend:ident, $server_key:path, $checked_elsewhere:expr) => {
        impl sealed::Sealed for $db {}

        impl SqlxBackend for $db {
            type Lock = $backend::$lock<PoolConnection<$db>>;

            fn connection_of(lock: &Self::Lock) -> &$conn {
                lock.get_ref()
            }

            fn connection_of_mut(lock: &mut Self::Lock) -> &mut $conn {
                lock.connection()
            }

            fn lock_on(
                conn: PoolConnection<Self>,
                key: Key,
                policy: KeyPolicy,
                check: bool,
                names_session: bool,
                checked_elsewhere: bool,
            ) -> Self::Lock {
                let mut lock = $backend::$lock::new(conn, key).policy(policy);
                lock = ($checked_elsewhere)(lock, checked_elsewhere);
                if !check {
                    lock = lock.skip_deployment_check();
                }
                if names_session {
                    lock = lock.naming_session();
                }
                lock
            }

            fn named_session(lock: &Self::Lock) -> Option<SessionId> {
                lock.named_session()
            }

            async fn still_held(
                conn: &mut $conn,
                policy: &KeyPolicy,
                locks: &[WatchedLock],
            ) -> Result<Vec<bool>> {
                let locks = crate::watch::in_backend_form(policy, locks, $server_key)?;
                $backend::sqlx::still_held(conn, &locks).await
            }

            async fn install_fencing(conn: &mut $conn, table: Option<&str>) -> Result<()> {
                $backend::sqlx::install_fencing(conn, table).await
            }
        }
    };
}

#[cfg(feature = "postgres")]
sqlx_backend!(
    sqlx::postgres::Postgres,
    sqlx::postgres::PgConnection,
    SqlxPgLock,
    dlock_postgres,
    KeyPolicy::pg_key,
    // A sqlx pool hands its connections out outside any transaction block (it rolls back
    // its own `Transaction`s); a raw `BEGIN` a user left open on one is aborted by the gate's
    // failure on an unchecked session, and that acquire fails and closes the connection.
    |lock: dlock_postgres::SqlxPgLock<PoolConnection<sqlx::postgres::Postgres>>, _| {
        lock.gated_by_prepared_statement()
    }
);

#[cfg(feature = "mysql")]
sqlx_backend!(
    sqlx::mysql::MySql,
    sqlx::mysql::MySqlConnection,
    SqlxMySqlLock,
    dlock_mysql,
    KeyPolicy::mysql_name,
    dlock_mysql::SqlxMySqlLock::checked_elsewhere
);

/// Pooled locks over your sqlx pool (`sqlx::PgPool` or `sqlx::MySqlPool`): the guard,
/// watcher, fencing, retry and deployment check of [`AsyncLockPool`](crate::AsyncLockPool),
/// with connections from your pool.
///
/// - An acquire checks a connection out of your pool and keeps it until release; a guard
///   derefs to its `PgConnection` or `MySqlConnection` for the work the lock guards.
/// - A released guard gives the connection back to your pool. One that may still hold
///   anything (a failed release, a lost lock) is closed instead of returned. A guard dropped
///   without release hands its lock to a task that releases it, as the sqlx locks do, and
///   its connection is then closed.
/// - The pool's watcher takes one connection of your pool for good (`detach`) when the
///   first lock is held. With the watcher on, the lock statement also names its server
///   session (sqlx keeps nothing dlock could key that by), from what the session keeps: on
///   PostgreSQL its start in the setting `dlock.session_started`, on MySQL a marker lock
///   and the variable `@dlock_session_tag`. A session's first lock pays one statement more
///   (two on MySQL) to keep them.
/// - On PostgreSQL a lock's first statement goes through a statement prepared on its server
///   session after the first checked grant there (`EXECUTE`), which proves the check and
///   returns the session's name for less than the same in the statement's text; a
///   session's second lock prepares it. On MySQL a lock takes its name first and reads the
///   session's mark of a passed check beside it, once a check passed on one of the pool's
///   sessions; a grant on an unmarked session goes back before the whole check runs.
/// - sqlx keeps the cancel key private, so the deployment check infers as the blocking
///   flavour does, once per server session (see the README's "Where a lock cannot exclude").
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use dlock_pool::{SqlxLockGuard, SqlxLockPool};
///
/// let pool = dlock_pool::sqlx::PgPool::connect("postgres://postgres@localhost/postgres").await?;
/// let locks = SqlxLockPool::new(pool);
/// let mut guard = locks.acquire("nightly-report").await?;
/// dlock_pool::sqlx::query("UPDATE reports SET running = true").execute(&mut *guard).await?;
/// SqlxLockGuard::release(guard).await?;
/// # Ok(())
/// # }
/// ```
pub struct SqlxLockPool<DB: SqlxBackend> {
    pool: Pool<DB>,
    core: PoolCore<SqlxSource<DB>>,
    /// Set once a lock of this pool was granted with its deployment check on: a check
    /// passed on one of the pool's sessions.
    checked: Arc<AtomicBool>,
}

/// Where the watcher of a [`SqlxLockPool`] connects: your pool, which gives up one
/// connection for good.
pub(crate) struct SqlxSource<DB: Database>(Pool<DB>);

impl<DB: SqlxBackend> WatchSource for SqlxSource<DB> {
    type Conn = DB::Connection;

    async fn connect(&self) -> Result<DB::Connection> {
        let conn = self.0.acquire().await.map_err(Error::pool)?;
        Ok(conn.detach())
    }

    async fn still_held(
        conn: &mut DB::Connection,
        policy: &KeyPolicy,
        locks: &[WatchedLock],
    ) -> Result<Vec<bool>> {
        DB::still_held(conn, policy, locks).await
    }
}

impl<DB: SqlxBackend> SqlxLockPool<DB> {
    /// Locks over `pool`, under the default key policy, with the watcher on.
    pub fn new(pool: Pool<DB>) -> Self {
        SqlxLockPool {
            core: PoolCore::over(Arc::new(SqlxSource(pool.clone()))),
            pool,
            checked: Arc::default(),
        }
    }

    crate::manager::pool_options!();

    /// Uses `policy` to turn keys into the backend's.
    pub fn policy(mut self, policy: KeyPolicy) -> Self {
        self.core.set_policy(policy);
        self
    }

    /// Your pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// Creates the table of fencing tokens that this pool's locks use, if it does not exist,
    /// through a connection of the pool. Run it once per database.
    ///
    /// # Errors
    ///
    /// [`Error::Pool`] when no connection came; otherwise what the server reports.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: every statement is idempotent.
    pub async fn install_fencing(&self) -> Result<()> {
        let mut conn = self.checkout(None).await?;
        DB::install_fencing(&mut conn, self.core.fence_table_name()).await
    }

    user_pool_entry_points!(
        SqlxLockGuard<DB>,
        "Dropping the future while it waits hands the lock to a task that ends the wait (sqlx \
         cannot cancel a statement: its waits go in slices of 400 ms) and releases anything \
         granted before the connection goes back to your pool.",
        "Dropping the future drops `work` and the guard, whose lock a task then releases."
    );

    /// A connection of your pool, within `deadline`.
    async fn checkout(&self, deadline: Option<Instant>) -> Result<PoolConnection<DB>> {
        // sqlx pings a connection, or opens it, before handing it out, and returns a dropped
        // one from a task of its own.
        let at_hand = self.pool.num_idle() > 0
            || self.pool.size() < self.pool.options().get_max_connections();
        checkout_within(deadline, at_hand, "sqlx", self.pool.acquire()).await
    }

    /// Checks out a connection and takes `key` on it ([`take_on_checkouts`]).
    async fn take(
        &self,
        key: Key,
        deadline: Option<Instant>,
        wait: Wait,
    ) -> Result<Option<SqlxLockGuard<DB>>> {
        DB::Lock::check_key(&self.core.policy, &key)?;
        take_on_checkouts(
            &self.core.doubt,
            deadline,
            wait,
            |deadline| self.checkout(deadline),
            |conn, wait| self.lock_on(conn, key.clone(), wait),
        )
        .await
    }

    async fn lock_on(
        &self,
        conn: PoolConnection<DB>,
        key: Key,
        wait: Wait,
    ) -> Result<Option<SqlxLockGuard<DB>>> {
        let watched = self.core.watch.is_on();
        let check = self.core.check_deployment;
        let lock = DB::lock_on(
            conn,
            key.clone(),
            self.core.policy.clone(),
            check,
            watched,
            check && self.checked.load(Ordering::Relaxed),
        );
        let mut lock = self.core.configure(lock, None)?;
        // sqlx connections carry no mark of their own: the lock closes its connection when
        // in doubt, and a lost or failed release closes it when the guard settles.
        let mark = CloseMark::default();
        if !acquire_pooled(&mut lock, wait, &mark).await? {
            // Not held: dropping the lock sends the connection straight back.
            return Ok(None);
        }
        if check {
            // Granted with the check on: the check passed on this session, now or before.
            self.checked.store(true, Ordering::Relaxed);
        }
        let held = match (watched, DB::named_session(&lock)) {
            (false, _) => None,
            (true, Some(session)) => Some((session, key)),
            // A lock made to name its session is granted only with the name read; were it
            // not, an unwatched guard would be a silent loss of the watcher's promise. The
            // dropped lock gives the grant back.
            (true, None) => {
                return Err(Error::backend(
                    "a lock was granted without its session's name, which the watcher needs",
                ));
            }
        };
        let (signal, watched) = (self.core).granted_async(held, lock.key(), mark.clone());
        Ok(Some(SqlxLockGuard {
            held: Held::new(lock, mark, signal, watched),
        }))
    }
}

impl<DB: SqlxBackend> Clone for SqlxLockPool<DB> {
    fn clone(&self) -> Self {
        SqlxLockPool {
            pool: self.pool.clone(),
            core: self.core.clone(),
            checked: Arc::clone(&self.checked),
        }
    }
}

impl<DB: SqlxBackend> fmt::Debug for SqlxLockPool<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxLockPool")
            .field("connections", &self.pool.size())
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

/// A held lock of a [`SqlxLockPool`] and the connection it holds it on. It derefs to the
/// `PgConnection` or `MySqlConnection` (pass `&mut *guard` as sqlx's executor); its own
/// functions are associated functions.
///
/// Release on drop is not immediate: a guard dropped without
/// [`release`](SqlxLockGuard::release) hands its lock to a task that releases it, and its
/// connection is then closed.
#[must_use = "the lock is released when the guard is dropped"]
pub struct SqlxLockGuard<DB: SqlxBackend> {
    held: Held<DB::Lock, PoolConnection<DB>>,
}

impl<DB: SqlxBackend> SqlxLockGuard<DB> {
    /// Releases the lock, then gives the connection back to your pool (or closes it when the
    /// release failed, which frees the lock in the server).
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] when the lock was lost while held; a connection error when the
    /// session is gone.
    ///
    /// # Cancel Safety
    ///
    /// Dropping the future before it completes leaves the lock to a task that releases it,
    /// and the connection is closed.
    pub async fn release(mut this: Self) -> Result<()> {
        this.held
            .release(|mut conn: PoolConnection<DB>, settled| {
                if let Settled::InDoubt = settled {
                    conn.close_on_drop();
                }
                drop(conn);
            })
            .await
    }

    held_guard_functions!();
}

impl<DB: SqlxBackend> Deref for SqlxLockGuard<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        DB::connection_of(self.held.lock())
    }
}

impl<DB: SqlxBackend> DerefMut for SqlxLockGuard<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        DB::connection_of_mut(self.held.lock_mut())
    }
}

impl<DB: SqlxBackend> HeldGuard for SqlxLockGuard<DB> {
    fn lost_signal(&self) -> impl Future<Output = LostReason> + Send + 'static {
        SqlxLockGuard::lost(self)
    }

    fn release_guard(self) -> impl Future<Output = Result<()>> {
        SqlxLockGuard::release(self)
    }
}

impl<DB: SqlxBackend> fmt::Debug for SqlxLockGuard<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxLockGuard")
            .field("key", &self.held.key())
            .finish_non_exhaustive()
    }
}
