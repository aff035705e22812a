//! dlock's development tasks, run as `cargo xtask <command>`.
//!
//! - `db up | down | env`: start, stop, or print the URLs of throwaway PostgreSQL and MariaDB
//!   servers on loopback.
//! - `test-matrix [--list] [--only PREFIX]`: every check the project passes, with servers.
//! - `demo`: processes incrementing one counter under a lock through each API path, and
//!   without one.
//! - `load`: the demo with several tasks per process and a shared-lock run; fails on any
//!   lost update or overlapping holders.
//! - `interop`: dlock and sqlalchemy-dlock (Python) excluding each other on the same keys.
//! - `bench [--quick] [--json PATH] [--only TEXT]`: dlock's speed beside the raw driver floor.
//! - `readme`: the README's examples, built as a new user would.
//! - `msrv`: each crate's `rust-version` against what its dependencies need.
//! - `publish-check`: every package built from its tarball, as crates.io would.

mod bench;
mod db;
mod demo;
mod interop;
mod matrix;
mod msrv;
mod nemesis;
mod pg_versions;
mod publish;
mod readme;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// xtask's own errors are messages for a developer; a boxed error carries them.
type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  demo           show the lock at work: processes racing on one counter, through each API
                 path of each backend, and once without a lock
  db up          start PostgreSQL and MariaDB on free loopback ports, print their URLs
  db env         print the URLs of the servers `db up` started, as shell exports
  db down        stop the servers `db up` started and delete their files
  load           the demo under load: several tasks per process, a shared-lock run, and a
                 check that no two holders ever overlap (a matrix row)
  interop        dlock's flavours and sqlalchemy-dlock (the Python library it ports) take
                 the same keys on the same servers and exclude each other (a matrix row)
  bench          measure dlock beside the raw driver (release build); --quick proves it
                 runs, --json PATH (default target/dlock-bench.json), --only TEXT
                 measures only the throughput paths whose name contains TEXT
  nemesis        processes increment a counter under a lock while a nemesis kills, freezes
                 and restarts; with fencing tokens and without; --quick (a matrix row)
  msrv           check each crate's rust-version against what its dependencies need,
                 resolved as for a user on that toolchain (a matrix row)
  publish-check  cargo publish --dry-run --workspace, after clearing the copies of this
                 workspace's packages an earlier dry run left (a matrix row)
  readme         build the README's examples as a new user would, each a crate of its own
                 with exactly the dependency lines its toml block shows (a matrix row)
  test-matrix    run every check (fmt, clippy, docs, tests with servers); --list, --only PREFIX
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("db") => db::command(&args[1..]),
        Some("test-matrix") => matrix::command(&args[1..]),
        Some("demo") => demo::command(&args[1..]),
        Some("load") => demo::load_command(&args[1..]),
        Some("interop") => interop::command(&args[1..]),
        Some("bench") => bench::command(&args[1..]),
        Some("nemesis") => nemesis::command(&args[1..]),
        Some("readme") => readme::command(&args[1..]),
        Some("msrv") => msrv::command(&args[1..]),
        Some("publish-check") => publish::command(&args[1..]),
        Some("help" | "--help" | "-h") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: xtask lives one level below it.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR`, or `target` in the workspace.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| project_root().join("target"), Into::into)
}

/// The cargo that runs us, so the matrix uses the same toolchain.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}
