//! The dlock side of `cargo xtask interop`: one of dlock's flavours holding or trying a lock,
//! beside sqlalchemy-dlock (the library dlock ports) doing the same in another process.
//!
//! ```text
//! interop <postgres|mysql> <flavour> <key> hold   take the key, print "held", wait for a
//!                                                  line on standard input, release, print
//!                                                  "released"
//! interop <postgres|mysql> <flavour> <key> try    try once: print "acquired" (and release)
//!                                                  or "busy"
//! ```
//!
//! A mode ending in `-shared` (`hold-shared`, `try-shared`) takes a shared lock (PostgreSQL).
//! The flavour `xact` is a transaction lock (`PgXactLock`, PostgreSQL): its hold ends with a
//! commit.
//!
//! `<flavour>` is one of [`FLAVOURS`]; `interop flavours <backend>` prints a backend's. Servers come from `DLOCK_PG_URL` and `DLOCK_MYSQL_URL`;
//! every flavour takes keys under the default key policy, the one sqlalchemy-dlock's keys
//! match.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use dlock_pool::dlock_mysql::{AsyncMySqlLock, MySqlLock, SqlxMySqlLock, SqlxMySqlSession};
use dlock_pool::dlock_postgres::{AsyncPgLock, PgLock, PgXactLock, SqlxPgLock, SqlxPgSession};
use dlock_pool::{
    AsyncAnyLockGuard, AsyncAnyLockPool, AsyncLock, AsyncLockGuard, AsyncLockPool,
    AsyncMultiplexedGuard, AsyncMySqlManager, DeadpoolLockGuard, DeadpoolLockPool, Lock, LockGuard,
    LockPool, SqlxLockGuard, SqlxLockPool,
};

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// Every flavour the worker takes locks through.
const FLAVOURS: [&str; 11] = [
    "blocking",
    "xact",
    "tokio",
    "sqlx",
    "sqlx-session",
    "r2d2",
    "bb8",
    "deadpool",
    "sqlx-pool",
    "url",
    "multiplexed",
];

/// The flavours that take PostgreSQL locks only.
const POSTGRES_ONLY: [&str; 2] = ["xact", "deadpool"];

/// How long a hold waits for the key.
const WAIT: Duration = Duration::from_secs(30);

fn url(backend: &str) -> Result<String> {
    let variable = match backend {
        "postgres" => "DLOCK_PG_URL",
        _ => "DLOCK_MYSQL_URL",
    };
    Ok(std::env::var(variable).map_err(|_| format!("{variable} is not set"))?)
}

/// What the holder prints, and when a hold lets go.
fn held() {
    println!("held");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

/// A bare blocking lock's hold or try; the hold waits for stdin between.
fn bare(lock: &mut impl Lock, hold: bool) -> Result<&'static str> {
    if hold {
        if !lock.acquire_timeout(WAIT)? {
            return Err("the key stayed busy".into());
        }
        held();
        lock.release()?;
        return Ok("released");
    }
    if lock.try_acquire()? {
        lock.release()?;
        Ok("acquired")
    } else {
        Ok("busy")
    }
}

/// As [`bare`], for an async lock.
async fn bare_async(lock: &mut impl AsyncLock, hold: bool) -> Result<&'static str> {
    if hold {
        if !lock.acquire_timeout(WAIT).await? {
            return Err("the key stayed busy".into());
        }
        tokio::task::spawn_blocking(held).await?;
        lock.release().await?;
        return Ok("released");
    }
    if lock.try_acquire().await? {
        lock.release().await?;
        Ok("acquired")
    } else {
        Ok("busy")
    }
}

fn blocking(
    backend: &str,
    flavour: &str,
    key: &str,
    hold: bool,
    shared: bool,
) -> Result<&'static str> {
    let url = url(backend)?;
    match (backend, flavour) {
        ("postgres", "blocking") => {
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            let lock = PgLock::new(&mut client, key);
            bare(&mut if shared { lock.shared() } else { lock }, hold)
        }
        ("postgres", "xact") => {
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            let mut tx = client.transaction()?;
            let lock = PgXactLock::new(key);
            if hold {
                if !lock.acquire_timeout(&mut tx, WAIT)? {
                    return Err("the key stayed busy".into());
                }
                held();
                tx.commit()?;
                return Ok("released");
            }
            let acquired = lock.try_acquire(&mut tx)?;
            tx.commit()?;
            Ok(if acquired { "acquired" } else { "busy" })
        }
        ("mysql", "blocking") => {
            let mut conn = mysql::Conn::new(mysql::Opts::from_url(&url)?)?;
            bare(&mut MySqlLock::new(&mut conn, key), hold)
        }
        ("postgres", "r2d2") => {
            let manager =
                r2d2_postgres::PostgresConnectionManager::new(url.parse()?, postgres::NoTls);
            let pool = LockPool::new(manager)?;
            pooled(&if shared { pool.shared() } else { pool }, key, hold)
        }
        ("mysql", "r2d2") => {
            let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&url)?);
            let manager = r2d2_mysql::MySqlConnectionManager::new(opts);
            pooled(&LockPool::new(manager)?, key, hold)
        }
        _ => Err(format!("unknown flavour {flavour:?}").into()),
    }
}

/// A blocking pool's hold or try.
fn pooled<M: dlock_pool::BlockingManager>(
    pool: &LockPool<M>,
    key: &str,
    hold: bool,
) -> Result<&'static str>
where
    M::Connection: dlock_pool::BlockingConnection,
{
    if hold {
        let guard = pool
            .acquire_timeout(key, WAIT)?
            .ok_or("the key stayed busy")?;
        held();
        LockGuard::release(guard)?;
        return Ok("released");
    }
    match pool.try_acquire(key)? {
        Some(guard) => {
            LockGuard::release(guard)?;
            Ok("acquired")
        }
        None => Ok("busy"),
    }
}

/// An async pool's hold or try: `$pool`'s `acquire_timeout` and `try_acquire`, and `$guard`'s
/// `release` (the pools' guards are different types with the same shape).
macro_rules! pooled_hold_or_try {
    ($pool:expr, $guard:ident, $key:expr, $hold:expr) => {{
        let (pool, key) = (&$pool, $key);
        if $hold {
            let guard = pool
                .acquire_timeout(key, WAIT)
                .await?
                .ok_or("the key stayed busy")?;
            tokio::task::spawn_blocking(held).await?;
            $guard::release(guard).await?;
            Ok("released")
        } else {
            match pool.try_acquire(key).await? {
                Some(guard) => {
                    $guard::release(guard).await?;
                    Ok("acquired")
                }
                None => Ok("busy"),
            }
        }
    }};
}

async fn asynchronous(
    backend: &str,
    flavour: &str,
    key: &str,
    hold: bool,
    shared: bool,
) -> Result<&'static str> {
    let url = url(backend)?;
    match (backend, flavour) {
        ("postgres", "tokio") => {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let lock = AsyncPgLock::new(client, key);
            bare_async(&mut if shared { lock.shared() } else { lock }, hold).await
        }
        ("mysql", "tokio") => {
            let conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&url)?).await?;
            bare_async(&mut AsyncMySqlLock::new(conn, key), hold).await
        }
        ("postgres", "sqlx") => {
            let conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await?;
            let lock = SqlxPgLock::new(conn, key);
            bare_async(&mut if shared { lock.shared() } else { lock }, hold).await
        }
        ("mysql", "sqlx") => {
            let conn = <sqlx::MySqlConnection as sqlx::Connection>::connect(&url).await?;
            bare_async(&mut SqlxMySqlLock::new(conn, key), hold).await
        }
        // A lock made on a session over a connection of the user's sqlx pool.
        ("postgres", "sqlx-session") => {
            let pool = sqlx::PgPool::connect(&url).await?;
            let mut session = SqlxPgSession::new(pool.acquire().await?);
            let lock = session.lock(key);
            bare_async(&mut if shared { lock.shared() } else { lock }, hold).await
        }
        ("mysql", "sqlx-session") => {
            let pool = sqlx::MySqlPool::connect(&url).await?;
            let mut session = SqlxMySqlSession::new(pool.acquire().await?);
            bare_async(&mut session.lock(key), hold).await
        }
        ("postgres", "bb8" | "multiplexed") => {
            let manager =
                bb8_postgres::PostgresConnectionManager::new(url.parse()?, tokio_postgres::NoTls);
            let pool = AsyncLockPool::new(manager).await?;
            let pool = if shared { pool.shared() } else { pool };
            pooled_async(pool, flavour, key, hold).await
        }
        ("mysql", "bb8" | "multiplexed") => {
            let pool = AsyncLockPool::new(AsyncMySqlManager::from_url(&url)?).await?;
            pooled_async(pool, flavour, key, hold).await
        }
        ("postgres", "deadpool") => {
            let mut config = dlock_pool::deadpool_postgres::Config::new();
            config.url = Some(url);
            let pool = config.create_pool(
                Some(dlock_pool::deadpool_postgres::Runtime::Tokio1),
                tokio_postgres::NoTls,
            )?;
            let locks = DeadpoolLockPool::new(pool);
            let locks = if shared { locks.shared() } else { locks };
            pooled_hold_or_try!(locks, DeadpoolLockGuard, key, hold)
        }
        ("postgres", "sqlx-pool") => {
            let locks = SqlxLockPool::new(sqlx::PgPool::connect(&url).await?);
            let locks = if shared { locks.shared() } else { locks };
            pooled_hold_or_try!(locks, SqlxLockGuard, key, hold)
        }
        ("mysql", "sqlx-pool") => {
            let locks = SqlxLockPool::new(sqlx::MySqlPool::connect(&url).await?);
            pooled_hold_or_try!(locks, SqlxLockGuard, key, hold)
        }
        (_, "url") => {
            let pool = AsyncAnyLockPool::connect(&url).await?;
            let pool = if shared { pool.shared() } else { pool };
            pooled_hold_or_try!(pool, AsyncAnyLockGuard, key, hold)
        }
        _ => Err(format!("unknown flavour {flavour:?}").into()),
    }
}

/// An async pool's hold or try, through the pool itself (`bb8`) or its multiplexed locks.
async fn pooled_async<M: dlock_pool::MultiplexedManager>(
    pool: AsyncLockPool<M>,
    flavour: &str,
    key: &str,
    hold: bool,
) -> Result<&'static str> {
    if flavour == "multiplexed" {
        pooled_hold_or_try!(pool.multiplexed(), AsyncMultiplexedGuard, key, hold)
    } else {
        pooled_hold_or_try!(pool, AsyncLockGuard, key, hold)
    }
}

fn run(args: &[String]) -> Result<&'static str> {
    if let [command, backend] = args
        && command == "flavours"
    {
        // What `cargo xtask interop` runs through on `backend`.
        let flavours: Vec<&str> = FLAVOURS
            .into_iter()
            .filter(|flavour| backend == "postgres" || !POSTGRES_ONLY.contains(flavour))
            .collect();
        println!("{}", flavours.join(" "));
        return Ok("");
    }
    let [backend, flavour, key, mode] = args else {
        return Err("usage: interop <postgres|mysql> <flavour> <key> <hold|try>".into());
    };
    if !matches!(backend.as_str(), "postgres" | "mysql") {
        return Err(format!("unknown backend {backend:?}").into());
    }
    if !FLAVOURS.contains(&flavour.as_str()) {
        return Err(format!("unknown flavour {flavour:?}; one of {FLAVOURS:?}").into());
    }
    let shared = mode.ends_with("-shared");
    let hold = match mode.trim_end_matches("-shared") {
        "hold" => true,
        "try" => false,
        other => return Err(format!("unknown mode {other:?}").into()),
    };
    if shared && (backend != "postgres" || matches!(flavour.as_str(), "multiplexed" | "xact")) {
        return Err(format!("no shared locks through {backend} {flavour}").into());
    }
    if matches!(flavour.as_str(), "blocking" | "r2d2" | "xact") {
        return blocking(backend, flavour, key, hold, shared);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(asynchronous(backend, flavour, key, hold, shared))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(said) => {
            if !said.is_empty() {
                println!("{said}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("interop: {error}");
            ExitCode::FAILURE
        }
    }
}
