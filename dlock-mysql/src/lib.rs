#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! - `blocking` (feature `blocking`): `MySqlLock`, `MySqlSession` and the helpers
//!   (`holder`, `session`, `still_held`, `check_deployment`, `install_fencing`) over the
//!   `mysql` client.
//! - `tokio` (feature `tokio`): `AsyncMySqlLock`, `AsyncMySqlSession` and the same
//!   helpers over `mysql_async`.
//! - `sqlx` (feature `sqlx`): `SqlxMySqlLock`, a named lock over a sqlx connection, and
//!   `SqlxMySqlSession`, a session holding any number of names.
//!
//! The lock and session types are also at the crate root; the helpers live in their
//! flavour's module, under the same names in both.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "blocking", feature = "tokio"))]
mod machine;
#[cfg(any(feature = "blocking", feature = "tokio"))]
mod methods;
#[cfg(any(feature = "blocking", feature = "tokio"))]
mod sql;

#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
pub mod blocking;

#[cfg(feature = "tokio")]
mod asynchronous;

#[cfg(feature = "sqlx")]
mod over_sqlx;

/// The sqlx flavour (feature `sqlx`): [`SqlxMySqlLock`], a named lock over a sqlx
/// connection, [`SqlxMySqlSession`], a session holding any number of names, and helpers named
/// as the tokio flavour's are.
#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub mod sqlx {
    pub use crate::over_sqlx::{
        SqlxMySqlConnection, SqlxMySqlLock, SqlxMySqlSession, install_fencing, session, still_held,
    };
}

#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub use over_sqlx::{SqlxMySqlConnection, SqlxMySqlLock, SqlxMySqlSession};

/// The tokio flavour (feature `tokio`): locks, sessions and helpers over `mysql_async`, named
/// as the blocking flavour's are.
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio {
    pub use crate::asynchronous::batch_async as batch;
    pub use crate::asynchronous::{
        AsyncMySqlConnection, AsyncMySqlLock, AsyncMySqlSession,
        check_deployment_async as check_deployment, holder_async as holder,
        holder_sessions_async as holder_sessions, install_fencing_async as install_fencing,
        install_fencing_in_async as install_fencing_in, session_async as session,
        still_held_async as still_held, try_lock_async as try_lock,
    };
    pub use dlock_core::SharedOp;
}

pub use dlock_core::*;

#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
pub use blocking::{MySqlConnection, MySqlLock, MySqlSession};

// The helpers' earlier paths, kept working but not shown: they live in `blocking` and `tokio`.
#[cfg(feature = "blocking")]
#[doc(hidden)]
pub use blocking::{
    check_deployment, holder, install_fencing, install_fencing_in, session, still_held,
};

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use asynchronous::{AsyncMySqlConnection, AsyncMySqlLock, AsyncMySqlSession};

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use sql::HolderSession;

#[cfg(feature = "tokio")]
#[doc(hidden)]
pub use asynchronous::{
    check_deployment_async, holder_async, install_fencing_async, install_fencing_in_async,
    session_async, still_held_async,
};

/// The blocking driver this crate's `blocking` feature uses, for matching versions.
#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
pub use mysql;

/// The async driver this crate's `tokio` feature uses, for matching versions.
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use mysql_async;
