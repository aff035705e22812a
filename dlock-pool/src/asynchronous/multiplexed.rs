//! `AsyncMultiplexedPool`: locks that share a few server sessions, so that a service can hold
//! many locks at once over a handful of connections (.NET DistributedLock's optimistic
//! multiplexing, Que's locker connection).
//!
//! A try lands on a session already shared, batched with the other tasks' tries and
//! releases into one statement (`batch`): it never waits behind another operation's wait,
//! because no statement that waits ever runs on a shared session. A lock that must wait
//! waits on a session of its own, checked out of the pool as any pooled lock's; once
//! granted, that session joins the shared set. A session that holds nothing and carries no
//! try goes back to the pool.
//!
//! Advisory locks and named locks count per session, so a second try of a key on the
//! session that holds it would succeed. The pool keeps the keys this process holds or tries
//! on shared sessions, and a try of one of them fails at once, as it would from another
//! process; an acquire of one waits in the server on a session of its own, which the holder's
//! session keeps out. A session that joins the set holding a key claims it in the same step
//! as it joins, and a try picks its session in the same step as it looks at the key's
//! claims, so no try ever lands on the session that holds its key.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;
use crate::core::FenceTable;

/// A bb8 manager whose connections [`AsyncMultiplexedPool`] shares: one of
/// [`AsyncConnection`]'s (tokio-postgres `Client`, mysql_async `Conn`). Implemented for every
/// such manager.
pub trait MultiplexedManager: AsyncManager<Connection: AsyncConnection> {}

impl<M: AsyncManager<Connection: AsyncConnection>> MultiplexedManager for M {}

/// A key as the server of pool manager `M` names it.
type ServerKey<M> = <<M as bb8::ManageConnection>::Connection as AsyncConnection>::ServerKey;

/// Session locks that share a few server sessions, over an [`AsyncLockPool`]
/// ([`AsyncLockPool::multiplexed`]): hold thousands of locks over a handful of connections.
///
/// - `try_acquire` sends one statement (`pg_try_advisory_lock`, `GET_LOCK(name, 0)`) on a
///   session the pool already shares, or on a new one from the pool when none is shared yet.
///   The tries and releases that many tasks ask for while a statement is out go together
///   in the next one, on both backends (tokio-postgres could pipeline them one by one, and
///   mysql_async cannot pipeline at all: one statement for many costs the server far less).
/// - `acquire` and `acquire_timeout` try first; when the key is busy, they wait on a session
///   of their own from the pool, which joins the shared set once it holds the lock. A shared
///   session never carries a wait, so releases and tries never queue behind one.
/// - A session that holds nothing goes back to the pool.
/// - The same key twice from this process: the second try fails, and the second acquire
///   waits, as from another process; never a second hold by the session's reentrancy.
/// - The pool's watcher, deployment check, key policy and fence table apply as to the pool's
///   own locks. A session found lost reports every lock it held lost.
/// - A held lock has no connection of its own to lend: do the work it guards through your
///   pool ([`pool`](Self::pool)), or anywhere else.
/// - Exclusive locks only: on a [`shared`](AsyncLockPool::shared) pool every acquire is
///   [`Error::Unsupported`].
///
/// PostgreSQL's lock table is the limit: about `max_locks_per_transaction x (max_connections
/// + max_prepared_transactions)` entries for the whole server (6,400 with the defaults),
/// shared with every other lock; beyond it an acquire fails with [`Error::LockTableFull`].
/// MySQL and MariaDB keep named locks in memory with no such table. A fenced MySQL try takes
/// its token in a second statement, as a fenced `AsyncMySqlLock` does.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use bb8_postgres::{PostgresConnectionManager, tokio_postgres::NoTls};
/// use dlock_pool::{AsyncLockPool, AsyncMultiplexedGuard};
///
/// let manager = PostgresConnectionManager::new_from_stringlike("postgres://app@db/app", NoTls)?;
/// let locks = AsyncLockPool::new(manager).await?.multiplexed();
/// let mut held = Vec::new();
/// for job in 0..1_000 {
///     if let Some(guard) = locks.try_acquire(format!("job/{job}")).await? {
///         held.push(guard);
///     }
/// }
/// for guard in held {
///     AsyncMultiplexedGuard::release(guard).await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct AsyncMultiplexedPool<M: MultiplexedManager> {
    pool: AsyncLockPool<M>,
    shared: Arc<Mutex<Shared<M>>>,
    /// Held while a session is opened for tries, so that tries which find none wait for that
    /// one instead of each taking a connection of the pool.
    opening: tokio::sync::Mutex<()>,
}

/// The shared sessions, and the keys this process holds or tries on them.
struct Shared<M: MultiplexedManager> {
    /// Each shared session, with how many holds and tries it carries.
    sessions: Vec<(Arc<SharedSession<M>>, usize)>,
    /// How many holds and tries of each key ride on shared sessions (more than one only for
    /// a moment, while a release and a new grant cross).
    keys: HashMap<ServerKey<M>, usize>,
}

/// A server session that carries the locks of many guards.
struct SharedSession<M: MultiplexedManager> {
    conn: <M::Connection as AsyncConnection>::Shared<M>,
    id: SessionId,
    /// Closes the connection when it goes back, instead of letting it be reused.
    mark: CloseMark,
}

/// One hold or try riding on a shared session: dropped, the session carries one less, and
/// goes back to the pool when it carries nothing.
struct Rider<M: MultiplexedManager> {
    shared: Arc<Mutex<Shared<M>>>,
    session: Arc<SharedSession<M>>,
}

impl<M: MultiplexedManager> Drop for Rider<M> {
    fn drop(&mut self) {
        let mut shared = lock(&self.shared);
        if let Some(index) = shared
            .sessions
            .iter()
            .position(|(session, _)| Arc::ptr_eq(session, &self.session))
        {
            let riders = &mut shared.sessions[index].1;
            *riders -= 1;
            if *riders == 0 {
                // The set lets it go; the last clone of it gives the connection back.
                shared.sessions.swap_remove(index);
            }
        }
    }
}

/// A key held or tried on a shared session by this process: dropped, it is free again for
/// this process's tries.
struct Claim<M: MultiplexedManager> {
    shared: Arc<Mutex<Shared<M>>>,
    key: ServerKey<M>,
}

impl<M: MultiplexedManager> Claim<M> {
    /// Claims `key` unless this process holds or tries it on a shared session already.
    fn take(shared: &Arc<Mutex<Shared<M>>>, key: ServerKey<M>) -> Option<Self> {
        let mut state = lock(shared);
        if state.keys.contains_key(&key) {
            return None;
        }
        state.keys.insert(key.clone(), 1);
        Some(Claim {
            shared: Arc::clone(shared),
            key,
        })
    }
}

impl<M: MultiplexedManager> Drop for Claim<M> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        if let Some(count) = state.keys.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                state.keys.remove(&self.key);
            }
        }
    }
}

/// Where a try on a shared session goes.
enum Ride<M: MultiplexedManager> {
    /// On this session.
    On(Rider<M>),
    /// Nowhere: a lock of the key, granted on a session of its own, joined the set since
    /// the try claimed the key, so the key is held.
    KeyJoined,
    /// No session is shared yet.
    NoSession,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding it; a poisoned state is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A try in flight on a shared session: if its future is dropped, or it fails, before its
/// outcome is known, the session may hold the key for nobody. A task then sends the unlock
/// the session owes, and only then lets the claim and the ride go; a session whose unlock
/// fails is closed once it carries nothing. On PostgreSQL the unlock goes out after the try
/// (in its batch, or a later one); on MySQL the try's own task also gives back a grant
/// nobody awaits, and the session's reentrant counts make the two agree in either order.
struct InFlight<M: MultiplexedManager> {
    owed: Option<(Rider<M>, Claim<M>)>,
}

impl<M: MultiplexedManager> InFlight<M> {
    /// The outcome is known: the ride and the claim, for the guard or to let go.
    fn settled(mut self) -> (Rider<M>, Claim<M>) {
        self.owed.take().expect("settled once")
    }
}

impl<M: MultiplexedManager> Drop for InFlight<M> {
    fn drop(&mut self) {
        let Some((rider, claim)) = self.owed.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No I/O without a runtime: the session may hold the key, so it is closed once
            // it carries nothing, which frees it.
            rider.session.mark.set();
            return;
        };
        runtime.spawn(async move {
            let unlocked =
                M::Connection::unlock_shared_if_held(&rider.session.conn, &claim.key).await;
            if let Err(error) = unlocked {
                tracing::warn!(target: "dlock", %error, "a dropped try's unlock failed: its shared session is closed once it carries nothing");
                rider.session.mark.set();
            }
            drop((claim, rider));
        });
    }
}

impl<M: MultiplexedManager> AsyncLockPool<M> {
    /// Locks that share a few of this pool's sessions instead of taking one each: see
    /// [`AsyncMultiplexedPool`].
    pub fn multiplexed(self) -> AsyncMultiplexedPool<M> {
        AsyncMultiplexedPool {
            pool: self,
            shared: Arc::new(Mutex::new(Shared {
                sessions: Vec::new(),
                keys: HashMap::new(),
            })),
            opening: tokio::sync::Mutex::new(()),
        }
    }
}

impl<M: MultiplexedManager> AsyncMultiplexedPool<M> {
    /// The pool the sessions come from, for the work the locks guard: a held lock lends no
    /// connection.
    pub fn pool(&self) -> &AsyncLockPool<M> {
        &self.pool
    }

    /// How many sessions the locks share now.
    pub fn shared_sessions(&self) -> usize {
        lock(&self.shared).sessions.len()
    }

    /// Takes `key` if it is free: `Ok(None)` when another session holds it, or this process
    /// holds or tries it already. One statement on a shared session (opened from the pool
    /// when none is shared yet).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] before anything is sent; [`Error::Unsupported`] on a shared
    /// pool; [`Error::Pool`] when a first session cannot be had; what the server reports.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: a try whose future is dropped after it was sent leaves a task that
    /// unlocks the key if the try got it, before the key is free for this process again.
    pub async fn try_acquire(
        &self,
        key: impl Into<Key>,
    ) -> Result<Option<AsyncMultiplexedGuard<M>>> {
        let key = key.into();
        let server_key = self.server_key(&key)?;
        self.try_shared(key, server_key).await
    }

    /// Waits until it holds `key`: a try on a shared session first, then, when the key is
    /// busy, a wait in the server on a session of its own from the pool, which joins the
    /// shared set once granted.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](Self::try_acquire), and as [`AsyncLockPool::acquire`].
    ///
    /// # Cancel Safety
    ///
    /// As [`try_acquire`](Self::try_acquire) and [`AsyncLockPool::acquire`]: a dropped wait
    /// closes its own session, and no shared session is touched.
    pub async fn acquire(&self, key: impl Into<Key>) -> Result<AsyncMultiplexedGuard<M>> {
        let guard = self.take(key.into(), None).await?;
        guard.ok_or_else(|| Error::backend("an unbounded lock wait returned without the lock"))
    }

    /// As [`acquire`](Self::acquire), within `timeout` for the try, the checkout and the
    /// wait together: `Ok(None)` when the key stayed busy.
    ///
    /// # Errors
    ///
    /// As [`AsyncLockPool::acquire_timeout`].
    ///
    /// # Cancel Safety
    ///
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_timeout(
        &self,
        key: impl Into<Key>,
        timeout: Duration,
    ) -> Result<Option<AsyncMultiplexedGuard<M>>> {
        let deadline = deadline::deadline(Instant::now(), timeout);
        self.take(key.into(), deadline).await
    }

    /// Acquires `key` (as [`acquire`](Self::acquire)), runs `work` with the guard and
    /// releases, whatever `work` returned; if the lock is lost first, `work`'s future is
    /// dropped at once and the result is [`Error::LockLost`]. As
    /// [`AsyncLockPool::with_lock`], except that the guard lends no connection.
    ///
    /// # Errors
    ///
    /// `work`'s error; as [`acquire`](Self::acquire); [`Error::LockLost`].
    ///
    /// # Cancel Safety
    ///
    /// Dropping the future drops the guard, whose lock a task then releases.
    pub async fn with_lock<T, E: From<Error>>(
        &self,
        key: impl Into<Key>,
        work: impl AsyncFnOnce(&mut AsyncMultiplexedGuard<M>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let guard = self.acquire(key).await?;
        run_locked(guard, work).await
    }

    bounded_with_lock!(AsyncMultiplexedGuard<M>);

    /// The key in the server's form, under the pool's policy; refused for a shared pool.
    fn server_key(&self, key: &Key) -> Result<ServerKey<M>> {
        if self.pool.core.shared {
            return Err(Error::Unsupported {
                operation: "a shared lock on a multiplexed pool",
                backend: "dlock-pool",
                hint: "multiplexed locks are exclusive; take shared locks from the pool itself",
            });
        }
        M::Connection::server_key(&self.pool.core.policy, key)
    }

    /// A try on a shared session, then (with `wait`) a wait on a session of its own.
    async fn take(
        &self,
        key: Key,
        deadline: Option<Instant>,
    ) -> Result<Option<AsyncMultiplexedGuard<M>>> {
        let server_key = self.server_key(&key)?;
        if let Some(guard) = self.try_shared(key.clone(), server_key.clone()).await? {
            return Ok(Some(guard));
        }
        let wait = match deadline {
            Some(_) => deadline::lock_wait(deadline, Instant::now()),
            None => Wait::Forever,
        };
        if wait == Wait::Never {
            return Ok(None);
        }
        let Some(guard) = self.pool.take(key, deadline, Wait::Forever).await? else {
            return Ok(None);
        };
        self.join(guard, server_key).await.map(Some)
    }

    /// A try of `key` on a shared session.
    async fn try_shared(
        &self,
        key: Key,
        server_key: ServerKey<M>,
    ) -> Result<Option<AsyncMultiplexedGuard<M>>> {
        let Some(claim) = Claim::take(&self.shared, server_key.clone()) else {
            return Ok(None);
        };
        let rider = match self.ride(&claim) {
            Ride::On(rider) => rider,
            Ride::KeyJoined => return Ok(None),
            Ride::NoSession => {
                let _opening = self.opening.lock().await;
                match self.ride(&claim) {
                    Ride::On(rider) => rider,
                    Ride::KeyJoined => return Ok(None),
                    Ride::NoSession => self.open_shared().await?,
                }
            }
        };
        let session = Arc::clone(&rider.session);
        let attempt = InFlight {
            owed: Some((rider, claim)),
        };
        let fence = self.pool.core.fence.as_ref().map(|table| match table {
            FenceTable::Default => None,
            FenceTable::Named(table) => Some(table.as_str()),
        });
        let granted = M::Connection::try_lock_shared(&session.conn, &server_key, fence).await;
        // A failed try may have been granted before it failed: the attempt's drop unlocks.
        let granted = granted?;
        let (rider, claim) = attempt.settled();
        let Some(token) = granted else {
            return Ok(None);
        };
        Ok(Some(self.guard(key, rider, claim, token)))
    }

    /// A ride on the shared session that carries the most, if any: packing the locks onto
    /// few sessions lets the others drain back to the pool.
    ///
    /// A lock granted on a session of its own may have joined the set since `claim` was
    /// taken, holding the claimed key: a try on that session would be granted by the
    /// session's reentrancy, a second holder. The choice of session and the look at the
    /// key's claims are one step under the state's mutex, and a join adds its claim and its
    /// session in one step too, so a try either sees the joined holder's claim and gives up
    /// or rides a session that was shared before the holder joined, where the server
    /// refuses it.
    fn ride(&self, claim: &Claim<M>) -> Ride<M> {
        let mut shared = lock(&self.shared);
        if shared.keys.get(&claim.key) != Some(&1) {
            return Ride::KeyJoined;
        }
        let Some((session, riders)) = shared
            .sessions
            .iter_mut()
            .filter(|(session, _)| !session.mark.is_set())
            .max_by_key(|(_, riders)| *riders)
        else {
            return Ride::NoSession;
        };
        *riders += 1;
        Ride::On(Rider {
            shared: Arc::clone(&self.shared),
            session: Arc::clone(session),
        })
    }

    /// A session from the pool, checked and named as the pool's own locks' are, shared from
    /// now on.
    async fn open_shared(&self) -> Result<Rider<M>> {
        let mut conn = self.pool.checkout(None).await?;
        let mark = conn.close_mark();
        self.pool.check_deployment(&mut conn, &mark).await?;
        let id = self.pool.session(&mut conn, &mark).await?;
        let conn = M::Connection::share(conn);
        Ok(self.share(SharedSession { conn, id, mark }, None).0)
    }

    /// Adds `session` to the shared set, with one rider: the caller; with `holding`, a key
    /// the session holds, claimed in the same step (see [`ride`](Self::ride)).
    fn share(
        &self,
        session: SharedSession<M>,
        holding: Option<ServerKey<M>>,
    ) -> (Rider<M>, Option<Claim<M>>) {
        let session = Arc::new(session);
        let mut state = lock(&self.shared);
        let claim = holding.map(|key| {
            *state.keys.entry(key.clone()).or_insert(0) += 1;
            Claim {
                shared: Arc::clone(&self.shared),
                key,
            }
        });
        state.sessions.push((Arc::clone(&session), 1));
        let rider = Rider {
            shared: Arc::clone(&self.shared),
            session,
        };
        (rider, claim)
    }

    /// The guard of a lock granted by a try on a shared session.
    fn guard(
        &self,
        key: Key,
        rider: Rider<M>,
        claim: Claim<M>,
        token: Option<u64>,
    ) -> AsyncMultiplexedGuard<M> {
        let held = self
            .pool
            .core
            .watch
            .is_on()
            .then(|| (rider.session.id, key.clone()));
        let (signal, watched) =
            (self.pool.core).granted_async(held, &key, rider.session.mark.clone());
        AsyncMultiplexedGuard {
            hold: Some(Hold { rider, claim }),
            key,
            token,
            signal,
            watched,
        }
    }

    /// Turns a lock granted on a session of its own into one on a shared session: the
    /// session joins the set, holding the lock, with the pool guard's watch.
    async fn join(
        &self,
        guard: AsyncLockGuard<M>,
        server_key: ServerKey<M>,
    ) -> Result<AsyncMultiplexedGuard<M>> {
        let (lock, mark, signal, watched) = guard.held.into_parts();
        let key = lock.key().clone();
        let token = lock.fencing_token();
        // Nothing is sent: the session keeps holding the lock, now for the shared set. If
        // naming it fails, or its future is dropped, the armed mark closes the connection,
        // which frees the lock.
        let mut conn = lock.disown();
        let id = self.pool.session(&mut conn, &mark).await?;
        let conn = M::Connection::share(conn);
        let (rider, claim) = self.share(SharedSession { conn, id, mark }, Some(server_key));
        let claim = claim.expect("a held key is claimed");
        Ok(AsyncMultiplexedGuard {
            hold: Some(Hold { rider, claim }),
            key,
            token,
            signal,
            watched,
        })
    }
}

impl<M: MultiplexedManager> fmt::Debug for AsyncMultiplexedPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncMultiplexedPool")
            .field("pool", &self.pool)
            .field("shared_sessions", &self.shared_sessions())
            .finish()
    }
}

/// What a held lock of an [`AsyncMultiplexedPool`] keeps: its ride on the shared session,
/// and its claim on the key.
struct Hold<M: MultiplexedManager> {
    rider: Rider<M>,
    claim: Claim<M>,
}

/// A held lock of an [`AsyncMultiplexedPool`], on a session it shares with other locks. It
/// lends no connection. Release it with [`release`](Self::release); dropped, a task releases
/// it.
#[must_use = "the lock is released when the guard is dropped"]
pub struct AsyncMultiplexedGuard<M: MultiplexedManager> {
    /// `Some` until released.
    hold: Option<Hold<M>>,
    key: Key,
    token: Option<u64>,
    signal: Arc<Signal>,
    watched: Option<Watched<WatchedLock>>,
}

impl<M: MultiplexedManager> AsyncMultiplexedGuard<M> {
    /// Releases the lock on the shared session (on PostgreSQL in one statement with the
    /// other tasks' tries and releases).
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] when the lock was lost while held (the watcher found it, or the
    /// server said so now); a connection error when the session is gone. Either way the
    /// shared session is closed once it carries nothing.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: once sent, the unlock runs on the connection whether or not the future
    /// is polled again.
    pub async fn release(mut this: Self) -> Result<()> {
        let hold = this.hold.take().expect("the hold is only taken on release");
        // The watcher stops watching first, so that it cannot take this unlock for a loss.
        drop(this.watched.take());
        if let Some(reason) = this.signal.lost_now() {
            return Err(this.signal.error(reason));
        }
        let unlocked =
            M::Connection::unlock_shared(&hold.rider.session.conn, &hold.claim.key).await;
        match unlocked {
            Ok(true) => Ok(()),
            Ok(false) => {
                hold.rider.session.mark.set();
                Err(this.signal.error(LostReason::NotHeld))
            }
            Err(error) => {
                hold.rider.session.mark.set();
                Err(error)
            }
        }
    }

    /// Asks the server whether the shared session still holds the lock. A lock known lost
    /// is `Ok(false)` without asking.
    ///
    /// # Errors
    ///
    /// What the server or the connection reports.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: it only reads.
    pub async fn verify(this: &mut Self) -> Result<bool> {
        if this.signal.lost_now().is_some() {
            return Ok(false);
        }
        let hold = this
            .hold
            .as_ref()
            .expect("the hold is only taken on release");
        let session = &hold.rider.session;
        let verified =
            M::Connection::still_held_shared(&session.conn, session.id, &hold.claim.key).await;
        crate::watch::note_verified(&this.signal, &verified);
        verified
    }

    /// Whether the lock is known lost. No I/O.
    pub fn is_lost(this: &Self) -> bool {
        this.signal.lost_now().is_some()
    }

    /// Resolves, with the reason, once the lock is known lost. `Send + 'static`.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: it only waits.
    pub fn lost(this: &Self) -> impl Future<Output = LostReason> + Send + 'static {
        watch::lost(Arc::clone(&this.signal))
    }

    /// The key of the held lock.
    pub fn key(this: &Self) -> &Key {
        &this.key
    }

    /// The fencing token of the held lock, when the pool is fenced.
    pub fn fencing_token(this: &Self) -> Option<u64> {
        this.token
    }
}

impl<M: MultiplexedManager> HeldGuard for AsyncMultiplexedGuard<M> {
    fn lost_signal(&self) -> impl Future<Output = LostReason> + Send + 'static {
        AsyncMultiplexedGuard::lost(self)
    }

    fn release_guard(self) -> impl Future<Output = Result<()>> {
        AsyncMultiplexedGuard::release(self)
    }
}

impl<M: MultiplexedManager> Drop for AsyncMultiplexedGuard<M> {
    fn drop(&mut self) {
        let Some(hold) = self.hold.take() else {
            return;
        };
        drop(self.watched.take());
        if self.signal.lost_now().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(target: "dlock", key = %self.key, "a multiplexed lock dropped outside a tokio runtime: its shared session is closed once it carries nothing, which frees it");
            hold.rider.session.mark.set();
            return;
        };
        runtime.spawn(async move {
            let unlocked =
                M::Connection::unlock_shared(&hold.rider.session.conn, &hold.claim.key).await;
            if !matches!(unlocked, Ok(true)) {
                hold.rider.session.mark.set();
            }
            drop(hold);
        });
    }
}

impl<M: MultiplexedManager> fmt::Debug for AsyncMultiplexedGuard<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncMultiplexedGuard")
            .field("key", &self.key)
            .field("fencing_token", &self.token)
            .finish_non_exhaustive()
    }
}
