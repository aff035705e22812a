//! The names dlock computes are names MariaDB and MySQL lock, and other sessions see.

use dlock_testkit::mysql as common;

use common::connect;
use dlock_mysql::{Key, KeyPolicy};
use mysql::prelude::Queryable;

#[test]
fn names_under_each_policy_lock_and_exclude_other_sessions() {
    let mut holder = connect();
    let mut other = connect();
    let keys = [
        Key::from("user/001"),
        Key::from(42_i64),
        Key::from("日本語"),
    ];
    for policy in [
        KeyPolicy::Blake2b,
        KeyPolicy::HashedMySqlName,
        KeyPolicy::DotNet,
    ] {
        for key in &keys {
            let name = policy.mysql_name(key).unwrap();
            let got: Option<i64> = holder
                .exec_first("SELECT GET_LOCK(?, 0)", (&name,))
                .unwrap();
            assert_eq!(got, Some(1), "{policy:?} {key}: {name} is free at first");
            let busy: Option<i64> = other.exec_first("SELECT GET_LOCK(?, 0)", (&name,)).unwrap();
            assert_eq!(
                busy,
                Some(0),
                "{policy:?} {key}: another session is excluded"
            );
            let owner: Option<u32> = other
                .exec_first("SELECT IS_USED_LOCK(?)", (&name,))
                .unwrap();
            assert_eq!(owner, Some(holder.connection_id()), "{policy:?} {key}");
        }
    }
    holder.query_drop("SELECT RELEASE_ALL_LOCKS()").unwrap();
}

#[test]
fn a_hashed_name_for_a_long_key_is_accepted_by_the_server() {
    let mut client = connect();
    let name = KeyPolicy::HashedMySqlName
        .mysql_name(&Key::from("names/long-".repeat(50)))
        .unwrap();
    let got: Option<i64> = client
        .exec_first("SELECT GET_LOCK(?, 0)", (&name,))
        .unwrap();
    assert_eq!(got, Some(1));
    client.query_drop("SELECT RELEASE_ALL_LOCKS()").unwrap();
}

#[cfg(feature = "blocking")]
#[test]
fn a_dotnet_name_is_the_lock_distributed_lock_takes() {
    use dlock_mysql::{Lock, MySqlLock};
    // A mixed-case name is lowercased and given DistributedLock's hash suffix (pinned in
    // dlock-core), and that is the lock the server holds and other sessions see.
    let mut lock = MySqlLock::new(connect(), "names/ABC").policy(KeyPolicy::DotNet);
    assert!(lock.try_acquire().unwrap());
    let name = lock.name().unwrap();
    assert!(name.starts_with("names/abc"), "{name}");
    let busy: Option<i64> = connect()
        .exec_first("SELECT GET_LOCK(?, 0)", (&name,))
        .unwrap();
    assert_eq!(busy, Some(0), "the .NET side is excluded");
    lock.release().unwrap();
}
