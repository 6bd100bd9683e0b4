//! `virtctl describe`: a VM in detail, laid out like `kubectl describe`.
//!
//! Works on the JSON objects of the daemon's [`VmView`] rather than on typed CRDs, so a
//! field this version does not know is simply not shown instead of failing the command.

use ironvisor_handler_api::proto::{Event, VmView};
use serde_json::{Map, Value};

use crate::format::{self, human_duration, parse_rfc3339, FormatError, Table, NONE};

/// Renders the description of one VM; `now_unix` is the reference time for ages.
pub fn describe(view: &VmView, now_unix: i64) -> Result<String, FormatError> {
    let vm = format::vm_object(view)?;
    let vmi = format::vmi_object(view)?;
    let mut doc = Doc::default();

    let metadata = &vm["metadata"];
    let created = if view.created_unix > 0 {
        format!(
            "{} ({} ago)",
            format::format_rfc3339(view.created_unix),
            format::age(view.created_unix, now_unix)
        )
    } else {
        str_at(metadata, "creationTimestamp")
            .unwrap_or(NONE)
            .to_string()
    };
    let run_strategy = if view.run_strategy.is_empty() {
        run_strategy_of(&vm["spec"])
    } else {
        view.run_strategy.clone()
    };
    doc.fields(
        0,
        vec![
            ("Name", view.name.clone()),
            ("Namespace", namespace_of(view).to_string()),
            ("Labels", key_values(&metadata["labels"])),
            ("Annotations", key_values(&metadata["annotations"])),
            (
                "API Version",
                str_at(&vm, "apiVersion").unwrap_or(NONE).to_string(),
            ),
            (
                "Kind",
                str_at(&vm, "kind").unwrap_or("VirtualMachine").to_string(),
            ),
            ("Created", created),
            ("Run Strategy", run_strategy),
            ("Status", or_none(&view.status)),
            (
                "Ready",
                if view.ready { "True" } else { "False" }.to_string(),
            ),
        ],
    );

    describe_spec(&mut doc, &vm["spec"]["template"]["spec"]);

    doc.heading(0, "Conditions");
    doc.conditions(2, &vm["status"]["conditions"], now_unix);

    doc.heading(0, "Instance");
    match &vmi {
        None => doc.line(2, "<none>: the VM is not running"),
        Some(vmi) => describe_instance(&mut doc, view, vmi, now_unix),
    }

    doc.heading(0, "Events");
    doc.events(2, &view.events, now_unix);
    Ok(doc.out)
}

/// The `Spec:` section: CPU, memory, boot, disks, interfaces.
fn describe_spec(doc: &mut Doc, spec: &Value) {
    doc.heading(0, "Spec");
    let domain = &spec["domain"];
    let cpu = &domain["cpu"];
    let count = |key: &str| cpu[key].as_u64().unwrap_or(1);
    let (cores, sockets, threads) = (count("cores"), count("sockets"), count("threads"));
    let memory = str_at(&domain["memory"], "guest")
        .or_else(|| str_at(&domain["resources"]["requests"], "memory"))
        .unwrap_or(NONE)
        .to_string();
    let mut fields = vec![
        (
            "CPU",
            format!(
                "{} vCPU ({cores} core(s), {sockets} socket(s), {threads} thread(s))",
                cores * sockets * threads
            ),
        ),
        ("Memory", memory),
    ];
    let kernel_boot = &domain["firmware"]["kernelBoot"];
    if kernel_boot.is_object() {
        let image = str_at(&kernel_boot["container"], "image").unwrap_or(NONE);
        let args = str_at(kernel_boot, "kernelArgs").unwrap_or("");
        let value = if args.is_empty() {
            image.to_string()
        } else {
            format!("{image} (args: {args})")
        };
        fields.push(("Kernel Boot", value));
    }
    if let Some(seconds) = spec["terminationGracePeriodSeconds"].as_i64() {
        fields.push(("Termination Grace Period", human_duration(seconds)));
    }
    if let Some(selector) = spec["nodeSelector"].as_object().filter(|m| !m.is_empty()) {
        fields.push(("Node Selector", join_map(selector)));
    }
    doc.fields(2, fields);

    let volumes = by_name(&spec["volumes"]);
    doc.heading(2, "Disks");
    let disks = items(&domain["devices"]["disks"]);
    if disks.is_empty() {
        doc.line(4, NONE);
    } else {
        let mut table = Table::new(["NAME", "TYPE", "BUS", "VOLUME"]);
        for disk in disks {
            let name = str_at(disk, "name").unwrap_or("");
            let (kind, bus) = ["disk", "cdrom", "lun"]
                .iter()
                .find_map(|kind| {
                    disk.get(*kind)
                        .map(|d| (*kind, str_at(d, "bus").unwrap_or("virtio")))
                })
                .unwrap_or(("disk", "virtio"));
            let volume = volumes
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| volume_source(v))
                .unwrap_or_else(|| "<missing volume>".to_string());
            table.push([name, kind, bus, volume.as_str()]);
        }
        doc.table(4, &table);
    }

    let networks = by_name(&spec["networks"]);
    doc.heading(2, "Interfaces");
    let interfaces = items(&domain["devices"]["interfaces"]);
    if interfaces.is_empty() {
        doc.line(4, NONE);
    } else {
        let mut table = Table::new(["NAME", "BINDING", "MAC", "NETWORK"]);
        for iface in interfaces {
            let name = str_at(iface, "name").unwrap_or("");
            let binding = iface
                .as_object()
                .and_then(|m| {
                    m.keys()
                        .find(|k| !matches!(k.as_str(), "name" | "macAddress" | "model"))
                })
                .map(String::as_str)
                .unwrap_or(NONE);
            let mac = str_at(iface, "macAddress").unwrap_or("auto");
            let network = networks
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| network_source(v))
                .unwrap_or_else(|| "<missing network>".to_string());
            table.push([name, binding, mac, network.as_str()]);
        }
        doc.table(4, &table);
    }
}

/// The `Instance:` section: the VMI's phase, node, backend, conditions and addresses.
fn describe_instance(doc: &mut Doc, view: &VmView, vmi: &Value, now_unix: i64) {
    let status = &vmi["status"];
    let mut fields = vec![
        (
            "Phase",
            str_at(status, "phase")
                .map(str::to_string)
                .unwrap_or_else(|| or_none(&view.phase)),
        ),
        (
            "Node",
            str_at(status, "nodeName")
                .map(str::to_string)
                .unwrap_or_else(|| or_none(&view.node)),
        ),
        ("Backend", or_none(&view.backend)),
    ];
    if let Some(reason) = str_at(status, "reason") {
        fields.insert(1, ("Reason", reason.to_string()));
    }
    if let Some(isolation) = str_at(status, "isolation") {
        fields.push(("Isolation", isolation.to_string()));
    }
    if let Some(pid) = status["launcherPid"].as_u64() {
        fields.push(("Launcher PID", pid.to_string()));
    }
    if let Some(os) = str_at(&status["guestOSInfo"], "prettyName") {
        fields.push(("Guest OS", os.to_string()));
    }
    doc.fields(2, fields);

    doc.heading(2, "Conditions");
    doc.conditions(4, &status["conditions"], now_unix);

    doc.heading(2, "Interfaces");
    let interfaces = items(&status["interfaces"]);
    if interfaces.is_empty() {
        doc.line(4, NONE);
        return;
    }
    let mut table = Table::new(["NAME", "INTERFACE", "IP", "MAC"]);
    for iface in interfaces {
        let ips = match str_at(iface, "ipAddress") {
            Some(ip) => ip.to_string(),
            None => items(&iface["ipAddresses"])
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(","),
        };
        table.push([
            str_at(iface, "name").unwrap_or(NONE).to_string(),
            str_at(iface, "interfaceName").unwrap_or(NONE).to_string(),
            or_none(&ips),
            str_at(iface, "mac").unwrap_or(NONE).to_string(),
        ]);
    }
    doc.table(4, &table);
}

/// One volume's source, e.g. `containerDisk ironvisor/rootfs:busybox`.
fn volume_source(volume: &Value) -> String {
    let source = |key: &str| volume.get(key).filter(|v| v.is_object());
    if let Some(cd) = source("containerDisk") {
        return format!("containerDisk {}", str_at(cd, "image").unwrap_or(NONE));
    }
    if let Some(pvc) = source("persistentVolumeClaim") {
        return format!(
            "persistentVolumeClaim {}",
            str_at(pvc, "claimName").unwrap_or(NONE)
        );
    }
    if let Some(hd) = source("hostDisk") {
        let mut text = format!("hostDisk {}", str_at(hd, "path").unwrap_or(NONE));
        if let Some(kind) = str_at(hd, "type") {
            text.push_str(&format!(" ({kind}"));
            if let Some(capacity) = str_at(hd, "capacity") {
                text.push_str(&format!(", {capacity}"));
            }
            text.push(')');
        }
        return text;
    }
    if let Some(ed) = source("emptyDisk") {
        return format!("emptyDisk {}", str_at(ed, "capacity").unwrap_or(NONE));
    }
    volume
        .as_object()
        .and_then(|m| m.keys().find(|k| k.as_str() != "name"))
        .cloned()
        .unwrap_or_else(|| NONE.to_string())
}

/// One network's source: `pod` or `multus NAME`.
fn network_source(network: &Value) -> String {
    if let Some(multus) = network.get("multus") {
        return format!("multus {}", str_at(multus, "networkName").unwrap_or(NONE));
    }
    network
        .as_object()
        .and_then(|m| m.keys().find(|k| k.as_str() != "name"))
        .cloned()
        .unwrap_or_else(|| NONE.to_string())
}

fn run_strategy_of(spec: &Value) -> String {
    if let Some(strategy) = str_at(spec, "runStrategy") {
        return strategy.to_string();
    }
    match spec["running"].as_bool() {
        Some(true) => "Always (running: true)".to_string(),
        Some(false) => "Halted (running: false)".to_string(),
        None => NONE.to_string(),
    }
}

fn namespace_of(view: &VmView) -> &str {
    if view.namespace.is_empty() {
        ironvisor_handler_api::DEFAULT_NAMESPACE
    } else {
        &view.namespace
    }
}

fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The entries of a `[{name: ...}, ...]` list, by name.
fn by_name(value: &Value) -> Vec<(&str, &Value)> {
    items(value)
        .iter()
        .filter_map(|v| str_at(v, "name").map(|n| (n, v)))
        .collect()
}

fn or_none(value: &str) -> String {
    if value.is_empty() {
        NONE.to_string()
    } else {
        value.to_string()
    }
}

/// `k=v` pairs of a label or annotation map, one per line, or `<none>`.
fn key_values(value: &Value) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => join_map(map),
        _ => NONE.to_string(),
    }
}

fn join_map(map: &Map<String, Value>) -> String {
    map.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => format!("{k}={s}"),
            None => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text being built, with kubectl-describe layout helpers.
#[derive(Debug, Default)]
struct Doc {
    out: String,
}

impl Doc {
    fn line(&mut self, indent: usize, text: &str) {
        self.out.extend(std::iter::repeat_n(' ', indent));
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn heading(&mut self, indent: usize, title: &str) {
        self.line(indent, &format!("{title}:"));
    }

    /// `Key:  value` lines with the values aligned; a multi-line value continues in
    /// the value column.
    fn fields(&mut self, indent: usize, fields: Vec<(&str, String)>) {
        let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 3;
        for (key, value) in fields {
            let mut lines = value.lines();
            let first = lines.next().unwrap_or("");
            let label = format!("{key}:");
            self.line(indent, format!("{label:<width$}{first}").trim_end());
            for more in lines {
                self.line(indent + width, more);
            }
        }
    }

    fn table(&mut self, indent: usize, table: &Table) {
        for row in table.render().lines() {
            self.line(indent, row);
        }
    }

    fn conditions(&mut self, indent: usize, conditions: &Value, now_unix: i64) {
        let conditions = items(conditions);
        if conditions.is_empty() {
            self.line(indent, NONE);
            return;
        }
        let mut table = Table::new(["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]);
        for c in conditions {
            let age = str_at(c, "lastTransitionTime")
                .and_then(parse_rfc3339)
                .map(|t| human_duration(now_unix.saturating_sub(t)))
                .unwrap_or_else(|| "-".to_string());
            table.push([
                str_at(c, "type").unwrap_or("-").to_string(),
                str_at(c, "status").unwrap_or("-").to_string(),
                str_at(c, "reason").unwrap_or("-").to_string(),
                age,
                str_at(c, "message").unwrap_or("").to_string(),
            ]);
        }
        self.table(indent, &table);
    }

    fn events(&mut self, indent: usize, events: &[Event], now_unix: i64) {
        if events.is_empty() {
            self.line(indent, NONE);
            return;
        }
        let mut sorted: Vec<&Event> = events.iter().collect();
        sorted.sort_by_key(|e| e.time_unix);
        let mut table = Table::new(["Type", "Reason", "Age", "Message"]);
        table.push(["----", "------", "----", "-------"]);
        for e in sorted {
            table.push([
                e.r#type.clone(),
                e.reason.clone(),
                format::age(e.time_unix, now_unix),
                e.message.clone(),
            ]);
        }
        self.table(indent, &table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_714_566_615; // 2024-05-01T12:30:15Z

    fn view() -> VmView {
        let vm = serde_json::json!({
            "apiVersion": "ironvisor.io/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": {
                "name": "small", "namespace": "default",
                "labels": {"app": "small", "tier": "web"},
                "creationTimestamp": "2024-05-01T12:25:15Z"
            },
            "spec": {
                "runStrategy": "Always",
                "template": {"spec": {
                    "domain": {
                        "cpu": {"cores": 2},
                        "memory": {"guest": "256Mi"},
                        "firmware": {"kernelBoot": {
                            "kernelArgs": "root=/dev/vda rw",
                            "container": {"image": "ironvisor/guest-kernel:debian-6.1"}
                        }},
                        "devices": {
                            "disks": [
                                {"name": "rootdisk", "disk": {"bus": "virtio"}},
                                {"name": "cloudinitdisk", "disk": {"bus": "virtio"}},
                                {"name": "scratch", "disk": {}}
                            ],
                            "interfaces": [{"name": "default", "masquerade": {}}]
                        }
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "terminationGracePeriodSeconds": 30,
                    "volumes": [
                        {"name": "rootdisk", "containerDisk": {"image": "ironvisor/rootfs:busybox"}},
                        {"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": "#cloud-config"}},
                        {"name": "scratch", "emptyDisk": {"capacity": "1Gi"}}
                    ]
                }}
            },
            "status": {
                "printableStatus": "Running",
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "GuestBooted",
                    "lastTransitionTime": "2024-05-01T12:27:15Z"
                }]
            }
        });
        let vmi = serde_json::json!({
            "status": {
                "phase": "Running",
                "nodeName": "node1",
                "isolation": "Emulation",
                "launcherPid": 4242,
                "interfaces": [{
                    "name": "default", "interfaceName": "eth0",
                    "ipAddress": "10.88.0.5", "mac": "52:54:00:12:34:56"
                }]
            }
        });
        VmView {
            namespace: "default".into(),
            name: "small".into(),
            status: "Running".into(),
            phase: "Running".into(),
            ip: "10.88.0.5".into(),
            node: "node1".into(),
            created_unix: NOW - 300,
            ready: true,
            run_strategy: "Always".into(),
            backend: "qemu-tcg".into(),
            vm_json: vm.to_string(),
            vmi_json: vmi.to_string(),
            events: vec![
                Event {
                    time_unix: NOW - 60,
                    r#type: "Warning".into(),
                    reason: "SoftwareEmulation".into(),
                    message: "no usable KVM; running under QEMU TCG".into(),
                },
                Event {
                    time_unix: NOW - 120,
                    r#type: "Normal".into(),
                    reason: "Started".into(),
                    message: "launcher started".into(),
                },
            ],
        }
    }

    #[test]
    fn describes_a_running_vm() {
        let text = describe(&view(), NOW).unwrap();
        let expected_head = "\
Name:          small
Namespace:     default
Labels:        app=small
               tier=web
Annotations:   <none>
API Version:   ironvisor.io/v1alpha1
Kind:          VirtualMachine
Created:       2024-05-01T12:25:15Z (5m ago)
Run Strategy:  Always
Status:        Running
Ready:         True
Spec:
  CPU:                       2 vCPU (2 core(s), 1 socket(s), 1 thread(s))
  Memory:                    256Mi
  Kernel Boot:               ironvisor/guest-kernel:debian-6.1 (args: root=/dev/vda rw)
  Termination Grace Period:  30s
  Disks:
    NAME            TYPE   BUS      VOLUME
    rootdisk        disk   virtio   containerDisk ironvisor/rootfs:busybox
    cloudinitdisk   disk   virtio   cloudInitNoCloud
    scratch         disk   virtio   emptyDisk 1Gi
  Interfaces:
    NAME      BINDING      MAC    NETWORK
    default   masquerade   auto   pod
Conditions:
  TYPE    STATUS   REASON        AGE   MESSAGE
  Ready   True     GuestBooted   3m
Instance:
  Phase:         Running
  Node:          node1
  Backend:       qemu-tcg
  Isolation:     Emulation
  Launcher PID:  4242
  Conditions:
    <none>
  Interfaces:
    NAME      INTERFACE   IP          MAC
    default   eth0        10.88.0.5   52:54:00:12:34:56
Events:
  Type      Reason              Age    Message
  ----      ------              ----   -------
  Normal    Started             2m     launcher started
  Warning   SoftwareEmulation   60s    no usable KVM; running under QEMU TCG
";
        assert_eq!(text, expected_head);
    }

    #[test]
    fn describes_a_stopped_vm_without_instance() {
        let mut v = view();
        v.vmi_json.clear();
        v.events.clear();
        v.status = "Stopped".into();
        v.ready = false;
        let text = describe(&v, NOW).unwrap();
        assert!(
            text.contains("Instance:\n  <none>: the VM is not running\n"),
            "{text}"
        );
        assert!(text.ends_with("Events:\n  <none>\n"), "{text}");
        assert!(text.contains("Ready:         False\n"), "{text}");
    }

    #[test]
    fn volume_sources() {
        let v = |json: Value| volume_source(&json);
        assert_eq!(
            v(
                serde_json::json!({"name": "d", "hostDisk": {"path": "/var/d.img", "type": "DiskOrCreate", "capacity": "1Gi"}})
            ),
            "hostDisk /var/d.img (DiskOrCreate, 1Gi)"
        );
        assert_eq!(
            v(serde_json::json!({"name": "d", "persistentVolumeClaim": {"claimName": "data"}})),
            "persistentVolumeClaim data"
        );
        assert_eq!(
            network_source(&serde_json::json!({"name": "n", "multus": {"networkName": "br1"}})),
            "multus br1"
        );
    }

    #[test]
    fn invalid_json_names_the_vm() {
        let mut v = view();
        v.vmi_json = "not json".into();
        let e = describe(&v, NOW).unwrap_err();
        assert!(
            e.to_string().contains("vmi_json for VM default/small"),
            "{e}"
        );
    }
}
