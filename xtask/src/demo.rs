//! `cargo xtask demo`: several OS processes increment one counter in the database through a
//! race window, under a dlock lock taken through each API path, and once under none, to show
//! the lost updates the lock prevents.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::db::{self, Servers};
use crate::{Result, cargo, project_root};

/// How many worker processes contend in each run.
const PROCESSES: usize = 4;
/// How many increments each worker makes.
const INCREMENTS: usize = 40;
/// The API paths, in the order the table shows them; `unlocked` takes no lock at all.
const PATHS: [&str; 5] = ["blocking", "async", "r2d2", "bb8", "unlocked"];
const BACKENDS: [&str; 2] = ["postgres", "mysql"];

/// One run's figures.
#[derive(Debug)]
struct Run {
    path: &'static str,
    expected: usize,
    counter: i64,
    wall: Duration,
    median_wait: Duration,
}

impl Run {
    fn lost(&self) -> i64 {
        i64::try_from(self.expected).unwrap_or(i64::MAX) - self.counter
    }
}

/// `cargo xtask demo`.
pub(crate) fn command(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        return Err(format!("unknown argument {arg:?}; usage: cargo xtask demo").into());
    }
    ctrlc::set_handler(|| {
        eprintln!("\nxtask: interrupted; stopping the servers");
        db::stop_all_and_exit(130);
    })?;
    let servers = Servers::from_env_or_start()?;
    let outcome = demo(&servers);
    Servers::stop();
    outcome
}

fn demo(servers: &Servers) -> Result<()> {
    eprintln!("xtask: building the demo worker");
    let built = Command::new(cargo())
        .current_dir(project_root())
        .args([
            "build",
            "--quiet",
            "-p",
            "dlock-pool",
            "--example",
            "demo",
            "--all-features",
        ])
        .status()?;
    if !built.success() {
        return Err("building the demo worker failed".into());
    }
    let mut locked_losses = Vec::new();
    for backend in BACKENDS {
        let mut runs = Vec::new();
        for path in PATHS {
            let run = run(servers, backend, path)?;
            if path != "unlocked" && run.lost() != 0 {
                locked_losses.push(format!("{backend} {path}: {} lost", run.lost()));
            }
            runs.push(run);
        }
        print_table(backend, &runs);
    }
    if locked_losses.is_empty() {
        println!(
            "Every locked run counted every increment; the unlocked runs show what the lock \
             prevents."
        );
        Ok(())
    } else {
        Err(format!("a locked run lost updates: {}", locked_losses.join("; ")).into())
    }
}

/// Runs the worker binary with `args` against `servers`.
fn worker(servers: &Servers, args: &[&str]) -> Command {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| project_root().join("target"), Into::into);
    let mut command = Command::new(target.join("debug").join("examples").join("demo"));
    command.args(args).envs(servers.env());
    command
}

/// Runs `command` to completion and returns its stdout.
fn output(mut command: Command) -> Result<String> {
    let output = command.stderr(Stdio::inherit()).output()?;
    if !output.status.success() {
        return Err(format!("the demo worker failed: {command:?}").into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn run(servers: &Servers, backend: &str, path: &'static str) -> Result<Run> {
    output(worker(servers, &["reset", backend]))?;
    let count = INCREMENTS.to_string();
    let started = Instant::now();
    let children: Vec<Child> = (0..PROCESSES)
        .map(|_| {
            worker(servers, &["run", backend, path, &count])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut waits = Vec::new();
    for child in children {
        let output = child.wait_with_output()?;
        if !output.status.success() {
            return Err(format!("a demo worker failed ({backend} {path})").into());
        }
        waits.extend(parse_waits(&String::from_utf8(output.stdout)?)?);
    }
    let wall = started.elapsed();
    let counter = output(worker(servers, &["read", backend]))?
        .trim()
        .parse()?;
    Ok(Run {
        path,
        expected: PROCESSES * INCREMENTS,
        counter,
        wall,
        median_wait: median(&mut waits),
    })
}

/// The waits of one worker, from its `waits_us=1,2,3` line.
fn parse_waits(stdout: &str) -> Result<Vec<Duration>> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("waits_us="))
        .ok_or("the demo worker printed no waits")?;
    line.split(',')
        .filter(|wait| !wait.is_empty())
        .map(|wait| Ok(Duration::from_micros(wait.parse()?)))
        .collect()
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn print_table(backend: &str, runs: &[Run]) {
    println!("\n{backend}: {PROCESSES} processes x {INCREMENTS} increments, 2 ms race window\n");
    println!(
        "| path | processes | increments expected | final counter | lost updates | wall time | median wait |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for run in runs {
        let wait = if run.path == "unlocked" {
            "no lock".to_owned()
        } else {
            format!("{:.2} ms", run.median_wait.as_secs_f64() * 1000.0)
        };
        println!(
            "| {} | {PROCESSES} | {} | {} | {} | {:.2} s | {wait} |",
            run.path,
            run.expected,
            run.counter,
            run.lost(),
            run.wall.as_secs_f64(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_read_from_the_worker_line() {
        let waits = parse_waits("noise\nwaits_us=5,1000,20\n").unwrap();
        assert_eq!(waits, [5, 1000, 20].map(Duration::from_micros).to_vec());
        assert!(parse_waits("nothing").is_err());
        assert!(parse_waits("waits_us=1,x").is_err());
        assert_eq!(parse_waits("waits_us=").unwrap(), Vec::new());
    }

    #[test]
    fn the_median_is_the_middle_value() {
        let mut waits = [9, 1, 5].map(Duration::from_millis);
        assert_eq!(median(&mut waits), Duration::from_millis(5));
        assert_eq!(median(&mut []), Duration::ZERO);
    }
}
