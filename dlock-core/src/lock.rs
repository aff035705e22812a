//! The lock traits every backend implements, so code can be generic over backends.

use std::future::Future;
use std::time::Duration;

use crate::{Key, KeyPolicy, Result};

/// How long past its timeout an async `acquire_timeout` waits for the server's answer before
/// it gives up on the connection with [`Error::no_reply`](crate::Error::no_reply).
///
/// The server times the wait and answers at the timeout, so this grace is only ever used up
/// when the server or the network is stalled (a frozen process, a partition), where the
/// server-side timeout cannot fire. Blocking locks cannot bound a read on the connection they
/// borrow; see the backend crates for the connection settings that do.
pub const REPLY_GRACE: Duration = Duration::from_millis(500);

/// A distributed lock held by one database session, used from blocking code.
///
/// A lock object is one key on one session (connection). It is created unlocked, and it
/// knows whether it holds its lock; the server is the judge of whether the session does.
///
/// | operation | result |
/// |---|---|
/// | [`acquire`](Lock::acquire) | waits in the server until held; no client-side limit |
/// | [`try_acquire`](Lock::try_acquire) | `Ok(true)` held, `Ok(false)` busy; never waits |
/// | [`acquire_timeout`](Lock::acquire_timeout) | `Ok(true)` held, `Ok(false)` not within the timeout |
/// | [`release`](Lock::release) | `Ok(())`; [`NotAcquired`](crate::Error::NotAcquired) if this object does not hold it; [`NotHeld`](crate::Error::NotHeld) if the server says the session did not (the lock was lost); unlocked either way |
/// | [`is_acquired`](Lock::is_acquired) | this object's own view, no I/O |
/// | [`verify`](Lock::verify) | asks the server whether this session still holds it |
/// | drop while held | releases |
///
/// Acquiring an object that already holds its lock is
/// [`AlreadyAcquired`](crate::Error::AlreadyAcquired). Two lock objects with the same key on
/// the same session both succeed: the server counts the holds (PostgreSQL always, MySQL 5.7
/// and later, MariaDB), and each object must release its own.
///
/// Waiting happens in the server, never by client polling: waiters queue there, and a
/// release hands the lock over in about one round trip.
///
/// A server-side deadlock break is [`Deadlock`](crate::Error::Deadlock), a server-side cancel
/// is [`Canceled`](crate::Error::Canceled), and a lost connection is
/// [`ConnectionLost`](crate::Error::ConnectionLost), after which `verify` is `false` (or
/// the connection error again).
pub trait Lock {
    /// The key this lock was created with.
    fn key(&self) -> &Key;

    /// Waits, in the server, until this session holds the lock. There is no client-side
    /// limit: use [`acquire_timeout`](Lock::acquire_timeout) to bound the wait.
    ///
    /// # Errors
    ///
    /// [`AlreadyAcquired`](crate::Error::AlreadyAcquired) when this object holds the lock;
    /// otherwise what the server or the connection reports.
    fn acquire(&mut self) -> Result<()>;

    /// Takes the lock if it is free, without waiting: `Ok(true)` held, `Ok(false)` busy.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Lock::acquire).
    fn try_acquire(&mut self) -> Result<bool>;

    /// Waits, in the server, at most `timeout` for the lock: `Ok(true)` held, `Ok(false)`
    /// not within the timeout. `Ok(false)` comes no earlier than `timeout`.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Lock::acquire).
    fn acquire_timeout(&mut self, timeout: Duration) -> Result<bool>;

    /// Releases the lock. The object is unlocked afterwards, whatever the result.
    ///
    /// # Errors
    ///
    /// [`NotAcquired`](crate::Error::NotAcquired) when this object does not hold the lock;
    /// [`NotHeld`](crate::Error::NotHeld) when the server says the session did not hold it.
    fn release(&mut self) -> Result<()>;

    /// Whether this object holds its lock, as far as it knows. Does no I/O; use
    /// [`verify`](Lock::verify) to ask the server.
    fn is_acquired(&self) -> bool;

    /// Asks the server whether this session holds the lock now.
    ///
    /// # Errors
    ///
    /// What the server or the connection reports.
    fn verify(&mut self) -> Result<bool>;
}

/// A distributed lock held by one database session, used from async (tokio) code.
///
/// The same contract as [`Lock`], operation for operation; see its table. Two differences
/// come from async Rust:
///
/// - A future dropped before it completes (under `tokio::time::timeout` or `select!`) must
///   not leave a lock held by a session nobody tracks. Each implementation documents the
///   cancel safety of each method.
/// - Drop cannot wait for I/O, so release on drop is not immediate: a held lock dropped
///   without [`release`](AsyncLock::release) has its release queued on the connection or
///   done by a spawned task, or its connection closed (a pooled one), as each
///   implementation documents. Call `release().await` to know the outcome.
pub trait AsyncLock: Send {
    /// The key this lock was created with.
    fn key(&self) -> &Key;

    /// Waits, in the server, until this session holds the lock.
    ///
    /// # Errors
    ///
    /// As [`Lock::acquire`].
    ///
    /// # Cancel Safety
    ///
    /// Each implementation says what a drop of this future leaves behind.
    fn acquire(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// Takes the lock if it is free, without waiting: `Ok(true)` held, `Ok(false)` busy.
    ///
    /// # Errors
    ///
    /// As [`Lock::acquire`].
    ///
    /// # Cancel Safety
    ///
    /// Each implementation says what a drop of this future leaves behind.
    fn try_acquire(&mut self) -> impl Future<Output = Result<bool>> + Send;

    /// Waits, in the server, at most `timeout` for the lock: `Ok(true)` held, `Ok(false)`
    /// not within the timeout.
    ///
    /// # Errors
    ///
    /// As [`Lock::acquire`].
    ///
    /// # Cancel Safety
    ///
    /// Each implementation says what a drop of this future leaves behind.
    fn acquire_timeout(&mut self, timeout: Duration) -> impl Future<Output = Result<bool>> + Send;

    /// Releases the lock. The object is unlocked afterwards, whatever the result.
    ///
    /// # Errors
    ///
    /// As [`Lock::release`].
    ///
    /// # Cancel Safety
    ///
    /// Each implementation says what a drop of this future leaves behind.
    fn release(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// Whether this object holds its lock, as far as it knows. Does no I/O.
    fn is_acquired(&self) -> bool;

    /// Asks the server whether this session holds the lock now.
    ///
    /// # Errors
    ///
    /// What the server or the connection reports.
    ///
    /// # Cancel Safety
    ///
    /// Each implementation says what a drop of this future leaves behind.
    fn verify(&mut self) -> impl Future<Output = Result<bool>> + Send;
}

/// What a lock learned about its connection's server session that outlives the lock (its
/// prepared statements): a pool keeps it with the connection and hands it to the next lock
/// built on that connection. Opaque; only the backend that made it reads it.
pub type SessionState = Box<dyn std::any::Any + Send + Sync>;

/// A lock type that lives on a connection it is given: what a pool needs from a backend
/// (build a lock on a checked-out connection, reach the connection, give it back).
///
/// Implemented by every backend's lock types; a connection pool builds its locks through it.
pub trait ConnectionLock<C>: Sized {
    /// A lock on `key` over `conn`, unlocked, under `policy`, that does not check the
    /// deployment before its first acquire ([`Error::CannotExclude`](crate::Error::CannotExclude)):
    /// the caller, a pool, checks each connection once itself.
    fn on_connection(conn: C, key: Key, policy: KeyPolicy) -> Self;

    /// Checks, before any connection is checked out, that `key` names a lock of this type
    /// under `policy`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`](crate::Error::InvalidKey) when it does not.
    fn check_key(policy: &KeyPolicy, key: &Key) -> Result<()>;

    /// The connection, as it was given.
    fn connection(&self) -> &C;

    /// The connection, as it was given, mutably.
    fn connection_mut(&mut self) -> &mut C;

    /// Makes every acquire issue a fencing token kept in the backend's default table (the
    /// lock type's `fenced`).
    fn fenced(self) -> Self;

    /// Makes every acquire issue a fencing token kept in table `table` (the lock type's
    /// `fenced_in`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`](crate::Error::InvalidKey) when `table` is not a plain table name.
    fn fenced_in(self, table: &str) -> Result<Self>;

    /// Makes the lock shared (the lock type's `shared`): any number of shared holders at
    /// once, no exclusive one. On a backend without shared locks (MySQL), every acquire then
    /// fails with [`Error::Unsupported`](crate::Error::Unsupported).
    fn shared(self) -> Self;

    /// The fencing token of the lock while held, when fenced (the lock type's
    /// `fencing_token`).
    fn fencing_token(&self) -> Option<u64>;

    /// Takes what the lock knows of its connection's session that outlives it, for the next
    /// lock on the same connection ([`with_session_state`](Self::with_session_state)).
    /// Take it once the lock holds nothing: the lock forgets it.
    fn take_session_state(&mut self) -> Option<SessionState>;

    /// Gives the lock what an earlier lock on the same connection learned (from
    /// [`take_session_state`](Self::take_session_state)); state from another backend is
    /// ignored.
    fn with_session_state(self, state: SessionState) -> Self;

    /// Gives the connection back without sending a statement, forgetting what the lock
    /// holds: for a caller that closes the connection at once, which ends the session and
    /// frees its locks (a pool whose lock is known lost, where an unlock could hang on a
    /// frozen server).
    fn disown(self) -> C;
}

/// A blocking [`ConnectionLock`] that gives its connection back, releasing first.
pub trait IntoConnection<C>: ConnectionLock<C> + Lock {
    /// Releases the lock if held, and gives the connection back with the outcome.
    fn into_connection(self) -> (C, Result<()>);
}

/// An async [`ConnectionLock`] that gives its connection back, releasing first.
pub trait IntoConnectionAsync<C>: ConnectionLock<C> + AsyncLock {
    /// Releases the lock if held, and gives the connection back with the outcome.
    ///
    /// # Cancel Safety
    ///
    /// As the lock type's own `into_inner`.
    fn into_connection(self) -> impl Future<Output = (C, Result<()>)> + Send;
}
