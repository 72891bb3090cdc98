"""Command line: ``weaktumorseg segment|train|evaluate|pack ...`` (also ``python -m WeakTumorSegLib``).

One module per subcommand. Bad input ends with a non-zero exit and one line naming the file and
the problem (the traceback only with ``--debug``); outputs are written under temporary names and
renamed into place together, so a failed or interrupted run leaves no partial output.
docs/options.md describes every option.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import WeakTumorSegError
from . import evaluate, pack, segment, train
from .arguments import PROG, Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Weakly supervised brain-tumour segmentation of MR volumes from slice-level "
                                           "labels (the GAN-based method of Yoo et al., arXiv 2211.05269).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (segment, train, evaluate, pack):
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = [str(a) for a in argv]
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe is reported here, inside the handlers below
        return code
    except WeakTumorSegError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no outputs were written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (``... | head -1``): stop quietly, as on SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except MemoryError:
        print(f"{PROG}: error: out of memory (try --device cpu, or a machine with more memory)", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one readable line unless --debug
        if getattr(args, "debug", False):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{PROG}: error: unexpected {type(exc).__name__}: {first} (rerun with --debug for details)",
              file=sys.stderr)
        return 1
