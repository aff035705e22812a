//! The one place where a PostgreSQL lock decides: what to send next and what each reply or
//! error means. No I/O: the blocking and tokio flavours send each [`Request`] and hand the
//! reply back, as quinn-proto is driven by quinn. Every branch is tested here with synthetic
//! replies.
//!
//! The rules it keeps:
//! - Every error that can come with a grant (55P03, 57014) asks `pg_locks` before it returns,
//!   and a granted lock is then held and tracked, as if no error had come.
//! - A session setting that cuts a wait short (`lock_timeout`, `statement_timeout`) never
//!   decides an outcome: the wait is repeated with both overridden for that one statement.
//! - An attempt whose outcome cannot be read is owed a cleanup, sent once; it is repeated only
//!   when it is known not to have run, so it can never take a second hold away.
//! - A release refused because the user's transaction is aborted (25P02) keeps the lock
//!   tracked as held; a missing prepared statement (26000) is prepared again, never read as
//!   an outcome.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dlock_core::{Error, Key, KeyPolicy, Result, SessionId, Wait};

use crate::deployment::{self, CheckStep, Route};
use crate::sql::{self, Failure, Gate, Hold, Kind, Mode, Row, Scope, Shape, Statements};

#[cfg(all(feature = "blocking", not(feature = "tokio")))]
use postgres as driver;
#[cfg(feature = "tokio")]
use tokio_postgres as driver;

/// A statement the machine wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// A simple query; the reply is its last row.
    Simple(String),
    /// Prepare the statement of this kind for this shape and keep it
    /// ([`LockState::keep`]); the reply is `Ok(None)` once kept.
    Prepare(Kind, Shape),
    /// Run the kept statement of this kind with the hold's key; the reply is its row.
    Prepared(Kind, Hold),
}

/// A failed statement, sorted ([`sql::failure`]) and turned into dlock's error.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) failure: Failure,
    pub(crate) error: Error,
}

impl Failed {
    /// A failure that is not the server's: dlock's own error, as it is.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn from_error(error: Error) -> Failed {
        Failed {
            failure: Failure::Other,
            error,
        }
    }
}

impl From<driver::Error> for Failed {
    fn from(error: driver::Error) -> Failed {
        Failed {
            failure: sql::failure(&error),
            error: sql::error(error),
        }
    }
}

/// A reply as the machine reads it.
pub(crate) type Reply = Result<Row, Failed>;

/// What an operation wants next.
#[derive(Debug)]
pub(crate) enum Step<T> {
    /// Send this and hand the reply to the next `step`.
    Send(Request),
    /// The operation is over.
    Done(Result<T>),
}

/// An operation of a session lock, stepped by a flavour: each reply goes into the next
/// `step`, until it is done.
pub(crate) trait Operation {
    type Output;

    fn step(&mut self, state: &mut LockState, reply: Option<Reply>) -> Step<Self::Output>;

    /// What is in flight, for a future dropped now.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    fn in_flight(&self) -> InFlight;
}

/// A statement that was sent and whose reply was not read yet: what a dropped future leaves.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InFlight {
    /// Nothing, or something whose outcome does not matter (a prepare, a read).
    Nothing,
    /// A lock statement, or the question after one was interrupted: the session may hold
    /// the lock without anybody knowing. `waiting` is the attempt's token when the statement
    /// may still be waiting and is tagged for a side connection to end it.
    Lock { hold: Hold, waiting: Option<u64> },
    /// An owed cleanup.
    Cleanup(Hold),
    /// A release's unlock.
    Unlock(Hold),
}

/// What a reply that nobody waits for settles, once it is read (the tokio flavour keeps the
/// reply of a dropped future and reads it before the lock's next operation).
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settles {
    /// A cleanup of this hold: done once it succeeded.
    Cleanup(Hold),
    /// The unlock of this hold: the object holds it again if the server refused the unlock.
    Unlock(Hold),
}

/// What the flavour must do for a future dropped with a statement in flight.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Abandon {
    /// Nothing: the statement's outcome does not matter.
    Nothing,
    /// Keep the in-flight statement's reply and read it later, for what it settles.
    Keep(Settles),
    /// Send this cleanup now, behind the in-flight statement, and keep its reply for what it
    /// settles. With a `fence` (the attempt's token), a side connection ends the wait: send
    /// [`sql::fence`] first, and hand its reply to the side connection.
    Queue {
        fence: Option<u64>,
        cleanup: String,
        settles: Settles,
    },
}

/// One session lock object's state: what it locks, what it holds, what it owes.
#[derive(Debug)]
pub(crate) struct LockState {
    pub(crate) key: Key,
    pub(crate) policy: KeyPolicy,
    pub(crate) mode: Mode,
    /// What this object holds, as taken: the key and mode may be changed by the builder
    /// methods afterwards, but release must undo exactly what acquire did.
    held: Option<Hold>,
    /// Cleanups owed: by attempts whose outcome was never read, and (on a [`SessionFacts`]'
    /// session) by holds of dropped locks. Sent before the next operation, until each is
    /// known to have run.
    owed: Vec<Hold>,
    statements: Statements,
    /// How a wait is sent: whole (blocking), tagged for a side connection, or in slices.
    pub(crate) waits: Waits,
    /// Whether the next acquire checks the deployment first ([`deployment`]): until one
    /// check passed, unless the user turned it off.
    pub(crate) check_deployment: bool,
    /// What the flavour knows of the route to the server, for the deployment check.
    pub(crate) route: Route,
    /// The server session (pid) of this object's connection, once known from the deployment
    /// check or an unlock: an unlock that runs on another session shows a pooler that moves
    /// statements between sessions.
    session: Option<String>,
    /// The fence table (as SQL) when acquires issue fencing tokens.
    pub(crate) fence: Option<String>,
    /// The fencing token of the lock this object holds, when fenced.
    token: Option<u64>,
    /// Whether a deployment check passed on this object's connection.
    checked: bool,
    /// Whether a grant names its server session ([`named`](Self::named)), for a watcher: a
    /// pool's lock over a connection that carries no identity of its own (sqlx).
    pub(crate) names_session: bool,
    /// The server session's name, once a statement of this object read it.
    named: Option<SessionId>,
    /// Whether the first lock statement goes through the session's prepared gate
    /// ([`sql::execute_gate`]): for a pool's connections, which are outside any transaction
    /// block as they are handed out, so the gate's failure on an unchecked session aborts
    /// nothing.
    pub(crate) gate_statements: bool,
}

/// A lock object's prepared statements, handed to the next lock on the same connection: the
/// fenced ones name the fence table they were prepared for.
#[derive(Debug)]
struct SessionStatements {
    fence: Option<String>,
    statements: Statements,
}

/// How a lock object sends a wait, which decides what a dropped acquire future leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waits {
    /// One statement waits the whole wait: nothing can drop it (the blocking flavour).
    Whole,
    /// One statement waits the whole wait, tagged so that a side connection can find it and
    /// end it if its future is dropped.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    Tagged,
    /// A try, then waits of at most [`LONGEST_SLICE`] each, so a dropped future leaves a
    /// wait that ends on its own within one slice and never needs a cancel request (the
    /// tokio flavour without a side connection).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    Sliced,
}

/// The first slice of a sliced wait; each next one is twice as long, up to
/// [`LONGEST_SLICE`]. A future dropped early (a short `tokio::time::timeout`) leaves a short
/// wait behind, and a long wait costs about two statements a second.
const FIRST_SLICE: Duration = Duration::from_millis(50);

/// The longest slice: the most that statements sent after a dropped acquire can wait behind
/// it. Each slice is one round trip, and a release hands over to a waiter inside a slice as
/// fast as to a whole wait.
pub(crate) const LONGEST_SLICE: Duration = Duration::from_millis(400);

/// The slices of one sliced wait, each a `lock_timeout` in milliseconds, until the wait's
/// deadline (none for [`Wait::Forever`]).
#[derive(Debug, Clone)]
pub(crate) struct Slices {
    deadline: Option<Instant>,
    next: Duration,
}

impl Slices {
    pub(crate) fn new(wait: Wait) -> Slices {
        let deadline = match wait {
            Wait::For(timeout) => Instant::now().checked_add(timeout),
            Wait::Never => Some(Instant::now()),
            Wait::Forever => None,
        };
        Slices {
            deadline,
            next: FIRST_SLICE,
        }
    }

    /// The next slice's `lock_timeout`, or `None` once the deadline has passed: the time
    /// waited is then at least the timeout asked for.
    pub(crate) fn next_millis(&mut self) -> Option<u32> {
        let mut slice = self.next;
        self.next = (self.next * 2).min(LONGEST_SLICE);
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            slice = slice.min(left);
        }
        Some(sql::lock_timeout_millis(slice).max(1))
    }
}

impl LockState {
    pub(crate) fn new(key: Key) -> LockState {
        LockState {
            key,
            policy: KeyPolicy::default(),
            mode: Mode::Exclusive,
            held: None,
            owed: Vec::new(),
            statements: Statements::default(),
            waits: Waits::Whole,
            check_deployment: true,
            route: Route::Unknown,
            session: None,
            fence: None,
            token: None,
            checked: false,
            names_session: false,
            named: None,
            gate_statements: false,
        }
    }

    /// Takes the state out, holds and all, leaving an empty one of the same key and waits
    /// whose lock's drop does nothing: for a session that keeps a lock's hold.
    pub(crate) fn detach(&mut self) -> LockState {
        let mut empty = LockState::new(self.key.clone());
        empty.waits = self.waits;
        std::mem::replace(self, empty)
    }

    /// The server session's name as a watcher knows it, once a grant read it
    /// ([`names_session`](Self::names_session)).
    #[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
    pub(crate) fn named(&self) -> Option<SessionId> {
        self.named
    }

    /// A deployment check passed on this object's connection.
    fn passed_check(&mut self) {
        self.check_deployment = false;
        self.checked = true;
    }

    /// The hold this object's key and mode name now, under its policy.
    pub(crate) fn hold(&self) -> Result<Hold> {
        Ok(Hold {
            key: self.policy.pg_key(&self.key)?,
            mode: self.mode,
        })
    }

    pub(crate) fn held(&self) -> Option<Hold> {
        self.held
    }

    /// The first cleanup owed, if any.
    pub(crate) fn owes(&self) -> Option<Hold> {
        self.owed.first().copied()
    }

    /// Takes over what `facts`' session knows and owes, for one operation on it.
    pub(crate) fn adopt(&mut self, facts: &mut SessionFacts) {
        self.owed.append(&mut facts.owed);
        // The session's connection is this object's for good: a check passed there holds.
        if facts.checked {
            self.check_deployment = false;
        }
        if let Some(kept) = facts.statements.take() {
            if kept.fence == self.fence {
                self.statements = kept.statements;
            }
        }
    }

    /// Hands what the session knows and owes back to `facts` after an operation; `dropped`
    /// adds this object's hold to what the session owes, for a lock that goes away holding.
    pub(crate) fn hand_back(&mut self, facts: &mut SessionFacts, dropped: bool) {
        facts.owed.append(&mut self.owed);
        facts.checked |= self.checked;
        if dropped {
            facts.owed.extend(self.held.take());
            self.token = None;
        }
        // The session's statements are this object's only while it has taken them over: a
        // second hand-back (a drop after the operation's own) must not replace them.
        if facts.statements.is_none() {
            facts.statements = Some(SessionStatements {
                fence: self.fence.clone(),
                statements: std::mem::take(&mut self.statements),
            });
        }
    }

    /// The fencing token of the lock held now, when this object is fenced.
    pub(crate) fn token(&self) -> Option<u64> {
        self.held.and(self.token)
    }

    /// The kept prepared statement for a request.
    pub(crate) fn prepared(&self, kind: Kind, hold: Hold) -> Option<&driver::Statement> {
        self.statements.prepared(kind, Shape::of(hold))
    }

    /// The SQL and parameter types of a statement to prepare for a [`Request::Prepare`].
    pub(crate) fn statement_sql(
        &self,
        kind: Kind,
        shape: Shape,
    ) -> (String, &'static [driver::types::Type]) {
        kind.sql(shape, self.fence.as_deref())
    }

    /// Makes acquires fenced in `table` (as SQL), or unfenced: statements kept for another
    /// table are forgotten.
    pub(crate) fn set_fence(&mut self, table: Option<String>) {
        if self.fence != table {
            self.statements.forget();
        }
        self.fence = table;
    }

    /// The statements this object keeps prepared, which outlive it on its connection: for
    /// the next lock a pool builds there. The object forgets them.
    pub(crate) fn take_session_state(&mut self) -> Option<dlock_core::SessionState> {
        Some(Box::new(SessionStatements {
            fence: self.fence.clone(),
            statements: std::mem::take(&mut self.statements),
        }))
    }

    /// Keeps the statements an earlier lock on the same connection prepared, when they were
    /// prepared for this object's fence table.
    pub(crate) fn with_session_state(&mut self, state: dlock_core::SessionState) {
        if let Ok(statements) = state.downcast::<SessionStatements>() {
            if statements.fence == self.fence {
                self.statements = statements.statements;
            }
        }
    }

    /// Keeps a statement the flavour prepared for a [`Request::Prepare`].
    pub(crate) fn keep(&mut self, kind: Kind, shape: Shape, statement: driver::Statement) {
        self.statements.keep(kind, shape, statement);
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// What to do when an operation's future is dropped with `in_flight` unanswered.
    pub(crate) fn abandon(&mut self, in_flight: InFlight) -> Abandon {
        match in_flight {
            InFlight::Nothing => Abandon::Nothing,
            InFlight::Lock { hold, waiting } => {
                self.owed.push(hold);
                Abandon::Queue {
                    fence: waiting,
                    cleanup: sql::cleanup(hold),
                    settles: Settles::Cleanup(hold),
                }
            }
            InFlight::Cleanup(hold) => Abandon::Keep(Settles::Cleanup(hold)),
            InFlight::Unlock(hold) => Abandon::Keep(Settles::Unlock(hold)),
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// Reads the reply of a statement a dropped future left behind.
    pub(crate) fn settle(&mut self, settles: Settles, reply: Reply) {
        match (settles, reply) {
            (Settles::Cleanup(hold), Ok(_)) => self.paid(hold),
            // The session is gone, and every lock it held with it.
            (Settles::Cleanup(_), Err(failed)) if failed.failure == Failure::ConnectionLost => {
                self.owed.clear();
            }
            // Not run: it stays owed, and is sent again before the next operation.
            (Settles::Cleanup(_), Err(failed)) => {
                tracing::debug!(error = %failed.error, "the cleanup of a dropped acquire failed; it is sent again");
            }
            (Settles::Unlock(_), Ok(row)) => {
                if !matches!(sql::read_bool(&row, 0), Ok(true)) {
                    tracing::warn!("a dropped release found the lock already lost");
                }
            }
            (Settles::Unlock(_), Err(failed)) if failed.failure == Failure::ConnectionLost => {}
            // The server refused the unlock: the object still holds the lock.
            (Settles::Unlock(hold), Err(failed)) => {
                tracing::warn!(error = %failed.error, "a dropped release failed; the lock is still held");
                self.held = Some(hold);
            }
        }
    }
}

impl LockState {
    /// One owed cleanup of `hold` ran.
    fn paid(&mut self, hold: Hold) {
        if let Some(at) = self.owed.iter().position(|owed| *owed == hold) {
            self.owed.remove(at);
        }
    }
}

/// What dlock knows of one server session beyond any lock object on it: the holds dropped
/// locks left owed, and the statements prepared there. A session type keeps it; each
/// operation of a lock on that session takes it over ([`LockState::adopt`]) and hands it
/// back ([`LockState::hand_back`]).
#[doc(hidden)]
#[derive(Default)]
#[cfg_attr(not(feature = "blocking"), allow(unreachable_pub))]
pub struct SessionFacts {
    owed: Vec<Hold>,
    /// Whether a deployment check passed on the session's connection.
    checked: bool,
    statements: Option<SessionStatements>,
}

impl SessionFacts {
    /// Whether a cleanup is owed.
    #[cfg_attr(not(feature = "blocking"), allow(dead_code))]
    pub(crate) fn owes(&self) -> bool {
        !self.owed.is_empty()
    }

    /// The cleanups owed, one per hold.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn owed(&self) -> &[Hold] {
        &self.owed
    }

    /// Reads the reply of a statement a dropped lock left in flight on the session: a
    /// cleanup that ran is paid, an unlock the server refused is owed.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn settle(&mut self, settles: Settles, reply: Reply) {
        match (settles, reply) {
            // The session is gone, and every lock it held with it.
            (_, Err(failed)) if failed.failure == Failure::ConnectionLost => self.owed.clear(),
            (Settles::Cleanup(hold), Ok(_)) => {
                if let Some(at) = self.owed.iter().position(|owed| *owed == hold) {
                    self.owed.remove(at);
                }
            }
            // Not run: it stays owed.
            (Settles::Cleanup(_), Err(_)) | (Settles::Unlock(_), Ok(_)) => {}
            (Settles::Unlock(hold), Err(failed)) => {
                tracing::debug!(error = %failed.error, "a dropped lock's unlock was refused; the session owes it");
                self.owed.push(hold);
            }
        }
    }
}

impl std::fmt::Debug for SessionFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionFacts")
            .field("owed", &self.owed.len())
            .finish_non_exhaustive()
    }
}

/// The step shared by every operation: the owed cleanups go first.
#[derive(Debug)]
enum Owed {
    /// Not checked yet.
    Unchecked,
    /// The cleanup is sent.
    Sent(Hold),
    /// Nothing is owed.
    Clear,
}

impl Owed {
    /// `None` when nothing (more) is owed and the operation can go on.
    fn step<T>(&mut self, state: &mut LockState, reply: &mut Option<Reply>) -> Option<Step<T>> {
        loop {
            match *self {
                Owed::Clear => return None,
                Owed::Unchecked => match state.owes() {
                    Some(hold) => {
                        tracing::debug!(target: "dlock", "an owed cleanup runs");
                        *self = Owed::Sent(hold);
                        return Some(Step::Send(Request::Simple(sql::cleanup(hold))));
                    }
                    None => *self = Owed::Clear,
                },
                Owed::Sent(hold) => {
                    let reply = reply.take().expect("the owed cleanup's reply");
                    // The next owed cleanup, if any, goes next.
                    *self = Owed::Unchecked;
                    match reply {
                        Ok(_) => state.paid(hold),
                        Err(failed) => {
                            *self = Owed::Clear;
                            // A lost session freed every lock it held: nothing is owed.
                            if failed.failure == Failure::ConnectionLost {
                                state.owed.clear();
                            }
                            return Some(Step::Done(Err(failed.error)));
                        }
                    }
                }
            }
        }
    }

    fn in_flight(&self) -> InFlight {
        match *self {
            Owed::Sent(hold) => InFlight::Cleanup(hold),
            Owed::Unchecked | Owed::Clear => InFlight::Nothing,
        }
    }
}

/// How a session lock statement is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// The fast form: a try, or a plain wait under the session's settings (prepared once the
    /// object is reused).
    Plain(Kind),
    /// A wait with `lock_timeout` of this many milliseconds (0: none) and `statement_timeout`
    /// off, for this statement only.
    Guarded(u32),
    /// One slice of a sliced wait, of this many milliseconds: [`sql::sliced_lock`].
    Slice(u32),
}

#[derive(Debug)]
enum AcquirePhase {
    /// The deployment check runs, before anything is locked.
    Check(deployment::Check),
    Owed,
    Prepare(Vec<Kind>),
    /// The first lock statement of an object whose deployment is not checked yet, which
    /// carries the check ([`sql::gated_lock`]).
    Gated,
    /// The same through the session's prepared gate ([`sql::execute_gate`]).
    ExecutingGate,
    /// The gate is prepared on a session the gated statement found checked; then `reply`,
    /// that statement's, is read.
    PreparingGate {
        reply: Reply,
    },
    /// The lock statement is sent.
    Locking,
    /// The lock statement failed with `failure`; `pg_locks` is asked.
    Asking {
        failure: Failure,
        error: Error,
    },
    /// The lock is held without a token (it came with an error): the token is bumped alone.
    Fencing,
    /// The lock is held and its session is named by a statement of its own.
    Naming,
    /// A fenced grant could get no token: the lock is given back, then `error` returned.
    Undoing {
        error: Error,
    },
    Done,
}

/// `acquire`, `try_acquire` and `acquire_timeout` of a session lock.
#[derive(Debug)]
pub(crate) struct Acquire {
    hold: Hold,
    wait: Wait,
    /// The tag of a waiting statement a side connection may have to end.
    token: Option<u64>,
    /// The slices still to wait, for a sliced wait.
    slices: Option<Slices>,
    form: Form,
    owed: Owed,
    /// What the first lock statement must find on its session, when it carries the
    /// deployment check.
    gate: Option<Gate>,
    /// The mark the lock statement leaves on its session: a full check of this kind just
    /// passed there.
    mark_checked: Option<Gate>,
    /// Set when the session's prepared gate was missing: a gated statement that finds the
    /// session checked prepares it.
    prepares_gate: bool,
    phase: AcquirePhase,
}

impl Acquire {
    /// Starts an acquire, after the checks that need no I/O.
    pub(crate) fn start(state: &LockState, wait: Wait) -> Result<Acquire> {
        if state.held.is_some() {
            return Err(Error::AlreadyAcquired);
        }
        let slices = (state.waits == Waits::Sliced && wait.may_wait()).then(|| Slices::new(wait));
        let form = match wait {
            // A sliced wait tries first: a free lock costs what a plain acquire costs.
            _ if slices.is_some() => Form::Plain(Kind::TryLock),
            Wait::Never => Form::Plain(Kind::TryLock),
            Wait::Forever => Form::Plain(Kind::Lock),
            Wait::For(timeout) => Form::Guarded(sql::lock_timeout_millis(timeout)),
        };
        let token =
            (state.waits == Waits::Tagged && wait.may_wait()).then(dlock_core::attempt_token);
        // The first lock statement carries the check: a lock made per use on a proven
        // connection, or on a server session checked before, costs no round trip for it.
        let gate = match form {
            Form::Plain(Kind::TryLock | Kind::Lock)
                if state.check_deployment && state.fence.is_none() =>
            {
                Some(state.route.gate())
            }
            _ => None,
        };
        Ok(Acquire {
            hold: state.hold()?,
            wait,
            token,
            slices,
            form,
            owed: Owed::Unchecked,
            gate,
            mark_checked: None,
            prepares_gate: false,
            phase: if state.check_deployment && gate.is_none() {
                AcquirePhase::Check(deployment::Check::new(false, state.route))
            } else {
                AcquirePhase::Owed
            },
        })
    }

    fn lock_request(&self, state: &LockState) -> Request {
        let fence = state.fence.as_deref();
        let statement = match self.form {
            // A tagged wait goes as text: a prepared statement's text cannot carry the tag.
            // Right after a passed check, the statement marks its session. Only unfenced
            // statements are gated, so only they are ever marked.
            Form::Plain(kind) if self.mark_checked.is_some() => {
                let checked = self.mark_checked.unwrap_or(Gate::Checked);
                let mut statement = kind.simple(self.hold, None);
                if state.names_session {
                    sql::push_session_name(&mut statement);
                }
                sql::marking_checked(&statement, checked)
            }
            Form::Plain(kind)
                if self.token.is_none()
                    && !state.names_session
                    && state.prepared(kind.fenced_if(fence), self.hold).is_some() =>
            {
                return Request::Prepared(kind.fenced_if(fence), self.hold);
            }
            Form::Plain(kind) => {
                let mut statement = kind.fenced_if(fence).simple(self.hold, fence);
                if self.names_in_statement(state) {
                    sql::push_session_name(&mut statement);
                }
                statement
            }
            Form::Guarded(millis) => {
                let statement = sql::guarded_lock(self.hold, Scope::Session, millis);
                match fence {
                    Some(table) => sql::fenced(&statement, self.hold, table, false),
                    None => statement,
                }
            }
            Form::Slice(millis) => sql::sliced_lock(self.hold, Scope::Session, millis, fence),
        };
        match self.token {
            Some(token) => Request::Simple(sql::wait_tag(token) + &statement),
            None => Request::Simple(statement),
        }
    }

    /// Sends the lock statement in `form` (again).
    fn lock(&mut self, state: &LockState, form: Form) -> Step<bool> {
        self.form = form;
        self.phase = AcquirePhase::Locking;
        Step::Send(self.lock_request(state))
    }

    fn granted(&mut self, state: &mut LockState) -> Step<bool> {
        if state.names_session && state.named.is_none() {
            // No statement of this grant named the session (a timed or fenced form): one
            // more does, before anybody is told the lock is held.
            self.phase = AcquirePhase::Naming;
            return Step::Send(Request::Simple(sql::pooled_session()));
        }
        self.phase = AcquirePhase::Done;
        state.held = Some(self.hold);
        Step::Done(Ok(true))
    }

    /// The lock is held: done, unless it is fenced and `token` is missing, which the token
    /// bump alone then gets.
    fn granted_with(&mut self, state: &mut LockState, token: Option<u64>) -> Step<bool> {
        let Some(table) = state.fence.as_deref() else {
            return self.granted(state);
        };
        match token {
            Some(token) => {
                state.token = Some(token);
                self.granted(state)
            }
            None => {
                self.phase = AcquirePhase::Fencing;
                Step::Send(Request::Simple(sql::fence_upsert(self.hold, table)))
            }
        }
    }

    /// Whether the lock statement sent now names its session in the columns after its lock
    /// column: a plain statement of an object that names its session, unless a fencing token
    /// takes those columns (only unfenced statements are gated or marked). Any other form
    /// names it with a statement after the grant.
    fn names_in_statement(&self, state: &LockState) -> bool {
        state.names_session && matches!(self.form, Form::Plain(_)) && state.fence.is_none()
    }

    /// A fenced grant got no token: unlock, then fail with `error`.
    fn undo(&mut self, error: Error) -> Step<bool> {
        self.phase = AcquirePhase::Undoing { error };
        Step::Send(Request::Simple(sql::unlock(self.hold)))
    }

    fn done(&mut self, outcome: Result<bool>) -> Step<bool> {
        self.phase = AcquirePhase::Done;
        Step::Done(outcome)
    }

    /// The lock statement failed with `failure`, and the session does not hold the lock.
    fn not_granted(
        &mut self,
        state: &LockState,
        failure: Failure,
        error: Error,
        statement_timeout: bool,
    ) -> Step<bool> {
        let cut_short = match failure {
            // Outside the guarded form, only the session's own lock_timeout fires.
            Failure::LockTimeout => matches!(self.form, Form::Plain(_)),
            // The guarded form turns statement_timeout off, so a cancel there is a request.
            Failure::Canceled { by_request } => {
                !by_request && statement_timeout && matches!(self.form, Form::Plain(_))
            }
            _ => false,
        };
        if cut_short && self.wait == Wait::Forever {
            // A session setting cut the wait short: wait again, in the server, with the
            // settings overridden for the one statement.
            return self.lock(state, Form::Guarded(0));
        }
        match failure {
            // A wait that may end (a try, a timeout) ran out.
            Failure::LockTimeout if self.wait != Wait::Forever => self.done(Ok(false)),
            _ => self.done(Err(error)),
        }
    }
}

impl Acquire {
    /// One step of the acquire, as [`Operation::step`] takes it.
    fn advance(&mut self, state: &mut LockState, mut reply: Option<Reply>) -> Step<bool> {
        if let AcquirePhase::Check(check) = &mut self.phase {
            // Only the connection being locked is there to check.
            match check.step(
                reply
                    .take()
                    .map(|reply| reply.map_err(|failed| failed.error)),
            ) {
                CheckStep::Send(_, statement) => {
                    return Step::Send(Request::Simple(statement));
                }
                CheckStep::Done(Err(error)) => return self.done(Err(error)),
                CheckStep::Done(Ok(())) => {
                    state.passed_check();
                    state.session = check.session();
                    self.phase = AcquirePhase::Owed;
                }
            }
        }
        if let AcquirePhase::Owed = self.phase {
            if let Some(step) = self.owed.step(state, &mut reply) {
                return step;
            }
            if let (Some(gate), Form::Plain(kind)) = (self.gate, self.form) {
                if state.gate_statements && self.token.is_none() && !self.prepares_gate {
                    self.phase = AcquirePhase::ExecutingGate;
                    return Step::Send(Request::Simple(sql::execute_gate(
                        self.hold,
                        kind,
                        gate,
                        state.names_session,
                    )));
                }
                self.phase = AcquirePhase::Gated;
                let statement = sql::gated_lock(self.hold, kind, gate, state.names_session);
                return Step::Send(Request::Simple(match self.token {
                    Some(token) => sql::wait_tag(token) + &statement,
                    None => statement,
                }));
            }
            // A tagged wait is sent as text; its release can still be prepared.
            let prepare = match (self.form, self.token) {
                (Form::Plain(_), Some(_)) => state
                    .statements
                    .note_acquire(Kind::Unlock, Shape::of(self.hold)),
                (Form::Plain(kind), None) => {
                    let kind = kind.fenced_if(state.fence.as_deref());
                    state.statements.note_acquire(kind, Shape::of(self.hold))
                }
                (Form::Guarded(_) | Form::Slice(_), _) => Vec::new(),
            };
            self.phase = AcquirePhase::Prepare(prepare);
        }
        match std::mem::replace(&mut self.phase, AcquirePhase::Done) {
            AcquirePhase::Check(_) | AcquirePhase::Owed | AcquirePhase::Done => {
                unreachable!("an acquire is stepped after it is done")
            }
            AcquirePhase::Prepare(mut kinds) => {
                // Preparing comes before the lock statement, so a failure here has locked
                // nothing.
                if let Some(Err(failed)) = reply {
                    return self.done(Err(failed.error));
                }
                match kinds.pop() {
                    Some(kind) => {
                        self.phase = AcquirePhase::Prepare(kinds);
                        Step::Send(Request::Prepare(kind, Shape::of(self.hold)))
                    }
                    None => self.lock(state, self.form),
                }
            }
            AcquirePhase::ExecutingGate => match reply.expect("the gate's reply") {
                // Not prepared on this session (a new one, a reset one, or one no check
                // passed on): the filtered statement decides, and prepares the gate where the
                // session's mark is found.
                Err(failed) if failed.failure == Failure::StatementMissing => {
                    self.prepares_gate = true;
                    self.phase = AcquirePhase::Owed;
                    self.advance(state, None)
                }
                // A row: the session is checked, and the lock statement ran.
                reply => {
                    self.phase = AcquirePhase::Gated;
                    self.advance(state, Some(reply))
                }
            },
            AcquirePhase::PreparingGate { reply: lock_reply } => match reply {
                Some(Err(failed)) if failed.failure == Failure::ConnectionLost => {
                    self.done(Err(failed.error))
                }
                // Prepared, or not (the next acquire tries again): the lock statement's
                // answer decides.
                _ => {
                    self.phase = AcquirePhase::Locking;
                    self.advance(state, Some(lock_reply))
                }
            },
            AcquirePhase::Gated => {
                let gate = self.gate.take();
                let reply = reply.expect("the gated lock statement's reply");
                if let Ok(row) = &reply {
                    if row.is_none() {
                        // No check passed on this session before: nothing was tried. The full
                        // check runs, and the lock statement after it marks the session.
                        self.mark_checked = gate;
                        let mut check = deployment::Check::new(false, state.route);
                        return match check.step(None) {
                            CheckStep::Send(_, statement) => {
                                self.phase = AcquirePhase::Check(check);
                                Step::Send(Request::Simple(statement))
                            }
                            CheckStep::Done(outcome) => {
                                self.done(outcome.map(|()| unreachable!("a check sends first")))
                            }
                        };
                    }
                    state.passed_check();
                    if let Route::CancelKey(pid) = state.route {
                        state.session = Some(pid.to_string());
                    }
                    if state.names_session {
                        state.named = row.as_ref().and_then(sql::read_named_session);
                    }
                    if let (true, Some(gate), Form::Plain(kind)) =
                        (self.prepares_gate, gate, self.form)
                        && (!state.names_session || state.named.is_some())
                    {
                        self.prepares_gate = false;
                        let named = state.named.filter(|_| state.names_session);
                        self.phase = AcquirePhase::PreparingGate { reply };
                        return Step::Send(Request::Simple(sql::prepare_gate(
                            self.hold, kind, gate, named,
                        )));
                    }
                }
                // The answer, or its failure, reads as the plain statement's.
                self.phase = AcquirePhase::Locking;
                self.step(state, Some(reply))
            }
            AcquirePhase::Locking => match reply.expect("the lock statement's reply") {
                Ok(row) => {
                    if self.names_in_statement(state) {
                        state.named = row.as_ref().and_then(sql::read_named_session);
                    }
                    let granted = match self.form {
                        Form::Plain(Kind::TryLock) | Form::Slice(_) => sql::read_bool(&row, 0),
                        Form::Plain(_) | Form::Guarded(_) => sql::read_granted(&row),
                    };
                    match granted {
                        Ok(true) => self.granted_with(state, sql::read_token(&row, 1)),
                        // Busy: a sliced wait goes on with its next slice, until its deadline.
                        Ok(false) => match self.slices.as_mut().and_then(Slices::next_millis) {
                            Some(millis) => self.lock(state, Form::Slice(millis)),
                            None => self.done(Ok(false)),
                        },
                        outcome => self.done(outcome),
                    }
                }
                Err(failed) => match failed.failure {
                    // The statement did not run: prepare again, from the next acquire on.
                    Failure::StatementMissing => {
                        state.statements.forget();
                        self.lock(state, self.form)
                    }
                    Failure::LockTimeout | Failure::Canceled { .. } => {
                        self.phase = AcquirePhase::Asking {
                            failure: failed.failure,
                            error: failed.error,
                        };
                        Step::Send(Request::Simple(sql::interrupted(self.hold)))
                    }
                    // A fenced statement can fail after its grant (in the token bump): ask.
                    Failure::Other if state.fence.is_some() => {
                        self.phase = AcquirePhase::Asking {
                            failure: failed.failure,
                            error: failed.error,
                        };
                        Step::Send(Request::Simple(sql::interrupted(self.hold)))
                    }
                    Failure::ConnectionLost | Failure::TransactionAborted | Failure::Other => {
                        self.done(Err(failed.error))
                    }
                },
            },
            AcquirePhase::Fencing => match reply.expect("the token bump's reply") {
                Ok(row) => match sql::read_token(&row, 0) {
                    Some(token) => self.granted_with(state, Some(token)),
                    None => self.undo(Error::backend("the token bump returned no token")),
                },
                Err(failed) if failed.failure == Failure::ConnectionLost => {
                    self.done(Err(failed.error))
                }
                Err(failed) => self.undo(failed.error),
            },
            AcquirePhase::Naming => match reply.expect("the session's name") {
                Ok(row) => match sql::read_session(row.iter()) {
                    Ok(named) => {
                        state.named = Some(named);
                        self.granted(state)
                    }
                    Err(error) => self.undo(error),
                },
                Err(failed) if failed.failure == Failure::ConnectionLost => {
                    self.done(Err(failed.error))
                }
                Err(failed) => self.undo(failed.error),
            },
            AcquirePhase::Undoing { error } => {
                if let Some(Err(failed)) = reply {
                    // The lock could not be given back: the session holds it until it ends,
                    // and the cleanup is owed until it runs.
                    if failed.failure != Failure::ConnectionLost {
                        state.owed.push(self.hold);
                    }
                }
                self.done(Err(error))
            }
            AcquirePhase::Asking { failure, error } => {
                match reply.expect("the pg_locks answer") {
                    Ok(row) => {
                        let (held, statement_timeout) =
                            match (sql::read_bool(&row, 0), sql::read_bool(&row, 1)) {
                                (Ok(held), Ok(on)) => (held, on),
                                (Err(error), _) | (_, Err(error)) => return self.done(Err(error)),
                            };
                        if held {
                            if failure == Failure::Other {
                                // A fenced statement that failed after its grant: no token.
                                return self.undo(error);
                            }
                            return self.granted_with(state, None);
                        }
                        self.not_granted(state, failure, error, statement_timeout)
                    }
                    Err(failed) if failed.failure == Failure::ConnectionLost => {
                        // The session is gone: whatever it was granted is freed.
                        self.done(Err(failed.error))
                    }
                    Err(_) => {
                        // Typically 25P02: the failed lock statement aborted the user's
                        // transaction. The lock may have come with the failure; the cleanup
                        // is owed and runs before the object's next operation.
                        state.owed.push(self.hold);
                        match (failure, self.wait) {
                            (Failure::LockTimeout, Wait::For(_)) => self.done(Ok(false)),
                            _ => self.done(Err(error)),
                        }
                    }
                }
            }
        }
    }
}

impl Operation for Acquire {
    type Output = bool;

    /// [`Acquire::advance`], with the fence table named in a missing-table error (the
    /// driver's error cannot name it).
    fn step(&mut self, state: &mut LockState, reply: Option<Reply>) -> Step<bool> {
        match self.advance(state, reply) {
            Step::Done(Err(error)) => {
                Step::Done(Err(error.naming_fence_table(state.fence.as_deref())))
            }
            step => step,
        }
    }

    fn in_flight(&self) -> InFlight {
        match self.phase {
            AcquirePhase::Owed => self.owed.in_flight(),
            AcquirePhase::Gated | AcquirePhase::ExecutingGate => InFlight::Lock {
                hold: self.hold,
                waiting: self.token,
            },
            AcquirePhase::Locking => InFlight::Lock {
                hold: self.hold,
                waiting: self.token,
            },
            // The wait is over: only its outcome is unknown. The lock may be held while its
            // token is bumped or it is given back.
            AcquirePhase::Asking { .. }
            | AcquirePhase::Fencing
            | AcquirePhase::Naming
            | AcquirePhase::PreparingGate { .. }
            | AcquirePhase::Undoing { .. } => InFlight::Lock {
                hold: self.hold,
                waiting: None,
            },
            // The check only reads.
            AcquirePhase::Check(_) | AcquirePhase::Prepare(_) | AcquirePhase::Done => {
                InFlight::Nothing
            }
        }
    }
}

#[derive(Debug)]
enum ReleasePhase {
    Start,
    Unlocking,
    Done,
}

/// `release` of a session lock.
#[derive(Debug)]
pub(crate) struct Release {
    hold: Hold,
    /// What the session owes goes first.
    owed: Owed,
    phase: ReleasePhase,
}

impl Release {
    /// Starts a release: [`Error::NotAcquired`] when the object holds nothing. From the first
    /// step the object counts as unlocked, because the unlock is on its way; a refused unlock
    /// puts the hold back.
    pub(crate) fn start(state: &LockState) -> Result<Release> {
        let hold = state.held.ok_or(Error::NotAcquired)?;
        Ok(Release {
            hold,
            owed: Owed::Unchecked,
            phase: ReleasePhase::Start,
        })
    }

    fn unlock(&mut self, state: &mut LockState) -> Step<()> {
        state.held = None;
        state.token = None;
        self.phase = ReleasePhase::Unlocking;
        if state.prepared(Kind::Unlock, self.hold).is_some() {
            Step::Send(Request::Prepared(Kind::Unlock, self.hold))
        } else {
            Step::Send(Request::Simple(sql::unlock(self.hold)))
        }
    }
}

impl Operation for Release {
    type Output = ();

    fn step(&mut self, state: &mut LockState, mut reply: Option<Reply>) -> Step<()> {
        match self.phase {
            ReleasePhase::Start => match self.owed.step(state, &mut reply) {
                Some(step) => step,
                None => self.unlock(state),
            },
            ReleasePhase::Done => unreachable!("a release is stepped after it is done"),
            ReleasePhase::Unlocking => {
                self.phase = ReleasePhase::Done;
                match reply.expect("the unlock's reply") {
                    Ok(row) => {
                        let session = row.as_ref().and_then(|row| row.get(1).cloned().flatten());
                        if let (Some(known), Some(session)) = (&state.session, &session) {
                            if known != session {
                                // The unlock ran on another server session than this
                                // connection's: a pooler moves statements between sessions,
                                // and the lock may still be held where it was taken.
                                return Step::Done(Err(Error::CannotExclude {
                                    deployment: dlock_core::Deployment::TransactionPooler,
                                }));
                            }
                        }
                        if state.session.is_none() {
                            state.session = session;
                        }
                        Step::Done(match sql::read_bool(&row, 0) {
                            Ok(true) => Ok(()),
                            Ok(false) => Err(Error::NotHeld),
                            Err(error) => Err(error),
                        })
                    }
                    Err(failed) => match failed.failure {
                        Failure::StatementMissing => {
                            state.statements.forget();
                            self.unlock(state)
                        }
                        // The session, and its locks, are gone.
                        Failure::ConnectionLost => Step::Done(Err(failed.error)),
                        // The unlock did not run (25P02: the user's transaction is aborted):
                        // the object still holds the lock, and can release it after rollback.
                        _ => {
                            state.held = Some(self.hold);
                            Step::Done(Err(failed.error))
                        }
                    },
                }
            }
        }
    }

    fn in_flight(&self) -> InFlight {
        match self.phase {
            ReleasePhase::Unlocking => InFlight::Unlock(self.hold),
            ReleasePhase::Start => self.owed.in_flight(),
            ReleasePhase::Done => InFlight::Nothing,
        }
    }
}

/// `verify` of a session lock: does the session hold it now? A lost connection is `false`.
#[derive(Debug)]
pub(crate) struct Verify {
    hold: Hold,
    owed: Owed,
    asked: bool,
}

impl Verify {
    pub(crate) fn start(state: &LockState) -> Result<Verify> {
        let hold = match state.held {
            Some(hold) => hold,
            None => state.hold()?,
        };
        Ok(Verify {
            hold,
            owed: Owed::Unchecked,
            asked: false,
        })
    }
}

impl Operation for Verify {
    type Output = bool;

    fn step(&mut self, state: &mut LockState, mut reply: Option<Reply>) -> Step<bool> {
        if !self.asked {
            if let Some(step) = self.owed.step(state, &mut reply) {
                return match step {
                    Step::Done(Err(Error::ConnectionLost { .. })) => Step::Done(Ok(false)),
                    step => step,
                };
            }
            self.asked = true;
            return Step::Send(Request::Simple(sql::held_by_session(self.hold)));
        }
        match reply.expect("the pg_locks answer") {
            Ok(row) => Step::Done(sql::read_bool(&row, 0)),
            Err(failed) if failed.failure == Failure::ConnectionLost => Step::Done(Ok(false)),
            Err(failed) => Step::Done(Err(failed.error)),
        }
    }

    fn in_flight(&self) -> InFlight {
        self.owed.in_flight()
    }
}

/// Runs the owed cleanup, if any: before the connection is given back.
#[derive(Debug)]
pub(crate) struct PayOwed {
    owed: Owed,
}

impl PayOwed {
    pub(crate) fn start() -> PayOwed {
        PayOwed {
            owed: Owed::Unchecked,
        }
    }
}

impl Operation for PayOwed {
    type Output = ();

    fn step(&mut self, state: &mut LockState, mut reply: Option<Reply>) -> Step<()> {
        match self.owed.step(state, &mut reply) {
            Some(step) => step,
            None => Step::Done(Ok(())),
        }
    }

    fn in_flight(&self) -> InFlight {
        self.owed.in_flight()
    }
}

/// What a transaction lock object adds to each acquire: the hot standby check, a fence table,
/// and the token of its last fenced acquire (kept behind `&self`, through which transaction
/// locks acquire).
#[derive(Debug)]
pub(crate) struct XactOptions {
    pub(crate) check_deployment: bool,
    pub(crate) fence: Option<String>,
    /// The last token, 0 for none.
    last_token: AtomicU64,
}

impl Clone for XactOptions {
    fn clone(&self) -> Self {
        XactOptions {
            check_deployment: self.check_deployment,
            fence: self.fence.clone(),
            last_token: AtomicU64::new(self.last_token.load(Ordering::Relaxed)),
        }
    }
}

impl Default for XactOptions {
    fn default() -> Self {
        XactOptions {
            check_deployment: true,
            fence: None,
            last_token: AtomicU64::new(0),
        }
    }
}

impl XactOptions {
    /// The token of the last fenced acquire that got the lock.
    pub(crate) fn last_token(&self) -> Option<u64> {
        Some(self.last_token.load(Ordering::Relaxed)).filter(|token| *token > 0)
    }

    /// The outcome of an acquire, its token noted: a fenced grant without a token is an
    /// error (the lock stays held until the transaction ends).
    pub(crate) fn noted(&self, outcome: XactOutcome) -> XactOutcome {
        match outcome {
            XactOutcome::Answered(true, token) if self.fence.is_some() => match token {
                Some(token) => {
                    self.last_token.store(token, Ordering::Relaxed);
                    XactOutcome::Answered(true, Some(token))
                }
                None => XactOutcome::Failed(Error::backend(
                    "the transaction lock was granted without its fencing token; roll the \
                     transaction back",
                )),
            },
            XactOutcome::Failed(error) => {
                XactOutcome::Failed(error.naming_fence_table(self.fence.as_deref()))
            }
            outcome => outcome,
        }
    }
}

/// A transaction lock's statement for `wait`: a try, or a wait no session setting can cut
/// short (`lock_timeout` as asked, `statement_timeout` off).
/// A waiting statement is tagged with `token` when a side connection may have to end it.
///
/// Unless the options turn it off, the statement refuses a hot standby
/// ([`sql::refusing_standby`]); with a fence table it bumps the key's token when granted
/// ([`sql::fenced`]).
pub(crate) fn xact_statement(
    hold: Hold,
    wait: Wait,
    token: Option<u64>,
    options: &XactOptions,
) -> String {
    let statement = match wait {
        Wait::Never => sql::try_lock(hold, Scope::Transaction),
        Wait::Forever => sql::guarded_lock(hold, Scope::Transaction, 0),
        Wait::For(timeout) => {
            sql::guarded_lock(hold, Scope::Transaction, sql::lock_timeout_millis(timeout))
        }
    };
    let statement = match &options.fence {
        Some(table) => sql::fenced(&statement, hold, table, wait == Wait::Never),
        None => statement,
    };
    let statement = match (options.check_deployment, &options.fence, wait) {
        (false, _, _) => statement,
        // A fenced try is one statement whose upsert a standby refuses before any column
        // runs: the check goes in front, as a statement of its own.
        (true, Some(_), Wait::Never) => sql::standby_check() + &statement,
        (true, _, _) => sql::refusing_standby(&statement),
    };
    // The tag comes first: a side connection finds it at the start of the query's text. A try
    // never waits, so it is never tagged.
    match token {
        Some(token) if wait != Wait::Never => sql::wait_tag(token) + &statement,
        _ => statement,
    }
}

/// A transaction lock's sliced wait (the tokio flavour without a side connection): a try,
/// then slices of [`sql::sliced_lock`] until the lock is granted or the wait's deadline has
/// passed. A slice that times out leaves the transaction as it was.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
#[derive(Debug)]
pub(crate) struct XactSlices {
    hold: Hold,
    tried: bool,
    slices: Slices,
    options: XactOptions,
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
impl XactSlices {
    /// A sliced wait, whose first statement refuses a hot standby as `options` say.
    pub(crate) fn new(hold: Hold, wait: Wait, options: &XactOptions) -> XactSlices {
        XactSlices {
            hold,
            tried: false,
            slices: Slices::new(wait),
            options: options.clone(),
        }
    }

    /// The next statement to send, or `None` once the wait is over, not granted.
    pub(crate) fn next_statement(&mut self) -> Option<String> {
        if !std::mem::replace(&mut self.tried, true) {
            return Some(xact_statement(self.hold, Wait::Never, None, &self.options));
        }
        let millis = self.slices.next_millis()?;
        let fence = self.options.fence.as_deref();
        Some(sql::sliced_lock(
            self.hold,
            Scope::Transaction,
            millis,
            fence,
        ))
    }

    /// Reads the reply of the statement last sent: each answers a boolean, granted, and a
    /// fenced one the token.
    pub(crate) fn read(&self, reply: Reply) -> XactOutcome {
        let answer = reply.and_then(|row| {
            let granted = sql::read_bool(&row, 0).map_err(Failed::from_error)?;
            Ok((granted, sql::read_token(&row, 1)))
        });
        match answer {
            Ok((granted, token)) => XactOutcome::Answered(granted, token),
            Err(failed) => XactOutcome::Failed(failed.error),
        }
    }
}

/// What a transaction lock statement's reply means.
#[derive(Debug)]
pub(crate) enum XactOutcome {
    /// Granted (`true`) or busy (`false`), with the fencing token of a fenced grant; a
    /// savepoint around it is released.
    Answered(bool, Option<u64>),
    /// The wait ran out: roll the savepoint back (which also frees a lock granted as the
    /// timer fired) and answer `false`.
    TimedOut,
    /// Failed: roll the savepoint back (which frees a lock granted with the failure) and
    /// return the error.
    Failed(Error),
}

impl XactOutcome {
    /// The outcome of a statement sent without a savepoint, where a timeout is just `false`.
    pub(crate) fn into_result(self) -> Result<bool> {
        match self {
            XactOutcome::Answered(granted, _) => Ok(granted),
            XactOutcome::TimedOut => Ok(false),
            XactOutcome::Failed(error) => Err(error),
        }
    }
}

/// Reads a transaction lock statement's reply. A transaction lock needs no `pg_locks`
/// question: it ends with its transaction, or with the savepoint it was taken in.
pub(crate) fn xact_outcome(wait: Wait, reply: Reply) -> XactOutcome {
    match reply {
        Ok(row) => {
            let answer = match wait {
                Wait::Never => sql::read_bool(&row, 0),
                Wait::Forever | Wait::For(_) => sql::read_granted(&row),
            };
            match answer {
                Ok(granted) => XactOutcome::Answered(granted, sql::read_token(&row, 1)),
                Err(error) => XactOutcome::Failed(error),
            }
        }
        Err(failed) if failed.failure == Failure::LockTimeout && matches!(wait, Wait::For(_)) => {
            XactOutcome::TimedOut
        }
        Err(failed) => XactOutcome::Failed(failed.error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dlock_core::PgKey;
    use std::time::Duration;

    /// Transaction lock options without the standby check, which its own tests cover.
    fn unchecked() -> XactOptions {
        XactOptions {
            check_deployment: false,
            ..XactOptions::default()
        }
    }

    /// A lock's state past its deployment check, which its own tests cover.
    fn state() -> LockState {
        let mut state = LockState::new(Key::Int(7));
        state.policy = KeyPolicy::default();
        state.check_deployment = false;
        state
    }

    const HOLD: Hold = Hold {
        key: PgKey::BigInt(7),
        mode: Mode::Exclusive,
    };

    fn row(values: &[&str]) -> Reply {
        Ok(Some(values.iter().map(|v| Some((*v).to_owned())).collect()))
    }

    fn failed(failure: Failure) -> Reply {
        let error = match failure {
            Failure::Canceled { .. } => Error::Canceled { source: None },
            Failure::ConnectionLost => Error::ConnectionLost { source: None },
            Failure::TransactionAborted => Error::TransactionAborted { source: None },
            _ => Error::backend("synthetic"),
        };
        Err(Failed { failure, error })
    }

    fn sent<T: std::fmt::Debug>(step: Step<T>) -> Request {
        match step {
            Step::Send(request) => request,
            Step::Done(outcome) => panic!("expected a request, got {outcome:?}"),
        }
    }

    fn done<T>(step: Step<T>) -> Result<T> {
        match step {
            Step::Done(outcome) => outcome,
            Step::Send(request) => panic!("expected an outcome, got {request:?}"),
        }
    }

    fn simple(request: Request) -> String {
        match request {
            Request::Simple(sql) => sql,
            other => panic!("expected a simple query, got {other:?}"),
        }
    }

    /// The reply of a gated lock statement on a session no check passed on: no row.
    fn not_gated() -> Option<Reply> {
        Some(Ok(None))
    }

    #[test]
    fn a_connection_proven_direct_by_its_cancel_key_marks_its_session_for_later_locks() {
        let mut state = state();
        state.check_deployment = true;
        state.route = Route::CancelKey(77);
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        let gated = simple(sent(op.step(&mut state, None)));
        assert!(
            gated.starts_with("SELECT pg_try_advisory_lock(7) WHERE current_setting('dlock.deployment_checked', true) = '"),
            "{gated}"
        );
        assert!(
            gated.ends_with("p'"),
            "only a proof by the cancel key: {gated}"
        );
        assert_eq!(
            op.in_flight(),
            InFlight::Lock {
                hold: HOLD,
                waiting: None
            }
        );
        // Not checked before: the check proves the session by the key's pid, in one statement.
        let check = simple(sent(op.step(&mut state, not_gated())));
        assert!(
            check.starts_with("SELECT pg_is_in_recovery(), pg_backend_pid()"),
            "{check}"
        );
        let direct = Ok(Some(vec![
            Some("f".to_owned()),
            Some("77".to_owned()),
            Some("x".to_owned()),
            Some("PostgreSQL 15.18".to_owned()),
            None,
        ]));
        let lock = simple(sent(op.step(&mut state, Some(direct))));
        assert!(
            lock.starts_with(
                "SELECT pg_try_advisory_lock(7), set_config('dlock.deployment_checked', '"
            ),
            "{lock}"
        );
        assert!(lock.ends_with("p', false)"), "{lock}");
        assert!(done(op.step(&mut state, Some(row(&["t", "x"])))).unwrap());
        assert!(!state.check_deployment, "checked once per lock object");
        assert_eq!(state.session.as_deref(), Some("77"));

        // The next object: its gated statement finds the mark and locks, in one statement.
        let mut state = self::state();
        state.check_deployment = true;
        state.route = Route::CancelKey(77);
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        assert!(!done(op.step(&mut state, Some(row(&["f"])))).unwrap());
        assert!(!state.check_deployment);
        assert_eq!(state.session.as_deref(), Some("77"));

        // A pooler's session: refused, and checked again next time.
        let mut state = self::state();
        state.check_deployment = true;
        state.route = Route::CancelKey(77);
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(&mut state, not_gated()));
        let pooler = Ok(Some(vec![
            Some("f".to_owned()),
            Some("12".to_owned()),
            Some("x".to_owned()),
            Some("PostgreSQL 15.18".to_owned()),
            None,
        ]));
        assert!(matches!(
            done(op.step(&mut state, Some(pooler))),
            Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::UnprovenPooler
            })
        ));
        assert_eq!(state.held(), None);
        assert!(state.check_deployment, "checked again next time");

        // A fenced try checks first as before.
        let mut state = self::state();
        state.check_deployment = true;
        state.route = Route::CancelKey(77);
        state.fence = Some("dlock_fence".to_owned());
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        let first = simple(sent(op.step(&mut state, None)));
        assert!(first.starts_with("SELECT pg_is_in_recovery()"), "{first}");
    }

    #[test]
    fn a_plain_acquire_sends_one_statement_and_holds_on_a_row() {
        let mut state = state();
        let mut op = Acquire::start(&state, Wait::Forever).unwrap();
        let sql = simple(sent(op.step(&mut state, None)));
        assert_eq!(sql, "SELECT pg_advisory_lock(7)");
        assert_eq!(
            op.in_flight(),
            InFlight::Lock {
                hold: HOLD,
                waiting: None
            }
        );
        assert!(done(op.step(&mut state, Some(row(&[""])))).unwrap());
        assert_eq!(state.held(), Some(HOLD));
        assert_eq!(op.in_flight(), InFlight::Nothing);
        assert!(matches!(
            Acquire::start(&state, Wait::Never),
            Err(Error::AlreadyAcquired)
        ));
    }

    #[test]
    fn a_try_reads_its_boolean() {
        let mut state = state();
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        let sql = simple(sent(op.step(&mut state, None)));
        assert_eq!(sql, "SELECT pg_try_advisory_lock(7)");
        assert!(!done(op.step(&mut state, Some(row(&["f"])))).unwrap());
        assert_eq!(state.held(), None);
    }

    #[test]
    fn a_session_checked_once_is_not_checked_again_by_the_next_lock_object() {
        // The first lock statement asks for the mark of a check passed on its session.
        let mut state = LockState::new(Key::Int(7));
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        let gated = simple(sent(op.step(&mut state, None)));
        assert!(
            gated.starts_with("SELECT pg_try_advisory_lock(7) WHERE current_setting('dlock.deployment_checked', true) = '"),
            "{gated}"
        );
        // None there: nothing was locked, and the full check runs.
        let first = simple(sent(op.step(&mut state, not_gated())));
        assert!(first.contains("pg_is_in_recovery()"), "{first}");
        assert_eq!(op.in_flight(), InFlight::Nothing);
        let token = first.split('\'').nth(3).unwrap().to_owned();
        let second = simple(sent(op.step(&mut state, Some(row(&["f", "41", ""])))));
        assert!(second.starts_with("SELECT pg_backend_pid()"), "{second}");
        // Passed: the lock statement marks its session.
        let lock = simple(sent(op.step(&mut state, Some(row(&["41", &token])))));
        // The mark of a check that could only infer: the gate's second.
        let mark = gated
            .split('\'')
            .nth(3)
            .expect("the gate names the mark")
            .to_owned();
        assert!(mark.ends_with('c'), "{mark}");
        assert_eq!(
            lock,
            format!(
                "SELECT pg_try_advisory_lock(7), set_config('dlock.deployment_checked', '{mark}', false)"
            )
        );
        assert!(done(op.step(&mut state, Some(row(&["t", &mark])))).unwrap());
        assert!(!state.check_deployment, "checked once per lock object");

        // The next object on that session: its gated statement locks at once.
        let mut state = LockState::new(Key::Int(7));
        let mut op = Acquire::start(&state, Wait::Forever).unwrap();
        let gated = simple(sent(op.step(&mut state, None)));
        assert!(
            gated.starts_with("SELECT pg_advisory_lock(7) WHERE"),
            "{gated}"
        );
        assert!(done(op.step(&mut state, Some(row(&[""])))).unwrap());
        assert_eq!(state.held(), Some(HOLD));
        assert!(!state.check_deployment);
    }

    #[test]
    fn the_first_acquire_checks_the_deployment_before_it_locks() {
        // A standby: refused before anything is locked, and checked again next time.
        let mut state = LockState::new(Key::Int(7));
        let mut op = Acquire::start(&state, Wait::Forever).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(&mut state, not_gated()));
        assert_eq!(op.in_flight(), InFlight::Nothing);
        let outcome = done(op.step(&mut state, Some(row(&["t", "41"]))));
        assert!(matches!(
            outcome,
            Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::HotStandby
            })
        ));
        assert_eq!(state.held(), None);
        assert!(state.check_deployment);

        // A session that moved between the two statements: a transaction pooler.
        let mut op = Acquire::start(&state, Wait::Forever).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(&mut state, not_gated()));
        sent(op.step(&mut state, Some(row(&["f", "41", ""]))));
        let outcome = done(op.step(&mut state, Some(row(&["42", ""]))));
        assert!(matches!(
            outcome,
            Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::TransactionPooler
            })
        ));

        // A timed wait is not gated: the check goes first.
        let mut op = Acquire::start(&state, Wait::For(Duration::from_secs(1))).unwrap();
        let first = simple(sent(op.step(&mut state, None)));
        assert!(first.starts_with("SELECT pg_is_in_recovery()"), "{first}");
        assert_eq!(op.in_flight(), InFlight::Nothing);
    }

    /// A lock on key 7 that names its session, every check on, on a connection of `route`.
    fn naming(route: Route) -> LockState {
        let mut state = LockState::new(Key::Int(7));
        state.names_session = true;
        state.route = route;
        state
    }

    #[test]
    fn a_lock_that_names_its_session_reads_the_name_from_its_lock_statement_or_asks() {
        let named = SessionId { id: 42, tag: 1234 };
        // Gated: the name rides in the lock statement, whether or not the lock is free.
        let mut state = naming(Route::Unknown);
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        let gated = simple(sent(op.step(&mut state, None)));
        assert!(
            gated.contains(
                "pg_try_advisory_lock(7), pg_backend_pid(), \
                 current_setting('dlock.session_started', true)"
            ),
            "{gated}"
        );
        assert!(gated.contains(" WHERE current_setting("), "{gated}");
        assert!(!done(op.step(&mut state, Some(row(&["f", "42", "1234"])))).unwrap());
        assert_eq!(state.named(), Some(named));

        // Unmarked: after the full check, the statement that marks the session names it.
        let mut state = naming(Route::CancelKey(42));
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        let mut reply = not_gated();
        let marking = loop {
            let sql = simple(sent(op.step(&mut state, reply.take())));
            if sql.contains("pg_try_advisory_lock") {
                break sql;
            }
            // The check's statements, answered as a direct connection's.
            reply = Some(row(&["f", "42", "", "42"]));
        };
        assert!(
            marking.contains("pg_try_advisory_lock(7), pg_backend_pid(), current_setting("),
            "{marking}"
        );
        assert!(
            marking.contains("set_config('dlock.deployment_checked'"),
            "{marking}"
        );
        assert!(done(op.step(&mut state, Some(row(&["t", "42", "1234", "m"])))).unwrap());
        assert_eq!(state.named(), Some(named));

        // A session that does not keep its start yet (new, or reset): the lock statement's
        // name is incomplete, and one statement after the grant reads and keeps it.
        let mut state = naming(Route::CancelKey(42));
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        let naming = simple(sent(op.step(&mut state, Some(row(&["t", "42", ""])))));
        assert_eq!(naming, sql::pooled_session());
        assert!(
            naming.contains("set_config('dlock.session_started'"),
            "{naming}"
        );
        assert!(done(op.step(&mut state, Some(row(&["42", "1234"])))).unwrap());
        assert_eq!(state.named(), Some(named));

        // A form that cannot carry it (timed): one more statement after the grant, before
        // the lock counts as held; a failure there gives the grant back.
        let mut state = naming_state();
        let mut op = Acquire::start(&state, Wait::For(Duration::from_millis(250))).unwrap();
        sent(op.step(&mut state, None));
        let naming = simple(sent(op.step(&mut state, Some(row(&["", "", ""])))));
        assert_eq!(naming, sql::pooled_session());
        assert_eq!(state.held(), None);
        assert_eq!(
            op.in_flight(),
            InFlight::Lock {
                hold: HOLD,
                waiting: None
            }
        );
        assert!(done(op.step(&mut state, Some(row(&["42", "1234"])))).unwrap());
        assert_eq!(state.named(), Some(named));
        assert_eq!(state.held(), Some(HOLD));

        let mut state = naming_state();
        let mut op = Acquire::start(&state, Wait::For(Duration::from_millis(250))).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(&mut state, Some(row(&["", "", ""]))));
        let give_back = simple(sent(op.step(&mut state, Some(failed(Failure::Other)))));
        assert_eq!(give_back, sql::unlock(HOLD));
        assert!(done(op.step(&mut state, Some(row(&["t"])))).is_err());
        assert_eq!(state.held(), None);
    }

    #[test]
    fn a_lock_without_checks_names_its_session_in_its_lock_statement() {
        let named = SessionId { id: 42, tag: 1234 };
        for wait in [Wait::Never, Wait::Forever] {
            let mut state = naming(Route::Unknown);
            state.check_deployment = false;
            let mut op = Acquire::start(&state, wait).unwrap();
            let lock = simple(sent(op.step(&mut state, None)));
            assert!(
                lock.contains(", pg_backend_pid(), current_setting('dlock.session_started', true)"),
                "{lock}"
            );
            assert!(!lock.contains(" WHERE "), "{lock}");
            // Granted with the name read: no statement more.
            let granted = if wait == Wait::Never { "t" } else { "" };
            assert!(done(op.step(&mut state, Some(row(&[granted, "42", "1234"])))).unwrap());
            assert_eq!(state.named(), Some(named));
        }

        // Fenced, the token takes the columns: the name comes from a statement after.
        let mut state = naming(Route::Unknown);
        state.check_deployment = false;
        state.fence = Some("dlock_fence".to_owned());
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        let lock = simple(sent(op.step(&mut state, None)));
        assert!(!lock.contains("pg_backend_pid()"), "{lock}");
        let naming = simple(sent(op.step(&mut state, Some(row(&["t", "9"])))));
        assert_eq!(naming, sql::pooled_session());
        assert!(done(op.step(&mut state, Some(row(&["42", "1234"])))).unwrap());
        assert_eq!(state.named(), Some(named));
        assert_eq!(state.token, Some(9));
    }

    #[test]
    fn a_pooled_lock_goes_through_its_sessions_prepared_gate_and_prepares_it_where_missing() {
        let named = SessionId { id: 42, tag: 1234 };
        // Prepared: one statement, whose row says the lock, the pid and the start.
        let mut state = naming(Route::Unknown);
        state.gate_statements = true;
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        let gate = simple(sent(op.step(&mut state, None)));
        assert!(gate.starts_with("EXECUTE dlock_"), "{gate}");
        assert!(gate.ends_with("_tryx1n(7)"), "{gate}");
        assert_eq!(
            op.in_flight(),
            InFlight::Lock {
                hold: HOLD,
                waiting: None
            }
        );
        assert!(done(op.step(&mut state, Some(row(&["t", "42", "1234"])))).unwrap());
        assert_eq!(state.named(), Some(named));
        assert!(!state.check_deployment, "the gate proves the check passed");
        Release::start(&state).unwrap();

        // Missing on a checked session: the filtered statement locks, then the gate is
        // prepared with the session's name, before the lock counts as held.
        let mut state = naming(Route::Unknown);
        state.gate_statements = true;
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        let first = simple(sent(op.step(&mut state, None)));
        let gated = simple(sent(
            op.step(&mut state, Some(failed(Failure::StatementMissing))),
        ));
        assert!(gated.contains(" WHERE current_setting("), "{gated}");
        let prepare = simple(sent(op.step(&mut state, Some(row(&["t", "42", "1234"])))));
        let name = first.trim_start_matches("EXECUTE ").trim_end_matches("(7)");
        assert_eq!(
            prepare,
            format!("PREPARE {name}(int8) AS SELECT pg_try_advisory_lock($1), 42, '1234'::text")
        );
        assert_eq!(state.held(), None);
        assert!(matches!(op.in_flight(), InFlight::Lock { .. }));
        // A failed prepare leaves the gate for the next acquire to prepare: the lock holds.
        assert!(done(op.step(&mut state, Some(failed(Failure::Other)))).unwrap());
        assert_eq!(state.held(), Some(HOLD));
        assert_eq!(state.named(), Some(named));

        // Missing on a session no check passed on: nothing is prepared, the whole check
        // runs as for the filtered statement alone.
        let mut state = naming(Route::Unknown);
        state.gate_statements = true;
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(&mut state, Some(failed(Failure::StatementMissing))));
        let check = simple(sent(op.step(&mut state, not_gated())));
        assert!(check.starts_with("SELECT pg_is_in_recovery()"), "{check}");

        // Any other failure of the gate reads as the lock statement's.
        let mut state = naming(Route::Unknown);
        state.gate_statements = true;
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        assert!(done(op.step(&mut state, Some(failed(Failure::ConnectionLost)))).is_err());
        assert_eq!(state.held(), None);
    }

    /// [`state`], naming its session.
    fn naming_state() -> LockState {
        let mut state = state();
        state.names_session = true;
        state
    }

    #[test]
    fn an_unlock_that_runs_on_another_session_than_the_locks_is_refused() {
        let mut state = state();
        state.session = Some("41".to_owned());
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        assert!(done(op.step(&mut state, Some(row(&["t"])))).unwrap());
        let mut release = Release::start(&state).unwrap();
        sent(release.step(&mut state, None));
        // The server says it held the lock, but on a session that is not this connection's.
        let outcome = done(release.step(&mut state, Some(row(&["t", "42"]))));
        assert!(matches!(
            outcome,
            Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::TransactionPooler
            })
        ));
        // An object that never learned its session learns it from its first unlock.
        let mut state = self::state();
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        done(op.step(&mut state, Some(row(&["t"])))).unwrap();
        let mut release = Release::start(&state).unwrap();
        sent(release.step(&mut state, None));
        done(release.step(&mut state, Some(row(&["t", "41"])))).unwrap();
        assert_eq!(state.session.as_deref(), Some("41"));
    }

    #[test]
    fn a_sliced_wait_tries_first_then_waits_in_growing_slices_until_its_deadline() {
        fn sliced() -> LockState {
            let mut state = state();
            state.waits = Waits::Sliced;
            state
        }
        let mut state = sliced();
        let mut op = Acquire::start(&state, Wait::Forever).unwrap();
        assert_eq!(
            simple(sent(op.step(&mut state, None))),
            "SELECT pg_try_advisory_lock(7)"
        );
        let mut timeouts = Vec::new();
        let mut reply = row(&["f"]);
        for _ in 0..6 {
            let sql = simple(sent(op.step(&mut state, Some(reply))));
            assert!(sql.contains("EXCEPTION WHEN lock_not_available"), "{sql}");
            assert!(sql.contains("PERFORM pg_advisory_lock(7)"), "{sql}");
            assert!(sql.contains("'statement_timeout', '0'"), "{sql}");
            let millis = sql
                .split("set_config('lock_timeout', '")
                .nth(1)
                .and_then(|rest| rest.split('\'').next())
                .unwrap();
            timeouts.push(millis.parse::<u32>().unwrap());
            // A dropped slice leaves the cleanup, not a fence: nothing needs a cancel.
            assert_eq!(
                op.in_flight(),
                InFlight::Lock {
                    hold: HOLD,
                    waiting: None
                }
            );
            reply = row(&["f"]);
        }
        assert_eq!(timeouts, [50, 100, 200, 400, 400, 400]);
        assert!(done(op.step(&mut state, Some(row(&["t"])))).unwrap());
        assert_eq!(state.held(), Some(HOLD));

        // A timed wait ends no earlier than its deadline, and its last slice is cut to it.
        let mut state = sliced();
        let started = Instant::now();
        let timeout = Duration::from_millis(30);
        let mut op = Acquire::start(&state, Wait::For(timeout)).unwrap();
        let mut request = sent(op.step(&mut state, None));
        loop {
            match op.step(&mut state, Some(row(&["f"]))) {
                Step::Send(next) => request = next,
                Step::Done(outcome) => {
                    assert!(!outcome.unwrap());
                    break;
                }
            }
        }
        assert!(started.elapsed() >= timeout);
        assert!(simple(request).contains("set_config('lock_timeout', '"));
        // A cancel request inside a slice asks pg_locks, as any interruption does.
        let mut state = sliced();
        let mut op = Acquire::start(&state, Wait::Forever).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(&mut state, Some(row(&["f"]))));
        let question = simple(sent(op.step(
            &mut state,
            Some(failed(Failure::Canceled { by_request: true })),
        )));
        assert_eq!(question, sql::interrupted(HOLD));
        assert!(done(op.step(&mut state, Some(row(&["t", "f"])))).unwrap());
    }

    #[test]
    fn a_sliced_transaction_lock_tries_then_slices_and_reads_one_boolean() {
        let mut slices = XactSlices::new(HOLD, Wait::Forever, &unchecked());
        assert_eq!(
            slices.next_statement().unwrap(),
            "SELECT pg_try_advisory_xact_lock(7)"
        );
        let slice = slices.next_statement().unwrap();
        assert!(
            slice.contains("PERFORM pg_advisory_xact_lock(7)"),
            "{slice}"
        );
        assert!(matches!(
            slices.read(row(&["f"])),
            XactOutcome::Answered(false, None)
        ));
        assert!(matches!(
            slices.read(row(&["t"])),
            XactOutcome::Answered(true, None)
        ));
        assert!(matches!(
            slices.read(failed(Failure::Other)),
            XactOutcome::Failed(_)
        ));
        let mut slices = XactSlices::new(HOLD, Wait::For(Duration::from_millis(1)), &unchecked());
        slices.next_statement().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(slices.next_statement(), None);
    }

    #[test]
    fn a_timed_acquire_is_guarded_and_a_timeout_not_granted_is_false() {
        let mut state = state();
        let mut op = Acquire::start(&state, Wait::For(Duration::from_millis(250))).unwrap();
        let sql = simple(sent(op.step(&mut state, None)));
        assert!(
            sql.contains("set_config('lock_timeout', '250', true)"),
            "{sql}"
        );
        assert!(
            sql.contains("set_config('statement_timeout', '0', true)"),
            "{sql}"
        );
        let ask = simple(sent(
            op.step(&mut state, Some(failed(Failure::LockTimeout))),
        ));
        assert_eq!(ask, sql::interrupted(HOLD));
        assert!(!done(op.step(&mut state, Some(row(&["f", "f"])))).unwrap());
        assert_eq!(state.held(), None);
    }

    #[test]
    fn a_grant_that_came_with_a_timeout_or_a_cancel_is_held() {
        for failure in [
            Failure::LockTimeout,
            Failure::Canceled { by_request: true },
            Failure::Canceled { by_request: false },
        ] {
            for wait in [
                Wait::Forever,
                Wait::Never,
                Wait::For(Duration::from_secs(1)),
            ] {
                let mut state = state();
                let mut op = Acquire::start(&state, wait).unwrap();
                sent(op.step(&mut state, None));
                let ask = simple(sent(op.step(&mut state, Some(failed(failure)))));
                assert!(ask.contains("pg_locks"), "{ask}");
                assert!(done(op.step(&mut state, Some(row(&["t", "f"])))).unwrap());
                assert_eq!(state.held(), Some(HOLD), "{failure:?} {wait:?}");
            }
        }
    }

    #[test]
    fn a_cancel_request_not_granted_is_canceled() {
        for wait in [Wait::Forever, Wait::For(Duration::from_secs(1))] {
            let mut state = state();
            let mut op = Acquire::start(&state, wait).unwrap();
            sent(op.step(&mut state, None));
            sent(op.step(
                &mut state,
                Some(failed(Failure::Canceled { by_request: true })),
            ));
            // Even with a statement_timeout in the session, the server said it was a request.
            let outcome = done(op.step(&mut state, Some(row(&["f", "t"]))));
            assert!(matches!(outcome, Err(Error::Canceled { .. })), "{wait:?}");
            assert_eq!(state.held(), None);
        }
    }

    #[test]
    fn a_session_setting_that_cuts_a_plain_wait_short_makes_it_wait_again_guarded() {
        // lock_timeout of the session: 55P03 on the plain form.
        // statement_timeout of the session: 57014, not said to be a request, with one set.
        for (failure, statement_timeout) in [
            (Failure::LockTimeout, "f"),
            (Failure::Canceled { by_request: false }, "t"),
        ] {
            let mut state = state();
            let mut op = Acquire::start(&state, Wait::Forever).unwrap();
            sent(op.step(&mut state, None));
            sent(op.step(&mut state, Some(failed(failure))));
            let again = simple(sent(
                op.step(&mut state, Some(row(&["f", statement_timeout]))),
            ));
            assert!(
                again.contains("set_config('lock_timeout', '0', true)"),
                "{again}"
            );
            assert!(again.contains("set_config('statement_timeout', '0', true)"));
            assert!(done(op.step(&mut state, Some(row(&["", "", "", "", ""])))).unwrap());
            assert_eq!(state.held(), Some(HOLD));
        }
        // A cancel without a statement_timeout in the session is a request, in any language.
        let mut state = state();
        let mut op = Acquire::start(&state, Wait::Forever).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(
            &mut state,
            Some(failed(Failure::Canceled { by_request: false })),
        ));
        let outcome = done(op.step(&mut state, Some(row(&["f", "f"]))));
        assert!(matches!(outcome, Err(Error::Canceled { .. })));
    }

    #[test]
    fn a_question_that_cannot_be_asked_leaves_the_cleanup_owed() {
        let mut state = state();
        let mut op = Acquire::start(&state, Wait::For(Duration::from_secs(1))).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(&mut state, Some(failed(Failure::LockTimeout))));
        // The failed statement aborted the user's transaction: the question is refused.
        let outcome = done(op.step(&mut state, Some(failed(Failure::TransactionAborted))));
        assert!(!outcome.unwrap());
        assert_eq!(state.owes(), Some(HOLD));
        // The next operation sends the cleanup first, and goes on once it ran.
        let mut next = Acquire::start(&state, Wait::Never).unwrap();
        let cleanup = simple(sent(next.step(&mut state, None)));
        assert_eq!(cleanup, sql::cleanup(HOLD));
        assert_eq!(next.in_flight(), InFlight::Cleanup(HOLD));
        // Refused again (no rollback yet): still owed, and the error says why.
        let refused = done(next.step(&mut state, Some(failed(Failure::TransactionAborted))));
        assert!(matches!(refused, Err(Error::TransactionAborted { .. })));
        assert_eq!(state.owes(), Some(HOLD));
        let mut next = Acquire::start(&state, Wait::Never).unwrap();
        assert_eq!(
            simple(sent(next.step(&mut state, None))),
            sql::cleanup(HOLD)
        );
        let lock = simple(sent(next.step(&mut state, Some(row(&["t"])))));
        assert_eq!(state.owes(), None);
        assert_eq!(lock, "SELECT pg_try_advisory_lock(7)");
    }

    #[test]
    fn a_session_keeps_what_dropped_locks_owe_and_the_next_operation_pays_it_first() {
        let mut facts = SessionFacts::default();
        // A lock on the session got its release refused (25P02), then was dropped.
        let mut dropped = state();
        dropped.held = Some(HOLD);
        dropped.hand_back(&mut facts, true);
        assert!(facts.owes());
        assert_eq!(dropped.held(), None);
        // A cleanup an interrupted acquire of another lock left owed joins it.
        let other = Hold {
            key: PgKey::BigInt(8),
            mode: Mode::Exclusive,
        };
        let mut interrupted = state();
        interrupted.owed.push(other);
        interrupted.hand_back(&mut facts, false);
        // The session's next operation, a release of a third lock, pays both first, in turn.
        let mut next = state();
        next.key = Key::from(9_i64);
        next.held = Some(next.hold().unwrap());
        next.adopt(&mut facts);
        assert!(!facts.owes(), "taken over for the operation");
        let mut op = Release::start(&next).unwrap();
        assert_eq!(simple(sent(op.step(&mut next, None))), sql::cleanup(HOLD));
        assert_eq!(op.in_flight(), InFlight::Cleanup(HOLD));
        assert_eq!(
            simple(sent(op.step(&mut next, Some(row(&["t"]))))),
            sql::cleanup(other)
        );
        let unlock = simple(sent(op.step(&mut next, Some(row(&["t"])))));
        assert_eq!(unlock, "SELECT pg_advisory_unlock(9), pg_backend_pid()");
        done(op.step(&mut next, Some(row(&["t", "1"])))).unwrap();
        next.hand_back(&mut facts, false);
        assert!(!facts.owes(), "paid exactly once");
        // Refused again (the transaction still aborted): the release fails, and the session
        // still owes it.
        let mut again = state();
        again.owed.push(HOLD);
        again.held = Some(HOLD);
        let mut op = Release::start(&again).unwrap();
        sent(op.step(&mut again, None));
        let refused = done(op.step(&mut again, Some(failed(Failure::TransactionAborted))));
        assert!(matches!(refused, Err(Error::TransactionAborted { .. })));
        again.hand_back(&mut facts, false);
        assert!(facts.owes());
        assert_eq!(again.held(), Some(HOLD), "the release did not run");
    }

    #[test]
    fn a_lock_hands_the_sessions_statements_back_once() {
        // After its operation a lock hands back what it took over; its drop hands back again,
        // and must not replace the session's statements with its own, now empty, set.
        let mut facts = SessionFacts::default();
        let mut first = state();
        first
            .statements
            .note_acquire(Kind::TryLock, Shape::of(HOLD));
        first.hand_back(&mut facts, false);
        let mut later = state();
        later.adopt(&mut facts);
        later
            .statements
            .note_acquire(Kind::TryLock, Shape::of(HOLD));
        later.hand_back(&mut facts, false);
        later.hand_back(&mut facts, false);
        let mut third = state();
        third.adopt(&mut facts);
        assert_eq!(
            third
                .statements
                .note_acquire(Kind::TryLock, Shape::of(HOLD)),
            vec![Kind::TryLock, Kind::Unlock],
            "the third acquire on the session counts the two before it"
        );
    }

    #[test]
    fn a_check_passed_on_a_session_holds_for_every_lock_on_it() {
        let mut facts = SessionFacts::default();
        let mut first = state();
        first.check_deployment = true;
        first.passed_check();
        first.hand_back(&mut facts, false);
        let mut later = state();
        later.check_deployment = true;
        later.adopt(&mut facts);
        assert!(!later.check_deployment);
        // A lock that skipped the check proves nothing about the session.
        let mut facts = SessionFacts::default();
        let mut skipped = state();
        skipped.check_deployment = false;
        skipped.hand_back(&mut facts, false);
        let mut later = state();
        later.check_deployment = true;
        later.adopt(&mut facts);
        assert!(later.check_deployment);
    }

    #[test]
    fn a_lost_connection_is_an_error_and_holds_nothing() {
        let mut state = state();
        let mut op = Acquire::start(&state, Wait::Forever).unwrap();
        sent(op.step(&mut state, None));
        let outcome = done(op.step(&mut state, Some(failed(Failure::ConnectionLost))));
        assert!(outcome.unwrap_err().is_connection_error());
        assert_eq!(state.held(), None);
        // Also when the connection goes while asking.
        let mut state = self::state();
        let mut op = Acquire::start(&state, Wait::Forever).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(
            &mut state,
            Some(failed(Failure::Canceled { by_request: true })),
        ));
        let outcome = done(op.step(&mut state, Some(failed(Failure::ConnectionLost))));
        assert!(outcome.unwrap_err().is_connection_error());
        assert_eq!(state.owes(), None);
    }

    #[test]
    fn a_reused_object_prepares_and_a_missing_statement_is_sent_again_as_text() {
        let mut state = state();
        for _ in 0..2 {
            let mut op = Acquire::start(&state, Wait::Forever).unwrap();
            let mut request = sent(op.step(&mut state, None));
            while let Request::Prepare(kind, shape) = request {
                // A flavour would prepare here; a statement value needs a server, so the test
                // only checks what is asked.
                assert!(matches!(kind, Kind::Lock | Kind::Unlock), "{kind:?}");
                let _ = shape;
                request = sent(op.step(&mut state, Some(Ok(None))));
            }
            assert_eq!(
                request,
                Request::Simple("SELECT pg_advisory_lock(7)".into())
            );
            // DISCARD ALL: a missing statement never decides the outcome; it goes again.
            let again = sent(op.step(&mut state, Some(failed(Failure::StatementMissing))));
            assert_eq!(again, Request::Simple("SELECT pg_advisory_lock(7)".into()));
            assert!(done(op.step(&mut state, Some(row(&[""])))).unwrap());
            let mut release = Release::start(&state).unwrap();
            let unlock = sent(release.step(&mut state, None));
            assert_eq!(
                unlock,
                Request::Simple("SELECT pg_advisory_unlock(7), pg_backend_pid()".into())
            );
            let again = sent(release.step(&mut state, Some(failed(Failure::StatementMissing))));
            assert_eq!(again, unlock);
            done(release.step(&mut state, Some(row(&["t"])))).unwrap();
        }
    }

    #[test]
    fn a_release_refused_by_an_aborted_transaction_keeps_the_lock() {
        let mut state = state();
        state.held = Some(HOLD);
        let mut op = Release::start(&state).unwrap();
        sent(op.step(&mut state, None));
        assert_eq!(state.held(), None, "the unlock is on its way");
        assert_eq!(op.in_flight(), InFlight::Unlock(HOLD));
        let outcome = done(op.step(&mut state, Some(failed(Failure::TransactionAborted))));
        assert!(matches!(outcome, Err(Error::TransactionAborted { .. })));
        assert_eq!(
            state.held(),
            Some(HOLD),
            "still held, and releasable after rollback"
        );
        // After the rollback, the release works.
        let mut op = Release::start(&state).unwrap();
        sent(op.step(&mut state, None));
        done(op.step(&mut state, Some(row(&["t"])))).unwrap();
        assert_eq!(state.held(), None);
        assert!(matches!(Release::start(&state), Err(Error::NotAcquired)));
    }

    #[test]
    fn a_release_the_server_denies_is_not_held_and_a_lost_connection_frees_it() {
        let mut state = state();
        state.held = Some(HOLD);
        let mut op = Release::start(&state).unwrap();
        sent(op.step(&mut state, None));
        assert!(matches!(
            done(op.step(&mut state, Some(row(&["f"])))),
            Err(Error::NotHeld)
        ));
        assert_eq!(state.held(), None);
        state.held = Some(HOLD);
        let mut op = Release::start(&state).unwrap();
        sent(op.step(&mut state, None));
        let outcome = done(op.step(&mut state, Some(failed(Failure::ConnectionLost))));
        assert!(outcome.unwrap_err().is_connection_error());
        assert_eq!(state.held(), None);
    }

    #[test]
    fn a_dropped_attempt_queues_one_cleanup_and_repeats_it_only_if_it_did_not_run() {
        let mut state = state();
        let mut op = Acquire::start(&state, Wait::Forever).unwrap();
        sent(op.step(&mut state, None));
        let Abandon::Queue {
            fence: None,
            cleanup,
            settles,
        } = state.abandon(op.in_flight())
        else {
            panic!("a dropped lock statement queues its cleanup");
        };
        assert_eq!(cleanup, sql::cleanup(HOLD));
        assert_eq!(settles, Settles::Cleanup(HOLD));
        // It ran: nothing is owed, and the next acquire sends its own statement first.
        state.settle(settles, Ok(Some(vec![None])));
        assert_eq!(state.owes(), None);
        let mut next = Verify::start(&state).unwrap();
        assert_eq!(
            simple(sent(next.step(&mut state, None))),
            sql::held_by_session(HOLD)
        );
        // It did not run (the user's transaction was aborted): it is sent again, once.
        let mut state = self::state();
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        let Abandon::Queue { settles, .. } = state.abandon(op.in_flight()) else {
            panic!("a dropped try queues its cleanup");
        };
        state.settle(settles, failed(Failure::TransactionAborted));
        assert_eq!(state.owes(), Some(HOLD));
        let mut pay = PayOwed::start();
        assert_eq!(simple(sent(pay.step(&mut state, None))), sql::cleanup(HOLD));
        done(pay.step(&mut state, Some(Ok(Some(vec![Some("t".into())]))))).unwrap();
        assert_eq!(state.owes(), None);
        let mut pay = PayOwed::start();
        done(pay.step(&mut state, None)).unwrap();
    }

    #[test]
    fn a_dropped_release_puts_the_hold_back_if_the_server_refused_it() {
        let mut state = state();
        state.held = Some(HOLD);
        let mut op = Release::start(&state).unwrap();
        sent(op.step(&mut state, None));
        let Abandon::Keep(settles) = state.abandon(op.in_flight()) else {
            panic!("a dropped unlock is kept");
        };
        state.settle(settles, failed(Failure::TransactionAborted));
        assert_eq!(state.held(), Some(HOLD));
        let mut op = Release::start(&state).unwrap();
        sent(op.step(&mut state, None));
        let Abandon::Keep(settles) = state.abandon(op.in_flight()) else {
            panic!("a dropped unlock is kept");
        };
        state.settle(settles, Ok(Some(vec![Some("t".into())])));
        assert_eq!(state.held(), None);
        // A prepare or a finished operation leaves nothing to do.
        assert_eq!(state.abandon(InFlight::Nothing), Abandon::Nothing);
    }

    #[test]
    fn with_a_side_connection_waits_are_tagged_and_a_dropped_wait_is_fenced() {
        let mut state = state();
        state.waits = Waits::Tagged;
        let mut op = Acquire::start(&state, Wait::Forever).unwrap();
        let sql = simple(sent(op.step(&mut state, None)));
        assert!(sql.starts_with("/* dlock-wait:"), "{sql}");
        assert!(sql.ends_with("SELECT pg_advisory_lock(7)"), "{sql}");
        let InFlight::Lock {
            waiting: Some(token),
            ..
        } = op.in_flight()
        else {
            panic!("a tagged wait in flight names its token");
        };
        let Abandon::Queue {
            fence: Some(fenced),
            ..
        } = state.abandon(op.in_flight())
        else {
            panic!("a dropped tagged wait is fenced");
        };
        assert_eq!(fenced, token);
        let fence = sql::fence(token);
        assert!(fence.starts_with("/* dlock-fence:"), "{fence}");
        assert!(fence.contains("'statement_timeout', '0'"), "{fence}");
        assert!(
            fence.contains("set_config('lock_timeout', '0', true)"),
            "{fence}"
        );
        let gate = match sql::gate(token) {
            dlock_core::PgKey::BigInt(gate) => gate,
            pair => panic!("a gate is one bigint, not {pair:?}"),
        };
        assert!(fence.contains(&format!(
            "pg_advisory_lock({gate}), pg_advisory_unlock({gate})"
        )));
        // A try never waits: not tagged, nothing to fence.
        let mut state = self::state();
        state.waits = Waits::Tagged;
        let mut op = Acquire::start(&state, Wait::Never).unwrap();
        let sql = simple(sent(op.step(&mut state, None)));
        assert_eq!(sql, "SELECT pg_try_advisory_lock(7)");
        assert!(matches!(
            state.abandon(op.in_flight()),
            Abandon::Queue { fence: None, .. }
        ));
        // After an interruption the wait is over: the question is not fenced.
        let mut state = self::state();
        state.waits = Waits::Tagged;
        let mut op = Acquire::start(&state, Wait::For(Duration::from_secs(1))).unwrap();
        assert!(simple(sent(op.step(&mut state, None))).starts_with("/* dlock-wait:"));
        sent(op.step(&mut state, Some(failed(Failure::LockTimeout))));
        assert!(matches!(
            state.abandon(op.in_flight()),
            Abandon::Queue { fence: None, .. }
        ));
        // A wait that carries the deployment check is tagged and fenced alike.
        let mut state = self::state();
        state.waits = Waits::Tagged;
        state.check_deployment = true;
        state.route = Route::CancelKey(77);
        let mut op = Acquire::start(&state, Wait::Forever).unwrap();
        let sql = simple(sent(op.step(&mut state, None)));
        assert!(sql.starts_with("/* dlock-wait:"), "{sql}");
        assert!(sql.contains("pg_advisory_lock(7) WHERE"), "{sql}");
        assert!(matches!(
            state.abandon(op.in_flight()),
            Abandon::Queue { fence: Some(_), .. }
        ));
    }

    #[test]
    fn verify_asks_pg_locks_and_a_lost_connection_is_false() {
        let mut state = state();
        let mut op = Verify::start(&state).unwrap();
        let ask = simple(sent(op.step(&mut state, None)));
        assert_eq!(ask, sql::held_by_session(HOLD));
        assert!(done(op.step(&mut state, Some(row(&["t"])))).unwrap());
        state.held = Some(HOLD);
        let mut op = Verify::start(&state).unwrap();
        sent(op.step(&mut state, None));
        assert!(!done(op.step(&mut state, Some(failed(Failure::ConnectionLost)))).unwrap());
        // The object's own view stays until release, which then says the connection is gone.
        assert_eq!(state.held(), Some(HOLD));
    }

    #[test]
    fn transaction_locks_time_out_to_false_and_fail_with_the_error() {
        let wait = Wait::For(Duration::from_millis(5));
        assert!(
            xact_statement(HOLD, wait, None, &unchecked()).contains("pg_advisory_xact_lock(7)")
        );
        assert!(
            xact_statement(HOLD, Wait::Forever, None, &unchecked())
                .contains("'statement_timeout', '0'")
        );
        assert!(
            xact_statement(HOLD, Wait::Forever, Some(1), &XactOptions::default())
                .starts_with("/* dlock-wait:")
        );
        assert_eq!(
            xact_statement(HOLD, Wait::Never, Some(1), &unchecked()),
            "SELECT pg_try_advisory_xact_lock(7)"
        );
        // The standby guard is a column of the first statement, before any wait, and leaves
        // the answer in the first column.
        let checked = xact_statement(HOLD, Wait::Never, None, &XactOptions::default());
        assert!(
            checked
                .starts_with("SELECT pg_try_advisory_xact_lock(7), CASE WHEN pg_is_in_recovery()"),
            "{checked}"
        );
        let checked = xact_statement(HOLD, Wait::Forever, None, &XactOptions::default());
        let (first, rest) = checked.split_once("; ").unwrap();
        assert!(first.contains("pg_is_in_recovery()"), "{checked}");
        assert!(!rest.contains("pg_is_in_recovery()"), "{checked}");
        assert!(matches!(
            xact_outcome(wait, failed(Failure::LockTimeout)),
            XactOutcome::TimedOut
        ));
        assert!(matches!(
            xact_outcome(Wait::Forever, failed(Failure::LockTimeout)),
            XactOutcome::Failed(_)
        ));
        assert!(matches!(
            xact_outcome(wait, failed(Failure::Canceled { by_request: true })),
            XactOutcome::Failed(Error::Canceled { .. })
        ));
        assert!(matches!(
            xact_outcome(Wait::Never, row(&["f"])),
            XactOutcome::Answered(false, None)
        ));
        assert!(matches!(
            xact_outcome(wait, row(&["", "", "", "", ""])),
            XactOutcome::Answered(true, None)
        ));
    }
}
