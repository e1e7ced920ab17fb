"""Check before training that RetinaNet's anchors can match the face boxes at the configured image size.

keras-retinanet trains an anchor as a face when its IoU with a ground-truth box is at least 0.5
(``positive_overlap`` of ``keras_retinanet.utils.anchors.anchor_targets_bbox``). A box that no
anchor reaches at that IoU gives the detector no positive target, so it never learns such faces.
This happens to faces that are very small, very large or very elongated after the image is
resized to ``detector.image_min_side`` / ``image_max_side``.

The check resizes each box as keras-retinanet's CSVGenerator resizes its image, builds the anchors
with keras-retinanet's own ``anchors_for_shape`` (default anchor parameters and pyramid levels
P3 to P7, as stages.detector builds the model) and computes their IoU with keras-retinanet's
``compute_overlap``.

    python -m stages.anchor_check --params params.yaml --profile paper --annotations data/interim/annotations.csv
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from stages.cli import run_stage
from stages.errors import DataError
from stages.params import add_params_arguments, load_params

log = logging.getLogger(__name__)

# keras-retinanet's positive_overlap: an anchor at this IoU or more with a box is trained as a face.
POSITIVE_IOU = 0.5
# Below this share of boxes with a positive anchor the check warns. A box without one is never
# trained as a face, so the detector is likely to miss such faces. Losing 5% of the faces before
# training starts is worth a look at the image size or the annotations.
MIN_COVERAGE = 0.95
# Boxes with the lowest best-anchor IoU named in the warning.
WORST_BOXES_LOGGED = 5


@dataclass(frozen=True)
class TrainingBox:
    """One face box of a keras-retinanet CSV, in the original image's pixels."""

    csv_path: Path
    line: int
    image_path: Path
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class BoxCoverage:
    """The best anchor IoU of one box, with the box after resizing (x1, y1, x2, y2 in pixels)."""

    source: TrainingBox
    resized_box: tuple[float, float, float, float]
    best_iou: float

    @property
    def covered(self) -> bool:
        """Whether an anchor reaches POSITIVE_IOU with this box."""
        return self.best_iou >= POSITIVE_IOU

    def describe(self) -> str:
        """Name the box by file and line, with its size after resizing and its best anchor IoU."""
        x1, y1, x2, y2 = self.resized_box
        return (f"{self.source.csv_path}:{self.source.line} ({self.source.image_path.name}): "
                f"{x2 - x1:.0f}x{y2 - y1:.0f} px after resizing, best anchor IoU {self.best_iou:.2f}")


@dataclass(frozen=True)
class CoverageReport:
    """Anchor coverage of every face box of a training CSV at one image size."""

    boxes: tuple[BoxCoverage, ...]
    image_min_side: int
    image_max_side: int

    @property
    def covered(self) -> int:
        """Number of boxes with an anchor at IoU >= POSITIVE_IOU."""
        return sum(box.covered for box in self.boxes)

    @property
    def share(self) -> float | None:
        """Share of covered boxes in [0, 1], or None when the CSV has no face box."""
        return self.covered / len(self.boxes) if self.boxes else None

    def worst(self, count: int = WORST_BOXES_LOGGED) -> list[BoxCoverage]:
        """Return at most ``count`` uncovered boxes, lowest best-anchor IoU first."""
        uncovered = [box for box in self.boxes if not box.covered]
        return sorted(uncovered, key=lambda box: box.best_iou)[:count]


def _parse_pixel(csv_path: Path, line: int, name: str, text: str) -> int:
    # keras-retinanet's CSVGenerator parses coordinates with int(), so "210.0" fails there too.
    try:
        return int(text)
    except ValueError:
        raise DataError(
            f"{csv_path}: line {line}: {name} ({text!r}) is not an integer pixel coordinate; "
            "keras-retinanet's CSVGenerator reads only integers"
        ) from None


def read_training_boxes(csv_path: Path) -> list[TrainingBox]:
    """Read the face boxes of a keras-retinanet annotation CSV (no header, ``path,x1,y1,x2,y2,class_name``).

    Paths are relative to the CSV's folder, as in keras-retinanet's CSVGenerator. Background rows
    ``path,,,,,`` (images without faces) have no box and are skipped.

    Raises:
        DataError: naming the file and line of a row without 6 fields, a coordinate that is not an
            integer, or a box with x2 <= x1 or y2 <= y1.
    """
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: file not found; run the convert stage first")
    boxes = []
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        for fields in reader:
            if not fields:
                continue
            line = reader.line_num
            if len(fields) != 6:
                raise DataError(
                    f"{csv_path}: line {line}: expected 6 fields 'path,x1,y1,x2,y2,class_name', got {len(fields)}")
            raw_path, *coordinates, class_name = fields
            if not any(coordinates) and not class_name:
                continue
            x1, y1, x2, y2 = (_parse_pixel(csv_path, line, name, text)
                              for name, text in zip(("x1", "y1", "x2", "y2"), coordinates))
            if x2 <= x1 or y2 <= y1:
                raise DataError(
                    f"{csv_path}: line {line}: box ({x1}, {y1}, {x2}, {y2}) needs x2 > x1 and y2 > y1")
            boxes.append(TrainingBox(csv_path, line, csv_path.parent / raw_path, (x1, y1, x2, y2)))
    return boxes


def read_image_size(box: TrainingBox) -> tuple[int, int]:
    """Return (height, width) in pixels of the box's image, reading only the file header."""
    try:
        with Image.open(box.image_path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise DataError(f"{box.csv_path}: line {box.line}: image file {box.image_path} not found") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{box.csv_path}: line {box.line}: cannot read image {box.image_path}: {error}") from None
    return height, width


def resized_shape(height: int, width: int, min_side: int, max_side: int) -> tuple[tuple[int, int], float]:
    """Return the (height, width) and scale of an image after keras-retinanet's ``resize_image``.

    The scale comes from ``keras_retinanet.utils.image.compute_resize_scale``: the short side
    becomes ``min_side`` unless the long side would then exceed ``max_side``. OpenCV's resize
    rounds each scaled side to the nearest pixel.
    """
    from keras_retinanet.utils.image import compute_resize_scale

    scale = compute_resize_scale((height, width, 3), min_side=min_side, max_side=max_side)
    return (round(height * scale), round(width * scale)), scale


def image_anchors(shape: tuple[int, int]) -> np.ndarray:
    """Return the (N, 4) anchors that keras-retinanet trains on for an image of ``shape`` (height, width).

    Anchors whose centre lies outside the image are left out, because ``anchor_targets_bbox``
    marks them as ignored.
    NOTE: anchors_for_shape guesses the pyramid shapes by rounding up. For an odd side the
    MobileNet backbones round down, so training may have one row or column of anchors fewer
    at the bottom or right edge.
    """
    from stages import kerascompat

    kerascompat.keras()
    from keras_retinanet.utils.anchors import AnchorParameters, anchors_for_shape

    anchors = anchors_for_shape((*shape, 3), anchor_params=AnchorParameters.default)
    centre_x = (anchors[:, 0] + anchors[:, 2]) / 2
    centre_y = (anchors[:, 1] + anchors[:, 3]) / 2
    return anchors[(centre_x < shape[1]) & (centre_y < shape[0])]


def best_anchor_iou(anchors: np.ndarray, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Return the (K,) highest IoU of any of the (N, 4) ``anchors`` with each of the (K, 4) ``boxes``.

    IoU comes from keras-retinanet's ``compute_overlap``, but only for the anchors whose centre is
    within the largest anchor stride of the box centre in x and in y. ``shape`` is the image's
    height and width. The shortcut is exact for a box centred inside the image. On each pyramid
    level and for each anchor size, the IoU is highest at the grid point nearest the box centre
    in each axis, and that point is at most one stride away. A box centred outside the image is compared with
    every anchor. At 800/1333 px (about 180,000 anchors per image) the shortcut cut the check of
    the 445 Caltech boxes from about 12 s to under 2 s on a busy 2-core CPU.
    """
    from keras_retinanet.utils.anchors import AnchorParameters
    from keras_retinanet.utils.compute_overlap import compute_overlap

    window = max(AnchorParameters.default.strides)
    anchors = np.ascontiguousarray(anchors, dtype=np.float64)
    order = np.argsort((anchors[:, 0] + anchors[:, 2]) / 2, kind="stable")
    anchors = anchors[order]
    centre_x = (anchors[:, 0] + anchors[:, 2]) / 2
    centre_y = (anchors[:, 1] + anchors[:, 3]) / 2

    best = np.zeros(len(boxes), dtype=np.float64)
    for index, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        box_x, box_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        candidates = anchors
        if 0 <= box_x <= shape[1] and 0 <= box_y <= shape[0]:
            start = np.searchsorted(centre_x, box_x - window, side="left")
            stop = np.searchsorted(centre_x, box_x + window, side="right")
            near = np.abs(centre_y[start:stop] - box_y) <= window
            candidates = anchors[start:stop][near]
        if len(candidates):
            best[index] = compute_overlap(candidates, box[np.newaxis, :]).max()
    return best


def anchor_coverage(boxes: Sequence[TrainingBox], min_side: int, max_side: int) -> CoverageReport:
    """Compute each box's best anchor IoU after resizing its image to ``min_side`` / ``max_side`` px.

    Boxes are grouped by resized image shape, so the anchors of each shape are built once.
    Training augmentation (random scaling and translation) is not modelled.
    """
    groups: dict[tuple[int, int], list[tuple[TrainingBox, tuple[float, float, float, float]]]] = {}
    for box in boxes:
        shape, scale = resized_shape(*read_image_size(box), min_side, max_side)
        resized = tuple(float(value * scale) for value in box.box)
        groups.setdefault(shape, []).append((box, resized))

    results = []
    for shape, members in groups.items():
        ious = best_anchor_iou(image_anchors(shape), np.array([resized for _, resized in members]), shape)
        results.extend(BoxCoverage(box, resized, float(iou)) for (box, resized), iou in zip(members, ious))
    results.sort(key=lambda result: (str(result.source.csv_path), result.source.line))
    return CoverageReport(tuple(results), min_side, max_side)


def log_coverage(report: CoverageReport, source: Path) -> None:
    """Log the coverage of ``report``, and a warning naming the worst boxes below MIN_COVERAGE."""
    size = f"{report.image_min_side}/{report.image_max_side} px"
    if report.share is None:
        log.warning("%s: no face boxes, so anchor coverage at %s cannot be measured", source, size)
        return
    log.info("%s: anchor coverage: %d of %d boxes (%.1f%%) have an anchor at IoU >= %g at %s",
             source, report.covered, len(report.boxes), 100 * report.share, POSITIVE_IOU, size)
    if report.share < MIN_COVERAGE:
        worst = report.worst()
        listed = "\n  ".join(box.describe() for box in worst)
        uncovered = len(report.boxes) - report.covered
        log.warning(
            "%s: only %.1f%% of the boxes have an anchor at IoU >= %g (expected at least %.0f%%), so the "
            "detector gets no positive target for %d of %d boxes at %s. Change detector.image_min_side / "
            "image_max_side or check the boxes; the %d worst:\n  %s",
            source, 100 * report.share, POSITIVE_IOU, 100 * MIN_COVERAGE, uncovered, len(report.boxes), size,
            len(worst), listed,
        )  # fmt: skip


def check_anchor_coverage(csv_path: Path, detector_params: dict) -> CoverageReport:
    """Measure and log the anchor coverage of ``csv_path`` at the detector's configured image size."""
    report = anchor_coverage(read_training_boxes(csv_path), detector_params["image_min_side"],
                             detector_params["image_max_side"])
    log_coverage(report, csv_path)
    return report


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the anchor coverage check."""
    parser = argparse.ArgumentParser(prog="python -m stages.anchor_check",
                                     description=__doc__.split("\n\n")[0])
    add_params_arguments(parser)
    parser.add_argument("--annotations", type=Path, required=True, nargs="+",
                        help="keras-retinanet annotation CSV(s) to check, such as data/interim/annotations.csv")
    return parser


def run(args: argparse.Namespace) -> None:
    """Check every CSV in ``args.annotations`` at the image size of the selected params."""
    detector_params = load_params(args.params, args.profile)["detector"]
    for csv_path in args.annotations:
        check_anchor_coverage(csv_path, detector_params)


def main(argv: list[str] | None = None) -> int:
    """Run the anchor coverage check; return 0 on success and 1 on a known error."""
    parser = build_parser()
    return run_stage(run, parser.parse_args(argv), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
