//! `prepare` with `oci-archive:` containerDisks: VMs share one unpacked base through their
//! own overlays, and a broken archive fails the volume without leaving anything behind.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ironvisor_diskimage::{inspect, open_as};
use ironvisor_disks::{
    disks_dir, prepare, DiskContext, DiskError, DiskFormat, ImageStore, OciCache, VolumeRequest,
    VolumeSource,
};
use serde_json::json;
use sha2::{Digest, Sha256};

fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, name, &data[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

fn descriptor(media_type: &str, data: &[u8]) -> (serde_json::Value, String) {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (
        json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()}),
        format!("blobs/sha256/{hex}"),
    )
}

/// An OCI archive whose one layer holds `/disk/rootfs.img` = `disk`.
fn oci_archive(disk: &[u8]) -> Vec<u8> {
    let layer = tar_of(&[("disk/rootfs.img", disk.to_vec())]);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let (layer_d, layer_name) = descriptor("application/vnd.oci.image.layer.v1.tar", &layer);
    let (config_d, config_name) = descriptor("application/vnd.oci.image.config.v1+json", &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_d,
        "layers": [layer_d],
    }))
    .unwrap();
    let (mut manifest_d, manifest_name) =
        descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    manifest_d["annotations"] = json!({"org.opencontainers.image.ref.name": "busybox"});
    let index =
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [manifest_d]})).unwrap();
    tar_of(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json", index),
        (&config_name, config),
        (&manifest_name, manifest),
        (&layer_name, layer),
    ])
}

fn context(root: &Path, vm: &str) -> DiskContext {
    DiskContext {
        vm_dir: root.join("vms/default").join(vm),
        vm_name: vm.into(),
        vm_uid: format!("uid-{vm}"),
        images: ImageStore::new(root.join("images")),
        oci_cache: OciCache::new(root.join("oci-disks")),
        volumes_dir: root.join("volumes"),
    }
}

fn root_volume(image: &str) -> Vec<VolumeRequest> {
    vec![VolumeRequest {
        name: "rootdisk".into(),
        source: VolumeSource::ContainerDisk {
            image: image.into(),
        },
        read_only: false,
        serial: None,
    }]
}

fn cache_entries(root: &Path) -> Vec<PathBuf> {
    fs::read_dir(root.join("oci-disks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn two_vms_share_one_unpacked_base_through_their_own_overlays() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let pattern: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let archive = root.join("rootfs.tar");
    fs::write(&archive, oci_archive(&pattern)).unwrap();
    let image = format!("oci-archive:{}:busybox", archive.display());

    let first = prepare(&context(root, "vm1"), &root_volume(&image)).unwrap();
    let entries = cache_entries(root);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let base = entries[0].join("disk.img");
    let base_meta = fs::metadata(&base).unwrap();

    let second = prepare(&context(root, "vm2"), &root_volume(&image)).unwrap();
    assert_eq!(cache_entries(root), entries, "the second VM unpacked again");
    let again = fs::metadata(&base).unwrap();
    assert_eq!(
        (again.ino(), again.mtime(), again.mtime_nsec()),
        (base_meta.ino(), base_meta.mtime(), base_meta.mtime_nsec()),
        "the cached base was rewritten"
    );

    for disk in first.iter().chain(&second) {
        assert_eq!(disk.format, DiskFormat::Qcow2);
        let info = inspect(&disk.path).unwrap();
        assert_eq!(
            info.backing_file.as_deref(),
            Some(fs::canonicalize(&base).unwrap().to_str().unwrap())
        );
        let mut img = open_as(&disk.path, disk.format, false).unwrap();
        let mut buf = vec![0u8; 64];
        img.read_at(&mut buf, 4096).unwrap();
        assert_eq!(buf, pattern[4096..4160]);
    }
    // A write through one VM's overlay is not seen by the other or the base.
    let mut img = open_as(&first[0].path, DiskFormat::Qcow2, false).unwrap();
    img.write_at(&[0xee; 512], 0).unwrap();
    img.flush().unwrap();
    drop(img);
    let mut other = open_as(&second[0].path, DiskFormat::Qcow2, true).unwrap();
    let mut buf = vec![0u8; 512];
    other.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, pattern[..512]);
    assert_eq!(fs::read(&base).unwrap(), pattern);

    // A restart of the first VM reuses its overlay.
    let restarted = prepare(&context(root, "vm1"), &root_volume(&image)).unwrap();
    assert_eq!(restarted, first);
}

#[test]
fn a_corrupt_archive_fails_the_volume_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let archive = root.join("broken.tar");
    let mut bytes = oci_archive(&[7u8; 4096]);
    bytes.truncate(bytes.len() - 3000);
    fs::write(&archive, bytes).unwrap();
    let image = format!("oci-archive:{}", archive.display());
    let ctx = context(root, "vm1");
    let err = prepare(&ctx, &root_volume(&image)).unwrap_err();
    assert!(matches!(err, DiskError::OciImage { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("volume rootdisk: containerDisk: image {image}: ")),
        "{msg}"
    );
    assert!(msg.contains("truncated"), "{msg}");
    assert!(cache_entries(root).is_empty());
    let left: Vec<_> = fs::read_dir(disks_dir(&ctx.vm_dir))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name != "owned.json")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
