//! `dlock`: flock(1) for a cluster. `dlock run KEY -- CMD` takes a lock in the PostgreSQL or
//! MySQL/MariaDB server a URL names, runs the command while it holds it, and releases it once
//! the command has exited. See the crate's README for every option and exit code.

mod sys;

use std::ffi::OsString;
use std::process::ExitStatus;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dlock_pool::{AnyHolder, AsyncAnyLockGuard, AsyncAnyLockPool, Error, KeyPolicy, PgKey};
use tokio::signal::unix::{SignalKind, signal};

/// The lock was held elsewhere (`-n`), or the wait ran out (`-w`): the default of `-E`.
const EXIT_CONFLICT: u8 = 1;
/// The usage was wrong: an unknown option, a missing URL or command, a URL dlock cannot read.
const EXIT_USAGE: i32 = 64;
/// The database could not be reached, or cannot hold a lock that excludes.
const EXIT_UNAVAILABLE: i32 = 69;
/// The lock was lost while the command ran: the command was stopped.
const EXIT_LOST: i32 = 75;
/// The command was found but could not be run.
const EXIT_CANNOT_EXECUTE: i32 = 126;
/// The command was not found.
const EXIT_NOT_FOUND: i32 = 127;

const EXAMPLES: &str = "\
Examples:
  # A nightly job that runs on one host of the cluster at a time; the others skip it:
  DATABASE_URL=postgres://app@db/app dlock run -n nightly-report -- ./report.sh

  # Wait at most 30 seconds for a migration lock, then give up with exit code 3:
  dlock run --url mysql://app:secret@db/app -w 30s -E 3 migrate -- ./migrate up

  # A shell string, with a fencing token for the resource it writes:
  dlock run --fence -c 'backup --fence \"$DLOCK_FENCE\"' backups

Exit codes: the command's own (128 + N when it died of signal N); 1, or -E's, when the lock
was busy or the wait ran out; 75 when the lock was lost while the command ran; 64 for a usage
error or what the backend cannot do (-s on MySQL); 69 when the database is unreachable or
cannot hold a lock that excludes; 126 when the command cannot be run; 127 when it is not
found.";

/// flock(1) for a cluster: locks held by the PostgreSQL or MySQL/MariaDB server you run.
#[derive(Debug, Parser)]
#[command(name = "dlock", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a command while holding a lock, and releases it once the command has exited.
    Run(Run),
    /// Shows who holds KEY, or every lock when no KEY is given: exit 0 when someone holds
    /// one, 1 when none is held.
    Holders {
        #[command(flatten)]
        database: Database,
        /// The key policy (see `dlock run --help`).
        #[arg(long, default_value = "default", value_parser = parse_policy)]
        policy: KeyPolicy,
        /// The lock's key, as `dlock run` takes it. Without it: every advisory lock of the
        /// PostgreSQL database, or every named lock of the MySQL server (MySQL needs its
        /// performance schema, MariaDB its metadata_lock_info plugin), each line led by the
        /// lock as the server names it.
        key: Option<String>,
    },
    /// Shows the PostgreSQL key and the MySQL name a key policy gives KEY.
    Key {
        /// The lock's key, as `dlock run` takes it.
        key: String,
        /// The key policy (see `dlock run --help`).
        #[arg(long, default_value = "default", value_parser = parse_policy)]
        policy: KeyPolicy,
    },
    /// Manages the table of fencing tokens.
    Fencing {
        #[command(subcommand)]
        action: Fencing,
    },
}

#[derive(Debug, Subcommand)]
enum Fencing {
    /// Creates the table of fencing tokens (`--fence` needs it), if it does not exist.
    Install(Database),
}

/// Where the lock lives.
#[derive(Debug, Args)]
struct Database {
    /// The database: postgres://, postgresql://, mysql:// or mariadb://. Default: $DLOCK_URL,
    /// then $DATABASE_URL.
    #[arg(long)]
    url: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = EXAMPLES)]
struct Run {
    #[command(flatten)]
    database: Database,
    /// Fails at once (exit 1, or -E's code) when another session holds the lock.
    #[arg(short = 'n', long = "nonblock", conflicts_with = "wait")]
    no_wait: bool,
    /// Waits at most this long for the lock (`500ms`, `30s`, `5m`; a bare number is seconds).
    #[arg(short = 'w', long = "wait", value_name = "DURATION", value_parser = parse_duration)]
    wait: Option<Duration>,
    /// The exit code when the lock is busy (-n) or the wait runs out (-w).
    #[arg(short = 'E', long = "conflict-exit-code", value_name = "N", default_value_t = EXIT_CONFLICT)]
    conflict_exit_code: u8,
    /// Takes the lock shared (PostgreSQL only): any number of `dlock run -s` of a key run
    /// together, while a run without -s waits for them all and keeps them all out.
    #[arg(short = 's', long)]
    shared: bool,
    /// Issues a fencing token with the lock, given to the command as $DLOCK_FENCE (create its
    /// table once with `dlock fencing install`).
    #[arg(long)]
    fence: bool,
    /// The signal the command gets when the lock is lost.
    #[arg(long, value_name = "SIGNAL", default_value = "TERM", value_parser = parse_signal)]
    kill_signal: i32,
    /// How long a command may take to exit after that signal, before it gets KILL.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    kill_after: Duration,
    /// How keys become server keys: default (sqlalchemy-dlock's), sqlx, sha1, dotnet,
    /// crc32-pair (Ruby's with_advisory_lock), hashed-mysql-name.
    #[arg(long, default_value = "default", value_parser = parse_policy)]
    policy: KeyPolicy,
    /// How often the lock is checked while the command runs (default 1s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    watch_interval: Option<Duration>,
    /// Runs this string with `sh -c` instead of a command after `--`.
    #[arg(
        short = 'c',
        long = "command",
        value_name = "STRING",
        conflicts_with = "argv"
    )]
    shell: Option<String>,
    /// The lock's key.
    key: String,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    argv: Vec<OsString>,
}

fn main() {
    let code = match Cli::try_parse() {
        Ok(cli) => run(cli),
        Err(error) => {
            let _ = error.print();
            if error.use_stderr() { EXIT_USAGE } else { 0 }
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Key { key, policy } => show_key(&key, &policy),
        Command::Fencing {
            action: Fencing::Install(database),
        } => on_runtime(async move {
            let pool = match connect(&database).await {
                Ok(pool) => pool,
                Err(code) => return code,
            };
            match pool.install_fencing().await {
                Ok(()) => {
                    eprintln!("dlock: the fencing table is in place");
                    0
                }
                Err(error) => fail(EXIT_UNAVAILABLE, &error),
            }
        }),
        Command::Run(args) => on_runtime(run_locked(args)),
        Command::Holders {
            database,
            policy,
            key,
        } => on_runtime(async move {
            let pool = match connect(&database).await {
                Ok(pool) => pool.policy(policy),
                Err(code) => return code,
            };
            let holders = match &key {
                Some(key) => pool.holders(key.as_str()).await,
                None => pool.every_holder().await,
            };
            match holders {
                Ok(holders) if holders.is_empty() => {
                    match key {
                        Some(key) => println!("{key} is free"),
                        None => println!("no lock is held"),
                    }
                    1
                }
                Ok(holders) => {
                    for holder in holders {
                        match key {
                            Some(_) => println!("{}", describe(&holder)),
                            None => println!("{}  {}", holder.lock, describe(&holder)),
                        }
                    }
                    0
                }
                Err(error @ (Error::InvalidKey { .. } | Error::Unsupported { .. })) => {
                    fail(EXIT_USAGE, &error)
                }
                Err(error) => fail(EXIT_UNAVAILABLE, &error),
            }
        }),
    }
}

/// Runs `work` on a runtime of one thread, the one that forks the child (see
/// [`sys::die_with_parent`]).
fn on_runtime(work: impl Future<Output = i32>) -> i32 {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(work),
        Err(error) => {
            eprintln!("dlock: cannot start: {error}");
            EXIT_UNAVAILABLE
        }
    }
}

/// Prints `error` with its causes, and gives `code`.
fn fail(code: i32, error: &dyn std::error::Error) -> i32 {
    let mut message = format!("dlock: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    eprintln!("{message}");
    code
}

/// The URL: `--url`, `DLOCK_URL` or `DATABASE_URL`.
fn url_of(database: &Database) -> Option<String> {
    database
        .url
        .clone()
        .or_else(|| std::env::var("DLOCK_URL").ok())
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .filter(|url| !url.is_empty())
}

/// A PostgreSQL URL with `application_name=dlock:<host>:<pid>` unless it names one, so that
/// the server's session list says which process holds a lock.
fn named(url: String) -> String {
    let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !postgres || url.contains("application_name=") {
        return url;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    let separator = if url.contains('?') { '&' } else { '?' };
    let name: String = format!("dlock:{host}:{}", std::process::id())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{url}{separator}application_name={name}")
}

/// The pool of the URL, or the exit code of why there is none.
async fn connect(database: &Database) -> Result<AsyncAnyLockPool, i32> {
    let Some(url) = url_of(database) else {
        eprintln!(
            "dlock: no database: pass --url, or set DLOCK_URL or DATABASE_URL (postgres://user@host/db or mysql://user:password@host/db)"
        );
        return Err(EXIT_USAGE);
    };
    match AsyncAnyLockPool::connect(&named(url)).await {
        Ok(pool) => Ok(pool),
        Err(error @ Error::InvalidUrl { .. }) => Err(fail(EXIT_USAGE, &error)),
        Err(error) => Err(fail(EXIT_UNAVAILABLE, &error)),
    }
}

async fn run_locked(args: Run) -> i32 {
    let program = match (&args.shell, args.argv.split_first()) {
        (Some(shell), _) => (
            OsString::from("sh"),
            vec![OsString::from("-c"), OsString::from(shell)],
        ),
        (None, Some((program, rest))) => (program.clone(), rest.to_vec()),
        (None, None) => {
            eprintln!(
                "dlock: no command: give one after `--` (dlock run KEY -- CMD ARGS...), or a shell string with -c"
            );
            return EXIT_USAGE;
        }
    };
    let mut pool = match connect(&args.database).await {
        Ok(pool) => pool.policy(args.policy.clone()),
        Err(code) => return code,
    };
    if args.fence {
        pool = pool.fenced();
    }
    if args.shared {
        pool = pool.shared();
    }
    if let Some(interval) = args.watch_interval {
        pool = pool.watch_interval(interval);
    }
    let acquired = if args.no_wait {
        pool.try_acquire(args.key.as_str()).await
    } else if let Some(wait) = args.wait {
        pool.acquire_timeout(args.key.as_str(), wait).await
    } else {
        pool.acquire(args.key.as_str()).await.map(Some)
    };
    let guard = match acquired {
        Ok(Some(guard)) => guard,
        Ok(None) => {
            match args.wait {
                Some(wait) => {
                    eprintln!("dlock: {} is still held elsewhere after {wait:?}", args.key)
                }
                None => eprintln!("dlock: {} is held elsewhere", args.key),
            }
            return i32::from(args.conflict_exit_code);
        }
        Err(error @ (Error::InvalidKey { .. } | Error::Unsupported { .. })) => {
            return fail(EXIT_USAGE, &error);
        }
        Err(error) => return fail(EXIT_UNAVAILABLE, &error),
    };
    let code = supervise(&args, program, &guard).await;
    match AsyncAnyLockGuard::release(guard).await {
        Ok(()) => code,
        // Found lost only now: the command may have done its last work without the lock.
        Err(error) if code != EXIT_LOST => fail(EXIT_LOST, &error),
        Err(_) => code,
    }
}

/// Runs the command while `guard` holds, forwarding signals and stopping it if the lock is
/// lost; its exit code, or [`EXIT_LOST`].
async fn supervise(
    args: &Run,
    (program, rest): (OsString, Vec<OsString>),
    guard: &AsyncAnyLockGuard,
) -> i32 {
    let mut command = tokio::process::Command::new(&program);
    command.args(&rest).env("DLOCK_KEY", &args.key);
    match AsyncAnyLockGuard::fencing_token(guard) {
        Some(token) => command.env("DLOCK_FENCE", token.to_string()),
        None => command.env_remove("DLOCK_FENCE"),
    };
    // With a terminal, the command stays in dlock's process group, so the terminal's ^C and
    // ^\ reach it directly; without one it gets a group of its own, which dlock signals whole.
    let own_group = !std::io::IsTerminal::is_terminal(&std::io::stdin());
    if own_group {
        command.process_group(0);
    }
    sys::die_with_parent(&mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let code = match error.kind() {
                std::io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_CANNOT_EXECUTE,
            };
            eprintln!("dlock: {}: {error}", program.to_string_lossy());
            return code;
        }
    };
    let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
        return EXIT_CANNOT_EXECUTE;
    };
    let target = if own_group { -pid } else { pid };
    let mut forwarded = Vec::new();
    for (kind, number, from_terminal) in [
        (SignalKind::interrupt(), libc::SIGINT, true),
        (SignalKind::terminate(), libc::SIGTERM, false),
        (SignalKind::hangup(), libc::SIGHUP, false),
        (SignalKind::quit(), libc::SIGQUIT, true),
        (SignalKind::user_defined1(), libc::SIGUSR1, false),
        (SignalKind::user_defined2(), libc::SIGUSR2, false),
    ] {
        if let Ok(stream) = signal(kind) {
            forwarded.push((stream, number, from_terminal));
        }
    }
    let lost = AsyncAnyLockGuard::lost(guard);
    tokio::pin!(lost);
    let mut lost_once = false;
    // When the command gets KILL, once the lock was lost and it outlived its grace.
    let mut kill_at: Option<tokio::time::Instant> = None;
    loop {
        let grace = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let received = futures_recv(&mut forwarded);
        tokio::select! {
            status = child.wait() => {
                let code = match status {
                    Ok(status) => exit_code(status),
                    Err(error) => {
                        eprintln!("dlock: lost track of the command: {error}");
                        EXIT_CANNOT_EXECUTE
                    }
                };
                return if lost_once { EXIT_LOST } else { code };
            }
            (number, from_terminal) = received => {
                // A terminal's signal reached a command in dlock's group already.
                if own_group || !from_terminal {
                    sys::kill(target, number);
                }
            }
            reason = &mut lost, if !lost_once => {
                eprintln!("dlock: lost the lock on {} ({reason}); stopping the command", args.key);
                sys::kill(target, args.kill_signal);
                lost_once = true;
                kill_at = Some(tokio::time::Instant::now() + args.kill_after);
            }
            () = grace => {
                eprintln!("dlock: the command outlived its grace of {:?}; killing it", args.kill_after);
                sys::kill(target, libc::SIGKILL);
                kill_at = None;
            }
        }
    }
}

/// The next signal any of `streams` receives: its number, and whether a terminal sends it.
async fn futures_recv(streams: &mut [(tokio::signal::unix::Signal, i32, bool)]) -> (i32, bool) {
    std::future::poll_fn(|cx| {
        for (stream, number, from_terminal) in streams.iter_mut() {
            if stream.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready((*number, *from_terminal));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The code `dlock` exits with for the command's `status`: its own, or 128 + its signal.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(EXIT_CANNOT_EXECUTE)
}

/// One line about a holding session.
fn describe(holder: &AnyHolder) -> String {
    let mut line = format!(
        "session {}{}",
        holder.session,
        if holder.shared { " (shared)" } else { "" }
    );
    if let Some(client) = &holder.client {
        line.push_str(&format!(" from {client}"));
    }
    if let Some(application) = &holder.application {
        line.push_str(&format!(" as {application}"));
    }
    if let Some(since) = &holder.since {
        line.push_str(&format!(" since {since}"));
    }
    if let Some(seconds) = holder.state_seconds {
        line.push_str(&format!(", {seconds} s in its current state"));
    }
    line
}

/// `dlock key`: what the server sees of `key` under `policy`.
fn show_key(key: &str, policy: &KeyPolicy) -> i32 {
    let key = dlock_pool::Key::from(key);
    match policy.pg_key(&key) {
        Ok(PgKey::BigInt(value)) => println!("postgres  pg_advisory_lock({value})"),
        Ok(PgKey::Pair(high, low)) => println!("postgres  pg_advisory_lock({high}, {low})"),
        Err(error) => println!("postgres  none: {error}"),
    }
    match policy.mysql_name(&key) {
        Ok(name) => println!("mysql     GET_LOCK('{}', ...)", name.replace('\'', "''")),
        Err(error) => println!("mysql     none: {error}"),
    }
    0
}

/// A duration as `500ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write 500ms, 30s, 5m or 1h"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("`{text}`: the unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

/// A signal as its name (`TERM`, `SIGTERM`, any case) or number.
fn parse_signal(text: &str) -> Result<i32, String> {
    if let Ok(number) = text.parse::<i32>() {
        return if (1..=64).contains(&number) {
            Ok(number)
        } else {
            Err(format!("{number} is not a signal number"))
        };
    }
    let name = text.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Ok(match name {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        _ => {
            return Err(format!(
                "`{text}`: use TERM, INT, HUP, QUIT, KILL, USR1, USR2 or a number"
            ));
        }
    })
}

/// A key policy by its name.
fn parse_policy(text: &str) -> Result<KeyPolicy, String> {
    Ok(match text {
        "default" | "blake2b" | "sqlalchemy" => KeyPolicy::Blake2b,
        "sqlx" => KeyPolicy::Sqlx,
        "sha1" => KeyPolicy::Sha1,
        "dotnet" => KeyPolicy::DotNet,
        "crc32-pair" | "ruby" => KeyPolicy::Crc32Pair,
        "hashed-mysql-name" => KeyPolicy::HashedMySqlName,
        _ => {
            return Err(format!(
                "`{text}`: use default, sqlx, sha1, dotnet, crc32-pair or hashed-mysql-name"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }

    #[test]
    fn signals_read_by_name_or_number() {
        assert_eq!(parse_signal("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("sigkill"), Ok(libc::SIGKILL));
        assert_eq!(parse_signal("10"), Ok(10));
        assert!(parse_signal("STOPPLEASE").is_err());
        assert!(parse_signal("0").is_err());
    }

    #[test]
    fn postgres_urls_name_the_process_holding_the_lock() {
        let url = named("postgres://u@h/db".to_owned());
        assert!(
            url.starts_with("postgres://u@h/db?application_name=dlock:"),
            "{url}"
        );
        let kept = named("postgres://u@h/db?application_name=mine".to_owned());
        assert_eq!(kept, "postgres://u@h/db?application_name=mine");
        assert_eq!(named("mysql://u@h/db".to_owned()), "mysql://u@h/db");
    }

    #[test]
    fn the_command_line_reads_as_documented() {
        let cli = Cli::try_parse_from(["dlock", "run", "-n", "-E", "3", "job", "--", "echo", "-x"])
            .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("a run");
        };
        assert!(run.no_wait);
        assert_eq!(run.conflict_exit_code, 3);
        assert_eq!(run.key, "job");
        assert_eq!(run.argv, ["echo", "-x"]);
        assert!(
            Cli::try_parse_from(["dlock", "run", "-n", "-w", "1s", "job", "--", "true"]).is_err()
        );
        assert!(Cli::try_parse_from(["dlock", "run", "-c", "true", "job", "--", "true"]).is_err());
    }
}
