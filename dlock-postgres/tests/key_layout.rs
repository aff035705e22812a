//! The keys dlock computes land where PostgreSQL and other libraries expect them.

mod common;

use dlock_postgres::{Key, KeyPolicy, PgKey};
use postgres::{Client, NoTls};

fn connect() -> Client {
    Client::connect(&common::pg_url(), NoTls).expect("connect to DLOCK_PG_URL")
}

fn try_lock(client: &mut Client, key: PgKey) -> bool {
    match key {
        PgKey::BigInt(value) => client.query_one("SELECT pg_try_advisory_lock($1)", &[&value]),
        PgKey::Pair(high, low) => {
            client.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&high, &low])
        }
    }
    .unwrap()
    .get(0)
}

#[test]
fn every_policy_key_is_the_server_lock_other_sessions_see() {
    let mut holder = connect();
    let mut other = connect();
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    // Tests run in parallel on one server, so each test locks keys of its own.
    let key = Key::from("key_layout/every_policy");
    for policy in [
        KeyPolicy::Blake2b,
        KeyPolicy::Sqlx,
        KeyPolicy::Sha1,
        KeyPolicy::Crc32Pair,
    ] {
        let pg_key = policy.pg_key(&key).unwrap();
        assert!(
            try_lock(&mut holder, pg_key),
            "{policy:?}: the key is free at first"
        );
        assert_eq!(
            common::holder_pids(&mut other, pg_key),
            [holder_pid],
            "{policy:?}: pg_locks shows it"
        );
        assert!(
            !try_lock(&mut other, pg_key),
            "{policy:?}: another session is excluded"
        );
    }
    holder
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .unwrap();
}

#[test]
fn the_default_key_of_user_001_is_the_one_sqlalchemy_dlock_locks() {
    let mut client = connect();
    let pg_key = KeyPolicy::default().pg_key(&Key::from("user/001")).unwrap();
    assert_eq!(pg_key, PgKey::BigInt(-8875347467275493450));
    // sqlalchemy-dlock sends this very number: a session that locks the literal is excluded.
    assert!(try_lock(&mut client, pg_key));
    let mut python_side = connect();
    let busy: bool = python_side
        .query_one("SELECT pg_try_advisory_lock(-8875347467275493450)", &[])
        .unwrap()
        .get(0);
    assert!(!busy);
}
