//! The semantics table of `dlock_core::Lock`, row by row, for `MySqlLock` against a real
//! MariaDB (or MySQL) server. Every test locks names of its own: tests run in parallel on
//! one server.

use dlock_testkit::mysql as common;

use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use common::{connect, holder_of};
use dlock_mysql::{Error, Key, KeyPolicy, Lock, MySqlLock};
use mysql::prelude::Queryable;

#[test]
fn a_second_lock_on_the_same_session_dropped_while_held_takes_only_its_own_hold() {
    // The server counts the holds of one name per session: the second object's drop releases
    // one, and the first object's hold stays, with nothing leaked.
    let name = "blocking/second-on-session";
    let mut first = MySqlLock::new(connect(), name);
    first.acquire().unwrap();
    {
        let mut second = MySqlLock::new(first.conn(), name);
        assert!(second.try_acquire().unwrap());
    }
    assert!(first.verify().unwrap(), "the first hold stays");
    let mut other = MySqlLock::new(connect(), name);
    assert!(!other.try_acquire().unwrap());
    first.release().unwrap();
    assert!(other.try_acquire().unwrap(), "no hold leaked");
    other.release().unwrap();
    assert_eq!(holder_of(name), None);
}

#[test]
fn names_are_the_same_locks_other_libraries_take_with_bound_parameters() {
    for name in [
        "blocking/interop",
        "blocking/日本語 'quoted' \\ back",
        "blocking/ümlaut",
    ] {
        let mut lock = MySqlLock::new(connect(), name);
        lock.acquire().unwrap();
        let id = lock.conn().connection_id();
        assert_eq!(holder_of(name), Some(id), "{name}");
        let mut other = connect();
        let busy: Option<i64> = other
            .exec_first("SELECT GET_LOCK(?, 0)", (name,))
            .unwrap()
            .flatten();
        assert_eq!(busy, Some(0), "{name}: excluded through a bound parameter");
        lock.release().unwrap();
        assert_eq!(holder_of(name), None, "{name}");
    }
}

#[test]
fn names_mean_the_same_whatever_the_sessions_sql_mode_and_character_set() {
    let mut conn = connect();
    conn.query_drop("SET sql_mode = 'NO_BACKSLASH_ESCAPES,ANSI_QUOTES', NAMES latin1")
        .unwrap();
    for name in [
        "blocking/modes",
        "blocking/modes\\x",
        "blocking/modes-é",
        "blocking/\"q\"",
    ] {
        let mut lock = MySqlLock::new(&mut conn, name);
        lock.acquire().unwrap();
        let id = lock.conn().connection_id();
        assert_eq!(holder_of(name), Some(id), "{name}");
        lock.release().unwrap();
    }
}

#[test]
fn a_lock_lost_behind_the_objects_back_is_not_held_at_release() {
    let mut lock = MySqlLock::new(connect(), "blocking/lost");
    lock.acquire().unwrap();
    lock.conn()
        .query_drop("SELECT RELEASE_ALL_LOCKS()")
        .unwrap();
    assert!(!lock.verify().unwrap());
    assert!(matches!(lock.release(), Err(Error::NotHeld)));
    assert!(!lock.is_acquired(), "unlocked whatever the result");
    // Held by another session: RELEASE_LOCK answers 0, which is NotHeld too.
    lock.acquire().unwrap();
    lock.conn()
        .query_drop("SELECT RELEASE_ALL_LOCKS()")
        .unwrap();
    let mut other = MySqlLock::new(connect(), "blocking/lost");
    assert!(other.try_acquire().unwrap());
    assert!(matches!(lock.release(), Err(Error::NotHeld)));
    assert!(
        other.verify().unwrap(),
        "the other session's lock is untouched"
    );
}

#[test]
fn a_panic_inside_the_critical_section_releases_the_lock() {
    let mut conn = connect();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut lock = MySqlLock::new(&mut conn, "blocking/panic");
        lock.acquire().unwrap();
        panic!("the critical section failed");
    }));
    assert!(outcome.is_err());
    assert_eq!(holder_of("blocking/panic"), None);
    // The connection is still good for the next lock.
    let mut again = MySqlLock::new(&mut conn, "blocking/panic");
    assert!(again.try_acquire().unwrap());
}

#[test]
fn into_inner_releases_and_gives_the_connection_back() {
    let mut lock = MySqlLock::new(connect(), "blocking/into-inner");
    lock.acquire().unwrap();
    let id = lock.conn().connection_id();
    let (mut conn, released) = lock.into_inner();
    released.unwrap();
    assert_eq!(conn.connection_id(), id);
    assert_eq!(holder_of("blocking/into-inner"), None);
    let (_, nothing) = MySqlLock::new(&mut conn, "blocking/into-inner").into_inner();
    nothing.unwrap();
}

#[test]
fn pooled_connections_of_mysql_pools_hold_locks() {
    let pool = mysql::Pool::new(dlock_testkit::mysql::opts()).unwrap();
    let mut lock = MySqlLock::new(pool.get_conn().unwrap(), "blocking/pooled");
    lock.acquire().unwrap();
    let mut boxed = MySqlLock::new(Box::new(connect()), "blocking/pooled");
    assert!(!boxed.try_acquire().unwrap());
    lock.release().unwrap();
    assert!(boxed.try_acquire().unwrap());
}

#[test]
fn long_keys_lock_under_the_hashed_name_policy() {
    let key = "blocking/long-".repeat(20);
    let mut plain = MySqlLock::new(connect(), key.as_str());
    assert!(matches!(plain.acquire(), Err(Error::InvalidKey { .. })));
    let mut hashed = MySqlLock::new(connect(), key.as_str()).policy(KeyPolicy::HashedMySqlName);
    hashed.acquire().unwrap();
    let name = hashed.name().unwrap();
    assert!(name.chars().count() <= 64, "{name}");
    assert!(holder_of(&name).is_some());
}

#[test]
fn invalid_names_are_refused_before_any_io() {
    // A connection whose session is gone: any statement through it would fail with a
    // connection error, so InvalidKey proves the name was refused first.
    let mut conn = connect();
    common::kill(conn.connection_id());
    let keys = [
        Key::from(""),
        Key::from("x".repeat(65)),
        // 64 characters of four bytes: within MySQL's 64 characters, over MariaDB's 192 bytes.
        Key::from("😀".repeat(64)),
        Key::from(&[0xff_u8, 0xfe][..]),
        Key::from("nul\0inside"),
        Key::from((1, 2)),
    ];
    for key in keys {
        let mut lock = MySqlLock::new(&mut conn, key.clone());
        for outcome in [
            lock.acquire().map(|()| true),
            lock.try_acquire(),
            lock.acquire_timeout(Duration::from_secs(1)),
            lock.verify(),
        ] {
            let Err(Error::InvalidKey { reason }) = outcome else {
                panic!("{key}: {outcome:?} is not InvalidKey");
            };
            assert!(!reason.is_empty());
        }
        assert!(matches!(lock.holder(), Err(Error::InvalidKey { .. })));
    }
}

#[test]
fn shared_and_transaction_scoped_locks_are_unsupported_and_say_where_to_go() {
    for lock in [
        MySqlLock::new(connect(), "blocking/shared").shared(),
        MySqlLock::new(connect(), "blocking/shared").transaction_scoped(),
    ] {
        let mut lock = lock;
        let error = lock.try_acquire().unwrap_err();
        assert!(matches!(error, Error::Unsupported { .. }), "{error:?}");
        assert!(error.to_string().contains("PostgreSQL"), "{error}");
        assert!(matches!(lock.acquire(), Err(Error::Unsupported { .. })));
        assert_eq!(holder_of("blocking/shared"), None, "nothing was locked");
    }
}

#[test]
fn locks_made_per_use_on_one_connection_check_once_per_session_and_again_after_a_reset() {
    let name = "blocking/per-use";
    let mut conn = connect();
    let mut other = MySqlLock::new(connect(), name);
    let mark = |conn: &mut mysql::Conn| -> Option<String> {
        conn.query_first::<Option<String>, _>("SELECT @dlock_deployment_checked")
            .unwrap()
            .flatten()
    };
    assert_eq!(mark(&mut conn), None);
    for round in 0..4 {
        if round == 2 {
            // A session reset clears the mark: the next lock checks again.
            conn.reset().unwrap();
            assert_eq!(mark(&mut conn), None);
        }
        let mut lock = MySqlLock::new(&mut conn, name);
        assert!(lock.try_acquire().unwrap(), "round {round}");
        assert!(!other.try_acquire().unwrap(), "round {round}: excluded");
        lock.release().unwrap();
    }
    let checked = mark(&mut conn).expect("a passed check marks its session");
    // A value anybody else sets is no check: the next lock checks, and marks the session anew.
    conn.query_drop("SET @dlock_deployment_checked = 'forged'")
        .unwrap();
    let mut lock = MySqlLock::new(&mut conn, name);
    assert!(lock.try_acquire().unwrap());
    lock.release().unwrap();
    drop(lock);
    assert_eq!(mark(&mut conn), Some(checked));
}
