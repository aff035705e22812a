#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! - `blocking` (feature `blocking`): `PgLock`, `PgSession`, `PgXactLock` and the
//!   helpers (`holders`, `session`, `still_held`, `check_deployment`, `install_fencing`) over
//!   the `postgres` client.
//! - `tokio` (feature `tokio`): `AsyncPgLock`, `AsyncPgSession`, `AsyncPgXactLock`
//!   and the same helpers over `tokio-postgres`.
//! - `sqlx` (feature `sqlx`): `SqlxPgLock`, a session lock over a sqlx connection,
//!   `SqlxPgSession`, a session holding any number of keys, and `SqlxPgXactLock`, a
//!   transaction lock taken through a sqlx transaction.
//!
//! The lock and session types are also at the crate root; the helpers live in their
//! flavour's module, under the same names in both.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "blocking", feature = "tokio"))]
mod deployment;
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

/// The sqlx flavour (feature `sqlx`): [`SqlxPgLock`], a session lock over a sqlx
/// connection, [`SqlxPgSession`], a session holding any number of keys, [`SqlxPgXactLock`],
/// a transaction lock taken through a sqlx transaction, and
/// helpers named as the tokio flavour's are.
#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub mod sqlx {
    pub use crate::over_sqlx::{
        SqlxPgConnection, SqlxPgLock, SqlxPgSession, SqlxPgXactLock, install_fencing, session,
        still_held,
    };
}

#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub use over_sqlx::{SqlxPgConnection, SqlxPgLock, SqlxPgSession, SqlxPgXactLock};

/// The tokio flavour (feature `tokio`): locks, sessions and helpers over `tokio-postgres`,
/// named as the blocking flavour's are.
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio {
    pub use crate::asynchronous::{
        AsyncPgConnection, AsyncPgLock, AsyncPgSession, AsyncPgXactLock, CancelKey, SideTls,
        batch_async as batch, cancel_key_async as cancel_key,
        check_deployment_async as check_deployment,
        check_session_pooler_async as check_session_pooler,
        holder_sessions_async as holder_sessions, holders_async as holders,
        install_fencing_async as install_fencing, install_fencing_in_async as install_fencing_in,
        session_async as session, still_held_async as still_held,
        try_lock_fenced_async as try_lock_fenced,
    };
    pub use crate::sql::{Holder, HolderSession, Mode};
    pub use dlock_core::SharedOp;
}

pub use dlock_core::*;

#[cfg(any(feature = "blocking", feature = "tokio"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "blocking", feature = "tokio"))))]
pub use sql::{Holder, HolderSession, Mode};

#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
pub use blocking::{PgConnection, PgLock, PgSession, PgXactLock};

// The helpers' earlier paths, kept working but not shown: they live in `blocking` and `tokio`.
#[cfg(feature = "blocking")]
#[doc(hidden)]
pub use blocking::{
    check_deployment, holders, install_fencing, install_fencing_in, refuse_inside_runtime, session,
    still_held,
};

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use asynchronous::{AsyncPgConnection, AsyncPgLock, AsyncPgSession, AsyncPgXactLock};

#[cfg(feature = "tokio")]
#[doc(hidden)]
pub use asynchronous::{
    check_deployment_async, check_session_pooler_async, holders_async, install_fencing_async,
    install_fencing_in_async, session_async, still_held_async,
};

/// The blocking driver this crate's `blocking` feature uses, for matching versions.
#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
pub use postgres;

/// The async driver this crate's `tokio` feature uses, for matching versions.
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use tokio_postgres;
