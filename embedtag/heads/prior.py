"""The majority-class / label-prior baseline: every clip gets the training label frequencies. It ranks labels by
how common they are, which is the floor any head that looks at the audio must beat."""

from __future__ import annotations

import numpy as np

from embedtag.heads.base import Head


class PriorHead(Head):
    kind = "prior"

    def _fit(self, X, Y, sample_weight, subset, X_val, Y_val):
        w = sample_weight if sample_weight.sum() > 0 else np.ones(len(Y), np.float32)
        self.prior_ = np.average(Y, axis=0, weights=w).astype(np.float32)

    def _predict_proba(self, X):
        return np.broadcast_to(self.prior_, (len(X), len(self.prior_))).copy()

    def _state(self):
        return {"prior": self.prior_}

    def _set_state(self, state):
        self.prior_ = state["prior"]
