//! Every statement dlock sends to MySQL or MariaDB and the reading of every reply, as plain
//! functions. The blocking and tokio flavours only send these and hand back what came.
//!
//! Statements go over the text protocol. A name travels as a literal the server reads back as
//! exactly the name's UTF-8 bytes whatever the session's `sql_mode` (backslash escapes on or
//! off) and character set: quoted when it is printable ASCII without quote or backslash, and
//! otherwise as a hex literal with a character set introducer (`_utf8mb4 X'c3a9'`). Nothing
//! that could change the statement's meaning is ever spliced into SQL. Measured on loopback MariaDB 10.11, text statements ran about 10%
//! more lock/unlock cycles per second than cached prepared statements (12,300 against 11,000),
//! and they need no statement preparation on a new connection.

use std::fmt::Write as _;
use std::time::Duration;

use dlock_core::{BoxError, Error, Result, SessionId, SharedOp, Wait};

use crate::machine::Held;

// Both drivers share one `mysql_common`, so their rows are one type.
#[cfg(all(feature = "blocking", not(feature = "tokio")))]
use mysql::Row;
#[cfg(feature = "tokio")]
use mysql_async::Row;

/// The server family at the other end of a connection, read from its handshake (no query).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Server {
    /// MariaDB: `GET_LOCK` takes fractional seconds and refuses a negative timeout.
    MariaDb,
    /// Oracle MySQL (and servers that report its versions): a negative timeout waits forever,
    /// and the timeout counts whole seconds.
    MySql,
}

impl Server {
    /// Whether a server of handshake version `version` holds one named lock per session at
    /// most (MySQL before 5.7.5, MariaDB before 10.0.2): taking a second releases the first.
    /// MariaDB 5.5 reports itself as 5.5, and is as old as MySQL 5.5 here; (5, 5, 5) is the
    /// prefix later MariaDB releases put before their real version, not a version.
    pub(crate) fn one_named_lock_per_session(version: (u16, u16, u16)) -> bool {
        match version {
            (5, 5, 5) => false,
            (major, ..) if major < 10 => version < (5, 7, 5),
            _ => version < (10, 0, 2),
        }
    }

    /// The server family for the version a driver read from the handshake.
    ///
    /// MariaDB 10 reports `5.5.5-10.x.y-MariaDB`, which the drivers read as 5.5.5, so that
    /// old replication clients accept it; MariaDB 11 and later report their own version.
    /// MySQL has never released a version 10 or a 5.5.5 that anyone runs.
    pub(crate) fn from_version(version: (u16, u16, u16)) -> Server {
        if version == (5, 5, 5) || version.0 >= 10 {
            Server::MariaDb
        } else {
            Server::MySql
        }
    }
}

/// The longest single wait dlock asks of MariaDB, in seconds: one year, the largest
/// `lock_wait_timeout` either server accepts. MariaDB answers a negative timeout with NULL and
/// warning 1411 instead of waiting forever, so "forever" there is this wait, repeated in the
/// unlikely case that it runs out. A lock that does not know its server's family waits so
/// on either (MySQL waits the year too): a form that picked the timeout by `VERSION()` cost
/// about 3% of a pooled sqlx cycle (measured on MariaDB).
pub(crate) const MARIADB_FOREVER_SECONDS: u64 = 365 * 24 * 60 * 60;

/// Writes `name` as a string literal the server reads back as exactly the name's UTF-8
/// bytes, whatever the session's `sql_mode` and character set.
///
/// A name of printable ASCII without quote or backslash goes as a plain quoted literal:
/// every mode and every ASCII-compatible character set reads those bytes as written, and
/// `SHOW PROCESSLIST` shows the name readably. Any other name goes as a hex literal of its
/// UTF-8 bytes with the `utf8mb4` introducer, which keeps MySQL's case-insensitive comparison
/// of names working (a bare `X''` literal would be binary).
fn push_name(sql: &mut String, name: &str) {
    let plain = name
        .bytes()
        .all(|byte| (b' '..=b'~').contains(&byte) && byte != b'\'' && byte != b'\\');
    if plain {
        sql.push('\'');
        sql.push_str(name);
        sql.push('\'');
        return;
    }
    sql.push_str("_utf8mb4 X'");
    for byte in name.bytes() {
        // Writing to a String cannot fail.
        let _ = write!(sql, "{byte:02x}");
    }
    sql.push('\'');
}

/// The timeout argument of `GET_LOCK` for `wait` on `server`. Where the server is not known
/// (sqlx hides the handshake's version), a try and a wait without timeout read the same on
/// both; a timed wait is only sent to a known server.
fn timeout_argument(server: Option<Server>, wait: Wait) -> String {
    match (server, wait) {
        (_, Wait::Never) => "0".to_owned(),
        (Some(Server::MySql), Wait::Forever) => "-1".to_owned(),
        // MariaDB, or a server not known: a year, which both wait.
        (_, Wait::Forever) => MARIADB_FOREVER_SECONDS.to_string(),
        // MariaDB counts microseconds. Rounding up keeps `Ok(false)` from coming early.
        (Some(Server::MariaDb), Wait::For(timeout)) => {
            // A timeout beyond a year is a year, the longest wait dlock asks for.
            let micros = timeout
                .as_nanos()
                .div_ceil(1_000)
                .min(u128::from(MARIADB_FOREVER_SECONDS) * 1_000_000);
            format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
        }
        // MySQL rounds a fractional timeout to whole seconds, which could end a wait early:
        // send whole seconds, rounded up. A timeout beyond a year is a year, MySQL's own cap.
        (Some(Server::MySql), Wait::For(timeout)) => mysql_seconds(timeout).to_string(),
        (None, Wait::For(_)) => unreachable!("a timed wait is only sent to a known server"),
    }
}

fn mysql_seconds(timeout: Duration) -> u64 {
    let seconds = timeout.as_nanos().div_ceil(1_000_000_000);
    u64::try_from(seconds.min(u128::from(MARIADB_FOREVER_SECONDS)))
        .unwrap_or(MARIADB_FOREVER_SECONDS)
}

/// How long the server itself waits for `wait` before it answers: what a client-side
/// deadline must count from. MySQL waits the timeout rounded up to whole seconds.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn server_wait(server: Server, wait: Wait) -> Option<Duration> {
    match (server, wait) {
        (_, Wait::Never) => Some(Duration::ZERO),
        (_, Wait::Forever) => None,
        (Server::MariaDb, Wait::For(timeout)) => Some(timeout),
        (Server::MySql, Wait::For(timeout)) => Some(Duration::from_secs(mysql_seconds(timeout))),
    }
}

/// A lock statement's tag in its text, `dlock:` and a number unique to the attempt: the
/// process list shows it while the statement runs, which proves whose session it is.
pub(crate) fn tag(token: u64) -> String {
    format!("dlock:{token:016x}")
}

/// The statement that takes the lock named `name`, waiting as `wait` says; `guarded` turns
/// the session's statement time limit off for it (MariaDB `max_statement_time`, MySQL
/// `max_execution_time`), which would otherwise end the wait early. The text carries the
/// attempt's [`tag`].
///
/// With a `holder` name, a granted lock also takes that (unique) lock, whose holder proves
/// the session's identity to a `KILL` from elsewhere: the reply is then 2 when granted.
///
/// `checks` says what the statement checks of the deployment first ([`Checks`]): nothing,
/// the session's mark of a passed check (answering [`UNMARKED`] without locking where it is
/// missing), or the whole check, where it locks only where a lock excludes: not on TiDB
/// (answering [`REFUSED_ON_TIDB`]), not on a read-only server (answering
/// [`REFUSED_READ_ONLY`]), and on MariaDB not on a Galera node (answering
/// [`REFUSED_ON_GALERA`]). The whole check rides in the lock statement, at the cost of
/// reading a few global variables. (MySQL's Group Replication check reads
/// `performance_schema`, and goes on its own.)
pub(crate) fn get_lock(statement: &LockStatement<'_>) -> String {
    let &LockStatement {
        server,
        name,
        wait,
        guarded,
        token,
        names_session,
        takes_marker,
        checks,
    } = statement;
    let mut sql = String::with_capacity(160 + 2 * name.len());
    match (guarded, server) {
        (true, Some(Server::MariaDb)) => {
            sql.push_str("SET STATEMENT max_statement_time = 0 FOR SELECT ");
        }
        (true, Some(Server::MySql)) => {
            sql.push_str("SELECT /*+ SET_VAR(max_execution_time = 0) */ ");
        }
        (true, None) => unreachable!("a guarded lock statement is only sent to a known server"),
        (false, _) => sql.push_str("SELECT "),
    }
    let _ = write!(sql, "/* {} */ ", tag(token));
    // IF evaluates only the branch it picks: on an unmarked session, on TiDB, a Galera node
    // or a read-only server GET_LOCK never runs.
    let full = checks == Checks::Full;
    debug_assert!(
        !full || server.is_some(),
        "the whole check is sent to a known server"
    );
    let refuse_galera = full && server == Some(Server::MariaDb);
    let mut closing = 0;
    if checks == Checks::Mark {
        let _ = write!(
            sql,
            "IF({CHECKED_MARK} = '{}', ",
            checked_mark(names_session)
        );
    }
    if full {
        let _ = write!(sql, "IF({TIDB}, {REFUSED_ON_TIDB}, ");
        closing += 1;
    }
    if refuse_galera {
        let _ = write!(sql, "IF({GALERA_NODE}, {REFUSED_ON_GALERA}, ");
        closing += 1;
    }
    if full {
        let _ = write!(sql, "IF({READ_ONLY}, {REFUSED_READ_ONLY}, ");
        closing += 1;
    }
    if takes_marker.is_some() {
        sql.push_str("CASE ");
    }
    sql.push_str("GET_LOCK(");
    push_name(&mut sql, name);
    sql.push_str(", ");
    sql.push_str(&timeout_argument(server, wait));
    sql.push(')');
    if let Some(tag) = takes_marker {
        // The marker is taken only with a grant, and only where the session keeps none.
        let _ = write!(sql, " WHEN 1 THEN 1 + IF({SESSION_TAG} IS NULL, GET_LOCK(");
        push_name(&mut sql, &session_marker(tag));
        sql.push_str(", 0), 0) WHEN 0 THEN 0 END");
    }
    for _ in 0..closing {
        sql.push(')');
    }
    if checks == Checks::Mark {
        let _ = write!(sql, ", {UNMARKED})");
    }
    if names_session {
        // The session's name rides along (read by [`read_named_session`]): a lock made per
        // use on a long-lived or pooled session names it at no round trip of its own.
        sql.push_str(", ");
        sql.push_str(KNOWN_SESSION_COLUMNS);
    }
    if checks == Checks::MarkColumn {
        let _ = write!(
            sql,
            ", {CHECKED_MARK} <=> '{}'",
            checked_mark(names_session)
        );
    }
    sql
}

/// Reads the session's name from the reply of a statement of a lock that marks its session:
/// its first value `granted`, and the `columns` it appended ([`KNOWN_SESSION_COLUMNS`]; from
/// the second column of [`get_lock`]'s reply, the third of [`interrupted`]'s). The name is
/// the new marker `taken` where the grant took it (2), or the marker the session keeps.
pub(crate) fn read_named_session(
    granted: Option<i64>,
    columns: &[Option<i64>],
    taken: Option<u64>,
) -> Option<SessionId> {
    match (granted, columns, taken) {
        (Some(2), [Some(id), ..], Some(tag)) => Some(SessionId {
            id: id.unsigned_abs(),
            tag,
        }),
        (_, [id, known, ..], _) => read_known_session(&[*id, *known]),
        _ => None,
    }
}

/// What a lock statement ([`get_lock`]) does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LockStatement<'a> {
    /// The server, where known. Unknown, the statement can only be an unguarded try or
    /// wait without timeout, without the whole check ([`timeout_argument`]).
    pub(crate) server: Option<Server>,
    pub(crate) name: &'a str,
    pub(crate) wait: Wait,
    /// Whether the session's statement time limit is off for it.
    pub(crate) guarded: bool,
    /// The attempt's tag, which a side connection finds the statement by.
    pub(crate) token: u64,
    /// Whether the reply names the session by the marker it keeps, if any
    /// ([`read_named_session`]).
    pub(crate) names_session: bool,
    /// The marker a grant takes in the same statement where the session keeps none: the
    /// reply is then 2. For a lock whose grant must be provable from the moment it lands,
    /// on a session it does not know (a `CASE` around `GET_LOCK` costs about 10% of a cycle
    /// through mysql_async, measured, so only then).
    pub(crate) takes_marker: Option<u64>,
    pub(crate) checks: Checks,
}

/// What a lock statement checks of the deployment before it locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checks {
    /// Nothing: a check passed on this object's session already.
    None,
    /// The session's mark, which the statement after a passed check leaves
    /// ([`mark_session`]): a lock made per use on a checked session pays one comparison.
    /// Where it is missing the statement answers [`UNMARKED`] and locks nothing.
    Mark,
    /// The session's mark, read in a last column of its own beside a plain `GET_LOCK`
    /// (1 where it is there): a grant on an unmarked session is given back before the whole
    /// check runs. Cheaper than [`Checks::Mark`] (an `IF` around `GET_LOCK` costs about 20%
    /// of a cycle through mysql_async, a second column nothing measurable), for a lock whose
    /// server is known, or proven by a check on another session of its pool (an old
    /// server's `GET_LOCK` would free the session's other lock), and whose grant needs no
    /// proof from the moment it lands.
    MarkColumn,
    /// The whole check.
    Full,
}

/// The session variable that marks a server session a full check passed on, with this
/// process's [`process_mark`]. A session reset (a pool's `COM_RESET_CONNECTION`) clears it,
/// and a value anybody else sets never matches: either only makes the next lock check again.
const CHECKED_MARK: &str = "@dlock_deployment_checked";

/// What a lock statement that reads the mark answers where it is missing: nothing was locked.
pub(crate) const UNMARKED: i64 = -4;

/// This process's mark for sessions its checks passed on: random, so no other process's
/// check, and no user's variable, vouches for a session. A check passes only where the
/// server's version keeps more than one named lock a session, so the mark proves that too,
/// to a lock object that does not know the version (sqlx hides the handshake's).
fn process_mark() -> &'static str {
    static MARK: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MARK.get_or_init(|| format!("{:016x}", dlock_core::attempt_token()))
}

/// The value of [`CHECKED_MARK`] on a session a check passed on: for locks that mark their
/// session (`named`), it also says that the session took its marker before the mark was
/// set, and keeps it as long as the mark (a reset clears both): a lock statement gated by
/// it needs no way of its own to take a marker with its grant.
fn checked_mark(named: bool) -> String {
    let suffix = if named { "m" } else { "" };
    format!("{}{suffix}", process_mark())
}

/// The statement that marks the session after a full check passed on it (`checked`, by a
/// lock that marks its session where `named`: the session keeps a marker), and keeps the tag
/// of the marker lock a grant took on it (`marker`); at least one of them.
pub(crate) fn mark_session(checked: bool, named: bool, marker: Option<u64>) -> String {
    let mut sql = String::from("SET ");
    if checked {
        let _ = write!(sql, "{CHECKED_MARK} = '{}'", checked_mark(named));
    }
    if let Some(tag) = marker {
        if checked {
            sql.push_str(", ");
        }
        let _ = write!(sql, "{SESSION_TAG} = {tag}");
    }
    sql
}

/// Asks the server's version as three integers (major, minor, patch), for a lock object
/// that was not given the handshake's ([`read_version`]). The patch part of
/// `11.4.2-MariaDB-log` is cast from `2-MariaDB-log`, which reads as 2 (with a warning).
pub(crate) fn server_version() -> String {
    "SELECT CAST(SUBSTRING_INDEX(VERSION(), '.', 1) AS UNSIGNED), \
     CAST(SUBSTRING_INDEX(SUBSTRING_INDEX(VERSION(), '.', 2), '.', -1) AS UNSIGNED), \
     CAST(SUBSTRING_INDEX(SUBSTRING_INDEX(VERSION(), '.', 3), '.', -1) AS UNSIGNED)"
        .to_owned()
}

/// Reads the reply to [`server_version`].
pub(crate) fn read_version(row: &[Option<i64>]) -> Result<(u16, u16, u16)> {
    let part = |index: usize| {
        row.get(index)
            .copied()
            .flatten()
            .and_then(|part| u16::try_from(part).ok())
    };
    match (part(0), part(1), part(2)) {
        (Some(major), Some(minor), Some(patch)) => Ok((major, minor, patch)),
        _ => Err(Error::backend(format!(
            "the server's VERSION() did not read as major.minor.patch (read {row:?})"
        ))),
    }
}

/// True on TiDB, which answers `VERSION()` with its MySQL version, `-TiDB-`, and its own
/// (`8.0.11-TiDB-v7.5.0`).
const TIDB: &str = "VERSION() LIKE '%-TiDB-%'";

/// What a lock statement with the deployment check answers on TiDB, where it took nothing.
pub(crate) const REFUSED_ON_TIDB: i64 = -3;

/// The statement that asks whether the server is TiDB: 1 when it is. Every server family
/// answers it, whatever variables it lacks.
pub(crate) fn tidb_check() -> String {
    format!("SELECT {TIDB}")
}

/// True on a read-only server, as a replica is (both servers have both variables).
const READ_ONLY: &str = "@@global.read_only OR @@global.innodb_read_only";

/// What a lock statement built with `refuse_read_only` answers on a read-only server, where
/// it took nothing.
pub(crate) const REFUSED_READ_ONLY: i64 = -2;

/// True on a MariaDB Galera node, where `GET_LOCK` is local to the node: wsrep on, with a
/// provider loaded (what [`cluster_check`] counts, read without `information_schema`).
const GALERA_NODE: &str = "@@global.wsrep_on AND @@global.wsrep_provider NOT IN ('none', '')";

/// What a lock statement built with `refuse_galera` answers on a Galera node, where it took
/// nothing: `GET_LOCK` itself only answers 1, 0 or NULL (2 with a new session marker).
pub(crate) const REFUSED_ON_GALERA: i64 = -1;

/// The session variable that can end a statement early on `server`.
fn statement_limit(server: Server) -> &'static str {
    match server {
        Server::MariaDb => "@@max_statement_time",
        Server::MySql => "@@max_execution_time",
    }
}

/// The question after a lock statement was interrupted (NULL, `KILL QUERY`, a statement time
/// limit): whether this session holds the lock now (1), and whether the session has a
/// statement time limit that could have been the cause; for a lock that marks its session
/// (`marks`), then the columns that name the session ([`read_named_session`]).
///
/// The answer is exact: an interrupted statement waited, and a session's own holds never make
/// it wait, so a hold found now is the one the interrupted statement was granted.
pub(crate) fn interrupted(server: Server, name: &str, marks: bool) -> String {
    let mut sql = String::with_capacity(96 + 2 * name.len());
    sql.push_str("SELECT IS_USED_LOCK(");
    push_name(&mut sql, name);
    let _ = write!(
        sql,
        ") <=> CONNECTION_ID(), {} > 0",
        statement_limit(server)
    );
    if marks {
        sql.push_str(", ");
        sql.push_str(KNOWN_SESSION_COLUMNS);
    }
    sql
}

/// What a `GET_LOCK` reply (or the answer to [`interrupted`]) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The session holds the lock (1; 2 where it also took a new session marker).
    Granted,
    /// The wait ran out.
    TimedOut,
    /// NULL: the statement was interrupted (`KILL QUERY`, MariaDB's `max_statement_time`).
    Interrupted,
    /// [`REFUSED_ON_GALERA`]: the server is a Galera node, and nothing was locked.
    RefusedOnGalera,
    /// [`REFUSED_READ_ONLY`]: the server is read-only, and nothing was locked.
    RefusedReadOnly,
    /// [`REFUSED_ON_TIDB`]: the server is TiDB, and nothing was locked.
    RefusedOnTiDb,
    /// [`UNMARKED`]: no check passed on the session yet, and nothing was locked.
    Unmarked,
}

/// Reads the reply to [`get_lock`].
///
/// The server answers NULL when the statement was killed (`KILL QUERY`) or ran out of its
/// statement time, and for an empty name or a bad timeout, which dlock never sends.
pub(crate) fn read_acquired(reply: Option<i64>) -> Result<Acquired> {
    match reply {
        Some(1 | 2) => Ok(Acquired::Granted),
        Some(0) => Ok(Acquired::TimedOut),
        None => Ok(Acquired::Interrupted),
        Some(REFUSED_ON_GALERA) => Ok(Acquired::RefusedOnGalera),
        Some(REFUSED_READ_ONLY) => Ok(Acquired::RefusedReadOnly),
        Some(REFUSED_ON_TIDB) => Ok(Acquired::RefusedOnTiDb),
        Some(UNMARKED) => Ok(Acquired::Unmarked),
        Some(other) => Err(unexpected("GET_LOCK", other)),
    }
}

/// The statement that releases one hold of the lock named `name` (never the session's
/// marker). Its first value is read by [`read_released`].
pub(crate) fn release_lock(name: &str) -> String {
    let mut sql = String::with_capacity(32 + 2 * name.len());
    sql.push_str("SELECT RELEASE_LOCK(");
    push_name(&mut sql, name);
    sql.push(')');
    sql
}

/// The statement that pays releases owed by dropped lock objects, all at once, one hold of
/// each. It must not be sent twice: the server counts holds of one name per session, not
/// per object.
pub(crate) fn pay_owed(owed: &[Held]) -> String {
    let mut sql = String::from("SELECT ");
    for (index, held) in owed.iter().enumerate() {
        if index > 0 {
            sql.push_str(", ");
        }
        sql.push_str("RELEASE_LOCK(");
        push_name(&mut sql, &held.name);
        sql.push(')');
    }
    sql
}

/// Reads the reply to [`release_lock`]: 1 released; 0 (held by another session) and NULL
/// (held by nobody) both mean this session did not hold it, [`Error::NotHeld`].
pub(crate) fn read_released(reply: Option<i64>) -> Result<(), Error> {
    match reply {
        Some(1) => Ok(()),
        Some(0) | None => Err(Error::NotHeld),
        Some(other) => Err(unexpected("RELEASE_LOCK", other)),
    }
}

/// The statement that asks whether this session holds the lock named `name`: 1 yes, 0 another
/// session holds it, NULL nobody does.
pub(crate) fn held_by_session(name: &str) -> String {
    let mut sql = String::with_capacity(48 + 2 * name.len());
    sql.push_str("SELECT IS_USED_LOCK(");
    push_name(&mut sql, name);
    sql.push_str(") = CONNECTION_ID()");
    sql
}

/// Reads a boolean answer: 1 true; 0 and NULL false.
pub(crate) fn read_held(reply: Option<i64>) -> Result<bool, Error> {
    match reply {
        Some(1) => Ok(true),
        Some(0) | None => Ok(false),
        Some(other) => Err(unexpected("IS_USED_LOCK", other)),
    }
}

/// The statement that asks which connection holds the lock named `name`: its id, or NULL.
pub(crate) fn holder(name: &str) -> String {
    let mut sql = String::with_capacity(32 + 2 * name.len());
    sql.push_str("SELECT IS_USED_LOCK(");
    push_name(&mut sql, name);
    sql.push(')');
    sql
}

/// The statement that asks who holds `name`, with what the process list says of that
/// session: its id, client host, user, and how long its current state has lasted.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn holder_session(name: &str) -> String {
    let mut sql = String::from(
        "SELECT ID, HOST, USER, TIME FROM information_schema.PROCESSLIST WHERE ID = IS_USED_LOCK(",
    );
    push_name(&mut sql, name);
    sql.push(')');
    sql
}

/// What listing every named lock depends on: whether the server is MariaDB, whether it runs
/// the performance schema (MySQL lists named locks there), and whether MariaDB's
/// `metadata_lock_info` plugin is active (MariaDB lists them there). Three integers.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) const LOCK_LISTS: &str = "SELECT VERSION() LIKE '%MariaDB%', @@performance_schema, \
     (SELECT COUNT(*) FROM information_schema.PLUGINS \
     WHERE PLUGIN_NAME = 'METADATA_LOCK_INFO' AND PLUGIN_STATUS = 'ACTIVE')";

/// The statement that lists every session holding a named lock, with the lock's name first
/// and then what [`holder_session`] reads, by what [`LOCK_LISTS`] answered: MariaDB's
/// `metadata_lock_info` table, or MySQL's performance schema. Neither is there by default
/// on every server, and a list that silently misses holders would say a held lock is free.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn every_holder_session(lists: &[Option<i64>]) -> Result<&'static str, Error> {
    match lists {
        [Some(1), _, Some(active)] if *active > 0 => {
            Ok("SELECT m.TABLE_SCHEMA, p.ID, p.HOST, p.USER, p.TIME \
             FROM information_schema.METADATA_LOCK_INFO m \
             JOIN information_schema.PROCESSLIST p ON p.ID = m.THREAD_ID \
             WHERE m.LOCK_TYPE = 'User lock' ORDER BY m.TABLE_SCHEMA, p.ID")
        }
        [Some(1), _, _] => Err(Error::Unsupported {
            operation: "listing every named lock",
            backend: "MariaDB without its metadata_lock_info plugin",
            hint: "name the key, or have an administrator run \
                   INSTALL SONAME 'metadata_lock_info' once",
        }),
        [Some(0), Some(1), _] => Ok(
            "SELECT m.OBJECT_NAME, t.PROCESSLIST_ID, p.HOST, p.USER, p.TIME \
             FROM performance_schema.metadata_locks m \
             JOIN performance_schema.threads t ON t.THREAD_ID = m.OWNER_THREAD_ID \
             JOIN information_schema.PROCESSLIST p ON p.ID = t.PROCESSLIST_ID \
             WHERE m.OBJECT_TYPE = 'USER LEVEL LOCK' AND m.LOCK_STATUS = 'GRANTED' \
             ORDER BY m.OBJECT_NAME, p.ID",
        ),
        [Some(0), _, _] => Err(Error::Unsupported {
            operation: "listing every named lock",
            backend: "MySQL without its performance schema",
            hint: "name the key, or start the server with performance_schema = ON",
        }),
        _ => Err(Error::backend(
            "the server did not say whether it is MariaDB, runs the performance schema \
             and the metadata_lock_info plugin"
                .to_owned(),
        )),
    }
}

/// The session that holds a named lock, with what the server's process list says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "tokio"), allow(dead_code, unreachable_pub))]
pub struct HolderSession {
    /// The lock's name, as the server has it.
    pub name: String,
    /// The holding connection's id (`CONNECTION_ID()`; `KILL` it to free its locks).
    pub id: u64,
    /// The client's host and port, as the server saw it connect.
    pub host: Option<String>,
    /// The account the session logged in as.
    pub user: Option<String>,
    /// How long, in seconds, the session has been in its current state.
    pub seconds: Option<u64>,
}

/// The statement that tries the lock named `name` once, without waiting: 1 granted, 0 busy.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn try_get_lock(name: &str) -> String {
    let mut sql = String::from("SELECT GET_LOCK(");
    push_name(&mut sql, name);
    sql.push_str(", 0)");
    sql
}

/// One statement that does each of `ops` in turn, one column each: many tasks' tries and
/// releases on a shared session cost the server one statement, not one each.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn shared_batch(ops: &[(SharedOp, &str)]) -> String {
    let mut sql = String::from("SELECT ");
    for (index, (op, name)) in ops.iter().enumerate() {
        if index > 0 {
            sql.push_str(", ");
        }
        match op {
            SharedOp::TryLock => {
                sql.push_str("GET_LOCK(");
                push_name(&mut sql, name);
                sql.push_str(", 0)");
            }
            SharedOp::Unlock => {
                sql.push_str("RELEASE_LOCK(");
                push_name(&mut sql, name);
                sql.push(')');
            }
            SharedOp::UnlockIfHeld => {
                sql.push_str("IF(IS_USED_LOCK(");
                push_name(&mut sql, name);
                sql.push_str(") = CONNECTION_ID(), RELEASE_LOCK(");
                push_name(&mut sql, name);
                sql.push_str("), 0)");
            }
        }
    }
    sql
}

/// Reads the reply to [`shared_batch`]: whether each entry was granted or released.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn read_shared_batch(
    row: &[Option<i64>],
    ops: &[(SharedOp, &str)],
) -> Result<Vec<bool>> {
    if row.len() != ops.len() {
        return Err(Error::backend(format!(
            "a batch of {} entries was answered with {} columns",
            ops.len(),
            row.len()
        )));
    }
    ops.iter()
        .zip(row)
        .map(|((op, _), answer)| match (op, answer) {
            (_, Some(1)) => Ok(true),
            (_, Some(0)) => Ok(false),
            // RELEASE_LOCK answers NULL for a name nobody holds.
            (SharedOp::Unlock | SharedOp::UnlockIfHeld, None) => Ok(false),
            (SharedOp::TryLock, other) => Err(Error::backend(format!(
                "GET_LOCK(name, 0) answered {other:?}, which no MySQL or MariaDB version documents"
            ))),
            (_, Some(other)) => Err(unexpected("RELEASE_LOCK", *other)),
        })
        .collect()
}

/// Reads the reply to [`holder`].
pub(crate) fn read_holder(reply: Option<i64>) -> Result<Option<u64>, Error> {
    reply
        .map(|id| u64::try_from(id).map_err(|_| unexpected("IS_USED_LOCK", id)))
        .transpose()
}

/// The unique lock a session takes to be told apart, by a watcher, from a later session
/// with the same connection id (ids start again at 1 when the server restarts).
pub(crate) fn session_marker(tag: u64) -> String {
    format!("dlock/session/{tag:016x}")
}

/// The statement that names this session for a watcher: its connection id, and its marker
/// lock `tag` taken (never waiting: the name is unique).
pub(crate) fn session(tag: u64) -> String {
    let mut sql = String::from("SELECT CONNECTION_ID(), GET_LOCK(");
    push_name(&mut sql, &session_marker(tag));
    sql.push_str(", 0)");
    sql
}

/// The user variable that keeps, on a session a pool hands out again and again, the tag of
/// the marker lock [`session`] took there, so that later locks on it reuse the marker instead
/// of taking one each. A session reset clears it and frees the marker alike.
const SESSION_TAG: &str = "@dlock_session_tag";

/// The columns that name this session by the marker a grant took on it: its connection id,
/// and the marker's tag the session keeps (NULL where it keeps none). The variable stands
/// for the marker: only the statement that keeps a taken marker's tag sets it, and a session
/// reset clears it and frees the marker alike. (Asking `IS_USED_LOCK` in every lock
/// statement instead cost about 7% of a lock and release cycle on MariaDB, and a `CASE`
/// around `GET_LOCK` about 10% through mysql_async: measured.)
const KNOWN_SESSION_COLUMNS: &str = "CONNECTION_ID(), @dlock_session_tag";

/// Reads [`KNOWN_SESSION_COLUMNS`]: the session, when it holds its marker.
pub(crate) fn read_known_session(row: &[Option<i64>]) -> Option<SessionId> {
    match row {
        [Some(id), Some(tag)] if *tag > 0 => Some(SessionId {
            id: id.unsigned_abs(),
            tag: tag.unsigned_abs(),
        }),
        _ => None,
    }
}

/// Reads the reply to [`session`].
pub(crate) fn read_session(row: &[Option<i64>], tag: u64) -> Result<SessionId> {
    match row {
        [Some(id), Some(1)] => Ok(SessionId {
            id: id.unsigned_abs(),
            tag,
        }),
        _ => Err(Error::backend(
            "the session's marker lock was not granted, though its name is unique",
        )),
    }
}

/// How many locks one watcher statement asks about: two columns each, well below the
/// servers' column limit (4096).
pub(crate) const WATCHED_PER_STATEMENT: usize = 1000;

/// The statement a watcher sends for many held locks at once: for each, which connection
/// holds its name and which holds its session's marker.
pub(crate) fn still_held(locks: &[(SessionId, String)]) -> String {
    let mut sql = String::from("SELECT ");
    for (index, (session, name)) in locks.iter().enumerate() {
        if index > 0 {
            sql.push_str(", ");
        }
        sql.push_str("IS_USED_LOCK(");
        push_name(&mut sql, name);
        sql.push_str("), IS_USED_LOCK(");
        push_name(&mut sql, &session_marker(session.tag));
        sql.push(')');
    }
    sql
}

/// Reads the reply to [`still_held`]: a lock is still held when its session holds both its
/// name and its marker, so a later session with the same id never passes for it.
pub(crate) fn read_still_held(row: &[Option<i64>], locks: &[(SessionId, String)]) -> Vec<bool> {
    locks
        .iter()
        .enumerate()
        .map(|(index, (session, _))| {
            let holder = |column: usize| row.get(column).copied().flatten().map(i64::unsigned_abs);
            holder(2 * index) == Some(session.id) && holder(2 * index + 1) == Some(session.id)
        })
        .collect()
}

/// What proves, from another session, that the session with a given id is still the one a
/// lock object used. A connection id alone does not: ids start again at 1 when the server
/// restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Proof {
    /// The session is still running the statement tagged with this token.
    Running(u64),
    /// The session holds this (unique) marker lock.
    Holds(String),
}

/// The question, from another session, whether session `id` is the one `proof` names: one
/// value, 1 when it is.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn proves(id: u32, proof: &Proof) -> String {
    match proof {
        Proof::Running(token) => format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {id} AND INFO LIKE \
             '%{}%'",
            tag(*token)
        ),
        Proof::Holds(holder) => {
            let mut sql = String::from("SELECT IS_USED_LOCK(");
            push_name(&mut sql, holder);
            let _ = write!(sql, ") = {id}");
            sql
        }
    }
}

/// The statement that ends the session with id `connection_id`, freeing its locks. Sent only
/// after [`proves`] said yes, from the same connection: the id cannot be reused in between
/// without a server restart, which would end that connection too.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn kill(connection_id: u32) -> String {
    format!("KILL CONNECTION {connection_id}")
}

fn unexpected(function: &str, value: i64) -> Error {
    Error::backend(format!(
        "{function} returned {value}, which no MySQL or MariaDB version documents"
    ))
}

/// MariaDB's deadlock error for lock waits (`ER_LOCK_DEADLOCK`).
const ER_LOCK_DEADLOCK: u16 = 1213;
/// MySQL's deadlock error for user-level locks (`ER_USER_LOCK_DEADLOCK`).
const ER_USER_LOCK_DEADLOCK: u16 = 3058;
/// The lock name is longer than the server allows (`ER_TOO_LONG_IDENT`).
const ER_TOO_LONG_IDENT: u16 = 1059;
/// The statement was interrupted (`ER_QUERY_INTERRUPTED`), for example by `KILL QUERY`.
const ER_QUERY_INTERRUPTED: u16 = 1317;
/// MariaDB's `max_statement_time` ran out (`ER_STATEMENT_TIMEOUT`).
const ER_STATEMENT_TIMEOUT: u16 = 1969;
/// MySQL's `max_execution_time` ran out (`ER_QUERY_TIMEOUT`).
const ER_QUERY_TIMEOUT: u16 = 3024;
/// The server killed the connection (MariaDB `ER_CONNECTION_KILLED`).
const ER_CONNECTION_KILLED: u16 = 1927;
/// The server is shutting down (`ER_SERVER_SHUTDOWN`).
const ER_SERVER_SHUTDOWN: u16 = 1053;
/// MySQL 8 closed the connection for inactivity (`ER_CLIENT_INTERACTION_TIMEOUT`).
const ER_CLIENT_INTERACTION_TIMEOUT: u16 = 4031;
/// The client's "server has gone away" and "lost connection during query" codes.
const CR_SERVER_GONE_ERROR: u16 = 2006;
const CR_SERVER_LOST: u16 = 2013;
/// "This version of MariaDB doesn't yet support ...": some MariaDB releases refuse
/// `GET_LOCK` and `RELEASE_LOCK` on a Galera node with it (MDEV-30473).
const ER_NOT_SUPPORTED_YET: u16 = 1235;
/// "Table ... doesn't exist": the fence table was never installed.
const ER_NO_SUCH_TABLE: u16 = 1146;
/// "Unknown database": the fence table's database was never created.
const ER_BAD_DB_ERROR: u16 = 1049;

/// The default fence table, in a database of its own: a named lock is server-wide, so its
/// counter must be too, whatever a session's default database. `install_fencing` creates the
/// database when it is missing.
pub(crate) const DEFAULT_FENCE_DATABASE: &str = "dlock";

/// [`DEFAULT_FENCE_DATABASE`]'s fence table.
pub(crate) const DEFAULT_FENCE_TABLE: &str = "dlock.dlock_fence";

/// The fence table's name as SQL: its parts ([`dlock_core::fence_table_parts`]), quoted.
pub(crate) fn fence_table(name: &str) -> Result<String, Error> {
    Ok(dlock_core::fence_table_parts(name)?
        .iter()
        .map(|part| format!("`{part}`"))
        .collect::<Vec<_>>()
        .join("."))
}

/// The statement that creates the default fence table's database if it is missing.
pub(crate) fn install_fence_database() -> String {
    format!("CREATE DATABASE IF NOT EXISTS `{DEFAULT_FENCE_DATABASE}`")
}

/// The statement that creates the fence table if it is missing: one counter row per lock
/// name (compared byte for byte), never deleted; on MariaDB also its clock ([`fence_clock`]).
pub(crate) fn install_fencing(server: Server, table: &str) -> String {
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {table} (lock_name VARBINARY(255) NOT NULL PRIMARY KEY, \
         token BIGINT UNSIGNED NOT NULL) ENGINE = InnoDB"
    );
    match server {
        Server::MariaDb => format!(
            "{create}; CREATE SEQUENCE IF NOT EXISTS {}",
            fence_clock(table)
        ),
        Server::MySql => create,
    }
}

/// The fence table's clock on MariaDB (the table's name with `_clock`, as SQL): a sequence
/// each token is drawn from besides its name's row. `NEXTVAL` is never rolled back, so a token
/// handed out inside a transaction of the user's that then rolls back (the row's bump undone
/// with it) is still used up. MySQL has no sequences: there the row alone counts.
fn fence_clock(table: &str) -> String {
    let quoted = table.strip_suffix('`').unwrap_or(table);
    format!("{quoted}_clock`")
}

/// The statement that bumps a name's token after its `GET_LOCK` succeeded, on the same
/// session. `LAST_INSERT_ID(expr)` puts the token in the OK packet, so no SELECT follows: the
/// flavours read it as the reply (the machine sends it as a statement without rows), with the
/// rows it changed. On MariaDB the token
/// is also no lower than the clock's next tick (`VALUES(token)`, drawn once per statement).
///
/// The row is written only where the server makes a commit durable before it answers
/// ([`DURABLE_COMMITS`]); elsewhere the statement changes no row (and draws no tick), and the
/// grant is given back: a token a crash could take back is never handed out.
pub(crate) fn fence(server: Server, table: &str, name: &str) -> String {
    let mut sql = format!("INSERT INTO {table} (lock_name, token) SELECT ");
    push_name(&mut sql, name);
    match server {
        Server::MariaDb => {
            let _ = write!(
                sql,
                ", LAST_INSERT_ID(NEXTVAL({})) FROM DUAL WHERE {DURABLE_COMMITS} \
                 ON DUPLICATE KEY UPDATE token = LAST_INSERT_ID(GREATEST(token + 1, VALUES(token)))",
                fence_clock(table)
            );
        }
        Server::MySql => {
            let _ = write!(
                sql,
                ", LAST_INSERT_ID(1) FROM DUAL WHERE {DURABLE_COMMITS} \
                 ON DUPLICATE KEY UPDATE token = LAST_INSERT_ID(token + 1)"
            );
        }
    }
    sql
}

/// True where InnoDB flushes its redo log at every commit, so a committed token survives a
/// crash of the server or of its machine. The setting is global only (`SET SESSION` is error
/// 1229), so a fenced grant reads it each time instead of setting it, as PostgreSQL's does.
const DURABLE_COMMITS: &str = "@@global.innodb_flush_log_at_trx_commit = 1";

/// Reads the reply to [`fence`] as the flavours give it: the token (the OK packet's last
/// insert id) and the rows the statement changed, none where the server's commits are not
/// durable.
pub(crate) fn read_token(reply: &[Option<i64>]) -> Result<u64> {
    match reply {
        [_, Some(0)] => Err(Error::FencingNotDurable {
            setting: "innodb_flush_log_at_trx_commit",
        }),
        [Some(token), _] if *token > 0 => Ok(token.unsigned_abs()),
        _ => Err(Error::backend(format!(
            "the fencing token's upsert answered {reply:?}, where it gives a token"
        ))),
    }
}

/// The deployment check of a server family: one row, one count, that says whether the server
/// is a cluster node whose `GET_LOCK` is local to it ([`cluster_node`]). Neither statement
/// needs a privilege beyond a login's, and neither fails on a server without clustering.
pub(crate) fn cluster_check(server: Server) -> String {
    match server {
        // Galera: wsrep on, with a provider loaded (both rows present makes 2).
        Server::MariaDb => "SELECT COUNT(*) FROM information_schema.GLOBAL_VARIABLES \
                            WHERE (VARIABLE_NAME = 'WSREP_ON' AND VARIABLE_VALUE = 'ON') \
                            OR (VARIABLE_NAME = 'WSREP_PROVIDER' AND VARIABLE_VALUE NOT IN ('none', ''))"
            .to_owned(),
        // Group Replication: this server is a member that takes part in the group.
        Server::MySql => "SELECT COUNT(*) FROM performance_schema.replication_group_members \
                          WHERE MEMBER_ID = @@server_uuid \
                          AND MEMBER_STATE IN ('ONLINE', 'RECOVERING')"
            .to_owned(),
    }
}

/// The statement that asks whether the server is read-only, as a replica is: 1 when it is.
pub(crate) fn read_only_check() -> String {
    format!("SELECT {READ_ONLY}")
}

/// What [`cluster_check`]'s count says: the cluster the server is a node of, if any.
pub(crate) fn cluster_node(server: Server, count: Option<i64>) -> Option<dlock_core::Deployment> {
    match (server, count) {
        (Server::MariaDb, Some(2)) => Some(dlock_core::Deployment::Galera),
        (Server::MySql, Some(count)) if count > 0 => Some(dlock_core::Deployment::GroupReplication),
        _ => None,
    }
}

/// The values of a reply's first row, as the state machines read them: every statement dlock
/// sends returns one row of integers or NULLs.
pub(crate) fn read_row(row: Option<Row>, statement: &str) -> Result<Vec<Option<i64>>, Failed> {
    let row = row.ok_or_else(|| Failed {
        failure: Failure::Other,
        error: Error::backend(format!("the server sent no row for `{statement}`")),
    })?;
    Ok((0..row.len())
        .map(|index| {
            row.get_opt::<Option<i64>, usize>(index)
                .and_then(Result::ok)
                .flatten()
        })
        .collect())
}

/// What a failed statement means to a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// `KILL QUERY` or a statement time limit ended the statement: a lock wait may have been
    /// granted as it landed.
    Interrupted,
    /// The connection or the session is gone, and with it every lock it held.
    ConnectionLost,
    /// Anything else: the statement took no lock.
    Other,
}

/// A failed statement, sorted and turned into dlock's error.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) failure: Failure,
    pub(crate) error: Error,
}

/// Sorts an error packet the server sent, with code `code`.
pub(crate) fn server_failure(code: u16, source: BoxError) -> Failed {
    let (failure, error) = match code {
        ER_LOCK_DEADLOCK | ER_USER_LOCK_DEADLOCK => (
            Failure::Other,
            Error::Deadlock {
                source: Some(source),
            },
        ),
        ER_TOO_LONG_IDENT => (
            Failure::Other,
            Error::InvalidKey {
                reason: format!(
                    "the server refused the lock name as too long ({source}); MySQL allows 64 \
                     characters and MariaDB 192 bytes: use KeyPolicy::HashedMySqlName for long \
                     keys"
                ),
            },
        ),
        ER_QUERY_INTERRUPTED | ER_STATEMENT_TIMEOUT | ER_QUERY_TIMEOUT => (
            Failure::Interrupted,
            Error::Canceled {
                source: Some(source),
            },
        ),
        // dlock's statements name no table or database but the fence table's.
        ER_NO_SUCH_TABLE | ER_BAD_DB_ERROR => (
            Failure::Other,
            Error::FencingNotInstalled {
                table: String::new(),
                source: Some(source),
            },
        ),
        ER_NOT_SUPPORTED_YET if source.to_string().contains("in cluster") => (
            Failure::Other,
            Error::CannotExclude {
                deployment: dlock_core::Deployment::Galera,
            },
        ),
        // The server says it ends the session, or the client found the connection closed.
        ER_CONNECTION_KILLED
        | ER_SERVER_SHUTDOWN
        | ER_CLIENT_INTERACTION_TIMEOUT
        | CR_SERVER_GONE_ERROR => (Failure::ConnectionLost, Error::session_ended_by(source)),
        // Lost during the query: possibly a read timeout, with the session still alive.
        CR_SERVER_LOST => (
            Failure::ConnectionLost,
            Error::ConnectionLost {
                source: Some(source),
            },
        ),
        _ => (Failure::Other, Error::Backend(source)),
    };
    Failed { failure, error }
}

/// A lost connection, as the drivers report it without an error packet; `ended` when the
/// error proves the server ended the session (it closed the connection), not a timeout.
pub(crate) fn connection_lost(source: BoxError, ended: bool) -> Failed {
    let error = if ended {
        Error::session_ended_by(source)
    } else {
        Error::ConnectionLost {
            source: Some(source),
        }
    };
    Failed {
        failure: Failure::ConnectionLost,
        error,
    }
}

/// Whether an I/O error is the connection closed by the server (a broken pipe, a reset, the
/// end of the stream), rather than a silent one: see [`Error::session_ended`].
pub(crate) fn closed_by_peer(error: &std::io::Error) -> bool {
    !matches!(
        error.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// The error of a lock wait that the server interrupted without an error packet (a NULL
/// reply): `KILL QUERY`, or MariaDB's `max_statement_time`.
pub(crate) fn canceled_by_null() -> Error {
    Error::Canceled {
        source: Some(
            "GET_LOCK returned NULL: the statement was killed (KILL QUERY) or ran out of its \
             statement time"
                .into(),
        ),
    }
}

/// The error for an operation through a connection that an interrupted operation left
/// unusable.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn unusable() -> Error {
    Error::ConnectionUnusable {
        reason: "an earlier operation's future was dropped before the server answered, so \
                 dlock ended the session (KILL) rather than read stale replies"
            .to_owned(),
    }
}

/// The error for asking MySQL for a shared lock.
pub(crate) fn shared_unsupported() -> Error {
    Error::Unsupported {
        operation: "a shared lock",
        backend: "MySQL and MariaDB",
        hint: "GET_LOCK locks are exclusive; PostgreSQL advisory locks have a shared mode \
               (dlock-postgres `.shared()`)",
    }
}

/// The error for asking MySQL for a transaction-scoped lock.
pub(crate) fn transaction_unsupported() -> Error {
    Error::Unsupported {
        operation: "a transaction-scoped lock",
        backend: "MySQL and MariaDB",
        hint: "GET_LOCK locks last for the session and ignore transactions; PostgreSQL has \
               transaction-scoped advisory locks (dlock-postgres `PgXactLock`)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_family_is_read_from_the_handshake_version() {
        assert_eq!(Server::from_version((5, 5, 5)), Server::MariaDb);
        assert_eq!(Server::from_version((10, 11, 19)), Server::MariaDb);
        assert_eq!(Server::from_version((11, 4, 2)), Server::MariaDb);
        assert_eq!(Server::from_version((8, 0, 36)), Server::MySql);
        assert_eq!(Server::from_version((5, 7, 44)), Server::MySql);
        assert_eq!(Server::from_version((9, 1, 0)), Server::MySql);
    }

    const TOKEN: u64 = 0xabc;

    /// A lock statement's description with nothing but its lock.
    fn statement(server: Server, name: &str, wait: Wait) -> LockStatement<'_> {
        LockStatement {
            server: Some(server),
            name,
            wait,
            guarded: false,
            token: TOKEN,
            names_session: false,
            takes_marker: None,
            checks: Checks::None,
        }
    }

    fn plain(server: Server, name: &str, wait: Wait) -> String {
        get_lock(&statement(server, name, wait))
    }

    #[test]
    fn plain_ascii_names_travel_quoted_and_all_others_as_utf8_hex_literals() {
        assert_eq!(
            plain(Server::MariaDb, "jobs/nightly 7~", Wait::Never),
            "SELECT /* dlock:0000000000000abc */ GET_LOCK('jobs/nightly 7~', 0)"
        );
        assert!(
            plain(Server::MariaDb, "a'b", Wait::Never).ends_with("GET_LOCK(_utf8mb4 X'612762', 0)")
        );
        assert_eq!(
            release_lock("tab\there"),
            "SELECT RELEASE_LOCK(_utf8mb4 X'7461620968657265')"
        );
        assert_eq!(release_lock("é"), "SELECT RELEASE_LOCK(_utf8mb4 X'c3a9')");
        assert_eq!(
            held_by_session("\\"),
            "SELECT IS_USED_LOCK(_utf8mb4 X'5c') = CONNECTION_ID()"
        );
        assert_eq!(holder("x"), "SELECT IS_USED_LOCK('x')");
    }

    #[test]
    fn a_session_is_named_by_the_marker_it_keeps() {
        let tag: u64 = 0x0123_4567_89ab_cdef;
        assert_eq!(session_marker(tag), "dlock/session/0123456789abcdef");
        assert!(KNOWN_SESSION_COLUMNS.ends_with(SESSION_TAG));
        // A lock statement that marks its session takes the new marker only where the
        // session holds none, and names the session in its reply.
        let sql = get_lock(&LockStatement {
            names_session: true,
            ..statement(Server::MariaDb, "x", Wait::Never)
        });
        assert!(
            sql.ends_with(&format!("GET_LOCK('x', 0), {KNOWN_SESSION_COLUMNS}")),
            "{sql}"
        );
        // A lock that must prove its grant from the moment it lands takes a marker with it
        // where the session keeps none.
        let sql = get_lock(&LockStatement {
            names_session: true,
            takes_marker: Some(tag),
            ..statement(Server::MariaDb, "x", Wait::Never)
        });
        assert!(
            sql.ends_with(&format!(
                "CASE GET_LOCK('x', 0) WHEN 1 THEN 1 + IF(@dlock_session_tag IS NULL, \
                 GET_LOCK('dlock/session/0123456789abcdef', 0), 0) WHEN 0 THEN 0 END, \
                 {KNOWN_SESSION_COLUMNS}"
            )),
            "{sql}"
        );
        assert_eq!(
            session(tag),
            "SELECT CONNECTION_ID(), GET_LOCK('dlock/session/0123456789abcdef', 0)"
        );
        assert_eq!(
            mark_session(false, true, Some(tag)),
            format!("SET @dlock_session_tag = {tag}")
        );
        let plain = mark_session(true, false, None);
        assert_eq!(
            plain,
            format!("SET @dlock_deployment_checked = '{}'", process_mark())
        );
        assert_eq!(
            mark_session(true, true, Some(tag)),
            format!(
                "SET @dlock_deployment_checked = '{}m', @dlock_session_tag = {tag}",
                process_mark()
            )
        );
        // A lock that marks its session is gated by the mark that says it keeps a marker.
        let gated = get_lock(&LockStatement {
            names_session: true,
            checks: Checks::Mark,
            ..statement(Server::MariaDb, "x", Wait::Never)
        });
        assert!(
            gated.contains(&format!(
                "IF(@dlock_deployment_checked = '{}m', ",
                process_mark()
            )),
            "{gated}"
        );
        let tag_value = i64::try_from(tag).unwrap();
        assert_eq!(
            read_known_session(&[Some(7), Some(tag_value)]),
            Some(SessionId { id: 7, tag })
        );
        assert_eq!(read_known_session(&[Some(7), None]), None);
        // A lock statement's reply: the lock's answer, then the name; a grant that took the
        // new marker (2) is named by it.
        let known = [Some(7), Some(tag_value)];
        assert_eq!(
            read_named_session(Some(1), &known, Some(5)),
            Some(SessionId { id: 7, tag })
        );
        assert_eq!(read_named_session(Some(1), &[Some(7), None], None), None);
        assert_eq!(
            read_named_session(Some(2), &[Some(7), None], Some(5)),
            Some(SessionId { id: 7, tag: 5 })
        );
        assert_eq!(read_named_session(None, &[], None), None);
    }

    #[test]
    fn mariadb_waits_forever_with_a_year_and_fractions_in_microseconds() {
        let forever = plain(Server::MariaDb, "x", Wait::Forever);
        assert!(forever.ends_with("GET_LOCK('x', 31536000)"), "{forever}");
        let fraction = plain(Server::MariaDb, "x", Wait::For(Duration::from_millis(1500)));
        assert!(fraction.ends_with("GET_LOCK('x', 1.500000)"));
        // Nanoseconds round up to the next microsecond, so the wait is never shorter.
        let tiny = plain(Server::MariaDb, "x", Wait::For(Duration::from_nanos(1)));
        assert!(tiny.ends_with("GET_LOCK('x', 0.000001)"));
        let huge = plain(Server::MariaDb, "x", Wait::For(Duration::MAX));
        assert!(huge.ends_with("GET_LOCK('x', 31536000.000000)"));
    }

    #[test]
    fn mysql_waits_forever_with_a_negative_timeout_and_whole_seconds_rounded_up() {
        assert!(plain(Server::MySql, "x", Wait::Forever).ends_with("GET_LOCK('x', -1)"));
        let fraction = plain(Server::MySql, "x", Wait::For(Duration::from_millis(1500)));
        assert!(fraction.ends_with("GET_LOCK('x', 2)"));
        let whole = plain(Server::MySql, "x", Wait::For(Duration::from_secs(3)));
        assert!(whole.ends_with("GET_LOCK('x', 3)"));
        let huge = plain(Server::MySql, "x", Wait::For(Duration::MAX));
        assert!(huge.ends_with("GET_LOCK('x', 31536000)"));
        assert!(plain(Server::MySql, "x", Wait::Never).ends_with("GET_LOCK('x', 0)"));
    }

    #[test]
    fn a_client_deadline_counts_from_the_wait_the_server_was_asked_for() {
        let asked = Wait::For(Duration::from_millis(100));
        assert_eq!(
            server_wait(Server::MySql, asked),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            server_wait(Server::MariaDb, asked),
            Some(Duration::from_millis(100))
        );
        assert_eq!(server_wait(Server::MySql, Wait::Forever), None);
        assert_eq!(
            server_wait(Server::MariaDb, Wait::Never),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn the_galera_refusal_rides_in_the_mariadb_lock_statement_only() {
        let sql = get_lock(&LockStatement {
            checks: Checks::Full,
            ..statement(Server::MariaDb, "x", Wait::Never)
        });
        assert!(
            sql.ends_with(
                "IF(@@global.wsrep_on AND @@global.wsrep_provider NOT IN ('none', ''), -1, \
                 IF(@@global.read_only OR @@global.innodb_read_only, -2, GET_LOCK('x', 0))))"
            ),
            "{sql}"
        );
        // TiDB's refusal comes first, on both families.
        assert!(
            sql.contains("IF(VERSION() LIKE '%-TiDB-%', -3, IF(@@global.wsrep_on"),
            "{sql}"
        );
        assert_eq!(
            read_acquired(Some(REFUSED_ON_TIDB)).unwrap(),
            Acquired::RefusedOnTiDb
        );
        assert_eq!(
            read_acquired(Some(REFUSED_ON_GALERA)).unwrap(),
            Acquired::RefusedOnGalera
        );
        assert_eq!(
            read_acquired(Some(REFUSED_READ_ONLY)).unwrap(),
            Acquired::RefusedReadOnly
        );
        // MySQL's Group Replication check reads performance_schema: it is sent on its own,
        // and only the read-only check rides in the lock statement.
        let mysql = get_lock(&LockStatement {
            checks: Checks::Full,
            ..statement(Server::MySql, "x", Wait::Never)
        });
        assert!(
            mysql.ends_with(
                "*/ IF(VERSION() LIKE '%-TiDB-%', -3, \
                 IF(@@global.read_only OR @@global.innodb_read_only, -2, GET_LOCK('x', 0)))"
            ),
            "{mysql}"
        );
    }

    #[test]
    fn servers_that_hold_one_named_lock_per_session_are_told_by_their_version() {
        // MySQL 5.7.5 and MariaDB 10.0.2 are the first to hold several (their manuals).
        for (version, one) in [
            ((5, 7, 4), true),
            ((5, 6, 51), true),
            ((5, 5, 62), true), // MySQL 5.5, or MariaDB 5.5
            ((5, 7, 5), false),
            ((8, 0, 36), false),
            ((10, 0, 1), true),
            ((10, 0, 2), false),
            ((10, 11, 6), false),
            ((5, 5, 5), false), // the prefix of later MariaDB releases
        ] {
            assert_eq!(
                Server::one_named_lock_per_session(version),
                one,
                "{version:?}"
            );
        }
    }

    #[test]
    fn a_guarded_lock_turns_the_statement_time_limit_off_on_either_server() {
        let mariadb = get_lock(&LockStatement {
            guarded: true,
            ..statement(Server::MariaDb, "x", Wait::Forever)
        });
        assert!(
            mariadb.starts_with("SET STATEMENT max_statement_time = 0 FOR SELECT /* dlock:"),
            "{mariadb}"
        );
        let mysql = get_lock(&LockStatement {
            guarded: true,
            ..statement(Server::MySql, "x", Wait::Forever)
        });
        assert!(
            mysql.starts_with("SELECT /*+ SET_VAR(max_execution_time = 0) */ /* dlock:"),
            "{mysql}"
        );
    }

    #[test]
    fn an_interrupted_lock_is_asked_whether_it_holds_and_what_names_its_session() {
        // The release gives back the name only: the session keeps its marker.
        assert_eq!(release_lock("x"), "SELECT RELEASE_LOCK('x')");
        assert_eq!(
            interrupted(Server::MariaDb, "x", true),
            format!(
                "SELECT IS_USED_LOCK('x') <=> CONNECTION_ID(), @@max_statement_time > 0, \
                 {KNOWN_SESSION_COLUMNS}"
            )
        );
        assert!(interrupted(Server::MySql, "x", false).ends_with("@@max_execution_time > 0"));
    }

    #[test]
    fn a_kill_is_sent_only_with_a_proof_of_the_session() {
        let running = proves(42, &Proof::Running(TOKEN));
        assert!(running.contains("ID = 42 AND INFO LIKE '%dlock:0000000000000abc%'"));
        let holds = proves(42, &Proof::Holds("dlock/h".into()));
        assert_eq!(holds, "SELECT IS_USED_LOCK('dlock/h') = 42");
        assert_eq!(kill(42), "KILL CONNECTION 42");
    }

    #[test]
    fn get_lock_replies() {
        assert_eq!(read_acquired(Some(1)).unwrap(), Acquired::Granted);
        assert_eq!(read_acquired(Some(2)).unwrap(), Acquired::Granted);
        assert_eq!(read_acquired(Some(0)).unwrap(), Acquired::TimedOut);
        assert_eq!(read_acquired(None).unwrap(), Acquired::Interrupted);
        assert!(matches!(read_acquired(Some(7)), Err(Error::Backend(_))));
    }

    #[test]
    fn a_shared_batch_is_one_statement_answered_in_order() {
        let ops = [
            (SharedOp::TryLock, "a"),
            (SharedOp::Unlock, "b"),
            (SharedOp::UnlockIfHeld, "it's"),
        ];
        assert_eq!(
            shared_batch(&ops),
            "SELECT GET_LOCK('a', 0), RELEASE_LOCK('b'), \
             IF(IS_USED_LOCK(_utf8mb4 X'69742773') = CONNECTION_ID(), \
             RELEASE_LOCK(_utf8mb4 X'69742773'), 0)"
        );
        assert_eq!(
            read_shared_batch(&[Some(1), None, Some(0)], &ops).unwrap(),
            [true, false, false]
        );
        assert!(
            read_shared_batch(&[None, Some(1), Some(1)], &ops).is_err(),
            "a try answers"
        );
        assert!(
            read_shared_batch(&[Some(1)], &ops).is_err(),
            "one column each"
        );
        assert!(read_shared_batch(&[Some(1), Some(2), Some(1)], &ops).is_err());
    }

    #[test]
    fn release_lock_replies() {
        assert!(read_released(Some(1)).is_ok());
        assert!(matches!(read_released(Some(0)), Err(Error::NotHeld)));
        assert!(matches!(read_released(None), Err(Error::NotHeld)));
        assert!(matches!(read_released(Some(2)), Err(Error::Backend(_))));
    }

    #[test]
    fn is_used_lock_replies() {
        assert!(read_held(Some(1)).unwrap());
        assert!(!read_held(Some(0)).unwrap());
        assert!(!read_held(None).unwrap());
        assert_eq!(read_holder(Some(42)).unwrap(), Some(42));
        assert_eq!(read_holder(None).unwrap(), None);
        assert!(read_holder(Some(-1)).is_err());
    }

    #[test]
    fn server_error_codes() {
        let source = || -> BoxError { "server said so".into() };
        let failed = |code| server_failure(code, source());
        assert!(matches!(failed(1213).error, Error::Deadlock { .. }));
        // MySQL's own code for a user-lock deadlock, which MariaDB does not send.
        assert!(matches!(failed(3058).error, Error::Deadlock { .. }));
        let Error::InvalidKey { reason } = failed(1059).error else {
            panic!("1059 is an invalid key");
        };
        assert!(reason.contains("HashedMySqlName"), "{reason}");
        for code in [1317, 1969, 3024] {
            let failed = failed(code);
            assert_eq!(failed.failure, Failure::Interrupted, "{code}");
            assert!(matches!(failed.error, Error::Canceled { .. }));
        }
        for code in [1927, 1053, 4031, 2006, 2013] {
            let failed = failed(code);
            assert_eq!(failed.failure, Failure::ConnectionLost);
            assert!(failed.error.is_connection_error(), "{code}");
        }
        assert!(matches!(failed(1064).error, Error::Backend(_)));
    }

    #[test]
    fn every_lock_is_listed_where_the_server_keeps_the_list_or_refused() {
        let mariadb = every_holder_session(&[Some(1), Some(0), Some(1)]).unwrap();
        assert!(mariadb.contains("METADATA_LOCK_INFO"), "{mariadb}");
        let mysql = every_holder_session(&[Some(0), Some(1), Some(0)]).unwrap();
        assert!(
            mysql.contains("performance_schema.metadata_locks"),
            "{mysql}"
        );
        assert!(mysql.contains("LOCK_STATUS = 'GRANTED'"), "{mysql}");
        // A list that would miss holders is refused, saying what to do: MariaDB's own
        // performance schema does not count (its lock instrument is off by default).
        for lists in [[Some(1), Some(1), Some(0)], [Some(0), Some(0), Some(0)]] {
            let error = every_holder_session(&lists).unwrap_err();
            assert!(matches!(error, Error::Unsupported { .. }), "{error:?}");
            assert!(error.to_string().contains("name the key"), "{error}");
        }
        assert!(every_holder_session(&[None]).is_err());
    }

    #[test]
    fn unsupported_modes_point_to_postgresql() {
        for error in [shared_unsupported(), transaction_unsupported()] {
            assert!(error.to_string().contains("PostgreSQL"), "{error}");
        }
    }

    #[test]
    fn a_watcher_counts_a_lock_held_only_when_one_session_holds_its_name_and_its_marker() {
        let session = |id, tag| SessionId { id, tag };
        let locks = [
            (session(7, 0xa), "jobs".to_owned()),
            (session(8, 0xb), "it's".to_owned()),
            (session(9, 0xc), "gone".to_owned()),
            (session(5, 0xd), "reused".to_owned()),
        ];
        let statement = still_held(&locks);
        assert!(statement.starts_with("SELECT IS_USED_LOCK('jobs'), IS_USED_LOCK("));
        assert!(statement.contains("'dlock/session/000000000000000a'"));
        // A quote is sent as hex, never spliced.
        assert!(statement.contains("_utf8mb4 X'69742773'"));
        // Held; held; nobody holds "gone"; after a restart, id 5 holds "reused" again but
        // not the marker of the earlier session 5.
        let row = [
            Some(7),
            Some(7),
            Some(8),
            Some(8),
            None,
            Some(9),
            Some(5),
            None,
        ];
        assert_eq!(read_still_held(&row, &locks), [true, true, false, false]);
        assert!(session_marker(1) != session_marker(2));
        assert!(super::session(3).contains("GET_LOCK('dlock/session/0000000000000003', 0)"));
        assert_eq!(
            read_session(&[Some(42), Some(1)], 3).unwrap(),
            session(42, 3)
        );
        assert!(read_session(&[Some(42), Some(0)], 3).is_err());
    }
}
