//! One launcher process per VM instance: its files, starting it through the monitor
//! (`ironvisor-handler monitor`), checking whether it still runs (also one started by an
//! earlier daemon: re-adoption), and killing it.
//!
//! A launcher is identified by its monitor's pid *and* start time
//! ([`ProcessIdentity`]), so a pid reused after the monitor died is never mistaken for
//! it. When the monitor is gone, its status file says how the launcher ended; no status
//! file means the launcher died unrecorded ([`ExitOutcome::Vanished`]).

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ironvisor_launcher_api::client::ClientOptions;
use ironvisor_launcher_api::config::LaunchConfig;
use ironvisor_launcher_api::LauncherClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

use crate::cgroup::{self, CgroupError};
use crate::config::DaemonConfig;
use crate::files::{read_json, write_atomic, FileError};
use crate::jailer::{JailPlan, PLAN_FILE_NAME};
use crate::procfs::{self, ProcError};
use crate::records::{ExitOutcome, LauncherRecord, ProcessIdentity, VmKey};

/// Name of the launcher log in the VM's directory (current or last run).
pub const LOG_FILE_NAME: &str = "launcher.log";
/// Name of the launcher's socket directory in the instance's runtime directory.
pub const SOCKET_DIR_NAME: &str = "sockets";
/// Name of the launcher configuration in the VM's directory.
pub const CONFIG_FILE_NAME: &str = "launcher.json";

/// How long a cgroup kill waits for the processes to be gone.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadlines for talking to a launcher from the reconcile loop: short, the loop must not
/// hang on one VM.
pub const CLIENT_OPTIONS: ClientOptions = ClientOptions {
    connect_timeout: Duration::from_secs(1),
    request_timeout: Duration::from_secs(3),
};

/// Why a launcher operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    /// The runtime directory could not be made.
    #[error("VM {vm}: cannot create runtime directory {path}: {source}")]
    RunDir {
        /// The VM.
        vm: String,
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The configuration could not be serialized.
    #[error("VM {vm}: cannot serialize the launcher configuration: {source}")]
    Config {
        /// The VM.
        vm: String,
        /// The cause.
        #[source]
        source: ironvisor_launcher_api::config::ConfigError,
    },
    /// A file could not be written or read.
    #[error("VM {vm}: {source}")]
    File {
        /// The VM.
        vm: String,
        /// The cause.
        #[source]
        source: FileError,
    },
    /// The log file could not be created.
    #[error("VM {vm}: cannot create launcher log {path}: {source}")]
    Log {
        /// The VM.
        vm: String,
        /// The log file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The launcher binary is missing.
    #[error("VM {vm}: launcher binary {path} does not exist or is not executable (set --launcher / --launcher-qemu)")]
    MissingBinary {
        /// The VM.
        vm: String,
        /// The binary.
        path: PathBuf,
    },
    /// The monitor could not be started.
    #[error("VM {vm}: cannot start the launcher monitor {exe}: {source}")]
    Spawn {
        /// The VM.
        vm: String,
        /// The monitor executable.
        exe: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `/proc` could not be read.
    #[error("VM {vm}: {source}")]
    Proc {
        /// The VM.
        vm: String,
        /// The cause.
        #[source]
        source: ProcError,
    },
    /// A cgroup operation failed.
    #[error("VM {vm}: {source}")]
    Cgroup {
        /// The VM.
        vm: String,
        /// The cause.
        #[source]
        source: CgroupError,
    },
    /// The runtime directory could not be removed.
    #[error("VM {vm}: cannot remove runtime directory {path}: {source}")]
    Cleanup {
        /// The VM.
        vm: String,
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The files of one instance's launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancePaths {
    /// `<run-dir>/vmi/<uid>`.
    pub run_dir: PathBuf,
    /// `<run-dir>/vmi/<uid>/sockets`: the launcher's sockets, the only part of the runtime
    /// directory a jailed launcher sees (it must not reach the pid and status files).
    pub socket_dir: PathBuf,
    /// Control API socket.
    pub api_socket: PathBuf,
    /// Serial console socket.
    pub console_socket: PathBuf,
    /// Exit status written by the monitor.
    pub status_file: PathBuf,
    /// Launcher pid written by the monitor.
    pub pid_file: PathBuf,
    /// `<vm-dir>/launcher.log`.
    pub log_file: PathBuf,
    /// `<vm-dir>/launcher.json`.
    pub config_file: PathBuf,
}

impl InstancePaths {
    /// The paths of instance `uid` of VM `key`.
    pub fn new(config: &DaemonConfig, key: &VmKey, uid: &str) -> Self {
        let run_dir = config.vmi_run_dir(uid);
        let vm_dir = config.vm_dir(key);
        let socket_dir = run_dir.join(SOCKET_DIR_NAME);
        Self {
            api_socket: socket_dir.join("api.sock"),
            console_socket: socket_dir.join("console.sock"),
            socket_dir,
            status_file: run_dir.join("status.json"),
            pid_file: run_dir.join("launcher.pid"),
            log_file: vm_dir.join(LOG_FILE_NAME),
            config_file: vm_dir.join(CONFIG_FILE_NAME),
            run_dir,
        }
    }
}

/// Creates the instance's runtime and socket directories (mode 0700) and the VM
/// directory, and starts a fresh log.
pub fn prepare_files(key: &VmKey, paths: &InstancePaths) -> Result<(), LauncherError> {
    let vm = key.to_string();
    let dirs = [
        Some(paths.run_dir.as_path()),
        Some(paths.socket_dir.as_path()),
        paths.config_file.parent(),
    ];
    for dir in dirs.into_iter().flatten() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| LauncherError::RunDir {
                vm: vm.clone(),
                path: dir.to_path_buf(),
                source,
            })?;
    }
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&paths.log_file)
        .map_err(|source| LauncherError::Log {
            vm,
            path: paths.log_file.clone(),
            source,
        })?;
    Ok(())
}

/// Writes the launcher configuration (atomically).
pub fn write_config(
    key: &VmKey,
    paths: &InstancePaths,
    config: &LaunchConfig,
) -> Result<(), LauncherError> {
    let json = config.to_json().map_err(|source| LauncherError::Config {
        vm: key.to_string(),
        source,
    })?;
    write_atomic(&paths.config_file, json.as_bytes()).map_err(|source| LauncherError::File {
        vm: key.to_string(),
        source,
    })
}

/// How to start one launcher.
#[derive(Debug, Clone, Copy)]
pub struct SpawnRequest<'a> {
    /// The VM.
    pub key: &'a VmKey,
    /// Its files.
    pub paths: &'a InstancePaths,
    /// This binary (runs `monitor`).
    pub monitor_exe: &'a Path,
    /// The launcher program.
    pub launcher_exe: &'a Path,
    /// The network namespace to run in.
    pub netns: Option<&'a Path>,
    /// The VM's cgroups.
    pub cgroups: &'a [PathBuf],
    /// How the launcher is confined.
    pub confinement: Confinement<'a>,
}

/// How a launcher is confined.
#[derive(Debug, Clone, Copy)]
pub enum Confinement<'a> {
    /// It stays root (the emulation launcher talks to libvirtd's root-only socket).
    None,
    /// It builds its VM as root, then becomes `run_as` (`--run-as`, the user and group of
    /// that number) and, with `jail`, confines itself to an empty root (`--jail`).
    SelfConfined {
        /// The user it becomes; `None`: it stays root.
        run_as: Option<u32>,
        /// Whether it jails itself.
        jail: bool,
    },
    /// The monitor starts it in the jail of this plan, as the plan's user: it is never root.
    Jailed(&'a JailPlan),
}

/// Starts the monitor, which starts the launcher with `--config <launcher.json>`. The
/// monitor is reaped by a small thread when it exits while this daemon runs; after a
/// daemon restart it is re-adopted through its identity and status file.
pub fn spawn(request: &SpawnRequest<'_>) -> Result<ProcessIdentity, LauncherError> {
    let vm = request.key.to_string();
    if !is_executable(request.launcher_exe) {
        return Err(LauncherError::MissingBinary {
            vm,
            path: request.launcher_exe.to_path_buf(),
        });
    }
    let log = OpenOptions::new()
        .append(true)
        .open(&request.paths.log_file)
        .map_err(|source| LauncherError::Log {
            vm: vm.clone(),
            path: request.paths.log_file.clone(),
            source,
        })?;
    let log_err = log.try_clone().map_err(|source| LauncherError::Log {
        vm: vm.clone(),
        path: request.paths.log_file.clone(),
        source,
    })?;
    let paths = request.paths;
    let mut command = Command::new(request.monitor_exe);
    command
        .arg("monitor")
        .arg("--status-file")
        .arg(&paths.status_file)
        .arg("--pid-file")
        .arg(&paths.pid_file)
        .arg("--log-file")
        .arg(&paths.log_file);
    if let Some(netns) = request.netns {
        command.arg("--netns").arg(netns);
    }
    for cgroup in request.cgroups {
        command.arg("--cgroup").arg(cgroup);
    }
    if let Confinement::Jailed(plan) = request.confinement {
        let plan_file = paths.run_dir.join(PLAN_FILE_NAME);
        let json = serde_json::to_vec(plan).unwrap_or_default();
        write_atomic(&plan_file, &json).map_err(|source| LauncherError::File {
            vm: vm.clone(),
            source,
        })?;
        command.arg("--jail").arg(plan_file);
    }
    command
        .arg("--")
        .arg(request.launcher_exe)
        .arg("--config")
        .arg(&paths.config_file);
    match request.confinement {
        Confinement::None => {}
        Confinement::SelfConfined { run_as, jail } => {
            if let Some(id) = run_as {
                command.arg("--run-as").arg(format!("{id}:{id}"));
            }
            if jail {
                command.arg("--jail");
            }
        }
        // The monitor removes its sockets once it has ended.
        Confinement::Jailed(_) => {
            command.arg("--no-socket-guardian");
        }
    }
    command.stdin(Stdio::null()).stdout(log).stderr(log_err);
    let mut child = command.spawn().map_err(|source| LauncherError::Spawn {
        vm: vm.clone(),
        exe: request.monitor_exe.to_path_buf(),
        source,
    })?;
    let pid = child.id() as i32;
    let identity = procfs::identify(pid)
        .map_err(|source| LauncherError::Proc {
            vm: vm.clone(),
            source,
        })?
        // Gone already: a start time no process has, so it reads as dead and its status
        // file decides.
        .unwrap_or(ProcessIdentity { pid, start_time: 0 });
    let reaper_name = format!("reap-{pid}");
    let reaper = std::thread::Builder::new()
        .name(reaper_name)
        .spawn(move || match child.wait() {
            Ok(status) => debug!(pid, %status, "monitor exited"),
            Err(error) => warn!(pid, %error, "waiting for the monitor failed"),
        });
    if let Err(error) = reaper {
        warn!(pid, %error, "cannot start a reaper thread; the monitor stays a zombie until the daemon exits");
    }
    info!(%vm, monitor_pid = pid, launcher = %request.launcher_exe.display(), "launcher started");
    Ok(identity)
}

/// Whether `path` is an executable file.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether a spawned launcher still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The monitor (and so, normally, the launcher) runs.
    Alive,
    /// The monitor is gone; how the launcher ended.
    Exited(ExitOutcome),
}

/// Checks the monitor of `record` and, when it is gone, reads its status file.
pub fn liveness(key: &VmKey, record: &LauncherRecord) -> Result<Liveness, LauncherError> {
    let vm = key.to_string();
    if let Some(monitor) = &record.monitor {
        let alive = procfs::is_alive(monitor).map_err(|source| LauncherError::Proc {
            vm: vm.clone(),
            source,
        })?;
        if alive {
            return Ok(Liveness::Alive);
        }
    }
    let outcome = read_json::<ExitOutcome>(&record.status_file)
        .map_err(|source| LauncherError::File { vm, source })?
        .unwrap_or(ExitOutcome::Vanished);
    Ok(Liveness::Exited(outcome))
}

/// The launcher's identity from the pid file the monitor wrote, if it is there.
pub fn launcher_identity(record: &LauncherRecord) -> Option<ProcessIdentity> {
    read_json(&record.pid_file).ok().flatten()
}

/// Sends `signal` to the monitor, if it is still the same process.
pub fn signal_monitor(record: &LauncherRecord, signal: Signal) -> bool {
    signal_identity(record.monitor.as_ref(), signal)
}

/// Sends `signal` to the launcher, if it is still the same process.
pub fn signal_launcher(record: &LauncherRecord, signal: Signal) -> bool {
    let launcher = record.launcher.or_else(|| launcher_identity(record));
    signal_identity(launcher.as_ref(), signal)
}

fn signal_identity(identity: Option<&ProcessIdentity>, signal: Signal) -> bool {
    let Some(identity) = identity else {
        return false;
    };
    if !procfs::is_alive(identity).unwrap_or(false) {
        return false;
    }
    kill(Pid::from_raw(identity.pid), signal).is_ok()
}

/// Kills every process left in the VM's cgroups and removes them.
pub fn kill_and_remove_cgroups(key: &VmKey, cgroups: &[PathBuf]) -> Result<usize, LauncherError> {
    let cgroup_err = |source| LauncherError::Cgroup {
        vm: key.to_string(),
        source,
    };
    let killed = cgroup::kill_all(cgroups, KILL_TIMEOUT).map_err(cgroup_err)?;
    if killed > 0 {
        warn!(vm = %key, killed, "killed processes left in the VM's cgroup");
    }
    cgroup::remove(cgroups).map_err(cgroup_err)?;
    Ok(killed)
}

/// Removes the instance's runtime directory (sockets, pid and status files).
pub fn remove_run_dir(key: &VmKey, run_dir: &Path) -> Result<(), LauncherError> {
    match fs::remove_dir_all(run_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LauncherError::Cleanup {
            vm: key.to_string(),
            path: run_dir.to_path_buf(),
            source,
        }),
    }
}

/// Connects to the launcher's control API with short deadlines.
pub async fn connect(
    record: &LauncherRecord,
) -> Result<LauncherClient, ironvisor_launcher_api::ClientError> {
    LauncherClient::connect_with(&record.api_socket, CLIENT_OPTIONS).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{BackendKind, LauncherPhase};

    fn record(dir: &Path, monitor: Option<ProcessIdentity>) -> LauncherRecord {
        LauncherRecord {
            vmi_uid: "u".into(),
            phase: LauncherPhase::Spawned,
            monitor,
            launcher: None,
            run_dir: dir.to_path_buf(),
            api_socket: dir.join("api.sock"),
            console_socket: dir.join("console.sock"),
            status_file: dir.join("status.json"),
            pid_file: dir.join("launcher.pid"),
            log_file: dir.join("log"),
            backend: BackendKind::Kvm,
            cgroups: vec![],
            network: None,
            ephemeral_files: vec![],
            started_unix_ms: 0,
            running_since_unix_ms: None,
            stop: None,
            dedicated_cpus: Vec::new(),
        }
    }

    #[test]
    fn liveness_uses_identity_then_status_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = VmKey::new("default", "vm");
        let me = procfs::identify(std::process::id() as i32).unwrap();
        assert_eq!(
            liveness(&key, &record(dir.path(), me)).unwrap(),
            Liveness::Alive
        );
        let reused = me.map(|m| ProcessIdentity {
            start_time: m.start_time + 7,
            ..m
        });
        let rec = record(dir.path(), reused);
        assert_eq!(
            liveness(&key, &rec).unwrap(),
            Liveness::Exited(ExitOutcome::Vanished)
        );
        std::fs::write(&rec.status_file, r#"{"signal":9}"#).unwrap();
        assert_eq!(
            liveness(&key, &rec).unwrap(),
            Liveness::Exited(ExitOutcome::Signal(9))
        );
        // A reused pid is never signalled.
        assert!(!signal_monitor(&rec, Signal::SIGCONT));
    }

    #[test]
    fn spawn_refuses_a_missing_launcher() {
        let dir = tempfile::tempdir().unwrap();
        let key = VmKey::new("default", "vm");
        let paths = InstancePaths {
            run_dir: dir.path().to_path_buf(),
            socket_dir: dir.path().to_path_buf(),
            api_socket: dir.path().join("a"),
            console_socket: dir.path().join("c"),
            status_file: dir.path().join("s"),
            pid_file: dir.path().join("p"),
            log_file: dir.path().join("l"),
            config_file: dir.path().join("j"),
        };
        let error = spawn(&SpawnRequest {
            key: &key,
            paths: &paths,
            monitor_exe: Path::new("/bin/true"),
            launcher_exe: Path::new("/nonexistent/launcher"),
            netns: None,
            cgroups: &[],
            confinement: Confinement::None,
        })
        .unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/launcher"),
            "{error}"
        );
    }
}
