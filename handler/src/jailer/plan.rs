//! What goes into a launcher's jail, from its `LaunchConfig` (node agent side).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ironvisor_diskimage::{DiskFormat, DiskImageError};
use ironvisor_launcher_api::config::{ImageFormat, LaunchConfig};

use super::JailPlan;

/// The KVM device every launcher opens.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// The tun device a launcher with a network interface opens.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// The longest qcow2 backing chain the jail follows (overlays the node agent makes are
/// backed by one base, which has no backing file of its own).
pub const MAX_BACKING_DEPTH: usize = 8;

/// Why a jail plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The launcher would run as root.
    #[error("the launcher's user must not be root (uid {uid}, gid {gid})")]
    Root {
        /// The user.
        uid: u32,
        /// The group.
        gid: u32,
    },
    /// A path in the configuration is relative: the jail mirrors absolute host paths.
    #[error("{what} {path}: the jail needs an absolute path")]
    Relative {
        /// What the path is.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A disk's header could not be read to follow its backing chain.
    #[error("disk {path}: cannot read its qcow2 backing chain: {source}")]
    Backing {
        /// The image whose header was read.
        path: PathBuf,
        /// The cause.
        #[source]
        source: DiskImageError,
    },
    /// The backing chain is longer than [`MAX_BACKING_DEPTH`] or loops.
    #[error("disk {path}: its qcow2 backing chain {problem}")]
    Chain {
        /// The disk.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The plan for the launcher of `config`, started from `program` with `--config
/// config_file`, as `uid`/`gid`, its jail's tmpfs mounted on `root`.
#[tracing::instrument(level = "debug", skip(config), fields(vm = %config.name))]
pub fn plan_for(
    config: &LaunchConfig,
    program: &Path,
    config_file: &Path,
    (uid, gid): (u32, u32),
    root: &Path,
) -> Result<JailPlan, PlanError> {
    if uid == 0 || gid == 0 {
        return Err(PlanError::Root { uid, gid });
    }
    let mut read_only = BTreeSet::new();
    let mut writable = BTreeSet::new();
    read_only.insert(absolute("the launcher configuration", config_file)?);
    if let Some(kernel) = &config.kernel {
        read_only.insert(absolute("the kernel", &kernel.path)?);
        if let Some(initrd) = &kernel.initrd {
            read_only.insert(absolute("the initrd", initrd)?);
        }
    }
    for disk in &config.disks {
        let path = absolute("disk", &disk.path)?;
        if disk.format == ImageFormat::Qcow2 {
            read_only.extend(backing_chain(&path)?);
        }
        if disk.read_only {
            read_only.insert(path);
        } else {
            writable.insert(path);
        }
    }
    // A file the guest writes through one disk is bound read-write once.
    read_only.retain(|path| !writable.contains(path));
    let sockets = [
        config.api_socket.as_deref(),
        config.console.socket.as_deref(),
        config.agent_socket.as_deref(),
    ];
    let mut socket_dirs = BTreeSet::new();
    for socket in sockets.into_iter().flatten() {
        let socket = absolute("socket", socket)?;
        if let Some(dir) = socket.parent() {
            socket_dirs.insert(dir.to_path_buf());
        }
    }
    let mut devices = vec![PathBuf::from(KVM_DEVICE)];
    if !config.nets.is_empty() {
        devices.push(PathBuf::from(TUN_DEVICE));
    }
    Ok(JailPlan {
        uid,
        gid,
        root: root.to_path_buf(),
        program: absolute("the launcher", program)?,
        read_only: read_only.into_iter().collect(),
        writable: writable.into_iter().collect(),
        socket_dirs: socket_dirs.into_iter().collect(),
        devices,
    })
}

fn absolute(what: &'static str, path: &Path) -> Result<PathBuf, PlanError> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Err(PlanError::Relative {
            what,
            path: path.to_path_buf(),
        })
    }
}

/// The files a qcow2 image's header names as backing file, and theirs, in order.
fn backing_chain(image: &Path) -> Result<Vec<PathBuf>, PlanError> {
    let mut chain: Vec<PathBuf> = Vec::new();
    let mut current = image.to_path_buf();
    loop {
        let info = ironvisor_diskimage::inspect(&current).map_err(|source| PlanError::Backing {
            path: current.clone(),
            source,
        })?;
        let Some(backing) = info
            .backing_file
            .filter(|_| info.format == DiskFormat::Qcow2)
        else {
            return Ok(chain);
        };
        // A relative backing file is relative to the image naming it.
        let next = current
            .parent()
            .unwrap_or(Path::new("/"))
            .join(Path::new(&backing));
        if next == image || chain.contains(&next) {
            return Err(PlanError::Chain {
                path: image.to_path_buf(),
                problem: format!("loops back to {}", next.display()),
            });
        }
        chain.push(next.clone());
        if chain.len() > MAX_BACKING_DEPTH {
            return Err(PlanError::Chain {
                path: image.to_path_buf(),
                problem: format!("is longer than {MAX_BACKING_DEPTH} images"),
            });
        }
        current = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvisor_launcher_api::config::{DiskConfig, KernelConfig, NetConfig};

    fn config(dir: &Path) -> LaunchConfig {
        let mut config: LaunchConfig =
            serde_json::from_str(r#"{"name":"vm1"}"#).expect("minimal config");
        config.kernel = Some(KernelConfig {
            path: "/store/vmlinux".into(),
            initrd: Some("/store/initrd".into()),
            cmdline: String::new(),
        });
        config.api_socket = Some(dir.join("sockets/api.sock"));
        config.console.socket = Some(dir.join("sockets/console.sock"));
        config
    }

    fn disk(path: &Path, format: ImageFormat, read_only: bool) -> DiskConfig {
        DiskConfig {
            id: path.display().to_string(),
            path: path.to_path_buf(),
            format,
            read_only,
            serial: None,
            rate_limit: None,
        }
    }

    fn raw_image(path: &Path) {
        std::fs::File::create(path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
    }

    #[test]
    fn the_plan_lists_every_file_the_launcher_opens_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.img");
        let overlay = dir.path().join("root.overlay.qcow2");
        raw_image(&base);
        ironvisor_diskimage::create_overlay(&overlay, &base, DiskFormat::Raw).unwrap();
        let seed = dir.path().join("cidata.img");
        std::fs::write(&seed, b"seed").unwrap();
        let mut config = config(dir.path());
        config.disks = vec![
            disk(&overlay, ImageFormat::Qcow2, false),
            disk(&seed, ImageFormat::Raw, true),
        ];
        config.nets = vec![NetConfig {
            id: "net0".into(),
            tap: "tap0".into(),
            mac: None,
            rate_limit: None,
        }];
        let plan = plan_for(
            &config,
            Path::new("/usr/bin/ironvisor-launcher"),
            &dir.path().join("launcher.json"),
            (1_800_000_123, 1_800_000_123),
            &dir.path().join("jail"),
        )
        .unwrap();
        let mut expected_read_only = vec![
            PathBuf::from("/store/initrd"),
            PathBuf::from("/store/vmlinux"),
            base,
            seed,
            dir.path().join("launcher.json"),
        ];
        expected_read_only.sort();
        assert_eq!(plan.read_only, expected_read_only);
        assert_eq!(plan.writable, vec![overlay]);
        assert_eq!(plan.socket_dirs, vec![dir.path().join("sockets")]);
        assert_eq!(
            plan.devices,
            vec![PathBuf::from(KVM_DEVICE), PathBuf::from(TUN_DEVICE)]
        );
        assert_eq!(plan.program, Path::new("/usr/bin/ironvisor-launcher"));
    }

    #[test]
    fn root_relative_paths_and_looping_chains_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let program = Path::new("/bin/launcher");
        let file = dir.path().join("launcher.json");
        let root = dir.path().join("jail");
        let err = plan_for(&config, program, &file, (0, 5), &root).unwrap_err();
        assert!(err.to_string().contains("must not be root"), "{err}");
        let err = plan_for(&config, Path::new("launcher"), &file, (5, 5), &root).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");

        // a.qcow2 backed by b.qcow2 backed by a.qcow2.
        let (a, b) = (dir.path().join("a.qcow2"), dir.path().join("b.qcow2"));
        let raw = dir.path().join("raw.img");
        raw_image(&raw);
        ironvisor_diskimage::create_overlay(&b, &raw, DiskFormat::Raw).unwrap();
        ironvisor_diskimage::create_overlay(&a, &b, DiskFormat::Qcow2).unwrap();
        std::fs::remove_file(&b).unwrap();
        ironvisor_diskimage::create_overlay(&b, &a, DiskFormat::Qcow2).unwrap();
        let mut looping = config.clone();
        looping.disks = vec![disk(&a, ImageFormat::Qcow2, false)];
        let err = plan_for(&looping, program, &file, (5, 5), &root).unwrap_err();
        assert!(err.to_string().contains("loops back"), "{err}");
    }
}
