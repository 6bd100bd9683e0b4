//! `ironvisor-handler monitor --jail PLAN` as a real process: the "launcher" (a static
//! busybox standing in for it) starts as its own user in a root holding only the plan's
//! files, and what it leaves in its socket directory is removed once it ends.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ironvisor_handler::jailer::JailPlan;

const HANDLER: &str = env!("CARGO_BIN_EXE_ironvisor-handler");
const BUSYBOX: &str = "/bin/busybox";
const UID: u32 = 1_800_123_457;

struct Setup {
    dir: tempfile::TempDir,
    plan: JailPlan,
}

impl Setup {
    fn new() -> Self {
        ironvisor_prereq::root();
        ironvisor_prereq::path(BUSYBOX, "busybox (Debian package busybox-static)");
        let dir = tempfile::Builder::new()
            .prefix("ivjail-")
            .tempdir_in("/tmp")
            .unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("launcher.json"), b"{\"name\":\"vm\"}").unwrap();
        std::fs::write(path("vmlinux"), b"kernel bytes").unwrap();
        std::fs::write(path("disk.img"), b"").unwrap();
        std::fs::set_permissions(path("disk.img"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(path("secret"), b"not for the launcher").unwrap();
        std::fs::create_dir(path("sockets")).unwrap();
        std::fs::set_permissions(path("sockets"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let plan = JailPlan {
            uid: UID,
            gid: UID,
            root: path("jail"),
            program: PathBuf::from(BUSYBOX),
            read_only: vec![path("launcher.json"), path("vmlinux")],
            writable: vec![path("disk.img")],
            socket_dirs: vec![path("sockets")],
            devices: vec![PathBuf::from("/dev/null")],
        };
        Self { dir, plan }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs the monitor with the plan and `script` as the launcher; returns its exit code
    /// and the launcher's pid file.
    fn run(&self, script: &str, during: impl FnOnce(&Path)) -> i32 {
        let plan_file = self.path("jail.json");
        std::fs::write(&plan_file, serde_json::to_vec(&self.plan).unwrap()).unwrap();
        let mut monitor = Command::new(HANDLER)
            .arg("monitor")
            .arg("--status-file")
            .arg(self.path("status.json"))
            .arg("--pid-file")
            .arg(self.path("launcher.pid"))
            .arg("--log-file")
            .arg(self.path("launcher.log"))
            .arg("--jail")
            .arg(&plan_file)
            .args(["--", BUSYBOX, "sh", "-c", script])
            .spawn()
            .expect("run the monitor");
        during(&self.path("launcher.pid"));
        monitor.wait().unwrap().code().unwrap_or(-1)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("launcher.log")).unwrap_or_default()
    }
}

/// The launcher's pid from the monitor's pid file, once written.
fn launcher_pid(pid_file: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(pid_file) {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            return value["pid"].as_u64().unwrap() as u32;
        }
        assert!(Instant::now() < deadline, "no pid file");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root and busybox-static"]
fn the_launcher_starts_unprivileged_in_a_root_with_only_its_files() {
    let setup = Setup::new();
    let d = setup.dir.path().display().to_string();
    let script = format!(
        "bb={BUSYBOX}; \
         echo ids=$($bb id -u):$($bb id -g):$($bb id -G); \
         $bb find / | $bb sort | $bb sed 's/^/tree /'; \
         echo kernel=$($bb cat {d}/vmlinux); \
         echo guest-data >{d}/disk.img && echo disk=written; \
         echo x >>{d}/launcher.json 2>/dev/null || echo config=refused; \
         $bb touch /escape 2>/dev/null || echo root=refused; \
         $bb cat {d}/secret 2>/dev/null || echo secret=absent; \
         echo y >/dev/null && echo devnull=ok; \
         $bb touch {d}/sockets/api.sock && echo socket=made; \
         $bb sleep 2"
    );
    let mut status = String::new();
    let mut root_entries = BTreeSet::new();
    let code = setup.run(&script, |pid_file| {
        let pid = launcher_pid(pid_file);
        status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        for entry in std::fs::read_dir(format!("/proc/{pid}/root")).unwrap() {
            root_entries.insert(entry.unwrap().file_name().to_string_lossy().into_owned());
        }
    });
    let log = setup.log();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains(&format!("launcher started jailed as uid {UID} gid {UID}")),
        "{log}"
    );
    // Every user and group id is the launcher's, no supplementary group, no capability.
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        field("Uid:"),
        [UID; 4].map(|id| id.to_string()).join("\t"),
        "{status}"
    );
    assert_eq!(
        field("Gid:"),
        [UID; 4].map(|id| id.to_string()).join("\t"),
        "{status}"
    );
    assert_eq!(field("Groups:"), "", "{status}");
    for caps in ["CapPrm:", "CapEff:", "CapAmb:"] {
        assert_eq!(field(caps), "0000000000000000", "{caps} {status}");
    }
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert!(log.contains(&format!("ids={UID}:{UID}:{UID}\n")), "{log}");

    // The root holds the plan's files at their host paths, the device, the host facts.
    let tree: BTreeSet<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("tree "))
        .collect();
    let first = setup.dir.path().components().nth(1).unwrap();
    let first = first.as_os_str().to_string_lossy().into_owned();
    let expected_top: BTreeSet<String> = ["bin", "dev", "proc", "sys", first.as_str()]
        .map(String::from)
        .into();
    assert_eq!(root_entries, expected_top, "{log}");
    for path in [
        format!("{d}/vmlinux"),
        format!("{d}/launcher.json"),
        format!("{d}/disk.img"),
        format!("{d}/sockets"),
        BUSYBOX.to_string(),
        "/dev/null".to_string(),
        "/proc/cpuinfo".to_string(),
        "/proc/meminfo".to_string(),
    ] {
        assert!(tree.contains(path.as_str()), "{path} missing from {tree:?}");
    }
    for absent in [
        format!("{d}/secret"),
        format!("{d}/jail.json"),
        "/etc".into(),
    ] {
        assert!(!tree.contains(absent.as_str()), "{absent} is in {tree:?}");
    }
    for line in [
        "kernel=kernel bytes",
        "disk=written",
        "config=refused",
        "root=refused",
        "secret=absent",
        "devnull=ok",
        "socket=made",
    ] {
        assert!(log.contains(line), "{line} missing from {log}");
    }
    // The disk the guest writes was given to the launcher's user; what it wrote is there.
    let disk = std::fs::metadata(setup.path("disk.img")).unwrap();
    assert_eq!((disk.uid(), disk.gid()), (UID, UID));
    assert_eq!(
        std::fs::read_to_string(setup.path("disk.img")).unwrap(),
        "guest-data\n"
    );
    // The host sees none of the jail's mounts, and the sockets left are gone.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&setup.path("jail").display().to_string()));
    assert_eq!(std::fs::read_dir(setup.path("sockets")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_to_string(setup.path("status.json")).unwrap(),
        r#"{"code":0}"#
    );
}

#[test]
#[ignore = "needs root and busybox-static"]
fn a_file_the_launcher_user_cannot_read_stops_the_start_with_a_clear_error() {
    let mut setup = Setup::new();
    std::fs::set_permissions(
        setup.path("vmlinux"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    setup.plan.read_only.push(setup.path("vmlinux"));
    let code = setup.run("echo started", |_| {});
    let log = setup.log();
    assert_eq!(code, 1, "{log}");
    assert!(!log.contains("started\n"), "{log}");
    assert!(
        log.contains(&format!(
            "{} (mode 0600, owner 0:0) cannot be read by the launcher's user {UID}:{UID}",
            setup.path("vmlinux").display()
        )),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(setup.path("status.json")).unwrap(),
        r#"{"code":1}"#
    );
}
