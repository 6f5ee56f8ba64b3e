"""Speech-emotion-recognition metrics from a confusion matrix (numpy only).

The SER literature's names: *unweighted accuracy* (UA) is the mean of per-class
recall, *weighted accuracy* (WA) is plain accuracy.

    >>> import numpy as np
    >>> from trainer.metrics import confusion_matrix, summarize
    >>> cm = confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2)
    >>> summarize(cm)["ua"]
    0.75
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of rows with true class ``i`` predicted as ``j`` (int64)."""
    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} rows but y_pred has {y_pred.size}")
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} holds class indices outside [0, {num_classes})")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def summarize(cm: np.ndarray, label_names: list[str] | None = None) -> dict:
    """UA, WA, macro-F1, per-class recall/F1 and support from a confusion matrix.

    Conventions (those of scikit-learn): UA averages recall over classes that occur in
    the truth; macro-F1 averages F1 over classes that occur in the truth or in the
    predictions. Classes absent from both do not count, so a taxonomy label that never
    occurs in a test set does not drag the scores down.
    """
    cm = np.asarray(cm, dtype=np.int64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    total = int(cm.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    present = support > 0
    seen = present | (predicted > 0)
    names = label_names or [str(i) for i in range(cm.shape[0])]
    return {
        "ua": float(recall[present].mean()) if present.any() else 0.0,
        "wa": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "n": total,
        "per_class": {
            names[i]: {"recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i in range(cm.shape[0])
        },
        "confusion_matrix": cm.tolist(),
        "labels": list(names),
    }
