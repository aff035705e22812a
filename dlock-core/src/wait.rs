//! How long a lock statement may wait in the server: the one wait type of every backend.

use std::time::Duration;

/// How long an acquire may wait for its lock, in the server.
///
/// Every backend turns this into its own statement (PostgreSQL: a try, a plain wait, or a
/// wait under `lock_timeout`; MySQL and MariaDB: the timeout argument of `GET_LOCK`).
///
/// # Examples
///
/// ```
/// use dlock_core::Wait;
/// use std::time::Duration;
///
/// assert_eq!(Wait::for_timeout(Duration::ZERO), Wait::Never);
/// assert_eq!(
///     Wait::for_timeout(Duration::from_millis(250)),
///     Wait::For(Duration::from_millis(250)),
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wait {
    /// `try_acquire`: takes the lock if it is free, never waits.
    Never,
    /// `acquire`: waits until the lock is granted; no client-side limit.
    Forever,
    /// `acquire_timeout`: waits at most this long (never zero: a zero timeout is a try).
    For(Duration),
}

impl Wait {
    /// The wait of `acquire_timeout(timeout)`: a zero timeout is a try.
    pub fn for_timeout(timeout: Duration) -> Wait {
        if timeout.is_zero() {
            Wait::Never
        } else {
            Wait::For(timeout)
        }
    }

    /// Whether the lock statement may wait in the server at all.
    pub fn may_wait(self) -> bool {
        self != Wait::Never
    }
}
