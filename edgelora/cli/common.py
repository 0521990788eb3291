"""What every subcommand shares: its parser, data and model loading, outputs (flag types: flags.py)."""
from __future__ import annotations

import argparse
import contextlib
import math
import textwrap
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..files.adapter import CONFIG_FILE, Adapter, load_adapter
from ..files.bundle import Manifest
from ..files.data import as_inputs, as_targets, csv_rows, load_arrays, num_samples
from ..files.outputs import Kind, check_target
from ..files.output_lock import OutputBusyError, OutputLock
from ..runtime.backbone import Backbone
from . import flags
from .parser import CommandError, summary  # noqa: F401  - CommandError: commands raise common.CommandError

Run = Callable[[argparse.Namespace], dict]       # does the work, returns the JSON-able result
Report = Callable[[dict], str]                   # the result as text for a person
Output = tuple[str, "Path | None", Kind]         # (flag, path, kind of what is written there)
Input = tuple[str, "Path | None"]                # (what, path): never replaced, held or written into
Targets = Callable[[argparse.Namespace], tuple[list[Output], list[Input]]]


def _common(epochs: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output and resources")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    g.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (and --json output)")
    g.add_argument("-v", "--verbose", action="store_true",
                   help=("log every epoch to stderr; " if epochs else "") + "print a traceback on unexpected errors")
    g.add_argument("--threads", type=flags.positive_int, default=1, metavar="N",
                   help="CPU threads for onnxruntime and numpy (default 1, as on a small device)")
    return p


COMMON, COMMON_EPOCHS = _common(epochs=False), _common(epochs=True)


def add_command(subparsers, name: str, run: Run, report: Report, *, description: str, example: str,
                epochs: bool = False) -> argparse.ArgumentParser:
    """Register subcommand `name`: its parser (with the shared flags and its summary from parser.COMMANDS),
    what it runs and how it reports. `epochs`: the command trains, so --verbose also logs every epoch."""
    parser = subparsers.add_parser(name, help=summary(name), description=textwrap.fill(description, 90),
                                   parents=[COMMON_EPOCHS if epochs else COMMON],
                                   epilog="example:\n" + "\n".join("  " + line for line in example.strip().splitlines()),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run, report=report)
    return parser


# --- data and models ---------------------------------------------------------------------------------

def add_data_flags(parser: argparse.ArgumentParser, labels: bool, what: str = "samples") -> None:
    g = parser.add_argument_group("data (.npz, .npy or .csv)")
    g.add_argument("--data", required=True, type=Path, metavar="FILE", help=f"{what}: .npz, .npy or .csv")
    g.add_argument("--x-key", default="x", metavar="KEY",
                   help="array of inputs in a .npz (default x); for a bundle with several inputs, "
                        "the .npz holds one array per input name")
    if labels:
        g.add_argument("--y-key", default="y", metavar="KEY", help="array of labels/targets in a .npz (default y)")
        g.add_argument("--label-column", default="-1", metavar="NAME|INDEX",
                       help="label column of a .csv: header name or index (default -1, the last); labels are "
                            "class indices or the bundle's class names")
    else:
        g.add_argument("--label-column", default=None, metavar="NAME|INDEX",
                       help="label column of a .csv, ignored: header name or index (default: the last column if "
                            "the rows hold one value more than the bundle's input, else none)")


def load_data(args: argparse.Namespace, manifest: Manifest, labels: bool) -> tuple[dict, np.ndarray | None]:
    """Read --data and validate it against the bundle: ({input name: array}, targets or None)."""
    path: Path = args.data
    y_key = args.y_key if labels else None
    column = getattr(args, "label_column", None) if labels else None
    names = [s.name for s in manifest.inputs]
    if len(names) == 1:
        is_csv = path.suffix.lower() == ".csv"
        if is_csv and not labels:
            x, y = _csv_inputs(path, manifest, getattr(args, "label_column", None)), None
        else:
            x, y = load_arrays(path, args.x_key, y_key, column, max_memory=memory_limit(args))
        where = f"{path}['{args.x_key}']" if path.suffix.lower() == ".npz" else str(path)
        inputs = as_inputs(csv_rows(x, manifest.inputs[0], where) if is_csv else x, manifest, where)
    else:
        if path.suffix.lower() != ".npz":
            raise ValueError(f"{path}: this bundle has {len(names)} inputs {names}; give a .npz holding one "
                             f"array per input name")
        arrays = {name: load_arrays(path, name, None, max_memory=memory_limit(args))[0] for name in names}
        y = load_arrays(path, names[0], y_key)[1] if labels else None
        inputs = as_inputs(arrays, manifest, str(path))
    if not labels:
        return inputs, None
    if y is None:
        raise ValueError(f"{path}: no labels; give a .npz with arrays '{args.x_key}' and '{args.y_key}', or a "
                         f".csv with a label column (a .npy holds inputs only)")
    where = f"{path}['{args.y_key}']" if path.suffix.lower() == ".npz" else f"{path} label column"
    return inputs, as_targets(y, manifest, num_samples(inputs), where)


def memory_limit(args: argparse.Namespace) -> int | None:
    """Bytes the data may take in memory: --memory-budget if given, else what the system has available
    (MemAvailable; None where unknown)."""
    if getattr(args, "memory_budget", None) is not None:
        return int(args.memory_budget * 2**20)
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _csv_inputs(path: Path, manifest: Manifest, column: str | None) -> np.ndarray:
    """The inputs of a .csv whose label column, if any, is ignored (predict): the named column, else the last
    column when the rows hold one value more than the bundle's input."""
    x, y = load_arrays(path, "x", "y", "-1" if column is None else column)
    width = math.prod(d if isinstance(d, int) else 0 for d in manifest.inputs[0].shape[1:])
    if column is None and x.shape[1] + 1 == width and y.dtype.kind in "iuf":
        x = np.column_stack([x, y]).astype(np.float32)  # no label column: the last column was an input
    return x


def open_backbone(args: argparse.Namespace) -> Backbone:
    return Backbone(args.bundle, threads=args.threads)


def open_adapter(args: argparse.Namespace, manifest: Manifest) -> Adapter | None:
    return None if getattr(args, "adapter", None) is None else load_adapter(adapter_path(args.adapter), manifest)


ADAPTER_HELP = "adapter folder, or a stored adapter STORE/NAME (its current version) or STORE/NAME@vN"


def adapter_path(spec: str | Path) -> Path:
    """The folder of an adapter named as a folder, as STORE/NAME (the store's current version of NAME)
    or as STORE/NAME@vN (version N)."""
    from ..ops.store import STORE_FILE, AdapterStore   # the store's modules: only for commands that read adapters
    from ..ops.versions import parse_version
    path = Path(spec)
    if (path / CONFIG_FILE).exists() or "@" not in path.name and not (path.parent / STORE_FILE).is_file():
        return path  # a plain adapter folder (load_adapter says what is wrong with it, if anything)
    name, _, version = path.name.partition("@")
    store = AdapterStore(path.parent, create=False)
    if name not in store.names():
        raise FileNotFoundError(f"{spec}: store {path.parent} has no adapter {name!r} (adapters: {store.names()})")
    number = parse_version(version) if version else store.current(name)
    if number is None:
        raise ValueError(f"{spec}: adapter {name!r} has no current version yet; name one as "
                         f"{path.parent / name}@vN (versions: {store.version_numbers(name)})")
    folder = store.version_dir(name, number)
    if not folder.is_dir():
        raise FileNotFoundError(f"{spec}: adapter {name!r} has no version {number} "
                                f"(versions: {store.version_numbers(name)})")
    return folder


def add_overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {what} even if it holds something else (never the command's inputs, the "
                             f"current folder or one above it)")


def check_targets(args: argparse.Namespace) -> list[Path]:
    """Refuse, before any work, outputs that would replace what is not ours (edgelora.files.outputs); returns
    the outputs --overwrite lets the command replace."""
    if getattr(args, "targets", None) is None:
        return []
    outputs, inputs = args.targets(args)
    outputs = [(flag, Path(p), kind) for flag, p, kind in outputs if p is not None]
    protect = [(what, Path(p)) for what, p in inputs if p is not None]
    overwrite = getattr(args, "overwrite", False)
    for flag, path, kind in outputs:
        others = [(f"{other} folder" if k.folder else f"{other} file", p) for other, p, k in outputs if other != flag]
        try:
            check_target(path, kind, overwrite=overwrite, protect=protect + others, flag="--overwrite")
        except ValueError as e:
            raise ValueError(f"{flag}: {e}") from None
    return [path for _, path, kind in outputs if overwrite and not kind.container]


@contextlib.contextmanager
def hold_outputs(args: argparse.Namespace) -> Iterator[None]:
    """Hold the one-writer lock of every output the command declares (files.output_lock) for its whole run;
    a store is left to its own lock, which writers wait on."""
    outputs = args.targets(args)[0] if getattr(args, "targets", None) else []
    with contextlib.ExitStack() as stack:
        for flag, path, kind in outputs:
            if path is not None and not _is_store(kind):
                try:
                    stack.enter_context(OutputLock(path, flag))
                except OutputBusyError as e:
                    raise CommandError(str(e)) from None
        yield


def _is_store(kind: Kind) -> bool:
    """Whether `kind` is an adapter store's (a container, with a lock of its own)."""
    if not kind.container:
        return False
    from ..ops.store import STORE_KIND   # only for a command that writes into a container
    return kind is STORE_KIND


# --- text --------------------------------------------------------------------------------------------

def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def metric_rows(metrics: dict) -> list[tuple[str, str]]:
    """(label, value text) for accuracy / macro-F1 / loss, or MSE / MAE / loss, in that order."""
    names = [("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("mse", "MSE"), ("mae", "MAE"), ("loss", "loss")]
    return [(label, _fmt(k, metrics[k])) for k, label in names if k in metrics]


def metric_lines(metrics: dict, indent: str = "  ") -> list[str]:
    return [f"{indent}{label:<10} {value}" for label, value in metric_rows(metrics)]


def _fmt(key: str, value: float) -> str:
    return f"{100 * value:6.2f} %" if key in ("accuracy", "macro_f1") else f"{value:8.4f}"
