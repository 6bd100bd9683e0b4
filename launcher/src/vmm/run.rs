//! The launcher's main loop, the same for every backend: serve the console and the control
//! API, react to VM events and signals, and turn the way the VM ended into an
//! [`ExitStatus`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ironvisor_console::{ConsoleHub, ConsoleListener, StdioGuard};
use ironvisor_launcher_api::control::ShutdownMode;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::events::{self, ExitStatus, VmEvent};
use crate::config::LaunchConfig;
use crate::guardian::Guardian;
use crate::instance::{Backend, PreparedInstance, VmInstance};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
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
    #[error("console on stdio: {0}")]
    Stdio(#[from] ironvisor_console::StdioError),
    #[error(transparent)]
    SocketPath(#[from] crate::sockets::SocketPathError),
    #[error(transparent)]
    Console(#[from] ironvisor_console::ConsoleError),
}

/// Builds the VM of `config` with `backend`, runs it until it ends, and returns how it
/// ended.
pub async fn run_vm<B: Backend>(config: LaunchConfig, backend: B) -> Result<ExitStatus, RunError> {
    run_vm_guarded(config, backend, None).await
}

/// [`run_vm`], reporting every socket it binds to `guardian`, which removes them should
/// the launcher be killed.
///
/// Before anything is built, a stale socket at the console or API path is removed and a
/// live one is refused (see [`crate::sockets`]).
#[tracing::instrument(skip_all, fields(vm = %config.name))]
pub async fn run_vm_guarded<B: Backend>(
    config: LaunchConfig,
    backend: B,
    guardian: Option<&Guardian>,
) -> Result<ExitStatus, RunError> {
    if let Some(path) = &config.console.socket {
        crate::sockets::clear_stale("console", path)?;
    }
    if let Some(path) = &config.api_socket {
        crate::sockets::clear_stale("API", path)?;
    }
    let mut signals = Signals::install()?;
    let console = ConsoleHub::new(config.console.ring_bytes);
    let (events, mut events_rx) = events::channel();
    let prepared = backend
        .prepare(&config, &console, &events)
        .map_err(|err| RunError::Backend(Box::new(err)))?;

    // Everything outside the VM stops when this flips to true.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(path) = &config.console.socket {
        let listener = ConsoleListener::bind(path)?;
        guard_socket(guardian, listener.path());
        let hub = console.clone();
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move { hub.serve_listener(listener, stop).await });
    }
    let stdio = if config.console.stdio {
        Some(console.spawn_stdio()?)
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
    if let Some(api) = &api {
        guard_socket(guardian, api.path());
    }

    let instance = prepared
        .start(events.clone())
        .map_err(|err| RunError::Backend(Box::new(err)))?;
    tracing::info!(
        vcpus = config.vcpus,
        memory_mib = config.memory_mib,
        "VM started"
    );
    if let Some(api) = api {
        let control: Arc<dyn ironvisor_launcher_api::control::VmControl> = instance.clone();
        let stop = stopped(stop_rx.clone());
        tasks.spawn(async move {
            if let Err(err) = api.serve(control, stop).await {
                tracing::error!(%err, "control API failed");
            }
        });
    }

    let graceful_timeout = Duration::from_secs(config.shutdown_timeout_secs);
    let status = main_loop(
        instance.as_ref(),
        &mut events_rx,
        Some(&mut signals),
        stdio.as_ref(),
        graceful_timeout,
    )
    .await;
    tracing::info!(%status, code = status.code(), "VM ended");

    let stopping = instance.clone();
    if let Err(err) = tokio::task::spawn_blocking(move || stopping.stop()).await {
        tracing::error!(%err, "stopping the VM");
    }
    // Restore the terminal before anything else is printed.
    drop(stdio);
    // Receivers may all be gone already; that only means nothing is left to stop.
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    drop(instance);
    Ok(status)
}

/// Reports a bound socket to the guardian. Failing to is no reason to stop the VM: the
/// socket then only stays behind should the launcher be killed.
fn guard_socket(guardian: Option<&Guardian>, path: &Path) {
    if let Some(guardian) = guardian {
        if let Err(err) = guardian.watch(path) {
            tracing::warn!(%err, "the socket stays behind if the launcher is killed");
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// SIGTERM and SIGINT both ask for a graceful shutdown.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> Result<Self, RunError> {
        let install = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| RunError::Signal {
                signal: name,
                source,
            })
        };
        Ok(Self {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Waits for the event that ends the VM, handling graceful shutdown requests on the way.
/// SIGTERM/SIGINT (when `signals` is given) and the console escape (when `stdio` is) ask
/// for a graceful shutdown with `default_timeout`.
async fn main_loop<I: VmInstance + ?Sized>(
    instance: &I,
    events: &mut mpsc::UnboundedReceiver<VmEvent>,
    mut signals: Option<&mut Signals>,
    stdio: Option<&StdioGuard>,
    default_timeout: Duration,
) -> ExitStatus {
    let graceful = ShutdownMode::Graceful {
        timeout: default_timeout,
    };
    let mut deadline: Option<Instant> = None;
    loop {
        let timeout = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let signal = async {
            match signals.as_deref_mut() {
                Some(signals) => signals.recv().await,
                None => std::future::pending().await,
            }
        };
        let escape = async {
            match stdio {
                Some(guard) => guard.escape_pressed().await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            event = events.recv() => event,
            name = signal => {
                tracing::info!(signal = name, "graceful shutdown requested");
                Some(VmEvent::ShutdownRequested(graceful))
            }
            () = escape => {
                tracing::info!("console escape (Ctrl+]) pressed: graceful shutdown");
                Some(VmEvent::ShutdownRequested(graceful))
            }
            () = timeout => {
                tracing::warn!("guest did not shut down in time; stopping it hard");
                return ExitStatus::HardStop;
            }
        };
        let stopping = deadline.is_some();
        match event {
            None => return ExitStatus::LauncherError,
            Some(VmEvent::GuestPoweroff | VmEvent::GuestReboot) if stopping => {
                return ExitStatus::GracefulStop
            }
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
                    tracing::info!(?timeout, "asking the guest to shut down");
                    instance.request_guest_shutdown();
                    deadline = Some(Instant::now() + timeout);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
