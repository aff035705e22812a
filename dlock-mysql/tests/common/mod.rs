//! What every MySQL test target shares: where the server is, and how to look at it.

#![allow(dead_code)]

use mysql::prelude::Queryable;

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

/// A blocking connection to the server under test.
pub(crate) fn connect() -> mysql::Conn {
    let opts = mysql::Opts::from_url(&mysql_url()).expect("DLOCK_MYSQL_URL is a MySQL URL");
    mysql::Conn::new(opts).expect("connect to DLOCK_MYSQL_URL")
}

/// The connection id holding `name`, asked with the name bound as a parameter (the way other
/// libraries send names), from a fresh session.
pub(crate) fn holder_of(name: &str) -> Option<u32> {
    connect()
        .exec_first::<Option<u32>, _, _>("SELECT IS_USED_LOCK(?)", (name,))
        .unwrap()
        .flatten()
}

/// Ends the session `id` from a fresh session, as an operator would.
pub(crate) fn kill(id: u32) {
    connect().query_drop(format!("KILL {id}")).unwrap();
}

/// Ends the statement running in session `id`, leaving the session.
pub(crate) fn kill_query(id: u32) {
    connect().query_drop(format!("KILL QUERY {id}")).unwrap();
}

/// Waits until session `id` waits for a user lock, so a test can act on the waiter.
pub(crate) fn wait_until_waiting(id: u32) {
    let mut conn = connect();
    for _ in 0..500 {
        let state: Option<Option<String>> = conn
            .exec_first(
                "SELECT STATE FROM information_schema.PROCESSLIST WHERE ID = ?",
                (id,),
            )
            .unwrap();
        if state.flatten().is_some_and(|state| state.contains("lock")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("session {id} never started waiting for a lock");
}

/// An async connection to the server under test.
pub(crate) async fn connect_async() -> mysql_async::Conn {
    let opts = mysql_async::Opts::from_url(&mysql_url()).expect("DLOCK_MYSQL_URL is a MySQL URL");
    mysql_async::Conn::new(opts)
        .await
        .expect("connect to DLOCK_MYSQL_URL")
}

/// Whether session `id` still exists on the server.
pub(crate) fn session_exists(id: u32) -> bool {
    let count: Option<u64> = connect()
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?",
            (id,),
        )
        .unwrap();
    count == Some(1)
}

/// Waits up to ten seconds for `condition`, checking every 10 ms; whether it came true.
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
