//! The command line, and turning it into the server's configuration.

use std::path::PathBuf;

use clap::Parser;

use crate::server::{RegistrationConfig, ServerConfig};
use crate::DEFAULT_DRIVER_NAME;

/// Longest CSI driver name.
const MAX_DRIVER_NAME: usize = 63;

/// The command line of `ironvisor-csi-hostpath`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ironvisor-csi-hostpath",
    version,
    about = "Node-local CSI driver (filesystem and block volumes in one host directory) \
             with built-in kubelet plugin registration"
)]
pub struct Args {
    /// The unix socket to serve CSI on: a path or a unix:// URL.
    #[arg(long, value_name = "PATH")]
    pub endpoint: String,
    /// This node's name; volumes are created on it.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_id: String,
    /// The host directory holding the volumes.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The CSI driver name.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_DRIVER_NAME)]
    pub driver_name: String,
    /// The kubelet's plugin registration directory: serve registration on
    /// `<DIR>/<driver-name>-reg.sock` there.
    #[arg(long, value_name = "DIR", requires = "kubelet_endpoint")]
    pub registration_dir: Option<PathBuf>,
    /// The CSI socket as the kubelet sees it on the host, returned at registration.
    #[arg(long, value_name = "PATH", requires = "registration_dir")]
    pub kubelet_endpoint: Option<String>,
}

/// Why the command line cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    /// An endpoint is not a unix socket path.
    #[error("--{flag} {value:?}: {reason}")]
    Endpoint {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The driver name is not a valid CSI driver name.
    #[error(
        "--driver-name {name:?}: a CSI driver name has at most {MAX_DRIVER_NAME} characters, \
         letters, digits, '-' and '.', beginning and ending with a letter or digit"
    )]
    DriverName {
        /// The name.
        name: String,
    },
    /// The node name is empty.
    #[error("--node-id (or NODE_NAME) is empty")]
    NodeId,
}

/// The socket path of an endpoint given as a path or a `unix://` URL.
pub fn socket_path(flag: &'static str, endpoint: &str) -> Result<PathBuf, CliError> {
    let err = |reason| CliError::Endpoint {
        flag,
        value: endpoint.to_owned(),
        reason,
    };
    let path = match endpoint.split_once("://") {
        Some(("unix", path)) => path,
        Some(_) => return Err(err("only unix sockets are served")),
        None => endpoint.strip_prefix("unix:").unwrap_or(endpoint),
    };
    if path.is_empty() {
        return Err(err("no socket path"));
    }
    Ok(PathBuf::from(path))
}

fn valid_driver_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    !name.is_empty()
        && name.len() <= MAX_DRIVER_NAME
        && edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

impl Args {
    /// The server configuration the arguments describe.
    pub fn into_config(self) -> Result<ServerConfig, CliError> {
        if !valid_driver_name(&self.driver_name) {
            return Err(CliError::DriverName {
                name: self.driver_name,
            });
        }
        if self.node_id.is_empty() {
            return Err(CliError::NodeId);
        }
        let registration = match (self.registration_dir, self.kubelet_endpoint) {
            (Some(dir), Some(endpoint)) => Some(RegistrationConfig {
                dir,
                kubelet_endpoint: socket_path("kubelet-endpoint", &endpoint)?
                    .display()
                    .to_string(),
            }),
            _ => None,
        };
        Ok(ServerConfig {
            endpoint: socket_path("endpoint", &self.endpoint)?,
            node_id: self.node_id,
            data_dir: self.data_dir,
            driver_name: self.driver_name,
            registration,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("ironvisor-csi-hostpath").chain(args.iter().copied()))
    }

    const BASE: [&str; 6] = [
        "--endpoint",
        "unix:///csi/csi.sock",
        "--node-id",
        "node-a",
        "--data-dir",
        "/data",
    ];

    #[test]
    fn endpoints_are_paths_or_unix_urls() {
        assert_eq!(
            socket_path("e", "/csi/csi.sock"),
            Ok("/csi/csi.sock".into())
        );
        assert_eq!(
            socket_path("e", "unix:///csi/csi.sock"),
            Ok("/csi/csi.sock".into())
        );
        assert_eq!(
            socket_path("e", "unix:/csi/csi.sock"),
            Ok("/csi/csi.sock".into())
        );
        assert!(socket_path("e", "tcp://127.0.0.1:1").is_err());
        assert!(socket_path("e", "unix://").is_err());
    }

    #[test]
    fn the_minimal_command_line_serves_csi_only() {
        let config = parse(&BASE).unwrap().into_config().unwrap();
        assert_eq!(config.endpoint, PathBuf::from("/csi/csi.sock"));
        assert_eq!(config.driver_name, DEFAULT_DRIVER_NAME);
        assert_eq!(config.node_id, "node-a");
        assert_eq!(config.data_dir, PathBuf::from("/data"));
        assert!(config.registration.is_none());
    }

    #[test]
    fn registration_needs_both_flags() {
        let mut args = BASE.to_vec();
        args.extend(["--registration-dir", "/registry"]);
        assert!(parse(&args).is_err());
        args.extend([
            "--kubelet-endpoint",
            "unix:///var/lib/kubelet/plugins/d/csi.sock",
        ]);
        let config = parse(&args).unwrap().into_config().unwrap();
        let registration = config.registration.unwrap();
        assert_eq!(
            registration.kubelet_endpoint,
            "/var/lib/kubelet/plugins/d/csi.sock"
        );
        assert_eq!(
            registration.socket_path(DEFAULT_DRIVER_NAME),
            PathBuf::from("/registry/hostpath.csi.ironvisor.io-reg.sock")
        );
    }

    #[test]
    fn driver_names_are_checked() {
        for bad in ["", "-a", "a/b", "a.", &"a".repeat(64)] {
            let flag = format!("--driver-name={bad}");
            let mut args = BASE.to_vec();
            args.push(&flag);
            let e = parse(&args).unwrap().into_config().unwrap_err();
            assert!(matches!(e, CliError::DriverName { .. }), "{bad:?}");
        }
        assert!(valid_driver_name("hostpath.csi.ironvisor.io"));
    }
}
