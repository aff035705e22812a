//! Faults survived: a server frozen mid-wait (a partition, as far as the client can tell) and
//! a server restarted while locks are held and waited for. These tests freeze and restart
//! their servers, so the matrix gives them servers of their own and runs them one at a time:
//! `cargo xtask test-matrix --only db:faults`.

use dlock_testkit as common;
use dlock_testkit::faults::{
    Frozen, SLACK, TIMEOUT, my_pid, pg_pid, restart_mariadb, restart_postgres,
};

use std::time::{Duration, Instant};

use dlock_pool::dlock_mysql::AsyncMySqlLock;
use dlock_pool::dlock_postgres::AsyncPgLock;
use dlock_pool::{
    AsyncConnection, AsyncLock, AsyncLockGuard, AsyncLockPool, AsyncManager, AsyncMySqlManager,
    BlockingConnection, Error, LockGuard, LockPool, LostReason, REPLY_GRACE,
};

async fn pg_pool(
    size: u32,
) -> AsyncLockPool<bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>> {
    let manager = bb8_postgres::PostgresConnectionManager::new(
        common::pg_url().parse().unwrap(),
        tokio_postgres::NoTls,
    );
    let builder = bb8::Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10));
    AsyncLockPool::with_builder(builder, manager).await.unwrap()
}

async fn my_pool(size: u32) -> AsyncLockPool<AsyncMySqlManager> {
    let manager = AsyncMySqlManager::from_url(&common::mysql_url()).unwrap();
    let builder = bb8::Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10));
    AsyncLockPool::with_builder(builder, manager).await.unwrap()
}

fn assert_gave_up_in_time<T: std::fmt::Debug>(
    what: &str,
    outcome: &Result<T, Error>,
    took: Duration,
) {
    // A pool checks a connection as it checks it out, and that check meets the frozen server
    // first: then no connection came in time, which is a pool error.
    assert!(
        matches!(outcome, Err(Error::ConnectionLost { .. } | Error::Pool(_))),
        "{what}: {outcome:?}"
    );
    assert!(
        took >= TIMEOUT && took <= TIMEOUT + REPLY_GRACE + SLACK,
        "{what}: gave up after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_postgres_cannot_hold_an_owned_wait_past_its_deadline() {
    let key = "faults/frozen-pg";
    let holder = pg_pool(1).await;
    let held = holder.acquire(key).await.unwrap();
    let waiters = pg_pool(1).await;
    // Check out and connect before the freeze: what is measured is the lock wait.
    drop(waiters.pool().get().await.unwrap());
    let (client, connection) = tokio_postgres::connect(&common::pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut bare = AsyncPgLock::new(client, key);

    let frozen = Frozen::new(pg_pid(), true);
    let started = Instant::now();
    let (pooled, owned) = tokio::join!(
        waiters.acquire_timeout(key, TIMEOUT),
        bare.acquire_timeout(TIMEOUT)
    );
    let took = started.elapsed();
    drop(frozen);
    assert_gave_up_in_time("bb8 pool", &pooled.map(|guard| guard.is_some()), took);
    assert_gave_up_in_time("owned AsyncPgLock", &owned, took);

    // Thawed: the holder releases, the pool reconnects and takes the key, and the bare lock's
    // queued cleanup left nothing behind.
    AsyncLockGuard::release(held).await.unwrap();
    let guard = waiters
        .acquire_timeout(key, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the pool recovered");
    AsyncLockGuard::release(guard).await.unwrap();
    assert!(
        bare.try_acquire().await.unwrap(),
        "the bare lock works again"
    );
    bare.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_mariadb_cannot_hold_an_owned_wait_past_its_deadline() {
    let key = "faults/frozen-my";
    let holder = my_pool(1).await;
    let held = holder.acquire(key).await.unwrap();
    let waiters = my_pool(1).await;
    drop(waiters.pool().get().await.unwrap());
    let conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&common::mysql_url()).unwrap())
        .await
        .unwrap();
    let mut bare = AsyncMySqlLock::new(conn, key);

    let frozen = Frozen::new(my_pid(), false);
    let started = Instant::now();
    let (pooled, owned) = tokio::join!(
        waiters.acquire_timeout(key, TIMEOUT),
        bare.acquire_timeout(TIMEOUT)
    );
    let took = started.elapsed();
    drop(frozen);
    assert_gave_up_in_time("bb8 pool", &pooled.map(|guard| guard.is_some()), took);
    assert_gave_up_in_time("owned AsyncMySqlLock", &owned, took);
    // The bare lock gave its connection up; later calls say so.
    assert!(matches!(
        bare.try_acquire().await,
        Err(Error::ConnectionUnusable { .. })
    ));

    AsyncLockGuard::release(held).await.unwrap();
    let guard = waiters
        .acquire_timeout(key, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the pool recovered");
    AsyncLockGuard::release(guard).await.unwrap();
    assert!(
        common::eventually(|| common::my_holder_of(key).is_none()),
        "no session holds the key"
    );
}

/// What the waiters of a key see when the server restarts under them. The bare lock's wait
/// ends with a connection error. The pool's waiter's session ended with the restart, and with
/// it anything it was granted: the pool tries once more on a new connection, within the
/// timeout, and gets the lock the restart freed (or reports the session's end, if no
/// connection came in time).
fn assert_waiters_after_restart(bare: Result<(), Error>, pooled: Result<bool, Error>) {
    let error = bare.expect_err("bare waiter");
    assert!(error.is_connection_error(), "bare waiter: {error:?}");
    match pooled {
        Ok(true) => {}
        Err(error) => assert!(error.is_connection_error(), "bb8 waiter: {error:?}"),
        Ok(false) => panic!("the bb8 waiter timed out"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_ends_holds_and_waits_with_clear_errors_and_pools_reconnect() {
    let key = "faults/restart-pg";
    let manager = r2d2_postgres::PostgresConnectionManager::new(
        common::pg_url().parse().unwrap(),
        postgres::NoTls,
    );
    let blocking = tokio::task::spawn_blocking(move || {
        LockPool::with_builder(r2d2::Pool::builder().max_size(1), manager).unwrap()
    })
    .await
    .unwrap();
    let blocking = std::sync::Arc::new(blocking);
    let pool = blocking.clone();
    let mut held = tokio::task::spawn_blocking(move || pool.acquire(key).unwrap())
        .await
        .unwrap();

    let waiters = pg_pool(1).await;
    let waiting = tokio::spawn(async move {
        let outcome = waiters.acquire_timeout(key, Duration::from_secs(20)).await;
        (outcome.map(|guard| guard.is_some()), waiters)
    });
    let (client, connection) = tokio_postgres::connect(&common::pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut bare = AsyncPgLock::new(client, key);
    let bare_waiting = tokio::spawn(async move {
        let outcome = bare.acquire_timeout(Duration::from_secs(20)).await;
        (outcome, bare)
    });
    // Both wait in the server before it goes down.
    let queued = tokio::task::spawn_blocking(|| {
        let mut side = common::pg();
        common::eventually(|| {
            let waiting: i64 = side
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .unwrap()
                .get(0);
            waiting == 2
        })
    })
    .await
    .unwrap();
    assert!(queued, "both waiters queued");

    let started = Instant::now();
    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    let (pooled, waiters) = waiting.await.unwrap();
    let (owned, mut bare) = bare_waiting.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no wait ran into its timeout"
    );
    assert_waiters_after_restart(owned.map(drop), pooled);
    // The holder's session is gone: verify says so, release fails, and the pool closes that
    // connection.
    let outcome = tokio::task::spawn_blocking(move || {
        let verified = LockGuard::verify(&mut held);
        (verified, LockGuard::release(held))
    })
    .await
    .unwrap();
    assert!(!matches!(outcome.0, Ok(true)), "{:?}", outcome.0);
    assert!(outcome.1.is_err(), "{:?}", outcome.1);
    // Both pools reconnect.
    let pool = blocking.clone();
    tokio::task::spawn_blocking(move || LockGuard::release(pool.acquire(key).unwrap()).unwrap())
        .await
        .unwrap();
    let guard = waiters.acquire(key).await.unwrap();
    AsyncLockGuard::release(guard).await.unwrap();
    assert!(bare.verify().await.is_ok_and(|held| !held));
    // The blocking client may not be dropped on a runtime thread.
    tokio::task::spawn_blocking(move || drop(blocking))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_restart_ends_holds_and_waits_with_clear_errors_and_pools_reconnect() {
    let key = "faults/restart-my";
    let holder = my_pool(1).await;
    let mut held = holder.acquire(key).await.unwrap();
    let waiters = my_pool(1).await;
    let waiting = tokio::spawn(async move {
        let outcome = waiters.acquire_timeout(key, Duration::from_secs(20)).await;
        (outcome.map(|guard| guard.is_some()), waiters)
    });
    let conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&common::mysql_url()).unwrap())
        .await
        .unwrap();
    let mut bare = AsyncMySqlLock::new(conn, key);
    let bare_waiting = tokio::spawn(async move {
        let outcome = bare.acquire_timeout(Duration::from_secs(20)).await;
        (outcome, bare)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    tokio::task::spawn_blocking(restart_mariadb).await.unwrap();
    let (pooled, waiters) = waiting.await.unwrap();
    let (owned, _bare) = bare_waiting.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_waiters_after_restart(owned.map(drop), pooled);
    assert!(!AsyncLockGuard::verify(&mut held).await.unwrap_or(false));
    assert!(AsyncLockGuard::release(held).await.is_err());
    // Both pools reconnect.
    let guard = holder.acquire(key).await.unwrap();
    AsyncLockGuard::release(guard).await.unwrap();
    let guard = waiters.acquire(key).await.unwrap();
    AsyncLockGuard::release(guard).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_of_new_acquire_at_once_after_a_restart_between_acquires() {
    // Pools built by `new` send no test of their own at checkout. After a restart every idle
    // connection is dead: the first acquire meets one, and goes on through the retry, on a
    // connection checked because the pool is now in doubt.
    let key = "faults/restart-between";
    let r2d2_pg = tokio::task::spawn_blocking(|| {
        let manager = r2d2_postgres::PostgresConnectionManager::new(
            common::pg_url().parse().unwrap(),
            postgres::NoTls,
        );
        LockPool::new(manager).unwrap()
    });
    let r2d2_my = tokio::task::spawn_blocking(|| {
        let opts = mysql::Opts::from_url(&common::mysql_url()).unwrap();
        LockPool::new(r2d2_mysql::MySqlConnectionManager::new(
            mysql::OptsBuilder::from_opts(opts),
        ))
        .unwrap()
    });
    let (r2d2_pg, r2d2_my) = (r2d2_pg.await.unwrap(), r2d2_my.await.unwrap());
    let bb8_pg = AsyncLockPool::new(bb8_postgres::PostgresConnectionManager::new(
        common::pg_url().parse().unwrap(),
        tokio_postgres::NoTls,
    ))
    .await
    .unwrap();
    let bb8_my = AsyncLockPool::new(AsyncMySqlManager::from_url(&common::mysql_url()).unwrap())
        .await
        .unwrap();
    // Each pool has an idle connection that has been used.
    AsyncLockGuard::release(bb8_pg.acquire(key).await.unwrap())
        .await
        .unwrap();
    AsyncLockGuard::release(bb8_my.acquire(key).await.unwrap())
        .await
        .unwrap();

    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    tokio::task::spawn_blocking(restart_mariadb).await.unwrap();

    let guard = bb8_pg.acquire(key).await.expect("bb8, PostgreSQL");
    AsyncLockGuard::release(guard).await.unwrap();
    let guard = bb8_my.acquire(key).await.expect("bb8, MariaDB");
    AsyncLockGuard::release(guard).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let guard = r2d2_pg.acquire(key).expect("r2d2, PostgreSQL");
        LockGuard::release(guard).unwrap();
        let guard = r2d2_my.acquire(key).expect("r2d2, MariaDB");
        LockGuard::release(guard).unwrap();
    })
    .await
    .unwrap();
}

/// How often the watchers of the lost-lock fault tests check.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Holds `key` in an r2d2 pool and in a bb8 pool (over `blocking` and `pool`), brings
/// `fault` on, and returns how long after it began each guard was reported lost, and why.
/// Each lost guard's release sends nothing and says `LockLost`. `fault` returns what ends
/// the fault when dropped (a frozen server), which happens once both guards are released;
/// then both pools lock again.
async fn pooled_locks_lost_to<M, A>(
    blocking: LockPool<M>,
    pool: AsyncLockPool<A>,
    key: &'static str,
    fault: impl FnOnce() -> Box<dyn Send> + Send + 'static,
) -> Vec<(Duration, LostReason)>
where
    M: dlock_pool::BlockingManager,
    M::Connection: BlockingConnection,
    LockGuard<M>: Send,
    A: AsyncManager,
    A::Connection: AsyncConnection,
{
    let blocking = std::sync::Arc::new(blocking.watch_interval(WATCH_INTERVAL));
    let pool = pool.watch_interval(WATCH_INTERVAL);
    let holding = std::sync::Arc::clone(&blocking);
    let held = tokio::task::spawn_blocking(move || holding.acquire(format!("{key}/r2d2")).unwrap())
        .await
        .unwrap();
    let async_held = pool.acquire(format!("{key}/bb8")).await.unwrap();
    tokio::time::sleep(WATCH_INTERVAL * 2).await;
    assert!(!LockGuard::is_lost(&held) && !AsyncLockGuard::is_lost(&async_held));

    let began = Instant::now();
    let fault = tokio::task::spawn_blocking(fault);
    let blocking_lost = tokio::task::spawn_blocking(move || {
        assert!(LockGuard::wait_lost(&held, Duration::from_secs(20)));
        let lost = began.elapsed();
        let released = Instant::now();
        let outcome = LockGuard::release(held);
        assert!(
            released.elapsed() < Duration::from_millis(100),
            "released without I/O"
        );
        match outcome {
            Err(Error::LockLost { reason, .. }) => (lost, reason),
            other => panic!("r2d2: {other:?}"),
        }
    });
    let reason = tokio::time::timeout(Duration::from_secs(20), AsyncLockGuard::lost(&async_held))
        .await
        .expect("bb8: reported lost");
    let async_lost = (began.elapsed(), reason);
    let released = AsyncLockGuard::release(async_held).await;
    assert!(
        matches!(released, Err(Error::LockLost { .. })),
        "bb8: {released:?}"
    );
    let blocking_lost = blocking_lost.await.unwrap();
    drop(fault.await.unwrap());

    // Both pools lock again once the fault is over.
    let guard = pool.acquire(format!("{key}/bb8")).await.unwrap();
    AsyncLockGuard::release(guard).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let guard = blocking.acquire(format!("{key}/r2d2")).unwrap();
        LockGuard::release(guard).unwrap();
        // The blocking client may not be dropped on a runtime thread.
        drop(blocking);
    })
    .await
    .unwrap();
    vec![blocking_lost, async_lost]
}

async fn pg_pools() -> (
    LockPool<r2d2_postgres::PostgresConnectionManager<postgres::NoTls>>,
    AsyncLockPool<bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>>,
) {
    let blocking = tokio::task::spawn_blocking(|| {
        let manager = r2d2_postgres::PostgresConnectionManager::new(
            common::pg_url().parse().unwrap(),
            postgres::NoTls,
        );
        LockPool::with_builder(r2d2::Pool::builder().max_size(2), manager).unwrap()
    })
    .await
    .unwrap();
    (blocking, pg_pool(2).await)
}

async fn my_pools() -> (
    LockPool<r2d2_mysql::MySqlConnectionManager>,
    AsyncLockPool<AsyncMySqlManager>,
) {
    let blocking = tokio::task::spawn_blocking(|| {
        let opts = mysql::Opts::from_url(&common::mysql_url()).unwrap();
        let manager = r2d2_mysql::MySqlConnectionManager::new(mysql::OptsBuilder::from_opts(opts));
        LockPool::with_builder(r2d2::Pool::builder().max_size(2), manager).unwrap()
    })
    .await
    .unwrap();
    (blocking, my_pool(2).await)
}

/// Prints when each pool reported its lock lost after `fault`, and checks it against `within`.
fn report_lost(fault: &str, lost: &[(Duration, LostReason)], within: Duration) {
    for ((after, reason), pool) in lost.iter().zip(["r2d2", "bb8"]) {
        println!(
            "{fault}: {pool} reported its lock lost after {after:?}, promised within \
             {within:?} ({reason})"
        );
        assert!(*after <= within, "{fault}, {pool}: {after:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reports_every_pooled_lock_lost_within_an_interval_and_a_second() {
    let within = WATCH_INTERVAL + Duration::from_secs(1);
    let (blocking, pool) = pg_pools().await;
    let lost = pooled_locks_lost_to(blocking, pool, "faults/lost-restart-pg", || {
        restart_postgres();
        Box::new(())
    })
    .await;
    report_lost("a PostgreSQL restart", &lost, within);
    let (blocking, pool) = my_pools().await;
    let lost = pooled_locks_lost_to(blocking, pool, "faults/lost-restart-my", || {
        restart_mariadb();
        Box::new(())
    })
    .await;
    report_lost("a MariaDB restart", &lost, within);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_reports_every_pooled_lock_lost_once_the_bound_runs_out() {
    // The default bound: three intervals unconfirmed.
    let within = WATCH_INTERVAL * 3 + WATCH_INTERVAL;
    let (blocking, pool) = pg_pools().await;
    let lost = pooled_locks_lost_to(blocking, pool, "faults/lost-frozen-pg", || {
        Box::new(Frozen::new(pg_pid(), true))
    })
    .await;
    report_lost("a frozen PostgreSQL", &lost, within);
    assert!(
        lost.iter()
            .all(|(_, reason)| matches!(reason, LostReason::Unconfirmed { .. }))
    );
    let (blocking, pool) = my_pools().await;
    let lost = pooled_locks_lost_to(blocking, pool, "faults/lost-frozen-my", || {
        Box::new(Frozen::new(my_pid(), false))
    })
    .await;
    report_lost("a frozen MariaDB", &lost, within);
}

/// Ends, as an operator would, every PostgreSQL session that holds an advisory lock: the
/// fault tests run one at a time on servers of their own, so these are the test's guards.
fn terminate_pg_holders() -> Box<dyn Send> {
    common::pg()
        .execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted",
            &[],
        )
        .unwrap();
    Box::new(())
}

/// Kills the MariaDB sessions that hold `key`'s two locks.
fn kill_my_holders(key: &'static str) -> Box<dyn Send> {
    for pool in ["r2d2", "bb8"] {
        if let Some(id) = common::my_holder_of(&format!("{key}/{pool}")) {
            common::my_kill(id);
        }
    }
    Box::new(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sessions_are_reported_lost_within_an_interval_and_a_second() {
    const SAMPLES: usize = 5;
    let within = WATCH_INTERVAL + Duration::from_secs(1);
    let mut latencies = Vec::new();
    for _ in 0..SAMPLES {
        let (blocking, pool) = pg_pools().await;
        let lost =
            pooled_locks_lost_to(blocking, pool, "faults/lost-kill-pg", terminate_pg_holders).await;
        latencies.extend(lost);
        let (blocking, pool) = my_pools().await;
        let key = "faults/lost-kill-my";
        let lost = pooled_locks_lost_to(blocking, pool, key, move || kill_my_holders(key)).await;
        latencies.extend(lost);
    }
    assert!(
        latencies
            .iter()
            .all(|(_, reason)| *reason == LostReason::NotHeld)
    );
    let mut latencies: Vec<Duration> = latencies.into_iter().map(|(after, _)| after).collect();
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    println!(
        "killed sessions, {} guards of r2d2 and bb8 pools on PostgreSQL and MariaDB, watcher \
         interval {WATCH_INTERVAL:?}: detection latency p50 {p50:?}, p99 {p99:?} (promised: \
         {within:?})",
        latencies.len()
    );
    assert!(p99 <= within, "p99 {p99:?}");
}

/// Multiplexed locks (many locks on one shared session) under a restart and a freeze: every
/// lock of the shared session is reported lost together, and the pool goes on afterwards on
/// a new session.
async fn multiplexed_locks_lost_to_faults<M: dlock_pool::MultiplexedManager>(
    backend: &str,
    pool: impl AsyncFn() -> AsyncLockPool<M>,
    restart: fn(),
    freeze: fn() -> Frozen,
) {
    use dlock_pool::AsyncMultiplexedGuard;
    for fault in ["restart", "freeze"] {
        let locks = pool().await.watch_interval(WATCH_INTERVAL).multiplexed();
        let mut held = Vec::new();
        for index in 0..50 {
            let key = format!("faults/mux-{fault}/{index}");
            held.push(locks.try_acquire(key.as_str()).await.unwrap().unwrap());
        }
        assert_eq!(locks.shared_sessions(), 1);
        let frozen = match fault {
            "restart" => {
                tokio::task::spawn_blocking(restart).await.unwrap();
                None
            }
            _ => Some(freeze()),
        };
        for guard in &held {
            tokio::time::timeout(
                WATCH_INTERVAL * 4 + SLACK,
                AsyncMultiplexedGuard::lost(guard),
            )
            .await
            .unwrap_or_else(|_| panic!("{backend}, {fault}: every lock is reported lost"));
        }
        drop(frozen);
        for guard in held {
            let error = AsyncMultiplexedGuard::release(guard).await.unwrap_err();
            assert!(
                matches!(error, Error::LockLost { .. }),
                "{backend}, {fault}: {error:?}"
            );
        }
        assert_eq!(locks.shared_sessions(), 0, "{backend}, {fault}");
        let guard = tokio::time::timeout(
            Duration::from_secs(15),
            locks.acquire(format!("faults/mux-{fault}/0")),
        )
        .await
        .expect("the pool goes on")
        .unwrap();
        AsyncMultiplexedGuard::release(guard).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiplexed_locks_are_all_reported_lost_to_a_restart_or_a_freeze() {
    multiplexed_locks_lost_to_faults(
        "PostgreSQL",
        async || pg_pool(4).await,
        restart_postgres,
        || Frozen::new(pg_pid(), true),
    )
    .await;
    multiplexed_locks_lost_to_faults(
        "MariaDB",
        async || my_pool(4).await,
        restart_mariadb,
        || Frozen::new(my_pid(), false),
    )
    .await;
}
