"""`embedtag store check|repair`: verify every shard of an embedding store; quarantine the bad ones."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from embedtag.cli._app import app
from embedtag.cli._options import QUIET, VERBOSE, TableJson, format_option, setup_logging

store_app = typer.Typer(help="Verify or repair an embedding store.", no_args_is_help=True)
app.add_typer(store_app, name="store")


def _print(report, fmt: TableJson, repaired: bool) -> None:
    if fmt == TableJson.json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
        return
    from rich.console import Console

    console = Console()
    console.print(f"{report.store}: {report.n_shards} shards, {report.n_clips} clips"
                  + (f" ({report.n_duplicates} duplicate rows, readers keep the last)" if report.n_duplicates else "")
                  + f", {report.n_error_shards} error shards, {report.n_failed} failed files not stored",
                  highlight=False)
    for f, problem in report.problems:
        console.print(f"  [red]bad[/] {f}: {problem}", highlight=False, soft_wrap=True)
    if repaired:
        if report.quarantined:
            console.print(f"moved {len(report.quarantined)} bad files to {Path(report.store) / 'quarantine'}; "
                          "the next `embedtag extract` embeds their clips again", highlight=False)
        else:
            console.print("nothing to repair", highlight=False)
    elif report.problems:
        console.print(f"run `embedtag store repair {report.store}` to move the bad files aside", highlight=False)
    else:
        console.print("[green]ok[/]")
    if report.n_temporaries and not repaired:
        console.print(f"{report.n_temporaries} temporary files left by a killed writer (the next write removes "
                      "them)", highlight=False)


@store_app.command("check", epilog="Example:\n\n  embedtag store check stores/office")
def check(store: Path = typer.Argument(..., help="An embedding store directory."),
          fmt: TableJson = format_option(TableJson.table, "table, or json (the check's findings)."),
          quiet: bool = QUIET, verbose: bool = VERBOSE) -> None:
    """Read every shard in full and check it against the store's layout; exit code 1 when some are bad.

    Errors shards and the labels overlay are checked too. `embedtag store repair` moves the bad ones aside."""
    setup_logging(quiet, verbose)
    from embedtag.store import open_store

    report = open_store(store).check()
    _print(report, fmt, repaired=False)
    if not report.ok:
        raise typer.Exit(1)


@store_app.command("repair", epilog="Example:\n\n  embedtag store repair stores/office")
def repair(store: Path = typer.Argument(..., help="An embedding store directory."),
           fmt: TableJson = format_option(TableJson.table, "table, or json (what was moved)."),
           quiet: bool = QUIET, verbose: bool = VERBOSE) -> None:
    """Move bad shards to STORE/quarantine/; the next `embedtag extract` embeds their clips again.

    Also removes the temporary files a killed writer left."""
    setup_logging(quiet, verbose)
    from embedtag.store import open_store

    report = open_store(store).repair()
    _print(report, fmt, repaired=True)
