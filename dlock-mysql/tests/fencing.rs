//! Fencing tokens: one statement after the grant, strictly increasing per name across every
//! holder, form and flavour.

use std::time::Duration;

use dlock_mysql::{
    AsyncLock, AsyncMySqlLock, Error, Lock, MySqlLock, install_fencing, install_fencing_async,
};
use dlock_testkit::mysql::{connect, connect_async, holder_of};
use mysql::prelude::Queryable;

#[test]
fn tokens_strictly_increase_across_holders_and_forms() {
    install_fencing(&mut connect()).unwrap();
    install_fencing(&mut connect()).unwrap(); // idempotent
    let name = "fencing/blocking";
    let mut last = 0;
    let mut lock = MySqlLock::new(connect(), name).fenced();
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
    let mut other = MySqlLock::new(connect(), name).fenced();
    other.acquire().unwrap();
    let held = other.fencing_token().unwrap();
    assert!(held > last);
    // A busy try gets no token, and takes none.
    let mut busy = MySqlLock::new(connect(), name).fenced();
    assert!(!busy.try_acquire().unwrap());
    assert_eq!(busy.fencing_token(), None);
    assert_eq!(row_token(name), Some(held), "a busy try bumped nothing");
    other.release().unwrap();
    assert!(busy.try_acquire().unwrap());
    assert!(busy.fencing_token().unwrap() > held);
}

/// The token a name's row in the default fence table keeps: the last one handed out for it.
fn row_token(name: &str) -> Option<u64> {
    connect()
        .exec_first(
            "SELECT token FROM dlock.dlock_fence WHERE lock_name = ?",
            (name.as_bytes(),),
        )
        .unwrap()
}

/// A token handed out inside a transaction that rolls back is used up: MariaDB draws it from
/// the table's clock, a sequence no rollback takes back (the row's bump is undone with the
/// transaction).
#[test]
fn a_token_handed_out_in_a_transaction_that_rolls_back_is_used_up() {
    install_fencing(&mut connect()).unwrap();
    let name = "fencing/rolled-back";
    let mut lock = MySqlLock::new(connect(), name).fenced();
    if lock.conn().server_version().0 < 10 && lock.conn().server_version() != (5, 5, 5) {
        // MySQL has no sequences: its row alone counts, and a rollback takes the bump back
        // (documented).
        return;
    }
    let mut last = 0;
    for round in 0..3 {
        lock.conn().query_drop("BEGIN").unwrap();
        lock.acquire().unwrap();
        let token = lock.fencing_token().unwrap();
        assert!(token > last, "round {round}: {token} after {last}");
        last = token;
        lock.conn().query_drop("ROLLBACK").unwrap();
        lock.release().unwrap();
    }
    let mut next = MySqlLock::new(connect(), name).fenced();
    next.acquire().unwrap();
    assert!(next.fencing_token().unwrap() > last);
}

#[test]
fn without_the_table_a_fenced_acquire_fails_clearly_and_holds_nothing() {
    let name = "fencing/missing";
    let mut lock = MySqlLock::new(connect(), name)
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
        assert_eq!(holder_of(name), None, "the lock was given back");
        // The connection is usable.
        let one: Option<i64> = lock.conn().query_first("SELECT 1").unwrap();
        assert_eq!(one, Some(1));
    }
    assert!(
        MySqlLock::new(connect(), name)
            .fenced_in("no such`table")
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_tokens_increase_through_a_wait() {
    install_fencing_async(&mut connect_async().await)
        .await
        .unwrap();
    let name = "fencing/async";
    let mut holder = AsyncMySqlLock::new(connect_async().await, name).fenced();
    holder.acquire().await.unwrap();
    let held = holder.fencing_token().unwrap();
    let waiter = tokio::spawn(async move {
        let mut waiter = AsyncMySqlLock::new(connect_async().await, name).fenced();
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
    let mut lock = AsyncMySqlLock::new(connect_async().await, name).fenced();
    assert!(lock.try_acquire().await.unwrap());
    assert!(lock.fencing_token().unwrap() > token);
}

/// One counter per lock whatever a connection's default database: two connections with
/// different default databases, each having installed fencing as documented, get strictly
/// increasing tokens in grant order (they got 1, 1, 2, 2, ... when the default table was
/// unqualified).
#[test]
fn tokens_count_in_one_table_whatever_the_default_database() {
    let name = "fencing/default-database";
    connect()
        .query_drop("CREATE DATABASE IF NOT EXISTS dlock_fence_other")
        .unwrap();
    let url = dlock_testkit::mysql::mysql_url();
    let other_url = format!("{}/dlock_fence_other", url.rsplit_once('/').unwrap().0);
    let mut conns = [
        connect(),
        mysql::Conn::new(mysql::Opts::from_url(&other_url).unwrap()).unwrap(),
    ];
    for conn in &mut conns {
        install_fencing(conn).unwrap();
    }
    let mut tokens = Vec::new();
    for round in 0..6 {
        let mut lock = MySqlLock::new(&mut conns[round % 2], name).fenced();
        lock.acquire().unwrap();
        tokens.push(lock.fencing_token().unwrap());
        lock.release().unwrap();
    }
    assert!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens in grant order: {tokens:?}"
    );
}
