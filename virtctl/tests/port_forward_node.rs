//! `virtctl port-forward` on the standalone node, against a fake daemon whose guest port
//! greets and ends its side first: the client's bytes still reach it, over standard input
//! and output and through a local listening port; a refused port is named.

#[allow(dead_code)]
mod fake_handler;

use std::process::Stdio;
use std::time::Duration;

use fake_handler::FakeDaemon;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const VM: &str = "\
apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachine
metadata:
  name: small
spec:
  runStrategy: Always
  template:
    spec: {}
";

fn virtctl(daemon: &FakeDaemon) -> tokio::process::Command {
    fake_handler::virtctl_command(daemon.socket())
}

async fn daemon_with_vm() -> (FakeDaemon, tempfile::TempDir) {
    let daemon = FakeDaemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm.yaml");
    std::fs::write(&file, VM).unwrap();
    let applied = virtctl(&daemon)
        .args(["apply", "-f"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(applied.status.success(), "{applied:?}");
    (daemon, dir)
}

fn forwarded(daemon: &FakeDaemon, key: &str) -> Option<Vec<u8>> {
    daemon
        .handler
        .state
        .lock()
        .unwrap()
        .forwarded
        .get(key)
        .cloned()
}

async fn eventually_forwarded(daemon: &FakeDaemon, key: &str) -> Vec<u8> {
    for _ in 0..100 {
        if let Some(bytes) = forwarded(daemon, key) {
            return bytes;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing was forwarded to {key}");
}

#[tokio::test]
async fn stdio_relays_both_ways_when_the_guest_ends_first() {
    let (daemon, _dir) = daemon_with_vm().await;
    let mut child = virtctl(&daemon)
        .args(["port-forward", "--stdio", "vm/small", "7777"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // The guest's greeting and end-of-file arrive before anything was sent.
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), stdout.read_to_string(&mut answer))
        .await
        .expect("the guest's end-of-file did not arrive")
        .unwrap();
    assert_eq!(answer, "hello from port 7777\n");
    // The client's side is still open.
    stdin.write_all(b"late request\n").await.unwrap();
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("virtctl did not end after both sides ended")
        .unwrap();
    assert!(status.success());
    assert_eq!(
        eventually_forwarded(&daemon, "small:7777").await,
        b"late request\n"
    );
}

#[tokio::test]
async fn a_local_port_relays_each_connection() {
    let (daemon, _dir) = daemon_with_vm().await;
    let local = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = virtctl(&daemon)
        .args(["port-forward", "vm/small", &format!("{local}:8080")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let address = line
        .strip_prefix("Forwarding from ")
        .and_then(|rest| rest.strip_suffix(" -> 8080"))
        .unwrap_or_else(|| panic!("{line}"));
    let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "hello from port 8080\n");
    client.write_all(b"over tcp").await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(
        eventually_forwarded(&daemon, "small:8080").await,
        b"over tcp"
    );
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_refused_port_and_a_missing_vm_are_named() {
    let (daemon, _dir) = daemon_with_vm().await;
    for (target, port, needles) in [
        (
            "vm/small",
            "9",
            &["port 9 of VM default/small", "Connection refused"][..],
        ),
        (
            "vm/nope",
            "22",
            &["port 22 of VM default/nope", "not found"][..],
        ),
        ("pod/small", "22", &["\"pod/small\" is not a VM"][..]),
    ] {
        let done = virtctl(&daemon)
            .args(["port-forward", "--stdio", target, port])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&done.stderr);
        assert!(!done.status.success(), "{stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
        }
    }
}
