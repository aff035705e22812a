//! Pools refuse where a lock cannot exclude: pgbouncer in transaction and statement pooling
//! modes, a PostgreSQL hot standby, a MariaDB Galera node. They run on the servers of the
//! matrix's `db:deployments` row: `cargo xtask test-matrix --only db:deployments`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use dlock_pool::{
    AsyncLockGuard, AsyncLockPool, AsyncMySqlManager, Deployment, LockGuard, LockPool,
};
use dlock_testkit::deployments::{self, refused_as};
use dlock_testkit::postgres::pg_url;

/// How many pools each detection runs in: every one must decide the same way.
const RUNS: usize = 50;

type R2d2Pg = r2d2_postgres::PostgresConnectionManager<postgres::NoTls>;
type Bb8Pg = bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>;

fn r2d2_pool(url: &str) -> LockPool<R2d2Pg> {
    let manager = R2d2Pg::new(url.parse().unwrap(), postgres::NoTls);
    let builder = r2d2::Pool::builder()
        .max_size(2)
        .connection_timeout(Duration::from_secs(10));
    LockPool::with_builder(builder, manager).unwrap()
}

async fn bb8_pool(url: &str) -> AsyncLockPool<Bb8Pg> {
    let manager = Bb8Pg::new(url.parse().unwrap(), tokio_postgres::NoTls);
    let builder = bb8::Pool::builder()
        .max_size(2)
        .connection_timeout(Duration::from_secs(10));
    AsyncLockPool::with_builder(builder, manager).await.unwrap()
}

/// A deadpool-postgres pool of two connections to `url`.
fn deadpool_pool(url: &str) -> dlock_pool::deadpool_postgres::Pool {
    use dlock_pool::deadpool_postgres::{Config, PoolConfig, Runtime};
    let mut config = Config::new();
    config.url = Some(url.to_owned());
    config.pool = Some(PoolConfig::new(2));
    config
        .create_pool(
            Some(Runtime::Tokio1),
            dlock_pool::dlock_postgres::tokio_postgres::NoTls,
        )
        .unwrap()
}

/// The poolers where a session lock cannot exclude, with default settings.
fn transaction_poolers() -> [(&'static str, String); 2] {
    [
        ("transaction", deployments::transaction_pooler()),
        ("statement", deployments::statement_pooler()),
    ]
}

/// Transaction poolers whose reuse order or process layout hides them from an inference:
/// pgbouncer taking its server connections in turn (`server_round_robin`), and two
/// processes on one port (`so_reuseport`). Only the cancel key's proof sees them, which the
/// blocking client hides (the README's "Where a lock cannot exclude" says so).
fn hidden_transaction_poolers() -> [(&'static str, String); 2] {
    [
        (
            "transaction, round robin",
            deployments::round_robin_pooler(),
        ),
        (
            "transaction, two processes on one port",
            deployments::reuseport_pooler(),
        ),
    ]
}

/// Where a session lock excludes.
fn sessions_of_their_own() -> [(&'static str, String); 2] {
    [
        ("direct", pg_url()),
        ("session pooling", deployments::session_pooler()),
    ]
}

#[test]
fn r2d2_pools_refuse_a_transaction_or_statement_pooler_every_time() {
    for (mode, url) in transaction_poolers() {
        for run in 0..RUNS {
            let error = r2d2_pool(&url)
                .try_acquire("deployments/pool")
                .expect_err("an r2d2 pool through a transaction pooler must refuse");
            assert!(
                refused_as(&error, Deployment::TransactionPooler),
                "{mode} pooling, run {run}: {error:?}"
            );
        }
    }
}

/// A bb8 pool proves each connection direct by its cancel key, so any pooler is refused at
/// once, whatever its reuse order or processes; one that the user vouches for as a session
/// pooler is checked with a second connection, which a transaction pooler lets share a
/// server session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_pools_refuse_a_transaction_or_statement_pooler_every_time() {
    for (mode, url) in hidden_transaction_poolers() {
        for run in 0..RUNS {
            let error = bb8_pool(&url)
                .await
                .acquire("deployments/pool")
                .await
                .expect_err("a bb8 pool through a transaction pooler must refuse");
            assert!(
                refused_as(&error, Deployment::UnprovenPooler),
                "{mode}, run {run}: {error:?}"
            );
            let error = dlock_pool::DeadpoolLockPool::new(deadpool_pool(&url))
                .acquire("deployments/pool")
                .await
                .expect_err("a deadpool pool through a transaction pooler must refuse");
            assert!(
                refused_as(&error, Deployment::UnprovenPooler),
                "deadpool, {mode}, run {run}: {error:?}"
            );
        }
    }
    for (mode, url) in transaction_poolers() {
        for run in 0..RUNS {
            let error = bb8_pool(&url)
                .await
                .acquire("deployments/pool")
                .await
                .expect_err("a bb8 pool through a transaction pooler must refuse");
            assert!(
                refused_as(&error, Deployment::UnprovenPooler),
                "{mode} pooling, run {run}: {error:?}"
            );
            let error = bb8_pool(&url)
                .await
                .trust_session_pooler()
                .acquire("deployments/pool")
                .await
                .expect_err("a transaction pooler vouched for as a session pooler");
            assert!(
                refused_as(&error, Deployment::TransactionPooler),
                "{mode} pooling, vouched for, run {run}: {error:?}"
            );
        }
    }
}

/// Sixteen clients that keep the pooler's server sessions busy until `stop` is set.
async fn busy_pooler(url: &str, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut load = Vec::new();
    for _ in 0..16 {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let stop = Arc::clone(stop);
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client.simple_query("SELECT pg_sleep(0.001)").await.unwrap();
            }
        }));
    }
    load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_refuse_a_busy_transaction_pooler_every_time() {
    let url = deployments::transaction_pooler();
    let stop = Arc::new(AtomicBool::new(false));
    let load = busy_pooler(&url, &stop).await;
    for run in 0..RUNS {
        let error = bb8_pool(&url)
            .await
            .trust_session_pooler()
            .try_acquire("deployments/busy")
            .await
            .unwrap_err();
        assert!(
            refused_as(&error, Deployment::TransactionPooler),
            "bb8, run {run}: {error:?}"
        );
        let url = url.clone();
        let error = tokio::task::spawn_blocking(move || {
            r2d2_pool(&url).try_acquire("deployments/busy").unwrap_err()
        })
        .await
        .unwrap();
        assert!(
            refused_as(&error, Deployment::TransactionPooler),
            "r2d2, run {run}: {error:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
}

#[test]
fn r2d2_pools_direct_or_through_session_pooling_are_never_refused() {
    for (what, url) in sessions_of_their_own() {
        for run in 0..RUNS {
            let guard = r2d2_pool(&url)
                .try_acquire("deployments/fine")
                .unwrap_or_else(|error| panic!("{what}, run {run}: {error}"))
                .expect("nobody else holds it");
            LockGuard::release(guard).unwrap();
        }
    }
}

/// Direct connections are proven and never refused; a session pooler is never refused once
/// the user vouches for it, and refused, as unproven, until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_pools_direct_or_through_a_vouched_session_pooler_are_never_refused() {
    for (what, url) in sessions_of_their_own() {
        for run in 0..RUNS {
            let pool = bb8_pool(&url).await;
            let pool = if what == "direct" {
                pool
            } else {
                pool.trust_session_pooler()
            };
            let guard = pool
                .try_acquire("deployments/fine")
                .await
                .unwrap_or_else(|error| panic!("{what}, run {run}: {error}"))
                .expect("nobody else holds it");
            AsyncLockGuard::release(guard).await.unwrap();
        }
    }
    let error = bb8_pool(&deployments::session_pooler())
        .await
        .try_acquire("deployments/fine")
        .await
        .unwrap_err();
    assert!(refused_as(&error, Deployment::UnprovenPooler), "{error:?}");
}

#[test]
fn eight_threads_through_a_transaction_pooler_never_hold_at_once() {
    let url = deployments::transaction_pooler();
    let pool = Arc::new(r2d2_pool(&url));
    let holding = Arc::new(AtomicUsize::new(0));
    let (overlaps, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (pool, holding) = (Arc::clone(&pool), Arc::clone(&holding));
            let (overlaps, refused) = (Arc::clone(&overlaps), Arc::clone(&refused));
            thread::spawn(move || {
                for _ in 0..200 {
                    match pool.try_acquire("deployments/stress") {
                        Ok(Some(guard)) => {
                            if holding.fetch_add(1, Ordering::SeqCst) > 0 {
                                overlaps.fetch_add(1, Ordering::SeqCst);
                            }
                            holding.fetch_sub(1, Ordering::SeqCst);
                            drop(guard);
                        }
                        Ok(None) => {}
                        Err(error) if refused_as(&error, Deployment::TransactionPooler) => {
                            refused.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(error) => panic!("{error}"),
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(
        refused.load(Ordering::SeqCst),
        8 * 200,
        "every acquire is refused"
    );
}

#[test]
fn r2d2_pools_refuse_a_hot_standby_and_a_galera_node() {
    let error = r2d2_pool(&deployments::standby())
        .acquire("deployments/standby")
        .unwrap_err();
    assert!(refused_as(&error, Deployment::HotStandby), "{error:?}");
    let opts = mysql::Opts::from_url(&deployments::galera()).unwrap();
    let manager = r2d2_mysql::MySqlConnectionManager::new(mysql::OptsBuilder::from_opts(opts));
    let pool = LockPool::with_builder(r2d2::Pool::builder().max_size(2), manager).unwrap();
    let error = pool.acquire("deployments/galera").unwrap_err();
    assert!(refused_as(&error, Deployment::Galera), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bb8_pools_refuse_a_hot_standby_and_a_galera_node() {
    let url = deployments::standby();
    let error = bb8_pool(&url)
        .await
        .acquire("deployments/standby")
        .await
        .unwrap_err();
    assert!(refused_as(&error, Deployment::HotStandby), "{error:?}");
    let pool = AsyncLockPool::new(AsyncMySqlManager::from_url(&deployments::galera()).unwrap())
        .await
        .unwrap();
    let error = pool.acquire("deployments/galera").await.unwrap_err();
    assert!(refused_as(&error, Deployment::Galera), "{error:?}");
    // Turned off, the standby grants its own local lock: the risk the user takes.
    let pool = bb8_pool(&url).await.skip_deployment_check();
    let guard = pool.try_acquire("deployments/standby").await.unwrap();
    AsyncLockGuard::release(guard.expect("nobody else holds it"))
        .await
        .unwrap();
}

/// A connection whose deployment check failed is closed, never handed back to the pool, in
/// both pools alike: the check may have left the session marked, and a connection where a
/// lock cannot exclude has nothing to offer the next acquire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_pools_close_a_connection_whose_deployment_check_failed() {
    let url = deployments::standby();
    let blocking_url = url.clone();
    let connections = tokio::task::spawn_blocking(move || {
        let manager = R2d2Pg::new(blocking_url.parse().unwrap(), postgres::NoTls);
        let builder = r2d2::Pool::builder().max_size(1).min_idle(Some(0));
        let pool = LockPool::with_builder(builder, manager).unwrap();
        let error = pool.try_acquire("deployments/closed").unwrap_err();
        assert!(refused_as(&error, Deployment::HotStandby), "{error:?}");
        pool.pool().state().connections
    })
    .await
    .unwrap();
    assert_eq!(connections, 0, "r2d2 kept the refused connection");

    let manager = Bb8Pg::new(url.parse().unwrap(), tokio_postgres::NoTls);
    let builder = bb8::Pool::builder().max_size(1).min_idle(None);
    let pool = AsyncLockPool::with_builder(builder, manager).await.unwrap();
    let error = pool.try_acquire("deployments/closed").await.unwrap_err();
    assert!(refused_as(&error, Deployment::HotStandby), "{error:?}");
    assert_eq!(
        pool.pool().state().connections,
        0,
        "bb8 kept the refused connection"
    );
}
