//! Unit tests of the launcher's flags: `--disk`, `--net` and `--vcpu-affinity` specs, and
//! the configuration built from flags.

use super::tests::{write_json, Fixture};
use super::*;

// ---- --disk / --net -----------------------------------------------------------

#[test]
fn disk_spec_parses() {
    assert_eq!(
        parse_disk_spec("id=root,path=/img/root.raw").unwrap(),
        DiskConfig {
            id: "root".into(),
            path: "/img/root.raw".into(),
            format: ImageFormat::Raw,
            read_only: false,
            serial: None,
            rate_limit: None,
        }
    );
    assert_eq!(
        parse_disk_spec("path=/d.img,serial=SN1,ro=on,id=d").unwrap(),
        DiskConfig {
            id: "d".into(),
            path: "/d.img".into(),
            format: ImageFormat::Raw,
            read_only: true,
            serial: Some("SN1".into()),
            rate_limit: None,
        }
    );
    for (spec, ro) in [
        ("id=d,path=/p,ro", true),
        ("id=d,path=/p,ro=true", true),
        ("id=d,path=/p,ro=off", false),
        ("id=d,path=/p,ro=false", false),
    ] {
        assert_eq!(parse_disk_spec(spec).unwrap().read_only, ro, "{spec}");
    }
}

#[test]
fn bad_disk_specs_say_why() {
    let cases = [
        ("path=/p", "missing id="),
        ("id=d", "missing path="),
        ("id=d,path=/p,size=1G", "unknown key \"size\""),
        ("id=d,id=e,path=/p", "id is given twice"),
        ("id=,path=/p", "id= has an empty value"),
        ("id=d,path=/p,ro=maybe", "ro=maybe"),
        ("id=d,path=/p,serial", "serial needs a value"),
        ("id=d,,path=/p", "empty key"),
        ("id,path=/p", "id needs a value"),
    ];
    for (spec, needle) in cases {
        let err = parse_disk_spec(spec).unwrap_err();
        match &err {
            ConfigError::BadSpec {
                flag,
                value,
                message,
            } => {
                assert_eq!(*flag, "disk");
                assert_eq!(value, spec);
                assert!(message.contains(needle), "{spec}: {message}");
            }
            other => panic!("{spec}: unexpected error {other:?}"),
        }
        assert!(err.to_string().starts_with("invalid --disk value"));
    }
}

#[test]
fn net_spec_parses() {
    assert_eq!(
        parse_net_spec("id=net0,tap=tap0").unwrap(),
        NetConfig {
            id: "net0".into(),
            tap: "tap0".into(),
            mac: None,
            rate_limit: None,
        }
    );
    assert_eq!(
        parse_net_spec("id=net0,tap=tap0,mac=52:54:00:01:02:03")
            .unwrap()
            .mac
            .as_deref(),
        Some("52:54:00:01:02:03")
    );
    let cases = [
        ("tap=tap0", "missing id="),
        ("id=n", "missing tap="),
        ("id=n,tap=t,mac=52:54", "expected 6 bytes"),
        ("id=n,tap=t,model=e1000", "unknown key"),
    ];
    for (spec, needle) in cases {
        let err = parse_net_spec(spec).unwrap_err();
        assert!(
            matches!(&err, ConfigError::BadSpec { flag: "net", message, .. } if message.contains(needle)),
            "{spec}: {err:?}"
        );
    }
}

// ---- command line -------------------------------------------------------------

fn parse_args(args: &[&str]) -> Result<LaunchArgs, clap::Error> {
    LaunchArgs::try_parse_from(std::iter::once("ironvisor-launcher").chain(args.iter().copied()))
}

#[test]
fn flags_build_a_config() {
    let args = parse_args(&[
        "--name",
        "vm",
        "--kernel",
        "/k",
        "--initrd",
        "/i",
        "--cmdline",
        "console=ttyS0 quiet",
        "--vcpus",
        "4",
        "--memory-mib",
        "2048",
        "--disk",
        "id=root,path=/r.img",
        "--disk",
        "id=data,path=/d.img,ro=on,serial=D1",
        "--net",
        "id=net0,tap=tap0,mac=52:54:00:00:00:01",
        "--console-socket",
        "/run/c.sock",
        "--stdio",
        "--agent-socket",
        "/run/a.sock",
        "--api-socket",
        "/run/api.sock",
        "--shutdown-timeout-secs",
        "5",
        "--rng-bytes-per-second",
        "65536",
        "--cpu-topology",
        "sockets=2,threads=2",
        "--rtc-offset-seconds",
        "-3600",
    ])
    .unwrap();
    assert!(!args.print_config);
    let config = args.into_config().unwrap();
    let expected = LaunchConfig {
        name: "vm".into(),
        vcpus: 4,
        vcpu_affinity: Vec::new(),
        memory_mib: 2048,
        kernel: Some(KernelConfig {
            path: "/k".into(),
            initrd: Some("/i".into()),
            cmdline: "console=ttyS0 quiet".into(),
        }),
        firmware: None,
        disks: vec![
            DiskConfig {
                id: "root".into(),
                path: "/r.img".into(),
                format: ImageFormat::Raw,
                read_only: false,
                serial: None,
                rate_limit: None,
            },
            DiskConfig {
                id: "data".into(),
                path: "/d.img".into(),
                format: ImageFormat::Raw,
                read_only: true,
                serial: Some("D1".into()),
                rate_limit: None,
            },
        ],
        nets: vec![NetConfig {
            id: "net0".into(),
            tap: "tap0".into(),
            mac: Some("52:54:00:00:00:01".into()),
            rate_limit: None,
        }],
        console: ConsoleConfig {
            socket: Some("/run/c.sock".into()),
            ring_bytes: default_ring_bytes(),
            stdio: true,
        },
        agent_socket: Some("/run/a.sock".into()),
        api_socket: Some("/run/api.sock".into()),
        shutdown_timeout_secs: 5,
        backend: BackendKind::Kvm,
        system: SystemIdentity::default(),
        rng: Some(RngConfig::with_rate(65536)),
        cpu_topology: Some(CpuTopologyConfig {
            sockets: 2,
            cores: 1,
            threads: 2,
        }),
        clock: ClockConfig {
            rtc_offset_seconds: -3600,
        },
    };
    assert_eq!(config, expected);
}

#[test]
fn minimal_flags_get_the_json_defaults() {
    let config = parse_args(&["--name", "vm", "--kernel", "/k"])
        .unwrap()
        .into_config()
        .unwrap();
    let json = LaunchConfig::from_json_str(
        r#"{"name": "vm", "kernel": {"path": "/k"}}"#,
        Path::new("inline"),
    )
    .unwrap();
    assert_eq!(config, json);
}

#[test]
fn config_file_is_read_and_print_config_may_accompany_it() {
    let fx = Fixture::new();
    let path = write_json(fx.dir.path(), &fx.config.to_json().unwrap());
    let path_text = path.to_str().unwrap();
    let args = parse_args(&["--config", path_text, "--print-config"]).unwrap();
    assert!(args.print_config);
    assert_eq!(args.into_config().unwrap(), fx.config);
}

#[test]
fn config_file_conflicts_with_config_flags() {
    for extra in [
        &["--name", "vm"][..],
        &["--stdio"][..],
        &["--disk", "id=d,path=/p"][..],
        &["--memory-mib", "1"][..],
        &["--rng-bytes-per-second", "1"][..],
    ] {
        let mut argv = vec!["--config", "/vm.json"];
        argv.extend_from_slice(extra);
        let err = parse_args(&argv).unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{extra:?}"
        );
    }
    // Built by hand (not through clap), into_config refuses it too.
    let args = LaunchArgs {
        config: Some("/vm.json".into()),
        name: Some("vm".into()),
        stdio: true,
        ..LaunchArgs::default()
    };
    let err = args.into_config().unwrap_err();
    assert!(
        matches!(&err, ConfigError::ConfigWithFlags { flags } if flags == &["--name", "--stdio"]),
        "{err:?}"
    );
}

#[test]
fn name_and_kernel_are_required_without_config() {
    let err = parse_args(&["--kernel", "/k"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    let err = parse_args(&["--name", "vm"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    let err = LaunchArgs {
        name: Some("vm".into()),
        ..LaunchArgs::default()
    }
    .into_config()
    .unwrap_err();
    assert!(matches!(err, ConfigError::MissingFlag { flag: "--kernel" }));
}

#[test]
fn boot_disk_flag_boots_a_disk_instead_of_a_kernel() {
    let config = parse_args(&[
        "--name",
        "vm",
        "--disk",
        "id=root,path=/d.qcow2,format=qcow2",
        "--boot-disk",
        "root",
        "--firmware",
        "efi",
    ])
    .unwrap()
    .into_config()
    .unwrap();
    assert_eq!(config.kernel, None);
    assert_eq!(
        config.firmware,
        Some(FirmwareConfig {
            kind: FirmwareKind::Efi,
            boot_disk: "root".into()
        })
    );
    let bios = parse_args(&["--name", "vm", "--boot-disk", "root"])
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!(bios.firmware.map(|f| f.kind), Some(FirmwareKind::Bios));
    assert!(parse_args(&["--name", "vm", "--kernel", "/k", "--boot-disk", "root"]).is_err());
    for (argv, flag, needs) in [
        (
            &["--name", "vm", "--boot-disk", "root", "--initrd", "/i"][..],
            "--initrd",
            "--kernel",
        ),
        (
            &["--name", "vm", "--kernel", "/k", "--firmware", "bios"][..],
            "--firmware",
            "--boot-disk",
        ),
    ] {
        let error = parse_args(argv).unwrap().into_config().unwrap_err();
        assert!(
            matches!(error, ConfigError::FlagWithout { flag: f, needs: n } if f == flag && n == needs),
            "{argv:?}: {error:?}"
        );
    }
}

#[test]
fn disk_flag_takes_a_format_and_refuses_unknown_ones() {
    let disk = parse_disk_spec("id=root,path=/d.qcow2,format=qcow2").unwrap();
    assert_eq!(disk.format, ImageFormat::Qcow2);
    assert_eq!(
        parse_disk_spec("id=r,path=/d").unwrap().format,
        ImageFormat::Raw
    );
    let err = parse_disk_spec("id=r,path=/d,format=vmdk").unwrap_err();
    assert!(
        err.to_string()
            .contains("format=vmdk is not one of raw, qcow2"),
        "{err}"
    );
}

#[test]
fn bad_disk_flag_is_a_clap_value_error_naming_the_problem() {
    let err = parse_args(&["--name", "vm", "--kernel", "/k", "--disk", "id=d"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    let text = err.to_string();
    assert!(text.contains("--disk"), "{text}");
    assert!(text.contains("missing path="), "{text}");
}

#[test]
fn command_definition_is_consistent() {
    use clap::CommandFactory;
    LaunchArgs::command().debug_assert();
}

#[test]
fn a_topology_alone_sets_the_vcpu_count() {
    let config = parse_args(&[
        "--name",
        "vm",
        "--kernel",
        "/k",
        "--cpu-topology",
        "sockets=2,cores=3",
    ])
    .unwrap()
    .into_config()
    .unwrap();
    assert_eq!(config.vcpus, 6);
    let topology = config.topology();
    assert_eq!(
        (topology.sockets(), topology.cores(), topology.threads()),
        (2, 3, 1)
    );
    assert_eq!(topology.apic_id(5), 6, "socket 1 starts at APIC id 4");
}

#[test]
fn bad_topology_flags_are_refused_by_name() {
    for (spec, expected) in [
        ("sockets=two", "sockets=two: expected a whole number"),
        ("sockets=2,dies=2", "dies"),
        ("threads", "threads needs a value"),
    ] {
        let err = parse_topology_spec(spec).unwrap_err();
        assert!(err.to_string().contains(expected), "{spec}: {err}");
    }
}

#[test]
fn a_config_without_topology_or_clock_has_flat_cores_and_utc() {
    let config = parse_args(&["--name", "vm", "--kernel", "/k", "--vcpus", "3"])
        .unwrap()
        .into_config()
        .unwrap();
    assert_eq!(config.cpu_topology, None);
    assert!(config.clock.is_utc());
    assert_eq!(
        config.topology(),
        ironvisor_arch::topology::CpuTopology::flat(3)
    );
    let json = serde_json::to_string(&config).unwrap();
    assert!(
        !json.contains("cpu_topology") && !json.contains("clock"),
        "{json}"
    );
}

#[test]
fn disk_and_net_specs_take_rate_limits() {
    let disk = parse_disk_spec("id=d,path=/d.img,bps=1048576,ops=200").unwrap();
    assert_eq!(
        disk.rate_limit,
        Some(RateLimitConfig {
            bytes_per_second: Some(1 << 20),
            ops_per_second: Some(200),
        })
    );
    let net = parse_net_spec("id=net0,tap=tap0,bps=262144").unwrap();
    assert_eq!(
        net.rate_limit,
        Some(RateLimitConfig {
            bytes_per_second: Some(262_144),
            ops_per_second: None,
        })
    );
    assert_eq!(parse_net_spec("id=net0,tap=tap0").unwrap().rate_limit, None);
    let err = parse_disk_spec("id=d,path=/d.img,bps=1M").unwrap_err();
    assert!(
        err.to_string().contains("bps=1M is not a whole number"),
        "{err}"
    );
}
