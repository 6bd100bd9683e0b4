//! `ironvisor-handler console NAMESPACE/NAME`: the serial console of an instance on this
//! node, through the node agent (run it in the agent's pod, e.g. with
//! `kubectl exec -i -n ironvisor-system <handler pod> -- ironvisor-handler console ns/vm`).
//! The agent finds the instance's launcher pod and connects to the console socket in the
//! pod's `sockets` volume; the launcher replays its boot-log ring to each new client.
//! Standard input goes to the guest until it ends or a `Ctrl+]` byte arrives.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use ironvisor_crds::cluster::{launcher_pod_name, LABEL_CREATED_BY};
use ironvisor_crds::v1alpha1::VirtualMachineInstance;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tracing::{info, instrument};

use crate::pod_volumes::launcher_console_socket;

/// The byte `Ctrl+]` sends: detaches from the console (as `virtctl console`).
pub const ESCAPE: u8 = 0x1d;
/// How long a console socket that is not there yet (the launcher is starting) is awaited.
const SOCKET_WAIT: Duration = Duration::from_secs(60);

/// Why the console could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The instance is not `namespace/name`.
    #[error("{0:?} is not NAMESPACE/NAME")]
    BadName(String),
    /// An API call failed.
    #[error("reading {what} {object}: {source}")]
    Kube {
        /// What was read.
        what: &'static str,
        /// `namespace/name`.
        object: String,
        /// The client error.
        source: kube::Error,
    },
    /// No such instance.
    #[error("virtualmachineinstance {0} not found")]
    NoInstance(String),
    /// The instance has no launcher pod (yet, or any more).
    #[error("virtualmachineinstance {0} has no launcher pod; is it running?")]
    NoPod(String),
    /// The pod is on another node.
    #[error(
        "virtualmachineinstance {object} runs on node {pod_node}; this agent serves node \
         {node}: use that node's ironvisor-handler pod"
    )]
    OtherNode {
        /// `namespace/name`.
        object: String,
        /// Where the pod is.
        pod_node: String,
        /// This node.
        node: String,
    },
    /// The console socket cannot be reached.
    #[error("console of {object} at {path}: {source}")]
    Socket {
        /// `namespace/name`.
        object: String,
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Copying bytes failed.
    #[error("console of {object}: {source}")]
    Io {
        /// `namespace/name`.
        object: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Attaches standard input and output to the console of `object` (`namespace/name`) until
/// the console closes, standard input ends or `Ctrl+]` arrives.
#[instrument(skip(client, kubelet_root))]
pub async fn attach(
    client: Client,
    node_name: &str,
    kubelet_root: &std::path::Path,
    object: &str,
) -> Result<(), ConsoleError> {
    let (namespace, name) = object
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| ConsoleError::BadName(object.to_string()))?;
    let stream = open(client, node_name, kubelet_root, namespace, name).await?;
    pump(stream, object).await
}

/// The launcher pod of `namespace/name`, which must run on `node_name`.
pub async fn launcher_pod(
    client: Client,
    node_name: &str,
    namespace: &str,
    name: &str,
) -> Result<Pod, ConsoleError> {
    let object = format!("{namespace}/{name}");
    let kube_err = |what| {
        let object = object.clone();
        move |source| ConsoleError::Kube {
            what,
            object,
            source,
        }
    };
    let vmi = Api::<VirtualMachineInstance>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(kube_err("virtualmachineinstance"))?
        .ok_or_else(|| ConsoleError::NoInstance(object.clone()))?;
    let uid = vmi.uid().unwrap_or_default();
    let pod = Api::<Pod>::namespaced(client, namespace)
        .get_opt(&launcher_pod_name(name, &uid))
        .await
        .map_err(kube_err("the launcher pod of"))?
        .filter(|p| p.labels().get(LABEL_CREATED_BY) == Some(&uid))
        .ok_or_else(|| ConsoleError::NoPod(object.clone()))?;
    let pod_node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if pod_node != node_name {
        return Err(ConsoleError::OtherNode {
            object,
            pod_node,
            node: node_name.to_string(),
        });
    }
    Ok(pod)
}

/// A connection to the console socket of `namespace/name` on this node.
pub async fn open(
    client: Client,
    node_name: &str,
    kubelet_root: &std::path::Path,
    namespace: &str,
    name: &str,
) -> Result<UnixStream, ConsoleError> {
    let object = format!("{namespace}/{name}");
    let pod = launcher_pod(client, node_name, namespace, name).await?;
    let path = pod
        .uid()
        .and_then(|pod_uid| launcher_console_socket(kubelet_root, &pod_uid))
        .ok_or_else(|| ConsoleError::NoPod(object.clone()))?;
    let stream = connect(&path, &object).await?;
    info!(socket = %path.display(), "console attached");
    Ok(stream)
}

async fn connect(path: &std::path::Path, object: &str) -> Result<UnixStream, ConsoleError> {
    let socket_err = |source| ConsoleError::Socket {
        object: object.to_string(),
        path: path.to_path_buf(),
        source,
    };
    // The kubelet's volume paths are longer than a socket address may be (108 bytes):
    // connect through this process's descriptor of the socket's directory instead.
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(socket_err(std::io::ErrorKind::InvalidInput.into()));
    };
    let deadline = tokio::time::Instant::now() + SOCKET_WAIT;
    let dir = loop {
        match std::fs::File::open(dir) {
            Ok(dir) => break dir,
            Err(source) if tokio::time::Instant::now() >= deadline => {
                return Err(socket_err(source))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    loop {
        match UnixStream::connect(&short).await {
            Ok(stream) => return Ok(stream),
            Err(source) if tokio::time::Instant::now() >= deadline => {
                return Err(socket_err(source))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Copies the console to standard output and standard input to the console.
async fn pump(stream: UnixStream, object: &str) -> Result<(), ConsoleError> {
    let io_err = |source| ConsoleError::Io {
        object: object.to_string(),
        source,
    };
    let (mut from_guest, mut to_guest) = stream.into_split();
    let output = async {
        let mut stdout = tokio::io::stdout();
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = from_guest.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            stdout.write_all(&buffer[..n]).await?;
            stdout.flush().await?;
        }
    };
    let input = async {
        let mut stdin = tokio::io::stdin();
        let mut buffer = vec![0u8; 4096];
        loop {
            let n = stdin.read(&mut buffer).await?;
            let chunk = &buffer[..n];
            let (chunk, detach) = match chunk.iter().position(|b| *b == ESCAPE) {
                Some(at) => (&chunk[..at], true),
                None => (chunk, n == 0),
            };
            to_guest.write_all(chunk).await?;
            if detach {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    tokio::select! {
        done = output => done.map_err(io_err),
        done = input => done.map_err(io_err),
    }
}
