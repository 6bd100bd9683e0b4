//! A full file system under the data directory: applies fail with a clear error, nothing
//! committed is lost, and the daemon keeps working (also after a restart).
//!
//! The tmpfs holds a few MiB: an empty redb database already takes about 0.5 MiB and
//! grows in steps of about 1 MiB, so a few hundred KiB would not even hold it.

mod common;

use std::path::Path;
use std::process::Command;

use common::{manifest, Daemon, Options};
use tonic::Code;

/// A small tmpfs, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ivh-full-")
            .tempdir_in("/tmp")
            .ok()?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .ok()?;
        status.success().then_some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn big_vm(name: &str) -> String {
    // ~16 KiB per VM, in an annotation (validation allows 256 KiB of annotations).
    let filler = "x".repeat(16 * 1024);
    manifest(name, "Halted", "").replacen(
        &format!("  name: {name}\n"),
        &format!("  name: {name}\n  annotations:\n    filler: \"{filler}\"\n"),
        1,
    )
}

/// With the daemon's free-space reserve: changes are refused before the database runs
/// out of space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: it mounts a small tmpfs"]
async fn a_full_data_dir_refuses_changes_and_keeps_the_state() {
    fill_up(None, "6m").await;
}

/// Without the reserve: the database itself hits ENOSPC mid-commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: it mounts a small tmpfs"]
async fn enospc_inside_the_database_loses_nothing() {
    fill_up(Some(0), "5m").await;
}

async fn fill_up(store_min_free_bytes: Option<u64>, size: &str) {
    assert!(common::is_root(), "mounting a tmpfs needs root");
    let Some(tmpfs) = Tmpfs::mount(size) else {
        panic!("cannot mount a tmpfs here");
    };
    let mut daemon = Daemon::start(Options {
        data_dir: Some(tmpfs.path().join("data")),
        store_min_free_bytes,
        ..Options::default()
    });
    // Space an operator can free later.
    let ballast = tmpfs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 1536 * 1024]).unwrap();
    let client = daemon.client().await;
    let mut stored = Vec::new();
    let mut refusal = None;
    for i in 0..200 {
        let name = format!("fill-{i}");
        match client.apply(big_vm(&name), format!("{name}.yaml")).await {
            Ok(applied) => {
                assert_eq!(applied[0].action, "created");
                stored.push(name);
            }
            Err(error) => {
                refusal = Some(error);
                break;
            }
        }
    }
    let error = refusal.expect("the tmpfs never filled up");
    match &error {
        ironvisor_handler_api::ClientError::Rejected { code, message, .. } => {
            assert_eq!(*code, Code::ResourceExhausted, "{message}");
            assert!(message.contains("no space left"), "{message}");
            assert!(message.contains("state.redb"), "{message}");
            assert!(message.contains("intact"), "{message}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert!(!stored.is_empty(), "not even one VM fitted");
    eprintln!(
        "{} VMs fitted before the file system was full",
        stored.len()
    );

    // Everything applied before is there, and reads keep working.
    let names: Vec<String> = client
        .list(None)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names.len(), stored.len(), "{names:?}");
    for name in &stored {
        assert!(names.contains(name), "{name} lost");
    }
    // Another apply: with the reserve it is refused again and nothing changes. Without
    // it, the database reopened after the failed commit may have reclaimed the pages
    // that commit had taken, so the apply may fit; either way it is all or nothing.
    match client.apply(big_vm("retry"), "retry.yaml".into()).await {
        Err(again) => {
            assert_eq!(again.code(), Some(Code::ResourceExhausted), "{again}");
            assert_eq!(client.list(None).await.unwrap().len(), stored.len());
        }
        Ok(applied) => {
            assert_eq!(
                store_min_free_bytes,
                Some(0),
                "with the free-space reserve a full file system must refuse every change"
            );
            assert_eq!(applied[0].action, "created");
            stored.push("retry".to_string());
            assert_eq!(client.list(None).await.unwrap().len(), stored.len());
        }
    }

    // Freeing space lets changes through again, without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let applied = client
        .apply(big_vm("late"), "late.yaml".into())
        .await
        .unwrap();
    assert_eq!(applied[0].action, "created");
    stored.push("late".to_string());

    // And the state survives a restart.
    daemon.restart();
    let client = daemon.client().await;
    let after: Vec<String> = client
        .list(None)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    for name in &stored {
        assert!(after.contains(name), "{name} lost across the restart");
    }
    drop(daemon);
    drop(tmpfs);
}
