//! Backend choice: without usable hardware KVM a VM runs under software emulation with a
//! warning, and a VM that requires hardware isolation is refused with the host check's
//! reason instead of falling back.

mod common;

use std::time::Duration;

use common::{condition, manifest, vm, wait_for, Daemon, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the node agent makes cgroups and namespaces for each VM"]
async fn hardware_isolation_required_is_refused_without_kvm() {
    ironvisor_prereq::root();
    // The real host check decides (`--backend auto`) when it fails here, as on the
    // project's PVM machines; on a host with hardware KVM, emulation is forced instead.
    let host_check = ironvisor_launcher::host::HostCaps::probe().check_hardware_kvm();
    let (backend, expected) = match host_check {
        Err(error) => ("auto", error.to_string()),
        Ok(()) => ("qemu-tcg", "software emulation is forced".to_string()),
    };
    let daemon = Daemon::start(Options {
        backend,
        ..Options::default()
    });
    let client = daemon.client().await;
    let isolated = manifest("isolated", "Always", "").replace(
        "      domain:\n",
        "      domain:\n        features:\n          hardwareIsolation: Required\n",
    );
    let yaml = format!("{isolated}---\n{}", manifest("preferred", "Always", ""));
    client.apply(yaml, "vms.yaml".into()).await.unwrap();

    let view = wait_for(&client, "isolated", "ErrorUnschedulable", |v| {
        v.status == "ErrorUnschedulable"
    })
    .await;
    let (status, reason, message) = condition(&view, "Failure").expect("Failure condition");
    assert_eq!(status, "True");
    assert_eq!(reason, "HardwareIsolationUnavailable");
    assert!(message.contains(&expected), "{message} lacks {expected}");
    assert!(
        message.contains("hardwareIsolation: Preferred"),
        "{message}"
    );
    assert!(view.events.iter().any(|e| e.r#type == "Warning"
        && e.reason == "HardwareIsolationUnavailable"
        && e.message.contains(&expected)));
    assert_eq!(view.phase, "", "an instance was created");
    assert!(!view.ready);
    // It never starts, and the condition is reported once.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let view = client.get(vm("isolated")).await.unwrap();
    assert_eq!(view.status, "ErrorUnschedulable");
    assert!(daemon.vm_processes("isolated").is_empty());
    let warnings = view
        .events
        .iter()
        .filter(|e| e.reason == "HardwareIsolationUnavailable")
        .count();
    assert_eq!(warnings, 1);

    // The VM that prefers hardware isolation runs emulated, with a warning.
    let view = wait_for(&client, "preferred", "Running", |v| v.status == "Running").await;
    assert_eq!(view.backend, "qemu-tcg");
    assert_eq!(common::vmi_json(&view)["status"]["isolation"], "Emulation");
    assert!(view.events.iter().any(|e| e.r#type == "Warning"
        && e.reason == "SoftwareEmulation"
        && e.message.contains(&expected)));

    // Stopping the unschedulable VM clears the error.
    client.stop(vm("isolated"), false, 0).await.unwrap();
    let view = wait_for(&client, "isolated", "Stopped", |v| v.status == "Stopped").await;
    assert!(condition(&view, "Failure").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_memory_than_the_node_has_is_unschedulable() {
    let daemon = Daemon::start(Options::default());
    let client = daemon.client().await;
    let yaml = manifest("huge", "Always", "").replace("guest: 64Mi", "guest: 900Gi");
    client.apply(yaml, "huge.yaml".into()).await.unwrap();
    let view = wait_for(&client, "huge", "ErrorUnschedulable", |v| {
        v.status == "ErrorUnschedulable"
    })
    .await;
    let (_, reason, message) = condition(&view, "Failure").expect("Failure condition");
    assert_eq!(reason, "InsufficientMemory");
    assert!(message.contains("900Gi"), "{message}");
    assert!(message.contains("default/huge"), "{message}");
    assert!(daemon.vm_processes("huge").is_empty());
}
