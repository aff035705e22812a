//! What a shared session's batch does with each of its keys.

/// What one entry of a batch on a shared session does with its key's exclusive session
/// lock: the backends' `tokio::batch` send many tasks' entries in one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedOp {
    /// Takes it if it is free: `true` when granted.
    TryLock,
    /// Releases one hold: `true` when the session held it.
    Unlock,
    /// Releases it if the session holds it: `true` when it did.
    UnlockIfHeld,
}
