//! Command-line arguments of `virtctl`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ironvisor_handler_api::{DEFAULT_NAMESPACE, DEFAULT_SOCKET, SOCKET_ENV};

/// Resource names accepted as the optional first argument of `get` (`virtctl get vms`).
const VM_RESOURCE_NAMES: &[&str] = &[
    "vm",
    "vms",
    "virtualmachine",
    "virtualmachines",
    "virtualmachine.ironvisor.io",
    "virtualmachines.ironvisor.io",
];

/// Why the arguments, although accepted by the parser, cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// `get` was given two names and the first is not a resource type.
    #[error(
        "virtctl get: unknown resource type {0:?}; only virtual machines exist here (vm, vms, virtualmachines)"
    )]
    UnknownResource(String),
    /// `get` was given more than a resource type and a name.
    #[error("virtctl get: expected at most a resource type and a name, got {0} arguments")]
    TooManyArguments(usize),
    /// `apply` was given `--namespace`, which the node daemon's Apply does not take.
    #[error(
        "virtctl apply: --namespace {0:?} is not supported; set metadata.namespace in the file instead"
    )]
    ApplyNamespace(String),
    /// `--all-namespaces` and a VM name were both given.
    #[error("virtctl get: a VM name cannot be combined with --all-namespaces")]
    NameWithAllNamespaces,
}

/// Manage Ironvisor virtual machines (a KubeVirt-like virtctl): on a Kubernetes cluster
/// through its API with your kubeconfig, or on a standalone node through its daemon.
#[derive(Debug, Parser)]
#[command(
    name = "virtctl",
    version,
    after_help = "Cluster mode is used when a kubeconfig is configured (--kubeconfig, KUBECONFIG or \
~/.kube/config); --node, --socket or IRONVISOR_SOCKET talk to the standalone node daemon.

Examples:
  virtctl start small -n demo           start VirtualMachine demo/small
  virtctl stop small --grace-period 0   stop it at once
  virtctl restart small
  virtctl console small                 serial console (Ctrl+] detaches)
  virtctl port-forward vm/small 8080:80 a guest port on localhost (cluster mode)
  virtctl ssh -i KEY debian@vm/small    ssh through port-forward (cluster mode)
  virtctl --node apply -f vm.yaml       create a VM on the standalone node
  virtctl completion bash > /etc/bash_completion.d/virtctl"
)]
pub struct Cli {
    /// Unix socket of the node daemon; giving it (or IRONVISOR_SOCKET) means the
    /// standalone node [default: /run/ironvisor/handler.sock].
    #[arg(long, global = true, env = SOCKET_ENV)]
    pub socket: Option<PathBuf>,
    /// Namespace of the VM (default: the kubeconfig context's, or "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Kubeconfig file (cluster mode; default: KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (cluster mode).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Talk to the standalone node daemon (--socket) even when a cluster is configured.
    #[arg(long, global = true)]
    pub node: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The node daemon's socket.
    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }

    /// Whether to talk to the standalone node: `--node` or a socket was given, or no
    /// cluster is configured.
    pub fn standalone(&self) -> bool {
        self.node
            || self.socket.is_some()
            || !crate::cluster::configured(self.kubeconfig.as_deref())
    }

    /// The namespace to act in: `--namespace`, or "default".
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update VMs from YAML files, like `kubectl apply -f`.
    Apply(ApplyArgs),
    /// Show one VM, or list them: `get [vm|vms] [NAME]`.
    Get(GetArgs),
    /// List the VMs (same as `get` without a name).
    List(ListArgs),
    /// Show a VM in detail: spec summary, status, conditions, interfaces, events.
    Describe(NameArg),
    /// Start a stopped VM.
    Start(NameArg),
    /// Stop a running VM.
    Stop(StopArgs),
    /// Restart a running VM.
    Restart(NameArg),
    /// Pause a running VM's vCPUs.
    Pause(NameArg),
    /// Resume a paused VM.
    Unpause(NameArg),
    /// Delete a VM (stopping it first) and everything made for it.
    Delete(NameArg),
    /// Attach to a VM's serial console (Ctrl+] detaches).
    Console(ConsoleArgs),
    /// Print the launcher log of a VM's current (or last) run.
    Logs(LogsArgs),
    /// Forward local TCP ports to a VM's guest ports (cluster mode, through the API):
    /// `port-forward vm/NAME 8080:80`, or `--stdio vm/NAME 22` for an ssh ProxyCommand.
    PortForward(PortForwardArgs),
    /// SSH to a VM's guest through `port-forward` with the local `ssh`:
    /// `ssh -i KEY USER@vm/NAME [-c COMMAND]`.
    Ssh(SshArgs),
    /// Copy files to or from a VM's guest through `port-forward` with the local `scp`:
    /// `scp [-r] -i KEY SOURCE... DEST`, the VM's side written `[USER@]vm/NAME:PATH`.
    Scp(ScpArgs),
    /// Print a shell completion script.
    Completion(CompletionArgs),
}

/// Arguments of `completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Arguments of `apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// YAML file, directory of YAML files, or `-` for standard input; may be repeated.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// Output formats of `get` and `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The full objects as JSON.
    Json,
    /// The full objects as YAML.
    Yaml,
    /// `virtualmachine.ironvisor.io/NAME`, one per line.
    Name,
}

/// Arguments of `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// `[vm|vms|virtualmachines] [NAME]`; without a name, lists the VMs.
    #[arg(value_name = "NAME", num_args = 0..=2)]
    pub args: Vec<String>,
    /// List the VMs of all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format (default: a table).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
}

impl GetArgs {
    /// The VM name asked for, if any, after dropping a leading resource type.
    pub fn name(&self) -> Result<Option<&str>, ArgsError> {
        let name = match self.args.as_slice() {
            [] => None,
            [one] if is_vm_resource(one) => None,
            [one] => Some(one.as_str()),
            [kind, name] if is_vm_resource(kind) => Some(name.as_str()),
            [kind, _] => return Err(ArgsError::UnknownResource(kind.clone())),
            more => return Err(ArgsError::TooManyArguments(more.len())),
        };
        if name.is_some() && self.all_namespaces {
            return Err(ArgsError::NameWithAllNamespaces);
        }
        Ok(name)
    }
}

fn is_vm_resource(word: &str) -> bool {
    VM_RESOURCE_NAMES
        .iter()
        .any(|known| known.eq_ignore_ascii_case(word))
}

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// List the VMs of all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format (default: a table).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,
}

/// A command that only takes the VM's name.
#[derive(Debug, Args)]
pub struct NameArg {
    /// Name of the VM.
    pub name: String,
}

/// Arguments of `stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Name of the VM.
    pub name: String,
    /// Stop at once, without asking the guest to shut down.
    #[arg(long)]
    pub force: bool,
    /// Seconds the guest gets to shut down before it is stopped hard (0: at once).
    /// Default: the VM's terminationGracePeriodSeconds.
    #[arg(long, value_name = "SECONDS")]
    pub grace_period: Option<u32>,
}

/// How `stop` asks the daemon to stop a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Hard stop now.
    Force,
    /// Graceful, within the given seconds (0: the VM's terminationGracePeriodSeconds).
    Graceful {
        /// Seconds, 0 for the VM's own grace period.
        grace_period_seconds: u32,
    },
}

impl StopArgs {
    /// `--force` or `--grace-period 0` stop at once; otherwise the guest gets the grace
    /// period given, or the VM's own when none is.
    pub fn mode(&self) -> StopMode {
        match (self.force, self.grace_period) {
            (true, _) | (false, Some(0)) => StopMode::Force,
            (false, Some(seconds)) => StopMode::Graceful {
                grace_period_seconds: seconds,
            },
            (false, None) => StopMode::Graceful {
                grace_period_seconds: 0,
            },
        }
    }
}

/// Arguments of `console`.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Name of the VM.
    pub name: String,
    /// End the session after this many seconds (default: until detached or the VM stops).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Seconds to keep retrying while the VM has no console yet (it is starting).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub wait: u64,
}

/// Arguments of `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Name of the VM.
    pub name: String,
    /// Keep printing new log lines as they are written.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

/// Arguments of `port-forward`.
#[derive(Debug, Args)]
pub struct PortForwardArgs {
    /// The VM: `vm/NAME`, `vmi/NAME` or `NAME`.
    pub target: String,
    /// `LOCAL:REMOTE` or `PORT` (the same on both sides); with `--stdio`, one `PORT`.
    #[arg(required = true, value_name = "PORTS")]
    pub ports: Vec<String>,
    /// Relay one connection over standard input and output instead of listening.
    #[arg(long)]
    pub stdio: bool,
    /// The local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
}

/// What `ssh` and `scp` both take: the login and the local client's options.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The private key to log in with.
    #[arg(short = 'i', long = "identity-file", value_name = "FILE")]
    pub identity_file: Option<PathBuf>,
    /// The user to log in as.
    #[arg(short = 'l', long)]
    pub username: Option<String>,
    /// More options for the local client (each one word, e.g. `-t -oStrictHostKeyChecking=no`).
    #[arg(
        short = 't',
        long = "local-ssh-opts",
        value_name = "OPTION",
        allow_hyphen_values = true
    )]
    pub local_ssh_opts: Vec<String>,
}

/// Arguments of `ssh`.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// `USER@vm/NAME`, or `vm/NAME` with `--username`.
    pub target: String,
    /// The login.
    #[command(flatten)]
    pub login: LoginArgs,
    /// The guest's SSH port.
    #[arg(short = 'p', long, default_value_t = 22)]
    pub port: u16,
    /// Run this command instead of a login shell.
    #[arg(short = 'c', long)]
    pub command: Option<String>,
}

/// Arguments of `scp`.
#[derive(Debug, Args)]
pub struct ScpArgs {
    /// Sources then the destination; the VM's side is `[USER@]vm/NAME:PATH`.
    #[arg(required = true, num_args = 2.., value_name = "PATH")]
    pub paths: Vec<String>,
    /// The login.
    #[command(flatten)]
    pub login: LoginArgs,
    /// The guest's SSH port (scp's spelling).
    #[arg(short = 'P', long, default_value_t = 22)]
    pub port: u16,
    /// Copy directories recursively.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Keep modification times and modes.
    #[arg(short = 'p', long)]
    pub preserve: bool,
}

/// Checks what the parser cannot: `apply` takes no `--namespace`.
pub fn check(cli: &Cli) -> Result<(), ArgsError> {
    match (&cli.command, &cli.namespace) {
        (Command::Apply(_), Some(namespace)) if namespace != DEFAULT_NAMESPACE => {
            Err(ArgsError::ApplyNamespace(namespace.clone()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("virtctl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn apply_takes_several_files_and_stdin() {
        let cli = parse(&["apply", "-f", "a.yaml", "-f", "-", "--filename", "dir"]);
        let Command::Apply(args) = &cli.command else {
            panic!("not apply: {cli:?}")
        };
        assert_eq!(
            args.files,
            vec![
                PathBuf::from("a.yaml"),
                PathBuf::from("-"),
                PathBuf::from("dir")
            ]
        );
        assert!(Cli::try_parse_from(["virtctl", "apply"]).is_err());
    }

    #[test]
    fn namespace_and_socket_are_global_with_defaults() {
        let cli = parse(&["get"]);
        assert_eq!(cli.namespace(), "default");
        if std::env::var_os(SOCKET_ENV).is_none() {
            assert_eq!(cli.socket(), PathBuf::from(DEFAULT_SOCKET));
        }
        let cli = parse(&["describe", "web", "-n", "prod", "--socket", "/tmp/h.sock"]);
        assert_eq!(cli.namespace(), "prod");
        assert_eq!(cli.socket(), PathBuf::from("/tmp/h.sock"));
        assert!(
            cli.standalone(),
            "an explicit socket means the standalone node"
        );
        let cli = parse(&["--kubeconfig", "/tmp/kc", "start", "web"]);
        if std::env::var_os(SOCKET_ENV).is_none() {
            assert!(!cli.standalone());
        }
        assert!(parse(&["--kubeconfig", "/tmp/kc", "--node", "start", "web"]).standalone());
    }

    #[test]
    fn get_accepts_an_optional_resource_type() {
        let get = |args: &[&str]| match parse(args).command {
            Command::Get(g) => g,
            other => panic!("not get: {other:?}"),
        };
        assert_eq!(get(&["get"]).name(), Ok(None));
        assert_eq!(get(&["get", "vms"]).name(), Ok(None));
        assert_eq!(get(&["get", "web"]).name(), Ok(Some("web")));
        assert_eq!(get(&["get", "vm", "web"]).name(), Ok(Some("web")));
        assert_eq!(
            get(&["get", "pods", "web"]).name(),
            Err(ArgsError::UnknownResource("pods".into()))
        );
        assert_eq!(
            get(&["get", "-A", "web"]).name(),
            Err(ArgsError::NameWithAllNamespaces)
        );
        let g = get(&["get", "-o", "yaml"]);
        assert_eq!(g.output, Some(OutputFormat::Yaml));
        assert!(Cli::try_parse_from(["virtctl", "get", "-o", "xml"]).is_err());
        assert!(Cli::try_parse_from(["virtctl", "get", "vm", "a", "b"]).is_err());
    }

    #[test]
    fn stop_modes() {
        let stop = |args: &[&str]| match parse(args).command {
            Command::Stop(s) => s.mode(),
            other => panic!("not stop: {other:?}"),
        };
        assert_eq!(
            stop(&["stop", "web"]),
            StopMode::Graceful {
                grace_period_seconds: 0
            }
        );
        assert_eq!(stop(&["stop", "web", "--force"]), StopMode::Force);
        assert_eq!(
            stop(&["stop", "web", "--grace-period", "0"]),
            StopMode::Force
        );
        assert_eq!(
            stop(&["stop", "web", "--grace-period", "20"]),
            StopMode::Graceful {
                grace_period_seconds: 20
            }
        );
        assert!(Cli::try_parse_from(["virtctl", "stop"]).is_err());
    }

    #[test]
    fn console_and_logs_flags() {
        match parse(&["console", "web", "--timeout", "5"]).command {
            Command::Console(c) => {
                assert_eq!(c.name, "web");
                assert_eq!(c.timeout, Some(5));
                assert_eq!(c.wait, 300);
            }
            other => panic!("not console: {other:?}"),
        }
        match parse(&["logs", "web", "-f"]).command {
            Command::Logs(l) => assert!(l.follow),
            other => panic!("not logs: {other:?}"),
        }
    }

    #[test]
    fn apply_rejects_an_explicit_namespace() {
        assert_eq!(
            check(&parse(&["apply", "-f", "x", "-n", "prod"])),
            Err(ArgsError::ApplyNamespace("prod".into()))
        );
        assert_eq!(
            check(&parse(&["apply", "-f", "x", "-n", "default"])),
            Ok(())
        );
        assert_eq!(check(&parse(&["get", "-n", "prod"])), Ok(()));
    }
}
