//! Control of the servers a fault test runs on: freeze, restart, wait. Fault tests run
//! only on servers of their own, which the matrix's `db:faults` row starts for them and names
//! in `DLOCK_FAULT_*` variables.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A directory the matrix row names, where a server of this test keeps its files.
pub fn server_dir(variable: &str) -> PathBuf {
    match std::env::var_os(variable) {
        Some(dir) => PathBuf::from(dir),
        None => panic!(
            "{variable} is not set: these tests freeze and restart their servers, so they run \
             only on servers of their own. Run `cargo xtask test-matrix --only db:faults`"
        ),
    }
}

fn read_pid(file: PathBuf) -> u32 {
    std::fs::read_to_string(&file)
        .unwrap_or_else(|error| panic!("{}: {error}", file.display()))
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The process id of the fault row's PostgreSQL server.
pub fn pg_pid() -> u32 {
    read_pid(
        server_dir("DLOCK_FAULT_PG_DIR")
            .join("data")
            .join("postmaster.pid"),
    )
}

/// The process id of the fault row's MariaDB server.
pub fn my_pid() -> u32 {
    read_pid(server_dir("DLOCK_FAULT_MYSQL_DIR").join("mysqld.pid"))
}

/// Runs `command`, which must succeed.
pub fn run(command: &mut Command) {
    let status = command.status().unwrap();
    assert!(status.success(), "{command:?}: {status}");
}

/// Stops (SIGSTOP) a server and, for PostgreSQL, every backend process, until dropped. The
/// kernel still accepts and acknowledges the connections' packets: to a client it looks like
/// a partition that TCP cannot see.
#[derive(Debug)]
pub struct Frozen {
    pid: u32,
    with_children: bool,
}

impl Frozen {
    /// Freezes process `pid`, and its children when `with_children`.
    pub fn new(pid: u32, with_children: bool) -> Frozen {
        if with_children {
            let _ = Command::new("pkill")
                .args(["-STOP", "-P", &pid.to_string()])
                .status();
        }
        run(Command::new("kill").args(["-STOP", &pid.to_string()]));
        Frozen { pid, with_children }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid.to_string()])
            .status();
        if self.with_children {
            let _ = Command::new("pkill")
                .args(["-CONT", "-P", &self.pid.to_string()])
                .status();
        }
    }
}

/// Waits up to a minute until the server of `url` takes connections again.
pub fn wait_for_port(url: &str) {
    let port = crate::port_of(url);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Restarts PostgreSQL: a fast shutdown ends every session, as a crash-free restart does.
pub fn restart_postgres() {
    pg_ctl_restart("fast");
}

/// Crashes PostgreSQL and starts it again: an immediate shutdown ends every process at once,
/// with no checkpoint and no flush of the WAL still in shared memory, so the restart recovers
/// from what reached the WAL files, as after a crash.
pub fn crash_postgres() {
    pg_ctl_restart("immediate");
}

/// `pg_ctl restart` of the fault row's PostgreSQL with shutdown mode `mode`, then waits for it.
fn pg_ctl_restart(mode: &str) {
    let dir = server_dir("DLOCK_FAULT_PG_DIR");
    let bin = server_dir("DLOCK_FAULT_PG_BIN");
    run(Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("pg_ctl"))
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-m", mode, "-w", "-t", "60", "restart"]));
    wait_for_port(&crate::pg_url());
}

/// Restarts MariaDB: SIGTERM, wait for it to exit, start it again as the matrix did.
pub fn restart_mariadb() {
    stop_and_start_mariadb("-TERM");
}

/// Crashes MariaDB and starts it again: SIGKILL ends the server at once, with nothing
/// flushed that was not already, so the restart recovers from its redo log, as after a crash.
pub fn crash_mariadb() {
    stop_and_start_mariadb("-KILL");
}

/// Sends the fault row's MariaDB `signal`, waits for it to exit, and starts it again as the
/// matrix did.
fn stop_and_start_mariadb(signal: &str) {
    let dir = server_dir("DLOCK_FAULT_MYSQL_DIR");
    let pid = my_pid();
    run(Command::new("kill").args([signal, &pid.to_string()]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while PathBuf::from(format!("/proc/{pid}")).exists() {
        // A zombie of ours would linger here; the server is the matrix's child, not ours.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.contains(") Z ") {
            break;
        }
        assert!(Instant::now() < deadline, "MariaDB did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    run(Command::new("sh").arg(dir.join("restart.sh")));
    wait_for_port(&crate::mysql_url());
    // The port opens before the server takes logins; wait until one works.
    let deadline = Instant::now() + Duration::from_secs(60);
    while mysql::Conn::new(mysql::Opts::from_url(&crate::mysql_url()).unwrap()).is_err() {
        assert!(Instant::now() < deadline, "MariaDB does not take logins");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The timeout a wait is given while its server is frozen. The longest it may take is this,
/// the grace for the reply, and [`SLACK`].
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// Slack for a loaded machine, on top of what a frozen wait may take.
pub const SLACK: Duration = Duration::from_millis(1500);
