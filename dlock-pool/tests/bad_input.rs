//! Every input a user can get wrong, one table row each: each gives a clear `Error` (the
//! right variant, a message that says what to do) and nothing panics. Against real servers,
//! so that connection mistakes meet a real listener or a real refusal.

use dlock_testkit as common;

use std::time::{Duration, Instant};

use dlock_pool::dlock_mysql::{AsyncMySqlLock, MySqlLock};
use dlock_pool::dlock_postgres::PgLock;
use dlock_pool::{AsyncLock, AsyncLockPool, AsyncMySqlManager, Error, Key, Lock, LockPool};

/// What a row expects.
#[derive(Debug, Clone, Copy)]
enum Expect {
    InvalidKey,
    Unsupported,
    Pool,
    /// Not an error: the input is fine for this backend (said why in the row).
    Accepted,
}

fn check(what: &str, outcome: Result<(), Error>, expect: Expect) {
    match (expect, &outcome) {
        (Expect::Accepted, Ok(())) => return,
        (Expect::InvalidKey, Err(Error::InvalidKey { .. }))
        | (Expect::Unsupported, Err(Error::Unsupported { .. }))
        | (Expect::Pool, Err(Error::Pool(_))) => {}
        _ => panic!("{what}: expected {expect:?}, got {outcome:?}"),
    }
    let error = outcome.unwrap_err();
    let message = error.to_string();
    assert!(
        !message.is_empty() && message.len() > 20,
        "{what}: {message:?}"
    );
    // Pool errors carry the pool's error as their source, which names the cause.
    if let Error::Pool(source) = &error {
        assert!(
            !source.to_string().is_empty(),
            "{what}: the source says nothing"
        );
    }
    eprintln!("{what}: {message} [{}]", chain(&error).join("; "));
}

/// Every message of an error's source chain, outermost first, the error's own excluded.
fn chain(error: &Error) -> Vec<String> {
    let mut messages = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(error) = source {
        messages.push(error.to_string());
        source = error.source();
    }
    messages
}

fn mysql_lock(key: impl Into<Key>) -> MySqlLock<mysql::Conn> {
    MySqlLock::new(common::my(), key)
}

#[test]
fn keys_and_modes_a_backend_cannot_take() {
    let long = "x".repeat(65);
    let rows: Vec<(&str, Result<(), Error>, Expect)> = vec![
        (
            "empty name on MySQL",
            mysql_lock("").try_acquire().map(drop),
            Expect::InvalidKey,
        ),
        (
            "name over 64 characters on MySQL",
            mysql_lock(long.as_str()).acquire(),
            Expect::InvalidKey,
        ),
        (
            "bytes that are not UTF-8 on MySQL",
            mysql_lock(&[0xc3_u8, 0x28][..]).acquire(),
            Expect::InvalidKey,
        ),
        (
            "NUL inside a MySQL name",
            mysql_lock("a\0b").acquire(),
            Expect::InvalidKey,
        ),
        (
            "a pair key on MySQL",
            mysql_lock((1, 2)).acquire(),
            Expect::InvalidKey,
        ),
        (
            "a shared lock on MySQL",
            mysql_lock("bad-input/shared").shared().acquire(),
            Expect::Unsupported,
        ),
        (
            "a transaction-scoped lock on MySQL",
            mysql_lock("bad-input/xact").transaction_scoped().acquire(),
            Expect::Unsupported,
        ),
        // sqlalchemy-dlock hashes the empty string too (a golden vector pins its key), so an
        // empty key is a valid PostgreSQL key, and dlock takes the same lock.
        (
            "empty key on PostgreSQL",
            PgLock::new(common::pg(), "").try_acquire().map(drop),
            Expect::Accepted,
        ),
    ];
    for (what, outcome, expect) in rows {
        check(what, outcome, expect);
    }
    // The messages point to the fix.
    let Err(error) = mysql_lock(long.as_str()).acquire() else {
        panic!("a long name was accepted");
    };
    assert!(error.to_string().contains("HashedMySqlName"), "{error}");
    let Err(error) = mysql_lock("bad-input/shared").shared().acquire() else {
        panic!("a shared MySQL lock was accepted");
    };
    assert!(error.to_string().contains("PostgreSQL"), "{error}");
}

/// A pool builder that gives up on a connection within two seconds.
fn r2d2_builder<M: dlock_pool::BlockingManager>() -> r2d2::Builder<dlock_pool::LockManager<M>> {
    r2d2::Pool::builder()
        .max_size(1)
        .connection_timeout(Duration::from_secs(2))
}

fn pg_manager(config: &str) -> r2d2_postgres::PostgresConnectionManager<postgres::NoTls> {
    r2d2_postgres::PostgresConnectionManager::new(config.parse().unwrap(), postgres::NoTls)
}

fn my_manager(url: &str) -> r2d2_mysql::MySqlConnectionManager {
    let opts = mysql::Opts::from_url(url).unwrap();
    r2d2_mysql::MySqlConnectionManager::new(mysql::OptsBuilder::from_opts(opts))
}

#[test]
fn connections_that_cannot_be_made_are_pool_errors_within_the_timeout() {
    let pg_port = common::port_of(&common::pg_url());
    let my_port = common::port_of(&common::mysql_url());
    // A port nothing listens on: bind one, note it, and let it go.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let rows: Vec<(&str, Result<(), Error>)> = vec![
        (
            "PostgreSQL: nothing listens on the port",
            LockPool::with_builder(
                r2d2_builder(),
                pg_manager(&format!("host=127.0.0.1 port={closed_port} user=postgres")),
            )
            .map(drop),
        ),
        // TEST-NET-1 (RFC 5737) is never routed: an unreachable host.
        (
            "PostgreSQL: an unreachable host",
            LockPool::with_builder(
                r2d2_builder(),
                pg_manager("host=192.0.2.1 port=5432 user=postgres connect_timeout=1"),
            )
            .map(drop),
        ),
        (
            "MySQL: an unreachable host",
            LockPool::with_builder(
                r2d2_builder(),
                my_manager("mysql://dlock:dlock@192.0.2.1:3306/dlock?tcp_connect_timeout_ms=1000"),
            )
            .map(drop),
        ),
        (
            "PostgreSQL pool pointed at the MySQL port",
            LockPool::with_builder(
                r2d2_builder(),
                pg_manager(&format!("host=127.0.0.1 port={my_port} user=postgres")),
            )
            .map(drop),
        ),
        (
            "PostgreSQL: a role that does not exist",
            LockPool::with_builder(
                r2d2_builder(),
                pg_manager(&format!("host=127.0.0.1 port={pg_port} user=nobody_here")),
            )
            .map(drop),
        ),
        (
            "MySQL pool pointed at the PostgreSQL port",
            LockPool::with_builder(
                r2d2_builder(),
                my_manager(&format!("mysql://dlock:dlock@127.0.0.1:{pg_port}/dlock")),
            )
            .map(drop),
        ),
        (
            "MySQL: a wrong password",
            LockPool::with_builder(
                r2d2_builder(),
                my_manager(&format!("mysql://dlock:wrong@127.0.0.1:{my_port}/dlock")),
            )
            .map(drop),
        ),
        (
            "MySQL: nothing listens on the port",
            LockPool::with_builder(
                r2d2_builder(),
                my_manager(&format!(
                    "mysql://dlock:dlock@127.0.0.1:{closed_port}/dlock"
                )),
            )
            .map(drop),
        ),
    ];
    for (what, outcome) in rows {
        check(what, outcome, Expect::Pool);
    }
    // Each row gives up within its two-second connection timeout.
    assert!(
        started.elapsed() < Duration::from_secs(6 * 3),
        "{:?}",
        started.elapsed()
    );
}

/// Both pools keep the manager's connect error as the source of the pool error, so that the
/// cause (a refused connection, a wrong password) can be read from the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_pools_keep_the_connect_error_in_the_source_chain() {
    let my_port = common::port_of(&common::mysql_url());
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pg_config = format!("host=127.0.0.1 port={closed_port} user=postgres");
    let wrong_password = format!("mysql://dlock:wrong@127.0.0.1:{my_port}/dlock");
    let (pg_config_r2d2, wrong_password_r2d2) = (pg_config.clone(), wrong_password.clone());
    let blocking = tokio::task::spawn_blocking(move || {
        [
            LockPool::with_builder(r2d2_builder(), pg_manager(&pg_config_r2d2)).map(drop),
            LockPool::with_builder(r2d2_builder(), my_manager(&wrong_password_r2d2)).map(drop),
        ]
    })
    .await
    .unwrap();
    fn builder<M: dlock_pool::AsyncManager>() -> bb8::Builder<dlock_pool::LockManager<M>> {
        bb8::Pool::builder()
            .max_size(1)
            .connection_timeout(Duration::from_secs(2))
    }
    let manager = bb8_postgres::PostgresConnectionManager::new(
        pg_config.parse().unwrap(),
        tokio_postgres::NoTls,
    );
    let pg_async = match AsyncLockPool::with_builder(builder(), manager).await {
        Ok(pool) => pool.acquire("bad-input/source").await.map(drop),
        Err(error) => Err(error),
    };
    let manager = AsyncMySqlManager::from_url(&wrong_password).unwrap();
    let my_async = match AsyncLockPool::with_builder(builder(), manager).await {
        Ok(pool) => pool.acquire("bad-input/source").await.map(drop),
        Err(error) => Err(error),
    };
    let [pg_blocking, my_blocking] = blocking;
    let refused = |error: &(dyn std::error::Error + 'static)| {
        error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    };
    let denied_blocking = |error: &(dyn std::error::Error + 'static)| matches!(error.downcast_ref::<mysql::Error>(), Some(mysql::Error::MySqlError(server)) if server.code == 1045);
    let denied_async = |error: &(dyn std::error::Error + 'static)| matches!(error.downcast_ref::<mysql_async::Error>(), Some(mysql_async::Error::Server(server)) if server.code == 1045);
    type Cause = dyn Fn(&(dyn std::error::Error + 'static)) -> bool;
    let rows: [(&str, Result<(), Error>, &Cause, &str); 4] = [
        ("r2d2 PostgreSQL", pg_blocking, &refused, "refused"),
        ("r2d2 MySQL", my_blocking, &denied_blocking, "denied"),
        ("bb8 PostgreSQL", pg_async, &refused, "refused"),
        ("bb8 MySQL", my_async, &denied_async, "denied"),
    ];
    for (what, outcome, cause, told) in rows {
        let error = outcome.expect_err(what);
        assert!(matches!(error, Error::Pool(_)), "{what}: {error:?}");
        // The message itself names the cause, not only the chain behind it.
        let message = error.to_string();
        assert!(
            message.to_lowercase().contains(told),
            "{what}: the message does not say {told:?}: {message}"
        );
        // dlock's own manager names the address it tried.
        if what == "bb8 MySQL" {
            let address = format!("127.0.0.1:{my_port}");
            assert!(
                message.contains(&address),
                "{what}: no {address}: {message}"
            );
        }
        let mut source = std::error::Error::source(&error);
        let mut found = false;
        while let Some(error) = source {
            found |= cause(error);
            source = error.source();
        }
        assert!(
            found,
            "{what}: the cause is not in the chain: {:?}",
            chain(&error)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_pools_and_locks_report_bad_input_the_same_way() {
    let pg_port = common::port_of(&common::pg_url());
    let my_port = common::port_of(&common::mysql_url());
    // bb8 connects lazily: the error comes with the first acquire.
    fn builder<M: dlock_pool::AsyncManager>() -> bb8::Builder<dlock_pool::LockManager<M>> {
        bb8::Pool::builder()
            .max_size(1)
            .connection_timeout(Duration::from_secs(2))
    }
    let pool = AsyncLockPool::with_builder(
        builder(),
        AsyncMySqlManager::from_url(&format!("mysql://dlock:wrong@127.0.0.1:{my_port}/dlock"))
            .unwrap(),
    )
    .await;
    let outcome = match pool {
        Ok(pool) => pool.acquire("bad-input/async").await.map(drop),
        Err(error) => Err(error),
    };
    // bb8 reports only a timeout; the server's refusal is kept in the source chain.
    if let Err(error) = &outcome {
        let causes = chain(error).join("; ");
        assert!(causes.contains("Access denied"), "{causes}");
    }
    check("bb8 MySQL: a wrong password", outcome, Expect::Pool);

    let manager = bb8_postgres::PostgresConnectionManager::new(
        format!("host=127.0.0.1 port={my_port} user=postgres")
            .parse()
            .unwrap(),
        tokio_postgres::NoTls,
    );
    let outcome = match AsyncLockPool::with_builder(builder(), manager).await {
        Ok(pool) => pool.try_acquire("bad-input/async").await.map(drop),
        Err(error) => Err(error),
    };
    check(
        "bb8 PostgreSQL pointed at the MySQL port",
        outcome,
        Expect::Pool,
    );

    let url = format!("mysql://dlock:dlock@127.0.0.1:{pg_port}/dlock");
    let manager = AsyncMySqlManager::from_url(&url).unwrap();
    let outcome = match AsyncLockPool::with_builder(builder(), manager).await {
        Ok(pool) => pool.acquire("bad-input/async").await.map(drop),
        Err(error) => Err(error),
    };
    check(
        "bb8 MySQL pointed at the PostgreSQL port",
        outcome,
        Expect::Pool,
    );

    // A URL that is not one is refused with the parser's reason.
    let error = AsyncMySqlManager::from_url("postgres://not-mysql").unwrap_err();
    assert!(!error.to_string().is_empty());

    let conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&common::mysql_url()).unwrap())
        .await
        .unwrap();
    let mut lock = AsyncMySqlLock::new(conn, "");
    check(
        "async: empty name on MySQL",
        lock.acquire().await,
        Expect::InvalidKey,
    );
    let mut lock = AsyncMySqlLock::new(lock.into_inner().await.0, "x").shared();
    check(
        "async: a shared lock on MySQL",
        lock.acquire().await,
        Expect::Unsupported,
    );
}

#[test]
fn a_blocking_postgres_pool_inside_a_runtimes_block_on_says_so() {
    // The body of `#[tokio::main]` or `#[tokio::test]`, where the postgres client would
    // panic: the pool's acquire says what to do instead.
    let pool = LockPool::new(pg_manager(&common::pg_url())).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let pool = runtime.block_on(async move {
        check(
            "a blocking PostgreSQL pool inside block_on",
            pool.acquire("bad-input/inside-runtime").map(drop),
            Expect::Unsupported,
        );
        pool
    });
    // Inside spawn_blocking it just works.
    runtime.block_on(async move {
        tokio::task::spawn_blocking(move || {
            let guard = pool.acquire("bad-input/inside-runtime").unwrap();
            dlock_pool::LockGuard::release(guard).unwrap();
        })
        .await
        .unwrap();
    });
}
