"""Train the happy / non-happy classifier, one model per cross-validation fold or one final model.

The input is a ``samples.csv`` of the split_smiles stage with the columns ``sample``, ``path``
(relative to the CSV's folder), ``label`` (1 = happy, 0 = not happy), ``fold`` (0 .. k-1) and
``digest`` (a hash of the decoded pixels); further columns are ignored.

- Without ``--final``, fold k trains on the rows whose fold is not k and is published as
  ``<out>/fold{k}/``; its per-epoch curve becomes ``<curves>/fold{k}-epochs.csv``.
- With ``--final``, one model trains on every row and is published as ``<out>/`` itself; its
  curve becomes ``<curves>/final-epochs.csv``.

A model folder contains ``weights.h5`` and ``model.json`` (see stages.classifier). Training saves a
checkpoint after every epoch under ``--checkpoints``, in a folder named by a hash of the
settings, the samples file, the training code and the backbone weights. Rerunning an
interrupted command therefore resumes after the last finished epoch, while a changed setting
starts afresh.

Command line::

    python -m stages.train_classifier --params params.yaml [--profile P] \\
        --samples data/smiles/splits/genki4k/samples.csv --out data/models/classifier/genki4k \\
        --curves reports/training/classifier/genki4k [--final] \\
        [--checkpoints data/checkpoints/classifier] [--mirror DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.atomic import atomic_directory, replace_path
from stages.cli import run_stage
from stages.download import MIRROR_ENV, file_digest, parse_sha256sums, resolve_mirror_root, verify_checksum
from stages.errors import DataError, TrainingError
from stages.params import add_params_arguments, load_params

log = logging.getLogger(__name__)

WEIGHTS_MIRROR_FOLDER = "keras-weights"
REQUIRED_COLUMNS = ("sample", "path", "label", "fold", "digest")


@dataclass(frozen=True)
class WeightsSource:
    """Download location of a backbone's ImageNet weights without the top, as keras.applications uses it."""

    filename: str
    url: str
    # MD5 that keras.applications passes to get_file, or None where it passes none.
    md5: str | None


# File names, addresses and hashes as in tf_keras 2.21 keras.applications mobilenet.py and vgg19.py.
IMAGENET_WEIGHTS = {
    "mobilenet_0.25": WeightsSource(
        "mobilenet_2_5_224_tf_no_top.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_2_5_224_tf_no_top.h5",
        None),
    "vgg19": WeightsSource(
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "253f8cb515780f3b799900260a226db6"),
}


def resolve_imagenet_weights(backbone: str, weights: str, mirror: Path | None) -> Path | None:
    """Return the ImageNet weights file for ``backbone``, or None when ``weights`` is 'none'.

    With a mirror that has the file, it comes from ``<mirror>/keras-weights/`` and must match
    that folder's SHA256SUMS. Otherwise Keras downloads it into its cache (~/.keras/models).
    A mirror may lack a file: the VGG19 weights (80 MB) are downloaded even when a mirror is set.
    """
    if weights == "none":
        return None
    if backbone not in IMAGENET_WEIGHTS:
        raise TrainingError(f"no ImageNet weights file is known for classifier backbone {backbone!r}")
    source = IMAGENET_WEIGHTS[backbone]
    if mirror is not None:
        folder = mirror / WEIGHTS_MIRROR_FOLDER
        path = folder / source.filename
        if path.is_file():
            return verified_mirror_file(path)
        log.info("%s: not in the mirror; downloading it from %s", path, source.url)
    return download_weights(backbone, source)


def verified_mirror_file(path: Path) -> Path:
    """Check ``path`` against the SHA256SUMS beside it and return it."""
    sums_path = path.parent / "SHA256SUMS"
    if not sums_path.is_file():
        raise TrainingError(f"{sums_path}: not found; the mirror must list the sha256 of {path.name}")
    expected = parse_sha256sums(sums_path.read_text(encoding="utf-8"), str(sums_path)).get(path.name)
    if expected is None:
        raise TrainingError(f"{sums_path}: no entry for {path.name}")
    verify_checksum(path, "sha256", expected, str(sums_path))
    return path


def download_weights(backbone: str, source: WeightsSource) -> Path:
    """Download ``source`` into the Keras cache through keras.utils.get_file and return its path."""
    from stages import kerascompat

    keras = kerascompat.keras()
    try:
        return Path(keras.utils.get_file(source.filename, source.url, cache_subdir="models", file_hash=source.md5))
    except Exception as error:  # get_file raises several network and hash error types
        raise TrainingError(
            f"downloading ImageNet weights for classifier backbone {backbone!r} from {source.url} failed "
            f"({error}); set {MIRROR_ENV} to a mirror folder with {WEIGHTS_MIRROR_FOLDER}/{source.filename} "
            "or set classifier.weights to none") from error


@dataclass(frozen=True)
class Samples:
    """The rows of a samples.csv: image paths (absolute), labels 0/1, folds and sample ids."""

    csv_path: Path
    ids: list[str]
    paths: list[Path]
    labels: np.ndarray
    folds: np.ndarray


def _parse_int(value: str, where: str, column: str, allowed: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: {column} is {value!r}, expected {allowed}") from None


def read_samples(csv_path: Path) -> Samples:
    """Read and check a samples.csv; paths are resolved against the CSV's folder.

    Raises DataError naming the file, the line and the value for a missing column, a label
    other than 0 or 1, a negative or non-integer fold, a repeated sample id or an empty file.
    Image files are checked when they are loaded.
    """
    try:
        handle = csv_path.open(newline="", encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{csv_path}: file not found; run the split_smiles stage first") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{csv_path} line 1: missing columns {', '.join(missing)} "
                            f"(found {', '.join(reader.fieldnames or []) or 'no header'})")
        ids, paths, labels, folds = [], [], [], []
        first_line = {}
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path} line {line}"
            sample = row["sample"]
            if sample in first_line:
                raise DataError(f"{where}: sample {sample!r} already appears on line {first_line[sample]}")
            first_line[sample] = line
            label = _parse_int(row["label"], where, "label", "0 or 1")
            if label not in (0, 1):
                raise DataError(f"{where}: label is {label}, expected 0 or 1")
            fold = _parse_int(row["fold"], where, "fold", "a fold number 0, 1, ...")
            if fold < 0:
                raise DataError(f"{where}: fold is {fold}, expected a fold number 0, 1, ...")
            if not row["path"]:
                raise DataError(f"{where}: path is empty")
            ids.append(sample)
            paths.append(csv_path.parent / row["path"])
            labels.append(label)
            folds.append(fold)
    if not ids:
        raise DataError(f"{csv_path}: no sample rows")
    return Samples(csv_path, ids, paths, np.array(labels, dtype=np.int64), np.array(folds, dtype=np.int64))


@dataclass(frozen=True)
class TrainingRun:
    """One model to train: its name (fold{k} or final), its training rows and its seed offset."""

    name: str
    rows: np.ndarray
    seed_offset: int


def plan_runs(samples: Samples, final: bool) -> list[TrainingRun]:
    """Return the runs: one per fold (training on the other folds), or one final run on all rows.

    Every run must see both classes, and fold mode needs at least two folds.
    """
    fold_numbers = sorted(set(samples.folds.tolist()))
    if final:
        # An offset no fold uses, so the final model's seed differs from every fold's.
        runs = [TrainingRun("final", np.arange(len(samples.ids)), len(fold_numbers))]
    else:
        if len(fold_numbers) < 2:
            raise DataError(f"{samples.csv_path}: only fold {fold_numbers[0]} is present; cross-validation "
                            "needs at least two folds (or use --final)")
        runs = [TrainingRun(f"fold{k}", np.flatnonzero(samples.folds != k), k) for k in fold_numbers]
    for run in runs:
        present = set(samples.labels[run.rows].tolist())
        if present != {0, 1}:
            raise DataError(f"{samples.csv_path}: the training rows of {run.name} contain only label "
                            f"{present.pop()}; both classes are needed")
    return runs


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float]:
    """Return the loss weight of label 0 and 1.

    ``balanced`` weights class c by total / (2 x count of c), as scikit-learn's
    compute_class_weight('balanced') does, so both classes add the same total weight.
    ``none`` weights every sample 1.
    """
    if mode == "none":
        return {0: 1.0, 1: 1.0}
    if mode != "balanced":
        raise TrainingError(f"classifier.class_weight is {mode!r}; expected balanced or none")
    counts = np.bincount(labels, minlength=2)
    if np.any(counts == 0):
        raise TrainingError(f"class counts are {counts.tolist()}; balanced class weights need both classes")
    return {label: float(len(labels) / (2.0 * counts[label])) for label in (0, 1)}


def run_epochs(params: dict, training_images: int) -> int:
    """Return the epochs of a run on ``training_images`` images.

    ``epochs``, unless ``max_training_images`` (images shown over all epochs) allows fewer:
    then the run trains max_training_images // training_images epochs, and at least one.
    A dataset three times as large thus trains about a third of the epochs.
    """
    cap = params.get("max_training_images")
    if cap is None:
        return params["epochs"]
    return max(1, min(params["epochs"], cap // training_images))


# Source files whose changes make earlier checkpoints unusable.
TRAINING_CODE = ("classifier.py", "classifier_training.py", "kerascompat.py", "curves.py")


def run_key(classifier_params: dict, samples: Samples, weights_path: Path | None) -> str:
    """Hash everything that shapes a training run, to name its checkpoint folder.

    The hash covers the settings, the samples file, the bytes of every training image (a face
    crop changes when the detector does, while its row and source digest stay the same), the
    backbone weights and the training code, so a changed input never resumes a stale run.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(classifier_params, sort_keys=True).encode())
    for name in TRAINING_CODE:
        digest.update((Path(__file__).parent / name).read_bytes())
    digest.update(samples.csv_path.read_bytes())
    for path in samples.paths:
        try:
            digest.update(path.read_bytes())
        except FileNotFoundError:
            raise DataError(f"{samples.csv_path}: image {path} not found") from None
    digest.update(b"" if weights_path is None else file_digest(weights_path, "sha256").encode())
    return digest.hexdigest()[:16]


def copy_file_atomic(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary file in the target's folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        shutil.copy2(source, temporary)
        replace_path(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def train_all(samples: Samples, params: dict, mirror: Path | None, final: bool, checkpoint_root: Path,
              out_dir: Path, curves_dir: Path, crop: dict | None = None) -> None:
    """Train every planned run, then publish the models in one rename and each curve file atomically.

    Fold mode publishes ``out_dir/fold{k}/``; final mode publishes the model as ``out_dir``.
    Curve files in ``curves_dir`` that belong to other runs are left in place. ``crop`` (the
    ``smiles.crop`` settings) goes into the final model's model.json as ``crop_margin`` and
    ``crop_size``, so the predictor frames faces the way the training crops were framed.
    """
    runs = plan_runs(samples, final)
    weights_path = resolve_imagenet_weights(params["backbone"], params["weights"], mirror)

    from stages import classifier_training

    images = classifier_training.load_images(samples.paths, params["input_size"])
    key_dir = checkpoint_root / run_key(params, samples, weights_path)
    finished = {}
    for run in runs:
        work_dir = key_dir / run.name
        work_dir.mkdir(parents=True, exist_ok=True)
        finished[run.name] = classifier_training.train_run(run, images, samples.labels, params, weights_path, work_dir)

    with atomic_directory(out_dir) as staging:
        for name, final_dir in finished.items():
            target = staging if final else staging / name
            shutil.copytree(final_dir, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.csv"))
        if final and crop is not None:
            add_crop_settings(staging / "model.json", crop)
    for name, final_dir in finished.items():
        copy_file_atomic(final_dir / "epochs.csv", curves_dir / f"{name}-epochs.csv")


def add_crop_settings(model_json: Path, crop: dict) -> None:
    """Record the face-crop margin and size of the training images in a model's model.json."""
    settings = json.loads(model_json.read_text(encoding="utf-8"))
    settings["crop_margin"] = float(crop["margin"])
    settings["crop_size"] = int(crop["size"])
    model_json.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stages.train_classifier", description=__doc__.split("\n\n")[0])
    add_params_arguments(parser)
    parser.add_argument("--samples", type=Path, required=True,
                        help="samples.csv with columns sample, path, label, fold, digest")
    parser.add_argument("--out", type=Path, required=True,
                        help="model folder: fold{k}/ subfolders, or the final model itself with --final")
    parser.add_argument("--curves", type=Path, required=True, help="folder for the per-epoch CSVs")
    parser.add_argument("--final", action="store_true",
                        help="train one model on every sample instead of one per fold")
    parser.add_argument("--checkpoints", type=Path, default=Path("data/checkpoints/classifier"),
                        help="folder for resumable checkpoints (default: data/checkpoints/classifier)")
    parser.add_argument("--mirror", type=Path, default=None,
                        help=f"local mirror folder with keras-weights/ (default: ${MIRROR_ENV} if set)")
    return parser


def run(args: argparse.Namespace) -> None:
    """Train the runs that ``args`` selects and publish them."""
    mirror = resolve_mirror_root(args.mirror, os.environ)
    params = load_params(args.params, args.profile)
    samples = read_samples(args.samples)
    train_all(samples, params["classifier"], mirror, args.final, args.checkpoints, args.out, args.curves,
              crop=params["smiles"]["crop"] if args.final else None)


def main(argv: list[str] | None = None) -> int:
    """Run the classifier training stage; return 0 on success and 1 on a known error."""
    parser = build_parser()
    return run_stage(run, parser.parse_args(argv), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
