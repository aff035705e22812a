//! The semantics table of `dlock_core::Lock`, row by row, for `PgLock` and `PgXactLock`
//! against a real PostgreSQL server. Every test locks keys of its own: tests run in parallel
//! on one server.

use dlock_testkit::postgres as common;

use std::panic::{self, AssertUnwindSafe};
use std::thread;
use std::time::{Duration, Instant};

use common::{backend_pid, connect, holder_pids};
use dlock_postgres::{Error, Key, KeyPolicy, Lock, Mode, PgKey, PgLock, PgXactLock};

#[test]
fn a_second_lock_on_the_same_session_dropped_while_held_takes_only_its_own_hold() {
    // PostgreSQL counts the holds of one key per session: the second object's drop unlocks
    // one, and the first object's hold stays, with nothing leaked.
    let name = "blocking/second-on-session";
    let mut first = PgLock::new(connect(), name);
    first.acquire().unwrap();
    {
        let mut second = PgLock::new(first.client(), name);
        assert!(second.try_acquire().unwrap());
    }
    assert!(first.verify().unwrap(), "the first hold stays");
    let mut other = PgLock::new(connect(), name);
    assert!(!other.try_acquire().unwrap());
    first.release().unwrap();
    assert!(other.try_acquire().unwrap(), "no hold leaked");
    other.release().unwrap();
}

#[test]
fn locks_made_per_use_on_one_client_exclude_and_survive_a_session_reset() {
    // The deployment check runs once per server session and leaves a mark there; a reset
    // removes the mark, and the next lock checks again rather than failing or skipping it.
    let name = "blocking/per-use";
    let mut client = connect();
    let mut other = PgLock::new(connect(), name);
    for round in 0..4 {
        if round == 2 {
            client.batch_execute("DISCARD ALL").unwrap();
        }
        let mut lock = PgLock::new(&mut client, name);
        assert!(lock.try_acquire().unwrap(), "round {round}");
        assert!(!other.try_acquire().unwrap(), "round {round}: excluded");
        lock.release().unwrap();
        drop(lock);
        // Held when dropped: the drop releases it.
        let mut lock = PgLock::new(&mut client, name);
        lock.acquire().unwrap();
        assert!(!other.try_acquire().unwrap(), "round {round}: excluded");
    }
    assert!(other.try_acquire().unwrap(), "every drop released its hold");
    other.release().unwrap();
    // A mark the user sets is no check: it never names this process's value.
    client.batch_execute("DISCARD ALL").unwrap();
    client
        .batch_execute("SET dlock.deployment_checked = 'c'")
        .unwrap();
    let mut lock = PgLock::new(&mut client, name);
    assert!(lock.try_acquire().unwrap());
    lock.release().unwrap();
}

#[test]
fn a_session_lock_timeout_does_not_cut_a_plain_acquire_short() {
    let mut holder = PgLock::new(connect(), "blocking/forever");
    holder.acquire().unwrap();
    let waiter = thread::spawn(|| {
        let mut client = connect();
        client.batch_execute("SET lock_timeout = '20ms'").unwrap();
        let mut waiter = PgLock::new(client, "blocking/forever");
        waiter.acquire().map(|()| waiter)
    });
    thread::sleep(Duration::from_millis(200));
    holder.release().unwrap();
    let mut waiter = waiter
        .join()
        .unwrap()
        .expect("acquire waits past the session's lock_timeout");
    let setting = waiter.client().query_one("SHOW lock_timeout", &[]).unwrap();
    assert_eq!(
        setting.get::<_, String>(0),
        "20ms",
        "the session's setting is unchanged"
    );
}

#[test]
fn acquire_timeout_gives_up_no_earlier_than_asked_and_leaves_settings_alone() {
    let mut holder = PgLock::new(connect(), "blocking/timeout");
    holder.acquire().unwrap();
    let mut client = connect();
    client.batch_execute("SET lock_timeout = '7s'").unwrap();
    let mut waiter = PgLock::new(client, "blocking/timeout");
    for asked in [Duration::from_millis(100), Duration::from_micros(30_500)] {
        let started = Instant::now();
        assert!(
            !waiter.acquire_timeout(asked).unwrap(),
            "the lock is held elsewhere"
        );
        let waited = started.elapsed();
        assert!(
            waited >= asked,
            "gave up after {waited:?}, before {asked:?}"
        );
        assert!(!waiter.is_acquired());
    }
    let setting = waiter.client().query_one("SHOW lock_timeout", &[]).unwrap();
    assert_eq!(setting.get::<_, String>(0), "7s");
    holder.release().unwrap();
    assert!(waiter.acquire_timeout(Duration::from_millis(100)).unwrap());
    assert!(waiter.verify().unwrap());
}

#[test]
fn a_lock_lost_behind_dlocks_back_is_not_held_on_release() {
    let mut lock = PgLock::new(connect(), "blocking/lost");
    lock.acquire().unwrap();
    lock.client()
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .unwrap();
    assert!(!lock.verify().unwrap());
    assert!(lock.is_acquired(), "the object's own view does no I/O");
    assert!(matches!(lock.release(), Err(Error::NotHeld)));
    assert!(!lock.is_acquired(), "unlocked either way");
}

#[test]
fn shared_locks_admit_readers_together_and_exclude_writers() {
    let mut reader = PgLock::new(connect(), "blocking/shared").shared();
    let mut second_reader = PgLock::new(connect(), "blocking/shared").shared();
    let mut writer = PgLock::new(connect(), "blocking/shared");
    assert_eq!(reader.mode(), Mode::Shared);
    assert!(reader.try_acquire().unwrap());
    assert!(
        second_reader
            .acquire_timeout(Duration::from_millis(100))
            .unwrap()
    );
    assert!(reader.verify().unwrap() && second_reader.verify().unwrap());
    assert!(!writer.try_acquire().unwrap(), "readers exclude a writer");
    let holders = reader.holders().unwrap();
    assert_eq!(holders.len(), 2);
    assert!(holders.iter().all(|holder| holder.mode == Mode::Shared));
    reader.release().unwrap();
    second_reader.release().unwrap();
    assert!(writer.try_acquire().unwrap());
    assert!(!reader.try_acquire().unwrap(), "a writer excludes readers");
}

#[test]
fn every_key_kind_and_policy_locks_where_pg_locks_expects_it() {
    let mut observer = connect();
    let keys = [
        Key::from("blocking/policy"),
        Key::from(&b"blocking/\xffbytes"[..]),
        Key::from(7_700_000_001_i64),
        Key::from((77, -78)),
    ];
    let policies = [
        KeyPolicy::Blake2b,
        KeyPolicy::Sqlx,
        KeyPolicy::Sha1,
        KeyPolicy::Crc32Pair,
    ];
    for policy in policies {
        for key in &keys {
            let mut lock = PgLock::new(connect(), key.clone()).policy(policy.clone());
            let pg_key = lock.pg_key().unwrap();
            assert_eq!(pg_key, policy.pg_key(key).unwrap());
            lock.acquire().unwrap();
            let pid = backend_pid(lock.client());
            assert_eq!(
                holder_pids(&mut observer, pg_key),
                [pid],
                "{policy:?} {key}"
            );
            lock.release().unwrap();
            assert!(
                holder_pids(&mut observer, pg_key).is_empty(),
                "{policy:?} {key}"
            );
        }
    }
}

#[test]
fn the_default_key_of_user_001_is_the_documented_number() {
    let lock = PgLock::new(connect(), "user/001");
    assert_eq!(lock.pg_key().unwrap(), PgKey::BigInt(-8875347467275493450));
}

#[test]
fn a_panic_in_the_critical_section_releases_the_lock() {
    let mut observer = connect();
    let key = KeyPolicy::default()
        .pg_key(&Key::from("blocking/panic"))
        .unwrap();
    let mut client = connect();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut lock = PgLock::new(&mut client, "blocking/panic");
        lock.acquire().unwrap();
        panic!("the critical section failed");
    }));
    assert!(outcome.is_err());
    assert!(holder_pids(&mut observer, key).is_empty());
}

#[test]
fn into_inner_releases_and_gives_the_connection_back() {
    let mut observer = connect();
    let key = KeyPolicy::default()
        .pg_key(&Key::from("blocking/into-inner"))
        .unwrap();
    let mut lock = PgLock::new(connect(), "blocking/into-inner");
    lock.acquire().unwrap();
    let (mut client, released) = lock.into_inner();
    released.unwrap();
    assert!(holder_pids(&mut observer, key).is_empty());
    client.batch_execute("SELECT 1").unwrap();
}

#[test]
fn transaction_locks_last_until_the_transaction_ends() {
    let mut observer = connect();
    let key = KeyPolicy::default()
        .pg_key(&Key::from("blocking/xact"))
        .unwrap();
    let mut client = connect();
    let mut tx = client.transaction().unwrap();
    let lock = PgXactLock::new("blocking/xact");
    lock.acquire(&mut tx).unwrap();
    assert!(lock.verify(&mut tx).unwrap());
    let mut other = PgLock::new(connect(), "blocking/xact");
    assert!(!other.try_acquire().unwrap());
    tx.commit().unwrap();
    assert!(
        holder_pids(&mut observer, key).is_empty(),
        "commit released it"
    );

    let mut tx = client.transaction().unwrap();
    assert!(
        PgXactLock::new("blocking/xact")
            .shared()
            .try_acquire(&mut tx)
            .unwrap()
    );
    tx.rollback().unwrap();
    assert!(
        holder_pids(&mut observer, key).is_empty(),
        "rollback released it"
    );
}

#[test]
fn a_transaction_lock_timeout_leaves_the_transaction_usable() {
    let mut holder = PgLock::new(connect(), "blocking/xact-timeout");
    holder.acquire().unwrap();
    let mut client = connect();
    let mut tx = client.transaction().unwrap();
    tx.batch_execute("SET LOCAL lock_timeout = '9s'").unwrap();
    let lock = PgXactLock::new("blocking/xact-timeout");
    let started = Instant::now();
    assert!(
        !lock
            .acquire_timeout(&mut tx, Duration::from_millis(80))
            .unwrap()
    );
    assert!(started.elapsed() >= Duration::from_millis(80));
    assert!(
        !lock.try_acquire(&mut tx).unwrap(),
        "the transaction is still usable"
    );
    let setting: String = tx.query_one("SHOW lock_timeout", &[]).unwrap().get(0);
    assert_eq!(setting, "9s", "the transaction's setting is unchanged");
    holder.release().unwrap();
    assert!(
        lock.acquire_timeout(&mut tx, Duration::from_millis(500))
            .unwrap()
    );
    let setting: String = tx.query_one("SHOW lock_timeout", &[]).unwrap().get(0);
    assert_eq!(setting, "9s", "unchanged after a granted wait too");
    tx.commit().unwrap();
}

#[test]
fn holders_names_every_session_and_mode() {
    let mut holder = PgLock::new(connect(), "blocking/holders");
    holder.acquire().unwrap();
    let pid = backend_pid(holder.client());
    let mut asker = PgLock::new(connect(), "blocking/holders");
    let holders = asker.holders().unwrap();
    assert_eq!(
        holders,
        [dlock_postgres::Holder {
            pid,
            mode: Mode::Exclusive
        }]
    );
}

/// How many statements the session of `client` keeps prepared, asked by a simple query
/// (which prepares nothing itself).
fn prepared_statements(client: &mut postgres::Client) -> i64 {
    let reply = client
        .simple_query("SELECT count(*) FROM pg_prepared_statements")
        .unwrap();
    reply
        .iter()
        .find_map(|message| match message {
            postgres::SimpleQueryMessage::Row(row) => row.get(0).map(|n| n.parse().unwrap()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_reused_lock_object_prepares_its_statements_and_keeps_its_semantics() {
    let mut lock = PgLock::new(connect(), "blocking/reused");
    let mut other = PgLock::new(connect(), "blocking/reused");
    for round in 0..4 {
        lock.acquire().unwrap();
        assert!(lock.verify().unwrap(), "round {round}");
        assert!(!other.try_acquire().unwrap(), "round {round}: excluded");
        lock.release().unwrap();
        assert!(other.try_acquire().unwrap(), "round {round}: free again");
        other.release().unwrap();
    }
    // The plain lock and the unlock, prepared from the second acquire on; the try and the
    // unlock on the other session.
    assert_eq!(prepared_statements(lock.client()), 2);
    assert_eq!(prepared_statements(other.client()), 2);
    // A lost lock is still NotHeld through the prepared unlock.
    lock.acquire().unwrap();
    lock.client()
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .unwrap();
    assert!(matches!(lock.release(), Err(Error::NotHeld)));

    // Changing the mode or the key's shape prepares statements for the new shape.
    let mut lock = lock.shared();
    let mut reader = PgLock::new(connect(), "blocking/reused").shared();
    for _ in 0..2 {
        lock.acquire().unwrap();
        assert!(reader.try_acquire().unwrap(), "shared locks share");
        assert!(!other.try_acquire().unwrap(), "and exclude writers");
        reader.release().unwrap();
        lock.release().unwrap();
    }
    let mut pair = PgLock::new(connect(), (7, 8));
    let mut pair_other = PgLock::new(connect(), (7, 8));
    for _ in 0..3 {
        pair.acquire().unwrap();
        assert!(!pair_other.try_acquire().unwrap());
        pair.release().unwrap();
    }
    assert_eq!(prepared_statements(pair.client()), 2);
}

#[test]
fn a_citus_worker_is_refused_and_its_coordinator_is_not() {
    // A stand-in whose catalogue answers as a Citus node's (see `citus_standin`).
    let (url, set_group) = common::citus_standin("dlock_citus_blocking", 2);
    let client = postgres::Client::connect(&url, common::tls()).unwrap();
    let mut lock = PgLock::new(client, "deployments/citus");
    let refused = lock.try_acquire();
    assert!(
        matches!(
            refused,
            Err(Error::CannotExclude {
                deployment: dlock_postgres::Deployment::CitusWorker
            })
        ),
        "{refused:?}"
    );
    assert!(!lock.is_acquired());
    set_group(0);
    assert!(
        lock.try_acquire().unwrap(),
        "the coordinator's locks exclude"
    );
    lock.release().unwrap();
}

#[test]
fn inside_a_runtimes_block_on_a_blocking_lock_says_so_and_inside_spawn_blocking_it_works() {
    // The postgres client would panic there; the lock says what to do instead.
    let mut lock = PgLock::new(connect(), "blocking/inside-runtime");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (lock, refused) = runtime.block_on(async move {
        let refused = lock.try_acquire();
        (lock, refused)
    });
    assert!(
        matches!(refused, Err(Error::Unsupported { .. })),
        "{refused:?}"
    );
    let released = runtime.block_on(async move {
        tokio::task::spawn_blocking(move || {
            let mut lock = lock;
            assert!(lock.try_acquire().unwrap());
            lock.release()
        })
        .await
        .unwrap()
    });
    released.unwrap();
}
