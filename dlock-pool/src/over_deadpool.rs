//! `DeadpoolLockPool`: pooled PostgreSQL locks over the user's own `deadpool_postgres::Pool`
//! (feature `deadpool`). Each lock checks a connection out of that pool for as long as it
//! holds, and gives it back when it released cleanly; a connection that may still hold
//! anything is taken out of the pool (`Object::take`) and closed, which ends its session.
//!
//! deadpool keeps nothing of dlock's beside a connection, so what dlock learns of a server
//! session (its name for the watcher, the deployment check's verdict, prepared statements)
//! is kept here, under the session's cancel key, which the client gives without I/O.

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool};
use dlock_core::{
    AsyncLock, ConnectionLock, Error, Key, KeyPolicy, LostReason, Result, SessionId, SessionState,
    Wait,
};
use dlock_postgres::tokio::{CancelKey, SideTls};
use dlock_postgres::tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use dlock_postgres::tokio_postgres::{Client, Socket};
use dlock_postgres::{AsyncPgConnection, AsyncPgLock};

use crate::asynchronous::{
    Held, HeldGuard, Settled, WatchSource, acquire_pooled, bounded_with_lock, checkout_within,
    held_guard_functions, run_locked, take_on_checkouts, user_pool_entry_points,
};
use crate::core::{self, PoolCore};
use crate::deadline;
use crate::manager::CloseMark;
use crate::watch::WatchedLock;

/// Pooled PostgreSQL locks over your `deadpool_postgres::Pool`: the guard, watcher, fencing,
/// retry and deployment check of [`AsyncLockPool`](crate::AsyncLockPool), with connections
/// from your pool.
///
/// - An acquire checks a connection out of your pool and keeps it until release; a guard
///   derefs to its `tokio_postgres::Client` for the work the lock guards.
/// - A released guard gives the connection back to your pool. One that may still hold
///   anything (dropped without release, a failed release, a lost lock, a dropped acquire) is
///   taken out of the pool and closed, which ends its session and frees its locks; deadpool
///   opens another in its place.
/// - The pool's watcher opens one connection of its own out of your pool (taken out of it
///   for good) when the first lock is held.
/// - What dlock learns of a connection's server session is kept beside the pool, under the
///   session's cancel key: a connection is checked and named once, and later locks on it
///   reuse its prepared statements.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use dlock_pool::deadpool_postgres::{Config, Runtime};
/// use dlock_pool::dlock_postgres::tokio_postgres::NoTls;
/// use dlock_pool::{DeadpoolLockGuard, DeadpoolLockPool};
///
/// let mut config = Config::new();
/// config.url = Some("postgres://postgres@localhost/postgres".into());
/// let pool = config.create_pool(Some(Runtime::Tokio1), NoTls)?;
/// let locks = DeadpoolLockPool::new(pool.clone());
/// let mut guard = locks.acquire("nightly-report").await?;
/// guard.execute("UPDATE reports SET running = true", &[]).await?;
/// DeadpoolLockGuard::release(guard).await?;
/// # Ok(())
/// # }
/// ```
pub struct DeadpoolLockPool {
    pool: Pool,
    core: PoolCore<DeadpoolSource>,
    sessions: Arc<Mutex<Sessions>>,
    side_tls: Option<SideTls>,
}

/// What the pool knows of the server sessions of its connections, under their cancel keys.
#[derive(Default)]
struct Sessions {
    known: HashMap<CancelKey, Known>,
}

/// What the pool knows of one server session.
#[derive(Default)]
struct Known {
    checked: bool,
    session: Option<SessionId>,
    /// What the session's last lock learned (prepared statements), while no lock uses it.
    state: Option<SessionState>,
}

impl Sessions {
    /// Forgets everything once more sessions are known than a pool could hold open at
    /// once, twice over: connections closed since leave entries nobody will ask for.
    fn make_room(&mut self, pool_size: usize) {
        if self.known.len() >= pool_size.saturating_mul(2).max(16) {
            self.known.clear();
        }
    }
}

/// Where the watcher of a [`DeadpoolLockPool`] connects: your pool, which gives up one
/// connection for good.
#[derive(Clone, Debug)]
pub(crate) struct DeadpoolSource(Pool);

impl WatchSource for DeadpoolSource {
    type Conn = deadpool_postgres::ClientWrapper;

    async fn connect(&self) -> Result<deadpool_postgres::ClientWrapper> {
        let object = self.0.get().await.map_err(Error::pool)?;
        Ok(Object::take(object))
    }

    async fn still_held(
        conn: &mut deadpool_postgres::ClientWrapper,
        policy: &KeyPolicy,
        locks: &[WatchedLock],
    ) -> Result<Vec<bool>> {
        let locks = crate::watch::in_backend_form(policy, locks, KeyPolicy::pg_key)?;
        dlock_postgres::tokio::still_held(conn, &locks).await
    }
}

impl DeadpoolLockPool {
    /// Locks over `pool`, under the default key policy, with the watcher on.
    pub fn new(pool: Pool) -> Self {
        DeadpoolLockPool {
            core: PoolCore::over(Arc::new(DeadpoolSource(pool.clone()))),
            pool,
            sessions: Arc::default(),
            side_tls: None,
        }
    }

    crate::manager::pool_options!();

    /// Uses `policy` to turn keys into PostgreSQL's.
    pub fn policy(mut self, policy: KeyPolicy) -> Self {
        self.core.set_policy(policy);
        self
    }

    /// Sends the cancel request that ends a dropped acquire's wait through `tls`: give it the
    /// connector your pool connects with. Without it the cancel goes in plain text.
    pub fn tls<T>(mut self, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        self.side_tls = Some(SideTls::new(tls));
        self
    }

    /// Your pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Creates the table of fencing tokens that this pool's locks use, if it does not exist,
    /// through a connection of the pool. Run it once per database.
    ///
    /// # Errors
    ///
    /// [`Error::Pool`] when no connection came; otherwise what the server reports.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: `CREATE TABLE IF NOT EXISTS` either ran or did not.
    pub async fn install_fencing(&self) -> Result<()> {
        let conn = self.checkout(None).await?;
        match self.core.fence_table_name() {
            Some(table) => dlock_postgres::tokio::install_fencing_in(&conn, table).await,
            None => dlock_postgres::tokio::install_fencing(&conn).await,
        }
    }

    user_pool_entry_points!(
        DeadpoolLockGuard,
        "Dropping the future while it waits closes the connection instead of returning it to \
         your pool, which ends the session's wait and frees anything granted.",
        "Dropping the future drops `work` and the guard, which closes the connection and so \
         frees the lock."
    );

    /// A connection of your pool, within `deadline`.
    async fn checkout(&self, deadline: Option<Instant>) -> Result<Object> {
        let status = self.pool.status();
        let at_hand = status.available > 0 || status.size < status.max_size;
        checkout_within(deadline, at_hand, "deadpool", self.pool.get()).await
    }

    /// Checks out a connection and takes `key` on it, within `deadline` for both when there
    /// is one; once more on another connection if the server had ended the first one's
    /// session.
    async fn take(
        &self,
        key: Key,
        deadline: Option<Instant>,
        wait: Wait,
    ) -> Result<Option<DeadpoolLockGuard>> {
        KeyPolicy::pg_key(&self.core.policy, &key)?;
        take_on_checkouts(
            &self.core.doubt,
            deadline,
            wait,
            |deadline| self.checkout(deadline),
            |object, wait| self.lock_on(object, key.clone(), wait),
        )
        .await
    }

    async fn lock_on(
        &self,
        object: Object,
        key: Key,
        wait: Wait,
    ) -> Result<Option<DeadpoolLockGuard>> {
        let mut conn = DeadpoolConnection {
            object: Some(object),
            mark: CloseMark::default(),
        };
        let mark = conn.mark.clone();
        let cancel_key = dlock_postgres::tokio::cancel_key(conn.client()).await;
        let mut known = cancel_key
            .and_then(|cancel_key| self.sessions().known.remove(&cancel_key))
            .unwrap_or_default();
        if self.core.check_deployment && !known.checked {
            // A check whose future is dropped with its reply unread closes the connection.
            let checking = mark.armed();
            dlock_postgres::tokio::check_deployment(conn.client(), None)
                .await
                .map_err(|error| core::refused(&mark, error))?;
            checking.disarm();
            known.checked = true;
        }
        let held = match (self.core.watch.is_on(), known.session) {
            (false, _) => None,
            (true, Some(session)) => Some((session, key.clone())),
            (true, None) => {
                let asking = mark.armed();
                let session = dlock_postgres::tokio::session(conn.client()).await?;
                asking.disarm();
                known.session = Some(session);
                Some((session, key.clone()))
            }
        };
        let lock: AsyncPgLock<DeadpoolConnection> =
            (self.core).lock_on(conn, key, known.state.take())?;
        let mut lock = match &self.side_tls {
            Some(tls) => lock.side_tls(tls.clone()),
            None => lock,
        };
        let remember = Remember {
            sessions: Arc::clone(&self.sessions),
            cancel_key,
            known,
            pool_size: self.pool.status().max_size,
        };
        if !acquire_pooled(&mut lock, wait, &mark).await? {
            // Not held: the connection goes straight back, and what was learned is kept.
            remember.keep(lock.take_session_state());
            return Ok(None);
        }
        let (signal, watched) = (self.core).granted_async(held, lock.key(), mark.clone());
        Ok(Some(DeadpoolLockGuard {
            held: Held::new(lock, mark, signal, watched),
            remember: Some(remember),
        }))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        lock(&self.sessions)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding it; a poisoned map is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl fmt::Debug for DeadpoolLockPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadpoolLockPool")
            .field("status", &self.pool.status())
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

/// What a guard hands back to the pool when its connection goes back clean: what it learned
/// of the session, under its cancel key.
struct Remember {
    sessions: Arc<Mutex<Sessions>>,
    cancel_key: Option<CancelKey>,
    known: Known,
    pool_size: usize,
}

impl Remember {
    fn keep(mut self, state: Option<SessionState>) {
        let Some(cancel_key) = self.cancel_key else {
            return;
        };
        self.known.state = state;
        let mut sessions = lock(&self.sessions);
        sessions.make_room(self.pool_size);
        sessions.known.insert(cancel_key, self.known);
    }
}

/// A connection of your deadpool pool under a lock: given back to the pool when dropped,
/// unless marked, when it is taken out of the pool and closed.
pub(crate) struct DeadpoolConnection {
    /// `Some` until dropped.
    object: Option<Object>,
    mark: CloseMark,
}

impl AsyncPgConnection for DeadpoolConnection {
    fn client(&mut self) -> &mut Client {
        self.object
            .as_mut()
            .expect("the object is only taken on drop")
    }

    /// Taken out of the pool and closed when dropped.
    fn discard(&mut self) -> bool {
        self.mark.set();
        true
    }
}

impl Deref for DeadpoolConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.object
            .as_ref()
            .expect("the object is only taken on drop")
    }
}

impl DerefMut for DeadpoolConnection {
    fn deref_mut(&mut self) -> &mut Client {
        self.client()
    }
}

impl Drop for DeadpoolConnection {
    fn drop(&mut self) {
        if let Some(object) = self.object.take()
            && self.mark.is_set()
        {
            // Out of the pool for good: dropping the client closes the connection.
            drop(Object::take(object));
        }
    }
}

impl fmt::Debug for DeadpoolConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadpoolConnection")
            .field("marked_to_close", &self.mark.is_set())
            .finish_non_exhaustive()
    }
}

/// A held lock of a [`DeadpoolLockPool`] and the connection it holds it on. It derefs to the
/// `tokio_postgres::Client`; its own functions are associated functions.
///
/// Release on drop is not immediate: a guard dropped without
/// [`release`](DeadpoolLockGuard::release) takes its connection out of your pool and closes
/// it, which ends the session and frees the lock in the server.
#[must_use = "the lock is released when the guard is dropped"]
pub struct DeadpoolLockGuard {
    held: Held<AsyncPgLock<DeadpoolConnection>, DeadpoolConnection>,
    /// What goes back beside the pool with a clean release.
    remember: Option<Remember>,
}

impl DeadpoolLockGuard {
    /// Releases the lock, then gives the connection back to your pool (or closes it when the
    /// release failed, which frees the lock in the server).
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] when the lock was lost while held; a connection error when the
    /// session is gone.
    ///
    /// # Cancel Safety
    ///
    /// Dropping the future before it completes closes the connection, which frees the lock.
    pub async fn release(mut this: Self) -> Result<()> {
        let remember = this.remember.take();
        this.held
            .release(|conn: DeadpoolConnection, settled| {
                match settled {
                    Settled::Clean(state) => {
                        if let Some(remember) = remember {
                            remember.keep(state);
                        }
                    }
                    Settled::InDoubt => conn.mark.set(),
                }
                drop(conn);
            })
            .await
    }

    held_guard_functions!();
}

impl Deref for DeadpoolLockGuard {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.held.lock().get_ref()
    }
}

impl DerefMut for DeadpoolLockGuard {
    fn deref_mut(&mut self) -> &mut Client {
        self.held.lock_mut().get_mut().client()
    }
}

impl HeldGuard for DeadpoolLockGuard {
    fn lost_signal(&self) -> impl Future<Output = LostReason> + Send + 'static {
        DeadpoolLockGuard::lost(self)
    }

    fn release_guard(self) -> impl Future<Output = Result<()>> {
        DeadpoolLockGuard::release(self)
    }
}

impl fmt::Debug for DeadpoolLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadpoolLockGuard")
            .field("key", &self.held.key())
            .finish_non_exhaustive()
    }
}
