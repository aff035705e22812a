//! Fenced pools: every guard carries a token, strictly increasing per key across pools,
//! flavours and backends' own locks.

use dlock_pool::dlock_mysql::{MySqlLock, install_fencing as my_install};
use dlock_pool::dlock_postgres::{PgLock, install_fencing as pg_install};
use dlock_pool::{AsyncLockGuard, AsyncLockPool, AsyncMySqlManager, Lock, LockGuard, LockPool};
use dlock_testkit::{mysql, postgres};

type R2d2Pg = r2d2_postgres::PostgresConnectionManager<::postgres::NoTls>;
type Bb8Pg = bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_tokens_increase_with_the_bare_locks_on_postgres() {
    let key = "fencing/pool/pg";
    let bare_token = tokio::task::spawn_blocking(move || {
        pg_install(&mut postgres::connect()).unwrap();
        let mut bare = PgLock::new(postgres::connect(), key).fenced();
        bare.acquire().unwrap();
        bare.fencing_token().unwrap()
    })
    .await
    .unwrap();
    let manager = Bb8Pg::new(postgres::pg_url().parse().unwrap(), tokio_postgres::NoTls);
    let pool = AsyncLockPool::new(manager).await.unwrap().fenced();
    let guard = pool.acquire(key).await.unwrap();
    let async_token = AsyncLockGuard::fencing_token(&guard).unwrap();
    assert!(async_token > bare_token, "{async_token} after {bare_token}");
    AsyncLockGuard::release(guard).await.unwrap();
    let r2d2_token = tokio::task::spawn_blocking(move || {
        let manager = R2d2Pg::new(postgres::pg_url().parse().unwrap(), ::postgres::NoTls);
        let pool = LockPool::new(manager).unwrap().fenced();
        let guard = pool.acquire(key).unwrap();
        let token = LockGuard::fencing_token(&guard).unwrap();
        LockGuard::release(guard).unwrap();
        // An unfenced pool's guard has none.
        let manager = R2d2Pg::new(postgres::pg_url().parse().unwrap(), ::postgres::NoTls);
        let plain = LockPool::new(manager).unwrap();
        let guard = plain.acquire(key).unwrap();
        assert_eq!(LockGuard::fencing_token(&guard), None);
        token
    })
    .await
    .unwrap();
    assert!(r2d2_token > async_token, "{r2d2_token} after {async_token}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_tokens_increase_with_the_bare_locks_on_mysql() {
    let key = "fencing/pool/my";
    let bare_token = tokio::task::spawn_blocking(move || {
        my_install(&mut mysql::connect()).unwrap();
        let mut bare = MySqlLock::new(mysql::connect(), key).fenced();
        bare.acquire().unwrap();
        bare.fencing_token().unwrap()
    })
    .await
    .unwrap();
    let manager = AsyncMySqlManager::from_url(&mysql::mysql_url()).unwrap();
    let pool = AsyncLockPool::new(manager).await.unwrap().fenced();
    let guard = pool.acquire(key).await.unwrap();
    let async_token = AsyncLockGuard::fencing_token(&guard).unwrap();
    assert!(async_token > bare_token, "{async_token} after {bare_token}");
    AsyncLockGuard::release(guard).await.unwrap();
    let r2d2_token = tokio::task::spawn_blocking(move || {
        let opts = ::mysql::Opts::from_url(&mysql::mysql_url()).unwrap();
        let manager =
            r2d2_mysql::MySqlConnectionManager::new(::mysql::OptsBuilder::from_opts(opts));
        let pool = LockPool::new(manager).unwrap().fenced();
        let guard = pool.acquire(key).unwrap();
        let token = LockGuard::fencing_token(&guard).unwrap();
        LockGuard::release(guard).unwrap();
        token
    })
    .await
    .unwrap();
    assert!(r2d2_token > async_token, "{r2d2_token} after {async_token}");
}

#[test]
fn a_pool_refuses_a_fence_table_that_is_no_plain_name() {
    let manager = R2d2Pg::new(postgres::pg_url().parse().unwrap(), ::postgres::NoTls);
    let error = LockPool::new(manager)
        .unwrap()
        .fenced_in("fence; DROP TABLE x")
        .unwrap_err();
    assert!(error.to_string().contains("plain table name"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_pool_without_its_table_fails_clearly_and_holds_nothing() {
    let key = "fencing/pool/missing";
    let manager = Bb8Pg::new(postgres::pg_url().parse().unwrap(), tokio_postgres::NoTls);
    let pool = AsyncLockPool::new(manager)
        .await
        .unwrap()
        .fenced_in("dlock_fence_not_installed")
        .unwrap();
    let error = pool.acquire(key).await.unwrap_err();
    assert!(
        matches!(error, dlock_pool::Error::FencingNotInstalled { .. }),
        "{error:?}"
    );
    let manager = AsyncMySqlManager::from_url(&mysql::mysql_url()).unwrap();
    let pool = AsyncLockPool::new(manager)
        .await
        .unwrap()
        .fenced_in("dlock_fence_not_installed")
        .unwrap();
    let error = pool.acquire(key).await.unwrap_err();
    assert!(
        matches!(error, dlock_pool::Error::FencingNotInstalled { .. }),
        "{error:?}"
    );
    let free = tokio::task::spawn_blocking(move || {
        let pg_free = postgres::holder_pids(
            &mut postgres::connect(),
            dlock_pool::KeyPolicy::default()
                .pg_key(&key.into())
                .unwrap(),
        )
        .is_empty();
        pg_free && mysql::holder_of(key).is_none()
    })
    .await
    .unwrap();
    assert!(free, "nothing is held after the refusals");
}

/// `with_lock` hands the work its guard in both pools: the work reaches the connection
/// through it, and reads the fencing token to pass on to the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_gives_the_work_its_guard_and_token_in_both_pools() {
    let key = "fencing/pool/with-lock";
    let manager = Bb8Pg::new(postgres::pg_url().parse().unwrap(), tokio_postgres::NoTls);
    let pool = AsyncLockPool::new(manager).await.unwrap().fenced();
    // On fresh servers no other test may have installed the table yet.
    pool.install_fencing().await.unwrap();
    let (async_token, one) = pool
        .with_lock(key, async |guard| {
            let row = guard.query_one("SELECT 1", &[]).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
                AsyncLockGuard::fencing_token(guard),
                row.get::<_, i32>(0),
            ))
        })
        .await
        .unwrap();
    assert_eq!(one, 1);
    let async_token = async_token.expect("a fenced pool's guard has a token");
    let blocking_token = tokio::task::spawn_blocking(move || {
        let manager = R2d2Pg::new(postgres::pg_url().parse().unwrap(), ::postgres::NoTls);
        let pool = LockPool::new(manager).unwrap().fenced();
        pool.with_lock(key, |guard| {
            guard.query_one("SELECT 1", &[])?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(LockGuard::fencing_token(guard))
        })
        .unwrap()
    })
    .await
    .unwrap();
    assert!(blocking_token.unwrap() > async_token);

    let manager = AsyncMySqlManager::from_url(&mysql::mysql_url()).unwrap();
    let pool = AsyncLockPool::new(manager).await.unwrap().fenced();
    pool.install_fencing().await.unwrap();
    let first = pool
        .with_lock(key, async |guard| {
            Ok::<_, dlock_pool::Error>(AsyncLockGuard::fencing_token(guard))
        })
        .await
        .unwrap()
        .expect("a fenced pool's guard has a token");
    let second = pool
        .try_with_lock(key, async |guard| {
            Ok::<_, dlock_pool::Error>(AsyncLockGuard::fencing_token(guard))
        })
        .await
        .unwrap()
        .expect("nobody else holds it");
    assert!(second.unwrap() > first, "{second:?} after {first}");
}

/// A pool installs its own fence table through one of its connections: the named one, on
/// both backends and both flavours, without a raw connection of the user's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_installs_its_own_fence_table_and_then_issues_tokens() {
    let suffix = std::process::id();
    // Each run names a table of its own, so that the install has something to create.
    let pg_table = format!("public.dlock_fence_pool_install_{suffix}");
    let my_table = format!("dlock.dlock_fence_pool_install_{suffix}");
    let manager = Bb8Pg::new(postgres::pg_url().parse().unwrap(), tokio_postgres::NoTls);
    let pool = AsyncLockPool::new(manager)
        .await
        .unwrap()
        .fenced_in(&pg_table)
        .unwrap();
    pool.install_fencing().await.unwrap();
    pool.install_fencing().await.unwrap(); // Once more changes nothing.
    let guard = pool.acquire("fencing/pool/install").await.unwrap();
    assert_eq!(AsyncLockGuard::fencing_token(&guard), Some(1));
    AsyncLockGuard::release(guard).await.unwrap();
    let manager = AsyncMySqlManager::from_url(&mysql::mysql_url()).unwrap();
    let pool = AsyncLockPool::new(manager)
        .await
        .unwrap()
        .fenced_in(&my_table)
        .unwrap();
    pool.install_fencing().await.unwrap();
    let guard = pool.acquire("fencing/pool/install").await.unwrap();
    assert_eq!(AsyncLockGuard::fencing_token(&guard), Some(1));
    AsyncLockGuard::release(guard).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let manager = R2d2Pg::new(postgres::pg_url().parse().unwrap(), ::postgres::NoTls);
        let pool = LockPool::new(manager)
            .unwrap()
            .fenced_in(&pg_table)
            .unwrap();
        pool.install_fencing().unwrap();
        let guard = pool.acquire("fencing/pool/install").unwrap();
        assert_eq!(LockGuard::fencing_token(&guard), Some(2));
        LockGuard::release(guard).unwrap();
        let opts = ::mysql::Opts::from_url(&mysql::mysql_url()).unwrap();
        let manager =
            r2d2_mysql::MySqlConnectionManager::new(::mysql::OptsBuilder::from_opts(opts));
        let pool = LockPool::new(manager)
            .unwrap()
            .fenced_in(&my_table)
            .unwrap();
        pool.install_fencing().unwrap();
        let guard = pool.acquire("fencing/pool/install").unwrap();
        assert_eq!(LockGuard::fencing_token(&guard), Some(2));
        LockGuard::release(guard).unwrap();
        // Left behind: one table per run would pile up.
        postgres::connect()
            .batch_execute(&format!("DROP TABLE {pg_table}"))
            .unwrap();
        use ::mysql::prelude::Queryable as _;
        mysql::connect()
            .query_drop(format!("DROP TABLE {my_table}"))
            .unwrap();
    })
    .await
    .unwrap();
}
