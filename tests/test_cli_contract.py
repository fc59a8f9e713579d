"""The CLI's one vocabulary, checked on every registered command (new commands are covered automatically):
-q/--quiet and -v/--verbose everywhere, --model for the backbone, --format with its choices, -k = --top-k,
an example in every help text, --device as the device resolver accepts it, --out - is stdout, bad choices are
usage errors (exit 2) and library errors one line (exit 1). Also: --help imports no heavy library, and the
top-level package lists its public API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import typer.main

from conftest import REPO, run_cli
from embedtag.cli import app

HEAVY = ("pandas", "pyarrow", "torch", "tensorflow", "sklearn", "faiss")


def _commands(group=None, path=()):
    """(path, click command) for every leaf command, index subcommands included."""
    group = group or typer.main.get_command(app)
    for name, cmd in sorted(group.commands.items()):
        if getattr(cmd, "commands", None):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


COMMANDS = list(_commands())
IDS = [" ".join(p) for p, _ in COMMANDS]


def _options(cmd):
    return [p for p in cmd.params if p.param_type_name == "option"]


def _choices(param) -> list[str] | None:
    """The choices of an option, from the vendored click of typer >= 0.2x or from click.Choice."""
    desc = getattr(param, "type_descriptor", None)
    if desc is not None:
        return [getattr(c, "value", c) for c in desc.choices] if desc.is_choice else None
    return list(getattr(param.type, "choices", None) or []) or None


def test_the_walk_sees_every_command():
    names = set(IDS)
    assert {"extract", "models", "info", "fit-head", "predict", "evaluate", "search", "finetune", "profile",
            "benchmark", "index build", "index add", "index evaluate"} <= names


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_every_command_speaks_the_vocabulary(path, cmd):
    opts = {o: p for p in _options(cmd) for o in (*p.opts, *p.secondary_opts)}
    # -q/--quiet and -v/--verbose, as flags of one option each
    assert opts.get("-q") is opts.get("--quiet") is not None and opts["-q"].is_flag
    assert opts.get("-v") is opts.get("--verbose") is not None and opts["-v"].is_flag
    for p in _options(cmd):
        names = (*p.opts, *p.secondary_opts)
        # the backbone is --model/-m; --backbone survives only as a hidden alias
        if any("backbone" in n or "model" in n for n in names) and not p.hidden:
            assert names == ("--model", "-m"), f"{path}: {names}"
        if "--backbone" in names:
            assert p.hidden and names == ("--backbone",)
        # machine-readable output is --format with shown choices from table/json/csv; --json only hidden
        if "--format" in names:
            choices = _choices(p)
            assert choices and set(choices) <= {"table", "json", "csv"} and len(choices) >= 2, (path, choices)
        if "--json" in names:
            assert p.hidden and "--format" in opts
        # -k is always --top-k
        if "-k" in names or "--top-k" in names:
            assert set(names) == {"-k", "--top-k"}
        if "--device" in names:
            assert p.metavar == "auto|cpu|cuda|cuda:N"
        if "--out" in names:
            assert "-o" in names
    # an example in the epilog, naming the command itself
    assert cmd.epilog and f"embedtag {' '.join(path)} " in cmd.epilog, f"{path}: no example"


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=IDS)
def test_help_shows_examples_and_no_bool_metavars(path, capsys):
    code, out, _ = run_cli(capsys, *path, "--help")
    assert code == 0
    assert "Example" in out and f"embedtag {' '.join(path)}" in out
    assert "<bool>" not in out
    assert "--backbone" not in out and "--json" not in out  # hidden aliases stay hidden


def test_one_noisy_weight_default():
    by_cmd = {" ".join(p): c for p, c in COMMANDS}
    defaults = {name: next(p.default for p in _options(by_cmd[name]) if "--noisy-weight" in p.opts)
                for name in ("fit-head", "finetune")}
    assert defaults["fit-head"] == defaults["finetune"] == 0.3


def test_device_choices_agree_with_the_resolver(capsys):
    from embedtag.embeddings.backbones.base import resolve_device
    from embedtag.errors import EmbedtagError

    assert resolve_device("cpu") == "cpu" and resolve_device("auto") in ("cpu", "cuda")
    for offered in ("cuda", "cuda:1"):  # offered by --device: never "unknown device" (at most "no GPU")
        try:
            resolve_device(offered)
        except EmbedtagError as exc:
            assert "no CUDA GPU" in str(exc)
    with pytest.raises(EmbedtagError, match="unknown device"):
        resolve_device("mps")
    for path in (("extract", "x", "--out", "y"), ("benchmark", "x", "--out", "y"), ("search", "ix", "q")):
        code, _, err = run_cli(capsys, *path, "--device", "mps")
        assert code == 2 and "'mps' is not one of auto, cpu, cuda, cuda:N" in err


def test_a_bad_choice_is_a_usage_error_listing_the_choices(capsys):
    code, out, err = run_cli(capsys, "search", "ix", "q", "--format", "xml")
    assert code == 2 and "xml" in err and all(c in err for c in ("table", "json", "csv")) and out == ""
    code, _, err = run_cli(capsys, "fit-head", "s", "--out", "h", "--head", "svm")
    assert code == 2 and all(c in err for c in ("mlp", "logreg", "lightgbm", "knn", "prior"))
    code, _, err = run_cli(capsys, "models", "-q", "-v")
    assert code == 2 and "exclude each other" in err


def test_library_errors_are_one_line_exit_1_and_verbose_adds_the_traceback(tmp_path, capsys):
    code, out, err = run_cli(capsys, "info", tmp_path / "nope")
    assert code == 1 and err.startswith("error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = run_cli(capsys, "info", tmp_path / "nope", "-v")
    assert code == 1 and "Traceback" in err and "error:" in err
    code, _, err = run_cli(capsys, "fit-head", tmp_path, "--out", tmp_path / "h", "-p", "C")
    assert code == 1 and "expected KEY=VALUE" in err and "Traceback" not in err


def test_an_unexpected_exception_is_still_one_line(tmp_path, capsys, monkeypatch):
    import embedtag.store

    def broken(path):
        raise ValueError("boom")

    monkeypatch.setattr(embedtag.store, "open_store", broken)
    code, _, err = run_cli(capsys, "info", tmp_path)
    assert code == 1 and "unexpected ValueError: boom" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_models_json_lists_every_backbone_and_stars_the_default(capsys):
    from embedtag.embeddings.registry import list_backbones

    code, out, _ = run_cli(capsys, "models", "--format", "json")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == [s.name for s in list_backbones()]
    assert sum(r["default"] for r in rows) == 1
    code, out, _ = run_cli(capsys, "models", "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("name,default,embedding_dim")


@pytest.fixture(scope="module")
def office(real_store, tmp_path_factory):
    """A real yamnet-lite store of dcase2016_task2_office, a logreg head and a flat index on it."""
    from embedtag.heads import fit_head
    from embedtag.search import build_index

    store = real_store("dcase2016_task2_office", model="yamnet-lite")
    tmp = tmp_path_factory.mktemp("contract")
    head, _ = fit_head(store, head="logreg", progress=False)
    head.save(tmp / "head")
    build_index(store).save(tmp / "ix")
    return store, tmp / "head", tmp / "ix"


def test_predict_writes_to_stdout_by_default_and_with_out_dash(office, tmp_path, capsys, monkeypatch):
    from embedtag.heads import load_head, predict_store

    store, head, _ = office
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "predict", head, store.path)
    assert code == 0 and "220 clips -> stdout" in err
    assert list(tmp_path.iterdir()) == []  # no silent submission.csv
    from io import StringIO

    df = pd.read_csv(StringIO(out))
    h = load_head(head)
    assert list(df.columns) == ["fname", *h.vocabulary] and df["fname"].tolist() == store.clip_ids
    direct = predict_store(h, store)[h.vocabulary].to_numpy()
    assert abs(df[h.vocabulary].to_numpy() - direct).max() < 1e-5
    # --out - is the same; -q drops the info line; -k and --format json
    code, out2, err = run_cli(capsys, "predict", head, store.path, "--out", "-", "-q")
    assert code == 0 and out2 == out and err == ""
    code, out3, _ = run_cli(capsys, "predict", head, store.path, "-k", "2", "--format", "json", "-o", "-", "-q")
    tags = json.loads(out3)
    assert len(tags) == 220 and tags[0]["fname"] == store.clip_ids[0] and len(tags[0]["tags"]) == 2
    truth = dict(zip(store.clip_ids, store.to_pandas(["labels"])["labels"]))
    top1 = sum(t["tags"][0]["label"] in truth[t["fname"]] for t in tags) / len(tags)
    assert top1 > 0.9  # in-sample, on a head fitted on these clips
    # a file, atomically written
    code, _, err = run_cli(capsys, "predict", head, store.path, "--out", tmp_path / "sub.csv")
    assert code == 0 and pd.read_csv(tmp_path / "sub.csv").equals(df)


def test_search_names_each_query_and_writes_to_stdout_or_a_file(office, tmp_path, capsys):
    store, _, ix = office
    path = store.to_pandas(["path"])["path"][3]
    clip = store.clip_ids[7]
    code, out, _ = run_cli(capsys, "search", ix, path, clip, "-k", "3", "--format", "json", "--out", "-")
    assert code == 0
    res = json.loads(out)
    assert [r["query"] for r in res] == [path, clip]
    assert res[0]["results"][0]["clip_id"] == store.clip_ids[3]  # a stored file finds itself first
    assert all(len(r["results"]) == 3 for r in res) and clip not in [x["clip_id"] for x in res[1]["results"]]
    code, out, _ = run_cli(capsys, "search", ix, clip, "-k", "3", "--format", "csv")
    rows = out.strip().splitlines()
    assert code == 0 and rows[0] == "query,rank,score,clip_id,path,labels" and len(rows) == 4
    assert rows[1].startswith(f"{clip},1,") and rows[1].split(",")[3] == res[1]["results"][0]["clip_id"]
    code, out, _ = run_cli(capsys, "search", ix, clip, "-k", "3", "--out", tmp_path / "n.txt")
    assert code == 0 and out == "" and f"nearest to {clip}" in (tmp_path / "n.txt").read_text()


def test_info_and_evaluate_speak_json(office, capsys):
    store, head, _ = office
    code, out, _ = run_cli(capsys, "info", store.path, "--format", "json")
    info = json.loads(out)
    assert code == 0 and info["n_clips"] == 220 and info["n_labelled"] == 220 and info["n_failed"] == 0
    assert info["manifest"]["backbone"] == "yamnet-lite" and info["manifest"]["embedding_dim"] == 1024
    code, out, _ = run_cli(capsys, "evaluate", head, store.path, "--format", "json")
    ev = json.loads(out)
    assert code == 0 and ev["n_clips"] == 220 and 0.9 < ev["lwlrap"] <= 1.0 and len(ev["per_class"]) == 11


def test_hidden_aliases_still_work(office, capsys):
    _, _, ix = office
    code, out, _ = run_cli(capsys, "index", "evaluate", ix, "--json", "-k", "3")
    ev = json.loads(out)
    assert code == 0 and ev["k"] == 3 and 0.5 < ev["precision_at_k"] <= 1.0
    code, out2, _ = run_cli(capsys, "index", "evaluate", ix, "--format", "json", "--top-k", "3")
    assert json.loads(out2)["precision_at_k"] == ev["precision_at_k"]


def test_main_loads_only_the_module_of_the_command_it_runs():
    """``COMMAND_MODULES`` names, for every top-level command, the module that defines it (``main`` imports only
    that one), and each module defines just the commands listed for it."""
    code = ("import importlib, json, typer.main\nfrom embedtag.cli import COMMAND_MODULES\n"
            "from embedtag.cli._app import app\nseen, got = set(), {}\n"
            "for m in sorted(set(COMMAND_MODULES.values())):\n"
            "    importlib.import_module('embedtag.cli.' + m)\n"
            "    names = set(typer.main.get_command(app).commands)\n"
            "    got.update({n: m for n in names - seen})\n    seen = names\n"
            "print(json.dumps([got, COMMAND_MODULES]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    got, declared = json.loads(r.stdout)
    assert got == declared
    assert set(got) == set(typer.main.get_command(app).commands)  # `app` itself has every command


@pytest.mark.parametrize("argv", [["--help"], ["extract", "--help"], ["predict", "--help"]])
def test_help_imports_no_heavy_library(argv):
    code = (f"import sys\nfrom embedtag.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "Usage" in r.stdout
    assert "HEAVY []" in r.stderr, r.stderr[-500:]


def test_top_level_api_is_listed_documented_and_lazy():
    code = f"import sys, embedtag; print([m for m in {HEAVY!r} if m in sys.modules]); print(dir(embedtag))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    heavy, listed = r.stdout.strip().splitlines()
    assert heavy == "[]"
    import embedtag

    assert eval(listed) == sorted(embedtag.__all__)
    wanted = {"encode", "extract", "open_store", "EmbeddingStore", "load_audio", "list_backbones", "load_backbone",
              "fit_head", "make_head", "load_head", "load_predictor", "predict_store", "predict_files",
              "evaluate_head", "build_index", "SimilarityIndex", "evaluate_index", "load_dataset", "lwlrap",
              "finetune", "load_finetuned", "EmbedtagError", "ParamError"}
    assert wanted <= set(embedtag.__all__)
    for name in embedtag.__all__:
        if name != "__version__":
            assert (getattr(embedtag, name).__doc__ or "").strip(), f"embedtag.{name} has no docstring"
    from embedtag.artifacts import load_predictor
    from embedtag.heads import fit_head

    assert embedtag.fit_head is fit_head and embedtag.load_predictor is load_predictor
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        embedtag.nope  # noqa: B018


def test_cli_freezes_the_collector_at_exit_once_per_process():
    # at exit the objects made so far are frozen before the interpreter's last collections (which would walk all
    # of PyTorch's), once however often main() ran; a handler registered before main() runs after that
    code = ("import atexit, gc\nfrom embedtag.cli import main\nreal, calls = gc.freeze, []\n"
            "gc.freeze = lambda: (calls.append(1), real())\n"
            "atexit.register(lambda: print('CALLS', len(calls), 'FROZEN', gc.get_freeze_count() > 1000))\n"
            "for _ in range(2):\n    try:\n        main(['models'])\n    except SystemExit:\n        pass\n"
            "print('BEFORE EXIT', len(calls), gc.get_freeze_count())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-500:]
    assert "BEFORE EXIT 0 0" in r.stdout
    assert r.stdout.rstrip().endswith("CALLS 1 FROZEN True"), r.stdout[-300:]
