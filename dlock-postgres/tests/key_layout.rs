//! The keys dlock computes land where PostgreSQL and other libraries expect them.

use dlock_testkit::postgres as common;

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
        KeyPolicy::DotNet,
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

#[cfg(feature = "blocking")]
mod dotnet {
    use super::*;
    use dlock_postgres::{Lock, PgLock};
    use proptest::prelude::*;

    /// The (classid, objid, objsubid) `pg_locks` shows for a key: a bigint is its high and low
    /// 32 bits in key space 1, a pair its two halves in key space 2. Written out here, apart from
    /// the library's own mapping.
    fn expected_ids(key: PgKey) -> (i64, i64, i16) {
        match key {
            PgKey::BigInt(value) => ((value >> 32) & 0xffff_ffff, value & 0xffff_ffff, 1),
            PgKey::Pair(high, low) => (
                i64::from(high) & 0xffff_ffff,
                i64::from(low) & 0xffff_ffff,
                2,
            ),
        }
    }

    /// Names of every shape DistributedLock tells apart: short ASCII (packed into a pair),
    /// 16 hex digits (a bigint), `xxxxxxxx,yyyyyyyy` (a pair), and anything else (hashed).
    fn names() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,9}",
            "[0-9a-fA-F]{16}",
            "[0-9a-fA-F]{8},[0-9a-fA-F]{8}",
            "\\PC{10,40}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Each key the DotNet policy computes is taken on a real server in the key space
        /// and with the halves the algorithm says, as DistributedLock takes it.
        #[test]
        fn dotnet_keys_land_in_the_key_space_the_algorithm_says(name in names()) {
            let key = KeyPolicy::DotNet.pg_key(&Key::from(name.as_str())).unwrap();
            if name.len() <= 9 && name.is_ascii() {
                prop_assert!(matches!(key, PgKey::Pair(..)), "{name:?}: {key:?}");
            }
            let mut lock = PgLock::new(connect(), name.as_str()).policy(KeyPolicy::DotNet);
            lock.acquire().unwrap();
            let pid: i32 = lock.client().query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
            let rows = connect()
                .query(
                    "SELECT classid::text::bigint, objid::text::bigint, objsubid FROM pg_locks \
                     WHERE locktype = 'advisory' AND granted AND pid = $1",
                    &[&pid],
                )
                .unwrap();
            let shown: Vec<(i64, i64, i16)> =
                rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect();
            prop_assert_eq!(shown, vec![expected_ids(key)], "{:?}", name);
            lock.release().unwrap();
        }
    }

    #[test]
    fn the_dotnet_key_of_abc_is_the_pair_distributed_lock_sends() {
        // DistributedLock sends pg_try_advisory_lock(-1014293505, -1) for "abc".
        let mut lock = PgLock::new(connect(), "abc").policy(KeyPolicy::DotNet);
        assert!(lock.try_acquire().unwrap());
        let busy: bool = connect()
            .query_one("SELECT pg_try_advisory_lock(-1014293505, -1)", &[])
            .unwrap()
            .get(0);
        assert!(!busy, "the .NET side is excluded");
        lock.release().unwrap();
    }
}
