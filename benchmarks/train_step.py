"""Time RetinaNet training steps of the project's detector on Caltech Faces 1999.

The script extracts faces.tar from a local mirror into a temporary folder and writes a
keras-retinanet annotation CSV for the first ``--images`` annotated images. It builds and
compiles the training model with the project's own code (stages.detector). Then it runs
``--warmup`` untimed steps and ``--steps`` timed steps of ``model.train_on_batch`` on batches of
the project's augmenting generator. The model settings come from the detector section of
params.yaml. It prints one JSON line on stdout; logs go to stderr.

Only the ``train_on_batch`` call is timed. Reading and augmenting a batch is timed apart
(``data_seconds_mean``), because it runs in NumPy and OpenCV, not in TensorFlow.

Run it from the repository root, in any environment that has TensorFlow, tf-keras and
keras-retinanet 1.0.0::

    EMOTIVELENS_MIRROR=/path/to/mirror python benchmarks/train_step.py --steps 30 --warmup 5

The mirror must contain ``caltech-faces-1999/faces.tar`` and ``keras-weights/`` with the
backbone's ImageNet weights and their SHA256SUMS.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import resource
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from stages import convert  # noqa: E402
from stages.errors import KNOWN_ERRORS  # noqa: E402
from stages.params import load_params  # noqa: E402
from stages.train_detector import MIRROR_ENV, TrainingError, resolve_backbone_weights  # noqa: E402

log = logging.getLogger("train_step")

ARCHIVE = Path("caltech-faces-1999") / "faces.tar"
# Focal loss settings from "Focal Loss for Dense Object Detection" (Lin et al., 2017), the
# same as detector.focal in params.yaml.
FOCAL = {"gamma": 2.0, "alpha": 0.25}
LEARNING_RATE = 1e-3
CLIPNORM = 0.001


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed training steps (default: 30)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps first, which include graph tracing (default: 5)")
    parser.add_argument("--images", type=int, default=200,
                        help="annotated images to train on, the first ones by image number (default: 200)")
    parser.add_argument("--mirror", type=Path, default=os.environ.get(MIRROR_ENV),
                        help=f"mirror folder with caltech-faces-1999/ and keras-weights/ (default: ${MIRROR_ENV})")
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml",
                        help="parameter file whose detector section sets the model (default: the project's)")
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.mirror is None:
        parser.error(f"no mirror folder: pass --mirror or set {MIRROR_ENV}")
    if not (args.mirror / ARCHIVE).is_file():
        parser.error(f"{args.mirror / ARCHIVE}: not found; --mirror must contain {ARCHIVE}")
    if args.steps < 1 or args.warmup < 0 or args.images < 1:
        parser.error(f"--steps ({args.steps}) and --images ({args.images}) must be at least 1, "
                     f"--warmup ({args.warmup}) at least 0")


def write_annotations(raw_dir: Path, max_images: int) -> tuple[Path, Path]:
    """Write ``annotations.csv`` and ``classes.csv`` into ``raw_dir`` with the convert stage's rules.

    Boxes are rounded outward and clipped to each image, as ``stages.convert`` does. Returns the
    paths of the annotation and class CSV files.
    """
    corners = convert.read_corners(raw_dir / convert.MAT_FILE)
    convert.check_corners(corners, str(raw_dir / convert.MAT_FILE))
    rows = []
    for column, box in enumerate(convert.corner_boxes(corners)):
        name = convert.image_name(column + 1)
        path = raw_dir / name
        if not path.is_file():
            continue
        width, height = convert.inspect_image(path)
        (x1, y1, x2, y2), _clipped = convert.round_box(box, width, height)
        rows.append((name, x1, y1, x2, y2, convert.CLASS_NAME))
        if len(rows) == max_images:
            break
    annotations_csv = raw_dir / "annotations.csv"
    with annotations_csv.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    classes_csv = raw_dir / "classes.csv"
    classes_csv.write_text(f"{convert.CLASS_NAME},{convert.CLASS_ID}\n", encoding="utf-8")
    log.info("wrote %d annotated images to %s", len(rows), annotations_csv)
    return annotations_csv, classes_csv


def time_steps(model, generator, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """Run ``warmup`` then ``steps`` training steps; return seconds per timed step and per batch read."""
    step_seconds, data_seconds = [], []
    for index in range(warmup + steps):
        start = time.perf_counter()
        inputs, targets = generator[index % len(generator)]
        loaded = time.perf_counter()
        model.train_on_batch(inputs, targets)
        finished = time.perf_counter()
        if index >= warmup:
            data_seconds.append(loaded - start)
            step_seconds.append(finished - loaded)
    return step_seconds, data_seconds


def run(args: argparse.Namespace) -> dict:
    detector_params = load_params(args.params)["detector"]
    weights_path = resolve_backbone_weights(detector_params["backbone"], detector_params["weights"], args.mirror)

    # Imported here so that argument and parameter errors show before TensorFlow starts.
    from stages import detector
    from stages import kerascompat
    from stages.detector_training import make_generator

    import tensorflow as tf

    keras = kerascompat.keras()
    with tempfile.TemporaryDirectory(prefix="train-step-") as temp:
        raw_dir = Path(temp)
        with tarfile.open(args.mirror / ARCHIVE) as archive:
            archive.extractall(raw_dir, filter="data")
        annotations_csv, classes_csv = write_annotations(raw_dir, args.images)

        keras.utils.set_random_seed(detector_params["seed"])
        model = detector.build_training_model(detector_params, pretrained=weights_path is not None)
        if weights_path is not None:
            model.load_weights(str(weights_path), by_name=True)
        detector.compile_training_model(model, FOCAL, LEARNING_RATE, CLIPNORM)
        generator = make_generator(annotations_csv, classes_csv, detector_params, model, seed=detector_params["seed"])
        step_seconds, data_seconds = time_steps(model, generator, args.warmup, args.steps)

    median = statistics.median(step_seconds)
    return {
        "tensorflow": tf.__version__,
        "keras_module": keras.__name__,
        "keras_version": keras.__version__,
        "backbone": detector_params["backbone"],
        "batch_size": detector_params["batch_size"],
        "images": generator.size(),
        "warmup": args.warmup,
        "steps": args.steps,
        "step_seconds_mean": round(statistics.fmean(step_seconds), 4),
        "step_seconds_median": round(median, 4),
        "data_seconds_mean": round(statistics.fmean(data_seconds), 4),
        "images_per_second": round(detector_params["batch_size"] / median, 2),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = run(args)
    except (*KNOWN_ERRORS, TrainingError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
