//! `cargo xtask msrv`: checks each published crate's `rust-version` against what its
//! dependencies need, without a second toolchain (CI machines can fetch packages, not
//! toolchains).
//!
//! For each crate, a probe package outside the workspace declares the crate's `rust-version`
//! and depends on it by path with every feature. Cargo's MSRV-aware resolver then picks the
//! newest versions that declare no more than that, as it would for a user on that toolchain;
//! the pins the README gives are applied; and the highest `rust-version` any resolved package
//! declares, or is known to need without declaring it ([`UNDECLARED`]), must not exceed the
//! crate's.

use std::path::Path;
use std::process::Command;

use crate::{Result, cargo, project_root, target_dir};

/// The published crates.
const CRATES: &[&str] = &[
    "dlock-core",
    "dlock-postgres",
    "dlock-mysql",
    "dlock-pool",
    "dlock-cli",
];

/// Packages that need a newer Rust than they declare: name, version prefix, the Rust they
/// need, and why.
const UNDECLARED: &[(&str, &str, &str, &str)] = &[(
    "mysql_common",
    "0.37.",
    "1.88",
    "let-chains (1.88) and is_multiple_of (1.87)",
)];

/// Features that need a newer Rust than their crate, as the README's table says: crate,
/// feature, the Rust it needs, and why. The crate is probed without them at its own
/// `rust-version`, and once more with every feature at theirs.
const NEWER_FEATURES: &[(&str, &str, &str, &str)] = &[
    ("dlock-postgres", "sqlx", "1.94", "sqlx 0.9 declares 1.94"),
    ("dlock-mysql", "sqlx", "1.94", "sqlx 0.9 declares 1.94"),
    ("dlock-pool", "sqlx", "1.94", "sqlx 0.9 declares 1.94"),
];

/// The pins the README tells users below a dependency's needs (README, "Minimum Rust
/// versions"): package and version.
const PINS: &[(&str, &str)] = &[("scheduled-thread-pool", "0.2.7")];

/// `cargo xtask msrv`.
pub(crate) fn command(args: &[String]) -> Result<()> {
    if let Some(other) = args.first() {
        return Err(format!("unknown argument {other:?}; usage: cargo xtask msrv").into());
    }
    let root = project_root();
    let mut failures = Vec::new();
    for krate in CRATES {
        let declared = declared(&root, krate)?;
        let newer: Vec<&(&str, &str, &str, &str)> = NEWER_FEATURES
            .iter()
            .filter(|(name, ..)| name == krate)
            .collect();
        let skipped: Vec<&str> = newer.iter().map(|(_, feature, ..)| *feature).collect();
        let mut probes = vec![(declared.clone(), skipped, String::new())];
        for (_, feature, rust, why) in &newer {
            probes.push((
                (*rust).to_owned(),
                Vec::new(),
                format!(" with feature {feature} ({why})"),
            ));
        }
        for (promised, skipped, with) in probes {
            let (needed, by) = needed(&root, krate, &promised, &skipped)?;
            let verdict = if version(&needed) > version(&promised) {
                failures.push(format!(
                    "{krate}{with} promises rust-version {promised}, but {by} needs {needed}"
                ));
                "TOO LOW"
            } else {
                "ok"
            };
            eprintln!(
                "xtask: {krate}{with}: promises {promised}, needs {needed} ({by}): {verdict}"
            );
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; ").into())
    }
}

/// The `rust-version` `krate` declares.
fn declared(root: &Path, krate: &str) -> Result<String> {
    let metadata = metadata(root, &["--no-deps"])?;
    packages(&metadata)
        .iter()
        .find(|package| package["name"] == krate)
        .ok_or_else(|| format!("{krate} is not in the workspace"))?["rust_version"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{krate} declares no rust-version").into())
}

fn metadata(dir: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let output = Command::new(cargo())
        .current_dir(dir)
        .args(["metadata", "--format-version", "1"])
        .args(args)
        .output()?;
    if !output.status.success() {
        return Err(format!("cargo metadata failed in {}", dir.display()).into());
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn packages(metadata: &serde_json::Value) -> &[serde_json::Value] {
    metadata["packages"].as_array().map_or(&[], Vec::as_slice)
}

/// The highest Rust that `krate`'s dependencies need when resolved for `declared`, and
/// which package needs it.
fn needed(root: &Path, krate: &str, declared: &str, skipped: &[&str]) -> Result<(String, String)> {
    let probe = target_dir().join("msrv-probe").join(krate);
    if probe.exists() {
        std::fs::remove_dir_all(&probe)?;
    }
    std::fs::create_dir_all(probe.join("src"))?;
    std::fs::write(probe.join("src/main.rs"), "fn main() {}\n")?;
    std::fs::write(
        probe.join("Cargo.toml"),
        format!(
            "[package]\nname = \"msrv-probe\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
             rust-version = \"{declared}\"\npublish = false\n\n[workspace]\n\n\
             [dependencies]\n{krate} = {{ path = {:?}, features = [{}] }}\n",
            root.join(krate).display().to_string(),
            features(root, krate, skipped)?
        ),
    )?;
    run(&probe, &["generate-lockfile", "--quiet"])?;
    for (package, version) in PINS {
        let lock = std::fs::read_to_string(probe.join("Cargo.lock"))?;
        if lock.contains(&format!("name = \"{package}\"")) {
            run(
                &probe,
                &["update", "--quiet", "-p", package, "--precise", version],
            )?;
        }
    }
    let metadata = metadata(&probe, &[])?;
    let mut needed = ("1.0".to_owned(), "nothing".to_owned());
    for package in packages(&metadata) {
        let name = package["name"].as_str().unwrap_or_default();
        if name == "msrv-probe" {
            continue;
        }
        let version_text = package["version"].as_str().unwrap_or_default();
        let mut candidates: Vec<(String, String)> = Vec::new();
        if let Some(rust) = package["rust_version"].as_str() {
            candidates.push((rust.to_owned(), format!("{name} {version_text}")));
        }
        for (undeclared, prefix, rust, why) in UNDECLARED {
            if name == *undeclared && version_text.starts_with(prefix) {
                candidates.push(((*rust).to_owned(), format!("{name} {version_text} ({why})")));
            }
        }
        for (rust, by) in candidates {
            if version(&rust) > version(&needed.0) {
                needed = (rust, by);
            }
        }
    }
    Ok(needed)
}

/// `krate`'s features but `skipped`, as a TOML list's items.
fn features(root: &Path, krate: &str, skipped: &[&str]) -> Result<String> {
    let manifest = std::fs::read_to_string(root.join(krate).join("Cargo.toml"))?;
    let Some((_, section)) = manifest.split_once("[features]") else {
        return Ok(String::new());
    };
    let section = section.split("\n[").next().unwrap_or_default();
    let names: Vec<String> = section
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, _)| name.trim())
        .filter(|name| !name.is_empty() && !name.starts_with('#') && *name != "default")
        .filter(|name| !skipped.contains(name))
        .map(|name| format!("\"{name}\""))
        .collect();
    Ok(names.join(", "))
}

fn run(dir: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(cargo()).current_dir(dir).args(args).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo {} failed in {}", args.join(" "), dir.display()).into())
    }
}

/// A Rust version as comparable numbers.
fn version(text: &str) -> Vec<u32> {
    let mut parts: Vec<u32> = text
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect();
    // "1.94" and "1.94.0" are one version.
    parts.resize(parts.len().max(3), 0);
    parts
}
