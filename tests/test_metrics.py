"""Hand-computed cases for stages.metrics."""

import numpy as np
import pytest
from scipy import stats

from stages import metrics
from stages.metrics import Detections


def detections(rows):
    """Build Detections from (image_id, [x1, y1, x2, y2], score) rows."""
    if not rows:
        return Detections.empty()
    image_ids, boxes, scores = zip(*rows)
    return Detections(image_ids, np.array(boxes, dtype=float), np.array(scores, dtype=float))


# --- box_iou ---------------------------------------------------------------------------


def test_box_iou_identical_boxes():
    box = [[10, 20, 50, 80]]
    assert metrics.box_iou(box, box)[0, 0] == pytest.approx(1.0)


def test_box_iou_disjoint_boxes():
    assert metrics.box_iou([[0, 0, 10, 10]], [[20, 20, 30, 30]])[0, 0] == pytest.approx(0.0)


def test_box_iou_touching_edges_is_zero():
    assert metrics.box_iou([[0, 0, 10, 10]], [[10, 0, 20, 10]])[0, 0] == pytest.approx(0.0)


def test_box_iou_half_overlap():
    # Intersection [5, 0, 10, 10] has area 50; union is 100 + 100 - 50 = 150.
    assert metrics.box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)


def test_box_iou_contained_box():
    # The inner box (area 25) lies inside the outer one (area 100): IoU = 25 / 100.
    assert metrics.box_iou([[0, 0, 10, 10]], [[2, 2, 7, 7]])[0, 0] == pytest.approx(0.25)


def test_box_iou_matrix_shape_and_symmetry():
    a = [[0, 0, 10, 10], [5, 0, 15, 10]]
    b = [[0, 0, 10, 10], [20, 20, 30, 30], [2, 2, 7, 7]]
    iou = metrics.box_iou(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(metrics.box_iou(b, a), iou.T)


def test_box_iou_empty_input():
    assert metrics.box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
    assert metrics.box_iou([[0, 0, 1, 1]], []).shape == (1, 0)


def test_box_iou_zero_area_boxes():
    assert metrics.box_iou([[5, 5, 5, 5]], [[5, 5, 5, 5]])[0, 0] == 0.0


def test_box_iou_rejects_inverted_box():
    with pytest.raises(ValueError, match=r"boxes_b: box 1 .* has x2 < x1 or y2 < y1"):
        metrics.box_iou([[0, 0, 1, 1]], [[0, 0, 1, 1], [5, 0, 4, 1]])


def test_box_iou_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"boxes_a: expected shape \(N, 4\)"):
        metrics.box_iou([[0, 0, 1]], [[0, 0, 1, 1]])


def test_box_iou_rejects_nan():
    with pytest.raises(ValueError, match="non-finite"):
        metrics.box_iou([[0, 0, np.nan, 1]], [[0, 0, 1, 1]])


# --- best_match_iou --------------------------------------------------------------------


def test_best_match_iou_no_detections_is_zero():
    assert metrics.best_match_iou([0, 0, 10, 10], np.zeros((0, 4))) == 0.0


def test_best_match_iou_takes_highest_overlap():
    predictions = [[20, 20, 30, 30], [5, 0, 15, 10], [0, 0, 10, 10]]
    assert metrics.best_match_iou([0, 0, 10, 10], predictions) == pytest.approx(1.0)


def test_best_match_returns_index_of_first_tie():
    index, iou = metrics.best_match([0, 0, 10, 10], [[5, 0, 15, 10], [-5, 0, 5, 10]])
    assert index == 0
    assert iou == pytest.approx(50 / 150)


# --- match_detections ------------------------------------------------------------------


def test_match_detections_duplicate_is_false_positive():
    gt = {"a": [[0, 0, 10, 10]]}
    found = detections([("a", [0, 0, 10, 10], 0.8), ("a", [0, 0, 10, 10], 0.9)])
    # The 0.9 detection claims the face first, so the 0.8 duplicate is a false positive.
    assert metrics.match_detections(found, gt).tolist() == [False, True]


def test_match_detections_image_without_ground_truth():
    gt = {"a": [[0, 0, 10, 10]], "empty": np.zeros((0, 4))}
    found = detections([("empty", [0, 0, 10, 10], 0.9), ("a", [0, 0, 10, 10], 0.5)])
    assert metrics.match_detections(found, gt).tolist() == [False, True]


def test_match_detections_low_overlap_is_false_positive():
    gt = {"a": [[0, 0, 10, 10]]}
    # IoU 1/3 is below 0.5.
    found = detections([("a", [5, 0, 15, 10], 0.9)])
    assert metrics.match_detections(found, gt).tolist() == [False]


def test_match_detections_iou_at_threshold():
    gt = {"a": [[0, 0, 10, 10]]}
    found = detections([("a", [0, 0, 10, 5], 0.9)])  # IoU 50 / 100 = 0.5
    assert metrics.match_detections(found, gt, iou_threshold=0.5).tolist() == [True]


def test_match_detections_several_faces_per_image():
    gt = {"a": [[0, 0, 10, 10], [20, 0, 30, 10]], "b": [[0, 0, 10, 10]]}
    found = detections(
        [
            ("a", [20, 0, 30, 10], 0.9),
            ("b", [0, 0, 10, 10], 0.8),
            ("a", [0, 0, 10, 10], 0.7),
            ("a", [20, 0, 30, 10], 0.6),
        ]
    )
    assert metrics.match_detections(found, gt).tolist() == [True, True, True, False]


def test_match_detections_no_second_choice():
    # Faces g1 = [0, 0, 10, 10] and g2 = [2, 0, 12, 10]. The second detection overlaps
    # g1 with IoU 95 / 105 = 0.905 and g2 with 85 / 115 = 0.739. Its best box g1 is taken,
    # so PASCAL VOC counts it as a false positive although g2 is free and above 0.5.
    gt = {"a": [[0, 0, 10, 10], [2, 0, 12, 10]]}
    found = detections([("a", [0, 0, 10, 10], 0.9), ("a", [0.5, 0, 10.5, 10], 0.8)])
    assert metrics.match_detections(found, gt).tolist() == [True, False]


def test_match_detections_rejects_unknown_image():
    with pytest.raises(ValueError, match="image 'b', which has no entry in the ground truth"):
        metrics.match_detections(detections([("b", [0, 0, 1, 1], 0.9)]), {"a": [[0, 0, 1, 1]]})


def test_match_detections_rejects_zero_threshold():
    with pytest.raises(ValueError, match=r"iou_threshold must be in \(0, 1\], got 0"):
        metrics.match_detections(detections([("a", [0, 0, 1, 1], 0.9)]), {"a": [[0, 0, 1, 1]]}, 0)


# --- precision-recall and AP -----------------------------------------------------------

TWO_FACES = {"a": [[0, 0, 10, 10]], "b": [[20, 20, 30, 30]]}
# Ranked by score: TP on a, FP on b (disjoint box), TP on b.
TP_FP_TP = detections(
    [
        ("a", [0, 0, 10, 10], 0.9),
        ("b", [0, 0, 10, 10], 0.8),
        ("b", [20, 20, 30, 30], 0.7),
    ]
)


def test_precision_recall_curve_hand_ranking():
    recall, precision, scores = metrics.precision_recall_curve(TP_FP_TP, TWO_FACES)
    assert recall.tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_precision_recall_curve_sorts_by_score():
    shuffled = detections(
        [
            ("b", [20, 20, 30, 30], 0.7),
            ("a", [0, 0, 10, 10], 0.9),
            ("b", [0, 0, 10, 10], 0.8),
        ]
    )
    recall, precision, scores = metrics.precision_recall_curve(shuffled, TWO_FACES)
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3])


def test_precision_recall_curve_needs_ground_truth():
    with pytest.raises(ValueError, match="recall is undefined"):
        metrics.precision_recall_curve(detections([("a", [0, 0, 1, 1], 0.9)]), {"a": np.zeros((0, 4))})


def test_ap_hand_ranking_tp_fp_tp():
    # Curve (recall, precision): (0.5, 1), (0.5, 1/2), (1, 2/3).
    # Envelope: precision 1 up to recall 0.5, then 2/3 up to recall 1.
    # AP = (0.5 - 0) * 1 + (1 - 0.5) * 2/3 = 0.5 + 1/3 = 5/6.
    assert metrics.ap_at(0.5, TP_FP_TP, TWO_FACES) == pytest.approx(5 / 6)


def test_ap_perfect_detector_is_one():
    found = detections([("a", [0, 0, 10, 10], 0.9), ("b", [20, 20, 30, 30], 0.4)])
    assert metrics.ap_at(0.5, found, TWO_FACES) == pytest.approx(1.0)


def test_ap_without_detections_is_zero():
    assert metrics.ap_at(0.5, Detections.empty(), TWO_FACES) == 0.0


def test_ap_false_positive_on_image_without_face():
    gt = {"a": [[0, 0, 10, 10]], "empty": np.zeros((0, 4))}
    found = detections([("empty", [0, 0, 10, 10], 0.9), ("a", [0, 0, 10, 10], 0.5)])
    # Curve: (0, 0), (1, 1/2). AP = (1 - 0) * 1/2.
    assert metrics.ap_at(0.5, found, gt) == pytest.approx(0.5)


def test_ap_missed_face_limits_recall():
    found = detections([("a", [0, 0, 10, 10], 0.9)])
    # One of two faces found with precision 1: AP = 0.5 * 1.
    assert metrics.ap_at(0.5, found, TWO_FACES) == pytest.approx(0.5)


def test_average_precision_voc_envelope():
    # Envelope of precisions [1, 0.5, 1, 0.25] at recalls [0.25, 0.5, 0.75, 1]
    # is [1, 1, 1, 0.25]: AP = 0.75 * 1 + 0.25 * 0.25 = 0.8125.
    ap = metrics.average_precision_voc([0.25, 0.5, 0.75, 1.0], [1.0, 0.5, 1.0, 0.25])
    assert ap == pytest.approx(0.8125)


def test_average_precision_decreasing_recall():
    with pytest.raises(ValueError, match="recall must be non-decreasing"):
        metrics.average_precision_voc([0.5, 0.25], [1.0, 1.0])


def test_average_precision_length_mismatch():
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        metrics.average_precision_voc([0.5, 1.0], [1.0])


def test_coco_thresholds():
    assert metrics.COCO_IOU_THRESHOLDS == pytest.approx([0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])


def test_coco_ap_exact_boxes_is_one():
    found = detections([("a", [0, 0, 10, 10], 0.9), ("b", [20, 20, 30, 30], 0.8)])
    assert metrics.coco_ap(found, TWO_FACES) == pytest.approx(1.0)


def test_coco_ap_half_of_thresholds_pass():
    gt = {"a": [[0, 0, 100, 100]]}
    # IoU 7200 / 10000 = 0.72 passes 0.5, 0.55, 0.6, 0.65 and 0.7 (AP 1 each) and fails the
    # five thresholds from 0.75 on (AP 0 each): the mean is 5 / 10.
    found = detections([("a", [0, 0, 100, 72], 0.9)])
    assert metrics.box_iou(gt["a"], found.boxes)[0, 0] == pytest.approx(0.72)
    assert metrics.coco_ap(found, gt) == pytest.approx(0.5)


def test_recall_at_counts_each_face_once():
    found = detections(
        [("a", [0, 0, 10, 10], 0.9), ("a", [0, 0, 10, 10], 0.8), ("b", [0, 0, 10, 10], 0.7)]
    )
    # Face a is matched (twice, counted once) and face b is missed: 1 of 2.
    assert metrics.recall_at(0.5, found, TWO_FACES) == pytest.approx(0.5)


# --- summarize_fold --------------------------------------------------------------------


def test_summarize_fold_perfect_detector():
    gt = {"a": [0, 0, 10, 10], "b": [20, 20, 30, 30]}
    found = detections([("a", [0, 0, 10, 10], 0.9), ("b", [20, 20, 30, 30], 0.8)])
    summary = metrics.summarize_fold(gt, found, iou_score_threshold=0.5, ap_score_threshold=0.05)
    assert summary == pytest.approx(
        {
            "mean_iou": 1.0,
            "min_iou": 1.0,
            "max_iou": 1.0,
            "median_iou": 1.0,
            "ap50": 1.0,
            "ap50_95": 1.0,
            "recall50": 1.0,
            "images": 2,
            "faces": 2,
            "background_images": 0,
            "null_reason": None,
        }
    )


def test_summarize_fold_separate_score_thresholds():
    gt = {"a": [0, 0, 10, 10], "b": [20, 20, 30, 30], "c": [0, 0, 10, 10]}
    found = detections(
        [
            ("a", [0, 0, 10, 10], 0.9),
            ("b", [20, 20, 30, 30], 0.3),  # counts for AP, not for the per-image IoU
            ("c", [0, 0, 10, 10], 0.01),  # below both thresholds
        ]
    )
    summary = metrics.summarize_fold(gt, found, iou_score_threshold=0.5, ap_score_threshold=0.05)
    # Per-image IoU [1, 0, 0]; AP: two TPs at precision 1 reach recall 2/3.
    assert summary["mean_iou"] == pytest.approx(1 / 3)
    assert summary["min_iou"] == 0.0
    assert summary["max_iou"] == 1.0
    assert summary["median_iou"] == 0.0
    assert summary["ap50"] == pytest.approx(2 / 3)
    assert summary["recall50"] == pytest.approx(2 / 3)
    assert summary["images"] == 3


def test_summarize_fold_no_images():
    summary = metrics.summarize_fold({}, Detections.empty(), 0.5, 0.05)
    assert summary["images"] == 0
    assert all(summary[key] is None for key in metrics.SUMMARY_KEYS)


def test_summarize_fold_background_image_detection_is_false_positive():
    gt = {"a": [0, 0, 10, 10], "empty": np.zeros((0, 4))}
    found = detections([("empty", [0, 0, 10, 10], 0.9), ("a", [0, 0, 10, 10], 0.8)])
    summary = metrics.summarize_fold(gt, found, iou_score_threshold=0.5, ap_score_threshold=0.05)
    # Ranked: FP (precision 0, recall 0), then TP (precision 1/2, recall 1), so AP = 1/2.
    assert summary["ap50"] == pytest.approx(0.5)
    assert summary["recall50"] == 1.0
    # The background image has no face, so only face a enters the IoU statistics.
    assert summary["mean_iou"] == 1.0
    assert summary["min_iou"] == 1.0
    assert summary["images"] == 2
    assert summary["faces"] == 1
    assert summary["background_images"] == 1
    assert summary["null_reason"] is None


def test_summarize_fold_without_faces_gives_null_with_reason():
    gt = {"empty1": [], "empty2": np.zeros((0, 4))}
    found = detections([("empty1", [0, 0, 10, 10], 0.9)])
    summary = metrics.summarize_fold(gt, found, iou_score_threshold=0.5, ap_score_threshold=0.05)
    assert all(summary[key] is None for key in metrics.SUMMARY_KEYS)
    assert summary["images"] == 2
    assert summary["faces"] == 0
    assert summary["background_images"] == 2
    assert "no face boxes" in summary["null_reason"]


def test_summarize_fold_several_faces_per_image():
    gt = {"a": [[0, 0, 10, 10], [20, 20, 30, 30]]}
    found = detections([("a", [0, 0, 10, 10], 0.9), ("a", [20, 20, 30, 25], 0.8)])
    summary = metrics.summarize_fold(gt, found, iou_score_threshold=0.5, ap_score_threshold=0.05)
    # Face IoUs 1 and 50 / 100.
    assert summary["mean_iou"] == pytest.approx(0.75)
    assert summary["min_iou"] == pytest.approx(0.5)
    assert summary["ap50"] == 1.0
    assert summary["faces"] == 2
    assert summary["images"] == 1


def test_best_match_per_face_keys_and_rows():
    gt = {"a": [[0, 0, 10, 10], [20, 20, 30, 30]], "b": np.zeros((0, 4))}
    found = detections([("a", [20, 20, 30, 30], 0.9), ("b", [0, 0, 5, 5], 0.9)])
    matches = metrics.best_match_per_face(gt, found, min_score=0.5)
    assert list(matches) == [("a", 0), ("a", 1)]
    # Face 0 overlaps no detection, so its best match is the only detection of image a, at IoU 0.
    assert matches[("a", 0)] == (0, 0.0)
    assert matches[("a", 1)] == (0, pytest.approx(1.0))
    assert metrics.best_match_per_face({"a": [[0, 0, 10, 10]]}, found.with_min_score(2.0), 0.5) == {("a", 0): (None, 0.0)}


def test_best_match_per_image_returns_detection_row():
    gt = {"a": [0, 0, 10, 10], "b": [20, 20, 30, 30]}
    found = detections([("a", [5, 0, 15, 10], 0.9), ("a", [0, 0, 10, 10], 0.4), ("a", [0, 0, 10, 9], 0.6)])
    matches = metrics.best_match_per_image(gt, found, min_score=0.5)
    # Row 1 is the exact box but scores below 0.5, so row 2 (IoU 0.9) is the best match.
    assert matches["a"] == (2, pytest.approx(0.9))
    assert matches["b"] == (None, 0.0)


# --- aggregate_folds -------------------------------------------------------------------


def test_aggregate_folds_student_t_interval():
    # Values 1, 2, 3, 4: mean 2.5, sample sd = sqrt(5 / 3) = 1.290994.
    # t(0.975, 3 degrees of freedom) = 3.182446 (standard t table), so the half-width is
    # 3.182446 * 1.290994 / sqrt(4) = 2.054260 and the interval is [0.445740, 4.554260].
    result = metrics.aggregate_folds([1.0, 2.0, 3.0, 4.0])
    assert result["mean"] == pytest.approx(2.5)
    assert result["sd"] == pytest.approx(1.290994, abs=1e-6)
    assert result["ci95_low"] == pytest.approx(0.445740, abs=1e-6)
    assert result["ci95_high"] == pytest.approx(4.554260, abs=1e-6)
    assert result["n"] == 4


def test_aggregate_folds_matches_scipy_interval():
    values = [0.91, 0.87, 0.95, 0.89, 0.93]
    low, high = stats.t.interval(0.95, df=4, loc=np.mean(values), scale=stats.sem(values))
    result = metrics.aggregate_folds(values)
    assert result["ci95_low"] == pytest.approx(low)
    assert result["ci95_high"] == pytest.approx(high)


def test_aggregate_folds_single_value():
    assert metrics.aggregate_folds([0.8]) == {"mean": 0.8, "sd": 0.0, "ci95_low": 0.8, "ci95_high": 0.8, "n": 1}


def test_aggregate_folds_no_values():
    assert metrics.aggregate_folds([]) == {"mean": None, "sd": None, "ci95_low": None, "ci95_high": None, "n": 0}


def test_aggregate_folds_rejects_nan():
    with pytest.raises(ValueError, match="must be finite"):
        metrics.aggregate_folds([0.5, float("nan")])


def voc_loop_reference(found, gt, iou_threshold):
    """Sequential VOCevaldet.m matching, written plainly for comparison."""
    claimed = {image_id: np.zeros(len(boxes), dtype=bool) for image_id, boxes in gt.items()}
    is_tp = np.zeros(len(found), dtype=bool)
    for index in np.argsort(-found.scores, kind="stable"):
        image_id = found.image_ids[index]
        boxes = np.asarray(gt[image_id], dtype=float).reshape(-1, 4)
        if len(boxes) == 0:
            continue
        ious = metrics.box_iou(found.boxes[index : index + 1], boxes)[0]
        best = int(np.argmax(ious))
        if ious[best] >= iou_threshold and not claimed[image_id][best]:
            claimed[image_id][best] = True
            is_tp[index] = True
    return is_tp


@pytest.mark.parametrize("seed", range(5))
def test_match_detections_equals_sequential_loop(seed):
    rng = np.random.default_rng(seed)
    gt = {}
    for image in range(6):
        corners = rng.uniform(0, 40, size=(rng.integers(0, 4), 2))
        gt[image] = np.hstack([corners, corners + rng.uniform(5, 20, size=corners.shape)])
    rows = []
    for _ in range(40):
        image = int(rng.integers(0, 6))
        corner = rng.uniform(0, 40, size=2)
        rows.append((image, [*corner, *(corner + rng.uniform(5, 20, size=2))], float(rng.choice([0.2, 0.5, 0.9]))))
    found = detections(rows)
    for threshold in (0.1, 0.3, 0.5):
        expected = voc_loop_reference(found, gt, threshold)
        np.testing.assert_array_equal(metrics.match_detections(found, gt, threshold), expected)
