//! `cargo xtask interop`: dlock and sqlalchemy-dlock, the Python library dlock ports, lock
//! the same keys on the same servers and exclude each other, through every dlock flavour and
//! on both backends. sqlalchemy-dlock runs from a virtual environment this command makes
//! (pinned versions, from PyPI) under the target directory, once.
//!
//! For each backend, flavour and key: Python holds and dlock's try finds the key busy, then
//! free once Python let go; dlock holds and Python's try finds it busy, then free. On
//! PostgreSQL, shared locks too (a shared holder on one side lets the other side's shared try
//! in and keeps its exclusive try out), and transaction locks (held until the commit).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::db::{self, Servers};
use crate::{Result, cargo, project_root, target_dir};

/// What the virtual environment holds: the library and its drivers, pinned.
const PYTHON_PACKAGES: [&str; 3] = [
    "sqlalchemy-dlock==0.9.0",
    "psycopg2-binary==2.9.13",
    "pymysql==1.2.4",
];

/// Keys as users write them: a plain one (sqlalchemy-dlock's README's), and one beyond
/// ASCII, which both libraries must turn into the same server key.
const KEYS: [&str; 2] = ["user/001", "interop/ключ-鍵"];

/// `cargo xtask interop`.
pub(crate) fn command(args: &[String]) -> Result<()> {
    if let Some(arg) = args.first() {
        return Err(format!("unknown argument {arg:?}; usage: cargo xtask interop").into());
    }
    ctrlc::set_handler(|| {
        eprintln!("\nxtask: interrupted; stopping the servers");
        db::stop_all_and_exit(130);
    })?;
    let python = python()?;
    let servers = Servers::from_env_or_start()?;
    let outcome = interop(&servers, &python);
    Servers::stop();
    outcome
}

/// The virtual environment's Python, made and filled the first time.
fn python() -> Result<PathBuf> {
    let venv = target_dir().join("interop-venv");
    let python = venv.join("bin").join("python");
    let marker = venv.join(PYTHON_PACKAGES.join(" ").replace(['=', ' '], "_"));
    if marker.exists() {
        return Ok(python);
    }
    eprintln!("xtask: making a Python environment with {PYTHON_PACKAGES:?}");
    let made = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .map_err(|error| format!("python3 could not be run ({error}); install Python 3"))?;
    if !made.success() {
        return Err("python3 -m venv failed".into());
    }
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PYTHON_PACKAGES)
        .status()?;
    if !installed.success() {
        return Err(format!("pip could not install {PYTHON_PACKAGES:?}").into());
    }
    std::fs::write(&marker, "")?;
    Ok(python)
}

fn interop(servers: &Servers, python: &Path) -> Result<()> {
    eprintln!("xtask: building the interop worker");
    let built = Command::new(cargo())
        .current_dir(project_root())
        .args([
            "build",
            "--quiet",
            "-p",
            "dlock-workers",
            "--bin",
            "interop",
        ])
        .status()?;
    if !built.success() {
        return Err("building the interop worker failed".into());
    }
    let sides = Sides { servers, python };
    let mut failures = Vec::new();
    let mut checked = 0;
    for (backend, url) in [
        (
            "postgres",
            python_url(&servers.pg_url, "postgresql+psycopg2"),
        ),
        ("mysql", python_url(&servers.mysql_url, "mysql+pymysql")),
    ] {
        let flavours = said(sides.worker(&["flavours", backend]))?;
        for flavour in flavours.split_whitespace() {
            for key in KEYS {
                let case = Case {
                    backend,
                    flavour,
                    key,
                    python_url: &url,
                };
                let mut outcomes = vec![
                    ("sqlalchemy-dlock holds", sides.python_holds(&case)),
                    ("dlock holds", sides.dlock_holds(&case)),
                ];
                // Transaction locks on both sides.
                if flavour == "xact" {
                    outcomes.push((
                        "both take transaction locks",
                        sides.transaction_locks(&case),
                    ));
                }
                // Shared locks are PostgreSQL's; the multiplexed pool takes exclusive ones.
                if backend == "postgres" && !matches!(flavour, "multiplexed" | "xact") {
                    outcomes.push((
                        "sqlalchemy-dlock holds shared",
                        sides.shared_holds(&case, Side::Python),
                    ));
                    outcomes.push(("dlock holds shared", sides.shared_holds(&case, Side::Dlock)));
                }
                for (what, outcome) in outcomes {
                    checked += 1;
                    if let Err(error) = outcome {
                        failures.push(format!("{backend} {flavour} {key:?}, {what}: {error}"));
                    }
                }
            }
        }
    }
    if failures.is_empty() {
        println!(
            "interop: {checked} cases; sqlalchemy-dlock and every dlock flavour excluded each \
             other on PostgreSQL and MySQL/MariaDB, each found the key free once the other \
             let go, and shared holders on either side let the other's shared tries in"
        );
        Ok(())
    } else {
        Err(format!("interop failed:\n  {}", failures.join("\n  ")).into())
    }
}

/// `url` (a `DLOCK_*_URL`) with SQLAlchemy's `scheme`.
fn python_url(url: &str, scheme: &str) -> String {
    match url.split_once("://") {
        Some((_, rest)) => format!("{scheme}://{rest}"),
        None => url.to_owned(),
    }
}

/// One backend, flavour and key.
struct Case<'a> {
    backend: &'static str,
    flavour: &'a str,
    key: &'static str,
    python_url: &'a str,
}

/// Which library holds.
#[derive(Clone, Copy)]
enum Side {
    Python,
    Dlock,
}

/// How each side is started.
struct Sides<'a> {
    servers: &'a Servers,
    python: &'a Path,
}

impl Sides<'_> {
    /// The worker, with `args`.
    fn worker(&self, args: &[&str]) -> Command {
        let mut command = Command::new(target_dir().join("debug").join("interop"));
        command.args(args).envs(self.servers.env());
        command
    }

    fn dlock(&self, case: &Case<'_>, mode: &str) -> Command {
        self.worker(&[case.backend, case.flavour, case.key, mode])
    }

    fn sqlalchemy(&self, case: &Case<'_>, mode: &str) -> Command {
        let mut command = Command::new(self.python);
        command
            .arg(
                project_root()
                    .join("xtask")
                    .join("interop")
                    .join("holder.py"),
            )
            .args([case.python_url, case.key, mode]);
        command
    }

    /// sqlalchemy-dlock holds: dlock's try finds the key busy, then free once it let go.
    fn python_holds(&self, case: &Case<'_>) -> Result<()> {
        let holder = Holder::start(self.sqlalchemy(case, "hold"))?;
        let busy = said(self.dlock(case, "try"))?;
        let released = holder.release()?;
        expect("dlock's try while sqlalchemy-dlock held", &busy, "busy")?;
        expect("sqlalchemy-dlock's release", &released, "released")?;
        expect(
            "dlock's try after it let go",
            &said(self.dlock(case, "try"))?,
            "acquired",
        )
    }

    /// dlock holds: sqlalchemy-dlock's try finds the key busy, then free once it let go.
    fn dlock_holds(&self, case: &Case<'_>) -> Result<()> {
        let holder = Holder::start(self.dlock(case, "hold"))?;
        let busy = said(self.sqlalchemy(case, "try"))?;
        let released = holder.release()?;
        expect("sqlalchemy-dlock's try while dlock held", &busy, "busy")?;
        expect("dlock's release", &released, "released")?;
        expect(
            "sqlalchemy-dlock's try after it let go",
            &said(self.sqlalchemy(case, "try"))?,
            "acquired",
        )
    }
}

impl Sides<'_> {
    /// sqlalchemy-dlock holds a transaction lock: dlock's transaction lock is kept out until
    /// the transaction commits; then the other way round.
    fn transaction_locks(&self, case: &Case<'_>) -> Result<()> {
        let holder = Holder::start(self.sqlalchemy(case, "hold-xact"))?;
        let busy = said(self.dlock(case, "try"))?;
        let released = holder.release()?;
        expect(
            "dlock's try while sqlalchemy-dlock's transaction held",
            &busy,
            "busy",
        )?;
        expect("sqlalchemy-dlock's commit", &released, "released")?;
        let holder = Holder::start(self.dlock(case, "hold"))?;
        let busy = said(self.sqlalchemy(case, "try-xact"))?;
        let released = holder.release()?;
        expect(
            "sqlalchemy-dlock's transaction try while dlock's transaction held",
            &busy,
            "busy",
        )?;
        expect("dlock's commit", &released, "released")?;
        expect(
            "sqlalchemy-dlock's transaction try after the commit",
            &said(self.sqlalchemy(case, "try-xact"))?,
            "acquired",
        )
    }

    /// One side holds a shared lock: the other's shared try gets in, its exclusive try not.
    fn shared_holds(&self, case: &Case<'_>, holder: Side) -> Result<()> {
        let (hold, other): (Command, &dyn Fn(&str) -> Command) = match holder {
            Side::Python => (self.sqlalchemy(case, "hold-shared"), &|mode| {
                self.dlock(case, mode)
            }),
            Side::Dlock => (self.dlock(case, "hold-shared"), &|mode| {
                self.sqlalchemy(case, mode)
            }),
        };
        let holder = Holder::start(hold)?;
        let shared = said(other("try-shared"))?;
        let exclusive = said(other("try"))?;
        let released = holder.release()?;
        expect("a shared try beside a shared holder", &shared, "acquired")?;
        expect(
            "an exclusive try beside a shared holder",
            &exclusive,
            "busy",
        )?;
        expect("the shared holder's release", &released, "released")
    }
}

fn expect(what: &str, said: &str, wanted: &str) -> Result<()> {
    if said == wanted {
        Ok(())
    } else {
        Err(format!("{what} said {said:?}, not {wanted:?}").into())
    }
}

/// What `command` printed last, once it ended well.
fn said(mut command: Command) -> Result<String> {
    let output = command.stderr(Stdio::inherit()).output()?;
    if !output.status.success() {
        return Err(format!("{command:?} failed ({})", output.status).into());
    }
    let stdout = String::from_utf8(output.stdout)?;
    Ok(stdout.lines().last().unwrap_or_default().trim().to_owned())
}

/// A side holding a key until told to let go.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    /// Starts `command` and waits until it says it holds the key.
    fn start(mut command: Command) -> Result<Holder> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut holder = Holder {
            child,
            stdin,
            stdout,
        };
        let first = holder.line()?;
        if first != "held" {
            let _ = holder.child.kill();
            return Err(format!("{command:?} said {first:?}, not \"held\"").into());
        }
        Ok(holder)
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line.trim().to_owned())
    }

    /// Tells it to let go; what it said then.
    fn release(mut self) -> Result<String> {
        if let Some(mut stdin) = self.stdin.take() {
            writeln!(stdin)?;
        }
        let said = self.line()?;
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("the holder failed ({status})").into());
        }
        Ok(said)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // A holder left behind by an error would hold its key for the next case.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_urls_keep_everything_but_the_scheme() {
        assert_eq!(
            python_url(
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgresql+psycopg2"
            ),
            "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(
            python_url("mysql://dlock:dlock@127.0.0.1:3306/dlock", "mysql+pymysql"),
            "mysql+pymysql://dlock:dlock@127.0.0.1:3306/dlock"
        );
    }
}
