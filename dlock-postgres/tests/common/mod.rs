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

/// A blocking client of the server under test.
#[allow(dead_code)]
pub(crate) fn connect() -> postgres::Client {
    postgres::Client::connect(&pg_url(), postgres::NoTls).expect("connect to DLOCK_PG_URL")
}

/// The server pid of a blocking client's session.
#[allow(dead_code)]
pub(crate) fn backend_pid(client: &mut postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0)
}

/// The sessions holding `key` (granted, any mode), asked of `pg_locks` with SQL of the
/// test's own: a bigint key is (classid = high 32 bits, objid = low 32 bits, objsubid = 1),
/// a pair is (classid, objid, objsubid = 2).
#[allow(dead_code)]
pub(crate) fn holder_pids(observer: &mut postgres::Client, key: dlock_postgres::PgKey) -> Vec<i32> {
    use dlock_postgres::PgKey;
    let (classid, objid, objsubid) = match key {
        PgKey::BigInt(value) => ((value >> 32) & 0xffff_ffff, value & 0xffff_ffff, 1_i16),
        PgKey::Pair(high, low) => (
            i64::from(high) & 0xffff_ffff,
            i64::from(low) & 0xffff_ffff,
            2,
        ),
    };
    let rows = observer
        .query(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid::text::bigint = $1 AND objid::text::bigint = $2 AND objsubid = $3 \
             ORDER BY pid",
            &[&classid, &objid, &objsubid],
        )
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}
