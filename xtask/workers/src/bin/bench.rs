//! The worker of `cargo xtask bench`: dlock's cost measured against the raw driver floor, on
//! the servers of `DLOCK_PG_URL` and `DLOCK_MYSQL_URL`.
//!
//! ```text
//! bench [--quick] [--json PATH]
//! ```
//!
//! Prints Markdown tables on stdout and writes the same figures as JSON to `PATH`.
//! `--quick` runs every measurement a few times only, to prove the benchmark still works.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use dlock_pool::dlock_mysql::install_fencing as my_install_fencing;
use dlock_pool::dlock_mysql::{AsyncMySqlLock, AsyncMySqlSession, MySqlLock, MySqlSession};
use dlock_pool::dlock_postgres::install_fencing as pg_install_fencing;
use dlock_pool::dlock_postgres::{AsyncPgLock, AsyncPgSession, PgLock, PgSession, PgXactLock};
use dlock_pool::{
    AsyncAnyLockGuard, AsyncAnyLockPool, AsyncLock, AsyncLockGuard, AsyncLockPool,
    AsyncMultiplexedGuard, AsyncMySqlManager, Lock, LockGuard, LockPool,
};
use mysql::prelude::Queryable;
use mysql_async::prelude::Queryable as _;
use serde_json::{Value, json};

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// How much of everything to do.
#[derive(Debug, Clone, Copy)]
struct Scale {
    quick: bool,
    /// Only the throughput paths whose name contains this (`--only`); the other sections
    /// are left out then.
    only: Option<&'static str>,
    /// Cycles per throughput sample, and samples per path.
    cycles: usize,
    repeats: usize,
    /// Handoff rounds for K = 1, 8, 64.
    handoff_rounds: [usize; 3],
    timeout_samples: usize,
    many_keys: usize,
    contention: Duration,
}

impl Scale {
    fn new(quick: bool, only: Option<&'static str>) -> Scale {
        if quick {
            Scale {
                quick,
                only,
                cycles: 50,
                repeats: 1,
                handoff_rounds: [3, 1, 1],
                timeout_samples: 3,
                many_keys: 200,
                contention: Duration::from_millis(300),
            }
        } else {
            Scale {
                quick,
                only,
                cycles: 200,
                repeats: 25,
                handoff_rounds: [60, 12, 3],
                timeout_samples: 30,
                many_keys: 10_000,
                contention: Duration::from_secs(3),
            }
        }
    }
}

impl Scale {
    /// Whether the throughput path `path` is measured in this run.
    fn wants(self, path: &str) -> bool {
        self.only.is_none_or(|only| path.contains(only))
    }
}

fn pg_url() -> Result<String> {
    Ok(std::env::var("DLOCK_PG_URL").map_err(|_| "DLOCK_PG_URL is not set")?)
}

fn mysql_url() -> Result<String> {
    Ok(std::env::var("DLOCK_MYSQL_URL").map_err(|_| "DLOCK_MYSQL_URL is not set")?)
}

fn pg() -> Result<postgres::Client> {
    Ok(postgres::Client::connect(&pg_url()?, postgres::NoTls)?)
}

fn my() -> Result<mysql::Conn> {
    Ok(mysql::Conn::new(mysql::Opts::from_url(&mysql_url()?)?)?)
}

async fn pg_async() -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(&pg_url()?, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn my_async() -> Result<mysql_async::Conn> {
    Ok(mysql_async::Conn::new(mysql_async::Opts::from_url(&mysql_url()?)?).await?)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn multi_thread_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Sorted samples and their order statistics.
#[derive(Debug, Clone)]
struct Stats(Vec<f64>);

impl Stats {
    fn new(mut samples: Vec<f64>) -> Stats {
        samples.sort_by(f64::total_cmp);
        Stats(samples)
    }

    fn quantile(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let last = self.0.len() - 1;
        // The nearest-rank quantile; the index is in range, so the casts are exact.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((last as f64) * q).round() as usize;
        self.0[index.min(last)]
    }

    fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    /// (max - min) / median: how far apart the samples are.
    fn spread(&self) -> f64 {
        match (self.0.first(), self.0.last()) {
            (Some(min), Some(max)) if self.median() > 0.0 => (max - min) / self.median(),
            _ => 0.0,
        }
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// Runs `cycle` `cycles` times and returns cycles per second.
fn rate(cycles: usize, mut cycle: impl FnMut() -> Result<()>) -> Result<f64> {
    let started = Instant::now();
    for _ in 0..cycles {
        cycle()?;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(cycles as f64 / started.elapsed().as_secs_f64())
}

/// A throughput comparison: a dlock path and its raw-driver floor, sampled alternately so
/// drift in the machine hits both alike.
#[derive(Debug)]
struct Throughput {
    path: &'static str,
    floor: &'static str,
    dlock: Stats,
    raw: Stats,
    /// dlock's rate over the floor's, sample by sample: the pairs ran back to back, so the
    /// machine's drift (which is large on a shared VM) cancels out of each ratio.
    ratios: Stats,
}

impl Throughput {
    /// A path `--only` leaves out: no samples, and left out of the report.
    fn skipped(path: &'static str, floor: &'static str) -> Throughput {
        Throughput {
            path,
            floor,
            dlock: Stats::new(Vec::new()),
            raw: Stats::new(Vec::new()),
            ratios: Stats::new(Vec::new()),
        }
    }

    fn ratio(&self) -> f64 {
        self.ratios.median()
    }
}

fn paired(path: &'static str, floor: &'static str, dlock: Vec<f64>, raw: Vec<f64>) -> Throughput {
    let ratios = dlock.iter().zip(&raw).map(|(d, r)| d / r).collect();
    eprintln!("bench: throughput {path} done");
    Throughput {
        path,
        floor,
        dlock: Stats::new(dlock),
        raw: Stats::new(raw),
        ratios: Stats::new(ratios),
    }
}

/// Which side of a comparison a sample is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Dlock,
    Floor,
}

/// Samples a dlock path and its floor alternately: `sample(side, cycles)` returns cycles per
/// second. Both sides run over the same connections, so where the server's processes happen
/// to be scheduled (which moves rates by a factor of several on this shared VM) hits both
/// alike.
fn compare(
    scale: Scale,
    path: &'static str,
    floor: &'static str,
    mut sample: impl FnMut(Side, usize) -> Result<f64>,
) -> Result<Throughput> {
    if !scale.wants(path) {
        return Ok(Throughput::skipped(path, floor));
    }
    // One warm-up of each: statement caches and the server's plans.
    sample(Side::Dlock, scale.cycles / 5 + 1)?;
    sample(Side::Floor, scale.cycles / 5 + 1)?;
    let (mut dlock, mut raw) = (Vec::new(), Vec::new());
    for repeat in 0..scale.repeats {
        // Alternate which runs first, so neither always meets the other's leftovers.
        let order = if repeat % 2 == 0 {
            [Side::Dlock, Side::Floor]
        } else {
            [Side::Floor, Side::Dlock]
        };
        for side in order {
            let rate = sample(side, scale.cycles)?;
            match side {
                Side::Dlock => dlock.push(rate),
                Side::Floor => raw.push(rate),
            }
        }
    }
    Ok(paired(path, floor, dlock, raw))
}

/// [`compare`] for async paths.
async fn compare_async(
    scale: Scale,
    path: &'static str,
    floor: &'static str,
    mut sample: impl AsyncFnMut(Side, usize) -> Result<f64>,
) -> Result<Throughput> {
    if !scale.wants(path) {
        return Ok(Throughput::skipped(path, floor));
    }
    sample(Side::Dlock, scale.cycles / 5 + 1).await?;
    sample(Side::Floor, scale.cycles / 5 + 1).await?;
    let (mut dlock, mut raw) = (Vec::new(), Vec::new());
    for repeat in 0..scale.repeats {
        let order = if repeat % 2 == 0 {
            [Side::Dlock, Side::Floor]
        } else {
            [Side::Floor, Side::Dlock]
        };
        for side in order {
            let rate = sample(side, scale.cycles).await?;
            match side {
                Side::Dlock => dlock.push(rate),
                Side::Floor => raw.push(rate),
            }
        }
    }
    Ok(paired(path, floor, dlock, raw))
}

/// [`compare`] with the two sides alternating cycle by cycle, each cycle timed on its own:
/// for paths on different connections (so different server processes), whose speeds drift
/// apart within a block of cycles on this VM.
fn compare_interleaved(
    scale: Scale,
    path: &'static str,
    floor: &'static str,
    mut cycle: impl FnMut(Side) -> Result<()>,
) -> Result<Throughput> {
    if !scale.wants(path) {
        return Ok(Throughput::skipped(path, floor));
    }
    for _ in 0..=scale.cycles / 5 {
        cycle(Side::Dlock)?;
        cycle(Side::Floor)?;
    }
    let (mut dlock, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..scale.repeats {
        let mut took = [Duration::ZERO; 2];
        for _ in 0..scale.cycles {
            for (slot, side) in [Side::Dlock, Side::Floor].into_iter().enumerate() {
                let started = Instant::now();
                cycle(side)?;
                took[slot] += started.elapsed();
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let cycles = scale.cycles as f64;
        dlock.push(cycles / took[0].as_secs_f64());
        raw.push(cycles / took[1].as_secs_f64());
    }
    Ok(paired(path, floor, dlock, raw))
}

/// [`compare_interleaved`] for async paths: also for any path whose cycle stands alone (a
/// lock reused or made per use, a pooled acquire) on one connection. Blocks of cycles let
/// the VM's drift (scheduling, the server's background work) land on one side of a pair:
/// the sqlx pools' ratios spread from 0.75 to 1.1 that way, and by a few hundredths
/// interleaved.
async fn compare_interleaved_async(
    scale: Scale,
    path: &'static str,
    floor: &'static str,
    mut cycle: impl AsyncFnMut(Side) -> Result<()>,
) -> Result<Throughput> {
    if !scale.wants(path) {
        return Ok(Throughput::skipped(path, floor));
    }
    for _ in 0..=scale.cycles / 5 {
        cycle(Side::Dlock).await?;
        cycle(Side::Floor).await?;
    }
    let (mut dlock, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..scale.repeats {
        let mut took = [Duration::ZERO; 2];
        for _ in 0..scale.cycles {
            for (slot, side) in [Side::Dlock, Side::Floor].into_iter().enumerate() {
                let started = Instant::now();
                cycle(side).await?;
                took[slot] += started.elapsed();
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let cycles = scale.cycles as f64;
        dlock.push(cycles / took[0].as_secs_f64());
        raw.push(cycles / took[1].as_secs_f64());
    }
    Ok(paired(path, floor, dlock, raw))
}

/// Sends `statements` as text through the sqlx connection `conn`, one after another: a floor
/// of the sqlx paths.
async fn sqlx_text<C>(conn: &mut C, statements: &[&str]) -> std::result::Result<(), sqlx::Error>
where
    for<'e> &'e mut C: sqlx::Executor<'e>,
{
    for statement in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

const PG_KEY: i64 = 0x0064_6c6f_636b; // "dlock"
const MY_NAME: &str = "dlock-bench/cycle";

/// The floor's statements for MySQL: the text protocol with the name as a literal, and the
/// one-year wait dlock sends MariaDB for "forever" (-1 would be NULL there). The text
/// protocol measured faster than cached prepared statements on this server.
fn mysql_floor_sql() -> (String, String) {
    (
        format!("SELECT GET_LOCK('{MY_NAME}', 31536000)"),
        format!("SELECT RELEASE_LOCK('{MY_NAME}')"),
    )
}

fn throughput(scale: Scale) -> Result<Vec<Throughput>> {
    let mut results = Vec::new();
    let (get, release) = mysql_floor_sql();
    let (pg_lock_sql, pg_unlock_sql) = (
        format!("SELECT pg_advisory_lock({PG_KEY})"),
        format!("SELECT pg_advisory_unlock({PG_KEY})"),
    );

    // PostgreSQL, blocking: the floor is the two statements prepared once, on the client.
    let mut lock = PgLock::new(pg()?, PG_KEY);
    let (lock_stmt, unlock_stmt) = (
        lock.client().prepare("SELECT pg_advisory_lock($1)")?,
        lock.client().prepare("SELECT pg_advisory_unlock($1)")?,
    );
    results.push(compare(
        scale,
        "PgLock",
        "postgres, prepared",
        |side, n| {
            rate(n, || {
                if side == Side::Dlock {
                    lock.acquire()?;
                    lock.release()?;
                } else {
                    lock.client().execute(&lock_stmt, &[&PG_KEY])?;
                    lock.client().execute(&unlock_stmt, &[&PG_KEY])?;
                }
                Ok(())
            })
        },
    )?);
    drop(lock);

    // A lock made per use on a long-lived client, every check on (the way sqlx's
    // `PgAdvisoryLock` is used): the floor sends the same two statements as text.
    let mut client = pg()?;
    results.push(compare(
        scale,
        "PgLock, made per use",
        "postgres, text",
        |side, n| {
            rate(n, || {
                if side == Side::Dlock {
                    let mut lock = PgLock::new(&mut client, PG_KEY);
                    lock.acquire()?;
                    lock.release()?;
                } else {
                    client.simple_query(&pg_lock_sql)?;
                    client.simple_query(&pg_unlock_sql)?;
                }
                Ok(())
            })
        },
    )?);
    drop(client);
    let mut conn = my()?;
    results.push(compare(
        scale,
        "MySqlLock, made per use",
        "mysql, text",
        |side, n| {
            rate(n, || {
                if side == Side::Dlock {
                    let mut lock = MySqlLock::new(&mut conn, MY_NAME);
                    lock.acquire()?;
                    lock.release()?;
                } else {
                    let _: Option<Option<i64>> = conn.query_first(&get)?;
                    let _: Option<Option<i64>> = conn.query_first(&release)?;
                }
                Ok(())
            })
        },
    )?);
    drop(conn);

    // Locks made per use on a session (`session.lock(key)`): they take the session's passed
    // check and its prepared statements. The same floor, the two statements as text.
    let mut client = pg()?;
    results.push(compare(
        scale,
        "PgLock, made per use on a PgSession",
        "postgres, text",
        |side, n| {
            if side == Side::Dlock {
                let mut session = PgSession::new(&mut client);
                rate(n, || {
                    let mut lock = session.lock(PG_KEY);
                    lock.acquire()?;
                    lock.release()?;
                    Ok(())
                })
            } else {
                rate(n, || {
                    client.simple_query(&pg_lock_sql)?;
                    client.simple_query(&pg_unlock_sql)?;
                    Ok(())
                })
            }
        },
    )?);
    drop(client);
    let mut conn = my()?;
    results.push(compare(
        scale,
        "MySqlLock, made per use on a MySqlSession",
        "mysql, text",
        |side, n| {
            if side == Side::Dlock {
                let mut session = MySqlSession::new(&mut conn);
                rate(n, || {
                    let mut lock = session.lock(MY_NAME);
                    lock.acquire()?;
                    lock.release()?;
                    Ok(())
                })
            } else {
                rate(n, || {
                    let _: Option<Option<i64>> = conn.query_first(&get)?;
                    let _: Option<Option<i64>> = conn.query_first(&release)?;
                    Ok(())
                })
            }
        },
    )?);
    drop(conn);

    // A transaction lock refuses a hot standby in its own query: the floor sends the same
    // lock statement without that guard, in the same transaction frame.
    let mut client = pg()?;
    let try_sql = format!("SELECT pg_try_advisory_xact_lock({PG_KEY})");
    let xact = PgXactLock::new(PG_KEY);
    results.push(compare(
        scale,
        "PgXactLock (try, then commit)",
        "postgres, text",
        |side, n| {
            rate(n, || {
                let mut tx = client.transaction()?;
                if side == Side::Dlock {
                    xact.try_acquire(&mut tx)?;
                } else {
                    tx.simple_query(&try_sql)?;
                }
                tx.commit()?;
                Ok(())
            })
        },
    )?);
    drop(client);

    let mut lock = MySqlLock::new(my()?, MY_NAME);
    results.push(compare(scale, "MySqlLock", "mysql, text", |side, n| {
        rate(n, || {
            if side == Side::Dlock {
                lock.acquire()?;
                lock.release()?;
            } else {
                let _: Option<Option<i64>> = lock.conn().query_first(&get)?;
                let _: Option<Option<i64>> = lock.conn().query_first(&release)?;
            }
            Ok(())
        })
    })?);
    drop(lock);

    // Fenced: the floor is the raw driver doing the same work by hand, a lock and a durable
    // bump of the key's token. On PostgreSQL that is one statement (the lock, then the
    // upsert, its token drawn from the fence clock too, committed with `synchronous_commit`
    // on), and the unlock; on MySQL `GET_LOCK`,
    // the upsert, and `RELEASE_LOCK`. The durable write is the cost of a token that a crash
    // cannot hand out twice; the ratio is what dlock adds to it. Each sample builds its lock,
    // which prepares its statements on its second cycle.
    pg_install_fencing(&mut pg()?)?;
    let (fence_space, fence_key) = (1, PG_KEY + 3);
    let pg_fenced_lock_sql = format!(
        "WITH d AS MATERIALIZED (SELECT CASE WHEN current_setting('synchronous_commit') = 'off' \
         THEN set_config('synchronous_commit', 'on', true) END), \
         l AS MATERIALIZED (SELECT pg_advisory_lock({fence_key})), \
         f AS (INSERT INTO public.dlock_fence AS fence (key_space, lock_key, token) \
         SELECT {fence_space}, {fence_key}, nextval('\"public\".\"dlock_fence_clock\"') FROM l \
         ON CONFLICT (key_space, lock_key) DO UPDATE SET token = GREATEST(fence.token + 1, EXCLUDED.token) RETURNING token) \
         SELECT true, (SELECT token FROM f) FROM d"
    );
    let pg_fenced_unlock_sql = format!("SELECT pg_advisory_unlock({fence_key})");
    let mut client = pg()?;
    results.push(compare(
        scale,
        "PgLock, fenced",
        "postgres, text: lock with a durable token upsert",
        |side, n| {
            if side == Side::Dlock {
                let mut lock = PgLock::new(&mut client, fence_key)
                    .skip_deployment_check()
                    .fenced();
                rate(n, || {
                    lock.acquire()?;
                    lock.release()?;
                    Ok(())
                })
            } else {
                rate(n, || {
                    client.simple_query(&pg_fenced_lock_sql)?;
                    client.simple_query(&pg_fenced_unlock_sql)?;
                    Ok(())
                })
            }
        },
    )?);
    drop(client);
    my_install_fencing(&mut my()?)?;
    let my_fenced_name = "dlock-bench/fenced";
    let my_fenced_get = format!("SELECT GET_LOCK('{my_fenced_name}', -1)");
    // MariaDB draws the token from the fence clock too, as dlock does there.
    let my_fenced_bump = format!(
        "INSERT INTO dlock.dlock_fence (lock_name, token) VALUES ('{my_fenced_name}', \
         LAST_INSERT_ID(NEXTVAL(dlock.dlock_fence_clock))) ON DUPLICATE KEY UPDATE \
         token = LAST_INSERT_ID(GREATEST(token + 1, VALUES(token)))"
    );
    let my_fenced_release = format!("SELECT RELEASE_LOCK('{my_fenced_name}')");
    let mut conn = my()?;
    results.push(compare(
        scale,
        "MySqlLock, fenced",
        "mysql, text: lock, token upsert",
        |side, n| {
            if side == Side::Dlock {
                let mut lock = MySqlLock::new(&mut conn, my_fenced_name)
                    .skip_deployment_check()
                    .fenced();
                rate(n, || {
                    lock.acquire()?;
                    lock.release()?;
                    Ok(())
                })
            } else {
                rate(n, || {
                    let _: Option<Option<i64>> = conn.query_first(&my_fenced_get)?;
                    conn.query_drop(&my_fenced_bump)?;
                    let _: Option<Option<i64>> = conn.query_first(&my_fenced_release)?;
                    Ok(())
                })
            }
        },
    )?);
    drop(conn);

    // The pools: the floor checks a connection out of the same pool and sends the same
    // statements, which a pooled connection cannot keep prepared without a cache of its own.
    let manager =
        r2d2_postgres::PostgresConnectionManager::new(pg_url()?.parse()?, postgres::NoTls);
    let pool = LockPool::with_builder(r2d2::Pool::builder().max_size(1), manager)?;
    results.push(compare(
        scale,
        "LockPool, PostgreSQL",
        "r2d2 checkout, postgres simple query",
        |side, n| {
            rate(n, || {
                if side == Side::Dlock {
                    LockGuard::release(pool.acquire(PG_KEY)?)?;
                } else {
                    let mut conn = pool.pool().get()?;
                    conn.simple_query(&pg_lock_sql)?;
                    conn.simple_query(&pg_unlock_sql)?;
                }
                Ok(())
            })
        },
    )?);
    drop(pool);

    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&mysql_url()?)?);
    let manager = r2d2_mysql::MySqlConnectionManager::new(opts);
    let pool = LockPool::with_builder(r2d2::Pool::builder().max_size(1), manager)?;
    results.push(compare(
        scale,
        "LockPool, MySQL",
        "r2d2 checkout, mysql text",
        |side, n| {
            rate(n, || {
                if side == Side::Dlock {
                    LockGuard::release(pool.acquire(MY_NAME)?)?;
                } else {
                    let mut conn = pool.pool().get()?;
                    let _: Option<Option<i64>> = conn.query_first(&get)?;
                    let _: Option<Option<i64>> = conn.query_first(&release)?;
                }
                Ok(())
            })
        },
    )?);
    drop(pool);

    // The async paths run on a current-thread runtime, as a latency-bound service would.
    runtime()?.block_on(async {
        let mut lock = AsyncPgLock::new(pg_async().await?, PG_KEY);
        let (lock_stmt, unlock_stmt) = (
            lock.client().prepare("SELECT pg_advisory_lock($1)").await?,
            lock.client()
                .prepare("SELECT pg_advisory_unlock($1)")
                .await?,
        );
        results.push(
            compare_interleaved_async(
                scale,
                "AsyncPgLock",
                "tokio-postgres, prepared",
                async |side| {
                    if side == Side::Dlock {
                        lock.acquire().await?;
                        lock.release().await?;
                    } else {
                        lock.client().execute(&lock_stmt, &[&PG_KEY]).await?;
                        lock.client().execute(&unlock_stmt, &[&PG_KEY]).await?;
                    }
                    Ok(())
                },
            )
            .await?,
        );
        drop(lock);

        let mut client = pg_async().await?;
        results.push(
            compare_interleaved_async(
                scale,
                "AsyncPgLock, made per use",
                "tokio-postgres, text",
                async |side| {
                    if side == Side::Dlock {
                        let mut lock = AsyncPgLock::new(&mut client, PG_KEY);
                        lock.acquire().await?;
                        lock.release().await?;
                    } else {
                        client.simple_query(&pg_lock_sql).await?;
                        client.simple_query(&pg_unlock_sql).await?;
                    }
                    Ok(())
                },
            )
            .await?,
        );
        drop(client);
        let mut client = pg_async().await?;
        results.push(
            compare_async(
                scale,
                "AsyncPgLock, made per use on an AsyncPgSession",
                "tokio-postgres, text",
                async |side, n| {
                    let started = Instant::now();
                    if side == Side::Dlock {
                        let mut session = AsyncPgSession::new(&mut client);
                        for _ in 0..n {
                            let mut lock = session.lock(PG_KEY);
                            lock.acquire().await?;
                            lock.release().await?;
                        }
                    } else {
                        for _ in 0..n {
                            client.simple_query(&pg_lock_sql).await?;
                            client.simple_query(&pg_unlock_sql).await?;
                        }
                    }
                    Ok(per_second(n, started))
                },
            )
            .await?,
        );
        drop(client);

        // The sqlx transport, beside sqlx sending the same two statements as text on the
        // same connection.
        use sqlx::Connection as _;
        let conn = sqlx::PgConnection::connect(&pg_url()?).await?;
        let mut lock = dlock_postgres::SqlxPgLock::new(conn, PG_KEY);
        results.push(
            compare_interleaved_async(scale, "SqlxPgLock", "sqlx, text", async |side| {
                if side == Side::Dlock {
                    lock.acquire().await?;
                    lock.release().await?;
                } else {
                    sqlx_text(lock.connection(), &[&pg_lock_sql, &pg_unlock_sql])
                        .await?;
                }
                Ok(())
            })
            .await?,
        );
        let (conn, released) = lock.into_inner().await;
        released?;
        // Made per use: a lock takes the connection, and gives it back on into_inner.
        let mut conn = Some(conn);
        results.push(
            compare_interleaved_async(
                scale,
                "SqlxPgLock, made per use",
                "sqlx, text",
                async |side| {
                    let taken = conn.take().expect("the connection is given back");
                    if side == Side::Dlock {
                        let mut lock = dlock_postgres::SqlxPgLock::new(taken, PG_KEY);
                        lock.acquire().await?;
                        let (back, released) = lock.into_inner().await;
                        released?;
                        conn = Some(back);
                    } else {
                        let mut taken = taken;
                        sqlx_text(&mut taken, &[&pg_lock_sql, &pg_unlock_sql])
                            .await?;
                        conn = Some(taken);
                    }
                    Ok(())
                },
            )
            .await?,
        );
        // The same, beside the very statements the lock sends: its lock statement carries the
        // mark of the session's passed check, which the floor reads from the session once.
        let mut gated: Option<String> = None;
        results.push(
            compare_interleaved_async(
                scale,
                "SqlxPgLock, made per use",
                "sqlx, the same SQL",
                async |side| {
                    let mut taken = conn.take().expect("the connection is given back");
                    if side == Side::Dlock {
                        let mut lock = dlock_postgres::SqlxPgLock::new(taken, PG_KEY);
                        lock.acquire().await?;
                        let (back, released) = lock.into_inner().await;
                        released?;
                        conn = Some(back);
                        return Ok(());
                    }
                    if gated.is_none() {
                        let mark: String = sqlx::query_scalar(
                            "SELECT current_setting('dlock.deployment_checked', true)",
                        )
                        .fetch_one(&mut taken)
                        .await?;
                        gated = Some(format!(
                            "SELECT pg_try_advisory_lock({PG_KEY}) WHERE \
                             current_setting('dlock.deployment_checked', true) = '{mark}'"
                        ));
                    }
                    let unlock = format!("SELECT pg_advisory_unlock({PG_KEY}), pg_backend_pid()");
                    let gated = gated.as_deref().unwrap_or_default();
                    sqlx_text(&mut taken, &[gated, &unlock]).await?;
                    conn = Some(taken);
                    Ok(())
                },
            )
            .await?,
        );
        // Made per use on a session, which keeps the check's verdict for every lock on it.
        let mut session =
            dlock_postgres::SqlxPgSession::new(conn.take().expect("the connection is given back"));
        results.push(
            compare_interleaved_async(
                scale,
                "SqlxPgLock, made per use on a SqlxPgSession",
                "sqlx, text",
                async |side| {
                    if side == Side::Dlock {
                        let mut lock = session.lock(PG_KEY);
                        lock.acquire().await?;
                        lock.release().await?;
                    } else {
                        sqlx_text(session.connection(), &[&pg_lock_sql, &pg_unlock_sql]).await?;
                    }
                    Ok(())
                },
            )
            .await?,
        );
        drop(session);
        let mut conn = my_async().await?;
        results.push(
            compare_async(
                scale,
                "AsyncMySqlLock, made per use on an AsyncMySqlSession",
                "mysql_async, text",
                async |side, n| {
                    let started = Instant::now();
                    if side == Side::Dlock {
                        let mut session = AsyncMySqlSession::new(&mut conn);
                        for _ in 0..n {
                            let mut lock = session.lock(MY_NAME);
                            lock.acquire().await?;
                            lock.release().await?;
                        }
                    } else {
                        for _ in 0..n {
                            let _: Option<Option<i64>> = conn.query_first(&get).await?;
                            let _: Option<Option<i64>> = conn.query_first(&release).await?;
                        }
                    }
                    Ok(per_second(n, started))
                },
            )
            .await?,
        );
        drop(conn);
        let mut conn = my_async().await?;
        results.push(
            compare_interleaved_async(
                scale,
                "AsyncMySqlLock, made per use",
                "mysql_async, text",
                async |side| {
                    if side == Side::Dlock {
                        let mut lock = AsyncMySqlLock::new(&mut conn, MY_NAME);
                        lock.acquire().await?;
                        lock.release().await?;
                    } else {
                        let _: Option<Option<i64>> = conn.query_first(&get).await?;
                        let _: Option<Option<i64>> = conn.query_first(&release).await?;
                    }
                    Ok(())
                },
            )
            .await?,
        );
        // The same, beside the very statements a lock made per use on a borrowed connection
        // sends: the session's mark of a passed check gates the grant, and the session's name
        // rides along for a kill that must prove the session.
        let mark: Option<String> = conn.query_first("SELECT @dlock_deployment_checked").await?;
        let gated = format!(
            "SELECT /* dlock:0123456789abcdef */ IF(@dlock_deployment_checked = '{}', \
             GET_LOCK('{MY_NAME}', 31536000), -4), CONNECTION_ID(), @dlock_session_tag",
            mark.unwrap_or_default()
        );
        results.push(
            compare_interleaved_async(
                scale,
                "AsyncMySqlLock, made per use",
                "mysql_async, the same SQL",
                async |side| {
                    if side == Side::Dlock {
                        let mut lock = AsyncMySqlLock::new(&mut conn, MY_NAME);
                        lock.acquire().await?;
                        lock.release().await?;
                    } else {
                        let _: Option<mysql_async::Row> = conn.query_first(&gated).await?;
                        let _: Option<Option<i64>> = conn.query_first(&release).await?;
                    }
                    Ok(())
                },
            )
            .await?,
        );
        drop(conn);

        // The sqlx transport on MySQL, beside sqlx sending the same two statements as text on
        // the same connection.
        let conn = sqlx::MySqlConnection::connect(&mysql_url()?).await?;
        let mut lock = dlock_mysql::SqlxMySqlLock::new(conn, MY_NAME);
        results.push(
            compare_interleaved_async(scale, "SqlxMySqlLock", "sqlx, text", async |side| {
                if side == Side::Dlock {
                    lock.acquire().await?;
                    lock.release().await?;
                } else {
                    sqlx_text(lock.connection(), &[&get, &release]).await?;
                }
                Ok(())
            })
            .await?,
        );
        let (conn, released) = lock.into_inner().await;
        released?;
        let mut session = dlock_mysql::SqlxMySqlSession::new(conn);
        results.push(
            compare_interleaved_async(
                scale,
                "SqlxMySqlLock, made per use on a SqlxMySqlSession",
                "sqlx, text",
                async |side| {
                    if side == Side::Dlock {
                        let mut lock = session.lock(MY_NAME);
                        lock.acquire().await?;
                        lock.release().await?;
                    } else {
                        sqlx_text(session.connection(), &[&get, &release]).await?;
                    }
                    Ok(())
                },
            )
            .await?,
        );
        drop(session);

        let mut lock = AsyncMySqlLock::new(my_async().await?, MY_NAME);
        results.push(
            compare_interleaved_async(scale, "AsyncMySqlLock", "mysql_async, text", async |side| {
                if side == Side::Dlock {
                    lock.acquire().await?;
                    lock.release().await?;
                } else {
                    let _: Option<Option<i64>> = lock.conn().query_first(&get).await?;
                    let _: Option<Option<i64>> = lock.conn().query_first(&release).await?;
                }
                Ok(())
            })
            .await?,
        );
        // The same, beside the very statements it sends: its tag, and its session's name
        // for a kill that must prove the session.
        let tagged = format!(
            "SELECT /* dlock:0123456789abcdef */ GET_LOCK('{MY_NAME}', 31536000), \
             CONNECTION_ID(), @dlock_session_tag"
        );
        results.push(
            compare_interleaved_async(scale, "AsyncMySqlLock", "mysql_async, the same SQL", async |side| {
                if side == Side::Dlock {
                    lock.acquire().await?;
                    lock.release().await?;
                } else {
                    let _: Option<mysql_async::Row> = lock.conn().query_first(&tagged).await?;
                    let _: Option<Option<i64>> = lock.conn().query_first(&release).await?;
                }
                Ok(())
            })
            .await?,
        );
        drop(lock);

        let manager =
            bb8_postgres::PostgresConnectionManager::new(pg_url()?.parse()?, tokio_postgres::NoTls);
        let pool = AsyncLockPool::with_builder(bb8::Pool::builder().max_size(1), manager).await?;
        results.push(
            compare_interleaved_async(
                scale,
                "AsyncLockPool, PostgreSQL",
                "bb8 checkout, tokio-postgres simple query",
                async |side| {
                    if side == Side::Dlock {
                        AsyncLockGuard::release(pool.acquire(PG_KEY).await?).await?;
                    } else {
                        let conn = pool.pool().get().await?;
                        conn.simple_query(&pg_lock_sql).await?;
                        conn.simple_query(&pg_unlock_sql).await?;
                    }
                    Ok(())
                },
            )
            .await?,
        );
        drop(pool);

        // Your deadpool-postgres pool, beside the same checkout and statements by hand.
        let mut config = dlock_pool::deadpool_postgres::Config::new();
        config.url = Some(pg_url()?);
        config.pool = Some(dlock_pool::deadpool_postgres::PoolConfig::new(1));
        let user_pool = config.create_pool(
            Some(dlock_pool::deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )?;
        let locks = dlock_pool::DeadpoolLockPool::new(user_pool.clone());
        results.push(
            compare_interleaved_async(
                scale,
                "DeadpoolLockPool, PostgreSQL",
                "deadpool checkout, tokio-postgres simple query",
                async |side| {
                    if side == Side::Dlock {
                        dlock_pool::DeadpoolLockGuard::release(locks.acquire(PG_KEY).await?)
                            .await?;
                    } else {
                        let conn = user_pool.get().await?;
                        conn.simple_query(&pg_lock_sql).await?;
                        conn.simple_query(&pg_unlock_sql).await?;
                    }
                    Ok(())
                },
            )
            .await?,
        );
        drop(locks);

        // Your sqlx pools, beside the same checkout and statements by hand: the plain lock
        // statements, and the very statements a pooled lock sends (DESIGN's floor, "the raw
        // driver sending the same SQL"), which carry the proof of the session's check and its
        // name for the watcher. The first ratio says what dlock costs over a bare lock, the
        // second what its client costs over its SQL.
        macro_rules! sqlx_pool_path {
            ($path:expr, $floor:expr, $user_pool:expr, $key:expr, $statements:expr, $prepare:expr) => {{
                let user_pool = $user_pool;
                let locks = dlock_pool::SqlxLockPool::new(user_pool.clone());
                let statements: Vec<String> = $statements;
                let prepare: Option<String> = $prepare;
                compare_interleaved_async(scale, $path, $floor, async |side| {
                    if side == Side::Dlock {
                        dlock_pool::SqlxLockGuard::release(locks.acquire($key).await?).await?;
                    } else {
                        let mut conn = user_pool.acquire().await?;
                        for statement in &statements {
                            let sent = sqlx_text(&mut *conn, &[statement]).await;
                            match (sent, &prepare) {
                                // A connection of the pool not seen yet (the watcher took the
                                // first for good): the statement is prepared once, as dlock
                                // prepares its gate.
                                (Err(_), Some(prepare)) => {
                                    sqlx_text(&mut *conn, &[prepare, statement]).await?;
                                }
                                (sent, _) => sent?,
                            }
                        }
                    }
                    Ok(())
                })
                .await?
            }};
        }
        let pg_pool = async || {
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&pg_url()?)
                .await
                .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
        };
        let my_pool = async || {
            sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(1)
                .connect(&mysql_url()?)
                .await
                .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
        };
        results.push(sqlx_pool_path!(
            "SqlxLockPool, PostgreSQL",
            "sqlx checkout, sqlx text",
            pg_pool().await?,
            PG_KEY,
            vec![pg_lock_sql.clone(), pg_unlock_sql.clone()],
            None
        ));
        results.push(sqlx_pool_path!(
            "SqlxLockPool, PostgreSQL",
            "sqlx checkout, the same SQL",
            pg_pool().await?,
            PG_KEY,
            vec![
                format!("EXECUTE dlock_bench_gate({PG_KEY})"),
                format!("SELECT pg_advisory_unlock({PG_KEY}), pg_backend_pid()"),
            ],
            Some(
                "PREPARE dlock_bench_gate(int8) AS SELECT pg_try_advisory_lock($1), 123456, \
                 '1796645871234567'::text"
                    .to_owned()
            )
        ));
        results.push(sqlx_pool_path!(
            "SqlxLockPool, MySQL",
            "sqlx checkout, sqlx text",
            my_pool().await?,
            MY_NAME,
            vec![get.clone(), release.clone()],
            None
        ));
        results.push(sqlx_pool_path!(
            "SqlxLockPool, MySQL",
            "sqlx checkout, the same SQL",
            my_pool().await?,
            MY_NAME,
            vec![
                format!(
                    "SELECT /* dlock:0123456789abcdef */ GET_LOCK('{MY_NAME}', 31536000), \
                     CONNECTION_ID(), @dlock_session_tag, \
                     @dlock_deployment_checked <=> '0123456789abcdefm'"
                ),
                release.clone(),
            ],
            None
        ));

        let manager = AsyncMySqlManager::from_url(&mysql_url()?)?;
        let pool = AsyncLockPool::with_builder(bb8::Pool::builder().max_size(1), manager).await?;
        results.push(
            compare_interleaved_async(
                scale,
                "AsyncLockPool, MySQL",
                "bb8 checkout, mysql_async text",
                async |side| {
                    if side == Side::Dlock {
                        AsyncLockGuard::release(pool.acquire(MY_NAME).await?).await?;
                    } else {
                        let mut conn = pool.pool().get().await?;
                        let _: Option<Option<i64>> = conn.query_first(&get).await?;
                        let _: Option<Option<i64>> = conn.query_first(&release).await?;
                    }
                    Ok(())
                },
            )
            .await?,
        );
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    Ok(results)
}

/// While alive, keeps the servers the bench started, and the bench itself, on one CPU.
///
/// Paths on different connections are served by different server processes (PostgreSQL) or
/// threads (MariaDB). On this two-CPU VM, where the scheduler places each of them decides its
/// speed by a factor of several, steadily for a whole run, so a comparison between two
/// connections measured placement rather than the client. On one CPU every process meets the
/// same scheduler, and the pairs come out tight. (PostgreSQL forks a backend per connection
/// from the postmaster, which passes the CPU set on.)
struct Pinned {
    pids: Vec<String>,
}

impl Pinned {
    fn new() -> Pinned {
        let mut pids: Vec<String> = std::env::var("DLOCK_BENCH_SERVER_PIDS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if pids.is_empty() {
            eprintln!(
                "bench: servers of your own are not pinned; pooled paths may compare placement"
            );
        }
        pids.push(std::process::id().to_string());
        let pinned = Pinned { pids };
        pinned.set("0");
        pinned
    }

    fn set(&self, cpus: &str) {
        for pid in &self.pids {
            let set = std::process::Command::new("taskset")
                .args(["-a", "-p", "-c", cpus, pid])
                .stdout(std::process::Stdio::null())
                .status();
            if !set.is_ok_and(|status| status.success()) {
                eprintln!("bench: could not set the CPUs of process {pid} with taskset");
            }
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        self.set(&format!("0-{}", cpus.saturating_sub(1)));
    }
}

/// Each pooled path (a pool built by `new`, which sends no checkout test of its own) beside
/// the bare lock on a dedicated connection, and beside a pool that tests each checkout (the
/// default before): what a pool costs, and what skipping the test gained.
fn pooled_beside_bare(scale: Scale) -> Result<Vec<Throughput>> {
    const BARE: &str = "bare lock, dedicated connection (one CPU)";
    const TESTED: &str = "pool testing each checkout (one CPU)";
    let _pinned = Pinned::new();
    let mut results = Vec::new();
    let pg_manager = || -> Result<_> {
        Ok(r2d2_postgres::PostgresConnectionManager::new(
            pg_url()?.parse()?,
            postgres::NoTls,
        ))
    };
    let pool = LockPool::new(pg_manager()?)?;
    let tested = LockPool::with_builder(r2d2::Pool::builder().max_size(1), pg_manager()?)?;
    let mut bare = PgLock::new(pg()?, PG_KEY);
    results.push(compare_interleaved(
        scale,
        "LockPool, PostgreSQL",
        BARE,
        |side| {
            if side == Side::Dlock {
                LockGuard::release(pool.acquire(PG_KEY)?)?;
            } else {
                bare.acquire()?;
                bare.release()?;
            }
            Ok(())
        },
    )?);
    results.push(compare_interleaved(
        scale,
        "LockPool, PostgreSQL",
        TESTED,
        |side| {
            let pool = if side == Side::Dlock { &pool } else { &tested };
            Ok(LockGuard::release(pool.acquire(PG_KEY)?)?)
        },
    )?);
    drop((pool, tested, bare));

    let my_manager = || -> Result<_> {
        let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&mysql_url()?)?);
        Ok(r2d2_mysql::MySqlConnectionManager::new(opts))
    };
    let pool = LockPool::new(my_manager()?)?;
    let tested = LockPool::with_builder(r2d2::Pool::builder().max_size(1), my_manager()?)?;
    let mut bare = MySqlLock::new(my()?, MY_NAME);
    results.push(compare_interleaved(
        scale,
        "LockPool, MySQL",
        BARE,
        |side| {
            if side == Side::Dlock {
                LockGuard::release(pool.acquire(MY_NAME)?)?;
            } else {
                bare.acquire()?;
                bare.release()?;
            }
            Ok(())
        },
    )?);
    results.push(compare_interleaved(
        scale,
        "LockPool, MySQL",
        TESTED,
        |side| {
            let pool = if side == Side::Dlock { &pool } else { &tested };
            Ok(LockGuard::release(pool.acquire(MY_NAME)?)?)
        },
    )?);
    drop((pool, tested, bare));

    runtime()?.block_on(async {
        let pg_manager = || -> Result<_> {
            Ok(bb8_postgres::PostgresConnectionManager::new(
                pg_url()?.parse()?,
                tokio_postgres::NoTls,
            ))
        };
        let pool = AsyncLockPool::new(pg_manager()?).await?;
        let tested =
            AsyncLockPool::with_builder(bb8::Pool::builder().max_size(1), pg_manager()?).await?;
        let mut bare = AsyncPgLock::new(pg_async().await?, PG_KEY);
        results.push(
            compare_interleaved_async(scale, "AsyncLockPool, PostgreSQL", BARE, async |side| {
                if side == Side::Dlock {
                    AsyncLockGuard::release(pool.acquire(PG_KEY).await?).await?;
                } else {
                    bare.acquire().await?;
                    bare.release().await?;
                }
                Ok(())
            })
            .await?,
        );
        results.push(
            compare_interleaved_async(scale, "AsyncLockPool, PostgreSQL", TESTED, async |side| {
                let pool = if side == Side::Dlock { &pool } else { &tested };
                Ok(AsyncLockGuard::release(pool.acquire(PG_KEY).await?).await?)
            })
            .await?,
        );
        drop((pool, tested, bare));

        let pool = AsyncLockPool::new(AsyncMySqlManager::from_url(&mysql_url()?)?).await?;
        let tested = AsyncLockPool::with_builder(
            bb8::Pool::builder().max_size(1),
            AsyncMySqlManager::from_url(&mysql_url()?)?,
        )
        .await?;
        let mut bare = AsyncMySqlLock::new(my_async().await?, MY_NAME);
        results.push(
            compare_interleaved_async(scale, "AsyncLockPool, MySQL", BARE, async |side| {
                if side == Side::Dlock {
                    AsyncLockGuard::release(pool.acquire(MY_NAME).await?).await?;
                } else {
                    bare.acquire().await?;
                    bare.release().await?;
                }
                Ok(())
            })
            .await?,
        );
        results.push(
            compare_interleaved_async(scale, "AsyncLockPool, MySQL", TESTED, async |side| {
                let pool = if side == Side::Dlock { &pool } else { &tested };
                Ok(AsyncLockGuard::release(pool.acquire(MY_NAME).await?).await?)
            })
            .await?,
        );
        drop((pool, tested));

        // The URL entry point beside the backend's pool it forwards to: what one guard type
        // for both backends costs.
        const BACKENDS_POOL: &str = "the backend's AsyncLockPool (one CPU)";
        for (path, url, key) in [
            (
                "AsyncAnyLockPool, PostgreSQL",
                pg_url()?,
                PG_KEY.to_string(),
            ),
            ("AsyncAnyLockPool, MySQL", mysql_url()?, MY_NAME.to_owned()),
        ] {
            let any = AsyncAnyLockPool::connect(&url).await?;
            if url.starts_with("postgres") {
                let pool = AsyncLockPool::new(bb8_postgres::PostgresConnectionManager::new(
                    url.parse()?,
                    tokio_postgres::NoTls,
                ))
                .await?;
                let key = PG_KEY;
                results.push(
                    compare_interleaved_async(scale, path, BACKENDS_POOL, async |side| {
                        if side == Side::Dlock {
                            AsyncAnyLockGuard::release(any.acquire(key).await?).await?;
                        } else {
                            AsyncLockGuard::release(pool.acquire(key).await?).await?;
                        }
                        Ok(())
                    })
                    .await?,
                );
            } else {
                let pool = AsyncLockPool::new(AsyncMySqlManager::from_url(&url)?).await?;
                let key = key.as_str();
                results.push(
                    compare_interleaved_async(scale, path, BACKENDS_POOL, async |side| {
                        if side == Side::Dlock {
                            AsyncAnyLockGuard::release(any.acquire(key).await?).await?;
                        } else {
                            AsyncLockGuard::release(pool.acquire(key).await?).await?;
                        }
                        Ok(())
                    })
                    .await?,
                );
            }
        }
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    Ok(results)
}

fn per_second(cycles: usize, started: Instant) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let cycles = cycles as f64;
    cycles / started.elapsed().as_secs_f64()
}

/// Handoff latency for one backend and K waiters.
#[derive(Debug)]
struct Handoff {
    backend: &'static str,
    /// `dlock`, or `raw driver` for the baseline.
    path: &'static str,
    waiters: usize,
    latency_us: Stats,
}

/// The loopback round trip of each backend: `SELECT 1`, in microseconds.
fn round_trips(scale: Scale) -> Result<[(&'static str, Stats); 2]> {
    let samples = if scale.quick { 50 } else { 2_000 };
    let mut client = pg()?;
    let mut pg_rtt = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        client.simple_query("SELECT 1")?;
        pg_rtt.push(micros(started.elapsed()));
    }
    let mut conn = my()?;
    let mut my_rtt = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let _: Option<Option<i64>> = conn.query_first("SELECT 1")?;
        my_rtt.push(micros(started.elapsed()));
    }
    Ok([
        ("postgres", Stats::new(pg_rtt)),
        ("mysql", Stats::new(my_rtt)),
    ])
}

/// The time of the last release, as nanoseconds since `origin`, so the next holder can tell
/// how long the handover took.
struct Clock {
    origin: Instant,
    last_release: AtomicU64,
}

impl Clock {
    fn mark_release(&self) {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_release.store(now, Ordering::SeqCst);
    }

    fn since_release(&self) -> f64 {
        let now = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let released = self.last_release.load(Ordering::SeqCst);
        #[allow(clippy::cast_precision_loss)]
        let nanos = now.saturating_sub(released) as f64;
        nanos / 1_000.0
    }
}

/// How many sessions wait for the benchmark's lock, seen from the side.
fn waiting(
    backend: &str,
    side_pg: &mut postgres::Client,
    side_my: &mut mysql::Conn,
) -> Result<usize> {
    let count: i64 = if backend == "postgres" {
        side_pg
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )?
            .get(0)
    } else {
        side_my
            .query_first(
                "SELECT count(*) FROM information_schema.PROCESSLIST WHERE STATE LIKE '%lock%' \
                 AND INFO LIKE '%GET_LOCK%' AND ID <> CONNECTION_ID()",
            )?
            .unwrap_or(0)
    };
    Ok(usize::try_from(count).unwrap_or(0))
}

/// A session that takes and releases the handoff key: through dlock, or through the raw
/// driver for the baseline.
enum Taker {
    Pg(Box<PgLock<postgres::Client>>),
    My(MySqlLock<mysql::Conn>),
    RawPg(postgres::Client),
    RawMy(mysql::Conn),
}

const HANDOFF_NAME: &str = "dlock-bench/handoff";

impl Taker {
    fn open(backend: &str, raw: bool) -> Result<Taker> {
        Ok(match (backend, raw) {
            ("postgres", false) => Taker::Pg(Box::new(PgLock::new(pg()?, PG_KEY + 1))),
            ("postgres", true) => Taker::RawPg(pg()?),
            (_, false) => Taker::My(MySqlLock::new(my()?, HANDOFF_NAME)),
            (_, true) => Taker::RawMy(my()?),
        })
    }

    fn acquire(&mut self) -> Result<()> {
        match self {
            Taker::Pg(lock) => lock.acquire()?,
            Taker::My(lock) => lock.acquire()?,
            Taker::RawPg(client) => {
                client.simple_query(&format!("SELECT pg_advisory_lock({})", PG_KEY + 1))?;
            }
            Taker::RawMy(conn) => {
                let got: Option<Option<i64>> =
                    conn.query_first(format!("SELECT GET_LOCK('{HANDOFF_NAME}', 31536000)"))?;
                if got.flatten() != Some(1) {
                    return Err("GET_LOCK did not grant the lock".into());
                }
            }
        }
        Ok(())
    }

    fn release(&mut self) -> Result<()> {
        match self {
            Taker::Pg(lock) => lock.release()?,
            Taker::My(lock) => lock.release()?,
            Taker::RawPg(client) => {
                client.simple_query(&format!("SELECT pg_advisory_unlock({})", PG_KEY + 1))?;
            }
            Taker::RawMy(conn) => {
                let _: Option<Option<i64>> =
                    conn.query_first(format!("SELECT RELEASE_LOCK('{HANDOFF_NAME}')"))?;
            }
        }
        Ok(())
    }
}

/// K blocking waiters queue on one key; the holder releases; each waiter, once it holds the
/// lock, measures the time since the previous release and releases in turn. The same runs
/// through the raw driver give the baseline: what the server and the machine cost.
fn handoff(scale: Scale) -> Result<Vec<Handoff>> {
    let mut results = Vec::new();
    let mut side_pg = pg()?;
    let mut side_my = my()?;
    for backend in ["postgres", "mysql"] {
        for (waiters, rounds) in [1, 8, 64].into_iter().zip(scale.handoff_rounds) {
            for raw in [false, true] {
                let mut samples = Vec::new();
                for _ in 0..rounds {
                    samples.extend(handoff_round(
                        backend,
                        raw,
                        waiters,
                        &mut side_pg,
                        &mut side_my,
                    )?);
                }
                eprintln!("bench: handoff {backend} K={waiters} raw={raw} done");
                results.push(Handoff {
                    backend,
                    path: if raw { "raw driver" } else { "dlock" },
                    waiters,
                    latency_us: Stats::new(samples),
                });
            }
        }
    }
    Ok(results)
}

fn handoff_round(
    backend: &'static str,
    raw: bool,
    waiters: usize,
    side_pg: &mut postgres::Client,
    side_my: &mut mysql::Conn,
) -> Result<Vec<f64>> {
    let clock = Arc::new(Clock {
        origin: Instant::now(),
        last_release: AtomicU64::new(0),
    });
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let ready = Arc::new(Barrier::new(waiters + 1));
    let mut holder = Taker::open(backend, raw)?;
    holder.acquire()?;
    let threads: Vec<_> = (0..waiters)
        .map(|_| {
            let (clock, latencies, ready) = (
                Arc::clone(&clock),
                Arc::clone(&latencies),
                Arc::clone(&ready),
            );
            thread::spawn(move || -> Result<()> {
                let mut taker = Taker::open(backend, raw)?;
                ready.wait();
                taker.acquire()?;
                let latency = clock.since_release();
                latencies.lock().expect("no panics").push(latency);
                clock.mark_release();
                taker.release()
            })
        })
        .collect();
    ready.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    while waiting(backend, side_pg, side_my)? < waiters {
        if Instant::now() > deadline {
            return Err("the waiters never all queued".into());
        }
        thread::sleep(Duration::from_millis(2));
    }
    clock.mark_release();
    holder.release()?;
    for thread in threads {
        thread.join().map_err(|_| "a waiter panicked")??;
    }
    let samples = latencies.lock().expect("no panics").clone();
    Ok(samples)
}

/// `acquire_timeout(100 ms)` on a held key: how late `Ok(false)` comes.
#[derive(Debug)]
struct Precision {
    path: &'static str,
    overshoot_ms: Stats,
}

const ASKED: Duration = Duration::from_millis(100);

fn overshoot(started: Instant, got: bool) -> Result<f64> {
    if got {
        return Err("acquire_timeout got a lock that is held elsewhere".into());
    }
    Ok((started.elapsed().as_secs_f64() - ASKED.as_secs_f64()) * 1_000.0)
}

fn precision(scale: Scale) -> Result<Vec<Precision>> {
    let mut results = Vec::new();
    let n = scale.timeout_samples;

    let mut pg_holder = PgLock::new(pg()?, PG_KEY + 2);
    pg_holder.acquire()?;
    let mut my_holder = MySqlLock::new(my()?, "dlock-bench/timeout");
    my_holder.acquire()?;

    let mut lock = PgLock::new(pg()?, PG_KEY + 2);
    let mut samples = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        samples.push(overshoot(started, lock.acquire_timeout(ASKED)?)?);
    }
    results.push(Precision {
        path: "PgLock",
        overshoot_ms: Stats::new(samples),
    });

    let mut lock = MySqlLock::new(my()?, "dlock-bench/timeout");
    let mut samples = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        samples.push(overshoot(started, lock.acquire_timeout(ASKED)?)?);
    }
    results.push(Precision {
        path: "MySqlLock",
        overshoot_ms: Stats::new(samples),
    });

    runtime()?.block_on(async {
        let mut lock = AsyncPgLock::new(pg_async().await?, PG_KEY + 2);
        let mut samples = Vec::new();
        for _ in 0..n {
            let started = Instant::now();
            samples.push(overshoot(started, lock.acquire_timeout(ASKED).await?)?);
        }
        results.push(Precision {
            path: "AsyncPgLock",
            overshoot_ms: Stats::new(samples),
        });
        let mut lock = AsyncMySqlLock::new(my_async().await?, "dlock-bench/timeout");
        let mut samples = Vec::new();
        for _ in 0..n {
            let started = Instant::now();
            samples.push(overshoot(started, lock.acquire_timeout(ASKED).await?)?);
        }
        results.push(Precision {
            path: "AsyncMySqlLock",
            overshoot_ms: Stats::new(samples),
        });
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    eprintln!("bench: timeout precision done");
    Ok(results)
}

/// One session holding many distinct keys.
#[derive(Debug)]
struct ManyKeys {
    backend: &'static str,
    keys: usize,
    per_lock_us: f64,
    limit: String,
}

fn many_keys(scale: Scale) -> Result<Vec<ManyKeys>> {
    let mut results = Vec::new();

    let mut client = pg()?;
    let started = Instant::now();
    for key in 0..scale.many_keys {
        let mut lock = PgLock::new(&mut client, 1_000_000 + i64::try_from(key)?);
        lock.acquire()?;
        // Keep the lock held without an object for it: the session holds every key at once,
        // and `pg_advisory_unlock_all` below releases them.
        std::mem::forget(lock);
    }
    let elapsed = started.elapsed();
    let setting = |client: &mut postgres::Client, name: &str| -> Result<i64> {
        let row = client.query_one(&format!("SELECT current_setting('{name}')::bigint"), &[])?;
        Ok(row.get(0))
    };
    let per_transaction = setting(&mut client, "max_locks_per_transaction")?;
    let connections = setting(&mut client, "max_connections")?;
    let prepared = setting(&mut client, "max_prepared_transactions")?;
    client.batch_execute("SELECT pg_advisory_unlock_all()")?;
    results.push(ManyKeys {
        backend: "postgres",
        keys: scale.many_keys,
        per_lock_us: micros(elapsed) / f64::from(u32::try_from(scale.many_keys)?),
        limit: format!(
            "shared lock table: max_locks_per_transaction x (max_connections + \
             max_prepared_transactions) = {per_transaction} x ({connections} + {prepared}) = {} \
             slots for all sessions together",
            per_transaction * (connections + prepared)
        ),
    });

    let mut conn = my()?;
    let started = Instant::now();
    for key in 0..scale.many_keys {
        let mut lock = MySqlLock::new(&mut conn, format!("dlock-bench/many/{key}"));
        lock.acquire()?;
        // As above: `RELEASE_ALL_LOCKS` releases them.
        std::mem::forget(lock);
    }
    let elapsed = started.elapsed();
    conn.query_drop("SELECT RELEASE_ALL_LOCKS()")?;
    results.push(ManyKeys {
        backend: "mysql",
        keys: scale.many_keys,
        per_lock_us: micros(elapsed) / f64::from(u32::try_from(scale.many_keys)?),
        limit: "no fixed table: named locks live in the server's metadata-lock memory".to_owned(),
    });
    eprintln!("bench: many keys done");
    Ok(results)
}

/// 256 tasks contending through one bb8 pool of 32 connections for 16 keys.
#[derive(Debug)]
struct Contention {
    backend: &'static str,
    per_second: f64,
    per_task: Stats,
}

const TASKS: usize = 256;
const POOL_SIZE: u32 = 32;
const KEYS: usize = 16;

async fn contend<M>(
    pool: AsyncLockPool<M>,
    duration: Duration,
    prefix: &str,
) -> Result<(f64, Stats)>
where
    M: bb8::ManageConnection,
    M::Connection: dlock_pool::AsyncConnection,
    M::Error: std::error::Error + Send + Sync + 'static,
{
    let pool = Arc::new(pool);
    let stop = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (pool, stop) = (Arc::clone(&pool), Arc::clone(&stop));
            let key = format!("{prefix}/{}", task % KEYS);
            tokio::spawn(async move {
                let mut count = 0_usize;
                while stop.load(Ordering::Relaxed) == 0 {
                    let guard = pool.acquire(key.as_str()).await?;
                    AsyncLockGuard::release(guard).await?;
                    count += 1;
                }
                Ok::<usize, dlock_pool::Error>(count)
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(1, Ordering::Relaxed);
    let mut counts = Vec::new();
    for task in tasks {
        counts.push(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let counts: Vec<f64> = counts.into_iter().map(|count| count as f64).collect();
    let total: f64 = counts.iter().sum();
    Ok((total / elapsed, Stats::new(counts)))
}

fn contention(scale: Scale) -> Result<Vec<Contention>> {
    let runtime = multi_thread_runtime()?;
    let results = runtime.block_on(async {
        let manager =
            bb8_postgres::PostgresConnectionManager::new(pg_url()?.parse()?, tokio_postgres::NoTls);
        let pool =
            AsyncLockPool::with_builder(bb8::Pool::builder().max_size(POOL_SIZE), manager).await?;
        let (pg_rate, pg_tasks) = contend(pool, scale.contention, "dlock-bench/contend").await?;
        let manager = AsyncMySqlManager::from_url(&mysql_url()?)?;
        let pool =
            AsyncLockPool::with_builder(bb8::Pool::builder().max_size(POOL_SIZE), manager).await?;
        let (my_rate, my_tasks) = contend(pool, scale.contention, "dlock-bench/contend").await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(vec![
            Contention {
                backend: "postgres",
                per_second: pg_rate,
                per_task: pg_tasks,
            },
            Contention {
                backend: "mysql",
                per_second: my_rate,
                per_task: my_tasks,
            },
        ])
    })?;
    eprintln!("bench: contention done");
    Ok(results)
}

/// Holding many locks at once through an `AsyncMultiplexedPool`, from 64 tasks.
#[derive(Debug)]
struct MultiplexedHold {
    backend: &'static str,
    locks: usize,
    sessions: usize,
    acquires_per_second: f64,
    releases_per_second: f64,
    /// How much the process's resident memory grew while the locks were held.
    memory_kib: i64,
    /// One watcher round over this many locks of one session: the statement the watcher
    /// sends, and the matching of its reply, from a connection of its own.
    watcher_round: Duration,
}

/// Try + release cycles per second: 64 tasks on the shared sessions of an
/// `AsyncMultiplexedPool`, beside one bare lock cycling on a connection of its own.
#[derive(Debug)]
struct MultiplexedCycles {
    backend: &'static str,
    shared_per_second: f64,
    sessions: usize,
    dedicated_per_second: f64,
}

const MULTIPLEXED_TASKS: usize = 64;

type BenchResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The multiplexed pool's figures on one backend, beside `dedicated`, a bare lock on a
/// connection of its own.
async fn multiplexed_on<M: dlock_pool::MultiplexedManager>(
    backend: &'static str,
    scale: Scale,
    pool: AsyncLockPool<M>,
    mut dedicated: impl AsyncLock,
    watcher_round: impl AsyncFn(usize) -> BenchResult<Duration>,
) -> BenchResult<(Vec<MultiplexedHold>, MultiplexedCycles)> {
    let locks = Arc::new(pool.multiplexed());
    let sizes: &[usize] = if scale.quick {
        &[100]
    } else {
        &[100, 1_000, 5_000]
    };
    let mut holds = Vec::new();
    for &size in sizes {
        let resident_before = resident_kib();
        let started = Instant::now();
        let tasks: Vec<_> = (0..MULTIPLEXED_TASKS)
            .map(|task| {
                let locks = Arc::clone(&locks);
                tokio::spawn(async move {
                    let mut held = Vec::new();
                    for key in (task..size).step_by(MULTIPLEXED_TASKS) {
                        let key = format!("dlock-bench/mux/{key}");
                        held.push(locks.try_acquire(key.as_str()).await?.ok_or("busy")?);
                    }
                    BenchResult::Ok(held)
                })
            })
            .collect();
        let mut held = Vec::new();
        for task in tasks {
            held.push(task.await??);
        }
        let acquires_per_second = per_second(size, started);
        let memory_kib = resident_kib() - resident_before;
        let sessions = locks.shared_sessions();
        let started = Instant::now();
        let tasks: Vec<_> = held
            .into_iter()
            .map(|guards| {
                tokio::spawn(async move {
                    for guard in guards {
                        AsyncMultiplexedGuard::release(guard).await?;
                    }
                    Ok::<_, dlock_pool::Error>(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        holds.push(MultiplexedHold {
            backend,
            locks: size,
            sessions,
            acquires_per_second,
            releases_per_second: per_second(size, started),
            memory_kib,
            watcher_round: watcher_round(size).await?,
        });
    }
    let duration = scale.contention;
    let stop = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..MULTIPLEXED_TASKS)
        .map(|task| {
            let (locks, stop) = (Arc::clone(&locks), Arc::clone(&stop));
            tokio::spawn(async move {
                let key = format!("dlock-bench/mux-cycle/{task}");
                let mut cycles = 0_usize;
                while stop.load(Ordering::Relaxed) == 0 {
                    let guard = locks.try_acquire(key.as_str()).await?.ok_or("busy")?;
                    AsyncMultiplexedGuard::release(guard).await?;
                    cycles += 1;
                }
                BenchResult::Ok(cycles)
            })
        })
        .collect();
    tokio::time::sleep(duration / 2).await;
    let sessions = locks.shared_sessions();
    tokio::time::sleep(duration / 2).await;
    stop.store(1, Ordering::Relaxed);
    let mut cycles = 0;
    for task in tasks {
        cycles += task.await??;
    }
    let shared_per_second = per_second(cycles, started);
    let started = Instant::now();
    let mut cycles = 0;
    while started.elapsed() < duration {
        dedicated.acquire().await?;
        dedicated.release().await?;
        cycles += 1;
    }
    let cycles = MultiplexedCycles {
        backend,
        shared_per_second,
        sessions,
        dedicated_per_second: per_second(cycles, started),
    };
    Ok((holds, cycles))
}

fn multiplexed(scale: Scale) -> Result<(Vec<MultiplexedHold>, Vec<MultiplexedCycles>)> {
    let runtime = multi_thread_runtime()?;
    let results = runtime.block_on(async {
        let manager =
            bb8_postgres::PostgresConnectionManager::new(pg_url()?.parse()?, tokio_postgres::NoTls);
        let pool = AsyncLockPool::new(manager).await?;
        let dedicated = AsyncPgLock::new(pg_async().await?, "dlock-bench/mux-dedicated");
        let (mut holds, pg_cycles) =
            multiplexed_on("postgres", scale, pool, dedicated, pg_watcher_round).await?;
        let pool = AsyncLockPool::new(AsyncMySqlManager::from_url(&mysql_url()?)?).await?;
        let dedicated = AsyncMySqlLock::new(my_async().await?, "dlock-bench/mux-dedicated");
        let (my_holds, my_cycles) =
            multiplexed_on("mysql", scale, pool, dedicated, my_watcher_round).await?;
        holds.extend(my_holds);
        BenchResult::Ok((holds, vec![pg_cycles, my_cycles]))
    })?;
    eprintln!("bench: multiplexed done");
    Ok(results)
}

/// The process's resident memory, in KiB (0 where /proc cannot tell).
fn resident_kib() -> i64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<i64>().ok());
    pages.map_or(0, |pages| pages * 4)
}

/// The median of five PostgreSQL watcher rounds over `size` locks held by one session.
async fn pg_watcher_round(size: usize) -> BenchResult<Duration> {
    use dlock_pool::dlock_postgres::tokio as pg_tokio;
    let (holder, observer) = (pg_async().await?, pg_async().await?);
    let session = pg_tokio::session(&holder).await?;
    let size_i32 = i32::try_from(size)?;
    holder
        .execute(
            "SELECT pg_advisory_lock(-7, n) FROM generate_series(1, $1) AS n",
            &[&size_i32],
        )
        .await?;
    let locks: Vec<_> = (1..=size_i32)
        .map(|n| (session, dlock_pool::PgKey::Pair(-7, n)))
        .collect();
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let held = pg_tokio::still_held(&observer, &locks).await?;
        rounds.push(started.elapsed());
        if held.iter().any(|held| !held) {
            return Err("the watcher's statement missed a held lock".into());
        }
    }
    rounds.sort();
    Ok(rounds[2])
}

/// As [`pg_watcher_round`], on MySQL or MariaDB.
async fn my_watcher_round(size: usize) -> BenchResult<Duration> {
    let (mut holder, mut observer) = (my_async().await?, my_async().await?);
    let session = dlock_pool::dlock_mysql::tokio::session(&mut holder).await?;
    let names: Vec<String> = (0..size)
        .map(|n| format!("dlock-bench/round/{n}"))
        .collect();
    for chunk in names.chunks(500) {
        let takes: Vec<String> = chunk
            .iter()
            .map(|name| format!("GET_LOCK('{name}', 0)"))
            .collect();
        holder
            .query_drop(format!("SELECT {}", takes.join(", ")))
            .await?;
    }
    let locks: Vec<_> = names.into_iter().map(|name| (session, name)).collect();
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let held = dlock_pool::dlock_mysql::tokio::still_held(&mut observer, &locks).await?;
        rounds.push(started.elapsed());
        if held.iter().any(|held| !held) {
            return Err("the watcher's statement missed a held lock".into());
        }
    }
    rounds.sort();
    Ok(rounds[2])
}

fn server_versions() -> Result<(String, String)> {
    let pg_version: String = pg()?.query_one("SHOW server_version", &[])?.get(0);
    let my_version: String = my()?.query_first("SELECT VERSION()")?.unwrap_or_default();
    Ok((pg_version, my_version))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|name| name.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|kb| kb.trim().trim_end_matches(" kB").parse::<u64>().ok())
        })
        .map_or_else(String::new, |kb| format!(", {} GiB", kb / 1024 / 1024));
    format!("{cpu}, {cores} cores{memory}")
}

/// The UTC date and time, from the system clock, to the second (RFC 3339).
fn now_utc() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Everything measured, for the tables and the JSON file.
struct Report {
    scale: Scale,
    machine: String,
    date: String,
    profile: &'static str,
    postgres_version: String,
    mysql_version: String,
    throughput: Vec<Throughput>,
    round_trips: [(&'static str, Stats); 2],
    handoff: Vec<Handoff>,
    precision: Vec<Precision>,
    many_keys: Vec<ManyKeys>,
    contention: Vec<Contention>,
    multiplexed: (Vec<MultiplexedHold>, Vec<MultiplexedCycles>),
}

fn wide(stats: &Stats) -> &'static str {
    if stats.spread() > 0.25 {
        " (wide spread)"
    } else {
        ""
    }
}

impl Report {
    fn rtt(&self, backend: &str) -> f64 {
        self.round_trips
            .iter()
            .find(|(name, _)| *name == backend)
            .map_or(f64::NAN, |(_, stats)| stats.median())
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# dlock bench\n\n{} | {} build | PostgreSQL {} | MariaDB/MySQL {} | {}{}\n",
            self.machine,
            self.profile,
            self.postgres_version,
            self.mysql_version,
            self.date,
            if self.scale.quick {
                " | --quick: too few samples to quote"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "## Uncontended lock + release cycles per second (medians of {} back-to-back pairs of {} cycles; ratio: median of the pairs' ratios)\n",
            self.scale.repeats, self.scale.cycles
        );
        let _ = writeln!(
            out,
            "| path | dlock | floor | floor is | ratio | ratio p10-p90 | target 0.95 |"
        );
        let _ = writeln!(out, "|---|---:|---:|---|---:|---|---|");
        for t in &self.throughput {
            let _ = writeln!(
                out,
                "| {} | {:.0}{} | {:.0}{} | {} | {:.2} | {:.2}-{:.2} | {} |",
                t.path,
                t.dlock.median(),
                wide(&t.dlock),
                t.raw.median(),
                wide(&t.raw),
                t.floor,
                t.ratio(),
                t.ratios.quantile(0.1),
                t.ratios.quantile(0.9),
                if t.ratio() >= 0.95 { "met" } else { "missed" }
            );
        }
        let _ = writeln!(
            out,
            "\n## Handoff latency: K waiters on one key, release to next holder (µs)\n"
        );
        let _ = writeln!(
            out,
            "| backend | K | through | samples | p50 | p99 | loopback RTT (SELECT 1, p50) | p50 in RTTs | target p50 <= 2 RTT |"
        );
        let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|---|");
        for h in &self.handoff {
            let rtt = self.rtt(h.backend);
            let in_rtts = h.latency_us.median() / rtt;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {} |",
                h.backend,
                h.waiters,
                h.path,
                h.latency_us.0.len(),
                h.latency_us.median(),
                h.latency_us.quantile(0.99),
                rtt,
                in_rtts,
                if in_rtts <= 2.0 { "met" } else { "missed" }
            );
        }
        let _ = writeln!(
            out,
            "\n## Timeout precision: acquire_timeout(100 ms) on a held key, overshoot (ms)\n"
        );
        let _ = writeln!(out, "| path | samples | p50 | p99 | target p99 <= 50 ms |");
        let _ = writeln!(out, "|---|---:|---:|---:|---|");
        for p in &self.precision {
            let p99 = p.overshoot_ms.quantile(0.99);
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {:.1} | {} |",
                p.path,
                p.overshoot_ms.0.len(),
                p.overshoot_ms.median(),
                p99,
                if p99 <= 50.0 { "met" } else { "missed" }
            );
        }
        let _ = writeln!(out, "\n## Scale: one session holding many keys\n");
        let _ = writeln!(
            out,
            "| backend | keys held | µs per lock | lock table limit |"
        );
        let _ = writeln!(out, "|---|---:|---:|---|");
        for m in &self.many_keys {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} |",
                m.backend, m.keys, m.per_lock_us, m.limit
            );
        }
        let _ = writeln!(
            out,
            "\n## Scale: {TASKS} tasks, one bb8 pool of {POOL_SIZE} connections, {KEYS} keys, {:.1} s\n",
            self.scale.contention.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "| backend | acquisitions/s | per task min | median | max | spread (max-min)/median |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for c in &self.contention {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
                c.backend,
                c.per_second,
                c.per_task.quantile(0.0),
                c.per_task.median(),
                c.per_task.quantile(1.0),
                c.per_task.spread()
            );
        }
        let (holds, cycles) = &self.multiplexed;
        let _ = writeln!(
            out,
            "\n## Many locks, few connections: AsyncMultiplexedPool, {MULTIPLEXED_TASKS} tasks\n"
        );
        let _ = writeln!(
            out,
            "| backend | locks held at once | sessions used | acquires/s | releases/s | memory held | watcher round |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for hold in holds {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.0} | {} KiB | {:.2} ms |",
                hold.backend,
                hold.locks,
                hold.sessions,
                hold.acquires_per_second,
                hold.releases_per_second,
                hold.memory_kib,
                hold.watcher_round.as_secs_f64() * 1000.0
            );
        }
        let _ = writeln!(
            out,
            "\n| backend | try + release cycles/s, shared | sessions | one dedicated connection | ratio | target 5x (PostgreSQL) |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---|");
        for cycle in cycles {
            let ratio = cycle.shared_per_second / cycle.dedicated_per_second;
            let verdict = match (cycle.backend, ratio >= 5.0) {
                ("postgres", true) => "met",
                ("postgres", false) => "missed",
                _ => "none",
            };
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {:.0} | {:.1} | {verdict} |",
                cycle.backend,
                cycle.shared_per_second,
                cycle.sessions,
                cycle.dedicated_per_second,
                ratio
            );
        }
        out
    }

    fn json(&self) -> String {
        fn stats(s: &Stats) -> Value {
            json!({
                "samples": s.0.len(),
                "p50": number(s.median()),
                "p99": number(s.quantile(0.99)),
                "min": number(s.quantile(0.0)),
                "max": number(s.quantile(1.0)),
                "spread": number(s.spread()),
            })
        }
        // Three decimals are all the precision a measurement here has; NaN is null.
        fn number(value: f64) -> Value {
            if value.is_finite() {
                json!((value * 1000.0).round() / 1000.0)
            } else {
                Value::Null
            }
        }
        let report = json!({
            "machine": self.machine,
            "date": self.date,
            "profile": self.profile,
            "quick": self.scale.quick,
            "servers": {"postgres": self.postgres_version, "mysql": self.mysql_version},
            "throughput": self.throughput.iter().map(|t| json!({
                "path": t.path,
                "floor": t.floor,
                "dlock_per_second": stats(&t.dlock),
                "floor_per_second": stats(&t.raw),
                "ratio": number(t.ratio()),
                "ratios": stats(&t.ratios),
            })).collect::<Vec<_>>(),
            "round_trips": self.round_trips.iter().map(|(backend, s)| json!({
                "backend": backend,
                "rtt_us": stats(s),
            })).collect::<Vec<_>>(),
            "handoff": self.handoff.iter().map(|h| json!({
                "backend": h.backend,
                "path": h.path,
                "waiters": h.waiters,
                "latency_us": stats(&h.latency_us),
                "p50_in_round_trips": number(h.latency_us.median() / self.rtt(h.backend)),
            })).collect::<Vec<_>>(),
            "timeout_precision": self.precision.iter().map(|p| json!({
                "path": p.path,
                "asked_ms": 100,
                "overshoot_ms": stats(&p.overshoot_ms),
            })).collect::<Vec<_>>(),
            "many_keys": self.many_keys.iter().map(|m| json!({
                "backend": m.backend,
                "keys": m.keys,
                "per_lock_us": number(m.per_lock_us),
                "limit": m.limit,
            })).collect::<Vec<_>>(),
            "multiplexed": {
                "holds": self.multiplexed.0.iter().map(|h| json!({
                    "backend": h.backend,
                    "locks": h.locks,
                    "sessions": h.sessions,
                    "acquires_per_second": number(h.acquires_per_second),
                    "releases_per_second": number(h.releases_per_second),
                    "memory_kib": h.memory_kib,
                    "watcher_round_ms": number(h.watcher_round.as_secs_f64() * 1000.0),
                })).collect::<Vec<_>>(),
                "cycles": self.multiplexed.1.iter().map(|c| json!({
                    "backend": c.backend,
                    "shared_per_second": number(c.shared_per_second),
                    "sessions": c.sessions,
                    "dedicated_per_second": number(c.dedicated_per_second),
                })).collect::<Vec<_>>(),
            },
            "contention": self.contention.iter().map(|c| json!({
                "backend": c.backend,
                "tasks": TASKS,
                "pool_size": POOL_SIZE,
                "keys": KEYS,
                "per_second": number(c.per_second),
                "acquisitions_per_task": stats(&c.per_task),
            })).collect::<Vec<_>>(),
        });
        let mut out = serde_json::to_string_pretty(&report).unwrap_or_default();
        out.push('\n');
        out
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut quick = false;
    let mut json_path = None;
    let mut only: Option<&'static str> = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => json_path = Some(args.next().ok_or("--json needs a path")?.clone()),
            // The filter lives as long as the process: leaking it keeps `Scale` `Copy`.
            "--only" => {
                only = Some(String::leak(
                    args.next().ok_or("--only needs a path's text")?.clone(),
                ));
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: bench [--quick] [--json PATH] [--only TEXT]"
                )
                .into());
            }
        }
    }
    let scale = Scale::new(quick, only);
    let (postgres_version, mysql_version) = server_versions()?;
    let mut throughput = throughput(scale)?;
    throughput.extend(pooled_beside_bare(scale)?);
    if only.is_some() {
        // A filtered run is for looking at a few paths: their rows, nothing else.
        for t in throughput.iter().filter(|t| scale.wants(t.path)) {
            println!(
                "| {} | {:.0} | {:.0} | {} | {:.2} | {:.2}-{:.2} |",
                t.path,
                t.dlock.median(),
                t.raw.median(),
                t.floor,
                t.ratio(),
                t.ratios.quantile(0.1),
                t.ratios.quantile(0.9)
            );
        }
        return Ok(());
    }
    let report = Report {
        scale,
        machine: machine(),
        date: now_utc(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        postgres_version,
        mysql_version,
        throughput,
        round_trips: round_trips(scale)?,
        handoff: handoff(scale)?,
        precision: precision(scale)?,
        many_keys: many_keys(scale)?,
        contention: contention(scale)?,
        multiplexed: multiplexed(scale)?,
    };
    print!("{}", report.markdown());
    if let Some(path) = json_path {
        std::fs::write(&path, report.json())?;
        eprintln!("bench: wrote {path}");
    }
    Ok(())
}
