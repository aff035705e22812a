//! Interruption and cancellation against a real server: errors that come with a grant,
//! session settings that would cut a wait short, aborted transactions, vanished prepared
//! statements, and dropped futures. Each test names the failure it guards against; the races
//! run many rounds and print their counts. Keys are the tests' own: tests run in parallel.
#![cfg(any(feature = "blocking", feature = "tokio"))]

use dlock_testkit::postgres as common;

use std::time::{Duration, Instant};

use dlock_postgres::{Key, KeyPolicy, PgKey};

fn pg_key(name: &str) -> PgKey {
    KeyPolicy::default().pg_key(&Key::from(name)).unwrap()
}

/// The SQL arguments of a key, for the tests' own statements.
fn args(key: PgKey) -> String {
    match key {
        PgKey::BigInt(value) => value.to_string(),
        PgKey::Pair(high, low) => format!("{high}, {low}"),
    }
}

#[cfg(feature = "blocking")]
mod blocking {
    use super::*;
    use common::{backend_pid, connect, holder_pids};
    use dlock_postgres::{Error, Lock, PgLock};
    use std::thread;

    /// Waits until `pid` is waiting for a lock, as the server shows it.
    fn until_waiting(observer: &mut postgres::Client, pid: i32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: bool = observer
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)",
                    &[&pid],
                )
                .unwrap()
                .get(0);
            if waiting {
                return;
            }
            assert!(Instant::now() < deadline, "pid {pid} never waited");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_cancel_that_lands_with_the_grant_leaves_the_lock_held_and_tracked() {
        // Failure 2: the holder's unlock and an operator's cancel of the waiter go in one
        // statement, so the waiter's session is woken by both at once; the server then grants
        // the lock and fails the statement with 57014.
        let name = "interruption/blocking-cancel-with-grant";
        let key = pg_key(name);
        let mut observer = connect();
        let mut holder = connect();
        let (mut granted, mut canceled) = (0, 0);
        for round in 0..40 {
            holder
                .simple_query(&format!("SELECT pg_advisory_lock({})", args(key)))
                .unwrap();
            let mut client = connect();
            let pid = backend_pid(&mut client);
            let waiter = thread::spawn(move || {
                let mut lock = PgLock::new(client, name);
                let outcome = lock.acquire();
                let acquired = lock.is_acquired();
                (outcome.map_err(|e| e.to_string()), acquired, lock)
            });
            until_waiting(&mut observer, pid);
            holder
                .simple_query(&format!(
                    "SELECT pg_advisory_unlock({}), pg_cancel_backend({pid})",
                    args(key)
                ))
                .unwrap();
            let (outcome, acquired, mut lock) = waiter.join().unwrap();
            let holds = holder_pids(&mut observer, key).contains(&pid);
            match outcome {
                Ok(()) => {
                    granted += 1;
                    assert!(
                        acquired && holds,
                        "round {round}: Ok means held and tracked"
                    );
                    lock.release().unwrap();
                }
                Err(error) => {
                    canceled += 1;
                    assert!(
                        !holds && !acquired,
                        "round {round}: {error}, yet the session holds the lock: {holds}"
                    );
                }
            }
        }
        println!("cancel with grant: {granted} granted, {canceled} canceled");
    }

    #[test]
    fn statement_timeout_neither_ends_a_wait_nor_changes_the_timeout_contract() {
        // Failure 7: a session statement_timeout of 300 ms.
        let name = "interruption/blocking-statement-timeout";
        let key = pg_key(name);
        let mut holder = PgLock::new(connect(), name);
        holder.acquire().unwrap();
        let mut client = connect();
        client.batch_execute("SET statement_timeout = 300").unwrap();
        let mut lock = PgLock::new(client, name);
        let started = Instant::now();
        assert!(!lock.acquire_timeout(Duration::from_millis(900)).unwrap());
        assert!(started.elapsed() >= Duration::from_millis(900));
        let releaser = thread::spawn(move || {
            thread::sleep(Duration::from_millis(800));
            holder.release().unwrap();
        });
        let started = Instant::now();
        lock.acquire().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(700));
        releaser.join().unwrap();
        let setting: String = lock
            .client()
            .query_one("SHOW statement_timeout", &[])
            .unwrap()
            .get(0);
        assert_eq!(setting, "300ms", "the session's setting is unchanged");
        assert_eq!(holder_pids(&mut connect(), key).len(), 1);
        lock.release().unwrap();
    }

    #[test]
    fn a_release_refused_by_an_aborted_transaction_keeps_the_lock_releasable() {
        // Failure 5.
        let name = "interruption/blocking-aborted-release";
        let key = pg_key(name);
        let mut lock = PgLock::new(connect(), name);
        lock.acquire().unwrap();
        lock.client().batch_execute("BEGIN").unwrap();
        assert!(lock.client().batch_execute("SELECT 1/0").is_err());
        let refused = lock.release();
        assert!(
            matches!(refused, Err(Error::TransactionAborted { .. })),
            "{refused:?}"
        );
        assert!(lock.is_acquired(), "still held, and known to be");
        lock.client().batch_execute("ROLLBACK").unwrap();
        lock.release().unwrap();
        assert!(holder_pids(&mut connect(), key).is_empty());
    }

    #[test]
    fn vanished_prepared_statements_are_prepared_again() {
        // Failure 6: DEALLOCATE ALL (and DISCARD ALL, which also frees the session's locks).
        let name = "interruption/blocking-deallocate";
        let key = pg_key(name);
        let mut observer = connect();
        let mut lock = PgLock::new(connect(), name);
        for _ in 0..3 {
            lock.acquire().unwrap();
            lock.release().unwrap();
        }
        lock.client().batch_execute("DISCARD ALL").unwrap();
        assert!(lock.try_acquire().unwrap());
        lock.client().batch_execute("DEALLOCATE ALL").unwrap();
        lock.release().unwrap();
        assert!(holder_pids(&mut observer, key).is_empty());
        lock.client().batch_execute("DEALLOCATE ALL").unwrap();
        lock.acquire().unwrap();
        assert!(lock.is_acquired());
        assert_eq!(holder_pids(&mut observer, key).len(), 1);
        lock.client().batch_execute("DEALLOCATE ALL").unwrap();
        lock.release().unwrap();
        assert!(!lock.is_acquired());
        assert!(holder_pids(&mut observer, key).is_empty());
    }
}

#[cfg(feature = "tokio")]
mod tokio_flavour {
    use super::*;
    use dlock_postgres::{AsyncLock, AsyncPgLock, AsyncPgXactLock, Error, holders_async};
    use tokio_postgres::Client;

    use common::{backend_pid_async as pid, connect_async as connect};

    async fn holders(observer: &Client, key: PgKey) -> Vec<i32> {
        holders_async(observer, key)
            .await
            .unwrap()
            .iter()
            .map(|holder| holder.pid)
            .collect()
    }

    async fn until_waiting(observer: &Client, pid: i32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: bool = observer
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)",
                    &[&pid],
                )
                .await
                .unwrap()
                .get(0);
            if waiting {
                return;
            }
            assert!(Instant::now() < deadline, "pid {pid} never waited");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    use common::poll_once_and_drop;

    fn side() -> tokio_postgres::Config {
        common::pg_url()
            .parse()
            .expect("DLOCK_PG_URL is a PostgreSQL URL")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_side_connection_ends_a_dropped_wait_and_cancels_nothing_else() {
        // The wait of a dropped acquire ends at once, and the statements sent right after it
        // on the same client run to completion: the side connection aims its one cancel
        // request at the waiting statement only. The holder releases near the drop in some
        // rounds, so grant, cancel and fence land in every order.
        let name = "interruption/side-session";
        let key = pg_key(name);
        let observer = connect().await;
        let mut holder = AsyncPgLock::new(connect().await, name);
        let mut client = connect().await;
        let waiter = pid(&client).await;
        for round in 0..24_u64 {
            holder.acquire().await.unwrap();
            let mut lock = AsyncPgLock::new(&mut client, name)
                .side_connection(side())
                .tls(dlock_testkit::postgres::tls());
            let patience = Duration::from_millis(20 + round % 6);
            let racing = round % 3 == 0;
            let (waited, ()) =
                tokio::join!(tokio::time::timeout(patience, lock.acquire()), async {
                    if racing {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        holder.release().await.unwrap();
                    }
                });
            let granted = match waited {
                Ok(outcome) => {
                    outcome.unwrap();
                    true
                }
                Err(_) => false,
            };
            // Statements right after the drop run, and are never canceled.
            let started = Instant::now();
            for _ in 0..3 {
                let slept = tokio::time::timeout(
                    Duration::from_secs(10),
                    lock.client().simple_query("SELECT pg_sleep(0.01)"),
                )
                .await
                .unwrap_or_else(|_| panic!("round {round}: the statement waited behind the lock"));
                slept.unwrap_or_else(|error| panic!("round {round}: {error}"));
            }
            if !racing {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "round {round}: the dropped wait ended while the holder still held"
                );
                assert_eq!(holders(&observer, key).await.len(), 1, "round {round}");
                holder.release().await.unwrap();
            }
            if granted {
                lock.release().await.unwrap();
            }
            drop(lock);
            let deadline = Instant::now() + Duration::from_secs(10);
            while holders(&observer, key).await.contains(&waiter) {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: a late grant was released"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // The client is usable for locks again.
        let mut lock = AsyncPgLock::new(&mut client, name)
            .side_connection(side())
            .tls(dlock_testkit::postgres::tls());
        assert!(lock.try_acquire().await.unwrap());
        lock.release().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_side_connection_and_the_cancel_go_through_the_users_tls_connector() {
        let name = "interruption/side-tls";
        let key = pg_key(name);
        let observer = connect().await;
        let mut holder = AsyncPgLock::new(connect().await, name);
        holder.acquire().await.unwrap();
        let tls = dlock_testkit::postgres::CountingTls::default();
        // A dropped wait on a borrowed client: the side connection ends it.
        let mut client = connect().await;
        let mut lock = AsyncPgLock::new(&mut client, name)
            .side_connection(side())
            .tls(tls.clone());
        let dropped = tokio::time::timeout(Duration::from_millis(100), lock.acquire()).await;
        assert!(dropped.is_err(), "still waiting when dropped");
        let started = Instant::now();
        lock.client().simple_query("SELECT 1").await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "the wait ended");
        drop(lock);
        let side_connections = tls.made();
        assert!(
            side_connections >= 1,
            "the side connection used the connector"
        );
        // A dropped wait on an owned client, without a side connection: the client closes,
        // and a cancel request through the connector ends the wait at once.
        let mut lock = AsyncPgLock::new(connect().await, name).tls(tls.clone());
        let waiter = pid(lock.client()).await;
        let dropped = tokio::time::timeout(Duration::from_millis(100), lock.acquire()).await;
        assert!(dropped.is_err(), "still waiting when dropped");
        drop(lock);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tls.made() == side_connections {
            assert!(Instant::now() < deadline, "the cancel used the connector");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        holder.release().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while holders(&observer, key).await.contains(&waiter) {
            assert!(Instant::now() < deadline, "nothing left held");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_transaction_lock_wait_ends_and_the_transaction_answers() {
        // Failure 4: a dropped AsyncPgXactLock acquire used to leave its wait running, and the
        // transaction got no answer until the holder released.
        let name = "interruption/side-xact";
        let key = pg_key(name);
        let observer = connect().await;
        let mut holder = AsyncPgLock::new(connect().await, name);
        holder.acquire().await.unwrap();
        let mut client = connect().await;
        let waiter = pid(&client).await;
        let lock = AsyncPgXactLock::new(name)
            .side_connection(side())
            .tls(dlock_testkit::postgres::tls());

        // Inside a savepoint (acquire_timeout): the transaction stays usable.
        let mut tx = client.transaction().await.unwrap();
        let dropped = tokio::time::timeout(
            Duration::from_millis(200),
            lock.acquire_timeout(&mut tx, Duration::from_secs(30)),
        )
        .await;
        assert!(dropped.is_err(), "still waiting when dropped");
        let started = Instant::now();
        tx.simple_query("SELECT 1").await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the transaction answered at once"
        );
        tx.rollback().await.unwrap();

        // Without a savepoint (acquire): the canceled wait aborts the transaction, which
        // answers at once instead of hanging.
        let tx = client.transaction().await.unwrap();
        let dropped = tokio::time::timeout(Duration::from_millis(200), lock.acquire(&tx)).await;
        assert!(dropped.is_err(), "still waiting when dropped");
        let started = Instant::now();
        let answered = tx.simple_query("SELECT 1").await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the transaction answered at once"
        );
        if let Err(error) = answered {
            assert_eq!(
                error.code(),
                Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION),
                "{error}"
            );
        }
        tx.rollback().await.unwrap();
        assert_eq!(holders(&observer, key).await, [pid(holder.client()).await]);
        assert!(!holders(&observer, key).await.contains(&waiter));
        holder.release().await.unwrap();
    }

    /// How long statements sent after a dropped acquire may wait behind it, by default: one
    /// slice (400 ms), with room for a busy machine.
    const BEHIND_A_SLICE: Duration = Duration::from_secs(3);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn by_default_a_dropped_wait_ends_on_its_own_and_the_client_answers() {
        // Failure 4, without a side connection: the wait of a dropped acquire ends within a
        // slice, so the client answers while the holder still holds; no cancel request is
        // sent, so nothing else is canceled.
        let name = "interruption/dropped-default";
        let key = pg_key(name);
        let observer = connect().await;
        let mut holder = AsyncPgLock::new(connect().await, name);
        holder.acquire().await.unwrap();
        let mut client = connect().await;
        for (round, patience) in [30_u64, 120, 700].into_iter().enumerate() {
            let mut lock = AsyncPgLock::new(&mut client, name);
            let patience = Duration::from_millis(patience);
            assert!(
                tokio::time::timeout(patience, lock.acquire())
                    .await
                    .is_err(),
                "round {round}: still waiting when dropped"
            );
            let started = Instant::now();
            tokio::time::timeout(BEHIND_A_SLICE, lock.client().simple_query("SELECT 1"))
                .await
                .unwrap_or_else(|_| panic!("round {round}: the client waited for the holder"))
                .unwrap();
            assert!(started.elapsed() < BEHIND_A_SLICE);
            assert_eq!(
                holders(&observer, key).await,
                [pid(holder.client()).await],
                "round {round}"
            );
        }
        holder.release().await.unwrap();
        let mut lock = AsyncPgLock::new(&mut client, name);
        assert!(lock.try_acquire().await.unwrap());
        lock.release().await.unwrap();
        assert!(holders(&observer, key).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn by_default_a_dropped_transaction_lock_wait_ends_and_leaves_the_transaction_usable() {
        // Failure 4 as reported: AsyncPgXactLock, no side connection. Both the plain acquire
        // and the savepoint of acquire_timeout answer within a slice, and the transaction
        // is not aborted: a slice that times out is no error.
        let name = "interruption/dropped-xact-default";
        let key = pg_key(name);
        let observer = connect().await;
        let mut holder = AsyncPgLock::new(connect().await, name);
        holder.acquire().await.unwrap();
        let mut client = connect().await;
        let waiter = pid(&client).await;
        let lock = AsyncPgXactLock::new(name);

        let mut tx = client.transaction().await.unwrap();
        let dropped = tokio::time::timeout(
            Duration::from_millis(200),
            lock.acquire_timeout(&mut tx, Duration::from_secs(30)),
        )
        .await;
        assert!(dropped.is_err(), "still waiting when dropped");
        tokio::time::timeout(BEHIND_A_SLICE, tx.simple_query("SELECT 1"))
            .await
            .expect("the transaction waited for the holder")
            .expect("the transaction is usable");
        let dropped = tokio::time::timeout(Duration::from_millis(300), lock.acquire(&tx)).await;
        assert!(dropped.is_err(), "still waiting when dropped");
        tokio::time::timeout(BEHIND_A_SLICE, tx.simple_query("SELECT 1"))
            .await
            .expect("the transaction waited for the holder")
            .expect("the transaction is usable");
        // A timeout inside the transaction leaves it usable too, after the time asked.
        let started = Instant::now();
        assert!(
            !lock
                .acquire_timeout(&mut tx, Duration::from_millis(250))
                .await
                .unwrap()
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
        tx.commit().await.unwrap();
        assert_eq!(holders(&observer, key).await, [pid(holder.client()).await]);
        assert!(!holders(&observer, key).await.contains(&waiter));
        holder.release().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slice_that_runs_out_as_the_lock_is_granted_tells_the_truth() {
        // The holder releases as the waiter's slice times out: whatever acquire_timeout
        // answers, the server agrees (no untracked hold after Ok(false), a hold after true).
        let name = "interruption/slice-race";
        let key = pg_key(name);
        let observer = connect().await;
        let mut holder = AsyncPgLock::new(connect().await, name);
        let mut waiter = AsyncPgLock::new(connect().await, name);
        let waiter_pid = pid(waiter.client()).await;
        let (mut granted, mut refused) = (0, 0);
        for round in 0..120_u64 {
            holder.acquire().await.unwrap();
            let timeout = Duration::from_millis(40 + round % 20);
            let (outcome, ()) = tokio::join!(waiter.acquire_timeout(timeout), async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                holder.release().await.unwrap();
            });
            let holds = holders(&observer, key).await.contains(&waiter_pid);
            if outcome.unwrap() {
                granted += 1;
                assert!(holds, "round {round}: true without the lock");
                waiter.release().await.unwrap();
            } else {
                refused += 1;
                assert!(!holds, "round {round}: false with an untracked lock");
            }
        }
        println!("slice race: {granted} granted, {refused} timed out");
    }

    #[tokio::test]
    async fn a_timed_out_acquire_leaves_the_users_own_transaction_usable() {
        // A session lock on a client whose user opened a transaction with raw SQL: the
        // timeout is Ok(false), and the transaction goes on (no 55P03 aborts it).
        let name = "interruption/raw-transaction";
        let mut holder = AsyncPgLock::new(connect().await, name);
        holder.acquire().await.unwrap();
        let mut lock = AsyncPgLock::new(connect().await, name);
        lock.client().batch_execute("BEGIN").await.unwrap();
        let started = Instant::now();
        assert!(
            !lock
                .acquire_timeout(Duration::from_millis(150))
                .await
                .unwrap()
        );
        assert!(started.elapsed() >= Duration::from_millis(150));
        lock.client().simple_query("SELECT 1").await.unwrap();
        lock.client().batch_execute("COMMIT").await.unwrap();
        holder.release().await.unwrap();
    }

    #[tokio::test]
    async fn tokio_postgres_sends_a_statement_on_the_first_poll() {
        // The cancel safety of AsyncPgLock leans on this (observed, not documented): a
        // dropped acquire's cleanup is queued behind a statement already on its way.
        let name = "interruption/first-poll";
        let key = pg_key(name);
        let observer = connect().await;
        let mut holder = AsyncPgLock::new(connect().await, name);
        holder.acquire().await.unwrap();
        let client = connect().await;
        let waiter = pid(&client).await;
        let statement = format!("SELECT pg_advisory_lock({})", args(key));
        poll_once_and_drop(client.simple_query(&statement)).await;
        // Polled once and dropped, yet the server shows the session waiting for the key.
        until_waiting(&observer, waiter).await;
        holder.release().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while holders(&observer, key).await != [waiter] {
            assert!(
                Instant::now() < deadline,
                "the dropped statement was granted"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(client);

        // So an acquire polled once and dropped has its statement on its way, and the
        // cleanup queued behind it: the session holds nothing afterwards.
        holder.acquire().await.unwrap();
        let mut lock = AsyncPgLock::new(connect().await, name);
        let waiter = pid(lock.client()).await;
        poll_once_and_drop(lock.acquire()).await;
        holder.release().await.unwrap();
        assert!(lock.try_acquire().await.unwrap());
        assert_eq!(holders(&observer, key).await, [waiter]);
        lock.release().await.unwrap();
        assert!(holders(&observer, key).await.is_empty());
    }

    #[tokio::test]
    async fn dropped_attempts_never_release_another_hold_of_the_session() {
        // Failure 1: an outer hold of K; on the same session, an inner try on K is dropped and
        // an attempt on another (busy) key is dropped. The outer hold must survive every
        // cleanup, including inside a transaction the user rolls back afterwards.
        let name = "interruption/outer-hold";
        let key = pg_key(name);
        let other = "interruption/outer-hold-other";
        let observer = connect().await;
        let mut other_holder = AsyncPgLock::new(connect().await, other);
        let mut outer = AsyncPgLock::new(connect().await, name);
        outer.acquire().await.unwrap();
        let pid = pid(outer.client()).await;
        for round in 0..30 {
            let in_transaction = round % 2 == 1;
            if in_transaction {
                outer.client().batch_execute("BEGIN").await.unwrap();
            }
            other_holder.acquire().await.unwrap();
            {
                let mut inner = AsyncPgLock::new(outer.client(), name);
                poll_once_and_drop(inner.try_acquire()).await;
                {
                    let mut waiting = AsyncPgLock::new(inner.client(), other);
                    poll_once_and_drop(waiting.acquire()).await;
                }
                other_holder.release().await.unwrap();
                // Reusing a lock object runs its owed cleanup: it must not run twice.
                assert!(inner.try_acquire().await.unwrap(), "round {round}");
                inner.release().await.unwrap();
            }
            if in_transaction {
                outer.client().batch_execute("ROLLBACK").await.unwrap();
            }
            assert_eq!(holders(&observer, key).await, [pid], "round {round}");
            assert!(outer.verify().await.unwrap(), "round {round}");
        }
        outer
            .release()
            .await
            .expect("the server still counts the outer hold");
        assert!(holders(&observer, key).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancel_that_lands_with_the_grant_leaves_the_lock_held_and_tracked() {
        // Failure 2, tokio flavour: unlock and cancel in one statement of the holder's.
        let name = "interruption/tokio-cancel-with-grant";
        let key = pg_key(name);
        let observer = connect().await;
        let holder = connect().await;
        let (mut granted, mut canceled) = (0, 0);
        for round in 0..40 {
            holder
                .simple_query(&format!("SELECT pg_advisory_lock({})", args(key)))
                .await
                .unwrap();
            let client = connect().await;
            let pid = pid(&client).await;
            let waiter = tokio::spawn(async move {
                let mut lock = AsyncPgLock::new(client, name);
                let outcome = lock.acquire().await;
                (outcome, lock)
            });
            until_waiting(&observer, pid).await;
            holder
                .simple_query(&format!(
                    "SELECT pg_advisory_unlock({}), pg_cancel_backend({pid})",
                    args(key)
                ))
                .await
                .unwrap();
            let (outcome, mut lock) = waiter.await.unwrap();
            let holds = holders(&observer, key).await.contains(&pid);
            match outcome {
                Ok(()) => {
                    granted += 1;
                    assert!(lock.is_acquired() && holds, "round {round}");
                    lock.release().await.unwrap();
                }
                Err(error) => {
                    canceled += 1;
                    assert!(matches!(error, Error::Canceled { .. }), "{error}");
                    assert!(
                        !holds && !lock.is_acquired(),
                        "round {round}: {error}, yet the session holds the lock"
                    );
                }
            }
        }
        println!("cancel with grant: {granted} granted, {canceled} canceled");
    }

    #[tokio::test]
    async fn statements_after_a_dropped_acquire_are_never_canceled() {
        // Failure 3: nothing dlock does after a dropped acquire may end a statement of the
        // user's. The user's statements run (after the dropped wait ends) and complete.
        let name = "interruption/tokio-no-stray-cancel";
        let key = pg_key(name);
        let observer = connect().await;
        let mut holder = AsyncPgLock::new(connect().await, name);
        let mut lock = AsyncPgLock::new(connect().await, name);
        for round in 0..10 {
            holder.acquire().await.unwrap();
            let waited = tokio::time::timeout(Duration::from_millis(20), lock.acquire()).await;
            assert!(waited.is_err(), "round {round}: still waiting when dropped");
            let release = async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                holder.release().await.unwrap();
            };
            let (slept, ()) =
                tokio::join!(lock.client().simple_query("SELECT pg_sleep(0.15)"), release);
            slept.unwrap_or_else(|error| panic!("round {round}: {error}"));
            assert!(!lock.is_acquired());
            assert!(holders(&observer, key).await.is_empty(), "round {round}");
        }
    }

    #[tokio::test]
    async fn a_release_refused_by_an_aborted_transaction_keeps_the_lock_releasable() {
        // Failure 5, tokio flavour.
        let name = "interruption/tokio-aborted-release";
        let key = pg_key(name);
        let observer = connect().await;
        let mut lock = AsyncPgLock::new(connect().await, name);
        lock.acquire().await.unwrap();
        lock.client().batch_execute("BEGIN").await.unwrap();
        assert!(lock.client().batch_execute("SELECT 1/0").await.is_err());
        let refused = lock.release().await;
        assert!(
            matches!(refused, Err(Error::TransactionAborted { .. })),
            "{refused:?}"
        );
        assert!(lock.is_acquired());
        lock.client().batch_execute("ROLLBACK").await.unwrap();
        lock.release().await.unwrap();
        assert!(holders(&observer, key).await.is_empty());
    }

    #[tokio::test]
    async fn vanished_prepared_statements_are_prepared_again() {
        // Failure 6, tokio flavour.
        let name = "interruption/tokio-deallocate";
        let key = pg_key(name);
        let observer = connect().await;
        let mut lock = AsyncPgLock::new(connect().await, name);
        for _ in 0..3 {
            lock.acquire().await.unwrap();
            lock.release().await.unwrap();
        }
        lock.client().batch_execute("DISCARD ALL").await.unwrap();
        lock.acquire().await.unwrap();
        lock.client().batch_execute("DEALLOCATE ALL").await.unwrap();
        lock.release().await.unwrap();
        assert!(holders(&observer, key).await.is_empty());
        lock.client().batch_execute("DEALLOCATE ALL").await.unwrap();
        assert!(lock.try_acquire().await.unwrap());
        assert_eq!(holders(&observer, key).await.len(), 1);
        lock.release().await.unwrap();
        assert!(holders(&observer, key).await.is_empty());
    }

    #[tokio::test]
    async fn statement_timeout_neither_ends_a_wait_nor_changes_the_timeout_contract() {
        // Failure 7, tokio flavour.
        let name = "interruption/tokio-statement-timeout";
        let mut holder = AsyncPgLock::new(connect().await, name);
        holder.acquire().await.unwrap();
        let client = connect().await;
        client
            .batch_execute("SET statement_timeout = 300")
            .await
            .unwrap();
        let mut lock = AsyncPgLock::new(client, name);
        let started = Instant::now();
        assert!(
            !lock
                .acquire_timeout(Duration::from_millis(900))
                .await
                .unwrap()
        );
        assert!(started.elapsed() >= Duration::from_millis(900));
        let started = Instant::now();
        let (acquired, ()) = tokio::join!(lock.acquire(), async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            holder.release().await.unwrap();
        });
        acquired.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(700));
        let setting: String = lock
            .client()
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(setting, "300ms");
        lock.release().await.unwrap();
    }
}
