//! The subcommands in cluster mode: lifecycle, pause and the console through the
//! subresource API; what kubectl
//! already does (apply, get, describe, delete, logs) is left to kubectl, with a message
//! saying which command to use.

use std::time::Duration;

use serde_json::json;

use crate::cli::{Cli, Command, StopMode};
use crate::cluster::{Cluster, ClusterOptions};
use crate::cluster_console;
use crate::commands::CommandError;
use crate::console::{self, ConsoleOptions};

/// Runs `cli.command` against the cluster.
pub async fn run(cli: &Cli) -> Result<(), CommandError> {
    let kubectl_instead = |command: &'static str, instead: String| {
        Err(CommandError::NotInClusterMode { command, instead })
    };
    let (name, action, body) = match &cli.command {
        Command::Start(args) => (&args.name, "start", json!({})),
        Command::Stop(args) => {
            let body = match args.mode() {
                StopMode::Force => json!({"gracePeriodSeconds": 0}),
                StopMode::Graceful {
                    grace_period_seconds: 0,
                } => json!({}),
                StopMode::Graceful {
                    grace_period_seconds,
                } => json!({ "gracePeriodSeconds": grace_period_seconds }),
            };
            (&args.name, "stop", body)
        }
        Command::Restart(args) => (&args.name, "restart", json!({})),
        Command::Apply(_) => return kubectl_instead("apply", "kubectl apply -f FILE".into()),
        Command::Get(_) | Command::List(_) => {
            return kubectl_instead("get", "kubectl get vm,vmi".into())
        }
        Command::Describe(args) => {
            return kubectl_instead("describe", format!("kubectl describe vm {}", args.name))
        }
        Command::Delete(args) => {
            return kubectl_instead("delete", format!("kubectl delete vm {}", args.name))
        }
        Command::Logs(args) => {
            return kubectl_instead(
                "logs",
                format!("kubectl logs -c compute -l ironvisor.io/vmi={}", args.name),
            )
        }
        Command::Pause(args) => {
            let message = connect(cli).await?.vmi_action(&args.name, "pause").await?;
            println!("{message}");
            return Ok(());
        }
        Command::Unpause(args) => {
            let message = connect(cli)
                .await?
                .vmi_action(&args.name, "unpause")
                .await?;
            println!("{message}");
            return Ok(());
        }
        Command::Console(args) => {
            let cluster = connect(cli).await?;
            let options = ConsoleOptions {
                timeout: args.timeout.map(Duration::from_secs),
                wait: Duration::from_secs(args.wait),
                interactive: console::interactive(),
            };
            cluster_console::run(&cluster, &args.name, options).await?;
            return Ok(());
        }
        Command::PortForward(args) => {
            let transport = crate::port_forward::Transport::Cluster(connect(cli).await?);
            crate::port_forward::run(&transport, args).await?;
            return Ok(());
        }
        Command::Ssh(_) | Command::Scp(_) => {
            return crate::ssh::exec_client(cli).map_or(Ok(()), |error| Err(error.into()))
        }
        Command::Completion(_) => return Ok(()),
    };
    let message = connect(cli).await?.vm_action(name, action, body).await?;
    println!("{message}");
    Ok(())
}

async fn connect(cli: &Cli) -> Result<Cluster, CommandError> {
    Ok(Cluster::connect(&ClusterOptions {
        kubeconfig: cli.kubeconfig.clone(),
        context: cli.context.clone(),
        namespace: cli.namespace.clone(),
    })
    .await?)
}
