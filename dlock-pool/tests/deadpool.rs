//! `DeadpoolLockPool` over a real deadpool-postgres pool against a real PostgreSQL: clean
//! releases give connections back to the user's pool, anything in doubt takes them out of it
//! and closes them; the watcher, fencing, `with_lock` and the cancel of a dropped acquire.

use std::sync::Arc;
use std::time::Duration;

use dlock_pool::deadpool_postgres::{Config, Pool, Runtime};
use dlock_pool::{AsyncLock, DeadpoolLockGuard, DeadpoolLockPool, Error, LostReason};
use dlock_testkit as common;

/// A deadpool pool of at most `size` connections to the server under test.
fn user_pool(size: usize) -> Pool {
    let mut config = Config::new();
    config.url = Some(common::pg_url());
    config.pool = Some(dlock_pool::deadpool_postgres::PoolConfig::new(size));
    config
        .create_pool(Some(Runtime::Tokio1), common::postgres::tls())
        .unwrap()
}

/// The backend pid of the guard's session.
async fn pid(guard: &DeadpoolLockGuard) -> i32 {
    common::postgres::backend_pid_async(guard).await
}

/// Whether another pool can take `key` now.
async fn free(key: &str) -> bool {
    let other = DeadpoolLockPool::new(user_pool(1)).without_watcher();
    match other.try_acquire(key).await.unwrap() {
        Some(guard) => {
            DeadpoolLockGuard::release(guard).await.unwrap();
            true
        }
        None => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lock_gives_its_connection_back_and_a_dropped_one_closes_it() {
    let pool = user_pool(2);
    let locks = DeadpoolLockPool::new(pool.clone());
    let key = "deadpool/connections";
    let guard = locks.acquire(key).await.unwrap();
    let first = pid(&guard).await;
    assert!(!free(key).await, "held");
    DeadpoolLockGuard::release(guard).await.unwrap();
    assert!(free(key).await);
    assert_eq!(pool.status().size, 1);
    assert_eq!(pool.status().available, 1, "back in the user's pool");
    // The same connection serves the next lock, and the user's own work.
    let guard = locks.acquire(key).await.unwrap();
    assert_eq!(pid(&guard).await, first);
    drop(guard);
    assert_eq!(
        pool.status().size,
        0,
        "a guard dropped without release takes its connection out of the pool"
    );
    assert!(free(key).await, "closing the connection freed the lock");
    let mut guard = locks.acquire(key).await.unwrap();
    assert_ne!(pid(&guard).await, first, "a new connection");
    assert!(DeadpoolLockGuard::verify(&mut guard).await.unwrap());
    DeadpoolLockGuard::release(guard).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_is_reported_lost_and_its_connection_never_goes_back() {
    let pool = user_pool(2);
    let locks = DeadpoolLockPool::new(pool.clone()).watch_interval(Duration::from_millis(50));
    let key = "deadpool/killed";
    let guard = locks.acquire(key).await.unwrap();
    let holder = pid(&guard).await;
    let lost = DeadpoolLockGuard::lost(&guard);
    tokio::task::spawn_blocking(move || common::pg_terminate(holder))
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), lost)
        .await
        .expect("reported lost");
    assert_eq!(reason, LostReason::NotHeld);
    assert!(DeadpoolLockGuard::is_lost(&guard));
    let error = DeadpoolLockGuard::release(guard).await.unwrap_err();
    assert!(matches!(error, Error::LockLost { .. }), "{error:?}");
    // The user's pool hands out a live connection next, never the killed one.
    let client = pool.get().await.unwrap();
    assert_ne!(common::postgres::backend_pid_async(&client).await, holder);
    drop(client);
    assert!(free(key).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_acquire_ends_its_wait_and_leaves_nothing_held() {
    let key = "deadpool/dropped";
    let holder = DeadpoolLockPool::new(user_pool(1)).without_watcher();
    let held = holder.acquire(key).await.unwrap();
    let pool = user_pool(1);
    let tls = common::postgres::CountingTls::default();
    let locks = DeadpoolLockPool::new(pool.clone())
        .without_watcher()
        .tls(tls.clone());
    let dropped = tokio::time::timeout(Duration::from_millis(300), locks.acquire(key)).await;
    assert!(dropped.is_err(), "still waiting when dropped");
    assert_eq!(pool.status().size, 0, "the waiting connection was closed");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tls.made() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the cancel went through the pool's connector"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    DeadpoolLockGuard::release(held).await.unwrap();
    assert!(free(key).await, "the dropped acquire holds nothing");
    // The pool goes on.
    let guard = locks.try_acquire(key).await.unwrap().expect("free");
    DeadpoolLockGuard::release(guard).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_locks_hand_out_increasing_tokens_and_with_lock_lends_the_guard() {
    let locks = Arc::new(DeadpoolLockPool::new(user_pool(2)).fenced());
    locks.install_fencing().await.unwrap();
    let key = "deadpool/fenced";
    let first = locks
        .with_lock(key, async |guard: &mut DeadpoolLockGuard| {
            guard
                .simple_query("SELECT 1")
                .await
                .map_err(Error::backend)?;
            Ok::<_, Error>(DeadpoolLockGuard::fencing_token(guard).unwrap())
        })
        .await
        .unwrap();
    let guard = locks.acquire(key).await.unwrap();
    let second = DeadpoolLockGuard::fencing_token(&guard).unwrap();
    assert!(second > first, "{first} then {second}");
    let busy = locks
        .try_with_lock(key, async |_: &mut DeadpoolLockGuard| Ok::<_, Error>(()))
        .await
        .unwrap();
    assert!(busy.is_none(), "the key is held");
    DeadpoolLockGuard::release(guard).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadpool_lock_and_a_bare_lock_exclude_each_other() {
    let key = "deadpool/bare";
    let locks = DeadpoolLockPool::new(user_pool(1));
    let mut bare =
        dlock_pool::dlock_postgres::AsyncPgLock::new(common::postgres::connect_async().await, key);
    assert!(bare.try_acquire().await.unwrap());
    assert!(locks.try_acquire(key).await.unwrap().is_none());
    bare.release().await.unwrap();
    let guard = locks.try_acquire(key).await.unwrap().expect("free");
    assert!(!bare.try_acquire().await.unwrap());
    DeadpoolLockGuard::release(guard).await.unwrap();
}

/// A session that lives on without its lock (released behind the guard's back, as `DISCARD
/// ALL` or a pooler's reset does) is reported lost: the watcher asks for the hold itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_alive_without_its_lock_is_reported_lost() {
    let locks = DeadpoolLockPool::new(user_pool(2)).watch_interval(Duration::from_millis(50));
    let key = "deadpool/released-behind";
    let guard = locks.acquire(key).await.unwrap();
    guard
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), DeadpoolLockGuard::lost(&guard))
        .await
        .expect("reported lost");
    assert_eq!(reason, LostReason::NotHeld);
    assert!(free(key).await);
    let error = DeadpoolLockGuard::release(guard).await.unwrap_err();
    assert!(matches!(error, Error::LockLost { .. }), "{error:?}");
}

/// A pool used from one runtime, then from another after the first shut down, keeps
/// watching: its watcher starts again on the runtime of the next grant.
#[test]
fn the_watcher_outlives_the_runtime_of_the_first_grant() {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let (pool, locks) = first.block_on(async {
        let pool = user_pool(2);
        let locks = DeadpoolLockPool::new(pool.clone()).watch_interval(Duration::from_millis(50));
        let guard = locks.acquire("deadpool/runtimes").await.unwrap();
        DeadpoolLockGuard::release(guard).await.unwrap();
        (pool, locks)
    });
    drop(first);
    drop(pool);
    runtime().block_on(async {
        let guard = locks.acquire("deadpool/runtimes").await.unwrap();
        let holder = pid(&guard).await;
        tokio::task::spawn_blocking(move || common::pg_terminate(holder))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), DeadpoolLockGuard::lost(&guard))
            .await
            .expect("the second runtime's watcher reports the loss");
    });
}

/// Your own work on a connection between locks may throw away what dlock prepared there
/// (`DISCARD ALL`, `DEALLOCATE ALL`): the next lock on it still locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_after_your_discard_all_on_the_connection_still_locks() {
    let pool = user_pool(1);
    let locks = DeadpoolLockPool::new(pool.clone());
    let key = "deadpool/discarded";
    for _ in 0..3 {
        let guard = locks.acquire(key).await.unwrap();
        DeadpoolLockGuard::release(guard).await.unwrap();
    }
    pool.get()
        .await
        .unwrap()
        .batch_execute("DISCARD ALL")
        .await
        .unwrap();
    for _ in 0..3 {
        let guard = locks.acquire(key).await.unwrap();
        assert!(!free(key).await);
        DeadpoolLockGuard::release(guard).await.unwrap();
    }
    assert!(free(key).await);
}
