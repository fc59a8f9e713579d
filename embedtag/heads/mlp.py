"""A small PyTorch MLP on embeddings: standardise -> [Linear -> BatchNorm -> ReLU -> Dropout] x 1-2 -> Linear.

Multi-label: sigmoid outputs, binary cross-entropy. Single-label: softmax, cross-entropy. Early stopping keeps the
weights of the epoch with the best validation lwlrap (single-label: the same metric, which then equals mean
reciprocal rank of the true label), on ``X_val``/``Y_val`` when given, else on a held-out ``validation_fraction``
of the clean clips, but only when that split has at least ``min_validation_clips`` clips: on the small real sets
of benchmarks/heads_real.py, ranking epochs on ~30 held-out clips cost 0.01-0.09 lwlrap against training
``epochs`` epochs on every clip, and so did batch norm, hence the defaults (no batch norm, dropout 0.5,
40 epochs). Noisy clips (``subset == "noisy"``) can be trained with the soft bootstrapping loss Lsoft of
Reed et al. (2015): the target becomes ``beta * label + (1 - beta) * prediction``, so the model is
allowed to partly disagree with a label it finds implausible. Runs on CUDA when present.
"""

from __future__ import annotations

import numpy as np

from embedtag.heads.base import Head, check_param, is_bool, is_int, is_number
from embedtag.metrics import lwlrap


class MLPHead(Head):
    kind = "mlp"

    def __init__(self, hidden=(512,), dropout: float = 0.5, batch_norm: bool = False, lr: float = 1e-3,
                 weight_decay: float = 1e-4, epochs: int = 40, batch_size: int = 128, patience: int = 10,
                 validation_fraction: float = 0.15, min_validation_clips: int = 100, label_smoothing: float = 0.0,
                 bootstrap_beta: float | None = None, device: str = "auto", n_threads: int = 1,
                 multi_label: bool = True, seed: int = 0):
        super().__init__(multi_label=multi_label, seed=seed)
        self.hidden = hidden
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.min_validation_clips = min_validation_clips
        self.label_smoothing = label_smoothing
        self.bootstrap_beta = bootstrap_beta
        self.device = device
        self.n_threads = n_threads

    def _layers(self) -> tuple[int, ...]:
        """``hidden`` as a tuple of widths (an int is one layer)."""
        h = self.hidden
        return (h,) if is_int(h) else tuple(h) if isinstance(h, (list, tuple)) else (h,)

    def _validate_params(self):
        hidden = self._layers()
        check_param(1 <= len(hidden) <= 2 and all(is_int(h) and h >= 1 for h in hidden), "hidden", self.hidden,
                    "one or two layer widths >= 1")
        check_param(is_number(self.dropout) and 0 <= self.dropout < 1, "dropout", self.dropout, "in [0, 1)")
        check_param(is_bool(self.batch_norm), "batch_norm", self.batch_norm, "True or False")
        check_param(is_number(self.lr) and self.lr > 0, "lr", self.lr, "a finite number > 0")
        check_param(is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay", self.weight_decay,
                    "a finite number >= 0")
        check_param(is_int(self.epochs) and self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        check_param(is_int(self.batch_size) and self.batch_size >= 2, "batch_size", self.batch_size,
                    "an integer >= 2")
        check_param(is_int(self.patience) and self.patience >= 1, "patience", self.patience, "an integer >= 1")
        check_param(is_number(self.validation_fraction) and 0 <= self.validation_fraction < 0.5,
                    "validation_fraction", self.validation_fraction, "in [0, 0.5)")
        check_param(is_int(self.min_validation_clips) and self.min_validation_clips >= 1, "min_validation_clips",
                    self.min_validation_clips, "an integer >= 1")
        check_param(is_number(self.label_smoothing) and 0 <= self.label_smoothing < 0.5, "label_smoothing",
                    self.label_smoothing, "in [0, 0.5)")
        check_param(self.bootstrap_beta is None or (is_number(self.bootstrap_beta) and 0 < self.bootstrap_beta <= 1),
                    "bootstrap_beta", self.bootstrap_beta, "None or in (0, 1]")
        check_param(isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda")
                                                      or self.device.startswith("cuda:")),
                    "device", self.device, "'auto', 'cpu' or 'cuda[:N]'")
        check_param(is_int(self.n_threads) and self.n_threads >= 0, "n_threads", self.n_threads,
                    "an integer >= 0 (0: torch's default)")

    # ------------------------------------------------------------------ model
    def _build(self, dim: int, n_labels: int):
        import torch.nn as nn

        layers: list = []
        width = dim
        for h in self._layers():
            layers.append(nn.Linear(width, int(h)))
            if self.batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers += [nn.ReLU(), nn.Dropout(float(self.dropout))]
            width = int(h)
        layers.append(nn.Linear(width, n_labels))
        return nn.Sequential(*layers)

    def _torch_device(self):
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    # ------------------------------------------------------------------ training
    def _fit(self, X, Y, sample_weight, subset, X_val, Y_val):
        import torch

        # CPU threads for the duration of the fit only. One thread is the default: these matrices are small, and
        # torch's OpenMP pool spinning on shared cores made a 200-clip fit 50x slower than one thread.
        previous = torch.get_num_threads()
        if self.n_threads:
            torch.set_num_threads(int(self.n_threads))
        try:
            self._train(X, Y, sample_weight, subset, X_val, Y_val)
        finally:
            torch.set_num_threads(previous)

    def _train(self, X, Y, sample_weight, subset, X_val, Y_val):
        import torch
        import torch.nn.functional as F

        torch.manual_seed(int(self.seed))
        rng = np.random.default_rng(self.seed)
        noisy = np.zeros(len(X), bool) if subset is None else (subset == "noisy")
        if X_val is None and self.validation_fraction > 0:
            # hold out clean clips only: early stopping must not chase noisy labels
            clean = np.flatnonzero(~noisy & (Y.sum(1) > 0))
            n_val = int(round(len(clean) * self.validation_fraction))
            if n_val >= self.min_validation_clips and len(clean) - n_val >= 5:
                val_idx = rng.choice(clean, n_val, replace=False)
                keep = np.ones(len(X), bool)
                keep[val_idx] = False
                X_val, Y_val = X[val_idx], Y[val_idx]
                X, Y, sample_weight, noisy = X[keep], Y[keep], sample_weight[keep], noisy[keep]
        self.mean_ = X.mean(0).astype(np.float32)
        self.scale_ = X.std(0).astype(np.float32)
        self.scale_[self.scale_ < 1e-8] = 1.0

        dev = self._torch_device()
        model = self._build(X.shape[1], Y.shape[1]).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        mean, scale = torch.from_numpy(self.mean_).to(dev), torch.from_numpy(self.scale_).to(dev)
        Xt = (torch.tensor(X, device=dev) - mean) / scale
        Yt = torch.tensor(Y, device=dev)
        eps = float(self.label_smoothing)
        if eps:
            Yt = Yt * (1 - eps) + eps / (2 if self.multi_label else Y.shape[1])
        Wt = torch.from_numpy(sample_weight).to(dev)
        Nt = torch.from_numpy(noisy).to(dev)
        has_val = X_val is not None and Y_val is not None and (np.asarray(Y_val).sum() > 0)
        if has_val:
            Xv = (torch.tensor(np.asarray(X_val, np.float32), device=dev) - mean) / scale
        gen = torch.Generator(device="cpu").manual_seed(int(self.seed))
        best, best_state, bad, history = -1.0, None, 0, []
        n = len(Xt)
        # batch norm cannot train on a batch of one: drop a trailing singleton batch
        for epoch in range(int(self.epochs)):
            model.train()
            perm = torch.randperm(n, generator=gen).to(dev)
            total = 0.0
            batch_size = int(self.batch_size)
            for start in range(0, n, batch_size):
                idx = perm[start:start + batch_size]
                if len(idx) < 2 and self.batch_norm:
                    continue
                logits = model(Xt[idx])
                target = Yt[idx]
                if self.bootstrap_beta is not None and bool(Nt[idx].any()):
                    with torch.no_grad():
                        pred = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, 1)
                    soft = self.bootstrap_beta * target + (1 - self.bootstrap_beta) * pred
                    target = torch.where(Nt[idx][:, None], soft, target)
                if self.multi_label:
                    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)
                else:
                    loss = -(target * F.log_softmax(logits, 1)).sum(1)
                w = Wt[idx]
                loss = (loss * w).sum() / w.sum().clamp_min(1e-8)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            record = {"epoch": epoch + 1, "train_loss": total / max(n, 1)}
            if has_val:
                model.eval()
                with torch.no_grad():
                    sv = model(Xv).float().cpu().numpy()
                score = lwlrap(Y_val, sv)
                record["val_lwlrap"] = score
                if score > best + 1e-6:
                    best, bad = score, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad += 1
            history.append(record)
            if has_val and bad >= self.patience:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        self.model_ = model.cpu()
        self.metrics = {**self.metrics, "epochs_run": len(history),
                        "best_val_lwlrap": best if has_val else None,
                        "final_train_loss": history[-1]["train_loss"] if history else None}

    def _decision(self, X):
        import torch

        previous = torch.get_num_threads()
        if self.n_threads:
            torch.set_num_threads(int(self.n_threads))
        try:
            self.model_.eval()
            with torch.no_grad():
                # torch.tensor copies: store embeddings can be read-only Arrow buffers
                Xt = (torch.tensor(X) - torch.from_numpy(self.mean_)) / torch.from_numpy(self.scale_)
                return self.model_(Xt).double().numpy()
        finally:
            torch.set_num_threads(previous)

    # ------------------------------------------------------------------ state
    def _state(self):
        state = {f"model.{k}": v.detach().cpu().numpy() for k, v in self.model_.state_dict().items()}
        return {**state, "mean": self.mean_, "scale": self.scale_}

    def _set_state(self, state):
        import torch

        # copies: safetensors hands out read-only buffers, which torch.from_numpy warns about
        self.mean_, self.scale_ = np.array(state["mean"]), np.array(state["scale"])
        model = self._build(len(self.mean_), self.n_labels_)
        sd = {k[len("model."):]: torch.from_numpy(np.array(v)) for k, v in state.items() if k.startswith("model.")}
        model.load_state_dict(sd)
        model.eval()
        self.model_ = model
