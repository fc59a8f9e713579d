"""`embedtag fit-head`, `embedtag predict`, `embedtag evaluate`: thin wrappers over embedtag.heads."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from embedtag.cli import app


def _parse_params(items: list[str]) -> dict:
    """``["hidden=[256,256]", "dropout=0.5"]`` -> dict; values are JSON where they parse, else strings."""
    from embedtag.heads.base import ParamError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ParamError(f"--param {item!r}: expected KEY=VALUE (e.g. --param dropout=0.5)")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


@app.command("fit-head", epilog="Examples:\n\n  embedtag fit-head stores/office --head mlp --folds 5 --out heads/office\n\n"
                                "  embedtag fit-head stores/fsd --labels FSDKaggle2019/ --head mlp --noisy-weight 0.3 "
                                "--bootstrap-beta 0.7 --out heads/fsd\n\n"
                                "  embedtag fit-head stores/x --labels labels.csv --head logreg -p C=0.1 --out heads/x")
def fit_head_cmd(
    store: Path = typer.Argument(..., help="Embedding store (from `embedtag extract`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Head directory to write (config.json + weights)."),
    labels: Path | None = typer.Option(None, help="fname,labels CSV or dataset folder (FSDKaggle2019, ESC-50, "
                                                  "labels.csv+audio/); default: the store's own labels."),
    head: str = typer.Option("mlp", help="mlp, logreg, lightgbm, knn or prior."),
    param: list[str] = typer.Option([], "--param", "-p", help="Head parameter KEY=VALUE (JSON values), repeatable."),
    folds: int = typer.Option(0, min=0, help="Cross-validate with this many stratified folds first (0: no CV)."),
    noisy_weight: float = typer.Option(1.0, "--noisy-weight", min=0.0, help="Loss weight of noisy-subset clips "
                                                                            "(0: curated only)."),
    bootstrap_beta: float | None = typer.Option(None, "--bootstrap-beta", help="MLP: soft bootstrapping (Lsoft) "
                                                                              "of noisy clips, beta in (0, 1]."),
    label_smoothing: float | None = typer.Option(None, "--label-smoothing", help="MLP: label smoothing epsilon."),
    confidence: str | None = typer.Option(None, help="Two-stage confidence weighting of noisy clips: weight or drop."),
    confidence_threshold: float = typer.Option(0.5, "--confidence-threshold", help="With --confidence drop."),
    mode: str = typer.Option("auto", help="auto, multi (sigmoid) or single (softmax)."),
    seed: int = typer.Option(0, min=0),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a head already in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a head on a store's embeddings and labels; optionally report cross-validated lwlrap first."""
    from rich.console import Console
    from rich.table import Table

    from embedtag import artifacts
    from embedtag.heads import fit_head, make_head
    from embedtag.heads.base import ParamError

    params = _parse_params(param)
    if bootstrap_beta is not None:
        params["bootstrap_beta"] = bootstrap_beta
    if label_smoothing is not None:
        params["label_smoothing"] = label_smoothing
    modes = {"auto": "auto", "multi": True, "single": False}
    if mode not in modes:
        raise ParamError(f"--mode {mode!r}: expected auto, multi or single")
    # bad parameters (-p C=1e309 parses as inf), then a store, an index, a run or (without --overwrite) a head
    # in --out: refused before anything is written or trained
    make_head(head, **params)
    artifacts.prepare_output(out, artifacts.HEAD, overwrite=overwrite)
    fitted, report = fit_head(store, labels, head=head, params=params, noisy_weight=noisy_weight,
                              confidence=confidence, confidence_threshold=confidence_threshold, folds=folds,
                              multi_label=modes[mode], seed=seed, progress=not quiet)
    fitted.save(out, overwrite=True)  # --out was checked above
    t = Table(title=f"fit-head {head} → {out}", show_header=False, title_justify="left")
    t.add_row("clips / labels", f"{report.n_clips} / {report.n_labels} "
                                f"({'multi-label' if report.multi_label else 'single-label'})")
    if report.cv is not None:
        t.add_row(f"CV lwlrap ({len(report.cv.fold_lwlrap)} folds)",
                  f"{report.cv.lwlrap:.4f}  (folds: {', '.join(f'{x:.3f}' for x in report.cv.fold_lwlrap)})")
        t.add_row("prior baseline (CV)", f"{report.prior_cv_lwlrap:.4f}")
        if report.zero_shot_lwlrap is not None:
            t.add_row("zero-shot baseline", f"{report.zero_shot_lwlrap:.4f}")
    t.add_row("train lwlrap", f"{fitted.metrics['train_lwlrap']:.4f}")
    if "noisy_clips" in fitted.metrics:
        t.add_row("noisy clips kept", f"{fitted.metrics['noisy_kept']} / {fitted.metrics['noisy_clips']} "
                                      f"(mean weight {fitted.metrics['noisy_mean_weight']:.3f})")
    t.add_row("fit time", f"{report.fit_time_s:.1f} s")
    Console().print(t)


def _is_store(p: Path) -> bool:
    from embedtag import artifacts
    from embedtag.errors import ArtifactError

    try:
        info = artifacts.identify(p)
    except ArtifactError:
        return False
    return info is not None and info.kind == artifacts.STORE


@app.command(epilog="Examples:\n\n  embedtag predict heads/fsd stores/test --out submission.csv\n\n"
                    "  embedtag predict heads/office clips/ --top-k 3 --format json --out tags.json")
def predict(
    head: Path = typer.Argument(..., help="Head directory (from `embedtag fit-head`)."),
    inputs: list[Path] = typer.Argument(..., help="An embedding store, or audio files / directories (embedded "
                                                  "on the fly with the head's backbone)."),
    out: Path = typer.Option(Path("submission.csv"), "--out", "-o", help="Output file."),
    top_k: int | None = typer.Option(None, "--top-k", min=1, help="Write the K most probable tags per clip "
                                                                  "instead of every probability."),
    fmt: str = typer.Option("csv", "--format", help="csv or json."),
    device: str = typer.Option("auto", help="For embedding audio: auto, cpu, cuda or cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Predict label probabilities. Default output: the Kaggle submission CSV (fname, one column per label in
    vocabulary order)."""
    from embedtag.artifacts import load_predictor
    from embedtag.heads import Head, predict_files, predict_store, top_k as top_k_fn
    from embedtag.heads.base import ParamError

    if fmt not in ("csv", "json"):
        raise ParamError(f"--format {fmt!r}: expected csv or json")
    h = load_predictor(head, device=device)
    if not isinstance(h, Head):  # a fine-tuned network (embedtag finetune) reads the audio itself
        if len(inputs) == 1 and _is_store(inputs[0]):
            raise ParamError(f"{head} is a fine-tuned network: give it audio files or folders, not a store")
        frame = h.predict_files([str(p) for p in inputs], progress=not quiet)
    else:
        if len(inputs) == 1 and _is_store(inputs[0]):
            frame = predict_store(h, inputs[0])
        else:
            frame = predict_files(h, [str(p) for p in inputs], device=device, progress=not quiet)
    out.parent.mkdir(parents=True, exist_ok=True)
    if top_k is not None:
        tags = top_k_fn(frame, top_k)
        if fmt == "json":
            out.write_text(json.dumps(tags, indent=1))
        else:
            import pandas as pd

            pd.DataFrame([{"fname": t["fname"], **{f"label_{i + 1}": x["label"] for i, x in enumerate(t["tags"])},
                           **{f"probability_{i + 1}": x["probability"] for i, x in enumerate(t["tags"])}}
                          for t in tags]).to_csv(out, index=False)
    elif fmt == "json":
        out.write_text(frame.to_json(orient="records", indent=1))
    else:
        frame.to_csv(out, index=False, float_format="%.6g")
    typer.echo(f"{len(frame)} clips -> {out}")


@app.command(epilog="Example:\n\n  embedtag evaluate heads/office stores/office_test --labels labels.csv --out eval/")
def evaluate(
    head: Path = typer.Argument(..., help="Head directory (fit-head) or fine-tuned run (finetune)."),
    store: Path = typer.Argument(..., help="Embedding store of labelled clips."),
    labels: Path | None = typer.Option(None, help="fname,labels CSV or dataset folder (default: the store's "
                                                  "labels)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Directory for metrics.json, per_class.csv and "
                                                              "PNG plots."),
    rows: int = typer.Option(30, help="Per-class rows to print (worst first); 0 for all."),
) -> None:
    """Score a head or a fine-tuned run on labelled clips: lwlrap (overall and per class), macro mAP, accuracy;
    saves plots. Warns when some evaluated clips were training clips (in-sample scores)."""
    from rich.console import Console
    from rich.table import Table

    from embedtag.artifacts import load_predictor
    from embedtag.heads import Head, evaluate_head
    from embedtag.heads.api import plot_evaluation

    h = load_predictor(head)  # a head, or a fine-tuned run (which scores the store's clips from their audio)
    res = evaluate_head(h, store, labels)
    console = Console()
    s = Table(title=f"evaluate {head} on {store} ({res['n_clips']} clips)", show_header=False,
              title_justify="left")
    s.add_row("lwlrap", f"{res['lwlrap']:.4f}")
    s.add_row("macro mAP", f"{res['macro_map']:.4f}")
    if "accuracy" in res:
        s.add_row("accuracy (top-1)", f"{res['accuracy']:.4f}")
    s.add_row("accuracy_multi @0.5", f"{res['accuracy_multi']:.4f}  (element-wise; inflated by negatives)")
    console.print(s)
    if res["train_overlap"]:  # by clip id: held-out clips of the training store are not in-sample
        what = "head" if isinstance(h, Head) else "fine-tuned run"
        Console(stderr=True).print(
            f"[yellow]warning:[/] {res['train_overlap']} of {res['n_clips']} evaluated clips were used to train "
            f"this {what}: in-sample scores (`embedtag fit-head --folds 5` gives cross-validated ones)",
            highlight=False, soft_wrap=True)
    table = res["per_class"].sort_values("lwlrap")
    t = Table("label", "clips", "lwlrap", "weight", "AP", title="per class (worst first)", title_justify="left")
    for r in (table if rows == 0 else table.head(rows)).itertuples():
        t.add_row(r.label, str(r.n_clips), f"{r.lwlrap:.3f}", f"{r.weight:.3f}", f"{r.average_precision:.3f}")
    console.print(t)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        res["per_class"].to_csv(out / "per_class.csv", index=False)
        summary = {k: v for k, v in res.items() if k not in ("per_class", "truth", "scores", "clip_ids")}
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
        files = plot_evaluation(res, out)
        console.print(f"wrote {out / 'metrics.json'}, {out / 'per_class.csv'}, " + ", ".join(map(str, files)))
