//! What both pools decide the same way, written once: their options, the cause of a failed
//! checkout, what a failed deployment check does to its connection, how a grant is handed to
//! the watcher, and how a release's outcome reads. `LockPool` (r2d2, a thread) and
//! `AsyncLockPool` (bb8, a task) only check out, send and wait.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dlock_core::{Error, Key, KeyPolicy, LostReason, Result};

use crate::manager::{CloseMark, ConnectError, Doubt, LockManager};
use crate::watch::{Running, Signal, Watch, WatchSettings, Watched, WatchedLock};

/// The state and options one pool of either flavour keeps beside its driver pool.
pub(crate) struct PoolCore<M> {
    pub(crate) policy: KeyPolicy,
    pub(crate) doubt: Arc<Doubt>,
    /// The manager's last connect error: r2d2 keeps only its text and bb8 turns it into a
    /// plain timeout, so the pool names it as the cause of a checkout that failed.
    connect_errors: Arc<Mutex<Option<ConnectError>>>,
    pub(crate) check_deployment: bool,
    /// Whether acquires take shared locks ([`AsyncLockPool::shared`](crate::AsyncLockPool)).
    pub(crate) shared: bool,
    /// Whether the user vouches for a pooler in session mode ([`AsyncLockPool::trust_session_pooler`](crate::AsyncLockPool)).
    #[cfg_attr(not(feature = "bb8"), allow(dead_code))]
    pub(crate) trust_session_pooler: bool,
    /// Where tokens are kept, when acquires issue fencing tokens.
    pub(crate) fence: Option<FenceTable>,
    /// The user's manager, which the watcher and the deployment check connect through.
    pub(crate) manager: Arc<M>,
    /// The held locks, for the watcher.
    pub(crate) watch: Arc<Watch<WatchedLock>>,
}

impl<M> PoolCore<M> {
    /// The core of a pool built over `manager`, before the driver pool takes it.
    pub(crate) fn new(manager: &LockManager<M>) -> Self {
        PoolCore {
            policy: KeyPolicy::default(),
            doubt: manager.doubt(),
            connect_errors: manager.connect_errors(),
            check_deployment: true,
            shared: false,
            trust_session_pooler: false,
            fence: None,
            manager: manager.shared_inner(),
            watch: Watch::new(WatchSettings::default()),
        }
    }

    /// The core of a pool over a pool of the user's, which dlock does not wrap: `source` is
    /// where the watcher connects.
    #[cfg_attr(not(any(feature = "deadpool", feature = "sqlx")), allow(dead_code))]
    pub(crate) fn over(source: Arc<M>) -> Self {
        PoolCore {
            policy: KeyPolicy::default(),
            doubt: Arc::new(crate::manager::Doubt::new(false)),
            connect_errors: Arc::default(),
            check_deployment: true,
            shared: false,
            trust_session_pooler: false,
            fence: None,
            manager: source,
            watch: Watch::new(WatchSettings::default()),
        }
    }

    /// Uses `policy`; the watcher turns keys into the backend's under the policy it started
    /// with, so a new watch starts.
    pub(crate) fn set_policy(&mut self, policy: KeyPolicy) {
        self.policy = policy;
        self.watch = Watch::new(self.watch.settings());
    }

    /// The fence table the user named, if any (`None`: the backend's default).
    pub(crate) fn fence_table_name(&self) -> Option<&str> {
        match &self.fence {
            Some(FenceTable::Named(table)) => Some(table),
            Some(FenceTable::Default) | None => None,
        }
    }

    /// The error of a checkout that failed with the driver pool's `error`. A checkout that
    /// timed out while the manager could not connect names the connect error as its cause.
    pub(crate) fn checkout_error(&self, error: impl fmt::Display, timed_out: bool) -> Error
    where
        M: Sized,
    {
        let last = self
            .connect_errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        match last {
            Some(last) if timed_out => Error::pool(CheckoutTimedOut(last)),
            _ => Error::pool(error.to_string()),
        }
    }

    /// The backend's lock on `key` over a checked-out connection, under the pool's policy
    /// and fence table, with what the connection's last lock learned of its session.
    pub(crate) fn lock_on<C, L: dlock_core::ConnectionLock<C>>(
        &self,
        conn: C,
        key: Key,
        session_state: Option<dlock_core::SessionState>,
    ) -> Result<L> {
        self.configure(
            L::on_connection(conn, key, self.policy.clone()),
            session_state,
        )
    }

    /// `lock` with the pool's fence table and mode, and what the connection's last lock
    /// learned of its session.
    pub(crate) fn configure<C, L: dlock_core::ConnectionLock<C>>(
        &self,
        mut lock: L,
        session_state: Option<dlock_core::SessionState>,
    ) -> Result<L> {
        if let Some(table) = &self.fence {
            lock = table.apply(lock)?;
        }
        if self.shared {
            lock = lock.shared();
        }
        if let Some(state) = session_state {
            lock = lock.with_session_state(state);
        }
        Ok(lock)
    }

    /// Hands a granted lock to the watcher (started by `start_watcher` when none runs), or
    /// to a signal of its own when nothing watches: the guard's lost-lock news.
    pub(crate) fn granted(
        &self,
        held: Option<WatchedLock>,
        key: &Key,
        mark: CloseMark,
        start_watcher: impl FnOnce(Running),
    ) -> (Arc<Signal>, Option<Watched<WatchedLock>>) {
        match held {
            Some(held) => {
                self.watch.start_unless_running(start_watcher);
                let watched = self
                    .watch
                    .register(held, key.to_string(), mark, Instant::now());
                (Arc::clone(watched.signal()), Some(watched))
            }
            None => (Signal::unwatched(key.to_string(), mark), None),
        }
    }
}

/// The table a fenced pool keeps its tokens in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FenceTable {
    /// The backend's default, qualified by the backend.
    Default,
    /// The table the user named.
    Named(String),
}

impl FenceTable {
    /// Makes `lock` fenced in this table.
    pub(crate) fn apply<C, L: dlock_core::ConnectionLock<C>>(&self, lock: L) -> Result<L> {
        match self {
            FenceTable::Default => Ok(lock.fenced()),
            FenceTable::Named(table) => lock.fenced_in(table),
        }
    }
}

/// What a failed deployment check does to its connection: it is closed, never reused. The
/// check may have left a statement unread or a session marked, and a connection that cannot
/// hold a lock that excludes has nothing to offer the next acquire.
pub(crate) fn refused(mark: &CloseMark, error: Error) -> Error {
    mark.set();
    error
}

/// A release's outcome as the guard reports it: the server's "not held" is a lost lock.
pub(crate) fn released(signal: &Signal, outcome: Result<()>) -> Result<()> {
    outcome.map_err(|error| match error {
        Error::NotHeld => signal.error(LostReason::NotHeld),
        other => other,
    })
}

/// A checkout that timed out while connecting failed: the source is the last connect error,
/// as the user's manager gave it (a `postgres::Error`, a `MySqlConnectError`).
#[derive(Debug)]
struct CheckoutTimedOut(ConnectError);

impl fmt::Display for CheckoutTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timed out waiting for a connection, and the last attempt to connect failed")
    }
}

impl std::error::Error for CheckoutTimedOut {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.manager_error())
    }
}

// Not derived: the manager needs no `Clone`, as it is shared.
impl<M> Clone for PoolCore<M> {
    fn clone(&self) -> Self {
        PoolCore {
            policy: self.policy.clone(),
            doubt: Arc::clone(&self.doubt),
            connect_errors: Arc::clone(&self.connect_errors),
            check_deployment: self.check_deployment,
            shared: self.shared,
            trust_session_pooler: self.trust_session_pooler,
            fence: self.fence.clone(),
            manager: Arc::clone(&self.manager),
            watch: Arc::clone(&self.watch),
        }
    }
}

impl<M> fmt::Debug for PoolCore<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolCore")
            .field("policy", &self.policy)
            .field("check_deployment", &self.check_deployment)
            .field("shared", &self.shared)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, feature = "r2d2"))]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Refused;

    impl fmt::Display for Refused {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("refused")
        }
    }

    impl std::error::Error for Refused {}

    /// A manager that never connects: pool logic without a server.
    #[derive(Debug)]
    struct Unreachable;

    impl r2d2::ManageConnection for Unreachable {
        type Connection = ();
        type Error = Refused;

        fn connect(&self) -> Result<(), Refused> {
            Err(Refused)
        }

        fn is_valid(&self, _: &mut ()) -> Result<(), Refused> {
            Ok(())
        }

        fn has_broken(&self, _: &mut ()) -> bool {
            false
        }
    }

    #[test]
    fn a_checkout_that_timed_out_names_the_managers_error_as_its_cause() {
        let manager = LockManager::new(Unreachable);
        let core = PoolCore::new(&manager);
        // Nothing connected yet: the pool's own error, as it is.
        let error = core.checkout_error("timed out", true);
        assert!(
            std::error::Error::source(&error)
                .is_some_and(|source| source.to_string() == "timed out")
        );
        assert!(r2d2::ManageConnection::connect(&manager).is_err());
        let error = core.checkout_error("timed out", true);
        let cause = std::error::Error::source(&error).and_then(std::error::Error::source);
        assert!(
            cause.is_some_and(|cause| cause.downcast_ref::<Refused>().is_some()),
            "{error:?}"
        );
        // A checkout that failed for another reason than time keeps the pool's error.
        let error = core.checkout_error("closed", false);
        assert!(
            std::error::Error::source(&error).is_some_and(|source| source.to_string() == "closed")
        );
    }

    #[test]
    fn a_refused_deployment_closes_its_connection() {
        let mark = CloseMark::default();
        let error = refused(&mark, Error::NotHeld);
        assert!(matches!(error, Error::NotHeld));
        assert!(mark.is_set());
    }
}
