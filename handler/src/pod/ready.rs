//! `ironvisor-handler virt-launcher-ready`: the `compute` container's exec startup
//! probe. Ready means the launcher's API socket answers a `Status` call and the guest
//! runs; everything is bounded well under a second.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ironvisor_launcher_api::client::ClientOptions;
use ironvisor_launcher_api::control::VmState;
use ironvisor_launcher_api::{ClientError, LauncherClient};

use super::API_SOCKET;

/// The whole check's bound.
pub const TIMEOUT: Duration = Duration::from_millis(900);
const OPTIONS: ClientOptions = ClientOptions {
    connect_timeout: Duration::from_millis(400),
    request_timeout: Duration::from_millis(500),
};

/// Why the instance is not ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// The check itself could not run.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The launcher does not answer.
    #[error("{0}")]
    Launcher(#[from] ClientError),
    /// The launcher answers, the guest does not run.
    #[error("the guest is {state:?}, not running")]
    NotRunning {
        /// What the launcher reports.
        state: VmState,
    },
    /// No answer in time.
    #[error("no answer from {socket} within {timeout:?}")]
    Timeout {
        /// The API socket.
        socket: PathBuf,
        /// The bound.
        timeout: Duration,
    },
}

/// Checks the launcher whose sockets are in `run_dir`; `Ok` with a one-line summary when
/// the guest runs.
pub fn check(run_dir: &Path) -> Result<String, NotReady> {
    let socket = run_dir.join(API_SOCKET);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NotReady::Runtime)?;
    runtime.block_on(async {
        match tokio::time::timeout(TIMEOUT, status(&socket)).await {
            Ok(result) => result,
            Err(_) => Err(NotReady::Timeout {
                socket: socket.clone(),
                timeout: TIMEOUT,
            }),
        }
    })
}

async fn status(socket: &Path) -> Result<String, NotReady> {
    let client = LauncherClient::connect_with(socket, OPTIONS).await?;
    let status = client.status().await?;
    if status.state != VmState::Running {
        return Err(NotReady::NotRunning {
            state: status.state,
        });
    }
    Ok(format!(
        "VM {} running on {} for {} s",
        status.name,
        status.backend,
        status.uptime.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_socket_is_not_ready_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let error = check(dir.path()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&dir.path().join("api.sock").display().to_string()),
            "{error}"
        );
    }
}
