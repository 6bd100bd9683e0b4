//! The real `virtctl` binary choosing cluster mode, and its errors when the cluster is not
//! there; shell completion. (Against the real cluster: tests/cluster/test_apiserver.py.)

use std::path::Path;
use std::process::Command;

fn virtctl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_virtctl"))
        .env_remove("IRONVISOR_SOCKET")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("virtctl runs")
}

fn kubeconfig(dir: &Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n\
             users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    \
             user: u\n    namespace: demo\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn an_unreachable_cluster_is_named_with_the_request() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9 of localhost.
    let config = kubeconfig(dir.path(), "http://127.0.0.1:9");
    let out = virtctl(&config, &["start", "small"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("start VirtualMachine demo/small")
            && stderr.contains("unreachable")
            && stderr.contains("127.0.0.1:9"),
        "{stderr}"
    );
}

#[test]
fn kubectl_jobs_point_to_kubectl_and_node_mode_is_chosen_by_flag() {
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), "http://127.0.0.1:9");
    let out = virtctl(&config, &["get", "vms"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kubectl get vm,vmi"), "{stderr}");

    // --node: the standalone daemon's socket, which is not there.
    let socket = dir.path().join("none.sock");
    let out = virtctl(
        &config,
        &["--node", "--socket", socket.to_str().unwrap(), "get", "vms"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("none.sock"), "{stderr}");
}

#[test]
fn a_broken_kubeconfig_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, "this: [is not a kubeconfig").unwrap();
    let out = virtctl(&path, &["stop", "small"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("kubeconfig") && stderr.contains(path.to_str().unwrap()),
        "{stderr}"
    );
}

#[test]
fn completion_scripts_name_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let config = kubeconfig(dir.path(), "http://127.0.0.1:9");
    for shell in ["bash", "zsh", "fish"] {
        let out = virtctl(&config, &["completion", shell]);
        assert!(out.status.success(), "{shell}: {:?}", out);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("console") && script.contains("unpause"),
            "{shell}"
        );
    }
    let help = virtctl(&config, &["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("Examples:") && text.contains("virtctl console small"),
        "{text}"
    );
}
