//! What `PgLock` reports when things go wrong: deadlocks, killed sessions, cancels, dead
//! processes. Against a real PostgreSQL server.

use dlock_testkit::postgres as common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{backend_pid, connect};
use dlock_postgres::{Error, Lock, PgLock};

#[test]
fn a_deadlock_between_two_sessions_is_reported_as_deadlock() {
    let barrier = Arc::new(Barrier::new(2));
    let contender = |first: &'static str, second: &'static str| {
        let barrier = Arc::clone(&barrier);
        thread::spawn(move || {
            let mut client = connect();
            let mut first = PgLock::new(&mut client, first);
            first.acquire().unwrap();
            barrier.wait();
            let mut second = PgLock::new(first.client(), second);
            // One of the two waits is chosen as the victim, after deadlock_timeout (1 s).
            let outcome = second.acquire_timeout(Duration::from_secs(20));
            // The winner waits for the victim's first lock, freed when this thread's client
            // drops, so release everything now.
            drop(second);
            outcome
        })
    };
    let one = contender("faults/deadlock-a", "faults/deadlock-b");
    let two = contender("faults/deadlock-b", "faults/deadlock-a");
    let outcomes = [one.join().unwrap(), two.join().unwrap()];
    let deadlocks = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, Err(Error::Deadlock { .. })));
    assert_eq!(deadlocks.count(), 1, "{outcomes:?}");
    assert!(
        outcomes.iter().any(|outcome| matches!(outcome, Ok(true))),
        "{outcomes:?}"
    );
    let message = outcomes
        .iter()
        .find_map(|outcome| outcome.as_ref().err())
        .unwrap()
        .to_string();
    assert!(message.contains("deadlock"), "{message}");
}

#[test]
fn a_terminated_holder_loses_its_lock_and_a_waiter_gets_it() {
    let mut holder = PgLock::new(connect(), "faults/terminated");
    holder.acquire().unwrap();
    let pid = backend_pid(holder.client());
    let waiter = thread::spawn(|| {
        let mut waiter = PgLock::new(connect(), "faults/terminated");
        let outcome = waiter.acquire_timeout(Duration::from_secs(20));
        (outcome, waiter.verify())
    });
    thread::sleep(Duration::from_millis(200));
    let mut admin = connect();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();

    let (outcome, verified) = waiter.join().unwrap();
    assert!(
        outcome.unwrap(),
        "the waiter acquires once the holder's session is gone"
    );
    assert!(verified.unwrap());
    assert!(
        !holder.verify().unwrap(),
        "the old holder's session holds nothing"
    );
    let released = holder.release();
    assert!(
        matches!(released, Err(Error::ConnectionLost { .. } | Error::NotHeld)),
        "{released:?}"
    );
    assert!(!holder.is_acquired());
}

#[test]
fn a_server_side_cancel_is_canceled_not_a_timeout() {
    let mut holder = PgLock::new(connect(), "faults/canceled");
    holder.acquire().unwrap();
    let mut client = connect();
    let pid = backend_pid(&mut client);
    let waiter = thread::spawn(move || {
        let mut waiter = PgLock::new(client, "faults/canceled");
        waiter.acquire_timeout(Duration::from_secs(20))
    });
    thread::sleep(Duration::from_millis(200));
    connect()
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .unwrap();
    let outcome = waiter.join().unwrap();
    assert!(
        matches!(outcome, Err(Error::Canceled { .. })),
        "{outcome:?}"
    );
}

#[test]
fn a_lost_connection_is_connection_lost_and_verify_is_false() {
    let mut lock = PgLock::new(connect(), "faults/connection-lost");
    lock.acquire().unwrap();
    let pid = backend_pid(lock.client());
    connect()
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    thread::sleep(Duration::from_millis(100));
    let mut again = PgLock::new(lock.client(), "faults/connection-lost-2");
    let outcome = again.try_acquire();
    assert!(
        matches!(outcome, Err(Error::ConnectionLost { .. })),
        "{outcome:?}"
    );
    drop(again);
    assert!(!lock.verify().unwrap());
}

/// The environment variable that turns this test binary into the child process of
/// `a_lock_held_by_another_process_is_freed_when_that_process_dies`.
const CHILD_KEY: &str = "DLOCK_TEST_HOLD_KEY";

#[test]
fn a_lock_held_by_another_process_is_freed_when_that_process_dies() {
    if let Ok(key) = std::env::var(CHILD_KEY) {
        // The child: take the lock, say so, and wait to be killed without releasing it.
        let mut lock = PgLock::new(connect(), key);
        lock.acquire().unwrap();
        println!("held");
        thread::sleep(Duration::from_secs(60));
        panic!("the parent should have killed this process");
    }
    let key = "faults/other-process";
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_lock_held_by_another_process_is_freed_when_that_process_dies",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_KEY, key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let held = stdout
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("held"));
    assert!(held, "the child took the lock");

    let mut lock = PgLock::new(connect(), key);
    assert!(!lock.try_acquire().unwrap(), "another process holds it");
    child.kill().unwrap();
    child.wait().unwrap();
    let started = Instant::now();
    assert!(
        lock.acquire_timeout(Duration::from_secs(10)).unwrap(),
        "freed when the child died"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
