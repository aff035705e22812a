#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

cfg_if::cfg_if! {
    if #[cfg(any(feature = "r2d2", feature = "bb8"))] {
        mod core;
        mod deadline;
        mod manager;
        mod watch;
        pub use manager::{ConnectError, LockManager, Tracked};
    }
}

cfg_if::cfg_if! {
    if #[cfg(feature = "r2d2")] {
        mod blocking;
        #[cfg_attr(docsrs, doc(cfg(feature = "r2d2")))]
        pub use blocking::{BlockingConnection, LockGuard, LockPool, Pooled};
        #[cfg_attr(docsrs, doc(cfg(feature = "r2d2")))]
        pub use manager::BlockingManager;
        /// The r2d2 crate this crate's pools are built on, for matching versions.
        #[cfg_attr(docsrs, doc(cfg(feature = "r2d2")))]
        pub use r2d2;
    }
}

cfg_if::cfg_if! {
    if #[cfg(feature = "bb8")] {
        mod asynchronous;
        #[cfg_attr(docsrs, doc(cfg(feature = "bb8")))]
        pub use asynchronous::{AsyncConnection, AsyncLockGuard, AsyncLockPool, AsyncPooled};
        #[cfg_attr(docsrs, doc(cfg(feature = "bb8")))]
        pub use asynchronous::{AsyncMultiplexedGuard, AsyncMultiplexedPool, MultiplexedManager};
        #[cfg_attr(docsrs, doc(cfg(feature = "bb8")))]
        pub use manager::AsyncManager;
        /// The bb8 crate this crate's async pools are built on, for matching versions.
        #[cfg_attr(docsrs, doc(cfg(feature = "bb8")))]
        pub use bb8;
    }
}

cfg_if::cfg_if! {
    if #[cfg(all(feature = "bb8", feature = "mysql"))] {
        mod bb8_mysql;
        #[cfg_attr(docsrs, doc(cfg(all(feature = "bb8", feature = "mysql"))))]
        pub use bb8_mysql::{AsyncMySqlManager, MySqlConnectError};
    }
}

cfg_if::cfg_if! {
    if #[cfg(feature = "deadpool")] {
        mod over_deadpool;
        #[cfg_attr(docsrs, doc(cfg(feature = "deadpool")))]
        pub use over_deadpool::{DeadpoolLockGuard, DeadpoolLockPool};
        /// deadpool-postgres, the pool [`DeadpoolLockPool`] takes connections from.
        #[cfg_attr(docsrs, doc(cfg(feature = "deadpool")))]
        pub use deadpool_postgres;
    }
}

cfg_if::cfg_if! {
    if #[cfg(feature = "sqlx")] {
        mod over_sqlx;
        #[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
        pub use over_sqlx::{SqlxBackend, SqlxLockGuard, SqlxLockPool};
        /// sqlx, as dlock-pool builds on it.
        #[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
        pub use sqlx;
    }
}

cfg_if::cfg_if! {
    if #[cfg(feature = "url")] {
        mod url;
        mod url_tls;
        #[cfg_attr(docsrs, doc(cfg(feature = "url")))]
        pub use url::{
            AnyConnection, AnyHolder, AnyLockGuard, AnyLockPool, AsyncAnyConnection,
            AsyncAnyLockGuard, AsyncAnyLockPool,
        };
    }
}

pub use dlock_core::*;

/// The PostgreSQL backend (feature `postgres`), with the drivers it was built with
/// (`dlock_pool::dlock_postgres::tokio_postgres`).
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use dlock_postgres;

/// The MySQL and MariaDB backend (feature `mysql`), with the drivers it was built with
/// (`dlock_pool::dlock_mysql::mysql_async`).
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use dlock_mysql;

// The backends' earlier paths, kept working but not shown: under them the drivers' paths
// stuttered (`dlock_pool::dlock_postgres::postgres`).
#[cfg(feature = "mysql")]
#[doc(hidden)]
pub use dlock_mysql as mysql;
#[cfg(feature = "postgres")]
#[doc(hidden)]
pub use dlock_postgres as postgres;
