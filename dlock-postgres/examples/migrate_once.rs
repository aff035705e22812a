//! Run database migrations from one replica only: every replica starts, each waits up to
//! 30 seconds for the lock, and the one that holds it migrates while the others wait their
//! turn (and find nothing left to do).
//!
//! ```console
//! $ DATABASE_URL=postgres://postgres@localhost/postgres cargo run -p dlock-postgres \
//!     --example migrate_once --features blocking
//! ```

use std::time::Duration;

use dlock_postgres::postgres::{Client, NoTls};
use dlock_postgres::{Lock, PgLock};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL to a PostgreSQL server, postgres://user@host/db")?;
    let client = Client::connect(&url, NoTls)?;
    let mut lock = PgLock::new(client, "migrations");
    if !lock.acquire_timeout(Duration::from_secs(30))? {
        return Err("another replica has been migrating for 30 s; try again later".into());
    }
    // The lock is held by this session: the critical section uses the same connection.
    lock.client()
        .batch_execute("CREATE TABLE IF NOT EXISTS dlock_example_migrations (version int)")?;
    println!("migrated");
    // Releasing is explicit so its outcome is seen; dropping the lock would release it too.
    lock.release()?;
    Ok(())
}
