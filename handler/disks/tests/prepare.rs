//! End-to-end behaviour of `prepare` and `cleanup` on real files.

use std::fs;
use std::path::{Path, PathBuf};

use ironvisor_diskimage::open_as;
use ironvisor_disks::{
    cleanup, disks_dir, prepare, DiskContext, DiskError, DiskFormat, ImageStore, OciCache,
    PreparedDisk, VolumeRequest, VolumeSource,
};

struct Node {
    _root: tempfile::TempDir,
    root: PathBuf,
    ctx: DiskContext,
    base: PathBuf,
    base_bytes: Vec<u8>,
}

/// A node with an image store holding `ironvisor/rootfs:busybox` (raw, 2 MiB pattern) and
/// `ironvisor/rootfs:other`, and a volumes directory holding the claim `data`.
fn node() -> Node {
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path().to_path_buf();
    let images = root.join("images");
    let base = images.join("ironvisor/rootfs/busybox.img");
    fs::create_dir_all(base.parent().unwrap()).unwrap();
    let base_bytes: Vec<u8> = (0..2u32 << 20).map(|i| (i % 253) as u8).collect();
    fs::write(&base, &base_bytes).unwrap();
    fs::write(
        images.join("ironvisor/rootfs/other.img"),
        vec![7u8; 1 << 20],
    )
    .unwrap();
    let volumes = root.join("volumes");
    fs::create_dir_all(&volumes).unwrap();
    fs::File::create(volumes.join("data.img"))
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let ctx = DiskContext {
        vm_dir: root.join("vms/default/vm1"),
        vm_name: "vm1".into(),
        vm_uid: "6a1e7c1e-0000-4000-8000-000000000001".into(),
        images: ImageStore::new(&images),
        oci_cache: OciCache::new(root.join("oci-disks")),
        volumes_dir: volumes,
    };
    Node {
        _root: root_dir,
        root,
        ctx,
        base,
        base_bytes,
    }
}

fn vol(name: &str, source: VolumeSource) -> VolumeRequest {
    VolumeRequest {
        name: name.into(),
        source,
        read_only: false,
        serial: None,
    }
}

fn container(image: &str) -> VolumeSource {
    VolumeSource::ContainerDisk {
        image: image.into(),
    }
}

fn all_kinds(n: &Node) -> Vec<VolumeRequest> {
    vec![
        VolumeRequest {
            serial: Some("root-serial".into()),
            ..vol("rootdisk", container("ironvisor/rootfs:busybox"))
        },
        vol(
            "scratch",
            VolumeSource::EmptyDisk {
                capacity_bytes: 1000,
            },
        ),
        vol(
            "hostcreated",
            VolumeSource::HostDisk {
                path: n.root.join("host/new/disk.img"),
                create: true,
                capacity_bytes: Some(3 << 20),
            },
        ),
        vol(
            "claim",
            VolumeSource::Pvc {
                claim: "data".into(),
                read_only: true,
            },
        ),
        vol(
            "cloudinit",
            VolumeSource::CloudInitNoCloud {
                user_data: Some("#cloud-config\npassword: x\n".into()),
                user_data_base64: None,
                network_data: None,
            },
        ),
    ]
}

fn read(disk: &PreparedDisk, offset: u64, len: usize) -> Vec<u8> {
    let mut img = open_as(&disk.path, disk.format, true).unwrap();
    let mut buf = vec![0u8; len];
    img.read_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn prepares_every_kind_reuses_on_restart_and_cleans_up_only_its_own() {
    let n = node();
    let disks = prepare(&n.ctx, &all_kinds(&n)).unwrap();
    let dir = disks_dir(&n.ctx.vm_dir);

    let root = &disks[0];
    assert_eq!(root.name, "rootdisk");
    assert_eq!(root.path, dir.join("rootdisk.overlay.qcow2"));
    assert_eq!(root.format, DiskFormat::Qcow2);
    assert_eq!(root.serial.as_deref(), Some("root-serial"));
    assert!(root.owned && !root.read_only);
    assert_eq!(read(root, 4096, 16), n.base_bytes[4096..4112]);

    let scratch = &disks[1];
    assert_eq!(scratch.format, DiskFormat::Raw);
    assert_eq!(
        fs::metadata(&scratch.path).unwrap().len(),
        1024,
        "rounded to sectors"
    );

    let host = &disks[2];
    assert_eq!(host.path, n.root.join("host/new/disk.img"));
    assert!(!host.owned);
    assert_eq!(fs::metadata(&host.path).unwrap().len(), 3 << 20);

    let claim = &disks[3];
    assert_eq!(claim.path, n.ctx.volumes_dir.join("data.img"));
    assert!(claim.read_only && !claim.owned);

    let ci = &disks[4];
    assert_eq!(ci.path, dir.join("cloudinit.cidata.img"));
    assert!(ci.owned);

    // The guest writes to its overlay and its empty disk.
    let mut img = open_as(&root.path, root.format, false).unwrap();
    img.write_at(b"guest wrote this", 4096).unwrap();
    img.flush().unwrap();
    drop(img);
    let mut img = open_as(&scratch.path, scratch.format, false).unwrap();
    img.write_at(b"scratch", 0).unwrap();
    drop(img);
    let seed_before = fs::read(&ci.path).unwrap();

    // Node agent restarts: same answer, data kept, base untouched.
    let again = prepare(&n.ctx, &all_kinds(&n)).unwrap();
    assert_eq!(again, disks);
    assert_eq!(read(root, 4096, 16), b"guest wrote this");
    assert_eq!(read(scratch, 0, 7), b"scratch");
    assert_eq!(fs::read(&ci.path).unwrap(), seed_before);
    assert_eq!(
        fs::read(&n.base).unwrap(),
        n.base_bytes,
        "base image modified"
    );

    cleanup(&n.ctx.vm_dir).unwrap();
    assert!(!dir.exists(), "disks directory left behind");
    assert!(host.path.exists(), "hostDisk must outlive the VM");
    assert!(claim.path.exists(), "PVC image must outlive the VM");
    assert_eq!(fs::read(&n.base).unwrap(), n.base_bytes);
    cleanup(&n.ctx.vm_dir).unwrap();

    // A fresh start after cleanup gets a fresh overlay.
    let fresh = prepare(&n.ctx, &all_kinds(&n)).unwrap();
    assert_eq!(read(&fresh[0], 4096, 16), n.base_bytes[4096..4112]);
}

#[test]
fn cleanup_leaves_files_it_did_not_create() {
    let n = node();
    prepare(&n.ctx, &all_kinds(&n)[..2]).unwrap();
    let dir = disks_dir(&n.ctx.vm_dir);
    let foreign = dir.join("operator-notes.txt");
    fs::write(&foreign, b"keep").unwrap();
    cleanup(&n.ctx.vm_dir).unwrap();
    assert_eq!(fs::read(&foreign).unwrap(), b"keep");
    assert!(!dir.join("rootdisk.overlay.qcow2").exists());
    assert!(!dir.join("scratch.empty.img").exists());
}

#[test]
fn missing_image_names_reference_files_and_what_exists() {
    let n = node();
    let err = prepare(&n.ctx, &[vol("root", container("ironvisor/rootfs:alpine"))]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DiskError::Image { .. }), "{msg}");
    for part in [
        "volume root",
        "ironvisor/rootfs:alpine",
        "ironvisor/rootfs/alpine.img",
        "ironvisor/rootfs/alpine.qcow2",
        "ironvisor/rootfs:busybox, ironvisor/rootfs:other",
    ] {
        assert!(msg.contains(part), "missing {part:?} in: {msg}");
    }
}

#[test]
fn overlay_for_another_image_is_not_silently_reused() {
    let n = node();
    prepare(
        &n.ctx,
        &[vol("root", container("ironvisor/rootfs:busybox"))],
    )
    .unwrap();
    let err = prepare(&n.ctx, &[vol("root", container("ironvisor/rootfs:other"))]).unwrap_err();
    assert!(matches!(err, DiskError::OverlayMismatch { .. }), "{err}");
    assert!(err.to_string().contains("other.img"), "{err}");
}

#[test]
fn qcow2_base_images_are_supported() {
    let n = node();
    let q = n.ctx.images.dir().join("chain/base/v1.qcow2");
    fs::create_dir_all(q.parent().unwrap()).unwrap();
    ironvisor_diskimage::create_overlay(&q, &n.base, DiskFormat::Raw).unwrap();
    let disks = prepare(&n.ctx, &[vol("root", container("chain/base:v1"))]).unwrap();
    let info = ironvisor_diskimage::inspect(&disks[0].path).unwrap();
    assert_eq!(info.backing_format.as_deref(), Some("qcow2"));
    assert_eq!(info.virtual_size, 2 << 20);
    assert_eq!(read(&disks[0], 100, 4), n.base_bytes[100..104]);
}

#[test]
fn host_disk_and_pvc_errors_say_what_to_do() {
    let n = node();
    let missing = n.root.join("nope/disk.img");
    let err = prepare(
        &n.ctx,
        &[vol(
            "h",
            VolumeSource::HostDisk {
                path: missing.clone(),
                create: false,
                capacity_bytes: None,
            },
        )],
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::HostDiskMissing { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains(missing.to_str().unwrap()) && msg.contains("DiskOrCreate"),
        "{msg}"
    );
    assert!(!missing.exists());

    let err = prepare(
        &n.ctx,
        &[vol(
            "h",
            VolumeSource::HostDisk {
                path: missing.clone(),
                create: true,
                capacity_bytes: None,
            },
        )],
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::HostDiskNoCapacity { .. }), "{err}");

    let err = prepare(
        &n.ctx,
        &[vol(
            "h",
            VolumeSource::HostDisk {
                path: "relative/disk.img".into(),
                create: true,
                capacity_bytes: Some(1 << 20),
            },
        )],
    )
    .unwrap_err();
    assert!(
        matches!(err, DiskError::HostDiskNotAbsolute { .. }),
        "{err}"
    );

    let err = prepare(
        &n.ctx,
        &[vol(
            "h",
            VolumeSource::HostDisk {
                path: n.root.clone(),
                create: false,
                capacity_bytes: None,
            },
        )],
    )
    .unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");

    let err = prepare(
        &n.ctx,
        &[vol(
            "p",
            VolumeSource::Pvc {
                claim: "missing".into(),
                read_only: false,
            },
        )],
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DiskError::PvcMissing { .. }), "{msg}");
    assert!(
        msg.contains("volumes/missing.img") && msg.contains("truncate -s"),
        "{msg}"
    );

    for claim in ["../etc/passwd", "", ".hidden", "a/b"] {
        let err = prepare(
            &n.ctx,
            &[vol(
                "p",
                VolumeSource::Pvc {
                    claim: claim.into(),
                    read_only: false,
                },
            )],
        )
        .unwrap_err();
        assert!(
            matches!(err, DiskError::InvalidClaimName { .. }),
            "{claim}: {err}"
        );
    }
}

#[test]
fn existing_host_disk_is_used_as_is() {
    let n = node();
    let path = n.root.join("existing.img");
    fs::write(&path, b"precious").unwrap();
    let disks = prepare(
        &n.ctx,
        &[vol(
            "h",
            VolumeSource::HostDisk {
                path: path.clone(),
                create: true,
                capacity_bytes: Some(1 << 30),
            },
        )],
    )
    .unwrap();
    assert_eq!(disks[0].path, path);
    assert_eq!(fs::read(&path).unwrap(), b"precious");
    cleanup(&n.ctx.vm_dir).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"precious");
}

#[test]
fn request_errors_are_caught_before_anything_is_created() {
    let n = node();
    let scratch = VolumeSource::EmptyDisk {
        capacity_bytes: 4096,
    };
    let err = prepare(
        &n.ctx,
        &[vol("a", scratch.clone()), vol("a", scratch.clone())],
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::DuplicateVolume { .. }), "{err}");
    for bad in ["", "../x", "Upper", "a/b", "-a", &"x".repeat(64)] {
        let err = prepare(&n.ctx, &[vol(bad, scratch.clone())]).unwrap_err();
        assert!(
            matches!(err, DiskError::InvalidVolumeName { .. }),
            "{bad}: {err}"
        );
    }
    assert!(!n.ctx.vm_dir.exists());

    let err = prepare(
        &n.ctx,
        &[vol("z", VolumeSource::EmptyDisk { capacity_bytes: 0 })],
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::InvalidCapacity { .. }), "{err}");

    let err = prepare(
        &n.ctx,
        &[vol(
            "c",
            VolumeSource::CloudInitNoCloud {
                user_data: Some("a".into()),
                user_data_base64: Some("YQ==".into()),
                network_data: None,
            },
        )],
    )
    .unwrap_err();
    assert!(err.to_string().contains("volume c"), "{err}");
    assert!(err.to_string().contains("only one"), "{err}");
}

#[test]
fn empty_disk_of_another_size_is_not_reused() {
    let n = node();
    prepare(
        &n.ctx,
        &[vol(
            "s",
            VolumeSource::EmptyDisk {
                capacity_bytes: 1 << 20,
            },
        )],
    )
    .unwrap();
    let err = prepare(
        &n.ctx,
        &[vol(
            "s",
            VolumeSource::EmptyDisk {
                capacity_bytes: 2 << 20,
            },
        )],
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DiskError::SizeMismatch {
                found: 1048576,
                expected: 2097152,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn changed_cloud_init_data_replaces_the_seed() {
    let n = node();
    let ci = |data: &str| {
        vol(
            "ci",
            VolumeSource::CloudInitNoCloud {
                user_data: None,
                user_data_base64: None,
                network_data: Some(data.into()),
            },
        )
    };
    let first = prepare(&n.ctx, &[ci("version: 1\n")]).unwrap();
    let before = fs::read(&first[0].path).unwrap();
    prepare(&n.ctx, &[ci("version: 2\n")]).unwrap();
    assert_ne!(fs::read(&first[0].path).unwrap(), before);
}

/// Runs `f` in a private mount namespace with a small tmpfs mounted at `at`; needs root.
fn with_small_tmpfs(at: &Path, size: &str, f: impl FnOnce() + Send + 'static) -> bool {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    let at = at.to_path_buf();
    let opts = format!("size={size}");
    std::thread::spawn(move || {
        // Mount namespaces are per thread: this one thread sees the tmpfs.
        if let Err(e) = unshare(CloneFlags::CLONE_NEWNS) {
            panic!("full-filesystem test: unshare(CLONE_NEWNS): {e} (run the tests as root)");
        }
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        mount(
            Some("tmpfs"),
            &at,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .unwrap();
        f();
        true
    })
    .join()
    .unwrap()
}

/// Fills the filesystem at `dir` until only about `leave` bytes are free.
fn fill(dir: &Path, leave: u64) {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    let free = st.blocks_available() * st.fragment_size();
    let filler = fs::File::create(dir.join("filler")).unwrap();
    // tmpfs allocates on write; write zeros for real.
    use std::io::Write;
    let mut w = std::io::BufWriter::new(filler);
    let chunk = vec![0u8; 4096];
    let mut left = free.saturating_sub(leave);
    while left > 0 {
        let n = left.min(4096) as usize;
        if w.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
    let _ = w.flush();
}

#[test]
#[ignore = "needs root (a private mount namespace with a small tmpfs)"]
fn full_filesystem_gives_no_space_and_leaves_no_half_made_file() {
    ironvisor_prereq::root();
    let n = node();
    let vm_dir = n.ctx.vm_dir.clone();
    fs::create_dir_all(&vm_dir).unwrap();
    let ctx = n.ctx.clone();
    let ran = with_small_tmpfs(&vm_dir, "1m", move || {
        let dir = disks_dir(&ctx.vm_dir);
        // A seed bigger than the whole filesystem.
        let big = vol(
            "ci",
            VolumeSource::CloudInitNoCloud {
                user_data: Some("x".repeat(2 << 20)),
                user_data_base64: None,
                network_data: None,
            },
        );
        let err = prepare(&ctx, &[big]).unwrap_err();
        match &err {
            DiskError::NoSpace { volume, path } => {
                assert_eq!(volume, "ci");
                assert_eq!(path, &dir.join("ci.cidata.img"));
            }
            other => panic!("expected NoSpace, got {other}"),
        }
        assert!(err.to_string().contains("no space left"), "{err}");
        assert!(!dir.join("ci.cidata.img").exists());
        assert!(!dir.join(".ci.cidata.img.tmp").exists());

        // An overlay on a nearly full filesystem.
        fill(&ctx.vm_dir, 16 << 10);
        let err = prepare(&ctx, &[vol("root", container("ironvisor/rootfs:busybox"))]).unwrap_err();
        assert!(matches!(err, DiskError::NoSpace { .. }), "{err}");
        assert!(err.to_string().contains("volume root"), "{err}");
        eprintln!("full filesystem error: {err}");
        assert!(!dir.join(".root.overlay.qcow2.tmp").exists());
        assert!(!dir.join("root.overlay.qcow2").exists());

        fs::remove_file(ctx.vm_dir.join("filler")).unwrap();
        cleanup(&ctx.vm_dir).unwrap();
        assert!(!dir.exists());
    });
    if ran {
        assert!(
            !disks_dir(&vm_dir).exists(),
            "tmpfs stayed private to the test thread"
        );
    }
}
