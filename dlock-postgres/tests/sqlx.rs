//! `SqlxPgLock`, the sqlx transport, against a real server: the lock contract, exclusion
//! with the other flavours and with sqlx's own `PgAdvisoryLock`, and what a drop leaves
//! (nothing) when sqlx can neither cancel nor keep a reply.

use std::str::FromStr;
use std::time::{Duration, Instant};

use dlock_postgres::{AsyncLock, AsyncPgLock, Error, KeyPolicy, SqlxPgLock, SqlxPgSession};
use dlock_testkit::contract::{AsyncFlavour, Server};
use dlock_testkit::postgres as common;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};

/// A sqlx connection to the server under test, through TLS checked against `DLOCK_TLS_CA`
/// where that is set (the `db:tls` row).
async fn connect() -> PgConnection {
    let mut options = PgConnectOptions::from_str(&common::pg_url()).expect("a PostgreSQL URL");
    if let Some(ca) = dlock_testkit::tls_ca_path() {
        options = options.ssl_mode(PgSslMode::VerifyFull).ssl_root_cert(ca);
    }
    PgConnection::connect_with(&options)
        .await
        .expect("connect to DLOCK_PG_URL")
}

/// A sqlx pool of one connection: whatever a lock leaves on its session, the next checkout
/// finds.
async fn one_connection_pool() -> sqlx::PgPool {
    let mut options = PgConnectOptions::from_str(&common::pg_url()).expect("a PostgreSQL URL");
    if let Some(ca) = dlock_testkit::tls_ca_path() {
        options = options.ssl_mode(PgSslMode::VerifyFull).ssl_root_cert(ca);
    }
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The sessions holding `name` (default key policy), seen from a session of the test's own.
async fn holders(name: &str) -> Vec<i32> {
    let key = KeyPolicy::default().pg_key(&name.into()).unwrap();
    tokio::task::spawn_blocking(move || common::holder_pids(&mut common::connect(), key))
        .await
        .unwrap()
}

/// Waits up to ten seconds until `pid`'s holding of `name` is `held`.
async fn until_held_by(name: &str, pid: i32, held: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if holders(name).await.contains(&pid) == held {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

struct Sqlx;

impl AsyncFlavour for Sqlx {
    type Lock = SqlxPgLock<PgConnection>;
    const SERVER: Server = Server::Postgres;

    async fn lock(&mut self, key: &str) -> Self::Lock {
        SqlxPgLock::new(connect().await, key)
    }

    /// A lock owns its connection: there is no second lock object on its session.
    async fn reentrant(&mut self, _: &mut Self::Lock, _: &str) -> bool {
        false
    }
}

dlock_testkit::async_contract!(sqlx_pg_lock, Sqlx);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlx_holder_excludes_a_tokio_postgres_holder_and_the_other_way_round() {
    let name = "sqlx/exclusion";
    let mut sqlx_lock = SqlxPgLock::new(connect().await, name);
    let mut tokio_lock = AsyncPgLock::new(common::connect_async().await, name);
    assert!(sqlx_lock.try_acquire().await.unwrap());
    assert!(!tokio_lock.try_acquire().await.unwrap());
    assert!(
        !tokio_lock
            .acquire_timeout(Duration::from_millis(50))
            .await
            .unwrap()
    );
    sqlx_lock.release().await.unwrap();
    assert!(tokio_lock.try_acquire().await.unwrap());
    assert!(!sqlx_lock.try_acquire().await.unwrap());
    let started = Instant::now();
    assert!(
        !sqlx_lock
            .acquire_timeout(Duration::from_millis(150))
            .await
            .unwrap()
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    tokio_lock.release().await.unwrap();
    assert!(
        sqlx_lock
            .acquire_timeout(Duration::from_secs(5))
            .await
            .unwrap()
    );
    sqlx_lock.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_s_own_advisory_lock_and_dlock_s_sqlx_policy_exclude_each_other() {
    let name = "sqlx/own-policy";
    let mut theirs = connect().await;
    let advisory = sqlx::postgres::PgAdvisoryLock::new(name);
    let guard = advisory.acquire(&mut theirs).await.unwrap();
    let mut ours = SqlxPgLock::new(connect().await, name).policy(KeyPolicy::Sqlx);
    assert!(!ours.try_acquire().await.unwrap(), "sqlx's holder excludes");
    guard.release_now().await.unwrap();
    assert!(ours.try_acquire().await.unwrap());
    let mut other = connect().await;
    let left = advisory.try_acquire(&mut other).await.unwrap();
    assert!(left.is_right(), "dlock's holder excludes sqlx's");
    ours.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_dropped_is_released_by_a_task_and_its_pooled_connection_comes_back_clean() {
    let name = "sqlx/dropped-held";
    let pool = one_connection_pool().await;
    let pid = backend_pid(&mut pool.acquire().await.unwrap()).await;
    for round in 0..10 {
        let mut lock = SqlxPgLock::new(pool.acquire().await.unwrap(), name);
        assert!(lock.try_acquire().await.unwrap(), "round {round}");
        drop(lock);
        // The pool's one connection comes back once the task released the lock on it.
        let mut conn = pool.acquire().await.unwrap();
        assert_eq!(
            backend_pid(&mut conn).await,
            pid,
            "round {round}: the same session"
        );
        assert!(
            !holders(name).await.contains(&pid),
            "round {round}: released"
        );
    }
    // Dropped where no runtime runs: the connection is closed, and its session ends.
    let mut lock = SqlxPgLock::new(connect().await, name);
    assert!(lock.try_acquire().await.unwrap());
    let pid = backend_pid(lock.connection()).await;
    std::thread::spawn(move || drop(lock)).join().unwrap();
    assert!(until_held_by(name, pid, false).await, "closed: released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_wait_leaves_nothing_held_once_its_lock_is_used_again_or_dropped() {
    let name = "sqlx/dropped-wait";
    let mut holder = SqlxPgLock::new(connect().await, name);
    // The waiter's connections come from a pool of one: a dropped lock's connection goes back
    // to it, and the next checkout is the same session.
    let pool = one_connection_pool().await;
    for round in 0..8_u64 {
        holder.acquire().await.unwrap();
        let mut lock = SqlxPgLock::new(pool.acquire().await.unwrap(), name);
        let pid = backend_pid(lock.connection()).await;
        let patience = Duration::from_millis(30 + 7 * round);
        let racing = round % 2 == 1;
        let (waited, ()) = tokio::join!(tokio::time::timeout(patience, lock.acquire()), async {
            if racing {
                // The holder lets go near the drop: the grant lands before or after it.
                tokio::time::sleep(patience).await;
                holder.release().await.unwrap();
            }
        });
        if let Ok(acquired) = waited {
            // The grant beat the timeout: nothing was dropped this round.
            assert!(racing, "round {round}: granted while the holder held");
            acquired.unwrap();
            lock.release().await.unwrap();
            continue;
        }
        if !racing {
            holder.release().await.unwrap();
        }
        if round % 4 < 2 {
            // Used again: what the dropped attempt owes goes first, then the try.
            let started = Instant::now();
            assert!(lock.try_acquire().await.unwrap(), "round {round}: free");
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "round {round}: the connection answered within a slice"
            );
            assert_eq!(
                holders(name).await,
                [pid],
                "round {round}: one hold, this one"
            );
            lock.release().await.unwrap();
            assert!(
                !holders(name).await.contains(&pid),
                "round {round}: released"
            );
        } else {
            if round % 4 == 2 {
                drop(lock);
            } else {
                // into_inner pays what the attempt owed before it gives the connection back.
                let (conn, paid) = lock.into_inner().await;
                paid.unwrap();
                drop(conn);
            }
            // The connection comes back after what the attempt owed was paid.
            let mut conn = pool.acquire().await.unwrap();
            assert_eq!(backend_pid(&mut conn).await, pid);
            assert!(
                !holders(name).await.contains(&pid),
                "round {round}: the dropped lock's task paid what the attempt owed"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlx_session_holds_many_keys_and_releases_them_in_any_order() {
    let names = ["sqlx/session-many-1", "sqlx/session-many-2"];
    let mut conn = connect().await;
    let pid = backend_pid(&mut conn).await;
    let mut session = SqlxPgSession::new(conn);
    session.acquire(names[0]).await.unwrap();
    assert!(session.try_acquire(names[1]).await.unwrap());
    session.release(names[0]).await.unwrap();
    assert!(holders(names[0]).await.is_empty());
    assert_eq!(holders(names[1]).await, [pid]);
    assert!(matches!(
        session.release(names[0]).await,
        Err(Error::NotAcquired)
    ));
    let mut other = SqlxPgSession::new(connect().await);
    assert!(
        !other
            .acquire_timeout(names[1], Duration::from_millis(50))
            .await
            .unwrap()
    );
    // A key taken twice is held until both holds are given back.
    assert!(session.try_acquire(names[1]).await.unwrap());
    session.release(names[1]).await.unwrap();
    assert_eq!(holders(names[1]).await, [pid], "one hold left");
    let (_, released) = session.into_inner().await;
    released.unwrap();
    assert!(holders(names[1]).await.is_empty());
    assert!(other.try_acquire(names[1]).await.unwrap());
    other.release(names[1]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_on_a_sqlx_session_dropped_while_held_gives_back_only_its_own_hold() {
    let name = "sqlx/session-second";
    let mut conn = connect().await;
    let pid = backend_pid(&mut conn).await;
    let mut session = SqlxPgSession::new(conn);
    session.acquire(name).await.unwrap();
    {
        let mut second = session.lock(name);
        assert!(second.try_acquire().await.unwrap());
        // Dropped holding: its hold is owed to the session.
    }
    // The session's next statement through dlock pays it, exactly.
    assert!(
        session.lock(name).verify().await.unwrap(),
        "the first hold stays"
    );
    assert_eq!(holders(name).await, [pid]);
    session.release(name).await.unwrap();
    assert!(holders(name).await.is_empty(), "and no hold leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_dropped_inside_an_aborted_transaction_on_a_sqlx_session_is_released_after_the_rollback()
 {
    let name = "sqlx/session-aborted";
    let mut session = SqlxPgSession::new(connect().await);
    let pid = backend_pid(session.connection()).await;
    session.acquire(name).await.unwrap();
    {
        let mut lock = session.lock(name);
        lock.acquire().await.unwrap();
        sqlx::raw_sql("BEGIN")
            .execute(lock.connection())
            .await
            .unwrap();
        assert!(
            sqlx::raw_sql("SELECT 1/0")
                .execute(lock.connection())
                .await
                .is_err()
        );
        // A release now would be refused (25P02): the drop leaves the hold owed.
    }
    // Paying inside the aborted transaction is refused too, and the hold stays owed.
    assert!(
        session
            .lock("sqlx/session-aborted-other")
            .try_acquire()
            .await
            .is_err()
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(session.connection())
        .await
        .unwrap();
    assert_eq!(holders(name).await, [pid]);
    assert!(
        session.lock(name).verify().await.unwrap(),
        "the session's own hold stays"
    );
    assert_eq!(holders(name).await, [pid]);
    session.release(name).await.unwrap();
    assert!(
        holders(name).await.is_empty(),
        "the dropped hold was paid, and the session's own released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlx_session_acquire_dropped_mid_wait_leaves_nothing_held() {
    let name = "sqlx/session-dropped-wait";
    let mut holder = SqlxPgSession::new(connect().await);
    holder.acquire(name).await.unwrap();
    let mut session = SqlxPgSession::new(connect().await);
    let pid = backend_pid(session.connection()).await;
    for round in 0..4_u64 {
        let patience = Duration::from_millis(40 + 30 * round);
        let dropped = tokio::time::timeout(patience, session.acquire(name)).await;
        assert!(
            dropped.is_err(),
            "round {round}: still waiting when dropped"
        );
        if round % 2 == 1 {
            // The holder lets go while the dropped wait's slice may still run: a grant it
            // gets is owed.
            holder.release(name).await.unwrap();
        }
        // Whatever the dropped wait was granted, the session's next statement undid it.
        assert!(
            session
                .try_acquire("sqlx/session-dropped-wait-other")
                .await
                .unwrap()
        );
        assert!(!holders(name).await.contains(&pid), "round {round}");
        session
            .release("sqlx/session-dropped-wait-other")
            .await
            .unwrap();
        assert_eq!(session.held().count(), 0);
        if round % 2 == 1 {
            holder.acquire(name).await.unwrap();
        }
    }
    holder.release(name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlx_session_dropped_holding_is_released_by_a_task_and_its_connection_comes_back() {
    let names = ["sqlx/session-dropped-1", "sqlx/session-dropped-2"];
    let pool = one_connection_pool().await;
    let pid = backend_pid(&mut pool.acquire().await.unwrap()).await;
    for round in 0..5 {
        let mut session = SqlxPgSession::new(pool.acquire().await.unwrap());
        session.acquire(names[0]).await.unwrap();
        session.acquire(names[1]).await.unwrap();
        {
            // And a lock dropped holding on it, owed to the session.
            let mut lock = session.lock(names[0]);
            lock.acquire().await.unwrap();
        }
        drop(session);
        let mut conn = pool.acquire().await.unwrap();
        assert_eq!(
            backend_pid(&mut conn).await,
            pid,
            "round {round}: the same session"
        );
        assert!(holders(names[0]).await.is_empty(), "round {round}");
        assert!(holders(names[1]).await.is_empty(), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_on_a_borrowed_pool_connection_dropped_holding_closes_the_connection() {
    let name = "sqlx/borrowed-pooled";
    let pool = one_connection_pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let pid = backend_pid(&mut conn).await;
    {
        let mut lock = SqlxPgLock::new(&mut conn, name);
        assert!(lock.try_acquire().await.unwrap());
        lock.release().await.unwrap();
        // Released: the connection stays the pool's.
    }
    {
        let mut session = SqlxPgSession::new(&mut conn);
        session.acquire(name).await.unwrap();
        let (_, released) = session.into_inner().await;
        released.unwrap();
    }
    drop(conn);
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        backend_pid(&mut conn).await,
        pid,
        "clean: given back to the pool"
    );
    {
        let mut lock = SqlxPgLock::new(&mut conn, name);
        assert!(lock.try_acquire().await.unwrap());
        // Dropped holding: it cannot move the connection into a task.
    }
    assert_eq!(
        holders(name).await,
        [pid],
        "held while the connection is out"
    );
    drop(conn);
    assert!(
        until_held_by(name, pid, false).await,
        "closed by the pool: released"
    );
    let mut conn = pool.acquire().await.unwrap();
    assert_ne!(backend_pid(&mut conn).await, pid, "a new session");
}

/// The helpers a pool's watcher and fencing use, over sqlx: a session's name, the question
/// whether it still holds a key (asked from another session), and the fence table's install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlx_helpers_name_a_session_see_its_holds_and_install_fencing() {
    use dlock_postgres::sqlx::{install_fencing, session, still_held};
    let mut watcher = connect().await;
    let mut lock = SqlxPgLock::new(connect().await, "sqlx/helpers");
    let holder = session(lock.connection()).await.unwrap();
    assert_eq!(
        i64::try_from(holder.id).unwrap(),
        i64::from(backend_pid(lock.connection()).await)
    );
    assert_ne!(
        session(&mut watcher).await.unwrap(),
        holder,
        "two sessions, two names"
    );
    let key = KeyPolicy::default().pg_key(&"sqlx/helpers".into()).unwrap();
    let other = KeyPolicy::default()
        .pg_key(&"sqlx/helpers-other".into())
        .unwrap();
    lock.acquire().await.unwrap();
    assert_eq!(
        still_held(&mut watcher, &[(holder, key), (holder, other)])
            .await
            .unwrap(),
        [true, false]
    );
    lock.release().await.unwrap();
    assert_eq!(
        still_held(&mut watcher, &[(holder, key)]).await.unwrap(),
        [false]
    );
    // Twice, as a second service starting at the same time would.
    install_fencing(&mut watcher, None).await.unwrap();
    install_fencing(&mut watcher, None).await.unwrap();
    let mut fenced = SqlxPgLock::new(connect().await, "sqlx/helpers").fenced();
    fenced.acquire().await.unwrap();
    assert!(fenced.fencing_token().is_some());
    fenced.release().await.unwrap();
    let error = install_fencing(&mut watcher, Some("no such; table"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, dlock_postgres::Error::InvalidKey { .. }),
        "{error:?}"
    );
}

/// A transaction lock through a sqlx transaction: held until the transaction ends, excluding
/// a tokio-postgres holder meanwhile; a timed wait on a busy key leaves the transaction usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_lock_through_a_sqlx_transaction_holds_until_it_ends() {
    use sqlx::Connection as _;
    let name = "sqlx/xact";
    let lock = dlock_postgres::SqlxPgXactLock::new(name);
    let mut tokio_lock = AsyncPgLock::new(common::connect_async().await, name);

    let mut conn = connect().await;
    let mut tx = conn.begin().await.unwrap();
    assert!(lock.try_acquire(&mut tx).await.unwrap());
    assert!(lock.verify(&mut tx).await.unwrap());
    assert!(
        !tokio_lock.try_acquire().await.unwrap(),
        "held by the transaction"
    );
    tx.commit().await.unwrap();
    assert!(
        tokio_lock.try_acquire().await.unwrap(),
        "the commit released it"
    );

    // Busy: the timed wait runs out, and the transaction goes on.
    let mut tx = conn.begin().await.unwrap();
    let started = Instant::now();
    assert!(
        !lock
            .acquire_timeout(&mut tx, Duration::from_millis(150))
            .await
            .unwrap()
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(one, 1, "the transaction is still usable");
    assert!(!lock.verify(&mut tx).await.unwrap());

    // A wait without timeout is granted when the other holder lets go; a rollback ends it.
    let release = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio_lock.release().await.unwrap();
    };
    let (acquired, ()) = tokio::join!(lock.acquire(&mut tx), release);
    acquired.unwrap();
    assert!(!tokio_lock.try_acquire().await.unwrap());
    tx.rollback().await.unwrap();
    assert!(
        tokio_lock.try_acquire().await.unwrap(),
        "the rollback released it"
    );
    tokio_lock.release().await.unwrap();
}

/// A transaction lock's wait dropped mid-way ends in the server within a slice, and what it
/// may have been granted ends with the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transaction_lock_wait_ends_with_its_transaction() {
    use sqlx::Connection as _;
    let name = "sqlx/xact-dropped";
    let lock = dlock_postgres::SqlxPgXactLock::new(name);
    let mut holder = AsyncPgLock::new(common::connect_async().await, name);
    assert!(holder.try_acquire().await.unwrap());
    let mut conn = connect().await;
    let pid = backend_pid(&mut conn).await;
    let mut tx = conn.begin().await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(100), lock.acquire(&mut tx)).await;
    assert!(waited.is_err(), "still waiting when dropped");
    holder.release().await.unwrap();
    // The slice in flight may be granted now; the transaction holds that until it ends.
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        one, 1,
        "the transaction is usable once the slice's reply is read"
    );
    tx.rollback().await.unwrap();
    assert!(
        until_held_by(name, pid, false).await,
        "nothing left with the session"
    );
    assert!(holder.try_acquire().await.unwrap());
    holder.release().await.unwrap();
}

/// A fenced transaction lock through sqlx: each grant's token is larger than the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_transaction_lock_through_sqlx_hands_out_growing_tokens() {
    use sqlx::Connection as _;
    let mut conn = connect().await;
    dlock_postgres::sqlx::install_fencing(&mut conn, None)
        .await
        .unwrap();
    let lock = dlock_postgres::SqlxPgXactLock::new("sqlx/xact-fenced").fenced();
    let mut last = 0;
    for _ in 0..3 {
        let mut tx = conn.begin().await.unwrap();
        assert!(lock.try_acquire(&mut tx).await.unwrap());
        let token = lock.fencing_token().expect("a fenced grant's token");
        assert!(token > last, "{token} after {last}");
        last = token;
        tx.commit().await.unwrap();
    }
}

/// The interruption tests of the other flavours, over sqlx: errors that come with a grant,
/// session settings that would cut a wait short, aborted transactions, and dropped attempts
/// beside other holds of the same session.
mod interruption {
    use super::*;
    use dlock_testkit::postgres::poll_once_and_drop;

    /// Waits until `pid` waits for a lock in the server.
    async fn until_waiting(pid: i32) {
        let mut observer = connect().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)",
            )
            .bind(pid)
            .fetch_one(&mut observer)
            .await
            .unwrap();
            if waiting {
                return;
            }
            assert!(Instant::now() < deadline, "pid {pid} never waited");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancel_that_lands_with_the_grant_leaves_the_lock_held_and_tracked() {
        // The holder unlocks and cancels the waiter's statement in one statement of its own:
        // whatever the acquire answers, the server agrees.
        let name = "sqlx/interruption-cancel-with-grant";
        let key = KeyPolicy::default().pg_key(&name.into()).unwrap();
        let args = match key {
            dlock_postgres::PgKey::BigInt(key) => key.to_string(),
            dlock_postgres::PgKey::Pair(high, low) => format!("{high}, {low}"),
        };
        let mut holder = connect().await;
        let (mut granted, mut canceled) = (0, 0);
        for round in 0..20 {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SELECT pg_advisory_lock({args})"
            )))
            .execute(&mut holder)
            .await
            .unwrap();
            let mut conn = connect().await;
            let pid = backend_pid(&mut conn).await;
            let waiter = tokio::spawn(async move {
                let mut lock = SqlxPgLock::new(conn, name);
                let outcome = lock.acquire().await;
                (outcome, lock)
            });
            until_waiting(pid).await;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SELECT pg_advisory_unlock({args}), pg_cancel_backend({pid})"
            )))
            .execute(&mut holder)
            .await
            .unwrap();
            let (outcome, mut lock) = waiter.await.unwrap();
            let holds = holders(name).await.contains(&pid);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slice_that_runs_out_as_the_lock_is_granted_tells_the_truth() {
        let name = "sqlx/interruption-slice-race";
        let mut holder = SqlxPgLock::new(connect().await, name);
        let mut waiter = SqlxPgLock::new(connect().await, name);
        let waiter_pid = backend_pid(waiter.connection()).await;
        let (mut granted, mut refused) = (0, 0);
        for round in 0..40_u64 {
            holder.acquire().await.unwrap();
            let timeout = Duration::from_millis(40 + round % 20);
            let (outcome, ()) = tokio::join!(waiter.acquire_timeout(timeout), async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                holder.release().await.unwrap();
            });
            let holds = holders(name).await.contains(&waiter_pid);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_attempts_never_release_another_hold_of_the_session() {
        // An outer hold of K; on the same session, an inner try on K is dropped and an
        // attempt on another (busy) key is dropped. The outer hold survives every cleanup,
        // inside a transaction the user rolls back afterwards too.
        let name = "sqlx/interruption-outer-hold";
        let other = "sqlx/interruption-outer-hold-other";
        let mut other_holder = SqlxPgLock::new(connect().await, other);
        let mut session = SqlxPgSession::new(connect().await);
        let pid = backend_pid(session.connection()).await;
        session.acquire(name).await.unwrap();
        for round in 0..20 {
            let in_transaction = round % 2 == 1;
            if in_transaction {
                sqlx::raw_sql("BEGIN")
                    .execute(session.connection())
                    .await
                    .unwrap();
            }
            other_holder.acquire().await.unwrap();
            {
                let mut inner = session.lock(name);
                poll_once_and_drop(inner.try_acquire()).await;
            }
            {
                let mut waiting = session.lock(other);
                poll_once_and_drop(waiting.acquire()).await;
            }
            other_holder.release().await.unwrap();
            {
                let mut inner = session.lock(name);
                assert!(inner.try_acquire().await.unwrap(), "round {round}");
                inner.release().await.unwrap();
            }
            if in_transaction {
                sqlx::raw_sql("ROLLBACK")
                    .execute(session.connection())
                    .await
                    .unwrap();
            }
            // The session's next statement settles what the dropped attempts owe.
            assert!(session.lock(name).verify().await.unwrap(), "round {round}");
            assert_eq!(holders(name).await, [pid], "round {round}");
            assert!(!holders(other).await.contains(&pid), "round {round}");
        }
        session
            .release(name)
            .await
            .expect("the server still counts the outer hold");
        assert!(holders(name).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_operation_dropped_while_sqlx_reads_an_earlier_reply_counts_nothing_as_sent() {
        // sqlx reads the reply of a dropped statement before it writes the next one, inside
        // that one's future: a release or a cleanup dropped there was never sent, and must
        // not count as sent.
        let name = "sqlx/interruption-unsent";
        let mut holder = SqlxPgLock::new(connect().await, name);
        let mut lock = SqlxPgLock::new(connect().await, name);
        let pid = backend_pid(lock.connection()).await;
        for round in 0..6 {
            // A release, behind a statement of the user's that was dropped.
            lock.acquire().await.unwrap();
            poll_once_and_drop(sqlx::raw_sql("SELECT pg_sleep(0.2)").execute(lock.connection()))
                .await;
            poll_once_and_drop(lock.release()).await;
            if lock.is_acquired() {
                lock.release().await.unwrap();
            } else {
                assert!(!lock.verify().await.unwrap(), "round {round}");
            }
            assert!(
                !holders(name).await.contains(&pid),
                "round {round}: released"
            );

            // A dropped wait's cleanup, behind the reply of that wait.
            holder.acquire().await.unwrap();
            let dropped = tokio::time::timeout(Duration::from_millis(30), lock.acquire()).await;
            assert!(
                dropped.is_err(),
                "round {round}: still waiting when dropped"
            );
            holder.release().await.unwrap();
            // The dropped slice may be granted now; the cleanup it owes is dropped before
            // it could be written, or runs.
            poll_once_and_drop(lock.try_acquire()).await;
            // On a busy machine every reply may be there before the try reads it, and the try
            // completes in its one poll: then the lock holds the key, tracked.
            let tracked = lock.is_acquired();
            assert_eq!(
                lock.verify().await.unwrap(),
                tracked,
                "round {round}: the server agrees with the lock"
            );
            if tracked {
                lock.release().await.unwrap();
            }
            assert!(
                !holders(name).await.contains(&pid),
                "round {round}: the late grant was undone"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_refused_by_an_aborted_transaction_keeps_the_lock_releasable() {
        let name = "sqlx/interruption-aborted-release";
        let mut lock = SqlxPgLock::new(connect().await, name);
        lock.acquire().await.unwrap();
        sqlx::raw_sql("BEGIN")
            .execute(lock.connection())
            .await
            .unwrap();
        assert!(
            sqlx::raw_sql("SELECT 1/0")
                .execute(lock.connection())
                .await
                .is_err()
        );
        let refused = lock.release().await;
        assert!(
            matches!(refused, Err(Error::TransactionAborted { .. })),
            "{refused:?}"
        );
        assert!(lock.is_acquired());
        sqlx::raw_sql("ROLLBACK")
            .execute(lock.connection())
            .await
            .unwrap();
        lock.release().await.unwrap();
        assert!(holders(name).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn session_timeouts_neither_end_a_wait_nor_change_the_timeout_contract() {
        let name = "sqlx/interruption-statement-timeout";
        let mut holder = SqlxPgLock::new(connect().await, name);
        holder.acquire().await.unwrap();
        let mut conn = connect().await;
        sqlx::raw_sql("SET statement_timeout = 300; SET lock_timeout = 200")
            .execute(&mut conn)
            .await
            .unwrap();
        let mut lock = SqlxPgLock::new(conn, name);
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
        let settings: (String, String) = sqlx::query_as(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')",
        )
        .fetch_one(lock.connection())
        .await
        .unwrap();
        assert_eq!(settings, ("300ms".to_owned(), "200ms".to_owned()));
        lock.release().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timed_out_acquire_leaves_the_users_own_transaction_usable() {
        let name = "sqlx/interruption-raw-transaction";
        let mut holder = SqlxPgLock::new(connect().await, name);
        holder.acquire().await.unwrap();
        let mut lock = SqlxPgLock::new(connect().await, name);
        sqlx::raw_sql("BEGIN")
            .execute(lock.connection())
            .await
            .unwrap();
        let started = Instant::now();
        assert!(
            !lock
                .acquire_timeout(Duration::from_millis(150))
                .await
                .unwrap()
        );
        assert!(started.elapsed() >= Duration::from_millis(150));
        sqlx::raw_sql("SELECT 1")
            .execute(lock.connection())
            .await
            .unwrap();
        sqlx::raw_sql("COMMIT")
            .execute(lock.connection())
            .await
            .unwrap();
        holder.release().await.unwrap();
    }
}

/// Fenced sqlx locks, bare and on a session, beside a tokio-postgres holder of the same key:
/// each grant's token is larger than every earlier one, whoever took it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_sqlx_locks_hand_out_growing_tokens_beside_the_other_flavours() {
    let name = "sqlx/fenced-growing";
    dlock_postgres::sqlx::install_fencing(&mut connect().await, None)
        .await
        .unwrap();
    let mut bare = SqlxPgLock::new(connect().await, name).fenced();
    let mut session = SqlxPgSession::new(connect().await);
    let mut other = AsyncPgLock::new(common::connect_async().await, name).fenced();
    let mut last = 0;
    for round in 0..4 {
        bare.acquire().await.unwrap();
        let token = bare.fencing_token().expect("a fenced grant's token");
        assert!(token > last, "round {round}: {token} after {last}");
        bare.release().await.unwrap();
        assert_eq!(bare.fencing_token(), None, "no token once released");
        let mut on_session = session.lock(name).fenced();
        assert!(on_session.try_acquire().await.unwrap());
        let next = on_session.fencing_token().expect("a fenced grant's token");
        assert!(next > token, "round {round}: {next} after {token}");
        on_session.release().await.unwrap();
        drop(on_session);
        other.acquire().await.unwrap();
        last = other.fencing_token().expect("a fenced grant's token");
        assert!(last > next, "round {round}: {last} after {next}");
        other.release().await.unwrap();
    }
}
