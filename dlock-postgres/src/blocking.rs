//! The blocking flavour (feature `blocking`): locks, sessions and helpers over the `postgres`
//! client, named as the tokio flavour's are.

use std::fmt;
use std::time::Duration;

use dlock_core::trace::{Traced, TracedOperation};
use dlock_core::{Key, KeyPolicy, Lock, PgKey, Result, SessionId, Wait};
use postgres::{Client, Transaction};

use crate::deployment::{Check, CheckStep, On, Route};
use crate::machine::{
    self, Acquire, Failed, LockState, Operation, PayOwed, Release, Reply, Request, SessionFacts,
    Step, Verify, XactOptions, XactOutcome,
};
use crate::sql::{self, Hold, Holder, Mode};

/// A connection a [`PgLock`] can run on: the driver's [`Client`], a box of it, a [`PgSession`],
/// or a `&mut` to any of them. For an r2d2 pooled connection pass `&mut *conn`, or use
/// dlock-pool, which manages the connection for you.
pub trait PgConnection {
    /// The client the lock sends its statements through.
    fn client(&mut self) -> &mut Client;

    /// What dlock knows of the session this value is or borrows (a [`PgSession`] answers).
    #[doc(hidden)]
    fn session_facts(&mut self) -> Option<&mut SessionFacts> {
        None
    }
}

impl PgConnection for Client {
    fn client(&mut self) -> &mut Client {
        self
    }
}

impl PgConnection for Box<Client> {
    fn client(&mut self) -> &mut Client {
        self
    }
}

impl<T: PgConnection + ?Sized> PgConnection for &mut T {
    fn client(&mut self) -> &mut Client {
        (**self).client()
    }

    fn session_facts(&mut self) -> Option<&mut SessionFacts> {
        (**self).session_facts()
    }
}

/// A PostgreSQL server session over a blocking [`Client`] (owned or borrowed), as dlock knows
/// it: it holds locks on any number of keys, released in any order, and keeps what outlives
/// any one lock object on it.
///
/// - **Many keys.** [`acquire`](PgSession::acquire), [`try_acquire`](PgSession::try_acquire)
///   and [`acquire_timeout`](PgSession::acquire_timeout) take a key's lock for the session,
///   [`release`](PgSession::release) gives back any of them, in any order. Taking a key the
///   session holds already takes a second hold (PostgreSQL counts them), and each release
///   gives back one. For a shared or fenced lock, use a one-key lock on the session
///   ([`lock`](PgSession::lock)).
/// - **Holds owed by dropped locks.** A lock dropped holding whose release the server refused
///   (its session was inside a transaction you had aborted) leaves its hold owed to the
///   session, which releases it before its next statement through dlock, after your
///   `ROLLBACK`: exactly that hold, never another of the same key. On a bare client nothing
///   outlives the lock object, and such a hold stays until the session ends.
/// - **Prepared statements and the deployment check's verdict**, shared by the locks made on
///   it one after another: a lock made per use on a session sends what a reused lock sends.
///
/// Dropping the session releases what it holds and pays what it owes (failures are logged
/// with `tracing`); [`into_inner`](PgSession::into_inner) does the same and says how it went.
///
/// # Examples
///
/// ```no_run
/// use dlock_postgres::{Lock, PgSession};
/// use postgres::{Client, NoTls};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = Client::connect("postgres://postgres@localhost/postgres", NoTls)?;
/// let mut session = PgSession::new(&mut client);
/// session.acquire("accounts/1")?;
/// session.acquire("accounts/2")?;
/// session.release("accounts/1")?; // In any order.
/// session.client().execute("UPDATE accounts SET frozen = true WHERE id = 2", &[])?;
/// session.release("accounts/2")?;
/// // One-key locks on the session share what it knows.
/// let mut lock = session.lock("nightly-report").shared();
/// if lock.try_acquire()? {
///     lock.release()?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct PgSession<C: PgConnection> {
    /// Always `Some` until `into_inner` takes it.
    conn: Option<C>,
    facts: SessionFacts,
    policy: KeyPolicy,
    /// What the session holds through its own methods, oldest first.
    holds: Vec<LockState>,
}

impl<C: PgConnection> PgSession<C> {
    /// The session of `conn`, holding nothing.
    pub fn new(conn: C) -> Self {
        PgSession {
            conn: Some(conn),
            facts: SessionFacts::default(),
            policy: KeyPolicy::default(),
            holds: Vec::new(),
        }
    }

    /// A one-key lock on this session, unlocked, under the default key policy; it shares
    /// what the session knows and owes.
    pub fn lock(&mut self, key: impl Into<Key>) -> PgLock<&mut Self> {
        PgLock::new(self, key)
    }

    /// The client, for work of your own. Do not release locks through it with raw SQL: the
    /// session would no longer know what it holds.
    pub fn client(&mut self) -> &mut Client {
        self.conn
            .as_mut()
            .expect("the connection is only taken by into_inner")
            .client()
    }

    dlock_core::__session_methods!(blocking, PgLock<&mut Self>);

    /// A lock on this session over a state the session holds.
    fn with_state(&mut self, state: LockState) -> PgLock<&mut Self> {
        PgLock {
            conn: Some(self),
            state,
        }
    }

    /// Releases everything the session's own methods hold and pays what it owes, then gives
    /// the connection back with the first failure, if any.
    pub fn into_inner(mut self) -> (C, Result<()>) {
        let settled = self.settle();
        let conn = self
            .conn
            .take()
            .expect("the connection is only taken by into_inner");
        (conn, settled)
    }

    /// Releases the holds, newest first, then pays what is owed.
    fn settle(&mut self) -> Result<()> {
        let mut outcome = Ok(());
        while let Some(state) = self.holds.pop() {
            let mut lock = self.with_state(state);
            let released = lock.release();
            // A refused release leaves the hold to the session, owed.
            drop(lock);
            outcome = outcome.and(released);
        }
        if self.facts.owes() {
            let mut lock = PgLock::new(&mut *self, Key::from(0_i64));
            outcome = outcome.and(lock.settle());
        }
        outcome
    }
}

impl<C: PgConnection> PgConnection for PgSession<C> {
    fn client(&mut self) -> &mut Client {
        PgSession::client(self)
    }

    fn session_facts(&mut self) -> Option<&mut SessionFacts> {
        Some(&mut self.facts)
    }
}

impl<C: PgConnection> Drop for PgSession<C> {
    fn drop(&mut self) {
        if self.conn.is_none() || (self.holds.is_empty() && !self.facts.owes()) {
            return;
        }
        if let Err(error) = self.settle() {
            tracing::warn!(%error, "dropping a PostgreSQL session: a release failed; its locks stay held until the session ends");
        }
    }
}

impl<C: PgConnection> fmt::Debug for PgSession<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSession")
            .field("held", &self.held().collect::<Vec<_>>())
            .field("facts", &self.facts)
            .finish_non_exhaustive()
    }
}

/// A PostgreSQL session-level advisory lock over the blocking [`postgres::Client`].
///
/// `C` is the client itself, a `&mut Client`, or anything else that implements
/// [`PgConnection`] (a [`PgSession`], whose locks share what it knows and owes). The lock
/// holds on to its connection from creation to drop: a session lock lives in exactly one
/// session.
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
/// The blocking client runs its own tokio runtime, which tokio forbids inside another
/// runtime's tasks: from async code use `AsyncPgLock` (feature `tokio`), or this lock inside
/// `tokio::task::spawn_blocking`. In the body of `#[tokio::main]` or `#[tokio::test]` (a
/// runtime's `block_on`) every operation returns
/// [`Error::Unsupported`](dlock_core::Error::Unsupported) saying so; inside a spawned task the
/// driver still panics, because tokio offers no way to tell such a task from
/// `spawn_blocking`.
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
pub struct PgLock<C: PgConnection> {
    /// Always `Some` until `into_inner` takes it.
    conn: Option<C>,
    state: LockState,
}

impl<C: PgConnection> PgLock<C> {
    /// An exclusive lock on `key` over `conn`, unlocked, under the default key policy.
    pub fn new(conn: C, key: impl Into<Key>) -> Self {
        PgLock {
            conn: Some(conn),
            state: LockState::new(key.into()),
        }
    }

    crate::methods::lock_methods!();

    /// The client, for work inside the critical section.
    pub fn client(&mut self) -> &mut Client {
        self.get_mut().client()
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

    /// Releases the lock if held (or runs the cleanup an interrupted acquire left owed), and
    /// gives the connection back with the outcome (`Ok(())` when there was nothing to do).
    pub fn into_inner(mut self) -> (C, Result<()>) {
        let released = self.settle();
        let conn = self
            .conn
            .take()
            .expect("the connection is only taken by into_inner");
        (conn, released)
    }

    /// Releases what is held and pays what is owed. On a session, a hold whose release the
    /// server refused is left owed to it.
    fn settle(&mut self) -> Result<()> {
        let outcome = if self.state.held().is_some() {
            self.release()
        } else {
            self.operate(|_| Ok(PayOwed::start()))
        };
        if let Some(facts) = self.conn.as_mut().and_then(PgConnection::session_facts) {
            self.state.hand_back(facts, true);
        }
        outcome
    }

    /// Runs one operation of the machine, started from the lock's state once it has taken
    /// over what the session knows and owes, and sends what it asks until it is done.
    fn operate<O: Operation>(
        &mut self,
        start: impl FnOnce(&LockState) -> Result<O>,
    ) -> Result<O::Output> {
        refuse_inside_runtime()?;
        let conn = self
            .conn
            .as_mut()
            .expect("the connection is only taken by into_inner");
        if let Some(facts) = conn.session_facts() {
            self.state.adopt(facts);
        }
        let outcome = start(&self.state).and_then(|mut op| {
            let client = conn.client();
            let mut reply = None;
            loop {
                match op.step(&mut self.state, reply.take()) {
                    Step::Done(outcome) => return outcome,
                    Step::Send(request) => reply = Some(send(client, &mut self.state, request)),
                }
            }
        });
        if let Some(facts) = conn.session_facts() {
            self.state.hand_back(facts, false);
        }
        outcome
    }

    fn take(&mut self, wait: Wait) -> Result<bool> {
        self.traced(TracedOperation::Acquire(wait))
            .around_blocking(|| self.operate(|state| Acquire::start(state, wait)))
    }
}

/// Refuses blocking I/O on a thread inside a tokio runtime's `block_on` (the body of
/// `#[tokio::main]` and `#[tokio::test]`), where the `postgres` client would panic: it blocks
/// on a runtime of its own, which tokio forbids there. Inside `spawn_blocking` the client
/// works; inside a spawned task it still panics, because nothing tokio offers tells such a
/// task from `spawn_blocking` (both run under a task id), hence the docs' warning.
#[doc(hidden)]
pub fn refuse_inside_runtime() -> Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() && tokio::task::try_id().is_none() {
        return Err(dlock_core::Error::Unsupported {
            operation: "blocking I/O on a thread that runs a tokio runtime (inside block_on, \
                        #[tokio::main] or #[tokio::test])",
            backend: "the blocking postgres client",
            hint: "call it inside tokio::task::spawn_blocking, or use AsyncPgLock (feature \
                   tokio) from async code",
        });
    }
    Ok(())
}

/// Sends one request of the machine and reads its reply.
fn send(client: &mut Client, state: &mut LockState, request: Request) -> Reply {
    match request {
        Request::Simple(text) => client
            .simple_query(&text)
            .map(|reply| sql::last_row(&reply))
            .map_err(Failed::from),
        Request::Prepare(kind, shape) => {
            let (text, types) = state.statement_sql(kind, shape);
            let statement = client.prepare_typed(&text, types)?;
            state.keep(kind, shape, statement);
            Ok(None)
        }
        Request::Prepared(kind, hold) => {
            let statement = state
                .prepared(kind, hold)
                .expect("the machine asks only for kept statements")
                .clone();
            client
                .query(&statement, &sql::params(&hold.key))
                .map(|rows| sql::prepared_row(&rows))
                .map_err(Failed::from)
        }
    }
}

dlock_core::__connection_lock!(PgLock, PgConnection, KeyPolicy::pg_key, blocking);

impl<C: PgConnection> Lock for PgLock<C> {
    fn key(&self) -> &Key {
        &self.state.key
    }

    fn acquire(&mut self) -> Result<()> {
        self.take(Wait::Forever).map(drop)
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
        self.traced(TracedOperation::Release)
            .around_blocking(|| self.operate(Release::start))
    }

    fn is_acquired(&self) -> bool {
        self.state.held().is_some()
    }

    /// Asks `pg_locks` whether this session holds the lock in this lock's mode. After the
    /// connection was lost this is `Ok(false)`: the server freed the session's locks.
    fn verify(&mut self) -> Result<bool> {
        self.traced(TracedOperation::Verify).around_blocking(|| {
            if self.client().is_closed() {
                Verify::start(&self.state).map(|_| false)
            } else {
                self.operate(Verify::start)
            }
        })
    }
}

impl<C: PgConnection> Drop for PgLock<C> {
    fn drop(&mut self) {
        if self.conn.is_none() || (self.state.held().is_none() && self.state.owes().is_none()) {
            return;
        }
        if let Err(error) = self.settle() {
            // Drop cannot return the error. A lock that could not be released is still
            // held by the session until it ends; the pool wrapper closes such sessions.
            tracing::warn!(key = %self.state.key, %error, "dropping a PostgreSQL lock: release failed");
        }
    }
}

impl<C: PgConnection> fmt::Debug for PgLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLock")
            .field("key", &self.state.key)
            .field("policy", &self.state.policy)
            .field("mode", &self.state.mode)
            .field("held", &self.state.held())
            .field("cleanup_owed", &self.state.owes().is_some())
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
    refuse_inside_runtime()?;
    let reply = client
        .simple_query(&sql::holders(key))
        .map_err(sql::error)?;
    sql::read_holders(&reply)
}

/// The session of `client` as a lock watcher names it, for [`still_held`]: its pid and when
/// it started (`pg_stat_activity`). One round trip.
///
/// # Errors
///
/// What the server or the connection reports.
pub fn session(client: &mut Client) -> Result<SessionId> {
    refuse_inside_runtime()?;
    let reply = client.simple_query(&sql::session()).map_err(sql::error)?;
    sql::read_session(sql::rows(&reply))
}

/// Whether each of `locks` (a session from [`session`], and a key it took) is still held by
/// that session, asked through `client` from another session in one statement (`pg_locks`),
/// without touching the holders' connections: what a pool's watcher sends. A session that
/// lives on without the lock (`DISCARD ALL`, `pg_advisory_unlock_all()`, a proxy's reset)
/// no longer holds it; a later session that reuses a pid, even after a restart, does not
/// pass for an earlier one.
///
/// # Errors
///
/// What the server or the connection reports.
pub fn still_held(client: &mut Client, locks: &[(SessionId, PgKey)]) -> Result<Vec<bool>> {
    refuse_inside_runtime()?;
    let statement = sql::still_held(locks.iter().map(|(session, _)| session.id));
    let reply = client.simple_query(&statement).map_err(sql::error)?;
    Ok(sql::read_still_held(sql::rows(&reply), locks))
}

/// Checks that a session lock over `client` excludes: that the server is no hot standby, and
/// that no pooler in transaction or statement mode stands between (the error names what was
/// found and what to do).
///
/// With a `second` connection to the same place (same address, database and user), a
/// transaction pooler is found at once: it lets the two connections share a server session,
/// which neither a direct connection nor session pooling ever does. Alone, `client` shows a
/// pooler only when its statements happen to move between server sessions. Locks run the
/// one-connection check before their first acquire; this is for connections you open
/// yourself, before you build locks on them with `skip_deployment_check()`.
///
/// # Errors
///
/// [`Error::CannotExclude`](dlock_core::Error::CannotExclude) when a lock would exclude
/// nobody, or what the server or the connection reports.
///
/// # Examples
///
/// ```no_run
/// use dlock_postgres::{PgLock, check_deployment};
/// use postgres::{Client, NoTls};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let url = "postgres://postgres@localhost/postgres";
/// let mut client = Client::connect(url, NoTls)?;
/// check_deployment(&mut client, Some(&mut Client::connect(url, NoTls)?))?;
/// let lock = PgLock::new(client, "nightly-report").skip_deployment_check();
/// # drop(lock);
/// # Ok(())
/// # }
/// ```
pub fn check_deployment(client: &mut Client, mut second: Option<&mut Client>) -> Result<()> {
    refuse_inside_runtime()?;
    let mut check = Check::new(second.is_some(), Route::Unknown);
    let mut reply = None;
    loop {
        match check.step(reply.take()) {
            CheckStep::Done(outcome) => return outcome,
            CheckStep::Send(on, statement) => {
                let conn = match (on, second.as_deref_mut()) {
                    (On::Second, Some(second)) => second,
                    _ => &mut *client,
                };
                let answer = conn.simple_query(&statement).map_err(sql::error);
                reply = Some(answer.map(|answer| sql::last_row(&answer)));
            }
        }
    }
}

/// Creates the table of fencing tokens, the default one (`public.dlock_fence`), and its clock
/// (the sequence `public.dlock_fence_clock`), if they do not exist: what
/// [`fenced`](PgLock::fenced) locks need. Idempotent; run it once per database, with a role
/// that may create tables. The table has one row per key, never deleted.
///
/// # Errors
///
/// What the server reports (for example a missing privilege).
pub fn install_fencing(client: &mut Client) -> Result<()> {
    install_fencing_in(client, crate::sql::DEFAULT_FENCE_TABLE)
}

/// Creates the table of fencing tokens `table` (`name` or `schema.name`) and its clock (the
/// sequence `<table>_clock`) if they do not exist, for locks made
/// [`fenced_in`](PgLock::fenced_in) it.
///
/// # Errors
///
/// [`Error::InvalidKey`](dlock_core::Error::InvalidKey) for a name that is not plain, or
/// what the server reports.
pub fn install_fencing_in(client: &mut Client, table: &str) -> Result<()> {
    refuse_inside_runtime()?;
    let statement = crate::sql::install_fencing(&crate::sql::fence_table(table)?);
    match client.batch_execute(&statement) {
        Err(error) if sql::lost_the_create_race(&error) => client.batch_execute(&statement),
        outcome => outcome,
    }
    .map_err(sql::error)
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
    /// The standby check, the fence table and the last token.
    options: XactOptions,
}

impl PgXactLock {
    /// An exclusive transaction lock on `key`, under the default key policy.
    pub fn new(key: impl Into<Key>) -> Self {
        PgXactLock {
            key: key.into(),
            policy: KeyPolicy::default(),
            mode: Mode::Exclusive,
            options: XactOptions::default(),
        }
    }

    crate::methods::xact_methods!();

    /// Waits, in the server, until the transaction holds the lock. No session setting
    /// (`lock_timeout`, `statement_timeout`) cuts the wait short.
    ///
    /// # Errors
    ///
    /// What the server reports, as dlock's [`Error`](dlock_core::Error) (a deadlock aborts the
    /// transaction).
    pub fn acquire(&self, tx: &mut Transaction<'_>) -> Result<()> {
        self.take(tx, Wait::Forever).map(drop)
    }

    /// Takes the lock if it is free: `Ok(true)` held until the transaction ends,
    /// `Ok(false)` busy.
    ///
    /// # Errors
    ///
    /// What the server reports.
    pub fn try_acquire(&self, tx: &mut Transaction<'_>) -> Result<bool> {
        self.take(tx, Wait::Never)
    }

    /// Waits at most `timeout` for the lock, inside a savepoint: on a timeout the savepoint
    /// is rolled back, so the transaction stays usable and no lock is left behind.
    ///
    /// # Errors
    ///
    /// What the server reports.
    pub fn acquire_timeout(&self, tx: &mut Transaction<'_>, timeout: Duration) -> Result<bool> {
        self.take(tx, Wait::for_timeout(timeout))
    }

    fn take(&self, tx: &mut Transaction<'_>, wait: Wait) -> Result<bool> {
        Traced::acquire("postgres", self.mode.traced(), wait, || {
            sql::traced_key(&self.policy, &self.key)
        })
        .around_blocking(|| self.take_in(tx, wait))
    }

    fn take_in(&self, tx: &mut Transaction<'_>, wait: Wait) -> Result<bool> {
        refuse_inside_runtime()?;
        let statement = machine::xact_statement(self.hold()?, wait, None, &self.options);
        if !matches!(wait, Wait::For(_)) {
            let reply = tx
                .simple_query(&statement)
                .map(|reply| sql::last_row(&reply));
            let outcome = machine::xact_outcome(wait, reply.map_err(Failed::from));
            return self.options.noted(outcome).into_result();
        }
        let mut savepoint = tx.savepoint("dlock_acquire").map_err(sql::error)?;
        let reply = savepoint
            .simple_query(&statement)
            .map(|reply| sql::last_row(&reply));
        // Rolling the savepoint back also frees a lock granted with a failure.
        match (self.options).noted(machine::xact_outcome(wait, reply.map_err(Failed::from))) {
            XactOutcome::Answered(granted, _) => {
                savepoint.commit().map_err(sql::error)?;
                Ok(granted)
            }
            XactOutcome::TimedOut => savepoint.rollback().map_err(sql::error).map(|()| false),
            XactOutcome::Failed(error) => {
                // The rollback keeps the transaction usable after a cancel.
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
        let reply = tx
            .simple_query(&sql::held_by_session(self.hold()?))
            .map_err(sql::error)?;
        sql::read_bool(&sql::last_row(&reply), 0)
    }
}
