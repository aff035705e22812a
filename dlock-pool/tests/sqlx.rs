//! `SqlxLockPool` over real sqlx pools against real PostgreSQL and MariaDB: clean releases
//! give connections back to the user's pool, anything in doubt closes them; the watcher
//! (a killed session, a session reset under the lock), fencing, `with_lock`, exclusion with
//! the other flavours, and what a dropped acquire leaves (nothing). The contract suite runs
//! for both backends in `contract.rs`.

use std::time::Duration;

use dlock_pool::{Error, LostReason, SqlxBackend, SqlxLockGuard, SqlxLockPool};
use dlock_testkit as common;
use sqlx::{MySql, Postgres};

#[path = "support/sqlx_options.rs"]
mod sqlx_options;

/// What a test needs of a backend besides the pool: a sqlx pool of its own, the session id
/// of a guard, and the server's view from the side.
trait Backend: SqlxBackend {
    const PREFIX: &'static str;

    fn user_pool(size: u32) -> sqlx::Pool<Self>;

    /// The server's id of the guard's session (a pid, a connection id).
    async fn session_id(guard: &mut SqlxLockGuard<Self>) -> u64;

    /// The server's id of the session of a connection `pool` hands out now.
    async fn pooled_session_id(pool: &sqlx::Pool<Self>) -> u64;

    /// Ends session `id` from the side.
    fn kill(id: u64);

    /// Releases every lock of the guard's session behind dlock's back, as a pooler's reset
    /// would.
    async fn reset(guard: &mut SqlxLockGuard<Self>);

    /// Whether a bare lock of the backend's tokio flavour can take `key` now.
    async fn free(key: &str) -> bool;
}

impl Backend for Postgres {
    const PREFIX: &'static str = "sqlx-pool-pg";

    fn user_pool(size: u32) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(size)
            .connect_lazy_with(sqlx_options::postgres())
    }

    async fn session_id(guard: &mut SqlxLockGuard<Self>) -> u64 {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut **guard)
            .await
            .unwrap();
        u64::try_from(pid).unwrap()
    }

    async fn pooled_session_id(pool: &sqlx::PgPool) -> u64 {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(pool)
            .await
            .unwrap();
        u64::try_from(pid).unwrap()
    }

    fn kill(id: u64) {
        common::pg_terminate(i32::try_from(id).unwrap());
    }

    async fn reset(guard: &mut SqlxLockGuard<Self>) {
        sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut **guard)
            .await
            .unwrap();
    }

    async fn free(key: &str) -> bool {
        let client = common::postgres::connect_async().await;
        let mut lock = dlock_pool::dlock_postgres::AsyncPgLock::new(client, key);
        let free = dlock_pool::AsyncLock::try_acquire(&mut lock).await.unwrap();
        if free {
            dlock_pool::AsyncLock::release(&mut lock).await.unwrap();
        }
        free
    }
}

impl Backend for MySql {
    const PREFIX: &'static str = "sqlx-pool-my";

    fn user_pool(size: u32) -> sqlx::MySqlPool {
        sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(size)
            .connect_lazy_with(sqlx_options::mysql())
    }

    async fn session_id(guard: &mut SqlxLockGuard<Self>) -> u64 {
        sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut **guard)
            .await
            .unwrap()
    }

    async fn pooled_session_id(pool: &sqlx::MySqlPool) -> u64 {
        sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    fn kill(id: u64) {
        common::mysql::kill(u32::try_from(id).unwrap());
    }

    async fn reset(guard: &mut SqlxLockGuard<Self>) {
        sqlx::query("SELECT RELEASE_ALL_LOCKS()")
            .execute(&mut **guard)
            .await
            .unwrap();
    }

    async fn free(key: &str) -> bool {
        let conn = common::mysql::connect_async().await;
        let mut lock = dlock_pool::dlock_mysql::AsyncMySqlLock::new(conn, key);
        let free = dlock_pool::AsyncLock::try_acquire(&mut lock).await.unwrap();
        if free {
            dlock_pool::AsyncLock::release(&mut lock).await.unwrap();
        }
        free
    }
}

/// Whether `pool` has `idle` idle connections within a few seconds: sqlx returns a dropped
/// connection to its pool from a task of its own.
async fn idle_soon<DB: sqlx::Database>(pool: &sqlx::Pool<DB>, idle: usize) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pool.num_idle() != idle {
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

fn key<B: Backend>(name: &str) -> String {
    format!("{}/{name}", B::PREFIX)
}

/// A released lock gives its connection back to the user's pool, and the next lock reuses
/// it; a bare lock of the other flavour is kept out while a guard holds.
async fn connections_go_back_and_locks_exclude<B: Backend>() {
    let pool = B::user_pool(2);
    let locks = SqlxLockPool::new(pool.clone());
    let key = key::<B>("connections");
    let mut guard = locks.acquire(key.as_str()).await.unwrap();
    let first = B::session_id(&mut guard).await;
    assert!(!B::free(&key).await, "held");
    SqlxLockGuard::release(guard).await.unwrap();
    assert!(B::free(&key).await, "released");
    assert!(idle_soon(&pool, 1).await, "back in the user's pool");
    let mut guard = locks.acquire(key.as_str()).await.unwrap();
    assert_eq!(
        B::session_id(&mut guard).await,
        first,
        "the same connection"
    );
    assert!(SqlxLockGuard::verify(&mut guard).await.unwrap());
    SqlxLockGuard::release(guard).await.unwrap();
    // A try on a busy key gives its connection straight back.
    let other = SqlxLockPool::new(B::user_pool(1)).without_watcher();
    let held = locks.acquire(key.as_str()).await.unwrap();
    assert!(other.try_acquire(key.as_str()).await.unwrap().is_none());
    assert!(idle_soon(other.pool(), 1).await, "back in the user's pool");
    SqlxLockGuard::release(held).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_go_back_and_locks_exclude_on_postgres() {
    connections_go_back_and_locks_exclude::<Postgres>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_go_back_and_locks_exclude_on_mysql() {
    connections_go_back_and_locks_exclude::<MySql>().await;
}

/// A killed session is reported lost, its release says so, and its connection never goes
/// back: the next checkout of the user's pool is another session.
async fn a_killed_session_is_reported_lost<B: Backend>() {
    let pool = B::user_pool(2);
    let locks = SqlxLockPool::new(pool.clone()).watch_interval(Duration::from_millis(50));
    let key = key::<B>("killed");
    let mut guard = locks.acquire(key.as_str()).await.unwrap();
    let holder = B::session_id(&mut guard).await;
    let lost = SqlxLockGuard::lost(&guard);
    tokio::task::spawn_blocking(move || B::kill(holder))
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), lost)
        .await
        .expect("reported lost");
    assert_eq!(reason, LostReason::NotHeld);
    assert!(SqlxLockGuard::is_lost(&guard));
    let error = SqlxLockGuard::release(guard).await.unwrap_err();
    assert!(matches!(error, Error::LockLost { .. }), "{error:?}");
    assert!(B::free(&key).await);
    let mut guard = locks.acquire(key.as_str()).await.unwrap();
    assert_ne!(B::session_id(&mut guard).await, holder);
    SqlxLockGuard::release(guard).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_is_reported_lost_on_postgres() {
    a_killed_session_is_reported_lost::<Postgres>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_is_reported_lost_on_mysql() {
    a_killed_session_is_reported_lost::<MySql>().await;
}

/// A session that lives on without its lock (reset behind dlock's back) is reported lost:
/// the watcher asks for the hold, not the session. Its connection is closed, not reused.
async fn a_session_alive_without_its_lock_is_reported_lost<B: Backend>() {
    let pool = B::user_pool(2);
    let locks = SqlxLockPool::new(pool.clone()).watch_interval(Duration::from_millis(50));
    let key = key::<B>("reset");
    let mut guard = locks.acquire(key.as_str()).await.unwrap();
    let holder = B::session_id(&mut guard).await;
    B::reset(&mut guard).await;
    let reason = tokio::time::timeout(Duration::from_secs(5), SqlxLockGuard::lost(&guard))
        .await
        .expect("reported lost");
    assert_eq!(reason, LostReason::NotHeld);
    assert!(B::free(&key).await, "the reset freed the key");
    assert!(SqlxLockGuard::release(guard).await.is_err());
    // The lost guard's connection was closed: every connection the pool hands out now is
    // another session.
    let id = B::pooled_session_id(&pool).await;
    assert_ne!(
        id, holder,
        "the lost lock's connection went back to the pool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_alive_without_its_lock_is_reported_lost_on_postgres() {
    a_session_alive_without_its_lock_is_reported_lost::<Postgres>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_alive_without_its_lock_is_reported_lost_on_mysql() {
    a_session_alive_without_its_lock_is_reported_lost::<MySql>().await;
}

/// A dropped acquire that was waiting ends its wait in the server and leaves nothing held;
/// the pool goes on.
async fn a_dropped_acquire_leaves_nothing_held<B: Backend>() {
    let key = key::<B>("dropped");
    let holder = SqlxLockPool::new(B::user_pool(1)).without_watcher();
    let held = holder.acquire(key.as_str()).await.unwrap();
    let locks = SqlxLockPool::new(B::user_pool(1)).without_watcher();
    let dropped =
        tokio::time::timeout(Duration::from_millis(300), locks.acquire(key.as_str())).await;
    assert!(dropped.is_err(), "still waiting when dropped");
    SqlxLockGuard::release(held).await.unwrap();
    // The dropped wait's slice ends within 400 ms; whatever it got is released by then.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(guard) = locks.try_acquire(key.as_str()).await.unwrap() {
            SqlxLockGuard::release(guard).await.unwrap();
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped acquire still holds"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(B::free(&key).await, "nothing left held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_acquire_leaves_nothing_held_on_postgres() {
    a_dropped_acquire_leaves_nothing_held::<Postgres>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_acquire_leaves_nothing_held_on_mysql() {
    a_dropped_acquire_leaves_nothing_held::<MySql>().await;
}

/// Fenced locks hand out increasing tokens; `with_lock` lends the guard; a busy key is
/// `None` from `try_with_lock`.
async fn fencing_and_with_lock<B: Backend>() {
    let locks = SqlxLockPool::new(B::user_pool(2)).fenced();
    locks.install_fencing().await.unwrap();
    let key = key::<B>("fenced");
    let first = locks
        .with_lock(key.as_str(), async |guard: &mut SqlxLockGuard<B>| {
            Ok::<_, Error>(SqlxLockGuard::fencing_token(guard).unwrap())
        })
        .await
        .unwrap();
    let guard = locks.acquire(key.as_str()).await.unwrap();
    let second = SqlxLockGuard::fencing_token(&guard).unwrap();
    assert!(second > first, "{first} then {second}");
    let busy = locks
        .try_with_lock(key.as_str(), async |_: &mut SqlxLockGuard<B>| {
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert!(busy.is_none());
    SqlxLockGuard::release(guard).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_and_with_lock_on_postgres() {
    fencing_and_with_lock::<Postgres>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_and_with_lock_on_mysql() {
    fencing_and_with_lock::<MySql>().await;
}

/// On MySQL the watcher's marker lock stays on a pooled session and is named again: a
/// hundred acquires on one connection leave one marker, not a hundred.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_mysql_session_keeps_one_marker_lock() {
    let locks = SqlxLockPool::new(MySql::user_pool(1));
    let key = key::<MySql>("marker");
    let mut id = 0;
    for _ in 0..100 {
        let mut guard = locks.acquire(key.as_str()).await.unwrap();
        id = MySql::session_id(&mut guard).await;
        SqlxLockGuard::release(guard).await.unwrap();
    }
    let markers: i64 = tokio::task::spawn_blocking(move || {
        use mysql::prelude::Queryable;
        common::my()
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.METADATA_LOCK_INFO \
                 WHERE THREAD_ID = ? AND LOCK_TYPE = 'User lock'",
                (id,),
            )
            .unwrap()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        markers, 1,
        "one marker lock on the session, and nothing else held"
    );
}

/// The statements a MySQL session has run that a lock sends (`Com_select`, `Com_set_option`).
async fn my_statements(conn: &mut sqlx::MySqlConnection) -> u64 {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SHOW SESSION STATUS WHERE Variable_name IN ('Com_select', 'Com_set_option')",
    )
    .fetch_all(conn)
    .await
    .unwrap();
    rows.iter()
        .map(|(_, count)| count.parse::<u64>().unwrap())
        .sum()
}

/// Once a check passed on one of the pool's sessions, a MySQL lock sends one statement, its
/// `GET_LOCK` with the session's mark beside it; on a session that lost its mark the grant
/// goes back and the whole check runs before the lock counts as held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_mysql_lock_locks_first_and_checks_a_session_without_its_mark() {
    let pool = MySql::user_pool(1);
    let locks = SqlxLockPool::new(pool.clone());
    let key = key::<MySql>("mark-beside");
    SqlxLockGuard::release(locks.acquire(key.as_str()).await.unwrap())
        .await
        .unwrap();
    assert!(idle_soon(&pool, 1).await);

    let before = my_statements(&mut pool.acquire().await.unwrap()).await;
    let mut guard = locks.acquire(key.as_str()).await.unwrap();
    assert_eq!(
        my_statements(&mut guard).await - before,
        1,
        "one lock statement"
    );
    assert!(!MySql::free(&key).await, "held");
    SqlxLockGuard::release(guard).await.unwrap();
    assert!(idle_soon(&pool, 1).await);

    // The mark gone (as a reset would take it): the lock statement, its give-back, the
    // version, the whole check with the lock, and the mark.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET @dlock_deployment_checked = NULL")
        .execute(&mut *conn)
        .await
        .unwrap();
    let before = my_statements(&mut conn).await;
    drop(conn);
    assert!(idle_soon(&pool, 1).await);
    let mut guard = locks.acquire(key.as_str()).await.unwrap();
    assert_eq!(my_statements(&mut guard).await - before, 5, "checked again");
    assert!(!MySql::free(&key).await, "held");
    SqlxLockGuard::release(guard).await.unwrap();
    assert!(MySql::free(&key).await, "released");
}

/// The dlock gates prepared on the guard's PostgreSQL session.
async fn pg_gates(guard: &mut SqlxLockGuard<Postgres>) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM pg_prepared_statements WHERE name LIKE 'dlock\\_%'")
        .fetch_all(&mut **guard)
        .await
        .unwrap()
}

/// On PostgreSQL a pooled lock goes through its session's prepared gate: prepared once on a
/// checked session, and again after it was deallocated; locks exclude either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_postgres_lock_prepares_its_sessions_gate_once_and_again_when_it_is_gone() {
    let pool = Postgres::user_pool(1);
    let locks = SqlxLockPool::new(pool.clone());
    let key = key::<Postgres>("prepared-gate");
    let mut guard = locks.acquire(key.as_str()).await.unwrap();
    assert!(
        pg_gates(&mut guard).await.is_empty(),
        "the first grant checks"
    );
    SqlxLockGuard::release(guard).await.unwrap();
    for _ in 0..3 {
        let mut guard = locks.acquire(key.as_str()).await.unwrap();
        assert_eq!(
            pg_gates(&mut guard).await.len(),
            1,
            "one gate, prepared once"
        );
        assert!(!Postgres::free(&key).await, "held");
        SqlxLockGuard::release(guard).await.unwrap();
        assert!(Postgres::free(&key).await, "released");
    }

    let mut guard = locks.acquire(key.as_str()).await.unwrap();
    for gate in pg_gates(&mut guard).await {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DEALLOCATE {gate}")))
            .execute(&mut *guard)
            .await
            .unwrap();
    }
    SqlxLockGuard::release(guard).await.unwrap();
    let mut guard = locks.acquire(key.as_str()).await.unwrap();
    assert!(!Postgres::free(&key).await, "held without its gate");
    assert_eq!(pg_gates(&mut guard).await.len(), 1, "prepared again");
    SqlxLockGuard::release(guard).await.unwrap();
    assert!(Postgres::free(&key).await, "released");
}
