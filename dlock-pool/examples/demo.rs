//! The worker of `cargo xtask demo`: one OS process that increments a shared counter in the
//! database many times, each time reading it, waiting a little (the race window), and writing
//! it back plus one, under a dlock lock taken through one API path, or under none.
//!
//! ```text
//! demo reset <postgres|mysql>                 create the counter and set it to 0
//! demo read  <postgres|mysql>                 print the counter
//! demo run   <postgres|mysql> <path> <count>  increment it <count> times; print the waits
//! ```
//!
//! `<path>` is `blocking`, `async`, `r2d2`, `bb8` or `unlocked`. Servers come from
//! `DLOCK_PG_URL` and `DLOCK_MYSQL_URL`. `run` prints one line, `waits_us=<w1>,<w2>,...`: the
//! microseconds each increment waited for its lock.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use dlock_pool::mysql::{AsyncMySqlLock, MySqlLock};
use dlock_pool::postgres::{AsyncPgLock, PgLock};
use dlock_pool::{
    AsyncLock, AsyncLockGuard, AsyncLockPool, AsyncMySqlManager, Lock, LockGuard, LockPool,
};
use mysql::prelude::Queryable;
use mysql_async::prelude::Queryable as _;

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// The lock every worker contends for.
const KEY: &str = "dlock-demo/counter";
/// How long a worker holds the value it read before writing it back: the race window.
const RACE_WINDOW: Duration = Duration::from_millis(2);

fn pg_url() -> Result<String> {
    Ok(std::env::var("DLOCK_PG_URL").map_err(|_| "DLOCK_PG_URL is not set")?)
}

fn mysql_url() -> Result<String> {
    Ok(std::env::var("DLOCK_MYSQL_URL").map_err(|_| "DLOCK_MYSQL_URL is not set")?)
}

fn pg_client() -> Result<postgres::Client> {
    Ok(postgres::Client::connect(&pg_url()?, postgres::NoTls)?)
}

fn mysql_conn() -> Result<mysql::Conn> {
    Ok(mysql::Conn::new(mysql::Opts::from_url(&mysql_url()?)?)?)
}

async fn pg_client_async() -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(&pg_url()?, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn mysql_conn_async() -> Result<mysql_async::Conn> {
    Ok(mysql_async::Conn::new(mysql_async::Opts::from_url(&mysql_url()?)?).await?)
}

/// The read-modify-write of the counter, for each driver. The sleep between read and write
/// is where an unlocked run loses updates.
fn bump_pg(client: &mut postgres::Client) -> Result<()> {
    let value: i64 = client
        .query_one("SELECT value FROM dlock_demo WHERE id = 1", &[])?
        .get(0);
    std::thread::sleep(RACE_WINDOW);
    client.execute(
        "UPDATE dlock_demo SET value = $1 WHERE id = 1",
        &[&(value + 1)],
    )?;
    Ok(())
}

fn bump_mysql(conn: &mut mysql::Conn) -> Result<()> {
    let value: i64 = conn
        .query_first("SELECT value FROM dlock_demo WHERE id = 1")?
        .ok_or("no counter row")?;
    std::thread::sleep(RACE_WINDOW);
    conn.exec_drop("UPDATE dlock_demo SET value = ? WHERE id = 1", (value + 1,))?;
    Ok(())
}

async fn bump_pg_async(client: &tokio_postgres::Client) -> Result<()> {
    let value: i64 = client
        .query_one("SELECT value FROM dlock_demo WHERE id = 1", &[])
        .await?
        .get(0);
    tokio::time::sleep(RACE_WINDOW).await;
    client
        .execute(
            "UPDATE dlock_demo SET value = $1 WHERE id = 1",
            &[&(value + 1)],
        )
        .await?;
    Ok(())
}

async fn bump_mysql_async(conn: &mut mysql_async::Conn) -> Result<()> {
    let value: i64 = conn
        .query_first("SELECT value FROM dlock_demo WHERE id = 1")
        .await?
        .ok_or("no counter row")?;
    tokio::time::sleep(RACE_WINDOW).await;
    conn.exec_drop("UPDATE dlock_demo SET value = ? WHERE id = 1", (value + 1,))
        .await?;
    Ok(())
}

fn reset(backend: &str) -> Result<()> {
    match backend {
        "postgres" => pg_client()?.batch_execute(
            "CREATE TABLE IF NOT EXISTS dlock_demo (id int PRIMARY KEY, value bigint NOT NULL);
             INSERT INTO dlock_demo VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET value = 0",
        )?,
        "mysql" => {
            let mut conn = mysql_conn()?;
            conn.query_drop(
                "CREATE TABLE IF NOT EXISTS dlock_demo (id INT PRIMARY KEY, value BIGINT NOT NULL)",
            )?;
            conn.query_drop("REPLACE INTO dlock_demo VALUES (1, 0)")?;
        }
        other => return Err(format!("unknown backend {other:?}").into()),
    }
    Ok(())
}

fn read(backend: &str) -> Result<i64> {
    match backend {
        "postgres" => Ok(pg_client()?
            .query_one("SELECT value FROM dlock_demo WHERE id = 1", &[])?
            .get(0)),
        "mysql" => Ok(mysql_conn()?
            .query_first("SELECT value FROM dlock_demo WHERE id = 1")?
            .ok_or("no counter row")?),
        other => Err(format!("unknown backend {other:?}").into()),
    }
}

/// Times `acquire`, then runs `bump` under what it returned.
fn timed<T>(waits: &mut Vec<u128>, acquire: impl FnOnce() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    let held = acquire()?;
    waits.push(started.elapsed().as_micros());
    Ok(held)
}

fn run_blocking(backend: &str, path: &str, count: usize) -> Result<Vec<u128>> {
    let mut waits = Vec::with_capacity(count);
    match (backend, path) {
        ("postgres", "unlocked") => {
            let mut client = pg_client()?;
            for _ in 0..count {
                timed(&mut waits, || Ok(()))?;
                bump_pg(&mut client)?;
            }
        }
        ("mysql", "unlocked") => {
            let mut conn = mysql_conn()?;
            for _ in 0..count {
                timed(&mut waits, || Ok(()))?;
                bump_mysql(&mut conn)?;
            }
        }
        ("postgres", "blocking") => {
            let mut lock = PgLock::new(pg_client()?, KEY);
            for _ in 0..count {
                timed(&mut waits, || Ok(lock.acquire()?))?;
                bump_pg(lock.client())?;
                lock.release()?;
            }
        }
        ("mysql", "blocking") => {
            let mut lock = MySqlLock::new(mysql_conn()?, KEY);
            for _ in 0..count {
                timed(&mut waits, || Ok(lock.acquire()?))?;
                bump_mysql(lock.conn())?;
                lock.release()?;
            }
        }
        ("postgres", "r2d2") => {
            let manager =
                r2d2_postgres::PostgresConnectionManager::new(pg_url()?.parse()?, postgres::NoTls);
            let pool = LockPool::with_builder(r2d2::Pool::builder().max_size(2), manager)?;
            for _ in 0..count {
                let mut guard = timed(&mut waits, || Ok(pool.acquire(KEY)?))?;
                bump_pg(&mut guard)?;
                LockGuard::release(guard)?;
            }
        }
        ("mysql", "r2d2") => {
            let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&mysql_url()?)?);
            let manager = r2d2_mysql::MySqlConnectionManager::new(opts);
            let pool = LockPool::with_builder(r2d2::Pool::builder().max_size(2), manager)?;
            for _ in 0..count {
                let mut guard = timed(&mut waits, || Ok(pool.acquire(KEY)?))?;
                bump_mysql(&mut guard)?;
                LockGuard::release(guard)?;
            }
        }
        _ => return Err(format!("unknown backend or path {backend:?} {path:?}").into()),
    }
    Ok(waits)
}

async fn run_async(backend: &str, path: &str, count: usize) -> Result<Vec<u128>> {
    let mut waits = Vec::with_capacity(count);
    match (backend, path) {
        ("postgres", "async") => {
            let mut lock = AsyncPgLock::new(pg_client_async().await?, KEY);
            for _ in 0..count {
                let started = Instant::now();
                lock.acquire().await?;
                waits.push(started.elapsed().as_micros());
                bump_pg_async(lock.client()).await?;
                lock.release().await?;
            }
        }
        ("mysql", "async") => {
            let mut lock = AsyncMySqlLock::new(mysql_conn_async().await?, KEY);
            for _ in 0..count {
                let started = Instant::now();
                lock.acquire().await?;
                waits.push(started.elapsed().as_micros());
                bump_mysql_async(lock.conn()).await?;
                lock.release().await?;
            }
        }
        ("postgres", "bb8") => {
            let manager = bb8_postgres::PostgresConnectionManager::new(
                pg_url()?.parse()?,
                tokio_postgres::NoTls,
            );
            let pool =
                AsyncLockPool::with_builder(bb8::Pool::builder().max_size(2), manager).await?;
            for _ in 0..count {
                let started = Instant::now();
                let guard = pool.acquire(KEY).await?;
                waits.push(started.elapsed().as_micros());
                bump_pg_async(&guard).await?;
                AsyncLockGuard::release(guard).await?;
            }
        }
        ("mysql", "bb8") => {
            let manager = AsyncMySqlManager::from_url(&mysql_url()?)?;
            let pool =
                AsyncLockPool::with_builder(bb8::Pool::builder().max_size(2), manager).await?;
            for _ in 0..count {
                let started = Instant::now();
                let mut guard = pool.acquire(KEY).await?;
                waits.push(started.elapsed().as_micros());
                bump_mysql_async(&mut guard).await?;
                AsyncLockGuard::release(guard).await?;
            }
        }
        _ => return Err(format!("unknown backend or path {backend:?} {path:?}").into()),
    }
    Ok(waits)
}

fn run(backend: &str, path: &str, count: usize) -> Result<Vec<u128>> {
    if matches!(path, "async" | "bb8") {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(run_async(backend, path, count))
    } else {
        run_blocking(backend, path, count)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match args.as_slice() {
        ["reset", backend] => reset(backend),
        ["read", backend] => read(backend).map(|value| println!("{value}")),
        ["run", backend, path, count] => count
            .parse()
            .map_err(|_| format!("{count:?} is not a count").into())
            .and_then(|count| run(backend, path, count))
            .map(|waits| {
                let waits: Vec<String> = waits.iter().map(u128::to_string).collect();
                println!("waits_us={}", waits.join(","));
            }),
        _ => Err(
            "usage: demo reset|read <postgres|mysql> | demo run <postgres|mysql> <path> <count>"
                .into(),
        ),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo: {error}");
            ExitCode::FAILURE
        }
    }
}
