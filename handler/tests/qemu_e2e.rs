//! End to end with the real software-emulation launcher (`ironvisor-launcher-qemu`, QEMU
//! TCG through libvirt) and the project's guest kernel and initramfs: start, boot log on
//! the console, graceful stop, delete.
//!
//! Runs when everything it needs is there, and says why it is skipped otherwise:
//! - the launcher binary: `IRONVISOR_LAUNCHER_QEMU`, else the newest
//!   `target/*/debug/ironvisor-launcher-qemu` of the workspace;
//! - the guest images from `python3 images/build.py` (`.cache/images/vmlinuz`,
//!   `initrd.cpio.gz`), or `IRONVISOR_GUEST_KERNEL` / `IRONVISOR_GUEST_INITRD`;
//! - a running `libvirtd`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{manifest, vm, wait_for_within, Daemon, Options};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn launcher_qemu() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("IRONVISOR_LAUNCHER_QEMU") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let mut found: Vec<(std::time::SystemTime, PathBuf)> =
        std::fs::read_dir(workspace().join("target"))
            .ok()?
            .flatten()
            .map(|e| e.path().join("debug/ironvisor-launcher-qemu"))
            .chain(std::iter::once(
                workspace().join("target/debug/ironvisor-launcher-qemu"),
            ))
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

fn guest_file(env: &str, name: &str) -> Option<PathBuf> {
    std::env::var_os(env)
        .map(PathBuf::from)
        .or_else(|| Some(workspace().join(".cache/images").join(name)))
        .filter(|p| p.is_file())
}

fn libvirtd_running() -> bool {
    Command::new("pgrep")
        .args(["-x", "libvirtd"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_boots_under_qemu_tcg_and_stops_cleanly() {
    let (Some(launcher), Some(kernel), Some(initrd)) = (
        launcher_qemu(),
        guest_file("IRONVISOR_GUEST_KERNEL", "vmlinuz"),
        guest_file("IRONVISOR_GUEST_INITRD", "initrd.cpio.gz"),
    ) else {
        eprintln!(
            "skipped: needs ironvisor-launcher-qemu and the guest images (see the module docs)"
        );
        return;
    };
    if !common::is_root() || !libvirtd_running() {
        eprintln!("skipped: needs root and a running libvirtd");
        return;
    }
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
