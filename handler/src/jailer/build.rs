//! Building a launcher's jail in the monitor (root, single-threaded): a mount namespace of
//! the monitor's own, a tmpfs on the plan's root whose tree mirrors the host paths of the
//! plan's files.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use ironvisor_launcher::jail::JailError;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

use super::JailPlan;

/// Host facts the launcher reads before it builds its VM (its host probe), copied into the
/// jail as they are when it starts.
const HOST_FACT_FILES: [&str; 3] = [
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/sys/devices/system/cpu/online",
];
/// Kernel modules whose presence the launcher's host probe checks (`/sys/module/NAME`).
const HOST_FACT_MODULES: [&str; 4] = ["kvm", "kvm_intel", "kvm_amd", "kvm_pvm"];
/// The jail's tmpfs: large enough for the host facts of a many-CPU host.
const TMPFS_OPTIONS: &str = "size=4m,mode=0755";

/// Why the jail could not be built. Nothing is left mounted on the host: every mount is in
/// the monitor's own namespace.
#[derive(Debug, thiserror::Error)]
pub enum JailBuildError {
    /// A system call or file operation failed.
    #[error("jail: {what} {path}: {source}")]
    Step {
        /// What was being done.
        what: &'static str,
        /// The host path (or the jail's root).
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The launcher's user could not read or run a file it needs.
    #[error("jail: {path} (mode {mode:04o}, owner {owner}:{group}) cannot be {access} by the launcher's user {uid}:{gid}; make it {hint}")]
    Access {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        owner: u32,
        /// Its group.
        group: u32,
        /// "read" or "run".
        access: &'static str,
        /// The launcher's user.
        uid: u32,
        /// The launcher's group.
        gid: u32,
        /// What would make it accessible.
        hint: &'static str,
    },
    /// A path cannot be mirrored (it has `..`, or lies inside another of the jail's mounts).
    #[error("jail: {path}: {problem}")]
    Layout {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        problem: &'static str,
    },
}

fn step<T>(what: &'static str, path: &Path, result: nix::Result<T>) -> Result<T, JailBuildError> {
    result.map_err(|errno| JailBuildError::Step {
        what,
        path: path.to_path_buf(),
        source: io::Error::from(errno),
    })
}

fn io_step<T>(what: &'static str, path: &Path, result: io::Result<T>) -> Result<T, JailBuildError> {
    result.map_err(|source| JailBuildError::Step {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// A jail built in the monitor's mount namespace, ready for [`super::enter::enter`].
#[derive(Debug)]
pub struct BuiltJail {
    root: PathBuf,
    /// How many files and directories were bound, and how many device nodes made.
    pub bound: usize,
    /// Device nodes made for the launcher.
    pub devices: usize,
}

impl BuiltJail {
    /// The jail's root in the monitor's namespace.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Detaches the jail from the monitor's namespace once the launcher has entered its
    /// own copy: the monitor keeps no file of the VM mounted.
    pub fn release(self) -> Result<(), JailBuildError> {
        step(
            "detaching the jail from the monitor's namespace",
            &self.root,
            nix::mount::umount2(&self.root, MntFlags::MNT_DETACH),
        )
    }
}

/// Builds the jail of `plan`. Call in a single-threaded process (the monitor): it moves the
/// process into a mount namespace of its own.
#[tracing::instrument(level = "info", skip(plan), fields(uid = plan.uid, root = %plan.root.display()))]
pub fn build(plan: &JailPlan) -> Result<BuiltJail, JailBuildError> {
    let root = plan.root.as_path();
    // A mount namespace of the monitor's own (it must be single-threaded), private: nothing
    // mounted from here on shows on the host.
    ironvisor_launcher::jail::enter_own_mount_namespace().map_err(|error| {
        let source = match error {
            JailError::Call { source, .. } => io::Error::from(source),
            other => io::Error::other(other.to_string()),
        };
        JailBuildError::Step {
            what: "entering a mount namespace of the monitor's own for",
            path: root.to_path_buf(),
            source,
        }
    })?;
    io_step(
        "creating",
        root,
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root),
    )?;
    step(
        "mounting the jail's tmpfs on",
        root,
        nix::mount::mount(
            Some("ironvisor-jail"),
            root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID,
            Some(TMPFS_OPTIONS),
        ),
    )?;
    let mut jail = Mirror {
        plan,
        mounted: Vec::new(),
    };
    let owner = (plan.uid, plan.gid);
    require_access(&plan.program, owner, Access::Run)?;
    jail.bind(&plan.program, Bind::Program)?;
    for path in &plan.read_only {
        require_access(path, owner, Access::Read)?;
        jail.bind(path, Bind::ReadOnly)?;
    }
    for path in &plan.writable {
        give(path, owner)?;
        jail.bind(path, Bind::Writable)?;
    }
    for dir in &plan.socket_dirs {
        give(dir, owner)?;
        jail.bind(dir, Bind::Writable)?;
    }
    for device in &plan.devices {
        jail.device_node(device)?;
    }
    jail.host_facts()?;
    let bound = jail.mounted.len();
    // The tree itself is read-only from now on; the bound files keep their own flags.
    step(
        "making the jail's tmpfs read-only",
        root,
        nix::mount::mount(
            None::<&str>,
            root,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
            Some(TMPFS_OPTIONS),
        ),
    )?;
    tracing::info!(bound, devices = plan.devices.len(), "jail built");
    Ok(BuiltJail {
        root: root.to_path_buf(),
        bound,
        devices: plan.devices.len(),
    })
}

/// Removes what the launcher left in its socket directories (its sockets, when it was
/// killed before it could remove them). Failures are logged: they never change how the
/// launcher ended.
pub fn empty_socket_dirs(plan: &JailPlan) {
    for dir in &plan.socket_dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Err(error) = fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), %error, "cannot remove a socket the launcher left");
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Access {
    Read,
    Run,
}

/// Checks that `owner` may read (or run) `path` by its permission bits: the jail binds the
/// file, it does not change who may open it.
fn require_access(
    path: &Path,
    (uid, gid): (u32, u32),
    access: Access,
) -> Result<(), JailBuildError> {
    let meta = io_step("inspecting", path, fs::metadata(path))?;
    let mode = meta.permissions().mode() & 0o7777;
    let bit = match access {
        Access::Read => 0o4,
        Access::Run => 0o1,
    };
    let allowed = if meta.uid() == uid {
        mode & (bit << 6) != 0
    } else if meta.gid() == gid {
        mode & (bit << 3) != 0
    } else {
        mode & bit != 0
    };
    if allowed {
        return Ok(());
    }
    let (access, hint) = match access {
        Access::Read => ("read", "readable by others (chmod o+r)"),
        Access::Run => ("run", "executable by others (chmod o+rx)"),
    };
    Err(JailBuildError::Access {
        path: path.to_path_buf(),
        mode,
        owner: meta.uid(),
        group: meta.gid(),
        access,
        uid,
        gid,
        hint,
    })
}

/// Makes `owner` the owner of a file the VM writes (as KubeVirt's node agent does for its
/// launcher's user).
fn give(path: &Path, (uid, gid): (u32, u32)) -> Result<(), JailBuildError> {
    io_step(
        "giving the launcher's user",
        path,
        std::os::unix::fs::chown(path, Some(uid), Some(gid)),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bind {
    /// The launcher binary: read-only, executable.
    Program,
    ReadOnly,
    Writable,
}

/// The jail's tree being built.
struct Mirror<'a> {
    plan: &'a JailPlan,
    /// Host paths bound so far.
    mounted: Vec<PathBuf>,
}

impl Mirror<'_> {
    /// Where host path `path` is in the jail (in the monitor's namespace); its parents are
    /// made. Refuses `..` and a path inside a directory bound earlier (it would land in the
    /// host's directory).
    fn place(&self, path: &Path) -> Result<PathBuf, JailBuildError> {
        let layout = |problem| JailBuildError::Layout {
            path: path.to_path_buf(),
            problem,
        };
        let mut inside = PathBuf::new();
        for component in path.components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => inside.push(name),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(layout("the jail mirrors normalized absolute paths only"))
                }
            }
        }
        if !path.is_absolute() || inside.as_os_str().is_empty() {
            return Err(layout("the jail mirrors normalized absolute paths only"));
        }
        if self
            .mounted
            .iter()
            .any(|m| path.starts_with(m) && path != m)
        {
            return Err(layout(
                "lies inside a directory already bound into the jail",
            ));
        }
        let target = self.plan.root.join(inside);
        if let Some(parent) = target.parent() {
            io_step(
                "creating the jail's directories for",
                path,
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent),
            )?;
        }
        Ok(target)
    }

    /// Bind-mounts host `path` at the same path in the jail.
    fn bind(&mut self, path: &Path, kind: Bind) -> Result<(), JailBuildError> {
        if self.mounted.iter().any(|m| m == path) {
            return Ok(());
        }
        let meta = io_step("inspecting", path, fs::metadata(path))?;
        let target = self.place(path)?;
        if meta.is_dir() {
            io_step(
                "creating the mount point for",
                path,
                fs::create_dir(&target),
            )?;
        } else {
            io_step(
                "creating the mount point for",
                path,
                fs::File::create(&target),
            )?;
        }
        step(
            "bind-mounting",
            path,
            nix::mount::mount(
                Some(path),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ),
        )?;
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID;
        if kind != Bind::Writable {
            flags |= MsFlags::MS_RDONLY;
        }
        if kind != Bind::Program {
            flags |= MsFlags::MS_NOEXEC;
        }
        // A disk may be a block device (a hostDisk or claim on one): it must stay openable.
        if !meta.file_type().is_block_device() {
            flags |= MsFlags::MS_NODEV;
        }
        step(
            "restricting the bind mount of",
            path,
            nix::mount::mount(None::<&str>, &target, None::<&str>, flags, None::<&str>),
        )?;
        self.mounted.push(path.to_path_buf());
        Ok(())
    }

    /// A new node of host character device `path` at the same path, owned by the
    /// launcher's user, mode 0600.
    fn device_node(&mut self, path: &Path) -> Result<(), JailBuildError> {
        let meta = io_step("inspecting", path, fs::metadata(path))?;
        if !meta.file_type().is_char_device() {
            return Err(JailBuildError::Layout {
                path: path.to_path_buf(),
                problem: "is not a character device",
            });
        }
        let target = self.place(path)?;
        step(
            "making the device node",
            path,
            nix::sys::stat::mknod(
                &target,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o600),
                meta.rdev(),
            ),
        )?;
        give(&target, (self.plan.uid, self.plan.gid))
    }

    /// Copies the host facts the launcher's probe reads.
    fn host_facts(&mut self) -> Result<(), JailBuildError> {
        for file in HOST_FACT_FILES.map(Path::new) {
            // A host without the file gives the probe its fallback, as outside the jail.
            let Ok(text) = fs::read(file) else { continue };
            let target = self.place(file)?;
            io_step("copying the host fact", file, fs::write(&target, text))?;
            io_step(
                "making read-only the host fact",
                file,
                fs::set_permissions(&target, fs::Permissions::from_mode(0o444)),
            )?;
        }
        for module in HOST_FACT_MODULES {
            let loaded = Path::new("/sys/module").join(module);
            if loaded.is_dir() {
                let target = self.place(&loaded)?;
                io_step("noting the loaded module", &loaded, fs::create_dir(&target))?;
            }
        }
        Ok(())
    }
}
