//! What a watcher reports about a held lock: which server session holds it, and why a lock
//! counts as lost.

use std::fmt;
use std::time::Duration;

/// A server session as a lock watcher names it from another session: the session's id
/// (PostgreSQL's backend pid, MySQL's connection id) and a tag that tells this session apart
/// from a later one with the same id (PostgreSQL: the server's start time; MySQL and
/// MariaDB: a unique lock the session holds). Ids start again when a server restarts, so an
/// id alone would let a watcher mistake another session for the holder.
///
/// Built by a backend's `session` functions, and compared only by the same backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId {
    /// The session's id on the server.
    pub id: u64,
    /// What tells this session apart from a later one with the same id.
    pub tag: u64,
}

/// Why a lock counts as lost while its guard thought it held it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// The guard's session no longer holds the lock: the session ended (killed, timed out,
    /// the server restarted), or the lock was released on it outside dlock.
    NotHeld,
    /// The watcher could not confirm the lock for longer than its bound (`unconfirmed`): the
    /// server or the network stalled, or the watcher could not connect. Unknown counts as
    /// lost: the lock may still be held, but nothing says so.
    Unconfirmed {
        /// How long the lock went unconfirmed before it was reported lost.
        unconfirmed: Duration,
    },
    /// The guard's own connection failed while the lock was held, which ends the session
    /// or leaves it unknown.
    ConnectionFailed,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::NotHeld => f.write_str(
                "its session no longer holds the lock (the session ended, or the lock was \
                 released outside dlock)",
            ),
            LostReason::Unconfirmed { unconfirmed } => write!(
                f,
                "nothing confirmed the lock for {unconfirmed:?} (the server, the network or the \
                 watcher's connection stalled), and unknown counts as lost"
            ),
            LostReason::ConnectionFailed => f.write_str("the connection that held the lock failed"),
        }
    }
}
