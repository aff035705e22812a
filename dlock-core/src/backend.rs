//! What every backend's lock types share, written once for all of them: the accessors of the
//! connection a lock lives on, and the [`ConnectionLock`](crate::ConnectionLock) impl a pool
//! builds locks through. Backends expand these inside their own code; they are not for users.

/// The hidden pair a pool over connections without identity (sqlx) names a lock's server
/// session by: `naming_session()` makes each grant read the session's name, which
/// `named_session()` then gives. The lock's state has `names_session` and `named()`.
#[doc(hidden)]
#[macro_export]
macro_rules! __naming_session {
    () => {
        /// Makes each grant name its server session for a watcher (`named_session`), in the
        /// lock statement where it can (no round trip of its own), else in a statement
        /// before the acquire returns. For pools over connections that carry no identity.
        #[doc(hidden)]
        pub fn naming_session(mut self) -> Self {
            self.state.names_session = true;
            self
        }

        /// The server session's name, once a grant of a lock made with `naming_session`
        /// read it.
        #[doc(hidden)]
        pub fn named_session(&self) -> Option<$crate::SessionId> {
            self.state.named()
        }
    };
}

/// Expands to the impls of a backend's sealed sqlx connection trait `$connection` (with
/// `connection`, `discard`, `session_facts` and `into_owned`) for the driver's connection
/// `$driver` of database `$database` owned, pooled and borrowed from its pool, for the boxed
/// connection a drop's task owns, and for a `&mut $session` (fields `conn: Option<C>` and
/// `facts: $facts`, method `connection`). The expanding module has `mod sealed` with the trait
/// `Sealed`, and depends on sqlx.
#[doc(hidden)]
#[macro_export]
macro_rules! __sqlx_connections {
    ($connection:ident, $driver:ty, $database:ty, $session:ident, $facts:ty) => {
        impl sealed::Sealed for $driver {}

        /// Dropping it closes it.
        impl $connection for $driver {
            fn connection(&mut self) -> &mut $driver {
                self
            }

            fn into_owned(self) -> ::std::result::Result<Box<dyn $connection>, Self> {
                Ok(Box::new(self))
            }
        }

        impl sealed::Sealed for ::sqlx::pool::PoolConnection<$database> {}

        impl $connection for ::sqlx::pool::PoolConnection<$database> {
            fn connection(&mut self) -> &mut $driver {
                self
            }

            fn discard(&mut self) {
                self.close_on_drop();
            }

            fn into_owned(self) -> ::std::result::Result<Box<dyn $connection>, Self> {
                Ok(Box::new(self))
            }
        }

        impl sealed::Sealed for &mut ::sqlx::pool::PoolConnection<$database> {}

        /// Borrowed: a lock dropped while it holds cannot move the connection into a task, so
        /// it marks it to be closed, not reused, once its owner drops it.
        impl $connection for &mut ::sqlx::pool::PoolConnection<$database> {
            fn connection(&mut self) -> &mut $driver {
                self
            }

            fn discard(&mut self) {
                self.close_on_drop();
            }

            fn into_owned(self) -> ::std::result::Result<Box<dyn $connection>, Self> {
                Err(self)
            }
        }

        impl sealed::Sealed for Box<dyn $connection> {}

        impl $connection for Box<dyn $connection> {
            fn connection(&mut self) -> &mut $driver {
                (**self).connection()
            }

            fn discard(&mut self) {
                (**self).discard();
            }

            fn session_facts(&mut self) -> Option<&mut $facts> {
                (**self).session_facts()
            }

            fn into_owned(self) -> ::std::result::Result<Box<dyn $connection>, Self> {
                Ok(self)
            }
        }

        impl<C: $connection> sealed::Sealed for &mut $session<C> {}

        /// A lock on the session: what it leaves owed is the session's.
        impl<C: $connection> $connection for &mut $session<C> {
            fn connection(&mut self) -> &mut $driver {
                $session::connection(self)
            }

            fn discard(&mut self) {
                if let Some(conn) = self.conn.as_mut() {
                    conn.discard();
                }
            }

            fn session_facts(&mut self) -> Option<&mut $facts> {
                Some(&mut self.facts)
            }

            fn into_owned(self) -> ::std::result::Result<Box<dyn $connection>, Self> {
                Err(self)
            }
        }
    };
}

/// Expands to `settle_in_task`, through which a sqlx lock or session dropped holding (or
/// owing) settles: the connection, as `$connection` (the backend's sealed sqlx connection
/// trait, with `into_owned` and `discard`), goes to a task on the current tokio runtime that
/// runs `settle` on it and then lets it go; a borrowed connection, or one outside a runtime,
/// is marked to be closed instead, which ends its session and frees its locks. The expanding
/// crate depends on tokio and tracing.
#[doc(hidden)]
#[macro_export]
macro_rules! __sqlx_settle_in_task {
    ($connection:ident) => {
        /// Hands a connection with something held or owed to a task on the current tokio
        /// runtime, which runs `settle` on it (releasing and paying, and marking the
        /// connection to be closed where that fails) and then lets it go. A borrowed
        /// connection, or one outside a runtime, is marked to be closed instead, which ends
        /// its session and frees its locks.
        fn settle_in_task<C, F>(
            conn: C,
            what: &dyn ::std::fmt::Display,
            settle: impl FnOnce(Box<dyn $connection>) -> F,
        ) where
            C: $connection,
            F: ::std::future::Future<Output = (Box<dyn $connection>, $crate::Result<()>)>
                + Send
                + 'static,
        {
            let mut owned = match conn.into_owned() {
                Ok(owned) => owned,
                Err(mut borrowed) => {
                    ::tracing::debug!(%what, "dropped holding or owing on a borrowed pooled connection: the connection is closed when its owner lets it go");
                    borrowed.discard();
                    return;
                }
            };
            let Ok(runtime) = ::tokio::runtime::Handle::try_current() else {
                ::tracing::warn!(%what, "dropped holding or owing outside a tokio runtime: the sqlx connection is closed, which frees its locks");
                owned.discard();
                return;
            };
            ::tracing::debug!(%what, "dropped holding or owing: a task releases and pays");
            let settled = settle(owned);
            runtime.spawn(async move {
                if let (_, Err(error)) = settled.await {
                    ::tracing::warn!(%error, "what a dropped sqlx lock or session held could not be released: its connection is closed, which frees its locks");
                }
            });
        }
    };
}

/// Expands, inside `impl<C> SomeLock<C>` of a type with a field `conn: Option<C>` (taken
/// only when the lock is consumed), to its `get_ref`, `get_mut` and `disown_connection`.
#[doc(hidden)]
#[macro_export]
macro_rules! __connection_accessors {
    () => {
        /// The connection as it was given (a pooled connection, a box, a borrow), for what
        /// its own type offers.
        pub fn get_ref(&self) -> &C {
            self.conn
                .as_ref()
                .expect("the connection is only taken when the lock is consumed")
        }

        /// The connection as it was given, mutably. Do not release the lock through it with
        /// raw SQL: the lock would no longer know what it holds.
        pub fn get_mut(&mut self) -> &mut C {
            self.conn
                .as_mut()
                .expect("the connection is only taken when the lock is consumed")
        }

        /// Takes the connection out, so that the lock's drop finds none and sends nothing.
        fn disown_connection(&mut self) -> C {
            self.conn
                .take()
                .expect("the connection is only taken when the lock is consumed")
        }
    };
}

/// Implements [`ConnectionLock`](crate::ConnectionLock) and, for `blocking`,
/// [`IntoConnection`](crate::IntoConnection) or, for `async`,
/// [`IntoConnectionAsync`](crate::IntoConnectionAsync) for `$lock<C>` over connections that
/// implement `$bound`. The type has `$lock::new(conn, key)`, `.policy(policy)`, `get_ref`,
/// `get_mut` and `into_inner`; `$check` is a function from `(&KeyPolicy, &Key)` to the key in
/// the backend's form.
#[doc(hidden)]
#[macro_export]
macro_rules! __connection_lock {
    ($lock:ident, $bound:path, $check:path, blocking) => {
        $crate::__connection_lock!($lock, $bound, $check);

        impl<C: $bound> $crate::IntoConnection<C> for $lock<C> {
            fn into_connection(self) -> (C, $crate::Result<()>) {
                self.into_inner()
            }
        }
    };
    ($lock:ident, $bound:path, $check:path, async) => {
        $crate::__connection_lock!($lock, $bound, $check);

        impl<C: $bound> $crate::IntoConnectionAsync<C> for $lock<C> {
            fn into_connection(
                self,
            ) -> impl ::std::future::Future<Output = (C, $crate::Result<()>)> + Send {
                self.into_inner()
            }
        }
    };
    ($lock:ident, $bound:path, $check:path) => {
        impl<C: $bound> $crate::ConnectionLock<C> for $lock<C> {
            fn on_connection(conn: C, key: $crate::Key, policy: $crate::KeyPolicy) -> Self {
                $lock::new(conn, key).policy(policy).skip_deployment_check()
            }

            fn check_key(policy: &$crate::KeyPolicy, key: &$crate::Key) -> $crate::Result<()> {
                $check(policy, key).map(drop)
            }

            fn connection(&self) -> &C {
                self.get_ref()
            }

            fn connection_mut(&mut self) -> &mut C {
                self.get_mut()
            }

            fn fenced(self) -> Self {
                $lock::fenced(self)
            }

            fn fenced_in(self, table: &str) -> $crate::Result<Self> {
                $lock::fenced_in(self, table)
            }

            fn fencing_token(&self) -> Option<u64> {
                $lock::fencing_token(self)
            }

            fn shared(self) -> Self {
                $lock::shared(self)
            }

            fn take_session_state(&mut self) -> Option<$crate::SessionState> {
                self.state.take_session_state()
            }

            fn with_session_state(mut self, state: $crate::SessionState) -> Self {
                self.state.with_session_state(state);
                self
            }

            fn disown(mut self) -> C {
                self.disown_connection()
            }
        }
    };
}

/// Expands, inside `impl<C> SomeSession<C>` of a session type whose one-key lock on it is
/// `$lock` (`PgLock<&mut Self>`), to the methods through which it holds any number of keys: `policy`, `acquire`, `try_acquire`, `acquire_timeout`,
/// `release` (any order) and `held`. The type has the fields `policy: KeyPolicy` and
/// `holds: Vec<LockState>` (each state with a `key`), and the methods `lock(&mut self, key)`
/// (a one-key lock on the session) and `with_state(&mut self, state)` (the same over a state
/// the session holds); the lock type has `detach(&mut self) -> LockState`, which takes its
/// state out and leaves one whose drop does nothing.
#[doc(hidden)]
#[macro_export]
macro_rules! __session_methods {
    (blocking, $lock:ty) => {
        $crate::__session_methods!(@shared, $lock);

        /// Waits, in the server, until the session holds `key`'s lock.
        ///
        /// # Errors
        ///
        /// As [`Lock::acquire`]($crate::Lock::acquire).
        pub fn acquire(&mut self, key: impl Into<$crate::Key>) -> $crate::Result<()> {
            self.take(key.into(), $crate::Wait::Forever).map(drop)
        }

        /// Takes `key`'s lock if it is free: `Ok(false)` when another session holds it.
        ///
        /// # Errors
        ///
        /// As [`Lock::try_acquire`]($crate::Lock::try_acquire).
        pub fn try_acquire(&mut self, key: impl Into<$crate::Key>) -> $crate::Result<bool> {
            self.take(key.into(), $crate::Wait::Never)
        }

        /// Waits at most `timeout` for `key`'s lock.
        ///
        /// # Errors
        ///
        /// As [`Lock::acquire_timeout`]($crate::Lock::acquire_timeout).
        pub fn acquire_timeout(
            &mut self,
            key: impl Into<$crate::Key>,
            timeout: ::std::time::Duration,
        ) -> $crate::Result<bool> {
            self.take(key.into(), $crate::Wait::for_timeout(timeout))
        }

        /// Gives back one hold of `key` that the session's own methods took (the latest);
        /// the session's other holds, of this key or others, stay.
        ///
        /// # Errors
        ///
        /// [`Error::NotAcquired`]($crate::Error::NotAcquired) when the session's methods hold
        /// no such key; otherwise as [`Lock::release`]($crate::Lock::release). A release the
        /// server refused (an aborted transaction) keeps the key held: release it again after
        /// your `ROLLBACK`.
        pub fn release(&mut self, key: impl Into<$crate::Key>) -> $crate::Result<()> {
            let (at, mut lock) = self.take_hold(key.into())?;
            let released = $crate::Lock::release(&mut lock);
            if $crate::Lock::is_acquired(&lock) {
                let state = lock.detach();
                drop(lock);
                self.holds.insert(at, state);
            }
            released
        }

        fn take(&mut self, key: $crate::Key, wait: $crate::Wait) -> $crate::Result<bool> {
            let policy = self.policy.clone();
            let mut lock = self.lock(key).policy(policy);
            let taken = lock.take(wait)?;
            if taken {
                let state = lock.detach();
                drop(lock);
                self.holds.push(state);
            }
            Ok(taken)
        }
    };
    (async, $lock:ty) => {
        $crate::__session_methods!(@shared, $lock);

        /// Waits, in the server, until the session holds `key`'s lock.
        ///
        /// # Errors
        ///
        /// As [`AsyncLock::acquire`]($crate::AsyncLock::acquire).
        ///
        /// # Cancel Safety
        ///
        /// As the one-key lock's acquire: a dropped wait leaves nothing held that the session
        /// does not settle.
        pub async fn acquire(&mut self, key: impl Into<$crate::Key>) -> $crate::Result<()> {
            self.take(key.into(), $crate::Wait::Forever).await.map(drop)
        }

        /// Takes `key`'s lock if it is free: `Ok(false)` when another session holds it.
        ///
        /// # Errors
        ///
        /// As [`AsyncLock::try_acquire`]($crate::AsyncLock::try_acquire).
        ///
        /// # Cancel Safety
        ///
        /// As the one-key lock's.
        pub async fn try_acquire(&mut self, key: impl Into<$crate::Key>) -> $crate::Result<bool> {
            self.take(key.into(), $crate::Wait::Never).await
        }

        /// Waits at most `timeout` for `key`'s lock.
        ///
        /// # Errors
        ///
        /// As [`AsyncLock::acquire_timeout`]($crate::AsyncLock::acquire_timeout).
        ///
        /// # Cancel Safety
        ///
        /// As the one-key lock's.
        pub async fn acquire_timeout(
            &mut self,
            key: impl Into<$crate::Key>,
            timeout: ::std::time::Duration,
        ) -> $crate::Result<bool> {
            self.take(key.into(), $crate::Wait::For(timeout)).await
        }

        /// Gives back one hold of `key` that the session's own methods took (the latest);
        /// the session's other holds, of this key or others, stay.
        ///
        /// # Errors
        ///
        /// [`Error::NotAcquired`]($crate::Error::NotAcquired) when the session's methods hold
        /// no such key; otherwise as [`AsyncLock::release`]($crate::AsyncLock::release).
        ///
        /// # Cancel Safety
        ///
        /// As the one-key lock's release: once polled, the hold counts as given back, and
        /// what its unlock leaves is the session's to settle.
        pub async fn release(&mut self, key: impl Into<$crate::Key>) -> $crate::Result<()> {
            let (at, mut lock) = self.take_hold(key.into())?;
            let released = $crate::AsyncLock::release(&mut lock).await;
            if $crate::AsyncLock::is_acquired(&lock) {
                let state = lock.detach();
                drop(lock);
                self.holds.insert(at, state);
            }
            released
        }

        async fn take(&mut self, key: $crate::Key, wait: $crate::Wait) -> $crate::Result<bool> {
            let policy = self.policy.clone();
            let mut lock = self.lock(key).policy(policy);
            let taken = match wait {
                $crate::Wait::Forever => $crate::AsyncLock::acquire(&mut lock).await.map(|()| true)?,
                $crate::Wait::Never => $crate::AsyncLock::try_acquire(&mut lock).await?,
                $crate::Wait::For(timeout) => {
                    $crate::AsyncLock::acquire_timeout(&mut lock, timeout).await?
                }
            };
            if taken {
                let state = lock.detach();
                drop(lock);
                self.holds.push(state);
            }
            Ok(taken)
        }
    };
    (@shared, $lock:ty) => {
        /// Uses `policy` to turn the keys of the session's own methods into the backend's.
        pub fn policy(mut self, policy: $crate::KeyPolicy) -> Self {
            self.policy = policy;
            self
        }

        /// The keys the session's own methods hold, oldest first (a key held twice twice).
        pub fn held(&self) -> impl Iterator<Item = &$crate::Key> {
            self.holds.iter().map(|state| &state.key)
        }

        /// The latest hold of `key` taken out of the session's holds, with a lock over it.
        fn take_hold(&mut self, key: $crate::Key) -> $crate::Result<(usize, $lock)> {
            let at = self
                .holds
                .iter()
                .rposition(|state| state.key == key)
                .ok_or($crate::Error::NotAcquired)?;
            let state = self.holds.remove(at);
            Ok((at, self.with_state(state)))
        }
    };
}
