"""Kernel module lookup and dependency ordering for initramfs builders.

Debian's kernel packages ship no ``modules.dep`` (depmod runs at install time), so the
dependencies come from each ``.ko`` itself (``modinfo -F depends``), and built-in modules
from ``modules.builtin``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from images.common import ToolError, run

log = logging.getLogger("images.kmod")


class ModuleError(RuntimeError):
    """A requested module is neither a ``.ko`` nor built in, or its dependencies loop."""


def normalize(name: str) -> str:
    """Module names treat ``-`` and ``_`` alike; the kernel reports them with ``_``."""
    return name.replace("-", "_")


@dataclass
class ModulePlan:
    """What to put in an initramfs for a set of requested modules."""

    #: Loadable modules, each after all of its dependencies: (name, path to the .ko).
    load_order: list[tuple[str, Path]] = field(default_factory=list)
    #: Requested (or depended-on) modules compiled into the kernel: nothing to load.
    builtin: list[str] = field(default_factory=list)
    #: Optional modules that this kernel doesn't have at all.
    absent: list[str] = field(default_factory=list)


class ModuleIndex:
    """The modules of one kernel release (``lib/modules/<release>``)."""

    def __init__(self, modules_dir: Path) -> None:
        self.modules_dir = modules_dir
        kernel_dir = modules_dir / "kernel"
        if not kernel_dir.is_dir():
            raise ModuleError(f"{modules_dir} has no kernel/ directory of modules")
        self._paths: dict[str, Path] = {}
        for ko in sorted(kernel_dir.rglob("*.ko")):
            self._paths[normalize(ko.name[: -len(".ko")])] = ko
        self._builtin: set[str] = set()
        builtin_file = modules_dir / "modules.builtin"
        if builtin_file.is_file():
            for line in builtin_file.read_text().splitlines():
                stem = line.strip().rsplit("/", 1)[-1]
                if stem.endswith(".ko"):
                    self._builtin.add(normalize(stem[: -len(".ko")]))
        self._deps: dict[str, list[str]] = {}

    def path(self, name: str) -> Path | None:
        """The ``.ko`` of a module, or None."""
        return self._paths.get(normalize(name))

    def is_builtin(self, name: str) -> bool:
        """True when the module is compiled into the kernel image."""
        return normalize(name) in self._builtin

    def depends(self, name: str) -> list[str]:
        """Direct dependencies of a loadable module (``modinfo -F depends``)."""
        key = normalize(name)
        if key not in self._deps:
            ko = self._paths[key]
            try:
                out = run(["modinfo", "-F", "depends", ko]).decode().strip()
            except ToolError as exc:
                raise ModuleError(f"cannot read the dependencies of {ko}: {exc}") from exc
            self._deps[key] = [normalize(d) for d in out.split(",") if d.strip()]
        return self._deps[key]

    def plan(self, required: list[str], optional: list[str] | None = None) -> ModulePlan:
        """Order ``required`` + ``optional`` modules and their dependencies for insmod.

        A required module that is neither a ``.ko`` nor built in is an error; a missing
        optional one is listed in :attr:`ModulePlan.absent`.
        """
        result = ModulePlan()
        done: set[str] = set()
        visiting: list[str] = []

        def visit(name: str, chain: list[str]) -> None:
            key = normalize(name)
            if key in done:
                return
            if key in visiting:
                raise ModuleError(f"module dependency cycle: {' -> '.join(visiting + [key])}")
            if key not in self._paths:
                if key in self._builtin:
                    result.builtin.append(key)
                    done.add(key)
                    return
                via = f" (needed by {' -> '.join(chain)})" if chain else ""
                raise ModuleError(
                    f"module {key}{via} is neither in {self.modules_dir}/kernel nor built in"
                )
            visiting.append(key)
            for dep in self.depends(key):
                visit(dep, chain + [key])
            visiting.pop()
            done.add(key)
            result.load_order.append((key, self._paths[key]))

        for name in required:
            visit(name, [])
        for name in optional or []:
            key = normalize(name)
            if key not in self._paths and key not in self._builtin:
                result.absent.append(key)
                continue
            visit(name, [])
        if result.builtin:
            log.info("built into the kernel, not loaded: %s", ", ".join(result.builtin))
        if result.absent:
            log.info("optional modules this kernel lacks: %s", ", ".join(result.absent))
        return result
