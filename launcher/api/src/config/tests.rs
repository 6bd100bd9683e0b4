//! Unit tests of the configuration: JSON and validation (the flags: `cli_tests`).

use super::*;

const GIB: u64 = 1024 * MIB;

pub(super) fn limits() -> HostLimits {
    HostLimits {
        available_memory_bytes: 8 * GIB,
        max_vcpus: 8,
    }
}

/// A directory with a kernel, an initrd and a 1 MiB disk image, and a valid config
/// using them.
pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
    pub(super) config: LaunchConfig,
}

impl Fixture {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF kernel").unwrap();
        let initrd = dir.path().join("initrd.img");
        std::fs::write(&initrd, b"initrd").unwrap();
        let disk = dir.path().join("root.img");
        std::fs::write(&disk, vec![0u8; 1024 * 1024]).unwrap();
        let config = LaunchConfig {
            name: "vm-1".into(),
            vcpus: 2,
            vcpu_affinity: Vec::new(),
            memory_mib: 512,
            kernel: Some(KernelConfig {
                path: kernel,
                initrd: Some(initrd),
                cmdline: DEFAULT_CMDLINE.to_string(),
            }),
            firmware: None,
            disks: vec![DiskConfig {
                id: "rootdisk".into(),
                path: disk,
                format: ImageFormat::Raw,
                read_only: false,
                serial: None,
                rate_limit: None,
            }],
            nets: vec![NetConfig {
                id: "net0".into(),
                tap: "tap-vm1-0".into(),
                mac: None,
                rate_limit: None,
            }],
            console: ConsoleConfig {
                socket: Some(dir.path().join("console.sock")),
                ..ConsoleConfig::default()
            },
            agent_socket: Some(dir.path().join("agent.sock")),
            api_socket: Some(dir.path().join("api.sock")),
            shutdown_timeout_secs: 30,
            backend: BackendKind::Kvm,
            system: SystemIdentity::default(),
            rng: Some(RngConfig::default()),
            cpu_topology: None,
            clock: ClockConfig::default(),
        };
        Self { dir, config }
    }

    /// The direct-boot kernel of the fixture's configuration.
    fn kernel(&mut self) -> &mut KernelConfig {
        self.config.kernel.as_mut().unwrap()
    }

    fn file(&self, name: &str, len: usize) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        path
    }
}

/// Validation issues of `config`, or none.
fn issues(config: &LaunchConfig) -> Vec<ConfigIssue> {
    match config.validate(&limits()) {
        Ok(()) => Vec::new(),
        Err(ConfigError::Invalid(issues)) => issues,
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

/// Asserts exactly one issue, on `field`, whose message contains every `needle`.
fn assert_one_issue(config: &LaunchConfig, field: &str, needles: &[&str]) {
    let found = issues(config);
    assert_eq!(found.len(), 1, "expected one issue, got {found:#?}");
    assert_eq!(found[0].field, field, "{found:#?}");
    for needle in needles {
        assert!(
            found[0].message.contains(needle),
            "{:?} does not contain {needle:?}",
            found[0].message
        );
    }
}

pub(super) fn write_json(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("vm.json");
    std::fs::write(&path, text).unwrap();
    path
}

// ---- JSON -------------------------------------------------------------------

#[test]
fn minimal_json_gets_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_json(
        dir.path(),
        r#"{"name": "vm", "kernel": {"path": "/boot/vmlinux"}}"#,
    );
    let config = LaunchConfig::from_json_file(&path).unwrap();
    assert_eq!(config.name, "vm");
    assert_eq!(config.vcpus, 1);
    assert_eq!(config.memory_mib, 256);
    let kernel = config.kernel.as_ref().unwrap();
    assert_eq!(kernel.cmdline, "console=ttyS0 reboot=k panic=1");
    assert_eq!(kernel.initrd, None);
    assert!(config.disks.is_empty() && config.nets.is_empty());
    assert_eq!(config.console, ConsoleConfig::default());
    assert_eq!(config.shutdown_timeout_secs, 30);
    assert_eq!(config.backend, BackendKind::Kvm);
    assert_eq!(config.rng, None);
}

#[test]
fn json_round_trips_through_to_json() {
    let fx = Fixture::new();
    let text = fx.config.to_json().unwrap();
    let back = LaunchConfig::from_json_str(&text, Path::new("x.json")).unwrap();
    assert_eq!(back, fx.config);
}

#[test]
fn unknown_field_is_refused_naming_it_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_json(
        dir.path(),
        "{\n  \"name\": \"vm\",\n  \"kernel\": {\"path\": \"/k\"},\n  \"memory\": 512\n}",
    );
    let err = LaunchConfig::from_json_file(&path).unwrap_err();
    match &err {
        ConfigError::Parse {
            path: p,
            line,
            column,
            message,
        } => {
            assert_eq!(p, &path);
            assert_eq!(*line, 4);
            assert!(*column > 0);
            assert!(message.contains("unknown field `memory`"), "{message}");
            assert!(!message.contains(" at line "), "{message}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("line 4"), "{text}");
}

#[test]
fn unknown_nested_field_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_json(
        dir.path(),
        r#"{"name": "vm", "kernel": {"path": "/k"},
            "disks": [{"id": "d", "path": "/d", "rw": true}]}"#,
    );
    let err = LaunchConfig::from_json_file(&path).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Parse { line: 2, message, .. } if message.contains("unknown field `rw`")),
        "{err:?}"
    );
}

#[test]
fn syntax_and_type_errors_carry_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_json(dir.path(), "{\"name\": \"vm\",\n\"vcpus\": \"two\"}");
    let err = LaunchConfig::from_json_file(&path).unwrap_err();
    assert!(
        matches!(&err, ConfigError::Parse { line: 2, message, .. } if message.contains("invalid type")),
        "{err:?}"
    );
    let path = write_json(dir.path(), "{\"name\": \"vm\",,}");
    let err = LaunchConfig::from_json_file(&path).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Parse {
                line: 1,
                column: 15,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn missing_required_field_is_reported() {
    let err = LaunchConfig::from_json_str(r#"{"kernel": {"path": "/k"}}"#, Path::new("vm.json"))
        .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Parse { message, .. } if message.contains("missing field `name`")),
        "{err:?}"
    );
}

#[test]
fn a_config_without_kernel_or_firmware_has_nothing_to_boot() {
    let config = LaunchConfig::from_json_str(r#"{"name": "vm"}"#, Path::new("vm.json")).unwrap();
    let problems = issues(&config);
    assert!(
        problems
            .iter()
            .any(|issue| issue.field == "kernel" && issue.message.contains("nothing to boot")),
        "{problems:?}"
    );
}

#[test]
fn unreadable_config_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.json");
    let err = LaunchConfig::from_json_file(&path).unwrap_err();
    assert!(matches!(&err, ConfigError::Read { path: p, .. } if p == &path));
    assert!(err.to_string().contains(&path.display().to_string()));
}

// ---- validation -------------------------------------------------------------

#[test]
fn fixture_config_is_valid() {
    let fx = Fixture::new();
    assert_eq!(issues(&fx.config), Vec::new());
}

#[test]
fn name_must_be_dns_1123() {
    let mut fx = Fixture::new();
    for good in ["a", "vm-1", "ns.vm-1", "0abc"] {
        fx.config.name = good.into();
        assert_eq!(issues(&fx.config), Vec::new(), "{good}");
    }
    let cases: [(String, &str); 7] = [
        (String::new(), "must not be empty"),
        ("VM1".into(), "contains 'V'"),
        ("vm_1".into(), "contains '_'"),
        ("-vm".into(), "start and end"),
        ("vm-".into(), "start and end"),
        ("a..b".into(), "empty part"),
        ("x".repeat(64), "at most 63"),
    ];
    for (name, needle) in cases {
        fx.config.name = name;
        assert_one_issue(&fx.config, "name", &[needle]);
    }
    fx.config.name = ["a"; 130].join(".");
    assert_one_issue(&fx.config, "name", &["at most 253"]);
}

#[test]
fn vcpus_must_be_in_range() {
    let mut fx = Fixture::new();
    fx.config.vcpus = 0;
    assert_one_issue(&fx.config, "vcpus", &["at least 1"]);
    fx.config.vcpus = 8;
    assert_eq!(issues(&fx.config), Vec::new());
    fx.config.vcpus = 9;
    assert_one_issue(&fx.config, "vcpus", &["is 9", "at most 8"]);
    let big_host = HostLimits {
        max_vcpus: 1000,
        ..limits()
    };
    fx.config.vcpus = MAX_VCPUS;
    assert!(fx.config.validate(&big_host).is_ok());
    fx.config.vcpus = MAX_VCPUS + 1;
    let err = fx.config.validate(&big_host).unwrap_err().to_string();
    assert!(err.contains("at most 64"), "{err}");
}

#[test]
fn vcpu_affinity_needs_one_non_empty_list_per_vcpu() {
    let mut fx = Fixture::new();
    fx.config.vcpu_affinity = vec![vec![1], vec![0, 2]];
    assert_eq!(issues(&fx.config), Vec::new());
    fx.config.vcpu_affinity = vec![vec![1]];
    assert_one_issue(&fx.config, "vcpu_affinity", &["1 entries", "2 vCPUs"]);
    fx.config.vcpu_affinity = vec![vec![1], vec![]];
    assert_one_issue(&fx.config, "vcpu_affinity[1]", &["is empty"]);
    fx.config.vcpu_affinity = vec![vec![1], vec![4096]];
    assert_one_issue(&fx.config, "vcpu_affinity[1]", &["CPU 4096", "0 to 1023"]);
}

#[test]
fn vcpu_affinity_flags_build_the_table_and_bad_ones_are_named() {
    /// `ironvisor-launcher --name vm --kernel /k` followed by `extra`.
    fn parse(extra: &[&str]) -> Result<LaunchArgs, clap::Error> {
        let base = ["ironvisor-launcher", "--name", "vm", "--kernel", "/k"];
        LaunchArgs::try_parse_from(base.iter().chain(extra))
    }
    let pins = [
        "--vcpus",
        "2",
        "--vcpu-affinity",
        "1=2-3",
        "--vcpu-affinity",
        "0=1",
    ];
    assert_eq!(
        parse(&pins).unwrap().into_config().unwrap().vcpu_affinity,
        vec![vec![1], vec![2, 3]]
    );
    for (value, needle) in [
        ("1", "expected VCPU=CPUS"),
        ("x=1", "not a vCPU index"),
        ("0=3-1", "runs backwards"),
        ("0=", "empty"),
    ] {
        let err = parse(&["--vcpu-affinity", value]).unwrap_err().to_string();
        assert!(err.contains(needle), "{value}: {err}");
    }
    let twice = parse(&["--vcpu-affinity", "0=1", "--vcpu-affinity", "0=2"])
        .unwrap()
        .into_config()
        .unwrap_err()
        .to_string();
    assert!(twice.contains("pinned twice"), "{twice}");
}

#[test]
fn memory_must_be_positive_and_fit_the_host() {
    let mut fx = Fixture::new();
    fx.config.memory_mib = 0;
    assert_one_issue(&fx.config, "memory_mib", &["greater than 0"]);
    fx.config.memory_mib = 8 * 1024;
    assert_eq!(issues(&fx.config), Vec::new());
    fx.config.memory_mib = 8 * 1024 + 1;
    assert_one_issue(
        &fx.config,
        "memory_mib",
        &[
            "8193 MiB",
            "8590983168 bytes",
            "8589934592 bytes",
            "8192 MiB",
        ],
    );
    fx.config.memory_mib = u64::MAX;
    assert_one_issue(&fx.config, "memory_mib", &["more than 2^64 bytes"]);
}

#[test]
fn kernel_and_initrd_must_be_readable_regular_files() {
    let mut fx = Fixture::new();
    let missing = fx.dir.path().join("nope");
    fx.kernel().path = missing.clone();
    assert_one_issue(
        &fx.config,
        "kernel.path",
        &[&missing.display().to_string(), "does not exist"],
    );
    fx.kernel().path = fx.dir.path().to_path_buf();
    assert_one_issue(
        &fx.config,
        "kernel.path",
        &["a directory", "not a regular file"],
    );
    fx.kernel().path = PathBuf::new();
    assert_one_issue(&fx.config, "kernel.path", &["must not be empty"]);
    fx.kernel().path = fx.file("empty-kernel", 0);
    assert_one_issue(&fx.config, "kernel.path", &["is empty"]);

    let mut fx = Fixture::new();
    fx.kernel().initrd = Some(missing.clone());
    assert_one_issue(&fx.config, "kernel.initrd", &["nope", "does not exist"]);
    fx.kernel().initrd = Some(PathBuf::from("/dev/null"));
    assert_one_issue(&fx.config, "kernel.initrd", &["a special file"]);
}

#[test]
fn cmdline_is_limited_to_4095_bytes_without_nul() {
    let mut fx = Fixture::new();
    fx.kernel().cmdline = "x".repeat(4095);
    assert_eq!(issues(&fx.config), Vec::new());
    fx.kernel().cmdline = "x".repeat(4096);
    assert_one_issue(
        &fx.config,
        "kernel.cmdline",
        &["4096 bytes", "at most 4095"],
    );
    fx.kernel().cmdline = "console=ttyS0\0evil".into();
    assert_one_issue(&fx.config, "kernel.cmdline", &["NUL"]);
}

#[test]
fn disk_images_must_exist_and_be_whole_sectors() {
    let mut fx = Fixture::new();
    let missing = fx.dir.path().join("missing.img");
    fx.config.disks[0].path = missing;
    assert_one_issue(
        &fx.config,
        "disks[0].path",
        &["missing.img", "does not exist"],
    );
    fx.config.disks[0].path = fx.file("odd.img", 1000);
    assert_one_issue(
        &fx.config,
        "disks[0].path",
        &["odd.img", "1000 bytes", "multiple of 512"],
    );
    fx.config.disks[0].path = fx.file("empty.img", 0);
    assert_one_issue(&fx.config, "disks[0].path", &["is empty"]);
    fx.config.disks[0].path = fx.dir.path().to_path_buf();
    assert_one_issue(&fx.config, "disks[0].path", &["not a regular file"]);
    fx.config.disks[0].path = fx.file("ok.img", 4096);
    assert_eq!(issues(&fx.config), Vec::new());
}

#[test]
fn a_block_device_is_a_disk_image_sized_by_its_end() {
    // An unattached loop device: a block device of 0 bytes that opens without privilege
    // beyond root's and without touching any data.
    let device = std::fs::read_dir("/sys/class/block")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .find(|e| std::fs::read_to_string(e.path().join("size")).is_ok_and(|s| s.trim() == "0"))
        .map(|e| std::path::Path::new("/dev").join(e.file_name()))
        .expect("an unattached loop device");
    let mut fx = Fixture::new();
    fx.config.disks[0].path = device;
    fx.config.disks[0].read_only = true;
    // Taken as a disk (not "a special file"), and its size read: 0, so empty.
    assert_one_issue(&fx.config, "disks[0].path", &["loop", "is empty"]);
}

#[test]
fn an_image_is_shared_only_read_only() {
    let mut fx = Fixture::new();
    let mut second = fx.config.disks[0].clone();
    second.id = "data".into();
    fx.config.disks.push(second);
    assert_one_issue(&fx.config, "disks[1].path", &["disks[0]", "read-only"]);
    fx.config.disks[0].read_only = true;
    fx.config.disks[1].read_only = true;
    assert_eq!(issues(&fx.config), Vec::new());
}

#[test]
fn disk_serial_is_at_most_20_bytes() {
    let mut fx = Fixture::new();
    fx.config.disks[0].serial = Some("s".repeat(20));
    assert_eq!(issues(&fx.config), Vec::new());
    fx.config.disks[0].serial = Some("s".repeat(21));
    assert_one_issue(&fx.config, "disks[0].serial", &["21 bytes", "at most 20"]);
    // Without a serial the id serves as one.
    fx.config.disks[0].serial = None;
    fx.config.disks[0].id = "d".repeat(21);
    assert_one_issue(&fx.config, "disks[0].id", &["serial", "at most 20"]);
}

#[test]
fn device_ids_are_unique_across_disks_and_nets() {
    let mut fx = Fixture::new();
    fx.config.nets[0].id = "rootdisk".into();
    assert_one_issue(&fx.config, "nets[0].id", &["\"rootdisk\"", "disks[0]"]);
    fx.config.nets[0].id = String::new();
    assert_one_issue(&fx.config, "nets[0].id", &["must not be empty"]);
    fx.config.nets[0].id = "net 0".into();
    assert_one_issue(&fx.config, "nets[0].id", &["contains ' '"]);
}

#[test]
fn tap_names_fit_ifnamsiz_and_are_unique() {
    let mut fx = Fixture::new();
    fx.config.nets[0].tap = "t".repeat(15);
    assert_eq!(issues(&fx.config), Vec::new());
    fx.config.nets[0].tap = "t".repeat(16);
    assert_one_issue(&fx.config, "nets[0].tap", &["16 bytes", "at most 15"]);
    fx.config.nets[0].tap = "tap/0".into();
    assert_one_issue(&fx.config, "nets[0].tap", &["'/'"]);
    fx.config.nets[0].tap = String::new();
    assert_one_issue(&fx.config, "nets[0].tap", &["must not be empty"]);
    fx.config.nets[0].tap = "tap0".into();
    fx.config.nets.push(NetConfig {
        id: "net1".into(),
        tap: "tap0".into(),
        mac: None,
        rate_limit: None,
    });
    assert_one_issue(&fx.config, "nets[1].tap", &["nets[0]"]);
}

#[test]
fn macs_must_parse_be_unicast_and_unique() {
    let mut fx = Fixture::new();
    fx.config.nets[0].mac = Some("52:54:00:AB:cd:01".into());
    assert_eq!(issues(&fx.config), Vec::new());
    fx.config.nets[0].mac = Some("52:54:00:ab:cd".into());
    assert_one_issue(&fx.config, "nets[0].mac", &["expected 6 bytes"]);
    fx.config.nets[0].mac = Some("52:54:00:ab:cd:zz".into());
    assert_one_issue(&fx.config, "nets[0].mac", &["byte 6", "\"zz\""]);
    fx.config.nets[0].mac = Some("01:00:5e:00:00:01".into());
    assert_one_issue(&fx.config, "nets[0].mac", &["multicast"]);
    fx.config.nets[0].mac = Some("00:00:00:00:00:00".into());
    assert_one_issue(&fx.config, "nets[0].mac", &["all-zero"]);
    fx.config.nets[0].mac = Some("52:54:00:00:00:01".into());
    fx.config.nets.push(NetConfig {
        id: "net1".into(),
        tap: "tap1".into(),
        mac: Some("52:54:00:00:00:01".into()),
        rate_limit: None,
    });
    assert_one_issue(&fx.config, "nets[1].mac", &["52:54:00:00:00:01", "nets[0]"]);
}

#[test]
fn socket_directories_must_exist_and_sockets_differ() {
    let mut fx = Fixture::new();
    let bad = fx.dir.path().join("no-such-dir/api.sock");
    fx.config.api_socket = Some(bad);
    assert_one_issue(&fx.config, "api_socket", &["no-such-dir", "does not exist"]);
    fx.config.api_socket = Some(fx.dir.path().join("x".repeat(120)));
    assert_one_issue(&fx.config, "api_socket", &["at most 107"]);
    fx.config.api_socket = fx.config.console.socket.clone();
    assert_one_issue(&fx.config, "api_socket", &["console.socket"]);
    fx.config.api_socket = None;
    fx.config.agent_socket = Some(PathBuf::from("/nonexistent-dir/agent.sock"));
    assert_one_issue(&fx.config, "agent_socket", &["/nonexistent-dir"]);
    fx.config.agent_socket = None;
    fx.config.console.socket = Some(PathBuf::from("/nonexistent-dir/c.sock"));
    assert_one_issue(&fx.config, "console.socket", &["does not exist"]);
    // A bare file name lives in the current directory, which exists.
    fx.config.console.socket = Some(PathBuf::from("console.sock"));
    assert_eq!(issues(&fx.config), Vec::new());
}

#[test]
fn at_most_19_virtio_devices() {
    let mut fx = Fixture::new();
    fx.config.rng = None;
    // 1 disk + 1 net + agent = 3; add read-only disks sharing one image.
    let image = fx.file("shared.img", 512);
    let add = |config: &mut LaunchConfig, n: usize| {
        for _ in 0..n {
            config.disks.push(DiskConfig {
                id: format!("ro{}", config.disks.len()),
                path: image.clone(),
                format: ImageFormat::Raw,
                read_only: true,
                serial: None,
                rate_limit: None,
            });
        }
    };
    add(&mut fx.config, 16);
    assert_eq!(fx.config.disks.len() + fx.config.nets.len() + 1, 19);
    assert_eq!(issues(&fx.config), Vec::new());
    add(&mut fx.config, 1);
    assert_one_issue(
        &fx.config,
        "disks/nets/agent_socket",
        &[
            "20 virtio devices",
            "18 disks",
            "1 nets",
            "1 agent",
            "at most 19",
        ],
    );
    fx.config.agent_socket = None;
    assert_eq!(issues(&fx.config), Vec::new());
    // The rng device takes a pin too.
    fx.config.rng = Some(RngConfig::default());
    assert_one_issue(
        &fx.config,
        "disks/nets/agent_socket/rng",
        &["20 virtio devices", "0 agent console, 1 rng", "at most 19"],
    );
}

#[test]
fn console_ring_and_shutdown_timeout_are_checked() {
    let mut fx = Fixture::new();
    fx.config.console.ring_bytes = 0;
    assert_one_issue(&fx.config, "console.ring_bytes", &["greater than 0"]);
    fx.config.console.ring_bytes = MAX_CONSOLE_RING_BYTES + 1;
    assert_one_issue(&fx.config, "console.ring_bytes", &["at most"]);
    fx.config.console.ring_bytes = 4096;
    fx.config.shutdown_timeout_secs = 0;
    assert_one_issue(&fx.config, "shutdown_timeout_secs", &["at least 1"]);
}

#[test]
fn all_problems_are_reported_at_once() {
    let mut fx = Fixture::new();
    fx.config.name = String::new();
    fx.config.vcpus = 0;
    fx.config.memory_mib = 0;
    fx.config.nets[0].tap = "a-very-long-tap-name".into();
    let err = fx.config.validate(&limits()).unwrap_err();
    let ConfigError::Invalid(found) = &err else {
        panic!("unexpected error {err:?}");
    };
    let fields: Vec<&str> = found.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(fields, ["name", "vcpus", "memory_mib", "nets[0].tap"]);
    let text = err.to_string();
    assert!(
        text.starts_with("invalid launch configuration (4 problems):"),
        "{text}"
    );
    assert!(text.contains("\n  - vcpus: must be at least 1"), "{text}");
}

// ---- MACs -------------------------------------------------------------------

#[test]
fn parse_and_format_mac() {
    assert_eq!(
        parse_mac("52:54:00:0A:bC:ff").unwrap(),
        [0x52, 0x54, 0x00, 0x0a, 0xbc, 0xff]
    );
    assert_eq!(
        format_mac(&[0x52, 0x54, 0x00, 0x0a, 0xbc, 0xff]),
        "52:54:00:0a:bc:ff"
    );
    for bad in [
        "",
        "52:54:00:0a:bc",
        "52:54:00:0a:bc:ff:00",
        "52-54-00-0a-bc-ff",
        "52:54:00:0a:bc:f",
        "52:54:00:0a:bc:+f",
        "52:54:00:0a:bc:fff",
    ] {
        let err = parse_mac(bad).unwrap_err();
        assert!(
            matches!(&err, ConfigError::BadMac { value, .. } if value == bad),
            "{bad}: {err:?}"
        );
    }
}

#[test]
fn mac_for_uses_the_configured_mac() {
    let fx = Fixture::new();
    let net = NetConfig {
        id: "net0".into(),
        tap: "tap0".into(),
        mac: Some("02:00:00:00:00:07".into()),
        rate_limit: None,
    };
    assert_eq!(fx.config.mac_for(&net), [2, 0, 0, 0, 0, 7]);
}

#[test]
fn generated_macs_are_stable_local_unicast_and_distinct() {
    let fx = Fixture::new();
    let net = &fx.config.nets[0];
    let mac = fx.config.mac_for(net);
    assert_eq!(mac, fx.config.mac_for(net));
    assert_eq!(mac, generated_mac("vm-1", "net0"));
    assert_eq!(mac[..3], GENERATED_MAC_PREFIX);
    assert_eq!(mac[0] & 0x01, 0, "unicast");
    assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
    // Pinned: the MAC must not change between builds, or guests see new NICs.
    assert_eq!(format_mac(&mac), "52:54:00:5c:df:6b");
    assert_eq!(generated_mac("vm-1", "net0"), generated_mac("vm-1", "net0"));
    assert_ne!(generated_mac("vm-1", "net0"), generated_mac("vm-1", "net1"));
    assert_ne!(generated_mac("vm-1", "net0"), generated_mac("vm-2", "net0"));
    assert_ne!(generated_mac("ab", "c"), generated_mac("a", "bc"));
}
