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

        /// Turns off the deployment check that the first acquire runs otherwise, at the risk
        /// of two holders at once: through a pooler in transaction or statement mode, or on a
        /// hot standby, a session lock excludes nobody. For a connection checked already
        /// (dlock-pool's, or one you passed to `check_deployment`), or a deployment you
        /// know better than the check.
        ///
        /// The check (one or two round trips, before the first acquire only) refuses a hot
        /// standby always, and a transaction pooler when the connection's statements move
        /// between server sessions; one connection alone cannot see a pooler that never moves
        /// them. `check_deployment` with a second connection sees it at once.
        pub fn skip_deployment_check(mut self) -> Self {
            self.state.check_deployment = false;
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
