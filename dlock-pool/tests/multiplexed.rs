//! `AsyncMultiplexedPool`: many locks over a few shared sessions, on PostgreSQL and MariaDB,
//! against real servers. Exclusion across pools (as across processes), no reentrancy within
//! one, sessions that go back to the pool, lost sessions, dropped futures, fencing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use dlock_pool::{
    AsyncLockPool, AsyncMultiplexedGuard, AsyncMultiplexedPool, AsyncMySqlManager, Error,
    KeyPolicy, MultiplexedManager,
};
use dlock_testkit as common;
use mysql_async::prelude::Queryable;

/// What a test needs of a backend: its pool, and a look at its sessions from the side.
trait Backend: 'static {
    type Manager: MultiplexedManager;
    fn manager() -> Self::Manager;
    /// The manager, connecting to the server through a proxy on `port`.
    fn manager_via(port: u16) -> Self::Manager;
    /// The server's port.
    fn server_port() -> u16;
    /// The sessions that hold a lock on any of `keys`, and how many of them each holds.
    async fn holders_of(keys: &[String]) -> HashMap<u64, usize>;
    /// Ends session `id` from the side.
    async fn terminate(id: u64);
}

struct Pg;

impl Backend for Pg {
    type Manager = PostgresConnectionManager<common::postgres::Tls>;

    fn manager() -> Self::Manager {
        PostgresConnectionManager::new(common::pg_url().parse().unwrap(), common::postgres::tls())
    }

    fn manager_via(port: u16) -> Self::Manager {
        let url = common::pg_url();
        let server = format!(":{}/", Self::server_port());
        let url = url.replacen(&server, &format!(":{port}/"), 1);
        PostgresConnectionManager::new(url.parse().unwrap(), common::postgres::tls())
    }

    fn server_port() -> u16 {
        common::port_of(&common::pg_url())
    }

    async fn holders_of(keys: &[String]) -> HashMap<u64, usize> {
        let wanted: HashSet<_> = keys
            .iter()
            .map(|key| KeyPolicy::default().pg_key(&key.as_str().into()).unwrap())
            .collect();
        let observer = common::postgres::connect_async().await;
        let mut holders = HashMap::new();
        let sessions = dlock_pool::dlock_postgres::tokio::holder_sessions(&observer, None);
        for session in sessions.await.unwrap() {
            if wanted.contains(&session.key) {
                let pid = u64::from(session.holder.pid.unsigned_abs());
                *holders.entry(pid).or_insert(0) += 1;
            }
        }
        holders
    }

    async fn terminate(id: u64) {
        let observer = common::postgres::connect_async().await;
        let pid = i32::try_from(id).unwrap();
        observer
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
    }
}

struct My;

impl Backend for My {
    type Manager = AsyncMySqlManager;

    fn manager() -> Self::Manager {
        AsyncMySqlManager::new(common::mysql::opts_async())
    }

    fn manager_via(port: u16) -> Self::Manager {
        // On a loopback address mysql_async would move to the server's Unix socket, past
        // the proxy.
        let opts = mysql_async::OptsBuilder::from_opts(common::mysql::opts_async())
            .tcp_port(port)
            .prefer_socket(false);
        AsyncMySqlManager::new(opts.into())
    }

    fn server_port() -> u16 {
        common::port_of(&common::mysql::mysql_url())
    }

    /// Through MariaDB's `metadata_lock_info` plugin, which the matrix's servers load.
    async fn holders_of(keys: &[String]) -> HashMap<u64, usize> {
        let wanted: HashSet<&str> = keys.iter().map(String::as_str).collect();
        let mut observer = common::mysql::connect_async().await;
        let mut holders = HashMap::new();
        let sessions = dlock_pool::dlock_mysql::tokio::holder_sessions(&mut observer, None);
        for session in sessions.await.unwrap() {
            if wanted.contains(session.name.as_str()) {
                *holders.entry(session.id).or_insert(0) += 1;
            }
        }
        holders
    }

    async fn terminate(id: u64) {
        let mut observer = common::mysql::connect_async().await;
        observer
            .query_drop(format!("KILL CONNECTION {id}"))
            .await
            .unwrap();
    }
}

async fn multiplexed<B: Backend>() -> AsyncMultiplexedPool<B::Manager> {
    AsyncLockPool::new(B::manager())
        .await
        .unwrap()
        .watch_interval(Duration::from_millis(50))
        // A round over a thousand locks on a saturated machine can take longer than the
        // default bound of three intervals; unknown would count as lost.
        .lost_after_unconfirmed(Duration::from_secs(10))
        .multiplexed()
}

/// `count` keys under `prefix` (the backends' servers are apart, so their tests share names).
fn keys(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("{prefix}/{index}"))
        .collect()
}

/// Runs a test on each backend that multiplexes, each as a test of its own.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test::<super::Pg>().await;
                }
            )*
        }
        mod on_mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test::<super::My>().await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_thousand_locks_ride_on_a_few_sessions_and_exclude_another_pool,
    the_same_key_twice_from_one_pool_waits_as_from_another_process,
    a_killed_shared_session_reports_every_lock_on_it_lost,
    a_reset_connection_reports_every_lock_on_it_lost,
    dropped_tries_and_guards_leave_nothing_held,
    sixty_four_tasks_over_a_thousand_keys_never_overlap,
    one_key_under_contention_never_has_two_holders,
    fenced_multiplexed_locks_hand_out_increasing_tokens,
    tries_that_start_together_share_one_new_session,
);

async fn a_thousand_locks_ride_on_a_few_sessions_and_exclude_another_pool<B: Backend>() {
    let locks = multiplexed::<B>().await;
    let keys = keys("mux/thousand", 1000);
    let mut held = Vec::new();
    for key in &keys {
        held.push(
            locks
                .try_acquire(key.as_str())
                .await
                .unwrap()
                .expect("free"),
        );
    }
    assert!(locks.shared_sessions() <= 4, "{}", locks.shared_sessions());
    let holders = B::holders_of(&keys).await;
    assert!(holders.len() <= 4, "{holders:?}");
    assert_eq!(holders.values().sum::<usize>(), 1000);
    // Another pool, as another process would, is kept out of every one of them.
    let other = multiplexed::<B>().await;
    for key in keys.iter().step_by(97) {
        assert!(other.try_acquire(key.as_str()).await.unwrap().is_none());
    }
    // Released concurrently: pipelined on the shared sessions.
    let releases: Vec<_> = held
        .into_iter()
        .map(|guard| tokio::spawn(AsyncMultiplexedGuard::release(guard)))
        .collect();
    for release in releases {
        if let Err(error) = release.await.unwrap() {
            panic!("{error:?}");
        }
    }
    assert_eq!(
        locks.shared_sessions(),
        0,
        "sessions that hold nothing go back"
    );
    assert!(B::holders_of(&keys).await.is_empty());
    let guard = other
        .try_acquire(keys[0].as_str())
        .await
        .unwrap()
        .expect("free");
    AsyncMultiplexedGuard::release(guard).await.unwrap();
}

async fn the_same_key_twice_from_one_pool_waits_as_from_another_process<B: Backend>() {
    let locks = Arc::new(multiplexed::<B>().await);
    let key = "mux/twice";
    let first = locks.try_acquire(key).await.unwrap().expect("free");
    // Its session would grant a second hold by reentrancy: the pool refuses it instead.
    assert!(locks.try_acquire(key).await.unwrap().is_none());
    assert!(
        locks
            .acquire_timeout(key, Duration::from_millis(200))
            .await
            .unwrap()
            .is_none()
    );
    let waiter = tokio::spawn({
        let locks = Arc::clone(&locks);
        async move { locks.acquire(key).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the second acquire waits");
    AsyncMultiplexedGuard::release(first).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("granted once the first let go")
        .unwrap()
        .unwrap();
    // The waiting session joined the shared set, and tries ride on it now.
    assert_eq!(locks.shared_sessions(), 1);
    let other = locks.try_acquire("mux/twice-other").await.unwrap().unwrap();
    assert_eq!(locks.shared_sessions(), 1);
    assert_eq!(
        B::holders_of(&[key.to_owned(), "mux/twice-other".to_owned()])
            .await
            .len(),
        1
    );
    AsyncMultiplexedGuard::release(second).await.unwrap();
    AsyncMultiplexedGuard::release(other).await.unwrap();
    assert_eq!(locks.shared_sessions(), 0);
}

async fn a_killed_shared_session_reports_every_lock_on_it_lost<B: Backend>() {
    let locks = multiplexed::<B>().await;
    let keys = keys("mux/lost", 20);
    let mut held = Vec::new();
    for key in &keys {
        held.push(locks.try_acquire(key.as_str()).await.unwrap().unwrap());
    }
    let holders = B::holders_of(&keys).await;
    assert_eq!(holders.len(), 1);
    for pid in holders.keys() {
        B::terminate(*pid).await;
    }
    for guard in &held {
        tokio::time::timeout(Duration::from_secs(5), AsyncMultiplexedGuard::lost(guard))
            .await
            .expect("every lock of the session is reported lost");
    }
    for guard in held {
        let error = AsyncMultiplexedGuard::release(guard).await.unwrap_err();
        assert!(matches!(error, Error::LockLost { .. }), "{error:?}");
    }
    assert_eq!(locks.shared_sessions(), 0);
    // The pool goes on, on a new session.
    let guard = locks.try_acquire(keys[0].as_str()).await.unwrap().unwrap();
    let mut guard = guard;
    assert!(AsyncMultiplexedGuard::verify(&mut guard).await.unwrap());
    AsyncMultiplexedGuard::release(guard).await.unwrap();
}

/// A connection reset on the way (a NAT or a middlebox forgetting the flow): the server ends
/// the shared session, freeing its locks, and every lock on it is reported lost; another
/// pool then takes the keys, and the reset pool goes on over a new connection.
async fn a_reset_connection_reports_every_lock_on_it_lost<B: Backend>() {
    let proxy = common::proxy::ResettingProxy::start(B::server_port()).await;
    let locks = AsyncLockPool::new(B::manager_via(proxy.port()))
        .await
        .unwrap()
        .watch_interval(Duration::from_millis(50))
        .multiplexed();
    let keys = keys("mux/reset", 20);
    let mut held = Vec::new();
    for key in &keys {
        held.push(locks.try_acquire(key.as_str()).await.unwrap().unwrap());
    }
    proxy.reset_all();
    for guard in &held {
        tokio::time::timeout(Duration::from_secs(5), AsyncMultiplexedGuard::lost(guard))
            .await
            .expect("every lock of the reset session is reported lost");
    }
    let other = multiplexed::<B>().await;
    let mut taken = Vec::new();
    for key in &keys {
        // The server notices the reset when it next reads from the session: soon, not at once.
        let mut guard = None;
        for _ in 0..100 {
            guard = other.try_acquire(key.as_str()).await.unwrap();
            if guard.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        taken.push(guard.expect("the reset session's locks are free"));
    }
    for guard in held {
        let error = AsyncMultiplexedGuard::release(guard).await.unwrap_err();
        assert!(matches!(error, Error::LockLost { .. }), "{error:?}");
    }
    assert_eq!(locks.shared_sessions(), 0);
    for guard in taken {
        AsyncMultiplexedGuard::release(guard).await.unwrap();
    }
    let guard = locks.try_acquire(keys[0].as_str()).await.unwrap().unwrap();
    AsyncMultiplexedGuard::release(guard).await.unwrap();
}

async fn dropped_tries_and_guards_leave_nothing_held<B: Backend>() {
    let locks = multiplexed::<B>().await;
    let keys = keys("mux/dropped", 200);
    // A shared session to ride on, so that a try's first poll sends its statement.
    let anchor = locks
        .try_acquire("mux/dropped-anchor")
        .await
        .unwrap()
        .unwrap();
    // Tries dropped in flight: sent, and granted in the server after the drop.
    for key in &keys[..100] {
        common::poll_once_and_drop(locks.try_acquire(key.as_str())).await;
    }
    // And at other points: before sending, or after the reply.
    for (index, key) in keys[100..].iter().enumerate() {
        let delay = Duration::from_micros(u64::try_from(index % 7).unwrap() * 150);
        let _ = tokio::time::timeout(delay, locks.try_acquire(key.as_str())).await;
    }
    AsyncMultiplexedGuard::release(anchor).await.unwrap();
    // Guards dropped without release: a task releases each.
    for key in keys.iter().take(20) {
        if let Ok(Some(guard)) = locks.try_acquire(key.as_str()).await {
            drop(guard);
        }
    }
    let mut settled = false;
    for _ in 0..500 {
        if locks.shared_sessions() == 0 && B::holders_of(&keys).await.is_empty() {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(settled, "still held: {:?}", B::holders_of(&keys).await);
    let other = multiplexed::<B>().await;
    for key in &keys {
        let guard = other
            .try_acquire(key.as_str())
            .await
            .unwrap()
            .expect("free");
        AsyncMultiplexedGuard::release(guard).await.unwrap();
    }
}

async fn sixty_four_tasks_over_a_thousand_keys_never_overlap<B: Backend>() {
    // Two pools, as two processes: each key's holders are counted across both.
    let pools = [
        Arc::new(multiplexed::<B>().await),
        Arc::new(multiplexed::<B>().await),
    ];
    let holders: Arc<Vec<AtomicUsize>> = Arc::new((0..1000).map(|_| AtomicUsize::new(0)).collect());
    let overlaps = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..64_usize)
        .map(|task| {
            let locks = Arc::clone(&pools[task % 2]);
            let (holders, overlaps, grants) = (
                Arc::clone(&holders),
                Arc::clone(&overlaps),
                Arc::clone(&grants),
            );
            tokio::spawn(async move {
                for round in 0..40_usize {
                    let index = (task * 7919 + round * 104_729) % 1000;
                    let key = format!("mux/stress/{index}");
                    let guard = if round % 4 == 0 {
                        locks
                            .acquire_timeout(key.as_str(), Duration::from_secs(5))
                            .await
                            .unwrap()
                    } else {
                        locks.try_acquire(key.as_str()).await.unwrap()
                    };
                    let Some(guard) = guard else { continue };
                    grants.fetch_add(1, Ordering::Relaxed);
                    if holders[index].fetch_add(1, Ordering::SeqCst) != 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                    holders[index].fetch_sub(1, Ordering::SeqCst);
                    AsyncMultiplexedGuard::release(guard).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    assert!(grants.load(Ordering::Relaxed) > 1000);
    for locks in &pools {
        assert_eq!(locks.shared_sessions(), 0);
    }
}

/// One key, many tasks in two pools (as in two processes), every acquire likely to wait:
/// each grant on a waiting session joins the shared set while tries of the key are under
/// way, and a try must never ride the joined session, whose reentrancy would grant it.
async fn one_key_under_contention_never_has_two_holders<B: Backend>() {
    let pools = [
        Arc::new(multiplexed::<B>().await),
        Arc::new(multiplexed::<B>().await),
    ];
    let holders = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let key = "mux/contended";
    let tasks: Vec<_> = (0..12_usize)
        .map(|task| {
            let locks = Arc::clone(&pools[task % 2]);
            let (holders, overlaps) = (Arc::clone(&holders), Arc::clone(&overlaps));
            tokio::spawn(async move {
                let mut grants = 0;
                while grants < 25 {
                    // Half the tasks wait in the server; the others keep trying, so that some
                    // try is under way whenever a waiting session is granted and joins.
                    let guard = if task % 4 < 2 {
                        locks.acquire(key).await.unwrap()
                    } else {
                        match locks.try_acquire(key).await.unwrap() {
                            Some(guard) => guard,
                            None => {
                                tokio::task::yield_now().await;
                                continue;
                            }
                        }
                    };
                    grants += 1;
                    if holders.fetch_add(1, Ordering::SeqCst) != 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_micros(300)).await;
                    holders.fetch_sub(1, Ordering::SeqCst);
                    AsyncMultiplexedGuard::release(guard).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two holders at once");
    assert!(B::holders_of(&[key.to_owned()]).await.is_empty());
    for locks in &pools {
        assert_eq!(locks.shared_sessions(), 0);
    }
}

async fn fenced_multiplexed_locks_hand_out_increasing_tokens<B: Backend>() {
    let pool = AsyncLockPool::new(B::manager()).await.unwrap().fenced();
    pool.install_fencing().await.unwrap();
    let locks = pool.multiplexed();
    let mut last = 0;
    for _ in 0..3 {
        let token = locks
            .with_lock("mux/fenced", async |guard| {
                Ok::<_, Error>(AsyncMultiplexedGuard::fencing_token(guard).expect("fenced"))
            })
            .await
            .unwrap();
        assert!(token > last, "{token} after {last}");
        last = token;
    }
    let ran = locks
        .with_lock_timeout("mux/fenced", Duration::from_secs(5), async |guard| {
            Ok::<_, Error>(AsyncMultiplexedGuard::fencing_token(guard).expect("fenced") > last)
        })
        .await
        .unwrap();
    assert_eq!(ran, Some(true));
    // A shared pool's locks cannot ride on shared sessions: said plainly.
    let shared = AsyncLockPool::new(B::manager())
        .await
        .unwrap()
        .shared()
        .multiplexed();
    let error = shared.try_acquire("mux/fenced").await.unwrap_err();
    assert!(matches!(error, Error::Unsupported { .. }), "{error:?}");
}

async fn tries_that_start_together_share_one_new_session<B: Backend>() {
    // A pool of two connections, and 64 tries before any session is shared: they wait for
    // the one being opened instead of each asking the pool for a connection of its own.
    let pool = AsyncLockPool::with_builder(
        bb8::Pool::builder()
            .max_size(2)
            .connection_timeout(Duration::from_secs(3)),
        B::manager(),
    )
    .await
    .unwrap();
    let locks = Arc::new(pool.multiplexed());
    let tries: Vec<_> = (0..64)
        .map(|task| {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move { locks.try_acquire(format!("mux/together/{task}")).await })
        })
        .collect();
    let mut held = Vec::new();
    for attempt in tries {
        held.push(attempt.await.unwrap().unwrap().expect("free"));
    }
    assert_eq!(locks.shared_sessions(), 1);
    for guard in held {
        AsyncMultiplexedGuard::release(guard).await.unwrap();
    }
    assert_eq!(locks.shared_sessions(), 0);
}

/// A pool whose statements were being sent by a task of a runtime that shut down under it
/// goes on from another runtime: nothing waits forever for a task that is gone.
fn a_pool_outlives_the_runtime_that_sent_its_statements<B: Backend>() {
    let runtime = |workers| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime(1);
    let locks = Arc::new(first.block_on(multiplexed::<B>()));
    let anchor = first
        .block_on(locks.try_acquire("mux/runtimes-anchor"))
        .unwrap()
        .unwrap();
    for task in 0..64 {
        let locks = Arc::clone(&locks);
        first.spawn(async move {
            let _ = locks.try_acquire(format!("mux/runtimes/{task}")).await;
        });
    }
    // Under the tries, some of them out as statements.
    std::thread::sleep(Duration::from_millis(5));
    first.shutdown_background();
    let second = runtime(2);
    second.block_on(async {
        // The anchor's session is still shared: the next try rides on it first. Until the
        // first runtime has dropped its tasks (its threads may not run for a while on a busy
        // machine), a statement that one of them was sending holds up the session, and the
        // key of a try whose settlement waits behind it stays claimed: the pool goes on once
        // they are gone.
        let mut granted = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !granted && std::time::Instant::now() < deadline {
            let attempt = tokio::time::timeout(
                Duration::from_secs(10),
                locks.try_acquire("mux/runtimes-after"),
            )
            .await
            .expect("an answer, not a wait for a task that is gone");
            if let Ok(Some(guard)) = attempt {
                AsyncMultiplexedGuard::release(guard).await.unwrap();
                granted = true;
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert!(
            granted,
            "the pool goes on on sessions of the second runtime"
        );
        // Its session died with the first runtime's tasks, or lives on: either way the
        // release answers.
        let released = tokio::time::timeout(
            Duration::from_secs(10),
            AsyncMultiplexedGuard::release(anchor),
        );
        let _ = released.await.expect("an answer");
    });
}

#[test]
fn on_postgres_a_pool_outlives_the_runtime_that_sent_its_statements() {
    a_pool_outlives_the_runtime_that_sent_its_statements::<Pg>();
}

#[test]
fn on_mysql_a_pool_outlives_the_runtime_that_sent_its_statements() {
    a_pool_outlives_the_runtime_that_sent_its_statements::<My>();
}
