"""``auto``: pick the head by inner cross-validation on the training clips.

Candidates: logistic regression (its C chosen among ``C_grid`` on the same inner folds), an MLP, kNN, and LightGBM
when there are at least ``lightgbm_min_clips`` clips (below that it overfits and costs most). Each is scored by
lwlrap on out-of-fold predictions of ``inner_folds`` multi-label stratified folds; the best is refitted on every
clip. When a rank-average of the best ``max_ensemble`` candidates beats the best alone in inner CV, that ensemble
is refitted instead. "Rank" is taken per class against the member's own out-of-fold scores (an empirical CDF kept
with the head), so it applies to one new clip as well as to a batch.

The choice and every candidate's inner lwlrap are in ``metrics["auto"]`` (config.json, fit-head's report).
Members are saved inside the head: their arrays under ``m<i>.`` prefixes in weights.safetensors, their kind and
parameters as JSON bytes, LightGBM's models under ``member_<i>/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embedtag.heads.base import Head, check_param, is_int

CANDIDATES = ("logreg", "mlp", "knn", "lightgbm")


class AutoHead(Head):
    kind = "auto"

    def __init__(self, candidates=CANDIDATES, C_grid=(0.01, 0.1, 1.0), inner_folds: int = 3, max_ensemble: int = 3,
                 lightgbm_min_clips: int = 1000, multi_label: bool = True, seed: int = 0):
        super().__init__(multi_label=multi_label, seed=seed)
        self.candidates = candidates
        self.C_grid = C_grid
        self.inner_folds = inner_folds
        self.max_ensemble = max_ensemble
        self.lightgbm_min_clips = lightgbm_min_clips

    def _validate_params(self):
        from embedtag.heads import HEADS

        ok = isinstance(self.candidates, (list, tuple)) and len(self.candidates) > 0 and all(
            c in HEADS and c not in ("auto", "prior") for c in self.candidates)
        check_param(ok, "candidates", self.candidates, f"a non-empty list of {', '.join(CANDIDATES)}")
        check_param(isinstance(self.C_grid, (list, tuple)) and len(self.C_grid) > 0 and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and 0 < c < 1e6 for c in self.C_grid),
            "C_grid", self.C_grid, "a non-empty list of positive numbers")
        check_param(is_int(self.inner_folds) and self.inner_folds >= 2, "inner_folds", self.inner_folds,
                    "an integer >= 2")
        check_param(is_int(self.max_ensemble) and self.max_ensemble >= 1, "max_ensemble", self.max_ensemble,
                    "an integer >= 1")
        check_param(is_int(self.lightgbm_min_clips) and self.lightgbm_min_clips >= 0, "lightgbm_min_clips",
                    self.lightgbm_min_clips, "an integer >= 0")

    # ------------------------------------------------------------------ selection
    def _specs(self, n_clips: int) -> list[tuple[str, str, dict]]:
        """(name, kind, params) of every candidate for ``n_clips`` training clips."""
        out = []
        for kind in self.candidates:
            if kind == "logreg":
                out += [(f"logreg(C={c:g})", "logreg", {"C": float(c)}) for c in self.C_grid]
            elif kind == "lightgbm":
                if n_clips >= self.lightgbm_min_clips:
                    out.append(("lightgbm", "lightgbm", {}))
            elif kind == "knn":
                out.append(("knn", "knn", {"k": int(min(10, max(1, n_clips // 10)))}))
            else:
                out.append((kind, kind, {}))
        return out

    def _make(self, kind: str, params: dict) -> Head:
        from embedtag.heads import make_head

        return make_head(kind, **params, multi_label=self.multi_label, seed=self.seed)

    def _fit(self, X, Y, sample_weight, subset, X_val, Y_val):
        from embedtag.heads.training import cross_validate, noisy_mask
        from embedtag.metrics import lwlrap

        scored = ~noisy_mask(subset, len(X)) & (Y.sum(1) > 0)
        specs = self._specs(int(scored.sum()))
        if not specs:
            specs = [("logreg(C=1)", "logreg", {"C": 1.0})]
        folds = min(self.inner_folds, int(scored.sum()))
        scores, oofs = {}, {}
        if folds >= 2:
            for name, kind, params in specs:
                cv = cross_validate(lambda k=kind, p=params: self._make(k, p), X, Y, subset=subset, folds=folds,
                                    seed=self.seed)
                scores[name] = float(cv.lwlrap)
                oofs[name] = cv.oof[cv.scored]
        else:  # too few clips to compare: the simplest candidate
            scores[specs[0][0]] = float("nan")
        # among the logistic regressions only the best C competes further
        logregs = [s[0] for s in specs if s[1] == "logreg" and s[0] in oofs]
        best_logreg = max(logregs, key=lambda n: scores[n]) if logregs else None
        pool = [s for s in specs if s[0] in scores and (s[1] != "logreg" or s[0] == best_logreg or not oofs)]
        pool.sort(key=lambda s: -np.nan_to_num(scores[s[0]], nan=-1))
        chosen = [pool[0]]
        ensemble_score = None
        if len(pool) >= 2 and self.max_ensemble >= 2 and oofs:
            Ys = Y[scored]
            best = scores[pool[0][0]]
            for m in range(2, min(self.max_ensemble, len(pool)) + 1):
                members = pool[:m]
                ranks = np.mean([_ecdf_columns(oofs[s[0]], oofs[s[0]]) for s in members], axis=0)
                score = float(lwlrap(Ys, ranks))
                if score > best + 1e-9:
                    best, chosen, ensemble_score = score, members, score
        self.members_ = []
        refs = []
        for name, kind, params in chosen:
            member = self._make(kind, params).fit(X, Y, sample_weight=sample_weight, subset=subset, X_val=X_val,
                                                  Y_val=Y_val)
            self.members_.append(member)
            refs.append(np.sort(oofs[name], axis=0).astype(np.float32) if len(chosen) > 1 else
                        np.zeros((0, Y.shape[1]), np.float32))
        self.refs_ = refs
        self.member_specs_ = [{"name": n, "kind": k, "params": p} for n, k, p in chosen]
        self.metrics = {**self.metrics, "auto": {
            "chosen": " + ".join(n for n, _, _ in chosen), "ensemble": len(chosen) > 1,
            "inner_folds": folds, "inner_lwlrap": scores, "ensemble_inner_lwlrap": ensemble_score}}

    def _predict_proba(self, X):
        if len(self.members_) == 1:
            return self.members_[0].predict_proba(X)
        P = np.mean([_ecdf_columns(m.predict_proba(X), ref) for m, ref in zip(self.members_, self.refs_)], axis=0)
        if not self.multi_label:
            P = P / np.maximum(P.sum(1, keepdims=True), 1e-12)
        return P

    # ------------------------------------------------------------------ artifacts
    def _state(self):
        state = {"members": np.frombuffer(json.dumps(self.member_specs_).encode(), np.uint8).copy()}
        for i, (m, ref) in enumerate(zip(self.members_, self.refs_)):
            state[f"m{i}.ref"] = ref
            state.update({f"m{i}.{k}": v for k, v in m._state().items()})
        return state

    def _set_state(self, state):
        self.member_specs_ = json.loads(bytes(state["members"]).decode())
        self.members_, self.refs_ = [], []
        for i, spec in enumerate(self.member_specs_):
            m = self._make(spec["kind"], spec["params"])
            prefix = f"m{i}."
            m.classes_, m.n_labels_, m.n_features_in_ = self.classes_, self.n_labels_, self.n_features_in_
            m._set_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k != prefix + "ref"})
            self.members_.append(m)
            self.refs_.append(state[prefix + "ref"])

    def _save_extra(self, directory: Path):
        written = []
        for i, m in enumerate(self.members_):
            written += m._save_extra(Path(directory) / f"member_{i}")
        return written

    def _load_extra(self, directory: Path):
        for i, m in enumerate(self.members_):
            m._load_extra(Path(directory) / f"member_{i}")


def _ecdf_columns(P: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Each column of ``P`` as its rank among the same column of ``ref`` (a fraction in [0, 1])."""
    out = np.empty(P.shape, np.float64)
    ref = np.sort(ref, axis=0)
    n = max(len(ref), 1)
    for j in range(P.shape[1]):
        lo = np.searchsorted(ref[:, j], P[:, j], side="left")
        hi = np.searchsorted(ref[:, j], P[:, j], side="right")
        out[:, j] = (lo + hi) / (2 * n)  # mid-rank: ties share one value
    return out
