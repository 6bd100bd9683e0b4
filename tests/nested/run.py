"""Command line for the nested-KVM harness.

    python3 -m tests.nested.run --bin PATH [--bin PATH ...] --file SRC:DST [...] \\
        --script SCRIPT.sh [--mem 4096] [--smp 2] [--timeout 900] [--log FILE]

Exits with the scenario's exit code (124 when L1 never reported one).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from images.build import BuildError
from tests.nested import l1


def _file_arg(value: str) -> tuple[Path, str]:
    src, sep, dst = value.partition(":")
    if not sep or not src or not dst.startswith("/"):
        raise argparse.ArgumentTypeError(f"{value!r}: expected SRC:DST with an absolute DST")
    return Path(src), dst


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run L1 and return the scenario's exit code."""
    parser = argparse.ArgumentParser(prog="python3 -m tests.nested.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, action="append", default=[],
                        help="program to copy into L1 with its shared libraries")
    parser.add_argument("--file", type=_file_arg, action="append", default=[],
                        metavar="SRC:DST", help="file or directory to copy into L1")
    parser.add_argument("--script", type=Path, required=True, help="run as /scenario.sh in L1")
    parser.add_argument("--mem", type=int, default=4096, help="L1 memory in MiB")
    parser.add_argument("--smp", type=int, default=2, help="L1 vCPUs (TCG threads)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before QEMU is killed")
    parser.add_argument("--log", type=Path, default=None, help="console log file")
    parser.add_argument("--quiet", action="store_true", help="don't copy the console to stdout")
    parser.add_argument("--nested-paging", action="store_true",
                        help="give L2 nested paging (kvm_amd npt=1; off by default, see "
                             "tests/README.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    spec = l1.L1Spec(script=args.script, bins=args.bin, files=args.file, mem_mib=args.mem,
                     smp=args.smp, timeout_s=args.timeout, log_path=args.log,
                     echo=None if args.quiet else sys.stdout, name=args.script.stem,
                     nested_paging=args.nested_paging)
    try:
        result = l1.run(spec)
    except (l1.HarnessError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"L1 finished: rc={result.rc} wall={result.wall_s:.1f}s "
          f"l1_init={result.init_s if result.init_s is None else round(result.init_s, 1)}s "
          f"log={result.log_path}", file=sys.stderr)
    if result.failure:
        print(f"error: {result.failure}", file=sys.stderr)
    return result.rc


if __name__ == "__main__":
    sys.exit(main())
