//! The wrapper of the user's connection manager that lets a lock send a connection to be
//! closed instead of reused: r2d2 and bb8 discard a connection only when the manager's
//! `has_broken` says so.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A connection manager of a dlock pool: the user's manager `M`, with a broken mark added to
/// each connection. The pool closes a connection whose mark is set, or that `M` finds broken.
///
/// Build pools of it through `LockPool` (feature `r2d2`) or
/// `AsyncLockPool` (feature `bb8`); its connections deref to `M`'s.
#[derive(Debug, Clone)]
pub struct LockManager<M> {
    /// Shared with the blocking pool, which opens its deployment check's second connection
    /// through it (r2d2 gives no access to its manager).
    inner: Arc<M>,
    /// The last connect error, kept because bb8 reports a failed connect only as a checkout
    /// timeout; the lock pool gives it as the cause.
    last_connect_error: Arc<Mutex<Option<ConnectError>>>,
    /// When a checkout runs `M`'s check.
    doubt: Arc<Doubt>,
}

impl<M> LockManager<M> {
    /// Wraps `manager`. Every checkout the pool tests (`test_on_check_out`, on by default in
    /// r2d2 and bb8) runs `M`'s check.
    pub fn new(manager: M) -> Self {
        LockManager {
            inner: Arc::new(manager),
            last_connect_error: Arc::default(),
            doubt: Arc::new(Doubt::new(true)),
        }
    }

    /// Wraps `manager` for a pool whose lock statements are the health check: a checkout
    /// runs `M`'s check only on a connection not known good since the pool last found a
    /// session ended ([`Doubt::raise`]).
    pub(crate) fn checking_in_doubt(manager: M) -> Self {
        LockManager {
            doubt: Arc::new(Doubt::new(false)),
            ..LockManager::new(manager)
        }
    }

    /// The handle that raises doubt on every connection of the pool.
    pub(crate) fn doubt(&self) -> Arc<Doubt> {
        Arc::clone(&self.doubt)
    }

    /// The user's manager.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// The user's manager, shared: the watcher and the deployment check connect through it.
    pub(crate) fn shared_inner(&self) -> Arc<M> {
        Arc::clone(&self.inner)
    }

    /// A handle on the last connect error, for the pool built over this manager.
    pub(crate) fn connect_errors(&self) -> Arc<Mutex<Option<ConnectError>>> {
        Arc::clone(&self.last_connect_error)
    }
}

/// Expands, inside `impl LockPool` or `impl AsyncLockPool`, to the builder methods both pools
/// have for the deployment check, fencing and the watcher. Each pool has the field
/// `core: PoolCore<M>`.
macro_rules! pool_options {
    () => {
        /// Turns off the deployment check, at the risk of two holders at once.
        ///
        /// By default the pool checks each connection once, before its first lock, that a lock
        /// there excludes, and refuses with [`Error::CannotExclude`] otherwise: PostgreSQL
        /// through a pooler in transaction or statement mode (found by opening a second
        /// connection: such a pooler lets two connections share a server session), a PostgreSQL
        /// hot standby, a MariaDB Galera node or a MySQL Group Replication member. Turn it off
        /// only for a deployment you know better than the check.
        pub fn skip_deployment_check(mut self) -> Self {
            self.core.check_deployment = false;
            self
        }

        /// Sets how often the pool's watcher checks every lock the pool holds (default 1 s, at
        /// least 10 ms). The watcher runs on a connection of its own, opened through the same
        /// manager when the pool first holds a lock, and sends one statement per check for all
        /// of the pool's locks; a lock found no longer held is reported lost within about one
        /// interval (`is_lost`, `lost`, `wait_lost` on the guard).
        pub fn watch_interval(mut self, interval: std::time::Duration) -> Self {
            self.core.watch = crate::watch::Watch::new(self.core.watch.settings().every(interval));
            self
        }

        /// Sets how long a held lock may go without the watcher confirming it before it counts
        /// as lost (default three intervals): unknown counts as lost, so a partition or a
        /// frozen server reports every lock lost after this bound. Choose a longer bound for
        /// work that would rather keep going through a short stall.
        pub fn lost_after_unconfirmed(mut self, bound: std::time::Duration) -> Self {
            self.core.watch =
                crate::watch::Watch::new(self.core.watch.settings().lost_after(bound));
            self
        }

        /// Turns the watcher off: no extra connection and no check. A guard then learns that
        /// its lock is lost only from its own `verify` and `release`.
        pub fn without_watcher(mut self) -> Self {
            self.core.watch = crate::watch::Watch::new(self.core.watch.settings().off());
            self
        }

        /// Makes every acquire take a shared lock (PostgreSQL's `pg_advisory_lock_shared`):
        /// any number of sessions hold a key shared at once, while an exclusive holder waits
        /// for them all and keeps them all out. For readers beside writers, keep one pool
        /// for each over the same connections: `pool.clone().shared()`. MySQL and MariaDB
        /// have no shared named locks: there every acquire then fails with
        /// [`Error::Unsupported`].
        pub fn shared(mut self) -> Self {
            self.core.shared = true;
            self
        }

        /// Makes every acquire issue a fencing token, kept in the backend's default table
        /// (`public.dlock_fence` on PostgreSQL, `dlock.dlock_fence` on MySQL; create it once
        /// with the backend's `install_fencing`): read it with `fencing_token(&guard)` and hand
        /// it to the resource the lock guards. See the backend's `fenced` for what it costs.
        pub fn fenced(mut self) -> Self {
            self.core.fence = Some(crate::core::FenceTable::Default);
            self
        }

        /// Like [`fenced`](Self::fenced), with the tokens in table `table` (`schema.name`, or
        /// on MySQL `database.name`). Name the schema or database: an unqualified name
        /// resolves through each session's `search_path` or default database, and sessions
        /// that resolve it apart count apart.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidKey`] when `table` is not a plain table name (letters, digits and
        /// underscores).
        pub fn fenced_in(mut self, table: &str) -> Result<Self> {
            dlock_core::fence_table_parts(table)?;
            self.core.fence = Some(crate::core::FenceTable::Named(table.to_owned()));
            Ok(self)
        }
    };
}

pub(crate) use pool_options;

/// When a pool's checkout checks a connection with the user manager's `is_valid` (a round
/// trip, where r2d2_mysql's is a whole query).
///
/// A pool built by `new` checks a connection only when in doubt: the lock statement itself
/// proves the connection, and when it finds the session ended, the pool raises doubt on every
/// connection it has (a restart ends them all), so each is checked once before its next use.
/// Connections are trusted again one by one as they pass. A pool built from the user's
/// builder checks as the builder says.
#[derive(Debug)]
pub(crate) struct Doubt {
    always: bool,
    /// Raised by one each time a session was found ended.
    generation: AtomicU64,
}

impl Doubt {
    pub(crate) fn new(always: bool) -> Doubt {
        Doubt {
            always,
            generation: AtomicU64::new(0),
        }
    }

    /// Every connection of the pool gets checked before its next use.
    pub(crate) fn raise(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn current(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether a connection known good at `generation` can skip its check.
    fn trusts(&self, generation: u64) -> bool {
        !self.always && generation == self.current()
    }
}

/// The one retry of a pooled acquire: when the lock statement finds that the server had
/// ended its connection's session, that statement was the connection's health check. The
/// session took whatever it held or was being granted with it, so the acquire is tried once
/// more on another connection, with doubt raised on every connection of the pool. A
/// connection that merely stopped answering is no such proof, and is never retried.
#[derive(Debug, Default)]
pub(crate) struct Retry {
    done: bool,
}

/// Says that a pooled connection whose lock statement failed is closed instead of reused:
/// the session may hold the lock (a cancel that lands as the lock is granted).
pub(crate) fn discarded_in_doubt(error: &dlock_core::Error) {
    tracing::info!(target: "dlock", %error, "a pooled connection in doubt is closed, not reused");
}

impl Retry {
    /// Whether to try again after `outcome`; at most once.
    pub(crate) fn again<T>(&mut self, outcome: &dlock_core::Result<T>, doubt: &Doubt) -> bool {
        let again = !self.done && matches!(outcome, Err(error) if error.session_ended());
        if again {
            self.done = true;
            doubt.raise();
            tracing::info!(
                target: "dlock",
                "a pooled connection's session had ended; the acquire is tried on another"
            );
        }
        again
    }
}

/// A connection of a dlock pool: the driver's connection and its broken mark. Derefs to the
/// connection.
pub struct Tracked<C> {
    conn: C,
    mark: CloseMark,
    /// The [`Doubt`] generation at which the connection was last known good.
    good_at: u64,
    /// Whether the pool checked that a lock on this connection excludes (no transaction
    /// pooler, standby or cluster node): once per connection, before its first lock.
    deployment_checked: bool,
    /// The session as the pool's watcher names it, asked once per connection.
    session: Option<dlock_core::SessionId>,
    /// What the connection's last lock learned of its server session (prepared statements),
    /// for the next lock on it.
    session_state: Option<dlock_core::SessionState>,
}

impl<C> Tracked<C> {
    fn new(conn: C, good_at: u64) -> Self {
        Tracked {
            conn,
            mark: CloseMark::default(),
            good_at,
            deployment_checked: false,
            session: None,
            session_state: None,
        }
    }

    /// Takes what the connection's last lock learned of its server session.
    pub(crate) fn take_session_state(&mut self) -> Option<dlock_core::SessionState> {
        self.session_state.take()
    }

    /// Keeps what a lock learned of the connection's server session, for the next lock.
    pub(crate) fn set_session_state(&mut self, state: Option<dlock_core::SessionState>) {
        self.session_state = state;
    }

    /// The session as the watcher names it, once asked.
    pub(crate) fn session(&self) -> Option<dlock_core::SessionId> {
        self.session
    }

    /// Keeps the session's name for the connection's later locks.
    pub(crate) fn set_session(&mut self, session: dlock_core::SessionId) {
        self.session = Some(session);
    }

    /// Whether the pool checked the deployment through this connection.
    pub(crate) fn deployment_checked(&self) -> bool {
        self.deployment_checked
    }

    /// Notes that the deployment check passed on this connection.
    pub(crate) fn set_deployment_checked(&mut self) {
        self.deployment_checked = true;
    }

    /// Marks the connection so that the pool closes it when it comes back. Closing a
    /// connection ends its session, which frees every lock the session held.
    pub fn mark_broken(&self) {
        self.mark.set();
    }

    /// Whether the connection is marked to be closed.
    pub fn is_marked_broken(&self) -> bool {
        self.mark.is_set()
    }

    /// The connection's mark, to set later without holding the connection.
    pub(crate) fn close_mark(&self) -> CloseMark {
        self.mark.clone()
    }
}

impl<C> Deref for Tracked<C> {
    type Target = C;

    fn deref(&self) -> &C {
        &self.conn
    }
}

impl<C> DerefMut for Tracked<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.conn
    }
}

impl<C> fmt::Debug for Tracked<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracked")
            .field("marked_broken", &self.is_marked_broken())
            .finish_non_exhaustive()
    }
}

/// The mark that sends one connection to be closed instead of reused; clones share it.
///
/// An [`armed`](CloseMark::armed) clone sets the mark when it is dropped before
/// [`disarm`](CloseMark::disarm): it is held across an await whose cancellation (a dropped
/// future) would leave the connection's lock state or protocol state unknown.
#[derive(Debug, Default)]
pub(crate) struct CloseMark {
    flag: Arc<AtomicBool>,
    armed: bool,
}

#[cfg_attr(not(feature = "bb8"), allow(dead_code))]
impl CloseMark {
    pub(crate) fn set(&self) {
        self.flag.store(true, Ordering::Release);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// A clone that sets the mark if it is dropped before [`disarm`](CloseMark::disarm).
    pub(crate) fn armed(&self) -> CloseMark {
        CloseMark {
            flag: Arc::clone(&self.flag),
            armed: true,
        }
    }

    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Clone for CloseMark {
    /// An unarmed clone sharing the mark.
    fn clone(&self) -> Self {
        CloseMark {
            flag: Arc::clone(&self.flag),
            armed: false,
        }
    }
}

impl Drop for CloseMark {
    fn drop(&mut self) {
        if self.armed {
            self.set();
        }
    }
}

/// An r2d2 manager whose errors can be shared between threads: what a
/// [`LockPool`](crate::LockPool) is built over (r2d2_postgres's and r2d2_mysql's are).
/// Implemented for every such manager.
#[cfg(feature = "r2d2")]
pub trait BlockingManager: r2d2::ManageConnection<Error: Send + Sync> {}

#[cfg(feature = "r2d2")]
impl<M> BlockingManager for M where M: r2d2::ManageConnection<Error: Send + Sync> {}

impl<M> LockManager<M> {
    /// Keeps the outcome of a connect as the last connect error (none after a success).
    fn note_connect<C>(&self, connected: &Result<C, ConnectError>) {
        let mut last = self
            .last_connect_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *last = connected.as_ref().err().cloned();
    }
}

#[cfg(feature = "r2d2")]
impl<M: BlockingManager> r2d2::ManageConnection for LockManager<M> {
    type Connection = Tracked<M::Connection>;
    type Error = ConnectError;

    fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let generation = self.doubt.current();
        let connected = self.inner.connect().map_err(ConnectError::new);
        self.note_connect(&connected);
        connected.map(|conn| Tracked::new(conn, generation))
    }

    fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        if self.doubt.trusts(conn.good_at) {
            return Ok(());
        }
        let generation = self.doubt.current();
        self.inner
            .is_valid(&mut conn.conn)
            .map_err(ConnectError::new)?;
        conn.good_at = generation;
        Ok(())
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        // r2d2 asks on every return, and r2d2_mysql answers with a round trip (a ping): a
        // pool whose lock statements are the test leaves that to the next lock statement.
        conn.is_marked_broken() || (self.doubt.always && self.inner.has_broken(&mut conn.conn))
    }
}

/// An error of the user's manager, shared: the pool reports it, and the lock pool keeps the
/// last connect error to give as the cause of a checkout timeout (bb8 reports a failed
/// connect only as a timeout, r2d2 only by its text). Its display and source are the manager's error's.
#[derive(Debug, Clone)]
pub struct ConnectError(Arc<dyn std::error::Error + Send + Sync>);

impl ConnectError {
    fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        ConnectError(Arc::new(error))
    }

    /// The manager's error itself, for a source chain that users can downcast.
    pub(crate) fn manager_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A bb8 manager whose errors are standard errors that can be shared between threads: what
/// an [`AsyncLockPool`](crate::AsyncLockPool) is built over (every manager on the registry is
/// one). Implemented for every such manager.
#[cfg(feature = "bb8")]
pub trait AsyncManager:
    bb8::ManageConnection<Error: std::error::Error + Send + Sync + 'static>
{
}

#[cfg(feature = "bb8")]
impl<M> AsyncManager for M where
    M: bb8::ManageConnection<Error: std::error::Error + Send + Sync + 'static>
{
}

#[cfg(feature = "bb8")]
impl<M: AsyncManager> bb8::ManageConnection for LockManager<M> {
    type Connection = Tracked<M::Connection>;
    type Error = ConnectError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let generation = self.doubt.current();
        let connected = self.inner.connect().await.map_err(ConnectError::new);
        self.note_connect(&connected);
        connected.map(|conn| Tracked::new(conn, generation))
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        if self.doubt.trusts(conn.good_at) {
            return Ok(());
        }
        let generation = self.doubt.current();
        // bb8 drops a check that outlives the checkout's timeout (a stalled server), and the
        // connection then goes back with its reply still on the way: mysql_async would read
        // that stale reply as the answer to the next query. Such a connection is closed.
        let unfinished = conn.mark.armed();
        let checked = self.inner.is_valid(&mut conn.conn).await;
        unfinished.disarm();
        checked.map_err(ConnectError::new)?;
        conn.good_at = generation;
        Ok(())
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        conn.is_marked_broken() || self.inner.has_broken(&mut conn.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(any(feature = "bb8", feature = "r2d2"))]
    use std::sync::atomic::AtomicUsize;

    /// A manager of numbered fake connections, counting how many it made: for the pool
    /// logic that needs no server (r2d2's own tests use one too).
    #[cfg(any(feature = "bb8", feature = "r2d2"))]
    #[derive(Debug, Default)]
    struct Fake {
        made: AtomicUsize,
    }

    #[cfg(any(feature = "bb8", feature = "r2d2"))]
    #[derive(Debug)]
    struct FakeError;

    #[cfg(any(feature = "bb8", feature = "r2d2"))]
    impl fmt::Display for FakeError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("fake")
        }
    }

    #[cfg(any(feature = "bb8", feature = "r2d2"))]
    impl std::error::Error for FakeError {}

    #[test]
    fn a_mark_set_from_a_clone_or_an_armed_drop_is_seen_by_the_connection() {
        let conn = Tracked::new(7_u8, 0);
        assert!(!conn.is_marked_broken());
        conn.close_mark().armed().disarm();
        assert!(!conn.is_marked_broken(), "a disarmed mark sets nothing");
        drop(conn.close_mark());
        assert!(
            !conn.is_marked_broken(),
            "an unarmed clone sets nothing when dropped"
        );
        drop(conn.close_mark().armed());
        assert!(
            conn.is_marked_broken(),
            "an armed clone dropped sets the mark"
        );
        assert_eq!(*conn, 7);
        let other = Tracked::new(8_u8, 0);
        other.close_mark().set();
        assert!(other.is_marked_broken());
    }

    #[cfg(feature = "bb8")]
    mod bb8_pool {
        use super::super::*;
        use super::{Fake, FakeError};

        impl bb8::ManageConnection for Fake {
            type Connection = usize;
            type Error = FakeError;

            async fn connect(&self) -> Result<usize, FakeError> {
                Ok(self.made.fetch_add(1, Ordering::SeqCst))
            }

            async fn is_valid(&self, _: &mut usize) -> Result<(), FakeError> {
                Ok(())
            }

            fn has_broken(&self, _: &mut usize) -> bool {
                false
            }
        }

        #[tokio::test]
        async fn the_pool_closes_a_connection_marked_broken_and_keeps_the_others() {
            let pool = bb8::Pool::builder()
                .max_size(1)
                .min_idle(Some(0))
                .build(LockManager::new(Fake::default()))
                .await
                .unwrap();
            let first = pool.get().await.unwrap();
            assert_eq!(**first, 0);
            drop(first);
            let again = pool.get().await.unwrap();
            assert_eq!(**again, 0, "an unmarked connection is reused");
            again.mark_broken();
            drop(again);
            let fresh = pool.get().await.unwrap();
            assert_eq!(**fresh, 1, "the marked connection was closed");
            assert!(!fresh.is_marked_broken());
        }

        #[tokio::test]
        async fn a_check_dropped_mid_flight_closes_its_connection() {
            // bb8 drops an `is_valid` that outlives the checkout timeout; the connection's
            // protocol state is then unknown, and it must not be handed out again.
            #[derive(Debug, Default)]
            struct Stalling {
                made: std::sync::atomic::AtomicUsize,
            }

            impl bb8::ManageConnection for Stalling {
                type Connection = usize;
                type Error = FakeError;

                async fn connect(&self) -> Result<usize, FakeError> {
                    Ok(self.made.fetch_add(1, Ordering::SeqCst))
                }

                async fn is_valid(&self, conn: &mut usize) -> Result<(), FakeError> {
                    if *conn == 0 {
                        std::future::pending::<()>().await;
                    }
                    Ok(())
                }

                fn has_broken(&self, _: &mut usize) -> bool {
                    false
                }
            }

            let manager = LockManager::new(Stalling::default());
            let mut conn = bb8::ManageConnection::connect(&manager).await.unwrap();
            let checking = bb8::ManageConnection::is_valid(&manager, &mut conn);
            let stalled =
                tokio::time::timeout(std::time::Duration::from_millis(20), checking).await;
            assert!(stalled.is_err(), "the check stalled");
            assert!(conn.is_marked_broken());
            assert!(bb8::ManageConnection::has_broken(&manager, &mut conn));
        }
    }

    #[cfg(feature = "r2d2")]
    mod r2d2_pool {
        use super::super::*;
        use super::{AtomicUsize, Fake, FakeError};

        impl r2d2::ManageConnection for Fake {
            type Connection = usize;
            type Error = FakeError;

            fn connect(&self) -> Result<usize, FakeError> {
                Ok(self.made.fetch_add(1, Ordering::SeqCst))
            }

            fn is_valid(&self, _: &mut usize) -> Result<(), FakeError> {
                Ok(())
            }

            fn has_broken(&self, _: &mut usize) -> bool {
                false
            }
        }

        #[test]
        fn the_pool_closes_a_connection_marked_broken_and_keeps_the_others() {
            let pool = r2d2::Pool::builder()
                .max_size(1)
                .min_idle(Some(0))
                .build(LockManager::new(Fake::default()))
                .unwrap();
            let first = pool.get().unwrap();
            assert_eq!(**first, 0);
            drop(first);
            let again = pool.get().unwrap();
            assert_eq!(**again, 0, "an unmarked connection is reused");
            again.mark_broken();
            drop(again);
            let fresh = pool.get().unwrap();
            assert_eq!(**fresh, 1, "the marked connection was closed");
            assert!(!fresh.is_marked_broken());
        }

        /// A manager that counts the checks and broken-asks the pool makes of it.
        #[derive(Debug, Default)]
        struct Counting {
            checks: Arc<AtomicUsize>,
            broken_asks: Arc<AtomicUsize>,
        }

        impl r2d2::ManageConnection for Counting {
            type Connection = usize;
            type Error = FakeError;

            fn connect(&self) -> Result<usize, FakeError> {
                Ok(0)
            }

            fn is_valid(&self, _: &mut usize) -> Result<(), FakeError> {
                self.checks.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }

            fn has_broken(&self, _: &mut usize) -> bool {
                self.broken_asks.fetch_add(1, Ordering::SeqCst);
                false
            }
        }

        #[test]
        fn a_pool_in_doubt_only_checks_once_after_a_session_ended() {
            let counting = Counting::default();
            let (checks, asks) = (
                Arc::clone(&counting.checks),
                Arc::clone(&counting.broken_asks),
            );
            let manager = LockManager::checking_in_doubt(counting);
            let doubt = manager.doubt();
            let pool = r2d2::Pool::builder().max_size(1).build(manager).unwrap();
            for _ in 0..3 {
                drop(pool.get().unwrap());
            }
            assert_eq!(checks.load(Ordering::SeqCst), 0, "no check while trusted");
            assert_eq!(asks.load(Ordering::SeqCst), 0, "no ask on return");
            doubt.raise();
            for _ in 0..3 {
                drop(pool.get().unwrap());
            }
            assert_eq!(
                checks.load(Ordering::SeqCst),
                1,
                "checked once, then trusted"
            );

            // A pool from the user's builder checks and asks as the manager says, every time.
            let counting = Counting::default();
            let (checks, asks) = (
                Arc::clone(&counting.checks),
                Arc::clone(&counting.broken_asks),
            );
            let pool = r2d2::Pool::builder()
                .max_size(1)
                .build(LockManager::new(counting))
                .unwrap();
            for _ in 0..3 {
                drop(pool.get().unwrap());
            }
            assert_eq!(checks.load(Ordering::SeqCst), 3);
            assert_eq!(asks.load(Ordering::SeqCst), 3);
        }
    }
}
