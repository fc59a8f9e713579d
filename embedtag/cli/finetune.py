"""`embedtag finetune`: a thin wrapper over :func:`embedtag.finetune.finetune`."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from embedtag.cli._app import app
from embedtag.cli._options import (
    BACKBONE_ALIAS,
    MULTI_LABEL,
    NOISY_WEIGHT,
    QUIET,
    VERBOSE,
    Mode,
    TableJson,
    device_option,
    format_option,
    mode_option,
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
    stages: str = typer.Option("noisy,curated", help="Training stages in order: noisy (curated + noisy clips; "
                                                     "not run when there are no noisy clips), curated (curated "
                                                     "only)."),
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
    mode: Mode = mode_option(),
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
    directory (fold weights, config.json, log.csv, training.png) that embedtag.finetune.load_finetuned loads.

    Per-class decision thresholds come from the out-of-fold validation predictions (`predict RUN --threshold
    auto`; none with --folds 0). Unreadable training files are left out and listed; exit code: 0 every file was
    used, 3 the run finished without some unreadable files, 1 error, 2 a bad option."""
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
                 progress=not quiet, threads=threads, multi_label=MULTI_LABEL[mode.value], **params)
    cfg = result.config
    summary = {"run": str(result.path), "cv_lwlrap": result.cv_lwlrap, "fold_lwlrap": result.fold_lwlrap,
               "multi_label": result.multi_label, "stages": cfg.get("train", {}).get("stages"),
               "thresholds": cfg.get("thresholds_from"), "threshold_metrics": cfg.get("threshold_metrics"),
               "unreadable": [{"clip_id": c, "reason": r} for c, r in result.failures]}
    if fmt == TableJson.json:
        write_output(json.dumps(summary), "-")
    else:
        mode_text = "multi-label" if result.multi_label else "single-label (softmax)"
        typer.echo(f"{result.path}: {mode_text}, " + (
            f"out-of-fold lwlrap {result.cv_lwlrap:.4f} (folds: {', '.join(f'{s:.3f}' for s in result.fold_lwlrap)})"
            if result.cv_lwlrap is not None else "trained on every clip (no validation)"))
        tm = cfg.get("threshold_metrics")
        typer.echo(f"thresholds: {cfg.get('thresholds_from')}"
                   + (f"; out-of-fold F1 micro {tm['micro_f1']:.4f}, macro {tm['macro_f1']:.4f}" if tm else ""))
    if result.failures:  # the run used the readable files; say which were not, and exit 3 as extract does
        from rich.console import Console
        from rich.markup import escape

        from embedtag.cli.extract import EXIT_FAILURES

        err = Console(stderr=True)
        err.print(f"{len(result.failures)} unreadable training file(s) left out:", highlight=False)
        for clip_id, reason in result.failures[:20]:
            err.print(f"  [red]failed[/] {escape(clip_id)}: {escape(reason)}", highlight=False, soft_wrap=True)
        if len(result.failures) > 20:
            err.print(f"  ... and {len(result.failures) - 20} more (see the run's config.json, \"unreadable\")",
                      highlight=False)
        raise typer.Exit(EXIT_FAILURES)
