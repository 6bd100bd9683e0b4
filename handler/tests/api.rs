//! The API through a real tonic client on a temporary socket: apply/get/list/delete, the
//! refusal of bad input (with line/column, field paths, every problem), start/stop,
//! pause/unpause, console and logs against the fake launcher.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{condition, manifest, vm, vmi_uid, wait_for, Daemon, Options};
use tonic::Code;

fn rejected(error: &ironvisor_handler_api::ClientError) -> (Code, String) {
    match error {
        ironvisor_handler_api::ClientError::Rejected { code, message, .. } => {
            (*code, message.clone())
        }
        other => panic!("expected a rejection, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_list_delete_round_trip() {
    let daemon = Daemon::start(Options::default());
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the API socket is root-only");
    let client = daemon.client().await;

    let yaml = format!(
        "{}---\n{}",
        manifest("alpha", "Halted", ""),
        manifest("beta", "Manual", "")
    );
    let applied = client.apply(yaml.clone(), "two.yaml".into()).await.unwrap();
    let actions: Vec<_> = applied
        .iter()
        .map(|o| (o.name.as_str(), o.action.as_str()))
        .collect();
    assert_eq!(actions, vec![("alpha", "created"), ("beta", "created")]);
    assert!(applied
        .iter()
        .all(|o| o.kind == "VirtualMachine" && o.namespace == "default"));

    // Re-applying the same text changes nothing; a changed spec is "configured".
    let again = client.apply(yaml, "two.yaml".into()).await.unwrap();
    assert!(again.iter().all(|o| o.action == "unchanged"), "{again:?}");
    let changed = manifest("alpha", "Halted", "").replace("guest: 64Mi", "guest: 128Mi");
    let configured = client.apply(changed, "alpha.yaml".into()).await.unwrap();
    assert_eq!(configured[0].action, "configured");

    let view = wait_for(&client, "alpha", "status Stopped", |v| {
        v.status == "Stopped"
    })
    .await;
    assert_eq!(view.run_strategy, "Halted");
    assert_eq!(view.phase, "");
    assert!(view.created_unix > 0);
    let object = common::vm_json(&view);
    assert_eq!(object["metadata"]["generation"], 2);
    assert!(object["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty()));
    // Defaults were applied before storing.
    assert_eq!(
        object["spec"]["template"]["spec"]["domain"]["cpu"]["cores"],
        1
    );
    assert_eq!(
        object["spec"]["template"]["spec"]["domain"]["memory"]["guest"],
        "128Mi"
    );
    assert!(view.events.iter().any(|e| e.reason == "Created"));

    let names: Vec<String> = client
        .list(None)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, vec!["alpha", "beta"]);
    assert!(client.list(Some("other")).await.unwrap().is_empty());

    let message = client.delete(vm("alpha")).await.unwrap();
    assert!(message.contains("default/alpha"), "{message}");
    let (code, message) = rejected(&client.get(vm("alpha")).await.unwrap_err());
    assert_eq!(code, Code::NotFound);
    assert!(message.contains("default/alpha"), "{message}");
    assert!(!daemon.data_dir.join("vms/default/alpha").exists());
    let (code, _) = rejected(&client.delete(vm("alpha")).await.unwrap_err());
    assert_eq!(code, Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_locations_and_nothing_is_applied() {
    let daemon = Daemon::start(Options::default());
    let client = daemon.client().await;

    // Malformed YAML: file, line and column.
    let broken =
        "apiVersion: ironvisor.io/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: [oops\n";
    let (code, message) = rejected(
        &client
            .apply(broken.into(), "broken.yaml".into())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.starts_with("broken.yaml:"), "{message}");
    assert!(
        message
            .split(':')
            .nth(1)
            .is_some_and(|l| l.parse::<u32>().is_ok())
            && message
                .split(':')
                .nth(2)
                .is_some_and(|c| c.parse::<u32>().is_ok()),
        "no line:column in {message}"
    );

    // Unknown field: its full path.
    let unknown = manifest("u", "Halted", "")
        .replace("        memory:\n", "        memroy: {}\n        memory:\n");
    let (code, message) = rejected(
        &client
            .apply(unknown, "unknown.yaml".into())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("unknown field"), "{message}");
    assert!(
        message.contains("spec.template.spec.domain.memroy"),
        "{message}"
    );
    assert!(message.starts_with("unknown.yaml:"), "{message}");

    // Invalid quantities and other problems: all listed at once.
    let bad = manifest("q", "Halted", "")
        .replace("guest: 64Mi", "guest: 64Mo")
        .replace(
            "terminationGracePeriodSeconds: 5",
            "terminationGracePeriodSeconds: -1",
        );
    let (code, message) = rejected(&client.apply(bad, "q.yaml".into()).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("64Mo"), "{message}");
    assert!(message.contains("memory.guest"), "{message}");
    assert!(
        message.contains("terminationGracePeriodSeconds"),
        "{message}"
    );
    assert!(message.contains("2 problems"), "{message}");

    // Duplicate names within one apply.
    let dup = format!(
        "{}---\n{}",
        manifest("twin", "Halted", ""),
        manifest("twin", "Manual", "")
    );
    let (code, message) = rejected(&client.apply(dup, "dup.yaml".into()).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("default/twin"), "{message}");
    assert!(message.contains("more than once"), "{message}");

    // A valid object next to an invalid one: nothing is applied.
    let mixed = format!(
        "{}---\n{}",
        manifest("good", "Halted", ""),
        manifest("Bad_Name", "Halted", "")
    );
    let (code, message) = rejected(&client.apply(mixed, "mixed.yaml".into()).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("Bad_Name"), "{message}");

    // KubeVirt apiVersion: a hint.
    let kubevirt = manifest("kv", "Halted", "").replace("ironvisor.io/v1alpha1", "kubevirt.io/v1");
    let (_, message) = rejected(&client.apply(kubevirt, "kv.yaml".into()).await.unwrap_err());
    assert!(message.contains("ironvisor.io/v1alpha1"), "{message}");

    assert!(client.list(None).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the node agent makes cgroups and namespaces for each VM"]
async fn start_stop_pause_console_and_logs() {
    ironvisor_prereq::root();
    let daemon = Daemon::start(Options::default());
    let client = daemon.client().await;
    client
        .apply(manifest("m", "Manual", "fake.boot_ms=300"), "m.yaml".into())
        .await
        .unwrap();
    wait_for(&client, "m", "Stopped", |v| v.status == "Stopped").await;
    let (code, message) = rejected(&client.stop(vm("m"), false, 0).await.unwrap_err());
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains("default/m is not running"), "{message}");

    client.start(vm("m")).await.unwrap();
    let view = wait_for(&client, "m", "Running", |v| v.status == "Running").await;
    assert_eq!(view.phase, "Running");
    assert!(view.ready);
    assert_eq!(view.node, "testnode");
    assert_eq!(view.backend, "qemu-tcg");
    let vmi = common::vmi_json(&view);
    assert_eq!(vmi["status"]["isolation"], "Emulation");
    assert!(vmi["status"]["launcherPid"].as_u64().is_some(), "{vmi}");
    assert!(view
        .events
        .iter()
        .any(|e| e.reason == "SoftwareEmulation" && e.r#type == "Warning"));
    let (code, message) = rejected(&client.start(vm("m")).await.unwrap_err());
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains("already running"), "{message}");

    // The launcher config was written from the spec.
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(daemon.data_dir.join("vms/default/m/launcher.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["memory_mib"], 64);
    assert_eq!(config["vcpus"], 1);
    assert_eq!(
        config["kernel"]["cmdline"],
        "console=ttyS0 reboot=k panic=1 fake.boot_ms=300"
    );
    assert_eq!(config["shutdown_timeout_secs"], 5);

    // Pause and unpause go through the launcher API.
    client.pause(vm("m")).await.unwrap();
    let view = wait_for(&client, "m", "Paused", |v| v.status == "Paused").await;
    assert_eq!(condition(&view, "Paused").map(|c| c.0), Some("True".into()));
    client.unpause(vm("m")).await.unwrap();
    let view = wait_for(&client, "m", "Running again", |v| v.status == "Running").await;
    assert!(condition(&view, "Paused").is_none());

    // Console: the boot log is replayed, typing reaches the guest.
    let (input_tx, input_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let mut console = client
        .console(
            vm("m"),
            tokio_stream::wrappers::ReceiverStream::new(input_rx),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("login:") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), console.next())
            .await
            .expect("console output")
            .unwrap()
            .expect("console open");
        seen.extend(chunk);
    }
    input_tx.send(b"hello\n".to_vec()).await.unwrap();
    while !String::from_utf8_lossy(&seen).contains("hello") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), console.next())
            .await
            .expect("echo")
            .unwrap()
            .expect("console open");
        seen.extend(chunk);
    }
    drop(input_tx);
    // The end of input does not end the output (`virtctl console </dev/null` keeps
    // watching): the stream stays open while the VM runs.
    let next = tokio::time::timeout(Duration::from_millis(1500), console.next()).await;
    assert!(
        !matches!(next, Ok(Ok(None))),
        "the console closed when its input ended"
    );
    drop(console);

    // Logs: the launcher's output.
    let mut logs = client.logs(vm("m"), false).await.unwrap();
    let mut text = Vec::new();
    while let Some(chunk) = logs.next().await.unwrap() {
        text.extend(chunk);
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("fake-launcher: VM m with 1 vCPUs"), "{text}");

    // A graceful stop: the launcher exits 5, the VMI is removed, the VM is Stopped.
    daemon.assert_vm_cgroup_in_use("m");
    let uid = vmi_uid(&view).unwrap();
    client.stop(vm("m"), false, 0).await.unwrap();
    let view = wait_for(&client, "m", "Stopped after stop", |v| {
        v.status == "Stopped" && v.phase.is_empty()
    })
    .await;
    assert!(view
        .events
        .iter()
        .any(|e| e.reason == "Stopped" && e.message.contains(&uid)));
    assert!(
        daemon.vm_processes("m").is_empty(),
        "processes left after stop"
    );
    assert!(
        !daemon.run_dir.join("vmi").join(&uid).exists(),
        "run dir left after stop"
    );

    // Manual: it stays stopped.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(client.get(vm("m")).await.unwrap().status, "Stopped");

    // Restart on a stopped VM is refused; on a running one a new instance replaces it.
    let (code, _) = rejected(&client.restart(vm("m")).await.unwrap_err());
    assert_eq!(code, Code::FailedPrecondition);
    client.start(vm("m")).await.unwrap();
    let first = wait_for(&client, "m", "Running", |v| v.status == "Running").await;
    let first_uid = vmi_uid(&first).unwrap();
    client.restart(vm("m")).await.unwrap();
    let second = wait_for(&client, "m", "a new instance running", |v| {
        v.status == "Running" && vmi_uid(v).is_some_and(|u| u != first_uid)
    })
    .await;
    assert_eq!(second.run_strategy, "Manual");

    // Deleting a running VM stops it and leaves nothing behind.
    daemon.assert_vm_cgroup_in_use("m");
    let second_uid = vmi_uid(&second).unwrap();
    client.delete(vm("m")).await.unwrap();
    assert!(daemon.vm_processes("m").is_empty());
    assert!(!daemon.run_dir.join("vmi").join(&second_uid).exists());
    assert!(!daemon.data_dir.join("vms/default/m").exists());
    for dir in daemon.vm_cgroups("m") {
        assert!(!dir.exists(), "cgroup {} left", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the node agent makes cgroups and namespaces for each VM"]
async fn start_and_stop_follow_kubevirt_verbs() {
    ironvisor_prereq::root();
    let daemon = Daemon::start(Options::default());
    let client = daemon.client().await;
    // start on Halted switches to Always; stop on Always switches to Halted.
    client
        .apply(manifest("h", "Halted", ""), "h.yaml".into())
        .await
        .unwrap();
    let message = client.start(vm("h")).await.unwrap();
    assert!(message.contains("Halted to Always"), "{message}");
    let view = wait_for(&client, "h", "Running", |v| v.status == "Running").await;
    assert_eq!(view.run_strategy, "Always");
    let (code, message) = rejected(&client.start(vm("h")).await.unwrap_err());
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains("already running"), "{message}");
    let message = client.stop(vm("h"), true, 0).await.unwrap();
    assert!(message.contains("Always to Halted"), "{message}");
    let view = wait_for(&client, "h", "Stopped", |v| v.status == "Stopped").await;
    assert_eq!(view.run_strategy, "Halted");
    assert!(view
        .events
        .iter()
        .any(|e| e.reason == "Stopping" && e.message.contains("forced")));
    let (code, _) = rejected(&client.stop(vm("h"), false, 0).await.unwrap_err());
    assert_eq!(code, Code::FailedPrecondition);

    // Once refuses start requests.
    client
        .apply(
            manifest("o", "Once", "fake.exit=0 fake.after_ms=100"),
            "o.yaml".into(),
        )
        .await
        .unwrap();
    wait_for(&client, "o", "Succeeded", |v| v.phase == "Succeeded").await;
    let (code, message) = rejected(&client.start(vm("o")).await.unwrap_err());
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains("Once"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the node agent makes cgroups and namespaces for each VM"]
async fn logs_follow_until_the_instance_ends() {
    ironvisor_prereq::root();
    let daemon = Daemon::start(Options::default());
    let client = daemon.client().await;
    let (code, message) = rejected(&client.logs(vm("ghost"), false).await.unwrap_err());
    assert_eq!(code, Code::NotFound);
    assert!(message.contains("default/ghost"), "{message}");
    client
        .apply(
            manifest("f", "Manual", "fake.exit=0 fake.after_ms=1500"),
            "f.yaml".into(),
        )
        .await
        .unwrap();
    let (code, message) = rejected(&client.logs(vm("f"), false).await.unwrap_err());
    assert_eq!(code, Code::NotFound);
    assert!(message.contains("has not run yet"), "{message}");
    client.start(vm("f")).await.unwrap();
    wait_for(&client, "f", "Running", |v| v.status == "Running").await;
    let mut logs = client.logs(vm("f"), true).await.unwrap();
    let mut text = Vec::new();
    let collected = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = logs.next().await.unwrap() {
            text.extend(chunk);
        }
    })
    .await;
    assert!(
        collected.is_ok(),
        "the followed log did not end with the instance"
    );
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("fake-launcher: VM f with"), "{text}");
    assert!(text.contains("exits with code 0"), "{text}");
    wait_for(&client, "f", "Succeeded", |v| v.phase == "Succeeded").await;
}
