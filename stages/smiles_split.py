"""Stage smiles_split: deduplicate the smile datasets and assign stratified cross-validation folds.

Inputs:

- GENKI-4K: ``crops.csv`` of stage crop_faces. Each row names the face crop (``path``) and the
  original image (``source``), both relative to the CSV's folder.
- SMILEsmileD: the raw folder of stage smiles_download, read directly because its images are
  already 64 x 64 face crops and need no detector. ``positives7/`` is label 1 (smiling) and
  ``negatives7/`` label 0. File names repeat across the two folders with different content
  (``12525.jpg``, ``5837.jpg``), so a sample is keyed by folder and name: ``positives7/12525``.

Deduplication: every sample gets the SHA-256 of its ORIGINAL image's decoded pixels (see
``pixel_digest``), so copies that differ only in encoding or metadata count as one image. For
GENKI-4K the raw image is hashed, not the crop, so the detector cannot hide or create a
duplicate. Samples with equal digests form a group:

- a group whose samples all carry one label keeps its first sample (in input order) and drops
  the others as duplicates;
- a group whose samples carry different labels is dropped entirely, because no label can be
  trusted. SMILEsmileD has five such images (``3308``, ``5``, ``10249``, ``2422``, ``29``, each
  in both folders), so ten samples go.

NOTE: only exact pixel copies are found. A copy that was re-compressed as JPEG, resized or
cropped decodes to other pixels and stays in the data as a separate sample.

Folds: ``smiles.max_samples`` (smoke profile) first keeps that many deduplicated samples spread
evenly over each class in input order (see ``select_spread``). scikit-learn's
``StratifiedKFold(n_splits=smiles.folds, shuffle=True, random_state=smiles.seed)`` then assigns
each sample to one test fold, so every fold has nearly the class shares of the whole set.
Since duplicates are gone, no image is in the training and the test part of one fold.
SMILEsmileD ships no identity labels and its crops come from Labeled Faces in the Wild, where
many persons appear several times, so one person can still be in both parts of a fold.

Outputs:

- ``<out>/<dataset>/samples.csv`` for each dataset, written as one folder that replaces
  ``--out``. Columns: ``sample,path,label,fold,digest`` (``path`` relative to the CSV's
  folder), and for GENKI-4K also ``face_found,face_score``.
- ``--summary`` (JSON): per dataset the samples read, class counts before and after, removed
  duplicates and dropped conflicting samples (listed), per-fold test class counts, and for
  GENKI-4K the face-found rate of crops.csv.

Command line::

    python -m stages.smiles_split --params params.yaml [--profile P] \\
        --genki4k data/smiles/genki4k-crops/crops.csv --smilesmiled data/raw/smilesmiled \\
        --out data/smiles/splits --summary reports/metrics/smiles_data.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from sklearn.model_selection import StratifiedKFold
from tqdm import tqdm

from stages.atomic import atomic_directory, write_text_atomic
from stages.cli import run_stage
from stages.errors import DataError
from stages.params import ParamsError, add_params_arguments, load_params

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.csv"
SAMPLES_HEADER = ["sample", "path", "label", "fold", "digest"]
GENKI_EXTRA_COLUMNS = ["face_found", "face_score"]
# Columns of crops.csv that this stage reads; stage crop_faces writes them (and more).
CROPS_REQUIRED_COLUMNS = ("sample", "path", "label", "face_found", "face_score", "source")
SMILES_CLASS_FOLDERS = {"positives7": 1, "negatives7": 0}
IDENTITY_NOTE = (
    "SMILEsmileD ships no identity labels and its crops come from Labeled Faces in the Wild, where many persons "
    "appear several times, so a person can be in the training and the test part of one fold; held-out scores may "
    "be optimistic."
)


@dataclass
class Sample:
    """One labelled image: ``path`` is used for training, ``source`` (the original image) for the digest.

    Both paths are absolute or relative to the working directory. ``extra`` contains
    dataset-specific output columns.
    """

    sample: str
    label: int
    path: Path
    source: Path
    extra: dict[str, str] = field(default_factory=dict)
    digest: str = ""


def pixel_digest(image: np.ndarray) -> str:
    """Return the SHA-256 of a decoded image's shape, dtype and pixel bytes (row-major)."""
    digest = hashlib.sha256()
    digest.update(f"{image.shape}|{image.dtype.str}|".encode("ascii"))
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def image_digest(path: Path) -> str:
    """Decode ``path`` as stored (no colour conversion, no EXIF rotation) and return its ``pixel_digest``."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: cannot decode image (missing, unreadable or not an image)")
    return pixel_digest(image)


def read_genki_crops(csv_path: Path) -> tuple[list[Sample], dict]:
    """Read crops.csv of stage crop_faces into samples; return them and the face-found statistics.

    Raises DataError naming the file, the line and the value. The checks cover the encoding
    (UTF-8 CSV), missing columns, rows with fewer fields than the header, an empty sample, path
    or source, labels and face_found values other than 0 or 1, and repeated samples.
    """
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{csv_path}: file not found; run stage crop_faces first") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{csv_path}: not UTF-8 text ({error})") from None
    reader = csv.DictReader(io.StringIO(text))
    try:
        rows = list(reader)
    except csv.Error as error:
        raise DataError(f"{csv_path} line {reader.line_num}: invalid CSV ({error})") from None
    missing = [column for column in CROPS_REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{csv_path} line 1: missing columns {', '.join(missing)}; found {reader.fieldnames}")

    # DictReader skips blank lines, so the line of each row is taken from a second pass.
    line_numbers = _row_line_numbers(text)
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    folder = csv_path.parent
    for line, row in zip(line_numbers, rows):
        where = f"{csv_path} line {line}"
        absent = [column for column in CROPS_REQUIRED_COLUMNS if row[column] is None]
        if absent:
            present = sum(1 for column in reader.fieldnames if row.get(column) is not None)
            raise DataError(f"{where}: the row has {present} fields but the header {len(reader.fieldnames)}; "
                            f"no value for {', '.join(absent)}")
        for column in ("sample", "path", "source"):
            if not row[column].strip() or "\0" in row[column]:
                raise DataError(f"{where}: {column} is {row[column]!r}, expected a non-empty value without NUL")
        for column in ("label", "face_found"):
            if row[column] not in ("0", "1"):
                raise DataError(f"{where}: {column} is {row[column]!r}, expected 0 or 1")
        if row["sample"] in seen:
            raise DataError(f"{where}: sample {row['sample']!r} already on line {seen[row['sample']]}")
        seen[row["sample"]] = line
        samples.append(
            Sample(
                sample=row["sample"],
                label=int(row["label"]),
                path=folder / row["path"],
                source=folder / row["source"],
                extra={"face_found": row["face_found"], "face_score": row["face_score"]},
            )
        )
    if not samples:
        raise DataError(f"{csv_path}: no rows")
    found = sum(1 for sample in samples if sample.extra["face_found"] == "1")
    faces = {"face_found": found, "face_not_found": len(samples) - found, "face_found_rate": found / len(samples)}
    return samples, faces


def _row_line_numbers(text: str) -> list[int]:
    # The line on which each data row of a CSV text starts, as csv.reader counts lines.
    reader = csv.reader(io.StringIO(text))
    next(reader, None)
    numbers = []
    while True:
        line = reader.line_num + 1
        row = next(reader, None)
        if row is None:
            return numbers
        if row:
            numbers.append(line)


def read_smilesmiled(raw_dir: Path) -> list[Sample]:
    """List SMILEsmileD's images as samples keyed ``<folder>/<stem>``, positives first, each folder by name."""
    samples = []
    for folder, label in SMILES_CLASS_FOLDERS.items():
        class_dir = raw_dir / folder
        if not class_dir.is_dir():
            raise DataError(f"{class_dir}: folder not found; run stage smiles_download --dataset smilesmiled")
        for path in sorted(class_dir.glob("*.jpg")):
            samples.append(Sample(sample=f"{folder}/{path.stem}", label=label, path=path, source=path))
    if not samples:
        raise DataError(f"{raw_dir}: no images in {' or '.join(SMILES_CLASS_FOLDERS)}")
    return samples


def add_digests(samples: Sequence[Sample], dataset: str) -> list[Sample]:
    """Return the samples with ``digest`` set from their source images."""
    return [
        replace(sample, digest=image_digest(sample.source))
        for sample in tqdm(samples, desc=f"hash {dataset} images", unit="image")
    ]


@dataclass
class Deduplication:
    """Samples kept after deduplication, and what was removed and why."""

    kept: list[Sample]
    # Each entry: the kept sample and the samples dropped as its copies.
    duplicates: list[dict]
    # Each entry: the samples of one image that carry different labels, with their labels.
    conflicts: list[dict]

    @property
    def duplicates_removed(self) -> int:
        """Number of samples dropped as copies of a kept sample."""
        return sum(len(group["removed"]) for group in self.duplicates)

    @property
    def conflicting_samples_dropped(self) -> list[str]:
        """Sample ids dropped because copies of their image carry different labels."""
        return [sample for group in self.conflicts for sample in group["samples"]]


def deduplicate(samples: Sequence[Sample]) -> Deduplication:
    """Group samples by digest, keep the first of each single-label group and drop mixed-label groups."""
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.digest, []).append(sample)
    dropped: set[str] = set()
    duplicates, conflicts = [], []
    for digest, members in groups.items():
        if len(members) == 1:
            continue
        labels = {member.label for member in members}
        if len(labels) > 1:
            conflicts.append(
                {"digest": digest, "samples": [m.sample for m in members], "labels": [m.label for m in members]}
            )
            dropped.update(member.sample for member in members)
        else:
            duplicates.append({"digest": digest, "kept": members[0].sample, "removed": [m.sample for m in members[1:]]})
            dropped.update(member.sample for member in members[1:])
    kept = [sample for sample in samples if sample.sample not in dropped]
    return Deduplication(kept, duplicates, conflicts)


def select_spread(labels: Sequence[int], max_samples: int | None, min_per_class: int) -> list[int]:
    """Return the indices of at most ``max_samples`` samples spread evenly over each class, in input order.

    Each class gets a share of ``max_samples`` proportional to its size, but at least
    ``min_per_class`` (so that stratified folds can be built) and at most its size. Within a
    class the kept samples are evenly spaced in input order. ``max_samples`` None keeps all.
    Raises ParamsError when ``max_samples`` cannot give every class ``min_per_class`` samples.
    """
    indices_by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        indices_by_class.setdefault(label, []).append(index)
    if max_samples is None or max_samples >= len(labels):
        return list(range(len(labels)))
    if max_samples < min_per_class * len(indices_by_class):
        raise ParamsError(
            f"smiles.max_samples is {max_samples}, but {len(indices_by_class)} classes need at least "
            f"{min_per_class} samples each (smiles.folds); raise smiles.max_samples to at least "
            f"{min_per_class * len(indices_by_class)}"
        )
    classes = sorted(indices_by_class, key=lambda label: len(indices_by_class[label]))
    quotas = {}
    for label in classes:
        size = len(indices_by_class[label])
        quotas[label] = min(size, max(min_per_class, round(max_samples * size / len(labels))))
    # Rounded shares may miss max_samples by one or two, so the largest class takes up the difference.
    largest = classes[-1]
    others = sum(quota for label, quota in quotas.items() if label != largest)
    quotas[largest] = min(len(indices_by_class[largest]), max_samples - others)
    chosen = []
    for label, quota in quotas.items():
        members = indices_by_class[label]
        positions = np.unique(np.linspace(0, len(members) - 1, quota).round().astype(int))
        chosen.extend(members[position] for position in positions)
    return sorted(chosen)


def assign_folds(labels: Sequence[int], folds: int, seed: int, source: str) -> list[int]:
    """Return the stratified test fold (0 .. folds - 1) of each sample.

    Raises DataError naming ``source`` when a class has fewer samples than folds.
    """
    counts = {label: list(labels).count(label) for label in sorted(set(labels))}
    if len(counts) < 2 or min(counts.values()) < folds:
        raise DataError(
            f"{source}: class counts {counts} after deduplication; every one of the classes 0 and 1 needs at least "
            f"smiles.folds = {folds} samples"
        )
    fold_of_sample = np.full(len(labels), -1, dtype=int)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, test_indices) in enumerate(splitter.split(np.zeros((len(labels), 1)), np.asarray(labels))):
        fold_of_sample[test_indices] = fold
    return fold_of_sample.tolist()


def class_counts(labels: Sequence[int]) -> dict[str, int]:
    """Count samples per label, keyed "0" and "1"."""
    return {str(label): sum(1 for value in labels if value == label) for label in (0, 1)}


def samples_csv_text(
    samples: Sequence[Sample], folds: Sequence[int], csv_dir: Path, extra_columns: Sequence[str]
) -> str:
    """Format samples.csv with each ``path`` rewritten relative to ``csv_dir``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*SAMPLES_HEADER, *extra_columns])
    for sample, fold in zip(samples, folds):
        relative = Path(os.path.relpath(sample.path, csv_dir)).as_posix()
        extras = [sample.extra[column] for column in extra_columns]
        writer.writerow([sample.sample, relative, sample.label, fold, sample.digest, *extras])
    return buffer.getvalue()


def split_dataset(
    samples: Sequence[Sample], params: dict, dataset: str, source: str
) -> tuple[list[Sample], list[int], dict]:
    """Deduplicate, subsample and fold one dataset; return the kept samples, their folds and a summary.

    ``source`` names the input in errors.
    """
    dedup = deduplicate(samples)
    keep = select_spread([sample.label for sample in dedup.kept], params["max_samples"], params["folds"])
    kept = [dedup.kept[index] for index in keep]
    labels = [sample.label for sample in kept]
    folds = assign_folds(labels, params["folds"], params["seed"], source)
    per_fold = {
        str(fold): class_counts([label for label, sample_fold in zip(labels, folds) if sample_fold == fold])
        for fold in range(params["folds"])
    }
    summary = {
        "samples_read": len(samples),
        "class_counts_read": class_counts([sample.label for sample in samples]),
        "duplicates_removed": dedup.duplicates_removed,
        "duplicate_groups": dedup.duplicates,
        "conflicting_label_samples_dropped": len(dedup.conflicting_samples_dropped),
        "conflicting_label_groups": dedup.conflicts,
        "samples_after_deduplication": len(dedup.kept),
        "max_samples": params["max_samples"],
        "samples": len(kept),
        "class_counts": class_counts(labels),
        "folds": params["folds"],
        "seed": params["seed"],
        "test_class_counts_per_fold": per_fold,
    }
    logger.info(
        "%s: %d samples read, %d duplicates removed, %d conflicting-label samples dropped, %d kept (%s)",
        dataset,
        len(samples),
        dedup.duplicates_removed,
        len(dedup.conflicting_samples_dropped),
        len(kept),
        ", ".join(f"label {label}: {count}" for label, count in summary["class_counts"].items()),
    )
    return kept, folds, summary


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the smiles_split stage."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.smiles_split",
        description="Deduplicate GENKI-4K crops and SMILEsmileD by pixel digest and assign stratified folds.",
    )
    add_params_arguments(parser)
    parser.add_argument("--genki4k", type=Path, required=True, help="crops.csv of stage crop_faces")
    parser.add_argument(
        "--smilesmiled", type=Path, required=True, help="raw SMILEsmileD folder with positives7/ and negatives7/"
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write <dataset>/samples.csv into; replaced if it exists"
    )
    parser.add_argument("--summary", type=Path, required=True, help="JSON file for the data summary")
    return parser


def run(args: argparse.Namespace) -> None:
    """Run the smiles_split stage with parsed command-line arguments."""
    params = load_params(args.params, args.profile)["smiles"]
    genki_samples, faces = read_genki_crops(args.genki4k)
    inputs = {
        "genki4k": (genki_samples, str(args.genki4k), GENKI_EXTRA_COLUMNS),
        "smilesmiled": (read_smilesmiled(args.smilesmiled), str(args.smilesmiled), []),
    }
    summary: dict[str, dict] = {}
    texts: dict[str, str] = {}
    for dataset, (samples, source, extra_columns) in inputs.items():
        kept, folds, summary[dataset] = split_dataset(add_digests(samples, dataset), params, dataset, source)
        texts[dataset] = samples_csv_text(kept, folds, args.out / dataset, extra_columns)
    summary["genki4k"].update(faces)
    summary["smilesmiled"]["note"] = IDENTITY_NOTE

    with atomic_directory(args.out) as staging:
        for dataset, text in texts.items():
            (staging / dataset).mkdir()
            (staging / dataset / SAMPLES_FILE).write_text(text, encoding="utf-8")
    write_text_atomic(args.summary, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    logger.info("wrote %s and %s", args.out, args.summary)


def main(argv: list[str] | None = None) -> int:
    """Run the smiles_split stage; return 0 on success and 1 on a known error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_stage(run, args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
