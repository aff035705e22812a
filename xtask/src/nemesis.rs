//! `cargo xtask nemesis`: worker processes increment one counter under a dlock lock while a
//! nemesis kills holders' sessions, freezes holders past the loss of their lock, and restarts
//! the server; with fencing tokens and without. The `nemesis` worker of `xtask/workers` does
//! the run and prints the table; this command builds it and gives it servers of its own,
//! which it may restart.

use std::process::Command;

use crate::db;
use crate::{Result, cargo, project_root, target_dir};

/// `cargo xtask nemesis [--quick]`.
pub(crate) fn command(args: &[String]) -> Result<()> {
    let mut quick = false;
    for arg in args {
        match arg.as_str() {
            "--quick" => quick = true,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: cargo xtask nemesis [--quick]"
                )
                .into());
            }
        }
    }
    ctrlc::set_handler(|| {
        eprintln!("\nxtask: interrupted; stopping the servers");
        db::stop_all_and_exit(130);
    })?;
    let built = Command::new(cargo())
        .current_dir(project_root())
        .args([
            "build",
            "--quiet",
            "-p",
            "dlock-workers",
            "--bin",
            "nemesis",
        ])
        .status()?;
    if !built.success() {
        return Err("building the nemesis worker failed".into());
    }
    let servers = db::RestartableServers::start()?;
    let mut run = Command::new(target_dir().join("debug").join("nemesis"));
    run.envs(servers.env());
    if quick {
        run.arg("--quick");
    }
    let status = run.status();
    servers.stop();
    if !status?.success() {
        return Err("the nemesis run failed".into());
    }
    Ok(())
}
