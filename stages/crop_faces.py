"""Stage crop_faces: cut a square face crop out of every GENKI-4K image with the project's detector.

For each image ``files/fileNNNN.jpg`` of the raw folder (row N of ``labels.txt``), the detector
(stages.detector) runs on the image as it is, and its highest-scoring box is taken. A box with
a score of at least ``smiles.crop.score_threshold`` is cropped with
``stages.facecrop.square_crop(image, box, smiles.crop.margin, smiles.crop.size)``. Otherwise
(no box, or a lower score) the stage falls back to ``whole_image_box``, the largest centred
square of the image. Fallbacks are counted, logged and marked ``face_found = 0`` in their row.

The images are not padded before detection. GENKI-4K images are tight face shots (mostly
about 180 x 192 pixels), while the detector learned Caltech faces of about 360 x 480 pixels
(median box) in 896 x 592 frames. Both are scaled to a 224-pixel shorter side by the default
detector, so the faces differ in size by less than a factor of two. Measured with the fold-0
detector of the default profile on every 20th GENKI-4K image (200 images), placing the
image in the middle of a canvas 1.5, 2 or 3 times its size lowered the share of top scores
>= 0.5 from 99.0% (no padding) to 98.5%, 95.5% and 90.0%. The canvas border repeated the
edge pixels at 1.5 and 2 and was the mean colour at 3. So no padding is applied.

NOTE: with the fold-0 detector, 18 of the 61 whole-image fallbacks were larger photos (over 300
pixels wide), often of a whole person. There the face is too small for the detector, and
the whole-image crop shows the person rather than the face. Most other fallbacks were
close-ups cut at the chin or forehead, whose whole-image crops still show the face.

SMILEsmileD needs no detector, because its images are already 64 x 64 face crops; stage
smiles_split reads its raw folder directly.

Outputs, written to a staging folder that then replaces ``--out``:

- ``crops/<stem>.png``: the ``size`` x ``size`` BGR crop of ``files/<stem>.jpg``;
- ``crops.csv``: one row per image with the columns of CROPS_HEADER. ``path`` (the crop) and
  ``source`` (the original image) are relative to the CSV's folder. ``face_score`` is the top
  detector score, or 0 when the detector returned no box at all. ``x1, y1, x2, y2`` is the box
  that was cropped, in pixels of the original image, before ``margin`` is added.
  ``image_width`` and ``image_height`` are the original image's size. ``yaw, pitch, roll`` are
  the labels.txt pose in radians.

``smiles.max_samples`` (smoke profile) keeps that many images spread evenly over each class,
chosen like stage smiles_split chooses its samples, so a smoke run crops only a few images.

Command line::

    python -m stages.crop_faces --params params.yaml [--profile P] --raw data/raw/genki4k \\
        --detector data/models/final/detector --out data/smiles/genki4k-crops
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from stages.atomic import atomic_directory
from stages.cli import run_stage
from stages.detector import predict_image, read_image_bgr
from stages.errors import DataError
from stages.facecrop import square_crop, whole_image_box
from stages.params import add_params_arguments, load_params
from stages.predict import load_detector
from stages.smiles_download import GENKI_IMAGES_FOLDER, GENKI_LABELS_FILE, GenkiLabel, parse_genki_labels
from stages.smiles_split import select_spread

logger = logging.getLogger(__name__)

CROPS_FILE = "crops.csv"
CROPS_FOLDER = "crops"
CROPS_HEADER = [
    "sample", "path", "label", "face_found", "face_score", "x1", "y1", "x2", "y2",
    "image_width", "image_height", "yaw", "pitch", "roll", "source",
]
# Fallbacks logged one by one; after that only their count is logged.
MAX_LOGGED_FALLBACKS = 20


@dataclass(frozen=True)
class FaceBox:
    """The box a crop is cut around, in image pixels, and how it was found."""

    box: tuple[float, float, float, float]
    score: float
    found: bool


def locate_face(detector: Callable, image: np.ndarray, score_threshold: float) -> FaceBox:
    """Return the detector's top box if its score reaches ``score_threshold``, else the whole-image square.

    ``detector`` is a stages.detector.Predictor or any callable with its interface: BGR image
    in, (boxes (K, 4) x1 y1 x2 y2, scores (K,)) sorted by descending score out. ``score`` is
    the top score, or 0.0 when there is no box.
    """
    boxes, scores = predict_image(detector, image, max_detections=1)
    top_score = float(scores[0]) if len(scores) else 0.0
    if len(scores) and top_score >= score_threshold:
        return FaceBox(tuple(float(value) for value in boxes[0]), top_score, True)
    return FaceBox(whole_image_box(image), top_score, False)


def crop_row(label: GenkiLabel, face: FaceBox, image: np.ndarray, crop_path: str, source_path: str) -> list:
    """Return the crops.csv row of one image."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (round(value, 2) for value in face.box)
    return [
        Path(label.image_name).stem, crop_path, label.smile, int(face.found), round(face.score, 4),
        x1, y1, x2, y2, width, height, label.yaw, label.pitch, label.roll, source_path,
    ]


def crop_images(
    raw_dir: Path,
    labels: Sequence[GenkiLabel],
    detector: Callable,
    crop_params: dict,
    staging: Path,
    csv_dir: Path,
) -> list[list]:
    """Detect, crop and write ``staging/crops/<stem>.png`` for every labelled image; return the CSV rows.

    ``source`` paths in the rows are relative to ``csv_dir``, the final folder of crops.csv.
    """
    (staging / CROPS_FOLDER).mkdir()
    rows = []
    fallbacks = 0
    for label in tqdm(labels, desc="crop GENKI-4K faces", unit="image"):
        image_path = raw_dir / GENKI_IMAGES_FOLDER / label.image_name
        image = read_image_bgr(image_path)
        face = locate_face(detector, image, crop_params["score_threshold"])
        if not face.found:
            fallbacks += 1
            if fallbacks <= MAX_LOGGED_FALLBACKS:
                logger.info(
                    "%s: top detector score %.3f is below %.3f; cropping the whole image",
                    image_path, face.score, crop_params["score_threshold"],
                )
        crop = square_crop(image, face.box, crop_params["margin"], crop_params["size"])
        crop_name = f"{CROPS_FOLDER}/{Path(label.image_name).stem}.png"
        if not cv2.imwrite(str(staging / crop_name), crop):
            raise DataError(f"{staging / crop_name}: OpenCV could not write the crop")
        source = Path(os.path.relpath(image_path, csv_dir)).as_posix()
        rows.append(crop_row(label, face, image, crop_name, source))
    if fallbacks > MAX_LOGGED_FALLBACKS:
        logger.info(
            "%d more images fell back to the whole image (not logged one by one)", fallbacks - MAX_LOGGED_FALLBACKS
        )
    return rows


def crops_csv_text(rows: Sequence[Sequence]) -> str:
    """Format crops.csv with its header."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CROPS_HEADER)
    writer.writerows(rows)
    return buffer.getvalue()


def describe_scores(rows: Sequence[Sequence]) -> str:
    """Return a log line with the face-found count and the quantiles of the top detector scores."""
    found = sum(row[CROPS_HEADER.index("face_found")] for row in rows)
    scores = np.array([row[CROPS_HEADER.index("face_score")] for row in rows], dtype=float)
    quantiles = np.quantile(scores, [0.0, 0.01, 0.05, 0.5])
    return (
        f"faces found in {found} of {len(rows)} images ({found / len(rows):.1%}); top score min {quantiles[0]:.3f}, "
        f"1% {quantiles[1]:.3f}, 5% {quantiles[2]:.3f}, median {quantiles[3]:.3f}"
    )


def read_labels(raw_dir: Path) -> list[GenkiLabel]:
    """Read and check ``raw_dir/labels.txt``, accepting any number of rows but at least one.

    Stage smiles_download has already checked the row count against the 4,000 images, and
    tests crop a few images only.
    """
    path = raw_dir / GENKI_LABELS_FILE
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; run stage smiles_download --dataset genki4k") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not ASCII text ({error})") from None
    labels = parse_genki_labels(text, str(path), expected_rows=None)
    if not labels:
        raise DataError(f"{path}: no label rows; rerun stage smiles_download --dataset genki4k")
    return labels


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the crop_faces stage."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.crop_faces",
        description="Crop the face out of every GENKI-4K image with the trained detector.",
    )
    add_params_arguments(parser)
    parser.add_argument("--raw", type=Path, required=True, help="GENKI-4K folder with files/ and labels.txt")
    parser.add_argument("--detector", type=Path, required=True, help="trained detector folder (weights.h5, model.json)")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write crops/ and crops.csv into; replaced if it exists"
    )
    return parser


def run(args: argparse.Namespace) -> None:
    """Run the crop_faces stage with parsed command-line arguments."""
    params = load_params(args.params, args.profile)["smiles"]
    labels = read_labels(args.raw)
    keep = select_spread([label.smile for label in labels], params["max_samples"], params["folds"])
    labels = [labels[index] for index in keep]
    detector = load_detector(args.detector)

    started = time.perf_counter()
    with atomic_directory(args.out) as staging:
        rows = crop_images(args.raw, labels, detector, params["crop"], staging, args.out)
        (staging / CROPS_FILE).write_text(crops_csv_text(rows), encoding="utf-8")
    seconds = time.perf_counter() - started
    logger.info("%s", describe_scores(rows))
    logger.info(
        "cropped %d images into %s in %.0f s (%.1f ms per image)",
        len(rows), args.out, seconds, 1000 * seconds / len(rows),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the crop_faces stage; return 0 on success and 1 on a known error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_stage(run, args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
