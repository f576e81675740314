"""Recommender metrics and drift, compared with values computed by hand on tiny arrays."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from edgepack.evaluation.rec_metrics import (
    auc,
    calibration,
    logloss,
    ranking_metrics,
    recommender_metrics,
    sigmoid,
    spearman,
    topk_overlap,
)

D3 = 1.0 / math.log2(3)  # discount of the second position, 0.6309...


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- auc ---------------------------------------------------------------------------------------------------------


def test_auc_hand_computed():
    # ranks of [0.1, 0.4, 0.35, 0.8] are [1, 3, 2, 4]; positives hold 2 + 4 = 6; (6 - 2*3/2) / (2*2) = 0.75
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_auc_ties_take_average_rank():
    # ranks of [0.5, 0.5, 0.2, 0.9] are [2.5, 2.5, 1, 4]; positives (rows 1, 3) hold 6.5; (6.5 - 3) / 4 = 0.875
    # pairwise: (0.5 vs 0.5) = 1/2, (0.5 vs 0.2) = 1, (0.9 vs 0.5) = 1, (0.9 vs 0.2) = 1 -> 3.5 / 4
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9])) == pytest.approx(0.875)
    assert auc(np.array([0, 1, 0, 1]), np.full(4, 3.0)) == pytest.approx(0.5)


def test_auc_perfect_and_reversed():
    assert auc(np.array([0, 0, 1]), np.array([-1.0, 0.0, 5.0])) == 1.0
    assert auc(np.array([0, 0, 1]), np.array([6.0, 2.0, 1.0])) == 0.0


def test_auc_one_class_is_nan():
    assert math.isnan(auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])))
    assert math.isnan(auc(np.array([0, 0]), np.array([0.1, 0.2])))
    assert math.isnan(auc(np.array([]), np.array([])))


def test_auc_rejects_non_binary_labels():
    with pytest.raises(ValueError, match="binary"):
        auc(np.array([0, 2]), np.array([0.1, 0.2]))


# --- logloss, calibration, sigmoid -------------------------------------------------------------------------------


def test_logloss_hand_computed():
    # -(ln 0.8 + ln(1 - 0.4)) / 2 = (0.22314 + 0.51083) / 2
    assert logloss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx((-math.log(0.8) - math.log(0.6)) / 2)


def test_logloss_clips_probabilities():
    # a confidently wrong 0 or 1 costs -ln(1e-7) = 7 ln 10 = 16.118, not infinity
    assert logloss(np.array([1, 0]), np.array([0.0, 1.0])) == pytest.approx(7 * math.log(10))
    assert logloss(np.array([1]), np.array([1.0])) == pytest.approx(-math.log(1 - 1e-7))


def test_calibration_hand_computed():
    stats = calibration(np.array([1, 0, 0, 0]), np.array([0.5, 0.3, 0.1, 0.1]))
    assert stats["mean_predicted"] == pytest.approx(0.25)  # (0.5 + 0.3 + 0.1 + 0.1) / 4
    assert stats["observed_rate"] == pytest.approx(0.25)
    assert stats["ratio"] == pytest.approx(1.0)
    assert calibration(np.array([1, 1]), np.array([0.3, 0.5]))["ratio"] == pytest.approx(0.4)  # 0.4 / 1.0


def test_calibration_ratio_nan_without_positives():
    stats = calibration(np.array([0, 0]), np.array([0.2, 0.4]))
    assert stats["mean_predicted"] == pytest.approx(0.3) and stats["observed_rate"] == 0.0
    assert math.isnan(stats["ratio"])


def test_sigmoid_values_and_stability():
    # sigmoid(ln 3) = 3 / 4, sigmoid(-ln 3) = 1 / 4
    values = sigmoid(np.array([0.0, math.log(3), -math.log(3)]))
    np.testing.assert_allclose(values, [0.5, 0.75, 0.25])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extreme = sigmoid(np.array([-1000.0, 1000.0]))
    assert extreme[0] == 0.0 and extreme[1] == 1.0


# --- ranking -----------------------------------------------------------------------------------------------------

# rows of four users interleaved: user 7 (scores .9 .8 .7 .6, labels 0 1 0 1), user 3 (scores .2 .5 .1, labels 1 0 0),
# user 5 (no positive), user 9 (positive ranked third)
RANK_GROUPS = np.array([7, 3, 7, 5, 3, 7, 9, 5, 7, 3, 9, 9])
RANK_LABELS = np.array([0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1])
RANK_SCORES = np.array([.9, .2, .8, .4, .5, .7, .9, .3, .6, .1, .8, .1])


def test_ranking_metrics_hand_computed():
    metrics = ranking_metrics(RANK_GROUPS, RANK_LABELS, RANK_SCORES, k=2)
    # user 7, top 2 = (.9 neg, .8 pos): DCG = 1/log2(3); IDCG (2 positives) = 1 + 1/log2(3); recall 1/2
    ndcg_7 = D3 / (1 + D3)  # 0.38685
    # user 3, order .5 neg, .2 pos, .1 neg: DCG = 1/log2(3); IDCG (1 positive) = 1; recall 1/1
    ndcg_3 = D3
    # user 9, order .9 neg, .8 neg, .1 pos: nothing in top 2 -> 0, 0, 0; user 5 has no positive: skipped
    assert metrics["ndcg@2"] == pytest.approx((ndcg_7 + ndcg_3 + 0.0) / 3)  # 0.33926
    assert metrics["hr@2"] == pytest.approx(2 / 3)
    assert metrics["recall@2"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert metrics["groups"] == 3 and metrics["groups_skipped"] == 1


def test_recall_divides_by_all_positives_and_ideal_is_capped_at_k():
    # three positives, two fit in the top 2: recall = 2/3 (not 2/min(2, 3) = 1); DCG = IDCG = 1 + 1/log2(3) -> NDCG 1
    metrics = ranking_metrics(np.zeros(4), np.array([1, 1, 1, 0]), np.array([4.0, 3.0, 2.0, 1.0]), k=2)
    assert metrics["recall@2"] == pytest.approx(2 / 3)
    assert metrics["ndcg@2"] == pytest.approx(1.0)
    assert metrics["hr@2"] == 1.0


def test_graded_relevance_ndcg_hand_computed():
    # one user, grades 3, 0, 1 scored .2 .9 .5: order = (grade 0, grade 1, grade 3)
    # DCG@3 = 0/1 + (2^1-1)/log2(3) + (2^3-1)/log2(4) = 0.63093 + 3.5; IDCG (order 3, 1, 0) = 7 + 1/log2(3)
    metrics = ranking_metrics(np.zeros(3), np.array([3, 0, 1]), np.array([0.2, 0.9, 0.5]), k=3)
    assert metrics["ndcg@3"] == pytest.approx((D3 + 3.5) / (7 + D3))  # 0.54134
    assert metrics["recall@3"] == 1.0 and metrics["hr@3"] == 1.0
    # k = 1: the top row has grade 0 -> NDCG 0, no hit; the two relevant rows are both missed
    top1 = ranking_metrics(np.zeros(3), np.array([3, 0, 1]), np.array([0.2, 0.9, 0.5]), k=1)
    assert top1["ndcg@1"] == 0.0 and top1["hr@1"] == 0.0 and top1["recall@1"] == 0.0


def test_ranking_mode_has_no_probability_metrics_and_takes_grades():
    grades = np.array([0, 2, 1, 0, 0, 3])
    metrics = recommender_metrics(REFERENCE, ARTIFACT, grades, GROUPS, {}, k=2, probabilistic=False)
    assert not any(key.startswith(("logloss", "calibration", "mean_predicted", "observed_rate",
                                   "reference_logloss")) for key in metrics)
    assert {"auc_drop", "ndcg_relative_drop", "spearman", "topk_overlap"} <= set(metrics)
    # AUC counts grade > 0 as relevant: the same as with the binarised labels
    binary = recommender_metrics(REFERENCE, ARTIFACT, (grades > 0).astype(int), GROUPS, {}, k=2)
    assert metrics["auc"] == binary["auc"] and metrics["reference_auc"] == binary["reference_auc"]
    with pytest.raises(ValueError, match="binary"):
        recommender_metrics(REFERENCE, ARTIFACT, grades, GROUPS, {}, k=2)  # ctr: clicks are 0/1
    with pytest.raises(ValueError, match=">= 0"):
        recommender_metrics(REFERENCE, ARTIFACT, -grades, GROUPS, {}, k=2, probabilistic=False)


def test_ranking_ties_broken_by_row_order():
    scores = np.full(3, 0.5)
    assert ranking_metrics(np.zeros(3), np.array([1, 0, 0]), scores, k=1)["hr@1"] == 1.0  # row 0 comes first
    assert ranking_metrics(np.zeros(3), np.array([0, 0, 1]), scores, k=1)["hr@1"] == 0.0
    # rows 0, 1 form the top 2; the positive at position 2 (1-based) gains 1/log2(3), IDCG = 1
    assert ranking_metrics(np.zeros(3), np.array([0, 1, 0]), scores, k=2)["ndcg@2"] == pytest.approx(D3)


def test_ranking_without_any_positive_is_nan_and_counted():
    metrics = ranking_metrics(np.array([1, 1, 2]), np.zeros(3), np.array([0.1, 0.2, 0.3]), k=2)
    assert math.isnan(metrics["ndcg@2"]) and math.isnan(metrics["hr@2"]) and math.isnan(metrics["recall@2"])
    assert metrics["groups"] == 0 and metrics["groups_skipped"] == 2


def test_ranking_rejects_k_below_one():
    with pytest.raises(ValueError, match="k must be"):
        ranking_metrics(np.zeros(2), np.array([0, 1]), np.array([0.1, 0.2]), k=0)


# --- spearman, topk_overlap --------------------------------------------------------------------------------------


def test_spearman_perfect_reversed_and_monotone():
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 2, 3]), np.array([1.0, 8, 27])) == pytest.approx(1.0)  # ranks, not values


def test_spearman_hand_computed():
    # rank differences d = [-1, 1, -1, 1, 0], sum d^2 = 4: 1 - 6*4 / (5 * (25 - 1)) = 0.8
    assert spearman(np.array([1.0, 2, 3, 4, 5]), np.array([2.0, 1, 4, 3, 5])) == pytest.approx(0.8)


def test_spearman_ties():
    # ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4]; centred [-1.5, 0, 0, 1.5] and [-1.5, -.5, .5, 1.5]
    # sum of products 4.5, sums of squares 4.5 and 5: 4.5 / sqrt(4.5 * 5) = sqrt(0.9) = 0.94868
    assert spearman(np.array([1.0, 2, 2, 3]), np.array([1.0, 2, 3, 4])) == pytest.approx(math.sqrt(0.9))


def test_spearman_constant_is_nan():
    assert math.isnan(spearman(np.array([1.0, 1, 1]), np.array([1.0, 2, 3])))
    assert math.isnan(spearman(np.array([1.0]), np.array([2.0])))


def test_topk_overlap_half():
    # reference top 2 = rows {0, 1}, artifact top 2 = rows {0, 2}: 1 shared / 2
    groups = np.array([1, 1, 1, 1])
    assert topk_overlap(groups, np.array([.9, .8, .1, .0]), np.array([.9, .1, .8, .0]), k=2) == pytest.approx(0.5)


def test_topk_overlap_small_group_divides_by_size():
    # group 1: 0.5 as above; group 2 has one row, shared 1 / min(2, 1) = 1; mean 0.75
    groups = np.array([1, 2, 1, 1, 1])
    reference, artifact = np.array([.9, .3, .8, .1, .0]), np.array([.9, .7, .1, .8, .0])
    assert topk_overlap(groups, reference, artifact, k=2) == pytest.approx(0.75)


# --- recommender_metrics -----------------------------------------------------------------------------------------

# users 1 and 2; the reference ranks each user's positive first, the artifact demotes user 1's positive (2 -> 0) and
# promotes a negative (0 -> 1)
GROUPS = np.array([1, 1, 1, 2, 2, 2])
LABELS = np.array([1, 0, 0, 0, 1, 0])
REFERENCE = np.array([2.0, 0.0, -1.0, 0.0, 1.0, -2.0])
ARTIFACT = np.array([0.0, 1.0, -1.0, 0.0, 1.0, -2.0])
SEGMENTS = {"user_segment": np.array([0, 0, 0, 1, 1, 1]), "device": np.array([0, 1, 1, 2, 1, 1])}
DRIFT_KEYS = ["auc_drop", "logloss_increase", "ndcg_relative_drop", "hr_drop", "recall_drop", "calibration_shift",
              "spearman", "topk_overlap", "max_abs_error", "samples"]


def test_returned_keys():
    metrics = recommender_metrics(REFERENCE, ARTIFACT, LABELS, GROUPS, {})
    model = ["auc", "logloss", "mean_predicted", "observed_rate", "ndcg@10", "hr@10", "recall@10"]
    assert list(metrics) == model + [f"reference_{key}" for key in model] + DRIFT_KEYS
    assert all(isinstance(value, (float, int)) for value in metrics.values())


def test_identical_logits_have_no_drift():
    metrics = recommender_metrics(REFERENCE, REFERENCE.copy(), LABELS, GROUPS, SEGMENTS)
    for key in ["auc_drop", "logloss_increase", "ndcg_relative_drop", "hr_drop", "recall_drop", "calibration_shift",
                "max_abs_error", "user_segment=0/auc_drop"]:
        assert metrics[key] == 0.0, key
    assert metrics["topk_overlap"] == 1.0 and metrics["spearman"] == pytest.approx(1.0)
    assert metrics["auc"] == metrics["reference_auc"] == 1.0
    assert metrics["observed_rate"] == pytest.approx(2 / 6)


def test_perturbed_artifact_hand_computed():
    metrics = recommender_metrics(REFERENCE, ARTIFACT, LABELS, GROUPS, {}, k=1)
    # artifact AUC: positive 0 vs negatives {1, -1, 0, -2} = 0 + 1 + 1/2 + 1; positive 1 vs them = 1/2 + 1 + 1 + 1
    assert metrics["reference_auc"] == 1.0 and metrics["auc"] == pytest.approx(6 / 8)
    assert metrics["auc_drop"] == pytest.approx(0.25)
    # only rows 0 and 1 change: row 0 (label 1) costs ln(1+e^-x), row 1 (label 0) costs ln(1+e^x)
    # (ln 2 - ln(1 + e^-2) + ln(1 + e) - ln 2) / 6
    assert metrics["logloss_increase"] == pytest.approx((math.log(1 + math.e) - math.log(1 + math.exp(-2))) / 6)
    # mean probability changes by (sig(0) - sig(2) + sig(1) - sig(0)) / 6 < 0
    assert metrics["calibration_shift"] == pytest.approx((_sig(1) - _sig(2)) / 6)
    # top 1: reference hits both users; artifact misses user 1 (row 1) -> NDCG, HR, recall 1 -> 0.5
    assert metrics["reference_ndcg@1"] == 1.0 and metrics["ndcg@1"] == pytest.approx(0.5)
    assert metrics["ndcg_relative_drop"] == pytest.approx(0.5)
    assert metrics["hr_drop"] == pytest.approx(0.5) and metrics["recall_drop"] == pytest.approx(0.5)
    assert metrics["topk_overlap"] == pytest.approx(0.5)  # user 1 {0} vs {1}, user 2 {4} vs {4}
    # ranks: reference [6, 3.5, 2, 3.5, 5, 1], artifact [3.5, 5.5, 2, 3.5, 5.5, 1]; centred products sum to 11.5,
    # squares to 17 and 16.5
    assert metrics["spearman"] == pytest.approx(11.5 / math.sqrt(17 * 16.5))
    assert metrics["max_abs_error"] == 2.0
    assert metrics["samples"] == 6


def test_perturbed_artifact_drift_signs_at_default_k():
    metrics = recommender_metrics(REFERENCE, ARTIFACT, LABELS, GROUPS, {})
    assert metrics["auc_drop"] > 0 and metrics["logloss_increase"] > 0 and metrics["ndcg_relative_drop"] > 0
    assert metrics["calibration_shift"] < 0 and metrics["spearman"] < 1
    assert metrics["hr_drop"] == 0.0 and metrics["recall_drop"] == 0.0  # 3 rows per user all fit in the top 10
    improved = recommender_metrics(ARTIFACT, REFERENCE, LABELS, GROUPS, {})
    assert improved["auc_drop"] < 0 and improved["logloss_increase"] < 0 and improved["ndcg_relative_drop"] < 0


def test_segment_keys_and_counts():
    metrics = recommender_metrics(REFERENCE, ARTIFACT, LABELS, GROUPS, SEGMENTS, k=1)
    for prefix, samples in [("user_segment=0/", 3), ("user_segment=1/", 3), ("device=0/", 1), ("device=1/", 4),
                            ("device=2/", 1)]:
        assert [key[len(prefix):] for key in metrics if key.startswith(prefix)] == DRIFT_KEYS
        assert metrics[prefix + "samples"] == samples
    # cold user 1: reference AUC 1, artifact positive 0 vs negatives {1, -1} = 1/2 -> drop 0.5; warm user unchanged
    assert metrics["user_segment=0/auc_drop"] == pytest.approx(0.5)
    assert metrics["user_segment=0/hr_drop"] == pytest.approx(1.0)
    assert metrics["user_segment=1/auc_drop"] == 0.0 and metrics["user_segment=1/max_abs_error"] == 0.0


def test_one_class_segment_is_nan_without_raising():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = recommender_metrics(REFERENCE, ARTIFACT, LABELS, GROUPS, SEGMENTS)
    assert math.isnan(metrics["device=0/auc_drop"])  # one row, label 1
    assert math.isnan(metrics["device=2/auc_drop"])  # one row, label 0
    assert math.isnan(metrics["device=2/ndcg_relative_drop"])  # no positive: no ranked group
    assert math.isnan(metrics["device=0/spearman"])  # a single row has no rank correlation
    assert metrics["device=0/max_abs_error"] == 2.0 and math.isfinite(metrics["device=0/logloss_increase"])
    assert not math.isnan(metrics["device=1/auc_drop"])


def test_without_groups_ranking_is_omitted():
    metrics = recommender_metrics(REFERENCE, ARTIFACT, LABELS, None, SEGMENTS)
    assert not any("ndcg" in key or "hr@" in key or "recall" in key or "topk" in key or "hr_drop" in key
                   for key in metrics)
    assert metrics["auc_drop"] == pytest.approx(0.25) and "user_segment=0/auc_drop" in metrics


def test_column_shaped_logits_accepted():
    flat = recommender_metrics(REFERENCE, ARTIFACT, LABELS, GROUPS, SEGMENTS)
    column = recommender_metrics(REFERENCE[:, None], ARTIFACT[:, None], LABELS[:, None], GROUPS, SEGMENTS)
    assert column.keys() == flat.keys()
    assert all(column[key] == flat[key] or (math.isnan(column[key]) and math.isnan(flat[key])) for key in flat)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="output shapes differ"):
        recommender_metrics(REFERENCE, ARTIFACT[:5], LABELS, GROUPS, {})
    with pytest.raises(ValueError, match=r"shape \[N\] or \[N, 1\]"):
        recommender_metrics(np.zeros((6, 2)), np.zeros((6, 2)), LABELS, GROUPS, {})
    with pytest.raises(ValueError, match="differ in length"):
        recommender_metrics(REFERENCE, ARTIFACT, LABELS[:5], GROUPS, {})
