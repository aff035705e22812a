//! `cargo xtask bench`: dlock's speed side by side with the raw driver floor, on servers
//! started as the matrix starts them (or those of `DLOCK_PG_URL` / `DLOCK_MYSQL_URL`).
//!
//! The measuring is done by the `bench` worker of `xtask/workers`, which has every driver; this
//! command builds it, runs it against the servers, and cleans up.

use std::process::Command;

use crate::db::{self, Servers};
use crate::{Result, cargo, project_root, target_dir};

/// `cargo xtask bench [--quick] [--json PATH]`.
pub(crate) fn command(args: &[String]) -> Result<()> {
    let mut quick = false;
    let mut only = None;
    let mut json = target_dir().join("dlock-bench.json");
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => json = args.next().ok_or("--json needs a path")?.into(),
            "--only" => only = Some(args.next().ok_or("--only needs a path's text")?.clone()),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: cargo xtask bench [--quick] [--json PATH] \
                     [--only TEXT]"
                )
                .into());
            }
        }
    }
    ctrlc::set_handler(|| {
        eprintln!("\nxtask: interrupted; stopping the servers");
        db::stop_all_and_exit(130);
    })?;
    let servers = Servers::from_env_or_start()?;
    let outcome = bench(&servers, quick, only.as_deref(), &json);
    Servers::stop();
    outcome
}

fn bench(servers: &Servers, quick: bool, only: Option<&str>, json: &std::path::Path) -> Result<()> {
    // A quick run only proves the benchmark works, so it reuses the debug build the tests
    // made; real figures need the release build.
    let profile = if quick { "debug" } else { "release" };
    eprintln!("xtask: building the benchmark ({profile})");
    let mut build = Command::new(cargo());
    build.current_dir(project_root()).args([
        "build",
        "--quiet",
        "-p",
        "dlock-workers",
        "--bin",
        "bench",
    ]);
    if !quick {
        build.arg("--release");
    }
    if !build.status()?.success() {
        return Err("building the benchmark failed".into());
    }
    let target = target_dir();
    if let Some(parent) = json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut run = Command::new(target.join(profile).join("bench"));
    run.arg("--json").arg(json).envs(servers.env());
    // The server processes, which the bench pins to one CPU beside itself where paths on
    // different connections are compared (see the worker).
    let pids: Vec<String> = Servers::pids().iter().map(u32::to_string).collect();
    run.env("DLOCK_BENCH_SERVER_PIDS", pids.join(" "));
    if quick {
        run.arg("--quick");
    }
    if let Some(only) = only {
        run.args(["--only", only]);
    }
    if !run.status()?.success() {
        return Err("the benchmark failed".into());
    }
    Ok(())
}
