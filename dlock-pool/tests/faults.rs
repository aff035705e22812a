//! Faults survived: a server frozen mid-wait (a partition, as far as the client can tell) and
//! a server restarted while locks are held and waited for. These tests freeze and restart
//! their servers, so the matrix gives them servers of their own and runs them one at a time:
//! `cargo xtask test-matrix --only db:dlock-pool:faults`.

use dlock_testkit as common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use dlock_pool::mysql::{AsyncMySqlLock, MySqlLock};
use dlock_pool::postgres::AsyncPgLock;
use dlock_pool::{
    AsyncLock, AsyncLockGuard, AsyncLockPool, AsyncMySqlManager, Error, Lock, LockGuard, LockPool,
    REPLY_GRACE,
};

/// A directory the matrix row names, where a server of this test keeps its files.
fn server_dir(variable: &str) -> PathBuf {
    match std::env::var_os(variable) {
        Some(dir) => PathBuf::from(dir),
        None => panic!(
            "{variable} is not set: these tests freeze and restart their servers, so they run \
             only on servers of their own. Run `cargo xtask test-matrix --only \
             db:dlock-pool:faults`"
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

fn pg_pid() -> u32 {
    read_pid(
        server_dir("DLOCK_FAULT_PG_DIR")
            .join("data")
            .join("postmaster.pid"),
    )
}

fn my_pid() -> u32 {
    read_pid(server_dir("DLOCK_FAULT_MYSQL_DIR").join("mysqld.pid"))
}

fn run(command: &mut Command) {
    let status = command.status().unwrap();
    assert!(status.success(), "{command:?}: {status}");
}

/// Stops (SIGSTOP) a server and, for PostgreSQL, every backend process, until dropped. The
/// kernel still accepts and acknowledges the connections' packets: to a client it looks like
/// a partition that TCP cannot see.
struct Frozen {
    pid: u32,
    with_children: bool,
}

impl Frozen {
    fn new(pid: u32, with_children: bool) -> Frozen {
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

fn wait_for_port(url: &str) {
    let port = common::port_of(url);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the server never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Restarts PostgreSQL: a fast shutdown ends every session, as a crash-free restart does.
fn restart_postgres() {
    let dir = server_dir("DLOCK_FAULT_PG_DIR");
    let bin = server_dir("DLOCK_FAULT_PG_BIN");
    run(Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("pg_ctl"))
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-m", "fast", "-w", "-t", "60", "restart"]));
    wait_for_port(&common::pg_url());
}

/// Restarts MariaDB: SIGTERM, wait for it to exit, start it again as the matrix did.
fn restart_mariadb() {
    let dir = server_dir("DLOCK_FAULT_MYSQL_DIR");
    let pid = my_pid();
    run(Command::new("kill").args(["-TERM", &pid.to_string()]));
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
    wait_for_port(&common::mysql_url());
    // The port opens before the server takes logins; wait until one works.
    let deadline = Instant::now() + Duration::from_secs(60);
    while mysql::Conn::new(mysql::Opts::from_url(&common::mysql_url()).unwrap()).is_err() {
        assert!(Instant::now() < deadline, "MariaDB does not take logins");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn pg_pool(
    size: u32,
) -> AsyncLockPool<bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>> {
    let manager = bb8_postgres::PostgresConnectionManager::new(
        common::pg_url().parse().unwrap(),
        tokio_postgres::NoTls,
    );
    let builder = bb8::Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10));
    AsyncLockPool::with_builder(builder, manager).await.unwrap()
}

async fn my_pool(size: u32) -> AsyncLockPool<AsyncMySqlManager> {
    let manager = AsyncMySqlManager::from_url(&common::mysql_url()).unwrap();
    let builder = bb8::Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10));
    AsyncLockPool::with_builder(builder, manager).await.unwrap()
}

/// The longest an owned wait may take with its server frozen: its timeout, the grace for the
/// reply, and slack for a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(1);
const SLACK: Duration = Duration::from_millis(1500);

fn assert_gave_up_in_time<T: std::fmt::Debug>(
    what: &str,
    outcome: &Result<T, Error>,
    took: Duration,
) {
    // A pool checks a connection as it checks it out, and that check meets the frozen server
    // first: then no connection came in time, which is a pool error.
    assert!(
        matches!(outcome, Err(Error::ConnectionLost { .. } | Error::Pool(_))),
        "{what}: {outcome:?}"
    );
    assert!(
        took >= TIMEOUT && took <= TIMEOUT + REPLY_GRACE + SLACK,
        "{what}: gave up after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_postgres_cannot_hold_an_owned_wait_past_its_deadline() {
    let key = "faults/frozen-pg";
    let holder = pg_pool(1).await;
    let held = holder.acquire(key).await.unwrap();
    let waiters = pg_pool(1).await;
    // Check out and connect before the freeze: what is measured is the lock wait.
    drop(waiters.pool().get().await.unwrap());
    let (client, connection) = tokio_postgres::connect(&common::pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut bare = AsyncPgLock::new(client, key);

    let frozen = Frozen::new(pg_pid(), true);
    let started = Instant::now();
    let (pooled, owned) = tokio::join!(
        waiters.acquire_timeout(key, TIMEOUT),
        bare.acquire_timeout(TIMEOUT)
    );
    let took = started.elapsed();
    drop(frozen);
    assert_gave_up_in_time("bb8 pool", &pooled.map(|guard| guard.is_some()), took);
    assert_gave_up_in_time("owned AsyncPgLock", &owned, took);

    // Thawed: the holder releases, the pool reconnects and takes the key, and the bare lock's
    // queued cleanup left nothing behind.
    AsyncLockGuard::release(held).await.unwrap();
    let guard = waiters
        .acquire_timeout(key, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the pool recovered");
    AsyncLockGuard::release(guard).await.unwrap();
    assert!(
        bare.try_acquire().await.unwrap(),
        "the bare lock works again"
    );
    bare.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_mariadb_cannot_hold_an_owned_wait_past_its_deadline() {
    let key = "faults/frozen-my";
    let holder = my_pool(1).await;
    let held = holder.acquire(key).await.unwrap();
    let waiters = my_pool(1).await;
    drop(waiters.pool().get().await.unwrap());
    let conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&common::mysql_url()).unwrap())
        .await
        .unwrap();
    let mut bare = AsyncMySqlLock::new(conn, key);

    let frozen = Frozen::new(my_pid(), false);
    let started = Instant::now();
    let (pooled, owned) = tokio::join!(
        waiters.acquire_timeout(key, TIMEOUT),
        bare.acquire_timeout(TIMEOUT)
    );
    let took = started.elapsed();
    drop(frozen);
    assert_gave_up_in_time("bb8 pool", &pooled.map(|guard| guard.is_some()), took);
    assert_gave_up_in_time("owned AsyncMySqlLock", &owned, took);
    // The bare lock gave its connection up; later calls say so.
    assert!(matches!(
        bare.try_acquire().await,
        Err(Error::ConnectionUnusable { .. })
    ));

    AsyncLockGuard::release(held).await.unwrap();
    let guard = waiters
        .acquire_timeout(key, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the pool recovered");
    AsyncLockGuard::release(guard).await.unwrap();
    assert!(
        common::eventually(|| common::my_holder_of(key).is_none()),
        "no session holds the key"
    );
}

#[test]
fn a_read_timeout_bounds_a_blocking_mysql_lock_on_a_frozen_server() {
    // A blocking lock borrows its connection and cannot bound a read itself; the driver's
    // read timeout does.
    let key = "faults/frozen-blocking";
    let mut holder = MySqlLock::new(common::my(), key);
    holder.acquire().unwrap();
    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&common::mysql_url()).unwrap())
        .read_timeout(Some(Duration::from_secs(2)));
    let mut waiter = MySqlLock::new(mysql::Conn::new(opts).unwrap(), key);
    let frozen = Frozen::new(my_pid(), false);
    let started = Instant::now();
    let outcome = waiter.acquire_timeout(TIMEOUT);
    let took = started.elapsed();
    drop(frozen);
    assert!(
        matches!(outcome, Err(Error::ConnectionLost { .. })),
        "{outcome:?}"
    );
    assert!(took < Duration::from_secs(2) + SLACK, "{took:?}");
    holder.release().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_ends_holds_and_waits_with_clear_errors_and_pools_reconnect() {
    let key = "faults/restart-pg";
    let manager = r2d2_postgres::PostgresConnectionManager::new(
        common::pg_url().parse().unwrap(),
        postgres::NoTls,
    );
    let blocking = tokio::task::spawn_blocking(move || {
        LockPool::with_builder(r2d2::Pool::builder().max_size(1), manager).unwrap()
    })
    .await
    .unwrap();
    let blocking = std::sync::Arc::new(blocking);
    let pool = blocking.clone();
    let mut held = tokio::task::spawn_blocking(move || pool.acquire(key).unwrap())
        .await
        .unwrap();

    let waiters = pg_pool(1).await;
    let waiting = tokio::spawn(async move {
        let outcome = waiters.acquire_timeout(key, Duration::from_secs(20)).await;
        (outcome.map(|guard| guard.is_some()), waiters)
    });
    let (client, connection) = tokio_postgres::connect(&common::pg_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut bare = AsyncPgLock::new(client, key);
    let bare_waiting = tokio::spawn(async move {
        let outcome = bare.acquire_timeout(Duration::from_secs(20)).await;
        (outcome, bare)
    });
    // Both wait in the server before it goes down.
    let queued = tokio::task::spawn_blocking(|| {
        let mut side = common::pg();
        common::eventually(|| {
            let waiting: i64 = side
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                    &[],
                )
                .unwrap()
                .get(0);
            waiting == 2
        })
    })
    .await
    .unwrap();
    assert!(queued, "both waiters queued");

    let started = Instant::now();
    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    let (pooled, waiters) = waiting.await.unwrap();
    let (owned, mut bare) = bare_waiting.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no wait ran into its timeout"
    );
    for (what, outcome) in [
        ("bb8 waiter", pooled.map(|_| ())),
        ("bare waiter", owned.map(|_| ())),
    ] {
        let error = outcome.expect_err(what);
        assert!(error.is_connection_error(), "{what}: {error:?}");
    }
    // The holder's session is gone: verify says so, release fails, and the pool closes that
    // connection.
    let outcome = tokio::task::spawn_blocking(move || {
        let verified = LockGuard::verify(&mut held);
        (verified, LockGuard::release(held))
    })
    .await
    .unwrap();
    assert!(!matches!(outcome.0, Ok(true)), "{:?}", outcome.0);
    assert!(outcome.1.is_err(), "{:?}", outcome.1);
    // Both pools reconnect.
    let pool = blocking.clone();
    tokio::task::spawn_blocking(move || LockGuard::release(pool.acquire(key).unwrap()).unwrap())
        .await
        .unwrap();
    let guard = waiters.acquire(key).await.unwrap();
    AsyncLockGuard::release(guard).await.unwrap();
    assert!(bare.verify().await.is_ok_and(|held| !held));
    // The blocking client may not be dropped on a runtime thread.
    tokio::task::spawn_blocking(move || drop(blocking))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_restart_ends_holds_and_waits_with_clear_errors_and_pools_reconnect() {
    let key = "faults/restart-my";
    let holder = my_pool(1).await;
    let mut held = holder.acquire(key).await.unwrap();
    let waiters = my_pool(1).await;
    let waiting = tokio::spawn(async move {
        let outcome = waiters.acquire_timeout(key, Duration::from_secs(20)).await;
        (outcome.map(|guard| guard.is_some()), waiters)
    });
    let conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&common::mysql_url()).unwrap())
        .await
        .unwrap();
    let mut bare = AsyncMySqlLock::new(conn, key);
    let bare_waiting = tokio::spawn(async move {
        let outcome = bare.acquire_timeout(Duration::from_secs(20)).await;
        (outcome, bare)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    tokio::task::spawn_blocking(restart_mariadb).await.unwrap();
    let (pooled, waiters) = waiting.await.unwrap();
    let (owned, _bare) = bare_waiting.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    for (what, outcome) in [
        ("bb8 waiter", pooled.map(|_| ())),
        ("bare waiter", owned.map(|_| ())),
    ] {
        let error = outcome.expect_err(what);
        assert!(error.is_connection_error(), "{what}: {error:?}");
    }
    assert!(!AsyncLockGuard::verify(&mut held).await.unwrap_or(false));
    assert!(AsyncLockGuard::release(held).await.is_err());
    // Both pools reconnect.
    let guard = holder.acquire(key).await.unwrap();
    AsyncLockGuard::release(guard).await.unwrap();
    let guard = waiters.acquire(key).await.unwrap();
    AsyncLockGuard::release(guard).await.unwrap();
}

/// The connection id holding `name`, asked from a fresh session.
fn mysql_holder_of(name: &str) -> Option<u32> {
    use mysql::prelude::Queryable;
    let mut conn = mysql::Conn::new(mysql::Opts::from_url(&common::mysql_url()).unwrap()).unwrap();
    conn.exec_first::<Option<u32>, _, _>("SELECT IS_USED_LOCK(?)", (name,))
        .unwrap()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_repeated_after_a_restart_is_never_taken_for_the_old_session() {
    // Connection ids start again at 1 when MariaDB restarts. A borrowed lock held when the
    // server restarted is dropped afterwards, while a new session with the same id holds the
    // same name: nothing dlock does may end that session or release its lock (a
    // process-wide record of owed releases keyed by id once did).
    let name = "faults/id-reuse";
    let opts = mysql_async::Opts::from_url(&common::mysql_url()).unwrap();
    // A fresh server first, so the old session's id is small and comes round again soon.
    tokio::task::spawn_blocking(restart_mariadb).await.unwrap();
    let mut old = mysql_async::Conn::new(opts.clone()).await.unwrap();
    let old_id = old.id();
    let mut lock = AsyncMySqlLock::new(&mut old, name);
    lock.acquire().await.unwrap();
    tokio::task::spawn_blocking(restart_mariadb).await.unwrap();
    let mut same = None;
    for _ in 0..10_000 {
        let conn = mysql_async::Conn::new(opts.clone()).await.unwrap();
        if conn.id() == old_id {
            same = Some(conn);
            break;
        }
        assert!(
            conn.id() < old_id,
            "ids passed {old_id} without reaching it"
        );
        conn.disconnect().await.unwrap();
    }
    let mut same = same.expect("a new session got the old id");
    let mut new_holder = AsyncMySqlLock::new(&mut same, name);
    new_holder.acquire().await.unwrap();
    assert_eq!(mysql_holder_of(name), Some(old_id));
    // The old lock is dropped held, on a borrowed connection whose session died.
    drop(lock);
    // Lock operations on the new session go on as usual.
    {
        let mut other = AsyncMySqlLock::new(new_holder.conn(), "faults/id-reuse-other");
        assert!(other.try_acquire().await.unwrap());
        other.release().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        new_holder.verify().await.unwrap(),
        "the new session still holds its lock"
    );
    assert_eq!(mysql_holder_of(name), Some(old_id));
    new_holder.release().await.unwrap();
}

/// The environment variable that turns this test binary into the client, inside the
/// network namespace, of `keepalives_bound_a_blocking_postgres_lock_cut_off_by_a_partition`.
const PARTITION_CHILD: &str = "DLOCK_PARTITION_PROXY";

/// A network namespace joined to this one by a veth pair; `cut` drops the link, so packets
/// between the two vanish, as in a real partition. Removed on drop.
struct Namespace {
    name: String,
    host_link: String,
    host_address: &'static str,
}

impl Namespace {
    fn new() -> Namespace {
        let id = std::process::id() % 10_000;
        let (name, host_link, peer) = (
            format!("dlock-part-{id}"),
            format!("dlh{id}"),
            format!("dln{id}"),
        );
        let namespace = Namespace {
            name,
            host_link,
            host_address: "10.231.7.1",
        };
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        ip(&["netns", "add", &namespace.name]);
        ip(&[
            "link",
            "add",
            &namespace.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &namespace.name]);
        ip(&["addr", "add", "10.231.7.1/30", "dev", &namespace.host_link]);
        ip(&["link", "set", &namespace.host_link, "up"]);
        let inside = |args: &[&str]| {
            run(Command::new("ip")
                .args(["netns", "exec", &namespace.name, "ip"])
                .args(args));
        };
        inside(&["addr", "add", "10.231.7.2/30", "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        namespace
    }

    fn cut(&self) {
        run(Command::new("ip").args(["link", "set", &self.host_link, "down"]));
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Forwards connections to `listen` on to PostgreSQL, so a client in the namespace reaches
/// the server through the veth link.
fn proxy_to_postgres(listen: &str) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind((listen, 0)).unwrap();
    let address = listener.local_addr().unwrap();
    let server = ("127.0.0.1", common::port_of(&common::pg_url()));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(upstream) = TcpStream::connect(server) else {
                return;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    address
}

#[test]
fn keepalives_bound_a_blocking_postgres_lock_cut_off_by_a_partition() {
    let key = "faults/partition";
    if let Ok(proxy) = std::env::var(PARTITION_CHILD) {
        // The client, inside the namespace: wait for the lock through the link, with TCP
        // keepalives and a TCP user timeout that give up on a silent peer within seconds.
        // (rust-postgres reads tcp_user_timeout in seconds, where libpq reads milliseconds.)
        let (host, port) = proxy.rsplit_once(':').unwrap();
        let config = format!(
            "host={host} port={port} user=postgres keepalives=1 keepalives_idle=1 \
             keepalives_interval=1 keepalives_retries=2 tcp_user_timeout=3"
        );
        let client = postgres::Client::connect(&config, postgres::NoTls).unwrap();
        let mut lock = dlock_pool::postgres::PgLock::new(client, key);
        println!("waiting");
        let started = Instant::now();
        let outcome = lock.acquire_timeout(Duration::from_secs(60));
        println!("outcome {outcome:?} after {:?}", started.elapsed());
        return;
    }
    let namespace = Namespace::new();
    let proxy = proxy_to_postgres(namespace.host_address);
    let mut holder = dlock_pool::postgres::PgLock::new(common::pg(), key);
    holder.acquire().unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &namespace.name])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "keepalives_bound_a_blocking_postgres_lock_cut_off_by_a_partition",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PARTITION_CHILD, proxy.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The client's lines, read on a thread so that a client that hangs fails the test
    // instead of hanging it.
    let stdout = child.stdout.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for = |prefix: &str, limit: Duration| -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = lines.recv_timeout(left).ok()?;
            // libtest writes "test <name> ... " before the client's first line.
            if let Some(at) = line.find(prefix) {
                return Some(line[at..].to_owned());
            }
        }
    };
    let started = wait_for("waiting", Duration::from_secs(30));
    if started.is_none() {
        let _ = child.kill();
        panic!("the client never started waiting");
    }
    // Let the wait reach the server, then cut the link.
    let mut side = common::pg();
    assert!(common::eventually(|| {
        let waiting: i64 = side
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .unwrap()
            .get(0);
        waiting == 1
    }));
    let cut = Instant::now();
    namespace.cut();
    let outcome = wait_for("outcome", Duration::from_secs(30));
    let took = cut.elapsed();
    let _ = child.kill();
    child.wait().unwrap();
    let outcome = outcome.expect("the client gave up within 30 s of the partition");
    assert!(outcome.contains("ConnectionLost"), "{outcome}");
    assert!(took < Duration::from_secs(15), "{outcome}: {took:?}");
    holder.release().unwrap();
}
