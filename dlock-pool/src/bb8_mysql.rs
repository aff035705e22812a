//! A bb8 connection manager for mysql_async, which the registry does not have.

use dlock_core::{Error, Result};
use dlock_mysql::mysql_async::prelude::Queryable;
use std::time::Duration;

use dlock_mysql::mysql_async::{self, Conn, Opts, OptsBuilder};

/// A [`bb8::ManageConnection`] for `mysql_async` connections, for
/// [`AsyncLockPool`](crate::AsyncLockPool) (and any other bb8 pool).
///
/// Connections are opened with the given options, checked with `COM_PING`, and never found
/// broken by the manager itself (the lock pool's wrapper marks the ones it must close).
///
/// Unless the options set TCP keepalive themselves, the manager turns it on, probing an idle
/// connection after [`KEEPALIVE`](AsyncMySqlManager::KEEPALIVE): a holder whose server
/// vanished behind a silent partition then learns it from the operating system, instead of
/// never.
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
    pub(crate) opts: Opts,
}

impl AsyncMySqlManager {
    /// How long a connection stays idle before TCP keepalive probes it, unless the options
    /// say otherwise.
    pub const KEEPALIVE: Duration = Duration::from_secs(10);

    /// A manager that opens connections with `opts`, with TCP keepalive on unless `opts` set
    /// it.
    pub fn new(opts: Opts) -> Self {
        let opts = if opts.tcp_keepalive().is_some() {
            opts
        } else {
            OptsBuilder::from_opts(opts)
                .tcp_keepalive(Some(Self::KEEPALIVE))
                .into()
        };
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

impl AsyncMySqlManager {
    /// The address the manager connects to, as `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.opts.ip_or_hostname(), self.opts.tcp_port())
    }
}

/// A connection [`AsyncMySqlManager`] could not open: the message names the server's
/// address, and the source is the driver's error (a refused connection, a failed lookup, a
/// refused login, a TLS failure).
#[derive(Debug)]
pub struct MySqlConnectError {
    address: String,
    source: mysql_async::Error,
}

impl MySqlConnectError {
    /// The address the connection was for, as `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The driver's error.
    pub fn driver_error(&self) -> &mysql_async::Error {
        &self.source
    }
}

impl std::fmt::Display for MySqlConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "could not connect to MySQL at {}", self.address)
    }
}

impl std::error::Error for MySqlConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl bb8::ManageConnection for AsyncMySqlManager {
    type Connection = Conn;
    type Error = MySqlConnectError;

    async fn connect(&self) -> Result<Conn, MySqlConnectError> {
        Conn::new(self.opts.clone())
            .await
            .map_err(|source| MySqlConnectError {
                address: self.address(),
                source,
            })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), MySqlConnectError> {
        conn.ping().await.map_err(|source| MySqlConnectError {
            address: self.address(),
            source,
        })
    }

    fn has_broken(&self, _conn: &mut Conn) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_is_on_unless_the_options_set_it() {
        let manager = AsyncMySqlManager::from_url("mysql://app@localhost/app").unwrap();
        assert_eq!(
            manager.opts.tcp_keepalive(),
            Some(AsyncMySqlManager::KEEPALIVE)
        );
        let own = OptsBuilder::from_opts(Opts::from_url("mysql://app@localhost/app").unwrap())
            .tcp_keepalive(Some(Duration::from_secs(3)));
        let manager = AsyncMySqlManager::new(own.into());
        assert_eq!(manager.opts.tcp_keepalive(), Some(Duration::from_secs(3)));
    }
}
