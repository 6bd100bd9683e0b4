//! The guardian as separate processes, without KVM. Each test re-runs itself (this test
//! binary, `--exact` that test) with a role in the environment: as the helper "launcher"
//! it binds two sockets, starts a guardian (the same test again, which runs
//! [`run_process`] like `ironvisor-launcher __socket-guardian` does), reports the sockets
//! and waits; the test itself then SIGKILLs it or makes it exit. A re-run acting a role
//! never returns to the test's body.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::*;

const ROLE_ENV: &str = "IRONVISOR_GUARDIAN_TEST_ROLE";
const DIR_ENV: &str = "IRONVISOR_GUARDIAN_TEST_DIR";
const TIMEOUT: Duration = Duration::from_secs(20);
const SOCKETS: [&str; 2] = ["api.sock", "console.sock"];

const TEST_ENV: &str = "IRONVISOR_GUARDIAN_TEST_NAME";

/// Re-runs the test `test` of this binary as a helper process acting `role`.
fn helper_command(role: &str, dir: &Path, test: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            &format!("guardian::tests::{test}"),
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(ROLE_ENV, role)
        .env(DIR_ENV, dir)
        .env(TEST_ENV, test);
    command
}

/// In a re-run with a role, acts it and exits; in the test itself, returns.
fn act_role_if_asked() {
    let dir = || PathBuf::from(std::env::var_os(DIR_ENV).unwrap());
    let test = || std::env::var(TEST_ENV).unwrap();
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("guardian") => std::process::exit(i32::from(run_process())),
        Ok("launcher") => launcher_helper(&dir(), &test()),
        Ok(other) => panic!("unknown helper role {other:?}"),
        Err(_) => {}
    }
}

/// What a launcher does with its guardian, then waits for orders on stdin: `release` (a
/// normal exit: the sockets removed, then the guardian released), `release-kept` (a
/// launcher that dropped root and could not remove them releases it), `hand-over` (a
/// jailed launcher, which cannot see its sockets, hands them over) or end of file (exit
/// without releasing).
fn launcher_helper(dir: &Path, test: &str) -> ! {
    let listeners: Vec<UnixListener> = SOCKETS
        .iter()
        .map(|name| UnixListener::bind(dir.join(name)).unwrap())
        .collect();
    // A descriptor without close-on-exec, like one the launcher might have inherited:
    // the guardian must not keep it.
    let leak = std::fs::File::create(dir.join("leak")).unwrap();
    let leaked: OwnedFd = nix::unistd::dup(&leak).unwrap();
    let guardian = Guardian::spawn_command(helper_command("guardian", dir, test)).unwrap();
    drop(leaked);
    for name in SOCKETS {
        guardian.watch(&dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("ready.tmp"), guardian.pid().to_string()).unwrap();
    std::fs::rename(dir.join("ready.tmp"), dir.join("ready")).unwrap();

    let mut order = String::new();
    let _ = BufReader::new(std::io::stdin()).read_line(&mut order);
    drop(listeners);
    match order.trim() {
        "release" => {
            for name in SOCKETS {
                std::fs::remove_file(dir.join(name)).unwrap();
            }
            guardian.release();
        }
        "release-kept" => guardian.release(),
        "hand-over" => guardian.hand_over(),
        _ => drop(guardian),
    }
    std::process::exit(0);
}

/// A running launcher helper and its guardian.
struct Launcher {
    child: Child,
    stdin: Option<ChildStdin>,
    guardian: Pid,
    dir: tempfile::TempDir,
}

impl Launcher {
    /// Starts the helper launcher for the test named `test`, which must call this first:
    /// in the helper processes' re-runs of that test, this is where they act their role.
    fn start(test: &str) -> Launcher {
        act_role_if_asked();
        let dir = tempfile::tempdir().unwrap();
        let mut child = helper_command("launcher", dir.path(), test)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let ready = dir.path().join("ready");
        wait_until("the helper launcher is ready", || ready.exists());
        let pid: i32 = std::fs::read_to_string(&ready).unwrap().parse().unwrap();
        let launcher = Launcher {
            child,
            stdin,
            guardian: Pid::from_raw(pid),
            dir,
        };
        // Ready to take signals once it ignores them.
        wait_until("the guardian ignores stop signals", || {
            launcher.ignored_signals() & STOP_SIGNALS == STOP_SIGNALS
        });
        launcher
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sigkill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn guardian_proc(&self, file: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{file}", self.guardian))
    }

    /// The guardian's ignored signals (`SigIgn` in /proc/PID/status).
    fn ignored_signals(&self) -> u64 {
        let status = std::fs::read_to_string(self.guardian_proc("status")).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("SigIgn:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0)
    }

    /// Gone, or a zombie nobody reaped yet: either way it exited.
    fn guardian_exited(&self) -> bool {
        match std::fs::read_to_string(self.guardian_proc("stat")) {
            Err(_) => true,
            Ok(stat) => matches!(
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next()),
                Some('Z' | 'X')
            ),
        }
    }

    fn wait_guardian_exit(&self) {
        wait_until("the guardian exits", || self.guardian_exited());
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // End of file on its stdin makes a helper still running exit.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

const fn bit(signal: Signal) -> u64 {
    1 << (signal as u64 - 1)
}

const STOP_SIGNALS: u64 =
    bit(Signal::SIGINT) | bit(Signal::SIGTERM) | bit(Signal::SIGHUP) | bit(Signal::SIGQUIT);

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sockets_are_removed_when_the_launcher_is_killed() {
    let mut launcher = Launcher::start("sockets_are_removed_when_the_launcher_is_killed");
    for name in SOCKETS {
        assert!(launcher.path(name).exists());
    }
    launcher.sigkill();
    launcher.wait_guardian_exit();
    for name in SOCKETS {
        assert!(!launcher.path(name).exists(), "{name} left behind");
    }
}

#[test]
fn a_replaced_socket_is_left_alone() {
    let mut launcher = Launcher::start("a_replaced_socket_is_left_alone");
    // A newer launcher took over the API path: removed the old socket, bound its own.
    let api = launcher.path("api.sock");
    let old_ino = std::fs::symlink_metadata(&api).unwrap().ino();
    std::fs::remove_file(&api).unwrap();
    let _newer = UnixListener::bind(&api).unwrap();
    let new_ino = std::fs::symlink_metadata(&api).unwrap().ino();
    assert_ne!(old_ino, new_ino, "the filesystem reused the inode at once");

    launcher.sigkill();
    launcher.wait_guardian_exit();
    let after = std::fs::symlink_metadata(&api).expect("the newer socket was removed");
    assert_eq!(after.ino(), new_ino);
    assert!(!launcher.path("console.sock").exists());
}

#[test]
fn release_after_a_clean_exit_makes_the_guardian_exit() {
    let mut launcher = Launcher::start("release_after_a_clean_exit_makes_the_guardian_exit");
    let started = Instant::now();
    let mut stdin = launcher.stdin.take().unwrap();
    stdin.write_all(b"release\n").unwrap();
    let status = launcher.child.wait().unwrap();
    assert!(status.success(), "{status}");
    // The helper reaped its guardian before exiting.
    assert!(!launcher.guardian_proc("stat").exists());
    assert!(started.elapsed() < Duration::from_secs(2));
    for name in SOCKETS {
        assert!(!launcher.path(name).exists());
    }
}

/// The helper launcher of `test` exits after `order` with its sockets still there; the
/// guardian must have removed them and exited.
fn sockets_left_by_the_launcher_are_removed_by_the_guardian(test: &str, order: &[u8]) {
    let mut launcher = Launcher::start(test);
    let mut stdin = launcher.stdin.take().unwrap();
    stdin.write_all(order).unwrap();
    let status = launcher.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!launcher.guardian_proc("stat").exists());
    for name in SOCKETS {
        assert!(!launcher.path(name).exists(), "{name} left behind");
    }
}

#[test]
fn sockets_a_released_launcher_could_not_remove_are_removed_by_the_guardian() {
    sockets_left_by_the_launcher_are_removed_by_the_guardian(
        "sockets_a_released_launcher_could_not_remove_are_removed_by_the_guardian",
        b"release-kept\n",
    );
}

#[test]
fn sockets_a_jailed_launcher_hands_over_are_removed_by_the_guardian() {
    sockets_left_by_the_launcher_are_removed_by_the_guardian(
        "sockets_a_jailed_launcher_hands_over_are_removed_by_the_guardian",
        b"hand-over\n",
    );
}

#[test]
fn the_guardian_holds_only_its_pipe_and_ignores_stop_signals() {
    let mut launcher = Launcher::start("the_guardian_holds_only_its_pipe_and_ignores_stop_signals");
    let fd_dir = launcher.guardian_proc("fd");
    let mut fds: Vec<(String, String)> = std::fs::read_dir(&fd_dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let target = std::fs::read_link(entry.path()).unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                target.to_string_lossy().into_owned(),
            )
        })
        .collect();
    fds.sort();
    assert_eq!(fds.len(), 3, "{fds:?}");
    assert_eq!(fds[0].0, "0");
    assert!(fds[0].1.starts_with("pipe:"), "{fds:?}");
    assert_eq!(fds[1], ("1".into(), "/dev/null".into()));
    assert_eq!(fds[2], ("2".into(), "/dev/null".into()));

    // Its own process group, away from the launcher's.
    let stat = std::fs::read_to_string(launcher.guardian_proc("stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    assert_eq!(fields[2], launcher.guardian.to_string(), "pgrp: {stat}");

    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        kill(launcher.guardian, signal).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !launcher.guardian_exited(),
        "a stop signal ended the guardian"
    );
    assert!(launcher.path("api.sock").exists());

    launcher.sigkill();
    launcher.wait_guardian_exit();
    assert!(!launcher.path("api.sock").exists());
}

#[test]
fn the_handle_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync>() {}
    // `run_vm_guarded` holds an `Option<&Guardian>` across awaits.
    send_sync::<Guardian>();
}
