//! A test double of `ironvisor-launcher` for the node agent's integration tests. It takes
//! the same `--config FILE`, serves the real control API (`ironvisor-launcher-api`) and a
//! console socket, and exits with the launcher's exit codes — but runs no guest.
//!
//! Behaviour is chosen per VM through the kernel command line (`kernelArgs` in the VM):
//!
//! - `fake.boot_ms=N`: report `Starting` for N ms before `Running` (default 0);
//! - `fake.exit=C fake.after_ms=N`: exit with code C after N ms of running;
//! - `fake.mode=fail`: fail at once (exit 1) with a message on stderr.
//! - `fake.pinning=none`: report no vCPU pinning even when the configuration asks for some
//!   (by default it reports the configuration's `vcpu_affinity` as applied).
//!
//! Typing on the console: `poweroff` exits 0, `crash` exits 4, `reboot` exits 3, `fail`
//! exits 1; anything else is echoed. A graceful shutdown (API or SIGTERM) exits 5, a forced
//! one 6.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ironvisor_launcher_api::config::LaunchConfig;
use ironvisor_launcher_api::control::{
    ControlError, DeviceStatus, ShutdownMode, VmControl, VmState, VmStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

struct Fake {
    name: String,
    vcpus: u32,
    memory_mib: u64,
    started: Instant,
    boot: Duration,
    paused: Mutex<bool>,
    exit: mpsc::UnboundedSender<i32>,
    devices: Vec<DeviceStatus>,
    vcpu_affinity: Vec<Vec<u32>>,
}

impl VmControl for Fake {
    fn status(&self) -> VmStatus {
        let paused = self.paused.lock().map(|p| *p).unwrap_or(false);
        let state = if self.started.elapsed() < self.boot {
            VmState::Starting
        } else if paused {
            VmState::Paused
        } else {
            VmState::Running
        };
        VmStatus {
            name: self.name.clone(),
            state,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            devices: self.devices.clone(),
            uptime: self.started.elapsed(),
            backend: "fake".into(),
            vcpu_affinity: self.vcpu_affinity.clone(),
        }
    }

    fn pause(&self) -> Result<(), ControlError> {
        let mut paused = self
            .paused
            .lock()
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        if *paused {
            return Err(ControlError::InvalidState(VmState::Paused));
        }
        *paused = true;
        Ok(())
    }

    fn resume(&self) -> Result<(), ControlError> {
        let mut paused = self
            .paused
            .lock()
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        if !*paused {
            return Err(ControlError::InvalidState(VmState::Running));
        }
        *paused = false;
        Ok(())
    }

    fn shutdown(&self, mode: ShutdownMode) -> Result<(), ControlError> {
        let code = match mode {
            ShutdownMode::Graceful { .. } => 5,
            ShutdownMode::Forced => 6,
        };
        let _ = self.exit.send(code);
        Ok(())
    }
}

fn options(cmdline: &str) -> HashMap<String, String> {
    cmdline
        .split_whitespace()
        .filter_map(|arg| arg.strip_prefix("fake."))
        .filter_map(|arg| arg.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let config_path = match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(path)) => PathBuf::from(path),
        _ => {
            eprintln!("fake-launcher: usage: fake-launcher --config FILE");
            std::process::exit(1);
        }
    };
    let config = match LaunchConfig::from_json_file(&config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("fake-launcher: {error}");
            std::process::exit(1);
        }
    };
    // A firmware boot (no kernel) behaves as a kernel without fake.* options.
    let cmdline = config
        .kernel
        .as_ref()
        .map(|kernel| kernel.cmdline.clone())
        .unwrap_or_default();
    let opts = options(&cmdline);
    if opts.get("mode").map(String::as_str) == Some("fail") {
        eprintln!(
            "fake-launcher: error: VM {} failed to build (fake.mode=fail)",
            config.name
        );
        std::process::exit(1);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run(config, opts));
    std::process::exit(code);
}

async fn run(config: LaunchConfig, opts: HashMap<String, String>) -> i32 {
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<i32>();
    let devices = config
        .nets
        .iter()
        .map(|n| DeviceStatus {
            kind: "virtio-net".into(),
            id: n.id.clone(),
            mac: n.mac.clone(),
            backend: n.tap.clone(),
            read_only: false,
        })
        .chain(config.disks.iter().map(|d| DeviceStatus {
            kind: "virtio-blk".into(),
            id: d.id.clone(),
            mac: None,
            backend: d.path.display().to_string(),
            read_only: d.read_only,
        }))
        .collect();
    let boot = Duration::from_millis(
        opts.get("boot_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let fake = Arc::new(Fake {
        name: config.name.clone(),
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        started: Instant::now(),
        boot,
        paused: Mutex::new(false),
        exit: exit_tx.clone(),
        devices,
        vcpu_affinity: if opts.get("pinning").is_some_and(|p| p == "none") {
            Vec::new()
        } else {
            config.vcpu_affinity.clone()
        },
    });
    println!(
        "fake-launcher: VM {} with {} vCPUs, {} MiB, cmdline {:?}",
        config.name,
        config.vcpus,
        config.memory_mib,
        config
            .kernel
            .as_ref()
            .map(|kernel| kernel.cmdline.as_str())
            .unwrap_or_default()
    );
    let _ = std::io::stdout().flush();

    if let Some(socket) = &config.console.socket {
        let _ = std::fs::remove_file(socket);
        match UnixListener::bind(socket) {
            Ok(listener) => {
                let tx = exit_tx.clone();
                let name = config.name.clone();
                tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        let tx = tx.clone();
                        let name = name.clone();
                        tokio::spawn(async move {
                            let (mut reader, mut writer) = stream.into_split();
                            let banner =
                                format!("[    0.000000] Linux version fake\r\n{name} login: ");
                            if writer.write_all(banner.as_bytes()).await.is_err() {
                                return;
                            }
                            let mut line = Vec::new();
                            let mut buffer = [0u8; 1024];
                            loop {
                                let n = match reader.read(&mut buffer).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                if writer.write_all(&buffer[..n]).await.is_err() {
                                    return;
                                }
                                for &byte in &buffer[..n] {
                                    if byte == b'\n' || byte == b'\r' {
                                        let command =
                                            String::from_utf8_lossy(&line).trim().to_string();
                                        line.clear();
                                        let code = match command.as_str() {
                                            "poweroff" => Some(0),
                                            "fail" => Some(1),
                                            "reboot" => Some(3),
                                            "crash" => Some(4),
                                            _ => None,
                                        };
                                        if let Some(code) = code {
                                            let _ = tx.send(code);
                                        }
                                    } else {
                                        line.push(byte);
                                    }
                                }
                            }
                        });
                    }
                });
            }
            Err(error) => {
                eprintln!(
                    "fake-launcher: cannot bind console {}: {error}",
                    socket.display()
                );
                return 1;
            }
        }
    }

    if let (Some(code), Some(after)) = (
        opts.get("exit").and_then(|v| v.parse::<i32>().ok()),
        opts.get("after_ms").and_then(|v| v.parse::<u64>().ok()),
    ) {
        let tx = exit_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(boot + Duration::from_millis(after)).await;
            let _ = tx.send(code);
        });
    }

    let tx = exit_tx.clone();
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
            let _ = tx.send(5);
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api = match &config.api_socket {
        Some(socket) => {
            let bound = match ironvisor_launcher_api::bind(socket).await {
                Ok(bound) => bound,
                Err(error) => {
                    eprintln!("fake-launcher: {error}");
                    return 1;
                }
            };
            let control: Arc<dyn VmControl> = fake.clone();
            Some(tokio::spawn(async move {
                let _ = bound
                    .serve(control, async {
                        let _ = stop_rx.await;
                    })
                    .await;
            }))
        }
        None => None,
    };
    let code = exit_rx.recv().await.unwrap_or(1);
    println!("fake-launcher: VM {} exits with code {code}", config.name);
    let _ = std::io::stdout().flush();
    let _ = stop_tx.send(());
    if let Some(api) = api {
        let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
    }
    if let Some(socket) = &config.console.socket {
        let _ = std::fs::remove_file(socket);
    }
    code
}
