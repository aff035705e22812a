//! What the pool tests share: where the servers are, and how to look at a session from the
//! side.

#![allow(dead_code)]

use mysql::prelude::Queryable;

fn url(variable: &str, example: &str) -> String {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{variable} is not set, and these tests need a real server. Run `cargo xtask \
             test-matrix`, which starts one; or `cargo xtask db up` and then `eval \"$(cargo \
             xtask db env)\"` before `cargo test`; or set {variable} to a server of yours \
             ({example})"
        ),
    }
}

/// The URL of the PostgreSQL server under test.
pub(crate) fn pg_url() -> String {
    url("DLOCK_PG_URL", "postgres://user@host:port/db")
}

/// The URL of the MySQL or MariaDB server under test.
pub(crate) fn mysql_url() -> String {
    url("DLOCK_MYSQL_URL", "mysql://user:password@host:port/db")
}

/// A blocking PostgreSQL client for looking from the side.
pub(crate) fn pg() -> postgres::Client {
    postgres::Client::connect(&pg_url(), postgres::NoTls).expect("connect to DLOCK_PG_URL")
}

/// A blocking MySQL connection for looking from the side.
pub(crate) fn my() -> mysql::Conn {
    mysql::Conn::new(mysql::Opts::from_url(&mysql_url()).unwrap())
        .expect("connect to DLOCK_MYSQL_URL")
}

/// How many advisory locks the PostgreSQL session `pid` holds.
pub(crate) fn pg_advisory_locks_of(pid: i32) -> i64 {
    pg().query_one(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND granted",
        &[&pid],
    )
    .unwrap()
    .get(0)
}

/// Ends the PostgreSQL session `pid`.
pub(crate) fn pg_terminate(pid: i32) {
    pg().execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
}

/// The connection id holding the MySQL lock `name`, if any.
pub(crate) fn my_holder_of(name: &str) -> Option<u32> {
    my().exec_first::<Option<u32>, _, _>("SELECT IS_USED_LOCK(?)", (name,))
        .unwrap()
        .flatten()
}

/// Ends the MySQL session `id`.
pub(crate) fn my_kill(id: u32) {
    my().query_drop(format!("KILL {id}")).unwrap();
}

/// Waits up to ten seconds for `condition`; whether it came true.
pub(crate) fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    condition()
}

/// The port of a URL like `scheme://user@host:port/db`.
pub(crate) fn port_of(url: &str) -> u16 {
    let after_at = url.rsplit_once('@').map_or(url, |(_, rest)| rest);
    let host_port = after_at.split('/').next().unwrap();
    host_port.rsplit_once(':').unwrap().1.parse().unwrap()
}
