"""Recommender metrics and reference-vs-artifact drift: one row per (user, item) pair, binary label, one logit."""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

NAN = float("nan")
EPS = 1e-7


def _vector(values, name: str, dtype=np.float64) -> np.ndarray:
    """A 1-D array from input of shape [N] or [N, 1]; anything else raises ValueError."""
    array = np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must have shape [N] or [N, 1], got {array.shape}")
    return array


def _labels(labels) -> np.ndarray:
    """Labels as float64 0/1; any other value raises ValueError."""
    array = _vector(labels, "labels")
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError("labels must be binary (0 or 1)")
    return array


def _relevance(labels) -> np.ndarray:
    """Graded relevance labels as float64 (0 = not relevant); negative or non-finite values raise ValueError."""
    array = _vector(labels, "labels")
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError("relevance labels must be finite and >= 0")
    return array


def _same_length(*arrays: np.ndarray) -> None:
    """Raise ValueError unless every array has the same length."""
    if len({len(array) for array in arrays}) > 1:
        raise ValueError(f"inputs differ in length: {[len(array) for array in arrays]}")


def _mean(values: np.ndarray) -> float:
    """Mean as a Python float; NaN (no warning) for an empty array."""
    return float(values.mean()) if values.size else NAN


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the average of their ranks (values assumed finite)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    boundaries = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    starts, ends = np.r_[0, boundaries], np.r_[boundaries, len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def sigmoid(logits) -> np.ndarray:
    """Numerically stable logistic function: never overflows, exactly 0.5 at 0."""
    x = np.asarray(logits, dtype=np.float64)
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def auc(labels, scores) -> float:
    """ROC AUC by the Mann-Whitney rank formula, average ranks for ties; NaN with one class or any NaN score."""
    y, s = _labels(labels), _vector(scores, "scores")
    _same_length(y, s)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0 or np.isnan(s).any():
        return NAN
    rank_sum = float(_average_ranks(s)[y == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def logloss(labels, probabilities) -> float:
    """Mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7]; NaN for empty input."""
    y, p = _labels(labels), _vector(probabilities, "probabilities")
    _same_length(y, p)
    p = np.clip(p, EPS, 1.0 - EPS)
    return _mean(-(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def calibration(labels, probabilities) -> dict:
    """Mean predicted probability, observed positive rate and their ratio (NaN when the observed rate is 0)."""
    y, p = _labels(labels), _vector(probabilities, "probabilities")
    _same_length(y, p)
    predicted, observed = _mean(p), _mean(y)
    ratio = predicted / observed if observed > 0 else NAN  # also NaN when empty (observed is NaN)
    return {"mean_predicted": predicted, "observed_rate": observed, "ratio": ratio}


def _group_positions(groups: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group index per row and each row's 0-based position in its group, by descending score, ties by row order."""
    _, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.lexsort((-scores, inverse))  # stable: equal scores keep row order
    ordered_groups = inverse[order]
    positions = np.empty(len(scores), dtype=np.int64)
    positions[order] = np.arange(len(scores)) - np.searchsorted(ordered_groups, ordered_groups, side="left")
    return inverse, positions


def _check_k(k: int) -> int:
    """k as an int; raises ValueError when below 1."""
    if int(k) < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return int(k)


def ranking_metrics(groups, labels, scores, k: int) -> dict:
    """Per-group NDCG@k, HR@k and recall@k averaged over groups with a relevant row; others skipped and counted.

    Labels are relevance grades >= 0 (binary clicks are grades 0/1): NDCG gains are 2^grade - 1
    (the grade itself for 0/1), HR and recall count rows with a grade above 0."""
    k = _check_k(k)
    g, y, s = _vector(groups, "groups", dtype=None), _relevance(labels), _vector(scores, "scores")
    _same_length(g, y, s)
    inverse, positions = _group_positions(g, s)
    _, ideal_positions = _group_positions(g, y)  # the best possible order: by grade
    count = int(inverse.max()) + 1 if len(inverse) else 0
    gains, relevant = np.exp2(y) - 1.0, (y > 0).astype(np.float64)

    def discount(at):
        return (at < k) / np.log2(at + 2.0)

    dcg = np.bincount(inverse, weights=gains * discount(positions), minlength=count)
    ideal = np.bincount(inverse, weights=gains * discount(ideal_positions), minlength=count)
    hits = np.bincount(inverse, weights=relevant * (positions < k), minlength=count)
    positives = np.bincount(inverse, weights=relevant, minlength=count)
    used = positives > 0
    return {f"ndcg@{k}": _mean(dcg[used] / ideal[used]), f"hr@{k}": _mean((hits[used] > 0).astype(np.float64)),
            f"recall@{k}": _mean(hits[used] / positives[used]),  # hits over ALL the group's relevant rows
            "groups": int(used.sum()), "groups_skipped": int(count - used.sum())}


def spearman(a, b) -> float:
    """Spearman rank correlation, average ranks for ties; NaN if either is constant, has a NaN or has < 2 values."""
    x, y = _vector(a, "a"), _vector(b, "b")
    _same_length(x, y)
    if len(x) < 2 or np.isnan(x).any() or np.isnan(y).any():
        return NAN
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum()) / denominator if denominator > 0 else NAN


def topk_overlap(groups, reference_scores, artifact_scores, k: int) -> float:
    """Mean over groups of |top-k(reference) & top-k(artifact)| / min(k, group size); ties by row order."""
    k = _check_k(k)
    g = _vector(groups, "groups", dtype=None)
    r, a = _vector(reference_scores, "reference_scores"), _vector(artifact_scores, "artifact_scores")
    _same_length(g, r, a)
    inverse, reference_positions = _group_positions(g, r)
    _, artifact_positions = _group_positions(g, a)
    both = (reference_positions < k) & (artifact_positions < k)
    shared = np.bincount(inverse, weights=both.astype(np.float64))
    sizes = np.bincount(inverse)
    return _mean(shared / np.minimum(k, sizes))


def _model_metrics(logits: np.ndarray, labels: np.ndarray, groups: Optional[np.ndarray], k: int,
                   probabilistic: bool) -> dict:
    """AUC (relevant = grade > 0), with `probabilistic` logits logloss and calibration means, and (with
    groups) ranking metrics of one model's outputs."""
    metrics = {"auc": auc((labels > 0).astype(np.float64), logits)}
    if probabilistic:
        probabilities = sigmoid(logits)
        stats = calibration(labels, probabilities)
        metrics.update(logloss=logloss(labels, probabilities), mean_predicted=stats["mean_predicted"],
                       observed_rate=stats["observed_rate"])
    if groups is not None:
        ranking = ranking_metrics(groups, labels, logits, k)
        metrics.update({key: ranking[key] for key in (f"ndcg@{k}", f"hr@{k}", f"recall@{k}")})
    return metrics


def _drift(reference: np.ndarray, artifact: np.ndarray, labels: np.ndarray, groups: Optional[np.ndarray],
           k: int, probabilistic: bool) -> tuple[dict, dict, dict]:
    """Reference metrics, artifact metrics and the drift between them, on one set of rows."""
    ref = _model_metrics(reference, labels, groups, k, probabilistic)
    art = _model_metrics(artifact, labels, groups, k, probabilistic)
    drift = {"auc_drop": ref["auc"] - art["auc"]}
    if probabilistic:
        drift["logloss_increase"] = art["logloss"] - ref["logloss"]
    if groups is not None:
        ndcg = f"ndcg@{k}"
        usable = ref[ndcg] > 0  # False for 0 and NaN: relative drop undefined
        drift["ndcg_relative_drop"] = (ref[ndcg] - art[ndcg]) / ref[ndcg] if usable else NAN
        drift["hr_drop"] = ref[f"hr@{k}"] - art[f"hr@{k}"]
        drift["recall_drop"] = ref[f"recall@{k}"] - art[f"recall@{k}"]
    if probabilistic:
        drift["calibration_shift"] = art["mean_predicted"] - ref["mean_predicted"]
    drift["spearman"] = spearman(reference, artifact)
    if groups is not None:
        drift["topk_overlap"] = topk_overlap(groups, reference, artifact, k)
    drift["max_abs_error"] = float(np.abs(reference - artifact).max()) if len(reference) else NAN
    drift["samples"] = int(len(reference))
    return ref, art, drift


def recommender_metrics(reference_logits, artifact_logits, labels, groups=None,
                        segments: Optional[Mapping[str, np.ndarray]] = None, k: int = 10, *,
                        probabilistic: bool = True) -> dict:
    """Metrics of both models, their drift, and per-segment drift under '<name>=<value>/' keys.

    `probabilistic`: outputs are click logits and labels 0/1 (ctr: logloss and calibration too);
    otherwise outputs are ranking scores and labels relevance grades >= 0 (ranking)."""
    reference, artifact = _vector(reference_logits, "reference_logits"), _vector(artifact_logits, "artifact_logits")
    if reference.shape != artifact.shape:
        raise ValueError(f"output shapes differ: reference {reference.shape}, artifact {artifact.shape}")
    y = _labels(labels) if probabilistic else _relevance(labels)
    g = None if groups is None else _vector(groups, "groups", dtype=None)
    _same_length(reference, y, *([] if g is None else [g]))
    k = _check_k(k)
    ref, art, drift = _drift(reference, artifact, y, g, k, probabilistic)
    metrics = {**art, **{f"reference_{key}": value for key, value in ref.items()}, **drift}
    for name, values in (segments or {}).items():
        segment = _vector(values, f"segments[{name!r}]", dtype=None)
        _same_length(reference, segment)
        for value in np.unique(segment):
            rows = segment == value
            label = value.item() if hasattr(value, "item") else value
            _, _, part = _drift(reference[rows], artifact[rows], y[rows], None if g is None else g[rows], k,
                                probabilistic)
            metrics.update({f"{name}={label}/{key}": metric for key, metric in part.items()})
    return metrics
