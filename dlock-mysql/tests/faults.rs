//! Faults a bare MySQL/MariaDB lock survives: a frozen server, and a restart that hands an
//! old session's id to a new one. These tests freeze and restart their server, so they run on
//! the servers of the matrix's `db:faults` row: `cargo xtask test-matrix --only db:faults`.

use dlock_testkit as common;

use std::time::{Duration, Instant};

use dlock_mysql::{AsyncLock, AsyncMySqlLock, Error, Lock, MySqlLock};
use dlock_testkit::faults::{Frozen, SLACK, TIMEOUT, crash_mariadb, my_pid, restart_mariadb};

#[test]
fn a_read_timeout_bounds_a_blocking_mysql_lock_on_a_frozen_server() {
    // A blocking lock borrows its connection and cannot bound a read itself; the driver's
    // read timeout does.
    let key = "faults/frozen-blocking";
    let mut holder = MySqlLock::new(common::my(), key);
    holder.acquire().unwrap();
    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&common::mysql_url()).unwrap())
        .read_timeout(Some(Duration::from_secs(2)));
    let mut waiter = MySqlLock::new(mysql::Conn::new(opts).unwrap(), key);
    let frozen = Frozen::new(my_pid(), false);
    let started = Instant::now();
    let outcome = waiter.acquire_timeout(TIMEOUT);
    let took = started.elapsed();
    drop(frozen);
    assert!(
        matches!(outcome, Err(Error::ConnectionLost { .. })),
        "{outcome:?}"
    );
    assert!(took < Duration::from_secs(2) + SLACK, "{took:?}");
    holder.release().unwrap();
}

/// The connection id holding `name`, asked from a fresh session.
fn mysql_holder_of(name: &str) -> Option<u32> {
    use mysql::prelude::Queryable;
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(&common::mysql_url()).unwrap()).unwrap();
    conn.exec_first::<Option<u32>, _, _>("SELECT IS_USED_LOCK(?)", (name,))
        .unwrap()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_repeated_after_a_restart_is_never_taken_for_the_old_session() {
    // Connection ids start again at 1 when MariaDB restarts. A borrowed lock held when the
    // server restarted is dropped afterwards, while a new session with the same id holds the
    // same name: nothing dlock does may end that session or release its lock (a
    // process-wide record of owed releases keyed by id once did).
    let name = "faults/id-reuse";
    let opts = mysql_async::Opts::from_url(&common::mysql_url()).unwrap();
    // A fresh server first, so the old session's id is small and comes round again soon.
    tokio::task::spawn_blocking(restart_mariadb).await.unwrap();
    let mut old = mysql_async::Conn::new(opts.clone()).await.unwrap();
    let old_id = old.id();
    let mut lock = AsyncMySqlLock::new(&mut old, name);
    lock.acquire().await.unwrap();
    tokio::task::spawn_blocking(restart_mariadb).await.unwrap();
    let mut same = None;
    for _ in 0..10_000 {
        let conn = mysql_async::Conn::new(opts.clone()).await.unwrap();
        if conn.id() == old_id {
            same = Some(conn);
            break;
        }
        assert!(
            conn.id() < old_id,
            "ids passed {old_id} without reaching it"
        );
        conn.disconnect().await.unwrap();
    }
    let mut same = same.expect("a new session got the old id");
    let mut new_holder = AsyncMySqlLock::new(&mut same, name);
    new_holder.acquire().await.unwrap();
    assert_eq!(mysql_holder_of(name), Some(old_id));
    // The old lock is dropped held, on a borrowed connection whose session died.
    drop(lock);
    // Lock operations on the new session go on as usual.
    {
        let mut other = AsyncMySqlLock::new(new_holder.conn(), "faults/id-reuse-other");
        assert!(other.try_acquire().await.unwrap());
        other.release().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        new_holder.verify().await.unwrap(),
        "the new session still holds its lock"
    );
    assert_eq!(mysql_holder_of(name), Some(old_id));
    new_holder.release().await.unwrap();
}

/// A token is handed out only once a crash cannot take it back: each round grants tokens in
/// quick succession on both flavours, then kills the server (SIGKILL) and starts it again;
/// the next holder's token is higher than every one handed out before. (Before dlock checked
/// `innodb_flush_log_at_trx_commit`, this failed on a server with it at 0.)
#[test]
fn fencing_tokens_survive_a_crash() {
    let name = "faults/fenced-crash";
    dlock_mysql::install_fencing(&mut common::my()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..3 {
        let mut handed_out = Vec::new();
        let mut lock = MySqlLock::new(common::my(), name).fenced();
        for _ in 0..3 {
            lock.acquire().unwrap();
            handed_out.push(lock.fencing_token().unwrap());
            lock.release().unwrap();
        }
        drop(lock);
        runtime.block_on(async {
            let conn = mysql_async::Conn::from_url(common::mysql_url())
                .await
                .unwrap();
            let mut lock = AsyncMySqlLock::new(conn, name).fenced();
            lock.acquire().await.unwrap();
            handed_out.push(lock.fencing_token().unwrap());
            lock.release().await.unwrap();
        });
        crash_mariadb();
        let mut lock = MySqlLock::new(common::my(), name).fenced();
        lock.acquire().unwrap();
        let after = lock.fencing_token().unwrap();
        let highest = handed_out.iter().max().copied().unwrap();
        assert!(
            after > highest,
            "round {round}: token {after} after a crash, but {handed_out:?} were handed out"
        );
    }
}

/// Sets the fault row's server's `innodb_flush_log_at_trx_commit` (global only) until dropped.
struct CommitFlush;

impl CommitFlush {
    fn set(value: u8) {
        use mysql::prelude::Queryable;
        common::my()
            .query_drop(format!(
                "SET GLOBAL innodb_flush_log_at_trx_commit = {value}"
            ))
            .unwrap();
    }

    fn at(value: u8) -> CommitFlush {
        CommitFlush::set(value);
        CommitFlush
    }
}

impl Drop for CommitFlush {
    fn drop(&mut self) {
        CommitFlush::set(1);
    }
}

/// Where commits are not flushed at once (`innodb_flush_log_at_trx_commit` 0 or 2), a crash
/// can take back a token already handed out: no flavour hands one out there. The grant is
/// given back, the error names the setting, and the same lock object locks once the server
/// flushes its commits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_grant_where_commits_are_not_durable_is_refused_and_nothing_is_held() {
    use mysql::prelude::Queryable;
    let name = "faults/not-durable";
    tokio::task::block_in_place(|| dlock_mysql::install_fencing(&mut common::my())).unwrap();
    let held = || -> Option<u64> {
        tokio::task::block_in_place(|| {
            common::my()
                .exec_first::<Option<u64>, _, _>("SELECT IS_USED_LOCK(?)", (name,))
                .unwrap()
                .flatten()
        })
    };
    let refused = |outcome: &Result<bool, Error>| {
        matches!(
            outcome,
            Err(Error::FencingNotDurable {
                setting: "innodb_flush_log_at_trx_commit"
            })
        )
    };
    for value in [0, 2] {
        let flush = CommitFlush::at(value);
        let mut blocking = MySqlLock::new(common::my(), name).fenced();
        let outcome = tokio::task::block_in_place(|| blocking.try_acquire());
        assert!(refused(&outcome), "{value}: {outcome:?}");
        let message = outcome.unwrap_err().to_string();
        assert!(
            message.contains("SET GLOBAL innodb_flush_log_at_trx_commit = 1"),
            "{message}"
        );
        assert_eq!(held(), None, "a refused grant left the name held");
        let conn = mysql_async::Conn::from_url(common::mysql_url())
            .await
            .unwrap();
        let mut tokio_lock = AsyncMySqlLock::new(conn, name).fenced();
        let outcome = tokio_lock.acquire_timeout(Duration::from_millis(100)).await;
        assert!(refused(&outcome), "{value}: {outcome:?}");
        assert_eq!(tokio_lock.fencing_token(), None);
        assert_eq!(held(), None, "a refused grant left the name held");
        drop(flush);
        // Durable again: the same objects lock, with a token.
        assert!(tokio_lock.try_acquire().await.unwrap());
        assert!(tokio_lock.fencing_token().is_some());
        tokio_lock.release().await.unwrap();
        assert!(tokio::task::block_in_place(|| blocking.try_acquire()).unwrap());
        assert!(blocking.fencing_token().is_some());
        tokio::task::block_in_place(|| blocking.release()).unwrap();
    }
}

/// Sets the fault row's server read-only (as a replica is) until dropped.
struct ReadOnly;

impl ReadOnly {
    fn set(on: bool) {
        use mysql::prelude::Queryable;
        let value = if on { "ON" } else { "OFF" };
        common::my()
            .query_drop(format!("SET GLOBAL read_only = {value}"))
            .unwrap();
    }

    fn new() -> ReadOnly {
        ReadOnly::set(true);
        ReadOnly
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        ReadOnly::set(false);
    }
}

/// A read-only server, as a replica is, grants `GET_LOCK` locally: every flavour refuses it,
/// in the lock statement itself, and takes nothing; the standalone checks refuse it too.
/// (The test login has SUPER, so read-only does not stop its own writes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_server_is_refused_and_nothing_is_locked() {
    use mysql::prelude::Queryable;
    let name = "faults/read-only";
    let read_only = ReadOnly::new();
    let mut lock = MySqlLock::new(common::my(), name);
    let outcome = tokio::task::block_in_place(|| lock.try_acquire());
    assert!(
        matches!(
            outcome,
            Err(Error::CannotExclude {
                deployment: dlock_mysql::Deployment::ReadOnlyReplica
            })
        ),
        "{outcome:?}"
    );
    let outcome = tokio::task::block_in_place(|| dlock_mysql::check_deployment(lock.conn()));
    assert!(outcome.is_err(), "{outcome:?}");
    let mut conn = mysql_async::Conn::from_url(common::mysql_url())
        .await
        .unwrap();
    let outcome = dlock_mysql::check_deployment_async(&mut conn).await;
    assert!(outcome.is_err(), "{outcome:?}");
    let mut lock = AsyncMySqlLock::new(conn, name);
    let outcome = lock.acquire_timeout(Duration::from_millis(100)).await;
    assert!(
        matches!(
            outcome,
            Err(Error::CannotExclude {
                deployment: dlock_mysql::Deployment::ReadOnlyReplica
            })
        ),
        "{outcome:?}"
    );
    let holder: Option<Option<u64>> = tokio::task::block_in_place(|| {
        common::my()
            .exec_first("SELECT IS_USED_LOCK(?)", (name,))
            .unwrap()
    });
    assert_eq!(holder.flatten(), None, "a refused lock left the name held");
    drop(read_only);
    // Writable again: the same lock object checks again, and locks.
    assert!(lock.try_acquire().await.unwrap());
    lock.release().await.unwrap();
}
