//! Locks over `tokio-postgres`.

use std::borrow::BorrowMut;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use dlock_core::{AsyncLock, Error, Key, KeyPolicy, PgKey, Result};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, Transaction};

use crate::sql::{self, Failure, Holder, Kind, Mode, Params, Scope, Shape, Statements, Wait};

/// A PostgreSQL session-level advisory lock over a [`tokio_postgres::Client`].
///
/// `C` is the client itself, a `&mut Client`, or anything else that lends one mutably
/// (`Box<Client>`; for a bb8 pooled connection pass `&mut *conn`, or use dlock-pool). A lock
/// that owns its client is `Send + 'static` and can move into a spawned task.
///
/// The contract is the [`AsyncLock`] trait's, the same as the blocking
/// [`PgLock`](crate::PgLock)'s: one round trip per operation, waiting in the server, and
/// two lock objects with the same key on one session both hold (each releases its own).
///
/// # Cancel safety and drop
///
/// Every future of this type can be dropped at any point (under `tokio::time::timeout`,
/// `select!`) without leaving a lock that nobody tracks:
///
/// - A dropped acquire that was waiting in the server is ended with a cancel request (sent
///   from a task spawned on the current tokio runtime, over a new connection without TLS),
///   and a cleanup statement queued behind it unlocks the key once if the server granted it
///   anyway (`pg_locks` tells; a grant can land together with the cancel). Another hold of
///   the same key on the same session is never released by it: such a hold makes an
///   attempt succeed at once, so a lock found held after a dropped attempt is that
///   attempt's. The lock also records the cleanup as owed and repeats it (it runs at most
///   once per attempt) before its next operation, or on drop.
/// - A cancel request ends whatever statement the session runs when it arrives. The cleanup
///   is queued twice so it survives that; a statement you send on the same client at once
///   after dropping an acquire future can be canceled too (57014). For a bounded wait, use
///   [`acquire_timeout`](AsyncLock::acquire_timeout), which waits in the server and needs
///   no cancel.
/// - A dropped release has either not started (the lock is still held) or sent its unlock,
///   which the connection completes on its own.
/// - Drop cannot await, so release on drop is not immediate: dropping a held lock queues its
///   unlock on the connection, which runs it after whatever the client sent before. If the
///   lock owned its client, the client closes after that, which ends the session and frees
///   its locks in any case. Call `release().await` to know the outcome.
///
/// This relies on tokio-postgres handing a statement to its connection task on the first
/// poll of the statement's future; the tests pin that behaviour.
///
/// # Examples
///
/// ```no_run
/// use dlock_postgres::{AsyncLock, AsyncPgLock};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (client, connection) =
///     tokio_postgres::connect("postgres://postgres@localhost/postgres", tokio_postgres::NoTls)
///         .await?;
/// tokio::spawn(connection);
/// let mut lock = AsyncPgLock::new(client, "nightly-report");
/// if lock.acquire_timeout(Duration::from_secs(5)).await? {
///     lock.client().execute("UPDATE reports SET running = true", &[]).await?;
///     lock.release().await?;
/// }
/// # Ok(())
/// # }
/// ```
#[must_use = "a lock does nothing until it is acquired"]
pub struct AsyncPgLock<C: BorrowMut<Client> + Send> {
    /// Always `Some` until `into_inner` takes it.
    conn: Option<C>,
    key: Key,
    policy: KeyPolicy,
    mode: Mode,
    /// What this object holds, as taken.
    held: Option<(PgKey, Mode)>,
    /// The cleanup of an acquire whose future was dropped before its outcome was read.
    owed: Option<Owed>,
    /// Statements prepared once this object is reused.
    statements: Statements,
}

/// The cleanup owed by a dropped acquire attempt: unlock `key` in `mode` once if the session
/// holds it.
#[derive(Debug, Clone, Copy)]
struct Owed {
    key: PgKey,
    mode: Mode,
    attempt: u64,
}

impl Owed {
    fn statement(self) -> String {
        sql::cleanup_dropped_acquire(self.key, self.mode, self.attempt)
    }
}

/// A number unique to each acquire attempt of this process (a session serves one process).
fn next_attempt() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Hands `statement` to the client's connection task without waiting for its reply:
/// tokio-postgres sends a statement on the first poll of its future, and its connection
/// task reads and discards replies nobody waits for.
fn send_without_waiting(client: &Client, statement: &str) {
    let future = pin!(client.simple_query(statement));
    let _ = future.poll(&mut Context::from_waker(Waker::noop()));
}

/// How long a dropped acquire's statement runs before dlock cancels it.
///
/// The queued cleanup unlocks the key once if the session holds it, which is right for an
/// attempt that waited: a session's own holds never conflict, so a wait means the session
/// did not hold the key before. An attempt on a key the session already holds never waits,
/// but a cancel that reached it before its grant would fail it, and the cleanup would then
/// release the earlier hold (measured: one run in eight of the reentrant test failed with an
/// immediate cancel). Such an attempt completes in well under a millisecond, so by the time
/// this delay ends only a real wait is still running; a wait simply goes on this much longer.
const CANCEL_DELAY: Duration = Duration::from_millis(50);

/// Ends the server-side wait of the client's session after [`CANCEL_DELAY`], from a task on
/// the current tokio runtime. Without a runtime the wait goes on until the lock is granted,
/// and the queued cleanup releases it then.
fn cancel_in_background(client: &Client) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let token = client.cancel_token();
        runtime.spawn(async move {
            // A sleep on the blocking pool, not tokio's timer: the user's runtime may run
            // without timers.
            let _ = tokio::task::spawn_blocking(|| std::thread::sleep(CANCEL_DELAY)).await;
            if let Err(error) = token.cancel_query(NoTls).await {
                tracing::debug!(%error, "could not cancel the wait of a dropped acquire");
            }
        });
    }
}

/// Armed while an acquire statement is in flight; if the future is dropped then, it queues
/// the cleanup, cancels the wait, and records the cleanup as owed.
struct PendingAcquire<'a> {
    client: &'a Client,
    owed: &'a mut Option<Owed>,
    cleanup: Owed,
    waits: bool,
    armed: bool,
}

impl Drop for PendingAcquire<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let statement = self.cleanup.statement();
        // Queued twice: a cancel request that arrives after the wait ended can end one
        // statement, and then the other still runs.
        send_without_waiting(self.client, &statement);
        if self.waits {
            send_without_waiting(self.client, &statement);
            cancel_in_background(self.client);
        }
        *self.owed = Some(self.cleanup);
    }
}

impl<C: BorrowMut<Client> + Send> AsyncPgLock<C> {
    /// An exclusive lock on `key` over `conn`, unlocked, under the default key policy.
    pub fn new(conn: C, key: impl Into<Key>) -> Self {
        AsyncPgLock {
            conn: Some(conn),
            key: key.into(),
            policy: KeyPolicy::default(),
            mode: Mode::Exclusive,
            held: None,
            owed: None,
            statements: Statements::default(),
        }
    }

    /// Makes this a shared lock: any number of shared holders, no exclusive one. Affects
    /// the next acquire.
    pub fn shared(mut self) -> Self {
        self.mode = Mode::Shared;
        self
    }

    /// Uses `policy` to turn the key into a PostgreSQL key. Affects the next acquire.
    pub fn policy(mut self, policy: KeyPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The lock's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The PostgreSQL key this lock takes, under its policy.
    ///
    /// # Errors
    ///
    /// What a custom key policy returns; built-in policies accept every key.
    pub fn pg_key(&self) -> Result<PgKey> {
        self.policy.pg_key(&self.key)
    }

    /// The client, for work inside the critical section.
    pub fn client(&mut self) -> &mut Client {
        self.conn
            .as_mut()
            .expect("the connection is only taken by into_inner")
            .borrow_mut()
    }

    /// The connection as it was given (a pooled connection, a box, a borrow), for what its
    /// own type offers.
    pub fn get_ref(&self) -> &C {
        self.conn
            .as_ref()
            .expect("the connection is only taken by into_inner")
    }

    /// The connection as it was given, mutably. Do not release the lock's name through it
    /// with raw SQL: the lock would no longer know what it holds.
    pub fn get_mut(&mut self) -> &mut C {
        self.conn
            .as_mut()
            .expect("the connection is only taken by into_inner")
    }

    /// Every session of this database that holds this lock's key, with its mode.
    ///
    /// # Errors
    ///
    /// What the server or the connection reports.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: it only reads.
    pub async fn holders(&mut self) -> Result<Vec<Holder>> {
        let key = self.pg_key()?;
        holders_async(self.client(), key).await
    }

    /// Releases the lock if held, and gives the connection back with the outcome of the
    /// release (`Ok(())` when nothing was held).
    ///
    /// # Cancel Safety
    ///
    /// Dropping this future drops the lock, with the guarantees of drop.
    pub async fn into_inner(mut self) -> (C, Result<()>) {
        let released = if self.held.is_some() {
            self.release().await
        } else {
            self.pay_owed().await
        };
        let conn = self
            .conn
            .take()
            .expect("the connection is only taken by into_inner");
        (conn, released)
    }

    async fn query(&mut self, statement: &str) -> Result<Vec<SimpleQueryMessage>, Failure> {
        self.client()
            .simple_query(statement)
            .await
            .map_err(sql::classify)
    }

    /// Runs a cleanup a dropped acquire left owed. It is idempotent, so a cleanup that the
    /// drop already queued and that ran does no harm when it runs again.
    async fn pay_owed(&mut self) -> Result<()> {
        if let Some(owed) = self.owed {
            self.query(&owed.statement())
                .await
                .map_err(Failure::into_error)?;
            self.owed = None;
        }
        Ok(())
    }

    async fn take(&mut self, mut wait: Wait) -> Result<bool> {
        self.pay_owed().await?;
        if self.held.is_some() {
            return Err(Error::AlreadyAcquired);
        }
        let (key, mode) = (self.pg_key()?, self.mode);
        let shape = Shape::of(key, mode);
        let kind = Kind::for_wait(wait);
        let client: &Client = self
            .conn
            .as_mut()
            .expect("taken only by into_inner")
            .borrow_mut();
        // Prepare before the lock statement is sent: a future dropped here has locked
        // nothing, and the statements are only kept once prepared.
        if let Some(kind) = kind {
            for (kind, text, types) in self.statements.note_acquire(kind, shape) {
                let statement = client
                    .prepare_typed(&text, types)
                    .await
                    .map_err(sql::error)?;
                self.statements.keep(kind, shape, statement);
            }
        }
        let statements = &self.statements;
        let attempt = next_attempt();
        let mut pending = PendingAcquire {
            client,
            owed: &mut self.owed,
            cleanup: Owed { key, mode, attempt },
            waits: wait != Wait::Never,
            armed: true,
        };
        let outcome = loop {
            let prepared = Kind::for_wait(wait).and_then(|kind| {
                statements
                    .prepared(kind, shape)
                    .map(|statement| (kind, statement))
            });
            let sent = match prepared {
                Some((kind, statement)) => client
                    .query(statement, &Params::of(key).values())
                    .await
                    .map_err(sql::classify)
                    .and_then(|rows| sql::read_prepared(kind, &rows).map_err(Failure::Error)),
                None => {
                    let statement = sql::lock(key, mode, Scope::Session, wait);
                    match client.simple_query(&statement).await {
                        Ok(reply) => sql::read_acquired(wait, &reply).map_err(Failure::Error),
                        Err(error) => Err(sql::classify(error)),
                    }
                }
            };
            match sent {
                Ok(granted) => break Ok(granted),
                // A grant can race the timer: pg_locks tells.
                Err(Failure::LockTimeout) => {
                    let check = sql::held_by_session(key, mode);
                    let held = match client.simple_query(&check).await {
                        Ok(reply) => sql::read_held(&reply),
                        Err(error) => Err(sql::error(error)),
                    };
                    if !matches!(held, Ok(false)) || wait != Wait::Unbounded {
                        break held;
                    }
                    // The session's own lock_timeout cut an unbounded wait short: wait
                    // again, in the server, overriding it for the one statement.
                    wait = Wait::Millis(0);
                }
                Err(Failure::Error(error)) => break Err(error),
            }
        };
        pending.armed = false;
        drop(pending);
        let granted = outcome?;
        if granted {
            self.held = Some((key, mode));
        }
        Ok(granted)
    }
}

impl<C: BorrowMut<Client> + Send> AsyncLock for AsyncPgLock<C> {
    fn key(&self) -> &Key {
        &self.key
    }

    /// Waits, in the server, until this session holds the lock.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: a dropped acquire cancels the server's wait and unlocks the key if it
    /// was granted anyway (see the type's docs).
    async fn acquire(&mut self) -> Result<()> {
        self.take(Wait::Unbounded).await.map(drop)
    }

    /// Takes the lock if it is free, without waiting.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: if the future is dropped after the statement was sent, a queued
    /// cleanup unlocks the key if it was granted.
    async fn try_acquire(&mut self) -> Result<bool> {
        self.take(Wait::Never).await
    }

    /// Waits at most `timeout` in the server, through `lock_timeout` set for this one
    /// statement (the session's own setting is unchanged afterwards). Whole milliseconds,
    /// rounded up; a zero timeout is a try.
    ///
    /// If the server has not answered [`REPLY_GRACE`](dlock_core::REPLY_GRACE) after the
    /// timeout (a frozen server or a partition, where its timer cannot fire), this returns
    /// [`Error::no_reply`] and leaves the attempt as a dropped acquire does: its cleanup is
    /// queued, and runs when the server answers again. Needs a runtime with timers enabled.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe, as [`acquire`](AsyncLock::acquire).
    async fn acquire_timeout(&mut self, timeout: Duration) -> Result<bool> {
        let limit = timeout.saturating_add(dlock_core::REPLY_GRACE);
        match tokio::time::timeout(limit, self.take(Wait::for_timeout(timeout))).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::no_reply(limit)),
        }
    }

    /// Releases the lock.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: once polled, the lock counts as released and its unlock is on its way
    /// to the server, which runs it whether or not the future completes.
    async fn release(&mut self) -> Result<()> {
        self.pay_owed().await?;
        let (key, mode) = self.held.take().ok_or(Error::NotAcquired)?;
        // Never prepares: the unlock must be on its way at the first poll.
        let statement = self.statements.prepared(Kind::Unlock, Shape::of(key, mode));
        let client: &Client = self
            .conn
            .as_mut()
            .expect("taken only by into_inner")
            .borrow_mut();
        let released = match statement {
            Some(statement) => {
                let rows = client
                    .query(statement, &Params::of(key).values())
                    .await
                    .map_err(sql::error)?;
                sql::read_prepared(Kind::Unlock, &rows)?
            }
            None => {
                let reply = client
                    .simple_query(&sql::unlock(key, mode))
                    .await
                    .map_err(sql::error)?;
                sql::read_simple(Kind::Unlock, &reply)?
            }
        };
        if released {
            Ok(())
        } else {
            Err(Error::NotHeld)
        }
    }

    fn is_acquired(&self) -> bool {
        self.held.is_some()
    }

    /// Asks `pg_locks` whether this session holds the lock in this lock's mode. After the
    /// connection was lost this is `Ok(false)`.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: it only reads (an owed cleanup it started still runs).
    async fn verify(&mut self) -> Result<bool> {
        if self.client().is_closed() {
            return Ok(false);
        }
        self.pay_owed().await?;
        let (key, mode) = match self.held {
            Some(held) => held,
            None => (self.pg_key()?, self.mode),
        };
        match self.query(&sql::held_by_session(key, mode)).await {
            Ok(reply) => sql::read_held(&reply),
            Err(Failure::Error(error)) if error.is_connection_error() => Ok(false),
            Err(failure) => Err(failure.into_error()),
        }
    }
}

impl<C: BorrowMut<Client> + Send> Drop for AsyncPgLock<C> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let client: &Client = conn.borrow_mut();
        if client.is_closed() {
            return;
        }
        if let Some(owed) = self.owed.take() {
            send_without_waiting(client, &owed.statement());
        }
        if let Some((key, mode)) = self.held.take() {
            tracing::debug!(key = %self.key, "dropping a held PostgreSQL lock: unlock queued");
            send_without_waiting(client, &sql::unlock(key, mode));
        }
    }
}

impl<C: BorrowMut<Client> + Send> fmt::Debug for AsyncPgLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncPgLock")
            .field("key", &self.key)
            .field("policy", &self.policy)
            .field("mode", &self.mode)
            .field("held", &self.held)
            .field("cleanup_owed", &self.owed.is_some())
            .finish_non_exhaustive()
    }
}

/// Every session of the client's database that holds `key`, with its mode, from
/// `pg_locks`.
///
/// # Errors
///
/// What the server or the connection reports.
///
/// # Cancel Safety
///
/// Cancel safe: it only reads.
pub async fn holders_async(client: &Client, key: PgKey) -> Result<Vec<Holder>> {
    let reply = client
        .simple_query(&sql::holders(key))
        .await
        .map_err(sql::error)?;
    sql::read_holders(&reply)
}

/// A PostgreSQL transaction-level advisory lock taken through a
/// [`tokio_postgres::Transaction`], held until it commits or rolls back. There is no
/// release: the transaction's end is the release.
///
/// [`acquire_timeout`](AsyncPgXactLock::acquire_timeout) waits inside a savepoint, so a
/// timeout leaves the transaction usable and its `lock_timeout` as it was.
///
/// # Cancel Safety
///
/// A lock taken by a dropped acquire future belongs to the transaction, so it ends with
/// the transaction like every lock this type takes; dropping the `Transaction` rolls it
/// back.
///
/// # Examples
///
/// ```no_run
/// use dlock_postgres::AsyncPgXactLock;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (mut client, connection) =
///     tokio_postgres::connect("postgres://postgres@localhost/postgres", tokio_postgres::NoTls)
///         .await?;
/// tokio::spawn(connection);
/// let tx = client.transaction().await?;
/// if AsyncPgXactLock::new("invoice/42").try_acquire(&tx).await? {
///     tx.execute("UPDATE invoices SET paid = true WHERE id = 42", &[]).await?;
/// }
/// tx.commit().await?; // Releases the lock.
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a lock does nothing until it is acquired"]
pub struct AsyncPgXactLock {
    key: Key,
    policy: KeyPolicy,
    mode: Mode,
}

impl AsyncPgXactLock {
    /// An exclusive transaction lock on `key`, under the default key policy.
    pub fn new(key: impl Into<Key>) -> Self {
        AsyncPgXactLock {
            key: key.into(),
            policy: KeyPolicy::default(),
            mode: Mode::Exclusive,
        }
    }

    /// Makes this a shared lock.
    pub fn shared(mut self) -> Self {
        self.mode = Mode::Shared;
        self
    }

    /// Uses `policy` to turn the key into a PostgreSQL key.
    pub fn policy(mut self, policy: KeyPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The key this lock was created with.
    pub fn key(&self) -> &Key {
        &self.key
    }

    fn statement(&self, wait: Wait) -> Result<String> {
        Ok(sql::lock(
            self.policy.pg_key(&self.key)?,
            self.mode,
            Scope::Transaction,
            wait,
        ))
    }

    /// Waits, in the server, until the transaction holds the lock.
    ///
    /// # Errors
    ///
    /// What the server reports (a deadlock aborts the transaction).
    ///
    /// # Cancel Safety
    ///
    /// See the type's docs: a late grant ends with the transaction.
    pub async fn acquire(&self, tx: &Transaction<'_>) -> Result<()> {
        tx.simple_query(&self.statement(Wait::Millis(0))?)
            .await
            .map_err(sql::error)
            .map(drop)
    }

    /// Takes the lock if it is free: `Ok(true)` held until the transaction ends.
    ///
    /// # Errors
    ///
    /// What the server reports.
    ///
    /// # Cancel Safety
    ///
    /// See the type's docs.
    pub async fn try_acquire(&self, tx: &Transaction<'_>) -> Result<bool> {
        let reply = tx
            .simple_query(&self.statement(Wait::Never)?)
            .await
            .map_err(sql::error)?;
        sql::read_acquired(Wait::Never, &reply)
    }

    /// Waits at most `timeout` for the lock, inside a savepoint: on a timeout the savepoint
    /// is rolled back, so the transaction stays usable and no lock is left behind.
    ///
    /// # Errors
    ///
    /// What the server reports.
    ///
    /// # Cancel Safety
    ///
    /// Dropping the future drops the savepoint, which tokio-postgres rolls back.
    pub async fn acquire_timeout(
        &self,
        tx: &mut Transaction<'_>,
        timeout: Duration,
    ) -> Result<bool> {
        let wait = Wait::for_timeout(timeout);
        let statement = self.statement(wait)?;
        let savepoint = tx.savepoint("dlock_acquire").await.map_err(sql::error)?;
        match savepoint
            .simple_query(&statement)
            .await
            .map_err(sql::classify)
        {
            Ok(reply) => {
                let granted = sql::read_acquired(wait, &reply)?;
                savepoint.commit().await.map_err(sql::error)?;
                Ok(granted)
            }
            // Rolling back the savepoint also frees a lock granted as the timer fired.
            Err(Failure::LockTimeout) => savepoint
                .rollback()
                .await
                .map_err(sql::error)
                .map(|()| false),
            Err(Failure::Error(error)) => {
                let _ = savepoint.rollback().await;
                Err(error)
            }
        }
    }

    /// Asks `pg_locks` whether the transaction's session holds the lock in this mode.
    ///
    /// # Errors
    ///
    /// What the server reports.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: it only reads.
    pub async fn verify(&self, tx: &Transaction<'_>) -> Result<bool> {
        let statement = sql::held_by_session(self.policy.pg_key(&self.key)?, self.mode);
        let reply = tx.simple_query(&statement).await.map_err(sql::error)?;
        sql::read_held(&reply)
    }
}
