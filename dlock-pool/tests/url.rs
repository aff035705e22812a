//! `AsyncAnyLockPool`: one URL picks the backend, and its guards have one type, against real
//! PostgreSQL and MariaDB servers.

use std::time::Duration;

use dlock_pool::dlock_mysql::{AsyncMySqlLock, MySqlLock};
use dlock_pool::dlock_postgres::{AsyncPgLock, PgLock};
use dlock_pool::{AsyncAnyConnection, AsyncAnyLockGuard, AsyncAnyLockPool, AsyncLock, Error, Lock};
use dlock_testkit::{mysql, postgres};

/// The pool a URL names, and a bare lock on the same server holding `key`, for exclusion.
async fn exclusion_through(url: &str, backend: &str, key: &str) {
    let pool = AsyncAnyLockPool::connect(url).await.unwrap();
    assert_eq!(pool.backend(), backend);
    let mut guard = pool.acquire(key).await.unwrap();
    assert_eq!(AsyncAnyLockGuard::key(&guard).to_string(), key);
    assert!(AsyncAnyLockGuard::verify(&mut guard).await.unwrap());
    assert!(!AsyncAnyLockGuard::is_lost(&guard));
    // The connection, for work under the lock.
    match AsyncAnyLockGuard::connection(&mut guard) {
        AsyncAnyConnection::Postgres(client) => {
            client.simple_query("SELECT 1").await.unwrap();
        }
        AsyncAnyConnection::MySql(conn) => {
            use dlock_pool::dlock_mysql::mysql_async::prelude::Queryable;
            conn.query_drop("SELECT 1").await.unwrap();
        }
    }
    // Another pool of the same URL, and a bare lock of the backend, are excluded.
    let other = AsyncAnyLockPool::connect(url).await.unwrap();
    assert!(other.try_acquire(key).await.unwrap().is_none());
    assert!(
        other
            .acquire_timeout(key, Duration::from_millis(100))
            .await
            .unwrap()
            .is_none()
    );
    let excluded = match backend {
        "postgres" => {
            let (client, connection) =
                tokio_postgres::connect(&postgres::pg_url(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            !AsyncPgLock::new(client, key).try_acquire().await.unwrap()
        }
        _ => !AsyncMySqlLock::new(mysql::connect_async().await, key)
            .try_acquire()
            .await
            .unwrap(),
    };
    assert!(excluded, "a bare lock of the same key is excluded");
    AsyncAnyLockGuard::release(guard).await.unwrap();
    let guard = other.try_acquire(key).await.unwrap().expect("free again");
    AsyncAnyLockGuard::release(guard).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_url_locks_on_postgres() {
    exclusion_through(&postgres::pg_url(), "postgres", "url/pg").await;
    // postgresql:// too.
    let url = postgres::pg_url().replacen("postgres://", "postgresql://", 1);
    exclusion_through(&url, "postgres", "url/pg-long").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_or_mariadb_url_locks_on_mysql() {
    exclusion_through(&mysql::mysql_url(), "mysql", "url/my").await;
    let url = mysql::mysql_url().replacen("mysql://", "mariadb://", 1);
    exclusion_through(&url, "mysql", "url/mariadb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_and_fencing_work_through_a_url_on_both_backends() {
    for url in [postgres::pg_url(), mysql::mysql_url()] {
        let pool = AsyncAnyLockPool::connect(&url).await.unwrap().fenced();
        pool.install_fencing().await.unwrap();
        let first = pool
            .with_lock("url/fenced", async |guard| {
                Ok::<_, Error>(AsyncAnyLockGuard::fencing_token(guard))
            })
            .await
            .unwrap()
            .expect("a fenced pool's guard has a token");
        let second = pool
            .try_with_lock("url/fenced", async |guard| {
                Ok::<_, Error>(AsyncAnyLockGuard::fencing_token(guard))
            })
            .await
            .unwrap()
            .flatten()
            .expect("free, and fenced");
        assert!(second > first, "{url}: {second} after {first}");
        // The work's own error comes back in one level, and the lock is released.
        let failed: Result<(), WorkFailed> = pool
            .with_lock("url/fenced", async |_| Err(WorkFailed::Work))
            .await;
        assert!(matches!(failed, Err(WorkFailed::Work)), "{url}: {failed:?}");
        let guard = pool.try_acquire("url/fenced").await.unwrap();
        assert!(guard.is_some(), "{url}: released after the work failed");
    }
}

/// A service's own error type, which dlock's errors convert into.
#[derive(Debug)]
enum WorkFailed {
    Work,
    #[allow(dead_code)]
    Lock(Error),
}

impl From<Error> for WorkFailed {
    fn from(error: Error) -> Self {
        WorkFailed::Lock(error)
    }
}

#[tokio::test]
async fn a_url_dlock_cannot_use_is_a_clear_error() {
    for (url, says) in [
        ("localhost/db", "no scheme"),
        ("redis://localhost/0", "redis://"),
        (
            "sqlite://file.db",
            "postgres://, postgresql://, mysql:// or mariadb://",
        ),
        (
            "postgres://user@host:notaport/db",
            "tokio-postgres cannot read",
        ),
        ("mysql://user@host:notaport/db", "mysql_async cannot read"),
    ] {
        let error = AsyncAnyLockPool::connect(url).await.unwrap_err();
        assert!(
            matches!(error, Error::InvalidUrl { .. }),
            "{url}: {error:?}"
        );
        let message = error.to_string();
        assert!(message.contains(says), "{url}: {message}");
    }
}

/// Blocking locks of the same keys still exclude the URL pool's (one key space per server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_locks_exclude_the_url_pools_locks() {
    let pool = AsyncAnyLockPool::connect(&postgres::pg_url())
        .await
        .unwrap();
    let guard = pool.acquire("url/blocking").await.unwrap();
    let excluded = tokio::task::spawn_blocking(|| {
        !PgLock::new(postgres::connect(), "url/blocking")
            .try_acquire()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(excluded);
    AsyncAnyLockGuard::release(guard).await.unwrap();
    let pool = AsyncAnyLockPool::connect(&mysql::mysql_url())
        .await
        .unwrap();
    let guard = pool.acquire("url/blocking").await.unwrap();
    let excluded = tokio::task::spawn_blocking(|| {
        !MySqlLock::new(mysql::connect(), "url/blocking")
            .try_acquire()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(excluded);
    AsyncAnyLockGuard::release(guard).await.unwrap();
}

/// The blocking form: the same URLs, guards of one type, both backends.
#[test]
fn the_blocking_form_locks_on_the_backend_its_url_names() {
    use dlock_pool::{AnyConnection, AnyLockGuard, AnyLockPool};
    for (url, backend) in [
        (postgres::pg_url(), "postgres"),
        (
            mysql::mysql_url().replacen("mysql://", "mariadb://", 1),
            "mysql",
        ),
    ] {
        let pool = AnyLockPool::connect(&url).unwrap().fenced();
        assert_eq!(pool.backend(), backend);
        pool.install_fencing().unwrap();
        let mut guard = pool.acquire("url/blocking-form").unwrap();
        assert!(AnyLockGuard::fencing_token(&guard).is_some());
        assert!(AnyLockGuard::verify(&mut guard).unwrap());
        match AnyLockGuard::connection(&mut guard) {
            AnyConnection::Postgres(client) => {
                client.simple_query("SELECT 1").unwrap();
            }
            AnyConnection::MySql(conn) => {
                use dlock_pool::dlock_mysql::mysql::prelude::Queryable;
                conn.query_drop("SELECT 1").unwrap();
            }
        }
        let other = AnyLockPool::connect(&url).unwrap();
        assert!(other.try_acquire("url/blocking-form").unwrap().is_none());
        assert!(
            other
                .acquire_timeout("url/blocking-form", Duration::from_millis(100))
                .unwrap()
                .is_none()
        );
        AnyLockGuard::release(guard).unwrap();
        let got = other
            .with_lock("url/blocking-form", |guard| {
                Ok::<_, Error>(AnyLockGuard::key(guard).to_string())
            })
            .unwrap();
        assert_eq!(got, "url/blocking-form");
    }
    let error = AnyLockPool::connect("redis://localhost/0").unwrap_err();
    assert!(matches!(error, Error::InvalidUrl { .. }), "{error:?}");
}

/// The watcher covers the URL pools' guards: a guard whose session is killed is reported
/// lost, and `with_lock` drops work whose lock is gone, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_is_reported_lost_through_a_url_pool() {
    for url in [postgres::pg_url(), mysql::mysql_url()] {
        let pool = AsyncAnyLockPool::connect(&url)
            .await
            .unwrap()
            .watch_interval(Duration::from_millis(100));
        let mut guard = pool.acquire("url/lost").await.unwrap();
        kill_session_of(&mut guard).await;
        let reason = tokio::time::timeout(Duration::from_secs(10), AsyncAnyLockGuard::lost(&guard))
            .await
            .unwrap_or_else(|_| panic!("{url}: the lost lock was never reported"));
        assert!(AsyncAnyLockGuard::is_lost(&guard), "{url}: {reason:?}");
        let released = AsyncAnyLockGuard::release(guard).await;
        assert!(
            matches!(released, Err(Error::LockLost { .. })),
            "{url}: {released:?}"
        );
        // with_lock: the work of a lock lost under it is dropped.
        let outcome: Result<(), Error> = pool
            .with_lock("url/lost", async |guard| {
                kill_session_of(guard).await;
                std::future::pending::<()>().await;
                Ok(())
            })
            .await;
        assert!(
            matches!(outcome, Err(Error::LockLost { .. })),
            "{url}: {outcome:?}"
        );
    }
}

/// Ends the session of `guard`'s connection from another connection.
async fn kill_session_of(guard: &mut AsyncAnyLockGuard) {
    match AsyncAnyLockGuard::connection(guard) {
        AsyncAnyConnection::Postgres(client) => {
            let pid: i32 = client
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            let (killer, connection) =
                tokio_postgres::connect(&postgres::pg_url(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            killer
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .unwrap();
        }
        AsyncAnyConnection::MySql(conn) => {
            let id = conn.id();
            tokio::task::spawn_blocking(move || mysql::kill(id))
                .await
                .unwrap();
        }
    }
}

/// A URL pool's acquire dropped mid-wait leaves nothing held: its connection is closed, and
/// a grant that lands after the drop goes with it, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_acquire_through_a_url_pool_leaves_nothing_held() {
    for url in [postgres::pg_url(), mysql::mysql_url()] {
        let key = "url/dropped-wait";
        let holder = AsyncAnyLockPool::connect(&url).await.unwrap();
        let pool = AsyncAnyLockPool::connect(&url).await.unwrap();
        for round in 0..4 {
            let held = holder.acquire(key).await.unwrap();
            let (dropped, ()) = tokio::join!(
                tokio::time::timeout(Duration::from_millis(50), pool.acquire(key)),
                async {
                    // In some rounds the release lands as the waiter is dropped.
                    tokio::time::sleep(Duration::from_millis(40 + round * 5)).await;
                    AsyncAnyLockGuard::release(held).await.unwrap();
                }
            );
            if let Ok(granted) = dropped {
                AsyncAnyLockGuard::release(granted.unwrap()).await.unwrap();
            }
            // Free again within the watcher-free bound of a closed connection.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(guard) = holder.try_acquire(key).await.unwrap() {
                    AsyncAnyLockGuard::release(guard).await.unwrap();
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{url}, round {round}: the dropped wait left the lock held"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A server nobody answers at is an error from `connect` at once, naming the backend, the
/// address and the driver's cause, in both forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named_at_connect() {
    for (url, names) in [
        (
            "postgres://postgres@127.0.0.1:1/postgres",
            "PostgreSQL at 127.0.0.1:1",
        ),
        ("mysql://root@127.0.0.1:1/db", "MySQL at 127.0.0.1:1"),
    ] {
        let started = std::time::Instant::now();
        let error = AsyncAnyLockPool::connect(url).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{url}: at once"
        );
        assert!(matches!(error, Error::Pool(_)), "{url}: {error:?}");
        let message = error.to_string();
        assert!(message.contains(names), "{url}: {message}");
        assert!(
            message.to_lowercase().contains("refused"),
            "{url}: {message}"
        );
        let url = url.to_owned();
        let blocking = tokio::task::spawn_blocking(move || {
            dlock_pool::AnyLockPool::connect(&url).unwrap_err()
        })
        .await
        .unwrap();
        let message = blocking.to_string();
        assert!(message.contains(names), "blocking: {message}");
    }
}

/// A pool's shared clone lets readers hold a key together over the same connections, while
/// a writer waits for them all and keeps them all out; the watcher and `verify` see shared
/// holds. MySQL has no shared named locks, and says so instead of taking an exclusive one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_pool_lets_readers_in_together_and_keeps_writers_out() {
    let key = "url/shared";
    let writers = AsyncAnyLockPool::connect(&postgres::pg_url())
        .await
        .unwrap()
        .watch_interval(Duration::from_millis(50));
    let readers = writers.clone().shared();
    let mut first = readers.acquire(key).await.unwrap();
    let second = readers
        .try_acquire(key)
        .await
        .unwrap()
        .expect("readers hold a key together");
    assert!(writers.try_acquire(key).await.unwrap().is_none());
    let holders = readers.holders(key).await.unwrap();
    assert_eq!(holders.len(), 2, "{holders:?}");
    assert!(holders.iter().all(|holder| holder.shared), "{holders:?}");
    // Held shared, as the guard's own check and the watcher see it.
    assert!(AsyncAnyLockGuard::verify(&mut first).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!AsyncAnyLockGuard::is_lost(&first));
    AsyncAnyLockGuard::release(first).await.unwrap();
    assert!(
        writers.try_acquire(key).await.unwrap().is_none(),
        "one reader left is enough to keep a writer out"
    );
    AsyncAnyLockGuard::release(second).await.unwrap();
    let writer = writers.try_acquire(key).await.unwrap().expect("free");
    assert!(
        readers.try_acquire(key).await.unwrap().is_none(),
        "a writer keeps readers out"
    );
    AsyncAnyLockGuard::release(writer).await.unwrap();

    let mysql = AsyncAnyLockPool::connect(&mysql::mysql_url())
        .await
        .unwrap();
    let error = mysql.clone().shared().try_acquire(key).await.unwrap_err();
    assert!(matches!(error, Error::Unsupported { .. }), "{error:?}");
    let guard = mysql
        .try_acquire(key)
        .await
        .unwrap()
        .expect("the pool goes on");
    AsyncAnyLockGuard::release(guard).await.unwrap();
}

/// The blocking form of the shared pool, on both backends.
#[test]
fn a_shared_blocking_pool_lets_readers_in_together() {
    use dlock_pool::{AnyLockGuard, AnyLockPool};
    let key = "url/shared-blocking";
    let writers = AnyLockPool::connect(&postgres::pg_url()).unwrap();
    let readers = writers.clone().shared();
    let mut first = readers.acquire(key).unwrap();
    let second = readers.try_acquire(key).unwrap().expect("shared");
    assert!(AnyLockGuard::verify(&mut first).unwrap());
    assert!(writers.try_acquire(key).unwrap().is_none());
    AnyLockGuard::release(first).unwrap();
    AnyLockGuard::release(second).unwrap();
    let writer = writers.try_acquire(key).unwrap().expect("free");
    assert!(readers.try_acquire(key).unwrap().is_none());
    AnyLockGuard::release(writer).unwrap();

    let mysql = AnyLockPool::connect(&mysql::mysql_url()).unwrap().shared();
    let error = mysql.try_acquire(key).unwrap_err();
    assert!(matches!(error, Error::Unsupported { .. }), "{error:?}");
}
