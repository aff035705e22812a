//! The `dlock` binary against real servers: exclusion between processes, exit codes, signals,
//! a lost lock, and the death of `dlock` itself.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use dlock_testkit::contract::Server;
use dlock_testkit::{mysql, postgres};

/// `dlock` with `args`, its URL only from `--url`, and no terminal.
fn dlock(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dlock"));
    command
        .args(args)
        .env_remove("DLOCK_URL")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null());
    command
}

fn status(args: &[&str]) -> ExitStatus {
    dlock(args).status().expect("dlock runs")
}

fn output(args: &[&str]) -> Output {
    dlock(args).output().expect("dlock runs")
}

/// Both servers, with their URLs.
fn servers() -> [(Server, String); 2] {
    [
        (Server::Postgres, postgres::pg_url()),
        (Server::MySql, mysql::mysql_url()),
    ]
}

/// Waits up to ten seconds until `key` has `count` holders on `server`.
fn until_holders(server: Server, key: &str, count: usize) {
    assert!(
        server.until_holders(key, count),
        "{key}: never {count} holders on {server:?}"
    );
}

fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Whether process `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_with_deadline(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "dlock did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scratch(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("dlock-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn two_runs_exclude_each_other_on_both_backends() {
    for (server, url) in servers() {
        let key = "cli/exclusion";
        let mut first = dlock(&["run", "--url", &url, key, "--", "sleep", "3"])
            .spawn()
            .unwrap();
        until_holders(server, key, 1);
        assert_eq!(
            status(&["run", "-n", "--url", &url, key, "--", "true"]).code(),
            Some(1)
        );
        assert_eq!(
            status(&["run", "-n", "-E", "7", "--url", &url, key, "--", "true"]).code(),
            Some(7)
        );
        let started = Instant::now();
        assert_eq!(
            status(&["run", "-w", "300ms", "--url", &url, key, "--", "true"]).code(),
            Some(1)
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{server:?}: waited"
        );
        assert!(wait_with_deadline(&mut first, Duration::from_secs(20)).success());
        until_holders(server, key, 0);
        assert_eq!(
            status(&["run", "-n", "--url", &url, key, "--", "true"]).code(),
            Some(0)
        );
    }
}

/// `-s` on PostgreSQL: shared runs of a key run together, an exclusive run waits for them all;
/// on MySQL `-s` is a usage error, before any command runs.
#[test]
fn shared_runs_run_together_and_keep_exclusive_runs_out() {
    let url = postgres::pg_url();
    let key = "cli/shared";
    let mut readers: Vec<Child> = (0..2)
        .map(|_| {
            dlock(&["run", "-s", "--url", &url, key, "--", "sleep", "3"])
                .spawn()
                .unwrap()
        })
        .collect();
    until_holders(Server::Postgres, key, 2);
    let out = output(&["holders", "--url", &url, key]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("(shared)").count(), 2, "{text}");
    assert_eq!(
        status(&["run", "-n", "--url", &url, key, "--", "true"]).code(),
        Some(1),
        "an exclusive run is kept out"
    );
    assert_eq!(
        status(&["run", "-s", "-n", "--url", &url, key, "--", "true"]).code(),
        Some(0),
        "a third reader joins"
    );
    for reader in &mut readers {
        assert!(wait_with_deadline(reader, Duration::from_secs(20)).success());
    }
    until_holders(Server::Postgres, key, 0);

    let marker = scratch("shared-mysql");
    let out = output(&[
        "run",
        "-s",
        "--url",
        &mysql::mysql_url(),
        key,
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shared lock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!marker.exists(), "the command never ran");
}

#[test]
fn the_command_s_exit_status_comes_back() {
    let url = postgres::pg_url();
    let run = |tail: &[&str]| {
        let mut args = vec!["run", "--url", url.as_str(), "cli/status"];
        args.extend(tail);
        status(&args)
    };
    assert_eq!(run(&["--", "sh", "-c", "exit 7"]).code(), Some(7));
    assert_eq!(run(&["-c", "exit 9"]).code(), Some(9));
    assert_eq!(run(&["-c", "kill -KILL $$"]).code(), Some(128 + 9));
    assert_eq!(
        run(&["-c", "test \"$DLOCK_KEY\" = cli/status"]).code(),
        Some(0)
    );
    assert_eq!(run(&["--", "true"]).code(), Some(0));
}

#[test]
fn fenced_runs_hand_the_command_increasing_tokens() {
    for (_, url) in servers() {
        assert!(status(&["fencing", "install", "--url", &url]).success());
        let token = || -> u64 {
            let out = output(&[
                "run",
                "--fence",
                "--url",
                &url,
                "cli/fenced",
                "-c",
                "echo $DLOCK_FENCE",
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let first = token();
        assert!(token() > first, "{url}: tokens increase");
    }
}

#[test]
fn signals_reach_the_command_and_its_status_comes_back() {
    let url = postgres::pg_url();
    let key = "cli/signals";
    let mut run = dlock(&[
        "run",
        "--url",
        &url,
        key,
        "-c",
        "trap 'exit 42' TERM; sleep 30 & wait",
    ])
    .spawn()
    .unwrap();
    until_holders(Server::Postgres, key, 1);
    // The shell sets its trap as it starts; give it the moment it takes.
    std::thread::sleep(Duration::from_millis(300));
    signal(run.id(), "TERM");
    assert_eq!(
        wait_with_deadline(&mut run, Duration::from_secs(10)).code(),
        Some(42)
    );
    until_holders(Server::Postgres, key, 0);
}

#[test]
fn a_lost_lock_stops_the_command_then_kills_it_after_the_grace() {
    for (server, url) in servers() {
        let key = "cli/lost";
        let pid_file = scratch(&format!("lost-{server:?}"));
        let script = format!(
            "echo $$ > {}; trap '' TERM; sleep 30 & wait; sleep 30",
            pid_file.display()
        );
        let mut run = dlock(&[
            "run",
            "--watch-interval",
            "100ms",
            "--kill-after",
            "1s",
            "--url",
            &url,
            key,
            "-c",
            &script,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        until_holders(server, key, 1);
        let started = Instant::now();
        server.kill_holders(key);
        let status = wait_with_deadline(&mut run, Duration::from_secs(20));
        assert_eq!(status.code(), Some(75), "{server:?}: the lost-lock code");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{server:?}: the command had its grace"
        );
        let shell: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(gone(shell), "{server:?}: the command was killed");
        let _ = std::fs::remove_file(pid_file);
    }
}

#[test]
fn the_command_dies_with_dlock_and_the_lock_goes_with_both() {
    let url = postgres::pg_url();
    let key = "cli/parent-killed";
    let pid_file = scratch("parent-killed");
    let script = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let mut run = dlock(&["run", "--url", &url, key, "-c", &script])
        .spawn()
        .unwrap();
    until_holders(Server::Postgres, key, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let child: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    run.kill().unwrap();
    run.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(child) {
        assert!(Instant::now() < deadline, "the command outlived dlock");
        std::thread::sleep(Duration::from_millis(10));
    }
    until_holders(Server::Postgres, key, 0);
    let _ = std::fs::remove_file(pid_file);
}

#[test]
fn usage_and_reachability_errors_have_their_documented_codes() {
    let url = postgres::pg_url();
    // No URL at all.
    let out = output(&["run", "cli/errors", "--", "true"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
    // A URL of no backend dlock takes, and one of a server nobody answers at.
    assert_eq!(
        status(&["run", "--url", "ftp://x/y", "cli/errors", "--", "true"]).code(),
        Some(64)
    );
    let out = output(&[
        "run",
        "--url",
        "postgres://postgres@127.0.0.1:1/postgres",
        "cli/errors",
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
    // No command, a command that does not exist, one that cannot run, an unknown option.
    assert_eq!(
        status(&["run", "--url", &url, "cli/errors"]).code(),
        Some(64)
    );
    assert_eq!(
        status(&[
            "run",
            "--url",
            &url,
            "cli/errors",
            "--",
            "/nonexistent/command"
        ])
        .code(),
        Some(127)
    );
    let not_executable = scratch("not-executable");
    std::fs::write(&not_executable, "not a program\n").unwrap();
    let path = not_executable.display().to_string();
    assert_eq!(
        status(&["run", "--url", &url, "cli/errors", "--", &path]).code(),
        Some(126)
    );
    let _ = std::fs::remove_file(not_executable);
    assert_eq!(
        status(&["run", "--frobnicate", "cli/errors"]).code(),
        Some(64)
    );
    // The lock is free again after each of them.
    until_holders(Server::Postgres, "cli/errors", 0);
}

#[test]
fn holders_says_who_holds_a_key_and_exits_1_when_it_is_free() {
    for (server, url) in servers() {
        let key = "cli/holders";
        let out = output(&["holders", "--url", &url, key]);
        assert_eq!(out.status.code(), Some(1), "{server:?}: free");
        let mut run = dlock(&["run", "--url", &url, key, "--", "sleep", "3"])
            .spawn()
            .unwrap();
        until_holders(server, key, 1);
        let out = output(&["holders", "--url", &url, key]);
        assert_eq!(out.status.code(), Some(0), "{server:?}: held");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("session "), "{server:?}: {text}");
        if server == Server::Postgres {
            // The holding dlock names its session after its host and pid.
            assert!(
                text.contains(&format!(":{}", run.id())),
                "{server:?}: the holder's pid in its name: {text}"
            );
        }
        assert!(wait_with_deadline(&mut run, Duration::from_secs(20)).success());
    }
}

/// `holders` without a key lists every lock, each line led by the lock as the server names
/// it, on both backends (the matrix's MariaDB loads its `metadata_lock_info` plugin).
#[test]
fn holders_without_a_key_lists_every_lock() {
    for (server, url) in servers() {
        let keys = ["cli/every-a", "cli/every-b"];
        let mut runs: Vec<Child> = keys
            .iter()
            .map(|key| {
                dlock(&["run", "--url", &url, key, "--", "sleep", "3"])
                    .spawn()
                    .unwrap()
            })
            .collect();
        for key in keys {
            until_holders(server, key, 1);
        }
        let out = output(&["holders", "--url", &url]);
        assert_eq!(out.status.code(), Some(0), "{server:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for key in keys {
            let lock = match server {
                // The server's key for it, as `dlock key` shows it.
                Server::Postgres => {
                    let shown = output(&["key", key]);
                    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
                    let start = shown.find("pg_advisory_lock(").unwrap() + 17;
                    let end = start + shown[start..].find(')').unwrap();
                    shown[start..end].to_owned()
                }
                Server::MySql => key.to_owned(),
            };
            assert!(
                text.lines()
                    .any(|line| line.starts_with(&format!("{lock}  session "))),
                "{server:?}: {lock} in {text}"
            );
        }
        for run in &mut runs {
            assert!(wait_with_deadline(run, Duration::from_secs(20)).success());
        }
    }
}

#[test]
fn key_shows_what_each_server_sees() {
    let out = output(&["key", "user/001"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // sqlalchemy-dlock's key for "user/001", and the name itself on MySQL.
    assert!(
        text.contains("pg_advisory_lock(-8875347467275493450)"),
        "{text}"
    );
    assert!(text.contains("GET_LOCK('user/001', ...)"), "{text}");
    let out = output(&["key", "--policy", "sqlx", "user/001"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("8443591957982265024"));
}
