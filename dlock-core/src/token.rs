//! Numbers unique to one lock attempt, shared by the backends.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A number unique to one acquire attempt, across processes and time: backends tag a
/// statement with it so that another session can tell that very statement apart. Randomly
/// keyed hashing (the standard library seeds it from the operating system) of a counter, the
/// time and the process id.
pub fn attempt_token() -> u64 {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNT.fetch_add(1, Ordering::Relaxed));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_between_attempts() {
        let tokens: std::collections::HashSet<u64> = (0..10_000).map(|_| attempt_token()).collect();
        assert_eq!(tokens.len(), 10_000);
    }
}
