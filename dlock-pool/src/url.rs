//! One URL, any backend: `AsyncAnyLockPool` picks PostgreSQL or MySQL/MariaDB by the URL's
//! scheme and hands out guards of one type, forwarding to the backend's `AsyncLockPool`.

use std::fmt;
use std::time::Duration;

use dlock_core::{Error, Key, KeyPolicy, LostReason, Result};
use dlock_postgres::tokio_postgres::{self, NoTls};

use crate::{AsyncLockGuard, AsyncLockPool, AsyncMySqlManager};

/// The PostgreSQL manager a URL builds: bb8-postgres, without TLS.
type PgManager = bb8_postgres::PostgresConnectionManager<NoTls>;

/// The schemes a URL may have, as the error for another one lists them.
const SCHEMES: &str = "postgres://, postgresql://, mysql:// or mariadb://";

/// Async locks over a pool of the database a URL names: PostgreSQL (`postgres://`,
/// `postgresql://`) or MySQL/MariaDB (`mysql://`, `mariadb://`), each through its default
/// driver (tokio-postgres without TLS, mysql_async) in a bb8 pool built by
/// [`AsyncLockPool::new`]. Every guard has one type, [`AsyncAnyLockGuard`], with the pooled
/// API of either backend: waits and timeouts, `with_lock`, the lost-lock watcher, fencing.
///
/// The way a service configured by `DATABASE_URL` takes a lock, as sqlalchemy-dlock's
/// `create_sadlock` picks its backend by the connection's dialect.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), dlock_pool::Error> {
/// use dlock_pool::{AsyncAnyLockGuard, AsyncAnyLockPool};
/// use std::time::Duration;
///
/// let url = std::env::var("DATABASE_URL").unwrap_or_default();
/// let pool = AsyncAnyLockPool::connect(&url).await?;
/// if let Some(guard) = pool.acquire_timeout("nightly-report", Duration::from_secs(5)).await? {
///     // Only one process anywhere gets here at a time.
///     AsyncAnyLockGuard::release(guard).await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct AsyncAnyLockPool(Pools);

/// The backend's pool behind an [`AsyncAnyLockPool`].
enum Pools {
    Postgres(AsyncLockPool<PgManager>),
    MySql(AsyncLockPool<AsyncMySqlManager>),
}

/// Forwards a pool method to the backend's pool, and wraps what it gives back.
macro_rules! forward {
    ($self:expr, $pool:ident => $call:expr) => {
        AsyncAnyLockPool(match $self.0 {
            Pools::Postgres($pool) => Pools::Postgres($call),
            Pools::MySql($pool) => Pools::MySql($call),
        })
    };
}

impl AsyncAnyLockPool {
    /// A pool of the database `url` names, with bb8's defaults, opened at once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a scheme dlock does not take, or a URL the backend's
    /// driver cannot read (the reason says which); [`Error::Pool`] when the pool cannot open
    /// its first connections.
    pub async fn connect(url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl { reason };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            invalid(format!(
                "it has no scheme; start it with {SCHEMES} (for example \
                 postgres://user@host/db)"
            ))
        })?;
        match scheme {
            "postgres" | "postgresql" => {
                let config: tokio_postgres::Config = url.parse().map_err(|error| {
                    invalid(format!(
                        "a PostgreSQL URL tokio-postgres cannot read: {error}"
                    ))
                })?;
                let pool = AsyncLockPool::new(PgManager::new(config, NoTls)).await?;
                Ok(AsyncAnyLockPool(Pools::Postgres(pool)))
            }
            "mysql" | "mariadb" => {
                // The driver reads mysql:// only; MariaDB speaks the same protocol.
                let manager =
                    AsyncMySqlManager::from_url(&format!("mysql://{rest}")).map_err(|error| {
                        invalid(format!(
                            "a MySQL URL mysql_async cannot read: {}",
                            std::error::Error::source(&error)
                                .map_or_else(|| error.to_string(), ToString::to_string)
                        ))
                    })?;
                let pool = AsyncLockPool::new(manager).await?;
                Ok(AsyncAnyLockPool(Pools::MySql(pool)))
            }
            other => Err(invalid(format!(
                "the scheme {other}:// names no backend dlock takes; use {SCHEMES}"
            ))),
        }
    }

    /// The backend the URL named: `"postgres"` or `"mysql"`.
    pub fn backend(&self) -> &'static str {
        match &self.0 {
            Pools::Postgres(_) => "postgres",
            Pools::MySql(_) => "mysql",
        }
    }

    /// Uses `policy` to turn keys into the backend's keys.
    pub fn policy(self, policy: KeyPolicy) -> Self {
        forward!(self, pool => pool.policy(policy))
    }

    /// Makes every acquire issue a fencing token, in the backend's default table (see
    /// [`AsyncLockPool::fenced`]).
    pub fn fenced(self) -> Self {
        forward!(self, pool => pool.fenced())
    }

    /// Makes every acquire issue a fencing token in table `table`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when `table` is not a plain table name.
    pub fn fenced_in(self, table: &str) -> Result<Self> {
        Ok(AsyncAnyLockPool(match self.0 {
            Pools::Postgres(pool) => Pools::Postgres(pool.fenced_in(table)?),
            Pools::MySql(pool) => Pools::MySql(pool.fenced_in(table)?),
        }))
    }

    /// Turns off the deployment check, at the risk of two holders at once (see
    /// [`AsyncLockPool::skip_deployment_check`]).
    pub fn skip_deployment_check(self) -> Self {
        forward!(self, pool => pool.skip_deployment_check())
    }

    /// The watcher's interval (see [`AsyncLockPool::watch_interval`]).
    pub fn watch_interval(self, interval: Duration) -> Self {
        forward!(self, pool => pool.watch_interval(interval))
    }

    /// How long a lock the watcher cannot confirm stays counted as held (see
    /// [`AsyncLockPool::lost_after_unconfirmed`]).
    pub fn lost_after_unconfirmed(self, bound: Duration) -> Self {
        forward!(self, pool => pool.lost_after_unconfirmed(bound))
    }

    /// Turns the lost-lock watcher off (see [`AsyncLockPool::without_watcher`]).
    pub fn without_watcher(self) -> Self {
        forward!(self, pool => pool.without_watcher())
    }

    /// Creates the fence table this pool's locks use, if it does not exist (see
    /// [`AsyncLockPool::install_fencing`]).
    ///
    /// # Errors
    ///
    /// As [`AsyncLockPool::install_fencing`].
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe, as [`AsyncLockPool::install_fencing`].
    pub async fn install_fencing(&self) -> Result<()> {
        match &self.0 {
            Pools::Postgres(pool) => pool.install_fencing().await,
            Pools::MySql(pool) => pool.install_fencing().await,
        }
    }

    /// Checks out a connection and waits, in the server, until it holds `key`.
    ///
    /// # Errors
    ///
    /// As [`AsyncLockPool::acquire`].
    ///
    /// # Cancel Safety
    ///
    /// As [`AsyncLockPool::acquire`]: a dropped wait closes its connection.
    pub async fn acquire(&self, key: impl Into<Key>) -> Result<AsyncAnyLockGuard> {
        Ok(match &self.0 {
            Pools::Postgres(pool) => {
                AsyncAnyLockGuard(Guards::Postgres(Box::new(pool.acquire(key).await?)))
            }
            Pools::MySql(pool) => {
                AsyncAnyLockGuard(Guards::MySql(Box::new(pool.acquire(key).await?)))
            }
        })
    }

    /// Takes `key` if it is free: `Ok(None)` when it is busy.
    ///
    /// # Errors
    ///
    /// As [`AsyncLockPool::try_acquire`].
    ///
    /// # Cancel Safety
    ///
    /// As [`AsyncLockPool::try_acquire`].
    pub async fn try_acquire(&self, key: impl Into<Key>) -> Result<Option<AsyncAnyLockGuard>> {
        Ok(match &self.0 {
            Pools::Postgres(pool) => pool
                .try_acquire(key)
                .await?
                .map(|guard| AsyncAnyLockGuard(Guards::Postgres(Box::new(guard)))),
            Pools::MySql(pool) => pool
                .try_acquire(key)
                .await?
                .map(|guard| AsyncAnyLockGuard(Guards::MySql(Box::new(guard)))),
        })
    }

    /// Checks out a connection and waits for `key`, both within `timeout`: `Ok(None)` when
    /// the lock stayed busy.
    ///
    /// # Errors
    ///
    /// As [`AsyncLockPool::acquire_timeout`].
    ///
    /// # Cancel Safety
    ///
    /// As [`AsyncLockPool::acquire_timeout`].
    pub async fn acquire_timeout(
        &self,
        key: impl Into<Key>,
        timeout: Duration,
    ) -> Result<Option<AsyncAnyLockGuard>> {
        Ok(match &self.0 {
            Pools::Postgres(pool) => pool
                .acquire_timeout(key, timeout)
                .await?
                .map(|guard| AsyncAnyLockGuard(Guards::Postgres(Box::new(guard)))),
            Pools::MySql(pool) => pool
                .acquire_timeout(key, timeout)
                .await?
                .map(|guard| AsyncAnyLockGuard(Guards::MySql(Box::new(guard)))),
        })
    }

    /// Acquires `key`, runs `work` with the guard, and releases, whatever `work` returned;
    /// as [`AsyncLockPool::with_lock`], whose lost-lock rule it keeps: if the lock is lost
    /// first, `work` is dropped and the result is [`Error::LockLost`].
    ///
    /// # Errors
    ///
    /// `work`'s error; as [`AsyncLockPool::with_lock`].
    ///
    /// # Cancel Safety
    ///
    /// As [`AsyncLockPool::with_lock`].
    pub async fn with_lock<T, E: From<Error>>(
        &self,
        key: impl Into<Key>,
        work: impl AsyncFnOnce(&mut AsyncAnyLockGuard) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let guard = self.acquire(key).await?;
        run_locked(guard, work).await
    }

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
        work: impl AsyncFnOnce(&mut AsyncAnyLockGuard) -> std::result::Result<T, E>,
    ) -> std::result::Result<Option<T>, E> {
        match self.try_acquire(key).await? {
            Some(guard) => run_locked(guard, work).await.map(Some),
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
        timeout: Duration,
        work: impl AsyncFnOnce(&mut AsyncAnyLockGuard) -> std::result::Result<T, E>,
    ) -> std::result::Result<Option<T>, E> {
        match self.acquire_timeout(key, timeout).await? {
            Some(guard) => run_locked(guard, work).await.map(Some),
            None => Ok(None),
        }
    }
}

/// Runs `work` under `guard`'s lock until it finishes or the lock is lost, then releases:
/// `work`'s error first, then the release's.
async fn run_locked<T, E: From<Error>>(
    mut guard: AsyncAnyLockGuard,
    work: impl AsyncFnOnce(&mut AsyncAnyLockGuard) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let lost = AsyncAnyLockGuard::lost(&guard);
    let done = {
        let mut work = std::pin::pin!(work(&mut guard));
        let mut lost = std::pin::pin!(lost);
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(done) = work.as_mut().poll(cx) {
                return std::task::Poll::Ready(Ok(done));
            }
            lost.as_mut().poll(cx).map(Err)
        })
        .await
    };
    match done {
        Ok(done) => {
            let released = AsyncAnyLockGuard::release(guard).await;
            let done = done?;
            released?;
            Ok(done)
        }
        // The work is dropped; the lost signal marked the connection to be closed, and the
        // release says the lock was lost without sending anything.
        Err(_) => Err(AsyncAnyLockGuard::release(guard)
            .await
            .err()
            .unwrap_or_else(|| Error::backend("a lost lock's release succeeded"))
            .into()),
    }
}

impl fmt::Debug for AsyncAnyLockPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Pools::Postgres(pool) => f.debug_tuple("Postgres").field(pool).finish(),
            Pools::MySql(pool) => f.debug_tuple("MySql").field(pool).finish(),
        }
    }
}

/// A held lock from an [`AsyncAnyLockPool`], on either backend. Its functions are
/// associated functions (`AsyncAnyLockGuard::release(guard).await`), as
/// [`AsyncLockGuard`]'s are; [`connection`](AsyncAnyLockGuard::connection) gives the
/// connection for work inside the critical section.
///
/// Release on drop is not immediate: a guard dropped without
/// [`release`](AsyncAnyLockGuard::release) closes its connection, which frees the lock.
#[must_use = "the lock is released when the guard is dropped"]
pub struct AsyncAnyLockGuard(Guards);

/// The backend's guard behind an [`AsyncAnyLockGuard`], boxed: the guards differ in size by
/// hundreds of bytes, and one allocation per grant is nothing beside its round trips.
enum Guards {
    Postgres(Box<AsyncLockGuard<PgManager>>),
    MySql(Box<AsyncLockGuard<AsyncMySqlManager>>),
}

/// The connection an [`AsyncAnyLockGuard`] holds its lock on.
#[derive(Debug)]
pub enum AsyncAnyConnection<'a> {
    /// A tokio-postgres client.
    Postgres(&'a mut tokio_postgres::Client),
    /// A mysql_async connection.
    MySql(&'a mut dlock_mysql::mysql_async::Conn),
}

impl AsyncAnyLockGuard {
    /// Releases the lock, then returns the connection to the pool (or closes it when the
    /// release failed).
    ///
    /// # Errors
    ///
    /// As [`AsyncLockGuard::release`]: [`Error::LockLost`] when the lock was lost.
    ///
    /// # Cancel Safety
    ///
    /// Dropping the future closes the connection, which frees the lock.
    pub async fn release(this: Self) -> Result<()> {
        match this.0 {
            Guards::Postgres(guard) => AsyncLockGuard::release(*guard).await,
            Guards::MySql(guard) => AsyncLockGuard::release(*guard).await,
        }
    }

    /// Asks the server whether this guard's session still holds the lock.
    ///
    /// # Errors
    ///
    /// What the server or the connection reports.
    ///
    /// # Cancel Safety
    ///
    /// As [`AsyncLockGuard::verify`].
    pub async fn verify(this: &mut Self) -> Result<bool> {
        match &mut this.0 {
            Guards::Postgres(guard) => AsyncLockGuard::verify(guard).await,
            Guards::MySql(guard) => AsyncLockGuard::verify(guard).await,
        }
    }

    /// Whether the lock is known lost. No I/O.
    pub fn is_lost(this: &Self) -> bool {
        match &this.0 {
            Guards::Postgres(guard) => AsyncLockGuard::is_lost(guard),
            Guards::MySql(guard) => AsyncLockGuard::is_lost(guard),
        }
    }

    /// Resolves, with the reason, once the lock is known lost (see [`AsyncLockGuard::lost`]).
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: it only waits.
    pub fn lost(this: &Self) -> impl Future<Output = LostReason> + Send + 'static {
        match &this.0 {
            Guards::Postgres(guard) => boxed(AsyncLockGuard::lost(guard)),
            Guards::MySql(guard) => boxed(AsyncLockGuard::lost(guard)),
        }
    }

    /// The key of the held lock.
    pub fn key(this: &Self) -> &Key {
        match &this.0 {
            Guards::Postgres(guard) => AsyncLockGuard::key(guard),
            Guards::MySql(guard) => AsyncLockGuard::key(guard),
        }
    }

    /// The fencing token of the held lock, when the pool is fenced.
    pub fn fencing_token(this: &Self) -> Option<u64> {
        match &this.0 {
            Guards::Postgres(guard) => AsyncLockGuard::fencing_token(guard),
            Guards::MySql(guard) => AsyncLockGuard::fencing_token(guard),
        }
    }

    /// The connection the lock is held on, for work inside the critical section.
    pub fn connection(this: &mut Self) -> AsyncAnyConnection<'_> {
        match &mut this.0 {
            Guards::Postgres(guard) => AsyncAnyConnection::Postgres(guard),
            Guards::MySql(guard) => AsyncAnyConnection::MySql(guard),
        }
    }
}

/// A lost-lock future of either backend, as one boxed type.
fn boxed(
    lost: impl Future<Output = LostReason> + Send + 'static,
) -> std::pin::Pin<Box<dyn Future<Output = LostReason> + Send>> {
    Box::pin(lost)
}

impl fmt::Debug for AsyncAnyLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Guards::Postgres(guard) => f.debug_tuple("Postgres").field(guard).finish(),
            Guards::MySql(guard) => f.debug_tuple("MySql").field(guard).finish(),
        }
    }
}
