//! The nemesis run of `cargo xtask nemesis`: worker processes increment one counter in the
//! database under a dlock lock, while a nemesis kills holders' sessions in their critical
//! sections, freezes holder processes (SIGSTOP) past the loss of their lock and thaws them,
//! and crashes the server once (PostgreSQL's immediate shutdown, SIGKILL of MariaDB), with
//! the lock sessions committing asynchronously where the server allows it per session
//! (PostgreSQL's `synchronous_commit = off`). Every few critical sections a holder's own
//! session is reset under it (`pg_advisory_unlock_all()`, `RELEASE_ALL_LOCKS()`), as a
//! pooler's reset does, and the holder goes on as if it still held the lock. Each backend
//! runs twice: with fencing (every read and write of the counter carries the holder's token,
//! as the README shows) and without.
//!
//! Started without arguments it coordinates and prints the table; `worker BACKEND FENCED
//! MILLIS` is one worker process. With fencing, a lost update fails the run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dlock_pool::dlock_mysql::{MySqlLock, install_fencing as my_install_fencing};
use dlock_pool::dlock_postgres::{PgLock, install_fencing as pg_install_fencing};
use dlock_pool::{KeyPolicy, Lock, PgKey};
use mysql::prelude::Queryable;

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

const KEY: &str = "dlock-nemesis/counter";
const WORKERS: usize = 4;
/// How long a holder stays in its critical section, between reading and writing the counter:
/// the window the nemesis aims at.
const CRITICAL_SECTION: Duration = Duration::from_millis(20);
/// Every this many critical sections, a worker resets its lock's session in the middle of one.
const RESET_EVERY: u64 = 5;

fn pg_url() -> Result<String> {
    Ok(std::env::var("DLOCK_PG_URL")?)
}

fn mysql_url() -> Result<String> {
    Ok(std::env::var("DLOCK_MYSQL_URL")?)
}

fn pg() -> Result<postgres::Client> {
    Ok(postgres::Client::connect(&pg_url()?, postgres::NoTls)?)
}

fn my() -> Result<mysql::Conn> {
    Ok(mysql::Conn::new(mysql::Opts::from_url(&mysql_url()?)?)?)
}

/// One worker's count.
#[derive(Debug, Default, Clone)]
struct Counts {
    /// The fencing tokens this worker's lock was granted with.
    tokens: Vec<u64>,
    /// Critical sections that went on to touch the counter.
    attempted: u64,
    /// Writes the counter took.
    accepted: u64,
    /// Reads or writes the counter refused because a newer token had touched it.
    refused: u64,
    /// Critical sections whose lock session was reset under them.
    resets: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("worker") => worker(&args[1..]),
        _ => coordinate(args.iter().any(|arg| arg == "--quick")),
    };
    if let Err(error) = outcome {
        eprintln!("nemesis: {error}");
        std::process::exit(1);
    }
}

/// The counter's table, reset, and the table of which process holds which session.
fn prepare(backend: &str) -> Result<()> {
    if backend == "postgres" {
        let mut client = pg()?;
        pg_install_fencing(&mut client)?;
        client.batch_execute(
            "CREATE TABLE IF NOT EXISTS nemesis_counter (id int PRIMARY KEY, value bigint NOT NULL, \
             fence bigint NOT NULL); \
             CREATE TABLE IF NOT EXISTS nemesis_sessions (session bigint PRIMARY KEY, os_pid int NOT NULL); \
             DELETE FROM nemesis_counter; INSERT INTO nemesis_counter VALUES (1, 0, 0); \
             DELETE FROM nemesis_sessions",
        )?;
    } else {
        let mut conn = my()?;
        my_install_fencing(&mut conn)?;
        conn.query_drop(
            "CREATE TABLE IF NOT EXISTS nemesis_counter (id int PRIMARY KEY, value bigint NOT NULL, \
             fence bigint NOT NULL) ENGINE = InnoDB",
        )?;
        conn.query_drop(
            "CREATE TABLE IF NOT EXISTS nemesis_sessions (session bigint PRIMARY KEY, os_pid int NOT NULL) \
             ENGINE = InnoDB",
        )?;
        conn.query_drop("DELETE FROM nemesis_counter")?;
        conn.query_drop("INSERT INTO nemesis_counter VALUES (1, 0, 0)")?;
        conn.query_drop("DELETE FROM nemesis_sessions")?;
    }
    Ok(())
}

/// The counter's value now.
fn counter(backend: &str) -> Result<i64> {
    if backend == "postgres" {
        Ok(pg()?
            .query_one("SELECT value FROM nemesis_counter WHERE id = 1", &[])?
            .get(0))
    } else {
        Ok(my()?
            .query_first("SELECT value FROM nemesis_counter WHERE id = 1")?
            .ok_or("no counter row")?)
    }
}

/// The lock's holder: its session, and the worker process that owns that session.
fn holder(backend: &str) -> Result<Option<(i64, u32)>> {
    let os_pid = |session: i64| -> Result<Option<u32>> {
        let found: Option<i32> = if backend == "postgres" {
            pg()?
                .query_opt(
                    "SELECT os_pid FROM nemesis_sessions WHERE session = $1",
                    &[&session],
                )?
                .map(|row| row.get(0))
        } else {
            my()?.exec_first(
                "SELECT os_pid FROM nemesis_sessions WHERE session = ?",
                (session,),
            )?
        };
        Ok(found.and_then(|pid| u32::try_from(pid).ok()))
    };
    let session: Option<i64> = if backend == "postgres" {
        let PgKey::BigInt(key) = KeyPolicy::default().pg_key(&KEY.into())? else {
            return Err("a text key is one bigint".into());
        };
        pg()?
            .query_opt(
                "SELECT pid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $1",
                &[&key],
            )?
            .map(|row| row.get(0))
    } else {
        my()?
            .exec_first("SELECT IS_USED_LOCK(?)", (KEY,))?
            .flatten()
    };
    match session {
        Some(session) => Ok(os_pid(session)?.map(|pid| (session, pid))),
        None => Ok(None),
    }
}

/// Ends a session from the side, as an operator or a failover does.
fn kill_session(backend: &str, session: i64) -> Result<()> {
    if backend == "postgres" {
        let pid = i32::try_from(session)?;
        pg()?.execute("SELECT pg_terminate_backend($1, 10000)", &[&pid])?;
    } else {
        my()?.query_drop(format!("KILL {session}"))?;
    }
    Ok(())
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Crashes the server and starts it again: nothing is flushed that was not already.
fn crash(backend: &str) {
    if backend == "postgres" {
        dlock_testkit::faults::crash_postgres();
    } else {
        dlock_testkit::faults::crash_mariadb();
    }
}

/// What the nemesis did in one run.
#[derive(Debug, Default)]
struct Faults {
    killed: u32,
    frozen: u32,
    crashes: u32,
}

/// Runs the workers for `run` and hits them until they are done.
fn nemesis(backend: &str, fenced: bool, run: Duration) -> Result<(Counts, Faults)> {
    let me = std::env::current_exe()?;
    let millis = run.as_millis().to_string();
    let mut workers: Vec<Child> = (0..WORKERS)
        .map(|_| {
            Command::new(&me)
                .args([
                    "worker",
                    backend,
                    if fenced { "fenced" } else { "plain" },
                    &millis,
                ])
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let mut faults = Faults::default();
    let mut round = 0_u32;
    while started.elapsed() < run {
        std::thread::sleep(Duration::from_millis(150));
        round += 1;
        // Halfway through, the server crashes once; otherwise the nemesis kills or freezes
        // whoever holds the lock, in turn.
        if faults.crashes == 0 && started.elapsed() >= run / 2 {
            crash(backend);
            faults.crashes += 1;
            continue;
        }
        let Ok(Some((session, pid))) = holder(backend) else {
            continue;
        };
        if round % 2 == 0 {
            let _ = kill_session(backend, session);
            faults.killed += 1;
        } else {
            // Frozen past the loss of its lock: another worker takes it meanwhile, and the
            // frozen one wakes up in its critical section.
            signal(pid, "-STOP");
            let _ = kill_session(backend, session);
            std::thread::sleep(Duration::from_millis(200));
            signal(pid, "-CONT");
            faults.frozen += 1;
        }
    }
    let mut total = Counts::default();
    for worker in workers.drain(..) {
        let output = worker.wait_with_output()?;
        if !output.status.success() {
            return Err(format!("a worker failed: {}", output.status).into());
        }
        let text = String::from_utf8(output.stdout)?;
        let mut lines = text.lines();
        let numbers: Vec<u64> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let [attempted, accepted, refused, resets] = numbers[..] else {
            return Err(format!("a worker printed {text:?}").into());
        };
        total.attempted += attempted;
        total.accepted += accepted;
        total.refused += refused;
        total.resets += resets;
        for token in lines.next().unwrap_or_default().split_whitespace() {
            total.tokens.push(token.parse()?);
        }
    }
    Ok((total, faults))
}

fn coordinate(quick: bool) -> Result<()> {
    let run = if quick {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(12)
    };
    println!("# dlock nemesis\n");
    println!(
        "{WORKERS} processes increment one counter under one lock for {} s per row, each critical \
         section {} ms long, while the nemesis kills the holder's session, freezes the holder \
         past the loss of its lock (SIGSTOP, 200 ms, SIGCONT), and crashes the server once \
         (lock sessions on PostgreSQL commit asynchronously); every {RESET_EVERY}th critical \
         section a worker resets its own lock session and goes on as if it held the lock.\n",
        run.as_secs(),
        CRITICAL_SECTION.as_millis()
    );
    println!(
        "| backend | fencing | sessions killed | holders frozen | sessions reset | crashes | \
         writes attempted | accepted | stale refused | lost updates | counter / accepted |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut failures = Vec::new();
    for backend in ["postgres", "mysql"] {
        for fenced in [true, false] {
            prepare(backend)?;
            let (counts, faults) = nemesis(backend, fenced, run)?;
            let value = counter(backend)?;
            let accepted = i64::try_from(counts.accepted)?;
            let lost = accepted - value;
            println!(
                "| {backend} | {} | {} | {} | {} | {} | {} | {} | {} | {lost} | {value} / {accepted} |",
                if fenced { "on" } else { "off" },
                faults.killed,
                faults.frozen,
                counts.resets,
                faults.crashes,
                counts.attempted,
                counts.accepted,
                counts.refused,
            );
            // A write whose reply a crash cut off may have committed unseen: the counter
            // can only run ahead of the accepted writes then, never behind.
            if fenced && lost > 0 {
                failures.push(format!("{backend} with fencing lost {lost} updates"));
            }
            if fenced && counts.accepted == 0 {
                failures.push(format!("{backend} with fencing accepted no write"));
            }
            // Every grant of the key, in every process and across the crash, got a token
            // of its own.
            let mut tokens = counts.tokens.clone();
            tokens.sort_unstable();
            let granted = tokens.len();
            tokens.dedup();
            if fenced && tokens.len() != granted {
                failures.push(format!(
                    "{backend}: {} of {granted} fencing tokens were handed out twice",
                    granted - tokens.len()
                ));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}

/// One worker process: takes the lock, reads the counter, waits out its critical section,
/// writes the counter plus one, releases; again until `MILLIS` have passed. Prints its counts.
fn worker(args: &[String]) -> Result<()> {
    let [backend, fenced, millis] = args else {
        return Err("usage: nemesis worker BACKEND fenced|plain MILLIS".into());
    };
    let fenced = fenced == "fenced";
    let deadline = Instant::now() + Duration::from_millis(millis.parse()?);
    let mut counts = Counts::default();
    while Instant::now() < deadline {
        let cycle = if backend == "postgres" {
            pg_cycle(fenced, deadline, &mut counts)
        } else {
            my_cycle(fenced, deadline, &mut counts)
        };
        if cycle.is_err() {
            // A killed session or a restarting server: connect again.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    println!(
        "{} {} {} {}",
        counts.attempted, counts.accepted, counts.refused, counts.resets
    );
    let tokens: Vec<String> = counts.tokens.iter().map(u64::to_string).collect();
    println!("{}", tokens.join(" "));
    Ok(())
}

fn os_pid() -> i32 {
    i32::try_from(std::process::id()).unwrap_or(i32::MAX)
}

/// Lock cycles on one pair of connections until `deadline`, or until one fails.
fn pg_cycle(fenced: bool, deadline: Instant, counts: &mut Counts) -> Result<()> {
    let mut resource = pg()?;
    // The lock's session commits asynchronously: its tokens must survive the crash all the
    // same. The counter's session commits as the server's default has it, durably.
    let mut session = pg()?;
    session.batch_execute("SET synchronous_commit = off")?;
    let lock = PgLock::new(session, KEY);
    let mut lock = if fenced { lock.fenced() } else { lock };
    let session: i32 = lock
        .client()
        .query_one("SELECT pg_backend_pid()", &[])?
        .get(0);
    resource.execute(
        "INSERT INTO nemesis_sessions VALUES ($1, $2) ON CONFLICT (session) \
         DO UPDATE SET os_pid = EXCLUDED.os_pid",
        &[&i64::from(session), &os_pid()],
    )?;
    while Instant::now() < deadline {
        if !lock.acquire_timeout(Duration::from_secs(1))? {
            continue;
        }
        counts.attempted += 1;
        counts.tokens.extend(lock.fencing_token());
        let token = lock.fencing_token().map(i64::try_from).transpose()?;
        // With a token, the read registers it first: a write by an older holder is refused
        // from then on, even one that read before this holder did.
        let read = match token {
            Some(token) => resource.query_opt(
                "UPDATE nemesis_counter SET fence = $1 WHERE id = 1 AND fence <= $1 RETURNING value",
                &[&token],
            )?,
            None => resource.query_opt("SELECT value FROM nemesis_counter WHERE id = 1", &[])?,
        };
        let Some(row) = read else {
            counts.refused += 1;
            let _ = lock.release();
            continue;
        };
        let value: i64 = row.get(0);
        let reset = counts.attempted % RESET_EVERY == 0;
        if reset {
            lock.client()
                .batch_execute("SELECT pg_advisory_unlock_all()")?;
            counts.resets += 1;
        }
        std::thread::sleep(CRITICAL_SECTION);
        let written = match token {
            Some(token) => resource.execute(
                "UPDATE nemesis_counter SET value = $1 WHERE id = 1 AND fence <= $2",
                &[&(value + 1), &token],
            )?,
            None => resource.execute(
                "UPDATE nemesis_counter SET value = $1 WHERE id = 1",
                &[&(value + 1)],
            )?,
        };
        if written == 1 {
            counts.accepted += 1;
        } else {
            counts.refused += 1;
        }
        if reset {
            // The release finds the lock gone; the worker starts again on new sessions.
            let _ = lock.release();
            return Err("the lock's session was reset".into());
        }
        lock.release()?;
    }
    Ok(())
}

/// Lock cycles on one pair of connections until `deadline`, or until one fails.
fn my_cycle(fenced: bool, deadline: Instant, counts: &mut Counts) -> Result<()> {
    let mut resource = my()?;
    let lock = MySqlLock::new(my()?, KEY);
    let mut lock = if fenced { lock.fenced() } else { lock };
    let session: Option<i64> = lock.conn().query_first("SELECT CONNECTION_ID()")?;
    resource.exec_drop(
        "INSERT INTO nemesis_sessions VALUES (?, ?) ON DUPLICATE KEY UPDATE os_pid = VALUES(os_pid)",
        (session, os_pid()),
    )?;
    while Instant::now() < deadline {
        if !lock.acquire_timeout(Duration::from_secs(1))? {
            continue;
        }
        counts.attempted += 1;
        counts.tokens.extend(lock.fencing_token());
        let token = lock.fencing_token();
        if let Some(token) = token {
            // The read registers the token first, as on PostgreSQL.
            resource.exec_drop(
                "UPDATE nemesis_counter SET fence = ? WHERE id = 1 AND fence <= ?",
                (token, token),
            )?;
            if resource.affected_rows() != 1 {
                counts.refused += 1;
                let _ = lock.release();
                continue;
            }
        }
        let value: i64 = resource
            .query_first("SELECT value FROM nemesis_counter WHERE id = 1")?
            .ok_or("no counter row")?;
        let reset = counts.attempted % RESET_EVERY == 0;
        if reset {
            lock.conn().query_drop("SELECT RELEASE_ALL_LOCKS()")?;
            counts.resets += 1;
        }
        std::thread::sleep(CRITICAL_SECTION);
        // MySQL counts a row changed to its own value as not affected: without a token, a
        // stale holder's write of the value already there is taken all the same.
        let accepted = match token {
            Some(token) => {
                resource.exec_drop(
                    "UPDATE nemesis_counter SET value = ? WHERE id = 1 AND fence <= ?",
                    (value + 1, token),
                )?;
                resource.affected_rows() == 1
            }
            None => {
                resource.exec_drop(
                    "UPDATE nemesis_counter SET value = ? WHERE id = 1",
                    (value + 1,),
                )?;
                true
            }
        };
        if accepted {
            counts.accepted += 1;
        } else {
            counts.refused += 1;
        }
        if reset {
            let _ = lock.release();
            return Err("the lock's session was reset".into());
        }
        lock.release()?;
    }
    Ok(())
}
