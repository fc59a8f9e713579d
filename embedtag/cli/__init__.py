"""The ``embedtag`` command line: a thin Typer layer over the Python API.

Each stage owns a module here that adds its commands to the one Typer app (:mod:`embedtag.cli._app`), with the
shared options of :mod:`embedtag.cli._options` (``--model``, ``--format``, ``-k/--top-k``, ``-q``, ``-v``,
``--out -``). Errors the library raises on purpose (:class:`~embedtag.errors.EmbedtagError`) are printed as one
readable line with exit code 1; a bad option is a usage error with exit code 2.

Start-up is kept short, since a job of a few seconds pays it in full: command modules import only typer at import
time (heavy libraries inside the command bodies), and :func:`main` imports only the module of the command it runs
(``embedtag extract`` need not build the other 17 commands; ``embedtag --help`` loads them all); at exit it
freezes the garbage collector, so that the interpreter's teardown does not walk PyTorch's objects (~0.35 s).
``app`` (this package's attribute) is the app with every command.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import sys

#: top-level command -> the module under embedtag.cli that defines it (tests check this against the modules)
COMMAND_MODULES = {
    "extract": "extract", "models": "extract", "info": "extract",
    "fit-head": "heads", "predict": "heads", "evaluate": "heads",
    "index": "search", "search": "search",
    "finetune": "finetune", "profile": "benchmark", "benchmark": "benchmark", "split": "split",
    "store": "store", "serve": "serve", "tag": "tag",
}


def load_commands(names=None):
    """Import the command modules (of ``names`` only, when given) so that their commands are on the app; return
    the app."""
    from embedtag.cli._app import app

    for module in dict.fromkeys(COMMAND_MODULES[n] for n in (COMMAND_MODULES if names is None else names)):
        importlib.import_module(f"embedtag.cli.{module}")
    return app


def __getattr__(name: str):
    if name == "app":  # ``from embedtag.cli import app``: the app with every command
        return load_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _command_of(argv: list[str]) -> str | None:
    """The command ``argv`` names (its first word that is not an option; the root has only flags)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app; an error is one line on stderr and exit code 1 (``-v`` adds the
    traceback). Usage errors (a bad option or value) are Typer's: the usage, the choices, exit code 2."""
    from embedtag.errors import EmbedtagError

    # TensorFlow's C++ logging drowns the progress bars; users can still raise it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # At exit the interpreter's last collections walk every object PyTorch or TensorFlow made: ~0.35 s after
    # `import torch` alone, a tenth of a short job. Frozen objects are skipped; atexit handlers still all run.
    # (Only at exit: no other code of the process is affected. Once per process, however often main() runs.)
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    try:
        args = sys.argv[1:] if argv is None else list(argv)
        command = _command_of(args)
        # only the command that runs is built; an unknown one (or none: --help) gets the full app for its message
        app = load_commands([command] if command in COMMAND_MODULES else None)
        # standalone mode: Typer prints usage errors and turns typer.Exit / Ctrl-C into exit codes itself
        app(args=args)
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
