"""Fine-tune AudioSet-pretrained CNNs end to end on a labelled dataset.

    from embedtag.finetune import finetune, load_finetuned

    result = finetune("data/office", backbone="efficientat-mn04", folds=5, epochs=(4, 6), out="runs/office")
    print(result.cv_lwlrap)                                  # out-of-fold lwlrap of the curated clips
    model = load_finetuned("runs/office")                    # every fold's network, ensembled
    probs = model.predict_proba_files(["a.wav", "b.wav"])    # (2, n_labels), averaged over crops and folds

Training: log-mel front end on the device, random crops, mixup, SpecAugment, curated oversampling, down-weighted
or Lsoft-bootstrapped noisy clips, stage "noisy" (curated + noisy; skipped without noisy clips) then stage
"curated"; softmax cross-entropy for single-label data, binary cross-entropy otherwise; AdamW with warm-up and
cosine decay and layer-wise learning rates; K-fold with early stopping on validation lwlrap; mixed precision and
channels-last on CUDA; an atomic checkpoint per epoch (``resume=True``). Per-class decision thresholds are
fitted on the out-of-fold predictions (``model.thresholds_``, as a head's); unreadable training files are recorded
and left out (``result.failures``).
"""

from embedtag.finetune.artifact import FinetunedModel, is_finetuned, load_finetuned
from embedtag.finetune.config import FINETUNABLE, FinetuneConfig
from embedtag.finetune.train import FinetuneResult, finetune

__all__ = ["finetune", "load_finetuned", "is_finetuned", "FinetunedModel", "FinetuneConfig", "FinetuneResult",
           "FINETUNABLE"]
