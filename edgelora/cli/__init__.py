"""`edgelora` console command. One module per subcommand; each has `register(subparsers)`.
The other modules are helpers, not subcommands: common (parser, output rule), flags (flag value
types), progress (progress lines), ctrl_c (Ctrl-C while the command starts or finishes: one line, exit
130), lifetime (the
process's start without garbage collection, its end at once when the command has returned),
demo_data and demo_plot (the demo's digits and figure), make_demo (a maintainer tool that rebuilds the
shipped demo bundle).

To add a subcommand: write `edgelora/cli/NAME.py` with a `register(subparsers)` that calls
`common.add_command(subparsers, "name", run, report, ...)`, and add it with its one-line summary to
parser.COMMANDS. Only the module of the command being run is imported (parser.build_parser), so `--help`
and each command load only what they use.
`run(args) -> dict` does the work and returns the result (printed as JSON with --json);
`report(result) -> str` is the text a person reads otherwise.

Exit codes: 0 success; 2 bad usage or bad input (one line on stderr, no traceback); 1 anything else.
"""
from __future__ import annotations

from .ctrl_c import during_work, is_the_command, outside_work

outside_work()  # first: a Ctrl-C during the imports below (and numpy's, onnxruntime's) is one line, not a traceback

from . import lifetime

if is_the_command():
    lifetime.start()  # no garbage collection while the modules load, until _run has the command's (lifetime.py)

import contextlib
import json
import math
import os
import signal
import sys
import warnings

from .parser import COMMANDS, CommandError, build_parser, command_of

USER_ERRORS = (ValueError, TypeError, FileNotFoundError)               # bad input: exit 2
__all__ = ["COMMANDS", "build_parser", "entry", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the exit code (the caller's process goes on)."""
    return _run(argv)


def entry() -> None:
    """The `edgelora` console script and `python -m edgelora.cli`: main(), then the process ends at once
    (lifetime.end: every file the command wrote is complete), or by the ordinary exit when it cannot."""
    code = main()
    lifetime.end(code)
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(argv)  # imports the named command's module only
        lifetime.started()
        args = parser.parse_args(argv)
    except ImportError as e:  # that command needs an optional extra that is not installed (e.g. onnx for kit)
        print(f"edgelora {command_of(argv)}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # while importing (numpy, onnxruntime: up to a second or two on a small board)
        print(f"edgelora {command_of(argv) or ''}".rstrip() + ": interrupted by Ctrl-C while starting; nothing was "
              "read or written", file=sys.stderr)
        return 130
    except SystemExit as e:  # --help, --version, usage errors (argparse has already printed)
        try:
            sys.stdout.flush()
        except OSError as failed:
            return _unwritable(failed)
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        from ..files.outputs import overwrite_allowed
        from .common import check_targets, hold_outputs
        with during_work(), _quiet_warnings(args), _blas_threads(args.threads), _sigterm_raises():
            with overwrite_allowed(check_targets(args)), hold_outputs(args):  # before any work: safe, one writer
                result = args.run(args)
    except (KeyboardInterrupt, Terminated) as e:
        print(interrupted(args, argv, e), file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except USER_ERRORS as e:
        _fail(args, e)
        return 2
    except ImportError as e:  # an optional extra this run needs (its message names the pip line)
        _fail(args, e)
        return 1
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence: one line, exit 1
        _fail(args, e, unexpected=True)
        return 1
    try:
        if args.json:
            print(json.dumps(_plain(result), indent=None, sort_keys=True, allow_nan=False))
        elif not args.quiet:
            print(args.report(result))
        sys.stdout.flush()
    except OSError as failed:
        return _unwritable(failed)
    return 0


def _unwritable(failed: OSError) -> int:
    """Stdout could not be written. Its reader has gone (`edgelora ... | head -1`): stop quietly, as Unix tools
    do (141). Anything else (a full disk): one line on stderr, exit 1. Either way stdout then goes to /dev/null,
    so that Python's exit does not report it a second time."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if isinstance(failed, BrokenPipeError):
        return 141
    print(f"edgelora: error: could not write the output to stdout: {failed.strerror or failed}", file=sys.stderr)
    return 1


class Terminated(BaseException):
    """SIGTERM arrived (raised like KeyboardInterrupt, so the same cleanup runs)."""


@contextlib.contextmanager
def _sigterm_raises():
    def handler(signum, frame):
        raise Terminated()
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        from ..runtime.stop import on_signals  # a signal also stops a backbone run inside onnxruntime
        with on_signals():
            yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(args, argv: list[str], e: BaseException) -> str:
    """One line: what stopped us, that what the outputs held is intact, and how to resume."""
    why = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
    try:
        declared = args.targets(args)[0] if getattr(args, "targets", None) else []
    except Exception:  # noqa: BLE001 - interrupted while the outputs were being checked: say less
        declared = []
    outputs = [(flag, path, kind) for flag, path, kind in declared if path is not None]
    kept = [str(path) for flag, path, kind in outputs if not kind.container and flag != "--checkpoint-dir"]
    text = f"edgelora {args.command}: interrupted by {why}" +         (f"; nothing was saved to {' or '.join(kept)} (what was there, if anything, is intact)" if kept else "")
    checkpoints = [path for flag, path, _ in outputs if flag == "--checkpoint-dir"]
    holds = _checkpoint_holds(checkpoints[0]) if checkpoints else None
    if holds:
        resume = [*argv, "--resume"] if "--resume" not in argv else argv
        import shlex
        text += f"; {checkpoints[0]} {holds}: continue with: edgelora {shlex.join(resume)}"
    elif checkpoints:
        text += (f"; no epoch had finished, so {checkpoints[0]} holds no checkpoint (what the Skip-Cache computed "
                 f"is kept): run the same command again")
    elif hasattr(args, "checkpoint_dir"):
        text += "; with --checkpoint-dir DIR a run can be resumed"
    return text


def _checkpoint_holds(folder) -> str | None:
    """What the checkpoint in `folder` lets --resume skip (runtime/cv_checkpoint.describe), None: no checkpoint."""
    from ..files.checkpoint import load_checkpoint
    from ..runtime.cv_checkpoint import describe
    try:
        saved = load_checkpoint(folder)
    except Exception:  # noqa: BLE001 - a damaged one is no checkpoint to continue from
        return None
    return describe(saved) if saved is not None else None


def _fail(args, e: Exception, unexpected: bool = False) -> None:
    """One line on stderr; the traceback too with --verbose."""
    if args.verbose:
        import traceback
        traceback.print_exc(file=sys.stderr)
    message = " ".join(str(e).split()) or type(e).__name__
    kind = f"{type(e).__name__}: " if unexpected and not isinstance(e, CommandError) else ""
    print(f"edgelora {args.command}: error: {kind}{message}", file=sys.stderr)


@contextlib.contextmanager
def _quiet_warnings(args):
    """Warnings (e.g. a repaired cache) as one `edgelora CMD: warning: ...` line; none with --quiet."""
    def show(message, category, filename, lineno, file=None, line=None):
        if not args.quiet:
            print(f"edgelora {args.command}: warning: {' '.join(str(message).split())}", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _blas_threads(n: int):
    """Limit numpy's BLAS threads too when threadpoolctl is installed (it is optional)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=n):
        yield


def _plain(value):
    """`value` as strict JSON data (RFC 8259 has no NaN or Infinity): numpy scalars as numbers, a non-finite
    number as null, paths and other objects as text."""
    kind = type(value)
    if kind is float:   # the leaves first: a fine-tune's result holds hundreds of numbers
        return value if math.isfinite(value) else None
    if value is None or kind is str or kind is int or kind is bool:
        return value
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value if value is None or isinstance(value, (bool, int, str)) else str(value)
