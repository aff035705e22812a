//! One URL, any backend: `AsyncAnyLockPool` (and `AnyLockPool`, blocking) picks PostgreSQL or
//! MySQL/MariaDB by the URL's scheme and hands out guards of one type, forwarding to the
//! backend's `AsyncLockPool` (`LockPool`).

use std::fmt;
use std::time::Duration;

use dlock_core::{Error, Key, KeyPolicy, LostReason, Result};
use dlock_postgres::tokio_postgres;

use crate::asynchronous::{HeldGuard, run_locked};
use crate::url_tls::{self, Tls};
use crate::{AsyncLockGuard, AsyncLockPool, AsyncMySqlManager, LockGuard, LockPool};

/// The PostgreSQL manager a URL builds: bb8-postgres, with TLS where the `native-tls` feature
/// gives it.
type PgManager = bb8_postgres::PostgresConnectionManager<url_tls::PgConnector>;

/// The schemes a URL may have, as the error for another one lists them.
const SCHEMES: &str = "postgres://, postgresql://, mysql:// or mariadb://";

/// Async locks over a pool of the database a URL names: PostgreSQL (`postgres://`,
/// `postgresql://`) or MySQL/MariaDB (`mysql://`, `mariadb://`), each through its default
/// driver (tokio-postgres, mysql_async) in a bb8 pool built by [`AsyncLockPool::new`]. Every
/// guard has one type, [`AsyncAnyLockGuard`], with the pooled API of either backend: waits and
/// timeouts, `with_lock`, the lost-lock watcher, fencing.
///
/// TLS, with feature `native-tls`, is what the URL asks for, in the parameters libpq and the
/// mysql client read: PostgreSQL's `sslmode` (`disable`, `allow`, `prefer` (the default),
/// `require`, `verify-ca`, `verify-full`) and `sslrootcert=<file>`; MySQL's `ssl-mode`
/// (`DISABLED`, `PREFERRED` (the default, which here means no TLS), `REQUIRED`, `VERIFY_CA`,
/// `VERIFY_IDENTITY`) and `ssl-ca=<file>`. As in libpq and the mysql client, `require` and
/// `REQUIRED` encrypt without checking the server's certificate unless a CA file is named.
/// Without the feature, a URL that requires TLS is an [`Error::InvalidUrl`] naming it.
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
#[derive(Clone)]
pub struct AsyncAnyLockPool(Pools);

/// A session holding a lock, as [`AsyncAnyLockPool::holders`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AnyHolder {
    /// The lock as the server names it: PostgreSQL's key (`pg_advisory_lock`'s argument, or
    /// its two as `(a, b)`), MySQL's lock name.
    pub lock: String,
    /// The session: PostgreSQL's backend pid, MySQL's connection id.
    pub session: u64,
    /// Whether it holds the lock shared (PostgreSQL only).
    pub shared: bool,
    /// Where the session connects from, as the server saw it.
    pub client: Option<String>,
    /// PostgreSQL: the session's `application_name` (`dlock:<host>:<pid>` for the `dlock`
    /// command). MySQL: the account it logged in as.
    pub application: Option<String>,
    /// PostgreSQL: when the session started.
    pub since: Option<String>,
    /// MySQL: how many seconds the session has spent in its current state.
    pub state_seconds: Option<u64>,
}

/// The backend's pool behind an [`AsyncAnyLockPool`].
#[derive(Clone)]
enum Pools {
    Postgres(AsyncLockPool<PgManager>),
    MySql(AsyncLockPool<AsyncMySqlManager>),
}

/// What a URL names: a PostgreSQL configuration, or a MySQL URL the drivers read; each with
/// the TLS the URL asks for.
enum Parsed {
    Postgres(Box<tokio_postgres::Config>, Tls),
    MySql(String, Tls),
}

/// An [`Error::InvalidUrl`] with `reason`.
fn invalid(reason: String) -> Error {
    Error::InvalidUrl { reason }
}

/// Reads the backend a URL names by its scheme.
fn parse(url: &str) -> Result<Parsed> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        invalid(format!(
            "it has no scheme; start it with {SCHEMES} (for example postgres://user@host/db)"
        ))
    })?;
    match scheme {
        "postgres" | "postgresql" => {
            let (url, tls) = url_tls::postgres(url)?;
            url.parse()
                .map(|config| Parsed::Postgres(Box::new(config), tls))
                .map_err(|error| {
                    invalid(format!(
                        "a PostgreSQL URL tokio-postgres cannot read: {error}"
                    ))
                })
        }
        // The drivers read mysql:// only; MariaDB speaks the same protocol.
        "mysql" | "mariadb" => {
            let (url, tls) = url_tls::mysql(&format!("mysql://{rest}"))?;
            Ok(Parsed::MySql(url, tls))
        }
        other => Err(invalid(format!(
            "the scheme {other}:// names no backend dlock takes; use {SCHEMES}"
        ))),
    }
}

/// Where a PostgreSQL configuration connects, as an error names it: `host:port`, or the
/// Unix socket's directory.
fn pg_address(config: &tokio_postgres::Config) -> String {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(dir) => format!("{}", dir.display()),
        })
        .collect();
    if hosts.is_empty() {
        format!("localhost:{port}")
    } else {
        hosts.join(", ")
    }
}

/// A first connection that failed: what `connect` says before it builds a pool, naming the
/// backend, the address and the driver's error as the cause.
#[derive(Debug)]
struct Unreachable {
    backend: &'static str,
    address: String,
    source: dlock_core::BoxError,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not connect to {} at {}",
            self.backend, self.address
        )
    }
}

impl std::error::Error for Unreachable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// The error of a first connection to `address` that failed with `source`.
fn unreachable(
    backend: &'static str,
    address: String,
    source: impl Into<dlock_core::BoxError>,
) -> Error {
    Error::pool(Unreachable {
        backend,
        address,
        source: source.into(),
    })
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
    /// A pool of the database `url` names, with bb8's defaults. One connection is opened
    /// first, so that a server nobody answers at, a refused login or a missing database is
    /// an error here, at once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for a scheme dlock does not take, a URL the backend's driver
    /// cannot read, or TLS this build cannot give (the reason says which); [`Error::Pool`] when the first connection
    /// fails, naming the backend and the address, with the driver's error (refused, DNS,
    /// login, TLS) as its cause.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: nothing is held until it returns.
    pub async fn connect(url: &str) -> Result<Self> {
        match parse(url)? {
            Parsed::Postgres(config, tls) => {
                let address = pg_address(&config);
                let connector = url_tls::pg_connector(&tls)?;
                #[allow(
                    clippy::clone_on_copy,
                    reason = "the connector is Copy only without the native-tls feature"
                )]
                let manager = PgManager::new(*config, connector.clone());
                // One connection first: an unreachable server, a refused login or a bad
                // database is an error now, naming the address, not a checkout's timeout.
                bb8::ManageConnection::connect(&manager)
                    .await
                    .map_err(|error| unreachable("PostgreSQL", address, error))?;
                // The cancel a dropped acquire sends goes through the URL's TLS too.
                let pool = AsyncLockPool::new(manager).await?.tls(connector);
                Ok(AsyncAnyLockPool(Pools::Postgres(pool)))
            }
            Parsed::MySql(url, tls) => {
                let opts = dlock_mysql::mysql_async::Opts::from_url(&url).map_err(|error| {
                    invalid(format!("a MySQL URL mysql_async cannot read: {error}"))
                })?;
                let manager = AsyncMySqlManager::new(url_tls::mysql_async_opts(opts, &tls)?);
                // The manager's error names the address.
                let first = bb8::ManageConnection::connect(&manager)
                    .await
                    .map_err(Error::pool)?;
                drop(first.disconnect().await);
                let pool = AsyncLockPool::new(manager).await?;
                Ok(AsyncAnyLockPool(Pools::MySql(pool)))
            }
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

    /// Makes every acquire take a shared lock (see [`AsyncLockPool::shared`]); on MySQL every
    /// acquire then fails with [`Error::Unsupported`]. A clone shares the connections:
    /// `pool.clone().shared()` for readers beside writers.
    pub fn shared(self) -> Self {
        forward!(self, pool => pool.shared())
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

    /// Who holds `key` under the pool's policy, from anywhere, with what the server says of
    /// each holding session. Asked on a connection of its own, opened for the question and
    /// closed after it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for a key the policy refuses; what the connection or the server
    /// reports.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: it only reads, on a connection nobody else uses.
    pub async fn holders(&self, key: impl Into<Key>) -> Result<Vec<AnyHolder>> {
        self.holders_of(Some(key.into())).await
    }

    /// Every session holding a lock of this database (PostgreSQL: any advisory lock) or
    /// server (MySQL: any named lock), by lock, as [`holders`](Self::holders) reports them.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] on a MySQL server that cannot list its named locks (MySQL
    /// without its performance schema, MariaDB without its `metadata_lock_info` plugin: the
    /// error says what to do); what the connection or the server reports.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe, as [`holders`](Self::holders).
    pub async fn every_holder(&self) -> Result<Vec<AnyHolder>> {
        self.holders_of(None).await
    }

    async fn holders_of(&self, key: Option<Key>) -> Result<Vec<AnyHolder>> {
        match &self.0 {
            Pools::Postgres(pool) => {
                let pg_key = key.map(|key| pool.key_policy().pg_key(&key)).transpose()?;
                let client = pool
                    .pool()
                    .dedicated_connection()
                    .await
                    .map_err(Error::pool)?;
                let sessions = dlock_postgres::tokio::holder_sessions(&client, pg_key).await?;
                Ok(sessions
                    .into_iter()
                    .map(|session| AnyHolder {
                        lock: session.key.to_string(),
                        session: u64::try_from(session.holder.pid).unwrap_or_default(),
                        shared: session.holder.mode == dlock_postgres::Mode::Shared,
                        client: session.client,
                        application: session.application,
                        since: session.since,
                        state_seconds: None,
                    })
                    .collect())
            }
            Pools::MySql(pool) => {
                let name = key
                    .map(|key| pool.key_policy().mysql_name(&key))
                    .transpose()?;
                let mut conn = pool
                    .pool()
                    .dedicated_connection()
                    .await
                    .map_err(Error::pool)?;
                let sessions =
                    dlock_mysql::tokio::holder_sessions(&mut conn, name.as_deref()).await;
                Ok(sessions?
                    .into_iter()
                    .map(|session| AnyHolder {
                        lock: session.name,
                        session: session.id,
                        shared: false,
                        client: session.host,
                        application: session.user,
                        since: None,
                        state_seconds: session.seconds,
                    })
                    .collect())
            }
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

    crate::asynchronous::bounded_with_lock!(AsyncAnyLockGuard);
}

impl HeldGuard for AsyncAnyLockGuard {
    fn lost_signal(&self) -> impl Future<Output = LostReason> + Send + 'static {
        AsyncAnyLockGuard::lost(self)
    }

    fn release_guard(self) -> impl Future<Output = Result<()>> {
        AsyncAnyLockGuard::release(self)
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

/// The blocking PostgreSQL manager a URL builds: r2d2-postgres, with TLS where the
/// `native-tls` feature gives it.
type BlockingPgManager = r2d2_postgres::PostgresConnectionManager<url_tls::PgConnector>;

/// Blocking locks over a pool of the database a URL names, as [`AsyncAnyLockPool`] for
/// async code: PostgreSQL (`postgres://`, `postgresql://`) or MySQL/MariaDB (`mysql://`,
/// `mariadb://`), each through its default blocking driver (postgres, mysql) in an r2d2 pool
/// built by [`LockPool::new`], with TLS as [`AsyncAnyLockPool`] reads it from the URL. Every
/// guard has one type, [`AnyLockGuard`].
///
/// It blocks its thread: from async code use [`AsyncAnyLockPool`], or this pool inside
/// `tokio::task::spawn_blocking`.
///
/// # Examples
///
/// ```no_run
/// # fn run() -> Result<(), dlock_pool::Error> {
/// use dlock_pool::{AnyLockGuard, AnyLockPool};
///
/// let url = std::env::var("DATABASE_URL").unwrap_or_default();
/// let pool = AnyLockPool::connect(&url)?;
/// if let Some(guard) = pool.try_acquire("nightly-report")? {
///     // Only one process anywhere gets here at a time.
///     AnyLockGuard::release(guard)?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AnyLockPool(BlockingPools);

/// The backend's pool behind an [`AnyLockPool`].
#[derive(Clone)]
enum BlockingPools {
    Postgres(LockPool<BlockingPgManager>),
    MySql(LockPool<r2d2_mysql::MySqlConnectionManager>),
}

/// Forwards a blocking pool method to the backend's pool, and wraps what it gives back.
macro_rules! forward_blocking {
    ($self:expr, $pool:ident => $call:expr) => {
        AnyLockPool(match $self.0 {
            BlockingPools::Postgres($pool) => BlockingPools::Postgres($call),
            BlockingPools::MySql($pool) => BlockingPools::MySql($call),
        })
    };
}

impl AnyLockPool {
    /// A pool of the database `url` names, with r2d2's defaults, after one connection was
    /// opened as [`AsyncAnyLockPool::connect`] opens one.
    ///
    /// # Errors
    ///
    /// As [`AsyncAnyLockPool::connect`]; on PostgreSQL, [`Error::Unsupported`] inside a
    /// tokio runtime's `block_on`, where the blocking client cannot run.
    pub fn connect(url: &str) -> Result<Self> {
        match parse(url)? {
            Parsed::Postgres(config, tls) => {
                let address = pg_address(&config);
                let config: dlock_postgres::postgres::Config = (*config).into();
                let manager = BlockingPgManager::new(config, url_tls::pg_connector(&tls)?);
                // One connection first, as the async form does: r2d2 would otherwise retry
                // until its connection timeout before it says anything. The blocking client
                // would panic inside a runtime's block_on: say so first.
                dlock_postgres::refuse_inside_runtime()?;
                r2d2::ManageConnection::connect(&manager)
                    .map_err(|error| unreachable("PostgreSQL", address, error))?;
                let pool = LockPool::new(manager)?;
                Ok(AnyLockPool(BlockingPools::Postgres(pool)))
            }
            Parsed::MySql(url, tls) => {
                let opts = dlock_mysql::mysql::Opts::from_url(&url)
                    .map_err(|error| invalid(format!("a MySQL URL mysql cannot read: {error}")))?;
                let address = format!("{}:{}", opts.get_ip_or_hostname(), opts.get_tcp_port());
                let manager = r2d2_mysql::MySqlConnectionManager::new(url_tls::mysql_opts(
                    dlock_mysql::mysql::OptsBuilder::from_opts(opts),
                    &tls,
                )?);
                r2d2::ManageConnection::connect(&manager)
                    .map_err(|error| unreachable("MySQL", address, error))?;
                Ok(AnyLockPool(BlockingPools::MySql(LockPool::new(manager)?)))
            }
        }
    }

    /// The backend the URL named: `"postgres"` or `"mysql"`.
    pub fn backend(&self) -> &'static str {
        match &self.0 {
            BlockingPools::Postgres(_) => "postgres",
            BlockingPools::MySql(_) => "mysql",
        }
    }

    /// Uses `policy` to turn keys into the backend's keys.
    pub fn policy(self, policy: KeyPolicy) -> Self {
        forward_blocking!(self, pool => pool.policy(policy))
    }

    /// Makes every acquire take a shared lock (see [`LockPool::shared`]); on MySQL every
    /// acquire then fails with [`Error::Unsupported`].
    pub fn shared(self) -> Self {
        forward_blocking!(self, pool => pool.shared())
    }

    /// Makes every acquire issue a fencing token, in the backend's default table.
    pub fn fenced(self) -> Self {
        forward_blocking!(self, pool => pool.fenced())
    }

    /// Makes every acquire issue a fencing token in table `table`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when `table` is not a plain table name.
    pub fn fenced_in(self, table: &str) -> Result<Self> {
        Ok(AnyLockPool(match self.0 {
            BlockingPools::Postgres(pool) => BlockingPools::Postgres(pool.fenced_in(table)?),
            BlockingPools::MySql(pool) => BlockingPools::MySql(pool.fenced_in(table)?),
        }))
    }

    /// Turns off the deployment check, at the risk of two holders at once.
    pub fn skip_deployment_check(self) -> Self {
        forward_blocking!(self, pool => pool.skip_deployment_check())
    }

    /// The watcher's interval.
    pub fn watch_interval(self, interval: Duration) -> Self {
        forward_blocking!(self, pool => pool.watch_interval(interval))
    }

    /// How long a lock the watcher cannot confirm stays counted as held.
    pub fn lost_after_unconfirmed(self, bound: Duration) -> Self {
        forward_blocking!(self, pool => pool.lost_after_unconfirmed(bound))
    }

    /// Turns the lost-lock watcher off.
    pub fn without_watcher(self) -> Self {
        forward_blocking!(self, pool => pool.without_watcher())
    }

    /// Creates the fence table this pool's locks use, if it does not exist.
    ///
    /// # Errors
    ///
    /// As [`LockPool::install_fencing`].
    pub fn install_fencing(&self) -> Result<()> {
        match &self.0 {
            BlockingPools::Postgres(pool) => pool.install_fencing(),
            BlockingPools::MySql(pool) => pool.install_fencing(),
        }
    }

    /// Checks out a connection and waits, in the server, until it holds `key`.
    ///
    /// # Errors
    ///
    /// As [`LockPool::acquire`].
    pub fn acquire(&self, key: impl Into<Key>) -> Result<AnyLockGuard> {
        Ok(AnyLockGuard(match &self.0 {
            BlockingPools::Postgres(pool) => BlockingGuards::Postgres(Box::new(pool.acquire(key)?)),
            BlockingPools::MySql(pool) => BlockingGuards::MySql(Box::new(pool.acquire(key)?)),
        }))
    }

    /// Takes `key` if it is free: `Ok(None)` when it is busy.
    ///
    /// # Errors
    ///
    /// As [`LockPool::try_acquire`].
    pub fn try_acquire(&self, key: impl Into<Key>) -> Result<Option<AnyLockGuard>> {
        Ok(match &self.0 {
            BlockingPools::Postgres(pool) => pool
                .try_acquire(key)?
                .map(|guard| AnyLockGuard(BlockingGuards::Postgres(Box::new(guard)))),
            BlockingPools::MySql(pool) => pool
                .try_acquire(key)?
                .map(|guard| AnyLockGuard(BlockingGuards::MySql(Box::new(guard)))),
        })
    }

    /// Checks out a connection and waits for `key`, both within `timeout`: `Ok(None)` when
    /// the lock stayed busy.
    ///
    /// # Errors
    ///
    /// As [`LockPool::acquire_timeout`].
    pub fn acquire_timeout(
        &self,
        key: impl Into<Key>,
        timeout: Duration,
    ) -> Result<Option<AnyLockGuard>> {
        Ok(match &self.0 {
            BlockingPools::Postgres(pool) => pool
                .acquire_timeout(key, timeout)?
                .map(|guard| AnyLockGuard(BlockingGuards::Postgres(Box::new(guard)))),
            BlockingPools::MySql(pool) => pool
                .acquire_timeout(key, timeout)?
                .map(|guard| AnyLockGuard(BlockingGuards::MySql(Box::new(guard)))),
        })
    }

    /// Acquires `key`, runs `work` with the guard, and releases, whatever `work` returned;
    /// as [`LockPool::with_lock`].
    ///
    /// # Errors
    ///
    /// `work`'s error; as [`LockPool::with_lock`].
    pub fn with_lock<T, E: From<Error>>(
        &self,
        key: impl Into<Key>,
        work: impl FnOnce(&mut AnyLockGuard) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut guard = self.acquire(key)?;
        let done = work(&mut guard);
        let released = AnyLockGuard::release(guard);
        let done = done?;
        released?;
        Ok(done)
    }
}

impl fmt::Debug for AnyLockPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            BlockingPools::Postgres(pool) => f.debug_tuple("Postgres").field(pool).finish(),
            BlockingPools::MySql(pool) => f.debug_tuple("MySql").field(pool).finish(),
        }
    }
}

/// A held lock from an [`AnyLockPool`], on either backend. Dropping it releases the lock
/// and returns the connection, as [`LockGuard`]'s drop does.
#[must_use = "the lock is released when the guard is dropped"]
pub struct AnyLockGuard(BlockingGuards);

/// The backend's guard behind an [`AnyLockGuard`], boxed as [`Guards`] is.
enum BlockingGuards {
    Postgres(Box<LockGuard<BlockingPgManager>>),
    MySql(Box<LockGuard<r2d2_mysql::MySqlConnectionManager>>),
}

/// The connection an [`AnyLockGuard`] holds its lock on.
pub enum AnyConnection<'a> {
    /// A postgres client.
    Postgres(&'a mut dlock_postgres::postgres::Client),
    /// A mysql connection.
    MySql(&'a mut dlock_mysql::mysql::Conn),
}

impl AnyLockGuard {
    /// Releases the lock, then returns the connection to the pool.
    ///
    /// # Errors
    ///
    /// As [`LockGuard::release`]: [`Error::LockLost`] when the lock was lost.
    pub fn release(this: Self) -> Result<()> {
        match this.0 {
            BlockingGuards::Postgres(guard) => LockGuard::release(*guard),
            BlockingGuards::MySql(guard) => LockGuard::release(*guard),
        }
    }

    /// Asks the server whether this guard's session still holds the lock.
    ///
    /// # Errors
    ///
    /// What the server or the connection reports.
    pub fn verify(this: &mut Self) -> Result<bool> {
        match &mut this.0 {
            BlockingGuards::Postgres(guard) => LockGuard::verify(guard),
            BlockingGuards::MySql(guard) => LockGuard::verify(guard),
        }
    }

    /// Whether the lock is known lost. No I/O.
    pub fn is_lost(this: &Self) -> bool {
        match &this.0 {
            BlockingGuards::Postgres(guard) => LockGuard::is_lost(guard),
            BlockingGuards::MySql(guard) => LockGuard::is_lost(guard),
        }
    }

    /// Waits up to `timeout` for the lock to be lost: whether it was.
    pub fn wait_lost(this: &Self, timeout: Duration) -> bool {
        match &this.0 {
            BlockingGuards::Postgres(guard) => LockGuard::wait_lost(guard, timeout),
            BlockingGuards::MySql(guard) => LockGuard::wait_lost(guard, timeout),
        }
    }

    /// The key of the held lock.
    pub fn key(this: &Self) -> &Key {
        match &this.0 {
            BlockingGuards::Postgres(guard) => LockGuard::key(guard),
            BlockingGuards::MySql(guard) => LockGuard::key(guard),
        }
    }

    /// The fencing token of the held lock, when the pool is fenced.
    pub fn fencing_token(this: &Self) -> Option<u64> {
        match &this.0 {
            BlockingGuards::Postgres(guard) => LockGuard::fencing_token(guard),
            BlockingGuards::MySql(guard) => LockGuard::fencing_token(guard),
        }
    }

    /// The connection the lock is held on, for work inside the critical section.
    pub fn connection(this: &mut Self) -> AnyConnection<'_> {
        match &mut this.0 {
            BlockingGuards::Postgres(guard) => AnyConnection::Postgres(guard),
            BlockingGuards::MySql(guard) => AnyConnection::MySql(guard),
        }
    }
}

impl fmt::Debug for AnyConnection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnyConnection::Postgres(_) => f.write_str("Postgres(..)"),
            AnyConnection::MySql(conn) => f.debug_tuple("MySql").field(conn).finish(),
        }
    }
}

impl fmt::Debug for AnyLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            BlockingGuards::Postgres(guard) => f.debug_tuple("Postgres").field(guard).finish(),
            BlockingGuards::MySql(guard) => f.debug_tuple("MySql").field(guard).finish(),
        }
    }
}
