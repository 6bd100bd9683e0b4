//! `dedicatedCpuPlacement: true`: each vCPU gets a host CPU of its own, written into the
//! launcher configuration as `vcpu_affinity`; a VM that needs more free CPUs than the
//! node has is refused with the numbers, and a stopped VM gives its CPUs back.

mod common;

use std::path::{Path, PathBuf};

use common::{condition, manifest, vm, wait_for, Daemon, Options};

fn dedicated(name: &str, cores: usize) -> String {
    dedicated_with_args(name, cores, "")
}

/// A dedicated-CPU VM whose (fake) launcher behaves as `kernel_args` say.
fn dedicated_with_args(name: &str, cores: usize, kernel_args: &str) -> String {
    manifest(name, "Always", kernel_args).replace(
        "      domain:\n",
        &format!("      domain:\n        cpu:\n          cores: {cores}\n          dedicatedCpuPlacement: true\n"),
    )
}

/// Every launcher configuration file under `dir`.
fn launcher_configs(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "launcher.json") {
                found.push(path);
            }
        }
    }
    found
}

fn affinity_of(config: &Path) -> (String, serde_json::Value) {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    (
        json["name"].as_str().unwrap().to_string(),
        json["vcpu_affinity"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the node agent makes cgroups and namespaces for each VM"]
async fn vcpus_get_dedicated_cpus_until_none_are_left() {
    ironvisor_prereq::root();
    let cpus = ironvisor_launcher_api::cpulist::of_this_thread().unwrap();
    // The lowest CPU stays shared on nodes with more than one.
    let pool: Vec<u32> = if cpus.len() > 1 {
        cpus[1..].to_vec()
    } else {
        cpus.clone()
    };
    let daemon = Daemon::start(Options::default());
    let client = daemon.client().await;
    let yaml = format!(
        "{}---\n{}",
        dedicated("pinned", 1),
        dedicated("toobig", pool.len() + 1)
    );
    client.apply(yaml, "vms.yaml".into()).await.unwrap();

    let view = wait_for(&client, "pinned", "Running", |v| v.status == "Running").await;
    let expected = pool[0].to_string();
    assert!(
        view.events.iter().any(|e| e.reason == "DedicatedCpus"
            && e.message.ends_with(&format!("host CPUs {expected}"))),
        "{:#?}",
        view.events
    );
    let configs: Vec<_> = launcher_configs(daemon.dir.path())
        .iter()
        .map(|p| affinity_of(p))
        .collect();
    assert!(
        configs.contains(&("pinned".to_string(), serde_json::json!([[pool[0]]]))),
        "{configs:?}"
    );

    let view = wait_for(&client, "toobig", "ErrorUnschedulable", |v| {
        v.status == "ErrorUnschedulable"
    })
    .await;
    let (_, reason, message) = condition(&view, "Failure").expect("Failure condition");
    assert_eq!(reason, "InsufficientDedicatedCpus");
    assert!(message.contains("default/toobig"), "{message}");
    assert!(
        message.contains(&format!("needs {} dedicated", pool.len() + 1)),
        "{message}"
    );
    assert!(daemon.vm_processes("toobig").is_empty());

    // A second one-vCPU VM fits only if the node has a second free CPU.
    client
        .apply(dedicated("second", 1), "second.yaml".into())
        .await
        .unwrap();
    if pool.len() > 1 {
        let view = wait_for(&client, "second", "Running", |v| v.status == "Running").await;
        assert!(view
            .events
            .iter()
            .any(|e| e.reason == "DedicatedCpus" && e.message.ends_with(&pool[1].to_string())));
    } else {
        let view = wait_for(&client, "second", "ErrorUnschedulable", |v| {
            v.status == "ErrorUnschedulable"
        })
        .await;
        let (_, _, message) = condition(&view, "Failure").expect("Failure condition");
        assert!(message.contains("only 0"), "{message}");
        // Stopping the first VM frees its CPU for the second.
        client.stop(vm("pinned"), false, 0).await.unwrap();
        wait_for(&client, "pinned", "Stopped", |v| v.status == "Stopped").await;
        let view = wait_for(&client, "second", "Running", |v| v.status == "Running").await;
        assert!(view
            .events
            .iter()
            .any(|e| e.reason == "DedicatedCpus" && e.message.ends_with(&expected)));
    }
}

/// Where `reason` is in the VM's events (the first time), if at all.
fn event_index(view: &ironvisor_handler_api::proto::VmView, reason: &str) -> Option<usize> {
    view.events.iter().position(|e| e.reason == reason)
}

/// The pinning event states what the launcher reports once the guest runs: nothing while
/// the launcher is still starting, then the CPUs it pinned (between the instance's
/// creation and its start), or a warning when it did not pin as asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the node agent makes cgroups and namespaces for each VM"]
async fn the_pinning_event_follows_what_the_launcher_reports() {
    ironvisor_prereq::root();
    let daemon = Daemon::start(Options::default());
    let client = daemon.client().await;

    let yaml = dedicated_with_args("slow", 1, "fake.boot_ms=3000");
    client.apply(yaml, "slow.yaml".into()).await.unwrap();
    let starting = wait_for(&client, "slow", "its instance created", |v| {
        event_index(v, "SuccessfulCreate").is_some()
    })
    .await;
    assert_ne!(
        starting.status,
        "Running",
        "{}",
        common::summarize(&starting)
    );
    assert_eq!(
        event_index(&starting, "DedicatedCpus"),
        None,
        "pinning reported before the launcher ran: {}",
        common::summarize(&starting)
    );
    let running = wait_for(&client, "slow", "Running", |v| v.status == "Running").await;
    let (created, pinned, started) = (
        event_index(&running, "SuccessfulCreate"),
        event_index(&running, "DedicatedCpus"),
        event_index(&running, "Started"),
    );
    assert!(
        created < pinned && pinned < started && created.is_some(),
        "events out of order: {}",
        common::summarize(&running)
    );
    client.stop(vm("slow"), false, 0).await.unwrap();
    wait_for(&client, "slow", "Stopped", |v| v.status == "Stopped").await;

    let yaml = dedicated_with_args("unpinned", 1, "fake.pinning=none");
    client.apply(yaml, "unpinned.yaml".into()).await.unwrap();
    let view = wait_for(&client, "unpinned", "Running", |v| v.status == "Running").await;
    assert_eq!(event_index(&view, "DedicatedCpus"), None);
    let warning = view
        .events
        .iter()
        .find(|e| e.reason == "DedicatedCpusNotApplied")
        .unwrap_or_else(|| panic!("no warning: {}", common::summarize(&view)));
    assert_eq!(warning.r#type, "Warning");
    assert!(
        warning
            .message
            .ends_with("but the launcher reports no pinning"),
        "{}",
        warning.message
    );
}
