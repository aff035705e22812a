//! One nightly report across every replica of a service: each replica tries the lock on a
//! pooled PostgreSQL connection, and only the one that gets it does the work.
//!
//! ```console
//! $ DATABASE_URL=postgres://postgres@localhost/postgres cargo run -p dlock-pool \
//!     --example nightly_report --features bb8,postgres
//! ```

use std::time::Duration;

use bb8_postgres::PostgresConnectionManager;
use bb8_postgres::tokio_postgres::NoTls;
use dlock_pool::{AsyncLockGuard, AsyncLockPool};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL to a PostgreSQL server, postgres://user@host/db")?;
    let manager = PostgresConnectionManager::new_from_stringlike(url, NoTls)?;
    let pool = AsyncLockPool::new(manager).await?;

    // Wait up to a second: another replica holding the lock is doing tonight's report.
    match pool
        .acquire_timeout("reports/nightly", Duration::from_secs(1))
        .await?
    {
        Some(guard) => {
            // The guard derefs to the connection, for work inside the critical section.
            let row = guard.query_one("SELECT now()::text", &[]).await?;
            println!("writing the report as of {}", row.get::<_, String>(0));
            AsyncLockGuard::release(guard).await?;
        }
        None => println!("another replica is writing the report"),
    }
    Ok(())
}
