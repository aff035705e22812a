//! `LockPool` over r2d2, for PostgreSQL and MariaDB: however a guard ends, the pool never
//! hands out a connection that still holds a lock. Against real servers.

use dlock_testkit as common;

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use dlock_pool::{BlockingConnection, Error, KeyPolicy, LockGuard, LockPool};
use mysql::prelude::Queryable;
use r2d2_mysql::MySqlConnectionManager;
use r2d2_postgres::PostgresConnectionManager;

/// What a test needs to know about a backend to look at its sessions.
trait Backend {
    type Conn: BlockingConnection;
    type Manager: dlock_pool::BlockingManager<Connection = Self::Conn>;
    fn manager() -> Self::Manager;
    /// The server's id of the connection's session.
    fn session(conn: &mut Self::Conn) -> u64;
    /// Whether the connection's session holds `key`.
    fn holds(conn: &mut Self::Conn, key: &str) -> bool;
    /// Ends session `id` from the side.
    fn kill(id: u64);
}

struct Pg;

impl Backend for Pg {
    type Conn = postgres::Client;
    type Manager = PostgresConnectionManager<common::postgres::Tls>;

    fn manager() -> Self::Manager {
        PostgresConnectionManager::new(common::pg_url().parse().unwrap(), common::postgres::tls())
    }

    fn session(conn: &mut postgres::Client) -> u64 {
        let pid: i32 = conn
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        u64::from(pid.unsigned_abs())
    }

    fn holds(conn: &mut postgres::Client, _key: &str) -> bool {
        // Any advisory lock at all: the next checkout must hold none.
        let pid = i32::try_from(Self::session(conn)).unwrap();
        common::pg_advisory_locks_of(pid) > 0
    }

    fn kill(id: u64) {
        common::pg_terminate(i32::try_from(id).unwrap());
    }
}

struct My;

impl Backend for My {
    type Conn = mysql::Conn;
    type Manager = MySqlConnectionManager;

    fn manager() -> Self::Manager {
        MySqlConnectionManager::new(mysql::OptsBuilder::from_opts(common::mysql::opts()))
    }

    fn session(conn: &mut mysql::Conn) -> u64 {
        u64::from(conn.connection_id())
    }

    fn holds(conn: &mut mysql::Conn, key: &str) -> bool {
        let mine: Option<Option<i64>> = conn
            .exec_first("SELECT IS_USED_LOCK(?) = CONNECTION_ID()", (key,))
            .unwrap();
        mine.flatten() == Some(1)
    }

    fn kill(id: u64) {
        common::my_kill(u32::try_from(id).unwrap());
    }
}

fn pool_of<B: Backend>(size: u32) -> LockPool<B::Manager> {
    let builder = r2d2::Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(5));
    LockPool::with_builder(builder, B::manager()).unwrap()
}

/// The pool's next checkout holds no lock on `key`, and another pool can take it.
fn assert_clean<B: Backend>(pool: &LockPool<B::Manager>, key: &str, how: &str) {
    {
        let mut next = pool.pool().get().unwrap();
        assert!(
            !B::holds(&mut next, key),
            "{how}: the next checkout holds a lock"
        );
    }
    let other = pool_of::<B>(1);
    let guard = other.try_acquire(key).unwrap();
    assert!(guard.is_some(), "{how}: another pool cannot take the key");
}

fn every_way_a_guard_ends_leaves_the_pool_clean<B: Backend>(prefix: &str) {
    let pool = pool_of::<B>(1);

    let key = format!("{prefix}/release");
    let guard = pool.acquire(key.as_str()).unwrap();
    LockGuard::release(guard).unwrap();
    assert_clean::<B>(&pool, &key, "release");

    let key = format!("{prefix}/drop");
    let guard = pool.acquire(key.as_str()).unwrap();
    drop(guard);
    assert_clean::<B>(&pool, &key, "drop");

    let key = format!("{prefix}/panic");
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let _guard = pool.acquire(key.as_str()).unwrap();
        panic!("the critical section failed");
    }));
    assert!(outcome.is_err());
    assert_clean::<B>(&pool, &key, "panic");

    let key = format!("{prefix}/killed");
    let mut guard = pool.acquire(key.as_str()).unwrap();
    let id = B::session(&mut guard);
    B::kill(id);
    assert!(!LockGuard::verify(&mut guard).unwrap());
    let released = LockGuard::release(guard);
    assert!(released.is_err(), "the unlock fails: {released:?}");
    {
        let mut next = pool.pool().get().unwrap();
        assert_ne!(
            B::session(&mut next),
            id,
            "the broken connection was closed"
        );
    }
    assert_clean::<B>(&pool, &key, "failed unlock");
}

#[test]
fn postgres_every_way_a_guard_ends_leaves_the_pool_clean() {
    every_way_a_guard_ends_leaves_the_pool_clean::<Pg>("r2d2/pg");
}

#[test]
fn mysql_every_way_a_guard_ends_leaves_the_pool_clean() {
    every_way_a_guard_ends_leaves_the_pool_clean::<My>("r2d2/my");
}

fn busy_tries_and_timeouts_give_the_connection_back<B: Backend>(prefix: &str) {
    let key = format!("{prefix}/busy");
    let holder = pool_of::<B>(1);
    let guard = holder.acquire(key.as_str()).unwrap();
    assert_eq!(LockGuard::key(&guard).to_string(), key);

    let pool = pool_of::<B>(1);
    assert!(pool.try_acquire(key.as_str()).unwrap().is_none());
    assert_eq!(pool.pool().state().idle_connections, 1, "back at once");
    let started = Instant::now();
    let asked = Duration::from_millis(300);
    assert!(pool.acquire_timeout(key.as_str(), asked).unwrap().is_none());
    assert!(started.elapsed() >= asked, "{:?}", started.elapsed());
    assert_eq!(pool.pool().state().idle_connections, 1, "back at once");

    // With the only connection checked out, the deadline covers the checkout: a pool error.
    let other = format!("{prefix}/other");
    let busy = pool.acquire(other.as_str()).unwrap();
    let started = Instant::now();
    let outcome = pool.acquire_timeout(format!("{prefix}/third"), Duration::from_millis(200));
    assert!(matches!(outcome, Err(Error::Pool(_))), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(busy);

    drop(guard);
    assert!(pool.acquire_timeout(key.as_str(), asked).unwrap().is_some());
}

#[test]
fn a_bad_key_is_refused_before_any_checkout() {
    let refuse = KeyPolicy::custom(
        |_| Err(Error::invalid_key("refused by the test's policy")),
        |_| Err(Error::invalid_key("refused by the test's policy")),
    );
    let pg = pool_of::<Pg>(1).policy(refuse.clone());
    let my = pool_of::<My>(1).policy(refuse);
    // Each pool's only connection is checked out: a checkout would wait 5 s.
    let (_pg_busy, _my_busy) = (pg.pool().get().unwrap(), my.pool().get().unwrap());
    let started = Instant::now();
    assert!(matches!(
        pg.acquire("r2d2/bad"),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        my.try_acquire("r2d2/bad"),
        Err(Error::InvalidKey { .. })
    ));
    let plain = pool_of::<My>(1);
    let _plain_busy = plain.pool().get().unwrap();
    assert!(matches!(
        plain.acquire_timeout("", Duration::from_secs(5)),
        Err(Error::InvalidKey { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn postgres_busy_tries_and_timeouts_give_the_connection_back() {
    busy_tries_and_timeouts_give_the_connection_back::<Pg>("r2d2/pg");
}

#[test]
fn mysql_busy_tries_and_timeouts_give_the_connection_back() {
    busy_tries_and_timeouts_give_the_connection_back::<My>("r2d2/my");
}

fn two_pools_exclude_each_other<B: Backend>(key: &'static str)
where
    B::Manager: 'static,
{
    let pools = [Arc::new(pool_of::<B>(2)), Arc::new(pool_of::<B>(2))];
    let inside = Arc::new(AtomicUsize::new(0));
    let most_inside = Arc::new(AtomicUsize::new(0));
    let entries = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let pool = Arc::clone(&pools[worker % 2]);
            let (inside, most_inside, entries) = (
                Arc::clone(&inside),
                Arc::clone(&most_inside),
                Arc::clone(&entries),
            );
            thread::spawn(move || {
                for _ in 0..15 {
                    let guard = pool.acquire(key).unwrap();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most_inside.fetch_max(now, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(1));
                    entries.fetch_add(1, Ordering::SeqCst);
                    inside.fetch_sub(1, Ordering::SeqCst);
                    LockGuard::release(guard).unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(entries.load(Ordering::SeqCst), 60);
    assert_eq!(
        most_inside.load(Ordering::SeqCst),
        1,
        "one holder at a time"
    );
}

#[test]
fn postgres_two_pools_exclude_each_other() {
    two_pools_exclude_each_other::<Pg>("r2d2/pg/contend");
}

#[test]
fn mysql_two_pools_exclude_each_other() {
    two_pools_exclude_each_other::<My>("r2d2/my/contend");
}

/// Takes `size` guards at once, so every connection of a pool of that size; returns their
/// sessions' ids, all idle in the pool afterwards.
fn every_session<B: Backend>(pool: &LockPool<B::Manager>, prefix: &str, size: u32) -> Vec<u64> {
    let mut guards: Vec<_> = (0..size)
        .map(|n| pool.acquire(format!("{prefix}/{n}")).unwrap())
        .collect();
    let ids = guards.iter_mut().map(|guard| B::session(guard)).collect();
    for guard in guards {
        LockGuard::release(guard).unwrap();
    }
    ids
}

fn sessions_ended_while_idle_are_replaced_within_the_acquire<B: Backend>(prefix: &str) {
    // A pool of `new` tests no connection as it checks it out: the lock statement finds the
    // dead session, and the acquire goes on, on a live connection, as a restart needs.
    let pool = LockPool::new(B::manager()).unwrap();
    let size = pool.pool().max_size();
    for id in every_session::<B>(&pool, prefix, size) {
        B::kill(id);
    }
    let key = format!("{prefix}/after");
    let mut guard = pool
        .acquire(key.as_str())
        .expect("the retry found a live connection");
    assert!(B::holds(&mut guard, &key));
    LockGuard::release(guard).unwrap();
    for id in every_session::<B>(&pool, prefix, size) {
        B::kill(id);
    }
    let guard = pool.try_acquire(key.as_str()).unwrap();
    assert!(guard.is_some(), "a try goes through the retry too");
}

#[test]
fn postgres_sessions_ended_while_idle_are_replaced_within_the_acquire() {
    sessions_ended_while_idle_are_replaced_within_the_acquire::<Pg>("r2d2/pg/revive");
}

#[test]
fn mysql_sessions_ended_while_idle_are_replaced_within_the_acquire() {
    sessions_ended_while_idle_are_replaced_within_the_acquire::<My>("r2d2/my/revive");
}

fn an_acquire_is_retried_once_at_most<B: Backend>(prefix: &str) {
    // With checkout tests turned off by the user's builder, nothing drains the dead
    // connections: the first acquire meets one, retries once, meets the other, and reports it.
    let builder = r2d2::Pool::builder()
        .max_size(2)
        .test_on_check_out(false)
        .connection_timeout(Duration::from_secs(5));
    let pool = LockPool::with_builder(builder, B::manager()).unwrap();
    for id in every_session::<B>(&pool, prefix, 2) {
        B::kill(id);
    }
    let key = format!("{prefix}/after");
    let error = pool.acquire(key.as_str()).unwrap_err();
    assert!(error.session_ended(), "{error:?}");
    // Both dead connections are closed now, and a fresh one takes the lock.
    assert!(pool.try_acquire(key.as_str()).unwrap().is_some());
}

#[test]
fn postgres_an_acquire_is_retried_once_at_most() {
    an_acquire_is_retried_once_at_most::<Pg>("r2d2/pg/retry-once");
}

#[test]
fn mysql_an_acquire_is_retried_once_at_most() {
    an_acquire_is_retried_once_at_most::<My>("r2d2/my/retry-once");
}

/// A pooled PostgreSQL connection keeps the lock statements prepared from one guard to the
/// next, as a reused bare lock does: pooled acquires reach the prepared statements.
#[test]
fn postgres_pooled_locks_reuse_their_connections_prepared_statements() {
    let pool = pool_of::<Pg>(1);
    for round in 0..4 {
        let mut guard = pool.acquire(format!("r2d2/prepared/{round}")).unwrap();
        if round == 3 {
            let prepared: i64 = guard
                .query_one(
                    "SELECT count(*) FROM pg_prepared_statements \
                     WHERE statement LIKE '%pg_%advisory%' \
         AND statement NOT LIKE '%pg_prepared_statements%'",
                    &[],
                )
                .unwrap()
                .get(0);
            assert_eq!(prepared, 2, "lock and unlock");
        }
        LockGuard::release(guard).unwrap();
    }
}
