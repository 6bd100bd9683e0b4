//! Run strategies with real launcher processes (the fake launcher): what happens after
//! exit codes 0, 1, 4, 5, a guest reboot, and a `kill -9` of the launcher.

mod common;

use std::time::Duration;

use common::{condition, manifest, vm, vmi_uid, wait_for, wait_for_within, Daemon, Options};
use ironvisor_handler_api::proto::VmView;
use ironvisor_handler_api::HandlerClient;

/// How many instances the VM has had.
fn created(view: &VmView) -> usize {
    view.events
        .iter()
        .filter(|e| e.reason == "SuccessfulCreate")
        .count()
}

/// Waits until the VM's instance has ended in `phase`.
async fn ended(client: &HandlerClient, name: &str, phase: &str) -> VmView {
    wait_for(client, name, &format!("phase {phase}"), |v| {
        v.phase == phase
    })
    .await
}

/// Asserts that the instance stays the same (not restarted) for a while.
async fn stays(client: &HandlerClient, name: &str, uid: &str, status: &str) {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let view = client.get(vm(name)).await.unwrap();
    assert_eq!(
        vmi_uid(&view).as_deref(),
        Some(uid),
        "{name} was restarted: {}",
        common::summarize(&view)
    );
    assert_eq!(view.status, status, "{}", common::summarize(&view));
}

/// Waits for a new instance (another UID than `old`) to run.
async fn restarted(client: &HandlerClient, name: &str, old: &str) -> VmView {
    wait_for(client, name, "a new instance", |v| {
        vmi_uid(v).is_some_and(|u| u != old) && matches!(v.status.as_str(), "Running" | "Starting")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the node agent makes cgroups and namespaces for each VM"]
async fn exit_codes_under_each_strategy() {
    ironvisor_prereq::root();
    let daemon = Daemon::start(Options::default());
    let client = daemon.client().await;
    // (name, strategy, exit code, restarted?)
    let cases = [
        ("rerun-0", "RerunOnFailure", 0, false),
        ("rerun-1", "RerunOnFailure", 1, true),
        ("rerun-4", "RerunOnFailure", 4, true),
        ("rerun-5", "RerunOnFailure", 5, false),
        ("once-1", "Once", 1, false),
        ("once-0", "Once", 0, false),
        ("always-0", "Always", 0, true),
        ("always-4", "Always", 4, true),
    ];
    let yaml: Vec<String> = cases
        .iter()
        .map(|(name, strategy, code, _)| {
            manifest(
                name,
                strategy,
                &format!("fake.exit={code} fake.after_ms=700"),
            )
        })
        .collect();
    client
        .apply(yaml.join("---\n"), "cases.yaml".into())
        .await
        .unwrap();

    for (name, _, code, restarts) in cases {
        let failed = code == 1 || code == 4;
        if restarts {
            let view = wait_for(&client, name, "a second instance", |v| created(v) >= 2).await;
            let reason = match code {
                0 => "GuestPoweredOff",
                1 => "LauncherError",
                _ => "GuestCrashed",
            };
            assert!(
                view.events.iter().any(|e| e.reason == reason),
                "{name}: no {reason} event: {}",
                common::summarize(&view)
            );
        } else {
            let phase = if failed { "Failed" } else { "Succeeded" };
            let view = wait_for(&client, name, &format!("phase {phase}, VM Stopped"), |v| {
                v.phase == phase && v.status == "Stopped"
            })
            .await;
            let uid = vmi_uid(&view).unwrap();
            if failed {
                let (status, reason, message) =
                    condition(&view, "Failure").expect("Failure condition");
                assert_eq!(status, "True");
                assert_eq!(reason, "LauncherError");
                assert!(message.contains("exited with code 1"), "{message}");
                // The launcher's own last words are quoted.
                assert!(message.contains("fake-launcher"), "{message}");
            } else {
                assert!(
                    condition(&view, "Failure").is_none(),
                    "{}",
                    common::summarize(&view)
                );
            }
            stays(&client, name, &uid, "Stopped").await;
            assert_eq!(created(&client.get(vm(name)).await.unwrap()), 1);
        }
    }

    // Failing again and again backs off (CrashLoopBackOff) with a growing delay.
    let view = wait_for_within(
        &client,
        "always-4",
        "CrashLoopBackOff",
        Duration::from_secs(60),
        |v| v.status == "CrashLoopBackOff",
    )
    .await;
    let object = common::vm_json(&view);
    assert!(
        object["status"]["startFailure"]["consecutiveFailCount"]
            .as_u64()
            .unwrap()
            >= 2
    );
    assert!(object["status"]["startFailure"]["retryAfterTimestamp"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the node agent makes cgroups and namespaces for each VM"]
async fn kill_9_of_a_launcher_fails_the_instance_then_the_strategy_applies() {
    ironvisor_prereq::root();
    let daemon = Daemon::start(Options::default());
    let client = daemon.client().await;
    let yaml = [
        manifest("k-rerun", "RerunOnFailure", ""),
        manifest("k-manual", "Manual", ""),
        manifest("k-always", "Always", ""),
    ]
    .join("---\n");
    client.apply(yaml, "k.yaml".into()).await.unwrap();
    client.start(vm("k-manual")).await.unwrap();

    for (name, restarts) in [("k-rerun", true), ("k-manual", false), ("k-always", true)] {
        let view = wait_for(&client, name, "Running", |v| v.status == "Running").await;
        daemon.assert_vm_cgroup_in_use(name);
        let uid = vmi_uid(&view).unwrap();
        let pid = common::vmi_json(&view)["status"]["launcherPid"]
            .as_u64()
            .expect("launcher pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        if restarts {
            let next = restarted(&client, name, &uid).await;
            assert!(
                next.events.iter().any(|e| e.reason == "LauncherKilled"
                    && e.message.contains("signal 9 (SIGKILL)")
                    && e.message.contains(&uid)),
                "{}",
                common::summarize(&next)
            );
        } else {
            // The VMI phase and the VM status are written by separate steps of a pass.
            let view = wait_for(&client, name, "Failed with a Failure condition", |v| {
                v.phase == "Failed" && condition(v, "Failure").is_some()
            })
            .await;
            let (_, reason, message) = condition(&view, "Failure").unwrap();
            assert_eq!(reason, "LauncherKilled");
            assert!(message.contains("SIGKILL"), "{message}");
            stays(&client, name, &uid, "Stopped").await;
            assert!(daemon.vm_processes(name).is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: the node agent makes cgroups and namespaces for each VM"]
async fn manual_runs_between_start_and_stop_and_reboots_in_place() {
    ironvisor_prereq::root();
    let daemon = Daemon::start(Options::default());
    let client = daemon.client().await;
    client
        .apply(manifest("man", "Manual", ""), "man.yaml".into())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(client.get(vm("man")).await.unwrap().status, "Stopped");
    client.start(vm("man")).await.unwrap();
    let view = wait_for(&client, "man", "Running", |v| v.status == "Running").await;
    let first = vmi_uid(&view).unwrap();

    // The guest reboots (exit 3): a new instance replaces it, even under Manual.
    type_on_console(&client, "man", "reboot\n").await;
    let view = restarted(&client, "man", &first).await;
    assert!(view.events.iter().any(|e| e.reason == "Rebooted"));
    let second = vmi_uid(&view).unwrap();
    wait_for(&client, "man", "Running", |v| v.status == "Running").await;

    // The guest powers off (exit 0): it stays stopped until the next start.
    type_on_console(&client, "man", "poweroff\n").await;
    let view = ended(&client, "man", "Succeeded").await;
    assert_eq!(vmi_uid(&view).as_deref(), Some(second.as_str()));
    stays(&client, "man", &second, "Stopped").await;
    client.start(vm("man")).await.unwrap();
    restarted(&client, "man", &second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_on_failure_stop_during_back_off_cancels_the_restart() {
    let daemon = Daemon::start(Options {
        backoff_base_ms: 60_000,
        ..Options::default()
    });
    let client = daemon.client().await;
    // Fails at once, every time: the second restart waits a minute.
    client
        .apply(
            manifest("crash", "RerunOnFailure", "fake.mode=fail"),
            "crash.yaml".into(),
        )
        .await
        .unwrap();
    let view = wait_for(&client, "crash", "CrashLoopBackOff", |v| {
        v.status == "CrashLoopBackOff"
    })
    .await;
    let uid = vmi_uid(&view).unwrap();
    client.stop(vm("crash"), false, 0).await.unwrap();
    let view = wait_for(&client, "crash", "Stopped", |v| v.status == "Stopped").await;
    assert_eq!(view.phase, "Failed");
    stays(&client, "crash", &uid, "Stopped").await;
}

async fn type_on_console(client: &HandlerClient, name: &str, text: &str) {
    let input = tokio_stream::iter(vec![text.as_bytes().to_vec()]);
    let mut console = client.console(vm(name), input).await.unwrap();
    // Read until the echo shows the command arrived (or the VM went away).
    let mut seen = Vec::new();
    let want = text.trim();
    while !String::from_utf8_lossy(&seen).contains(want) {
        match tokio::time::timeout(Duration::from_secs(10), console.next()).await {
            Ok(Ok(Some(chunk))) => seen.extend(chunk),
            _ => break,
        }
    }
}
