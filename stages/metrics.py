"""Detection metrics: box IoU, per-image best-match IoU, VOC matching, average precision and fold statistics.

Boxes are ``[x1, y1, x2, y2]`` in pixels of the original image, with ``x2 >= x1`` and
``y2 >= y1``. Areas follow the continuous convention ``(x2 - x1) * (y2 - y1)``, without the
``+ 1`` pixel that the PASCAL VOC devkit adds to widths and heights. Every function is pure:
it reads its arguments and returns new arrays or numbers.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

# PASCAL VOC's minimum IoU for a detection to count as a true positive.
VOC_IOU_THRESHOLD = 0.5

# COCO's IoU thresholds 0.50:0.05:0.95 (``iouThrs`` in pycocotools' cocoeval). Rounding to two
# decimals keeps each value the nearest double to its decimal, so 0.55 is not 0.5499999.
COCO_IOU_THRESHOLDS = tuple(float(t) for t in np.round(np.linspace(0.5, 0.95, 10), 2))

# Coverage of the confidence interval that aggregate_folds reports.
CONFIDENCE_LEVEL = 0.95

# Image id -> (G, 4) ground-truth boxes of that image; G may be 0.
GroundTruth = Mapping[Hashable, ArrayLike]


def as_boxes(boxes: ArrayLike, name: str = "boxes") -> NDArray[np.float64]:
    """Convert ``boxes`` to a float64 (N, 4) array and check that every box is valid.

    An empty input (``[]`` or shape (0,)) becomes a (0, 4) array.

    Raises:
        ValueError: naming ``name`` and the first bad box, for a shape other than (N, 4),
            a non-finite coordinate, or x2 < x1 or y2 < y1.
    """
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name}: expected shape (N, 4) of [x1, y1, x2, y2] boxes, got shape {array.shape}")

    non_finite = ~np.isfinite(array).all(axis=1)
    if non_finite.any():
        index = int(np.flatnonzero(non_finite)[0])
        raise ValueError(f"{name}: box {index} has a non-finite coordinate: {array[index].tolist()}")

    inverted = (array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1])
    if inverted.any():
        index = int(np.flatnonzero(inverted)[0])
        raise ValueError(f"{name}: box {index} {array[index].tolist()} has x2 < x1 or y2 < y1")
    return array


def box_iou(boxes_a: ArrayLike, boxes_b: ArrayLike) -> NDArray[np.float64]:
    """Compute the intersection over union (IoU) of every box in ``boxes_a`` with every box in ``boxes_b``.

    IoU(A, B) = area(A ∩ B) / area(A ∪ B), the overlap criterion of the PASCAL VOC devkit
    (VOCevaldet.m), here with continuous areas ``(x2 - x1) * (y2 - y1)``.

    Args:
        boxes_a: (N, 4) boxes ``[x1, y1, x2, y2]`` in pixels.
        boxes_b: (M, 4) boxes in the same pixel frame.

    Returns:
        (N, M) float64 array of IoU values in [0, 1]. A pair whose union has zero area
        (two boxes of zero area) gets 0.

    Raises:
        ValueError: when a box is invalid (see ``as_boxes``).
    """
    a = as_boxes(boxes_a, "boxes_a")
    b = as_boxes(boxes_b, "boxes_b")

    inter_x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    inter_y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    inter_x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    inter_y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    intersection = np.clip(inter_x2 - inter_x1, 0.0, None) * np.clip(inter_y2 - inter_y1, 0.0, None)

    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - intersection

    iou = np.zeros_like(intersection)
    np.divide(intersection, union, out=iou, where=union > 0)
    return iou


def best_match(gt_box: ArrayLike, pred_boxes: ArrayLike) -> tuple[int | None, float]:
    """Find the predicted box with the highest IoU with one ground-truth box.

    Args:
        gt_box: (4,) ground-truth box ``[x1, y1, x2, y2]`` in pixels.
        pred_boxes: (K, 4) predicted boxes; K may be 0.

    Returns:
        The index of the best box in ``pred_boxes`` and its IoU, or ``(None, 0.0)`` when K is 0.
        Among equal IoUs the lowest index wins, which is the highest score when
        ``pred_boxes`` is sorted by descending score.
    """
    gt = np.asarray(gt_box, dtype=np.float64)
    if gt.shape != (4,):
        raise ValueError(f"gt_box: expected shape (4,), got shape {gt.shape}")
    ious = box_iou(gt[None, :], pred_boxes)[0]
    if ious.size == 0:
        return None, 0.0
    index = int(np.argmax(ious))
    return index, float(ious[index])


def best_match_iou(gt_box: ArrayLike, pred_boxes: ArrayLike) -> float:
    """Return the IoU of the detection that best matches ``gt_box``, or 0.0 when there is none.

    This is the per-image metric of the original study (Song and Van, CS230 report), which
    has one face per image. ``gt_box`` is (4,) and ``pred_boxes`` is (K, 4), both in pixels.
    The caller chooses which detections count, for example those above a score threshold.
    """
    return best_match(gt_box, pred_boxes)[1]


@dataclass(frozen=True)
class Detections:
    """Detected boxes of one or more images: row i is ``boxes[i]`` with confidence ``scores[i]`` on ``image_ids[i]``.

    ``image_ids`` has D hashable ids, ``boxes`` is (D, 4) in pixels and ``scores`` is (D,).
    The constructor converts the arrays to float64 and raises ValueError on mismatched
    lengths or invalid boxes.
    """

    image_ids: tuple[Hashable, ...]
    boxes: NDArray[np.float64]
    scores: NDArray[np.float64]

    def __post_init__(self) -> None:
        image_ids = tuple(self.image_ids)
        boxes = as_boxes(self.boxes, "Detections.boxes")
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if not (len(image_ids) == len(boxes) == len(scores)):
            raise ValueError(
                f"Detections: image_ids, boxes and scores must have one entry per detection, "
                f"got {len(image_ids)}, {len(boxes)} and {len(scores)}"
            )
        if not np.isfinite(scores).all():
            raise ValueError(f"Detections: scores must be finite, got {scores[~np.isfinite(scores)][:5].tolist()}")
        object.__setattr__(self, "image_ids", image_ids)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)

    @classmethod
    def empty(cls) -> Detections:
        """Return an empty set of detections."""
        return cls((), np.zeros((0, 4)), np.zeros(0))

    def __len__(self) -> int:
        return len(self.image_ids)

    def with_min_score(self, min_score: float) -> Detections:
        """Return the detections whose score is at least ``min_score``, in the same order."""
        keep = np.flatnonzero(self.scores >= min_score)
        return Detections(tuple(self.image_ids[i] for i in keep), self.boxes[keep], self.scores[keep])

    def indices_by_image(self) -> dict[Hashable, NDArray[np.intp]]:
        """Group detection row indices by image id; images without detections are absent."""
        groups: dict[Hashable, list[int]] = {}
        for index, image_id in enumerate(self.image_ids):
            groups.setdefault(image_id, []).append(index)
        return {image_id: np.asarray(indices, dtype=np.intp) for image_id, indices in groups.items()}


@dataclass(frozen=True)
class _BestOverlaps:
    """For each detection, the ground-truth box of its image that it overlaps most."""

    order: NDArray[np.intp]  # (D,) detection indices by descending score, ties in input order
    image_index: NDArray[np.intp]  # (D,) position of the detection's image in the ground truth
    best_gt: NDArray[np.intp]  # (D,) index of that box within its image, -1 when the image has none
    best_iou: NDArray[np.float64]  # (D,) IoU with that box, 0 when the image has none
    gt_count: int  # ground-truth boxes over all images


def _ground_truth_boxes(gt_boxes: GroundTruth) -> dict[Hashable, NDArray[np.float64]]:
    return {image_id: as_boxes(boxes, f"ground truth of image {image_id!r}") for image_id, boxes in gt_boxes.items()}


def _best_overlaps(detections: Detections, gt_boxes: GroundTruth) -> _BestOverlaps:
    """Assign each detection the ground-truth box it overlaps most, as VOCevaldet.m does.

    The assignment does not depend on the IoU threshold, so several thresholds can share it.
    """
    truth = _ground_truth_boxes(gt_boxes)
    image_position = {image_id: position for position, image_id in enumerate(truth)}
    unknown = [image_id for image_id in detections.image_ids if image_id not in image_position]
    if unknown:
        raise ValueError(
            f"detections on image {unknown[0]!r}, which has no entry in the ground truth; "
            "give an image without faces an empty (0, 4) array"
        )

    count = len(detections)
    best_gt = np.full(count, -1, dtype=np.intp)
    best_iou = np.zeros(count, dtype=np.float64)
    for image_id, indices in detections.indices_by_image().items():
        image_gt = truth[image_id]
        if len(image_gt) == 0:
            continue
        ious = box_iou(detections.boxes[indices], image_gt)
        # argmax takes the first of equal IoUs, like the strict ">" of VOCevaldet.m.
        best_gt[indices] = np.argmax(ious, axis=1)
        best_iou[indices] = ious[np.arange(len(indices)), best_gt[indices]]

    image_index = np.fromiter((image_position[i] for i in detections.image_ids), dtype=np.intp, count=count)
    order = np.argsort(-detections.scores, kind="stable")
    gt_count = sum(len(boxes) for boxes in truth.values())
    return _BestOverlaps(order, image_index, best_gt, best_iou, gt_count)


def _check_iou_threshold(iou_threshold: float) -> None:
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")


def _true_positives_in_score_order(overlaps: _BestOverlaps, iou_threshold: float) -> NDArray[np.bool_]:
    """Flag true positives in ``overlaps.order`` (descending score) by PASCAL VOC's greedy rule.

    A detection is a true positive when its best ground-truth box has IoU >= ``iou_threshold``
    and no higher-scored detection has claimed that box. This equals the sequential loop of
    VOCevaldet.m: among the detections that pass the threshold, the first one in score order
    for each ground-truth box is the true positive.
    """
    _check_iou_threshold(iou_threshold)
    best_gt = overlaps.best_gt[overlaps.order]
    passes = (best_gt >= 0) & (overlaps.best_iou[overlaps.order] >= iou_threshold)
    positions = np.flatnonzero(passes)

    boxes_per_image = int(best_gt.max()) + 1 if len(best_gt) else 1
    box_keys = overlaps.image_index[overlaps.order][positions] * boxes_per_image + best_gt[positions]
    _, first_claims = np.unique(box_keys, return_index=True)

    is_tp = np.zeros(len(overlaps.order), dtype=bool)
    is_tp[positions[first_claims]] = True
    return is_tp


def match_detections(
    detections: Detections, gt_boxes: GroundTruth, iou_threshold: float = VOC_IOU_THRESHOLD
) -> NDArray[np.bool_]:
    """Match detections to ground-truth boxes greedily, as the PASCAL VOC devkit (VOCevaldet.m) does.

    Detections are visited by descending score (ties keep their input order). Each one takes
    the ground-truth box of its image with the highest IoU. It is a true positive when that
    IoU is at least ``iou_threshold`` and no higher-scored detection took the box first. Every
    other detection is a false positive: a duplicate of a matched box, a box with too little
    overlap, or a detection on an image without ground truth. As in VOC, a detection whose
    best box is taken does not fall back to its second-best box.

    Args:
        detections: D detections on any number of images.
        gt_boxes: image id -> (G, 4) ground-truth boxes in pixels, G >= 0. Every image that
            has a detection needs an entry.
        iou_threshold: minimum IoU of a true positive, in (0, 1].

    Returns:
        (D,) bool array, True for a true positive, in the order of ``detections``.

    Raises:
        ValueError: for a detection on an image missing from ``gt_boxes``, an invalid box or
            a threshold outside (0, 1].
    """
    overlaps = _best_overlaps(detections, gt_boxes)
    is_tp_sorted = _true_positives_in_score_order(overlaps, iou_threshold)
    is_tp = np.empty_like(is_tp_sorted)
    is_tp[overlaps.order] = is_tp_sorted
    return is_tp


def _curve_from_overlaps(
    overlaps: _BestOverlaps, scores: NDArray[np.float64], iou_threshold: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    if overlaps.gt_count == 0:
        raise ValueError("recall is undefined without ground-truth boxes")
    is_tp = _true_positives_in_score_order(overlaps, iou_threshold)
    true_positives = np.cumsum(is_tp)
    ranks = np.arange(1, len(is_tp) + 1)
    recall = true_positives / overlaps.gt_count
    precision = true_positives / ranks
    return recall.astype(np.float64), precision.astype(np.float64), scores[overlaps.order]


def precision_recall_curve(
    detections: Detections, gt_boxes: GroundTruth, iou_threshold: float = VOC_IOU_THRESHOLD
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Compute the precision-recall curve of ``detections`` ranked by descending score.

    Point i counts the i + 1 highest-scored detections: recall = true positives / ground-truth
    boxes, precision = true positives / (i + 1), with true positives from ``match_detections``.

    Args:
        detections: D detections on any number of images.
        gt_boxes: image id -> (G, 4) ground-truth boxes in pixels, with at least one box in all.
        iou_threshold: minimum IoU of a true positive, in (0, 1].

    Returns:
        ``(recall, precision, scores)``, three (D,) float64 arrays in descending score order.
        They are empty when D is 0.

    Raises:
        ValueError: when ``gt_boxes`` has no box at all, because recall is then undefined.
    """
    overlaps = _best_overlaps(detections, gt_boxes)
    return _curve_from_overlaps(overlaps, detections.scores, iou_threshold)


def average_precision_voc(recall: ArrayLike, precision: ArrayLike) -> float:
    """Compute all-point interpolated average precision, as PASCAL VOC does from VOC2010 on.

    The definition is VOCap.m of the PASCAL VOC 2012 development kit (Everingham et al.).
    It pads the curve with (recall 0, precision 0) and (recall 1, precision 0). Each
    precision is then replaced by the maximum precision at equal or higher recall, which
    makes the curve monotone (the envelope). AP is the area under that step curve:
    AP = sum_i (r_i - r_{i-1}) * p_envelope(r_i). VOC2007's 11-point AP is not used.

    Args:
        recall: (D,) recall values in [0, 1], non-decreasing.
        precision: (D,) precision values in [0, 1] at the same points.

    Returns:
        AP in [0, 1]; 0.0 for an empty curve.

    Raises:
        ValueError: for arrays of different lengths, values outside [0, 1] or decreasing recall.
    """
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision must have the same length, got {rec.size} and {prec.size}")
    for name, values in (("recall", rec), ("precision", prec)):
        if values.size and not (np.all(values >= 0.0) and np.all(values <= 1.0)):
            raise ValueError(f"{name} values must lie in [0, 1], got min {values.min()} and max {values.max()}")
    if np.any(np.diff(rec) < 0):
        raise ValueError("recall must be non-decreasing along the curve")

    padded_recall = np.concatenate(([0.0], rec, [1.0]))
    padded_precision = np.concatenate(([0.0], prec, [0.0]))
    envelope = np.maximum.accumulate(padded_precision[::-1])[::-1]
    steps = np.flatnonzero(padded_recall[1:] != padded_recall[:-1]) + 1
    return float(np.sum((padded_recall[steps] - padded_recall[steps - 1]) * envelope[steps]))


def ap_at(iou_threshold: float, detections: Detections, gt_boxes: GroundTruth) -> float:
    """Compute VOC all-point AP of ``detections`` at one IoU threshold (``average_precision_voc``).

    ``gt_boxes`` maps image id -> (G, 4) boxes in pixels and needs at least one box in all.
    Detections on images without ground truth count as false positives.
    """
    recall, precision, _ = precision_recall_curve(detections, gt_boxes, iou_threshold)
    return average_precision_voc(recall, precision)


def coco_ap(
    detections: Detections, gt_boxes: GroundTruth, iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS
) -> float:
    """Compute the mean AP over the IoU thresholds 0.50:0.05:0.95 (AP@[.5:.95]).

    This is COCO's averaging over ten IoU thresholds, but each AP is the VOC all-point AP of
    ``average_precision_voc``, not COCO's 101-point interpolated precision, so values can
    differ slightly from pycocotools. There is also no COCO area range or detection limit.

    Args:
        detections: D detections on any number of images.
        gt_boxes: image id -> (G, 4) ground-truth boxes in pixels, with at least one box in all.
        iou_thresholds: the thresholds to average over, each in (0, 1].
    """
    if len(iou_thresholds) == 0:
        raise ValueError("iou_thresholds must not be empty")
    overlaps = _best_overlaps(detections, gt_boxes)
    values = []
    for threshold in iou_thresholds:
        recall, precision, _ = _curve_from_overlaps(overlaps, detections.scores, threshold)
        values.append(average_precision_voc(recall, precision))
    return float(np.mean(values))


def recall_at(iou_threshold: float, detections: Detections, gt_boxes: GroundTruth) -> float:
    """Return the share of ground-truth boxes that ``match_detections`` matches at ``iou_threshold``.

    This is the last point of the precision-recall curve: each box counts once, however many
    detections overlap it. Filter ``detections`` by score before the call. ``gt_boxes`` maps
    image id -> (G, 4) boxes in pixels and needs at least one box in all.
    """
    overlaps = _best_overlaps(detections, gt_boxes)
    if overlaps.gt_count == 0:
        raise ValueError("recall is undefined without ground-truth boxes")
    is_tp = _true_positives_in_score_order(overlaps, iou_threshold)
    return float(is_tp.sum() / overlaps.gt_count)


def best_match_per_image(
    gt_box_per_image: Mapping[Hashable, ArrayLike], detections: Detections, min_score: float
) -> dict[Hashable, tuple[int | None, float]]:
    """Find, for each image, the detection with score >= ``min_score`` that best matches its one face.

    Args:
        gt_box_per_image: image id -> (4,) ground-truth box in pixels (one face per image).
        detections: detections of these images.
        min_score: detections below this score are ignored.

    Returns:
        image id -> (row index into ``detections`` or None, IoU), in the order of
        ``gt_box_per_image``. An image without a detection at or above ``min_score`` gets
        ``(None, 0.0)``.

    Raises:
        ValueError: for a detection on an image missing from ``gt_box_per_image``.
    """
    by_image = detections.indices_by_image()
    unknown = [image_id for image_id in by_image if image_id not in gt_box_per_image]
    if unknown:
        raise ValueError(f"detections on image {unknown[0]!r}, which has no ground-truth box")

    matches: dict[Hashable, tuple[int | None, float]] = {}
    for image_id, gt_box in gt_box_per_image.items():
        indices = by_image.get(image_id, np.zeros(0, dtype=np.intp))
        indices = indices[detections.scores[indices] >= min_score]
        position, iou = best_match(gt_box, detections.boxes[indices])
        matches[image_id] = (None if position is None else int(indices[position]), iou)
    return matches


def best_match_per_face(
    gt_boxes: GroundTruth, detections: Detections, min_score: float
) -> dict[tuple[Hashable, int], tuple[int | None, float]]:
    """Find, for each ground-truth box, the detection of its image with score >= ``min_score`` that overlaps it most.

    This extends ``best_match_per_image`` to images with any number of faces. Each face is
    matched on its own, so two faces may share one detection. An image without faces adds no entry.

    Args:
        gt_boxes: image id -> (G, 4) ground-truth boxes in pixels, G >= 0.
        detections: detections of these images.
        min_score: detections below this score are ignored.

    Returns:
        (image id, index of the box within its image) -> (row index into ``detections`` or
        None, IoU), in the order of ``gt_boxes``. A face without a detection at or above
        ``min_score`` gets ``(None, 0.0)``.

    Raises:
        ValueError: for a detection on an image missing from ``gt_boxes``, or an invalid box.
    """
    truth = _ground_truth_boxes(gt_boxes)
    by_image = detections.indices_by_image()
    unknown = [image_id for image_id in by_image if image_id not in truth]
    if unknown:
        raise ValueError(f"detections on image {unknown[0]!r}, which has no entry in the ground truth")

    matches: dict[tuple[Hashable, int], tuple[int | None, float]] = {}
    for image_id, boxes in truth.items():
        indices = by_image.get(image_id, np.zeros(0, dtype=np.intp))
        indices = indices[detections.scores[indices] >= min_score]
        for face, box in enumerate(boxes):
            position, iou = best_match(box, detections.boxes[indices])
            matches[(image_id, face)] = (None if position is None else int(indices[position]), iou)
    return matches


SUMMARY_KEYS = ("mean_iou", "min_iou", "max_iou", "median_iou", "ap50", "ap50_95", "recall50")


def _boxes_per_image(gt_boxes: Mapping[Hashable, ArrayLike]) -> dict[Hashable, NDArray[np.float64]]:
    """Turn image id -> (4,) box or (G, 4) boxes into image id -> (G, 4) boxes."""
    return {
        image_id: as_boxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), f"ground truth of image {image_id!r}")
        for image_id, boxes in gt_boxes.items()
    }


def summarize_fold(
    gt_boxes: Mapping[Hashable, ArrayLike],
    detections: Detections,
    iou_score_threshold: float,
    ap_score_threshold: float,
) -> dict[str, float | int | str | None]:
    """Compute the detection metrics of a set of images.

    - ``mean_iou``, ``min_iou``, ``max_iou``, ``median_iou``: statistics of the best-match IoU of
      each face (``best_match_per_face``) over detections with score >= ``iou_score_threshold``;
      a face without such a detection scores 0. With one face per image this is the per-image
      IoU of the original study. Images without faces do not enter these statistics.
    - ``ap50``: VOC all-point AP at IoU 0.5 (``ap_at``) over detections with score >=
      ``ap_score_threshold``. Every detection on an image without faces is a false positive.
    - ``ap50_95``: mean AP over IoU 0.50:0.05:0.95 (``coco_ap``) over the same detections.
    - ``recall50``: share of faces matched at IoU 0.5 (``recall_at``) by the same detections.
    - ``images``, ``faces``, ``background_images``: numbers of images, of face boxes, and of
      images without a face (background images).
    - ``null_reason``: why the metrics are None, or None when they are defined.

    Args:
        gt_boxes: image id -> ground-truth boxes in pixels, as a (4,) box (one face), a (G, 4)
            array (G faces) or an empty array (no face).
        detections: detections of these images, on any scale of score.
        iou_score_threshold: minimum score of a detection for the per-face IoU.
        ap_score_threshold: minimum score of a detection for AP and recall.

    Returns:
        The dict above. Without any face box every metric is None, because no mean of zero
        values is taken and recall (and so AP) divides by the number of faces.
    """
    truth = _boxes_per_image(gt_boxes)
    faces = sum(len(boxes) for boxes in truth.values())
    counts = {
        "images": len(truth),
        "faces": faces,
        "background_images": sum(len(boxes) == 0 for boxes in truth.values()),
    }
    if faces == 0:
        reason = "no images" if not truth else "no face boxes in these images, so IoU, AP and recall are undefined"
        return {**{key: None for key in SUMMARY_KEYS}, **counts, "null_reason": reason}

    matches = best_match_per_face(truth, detections, iou_score_threshold)
    ious = np.array([iou for _, iou in matches.values()], dtype=np.float64)
    ranked = detections.with_min_score(ap_score_threshold)
    return {
        "mean_iou": float(ious.mean()),
        "min_iou": float(ious.min()),
        "max_iou": float(ious.max()),
        "median_iou": float(np.median(ious)),
        "ap50": ap_at(VOC_IOU_THRESHOLD, ranked, truth),
        "ap50_95": coco_ap(ranked, truth),
        "recall50": recall_at(VOC_IOU_THRESHOLD, ranked, truth),
        **counts,
        "null_reason": None,
    }


def aggregate_folds(values: Sequence[float]) -> dict[str, float | int | None]:
    """Summarize one metric over cross-validation folds with a Student-t 95% confidence interval.

    Returns ``{mean, sd, ci95_low, ci95_high, n}``: sd is the sample standard deviation
    (ddof = 1) and the interval is mean ± t(0.975, n - 1) · sd / sqrt(n), with the t quantile
    from ``scipy.stats.t``. With n = 1, sd is 0 and both ends equal the mean. With n = 0 every
    value except n is None.

    The folds share training images, so their values are not independent samples and the
    interval tends to be narrower than the true uncertainty of the mean.

    Raises:
        ValueError: for a NaN or infinite value.
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    count = int(array.size)
    if count == 0:
        return {"mean": None, "sd": None, "ci95_low": None, "ci95_high": None, "n": 0}
    if not np.isfinite(array).all():
        raise ValueError(f"fold values must be finite, got {array.tolist()}")

    mean = float(array.mean())
    if count == 1:
        return {"mean": mean, "sd": 0.0, "ci95_low": mean, "ci95_high": mean, "n": 1}

    sd = float(array.std(ddof=1))
    t_quantile = float(stats.t.ppf(0.5 + CONFIDENCE_LEVEL / 2, df=count - 1))
    half_width = t_quantile * sd / math.sqrt(count)
    return {"mean": mean, "sd": sd, "ci95_low": mean - half_width, "ci95_high": mean + half_width, "n": count}
