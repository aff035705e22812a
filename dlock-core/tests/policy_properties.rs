//! Properties of every key policy over arbitrary keys: no input makes a policy panic, the
//! hashed MySQL name is deterministic, short, ASCII, and keeps distinct names distinct.

use dlock_core::{Error, Key, KeyPolicy, MYSQL_NAME_MAX_CHARS, PgKey};
use proptest::prelude::*;

fn any_key() -> impl Strategy<Value = Key> {
    prop_oneof![
        any::<String>().prop_map(Key::from),
        ".{0,200}".prop_map(Key::from),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Key::from),
        any::<i64>().prop_map(Key::from),
        any::<(i32, i32)>().prop_map(Key::from),
    ]
}

fn built_in_policies() -> [KeyPolicy; 6] {
    [
        KeyPolicy::Blake2b,
        KeyPolicy::Sqlx,
        KeyPolicy::Sha1,
        KeyPolicy::Crc32Pair,
        KeyPolicy::HashedMySqlName,
        KeyPolicy::DotNet,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// DistributedLock's MySQL names: deterministic, and every name of any length and case
    /// that is not refused comes out at most 64 characters (a long or mixed-case one hashed).
    #[test]
    fn dotnet_mysql_names_are_deterministic_and_fit(text in ".{0,120}") {
        let key = Key::from(text.as_str());
        if let Ok(name) = KeyPolicy::DotNet.mysql_name(&key) {
            prop_assert_eq!(&name, &KeyPolicy::DotNet.mysql_name(&key).unwrap());
            prop_assert!(name.encode_utf16().count() <= MYSQL_NAME_MAX_CHARS);
            if name != text {
                // Hashed: the last 32 characters are DistributedLock's base 32.
                let suffix: String = name.chars().rev().take(32).collect();
                prop_assert_eq!(suffix.chars().count(), 32);
                prop_assert!(suffix.chars().all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c)));
            }
        }
    }

    #[test]
    fn no_key_makes_a_policy_panic_and_refusals_say_why(key in any_key()) {
        for policy in built_in_policies() {
            // Every built-in policy gives every key a PostgreSQL key.
            let pg = policy.pg_key(&key);
            prop_assert!(pg.is_ok(), "{policy:?} refused {key:?} for PostgreSQL: {pg:?}");
            match policy.mysql_name(&key) {
                Ok(name) => {
                    prop_assert!(!name.is_empty());
                    prop_assert!(name.chars().count() <= MYSQL_NAME_MAX_CHARS);
                    prop_assert!(!name.contains('\0'));
                }
                Err(Error::InvalidKey { reason }) => prop_assert!(!reason.is_empty()),
                Err(other) => prop_assert!(false, "{policy:?}: {other:?} is not InvalidKey"),
            }
        }
    }

    #[test]
    fn the_hashed_mysql_name_is_deterministic_short_and_ascii(key in any_key()) {
        let name = KeyPolicy::HashedMySqlName.mysql_name(&key).unwrap();
        prop_assert_eq!(&name, &KeyPolicy::HashedMySqlName.mysql_name(&key).unwrap());
        prop_assert!(name.len() <= MYSQL_NAME_MAX_CHARS, "{}", name);
        prop_assert!(name.is_ascii(), "{}", name);
    }

    #[test]
    fn distinct_short_names_stay_distinct(a in ".{1,40}", b in ".{1,40}") {
        prop_assume!(a != b);
        let hashed = |text: &str| KeyPolicy::HashedMySqlName.mysql_name(&Key::from(text)).unwrap();
        prop_assert_ne!(hashed(&a), hashed(&b));
        // The verbatim policy keeps a valid name as it is, so distinct names stay distinct.
        if !a.contains('\0') && !b.contains('\0') {
            let verbatim = |text: &str| KeyPolicy::default().mysql_name(&Key::from(text)).unwrap();
            prop_assert_eq!(verbatim(&a), a.clone());
            prop_assert_ne!(verbatim(&a), verbatim(&b));
        }
    }

    #[test]
    fn integer_keys_and_pairs_are_their_own_postgresql_keys(value in any::<i64>(), pair in any::<(i32, i32)>()) {
        for policy in built_in_policies() {
            prop_assert_eq!(policy.pg_key(&Key::from(value)).unwrap(), PgKey::BigInt(value));
            prop_assert_eq!(policy.pg_key(&Key::from(pair)).unwrap(), PgKey::Pair(pair.0, pair.1));
        }
    }
}
