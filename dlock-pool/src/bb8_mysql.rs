//! A bb8 connection manager for mysql_async, which the registry does not have.

use dlock_core::{Error, Result};
use dlock_mysql::mysql_async::prelude::Queryable;
use dlock_mysql::mysql_async::{self, Conn, Opts};

/// A [`bb8::ManageConnection`] for `mysql_async` connections, for
/// [`AsyncLockPool`](crate::AsyncLockPool) (and any other bb8 pool).
///
/// Connections are opened with the given options, checked with `COM_PING`, and never found
/// broken by the manager itself (the lock pool's wrapper marks the ones it must close).
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use dlock_pool::{AsyncLockPool, AsyncMySqlManager};
///
/// let manager = AsyncMySqlManager::from_url("mysql://app:secret@localhost/app")?;
/// let pool = AsyncLockPool::new(manager).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AsyncMySqlManager {
    opts: Opts,
}

impl AsyncMySqlManager {
    /// A manager that opens connections with `opts`.
    pub fn new(opts: Opts) -> Self {
        AsyncMySqlManager { opts }
    }

    /// A manager that opens connections to `url` (`mysql://user:password@host:port/db`).
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the URL cannot be parsed, with the reason.
    pub fn from_url(url: &str) -> Result<Self> {
        let opts = Opts::from_url(url).map_err(Error::backend)?;
        Ok(AsyncMySqlManager::new(opts))
    }
}

impl bb8::ManageConnection for AsyncMySqlManager {
    type Connection = Conn;
    type Error = mysql_async::Error;

    async fn connect(&self) -> Result<Conn, mysql_async::Error> {
        Conn::new(self.opts.clone()).await
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), mysql_async::Error> {
        conn.ping().await
    }

    fn has_broken(&self, _conn: &mut Conn) -> bool {
        false
    }
}
