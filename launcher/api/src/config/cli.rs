//! The launcher's command line: `--config FILE`, or one flag per field with the
//! `--disk`, `--net` and `--vcpu-affinity` specs parsed here.

use super::*;

/// Splits "k1=v1,k2=v2" into pairs; a bare key is returned with an empty value marker.
fn split_spec<'a>(
    flag: &'static str,
    spec: &'a str,
    allowed: &[&str],
) -> Result<HashMap<&'a str, Option<&'a str>>, ConfigError> {
    let bad = |message: String| ConfigError::BadSpec {
        flag,
        value: spec.to_string(),
        message,
    };
    let mut pairs = HashMap::new();
    for item in spec.split(',') {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        if key.is_empty() {
            return Err(bad("empty key (stray ',' or '=')".to_string()));
        }
        if !allowed.contains(&key) {
            return Err(bad(format!(
                "unknown key {key:?}; expected one of {}",
                allowed.join(", ")
            )));
        }
        if value == Some("") {
            return Err(bad(format!("{key}= has an empty value")));
        }
        if pairs.insert(key, value).is_some() {
            return Err(bad(format!("{key} is given twice")));
        }
    }
    Ok(pairs)
}

/// Takes an optional `key=value` from a split spec; a bare `key` is an error.
fn optional<'a>(
    flag: &'static str,
    spec: &str,
    pairs: &mut HashMap<&str, Option<&'a str>>,
    key: &str,
) -> Result<Option<&'a str>, ConfigError> {
    match pairs.remove(key) {
        None => Ok(None),
        Some(Some(value)) => Ok(Some(value)),
        Some(None) => Err(ConfigError::BadSpec {
            flag,
            value: spec.to_string(),
            message: format!("{key} needs a value ({key}=...)"),
        }),
    }
}

/// Takes a required `key=value` from a split spec.
fn required<'a>(
    flag: &'static str,
    spec: &str,
    pairs: &mut HashMap<&str, Option<&'a str>>,
    key: &str,
) -> Result<&'a str, ConfigError> {
    optional(flag, spec, pairs, key)?.ok_or_else(|| ConfigError::BadSpec {
        flag,
        value: spec.to_string(),
        message: format!("missing {key}=..."),
    })
}

/// Parses a `--disk` value:
/// `id=ID,path=PATH[,ro=on|off][,serial=S][,format=raw|qcow2][,bps=N][,ops=N]` (a bare
/// `ro` means `ro=on`; `bps` and `ops` limit bytes and requests per second). Paths cannot
/// contain ','.
pub fn parse_disk_spec(spec: &str) -> Result<DiskConfig, ConfigError> {
    const FLAG: &str = "disk";
    let mut pairs = split_spec(
        FLAG,
        spec,
        &["id", "path", "ro", "serial", "format", "bps", "ops"],
    )?;
    let id = required(FLAG, spec, &mut pairs, "id")?.to_string();
    let path = PathBuf::from(required(FLAG, spec, &mut pairs, "path")?);
    let read_only = match pairs.remove("ro") {
        None => false,
        Some(None | Some("on" | "true" | "yes" | "1")) => true,
        Some(Some("off" | "false" | "no" | "0")) => false,
        Some(Some(other)) => {
            return Err(ConfigError::BadSpec {
                flag: FLAG,
                value: spec.to_string(),
                message: format!("ro={other} is not one of on, off, true, false"),
            })
        }
    };
    let serial = optional(FLAG, spec, &mut pairs, "serial")?.map(str::to_string);
    let format = match optional(FLAG, spec, &mut pairs, "format")? {
        None | Some("raw") => ImageFormat::Raw,
        Some("qcow2") => ImageFormat::Qcow2,
        Some(other) => {
            return Err(ConfigError::BadSpec {
                flag: FLAG,
                value: spec.to_string(),
                message: format!("format={other} is not one of raw, qcow2"),
            })
        }
    };
    let rate_limit = rate_limit_of(FLAG, spec, &mut pairs)?;
    Ok(DiskConfig {
        id,
        path,
        format,
        read_only,
        serial,
        rate_limit,
    })
}

/// The `bps=N` and `ops=N` of a spec, as a rate limit (none when both are absent).
fn rate_limit_of(
    flag: &'static str,
    spec: &str,
    pairs: &mut HashMap<&str, Option<&str>>,
) -> Result<Option<RateLimitConfig>, ConfigError> {
    let mut rate = |key: &str| -> Result<Option<u64>, ConfigError> {
        optional(flag, spec, pairs, key)?
            .map(|text| {
                text.parse::<u64>().map_err(|_| ConfigError::BadSpec {
                    flag,
                    value: spec.to_string(),
                    message: format!("{key}={text} is not a whole number per second"),
                })
            })
            .transpose()
    };
    let bytes_per_second = rate("bps")?;
    let ops_per_second = rate("ops")?;
    Ok(
        (bytes_per_second.is_some() || ops_per_second.is_some()).then_some(RateLimitConfig {
            bytes_per_second,
            ops_per_second,
        }),
    )
}

/// Parses a `--net` value: `id=ID,tap=TAP[,mac=MAC][,bps=N][,ops=N]` (`bps` and `ops`
/// limit bytes and frames per second in each direction). The MAC is checked for syntax
/// here.
pub fn parse_net_spec(spec: &str) -> Result<NetConfig, ConfigError> {
    const FLAG: &str = "net";
    let mut pairs = split_spec(FLAG, spec, &["id", "tap", "mac", "bps", "ops"])?;
    let id = required(FLAG, spec, &mut pairs, "id")?.to_string();
    let tap = required(FLAG, spec, &mut pairs, "tap")?.to_string();
    let mac = optional(FLAG, spec, &mut pairs, "mac")?;
    if let Some(text) = mac {
        parse_mac(text).map_err(|e| ConfigError::BadSpec {
            flag: FLAG,
            value: spec.to_string(),
            message: e.to_string(),
        })?;
    }
    let rate_limit = rate_limit_of(FLAG, spec, &mut pairs)?;
    Ok(NetConfig {
        id,
        tap,
        mac: mac.map(str::to_string),
        rate_limit,
    })
}

/// Parses a `--vcpu-affinity` value: `VCPU=CPUS`, CPUS a CPU list ("1", "2-3,5").
pub fn parse_affinity_spec(spec: &str) -> Result<(u32, Vec<u32>), ConfigError> {
    let bad = |message: String| ConfigError::BadSpec {
        flag: "vcpu-affinity",
        value: spec.to_string(),
        message,
    };
    let (vcpu, cpus) = spec
        .split_once('=')
        .ok_or_else(|| bad("expected VCPU=CPUS, e.g. 0=1 or 1=2-3".into()))?;
    let vcpu = vcpu
        .trim()
        .parse::<u32>()
        .map_err(|_| bad(format!("{vcpu:?} is not a vCPU index")))?;
    let cpus = cpulist::parse(cpus).map_err(|e| bad(e.to_string()))?;
    Ok((vcpu, cpus))
}

/// Parses a `--cpu-topology` value, `sockets=S,cores=C,threads=T`; an omitted count is 1.
pub fn parse_topology_spec(spec: &str) -> Result<CpuTopologyConfig, ConfigError> {
    const FLAG: &str = "cpu-topology";
    let mut pairs = split_spec(FLAG, spec, &["sockets", "cores", "threads"])?;
    let mut count = |key: &str| -> Result<u32, ConfigError> {
        match optional(FLAG, spec, &mut pairs, key)? {
            None => Ok(1),
            Some(text) => text.parse::<u32>().map_err(|_| ConfigError::BadSpec {
                flag: FLAG,
                value: spec.to_string(),
                message: format!("{key}={text}: expected a whole number"),
            }),
        }
    };
    Ok(CpuTopologyConfig {
        sockets: count("sockets")?,
        cores: count("cores")?,
        threads: count("threads")?,
    })
}

/// The `vcpu_affinity` table of repeated `--vcpu-affinity` flags: entry `i` for vCPU
/// `i`, vCPUs without a flag left empty (which validation reports).
fn affinity_table(pins: &[(u32, Vec<u32>)]) -> Result<Vec<Vec<u32>>, ConfigError> {
    let mut table: Vec<Vec<u32>> = Vec::new();
    for (vcpu, cpus) in pins {
        let index = usize::try_from(*vcpu).unwrap_or(usize::MAX);
        if index >= MAX_VCPUS as usize {
            return Err(ConfigError::BadSpec {
                flag: "vcpu-affinity",
                value: format!("{vcpu}={}", cpulist::format(cpus)),
                message: format!("vCPU {vcpu} is out of range (at most {MAX_VCPUS} vCPUs)"),
            });
        }
        if table.len() <= index {
            table.resize(index + 1, Vec::new());
        }
        if !table[index].is_empty() {
            return Err(ConfigError::BadSpec {
                flag: "vcpu-affinity",
                value: format!("{vcpu}={}", cpulist::format(cpus)),
                message: format!("vCPU {vcpu} is pinned twice"),
            });
        }
        table[index].clone_from(cpus);
    }
    Ok(table)
}

/// clap value parser for `--vcpu-affinity`.
fn affinity_arg(spec: &str) -> Result<(u32, Vec<u32>), String> {
    parse_affinity_spec(spec).map_err(spec_message)
}

/// clap value parser for `--disk`: clap already names the flag and the value.
fn disk_arg(spec: &str) -> Result<DiskConfig, String> {
    parse_disk_spec(spec).map_err(spec_message)
}

/// clap value parser for `--cpu-topology`.
fn topology_arg(spec: &str) -> Result<CpuTopologyConfig, String> {
    parse_topology_spec(spec).map_err(spec_message)
}

/// clap value parser for `--net`.
fn net_arg(spec: &str) -> Result<NetConfig, String> {
    parse_net_spec(spec).map_err(spec_message)
}

fn spec_message(error: ConfigError) -> String {
    match error {
        ConfigError::BadSpec { message, .. } => message,
        other => other.to_string(),
    }
}

/// Ids of the flags that set configuration fields (all conflict with `--config`).
const CONFIG_FLAG_IDS: [&str; 19] = [
    "name",
    "kernel",
    "boot_disk",
    "firmware",
    "initrd",
    "cmdline",
    "vcpus",
    "vcpu_affinity",
    "memory_mib",
    "disks",
    "nets",
    "console_socket",
    "stdio",
    "agent_socket",
    "api_socket",
    "shutdown_timeout_secs",
    "rng_bytes_per_second",
    "cpu_topology",
    "rtc_offset_seconds",
];

/// Command line of the launcher: the configuration comes either from `--config FILE`
/// or from the other flags, never from both.
#[derive(Debug, Clone, Default, PartialEq, Parser)]
#[command(
    name = "ironvisor-launcher",
    version,
    about = "Runs one VM: a KVM microVMM with virtio-mmio devices and a gRPC control API"
)]
pub struct LaunchArgs {
    /// Read the whole configuration from this JSON file (exclusive with the other
    /// configuration flags).
    #[arg(long, value_name = "FILE", conflicts_with_all = CONFIG_FLAG_IDS)]
    pub config: Option<PathBuf>,
    /// VM name (DNS-1123: lowercase letters, digits, '-', '.').
    #[arg(long, required_unless_present = "config")]
    pub name: Option<String>,
    /// Kernel image (ELF vmlinux or bzImage).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present_any = ["config", "boot_disk"],
        conflicts_with = "boot_disk"
    )]
    pub kernel: Option<PathBuf>,
    /// Boot what the disk with this id boots by itself (its GRUB, BLS or extlinux
    /// configuration) instead of --kernel.
    #[arg(long, value_name = "ID")]
    pub boot_disk: Option<String>,
    /// The firmware the boot disk was made for [default: bios].
    #[arg(long, value_enum)]
    pub firmware: Option<FirmwareKind>,
    /// Initramfs image.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1"].
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Pin vCPU VCPU's thread to the host CPUs of a CPU list ("1", "2-3", "0,4");
    /// repeat once per vCPU.
    #[arg(long = "vcpu-affinity", value_name = "VCPU=CPUS", value_parser = affinity_arg)]
    pub vcpu_affinity: Vec<(u32, Vec<u32>)>,
    /// Guest memory in MiB [default: 256].
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// A virtio-blk disk; repeat for more.
    #[arg(long = "disk", value_name = "id=ID,path=PATH[,ro=on][,serial=S][,format=F][,bps=N][,ops=N]", value_parser = disk_arg)]
    pub disks: Vec<DiskConfig>,
    /// A virtio-net device on a tap; repeat for more.
    #[arg(long = "net", value_name = "id=ID,tap=TAP[,mac=MAC][,bps=N][,ops=N]", value_parser = net_arg)]
    pub nets: Vec<NetConfig>,
    /// Unix socket where serial console clients attach.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Copy the serial console to stdout and stdin to the guest.
    #[arg(long)]
    pub stdio: bool,
    /// Unix socket of the guest agent's virtio-console port.
    #[arg(long, value_name = "PATH")]
    pub agent_socket: Option<PathBuf>,
    /// Unix socket of the gRPC control API.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Grace period of a graceful shutdown before the VM is stopped hard [default: 30].
    #[arg(long, value_name = "SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// Give the guest a virtio-rng entropy device serving at most N bytes per second
    /// (1 MiB/s = 1048576 is the JSON form's default for `"rng": {}`).
    #[arg(long, value_name = "N")]
    pub rng_bytes_per_second: Option<u64>,
    /// Arrange the vCPUs into sockets, cores and threads (the guest's CPUID and ACPI
    /// topology); the product is the vCPU count, which --vcpus may repeat [default: every
    /// vCPU a core of one socket].
    #[arg(long, value_name = "sockets=S,cores=C,threads=T", value_parser = topology_arg)]
    pub cpu_topology: Option<CpuTopologyConfig>,
    /// Run the guest's real-time clock N seconds ahead of UTC (negative: behind)
    /// [default: 0, UTC].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub rtc_offset_seconds: Option<i64>,
    /// Print the resolved configuration as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl LaunchArgs {
    /// Builds the configuration: read from `--config`, or assembled from the flags with
    /// the defaults of the JSON form. Does not validate it (see
    /// [`LaunchConfig::validate`]); `--print-config` is left for the caller to act on.
    pub fn into_config(self) -> Result<LaunchConfig, ConfigError> {
        if let Some(path) = &self.config {
            let flags = self.config_flags_in_use();
            if !flags.is_empty() {
                return Err(ConfigError::ConfigWithFlags { flags });
            }
            return LaunchConfig::from_json_file(path);
        }
        let name = self
            .name
            .ok_or(ConfigError::MissingFlag { flag: "--name" })?;
        if self.firmware.is_some() && self.boot_disk.is_none() {
            return Err(ConfigError::FlagWithout {
                flag: "--firmware",
                needs: "--boot-disk",
            });
        }
        let firmware = self.boot_disk.map(|boot_disk| FirmwareConfig {
            kind: self.firmware.unwrap_or(FirmwareKind::Bios),
            boot_disk,
        });
        let kernel = match (self.kernel, &firmware) {
            (Some(path), _) => Some(KernelConfig {
                path,
                initrd: self.initrd,
                cmdline: self.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            }),
            (None, Some(_)) => {
                for (flag, given) in [
                    ("--initrd", self.initrd.is_some()),
                    ("--cmdline", self.cmdline.is_some()),
                ] {
                    if given {
                        return Err(ConfigError::FlagWithout {
                            flag,
                            needs: "--kernel",
                        });
                    }
                }
                None
            }
            (None, None) => return Err(ConfigError::MissingFlag { flag: "--kernel" }),
        };
        Ok(LaunchConfig {
            name,
            vcpus: self
                .vcpus
                .or(self.cpu_topology.map(|topology| topology.vcpus()))
                .unwrap_or_else(default_vcpus),
            vcpu_affinity: affinity_table(&self.vcpu_affinity)?,
            memory_mib: self.memory_mib.unwrap_or_else(default_memory_mib),
            kernel,
            firmware,
            disks: self.disks,
            nets: self.nets,
            console: ConsoleConfig {
                socket: self.console_socket,
                stdio: self.stdio,
                ..ConsoleConfig::default()
            },
            agent_socket: self.agent_socket,
            api_socket: self.api_socket,
            shutdown_timeout_secs: self
                .shutdown_timeout_secs
                .unwrap_or_else(default_shutdown_timeout_secs),
            backend: BackendKind::default(),
            system: SystemIdentity::default(),
            rng: self.rng_bytes_per_second.map(RngConfig::with_rate),
            cpu_topology: self.cpu_topology,
            clock: ClockConfig {
                rtc_offset_seconds: self.rtc_offset_seconds.unwrap_or(0),
            },
        })
    }

    /// The configuration flags that are set, as written on the command line.
    fn config_flags_in_use(&self) -> Vec<&'static str> {
        let set = [
            ("--name", self.name.is_some()),
            ("--kernel", self.kernel.is_some()),
            ("--boot-disk", self.boot_disk.is_some()),
            ("--firmware", self.firmware.is_some()),
            ("--initrd", self.initrd.is_some()),
            ("--cmdline", self.cmdline.is_some()),
            ("--vcpus", self.vcpus.is_some()),
            ("--vcpu-affinity", !self.vcpu_affinity.is_empty()),
            ("--memory-mib", self.memory_mib.is_some()),
            ("--disk", !self.disks.is_empty()),
            ("--net", !self.nets.is_empty()),
            ("--console-socket", self.console_socket.is_some()),
            ("--stdio", self.stdio),
            ("--agent-socket", self.agent_socket.is_some()),
            ("--api-socket", self.api_socket.is_some()),
            (
                "--shutdown-timeout-secs",
                self.shutdown_timeout_secs.is_some(),
            ),
            (
                "--rng-bytes-per-second",
                self.rng_bytes_per_second.is_some(),
            ),
            ("--cpu-topology", self.cpu_topology.is_some()),
            ("--rtc-offset-seconds", self.rtc_offset_seconds.is_some()),
        ];
        set.into_iter()
            .filter_map(|(flag, on)| on.then_some(flag))
            .collect()
    }
}
