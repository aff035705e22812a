//! Where the deployments of the `db:deployments` row are: pgbouncer in each pooling mode, two
//! PostgreSQL standbys and a MariaDB Galera node, all started by `cargo xtask test-matrix`.

/// The URL in `variable`.
///
/// # Panics
///
/// When it is not set: these tests check real poolers, standbys and cluster nodes, and a test
/// that passes without them would check nothing. The message says how to get them.
pub fn url(variable: &str) -> String {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{variable} is not set: these tests need the pgbouncer, standby and Galera servers \
             that `cargo xtask test-matrix --only db:deployments` starts"
        ),
    }
}

/// pgbouncer in transaction pooling mode, in front of the row's PostgreSQL.
pub fn transaction_pooler() -> String {
    url("DLOCK_PGBOUNCER_TRANSACTION_URL")
}

/// pgbouncer in statement pooling mode.
pub fn statement_pooler() -> String {
    url("DLOCK_PGBOUNCER_STATEMENT_URL")
}

/// pgbouncer in transaction pooling mode that takes its server connections in turn
/// (`server_round_robin = 1`), with at least four of them open.
pub fn round_robin_pooler() -> String {
    url("DLOCK_PGBOUNCER_ROUND_ROBIN_URL")
}

/// Two pgbouncer processes in transaction pooling mode on one port (`so_reuseport = 1`):
/// the kernel hands each connection to one of them, and each has server sessions of its own.
pub fn reuseport_pooler() -> String {
    url("DLOCK_PGBOUNCER_REUSEPORT_URL")
}

/// pgbouncer in session pooling mode, where locks exclude.
pub fn session_pooler() -> String {
    url("DLOCK_PGBOUNCER_SESSION_URL")
}

/// A hot standby of the row's PostgreSQL, which no test promotes.
pub fn standby() -> String {
    url("DLOCK_PG_STANDBY_URL")
}

/// A second hot standby, which one test promotes.
pub fn promotable_standby() -> String {
    url("DLOCK_PG_PROMOTABLE_URL")
}

/// A MariaDB server that is the one node of a Galera cluster.
pub fn galera() -> String {
    url("DLOCK_GALERA_URL")
}

/// A stand-in for TiDB: a MariaDB server whose `version` (set at startup) reads as TiDB's
/// does, `8.0.11-TiDB-v7.5.0` (TiDB's "SELECT VERSION()" reference: its MySQL version, then
/// `-TiDB-` and its own).
pub fn tidb_standin() -> String {
    url("DLOCK_TIDB_STANDIN_URL")
}

/// Whether `error` is [`dlock_core::Error::CannotExclude`] for `deployment`.
pub fn refused_as(error: &dlock_core::Error, deployment: dlock_core::Deployment) -> bool {
    matches!(error, dlock_core::Error::CannotExclude { deployment: found } if *found == deployment)
}
