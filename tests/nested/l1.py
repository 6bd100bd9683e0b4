"""Nested-KVM harness: run a scenario script inside an "L1" VM that has a working /dev/kvm.

The host's /dev/kvm (PVM) cannot run stock guests, but QEMU's TCG emulates AMD SVM with
nested paging: an L1 booted with ``-cpu EPYC,+svm,+npt`` loads ``kvm_amd`` and its own
/dev/kvm runs real KVM guests ("L2"). This module builds the L1 initramfs (a cached base
with busybox and the KVM/tun/bridge modules, plus a per-run overlay with the programs,
files and scenario), boots it, streams its console and returns the scenario's exit code.

Library use::

    from tests.nested import l1
    result = l1.run(l1.L1Spec(script=Path("x.sh"), bins=[Path("/usr/bin/qemu-system-x86_64")]))
    assert result.rc == 0, result.failure
"""

from __future__ import annotations

import logging
import os
import re
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from images.build import Images, build as build_images
from images.common import (
    REPO_ROOT,
    ToolError,
    build_lock,
    package_sources,
    source_date_epoch,
    up_to_date,
)
from images.cpio import CpioError, Staging, concatenate, pack
from images.elf import ElfError, runtime_files
from images.initramfs import InitramfsError, find_busybox, stage_base, stage_modules
from images.kmod import ModuleError, ModuleIndex

log = logging.getLogger("tests.nested")

#: Where the L1 base image, per-run overlays and logs live (outside git).
CACHE_DIR = REPO_ROOT / ".cache" / "nested"

#: Modules L1 must load (with their dependencies) and ones loaded when the kernel has them.
L1_MODULES = ["irqbypass", "kvm", "kvm_amd", "tun"]
L1_OPTIONAL_MODULES = ["bridge", "stp", "llc", "veth"]

L1_INIT = Path(__file__).resolve().parent / "l1-init.sh"

#: In-archive list of the per-run extra modules (``L1Spec.modules``), loaded by /init
#: after the base ones.
EXTRA_MODULES_LIST = "etc/nested/modules.extra"

#: In-archive module parameters, one "<module file name without .ko> <name=value ...>" per
#: line, given to insmod by /init.
MODULE_PARAMS = "etc/nested/module-params"

#: The console line carrying the scenario's exit code.
EXIT_MARKER = re.compile(r"NESTED-L1-EXIT=(\d+)")
#: Printed by the L1 /init as soon as userspace runs.
INIT_MARKER = "NESTED-L1-INIT"
SCENARIO_MARKER = "NESTED-L1-SCENARIO-START"

#: Exit code of :func:`run` when the L1 VM never reported one (timeout, crash, bad image).
NO_MARKER_RC = 124


class HarnessError(RuntimeError):
    """The L1 image could not be assembled or QEMU could not be started."""


@dataclass
class L1Spec:
    """What to run inside L1."""

    #: Shell script run as /scenario.sh (by busybox sh, cwd /tmp).
    script: Path
    #: Programs copied in at their own absolute path (plus /usr/local/bin/<name>), each with
    #: the shared libraries ``ldd`` lists and its ELF interpreter.
    bins: list[Path] = field(default_factory=list)
    #: (host file or directory, absolute path inside L1).
    files: list[tuple[Path, str]] = field(default_factory=list)
    #: L1 memory in MiB.
    mem_mib: int = 4096
    #: L1 vCPUs (TCG threads).
    smp: int = 2
    #: Wall-clock limit for the whole L1 run, in seconds.
    timeout_s: float = 900.0
    #: Longest a run may print nothing on its console, in seconds, before it is taken for
    #: hung and killed. L1 and every scenario print as they go (the slowest scenario, a
    #: Debian disk booting in nested KVM, is never quiet for a minute); an L1 or L2 frozen
    #: by the emulated platform prints nothing again, and waiting out the whole timeout
    #: for it cost a CI run 15 minutes.
    silence_limit_s: float = 300.0
    #: Console log file; a fresh one under .cache/nested/logs when None.
    log_path: Path | None = None
    #: Copy the console to this stream as it arrives (None: silent).
    echo: TextIO | None = sys.stdout
    #: Label for log file names.
    name: str = "l1"
    #: gzip the per-run archive (smaller, but L1 then inflates it under TCG).
    compress_overlay: bool = False
    #: Extra kernel modules for this run (e.g. netfilter), put in the per-run archive with
    #: their dependencies and loaded by /init after the base ones. Modules this kernel
    #: lacks are skipped; ones already in the base (or built in) are not loaded twice.
    modules: list[str] = field(default_factory=list)
    #: Whether L1's KVM gives its guests nested paging (``kvm_amd npt``). Off by default:
    #: TCG's emulation of nested paging corrupts an L2 vCPU now and then when L1 moves its
    #: thread to the other L1 CPU in mid-run; with L1's KVM on shadow page tables no guest
    #: faulted, vCPU threads left to L1's scheduler or moved every 200 ms (tests/README.md,
    #: "Nested KVM and vCPU migration"), so nested tests need not pin vCPUs. Boots are
    #: ~1.3x slower that way; the boot benchmark turns it on to measure as it always has.
    nested_paging: bool = False


def module_params(spec: L1Spec) -> str:
    """The per-run module parameters file (see :data:`MODULE_PARAMS`)."""
    return "" if spec.nested_paging else "kvm-amd npt=0\n"


@dataclass
class L1Result:
    """How the L1 run ended."""

    #: The scenario's exit code, or :data:`NO_MARKER_RC` when L1 never printed one.
    rc: int
    #: Full console output (``\\r`` removed).
    output: str
    log_path: Path
    #: Seconds from starting QEMU to its exit (or kill).
    wall_s: float
    #: Seconds from starting QEMU to the L1 /init's first line (None if never seen).
    init_s: float | None
    #: Seconds from starting QEMU to the scenario's start (None if never seen).
    scenario_start_s: float | None
    timed_out: bool
    qemu_returncode: int | None
    #: Human-readable reason when rc is non-zero.
    failure: str | None = None
    #: The L1 kernel panic line of an earlier attempt that was retried (see :func:`run`).
    retried_after: str | None = None

    @property
    def marker_seen(self) -> bool:
        """True when L1 printed NESTED-L1-EXIT."""
        return EXIT_MARKER.search(self.output) is not None


def qemu_binary() -> Path:
    """The host's qemu-system-x86_64."""
    found = shutil.which("qemu-system-x86_64")
    if found is None:
        raise HarnessError("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    return Path(found)


@dataclass(frozen=True)
class L1Base:
    """The cached, scenario-independent part of L1: kernel and base initramfs."""

    kernel: Path
    initrd: Path
    kernel_version: str
    #: ``lib/modules/<release>`` of the L1 kernel (for ``L1Spec.modules``).
    modules_dir: Path | None = None


def prepare_base(images: Images | None = None, *, cache_dir: Path = CACHE_DIR,
                 force: bool = False) -> L1Base:
    """Build (or reuse) the L1 kernel and base initramfs in ``cache_dir``."""
    try:
        return _prepare_base(images or build_images(), cache_dir, force)
    except (ModuleError, CpioError, InitramfsError, ToolError, OSError) as exc:
        raise HarnessError(f"cannot build the L1 base image in {cache_dir}: {exc}") from exc


def _prepare_base(images: Images, cache_dir: Path, force: bool) -> L1Base:
    cache_dir.mkdir(parents=True, exist_ok=True)
    kernel = cache_dir / "vmlinuz"
    initrd = cache_dir / "l1-base.cpio.gz"
    busybox = find_busybox()
    index = ModuleIndex(images.modules_dir)
    plan = index.plan(L1_MODULES, L1_OPTIONAL_MODULES)
    inputs = [images.vmlinuz, busybox, L1_INIT, Path(__file__).resolve(), *package_sources(),
              *(p for _, p in plan.load_order)]
    with build_lock(cache_dir):
        if force or not up_to_date([kernel, initrd], inputs):
            log.info("building the L1 base image in %s", cache_dir)
            tmp = kernel.with_name("vmlinuz.tmp")
            shutil.copyfile(images.vmlinuz, tmp)
            os.replace(tmp, kernel)
            staging = Staging(cache_dir / "work" / "l1-base")
            stage_base(staging, busybox)
            stage_modules(staging, index, L1_MODULES, L1_OPTIONAL_MODULES,
                          list_path="etc/nested/modules")
            staging.add_file(L1_INIT, "init", 0o755)
            staging.add_bytes("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
            staging.add_bytes("etc/group", b"root:x:0:\n")
            staging.add_bytes("etc/hostname", b"ironvisor-l1\n")
            pack(staging.root, initrd, epoch=source_date_epoch(), compress=True)
            shutil.rmtree(staging.root, ignore_errors=True)
    return L1Base(kernel, initrd, images.kernel_version, images.modules_dir)


#: Directories the L1 /init mounts a file system over: a program staged below one of them
#: would be hidden, so it goes below :data:`HIDDEN_PATH_PREFIX` instead.
L1_MOUNT_POINTS = ("/tmp", "/run", "/var/run", "/dev", "/proc", "/sys")
HIDDEN_PATH_PREFIX = "/opt/nested"


def l1_program_path(program: Path) -> str:
    """Where ``program`` (an absolute host path) lives inside L1: its own path, unless
    that is below a directory L1 mounts over (a checkout under /tmp, say)."""
    path = str(program)
    if any(path == m or path.startswith(m + "/") for m in L1_MOUNT_POINTS):
        return HIDDEN_PATH_PREFIX + path
    return path


def stage_program(staging: Staging, program: Path) -> None:
    """Copy ``program`` to its own path (see :func:`l1_program_path`) with its runtime
    libraries and interpreter, and link it from /usr/local/bin."""
    program = Path(os.path.abspath(program))
    if not program.is_file():
        raise HarnessError(f"--bin {program}: no such file")
    if not os.access(program, os.X_OK):
        raise HarnessError(f"--bin {program}: not executable")
    inside = l1_program_path(program)
    staging.add_file(program, inside, 0o755)
    if str(program.parent) != "/usr/local/bin":
        staging.add_symlink(f"/usr/local/bin/{program.name}", inside)
    for lib in runtime_files(program):
        staging.add_file(Path(lib), lib, 0o755)


def stage_extra_modules(staging: Staging, modules_dir: Path, modules: list[str]) -> list[str]:
    """Stage ``modules`` (with dependencies) that the base image does not already load.

    Writes their in-archive paths, in load order, to :data:`EXTRA_MODULES_LIST`; returns
    the module names staged.
    """
    index = ModuleIndex(modules_dir)
    in_base = {name for name, _ in index.plan(L1_MODULES, L1_OPTIONAL_MODULES).load_order}
    plan = index.plan([], modules)
    release = modules_dir.name
    names: list[str] = []
    paths: list[str] = []
    for name, ko in plan.load_order:
        if name in in_base:
            continue
        dst = f"/lib/modules/{release}/{ko.relative_to(modules_dir)}"
        staging.add_file(ko, dst, 0o644)
        names.append(name)
        paths.append(dst)
    staging.add_bytes(EXTRA_MODULES_LIST, "".join(p + "\n" for p in paths).encode())
    return names


def build_overlay(spec: L1Spec, out: Path, modules_dir: Path | None = None) -> None:
    """Pack the per-run archive: programs, files, extra modules and the scenario script.

    Uncompressed unless ``spec.compress_overlay``: inflating tens of MiB under TCG costs
    more than copying them (measured: see tests/README.md). ``modules_dir`` (the L1
    kernel's ``lib/modules/<release>``) is needed when ``spec.modules`` is not empty.
    """
    if not spec.script.is_file():
        raise HarnessError(f"scenario script {spec.script} does not exist")
    staging = Staging(out.with_name(out.name + ".d"))
    if spec.modules:
        if modules_dir is None:
            raise HarnessError("L1Spec.modules needs the L1 kernel's modules directory")
        try:
            stage_extra_modules(staging, modules_dir, spec.modules)
        except ModuleError as exc:
            raise HarnessError(f"cannot stage the extra L1 modules {spec.modules}: {exc}") from exc
    for program in spec.bins:
        stage_program(staging, program)
    for src, dst in spec.files:
        if not dst.startswith("/"):
            raise HarnessError(f"--file {src}:{dst}: the destination must be an absolute path")
        if src.is_dir():
            staging.add_tree(src, dst)
        elif src.is_file():
            staging.add_file(src, dst)
        else:
            raise HarnessError(f"--file {src}:{dst}: {src} does not exist")
    staging.add_file(spec.script, "scenario.sh", 0o755)
    staging.add_bytes(MODULE_PARAMS, module_params(spec).encode())
    pack(staging.root, out, epoch=source_date_epoch(), compress=spec.compress_overlay)
    shutil.rmtree(staging.root, ignore_errors=True)


def qemu_command(base: L1Base, initrd: Path, mem_mib: int, smp: int) -> list[str]:
    """The L0 QEMU command line that boots L1 under TCG with SVM + nested paging."""
    return [
        str(qemu_binary()),
        "-accel", "tcg",
        "-cpu", "EPYC,+svm,+npt",
        "-m", str(mem_mib),
        "-smp", str(smp),
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-serial", "stdio",
        "-no-reboot",
        "-kernel", str(base.kernel),
        "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet",
    ]


#: Console logs kept in .cache/nested/logs (oldest removed first).
KEEP_LOGS = 200


def _prune_logs(log_dir: Path, keep: int) -> None:
    if not log_dir.is_dir():
        return
    logs = sorted(log_dir.glob("*.log"), key=lambda p: p.stat().st_mtime)
    for old in logs[:-keep] if keep else logs:
        old.unlink(missing_ok=True)


def _new_run_dir(name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    run_dir = CACHE_DIR / "runs" / f"{stamp}-{safe}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run(spec: L1Spec, base: L1Base | None = None) -> L1Result:
    """Boot L1 with ``spec``, stream its console, and return the scenario's result."""
    base = base or prepare_base()
    run_dir = _new_run_dir(spec.name)
    overlay = run_dir / "overlay.cpio"
    t_build = time.monotonic()
    initrd = run_dir / "l1-initrd.img"
    try:
        modules_dir = base.modules_dir
        if spec.modules and modules_dir is None:
            modules_dir = build_images().modules_dir
        build_overlay(spec, overlay, modules_dir)
        concatenate([base.initrd, overlay], initrd)
        overlay.unlink()
    except (CpioError, ElfError, ToolError, OSError) as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise HarnessError(f"cannot assemble the L1 initramfs for {spec.name}: {exc}") from exc
    log.info("L1 initrd %s (%d MiB) built in %.1f s", initrd, initrd.stat().st_size >> 20,
             time.monotonic() - t_build)
    if spec.log_path is None:
        _prune_logs(CACHE_DIR / "logs", keep=KEEP_LOGS)
    log_path = spec.log_path or (CACHE_DIR / "logs" / f"{run_dir.name}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = qemu_command(base, initrd, spec.mem_mib, spec.smp)
    try:
        result = _boot(cmd, spec, log_path)
        panic = l1_kernel_panic(result)
        if panic is None:
            return result
        # The L1 kernel itself died: a fault of the emulated platform (QEMU TCG's nested
        # SVM), which no user-space program in L1 can cause. Say so and try once more.
        warning = (f"L1 kernel panicked ({panic}); log {log_path}; "
                   "retrying the scenario once in a fresh L1")
        log.warning("%s", warning)
        print(f"\nWARNING: {warning}", file=sys.stderr)
        retry_log = log_path.with_name(log_path.stem + "-retry" + log_path.suffix)
        RETRIES.append(f"{spec.name}: {panic}")
        result = _boot(cmd, spec, retry_log)
        result.retried_after = panic
        return result
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


#: Every retry after an L1 kernel panic in this process ("scenario: panic"), so the test
#: session's summary can count them (tests/conftest.py).
RETRIES: list[str] = []


#: An L1 kernel panic as the L1 kernel prints it on its console (lines of L2 guests that
#: scenarios copy to the console carry a prefix, so they do not match).
L1_PANIC = re.compile(r"^\[\s*\d+\.\d+\] (Kernel panic - not syncing: .*)$", re.M)


def l1_kernel_panic(result: L1Result) -> str | None:
    """The panic message when the L1 kernel panicked before the scenario finished."""
    if result.marker_seen:
        return None
    match = L1_PANIC.search(result.output)
    return match.group(1) if match else None


def _boot(cmd: list[str], spec: L1Spec, log_path: Path) -> L1Result:
    start = time.monotonic()
    deadline = start + spec.timeout_s
    init_s: float | None = None
    scenario_s: float | None = None
    chunks: list[str] = []
    timed_out = False
    silent_for: float | None = None
    last_output = start
    pending = ""
    with open(log_path, "w") as logf:
        logf.write("# " + " ".join(cmd) + "\n")
        logf.flush()
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
        except OSError as exc:
            raise HarnessError(f"cannot start {cmd[0]}: {exc}") from exc
        if proc.stdout is None:
            proc.kill()
            raise HarnessError("QEMU started without a console pipe")
        fd = proc.stdout.fileno()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
                if not ready:
                    if time.monotonic() - last_output >= spec.silence_limit_s:
                        silent_for = time.monotonic() - last_output
                        break
                    continue
                last_output = time.monotonic()
                data = os.read(fd, 65536)
                if not data:
                    break
                text = data.decode(errors="replace").replace("\r", "")
                chunks.append(text)
                logf.write(text)
                logf.flush()
                if spec.echo is not None:
                    spec.echo.write(text)
                    spec.echo.flush()
                pending = (pending + text)[-4096:]
                now = time.monotonic() - start
                if init_s is None and INIT_MARKER in pending:
                    init_s = now
                if scenario_s is None and SCENARIO_MARKER in pending:
                    scenario_s = now
        finally:
            if proc.poll() is None:
                proc.kill()
            qemu_rc = proc.wait()
            proc.stdout.close()
        wall = time.monotonic() - start
        output = "".join(chunks)
        match = EXIT_MARKER.search(output)
        failure = None
        if match:
            rc = int(match.group(1))
            if rc != 0:
                failure = f"the L1 scenario exited with {rc}"
        else:
            rc = NO_MARKER_RC
            if timed_out:
                failure = f"timed out after {spec.timeout_s:.0f} s; QEMU was killed"
            elif silent_for is not None:
                failure = (f"no console output for {silent_for:.0f} s (L1 or its guest hung); "
                           "QEMU was killed")
            elif init_s is None:
                failure = f"L1 never reached its /init (QEMU exit code {qemu_rc})"
            else:
                failure = f"L1 stopped without printing NESTED-L1-EXIT (QEMU exit code {qemu_rc})"
        summary = (f"\n# L1 {spec.name}: rc={rc} wall={wall:.1f}s init={_fmt(init_s)} "
                   f"scenario_start={_fmt(scenario_s)} timed_out={timed_out} "
                   f"hung={silent_for is not None}"
                   + (f" failure: {failure}" if failure else "") + "\n")
        logf.write(summary)
    return L1Result(rc, output, log_path, wall, init_s, scenario_s, timed_out, qemu_rc, failure)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"
