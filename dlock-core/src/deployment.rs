//! Deployments where a database lock cannot exclude, which dlock refuses by default.

use std::fmt;

/// A deployment where a lock would "succeed" yet exclude nobody, found by a backend's
/// deployment check and reported as [`Error::CannotExclude`](crate::Error::CannotExclude).
///
/// The backends check each connection once, before its first lock (pools: when they open
/// it), never on the acquire path. Each lock and pool builder has `skip_deployment_check()`
/// for users who know better; the risk is theirs: two holders at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Deployment {
    /// PostgreSQL reached through a pooler (pgbouncer, for example) in transaction or
    /// statement pooling mode: each statement may run on a server session shared with other
    /// clients, so a session lock is taken on one session, seen as held by every client of
    /// that session, and released (or not) on another.
    TransactionPooler,
    /// A PostgreSQL hot standby (`pg_is_in_recovery()`): advisory locks there are local to
    /// the standby and exclude nobody on the primary or on other standbys.
    HotStandby,
    /// A MariaDB Galera cluster node (`wsrep_on`): `GET_LOCK` is local to the node.
    Galera,
    /// A MySQL Group Replication member: `GET_LOCK` is local to the member.
    GroupReplication,
}

impl Deployment {
    /// What was found, as a phrase.
    pub fn found(self) -> &'static str {
        match self {
            Deployment::TransactionPooler => {
                "the connection goes through a pooler in transaction or statement pooling mode \
                 (pgbouncer, for example), where statements move between server sessions that \
                 other clients share"
            }
            Deployment::HotStandby => {
                "the server is a hot standby (pg_is_in_recovery() is true), where advisory \
                 locks are local to the standby"
            }
            Deployment::Galera => {
                "the server is a Galera cluster node (wsrep_on is ON), where GET_LOCK is local \
                 to the node"
            }
            Deployment::GroupReplication => {
                "the server is a Group Replication member, where GET_LOCK is local to the \
                 member"
            }
        }
    }

    /// What to do about it, as a phrase.
    pub fn advice(self) -> &'static str {
        match self {
            Deployment::TransactionPooler => {
                "connect to PostgreSQL directly or through session pooling, or take a \
                 transaction lock (PgXactLock) inside a transaction"
            }
            Deployment::HotStandby => "point the connection at the primary",
            Deployment::Galera | Deployment::GroupReplication => {
                "take locks on a server that is not a cluster node, or on PostgreSQL"
            }
        }
    }
}

impl fmt::Display for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.found())
    }
}
