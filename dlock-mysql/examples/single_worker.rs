//! One worker at a time on a job queue shared by many processes, with MySQL or MariaDB named
//! locks: each process tries the lock, and only the holder works.
//!
//! ```console
//! $ DATABASE_URL=mysql://user:password@localhost/db cargo run -p dlock-mysql \
//!     --example single_worker --features tokio
//! ```

use std::time::Duration;

use dlock_mysql::mysql_async::{Conn, Opts};
use dlock_mysql::{AsyncLock, AsyncMySqlLock};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL to a MySQL server, mysql://user:password@host/db")?;
    let conn = Conn::new(Opts::from_url(&url)?).await?;
    let mut lock = AsyncMySqlLock::new(conn, "jobs/worker");
    // Prefer the lock's own timeout to an outer `tokio::time::timeout`: it waits in the
    // server and keeps the connection usable.
    if lock.acquire_timeout(Duration::from_secs(1)).await? {
        println!("working as the only worker");
        lock.release().await?;
    } else {
        println!("another process is the worker");
    }
    Ok(())
}
