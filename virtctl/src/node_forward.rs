//! Port forwarding on the standalone node: one `PortForward` stream of the node daemon per
//! connection; the daemon connects to the guest's port inside the VM's network namespace.
//! An empty input item (or a chunk marked end-of-file) is that direction's end-of-file.

use ironvisor_handler_api::proto::ObjectRef;
use ironvisor_handler_api::{ForwardedBytes, HandlerClient};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info};

use crate::cluster_forward::end_output;
use crate::port_forward::PortForwardError;

/// Size of one read from the local side.
const CHUNK: usize = 16 * 1024;

/// Relays `input` to port `port` of VM `namespace/name`'s guest and its bytes to `output`
/// until the daemon ends the stream (both directions ended).
pub async fn relay<R, W>(
    client: &HandlerClient,
    namespace: &str,
    name: &str,
    port: u16,
    mut input: R,
    output: W,
) -> Result<(), PortForwardError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let vm = ObjectRef::new(namespace, name);
    let failed = |source| PortForwardError::Node {
        vm: vm.to_string(),
        port,
        source: Box::new(source),
    };
    let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
    let mut from_guest = client
        .port_forward(vm.clone(), port, ReceiverStream::new(rx))
        .await
        .map_err(failed)?;
    info!(vm = %vm, port, "connection relayed");
    // The local side's bytes, then an empty item for its end-of-file.
    let upstream = tokio::spawn(async move {
        let mut buffer = vec![0u8; CHUNK];
        loop {
            match input.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(buffer[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    debug!(%error, "reading the local side failed");
                    break;
                }
            }
        }
        let _ = tx.send(Vec::new()).await;
        // Keep the request stream open: closing it early would end the session before
        // the guest's answer arrived.
        tx.closed().await;
    });
    let mut output = Some(output);
    let result = loop {
        match from_guest.next().await {
            Ok(Some(ForwardedBytes::Data(data))) => {
                let Some(out) = output.as_mut() else { continue };
                if out.write_all(&data).await.is_err() || out.flush().await.is_err() {
                    break Ok(());
                }
            }
            Ok(Some(ForwardedBytes::Eof)) => end_output(&mut output).await,
            Ok(None) => break Ok(()),
            Err(error) => break Err(failed(error)),
        }
    };
    end_output(&mut output).await;
    upstream.abort();
    result
}
