//! `ironvisor-controller`: runs the Ironvisor cluster controller (see the library docs).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use ironvisor_controller::launcher_pod::LauncherPodSettings;
use ironvisor_controller::run::{run, RunConfig};
use ironvisor_crds::quantity;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[derive(Parser)]
#[command(
    name = "ironvisor-controller",
    version,
    about = "Ironvisor cluster controller: VirtualMachine -> VirtualMachineInstance -> launcher Pod"
)]
struct Cli {
    /// Where /metrics, /healthz and /readyz listen.
    #[arg(long, env = "IRONVISOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Namespace of the leader-election Lease [default: the pod's namespace].
    #[arg(long, env = "POD_NAMESPACE", default_value = "ironvisor-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "ironvisor-controller")]
    lease_name: String,
    /// This replica's identity in the Lease [default: the pod name].
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Image of the launcher pods.
    #[arg(
        long,
        env = "IRONVISOR_LAUNCHER_IMAGE",
        default_value = "docker.io/ironvisor/launcher:0.1.0"
    )]
    launcher_image: String,
    /// Pull policy of launcher, disk and kernel images (images are imported, not pulled).
    #[arg(long, default_value = "IfNotPresent")]
    image_pull_policy: String,
    /// Memory a launcher pod needs beyond guest memory (a Kubernetes quantity).
    #[arg(long, default_value = "256Mi")]
    launcher_memory_overhead: String,
    /// CPU request per shared vCPU, in millicores (KubeVirt's default ratio is 1/10).
    #[arg(long, default_value_t = 100)]
    cpu_request_millis_per_vcpu: u32,
    /// The node directory under which hostDisk volumes may be; without it hostDisks are
    /// refused (a hostPath gives the pod the node's files).
    #[arg(long, value_name = "DIR")]
    host_disk_root: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IRONVISOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Plain text in container logs; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let overhead = match quantity::to_bytes(&Quantity(cli.launcher_memory_overhead.clone())) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!(
                "ironvisor-controller: --launcher-memory-overhead {:?}: {error}",
                cli.launcher_memory_overhead
            );
            return ExitCode::from(2);
        }
    };
    let identity = cli.identity.unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "ironvisor-controller".into()),
            std::process::id()
        )
    });
    let config = RunConfig {
        http_addr: cli.http_addr,
        lease_namespace: cli.lease_namespace,
        lease_name: cli.lease_name,
        identity,
        pod_settings: LauncherPodSettings {
            launcher_image: cli.launcher_image,
            image_pull_policy: cli.image_pull_policy,
            memory_overhead_bytes: overhead,
            cpu_request_millis_per_vcpu: cli.cpu_request_millis_per_vcpu,
            host_disk_root: cli.host_disk_root,
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ironvisor-controller: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ironvisor-controller: {error}");
            ExitCode::FAILURE
        }
    }
}
