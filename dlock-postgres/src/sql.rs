//! Every statement dlock sends to PostgreSQL, the reading of every reply, and the sorting of
//! every error, as plain functions with no I/O. The state machine (`machine.rs`) picks which
//! to send; the blocking and tokio flavours only send them.
//!
//! Keys are integers dlock formats itself, so nothing the user wrote is ever spliced into SQL.

use std::fmt::Write as _;
use std::time::Duration;

use dlock_core::{BoxError, Error, PgKey, SessionId, SharedOp};

#[cfg(all(feature = "blocking", not(feature = "tokio")))]
use postgres as driver;
#[cfg(feature = "tokio")]
use tokio_postgres as driver;

use driver::SimpleQueryMessage;
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

    /// The mode as a lock's spans show it.
    pub(crate) fn traced(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Shared => "shared",
        }
    }
}

/// The key as a lock's spans show it: as the user named it, and the number PostgreSQL sees
/// (or a pair).
pub(crate) fn traced_key(
    policy: &dlock_core::KeyPolicy,
    key: &dlock_core::Key,
) -> (String, String) {
    let server = match policy.pg_key(key) {
        Ok(PgKey::BigInt(key)) => key.to_string(),
        Ok(PgKey::Pair(high, low)) => format!("({high}, {low})"),
        Err(error) => format!("unusable: {error}"),
    };
    (dlock_core::trace::traced_name(key), server)
}

/// Whether a lock lasts for the session or for the current transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Session,
    Transaction,
}

impl Scope {
    fn infix(self) -> &'static str {
        match self {
            Scope::Session => "",
            Scope::Transaction => "_xact",
        }
    }
}

/// One lock as the server knows it: a key in a mode. What an acquire takes and a release
/// must give back exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hold {
    pub(crate) key: PgKey,
    pub(crate) mode: Mode,
}

fn key_args(key: PgKey) -> String {
    match key {
        PgKey::BigInt(value) => value.to_string(),
        PgKey::Pair(high, low) => format!("{high}, {low}"),
    }
}

/// The `lock_timeout` of `acquire_timeout(timeout)`, in milliseconds: rounded up, so the
/// wait never ends early; 0 ("no limit") beyond `lock_timeout`'s range (about 24.8 days).
pub(crate) fn lock_timeout_millis(timeout: Duration) -> u32 {
    let millis = timeout.as_nanos().div_ceil(1_000_000);
    i32::try_from(millis).map_or(0, i32::unsigned_abs)
}

/// A session lock statement that carries the deployment check: it locks only on a server
/// session that a full check passed on before (it carries the mark the lock statement after
/// that check left, [`marking_checked`]), and answers no row without locking anywhere else
/// (the full check then runs). The mark is read before the lock function runs: a one-time
/// filter of the statement, which costs the server almost nothing.
pub(crate) fn gated_lock(hold: Hold, kind: Kind, gate: Gate, names_session: bool) -> String {
    let mut sql = kind.simple(hold, None);
    if names_session {
        push_session_name(&mut sql);
    }
    let _ = write!(
        sql,
        " WHERE current_setting('{CHECKED_MARK}', true) = '{}'",
        mark(gate)
    );
    sql
}
/// The name of this process's prepared gate for `kind` on a key of `shape`, naming its
/// session where `names`. It is prepared ([`prepare_gate`]) only on a server session a
/// check of `gate`'s kind passed on, right after a [`gated_lock`] found that session's mark,
/// so executing it ([`execute_gate`]) proves what the mark proves. A session reset drops
/// both. The name carries this process's random mark: no other process's statement, and
/// no user's, vouches for a session.
fn gate_statement(kind: Kind, shape: Shape, gate: Gate, names: bool) -> String {
    let kind = if kind == Kind::Lock { "lock" } else { "try" };
    let mode = if shape.mode == Mode::Shared { "s" } else { "x" };
    let width = if shape.pair { 2 } else { 1 };
    let names = if names { "n" } else { "" };
    format!("dlock_{}_{kind}{mode}{width}{names}", mark(gate))
}

/// [`gated_lock`] through this session's prepared gate: a statement that fails with 26000
/// (the statement is missing: the session was not checked through it) and locks nothing
/// where [`gated_lock`] answers no row, and costs the server less where it runs (a cached
/// plan and no filter: measured through pgbench on PostgreSQL 15, the filter and the
/// session's name in columns cost about 9% of a cycle, the prepared gate about 3%). Only
/// for connections outside any transaction block, where the failure aborts nothing: a
/// sqlx pool's, as they are handed out. (sqlx sends a statement that failed with 26000 once
/// more outside a transaction, as it would its own cached statement, so a missing gate costs
/// two round trips before the filtered statement; twice in a session's life.)
pub(crate) fn execute_gate(hold: Hold, kind: Kind, gate: Gate, names: bool) -> String {
    let name = gate_statement(kind, Shape::of(hold), gate, names);
    format!("EXECUTE {name}({})", key_args(hold.key))
}

/// Prepares the gate [`execute_gate`] runs, on a session a check of `gate`'s kind passed
/// on: the lock statement, with the session's name `named` (a statement lives as long as
/// its session) as [`push_session_name`]'s columns read.
pub(crate) fn prepare_gate(hold: Hold, kind: Kind, gate: Gate, named: Option<SessionId>) -> String {
    let shape = Shape::of(hold);
    let name = gate_statement(kind, shape, gate, named.is_some());
    let (mut body, _) = kind.sql(shape, None);
    if let Some(SessionId { id, tag }) = named {
        let start = i64::from_ne_bytes(tag.to_ne_bytes());
        let _ = write!(body, ", {id}, '{start}'::text");
    }
    let types = if shape.pair { "int4, int4" } else { "int8" };
    format!("PREPARE {name}({types}) AS {body}")
}

/// Which check a lock statement accepts as done on its session ([`gated_lock`]), and which
/// mark a passed check leaves ([`marking_checked`]). A connection's checks are always of one
/// kind (its route decides), so a session is marked by the kind its own client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// A check that proved a direct connection by the cancel key (the server's own pid
    /// there). A session marked so is a direct connection's: no other client reaches it.
    Proven,
    /// A check that could only infer from where its statements landed (the blocking client
    /// hides its cancel key; a vouched-for session pooler).
    Checked,
}

/// The setting that carries a checked server session's mark. A session reset
/// (`DISCARD ALL`, `RESET ALL`, a rollback of the transaction that set it) removes it, and
/// the next lock checks again.
const CHECKED_MARK: &str = "dlock.deployment_checked";

/// This process's mark for server sessions a check of `kind` passed on: random, so no other
/// process's check (and no user's setting) vouches for a session.
fn mark(kind: Gate) -> &'static str {
    static MARKS: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
    let [proven, checked] = MARKS.get_or_init(|| {
        let process = dlock_core::attempt_token();
        [format!("{process:016x}p"), format!("{process:016x}c")]
    });
    match kind {
        Gate::Proven => proven,
        Gate::Checked => checked,
    }
}

/// `statement`, a single `SELECT`, that also marks its server session as passed by a check
/// of `kind`: the statement sent right after the check passed.
pub(crate) fn marking_checked(statement: &str, kind: Gate) -> String {
    format!(
        "{statement}, set_config('{CHECKED_MARK}', '{}', false)",
        mark(kind)
    )
}

/// `pg_try_advisory_lock`: never waits. Its reply is read by [`read_bool`].
pub(crate) fn try_lock(hold: Hold, scope: Scope) -> String {
    format!(
        "SELECT pg_try_advisory{}_lock{}({})",
        scope.infix(),
        hold.mode.suffix(),
        key_args(hold.key)
    )
}

/// A plain `pg_advisory_lock`, under the session's own `lock_timeout` and
/// `statement_timeout` (normally none): the fast form of `acquire`. A reply with a row means
/// granted.
pub(crate) fn wait_lock(hold: Hold, scope: Scope) -> String {
    format!(
        "SELECT pg_advisory{}_lock{}({})",
        scope.infix(),
        hold.mode.suffix(),
        key_args(hold.key)
    )
}

/// The tag of a waiting lock statement that a side connection may have to find and cancel:
/// `dlock-wait:` and a number unique to the attempt, at the start of the statement's text
/// (`pg_stat_activity.query` keeps only the first `track_activity_query_size` bytes).
pub(crate) fn wait_tag(token: u64) -> String {
    format!("/* dlock-wait:{token:016x} */ ")
}

#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
fn fence_tag(token: u64) -> String {
    format!("/* dlock-fence:{token:016x} */ ")
}

/// The gate of an attempt: a key held by the side connection while it ends the attempt's
/// wait. Random, like the token it comes from.
pub(crate) fn gate(token: u64) -> PgKey {
    PgKey::BigInt(i64::from_ne_bytes(token.to_ne_bytes()))
}

/// The fence queued behind a dropped waiting statement when a side connection will end its
/// wait: it waits for the attempt's gate, and so holds the session back, behind the dropped
/// statement, while the side connection holds the gate.
///
/// That is enough, and needs no polling: the side connection takes the gate before anything
/// else, and sends its one cancel request only while the server shows the dropped statement
/// still waiting, so if the fence finds the gate free, no request was or will be sent. Its own
/// `statement_timeout` and `lock_timeout` are off, so no session setting ends it early.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn fence(token: u64) -> String {
    let gate = key_args(gate(token));
    format!(
        "{}SELECT set_config('{SAVED_STATEMENT_TIMEOUT}', current_setting('statement_timeout'), \
         true), set_config('statement_timeout', '0', true); \
         SELECT set_config('{SAVED_LOCK_TIMEOUT}', current_setting('lock_timeout'), true), \
         set_config('lock_timeout', '0', true), \
         pg_advisory_lock({gate}), pg_advisory_unlock({gate}), \
         set_config('lock_timeout', current_setting('{SAVED_LOCK_TIMEOUT}'), true), \
         set_config('statement_timeout', current_setting('{SAVED_STATEMENT_TIMEOUT}'), true)",
        fence_tag(token),
    )
}

/// The side connection's statements, for the attempt of `token`: take and release the gate,
/// cancel the waiting statement only while the server shows it waiting for its lock (the
/// check and the request are one statement), and ask whether the fence waits for the gate.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) mod side {
    use super::*;

    pub(crate) fn take_gate(token: u64) -> String {
        format!("SELECT pg_advisory_lock({})", key_args(gate(token)))
    }

    pub(crate) fn release_gate(token: u64) -> String {
        format!("SELECT pg_advisory_unlock({})", key_args(gate(token)))
    }

    pub(crate) fn cancel_waiting(token: u64) -> String {
        format!(
            "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE query LIKE \
             '{}%' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
            wait_tag(token)
        )
    }

    /// From `pg_locks`, which shows waits whatever `track_activities` says: only the fence
    /// ever waits for the gate.
    pub(crate) fn fence_waits(token: u64) -> String {
        let (classid, objid, objsubid) = pg_locks_ids(gate(token));
        format!(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND classid = '{classid}'::oid AND objid = '{objid}'::oid AND objsubid = \
             {objsubid})"
        )
    }
}

/// Where a guarded lock statement keeps the caller's settings while it overrides them.
const SAVED_LOCK_TIMEOUT: &str = "dlock.saved_lock_timeout";
const SAVED_STATEMENT_TIMEOUT: &str = "dlock.saved_statement_timeout";

/// A `pg_advisory_lock` that no session setting can cut short: `lock_timeout` is
/// `lock_timeout_ms` (0: none) and `statement_timeout` is off, for this wait only. A reply
/// with a row means granted; the server's timeout is 55P03.
///
/// Two statements in one simple query, one round trip. The server arms `statement_timeout`
/// when a statement starts, so the first statement turns it off for the second; `lock_timeout`
/// is read when the wait begins, so the second statement sets it itself. Both are set with
/// `is_local`, which ends with the implicit transaction of the query; inside a transaction of
/// the user's, the second statement puts the saved values back after the wait. (Measured, the
/// guard costs a tenth of a cycle or more, so `acquire` sends the plain form first and this
/// one only after a session setting cut a wait short.)
pub(crate) fn guarded_lock(hold: Hold, scope: Scope, lock_timeout_ms: u32) -> String {
    let mut sql = String::with_capacity(420);
    let _ = write!(
        sql,
        "SELECT set_config('{SAVED_STATEMENT_TIMEOUT}', current_setting('statement_timeout'), \
         true), set_config('statement_timeout', '0', true); \
         SELECT set_config('{SAVED_LOCK_TIMEOUT}', current_setting('lock_timeout'), true), \
         set_config('lock_timeout', '{lock_timeout_ms}', true), \
         pg_advisory{}_lock{}({}), \
         set_config('lock_timeout', current_setting('{SAVED_LOCK_TIMEOUT}'), true), \
         set_config('statement_timeout', current_setting('{SAVED_STATEMENT_TIMEOUT}'), true)",
        scope.infix(),
        hold.mode.suffix(),
        key_args(hold.key)
    );
    sql
}

/// One slice of a sliced wait: waits at most `lock_timeout_ms` for the lock, and answers
/// one boolean, whether the slice got it. A timeout is no error: the wait runs in a PL/pgSQL
/// block that catches `lock_not_available`, so it neither aborts a transaction of the user's
/// nor writes an error to the server's log. `statement_timeout` is off and `lock_timeout` is
/// the slice's for the wait only; both are put back as they were.
///
/// The block writes its answer to a setting that the same query reads back (nothing else
/// can run in between). Only a timeout asks `pg_locks`, which costs more than the whole
/// slice otherwise does; its answer is exact for the reason [`interrupted`] gives, and finds
/// a session lock granted as the timer fired (it outlives the block's subtransaction), never
/// a transaction lock (it does not).
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
///
/// With a `fence` table, a granted slice also bumps the key's fencing token inside the block
/// and the query answers it as a second column ([`fenced`]).
pub(crate) fn sliced_lock(
    hold: Hold,
    scope: Scope,
    lock_timeout_ms: u32,
    fence: Option<&str>,
) -> String {
    let (bump, token) = match fence {
        Some(table) => (
            format!(
                "PERFORM {DURABLE_COMMIT}; {} INTO fence_token; \
                 PERFORM set_config('{FENCE_TOKEN}', fence_token::text, true); ",
                bump_token(hold.key, table)
            ),
            format!(", current_setting('{FENCE_TOKEN}', true)"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "SELECT set_config('{SAVED_STATEMENT_TIMEOUT}', current_setting('statement_timeout'), \
         true), set_config('statement_timeout', '0', true); \
         DO $dlock$ DECLARE saved text := current_setting('lock_timeout'); \
         fence_token bigint; BEGIN \
         PERFORM set_config('lock_timeout', '{lock_timeout_ms}', true); \
         PERFORM pg_advisory{}_lock{}({}); \
         PERFORM set_config('lock_timeout', saved, true), set_config('{SLICE_GRANTED}', 'true', \
         true); {bump}\
         EXCEPTION WHEN lock_not_available THEN \
         PERFORM set_config('{SLICE_GRANTED}', ({})::text, true); END $dlock$; \
         SELECT current_setting('{SLICE_GRANTED}')::boolean{token}, \
         set_config('statement_timeout', current_setting('{SAVED_STATEMENT_TIMEOUT}'), true)",
        scope.infix(),
        hold.mode.suffix(),
        key_args(hold.key),
        session_holds(hold),
    )
}

/// Where a fenced slice's block leaves the token for the query's last statement.
const FENCE_TOKEN: &str = "dlock.fence_token";

/// The default fence table, qualified with a schema every database has: an advisory lock is
/// database-wide, so its counter must be too, whatever a session's `search_path`.
pub(crate) const DEFAULT_FENCE_TABLE: &str = "public.dlock_fence";

/// The fence table's name as SQL: its parts ([`dlock_core::fence_table_parts`]), quoted.
pub(crate) fn fence_table(name: &str) -> Result<String, Error> {
    Ok(dlock_core::fence_table_parts(name)?
        .iter()
        .map(|part| format!("\"{part}\""))
        .collect::<Vec<_>>()
        .join("."))
}

/// The statements that create the fence table and its clock if they are missing: one
/// counter row per key, never deleted, so tokens grow across holders, processes and
/// restarts; and a sequence ([`fence_clock`]) that no rollback takes back.
pub(crate) fn install_fencing(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\
         key_space smallint NOT NULL, lock_key bigint NOT NULL, token bigint NOT NULL, \
         PRIMARY KEY (key_space, lock_key)); \
         CREATE SEQUENCE IF NOT EXISTS {}",
        fence_clock(table)
    )
}

/// The fence table's clock (the table's name with `_clock`, as SQL): a sequence every token
/// is drawn from besides its key's row. `nextval` is never rolled back, so a token handed out
/// inside a transaction that then rolls back (the row's bump undone with it) is still used
/// up: the next token of the key is higher. The row keeps tokens growing where a crash could
/// set the sequence back.
fn fence_clock(table: &str) -> String {
    // The table's SQL name ends with its quoted last part.
    let quoted = table.strip_suffix('"').unwrap_or(table);
    format!("{quoted}_clock\"")
}

/// The next token a key's row would get, from the clock: `nextval` of [`fence_clock`].
fn next_tick(table: &str) -> String {
    format!("nextval('{}')", fence_clock(table))
}

/// Whether an `install_fencing` statement failed only because another session created the
/// table at the same moment: `CREATE TABLE IF NOT EXISTS` is not safe against a concurrent
/// one (23505 on `pg_type`, 42710 for its type, or 42P07). Running it again then finds the
/// table, which the other session has committed by the time this one fails.
pub(crate) fn lost_the_create_race(error: &driver::Error) -> bool {
    error
        .code()
        .is_some_and(|code| CREATE_RACE_CODES.contains(&code.code()))
}

/// The SQLSTATEs of [`lost_the_create_race`].
pub(crate) const CREATE_RACE_CODES: [&str; 3] = ["23505", "42710", "42P07"];

/// A key's row in the fence table: 1 and the bigint, or 2 and the pair as one bigint.
fn fence_row(key: PgKey) -> (i16, i64) {
    match key {
        PgKey::BigInt(value) => (1, value),
        PgKey::Pair(high, low) => (2, (i64::from(high) << 32) | (i64::from(low) & 0xffff_ffff)),
    }
}

/// An expression that makes the transaction it runs in commit durably when the session's
/// `synchronous_commit` is off: a fencing token is handed out only once a crash cannot take
/// it back. It sets the setting for the current transaction only (`set_config(.., true)`);
/// inside a transaction of the user's, that transaction commits durably too. A session that
/// asks for more (`remote_apply`, say) keeps what it asked for.
const DURABLE_COMMIT: &str = "CASE WHEN current_setting('synchronous_commit') = 'off' \
     THEN set_config('synchronous_commit', 'on', true) END";

/// How a key's row takes its next token: one above the row's last, and no lower than the
/// clock's tick the insert drew (`EXCLUDED.token`), which a rollback never gives back.
const NEXT_TOKEN: &str = "token = GREATEST(fence.token + 1, EXCLUDED.token)";

/// The upsert that bumps a key's token, returning it.
fn bump_token(key: PgKey, table: &str) -> String {
    let (space, key) = fence_row(key);
    let tick = next_tick(table);
    format!(
        "INSERT INTO {table} AS fence (key_space, lock_key, token) VALUES ({space}, {key}, {tick}) \
         ON CONFLICT (key_space, lock_key) DO UPDATE SET {NEXT_TOKEN} RETURNING token"
    )
}

/// A lock query made fenced: its last statement, which takes the lock, runs in a CTE, and an
/// upsert that bumps the key's token runs only when that statement granted the lock, in the
/// same statement, so a fenced acquire costs the round trip an unfenced one does. The query
/// answers two columns: granted (always `true` for a wait) and the token (NULL when not
/// granted). A try's statement is its one boolean; a wait's answers a row once granted.
pub(crate) fn fenced(query: &str, hold: Hold, table: &str, is_try: bool) -> String {
    let (space, key) = fence_row(hold.key);
    fenced_with(query, (&space.to_string(), &key.to_string()), table, is_try)
}

/// [`fenced`] with the key's fence row as SQL expressions (literals, or parameters).
fn fenced_with(query: &str, (space, key): (&str, &str), table: &str, is_try: bool) -> String {
    let (before, last) = match query.rfind("; ") {
        Some(end) => query.split_at(end + 2),
        None => ("", query),
    };
    let (granted, condition, answer) = if is_try {
        (" AS granted", " WHERE granted", "(SELECT granted FROM l)")
    } else {
        ("", "", "true")
    };
    // `d` is read by the last SELECT, so it runs (an unread CTE would not), before the
    // statement's transaction commits.
    format!(
        "{before}WITH d AS MATERIALIZED (SELECT {DURABLE_COMMIT}), \
         l AS MATERIALIZED ({last}{granted}), \
         f AS (INSERT INTO {table} AS fence (key_space, lock_key, token) \
         SELECT {space}, {key}, {tick} FROM l{condition} \
         ON CONFLICT (key_space, lock_key) DO UPDATE SET {NEXT_TOKEN} RETURNING token) \
         SELECT {answer}, (SELECT token FROM f) FROM d",
        tick = next_tick(table)
    )
}

/// The token bump alone, for a lock granted by a statement that then failed (a timeout or a
/// cancel that landed with the grant), so it got no token: one boolean-free row, the token.
pub(crate) fn fence_upsert(hold: Hold, table: &str) -> String {
    // One query, one implicit transaction: the setting holds when the upsert commits.
    format!("SELECT {DURABLE_COMMIT}; {}", bump_token(hold.key, table))
}

/// The setting whose lookup fails on a hot standby: see [`refuse_on_standby`].
const STANDBY_MARKER: &str = "dlock.refused_on_hot_standby";

/// Adds to a transaction lock's query a column that fails on a hot standby (looking up a
/// setting that does not exist, 42704, naming [`STANDBY_MARKER`]), so the query ends with an
/// error there; elsewhere it costs one function call. The column goes into the query's first
/// statement, before any wait. A transaction lock object has no connection of its own to
/// check once, so each acquire checks, in its own query.
pub(crate) fn refusing_standby(query: &str) -> String {
    let guard =
        format!(", CASE WHEN pg_is_in_recovery() THEN current_setting('{STANDBY_MARKER}') END");
    let end = query.find("; ").unwrap_or(query.len());
    format!("{}{guard}{}", &query[..end], &query[end..])
}

/// A statement that fails on a hot standby as [`refusing_standby`]'s column does, to send in
/// front of a query whose first statement a standby refuses before any column runs.
pub(crate) fn standby_check() -> String {
    format!("SELECT CASE WHEN pg_is_in_recovery() THEN current_setting('{STANDBY_MARKER}') END; ")
}

/// Where a slice's block leaves its answer for the query's last statement.
const SLICE_GRANTED: &str = "dlock.slice_granted";

/// One statement that does each of `ops` in turn, one boolean column each: many tasks' tries
/// and releases on a shared session cost the server one statement, not one each.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn shared_batch(ops: &[(SharedOp, PgKey)]) -> String {
    let mut sql = String::from("SELECT ");
    for (index, (op, key)) in ops.iter().enumerate() {
        if index > 0 {
            sql.push_str(", ");
        }
        let hold = Hold {
            key: *key,
            mode: Mode::Exclusive,
        };
        let args = key_args(*key);
        // Writing to a String cannot fail.
        let _ = match op {
            SharedOp::TryLock => write!(sql, "pg_try_advisory_lock({args})"),
            SharedOp::Unlock => write!(sql, "pg_advisory_unlock({args})"),
            SharedOp::UnlockIfHeld => write!(
                sql,
                "CASE WHEN {} THEN pg_advisory_unlock({args}) ELSE false END",
                session_holds(hold)
            ),
        };
    }
    sql
}

/// Reads the reply to [`shared_batch`] of `count` entries.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn read_shared_batch(row: &Row, count: usize) -> Result<Vec<bool>, Error> {
    (0..count).map(|index| read_bool(row, index)).collect()
}

/// The statement that releases a session lock: `true` if the session held it, and the
/// session that ran it, which must be the lock's (see `Release`).
pub(crate) fn unlock(hold: Hold) -> String {
    format!(
        "SELECT pg_advisory_unlock{}({}), pg_backend_pid()",
        hold.mode.suffix(),
        key_args(hold.key)
    )
}

/// The statements a lock object prepares once it is reused: plain lock, try, and unlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Lock,
    TryLock,
    Unlock,
    /// [`Kind::Lock`] that also bumps the key's fencing token ([`fenced`]).
    FencedLock,
    /// [`Kind::TryLock`] that also bumps the key's fencing token ([`fenced`]).
    FencedTryLock,
}

/// What a prepared statement depends on: the key's shape (one bigint or two ints) and the
/// mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pair: bool,
    mode: Mode,
}

impl Shape {
    pub(crate) fn of(hold: Hold) -> Shape {
        Shape {
            pair: matches!(hold.key, PgKey::Pair(..)),
            mode: hold.mode,
        }
    }
}

impl Kind {
    /// The kind a lock of fence table `fence` sends for this kind.
    pub(crate) fn fenced_if(self, fence: Option<&str>) -> Kind {
        match (self, fence) {
            (Kind::Lock, Some(_)) => Kind::FencedLock,
            (Kind::TryLock, Some(_)) => Kind::FencedTryLock,
            (kind, _) => kind,
        }
    }

    /// The statement's SQL, with typed parameters, and the parameters' types. A fenced kind
    /// names its lock's fence table, `fence`.
    pub(crate) fn sql(self, shape: Shape, fence: Option<&str>) -> (String, &'static [Type]) {
        let (args, types): (&str, &'static [Type]) = if shape.pair {
            ("$1, $2", &[Type::INT4, Type::INT4])
        } else {
            ("$1", &[Type::INT8])
        };
        let suffix = shape.mode.suffix();
        let text = match self {
            Kind::Lock => format!("SELECT pg_advisory_lock{suffix}({args})"),
            Kind::TryLock => format!("SELECT pg_try_advisory_lock{suffix}({args})"),
            // The unlock also says which session ran it, as its simple form does.
            Kind::Unlock => format!("SELECT pg_advisory_unlock{suffix}({args}), pg_backend_pid()"),
            Kind::FencedLock | Kind::FencedTryLock => {
                let (space, key) = if shape.pair {
                    ("2", "($1::bigint << 32) | ($2::bigint & 4294967295)")
                } else {
                    ("1", "$1")
                };
                let is_try = self == Kind::FencedTryLock;
                let lock = if is_try {
                    format!("SELECT pg_try_advisory_lock{suffix}({args})")
                } else {
                    format!("SELECT pg_advisory_lock{suffix}({args})")
                };
                let table = fence.expect("a fenced statement has a fence table");
                fenced_with(&lock, (space, key), table, is_try)
            }
        };
        (text, types)
    }

    /// The same statement as a simple query, for a lock object that keeps none prepared.
    pub(crate) fn simple(self, hold: Hold, fence: Option<&str>) -> String {
        match self {
            Kind::Lock => wait_lock(hold, Scope::Session),
            Kind::TryLock => try_lock(hold, Scope::Session),
            Kind::Unlock => unlock(hold),
            Kind::FencedLock | Kind::FencedTryLock => {
                let table = fence.expect("a fenced statement has a fence table");
                let is_try = self == Kind::FencedTryLock;
                let lock = if is_try {
                    try_lock(hold, Scope::Session)
                } else {
                    wait_lock(hold, Scope::Session)
                };
                fenced(&lock, hold, table, is_try)
            }
        }
    }
}

/// The parameters of a prepared statement for a key, matching [`Kind::sql`].
pub(crate) fn params(key: &PgKey) -> Vec<&(dyn ToSql + Sync)> {
    match key {
        PgKey::BigInt(value) => vec![value],
        PgKey::Pair(high, low) => vec![high, low],
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
    slots: [Option<(Shape, driver::Statement)>; 5],
}

impl Statements {
    /// Counts an acquire sending `kind` for `shape`, and lists the statements to prepare
    /// before it: from the object's second acquire on, `kind` and the unlock, where they are
    /// not kept for this shape yet.
    pub(crate) fn note_acquire(&mut self, kind: Kind, shape: Shape) -> Vec<Kind> {
        self.acquires = self.acquires.saturating_add(1);
        if self.acquires < 2 {
            return Vec::new();
        }
        let mut kinds: Vec<Kind> = [kind, Kind::Unlock]
            .into_iter()
            .filter(|kind| self.prepared(*kind, shape).is_none())
            .collect();
        kinds.dedup();
        kinds
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

    /// Forgets every kept statement: the session no longer has them (`DISCARD ALL`,
    /// `DEALLOCATE ALL`, a pooler's reset). They are prepared again from the next acquire.
    pub(crate) fn forget(&mut self) {
        self.slots = Default::default();
        self.acquires = 0;
    }
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
fn session_holds(hold: Hold) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_locks WHERE {} AND pid = pg_backend_pid() AND mode = '{}')",
        pg_locks_filter(hold.key),
        hold.mode.pg_locks_name()
    )
}

/// Whether this session holds the lock in this mode, per `pg_locks`: one boolean.
pub(crate) fn held_by_session(hold: Hold) -> String {
    format!("SELECT {}", session_holds(hold))
}

/// The question after a lock statement failed in a way that can come with a grant (55P03,
/// 57014): whether the session holds the lock now, and whether the session has a
/// `statement_timeout` that could have been what ended the wait. Two booleans.
///
/// The answer is exact because such a failure only comes to a statement that waited: a
/// session's own holds never conflict with its requests, so a statement that waited did not
/// hold the lock in that mode before, and a hold found now is the one it was granted.
pub(crate) fn interrupted(hold: Hold) -> String {
    format!(
        "SELECT {}, current_setting('statement_timeout') <> '0'",
        session_holds(hold)
    )
}

/// The cleanup of an acquire whose outcome was never read (its future was dropped, or the
/// question after an interruption could not be asked): unlocks once if this session holds
/// the lock in this mode. Exact for the same reason as [`interrupted`]; it is sent once per
/// attempt and never repeated after it ran, so it cannot take a second hold away.
pub(crate) fn cleanup(hold: Hold) -> String {
    format!(
        "SELECT CASE WHEN {} THEN pg_advisory_unlock{}({}) END",
        session_holds(hold),
        hold.mode.suffix(),
        key_args(hold.key)
    )
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

/// Every session of this database holding the lock on `key`, or any advisory lock when
/// `None`, with what `pg_stat_activity` says of it: where it connects from, its application
/// name, and when it started; then the lock's ids in `pg_locks`.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn holder_sessions(key: Option<PgKey>) -> String {
    let filter = key.map_or_else(
        || "locktype = 'advisory' AND granted".to_owned(),
        pg_locks_filter,
    );
    format!(
        "SELECT l.pid, l.mode, host(a.client_addr), a.application_name, \
         to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SSOF'), l.classid, l.objid, l.objsubid \
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE {filter} AND \
         l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY l.classid, l.objid, l.objsubid, l.pid"
    )
}

/// The key of an advisory lock from its ids in `pg_locks`: the inverse of [`pg_locks_ids`].
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
fn pg_key_of_ids(classid: u32, objid: u32, objsubid: i16) -> Option<PgKey> {
    match objsubid {
        1 => Some(PgKey::BigInt(i64::from_be_bytes(
            ((u64::from(classid) << 32) | u64::from(objid)).to_be_bytes(),
        ))),
        2 => Some(PgKey::Pair(
            i32::from_ne_bytes(classid.to_ne_bytes()),
            i32::from_ne_bytes(objid.to_ne_bytes()),
        )),
        _ => None,
    }
}

/// A session holding an advisory lock, with what the server says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderSession {
    /// The lock's key.
    pub key: PgKey,
    /// The session and the mode it holds the lock in.
    pub holder: Holder,
    /// The client's address (`None` over a Unix socket).
    pub client: Option<String>,
    /// The session's `application_name` (`dlock` names its own `dlock:<host>:<pid>`).
    pub application: Option<String>,
    /// When the session started, as the server prints it.
    pub since: Option<String>,
}

/// Reads the reply to [`holder_sessions`].
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn read_holder_sessions(
    reply: &[SimpleQueryMessage],
) -> Result<Vec<HolderSession>, Error> {
    let holders = read_holders(reply)?;
    let rows = reply.iter().filter_map(|message| match message {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    holders
        .into_iter()
        .zip(rows)
        .map(|(holder, row)| {
            let text = |index: usize| {
                row.get(index)
                    .filter(|text| !text.is_empty())
                    .map(str::to_owned)
            };
            let id = |index: usize| row.get(index).and_then(|text| text.parse::<u32>().ok());
            let key = match (id(5), id(6), row.get(7).and_then(|text| text.parse().ok())) {
                (Some(classid), Some(objid), Some(objsubid)) => {
                    pg_key_of_ids(classid, objid, objsubid)
                }
                _ => None,
            }
            .ok_or_else(|| unexpected_reply("an advisory lock's classid, objid and objsubid"))?;
            Ok(HolderSession {
                key,
                holder,
                client: text(2),
                application: text(3),
                since: text(4),
            })
        })
        .collect()
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

/// When a session started, in microseconds since the epoch: with its pid, what tells it apart
/// from a later session with the same pid (pids are reused, and start again after a restart).
const SESSION_STARTED: &str = "(extract(epoch FROM s.backend_start) * 1000000)::int8";

/// The statement that names this session for a watcher: its pid and when it started.
pub(crate) fn session() -> String {
    format!("SELECT pid, {SESSION_STARTED} FROM pg_stat_activity s WHERE pid = pg_backend_pid()")
}

/// The setting that keeps, on a session a pool hands out again and again, its start as
/// [`session`] reads it, so that later locks on it name it without reading
/// `pg_stat_activity`. A session reset clears it, and the next lock reads the start again.
#[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
const SESSION_STARTED_SETTING: &str = "dlock.session_started";

/// [`session`] for a lock that names its session ([`push_session_name`]) where the session does
/// not keep its start yet: the same two columns, and the start kept in
/// [`SESSION_STARTED_SETTING`] for the lock statements after it. It reads this session's row
/// through `pg_stat_get_activity(pid)`, not the `pg_stat_activity` view: planning the view
/// costs the server about 0.2 ms per statement, more than the round trip (measured,
/// PostgreSQL 15). Read by [`read_session`].
#[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
pub(crate) fn pooled_session() -> String {
    format!(
        "SELECT pg_backend_pid(), set_config('{SESSION_STARTED_SETTING}', {SESSION_STARTED}::text, \
         false) FROM pg_stat_get_activity(pg_backend_pid()) s"
    )
}

/// Appends to `sql` (one `SELECT` whose lock column comes first) the session's name, as its
/// second and third columns, read by [`read_named_session`]: a lock statement that names its
/// session at no round trip of its own. Only where the session keeps its start already (from
/// a [`pooled_session`] before): a subquery here would cost every statement its planning,
/// about a fifth of a round trip (measured, PostgreSQL 15); where the start is missing, the
/// column is NULL, and one [`pooled_session`] follows the grant.
#[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
pub(crate) fn push_session_name(sql: &mut String) {
    let _ = write!(
        sql,
        ", pg_backend_pid(), current_setting('{SESSION_STARTED_SETTING}', true)"
    );
}

/// Reads the session's name from a row of a statement [`push_session_name`] extended.
#[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
pub(crate) fn read_named_session(row: &Vec<Option<String>>) -> Option<SessionId> {
    read_session_columns(row, 1)
}

/// A row of a simple query's reply, read as text: what the readers of replies with many rows
/// take, whichever driver read them.
pub(crate) trait TextRow {
    /// Column `index`, or `None` for NULL or a column the row does not have.
    fn text(&self, index: usize) -> Option<&str>;
}

impl TextRow for driver::SimpleQueryRow {
    fn text(&self, index: usize) -> Option<&str> {
        self.get(index)
    }
}

impl TextRow for Vec<Option<String>> {
    fn text(&self, index: usize) -> Option<&str> {
        self.get(index)?.as_deref()
    }
}

/// The rows of a simple query's reply.
pub(crate) fn rows(reply: &[SimpleQueryMessage]) -> impl Iterator<Item = &driver::SimpleQueryRow> {
    reply.iter().filter_map(|message| match message {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    })
}

/// Reads the `(pid, started)` columns that begin a row of [`session`] or [`still_held`].
fn read_session_row(row: &impl TextRow) -> Option<SessionId> {
    read_session_columns(row, 0)
}

/// Reads a session's `(pid, started)` from columns `first` and `first + 1` of `row`.
fn read_session_columns(row: &impl TextRow, first: usize) -> Option<SessionId> {
    let number = |index: usize| row.text(index)?.parse::<i64>().ok();
    Some(SessionId {
        id: number(first)?.unsigned_abs(),
        tag: u64::from_ne_bytes(number(first + 1)?.to_ne_bytes()),
    })
}

/// Reads the reply to [`session`], given as its rows.
pub(crate) fn read_session<'a, R: TextRow + 'a>(
    rows: impl IntoIterator<Item = &'a R>,
) -> Result<SessionId, Error> {
    rows.into_iter()
        .find_map(read_session_row)
        .ok_or_else(|| unexpected_reply("this session's pid and start in pg_stat_activity"))
}

/// The statement a watcher sends for many held locks at once: every advisory lock of this
/// database granted to the sessions of `pids`, with each session's start (which tells it
/// apart from a later session with the same pid) and the lock's ids in `pg_locks`.
///
/// It asks for the holds, not only whether the sessions run: a session can live on without
/// its locks (`DISCARD ALL`, `pg_advisory_unlock_all()`, a session-pooling proxy that resets
/// the server session its client's flow left). Reading `pg_locks` takes the lock table's
/// partition locks in turn, so on a server whose sessions are busy taking and giving back
/// locks it answers later than `pg_stat_activity` alone would; the watcher's bound is the
/// limit (unknown counts as lost).
pub(crate) fn still_held(pids: impl IntoIterator<Item = u64>) -> String {
    let mut sql = format!(
        "SELECT l.pid, {SESSION_STARTED}, l.classid, l.objid, l.objsubid \
         FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND l.pid IN ("
    );
    let mut first = true;
    for pid in pids {
        if !first {
            sql.push_str(", ");
        }
        first = false;
        // Writing to a String cannot fail.
        let _ = write!(sql, "{pid}");
    }
    if first {
        // No session: a pid no session has.
        sql.push('0');
    }
    sql.push(')');
    sql
}

/// Reads the reply to [`still_held`]: for each of `locks`, whether its session (the same
/// one: pid and start) holds its key, in any mode.
pub(crate) fn read_still_held<'a, R: TextRow + 'a>(
    rows: impl IntoIterator<Item = &'a R>,
    locks: &[(SessionId, PgKey)],
) -> Vec<bool> {
    let holds: std::collections::HashSet<(SessionId, (u32, u32, i16))> = rows
        .into_iter()
        .filter_map(|row| {
            let session = read_session_row(row)?;
            let ids = (
                row.text(2)?.parse().ok()?,
                row.text(3)?.parse().ok()?,
                row.text(4)?.parse().ok()?,
            );
            Some((session, ids))
        })
        .collect();
    locks
        .iter()
        .map(|(session, key)| holds.contains(&(*session, pg_locks_ids(*key))))
        .collect()
}

/// A reply as the state machine reads it: the columns of the last row, as text (`t` and `f`
/// for booleans), or `None` when the statement returned no row. Each flavour turns its
/// driver's reply into this, so the machine reads simple and prepared replies alike.
pub(crate) type Row = Option<Vec<Option<String>>>;

/// The last row of a simple query's reply.
pub(crate) fn last_row(reply: &[SimpleQueryMessage]) -> Row {
    reply.iter().rev().find_map(|message| match message {
        SimpleQueryMessage::Row(row) => Some(
            (0..row.len())
                .map(|i| row.get(i).map(str::to_owned))
                .collect(),
        ),
        _ => None,
    })
}

/// The last row of a prepared statement's reply, as text: every prepared statement dlock
/// sends returns a boolean (a try or an unlock) or a void (a plain lock), and an unlock its
/// session's pid too.
pub(crate) fn prepared_row(rows: &[driver::Row]) -> Row {
    rows.last().map(|row| {
        (0..row.len())
            .map(|index| {
                if let Ok(flag) = row.try_get::<_, bool>(index) {
                    return Some(if flag { "t" } else { "f" }.to_owned());
                }
                let number = row
                    .try_get::<_, Option<i32>>(index)
                    .map(|n| n.map(i64::from));
                number
                    .or_else(|_| row.try_get::<_, Option<i64>>(index))
                    .ok()
                    .flatten()
                    .map(|number| number.to_string())
                    .or_else(|| Some(String::new()))
            })
            .collect()
    })
}

/// Column `index` of a reply as a boolean.
pub(crate) fn read_bool(row: &Row, index: usize) -> Result<bool, Error> {
    match row.as_ref().and_then(|row| row.get(index)) {
        Some(Some(value)) if value == "t" => Ok(true),
        Some(Some(value)) if value == "f" => Ok(false),
        _ => Err(unexpected_reply("a boolean")),
    }
}

/// Column `index` of a reply as a fencing token, if it holds one.
pub(crate) fn read_token(row: &Row, index: usize) -> Option<u64> {
    row.as_ref()?.get(index)?.as_deref()?.parse().ok()
}

/// Whether a reply has a row at all: a plain lock that returns was granted.
pub(crate) fn read_granted(row: &Row) -> Result<bool, Error> {
    row.as_ref()
        .map(|_| true)
        .ok_or_else(|| unexpected_reply("a row"))
}

fn unexpected_reply(expected: &str) -> Error {
    Error::backend(format!("the server's reply did not hold {expected}"))
}

/// What an error from the server or the driver means to a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// 55P03: `lock_timeout` ended the wait. The lock may have been granted as the timer
    /// fired.
    LockTimeout,
    /// 57014: a cancel request or `statement_timeout` ended the statement. The lock may have
    /// been granted as it landed. `by_request` when the server said it was a cancel request
    /// (its English message; other languages count as unknown).
    Canceled { by_request: bool },
    /// 25P02: the session's transaction is aborted; the statement did not run.
    TransactionAborted,
    /// 26000: a prepared statement is missing (`DISCARD ALL`, `DEALLOCATE ALL`); the
    /// statement did not run.
    StatementMissing,
    /// The connection or the session is gone, and with it every lock it held.
    ConnectionLost,
    /// Anything else: the statement did not take the lock.
    Other,
}

/// Sorts a driver error.
pub(crate) fn failure(error: &driver::Error) -> Failure {
    let Some(code) = error.code() else {
        // No SQLSTATE: the driver lost the connection or could not use it.
        let io =
            std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>());
        return if error.is_closed() || io {
            Failure::ConnectionLost
        } else {
            Failure::Other
        };
    };
    failure_of_code(code.code(), error.as_db_error().map(|db| db.message()))
}

/// Sorts a server error by its SQLSTATE `code` and, for a cancel, its `message`: what every
/// driver's errors come down to.
pub(crate) fn failure_of_code(code: &str, message: Option<&str>) -> Failure {
    match code {
        "55P03" => Failure::LockTimeout,
        "57014" => Failure::Canceled {
            by_request: message == Some("canceling statement due to user request"),
        },
        "25P02" => Failure::TransactionAborted,
        "26000" => Failure::StatementMissing,
        // The server ended the session (pg_terminate_backend, shutdown): its locks are gone.
        "57P01" | "57P02" | "57P03" => Failure::ConnectionLost,
        code if code.starts_with("08") => Failure::ConnectionLost,
        _ => Failure::Other,
    }
}

/// Whether a connection error proves that the server ended the session: it said so (a
/// kill, a shutdown: 57P01 and the like) or closed the connection. A timeout proves nothing:
/// the session may live on behind a silent network.
fn session_ended(error: &driver::Error) -> bool {
    if error.is_closed() || error.code().is_some() {
        return true;
    }
    let io =
        std::error::Error::source(error).and_then(|source| source.downcast_ref::<std::io::Error>());
    io.is_some_and(|io| io.kind() != std::io::ErrorKind::TimedOut)
}

/// dlock's error for a driver error.
pub(crate) fn error(error: driver::Error) -> Error {
    let code = error.code().map(|code| code.code().to_owned());
    let message = error.as_db_error().map(|db| db.message().to_owned());
    let kind = failure(&error);
    let ended = session_ended(&error);
    error_of(
        kind,
        code.as_deref(),
        message.as_deref(),
        ended,
        Box::new(error),
    )
}

/// dlock's error for a failed statement of any driver: sorted as `kind`, with the server's
/// SQLSTATE `code` and `message` where it sent them, `ended` when the session is proven
/// gone, and the driver's error as `source`.
pub(crate) fn error_of(
    kind: Failure,
    code: Option<&str>,
    message: Option<&str>,
    ended: bool,
    source: BoxError,
) -> Error {
    match kind {
        Failure::ConnectionLost if ended => Error::session_ended_by(source),
        Failure::ConnectionLost => Error::ConnectionLost {
            source: Some(source),
        },
        Failure::Canceled { .. } => Error::Canceled {
            source: Some(source),
        },
        Failure::TransactionAborted => Error::TransactionAborted {
            source: Some(source),
        },
        Failure::LockTimeout | Failure::StatementMissing | Failure::Other => match code {
            Some("40P01") => Error::Deadlock {
                source: Some(source),
            },
            // dlock's statements name no table but the fence table.
            Some("42P01") => Error::FencingNotInstalled {
                table: String::new(),
                source: Some(source),
            },
            Some("42704") if message.is_some_and(|message| message.contains(STANDBY_MARKER)) => {
                Error::CannotExclude {
                    deployment: dlock_core::Deployment::HotStandby,
                }
            }
            // PostgreSQL reports a full lock table as 53200, "out of shared memory".
            Some("53200") => Error::LockTableFull {
                setting: "max_locks_per_transaction",
                source: Some(source),
            },
            _ => Error::Backend(source),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: Hold = Hold {
        key: PgKey::BigInt(-5),
        mode: Mode::Exclusive,
    };
    const PAIR: Hold = Hold {
        key: PgKey::Pair(1, -2),
        mode: Mode::Shared,
    };

    #[test]
    fn lock_statements_name_the_right_function_for_each_mode_and_scope() {
        assert_eq!(
            try_lock(BIG, Scope::Session),
            "SELECT pg_try_advisory_lock(-5)"
        );
        assert_eq!(
            try_lock(PAIR, Scope::Session),
            "SELECT pg_try_advisory_lock_shared(1, -2)"
        );
        assert_eq!(
            try_lock(PAIR, Scope::Transaction),
            "SELECT pg_try_advisory_xact_lock_shared(1, -2)"
        );
        assert_eq!(
            wait_lock(BIG, Scope::Transaction),
            "SELECT pg_advisory_xact_lock(-5)"
        );
        assert_eq!(
            unlock(BIG),
            "SELECT pg_advisory_unlock(-5), pg_backend_pid()"
        );
        assert_eq!(
            unlock(PAIR),
            "SELECT pg_advisory_unlock_shared(1, -2), pg_backend_pid()"
        );
    }

    #[test]
    fn a_guarded_lock_turns_statement_timeout_off_before_its_wait_starts() {
        let sql = guarded_lock(BIG, Scope::Session, 150);
        let (first, second) = sql.split_once("; ").unwrap();
        // statement_timeout is armed when a statement starts: the first statement turns it
        // off for the second, and saves the caller's value first.
        let save = first.find("current_setting('statement_timeout')").unwrap();
        let off = first
            .find("set_config('statement_timeout', '0', true)")
            .unwrap();
        assert!(save < off, "{first}");
        assert!(!first.contains("pg_advisory"), "{first}");
        // lock_timeout is read when the wait begins: the second statement sets it, waits,
        // and puts both settings back.
        let set = second
            .find("set_config('lock_timeout', '150', true)")
            .unwrap();
        let wait = second.find("pg_advisory_lock(-5)").unwrap();
        let restore_lock = second
            .find("current_setting('dlock.saved_lock_timeout')")
            .unwrap();
        let restore_statement = second
            .find("current_setting('dlock.saved_statement_timeout')")
            .unwrap();
        assert!(set < wait && wait < restore_lock && wait < restore_statement);
        assert!(
            guarded_lock(PAIR, Scope::Transaction, 0)
                .contains("pg_advisory_xact_lock_shared(1, -2)")
        );
    }

    #[test]
    fn timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(lock_timeout_millis(Duration::from_nanos(1)), 1);
        assert_eq!(lock_timeout_millis(Duration::from_micros(1500)), 2);
        assert_eq!(lock_timeout_millis(Duration::from_millis(100)), 100);
        // Beyond lock_timeout's range the wait has no limit rather than a wrong one.
        assert_eq!(lock_timeout_millis(Duration::from_secs(30 * 86_400)), 0);
        assert_eq!(lock_timeout_millis(Duration::MAX), 0);
    }

    #[test]
    fn the_cleanup_unlocks_only_what_the_session_holds_in_that_mode() {
        let cleanup = cleanup(PAIR);
        let held = cleanup
            .find("pid = pg_backend_pid() AND mode = 'ShareLock'")
            .unwrap();
        let unlock = cleanup
            .find("THEN pg_advisory_unlock_shared(1, -2)")
            .unwrap();
        assert!(held < unlock, "{cleanup}");
        assert!(
            !cleanup.contains("set_config"),
            "no record kept in the session"
        );
    }

    #[test]
    fn a_shared_batch_is_one_statement_with_a_boolean_per_operation() {
        let ops = [
            (SharedOp::TryLock, PgKey::BigInt(7)),
            (SharedOp::Unlock, PgKey::Pair(1, -2)),
            (SharedOp::UnlockIfHeld, PgKey::BigInt(9)),
        ];
        let sql = shared_batch(&ops);
        assert!(
            sql.starts_with(
                "SELECT pg_try_advisory_lock(7), pg_advisory_unlock(1, -2), CASE WHEN EXISTS"
            ),
            "{sql}"
        );
        assert!(
            sql.ends_with("THEN pg_advisory_unlock(9) ELSE false END"),
            "{sql}"
        );
        let row = Some(vec![
            Some("t".to_owned()),
            Some("f".to_owned()),
            Some("t".to_owned()),
        ]);
        assert_eq!(read_shared_batch(&row, 3).unwrap(), [true, false, true]);
        assert!(
            read_shared_batch(&row, 4).is_err(),
            "a missing answer is an error"
        );
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
        for key in [
            PgKey::BigInt(0),
            PgKey::BigInt(-1),
            PgKey::BigInt(i64::MIN),
            PgKey::BigInt(-8_875_347_467_275_493_450),
            PgKey::Pair(-2, 3),
            PgKey::Pair(i32::MIN, i32::MAX),
        ] {
            let (classid, objid, objsubid) = pg_locks_ids(key);
            assert_eq!(pg_key_of_ids(classid, objid, objsubid), Some(key));
        }
        assert_eq!(pg_key_of_ids(1, 2, 3), None);
        let query = held_by_session(Hold {
            key: PgKey::Pair(5, 6),
            mode: Mode::Shared,
        });
        assert!(query.contains("classid = '5'::oid AND objid = '6'::oid AND objsubid = 2"));
        assert!(query.contains("mode = 'ShareLock'"));
        assert!(interrupted(BIG).ends_with("current_setting('statement_timeout') <> '0'"));
    }

    #[test]
    fn a_watcher_asks_for_the_holds_of_the_sessions_by_pid_and_start() {
        let sql = still_held([12, 34]);
        assert!(
            sql.starts_with(
                "SELECT l.pid, (extract(epoch FROM s.backend_start) * 1000000)::int8, \
                 l.classid, l.objid, l.objsubid FROM pg_locks l JOIN pg_stat_activity s"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("l.locktype = 'advisory' AND l.granted"),
            "{sql}"
        );
        assert!(sql.ends_with("AND l.pid IN (12, 34)"), "{sql}");
        assert!(
            still_held([]).ends_with("IN (0)"),
            "no session matches none"
        );
        assert!(session().ends_with("WHERE pid = pg_backend_pid()"));
    }

    #[test]
    fn replies_are_read_by_column() {
        let row: Row = Some(vec![Some("t".into()), Some("f".into())]);
        assert!(read_bool(&row, 0).unwrap());
        assert!(!read_bool(&row, 1).unwrap());
        assert!(read_bool(&row, 2).is_err());
        assert!(read_bool(&None, 0).is_err());
        assert!(read_granted(&Some(vec![Some(String::new())])).unwrap());
        assert!(read_granted(&None).is_err());
    }
}
