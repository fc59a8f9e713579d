"""`embedtag finetune`: a thin wrapper over :func:`embedtag.finetune.finetune`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from embedtag.cli import app
from embedtag.cli._options import (
    BACKBONE_ALIAS,
    NOISY_WEIGHT,
    QUIET,
    VERBOSE,
    TableJson,
    device_option,
    format_option,
    model_option,
    setup_logging,
    write_output,
)


class NoisyLoss(str, Enum):
    weighted = "weighted"
    lsoft = "lsoft"


def _int_list(value: str, name: str) -> int | tuple[int, ...]:
    from embedtag.errors import ParamError

    try:
        parts = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise ParamError(f"--{name} {value!r}: expected an integer or comma-separated integers (one per stage)") \
            from None
    return parts[0] if len(parts) == 1 else parts


@app.command(epilog="Examples:\n\n  embedtag finetune data/office --folds 5 --epochs 4,6 --out runs/office\n\n"
                    "  embedtag finetune FSDKaggle2019/ -m efficientat-mn04 --noisy-loss lsoft --out runs/fsd\n\n"
                    "  embedtag finetune audio/ --labels labels.csv --folds 0 --epochs 10 --out runs/x\n\n"
                    "  embedtag finetune data/office --out runs/office --resume   # after an interruption")
def finetune(
    data: Path = typer.Argument(..., help="Dataset folder (labels.csv + audio/, FSDKaggle2019, ESC-50, class "
                                          "folders) or fname,labels CSV; the audio folder when --labels is given."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write (weights, config.json, log.csv, "
                                                      "training.png)."),
    model: str = model_option("efficientat-mn04", "Pretrained network to fine-tune."),
    backbone: str | None = BACKBONE_ALIAS,
    labels: Path | None = typer.Option(None, help="fname,labels CSV (file names relative to DATA) or dataset "
                                                  "folder."),
    stages: str = typer.Option("noisy,curated", help="Training stages in order: noisy (curated + noisy clips), "
                                                     "curated (curated only)."),
    folds: int = typer.Option(5, min=0, help="K-fold cross-validation (out-of-fold lwlrap, one model per fold, "
                                             "ensembled at predict time); 0: one model on all clips."),
    epochs: str = typer.Option("10", help="Epochs per stage: one number, or one per stage (e.g. 4,6)."),
    batch_size: int = typer.Option(32, "--batch-size", min=2, help="Clips per training step."),
    crop_s: float = typer.Option(2.0, "--crop-s", help="Training / test-time crop length in seconds."),
    lr: float = typer.Option(3e-3, help="Learning rate of the new output layer (lower layers get less)."),
    noisy_loss: NoisyLoss = typer.Option(NoisyLoss.weighted, "--noisy-loss", help="weighted (noisy clips x "
                                                                                   "--noisy-weight) or lsoft (soft "
                                                                                   "bootstrapping)."),
    noisy_weight: float = typer.Option(NOISY_WEIGHT, "--noisy-weight", min=0.0, max=1.0,
                                       help="Loss weight of noisy-subset clips (the same default as fit-head)."),
    patience: int = typer.Option(3, min=0, help="Early stopping: epochs without a better validation lwlrap "
                                                "(0: never)."),
    seed: int = typer.Option(0, min=0, help="Seed of folds, crops and initialisation."),
    param: list[str] = typer.Option([], "--param", "-p", help="Any other setting KEY=VALUE (JSON values), e.g. "
                                                              "-p mixup_alpha=0.4 -p tta_crops=5."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    device: str = device_option(),
    weights: Path | None = typer.Option(None, help="Pretrained checkpoint file (default: the weights manager)."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads for torch (default: torch's choice)."),
    fmt: TableJson = format_option(TableJson.table, "table (one line), or json: run path and lwlrap."),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Fine-tune an AudioSet-pretrained CNN on labelled audio (K-fold, noisy-then-curated stages) into a run
    directory (fold weights, config.json, log.csv, training.png) that embedtag.finetune.load_finetuned loads."""
    setup_logging(quiet, verbose)
    from embedtag.cli._options import resolve_model
    from embedtag.cli.heads import _parse_params
    from embedtag.finetune import finetune as run

    model = resolve_model(model if backbone is None else None, backbone)
    params = _parse_params(param)
    params.update(batch_size=batch_size, crop_s=crop_s, lr=lr, noisy_loss=noisy_loss.value,
                  noisy_weight=noisy_weight, patience=patience, seed=seed)
    result = run(str(data), backbone=model, labels=None if labels is None else str(labels), out=out,
                 stages=tuple(s.strip() for s in stages.split(",") if s.strip()), folds=folds,
                 epochs=_int_list(epochs, "epochs"), resume=resume, device=device, weights=weights,
                 progress=not quiet, threads=threads, **params)
    summary = {"run": str(result.path), "cv_lwlrap": result.cv_lwlrap, "fold_lwlrap": result.fold_lwlrap}
    if fmt == TableJson.json:
        write_output(json.dumps(summary), "-")
        return
    typer.echo(f"{result.path}: " + (f"out-of-fold lwlrap {result.cv_lwlrap:.4f} "
                                     f"(folds: {', '.join(f'{s:.3f}' for s in result.fold_lwlrap)})"
                                     if result.cv_lwlrap is not None else "trained on every clip (no validation)"))
