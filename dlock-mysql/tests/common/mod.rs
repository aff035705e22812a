//! What every MySQL test target shares: where the server is.

/// The URL of the MySQL or MariaDB server under test.
///
/// # Panics
///
/// When `DLOCK_MYSQL_URL` is not set: these tests check a real server, and a test that passes
/// without one would check nothing. The message says how to get a server.
pub(crate) fn mysql_url() -> String {
    match std::env::var("DLOCK_MYSQL_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "DLOCK_MYSQL_URL is not set, and these tests need a MySQL or MariaDB server. Run \
             `cargo xtask test-matrix`, which starts one; or `cargo xtask db up` and then \
             `eval \"$(cargo xtask db env)\"` before `cargo test`; or set DLOCK_MYSQL_URL to a \
             server of yours (mysql://user:password@host:port/db)"
        ),
    }
}
