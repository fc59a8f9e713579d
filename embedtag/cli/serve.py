"""`embedtag serve`: the tagging and similar-sound web service (FastAPI + uvicorn) with its page at `/`."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import typer

from embedtag.cli._app import app
from embedtag.cli._options import QUIET, VERBOSE, device_option, model_option


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None, allow_unauthenticated: bool) -> None:
    """Refuse to expose the service beyond this machine without a token (unless asked to)."""
    from embedtag.errors import ParamError

    if token is None and not allow_unauthenticated and not is_loopback(host):
        raise ParamError(f"--host {host} makes the service reachable from other machines: give --token TOKEN "
                         "(clients send 'Authorization: Bearer TOKEN'), or --allow-unauthenticated to serve "
                         "anyone who can reach it")
    if token is not None and not token.strip():
        raise ParamError("--token must not be empty")


@app.command(epilog="Examples:\n\n  embedtag serve                                   # AudioSet tags, http://127.0.0.1:8000\n\n"
                    "  embedtag serve --head heads/office --index indexes/office\n\n"
                    "  embedtag serve --run runs/office --host 0.0.0.0 --token \"$EMBEDTAG_TOKEN\"\n\n"
                    "  curl -F file=@clip.wav http://127.0.0.1:8000/v1/tag")
def serve(
    head: Path | None = typer.Option(None, "--head", help="A head (from `embedtag fit-head`) to tag with."),
    run: Path | None = typer.Option(None, "--run", help="A fine-tuned run (from `embedtag finetune`) to tag with."),
    index: Path | None = typer.Option(None, "--index", help="A similarity index (from `embedtag index build`) for "
                                                            "/v1/search and clip playback."),
    model: str | None = model_option(None, "Backbone for AudioSet tags when there is no head or run."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs --token."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    max_upload_mb: float = typer.Option(50.0, "--max-upload-mb", min=0.001, help="Largest upload accepted (413)."),
    max_duration_s: float = typer.Option(600.0, "--max-duration-s", min=0.1, help="Longest audio accepted (413)."),
    token: str | None = typer.Option(None, "--token", envvar="EMBEDTAG_TOKEN",
                                     help="Require 'Authorization: Bearer TOKEN' on /v1 and /metrics."),
    allow_unauthenticated: bool = typer.Option(False, "--allow-unauthenticated",
                                               help="Allow a non-loopback --host without --token."),
    device: str = device_option("Where the model runs."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Windows per shared model call."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0.0, help="Wait for concurrent requests to batch."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Requests in flight before answering 503."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="PyTorch CPU threads for the model "
                                                                      "(1 is steadier on a small, busy CPU)."),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Serve tagging and similar-sound search over HTTP, with a page at / and the API documented at /docs.

    Everything loads once at start-up; a head and an index of different backbones stop it with one line.
    """
    from embedtag.errors import EmbedtagError
    from embedtag.serve import create_app

    check_binding(host, token, allow_unauthenticated)
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedtag").setLevel(level)
    app_ = create_app(head=head, run=run, index=index, model=model, max_upload_mb=max_upload_mb,
                      max_duration_s=max_duration_s, token=token, device=device, max_batch=max_batch,
                      max_wait_ms=max_wait_ms, max_queue=max_queue, threads=threads)
    try:
        import uvicorn
    except ImportError:
        raise EmbedtagError("embedtag serve needs uvicorn; install it with: pip install 'embedtag[serve]'") from None
    s = app_.state.service
    shown = "localhost" if is_loopback(host) else host
    typer.echo(f"serving {s.mode} {s.source} ({len(s.tagger.labels)} labels)"
               f"{f', index of {len(s.index.clip_ids)} clips' if s.index is not None else ''} "
               f"on http://{shown}:{port}/ (API docs at /docs)", err=True)
    # uvicorn's access log would repeat the app's own request line
    uvicorn.run(app_, host=host, port=port, log_level="warning" if quiet else "info", access_log=False)
