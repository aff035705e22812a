//! What every PostgreSQL test target shares: where the server is.

/// The URL of the PostgreSQL server under test.
///
/// # Panics
///
/// When `DLOCK_PG_URL` is not set: these tests check a real server, and a test that passes
/// without one would check nothing. The message says how to get a server.
pub(crate) fn pg_url() -> String {
    match std::env::var("DLOCK_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "DLOCK_PG_URL is not set, and these tests need a PostgreSQL server. Run `cargo \
             xtask test-matrix`, which starts one; or `cargo xtask db up` and then `eval \
             \"$(cargo xtask db env)\"` before `cargo test`; or set DLOCK_PG_URL to a server \
             of yours (postgres://user@host:port/db)"
        ),
    }
}
