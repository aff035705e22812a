//! Where a session lock cannot exclude, against the real things: pgbouncer in transaction and
//! statement pooling modes, and hot standbys. They run on the servers of the matrix's
//! `db:deployments` row: `cargo xtask test-matrix --only db:deployments`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use dlock_postgres::{
    AsyncLock, AsyncPgLock, AsyncPgXactLock, Deployment, Lock, PgKey, PgLock, PgXactLock,
    check_deployment, check_deployment_async, check_session_pooler_async,
};
use dlock_testkit::deployments::{self, refused_as};
use dlock_testkit::postgres::pg_url;
use postgres::{Client, NoTls};

/// How many times each detection runs: every one of them must decide the same way.
const RUNS: usize = 50;

fn connect(url: &str) -> Client {
    Client::connect(url, NoTls).unwrap_or_else(|error| panic!("connect to {url}: {error}"))
}

async fn connect_async(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("connect to {url}: {error}"));
    tokio::spawn(connection);
    client
}

/// The advisory locks on `key` any session of the primary holds now.
fn holders_on_primary(key: i64) -> i64 {
    connect(&pg_url())
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $1",
            &[&key],
        )
        .unwrap()
        .get(0)
}

#[test]
fn a_transaction_or_statement_pooler_is_refused_every_time_with_a_second_connection() {
    for (mode, url) in [
        ("transaction", deployments::transaction_pooler()),
        ("statement", deployments::statement_pooler()),
    ] {
        for run in 0..RUNS {
            let (mut first, mut second) = (connect(&url), connect(&url));
            let error = check_deployment(&mut first, Some(&mut second))
                .expect_err("a transaction pooler must be refused");
            assert!(
                refused_as(&error, Deployment::TransactionPooler),
                "{mode} pooling, run {run}: {error:?}"
            );
        }
    }
}

/// A bare async lock proves its connection direct by its cancel key: through pgbouncer in
/// transaction or statement mode, idle and with default settings, every acquire is refused
/// and nothing is held; in session mode too, until the user vouches for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_async_lock_through_any_pooler_is_refused_until_vouched_for() {
    let key = "deployments/bare-async";
    for (mode, url) in [
        ("transaction", deployments::transaction_pooler()),
        ("statement", deployments::statement_pooler()),
        ("round robin", deployments::round_robin_pooler()),
        ("two processes on one port", deployments::reuseport_pooler()),
        ("session", deployments::session_pooler()),
    ] {
        for run in 0..RUNS {
            let mut lock = AsyncPgLock::new(connect_async(&url).await, key);
            let error = lock.try_acquire().await.unwrap_err();
            assert!(
                refused_as(&error, Deployment::UnprovenPooler),
                "{mode} pooling, run {run}: {error:?}"
            );
            assert!(!lock.is_acquired());
        }
        let held = tokio::task::block_in_place(|| holders_on_primary(key_of(key)));
        assert_eq!(held, 0, "{mode}: nothing held");
    }
    // Vouched for, a session pooler locks, and the lock excludes.
    let url = deployments::session_pooler();
    let mut lock = AsyncPgLock::new(connect_async(&url).await, key).trust_session_pooler();
    assert!(lock.try_acquire().await.unwrap());
    let mut other = AsyncPgLock::new(connect_async(&url).await, key).trust_session_pooler();
    assert!(!other.try_acquire().await.unwrap());
    lock.release().await.unwrap();
    // Direct: proven, and never refused.
    let mut direct = AsyncPgLock::new(connect_async(&pg_url()).await, key);
    for _ in 0..RUNS {
        assert!(direct.try_acquire().await.unwrap());
        direct.release().await.unwrap();
    }
}

#[test]
fn direct_and_session_pooled_connections_are_never_refused() {
    for (what, url) in [
        ("direct", pg_url()),
        ("session pooling", deployments::session_pooler()),
    ] {
        for run in 0..RUNS {
            let (mut first, mut second) = (connect(&url), connect(&url));
            check_deployment(&mut first, Some(&mut second))
                .unwrap_or_else(|error| panic!("{what}, run {run}: {error}"));
            // A bare lock's own check passes too, and the lock excludes.
            let mut lock = PgLock::new(first, "deployments/never-refused");
            assert!(lock.try_acquire().unwrap(), "{what}, run {run}");
            let mut other = PgLock::new(second, "deployments/never-refused");
            assert!(!other.try_acquire().unwrap(), "{what}, run {run}");
            lock.release().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_pooler_under_load_is_refused_every_time() {
    for (mode, url) in [
        ("transaction", deployments::transaction_pooler()),
        ("round robin", deployments::round_robin_pooler()),
        ("two processes on one port", deployments::reuseport_pooler()),
    ] {
        // Sixteen clients keep the pooler's server sessions busy while the check runs.
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Vec::new();
        for _ in 0..16 {
            let client = connect_async(&url).await;
            let stop = Arc::clone(&stop);
            load.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    client.simple_query("SELECT pg_sleep(0.001)").await.unwrap();
                }
            }));
        }
        for run in 0..RUNS {
            let (first, second) = (connect_async(&url).await, connect_async(&url).await);
            // The cancel key proves a pooler, whatever its reuse order or processes.
            let error = check_deployment_async(&first, Some(&second))
                .await
                .expect_err("a transaction pooler under load must be refused");
            assert!(
                refused_as(&error, Deployment::UnprovenPooler),
                "{mode}, run {run}: {error:?}"
            );
            let mut lock = AsyncPgLock::new(first, "deployments/under-load");
            let error = lock.try_acquire().await.unwrap_err();
            assert!(
                refused_as(&error, Deployment::UnprovenPooler),
                "{mode}, run {run}: {error:?}"
            );
            if mode == "transaction" {
                // Vouched for as a session pooler, the second connection shows it shares
                // sessions (an inference: the reuse orders above can hide it).
                let first = connect_async(&url).await;
                let error = check_session_pooler_async(&first, Some(&second))
                    .await
                    .expect_err("a transaction pooler under load must be refused");
                assert!(
                    refused_as(&error, Deployment::TransactionPooler),
                    "run {run}, vouched for: {error:?}"
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        for task in load {
            task.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_lock_through_a_busy_transaction_pooler_is_refused_not_silent() {
    // One connection alone: its first check, or an unlock that runs on another session than
    // the one it knows, says so. Every cycle either works on the lock's own session or is
    // refused; the busy pooler moves statements soon.
    let url = deployments::transaction_pooler();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..16 {
        let client = connect_async(&url).await;
        let stop = Arc::clone(&stop);
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client.simple_query("SELECT pg_sleep(0.001)").await.unwrap();
            }
        }));
    }
    let mut lock =
        AsyncPgLock::new(connect_async(&url).await, "deployments/bare-busy").trust_session_pooler();
    let mut refused = 0;
    for _ in 0..200 {
        let outcome = match lock.try_acquire().await {
            Ok(true) => lock.release().await,
            Ok(false) => Ok(()),
            Err(error) => Err(error),
        };
        match outcome {
            Err(error) if refused_as(&error, Deployment::TransactionPooler) => refused += 1,
            // The unlock ran on another session, which did not hold the lock.
            Ok(()) | Err(dlock_postgres::Error::NotHeld) => {}
            Err(error) => panic!("{error}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    println!("a bare lock through a busy transaction pooler: refused {refused} of 200 cycles");
    assert!(refused > 0, "the busy pooler never moved a statement");
}

/// Eight threads take turns at one key through the transaction pooler, each with locks
/// built by `lock` on a client of its own; returns how many times a thread held the lock
/// while another did.
fn overlaps_through_the_pooler(lock: fn(Client) -> Option<PgLock<Client>>) -> usize {
    let url = deployments::transaction_pooler();
    let holding = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (url, holding, overlaps) =
                (url.clone(), Arc::clone(&holding), Arc::clone(&overlaps));
            thread::spawn(move || {
                let Some(mut lock) = lock(connect(&url)) else {
                    return;
                };
                for _ in 0..200 {
                    if lock.try_acquire().unwrap() {
                        if holding.fetch_add(1, Ordering::SeqCst) > 0 {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        thread::sleep(Duration::from_micros(200));
                        holding.fetch_sub(1, Ordering::SeqCst);
                        // Through the pooler the unlock may run on another session and
                        // find nothing to release: that is the leak the check prevents.
                        let _ = lock.release();
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    overlaps.load(Ordering::SeqCst)
}

#[test]
fn with_the_check_off_a_transaction_pooler_lets_holders_overlap() {
    // The negative control: what the check prevents.
    let overlaps = overlaps_through_the_pooler(|client| {
        Some(PgLock::new(client, "deployments/control").skip_deployment_check())
    });
    println!("with the check off: {overlaps} overlapping holders");
    assert!(overlaps > 0, "the pooler let no two holders overlap");
}

#[test]
fn with_the_check_on_a_transaction_pooler_never_overlaps_holders() {
    // Each thread checks its client with a second one, as the pools do, and so never locks.
    let overlaps = overlaps_through_the_pooler(|mut client| {
        let mut second = connect(&deployments::transaction_pooler());
        match check_deployment(&mut client, Some(&mut second)) {
            Err(error) if refused_as(&error, Deployment::TransactionPooler) => None,
            outcome => panic!("a transaction pooler must be refused, not {outcome:?}"),
        }
    });
    assert_eq!(overlaps, 0);
    assert_eq!(holders_on_primary(key_of("deployments/checked")), 0);
}

fn key_of(key: &str) -> i64 {
    match dlock_postgres::KeyPolicy::default()
        .pg_key(&key.into())
        .unwrap()
    {
        PgKey::BigInt(key) => key,
        PgKey::Pair(..) => unreachable!("text keys are bigints"),
    }
}

#[test]
fn transaction_locks_work_through_a_transaction_pooler() {
    let url = deployments::transaction_pooler();
    let key = "deployments/xact";
    let holding = Arc::new(AtomicUsize::new(0));
    let (overlaps, granted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (url, holding) = (url.clone(), Arc::clone(&holding));
            let (overlaps, granted) = (Arc::clone(&overlaps), Arc::clone(&granted));
            thread::spawn(move || {
                let mut client = connect(&url);
                for _ in 0..200 {
                    let mut tx = client.transaction().unwrap();
                    if PgXactLock::new(key).try_acquire(&mut tx).unwrap() {
                        granted.fetch_add(1, Ordering::SeqCst);
                        if holding.fetch_add(1, Ordering::SeqCst) > 0 {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        thread::sleep(Duration::from_micros(200));
                        holding.fetch_sub(1, Ordering::SeqCst);
                    }
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    println!(
        "transaction locks through the pooler: {} granted, {} overlapping",
        granted.load(Ordering::SeqCst),
        overlaps.load(Ordering::SeqCst)
    );
    assert!(granted.load(Ordering::SeqCst) > 0);
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(
        holders_on_primary(key_of(key)),
        0,
        "a transaction lock leaked"
    );
}

#[test]
fn a_hot_standby_is_refused_by_a_blocking_lock() {
    let url = deployments::standby();
    for run in 0..RUNS {
        let mut lock = PgLock::new(connect(&url), "deployments/standby");
        let error = lock.try_acquire().unwrap_err();
        assert!(
            refused_as(&error, Deployment::HotStandby),
            "run {run}: {error:?}"
        );
        assert!(!lock.is_acquired());
        let message = error.to_string();
        assert!(
            message.contains("hot standby") && message.contains("primary"),
            "{message}"
        );
        let error = check_deployment(lock.client(), None).unwrap_err();
        assert!(
            refused_as(&error, Deployment::HotStandby),
            "run {run}: {error:?}"
        );
        // Transaction locks too, in every form, fenced or not; a timed one leaves the
        // transaction usable.
        let mut tx = lock.client().transaction().unwrap();
        let error = PgXactLock::new("deployments/standby")
            .acquire_timeout(&mut tx, Duration::from_secs(1))
            .unwrap_err();
        assert!(refused_as(&error, Deployment::HotStandby), "{error:?}");
        tx.simple_query("SELECT 1").unwrap();
        tx.rollback().unwrap();
        for fenced in [false, true] {
            let xact = PgXactLock::new("deployments/standby");
            let xact = if fenced { xact.fenced() } else { xact };
            let mut tx = lock.client().transaction().unwrap();
            let error = xact.try_acquire(&mut tx).unwrap_err();
            assert!(refused_as(&error, Deployment::HotStandby), "{error:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_standby_is_refused_by_an_async_lock() {
    let url = deployments::standby();
    for run in 0..RUNS {
        let mut lock = AsyncPgLock::new(connect_async(&url).await, "deployments/standby");
        let error = lock.acquire().await.unwrap_err();
        assert!(
            refused_as(&error, Deployment::HotStandby),
            "run {run}: {error:?}"
        );
        assert!(!lock.is_acquired());
        let error = check_deployment_async(lock.client(), None)
            .await
            .unwrap_err();
        assert!(
            refused_as(&error, Deployment::HotStandby),
            "run {run}: {error:?}"
        );
        let client = lock.client();
        let tx = client.transaction().await.unwrap();
        let xact = AsyncPgXactLock::new("deployments/standby");
        let error = xact.acquire(&tx).await.unwrap_err();
        assert!(refused_as(&error, Deployment::HotStandby), "{error:?}");
        tx.rollback().await.unwrap();
        let mut tx = client.transaction().await.unwrap();
        let error = xact
            .acquire_timeout(&mut tx, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(refused_as(&error, Deployment::HotStandby), "{error:?}");
        tx.simple_query("SELECT 1").await.unwrap();
    }
}

#[test]
fn a_standby_is_refused_until_it_is_promoted() {
    let url = deployments::promotable_standby();
    let mut lock = PgLock::new(connect(&url), "deployments/promoted");
    let error = lock.acquire().unwrap_err();
    assert!(refused_as(&error, Deployment::HotStandby), "{error:?}");
    let promoted: bool = connect(&url)
        .query_one("SELECT pg_promote(true, 60)", &[])
        .unwrap()
        .get(0);
    assert!(promoted);
    // The same lock object checks again, and the promoted server takes the lock.
    lock.acquire().unwrap();
    assert!(lock.verify().unwrap());
    lock.release().unwrap();
    let mut tx = lock.client().transaction().unwrap();
    assert!(
        PgXactLock::new("deployments/promoted")
            .try_acquire(&mut tx)
            .unwrap()
    );
    tx.commit().unwrap();
}

#[test]
fn the_check_can_be_turned_off_and_then_a_standby_grants_local_locks() {
    let mut lock =
        PgLock::new(connect(&deployments::standby()), "deployments/skip").skip_deployment_check();
    assert!(
        lock.try_acquire().unwrap(),
        "a standby grants its own advisory locks"
    );
    lock.release().unwrap();
}
