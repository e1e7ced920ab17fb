"""Time training steps of the project's happy / non-happy classifier on GENKI-4K images.

The script reads ``--images`` GENKI-4K images straight from the mirror's archive, spread
evenly over the file numbers because the smiling images come first. It cuts the largest
centred square out of each (stages.facecrop, no face detector) and prepares it as training
does (stages.classifier.prepare_image). It builds and compiles the classifier
with the project's own code, then runs ``--warmup`` untimed steps and ``--steps`` timed steps of
``model.train_on_batch`` on augmented batches. The settings come from the classifier section
of params.yaml under ``--profile``; ``--input-size`` overrides the input side. It prints one
JSON line on stdout; logs go to stderr.

Only the ``train_on_batch`` call is timed. Augmenting and normalizing a batch is timed apart
(``data_seconds_mean``), because it runs in NumPy and OpenCV, not in TensorFlow.

Run it from the repository root::

    EMOTIVELENS_MIRROR=/path/to/mirror python benchmarks/classifier_step.py --input-size 96

The mirror must contain ``genki-4k/GENKI-4K.tar`` and, for ImageNet weights,
``keras-weights/`` with the backbone's weights file and SHA256SUMS.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from stages.download import MIRROR_ENV  # noqa: E402
from stages.errors import KNOWN_ERRORS  # noqa: E402
from stages.params import ParamsError, load_params  # noqa: E402
from stages.train_classifier import class_weights, resolve_imagenet_weights  # noqa: E402

log = logging.getLogger("classifier_step")

ARCHIVE = Path("genki-4k") / "GENKI-4K.tar"
LABELS_MEMBER = "genki4k/labels.txt"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed training steps (default: 30)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed steps first, which include graph tracing (default: 5)")
    parser.add_argument("--images", type=int, default=640,
                        help="GENKI-4K images to train on, spread evenly over the file numbers (default: 640)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="side of the square model input in pixels (default: classifier.input_size)")
    parser.add_argument("--mirror", type=Path, default=os.environ.get(MIRROR_ENV),
                        help=f"mirror folder with genki-4k/ and keras-weights/ (default: ${MIRROR_ENV})")
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml",
                        help="parameter file whose classifier section sets the model (default: the project's)")
    parser.add_argument("--profile", default="default", help="profile of workflow/profiles/ (default: default)")
    return parser


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.mirror is None:
        parser.error(f"no mirror folder: pass --mirror or set {MIRROR_ENV}")
    if not (args.mirror / ARCHIVE).is_file():
        parser.error(f"{args.mirror / ARCHIVE}: not found; --mirror must contain {ARCHIVE}")
    if args.steps < 1 or args.warmup < 0 or args.images < 2:
        parser.error(f"--steps ({args.steps}) must be at least 1, --images ({args.images}) at least 2 "
                     f"and --warmup ({args.warmup}) at least 0")


def read_genki(archive_path: Path, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``count`` GENKI-4K images, evenly spaced, as centred square RGB crops and their smile labels."""
    import cv2

    from stages import classifier, facecrop

    with tarfile.open(archive_path) as archive:
        label_lines = archive.extractfile(LABELS_MEMBER).read().decode().split("\n")
        all_labels = np.array([int(line.split()[0]) for line in label_lines if line.strip()])
        chosen = np.linspace(0, len(all_labels) - 1, num=min(count, len(all_labels))).round().astype(int)
        labels = all_labels[chosen]
        images = np.empty((len(chosen), size, size, 3), dtype=np.uint8)
        for index, number in enumerate(chosen):
            data = archive.extractfile(f"genki4k/files/file{number + 1:04d}.jpg").read()
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
            crop = facecrop.square_crop(image, facecrop.whole_image_box(image), margin=0.0, size=size)
            images[index] = classifier.prepare_image(crop, size)
    return images, labels


def time_steps(model, images, labels, params, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """Run ``warmup`` then ``steps`` training steps; return seconds per timed step and per batch preparation."""
    from stages import classifier, classifier_training

    weights = class_weights(labels, params["class_weight"])
    sample_weights = np.array([weights[0], weights[1]], dtype=np.float32)
    rng = np.random.default_rng(params["seed"])
    batch_size = params["batch_size"]
    step_seconds, data_seconds = [], []
    for index in range(warmup + steps):
        start = time.perf_counter()
        rows = rng.choice(len(images), size=batch_size, replace=False)
        batch = classifier_training.augment_batch(images[rows], params["augmentation"], rng)
        inputs = classifier.preprocess_batch(batch, classifier.PREPROCESSING[params["backbone"]])
        prepared = time.perf_counter()
        model.train_on_batch(inputs, labels[rows].astype(np.float32), sample_weight=sample_weights[labels[rows]])
        finished = time.perf_counter()
        if index >= warmup:
            data_seconds.append(prepared - start)
            step_seconds.append(finished - prepared)
    return step_seconds, data_seconds


def run(args: argparse.Namespace) -> dict:
    params = load_params(args.params, args.profile)["classifier"]
    if args.input_size is not None:
        params["input_size"] = args.input_size
    if args.images < params["batch_size"]:
        raise ParamsError(f"--images ({args.images}) must be at least classifier.batch_size ({params['batch_size']})")
    weights_path = resolve_imagenet_weights(params["backbone"], params["weights"], args.mirror)

    # Imported here so that argument and parameter errors show before TensorFlow starts.
    import tensorflow as tf

    from stages import classifier, classifier_training

    images, labels = read_genki(args.mirror / ARCHIVE, args.images, params["input_size"])
    classifier.keras.utils.set_random_seed(params["seed"])
    model = classifier.build_classifier(params, weights_path)
    classifier_training.compile_classifier(model, params["learning_rate"])
    step_seconds, data_seconds = time_steps(model, images, labels, params, args.warmup, args.steps)

    median = statistics.median(step_seconds)
    return {
        "tensorflow": tf.__version__,
        "backbone": params["backbone"],
        "input_size": params["input_size"],
        "frozen_layers": params["frozen_layers"],
        "batch_size": params["batch_size"],
        "images": len(images),
        "warmup": args.warmup,
        "steps": args.steps,
        "step_seconds_mean": round(statistics.fmean(step_seconds), 4),
        "step_seconds_median": round(median, 4),
        "data_seconds_mean": round(statistics.fmean(data_seconds), 4),
        "images_per_second": round(params["batch_size"] / median, 1),
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
    except KNOWN_ERRORS as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
