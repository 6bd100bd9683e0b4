"""What a dynamically linked program needs at run time: its ELF interpreter and libraries."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

_PT_INTERP = 3


class ElfError(RuntimeError):
    """A file is not a readable ELF program, or ldd could not resolve one of its libraries."""


def elf_interpreter(path: Path) -> str | None:
    """The PT_INTERP path of a 64-bit little-endian ELF file, or None for a static one."""
    try:
        with open(path, "rb") as f:
            header = f.read(64)
            if len(header) < 64 or header[:4] != b"\x7fELF":
                raise ElfError(f"{path} is not an ELF file")
            if header[4] != 2 or header[5] != 1:
                raise ElfError(f"{path} is not a 64-bit little-endian ELF file")
            (phoff,) = struct.unpack_from("<Q", header, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                ph = f.read(56)
                p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", ph)
                if p_type == _PT_INTERP:
                    f.seek(p_offset)
                    return f.read(p_filesz).rstrip(b"\0").decode()
    except OSError as exc:
        raise ElfError(f"cannot read {path}: {exc}") from exc
    return None


_LDD_ARROW = re.compile(r"^\s*(\S+)\s+=>\s+(\S+)\s+\(0x[0-9a-f]+\)\s*$")
_LDD_DIRECT = re.compile(r"^\s*(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


def parse_ldd(output: str, program: Path) -> list[str]:
    """Absolute library paths from ``ldd`` output (the vDSO and the like are skipped)."""
    libs: list[str] = []
    for line in output.splitlines():
        if m := _LDD_ARROW.match(line):
            if m.group(2) == "not":
                raise ElfError(f"{program}: shared library {m.group(1)} not found (ldd: {line.strip()})")
            libs.append(m.group(2))
        elif m := _LDD_DIRECT.match(line):
            libs.append(m.group(1))
        elif "=> not found" in line:
            raise ElfError(f"{program}: shared library not found: {line.strip()}")
    return libs


def runtime_files(program: Path) -> list[str]:
    """Absolute paths of the interpreter and every shared library ``program`` loads.

    Empty for a static program.
    """
    interp = elf_interpreter(program)
    if interp is None:
        return []
    proc = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ElfError(f"ldd {program} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    files = parse_ldd(proc.stdout, program)
    if interp not in files:
        files.append(interp)
    return sorted(set(files))
