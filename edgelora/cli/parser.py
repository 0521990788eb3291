"""The `edgelora` parser: the table of subcommands and their lazy registration.

A command's module is imported only when that command runs (or asks for its --help), so `edgelora --help`
needs neither numpy nor onnxruntime, and each command imports only what it uses: `kit` and `merge` import
onnx, `demo` matplotlib, `fleet` flwr; `finetune`, `eval`, `predict`, `store` and `personalize` none of them
(tests/test_cli_imports.py). This module imports nothing but argparse.
"""
from __future__ import annotations

import argparse
from importlib import import_module

# name -> (module in edgelora/cli, one-line summary for `edgelora --help`), in `--help` order
COMMANDS = {
    "finetune": ("finetune", "train a Skip2-LoRA adapter on labelled samples"),
    "eval": ("evaluate", "measure accuracy, macro-F1 and loss on labelled samples"),
    "predict": ("predict", "predict labels or probabilities and save them as .npy"),
    "cache": ("cache", "show or clear a bundle's on-disk Skip-Cache"),
    "demo": ("demo", "see it work: fix a scanner shift on the device in seconds"),
    "export": ("export", "turn a model (ONNX, .pt2, or torch factory) into a bundle"),
    "merge": ("merge", "write an adapter as plain ONNX for deployment"),
    "kit": ("kit", "write the training kit: fine-tuning as plain ONNX graphs"),
    "personalize": ("personalize", "personalise a named adapter with new labelled samples"),
    "store": ("store", "list, show, roll back, pin or delete versioned adapters"),
    "fleet": ("fleet", "federated fine-tuning of a fleet of devices (Flower)"),
}


class CommandError(Exception):
    """A failure whose message is written for the user as it is (exit 1), e.g. a missing optional package."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (`edgelora eval: error: ...`) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def summary(name: str) -> str:
    """The one-line summary of command `name`, as `edgelora --help` lists it."""
    return COMMANDS[name][1]


def command_of(argv: list[str]) -> str | None:
    """The subcommand `argv` names: its first word that is not an option (the top level has only the
    value-less options -h/--help and --version), or None."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> Parser:
    """The parser with every subcommand (argv None), or with only the one `argv` names registered in full
    (its module imported) and the others as one-line entries for the listing; a module that needs a missing
    optional package raises ImportError here."""
    from .. import __version__
    parser = Parser(prog="edgelora", description="On-device Skip2-LoRA fine-tuning over a frozen ONNX backbone. "
                    "Run `edgelora demo` to see it work, `edgelora COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"edgelora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    chosen = None if argv is None else command_of(argv)
    for name, (module, text) in COMMANDS.items():
        if argv is None or name == chosen:
            import_module(f"{__package__}.{module}").register(sub)
        else:
            sub.add_parser(name, help=text, add_help=False)
    return parser
