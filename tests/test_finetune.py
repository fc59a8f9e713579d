"""Fine-tuning EfficientAT mn04 on real clips: settings, crops, schedule, kill-and-resume, the run artifact, CLI."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest

from conftest import DATA, require
from embedtag.errors import EmbedtagError, IncompatibleError
from embedtag.finetune import FinetuneConfig, finetune, is_finetuned, load_finetuned
from embedtag.finetune.data import eval_crops, train_crop
from embedtag.finetune.train import _lr_factor
from embedtag.heads.base import ParamError

OFFICE = DATA / "dcase2016_task2_office"
CKPT = DATA.parent / "models" / "efficientat" / "mn04_as_mAP_432.pt"
CLASSES = ("knock", "phone", "speech")
#: tiny but real: 1 s crops, no test-time averaging beyond 2 crops, small batches
TINY = dict(batch_size=4, crop_s=1.0, tta_crops=1, patience=0, noisy_loss="lsoft", threads=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dataset(shared_models):
    """9 curated clips (3 each of knock / phone / speech) plus 3 clips marked noisy."""
    from embedtag.datasets import read_labels_csv

    require(shared_models / "efficientat" / "mn04_as_mAP_432.pt")
    ds = read_labels_csv(require(OFFICE / "labels.csv"), audio_dir=OFFICE / "audio")
    picks, subsets = [], []
    for c in CLASSES:
        rows = [i for i, lab in enumerate(ds.labels) if lab == [c]]
        picks += rows[:4]
        subsets += ["curated"] * 3 + ["noisy"]
    sub = ds.select(picks)
    return replace(sub, vocabulary=list(CLASSES), subsets=subsets)


def test_config_is_validated():
    assert FinetuneConfig(epochs=(2, 3)).epochs == (2, 3)
    assert FinetuneConfig(stages=("curated",), epochs=4).epochs == (4,)
    for bad in (dict(epochs=0), dict(epochs=(1, 2, 3)), dict(stages=("clean",)), dict(folds=1),
                dict(backbone="yamnet"), dict(noisy_loss="hard"), dict(crop_s=0.2), dict(lsoft_beta=0.0)):
        with pytest.raises(ParamError):
            FinetuneConfig(**bad)
    with pytest.raises(ParamError, match="unknown"):
        FinetuneConfig.from_dict({"epochs": 2, "lr_head": 1.0})


def test_crops_and_schedule():
    rng = np.random.default_rng(0)
    long, short = np.arange(100, dtype=np.float32), np.ones(30, np.float32)
    c = train_crop(long, 40, rng)
    assert c.shape == (40,) and np.all(np.diff(c) == 1)  # a contiguous piece of the clip
    p = train_crop(short, 40, rng)
    assert p.shape == (40,) and p.sum() == 30  # the whole short clip, zero-padded
    e = eval_crops(long, 40, 3)
    assert e.shape == (3, 40) and e[0, 0] == 0 and e[-1, -1] == 99  # evenly spaced, first and last samples covered
    assert eval_crops(short, 40, 3).shape == (1, 40)
    f = [_lr_factor(s, 100, 0.1) for s in range(100)]
    assert f[0] < f[5] < f[9] == 1.0 and f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.01, abs=1e-3)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


class Stop(Exception):
    pass


def test_killed_and_resumed_run_matches_uninterrupted(tiny_dataset, tmp_path):
    from safetensors.torch import load_file

    # early stopping in play, BatchNorm statistics updated (the more stateful path through a resume)
    kw = dict(folds=2, epochs=(1, 2), progress=False, **{**TINY, "patience": 1, "freeze_bn": False})
    full = finetune(tiny_dataset, out=tmp_path / "full", **kw)

    calls = []

    def kill(fold, stage, epoch, step):
        calls.append((fold, stage, epoch, step))
        if len(calls) == 6:  # fold 0 done; inside fold 1's first (noisy-stage) epoch
            raise Stop

    with pytest.raises(Stop):
        finetune(tiny_dataset, out=tmp_path / "cut", on_step=kill, **kw)
    assert calls[-1][0] == 1 and (tmp_path / "cut" / "checkpoint.pt").exists()
    assert not (tmp_path / "cut" / "config.json").exists()
    with pytest.raises(EmbedtagError, match="--resume"):
        finetune(tiny_dataset, out=tmp_path / "cut", **kw)
    with pytest.raises(IncompatibleError, match="other settings"):
        finetune(tiny_dataset, out=tmp_path / "cut", resume=True, **{**kw, "seed": 1})
    resumed = finetune(tiny_dataset, out=tmp_path / "cut", resume=True, **kw)

    assert resumed.fold_lwlrap == pytest.approx(full.fold_lwlrap, abs=1e-6)
    assert resumed.cv_lwlrap == pytest.approx(full.cv_lwlrap, abs=1e-6)
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in full.history], abs=1e-5)
    for k in range(2):
        a = load_file(str(tmp_path / "full" / f"fold{k}" / "model.safetensors"))
        b = load_file(str(tmp_path / "cut" / f"fold{k}" / "model.safetensors"))
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), atol=1e-5, err_msg=name)
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()
    # training changed the network: fold weights differ from each other
    a0 = load_file(str(tmp_path / "full" / "fold0" / "model.safetensors"))
    a1 = load_file(str(tmp_path / "full" / "fold1" / "model.safetensors"))
    assert not np.allclose(a0["body.classifier.5.weight"].numpy(), a1["body.classifier.5.weight"].numpy())

    # the run artifact
    run = tmp_path / "full"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["kind"] == "finetuned-run" and cfg["vocabulary"] == list(CLASSES)
    assert cfg["backbone"] == "efficientat-mn04"
    assert cfg["front_end"]["n_mels"] == 128 and cfg["clips"] == {"curated": 9, "noisy": 3}
    assert "AudioSet-pretrained" in cfg["note"]
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["fold", "stage", "epoch", "loss", "val_lwlrap", "lr", "clips_per_s", "seconds"]
    assert [(int(r["fold"]), r["stage"], int(r["epoch"])) for r in rows] == [
        (r["fold"], r["stage"], r["epoch"]) for r in full.history]
    assert [(r["fold"], r["stage"]) for r in full.history][:2] == [(0, "noisy"), (0, "curated")]
    assert (run / "training.png").stat().st_size > 1000 and (run / "oof.csv").is_file()
    assert not list(run.rglob("*.pt")) and not list(run.rglob("*.pkl"))
    # resuming a finished run returns it instead of training again
    again = finetune(tiny_dataset, out=run, resume=True, **kw)
    assert again.cv_lwlrap == pytest.approx(full.cv_lwlrap)
    assert [r["loss"] for r in again.history] == pytest.approx([r["loss"] for r in full.history])


def test_finetuned_artifact_predicts_ensemble_of_folds(tiny_dataset, tmp_path):
    import torch

    run = tmp_path / "run"
    finetune(tiny_dataset, out=run, folds=2, stages=("curated",), epochs=1, progress=False, freeze_bn=True, **TINY)
    assert is_finetuned(run) and not is_finetuned(tmp_path)
    # freeze_bn: BatchNorm running statistics stay the pretrained ones while the weights move
    from safetensors.torch import load_file

    pre = torch.load(require(CKPT), map_location="cpu", weights_only=True)
    tuned = load_file(str(run / "fold0" / "model.safetensors"))
    np.testing.assert_array_equal(tuned["body.features.5.block.1.1.running_var"].numpy(),
                                  pre["features.5.block.1.1.running_var"].numpy())
    assert not np.allclose(tuned["body.features.16.0.weight"].numpy(), pre["features.16.0.weight"].numpy())
    model = load_finetuned(run, device="cpu")
    assert model.vocabulary == list(CLASSES) and model.backbone_name == "efficientat-mn04"
    paths = tiny_dataset.paths[:5]
    probs = model.predict_proba_files(paths)
    assert probs.shape == (5, 3) and np.all((probs > 0) & (probs < 1))
    # order / batch invariant: one file alone gives its row
    np.testing.assert_allclose(model.predict_proba_files(paths[3:4])[0], probs[3], atol=1e-5)
    # the ensemble is the mean of the fold networks
    from embedtag.finetune.artifact import predict_waves
    from embedtag.finetune.data import load_waves

    waves = load_waves(paths, 32000)
    per_fold = [predict_waves([m], waves, model.crop_samples, model.tta_crops, "cpu", softmax=True)
                for m in model.models]
    np.testing.assert_allclose(probs, np.mean(per_fold, axis=0), atol=1e-5)
    frame = model.predict_files(paths[:2])
    assert list(frame.columns) == ["fname", *CLASSES] and len(frame) == 2
    # corrupt weights: a clear error naming the file
    (run / "fold1" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(IncompatibleError, match="fold1"):
        load_finetuned(run, device="cpu")
    with pytest.raises(EmbedtagError, match="not a fine-tuned run"):
        load_finetuned(tmp_path)


def test_run_artifact_header_train_clips_and_validation(tiny_dataset, tmp_path):
    """config.json carries the common header and the clips trained on; old runs load; a damaged config or a
    foreign --out is one line naming the file and field."""
    from embedtag import artifacts
    from embedtag.errors import ArtifactError, WrongKindError
    from embedtag.finetune import FinetunedModel

    run = tmp_path / "run"
    finetune(tiny_dataset, out=run, folds=0, stages=("curated",), epochs=1, progress=False, **TINY)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["kind"] == "finetuned-run" and cfg["format_version"] == 2 and cfg["embedtag_version"]
    assert cfg["created_at"].endswith("Z")
    assert sorted(cfg["train_clip_ids"]) == sorted(tiny_dataset.clip_ids)
    assert not list(run.rglob(".tmp-*")) and not (run / "checkpoint.pt").exists()
    model = artifacts.load_predictor(run, device="cpu")
    assert isinstance(model, FinetunedModel) and model.train_clip_ids == cfg["train_clip_ids"]
    # no validation clips (folds=0): no thresholds, and the run says why
    assert cfg["thresholds"] is None and "no validation clips" in cfg["thresholds_from"] and model.thresholds_ is None
    # a run written before the common header: "kind": "finetuned", format 1, no train_clip_ids, no "output" (every
    # format 1 run was trained with sigmoids, even one whose "multi_label" is false)
    old = {k: v for k, v in cfg.items() if k not in ("embedtag_version", "created_at", "train_clip_ids", "output",
                                                     "thresholds")}
    old.update(kind="finetuned", format_version=1)
    (run / "config.json").write_text(json.dumps(old))
    legacy = load_finetuned(run, device="cpu")
    assert is_finetuned(run) and legacy.train_clip_ids is None and not legacy.multi_label and not legacy.softmax
    p = legacy.predict_proba_files(tiny_dataset.paths[:3])
    assert not np.allclose(p.sum(1), 1, atol=1e-3)  # independent sigmoids
    # hand-edited configs: one line naming the file and the field
    for edit, field in ((lambda c: c.pop("front_end"), "front_end"), (lambda c: c.update(vocabulary="knock"),
                        "vocabulary"), (lambda c: c.update(crop_s="2"), "crop_s"),
                        (lambda c: c["front_end"].update(n_mels="x"), "n_mels"),
                        (lambda c: c["front_end"].update(bogus=1), "bogus"),
                        (lambda c: c.update(thresholds=[0.5]), "thresholds"),
                        (lambda c: c.update(output="softmax", multi_label=True), "output")):
        bad = json.loads(json.dumps(cfg))
        edit(bad)
        (run / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ArtifactError, match=field) as exc:
            load_finetuned(run, device="cpu")
        assert "config.json" in str(exc.value) and "\n" not in str(exc.value)
    (run / "config.json").write_text(json.dumps(cfg))
    # --out over another kind of artifact is refused, whatever it is
    head = tmp_path / "head"
    head.mkdir()
    (head / "config.json").write_text(json.dumps({"kind": "head", "format_version": 1, "head": "mlp"}))
    with pytest.raises(WrongKindError, match="a head"):
        finetune(tiny_dataset, out=head, folds=0, stages=("curated",), epochs=1, progress=False, **TINY)
    assert json.loads((head / "config.json").read_text())["kind"] == "head"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("someone's files")
    with pytest.raises(ArtifactError, match="not empty"):
        finetune(tiny_dataset, out=tmp_path / "mine", folds=0, stages=("curated",), epochs=1, progress=False,
                 **TINY)


def test_cli_finetune_from_labels_csv(tiny_dataset, tmp_path, capsys):
    from embedtag.cli import main

    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fname", "labels"])
        for cid, lab in list(zip(tiny_dataset.clip_ids, tiny_dataset.labels))[:8]:
            w.writerow([cid, ",".join(lab)])
    run = tmp_path / "run"
    args = ["finetune", str(OFFICE / "audio"), "--labels", str(labels), "--folds", "0", "--stages", "curated",
            "--epochs", "1", "--batch-size", "4", "--crop-s", "1", "-p", "tta_crops=1", "--out", str(run), "-q",
            "--device", "cpu", "--threads", "1", "--format", "json"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["cv_lwlrap"] is None and is_finetuned(run)
    assert load_finetuned(run).vocabulary == sorted({lab[0] for lab in tiny_dataset.labels[:8]})
    with pytest.raises(SystemExit) as exc:
        main(["finetune", str(OFFICE / "audio"), "--labels", str(labels), "--stages", "clean", "--out",
              str(tmp_path / "bad"), "-q"])
    assert exc.value.code == 1
    assert "stages" in capsys.readouterr().err


def test_predict_and_evaluate_accept_a_finetuned_run(tiny_dataset, tmp_path, capsys):
    """`embedtag predict` / `evaluate` take a fine-tuned run like any head (it reads the clips' audio), with the
    per-class thresholds the run fitted on its out-of-fold validation predictions."""
    import os

    import pandas as pd

    from embedtag.cli import main
    from embedtag.embeddings.pipeline import extract

    run = tmp_path / "run"
    res = finetune(tiny_dataset, out=run, folds=2, stages=("curated",), epochs=1, progress=False, multi_label=True,
                   **TINY)
    cfg = json.loads((run / "config.json").read_text())
    thresholds = np.array(cfg["thresholds"])
    assert thresholds.shape == (3,) and np.all((thresholds >= 0.02) & (thresholds <= 0.98))
    assert res.thresholds == cfg["thresholds"] and "out-of-fold" in cfg["thresholds_from"]
    assert load_finetuned(run, device="cpu").thresholds_ == cfg["thresholds"]
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    ids, labels = tiny_dataset.clip_ids[:6], tiny_dataset.labels[:6]
    for cid in ids:
        os.symlink(OFFICE / "audio" / cid, data / "audio" / cid)
    pd.DataFrame({"fname": ids, "labels": [",".join(lab) for lab in labels]}).to_csv(data / "labels.csv", index=False)
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(run), str(data / "audio"), "--out", str(tmp_path / "sub.csv"), "-q", "--device", "cpu"])
    assert exc.value.code == 0
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub.columns) == ["fname", *CLASSES] and sorted(sub.fname) == sorted(ids)
    # --threshold auto: the labels at or above the run's own thresholds
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(run), str(data / "audio"), "--threshold", "auto", "--out", str(tmp_path / "t.csv"),
              "-q", "--device", "cpu"])
    assert exc.value.code == 0
    tagged = pd.read_csv(tmp_path / "t.csv", keep_default_na=False)
    assert list(tagged.columns) == ["fname", "labels", *CLASSES]
    P = tagged[list(CLASSES)].to_numpy()
    want = [",".join(c for c, p, t in zip(CLASSES, row, thresholds) if p >= t) for row in P]
    assert list(tagged["labels"]) == want
    extract(data, tmp_path / "store", model="yamnet-lite", progress=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(run), str(tmp_path / "store"), "--out", str(tmp_path / "eval")])
    assert exc.value.code == 0
    assert "lwlrap" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["provenance"]["predictor"].startswith("fine-tuned run (") and metrics["n_clips"] == 6
    assert (tmp_path / "eval" / "report.html").stat().st_size > 10_000
    # evaluate scores the decisions at the run's thresholds
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(run), str(tmp_path / "store"), "--format", "json", "--device", "cpu"])
    assert exc.value.code == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["thresholds"].startswith("per class")
    assert [r["threshold"] for r in ev["per_class"]] == pytest.approx(cfg["thresholds"])
    assert 0 <= ev["micro_f1"] <= 1
    with pytest.raises(SystemExit) as exc:  # a fine-tuned run cannot read a store's embeddings
        main(["predict", str(run), str(tmp_path / "store"), "--out", str(tmp_path / "x.csv")])
    assert exc.value.code == 1


def test_single_label_run_outputs_a_softmax_and_skips_the_noisy_stage(tiny_dataset, tmp_path, capsys):
    """Every clip one label: a softmax (rows sum to 1), stated in config.json; no noisy clips: no noisy stage,
    though the default stages ask for one. ``--threshold auto`` of a single-label run answers its top label."""
    import pandas as pd

    from embedtag.cli import main

    curated = replace(tiny_dataset, subsets=["curated"] * len(tiny_dataset))
    run = tmp_path / "single"
    res = finetune(curated, out=run, folds=2, epochs=1, progress=False, **TINY)  # stages: noisy, curated
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["multi_label"] is False and cfg["output"] == "softmax" and not res.multi_label
    assert cfg["train"]["stages"] == ["curated"] and cfg["skipped_stages"] == ["noisy"]
    assert {r["stage"] for r in res.history} == {"curated"} and len(res.history) == 2  # 2 folds x 1 epoch
    with open(run / "log.csv") as f:
        assert {r["stage"] for r in csv.DictReader(f)} == {"curated"}
    model = load_finetuned(run, device="cpu")
    probs = model.predict_proba_files(curated.paths[:4])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    oof = pd.read_csv(run / "oof.csv")  # the validation predictions are the softmax too
    np.testing.assert_allclose(oof[list(CLASSES)].sum(1), 1, atol=1e-4)
    assert len(cfg["thresholds"]) == 3
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(run), *map(str, curated.paths[:4]), "--threshold", "auto", "-q", "--device", "cpu"])
    assert exc.value.code == 0
    out = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert list(out["labels"]) == [CLASSES[j] for j in probs.argmax(1)]
    # tagging over time (frames, tag_clip; what serve runs) reads the same softmax, and answers the top label
    from embedtag.frames import make_scorer, predict_frames, tag_clip

    frames = predict_frames(model, curated.paths[0], window_s=0.4)
    assert len(frames) >= 2
    np.testing.assert_allclose(frames[list(CLASSES)].sum(1), 1, atol=1e-5)
    tags = tag_clip(model, curated.paths[0], k=3)
    assert tags["labels"] == [tags["tags"][0]["label"]] and sum(t["score"] for t in tags["tags"]) == pytest.approx(1)
    assert not make_scorer(model).multi_label

    # the same clips, multi-label by the user's choice: independent sigmoids
    multi = finetune(curated, out=tmp_path / "multi", folds=0, stages=("curated",), epochs=1, progress=False,
                     multi_label=True, **TINY)
    assert multi.config["multi_label"] is True and multi.config["output"] == "sigmoid"
    p = load_finetuned(tmp_path / "multi", device="cpu").predict_proba_files(curated.paths[:4])
    assert not np.allclose(p.sum(1), 1, atol=1e-3)
    # single-label asked of clips with two labels: refused before any training
    two = replace(curated, labels=[["knock", "phone"]] + curated.labels[1:])
    with pytest.raises(ParamError, match="exactly one label"):
        finetune(two, out=tmp_path / "two", folds=0, epochs=1, progress=False, multi_label=False, **TINY)
    assert not (tmp_path / "two" / "config.json").exists()


def _labelled_copy(tiny_dataset, root, corrupt: int):
    """A dataset folder (labels.csv + audio/) of the 9 curated tiny clips, the first ``corrupt`` of them replaced
    by junk bytes."""
    import os

    (root / "audio").mkdir(parents=True)
    curated = [i for i, sub in enumerate(tiny_dataset.subsets) if sub != "noisy"]
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fname", "labels"])
        for n, i in enumerate(curated):
            cid, path, lab = tiny_dataset.clip_ids[i], tiny_dataset.paths[i], tiny_dataset.labels[i]
            if n < corrupt:
                (root / "audio" / cid).write_bytes(b"RIFF\x00\x00not audio at all" * 10)
            else:
                os.symlink(path, root / "audio" / cid)
            w.writerow([cid, ",".join(lab)])
    return root


def test_unreadable_training_file_is_recorded_and_training_goes_on(tiny_dataset, tmp_path, capsys):
    from embedtag.cli import main
    from embedtag.errors import DataError

    data = _labelled_copy(tiny_dataset, tmp_path / "data", corrupt=1)
    bad = tiny_dataset.clip_ids[0]
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["finetune", str(data), "--folds", "0", "--stages", "curated", "--epochs", "1", "--batch-size", "4",
              "--crop-s", "1", "-p", "tta_crops=1", "--out", str(run), "-q", "--device", "cpu", "--threads", "1",
              "--format", "json"])
    assert exc.value.code == 3  # finished, but not with every input (as extract)
    io = capsys.readouterr()
    summary = json.loads(io.out.strip().splitlines()[-1])
    assert [u["clip_id"] for u in summary["unreadable"]] == [bad]
    assert bad in io.err and "failed" in io.err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["unreadable"][0]["clip_id"] == bad and cfg["unreadable"][0]["reason"]
    assert bad not in cfg["train_clip_ids"] and len(cfg["train_clip_ids"]) == 8
    assert load_finetuned(run, device="cpu").predict_proba_files(tiny_dataset.paths[1:2]).shape == (1, 3)
    # predicting on the unreadable file too: the others are predicted, it is named, exit 3
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(run), str(data / "audio"), "-q", "--device", "cpu"])
    assert exc.value.code == 3
    io = capsys.readouterr()
    assert bad in io.err and bad not in io.out and len(io.out.strip().splitlines()) == 1 + 8
    # too few readable clips left: one line naming the first bad file, nothing trained
    few = _labelled_copy(tiny_dataset, tmp_path / "few", corrupt=8)
    with pytest.raises(DataError, match=r"unreadable .*first: .*; 1 curated clips are left.* at least 2") as err:
        finetune(str(few), out=tmp_path / "few_run", folds=2, epochs=1, progress=False, **TINY)
    assert "\n" not in str(err.value) and not (tmp_path / "few_run" / "config.json").exists()
