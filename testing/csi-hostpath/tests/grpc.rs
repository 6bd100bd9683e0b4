//! The driver binary over its real unix sockets, called with the generated clients the
//! way the external provisioner and the kubelet call it. Publishing needs root (bind
//! mounts) and, for block volumes, loop devices; those tests are ignored by a plain
//! `cargo test` and run with `--include-ignored`.

mod support;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use ironvisor_csi_hostpath::proto::csi::volume_capability::access_mode::Mode;
use ironvisor_csi_hostpath::proto::csi::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume,
};
use ironvisor_csi_hostpath::proto::csi::{
    CapacityRange, ControllerGetCapabilitiesRequest, CreateVolumeRequest, DeleteVolumeRequest,
    GetPluginCapabilitiesRequest, GetPluginInfoRequest, NodeGetCapabilitiesRequest,
    NodeGetInfoRequest, NodeGetInfoResponse, NodePublishVolumeRequest, NodeUnpublishVolumeRequest,
    ProbeRequest, TopologyRequirement, Volume, VolumeCapability,
};
use ironvisor_csi_hostpath::proto::registration::{InfoRequest, RegistrationStatus};
use ironvisor_csi_hostpath::topology;
use support::{Driver, LoopGuard, MountGuard, DRIVER, KUBELET_ENDPOINT, NODE};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Request, Status};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mount,
    Block,
}

fn capability(kind: Kind) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(match kind {
            Kind::Mount => AccessType::Mount(MountVolume::default()),
            Kind::Block => AccessType::Block(BlockVolume {}),
        }),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter.into(),
        }),
    }
}

fn create_request(name: &str, kind: Kind, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.to_owned(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![capability(kind)],
        parameters: [("unused".to_owned(), "x".to_owned())].into(),
        accessibility_requirements: Some(TopologyRequirement {
            requisite: vec![topology::of_node(NODE)],
            preferred: vec![topology::of_node(NODE)],
        }),
        ..Default::default()
    }
}

async fn create(driver: &Driver, request: CreateVolumeRequest) -> Result<Volume, Status> {
    let response = driver.controller().await.create_volume(request).await?;
    Ok(response.into_inner().volume.expect("volume"))
}

async fn delete(driver: &Driver, id: &str) -> Result<(), Status> {
    let request = DeleteVolumeRequest {
        volume_id: id.to_owned(),
    };
    driver.controller().await.delete_volume(request).await?;
    Ok(())
}

async fn publish(
    driver: &Driver,
    id: &str,
    target: &Path,
    kind: Kind,
    readonly: bool,
) -> Result<(), Status> {
    let request = NodePublishVolumeRequest {
        volume_id: id.to_owned(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability(kind)),
        readonly,
    };
    driver.node().await.node_publish_volume(request).await?;
    Ok(())
}

async fn unpublish(driver: &Driver, id: &str, target: &Path) -> Result<(), Status> {
    let request = NodeUnpublishVolumeRequest {
        volume_id: id.to_owned(),
        target_path: target.display().to_string(),
    };
    driver.node().await.node_unpublish_volume(request).await?;
    Ok(())
}

fn is_mount_point(path: &Path) -> bool {
    let table = ironvisor_csi_hostpath::mountinfo::MountTable::read().expect("mountinfo");
    table.top_at(path).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_controller_node_info_and_registration() {
    let mut driver = Driver::start();

    let mut identity = driver.identity().await;
    let info = identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, DRIVER);
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let probe = identity.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
    let caps = identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.capabilities.len(), 2);
    let controller_caps = driver
        .controller()
        .await
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(controller_caps.capabilities.len(), 1);

    let mount = create(&driver, create_request("pvc-mount", Kind::Mount, 1 << 20))
        .await
        .unwrap();
    assert_eq!(mount.volume_id, "pvc-mount");
    assert_eq!(mount.capacity_bytes, 1 << 20);
    assert_eq!(mount.accessible_topology, [topology::of_node(NODE)]);
    assert!(driver.data_dir.join("pvc-mount").is_dir());
    let block = create(&driver, create_request("pvc-block", Kind::Block, 4 << 20))
        .await
        .unwrap();
    let image = driver.data_dir.join("pvc-block.img");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 4 << 20);
    let again = create(&driver, create_request("pvc-block", Kind::Block, 4 << 20))
        .await
        .unwrap();
    assert_eq!(again, block);
    let conflict = create(&driver, create_request("pvc-block", Kind::Mount, 4 << 20))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::AlreadyExists, "{conflict:?}");
    let bigger = create(&driver, create_request("pvc-mount", Kind::Mount, 2 << 20))
        .await
        .unwrap_err();
    assert_eq!(bigger.code(), Code::AlreadyExists, "{bigger:?}");

    let mut node = driver.node().await;
    let node_info = node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node_info.node_id, NODE);
    assert_eq!(node_info.accessible_topology, Some(topology::of_node(NODE)));
    let node_caps = node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(node_caps.capabilities.is_empty());

    // A Block claim used as a filesystem: refused before anything is mounted.
    let target = driver.path("pod/volumes/pvc-block/mount");
    let e = publish(&driver, "pvc-block", &target, Kind::Mount, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("pvc-block is a raw block volume"),
        "{e:?}"
    );
    assert!(!target.exists());
    let e = publish(&driver, "pvc-none", &target, Kind::Mount, false)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // A method this driver does not declare is UNIMPLEMENTED.
    let mut grpc = tonic::client::Grpc::new(driver.raw_channel().await);
    grpc.ready().await.unwrap();
    let stats: Result<tonic::Response<NodeGetInfoResponse>, Status> = grpc
        .unary(
            Request::new(NodeGetInfoRequest {}),
            PathAndQuery::from_static("/csi.v1.Node/NodeGetVolumeStats"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_eq!(stats.unwrap_err().code(), Code::Unimplemented);

    for id in ["pvc-mount", "pvc-block"] {
        delete(&driver, id).await.unwrap();
        delete(&driver, id).await.unwrap();
    }
    assert_eq!(std::fs::read_dir(&driver.data_dir).unwrap().count(), 0);

    let mut registration = driver.registration().await;
    let plugin = registration
        .get_info(InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plugin.r#type, "CSIPlugin");
    assert_eq!(plugin.name, DRIVER);
    assert_eq!(plugin.endpoint, KUBELET_ENDPOINT);
    assert_eq!(plugin.supported_versions, ["1.0.0"]);
    let failed = RegistrationStatus {
        plugin_registered: false,
        error: "kubelet says no".to_owned(),
    };
    registration
        .notify_registration_status(failed)
        .await
        .unwrap();
    registration
        .notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();

    drop((identity, node, registration));
    let status = driver.terminate();
    assert!(status.success(), "exit {status}:\n{}", driver.log());
    assert!(!driver.csi_socket.exists() && !driver.reg_socket.exists());
    let log = driver.log();
    assert!(log.contains("kubelet says no"), "{log}");
}

#[test]
fn a_data_dir_that_cannot_be_made_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let data = file.join("data");
    let socket = dir.path().join("csi.sock");
    let (status, stderr) = support::run_to_exit(&[
        "--endpoint",
        socket.to_str().unwrap(),
        "--node-id",
        "n",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert!(stderr.contains(data.to_str().unwrap()), "{stderr}");
    assert!(!socket.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root (bind mounts)"]
async fn publishes_and_unpublishes_a_mount_volume() {
    ironvisor_prereq::root();
    let driver = Driver::start();
    let target = driver.path("pods/uid/volumes/kubernetes.io~csi/pvc-fs/mount");
    let ro_target = driver.path("pods/uid2/volumes/kubernetes.io~csi/pvc-fs/mount");
    let _guard = MountGuard(vec![target.clone(), ro_target.clone()]);
    create(&driver, create_request("pvc-fs", Kind::Mount, 1 << 20))
        .await
        .unwrap();

    publish(&driver, "pvc-fs", &target, Kind::Mount, false)
        .await
        .unwrap();
    assert!(is_mount_point(&target));
    std::fs::write(target.join("hello"), b"from the pod").unwrap();
    let stored = driver.data_dir.join("pvc-fs/hello");
    assert_eq!(std::fs::read(&stored).unwrap(), b"from the pod");
    publish(&driver, "pvc-fs", &target, Kind::Mount, false)
        .await
        .expect("publishing again is fine");
    let e = publish(&driver, "pvc-fs", &target, Kind::Mount, true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");

    publish(&driver, "pvc-fs", &ro_target, Kind::Mount, true)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(ro_target.join("hello")).unwrap(),
        b"from the pod"
    );
    let refused = std::fs::write(ro_target.join("other"), b"x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS));

    let busy = delete(&driver, "pvc-fs").await.unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition, "{busy:?}");

    for t in [&target, &ro_target] {
        unpublish(&driver, "pvc-fs", t).await.unwrap();
        assert!(!t.exists(), "{} is gone", t.display());
        unpublish(&driver, "pvc-fs", t).await.expect("idempotent");
    }
    assert_eq!(std::fs::read(&stored).unwrap(), b"from the pod");
    delete(&driver, "pvc-fs").await.unwrap();
    delete(&driver, "pvc-fs").await.unwrap();
    assert!(!stored.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and loop devices (/dev/loop-control; modprobe loop)"]
async fn publishes_a_block_volume_through_a_loop_device() {
    ironvisor_prereq::root();
    ironvisor_prereq::path("/dev/loop-control", "the loop driver: modprobe loop");
    let driver = Driver::start();
    let target = driver.path("plugins/kubernetes.io/csi/volumeDevices/publish/pvc-raw/uid");
    let image = driver.data_dir.join("pvc-raw.img");
    let _loop_guard = LoopGuard(image.clone());
    let _guard = MountGuard(vec![target.clone()]);
    let volume = create(&driver, create_request("pvc-raw", Kind::Block, 1000 * 1024))
        .await
        .unwrap();
    assert_eq!(volume.capacity_bytes, 1000 * 1024);

    publish(&driver, "pvc-raw", &target, Kind::Block, false)
        .await
        .unwrap();
    assert!(is_mount_point(&target));
    publish(&driver, "pvc-raw", &target, Kind::Block, false)
        .await
        .expect("publishing again is fine");
    let written = b"written through the published block device";
    {
        let mut device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&target)
            .unwrap();
        let size = device.seek(SeekFrom::End(0)).unwrap();
        assert_eq!(size, 1000 * 1024);
        device.seek(SeekFrom::Start(8192)).unwrap();
        device.write_all(written).unwrap();
        device.sync_all().unwrap();
    }
    let mut from_image = vec![0; written.len()];
    std::fs::File::open(&image)
        .unwrap()
        .read_exact_at(&mut from_image, 8192)
        .unwrap();
    assert_eq!(from_image, written);

    let mount_as_block = publish(&driver, "pvc-raw", &driver.path("fs"), Kind::Mount, false)
        .await
        .unwrap_err();
    assert_eq!(mount_as_block.code(), Code::InvalidArgument);
    let busy = delete(&driver, "pvc-raw").await.unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition, "{busy:?}");
    assert!(busy.message().contains("loop"), "{busy:?}");

    unpublish(&driver, "pvc-raw", &target).await.unwrap();
    assert!(!target.exists());
    assert_eq!(ironvisor_csi_hostpath::loopdev::find(&image).unwrap(), None);
    unpublish(&driver, "pvc-raw", &target)
        .await
        .expect("idempotent");
    delete(&driver, "pvc-raw").await.unwrap();
    assert!(!image.exists());
    assert!(!driver.data_dir.join("pvc-raw.json").exists());

    // A loop device left attached with no mount of it is detached by the delete.
    create(&driver, create_request("pvc-leak", Kind::Block, 1 << 20))
        .await
        .unwrap();
    let leaked = driver.data_dir.join("pvc-leak.img");
    let _leak_guard = LoopGuard(leaked.clone());
    ironvisor_csi_hostpath::loopdev::attach(&leaked, false).unwrap();
    assert!(ironvisor_csi_hostpath::loopdev::find(&leaked)
        .unwrap()
        .is_some());
    delete(&driver, "pvc-leak").await.unwrap();
    assert!(!leaked.exists());
}
