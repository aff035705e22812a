//! Fence table names, which every backend and pool checks alike.

use crate::{Error, Result};

/// The name of the table fencing tokens live in unless a lock or pool names another. Each
/// backend qualifies it with a fixed place, so that every session counts in the same table
/// whatever its `search_path` or default database: `public.dlock_fence` on PostgreSQL (the
/// lock is database-wide), `dlock.dlock_fence` on MySQL and MariaDB (the lock is
/// server-wide).
pub const DEFAULT_FENCE_TABLE: &str = "dlock_fence";

/// The parts of a fence table name, `name` or `schema.name` (on MySQL `database.name`), each a
/// plain identifier: letters, digits and underscores, not starting with a digit, at most 63
/// bytes. Each backend quotes the parts its own way.
///
/// # Errors
///
/// [`Error::InvalidKey`] when the name is not of that form.
#[doc(hidden)]
pub fn fence_table_parts(name: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = name.split('.').collect();
    let plain = |part: &&str| {
        !part.is_empty()
            && part.len() <= 63
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !part.starts_with(|c: char| c.is_ascii_digit())
    };
    if parts.len() > 2 || !parts.iter().all(plain) {
        return Err(Error::invalid_key(format!(
            "the fence table name {name:?} is not a plain table name: use letters, digits and \
             underscores, optionally with a schema (schema.table)"
        )));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_others_are_refused() {
        assert_eq!(fence_table_parts("dlock_fence").unwrap(), ["dlock_fence"]);
        assert_eq!(
            fence_table_parts("ops.fence_2").unwrap(),
            ["ops", "fence_2"]
        );
        for bad in [
            "", "a.b.c", "no such", "x;drop", "`q`", "\"q\"", "1table", "a.",
        ] {
            assert!(fence_table_parts(bad).is_err(), "{bad:?}");
        }
    }
}
