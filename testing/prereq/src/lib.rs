//! Prerequisites of tests that need something from the host.
//!
//! The convention (tests/README.md): a test that needs root, a tool, a device, libvirt or
//! the guest images is marked `#[ignore = "needs …"]`, so a plain `cargo test` lists it as
//! ignored with its reason, and starts by calling the checks here. When it does run
//! (`scripts/test-all.sh` passes `--include-ignored`, after installing everything these
//! tests need), a missing prerequisite fails the test with what is missing and how to get
//! it; it never passes without having run.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Fails the calling test: `what` is missing.
#[track_caller]
pub fn missing(what: impl Display) -> ! {
    panic!(
        "prerequisite missing: {what} (scripts/install-deps.sh installs every tool the tests \
         need; the test command runs as root)"
    )
}

/// The repository's root (where `Cargo.lock` is).
pub fn workspace() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or(here)
        .to_path_buf()
}

/// The test runs as root.
#[track_caller]
pub fn root() {
    if !is_root() {
        missing("root (run the test as root)");
    }
}

/// Whether the test runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program` is on PATH; `package` is the Debian package that has it.
#[track_caller]
pub fn tool(program: &str, package: &str) {
    if !on_path(program) {
        missing(format!("{program} (Debian package {package})"));
    }
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v -- '{program}'")])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// `path` exists; `what` says what it is and how to get it.
#[track_caller]
pub fn path(path: impl AsRef<Path>, what: &str) -> PathBuf {
    let path = path.as_ref();
    if !path.exists() {
        missing(format!("{} ({what})", path.display()));
    }
    path.to_path_buf()
}

/// A binary this workspace builds: `$env` when set, else the newest
/// `target/debug/NAME` or `target/*/debug/NAME` (a cross-target build).
#[track_caller]
pub fn workspace_binary(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return self::path(PathBuf::from(path), &format!("{env} names it"));
    }
    let target = workspace().join("target");
    let nested = std::fs::read_dir(&target)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("debug").join(name));
    let newest = std::iter::once(target.join("debug").join(name))
        .chain(nested)
        .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
        .max();
    match newest {
        Some((_, path)) => path,
        None => missing(format!(
            "{name} under {} (cargo build -p {name}, or set {env})",
            target.display()
        )),
    }
}

/// libvirtd answers on its system socket (launcher/qemu/setup-libvirt.sh starts it).
#[track_caller]
pub fn libvirtd() {
    path(
        "/var/run/libvirt/libvirt-sock",
        "a running libvirtd: launcher/qemu/setup-libvirt.sh starts it",
    );
}

/// One of the guest image files (`vmlinuz`, `vmlinux`, `initrd`, `rootfs`) as recorded in
/// the manifest that `python3 images/build.py` writes, the one place that knows where the
/// image build puts them.
#[track_caller]
pub fn guest_image(name: &str) -> PathBuf {
    let manifest = workspace().join(".cache/images/manifest.json");
    let text = match std::fs::read_to_string(&manifest) {
        Ok(text) => text,
        Err(error) => missing(format!(
            "the guest images: cannot read {}: {error} (python3 images/build.py builds them)",
            manifest.display()
        )),
    };
    let parsed: serde_json::Value = match serde_json::from_str(&text) {
        Ok(value) => value,
        Err(error) => missing(format!(
            "the guest images: {} is not JSON: {error} (rebuild with python3 images/build.py)",
            manifest.display()
        )),
    };
    let Some(file) = parsed["files"][name]["path"].as_str() else {
        missing(format!(
            "guest image {name:?}: not in {} (python3 images/build.py builds it)",
            manifest.display()
        ))
    };
    path(
        file,
        "listed in .cache/images/manifest.json; python3 images/build.py rebuilds it",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_root_has_the_lock_file() {
        assert!(workspace().join("Cargo.lock").is_file());
        assert!(workspace().join("testing/prereq/Cargo.toml").is_file());
    }

    #[test]
    fn a_shell_builtin_tool_is_found_and_a_made_up_one_is_not() {
        assert!(on_path("sh"));
        assert!(!on_path("ironvisor-no-such-program"));
    }

    #[test]
    #[should_panic(
        expected = "prerequisite missing: ironvisor-no-such-program (Debian package none)"
    )]
    fn a_missing_tool_fails_the_test_and_names_its_package() {
        tool("ironvisor-no-such-program", "none");
    }

    #[test]
    #[should_panic(expected = "prerequisite missing: /nonexistent/ironvisor (made up)")]
    fn a_missing_path_fails_the_test_and_says_what_it_is() {
        path("/nonexistent/ironvisor", "made up");
    }
}
