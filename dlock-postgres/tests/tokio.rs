//! The semantics table of `dlock_core::AsyncLock` for `AsyncPgLock` and `AsyncPgXactLock`,
//! and their cancel safety, against a real PostgreSQL server. Every test locks keys of its
//! own: tests run in parallel on one server.

use dlock_testkit::postgres as common;

use std::time::{Duration, Instant};

use dlock_postgres::{
    AsyncLock, AsyncPgLock, AsyncPgXactLock, Error, Key, KeyPolicy, Mode, PgKey, holders_async,
};
use tokio_postgres::Client;

use common::{backend_pid_async as pid, connect_async as connect};

fn pg_key(name: &str) -> PgKey {
    KeyPolicy::default().pg_key(&Key::from(name)).unwrap()
}

/// The sessions holding `key`, once the server has settled: a cleanup queued by a drop
/// runs shortly after, so this waits until the holders stop changing or a second passes.
async fn settled_holders(observer: &Client, key: PgKey) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut last = None;
    loop {
        let now: Vec<i32> = holders_async(observer, key)
            .await
            .unwrap()
            .iter()
            .map(|holder| holder.pid)
            .collect();
        if last.as_ref() == Some(&now) && (now.is_empty() || Instant::now() > deadline) {
            return now;
        }
        if Instant::now() > deadline {
            return now;
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

use common::poll_once_and_drop;

#[tokio::test]
async fn acquire_timeout_gives_up_no_earlier_than_asked_and_leaves_settings_alone() {
    let mut holder = AsyncPgLock::new(connect().await, "tokio/timeout");
    holder.acquire().await.unwrap();
    let client = connect().await;
    client
        .batch_execute("SET lock_timeout = '6s'")
        .await
        .unwrap();
    let mut waiter = AsyncPgLock::new(client, "tokio/timeout");
    let started = Instant::now();
    assert!(
        !waiter
            .acquire_timeout(Duration::from_millis(100))
            .await
            .unwrap()
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
    let setting: String = waiter
        .client()
        .query_one("SHOW lock_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, "6s");
    holder.release().await.unwrap();
    assert!(
        waiter
            .acquire_timeout(Duration::from_millis(100))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn misuse_is_reported_and_lost_locks_are_not_held() {
    let mut lock = AsyncPgLock::new(connect().await, "tokio/misuse");
    assert!(matches!(lock.release().await, Err(Error::NotAcquired)));
    lock.acquire().await.unwrap();
    assert!(matches!(lock.acquire().await, Err(Error::AlreadyAcquired)));
    assert!(matches!(
        lock.try_acquire().await,
        Err(Error::AlreadyAcquired)
    ));
    lock.client()
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    assert!(!lock.verify().await.unwrap());
    assert!(matches!(lock.release().await, Err(Error::NotHeld)));
    assert!(!lock.is_acquired());
}

#[tokio::test]
async fn shared_locks_admit_readers_and_exclude_writers() {
    let mut reader = AsyncPgLock::new(connect().await, (5150, 1)).shared();
    let mut second = AsyncPgLock::new(connect().await, (5150, 1)).shared();
    let mut writer = AsyncPgLock::new(connect().await, (5150, 1));
    assert!(reader.try_acquire().await.unwrap());
    assert!(
        second
            .acquire_timeout(Duration::from_millis(100))
            .await
            .unwrap()
    );
    assert!(!writer.try_acquire().await.unwrap());
    let holders = reader.holders().await.unwrap();
    assert_eq!(holders.len(), 2);
    assert!(holders.iter().all(|holder| holder.mode == Mode::Shared));
    reader.release().await.unwrap();
    second.release().await.unwrap();
    assert!(writer.try_acquire().await.unwrap());
}

#[tokio::test]
async fn every_policy_locks_the_key_it_computes() {
    let observer = connect().await;
    for policy in [
        KeyPolicy::Blake2b,
        KeyPolicy::Sqlx,
        KeyPolicy::Sha1,
        KeyPolicy::Crc32Pair,
    ] {
        let mut lock = AsyncPgLock::new(connect().await, "tokio/policy").policy(policy.clone());
        let key = lock.pg_key().unwrap();
        assert_eq!(key, policy.pg_key(&Key::from("tokio/policy")).unwrap());
        lock.acquire().await.unwrap();
        let pid = pid(lock.client()).await;
        let holders = holders_async(&observer, key).await.unwrap();
        assert_eq!(
            holders.iter().map(|h| h.pid).collect::<Vec<_>>(),
            [pid],
            "{policy:?}"
        );
        lock.release().await.unwrap();
    }
}

#[tokio::test]
async fn dropping_a_held_lock_queues_its_release() {
    let observer = connect().await;
    let key = pg_key("tokio/drop");
    let mut client = connect().await;
    {
        let mut lock = AsyncPgLock::new(&mut client, "tokio/drop");
        lock.acquire().await.unwrap();
    }
    assert!(
        settled_holders(&observer, key).await.is_empty(),
        "the drop released it"
    );
    client
        .batch_execute("SELECT 1")
        .await
        .expect("the borrowed client lives on");

    let mut owned = AsyncPgLock::new(connect().await, "tokio/drop");
    owned.acquire().await.unwrap();
    drop(owned);
    assert!(
        settled_holders(&observer, key).await.is_empty(),
        "an owned client too"
    );
}

#[tokio::test]
async fn a_second_lock_on_the_same_session_dropped_while_held_takes_only_its_own_hold() {
    // PostgreSQL counts the holds of one key per session: the second object's drop queues
    // one unlock on the client, and the first object's hold stays, with nothing leaked.
    let observer = connect().await;
    let key = pg_key("tokio/second-on-session");
    let mut first = AsyncPgLock::new(connect().await, "tokio/second-on-session");
    first.acquire().await.unwrap();
    {
        let mut second = AsyncPgLock::new(first.client(), "tokio/second-on-session");
        assert!(second.try_acquire().await.unwrap());
    }
    assert!(first.verify().await.unwrap(), "the first hold stays");
    let mut other = AsyncPgLock::new(connect().await, "tokio/second-on-session");
    assert!(!other.try_acquire().await.unwrap());
    first.release().await.unwrap();
    assert!(other.try_acquire().await.unwrap(), "no hold leaked");
    other.release().await.unwrap();
    assert!(settled_holders(&observer, key).await.is_empty());
}

#[tokio::test]
async fn an_owned_lock_moves_into_a_spawned_task() {
    let mut lock = AsyncPgLock::new(connect().await, "tokio/spawned");
    let task = tokio::spawn(async move {
        lock.acquire().await?;
        lock.release().await
    });
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_acquire_dropped_mid_wait_leaves_no_lock_behind() {
    let observer = connect().await;
    let key = pg_key("tokio/cancel-wait");
    let mut holder = AsyncPgLock::new(connect().await, "tokio/cancel-wait");
    holder.acquire().await.unwrap();
    let mut waiter = AsyncPgLock::new(connect().await, "tokio/cancel-wait");
    let waited = tokio::time::timeout(Duration::from_millis(200), waiter.acquire()).await;
    assert!(
        waited.is_err(),
        "the acquire was still waiting when dropped"
    );
    assert!(!waiter.is_acquired());
    holder.release().await.unwrap();
    assert!(
        settled_holders(&observer, key).await.is_empty(),
        "nobody holds it after release"
    );
    // The lock object and its client stay usable, and the owed cleanup does no harm.
    assert!(
        waiter
            .acquire_timeout(Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(waiter.verify().await.unwrap());
    waiter.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_racing_the_drop_of_a_waiting_acquire_is_released() {
    // The holder releases at the instant the waiter's future is dropped, so the grant, the
    // cancel request and the cleanup land in every order across the rounds. (A grant that
    // lands with the cancel fails the statement with 57014 while the lock stays held.)
    let observer = connect().await;
    let key = pg_key("tokio/race");
    let mut holder = AsyncPgLock::new(connect().await, "tokio/race");
    let mut waiter = AsyncPgLock::new(connect().await, "tokio/race");
    for round in 0..20_u64 {
        holder.acquire().await.unwrap();
        let patience = Duration::from_millis(30 + round % 5);
        let (released, waited) = tokio::join!(
            async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                holder.release().await
            },
            tokio::time::timeout(patience, waiter.acquire()),
        );
        released.unwrap();
        if let Ok(acquired) = waited {
            acquired.unwrap();
            waiter.release().await.unwrap();
        }
        assert!(
            settled_holders(&observer, key).await.is_empty(),
            "round {round}"
        );
        // The waiter is usable again, whatever happened to its last attempt.
        assert!(waiter.try_acquire().await.unwrap(), "round {round}");
        waiter.release().await.unwrap();
    }
}

#[tokio::test]
async fn an_acquire_granted_after_its_future_was_dropped_is_released() {
    // The statement is sent on the first poll and the key is free, so the server grants it
    // although nobody reads the reply: the queued cleanup must release it.
    let observer = connect().await;
    for (name, waits) in [
        ("tokio/late-grant-wait", true),
        ("tokio/late-grant-try", false),
    ] {
        let key = pg_key(name);
        let mut lock = AsyncPgLock::new(connect().await, name);
        if waits {
            poll_once_and_drop(lock.acquire()).await;
        } else {
            poll_once_and_drop(lock.try_acquire()).await;
        }
        assert!(!lock.is_acquired());
        assert!(
            settled_holders(&observer, key).await.is_empty(),
            "{name}: released"
        );
        assert!(
            lock.try_acquire().await.unwrap(),
            "{name}: the lock object still works"
        );
        lock.release().await.unwrap();
    }
}

#[tokio::test]
async fn the_cleanup_of_a_dropped_acquire_never_releases_another_hold_of_the_session() {
    let observer = connect().await;
    let key = pg_key("tokio/reentrant-cancel");
    let mut outer = AsyncPgLock::new(connect().await, "tokio/reentrant-cancel");
    outer.acquire().await.unwrap();
    let pid = pid(outer.client()).await;
    {
        let mut inner = AsyncPgLock::new(outer.client(), "tokio/reentrant-cancel");
        poll_once_and_drop(inner.acquire()).await;
    }
    assert_eq!(
        settled_holders(&observer, key).await,
        [pid],
        "the outer hold remains"
    );
    assert!(outer.verify().await.unwrap());
    outer
        .release()
        .await
        .expect("the server still counted the outer hold");
    assert!(settled_holders(&observer, key).await.is_empty());
}

#[tokio::test]
async fn a_release_dropped_after_its_first_poll_still_releases() {
    let observer = connect().await;
    let key = pg_key("tokio/cancel-release");
    let mut lock = AsyncPgLock::new(connect().await, "tokio/cancel-release");
    lock.acquire().await.unwrap();
    poll_once_and_drop(lock.release()).await;
    assert!(!lock.is_acquired());
    assert!(settled_holders(&observer, key).await.is_empty());
}

#[tokio::test]
async fn transaction_locks_last_until_the_transaction_ends() {
    let observer = connect().await;
    let key = pg_key("tokio/xact");
    let mut holder = AsyncPgLock::new(connect().await, "tokio/xact");
    let mut client = connect().await;
    let mut tx = client.transaction().await.unwrap();
    let lock = AsyncPgXactLock::new("tokio/xact");
    lock.acquire(&tx).await.unwrap();
    assert!(lock.verify(&tx).await.unwrap());
    assert!(!holder.try_acquire().await.unwrap());
    tx.commit().await.unwrap();
    assert!(
        holder_pids_empty(&observer, key).await,
        "commit released it"
    );

    holder.acquire().await.unwrap();
    tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL lock_timeout = '8s'")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        !lock
            .acquire_timeout(&mut tx, Duration::from_millis(80))
            .await
            .unwrap()
    );
    assert!(started.elapsed() >= Duration::from_millis(80));
    assert!(
        !lock.try_acquire(&tx).await.unwrap(),
        "the transaction is still usable"
    );
    let setting: String = tx.query_one("SHOW lock_timeout", &[]).await.unwrap().get(0);
    assert_eq!(setting, "8s");
    tx.rollback().await.unwrap();
}

async fn holder_pids_empty(observer: &Client, key: PgKey) -> bool {
    holders_async(observer, key).await.unwrap().is_empty()
}

/// Code generic over `AsyncLock` works with the PostgreSQL lock.
async fn run_exclusively(lock: &mut impl AsyncLock) -> dlock_postgres::Result<bool> {
    if !lock.try_acquire().await? {
        return Ok(false);
    }
    lock.release().await?;
    Ok(true)
}

#[tokio::test]
async fn generic_code_runs_over_the_trait() {
    let mut lock = AsyncPgLock::new(connect().await, "tokio/generic");
    assert!(run_exclusively(&mut lock).await.unwrap());
}

#[tokio::test]
async fn a_reused_lock_object_prepares_its_statements_and_keeps_its_semantics() {
    let mut lock = AsyncPgLock::new(connect().await, "tokio/reused");
    let mut other = AsyncPgLock::new(connect().await, "tokio/reused");
    for round in 0..4 {
        lock.acquire().await.unwrap();
        assert!(lock.verify().await.unwrap(), "round {round}");
        assert!(
            !other.try_acquire().await.unwrap(),
            "round {round}: excluded"
        );
        lock.release().await.unwrap();
        assert!(
            other.try_acquire().await.unwrap(),
            "round {round}: free again"
        );
        other.release().await.unwrap();
    }
    for client in [lock.client(), other.client()] {
        // A simple query, which prepares nothing itself.
        let reply = client
            .simple_query("SELECT count(*) FROM pg_prepared_statements")
            .await
            .unwrap();
        let prepared: i64 = reply
            .iter()
            .find_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    row.get(0).map(|n| n.parse().unwrap())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(prepared, 2, "the acquire's statement and the unlock");
    }
    lock.acquire().await.unwrap();
    lock.client()
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    assert!(matches!(lock.release().await, Err(Error::NotHeld)));
}

#[tokio::test]
async fn a_citus_worker_is_refused_by_an_async_lock() {
    let (url, set_group) =
        tokio::task::spawn_blocking(|| common::citus_standin("dlock_citus_tokio", 1))
            .await
            .unwrap();
    let (client, connection) = tokio_postgres::connect(&url, common::tls()).await.unwrap();
    tokio::spawn(connection);
    let mut lock = AsyncPgLock::new(client, "deployments/citus");
    let refused = lock.try_acquire().await;
    assert!(
        matches!(
            refused,
            Err(Error::CannotExclude {
                deployment: dlock_postgres::Deployment::CitusWorker
            })
        ),
        "{refused:?}"
    );
    tokio::task::spawn_blocking(move || set_group(0))
        .await
        .unwrap();
    assert!(lock.try_acquire().await.unwrap());
    lock.release().await.unwrap();
}
