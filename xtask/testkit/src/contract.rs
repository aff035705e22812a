//! The lock contract of DESIGN.md ("Semantics"), written once per trait: [`Lock`] for the
//! blocking flavours and [`AsyncLock`] for the tokio ones. Each backend's and each pool's
//! test suite instantiates it with [`blocking_contract!`](crate::blocking_contract) or
//! [`async_contract!`](crate::async_contract), which give one `#[test]` per clause.
//!
//! A flavour says how to make a lock object on a session of its own, and whether two lock
//! objects can share one session; [`Server`] looks at the sessions from the side.

use std::time::{Duration, Instant};

use dlock_core::{AsyncLock, Error, Key, KeyPolicy, Lock};
use mysql::prelude::Queryable as _;

/// The server a flavour's locks live on, looked at from a session of the test's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// PostgreSQL, at `DLOCK_PG_URL`.
    Postgres,
    /// MySQL or MariaDB, at `DLOCK_MYSQL_URL`.
    MySql,
}

impl Server {
    /// How many sessions hold `key` (under the default key policy), per the server.
    pub fn holders(self, key: &str) -> usize {
        match self {
            Server::Postgres => self.postgres_holders(key).len(),
            Server::MySql => usize::from(self.mysql_holder(key).is_some()),
        }
    }

    /// Ends, from the side, every session that holds `key`.
    pub fn kill_holders(self, key: &str) {
        match self {
            Server::Postgres => {
                for pid in self.postgres_holders(key) {
                    crate::pg_terminate(pid);
                }
            }
            Server::MySql => {
                if let Some(id) = self.mysql_holder(key) {
                    crate::my_kill(id);
                }
            }
        }
    }

    fn postgres_holders(self, key: &str) -> Vec<i32> {
        let pg_key = KeyPolicy::default().pg_key(&Key::from(key)).unwrap();
        crate::postgres::holder_pids(&mut crate::pg(), pg_key)
    }

    fn mysql_holder(self, key: &str) -> Option<u32> {
        crate::my()
            .exec_first::<Option<u32>, _, _>("SELECT IS_USED_LOCK(?)", (key,))
            .unwrap()
            .flatten()
    }

    /// Waits up to ten seconds until `holders(key)` is `count`; whether it came.
    pub fn until_holders(self, key: &str, count: usize) -> bool {
        crate::eventually(|| self.holders(key) == count)
    }
}

/// The key of one clause for one flavour, so that clauses running at once never meet.
pub fn key(flavour: &str, clause: &str) -> String {
    format!("contract/{flavour}/{clause}")
}

/// How long a timed acquire on a busy key is given in the clauses.
pub const PATIENCE: Duration = Duration::from_millis(150);

/// A blocking flavour under the contract.
pub trait Flavour {
    /// The lock type under test.
    type Lock: Lock + Send + 'static;
    /// Where its locks live.
    const SERVER: Server;
    /// A lock object on `key`, on a session of its own.
    fn lock(&mut self, key: &str) -> Self::Lock;
    /// Runs [`second_on_one_session`] with a second lock object on `key` over the session
    /// of `outer`; `false` where a flavour has no such thing (a pool gives every lock a
    /// session of its own).
    fn reentrant(&mut self, outer: &mut Self::Lock, key: &str) -> bool;
}

/// An async flavour under the contract.
pub trait AsyncFlavour {
    /// The lock type under test.
    type Lock: AsyncLock + 'static;
    /// Where its locks live.
    const SERVER: Server;
    /// A lock object on `key`, on a session of its own.
    fn lock(&mut self, key: &str) -> impl Future<Output = Self::Lock>;
    /// As [`Flavour::reentrant`], running [`second_on_one_session_async`].
    fn reentrant(&mut self, outer: &mut Self::Lock, key: &str) -> impl Future<Output = bool>;
}

fn assert_timed_out_after(started: Instant, outcome: dlock_core::Result<bool>) {
    assert!(!outcome.unwrap(), "a busy key was taken");
    assert!(
        started.elapsed() >= PATIENCE,
        "acquire_timeout gave up after {:?}, before the {PATIENCE:?} asked",
        started.elapsed()
    );
}

/// Clause "excludes": a held key is busy for every other session (try, timeout no earlier
/// than asked) until it is released; a zero timeout is a try.
pub fn excludes<F: Flavour>(flavour: &mut F, key: &str) {
    let mut holder = flavour.lock(key);
    let mut other = flavour.lock(key);
    holder.acquire().unwrap();
    assert!(holder.is_acquired());
    assert_eq!(F::SERVER.holders(key), 1);
    assert!(!other.try_acquire().unwrap());
    assert!(!other.acquire_timeout(Duration::ZERO).unwrap());
    let started = Instant::now();
    assert_timed_out_after(started, other.acquire_timeout(PATIENCE));
    assert!(!other.is_acquired());
    holder.release().unwrap();
    assert!(!holder.is_acquired());
    assert!(other.acquire_timeout(PATIENCE).unwrap());
    other.release().unwrap();
    assert_eq!(F::SERVER.holders(key), 0);
}

/// Clause "hands over": a waiting `acquire` gets the key when the holder releases.
pub fn hands_over<F: Flavour>(flavour: &mut F, key: &str) {
    let mut holder = flavour.lock(key);
    let mut waiter = flavour.lock(key);
    holder.acquire().unwrap();
    let waiting = std::thread::spawn(move || {
        waiter.acquire().unwrap();
        waiter
    });
    std::thread::sleep(PATIENCE);
    assert!(
        !waiting.is_finished(),
        "acquire did not wait for the holder"
    );
    holder.release().unwrap();
    let mut waiter = waiting.join().unwrap();
    assert!(waiter.is_acquired());
    assert_eq!(F::SERVER.holders(key), 1);
    waiter.release().unwrap();
}

/// Clause "misuse": acquiring a held object is `AlreadyAcquired` and changes nothing;
/// releasing an object that does not hold is `NotAcquired`.
pub fn reports_misuse<F: Flavour>(flavour: &mut F, key: &str) {
    let mut lock = flavour.lock(key);
    assert!(matches!(lock.release(), Err(Error::NotAcquired)));
    assert!(!lock.verify().unwrap());
    lock.acquire().unwrap();
    assert!(matches!(lock.acquire(), Err(Error::AlreadyAcquired)));
    assert!(matches!(lock.try_acquire(), Err(Error::AlreadyAcquired)));
    assert!(matches!(
        lock.acquire_timeout(PATIENCE),
        Err(Error::AlreadyAcquired)
    ));
    assert!(lock.is_acquired());
    assert!(lock.verify().unwrap());
    lock.release().unwrap();
    assert!(matches!(lock.release(), Err(Error::NotAcquired)));
    assert_eq!(lock.key(), &Key::from(key));
}

/// Clause "a lost session": after the server ends the holder's session, `verify` is false,
/// `release` is an error that leaves the object unlocked, and the key is free for others.
pub fn tells_a_lost_session<F: Flavour>(flavour: &mut F, key: &str) {
    let mut lock = flavour.lock(key);
    lock.acquire().unwrap();
    assert!(lock.verify().unwrap());
    F::SERVER.kill_holders(key);
    assert!(F::SERVER.until_holders(key, 0));
    assert!(!lock.verify().unwrap_or(false), "verify after the kill");
    assert!(lock.release().is_err(), "release of a lost lock");
    assert!(!lock.is_acquired());
    let mut other = flavour.lock(key);
    assert!(other.try_acquire().unwrap());
    other.release().unwrap();
}

/// Clause "drop releases": a held lock dropped without `release` frees its key.
pub fn drop_releases<F: Flavour>(flavour: &mut F, key: &str) {
    let mut lock = flavour.lock(key);
    lock.acquire().unwrap();
    drop(lock);
    assert!(
        F::SERVER.until_holders(key, 0),
        "the dropped lock's key stayed held"
    );
    let mut other = flavour.lock(key);
    assert!(other.try_acquire().unwrap());
    other.release().unwrap();
}

/// Clause "reentrancy": two lock objects on one session both hold the key, and each
/// releases only its own hold.
pub fn is_reentrant_per_session<F: Flavour>(flavour: &mut F, key: &str) {
    let mut outer = flavour.lock(key);
    outer.acquire().unwrap();
    if !flavour.reentrant(&mut outer, key) {
        // Every lock of this flavour has a session of its own: a second one is excluded.
        let mut second = flavour.lock(key);
        assert!(!second.try_acquire().unwrap());
    }
    assert_eq!(
        F::SERVER.holders(key),
        1,
        "the outer hold went with the inner one"
    );
    assert!(outer.verify().unwrap());
    outer.release().unwrap();
    assert_eq!(F::SERVER.holders(key), 0);
}

/// The inner half of [`is_reentrant_per_session`], for a flavour's [`Flavour::reentrant`]:
/// `inner` is a second lock object on the session of a lock that holds the key.
pub fn second_on_one_session(server: Server, inner: &mut dyn Lock) {
    assert!(
        inner.try_acquire().unwrap(),
        "a session's second lock object"
    );
    assert!(inner.verify().unwrap());
    inner.release().unwrap();
    assert_eq!(server.holders(&key_text(inner.key())), 1);
}

fn key_text(key: &Key) -> String {
    match key {
        Key::Text(text) => text.clone(),
        other => panic!("the contract names its keys with text, not {other:?}"),
    }
}

async fn holders(server: Server, key: &str) -> usize {
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || server.holders(&key))
        .await
        .unwrap()
}

async fn until_holders(server: Server, key: &str, count: usize) -> bool {
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || server.until_holders(&key, count))
        .await
        .unwrap()
}

async fn kill_holders(server: Server, key: &str) {
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || server.kill_holders(&key))
        .await
        .unwrap();
}

/// [`excludes`], async.
pub async fn excludes_async<F: AsyncFlavour>(flavour: &mut F, key: &str) {
    let mut holder = flavour.lock(key).await;
    let mut other = flavour.lock(key).await;
    holder.acquire().await.unwrap();
    assert!(holder.is_acquired());
    assert_eq!(holders(F::SERVER, key).await, 1);
    assert!(!other.try_acquire().await.unwrap());
    assert!(!other.acquire_timeout(Duration::ZERO).await.unwrap());
    let started = Instant::now();
    assert_timed_out_after(started, other.acquire_timeout(PATIENCE).await);
    assert!(!other.is_acquired());
    holder.release().await.unwrap();
    assert!(!holder.is_acquired());
    assert!(other.acquire_timeout(PATIENCE).await.unwrap());
    other.release().await.unwrap();
    assert_eq!(holders(F::SERVER, key).await, 0);
}

/// [`hands_over`], async.
pub async fn hands_over_async<F: AsyncFlavour>(flavour: &mut F, key: &str) {
    let mut holder = flavour.lock(key).await;
    let mut waiter = flavour.lock(key).await;
    holder.acquire().await.unwrap();
    let granted = std::sync::atomic::AtomicBool::new(false);
    let (waited, ()) = tokio::join!(
        async {
            let waited = waiter.acquire().await;
            granted.store(true, std::sync::atomic::Ordering::SeqCst);
            waited
        },
        async {
            tokio::time::sleep(PATIENCE).await;
            let early = granted.load(std::sync::atomic::Ordering::SeqCst);
            assert!(!early, "acquire did not wait for the holder");
            holder.release().await.unwrap();
        }
    );
    waited.unwrap();
    assert!(waiter.is_acquired());
    assert_eq!(holders(F::SERVER, key).await, 1);
    waiter.release().await.unwrap();
}

/// [`reports_misuse`], async.
pub async fn reports_misuse_async<F: AsyncFlavour>(flavour: &mut F, key: &str) {
    let mut lock = flavour.lock(key).await;
    assert!(matches!(lock.release().await, Err(Error::NotAcquired)));
    assert!(!lock.verify().await.unwrap());
    lock.acquire().await.unwrap();
    assert!(matches!(lock.acquire().await, Err(Error::AlreadyAcquired)));
    assert!(matches!(
        lock.try_acquire().await,
        Err(Error::AlreadyAcquired)
    ));
    assert!(matches!(
        lock.acquire_timeout(PATIENCE).await,
        Err(Error::AlreadyAcquired)
    ));
    assert!(lock.is_acquired());
    assert!(lock.verify().await.unwrap());
    lock.release().await.unwrap();
    assert!(matches!(lock.release().await, Err(Error::NotAcquired)));
    assert_eq!(lock.key(), &Key::from(key));
}

/// [`tells_a_lost_session`], async.
pub async fn tells_a_lost_session_async<F: AsyncFlavour>(flavour: &mut F, key: &str) {
    let mut lock = flavour.lock(key).await;
    lock.acquire().await.unwrap();
    assert!(lock.verify().await.unwrap());
    kill_holders(F::SERVER, key).await;
    assert!(until_holders(F::SERVER, key, 0).await);
    assert!(
        !lock.verify().await.unwrap_or(false),
        "verify after the kill"
    );
    assert!(lock.release().await.is_err(), "release of a lost lock");
    assert!(!lock.is_acquired());
    let mut other = flavour.lock(key).await;
    assert!(other.try_acquire().await.unwrap());
    other.release().await.unwrap();
}

/// [`drop_releases`], async: release on drop is not immediate, but it comes.
pub async fn drop_releases_async<F: AsyncFlavour>(flavour: &mut F, key: &str) {
    let mut lock = flavour.lock(key).await;
    lock.acquire().await.unwrap();
    drop(lock);
    assert!(
        until_holders(F::SERVER, key, 0).await,
        "the dropped lock's key stayed held"
    );
    let mut other = flavour.lock(key).await;
    assert!(other.try_acquire().await.unwrap());
    other.release().await.unwrap();
}

/// [`is_reentrant_per_session`], async.
pub async fn is_reentrant_per_session_async<F: AsyncFlavour>(flavour: &mut F, key: &str) {
    let mut outer = flavour.lock(key).await;
    outer.acquire().await.unwrap();
    if !flavour.reentrant(&mut outer, key).await {
        let mut second = flavour.lock(key).await;
        assert!(!second.try_acquire().await.unwrap());
    }
    assert_eq!(
        holders(F::SERVER, key).await,
        1,
        "the outer hold went with the inner one"
    );
    assert!(outer.verify().await.unwrap());
    outer.release().await.unwrap();
    assert_eq!(holders(F::SERVER, key).await, 0);
}

/// [`second_on_one_session`], async.
pub async fn second_on_one_session_async(server: Server, inner: &mut impl AsyncLock) {
    assert!(
        inner.try_acquire().await.unwrap(),
        "a session's second lock object"
    );
    assert!(inner.verify().await.unwrap());
    inner.release().await.unwrap();
    assert_eq!(holders(server, &key_text(inner.key())).await, 1);
}

/// One `#[test]` per clause of the blocking contract, in a module `$name`, for the flavour
/// `$flavour` builds (an expression of a type that implements [`Flavour`]).
#[macro_export]
macro_rules! blocking_contract {
    ($name:ident, $flavour:expr) => {
        mod $name {
            use super::*;
            use $crate::contract;

            fn run<F: contract::Flavour>(mut flavour: F, clause: &str, test: fn(&mut F, &str)) {
                test(&mut flavour, &contract::key(stringify!($name), clause));
            }

            #[test]
            fn excludes() {
                run($flavour, "excludes", contract::excludes);
            }

            #[test]
            fn hands_over() {
                run($flavour, "hands-over", contract::hands_over);
            }

            #[test]
            fn reports_misuse() {
                run($flavour, "misuse", contract::reports_misuse);
            }

            #[test]
            fn tells_a_lost_session() {
                run($flavour, "lost", contract::tells_a_lost_session);
            }

            #[test]
            fn drop_releases() {
                run($flavour, "drop", contract::drop_releases);
            }

            #[test]
            fn is_reentrant_per_session() {
                run($flavour, "reentrant", contract::is_reentrant_per_session);
            }
        }
    };
}

/// One `#[tokio::test]` per clause of the async contract, in a module `$name`, for the
/// flavour `$flavour` builds (an expression of a type that implements [`AsyncFlavour`]).
#[macro_export]
macro_rules! async_contract {
    ($name:ident, $flavour:expr) => {
        mod $name {
            use super::*;
            use $crate::contract;

            fn key(clause: &str) -> String {
                contract::key(stringify!($name), clause)
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn excludes() {
                contract::excludes_async(&mut $flavour, &key("excludes")).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hands_over() {
                contract::hands_over_async(&mut $flavour, &key("hands-over")).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reports_misuse() {
                contract::reports_misuse_async(&mut $flavour, &key("misuse")).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tells_a_lost_session() {
                contract::tells_a_lost_session_async(&mut $flavour, &key("lost")).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn drop_releases() {
                contract::drop_releases_async(&mut $flavour, &key("drop")).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn is_reentrant_per_session() {
                contract::is_reentrant_per_session_async(&mut $flavour, &key("reentrant")).await;
            }
        }
    };
}
