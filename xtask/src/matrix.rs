//! `cargo xtask test-matrix`: every check the project passes, as a table of rows.
//!
//! Rows run in order and all run, even after a failure, so the summary shows everything that
//! is broken. Servers start before the first row that needs them and stop at the end, on
//! failure, and on Ctrl-C.

use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::db::{self, Servers};
use crate::pg_versions;

/// Set by the signal handler, so the main thread starts no new row while it cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
use crate::{Result, cargo, project_root};

/// The workspace members whose feature combinations are checked one by one. Members without
/// features (dlock-core, xtask) are covered by the whole-workspace rows.
const FEATURED_CRATES: &[&str] = &["dlock-postgres", "dlock-mysql", "dlock-pool", "dlock-cli"];

/// Test targets that need servers of their own, so the shared-server rows leave them out:
/// those that freeze and restart their servers (`db:faults`, one test at a time), those that
/// need deployments where a lock cannot exclude (`db:deployments`), and those that need
/// servers taking only TLS (`db:tls`). Each crate's such tests live in that crate.
const OWN_SERVER_TESTS: &[(&str, &str)] = &[
    ("dlock-postgres", "faults"),
    ("dlock-mysql", "faults"),
    ("dlock-pool", "faults"),
    ("dlock-postgres", "deployments"),
    ("dlock-mysql", "deployments"),
    ("dlock-pool", "deployments"),
    // Only the `db:tls` row's servers, which take nothing but TLS, make these mean anything.
    ("dlock-pool", "tls"),
];

/// The test targets the `db:tls` row runs against servers that accept only TLS, in every
/// featured crate that has them.
const TLS_TESTS: &[&str] = &[
    "blocking",
    "contract",
    "interruption",
    "sessions",
    "sqlx",
    "tokio",
    "bb8",
    "r2d2",
    "tls",
];

/// Feature sets checked beyond each feature alone: dlock-pool's code for a pool and a backend
/// exists only when both are on, so each pair gets a row.
const FEATURE_COMBINATIONS: &[(&str, &str)] = &[
    ("dlock-pool", "r2d2,postgres"),
    ("dlock-pool", "r2d2,mysql"),
    ("dlock-pool", "bb8,postgres"),
    ("dlock-pool", "bb8,mysql"),
];

/// The database test rows: a crate and the features its `tests/` targets run under (empty
/// for all features). Each backend flavour gets a row of its own, so a failure names it.
const DATABASE_ROWS: &[(&str, &str)] = &[
    ("dlock-postgres", "blocking"),
    ("dlock-postgres", "tokio"),
    ("dlock-mysql", "blocking"),
    ("dlock-mysql", "tokio"),
    ("dlock-pool", ""),
    ("dlock-cli", ""),
];

/// One check: a cargo command, its extra environment, and the servers it needs.
#[derive(Debug)]
struct Row {
    name: String,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
    needs_servers: bool,
    /// A PostgreSQL major the row gets a server of its own for, from the cached npm binaries.
    postgres_major: Option<&'static str>,
    /// Whether the row gets PostgreSQL and MariaDB servers of its own, which it may freeze and
    /// restart: their directories are in `DLOCK_FAULT_PG_DIR` and `DLOCK_FAULT_MYSQL_DIR`.
    own_servers: bool,
    /// Whether the row also gets pgbouncer, a standby and a Galera node.
    deployments: bool,
    /// Whether the row's command starts the servers it needs itself.
    starts_servers: bool,
    /// Whether the row runs while CPU hogs keep every core busy, so races that hide on an
    /// idle machine show.
    saturated: bool,
    /// Whether the row gets servers of its own that accept only TLS ([`db::TlsServers`]).
    tls_only: bool,
}

impl Row {
    fn new(name: impl Into<String>, args: &[&str]) -> Row {
        Row {
            name: name.into(),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            env: Vec::new(),
            needs_servers: false,
            postgres_major: None,
            own_servers: false,
            deployments: false,
            starts_servers: false,
            saturated: false,
            tls_only: false,
        }
    }

    fn tls_only(mut self) -> Row {
        self.tls_only = true;
        self
    }

    fn saturated(mut self) -> Row {
        self.saturated = true;
        self
    }

    fn own_servers(mut self) -> Row {
        self.own_servers = true;
        self
    }

    fn arg_list(mut self, args: &[&str]) -> Row {
        self.args.extend(args.iter().map(|arg| (*arg).to_owned()));
        self
    }

    /// Gives the row, beside its own servers, the deployments where a lock cannot exclude
    /// ([`db::Deployments`]).
    fn deployments(mut self) -> Row {
        self.deployments = true;
        self
    }

    fn starts_servers(mut self) -> Row {
        self.starts_servers = true;
        self
    }

    fn on_postgres(mut self, major: &'static str) -> Row {
        self.postgres_major = Some(major);
        self
    }

    fn env(mut self, name: &'static str, value: &'static str) -> Row {
        self.env.push((name, value));
        self
    }

    fn needs_servers(mut self) -> Row {
        self.needs_servers = true;
        self
    }

    fn command_line(&self) -> String {
        let env: String = self.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        format!("{env}cargo {}", self.args.join(" "))
    }
}

/// The features a crate declares in its Cargo.toml, other than `default`.
fn declared_features(krate: &str) -> Result<Vec<String>> {
    let manifest = fs::read_to_string(project_root().join(krate).join("Cargo.toml"))?;
    let mut in_features = false;
    let mut features = Vec::new();
    for line in manifest.lines() {
        let line = line.trim_end();
        if line.starts_with('[') {
            in_features = line == "[features]";
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if in_features && is_name && !line.starts_with([' ', '\t']) && name != "default" {
            features.push(name.to_owned());
        }
    }
    Ok(features)
}

/// Every row, in the order they run.
fn rows() -> Result<Vec<Row>> {
    let deny = ["--", "-D", "warnings"];
    let mut rows = vec![
        Row::new("fmt", &["fmt", "--all", "--", "--check"]),
        Row::new(
            "clippy:workspace:all-features",
            &[
                &["clippy", "--workspace", "--all-targets", "--all-features"][..],
                &deny,
            ]
            .concat(),
        ),
    ];
    let mut doc_rows = Vec::new();
    for krate in FEATURED_CRATES {
        let features = declared_features(krate)?;
        let mut sets: Vec<(String, Vec<&str>)> = vec![("none".to_owned(), vec![])];
        sets.extend(
            features
                .iter()
                .map(|feature| (feature.clone(), vec![feature.as_str()])),
        );
        sets.extend(
            FEATURE_COMBINATIONS
                .iter()
                .filter(|(name, _)| name == krate)
                .map(|(_, set)| ((*set).to_owned(), set.split(',').collect())),
        );
        for (label, set) in sets {
            let joined = set.join(",");
            let mut args = vec![
                "clippy",
                "-p",
                krate,
                "--all-targets",
                "--no-default-features",
            ];
            if !set.is_empty() {
                args.extend(["--features", &joined]);
            }
            args.extend(deny);
            rows.push(Row::new(format!("clippy:{krate}:{label}"), &args));
            // Docs must build for each feature set alone too: a link to an item of another
            // feature breaks there, and docs.rs users read one feature's items at a time.
            if !set.is_empty() {
                doc_rows.push(
                    Row::new(
                        format!("doc:{krate}:{label}"),
                        &[
                            "doc",
                            "-p",
                            krate,
                            "--no-deps",
                            "--no-default-features",
                            "--features",
                            &joined,
                        ],
                    )
                    .env("RUSTDOCFLAGS", "-D warnings"),
                );
            }
        }
    }
    rows.append(&mut doc_rows);
    rows.extend([
        Row::new(
            "doc",
            &["doc", "--workspace", "--no-deps", "--all-features"],
        )
        .env("RUSTDOCFLAGS", "-D warnings"),
        Row::new(
            "test:unit",
            &["test", "--workspace", "--all-features", "--lib", "--bins"],
        ),
        Row::new(
            "test:doc",
            &["test", "--workspace", "--all-features", "--doc"],
        ),
        // Property tests of the key policies: no input panics, hashed names stay short.
        Row::new(
            "test:key-properties",
            &["test", "-p", "dlock-core", "--test", "policy_properties"],
        ),
        // Each crate's rust-version against its dependencies, resolved for that toolchain.
        Row::new("msrv", &["run", "--quiet", "-p", "xtask", "--", "msrv"]),
        // Every published crate packaged and built from its package, as crates.io would.
        Row::new(
            "publish-dry-run",
            &["run", "--quiet", "-p", "xtask", "--", "publish-check"],
        ),
    ]);
    for (krate, features) in DATABASE_ROWS {
        let targets = shared_server_tests(krate, features)?;
        if targets.is_empty() {
            continue;
        }
        let mut args = vec!["test", "-p", krate];
        for target in &targets {
            args.extend(["--test", target.as_str()]);
        }
        let name = if features.is_empty() {
            args.push("--all-features");
            format!("db:{krate}")
        } else {
            args.extend(["--no-default-features", "--features", features]);
            format!("db:{krate}:{features}")
        };
        rows.push(Row::new(name, &args).needs_servers());
    }
    for (row, kind) in [("db:faults", "faults"), ("db:deployments", "deployments")] {
        let mut args = vec!["test", "--all-features"];
        for (krate, target) in OWN_SERVER_TESTS
            .iter()
            .filter(|(_, target)| *target == kind)
        {
            args.extend(["-p", krate, "--test", target]);
        }
        let row = Row::new(row, &args);
        rows.push(if kind == "faults" {
            // The fault tests print how fast lost locks were reported: shown in the log.
            row.arg_list(&["--", "--test-threads=1", "--nocapture"])
                .own_servers()
        } else {
            row.own_servers().deployments()
        });
    }
    // The lock suites of every flavour, bare and pooled, against servers that accept only TLS:
    // every connection a lock opens (the side connection, a cancel, the watcher's, a second
    // connection of a check) must go through TLS too.
    let mut args = vec!["test", "--all-features"];
    for krate in ["dlock-postgres", "dlock-mysql", "dlock-pool"] {
        args.extend(["-p", krate]);
    }
    for target in TLS_TESTS {
        args.extend(["--test", target]);
    }
    rows.push(Row::new("db:tls", &args).tls_only());
    // The cancel, race and interruption tests again, with every core kept busy: a timing bug
    // that hides on an idle machine shows here rather than at users.
    rows.push(
        Row::new(
            "db:stress",
            &[
                "test",
                "-p",
                "dlock-postgres",
                "-p",
                "dlock-mysql",
                "--all-features",
                "--test",
                "interruption",
                "--test",
                "sqlx",
                "--test",
                "tokio",
            ],
        )
        .needs_servers()
        .saturated(),
    );
    // The README's examples, each built as a new user's crate from its own toml block, and
    // run against the row's servers.
    rows.push(
        Row::new(
            "db:readme",
            &["run", "--quiet", "-p", "xtask", "--", "readme", "--run"],
        )
        .needs_servers(),
    );
    // The demo's locked runs fail it when they lose an update: mutual exclusion across OS
    // processes, through every API path of both backends.
    rows.push(
        Row::new("db:demo", &["run", "--quiet", "-p", "xtask", "--", "demo"]).needs_servers(),
    );
    // Mutual exclusion under load: processes x tasks through every path, both backends.
    rows.push(
        Row::new("db:load", &["run", "--quiet", "-p", "xtask", "--", "load"]).needs_servers(),
    );
    // dlock and sqlalchemy-dlock, the Python library it ports, on the same keys: each
    // excludes the other, through every flavour, on both backends.
    rows.push(
        Row::new(
            "db:interop",
            &["run", "--quiet", "-p", "xtask", "--", "interop"],
        )
        .needs_servers(),
    );
    // Fencing under a nemesis: with tokens, no update is lost, whatever the nemesis does. It
    // starts servers of its own, which it restarts.
    rows.push(
        Row::new(
            "db:nemesis",
            &["run", "--quiet", "-p", "xtask", "--", "nemesis", "--quick"],
        )
        .starts_servers(),
    );
    // The benchmark's quick mode proves it still runs; its figures mean nothing there.
    rows.push(
        Row::new(
            "db:bench-quick",
            &["run", "--quiet", "-p", "xtask", "--", "bench", "--quick"],
        )
        .needs_servers(),
    );
    // The PostgreSQL suites on the other supported majors; the system's 15 ran above. The
    // sqlx suite proves a transport that sends the tokio flavour's statements, not anything a
    // server version changes: it runs on 15, in `db:stress` and `db:tls`.
    let mut targets = shared_server_tests("dlock-postgres", "")?;
    targets.retain(|target| target != "sqlx");
    for (major, _, _) in pg_versions::MAJORS {
        let mut args = vec!["test", "-p", "dlock-postgres", "--all-features"];
        for target in &targets {
            args.extend(["--test", target.as_str()]);
        }
        rows.push(Row::new(format!("db:dlock-postgres:pg{major}"), &args).on_postgres(major));
    }
    Ok(rows)
}

/// The test targets of `krate` that run on the shared servers (not those of
/// [`OWN_SERVER_TESTS`]) and that `features` reach: all of them for `""` (all features),
/// else those whose `required-features` in the crate's `Cargo.toml` are all in `features`.
fn shared_server_tests(krate: &str, features: &str) -> Result<Vec<String>> {
    let dir = project_root().join(krate);
    if !dir.join("tests").is_dir() {
        return Ok(Vec::new());
    }
    // Each `[[test]]` table of the manifest, as written there: a name, then its features.
    let manifest = fs::read_to_string(dir.join("Cargo.toml"))?;
    let required = |target: &str| -> Vec<String> {
        manifest
            .split("[[test]]")
            .skip(1)
            .find(|table| table.contains(&format!("name = \"{target}\"")))
            .and_then(|table| table.split("required-features = [").nth(1))
            .and_then(|list| list.split(']').next())
            .map(|list| {
                list.split(',')
                    .map(|feature| feature.trim().trim_matches('"').to_owned())
                    .filter(|feature| !feature.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let enabled: Vec<&str> = features.split(',').collect();
    let mut targets: Vec<String> = fs::read_dir(dir.join("tests"))?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".rs")?.to_owned())
        })
        .filter(|target| !OWN_SERVER_TESTS.contains(&(krate, target.as_str())))
        .filter(|target| {
            features.is_empty()
                || required(target)
                    .iter()
                    .all(|feature| enabled.contains(&feature.as_str()))
        })
        .collect();
    targets.sort();
    Ok(targets)
}

/// `cargo xtask test-matrix [--list] [--only PREFIX]`.
pub(crate) fn command(args: &[String]) -> Result<()> {
    let mut list = false;
    let mut only: Option<String> = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--list" => list = true,
            "--only" => only = Some(args.next().ok_or("--only needs a row name prefix")?.clone()),
            other => return Err(format!("unknown argument {other:?}; usage: cargo xtask test-matrix [--list] [--only PREFIX]").into()),
        }
    }
    let rows: Vec<Row> = rows()?
        .into_iter()
        .filter(|row| {
            only.as_deref()
                .is_none_or(|prefix| row.name.starts_with(prefix))
        })
        .collect();
    if rows.is_empty() {
        return Err(format!(
            "no row starts with {:?}; see --list",
            only.unwrap_or_default()
        )
        .into());
    }
    if list {
        for row in &rows {
            let servers = match (row.needs_servers, row.postgres_major) {
                _ if row.deployments => {
                    "  [servers of its own, pgbouncer, standby, Galera]".to_owned()
                }
                _ if row.tls_only => "  [servers of its own, TLS only]".to_owned(),
                _ if row.own_servers || row.starts_servers => "  [servers of its own]".to_owned(),
                (true, _) if row.saturated => "  [servers, every core busy]".to_owned(),
                (true, _) => "  [servers]".to_owned(),
                (false, Some(major)) => format!("  [PostgreSQL {major}]"),
                (false, None) => String::new(),
            };
            println!("{:<36} {}{servers}", row.name, row.command_line());
        }
        return Ok(());
    }

    ctrlc::set_handler(|| {
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("\nxtask: interrupted; stopping the servers");
        db::stop_all_and_exit(130);
    })?;

    let started = Instant::now();
    let mut results = Vec::new();
    let mut servers: Option<Servers> = None;
    for (index, row) in rows.iter().enumerate() {
        if INTERRUPTED.load(Ordering::SeqCst) {
            // The signal handler is stopping the servers and will exit; start nothing new.
            break;
        }
        eprintln!(
            "\n==> [{}/{}] {}: {}",
            index + 1,
            rows.len(),
            row.name,
            row.command_line()
        );
        let row_started = Instant::now();
        let passed = match run_row(row, &mut servers) {
            Ok(passed) => passed,
            Err(error) => {
                eprintln!("xtask: {}: {error}", row.name);
                false
            }
        };
        results.push((
            row.name.as_str(),
            passed,
            row_started.elapsed().as_secs_f64(),
        ));
    }
    Servers::stop();

    println!("\n{:<36} {:<6} {:>8}", "row", "result", "seconds");
    for (name, passed, seconds) in &results {
        let result = if *passed { "ok" } else { "FAILED" };
        println!("{name:<36} {result:<6} {seconds:>8.1}");
    }
    let failed = results.iter().filter(|(_, passed, _)| !passed).count();
    println!("total time: {:.1} s", started.elapsed().as_secs_f64());
    println!("matrix: {} passed, {failed} failed", results.len() - failed);
    if failed > 0 {
        return Err(format!("{failed} matrix row(s) failed").into());
    }
    Ok(())
}

/// Runs one row, starting the servers first if it is the first row to need them: `Ok(true)`
/// when its command succeeded.
fn run_row(row: &Row, servers: &mut Option<Servers>) -> Result<bool> {
    let _hogs = row.saturated.then(CpuHogs::start);
    let mut command = Command::new(cargo());
    command
        .current_dir(project_root())
        .args(&row.args)
        .envs(row.env.iter().copied());
    if std::env::var_os("CI").is_some() {
        // A clean run gains nothing from incremental compilation, whose caches took 4.7 GB of
        // a CI machine's disk; a developer's rerun of a row keeps them.
        command.env("CARGO_INCREMENTAL", "0");
    }
    if row.own_servers {
        let servers = db::RestartableServers::start()?;
        command.envs(servers.env());
        let deployments = if row.deployments {
            match db::Deployments::start(&servers.bin, &servers.pg) {
                Ok(deployments) => Some(deployments),
                Err(error) => {
                    servers.stop();
                    return Err(error);
                }
            }
        } else {
            None
        };
        if let Some(deployments) = &deployments {
            command.envs(deployments.env.iter().map(|(name, value)| (name, value)));
        }
        let passed = command.status().map(|status| status.success());
        if let Some(deployments) = deployments {
            deployments.stop();
        }
        servers.stop();
        return Ok(passed?);
    }
    if row.tls_only {
        let servers = db::TlsServers::start()?;
        command.envs(servers.env());
        let passed = command.status().map(|status| status.success());
        servers.stop();
        return Ok(passed?);
    }
    if let Some(major) = row.postgres_major {
        let bin = pg_versions::bin_dir(major)?;
        let server = db::start_postgres_from(&bin)?;
        command.env(db::PG_URL_VAR, &server.url);
        let passed = command.status().map(|status| status.success());
        server.stop();
        return Ok(passed?);
    }
    if row.needs_servers {
        if servers.is_none() {
            *servers = Some(Servers::from_env_or_start()?);
        }
        command.envs(
            servers
                .as_ref()
                .expect("the servers were just started")
                .env(),
        );
    }
    Ok(command.status()?.success())
}

/// Threads that spin on every core, twice over, until dropped.
struct CpuHogs {
    stop: std::sync::Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHogs {
    fn start() -> CpuHogs {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        eprintln!("xtask: {} CPU hogs keep every core busy", 2 * cores);
        let threads = (0..2 * cores)
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut spin = 0_u64;
                    while !stop.load(Ordering::Relaxed) {
                        spin = std::hint::black_box(spin.wrapping_add(1));
                    }
                })
            })
            .collect();
        CpuHogs { stop, threads }
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_featured_crate_has_a_no_default_features_row() {
        let rows = rows().unwrap();
        for krate in FEATURED_CRATES {
            let name = format!("clippy:{krate}:none");
            assert!(rows.iter().any(|row| row.name == name), "{name} is missing");
        }
    }

    #[test]
    fn only_database_rows_need_servers() {
        for row in rows().unwrap() {
            assert_eq!(
                row.needs_servers
                    || row.postgres_major.is_some()
                    || row.own_servers
                    || row.starts_servers
                    || row.tls_only,
                row.name.starts_with("db:"),
                "{}",
                row.name
            );
        }
    }
}
