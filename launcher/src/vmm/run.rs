//! The launcher's main loop: serve the console and the control API, react to VM events
//! and signals, and turn the way the VM ended into an [`ExitStatus`].

use std::path::Path;
use std::time::Duration;

use ironvisor_console::ConsoleHub;
use ironvisor_launcher_api::control::ShutdownMode;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::events::{self, ExitStatus, VmEvent};
use super::handle::VmHandle;
use super::VmmError;
use crate::config::LaunchConfig;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error("installing the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("control API on {path}: {source}")]
    Api {
        path: String,
        source: ironvisor_launcher_api::ServeError,
    },
}

/// Builds and runs the VM of `config` until it ends; returns how it ended.
#[tracing::instrument(skip_all, fields(vm = %config.name))]
pub async fn run_vm(config: LaunchConfig, kvm_path: &Path) -> Result<ExitStatus, RunError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| RunError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| RunError::Signal {
        signal: "SIGINT",
        source,
    })?;

    let console = ConsoleHub::new(config.console.ring_bytes);
    let (events, mut events_rx) = events::channel();
    let prepared = super::build(&config, kvm_path, &console, &events)?;

    // Everything outside the VM stops when this flips to true.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(path) = config.console.socket.clone() {
        let hub = console.clone();
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            if let Err(err) = hub.serve_unix(&path, stop).await {
                tracing::error!(%err, "console socket failed");
            }
        });
    }
    let _stdio = if config.console.stdio {
        Some(console.spawn_stdio())
    } else {
        None
    };
    let api = match &config.api_socket {
        Some(path) => {
            Some(
                ironvisor_launcher_api::bind(path)
                    .await
                    .map_err(|source| RunError::Api {
                        path: path.display().to_string(),
                        source,
                    })?,
            )
        }
        None => None,
    };

    let running = prepared.start(events.clone())?;
    tracing::info!(
        vcpus = config.vcpus,
        memory_mib = config.memory_mib,
        "VM started"
    );
    if let Some(api) = api {
        let control = running.handle.clone();
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            if let Err(err) = api.serve(control, stop).await {
                tracing::error!(%err, "control API failed");
            }
        });
    }

    let graceful_timeout = Duration::from_secs(config.shutdown_timeout_secs);
    let status = main_loop(
        &running.handle,
        &mut events_rx,
        &mut sigterm,
        &mut sigint,
        graceful_timeout,
    )
    .await;
    tracing::info!(%status, code = status.code(), "VM ended");

    let handle = running.handle.clone();
    if let Err(err) = tokio::task::spawn_blocking(move || handle.stop()).await {
        tracing::error!(%err, "stopping vCPUs");
    }
    // Receivers may all be gone already; that only means nothing is left to stop.
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    drop(running);
    Ok(status)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Waits for the event that ends the VM, handling graceful shutdown requests on the way.
async fn main_loop(
    handle: &VmHandle,
    events: &mut mpsc::UnboundedReceiver<VmEvent>,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
    default_timeout: Duration,
) -> ExitStatus {
    let mut deadline: Option<Instant> = None;
    loop {
        let timeout = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            event = events.recv() => event,
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: graceful shutdown");
                Some(VmEvent::ShutdownRequested(ShutdownMode::Graceful { timeout: default_timeout }))
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: graceful shutdown");
                Some(VmEvent::ShutdownRequested(ShutdownMode::Graceful { timeout: default_timeout }))
            }
            () = timeout => {
                tracing::warn!("guest did not shut down in time; stopping it hard");
                return ExitStatus::HardStop;
            }
        };
        let graceful = deadline.is_some();
        match event {
            None => return ExitStatus::LauncherError,
            Some(VmEvent::GuestPoweroff) if graceful => return ExitStatus::GracefulStop,
            Some(VmEvent::GuestReboot) if graceful => return ExitStatus::GracefulStop,
            Some(VmEvent::GuestPoweroff) => return ExitStatus::GuestPoweroff,
            Some(VmEvent::GuestReboot) => return ExitStatus::GuestReboot,
            Some(VmEvent::TripleFault { vcpu }) => {
                tracing::error!(vcpu, "guest crashed: triple fault");
                return ExitStatus::GuestCrash;
            }
            Some(VmEvent::VcpuFailed { vcpu, reason }) => {
                tracing::error!(vcpu, %reason, "guest crashed");
                return ExitStatus::GuestCrash;
            }
            Some(VmEvent::ShutdownRequested(ShutdownMode::Forced)) => {
                tracing::info!("forced shutdown");
                return ExitStatus::HardStop;
            }
            Some(VmEvent::ShutdownRequested(ShutdownMode::Graceful { timeout })) => {
                if deadline.is_none() {
                    tracing::info!(?timeout, "asking the guest to shut down (Ctrl+Alt+Del)");
                    handle.request_guest_shutdown();
                    deadline = Some(Instant::now() + timeout);
                }
            }
        }
    }
}
