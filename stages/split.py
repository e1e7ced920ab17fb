"""Stage split: assign the annotated images to cross-validation folds grouped by person.

Each image gets its person from a CSV of inclusive image-number ranges
(``stages/resources/caltech_persons.csv``, columns ``person,first_image,last_image``).
scikit-learn's ``GroupKFold(n_splits=split.folds, shuffle=True, random_state=split.seed)``
then assigns whole persons to folds. With ``shuffle=True`` it permutes the persons and cuts
them into parts of nearly equal person count, not image count, so the number of test
images differs between folds. No person, and no image, is ever in both the training and
the test part of one fold, and every image is in the test part of exactly one fold.

Outputs, written to a staging folder that then replaces ``--out``:

- ``folds.csv``: ``image,person,fold,path``, one row per image, ``path`` relative to ``--out``;
- ``fold{k}/train.csv`` and ``fold{k}/test.csv`` for k = 0 .. folds - 1: the keras-retinanet
  annotation rows of the training and test images, with each path rewritten relative to
  ``fold{k}/``. All rows of one image stay together.

Command line::

    python -m stages.split --params params.yaml [--profile P] \\
        --annotations data/interim/annotations.csv --persons stages/resources/caltech_persons.csv \\
        --out data/splits
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
from sklearn.model_selection import GroupKFold
from tqdm import tqdm

from stages.atomic import atomic_directory
from stages.cli import run_stage
from stages.errors import DataError
from stages.params import add_params_arguments, load_params

logger = logging.getLogger(__name__)

PERSONS_HEADER = ["person", "first_image", "last_image"]
FOLDS_HEADER = ["image", "person", "fold", "path"]
ANNOTATION_FIELDS = 6
COORDINATE_COLUMNS = ("x1", "y1", "x2", "y2")
IMAGE_NUMBER = re.compile(r"image_(\d+)\.jpg")
FOLDS_FILE = "folds.csv"


@dataclass(frozen=True)
class PersonRange:
    """The images first_image .. last_image (inclusive, 1-based numbers) show one person."""

    person: int
    first_image: int
    last_image: int
    line: int


def _parse_positive_int(value: str, where: str, column: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise DataError(f"{where}: {column} is {value!r}, expected a positive integer") from None
    if number < 1:
        raise DataError(f"{where}: {column} is {number}, expected a positive integer")
    return number


def parse_persons(text: str, source: str) -> list[PersonRange]:
    """Parse the person CSV (header ``person,first_image,last_image``) into ranges.

    Raises DataError naming ``source``, the line and the value for a wrong header, a
    non-integer or non-positive field, first_image > last_image, a repeated person or
    overlapping ranges.
    """
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0] != PERSONS_HEADER:
        found = rows[0] if rows else "an empty file"
        raise DataError(f"{source} line 1: expected the header {','.join(PERSONS_HEADER)}, found {found}")

    ranges: list[PersonRange] = []
    for line, row in enumerate(rows[1:], start=2):
        where = f"{source} line {line}"
        if len(row) != len(PERSONS_HEADER):
            raise DataError(f"{where}: expected {len(PERSONS_HEADER)} fields, found {len(row)}: {row}")
        person, first, last = (_parse_positive_int(value, where, column) for value, column in zip(row, PERSONS_HEADER))
        if first > last:
            raise DataError(f"{where}: first_image {first} is after last_image {last}")
        ranges.append(PersonRange(person, first, last, line))

    seen_persons: dict[int, int] = {}
    for entry in ranges:
        if entry.person in seen_persons:
            first_line = seen_persons[entry.person]
            raise DataError(f"{source} line {entry.line}: person {entry.person} already defined on line {first_line}")
        seen_persons[entry.person] = entry.line
    ordered = sorted(ranges, key=lambda entry: entry.first_image)
    for previous, current in zip(ordered, ordered[1:]):
        if current.first_image <= previous.last_image:
            raise DataError(
                f"{source} line {current.line}: images {current.first_image}-{current.last_image} of person "
                f"{current.person} overlap images {previous.first_image}-{previous.last_image} of person "
                f"{previous.person} on line {previous.line}"
            )
    return ranges


def _check_annotation_row(row: Sequence[str], where: str) -> None:
    for column, value in zip(COORDINATE_COLUMNS, row[1:5]):
        try:
            int(value)
        except ValueError:
            raise DataError(f"{where}: {column} is {value!r}, expected an integer pixel coordinate") from None
    if not row[5].strip():
        raise DataError(f"{where}: class_name is empty")


def parse_annotations(text: str, source: str) -> dict[str, list[list[str]]]:
    """Group the rows of a keras-retinanet annotation CSV by image path, in file order.

    An image may have several rows, one per face, and they stay together.
    Raises DataError naming ``source`` and the line for a row without 6 fields, a coordinate
    that is not an integer (keras-retinanet reads them with ``int``) or an empty class name.
    """
    rows_by_image: dict[str, list[list[str]]] = {}
    for line, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if len(row) != ANNOTATION_FIELDS:
            raise DataError(
                f"{source} line {line}: expected {ANNOTATION_FIELDS} fields path,x1,y1,x2,y2,class_name, "
                f"found {len(row)}: {row}"
            )
        _check_annotation_row(row, f"{source} line {line}")
        rows_by_image.setdefault(row[0], []).append(row)
    if not rows_by_image:
        raise DataError(f"{source}: no annotation rows")
    return rows_by_image


def image_number(path: str) -> int:
    """Return the image number of a path such as ``../raw/image_0042.jpg`` (42)."""
    match = IMAGE_NUMBER.fullmatch(PurePosixPath(path).name)
    if match is None:
        raise DataError(f"image {path!r}: file name does not match image_NNNN.jpg, so its person is unknown")
    return int(match[1])


def assign_persons(paths: Sequence[str], ranges: Sequence[PersonRange], persons_source: str) -> list[int]:
    """Return the person of each image path; raise DataError naming an image in no range."""
    persons = []
    for path in paths:
        number = image_number(path)
        matches = [entry.person for entry in ranges if entry.first_image <= number <= entry.last_image]
        if not matches:
            raise DataError(f"image {path!r}: image number {number} is in no person range of {persons_source}")
        persons.append(matches[0])
    return persons


def assign_folds(persons: Sequence[int], folds: int, seed: int, source: str = "annotations") -> list[int]:
    """Return the test fold (0 .. folds - 1) of each image, given the person of each image.

    Raises DataError naming ``source`` when there are fewer distinct persons than folds.
    """
    distinct = len(set(persons))
    if distinct < folds:
        raise DataError(
            f"{source}: images of {distinct} persons, fewer than split.folds = {folds}; "
            "lower split.folds or add images of more persons"
        )
    fold_of_image = np.full(len(persons), -1, dtype=int)
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    placeholder = np.zeros((len(persons), 1))
    for fold, (_, test_indices) in enumerate(splitter.split(placeholder, groups=np.asarray(persons))):
        fold_of_image[test_indices] = fold
    return fold_of_image.tolist()


def rebase_path(path: str, from_dir: Path, to_dir: Path) -> str:
    """Rewrite ``path``, relative to ``from_dir``, to be relative to ``to_dir``.

    Both folders are taken relative to the same working directory. Absolute paths stay as they are.
    """
    if os.path.isabs(path):
        return path
    return Path(os.path.relpath(os.path.join(from_dir, path), to_dir)).as_posix()


def _format_csv(rows: Sequence[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(rows)
    return buffer.getvalue()


def build_split_files(
    rows_by_image: dict[str, list[list[str]]],
    persons: Sequence[int],
    folds: Sequence[int],
    annotations_dir: Path,
    out_dir: Path,
) -> dict[str, str]:
    """Return the contents of every output file, keyed by its path relative to ``out_dir``.

    ``persons`` and ``folds`` follow the order of ``rows_by_image``. Image paths in the
    annotations are relative to ``annotations_dir``.
    """
    paths = list(rows_by_image)
    fold_table = [FOLDS_HEADER]
    for path, person, fold in zip(paths, persons, folds):
        fold_table.append([PurePosixPath(path).name, person, fold, rebase_path(path, annotations_dir, out_dir)])
    files = {FOLDS_FILE: _format_csv(fold_table)}

    for fold in sorted(set(folds)):
        fold_name = f"fold{fold}"
        fold_dir = out_dir / fold_name
        parts: dict[str, list[list[str]]] = {"train": [], "test": []}
        for path, image_fold in zip(paths, folds):
            part = "test" if image_fold == fold else "train"
            for row in rows_by_image[path]:
                parts[part].append([rebase_path(path, annotations_dir, fold_dir), *row[1:]])
        for part, rows in parts.items():
            files[f"{fold_name}/{part}.csv"] = _format_csv(rows)
    return files


def describe_folds(persons: Sequence[int], folds: Sequence[int]) -> list[str]:
    """Return one log line per fold with its test images and persons."""
    lines = []
    for fold in sorted(set(folds)):
        test_persons = sorted({person for person, image_fold in zip(persons, folds) if image_fold == fold})
        test_images = sum(1 for image_fold in folds if image_fold == fold)
        lines.append(
            f"fold {fold}: {test_images} test images of {len(test_persons)} persons "
            f"({', '.join(map(str, test_persons))}), {len(folds) - test_images} training images"
        )
    return lines


def _read_text(path: Path) -> str:
    # utf-8-sig drops a byte order mark, which would otherwise become part of the first path or header.
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the split stage."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.split",
        description="Assign annotated images to cross-validation folds grouped by person.",
    )
    add_params_arguments(parser)
    parser.add_argument("--annotations", type=Path, required=True, help="keras-retinanet annotation CSV of all images")
    parser.add_argument(
        "--persons", type=Path, required=True, help="CSV of person,first_image,last_image image-number ranges"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write folds.csv and fold{k}/ into; replaced if it exists"
    )
    return parser


def run(args: argparse.Namespace) -> None:
    """Run the split stage with parsed command-line arguments."""
    params = load_params(args.params, args.profile)["split"]
    rows_by_image = parse_annotations(_read_text(args.annotations), str(args.annotations))
    ranges = parse_persons(_read_text(args.persons), str(args.persons))

    paths = list(rows_by_image)
    persons = assign_persons(paths, ranges, str(args.persons))
    folds = assign_folds(persons, params["folds"], params["seed"], str(args.annotations))
    files = build_split_files(rows_by_image, persons, folds, args.annotations.parent, args.out)

    with atomic_directory(args.out) as staging, tqdm(files.items(), desc="write splits", unit="file") as bar:
        for relative_path, text in bar:
            target = staging / relative_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")

    logger.info(
        "split %d images of %d persons into %d folds in %s (seed %d)",
        len(paths),
        len(set(persons)),
        params["folds"],
        args.out,
        params["seed"],
    )
    for line in describe_folds(persons, folds):
        logger.info("%s", line)


def main(argv: list[str] | None = None) -> int:
    """Run the split stage; return 0 on success and 1 on a known error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_stage(run, args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
