"""The one Typer app every command module adds its commands to (see :mod:`embedtag.cli`)."""

from __future__ import annotations

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


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"embedtag {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """embedtag: audio -> embeddings -> heads / search -> predictions and reports."""
