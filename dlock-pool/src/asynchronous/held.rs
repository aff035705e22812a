//! What an async pooled guard owns while its lock is held: the lock on its connection, the
//! connection's close mark, the lost signal and the watcher's registration. The pools' guards
//! differ only in where a released connection goes; how a lock is released, verified and
//! reported lost is written here once.

use std::marker::PhantomData;
use std::sync::Arc;

use dlock_core::{AsyncLock, IntoConnectionAsync, Key, LostReason, Result, SessionState, Wait};

use crate::core;
use crate::manager::CloseMark;
use crate::watch::{self, Signal, Watched, WatchedLock};

/// A held lock `L` on a connection `C` of a pool.
pub(crate) struct Held<L, C> {
    /// Always `Some` until `release` or drop takes it.
    lock: Option<L>,
    /// Set, the connection is closed instead of going back to its pool.
    mark: CloseMark,
    /// Whether the lock is lost, and why.
    signal: Arc<Signal>,
    /// The watcher's registration, dropped as a release begins.
    watched: Option<Watched<WatchedLock>>,
    connection: PhantomData<fn() -> C>,
}

/// One acquire of `lock` on a pooled connection marked by `mark`, as `wait` says: whether it
/// was granted. The mark stays armed through it: a future dropped mid-attempt, or an attempt
/// that failed (a cancel that lands as the lock is granted leaves the session holding it),
/// closes the connection. The armed mark lives in this future, which borrows the lock, so it
/// is dropped, and sets the mark, before the lock gives the connection back.
pub(crate) async fn acquire_pooled<L: AsyncLock>(
    lock: &mut L,
    wait: Wait,
    mark: &CloseMark,
) -> Result<bool> {
    let armed = mark.armed();
    let outcome = match wait {
        Wait::Forever => lock.acquire().await.map(|()| true),
        Wait::Never => lock.try_acquire().await,
        Wait::For(timeout) => lock.acquire_timeout(timeout).await,
    };
    match outcome {
        Ok(granted) => {
            armed.disarm();
            Ok(granted)
        }
        Err(error) => {
            crate::manager::discarded_in_doubt(&error);
            Err(error)
        }
    }
}

/// How a release went, for the pool to settle its connection: a connection that released
/// cleanly can go back with what its lock learned of the session; any other is closed.
pub(crate) enum Settled {
    /// Released: nothing is held on the connection.
    Clean(Option<SessionState>),
    /// The release failed: the session may still hold the lock.
    InDoubt,
}

impl<L, C> Held<L, C>
where
    L: IntoConnectionAsync<C>,
{
    /// A lock just granted on a connection marked by `mark`.
    pub(crate) fn new(
        lock: L,
        mark: CloseMark,
        signal: Arc<Signal>,
        watched: Option<Watched<WatchedLock>>,
    ) -> Self {
        Held {
            lock: Some(lock),
            mark,
            signal,
            watched,
            connection: PhantomData,
        }
    }

    pub(crate) fn lock(&self) -> &L {
        self.lock
            .as_ref()
            .expect("the lock is only taken on release")
    }

    pub(crate) fn lock_mut(&mut self) -> &mut L {
        self.lock
            .as_mut()
            .expect("the lock is only taken on release")
    }

    /// The key of the held lock, while it is held; `None` once released.
    pub(crate) fn key(&self) -> Option<&Key> {
        self.lock.as_ref().map(AsyncLock::key)
    }

    /// Releases the lock and hands its connection to `settle` with how the release went.
    /// A lock known lost sends nothing (an unlock could hang on a frozen server): its
    /// connection is settled in doubt. Dropped before it completes, the armed mark closes the
    /// connection.
    pub(crate) async fn release(&mut self, settle: impl FnOnce(C, Settled)) -> Result<()> {
        let mut lock = self.lock.take().expect("the lock is only taken on release");
        // The watcher stops watching first, so that it cannot take this unlock for a loss.
        drop(self.watched.take());
        if let Some(reason) = self.signal.lost_now() {
            settle(lock.disown(), Settled::InDoubt);
            return Err(self.signal.error(reason));
        }
        let armed = self.mark.armed();
        let released = AsyncLock::release(&mut lock).await;
        // What the lock learned of the session (prepared statements) stays with it.
        let state = match released {
            Ok(()) => lock.take_session_state(),
            Err(_) => None,
        };
        let (conn, rest) = lock.into_connection().await;
        armed.disarm();
        let released = released.and(rest);
        settle(
            conn,
            match released {
                Ok(()) => Settled::Clean(state),
                Err(_) => Settled::InDoubt,
            },
        );
        core::released(&self.signal, released)
    }

    /// Asks the server whether the session still holds the lock; a lock known lost is
    /// `Ok(false)` without asking. Dropped before it completes, the armed mark closes the
    /// connection when the guard drops.
    pub(crate) async fn verify(&mut self) -> Result<bool> {
        if self.signal.lost_now().is_some() {
            return Ok(false);
        }
        let armed = self.mark.armed();
        let verified = self.lock_mut().verify().await;
        armed.disarm();
        watch::note_verified(&self.signal, &verified);
        verified
    }

    /// The parts, the lock still held: for a pool that hands the held lock on.
    pub(crate) fn into_parts(
        mut self,
    ) -> (L, CloseMark, Arc<Signal>, Option<Watched<WatchedLock>>) {
        let lock = self.lock.take().expect("the lock is only taken on release");
        (
            lock,
            self.mark.clone(),
            Arc::clone(&self.signal),
            self.watched.take(),
        )
    }

    /// Whether the lock is known lost. No I/O.
    pub(crate) fn is_lost(&self) -> bool {
        self.signal.lost_now().is_some()
    }

    /// Resolves once the lock is known lost.
    pub(crate) fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        watch::lost(Arc::clone(&self.signal))
    }
}

impl<L, C> Drop for Held<L, C> {
    fn drop(&mut self) {
        if self.lock.is_some() {
            // Drop cannot wait for an unlock: close the connection, which frees the lock.
            tracing::debug!("dropping a pooled lock without release: connection closed");
            self.mark.set();
        }
    }
}

/// The guard functions every async pool's guard has, over its `held` field: written once, so
/// that they say and do the same in every pool.
macro_rules! held_guard_functions {
    () => {
        /// Asks the server whether this guard's session still holds the lock. A lock known
        /// lost is `Ok(false)` without asking: it stays lost.
        ///
        /// # Errors
        ///
        /// What the server or the connection reports.
        ///
        /// # Cancel Safety
        ///
        /// Dropping the future before it completes closes the connection when the guard
        /// drops.
        pub async fn verify(this: &mut Self) -> Result<bool> {
            this.held.verify().await
        }

        /// Whether the lock is known lost: the watcher found it no longer held, or could not
        /// confirm it for longer than the pool's bound, or a verify found it gone. No I/O.
        pub fn is_lost(this: &Self) -> bool {
            this.held.is_lost()
        }

        /// Resolves, with the reason, once the lock is known lost; never while it is held.
        /// The future borrows nothing (`Send + 'static`): spawn it, or race it against the
        /// work (`tokio::select!`), to stop work whose lock is gone.
        ///
        /// # Cancel Safety
        ///
        /// Cancel safe: it only waits.
        pub fn lost(this: &Self) -> impl Future<Output = LostReason> + Send + 'static {
            this.held.lost()
        }

        /// The key of the held lock.
        pub fn key(this: &Self) -> &Key {
            this.held.lock().key()
        }

        /// The fencing token of the held lock, when the pool is fenced; `None` otherwise.
        pub fn fencing_token(this: &Self) -> Option<u64> {
            this.held.lock().fencing_token()
        }
    };
}

pub(crate) use held_guard_functions;
