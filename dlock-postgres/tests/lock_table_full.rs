//! A full lock table is a clear error naming the setting to raise. This fills the server's
//! shared lock table, so it is a test binary of its own: cargo runs test binaries one after
//! another, and no other test can be starved of locks meanwhile.

use dlock_testkit::postgres as common;

use common::connect;
use dlock_postgres::{Error, Lock, PgLock};

/// The tests here fill the one table in turn.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_full_lock_table_is_lock_table_full_naming_max_locks_per_transaction() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
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

/// The one-statement try a shared client sends (dlock-pool's multiplexed locks) says the same.
#[cfg(feature = "tokio")]
#[test]
fn a_full_lock_table_is_lock_table_full_for_a_shared_client_s_try_too() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    use dlock_postgres::tokio::SharedOp;
    runtime.block_on(async {
        let shared = common::connect_async().await;
        let filler = common::connect_async().await;
        let key = dlock_postgres::PgKey::BigInt(-4243);
        let filled = filler
            .batch_execute(
                "SELECT pg_advisory_lock(-4242, g) FROM generate_series(1, 10000000) AS g",
            )
            .await
            .expect_err("ten million locks do not fit in the lock table");
        assert_eq!(filled.code().map(|code| code.code()), Some("53200"));
        let outcome = dlock_postgres::tokio::batch(&shared, &[(SharedOp::TryLock, key)]).await;
        filler
            .batch_execute("SELECT pg_advisory_unlock_all()")
            .await
            .unwrap();
        let error = outcome.expect_err("no room for another lock");
        assert!(matches!(error, Error::LockTableFull { .. }), "{error:?}");
        let granted = dlock_postgres::tokio::batch(&shared, &[(SharedOp::TryLock, key)]).await;
        assert_eq!(granted.unwrap(), [true]);
        let released = dlock_postgres::tokio::batch(&shared, &[(SharedOp::Unlock, key)]).await;
        assert_eq!(released.unwrap(), [true]);
    });
}
