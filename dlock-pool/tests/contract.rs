//! The lock contract of DESIGN.md, written once in dlock-testkit, for the pools' guards:
//! `LockPool` (r2d2) and `AsyncLockPool` (bb8), on both backends. A pooled lock object here is
//! a pool and a key, holding the guard of its acquire; every guard has a connection, and so a
//! session, of its own.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use dlock_pool::{
    AsyncConnection, AsyncLock, AsyncLockGuard, AsyncLockPool, AsyncManager, AsyncMySqlManager,
    BlockingConnection, Error, Key, Lock, LockGuard, LockPool, Result,
};
use dlock_testkit as common;
use dlock_testkit::contract::{AsyncFlavour, Flavour, Server};

/// Which server a pool's connections go to.
trait Backend {
    const SERVER: Server;
}

struct Pg;

impl Backend for Pg {
    const SERVER: Server = Server::Postgres;
}

struct My;

impl Backend for My {
    const SERVER: Server = Server::MySql;
}

/// A blocking lock object over a pool: the guard of its acquire, if it holds.
struct PoolLock<M>
where
    M: dlock_pool::BlockingManager,
    M::Connection: BlockingConnection,
{
    pool: Arc<LockPool<M>>,
    key: Key,
    guard: Option<LockGuard<M>>,
}

impl<M> PoolLock<M>
where
    M: dlock_pool::BlockingManager,
    M::Connection: BlockingConnection,
{
    fn unheld(&self) -> Result<()> {
        match self.guard {
            Some(_) => Err(Error::AlreadyAcquired),
            None => Ok(()),
        }
    }
}

impl<M> Lock for PoolLock<M>
where
    M: dlock_pool::BlockingManager,
    M::Connection: BlockingConnection,
{
    fn key(&self) -> &Key {
        &self.key
    }

    fn acquire(&mut self) -> Result<()> {
        self.unheld()?;
        self.guard = Some(self.pool.acquire(self.key.clone())?);
        Ok(())
    }

    fn try_acquire(&mut self) -> Result<bool> {
        self.unheld()?;
        self.guard = self.pool.try_acquire(self.key.clone())?;
        Ok(self.guard.is_some())
    }

    fn acquire_timeout(&mut self, timeout: Duration) -> Result<bool> {
        self.unheld()?;
        self.guard = self.pool.acquire_timeout(self.key.clone(), timeout)?;
        Ok(self.guard.is_some())
    }

    fn release(&mut self) -> Result<()> {
        LockGuard::release(self.guard.take().ok_or(Error::NotAcquired)?)
    }

    fn is_acquired(&self) -> bool {
        self.guard.is_some()
    }

    fn verify(&mut self) -> Result<bool> {
        self.guard.as_mut().map_or(Ok(false), LockGuard::verify)
    }
}

/// An async lock object over a pool: the guard of its acquire, if it holds.
struct AsyncPoolLock<M>
where
    M: AsyncManager,
    M::Connection: AsyncConnection,
{
    pool: Arc<AsyncLockPool<M>>,
    key: Key,
    guard: Option<AsyncLockGuard<M>>,
}

impl<M> AsyncPoolLock<M>
where
    M: AsyncManager,
    M::Connection: AsyncConnection,
{
    fn unheld(&self) -> Result<()> {
        match self.guard {
            Some(_) => Err(Error::AlreadyAcquired),
            None => Ok(()),
        }
    }
}

impl<M> AsyncLock for AsyncPoolLock<M>
where
    M: AsyncManager,
    M::Connection: AsyncConnection,
{
    fn key(&self) -> &Key {
        &self.key
    }

    async fn acquire(&mut self) -> Result<()> {
        self.unheld()?;
        self.guard = Some(self.pool.acquire(self.key.clone()).await?);
        Ok(())
    }

    async fn try_acquire(&mut self) -> Result<bool> {
        self.unheld()?;
        self.guard = self.pool.try_acquire(self.key.clone()).await?;
        Ok(self.guard.is_some())
    }

    async fn acquire_timeout(&mut self, timeout: Duration) -> Result<bool> {
        self.unheld()?;
        self.guard = self.pool.acquire_timeout(self.key.clone(), timeout).await?;
        Ok(self.guard.is_some())
    }

    async fn release(&mut self) -> Result<()> {
        AsyncLockGuard::release(self.guard.take().ok_or(Error::NotAcquired)?).await
    }

    fn is_acquired(&self) -> bool {
        self.guard.is_some()
    }

    async fn verify(&mut self) -> Result<bool> {
        match self.guard.as_mut() {
            Some(guard) => AsyncLockGuard::verify(guard).await,
            None => Ok(false),
        }
    }
}

/// The flavour of one r2d2 pool, shared by a clause's lock objects.
struct R2d2<M: dlock_pool::BlockingManager, B>(Arc<LockPool<M>>, PhantomData<B>);

impl<M, B: Backend> Flavour for R2d2<M, B>
where
    M: dlock_pool::BlockingManager,
    M::Connection: BlockingConnection,
    PoolLock<M>: Send + 'static,
{
    type Lock = PoolLock<M>;
    const SERVER: Server = B::SERVER;

    fn lock(&mut self, key: &str) -> Self::Lock {
        PoolLock {
            pool: Arc::clone(&self.0),
            key: key.into(),
            guard: None,
        }
    }

    fn reentrant(&mut self, _: &mut Self::Lock, _: &str) -> bool {
        false
    }
}

fn r2d2_pool<M, B>(manager: M) -> R2d2<M, B>
where
    M: dlock_pool::BlockingManager,
    M::Connection: BlockingConnection,
{
    let builder = r2d2::Pool::builder()
        .max_size(4)
        .connection_timeout(Duration::from_secs(5));
    R2d2(
        Arc::new(LockPool::with_builder(builder, manager).unwrap()),
        PhantomData,
    )
}

fn r2d2_postgres() -> R2d2<r2d2_postgres::PostgresConnectionManager<common::postgres::Tls>, Pg> {
    r2d2_pool(r2d2_postgres::PostgresConnectionManager::new(
        common::pg_url().parse().unwrap(),
        common::postgres::tls(),
    ))
}

fn r2d2_mysql() -> R2d2<r2d2_mysql::MySqlConnectionManager, My> {
    r2d2_pool(r2d2_mysql::MySqlConnectionManager::new(
        mysql::OptsBuilder::from_opts(common::mysql::opts()),
    ))
}

dlock_testkit::blocking_contract!(lock_pool_postgres, r2d2_postgres());
dlock_testkit::blocking_contract!(lock_pool_mysql, r2d2_mysql());

/// The flavour of one bb8 pool, opened by the clause's first lock object and shared by the
/// rest.
struct Bb8<M: AsyncManager, B> {
    manager: Option<M>,
    pool: Option<Arc<AsyncLockPool<M>>>,
    backend: PhantomData<B>,
}

impl<M, B> Bb8<M, B>
where
    M: AsyncManager,
    M::Connection: AsyncConnection,
{
    fn new(manager: M) -> Self {
        Bb8 {
            manager: Some(manager),
            pool: None,
            backend: PhantomData,
        }
    }
}

impl<M, B: Backend> AsyncFlavour for Bb8<M, B>
where
    M: AsyncManager,
    M::Connection: AsyncConnection,
{
    type Lock = AsyncPoolLock<M>;
    const SERVER: Server = B::SERVER;

    async fn lock(&mut self, key: &str) -> Self::Lock {
        if let Some(manager) = self.manager.take() {
            let builder = bb8::Pool::builder()
                .max_size(4)
                .connection_timeout(Duration::from_secs(5));
            let pool = AsyncLockPool::with_builder(builder, manager).await.unwrap();
            self.pool = Some(Arc::new(pool));
        }
        AsyncPoolLock {
            pool: Arc::clone(self.pool.as_ref().unwrap()),
            key: key.into(),
            guard: None,
        }
    }

    async fn reentrant(&mut self, _: &mut Self::Lock, _: &str) -> bool {
        false
    }
}

fn bb8_postgres() -> Bb8<bb8_postgres::PostgresConnectionManager<common::postgres::Tls>, Pg> {
    Bb8::new(bb8_postgres::PostgresConnectionManager::new(
        common::pg_url().parse().unwrap(),
        common::postgres::tls(),
    ))
}

fn bb8_mysql() -> Bb8<AsyncMySqlManager, My> {
    Bb8::new(AsyncMySqlManager::new(common::mysql::opts_async()))
}

dlock_testkit::async_contract!(async_lock_pool_postgres, bb8_postgres());
dlock_testkit::async_contract!(async_lock_pool_mysql, bb8_mysql());

/// A lock object over an async pool whose guards have the pooled shape (`acquire`,
/// `try_acquire`, `acquire_timeout` on the pool; `release` and `verify` on the guard type):
/// the guard of its acquire, if it holds.
#[cfg(any(feature = "url", feature = "deadpool", feature = "sqlx"))]
macro_rules! async_pool_lock {
    ($name:ident, $pool:ty, $guard:ident) => {
        pub(super) struct $name {
            pool: Arc<$pool>,
            key: Key,
            guard: Option<$guard>,
        }

        impl $name {
            fn unheld(&self) -> Result<()> {
                match self.guard {
                    Some(_) => Err(Error::AlreadyAcquired),
                    None => Ok(()),
                }
            }
        }

        impl AsyncLock for $name {
            fn key(&self) -> &Key {
                &self.key
            }

            async fn acquire(&mut self) -> Result<()> {
                self.unheld()?;
                self.guard = Some(self.pool.acquire(self.key.clone()).await?);
                Ok(())
            }

            async fn try_acquire(&mut self) -> Result<bool> {
                self.unheld()?;
                self.guard = self.pool.try_acquire(self.key.clone()).await?;
                Ok(self.guard.is_some())
            }

            async fn acquire_timeout(&mut self, timeout: Duration) -> Result<bool> {
                self.unheld()?;
                self.guard = self.pool.acquire_timeout(self.key.clone(), timeout).await?;
                Ok(self.guard.is_some())
            }

            async fn release(&mut self) -> Result<()> {
                $guard::release(self.guard.take().ok_or(Error::NotAcquired)?).await
            }

            fn is_acquired(&self) -> bool {
                self.guard.is_some()
            }

            async fn verify(&mut self) -> Result<bool> {
                match self.guard.as_mut() {
                    Some(guard) => $guard::verify(guard).await,
                    None => Ok(false),
                }
            }
        }
    };
}

/// The URL entry point: a lock object over an `AsyncAnyLockPool`, the guard of its acquire.
#[cfg(feature = "url")]
mod url {
    use super::*;
    use dlock_pool::{AsyncAnyLockGuard, AsyncAnyLockPool};

    async_pool_lock!(UrlLock, AsyncAnyLockPool, AsyncAnyLockGuard);

    /// The flavour of one URL pool, opened by the clause's first lock object.
    pub(super) struct Url<B> {
        url: String,
        pool: Option<Arc<AsyncAnyLockPool>>,
        backend: PhantomData<B>,
    }

    impl<B> Url<B> {
        pub(super) fn new(url: String) -> Self {
            Url {
                url,
                pool: None,
                backend: PhantomData,
            }
        }
    }

    impl<B: Backend> AsyncFlavour for Url<B> {
        type Lock = UrlLock;
        const SERVER: Server = B::SERVER;

        async fn lock(&mut self, key: &str) -> Self::Lock {
            if self.pool.is_none() {
                let pool = AsyncAnyLockPool::connect(&self.url).await.unwrap();
                self.pool = Some(Arc::new(pool));
            }
            UrlLock {
                pool: Arc::clone(self.pool.as_ref().unwrap()),
                key: key.into(),
                guard: None,
            }
        }

        async fn reentrant(&mut self, _: &mut Self::Lock, _: &str) -> bool {
            false
        }
    }
}

/// The URL entry point's blocking form: a lock object over an `AnyLockPool`.
#[cfg(feature = "url")]
mod blocking_url {
    use super::*;
    use dlock_pool::{AnyLockGuard, AnyLockPool};

    pub(super) struct UrlLock {
        pool: Arc<AnyLockPool>,
        key: Key,
        guard: Option<AnyLockGuard>,
    }

    impl UrlLock {
        fn unheld(&self) -> Result<()> {
            match self.guard {
                Some(_) => Err(Error::AlreadyAcquired),
                None => Ok(()),
            }
        }
    }

    impl Lock for UrlLock {
        fn key(&self) -> &Key {
            &self.key
        }

        fn acquire(&mut self) -> Result<()> {
            self.unheld()?;
            self.guard = Some(self.pool.acquire(self.key.clone())?);
            Ok(())
        }

        fn try_acquire(&mut self) -> Result<bool> {
            self.unheld()?;
            self.guard = self.pool.try_acquire(self.key.clone())?;
            Ok(self.guard.is_some())
        }

        fn acquire_timeout(&mut self, timeout: Duration) -> Result<bool> {
            self.unheld()?;
            self.guard = self.pool.acquire_timeout(self.key.clone(), timeout)?;
            Ok(self.guard.is_some())
        }

        fn release(&mut self) -> Result<()> {
            AnyLockGuard::release(self.guard.take().ok_or(Error::NotAcquired)?)
        }

        fn is_acquired(&self) -> bool {
            self.guard.is_some()
        }

        fn verify(&mut self) -> Result<bool> {
            match self.guard.as_mut() {
                Some(guard) => AnyLockGuard::verify(guard),
                None => Ok(false),
            }
        }
    }

    /// The flavour of one blocking URL pool, shared by a clause's lock objects.
    pub(super) struct Url<B>(Arc<AnyLockPool>, PhantomData<B>);

    impl<B> Url<B> {
        pub(super) fn new(url: &str) -> Self {
            Url(Arc::new(AnyLockPool::connect(url).unwrap()), PhantomData)
        }
    }

    impl<B: Backend> Flavour for Url<B> {
        type Lock = UrlLock;
        const SERVER: Server = B::SERVER;

        fn lock(&mut self, key: &str) -> Self::Lock {
            UrlLock {
                pool: Arc::clone(&self.0),
                key: key.into(),
                guard: None,
            }
        }

        fn reentrant(&mut self, _: &mut Self::Lock, _: &str) -> bool {
            false
        }
    }
}

#[cfg(feature = "url")]
fn blocking_url_postgres() -> blocking_url::Url<Pg> {
    blocking_url::Url::new(&common::postgres::url_with_its_tls())
}

#[cfg(feature = "url")]
fn blocking_url_mysql() -> blocking_url::Url<My> {
    blocking_url::Url::new(&common::mysql::url_with_its_tls())
}

#[cfg(feature = "url")]
dlock_testkit::blocking_contract!(any_lock_pool_postgres, blocking_url_postgres());
#[cfg(feature = "url")]
dlock_testkit::blocking_contract!(any_lock_pool_mysql, blocking_url_mysql());

#[cfg(feature = "url")]
fn url_postgres() -> url::Url<Pg> {
    url::Url::new(common::postgres::url_with_its_tls())
}

#[cfg(feature = "url")]
fn url_mysql() -> url::Url<My> {
    url::Url::new(common::mysql::url_with_its_tls().replacen("mysql://", "mariadb://", 1))
}

#[cfg(feature = "url")]
dlock_testkit::async_contract!(async_any_lock_pool_postgres, url_postgres());
#[cfg(feature = "url")]
dlock_testkit::async_contract!(async_any_lock_pool_mysql, url_mysql());

/// Your deadpool-postgres pool: a lock object over a `DeadpoolLockPool`, the guard of its
/// acquire.
#[cfg(feature = "deadpool")]
mod deadpool {
    use super::*;
    use dlock_pool::deadpool_postgres::{Config, Runtime};
    use dlock_pool::{DeadpoolLockGuard, DeadpoolLockPool};

    async_pool_lock!(DeadpoolLock, DeadpoolLockPool, DeadpoolLockGuard);

    /// The flavour of one deadpool pool, made by the clause's first lock object.
    pub(super) struct Deadpool {
        pool: Option<Arc<DeadpoolLockPool>>,
    }

    pub(super) fn deadpool() -> Deadpool {
        Deadpool { pool: None }
    }

    impl AsyncFlavour for Deadpool {
        type Lock = DeadpoolLock;
        const SERVER: Server = Server::Postgres;

        async fn lock(&mut self, key: &str) -> Self::Lock {
            if self.pool.is_none() {
                let mut config = Config::new();
                config.url = Some(common::pg_url());
                let pool = config
                    .create_pool(Some(Runtime::Tokio1), common::postgres::tls())
                    .unwrap();
                self.pool = Some(Arc::new(DeadpoolLockPool::new(pool)));
            }
            DeadpoolLock {
                pool: Arc::clone(self.pool.as_ref().unwrap()),
                key: key.into(),
                guard: None,
            }
        }

        async fn reentrant(&mut self, _: &mut Self::Lock, _: &str) -> bool {
            false
        }
    }
}

#[cfg(feature = "deadpool")]
dlock_testkit::async_contract!(deadpool_lock_pool, deadpool::deadpool());

#[cfg(feature = "sqlx")]
#[path = "support/sqlx_options.rs"]
mod sqlx_options;

/// Your sqlx pool: a lock object over a `SqlxLockPool`, the guard of its acquire, if it
/// holds; on both backends.
#[cfg(feature = "sqlx")]
mod over_sqlx {
    use super::*;
    use dlock_pool::{SqlxBackend, SqlxLockGuard, SqlxLockPool};
    use sqlx_options as options;

    async_pool_lock!(SqlxPgLock, SqlxLockPool<sqlx::Postgres>, SqlxPgGuard);
    async_pool_lock!(SqlxMyLock, SqlxLockPool<sqlx::MySql>, SqlxMyGuard);
    type SqlxPgGuard = SqlxLockGuard<sqlx::Postgres>;
    type SqlxMyGuard = SqlxLockGuard<sqlx::MySql>;

    /// The flavour of one sqlx pool, made by the clause's first lock object.
    pub(super) struct Sqlx<DB: SqlxBackend> {
        pool: Option<Arc<SqlxLockPool<DB>>>,
    }

    pub(super) fn sqlx<DB: SqlxBackend>() -> Sqlx<DB> {
        Sqlx { pool: None }
    }

    impl AsyncFlavour for Sqlx<sqlx::Postgres> {
        type Lock = SqlxPgLock;
        const SERVER: Server = Server::Postgres;

        async fn lock(&mut self, key: &str) -> Self::Lock {
            if self.pool.is_none() {
                let pool = sqlx::PgPool::connect_lazy_with(options::postgres());
                self.pool = Some(Arc::new(SqlxLockPool::new(pool)));
            }
            SqlxPgLock {
                pool: Arc::clone(self.pool.as_ref().unwrap()),
                key: key.into(),
                guard: None,
            }
        }

        async fn reentrant(&mut self, _: &mut Self::Lock, _: &str) -> bool {
            false
        }
    }

    impl AsyncFlavour for Sqlx<sqlx::MySql> {
        type Lock = SqlxMyLock;
        const SERVER: Server = Server::MySql;

        async fn lock(&mut self, key: &str) -> Self::Lock {
            if self.pool.is_none() {
                let pool = sqlx::MySqlPool::connect_lazy_with(options::mysql());
                self.pool = Some(Arc::new(SqlxLockPool::new(pool)));
            }
            SqlxMyLock {
                pool: Arc::clone(self.pool.as_ref().unwrap()),
                key: key.into(),
                guard: None,
            }
        }

        async fn reentrant(&mut self, _: &mut Self::Lock, _: &str) -> bool {
            false
        }
    }
}

#[cfg(feature = "sqlx")]
dlock_testkit::async_contract!(sqlx_lock_pool_postgres, over_sqlx::sqlx::<sqlx::Postgres>());
#[cfg(feature = "sqlx")]
dlock_testkit::async_contract!(sqlx_lock_pool_mysql, over_sqlx::sqlx::<sqlx::MySql>());
