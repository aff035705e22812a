//! `SqlxMySqlLock`, the sqlx transport, against a real server: the lock contract, exclusion
//! with the other flavours, and what a drop leaves (nothing).

use std::str::FromStr;
use std::time::{Duration, Instant};

use dlock_mysql::{AsyncLock, AsyncMySqlLock, Error, SqlxMySqlLock, SqlxMySqlSession};
use dlock_testkit::contract::{AsyncFlavour, Server};
use dlock_testkit::mysql as common;
use sqlx::Connection as _;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlSslMode};

/// The options of the server under test, through TLS checked against `DLOCK_TLS_CA` where
/// that is set (the `db:tls` row).
fn options() -> MySqlConnectOptions {
    let mut options = MySqlConnectOptions::from_str(&common::mysql_url()).expect("a MySQL URL");
    if let Some(ca) = dlock_testkit::tls_ca_path() {
        options = options.ssl_mode(MySqlSslMode::VerifyIdentity).ssl_ca(ca);
    }
    options
}

async fn connect() -> MySqlConnection {
    MySqlConnection::connect_with(&options())
        .await
        .expect("connect to DLOCK_MYSQL_URL")
}

async fn connection_id(conn: &mut MySqlConnection) -> u64 {
    sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The connection holding `name`, seen from a session of the test's own.
async fn holder(name: &str) -> Option<u64> {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || common::holder_of(&name).map(u64::from))
        .await
        .unwrap()
}

/// Waits up to ten seconds until `name` is held by `id` (or by nobody, for `None`).
async fn until_holder(name: &str, id: Option<u64>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if holder(name).await == id {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

struct Sqlx;

impl AsyncFlavour for Sqlx {
    type Lock = SqlxMySqlLock<MySqlConnection>;
    const SERVER: Server = Server::MySql;

    async fn lock(&mut self, key: &str) -> Self::Lock {
        SqlxMySqlLock::new(connect().await, key)
    }

    /// A lock owns its connection: there is no second lock object on its session.
    async fn reentrant(&mut self, _: &mut Self::Lock, _: &str) -> bool {
        false
    }
}

dlock_testkit::async_contract!(sqlx_mysql_lock, Sqlx);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlx_holder_excludes_a_mysql_async_holder_and_the_other_way_round() {
    let name = "sqlx/exclusion";
    let mut sqlx_lock = SqlxMySqlLock::new(connect().await, name);
    let mut async_lock = AsyncMySqlLock::new(common::connect_async().await, name);
    assert!(sqlx_lock.try_acquire().await.unwrap());
    assert!(!async_lock.try_acquire().await.unwrap());
    sqlx_lock.release().await.unwrap();
    assert!(async_lock.try_acquire().await.unwrap());
    let started = Instant::now();
    assert!(
        !sqlx_lock
            .acquire_timeout(Duration::from_millis(150))
            .await
            .unwrap()
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    async_lock.release().await.unwrap();
    assert!(
        sqlx_lock
            .acquire_timeout(Duration::from_secs(5))
            .await
            .unwrap()
    );
    sqlx_lock.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_dropped_is_released_by_a_task_and_its_pooled_connection_comes_back_clean() {
    let name = "sqlx/dropped-held";
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with(options())
        .await
        .unwrap();
    let id = connection_id(&mut pool.acquire().await.unwrap()).await;
    for round in 0..10 {
        let mut lock = SqlxMySqlLock::new(pool.acquire().await.unwrap(), name);
        assert!(lock.try_acquire().await.unwrap(), "round {round}");
        assert_eq!(holder(name).await, Some(id));
        drop(lock);
        // The pool's one connection comes back once the task released the lock on it.
        let mut conn = pool.acquire().await.unwrap();
        assert_eq!(
            connection_id(&mut conn).await,
            id,
            "round {round}: the same session"
        );
        assert_eq!(holder(name).await, None, "round {round}: released");
    }
    // Dropped where no runtime runs: the connection is closed, and its session ends.
    let mut lock = SqlxMySqlLock::new(connect().await, name);
    assert!(lock.try_acquire().await.unwrap());
    std::thread::spawn(move || drop(lock)).join().unwrap();
    assert!(until_holder(name, None).await, "closed: released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_wait_gives_its_connection_up_and_leaves_nothing_held() {
    let name = "sqlx/dropped-wait";
    let mut holder_lock = SqlxMySqlLock::new(connect().await, name);
    holder_lock.acquire().await.unwrap();
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with(options())
        .await
        .unwrap();
    let mut lock = SqlxMySqlLock::new(pool.acquire().await.unwrap(), name);
    let id = connection_id(lock.connection()).await;
    let dropped = tokio::time::timeout(Duration::from_millis(100), lock.acquire()).await;
    assert!(dropped.is_err(), "still waiting when dropped");
    // The lock gave its connection up: it refuses to go on.
    assert!(matches!(
        lock.try_acquire().await,
        Err(Error::ConnectionUnusable { .. })
    ));
    drop(lock);
    // Its pool closed that connection instead of reusing it: a new session comes.
    let mut next = pool.acquire().await.unwrap();
    assert_ne!(connection_id(&mut next).await, id, "a fresh session");
    drop(next);
    // The given-up session may still wait in the server; once the holder lets go, whatever
    // it was granted goes with its end, and the key is free.
    holder_lock.release().await.unwrap();
    assert!(until_holder(name, None).await, "nothing left held");
    let mut again = SqlxMySqlLock::new(connect().await, name);
    assert!(again.try_acquire().await.unwrap());
    again.release().await.unwrap();
}

/// The helpers a pool's watcher and fencing use, over sqlx: a session's name, the question
/// whether it still holds a name (asked from another session), and the fence table's install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlx_helpers_name_a_session_see_its_holds_and_install_fencing() {
    use dlock_mysql::sqlx::{install_fencing, session, still_held};
    let mut watcher = connect().await;
    let mut lock = SqlxMySqlLock::new(connect().await, "sqlx/helpers");
    let holder = session(lock.connection()).await.unwrap();
    assert_eq!(holder.id, connection_id(lock.connection()).await);
    let name = |name: &str| (holder, name.to_owned());
    lock.acquire().await.unwrap();
    assert_eq!(
        still_held(
            &mut watcher,
            &[name("sqlx/helpers"), name("sqlx/helpers-other")]
        )
        .await
        .unwrap(),
        [true, false]
    );
    lock.release().await.unwrap();
    assert_eq!(
        still_held(&mut watcher, &[name("sqlx/helpers")])
            .await
            .unwrap(),
        [false]
    );
    install_fencing(&mut watcher, None).await.unwrap();
    install_fencing(&mut watcher, None).await.unwrap();
    let mut fenced = SqlxMySqlLock::new(connect().await, "sqlx/helpers").fenced();
    fenced.acquire().await.unwrap();
    assert!(fenced.fencing_token().is_some());
    fenced.release().await.unwrap();
    let error = install_fencing(&mut watcher, Some("no such; table"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidKey { .. }), "{error:?}");
}

/// The statements `conn`'s session has run so far (`SELECT`s and `SET`s), as the server
/// counts them.
async fn statements_run(conn: &mut MySqlConnection) -> u64 {
    let mut run = 0;
    for counter in ["Com_select", "Com_set_option"] {
        let (_, value): (String, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SHOW SESSION STATUS LIKE '{counter}'"
        )))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        run += value.parse::<u64>().unwrap();
    }
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_made_per_use_on_a_checked_session_sends_only_its_lock_and_release() {
    let name = "sqlx/per-use";
    // The first lock on the session asks the server's version and checks the deployment,
    // which marks the session.
    let mut lock = SqlxMySqlLock::new(connect().await, name);
    assert!(lock.try_acquire().await.unwrap());
    let (mut conn, released) = lock.into_inner().await;
    released.unwrap();

    // Later locks made per use on it send their lock and release statements, nothing more,
    // for a try and for a wait without timeout.
    let before = statements_run(&mut conn).await;
    let mut lock = SqlxMySqlLock::new(conn, name);
    assert!(lock.try_acquire().await.unwrap());
    let (mut conn, released) = lock.into_inner().await;
    released.unwrap();
    assert_eq!(
        statements_run(&mut conn).await - before,
        2,
        "try and release"
    );

    // The wait without timeout waits in the server (MariaDB's in its year-long form), and
    // is granted once the other holder lets go.
    let mut other = AsyncMySqlLock::new(common::connect_async().await, name);
    assert!(other.try_acquire().await.unwrap());
    let id = connection_id(&mut conn).await;
    let before = statements_run(&mut conn).await;
    let mut lock = SqlxMySqlLock::new(conn, name);
    let waiter = tokio::spawn(async move {
        lock.acquire().await.unwrap();
        lock
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "waits while the other session holds");
    other.release().await.unwrap();
    let lock = waiter.await.unwrap();
    assert_eq!(holder(name).await, Some(id));
    let (mut conn, released) = lock.into_inner().await;
    released.unwrap();
    assert_eq!(
        statements_run(&mut conn).await - before,
        2,
        "acquire and release"
    );

    // With the check turned off, the first lock on a session sends nothing more either.
    let mut conn = connect().await;
    for round in 0..2 {
        let before = statements_run(&mut conn).await;
        let mut lock = SqlxMySqlLock::new(conn, name).skip_deployment_check();
        if round == 0 {
            assert!(lock.try_acquire().await.unwrap());
        } else {
            lock.acquire().await.unwrap();
        }
        let released;
        (conn, released) = lock.into_inner().await;
        released.unwrap();
        assert_eq!(statements_run(&mut conn).await - before, 2, "round {round}");
    }
}

/// A sqlx pool of one connection: whatever a lock leaves on its session, the next checkout
/// finds.
async fn one_connection_pool() -> sqlx::MySqlPool {
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with(options())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlx_session_holds_many_names_and_releases_them_in_any_order() {
    let names = ["sqlx/session-many-1", "sqlx/session-many-2"];
    let mut session = SqlxMySqlSession::new(connect().await);
    let id = connection_id(session.connection()).await;
    session.acquire(names[0]).await.unwrap();
    assert!(session.try_acquire(names[1]).await.unwrap());
    session.release(names[0]).await.unwrap();
    assert_eq!(holder(names[0]).await, None);
    assert_eq!(holder(names[1]).await, Some(id));
    assert!(matches!(
        session.release(names[0]).await,
        Err(Error::NotAcquired)
    ));
    let mut other = SqlxMySqlSession::new(connect().await);
    assert!(
        !other
            .acquire_timeout(names[1], Duration::from_millis(50))
            .await
            .unwrap()
    );
    // A name taken twice is held until both holds are given back.
    assert!(session.try_acquire(names[1]).await.unwrap());
    session.release(names[1]).await.unwrap();
    assert_eq!(holder(names[1]).await, Some(id), "one hold left");
    let (_, released) = session.into_inner().await;
    released.unwrap();
    assert_eq!(holder(names[1]).await, None);
    assert!(other.try_acquire(names[1]).await.unwrap());
    other.release(names[1]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_on_a_sqlx_session_dropped_while_held_gives_back_only_its_own_hold() {
    let name = "sqlx/session-second";
    let mut session = SqlxMySqlSession::new(connect().await);
    let id = connection_id(session.connection()).await;
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
    assert_eq!(holder(name).await, Some(id));
    session.release(name).await.unwrap();
    assert_eq!(holder(name).await, None, "and no hold leaked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_made_per_use_on_a_sqlx_session_learn_the_server_once() {
    let name = "sqlx/session-per-use";
    let mut session = SqlxMySqlSession::new(connect().await);
    // The first timed acquire asks the version and checks the deployment.
    assert!(
        session
            .acquire_timeout(name, Duration::from_millis(100))
            .await
            .unwrap()
    );
    session.release(name).await.unwrap();
    for round in 0..3 {
        let before = statements_run(session.connection()).await;
        let mut lock = session.lock(name);
        assert!(
            lock.acquire_timeout(Duration::from_millis(100))
                .await
                .unwrap()
        );
        lock.release().await.unwrap();
        drop(lock);
        assert_eq!(
            statements_run(session.connection()).await - before,
            2,
            "round {round}: its lock and release, nothing asked again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlx_session_dropped_holding_is_released_by_a_task_and_its_connection_comes_back() {
    let names = ["sqlx/session-dropped-1", "sqlx/session-dropped-2"];
    let pool = one_connection_pool().await;
    let id = connection_id(&mut pool.acquire().await.unwrap()).await;
    for round in 0..5 {
        let mut session = SqlxMySqlSession::new(pool.acquire().await.unwrap());
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
            connection_id(&mut conn).await,
            id,
            "round {round}: the same session"
        );
        assert_eq!(holder(names[0]).await, None, "round {round}");
        assert_eq!(holder(names[1]).await, None, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_wait_on_a_sqlx_session_gives_the_session_up_and_its_drop_closes_it() {
    let name = "sqlx/session-dropped-wait";
    let mut holder_lock = SqlxMySqlLock::new(connect().await, name);
    holder_lock.acquire().await.unwrap();
    let pool = one_connection_pool().await;
    let mut session = SqlxMySqlSession::new(pool.acquire().await.unwrap());
    let id = connection_id(session.connection()).await;
    session
        .acquire("sqlx/session-dropped-wait-other")
        .await
        .unwrap();
    let dropped = tokio::time::timeout(Duration::from_millis(100), session.acquire(name)).await;
    assert!(dropped.is_err(), "still waiting when dropped");
    // No lock on the session can trust its replies any more.
    assert!(matches!(
        session.lock(name).try_acquire().await,
        Err(Error::ConnectionUnusable { .. })
    ));
    drop(session);
    let mut next = pool.acquire().await.unwrap();
    assert_ne!(connection_id(&mut next).await, id, "closed by its pool");
    drop(next);
    holder_lock.release().await.unwrap();
    assert!(until_holder(name, None).await, "nothing left held");
    assert!(
        until_holder("sqlx/session-dropped-wait-other", None).await,
        "the session's own hold ended with it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_on_a_borrowed_pool_connection_dropped_holding_closes_the_connection() {
    let name = "sqlx/borrowed-pooled";
    let pool = one_connection_pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let id = connection_id(&mut conn).await;
    {
        let mut session = SqlxMySqlSession::new(&mut conn);
        session.acquire(name).await.unwrap();
        let mut lock = session.lock("sqlx/borrowed-pooled-2");
        assert!(lock.try_acquire().await.unwrap());
        lock.release().await.unwrap();
        drop(lock);
        let (_, released) = session.into_inner().await;
        released.unwrap();
    }
    drop(conn);
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        connection_id(&mut conn).await,
        id,
        "clean: given back to the pool"
    );
    {
        let mut lock = SqlxMySqlLock::new(&mut conn, name);
        assert!(lock.try_acquire().await.unwrap());
        // Dropped holding: it cannot move the connection into a task.
    }
    assert_eq!(
        holder(name).await,
        Some(id),
        "held while the connection is out"
    );
    drop(conn);
    assert!(
        until_holder(name, None).await,
        "closed by the pool: released"
    );
    let mut conn = pool.acquire().await.unwrap();
    assert_ne!(connection_id(&mut conn).await, id, "a new session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_dropped_while_sqlx_reads_an_earlier_reply_counts_as_not_sent() {
    // sqlx reads the reply of a dropped statement of the user's before it writes the next
    // one, inside that one's future: a release dropped there was never sent, and must not
    // count as sent.
    let name = "sqlx/unsent-release";
    let mut lock = SqlxMySqlLock::new(connect().await, name);
    let id = connection_id(lock.connection()).await;
    for round in 0..2 {
        lock.acquire().await.unwrap();
        dlock_testkit::poll_once_and_drop(
            sqlx::raw_sql("SELECT SLEEP(1)").execute(lock.connection()),
        )
        .await;
        dlock_testkit::poll_once_and_drop(lock.release()).await;
        assert!(lock.is_acquired(), "round {round}: nothing was sent");
        assert_eq!(holder(name).await, Some(id), "round {round}");
        lock.release().await.unwrap();
        assert_eq!(holder(name).await, None, "round {round}: released");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_statement_time_neither_ends_a_wait_nor_changes_the_timeout_contract() {
    let name = "sqlx/interruption-max-statement-time";
    let mut holder = SqlxMySqlLock::new(connect().await, name);
    holder.acquire().await.unwrap();
    let mut conn = connect().await;
    sqlx::raw_sql("SET max_statement_time = 0.3")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut lock = SqlxMySqlLock::new(conn, name);
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
    let setting: f64 = sqlx::query_scalar("SELECT @@max_statement_time")
        .fetch_one(lock.connection())
        .await
        .unwrap();
    assert!(
        (setting - 0.3).abs() < 1e-9,
        "the session's setting is unchanged"
    );
    lock.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_query_racing_the_grant_never_leaves_an_untracked_lock() {
    let name = "sqlx/interruption-kill-with-grant";
    let mut holding = connect().await;
    let mut killer = connect().await;
    let (mut granted, mut canceled) = (0, 0);
    for round in 0..20 {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SELECT GET_LOCK('{name}', 0)")))
            .execute(&mut holding)
            .await
            .unwrap();
        let mut conn = connect().await;
        let id = connection_id(&mut conn).await;
        let waiter = tokio::spawn(async move {
            let mut lock = SqlxMySqlLock::new(conn, name);
            let outcome = lock.acquire().await;
            (outcome, lock)
        });
        let waiting = u32::try_from(id).unwrap();
        tokio::task::spawn_blocking(move || common::wait_until_waiting(waiting))
            .await
            .unwrap();
        // Both orders, so the grant and the kill land together in some rounds.
        let release = format!("SELECT RELEASE_LOCK('{name}')");
        let kill = format!("KILL QUERY {id}");
        let statements = if round % 2 == 0 {
            [(&mut holding, release), (&mut killer, kill)]
        } else {
            [(&mut killer, kill), (&mut holding, release)]
        };
        for (conn, statement) in statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(conn)
                .await
                .unwrap();
        }
        let (outcome, mut lock) = waiter.await.unwrap();
        let holds = holder(name).await == Some(id);
        match outcome {
            Ok(()) => {
                granted += 1;
                assert!(lock.is_acquired() && holds, "round {round}");
                lock.release().await.unwrap();
            }
            Err(error) => {
                canceled += 1;
                assert!(!holds && !lock.is_acquired(), "round {round}: {error}");
            }
        }
    }
    println!("KILL QUERY with grant: {granted} granted, {canceled} canceled");
}

/// Fenced sqlx locks, bare and on a session, beside a mysql_async holder of the same name:
/// each grant's token is larger than every earlier one, whoever took it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_sqlx_locks_hand_out_growing_tokens_beside_the_other_flavours() {
    let name = "sqlx/fenced-growing";
    dlock_mysql::sqlx::install_fencing(&mut connect().await, None)
        .await
        .unwrap();
    let mut bare = SqlxMySqlLock::new(connect().await, name).fenced();
    let mut session = SqlxMySqlSession::new(connect().await);
    let mut other = AsyncMySqlLock::new(common::connect_async().await, name).fenced();
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
