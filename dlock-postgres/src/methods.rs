//! The builder and accessor methods that `PgLock` and `AsyncPgLock` share, written once: the
//! two types differ only in the flavour of their connection, not in these.

/// Expands, inside `impl<C> PgLock<C>` or `impl<C> AsyncPgLock<C>`, to the methods both
/// types have. Each type has the fields `conn: Option<C>` and `state: LockState`.
macro_rules! lock_methods {
    () => {
        /// Makes this a shared lock: any number of shared holders, no exclusive one. Affects
        /// the next acquire.
        pub fn shared(mut self) -> Self {
            self.state.mode = Mode::Shared;
            self
        }

        /// Uses `policy` to turn the key into a PostgreSQL key. Affects the next acquire.
        pub fn policy(mut self, policy: KeyPolicy) -> Self {
            self.state.policy = policy;
            self
        }

        /// The lock's mode.
        pub fn mode(&self) -> Mode {
            self.state.mode
        }

        /// The PostgreSQL key this lock takes, under its policy.
        ///
        /// # Errors
        ///
        /// What a custom key policy returns; built-in policies accept every key.
        pub fn pg_key(&self) -> Result<PgKey> {
            self.state.policy.pg_key(&self.state.key)
        }

        dlock_core::__connection_accessors!();

        /// The key and mode as this lock's spans show them.
        fn traced(&self) -> (&'static str, impl FnOnce() -> String + use<'_, C>) {
            let key = move || crate::sql::traced_key(&self.state.policy, &self.state.key);
            (self.state.mode.traced(), key)
        }
    };
}

pub(crate) use lock_methods;
