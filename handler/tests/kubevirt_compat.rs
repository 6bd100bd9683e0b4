//! KubeVirt settings served differently from how they are written run, with a Warning
//! event that says what they were mapped to.

mod common;

use common::{manifest, wait_for, Daemon, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the node agent makes cgroups and namespaces for each VM"]
async fn a_sata_disk_runs_as_virtio_with_a_warning() {
    ironvisor_prereq::root();
    let daemon = Daemon::start(Options::default());
    let client = daemon.client().await;
    let yaml = manifest("sata", "Always", "")
        .replace(
            "          autoattachPodInterface: false\n",
            "          autoattachPodInterface: false\n          disks:\n            - name: data\n              disk:\n                bus: sata\n",
        )
        .replace(
            "      domain:\n",
            "      volumes:\n        - name: data\n          emptyDisk:\n            capacity: 16Mi\n      domain:\n",
        );
    client.apply(yaml, "sata.yaml".into()).await.unwrap();
    let view = wait_for(&client, "sata", "Running", |v| v.status == "Running").await;
    let warning = view
        .events
        .iter()
        .find(|e| e.reason == "DiskBusMapped")
        .unwrap_or_else(|| panic!("no DiskBusMapped event: {}", common::summarize(&view)));
    assert_eq!(warning.r#type, "Warning");
    assert!(
        warning.message.contains("disks data ask for bus sata")
            && warning.message.contains("served as virtio-blk"),
        "{}",
        warning.message
    );
}
