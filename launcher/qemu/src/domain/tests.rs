//! Unit tests of the domain plan and its XML (parsed back with roxmltree).

use super::*;
use ironvisor_launcher::config::{
    ClockConfig, ConsoleConfig, CpuTopologyConfig, DiskConfig, FirmwareConfig, KernelConfig,
    NetConfig, RateLimitConfig, RngConfig, SystemIdentity,
};

struct Fixture {
    dir: tempfile::TempDir,
    config: LaunchConfig,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(p.join("initrd.img"), b"initrd").unwrap();
    std::fs::write(p.join("root.raw"), vec![0u8; 1024]).unwrap();
    let mut qcow = QCOW2_MAGIC.to_vec();
    qcow.resize(1024, 0);
    std::fs::write(p.join("data.img"), qcow).unwrap();
    let config = LaunchConfig {
        name: "web-1".into(),
        vcpus: 2,
        vcpu_affinity: vec![vec![1], vec![2, 3]],
        memory_mib: 384,
        kernel: Some(KernelConfig {
            path: p.join("vmlinuz"),
            initrd: Some(p.join("initrd.img")),
            cmdline: "console=ttyS0 reboot=k panic=1 a=<b>&c".into(),
        }),
        firmware: None,
        disks: vec![
            DiskConfig {
                id: "root".into(),
                path: p.join("root.raw"),
                format: ImageFormat::Raw,
                read_only: false,
                serial: None,
                rate_limit: None,
            },
            DiskConfig {
                id: "data".into(),
                path: p.join("data.img"),
                format: ImageFormat::Qcow2,
                read_only: true,
                serial: Some("SN-'7'".into()),
                rate_limit: Some(RateLimitConfig {
                    bytes_per_second: Some(4 << 20),
                    ops_per_second: Some(200),
                }),
            },
        ],
        nets: vec![
            NetConfig {
                id: "net0".into(),
                tap: "tap-web1".into(),
                mac: Some("52:54:00:aa:bb:cc".into()),
                rate_limit: None,
            },
            NetConfig {
                id: "net1".into(),
                tap: "tap-web1b".into(),
                mac: None,
                rate_limit: None,
            },
        ],
        console: ConsoleConfig::default(),
        agent_socket: Some(p.join("agent.sock")),
        api_socket: None,
        shutdown_timeout_secs: 30,
        backend: Default::default(),
        system: SystemIdentity {
            uuid: Some("6A1C7D1E-8B3F-4C5A-9E2D-0123456789AB".into()),
            serial: Some("SN-<42>&'x'".into()),
        },
        rng: Some(RngConfig::with_rate(65536)),
        cpu_topology: None,
        clock: ClockConfig::default(),
    };
    Fixture { dir, config }
}

fn plan(fx: &Fixture) -> DomainPlan {
    DomainPlan::from_config(&fx.config, fx.dir.path(), 4242).unwrap()
}

fn child<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> roxmltree::Node<'a, 'a> {
    node.children()
        .find(|n| n.has_tag_name(name))
        .unwrap_or_else(|| panic!("no <{name}> under <{}>", node.tag_name().name()))
}

fn text<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> &'a str {
    child(node, name).text().unwrap_or("")
}

#[test]
fn disk_targets_follow_the_linux_naming() {
    let names: Vec<String> = [0, 1, 25, 26, 27, 51, 52, 701, 702]
        .into_iter()
        .map(disk_target)
        .collect();
    assert_eq!(
        names,
        ["vda", "vdb", "vdz", "vdaa", "vdab", "vdaz", "vdba", "vdzz", "vdaaa"]
    );
}

#[test]
fn plan_resolves_paths_formats_serials_and_macs() {
    let fx = fixture();
    let plan = plan(&fx);
    assert_eq!(plan.domain_name, "ironvisor-web-1");
    assert!(matches!(&plan.boot, PlannedBoot::Kernel { kernel, .. } if kernel.is_absolute()));
    assert_eq!(plan.disks[0].format, DiskFormat::Raw);
    assert_eq!(plan.disks[0].serial, "root");
    assert_eq!(plan.disks[0].target, "vda");
    assert_eq!(plan.disks[1].format, DiskFormat::Qcow2);
    assert_eq!(plan.disks[1].target, "vdb");
    assert_eq!(plan.nets[0].mac, "52:54:00:aa:bb:cc");
    // Generated MACs are the same as the KVM launcher's.
    assert_eq!(
        plan.nets[1].mac,
        format_mac(&ironvisor_launcher::config::generated_mac("web-1", "net1"))
    );
}

#[test]
fn plan_names_a_missing_disk() {
    let mut fx = fixture();
    fx.config.disks[1].path = fx.dir.path().join("gone.img");
    let err = DomainPlan::from_config(&fx.config, Path::new("/run"), 1).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("disks[1] (data)"), "{text}");
    assert!(text.contains("gone.img"), "{text}");
}

#[test]
fn relative_agent_socket_becomes_absolute() {
    let mut fx = fixture();
    fx.config.agent_socket = Some("agent.sock".into());
    let plan = plan(&fx);
    let agent = plan.agent_socket.unwrap();
    assert!(agent.is_absolute());
    assert!(agent.ends_with("agent.sock"));
}

#[test]
fn xml_describes_a_tcg_guest_with_direct_kernel_boot() {
    let fx = fixture();
    let plan = plan(&fx);
    let xml = plan.to_xml();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let domain = doc.root_element();
    assert_eq!(domain.tag_name().name(), "domain");
    assert_eq!(domain.attribute("type"), Some("qemu"));
    assert_eq!(text(domain, "name"), "ironvisor-web-1");
    assert_eq!(text(domain, "uuid"), "6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab");
    let memory = child(domain, "memory");
    assert_eq!(
        (memory.attribute("unit"), memory.text()),
        (Some("MiB"), Some("384"))
    );
    assert_eq!(text(domain, "vcpu"), "2");
    let pins: Vec<_> = child(domain, "cputune")
        .children()
        .filter(|n| n.has_tag_name("vcpupin"))
        .map(|n| (n.attribute("vcpu").unwrap(), n.attribute("cpuset").unwrap()))
        .collect();
    assert_eq!(pins, [("0", "1"), ("1", "2-3")]);
    let os = child(domain, "os");
    let os_type = child(os, "type");
    assert_eq!(os_type.attribute("machine"), Some(MACHINE_TYPE));
    assert_eq!(os_type.text(), Some("hvm"));
    assert_eq!(child(os, "smbios").attribute("mode"), Some("sysinfo"));
    let PlannedBoot::Kernel { kernel, initrd, .. } = &plan.boot else {
        panic!("direct kernel boot planned as {:?}", plan.boot);
    };
    assert_eq!(text(os, "kernel"), kernel.to_str().unwrap());
    assert_eq!(
        text(os, "initrd"),
        initrd.as_ref().unwrap().to_str().unwrap()
    );
    // Escaped on the way in, identical on the way out, and the timer check skipped.
    assert_eq!(
        text(os, "cmdline"),
        "console=ttyS0 reboot=k panic=1 a=<b>&c no_timer_check"
    );
    // No topology: the vCPUs are cores of one socket. No clock: UTC.
    let topology = child(child(domain, "cpu"), "topology");
    let counts = ["sockets", "dies", "cores", "threads"].map(|a| topology.attribute(a));
    assert_eq!(counts, [Some("1"), Some("1"), Some("2"), Some("1")]);
    assert_eq!(child(domain, "clock").attribute("offset"), Some("utc"));
    assert_eq!(text(domain, "on_poweroff"), "destroy");
    assert_eq!(text(domain, "on_reboot"), "restart");
    assert_eq!(text(domain, "on_crash"), "destroy");
    let launcher = child(child(domain, "metadata"), "launcher");
    assert_eq!(launcher.tag_name().namespace(), Some(METADATA_NAMESPACE));
    assert_eq!(launcher.attribute("pid"), Some("4242"));
    assert_eq!(launcher_pid_from_metadata(&xml), Some(4242));
}

/// The `<entry name=...>` values of `<sysinfo type='smbios'><system>`, in order.
fn sysinfo_system_entries(domain: roxmltree::Node) -> Vec<(String, String)> {
    let sysinfo = child(domain, "sysinfo");
    assert_eq!(sysinfo.attribute("type"), Some("smbios"));
    child(sysinfo, "system")
        .children()
        .filter(|n| n.is_element())
        .map(|n| {
            assert!(n.has_tag_name("entry"), "{n:?}");
            let name = n.attribute("name").unwrap().to_string();
            (name, n.text().unwrap_or("").to_string())
        })
        .collect()
}

fn smbios_mode<'a>(domain: roxmltree::Node<'a, 'a>) -> Option<&'a str> {
    child(child(domain, "os"), "smbios").attribute("mode")
}

#[test]
fn xml_gives_the_guest_the_smbios_system_identity() {
    let fx = fixture();
    let plan = plan(&fx);
    assert_eq!(
        plan.system_uuid.as_deref(),
        Some("6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab")
    );
    let xml = plan.to_xml();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let domain = doc.root_element();
    // libvirt requires the domain UUID and the SMBIOS one to match.
    assert_eq!(text(domain, "uuid"), "6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab");
    assert_eq!(smbios_mode(domain), Some("sysinfo"));
    let entries = sysinfo_system_entries(domain);
    let expected = [
        ("manufacturer", "Ironvisor"),
        ("product", "Ironvisor microVM"),
        ("version", SYSTEM_VERSION),
        // Escaped on the way in, identical on the way out.
        ("serial", "SN-<42>&'x'"),
        ("uuid", "6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab"),
    ]
    .map(|(name, value)| (name.to_string(), value.to_string()));
    assert_eq!(entries, expected);
    // <sysinfo> is a direct child of <domain>, once.
    let count = domain
        .children()
        .filter(|n| n.has_tag_name("sysinfo"))
        .count();
    assert_eq!(count, 1);
}

#[test]
fn xml_without_a_system_identity_still_names_the_manufacturer() {
    let mut fx = fixture();
    fx.config.system = SystemIdentity::default();
    let xml = plan(&fx).to_xml();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let domain = doc.root_element();
    assert!(!domain.children().any(|n| n.has_tag_name("uuid")));
    assert_eq!(smbios_mode(domain), Some("sysinfo"));
    let names: Vec<String> = sysinfo_system_entries(domain)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["manufacturer", "product", "version"]);

    // An empty serial is no serial.
    fx.config.system.serial = Some(String::new());
    assert_eq!(plan(&fx).system_serial, None);
}

#[test]
fn xml_has_virtio_pci_disks_nics_and_the_serial_socket() {
    let fx = fixture();
    let plan = plan(&fx);
    let xml = plan.to_xml();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let devices = child(doc.root_element(), "devices");

    let disks: Vec<_> = devices
        .children()
        .filter(|n| n.has_tag_name("disk"))
        .collect();
    assert_eq!(disks.len(), 2);
    for (disk, planned) in disks.iter().zip(&plan.disks) {
        assert_eq!(disk.attribute("type"), Some("file"));
        assert_eq!(
            child(*disk, "driver").attribute("type"),
            Some(planned.format.as_str())
        );
        assert_eq!(
            child(*disk, "source").attribute("file"),
            planned.path.to_str()
        );
        let target = child(*disk, "target");
        assert_eq!(target.attribute("bus"), Some("virtio"));
        assert_eq!(target.attribute("dev"), Some(planned.target.as_str()));
        assert_eq!(text(*disk, "serial"), planned.serial);
        let readonly = disk.children().any(|n| n.has_tag_name("readonly"));
        assert_eq!(readonly, planned.read_only, "{}", planned.id);
    }
    assert_eq!(child(disks[1], "driver").attribute("type"), Some("qcow2"));
    assert_eq!(text(disks[1], "serial"), "SN-'7'");
    // The second disk's rate limit is libvirt's iotune; the first has none.
    assert!(!disks[0].children().any(|n| n.has_tag_name("iotune")));
    let iotune = child(disks[1], "iotune");
    assert_eq!(text(iotune, "total_bytes_sec"), (4u64 << 20).to_string());
    assert_eq!(text(iotune, "total_iops_sec"), "200");

    // NICs are not libvirt interfaces (libvirtd would look the tap up in its own
    // network namespace); see xml_passes_nics_through_to_qemu.
    assert!(!devices.children().any(|n| n.has_tag_name("interface")));

    let serial = child(devices, "serial");
    assert_eq!(serial.attribute("type"), Some("unix"));
    let source = child(serial, "source");
    assert_eq!(source.attribute("mode"), Some("bind"));
    assert_eq!(source.attribute("path"), plan.serial_socket.to_str());

    let console = child(devices, "console");
    assert_eq!(console.attribute("type"), Some("unix"));
    assert_eq!(
        child(console, "source").attribute("path"),
        plan.agent_socket.as_ref().unwrap().to_str()
    );
    assert_eq!(child(console, "target").attribute("type"), Some("virtio"));
}

#[test]
fn xml_has_a_rate_limited_virtio_rng_on_urandom() {
    let mut fx = fixture();
    fx.config.rng = Some(RngConfig::default());
    let plan = plan(&fx);
    assert_eq!(plan.rng_bytes_per_second, Some(1024 * 1024));
    let xml = plan.to_xml();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let devices = child(doc.root_element(), "devices");
    let rngs: Vec<_> = devices
        .children()
        .filter(|n| n.has_tag_name("rng"))
        .collect();
    assert_eq!(rngs.len(), 1, "{xml}");
    let rng = rngs[0];
    assert_eq!(rng.attribute("model"), Some("virtio"));
    let rate = child(rng, "rate");
    assert_eq!(rate.attribute("bytes"), Some("1048576"));
    assert_eq!(rate.attribute("period"), Some("1000"));
    let backend = child(rng, "backend");
    assert_eq!(backend.attribute("model"), Some("random"));
    assert_eq!(backend.text(), Some("/dev/urandom"));
    // Exactly these children, in this order.
    let names: Vec<&str> = rng
        .children()
        .filter(|n| n.is_element())
        .map(|n| n.tag_name().name())
        .collect();
    assert_eq!(names, ["rate", "backend"]);
    assert!(
        xml.contains(
            "    <rng model='virtio'>\n      <rate bytes='1048576' period='1000'/>\n      \
             <backend model='random'>/dev/urandom</backend>\n    </rng>\n"
        ),
        "{xml}"
    );

    // The configured rate is passed through as it is.
    fx.config.rng = Some(RngConfig::with_rate(4096));
    let xml = DomainPlan::from_config(&fx.config, fx.dir.path(), 1)
        .unwrap()
        .to_xml();
    assert!(xml.contains("<rate bytes='4096' period='1000'/>"), "{xml}");
}

/// The `<qemu:arg value>`s of the domain, in order.
fn qemu_args_of(xml: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(xml).unwrap();
    let commandline = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name((QEMU_NAMESPACE, "commandline")))
        .expect("<qemu:commandline> in the qemu namespace");
    commandline
        .children()
        .filter(|n| n.is_element())
        .map(|n| {
            assert!(n.has_tag_name((QEMU_NAMESPACE, "arg")), "{n:?}");
            n.attribute("value").unwrap().to_string()
        })
        .collect()
}

#[test]
fn xml_passes_nics_through_to_qemu() {
    let fx = fixture();
    let plan = plan(&fx);
    let xml = plan.to_xml();
    assert!(
        xml.starts_with(&format!(
            "<domain type='qemu' xmlns:ironvisor='{METADATA_NAMESPACE}' \
             xmlns:qemu='{QEMU_NAMESPACE}'>"
        )),
        "{xml}"
    );
    let dir = fx.dir.path();
    assert_eq!(plan.nets[0].relay_socket, dir.join("nic0.sock"));
    assert_eq!(plan.nets[1].qemu_socket, dir.join("nic1-qemu.sock"));
    let args = qemu_args_of(&xml);
    let flags: Vec<&str> = args.iter().step_by(2).map(String::as_str).collect();
    assert_eq!(flags, ["-netdev", "-device", "-netdev", "-device"]);
    let json = |i: usize| -> serde_json::Value { serde_json::from_str(&args[i]).unwrap() };
    for (index, net) in plan.nets.iter().enumerate() {
        let (netdev, device) = (json(4 * index + 1), json(4 * index + 3));
        assert_eq!(netdev["type"], "dgram");
        assert_eq!(netdev["id"], format!("ivnet{index}"));
        assert_eq!(netdev["local"]["type"], "unix");
        assert_eq!(netdev["local"]["path"], net.qemu_socket.to_str().unwrap());
        assert_eq!(netdev["remote"]["type"], "unix");
        assert_eq!(netdev["remote"]["path"], net.relay_socket.to_str().unwrap());
        assert_eq!(device["driver"], "virtio-net-pci");
        assert_eq!(device["netdev"], format!("ivnet{index}"));
        assert_eq!(device["mac"], net.mac.as_str());
    }
    assert_eq!(json(3)["mac"], "52:54:00:aa:bb:cc");
    // The commandline follows <devices>, as a direct child of <domain>.
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let names: Vec<_> = doc
        .root_element()
        .children()
        .filter(|n| n.is_element())
        .map(|n| n.tag_name().name())
        .collect();
    assert_eq!(names[names.len() - 2..], ["devices", "commandline"]);
}

#[test]
fn qemu_args_are_escaped_for_xml_and_qemu() {
    let fx = fixture();
    let odd = fx.dir.path().join("run'&<x>,\"y");
    std::fs::create_dir(&odd).unwrap();
    let plan = DomainPlan::from_config(&fx.config, &odd, 1).unwrap();
    let xml = plan.to_xml();
    // XML-escaped in the attribute (JSON escapes the double quote first) ...
    assert!(
        xml.contains(r#"run&apos;&amp;&lt;x&gt;,\&quot;y/nic0-qemu.sock"#),
        "{xml}"
    );
    // ... and the exact path again once parsed back.
    let args = qemu_args_of(&xml);
    let netdev: serde_json::Value = serde_json::from_str(&args[1]).unwrap();
    assert_eq!(
        netdev["local"]["path"],
        odd.join("nic0-qemu.sock").to_str().unwrap()
    );
    assert_eq!(
        netdev["remote"]["path"],
        odd.join("nic0.sock").to_str().unwrap()
    );
    assert_eq!(plan.runtime_sockets().len(), 1 + 2 * 2);
    assert!(plan.runtime_sockets()[0].ends_with(SERIAL_SOCKET));
}

#[test]
fn xml_without_optional_devices() {
    let mut fx = fixture();
    fx.config.disks.clear();
    fx.config.nets.clear();
    fx.config.agent_socket = None;
    fx.config.kernel.as_mut().unwrap().initrd = None;
    fx.config.system = SystemIdentity::default();
    fx.config.rng = None;
    let xml = plan(&fx).to_xml();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let domain = doc.root_element();
    assert!(!child(domain, "os")
        .children()
        .any(|n| n.has_tag_name("initrd")));
    let devices = child(domain, "devices");
    for absent in ["disk", "interface", "console", "rng"] {
        assert!(
            !devices.children().any(|n| n.has_tag_name(absent)),
            "{absent}"
        );
    }
    assert!(!domain.children().any(|n| n.has_tag_name("commandline")));
    assert!(devices.children().any(|n| n.has_tag_name("serial")));
    assert!(!domain.children().any(|n| n.has_tag_name("uuid")));
    assert!(domain.children().any(|n| n.has_tag_name("sysinfo")));
}

#[test]
fn devices_match_the_kvm_launcher_kinds() {
    let fx = fixture();
    let plan = plan(&fx);
    let devices = plan.devices(Some(Path::new("/run/console.sock")));
    let kinds: Vec<(&str, &str)> = devices
        .iter()
        .map(|d| (d.kind.as_str(), d.id.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("serial", "ttyS0"),
            ("virtio-blk", "root"),
            ("virtio-blk", "data"),
            ("virtio-net", "net0"),
            ("virtio-net", "net1"),
            ("virtio-console", "agent"),
            ("virtio-rng", "rng"),
        ]
    );
    assert_eq!(devices[6].backend, "/dev/urandom (65536 bytes/s)");
    assert_eq!(devices[0].backend, "/run/console.sock");
    assert!(devices[2].read_only);
    assert_eq!(devices[3].mac.as_deref(), Some("52:54:00:aa:bb:cc"));
    assert_eq!(devices[3].backend, "tap-web1");
}

#[test]
fn metadata_pid_parsing() {
    assert_eq!(
        launcher_pid_from_metadata("<launcher vm='a' pid='17'/>"),
        Some(17)
    );
    assert_eq!(
        launcher_pid_from_metadata(r#"<ironvisor:launcher pid="99" vm="x"/>"#),
        Some(99)
    );
    assert_eq!(launcher_pid_from_metadata("<launcher vm='a'/>"), None);
    assert_eq!(launcher_pid_from_metadata("<launcher pid='x1'/>"), None);
    assert_eq!(launcher_pid_from_metadata(""), None);
}

#[test]
fn escape_covers_the_five_xml_specials() {
    assert_eq!(escape(r#"a&b<c>d'e"f"#), "a&amp;b&lt;c&gt;d&apos;e&quot;f");
}

#[test]
fn xml_shapes_the_cpu_topology_and_shifts_the_rtc() {
    let mut fx = fixture();
    fx.config.vcpus = 4;
    fx.config.vcpu_affinity.clear();
    fx.config.cpu_topology = Some(CpuTopologyConfig {
        sockets: 2,
        cores: 1,
        threads: 2,
    });
    fx.config.clock = ClockConfig {
        rtc_offset_seconds: 19_800,
    };
    let xml = plan(&fx).to_xml();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let domain = doc.root_element();
    let topology = child(child(domain, "cpu"), "topology");
    let counts = ["sockets", "dies", "cores", "threads"].map(|a| topology.attribute(a));
    assert_eq!(counts, [Some("2"), Some("1"), Some("1"), Some("2")]);
    let clock = child(domain, "clock");
    assert_eq!(clock.attribute("offset"), Some("variable"));
    assert_eq!(clock.attribute("adjustment"), Some("19800"));
    assert_eq!(clock.attribute("basis"), Some("utc"));
}

#[test]
fn a_firmware_boot_has_no_kernel_and_boots_its_disk_first() {
    let mut fx = fixture();
    fx.config.kernel = None;
    fx.config.firmware = Some(FirmwareConfig {
        kind: FirmwareKind::Bios,
        boot_disk: fx.config.disks[1].id.clone(),
    });
    let xml = plan(&fx).to_xml();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let domain = doc.root_element();
    let os = child(domain, "os");
    for absent in ["kernel", "initrd", "cmdline", "loader", "nvram"] {
        assert!(!os.children().any(|n| n.has_tag_name(absent)), "{absent}");
    }
    let boot_orders: Vec<Option<&str>> = child(domain, "devices")
        .children()
        .filter(|n| n.has_tag_name("disk"))
        .map(|disk| {
            disk.children()
                .find(|n| n.has_tag_name("boot"))
                .and_then(|boot| boot.attribute("order"))
        })
        .collect();
    assert_eq!(boot_orders, [None, Some("1")]);
}

#[test]
fn an_efi_boot_loads_ovmf_without_secure_boot_and_keeps_its_variables_in_the_runtime_dir() {
    let mut fx = fixture();
    fx.config.kernel = None;
    fx.config.firmware = Some(FirmwareConfig {
        kind: FirmwareKind::Efi,
        boot_disk: fx.config.disks[0].id.clone(),
    });
    if !std::path::Path::new(OVMF_CODE).is_file() {
        let error = DomainPlan::from_config(&fx.config, fx.dir.path(), 42).unwrap_err();
        assert!(error.to_string().contains("ovmf"), "{error}");
        return;
    }
    let plan = plan(&fx);
    let xml = plan.to_xml();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let os = child(doc.root_element(), "os");
    let loader = child(os, "loader");
    assert_eq!(loader.text(), Some(OVMF_CODE));
    assert_eq!(loader.attribute("secure"), Some("no"));
    let nvram = child(os, "nvram");
    assert_eq!(nvram.attribute("template"), Some(OVMF_VARS));
    assert_eq!(
        nvram.text(),
        Some(fx.dir.path().join(NVRAM_FILE).to_str().unwrap())
    );
}

#[test]
fn the_tcg_translation_cache_is_bounded() {
    let xml = plan(&fixture()).to_xml();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let features = child(doc.root_element(), "features");
    let cache = child(child(features, "tcg"), "tb-cache");
    assert_eq!(cache.attribute("unit"), Some("MiB"));
    assert_eq!(cache.text(), Some(TCG_TB_CACHE_MIB.to_string().as_str()));
}

#[test]
fn no_timer_check_is_added_once() {
    assert_eq!(emulation_cmdline(""), "no_timer_check");
    assert_eq!(emulation_cmdline("quiet"), "quiet no_timer_check");
    assert_eq!(
        emulation_cmdline("no_timer_check quiet"),
        "no_timer_check quiet"
    );
}

#[test]
fn a_block_device_disk_is_a_block_disk_with_a_dev_source() {
    // Any block device node will do; the plan only looks at the file type.
    let Some(device) = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .find(|e| std::os::unix::fs::FileTypeExt::is_block_device(&e.file_type().unwrap()))
    else {
        panic!("no block device node in /dev to test with");
    };
    let mut fx = fixture();
    fx.config.disks[1].path = device.path();
    fx.config.disks[1].format = ImageFormat::Raw;
    let plan = plan(&fx);
    assert!(!plan.disks[0].block_device);
    assert!(plan.disks[1].block_device);
    let xml = plan.to_xml();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let devices = child(doc.root_element(), "devices");
    let disks: Vec<_> = devices
        .children()
        .filter(|n| n.has_tag_name("disk"))
        .collect();
    assert_eq!(disks[0].attribute("type"), Some("file"));
    assert_eq!(disks[1].attribute("type"), Some("block"));
    let source = child(disks[1], "source");
    assert_eq!(source.attribute("dev"), plan.disks[1].path.to_str());
    assert_eq!(source.attribute("file"), None);
}

#[test]
fn a_nic_rate_limit_goes_to_its_relay() {
    let fx = fixture();
    let mut config = fx.config.clone();
    let limit = RateLimitConfig {
        bytes_per_second: Some(1 << 20),
        ops_per_second: None,
    };
    config.nets[1].rate_limit = Some(limit);
    let plan = DomainPlan::from_config(&config, fx.dir.path(), 4242).unwrap();
    assert_eq!(plan.nets[0].rate_limit, None);
    assert_eq!(plan.nets[1].rate_limit, Some(limit));
}
