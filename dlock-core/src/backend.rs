//! What every backend's lock types share, written once for all of them: the accessors of the
//! connection a lock lives on, and the [`ConnectionLock`](crate::ConnectionLock) impl a pool
//! builds locks through. Backends expand these inside their own code; they are not for users.

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
