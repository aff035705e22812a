//! Locks over the blocking `postgres` client.

use std::borrow::BorrowMut;
use std::fmt;
use std::time::Duration;

use dlock_core::{Error, Key, KeyPolicy, Lock, PgKey, Result};
use postgres::{Client, SimpleQueryMessage, Transaction};

use crate::sql::{self, Failure, Holder, Kind, Mode, Params, Scope, Shape, Statements, Wait};

/// A PostgreSQL session-level advisory lock over the blocking [`postgres::Client`].
///
/// `C` is the client itself, a `&mut Client`, or anything else that lends one mutably
/// (`Box<Client>`; for an r2d2 pooled connection pass `&mut *conn`, or use dlock-pool,
/// which manages the connection for you). The lock holds on to its connection from
/// creation to drop: a session lock lives in exactly one session.
///
/// Every operation is one round trip; waiting happens in the server. The contract is the
/// [`Lock`] trait's; in short: created unlocked, `acquire` waits, `try_acquire` never
/// waits, `acquire_timeout` waits at most its timeout, `release` says whether the server
/// agreed, and dropping a held lock releases it (a failure to do so is logged with
/// `tracing`). A panic inside the critical section drops the lock and so releases it.
///
/// Two lock objects with the same key on the same session both acquire (PostgreSQL counts
/// the holds), and each must release its own.
///
/// The blocking client runs its own tokio runtime: do not use it inside async code (the
/// driver panics); use [`AsyncPgLock`](crate::AsyncPgLock) there, or `spawn_blocking`.
///
/// # Examples
///
/// ```no_run
/// use dlock_postgres::{Lock, PgLock};
/// use postgres::{Client, NoTls};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = Client::connect("postgres://postgres@localhost/postgres", NoTls)?;
/// let mut lock = PgLock::new(client, "nightly-report");
/// if lock.try_acquire()? {
///     // Only one process anywhere gets here at a time.
///     lock.client().execute("UPDATE reports SET running = true", &[])?;
///     lock.release()?;
/// }
/// # Ok(())
/// # }
/// ```
#[must_use = "a lock does nothing until it is acquired"]
pub struct PgLock<C: BorrowMut<Client>> {
    /// Always `Some` until `into_inner` takes it.
    conn: Option<C>,
    key: Key,
    policy: KeyPolicy,
    mode: Mode,
    /// What this object holds, as taken: the key and mode may be changed by the builder
    /// methods afterwards, but release must undo exactly what acquire did.
    held: Option<(PgKey, Mode)>,
    /// Statements prepared once this object is reused.
    statements: Statements,
}

impl<C: BorrowMut<Client>> PgLock<C> {
    /// An exclusive lock on `key` over `conn`, unlocked, under the default key policy.
    pub fn new(conn: C, key: impl Into<Key>) -> Self {
        PgLock {
            conn: Some(conn),
            key: key.into(),
            policy: KeyPolicy::default(),
            mode: Mode::Exclusive,
            held: None,
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

    /// Every session of this database that holds this lock's key, with its mode, from
    /// `pg_locks`: for operators asking who holds a lock.
    ///
    /// # Errors
    ///
    /// What the server or the connection reports.
    pub fn holders(&mut self) -> Result<Vec<Holder>> {
        let key = self.pg_key()?;
        holders(self.client(), key)
    }

    /// Releases the lock if held, and gives the connection back with the outcome of the
    /// release (`Ok(())` when nothing was held).
    pub fn into_inner(mut self) -> (C, Result<()>) {
        let released = if self.held.is_some() {
            self.release()
        } else {
            Ok(())
        };
        let conn = self
            .conn
            .take()
            .expect("the connection is only taken by into_inner");
        (conn, released)
    }

    fn query(&mut self, statement: &str) -> Result<Vec<SimpleQueryMessage>, Failure> {
        self.client().simple_query(statement).map_err(sql::classify)
    }

    /// Sends a lock or unlock statement of `kind` and reads its answer: prepared when this
    /// object keeps it prepared (see `take`), a simple query otherwise.
    fn send(&mut self, kind: Kind, key: PgKey, mode: Mode) -> Result<bool, Failure> {
        let shape = Shape::of(key, mode);
        let client = self
            .conn
            .as_mut()
            .expect("the connection is only taken by into_inner")
            .borrow_mut();
        match self.statements.prepared(kind, shape) {
            Some(statement) => {
                let rows = client
                    .query(statement, &Params::of(key).values())
                    .map_err(sql::classify)?;
                sql::read_prepared(kind, &rows).map_err(Failure::Error)
            }
            None => {
                let reply = client
                    .simple_query(&sql::simple(kind, key, mode))
                    .map_err(sql::classify)?;
                sql::read_simple(kind, &reply).map_err(Failure::Error)
            }
        }
    }

    fn take(&mut self, mut wait: Wait) -> Result<bool> {
        if self.held.is_some() {
            return Err(Error::AlreadyAcquired);
        }
        let (key, mode) = (self.pg_key()?, self.mode);
        if let Some(kind) = Kind::for_wait(wait) {
            let shape = Shape::of(key, mode);
            for (kind, text, types) in self.statements.note_acquire(kind, shape) {
                let statement = self
                    .client()
                    .prepare_typed(&text, types)
                    .map_err(sql::error)?;
                self.statements.keep(kind, shape, statement);
            }
        }
        let granted = loop {
            let sent = match Kind::for_wait(wait) {
                Some(kind) => self.send(kind, key, mode),
                None => {
                    let statement = sql::lock(key, mode, Scope::Session, wait);
                    self.query(&statement)
                        .and_then(|reply| sql::read_acquired(wait, &reply).map_err(Failure::Error))
                }
            };
            match sent {
                Ok(granted) => break granted,
                // The server can grant the lock at the instant the timer fires and still
                // report the timeout: ask pg_locks so a granted lock is never left untracked.
                Err(Failure::LockTimeout) => {
                    let check = sql::held_by_session(key, mode);
                    let reply = self.query(&check).map_err(Failure::into_error)?;
                    if sql::read_held(&reply)? {
                        break true;
                    }
                    if wait != Wait::Unbounded {
                        break false;
                    }
                    // The session's own lock_timeout cut an unbounded wait short: wait again,
                    // in the server, overriding it for the one statement.
                    wait = Wait::Millis(0);
                }
                Err(Failure::Error(error)) => return Err(error),
            }
        };
        if granted {
            self.held = Some((key, mode));
        }
        Ok(granted)
    }
}

impl<C: BorrowMut<Client>> Lock for PgLock<C> {
    fn key(&self) -> &Key {
        &self.key
    }

    fn acquire(&mut self) -> Result<()> {
        self.take(Wait::Unbounded).map(drop)
    }

    fn try_acquire(&mut self) -> Result<bool> {
        self.take(Wait::Never)
    }

    /// Waits at most `timeout` in the server, through `lock_timeout` set for this one
    /// statement (the session's own setting is unchanged afterwards). Whole milliseconds,
    /// rounded up; a zero timeout is a try.
    fn acquire_timeout(&mut self, timeout: Duration) -> Result<bool> {
        self.take(Wait::for_timeout(timeout))
    }

    fn release(&mut self) -> Result<()> {
        let (key, mode) = self.held.take().ok_or(Error::NotAcquired)?;
        match self
            .send(Kind::Unlock, key, mode)
            .map_err(Failure::into_error)?
        {
            true => Ok(()),
            false => Err(Error::NotHeld),
        }
    }

    fn is_acquired(&self) -> bool {
        self.held.is_some()
    }

    /// Asks `pg_locks` whether this session holds the lock in this lock's mode. After the
    /// connection was lost this is `Ok(false)`: the server freed the session's locks.
    fn verify(&mut self) -> Result<bool> {
        let (key, mode) = match self.held {
            Some(held) => held,
            None => (self.pg_key()?, self.mode),
        };
        if self.client().is_closed() {
            return Ok(false);
        }
        match self.query(&sql::held_by_session(key, mode)) {
            Ok(reply) => sql::read_held(&reply),
            Err(Failure::Error(error)) if error.is_connection_error() => Ok(false),
            Err(failure) => Err(failure.into_error()),
        }
    }
}

impl<C: BorrowMut<Client>> Drop for PgLock<C> {
    fn drop(&mut self) {
        if self.held.is_none() || self.conn.is_none() {
            return;
        }
        if let Err(error) = self.release() {
            // Drop cannot return the error. A lock that could not be released is still
            // held by the session until it ends; the pool wrapper closes such sessions.
            tracing::warn!(key = %self.key, %error, "dropping a PostgreSQL lock: release failed");
        }
    }
}

impl<C: BorrowMut<Client>> fmt::Debug for PgLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLock")
            .field("key", &self.key)
            .field("policy", &self.policy)
            .field("mode", &self.mode)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

/// Every session of the client's database that holds `key`, with its mode, from
/// `pg_locks`.
///
/// # Errors
///
/// What the server or the connection reports.
pub fn holders(client: &mut Client, key: PgKey) -> Result<Vec<Holder>> {
    let reply = client
        .simple_query(&sql::holders(key))
        .map_err(sql::error)?;
    sql::read_holders(&reply)
}

/// A PostgreSQL transaction-level advisory lock (`pg_advisory_xact_lock`), taken through
/// the driver's [`Transaction`] and held until it commits or rolls back. There is no
/// release: the transaction's end is the release.
///
/// [`acquire_timeout`](PgXactLock::acquire_timeout) waits inside a savepoint, so a timeout
/// leaves the transaction usable, and its `lock_timeout` as it was. A transaction opened
/// with raw `BEGIN` on a bare client is invisible to dlock: take transaction locks through
/// the driver's transaction type. A transaction lock without a transaction does not compile:
///
/// ```compile_fail,E0308
/// # use dlock_postgres::PgXactLock;
/// # fn take(client: &mut postgres::Client) -> dlock_postgres::Result<()> {
/// PgXactLock::new("invoice/42").acquire(client) // a Client is not a Transaction
/// # }
/// ```
///
/// # Examples
///
/// ```no_run
/// use dlock_postgres::PgXactLock;
/// use postgres::{Client, NoTls};
/// use std::time::Duration;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = Client::connect("postgres://postgres@localhost/postgres", NoTls)?;
/// let mut tx = client.transaction()?;
/// if PgXactLock::new("invoice/42").acquire_timeout(&mut tx, Duration::from_secs(2))? {
///     tx.execute("UPDATE invoices SET paid = true WHERE id = 42", &[])?;
/// }
/// tx.commit()?; // Releases the lock.
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a lock does nothing until it is acquired"]
pub struct PgXactLock {
    key: Key,
    policy: KeyPolicy,
    mode: Mode,
}

impl PgXactLock {
    /// An exclusive transaction lock on `key`, under the default key policy.
    pub fn new(key: impl Into<Key>) -> Self {
        PgXactLock {
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
    /// What the server reports, as dlock's [`Error`] (a deadlock aborts the transaction).
    pub fn acquire(&self, tx: &mut Transaction<'_>) -> Result<()> {
        let statement = self.statement(Wait::Millis(0))?;
        tx.simple_query(&statement).map_err(sql::error).map(drop)
    }

    /// Takes the lock if it is free: `Ok(true)` held until the transaction ends,
    /// `Ok(false)` busy.
    ///
    /// # Errors
    ///
    /// What the server reports.
    pub fn try_acquire(&self, tx: &mut Transaction<'_>) -> Result<bool> {
        let statement = self.statement(Wait::Never)?;
        let reply = tx.simple_query(&statement).map_err(sql::error)?;
        sql::read_acquired(Wait::Never, &reply)
    }

    /// Waits at most `timeout` for the lock, inside a savepoint: on a timeout the savepoint
    /// is rolled back, so the transaction stays usable and no lock is left behind.
    ///
    /// # Errors
    ///
    /// What the server reports.
    pub fn acquire_timeout(&self, tx: &mut Transaction<'_>, timeout: Duration) -> Result<bool> {
        let wait = Wait::for_timeout(timeout);
        let statement = self.statement(wait)?;
        let mut savepoint = tx.savepoint("dlock_acquire").map_err(sql::error)?;
        match savepoint.simple_query(&statement).map_err(sql::classify) {
            Ok(reply) => {
                let granted = sql::read_acquired(wait, &reply)?;
                savepoint.commit().map_err(sql::error)?;
                Ok(granted)
            }
            // Rolling back the savepoint also frees a lock granted as the timer fired.
            Err(Failure::LockTimeout) => savepoint.rollback().map_err(sql::error).map(|()| false),
            Err(Failure::Error(error)) => {
                // The savepoint's rollback keeps the transaction usable after a cancel.
                let _ = savepoint.rollback();
                Err(error)
            }
        }
    }

    /// Asks `pg_locks` whether this transaction's session holds the lock in this mode.
    ///
    /// # Errors
    ///
    /// What the server reports.
    pub fn verify(&self, tx: &mut Transaction<'_>) -> Result<bool> {
        let statement = sql::held_by_session(self.policy.pg_key(&self.key)?, self.mode);
        let reply = tx.simple_query(&statement).map_err(sql::error)?;
        sql::read_held(&reply)
    }
}
