"""Stage convert: turn ImageData.mat into the annotation CSV files of keras-retinanet.

Input: the extracted archive. ``ImageData.mat`` contains ``SubDir_Data``, an 8 x 450 matrix
whose column i (0-based) describes ``image_{i+1:04d}.jpg``. Its rows are the four corners of
the face box in pixels, 0-based: ``x_bl y_bl x_tl y_tl x_tr y_tr x_br y_br`` (bottom-left,
top-left, top-right, bottom-right). The box is x1 = min of the x values, y1 = min of the
y values, x2 = max x and y2 = max y. On this data that equals top-left = rows 2, 3 and
bottom-right = rows 6, 7.

Rounding rule: x1 and y1 are rounded down (floor) and x2 and y2 up (ceil), which gives the
smallest integer box that contains the annotated box. The box is then clipped to [0, width]
and [0, height] of the actual image, because keras-retinanet rejects boxes that reach past
the image. For example, (10.2, 20.7, 30.1, 40.0) becomes (10, 20, 31, 40), and y1 = -0.71
becomes -1 and is clipped to 0.

Every image present is decoded in full and must be RGB. Annotated images that are missing
from the folder are logged as a warning and counted in the summary, not treated as an error.

Outputs:

- ``--out-csv``: ``path,x1,y1,x2,y2,class_name`` rows, no header, integer pixels, class
  ``face``, paths relative to the CSV's folder (keras-retinanet resolves them from there);
- ``--out-classes``: the single line ``face,0``;
- ``--summary``: JSON with image and box counts and box sizes in pixels.

Command line::

    python -m stages.convert --params params.yaml [--profile P] --raw data/raw/caltech-faces-1999 \\
        --out-csv data/interim/annotations.csv --out-classes data/interim/classes.csv \\
        --summary reports/metrics/data.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.io
from PIL import Image
from tqdm import tqdm

from stages.atomic import write_text_atomic
from stages.cli import run_stage
from stages.errors import DataError
from stages.params import add_params_arguments, load_params

logger = logging.getLogger(__name__)

MAT_FILE = "ImageData.mat"
MAT_VARIABLE = "SubDir_Data"
CORNER_ROWS = 8
X_ROWS = [0, 2, 4, 6]
Y_ROWS = [1, 3, 5, 7]
CLASS_NAME = "face"
CLASS_ID = 0
IMAGE_NAME_FORMAT = "image_{:04d}.jpg"
IMAGE_GLOB = "image_*.jpg"
REQUIRED_MODE = "RGB"


@dataclass(frozen=True)
class Annotation:
    """One face box of one image, in integer pixels after rounding and clipping."""

    image: str
    x1: int
    y1: int
    x2: int
    y2: int
    clipped: bool


def image_name(number: int) -> str:
    """Return the file name of the 1-based image number, e.g. 1 -> image_0001.jpg."""
    return IMAGE_NAME_FORMAT.format(number)


def read_corners(mat_path: Path) -> np.ndarray:
    """Read the ``SubDir_Data`` matrix from a MATLAB file, unchecked."""
    if not mat_path.is_file():
        raise DataError(f"{mat_path}: file not found; run the download stage first")
    try:
        contents = scipy.io.loadmat(mat_path)
    except (ValueError, OSError) as error:
        raise DataError(f"{mat_path}: not a readable MATLAB file: {error}") from error
    if MAT_VARIABLE not in contents:
        variables = ", ".join(name for name in contents if not name.startswith("__")) or "none"
        raise DataError(f"{mat_path}: variable {MAT_VARIABLE} not found (variables: {variables})")
    return contents[MAT_VARIABLE]


def check_corners(corners: np.ndarray, source: str) -> None:
    """Raise DataError unless ``corners`` is an 8 x N matrix of finite numbers.

    The message names the 1-based column (the image number), the image and the value.
    """
    if corners.ndim != 2 or corners.shape[0] != CORNER_ROWS or corners.shape[1] == 0:
        raise DataError(
            f"{source}: {MAT_VARIABLE} has shape {corners.shape}, expected ({CORNER_ROWS}, N) "
            "with one column of corner coordinates per image"
        )
    if not np.issubdtype(corners.dtype, np.number):
        raise DataError(f"{source}: {MAT_VARIABLE} has dtype {corners.dtype}, expected numbers")
    bad_rows, bad_columns = np.nonzero(~np.isfinite(corners))
    if bad_columns.size:
        row, column = bad_rows[0], bad_columns[0]
        raise DataError(
            f"{source}: {MAT_VARIABLE} column {column + 1} ({image_name(column + 1)}) row {row} "
            f"is {corners[row, column]}, expected a finite coordinate "
            f"({bad_columns.size} non-finite values in all)"
        )


def corner_boxes(corners: np.ndarray) -> np.ndarray:
    """Return an N x 4 array of [x1, y1, x2, y2]: the bounding box of each column's corners."""
    xs = corners[X_ROWS, :]
    ys = corners[Y_ROWS, :]
    return np.stack([xs.min(axis=0), ys.min(axis=0), xs.max(axis=0), ys.max(axis=0)], axis=1)


def round_box(box: Sequence[float], width: int, height: int) -> tuple[tuple[int, int, int, int], bool]:
    """Round a float box outward to integers and clip it to a ``width`` x ``height`` image.

    Returns the box (x1, y1, x2, y2) and whether clipping changed it.
    """
    x1, y1, x2, y2 = box
    rounded = (math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2))
    clipped = (
        min(max(rounded[0], 0), width),
        min(max(rounded[1], 0), height),
        min(max(rounded[2], 0), width),
        min(max(rounded[3], 0), height),
    )
    return clipped, clipped != rounded


def format_box(box: Sequence[float]) -> str:
    """Format a box as ``x1=.. y1=.. x2=.. y2=..``, floats with up to 6 significant digits."""
    return " ".join(f"{name}={value:.6g}" for name, value in zip(("x1", "y1", "x2", "y2"), box))


def check_box(annotation: Annotation, width: int, height: int, source_box: Sequence[float], where: str) -> None:
    """Raise DataError unless the box has positive area and lies inside the image.

    ``source_box`` is the box before rounding and clipping, and ``where`` names its source
    (the ImageData.mat column); both appear in the message.
    """
    box = format_box((annotation.x1, annotation.y1, annotation.x2, annotation.y2))
    source = f"box {format_box(source_box)}"
    if annotation.x2 <= annotation.x1 or annotation.y2 <= annotation.y1:
        raise DataError(
            f"{where}: {source} has no area after rounding and clipping to the {width}x{height} image ({box})"
        )
    if annotation.x1 < 0 or annotation.y1 < 0 or annotation.x2 > width or annotation.y2 > height:
        raise DataError(f"{where}: {source} lies outside the {width}x{height} image ({box})")


def pixels_outside(box: Sequence[float], width: int, height: int) -> float:
    """Return how far, in pixels, the float box reaches past the image on its worst side (0 if inside)."""
    x1, y1, x2, y2 = box
    return float(max(0.0, -x1, -y1, x2 - width, y2 - height))


def inspect_image(path: Path) -> tuple[int, int]:
    """Decode the whole image and return its (width, height).

    Raises DataError naming the file if it cannot be decoded, is truncated or is not RGB.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            size = image.size
    except (OSError, SyntaxError) as error:
        raise DataError(f"{path}: image cannot be decoded (corrupt or truncated): {error}") from error
    if mode != REQUIRED_MODE:
        raise DataError(f"{path}: image mode is {mode!r}, expected {REQUIRED_MODE!r} with 3 channels")
    return size


def select_evenly(names: Sequence[str], count: int | None) -> list[str]:
    """Keep ``count`` of the sorted ``names``, spread evenly from the first to the last.

    None, or a count of at least len(names), keeps every name.
    """
    if count is None or count >= len(names):
        return list(names)
    # Positions are at least 1 apart because count <= len(names), so rounding half up keeps them distinct.
    positions = np.floor(np.linspace(0, len(names) - 1, count) + 0.5).astype(int)
    return [names[position] for position in positions]


def build_annotations(
    boxes: dict[str, Sequence[float]], sizes: dict[str, tuple[int, int]], columns: dict[str, int], mat_source: str
) -> list[Annotation]:
    """Round, clip and check the box of each image, in the order of ``boxes``.

    ``sizes`` maps each image to its (width, height) and ``columns`` to its 1-based column of
    SubDir_Data in ``mat_source``, which error messages name. Logs a warning with the number
    of boxes that clipping changed.
    """
    annotations = []
    worst_image, worst_outside = "", 0.0
    for image, box in boxes.items():
        width, height = sizes[image]
        (x1, y1, x2, y2), clipped = round_box(box, width, height)
        annotation = Annotation(image, x1, y1, x2, y2, clipped)
        check_box(annotation, width, height, box, f"{mat_source} {MAT_VARIABLE} column {columns[image]} ({image})")
        annotations.append(annotation)
        outside = pixels_outside(box, width, height)
        if outside > worst_outside:
            worst_image, worst_outside = image, outside

    clipped_count = sum(annotation.clipped for annotation in annotations)
    if clipped_count:
        logger.warning(
            "%d of %d boxes reach past their image and were clipped to it (at most %.1f px, in %s)",
            clipped_count, len(annotations), worst_outside, worst_image,
        )  # fmt: skip
    return annotations


def format_annotations_csv(annotations: Sequence[Annotation], image_prefix: str) -> str:
    """Format keras-retinanet annotation rows; ``image_prefix`` is joined before each file name."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for annotation in annotations:
        path = f"{image_prefix}/{annotation.image}" if image_prefix else annotation.image
        writer.writerow([path, annotation.x1, annotation.y1, annotation.x2, annotation.y2, CLASS_NAME])
    return buffer.getvalue()


def _size_statistics(values: Sequence[int]) -> dict[str, float]:
    return {"min": int(min(values)), "mean": round(float(np.mean(values)), 2), "max": int(max(values))}


def summarize(
    annotated: Sequence[str],
    missing: Sequence[str],
    sizes: dict[str, tuple[int, int]],
    annotations: Sequence[Annotation],
) -> dict:
    """Return the data summary: image counts, box counts and box sizes in pixels after clipping."""
    size_counts = Counter(sizes[annotation.image] for annotation in annotations)
    widths = [annotation.x2 - annotation.x1 for annotation in annotations]
    heights = [annotation.y2 - annotation.y1 for annotation in annotations]
    return {
        "images_annotated": len(annotated),
        "images_present": len(annotated) - len(missing),
        "images_missing": len(missing),
        "missing_images": list(missing),
        "images_used": len({annotation.image for annotation in annotations}),
        "boxes": len(annotations),
        "boxes_clipped": sum(annotation.clipped for annotation in annotations),
        "image_sizes": [
            {"width": width, "height": height, "images": count}
            for (width, height), count in sorted(size_counts.items())
        ],
        "box_width_px": _size_statistics(widths) if widths else None,
        "box_height_px": _size_statistics(heights) if heights else None,
    }


def convert_dataset(raw_dir: Path, out_csv: Path, max_images: int | None) -> tuple[str, dict]:
    """Read and check the extracted archive; return the annotation CSV text and the summary."""
    mat_path = raw_dir / MAT_FILE
    corners = read_corners(mat_path)
    check_corners(corners, str(mat_path))
    float_boxes = corner_boxes(corners)
    annotated = [image_name(number) for number in range(1, corners.shape[1] + 1)]

    present = [name for name in annotated if (raw_dir / name).is_file()]
    missing = sorted(set(annotated) - set(present))
    if missing:
        logger.warning("%d annotated images are missing from %s: %s", len(missing), raw_dir, ", ".join(missing))
    unannotated = sorted({path.name for path in raw_dir.glob(IMAGE_GLOB)} - set(annotated))
    if unannotated:
        logger.warning(
            "%d images in %s have no annotation and are skipped: %s", len(unannotated), raw_dir, ", ".join(unannotated)
        )
    if not present:
        raise DataError(f"{raw_dir}: none of the {len(annotated)} annotated images is present")

    sizes = {}
    # The context manager closes the bar before an error propagates, so the error message is printed last.
    with tqdm(present, desc="check images", unit="image") as bar:
        for name in bar:
            sizes[name] = inspect_image(raw_dir / name)
    used = select_evenly(present, max_images)
    column_of = {name: column for column, name in enumerate(annotated)}
    boxes = {name: float_boxes[column_of[name]] for name in used}
    columns = {name: column_of[name] + 1 for name in used}
    annotations = build_annotations(boxes, sizes, columns, str(mat_path))

    image_prefix = Path(os.path.relpath(raw_dir, out_csv.parent)).as_posix()
    summary = summarize(annotated, missing, sizes, annotations)
    return format_annotations_csv(annotations, image_prefix), summary


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the convert stage."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.convert",
        description="Convert ImageData.mat into keras-retinanet annotation and class CSV files.",
    )
    add_params_arguments(parser)
    parser.add_argument(
        "--raw", type=Path, required=True, help="folder of the extracted archive (ImageData.mat and images)"
    )
    parser.add_argument(
        "--out-csv", type=Path, required=True, help="annotation CSV to write (path,x1,y1,x2,y2,class_name)"
    )
    parser.add_argument("--out-classes", type=Path, required=True, help="class CSV to write (class_name,id)")
    parser.add_argument("--summary", type=Path, required=True, help="JSON file to write with image and box statistics")
    return parser


def run(args: argparse.Namespace) -> None:
    """Run the convert stage with parsed command-line arguments."""
    params = load_params(args.params, args.profile)["convert"]
    annotations_csv, summary = convert_dataset(args.raw, args.out_csv, params["max_images"])

    write_text_atomic(args.out_csv, annotations_csv)
    write_text_atomic(args.out_classes, f"{CLASS_NAME},{CLASS_ID}\n")
    write_text_atomic(args.summary, json.dumps(summary, indent=2) + "\n")
    logger.info(
        "wrote %d boxes of %d images to %s (%d of %d images present, %d boxes clipped to the image)",
        summary["boxes"],
        summary["images_used"],
        args.out_csv,
        summary["images_present"],
        summary["images_annotated"],
        summary["boxes_clipped"],
    )


def main(argv: list[str] | None = None) -> int:
    """Run the convert stage; return 0 on success and 1 on a known error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_stage(run, args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
