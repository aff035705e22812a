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

use crate::sql::{self, Row};

/// The first statement, on the connection checked: is it a standby, and which session.
const FIRST: &str = "SELECT pg_is_in_recovery(), pg_backend_pid()";

/// Each later statement: which session runs it.
const SESSION: &str = "SELECT pg_backend_pid()";

/// How many times the two connections alternate. Through a transaction pooler the first
/// round already shares a session unless another client took it in between; each round
/// after that is another chance, and a busy pool moves statements often.
const ROUNDS: usize = 3;

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
    Send(On, &'static str),
    /// The check is over: `Ok` when a session lock excludes here.
    Done(Result<(), Error>),
}

/// One connection's deployment check, with or without a second connection.
#[derive(Debug)]
pub(crate) struct Check {
    with_second: bool,
    /// The session of the checked connection's first statement.
    first: Option<String>,
    /// The session of the second connection's first statement.
    second: Option<String>,
    /// Statements sent so far, the first included.
    sent: usize,
    waiting_on: On,
}

impl Check {
    pub(crate) fn new(with_second: bool) -> Check {
        Check {
            with_second,
            first: None,
            second: None,
            sent: 0,
            waiting_on: On::Checked,
        }
    }

    /// Feeds the reply of the last statement sent (none at the start) and says what next.
    pub(crate) fn step(&mut self, reply: Option<Result<Row, Error>>) -> CheckStep {
        let Some(reply) = reply else {
            return self.send(On::Checked, FIRST);
        };
        let row = match reply {
            Ok(row) => row,
            Err(error) => return CheckStep::Done(Err(error)),
        };
        let session = match self.waiting_on {
            On::Checked if self.first.is_none() => {
                match sql::read_bool(&row, 0) {
                    Ok(true) => return refused(Deployment::HotStandby),
                    Ok(false) => {}
                    Err(error) => return CheckStep::Done(Err(error)),
                }
                let session = column(&row, 1);
                self.first = Some(session);
                return self.next();
            }
            _ => column(&row, 0),
        };
        let moved = match self.waiting_on {
            On::Checked => self.first.as_ref() != Some(&session),
            On::Second => {
                // Two client connections that share a server session: never so directly or
                // through session pooling.
                if self.first.as_ref() == Some(&session) {
                    return refused(Deployment::TransactionPooler);
                }
                let moved = self
                    .second
                    .as_ref()
                    .is_some_and(|second| *second != session);
                self.second.get_or_insert(session);
                moved
            }
        };
        if moved {
            // A connection whose statements run on another session than before.
            return refused(Deployment::TransactionPooler);
        }
        self.next()
    }

    fn next(&mut self) -> CheckStep {
        if !self.with_second {
            // One connection: its first two statements, which catch a pooler only when the
            // second one moves.
            return match self.sent {
                1 => self.send(On::Checked, SESSION),
                _ => CheckStep::Done(Ok(())),
            };
        }
        if self.sent > 2 * ROUNDS {
            return CheckStep::Done(Ok(()));
        }
        // Alternates, the second connection first: it gets the session the checked one just
        // left, if the pooler shares sessions.
        match self.waiting_on {
            On::Checked => self.send(On::Second, SESSION),
            On::Second => self.send(On::Checked, SESSION),
        }
    }

    fn send(&mut self, on: On, statement: &'static str) -> CheckStep {
        self.sent += 1;
        self.waiting_on = on;
        CheckStep::Send(on, statement)
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
    use super::*;

    fn row(columns: &[&str]) -> Option<Result<Row, Error>> {
        Some(Ok(Some(
            columns.iter().map(|c| Some((*c).to_owned())).collect(),
        )))
    }

    /// Runs a check against scripted sessions: each connection's statements land on the
    /// sessions given, in order. Returns the outcome and the statements sent.
    fn run(
        with_second: bool,
        recovery: &str,
        checked: &[&str],
        second: &[&str],
    ) -> (Result<(), Error>, Vec<On>) {
        let mut check = Check::new(with_second);
        let (mut checked, mut second) = (checked.iter(), second.iter());
        let mut sent = Vec::new();
        let mut reply = None;
        loop {
            match check.step(reply.take()) {
                CheckStep::Done(outcome) => return (outcome, sent),
                CheckStep::Send(on, statement) => {
                    sent.push(on);
                    reply = match (on, statement) {
                        (On::Checked, FIRST) => row(&[recovery, checked.next().unwrap()]),
                        (On::Checked, _) => row(&[checked.next().unwrap()]),
                        (On::Second, _) => row(&[second.next().unwrap()]),
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
        let (outcome, sent) = run(true, "t", &["7"], &[]);
        assert_eq!(refused_as(&outcome), Some(Deployment::HotStandby));
        assert_eq!(sent, [On::Checked]);
    }

    #[test]
    fn sessions_of_their_own_pass_after_every_round() {
        let (outcome, sent) = run(true, "f", &["7"; 4], &["9"; 3]);
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(sent.len(), 1 + 2 * ROUNDS);
    }

    #[test]
    fn a_second_connection_on_the_first_ones_session_is_a_pooler() {
        let (outcome, sent) = run(true, "f", &["7"], &["7"]);
        assert_eq!(refused_as(&outcome), Some(Deployment::TransactionPooler));
        assert_eq!(sent, [On::Checked, On::Second]);
    }

    #[test]
    fn a_connection_whose_session_changes_is_a_pooler() {
        let (outcome, _) = run(true, "f", &["7", "8"], &["9"]);
        assert_eq!(refused_as(&outcome), Some(Deployment::TransactionPooler));
        let (outcome, _) = run(true, "f", &["7", "7"], &["9", "10"]);
        assert_eq!(refused_as(&outcome), Some(Deployment::TransactionPooler));
    }

    #[test]
    fn one_connection_asks_twice_and_sees_only_a_move() {
        let (outcome, sent) = run(false, "f", &["7", "7"], &[]);
        assert!(outcome.is_ok());
        assert_eq!(sent, [On::Checked, On::Checked]);
        let (outcome, _) = run(false, "f", &["7", "8"], &[]);
        assert_eq!(refused_as(&outcome), Some(Deployment::TransactionPooler));
    }

    #[test]
    fn an_error_ends_the_check_with_it() {
        let mut check = Check::new(true);
        assert!(matches!(
            check.step(None),
            CheckStep::Send(On::Checked, FIRST)
        ));
        let step = check.step(Some(Err(Error::NotHeld)));
        assert!(matches!(step, CheckStep::Done(Err(Error::NotHeld))));
    }
}
