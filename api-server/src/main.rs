//! `ironvisor-apiserver`: serves Ironvisor's admission webhooks and subresource API (see
//! the library docs).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ironvisor_apiserver::ca_bundle::BundleTargets;
use ironvisor_apiserver::certs::Lifetimes;
use ironvisor_apiserver::run::{run, RunConfig};

#[derive(Parser)]
#[command(
    name = "ironvisor-apiserver",
    version,
    about = "Ironvisor api-server: admission webhooks and the subresources.ironvisor.io API"
)]
struct Cli {
    /// Where HTTPS listens.
    #[arg(long, env = "IRONVISOR_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// The api-server's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ironvisor-system")]
    namespace: String,
    /// Name of the Service in front of the api-server.
    #[arg(long, default_value = "ironvisor-apiserver")]
    service_name: String,
    /// Name of the Secret holding the CA and the serving certificate.
    #[arg(long, default_value = "ironvisor-apiserver-certs")]
    secret_name: String,
    /// ValidatingWebhookConfigurations to inject the CA bundle into.
    #[arg(long, value_delimiter = ',', default_value = "ironvisor-validator")]
    validating_webhook: Vec<String>,
    /// MutatingWebhookConfigurations to inject the CA bundle into.
    #[arg(long, value_delimiter = ',', default_value = "ironvisor-mutator")]
    mutating_webhook: Vec<String>,
    /// APIServices to inject the CA bundle into.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "v1alpha1.subresources.ironvisor.io"
    )]
    api_service: Vec<String>,
    /// Lifetime of the serving certificate, in hours.
    #[arg(long, default_value_t = 365 * 24)]
    serving_cert_hours: u64,
    /// Lifetime of the CA, in hours.
    #[arg(long, default_value_t = 5 * 365 * 24)]
    ca_hours: u64,
    /// How often certificates and CA bundles are checked, in seconds.
    #[arg(long, default_value_t = 60)]
    refresh_seconds: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IRONVISOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = RunConfig {
        listen: cli.listen,
        namespace: cli.namespace,
        service_name: cli.service_name,
        secret_name: cli.secret_name,
        targets: BundleTargets {
            validating: cli.validating_webhook,
            mutating: cli.mutating_webhook,
            api_services: cli.api_service,
        },
        lifetimes: Lifetimes {
            authority: Duration::from_secs(cli.ca_hours * 3600),
            serving: Duration::from_secs(cli.serving_cert_hours * 3600),
            ..Lifetimes::default()
        },
        refresh: Duration::from_secs(cli.refresh_seconds.max(1)),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ironvisor-apiserver: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ironvisor-apiserver: {error}");
            ExitCode::FAILURE
        }
    }
}
