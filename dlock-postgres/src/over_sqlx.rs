//! The sqlx flavour (feature `sqlx`): a session lock and a session over a sqlx connection (a
//! `PgConnection` or a `PoolConnection<Postgres>`, owned, or a `&mut PoolConnection`), and a
//! transaction lock through a sqlx transaction. It is a transport: the machine decides, and
//! this only sends what it asks for and hands back what it read.
//!
//! sqlx has no query cancel, keeps no reply for later, and sends nothing while a statement
//! whose future was dropped is unanswered: it finishes that statement itself before the
//! connection's next one, reading its reply and throwing it away. So:
//! - waits go in slices (`lock_timeout` per slice): a dropped wait ends in the server within
//!   one slice, and holds up the connection's next statement no longer than that;
//! - what a dropped attempt leaves owed (unlock the key if that attempt got it) stays with the
//!   lock, or with its session, and the next operation there pays it first;
//! - a lock or session dropped holding or owing hands its connection and its state to a task
//!   on the current tokio runtime, which pays and releases (after sqlx has finished what was
//!   in flight) and then lets the connection go. A borrowed pooled connection cannot be moved
//!   there: it is marked to be closed by its pool, as is any connection without a runtime or
//!   whose task fails, which ends its session and every lock it held. A bare borrowed
//!   `&mut PgConnection` allows neither, which is why it is not accepted.

use std::fmt;
use std::time::Duration;

use ::sqlx::postgres::{PgConnection, PgRow, Postgres};
use ::sqlx::{Column as _, Row as _, TypeInfo as _, ValueRef as _};
use dlock_core::trace::TracedOperation;
use dlock_core::{AsyncLock, Error, Key, KeyPolicy, PgKey, Result, SessionId, Wait};

use crate::asynchronous::within_grace;
use crate::machine::{
    self, Abandon, Acquire, Failed, LockState, Operation, PayOwed, Release, Request, SessionFacts,
    Step, Verify, Waits, XactOptions, XactOutcome, XactSlices,
};
use crate::sql::{self, Failure, Hold, Mode, Row};

/// A PostgreSQL session lock over a sqlx connection `C`: a `PgConnection` or a
/// `PoolConnection<Postgres>` from your `PgPool` that it owns, a `&mut PoolConnection`, or a
/// [`SqlxPgSession`] ([`SqlxPgConnection`]). Keys, policies,
/// modes, fencing and the contract are those of [`AsyncPgLock`](crate::AsyncPgLock); what
/// differs is what sqlx allows:
///
/// - **Dropped futures.** sqlx cannot cancel a statement, so a wait goes in slices (each
///   sets `lock_timeout` for its one statement): an acquire dropped mid-wait ends in the
///   server within a slice (400 ms), and the lock keeps the cleanup that attempt owes (unlock
///   the key if it got it), which its next operation sends first.
/// - **Dropping a lock** that holds or owes hands its connection to a task on the current
///   tokio runtime, which releases and pays, then lets the connection go (back to its pool);
///   release on drop is not immediate. Without a runtime, or if that fails, the connection is
///   closed instead, which ends its session and frees its locks. A lock that holds and owes
///   nothing gives its connection back as it came.
/// - **Owned, or borrowed from a pool or a session**: the drop must be able to move the
///   connection into that task, close it, or leave what it owes to its session. A lock on a
///   `&mut PoolConnection` dropped holding marks the connection to be closed by its pool; a
///   lock on a [`SqlxPgSession`] leaves its hold owed to the session, which pays it before
///   its next statement. [`into_inner`](Self::into_inner) releases and gives the connection
///   back.
/// - **Deployment check**: sqlx hides the connection's cancel key, so, as the blocking
///   flavour, this infers a pooler from statements that move between server sessions, and
///   cannot see one that never moves them.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use dlock_postgres::{AsyncLock, SqlxPgLock};
/// use sqlx::postgres::PgPoolOptions;
///
/// let pool = PgPoolOptions::new().connect("postgres://postgres@localhost/postgres").await?;
/// let mut lock = SqlxPgLock::new(pool.acquire().await?, "nightly-report");
/// if lock.try_acquire().await? {
///     // Only one session anywhere gets here at a time.
///     sqlx::query("UPDATE reports SET started = now()").execute(lock.connection()).await?;
///     lock.release().await?;
/// }
/// # Ok(())
/// # }
/// ```
pub struct SqlxPgLock<C: SqlxPgConnection> {
    /// Always `Some` until `into_inner` takes it.
    conn: Option<C>,
    state: LockState,
}

mod sealed {
    pub trait Sealed {}
}

/// A sqlx connection a [`SqlxPgLock`] or a [`SqlxPgSession`] can run on: a `PgConnection`
/// or a `PoolConnection<Postgres>` it owns, a `&mut PoolConnection<Postgres>`, or a
/// `&mut SqlxPgSession` (a lock on that session). Sealed.
///
/// A bare `&mut PgConnection` (or a transaction's) is not one: a lock dropped while it holds
/// must either pay its unlock later, from a task that owns the connection, or close the
/// connection, which a bare borrow allows neither. Take a session lock over the connection
/// itself, or a [`SqlxPgXactLock`] through the transaction.
pub trait SqlxPgConnection: Send + sealed::Sealed {
    /// The connection the lock sends its statements through.
    fn connection(&mut self) -> &mut PgConnection;

    /// Makes sure the connection is closed, not reused, once dropped.
    #[doc(hidden)]
    fn discard(&mut self) {}

    /// What the server session is known to hold and owe, when the connection is a
    /// [`SqlxPgSession`]'s: it outlives each lock object on it.
    #[doc(hidden)]
    fn session_facts(&mut self) -> Option<&mut SessionFacts> {
        None
    }

    /// The connection as a task can own it, or, when it is borrowed, itself back.
    #[doc(hidden)]
    fn into_owned(self) -> std::result::Result<Box<dyn SqlxPgConnection>, Self>
    where
        Self: Sized;
}

dlock_core::__sqlx_connections!(
    SqlxPgConnection,
    PgConnection,
    Postgres,
    SqlxPgSession,
    SessionFacts
);

impl<C: SqlxPgConnection> SqlxPgLock<C> {
    /// An exclusive lock on `key` over `conn`, unlocked, under the default key policy.
    pub fn new(conn: C, key: impl Into<Key>) -> Self {
        let mut state = LockState::new(key.into());
        state.waits = Waits::Sliced;
        SqlxPgLock {
            conn: Some(conn),
            state,
        }
    }

    crate::methods::lock_methods!();

    dlock_core::__naming_session!();

    /// Sends the first lock statement through the server session's prepared gate, which a
    /// statement after the first checked grant on that session prepares: it costs the server
    /// less than the gate in the statement's text. Its failure on a session no check passed
    /// on would abort a transaction block the connection is in, so this is for pools whose
    /// connections are handed out outside any
    /// ([`SqlxLockPool`](https://docs.rs/dlock-pool)).
    #[doc(hidden)]
    pub fn gated_by_prepared_statement(mut self) -> Self {
        self.state.gate_statements = true;
        self
    }

    /// The sqlx connection, for work under the lock.
    pub fn connection(&mut self) -> &mut PgConnection {
        self.get_mut().connection()
    }

    /// Releases the lock if held, pays what a dropped attempt left owed, and gives the
    /// connection back.
    ///
    /// # Errors
    ///
    /// As [`release`](AsyncLock::release); the connection is given back either way, marked
    /// to be closed (not reused by its pool) when it may still hold something.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: a dropped call leaves the lock to its drop, which queues the unlock.
    pub async fn into_inner(mut self) -> (C, Result<()>) {
        let released = if self.state.held().is_some() {
            self.release().await
        } else {
            // Sends nothing unless a dropped attempt (of this lock or, on a session, of
            // another) left a cleanup owed.
            self.run(|_| Ok(PayOwed::start())).await
        };
        let mut conn = self.disown_connection();
        if let Some(facts) = conn.session_facts() {
            // A hold whose release the server refused is the session's to pay.
            self.state.hand_back(facts, true);
        } else if released.is_err() {
            conn.discard();
        }
        (conn, released)
    }

    /// Runs one operation of the machine on this lock's connection, with what its session
    /// knows and owes taken over for it.
    async fn run<O: Operation>(
        &mut self,
        start: impl FnOnce(&LockState) -> Result<O>,
    ) -> Result<O::Output> {
        let conn = self
            .conn
            .as_mut()
            .expect("the connection is only taken by into_inner and drop");
        if let Some(facts) = conn.session_facts() {
            self.state.adopt(facts);
        }
        let outcome = match start(&self.state) {
            Ok(op) => {
                Driver {
                    conn: conn.connection(),
                    state: &mut self.state,
                    op,
                    sent: false,
                }
                .run()
                .await
            }
            Err(error) => Err(error),
        };
        // A future dropped before this point leaves what it took over with the lock, which
        // hands it back at its next operation or its drop.
        if let Some(facts) = conn.session_facts() {
            self.state.hand_back(facts, false);
        }
        outcome
    }

    async fn take(&mut self, wait: Wait) -> Result<bool> {
        self.traced(TracedOperation::Acquire(wait))
            .around(self.run(|state| Acquire::start(state, wait)))
            .await
    }
}

/// A PostgreSQL server session over a sqlx connection `C` ([`SqlxPgConnection`]: a
/// `PgConnection` or a `PoolConnection<Postgres>` it owns, or a `&mut PoolConnection`), as
/// dlock knows it: it holds locks on any number of keys, released in any order, and keeps
/// what outlives any one lock object on it.
///
/// - **Many keys.** [`acquire`](SqlxPgSession::acquire),
///   [`try_acquire`](SqlxPgSession::try_acquire) and
///   [`acquire_timeout`](SqlxPgSession::acquire_timeout) take a key's lock for the session,
///   [`release`](SqlxPgSession::release) gives back any of them, in any order. Taking a key
///   the session holds already takes a second hold (PostgreSQL counts them), and each release
///   gives back one. For a shared or fenced lock, use a one-key lock on the session
///   ([`lock`](SqlxPgSession::lock)).
/// - **What dropped locks and futures owe.** A lock on the session dropped while it holds,
///   or an acquire dropped mid-wait, leaves its hold owed to the session, which releases it
///   before its next statement through dlock: exactly that hold, never another of the same
///   key.
/// - **The deployment check's verdict**, shared by the locks made on it one after another:
///   locks made per use check once per session, not once per lock object.
///
/// Dropping the session cannot wait: when it holds or owes anything, it hands its connection
/// to a task on the current tokio runtime, which releases and pays and then lets the
/// connection go (back to its pool). A borrowed `&mut PoolConnection` cannot move into that
/// task, so it is marked to be closed by its pool instead, as is any connection dropped
/// outside a runtime; closing ends the session and frees every lock. Call
/// [`into_inner`](SqlxPgSession::into_inner) to know the outcome.
///
/// # Cancel Safety
///
/// Every method's future can be dropped: sqlx finishes a dropped statement before the
/// connection's next one, and what that statement may have left held is the session's to pay
/// before its next statement, as for [`SqlxPgLock`].
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use dlock_postgres::SqlxPgSession;
///
/// let pool = sqlx::PgPool::connect("postgres://postgres@localhost/postgres").await?;
/// let mut session = SqlxPgSession::new(pool.acquire().await?);
/// session.acquire("accounts/1").await?;
/// session.acquire("accounts/2").await?;
/// session.release("accounts/1").await?; // In any order.
/// sqlx::query("UPDATE accounts SET frozen = true WHERE id = 2")
///     .execute(session.connection())
///     .await?;
/// session.release("accounts/2").await?;
/// # Ok(())
/// # }
/// ```
pub struct SqlxPgSession<C: SqlxPgConnection> {
    /// Always `Some` until `into_inner` or drop takes it.
    conn: Option<C>,
    facts: SessionFacts,
    policy: KeyPolicy,
    /// What the session holds through its own methods, oldest first.
    holds: Vec<LockState>,
}

impl<C: SqlxPgConnection> SqlxPgSession<C> {
    /// The session of `conn`, holding nothing.
    pub fn new(conn: C) -> Self {
        SqlxPgSession {
            conn: Some(conn),
            facts: SessionFacts::default(),
            policy: KeyPolicy::default(),
            holds: Vec::new(),
        }
    }

    /// A one-key lock on this session, unlocked, under the default key policy; it shares
    /// what the session knows and owes.
    pub fn lock(&mut self, key: impl Into<Key>) -> SqlxPgLock<&mut Self> {
        SqlxPgLock::new(self, key)
    }

    /// The sqlx connection, for work of your own. Do not release locks through it with raw
    /// SQL: the session would no longer know what it holds.
    pub fn connection(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("the connection is only taken by into_inner and drop")
            .connection()
    }

    dlock_core::__session_methods!(async, SqlxPgLock<&mut Self>);

    /// A lock on this session over a state the session holds.
    fn with_state(&mut self, state: LockState) -> SqlxPgLock<&mut Self> {
        SqlxPgLock {
            conn: Some(self),
            state,
        }
    }

    /// Releases everything the session's own methods hold and pays what it owes, then gives
    /// the connection back with the first failure, if any (a pooled connection is then
    /// marked to be closed, not reused).
    ///
    /// # Cancel Safety
    ///
    /// Dropping this future drops the session, with the guarantees of drop.
    pub async fn into_inner(mut self) -> (C, Result<()>) {
        let mut outcome = Ok(());
        while let Some(state) = self.holds.pop() {
            // A refused release leaves the hold owed to the session.
            let (_, released) = self.with_state(state).into_inner().await;
            outcome = outcome.and(released);
        }
        let (_, paid) = SqlxPgLock::new(&mut self, Key::from(0_i64))
            .into_inner()
            .await;
        outcome = outcome.and(paid);
        let mut conn = self
            .conn
            .take()
            .expect("the connection is only taken by into_inner and drop");
        if outcome.is_err() {
            conn.discard();
        }
        (conn, outcome)
    }
}

impl<C: SqlxPgConnection> Drop for SqlxPgSession<C> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // What the session's own methods hold is settled as dropped locks' holds are.
        for mut state in self.holds.drain(..) {
            state.hand_back(&mut self.facts, true);
        }
        if !self.facts.owes() {
            return;
        }
        let facts = std::mem::take(&mut self.facts);
        settle_in_task(conn, &"a sqlx session", async move |owned| {
            SqlxPgSession {
                conn: Some(owned),
                facts,
                policy: KeyPolicy::default(),
                holds: Vec::new(),
            }
            .into_inner()
            .await
        });
    }
}

impl<C: SqlxPgConnection> fmt::Debug for SqlxPgSession<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxPgSession")
            .field("held", &self.held().collect::<Vec<_>>())
            .field("owes", &self.facts.owes())
            .finish_non_exhaustive()
    }
}

/// Drives one operation over a sqlx connection; if its future is dropped with a statement in
/// flight, leaves what that attempt owes with the lock.
struct Driver<'a, O: Operation> {
    conn: &'a mut PgConnection,
    state: &'a mut LockState,
    op: O,
    /// Set while a statement is in flight.
    sent: bool,
}

impl<O: Operation> Driver<'_, O> {
    async fn run(mut self) -> Result<O::Output> {
        // sqlx reads what a dropped statement (ours or yours) left unanswered before it
        // writes the next one, inside that one's future: dropped there, the statement would
        // not have been sent, while the machine counts an unlock or a cleanup as sent from the
        // step that asks for it. Reading it here, before the machine's first step (no I/O
        // when nothing is left), makes each statement written on the poll that sends it: the
        // statements after the first follow replies read to their end.
        // A connection that fails here fails the statement as well, whose failure the
        // machine reads as it reads any lost connection.
        let _ = ::sqlx::Connection::flush(&mut *self.conn).await;
        let mut reply = None;
        loop {
            let request = match self.op.step(self.state, reply.take()) {
                Step::Done(outcome) => return outcome,
                Step::Send(request) => request,
            };
            reply = Some(match request {
                Request::Simple(statement) => {
                    self.sent = true;
                    let rows = ::sqlx::raw_sql(::sqlx::AssertSqlSafe(statement))
                        .fetch_all(&mut *self.conn)
                        .await;
                    self.sent = false;
                    rows.map(|rows| last_row(&rows)).map_err(failed)
                }
                // sqlx prepares and caches statements by itself; the machine, finding none
                // kept, goes on with simple queries.
                Request::Prepare(..) => Ok(None),
                Request::Prepared(..) => Err(Failed::from_error(Error::backend(
                    "the sqlx flavour keeps no prepared statements, yet one was asked for",
                ))),
            });
        }
    }
}

impl<O: Operation> Drop for Driver<'_, O> {
    fn drop(&mut self) {
        if !self.sent {
            return;
        }
        match self.state.abandon(self.op.in_flight()) {
            // An attempt's cleanup stays owed (`abandon` noted it): nothing can go out before
            // sqlx has the dropped statement's reply, and the lock's next operation, or its
            // drop's task, sends it first.
            Abandon::Nothing | Abandon::Queue { .. } => {}
            // A cleanup or an unlock was written before its future was dropped, and sqlx
            // sends it before anything else; sqlx reads its reply and throws it away, so it
            // counts as run (a lost connection takes its locks with it anyway).
            Abandon::Keep(settles) => {
                self.state
                    .settle(settles, Ok(Some(vec![Some("t".to_owned())])));
            }
        }
    }
}

/// A PostgreSQL transaction lock taken through a sqlx transaction (feature `sqlx`): it is
/// held until that transaction commits or rolls back, and never released by hand. Pass the
/// transaction itself (`&mut tx`), or anything else that gives a `PgConnection` inside a
/// transaction block (sqlx's `AsMut` convention); outside one each statement is its own
/// transaction, and the lock would end with it. Keys, policies, modes, fencing and the
/// standby check are those of [`AsyncPgXactLock`](crate::AsyncPgXactLock).
///
/// A lock taken by a dropped acquire future belongs to the transaction, so it ends with the
/// transaction like every lock this type takes. sqlx cannot cancel a statement, so a wait
/// goes in slices (each sets `lock_timeout` for its one statement): a dropped wait ends in
/// the server within a slice (400 ms), and a slice that runs out neither aborts the
/// transaction nor logs an error.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use dlock_postgres::SqlxPgXactLock;
///
/// let pool = sqlx::PgPool::connect("postgres://postgres@localhost/postgres").await?;
/// let mut tx = pool.begin().await?;
/// if SqlxPgXactLock::new("invoice/42").try_acquire(&mut tx).await? {
///     sqlx::query("UPDATE invoices SET paid = true WHERE id = 42").execute(&mut *tx).await?;
/// }
/// tx.commit().await?; // Releases the lock.
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a lock does nothing until it is acquired"]
pub struct SqlxPgXactLock {
    key: Key,
    policy: KeyPolicy,
    mode: Mode,
    /// The standby check, the fence table and the last token.
    options: XactOptions,
}

impl SqlxPgXactLock {
    /// An exclusive transaction lock on `key`, under the default key policy.
    pub fn new(key: impl Into<Key>) -> Self {
        SqlxPgXactLock {
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
    /// What the server reports (a deadlock aborts the transaction).
    ///
    /// # Cancel Safety
    ///
    /// See the type's docs: a late grant ends with the transaction.
    pub async fn acquire(&self, tx: &mut (impl AsMut<PgConnection> + Send)) -> Result<()> {
        self.traced(Wait::Forever, self.wait(tx.as_mut(), Wait::Forever))
            .await
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
    pub async fn try_acquire(&self, tx: &mut (impl AsMut<PgConnection> + Send)) -> Result<bool> {
        self.traced(Wait::Never, self.wait(tx.as_mut(), Wait::Never))
            .await
    }

    /// Waits at most `timeout` for the lock, inside a savepoint: on a timeout or a failure the
    /// savepoint is rolled back, so the transaction stays usable and no lock is left behind.
    ///
    /// # Errors
    ///
    /// What the server reports.
    ///
    /// # Cancel Safety
    ///
    /// Dropping the future leaves the savepoint open: a late grant is then the transaction's,
    /// and ends with it.
    pub async fn acquire_timeout(
        &self,
        tx: &mut (impl AsMut<PgConnection> + Send),
        timeout: Duration,
    ) -> Result<bool> {
        let wait = Wait::for_timeout(timeout);
        let conn = tx.as_mut();
        if wait == Wait::Never {
            return self.traced(wait, self.wait(conn, wait)).await;
        }
        self.traced(wait, async {
            text_rows(conn, "SAVEPOINT dlock_acquire".to_owned()).await?;
            let outcome = self.slices(conn, wait).await;
            // Rolling the savepoint back also frees a lock granted with a failure.
            let (end, answer) = match outcome {
                XactOutcome::Answered(granted, _) => ("RELEASE", Ok(granted)),
                XactOutcome::TimedOut => ("ROLLBACK TO", Ok(false)),
                XactOutcome::Failed(error) => ("ROLLBACK TO", Err(error)),
            };
            let ended = text_rows(conn, format!("{end} SAVEPOINT dlock_acquire")).await;
            let granted = answer?;
            ended.map(|_| granted)
        })
        .await
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
    pub async fn verify(&self, tx: &mut (impl AsMut<PgConnection> + Send)) -> Result<bool> {
        let rows = text_rows(tx.as_mut(), sql::held_by_session(self.hold()?)).await?;
        sql::read_bool(&rows.last().cloned(), 0)
    }

    /// Runs an acquire with `wait` in its span.
    async fn traced(
        &self,
        wait: Wait,
        acquire: impl Future<Output = Result<bool>>,
    ) -> Result<bool> {
        dlock_core::trace::Traced::acquire("postgres", self.mode.traced(), wait, || {
            sql::traced_key(&self.policy, &self.key)
        })
        .around(acquire)
        .await
    }

    /// Takes or waits for the lock through `conn`, without a savepoint.
    async fn wait(&self, conn: &mut PgConnection, wait: Wait) -> Result<bool> {
        self.slices(conn, wait).await.into_result()
    }

    /// Sends the lock statement, or the slices of a wait, through `conn`.
    async fn slices(&self, conn: &mut PgConnection, wait: Wait) -> XactOutcome {
        let hold: Hold = match self.hold() {
            Ok(hold) => hold,
            Err(error) => return XactOutcome::Failed(error),
        };
        if wait == Wait::Never {
            let statement = machine::xact_statement(hold, wait, None, &self.options);
            let reply = send(conn, statement).await;
            return self.options.noted(machine::xact_outcome(wait, reply));
        }
        let mut slices = XactSlices::new(hold, wait, &self.options);
        while let Some(statement) = slices.next_statement() {
            match slices.read(send(conn, statement).await) {
                XactOutcome::Answered(false, _) => {}
                outcome => return self.options.noted(outcome),
            }
        }
        XactOutcome::Answered(false, None)
    }
}

/// Sends one simple query and reads its last row.
async fn send(conn: &mut PgConnection, statement: String) -> machine::Reply {
    ::sqlx::raw_sql(::sqlx::AssertSqlSafe(statement))
        .fetch_all(conn)
        .await
        .map(|rows| last_row(&rows))
        .map_err(failed)
}

/// The last row of a simple query's reply, as text (the simple protocol returns text).
fn last_row(rows: &[PgRow]) -> Row {
    rows.last().map(text_row)
}

/// A row of a simple query's reply, as text.
fn text_row(row: &PgRow) -> Vec<Option<String>> {
    (0..row.len())
        .map(|index| {
            let value = row.try_get_raw(index).ok()?;
            if value.is_null() {
                return None;
            }
            // A void column (a plain lock's) reads as empty text.
            if row.column(index).type_info().name() == "VOID" {
                return Some(String::new());
            }
            value.as_str().ok().map(str::to_owned)
        })
        .collect()
}

/// Every row of `statement`'s reply, as text.
async fn text_rows(conn: &mut PgConnection, statement: String) -> Result<Vec<Vec<Option<String>>>> {
    let rows = ::sqlx::raw_sql(::sqlx::AssertSqlSafe(statement))
        .fetch_all(conn)
        .await
        .map_err(|error| failed(error).error)?;
    Ok(rows.iter().map(text_row).collect())
}

/// The session of `conn` as a lock watcher names it, for [`still_held`]: the sqlx form of
/// the tokio flavour's `session`. One round trip.
///
/// # Errors
///
/// What the server or the connection reports.
///
/// # Cancel Safety
///
/// Cancel safe: it only reads (sqlx finishes a dropped statement before the next one).
pub async fn session(conn: &mut PgConnection) -> Result<SessionId> {
    sql::read_session(&text_rows(conn, sql::session()).await?)
}

/// Whether each of `locks` (a session from [`session`], and a key it took) is still held by
/// that session, asked through `conn` from another session in one statement: the sqlx form
/// of the tokio flavour's `still_held`.
///
/// # Errors
///
/// What the server or the connection reports.
///
/// # Cancel Safety
///
/// Cancel safe: it only reads.
pub async fn still_held(
    conn: &mut PgConnection,
    locks: &[(SessionId, PgKey)],
) -> Result<Vec<bool>> {
    let statement = sql::still_held(locks.iter().map(|(session, _)| session.id));
    Ok(sql::read_still_held(
        &text_rows(conn, statement).await?,
        locks,
    ))
}

/// Creates the table of fencing tokens `table` (`name` or `schema.name`; `None`: the
/// default, `public.dlock_fence`) and its clock, if they do not exist: the sqlx form of the
/// tokio flavour's `install_fencing_in`. Idempotent, and safe against a concurrent install.
///
/// # Errors
///
/// [`Error::InvalidKey`] for a name that is not plain, or what the server reports.
///
/// # Cancel Safety
///
/// Cancel safe: every statement is idempotent.
pub async fn install_fencing(conn: &mut PgConnection, table: Option<&str>) -> Result<()> {
    let table = sql::fence_table(table.unwrap_or(sql::DEFAULT_FENCE_TABLE))?;
    let statement = sql::install_fencing(&table);
    let install = async |conn: &mut PgConnection| {
        ::sqlx::raw_sql(::sqlx::AssertSqlSafe(statement.clone()))
            .execute(conn)
            .await
    };
    match install(&mut *conn).await {
        Err(::sqlx::Error::Database(error))
            if error
                .code()
                .is_some_and(|code| sql::CREATE_RACE_CODES.contains(&&*code)) =>
        {
            install(conn).await
        }
        outcome => outcome,
    }
    .map(drop)
    .map_err(|error| failed(error).error)
}

/// A failed statement as the machine reads it: its SQLSTATE sorted as the other flavours'
/// are, a broken connection as a lost session.
fn failed(error: ::sqlx::Error) -> Failed {
    let (failure, code, message) = match &error {
        ::sqlx::Error::Database(database) => {
            let code = database.code().map(|code| code.into_owned());
            let message = database.message().to_owned();
            let failure = code.as_deref().map_or(Failure::Other, |code| {
                sql::failure_of_code(code, Some(&message))
            });
            (failure, code, Some(message))
        }
        ::sqlx::Error::Io(_) | ::sqlx::Error::Protocol(_) | ::sqlx::Error::Tls(_) => {
            (Failure::ConnectionLost, None, None)
        }
        _ => (Failure::Other, None, None),
    };
    // The server said why it ended the session, or the connection closed: proof either way.
    let ended = code.is_some()
        || matches!(&error, ::sqlx::Error::Io(io) if io.kind() != std::io::ErrorKind::TimedOut);
    let error = sql::error_of(
        failure,
        code.as_deref(),
        message.as_deref(),
        ended,
        Box::new(error),
    );
    Failed { failure, error }
}

impl<C: SqlxPgConnection> AsyncLock for SqlxPgLock<C> {
    fn key(&self) -> &Key {
        &self.state.key
    }

    /// Waits, in the server, until this session holds the lock.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: a dropped acquire's wait ends in the server within one slice, and its
    /// cleanup, queued behind it, unlocks the key if that attempt got it.
    async fn acquire(&mut self) -> Result<()> {
        self.take(Wait::Forever).await.map(drop)
    }

    /// Takes the lock if it is free, without waiting.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: if the future is dropped after the statement was sent, a queued cleanup
    /// unlocks the key if it was granted.
    async fn try_acquire(&mut self) -> Result<bool> {
        self.take(Wait::Never).await
    }

    /// Waits at most `timeout` in the server, in slices that each set `lock_timeout` for
    /// their one wait; `Ok(false)` comes no earlier. If the server has not answered
    /// [`REPLY_GRACE`](dlock_core::REPLY_GRACE) after the timeout, this returns
    /// [`Error::no_reply`], leaving the attempt as a dropped acquire does.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe, as [`acquire`](AsyncLock::acquire).
    async fn acquire_timeout(&mut self, timeout: Duration) -> Result<bool> {
        within_grace(timeout, self.take(Wait::for_timeout(timeout))).await
    }

    /// Releases the lock.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: once polled, the unlock is written to the connection, and sqlx sends it
    /// before the connection's next statement whether or not the future completes.
    async fn release(&mut self) -> Result<()> {
        self.traced(TracedOperation::Release)
            .around(self.run(Release::start))
            .await
    }

    fn is_acquired(&self) -> bool {
        self.state.held().is_some()
    }

    /// Asks `pg_locks` whether this session holds the lock in this lock's mode.
    ///
    /// # Cancel Safety
    ///
    /// Cancel safe: it only reads.
    async fn verify(&mut self) -> Result<bool> {
        self.traced(TracedOperation::Verify)
            .around(self.run(Verify::start))
            .await
    }
}

dlock_core::__connection_lock!(SqlxPgLock, SqlxPgConnection, KeyPolicy::pg_key, async);

impl<C: SqlxPgConnection> Drop for SqlxPgLock<C> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if let Some(facts) = conn.session_facts() {
            // The session outlives this lock: what it holds or owes is the session's to pay
            // before its next statement, or its drop's.
            self.state.hand_back(facts, true);
            return;
        }
        if self.state.held().is_none() && self.state.owes().is_none() {
            return;
        }
        let state = self.detach();
        let key = state.key.clone();
        settle_in_task(conn, &key, async move |owned| {
            SqlxPgLock {
                conn: Some(owned),
                state,
            }
            .into_inner()
            .await
        });
    }
}

dlock_core::__sqlx_settle_in_task!(SqlxPgConnection);

impl<C: SqlxPgConnection> fmt::Debug for SqlxPgLock<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlxPgLock")
            .field("key", &self.state.key)
            .field("mode", &self.state.mode)
            .field("held", &self.state.held().is_some())
            .finish_non_exhaustive()
    }
}
