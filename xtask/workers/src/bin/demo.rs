//! The worker of `cargo xtask demo` and `cargo xtask load`: one OS process whose threads or
//! tasks increment a shared counter in the database many times, each time reading it,
//! waiting a little (the race window), and writing it back plus one, under a dlock lock taken
//! through one API path, or under none. Around each critical section the worker counts the
//! holders in the database, so overlapping holders show even when no update is lost.
//!
//! ```text
//! demo reset <postgres|mysql>                           set up the counter row at zero
//! demo read  <postgres|mysql>                           print: value most most_readers bad
//! demo run   <postgres|mysql> <path> <count> [tasks]    increment; print the waits
//! ```
//!
//! `<path>` is `blocking`, `async`, `r2d2`, `bb8`, `unlocked`, or (PostgreSQL only) `shared`,
//! where half the tasks write under the exclusive lock and half read under the shared one.
//! Servers come from `DLOCK_PG_URL` and `DLOCK_MYSQL_URL`. `run` prints one line,
//! `waits_us=<w1>,<w2>,...`: the microseconds each acquisition waited.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dlock_pool::dlock_mysql::{AsyncMySqlLock, MySqlLock};
use dlock_pool::dlock_postgres::{AsyncPgLock, PgLock};
use dlock_pool::{
    AsyncLock, AsyncLockGuard, AsyncLockPool, AsyncMultiplexedGuard, AsyncMySqlManager, Lock,
    LockGuard, LockPool,
};
use mysql::prelude::Queryable;
use mysql_async::prelude::Queryable as _;

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// The lock every worker contends for.
const KEY: &str = "dlock-demo/counter";
/// How long a worker holds the value it read before writing it back: the race window.
const RACE_WINDOW: Duration = Duration::from_millis(2);

/// The statements around the critical section, the same on both servers: each is one
/// atomic row update. `most` is computed before `inside` changes on both (MySQL assigns
/// left to right with new values, PostgreSQL from the old row).
const ENTER: &str = "UPDATE dlock_demo SET most = GREATEST(most, inside + 1), \
                     bad = bad + CASE WHEN readers > 0 THEN 1 ELSE 0 END, \
                     inside = inside + 1 WHERE id = 1";
const EXIT: &str = "UPDATE dlock_demo SET inside = inside - 1 WHERE id = 1";
const READER_ENTER: &str = "UPDATE dlock_demo SET most_readers = GREATEST(most_readers, readers + 1), \
                            bad = bad + CASE WHEN inside > 0 THEN 1 ELSE 0 END, \
                            readers = readers + 1 WHERE id = 1";
const READER_EXIT: &str = "UPDATE dlock_demo SET readers = readers - 1 WHERE id = 1";
const READ: &str = "SELECT value FROM dlock_demo WHERE id = 1";

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

/// The critical section, for each driver: count in, read, wait, write plus one, count out.
/// The wait between read and write is where an unlocked run loses updates.
fn bump_pg(client: &mut postgres::Client) -> Result<()> {
    client.batch_execute(ENTER)?;
    let value: i64 = client.query_one(READ, &[])?.get(0);
    std::thread::sleep(RACE_WINDOW);
    client.execute(
        "UPDATE dlock_demo SET value = $1 WHERE id = 1",
        &[&(value + 1)],
    )?;
    client.batch_execute(EXIT)?;
    Ok(())
}

fn bump_mysql(conn: &mut mysql::Conn) -> Result<()> {
    conn.query_drop(ENTER)?;
    let value: i64 = conn.query_first(READ)?.ok_or("no counter row")?;
    std::thread::sleep(RACE_WINDOW);
    conn.exec_drop("UPDATE dlock_demo SET value = ? WHERE id = 1", (value + 1,))?;
    conn.query_drop(EXIT)?;
    Ok(())
}

async fn bump_pg_async(client: &tokio_postgres::Client) -> Result<()> {
    client.batch_execute(ENTER).await?;
    let value: i64 = client.query_one(READ, &[]).await?.get(0);
    tokio::time::sleep(RACE_WINDOW).await;
    client
        .execute(
            "UPDATE dlock_demo SET value = $1 WHERE id = 1",
            &[&(value + 1)],
        )
        .await?;
    client.batch_execute(EXIT).await?;
    Ok(())
}

async fn bump_mysql_async(conn: &mut mysql_async::Conn) -> Result<()> {
    conn.query_drop(ENTER).await?;
    let value: i64 = conn.query_first(READ).await?.ok_or("no counter row")?;
    tokio::time::sleep(RACE_WINDOW).await;
    conn.exec_drop("UPDATE dlock_demo SET value = ? WHERE id = 1", (value + 1,))
        .await?;
    conn.query_drop(EXIT).await?;
    Ok(())
}

/// A reader's critical section under the shared lock: count in as a reader, read, wait,
/// count out.
fn read_pg(client: &mut postgres::Client) -> Result<()> {
    client.batch_execute(READER_ENTER)?;
    let _: i64 = client.query_one(READ, &[])?.get(0);
    std::thread::sleep(RACE_WINDOW);
    client.batch_execute(READER_EXIT)?;
    Ok(())
}

fn reset(backend: &str) -> Result<()> {
    let columns = "value bigint NOT NULL, inside bigint NOT NULL, most bigint NOT NULL, \
                   readers bigint NOT NULL, most_readers bigint NOT NULL, bad bigint NOT NULL";
    match backend {
        "postgres" => pg_client()?.batch_execute(&format!(
            "DROP TABLE IF EXISTS dlock_demo;
             CREATE TABLE dlock_demo (id int PRIMARY KEY, {columns});
             INSERT INTO dlock_demo VALUES (1, 0, 0, 0, 0, 0, 0)"
        ))?,
        "mysql" => {
            let mut conn = mysql_conn()?;
            conn.query_drop("DROP TABLE IF EXISTS dlock_demo")?;
            conn.query_drop(format!(
                "CREATE TABLE dlock_demo (id INT PRIMARY KEY, {columns})"
            ))?;
            conn.query_drop("INSERT INTO dlock_demo VALUES (1, 0, 0, 0, 0, 0, 0)")?;
        }
        other => return Err(format!("unknown backend {other:?}").into()),
    }
    Ok(())
}

/// The counter, the most holders seen at once, the most readers seen at once, and how many
/// times a holder met a holder it excludes.
fn read(backend: &str) -> Result<[i64; 4]> {
    let query = "SELECT value, most, most_readers, bad FROM dlock_demo WHERE id = 1";
    match backend {
        "postgres" => {
            let row = pg_client()?.query_one(query, &[])?;
            Ok([row.get(0), row.get(1), row.get(2), row.get(3)])
        }
        "mysql" => {
            let row: (i64, i64, i64, i64) =
                mysql_conn()?.query_first(query)?.ok_or("no counter row")?;
            Ok([row.0, row.1, row.2, row.3])
        }
        other => Err(format!("unknown backend {other:?}").into()),
    }
}

/// The waits of every acquisition of this process, in microseconds.
type Waits = Arc<Mutex<Vec<u128>>>;

fn record(waits: &Waits, started: Instant) {
    waits
        .lock()
        .expect("no worker panics while holding this")
        .push(started.elapsed().as_micros());
}

/// One thread of a blocking path.
fn blocking_task(
    backend: &str,
    path: &str,
    task: usize,
    count: usize,
    waits: &Waits,
) -> Result<()> {
    match (backend, path) {
        ("postgres", "unlocked") => {
            let mut client = pg_client()?;
            for _ in 0..count {
                record(waits, Instant::now());
                bump_pg(&mut client)?;
            }
        }
        ("mysql", "unlocked") => {
            let mut conn = mysql_conn()?;
            for _ in 0..count {
                record(waits, Instant::now());
                bump_mysql(&mut conn)?;
            }
        }
        ("postgres", "blocking") => {
            let mut lock = PgLock::new(pg_client()?, KEY);
            for _ in 0..count {
                let started = Instant::now();
                lock.acquire()?;
                record(waits, started);
                bump_pg(lock.client())?;
                lock.release()?;
            }
        }
        ("postgres", "shared") => {
            // Even tasks write under the exclusive lock, odd ones read under the shared one.
            let reader = task % 2 == 1;
            let mut lock = PgLock::new(pg_client()?, KEY);
            if reader {
                lock = lock.shared();
            }
            for _ in 0..count {
                let started = Instant::now();
                lock.acquire()?;
                record(waits, started);
                if reader {
                    read_pg(lock.client())?;
                } else {
                    bump_pg(lock.client())?;
                }
                lock.release()?;
            }
        }
        ("mysql", "blocking") => {
            let mut lock = MySqlLock::new(mysql_conn()?, KEY);
            for _ in 0..count {
                let started = Instant::now();
                lock.acquire()?;
                record(waits, started);
                bump_mysql(lock.conn())?;
                lock.release()?;
            }
        }
        _ => return Err(format!("unknown backend or path {backend:?} {path:?}").into()),
    }
    Ok(())
}

/// Runs `work(task)` on `tasks` threads and waits for all of them.
fn on_threads(tasks: usize, work: impl Fn(usize) -> Result<()> + Sync) -> Result<()> {
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = (0..tasks)
            .map(|task| scope.spawn(move || work(task)))
            .collect();
        for handle in handles {
            handle.join().map_err(|_| "a task panicked")??;
        }
        Ok(())
    })
}

/// The blocking paths: one thread per task; r2d2's tasks share one pool per process.
fn run_blocking(backend: &str, path: &str, count: usize, tasks: usize) -> Result<Vec<u128>> {
    let waits: Waits = Arc::default();
    let size = u32::try_from(tasks)?;
    match (backend, path) {
        ("postgres", "r2d2") => {
            let manager =
                r2d2_postgres::PostgresConnectionManager::new(pg_url()?.parse()?, postgres::NoTls);
            let pool = LockPool::with_builder(r2d2::Pool::builder().max_size(size), manager)?;
            on_threads(tasks, |_| {
                for _ in 0..count {
                    let started = Instant::now();
                    let mut guard = pool.acquire(KEY)?;
                    record(&waits, started);
                    bump_pg(&mut guard)?;
                    LockGuard::release(guard)?;
                }
                Ok(())
            })?;
        }
        ("mysql", "r2d2") => {
            let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&mysql_url()?)?);
            let manager = r2d2_mysql::MySqlConnectionManager::new(opts);
            let pool = LockPool::with_builder(r2d2::Pool::builder().max_size(size), manager)?;
            on_threads(tasks, |_| {
                for _ in 0..count {
                    let started = Instant::now();
                    let mut guard = pool.acquire(KEY)?;
                    record(&waits, started);
                    bump_mysql(&mut guard)?;
                    LockGuard::release(guard)?;
                }
                Ok(())
            })?;
        }
        _ => on_threads(tasks, |task| {
            blocking_task(backend, path, task, count, &waits)
        })?,
    }
    let waits = waits.lock().expect("the tasks are done").clone();
    Ok(waits)
}

/// The async paths: one tokio task per task; bb8's tasks share one pool per process.
async fn run_async(
    backend: &'static str,
    path: &str,
    count: usize,
    tasks: usize,
) -> Result<Vec<u128>> {
    let waits: Waits = Arc::default();
    let size = u32::try_from(tasks)?;
    let mut handles = Vec::new();
    match (backend, path) {
        ("postgres", "async") => {
            for _ in 0..tasks {
                let waits = Arc::clone(&waits);
                handles.push(tokio::spawn(async move {
                    let mut lock = AsyncPgLock::new(pg_client_async().await?, KEY);
                    for _ in 0..count {
                        let started = Instant::now();
                        lock.acquire().await?;
                        record(&waits, started);
                        bump_pg_async(lock.client()).await?;
                        lock.release().await?;
                    }
                    Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
                }));
            }
        }
        ("mysql", "async") => {
            for _ in 0..tasks {
                let waits = Arc::clone(&waits);
                handles.push(tokio::spawn(async move {
                    let mut lock = AsyncMySqlLock::new(mysql_conn_async().await?, KEY);
                    for _ in 0..count {
                        let started = Instant::now();
                        lock.acquire().await?;
                        record(&waits, started);
                        bump_mysql_async(lock.conn()).await?;
                        lock.release().await?;
                    }
                    Ok(())
                }));
            }
        }
        ("postgres", "bb8") => {
            let manager = bb8_postgres::PostgresConnectionManager::new(
                pg_url()?.parse()?,
                tokio_postgres::NoTls,
            );
            let pool = Arc::new(
                AsyncLockPool::with_builder(bb8::Pool::builder().max_size(size), manager).await?,
            );
            for _ in 0..tasks {
                let (waits, pool) = (Arc::clone(&waits), Arc::clone(&pool));
                handles.push(tokio::spawn(async move {
                    for _ in 0..count {
                        let started = Instant::now();
                        let guard = pool.acquire(KEY).await?;
                        record(&waits, started);
                        bump_pg_async(&guard).await?;
                        AsyncLockGuard::release(guard).await?;
                    }
                    Ok(())
                }));
            }
        }
        ("mysql", "bb8") => {
            let manager = AsyncMySqlManager::from_url(&mysql_url()?)?;
            let pool = Arc::new(
                AsyncLockPool::with_builder(bb8::Pool::builder().max_size(size), manager).await?,
            );
            for _ in 0..tasks {
                let (waits, pool) = (Arc::clone(&waits), Arc::clone(&pool));
                handles.push(tokio::spawn(async move {
                    for _ in 0..count {
                        let started = Instant::now();
                        let mut guard = pool.acquire(KEY).await?;
                        record(&waits, started);
                        bump_mysql_async(&mut guard).await?;
                        AsyncLockGuard::release(guard).await?;
                    }
                    Ok(())
                }));
            }
        }
        // Locks sharing a few sessions: a try on a shared session, else a wait on a session
        // of its own that joins them. The work goes through a connection of its own, since
        // such a lock lends none; the pool has room for every task's wait and one shared
        // session.
        ("postgres", "multiplexed") => {
            let manager = bb8_postgres::PostgresConnectionManager::new(
                pg_url()?.parse()?,
                tokio_postgres::NoTls,
            );
            let builder = bb8::Pool::builder().max_size(size + 1);
            let locks = Arc::new(
                AsyncLockPool::with_builder(builder, manager)
                    .await?
                    .multiplexed(),
            );
            for _ in 0..tasks {
                let (waits, locks) = (Arc::clone(&waits), Arc::clone(&locks));
                handles.push(tokio::spawn(async move {
                    let client = pg_client_async().await?;
                    for _ in 0..count {
                        let started = Instant::now();
                        let guard = locks.acquire(KEY).await?;
                        record(&waits, started);
                        bump_pg_async(&client).await?;
                        AsyncMultiplexedGuard::release(guard).await?;
                    }
                    Ok(())
                }));
            }
        }
        ("mysql", "multiplexed") => {
            let manager = AsyncMySqlManager::from_url(&mysql_url()?)?;
            let builder = bb8::Pool::builder().max_size(size + 1);
            let locks = Arc::new(
                AsyncLockPool::with_builder(builder, manager)
                    .await?
                    .multiplexed(),
            );
            for _ in 0..tasks {
                let (waits, locks) = (Arc::clone(&waits), Arc::clone(&locks));
                handles.push(tokio::spawn(async move {
                    let mut conn = mysql_conn_async().await?;
                    for _ in 0..count {
                        let started = Instant::now();
                        let guard = locks.acquire(KEY).await?;
                        record(&waits, started);
                        bump_mysql_async(&mut conn).await?;
                        AsyncMultiplexedGuard::release(guard).await?;
                    }
                    Ok(())
                }));
            }
        }
        _ => return Err(format!("unknown backend or path {backend:?} {path:?}").into()),
    }
    for handle in handles {
        handle.await??;
    }
    let waits = waits.lock().expect("the tasks are done").clone();
    Ok(waits)
}

fn run(backend: &'static str, path: &str, count: usize, tasks: usize) -> Result<Vec<u128>> {
    if matches!(path, "async" | "bb8" | "multiplexed") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        runtime.block_on(run_async(backend, path, count, tasks))
    } else {
        run_blocking(backend, path, count, tasks)
    }
}

fn backend(name: &str) -> Result<&'static str> {
    match name {
        "postgres" => Ok("postgres"),
        "mysql" => Ok("mysql"),
        other => Err(format!("unknown backend {other:?}").into()),
    }
}

fn parse(text: &str, what: &str) -> Result<usize> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a {what}").into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run_args = |name: &str, path: &str, count: &str, tasks: &str| -> Result<()> {
        let waits = run(
            backend(name)?,
            path,
            parse(count, "count")?,
            parse(tasks, "task count")?,
        )?;
        let waits: Vec<String> = waits.iter().map(u128::to_string).collect();
        println!("waits_us={}", waits.join(","));
        Ok(())
    };
    let outcome = match args.as_slice() {
        ["reset", name] => reset(name),
        ["read", name] => read(name).map(|figures| {
            let figures: Vec<String> = figures.iter().map(i64::to_string).collect();
            println!("{}", figures.join(" "));
        }),
        ["run", name, path, count] => run_args(name, path, count, "1"),
        ["run", name, path, count, tasks] => run_args(name, path, count, tasks),
        _ => Err(
            "usage: demo reset|read <postgres|mysql> | demo run <postgres|mysql> <path> <count> [tasks]"
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
