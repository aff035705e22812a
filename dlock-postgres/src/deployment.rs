//! The deployment check: whether a connection leads where a session lock excludes nobody (a
//! hot standby, or a pooler in transaction or statement mode). It decides here, with no I/O;
//! the flavours send its statements.
//!
//! A standby says so itself (`pg_is_in_recovery()`). A transaction pooler does not: through
//! it, each statement may run on another server session, and a session may serve other
//! clients between our statements. One connection alone sees that only when its statements
//! happen to move, which an idle pool never makes them do: two statements in a row land on
//! the same idle server session. Two connections from the same source see it at once,
//! because the pooler hands the second connection's statement the server session the first
//! one just left, while session pooling and direct connections never let two client
//! connections share a session.

use dlock_core::{Deployment, Error};

use crate::sql::{self, Gate, Row};

/// The setting that marks a server session with a checking connection's token.
const MARK: &str = "dlock.deployment_probe";

/// True on a Citus worker node: Citus keeps the node's group in `pg_dist_local_group`, 0 on
/// the coordinator. The table is read through `query_to_xml` only where it exists, so that
/// the statement still plans on a server without Citus.
const CITUS_WORKER: &str = "CASE WHEN to_regclass('pg_catalog.pg_dist_local_group') IS NULL \
     THEN false ELSE query_to_xml('SELECT groupid AS g FROM pg_catalog.pg_dist_local_group', \
     false, true, '')::text NOT LIKE '%<g>0</g>%' END";

/// YugabyteDB's setting that turns "advisory locks are not supported" into a silent no-op.
const YB_SILENCE: &str = "yb_silence_advisory_locks_not_supported_error";

/// The engine a `version()` text names, when its advisory locks exclude nobody: CockroachDB
/// (its `pg_try_advisory_lock` is a stub that grants every caller, cockroach #13546), and
/// YugabyteDB before 2.25 (no advisory locks) or with their "not supported" error silenced
/// (`yb_silence`, the setting's value). `version()` carries `CockroachDB` and `-YB-<version>`
/// there, as their manuals show.
fn engine_without_locks(version: &str, yb_silence: &str) -> Option<Deployment> {
    if version.contains("CockroachDB") {
        return Some(Deployment::CockroachDb);
    }
    let yugabyte = version.split_once("-YB-")?.1;
    let mut numbers = yugabyte
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let release = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (release < (2, 25) || yb_silence == "on").then_some(Deployment::YugabyteDbWithoutLocks)
}

/// How many times the two connections alternate. Through a transaction pooler the first
/// round already shares a session unless another client took it in between; each round
/// after that is another chance, and a busy pool moves statements often.
const ROUNDS: usize = 4;

/// What the client knows of the route to the server before the check sends anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Nothing: the check infers from the statements' sessions (the blocking client hides
    /// its cancel key; a client whose TLS mode the key's reader cannot follow).
    Unknown,
    /// The process id in the connection's cancel key (BackendKeyData). A server hands out
    /// its own backend's pid there; a pooler (pgbouncer in any mode) hands out keys of its
    /// own. The same pid as `pg_backend_pid()` proves a direct connection.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    CancelKey(i32),
    /// The user vouches for a pooler in session mode, which proof cannot tell from a
    /// transaction pooler: the check infers as it does without a key.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    TrustedSessionPooler,
}

impl Route {
    /// The kind of this route's own check, which is also the only kind its lock statements
    /// accept: a proof by the cancel key, or an inference where the key is unknown or a
    /// session pooler is vouched for.
    pub(crate) fn gate(self) -> Gate {
        match self {
            Route::CancelKey(_) => Gate::Proven,
            Route::Unknown | Route::TrustedSessionPooler => Gate::Checked,
        }
    }
}

/// Which connection a statement goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum On {
    /// The connection checked.
    Checked,
    /// The second connection, from the same source.
    Second,
}

/// What the check wants next.
#[derive(Debug)]
pub(crate) enum CheckStep {
    /// Run this simple query on that connection, and hand its reply to the next `step`.
    Send(On, String),
    /// The check is over: `Ok` when a session lock excludes here.
    Done(Result<(), Error>),
}

/// What a check knows of one of its connections.
#[derive(Debug)]
struct Probe {
    /// The mark its first statement leaves on its session.
    token: String,
    /// The session of its first statement, once answered.
    session: Option<String>,
}

impl Probe {
    fn new() -> Probe {
        Probe {
            token: dlock_core::attempt_token().to_string(),
            session: None,
        }
    }

    /// The next statement for this connection: the first marks its session, each later one
    /// asks for the session and its mark.
    fn statement(&self) -> String {
        match self.session {
            None => format!(
                "SELECT pg_is_in_recovery(), pg_backend_pid(), set_config('{MARK}', '{}', false), \
                 version(), current_setting('{YB_SILENCE}', true), {CITUS_WORKER}",
                self.token
            ),
            Some(_) => format!("SELECT pg_backend_pid(), current_setting('{MARK}', true)"),
        }
    }
}

/// One connection's deployment check, with or without a second connection.
///
/// Each connection marks the server session of its first statement with a token of its own,
/// and each later statement must find the same session carrying the same mark: directly or
/// through session pooling, nobody else ever runs on a connection's session. Through a
/// transaction pooler, a statement that lands elsewhere, or on a session another checking
/// client marked in between, shows it; and the second connection, which runs right after the
/// first one left its session, lands on that very session unless somebody took it first.
#[derive(Debug)]
pub(crate) struct Check {
    route: Route,
    checked: Probe,
    second: Option<Probe>,
    /// Statements sent so far.
    sent: usize,
    waiting_on: On,
}

impl Check {
    pub(crate) fn new(with_second: bool, route: Route) -> Check {
        Check {
            route,
            checked: Probe::new(),
            second: with_second.then(Probe::new),
            sent: 0,
            waiting_on: On::Checked,
        }
    }

    /// Feeds the reply of the last statement sent (none at the start) and says what next.
    pub(crate) fn step(&mut self, reply: Option<Result<Row, Error>>) -> CheckStep {
        let Some(reply) = reply else {
            return self.send(On::Checked);
        };
        let row = match reply {
            Ok(row) => row,
            Err(error) => return CheckStep::Done(Err(error)),
        };
        let on = self.waiting_on;
        let (probe, other) = match on {
            On::Checked => (&mut self.checked, self.second.as_ref()),
            On::Second => (
                self.second
                    .as_mut()
                    .expect("only a check with a second connection uses it"),
                Some(&self.checked),
            ),
        };
        let session = match &probe.session {
            None => {
                match sql::read_bool(&row, 0) {
                    Ok(true) => return refused(Deployment::HotStandby),
                    Ok(false) => {}
                    Err(error) => return CheckStep::Done(Err(error)),
                }
                if let Some(engine) = engine_without_locks(&column(&row, 3), &column(&row, 4)) {
                    return refused(engine);
                }
                if column(&row, 5) == "t" {
                    return refused(Deployment::CitusWorker);
                }
                let session = column(&row, 1);
                probe.session = Some(session.clone());
                if on == On::Checked {
                    if let Route::CancelKey(pid) = self.route {
                        // Proof either way: the server's own key, or a pooler's.
                        return if session == pid.to_string() {
                            CheckStep::Done(Ok(()))
                        } else {
                            refused(Deployment::UnprovenPooler)
                        };
                    }
                }
                session
            }
            Some(first) => {
                let session = column(&row, 0);
                // Its session changed, or another client used it in between and marked it.
                if *first != session || column(&row, 1) != probe.token {
                    return refused(Deployment::TransactionPooler);
                }
                session
            }
        };
        // Two client connections that share a server session: never so directly or through
        // session pooling.
        if other.is_some_and(|other| other.session.as_ref() == Some(&session)) {
            return refused(Deployment::TransactionPooler);
        }
        self.next()
    }

    /// The checked connection's server session, once its first statement was answered.
    pub(crate) fn session(&self) -> Option<String> {
        self.checked.session.clone()
    }

    fn next(&mut self) -> CheckStep {
        if self.second.is_none() {
            // One connection: its first two statements, which catch a pooler only when the
            // second one moves.
            return match self.sent {
                1 => self.send(On::Checked),
                _ => CheckStep::Done(Ok(())),
            };
        }
        if self.sent >= 2 * ROUNDS {
            return CheckStep::Done(Ok(()));
        }
        // Alternates, the second connection first: it gets the session the checked one just
        // left, if the pooler shares sessions.
        match self.waiting_on {
            On::Checked => self.send(On::Second),
            On::Second => self.send(On::Checked),
        }
    }

    fn send(&mut self, on: On) -> CheckStep {
        self.sent += 1;
        self.waiting_on = on;
        let probe = match on {
            On::Checked => &self.checked,
            On::Second => self
                .second
                .as_ref()
                .expect("only a check with a second connection uses it"),
        };
        CheckStep::Send(on, probe.statement())
    }
}

fn refused(deployment: Deployment) -> CheckStep {
    CheckStep::Done(Err(Error::CannotExclude { deployment }))
}

/// Column `index` of a reply as text, or an empty text.
fn column(row: &Row, index: usize) -> String {
    row.as_ref()
        .and_then(|row| row.get(index).cloned().flatten())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn engines_whose_advisory_locks_exclude_nobody_are_told_by_their_version() {
        use super::engine_without_locks;
        // The version() texts their manuals and issue trackers show.
        let cockroach = "CockroachDB CCL v23.1.11 (x86_64-pc-linux-gnu, built 2023/09/27)";
        assert_eq!(
            engine_without_locks(cockroach, ""),
            Some(Deployment::CockroachDb)
        );
        let old_yb = "PostgreSQL 11.2-YB-2.20.1.0-b0 on x86_64-pc-linux-gnu, compiled by clang";
        assert_eq!(
            engine_without_locks(old_yb, ""),
            Some(Deployment::YugabyteDbWithoutLocks)
        );
        let new_yb = "PostgreSQL 15.2-YB-2.25.0.0-b0 on x86_64-pc-linux-gnu, compiled by clang";
        assert_eq!(engine_without_locks(new_yb, "off"), None);
        assert_eq!(
            engine_without_locks(new_yb, "on"),
            Some(Deployment::YugabyteDbWithoutLocks)
        );
        let postgres = "PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64-pc-linux-gnu";
        assert_eq!(engine_without_locks(postgres, ""), None);
    }

    use std::collections::HashMap;

    use super::*;

    fn row(columns: &[&str]) -> Option<Result<Row, Error>> {
        Some(Ok(Some(
            columns.iter().map(|c| Some((*c).to_owned())).collect(),
        )))
    }

    /// Runs a check against scripted server sessions: each connection's statements land on
    /// the sessions given, in order, and a session keeps the mark last set on it. `other`
    /// marks sessions as another client's check would. Returns the outcome and where each
    /// statement went.
    fn run(
        with_second: bool,
        recovery: &str,
        checked: &[&str],
        second: &[&str],
        other: &[&str],
    ) -> (Result<(), Error>, Vec<On>) {
        let mut check = Check::new(with_second, Route::Unknown);
        let mut marks: HashMap<&str, String> = other
            .iter()
            .map(|s| (*s, "someone else".to_owned()))
            .collect();
        let (mut checked, mut second) = (checked.iter(), second.iter());
        let mut sent = Vec::new();
        let mut reply = None;
        loop {
            match check.step(reply.take()) {
                CheckStep::Done(outcome) => return (outcome, sent),
                CheckStep::Send(on, statement) => {
                    sent.push(on);
                    let session = match on {
                        On::Checked => checked.next().unwrap(),
                        On::Second => second.next().unwrap(),
                    };
                    reply = if statement.contains("set_config") {
                        let token = statement.split('\'').nth(3).unwrap().to_owned();
                        marks.insert(session, token);
                        row(&[recovery, session, ""])
                    } else {
                        let mark = marks.get(session).cloned().unwrap_or_default();
                        row(&[session, &mark])
                    };
                }
            }
        }
    }

    fn refused_as(outcome: &Result<(), Error>) -> Option<Deployment> {
        match outcome {
            Err(Error::CannotExclude { deployment }) => Some(*deployment),
            _ => None,
        }
    }

    #[test]
    fn a_standby_is_refused_on_the_first_statement() {
        let (outcome, sent) = run(true, "t", &["7"], &[], &[]);
        assert_eq!(refused_as(&outcome), Some(Deployment::HotStandby));
        assert_eq!(sent, [On::Checked]);
    }

    #[test]
    fn a_citus_worker_is_refused_on_the_first_statement_and_its_coordinator_is_not() {
        // Citus's pg_dist_local_group names the node's group: 0 on the coordinator.
        let first = |citus_worker: &str| {
            let mut check = Check::new(false, Route::CancelKey(7));
            assert!(matches!(check.step(None), CheckStep::Send(On::Checked, _)));
            check.step(row(&["f", "7", "", "PostgreSQL 16.4", "", citus_worker]))
        };
        assert!(matches!(
            first("t"),
            CheckStep::Done(Err(Error::CannotExclude {
                deployment: Deployment::CitusWorker
            }))
        ));
        assert!(matches!(first("f"), CheckStep::Done(Ok(()))));
    }

    #[test]
    fn sessions_of_their_own_pass_after_every_round() {
        let (outcome, sent) = run(true, "f", &["7"; 9], &["9"; 8], &[]);
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(sent.len(), 2 * ROUNDS);
    }

    #[test]
    fn a_second_connection_on_the_first_ones_session_is_a_pooler() {
        let (outcome, sent) = run(true, "f", &["7"], &["7"], &[]);
        assert_eq!(refused_as(&outcome), Some(Deployment::TransactionPooler));
        assert_eq!(sent, [On::Checked, On::Second]);
    }

    #[test]
    fn a_connection_whose_session_changes_is_a_pooler() {
        let (outcome, _) = run(true, "f", &["7", "8"], &["9"], &[]);
        assert_eq!(refused_as(&outcome), Some(Deployment::TransactionPooler));
        let (outcome, _) = run(true, "f", &["7", "7"], &["9", "10"], &[]);
        assert_eq!(refused_as(&outcome), Some(Deployment::TransactionPooler));
    }

    #[test]
    fn marks_left_by_earlier_clients_are_overwritten() {
        // A session pooler without a reset query keeps an old client's mark: not a refusal.
        let (outcome, _) = run(true, "f", &["7"; 9], &["9"; 8], &["7", "9"]);
        assert!(outcome.is_ok(), "{outcome:?}");
    }

    #[test]
    fn two_checks_whose_connections_swap_sessions_see_each_others_marks() {
        // The second connection lands on a session another check's first connection marked,
        // and the other way round: every session id stays the same, the marks do not.
        let mut check = Check::new(true, Route::Unknown);
        let CheckStep::Send(_, first) = check.step(None) else {
            panic!("a statement first");
        };
        let token = first.split('\'').nth(3).unwrap().to_owned();
        check.step(row(&["f", "7", ""]));
        // The other check's second connection marked session 7 meanwhile.
        check.step(row(&["f", "9", ""]));
        let step = check.step(row(&["7", "the other check's token"]));
        assert!(
            matches!(step, CheckStep::Done(Err(Error::CannotExclude { .. }))),
            "{step:?} (our token {token})"
        );
    }

    #[test]
    fn one_connection_asks_twice_and_sees_only_a_move() {
        let (outcome, sent) = run(false, "f", &["7", "7"], &[], &[]);
        assert!(outcome.is_ok());
        assert_eq!(sent, [On::Checked, On::Checked]);
        let (outcome, _) = run(false, "f", &["7", "8"], &[], &[]);
        assert_eq!(refused_as(&outcome), Some(Deployment::TransactionPooler));
    }

    #[test]
    fn an_error_ends_the_check_with_it() {
        let mut check = Check::new(true, Route::Unknown);
        assert!(matches!(check.step(None), CheckStep::Send(On::Checked, _)));
        let step = check.step(Some(Err(Error::NotHeld)));
        assert!(matches!(step, CheckStep::Done(Err(Error::NotHeld))));
    }
}
