//! KVM's own exit counters for one VMM's VM, read from debugfs.
//!
//! KVM gives every VM a debugfs directory `<root>/<tid>-<vm fd>/` whose files hold the VM's
//! counters, the vCPU ones summed over its vCPUs; `tid` is the thread that created the VM
//! (Cloud Hypervisor creates it on a thread of its own, not the main one). Reading them the moment the guest's
//! marker arrives shows how the guest's boot exercised the VMM (exits, port and MMIO
//! exits, emulated instructions, page faults taken by KVM).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The counters read for every VM.
pub const COUNTERS: [&str; 6] = [
    "exits",
    "io_exits",
    "mmio_exits",
    "insn_emulation",
    "irq_window_exits",
    "pf_taken",
];

/// Why the counters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KvmStatsError {
    /// The debugfs directory could not be listed.
    #[error("cannot list {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A counter file could not be read or held no number.
    #[error("cannot read KVM counter {path}: {detail}")]
    Counter { path: PathBuf, detail: String },
}

/// The thread ids of process `pid` (just `pid` when /proc cannot list them).
pub fn threads_of(pid: u32) -> Vec<u32> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if !tids.contains(&pid) {
        tids.push(pid);
    }
    tids
}

/// The counters of the VM that one of `tids` created, under `root` (usually
/// `/sys/kernel/debug/kvm`); `None` when `root` does not exist (debugfs not mounted) or
/// there is no such VM. A process with more than one VM (a VMM probing KVM with a scratch
/// VM) is represented by the VM with the most exits.
pub fn read_for_threads(
    root: &Path,
    tids: &[u32],
) -> Result<Option<BTreeMap<String, u64>>, KvmStatsError> {
    if !root.is_dir() {
        return Ok(None);
    }
    let entries = std::fs::read_dir(root).map_err(|source| KvmStatsError::List {
        path: root.to_path_buf(),
        source,
    })?;
    let mut best: Option<BTreeMap<String, u64>> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let creator = name.to_str().and_then(|n| {
            let (tid, fd) = n.split_once('-')?;
            fd.parse::<u32>().ok()?;
            tid.parse::<u32>().ok()
        });
        if !creator.is_some_and(|tid| tids.contains(&tid)) {
            continue;
        }
        let counters = read_vm_dir(&entry.path())?;
        let exits = |c: &BTreeMap<String, u64>| c.get("exits").copied().unwrap_or(0);
        if best.as_ref().is_none_or(|b| exits(&counters) > exits(b)) {
            best = Some(counters);
        }
    }
    Ok(best)
}

fn read_vm_dir(dir: &Path) -> Result<BTreeMap<String, u64>, KvmStatsError> {
    let mut counters = BTreeMap::new();
    for name in COUNTERS {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| KvmStatsError::Counter {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let value = text
            .trim()
            .parse::<u64>()
            .map_err(|e| KvmStatsError::Counter {
                path: path.clone(),
                detail: format!("{:?} is not a count: {e}", text.trim()),
            })?;
        counters.insert(name.to_string(), value);
    }
    Ok(counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_vm(root: &Path, dir: &str, exits: u64) {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        for (i, name) in COUNTERS.iter().enumerate() {
            let value = if *name == "exits" { exits } else { i as u64 };
            std::fs::write(d.join(name), format!("{value}\n")).unwrap();
        }
    }

    #[test]
    fn a_missing_debugfs_gives_no_counters() {
        assert!(read_for_threads(Path::new("/nonexistent/kvm"), &[1])
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_busiest_vm_of_the_threads_is_read_and_others_are_ignored() {
        let root = tempfile::tempdir().unwrap();
        fake_vm(root.path(), "42-11", 7);
        fake_vm(root.path(), "42-12", 900);
        fake_vm(root.path(), "420-11", 5000);
        fake_vm(root.path(), "43-5", 100);
        std::fs::create_dir_all(root.path().join("42-vcpu0")).unwrap();
        let c = read_for_threads(root.path(), &[42]).unwrap().unwrap();
        assert_eq!(c["exits"], 900);
        assert_eq!(c["pf_taken"], 5);
        assert_eq!(c.len(), COUNTERS.len());
        assert!(read_for_threads(root.path(), &[4]).unwrap().is_none());
        // A VM created on another thread of the process.
        let c = read_for_threads(root.path(), &[40, 43]).unwrap().unwrap();
        assert_eq!(c["exits"], 100);
    }

    #[test]
    fn the_threads_of_this_process_include_itself() {
        let me = std::process::id();
        let handle =
            std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(300)));
        assert!(threads_of(me).contains(&me));
        assert!(threads_of(me).len() >= 2);
        handle.join().unwrap();
        assert_eq!(threads_of(u32::MAX), vec![u32::MAX]);
    }

    #[test]
    fn a_garbled_counter_is_an_error_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        fake_vm(root.path(), "9-3", 1);
        std::fs::write(root.path().join("9-3/io_exits"), "lots\n").unwrap();
        let err = read_for_threads(root.path(), &[9]).unwrap_err().to_string();
        assert!(err.contains("io_exits") && err.contains("lots"), "{err}");
    }
}
