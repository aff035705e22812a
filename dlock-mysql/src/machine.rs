//! The one place where a MySQL or MariaDB lock decides: what to send next and what each
//! reply or error means. No I/O: the blocking and tokio flavours send each statement and hand
//! the reply back. Every branch is tested here with synthetic replies.
//!
//! The rules it keeps:
//! - An interrupted wait (a NULL reply, `KILL QUERY`, a statement time limit) asks
//!   `IS_USED_LOCK` before it returns, and a granted lock is then held and tracked.
//! - A session statement time limit (`max_statement_time`, `max_execution_time`) never
//!   decides an outcome: a plain wait it cut short waits again with the limit off.
//! - A statement whose reply was never read leaves the connection unusable (mysql_async cannot
//!   resynchronize it), and its session is ended only with a proof that it is still the
//!   session the lock used: a connection id alone is no proof, ids restart with the server.

use dlock_core::{Error, Key, KeyPolicy, Result, SessionId, Wait, attempt_token};

use crate::sql::{self, Acquired, Checks, Failed, Failure, Proof, Server};

/// A reply as the machine reads it: the values of the first row.
pub(crate) type Reply = Result<Vec<Option<i64>>, Failed>;

/// What an operation wants next.
#[derive(Debug)]
pub(crate) enum Step<T> {
    /// Send this query and hand its first row to the next `step`.
    Send(String),
    /// Send this statement, which returns no rows (an upsert, a `SET`), and hand its OK
    /// packet to the next `step` as `[last insert id, rows changed]`.
    Execute(String),
    /// The operation is over.
    Done(Result<T>),
}

/// What this object holds: the name as taken (the policy may change afterwards, but release
/// must undo exactly what acquire did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) name: String,
}

/// One lock object's state: what it locks, what it holds, whether its connection can still
/// be trusted.
#[derive(Debug)]
pub(crate) struct LockState {
    pub(crate) key: Key,
    pub(crate) policy: KeyPolicy,
    /// Set when the user asked for a kind of lock MySQL does not have.
    unsupported: Option<fn() -> Error>,
    held: Option<Held>,
    /// Set once a statement's reply was left unread: the connection's replies can no longer be
    /// trusted.
    unusable: bool,
    /// Whether grants keep their session marked by a unique marker lock, which proves from
    /// another session which session holds the lock: the tokio flavour needs it, because its
    /// futures can be dropped with a grant on the way, and its drop can neither wait for a
    /// release nor close a borrowed connection. The session's first grant through dlock
    /// takes the marker in its lock statement (the one with the whole deployment check, or
    /// the first of a lock that knows nothing of its session), and the session keeps its tag
    /// with the check's mark; later lock statements read it there at no cost of their own
    /// ([`named`](Self::named)), and the mark they are gated by says the marker is there.
    proves_holds: bool,
    /// Whether the next acquire checks first that the server is no cluster node whose locks
    /// are local to it: until one check passed, unless the user turned it off.
    pub(crate) check_deployment: bool,
    /// Whether a deployment check passed on this object's session.
    check_passed: bool,
    /// The fence table (as SQL) when acquires issue fencing tokens.
    pub(crate) fence: Option<String>,
    /// The fencing token of the lock this object holds, when fenced.
    token: Option<u64>,
    /// Whether a grant names its server session ([`named`](Self::named)), for a watcher: a
    /// pool's lock over a connection that carries no identity of its own (sqlx). It marks
    /// the session as [`proves_holds`](Self::proves_holds) does.
    pub(crate) names_session: bool,
    /// The server session's name, its connection id and marker, as the last lock statement
    /// of a lock that marks its session read it.
    named: Option<SessionId>,
    /// The server's version, once asked, for a flavour whose driver does not give it (sqlx).
    version: Option<(u16, u16, u16)>,
    /// Whether a whole check passed on another session of the pool this lock's connection
    /// came from (sqlx's pools, whose connections carry no version): its server keeps more
    /// than one named lock a session, so a lock may take its name before it reads its own
    /// session's mark ([`Checks::MarkColumn`](crate::sql::Checks::MarkColumn)), as where the
    /// version is known. Only a pool whose connections reach servers of different versions
    /// could meet an old one then, and the missing mark gives that grant back.
    pub(crate) checked_elsewhere: bool,
}

impl LockState {
    /// A lock on `key`; `proves_holds` makes grants keep their session marked
    /// ([`proves_holds`](Self::proves_holds)).
    pub(crate) fn new(key: Key, proves_holds: bool) -> LockState {
        LockState {
            key,
            policy: KeyPolicy::default(),
            unsupported: None,
            held: None,
            unusable: false,
            proves_holds,
            check_deployment: true,
            check_passed: false,
            fence: None,
            token: None,
            names_session: false,
            named: None,
            version: None,
            checked_elsewhere: false,
        }
    }

    /// Takes the state out, holds and all, leaving an empty one of the same key whose lock's
    /// drop does nothing: for a session that keeps a lock's hold.
    pub(crate) fn detach(&mut self) -> LockState {
        let empty = LockState::new(self.key.clone(), self.proves_holds);
        std::mem::replace(self, empty)
    }

    /// Whether grants keep their session marked by a unique marker lock, and read its name.
    fn marks_session(&self) -> bool {
        self.proves_holds || self.names_session
    }

    /// The server, where its version is known to this object.
    #[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
    pub(crate) fn server(&self) -> Option<Server> {
        self.version.map(Server::from_version)
    }

    /// The server session's name as a watcher knows it, once a grant read it
    /// ([`names_session`](Self::names_session)).
    #[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
    pub(crate) fn named(&self) -> Option<SessionId> {
        self.named
    }

    /// The fencing token of the lock held now, when this object is fenced.
    pub(crate) fn token(&self) -> Option<u64> {
        self.held.as_ref().and(self.token)
    }

    pub(crate) fn shared(&mut self) {
        self.unsupported = Some(sql::shared_unsupported);
    }

    pub(crate) fn transaction_scoped(&mut self) {
        self.unsupported = Some(sql::transaction_unsupported);
    }

    pub(crate) fn name(&self) -> Result<String> {
        self.policy.mysql_name(&self.key)
    }

    /// Nothing of a MySQL session outlives a lock object (its statements go as text).
    pub(crate) fn take_session_state(&mut self) -> Option<dlock_core::SessionState> {
        None
    }

    /// See [`take_session_state`](Self::take_session_state): nothing to keep.
    pub(crate) fn with_session_state(&mut self, _state: dlock_core::SessionState) {}

    pub(crate) fn held(&self) -> Option<&Held> {
        self.held.as_ref()
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn is_unusable(&self) -> bool {
        self.unusable
    }

    /// A future was dropped with `in_flight` unanswered: the connection is unusable, and
    /// these proofs (tried in order) identify the session to end.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn abandon(&mut self, in_flight: InFlight) -> Vec<Proof> {
        self.unusable = true;
        let mut proofs = Vec::new();
        if let InFlight::Statement {
            token: Some(token), ..
        } = in_flight
        {
            proofs.push(Proof::Running(token));
        }
        // A marker the statement in flight may have taken, then the one the session held.
        if let InFlight::Statement {
            marker: Some(tag), ..
        } = in_flight
        {
            proofs.push(Proof::Holds(sql::session_marker(tag)));
        }
        if let Some(named) = self.named {
            proofs.push(Proof::Holds(sql::session_marker(named.tag)));
        }
        proofs
    }

    /// Leaves what this object holds to its session as it is dropped: a hold becomes owed,
    /// and an abandoned statement leaves the whole session unusable.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn leave_to(&mut self, facts: &mut SessionFacts) {
        if self.unusable {
            facts.abandoned = true;
        }
        self.teach(facts);
        facts.owed.extend(self.held.take());
    }

    /// Takes on what the session knows before an operation: after another object on the
    /// same session abandoned a statement, this one cannot trust the replies either; a
    /// passed deployment check needs no second run.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn learn_from(&mut self, facts: &SessionFacts) {
        if facts.abandoned {
            self.unusable = true;
        }
        if facts.checked {
            self.check_deployment = false;
        }
        if self.named.is_none() {
            self.named = facts.named;
        }
        if self.version.is_none() {
            self.version = facts.version;
        }
    }

    /// Tells the session what this object learned: that the deployment check passed on it,
    /// and the marker it is known by.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn teach(&self, facts: &mut SessionFacts) {
        facts.checked |= self.check_passed;
        if self.named.is_some() {
            facts.named = self.named;
        }
        if self.version.is_some() {
            facts.version = self.version;
        }
    }
}

/// What dlock knows of one server session beyond any one lock object on it: holds left owed
/// by lock objects dropped while they held (a drop cannot wait for the server), paid before
/// the session's next statement through dlock; whether a statement's reply was abandoned;
/// and whether the deployment check passed on it. Opaque: it lives in `AsyncMySqlSession` and
/// `SqlxMySqlSession`.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "tokio"), allow(unreachable_pub, dead_code))]
pub struct SessionFacts {
    pub(crate) owed: Vec<Held>,
    pub(crate) abandoned: bool,
    pub(crate) checked: bool,
    /// The session's connection id and marker lock, once a grant named them: the proof a
    /// `KILL` from elsewhere needs.
    pub(crate) named: Option<SessionId>,
    /// The server's version, once a lock on the session asked it (sqlx hides the one its
    /// handshake read).
    pub(crate) version: Option<(u16, u16, u16)>,
}

impl SessionFacts {
    /// The payment of what the session owes, to run before the next statement of `state`'s
    /// lock on it: `None` when nothing is owed, or when the lock or the session cannot trust
    /// replies (their end pays then). What it does not pay goes back with
    /// [`unpaid`](Self::unpaid).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn payment(&mut self, state: &LockState) -> Option<PayOwed> {
        if state.unusable || self.abandoned || self.owed.is_empty() {
            return None;
        }
        Some(PayOwed::new(std::mem::take(&mut self.owed)))
    }

    /// Takes back what `payment` did not pay (its statement may not have run): it goes
    /// first, next time.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn unpaid(&mut self, mut payment: PayOwed) {
        payment.owed.append(&mut self.owed);
        self.owed = payment.owed;
    }

    /// What the end of the session's last handle must do with what is owed, for a
    /// connection that it owns (`owned`), that its pool can close (`discardable`), or
    /// neither (borrowed).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn on_drop(&mut self, owned: bool, discardable: bool) -> OnDrop {
        let owed = std::mem::take(&mut self.owed);
        if !self.abandoned && owed.is_empty() {
            return OnDrop::Nothing;
        }
        if discardable {
            return OnDrop::Discard;
        }
        if owned {
            // Replies that cannot be trusted cannot confirm a release: close instead.
            return if self.abandoned {
                OnDrop::Close
            } else {
                OnDrop::Release(owed)
            };
        }
        if self.abandoned {
            // The session is being ended already, if it could be proven.
            return OnDrop::Nothing;
        }
        match self.named {
            Some(named) => OnDrop::End(vec![Proof::Holds(sql::session_marker(named.tag))]),
            None => OnDrop::Nothing,
        }
    }
}

/// Pays what a session owes ([`SessionFacts`]) in one statement, before anything else is
/// sent on it. A payment is never sent twice, which could take away another object's hold of
/// the same name (the server counts holds of one name per session, not per object): one that
/// may not have run leaves the session unusable.
#[derive(Debug)]
pub(crate) struct PayOwed {
    /// What is still owed: empty once paid, or once the session is gone (its locks with it).
    pub(crate) owed: Vec<Held>,
    sent: bool,
}

impl PayOwed {
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn new(owed: Vec<Held>) -> PayOwed {
        PayOwed { owed, sent: false }
    }
}

impl Operation for PayOwed {
    type Output = ();

    fn step(&mut self, state: &mut LockState, reply: Option<Reply>) -> Step<()> {
        if !self.sent {
            self.sent = true;
            return Step::Send(sql::pay_owed(&self.owed));
        }
        Step::Done(match reply.expect("the payment's reply") {
            Ok(_) => {
                self.owed.clear();
                Ok(())
            }
            Err(failed) => {
                if failed.failure == Failure::ConnectionLost {
                    // The session ended, and its locks with it: nothing is owed any more.
                    self.owed.clear();
                }
                // Otherwise the payment may not have run, and cannot be sent again (see the
                // type's docs): the session is given up, which its end pays.
                state.unusable = true;
                Err(failed.error)
            }
        })
    }

    fn in_flight(&self) -> InFlight {
        InFlight::Statement {
            token: None,
            marker: None,
        }
    }
}

impl<O: Operation + ?Sized> Operation for &mut O {
    type Output = O::Output;

    fn step(&mut self, state: &mut LockState, reply: Option<Reply>) -> Step<O::Output> {
        (**self).step(state, reply)
    }

    fn in_flight(&self) -> InFlight {
        (**self).in_flight()
    }
}

/// What a lock dropped while it holds, or with its connection unusable, does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OnDrop {
    Nothing,
    /// Release these holds from a task that owns the connection.
    Release(Vec<Held>),
    /// Mark the connection to be closed by its pool, which frees its locks.
    Discard,
    /// Close the owned connection, which frees its locks.
    Close,
    /// End the session from another connection, once one of these proves it is the lock's.
    End(Vec<Proof>),
}

/// A statement that was sent and whose reply was not read yet: what a dropped future leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InFlight {
    Nothing,
    /// A statement, with the tag of a lock statement and the new session marker it may
    /// have taken.
    Statement {
        token: Option<u64>,
        marker: Option<u64>,
    },
}

/// An operation of a lock, stepped by a flavour: each reply goes into the next `step`.
pub(crate) trait Operation {
    type Output;

    fn step(&mut self, state: &mut LockState, reply: Option<Reply>) -> Step<Self::Output>;

    /// What is in flight, for a future dropped now.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    fn in_flight(&self) -> InFlight;
}

#[derive(Debug)]
enum AcquirePhase {
    Start,
    /// The deployment check is sent.
    Checking,
    /// The grant passed a full check, or the session took a new marker: the session is
    /// marked so.
    Marking,
    /// The lock is held on a session that keeps no marker: it takes the new one.
    Naming,
    /// The lock was granted on a session no check marked ([`Checks::MarkColumn`]): it is
    /// given back, and the whole check runs.
    Regating,
    /// The deployment check in the lock statement failed (a server without one of the
    /// variables it reads); whether the server is TiDB is asked on its own.
    AskingEngine,
    /// The server's version is asked (sqlx does not give the handshake's), then `next`.
    AskingVersion {
        next: AfterVersion,
    },
    /// The lock statement is sent.
    Locking,
    /// The lock statement was interrupted; `IS_USED_LOCK` is asked.
    Asking {
        error: Error,
    },
    /// The lock is held; its fencing token is bumped.
    Fencing,
    /// The token could not be bumped: the lock is given back, then `error` returned.
    Undoing {
        error: Error,
    },
    Done,
}

/// What an acquire does once it knows the server's version.
#[derive(Debug)]
enum AfterVersion {
    /// Sends the lock statement: nothing was sent yet.
    Lock,
    /// Runs the whole deployment check: the session was not marked, nothing was locked.
    Check,
    /// Asks whether the interrupted lock statement granted the lock, then fails with
    /// `error` if it did not.
    Ask { error: Error },
}

/// `acquire`, `try_acquire` and `acquire_timeout`.
#[derive(Debug)]
pub(crate) struct Acquire {
    /// The server, once known: a lock object that was not given the handshake's version
    /// (sqlx) locks on a marked session without it, and asks only where the form depends on
    /// it.
    server: Option<Server>,
    name: String,
    wait: Wait,
    guarded: bool,
    token: u64,
    /// For a lock that marks its session, the tag of the marker a grant takes where the
    /// session keeps none ([`LockState::proves_holds`]).
    marker: Option<u64>,
    /// Whether the lock statement takes that marker with its grant: a lock that proves its
    /// holds, on a session it knows no marker of. Elsewhere a statement of its own takes it
    /// after the grant.
    marker_with_grant: bool,
    /// Whether the session took that marker, whose tag it is then to keep.
    took_marker: bool,
    /// Whether the session may not be marked as checked: until a reply to a statement that
    /// reads the mark in a column of its own says it is ([`Checks::MarkColumn`]).
    unmarked: bool,
    /// What the lock statement checks of the deployment (until one check passed): first the
    /// session's mark of a passed check; where it is missing, the whole check, with which
    /// the statement locks only where a lock excludes, at no round trip of its own (MySQL's
    /// Group Replication check goes first on its own).
    checks: Checks,
    /// Whether a full check runs in this acquire, whose pass then marks the session.
    marks: bool,
    phase: AcquirePhase,
}

impl Acquire {
    /// Starts an acquire on a server of handshake version `version`, after the checks that
    /// need no I/O. A flavour whose driver hides the version passes `None`: the acquire
    /// asks for it only where the statement's form depends on it (a timed wait, a fenced
    /// lock, the whole deployment check on a session no check marked, an interrupted wait).
    pub(crate) fn start(
        state: &LockState,
        version: Option<(u16, u16, u16)>,
        wait: Wait,
    ) -> Result<Acquire> {
        if state.unusable {
            return Err(sql::unusable());
        }
        if state.held.is_some() {
            return Err(Error::AlreadyAcquired);
        }
        if let Some(unsupported) = state.unsupported {
            return Err(unsupported());
        }
        let version = version.or(state.version);
        if let Some(version) = version {
            refuse_old(state, version)?;
        }
        let name = state.name()?;
        let token = attempt_token();
        let server = version.map(Server::from_version);
        // A try and a wait without timeout lock in a form both servers read alike; the
        // session's mark of a passed check, where one is expected, proves the version.
        let asks_version =
            server.is_none() && (matches!(wait, Wait::For(_)) || state.fence.is_some());
        Ok(Acquire {
            server,
            name,
            wait,
            // A timed wait always turns the statement time limit off; a plain one only after
            // the limit cut it short, since the override costs parsing on every cycle.
            guarded: matches!(wait, Wait::For(_)),
            token,
            // The attempt's token is random and unique: its 63 bits (user variables hold
            // signed integers), never 0, name the marker too.
            marker: state.marks_session().then(|| (token >> 1).max(1)),
            // Gated by the mark, the session keeps a marker already.
            marker_with_grant: state.proves_holds
                && state.named.is_none()
                && !state.check_deployment,
            took_marker: false,
            checks: if !state.check_deployment {
                Checks::None
            } else if (server.is_some() || state.checked_elsewhere)
                && !state.proves_holds
                && !matches!(wait, Wait::For(_))
            {
                // Locking first costs nothing where a grant on an unmarked session can be given
                // back before anybody is told (a timed wait would wait twice).
                Checks::MarkColumn
            } else {
                Checks::Mark
            },
            unmarked: true,
            marks: false,
            phase: if asks_version {
                AcquirePhase::AskingVersion {
                    next: AfterVersion::Lock,
                }
            } else {
                AcquirePhase::Start
            },
        })
    }

    /// The first step: the lock statement, or the version question where the statement's
    /// form needs the server.
    fn begin(&mut self) -> Step<bool> {
        match self.phase {
            AcquirePhase::AskingVersion { .. } => Step::Send(sql::server_version()),
            _ => self.lock(),
        }
    }

    /// The server's version is needed from here on (and `next` follows it).
    fn ask_version(&mut self, next: AfterVersion) -> Step<bool> {
        self.phase = AcquirePhase::AskingVersion { next };
        Step::Send(sql::server_version())
    }

    fn lock(&mut self) -> Step<bool> {
        self.phase = AcquirePhase::Locking;
        Step::Send(sql::get_lock(&sql::LockStatement {
            server: self.server,
            name: &self.name,
            wait: self.wait,
            guarded: self.guarded,
            token: self.token,
            names_session: self.marker.is_some(),
            takes_marker: self.marker.filter(|_| self.marker_with_grant),
            checks: self.checks,
        }))
    }

    fn ask(&mut self, error: Error) -> Step<bool> {
        let Some(server) = self.server else {
            return self.ask_version(AfterVersion::Ask { error });
        };
        self.phase = AcquirePhase::Asking { error };
        Step::Send(sql::interrupted(server, &self.name, self.marker.is_some()))
    }

    /// The server, in a phase that only follows a statement sent in its known form.
    fn known_server(&self) -> Server {
        self.server
            .expect("the deployment check runs only once the server is known")
    }

    fn done(&mut self, outcome: Result<bool>) -> Step<bool> {
        self.phase = AcquirePhase::Done;
        Step::Done(outcome)
    }

    fn granted(&mut self, state: &mut LockState) -> Step<bool> {
        if self.checks == Checks::MarkColumn && self.unmarked {
            // The session was not checked: nobody is told of this grant, which goes back
            // before the whole check locks again.
            self.phase = AcquirePhase::Regating;
            return Step::Send(sql::release_lock(&self.name));
        }
        if self.checks != Checks::None {
            // The statement that granted it found the session marked, or no cluster: the
            // check passed.
            state.check_deployment = false;
            state.check_passed = true;
        }
        if let Some(tag) = self.marker
            && !self.took_marker
            && state.named.is_none()
        {
            // The session keeps no marker (its first grant through dlock, or after a reset):
            // it takes one now, before anybody is told the lock is held. Sent right after
            // the grant, the marker proves the session by the time a side connection could
            // look, should this future be dropped.
            self.phase = AcquirePhase::Naming;
            return Step::Send(sql::session(tag));
        }
        self.mark(state)
    }

    /// Marks the session as a passed check and as keeping its new marker, where either is
    /// new, then goes on to the fence.
    fn mark(&mut self, state: &mut LockState) -> Step<bool> {
        let checked = self.marks && state.check_passed;
        if checked || self.took_marker {
            let marker = self.marker.filter(|_| self.took_marker);
            self.marks = false;
            self.took_marker = false;
            self.phase = AcquirePhase::Marking;
            let named = self.marker.is_some();
            return Step::Execute(sql::mark_session(checked, named, marker));
        }
        self.fence_or_hold(state)
    }

    /// The lock is granted and the check done: the token is bumped, if fenced, then held.
    fn fence_or_hold(&mut self, state: &mut LockState) -> Step<bool> {
        if let Some(table) = &state.fence {
            let server = self
                .server
                .expect("a fenced acquire knows its server first");
            self.phase = AcquirePhase::Fencing;
            return Step::Execute(sql::fence(server, table, &self.name));
        }
        self.hold(state)
    }

    fn hold(&mut self, state: &mut LockState) -> Step<bool> {
        state.held = Some(Held {
            name: self.name.clone(),
        });
        self.done(Ok(true))
    }

    /// A grant whose token could not be bumped: give the lock back, then fail with `error`.
    fn undo(&mut self, error: Error) -> Step<bool> {
        self.phase = AcquirePhase::Undoing { error };
        Step::Send(sql::release_lock(&self.name))
    }
}

impl Acquire {
    /// What the lock statement's reply `row` means.
    fn read_lock_reply(&mut self, state: &mut LockState, row: &[Option<i64>]) -> Step<bool> {
        match sql::read_acquired(first(row)) {
            Ok(Acquired::Granted) => self.granted(state),
            // MariaDB's "forever" is a year: wait again in the unlikely case it ran out.
            Ok(Acquired::TimedOut) if self.wait == Wait::Forever => self.lock(),
            Ok(Acquired::TimedOut) => self.done(Ok(false)),
            Ok(Acquired::Interrupted) => self.ask(sql::canceled_by_null()),
            Ok(Acquired::RefusedOnGalera) => self.done(Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::Galera,
            })),
            Ok(Acquired::RefusedReadOnly) => self.done(Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::ReadOnlyReplica,
            })),
            Ok(Acquired::RefusedOnTiDb) => self.done(Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::TiDb,
            })),
            // No check passed on this session before: nothing was tried. The full
            // check runs (MariaDB's in the lock statement, MySQL's cluster check on
            // its own first), and its pass marks the session.
            Ok(Acquired::Unmarked) => self.check(state),
            Err(error) => self.done(Err(error)),
        }
    }

    /// Reads the session's name from a statement's reply: its first value `granted`, and the
    /// `columns` that name the session.
    fn read_name(
        &mut self,
        state: &mut LockState,
        granted: Option<i64>,
        columns: Option<&[Option<i64>]>,
    ) {
        let taken = self.marker.filter(|_| self.marker_with_grant);
        state.named = sql::read_named_session(granted, columns.unwrap_or_default(), taken);
        self.took_marker = taken.is_some() && granted == Some(2);
    }

    /// Runs the whole check: MariaDB's in the lock statement, MySQL's cluster check on its
    /// own first. Its pass marks the session.
    fn check(&mut self, state: &LockState) -> Step<bool> {
        let Some(server) = self.server else {
            return self.ask_version(AfterVersion::Check);
        };
        self.checks = Checks::Full;
        // The session was not marked: whether it keeps a marker, its reply said.
        self.marker_with_grant =
            self.marker.is_some() && state.proves_holds && state.named.is_none();
        self.marks = true;
        if server == Server::MySql {
            self.phase = AcquirePhase::Checking;
            return Step::Send(sql::cluster_check(server));
        }
        self.lock()
    }

    /// What the version's reply `reply` means, and what follows it.
    fn read_version(
        &mut self,
        state: &mut LockState,
        reply: Reply,
        next: AfterVersion,
    ) -> Step<bool> {
        let version = match reply
            .map_err(|failed| failed.error)
            .and_then(|row| sql::read_version(&row))
        {
            Ok(version) => version,
            Err(error) => {
                if let AfterVersion::Ask { .. } = next {
                    // The session may hold the lock and dlock cannot tell: the connection is
                    // in doubt and must not be used for locks again.
                    state.unusable = true;
                }
                return self.done(Err(error));
            }
        };
        state.version = Some(version);
        self.server = Some(Server::from_version(version));
        match next {
            AfterVersion::Ask { error } => self.ask(error),
            AfterVersion::Lock | AfterVersion::Check => {
                if let Err(error) = refuse_old(state, version) {
                    return self.done(Err(error));
                }
                match next {
                    AfterVersion::Check => self.check(state),
                    _ => self.lock(),
                }
            }
        }
    }

    /// One step of the acquire, as [`Operation::step`] takes it.
    fn advance(&mut self, state: &mut LockState, reply: Option<Reply>) -> Step<bool> {
        match std::mem::replace(&mut self.phase, AcquirePhase::Done) {
            phase @ (AcquirePhase::Start | AcquirePhase::AskingVersion { .. })
                if reply.is_none() =>
            {
                self.phase = phase;
                self.begin()
            }
            AcquirePhase::Start => unreachable!("an acquire's start has no reply"),
            AcquirePhase::AskingVersion { next } => {
                self.read_version(state, reply.expect("the version's reply"), next)
            }
            AcquirePhase::Marking => match reply.expect("the mark's reply") {
                Err(failed) if failed.failure == Failure::ConnectionLost => {
                    self.done(Err(failed.error))
                }
                // Unmarked, the session is only checked again by its next lock object, and
                // takes another marker with its next grant: this grant's name and proof hold
                // all the same.
                _ => self.fence_or_hold(state),
            },
            AcquirePhase::Checking => {
                match checked(
                    self.known_server(),
                    reply.expect("the deployment check's reply"),
                ) {
                    Ok(()) => {
                        if self.checks == Checks::None {
                            // The lock statement checks nothing more: the check has passed.
                            state.check_deployment = false;
                            state.check_passed = true;
                        }
                        self.lock()
                    }
                    Err(error) => self.done(Err(error)),
                }
            }
            AcquirePhase::AskingEngine => match reply.expect("the engine check's reply") {
                Ok(row) if first(&row) == Some(1) => self.done(Err(Error::CannotExclude {
                    deployment: dlock_core::Deployment::TiDb,
                })),
                Err(failed) if failed.failure == Failure::ConnectionLost => {
                    self.done(Err(failed.error))
                }
                // Not TiDB (or a server that cannot say): MySQL's cluster check has run, and
                // MariaDB's goes on its own.
                _ if self.known_server() == Server::MySql => {
                    state.check_deployment = false;
                    state.check_passed = true;
                    self.lock()
                }
                _ => {
                    self.phase = AcquirePhase::Checking;
                    Step::Send(sql::cluster_check(self.known_server()))
                }
            },
            AcquirePhase::Done => unreachable!("an acquire is stepped after it is done"),
            AcquirePhase::Locking => match reply.expect("the lock statement's reply") {
                Ok(row) => {
                    if self.marker.is_some() {
                        self.read_name(state, first(&row), row.get(1..));
                    }
                    if self.checks == Checks::MarkColumn {
                        self.unmarked = row.last() != Some(&Some(1));
                    }
                    self.read_lock_reply(state, &row)
                }
                Err(failed) => match failed.failure {
                    Failure::Interrupted => self.ask(failed.error),
                    // A server without one of the variables (a MariaDB built without Galera,
                    // an engine that imitates MySQL) refuses the folded check; it took no
                    // lock, so the cluster check is sent on its own (MySQL's has run).
                    Failure::Other if self.checks == Checks::Full => {
                        tracing::debug!(target: "dlock", error = %failed.error, "the deployment check in the lock statement failed; checking on its own");
                        self.checks = Checks::None;
                        self.phase = AcquirePhase::AskingEngine;
                        Step::Send(sql::tidb_check())
                    }
                    Failure::ConnectionLost | Failure::Other => self.done(Err(failed.error)),
                },
            },
            AcquirePhase::Fencing => match reply.expect("the token bump's reply") {
                Ok(row) => match sql::read_token(&row) {
                    Ok(token) => {
                        state.token = Some(token);
                        self.hold(state)
                    }
                    Err(error) => self.undo(error),
                },
                Err(failed) if failed.failure == Failure::ConnectionLost => {
                    self.done(Err(failed.error))
                }
                Err(failed) => self.undo(failed.error),
            },
            AcquirePhase::Naming => match reply.expect("the session's marker") {
                Ok(row) => match sql::read_session(&row, self.marker.unwrap_or_default()) {
                    Ok(session) => {
                        state.named = Some(session);
                        self.took_marker = true;
                        self.mark(state)
                    }
                    Err(error) => self.undo(error),
                },
                Err(failed) if failed.failure == Failure::ConnectionLost => {
                    self.done(Err(failed.error))
                }
                Err(failed) => self.undo(failed.error),
            },
            AcquirePhase::Regating => match reply.expect("the given back grant's reply") {
                Ok(_) => self.check(state),
                // A `KILL QUERY` meant for the wait can land on the release instead: it ends
                // one statement, so the release goes again (a second one that finds the lock
                // given back answers NULL, which is as good).
                Err(failed) if failed.failure == Failure::Interrupted => {
                    self.phase = AcquirePhase::Regating;
                    Step::Send(sql::release_lock(&self.name))
                }
                Err(failed) => {
                    // The session may still hold the lock, and nobody knows of it: the
                    // connection must not be used for locks again.
                    if failed.failure != Failure::ConnectionLost {
                        state.unusable = true;
                    }
                    self.done(Err(failed.error))
                }
            },
            AcquirePhase::Undoing { error } => {
                if let Some(Err(failed)) = reply {
                    // The lock could not be given back, and this session may hold it: the
                    // connection must not be used for locks again.
                    if failed.failure != Failure::ConnectionLost {
                        state.unusable = true;
                    }
                }
                self.done(Err(error))
            }
            AcquirePhase::Asking { error } => match reply.expect("the IS_USED_LOCK answer") {
                Ok(row) => {
                    let held = matches!(row.first(), Some(Some(1 | 2)));
                    let limited = matches!(row.get(1), Some(Some(1)));
                    if self.marker.is_some() {
                        self.read_name(state, first(&row), row.get(2..));
                    }
                    if held {
                        self.granted(state)
                    } else if limited && !self.guarded && self.wait == Wait::Forever {
                        // The session's statement time limit cut the wait short: wait again,
                        // in the server, with the limit off for the one statement.
                        self.guarded = true;
                        self.lock()
                    } else {
                        self.done(Err(error))
                    }
                }
                Err(failed) => {
                    // The session may hold the lock and dlock cannot tell: the connection is in
                    // doubt and must not be used for locks again.
                    if failed.failure != Failure::ConnectionLost {
                        state.unusable = true;
                    }
                    self.done(Err(failed.error))
                }
            },
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
            AcquirePhase::Locking
            | AcquirePhase::Asking { .. }
            | AcquirePhase::Marking
            | AcquirePhase::Naming
            | AcquirePhase::Regating
            | AcquirePhase::Fencing
            | AcquirePhase::Undoing { .. }
            // The lock statement was interrupted, and may have granted.
            | AcquirePhase::AskingVersion {
                next: AfterVersion::Ask { .. },
            } => InFlight::Statement {
                token: Some(self.token),
                marker: self.marker,
            },
            // A read, but its reply unread leaves the connection out of step all the same.
            AcquirePhase::Checking
            | AcquirePhase::AskingEngine
            | AcquirePhase::AskingVersion { .. } => InFlight::Statement {
                token: None,
                marker: None,
            },
            AcquirePhase::Start | AcquirePhase::Done => InFlight::Nothing,
        }
    }
}

/// Refuses a server that keeps one named lock per session at most (taking a second frees
/// the first), unless the user turned the check off.
fn refuse_old(state: &LockState, version: (u16, u16, u16)) -> Result<()> {
    if state.check_deployment && Server::one_named_lock_per_session(version) {
        return Err(Error::CannotExclude {
            deployment: dlock_core::Deployment::OneNamedLockPerSession,
        });
    }
    Ok(())
}

/// The standalone deployment check of a connection whose server has handshake version
/// `version`: the refusal that needs no I/O, then the statements to send, whose replies go
/// to [`deployment_checked`]. Locks run the same checks in their first acquire.
pub(crate) fn deployment_check(version: (u16, u16, u16)) -> Result<[String; 3]> {
    if Server::one_named_lock_per_session(version) {
        return Err(Error::CannotExclude {
            deployment: dlock_core::Deployment::OneNamedLockPerSession,
        });
    }
    Ok([
        sql::tidb_check(),
        sql::cluster_check(Server::from_version(version)),
        sql::read_only_check(),
    ])
}

/// What the replies to [`deployment_check`]'s statements mean.
pub(crate) fn deployment_checked(
    version: (u16, u16, u16),
    [tidb, cluster, read_only]: [Reply; 3],
) -> Result<()> {
    match tidb {
        Ok(row) if first(&row) == Some(1) => {
            return Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::TiDb,
            });
        }
        Err(failed) if failed.failure == Failure::ConnectionLost => return Err(failed.error),
        _ => {}
    }
    checked(Server::from_version(version), cluster)?;
    match read_only {
        Ok(row) if first(&row) == Some(1) => Err(Error::CannotExclude {
            deployment: dlock_core::Deployment::ReadOnlyReplica,
        }),
        Ok(_) => Ok(()),
        Err(failed) if failed.failure == Failure::ConnectionLost => Err(failed.error),
        // An engine without the variables is taken for a writable server, as locks do.
        Err(failed) => {
            tracing::debug!(target: "dlock", error = %failed.error, "the read-only check could not run; taken as writable");
            Ok(())
        }
    }
}

/// What the reply to [`sql::cluster_check`] means: `Ok` when a lock excludes on this server.
pub(crate) fn checked(server: Server, reply: Reply) -> Result<()> {
    match reply {
        Ok(row) => match sql::cluster_node(server, first(&row)) {
            Some(deployment) => Err(Error::CannotExclude { deployment }),
            None => Ok(()),
        },
        Err(failed) if failed.failure == Failure::ConnectionLost => Err(failed.error),
        // A server that hides its replication tables from this login cannot be checked; it
        // is taken for what most servers are, not a cluster node.
        Err(failed) => {
            tracing::debug!(target: "dlock", error = %failed.error, "the cluster check could not run; taken as no cluster");
            Ok(())
        }
    }
}

fn first(row: &[Option<i64>]) -> Option<i64> {
    row.first().copied().flatten()
}

/// `release`.
#[derive(Debug)]
pub(crate) struct Release {
    held: Held,
    sent: bool,
}

impl Release {
    /// Starts a release: [`Error::NotAcquired`] when the object holds nothing. The object
    /// counts as unlocked from here on; a release the server refused puts the hold back.
    pub(crate) fn start(state: &mut LockState) -> Result<Release> {
        let held = state.held.take().ok_or(Error::NotAcquired)?;
        state.token = None;
        if state.unusable {
            // The session is being ended, or must be closed: that frees the lock.
            return Err(sql::unusable());
        }
        Ok(Release { held, sent: false })
    }
}

impl Operation for Release {
    type Output = ();

    fn step(&mut self, state: &mut LockState, reply: Option<Reply>) -> Step<()> {
        if !self.sent {
            self.sent = true;
            return Step::Send(sql::release_lock(&self.held.name));
        }
        Step::Done(match reply.expect("the release's reply") {
            Ok(row) => sql::read_released(first(&row)),
            Err(failed) if failed.failure == Failure::ConnectionLost => Err(failed.error),
            // The server refused the statement: the session still holds the lock.
            Err(failed) => {
                state.held = Some(self.held.clone());
                Err(failed.error)
            }
        })
    }

    fn in_flight(&self) -> InFlight {
        InFlight::Statement {
            token: None,
            marker: None,
        }
    }
}

/// `verify`: does the session hold the name now? A lost or unusable connection is `false`.
#[derive(Debug)]
pub(crate) struct Verify {
    name: Option<String>,
}

impl Verify {
    pub(crate) fn start(state: &LockState) -> Result<Verify> {
        if state.unusable {
            return Ok(Verify { name: None });
        }
        let name = match &state.held {
            Some(held) => held.name.clone(),
            None => state.name()?,
        };
        Ok(Verify { name: Some(name) })
    }
}

impl Operation for Verify {
    type Output = bool;

    fn step(&mut self, _state: &mut LockState, reply: Option<Reply>) -> Step<bool> {
        let Some(reply) = reply else {
            return match &self.name {
                Some(name) => Step::Send(sql::held_by_session(name)),
                None => Step::Done(Ok(false)),
            };
        };
        Step::Done(match reply {
            Ok(row) => sql::read_held(first(&row)),
            Err(failed) if failed.failure == Failure::ConnectionLost => Ok(false),
            Err(failed) => Err(failed.error),
        })
    }

    fn in_flight(&self) -> InFlight {
        InFlight::Statement {
            token: None,
            marker: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MARIADB: (u16, u16, u16) = (5, 5, 5);
    const MYSQL: (u16, u16, u16) = (8, 0, 36);

    fn sent<T: std::fmt::Debug>(step: Step<T>) -> String {
        match step {
            Step::Send(sql) => sql,
            Step::Execute(sql) => panic!("expected a query, got a statement without rows: {sql}"),
            Step::Done(outcome) => panic!("expected a statement, got {outcome:?}"),
        }
    }

    /// The statement without rows that `step` sends.
    fn executed<T: std::fmt::Debug>(step: Step<T>) -> String {
        match step {
            Step::Execute(sql) => sql,
            Step::Send(sql) => panic!("expected a statement without rows, got a query: {sql}"),
            Step::Done(outcome) => panic!("expected a statement, got {outcome:?}"),
        }
    }

    /// Steps a fresh acquire past its first statement, which finds its session unmarked (no
    /// check passed there before): what it sends next is the full check.
    fn unmarked(op: &mut Acquire, state: &mut LockState) -> Step<bool> {
        let gated = sent(op.step(state, None));
        assert!(!gated.contains("@@global"), "{gated}");
        if gated.contains("IF(@dlock_deployment_checked = '") {
            return op.step(state, row(&[Some(sql::UNMARKED)]));
        }
        // Locked first, the mark read beside: the grant goes back, then the check runs.
        assert!(
            gated.contains(", @dlock_deployment_checked <=> '"),
            "{gated}"
        );
        let give_back = sent(op.step(state, row(&[Some(1), Some(0)])));
        assert_eq!(give_back, "SELECT RELEASE_LOCK('jobs/x')");
        op.step(state, row(&[Some(1)]))
    }

    /// The outcome of a lock statement's `reply` after a full check, past the statement that
    /// marks the session when the check passed with a grant.
    fn marked(op: &mut Acquire, state: &mut LockState, reply: Option<Reply>) -> Result<bool> {
        match op.step(state, reply) {
            Step::Execute(mark) => {
                assert!(
                    mark.starts_with(&sql::mark_session(true, false, None)),
                    "{mark}"
                );
                done(op.step(state, Some(Ok(vec![Some(0), Some(0)]))))
            }
            Step::Send(sql) => panic!("expected the mark, got {sql}"),
            Step::Done(outcome) => outcome,
        }
    }

    fn done<T>(step: Step<T>) -> Result<T> {
        match step {
            Step::Done(outcome) => outcome,
            Step::Send(sql) | Step::Execute(sql) => panic!("expected an outcome, got {sql}"),
        }
    }

    fn row(values: &[Option<i64>]) -> Option<Reply> {
        Some(Ok(values.to_vec()))
    }

    fn failed(failure: Failure) -> Option<Reply> {
        let error = match failure {
            Failure::Interrupted => Error::Canceled { source: None },
            Failure::ConnectionLost => Error::ConnectionLost { source: None },
            Failure::Other => Error::backend("synthetic"),
        };
        Some(Err(Failed { failure, error }))
    }

    /// What dropping the lock now would do, on its own session: the lock keeps its state.
    fn dropped(state: &mut LockState, owned: bool, discardable: bool) -> OnDrop {
        let held = state.held.clone();
        let mut facts = SessionFacts::default();
        state.leave_to(&mut facts);
        state.held = held;
        facts.on_drop(owned, discardable)
    }

    #[test]
    fn a_hold_left_to_a_shared_session_is_paid_once_and_a_payment_in_doubt_gives_the_session_up() {
        let mut state = LockState::new(Key::from("jobs/x"), true);
        state.check_deployment = false;
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        assert!(done(op.step(&mut state, row(&[Some(1), Some(9), Some(77)]))).unwrap());
        let mut facts = SessionFacts::default();
        state.leave_to(&mut facts);
        assert!(state.held().is_none());
        assert_eq!(facts.owed.len(), 1);
        assert_eq!(facts.named, Some(SessionId { id: 9, tag: 77 }));
        // The next statement through dlock pays first, one hold of each name.
        let mut next = LockState::new(Key::from("jobs/y"), true);
        next.learn_from(&facts);
        let mut payment = facts.payment(&next).expect("a hold is owed");
        assert!(facts.owed.is_empty(), "taken for the payment");
        let sql = sent(payment.step(&mut next, None));
        assert_eq!(sql, "SELECT RELEASE_LOCK('jobs/x')");
        done(payment.step(&mut next, row(&[Some(1)]))).unwrap();
        assert!(payment.owed.is_empty());
        facts.unpaid(payment);
        assert!(facts.payment(&next).is_none(), "paid: nothing is owed");
        // What a payment did not pay goes back, first; an untrusted lock or session pays
        // nothing.
        facts.owed.push(Held {
            name: "later".into(),
        });
        facts.unpaid(PayOwed::new(vec![Held {
            name: "first".into(),
        }]));
        let names: Vec<&str> = facts.owed.iter().map(|held| held.name.as_str()).collect();
        assert_eq!(names, ["first", "later"]);
        facts.abandoned = true;
        assert!(facts.payment(&next).is_none());
        facts.abandoned = false;
        let mut untrusted = LockState::new(Key::from("jobs/z"), true);
        untrusted.unusable = true;
        assert!(facts.payment(&untrusted).is_none());
        assert_eq!(facts.owed.len(), 2, "nothing taken");
        facts.owed.clear();
        // A payment the server refused may have run in part, and another hold of the same
        // name must not go with a second one: the session is given up.
        let mut payment = PayOwed::new(vec![Held {
            name: "jobs/x".into(),
        }]);
        sent(payment.step(&mut next, None));
        assert!(done(payment.step(&mut next, failed(Failure::Interrupted))).is_err());
        assert!(next.is_unusable());
        // A lost connection took the holds with it: nothing is owed any more.
        let mut next = LockState::new(Key::from("jobs/y"), true);
        let mut payment = PayOwed::new(vec![Held {
            name: "jobs/x".into(),
        }]);
        sent(payment.step(&mut next, None));
        assert!(done(payment.step(&mut next, failed(Failure::ConnectionLost))).is_err());
        assert!(payment.owed.is_empty());
    }

    #[test]
    fn a_session_that_ends_owing_settles_by_its_connection_and_an_abandoned_one_is_unusable() {
        let owed = || {
            vec![Held {
                name: "jobs/x".into(),
            }]
        };
        let named = SessionId { id: 9, tag: 1 };
        let facts = |abandoned| SessionFacts {
            owed: owed(),
            abandoned,
            checked: false,
            named: Some(named),
            version: None,
        };
        assert_eq!(facts(false).on_drop(true, false), OnDrop::Release(owed()));
        assert_eq!(facts(false).on_drop(false, true), OnDrop::Discard);
        // A borrowed connection's session is ended, proven by its marker.
        assert_eq!(
            facts(false).on_drop(false, false),
            OnDrop::End(vec![Proof::Holds("dlock/session/0000000000000001".into())])
        );
        assert_eq!(facts(true).on_drop(true, false), OnDrop::Close);
        assert_eq!(facts(true).on_drop(false, false), OnDrop::Nothing);
        assert_eq!(
            SessionFacts::default().on_drop(true, false),
            OnDrop::Nothing
        );
        // Another object on an abandoned session cannot trust its replies either; a passed
        // check is not run again; the session's marker proves it for this one too.
        let mut state = LockState::new(Key::from("jobs/y"), true);
        state.learn_from(&SessionFacts {
            owed: Vec::new(),
            abandoned: true,
            checked: true,
            named: Some(named),
            version: Some((11, 4, 0)),
        });
        assert!(state.is_unusable());
        assert!(!state.check_deployment);
        assert_eq!(
            state.server(),
            Some(Server::MariaDb),
            "the version asked by another"
        );
        assert_eq!(
            state.abandon(InFlight::Nothing),
            vec![Proof::Holds("dlock/session/0000000000000001".into())]
        );
    }

    /// A lock's state past its deployment check, which its own test covers.
    fn state() -> LockState {
        let mut state = LockState::new(Key::from("jobs/x"), false);
        state.check_deployment = false;
        state
    }

    #[test]
    fn a_fenced_grant_bumps_its_token_and_gives_the_lock_back_if_it_cannot() {
        let mut state = state();
        state.fence = Some("`dlock_fence`".to_owned());
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        let bump = executed(op.step(&mut state, Some(Ok(vec![Some(1)]))));
        assert!(bump.starts_with("INSERT INTO `dlock_fence`"), "{bump}");
        assert!(matches!(
            op.step(&mut state, Some(Ok(vec![Some(7), Some(1)]))),
            Step::Done(Ok(true))
        ));
        assert_eq!(state.token(), Some(7));
        Release::start(&mut state).unwrap();
        assert_eq!(state.token(), None);

        // No table: the grant is given back, and the error says what to do.
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        executed(op.step(&mut state, Some(Ok(vec![Some(1)]))));
        let missing = sql::server_failure(1146, "Table 'dlock.dlock_fence' doesn't exist".into());
        let give_back = sent(op.step(&mut state, Some(Err(missing))));
        assert!(give_back.starts_with("SELECT RELEASE_LOCK("), "{give_back}");
        assert!(matches!(
            op.step(&mut state, Some(Ok(vec![Some(1)]))),
            Step::Done(Err(Error::FencingNotInstalled { .. }))
        ));
        assert!(state.held.is_none());

        // A server whose commits are not durable: the bump changes nothing, and the grant is
        // given back with an error that names the setting.
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        let bump = executed(op.step(&mut state, Some(Ok(vec![Some(1)]))));
        assert!(
            bump.contains("WHERE @@global.innodb_flush_log_at_trx_commit = 1"),
            "{bump}"
        );
        let give_back = sent(op.step(&mut state, Some(Ok(vec![Some(0), Some(0)]))));
        assert!(give_back.starts_with("SELECT RELEASE_LOCK("), "{give_back}");
        assert!(matches!(
            op.step(&mut state, Some(Ok(vec![Some(1)]))),
            Step::Done(Err(Error::FencingNotDurable {
                setting: "innodb_flush_log_at_trx_commit"
            }))
        ));
        assert!(state.held.is_none());
        assert_eq!(state.token(), None);
    }

    #[test]
    fn a_lock_that_names_its_session_reads_its_kept_marker_or_takes_one_after_the_grant() {
        for proves_holds in [false, true] {
            let mut state = LockState::new(Key::from("jobs/x"), proves_holds);
            state.check_deployment = false;
            state.names_session = !proves_holds;
            // The session keeps its marker: the lock statement names it, and that is all. (A
            // lock that proves its holds, on a session it knows no marker of, would have taken
            // one with the grant.)
            let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
            let lock = sent(op.step(&mut state, None));
            assert!(
                lock.ends_with(" END, CONNECTION_ID(), @dlock_session_tag") == proves_holds,
                "{lock}"
            );
            assert!(
                lock.ends_with("CONNECTION_ID(), @dlock_session_tag"),
                "{lock}"
            );
            assert!(done(op.step(&mut state, row(&[Some(1), Some(9), Some(77)]))).unwrap());
            assert_eq!(state.named(), Some(SessionId { id: 9, tag: 77 }));
            // Released, the session keeps its marker.
            let mut release = Release::start(&mut state).unwrap();
            assert_eq!(
                sent(release.step(&mut state, None)),
                "SELECT RELEASE_LOCK('jobs/x')"
            );
            done(release.step(&mut state, row(&[Some(1)]))).unwrap();

            // No marker (after a reset the lock did not see): the grant takes one, and keeps
            // its tag on the session, before the lock counts as held.
            let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
            let lock = sent(op.step(&mut state, None));
            assert!(
                lock.ends_with("GET_LOCK('jobs/x', 0), CONNECTION_ID(), @dlock_session_tag"),
                "{lock}"
            );
            let take = sent(op.step(&mut state, row(&[Some(1), Some(9), None])));
            assert!(
                take.starts_with("SELECT CONNECTION_ID(), GET_LOCK('dlock/session/"),
                "{take}"
            );
            let marker = take.find("dlock/session/").unwrap() + "dlock/session/".len();
            let tag = u64::from_str_radix(&take[marker..marker + 16], 16).unwrap();
            // A future dropped now is proven by the marker the statement in flight takes.
            assert!(matches!(
                op.in_flight(),
                InFlight::Statement { marker: Some(t), .. } if t == tag
            ));
            let keep = executed(op.step(&mut state, row(&[Some(9), Some(1)])));
            assert_eq!(keep, sql::mark_session(false, true, Some(tag)));
            assert!(state.held().is_none());
            assert!(done(op.step(&mut state, Some(Ok(vec![Some(0), Some(0)])))).unwrap());
            assert_eq!(state.named(), Some(SessionId { id: 9, tag }));
            assert!(state.held().is_some());
            Release::start(&mut state).unwrap();

            // A marker that cannot be taken: the grant goes back with the error.
            let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
            sent(op.step(&mut state, None));
            sent(op.step(&mut state, row(&[Some(1), Some(9), None])));
            let give_back = sent(op.step(&mut state, row(&[Some(9), Some(0)])));
            assert_eq!(give_back, "SELECT RELEASE_LOCK('jobs/x')");
            assert!(done(op.step(&mut state, row(&[Some(1)]))).is_err());
            assert!(state.held().is_none());
        }
    }

    #[test]
    fn the_first_grant_on_a_session_takes_its_marker_and_marks_it_checked_and_named_at_once() {
        let mut state = LockState::new(Key::from("jobs/x"), true);
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        let lock = sent(unmarked(&mut op, &mut state));
        let marker = lock.find("GET_LOCK('dlock/session/").unwrap() + 24;
        let tag = u64::from_str_radix(&lock[marker..marker + 16], 16).unwrap();
        // Taken with the grant (2): a future dropped now is proven by it.
        let mark = executed(op.step(&mut state, row(&[Some(2), Some(9), None])));
        assert!(matches!(
            op.in_flight(),
            InFlight::Statement { marker: Some(t), .. } if t == tag
        ));
        assert_eq!(mark, sql::mark_session(true, true, Some(tag)));
        assert!(done(op.step(&mut state, Some(Ok(vec![Some(0), Some(0)])))).unwrap());
        assert_eq!(state.named(), Some(SessionId { id: 9, tag }));
    }

    #[test]
    fn a_lock_that_needs_no_proof_locks_first_and_reads_the_mark_beside() {
        // A marked session: one plain statement, the mark in its last column.
        let mut state = checked();
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Forever).unwrap();
        let lock = sent(op.step(&mut state, None));
        assert!(
            lock.ends_with(&format!(
                "GET_LOCK('jobs/x', 31536000), @dlock_deployment_checked <=> '{}'",
                sql::mark_session(true, false, None)
                    .trim_start_matches("SET @dlock_deployment_checked = '")
                    .trim_end_matches('\'')
            )),
            "{lock}"
        );
        assert!(done(op.step(&mut state, row(&[Some(1), Some(1)]))).unwrap());
        assert!(!state.check_deployment, "the mark proves the check passed");
        Release::start(&mut state).unwrap();

        // Busy on an unmarked session: not acquired, and nothing checked yet.
        let mut state = checked();
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        assert!(!done(op.step(&mut state, row(&[Some(0), Some(0)]))).unwrap());
        assert!(state.check_deployment);

        // A release a KILL QUERY cut short goes again; one the server refused leaves the
        // connection in doubt.
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        let give_back = sent(op.step(&mut state, row(&[Some(1), Some(0)])));
        let again = sent(op.step(&mut state, failed(Failure::Interrupted)));
        assert_eq!(again, give_back);
        assert!(done(op.step(&mut state, failed(Failure::Other))).is_err());
        assert!(state.is_unusable());
        assert!(state.held().is_none());

        // A timed wait, a lock that proves its holds, and a server not known yet are gated
        // by the mark instead.
        for (proves_holds, version, wait) in [
            (false, Some(MARIADB), Wait::For(Duration::from_secs(1))),
            (true, Some(MARIADB), Wait::Never),
            (false, None, Wait::Never),
        ] {
            let mut state = LockState::new(Key::from("jobs/x"), proves_holds);
            let mut op = Acquire::start(&state, version, wait).unwrap();
            let lock = sent(op.step(&mut state, None));
            let lock = if lock == sql::server_version() {
                sent(op.step(&mut state, version_reply(MARIADB)))
            } else {
                lock
            };
            assert!(lock.contains("IF(@dlock_deployment_checked = '"), "{lock}");
        }
    }

    #[test]
    fn a_lock_whose_pool_passed_a_check_elsewhere_locks_first_without_its_server() {
        for (wait, timeout) in [(Wait::Never, "0"), (Wait::Forever, "31536000")] {
            // A marked session: one plain statement in the form both servers read, the mark
            // beside it; the version is never asked.
            let mut state = checked();
            state.checked_elsewhere = true;
            let mut op = Acquire::start(&state, None, wait).unwrap();
            let lock = sent(op.step(&mut state, None));
            assert!(
                lock.contains(&format!(
                    "GET_LOCK('jobs/x', {timeout}), @dlock_deployment_checked <=> '"
                )),
                "{lock}"
            );
            assert!(!lock.contains("IF(@dlock_deployment_checked"), "{lock}");
            assert!(done(op.step(&mut state, row(&[Some(1), Some(1)]))).unwrap());
            assert!(!state.check_deployment, "the mark proves the check passed");
            assert_eq!(state.server(), None);
            Release::start(&mut state).unwrap();
        }

        // An unmarked session (a new one, or one of another server): the grant goes back,
        // and the whole check asks this session's version before it runs; an old server
        // is refused there.
        let mut state = checked();
        state.checked_elsewhere = true;
        let mut op = Acquire::start(&state, None, Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        let give_back = sent(op.step(&mut state, row(&[Some(1), Some(0)])));
        assert_eq!(give_back, sql::release_lock("jobs/x"));
        assert_eq!(
            sent(op.step(&mut state, row(&[Some(1)]))),
            sql::server_version()
        );
        assert!(matches!(
            done(op.step(&mut state, version_reply((5, 7, 4)))),
            Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::OneNamedLockPerSession
            })
        ));
        assert!(state.held().is_none());

        // A timed wait still asks the version for its form, gated by the mark.
        let mut state = checked();
        state.checked_elsewhere = true;
        let mut op = Acquire::start(&state, None, Wait::For(Duration::from_secs(1))).unwrap();
        assert_eq!(sent(op.step(&mut state, None)), sql::server_version());
        let lock = sent(op.step(&mut state, version_reply(MARIADB)));
        assert!(lock.contains("IF(@dlock_deployment_checked = '"), "{lock}");
    }

    /// A lock whose deployment check has not run yet.
    fn checked() -> LockState {
        LockState::new(Key::from("jobs/x"), false)
    }

    /// The reply to [`sql::server_version`] for `version`.
    fn version_reply(version: (u16, u16, u16)) -> Option<Reply> {
        let (major, minor, patch) = version;
        row(&[
            Some(i64::from(major)),
            Some(i64::from(minor)),
            Some(i64::from(patch)),
        ])
    }

    #[test]
    fn a_lock_that_does_not_know_its_server_tries_and_waits_in_a_form_both_servers_read() {
        // One statement, and the version is never asked: a try is the same on both servers,
        // and a wait without timeout picks its form by the version the server reports. The
        // session's mark, where a check is expected, proves the version was checked.
        for check in [true, false] {
            for (wait, timeout) in [(Wait::Never, "0"), (Wait::Forever, "31536000")] {
                let mut state = checked();
                state.check_deployment = check;
                let mut op = Acquire::start(&state, None, wait).unwrap();
                let lock = sent(op.step(&mut state, None));
                assert!(
                    lock.contains(&format!("GET_LOCK('jobs/x', {timeout})")),
                    "{lock}"
                );
                assert_eq!(
                    lock.contains("IF(@dlock_deployment_checked = '"),
                    check,
                    "{lock}"
                );
                assert!(done(op.step(&mut state, row(&[Some(1)]))).unwrap());
                assert!(state.held().is_some());
                assert!(!state.check_deployment, "the mark proves the check passed");
                assert_eq!(state.server(), None);
                Release::start(&mut state).unwrap();
            }
        }
    }

    #[test]
    fn a_lock_that_does_not_know_its_server_asks_its_version_where_the_form_needs_it() {
        // An unmarked session: the version is asked, then the whole check runs and marks the
        // session for the server it found.
        for version in [MARIADB, (11, 4, 2), MYSQL] {
            let mut state = checked();
            let mut op = Acquire::start(&state, None, Wait::Never).unwrap();
            sent(op.step(&mut state, None));
            let asked = sent(op.step(&mut state, row(&[Some(sql::UNMARKED)])));
            assert_eq!(asked, sql::server_version());
            let mut next = sent(op.step(&mut state, version_reply(version)));
            if Server::from_version(version) == Server::MySql {
                assert!(next.contains("replication_group_members"), "{next}");
                next = sent(op.step(&mut state, row(&[Some(0)])));
            }
            assert!(next.contains("@@global"), "the whole check: {next}");
            assert!(marked(&mut op, &mut state, row(&[Some(1)])).unwrap());
            assert_eq!(state.server(), Some(Server::from_version(version)));
        }

        // A server that keeps one named lock per session, found only now: refused, nothing
        // locked.
        let mut state = checked();
        let mut op = Acquire::start(&state, None, Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(&mut state, row(&[Some(sql::UNMARKED)])));
        assert!(matches!(
            op.step(&mut state, version_reply((5, 7, 4))),
            Step::Done(Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::OneNamedLockPerSession
            }))
        ));
        assert!(state.held().is_none());

        // A timed wait and a fenced lock need the server first; once known, it is not asked
        // again.
        let mut timed = checked();
        let mut fenced = checked();
        fenced.fence = Some("dlock.dlock_fence".to_owned());
        for (state, wait) in [
            (&mut timed, Wait::For(Duration::from_secs(2))),
            (&mut fenced, Wait::Never),
        ] {
            let mut op = Acquire::start(state, None, wait).unwrap();
            assert_eq!(sent(op.step(state, None)), sql::server_version());
            let lock = sent(op.step(state, version_reply(MARIADB)));
            assert!(lock.contains("GET_LOCK('jobs/x'"), "{lock}");
            assert!(!lock.contains("VERSION()"), "{lock}");
            assert_eq!(state.server(), Some(Server::MariaDb));
            let op = Acquire::start(state, None, wait).unwrap();
            assert!(matches!(op.phase, AcquirePhase::Start));
        }

        // An interrupted statement: the version is asked, then whether it granted.
        let mut state = checked();
        let mut op = Acquire::start(&state, None, Wait::Forever).unwrap();
        sent(op.step(&mut state, None));
        assert_eq!(
            sent(op.step(&mut state, row(&[None]))),
            sql::server_version()
        );
        assert!(matches!(
            op.in_flight(),
            InFlight::Statement { token: Some(_), .. }
        ));
        let asked = sent(op.step(&mut state, version_reply(MARIADB)));
        assert_eq!(asked, sql::interrupted(Server::MariaDb, "jobs/x", false));
        assert!(done(op.step(&mut state, row(&[Some(1), Some(0)]))).unwrap());

        // A version that cannot be read after an interruption leaves the connection in doubt.
        let mut state = checked();
        let mut op = Acquire::start(&state, None, Wait::Forever).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(&mut state, row(&[None])));
        assert!(done(op.step(&mut state, row(&[None, None, None]))).is_err());
        assert!(state.is_unusable());
    }

    #[test]
    fn mariadbs_first_lock_statement_carries_the_galera_check() {
        // On a Galera node the statement locks nothing and answers -1.
        let mut state = LockState::new(Key::from("jobs/x"), false);
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        let lock = sent(unmarked(&mut op, &mut state));
        assert!(lock.contains("IF(@@global.wsrep_on"), "{lock}");
        assert!(matches!(
            op.step(&mut state, row(&[Some(sql::REFUSED_ON_GALERA)])),
            Step::Done(Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::Galera
            }))
        ));
        assert!(state.held.is_none());
        assert!(state.check_deployment, "checked again next time");
        // Anywhere else it locks, the check has passed for this object, and the session is
        // marked so.
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        sent(unmarked(&mut op, &mut state));
        assert!(marked(&mut op, &mut state, row(&[Some(1)])).unwrap());
        assert!(!state.check_deployment, "checked once per lock object");
        Release::start(&mut state).unwrap();
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        let lock = sent(op.step(&mut state, None));
        assert!(!lock.contains("wsrep"), "{lock}");
        // A busy lock says nothing of the deployment: the next statement checks again.
        let mut state = LockState::new(Key::from("jobs/x"), false);
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        sent(unmarked(&mut op, &mut state));
        assert!(!done(op.step(&mut state, row(&[Some(0)]))).unwrap());
        assert!(state.check_deployment);
        // A lock made later on a marked session takes the mark for the check.
        let mut state = LockState::new(Key::from("jobs/x"), false);
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        let gated = sent(op.step(&mut state, None));
        assert!(!gated.contains("@@global"), "{gated}");
        assert!(done(op.step(&mut state, row(&[Some(1)]))).unwrap());
        assert!(!state.check_deployment, "the session's mark is its check");
    }

    #[test]
    fn a_mariadb_without_wsrep_variables_is_checked_on_its_own() {
        let mut state = LockState::new(Key::from("jobs/x"), false);
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        sent(unmarked(&mut op, &mut state));
        let unknown = sql::server_failure(1193, "Unknown system variable 'wsrep_on'".into());
        // Whether it is TiDB is asked first, on its own: not TiDB.
        let engine = sent(op.step(&mut state, Some(Err(unknown))));
        assert_eq!(engine, sql::tidb_check());
        let check = sent(op.step(&mut state, row(&[Some(0)])));
        assert!(check.starts_with("SELECT COUNT(*)"), "{check}");
        let lock = sent(op.step(&mut state, row(&[Some(0)])));
        assert!(
            lock.contains("GET_LOCK") && !lock.contains("wsrep"),
            "{lock}"
        );
        assert!(marked(&mut op, &mut state, row(&[Some(1)])).unwrap());
        assert!(!state.check_deployment);
    }

    #[test]
    fn tidb_is_refused_in_the_lock_statement_or_by_the_question_after_it_failed() {
        // The lock statement answers TiDB's refusal.
        let mut state = LockState::new(Key::from("jobs/x"), false);
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        sent(unmarked(&mut op, &mut state));
        let refused = op.step(&mut state, row(&[Some(sql::REFUSED_ON_TIDB)]));
        assert!(matches!(
            refused,
            Step::Done(Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::TiDb
            }))
        ));
        assert!(state.check_deployment, "checked again next time");
        // A TiDB without one of the variables the lock statement reads fails it; the
        // question asked then finds TiDB, and nothing is locked.
        for version in [MYSQL, MARIADB] {
            let mut state = LockState::new(Key::from("jobs/x"), false);
            let mut op = Acquire::start(&state, Some(version), Wait::Never).unwrap();
            let mut statement = sent(unmarked(&mut op, &mut state));
            if statement.starts_with("SELECT COUNT(*)") {
                // MySQL's cluster check, which TiDB cannot answer: taken as no cluster.
                let missing = sql::server_failure(1146, "Table doesn't exist".into());
                statement = sent(op.step(&mut state, Some(Err(missing))));
            }
            assert!(statement.contains("GET_LOCK"), "{statement}");
            let unknown =
                sql::server_failure(1193, "Unknown system variable 'innodb_read_only'".into());
            assert_eq!(
                sent(op.step(&mut state, Some(Err(unknown)))),
                sql::tidb_check()
            );
            let refused = op.step(&mut state, row(&[Some(1)]));
            assert!(matches!(
                refused,
                Step::Done(Err(Error::CannotExclude {
                    deployment: dlock_core::Deployment::TiDb
                }))
            ));
            assert!(state.held().is_none());
        }
    }

    #[test]
    fn mysqls_first_acquire_refuses_a_group_replication_member_before_it_locks() {
        for (version, count, refused) in [
            (MYSQL, 1, Some(dlock_core::Deployment::GroupReplication)),
            (MYSQL, 0, None),
        ] {
            let mut state = LockState::new(Key::from("jobs/x"), false);
            let mut op = Acquire::start(&state, Some(version), Wait::Never).unwrap();
            let check = sent(unmarked(&mut op, &mut state));
            assert!(check.starts_with("SELECT COUNT(*)"), "{check}");
            let next = op.step(&mut state, Some(Ok(vec![Some(count)])));
            match refused {
                Some(deployment) => {
                    assert!(matches!(
                        next,
                        Step::Done(Err(Error::CannotExclude { deployment: found })) if found == deployment
                    ));
                    assert!(state.check_deployment, "checked again next time");
                }
                None => {
                    let lock = sent(next);
                    assert!(lock.contains("IF(@@global.read_only"), "{lock}");
                    assert!(
                        state.check_deployment,
                        "the read-only check is still to pass"
                    );
                    assert!(marked(&mut op, &mut state, row(&[Some(1)])).unwrap());
                    assert!(!state.check_deployment, "checked once per lock object");
                }
            }
        }
    }

    #[test]
    fn a_read_only_server_is_refused_by_the_lock_statement_on_either_server() {
        for version in [MARIADB, MYSQL] {
            let mut state = LockState::new(Key::from("jobs/x"), false);
            let mut op = Acquire::start(&state, Some(version), Wait::Never).unwrap();
            let mut next = unmarked(&mut op, &mut state);
            if version == MYSQL {
                // No Group Replication member.
                next = op.step(&mut state, row(&[Some(0)]));
            }
            let lock = sent(next);
            assert!(lock.contains("@@global.innodb_read_only, -2"), "{lock}");
            assert!(matches!(
                op.step(&mut state, row(&[Some(sql::REFUSED_READ_ONLY)])),
                Step::Done(Err(Error::CannotExclude {
                    deployment: dlock_core::Deployment::ReadOnlyReplica
                }))
            ));
            assert!(state.held.is_none());
            assert!(state.check_deployment, "checked again next time");
        }
    }

    #[test]
    fn the_standalone_check_refuses_what_a_lock_refuses() {
        assert!(matches!(
            deployment_check((5, 6, 0)),
            Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::OneNamedLockPerSession
            })
        ));
        let [tidb, cluster, read_only] = deployment_check(MARIADB).unwrap();
        assert!(tidb.contains("TiDB"), "{tidb}");
        assert!(cluster.starts_with("SELECT COUNT(*)"), "{cluster}");
        assert!(read_only.contains("@@global.read_only"), "{read_only}");
        let reply = |value| Ok(vec![Some(value)]);
        assert!(deployment_checked(MARIADB, [reply(0), reply(0), reply(0)]).is_ok());
        assert!(matches!(
            deployment_checked(MYSQL, [reply(1), reply(0), reply(0)]),
            Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::TiDb
            })
        ));
        assert!(matches!(
            deployment_checked(MARIADB, [reply(0), reply(0), reply(1)]),
            Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::ReadOnlyReplica
            })
        ));
        assert!(matches!(
            deployment_checked(MARIADB, [reply(0), reply(2), reply(0)]),
            Err(Error::CannotExclude {
                deployment: dlock_core::Deployment::Galera
            })
        ));
        let unknown = sql::server_failure(1193, "Unknown system variable".into());
        assert!(deployment_checked(MYSQL, [reply(0), reply(0), Err(unknown)]).is_ok());
    }

    #[test]
    fn a_server_with_one_named_lock_per_session_is_refused_before_anything_is_sent() {
        let unchecked = LockState::new(Key::from("jobs/x"), false);
        for version in [(5, 7, 4), (5, 5, 62), (10, 0, 1)] {
            assert!(matches!(
                Acquire::start(&unchecked, Some(version), Wait::Never),
                Err(Error::CannotExclude {
                    deployment: dlock_core::Deployment::OneNamedLockPerSession
                })
            ));
        }
        // Turned off, the user takes the risk.
        assert!(Acquire::start(&state(), Some((5, 7, 4)), Wait::Never).is_ok());
    }

    #[test]
    fn mariadbs_own_refusal_on_a_cluster_node_names_galera() {
        let failed = sql::server_failure(
            1235,
            "This version of MariaDB doesn't yet support 'GET_LOCK in cluster (WSREP_ON=ON)'"
                .into(),
        );
        assert!(matches!(
            failed.error,
            Error::CannotExclude {
                deployment: dlock_core::Deployment::Galera
            }
        ));
        let other = sql::server_failure(1235, "doesn't yet support 'something else'".into());
        assert!(matches!(other.error, Error::Backend(_)));
    }

    #[test]
    fn an_acquire_sends_one_tagged_statement_and_holds_on_1() {
        let mut state = state();
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Forever).unwrap();
        let sql = sent(op.step(&mut state, None));
        assert!(sql.starts_with("SELECT /* dlock:"), "{sql}");
        assert!(sql.ends_with("GET_LOCK('jobs/x', 31536000)"), "{sql}");
        assert!(matches!(
            op.in_flight(),
            InFlight::Statement {
                token: Some(_),
                marker: None
            }
        ));
        assert!(done(op.step(&mut state, row(&[Some(1)]))).unwrap());
        assert_eq!(state.held().unwrap().name, "jobs/x");
        assert!(matches!(
            Acquire::start(&state, Some(MARIADB), Wait::Never),
            Err(Error::AlreadyAcquired)
        ));
    }

    #[test]
    fn a_timeout_is_false_and_a_forever_wait_that_ran_its_year_waits_again() {
        let mut state = state();
        let mut op =
            Acquire::start(&state, Some(MARIADB), Wait::For(Duration::from_millis(5))).unwrap();
        let sql = sent(op.step(&mut state, None));
        assert!(
            sql.starts_with("SET STATEMENT max_statement_time = 0 FOR"),
            "{sql}"
        );
        assert!(!done(op.step(&mut state, row(&[Some(0)]))).unwrap());
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Forever).unwrap();
        let first = sent(op.step(&mut state, None));
        assert_eq!(sent(op.step(&mut state, row(&[Some(0)]))), first);
    }

    #[test]
    fn an_interrupted_wait_that_was_granted_is_held() {
        for reply in [row(&[None]), failed(Failure::Interrupted)] {
            let mut state = state();
            let mut op = Acquire::start(&state, Some(MYSQL), Wait::Forever).unwrap();
            sent(op.step(&mut state, None));
            let ask = sent(op.step(&mut state, reply));
            assert!(
                ask.contains("IS_USED_LOCK('jobs/x') <=> CONNECTION_ID()"),
                "{ask}"
            );
            assert!(ask.ends_with("@@max_execution_time > 0"), "{ask}");
            assert!(done(op.step(&mut state, row(&[Some(1), Some(0)]))).unwrap());
            assert!(state.held().is_some());
        }
    }

    #[test]
    fn an_interrupted_wait_not_granted_is_canceled_unless_a_statement_limit_cut_it_short() {
        let mut state = state();
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Forever).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(&mut state, row(&[None])));
        let outcome = done(op.step(&mut state, row(&[Some(0), Some(0)])));
        assert!(
            matches!(outcome, Err(Error::Canceled { .. })),
            "{outcome:?}"
        );
        // The session has max_statement_time: the plain wait waits again, guarded.
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Forever).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(&mut state, row(&[None])));
        let again = sent(op.step(&mut state, row(&[Some(0), Some(1)])));
        assert!(
            again.starts_with("SET STATEMENT max_statement_time = 0 FOR"),
            "{again}"
        );
        // A guarded wait is not cut short by the limit: NULL there is a KILL QUERY.
        sent(op.step(&mut state, row(&[None])));
        let outcome = done(op.step(&mut state, row(&[Some(0), Some(1)])));
        assert!(matches!(outcome, Err(Error::Canceled { .. })));
        // The same for a timed wait, which is always guarded.
        let mut op =
            Acquire::start(&state, Some(MYSQL), Wait::For(Duration::from_secs(1))).unwrap();
        let sql = sent(op.step(&mut state, None));
        assert!(
            sql.starts_with("SELECT /*+ SET_VAR(max_execution_time = 0) */"),
            "{sql}"
        );
        sent(op.step(&mut state, failed(Failure::Interrupted)));
        let outcome = done(op.step(&mut state, row(&[Some(0), Some(1)])));
        assert!(matches!(outcome, Err(Error::Canceled { .. })));
    }

    #[test]
    fn a_question_that_fails_leaves_the_connection_in_doubt() {
        let mut state = state();
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Forever).unwrap();
        sent(op.step(&mut state, None));
        sent(op.step(&mut state, row(&[None])));
        assert!(done(op.step(&mut state, failed(Failure::Other))).is_err());
        assert!(state.is_unusable());
        let refused = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap_err();
        assert!(matches!(refused, Error::ConnectionUnusable { .. }));
        let mut verify = Verify::start(&state).unwrap();
        assert!(!done(verify.step(&mut state, None)).unwrap());
    }

    #[test]
    fn a_held_lock_on_a_borrowed_connection_is_proven_by_its_sessions_marker() {
        let mut state = LockState::new(Key::from("jobs/x"), true);
        state.check_deployment = false;
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        assert!(done(op.step(&mut state, row(&[Some(1), Some(9), Some(5)]))).unwrap());
        // Dropped while held, on a borrowed connection: end the session, proven by the
        // session's marker.
        assert_eq!(
            dropped(&mut state, false, false),
            OnDrop::End(vec![Proof::Holds("dlock/session/0000000000000005".into())])
        );
        let mut release = Release::start(&mut state).unwrap();
        sent(release.step(&mut state, None));
        done(release.step(&mut state, row(&[Some(1)]))).unwrap();
        assert_eq!(dropped(&mut state, false, false), OnDrop::Nothing);
    }

    #[test]
    fn a_dropped_statement_makes_the_connection_unusable_and_names_its_proofs() {
        let mut state = LockState::new(Key::from("jobs/x"), true);
        state.check_deployment = false;
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Forever).unwrap();
        sent(op.step(&mut state, None));
        let proofs = state.abandon(op.in_flight());
        assert!(
            matches!(proofs.as_slice(), [Proof::Running(_), Proof::Holds(_)]),
            "{proofs:?}"
        );
        assert!(state.is_unusable());
        assert!(matches!(
            Release::start(&mut state),
            Err(Error::NotAcquired)
        ));
        // A statement without a tag or a hold leaves nothing to prove: the connection is
        // closed by its owner or its pool, or the user is told to close it.
        let mut state = LockState::new(Key::from("jobs/x"), false);
        state.check_deployment = false;
        assert!(state.abandon(InFlight::Nothing).is_empty());
        assert_eq!(dropped(&mut state, true, false), OnDrop::Close);
        assert_eq!(dropped(&mut state, false, true), OnDrop::Discard);
        assert_eq!(dropped(&mut state, false, false), OnDrop::Nothing);
    }

    #[test]
    fn an_owned_held_lock_is_released_by_a_task_and_a_pooled_one_discarded() {
        let mut state = state();
        let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
        sent(op.step(&mut state, None));
        done(op.step(&mut state, row(&[Some(1)]))).unwrap();
        assert!(matches!(
            dropped(&mut state, true, false),
            OnDrop::Release(_)
        ));
        assert_eq!(dropped(&mut state, false, true), OnDrop::Discard);
    }

    #[test]
    fn a_release_the_server_refused_keeps_the_lock_and_a_lost_connection_frees_it() {
        for (reply, still_held) in [
            (failed(Failure::Other), true),
            (failed(Failure::ConnectionLost), false),
            (row(&[Some(0)]), false),
        ] {
            let mut state = state();
            let mut op = Acquire::start(&state, Some(MARIADB), Wait::Never).unwrap();
            sent(op.step(&mut state, None));
            done(op.step(&mut state, row(&[Some(1)]))).unwrap();
            let mut release = Release::start(&mut state).unwrap();
            sent(release.step(&mut state, None));
            assert!(done(release.step(&mut state, reply)).is_err());
            assert_eq!(state.held().is_some(), still_held);
        }
    }
}
