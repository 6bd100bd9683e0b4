//! Registering a plugin with the kubelet's `Registration` service on `kubelet.sock`,
//! retried with exponential back-off while the kubelet is absent or refuses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ironvisor_grpc_uds::cause::innermost_cause;
use ironvisor_grpc_uds::channel::{self, ConnectError};
use tracing::{debug, info, warn};

use crate::proto::registration_client::RegistrationClient;
use crate::proto::RegisterRequest;
use crate::service::options;

/// The API version this crate speaks.
pub const API_VERSION: &str = "v1beta1";

/// The authority HTTP/2 sees; never resolved.
const PLACEHOLDER_URI: &str = "http://kubelet.invalid";

/// Why one registration attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// `kubelet.sock` is missing, refuses connections, or the handshake failed.
    #[error("cannot reach the kubelet: {0}{cause}", cause = cause_suffix(.0))]
    Connect(#[source] ConnectError),
    /// The kubelet answered the Register call with an error (version not supported,
    /// resource name taken, …).
    #[error("kubelet at {path} refused the registration: {status}", path = path.display(), status = .source.message())]
    Rejected {
        /// The kubelet socket.
        path: PathBuf,
        /// The status it answered.
        #[source]
        source: tonic::Status,
    },
    /// The Register call did not finish within the deadline.
    #[error("kubelet at {path} did not answer Register within {timeout:?}", path = path.display())]
    Timeout {
        /// The kubelet socket.
        path: PathBuf,
        /// The deadline.
        timeout: Duration,
    },
}

fn cause_suffix(error: &ConnectError) -> String {
    innermost_cause(error)
        .map(|cause| format!(" ({cause})"))
        .unwrap_or_default()
}

/// The request registering `resource_name` served on the socket file `endpoint`.
pub fn request(resource_name: &str, endpoint: &str) -> RegisterRequest {
    RegisterRequest {
        version: API_VERSION.to_owned(),
        endpoint: endpoint.to_owned(),
        resource_name: resource_name.to_owned(),
        options: Some(options()),
    }
}

/// One attempt: connect to `kubelet_socket` and call Register, each within `timeout`.
pub async fn register_once(
    kubelet_socket: &Path,
    request: RegisterRequest,
    timeout: Duration,
) -> Result<(), RegistrationError> {
    let channel = channel::connect(kubelet_socket, PLACEHOLDER_URI, timeout)
        .await
        .map_err(RegistrationError::Connect)?;
    let mut client = RegistrationClient::new(channel);
    match tokio::time::timeout(timeout, client.register(request)).await {
        Err(_) => Err(RegistrationError::Timeout {
            path: kubelet_socket.to_path_buf(),
            timeout,
        }),
        Ok(Err(source)) => Err(RegistrationError::Rejected {
            path: kubelet_socket.to_path_buf(),
            source,
        }),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Retry timing of [`register_with_backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First wait after a failure.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait after `current`: doubled, at most `max`.
    pub fn next(&self, current: Duration) -> Duration {
        current.saturating_mul(2).min(self.max)
    }
}

/// Registers until the kubelet accepts, waiting `backoff` between attempts. The first
/// failure is a warning, repeats are debug, so a node whose kubelet is late does not
/// flood the log; the caller bounds this with its own cancellation.
pub async fn register_with_backoff(
    kubelet_socket: &Path,
    request: RegisterRequest,
    timeout: Duration,
    backoff: Backoff,
) {
    let mut wait = backoff.initial;
    let mut attempt: u32 = 1;
    loop {
        match register_once(kubelet_socket, request.clone(), timeout).await {
            Ok(()) => {
                info!(attempt, "registered with the kubelet");
                return;
            }
            Err(error) if attempt == 1 => {
                warn!(%error, retry_in = ?wait, "registration failed; retrying with back-off")
            }
            Err(error) => debug!(%error, attempt, retry_in = ?wait, "registration failed"),
        }
        tokio::time::sleep(wait).await;
        wait = backoff.next(wait);
        attempt = attempt.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        let backoff = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(3),
        };
        let mut wait = backoff.initial;
        let mut seen = vec![];
        for _ in 0..5 {
            seen.push(wait.as_millis());
            wait = backoff.next(wait);
        }
        assert_eq!(seen, [500, 1000, 2000, 3000, 3000]);
    }

    #[test]
    fn the_request_names_version_endpoint_and_resource() {
        let r = request("devices.ironvisor.io/kvm", "ironvisor-kvm.sock");
        assert_eq!(r.version, "v1beta1");
        assert_eq!(r.endpoint, "ironvisor-kvm.sock");
        assert_eq!(r.resource_name, "devices.ironvisor.io/kvm");
        let options = r.options.unwrap();
        assert!(!options.pre_start_required && !options.get_preferred_allocation_available);
    }

    #[tokio::test]
    async fn a_missing_kubelet_socket_is_a_connect_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("kubelet.sock");
        let e = register_once(&sock, request("r", "e"), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(e, RegistrationError::Connect(_)), "{e:?}");
        assert!(e.to_string().contains("kubelet.sock"), "{e}");
    }
}
