//! The URL entry point against servers that accept only TLS (the `db:tls` row, which names
//! their authority in `DLOCK_TLS_CA`): every session it opens is encrypted, the certificate
//! is checked when the URL says so, and a URL that asks for too little is refused by the
//! server with an error naming the address.

use dlock_pool::{AnyConnection, AnyLockGuard, AnyLockPool, AsyncAnyConnection};
use dlock_pool::{AsyncAnyLockGuard, AsyncAnyLockPool};
use dlock_testkit::{mysql, postgres};

/// The authority's certificate: these tests mean nothing on servers that also take plain text.
fn authority() -> std::path::PathBuf {
    dlock_testkit::tls_ca_path().expect(
        "DLOCK_TLS_CA is not set: these tests need servers that accept only TLS; run `cargo \
         xtask test-matrix --only db:tls`, which starts them",
    )
}

/// `url` with its TLS parameters (`sslmode`, `sslrootcert`, `ssl-mode`, `ssl-ca`) replaced by
/// `tls`.
fn with_tls(url: &str, tls: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.starts_with("ssl"))
        .collect();
    pairs.extend(tls.split('&'));
    format!("{base}?{}", pairs.join("&"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_of_an_async_url_pool_is_encrypted_and_checked() {
    let ca = authority();
    for url in [postgres::url_with_its_tls(), mysql::url_with_its_tls()] {
        let pool = AsyncAnyLockPool::connect(&url).await.unwrap();
        let mut guard = pool.acquire("tls/async").await.unwrap();
        let encrypted = match AsyncAnyLockGuard::connection(&mut guard) {
            AsyncAnyConnection::Postgres(client) => client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, bool>(0),
            AsyncAnyConnection::MySql(conn) => {
                use dlock_pool::dlock_mysql::mysql_async::prelude::Queryable;
                let cipher: Option<(String, String)> = conn
                    .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                    .await
                    .unwrap();
                cipher.is_some_and(|(_, cipher)| !cipher.is_empty())
            }
        };
        assert!(encrypted, "{url}: the lock's session is encrypted");
        AsyncAnyLockGuard::release(guard).await.unwrap();
    }
    // Certificates are checked where the URL asks: without the authority, the test server's
    // certificate is nobody's.
    for url in [
        with_tls(&postgres::pg_url(), "sslmode=verify-full"),
        with_tls(&mysql::mysql_url(), "ssl-mode=VERIFY_IDENTITY"),
    ] {
        let error = AsyncAnyLockPool::connect(&url)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("127.0.0.1"),
            "{url}: names the address: {error}"
        );
    }
    // ... and with it, the chain alone can be checked.
    let ca = ca.display();
    for url in [
        with_tls(
            &postgres::pg_url(),
            &format!("sslmode=verify-ca&sslrootcert={ca}"),
        ),
        with_tls(
            &mysql::mysql_url(),
            &format!("ssl-mode=VERIFY_CA&ssl-ca={ca}"),
        ),
    ] {
        let connected = AsyncAnyLockPool::connect(&url).await;
        assert!(connected.is_ok(), "{url}: {:?}", connected.err());
    }
}

#[test]
fn a_blocking_url_pool_is_encrypted_and_one_asking_for_no_tls_is_refused_by_the_server() {
    authority();
    // The blocking mysql driver moves a connection to 127.0.0.1 over to the server's Unix
    // socket by default (`prefer_socket`), which needs no TLS: keep it on TCP.
    let mysql_over_tcp = format!("{}&prefer_socket=false", mysql::url_with_its_tls());
    for url in [postgres::url_with_its_tls(), mysql_over_tcp] {
        let pool = AnyLockPool::connect(&url).unwrap();
        let mut guard = pool.acquire("tls/blocking").unwrap();
        let encrypted = match AnyLockGuard::connection(&mut guard) {
            AnyConnection::Postgres(client) => client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .unwrap()
                .get::<_, bool>(0),
            AnyConnection::MySql(conn) => {
                use dlock_pool::dlock_mysql::mysql::prelude::Queryable;
                let cipher: Option<(String, String)> = conn
                    .query_first("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                    .unwrap();
                cipher.is_some_and(|(_, cipher)| !cipher.is_empty())
            }
        };
        assert!(encrypted, "{url}: the lock's session is encrypted");
        AnyLockGuard::release(guard).unwrap();
    }
    for url in [
        with_tls(&postgres::pg_url(), "sslmode=disable"),
        with_tls(&mysql::mysql_url(), "ssl-mode=DISABLED"),
    ] {
        let Err(error) = AnyLockPool::connect(&url) else {
            panic!("{url}: a URL asking for no TLS was let in");
        };
        let error = error.to_string();
        assert!(
            error.contains("127.0.0.1"),
            "{url}: names the address: {error}"
        );
    }
}
