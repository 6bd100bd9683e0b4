//! End to end with the real software-emulation launcher (`ironvisor-launcher-qemu`, QEMU
//! TCG through libvirt) and the project's guest kernel and initramfs: start, boot log on
//! the console, graceful stop, delete.
//!
//! Needs root, a running libvirtd, `ironvisor-launcher-qemu` (`IRONVISOR_LAUNCHER_QEMU`,
//! else the newest one under `target/`) and the guest images (`python3 images/build.py`,
//! or `IRONVISOR_GUEST_KERNEL` / `IRONVISOR_GUEST_INITRD`), so it is `#[ignore]`d with
//! that reason and runs with `--include-ignored`; a missing prerequisite fails it.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{manifest, vm, wait_for_within, Daemon, Options};

/// A guest image file: `$env` when set, else the image build's.
fn guest_file(env: &str, name: &str) -> PathBuf {
    match std::env::var_os(env) {
        Some(path) => ironvisor_prereq::path(PathBuf::from(path), &format!("{env} names it")),
        None => ironvisor_prereq::guest_image(name),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, a running libvirtd, ironvisor-launcher-qemu and the guest images \
            (python3 images/build.py)"]
async fn a_vm_boots_under_qemu_tcg_and_stops_cleanly() {
    ironvisor_prereq::root();
    ironvisor_prereq::libvirtd();
    let launcher =
        ironvisor_prereq::workspace_binary("ironvisor-launcher-qemu", "IRONVISOR_LAUNCHER_QEMU");
    let kernel = guest_file("IRONVISOR_GUEST_KERNEL", "vmlinuz");
    let initrd = guest_file("IRONVISOR_GUEST_INITRD", "initrd");
    eprintln!("using {}", launcher.display());
    let daemon = Daemon::start(Options {
        launcher_qemu: Some(launcher),
        default_kernel: Some(kernel),
        default_initrd: Some(initrd),
        ..Options::default()
    });
    let client = daemon.client().await;
    let yaml = manifest("tcg", "Manual", "")
        .replace("guest: 64Mi", "guest: 256Mi")
        .replace(
            "terminationGracePeriodSeconds: 5",
            "terminationGracePeriodSeconds: 60",
        );
    client.apply(yaml, "tcg.yaml".into()).await.unwrap();
    client.start(vm("tcg")).await.unwrap();
    let boot = Duration::from_secs(180);
    let view = wait_for_within(&client, "tcg", "Running", boot, |v| v.status == "Running").await;
    assert_eq!(view.backend, "qemu-tcg");

    // The console replays the boot log and reaches the guest's init.
    let (input_tx, input_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let mut console = client
        .console(
            vm("tcg"),
            tokio_stream::wrappers::ReceiverStream::new(input_rx),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + boot;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("IRONVISOR-GUEST-INIT-REACHED") {
        assert!(
            Instant::now() < deadline,
            "no init marker on the console: {}",
            String::from_utf8_lossy(&seen)
        );
        match tokio::time::timeout(Duration::from_secs(5), console.next()).await {
            Ok(Ok(Some(chunk))) => seen.extend(chunk),
            Ok(Ok(None)) => panic!("console closed: {}", String::from_utf8_lossy(&seen)),
            Ok(Err(error)) => panic!("console: {error}"),
            Err(_) => {}
        }
    }
    assert!(String::from_utf8_lossy(&seen).contains("Linux version"));
    drop(input_tx);

    // A graceful stop: the guest shuts down by itself (exit 5).
    daemon.assert_vm_cgroup_in_use("tcg");
    client.stop(vm("tcg"), false, 0).await.unwrap();
    let view = wait_for_within(&client, "tcg", "Stopped", Duration::from_secs(120), |v| {
        v.status == "Stopped"
    })
    .await;
    assert!(
        view.events
            .iter()
            .any(|e| e.reason == "Stopped" && e.message.contains("code 5")),
        "{}",
        common::summarize(&view)
    );
    assert!(daemon.vm_processes("tcg").is_empty());

    client.delete(vm("tcg")).await.unwrap();
    assert!(!daemon.data_dir.join("vms/default/tcg").exists());
}
