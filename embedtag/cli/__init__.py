"""The ``embedtag`` command line: a thin Typer layer over the Python API.

Each stage owns a module here that adds its commands to ``app``, with the shared options of
:mod:`embedtag.cli._options` (``--model``, ``--format``, ``-k/--top-k``, ``-q``, ``-v``, ``--out -``). Errors the
library raises on purpose (:class:`~embedtag.errors.EmbedtagError`) are printed as one readable line with exit
code 1; a bad option is a usage error with exit code 2. Command modules import only typer at import time (heavy
libraries inside the command bodies), so that ``embedtag --help`` is fast.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import typer

from embedtag import __version__
from embedtag.cli._options import tidy_help

tidy_help()

app = typer.Typer(
    name="embedtag",
    help="Transfer learning on audio: embed clips with AudioSet-pretrained models, train heads, search, report.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Command modules; each defines its commands on ``app`` when imported (a module that is not there is skipped).
_COMMAND_MODULES = ["extract", "heads", "search", "finetune", "benchmark", "split", "store", "serve", "tag"]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"embedtag {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """embedtag: audio -> embeddings -> heads / search -> predictions and reports."""


for _name in _COMMAND_MODULES:
    if importlib.util.find_spec(f"embedtag.cli.{_name}") is not None:
        importlib.import_module(f"embedtag.cli.{_name}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app; an error is one line on stderr and exit code 1 (``-v`` adds the
    traceback). Usage errors (a bad option or value) are Typer's: the usage, the choices, exit code 2."""
    from embedtag.errors import EmbedtagError

    # TensorFlow's C++ logging drowns the progress bars; users can still raise it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        # standalone mode: Typer prints usage errors and turns typer.Exit / Ctrl-C into exit codes itself
        app(args=argv)
    except EmbedtagError as exc:
        _fail(str(exc))
    except OSError as exc:  # a file the user named: missing, unreadable, a full disk
        _fail(str(exc))
    except Exception as exc:  # a bug: still one line for the user, the traceback with -v
        _fail(f"unexpected {type(exc).__name__}: {exc} (a bug in embedtag: please report it; -v shows the "
              "traceback)")


def _fail(message: str) -> None:
    import logging

    from rich.console import Console
    from rich.markup import escape

    logging.getLogger("embedtag").debug("traceback of the error below (shown with -v)", exc_info=True)
    # escaped: messages hold brackets that are not markup (pip install 'embedtag[ray]')
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(1)
