"""`embedtag split`: a stratified, multi-label aware, reproducible train/test split of a dataset."""

from __future__ import annotations

from pathlib import Path

import typer

from embedtag.cli._app import app


@app.command(epilog="Examples:\n\n"
                    "  embedtag split ../shared/data/donateacry_cleaned --test-size 0.3 --out splits/cry\n\n"
                    "  embedtag extract splits/cry/train.csv --out stores/cry_train\n\n"
                    "  embedtag fit-head stores/cry --labels splits/cry/train.csv --out heads/cry")
def split(
    data: Path = typer.Argument(..., help="Dataset: a folder (FSDKaggle2019, ESC-50, labels.csv + audio/, "
                                          "folder per class) or a fname,labels CSV."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for train.csv, test.csv and split.json."),
    test_size: float = typer.Option(0.3, "--test-size", help="Test share in (0, 1), or a number of clips (>= 1)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed: the same seed gives the same split."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace train.csv / test.csv already in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No info lines (errors still print)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print the clips per label on each side."),
) -> None:
    """Split the labelled clips of a dataset into OUT/train.csv and OUT/test.csv, stratified by label
    (iterative stratification, multi-label aware). Each row names the clip by the dataset's clip id and gives its
    audio path, so `embedtag extract OUT/train.csv` reads the audio and the labels match a store of the whole
    dataset. Unlabelled clips are left out."""
    from rich.console import Console

    from embedtag.inputs import split_dataset

    if quiet and verbose:
        raise typer.BadParameter("-q/--quiet and -v/--verbose exclude each other")
    size: float | int = int(test_size) if test_size >= 1 and test_size == int(test_size) else test_size
    train, test = split_dataset(data, size, seed=seed, out=out, overwrite=overwrite)
    console = Console(stderr=True)
    if not quiet:
        console.print(f"wrote {out / 'train.csv'} ({len(train)} clips) and {out / 'test.csv'} ({len(test)} clips), "
                      f"{len(train.vocabulary)} labels, seed {seed}", highlight=False, soft_wrap=True)
    if verbose:
        from rich.table import Table

        ytr, yte = train.multi_hot().sum(0).astype(int), test.multi_hot().sum(0).astype(int)
        t = Table("label", "train", "test", title="clips per label", title_justify="left")
        for j, lab in enumerate(train.vocabulary):
            t.add_row(lab, str(ytr[j]), str(yte[j]))
        console.print(t)
