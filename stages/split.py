"""Stage split: assign the annotated images to cross-validation folds grouped by person.

Each image gets its person (its group) from one of two inputs:

- ``--groups``: the ``groups.csv`` that the convert stage writes beside the annotation CSV, with
  the header ``image,group`` (a person per image) or ``image,fold`` (folds that the dataset
  defines itself, as FDDB does). ``image`` is the path exactly as in the annotation CSV.
- ``--persons``: a CSV of inclusive image-number ranges for Caltech file names
  (``stages/resources/caltech_persons.csv``, columns ``person,first_image,last_image``).

With ``image,fold`` every fold of the file becomes one fold of the split, in the order of the
fold values (numeric when all are integers), and ``split.folds`` must equal their number.
Otherwise scikit-learn's ``GroupKFold(n_splits=split.folds, shuffle=True, random_state=split.seed)``
assigns whole persons to folds. With ``shuffle=True`` it permutes the persons and cuts
them into parts of nearly equal person count, not image count, so the number of test
images differs between folds. No person, and no image, is ever in both the training and
the test part of one fold, and every image is in the test part of exactly one fold.

Outputs, written to a staging folder that then replaces ``--out``:

- ``folds.csv``: ``image,person,fold,path``, one row per image, ``path`` relative to ``--out``.
  ``image`` is the name that the evaluation outputs give the image: its file name when all file
  names of the dataset differ (Caltech), else its path below the deepest folder that contains
  all images (``2002/08/11/big/img_591.jpg``), because FDDB, for example, reuses file names
  such as ``img_591.jpg`` in several folders;
- ``fold{k}/train.csv`` and ``fold{k}/test.csv`` for k = 0 .. folds - 1: the keras-retinanet
  annotation rows of the training and test images, with each path rewritten relative to
  ``fold{k}/``. All rows of one image stay together, including the ``path,,,,,`` row of an
  image without faces.

Command line::

    python -m stages.split --params params.yaml [--profile P] \\
        --annotations data/interim/annotations.csv \\
        (--groups data/interim/groups.csv | --persons stages/resources/caltech_persons.csv) \\
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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
from sklearn.model_selection import GroupKFold
from tqdm import tqdm

from stages.atomic import atomic_directory
from stages.cli import run_stage
from stages.errors import DataError
from stages.importers import ImageEntry, read_utf8
from stages.params import add_params_arguments, load_params

logger = logging.getLogger(__name__)

PERSONS_HEADER = ["person", "first_image", "last_image"]
FOLDS_HEADER = ["image", "person", "fold", "path"]
GROUPS_HEADER = ["image", "group"]
# The header of a groups.csv whose groups are the dataset's own folds (FDDB).
PREDEFINED_FOLDS_HEADER = ["image", "fold"]
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
    if not any(value.strip() for value in row[1:]):
        return  # path,,,,, lists an image without faces
    for column, value in zip(COORDINATE_COLUMNS, row[1:5]):
        try:
            int(value)
        except ValueError:
            raise DataError(f"{where}: {column} is {value!r}, expected an integer pixel coordinate") from None
    if not row[5].strip():
        raise DataError(f"{where}: class_name is empty")


def parse_annotations(text: str, source: str) -> dict[str, list[list[str]]]:
    """Group the rows of a keras-retinanet annotation CSV by image path, in file order.

    An image may have several rows, one per face, and they stay together. A row ``path,,,,,``
    lists an image without faces.
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


@dataclass(frozen=True)
class Groups:
    """The group of every image path in a groups.csv, and whether the groups are the dataset's own folds."""

    group_of_image: dict[str, str]
    predefined_folds: bool


def parse_groups(text: str, source: str) -> Groups:
    """Parse a groups.csv with the header ``image,group`` or ``image,fold`` (see the module docstring).

    Raises DataError naming ``source``, the line and the value for a wrong header, a row without
    two fields, a missing image or group, an image listed twice, or a file without rows.
    """
    rows = list(csv.reader(io.StringIO(text)))
    headers = (GROUPS_HEADER, PREDEFINED_FOLDS_HEADER)
    if not rows or rows[0] not in headers:
        found = rows[0] if rows else "an empty file"
        raise DataError(f"{source} line 1: expected the header image,group or image,fold, found {found}")

    group_of_image: dict[str, str] = {}
    line_of_image: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        where = f"{source} line {line}"
        if not row:
            continue
        if len(row) != 2:
            raise DataError(f"{where}: expected 2 fields image,group, found {len(row)}: {row}")
        image, group = row[0], row[1].strip()
        if not image or not group:
            raise DataError(f"{where}: missing image or group in {row}; every row needs both")
        if image in group_of_image:
            raise DataError(f"{where}: image {image!r} already listed on line {line_of_image[image]}")
        group_of_image[image] = group
        line_of_image[image] = line
    if not group_of_image:
        raise DataError(f"{source}: no images listed")
    return Groups(group_of_image, rows[0] == PREDEFINED_FOLDS_HEADER)


def assign_groups(paths: Sequence[str], groups: Groups, source: str) -> list[int] | list[str]:
    """Return the group of each image path, as integers when every group is an integer.

    Integer groups keep the fold assignment of the person CSV, because GroupKFold orders the
    distinct groups by value. Raises DataError naming the images that ``source`` does not list.
    """
    missing = [path for path in paths if path not in groups.group_of_image]
    if missing:
        examples = ", ".join(repr(path) for path in missing[:3])
        raise DataError(
            f"{source}: no group for {len(missing)} images of the annotations (for example {examples}); "
            "rerun the convert stage, which writes both files"
        )
    values = [groups.group_of_image[path] for path in paths]
    if all(_is_integer(value) for value in values):
        return [int(value) for value in values]
    return values


def _is_integer(text: str) -> bool:
    return text.removeprefix("-").isdigit()


def predefined_folds(fold_names: Sequence[int] | Sequence[str], folds: int, source: str) -> list[int]:
    """Return the fold index (0 .. folds - 1) of each image whose dataset defines its own folds.

    The distinct fold names are sorted and numbered from 0. Raises DataError when their count
    differs from ``folds`` (split.folds), because the dataset's folds are kept as they are.
    """
    distinct = sorted(set(fold_names))
    if len(distinct) != folds:
        listed = ", ".join(map(str, distinct))
        raise DataError(
            f"{source}: the dataset defines {len(distinct)} folds ({listed}) but split.folds = {folds}; "
            f"set split.folds to {len(distinct)}, because the dataset's own folds are kept"
        )
    index = {name: position for position, name in enumerate(distinct)}
    return [index[name] for name in fold_names]


def image_names(paths: Sequence[str], source: str = "annotations") -> list[str]:
    """Return the unique name of each image path for the ``image`` column of folds.csv.

    The names are the file names when no two paths share one. Otherwise every image is named
    by its path with "/" separators, relative to the deepest folder that contains all images,
    so that one dataset never mixes both kinds of name. Raises DataError naming ``source`` when
    two paths differ only in their separators or "." and ".." parts, because they name one file.
    """
    normalized = [_normalize_image_key(path) for path in paths]
    first_path: dict[str, str] = {}
    for path, key in zip(paths, normalized):
        if key in first_path:
            raise DataError(f"{source}: images {first_path[key]!r} and {path!r} are the same file {key}; list it once")
        first_path[key] = path
    file_names = [PurePosixPath(key).name for key in normalized]
    if len(set(file_names)) == len(file_names):
        return file_names
    try:
        common = os.path.commonpath(normalized)
    except ValueError:  # absolute and relative paths mixed: no common folder
        return normalized
    if not common:
        return normalized
    return [PurePosixPath(key).relative_to(common).as_posix() for key in normalized]


def _normalize_image_key(text: str) -> str:
    # The same normalization as the keys of stages.importers: "/" separators, no "." or "..".
    return Path(os.path.normpath(text.replace("\\", "/"))).as_posix()


def dataset_groups(
    images: Sequence[ImageEntry], data_format: str, persons_csv: Path | None, groups_csv: Path | None
) -> Groups:
    """Return the group of each image of a converted dataset, keyed by ``ImageEntry.key``.

    - caltech: the person, from the person-range CSV ``persons_csv``.
    - fddb: the FDDB fold, because FDDB defines its own folds.
    - csv and voc: the group from ``groups_csv``, whose header is ``image,group`` (or
      ``image,fold`` for the user's own folds) and whose image paths are as in the annotations.
      Without ``groups_csv`` every image is its own group.
    """
    keys = [image.key for image in images]
    if data_format == "caltech":
        if persons_csv is None:
            raise DataError("the caltech format needs the person CSV (--persons) to group images by person")
        ranges = parse_persons(_read_text(persons_csv), str(persons_csv))
        persons = assign_persons(keys, ranges, str(persons_csv))
        return Groups({key: str(person) for key, person in zip(keys, persons)}, predefined_folds=False)
    if data_format == "fddb":
        return Groups({image.key: str(image.group) for image in images}, predefined_folds=True)
    if groups_csv is None:
        return Groups({key: key for key in keys}, predefined_folds=False)

    listed = parse_groups(_read_text(groups_csv), str(groups_csv))
    by_key: dict[str, str] = {}
    spelling: dict[str, str] = {}
    for image, group in listed.group_of_image.items():
        key = _normalize_image_key(image)
        if key in by_key:
            raise DataError(
                f"{groups_csv}: images {spelling[key]!r} and {image!r} are the same file {key}, so list it once"
            )
        by_key[key] = group
        spelling[key] = image
    missing = [key for key in keys if key not in by_key]
    if missing:
        examples = ", ".join(repr(key) for key in missing[:3])
        raise DataError(
            f"{groups_csv}: no group for {len(missing)} of {len(keys)} images (for example {examples}); "
            "list every image with its path as in the annotations"
        )
    unused = len(by_key) - len(keys)
    if unused:
        logger.info("%s: %d listed images are not in the converted dataset and are ignored", groups_csv, unused)
    return Groups({key: by_key[key] for key in keys}, listed.predefined_folds)


def format_groups_csv(images: Sequence[ImageEntry], groups: Groups, csv_dir: Path) -> str:
    """Format groups.csv for ``images``: each path written as the annotation CSV in ``csv_dir`` writes it."""
    header = PREDEFINED_FOLDS_HEADER if groups.predefined_folds else GROUPS_HEADER
    rows: list[list[str]] = [header]
    for image in images:
        path = Path(os.path.relpath(image.path, csv_dir)).as_posix()
        rows.append([path, groups.group_of_image[image.key]])
    return _format_csv(rows)


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
    for path, name, person, fold in zip(paths, image_names(paths), persons, folds):
        fold_table.append([name, person, fold, rebase_path(path, annotations_dir, out_dir)])
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
    # read_utf8 drops a byte order mark, which would otherwise become part of the first path or header.
    try:
        return read_utf8(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read the file: {error.strerror or error}") from None


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the split stage."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.split",
        description="Assign annotated images to cross-validation folds grouped by person.",
    )
    add_params_arguments(parser)
    parser.add_argument("--annotations", type=Path, required=True, help="keras-retinanet annotation CSV of all images")
    grouping = parser.add_mutually_exclusive_group(required=True)
    grouping.add_argument(
        "--groups", type=Path,
        help="groups.csv of the convert stage: image,group (a person per image) or image,fold (the dataset's folds)",
    )
    grouping.add_argument(
        "--persons", type=Path, help="CSV of person,first_image,last_image image-number ranges (Caltech file names)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write folds.csv and fold{k}/ into; replaced if it exists"
    )
    return parser


def group_and_fold(paths: Sequence[str], args: argparse.Namespace, params: dict) -> tuple[list, list[int]]:
    """Return the person (group) and the test fold of each image path, from --persons or --groups."""
    if args.persons is not None:
        ranges = parse_persons(_read_text(args.persons), str(args.persons))
        persons = assign_persons(paths, ranges, str(args.persons))
        return persons, assign_folds(persons, params["folds"], params["seed"], str(args.annotations))

    groups = parse_groups(_read_text(args.groups), str(args.groups))
    persons = assign_groups(paths, groups, str(args.groups))
    if groups.predefined_folds:
        return persons, predefined_folds(persons, params["folds"], str(args.groups))
    return persons, assign_folds(persons, params["folds"], params["seed"], str(args.annotations))


def run(args: argparse.Namespace) -> None:
    """Run the split stage with parsed command-line arguments."""
    params = load_params(args.params, args.profile)["split"]
    rows_by_image = parse_annotations(_read_text(args.annotations), str(args.annotations))
    paths = list(rows_by_image)
    image_names(paths, str(args.annotations))
    file_names = Counter(PurePosixPath(_normalize_image_key(path)).name for path in paths)
    repeated = sum(count for count in file_names.values() if count > 1)
    if repeated:
        logger.info(
            "%s: %d images share their file name with another image, so folds.csv names each image by its path",
            args.annotations, repeated,
        )  # fmt: skip

    persons, folds = group_and_fold(paths, args, params)
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
