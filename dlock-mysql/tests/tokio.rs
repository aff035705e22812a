//! The semantics table of `dlock_core::AsyncLock`, row by row, for `AsyncMySqlLock`, and
//! what drops and cancelled futures leave behind, against a real MariaDB (or MySQL) server.
//! The blocking helpers of `common` look at the server from the side; tests run on a
//! multi-threaded runtime so that those blocking looks never starve the lock's tasks.

use dlock_testkit::mysql as common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    connect_async, eventually, holder_of, kill, kill_query, session_exists, wait_until_waiting,
};
use dlock_mysql::{AsyncLock, AsyncMySqlLock, Error, Key, KeyPolicy};
use mysql_async::prelude::Queryable;
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_lost_behind_the_objects_back_is_not_held_at_release() {
    let mut lock = AsyncMySqlLock::new(connect_async().await, "tokio/lost");
    lock.acquire().await.unwrap();
    lock.conn()
        .query_drop("SELECT RELEASE_ALL_LOCKS()")
        .await
        .unwrap();
    assert!(!lock.verify().await.unwrap());
    assert!(matches!(lock.release().await, Err(Error::NotHeld)));
    assert!(!lock.is_acquired());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_borrowed_lock_dropped_while_held_ends_its_session_proven_by_its_marker() {
    // Drop cannot wait for a release, and a borrowed connection can be neither taken nor
    // closed: the session is ended from another connection, once the marker lock the session
    // took with its first grant proves it is still this session (ids repeat after a
    // restart; a process-wide record of owed releases keyed by id once paid a debt on a new
    // session that got the same id).
    let mut conn = connect_async().await;
    let id = conn.id();
    {
        let mut lock = AsyncMySqlLock::new(&mut conn, "tokio/drop-borrowed");
        lock.acquire().await.unwrap();
        assert_eq!(holder_of("tokio/drop-borrowed"), Some(id));
    }
    assert!(eventually(|| !session_exists(id)), "the session was ended");
    assert_eq!(holder_of("tokio/drop-borrowed"), None);
    // Released before the drop, the borrowed connection stays usable, and holds nothing.
    let mut conn = connect_async().await;
    {
        let mut lock = AsyncMySqlLock::new(&mut conn, "tokio/drop-borrowed");
        lock.acquire().await.unwrap();
        lock.release().await.unwrap();
    }
    conn.query_drop("SELECT 1").await.unwrap();
    assert_eq!(holder_of("tokio/drop-borrowed"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_lock_on_the_same_session_dropped_while_held_settles_exactly_its_own_hold() {
    // Two objects hold one name on one session (the server counts the holds). Dropping the
    // second while it holds leaves its hold owed to the session, which pays it before its next
    // statement through dlock: the first object's hold stays, nothing leaks, nothing is ended.
    for round in 0..3 {
        let name = "tokio/second-on-session";
        // On a connection the first lock owns, and on one it borrows.
        let owned = AsyncMySqlLock::new(connect_async().await, name);
        second_dropped_while_held(owned, round).await;
        let mut raw = connect_async().await;
        second_dropped_while_held(AsyncMySqlLock::new(&mut raw, name), round).await;
        raw.query_drop("SELECT 1").await.unwrap();
    }
}

async fn second_dropped_while_held<C: dlock_mysql::AsyncMySqlConnection>(
    mut first: AsyncMySqlLock<C>,
    round: i32,
) {
    let name = first.name().unwrap();
    let id = first.conn().id();
    first.acquire().await.unwrap();
    {
        let mut second = AsyncMySqlLock::new(first.conn(), name.as_str());
        assert!(second.try_acquire().await.unwrap(), "round {round}");
    }
    assert!(
        first.verify().await.unwrap(),
        "round {round}: the first hold stays"
    );
    assert!(
        session_exists(id),
        "round {round}: the session was not ended"
    );
    let mut other = AsyncMySqlLock::new(connect_async().await, name.as_str());
    assert!(!other.try_acquire().await.unwrap(), "round {round}");
    first.release().await.unwrap();
    assert!(
        other.try_acquire().await.unwrap(),
        "round {round}: no hold leaked"
    );
    other.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_keeps_what_dropped_locks_owe_and_pays_it_before_its_next_lock() {
    let mut session = dlock_mysql::AsyncMySqlSession::new(connect_async().await);
    let id = session.id();
    for key in ["tokio/session/a", "tokio/session/b"] {
        let mut lock = session.lock(key);
        assert!(lock.try_acquire().await.unwrap());
        // Dropped while held: owed to the session, which outlives the lock.
    }
    // The second lock's first statement paid what the first owed; the second's is owed.
    assert_eq!(holder_of("tokio/session/a"), None);
    assert_eq!(holder_of("tokio/session/b"), Some(id));
    let mut next = session.lock("tokio/session/c");
    assert!(next.try_acquire().await.unwrap());
    assert_eq!(
        holder_of("tokio/session/b"),
        None,
        "paid before the next lock"
    );
    next.release().await.unwrap();
    drop(next);
    // A session dropped owing, on a connection it owns, pays from a spawned task.
    let mut lock = session.lock("tokio/session/a");
    assert!(lock.try_acquire().await.unwrap());
    drop(lock);
    drop(session);
    assert!(eventually(|| holder_of("tokio/session/a").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_that_lands_after_its_future_stopped_is_found_by_its_sessions_marker() {
    // The wait is granted while nobody reads its reply, and the future is dropped only then:
    // the statement is over by the time anyone looks, and the marker lock the session took
    // with that grant (its first) proves the session, which is ended although its owned
    // lock object lives on.
    for round in 0..5 {
        let name = "tokio/late-grant";
        let (mut holder, _) = held(name).await;
        let mut lock = AsyncMySqlLock::new(connect_async().await, name);
        let id = lock.conn().id();
        {
            let mut waiting = std::pin::pin!(lock.acquire());
            tokio::select! {
                outcome = &mut waiting => panic!("round {round}: granted early: {outcome:?}"),
                waited = tokio::task::spawn_blocking(move || wait_until_waiting(id)) => waited.unwrap(),
            }
            holder.release().await.unwrap();
            assert!(
                eventually(|| holder_of(name) == Some(id)),
                "round {round}: granted, with the reply unread"
            );
        }
        assert!(
            eventually(|| !session_exists(id)),
            "round {round}: the session was ended"
        );
        assert_eq!(holder_of(name), None, "round {round}");
        assert!(matches!(
            lock.try_acquire().await,
            Err(Error::ConnectionUnusable { .. })
        ));
    }
}

/// Takes `name` in a fresh session and returns the lock with its session id.
async fn held(name: &'static str) -> (AsyncMySqlLock<mysql_async::Conn>, u32) {
    let mut lock = AsyncMySqlLock::new(connect_async().await, name);
    lock.acquire().await.unwrap();
    let id = lock.conn().id();
    (lock, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_acquire_ends_its_session_and_the_lock_is_unusable_after() {
    for owned in [true, false] {
        let name = if owned {
            "tokio/cancel-owned"
        } else {
            "tokio/cancel-borrowed"
        };
        let (mut holder, _) = held(name).await;
        let mut conn = connect_async().await;
        let waiter_id = conn.id();
        let outcome = if owned {
            let mut waiter = AsyncMySqlLock::new(conn, name);
            let outcome = tokio::time::timeout(Duration::from_millis(300), waiter.acquire()).await;
            assert!(matches!(
                waiter.try_acquire().await,
                Err(Error::ConnectionUnusable { .. })
            ));
            assert!(!waiter.verify().await.unwrap());
            outcome
        } else {
            let mut waiter = AsyncMySqlLock::new(&mut conn, name);
            let outcome = tokio::time::timeout(Duration::from_millis(300), waiter.acquire()).await;
            let error = waiter.release().await.unwrap_err();
            assert!(matches!(error, Error::NotAcquired), "{error:?}");
            let error = waiter.try_acquire().await.unwrap_err();
            assert!(
                error.to_string().contains("open a new connection"),
                "{error}"
            );
            outcome
        };
        assert!(outcome.is_err(), "the acquire was cancelled by the timeout");
        holder.release().await.unwrap();
        assert!(
            eventually(|| !session_exists(waiter_id)),
            "the waiting session was ended"
        );
        assert_eq!(holder_of(name), None, "nobody holds the name");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_racing_the_handover_never_leaves_the_lock_held() {
    for round in 0..10_u64 {
        let (mut holder, _) = held("tokio/cancel-race").await;
        let mut waiter = AsyncMySqlLock::new(connect_async().await, "tokio/cancel-race");
        let waiter_id = waiter.conn().id();
        // Release at about the moment the waiter gives up, at a shifting offset.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(95 + round)).await;
            holder.release().await.unwrap();
        });
        let _ = tokio::time::timeout(Duration::from_millis(100), waiter.acquire()).await;
        release.await.unwrap();
        drop(waiter);
        assert!(eventually(|| !session_exists(waiter_id)), "round {round}");
        assert_eq!(holder_of("tokio/cancel-race"), None, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_statement_is_canceled_and_a_deadlock_is_deadlock() {
    let (_holder, _) = held("tokio/kill-query").await;
    let mut waiter = AsyncMySqlLock::new(connect_async().await, "tokio/kill-query");
    let waiter_id = waiter.conn().id();
    let waiting = tokio::spawn(async move { waiter.acquire().await });
    tokio::task::spawn_blocking(move || {
        wait_until_waiting(waiter_id);
        kill_query(waiter_id);
    })
    .await
    .unwrap();
    let outcome = waiting.await.unwrap();
    assert!(
        matches!(outcome, Err(Error::Canceled { .. })),
        "{outcome:?}"
    );

    let barrier = Arc::new(Barrier::new(2));
    let contender = |first: &'static str, second: &'static str| {
        let barrier = Arc::clone(&barrier);
        tokio::spawn(async move {
            let mut conn = connect_async().await;
            let mut first = AsyncMySqlLock::new(&mut conn, first);
            first.acquire().await.unwrap();
            barrier.wait().await;
            let mut second = AsyncMySqlLock::new(first.conn(), second);
            let outcome = second.acquire_timeout(Duration::from_secs(20)).await;
            if second.is_acquired() {
                second.release().await.unwrap();
            }
            drop(second);
            // The winner waits for the victim's first lock: release it now.
            first.release().await.unwrap();
            outcome
        })
    };
    let one = contender("tokio/deadlock-a", "tokio/deadlock-b");
    let two = contender("tokio/deadlock-b", "tokio/deadlock-a");
    let outcomes = [one.await.unwrap(), two.await.unwrap()];
    // MariaDB can pick both waits as victims when they start at the same instant; what
    // matters is that a deadlock is reported as one and nothing else goes wrong.
    assert!(
        outcomes
            .iter()
            .any(|outcome| matches!(outcome, Err(Error::Deadlock { .. }))),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, Ok(true) | Err(Error::Deadlock { .. }))),
        "{outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_names_and_unsupported_modes_are_refused_before_any_io() {
    let mut conn = connect_async().await;
    kill(conn.id());
    let keys = [
        Key::from(""),
        Key::from("x".repeat(65)),
        // 64 characters of four bytes: within MySQL's 64 characters, over MariaDB's 192 bytes.
        Key::from("😀".repeat(64)),
        Key::from(&[0xff_u8][..]),
        Key::from("nul\0inside"),
    ];
    for key in keys {
        let mut lock = AsyncMySqlLock::new(&mut conn, key.clone());
        assert!(
            matches!(lock.acquire().await, Err(Error::InvalidKey { .. })),
            "{key}"
        );
        assert!(matches!(
            lock.acquire_timeout(Duration::from_secs(1)).await,
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(lock.verify().await, Err(Error::InvalidKey { .. })));
    }
    let mut shared = AsyncMySqlLock::new(&mut conn, "tokio/shared").shared();
    let error = shared.try_acquire().await.unwrap_err();
    assert!(error.to_string().contains("PostgreSQL"), "{error}");
    drop(shared);
    let mut xact = AsyncMySqlLock::new(&mut conn, "tokio/shared").transaction_scoped();
    assert!(matches!(
        xact.acquire().await,
        Err(Error::Unsupported { .. })
    ));
    drop(xact);
    // A long key works under the hashed policy.
    let mut hashed = AsyncMySqlLock::new(connect_async().await, "tokio/long-".repeat(20))
        .policy(KeyPolicy::HashedMySqlName);
    hashed.acquire().await.unwrap();
    assert!(holder_of(&hashed.name().unwrap()).is_some());
    // A lost connection is ConnectionLost, and verify is false.
    let mut lost = AsyncMySqlLock::new(conn, "tokio/lost-connection");
    assert!(!lost.verify().await.unwrap());
    let outcome = lost.try_acquire().await;
    assert!(
        matches!(outcome, Err(Error::ConnectionLost { .. })),
        "{outcome:?}"
    );
}

/// `tokio::batch` does many tries and releases in one statement, each answered in order,
/// and what it takes excludes other sessions as any lock does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_tries_and_releases_many_names_in_one_statement() {
    use dlock_mysql::tokio::{SharedOp, batch};
    let (a, b, c) = ("tokio/batch-a", "tokio/batch-b", "tokio/batch-c");
    let mut shared = connect_async().await;
    let mut other = connect_async().await;
    other
        .query_drop(format!("DO GET_LOCK('{c}', 0)"))
        .await
        .unwrap();
    let answers = batch(
        &mut shared,
        &[
            (SharedOp::TryLock, a),
            (SharedOp::TryLock, b),
            (SharedOp::TryLock, c),
        ],
    )
    .await
    .unwrap();
    assert_eq!(answers, [true, true, false], "c is another session's");
    let (a_owned, b_owned) = (a.to_owned(), b.to_owned());
    assert!(
        tokio::task::spawn_blocking(
            move || holder_of(&a_owned).is_some() && holder_of(&b_owned).is_some()
        )
        .await
        .unwrap()
    );
    let answers = batch(
        &mut shared,
        &[
            (SharedOp::Unlock, a),
            (SharedOp::UnlockIfHeld, b),
            (SharedOp::UnlockIfHeld, c),
            (SharedOp::Unlock, "tokio/batch-never"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(answers, [true, true, false, false]);
    let answers = batch(
        &mut other,
        &[(SharedOp::TryLock, a), (SharedOp::TryLock, b)],
    )
    .await
    .unwrap();
    assert_eq!(answers, [true, true], "released for everyone");
    assert!(batch(&mut shared, &[]).await.unwrap().is_empty());
}

/// The statements `conn`'s session has run so far (`SELECT`s and `SET`s), as the server
/// counts them.
async fn statements_run(conn: &mut mysql_async::Conn) -> u64 {
    let mut run = 0;
    for counter in ["Com_select", "Com_set_option"] {
        let row: Option<(String, u64)> = conn
            .query_first(format!("SHOW SESSION STATUS LIKE '{counter}'"))
            .await
            .unwrap();
        run += row.unwrap().1;
    }
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_costs_its_lock_and_release_statements_once_its_session_is_known() {
    let name = "tokio/per-use";
    let mut conn = connect_async().await;
    // The first lock on the session checks the deployment and takes the session's marker.
    let mut lock = AsyncMySqlLock::new(&mut conn, name);
    assert!(lock.try_acquire().await.unwrap());
    lock.release().await.unwrap();
    // Reused, and made per use on the same connection: two statements a cycle, the marker
    // found where it was left.
    for round in 0..4 {
        let before = statements_run(lock.conn()).await;
        if round % 2 == 0 {
            assert!(lock.try_acquire().await.unwrap());
        } else {
            lock.acquire().await.unwrap();
        }
        lock.release().await.unwrap();
        assert_eq!(statements_run(lock.conn()).await - before, 2, "reused");
    }
    drop(lock);
    for round in 0..4 {
        let before = statements_run(&mut conn).await;
        let mut lock = AsyncMySqlLock::new(&mut conn, name);
        if round % 2 == 0 {
            assert!(lock.try_acquire().await.unwrap());
        } else {
            lock.acquire().await.unwrap();
        }
        lock.release().await.unwrap();
        drop(lock);
        assert_eq!(statements_run(&mut conn).await - before, 2, "made per use");
    }
}
