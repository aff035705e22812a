#![doc = include_str!("../README.md")]
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
mod blocking;

#[cfg(feature = "tokio")]
mod asynchronous;

pub use dlock_core::*;

#[cfg(any(feature = "blocking", feature = "tokio"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "blocking", feature = "tokio"))))]
pub use sql::{Holder, Mode};

#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
pub use blocking::{
    PgConnection, PgLock, PgSession, PgXactLock, check_deployment, holders, install_fencing,
    install_fencing_in, refuse_inside_runtime, session, still_held,
};

#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use asynchronous::{
    AsyncPgConnection, AsyncPgLock, AsyncPgSession, AsyncPgXactLock, check_deployment_async,
    check_session_pooler_async, holders_async, install_fencing_async, install_fencing_in_async,
    session_async, still_held_async,
};

/// The blocking driver this crate's `blocking` feature uses, for matching versions.
#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
pub use postgres;

/// The async driver this crate's `tokio` feature uses, for matching versions.
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use tokio_postgres;
