//! The builder and accessor methods that `PgLock` and `AsyncPgLock` share, written once: the
//! two types differ only in the flavour of their connection, not in these.

/// Expands, inside `impl<C> PgLock<C>` or `impl<C> AsyncPgLock<C>`, to the methods both
/// types have. Each type has the fields `conn: Option<C>` and `state: LockState`.
macro_rules! lock_methods {
    () => {
        /// Takes the state out, holds and all, leaving an empty one whose drop does nothing.
        fn detach(&mut self) -> LockState {
            self.state.detach()
        }

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
        /// The check (one or two round trips, once per server session: the lock statement
        /// after it marks the session, and a later lock object finds the mark in its first
        /// lock statement, which locks nowhere else) refuses a hot
        /// standby and engines whose locks exclude nobody (CockroachDB, YugabyteDB without
        /// advisory locks). On tokio-postgres it proves the connection direct by its cancel
        /// key and refuses any pooler unless vouched for (`trust_session_pooler`). The
        /// blocking client hides its cancel key, so `PgLock` infers instead: it refuses a
        /// pooler whose statements it sees move between server sessions, and cannot see one
        /// that never moves them; `check_deployment` with a second connection sees it at once.
        pub fn skip_deployment_check(mut self) -> Self {
            self.state.check_deployment = false;
            self
        }

        /// Makes every acquire issue a fencing token, in table `public.dlock_fence` (qualified,
        /// so every session counts in it whatever its `search_path`): read it with
        /// [`fencing_token`](Self::fencing_token) while the lock is held, and hand it to the
        /// resource the lock guards, which refuses any write with a token lower than the
        /// highest it has seen. Tokens of one key strictly increase across all holders,
        /// processes and server restarts. The token is bumped in the lock's own statement:
        /// no extra round trip. Create the table once with `install_fencing`; without it an
        /// acquire fails with [`Error::FencingNotInstalled`](dlock_core::Error::FencingNotInstalled)
        /// and holds nothing.
        ///
        /// The token commits with the statement that takes the lock, durably even where the
        /// session's `synchronous_commit` is off (the statement turns it on for its own
        /// transaction). Each token is also drawn from the table's clock, a sequence that no
        /// rollback takes back: a lock taken inside a transaction of yours that rolls back
        /// still used its token up, and the next holder's is higher. Tokens are therefore not
        /// consecutive per key, only increasing.
        pub fn fenced(mut self) -> Self {
            self.state.set_fence(Some(
                crate::sql::fence_table(crate::sql::DEFAULT_FENCE_TABLE)
                    .expect("the default fence table name is plain"),
            ));
            self
        }

        /// Like [`fenced`](Self::fenced), with the tokens in table `table` (`schema.name`),
        /// created by `install_fencing_in`. Name the schema: an unqualified name resolves
        /// through each session's `search_path`, and sessions that resolve it apart count
        /// apart.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidKey`](dlock_core::Error::InvalidKey) when `table` is not a plain
        /// table name (letters, digits and underscores).
        pub fn fenced_in(mut self, table: &str) -> Result<Self> {
            self.state.set_fence(Some(crate::sql::fence_table(table)?));
            Ok(self)
        }

        /// The fencing token of the lock while this object holds it, when it is
        /// [`fenced`](Self::fenced); `None` otherwise.
        pub fn fencing_token(&self) -> Option<u64> {
            self.state.token()
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
        fn traced(
            &self,
            operation: dlock_core::trace::TracedOperation,
        ) -> dlock_core::trace::Traced {
            dlock_core::trace::Traced::of(operation, "postgres", self.state.mode.traced(), || {
                crate::sql::traced_key(&self.state.policy, &self.state.key)
            })
        }
    };
}

pub(crate) use lock_methods;

/// Expands, inside `impl PgXactLock` or `impl AsyncPgXactLock`, to the builder methods both
/// have. Each type has the fields `key: Key`, `policy: KeyPolicy`, `mode: Mode` and
/// `options: XactOptions`.
macro_rules! xact_methods {
    () => {
        /// Makes this a shared lock.
        pub fn shared(mut self) -> Self {
            self.mode = Mode::Shared;
            self
        }

        /// Uses `policy` to turn the key into a PostgreSQL key.
        pub fn policy(mut self, policy: KeyPolicy) -> Self {
            self.policy = policy;
            self
        }

        /// The key this lock was created with.
        pub fn key(&self) -> &Key {
            &self.key
        }

        fn hold(&self) -> Result<Hold> {
            Ok(Hold {
                key: self.policy.pg_key(&self.key)?,
                mode: self.mode,
            })
        }

        /// Turns off the hot standby check each acquire makes otherwise, in the acquire's own
        /// round trip: a transaction lock on a standby is local to it and excludes nobody on
        /// the primary. Transaction locks need no pooler check: they work through a pooler in
        /// transaction mode.
        pub fn skip_deployment_check(mut self) -> Self {
            self.options.check_deployment = false;
            self
        }

        /// Makes every acquire issue a fencing token, in table `public.dlock_fence` (created once
        /// by `install_fencing`), bumped in the lock's own statement: read it with
        /// [`fencing_token`](Self::fencing_token).
        ///
        /// A transaction lock's token commits with the transaction, and is drawn from the
        /// table's clock, a sequence that no rollback takes back: if the transaction rolls
        /// back, its token is still used up, and the next holder's is higher.
        pub fn fenced(mut self) -> Self {
            self.options.fence = Some(
                crate::sql::fence_table(crate::sql::DEFAULT_FENCE_TABLE)
                    .expect("the default fence table name is plain"),
            );
            self
        }

        /// Like [`fenced`](Self::fenced), with the tokens in table `table` (`schema.name`;
        /// name the schema, as for session locks).
        ///
        /// # Errors
        ///
        /// [`Error::InvalidKey`](dlock_core::Error::InvalidKey) when `table` is not a plain
        /// table name (letters, digits and underscores).
        pub fn fenced_in(mut self, table: &str) -> Result<Self> {
            self.options.fence = Some(crate::sql::fence_table(table)?);
            Ok(self)
        }

        /// The fencing token of this object's last fenced acquire that got the lock: valid
        /// while that transaction lasts. `None` before one, or when not fenced.
        pub fn fencing_token(&self) -> Option<u64> {
            self.options.last_token()
        }
    };
}

pub(crate) use xact_methods;
