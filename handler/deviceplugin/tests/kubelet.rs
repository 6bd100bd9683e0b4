//! The plugins against a stand-in kubelet over real unix sockets in a temporary
//! device-plugin directory, with plain files standing in for the host device nodes.

mod support;

use std::path::Path;
use std::time::Duration;

use ironvisor_deviceplugin::proto::{
    AllocateRequest, ContainerAllocateRequest, DeviceSpec, Empty, ListAndWatchResponse,
};
use ironvisor_deviceplugin::{run_device_plugins, DevicePluginConfig, DevicePluginError};
use support::{eventually, plugin_client, FakeKubelet, Node, WAIT};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Runs the plugins of `config` until the returned sender fires (or is dropped).
fn start(
    config: DevicePluginConfig,
) -> (
    oneshot::Sender<()>,
    JoinHandle<Result<(), DevicePluginError>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run_device_plugins(config, async {
        let _ = stopped.await;
    }));
    (stop, task)
}

async fn shut_down(stop: oneshot::Sender<()>, task: JoinHandle<Result<(), DevicePluginError>>) {
    let _ = stop.send(());
    tokio::time::timeout(WAIT, task)
        .await
        .expect("plugins stop within the deadline")
        .expect("plugin task")
        .expect("plugins stop cleanly");
}

fn health_of(list: &ListAndWatchResponse) -> Vec<&str> {
    let mut states: Vec<&str> = list.devices.iter().map(|d| d.health.as_str()).collect();
    states.dedup();
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_lists_allocates_and_follows_health() {
    let node = Node::new();
    let mut kubelet = FakeKubelet::start(node.dir.path());
    let (stop, task) = start(node.config(5));

    let registrations = kubelet.registrations(2).await;
    let seen: Vec<_> = registrations
        .iter()
        .map(|r| {
            (
                r.version.as_str(),
                r.endpoint.as_str(),
                r.resource_name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("v1beta1", "ironvisor-kvm.sock", "devices.ironvisor.io/kvm"),
            ("v1beta1", "ironvisor-tun.sock", "devices.ironvisor.io/tun"),
        ]
    );
    let options = registrations[0].options.expect("options");
    assert!(!options.pre_start_required && !options.get_preferred_allocation_available);

    let mut kvm = plugin_client(&node.socket("kvm")).await;
    let served = kvm
        .get_device_plugin_options(Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served, options);

    let mut stream = kvm.list_and_watch(Empty {}).await.unwrap().into_inner();
    let first = stream
        .message()
        .await
        .unwrap()
        .expect("a first device list");
    let ids: Vec<_> = first.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["kvm-0", "kvm-1", "kvm-2", "kvm-3", "kvm-4"]);
    assert_eq!(health_of(&first), ["Healthy"]);

    let allocated = kvm
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec!["kvm-3".into()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allocated.container_responses.len(), 1);
    assert_eq!(
        allocated.container_responses[0].devices,
        [DeviceSpec {
            container_path: "/dev/kvm".into(),
            host_path: node.kvm.display().to_string(),
            permissions: "rw".into(),
        }]
    );
    let unknown = kvm
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec!["kvm-5".into()],
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);

    let mut tun = plugin_client(&node.socket("tun")).await;
    let allocated = tun
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec!["tun-0".into(), "tun-1".into()],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        allocated.container_responses[0].devices,
        [DeviceSpec {
            container_path: "/dev/net/tun".into(),
            host_path: node.tun.display().to_string(),
            permissions: "rw".into(),
        }]
    );

    // The host device goes away and comes back: the open stream says so both times.
    std::fs::remove_file(&node.kvm).unwrap();
    let update = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(health_of(&update.expect("an update")), ["Unhealthy"]);
    let refused = kvm
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec!["kvm-0".into()],
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    std::fs::write(&node.kvm, b"").unwrap();
    let update = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(health_of(&update.expect("an update")), ["Healthy"]);

    // Shutdown is not held up by the open ListAndWatch stream, which ends, and the
    // sockets are gone afterwards.
    shut_down(stop, task).await;
    let end = tokio::time::timeout(WAIT, stream.message()).await.unwrap();
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    assert!(!node.socket("kvm").exists());
    assert!(!node.socket("tun").exists());
    assert!(
        kubelet.socket.exists(),
        "the kubelet's socket is not ours to remove"
    );
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_anew_and_registers_again_when_the_kubelet_deletes_the_socket() {
    let node = Node::new();
    let mut kubelet = FakeKubelet::start(node.dir.path());
    let (stop, task) = start(node.config(3));
    kubelet.registrations(2).await;

    // What a starting kubelet does: delete every plugin socket.
    std::fs::remove_file(node.socket("kvm")).unwrap();
    let again = kubelet.next_registration().await;
    assert_eq!(again.endpoint, "ironvisor-kvm.sock");
    assert_eq!(again.resource_name, "devices.ironvisor.io/kvm");
    assert!(node.socket("kvm").exists());
    let mut kvm = plugin_client(&node.socket("kvm")).await;
    let mut stream = kvm.list_and_watch(Empty {}).await.unwrap().into_inner();
    let list = stream.message().await.unwrap().expect("a device list");
    assert_eq!(list.devices.len(), 3);
    // The other plugin did not notice anything.
    kubelet
        .assert_no_registration(Duration::from_millis(300))
        .await;

    // A full kubelet restart: it goes away, its new instance deletes the sockets
    // and serves kubelet.sock again; both plugins come back.
    kubelet.stop().await;
    std::fs::remove_file(node.socket("kvm")).unwrap();
    std::fs::remove_file(node.socket("tun")).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut kubelet = FakeKubelet::start(node.dir.path());
    let endpoints: Vec<_> = kubelet
        .registrations(2)
        .await
        .into_iter()
        .map(|r| r.endpoint)
        .collect();
    assert_eq!(endpoints, ["ironvisor-kvm.sock", "ironvisor-tun.sock"]);
    let mut tun = plugin_client(&node.socket("tun")).await;
    let list = tun
        .list_and_watch(Empty {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await;
    assert_eq!(list.unwrap().expect("a device list").devices.len(), 3);

    shut_down(stop, task).await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_once_a_late_kubelet_appears() {
    let node = Node::new();
    let (stop, task) = start(node.config(2));
    // The plugins serve before any kubelet exists, and keep retrying.
    let (kvm_socket, tun_socket) = (node.socket("kvm"), node.socket("tun"));
    eventually("plugin sockets exist", || {
        kvm_socket.exists() && tun_socket.exists()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!task.is_finished());

    let mut kubelet = FakeKubelet::start(node.dir.path());
    let resources: Vec<_> = kubelet
        .registrations(2)
        .await
        .into_iter()
        .map(|r| r.resource_name)
        .collect();
    assert_eq!(
        resources,
        ["devices.ironvisor.io/kvm", "devices.ironvisor.io/tun"]
    );
    shut_down(stop, task).await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_host_device_is_listed_unhealthy() {
    let node = Node::new();
    std::fs::remove_file(&node.tun).unwrap();
    let mut kubelet = FakeKubelet::start(node.dir.path());
    let (stop, task) = start(node.config(2));
    kubelet.registrations(2).await;
    let mut tun = plugin_client(&node.socket("tun")).await;
    let list = tun
        .list_and_watch(Empty {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await;
    assert_eq!(
        health_of(&list.unwrap().expect("a device list")),
        ["Unhealthy"]
    );
    shut_down(stop, task).await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_is_refused_and_leaves_the_first_alone() {
    let node = Node::new();
    let mut kubelet = FakeKubelet::start(node.dir.path());
    let (stop, task) = start(node.config(2));
    kubelet.registrations(2).await;
    let second = tokio::time::timeout(
        WAIT,
        run_device_plugins(node.config(2), std::future::pending()),
    )
    .await
    .expect("the second instance gives up at once");
    assert!(
        matches!(&second, Err(DevicePluginError::Plugin { .. })),
        "{second:?}"
    );
    assert!(second.unwrap_err().to_string().contains("in use"));
    assert!(node.socket("kvm").exists() && node.socket("tun").exists());
    shut_down(stop, task).await;
    kubelet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and /dev/net/tun"]
async fn the_real_tun_device_is_healthy() {
    ironvisor_prereq::root();
    let tun = Path::new("/dev/net/tun");
    assert!(
        tun.exists(),
        "/dev/net/tun is missing on this host; the node agent's hosts have it"
    );
    let node = Node::new();
    let mut config = node.config(1);
    config.resources[1].host_path = tun.to_path_buf();
    let mut kubelet = FakeKubelet::start(node.dir.path());
    let (stop, task) = start(config);
    kubelet.registrations(2).await;
    let mut client = plugin_client(&node.socket("tun")).await;
    let list = client
        .list_and_watch(Empty {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await;
    assert_eq!(
        health_of(&list.unwrap().expect("a device list")),
        ["Healthy"]
    );
    shut_down(stop, task).await;
    kubelet.stop().await;
}
