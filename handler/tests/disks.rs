//! Volumes through `ironvisor-disks`: a containerDisk overlay that persists across
//! instances until delete, an emptyDisk recreated per instance, a cloud-init seed, boot
//! order, and clear failures for a missing base image or host disk.

mod common;

use common::{condition, vm, wait_for, Daemon, Options};

fn disk_vm(name: &str, image: &str, host_disk: Option<&str>) -> String {
    let (host_disk_entry, host_volume) = match host_disk {
        Some(path) => (
            "            - name: host\n".to_string(),
            format!("        - name: host\n          hostDisk:\n            path: {path}\n            type: Disk\n"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "apiVersion: ironvisor.io/v1alpha1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Manual
  template:
    spec:
      terminationGracePeriodSeconds: 5
      domain:
        memory:
          guest: 64Mi
        devices:
          autoattachPodInterface: false
          disks:
            - name: scratch
            - name: rootdisk
              bootOrder: 1
              disk:
                bus: virtio
            - name: cloudinit
{host_disk_entry}      volumes:
        - name: rootdisk
          containerDisk:
            image: {image}
        - name: scratch
          emptyDisk:
            capacity: 16Mi
        - name: cloudinit
          cloudInitNoCloud:
            userData: |
              #cloud-config
              hostname: {name}
{host_volume}"
    )
}

fn launch_disks(daemon: &Daemon, name: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(
        daemon
            .data_dir
            .join(format!("vms/default/{name}/launcher.json")),
    )
    .unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["disks"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the node agent makes cgroups and namespaces for each VM"]
async fn volumes_become_disks_with_the_right_lifetimes() {
    ironvisor_prereq::root();
    let daemon = Daemon::start(Options::default());
    let base = daemon.images_dir().join("test/rootfs/1.img");
    std::fs::create_dir_all(base.parent().unwrap()).unwrap();
    let base_bytes: Vec<u8> = (0..(1024 * 1024)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&base, &base_bytes).unwrap();
    let client = daemon.client().await;
    client
        .apply(disk_vm("d", "test/rootfs:1", None), "d.yaml".into())
        .await
        .unwrap();
    client.start(vm("d")).await.unwrap();
    wait_for(&client, "d", "Running", |v| v.status == "Running").await;

    let disks = launch_disks(&daemon, "d");
    let ids: Vec<&str> = disks.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec!["rootdisk", "scratch", "cloudinit"],
        "boot order first"
    );
    let overlay = std::path::PathBuf::from(disks[0]["path"].as_str().unwrap());
    let empty = std::path::PathBuf::from(disks[1]["path"].as_str().unwrap());
    let seed = std::path::PathBuf::from(disks[2]["path"].as_str().unwrap());
    let vm_dir = daemon.data_dir.join("vms/default/d");
    for path in [&overlay, &empty, &seed] {
        assert!(
            path.starts_with(&vm_dir),
            "{} outside the VM directory",
            path.display()
        );
        assert!(path.is_file(), "{} missing", path.display());
    }
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 16 * 1024 * 1024);
    // The launcher is told each image's format (it never probes a guest-writable file).
    let formats: Vec<&str> = disks
        .iter()
        .map(|d| d["format"].as_str().unwrap())
        .collect();
    assert_eq!(formats, vec!["qcow2", "raw", "raw"]);

    // Stop: the emptyDisk goes with the instance, the overlay stays with the VM.
    client.stop(vm("d"), false, 0).await.unwrap();
    wait_for(&client, "d", "Stopped", |v| v.status == "Stopped").await;
    assert!(!empty.exists(), "emptyDisk kept after the instance ended");
    assert!(
        overlay.exists(),
        "overlay removed before the VM was deleted"
    );
    client.start(vm("d")).await.unwrap();
    wait_for(&client, "d", "Running again", |v| v.status == "Running").await;
    assert!(empty.exists(), "emptyDisk not recreated");

    client.delete(vm("d")).await.unwrap();
    assert!(!vm_dir.exists(), "VM directory left after delete");
    assert_eq!(
        std::fs::read(&base).unwrap(),
        base_bytes,
        "the base image changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the node agent makes cgroups and namespaces for each VM"]
async fn missing_base_image_and_host_disk_fail_with_reasons() {
    ironvisor_prereq::root();
    let daemon = Daemon::start(Options::default());
    let client = daemon.client().await;
    let yaml = format!(
        "{}---\n{}",
        disk_vm("noimage", "test/rootfs:missing", None),
        disk_vm(
            "nohost",
            "test/rootfs:missing",
            Some("/nonexistent/host.img")
        )
        .replace("image: test/rootfs:missing", "image: test/rootfs:there")
    );
    let base = daemon.images_dir().join("test/rootfs/there.img");
    std::fs::create_dir_all(base.parent().unwrap()).unwrap();
    std::fs::write(&base, vec![0u8; 4096]).unwrap();
    client.apply(yaml, "bad.yaml".into()).await.unwrap();
    client.start(vm("noimage")).await.unwrap();
    client.start(vm("nohost")).await.unwrap();

    let view = wait_for(&client, "noimage", "ErrImagePull", |v| {
        v.status == "ErrImagePull"
    })
    .await;
    assert_eq!(view.phase, "Failed");
    let (_, reason, message) = condition(&view, "Failure").unwrap();
    assert_eq!(reason, "ImageNotFound");
    assert!(message.contains("test/rootfs:missing"), "{message}");
    assert!(message.contains("default/noimage"), "{message}");
    assert!(view
        .events
        .iter()
        .any(|e| e.reason == "FailedCreate" && e.r#type == "Warning"));
    assert!(daemon.vm_processes("noimage").is_empty());

    let view = wait_for(&client, "nohost", "Failed with a Failure condition", |v| {
        v.phase == "Failed" && condition(v, "Failure").is_some()
    })
    .await;
    let (_, reason, message) = condition(&view, "Failure").unwrap();
    assert_eq!(reason, "HostDiskNotFound");
    assert!(message.contains("/nonexistent/host.img"), "{message}");
    // Nothing half-made is left: no runtime directory, no cgroup.
    assert!(std::fs::read_dir(daemon.run_dir.join("vmi")).map_or(true, |mut d| d.next().is_none()));
    for dir in daemon.vm_cgroups("nohost") {
        assert!(!dir.exists(), "cgroup {} left", dir.display());
    }
}
