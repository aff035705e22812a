//! The statements of a session that many guards of an [`AsyncMultiplexedPool`] share: the
//! tries and releases that many tasks ask for while a statement is out go together in the
//! next one, on either backend. The server runs a session's statements one at a time, so one
//! statement for many costs it far less than one each; a statement, once sent, runs to its
//! end in a task of its own, whatever happens to the futures that asked for its entries.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use dlock_core::{Error, Result, SharedOp};
use tokio::sync::oneshot;

#[allow(unused_imports, reason = "named by the docs")]
use super::AsyncMultiplexedPool;

/// How a shared session sends one batch: the backend's `tokio::batch` over its connection.
#[allow(unreachable_pub)] // Bounds `Batched`, which users never name.
pub trait BatchTransport: Send + Sync + 'static {
    /// A key as the server names it.
    type Key: Clone + Eq + std::hash::Hash + Send + Sync + 'static;

    /// The most entries one statement carries.
    const MAX_BATCH: usize;

    /// Sends `ops` in one statement: one answer each, in order.
    fn run(&self, ops: &[(SharedOp, Self::Key)]) -> impl Future<Output = Result<Vec<bool>>> + Send;
}

/// A shared session's connection, and the entries waiting for its next statement.
#[allow(unreachable_pub)] // Named by `AsyncConnection::Shared`, which users never name.
pub struct Batched<T: BatchTransport> {
    pub(crate) transport: T,
    batch: Mutex<Batch<T::Key>>,
}

impl<T: BatchTransport> std::fmt::Debug for Batched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batched").finish_non_exhaustive()
    }
}

/// What waits for the next statement of a shared session.
struct Batch<K> {
    waiting: Vec<(SharedOp, K, oneshot::Sender<Result<bool>>)>,
    /// Whether a task is sending the session's statements now.
    sending: bool,
}

impl<T: BatchTransport> Batched<T> {
    pub(crate) fn new(transport: T) -> Self {
        Batched {
            transport,
            batch: Mutex::new(Batch {
                waiting: Vec::new(),
                sending: false,
            }),
        }
    }

    /// Does `op` on `key` in one of the session's next statements: a task sends statements
    /// while any entry waits, each with what waited for it.
    pub(crate) async fn send(self: &Arc<Self>, op: SharedOp, key: T::Key) -> Result<bool> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut batch = lock(&self.batch);
            batch.waiting.push((op, key, answer));
            !std::mem::replace(&mut batch.sending, true)
        };
        if start {
            tokio::spawn(Arc::clone(self).send_batches());
        }
        answered.await.unwrap_or_else(|_| {
            Err(Error::backend(
                "the task that sends a shared session's statements ended without an answer",
            ))
        })
    }

    /// Sends what waits, one statement at a time, until nothing does.
    async fn send_batches(self: Arc<Self>) {
        // Dropped with its runtime (it shuts down with a statement out), the task must not
        // leave the session thinking it still sends: what waits is answered with an error,
        // and the next operation starts a task of its own.
        let mut sending = StillSending(Some(&self.batch));
        loop {
            let waiting = {
                let mut batch = lock(&self.batch);
                if batch.waiting.is_empty() {
                    batch.sending = false;
                    sending.0 = None;
                    return;
                }
                std::mem::take(&mut batch.waiting)
            };
            for statement in statements(waiting, T::MAX_BATCH) {
                let ops: Vec<(SharedOp, T::Key)> = statement
                    .iter()
                    .map(|(op, key, _)| (*op, key.clone()))
                    .collect();
                // An answer nobody waits for any more is dropped: the pool settles what a
                // dropped try may have got (its own release if held).
                match self.transport.run(&ops).await {
                    Ok(answers) => {
                        for ((_, _, answer), granted) in statement.into_iter().zip(answers) {
                            let _ = answer.send(Ok(granted));
                        }
                    }
                    Err(error) => {
                        for (_, _, answer) in statement {
                            let _ = answer.send(Err(each(&error)));
                        }
                    }
                }
            }
        }
    }
}

/// `waiting` cut into statements of at most `max` entries, each naming a key once, in the
/// order asked: a try and the release of the same key (a dropped try's settlement) go in
/// two statements, one after the other, so that no answer rests on the order in which a
/// server evaluates one statement's columns.
fn statements<K: Clone + Eq + std::hash::Hash, A>(
    waiting: Vec<(SharedOp, K, A)>,
    max: usize,
) -> Vec<Vec<(SharedOp, K, A)>> {
    let mut statements = Vec::new();
    let mut current = Vec::new();
    let mut keys = HashSet::new();
    for entry in waiting {
        if current.len() == max || keys.contains(&entry.1) {
            statements.push(std::mem::take(&mut current));
            keys.clear();
        }
        keys.insert(entry.1.clone());
        current.push(entry);
    }
    if !current.is_empty() {
        statements.push(current);
    }
    statements
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding it; a poisoned state is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Set while a task sends a shared session's statements; if the task is dropped before it
/// is done, the session stops counting on it.
struct StillSending<'a, K>(Option<&'a Mutex<Batch<K>>>);

impl<K> Drop for StillSending<'_, K> {
    fn drop(&mut self) {
        if let Some(batch) = self.0 {
            let mut batch = lock(batch);
            batch.sending = false;
            // Their answers are dropped: each waiting caller gets an error.
            batch.waiting.clear();
        }
    }
}

/// `error`, for each of the entries of a statement that failed with it.
fn each(error: &Error) -> Error {
    match error {
        Error::LockTableFull { setting, .. } => Error::LockTableFull {
            setting,
            source: None,
        },
        Error::ConnectionLost { .. } => Error::ConnectionLost { source: None },
        other => Error::backend(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(statements: &[Vec<(SharedOp, u32, ())>]) -> Vec<Vec<u32>> {
        statements
            .iter()
            .map(|statement| statement.iter().map(|(_, key, _)| *key).collect())
            .collect()
    }

    #[test]
    fn a_key_named_twice_starts_a_second_statement() {
        let waiting = vec![
            (SharedOp::TryLock, 1, ()),
            (SharedOp::TryLock, 2, ()),
            (SharedOp::UnlockIfHeld, 1, ()),
            (SharedOp::Unlock, 3, ()),
        ];
        assert_eq!(
            keys(&statements(waiting, 100)),
            vec![vec![1, 2], vec![1, 3]]
        );
    }

    #[test]
    fn statements_hold_at_most_the_maximum() {
        let waiting: Vec<_> = (0..5).map(|key| (SharedOp::TryLock, key, ())).collect();
        assert_eq!(
            keys(&statements(waiting, 2)),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
    }

    #[test]
    fn nothing_waiting_is_no_statement() {
        assert!(statements(Vec::<(SharedOp, u32, ())>::new(), 10).is_empty());
    }
}
