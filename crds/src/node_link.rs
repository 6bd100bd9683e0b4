//! The node link's request and reply: what the api-server asks the node agent that runs an
//! instance, over the mutual-TLS connection to the agent's pod
//! ([`crate::cluster::NODE_LINK_PORT`]).
//!
//! One JSON line each way opens the exchange; for a console (or a port forward), the
//! connection then carries the serial console's (or the guest port's) bytes both ways until
//! either side closes it.

use serde::{Deserialize, Serialize};

/// Longest request or reply line accepted.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LinkOp {
    /// Attach to the serial console.
    Console,
    /// Pause the vCPUs.
    Pause,
    /// Resume them.
    Unpause,
    /// Connect to a TCP port of the guest ([`LinkRequest::port`]).
    PortForward,
}

impl LinkOp {
    /// The subresource's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Console => "console",
            Self::Pause => "pause",
            Self::Unpause => "unpause",
            Self::PortForward => "portforward",
        }
    }
}

/// The request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkRequest {
    /// What.
    pub op: LinkOp,
    /// The instance's namespace.
    pub namespace: String,
    /// The instance's name.
    pub name: String,
    /// The guest's TCP port, for [`LinkOp::PortForward`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// The reply line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkReply {
    /// HTTP-like status: 200 done (or console attached), 404 no such instance or launcher,
    /// 409 the instance's state does not allow it, 500 the agent failed.
    pub code: u16,
    /// For people.
    pub message: String,
}

impl LinkReply {
    /// Success.
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            code: 200,
            message: message.into(),
        }
    }

    /// Whether it succeeded.
    pub fn is_ok(&self) -> bool {
        self.code == 200
    }
}

/// `value` as one line (JSON and a newline).
pub fn encode_line<T: Serialize>(value: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_unknown_fields_are_refused() {
        let request = LinkRequest {
            op: LinkOp::Console,
            namespace: "default".into(),
            name: "small".into(),
            port: None,
        };
        let line = encode_line(&request);
        assert_eq!(line.last(), Some(&b'\n'));
        let back: LinkRequest = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, request);
        assert!(!String::from_utf8_lossy(&line).contains("port"));
        let forward: LinkRequest =
            serde_json::from_str(r#"{"op":"portForward","namespace":"d","name":"n","port":22}"#)
                .unwrap();
        assert_eq!((forward.op, forward.port), (LinkOp::PortForward, Some(22)));
        assert!(serde_json::from_str::<LinkRequest>(
            r#"{"op":"console","namespace":"d","name":"n","x":1}"#
        )
        .is_err());
        assert_eq!(
            serde_json::to_string(&LinkReply::ok("attached")).unwrap(),
            r#"{"code":200,"message":"attached"}"#
        );
    }
}
