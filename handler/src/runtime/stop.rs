//! Stopping an instance (graceful through the launcher API, then SIGKILL of the cgroup),
//! finishing one whose launcher ended (tear down everything made for it and record how
//! it ended), and removing a deleted VM.

use std::time::Duration;

use ironvisor_crds::v1alpha1::VirtualMachineInstancePhase;
use ironvisor_launcher_api::control::ShutdownMode;
use nix::sys::signal::Signal;
use tracing::{info, warn};

use super::{event, now_unix_ms, Runtime, RuntimeContext, RuntimeError, STOP_MARGIN};
use crate::files::tail_lines;
use crate::launcher_proc;
use crate::records::{
    EventType, ExitOutcome, LastExit, LauncherPhase, LauncherRecord, StopCause, StopState, VmKey,
};
use crate::status::{set_vmi_conditions, set_vmi_phase};
use crate::store::{StoreError, VmSnapshot};

/// How long a forced stop may take before the cgroup is killed.
const FORCED_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of the launcher log quoted in failure messages.
const LOG_TAIL_LINES: usize = 3;

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Runtime {
    /// Asks the launcher to stop (gracefully within the grace period, or at once) and
    /// records the deadline after which its cgroup is killed.
    pub(super) async fn begin_stop(
        &self,
        key: &VmKey,
        snap: &VmSnapshot,
        cause: StopCause,
        forced: bool,
        grace_override: Option<u64>,
        now: i64,
    ) -> Result<(), RuntimeError> {
        let Some(launcher) = snap.launcher.clone() else {
            return Ok(());
        };
        let spec_grace = snap
            .vmi
            .as_ref()
            .and_then(|v| v.spec.termination_grace_period_seconds)
            .or(snap
                .record
                .vm
                .spec
                .template
                .spec
                .termination_grace_period_seconds)
            .unwrap_or(ironvisor_crds::defaults::DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);
        let grace = grace_override.unwrap_or_else(|| u64::try_from(spec_grace).unwrap_or(0));
        let forced = forced || grace == 0;
        let mode = if forced {
            ShutdownMode::Forced
        } else {
            ShutdownMode::Graceful {
                timeout: Duration::from_secs(grace),
            }
        };
        let api = match launcher_proc::connect(&launcher).await {
            Ok(client) => client.shutdown(mode).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let how = if forced { "forced" } else { "graceful" };
        let mut message = format!(
            "{how} stop of VirtualMachineInstance {} ({})",
            launcher.vmi_uid,
            match cause {
                StopCause::Request => "stop requested",
                StopCause::RunStrategy => "runStrategy Halted",
                StopCause::Delete => "VM deleted",
            }
        );
        if !forced {
            message.push_str(&format!(", grace period {grace}s"));
        }
        if let Err(error) = &api {
            // No API (the launcher is hung or still starting): signals do the same job.
            let signal = if forced {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            let sent = if forced {
                launcher_proc::signal_launcher(&launcher, signal)
            } else {
                launcher_proc::signal_monitor(&launcher, signal)
            };
            warn!(vm = %key, %error, ?signal, sent, "launcher API unavailable for the stop; signalled instead");
            message.push_str(&format!(
                "; launcher API unavailable ({error}), sent {}",
                signal.as_str()
            ));
        }
        let kill_after = now.saturating_add(if forced {
            ms(FORCED_STOP_TIMEOUT)
        } else {
            ms(Duration::from_secs(grace)).saturating_add(ms(STOP_MARGIN))
        });
        info!(vm = %key, uid = %launcher.vmi_uid, forced, grace, "stopping");
        let key = key.clone();
        self.ctx
            .store
            .call(move |store| {
                store.transact(|t| -> Result<(), StoreError> {
                    let Some(mut l) = t.launcher(&key)? else {
                        return Ok(());
                    };
                    if l.vmi_uid != launcher.vmi_uid {
                        return Ok(());
                    }
                    let started = l.stop.map_or(now, |s| s.started_unix_ms);
                    l.stop = Some(StopState {
                        cause,
                        forced,
                        started_unix_ms: started,
                        kill_after_unix_ms: kill_after,
                    });
                    t.put_launcher(&key, &l)?;
                    t.push_event(&key, event(EventType::Normal, "Stopping", message.clone()))
                })
            })
            .await?;
        Ok(())
    }

    /// The stop deadline passed: SIGKILL the launcher; if even that did not end it,
    /// kill everything in the VM's cgroup (the monitor too).
    pub(super) async fn enforce_stop_deadline(
        &self,
        key: &VmKey,
        launcher: &LauncherRecord,
        stop: StopState,
        now: i64,
    ) -> Result<(), RuntimeError> {
        if now < stop.kill_after_unix_ms.saturating_add(ms(STOP_MARGIN)) {
            if launcher_proc::signal_launcher(launcher, Signal::SIGKILL) {
                warn!(vm = %key, "grace period over: launcher killed");
            }
            return Ok(());
        }
        warn!(vm = %key, "launcher and monitor still alive long after the grace period: killing the VM's cgroup");
        let cgroups = launcher.cgroups.clone();
        let owned = key.clone();
        self.blocking(key, move |_| {
            crate::cgroup::kill_all(&cgroups, launcher_proc::KILL_TIMEOUT).map_err(|source| {
                launcher_proc::LauncherError::Cgroup {
                    vm: owned.to_string(),
                    source,
                }
            })
        })
        .await??;
        Ok(())
    }

    /// The launcher ended (or never started): tear down what was made for the instance
    /// and record how it ended, for the status and the run strategy.
    pub(super) async fn finish_instance(
        &self,
        key: &VmKey,
        launcher: LauncherRecord,
        outcome: ExitOutcome,
        note: Option<&'static str>,
    ) -> Result<(), RuntimeError> {
        self.forget_client(&launcher.vmi_uid);
        let teardown_launcher = launcher.clone();
        let owned = key.clone();
        let problems = self
            .blocking(key, move |ctx| {
                teardown_instance(ctx, &owned, &teardown_launcher)
            })
            .await?;
        for problem in &problems {
            warn!(vm = %key, %problem, "instance teardown incomplete");
        }
        let requested = launcher.stop.is_some();
        let uid = launcher.vmi_uid.clone();
        let mut detail = outcome.to_string();
        if let Some(note) = note {
            detail.push_str(&format!(" ({note})"));
        }
        if outcome.is_failure() && !requested {
            let tail = tail_lines(&launcher.log_file, LOG_TAIL_LINES);
            if !tail.is_empty() {
                detail.push_str(&format!("; launcher log: {}", tail.join(" | ")));
            }
        }
        let (event_type, reason, message) = if requested {
            (
                EventType::Normal,
                "Stopped",
                format!("VirtualMachineInstance {uid} stopped: {detail}"),
            )
        } else if outcome.is_reboot() {
            (
                EventType::Normal,
                "Rebooted",
                format!("the guest of VirtualMachineInstance {uid} rebooted; a new instance replaces it"),
            )
        } else if outcome.is_failure() {
            (
                EventType::Warning,
                outcome.reason(),
                format!("VirtualMachineInstance {uid} failed: {detail}"),
            )
        } else {
            (
                EventType::Normal,
                outcome.reason(),
                format!("VirtualMachineInstance {uid} succeeded: {detail}"),
            )
        };
        if outcome.is_failure() && !requested {
            warn!(vm = %key, %uid, %detail, "instance failed");
        } else {
            info!(vm = %key, %uid, %detail, requested, "instance ended");
        }
        let backoff = self.ctx.config.backoff;
        let key = key.clone();
        self.ctx
            .store
            .call(move |store| {
                store.transact(|t| -> Result<(), StoreError> {
                    let now = now_unix_ms();
                    t.delete_launcher(&key)?;
                    let same_vmi = |vmi: &ironvisor_crds::v1alpha1::VirtualMachineInstance| {
                        vmi.metadata.uid.as_deref() == Some(uid.as_str())
                    };
                    if let Some(mut vmi) = t.vmi(&key)?.filter(same_vmi) {
                        if requested {
                            t.delete_vmi(&key)?;
                        } else {
                            let phase = if outcome.is_failure() {
                                VirtualMachineInstancePhase::Failed
                            } else {
                                VirtualMachineInstancePhase::Succeeded
                            };
                            set_vmi_phase(&mut vmi, phase, Some(outcome.reason()), now);
                            set_vmi_conditions(
                                &mut vmi,
                                false,
                                Some((outcome.reason(), detail.clone())),
                                false,
                                now,
                            );
                            t.put_vmi(&key, &vmi)?;
                        }
                    }
                    if let Some(mut rec) = t.vm(&key)? {
                        let rt = &mut rec.runtime;
                        rt.last_exit = Some(LastExit {
                            vmi_uid: uid.clone(),
                            outcome,
                            requested,
                            at_unix_ms: now,
                        });
                        if !requested && outcome.is_failure() {
                            rt.consecutive_failures = rt.consecutive_failures.saturating_add(1);
                            let delay = backoff.delay(rt.consecutive_failures);
                            rt.retry_after_unix_ms =
                                (!delay.is_zero()).then(|| now.saturating_add(ms(delay)));
                        } else if !requested && !outcome.is_reboot() {
                            rt.consecutive_failures = 0;
                            rt.retry_after_unix_ms = None;
                        }
                        t.put_vm(&key, &rec)?;
                    }
                    t.push_event(&key, event(event_type, reason, message.clone()))
                })
            })
            .await?;
        Ok(())
    }

    /// Removes a deleted VM whose instance is gone: its network, disks, files and state.
    pub(super) async fn remove_vm(
        &self,
        key: &VmKey,
        snap: &VmSnapshot,
    ) -> Result<(), RuntimeError> {
        let owned = key.clone();
        let problems = self
            .blocking(key, move |ctx| remove_vm_files(ctx, &owned))
            .await?;
        let key = key.clone();
        if !problems.is_empty() {
            let message = format!("cannot delete VM {key} yet: {}", problems.join("; "));
            warn!(vm = %key, %message, "deletion incomplete; retrying");
            let repeated = snap.events.last().is_some_and(|e| e.message == message);
            if !repeated {
                self.ctx
                    .store
                    .call(move |store| {
                        store.transact(|t| {
                            t.push_event(&key, event(EventType::Warning, "DeleteFailed", message))
                        })
                    })
                    .await?;
            }
            return Ok(());
        }
        let removed_key = key.clone();
        self.ctx
            .store
            .call(move |store| store.transact(|t| t.delete_all(&removed_key)))
            .await?;
        info!(vm = %key, "VM deleted");
        Ok(())
    }
}

/// Kills what is left of the instance and removes its cgroups, network, ephemeral disks
/// and runtime directory. Returns the problems (teardown goes on past each).
fn teardown_instance(ctx: &RuntimeContext, key: &VmKey, launcher: &LauncherRecord) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = launcher_proc::kill_and_remove_cgroups(key, &launcher.cgroups) {
        problems.push(e.to_string());
    }
    if launcher.network.is_some() || launcher.phase == LauncherPhase::Preparing {
        if let Err(e) = ironvisor_net::teardown(&ctx.network, &key.to_string()) {
            problems.push(e.to_string());
        }
    }
    for file in &launcher.ephemeral_files {
        if let Err(e) = std::fs::remove_file(file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                problems.push(format!("cannot remove {}: {e}", file.display()));
            }
        }
    }
    if let Err(e) = launcher_proc::remove_run_dir(key, &launcher.run_dir) {
        problems.push(e.to_string());
    }
    problems
}

/// Removes everything a VM owns on the node: network leftovers, disks (overlays,
/// emptyDisks, seeds; never host disks or PVC images), its directory and cgroups.
fn remove_vm_files(ctx: &RuntimeContext, key: &VmKey) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = ironvisor_net::teardown(&ctx.network, &key.to_string()) {
        problems.push(e.to_string());
    }
    let vm_dir = ctx.config.vm_dir(key);
    if let Err(e) = ironvisor_disks::cleanup(&vm_dir) {
        problems.push(format!("VM {key}: {e}"));
    }
    match std::fs::remove_dir_all(&vm_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!("cannot remove {}: {e}", vm_dir.display())),
    }
    // The namespace directory goes when its last VM does.
    if let Some(parent) = vm_dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    if let Err(e) = launcher_proc::kill_and_remove_cgroups(key, &ctx.cgroups.paths_for(key)) {
        problems.push(e.to_string());
    }
    problems
}
