//! `AsyncLockPool`: tokio locks that check out a dedicated bb8 connection.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dlock_core::{
    AsyncLock, ConnectionLock, Error, IntoConnectionAsync, Key, KeyPolicy, LostReason, Result,
    SessionId, Wait,
};

use crate::core::{self, PoolCore};
use crate::deadline;
use crate::manager::{AsyncManager, CloseMark, ConnectError, LockManager, Retry};
use crate::watch::{self, Next, Rounds, Signal, Watch, Watched, WatchedLock};

/// A bb8 connection checked out for one lock, lent to the backend's lock type.
///
/// It derefs to the driver's connection. Its broken mark sends it to be closed instead of
/// reused when it comes back to the pool.
pub struct AsyncPooled<M: AsyncManager>(bb8::PooledConnection<'static, LockManager<M>>);

impl<M: AsyncManager> AsyncPooled<M> {
    /// Marks the connection so that the pool closes it when it comes back, which ends its
    /// session and frees its locks.
    pub fn mark_broken(&self) {
        self.0.mark_broken();
    }

    fn close_mark(&self) -> CloseMark {
        self.0.close_mark()
    }
}

impl<M: AsyncManager> Deref for AsyncPooled<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.0
    }
}

impl<M: AsyncManager> DerefMut for AsyncPooled<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.0
    }
}

impl<M: AsyncManager> fmt::Debug for AsyncPooled<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AsyncPooled").field(&*self.0).finish()
    }
}

mod sealed {
    pub trait Sealed {}
}

/// An async driver connection that [`AsyncLockPool`] can lock through:
/// `tokio_postgres::Client` (feature `postgres`) and `mysql_async::Conn` (feature `mysql`).
/// Sealed: each backend names its lock type here, and the lock type does the rest
/// ([`IntoConnectionAsync`]).
pub trait AsyncConnection: Sized + Send + 'static + sealed::Sealed {
    /// The backend's lock over a connection of a pool of manager `M`.
    type Lock<M: AsyncManager<Connection = Self>>: IntoConnectionAsync<AsyncPooled<M>>
        + Send
        + 'static;

    /// Checks that a lock on `conn` excludes (the backend's `check_deployment_async`), with a
    /// second connection from `pool` where the backend needs one.
    #[doc(hidden)]
    fn check_deployment<M: AsyncManager<Connection = Self>>(
        conn: &mut Self,
        pool: &bb8::Pool<LockManager<M>>,
        trust_session_pooler: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Names the session of `conn` for the watcher (the backend's `session_async`).
    #[doc(hidden)]
    fn session(conn: &mut Self) -> impl Future<Output = Result<SessionId>> + Send;

    /// Gives a new lock what the pool keeps for this backend's locks (on PostgreSQL, the
    /// TLS of the cancel request a dropped acquire sends).
    #[doc(hidden)]
    fn prepare<M: AsyncManager<Connection = Self>>(
        lock: Self::Lock<M>,
        _options: &BackendOptions,
    ) -> Self::Lock<M> {
        lock
    }

    /// Whether each of `locks` is still held, asked through `conn` (the backend's
    /// `still_held_async`).
    #[doc(hidden)]
    fn still_held(
        conn: &mut Self,
        policy: &KeyPolicy,
        locks: &[WatchedLock],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;

    /// Creates the fence table `table` (the backend's default for `None`) if it is missing
    /// (the backend's `install_fencing_async` and `install_fencing_in_async`).
    #[doc(hidden)]
    fn install_fencing(
        conn: &mut Self,
        table: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// A connection as a session that many guards share keeps it
    /// ([`AsyncMultiplexedPool`]).
    #[doc(hidden)]
    type Shared<M: AsyncManager<Connection = Self>>: Send + Sync + 'static;

    /// A key as the server names it.
    #[doc(hidden)]
    type ServerKey: Clone + Eq + std::hash::Hash + fmt::Debug + Send + Sync + 'static;

    /// `key` as the server names it, under `policy`.
    #[doc(hidden)]
    fn server_key(policy: &KeyPolicy, key: &Key) -> Result<Self::ServerKey>;

    /// Makes `conn` a shared session's.
    #[doc(hidden)]
    fn share<M: AsyncManager<Connection = Self>>(conn: AsyncPooled<M>) -> Self::Shared<M>;

    /// One try of `key` on a shared session, with a fencing token from `fence` (`Some(None)`:
    /// the default table): `Ok(Some(token))` when granted. It runs to its end even if the
    /// future is dropped.
    #[doc(hidden)]
    fn try_lock_shared<M: AsyncManager<Connection = Self>>(
        shared: &Self::Shared<M>,
        key: &Self::ServerKey,
        fence: Option<Option<&str>>,
    ) -> impl Future<Output = Result<Option<Option<u64>>>> + Send;

    /// Releases one hold of `key` on a shared session: whether it held it.
    #[doc(hidden)]
    fn unlock_shared<M: AsyncManager<Connection = Self>>(
        shared: &Self::Shared<M>,
        key: &Self::ServerKey,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Releases `key` on a shared session if the session holds it.
    #[doc(hidden)]
    fn unlock_shared_if_held<M: AsyncManager<Connection = Self>>(
        shared: &Self::Shared<M>,
        key: &Self::ServerKey,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Whether shared session `session` still holds `key`, asked on it.
    #[doc(hidden)]
    fn still_held_shared<M: AsyncManager<Connection = Self>>(
        shared: &Self::Shared<M>,
        session: SessionId,
        key: &Self::ServerKey,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// The lock type of a pool of manager `M`.
type LockOf<M> = <<M as bb8::ManageConnection>::Connection as AsyncConnection>::Lock<M>;

/// Expands, inside an async pool's `impl` whose `with_lock` runs work with `$guard`, to its
/// `try_with_lock` and `with_lock_timeout`: `with_lock` without the wait, and with a bounded
/// one. The pool has `try_acquire` and `acquire_timeout` giving `Option<$guard>`.
macro_rules! bounded_with_lock {
    ($guard:ty) => {
        /// Like [`with_lock`](Self::with_lock), without waiting: `Ok(None)` when the lock is
        /// busy, and `work` does not run.
        ///
        /// # Errors
        ///
        /// As [`with_lock`](Self::with_lock).
        ///
        /// # Cancel Safety
        ///
        /// As [`with_lock`](Self::with_lock).
        pub async fn try_with_lock<T, E: From<Error>>(
            &self,
            key: impl Into<Key>,
            work: impl AsyncFnOnce(&mut $guard) -> std::result::Result<T, E>,
        ) -> std::result::Result<Option<T>, E> {
            match self.try_acquire(key).await? {
                Some(guard) => crate::asynchronous::run_locked(guard, work).await.map(Some),
                None => Ok(None),
            }
        }

        /// Like [`with_lock`](Self::with_lock), waiting up to `timeout`: `Ok(None)` when the
        /// lock stayed busy, and `work` does not run.
        ///
        /// # Errors
        ///
        /// As [`with_lock`](Self::with_lock).
        ///
        /// # Cancel Safety
        ///
        /// As [`with_lock`](Self::with_lock).
        pub async fn with_lock_timeout<T, E: From<Error>>(
            &self,
            key: impl Into<Key>,
            timeout: std::time::Duration,
            work: impl AsyncFnOnce(&mut $guard) -> std::result::Result<T, E>,
        ) -> std::result::Result<Option<T>, E> {
            match self.acquire_timeout(key, timeout).await? {
                Some(guard) => crate::asynchronous::run_locked(guard, work).await.map(Some),
                None => Ok(None),
            }
        }
    };
}

#[cfg(any(feature = "url", feature = "deadpool", feature = "sqlx"))]
pub(crate) use bounded_with_lock;

/// Expands, inside the `impl` of a pool over the user's own pool (deadpool, sqlx) whose
/// guard is `$guard` and whose `take(key, deadline, wait)` checks out and locks, to its entry
/// points: `acquire`, `try_acquire`, `acquire_timeout`, `with_lock` and the bounded forms.
/// `$dropped` says what a dropped acquire leaves, `$dropped_work` what dropping `with_lock`
/// does.
#[cfg(any(feature = "deadpool", feature = "sqlx"))]
macro_rules! user_pool_entry_points {
    ($guard:ty, $dropped:literal, $dropped_work:literal) => {
        /// Checks a connection out of your pool and waits, in the server, until it holds
        /// `key`.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidKey`] before any checkout; [`Error::Pool`] when no connection came;
        /// otherwise what the lock reports.
        ///
        /// # Cancel Safety
        ///
        #[doc = $dropped]
        pub async fn acquire(&self, key: impl Into<Key>) -> Result<$guard> {
            let guard = self.take(key.into(), None, Wait::Forever).await?;
            guard.ok_or_else(|| Error::backend("an unbounded lock wait returned without the lock"))
        }

        /// Takes `key` if it is free: `Ok(None)` when it is busy, and the connection goes
        /// back to your pool at once.
        ///
        /// # Errors
        ///
        /// As [`acquire`](Self::acquire).
        ///
        /// # Cancel Safety
        ///
        /// As [`acquire`](Self::acquire).
        pub async fn try_acquire(&self, key: impl Into<Key>) -> Result<Option<$guard>> {
            self.take(key.into(), None, Wait::Never).await
        }

        /// Checks out a connection and waits for `key`, both within `timeout`: `Ok(None)`
        /// when the lock was busy until then.
        ///
        /// # Errors
        ///
        /// As [`acquire`](Self::acquire).
        ///
        /// # Cancel Safety
        ///
        /// As [`acquire`](Self::acquire).
        pub async fn acquire_timeout(
            &self,
            key: impl Into<Key>,
            timeout: Duration,
        ) -> Result<Option<$guard>> {
            let deadline = deadline::deadline(Instant::now(), timeout);
            self.take(key.into(), deadline, Wait::Forever).await
        }

        /// Acquires `key`, runs `work` with the guard and releases, whatever `work` returned;
        /// if the lock is lost first, `work`'s future is dropped at once and the result is
        /// [`Error::LockLost`]. As
        /// [`AsyncLockPool::with_lock`](crate::AsyncLockPool::with_lock).
        ///
        /// # Errors
        ///
        /// `work`'s error; as [`acquire`](Self::acquire); [`Error::LockLost`].
        ///
        /// # Cancel Safety
        ///
        #[doc = $dropped_work]
        pub async fn with_lock<T, E: From<Error>>(
            &self,
            key: impl Into<Key>,
            work: impl AsyncFnOnce(&mut $guard) -> std::result::Result<T, E>,
        ) -> std::result::Result<T, E> {
            let guard = self.acquire(key).await?;
            run_locked(guard, work).await
        }

        bounded_with_lock!($guard);
    };
}

#[cfg(any(feature = "deadpool", feature = "sqlx"))]
pub(crate) use user_pool_entry_points;

#[cfg(any(feature = "postgres", feature = "mysql"))]
mod batch;
mod held;
mod multiplexed;
#[cfg(any(feature = "postgres", feature = "mysql"))]
use batch::{BatchTransport, Batched};
pub(crate) use held::{Held, Settled, acquire_pooled, held_guard_functions};
pub use multiplexed::{AsyncMultiplexedGuard, AsyncMultiplexedPool, MultiplexedManager};

#[cfg(feature = "postgres")]
mod postgres_backend {
    use dlock_core::{PgKey, SharedOp};
    use dlock_postgres::tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
    use dlock_postgres::tokio_postgres::{Client, Socket};
    use dlock_postgres::{AsyncPgConnection, AsyncPgLock};

    use super::*;

    impl<M: AsyncManager<Connection = Client>> AsyncPgConnection for AsyncPooled<M> {
        fn client(&mut self) -> &mut Client {
            self
        }

        /// A pooled connection is closed instead of reused: the pool gets it back at once.
        fn discard(&mut self) -> bool {
            self.mark_broken();
            true
        }
    }

    impl<M: AsyncManager<Connection = Client>> AsyncLockPool<M> {
        /// Sends the cancel request that ends a dropped acquire's wait through `tls`: give
        /// it the connector your manager connects with. Without it the cancel goes in plain
        /// text, which shows the session's cancel key to the network (PostgreSQL does not
        /// ask a cancel request to log in, so it works even where the server takes only TLS
        /// logins). The URL pools do this themselves.
        ///
        /// ```no_run
        /// # async fn run<T>(manager: bb8_postgres::PostgresConnectionManager<T>, tls: T) -> dlock_pool::Result<()>
        /// # where
        /// #     T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Clone + Send + Sync + 'static,
        /// #     T::Stream: Send + Sync + 'static,
        /// #     T::TlsConnect: Send,
        /// #     <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
        /// # {
        /// // `tls` is the connector the manager was built with.
        /// let pool = dlock_pool::AsyncLockPool::new(manager).await?.tls(tls);
        /// # drop(pool);
        /// # Ok(())
        /// # }
        /// ```
        pub fn tls<T>(mut self, tls: T) -> Self
        where
            T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
            T::Stream: Send + 'static,
            T::TlsConnect: Send,
            <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
        {
            self.backend.pg_side_tls = Some(dlock_postgres::tokio::SideTls::new(tls));
            self
        }
    }

    impl sealed::Sealed for Client {}

    impl AsyncConnection for Client {
        type Lock<M: AsyncManager<Connection = Self>> = AsyncPgLock<AsyncPooled<M>>;

        /// A direct connection is proven by its cancel key; a pooler the user vouches for is
        /// checked with a second connection, which a transaction pooler lets share a server
        /// session.
        async fn check_deployment<M: AsyncManager<Connection = Self>>(
            conn: &mut Self,
            pool: &bb8::Pool<LockManager<M>>,
            trust_session_pooler: bool,
        ) -> Result<()> {
            if !trust_session_pooler {
                return dlock_postgres::check_deployment_async(conn, None).await;
            }
            let second = pool.dedicated_connection().await.map_err(Error::pool)?;
            dlock_postgres::check_session_pooler_async(conn, Some(&second)).await
        }

        async fn session(conn: &mut Self) -> Result<SessionId> {
            dlock_postgres::session_async(conn).await
        }

        fn prepare<M: AsyncManager<Connection = Self>>(
            lock: AsyncPgLock<AsyncPooled<M>>,
            options: &BackendOptions,
        ) -> AsyncPgLock<AsyncPooled<M>> {
            match &options.pg_side_tls {
                Some(tls) => lock.side_tls(tls.clone()),
                None => lock,
            }
        }

        async fn still_held(
            conn: &mut Self,
            policy: &KeyPolicy,
            locks: &[WatchedLock],
        ) -> Result<Vec<bool>> {
            let locks = crate::watch::in_backend_form(policy, locks, KeyPolicy::pg_key)?;
            dlock_postgres::still_held_async(conn, &locks).await
        }

        async fn install_fencing(conn: &mut Self, table: Option<&str>) -> Result<()> {
            match table {
                Some(table) => dlock_postgres::install_fencing_in_async(conn, table).await,
                None => dlock_postgres::install_fencing_async(conn).await,
            }
        }

        /// A shared session batches ([`batch`]): tokio-postgres would pipeline the entries
        /// one by one, but one statement for many costs the server far less.
        type Shared<M: AsyncManager<Connection = Self>> = Arc<Batched<AsyncPooled<M>>>;

        type ServerKey = PgKey;

        fn server_key(policy: &KeyPolicy, key: &Key) -> Result<PgKey> {
            policy.pg_key(key)
        }

        fn share<M: AsyncManager<Connection = Self>>(
            conn: AsyncPooled<M>,
        ) -> Arc<Batched<AsyncPooled<M>>> {
            Arc::new(Batched::new(conn))
        }

        async fn try_lock_shared<M: AsyncManager<Connection = Self>>(
            shared: &Arc<Batched<AsyncPooled<M>>>,
            key: &PgKey,
            fence: Option<Option<&str>>,
        ) -> Result<Option<Option<u64>>> {
            match fence {
                // A fenced try bumps its key's token in its own statement.
                Some(table) => {
                    Ok(
                        dlock_postgres::tokio::try_lock_fenced(&shared.transport, *key, table)
                            .await?
                            .map(Some),
                    )
                }
                None => Ok(shared.send(SharedOp::TryLock, *key).await?.then_some(None)),
            }
        }

        async fn unlock_shared<M: AsyncManager<Connection = Self>>(
            shared: &Arc<Batched<AsyncPooled<M>>>,
            key: &PgKey,
        ) -> Result<bool> {
            shared.send(SharedOp::Unlock, *key).await
        }

        async fn unlock_shared_if_held<M: AsyncManager<Connection = Self>>(
            shared: &Arc<Batched<AsyncPooled<M>>>,
            key: &PgKey,
        ) -> Result<()> {
            shared.send(SharedOp::UnlockIfHeld, *key).await.map(drop)
        }

        async fn still_held_shared<M: AsyncManager<Connection = Self>>(
            shared: &Arc<Batched<AsyncPooled<M>>>,
            session: SessionId,
            key: &PgKey,
        ) -> Result<bool> {
            let locks = [(session, *key)];
            let held = dlock_postgres::tokio::still_held(&shared.transport, &locks).await?;
            Ok(held.first().copied().unwrap_or(false))
        }
    }

    impl<M: AsyncManager<Connection = Client>> BatchTransport for AsyncPooled<M> {
        type Key = PgKey;

        /// PostgreSQL takes at most 1,664 columns in a statement.
        const MAX_BATCH: usize = 1_000;

        async fn run(&self, ops: &[(SharedOp, PgKey)]) -> Result<Vec<bool>> {
            dlock_postgres::tokio::batch(self, ops).await
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql_backend {
    use dlock_core::SharedOp;
    use dlock_mysql::mysql_async::Conn;
    use dlock_mysql::{AsyncMySqlConnection, AsyncMySqlLock};

    use super::*;

    impl<M: AsyncManager<Connection = Conn>> AsyncMySqlConnection for AsyncPooled<M> {
        fn connection(&mut self) -> &mut Conn {
            self
        }

        fn connection_ref(&self) -> &Conn {
            self
        }

        /// A pooled connection is closed instead of reused: the pool gets it back at once.
        fn discard(&mut self) -> bool {
            self.mark_broken();
            true
        }

        fn is_discardable(&self) -> bool {
            true
        }
    }

    impl sealed::Sealed for Conn {}

    impl AsyncConnection for Conn {
        type Lock<M: AsyncManager<Connection = Self>> = AsyncMySqlLock<AsyncPooled<M>>;

        /// A cluster node says so itself: no second connection.
        async fn check_deployment<M: AsyncManager<Connection = Self>>(
            conn: &mut Self,
            _pool: &bb8::Pool<LockManager<M>>,
            _trust_session_pooler: bool,
        ) -> Result<()> {
            dlock_mysql::check_deployment_async(conn).await
        }

        async fn session(conn: &mut Self) -> Result<SessionId> {
            dlock_mysql::session_async(conn).await
        }

        async fn still_held(
            conn: &mut Self,
            policy: &KeyPolicy,
            locks: &[WatchedLock],
        ) -> Result<Vec<bool>> {
            let locks = crate::watch::in_backend_form(policy, locks, KeyPolicy::mysql_name)?;
            dlock_mysql::still_held_async(conn, &locks).await
        }

        async fn install_fencing(conn: &mut Self, table: Option<&str>) -> Result<()> {
            match table {
                Some(table) => dlock_mysql::install_fencing_in_async(conn, table).await,
                None => dlock_mysql::install_fencing_async(conn).await,
            }
        }

        /// A shared session batches ([`batch`]): mysql_async sends one statement at a time
        /// and cannot pipeline, so the entries that many tasks ask for while a statement is
        /// out go together in the next one. The connection sits behind a mutex for the
        /// statements that are not batched (a fenced try, a verify), each run to its end by a
        /// task of its own: a statement whose future is dropped before its reply leaves
        /// mysql_async unable to read the next one.
        type Shared<M: AsyncManager<Connection = Self>> = Arc<Batched<MySqlShared<M>>>;

        type ServerKey = String;

        fn server_key(policy: &KeyPolicy, key: &Key) -> Result<String> {
            policy.mysql_name(key)
        }

        fn share<M: AsyncManager<Connection = Self>>(
            conn: AsyncPooled<M>,
        ) -> Arc<Batched<MySqlShared<M>>> {
            Arc::new(Batched::new(MySqlShared(Arc::new(
                tokio::sync::Mutex::new(conn),
            ))))
        }

        async fn try_lock_shared<M: AsyncManager<Connection = Self>>(
            shared: &Arc<Batched<MySqlShared<M>>>,
            key: &String,
            fence: Option<Option<&str>>,
        ) -> Result<Option<Option<u64>>> {
            let Some(table) = fence else {
                return Ok(shared
                    .send(SharedOp::TryLock, key.clone())
                    .await?
                    .then_some(None));
            };
            // A fenced try takes its token in a second statement, on the connection alone.
            let (conn, name) = (Arc::clone(&shared.transport.0), key.clone());
            let table = table.map(str::to_owned);
            let (reply, replied) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let mut conn = conn.lock().await;
                let outcome =
                    dlock_mysql::tokio::try_lock(&mut conn, &name, Some(table.as_deref())).await;
                if let Err(Ok(Some(_))) = reply.send(outcome) {
                    // Nobody waits for this grant any more: it goes back at once.
                    let _ =
                        dlock_mysql::tokio::batch(&mut conn, &[(SharedOp::Unlock, name.as_str())])
                            .await;
                }
            });
            replied.await.unwrap_or_else(|_| Err(task_ended()))
        }

        async fn unlock_shared<M: AsyncManager<Connection = Self>>(
            shared: &Arc<Batched<MySqlShared<M>>>,
            key: &String,
        ) -> Result<bool> {
            shared.send(SharedOp::Unlock, key.clone()).await
        }

        async fn unlock_shared_if_held<M: AsyncManager<Connection = Self>>(
            shared: &Arc<Batched<MySqlShared<M>>>,
            key: &String,
        ) -> Result<()> {
            shared
                .send(SharedOp::UnlockIfHeld, key.clone())
                .await
                .map(drop)
        }

        async fn still_held_shared<M: AsyncManager<Connection = Self>>(
            shared: &Arc<Batched<MySqlShared<M>>>,
            session: SessionId,
            key: &String,
        ) -> Result<bool> {
            let (conn, locks) = (Arc::clone(&shared.transport.0), [(session, key.clone())]);
            let held = tokio::spawn(async move {
                dlock_mysql::tokio::still_held(&mut *conn.lock().await, &locks).await
            })
            .await
            .unwrap_or_else(|_| Err(task_ended()))?;
            Ok(held.first().copied().unwrap_or(false))
        }
    }

    /// A MySQL session that many guards of an [`AsyncMultiplexedPool`] share: its connection,
    /// which one statement at a time uses.
    #[allow(unreachable_pub)] // Named by `AsyncConnection::Shared`, which users never name.
    pub struct MySqlShared<M: AsyncManager<Connection = Conn>>(
        Arc<tokio::sync::Mutex<AsyncPooled<M>>>,
    );

    impl<M: AsyncManager<Connection = Conn>> fmt::Debug for MySqlShared<M> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("MySqlShared").finish_non_exhaustive()
        }
    }

    impl<M: AsyncManager<Connection = Conn>> BatchTransport for MySqlShared<M> {
        type Key = String;

        /// MySQL takes at most 4,096 columns in a statement.
        const MAX_BATCH: usize = 1_000;

        /// In a task of its own, so that the statement runs to its end and its reply is read
        /// whatever happens to the batch's task.
        async fn run(&self, ops: &[(SharedOp, String)]) -> Result<Vec<bool>> {
            let (conn, ops) = (Arc::clone(&self.0), ops.to_vec());
            tokio::spawn(async move {
                let ops: Vec<(SharedOp, &str)> =
                    ops.iter().map(|(op, name)| (*op, name.as_str())).collect();
                dlock_mysql::tokio::batch(&mut *conn.lock().await, &ops).await
            })
            .await
            .unwrap_or_else(|_| Err(task_ended()))
        }
    }

    /// The error of a shared session's statement whose task ended without an answer (its
    /// runtime shut down).
    fn task_ended() -> Error {
        Error::backend("the task that ran a shared session's statement ended without an answer")
    }
}

/// Async distributed locks over a bb8 pool: each lock checks out a dedicated connection and
/// keeps it until release, so a session lock never shares its session.
///
/// `M` is the user's bb8 manager (`bb8_postgres::PostgresConnectionManager`, or this
/// crate's `AsyncMySqlManager` for mysql_async (features `bb8` and `mysql`)); the pool wraps it
/// in a [`LockManager`] that can close a connection instead of reusing it. The pool never gets
/// back a connection that holds a lock: when a release fails, a future is cancelled mid-way,
/// or a guard is dropped without `release().await`, the connection is closed, which ends the
/// session and frees its locks in the server.
///
/// # Examples
///
/// ```no_run
/// # #[cfg(all(feature = "bb8", feature = "postgres"))]
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use bb8_postgres::{PostgresConnectionManager, tokio_postgres::NoTls};
/// use dlock_pool::{AsyncLockGuard, AsyncLockPool};
/// use std::time::Duration;
///
/// let manager = PostgresConnectionManager::new_from_stringlike(
///     "host=localhost user=postgres",
///     NoTls,
/// )?;
/// let pool = AsyncLockPool::new(manager).await?;
/// if let Some(mut guard) = pool.acquire_timeout("nightly-report", Duration::from_secs(5)).await? {
///     guard.execute("UPDATE reports SET running = true", &[]).await?;
///     AsyncLockGuard::release(guard).await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct AsyncLockPool<M: AsyncManager> {
    pool: bb8::Pool<LockManager<M>>,
    core: PoolCore<M>,
    backend: BackendOptions,
}

/// What an [`AsyncLockPool`] keeps for one backend's locks only.
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// The TLS of the cancel request that ends a dropped acquire's wait.
    #[cfg(feature = "postgres")]
    pg_side_tls: Option<dlock_postgres::tokio::SideTls>,
}

/// A clone shares the connections, the watcher and the options; change the clone's options
/// (`shared`, `fenced`) to acquire differently over the same connections.
impl<M: AsyncManager> Clone for AsyncLockPool<M> {
    fn clone(&self) -> Self {
        AsyncLockPool {
            pool: self.pool.clone(),
            core: self.core.clone(),
            backend: self.backend.clone(),
        }
    }
}

impl<M> AsyncLockPool<M>
where
    M: AsyncManager,
    M::Connection: AsyncConnection,
{
    /// A pool with bb8's default size and timeout (10 connections, 30 s checkout timeout)
    /// over `manager`, under the default key policy, handing out the most recently returned
    /// connection first.
    ///
    /// A checkout does not test the connection with a round trip of its own: the lock
    /// statement is the test. When it finds that the server ended the connection's session
    /// (killed, timed out, restarted), the connection is closed and the acquire is tried once
    /// more on another connection, within the same timeout, and every connection of the pool
    /// is tested before its next use.
    ///
    /// # Errors
    ///
    /// [`Error::Pool`] when the pool cannot open the connections its builder asks for at
    /// once (bb8's `min_idle`; none by default, so that an unreachable server shows at the
    /// first acquire, as [`Error::Pool`] naming the last connect error).
    pub async fn new(manager: M) -> Result<Self> {
        // The most recently returned connection goes out first: a connection kept busy stays
        // warm in the server, where bb8's default order would turn through them all.
        let builder = bb8::Pool::builder().queue_strategy(bb8::QueueStrategy::Lifo);
        Self::build(builder, LockManager::checking_in_doubt(manager)).await
    }

    /// A pool built by `builder` (size, timeouts) over `manager`. The builder's
    /// `test_on_check_out` (on unless turned off) says whether each checkout tests its
    /// connection; an acquire whose connection's session turns out ended is tried once more,
    /// as with [`new`](AsyncLockPool::new).
    ///
    /// # Errors
    ///
    /// [`Error::Pool`] when the pool cannot open the connections its builder asks for at
    /// once (bb8's `min_idle`; none by default, so that an unreachable server shows at the
    /// first acquire, as [`Error::Pool`] naming the last connect error).
    pub async fn with_builder(builder: bb8::Builder<LockManager<M>>, manager: M) -> Result<Self> {
        Self::build(builder, LockManager::new(manager)).await
    }

    async fn build(builder: bb8::Builder<LockManager<M>>, manager: LockManager<M>) -> Result<Self> {
        let core = PoolCore::new(&manager);
        let pool = builder.build(manager).await.map_err(Error::pool)?;
        Ok(AsyncLockPool {
            pool,
            core,
            backend: BackendOptions::default(),
        })
    }

    crate::manager::pool_options!();

    /// Uses `policy` to turn keys into the backend's keys.
    pub fn policy(mut self, policy: KeyPolicy) -> Self {
        self.core.set_policy(policy);
        self
    }

    /// Vouches that the pool's connections go through a PostgreSQL pooler in session mode
    /// (pgbouncer's `pool_mode = session`). Without it, each connection's check proves that
    /// it is direct (the pid in its cancel key is its server session's own; a pooler hands
    /// out keys of its own) and refuses a pooler with
    /// [`Deployment::UnprovenPooler`](dlock_core::Deployment::UnprovenPooler). With it, the
    /// check opens a second connection and refuses a pooler that lets the two share a server
    /// session, as a transaction pooler does. Nothing changes on MySQL.
    pub fn trust_session_pooler(mut self) -> Self {
        self.core.trust_session_pooler = true;
        self
    }

    /// The bb8 pool, for its state or for plain work on its connections.
    pub fn pool(&self) -> &bb8::Pool<LockManager<M>> {
        &self.pool
    }

    /// The key policy the pool's locks take keys under.
    #[cfg_attr(not(feature = "url"), allow(dead_code))]
    pub(crate) fn key_policy(&self) -> &KeyPolicy {
        &self.core.policy
    }

    /// Creates the table of fencing tokens that this pool's locks use, if it does not exist:
    /// the one [`fenced_in`](AsyncLockPool::fenced_in) named, else the backend's default. It
    /// runs on a connection of the pool, which goes back to the pool afterwards. Run it once
    /// per database (at startup, or in a migration) with a login that may create tables.
    ///
    /// # Errors
    ///
    /// [`Error::Pool`] when no connection came; otherwise what the server reports.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: `CREATE TABLE IF NOT EXISTS` either ran or did not, and a dropped call
    /// can be made again.
    pub async fn install_fencing(&self) -> Result<()> {
        let mut conn = self.checkout(None).await?;
        AsyncConnection::install_fencing(&mut *conn, self.core.fence_table_name()).await
    }

    async fn checkout(&self, deadline: Option<Instant>) -> Result<AsyncPooled<M>> {
        let checkout = self.pool.get_owned();
        let conn = match deadline {
            None => checkout.await,
            Some(deadline) => {
                let mut left = deadline::remaining(deadline, Instant::now());
                if self.pool.state().idle_connections > 0 {
                    // A connection is at hand, but the pool may check it with a round trip
                    // (`test_on_check_out`): that check gets a reply's grace, as the lock's
                    // own statement does, so that no time left still means "at least a try".
                    left = left.max(dlock_core::REPLY_GRACE);
                }
                match tokio::time::timeout(left, checkout).await {
                    Ok(conn) => conn,
                    Err(_) => return Err(self.pool_error(bb8::RunError::TimedOut)),
                }
            }
        };
        conn.map(AsyncPooled)
            .map_err(|error| self.pool_error(error))
    }

    /// The error of a failed checkout. bb8 turns a failed connect into a plain timeout, so
    /// the last connect error is named as the cause when there is one.
    fn pool_error(&self, error: bb8::RunError<ConnectError>) -> Error {
        let timed_out = matches!(error, bb8::RunError::TimedOut);
        self.core.checkout_error(error, timed_out)
    }

    /// Checks out a connection (waiting up to the pool's connection timeout) and waits, in
    /// the server, until it holds `key`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] before any checkout; [`Error::Pool`] when no connection came in
    /// time; otherwise what the lock reports.
    ///
    /// # Cancel Safety
    ///
    /// Dropping the future while it waits for the lock closes the connection instead of
    /// returning it to the pool, which ends the session's wait and frees anything granted.
    pub async fn acquire(&self, key: impl Into<Key>) -> Result<AsyncLockGuard<M>> {
        let guard = self.take(key.into(), None, Wait::Forever).await?;
        guard.ok_or_else(|| Error::backend("an unbounded lock wait returned without the lock"))
    }

    /// Checks out a connection and takes `key` if it is free: `Ok(None)` when it is busy, and
    /// the connection goes back to the pool at once.
    ///
    /// # Errors
    ///
    /// As [`acquire`](AsyncLockPool::acquire).
    ///
    /// # Cancel Safety
    ///
    /// As [`acquire`](AsyncLockPool::acquire).
    pub async fn try_acquire(&self, key: impl Into<Key>) -> Result<Option<AsyncLockGuard<M>>> {
        self.take(key.into(), None, Wait::Never).await
    }

    /// Checks out a connection and waits for `key`, both within `timeout`: `Ok(None)` when
    /// the lock was busy until then. The lock gets what the checkout left of the timeout, and
    /// at least a try. A server that has not answered [`REPLY_GRACE`](dlock_core::REPLY_GRACE)
    /// after the timeout (frozen, or cut off by a partition) gets its connection closed, and
    /// this returns [`Error::no_reply`].
    ///
    /// # Errors
    ///
    /// [`Error::Pool`] when no connection came within `timeout`; otherwise as
    /// [`acquire`](AsyncLockPool::acquire).
    ///
    /// # Cancel Safety
    ///
    /// As [`acquire`](AsyncLockPool::acquire).
    pub async fn acquire_timeout(
        &self,
        key: impl Into<Key>,
        timeout: Duration,
    ) -> Result<Option<AsyncLockGuard<M>>> {
        let deadline = deadline::deadline(Instant::now(), timeout);
        self.take(key.into(), deadline, Wait::Forever).await
    }

    /// Checks out a connection and takes `key` on it ([`take_on_checkouts`]).
    async fn take(
        &self,
        key: Key,
        deadline: Option<Instant>,
        wait: Wait,
    ) -> Result<Option<AsyncLockGuard<M>>> {
        LockOf::<M>::check_key(&self.core.policy, &key)?;
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
        mut conn: AsyncPooled<M>,
        key: Key,
        wait: Wait,
    ) -> Result<Option<AsyncLockGuard<M>>> {
        let mark = conn.close_mark();
        self.check_deployment(&mut conn, &mark).await?;
        let held = if self.core.watch.is_on() {
            Some((self.session(&mut conn, &mark).await?, key.clone()))
        } else {
            None
        };
        let session_state = conn.0.take_session_state();
        let lock: LockOf<M> = (self.core).lock_on(conn, key, session_state)?;
        let mut lock = M::Connection::prepare(lock, &self.backend);
        if !acquire_pooled(&mut lock, wait, &mark).await? {
            // Not held: dropping the lock sends the connection straight back.
            return Ok(None);
        }
        let (signal, watched) = (self.core).granted_async(held, lock.key(), mark.clone());
        Ok(Some(AsyncLockGuard {
            held: Held::new(lock, mark, signal, watched),
        }))
    }

    /// Checks, once per connection, that a lock on `conn` excludes (unless the pool skips
    /// the check); a refusal closes the connection.
    async fn check_deployment(&self, conn: &mut AsyncPooled<M>, mark: &CloseMark) -> Result<()> {
        if !self.core.check_deployment || conn.0.deployment_checked() {
            return Ok(());
        }
        // A check whose future is dropped with its reply unread closes the connection.
        let checking = mark.armed();
        AsyncConnection::check_deployment(&mut **conn, &self.pool, self.core.trust_session_pooler)
            .await
            .map_err(|error| core::refused(mark, error))?;
        checking.disarm();
        conn.0.set_deployment_checked();
        Ok(())
    }

    /// The session of `conn` as the watcher names it; the first time on a connection, this
    /// asks the server (a failure, or a future dropped before the reply, closes the
    /// connection).
    async fn session(&self, conn: &mut AsyncPooled<M>, mark: &CloseMark) -> Result<SessionId> {
        if let Some(session) = conn.0.session() {
            return Ok(session);
        }
        let asking = mark.armed();
        let session = AsyncConnection::session(&mut **conn).await?;
        asking.disarm();
        conn.0.set_session(session);
        Ok(session)
    }

    /// Acquires `key` (waiting as [`acquire`](AsyncLockPool::acquire) does), runs `work`
    /// with the guard (which derefs to the connection, and gives the fencing token), and
    /// releases, whatever `work` returned. If the lock is lost first, `work`'s future is
    /// dropped at once and the result is [`Error::LockLost`].
    ///
    /// `work` returns `Result<T, E>` with an error type of yours that dlock's errors convert
    /// into (`dlock_pool::Error` itself, `anyhow::Error`, or your own with a
    /// `From<dlock_pool::Error>`), so the outcome is one `Result` to match: `work`'s error, or
    /// dlock's.
    ///
    /// ```no_run
    /// # #[cfg(all(feature = "bb8", feature = "postgres"))]
    /// # async fn run(
    /// #     pool: dlock_pool::AsyncLockPool<bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>>,
    /// # ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let rows = pool
    ///     .with_lock("nightly-report", async |guard| {
    ///         let rows = guard.execute("UPDATE reports SET running = true", &[]).await?;
    ///         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(rows)
    ///     })
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// `work`'s error; as [`acquire`](AsyncLockPool::acquire); [`Error::LockLost`] when the
    /// lock was lost before `work` finished, or its release found it lost; what the release
    /// reports.
    ///
    /// # Cancel Safety
    ///
    /// Dropping the future drops `work` and the guard, which closes the connection and so
    /// frees the lock.
    pub async fn with_lock<T, E: From<Error>>(
        &self,
        key: impl Into<Key>,
        work: impl AsyncFnOnce(&mut AsyncLockGuard<M>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let guard = self.acquire(key).await?;
        run_locked(guard, work).await
    }

    bounded_with_lock!(AsyncLockGuard<M>);
}

/// What [`run_locked`] needs of a guard: the future that resolves when its lock is lost, and
/// its release (which, for a lost lock, sends nothing and says so).
pub(crate) trait HeldGuard: Sized {
    fn lost_signal(&self) -> impl Future<Output = LostReason> + Send + 'static;

    fn release_guard(self) -> impl Future<Output = Result<()>>;
}

impl<M> HeldGuard for AsyncLockGuard<M>
where
    M: AsyncManager,
    M::Connection: AsyncConnection,
{
    fn lost_signal(&self) -> impl Future<Output = LostReason> + Send + 'static {
        AsyncLockGuard::lost(self)
    }

    fn release_guard(self) -> impl Future<Output = Result<()>> {
        AsyncLockGuard::release(self)
    }
}

/// Checks out a connection and takes a lock on it with `lock_on`: within `deadline` for both
/// when there is one, else as `wait` says. Once more on another connection if the server had
/// ended the first one's session. A server that does not answer a timed wait by its end plus
/// the grace is stalled: the attempt is dropped, and its armed mark closes the connection.
pub(crate) async fn take_on_checkouts<C, G, Checkout, Locking>(
    doubt: &crate::manager::Doubt,
    deadline: Option<Instant>,
    wait: Wait,
    checkout: impl Fn(Option<Instant>) -> Checkout,
    lock_on: impl Fn(C, Wait) -> Locking,
) -> Result<Option<G>>
where
    Checkout: Future<Output = Result<C>>,
    Locking: Future<Output = Result<Option<G>>>,
{
    let mut retry = Retry::default();
    loop {
        let conn = checkout(deadline).await?;
        let wait = match deadline {
            Some(_) => deadline::lock_wait(deadline, Instant::now()),
            None => wait,
        };
        let outcome = match wait {
            Wait::For(left) => {
                let limit = left.saturating_add(dlock_core::REPLY_GRACE);
                tokio::time::timeout(limit, lock_on(conn, wait))
                    .await
                    .unwrap_or_else(|_| Err(Error::no_reply(limit)))
            }
            Wait::Forever | Wait::Never => lock_on(conn, wait).await,
        };
        if !retry.again(&outcome, doubt) {
            return outcome;
        }
    }
}

/// A checkout from a pool of the user's (`checkout`), within `deadline` when there is one.
/// Where a connection can be had without waiting for another lock (`at_hand`: one is idle,
/// or the pool may open one), the pool may still ping or open it first, so the checkout gets
/// at least a reply's grace: no time left still means "at least a try". `pool` names the
/// pool in the timeout's error.
#[cfg(any(feature = "deadpool", feature = "sqlx"))]
pub(crate) async fn checkout_within<C, E>(
    deadline: Option<Instant>,
    at_hand: bool,
    pool: &str,
    checkout: impl Future<Output = std::result::Result<C, E>>,
) -> Result<C>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let checked_out = match deadline {
        None => checkout.await,
        Some(deadline) => {
            let mut left = deadline::remaining(deadline, Instant::now());
            if at_hand {
                left = left.max(dlock_core::REPLY_GRACE);
            }
            tokio::time::timeout(left, checkout).await.map_err(|_| {
                Error::pool(format!(
                    "timed out waiting for a connection of the {pool} pool"
                ))
            })?
        }
    };
    checked_out.map_err(Error::pool)
}

/// Runs `work` under `guard`'s lock until it finishes or the lock is lost, then releases:
/// `work`'s error first, then the release's. A lost lock drops `work` at once, and its
/// release reports the loss without sending anything.
pub(crate) async fn run_locked<G: HeldGuard, T, E: From<Error>>(
    mut guard: G,
    work: impl AsyncFnOnce(&mut G) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let lost = guard.lost_signal();
    let done = {
        let mut work = std::pin::pin!(work(&mut guard));
        let mut lost = std::pin::pin!(lost);
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(done) = work.as_mut().poll(cx) {
                return std::task::Poll::Ready(Some(done));
            }
            lost.as_mut().poll(cx).map(|_| None)
        })
        .await
    };
    let released = guard.release_guard().await;
    match done {
        Some(done) => {
            let done = done?;
            released?;
            Ok(done)
        }
        None => Err(released
            .err()
            .unwrap_or_else(|| Error::backend("a lost lock's release succeeded"))
            .into()),
    }
}

/// Where an async pool's watcher gets its connection, and how it asks through it: a bb8
/// manager, or a pool of the user's.
pub(crate) trait WatchSource: Send + Sync + 'static {
    /// The watcher's connection.
    type Conn: Send + 'static;

    /// A new connection for the watcher, of its own.
    fn connect(&self) -> impl Future<Output = Result<Self::Conn>> + Send;

    /// Whether each of `locks` is still held, asked through `conn`.
    fn still_held(
        conn: &mut Self::Conn,
        policy: &KeyPolicy,
        locks: &[WatchedLock],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;
}

impl<M> WatchSource for M
where
    M: AsyncManager,
    M::Connection: AsyncConnection,
{
    type Conn = M::Connection;

    async fn connect(&self) -> Result<M::Connection> {
        bb8::ManageConnection::connect(self)
            .await
            .map_err(Error::pool)
    }

    async fn still_held(
        conn: &mut M::Connection,
        policy: &KeyPolicy,
        locks: &[WatchedLock],
    ) -> Result<Vec<bool>> {
        AsyncConnection::still_held(conn, policy, locks).await
    }
}

impl<S: WatchSource> PoolCore<S> {
    /// [`PoolCore::granted`] for the async pools: the watcher is a task on the current
    /// runtime. It stops when the pool and all its guards are gone; if that runtime shuts
    /// down first, the task is dropped with its `Running`, and the pool's next grant starts
    /// another on the runtime it runs on.
    pub(crate) fn granted_async(
        &self,
        held: Option<WatchedLock>,
        key: &Key,
        mark: CloseMark,
    ) -> (Arc<Signal>, Option<Watched<WatchedLock>>) {
        self.granted(held, key, mark, |running| {
            let watch = Arc::downgrade(&self.watch);
            let source = Arc::clone(&self.manager);
            let policy = self.policy.clone();
            tokio::spawn(async move {
                let _running = running;
                watch_from_task(watch, source, policy).await;
            });
        })
    }
}

/// The watcher of a pool, as a task: a round per interval, through a connection from
/// `source` that it opens again after a failure. Connecting and checking each get the
/// bound at most; a connection that does not answer by then is closed.
async fn watch_from_task<S: WatchSource>(
    watch: Weak<Watch<WatchedLock>>,
    source: Arc<S>,
    policy: KeyPolicy,
) {
    let mut rounds = Rounds::new(watch);
    let mut conn: Option<S::Conn> = None;
    while let Some((pause, patience)) = rounds.pause() {
        tokio::time::sleep(pause).await;
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
        let check = async {
            let conn = match conn.as_mut() {
                Some(conn) => conn,
                None => conn.insert(source.connect().await?),
            };
            S::still_held(conn, &policy, &round.held).await
        };
        let answer = tokio::time::timeout(patience, check)
            .await
            .unwrap_or_else(|_| Err(Error::no_reply(patience)));
        if answer.is_err() {
            // Its reply may still be on the way: a fresh connection for the next round.
            conn = None;
        }
        if !rounds.finish(round, answer) {
            return;
        }
    }
}

impl<M: AsyncManager> fmt::Debug for AsyncLockPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncLockPool")
            .field("state", &self.pool.state())
            .field("core", &self.core)
            .finish()
    }
}

/// A held lock and the pooled connection it holds it on, from [`AsyncLockPool`].
///
/// It derefs to the connection, for work inside the critical section. Its own functions are
/// associated functions (`AsyncLockGuard::release(guard).await`), so they never shadow the
/// connection's methods.
///
/// Release on drop is not immediate: drop cannot wait, so a guard dropped without
/// [`release`](AsyncLockGuard::release) marks its connection broken, and the pool closes it,
/// which ends the session and frees the lock in the server. `release().await` unlocks and
/// returns the connection for reuse.
///
/// The pool's watcher tells the guard when its lock is lost
/// ([`is_lost`](AsyncLockGuard::is_lost), [`lost`](AsyncLockGuard::lost)); a lost guard's
/// connection is closed, never reused.
#[must_use = "the lock is released when the guard is dropped"]
pub struct AsyncLockGuard<M>
where
    M: AsyncManager,
    M::Connection: AsyncConnection,
{
    held: Held<LockOf<M>, AsyncPooled<M>>,
}

impl<M> AsyncLockGuard<M>
where
    M: AsyncManager,
    M::Connection: AsyncConnection,
{
    /// Releases the lock, then returns the connection to the pool (or closes it when the
    /// release failed, which frees the lock in the server).
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] when the lock was lost while held (the watcher found it, or the
    /// server said so at release): the connection is closed, and nothing is sent when the
    /// loss was already known. A connection error when the session is gone.
    ///
    /// # Cancel Safety
    ///
    /// Dropping the future before it completes closes the connection, which frees the lock.
    pub async fn release(mut this: Self) -> Result<()> {
        let released = this
            .held
            .release(|mut conn: AsyncPooled<M>, settled| match settled {
                Settled::Clean(state) => conn.0.set_session_state(state),
                Settled::InDoubt => conn.mark_broken(),
            })
            .await;
        // bb8 wakes a task waiting for a connection but leaves the connection idle, so a
        // caller that loops straight back into `acquire` would take it first, every time:
        // measured, a few of 256 contending tasks then made nearly every acquisition. One
        // yield lets the woken task run first.
        tokio::task::yield_now().await;
        released
    }

    held_guard_functions!();
}

impl<M> Deref for AsyncLockGuard<M>
where
    M: AsyncManager,
    M::Connection: AsyncConnection,
{
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        self.held.lock().connection()
    }
}

impl<M> DerefMut for AsyncLockGuard<M>
where
    M: AsyncManager,
    M::Connection: AsyncConnection,
{
    fn deref_mut(&mut self) -> &mut M::Connection {
        self.held.lock_mut().connection_mut()
    }
}

impl<M> fmt::Debug for AsyncLockGuard<M>
where
    M: AsyncManager,
    M::Connection: AsyncConnection,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncLockGuard")
            .field("key", &self.held.key())
            .finish_non_exhaustive()
    }
}
