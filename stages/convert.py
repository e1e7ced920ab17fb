"""Stage convert: turn an annotated face dataset into the annotation CSV files of keras-retinanet.

``--format`` picks the source (default ``caltech``). Every format is read into the table of
``stages.importers`` and checked by the same policy, which that module documents case by case:

- ``caltech``: the extracted archive folder. ``ImageData.mat`` contains ``SubDir_Data``, an
  8 x 450 matrix whose column i (0-based) describes ``image_{i+1:04d}.jpg``. Its rows are the
  four corners of the face box in pixels, 0-based: ``x_bl y_bl x_tl y_tl x_tr y_tr x_br y_br``
  (bottom-left, top-left, top-right, bottom-right). The box is x1 = min of the x values,
  y1 = min of the y values, x2 = max x and y2 = max y. On this data that equals
  top-left = rows 2, 3 and bottom-right = rows 6, 7.
- ``csv``: a keras-retinanet annotation CSV, with ``--classes`` (default: ``classes.csv`` next to it).
- ``voc``: a folder of Pascal VOC XML files, with ``--images`` (default: the XML folder).
- ``fddb``: a folder of ``FDDB-fold-NN.txt`` and ``FDDB-fold-NN-ellipseList.txt`` files, with
  ``--images``, the folder that contains the FDDB ``2002/...`` and ``2003/...`` image folders.

Rounding rule: x1 and y1 are rounded down (floor) and x2 and y2 up (ceil), which gives the
smallest integer box that contains the annotated box. The box is then clipped to [0, width]
and [0, height] of the actual image, because keras-retinanet rejects boxes that reach past
the image. For example, (10.2, 20.7, 30.1, 40.0) becomes (10, 20, 31, 40), and y1 = -0.71
becomes -1 and is clipped to 0.

Every image present is decoded in full. Missing and undecodable images are left out, logged
as a counted warning, and counted in the summary. Errors (see ``stages.importers``) stop the
stage with every error line listed, before any output is written.

Outputs:

- ``--out-csv``: ``path,x1,y1,x2,y2,class_name`` rows, no header, integer pixels, paths
  relative to the CSV's folder with ``/`` separators (keras-retinanet resolves them from
  there), and ``path,,,,,`` for an image without faces;
- ``--out-classes``: the class mapping, ``face,0`` for caltech and fddb;
- ``--summary``: JSON with image and box counts and box sizes in pixels;
- ``--out-groups`` (optional): ``groups.csv`` for the split stage, ``image,group`` per image with
  the path as in ``--out-csv`` (see ``stages.split.dataset_groups``), or ``image,fold`` for FDDB.

The dataset comes from the ``dataset`` section of the parameter file, or from ``--raw`` and the
options after it when ``--raw`` is given (then nothing is read from that section).

Command line::

    python -m stages.convert --params params.yaml [--profile P] \\
        [--raw PATH [--format caltech|csv|voc|fddb] [--classes CSV] [--images DIR] [--groups CSV]] \\
        [--persons stages/resources/caltech_persons.csv] [--out-groups data/interim/groups.csv] \\
        --out-csv data/interim/annotations.csv --out-classes data/interim/classes.csv \\
        --summary reports/metrics/data.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.io

from stages import importers, split
from stages.atomic import write_text_atomic
from stages.cli import run_stage
from stages.errors import DataError
from stages.importers import Dataset, ImageEntry, PendingImage, ProblemLog, RawBox, check_images
from stages.params import ParamsError, add_params_arguments, load_params

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
FORMATS = ("caltech", "csv", "voc", "fddb")


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


def select_evenly(names: Sequence[str], count: int | None) -> list[str]:
    """Keep ``count`` of the sorted ``names``, spread evenly from the first to the last.

    None, or a count of at least len(names), keeps every name.
    """
    if count is None or count >= len(names):
        return list(names)
    # Positions are at least 1 apart because count <= len(names), so rounding half up keeps them distinct.
    positions = np.floor(np.linspace(0, len(names) - 1, count) + 0.5).astype(int)
    return [names[position] for position in positions]


def read_caltech(raw_dir: Path) -> Dataset:
    """Read the extracted archive into the common annotation table, checked like every other format.

    Each image gets the bounding box of its four corners, rounded outward and clipped to the image
    by ``stages.importers.check_box``. Images without an annotation in ``ImageData.mat`` are logged
    and skipped.
    """
    mat_path = raw_dir / MAT_FILE
    corners = read_corners(mat_path)
    check_corners(corners, str(mat_path))
    float_boxes = corner_boxes(corners)
    annotated = [image_name(number) for number in range(1, corners.shape[1] + 1)]

    unannotated = sorted({path.name for path in raw_dir.glob(IMAGE_GLOB)} - set(annotated))
    if unannotated:
        logger.warning(
            "%d images in %s have no annotation and are skipped: %s", len(unannotated), raw_dir, ", ".join(unannotated)
        )
    pending = []
    for column, name in enumerate(annotated):
        where = f"{mat_path} {MAT_VARIABLE} column {column + 1}"
        box = RawBox(tuple(float(value) for value in float_boxes[column]), CLASS_NAME, where)
        pending.append(PendingImage(name, raw_dir / name, None, where, [box]))
    if not any(item.path.is_file() for item in pending):
        raise DataError(f"{raw_dir}: none of the {len(annotated)} annotated images is present")
    return check_images(pending, {CLASS_NAME: CLASS_ID}, ProblemLog())


def read_dataset(data_format: str, source: Path, classes: Path | None, images: Path | None) -> Dataset:
    """Read ``source`` in ``data_format`` (one of FORMATS) into the common table, problems included."""
    if data_format == "caltech":
        return read_caltech(source)
    if data_format == "csv":
        return importers.read_csv(source, classes)
    if data_format == "voc":
        return importers.read_voc(source, images, classes)
    if data_format == "fddb":
        if images is None:
            raise DataError(f"{source}: FDDB fold files need --images, the folder of the FDDB images")
        return importers.read_fddb(source, images)
    raise DataError(f"unknown dataset format {data_format!r}, expected one of {', '.join(FORMATS)}")


def _size_statistics(values: Sequence[int]) -> dict[str, float]:
    return {"min": int(min(values)), "mean": round(float(np.mean(values)), 2), "max": int(max(values))}


def summarize(dataset: Dataset, used: Sequence[ImageEntry]) -> dict:
    """Return the data summary: image counts, box counts and box sizes in pixels after clipping."""
    faces = [face for image in used for face in image.faces]
    size_counts = Counter((image.width, image.height) for image in used)
    widths = [face.x2 - face.x1 for face in faces]
    heights = [face.y2 - face.y1 for face in faces]
    return {
        "images_annotated": len(dataset.listed),
        "images_present": len(dataset.listed) - len(dataset.missing),
        "images_missing": len(dataset.missing),
        "missing_images": list(dataset.missing),
        "images_used": len(used),
        "boxes": len(faces),
        "boxes_clipped": sum(face.clipped for face in faces),
        "image_sizes": [
            {"width": width, "height": height, "images": count}
            for (width, height), count in sorted(size_counts.items())
        ],
        "box_width_px": _size_statistics(widths) if widths else None,
        "box_height_px": _size_statistics(heights) if heights else None,
    }


def select_images(dataset: Dataset, max_images: int | None) -> list[ImageEntry]:
    """Keep ``max_images`` of the dataset's images, spread evenly over their order (see select_evenly)."""
    by_key = {image.key: image for image in dataset.images}
    return [by_key[key] for key in select_evenly(list(by_key), max_images)]


def convert(dataset: Dataset, out_csv: Path, max_images: int | None) -> tuple[str, str, dict]:
    """Log the dataset's problems, fail on errors, and return the annotation CSV, class CSV and summary."""
    importers.log_problems(dataset.problems)
    importers.raise_on_errors(dataset)
    if not dataset.images:
        raise DataError(importers.no_image_left(dataset))
    used = select_images(dataset, max_images)
    annotations_csv = importers.format_annotations_csv(used, out_csv.parent)
    return annotations_csv, importers.format_classes_csv(dataset.classes), summarize(dataset, used)


def convert_dataset(raw_dir: Path, out_csv: Path, max_images: int | None) -> tuple[str, dict]:
    """Read and check the extracted Caltech archive; return the annotation CSV text and the summary."""
    annotations_csv, _, summary = convert(read_caltech(raw_dir), out_csv, max_images)
    return annotations_csv, summary


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the convert stage."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.convert",
        description="Convert an annotated face dataset into keras-retinanet annotation and class CSV files.",
    )
    add_params_arguments(parser)
    parser.add_argument(
        "--format", dest="data_format", choices=FORMATS, default="caltech",
        help="annotation format of --raw (default: %(default)s): caltech is the extracted archive folder, "
        "csv a keras-retinanet annotation CSV, voc a folder of Pascal VOC XML files, fddb a folder of "
        "FDDB-fold-NN.txt and FDDB-fold-NN-ellipseList.txt files",
    )
    parser.add_argument(
        "--raw", type=Path, default=None,
        help="the dataset: the extracted archive folder (caltech), annotation CSV (csv), XML folder (voc) "
        "or fold-file folder (fddb); default: the dataset section of the parameter file, which then also "
        "sets --format, --classes, --images and --groups",
    )
    parser.add_argument(
        "--classes", type=Path, default=None,
        help="class CSV (class_name,id) for csv and voc (default for csv: classes.csv next to the CSV; "
        "for voc: the object names found, sorted)",
    )
    parser.add_argument(
        "--images", type=Path, default=None,
        help="image folder for voc (default: the XML folder) and fddb (required); image paths are relative to it",
    )
    parser.add_argument(
        "--groups", type=Path, default=None,
        help="CSV image,group that gives each image's person, for csv and voc (default: every image is its own group)",
    )
    parser.add_argument(
        "--persons", type=Path, default=None,
        help="person CSV person,first_image,last_image of the caltech format, needed with --out-groups",
    )
    parser.add_argument(
        "--out-groups", type=Path, default=None,
        help="groups.csv to write for the split stage (image,group, or image,fold for fddb)",
    )
    parser.add_argument(
        "--out-csv", type=Path, required=True, help="annotation CSV to write (path,x1,y1,x2,y2,class_name)"
    )
    parser.add_argument("--out-classes", type=Path, required=True, help="class CSV to write (class_name,id)")
    parser.add_argument("--summary", type=Path, required=True, help="JSON file to write with image and box statistics")
    return parser


@dataclass(frozen=True)
class DatasetSource:
    """Location and format of a dataset, from the ``dataset`` parameters or their command-line options."""

    data_format: str
    annotations: Path
    images: Path | None
    classes: Path | None
    groups: Path | None


def dataset_source(args: argparse.Namespace, dataset_params: dict, source: str) -> DatasetSource:
    """Return the dataset that ``--raw`` and its options name, else the one of the ``dataset`` parameters.

    Raises ParamsError for ``dataset.classes`` or ``dataset.groups`` set with caltech or fddb,
    whose single class and groups are fixed.
    """
    if args.raw is not None:
        return DatasetSource(args.data_format, args.raw, args.images, args.classes, args.groups)

    data_format = dataset_params["format"]
    for key in ("classes", "groups"):
        if data_format in ("caltech", "fddb") and dataset_params[key] is not None:
            raise ParamsError(
                f"{source}: dataset.{key} is {dataset_params[key]!r}, but the {data_format} format has a fixed "
                f"{'class' if key == 'classes' else 'grouping'}; set it to null"
            )
    optional = {key: Path(dataset_params[key]) if dataset_params[key] is not None else None
                for key in ("classes", "groups")}
    return DatasetSource(data_format, Path(dataset_params["annotations"]), Path(dataset_params["images"]),
                         optional["classes"], optional["groups"])


def warn_untracked_images(images: Sequence[ImageEntry], images_dir: Path) -> None:
    """Log a warning naming the images outside ``images_dir``, because DVC does not see them change."""
    root = images_dir.resolve()
    outside = [image.key for image in images if not image.path.resolve().is_relative_to(root)]
    if outside:
        logger.warning(
            "%d images are outside dataset.images (%s), so DVC does not rerun this stage when they change: %s",
            len(outside), images_dir, ", ".join(outside[:3]) + (", ..." if len(outside) > 3 else ""),
        )  # fmt: skip


def run(args: argparse.Namespace) -> None:
    """Run the convert stage with parsed command-line arguments."""
    params = load_params(args.params, args.profile)
    source = dataset_source(args, params["dataset"], str(args.params))
    dataset = read_dataset(source.data_format, source.annotations, source.classes, source.images)
    annotations_csv, classes_csv, summary = convert(dataset, args.out_csv, params["convert"]["max_images"])
    if source.images is not None:
        warn_untracked_images(dataset.images, source.images)
    groups_csv = None
    if args.out_groups is not None:
        used = select_images(dataset, params["convert"]["max_images"])
        groups = split.dataset_groups(used, source.data_format, args.persons, source.groups)
        groups_csv = split.format_groups_csv(used, groups, args.out_csv.parent)

    write_text_atomic(args.out_csv, annotations_csv)
    write_text_atomic(args.out_classes, classes_csv)
    if groups_csv is not None:
        write_text_atomic(args.out_groups, groups_csv)
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
