"""TensorFlow side of classifier training: image loading, augmentation and the training loop.

Kept apart from stages.train_classifier so that parameters and samples are checked before
TensorFlow loads.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from stages import classifier as classifier_module
from stages import kerascompat
from stages.atomic import atomic_directory
from stages.curves import append_row, truncate_curves
from stages.errors import DataError, TrainingError
from stages.train_classifier import TrainingRun, class_weights, run_epochs

keras = kerascompat.keras()

import cv2  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

log = logging.getLogger(__name__)
# TensorFlow logs an INFO line for every checkpoint it writes.
for _name in ("tensorflow", "absl"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# Seconds between progress-bar refreshes: often on a terminal, rarely in a log file.
BAR_INTERVAL_S = 0.2 if sys.stderr.isatty() else 10.0
# The cosine schedule ends at this fraction of the initial learning rate.
FINAL_LEARNING_RATE_FRACTION = 0.01
EPOCH_COLUMNS = ("epoch", "loss", "accuracy", "learning_rate", "seconds")


def read_image(path: Path) -> np.ndarray:
    """Read an image file as OpenCV stores it: grayscale (H, W), BGR (H, W, 3) or BGRA, uint8."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: cannot read image (missing, unreadable or not an image)")
    if image.dtype != np.uint8:
        raise DataError(f"{path}: pixel type is {image.dtype}, expected 8-bit images")
    return image


def load_images(paths: Sequence[Path], input_size: int) -> np.ndarray:
    """Load every image once, prepared as for prediction: RGB uint8 (N, input_size, input_size, 3)."""
    images = np.empty((len(paths), input_size, input_size, 3), dtype=np.uint8)
    for index, path in enumerate(tqdm(paths, desc="loading images", unit="image", mininterval=BAR_INTERVAL_S)):
        try:
            images[index] = classifier_module.prepare_image(read_image(path), input_size)
        except ValueError as error:
            raise DataError(f"{path}: {error}") from None
    return images


def augment_batch(batch: np.ndarray, augmentation: dict, rng: np.random.Generator) -> np.ndarray:
    """Return a randomly flipped, rotated, zoomed, shifted and brightened copy of an RGB uint8 batch.

    One affine warp per image combines rotation (uniform in +-max_rotation_deg), zoom (scale
    uniform in 1 +- max_zoom) and shift (uniform in +-max_translation of the side). Borders
    are filled by reflection. Brightness adds a uniform +-max_brightness share of 255.
    """
    count, size = batch.shape[0], batch.shape[1]
    flips = rng.random(count) < augmentation["flip_x_chance"]
    angles = rng.uniform(-1, 1, count) * augmentation["max_rotation_deg"]
    scales = 1.0 + rng.uniform(-1, 1, count) * augmentation["max_zoom"]
    shifts = rng.uniform(-1, 1, (count, 2)) * augmentation["max_translation"] * size
    brightness = rng.uniform(-1, 1, count) * augmentation["max_brightness"] * 255.0

    centre = ((size - 1) / 2.0, (size - 1) / 2.0)
    augmented = np.empty_like(batch)
    for index in range(count):
        image = batch[index]
        if flips[index]:
            image = image[:, ::-1]
        matrix = cv2.getRotationMatrix2D(centre, float(angles[index]), float(scales[index]))
        matrix[:, 2] += shifts[index]
        warped = cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT_101)
        augmented[index] = np.clip(warped.astype(np.float32) + brightness[index], 0, 255).astype(np.uint8)
    return augmented


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """Return the generator of one epoch's batch order and augmentation.

    Seeding by (seed, epoch) makes a resumed run draw the same batches as an uninterrupted one.
    """
    return np.random.default_rng([seed, epoch])


def compile_classifier(model, learning_rate) -> None:
    """Compile with binary cross-entropy on P(happy), Adam and unweighted accuracy."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                  loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.BinaryAccuracy(name="accuracy")])


class EpochTrainer:
    """Run one epoch at a time over in-memory images; stop with TrainingError on a non-finite loss."""

    def __init__(self, run: TrainingRun, model, images: np.ndarray, labels: np.ndarray, params: dict,
                 weights_by_label: dict[int, float], bar):
        self.run = run
        self.model = model
        self.images = images
        self.labels = labels
        self.params = params
        self.sample_weights = np.array([weights_by_label[0], weights_by_label[1]], dtype=np.float32)
        self.bar = bar
        self.preprocessing = classifier_module.PREPROCESSING[params["backbone"]]

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """Train epoch ``epoch`` (0-based); return the mean loss and accuracy over its samples."""
        rng = epoch_rng(self.params["seed"] + self.run.seed_offset, epoch)
        order = rng.permutation(self.run.rows)
        batch_size = self.params["batch_size"]
        loss_sum = correct = 0.0
        for step, start in enumerate(range(0, len(order), batch_size), start=1):
            rows = order[start:start + batch_size]
            batch = augment_batch(self.images[rows], self.params["augmentation"], rng)
            inputs = classifier_module.preprocess_batch(batch, self.preprocessing)
            labels = self.labels[rows].astype(np.float32)
            logs = self.model.train_on_batch(inputs, labels, sample_weight=self.sample_weights[self.labels[rows]],
                                             return_dict=True)
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                raise TrainingError(
                    f"{self.run.name}: non-finite loss {loss} at epoch {epoch + 1}, step {step}; "
                    "lower classifier.learning_rate or check the images")
            loss_sum += loss * len(rows)
            correct += float(logs["accuracy"]) * len(rows)
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}", refresh=False)
        return loss_sum / len(order), correct / len(order)

    def learning_rate(self) -> float:
        """Return the learning rate of the optimizer's most recent step."""
        optimizer = self.model.optimizer
        rate = optimizer.learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            return float(rate(max(int(optimizer.iterations.numpy()) - 1, 0)))
        return float(keras.backend.get_value(rate))


def record_epoch(run: TrainingRun, epoch: int, epochs: int, loss: float, accuracy: float, learning_rate: float,
                 seconds: float, epochs_path: Path, manager, epoch_variable) -> None:
    """Log a finished epoch, append it to the curve and save the checkpoint."""
    append_row(epochs_path, EPOCH_COLUMNS, (epoch + 1, loss, accuracy, learning_rate, seconds))
    epoch_variable.assign(epoch + 1)
    manager.save()
    log.info("%s epoch %d/%d: loss %.4f, accuracy %.4f, learning rate %.3g, %.0f s",
             run.name, epoch + 1, epochs, loss, accuracy, learning_rate, seconds)


def train_run(run: TrainingRun, images: np.ndarray, labels: np.ndarray, params: dict, weights_path: Path | None,
              work_dir: Path) -> Path:
    """Train (or resume, or reuse) one run in ``work_dir``; return the finished model folder.

    ``images`` and ``labels`` contain every sample; ``run.rows`` selects the training rows.
    """
    final_dir = work_dir / "final"
    if (final_dir / classifier_module.CONFIG_FILE).is_file():
        log.info("%s: reusing the finished model in %s", run.name, final_dir)
        return final_dir

    keras.backend.clear_session()
    keras.utils.set_random_seed(params["seed"] + run.seed_offset)
    model = classifier_module.build_classifier(params, weights_path)
    epochs = run_epochs(params, len(run.rows))
    steps_per_epoch = math.ceil(len(run.rows) / params["batch_size"])
    schedule = keras.optimizers.schedules.CosineDecay(
        params["learning_rate"], decay_steps=steps_per_epoch * epochs, alpha=FINAL_LEARNING_RATE_FRACTION)
    compile_classifier(model, schedule)

    epoch_variable = tf.Variable(0, dtype=tf.int64, name="completed_epochs")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, completed_epochs=epoch_variable)
    manager = tf.train.CheckpointManager(checkpoint, str(work_dir / "checkpoints"), max_to_keep=1)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint)
        log.info("%s: resuming after epoch %d from %s", run.name, int(epoch_variable.numpy()),
                 manager.latest_checkpoint)
    start_epoch = int(epoch_variable.numpy())
    epochs_path = work_dir / "epochs.csv"
    truncate_curves(epochs_path, EPOCH_COLUMNS, start_epoch)

    run_labels = labels[run.rows]
    weights_by_label = class_weights(run_labels, params["class_weight"])
    log.info("%s: %d training images (%d happy, %d not happy), %d epochs of %d steps, batch %d, %s weights, "
             "class weights not happy %.3f, happy %.3f (%s)", run.name, len(run.rows), int(run_labels.sum()),
             int(len(run_labels) - run_labels.sum()), epochs, steps_per_epoch, params["batch_size"],
             "ImageNet" if weights_path is not None else "random", weights_by_label[0], weights_by_label[1],
             params["class_weight"])

    with tqdm(total=epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
              desc=f"{run.name} training", unit="step", dynamic_ncols=True, mininterval=BAR_INTERVAL_S) as bar:
        trainer = EpochTrainer(run, model, images, labels, params, weights_by_label, bar)
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            loss, accuracy = trainer.train_epoch(epoch)
            record_epoch(run, epoch, epochs, loss, accuracy, trainer.learning_rate(),
                         time.perf_counter() - started, epochs_path, manager, epoch_variable)

    with atomic_directory(final_dir) as staging:
        classifier_module.save_classifier(model, params, staging)
        (staging / "epochs.csv").write_bytes(epochs_path.read_bytes())
    return final_dir
