//! The one error type of every dlock crate.

use crate::{Deployment, LostReason};

/// A boxed error from a driver or a pool, kept as the [`source`](std::error::Error::source) of
/// an [`Error`] so that dlock-core needs to know no driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of every fallible dlock operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The source of a [`Error::ConnectionLost`] when the server ended the session: see
/// [`Error::session_ended`]. The driver's error is its own source.
#[derive(Debug, thiserror::Error)]
#[error("the server ended the session")]
pub struct SessionEnded(#[source] pub BoxError);

/// Everything that can go wrong with a lock.
///
/// A lock wait that ends because its timeout ran out is not an error: `try_acquire` and
/// `acquire_timeout` return `Ok(false)` then.
///
/// The message of each variant says what happened and, where there is something to do, what
/// to do. It never repeats the driver's error: that is reachable through
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `release` was called on a lock object that does not hold its lock.
    #[error("this lock object does not hold the lock, so there is nothing to release")]
    NotAcquired,

    /// An acquire was called on a lock object that already holds its lock.
    ///
    /// To take the same key twice on one session (the server counts such holds), use a
    /// second lock object.
    #[error(
        "this lock object already holds the lock; release it first, or use a second lock object \
         to hold the same key twice on one session"
    )]
    AlreadyAcquired,

    /// The server says this session did not hold the lock when it was released: the lock
    /// was lost while this object thought it held it (for example the session was reset, or
    /// the lock was released by SQL outside dlock).
    #[error(
        "the server says this session did not hold the lock, so it was lost before release \
         and the critical section may not have been exclusive"
    )]
    NotHeld,

    /// The server broke a deadlock by ending this lock wait (PostgreSQL 40P01, MariaDB 1213,
    /// MySQL 3058).
    #[error(
        "the server ended the lock wait to break a deadlock; release the other locks this \
         session holds and try again, or take locks in one order everywhere"
    )]
    Deadlock {
        /// The driver's error, when the server sent one.
        #[source]
        source: Option<BoxError>,
    },

    /// The server canceled the lock wait on request (PostgreSQL 57014, MySQL `KILL QUERY`).
    /// This is not a timeout: somebody asked the server to stop the statement.
    #[error("the server canceled the lock wait on request (a query cancel or KILL QUERY)")]
    Canceled {
        /// The driver's error, when the server sent one.
        #[source]
        source: Option<BoxError>,
    },

    /// The server's lock table is full (PostgreSQL 53200, "out of shared memory").
    #[error("the server's lock table is full; raise {setting} on the server or hold fewer locks")]
    LockTableFull {
        /// The server setting that sizes the lock table.
        setting: &'static str,
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
    },

    /// The connection to the server is gone. The server frees a session's locks when the
    /// session ends, so no lock taken through this connection is held any longer.
    #[error("the connection to the database was lost, and with it every lock its session held")]
    ConnectionLost {
        /// The driver's error, when there was one.
        #[source]
        source: Option<BoxError>,
    },

    /// The connection can no longer be used safely: an earlier operation on it was cut short
    /// (for example a canceled acquire whose reply never arrived), so its replies can no
    /// longer be trusted. Open a new connection.
    #[error("this connection can no longer be used for locks: {reason}; open a new connection")]
    ConnectionUnusable {
        /// Why the connection was given up.
        reason: String,
    },

    /// The session's transaction is aborted (PostgreSQL 25P02): the server runs no statement
    /// until it is rolled back, so dlock could not do what was asked. A lock the object held
    /// is still held, and still tracked: roll the transaction back, then retry (for example
    /// `release` again).
    #[error(
        "the session's transaction is aborted and the server refuses every statement until it \
         is rolled back; roll it back, then retry (a lock this object held is still held)"
    )]
    TransactionAborted {
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
    },

    /// The connection leads where a lock cannot exclude: through a transaction pooler, to a
    /// hot standby, or to a cluster node whose locks are local to it ([`Deployment`] says
    /// which). Nothing is held. The check runs once per connection; `skip_deployment_check()`
    /// on lock and pool builders turns it off, at the risk of two holders at once.
    #[error(
        "a lock here would exclude nobody: {found}; {advice}",
        found = deployment.found(),
        advice = deployment.advice()
    )]
    CannotExclude {
        /// What was found.
        deployment: Deployment,
    },

    /// A fenced acquire found no table for its fencing tokens. Nothing is held. Create the
    /// table once, with the backend's `install_fencing` (the default table) or
    /// `install_fencing_in` (a table named by `fenced_in`).
    #[error(
        "fencing tokens need the table {}, which this database does not have; create it once \
         with the backend's {} (nothing is held)",
        if table.is_empty() { "for them" } else { table.as_str() },
        install_hint(table)
    )]
    FencingNotInstalled {
        /// The fence table the acquire looked for, as SQL names it (empty where unknown).
        table: String,
        /// The server's error.
        #[source]
        source: Option<BoxError>,
    },

    /// A fenced acquire on a server whose commits are not durable: a token written there
    /// could be lost in a crash and handed out again after the restart, so none was handed
    /// out, and the grant was given back (nothing is held). MySQL and MariaDB flush their
    /// redo log at each commit only with `innodb_flush_log_at_trx_commit = 1`, a global
    /// setting no session can override. Set it to 1, or lock without fencing.
    #[error(
        "fencing tokens here could be handed out twice: the server's {setting} is not 1, so a \
         crash could lose a token already handed out; set it to 1 (SET GLOBAL {setting} = 1, \
         and in the server's configuration) or lock without fencing (nothing is held)"
    )]
    FencingNotDurable {
        /// The server setting that makes commits durable.
        setting: &'static str,
    },

    /// A pooled lock was lost while its guard held it, so the critical section may not have
    /// been exclusive: its session ended or gave it up, or nothing could confirm it for longer
    /// than the pool's bound. Its connection is closed, never reused.
    /// Work done under it may need to be checked or undone; fencing tokens let the resource
    /// refuse a stale holder's writes.
    #[error(
        "the lock on {key} was lost while held, so the critical section may not have been \
         exclusive: {reason}"
    )]
    LockLost {
        /// The key of the lost lock, as the user gave it.
        key: String,
        /// Why it counts as lost.
        reason: LostReason,
    },

    /// The key cannot name a lock on this backend under this policy.
    #[error("invalid lock key: {reason}")]
    InvalidKey {
        /// What is wrong with the key and what to do about it.
        reason: String,
    },

    /// A database URL that names no backend dlock was built with, or that cannot be read.
    #[error("invalid database URL: {reason}")]
    InvalidUrl {
        /// What is wrong with the URL and what to do about it.
        reason: String,
    },

    /// The backend does not support what was asked (for example a shared lock on MySQL).
    #[error("{operation} is not supported by {backend}: {hint}")]
    Unsupported {
        /// What was asked.
        operation: &'static str,
        /// The backend that cannot do it.
        backend: &'static str,
        /// What to do instead.
        hint: &'static str,
    },

    /// Any other error the database driver reported.
    #[error("database error")]
    Backend(#[source] BoxError),

    /// The connection pool could not provide a connection (checkout timeout, connect failure).
    /// The message ends with the cause as the pool and the driver tell it (a refused
    /// connection, a wrong password, a timeout); the source is the pool's error.
    #[error("the connection pool gave no connection: {}", causes(.0))]
    Pool(#[source] BoxError),
}

/// The call that creates a missing fence `table` (as SQL), for its error message.
fn install_hint(table: &str) -> String {
    let default = ["\"public\".\"dlock_fence\"", "`dlock`.`dlock_fence`"];
    if table.is_empty() || default.contains(&table) {
        "install_fencing function".to_owned()
    } else {
        let name: String = table.chars().filter(|c| !matches!(c, '"' | '`')).collect();
        format!("install_fencing_in function with \"{name}\"")
    }
}

/// An error and its sources as one line, each told once: a pool's message often repeats
/// its source's, and the source's own source is where the address or the server's words are.
fn causes(error: &BoxError) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

impl Error {
    /// Names the fence table in a [`Error::FencingNotInstalled`] that does not name one yet;
    /// any other error is returned as it is. For backends, which know the table where the
    /// driver's error does not.
    #[doc(hidden)]
    #[must_use]
    pub fn naming_fence_table(self, fence_table: Option<&str>) -> Self {
        match (self, fence_table) {
            (Error::FencingNotInstalled { table, source }, Some(named)) if table.is_empty() => {
                Error::FencingNotInstalled {
                    table: named.to_owned(),
                    source,
                }
            }
            (error, _) => error,
        }
    }

    /// Wraps a driver error that has no more specific variant.
    pub fn backend(source: impl Into<BoxError>) -> Self {
        Error::Backend(source.into())
    }

    /// Wraps a pool error.
    pub fn pool(source: impl Into<BoxError>) -> Self {
        Error::Pool(source.into())
    }

    /// Builds an [`Error::InvalidKey`] with the given reason.
    pub fn invalid_key(reason: impl Into<String>) -> Self {
        Error::InvalidKey {
            reason: reason.into(),
        }
    }

    /// A [`Error::ConnectionLost`] for a session the server ended, with the driver's error
    /// as `source` behind a [`SessionEnded`]: see [`session_ended`](Error::session_ended).
    pub fn session_ended_by(source: impl Into<BoxError>) -> Self {
        Error::ConnectionLost {
            source: Some(Box::new(SessionEnded(source.into()))),
        }
    }

    /// Whether this is a lost connection whose session the server ended (it said so, or it
    /// closed the connection): killed, timed out, shut down or restarted. Whatever the session
    /// held, or was granted by the statement that failed, ended with it, so an acquire on
    /// another connection is safe to try: a pool does, once. A connection that merely stopped
    /// answering is no such proof: its session may live on, and hold a lock, until the server
    /// notices.
    pub fn session_ended(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost { source: Some(source) } if source.is::<SessionEnded>()
        )
    }

    /// The error of a wait whose server did not answer within `waited` (its timeout plus
    /// [`REPLY_GRACE`](crate::REPLY_GRACE)): the server or the network is stalled, and the
    /// connection is given up as lost.
    pub fn no_reply(waited: std::time::Duration) -> Self {
        Error::ConnectionLost {
            source: Some(
                format!(
                    "the server did not answer within {waited:?}, the timeout plus the grace \
                     for its reply; the server or the network is stalled"
                )
                .into(),
            ),
        }
    }

    /// Whether the error means the connection is gone or must not be used again, so the
    /// caller should drop it (a pool should close it).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost { .. } | Error::ConnectionUnusable { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn io_error() -> BoxError {
        Box::new(std::io::Error::other("socket closed by peer"))
    }

    #[test]
    fn messages_are_lowercase_without_trailing_period_and_never_repeat_the_source() {
        let errors = [
            Error::NotAcquired,
            Error::AlreadyAcquired,
            Error::NotHeld,
            Error::LockLost {
                key: "jobs".into(),
                reason: LostReason::NotHeld,
            },
            Error::LockLost {
                key: "jobs".into(),
                reason: LostReason::Unconfirmed {
                    unconfirmed: std::time::Duration::from_secs(3),
                },
            },
            Error::LockLost {
                key: "jobs".into(),
                reason: LostReason::ConnectionFailed,
            },
            Error::Deadlock {
                source: Some(io_error()),
            },
            Error::Canceled { source: None },
            Error::LockTableFull {
                setting: "max_locks_per_transaction",
                source: Some(io_error()),
            },
            Error::ConnectionLost {
                source: Some(io_error()),
            },
            Error::ConnectionUnusable {
                reason: "an acquire was canceled mid-wait".into(),
            },
            Error::TransactionAborted {
                source: Some(io_error()),
            },
            Error::invalid_key("the name is empty"),
            Error::FencingNotInstalled {
                table: "\"public\".\"dlock_fence\"".to_owned(),
                source: Some(io_error()),
            },
            Error::FencingNotDurable {
                setting: "innodb_flush_log_at_trx_commit",
            },
            Error::CannotExclude {
                deployment: Deployment::TransactionPooler,
            },
            Error::CannotExclude {
                deployment: Deployment::HotStandby,
            },
            Error::CannotExclude {
                deployment: Deployment::Galera,
            },
            Error::Unsupported {
                operation: "a shared lock",
                backend: "MySQL",
                hint: "use PostgreSQL",
            },
            Error::backend(io_error()),
        ];
        // A pool error is the exception: it is what a service prints at startup, and the
        // pool's own words ("timed out waiting for a connection") hide the cause, so its
        // message ends with the cause (issue 29: "Connection refused" was in the chain only).
        let pool = Error::pool(io_error()).to_string();
        assert_eq!(
            pool,
            "the connection pool gave no connection: socket closed by peer"
        );
        for error in errors {
            let message = error.to_string();
            let first = message.chars().next().unwrap();
            assert!(first.is_lowercase(), "{message:?} starts in lowercase");
            assert!(
                !message.ends_with('.'),
                "{message:?} has no trailing period"
            );
            assert!(
                !message.contains("socket closed"),
                "{message:?} repeats its source"
            );
        }
    }

    #[test]
    fn the_driver_error_is_reachable_through_source() {
        let error = Error::Deadlock {
            source: Some(io_error()),
        };
        assert_eq!(error.source().unwrap().to_string(), "socket closed by peer");
        assert!(Error::NotHeld.source().is_none());
    }

    #[test]
    fn lock_table_full_names_the_setting_to_raise() {
        let error = Error::LockTableFull {
            setting: "max_locks_per_transaction",
            source: None,
        };
        assert!(
            error
                .to_string()
                .contains("raise max_locks_per_transaction")
        );
    }

    #[test]
    fn connection_errors_are_told_apart() {
        assert!(Error::ConnectionLost { source: None }.is_connection_error());
        assert!(Error::ConnectionUnusable { reason: "x".into() }.is_connection_error());
        assert!(!Error::NotHeld.is_connection_error());
    }
}
