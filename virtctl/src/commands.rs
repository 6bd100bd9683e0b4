//! The subcommands: each talks to the node daemon through a [`HandlerClient`] and prints
//! kubectl / KubeVirt-style output.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ironvisor_handler_api::proto::{ObjectRef, VmView};
use ironvisor_handler_api::{ClientError, HandlerClient};
use tracing::{info_span, Instrument};

use crate::cli::{self, ArgsError, Cli, Command, OutputFormat, StopMode};
use crate::console::{self, ConsoleError, ConsoleOptions};
use crate::describe::describe;
use crate::format::{self, FormatError, ObjectFormat};

/// The source name `apply -f -` reports in errors.
pub const STDIN_SOURCE: &str = "STDIN";

/// Why a command failed. The text is what `virtctl` prints after `error: `.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The arguments cannot be used together.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// A cluster call failed.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The command is kubectl's job in cluster mode.
    #[error("virtctl {command} works on the standalone node only; on a cluster use `{instead}` (or pass --node for the standalone node)")]
    NotInClusterMode {
        /// The subcommand.
        command: &'static str,
        /// The kubectl command to use.
        instead: String,
    },
    /// Port forwarding failed.
    #[error(transparent)]
    PortForward(#[from] crate::port_forward::PortForwardError),
    /// ssh could not be started.
    #[error(transparent)]
    Ssh(#[from] crate::ssh::SshError),
    /// The node daemon cannot be reached.
    #[error(transparent)]
    Connect(Box<ClientError>),
    /// A `-f` file or directory could not be read.
    #[error("cannot read {path}: {source}", path = path.display())]
    ReadFile {
        /// The path given (or found in a directory).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A `-f` directory holds no YAML or JSON file.
    #[error("directory {path} contains no .yaml, .yml or .json file", path = path.display())]
    EmptyDirectory {
        /// The directory.
        path: PathBuf,
    },
    /// Reading `-f -` failed.
    #[error("cannot read the YAML on standard input: {0}")]
    ReadStdin(#[source] io::Error),
    /// The daemon refused (part of) an input of `apply`; its message (line, column,
    /// field path, validation list) is kept verbatim.
    #[error("error applying {source_name}: {}", detail(source))]
    Apply {
        /// The file name, or `STDIN`.
        source_name: String,
        /// The daemon's answer.
        #[source]
        source: Box<ClientError>,
    },
    /// Several `apply` inputs failed; each was reported as it happened.
    #[error("{failed} of {total} inputs could not be applied")]
    ApplyIncomplete {
        /// How many inputs failed.
        failed: usize,
        /// How many inputs there were.
        total: usize,
    },
    /// A request about one VM failed.
    #[error("cannot {verb} VM {vm}: {}", detail(source))]
    Vm {
        /// What was attempted ("start", "get", "read the logs of", ...).
        verb: &'static str,
        /// The VM.
        vm: ObjectRef,
        /// The daemon's answer.
        #[source]
        source: Box<ClientError>,
    },
    /// Listing VMs failed.
    #[error("cannot list the VMs {scope}: {}", detail(source))]
    List {
        /// "in namespace X" or "in any namespace".
        scope: String,
        /// The daemon's answer.
        #[source]
        source: Box<ClientError>,
    },
    /// An object could not be rendered.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The console session failed.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// Writing to standard output failed.
    #[error("cannot write to standard output: {0}")]
    Output(#[source] io::Error),
}

impl CommandError {
    /// True when standard output was closed by its reader (`virtctl get | head`), which
    /// is not worth an error message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// What to print of a daemon error: its own message verbatim when it refused the
/// request, the whole client error (which names the socket) otherwise.
pub fn detail(error: &ClientError) -> String {
    match error {
        ClientError::Rejected { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Runs the command line.
pub async fn run(cli: Cli) -> Result<(), CommandError> {
    cli::check(&cli)?;
    if let Command::Completion(args) = &cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(args.shell, &mut command, "virtctl", &mut io::stdout());
        return Ok(());
    }
    if !cli.standalone() {
        return crate::cluster_commands::run(&cli).await;
    }
    if let Some(error) = crate::ssh::exec_client(&cli) {
        return Err(error.into());
    }
    // Read local files before connecting, so a wrong path is reported as such even when
    // the daemon is down.
    let inputs = match &cli.command {
        Command::Apply(args) => read_inputs(&args.files)?,
        _ => Vec::new(),
    };
    let client = HandlerClient::connect(&cli.socket())
        .await
        .map_err(|e| CommandError::Connect(Box::new(e)))?;
    let namespace = cli.namespace().to_string();
    let vm = |name: &str| ObjectRef::new(namespace.clone(), name);
    match &cli.command {
        Command::Apply(_) => apply(&client, inputs).await,
        Command::Get(args) => {
            let format = args.output.map(object_format);
            match args.name()? {
                Some(name) => get(&client, vm(name), format).await,
                None => list(&client, &namespace, args.all_namespaces, format).await,
            }
        }
        Command::List(args) => {
            list(
                &client,
                &namespace,
                args.all_namespaces,
                args.output.map(object_format),
            )
            .await
        }
        Command::Describe(args) => {
            let view = fetch(&client, vm(&args.name), "describe").await?;
            print(&describe(&view, format::now_unix())?)
        }
        Command::Start(args) => {
            let reply = client.start(vm(&args.name)).await;
            report(vm(&args.name), "start", reply, |n| {
                format!("VM {n} was scheduled to start")
            })
        }
        Command::Stop(args) => {
            let (force, grace) = match args.mode() {
                StopMode::Force => (true, 0),
                StopMode::Graceful {
                    grace_period_seconds,
                } => (false, grace_period_seconds),
            };
            let reply = client.stop(vm(&args.name), force, grace).await;
            report(vm(&args.name), "stop", reply, |n| {
                format!("VM {n} was scheduled to stop")
            })
        }
        Command::Restart(args) => {
            let reply = client.restart(vm(&args.name)).await;
            report(vm(&args.name), "restart", reply, |n| {
                format!("VM {n} was scheduled to restart")
            })
        }
        Command::Pause(args) => {
            let reply = client.pause(vm(&args.name)).await;
            report(vm(&args.name), "pause", reply, |n| {
                format!("VMI {n} was scheduled to pause")
            })
        }
        Command::Unpause(args) => {
            let reply = client.unpause(vm(&args.name)).await;
            report(vm(&args.name), "unpause", reply, |n| {
                format!("VMI {n} was scheduled to unpause")
            })
        }
        Command::Delete(args) => {
            let reply = client.delete(vm(&args.name)).await;
            report(vm(&args.name), "delete", reply, |n| {
                format!("{}.{} \"{n}\" deleted", "virtualmachine", format::API_GROUP)
            })
        }
        Command::Console(args) => {
            let options = ConsoleOptions {
                timeout: args.timeout.map(Duration::from_secs),
                wait: Duration::from_secs(args.wait),
                interactive: console::interactive(),
            };
            console::run(&client, vm(&args.name), options).await?;
            Ok(())
        }
        Command::Logs(args) => logs(&client, vm(&args.name), args.follow).await,
        Command::PortForward(args) => {
            let transport = crate::port_forward::Transport::Node {
                client,
                namespace: namespace.clone(),
            };
            crate::port_forward::run(&transport, args).await?;
            Ok(())
        }
        Command::Completion(_) | Command::Ssh(_) | Command::Scp(_) => Ok(()),
    }
}

fn object_format(output: OutputFormat) -> ObjectFormat {
    match output {
        OutputFormat::Json => ObjectFormat::Json,
        OutputFormat::Yaml => ObjectFormat::Yaml,
        OutputFormat::Name => ObjectFormat::Name,
    }
}

/// One `apply` input: its name in messages and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The path as given (or found in a directory), or [`STDIN_SOURCE`].
    pub source: String,
    /// The YAML (or JSON) text.
    pub text: String,
}

/// Reads every `-f` argument: a file, a directory (its `.yaml`, `.yml` and `.json`
/// files, sorted by name, not recursive), or `-` for standard input.
pub fn read_inputs(paths: &[PathBuf]) -> Result<Vec<Input>, CommandError> {
    let mut inputs = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            io::stdin()
                .read_to_string(&mut text)
                .map_err(CommandError::ReadStdin)?;
            inputs.push(Input {
                source: STDIN_SOURCE.to_string(),
                text,
            });
        } else if path.is_dir() {
            let files = yaml_files_in(path)?;
            if files.is_empty() {
                return Err(CommandError::EmptyDirectory { path: path.clone() });
            }
            for file in files {
                inputs.push(read_file(&file)?);
            }
        } else {
            inputs.push(read_file(path)?);
        }
    }
    Ok(inputs)
}

fn read_file(path: &Path) -> Result<Input, CommandError> {
    let text = std::fs::read_to_string(path).map_err(|source| CommandError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Input {
        source: path.display().to_string(),
        text,
    })
}

fn yaml_files_in(dir: &Path) -> Result<Vec<PathBuf>, CommandError> {
    let read_error = |source| CommandError::ReadFile {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Applies each input in turn; a failed input does not stop the others.
async fn apply(client: &HandlerClient, inputs: Vec<Input>) -> Result<(), CommandError> {
    let total = inputs.len();
    let mut errors = Vec::new();
    for input in inputs {
        let span = info_span!("apply", source = %input.source);
        let result = client
            .apply(input.text, input.source.clone())
            .instrument(span)
            .await;
        match result {
            Ok(objects) => {
                let lines: String = objects
                    .iter()
                    .map(|o| format::applied_line(o) + "\n")
                    .collect();
                print(&lines)?;
            }
            Err(source) if source.is_unreachable() => {
                return Err(CommandError::Connect(Box::new(source)))
            }
            Err(source) => errors.push(CommandError::Apply {
                source_name: input.source,
                source: Box::new(source),
            }),
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        failed => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            Err(CommandError::ApplyIncomplete { failed, total })
        }
    }
}

async fn fetch(
    client: &HandlerClient,
    vm: ObjectRef,
    verb: &'static str,
) -> Result<VmView, CommandError> {
    client
        .get(vm.clone())
        .await
        .map_err(|source| CommandError::Vm {
            verb,
            vm,
            source: Box::new(source),
        })
}

async fn get(
    client: &HandlerClient,
    vm: ObjectRef,
    format: Option<ObjectFormat>,
) -> Result<(), CommandError> {
    let view = fetch(client, vm, "get").await?;
    let text = match format {
        None => format::vm_table(std::slice::from_ref(&view), false, format::now_unix()),
        Some(f) => format::render_objects(std::slice::from_ref(&view), true, f)?,
    };
    print(&text)
}

async fn list(
    client: &HandlerClient,
    namespace: &str,
    all_namespaces: bool,
    format: Option<ObjectFormat>,
) -> Result<(), CommandError> {
    let scope = if all_namespaces {
        None
    } else {
        Some(namespace)
    };
    let mut vms = client
        .list(scope)
        .await
        .map_err(|source| CommandError::List {
            scope: match scope {
                Some(ns) => format!("in namespace {ns}"),
                None => "in any namespace".to_string(),
            },
            source: Box::new(source),
        })?;
    vms.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    match format {
        None if vms.is_empty() => {
            match scope {
                Some(ns) => eprintln!("No resources found in {ns} namespace."),
                None => eprintln!("No resources found"),
            }
            Ok(())
        }
        None => print(&format::vm_table(&vms, all_namespaces, format::now_unix())),
        Some(f) => print(&format::render_objects(&vms, false, f)?),
    }
}

/// Prints the outcome of a lifecycle action: the KubeVirt-style line, then the daemon's
/// own message when it has one.
fn report(
    vm: ObjectRef,
    verb: &'static str,
    reply: Result<String, ClientError>,
    line: impl FnOnce(&str) -> String,
) -> Result<(), CommandError> {
    let message = reply.map_err(|source| CommandError::Vm {
        verb,
        vm: vm.clone(),
        source: Box::new(source),
    })?;
    let mut text = line(&vm.name) + "\n";
    if !message.trim().is_empty() {
        text.push_str(message.trim_end());
        text.push('\n');
    }
    print(&text)
}

async fn logs(client: &HandlerClient, vm: ObjectRef, follow: bool) -> Result<(), CommandError> {
    let verb = "read the logs of";
    let failed = |source| CommandError::Vm {
        verb,
        vm: vm.clone(),
        source: Box::new(source),
    };
    let mut stream = client.logs(vm.clone(), follow).await.map_err(failed)?;
    while let Some(bytes) = stream.next().await.map_err(failed)? {
        write_all(&bytes)?;
    }
    Ok(())
}

fn print(text: &str) -> Result<(), CommandError> {
    write_all(text.as_bytes())
}

fn write_all(bytes: &[u8]) -> Result<(), CommandError> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(CommandError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        let e = read_inputs(std::slice::from_ref(&missing)).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("cannot read "), "{text}");
        assert!(text.contains(&missing.display().to_string()), "{text}");
    }

    #[test]
    fn directories_expand_to_sorted_yaml_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.yaml"), "b").unwrap();
        std::fs::write(dir.path().join("a.yml"), "a").unwrap();
        std::fs::write(dir.path().join("c.json"), "c").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let inputs = read_inputs(&[dir.path().to_path_buf()]).unwrap();
        let texts: Vec<_> = inputs.iter().map(|i| i.text.as_str()).collect();
        assert_eq!(texts, ["a", "b", "c"]);
        assert!(inputs[0].source.ends_with("a.yml"));

        let empty = tempfile::tempdir().unwrap();
        let e = read_inputs(&[empty.path().to_path_buf()]).unwrap_err();
        assert!(matches!(e, CommandError::EmptyDirectory { .. }), "{e}");
    }

    #[test]
    fn vm_errors_name_the_vm_and_keep_the_daemon_message() {
        let e = CommandError::Vm {
            verb: "start",
            vm: ObjectRef::new("prod", "web"),
            source: Box::new(ClientError::Rejected {
                path: "/s".into(),
                rpc: "Start",
                code: tonic::Code::FailedPrecondition,
                message: "VM is already running".into(),
            }),
        };
        assert_eq!(
            e.to_string(),
            "cannot start VM prod/web: VM is already running"
        );
        let e = CommandError::Apply {
            source_name: "vm.yaml".into(),
            source: Box::new(ClientError::Rejected {
                path: "/s".into(),
                rpc: "Apply",
                code: tonic::Code::InvalidArgument,
                message: "vm.yaml:12:3: unknown field `spec.foo`".into(),
            }),
        };
        assert_eq!(
            e.to_string(),
            "error applying vm.yaml: vm.yaml:12:3: unknown field `spec.foo`"
        );
    }
}
