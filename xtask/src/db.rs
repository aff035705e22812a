//! Throwaway PostgreSQL and MariaDB servers on loopback, for tests, the demo and benchmarks.
//!
//! Each server lives in its own temporary directory, listens on a free loopback port, and is
//! stopped and deleted by [`Servers::stop`]. `cargo xtask db up` records what it started in a
//! state file under `target/`, so `cargo xtask db down` can find it from another process.

use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Result;

/// The environment variable that names a PostgreSQL server to use instead of starting one.
pub(crate) const PG_URL_VAR: &str = "DLOCK_PG_URL";
/// The environment variable that names a MySQL or MariaDB server to use instead of starting one.
pub(crate) const MYSQL_URL_VAR: &str = "DLOCK_MYSQL_URL";

/// How long a server may take to accept connections before we give up on it.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after it was asked to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The servers the tests talk to: each either started here (and recorded in [`STARTED`]) or
/// given by the user through its URL variable (and left alone).
#[derive(Debug, Default)]
pub(crate) struct Servers {
    pub(crate) pg_url: String,
    pub(crate) mysql_url: String,
}

/// Every server this process is starting or has started. A server is entered here before its
/// directory is made, so an interrupt at any point finds everything there is to clean up.
static STARTED: Mutex<Vec<Started>> = Mutex::new(Vec::new());

/// A server this process started, with what it takes to stop it and clean up after it.
#[derive(Debug)]
struct Started {
    name: &'static str,
    /// The temporary directory holding its data, socket and log; deleted on stop.
    dir: PathBuf,
    /// The server's pid, once known from a previous process's state file.
    pid: Option<u32>,
    /// The child handle, when this process spawned the server itself, so it can be reaped.
    child: Option<Child>,
}

impl Started {
    /// The server's process: known, spawned by us, or read from the pid file the server
    /// writes as it starts (PostgreSQL's postmaster is started by pg_ctl, not by us).
    fn pid(&mut self) -> Option<u32> {
        let pid_file = match self.name {
            "postgres" => self.dir.join("data").join("postmaster.pid"),
            "pgbouncer" => self.dir.join("pgbouncer.pid"),
            _ => self.dir.join("mysqld.pid"),
        };
        let from_file = || -> Option<u32> {
            fs::read_to_string(&pid_file)
                .ok()?
                .lines()
                .next()?
                .trim()
                .parse()
                .ok()
        };
        // The pid file names the server running now: a server a fault test restarted runs
        // under a new pid, while the child we spawned, or the pid a state file recorded, is
        // the old one. Without a running pid file's server, fall back to what we know.
        from_file()
            .filter(|pid| is_running(*pid))
            .or(self.pid)
            .or(self.child.as_ref().map(Child::id))
    }

    fn stop(mut self) {
        if let Some(pid) = self.pid() {
            eprintln!("xtask: stopping {} (pid {pid})", self.name);
            // The child we spawned is this server only if a fault test did not restart it.
            let child = self.child.as_mut().filter(|child| child.id() == pid);
            stop_process(pid, stop_signal(self.name), child);
            if is_running(pid) {
                // Deleting the files of a running server would leave it broken and unowned.
                eprintln!(
                    "xtask: {} (pid {pid}) is still running; its files stay in {}",
                    self.name,
                    self.dir.display()
                );
                return;
            }
        }
        if self.dir.exists() {
            if let Err(error) = fs::remove_dir_all(&self.dir) {
                eprintln!("xtask: could not remove {}: {error}", self.dir.display());
            }
        }
        if let Some(parent) = self.dir.parent() {
            // Removes the shared base directory once its last server is gone.
            let _ = fs::remove_dir(parent);
        }
    }
}

fn started() -> MutexGuard<'static, Vec<Started>> {
    STARTED.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Enters a server into [`STARTED`] before anything of it exists on disk.
fn register(name: &'static str, dir: &Path) {
    started().push(Started {
        name,
        dir: dir.to_path_buf(),
        pid: None,
        child: None,
    });
}

/// Stops every server this process started, then exits with `code` without letting go of
/// the registry, so the main thread cannot start another server meanwhile. For signal
/// handlers.
pub(crate) fn stop_all_and_exit(code: i32) -> ! {
    let mut started = started();
    let helper = RUNNING_HELPER.load(Ordering::SeqCst);
    if helper != 0 {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{helper}")])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while is_running(helper) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
    for server in started.drain(..).rev() {
        server.stop();
    }
    std::process::exit(code)
}

impl Servers {
    /// Uses the servers named in the environment, and starts the ones that are not.
    pub(crate) fn from_env_or_start() -> Result<Servers> {
        let mut servers = Servers::default();
        match servers.fill_from_env_or_start() {
            Ok(()) => Ok(servers),
            Err(error) => {
                Servers::stop();
                Err(error)
            }
        }
    }

    fn fill_from_env_or_start(&mut self) -> Result<()> {
        let base = unique_temp_dir()?;
        self.pg_url = match std::env::var(PG_URL_VAR) {
            Ok(url) if !url.is_empty() => {
                eprintln!("xtask: using the PostgreSQL server of {PG_URL_VAR}");
                check_reachable(PG_URL_VAR, &url)?;
                url
            }
            _ => start_postgres(&base.join("postgres"))?,
        };
        self.mysql_url = match std::env::var(MYSQL_URL_VAR) {
            Ok(url) if !url.is_empty() => {
                eprintln!("xtask: using the MySQL server of {MYSQL_URL_VAR}");
                check_reachable(MYSQL_URL_VAR, &url)?;
                url
            }
            _ => start_mariadb(&base.join("mariadb"))?,
        };
        // The base directory only holds the servers' own directories; remove it when empty.
        let _ = fs::remove_dir(&base);
        Ok(())
    }

    /// The environment variables that point tests at these servers.
    pub(crate) fn env(&self) -> [(&'static str, &str); 2] {
        [(PG_URL_VAR, &self.pg_url), (MYSQL_URL_VAR, &self.mysql_url)]
    }

    /// The process ids of the servers this process started: empty for servers named by the
    /// environment's URLs.
    pub(crate) fn pids() -> Vec<u32> {
        started().iter_mut().filter_map(Started::pid).collect()
    }

    /// Stops every server this process started (or loaded from the state file) and deletes
    /// its directory. Safe to call twice.
    pub(crate) fn stop() {
        let taken: Vec<Started> = started().drain(..).rev().collect();
        for server in taken {
            server.stop();
        }
    }

    /// Writes what `db down` needs to find these servers from another process.
    fn save(&self, path: &Path) -> Result<()> {
        let mut text = String::new();
        for (name, value) in self.env() {
            text.push_str(&format!("url {name}={value}\n"));
        }
        for server in started().iter_mut() {
            let pid = server.pid().ok_or("a started server has no pid")?;
            let dir = server.dir.display();
            text.push_str(&format!("server {} {pid} {dir}\n", server.name));
        }
        fs::create_dir_all(path.parent().expect("the state file lives in target/"))?;
        fs::write(path, text)?;
        Ok(())
    }

    /// Reads what `db up` saved, entering its servers into [`STARTED`].
    fn load(path: &Path) -> Result<Servers> {
        let text = fs::read_to_string(path)?;
        let mut servers = Servers::default();
        for line in text.lines() {
            let mut words = line.splitn(4, ' ');
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("url"), Some(assignment), None, None) => match assignment.split_once('=') {
                    Some((PG_URL_VAR, url)) => servers.pg_url = url.to_owned(),
                    Some((MYSQL_URL_VAR, url)) => servers.mysql_url = url.to_owned(),
                    _ => return Err(format!("unknown line in {}: {line}", path.display()).into()),
                },
                (Some("server"), Some(name), Some(pid), Some(dir)) => {
                    started().push(Started {
                        name: if name == "postgres" {
                            "postgres"
                        } else {
                            "mariadb"
                        },
                        dir: PathBuf::from(dir),
                        pid: Some(pid.parse()?),
                        child: None,
                    });
                }
                _ => return Err(format!("unknown line in {}: {line}", path.display()).into()),
            }
        }
        Ok(servers)
    }
}

/// Where `db up` records the servers it started.
fn state_file() -> PathBuf {
    crate::target_dir().join("xtask-db.state")
}

/// `cargo xtask db up | down | env`.
pub(crate) fn command(args: &[String]) -> Result<()> {
    let state = state_file();
    match args.first().map(String::as_str) {
        Some("up") => {
            if state.exists() {
                let servers = Servers::load(&state)?;
                eprintln!("xtask: servers are already up (`cargo xtask db down` stops them)");
                print_env(&servers);
                return Ok(());
            }
            let servers = Servers::from_env_or_start()?;
            servers.save(&state)?;
            print_env(&servers);
            eprintln!("xtask: servers are up; `eval \"$(cargo xtask db env)\"` exports their URLs");
            Ok(())
        }
        Some("down") => {
            if !state.exists() {
                eprintln!(
                    "xtask: no servers recorded in {}; nothing to stop",
                    state.display()
                );
                return Ok(());
            }
            Servers::load(&state)?;
            Servers::stop();
            fs::remove_file(&state)?;
            Ok(())
        }
        Some("env") => {
            if !state.exists() {
                return Err("no servers are up: run `cargo xtask db up` first".into());
            }
            print_env(&Servers::load(&state)?);
            Ok(())
        }
        _ => Err("usage: cargo xtask db up | down | env".into()),
    }
}

fn print_env(servers: &Servers) {
    for (name, value) in servers.env() {
        println!("export {name}={value}");
    }
}

/// A directory of our own under the system's temporary directory.
fn unique_temp_dir() -> Result<PathBuf> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
    let dir = std::env::temp_dir().join(format!("dlock-db-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A loopback port nobody listens on now. Another process could take it before the server
/// binds it; the server then fails to start and says so in its log.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

/// The process group of the helper command running now (initdb, pg_ctl, apt-get, ...), or 0,
/// so an interrupt can stop it before it deletes the directory the helper writes into.
static RUNNING_HELPER: AtomicU32 = AtomicU32::new(0);

/// Runs a helper command in a process group of its own, failing with its output when it
/// fails.
fn run(command: &mut Command) -> Result<()> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|error| format!("{command:?}: {error}"))?;
    RUNNING_HELPER.store(child.id(), Ordering::SeqCst);
    let output = child.wait_with_output();
    RUNNING_HELPER.store(0, Ordering::SeqCst);
    let output = output?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{command:?} failed with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
    .into())
}

/// A command run as `user` when we are root (database servers refuse to run as root), and as
/// ourselves otherwise.
fn command_as(user: &str, program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", user, "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn chown(user: &str, dir: &Path) -> Result<()> {
    if is_root() {
        run(Command::new("chown")
            .args(["-R", &format!("{user}:")])
            .arg(dir))?;
    }
    Ok(())
}

/// Installs Debian packages when we are root on Debian or Ubuntu, and otherwise says exactly
/// what to install.
fn install_packages(what: &str, packages: &[&str], url_var: &str) -> Result<()> {
    let apt = Path::new("/usr/bin/apt-get");
    if !(is_root() && apt.exists()) {
        return Err(format!(
            "{what} is not installed. Install it (on Debian or Ubuntu: `sudo apt-get install \
             {}`), or point the tests at a running server with {url_var}",
            packages.join(" ")
        )
        .into());
    }
    eprintln!(
        "xtask: {what} is not installed; installing {} with apt-get",
        packages.join(" ")
    );
    // A package's maintainer scripts would start the system's own server; we run our own.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let block_services = !policy.exists();
    if block_services {
        fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        run(Command::new("chmod").arg("755").arg(policy))?;
    }
    let result = run(Command::new(apt).args(["update", "-q"])).and_then(|()| {
        run(Command::new(apt)
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    });
    if block_services {
        fs::remove_file(policy)?;
    }
    result
}

/// The directory of PostgreSQL's server binaries: `DLOCK_PG_BIN`, or the newest
/// `/usr/lib/postgresql/*/bin`, or wherever `initdb` is on the `PATH`.
fn find_postgres_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DLOCK_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    find_on_path("initdb").and_then(|initdb| initdb.parent().map(Path::to_path_buf))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.exists())
}

fn start_postgres(dir: &Path) -> Result<String> {
    start_postgres_with(&system_postgres_bin()?, dir)
}

/// A server started for one matrix row, stopped when the row is done.
#[derive(Debug)]
pub(crate) struct OwnServer {
    pub(crate) url: String,
    /// The server's directory: its data, socket, log, pid file and (MariaDB) restart script.
    pub(crate) dir: PathBuf,
}

impl OwnServer {
    /// Stops the server and deletes its files.
    pub(crate) fn stop(self) {
        let taken: Vec<Started> = {
            let mut started = started();
            let (this, rest): (Vec<Started>, Vec<Started>) =
                started.drain(..).partition(|server| server.dir == self.dir);
            *started = rest;
            this
        };
        for server in taken {
            server.stop();
        }
    }
}

/// The system's PostgreSQL programs, installed first if missing.
pub(crate) fn system_postgres_bin() -> Result<PathBuf> {
    match find_postgres_bin() {
        Some(bin) => Ok(bin),
        None => {
            install_packages("the PostgreSQL server", &["postgresql"], PG_URL_VAR)?;
            Ok(
                find_postgres_bin()
                    .ok_or("PostgreSQL was installed but initdb is still missing")?,
            )
        }
    }
}

/// Starts MariaDB in a temporary directory of its own.
pub(crate) fn start_mariadb_own() -> Result<OwnServer> {
    let dir = unique_temp_dir()?.join("mariadb");
    match start_mariadb(&dir) {
        Ok(url) => Ok(OwnServer { url, dir }),
        Err(error) => {
            OwnServer {
                url: String::new(),
                dir,
            }
            .stop();
            Err(error)
        }
    }
}

/// Starts PostgreSQL from the programs in `bin`, in a temporary directory of its own.
pub(crate) fn start_postgres_from(bin: &Path) -> Result<OwnServer> {
    let dir = unique_temp_dir()?.join("postgres");
    match start_postgres_with(bin, &dir) {
        Ok(url) => Ok(OwnServer { url, dir }),
        Err(error) => {
            OwnServer {
                url: String::new(),
                dir,
            }
            .stop();
            Err(error)
        }
    }
}

fn start_postgres_with(bin: &Path, dir: &Path) -> Result<String> {
    let port = init_postgres(bin, dir)?;
    pg_ctl_start(bin, dir, port, "PostgreSQL", "")
}

/// Makes a PostgreSQL data directory in `dir/data`, and picks the port its server will take.
fn init_postgres(bin: &Path, dir: &Path) -> Result<u16> {
    let data = dir.join("data");
    register("postgres", dir);
    fs::create_dir_all(dir)?;
    chown("postgres", dir)?;
    let port = free_port()?;
    eprintln!(
        "xtask: starting PostgreSQL from {} on port {port}",
        bin.display()
    );
    run(command_as("postgres", &bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-A",
            "trust",
            "--no-sync",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
        ]))?;
    Ok(port)
}

/// Starts the PostgreSQL data directory `dir/data` on `port` with the matrix's settings and
/// `extra` server options (`what` names it in an error), and gives its URL.
fn pg_ctl_start(bin: &Path, dir: &Path, port: u16, what: &str, extra: &str) -> Result<String> {
    let (data, log) = (dir.join("data"), dir.join("server.log"));
    // A standby needs max_connections at least the primary's: both take the same.
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 {extra}",
        dir.display()
    );
    let started = run(command_as("postgres", &bin.join("pg_ctl"))
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .args(["-o", &options, "-w", "-t", "60", "start"]));
    if let Err(error) = started {
        let log = fs::read_to_string(&log).unwrap_or_default();
        return Err(format!("{what} did not start: {error}\nits log says:\n{log}").into());
    }
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

/// MariaDB's programs: the server and the data-directory initializer.
fn find_mariadb() -> Option<(PathBuf, PathBuf)> {
    let server = find_on_path("mariadbd").or_else(|| find_on_path("mysqld"))?;
    let install_db =
        find_on_path("mariadb-install-db").or_else(|| find_on_path("mysql_install_db"))?;
    Some((server, install_db))
}

/// The account the tests use: a password account reachable over TCP, with every privilege
/// (tests `KILL` other sessions). It is (re)created at each start by `--init-file`.
const MARIADB_INIT_SQL: &str = "\
CREATE DATABASE IF NOT EXISTS dlock;
CREATE USER IF NOT EXISTS 'dlock'@'127.0.0.1' IDENTIFIED BY 'dlock';
GRANT ALL PRIVILEGES ON *.* TO 'dlock'@'127.0.0.1' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'dlock'@'%' IDENTIFIED BY 'dlock';
GRANT ALL PRIVILEGES ON *.* TO 'dlock'@'%' WITH GRANT OPTION;
";

fn start_mariadb(dir: &Path) -> Result<String> {
    start_mariadb_with(dir, &[])
}

/// Starts MariaDB in `dir` with `extra` server options.
fn start_mariadb_with(dir: &Path, extra: &[String]) -> Result<String> {
    let (server, install_db) = match find_mariadb() {
        Some(found) => found,
        None => {
            install_packages("the MariaDB server", &["mariadb-server"], MYSQL_URL_VAR)?;
            find_mariadb().ok_or("mariadb-server was installed but mariadbd is still missing")?
        }
    };
    let data = dir.join("data");
    let log = dir.join("server.log");
    let init = dir.join("init.sql");
    register("mariadb", dir);
    fs::create_dir_all(dir)?;
    fs::write(&init, MARIADB_INIT_SQL)?;
    chown("mysql", dir)?;
    let port = free_port()?;
    eprintln!(
        "xtask: starting MariaDB from {} on port {port}",
        server.display()
    );
    let mut install = Command::new(&install_db);
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args(["--auth-root-authentication-method=socket", "--skip-test-db"]);
    if is_root() {
        install.arg("--user=mysql");
    }
    run(&mut install)?;

    let mut command = Command::new(&server);
    command
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
        .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
        .arg(format!("--log-error={}", log.display()))
        .arg(format!("--init-file={}", init.display()))
        .arg(format!("--port={port}"))
        .args([
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--skip-log-bin",
            // MariaDB lists named locks only through this plugin (`dlock holders` without a
            // key); shipped with the server, not loaded by default.
            "--plugin-load-add=metadata_lock_info",
            "--max-connections=500",
            // Fencing tokens are handed out only where commits are durable.
            "--innodb-flush-log-at-trx-commit=1",
            "--innodb-buffer-pool-size=64M",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so a Ctrl-C meant for cargo reaches it only through us, and
        // we stop it in order.
        .process_group(0);
    if is_root() {
        command.arg("--user=mysql");
    }
    // How to start this server again, for the fault tests that restart it.
    let mut script = String::from("exec setsid");
    for part in std::iter::once(command.get_program()).chain(command.get_args()) {
        script.push_str(&format!(
            " '{}'",
            part.to_string_lossy().replace('\'', "'\\''")
        ));
    }
    script.push_str(" </dev/null >/dev/null 2>&1 &\n");
    fs::write(dir.join("restart.sh"), script)?;
    let child = command
        .spawn()
        .map_err(|error| format!("{server:?}: {error}"))?;
    let pid = child.id();
    if let Some(entry) = started().iter_mut().find(|entry| entry.dir == dir) {
        entry.child = Some(child);
    }
    wait_for_port(port, pid, &log, "MariaDB")?;
    Ok(format!("mysql://dlock:dlock@127.0.0.1:{port}/dlock"))
}

/// A PostgreSQL and a MariaDB server of one run's own, which it may freeze and restart: the
/// fault tests and the nemesis find them through [`RestartableServers::env`].
#[derive(Debug)]
pub(crate) struct RestartableServers {
    pub(crate) bin: PathBuf,
    pub(crate) pg: OwnServer,
    pub(crate) mariadb: OwnServer,
}

impl RestartableServers {
    /// Starts both; on failure, stops what was started.
    pub(crate) fn start() -> Result<RestartableServers> {
        let bin = system_postgres_bin()?;
        let pg = start_postgres_from(&bin)?;
        match start_mariadb_own() {
            Ok(mariadb) => Ok(RestartableServers { bin, pg, mariadb }),
            Err(error) => {
                pg.stop();
                Err(error)
            }
        }
    }

    /// The URLs, and the directories and programs a restart needs.
    pub(crate) fn env(&self) -> [(&'static str, &std::ffi::OsStr); 5] {
        [
            (PG_URL_VAR, self.pg.url.as_ref()),
            (MYSQL_URL_VAR, self.mariadb.url.as_ref()),
            ("DLOCK_FAULT_PG_DIR", self.pg.dir.as_os_str()),
            ("DLOCK_FAULT_PG_BIN", self.bin.as_os_str()),
            ("DLOCK_FAULT_MYSQL_DIR", self.mariadb.dir.as_os_str()),
        ]
    }

    /// Stops both and deletes their files.
    pub(crate) fn stop(self) {
        self.pg.stop();
        self.mariadb.stop();
    }
}

/// A PostgreSQL and a MariaDB server that accept only TLS connections, with certificates of a
/// throwaway certificate authority: PostgreSQL with `ssl = on` and only `hostssl` lines in its
/// `pg_hba.conf`, MariaDB with `require_secure_transport = ON`. The tests find the authority's
/// certificate in `DLOCK_TLS_CA`, and the servers under the usual URL variables.
#[derive(Debug)]
pub(crate) struct TlsServers {
    certs: PathBuf,
    pg: OwnServer,
    mariadb: OwnServer,
}

impl TlsServers {
    /// Makes the certificates and starts both; on failure, stops what was started.
    pub(crate) fn start() -> Result<TlsServers> {
        let certs = unique_temp_dir()?.join("certs");
        make_certificates(&certs)?;
        let pg_dir = unique_temp_dir()?.join("postgres");
        let pg = match start_postgres_tls(&pg_dir, &certs) {
            Ok(url) => OwnServer { url, dir: pg_dir },
            Err(error) => {
                OwnServer {
                    url: String::new(),
                    dir: pg_dir,
                }
                .stop();
                let _ = fs::remove_dir_all(&certs);
                return Err(error);
            }
        };
        let my_dir = unique_temp_dir()?.join("mariadb");
        let options = [
            format!("--ssl-ca={}", certs.join("ca.pem").display()),
            format!("--ssl-cert={}", certs.join("server.pem").display()),
            format!("--ssl-key={}", certs.join("server.key").display()),
            "--require-secure-transport=ON".to_owned(),
        ];
        match start_mariadb_with(&my_dir, &options) {
            Ok(url) => Ok(TlsServers {
                certs,
                pg,
                mariadb: OwnServer { url, dir: my_dir },
            }),
            Err(error) => {
                OwnServer {
                    url: String::new(),
                    dir: my_dir,
                }
                .stop();
                pg.stop();
                let _ = fs::remove_dir_all(&certs);
                Err(error)
            }
        }
    }

    /// The URLs, and where the authority's certificate is.
    pub(crate) fn env(&self) -> [(&'static str, String); 3] {
        [
            (PG_URL_VAR, self.pg.url.clone()),
            (MYSQL_URL_VAR, self.mariadb.url.clone()),
            (
                "DLOCK_TLS_CA",
                self.certs.join("ca.pem").display().to_string(),
            ),
        ]
    }

    /// Stops both and deletes their files and the certificates.
    pub(crate) fn stop(self) {
        self.pg.stop();
        self.mariadb.stop();
        let _ = fs::remove_dir_all(&self.certs);
    }
}

/// Writes a certificate authority (`ca.pem`) and a server certificate it signed for
/// `127.0.0.1` and `localhost` (`server.pem`, `server.key`) into `dir`, with the `openssl`
/// command. Every file is readable by every user: the servers run as users of their own.
fn make_certificates(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let openssl = find_on_path("openssl").ok_or(
        "the TLS row makes its certificates with the openssl command, which is missing \
         (apt-get install openssl)",
    )?;
    let path = |name: &str| dir.join(name).display().to_string();
    run(Command::new(&openssl).args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=dlock test authority",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.pem"),
    ]))?;
    run(Command::new(&openssl).args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &path("server.key"),
        "-out",
        &path("server.csr"),
    ]))?;
    fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
         basicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n",
    )?;
    run(Command::new(&openssl).args([
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-extfile",
        &path("server.ext"),
        "-out",
        &path("server.pem"),
    ]))?;
    for name in ["ca.pem", "server.pem", "server.key"] {
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Starts the system's PostgreSQL in `dir`, accepting only TLS connections with the
/// certificate in `certs`.
fn start_postgres_tls(dir: &Path, certs: &Path) -> Result<String> {
    let bin = system_postgres_bin()?;
    let port = init_postgres(&bin, dir)?;
    // The server wants its key owned by its own user and readable by nobody else.
    for name in ["server.pem", "server.key"] {
        fs::copy(certs.join(name), dir.join(name))?;
    }
    fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o600))?;
    fs::write(
        dir.join("pg_hba.conf"),
        "hostssl all all 127.0.0.1/32 trust\n",
    )?;
    chown("postgres", dir)?;
    let extra = format!(
        "-c ssl=on -c ssl_cert_file={dir}/server.pem -c ssl_key_file={dir}/server.key \
         -c hba_file={dir}/pg_hba.conf",
        dir = dir.display()
    );
    let url = pg_ctl_start(&bin, dir, port, "PostgreSQL with TLS only", &extra)?;
    Ok(format!("{url}?sslmode=require"))
}

/// The deployments where a lock cannot exclude, beside the primary of a row's own
/// PostgreSQL server: pgbouncer in each pooling mode in front of it, a streaming standby of
/// it, a one-node MariaDB Galera cluster, and a MariaDB that answers `VERSION()` as TiDB does.
/// Each is named to the tests by a variable.
#[derive(Debug, Default)]
pub(crate) struct Deployments {
    pub(crate) env: Vec<(&'static str, String)>,
    servers: Vec<OwnServer>,
}

impl Deployments {
    /// Starts them all; on failure, stops what was started.
    pub(crate) fn start(bin: &Path, primary: &OwnServer) -> Result<Deployments> {
        let mut deployments = Deployments::default();
        match deployments.start_all(bin, primary) {
            Ok(()) => Ok(deployments),
            Err(error) => {
                deployments.stop();
                Err(error)
            }
        }
    }

    fn start_all(&mut self, bin: &Path, primary: &OwnServer) -> Result<()> {
        let primary_port = url_port(&primary.url)?;
        for (variable, mode) in [
            ("DLOCK_PGBOUNCER_SESSION_URL", "session"),
            ("DLOCK_PGBOUNCER_TRANSACTION_URL", "transaction"),
            ("DLOCK_PGBOUNCER_STATEMENT_URL", "statement"),
        ] {
            let dir = unique_temp_dir()?.join("pgbouncer");
            let started = start_pgbouncer(&dir, primary_port, mode, None, "");
            self.keep(variable, dir, started)?;
        }
        // Transaction pooling whose reuse order defeats an inference: server connections
        // taken in turn, and at least four of them open.
        let dir = unique_temp_dir()?.join("pgbouncer");
        let started = start_pgbouncer(
            &dir,
            primary_port,
            "transaction",
            None,
            "server_round_robin = 1\nmin_pool_size = 4\n",
        );
        self.keep("DLOCK_PGBOUNCER_ROUND_ROBIN_URL", dir, started)?;
        // Two pgbouncer processes sharing one port (the kernel spreads connections over
        // them), each with server sessions of its own.
        let shared_port = free_port()?;
        for process in 0..2 {
            let dir = unique_temp_dir()?.join("pgbouncer");
            let started = start_pgbouncer(
                &dir,
                primary_port,
                "transaction",
                Some(shared_port),
                "so_reuseport = 1\n",
            );
            let url = started?;
            self.servers.push(OwnServer {
                url: url.clone(),
                dir,
            });
            if process == 0 {
                self.env.push(("DLOCK_PGBOUNCER_REUSEPORT_URL", url));
            }
        }
        // Two standbys: one stays a standby, the other is promoted by the test that shows a
        // promoted server accepts locks.
        for variable in ["DLOCK_PG_STANDBY_URL", "DLOCK_PG_PROMOTABLE_URL"] {
            let dir = unique_temp_dir()?.join("postgres");
            let started = start_standby(bin, &dir, primary_port);
            self.keep(variable, dir, started)?;
        }
        let dir = unique_temp_dir()?.join("mariadb");
        let started = start_galera(&dir);
        self.keep("DLOCK_GALERA_URL", dir, started)?;
        // A stand-in for TiDB, which cannot run here: a MariaDB whose version reads as TiDB's.
        let dir = unique_temp_dir()?.join("mariadb");
        let started = start_mariadb_with(&dir, &["--version=8.0.11-TiDB-v7.5.0".to_owned()]);
        self.keep("DLOCK_TIDB_STANDIN_URL", dir, started)
    }

    /// Records a server whose start was tried in `dir`, so that it is stopped, and its URL
    /// under `variable` when it started.
    fn keep(
        &mut self,
        variable: &'static str,
        dir: PathBuf,
        started: Result<String>,
    ) -> Result<()> {
        let url = started?;
        self.servers.push(OwnServer {
            url: url.clone(),
            dir,
        });
        self.env.push((variable, url));
        Ok(())
    }

    /// Stops them all and deletes their files.
    pub(crate) fn stop(self) {
        for server in self.servers.into_iter().rev() {
            server.stop();
        }
    }
}

/// The port of a `scheme://user@host:port/database` URL.
fn url_port(url: &str) -> Result<u16> {
    let authority = url.split("://").nth(1).unwrap_or(url);
    let authority = authority.split('/').next().unwrap_or(authority);
    let port = authority.rsplit_once(':').map(|(_, port)| port);
    Ok(port.ok_or_else(|| format!("no port in {url}"))?.parse()?)
}

/// The pgbouncer program, installed first if missing.
fn pgbouncer_program() -> Result<PathBuf> {
    if let Some(program) = find_on_path("pgbouncer") {
        return Ok(program);
    }
    install_packages("pgbouncer", &["pgbouncer"], "DLOCK_PGBOUNCER_*_URL")?;
    find_on_path("pgbouncer").ok_or_else(|| "pgbouncer was installed but is still missing".into())
}

/// Starts pgbouncer in `mode` in front of the PostgreSQL server on `primary_port`, on `port`
/// (a free one when `None`), with `extra` settings. It refuses to run as root, so it runs as
/// `postgres`; its pool is larger than any test's concurrency, so no client waits for a
/// server connection.
fn start_pgbouncer(
    dir: &Path,
    primary_port: u16,
    mode: &str,
    port: Option<u16>,
    extra: &str,
) -> Result<String> {
    let program = pgbouncer_program()?;
    register("pgbouncer", dir);
    fs::create_dir_all(dir)?;
    let port = match port {
        Some(port) => port,
        None => free_port()?,
    };
    let users = dir.join("users.txt");
    // pgbouncer needs an auth file even when it trusts every login.
    fs::write(&users, "\"postgres\" \"\"\n")?;
    let config = dir.join("pgbouncer.ini");
    fs::write(
        &config,
        format!(
            "[databases]\n\
             postgres = host=127.0.0.1 port={primary_port} dbname=postgres user=postgres\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {users}\n\
             pool_mode = {mode}\n\
             default_pool_size = 40\n\
             max_client_conn = 1000\n\
             logfile = {log}\n\
             pidfile = {pid}\n\
             {extra}",
            users = users.display(),
            log = dir.join("pgbouncer.log").display(),
            pid = dir.join("pgbouncer.pid").display(),
        ),
    )?;
    chown("postgres", dir)?;
    eprintln!(
        "xtask: starting pgbouncer ({mode} pooling) on port {port} {}",
        extra.replace('\n', " ")
    );
    let mut command = Command::new(&program);
    if is_root() {
        // pgbouncer refuses to run as root; it switches to this user itself.
        command.args(["-u", "postgres"]);
    }
    command
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let child = command
        .spawn()
        .map_err(|error| format!("{program:?}: {error}"))?;
    let pid = child.id();
    if let Some(entry) = started().iter_mut().find(|entry| entry.dir == dir) {
        entry.child = Some(child);
    }
    let log = dir.join("pgbouncer.log");
    wait_for_port(port, pid, &log, "pgbouncer")?;
    // Another process on a shared port answers before this one listens: wait for its log.
    let deadline = Instant::now() + START_TIMEOUT;
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening on")
    {
        if !is_running(pid) || Instant::now() > deadline {
            let log = fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("pgbouncer did not start; its log says:\n{log}").into());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

/// Starts a hot standby of the PostgreSQL server on `primary_port`, streaming from it.
fn start_standby(bin: &Path, dir: &Path, primary_port: u16) -> Result<String> {
    let data = dir.join("data");
    register("postgres", dir);
    fs::create_dir_all(dir)?;
    chown("postgres", dir)?;
    let port = free_port()?;
    eprintln!("xtask: starting a PostgreSQL standby on port {port}");
    run(command_as("postgres", &bin.join("pg_basebackup"))
        .arg("-D")
        .arg(&data)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port.to_string(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "--no-sync",
        ]))?;
    pg_ctl_start(bin, dir, port, "the standby", "")
}

/// Starts MariaDB as the one node of a Galera cluster of its own.
fn start_galera(dir: &Path) -> Result<String> {
    let provider = [
        "/usr/lib/galera/libgalera_smm.so",
        "/usr/lib/libgalera_smm.so",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|path| path.exists());
    let provider = match provider {
        Some(provider) => provider,
        None => {
            install_packages("Galera", &["galera-4"], "DLOCK_GALERA_URL")?;
            PathBuf::from("/usr/lib/galera/libgalera_smm.so")
        }
    };
    let (gcomm, ist) = (free_port()?, free_port()?);
    start_mariadb_with(
        dir,
        &[
            "--wsrep-on=ON".to_owned(),
            format!("--wsrep-provider={}", provider.display()),
            "--wsrep-cluster-address=gcomm://".to_owned(),
            "--wsrep-node-address=127.0.0.1".to_owned(),
            format!(
                "--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{gcomm};\
                 ist.recv_addr=127.0.0.1:{ist}"
            ),
            "--binlog-format=ROW".to_owned(),
            "--innodb-autoinc-lock-mode=2".to_owned(),
        ],
    )
}

/// Waits until a server started as `pid` takes connections on `port`.
fn wait_for_port(port: u16, pid: u32, log: &Path, what: &str) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if !is_running(pid) || Instant::now() > deadline {
            let log = fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{what} did not start; its log says:\n{log}").into());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Fails with a clear message when the server a URL variable names takes no connections: a
/// variable left over from servers that were stopped would otherwise fail every test instead.
fn check_reachable(variable: &str, url: &str) -> Result<()> {
    use std::net::ToSocketAddrs;
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = authority.split(['/', '?']).next().unwrap_or(authority);
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let reachable = host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok());
    if reachable {
        Ok(())
    } else {
        Err(format!(
            "{variable} names {host_port}, which takes no connections; start that server, or \
             unset {variable} and xtask starts one"
        )
        .into())
    }
}

fn is_running(pid: u32) -> bool {
    // A zombie still has a /proc entry, but it no longer holds ports, files or locks.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit(") ").next().unwrap_or("").starts_with('Z'))
}

/// The signal that shuts a server down at once: PostgreSQL's "fast" shutdown is SIGINT (its
/// SIGTERM waits for every client to leave), MariaDB's is SIGTERM.
fn stop_signal(name: &str) -> &'static str {
    if name == "postgres" { "-INT" } else { "-TERM" }
}

/// Asks a server to shut down with `signal`, waits for it, and kills it if it does not exit
/// in time.
fn stop_process(pid: u32, signal: &str, mut child: Option<&mut Child>) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while is_running(pid) && Instant::now() < deadline {
        if let Some(child) = child.as_mut() {
            if child.try_wait().is_ok_and(|status| status.is_some()) {
                break;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    if is_running(pid) {
        eprintln!("xtask: pid {pid} did not stop in {STOP_TIMEOUT:?}; killing it");
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    if let Some(child) = child {
        let _ = child.wait();
    }
    let _ = io::stderr().flush();
}
