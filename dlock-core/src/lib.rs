#![doc = include_str!("../README.md")]

mod backend;
mod deployment;
mod error;
mod fence;
mod key;
mod lock;
mod lost;
mod policy;
mod shared;
mod token;
#[doc(hidden)]
pub mod trace;
mod wait;

pub use deployment::Deployment;
pub use error::{BoxError, Error, Result, SessionEnded};
pub use fence::DEFAULT_FENCE_TABLE;
#[doc(hidden)]
pub use fence::fence_table_parts;
pub use key::{Key, PgKey};
pub use lock::{
    AsyncLock, ConnectionLock, IntoConnection, IntoConnectionAsync, Lock, REPLY_GRACE, SessionState,
};
pub use lost::{LostReason, SessionId};
pub use policy::{CustomPolicy, KeyPolicy, MYSQL_NAME_MAX_CHARS};
pub use shared::SharedOp;
#[doc(hidden)]
pub use token::attempt_token;
pub use wait::Wait;
