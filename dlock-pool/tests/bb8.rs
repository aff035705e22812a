//! `AsyncLockPool` over bb8, for PostgreSQL and MariaDB: however a guard ends (released,
//! dropped, panicked, its unlock failed, its acquire cancelled), the pool never hands out a
//! connection that still holds a lock. Against real servers.

use dlock_testkit as common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bb8_postgres::PostgresConnectionManager;
use dlock_pool::{AsyncConnection, AsyncLockGuard, AsyncLockPool, AsyncMySqlManager, Error};
use mysql_async::prelude::Queryable;

/// What a test needs to know about a backend to look at its sessions.
trait Backend: 'static {
    type Conn: AsyncConnection;
    type Manager: bb8::ManageConnection<Connection = Self::Conn, Error: std::error::Error + Send + Sync>;
    fn manager() -> Self::Manager;
    /// The server's id of the connection's session.
    async fn session(conn: &mut Self::Conn) -> u64;
    /// Whether the connection's session holds `key`.
    async fn holds(conn: &mut Self::Conn, key: &str) -> bool;
    /// Whether any session holds `key`, asked from the side.
    fn held_anywhere(key: &str) -> bool;
    /// Ends session `id` from the side.
    fn kill(id: u64);
}

struct Pg;

impl Backend for Pg {
    type Conn = tokio_postgres::Client;
    type Manager = PostgresConnectionManager<common::postgres::Tls>;

    fn manager() -> Self::Manager {
        PostgresConnectionManager::new(common::pg_url().parse().unwrap(), common::postgres::tls())
    }

    async fn session(conn: &mut tokio_postgres::Client) -> u64 {
        let row = conn
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap();
        u64::from(row.get::<_, i32>(0).unsigned_abs())
    }

    async fn holds(conn: &mut tokio_postgres::Client, _key: &str) -> bool {
        let row = conn
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                 AND pid = pg_backend_pid() AND granted",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) > 0
    }

    fn held_anywhere(key: &str) -> bool {
        let key = dlock_pool::KeyPolicy::default()
            .pg_key(&key.into())
            .unwrap();
        let dlock_pool::PgKey::BigInt(key) = key else {
            panic!("text keys are bigints");
        };
        let count: i64 = common::pg()
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $1",
                &[&key],
            )
            .unwrap()
            .get(0);
        count > 0
    }

    fn kill(id: u64) {
        common::pg_terminate(i32::try_from(id).unwrap());
    }
}

struct My;

impl Backend for My {
    type Conn = mysql_async::Conn;
    type Manager = AsyncMySqlManager;

    fn manager() -> Self::Manager {
        AsyncMySqlManager::new(common::mysql::opts_async())
    }

    async fn session(conn: &mut mysql_async::Conn) -> u64 {
        u64::from(conn.id())
    }

    async fn holds(conn: &mut mysql_async::Conn, key: &str) -> bool {
        let mine: Option<Option<i64>> = conn
            .exec_first("SELECT IS_USED_LOCK(?) = CONNECTION_ID()", (key,))
            .await
            .unwrap();
        mine.flatten() == Some(1)
    }

    fn held_anywhere(key: &str) -> bool {
        common::my_holder_of(key).is_some()
    }

    fn kill(id: u64) {
        common::my_kill(u32::try_from(id).unwrap());
    }
}

async fn pool_of<B: Backend>(size: u32) -> AsyncLockPool<B::Manager> {
    let builder = bb8::Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(5));
    AsyncLockPool::with_builder(builder, B::manager())
        .await
        .unwrap()
}

/// Runs blocking looks at the server off the runtime's threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

/// The pool's next checkout holds no lock on `key`, nobody does, and another pool can take it.
async fn assert_clean<B: Backend>(pool: &AsyncLockPool<B::Manager>, key: &str, how: &str) {
    {
        let mut next = pool.pool().get().await.unwrap();
        assert!(
            !B::holds(&mut next, key).await,
            "{how}: the next checkout holds a lock"
        );
    }
    let owned = key.to_owned();
    assert!(
        blocking(move || common::eventually(|| !B::held_anywhere(&owned))).await,
        "{how}: some session still holds the key"
    );
    let other = pool_of::<B>(1).await;
    let guard = other.try_acquire(key).await.unwrap();
    assert!(guard.is_some(), "{how}: another pool cannot take the key");
    AsyncLockGuard::release(guard.unwrap()).await.unwrap();
}

async fn every_way_a_guard_ends_leaves_the_pool_clean<B: Backend>(prefix: &str) {
    let pool = Arc::new(pool_of::<B>(1).await);

    let key = format!("{prefix}/release");
    let guard = pool.acquire(key.as_str()).await.unwrap();
    AsyncLockGuard::release(guard).await.unwrap();
    assert_clean::<B>(&pool, &key, "release").await;

    let key = format!("{prefix}/drop");
    let mut guard = pool.acquire(key.as_str()).await.unwrap();
    let id = B::session(&mut guard).await;
    drop(guard);
    assert_clean::<B>(&pool, &key, "drop without release").await;
    {
        let mut next = pool.pool().get().await.unwrap();
        assert_ne!(
            B::session(&mut next).await,
            id,
            "the dropped guard's connection was closed"
        );
    }

    let key = format!("{prefix}/panic");
    let panicking = Arc::clone(&pool);
    let task_key = key.clone();
    let outcome = tokio::spawn(async move {
        let _guard = panicking.acquire(task_key.as_str()).await.unwrap();
        panic!("the critical section failed");
    })
    .await;
    assert!(outcome.unwrap_err().is_panic());
    assert_clean::<B>(&pool, &key, "panic").await;

    let key = format!("{prefix}/killed");
    let mut guard = pool.acquire(key.as_str()).await.unwrap();
    let id = B::session(&mut guard).await;
    blocking(move || B::kill(id)).await;
    assert!(!AsyncLockGuard::verify(&mut guard).await.unwrap_or(false));
    let released = AsyncLockGuard::release(guard).await;
    assert!(released.is_err(), "the unlock fails: {released:?}");
    assert_clean::<B>(&pool, &key, "failed unlock").await;

    let key = format!("{prefix}/cancelled");
    let holder = pool_of::<B>(1).await;
    let held = holder.acquire(key.as_str()).await.unwrap();
    let cancelled =
        tokio::time::timeout(Duration::from_millis(300), pool.acquire(key.as_str())).await;
    assert!(cancelled.is_err(), "the acquire was still waiting");
    AsyncLockGuard::release(held).await.unwrap();
    assert_clean::<B>(&pool, &key, "cancelled acquire").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_every_way_a_guard_ends_leaves_the_pool_clean() {
    every_way_a_guard_ends_leaves_the_pool_clean::<Pg>("bb8/pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_every_way_a_guard_ends_leaves_the_pool_clean() {
    every_way_a_guard_ends_leaves_the_pool_clean::<My>("bb8/my").await;
}

async fn busy_tries_and_timeouts_give_the_connection_back<B: Backend>(prefix: &str) {
    let key = format!("{prefix}/busy");
    let holder = pool_of::<B>(1).await;
    let guard = holder.acquire(key.as_str()).await.unwrap();
    assert_eq!(AsyncLockGuard::key(&guard).to_string(), key);

    let pool = pool_of::<B>(1).await;
    assert!(pool.try_acquire(key.as_str()).await.unwrap().is_none());
    assert_eq!(pool.pool().state().idle_connections, 1, "back at once");
    let started = Instant::now();
    let asked = Duration::from_millis(300);
    assert!(
        pool.acquire_timeout(key.as_str(), asked)
            .await
            .unwrap()
            .is_none()
    );
    assert!(started.elapsed() >= asked, "{:?}", started.elapsed());
    assert_eq!(pool.pool().state().idle_connections, 1, "back at once");

    // With the only connection checked out, the deadline covers the checkout: a pool error.
    let busy = pool.acquire(format!("{prefix}/other")).await.unwrap();
    let started = Instant::now();
    let outcome = pool
        .acquire_timeout(format!("{prefix}/third"), Duration::from_millis(200))
        .await;
    assert!(matches!(outcome, Err(Error::Pool(_))), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    AsyncLockGuard::release(busy).await.unwrap();

    AsyncLockGuard::release(guard).await.unwrap();
    assert!(
        pool.acquire_timeout(key.as_str(), asked)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_busy_tries_and_timeouts_give_the_connection_back() {
    busy_tries_and_timeouts_give_the_connection_back::<Pg>("bb8/pg").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_busy_tries_and_timeouts_give_the_connection_back() {
    busy_tries_and_timeouts_give_the_connection_back::<My>("bb8/my").await;
}

async fn two_pools_exclude_each_other<B: Backend>(key: &'static str) {
    let pools = [
        Arc::new(pool_of::<B>(3).await),
        Arc::new(pool_of::<B>(3).await),
    ];
    let inside = Arc::new(AtomicUsize::new(0));
    let most_inside = Arc::new(AtomicUsize::new(0));
    let entries = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..6 {
        let pool = Arc::clone(&pools[task % 2]);
        let (inside, most_inside, entries) = (
            Arc::clone(&inside),
            Arc::clone(&most_inside),
            Arc::clone(&entries),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let guard = pool.acquire(key).await.unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most_inside.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                entries.fetch_add(1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                AsyncLockGuard::release(guard).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(entries.load(Ordering::SeqCst), 60);
    assert_eq!(
        most_inside.load(Ordering::SeqCst),
        1,
        "one holder at a time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_pools_exclude_each_other() {
    two_pools_exclude_each_other::<Pg>("bb8/pg/contend").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_two_pools_exclude_each_other() {
    two_pools_exclude_each_other::<My>("bb8/my/contend").await;
}

/// Takes `size` guards at once, so every connection of a pool of that size; returns their
/// sessions' ids, all idle in the pool afterwards.
async fn every_session<B: Backend>(
    pool: &AsyncLockPool<B::Manager>,
    prefix: &str,
    size: u32,
) -> Vec<u64> {
    let mut guards = Vec::new();
    for n in 0..size {
        guards.push(pool.acquire(format!("{prefix}/{n}")).await.unwrap());
    }
    let mut ids = Vec::new();
    for guard in &mut guards {
        ids.push(B::session(guard).await);
    }
    for guard in guards {
        AsyncLockGuard::release(guard).await.unwrap();
    }
    ids
}

async fn sessions_ended_while_idle_are_replaced_within_the_acquire<B: Backend>(prefix: &str) {
    // A pool of `new` tests no connection as it checks it out: the lock statement finds the
    // dead session, and the acquire goes on, on a live connection, as a restart needs.
    let pool = AsyncLockPool::new(B::manager()).await.unwrap();
    let size = 3;
    let ids = every_session::<B>(&pool, prefix, size).await;
    blocking(move || ids.into_iter().for_each(B::kill)).await;
    let key = format!("{prefix}/after");
    let mut guard = pool
        .acquire(key.as_str())
        .await
        .expect("the retry found a live connection");
    assert!(B::holds(&mut guard, &key).await);
    AsyncLockGuard::release(guard).await.unwrap();
    let ids = every_session::<B>(&pool, prefix, size).await;
    blocking(move || ids.into_iter().for_each(B::kill)).await;
    let guard = pool.try_acquire(key.as_str()).await.unwrap();
    assert!(guard.is_some(), "a try goes through the retry too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sessions_ended_while_idle_are_replaced_within_the_acquire() {
    sessions_ended_while_idle_are_replaced_within_the_acquire::<Pg>("bb8/pg/revive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sessions_ended_while_idle_are_replaced_within_the_acquire() {
    sessions_ended_while_idle_are_replaced_within_the_acquire::<My>("bb8/my/revive").await;
}

async fn an_acquire_is_retried_once_at_most<B: Backend>(prefix: &str) {
    // With checkout tests turned off by the user's builder, nothing drains the dead
    // connections: the first acquire meets one, retries once, meets the other, and reports it.
    let builder = bb8::Pool::builder()
        .max_size(2)
        .test_on_check_out(false)
        .connection_timeout(Duration::from_secs(5));
    let pool = AsyncLockPool::with_builder(builder, B::manager())
        .await
        .unwrap();
    let ids = every_session::<B>(&pool, prefix, 2).await;
    blocking(move || ids.into_iter().for_each(B::kill)).await;
    let key = format!("{prefix}/after");
    let error = pool.acquire(key.as_str()).await.unwrap_err();
    assert!(error.session_ended(), "{error:?}");
    // Both dead connections are closed now, and a fresh one takes the lock.
    assert!(pool.try_acquire(key.as_str()).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_acquire_is_retried_once_at_most() {
    an_acquire_is_retried_once_at_most::<Pg>("bb8/pg/retry-once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_an_acquire_is_retried_once_at_most() {
    an_acquire_is_retried_once_at_most::<My>("bb8/my/retry-once").await;
}

/// How many statements the session of `conn` keeps prepared that take or release advisory
/// locks (`pg_prepared_statements` shows the driver's named statements).
async fn prepared_lock_statements(conn: &tokio_postgres::Client) -> i64 {
    conn.query_one(
        "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%pg_%advisory%' \
         AND statement NOT LIKE '%pg_prepared_statements%'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// A pooled PostgreSQL connection keeps the lock statements prepared from one guard to the
/// next, as a reused bare lock does: pooled acquires reach the prepared statements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pooled_locks_reuse_their_connections_prepared_statements() {
    let pool = pool_of::<Pg>(1).await;
    for round in 0..4 {
        let guard = pool.acquire(format!("bb8/prepared/{round}")).await.unwrap();
        if round == 3 {
            assert_eq!(prepared_lock_statements(&guard).await, 2, "lock and unlock");
        }
        AsyncLockGuard::release(guard).await.unwrap();
    }
}

/// A dropped acquire's wait is ended by a cancel request, sent through the TLS connector
/// the pool was given (the manager's own), never in plain text beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_postgres_acquire_cancels_through_the_pools_tls() {
    let key = "bb8/cancel-tls";
    // The manager connects through the suites' connector; the pool is given a counting one
    // of the same kind, so that only what the pool's locks open beside their connections
    // counts.
    let tls = common::postgres::CountingTls::default();
    let manager = Pg::manager();
    let builder = bb8::Pool::builder()
        .max_size(2)
        .connection_timeout(Duration::from_secs(5));
    let pool = AsyncLockPool::with_builder(builder, manager)
        .await
        .unwrap()
        .without_watcher()
        .tls(tls.clone());
    let holder = pool_of::<Pg>(1).await;
    let mut held = holder.acquire(key).await.unwrap();
    let holder_pid = i32::try_from(Pg::session(&mut held).await).unwrap();
    // The sessions waiting for a lock the holder holds.
    let waiting = move || {
        common::pg()
            .query_one(
                "SELECT count(*) FROM pg_locks w JOIN pg_locks h ON h.locktype = 'advisory' \
                 AND h.granted AND h.pid = $1 AND w.classid = h.classid \
                 AND w.objid = h.objid AND w.objsubid = h.objsubid \
                 WHERE w.locktype = 'advisory' AND NOT w.granted",
                &[&holder_pid],
            )
            .unwrap()
            .get::<_, i64>(0)
    };
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire(key).await.map(drop) }
    });
    let seen = blocking(move || common::eventually(|| waiting() == 1)).await;
    assert!(seen, "the acquire waits in the server");
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    let ended = blocking(move || common::eventually(|| waiting() == 0)).await;
    assert!(ended, "the dropped wait ended while the holder still held");
    assert!(
        tls.made() >= 1,
        "the cancel request went through the pool's connector"
    );
    AsyncLockGuard::release(held).await.unwrap();
}
