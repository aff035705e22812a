//! What `MySqlLock` reports when things go wrong: deadlocks, killed sessions, killed
//! statements, dead processes. Against a real MariaDB (or MySQL) server.

use dlock_testkit::mysql as common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::{connect, holder_of, kill, kill_query, wait_until_waiting};
use dlock_mysql::{Error, Lock, MySqlLock};

#[test]
fn a_deadlock_between_two_sessions_is_reported_as_deadlock() {
    let barrier = Arc::new(Barrier::new(2));
    let contender = |first: &'static str, second: &'static str| {
        let barrier = Arc::clone(&barrier);
        thread::spawn(move || {
            let mut conn = connect();
            let mut first = MySqlLock::new(&mut conn, first);
            first.acquire().unwrap();
            barrier.wait();
            let mut second = MySqlLock::new(first.conn(), second);
            let outcome = second.acquire_timeout(Duration::from_secs(20));
            // The winner waits for the victim's first lock: release everything now.
            drop(second);
            outcome
        })
    };
    let one = contender("faults/deadlock-a", "faults/deadlock-b");
    let two = contender("faults/deadlock-b", "faults/deadlock-a");
    let outcomes = [one.join().unwrap(), two.join().unwrap()];
    // MariaDB can pick both waits as victims when they start at the same instant; what
    // matters is that a deadlock is reported as one and nothing else goes wrong.
    assert!(
        outcomes
            .iter()
            .any(|outcome| matches!(outcome, Err(Error::Deadlock { .. }))),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, Ok(true) | Err(Error::Deadlock { .. }))),
        "{outcomes:?}"
    );
}

#[test]
fn a_killed_holder_loses_its_lock_and_a_waiter_gets_it() {
    let mut holder = MySqlLock::new(connect(), "faults/killed");
    holder.acquire().unwrap();
    let id = holder.conn().connection_id();
    let (waiting, waiting_id) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let mut waiter = MySqlLock::new(connect(), "faults/killed");
        waiting.send(waiter.conn().connection_id()).unwrap();
        let outcome = waiter.acquire_timeout(Duration::from_secs(20));
        (outcome, waiter.verify())
    });
    wait_until_waiting(waiting_id.recv().unwrap());
    kill(id);
    let (outcome, verified) = waiter.join().unwrap();
    assert!(outcome.unwrap(), "the waiter got the lock");
    assert!(verified.unwrap());
    assert!(
        !holder.verify().unwrap(),
        "the killed session holds nothing"
    );
    let released = holder.release();
    assert!(
        matches!(released, Err(Error::NotHeld | Error::ConnectionLost { .. })),
        "{released:?}"
    );
    assert!(!holder.is_acquired());
}

#[test]
fn a_killed_statement_is_canceled_not_a_timeout() {
    let mut holder = MySqlLock::new(connect(), "faults/kill-query");
    holder.acquire().unwrap();
    let (waiting, waiting_id) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let mut waiter = MySqlLock::new(connect(), "faults/kill-query");
        waiting.send(waiter.conn().connection_id()).unwrap();
        let outcome = waiter.acquire();
        // The session survives a KILL QUERY and is good for the next lock.
        let after = waiter.try_acquire();
        (outcome, after)
    });
    let id = waiting_id.recv().unwrap();
    wait_until_waiting(id);
    kill_query(id);
    let (outcome, after) = waiter.join().unwrap();
    assert!(
        matches!(outcome, Err(Error::Canceled { .. })),
        "{outcome:?}"
    );
    assert!(!after.unwrap(), "still held by the holder");
}

#[test]
fn a_lost_connection_is_connection_lost_and_verify_is_false() {
    let mut lock = MySqlLock::new(connect(), "faults/lost");
    lock.acquire().unwrap();
    kill(lock.conn().connection_id());
    assert!(!lock.verify().unwrap());
    let mut other = MySqlLock::new(connect(), "faults/lost");
    assert!(other.try_acquire().unwrap(), "the server freed the lock");
    let mut again = MySqlLock::new(lock.into_inner().0, "faults/lost-2");
    let outcome = again.try_acquire();
    assert!(
        matches!(outcome, Err(Error::ConnectionLost { .. })),
        "{outcome:?}"
    );
}

/// The environment variable that turns this test binary into the child process of
/// `a_lock_held_by_another_process_is_freed_when_that_process_dies`.
const CHILD_KEY: &str = "DLOCK_TEST_HOLD_NAME";

#[test]
fn a_lock_held_by_another_process_is_freed_when_that_process_dies() {
    if let Ok(name) = std::env::var(CHILD_KEY) {
        // The child: take the lock, say so, and wait to be killed without releasing it.
        let mut lock = MySqlLock::new(connect(), name);
        lock.acquire().unwrap();
        println!("held");
        thread::sleep(Duration::from_secs(60));
        panic!("the parent should have killed this process");
    }
    let name = "faults/other-process";
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_lock_held_by_another_process_is_freed_when_that_process_dies",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_KEY, name)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let held = stdout
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("held"));
    assert!(held, "the child took the lock");

    let mut lock = MySqlLock::new(connect(), name);
    assert!(!lock.try_acquire().unwrap(), "another process holds it");
    assert!(holder_of(name).is_some());
    child.kill().unwrap();
    child.wait().unwrap();
    let started = Instant::now();
    assert!(
        lock.acquire_timeout(Duration::from_secs(10)).unwrap(),
        "freed when the child died"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
