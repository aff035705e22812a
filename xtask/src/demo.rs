//! `cargo xtask demo` and `cargo xtask load`: OS processes increment one counter in the
//! database through a race window, under a dlock lock taken through each API path, and once
//! under none, to show the lost updates the lock prevents. The worker counts the holders in
//! the database around each critical section, so overlapping holders show even when no
//! update happens to be lost.
//!
//! `demo` runs one task per process, as the README shows. `load` runs several threads or
//! tasks per process and a shared-lock run (PostgreSQL: writers alone, readers together), and
//! is a matrix row: any lost update, any second holder, or any reader beside a writer fails
//! it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::db::{self, Servers};
use crate::{Result, cargo, project_root, target_dir};

const BACKENDS: [&str; 2] = ["postgres", "mysql"];

/// How much one command runs.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Worker processes per run.
    processes: usize,
    /// Threads or tasks per process.
    tasks: usize,
    /// Increments per task.
    increments: usize,
    /// The API paths, in the order the table shows them; `unlocked` takes no lock.
    paths: &'static [&'static str],
}

const DEMO: Plan = Plan {
    processes: 4,
    tasks: 1,
    increments: 40,
    paths: &["blocking", "async", "r2d2", "bb8", "unlocked"],
};

const LOAD: Plan = Plan {
    processes: 3,
    tasks: 4,
    increments: 12,
    paths: &[
        "blocking",
        "async",
        "r2d2",
        "bb8",
        "multiplexed",
        "shared",
        "unlocked",
    ],
};

/// One run's figures.
#[derive(Debug)]
struct Run {
    path: &'static str,
    expected: usize,
    counter: i64,
    /// The most holders of the exclusive lock seen at once.
    most: i64,
    /// The most shared holders seen at once (shared runs).
    most_readers: i64,
    /// Holders that met a holder they exclude: a writer beside anyone, a reader beside a
    /// writer.
    violations: i64,
    wall: Duration,
    median_wait: Duration,
}

impl Run {
    fn lost(&self) -> i64 {
        i64::try_from(self.expected).unwrap_or(i64::MAX) - self.counter
    }

    /// What is wrong with a locked run, if anything.
    fn failure(&self) -> Option<String> {
        if self.path == "unlocked" {
            return None;
        }
        let mut wrong = Vec::new();
        if self.lost() != 0 {
            wrong.push(format!("{} updates lost", self.lost()));
        }
        if self.most > 1 {
            wrong.push(format!("{} holders at once", self.most));
        }
        if self.violations > 0 {
            wrong.push(format!("{} exclusion violations", self.violations));
        }
        (!wrong.is_empty()).then(|| wrong.join(", "))
    }
}

/// `cargo xtask demo`.
pub(crate) fn command(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        return Err(format!("unknown argument {arg:?}; usage: cargo xtask demo").into());
    }
    with_servers(DEMO)
}

/// `cargo xtask load`.
pub(crate) fn load_command(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        return Err(format!("unknown argument {arg:?}; usage: cargo xtask load").into());
    }
    with_servers(LOAD)
}

fn with_servers(plan: Plan) -> Result<()> {
    ctrlc::set_handler(|| {
        eprintln!("\nxtask: interrupted; stopping the servers");
        db::stop_all_and_exit(130);
    })?;
    let servers = Servers::from_env_or_start()?;
    let outcome = demo(&servers, plan);
    Servers::stop();
    outcome
}

fn demo(servers: &Servers, plan: Plan) -> Result<()> {
    eprintln!("xtask: building the demo worker");
    let built = Command::new(cargo())
        .current_dir(project_root())
        .args(["build", "--quiet", "-p", "dlock-workers", "--bin", "demo"])
        .status()?;
    if !built.success() {
        return Err("building the demo worker failed".into());
    }
    let mut failures = Vec::new();
    for backend in BACKENDS {
        let mut runs = Vec::new();
        for path in plan.paths {
            // Shared locks are PostgreSQL's.
            if *path == "shared" && backend != "postgres" {
                continue;
            }
            let run = run(servers, plan, backend, path)?;
            if let Some(failure) = run.failure() {
                failures.push(format!("{backend} {path}: {failure}"));
            }
            runs.push(run);
        }
        print_table(backend, plan, &runs);
    }
    if failures.is_empty() {
        println!(
            "\nEvery locked run counted every increment with one holder at a time; the \
             unlocked runs show what the lock prevents."
        );
        Ok(())
    } else {
        Err(format!("a locked run failed: {}", failures.join("; ")).into())
    }
}

/// Runs the worker binary with `args` against `servers`.
fn worker(servers: &Servers, args: &[&str]) -> Command {
    let target = target_dir();
    let mut command = Command::new(target.join("debug").join("demo"));
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

fn run(servers: &Servers, plan: Plan, backend: &str, path: &'static str) -> Result<Run> {
    output(worker(servers, &["reset", backend]))?;
    let (count, tasks) = (plan.increments.to_string(), plan.tasks.to_string());
    let started = Instant::now();
    let children: Vec<Child> = (0..plan.processes)
        .map(|_| {
            worker(servers, &["run", backend, path, &count, &tasks])
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
    let figures: Vec<i64> = output(worker(servers, &["read", backend]))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [counter, most, most_readers, violations] = figures[..] else {
        return Err("the demo worker's read printed no four figures".into());
    };
    // In a shared run only the even tasks write.
    let writers = if path == "shared" {
        plan.tasks.div_ceil(2)
    } else {
        plan.tasks
    };
    Ok(Run {
        path,
        expected: plan.processes * writers * plan.increments,
        counter,
        most,
        most_readers,
        violations,
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

fn print_table(backend: &str, plan: Plan, runs: &[Run]) {
    println!(
        "\n{backend}: {} processes x {} {} x {} increments, 2 ms race window\n",
        plan.processes,
        plan.tasks,
        if plan.tasks == 1 { "task" } else { "tasks" },
        plan.increments
    );
    println!(
        "| path | processes | increments expected | final counter | lost updates | most holders at once | wall time | median wait |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for run in runs {
        let wait = if run.path == "unlocked" {
            "no lock".to_owned()
        } else {
            format!("{:.2} ms", run.median_wait.as_secs_f64() * 1000.0)
        };
        let holders = if run.path == "shared" {
            format!(
                "{} writer, {} readers; {} violations",
                run.most, run.most_readers, run.violations
            )
        } else {
            run.most.to_string()
        };
        println!(
            "| {} | {} | {} | {} | {} | {holders} | {:.2} s | {wait} |",
            run.path,
            plan.processes,
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
