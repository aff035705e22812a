//! `cargo xtask publish-check`: `cargo publish --dry-run --workspace`, every package built from
//! its own tarball as crates.io would build it, after clearing what an earlier dry-run left.
//!
//! A dry run puts the workspace's packages in a local registry of its own and builds each
//! package against the others from there. Cargo takes a registry package of a given name and
//! version to never change, so it reuses what an earlier dry run unpacked (under
//! `$CARGO_HOME/registry/src`) or compiled (fingerprints marked with the version alone) for
//! `dlock-pool 0.1.0`, even when the workspace has changed since: a new crate is then checked
//! against old code. Those copies are only ever of this workspace's unpublished packages, in
//! registries named after a local path (their directories start with `-`), so they go first.

use std::path::PathBuf;
use std::process::Command;

use crate::{Result, cargo, project_root, target_dir};

/// The workspace's published packages.
const PACKAGES: &[&str] = &[
    "dlock-core",
    "dlock-postgres",
    "dlock-mysql",
    "dlock-pool",
    "dlock-cli",
];

/// `cargo xtask publish-check`.
pub(crate) fn command(args: &[String]) -> Result<()> {
    if let Some(other) = args.first() {
        return Err(format!("unknown argument {other:?}; usage: cargo xtask publish-check").into());
    }
    clear_earlier_dry_runs()?;
    let status = Command::new(cargo())
        .current_dir(project_root())
        .args(["publish", "--dry-run", "--workspace", "--allow-dirty"])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo publish --dry-run failed with {status}").into())
    }
}

/// Whether `name` is a directory of one of [`PACKAGES`] (`dlock-pool-0.1.0`,
/// `dlock-pool-0.1.0.crate`, `dlock-pool-<hash>`).
fn is_ours(name: &str) -> bool {
    PACKAGES.iter().any(|package| {
        name.strip_prefix(package)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_alphanumeric()))
    })
}

fn clear_earlier_dry_runs() -> Result<()> {
    let home = std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"),
        PathBuf::from,
    );
    for kind in ["src", "cache"] {
        let Ok(registries) = std::fs::read_dir(home.join("registry").join(kind)) else {
            continue;
        };
        for registry in registries.flatten() {
            // Local registries only: crates.io's directory is `index.crates.io-...`.
            if !registry.file_name().to_string_lossy().starts_with('-') {
                continue;
            }
            for entry in std::fs::read_dir(registry.path())?.flatten() {
                if is_ours(&entry.file_name().to_string_lossy()) {
                    let path = entry.path();
                    let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                }
            }
        }
    }
    // Compiled registry copies: their dep-info names sources under a local registry, whose
    // files carry the tarball's old times, so nothing looks newer than what was built.
    let debug = target_dir().join("debug");
    if let Ok(entries) = std::fs::read_dir(debug.join("deps")) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".d") else {
                continue;
            };
            let package = stem.replace('_', "-");
            if !is_ours(&package) {
                continue;
            }
            let from_a_registry = std::fs::read_to_string(entry.path())
                .is_ok_and(|text| text.contains("registry/src/-"));
            if from_a_registry {
                let _ = std::fs::remove_dir_all(debug.join(".fingerprint").join(&package));
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(target_dir().join("package"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_workspace_s_packages_are_cleared() {
        assert!(is_ours("dlock-pool-0.1.0"));
        assert!(is_ours("dlock-core-0.1.0.crate"));
        assert!(is_ours("dlock-cli-1e8a480c84fde557"));
        assert!(!is_ours("dlock-testkit-0.1.0"));
        assert!(!is_ours("dlock-workers-0.1.0"));
        assert!(!is_ours("tokio-1.54.1"));
    }
}
