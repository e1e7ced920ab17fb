"""Train one RetinaNet face detector per cross-validation fold.

Each fold trains on ``fold{k}/train.csv`` of the split folder and writes a model folder
``<out>/fold{k}/`` (see stages.detector). Training saves a checkpoint (weights, optimizer state
and epoch) after every epoch under ``--checkpoints``. Its folder is named by a hash of the
settings, the training data and the training code. Rerunning an interrupted command therefore
resumes where it stopped, while a changed setting starts afresh.

Before training, the stage logs the share of training boxes that an anchor matches at IoU 0.5
at the configured image size, and warns when it is low (see stages.anchor_check).

Per-step losses go to ``<curves>/fold{k}-steps.csv`` and per-epoch losses to
``<curves>/fold{k}-epochs.csv``.

With ``--annotations CSV`` instead of ``--splits``, the stage trains one final model on every
image of that table (for the predictor, not for evaluation) and writes it straight into
``--out``, with its curves as ``<curves>/final-steps.csv`` and ``final-epochs.csv``. It uses
the seed of fold 0, and its log lines call it fold 0.
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

from stages.anchor_check import check_anchor_coverage
from stages.atomic import atomic_directory
from stages.cli import run_stage
from stages.download import (MIRROR_ENV, file_digest, parse_sha256sums, resolve_mirror_root,
                             verify_checksum)
from stages.errors import DataError, TrainingError
from stages.params import add_params_arguments, load_params

log = logging.getLogger(__name__)

WEIGHTS_MIRROR_FOLDER = "keras-weights"
# ImageNet weight file names of keras-retinanet's backbones (its download_imagenet methods).
MOBILENET_ALPHA_TEXT = {"0.25": "2_5", "0.5": "5_0", "0.75": "7_5", "1.0": "1_0"}


def imagenet_weights_filename(backbone: str) -> str:
    """Return the file name keras-retinanet uses for ``backbone``'s ImageNet weights."""
    if backbone.startswith("mobilenet"):
        rows, alpha = backbone.removeprefix("mobilenet").split("_")
        return f"mobilenet_{MOBILENET_ALPHA_TEXT[alpha]}_{rows}_tf_no_top.h5"
    if backbone.startswith("resnet"):
        return f"ResNet-{backbone.removeprefix('resnet')}-model.keras.h5"
    raise TrainingError(f"no ImageNet weights file is known for backbone {backbone!r}")


@dataclass(frozen=True)
class FoldData:
    """The training annotations of one fold."""

    index: int
    train_csv: Path
    images: int


def find_folds(splits_dir: Path) -> list[FoldData]:
    """List ``fold{k}/train.csv`` in ``splits_dir`` in fold order; fail if there are none."""
    folds = []
    for train_csv in sorted(splits_dir.glob("fold*/train.csv"), key=lambda p: int(p.parent.name.removeprefix("fold"))):
        with train_csv.open(newline="", encoding="utf-8") as handle:
            images = {row[0] for row in csv.reader(handle) if row}
        folds.append(FoldData(int(train_csv.parent.name.removeprefix("fold")), train_csv, len(images)))
    if not folds:
        raise TrainingError(f"{splits_dir}: no fold*/train.csv found; run the split stage first")
    return folds


def all_images_fold(annotations_csv: Path) -> FoldData:
    """Describe a whole annotation table as one training set, for the final model."""
    if not annotations_csv.is_file():
        raise TrainingError(f"{annotations_csv}: not found; run the convert stage first")
    with annotations_csv.open(newline="", encoding="utf-8") as handle:
        images = {row[0] for row in csv.reader(handle) if row}
    if not images:
        raise TrainingError(f"{annotations_csv}: no annotation rows")
    return FoldData(0, annotations_csv, len(images))


def training_images(train_csv: Path) -> list[tuple[str, Path]]:
    """Return the distinct images of a keras-retinanet CSV as (name as written, file), sorted by name.

    keras-retinanet resolves a relative image path from the CSV's folder, and so does this.
    Raises TrainingError naming the CSV and the image when a file is missing.
    """
    with train_csv.open(newline="", encoding="utf-8") as handle:
        names = sorted({row[0] for row in csv.reader(handle) if row})
    images = []
    for name in names:
        path = train_csv.parent / name
        if not path.is_file():
            raise TrainingError(f"{train_csv}: image {name!r} not found at {path}")
        images.append((name, path))
    return images


def resolve_backbone_weights(backbone: str, weights: str, mirror: Path | None) -> Path | None:
    """Return the ImageNet weights file for ``backbone``, or None when ``weights`` is 'none'.

    With a mirror the file comes from ``<mirror>/keras-weights/`` and must match that folder's
    SHA256SUMS; otherwise keras-retinanet downloads it into the Keras cache (~/.keras/models).
    """
    if weights == "none":
        return None
    filename = imagenet_weights_filename(backbone)
    if mirror is not None:
        folder = mirror / WEIGHTS_MIRROR_FOLDER
        path = folder / filename
        sums_path = folder / "SHA256SUMS"
        if not path.is_file():
            raise TrainingError(
                f"{path}: ImageNet weights for backbone {backbone!r} not found in the mirror; "
                "add the file or set detector.weights to none")
        if not sums_path.is_file():
            raise TrainingError(f"{sums_path}: not found; the mirror must list the sha256 of {filename}")
        expected = parse_sha256sums(sums_path.read_text(encoding="utf-8"), str(sums_path)).get(filename)
        if expected is None:
            raise TrainingError(f"{sums_path}: no entry for {filename}")
        verify_checksum(path, "sha256", expected, str(sums_path))
        return path
    from stages import detector as detector_module

    try:
        return Path(detector_module.models.backbone(backbone).download_imagenet())
    except Exception as error:  # keras' get_file raises several network error types
        raise TrainingError(
            f"downloading ImageNet weights for backbone {backbone!r} failed ({error}); "
            f"set {MIRROR_ENV} to a mirror folder or set detector.weights to none") from error


# Source files whose changes make earlier checkpoints unusable.
TRAINING_CODE = ("detector.py", "detector_training.py", "kerascompat.py", "curves.py")


def run_key(detector_params: dict, fold: FoldData, classes_csv: Path, weights_path: Path | None) -> str:
    """Hash everything that shapes a fold's training run, to name its checkpoint folder.

    The hash covers the settings, the fold's annotations, the bytes of its images, the class
    mapping, the backbone weights and the training code, so an edited file, image or setting
    never resumes a stale run.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(detector_params, sort_keys=True).encode())
    for name in TRAINING_CODE:
        digest.update((Path(__file__).parent / name).read_bytes())
    digest.update(fold.train_csv.read_bytes())
    for name, path in training_images(fold.train_csv):
        digest.update(name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(classes_csv.read_bytes())
    digest.update(b"" if weights_path is None else file_digest(weights_path, "sha256").encode())
    return digest.hexdigest()[:16]


def train_all(folds: list[FoldData], classes_csv: Path, params: dict, mirror: Path | None,
              checkpoint_root: Path, out_dir: Path, curves_dir: Path) -> None:
    """Train every fold, then publish models and curves in one rename each."""
    from stages import detector_training

    weights_path = resolve_backbone_weights(params["backbone"], params["weights"], mirror)
    finished = {}
    for fold in folds:
        work_dir = checkpoint_root / run_key(params, fold, classes_csv, weights_path) / f"fold{fold.index}"
        work_dir.mkdir(parents=True, exist_ok=True)
        finished[fold.index] = detector_training.train_fold(fold, classes_csv, params, weights_path, work_dir)

    with atomic_directory(out_dir) as staging_models, atomic_directory(curves_dir) as staging_curves:
        for index, final_dir in finished.items():
            shutil.copytree(final_dir, staging_models / f"fold{index}", ignore=shutil.ignore_patterns("*.csv"))
            shutil.copy2(final_dir / "steps.csv", staging_curves / f"fold{index}-steps.csv")
            shutil.copy2(final_dir / "epochs.csv", staging_curves / f"fold{index}-epochs.csv")


def train_final(annotations_csv: Path, classes_csv: Path, params: dict, mirror: Path | None,
                checkpoint_root: Path, out_dir: Path, curves_dir: Path) -> None:
    """Train one model on every image of ``annotations_csv`` and publish it as ``out_dir``."""
    from stages import detector_training

    weights_path = resolve_backbone_weights(params["backbone"], params["weights"], mirror)
    fold = all_images_fold(annotations_csv)
    log.info("final model: training on all %d images of %s", fold.images, annotations_csv)
    work_dir = checkpoint_root / run_key(params, fold, classes_csv, weights_path) / "final"
    work_dir.mkdir(parents=True, exist_ok=True)
    final_dir = detector_training.train_fold(fold, classes_csv, params, weights_path, work_dir)
    with atomic_directory(out_dir) as staging_model, atomic_directory(curves_dir) as staging_curves:
        shutil.copytree(final_dir, staging_model, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.csv"))
        shutil.copy2(final_dir / "steps.csv", staging_curves / "final-steps.csv")
        shutil.copy2(final_dir / "epochs.csv", staging_curves / "final-epochs.csv")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stages.train_detector", description=__doc__.split("\n\n")[0])
    add_params_arguments(parser)
    training_set = parser.add_mutually_exclusive_group(required=True)
    training_set.add_argument("--splits", type=Path, help="split folder with fold*/train.csv: one model per fold")
    training_set.add_argument("--annotations", type=Path,
                              help="annotation CSV: one final model on all of its images, written into --out")
    parser.add_argument("--classes", type=Path, required=True, help="keras-retinanet class mapping CSV")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for the trained models, one per fold (with --annotations: the model itself)")
    parser.add_argument("--curves", type=Path, required=True, help="folder for the per-step and per-epoch loss CSVs")
    parser.add_argument("--checkpoints", type=Path, default=Path("data/checkpoints/detector"),
                        help="folder for resumable checkpoints (default: data/checkpoints/detector)")
    parser.add_argument("--mirror", type=Path, default=None,
                        help=f"local mirror folder with keras-weights/ (default: ${MIRROR_ENV} if set)")
    return parser


def run(args: argparse.Namespace) -> None:
    """Check the anchor coverage of the training CSVs, then train every fold with the settings in ``args``."""
    mirror = resolve_mirror_root(args.mirror, os.environ)
    params = load_params(args.params, args.profile)
    if not args.classes.is_file():
        raise DataError(f"{args.classes}: file not found; run the convert stage first")
    if args.annotations is not None:
        check_anchor_coverage(args.annotations, params["detector"])
        train_final(args.annotations, args.classes, params["detector"], mirror, args.checkpoints, args.out, args.curves)
        return
    folds = find_folds(args.splits)
    for fold in folds:
        check_anchor_coverage(fold.train_csv, params["detector"])
    train_all(folds, args.classes, params["detector"], mirror, args.checkpoints, args.out, args.curves)


def main(argv: list[str] | None = None) -> int:
    """Run the training stage; return 0 on success and 1 on a known error."""
    parser = build_parser()
    return run_stage(run, parser.parse_args(argv), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
