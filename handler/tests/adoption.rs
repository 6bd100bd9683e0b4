//! `kill -9` of the node agent: launchers keep running and are re-adopted, nothing is
//! duplicated, launchers that died meanwhile are noticed, and an apply interrupted by the
//! kill is either fully there or not at all.

mod common;

use std::time::Duration;

use common::{manifest, vm, vmi_uid, wait_for, Daemon, Options};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

fn launcher_pid(view: &ironvisor_handler_api::proto::VmView) -> i32 {
    common::vmi_json(view)["status"]["launcherPid"]
        .as_u64()
        .expect("launcher pid") as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the node agent makes cgroups and namespaces for each VM"]
async fn launchers_survive_a_daemon_kill_and_are_readopted() {
    ironvisor_prereq::root();
    let mut daemon = Daemon::start(Options::default());
    let client = daemon.client().await;
    let yaml = [
        manifest("keep", "Always", ""),
        manifest("dies", "RerunOnFailure", ""),
        manifest("orphan", "RerunOnFailure", ""),
    ]
    .join("---\n");
    client.apply(yaml, "vms.yaml".into()).await.unwrap();
    let keep = wait_for(&client, "keep", "Running", |v| v.status == "Running").await;
    let dies = wait_for(&client, "dies", "Running", |v| v.status == "Running").await;
    let orphan = wait_for(&client, "orphan", "Running", |v| v.status == "Running").await;
    let keep_pid = launcher_pid(&keep);
    let processes_before = daemon.vm_processes("keep");
    assert_eq!(
        processes_before.len(),
        2,
        "monitor and launcher: {processes_before:?}"
    );

    daemon.kill9();
    assert!(alive(keep_pid), "the launcher died with the daemon");
    // While the daemon is down: one launcher is killed, and one monitor (so nobody
    // records how its launcher ends).
    kill(Pid::from_raw(launcher_pid(&dies)), Signal::SIGKILL).unwrap();
    let orphan_processes = daemon.vm_processes("orphan");
    let orphan_launcher = launcher_pid(&orphan);
    let orphan_monitor = *orphan_processes
        .iter()
        .find(|&&p| p != orphan_launcher)
        .expect("monitor pid");
    kill(Pid::from_raw(orphan_monitor), Signal::SIGKILL).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    daemon.restart();
    let client = daemon.client().await;
    let view = wait_for(&client, "keep", "Running", |v| v.status == "Running").await;
    assert_eq!(vmi_uid(&view), vmi_uid(&keep), "the instance was replaced");
    assert_eq!(launcher_pid(&view), keep_pid);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut after = daemon.vm_processes("keep");
    after.sort();
    let mut before = processes_before.clone();
    before.sort();
    assert_eq!(after, before, "launcher processes were duplicated or lost");

    // The launcher killed while the daemon was down: Failed (signal 9), then restarted.
    let old = vmi_uid(&dies).unwrap();
    let view = wait_for(&client, "dies", "a new instance", |v| {
        vmi_uid(v).is_some_and(|u| u != old) && v.status == "Running"
    })
    .await;
    assert!(view
        .events
        .iter()
        .any(|e| e.reason == "LauncherKilled" && e.message.contains(&old)));

    // The monitor killed: the launcher vanished unrecorded; the orphan is killed with the
    // cgroup and a new instance starts.
    let old = vmi_uid(&orphan).unwrap();
    let view = wait_for(&client, "orphan", "a new instance", |v| {
        vmi_uid(v).is_some_and(|u| u != old) && v.status == "Running"
    })
    .await;
    assert!(view.events.iter().any(|e| e.reason == "LauncherDied"));
    assert!(!alive(orphan_launcher), "the orphaned launcher still runs");
    assert_eq!(daemon.vm_processes("orphan").len(), 2);

    // The re-adopted launcher is still controlled.
    client.stop(vm("keep"), false, 0).await.unwrap();
    wait_for(&client, "keep", "Stopped", |v| v.status == "Stopped").await;
    assert!(!alive(keep_pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_apply_leaves_all_or_nothing() {
    let mut daemon = Daemon::start(Options::default());
    const COUNT: usize = 25;
    for round in 0..5u64 {
        let client = daemon.client().await;
        let yaml: Vec<String> = (0..COUNT)
            .map(|i| manifest(&format!("r{round}-vm{i}"), "Halted", ""))
            .collect();
        let apply =
            tokio::spawn(async move { client.apply(yaml.join("---\n"), "many.yaml".into()).await });
        tokio::time::sleep(Duration::from_millis(5 + round * 7)).await;
        daemon.kill9();
        let _ = apply.await;
        daemon.restart();
        let client = daemon.client().await;
        let names: Vec<String> = client
            .list(None)
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .filter(|n| n.starts_with(&format!("r{round}-")))
            .collect();
        assert!(
            names.is_empty() || names.len() == COUNT,
            "round {round}: {} of {COUNT} VMs after the kill",
            names.len()
        );
        // Applying again completes the set without duplicates.
        let yaml: Vec<String> = (0..COUNT)
            .map(|i| manifest(&format!("r{round}-vm{i}"), "Halted", ""))
            .collect();
        let applied = client
            .apply(yaml.join("---\n"), "many.yaml".into())
            .await
            .unwrap();
        let expected = if names.is_empty() {
            "created"
        } else {
            "unchanged"
        };
        assert!(applied.iter().all(|o| o.action == expected), "{applied:?}");
    }
    let client = daemon.client().await;
    assert_eq!(client.list(None).await.unwrap().len(), COUNT * 5);
}
