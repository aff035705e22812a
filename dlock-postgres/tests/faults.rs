//! Faults a bare PostgreSQL lock survives: a partition that TCP cannot see. The test builds
//! a network namespace, so it runs on the servers of the matrix's `db:faults` row:
//! `cargo xtask test-matrix --only db:faults`.

use dlock_testkit as common;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use dlock_postgres::{Lock, PgLock};
use dlock_testkit::faults::run;

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
        let mut lock = PgLock::new(client, key);
        println!("waiting");
        let started = Instant::now();
        let outcome = lock.acquire_timeout(Duration::from_secs(60));
        println!("outcome {outcome:?} after {:?}", started.elapsed());
        return;
    }
    let namespace = Namespace::new();
    let proxy = proxy_to_postgres(namespace.host_address);
    let mut holder = PgLock::new(common::pg(), key);
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

#[test]
fn fencing_tokens_keep_growing_across_a_restart() {
    let key = "faults/fenced-restart";
    dlock_postgres::install_fencing(&mut common::pg()).unwrap();
    let mut lock = PgLock::new(common::pg(), key).fenced();
    lock.acquire().unwrap();
    let before = lock.fencing_token().unwrap();
    lock.release().unwrap();
    drop(lock);
    dlock_testkit::faults::restart_postgres();
    let mut lock = PgLock::new(common::pg(), key).fenced();
    lock.acquire().unwrap();
    let after = lock.fencing_token().unwrap();
    assert!(after > before, "{after} after {before}, across a restart");
}

/// A token is handed out only once a crash cannot take it back, whatever the session's
/// `synchronous_commit`: with it off, a commit returns before its WAL is written, and an
/// immediate shutdown right after the grants used to lose them, so the next holder got a
/// token already handed out. Each round grants tokens in quick succession, on the session
/// lock's statement, its sliced async form and a transaction lock, then crashes the server.
#[test]
fn fencing_tokens_survive_a_crash_with_synchronous_commit_off() {
    let key = "faults/fenced-crash";
    dlock_postgres::install_fencing(&mut common::pg()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..4 {
        let mut handed_out = Vec::new();
        let mut client = common::pg();
        client
            .batch_execute("SET synchronous_commit = off")
            .unwrap();
        let mut lock = PgLock::new(client, key).fenced();
        for _ in 0..3 {
            lock.acquire().unwrap();
            handed_out.push(lock.fencing_token().unwrap());
            lock.release().unwrap();
        }
        let (mut client, released) = lock.into_inner();
        released.unwrap();
        let mut tx = client.transaction().unwrap();
        let xact = dlock_postgres::PgXactLock::new(key).fenced();
        xact.acquire(&mut tx).unwrap();
        handed_out.push(xact.fencing_token().unwrap());
        tx.commit().unwrap();
        runtime.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&common::pg_url(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            client
                .batch_execute("SET synchronous_commit = off")
                .await
                .unwrap();
            let mut lock = dlock_postgres::AsyncPgLock::new(client, key).fenced();
            dlock_postgres::AsyncLock::acquire(&mut lock).await.unwrap();
            handed_out.push(lock.fencing_token().unwrap());
            dlock_postgres::AsyncLock::release(&mut lock).await.unwrap();
        });
        dlock_testkit::faults::crash_postgres();
        let mut lock = PgLock::new(common::pg(), key).fenced();
        lock.acquire().unwrap();
        let after = lock.fencing_token().unwrap();
        let highest = handed_out.iter().max().copied().unwrap();
        assert!(
            after > highest,
            "round {round}: token {after} after a crash, but {handed_out:?} were handed out"
        );
    }
}
