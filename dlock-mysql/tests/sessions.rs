//! `MySqlSession` and `AsyncMySqlSession`: many names over one server session, released in
//! any order, against a real MySQL or MariaDB server.

use dlock_testkit::mysql::{connect, connect_async, holder_of};

use dlock_mysql::{AsyncLock, AsyncMySqlSession, Error, Lock, MySqlLock, MySqlSession};

#[test]
fn a_session_holds_many_names_and_releases_them_in_any_order() {
    let names = ["sessions/many-1", "sessions/many-2", "sessions/many-3"];
    let conn = connect();
    let id = conn.connection_id();
    let mut session = MySqlSession::new(conn);
    for name in names {
        session.acquire(name).unwrap();
    }
    assert_eq!(session.held().count(), 3);
    session.release(names[1]).unwrap();
    assert_eq!(holder_of(names[1]), None);
    assert_eq!(holder_of(names[0]), Some(id));
    assert_eq!(holder_of(names[2]), Some(id));
    assert!(matches!(session.release(names[1]), Err(Error::NotAcquired)));
    let mut other = MySqlSession::new(connect());
    assert!(!other.try_acquire(names[0]).unwrap());
    assert!(other.try_acquire(names[1]).unwrap());
    // A second hold of one name: the name stays held until both are given back.
    assert!(session.try_acquire(names[0]).unwrap());
    session.release(names[0]).unwrap();
    assert_eq!(holder_of(names[0]), Some(id));
    let (_, released) = session.into_inner();
    released.unwrap();
    assert_eq!(holder_of(names[0]), None);
    assert_eq!(holder_of(names[2]), None);
    drop(other);
    assert_eq!(
        holder_of(names[1]),
        None,
        "dropping a session releases its holds"
    );
}

#[test]
fn locks_made_per_use_on_a_session_exclude() {
    let name = "sessions/per-use";
    let mut session = MySqlSession::new(connect());
    let mut other = MySqlLock::new(connect(), name);
    for round in 0..4 {
        let mut lock = session.lock(name);
        assert!(lock.try_acquire().unwrap(), "round {round}");
        assert!(!other.try_acquire().unwrap(), "round {round}: excluded");
        lock.release().unwrap();
    }
    assert!(other.try_acquire().unwrap());
    other.release().unwrap();
}

#[tokio::test]
async fn an_async_session_holds_many_names_and_releases_them_in_any_order() {
    let names = ["sessions/tokio-many-1", "sessions/tokio-many-2"];
    let conn = connect_async().await;
    let id = conn.id();
    let mut session = AsyncMySqlSession::new(conn);
    session.acquire(names[0]).await.unwrap();
    assert!(session.try_acquire(names[1]).await.unwrap());
    session.release(names[0]).await.unwrap();
    assert_eq!(holder_of(names[0]), None);
    assert_eq!(holder_of(names[1]), Some(id));
    assert!(matches!(
        session.release(names[0]).await,
        Err(Error::NotAcquired)
    ));
    // A one-key lock on the session beside the session's own holds.
    let mut lock = session.lock(names[0]);
    assert!(lock.try_acquire().await.unwrap());
    lock.release().await.unwrap();
    drop(lock);
    let (_, released) = session.into_inner().await;
    released.unwrap();
    assert_eq!(holder_of(names[1]), None);
}

#[tokio::test]
async fn an_async_session_dropped_holding_releases_its_holds() {
    // An owned connection: its release runs on a spawned task.
    let name = "sessions/tokio-dropped";
    let mut session = AsyncMySqlSession::new(connect_async().await);
    session.acquire(name).await.unwrap();
    drop(session);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while holder_of(name).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "released after the drop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
