//! One cgroup per VM, so that the node agent owns every process of a VM (the monitor,
//! the launcher and anything they start) and can kill them all at once.
//!
//! Two layouts are handled:
//!
//! - **cgroup v2** (unified hierarchy with controllers, `/sys/fs/cgroup/cgroup.controllers`
//!   exists): one directory `<root>/<parent>/<ns>_<name>`; killing writes `cgroup.kill`.
//! - **cgroup v1**: the same path in the `pids` and `memory` hierarchies
//!   (`/sys/fs/cgroup/pids/...`, `/sys/fs/cgroup/memory/...`); killing signals every pid
//!   listed in `cgroup.procs` until none is left.
//!
//! The parent (`--cgroup-parent`, default `/ironvisor`) is taken from the root of each
//! hierarchy when absolute. A relative parent is placed under the node agent's own
//! cgroup in that hierarchy (read from `/proc/self/cgroup`), so that the limits and the
//! accounting of whatever runs the agent (a container, a systemd unit, a CI job) also
//! cover its VMs.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

use crate::records::VmKey;

/// Where cgroup file systems are mounted.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Default parent of the VM cgroups.
pub const DEFAULT_CGROUP_PARENT: &str = "/ironvisor";
/// The v1 hierarchies a VM cgroup is created in.
pub const V1_HIERARCHIES: [&str; 2] = ["pids", "memory"];

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither a v2 unified hierarchy nor the v1 `pids`/`memory` hierarchies were found.
    #[error(
        "no usable cgroup hierarchy under {root}: expected {root}/cgroup.controllers (v2) or \
         {root}/pids and {root}/memory (v1)"
    )]
    NoHierarchy {
        /// The cgroup mount root.
        root: PathBuf,
    },
    /// The VM cgroup directory could not be created.
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        /// The cgroup directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A process could not be moved into the cgroup.
    #[error("cannot move process {pid} into cgroup {path}: {source}")]
    Join {
        /// The cgroup directory.
        path: PathBuf,
        /// The process.
        pid: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The member list could not be read.
    #[error("cannot list the processes of cgroup {path}: {source}")]
    List {
        /// The cgroup directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Processes were still alive after being killed.
    #[error("cgroup {path} still has processes {pids:?} after SIGKILL")]
    Survivors {
        /// The cgroup directory.
        path: PathBuf,
        /// The processes left.
        pids: Vec<i32>,
    },
    /// A limit could not be set (for v2: the parent's controllers could not be enabled).
    #[error("cannot set {file} in cgroup {path}: {source}{hint}")]
    Limit {
        /// The cgroup directory.
        path: PathBuf,
        /// The control file.
        file: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
        /// What to do about it, when known.
        hint: &'static str,
    },
    /// The (empty) cgroup directory could not be removed.
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        /// The cgroup directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Which cgroup version the host uses, and where VM cgroups go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLayout {
    /// Where the hierarchies are mounted.
    root: PathBuf,
    /// Parent directories of the VM cgroups, one per hierarchy used.
    parents: Vec<PathBuf>,
    /// True for the v2 unified hierarchy.
    unified: bool,
}

/// The most a VM's processes (its monitor, its launcher and whatever they start) may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// `memory.max` (v2) or `memory.limit_in_bytes` (v1).
    pub memory_bytes: u64,
    /// `pids.max`: processes and threads.
    pub pids: u32,
}

/// Memory a VM's cgroup allows beyond guest memory: ten times the KVM launcher's largest
/// measured overhead (6.4 MiB Rss beyond guest memory, tests/README.md), the monitor, and
/// room for the page cache of its disk I/O, which the kernel reclaims at the limit.
pub const MEMORY_OVERHEAD_BYTES: u64 = 64 << 20;
/// Tasks a VM's cgroup allows beyond one per vCPU: the monitor, the socket guardian, the
/// launcher's main and runtime threads, one worker per device and the short-lived boot
/// threads (a 1-vCPU VM runs about ten).
pub const PIDS_OVERHEAD: u32 = 128;

impl CgroupLimits {
    /// The limits of a VM with `vcpus` vCPUs and `memory_mib` MiB of guest memory.
    pub fn for_vm(vcpus: u32, memory_mib: u64) -> Self {
        Self {
            memory_bytes: (memory_mib << 20).saturating_add(MEMORY_OVERHEAD_BYTES),
            pids: vcpus.saturating_add(PIDS_OVERHEAD),
        }
    }
}

impl CgroupLayout {
    /// Detects the layout under `root` (normally [`DEFAULT_CGROUP_ROOT`]) and resolves
    /// `parent` in each hierarchy (see the module documentation). `self_cgroup` is the
    /// text of `/proc/self/cgroup`, used for a relative parent.
    pub fn detect(root: &Path, parent: &str, self_cgroup: &str) -> Result<Self, CgroupError> {
        if root.join("cgroup.controllers").is_file() {
            let base = resolve_parent(root, parent, own_cgroup(self_cgroup, None));
            return Ok(Self {
                root: root.to_path_buf(),
                parents: vec![base],
                unified: true,
            });
        }
        let mut parents = Vec::new();
        for hierarchy in V1_HIERARCHIES {
            let mount = root.join(hierarchy);
            if !mount.join("cgroup.procs").is_file() {
                return Err(CgroupError::NoHierarchy {
                    root: root.to_path_buf(),
                });
            }
            parents.push(resolve_parent(
                &mount,
                parent,
                own_cgroup(self_cgroup, Some(hierarchy)),
            ));
        }
        Ok(Self {
            root: root.to_path_buf(),
            parents,
            unified: false,
        })
    }

    /// Detects the layout of this host, reading `/proc/self/cgroup`.
    pub fn detect_host(parent: &str) -> Result<Self, CgroupError> {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::detect(Path::new(DEFAULT_CGROUP_ROOT), parent, &own)
    }

    /// The parent directories of the VM cgroups, one per hierarchy used.
    pub fn parents(&self) -> &[PathBuf] {
        &self.parents
    }

    /// Whether this is the v2 unified hierarchy.
    pub fn is_unified(&self) -> bool {
        self.unified
    }

    /// The VM's cgroup directories (one per hierarchy), not necessarily existing.
    pub fn paths_for(&self, key: &VmKey) -> Vec<PathBuf> {
        self.parents
            .iter()
            .map(|p| p.join(key.flat_name()))
            .collect()
    }

    /// Creates the VM's cgroup directories.
    pub fn create(&self, key: &VmKey) -> Result<Vec<PathBuf>, CgroupError> {
        let paths = self.paths_for(key);
        for path in &paths {
            std::fs::create_dir_all(path).map_err(|source| CgroupError::Create {
                path: path.clone(),
                source,
            })?;
        }
        debug!(vm = %key, ?paths, "cgroups ready");
        Ok(paths)
    }

    /// Holds the VM's (existing) cgroups to `limits`. For v2 the memory and pids
    /// controllers are first enabled from the root down to the VM's parent.
    #[tracing::instrument(level = "debug", skip(self))]
    pub fn set_limits(&self, key: &VmKey, limits: CgroupLimits) -> Result<(), CgroupError> {
        let memory = limits.memory_bytes.to_string();
        let pids = limits.pids.to_string();
        if self.unified {
            for parent in &self.parents {
                self.enable_controllers(parent)?;
            }
            for path in self.paths_for(key) {
                write_limit(&path, "memory.max", &memory)?;
                write_limit(&path, "pids.max", &pids)?;
            }
        } else {
            for (hierarchy, path) in V1_HIERARCHIES.iter().zip(self.paths_for(key)) {
                match *hierarchy {
                    "memory" => write_limit(&path, "memory.limit_in_bytes", &memory)?,
                    _ => write_limit(&path, "pids.max", &pids)?,
                }
            }
        }
        debug!(vm = %key, ?limits, "cgroup limits set");
        Ok(())
    }

    /// Enables the memory and pids controllers for the children of every cgroup from the
    /// root down to `parent` (v2 hands a controller to a child only when its parent has it
    /// in `cgroup.subtree_control`).
    fn enable_controllers(&self, parent: &Path) -> Result<(), CgroupError> {
        let mut dirs: Vec<&Path> = parent
            .ancestors()
            .take_while(|dir| dir.starts_with(&self.root))
            .collect();
        dirs.reverse();
        for dir in dirs {
            let control = dir.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&control).unwrap_or_default();
            let has = |name: &str| enabled.split_whitespace().any(|c| c == name);
            if has("memory") && has("pids") {
                continue;
            }
            std::fs::write(&control, "+memory +pids").map_err(|source| CgroupError::Limit {
                path: dir.to_path_buf(),
                file: "cgroup.subtree_control",
                hint: if source.raw_os_error() == Some(libc::EBUSY) {
                    " (the cgroup has processes of its own; give the node agent an absolute \
                     --cgroup-parent outside its own cgroup)"
                } else {
                    ""
                },
                source,
            })?;
        }
        Ok(())
    }
}

fn write_limit(path: &Path, file: &'static str, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path.join(file), value).map_err(|source| CgroupError::Limit {
        path: path.to_path_buf(),
        file,
        source,
        hint: "",
    })
}

/// The agent's own cgroup path in the hierarchy of `controller` (v1), or in the unified
/// hierarchy (`None`), from the text of `/proc/self/cgroup`.
fn own_cgroup(self_cgroup: &str, controller: Option<&str>) -> Option<String> {
    self_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match controller {
            None => controllers.is_empty(),
            Some(c) => controllers.split(',').any(|x| x == c),
        };
        matches.then(|| path.to_string())
    })
}

fn resolve_parent(mount: &Path, parent: &str, own: Option<String>) -> PathBuf {
    if let Some(absolute) = parent.strip_prefix('/') {
        return mount.join(absolute);
    }
    let own = own.unwrap_or_default();
    mount.join(own.trim_start_matches('/')).join(parent)
}

/// Moves process `pid` into every cgroup of `paths`.
pub fn join(paths: &[PathBuf], pid: u32) -> Result<(), CgroupError> {
    for path in paths {
        std::fs::write(path.join("cgroup.procs"), pid.to_string()).map_err(|source| {
            CgroupError::Join {
                path: path.clone(),
                pid,
                source,
            }
        })?;
    }
    Ok(())
}

/// The processes in any of `paths` (a missing cgroup has none).
pub fn members(paths: &[PathBuf]) -> Result<Vec<i32>, CgroupError> {
    let mut pids = Vec::new();
    for path in paths {
        let text = match std::fs::read_to_string(path.join("cgroup.procs")) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(CgroupError::List {
                    path: path.clone(),
                    source,
                })
            }
        };
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}

/// Kills every process of the cgroups with SIGKILL and waits (up to `timeout`) until
/// none is left. Returns how many processes were signalled.
pub fn kill_all(paths: &[PathBuf], timeout: Duration) -> Result<usize, CgroupError> {
    let deadline = Instant::now() + timeout;
    let mut signalled = 0;
    loop {
        let pids = members(paths)?;
        if pids.is_empty() {
            return Ok(signalled);
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::Survivors {
                path: paths.first().cloned().unwrap_or_default(),
                pids,
            });
        }
        let mut used_kill_file = false;
        for path in paths {
            let kill_file = path.join("cgroup.kill");
            if kill_file.is_file() && std::fs::write(&kill_file, "1").is_ok() {
                used_kill_file = true;
            }
        }
        if !used_kill_file {
            for &pid in &pids {
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) => signalled += 1,
                    Err(nix::errno::Errno::ESRCH) => {}
                    Err(e) => warn!(pid, error = %e, "cannot kill a cgroup member"),
                }
            }
        } else {
            signalled += pids.len();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the (empty) cgroup directories, retrying briefly while the kernel finishes
/// removing exited members. Missing directories are fine.
pub fn remove(paths: &[PathBuf]) -> Result<(), CgroupError> {
    for path in paths {
        let mut attempts = 0;
        loop {
            match std::fs::remove_dir(path) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(CgroupError::Remove {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SELF_V1: &str = "9:name=systemd:/\n8:pids:/job\n4:memory:/process_api/abc\n0::/\n";

    #[test]
    fn v1_layout_uses_pids_and_memory_and_resolves_parents() {
        let root = tempfile::tempdir().unwrap();
        for h in V1_HIERARCHIES {
            std::fs::create_dir_all(root.path().join(h)).unwrap();
            std::fs::write(root.path().join(h).join("cgroup.procs"), "").unwrap();
        }
        let key = VmKey::new("default", "web");
        let absolute = CgroupLayout::detect(root.path(), "/ironvisor", SELF_V1).unwrap();
        assert!(!absolute.is_unified());
        assert_eq!(
            absolute.paths_for(&key),
            vec![
                root.path().join("pids/ironvisor/default_web"),
                root.path().join("memory/ironvisor/default_web"),
            ]
        );
        let relative = CgroupLayout::detect(root.path(), "ironvisor-test", SELF_V1).unwrap();
        assert_eq!(
            relative.paths_for(&key),
            vec![
                root.path().join("pids/job/ironvisor-test/default_web"),
                root.path()
                    .join("memory/process_api/abc/ironvisor-test/default_web"),
            ]
        );
        let created = relative.create(&key).unwrap();
        assert!(created.iter().all(|p| p.is_dir()));
        remove(&created).unwrap();
        assert!(created.iter().all(|p| !p.exists()));
    }

    #[test]
    fn v2_layout_is_one_directory() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "memory pids").unwrap();
        let layout = CgroupLayout::detect(root.path(), "ivtest", "0::/user.slice/x\n").unwrap();
        assert!(layout.is_unified());
        assert_eq!(
            layout.paths_for(&VmKey::new("a", "b")),
            vec![root.path().join("user.slice/x/ivtest/a_b")]
        );
    }

    #[test]
    fn limits_go_to_each_hierarchy_and_v2_parents_get_the_controllers() {
        let limits = CgroupLimits::for_vm(2, 256);
        assert_eq!(limits.memory_bytes, (256 << 20) + MEMORY_OVERHEAD_BYTES);
        assert_eq!(limits.pids, 2 + PIDS_OVERHEAD);
        let key = VmKey::new("default", "web");
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap();

        let v1 = tempfile::tempdir().unwrap();
        for h in V1_HIERARCHIES {
            std::fs::create_dir_all(v1.path().join(h)).unwrap();
            std::fs::write(v1.path().join(h).join("cgroup.procs"), "").unwrap();
        }
        let layout = CgroupLayout::detect(v1.path(), "/ironvisor", "").unwrap();
        layout.create(&key).unwrap();
        layout.set_limits(&key, limits).unwrap();
        let memory = v1
            .path()
            .join("memory/ironvisor/default_web/memory.limit_in_bytes");
        assert_eq!(read(memory), limits.memory_bytes.to_string());
        let pids = v1.path().join("pids/ironvisor/default_web/pids.max");
        assert_eq!(read(pids), "130");

        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "memory pids").unwrap();
        std::fs::write(v2.path().join("cgroup.subtree_control"), "memory pids").unwrap();
        let layout = CgroupLayout::detect(v2.path(), "/ironvisor", "").unwrap();
        let vm = layout.create(&key).unwrap().remove(0);
        layout.set_limits(&key, limits).unwrap();
        assert_eq!(read(vm.join("memory.max")), limits.memory_bytes.to_string());
        assert_eq!(read(vm.join("pids.max")), "130");
        // The root had both already; the VM's parent gets them.
        assert_eq!(
            read(v2.path().join("cgroup.subtree_control")),
            "memory pids"
        );
        assert_eq!(
            read(v2.path().join("ironvisor/cgroup.subtree_control")),
            "+memory +pids"
        );
    }

    #[test]
    fn missing_hierarchies_are_reported() {
        let root = tempfile::tempdir().unwrap();
        let error = CgroupLayout::detect(root.path(), "/ironvisor", "").unwrap_err();
        assert!(error.to_string().contains("no usable cgroup hierarchy"));
    }

    #[test]
    fn members_of_missing_cgroups_are_empty() {
        assert!(members(&[PathBuf::from("/nonexistent/cgroup")])
            .unwrap()
            .is_empty());
    }
}
