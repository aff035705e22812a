//! A MariaDB Galera node, where `GET_LOCK` is local to the node: refused by default. It runs
//! on the servers of the matrix's `db:deployments` row:
//! `cargo xtask test-matrix --only db:deployments`.

use dlock_mysql::{
    AsyncLock, AsyncMySqlLock, Deployment, Lock, MySqlLock, check_deployment,
    check_deployment_async,
};
use dlock_testkit::deployments::{self, refused_as};
use dlock_testkit::mysql::mysql_url;

fn connect(url: &str) -> mysql::Conn {
    mysql::Conn::new(mysql::Opts::from_url(url).unwrap())
        .unwrap_or_else(|error| panic!("connect to {url}: {error}"))
}

async fn connect_async(url: &str) -> mysql_async::Conn {
    mysql_async::Conn::from_url(url)
        .await
        .unwrap_or_else(|error| panic!("connect to {url}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_galera_node_is_refused_by_every_flavour() {
    let url = deployments::galera();
    let mut lock = MySqlLock::new(connect(&url), "deployments/galera");
    let error = tokio::task::block_in_place(|| lock.try_acquire()).unwrap_err();
    assert!(refused_as(&error, Deployment::Galera), "{error:?}");
    assert!(!lock.is_acquired());
    let message = error.to_string();
    assert!(
        message.contains("Galera") && message.contains("wsrep_on"),
        "{message}"
    );
    let error = tokio::task::block_in_place(|| check_deployment(lock.conn())).unwrap_err();
    assert!(refused_as(&error, Deployment::Galera), "{error:?}");

    let mut lock = AsyncMySqlLock::new(connect_async(&url).await, "deployments/galera");
    let error = lock.acquire().await.unwrap_err();
    assert!(refused_as(&error, Deployment::Galera), "{error:?}");
    let error = check_deployment_async(lock.conn()).await.unwrap_err();
    assert!(refused_as(&error, Deployment::Galera), "{error:?}");
}

/// The refusal rides in the lock statement on MariaDB, and leaves nothing locked on the node:
/// another session finds the name free, blocking or async, waiting or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_galera_lock_leaves_nothing_locked() {
    use mysql::prelude::Queryable;
    let url = deployments::galera();
    let mut observer = connect(&url);
    let mut free = |name: &str| {
        let holder: Option<Option<u64>> = tokio::task::block_in_place(|| {
            observer
                .exec_first("SELECT IS_USED_LOCK(?)", (name,))
                .unwrap()
        });
        holder.flatten().is_none()
    };
    let name = "deployments/galera/nothing";
    let mut lock = MySqlLock::new(connect(&url), name);
    for _ in 0..3 {
        let error = tokio::task::block_in_place(|| {
            lock.acquire_timeout(std::time::Duration::from_millis(50))
        })
        .unwrap_err();
        assert!(refused_as(&error, Deployment::Galera), "{error:?}");
        assert!(free(name), "a refused blocking lock left the name held");
    }
    let mut lock = AsyncMySqlLock::new(connect_async(&url).await, name);
    for _ in 0..3 {
        let error = lock.try_acquire().await.unwrap_err();
        assert!(refused_as(&error, Deployment::Galera), "{error:?}");
        assert!(free(name), "a refused async lock left the name held");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_server_is_never_refused() {
    let url = mysql_url();
    for _ in 0..10 {
        let mut lock = MySqlLock::new(connect(&url), "deployments/single");
        assert!(tokio::task::block_in_place(|| lock.try_acquire()).unwrap());
        tokio::task::block_in_place(|| lock.release()).unwrap();
        let mut lock = AsyncMySqlLock::new(connect_async(&url).await, "deployments/single");
        assert!(lock.try_acquire().await.unwrap());
        lock.release().await.unwrap();
        check_deployment_async(lock.conn()).await.unwrap();
    }
}

#[test]
fn with_the_check_off_a_galera_node_grants_node_local_locks() {
    // What the check refuses: the node grants the lock, and would grant it to a client on
    // another node at the same time.
    let mut lock =
        MySqlLock::new(connect(&deployments::galera()), "deployments/skip").skip_deployment_check();
    assert!(lock.try_acquire().unwrap());
    lock.release().unwrap();
}

/// TiDB, which cannot run here, by a stand-in that answers `VERSION()` as TiDB does: refused
/// by every flavour and by the standalone check, with nothing locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidb_is_refused_by_every_flavour() {
    let url = deployments::tidb_standin();
    let mut lock = MySqlLock::new(connect(&url), "deployments/tidb");
    let error = tokio::task::block_in_place(|| lock.try_acquire()).unwrap_err();
    assert!(refused_as(&error, Deployment::TiDb), "{error:?}");
    assert!(!lock.is_acquired());
    assert!(error.to_string().contains("TiDB"), "{error}");
    let error = tokio::task::block_in_place(|| check_deployment(lock.conn())).unwrap_err();
    assert!(refused_as(&error, Deployment::TiDb), "{error:?}");
    let holder = tokio::task::block_in_place(|| lock.holder()).unwrap();
    assert_eq!(holder, None, "nothing locked");

    let mut lock = AsyncMySqlLock::new(connect_async(&url).await, "deployments/tidb");
    let error = lock.acquire().await.unwrap_err();
    assert!(refused_as(&error, Deployment::TiDb), "{error:?}");
    let error = check_deployment_async(lock.conn()).await.unwrap_err();
    assert!(refused_as(&error, Deployment::TiDb), "{error:?}");
    // Turned off, the lock is the stand-in's own GET_LOCK.
    let mut lock = MySqlLock::new(connect(&url), "deployments/tidb").skip_deployment_check();
    assert!(tokio::task::block_in_place(|| lock.try_acquire()).unwrap());
}
