//! `PgSession`: many keys over one server session, released in any order, and the holds
//! dropped locks leave owed paid exactly, against a real PostgreSQL server.

use dlock_testkit::postgres as common;

use common::{backend_pid, connect, holder_pids};
use dlock_postgres::{Error, Key, KeyPolicy, Lock, PgLock, PgSession};

fn pg_key(name: &str) -> dlock_postgres::PgKey {
    KeyPolicy::default().pg_key(&Key::from(name)).unwrap()
}

#[test]
fn a_session_holds_many_keys_and_releases_them_in_any_order() {
    let names = ["sessions/many-1", "sessions/many-2", "sessions/many-3"];
    let mut observer = connect();
    let mut client = connect();
    let pid = backend_pid(&mut client);
    let mut session = PgSession::new(&mut client);
    for name in names {
        session.acquire(name).unwrap();
    }
    assert_eq!(session.held().count(), 3);
    session.release(names[0]).unwrap();
    assert!(holder_pids(&mut observer, pg_key(names[0])).is_empty());
    assert_eq!(holder_pids(&mut observer, pg_key(names[1])), vec![pid]);
    session.release(names[2]).unwrap();
    assert_eq!(holder_pids(&mut observer, pg_key(names[1])), vec![pid]);
    assert!(holder_pids(&mut observer, pg_key(names[2])).is_empty());
    assert!(matches!(session.release(names[2]), Err(Error::NotAcquired)));
    // Another session is excluded from what this one holds, and gets what it gave back.
    let mut other = PgSession::new(connect());
    assert!(!other.try_acquire(names[1]).unwrap());
    assert!(other.try_acquire(names[0]).unwrap());
    // Dropping a session releases what it holds.
    drop(session);
    assert!(holder_pids(&mut observer, pg_key(names[1])).is_empty());
    let (_, released) = other.into_inner();
    released.unwrap();
    assert!(holder_pids(&mut observer, pg_key(names[0])).is_empty());
}

#[test]
fn a_key_taken_twice_by_a_session_is_held_until_both_holds_are_given_back() {
    let name = "sessions/twice";
    let mut observer = connect();
    let mut session = PgSession::new(connect());
    session.acquire(name).unwrap();
    assert!(
        session.try_acquire(name).unwrap(),
        "a session's second hold"
    );
    session.release(name).unwrap();
    assert_eq!(holder_pids(&mut observer, pg_key(name)).len(), 1);
    session.release(name).unwrap();
    assert!(holder_pids(&mut observer, pg_key(name)).is_empty());
}

#[test]
fn a_lock_dropped_inside_an_aborted_transaction_is_released_after_the_rollback() {
    // The server refuses the dropped lock's unlock (25P02); the session owes the hold and
    // pays exactly it before its next statement through dlock: the session's other hold of
    // the same key stays.
    let name = "sessions/aborted-drop";
    let mut observer = connect();
    let mut session = PgSession::new(connect());
    session.acquire(name).unwrap();
    {
        let mut lock = session.lock(name);
        lock.acquire().unwrap();
        lock.client().batch_execute("BEGIN").unwrap();
        assert!(lock.client().batch_execute("SELECT 1/0").is_err());
    }
    session.client().batch_execute("ROLLBACK").unwrap();
    // The next statement through dlock pays what is owed.
    assert!(session.try_acquire("sessions/aborted-drop-other").unwrap());
    let mut check = PgLock::new(&mut session, name);
    assert!(check.verify().unwrap(), "the session's own hold stays");
    drop(check);
    session.release(name).unwrap();
    assert!(
        holder_pids(&mut observer, pg_key(name)).is_empty(),
        "the dropped hold was released, and no other"
    );
    session.release("sessions/aborted-drop-other").unwrap();
}

#[test]
fn a_release_refused_inside_an_aborted_transaction_keeps_the_key_releasable() {
    let name = "sessions/aborted-release";
    let mut observer = connect();
    let mut session = PgSession::new(connect());
    session.acquire(name).unwrap();
    session.client().batch_execute("BEGIN").unwrap();
    assert!(session.client().batch_execute("SELECT 1/0").is_err());
    let refused = session.release(name);
    assert!(
        matches!(refused, Err(Error::TransactionAborted { .. })),
        "{refused:?}"
    );
    assert_eq!(session.held().count(), 1, "still held, and known to be");
    session.client().batch_execute("ROLLBACK").unwrap();
    session.release(name).unwrap();
    assert!(holder_pids(&mut observer, pg_key(name)).is_empty());
}

#[test]
fn a_session_dropped_inside_an_aborted_transaction_leaves_its_holds_to_its_client() {
    // Owned client: dropping the session closes the connection, which frees every lock.
    // Borrowed client: the drop cannot release inside the aborted transaction, and says so;
    // the session's holds end with the client's session.
    let name = "sessions/aborted-session-drop";
    let mut observer = connect();
    let mut session = PgSession::new(connect());
    session.acquire(name).unwrap();
    session.client().batch_execute("BEGIN").unwrap();
    assert!(session.client().batch_execute("SELECT 1/0").is_err());
    drop(session);
    // The server notices the closed connection at once on a local socket, but not
    // necessarily before this query: ask until it has.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !holder_pids(&mut observer, pg_key(name)).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed session's lock is freed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn locks_made_per_use_on_a_session_share_its_check_and_statements() {
    // Made per use, each lock on the session excludes as a reused lock does.
    let name = "sessions/per-use";
    let mut session = PgSession::new(connect());
    let mut other = PgLock::new(connect(), name);
    for round in 0..5 {
        let mut lock = session.lock(name);
        assert!(lock.try_acquire().unwrap(), "round {round}");
        assert!(!other.try_acquire().unwrap(), "round {round}: excluded");
        lock.release().unwrap();
    }
    assert!(other.try_acquire().unwrap());
    other.release().unwrap();
}

mod tokio_flavour {
    use super::pg_key;
    use dlock_testkit::postgres::{backend_pid_async, connect_async};
    use std::time::Duration;

    use dlock_postgres::{AsyncLock, AsyncPgLock, AsyncPgSession, Error, holders_async};
    use tokio_postgres::Client;

    async fn holder_pids(observer: &Client, name: &str) -> Vec<i32> {
        holders_async(observer, pg_key(name))
            .await
            .unwrap()
            .iter()
            .map(|holder| holder.pid)
            .collect()
    }

    #[tokio::test]
    async fn a_session_holds_many_keys_and_releases_them_in_any_order() {
        let names = ["sessions/tokio-many-1", "sessions/tokio-many-2"];
        let observer = connect_async().await;
        let client = connect_async().await;
        let pid = backend_pid_async(&client).await;
        let mut session = AsyncPgSession::new(client);
        session.acquire(names[0]).await.unwrap();
        assert!(session.try_acquire(names[1]).await.unwrap());
        session.release(names[0]).await.unwrap();
        assert!(holder_pids(&observer, names[0]).await.is_empty());
        assert_eq!(holder_pids(&observer, names[1]).await, vec![pid]);
        assert!(matches!(
            session.release(names[0]).await,
            Err(Error::NotAcquired)
        ));
        let mut other = AsyncPgSession::new(connect_async().await);
        assert!(
            !other
                .acquire_timeout(names[1], Duration::from_millis(50))
                .await
                .unwrap()
        );
        let (_, released) = session.into_inner().await;
        released.unwrap();
        assert!(holder_pids(&observer, names[1]).await.is_empty());
        assert!(other.try_acquire(names[1]).await.unwrap());
        other.release(names[1]).await.unwrap();
    }

    #[tokio::test]
    async fn a_lock_dropped_inside_an_aborted_transaction_is_released_after_the_rollback() {
        let name = "sessions/tokio-aborted-drop";
        let observer = connect_async().await;
        let mut session = AsyncPgSession::new(connect_async().await);
        session.acquire(name).await.unwrap();
        {
            let mut lock = session.lock(name);
            lock.acquire().await.unwrap();
            lock.client().batch_execute("BEGIN").await.unwrap();
            assert!(lock.client().batch_execute("SELECT 1/0").await.is_err());
            // Dropped holding: its unlock is queued, and refused.
        }
        session.client().batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(holder_pids(&observer, name).await.len(), 1);
        // The next statement through dlock reads the refusal and pays the hold, exactly.
        let mut check = AsyncPgLock::new(&mut session, name);
        assert!(
            check.verify().await.unwrap(),
            "the session's own hold stays"
        );
        drop(check);
        session.release(name).await.unwrap();
        assert!(
            holder_pids(&observer, name).await.is_empty(),
            "the dropped hold was released, and no other"
        );
    }

    #[tokio::test]
    async fn a_second_lock_on_a_session_dropped_while_held_takes_only_its_own_hold() {
        let name = "sessions/tokio-second";
        let observer = connect_async().await;
        let mut session = AsyncPgSession::new(connect_async().await);
        let mut first = session.lock(name);
        first.acquire().await.unwrap();
        {
            let mut second = AsyncPgLock::new(first.get_mut(), name);
            assert!(second.try_acquire().await.unwrap());
        }
        assert!(first.verify().await.unwrap(), "the first hold stays");
        first.release().await.unwrap();
        drop(first);
        // Nothing leaked: the session's next statement settled the dropped hold.
        assert!(
            session
                .try_acquire("sessions/tokio-second-other")
                .await
                .unwrap()
        );
        assert!(holder_pids(&observer, name).await.is_empty());
        session
            .release("sessions/tokio-second-other")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_session_acquire_dropped_mid_wait_leaves_nothing_held() {
        let name = "sessions/tokio-dropped-wait";
        let observer = connect_async().await;
        let mut holder = AsyncPgSession::new(connect_async().await);
        holder.acquire(name).await.unwrap();
        let mut session = AsyncPgSession::new(connect_async().await);
        let dropped = tokio::time::timeout(Duration::from_millis(120), session.acquire(name)).await;
        assert!(dropped.is_err(), "still waiting when dropped");
        holder.release(name).await.unwrap();
        // Whatever the dropped wait was granted, the session's next statement undid it.
        assert!(
            session
                .try_acquire("sessions/tokio-dropped-wait-other")
                .await
                .unwrap()
        );
        assert_eq!(session.held().count(), 1);
        assert!(holder_pids(&observer, name).await.is_empty());
        let (_, released) = session.into_inner().await;
        released.unwrap();
    }

    #[tokio::test]
    async fn a_session_release_dropped_after_its_first_poll_gives_the_key_back() {
        let name = "sessions/tokio-dropped-release";
        let observer = connect_async().await;
        let mut session = AsyncPgSession::new(connect_async().await);
        session.acquire(name).await.unwrap();
        {
            let release = session.release(name);
            dlock_testkit::postgres::poll_once_and_drop(release).await;
        }
        assert_eq!(
            session.held().count(),
            0,
            "counts as given back once polled"
        );
        // The session's next statement reads what the dropped release left in flight.
        assert!(
            session
                .try_acquire("sessions/tokio-dropped-release-other")
                .await
                .unwrap()
        );
        assert!(holder_pids(&observer, name).await.is_empty());
        session
            .release("sessions/tokio-dropped-release-other")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_session_dropped_holding_on_a_borrowed_client_queues_its_unlocks() {
        let name = "sessions/tokio-dropped-borrowed";
        let observer = connect_async().await;
        let mut client = connect_async().await;
        let mut session = AsyncPgSession::new(&mut client);
        session.acquire(name).await.unwrap();
        assert!(session.try_acquire(name).await.unwrap(), "held twice");
        drop(session);
        // Queued on the client, ahead of anything sent after: this query runs after them.
        client.simple_query("SELECT 1").await.unwrap();
        assert!(holder_pids(&observer, name).await.is_empty());
    }
}
