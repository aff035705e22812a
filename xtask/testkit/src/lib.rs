//! What dlock's test suites share: where the servers under test are, how to connect to
//! them, and how to look at a session from the side. Not published; the suites use it as a
//! dev-dependency.
//!
//! The `postgres` and `mysql` modules keep each backend's helpers; the crate root holds what
//! the pool tests need from both.

use ::mysql::prelude::Queryable as _;

pub mod contract;
pub mod deployments;
pub mod faults;
pub mod proxy;
pub mod spans;

/// Waits up to ten seconds for `condition`, checking every 10 ms; whether it came true.
pub fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    condition()
}

/// Polls a future exactly once and drops it, as `select!` or a timeout can.
pub async fn poll_once_and_drop<F: std::future::Future>(future: F) {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        let _ = future.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await;
}

/// Asserts that a missing-fence-table error's `message` names `table`, the table a lock was
/// fenced in, and the call that creates exactly that one.
pub fn assert_names_missing_fence_table(message: &str, table: &str) {
    assert!(
        message.contains(&format!("install_fencing_in function with \"{table}\"")),
        "{message}"
    );
}

/// The port of a URL like `scheme://user@host:port/db`.
pub fn port_of(url: &str) -> u16 {
    let after_at = url.rsplit_once('@').map_or(url, |(_, rest)| rest);
    let host_port = after_at.split('/').next().unwrap();
    host_port.rsplit_once(':').unwrap().1.parse().unwrap()
}

pub use self::mysql::mysql_url;
pub use self::postgres::pg_url;

/// A blocking PostgreSQL client for looking from the side.
pub fn pg() -> ::postgres::Client {
    postgres::connect()
}

/// A blocking MySQL connection for looking from the side.
pub fn my() -> ::mysql::Conn {
    mysql::connect()
}

/// How many advisory locks the PostgreSQL session `pid` holds.
pub fn pg_advisory_locks_of(pid: i32) -> i64 {
    pg().query_one(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND granted",
        &[&pid],
    )
    .unwrap()
    .get(0)
}

/// Ends the PostgreSQL session `pid`.
pub fn pg_terminate(pid: i32) {
    // With a timeout, the call returns once the backend has exited (PostgreSQL 14+).
    pg().execute("SELECT pg_terminate_backend($1, 10000)", &[&pid])
        .unwrap();
}

/// The connection id holding the MySQL lock `name`, if any.
pub fn my_holder_of(name: &str) -> Option<u32> {
    mysql::holder_of(name)
}

/// Ends the MySQL session `id`. A session that ended on its own first (1094, unknown thread
/// id) is what the caller wants all the same: a test that picks sessions from the process
/// list races their own ends.
pub fn my_kill(id: u32) {
    match my().query_drop(format!("KILL {id}")) {
        Err(::mysql::Error::MySqlError(error)) if error.code == 1094 => {}
        other => other.unwrap(),
    }
    assert!(
        eventually(|| !mysql::session_exists(id)),
        "session {id} outlived its KILL"
    );
}

/// Where the certificate authority of the servers under test is, when they accept only TLS:
/// `DLOCK_TLS_CA`, which the `db:tls` row sets.
pub fn tls_ca_path() -> Option<std::path::PathBuf> {
    std::env::var_os("DLOCK_TLS_CA")
        .filter(|path| !path.is_empty())
        .map(std::path::PathBuf::from)
}

/// The certificate authority of [`tls_ca_path`], read.
fn tls_ca() -> Option<native_tls::Certificate> {
    let path = tls_ca_path()?;
    let pem = std::fs::read(&path)
        .unwrap_or_else(|error| panic!("DLOCK_TLS_CA: {}: {error}", path.display()));
    Some(native_tls::Certificate::from_pem(&pem).expect("DLOCK_TLS_CA holds a PEM certificate"))
}

/// The PostgreSQL server under test.
pub mod postgres {
    pub use crate::poll_once_and_drop;

    /// The URL of the PostgreSQL server under test.
    ///
    /// # Panics
    ///
    /// When `DLOCK_PG_URL` is not set: these tests check a real server, and a test that passes
    /// without one would check nothing. The message says how to get a server.
    pub fn pg_url() -> String {
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

    /// A stand-in for a Citus node: a fresh database `name` on the server under test whose
    /// catalogue answers as a Citus node's does. Citus keeps the node's group in
    /// `pg_catalog.pg_dist_local_group` (one row; group 0 is the coordinator, as Citus's
    /// "Coordinator Metadata" reference describes). Returns the database's URL and a function
    /// that sets the group.
    pub fn citus_standin(name: &str, group: i32) -> (String, impl Fn(i32)) {
        let mut admin = connect();
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let base = pg_url();
        let (base, query) = base.split_once('?').unwrap_or((&base, ""));
        let url = match base.rsplit_once('/') {
            Some((server, _)) if query.is_empty() => format!("{server}/{name}"),
            Some((server, _)) => format!("{server}/{name}?{query}"),
            None => panic!("DLOCK_PG_URL names no database: {base}"),
        };
        let mut node = ::postgres::Client::connect(&url, tls()).unwrap();
        node.batch_execute(
            "SET allow_system_table_mods = on; \
             CREATE TABLE pg_catalog.pg_dist_local_group (groupid integer NOT NULL)",
        )
        .unwrap();
        node.execute(
            "INSERT INTO pg_catalog.pg_dist_local_group VALUES ($1)",
            &[&group],
        )
        .unwrap();
        let set_url = url.clone();
        let set_group = move |group: i32| {
            let mut node = ::postgres::Client::connect(&set_url, tls()).unwrap();
            node.execute(
                "UPDATE pg_catalog.pg_dist_local_group SET groupid = $1",
                &[&group],
            )
            .unwrap();
        };
        (url, set_group)
    }

    /// The TLS connector the suites connect with. It trusts the certificate authority in
    /// `DLOCK_TLS_CA` when that is set (the `db:tls` row, whose servers accept only TLS).
    /// Elsewhere the URLs leave `sslmode` at `prefer`, and a server without TLS answers in
    /// plain text.
    pub type Tls = postgres_native_tls::MakeTlsConnector;

    /// A [`Tls`] connector.
    pub fn tls() -> Tls {
        let mut builder = native_tls::TlsConnector::builder();
        if let Some(ca) = crate::tls_ca() {
            builder.add_root_certificate(ca);
        }
        Tls::new(builder.build().expect("a TLS connector"))
    }

    /// A TLS connector of the user's, as a lock or a pool sees it: [`tls`] underneath (TLS
    /// where the server asks for it), counting the connections made through it.
    #[derive(Clone)]
    pub struct CountingTls {
        made: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        inner: Tls,
    }

    impl Default for CountingTls {
        fn default() -> Self {
            CountingTls {
                made: std::sync::Arc::default(),
                inner: tls(),
            }
        }
    }

    impl std::fmt::Debug for CountingTls {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("CountingTls")
                .field("made", &self.made())
                .finish_non_exhaustive()
        }
    }

    impl CountingTls {
        /// How many connections went through it (clones count together).
        pub fn made(&self) -> usize {
            self.made.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> for CountingTls {
        type Stream = <Tls as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;
        type TlsConnect =
            <Tls as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::TlsConnect;
        type Error = <Tls as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Error;

        fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
            self.made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio_postgres::tls::MakeTlsConnect::<tokio_postgres::Socket>::make_tls_connect(
                &mut self.inner,
                domain,
            )
        }
    }

    /// `DLOCK_PG_URL` for the URL entry point, which reads its TLS from the URL: with
    /// `DLOCK_TLS_CA` set, it asks for `verify-full` against that authority.
    pub fn url_with_its_tls() -> String {
        let url = pg_url();
        match crate::tls_ca_path() {
            Some(ca) => {
                let url = url.replace("sslmode=require", "sslmode=verify-full");
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}sslrootcert={}", ca.display())
            }
            None => url,
        }
    }

    /// A blocking client of the server under test.
    pub fn connect() -> ::postgres::Client {
        ::postgres::Client::connect(&pg_url(), tls()).expect("connect to DLOCK_PG_URL")
    }

    /// An async client of the server under test, its connection driven by a spawned task.
    pub async fn connect_async() -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&pg_url(), tls())
            .await
            .expect("connect to DLOCK_PG_URL");
        tokio::spawn(connection);
        client
    }

    /// The server pid of an async client's session.
    pub async fn backend_pid_async(client: &tokio_postgres::Client) -> i32 {
        client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// The server pid of a blocking client's session.
    pub fn backend_pid(client: &mut ::postgres::Client) -> i32 {
        client
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0)
    }

    /// The sessions holding `key` (granted, any mode), asked of `pg_locks` with SQL of the
    /// test's own: a bigint key is (classid = high 32 bits, objid = low 32 bits, objsubid = 1),
    /// a pair is (classid, objid, objsubid = 2).
    pub fn holder_pids(observer: &mut ::postgres::Client, key: dlock_core::PgKey) -> Vec<i32> {
        use dlock_core::PgKey;
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
}

/// The MySQL or MariaDB server under test.
pub mod mysql {
    use ::mysql::prelude::Queryable;

    /// The URL of the MySQL or MariaDB server under test.
    ///
    /// # Panics
    ///
    /// When `DLOCK_MYSQL_URL` is not set: these tests check a real server, and a test that passes
    /// without one would check nothing. The message says how to get a server.
    pub fn mysql_url() -> String {
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

    /// How the blocking client connects to the server under test: `DLOCK_MYSQL_URL`, through
    /// TLS trusting `DLOCK_TLS_CA` when that is set (the `db:tls` row).
    pub fn opts() -> ::mysql::Opts {
        let opts = ::mysql::Opts::from_url(&mysql_url()).expect("DLOCK_MYSQL_URL is a MySQL URL");
        match crate::tls_ca_path() {
            Some(ca) => ::mysql::OptsBuilder::from_opts(opts)
                .ssl_opts(::mysql::SslOpts::default().with_root_cert_path(Some(ca)))
                .into(),
            None => opts,
        }
    }

    /// As [`opts`], for the async client.
    pub fn opts_async() -> mysql_async::Opts {
        let opts =
            mysql_async::Opts::from_url(&mysql_url()).expect("DLOCK_MYSQL_URL is a MySQL URL");
        match crate::tls_ca_path() {
            Some(ca) => mysql_async::OptsBuilder::from_opts(opts)
                .ssl_opts(mysql_async::SslOpts::default().with_root_certs(vec![ca.into()]))
                .into(),
            None => opts,
        }
    }

    /// `DLOCK_MYSQL_URL` for the URL entry point, which reads its TLS from the URL: with
    /// `DLOCK_TLS_CA` set, it asks for `VERIFY_IDENTITY` against that authority.
    pub fn url_with_its_tls() -> String {
        let url = mysql_url();
        match crate::tls_ca_path() {
            Some(ca) => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!(
                    "{url}{separator}ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
                    ca.display()
                )
            }
            None => url,
        }
    }

    /// A blocking connection to the server under test.
    pub fn connect() -> ::mysql::Conn {
        ::mysql::Conn::new(opts()).expect("connect to DLOCK_MYSQL_URL")
    }

    /// The connection id holding `name`, asked with the name bound as a parameter (the way other
    /// libraries send names), from a fresh session.
    pub fn holder_of(name: &str) -> Option<u32> {
        connect()
            .exec_first::<Option<u32>, _, _>("SELECT IS_USED_LOCK(?)", (name,))
            .unwrap()
            .flatten()
    }

    /// Ends the session `id` from a fresh session, as an operator would.
    pub fn kill(id: u32) {
        connect().query_drop(format!("KILL {id}")).unwrap();
    }

    /// Ends the statement running in session `id`, leaving the session.
    pub fn kill_query(id: u32) {
        connect().query_drop(format!("KILL QUERY {id}")).unwrap();
    }

    /// Waits until session `id` waits for a user lock, so a test can act on the waiter.
    pub fn wait_until_waiting(id: u32) {
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
    pub async fn connect_async() -> mysql_async::Conn {
        mysql_async::Conn::new(opts_async())
            .await
            .expect("connect to DLOCK_MYSQL_URL")
    }

    /// Whether session `id` still exists on the server.
    pub fn session_exists(id: u32) -> bool {
        let count: Option<u64> = connect()
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?",
                (id,),
            )
            .unwrap();
        count == Some(1)
    }

    pub use crate::eventually;
}
