//! `virtctl console` in cluster mode: the console WebSocket through kube-apiserver and
//! Ironvisor's api-server, with the same terminal session as on a standalone node
//! (raw mode, `Ctrl+]` detaches, works over a pipe). While the instance is not running
//! yet (409), the console is asked for again for up to `--wait`.

use futures::{SinkExt, StreamExt};
use ironvisor_handler_api::proto::ObjectRef;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info_span, Instrument};

use crate::cluster::{Cluster, ClusterError, ConsoleSocket};
use crate::console::{self, ConsoleEnd, ConsoleError, ConsoleOptions, ConsoleSource, Signals};

const STDIN_CHANNEL: u8 = 0;
const STDOUT_CHANNEL: u8 = 1;
const ERROR_CHANNEL: u8 = 3;

/// Output from the WebSocket: channel 1 is the guest's output; a close ends it.
struct SocketOutput {
    messages: futures::stream::SplitStream<ConsoleSocket>,
}

impl ConsoleSource for SocketOutput {
    async fn next_chunk(&mut self, vm: &ObjectRef) -> Result<Option<Vec<u8>>, ConsoleError> {
        loop {
            let message = match self.messages.next().await {
                // The api-server closes the WebSocket when the guest's console ends.
                Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(message)) => message,
                // Gone without a close: the api-server restarted, its pod was deleted, or
                // the network broke.
                None => {
                    return Err(ConsoleError::Cluster {
                        vm: vm.clone(),
                        message: "the connection to the cluster closed".into(),
                    })
                }
                Some(Err(error)) => {
                    return Err(ConsoleError::Cluster {
                        vm: vm.clone(),
                        message: format!("the connection to the cluster closed: {error}"),
                    });
                }
            };
            let Message::Binary(data) = message else {
                continue;
            };
            match data.split_first() {
                Some((&STDOUT_CHANNEL, rest)) if !rest.is_empty() => {
                    return Ok(Some(rest.to_vec()))
                }
                Some((&ERROR_CHANNEL, rest)) if !rest.is_empty() => {
                    return Err(ConsoleError::Cluster {
                        vm: vm.clone(),
                        message: String::from_utf8_lossy(rest).into_owned(),
                    })
                }
                _ => continue,
            }
        }
    }
}

/// Runs a console session of instance `name` on this process's standard input and output.
pub async fn run(
    cluster: &Cluster,
    name: &str,
    options: ConsoleOptions,
) -> Result<ConsoleEnd, ConsoleError> {
    let vm = ObjectRef::new(cluster.namespace.clone(), name);
    let span = info_span!("console", vm = %vm, interactive = options.interactive);
    async {
        let started = Instant::now();
        let deadline = options.timeout.map(|t| started + t);
        let mut signals = Signals::install(&vm)?;
        let socket = open(cluster, &vm, options, started).await?;
        let (mut sink, messages) = socket.split();
        let (input, mut to_send) = mpsc::channel::<Vec<u8>>(16);
        // Input goes out on channel 0; the writer ends when the session drops `input`.
        let writer = tokio::spawn(async move {
            while let Some(bytes) = to_send.recv().await {
                let mut framed = Vec::with_capacity(bytes.len() + 1);
                framed.push(STDIN_CHANNEL);
                framed.extend_from_slice(&bytes);
                if sink.send(Message::binary(framed)).await.is_err() {
                    return;
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        });
        let mut output = SocketOutput { messages };
        let end = console::session(&vm, options, &mut output, input, deadline, &mut signals).await;
        writer.abort();
        end
    }
    .instrument(span)
    .await
}

/// Opens the console, asking again while the instance is not running yet.
async fn open(
    cluster: &Cluster,
    vm: &ObjectRef,
    options: ConsoleOptions,
    started: Instant,
) -> Result<ConsoleSocket, ConsoleError> {
    let mut announced = false;
    loop {
        let error = match cluster.console(&vm.name).await {
            Ok(socket) => return Ok(socket),
            Err(error) => error,
        };
        let not_yet = matches!(error, ClusterError::Refused { code: 409, .. });
        if !not_yet || started.elapsed() >= options.wait {
            return Err(ConsoleError::Cluster {
                vm: vm.clone(),
                message: error.to_string(),
            });
        }
        if !announced {
            eprintln!("Waiting for the console of VM {vm} ({error})...");
            announced = true;
        }
        debug!(%error, "console not available yet, retrying");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
