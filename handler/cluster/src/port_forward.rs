//! Port forwarding over the node link: a TCP connection to a port of an instance's guest,
//! made from inside its launcher pod's network namespace (where the guest's private
//! address is reachable), whose bytes are then relayed over the node link. The api-server
//! turns it into the `portforward` subresource's WebSocket; `virtctl port-forward` and
//! `virtctl ssh` use that.

use ironvisor_crds::cluster::LABEL_CREATED_BY;
use ironvisor_crds::node_link::{encode_line, LinkReply, LinkRequest};
use ironvisor_net::GuestConnectError;
use kube::ResourceExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tracing::info;

use crate::console;
use crate::instances::InstanceContext;

/// Connects to the guest port `request` names and relays until either side closes.
pub async fn session<S>(mut stream: BufReader<S>, context: &InstanceContext, request: &LinkRequest)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let guest = match connect(context, request).await {
        Ok(guest) => guest,
        Err(reply) => {
            info!(code = reply.code, message = %reply.message, "port forward refused");
            let _ = stream.get_mut().write_all(&encode_line(&reply)).await;
            return;
        }
    };
    let mut guest = guest;
    let attached = LinkReply::ok(format!("connected to port {}", request.port.unwrap_or(0)));
    if stream
        .get_mut()
        .write_all(&encode_line(&attached))
        .await
        .is_err()
    {
        return;
    }
    info!(port = request.port, "port forward connected");
    match tokio::io::copy_bidirectional(&mut stream, &mut guest).await {
        Ok((to_guest, from_guest)) => info!(to_guest, from_guest, "port forward ended"),
        Err(error) => info!(%error, "port forward ended"),
    }
}

/// The connection to the guest, or the reply that says why there is none.
async fn connect(
    context: &InstanceContext,
    request: &LinkRequest,
) -> Result<tokio::net::TcpStream, LinkReply> {
    let Some(port) = request.port.filter(|p| *p != 0) else {
        return Err(LinkReply {
            code: 400,
            message: "a port forward needs a port".into(),
        });
    };
    let pod = console::launcher_pod(
        context.client.clone(),
        &context.node_name,
        &request.namespace,
        &request.name,
    )
    .await
    .map_err(|error| crate::node_link::console_reply(&error))?;
    let vm_uid = pod
        .labels()
        .get(LABEL_CREATED_BY)
        .cloned()
        .unwrap_or_default();
    let state_dir = context.network.state_dir.clone();
    let connected = tokio::task::spawn_blocking(move || {
        ironvisor_net::pod_guest_connect(
            &state_dir,
            &vm_uid,
            port,
            ironvisor_net::GUEST_CONNECT_TIMEOUT,
        )
    })
    .await
    .map_err(|error| LinkReply {
        code: 500,
        message: format!("connecting to the guest: {error}"),
    })?;
    let object = format!("{}/{}", request.namespace, request.name);
    let stream = connected.map_err(|error| LinkReply {
        code: match error {
            GuestConnectError::NotWired { .. } => 409,
            GuestConnectError::Connect { .. } => 502,
            _ => 500,
        },
        message: format!("port {port} of VirtualMachineInstance {object}: {error}"),
    })?;
    stream
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(stream))
        .map_err(|error| LinkReply {
            code: 500,
            message: format!("port {port} of VirtualMachineInstance {object}: {error}"),
        })
}
