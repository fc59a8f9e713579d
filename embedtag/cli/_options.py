"""The vocabulary every ``embedtag`` command shares, defined once. New commands use these; do not redefine them.

In a command::

    from embedtag.cli._options import (OUT_STDOUT, QUIET, VERBOSE, Format, device_option, format_option, info,
                                       model_option, resolve_model, setup_logging, top_k_option, write_output)

    @app.command(epilog="Example:\n\n  embedtag mycmd stores/x --format json")   # an example is required
    def mycmd(store: Path = typer.Argument(...),
              model: str | None = model_option(),             # --model/-m; None: the registry's default
              k: int = top_k_option(5, "Neighbours per query."),      # -k/--top-k
              fmt: Format = format_option(Format.table),      # --format table|json|csv (TableJson, CsvJson: subsets)
              out: str = OUT_STDOUT,                          # --out/-o, "-" (the default) is stdout
              device: str = device_option(),                  # --device auto|cpu|cuda|cuda:N
              quiet: bool = QUIET, verbose: bool = VERBOSE):  # -q/--quiet, -v/--verbose: on EVERY command
        setup_logging(quiet, verbose)                         # first line of the body
        model = resolve_model(model)
        ...                                                   # heavy imports (pandas, torch...) here, not above
        write_output(text_or_frame, out)                      # results: stdout or --out
        info(f"wrote {out}", quiet)                           # a line for a person: stderr, hidden by -q

An artifact written to a directory keeps a required ``--out/-o`` (no default directory); ``--overwrite`` replaces
one of the same kind. tests/test_cli_contract.py checks every registered command against these rules.

Rules: results go to stdout (or ``--out``), everything for a person (progress, "wrote X") to stderr, so
``embedtag predict ... --out - | ...`` stays clean. A bad option value is a usage error (exit 2, choices listed);
a library :class:`~embedtag.errors.EmbedtagError` is one line and exit 1 (see :func:`embedtag.cli.main`).
This module imports only typer and the standard library: ``embedtag --help`` must stay fast.
"""

from __future__ import annotations

import logging
import re
import sys
from enum import Enum
from pathlib import Path

import typer

log = logging.getLogger("embedtag")


# ------------------------------------------------------------------------------------------------ -q / -v
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars or info lines (results and errors still print).")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Debug messages from the embedtag logger on stderr.")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (tests and notebooks swap it), not the one seen at creation."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Route the ``embedtag`` logger to stderr: DEBUG with ``-v``, WARNING with ``-q``, INFO otherwise.
    ``-q`` and ``-v`` together are a usage error (exit 2)."""
    if quiet and verbose:
        raise typer.BadParameter("-q/--quiet and -v/--verbose exclude each other")
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    log.setLevel(level)
    handler = next((h for h in log.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:  # one handler however often a process runs commands (tests)
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname).1s %(name)s: %(message)s"))
        log.addHandler(handler)
    handler.setLevel(level)


def info(message: str, quiet: bool = False) -> None:
    """A line for a person ("wrote X", "12 clips -> Y"): stderr, so stdout keeps only results; hidden by -q."""
    if not quiet:
        typer.echo(message, err=True)


# ------------------------------------------------------------------------------------------------ --model
def model_option(default: str | None = None, help: str = "Backbone (see `embedtag models`).") -> typer.Option:
    """``--model/-m``: the backbone. ``default=None`` means the registry's default backbone, resolved by
    :func:`resolve_model` (so that ``--help`` need not import the registry)."""
    # no "[...]" in help texts: rich markup would swallow it
    return typer.Option(default, "--model", "-m", help=help + (" Default: the one `embedtag models` stars."
                                                                if default is None else ""))


#: The old name of ``--model`` in benchmark and finetune; still accepted, not shown in --help.
BACKBONE_ALIAS = typer.Option(None, "--backbone", hidden=True, help="Alias of --model.")


def resolve_model(model: str | None, backbone: str | None = None) -> str:
    """``--model`` (or the hidden ``--backbone`` alias), else the registry's default backbone."""
    if model and backbone and model != backbone:
        raise typer.BadParameter(f"--model {model} and --backbone {backbone} disagree (--backbone is an alias)")
    chosen = model or backbone
    if chosen:
        return chosen
    from embedtag.embeddings import registry

    return registry.DEFAULT_MODEL


# ------------------------------------------------------------------------------------------------ --format
class Format(str, Enum):
    """Every machine-readable output offers these (a command may offer a subset: :class:`TableJson`)."""

    table = "table"
    json = "json"
    csv = "csv"


class TableJson(str, Enum):
    """For nested results (a profile, an evaluation) that have no one-table CSV form."""

    table = "table"
    json = "json"


class CsvJson(str, Enum):
    """For tables written to a file or stdout (predictions)."""

    csv = "csv"
    json = "json"


def format_option(default: Enum, help: str = "Output format.") -> typer.Option:
    """``--format`` with its choices shown in --help (the command's annotation, Format or TableJson, lists them)."""
    return typer.Option(default, "--format", help=help, case_sensitive=False)


#: The old ``--json`` flag of profile and index evaluate: ``--format json``, not shown in --help.
JSON_ALIAS = typer.Option(False, "--json", hidden=True, help="Alias of --format json.")


# ------------------------------------------------------------------------------------------------ -k / --top-k
def top_k_option(default: int | None, help: str) -> typer.Option:
    """``-k/--top-k``: how many results (neighbours, tags) per query or clip."""
    return typer.Option(default, "--top-k", "-k", min=1, help=help)


# ------------------------------------------------------------------------------------------------ noisy labels
#: ``--noisy-weight`` of fit-head and finetune: one default. 0.3 is the only down-weighting ever measured
#: (benchmarks/README.md, heads_real, noisy labels: mean CV lwlrap over logreg and mlp at 20/40/60 % noise 0.819
#: vs 0.818 for weight 1, and better where the noise is heaviest: 0.808 vs 0.798 at 60 %); finetune's former 0.5
#: was never compared with anything. It only matters for datasets with a "noisy" subset (FSDKaggle2019).
NOISY_WEIGHT = 0.3


# ------------------------------------------------------------------------------------------------ --mode
class Mode(str, Enum):
    """``--mode`` of fit-head and finetune: single- or multi-label."""

    auto = "auto"
    multi = "multi"
    single = "single"


#: ``--mode`` -> the ``multi_label=`` of embedtag.heads.fit_head and embedtag.finetune.finetune
MULTI_LABEL = {"auto": "auto", "multi": True, "single": False}


def mode_option() -> typer.Option:
    return typer.Option(Mode.auto, "--mode", help="auto (single-label when every clip has exactly one label), multi "
                                                  "(independent sigmoids) or single (softmax).")


# ------------------------------------------------------------------------------------------------ --device
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _check_device(value: str) -> str:
    # the same set embedtag.embeddings.backbones.base.resolve_device accepts (no "mps": no backbone runs there)
    if value is not None and not _DEVICE.match(value.lower()):
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(DEVICES)}")
    return value.lower() if value else value


def device_option(help: str = "Where the network runs.") -> typer.Option:
    """``--device auto|cpu|cuda|cuda:N`` (auto: CUDA when torch sees a GPU, else CPU)."""
    return typer.Option("auto", "--device", metavar="auto|cpu|cuda|cuda:N", callback=_check_device, help=help)


# ------------------------------------------------------------------------------------------------ --out
STDOUT = "-"
#: ``--out/-o`` for a results file, "-" (the default) being stdout: there is no silent default file.
OUT_STDOUT = typer.Option(STDOUT, "--out", "-o", help="Output file; - (the default) writes to stdout.")


def write_output(data, out: str | Path | None) -> str:
    """Write ``data`` (str, bytes, or a pandas DataFrame, written as CSV) to the file ``out``, or to stdout when
    ``out`` is ``"-"`` or None. A file is written atomically (readers never see half of it). Returns where."""
    if not isinstance(data, (str, bytes)):  # a DataFrame: pandas is imported by whoever made it
        data = data.to_csv(index=False, float_format="%.6g")
    if out is None or str(out) == STDOUT:
        if isinstance(data, bytes):
            sys.stdout.buffer.write(data)
        else:
            typer.echo(data, nl=not data.endswith("\n"))
        return "stdout"
    from embedtag.artifacts import atomic_write

    if isinstance(data, bytes):
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
    else:
        atomic_write(out, lambda tmp: Path(tmp).write_text(data, encoding="utf-8"))
    return str(out)


# ------------------------------------------------------------------------------------------------ --help
def tidy_help() -> None:
    """Typer >= 0.2x prints a ``<bool>`` type after every flag (``--quiet <bool>``), which reads as if the flag
    took a value. Flags show no type here; every other option keeps its type or choices."""
    from typer import core

    original = getattr(core.TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_embedtag_tidy", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return original(self, ctx)

    display_type_rich._embedtag_tidy = True
    core.TyperOption.display_type_rich = display_type_rich
