//! `ironvisor-handler cluster`: the node agent in cluster mode (the handler DaemonSet).
//! Probes the host once, labels the node with what it can run, then until SIGTERM serves
//! the kubelet device plugins (`devices.ironvisor.io/kvm`, `devices.ironvisor.io/tun`)
//! and follows the instances placed on this node.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use futures::FutureExt;
use ironvisor_handler::backend::{BackendMode, BackendSelector, BACKEND_ENV};
use ironvisor_handler_cluster::{capability, console, instances, node_link, pod_volumes};
use tracing::{error, info, warn};

/// Command line of `cluster`.
#[derive(Args)]
pub struct ClusterArgs {
    /// This node's name (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The kubelet's root directory (launcher pods' volumes are under <root>/pods).
    #[arg(long, value_name = "DIR", default_value = pod_volumes::DEFAULT_KUBELET_ROOT)]
    kubelet_root: PathBuf,
    /// The kubelet's CPU manager checkpoint, read to label the node
    /// `ironvisor.io/cpumanager` [default: <kubelet-root>/cpu_manager_state].
    #[arg(long, value_name = "FILE")]
    cpu_manager_state: Option<PathBuf>,
    /// The kubelet's device-plugin directory.
    #[arg(long, value_name = "DIR", default_value = ironvisor_deviceplugin::config::DEFAULT_PLUGIN_DIR)]
    device_plugin_dir: PathBuf,
    /// auto (probe the host), kvm, or qemu-tcg (report emulation only).
    #[arg(long, env = BACKEND_ENV, default_value = "auto")]
    backend: BackendMode,
    /// Ironvisor's namespace (where the node link Secret is).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ironvisor-system")]
    namespace: String,
}

/// Command line of `console`.
#[derive(Args)]
pub struct ConsoleArgs {
    /// The instance, as NAMESPACE/NAME.
    #[arg(value_name = "NAMESPACE/NAME")]
    instance: String,
    /// This node's name (the DaemonSet sets NODE_NAME).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The kubelet's root directory.
    #[arg(long, value_name = "DIR", default_value = pod_volumes::DEFAULT_KUBELET_ROOT)]
    kubelet_root: PathBuf,
}

/// Attaches to the console of an instance on this node until it closes, standard input
/// ends or Ctrl+] arrives.
pub fn console(args: ConsoleArgs) -> ExitCode {
    let runtime = match crate::async_runtime("console") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let client = match kube_client("console").await {
            Ok(client) => client,
            Err(code) => return code,
        };
        match console::attach(client, &args.node_name, &args.kubelet_root, &args.instance).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("ironvisor-handler console: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Runs the cluster agent until SIGTERM or SIGINT.
pub fn run(args: ClusterArgs) -> ExitCode {
    let selector = BackendSelector::probe(args.backend);
    let hardware_kvm = selector.hardware_problem().is_none();
    let runtime = match crate::async_runtime("cluster") {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let client = match kube_client("cluster").await {
            Ok(client) => client,
            Err(code) => return code,
        };
        let checkpoint = args
            .cpu_manager_state
            .clone()
            .unwrap_or_else(|| capability::cpu_manager_checkpoint(&args.kubelet_root));
        let capabilities = capability::Capabilities {
            hardware_kvm,
            static_cpu_manager: capability::static_cpu_manager(&checkpoint),
        };
        if let Err(error) =
            capability::label_node(client.clone(), &args.node_name, capabilities).await
        {
            eprintln!("ironvisor-handler cluster: {error}");
            return ExitCode::FAILURE;
        }
        let shutdown = shutdown_signal().shared();
        let context = Arc::new(instances::InstanceContext::new(
            client,
            args.node_name.clone(),
            args.kubelet_root.clone(),
        ));
        let plugins = ironvisor_deviceplugin::DevicePluginConfig {
            plugin_dir: args.device_plugin_dir.clone(),
            ..ironvisor_deviceplugin::DevicePluginConfig::default()
        };
        info!(node = %args.node_name, hardware_kvm, "node agent running in cluster mode");
        let link = node_link::serve(context.clone(), args.namespace.clone(), shutdown.clone());
        let agent = async {
            tokio::join!(
                ironvisor_deviceplugin::run_device_plugins(plugins, shutdown.clone()),
                instances::run(context.clone(), shutdown.clone()),
                instances::sweep_networks(context.clone(), shutdown.clone()),
                capability::keep_labelled(
                    context.client.clone(),
                    args.node_name.clone(),
                    capabilities,
                    checkpoint,
                    shutdown,
                ),
            )
        };
        // The link returns Ok only at shutdown; an error (the port taken) ends the agent.
        let plugins = tokio::select! {
            (plugins, (), (), ()) = agent => plugins,
            Err(error) = link => {
                eprintln!("ironvisor-handler cluster: {error}");
                return ExitCode::FAILURE;
            }
        };
        match plugins {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("ironvisor-handler cluster: device plugins: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// The in-cluster (or KUBECONFIG) client; on failure the error is printed, naming
/// `command`.
async fn kube_client(command: &str) -> Result<kube::Client, ExitCode> {
    kube::Client::try_default().await.map_err(|error| {
        eprintln!(
            "ironvisor-handler {command}: cannot configure the Kubernetes client \
             (in-cluster or KUBECONFIG): {error}"
        );
        ExitCode::FAILURE
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            warn!(%err, "cannot watch SIGTERM; only Ctrl-C stops the agent");
            if let Err(err) = tokio::signal::ctrl_c().await {
                error!(%err, "cannot watch Ctrl-C either");
            }
        }
    }
    info!("shutting down");
}
