//! Every statement dlock sends to PostgreSQL and the reading of every reply, as plain
//! functions. The blocking and tokio flavours only send these and hand back what came.
//!
//! Statements go over the simple query protocol with the key as an integer literal: one round
//! trip, no statement to prepare per connection, and nothing the user wrote is ever spliced
//! into SQL (keys are integers we format ourselves).

use std::fmt::Write as _;
use std::time::Duration;

use dlock_core::{Error, PgKey};

#[cfg(all(feature = "blocking", not(feature = "tokio")))]
use postgres as driver;
#[cfg(feature = "tokio")]
use tokio_postgres as driver;

use driver::SimpleQueryMessage;
use driver::error::SqlState;
use driver::types::{ToSql, Type};

/// Whether a lock excludes everyone else or only exclusive holders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One holder at a time (`pg_advisory_lock`). The default.
    Exclusive,
    /// Any number of shared holders, but no exclusive one (`pg_advisory_lock_shared`).
    Shared,
}

impl Mode {
    /// The mode's name in `pg_locks.mode`.
    pub fn pg_locks_name(self) -> &'static str {
        match self {
            Mode::Exclusive => "ExclusiveLock",
            Mode::Shared => "ShareLock",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Mode::Exclusive => "",
            Mode::Shared => "_shared",
        }
    }
}

/// How long long a lock statement may wait in the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// `pg_try_advisory_lock`: never waits.
    Never,
    /// A plain `pg_advisory_lock`, under the session's `lock_timeout` (normally none). If a
    /// session setting cuts the wait short, the caller waits again with `Millis(0)`.
    Unbounded,
    /// `pg_advisory_lock` under `lock_timeout` of this many milliseconds, set for the one
    /// statement; 0 means no limit whatever the session's setting.
    Millis(u32),
}

impl Wait {
    /// The wait for `acquire_timeout(timeout)`. `lock_timeout` counts whole milliseconds and
    /// takes 0 as "no limit", so the timeout is rounded up (never firing early) and a zero
    /// timeout becomes a try. A timeout beyond `lock_timeout`'s range (about 24.8 days) waits
    /// without limit.
    pub(crate) fn for_timeout(timeout: Duration) -> Wait {
        if timeout.is_zero() {
            return Wait::Never;
        }
        let millis = timeout.as_nanos().div_ceil(1_000_000);
        match i32::try_from(millis) {
            Ok(millis) => Wait::Millis(millis.unsigned_abs()),
            Err(_) => Wait::Millis(0),
        }
    }
}

/// Whether a lock lasts for the session or for the current transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Session,
    Transaction,
}

/// The session setting where the cleanup of a dropped acquire records the attempt it
/// cleaned up, so that running it again does nothing.
#[cfg(feature = "tokio")]
const CLEANED_ATTEMPT: &str = "dlock.cleaned_attempt";

/// Where a waiting acquire keeps the caller's `lock_timeout` while it sets its own.
const SAVED_LOCK_TIMEOUT: &str = "dlock.saved_lock_timeout";

fn key_args(key: PgKey) -> String {
    match key {
        PgKey::BigInt(value) => value.to_string(),
        PgKey::Pair(high, low) => format!("{high}, {low}"),
    }
}

/// The statement that takes a lock. Its reply is read by [`read_acquired`].
///
/// A [`Wait::Millis`] statement sets `lock_timeout` for itself only: it saves the caller's
/// value, sets its own, waits, and restores the caller's value. (Measured, the setting
/// costs about a tenth of a lock/unlock cycle, so a plain acquire goes without it.) Outside a transaction the settings
/// are local to the statement anyway; inside one, the restore keeps the transaction's
/// setting as it was. The target list is evaluated left to right.
pub(crate) fn lock(key: PgKey, mode: Mode, scope: Scope, wait: Wait) -> String {
    let xact = match scope {
        Scope::Session => "",
        Scope::Transaction => "_xact",
    };
    let (args, suffix) = (key_args(key), mode.suffix());
    let mut sql = String::from("SELECT ");
    match wait {
        Wait::Never => {
            let _ = write!(sql, "pg_try_advisory{xact}_lock{suffix}({args})");
        }
        Wait::Unbounded => {
            let _ = write!(sql, "pg_advisory{xact}_lock{suffix}({args})");
        }
        Wait::Millis(millis) => {
            let _ = write!(
                sql,
                "set_config('{SAVED_LOCK_TIMEOUT}', current_setting('lock_timeout'), true), \
                 set_config('lock_timeout', '{millis}', true), \
                 pg_advisory{xact}_lock{suffix}({args}), \
                 set_config('lock_timeout', current_setting('{SAVED_LOCK_TIMEOUT}'), true)"
            );
        }
    }
    sql
}

/// Reads the reply to [`lock`]: `true` when the lock was granted.
///
/// A try answers in its first column; a waiting lock that returns at all was granted (its
/// timeout is an error, read by [`classify`]).
pub(crate) fn read_acquired(wait: Wait, reply: &[SimpleQueryMessage]) -> Result<bool, Error> {
    match wait {
        Wait::Never => read_bool(reply),
        Wait::Unbounded | Wait::Millis(_) => first_row(reply).map(|_| true),
    }
}

/// The statement that releases a session lock: `true` if the session held it.
pub(crate) fn unlock(key: PgKey, mode: Mode) -> String {
    format!(
        "SELECT pg_advisory_unlock{}({})",
        mode.suffix(),
        key_args(key)
    )
}

/// The statements a lock object prepares once it is reused: plain lock, try, and unlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Lock,
    TryLock,
    Unlock,
}

/// What a prepared statement depends on: the key's shape (one bigint or two ints) and the
/// mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pair: bool,
    mode: Mode,
}

impl Shape {
    pub(crate) fn of(key: PgKey, mode: Mode) -> Shape {
        Shape {
            pair: matches!(key, PgKey::Pair(..)),
            mode,
        }
    }
}

impl Kind {
    /// The kind of statement a wait uses, if it has a prepared form (a timed wait sets
    /// `lock_timeout` around the lock and always goes as a simple query).
    pub(crate) fn for_wait(wait: Wait) -> Option<Kind> {
        match wait {
            Wait::Never => Some(Kind::TryLock),
            Wait::Unbounded => Some(Kind::Lock),
            Wait::Millis(_) => None,
        }
    }

    /// The statement's SQL, with typed parameters, and the parameters' types.
    pub(crate) fn sql(self, shape: Shape) -> (String, &'static [Type]) {
        let function = match self {
            Kind::Lock => "pg_advisory_lock",
            Kind::TryLock => "pg_try_advisory_lock",
            Kind::Unlock => "pg_advisory_unlock",
        };
        let suffix = shape.mode.suffix();
        if shape.pair {
            (
                format!("SELECT {function}{suffix}($1, $2)"),
                &[Type::INT4, Type::INT4],
            )
        } else {
            (format!("SELECT {function}{suffix}($1)"), &[Type::INT8])
        }
    }
}

/// The parameters of a prepared statement for a key, matching [`Kind::sql`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params(PgKey);

impl Params {
    pub(crate) fn of(key: PgKey) -> Params {
        Params(key)
    }

    /// The values to bind, borrowed from `self`.
    pub(crate) fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        match &self.0 {
            PgKey::BigInt(value) => vec![value],
            PgKey::Pair(high, low) => vec![high, low],
        }
    }
}

/// Prepared statements of one lock object, kept once the object is reused.
///
/// Measured on loopback, a prepared lock/unlock cycle runs about a tenth faster than the
/// same statements as simple queries: the server skips parsing and planning. Preparing
/// costs a round trip per statement, so an object prepares its acquire's statement and its
/// unlock on its second acquire, and a lock used once (as each pooled lock is) pays nothing
/// for it. Preparing happens before the lock statement is sent, never inside a release, so
/// an async future dropped while it prepares has locked and unlocked nothing.
#[derive(Debug, Default)]
pub(crate) struct Statements {
    acquires: u32,
    slots: [Option<(Shape, driver::Statement)>; 3],
}

impl Statements {
    /// Counts an acquire sending `kind` for `shape`, and lists the statements to prepare
    /// before it: from the object's second acquire on, `kind` and the unlock, where they are
    /// not kept for this shape yet.
    pub(crate) fn note_acquire(
        &mut self,
        kind: Kind,
        shape: Shape,
    ) -> Vec<(Kind, String, &'static [Type])> {
        self.acquires = self.acquires.saturating_add(1);
        if self.acquires < 2 {
            return Vec::new();
        }
        [kind, Kind::Unlock]
            .into_iter()
            .filter(|kind| self.prepared(*kind, shape).is_none())
            .map(|kind| {
                let (sql, types) = kind.sql(shape);
                (kind, sql, types)
            })
            .collect()
    }

    /// Keeps a statement prepared for `kind` and `shape`.
    pub(crate) fn keep(&mut self, kind: Kind, shape: Shape, statement: driver::Statement) {
        self.slots[kind as usize] = Some((shape, statement));
    }

    /// The statement kept for `kind` and `shape`, if any.
    pub(crate) fn prepared(&self, kind: Kind, shape: Shape) -> Option<&driver::Statement> {
        match &self.slots[kind as usize] {
            Some((kept, statement)) if *kept == shape => Some(statement),
            _ => None,
        }
    }
}

/// The simple-query form of a statement of `kind`, and the reading of its reply.
#[cfg_attr(not(feature = "blocking"), allow(dead_code))]
pub(crate) fn simple(kind: Kind, key: PgKey, mode: Mode) -> String {
    match kind {
        Kind::Lock => lock(key, mode, Scope::Session, Wait::Unbounded),
        Kind::TryLock => lock(key, mode, Scope::Session, Wait::Never),
        Kind::Unlock => unlock(key, mode),
    }
}

/// Reads the reply to [`simple`]: a plain lock that returns at all was granted; a try and
/// an unlock answer in their first column.
pub(crate) fn read_simple(kind: Kind, reply: &[SimpleQueryMessage]) -> Result<bool, Error> {
    match kind {
        Kind::Lock => first_row(reply).map(|_| true),
        Kind::TryLock | Kind::Unlock => read_bool(reply),
    }
}

/// Reads the rows of a prepared lock statement of `kind`: a plain lock that returns at all
/// was granted; a try and an unlock answer in their first column.
pub(crate) fn read_prepared(kind: Kind, rows: &[driver::Row]) -> Result<bool, Error> {
    let row = rows.first().ok_or_else(|| unexpected_reply("a row"))?;
    match kind {
        Kind::Lock => Ok(true),
        Kind::TryLock | Kind::Unlock => row
            .try_get::<_, bool>(0)
            .map_err(|_| unexpected_reply("a boolean")),
    }
}

/// The cleanup of an acquire attempt whose outcome the client never read: unlocks once if
/// this session holds the lock in this mode, and records `attempt` so that running it again
/// does nothing.
///
/// The server is the only judge of the outcome. A record written by the acquire statement
/// itself would not do: a cancel that lands as the lock is handed over makes the server
/// grant the lock and then fail the statement (57014), which rolls such a record back
/// while the session lock stays. Holding the lock is the right test because an attempt can
/// only have waited, or failed, if the session did not hold the lock in that mode before
/// (a session's own holds never conflict), so a hold found now is the attempt's. The one
/// other way to fail, a cancel that reaches an attempt which needed no wait before its grant,
/// is kept out by sending the cancel only after such an attempt has long completed (see
/// `CANCEL_DELAY`).
#[cfg(feature = "tokio")]
pub(crate) fn cleanup_dropped_acquire(key: PgKey, mode: Mode, attempt: u64) -> String {
    format!(
        "SELECT CASE WHEN current_setting('{CLEANED_ATTEMPT}', true) IS DISTINCT FROM '{attempt}' \
         AND {} THEN pg_advisory_unlock{}({}) END, \
         set_config('{CLEANED_ATTEMPT}', '{attempt}', false)",
        session_holds(key, mode),
        mode.suffix(),
        key_args(key)
    )
}

/// The `pg_locks` columns that identify an advisory lock: a bigint key is split into its
/// high and low 32 bits with `objsubid` 1, a pair is its two halves with `objsubid` 2.
pub(crate) fn pg_locks_ids(key: PgKey) -> (u32, u32, i16) {
    match key {
        PgKey::BigInt(value) => {
            let bytes = value.to_be_bytes();
            let high = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            let low = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            (high, low, 1)
        }
        PgKey::Pair(high, low) => (
            u32::from_ne_bytes(high.to_ne_bytes()),
            u32::from_ne_bytes(low.to_ne_bytes()),
            2,
        ),
    }
}

fn pg_locks_filter(key: PgKey) -> String {
    let (classid, objid, objsubid) = pg_locks_ids(key);
    format!(
        "locktype = 'advisory' AND granted AND classid = '{classid}'::oid \
         AND objid = '{objid}'::oid AND objsubid = {objsubid}"
    )
}

/// The SQL condition "this session holds the lock in this mode", per `pg_locks`.
fn session_holds(key: PgKey, mode: Mode) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_locks WHERE {} AND pid = pg_backend_pid() AND mode = '{}')",
        pg_locks_filter(key),
        mode.pg_locks_name()
    )
}

/// Whether this session holds the lock in this mode, per `pg_locks`.
pub(crate) fn held_by_session(key: PgKey, mode: Mode) -> String {
    format!("SELECT {}", session_holds(key, mode))
}

/// Reads the reply to [`held_by_session`].
pub(crate) fn read_held(reply: &[SimpleQueryMessage]) -> Result<bool, Error> {
    read_bool(reply)
}

/// Every session of this database holding the lock, with its mode.
pub(crate) fn holders(key: PgKey) -> String {
    format!(
        "SELECT pid, mode FROM pg_locks WHERE {} AND database = \
         (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY pid",
        pg_locks_filter(key)
    )
}

/// A session holding an advisory lock, as `pg_locks` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Holder {
    /// The server process id of the holding session (`pg_backend_pid()`; pass it to
    /// `pg_terminate_backend` to end that session and free its locks).
    pub pid: i32,
    /// The mode the session holds the lock in.
    pub mode: Mode,
}

/// Reads the reply to [`holders`].
pub(crate) fn read_holders(reply: &[SimpleQueryMessage]) -> Result<Vec<Holder>, Error> {
    let mut holders = Vec::new();
    for message in reply {
        let SimpleQueryMessage::Row(row) = message else {
            continue;
        };
        let pid = row.get(0).and_then(|pid| pid.parse().ok());
        let mode = match row.get(1) {
            Some("ExclusiveLock") => Some(Mode::Exclusive),
            Some("ShareLock") => Some(Mode::Shared),
            _ => None,
        };
        match (pid, mode) {
            (Some(pid), Some(mode)) => holders.push(Holder { pid, mode }),
            _ => {
                return Err(unexpected_reply(
                    "a pg_locks row with a pid and a lock mode",
                ));
            }
        }
    }
    Ok(holders)
}

fn first_row(reply: &[SimpleQueryMessage]) -> Result<&driver::SimpleQueryRow, Error> {
    reply
        .iter()
        .find_map(|message| match message {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .ok_or_else(|| unexpected_reply("a row"))
}

fn read_bool(reply: &[SimpleQueryMessage]) -> Result<bool, Error> {
    match first_row(reply)?.get(0) {
        Some("t") => Ok(true),
        Some("f") => Ok(false),
        _ => Err(unexpected_reply("a boolean")),
    }
}

fn unexpected_reply(expected: &str) -> Error {
    Error::backend(format!("the server's reply did not hold {expected}"))
}

/// What a failed lock statement means.
#[derive(Debug)]
pub(crate) enum Failure {
    /// `lock_timeout` fired (55P03): the lock was not granted within the wait, as far as the
    /// statement knows (a grant can race the timer: check `pg_locks`).
    LockTimeout,
    /// Anything else, as dlock's error.
    Error(Error),
}

/// Sorts a driver error into what dlock reports.
pub(crate) fn classify(error: driver::Error) -> Failure {
    let code = error.code().cloned();
    let Some(code) = code else {
        // No SQLSTATE: the driver lost the connection or could not use it.
        let io =
            std::error::Error::source(&error).is_some_and(|source| source.is::<std::io::Error>());
        if error.is_closed() || io {
            return Failure::Error(Error::ConnectionLost {
                source: Some(Box::new(error)),
            });
        }
        return Failure::Error(Error::backend(error));
    };
    if code == SqlState::LOCK_NOT_AVAILABLE {
        return Failure::LockTimeout;
    }
    let source: dlock_core::BoxError = Box::new(error);
    Failure::Error(if code == SqlState::T_R_DEADLOCK_DETECTED {
        Error::Deadlock {
            source: Some(source),
        }
    } else if code == SqlState::QUERY_CANCELED {
        Error::Canceled {
            source: Some(source),
        }
    } else if code == SqlState::OUT_OF_MEMORY {
        // PostgreSQL reports a full lock table as 53200, "out of shared memory".
        Error::LockTableFull {
            setting: "max_locks_per_transaction",
            source: Some(source),
        }
    } else if code == SqlState::ADMIN_SHUTDOWN
        || code == SqlState::CRASH_SHUTDOWN
        || code == SqlState::CANNOT_CONNECT_NOW
        || code.code().starts_with("08")
    {
        // The server ended the session (pg_terminate_backend, shutdown): its locks are gone.
        Error::ConnectionLost {
            source: Some(source),
        }
    } else {
        Error::Backend(source)
    })
}

/// Turns a driver error from a statement that cannot time out into dlock's error.
pub(crate) fn error(error: driver::Error) -> Error {
    classify(error).into_error()
}

impl Failure {
    /// The failure of a statement that does not wait for a lock, as dlock's error.
    pub(crate) fn into_error(self) -> Error {
        match self {
            Failure::Error(error) => error,
            Failure::LockTimeout => Error::backend(
                "the server reported a lock timeout (55P03) for a statement that does not wait",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_statements_name_the_right_function_for_each_mode_scope_and_wait() {
        let key = PgKey::BigInt(-5);
        let pair = PgKey::Pair(1, -2);
        let session = Scope::Session;
        assert_eq!(
            lock(key, Mode::Exclusive, session, Wait::Never),
            "SELECT pg_try_advisory_lock(-5)"
        );
        assert_eq!(
            lock(pair, Mode::Shared, session, Wait::Never),
            "SELECT pg_try_advisory_lock_shared(1, -2)"
        );
        assert_eq!(
            lock(key, Mode::Shared, Scope::Transaction, Wait::Never),
            "SELECT pg_try_advisory_xact_lock_shared(-5)"
        );
        let waiting = lock(key, Mode::Exclusive, Scope::Transaction, Wait::Millis(150));
        assert!(
            waiting.contains("set_config('lock_timeout', '150', true)"),
            "{waiting}"
        );
        assert!(waiting.contains("pg_advisory_xact_lock(-5)"), "{waiting}");
        // The setting is saved before it is changed, and restored after the wait.
        let save = waiting.find("current_setting('lock_timeout')").unwrap();
        let set = waiting.find("'150'").unwrap();
        let wait = waiting.find("pg_advisory").unwrap();
        let restore = waiting
            .find("current_setting('dlock.saved_lock_timeout')")
            .unwrap();
        assert!(save < set && set < wait && wait < restore, "{waiting}");
    }

    #[test]
    fn unlock_statements_match_the_mode() {
        assert_eq!(
            unlock(PgKey::BigInt(3), Mode::Exclusive),
            "SELECT pg_advisory_unlock(3)"
        );
        assert_eq!(
            unlock(PgKey::Pair(3, 4), Mode::Shared),
            "SELECT pg_advisory_unlock_shared(3, 4)"
        );
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn the_cleanup_of_a_dropped_acquire_unlocks_once_what_the_session_holds() {
        let cleanup = cleanup_dropped_acquire(PgKey::BigInt(3), Mode::Shared, 99);
        let skip = cleanup.find("IS DISTINCT FROM '99'").unwrap();
        let held = cleanup
            .find("pid = pg_backend_pid() AND mode = 'ShareLock'")
            .unwrap();
        let unlock = cleanup.find("THEN pg_advisory_unlock_shared(3)").unwrap();
        let record = cleanup
            .find("set_config('dlock.cleaned_attempt', '99', false)")
            .unwrap();
        assert!(skip < held && held < unlock && unlock < record, "{cleanup}");
    }

    #[test]
    fn timeouts_round_up_to_whole_milliseconds_and_zero_never_waits() {
        assert_eq!(Wait::for_timeout(Duration::ZERO), Wait::Never);
        assert_eq!(Wait::for_timeout(Duration::from_nanos(1)), Wait::Millis(1));
        assert_eq!(
            Wait::for_timeout(Duration::from_micros(1500)),
            Wait::Millis(2)
        );
        assert_eq!(
            Wait::for_timeout(Duration::from_millis(100)),
            Wait::Millis(100)
        );
        // Beyond lock_timeout's range the wait has no limit rather than a wrong one.
        assert_eq!(
            Wait::for_timeout(Duration::from_secs(30 * 86_400)),
            Wait::Millis(0)
        );
        assert_eq!(Wait::for_timeout(Duration::MAX), Wait::Millis(0));
    }

    #[test]
    fn pg_locks_ids_split_keys_as_postgres_does() {
        assert_eq!(pg_locks_ids(PgKey::BigInt(1)), (0, 1, 1));
        assert_eq!(pg_locks_ids(PgKey::BigInt(-1)), (u32::MAX, u32::MAX, 1));
        assert_eq!(
            pg_locks_ids(PgKey::BigInt(0x1234_5678_9abc_def0)),
            (0x1234_5678, 0x9abc_def0, 1)
        );
        assert_eq!(pg_locks_ids(PgKey::Pair(-2, 3)), (u32::MAX - 1, 3, 2));
        let query = held_by_session(PgKey::Pair(5, 6), Mode::Shared);
        assert!(query.contains("classid = '5'::oid AND objid = '6'::oid AND objsubid = 2"));
        assert!(query.contains("mode = 'ShareLock'"));
    }
}
