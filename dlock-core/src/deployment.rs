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
    /// PostgreSQL reached through a pooler (the server session's pid is not the one in the
    /// connection's cancel key, which a pooler hands out itself) that nobody vouched for: a
    /// pooler in session mode keeps a lock's session, one in transaction or statement mode
    /// does not, and nothing a client sees proves which.
    UnprovenPooler,
    /// A PostgreSQL hot standby (`pg_is_in_recovery()`): advisory locks there are local to
    /// the standby and exclude nobody on the primary or on other standbys.
    HotStandby,
    /// A MariaDB Galera cluster node (`wsrep_on`): `GET_LOCK` is local to the node.
    Galera,
    /// A MySQL Group Replication member: `GET_LOCK` is local to the member.
    GroupReplication,
    /// A MySQL or MariaDB server that is read-only (`read_only` or `innodb_read_only`), as a
    /// replica is: `GET_LOCK` there is local to it and excludes nobody on the primary.
    ReadOnlyReplica,
    /// MySQL before 5.7.5 or MariaDB before 10.0.2: a session holds one named lock at a time,
    /// and taking a second releases the first without a word.
    OneNamedLockPerSession,
    /// CockroachDB (`version()` says so): its `pg_try_advisory_lock` answers true to every
    /// caller and locks nothing (cockroach #13546).
    CockroachDb,
    /// YugabyteDB before 2.25, or with the "advisory locks not supported" error silenced
    /// (`yb_silence_advisory_locks_not_supported_error`), where the lock functions do nothing.
    YugabyteDbWithoutLocks,
    /// A Citus worker node (its `pg_dist_local_group` names a group other than the
    /// coordinator's, 0): advisory locks there are local to the worker.
    CitusWorker,
    /// TiDB (`VERSION()` carries `-TiDB-`): before 6.1, or with `tidb_enable_noop_functions`
    /// on, `GET_LOCK` is a no-op that answers 1; from 6.1 it clamps every wait to 1-3600 s, so
    /// a try can wait a second and a longer wait ends early, which dlock does not adapt to.
    TiDb,
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
            Deployment::UnprovenPooler => {
                "the connection goes through a pooler (the server session is not the one its \
                 cancel key names), and nothing proves that it keeps one server session per \
                 client"
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
            Deployment::ReadOnlyReplica => {
                "the server is read-only (read_only or innodb_read_only is ON), as a replica \
                 is, where GET_LOCK is local to it"
            }
            Deployment::OneNamedLockPerSession => {
                "the server is MySQL before 5.7.5 or MariaDB before 10.0.2, where taking a \
                 second named lock releases the first"
            }
            Deployment::CockroachDb => {
                "the server is CockroachDB, whose advisory lock functions grant every caller \
                 and lock nothing"
            }
            Deployment::YugabyteDbWithoutLocks => {
                "the server is YugabyteDB before 2.25 or with \
                 yb_silence_advisory_locks_not_supported_error on, where advisory lock \
                 functions do nothing"
            }
            Deployment::CitusWorker => {
                "the server is a Citus worker node (pg_dist_local_group is not the \
                 coordinator's group 0), where advisory locks are local to the worker"
            }
            Deployment::TiDb => {
                "the server is TiDB, whose GET_LOCK is a no-op before 6.1 or with \
                 tidb_enable_noop_functions on, and clamps every wait to 1-3600 s from 6.1 on"
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
            Deployment::UnprovenPooler => {
                "connect to PostgreSQL directly; or, for a pooler in session mode, say so with \
                 trust_session_pooler() on the lock or pool"
            }
            Deployment::HotStandby => "point the connection at the primary",
            Deployment::Galera | Deployment::GroupReplication => {
                "take locks on a server that is not a cluster node, or on PostgreSQL"
            }
            Deployment::ReadOnlyReplica => "point the connection at the primary",
            Deployment::OneNamedLockPerSession => "upgrade the server, or take locks on PostgreSQL",
            Deployment::CockroachDb => "take locks on a database whose locks exclude",
            Deployment::YugabyteDbWithoutLocks => {
                "use YugabyteDB 2.25 or later with advisory locks enabled \
                 (ysql_yb_enable_advisory_locks) and the error not silenced"
            }
            Deployment::CitusWorker => "take locks on the Citus coordinator",
            Deployment::TiDb => {
                "take locks on MySQL, MariaDB or PostgreSQL; on TiDB 6.1 or later with \
                 tidb_enable_noop_functions off, skip_deployment_check() accepts its waits \
                 (a try may wait up to 1 s, and waits end after 3600 s)"
            }
        }
    }
}

impl fmt::Display for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.found())
    }
}
