//! A full lock table is a clear error naming the setting to raise. This fills the server's
//! shared lock table, so it is a test binary of its own: cargo runs test binaries one after
//! another, and no other test can be starved of locks meanwhile.

use dlock_testkit::postgres as common;

use common::connect;
use dlock_postgres::{Error, Lock, PgLock};

#[test]
fn a_full_lock_table_is_lock_table_full_naming_max_locks_per_transaction() {
    let mut filler = connect();
    // A full table refuses new sessions too (they need locks to start), so connect first.
    let mut lock = PgLock::new(connect(), "lock-table-full");
    // Session locks taken by a failing statement stay held, so this fills the table and
    // keeps it full until the filler unlocks.
    let filled = filler
        .batch_execute("SELECT pg_advisory_lock(-4242, g) FROM generate_series(1, 10000000) AS g");
    let filled = filled.expect_err("ten million locks do not fit in the lock table");
    assert_eq!(filled.code().map(|code| code.code()), Some("53200"));

    let outcome = lock.try_acquire();
    filler
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .unwrap();
    let error = outcome.expect_err("no room for another lock");
    assert!(matches!(error, Error::LockTableFull { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("raise max_locks_per_transaction"),
        "{error}"
    );
    assert!(
        lock.try_acquire().unwrap(),
        "room again once the filler let go"
    );
}
