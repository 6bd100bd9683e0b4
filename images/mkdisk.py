#!/usr/bin/env python3
"""Make a scratch disk image for tests.

    python3 images/mkdisk.py OUT --size-mib N [--file SRC:/DST ...] [--label L] [--raw]

ext4 (reproducible, see README.md) holding the given files, or with --raw a sparse,
zero-filled image without a file system.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from images.common import ToolError, source_date_epoch  # noqa: E402
from images.rootfs import DiskError, make_ext4, make_raw  # noqa: E402


def _file_arg(value: str) -> tuple[Path, str]:
    src, sep, dst = value.partition(":")
    if not sep or not src or not dst.startswith("/"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected SRC:/DST")
    return Path(src), dst


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size-mib", type=int, required=True)
    parser.add_argument("--file", type=_file_arg, action="append", default=[], metavar="SRC:/DST")
    parser.add_argument("--label", default="ivscratch")
    parser.add_argument("--raw", action="store_true", help="no file system (no --file allowed)")
    args = parser.parse_args(argv)
    try:
        if args.raw:
            if args.file:
                parser.error("--file needs a file system: drop --raw")
            make_raw(args.out, args.size_mib)
        else:
            files: dict[str, bytes | Path] = {dst: src for src, dst in args.file}
            make_ext4(args.out, args.size_mib, files, epoch=source_date_epoch(), label=args.label)
    except (DiskError, ToolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {args.size_mib} MiB {'raw' if args.raw else 'ext4'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
