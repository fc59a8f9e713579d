"""The ``embedtag`` command line: a thin Typer layer over the Python API.

Each stage owns a module here that adds its commands to ``app``; errors the library raises on purpose
(:class:`~embedtag.errors.EmbedtagError`) are printed as one readable line, not a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from embedtag import __version__

app = typer.Typer(
    name="embedtag",
    help="Transfer learning on audio: embed clips with AudioSet-pretrained models, train heads, search, report.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Command modules; each defines its commands on ``app`` when imported.
_COMMAND_MODULES = ["extract", "heads", "search", "finetune", "benchmark"]


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
    """Console entry point: run the app, turning EmbedtagError into one line on stderr and exit code 1."""
    from embedtag.errors import EmbedtagError

    # TensorFlow's C++ logging drowns the progress bars; users can still raise it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        # standalone mode: Typer prints usage errors and turns typer.Exit / Ctrl-C into exit codes itself
        app(args=argv)
    except EmbedtagError as exc:
        from rich.console import Console
        from rich.markup import escape

        # escaped: messages hold brackets that are not markup (pip install 'embedtag[ray]')
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
