"""Standalone node mode for real: ironvisor-handler with the KVM launcher inside nested KVM.

One L1 runs ``tests/e2e/l1/standalone.sh``: the node agent (``--backend kvm``) with the
real CNI bridge/host-local plugins, ip, nft, dnsmasq, sysctl and iptables-nft, the guest
image catalogue (``images.catalog`` layout) and ``examples/vm-dedicated.yaml`` (the small
VM with ``dedicatedCpuPlacement``: see tests/README.md, "Nested KVM and vCPU migration"), driven with
virtctl through apply, the serial console (boot log, typed commands, DHCP and traffic to
L1 through CNI), stop/start/restart, a handler restart (SIGTERM and SIGKILL) that
re-adopts the running launcher, and delete with nothing left behind. The scenario prints
``L1-FACT key=value`` lines; one test per step asserts on them.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import tempfile
from pathlib import Path

import pytest

from images import catalog
from images.build import Images
from images.common import REPO_ROOT
from tests.e2e.vmtest import L1_SCRIPTS, Facts, parse_facts, write_params
from tests.nested import l1

pytestmark = [
    pytest.mark.nested,
]

RELEASE = REPO_ROOT / "target" / "release"
HANDLER = Path(os.environ.get("IRONVISOR_HANDLER", RELEASE / "ironvisor-handler"))
VIRTCTL = Path(os.environ.get("IRONVISOR_VIRTCTL", RELEASE / "virtctl"))
BUILD_HINT = ("build them with 'cargo build --release --locked -p ironvisor-handler "
              "-p ironvisor-virtctl -p ironvisor-launcher'")

#: The node agent's tools (handler/net/DEPENDENCIES, handler/net/src/tool.rs). iptables is
#: iptables-nft: the multi-call binary, linked to its names by the scenario.
NODE_TOOLS = [
    Path("/usr/sbin/ip"),
    Path("/usr/sbin/nft"),
    Path("/usr/sbin/dnsmasq"),
    Path("/usr/sbin/sysctl"),
    Path("/usr/sbin/xtables-nft-multi"),
    Path("/usr/lib/cni/bridge"),
    Path("/usr/lib/cni/host-local"),
]
#: xtables extensions are dlopen()ed, so ldd does not list them.
XTABLES_LIBS = Path("/usr/lib/x86_64-linux-gnu/xtables")

#: Netfilter modules for the CNI bridge plugin's ipMasq (iptables-nft: nft_compat with the
#: xt matches/targets) and the handler's nftables masquerade/DNAT rules.
NET_MODULES = [
    "nf_tables", "nfnetlink", "nf_conntrack", "nf_nat", "nft_chain_nat", "nft_nat",
    "nft_masq", "nft_ct", "nft_compat", "x_tables", "xt_comment", "xt_MASQUERADE",
    "xt_addrtype", "xt_conntrack", "xt_mark", "xt_nat", "nft_fib_ipv4", "nft_reject_ipv4",
]

#: L1 memory: the initramfs holds the image catalogue (~130 MiB) and the guest has 256 MiB.
L1_MEM_MIB = 4096
L1_TIMEOUT_S = 480.0


@pytest.fixture(scope="module")
def standalone_bins(launcher: Path) -> list[Path]:
    """handler, virtctl and launcher release binaries; skips while one is missing."""
    missing = [p for p in (HANDLER, VIRTCTL) if not p.is_file()]
    if missing:
        pytest.skip(f"{', '.join(map(str, missing))} missing: {BUILD_HINT}")
    return [HANDLER, VIRTCTL, launcher]


@pytest.fixture(scope="module")
def facts(images: Images, l1_base: l1.L1Base, standalone_bins: list[Path],
          e2e_work: Path) -> Facts:
    """One L1 run of the whole standalone scenario."""
    for tool in NODE_TOOLS:
        if not tool.exists():
            pytest.fail(f"{tool} is missing: apt-get install the packages of "
                        "handler/net/DEPENDENCIES")
    run_dir = Path(tempfile.mkdtemp(prefix="standalone-", dir=e2e_work))
    images_dir = run_dir / "images"
    catalog.install(images, images_dir)
    token = secrets.token_hex(6)
    params = run_dir / "params"
    write_params(params, {"TOKEN": token})
    files = [
        (L1_SCRIPTS / "common.sh", "/e2e/common.sh"),
        (params, "/e2e/params"),
        (REPO_ROOT / "examples" / "vm-dedicated.yaml", "/e2e/vm-dedicated.yaml"),
        (images_dir, "/images"),
        (XTABLES_LIBS, str(XTABLES_LIBS)),
    ]
    spec = l1.L1Spec(script=L1_SCRIPTS / "standalone.sh", bins=[*standalone_bins, *NODE_TOOLS],
                     files=files, modules=NET_MODULES, mem_mib=L1_MEM_MIB, smp=2,
                     timeout_s=L1_TIMEOUT_S, name="e2e-standalone", echo=sys.stdout,
                     log_path=run_dir / "console.log")
    result = l1.run(spec, l1_base)
    l1_facts, guest_facts = parse_facts(result.output)
    l1_facts["_token"] = token
    print(f"\n# standalone L1: wall {result.wall_s:.1f} s, /init at {result.init_s} s, "
          f"scenario at {result.scenario_start_s} s; log {result.log_path}")
    for key in ("apply_to_running_ms", "apply_to_guest_init_ms", "guest_kernel_init_s",
                "stop_ms", "start_ms", "start_to_guest_booted_ms", "restart_ms",
                "restart_to_guest_booted_ms", "delete_ms"):
        print(f"# {key} = {l1_facts.get(key)}")
    return Facts(l1_facts, guest_facts, result.output, result)


def _need(facts: Facts, *keys: str) -> None:
    """Fails with the run's outcome when the scenario stopped before printing ``keys``."""
    missing = [k for k in keys if k not in facts.l1]
    if missing:
        tail = "\n".join(facts.output.splitlines()[-80:])
        pytest.fail(f"the scenario did not report {missing} "
                    f"(rc={facts.result.rc}, {facts.result.failure}); console tail:\n{tail}")


def test_l1_scenario_completed(facts: Facts) -> None:
    assert facts.result.rc == 0, f"{facts.result.failure}; see {facts.result.log_path}"
    assert facts.l1.get("scenario_done") == "yes"
    assert facts.l1["cgroup2"] == "yes"


def test_apply_runs_on_the_kvm_launcher(facts: Facts) -> None:
    _need(facts, "apply_to_running_ms", "get_status", "describe_backend")
    f = facts.l1
    assert f["apply_rc"] == "0", f.get("apply_output")
    assert "virtualmachine.ironvisor.io/dedicated created" in f["apply_output"], f["apply_output"]
    assert f["apply_to_running_ms"].isdigit(), f["apply_to_running_ms"]
    assert f["get_status"] == "Running"
    assert f["get_phase"] == "Running"
    assert re.fullmatch(r"10\.222\.0\.\d+", f["get_ip"]), f["get_ip"]
    assert f["get_backend"] == "kvm"
    assert f["describe_backend"] == "kvm"
    assert f["launcher_pid_1"].isdigit()
    assert f["launcher_exe_1"].endswith("/ironvisor-launcher"), f["launcher_exe_1"]
    assert int(f["launcher_uses_kvm"]) >= 1, "the launcher holds no /dev/kvm descriptor"
    # In the VM's cgroup (handler --cgroup-parent default /ironvisor) and network namespace.
    assert f["launcher_cgroup"] == "/ironvisor/default_dedicated", f["launcher_cgroup"]
    assert f["launcher_netns"].startswith("iv-") and f["launcher_netns"] == f["netns_list"]
    # The cgroup holds it to 256 MiB of guest memory plus 64 MiB, and 1 vCPU plus 128 tasks.
    assert f["cgroup_memory_max"] == str((256 + 64) << 20), f["cgroup_memory_max"]
    assert f["cgroup_pids_max"] == "129", f["cgroup_pids_max"]
    assert 0 < int(f["cgroup_memory_current"]) < (256 + 64) << 20, f["cgroup_memory_current"]
    assert 0 < int(f["cgroup_pids_current"]) <= 129, f["cgroup_pids_current"]
    # dedicatedCpuPlacement: L1 has CPUs 0-1, CPU 0 stays shared, the vCPU gets CPU 1.
    threads = dict(t.split("=", 1) for t in f["launcher_thread_cpus"].split())
    assert threads.get("vcpu0") == "1", f["launcher_thread_cpus"]
    assert f["dedicated_event"] == "vCPUs pinned to dedicated host CPUs 1", f["dedicated_event"]
    # The launcher the node agent started runs every thread under its seccomp filters.
    modes = [t.rsplit("=", 1) for t in f["launcher_thread_seccomp"].split()]
    assert modes and all(mode == "2" for _, mode in modes), f["launcher_thread_seccomp"]
    assert "vcpu0" in {name for name, _ in modes}, f["launcher_thread_seccomp"]
    # The node agent runs each KVM launcher as its own unprivileged user (uid = gid, from
    # 1800000000 on) with no capability.
    identities = {t.rsplit("=", 1)[1] for t in f["launcher_thread_identity"].split()}
    assert len(identities) == 1, f["launcher_thread_identity"]
    uid, gid, caps = identities.pop().split(":")
    assert uid == gid and int(uid) >= 1_800_000_000, f["launcher_thread_identity"]
    assert int(caps, 16) == 0, f["launcher_thread_identity"]
    # ... from its first instruction: it was never root (its monitor jailed it and
    # started it as that user).
    assert f["launcher_start_ids"] == f"{uid}:{uid}", f.get("launcher_start_ids")
    assert f["launcher_jailed_line"] == (
        f"launcher started jailed as uid {uid} gid {uid}, never root"), f["launcher_jailed_line"]
    # ... in a mount namespace of its own whose root holds only the VM's files at their
    # host paths, /dev/kvm and /dev/net/tun of its own, and the host facts it probes.
    assert f["launcher_own_mount_ns"] == "yes"
    top = set(f["launcher_root_top"].split())
    assert {"dev", "proc", "usr", "var", "run"} <= top, f["launcher_root_top"]
    assert top <= {"dev", "proc", "sys", "usr", "var", "run", "images"}, f["launcher_root_top"]
    files = f["launcher_root_files"].split()
    allowed = [
        r"\./dev/kvm", r"\./dev/net/tun",
        r"\./proc/(cpuinfo|meminfo)", r"\./sys/devices/system/cpu/online",
        r"\./usr/local/bin/ironvisor-launcher",
        r"\./var/lib/ironvisor/.*\.(json|qcow2|img)", r"\./images/.*",
        r"\./run/ironvisor/vmi/[0-9a-f-]+/sockets/(api|console)\.sock",
    ]
    strays = [p for p in files if not any(re.fullmatch(a, p) for a in allowed)]
    assert not strays, f"files in the jail that are not the VM's: {strays}"
    for needed in ("./dev/kvm", "./dev/net/tun", "./usr/local/bin/ironvisor-launcher"):
        assert needed in files, f["launcher_root_files"]
    assert any(p.endswith("/launcher.json") for p in files), f["launcher_root_files"]
    assert any(p.endswith("/sockets/api.sock") for p in files), f["launcher_root_files"]
    assert f["launcher_kvm_node"] == f"{uid}:{uid}:600", f["launcher_kvm_node"]


def test_console_shows_the_boot_and_takes_input(facts: Facts) -> None:
    _need(facts, "console_rc", "console_init_reached")
    f = facts.l1
    assert f["console_init_reached"] == "yes"
    assert f["apply_to_guest_init_ms"].isdigit()
    assert f["console_typed"] == "CONSOLE-TYPED-42"
    # KubeVirt's firmware.uuid and firmware.serial, read by the guest from SMBIOS.
    assert f.get("guest_dmi") == "Ironvisor/6a1c7d1e-8b3f-4c5a-9e2d-0123456789ab/CRM-0042", (
        f.get("guest_dmi"))
    # KubeVirt's devices.rng: the guest's hardware RNG is the virtio-rng device, and reads.
    assert f.get("guest_rng") == "virtio_rng.0/4096", f.get("guest_rng")
    # KubeVirt's clock.timezone: the guest's RTC keeps Asia/Kolkata's time, 5:30 h ahead of
    # L1's UTC clock (read on the console a moment before L1 noted its own time).
    ahead = int(f["guest_rtc_epoch"]) - int(f["l1_epoch_at_rtc"])
    assert 19_800 - 60 <= ahead <= 19_800 + 2, ahead
    assert f["console_rc"] == "0"
    # The session replays the boot log from the start (the launcher's console ring).
    assert int(f["console_kernel_banner"]) >= 1
    assert f["logs_rc"] == "0" and int(f["logs_lines"]) >= 1


def test_guest_network_through_cni(facts: Facts) -> None:
    _need(facts, "guest_dhcp", "guest_ping", "guest_wget")
    f = facts.l1
    assert "ip=10.0.2.2" in f["guest_dhcp"] and "router=10.0.2.1" in f["guest_dhcp"], f["guest_dhcp"]
    assert f["guest_addr"] == "10.0.2.2/24"
    assert f["guest_ping"] == "ok"
    assert f["guest_wget"] == f"l1-says-{f['_token']}"
    assert f["l1_ping_pod_ip"] == "ok"


def test_stop_start_restart(facts: Facts) -> None:
    _need(facts, "stop_ms", "start_ms", "restart_ms")
    f = facts.l1
    assert f["stop_ms"].isdigit() and f["stopped_status"] == "Stopped"
    assert f["stopped_launcher_alive"] == "no"
    assert f["stopped_launchers"] == "" and f["stopped_monitors"] == ""
    assert f["start_ms"].isdigit() and f["started_status"] == "Running"
    assert f["launcher_pid_2"] not in ("", f["launcher_pid_1"])
    assert f["restart_ms"].isdigit() and f["restarted_status"] == "Running"
    assert f["launcher_pid_3"] not in ("", f["launcher_pid_2"])
    assert f["restart_old_launcher_alive"] == "no"
    assert f["restarted_launchers"] == "1"
    # The booted guest shut down on the graceful stop (no hard stop after the grace period).
    assert "code 5" in f["restart_stop_detail"], f["restart_stop_detail"]


def test_handler_restart_readopts_the_launcher(facts: Facts) -> None:
    _need(facts, "readopt_term_pid", "readopt_kill_pid", "readopt_console")
    f = facts.l1
    assert f["handler_sigterm_rc"] == "0"
    assert f["after_sigterm_launcher_alive"] == "yes"
    assert f["readopt_term_status"] == "Running"
    assert f["readopt_term_pid"] == f["launcher_pid_3"]
    assert f["after_sigkill_launcher_alive"] == "yes"
    assert f["readopt_kill_status"] == "Running"
    assert f["readopt_kill_pid"] == f["launcher_pid_3"]
    assert f["readopt_kill_ip"] == f["ip_3"]
    assert int(f["readopt_console"]) >= 1


def test_delete_leaves_nothing_behind(facts: Facts) -> None:
    _need(facts, "delete_ms", "after_vmdir")
    f = facts.l1
    # What existed before, so that "none after" means something.
    assert f["before_netns"].startswith("iv-")
    assert f["before_tap"] == "1"
    assert int(f["before_veth"]) >= 1
    assert f["before_leases"] == "1"
    assert f["before_dnsmasq"] == "1"
    assert f["before_rundir"].strip() != ""
    assert f["delete_ms"].isdigit()
    assert f["after_get"] == "notfound"
    assert f["after_netns"] == "0"
    assert f["after_tap"] == "0"
    assert f["after_veth"] == "0"
    assert f["after_leases"] == "0"
    assert f["after_net_state"] == "0"
    assert f["after_launchers"] == "0"
    assert f["after_monitors"] == "0"
    assert f["after_dnsmasq"] == "0"
    assert f["after_rundir"] == "0"
    assert f["after_sockets"] == "0"
    assert f["after_vmdir"] == "absent"
    assert f["after_cgroup"] == "absent"
    assert f["handler_final_rc"] == "0"
