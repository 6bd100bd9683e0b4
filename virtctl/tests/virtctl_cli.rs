//! Runs the real `virtctl` binary against an in-process fake node daemon on a temporary
//! socket: apply, get/list, describe, lifecycle actions, errors, logs and the console
//! (through a pipe and through a pseudo-terminal).

mod fake_handler;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use fake_handler::{FakeDaemon, BOOTING_REFUSALS};
use nix::sys::termios::{self, LocalFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const SMALL: &str = "\
apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachine
metadata:
  name: small
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        memory:
          guest: 256Mi
";

const STOPPED: &str = "\
apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachine
metadata:
  name: db
  namespace: prod
spec:
  runStrategy: Halted
  template:
    spec: {}
";

fn virtctl(socket: &Path) -> Command {
    let mut cmd = fake_handler::virtctl_command(socket);
    cmd.stdin(Stdio::null());
    cmd
}

async fn run(socket: &Path, args: &[&str]) -> Output {
    let output = tokio::time::timeout(Duration::from_secs(30), virtctl(socket).args(args).output())
        .await
        .expect("virtctl did not finish in 30 s")
        .expect("cannot run virtctl");
    output
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "virtctl failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

#[track_caller]
fn assert_fails_with(o: &Output, needle: &str) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    assert!(
        stderr(o).contains(needle),
        "stderr does not contain {needle:?}:\n{}",
        stderr(o)
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_prints_created_configured_unchanged() {
    let daemon = FakeDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let small = write(dir.path(), "small.yaml", SMALL);
    let db = write(dir.path(), "db.yaml", STOPPED);

    let o = run(daemon.socket(), &["apply", "-f", &small, "-f", &db]).await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "virtualmachine.ironvisor.io/small created\nvirtualmachine.ironvisor.io/db created\n"
    );
    assert!(daemon.calls().contains(&format!("Apply {small}")));

    let o = run(daemon.socket(), &["apply", "-f", &small]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o), "virtualmachine.ironvisor.io/small unchanged\n");

    let changed = write(dir.path(), "small.yaml", &SMALL.replace("256Mi", "512Mi"));
    let o = run(daemon.socket(), &["apply", "-f", &changed]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o), "virtualmachine.ironvisor.io/small configured\n");

    // Standard input, reported as STDIN.
    let mut child = virtctl(daemon.socket())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(SMALL.replace("name: small", "name: piped").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let o = child.wait_with_output().await.unwrap();
    assert_ok(&o);
    assert_eq!(stdout(&o), "virtualmachine.ironvisor.io/piped created\n");
    assert!(daemon.calls().contains(&"Apply STDIN".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_errors_are_printed_verbatim() {
    let daemon = FakeDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();

    let bad = write(dir.path(), "bad.yaml", "metadata:\n  name: [unclosed\n");
    let o = run(daemon.socket(), &["apply", "-f", &bad]).await;
    assert_fails_with(&o, &format!("error: error applying {bad}: {bad}:"));
    assert!(stdout(&o).is_empty());

    let unknown = write(
        dir.path(),
        "unknown.yaml",
        "metadata:\n  name: x\nspec:\n  bogus: 1\n",
    );
    let o = run(daemon.socket(), &["apply", "-f", &unknown]).await;
    assert_fails_with(
        &o,
        &format!("{unknown}: unknown field `spec.bogus`, expected one of `runStrategy`"),
    );

    // A validation list keeps its lines.
    let nameless = write(
        dir.path(),
        "nameless.yaml",
        "kind: VirtualMachine\nspec: {}\n",
    );
    let good = write(dir.path(), "good.yaml", SMALL);
    let o = run(daemon.socket(), &["apply", "-f", &nameless, "-f", &good]).await;
    assert_fails_with(
        &o,
        "invalid VirtualMachine:\n  - metadata.name: Required value\n  - spec.template: Required value",
    );
    // The good file was still applied.
    assert_eq!(stdout(&o), "virtualmachine.ironvisor.io/small created\n");

    let o = run(daemon.socket(), &["apply", "-f", &nameless, "-f", &unknown]).await;
    assert_fails_with(&o, "error: 2 of 2 inputs could not be applied");

    // A missing local file is named, and nothing is sent.
    let before = daemon.calls().len();
    let missing = dir.path().join("missing.yaml").display().to_string();
    let o = run(daemon.socket(), &["apply", "-f", &good, "-f", &missing]).await;
    assert_fails_with(
        &o,
        &format!("error: cannot read {missing}: No such file or directory"),
    );
    assert_eq!(daemon.calls().len(), before);

    let o = run(daemon.socket(), &["apply", "-n", "prod", "-f", &good]).await;
    assert_fails_with(&o, "--namespace \"prod\" is not supported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_list_print_tables_and_objects() {
    let daemon = FakeDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let small = write(dir.path(), "small.yaml", SMALL);
    let db = write(dir.path(), "db.yaml", STOPPED);
    assert_ok(&run(daemon.socket(), &["apply", "-f", &small, "-f", &db]).await);

    let o = run(daemon.socket(), &["get", "small"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "AGE", "STATUS", "PHASE", "IP", "NODE", "READY", "BACKEND"]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row,
        [
            "small",
            "3m",
            "Running",
            "Running",
            "10.88.0.5",
            "node1",
            "True",
            "qemu-tcg"
        ]
    );

    // `list` is the default namespace only; `get vms -A` shows all with a namespace.
    let o = run(daemon.socket(), &["list"]).await;
    assert_ok(&o);
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));
    assert!(daemon.calls().contains(&"List default".to_string()));

    let o = run(daemon.socket(), &["get", "vms", "-A"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][0], "NAMESPACE");
    assert_eq!(rows[1][..2], ["default", "small"]);
    assert_eq!(
        rows[2],
        ["prod", "db", "3m", "Stopped", "<none>", "<none>", "<none>", "False", "<none>"]
    );

    let o = run(daemon.socket(), &["get", "-n", "empty"]).await;
    assert_ok(&o);
    assert!(stdout(&o).is_empty());
    assert!(stderr(&o).contains("No resources found in empty namespace."));

    let o = run(
        daemon.socket(),
        &["get", "vm", "db", "-n", "prod", "-o", "json"],
    )
    .await;
    assert_ok(&o);
    let value: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(value["metadata"]["name"], "db");
    assert_eq!(value["status"]["printableStatus"], "Stopped");

    let o = run(daemon.socket(), &["list", "-A", "-o", "yaml"]).await;
    assert_ok(&o);
    let value: serde_json::Value = serde_norway::from_str(&stdout(&o)).unwrap();
    assert_eq!(value["kind"], "List");
    assert_eq!(value["items"].as_array().map(Vec::len), Some(2));

    let o = run(daemon.socket(), &["describe", "small"]).await;
    assert_ok(&o);
    let out = stdout(&o);
    for needle in [
        "Name:          small\n",
        "Run Strategy:  Always\n",
        "Created:       ",
        " (3m ago)\n",
        "  Memory:  256Mi\n",
        "Instance:\n  Phase:    Running\n  Node:     node1\n  Backend:  qemu-tcg\n",
        "Events:\n  Type     Reason    Age    Message\n",
        "  Normal   Started   ",
        "launcher started\n",
    ] {
        assert!(out.contains(needle), "describe lacks {needle:?}:\n{out}");
    }

    let o = run(daemon.socket(), &["get", "nope"]).await;
    assert_fails_with(
        &o,
        "error: cannot get VM default/nope: virtualmachine default/nope not found",
    );
    let o = run(daemon.socket(), &["describe", "small", "-n", "prod"]).await;
    assert_fails_with(
        &o,
        "error: cannot describe VM prod/small: virtualmachine prod/small not found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_actions() {
    let daemon = FakeDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let small = write(dir.path(), "small.yaml", SMALL);
    let busy = write(
        dir.path(),
        "busy.yaml",
        &SMALL.replace("name: small", "name: busy"),
    );
    assert_ok(&run(daemon.socket(), &["apply", "-f", &small, "-f", &busy]).await);

    let cases: &[(&[&str], &str)] = &[
        (&["start", "small"], "VM small was scheduled to start\n"),
        (&["stop", "small"], "VM small was scheduled to stop\n"),
        (
            &["stop", "small", "--grace-period", "7"],
            "VM small was scheduled to stop\n",
        ),
        (
            &["stop", "small", "--force"],
            "VM small was scheduled to stop\n",
        ),
        (&["restart", "small"], "VM small was scheduled to restart\n"),
        (
            &["pause", "small"],
            "VMI small was scheduled to pause\nvCPUs paused\n",
        ),
        (
            &["unpause", "small"],
            "VMI small was scheduled to unpause\n",
        ),
        (
            &["delete", "small"],
            "virtualmachine.ironvisor.io \"small\" deleted\n",
        ),
    ];
    for (args, expected) in cases {
        let o = run(daemon.socket(), args).await;
        assert_ok(&o);
        assert_eq!(stdout(&o), *expected, "{args:?}");
    }
    let calls = daemon.calls();
    for expected in [
        "StopArgs default/small force=false grace=0",
        "StopArgs default/small force=false grace=7",
        "StopArgs default/small force=true grace=0",
        "Restart default/small",
        "Pause default/small",
        "Unpause default/small",
        "Delete default/small",
    ] {
        assert!(
            calls.contains(&expected.to_string()),
            "no {expected:?} in {calls:?}"
        );
    }

    let o = run(daemon.socket(), &["start", "small"]).await;
    assert_fails_with(
        &o,
        "error: cannot start VM default/small: virtualmachine default/small not found",
    );
    let o = run(daemon.socket(), &["stop", "busy"]).await;
    assert_fails_with(
        &o,
        "error: cannot stop VM default/busy: VM default/busy is already being stopped",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("handler.sock");
    let o = run(&socket, &["get", "small"]).await;
    assert_fails_with(
        &o,
        &format!(
            "error: the Ironvisor node daemon is not running (no socket at {}); start it with `ironvisor-handler serve`",
            socket.display()
        ),
    );

    // The environment variable is honoured.
    let o = Command::new(env!("CARGO_BIN_EXE_virtctl"))
        .env("IRONVISOR_SOCKET", &socket)
        .args(["list"])
        .output()
        .await
        .unwrap();
    assert_fails_with(&o, &format!("(no socket at {})", socket.display()));

    // A stale socket file with nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let o = run(&socket, &["list"]).await;
    assert_fails_with(
        &o,
        "the Ironvisor node daemon is not running (nothing listens on",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_streamed() {
    let daemon = FakeDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let small = write(dir.path(), "small.yaml", SMALL);
    assert_ok(&run(daemon.socket(), &["apply", "-f", &small]).await);

    let o = run(daemon.socket(), &["logs", "small"]).await;
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        "launcher: starting VM\nlauncher: guest running\n"
    );
    let o = run(daemon.socket(), &["logs", "small", "-f"]).await;
    assert_ok(&o);
    assert!(stdout(&o).ends_with("launcher: guest powered off\n"));
    let o = run(daemon.socket(), &["logs", "ghost"]).await;
    assert_fails_with(
        &o,
        "error: cannot read the logs of VM default/ghost: virtualmachine default/ghost not found",
    );
}

/// Reads from `child`'s stdout until `needle` appears; returns everything read.
async fn read_until(child: &mut Child, seen: &mut Vec<u8>, needle: &str) {
    let out = child.stdout.as_mut().unwrap();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(20), async {
        while !String::from_utf8_lossy(seen).contains(needle) {
            let n = out.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "stdout ended before {needle:?}: {}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(seen)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_through_pipes() {
    let daemon = FakeDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    for name in ["small", "forever", "booting"] {
        let file = write(
            dir.path(),
            "vm.yaml",
            &SMALL.replace("name: small", &format!("name: {name}")),
        );
        assert_ok(&run(daemon.socket(), &["apply", "-f", &file]).await);
    }

    // Input is pumped in, output out; at the end of input the console's input closes and
    // output continues until the daemon closes the console.
    let mut child = virtctl(daemon.socket())
        .args(["console", "small"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = Vec::new();
    read_until(&mut child, &mut seen, "Linux version").await;
    stdin.write_all(b"uname -a\n").await.unwrap();
    read_until(&mut child, &mut seen, "echo:uname -a\n").await;
    drop(stdin);
    let o = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_ok(&o);
    seen.extend_from_slice(&o.stdout);
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.ends_with("reboot: Power down\r\n"), "{seen}");
    assert!(
        stderr(&o).contains("Successfully connected to small console. The escape sequence is ^]"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("The console of VM default/small closed"));
    assert_eq!(daemon.console_input("small"), b"uname -a\n");

    // Ctrl+] detaches: nothing after it reaches the VM.
    let mut child = virtctl(daemon.socket())
        .args(["console", "forever"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = Vec::new();
    stdin.write_all(b"abc").await.unwrap();
    read_until(&mut child, &mut seen, "echo:abc").await;
    stdin.write_all(b"\x1dxyz").await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("virtctl did not detach")
        .unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(daemon.console_input("forever"), b"abc");

    // --timeout ends a session whose VM keeps running after input ended.
    let o = run(daemon.socket(), &["console", "forever", "--timeout", "1"]).await;
    assert_ok(&o);
    assert!(stdout(&o).contains("Linux version"));
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));

    // While the VM boots, the console is retried until it is available.
    let o = run(daemon.socket(), &["console", "booting"]).await;
    assert_ok(&o);
    assert!(
        stderr(&o).contains(
            "Waiting for the console of VM default/booting (VM default/booting has no console yet"
        ),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).contains("Linux version"));
    let calls = daemon.calls();
    let attempts = calls
        .iter()
        .filter(|c| *c == "Console default/booting")
        .count();
    assert_eq!(attempts, BOOTING_REFUSALS + 1, "{calls:?}");

    // A VM that nothing will start is not waited for.
    let db = write(dir.path(), "db.yaml", STOPPED);
    assert_ok(&run(daemon.socket(), &["apply", "-f", &db]).await);
    let o = run(daemon.socket(), &["console", "db", "-n", "prod"]).await;
    assert_fails_with(
        &o,
        "error: VM prod/db is stopped (runStrategy Halted), so it has no console; start it with `virtctl start db`",
    );

    // ...but not forever, and a VM that does not exist is not retried.
    let o = run(daemon.socket(), &["console", "ghost", "--wait", "1"]).await;
    assert_fails_with(&o, "error: cannot open the console of VM default/ghost: virtualmachine default/ghost not found");
}

/// What the pty master shows. Reads happen on a thread: they block, and end with EIO
/// only once every slave descriptor is closed.
struct Screen {
    seen: Vec<u8>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
}

impl Screen {
    fn read(mut master: std::fs::File) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            seen: Vec::new(),
            rx,
        }
    }

    async fn wait_for(&mut self, needle: &str) {
        let Self { seen, rx } = self;
        tokio::time::timeout(Duration::from_secs(20), async {
            while !String::from_utf8_lossy(seen).contains(needle) {
                seen.extend(rx.recv().await.expect("pty closed"));
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no {needle:?} on the terminal: {:?}",
                String::from_utf8_lossy(seen)
            )
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_on_a_terminal_uses_raw_mode_and_restores_it() {
    let daemon = FakeDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "vm.yaml",
        &SMALL.replace("name: small", "name: forever"),
    );
    assert_ok(&run(daemon.socket(), &["apply", "-f", &file]).await);

    let pty = nix::pty::openpty(None, None).unwrap();
    let slave: OwnedFd = pty.slave;
    let before = termios::tcgetattr(slave.as_fd()).unwrap();
    assert!(before
        .local_flags
        .contains(LocalFlags::ICANON | LocalFlags::ECHO));

    let mut child = virtctl(daemon.socket())
        .args(["console", "forever"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();

    let master = std::fs::File::from(pty.master);
    let mut master_writer = master.try_clone().unwrap();
    let mut screen = Screen::read(master);
    screen.wait_for("The escape sequence is ^]\r\n").await;
    // Raw mode: no echo, no line editing, Ctrl+C is an ordinary byte.
    let raw = termios::tcgetattr(slave.as_fd()).unwrap();
    assert!(!raw
        .local_flags
        .intersects(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG));

    master_writer.write_all(b"ls\x03").unwrap();
    screen.wait_for("Linux version").await;
    screen.wait_for("echo:ls\x03").await;
    master_writer.write_all(b"\x1d").unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("virtctl did not detach")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(daemon.console_input("forever"), b"ls\x03");

    let after = termios::tcgetattr(slave.as_fd()).unwrap();
    assert_eq!(after.local_flags, before.local_flags);
    assert_eq!(after.input_flags, before.input_flags);
    assert_eq!(after.output_flags, before.output_flags);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_on_a_terminal_is_restored_on_sigterm() {
    let daemon = FakeDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "vm.yaml",
        &SMALL.replace("name: small", "name: forever"),
    );
    assert_ok(&run(daemon.socket(), &["apply", "-f", &file]).await);

    let pty = nix::pty::openpty(None, None).unwrap();
    let slave: OwnedFd = pty.slave;
    let before = termios::tcgetattr(slave.as_fd()).unwrap();
    let mut child = virtctl(daemon.socket())
        .args(["console", "forever"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let mut screen = Screen::read(std::fs::File::from(pty.master));
    screen.wait_for("escape sequence").await;

    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("virtctl ignored SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let after = termios::tcgetattr(slave.as_fd()).unwrap();
    assert_eq!(after.local_flags, before.local_flags);
    screen.wait_for("interrupted by SIGTERM").await;
}
