//! Interruption against a real server: a session statement time limit that would cut a wait
//! short, and a `KILL QUERY` racing the grant. Keys are the tests' own: tests run in parallel.
#![cfg(any(feature = "blocking", feature = "tokio"))]

use dlock_testkit::mysql as common;

use std::time::{Duration, Instant};

#[cfg(feature = "blocking")]
mod blocking {
    use super::*;
    use common::{connect, holder_of, wait_until_waiting};
    use dlock_mysql::{Lock, MySqlLock};
    use mysql::prelude::Queryable;
    use std::thread;

    #[test]
    fn max_statement_time_neither_ends_a_wait_nor_changes_the_timeout_contract() {
        // Failure 9: a session max_statement_time of 0.3 s.
        let name = "interruption/blocking-max-statement-time";
        let mut holder = MySqlLock::new(connect(), name);
        holder.acquire().unwrap();
        let mut conn = connect();
        conn.query_drop("SET max_statement_time = 0.3").unwrap();
        let mut lock = MySqlLock::new(conn, name);
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
        let setting: Option<f64> = lock
            .conn()
            .query_first("SELECT @@max_statement_time")
            .unwrap();
        assert_eq!(setting, Some(0.3), "the session's setting is unchanged");
        lock.release().unwrap();
        assert_eq!(holder_of(name), None);
    }

    #[test]
    fn a_kill_query_racing_the_grant_never_leaves_an_untracked_lock() {
        let name = "interruption/blocking-kill-with-grant";
        let mut holder = connect();
        let mut killer = connect();
        let (mut granted, mut canceled) = (0, 0);
        for round in 0..30 {
            let _: Option<i64> = holder
                .query_first(format!("SELECT GET_LOCK('{name}', 0)"))
                .unwrap();
            let conn = connect();
            let id = conn.connection_id();
            let waiter = thread::spawn(move || {
                let mut lock = MySqlLock::new(conn, name);
                let outcome = lock.acquire();
                (outcome, lock)
            });
            wait_until_waiting(id);
            // Both orders, so the grant and the kill land together in some rounds.
            let release = format!("SELECT RELEASE_LOCK('{name}')");
            let kill = format!("KILL QUERY {id}");
            if round % 2 == 0 {
                let _: Option<i64> = holder.query_first(&release).unwrap();
                killer.query_drop(&kill).unwrap();
            } else {
                killer.query_drop(&kill).unwrap();
                let _: Option<i64> = holder.query_first(&release).unwrap();
            }
            let (outcome, mut lock) = waiter.join().unwrap();
            let holds = holder_of(name) == Some(id);
            match outcome {
                Ok(()) => {
                    granted += 1;
                    assert!(lock.is_acquired() && holds, "round {round}");
                    lock.release().unwrap();
                }
                Err(error) => {
                    canceled += 1;
                    assert!(!holds && !lock.is_acquired(), "round {round}: {error}");
                }
            }
        }
        println!("KILL QUERY with grant: {granted} granted, {canceled} canceled");
    }
}

#[cfg(feature = "tokio")]
mod tokio_flavour {
    use super::*;
    use common::connect_async;
    use dlock_mysql::{AsyncLock, AsyncMySqlLock};
    use mysql_async::prelude::Queryable as _;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_statement_time_neither_ends_a_wait_nor_changes_the_timeout_contract() {
        // Failure 9, tokio flavour.
        let name = "interruption/tokio-max-statement-time";
        let mut holder = AsyncMySqlLock::new(connect_async().await, name);
        holder.acquire().await.unwrap();
        let mut conn = connect_async().await;
        conn.query_drop("SET max_statement_time = 0.3")
            .await
            .unwrap();
        let mut lock = AsyncMySqlLock::new(conn, name);
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
        let setting: Option<f64> = lock
            .conn()
            .query_first("SELECT @@max_statement_time")
            .await
            .unwrap();
        assert_eq!(setting, Some(0.3));
        lock.release().await.unwrap();
    }
}
