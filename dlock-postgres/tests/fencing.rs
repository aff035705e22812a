//! Fencing tokens: issued in the lock's own statement, strictly increasing per key across
//! every holder, form and flavour.

use std::time::Duration;

use dlock_postgres::{
    AsyncLock, AsyncPgLock, Error, Lock, PgKey, PgLock, install_fencing, install_fencing_async,
    install_fencing_in,
};
use dlock_testkit::postgres::{connect, connect_async, holder_pids};

fn key_of(key: &str) -> PgKey {
    dlock_postgres::KeyPolicy::default()
        .pg_key(&key.into())
        .unwrap()
}

/// The token a key's row in the default fence table keeps: the last one handed out for it.
fn row_token(key: PgKey) -> u64 {
    let (space, key) = match key {
        PgKey::BigInt(value) => (1_i16, value),
        PgKey::Pair(high, low) => (2, (i64::from(high) << 32) | (i64::from(low) & 0xffff_ffff)),
    };
    connect()
        .query_one(
            "SELECT token FROM public.dlock_fence WHERE key_space = $1 AND lock_key = $2",
            &[&space, &key],
        )
        .unwrap()
        .get::<_, i64>(0)
        .unsigned_abs()
}

#[test]
fn tokens_strictly_increase_across_holders_and_forms() {
    install_fencing(&mut connect()).unwrap();
    install_fencing(&mut connect()).unwrap(); // idempotent
    let key = "fencing/blocking";
    let mut last = 0;
    let mut lock = PgLock::new(connect(), key).fenced();
    assert_eq!(lock.fencing_token(), None, "not held yet");
    for round in 0..6 {
        match round % 3 {
            0 => lock.acquire().unwrap(),
            1 => assert!(lock.try_acquire().unwrap()),
            _ => assert!(lock.acquire_timeout(Duration::from_secs(1)).unwrap()),
        }
        let token = lock
            .fencing_token()
            .expect("a fenced lock that is held has a token");
        assert!(token > last, "round {round}: {token} after {last}");
        last = token;
        lock.release().unwrap();
        assert_eq!(lock.fencing_token(), None, "released");
    }
    // Another connection, another lock object: still higher.
    let mut other = PgLock::new(connect(), key).fenced();
    other.acquire().unwrap();
    assert!(other.fencing_token().unwrap() > last);
    // A busy try gets no token, and takes none.
    let mut busy = PgLock::new(connect(), key).fenced();
    assert!(!busy.try_acquire().unwrap());
    assert_eq!(busy.fencing_token(), None);
    let held = other.fencing_token().unwrap();
    assert_eq!(row_token(key_of(key)), held, "a busy try bumped nothing");
    other.release().unwrap();
    assert!(busy.try_acquire().unwrap());
    assert!(busy.fencing_token().unwrap() > held);
}

#[test]
fn a_pair_key_counts_in_one_row_whether_sent_as_text_or_prepared() {
    install_fencing(&mut connect()).unwrap();
    let key = (7_i32, -3_i32);
    let mut lock = PgLock::new(connect(), key).fenced();
    let mut tokens = Vec::new();
    // The first cycle sends text, the later ones prepared statements.
    for _ in 0..4 {
        assert!(lock.try_acquire().unwrap());
        tokens.push(lock.fencing_token().unwrap());
        lock.release().unwrap();
    }
    assert!(
        tokens.windows(2).all(|pair| pair[1] > pair[0]),
        "{tokens:?}"
    );
    let pair = dlock_postgres::KeyPolicy::default()
        .pg_key(&key.into())
        .unwrap();
    assert_eq!(row_token(pair), tokens[3], "one row for text and prepared");
    // Another object on the same pair continues the count.
    let mut other = PgLock::new(connect(), key).fenced();
    other.acquire().unwrap();
    assert!(other.fencing_token().unwrap() > tokens[3]);
}

#[test]
fn an_unfenced_lock_has_no_token() {
    let mut lock = PgLock::new(connect(), "fencing/unfenced");
    lock.acquire().unwrap();
    assert_eq!(lock.fencing_token(), None);
}

#[test]
fn without_the_table_a_fenced_acquire_fails_clearly_and_holds_nothing() {
    let key = "fencing/missing";
    let mut lock = PgLock::new(connect(), key)
        .fenced_in("dlock_fence_never_installed")
        .unwrap();
    for round in 0..3 {
        let error = match round {
            0 => lock.acquire().unwrap_err(),
            1 => lock.try_acquire().unwrap_err(),
            _ => lock.acquire_timeout(Duration::from_secs(1)).unwrap_err(),
        };
        assert!(
            matches!(error, Error::FencingNotInstalled { .. }),
            "{error:?}"
        );
        // It names the table it looked for, and the call that creates that one.
        dlock_testkit::assert_names_missing_fence_table(
            &error.to_string(),
            "dlock_fence_never_installed",
        );
        assert!(!lock.is_acquired());
        assert!(holder_pids(&mut connect(), key_of(key)).is_empty());
        // The connection is usable.
        lock.client().simple_query("SELECT 1").unwrap();
    }
    assert!(
        PgLock::new(connect(), key)
            .fenced_in("no such; table")
            .is_err()
    );
}

#[test]
fn a_table_of_its_own_counts_apart() {
    install_fencing_in(&mut connect(), "dlock_fence_other").unwrap();
    let mut lock = PgLock::new(connect(), "fencing/own-table")
        .fenced_in("dlock_fence_other")
        .unwrap();
    lock.acquire().unwrap();
    let first = lock.fencing_token().unwrap();
    lock.release().unwrap();
    lock.acquire().unwrap();
    assert_eq!(lock.fencing_token(), Some(first + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_tokens_increase_through_a_wait_in_slices() {
    install_fencing_async(&connect_async().await).await.unwrap();
    let key = "fencing/async";
    let mut holder = AsyncPgLock::new(connect_async().await, key).fenced();
    holder.acquire().await.unwrap();
    let held = holder.fencing_token().unwrap();
    // The waiter waits in slices; the release lands inside one of them.
    let waiter = tokio::spawn(async move {
        let mut waiter = AsyncPgLock::new(connect_async().await, key).fenced();
        assert!(
            waiter
                .acquire_timeout(Duration::from_secs(10))
                .await
                .unwrap()
        );
        let token = waiter.fencing_token().unwrap();
        waiter.release().await.unwrap();
        token
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.release().await.unwrap();
    let token = waiter.await.unwrap();
    assert!(token > held, "{token} after {held}");
    // A plain acquire and a try, too.
    let mut lock = AsyncPgLock::new(connect_async().await, key).fenced();
    lock.acquire().await.unwrap();
    let plain = lock.fencing_token().unwrap();
    assert!(plain > token);
    lock.release().await.unwrap();
    assert!(lock.try_acquire().await.unwrap());
    assert!(lock.fencing_token().unwrap() > plain);
}

/// The resource side, as the README shows it: a row that remembers the highest token that
/// wrote it, and refuses a write with a lower one.
#[test]
fn the_resource_refuses_a_stale_holders_write() {
    install_fencing(&mut connect()).unwrap();
    let mut db = connect();
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS fenced_reports (id int PRIMARY KEY, body text, \
         fence bigint NOT NULL DEFAULT 0); \
         INSERT INTO fenced_reports (id) VALUES (1) ON CONFLICT DO NOTHING",
    )
    .unwrap();
    let write = |db: &mut postgres::Client, body: &str, token: u64| -> bool {
        let token = i64::try_from(token).unwrap();
        let written = db
            .execute(
                "UPDATE fenced_reports SET body = $1, fence = $2 WHERE id = 1 AND fence <= $2",
                &[&body, &token],
            )
            .unwrap();
        written == 1
    };
    // The first holder takes the lock, then stalls past the loss of its session.
    let mut first = PgLock::new(connect(), "fencing/resource").fenced();
    first.acquire().unwrap();
    let stale = first.fencing_token().unwrap();
    assert!(write(&mut db, "first, on time", stale));
    let pid: i32 = first
        .client()
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    dlock_testkit::pg_terminate(pid);
    // The next holder gets a higher token and writes.
    let mut second = PgLock::new(connect(), "fencing/resource").fenced();
    second.acquire().unwrap();
    let fresh = second.fencing_token().unwrap();
    assert!(fresh > stale);
    assert!(write(&mut db, "second", fresh));
    // The first wakes up and writes with its old token: refused.
    assert!(!write(&mut db, "first, stale", stale));
    // The holder may write again with its own token.
    assert!(write(&mut db, "second, again", fresh));
    let body: String = db
        .query_one("SELECT body FROM fenced_reports WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(body, "second, again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_fenced_wait_leaves_no_holder_and_tokens_keep_growing() {
    install_fencing_async(&connect_async().await).await.unwrap();
    let key = "fencing/dropped";
    let mut holder = AsyncPgLock::new(connect_async().await, key).fenced();
    holder.acquire().await.unwrap();
    let held = holder.fencing_token().unwrap();
    let mut waiter = AsyncPgLock::new(connect_async().await, key).fenced();
    for _ in 0..3 {
        // Dropped mid-slice, as a tokio::time::timeout around it does.
        let dropped = tokio::time::timeout(Duration::from_millis(120), waiter.acquire()).await;
        assert!(dropped.is_err(), "the holder still holds");
    }
    holder.release().await.unwrap();
    // The waiter's next operation settles what its dropped slices left; it holds nothing.
    assert!(!waiter.verify().await.unwrap());
    assert!(!waiter.is_acquired());
    let observer = tokio::task::spawn_blocking(move || holder_pids(&mut connect(), key_of(key)))
        .await
        .unwrap();
    assert!(observer.is_empty(), "nobody holds the key: {observer:?}");
    let mut next = AsyncPgLock::new(connect_async().await, key).fenced();
    assert!(next.try_acquire().await.unwrap());
    let token = next.fencing_token().unwrap();
    assert!(token > held, "{token} after {held}");
}

#[test]
fn installs_that_race_all_succeed() {
    // Services that start together install together: CREATE TABLE IF NOT EXISTS alone fails
    // one of two concurrent creators.
    let table = format!("dlock_fence_race_{}", std::process::id());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let table = table.clone();
            std::thread::spawn(move || install_fencing_in(&mut connect(), &table))
        })
        .collect();
    for thread in threads {
        thread.join().unwrap().unwrap();
    }
    connect()
        .batch_execute(&format!("DROP TABLE {table}"))
        .unwrap();
}

#[test]
fn transaction_locks_count_with_session_locks_on_one_key() {
    install_fencing(&mut connect()).unwrap();
    let key = "fencing/xact";
    let mut session = PgLock::new(connect(), key).fenced();
    session.acquire().unwrap();
    let mut last = session.fencing_token().unwrap();
    session.release().unwrap();
    let mut client = connect();
    let xact = dlock_postgres::PgXactLock::new(key).fenced();
    assert_eq!(xact.fencing_token(), None);
    for round in 0..3 {
        let mut tx = client.transaction().unwrap();
        match round {
            0 => xact.acquire(&mut tx).unwrap(),
            1 => assert!(xact.try_acquire(&mut tx).unwrap()),
            _ => assert!(
                xact.acquire_timeout(&mut tx, Duration::from_secs(1))
                    .unwrap()
            ),
        }
        let token = xact.fencing_token().unwrap();
        assert!(token > last, "round {round}: {token} after {last}");
        last = token;
        tx.commit().unwrap();
    }
    session.acquire().unwrap();
    assert!(session.fencing_token().unwrap() > last);
}

#[test]
fn a_token_handed_out_in_a_transaction_that_rolls_back_is_used_up() {
    // The row's bump is undone with the transaction; the clock's tick is not, so the next
    // holder's token is higher than the one the rolled-back holder may have used.
    install_fencing(&mut connect()).unwrap();
    let key = "fencing/rolled-back";
    let mut client = connect();
    let xact = dlock_postgres::PgXactLock::new(key).fenced();
    let mut last = 0;
    for round in 0..3 {
        let mut tx = client.transaction().unwrap();
        assert!(xact.try_acquire(&mut tx).unwrap());
        let token = xact.fencing_token().unwrap();
        assert!(token > last, "round {round}: {token} after {last}");
        last = token;
        tx.rollback().unwrap();
    }
    // A session lock taken inside a raw transaction that rolls back, too.
    let mut lock = PgLock::new(connect(), key).fenced();
    lock.client().batch_execute("BEGIN").unwrap();
    lock.acquire().unwrap();
    let token = lock.fencing_token().unwrap();
    assert!(token > last, "{token} after {last}");
    lock.client().batch_execute("ROLLBACK").unwrap();
    lock.release().unwrap();
    let mut next = PgLock::new(connect(), key).fenced();
    next.acquire().unwrap();
    assert!(next.fencing_token().unwrap() > token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_transaction_lock_gets_its_token_through_a_wait_in_slices() {
    install_fencing_async(&connect_async().await).await.unwrap();
    let key = "fencing/xact-async";
    let mut holder = AsyncPgLock::new(connect_async().await, key).fenced();
    holder.acquire().await.unwrap();
    let held = holder.fencing_token().unwrap();
    let waiter = tokio::spawn(async move {
        let mut client = connect_async().await;
        let tx = client.transaction().await.unwrap();
        let xact = dlock_postgres::AsyncPgXactLock::new(key).fenced();
        xact.acquire(&tx).await.unwrap();
        let token = xact.fencing_token().unwrap();
        tx.commit().await.unwrap();
        token
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.release().await.unwrap();
    let token = waiter.await.unwrap();
    assert!(token > held, "{token} after {held}");
}

/// One counter per lock whatever a session's `search_path`: two clients that resolve
/// unqualified names in different schemas, each having installed fencing as documented, get
/// strictly increasing tokens in grant order (they got 1, 1, 2, 2, ... when the default
/// table was unqualified).
#[test]
fn tokens_count_in_one_table_whatever_the_search_path() {
    let key = "fencing/search-path";
    let mut clients: Vec<postgres::Client> = ["dlock_fence_a", "dlock_fence_b"]
        .into_iter()
        .map(|schema| {
            let mut client = connect();
            client
                .batch_execute(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path = {schema}"
                ))
                .unwrap();
            install_fencing(&mut client).unwrap();
            client
        })
        .collect();
    let mut tokens = Vec::new();
    for round in 0..6 {
        let mut lock = PgLock::new(&mut clients[round % 2], key).fenced();
        lock.acquire().unwrap();
        tokens.push(lock.fencing_token().unwrap());
        lock.release().unwrap();
    }
    assert!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens in grant order: {tokens:?}"
    );
}
