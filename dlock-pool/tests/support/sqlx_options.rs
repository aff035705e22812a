//! Connect options of the servers under test for sqlx pools, through TLS checked against
//! `DLOCK_TLS_CA` where that is set (the `db:tls` row). Included by the test files that use
//! sqlx (`#[path]`), not a test of its own.

use std::str::FromStr;

use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// PostgreSQL at `DLOCK_PG_URL`.
pub(crate) fn postgres() -> PgConnectOptions {
    let url = dlock_testkit::pg_url();
    let mut options = PgConnectOptions::from_str(&url).expect("a PostgreSQL URL");
    if let Some(ca) = dlock_testkit::tls_ca_path() {
        options = options.ssl_mode(PgSslMode::VerifyFull).ssl_root_cert(ca);
    }
    options
}

/// MySQL or MariaDB at `DLOCK_MYSQL_URL`.
pub(crate) fn mysql() -> MySqlConnectOptions {
    let url = dlock_testkit::mysql_url();
    let mut options = MySqlConnectOptions::from_str(&url).expect("a MySQL URL");
    if let Some(ca) = dlock_testkit::tls_ca_path() {
        options = options.ssl_mode(MySqlSslMode::VerifyIdentity).ssl_ca(ca);
    }
    options
}
