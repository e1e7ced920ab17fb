"""TensorFlow side of detector training: the data generator, the training loop and its callback.

Kept apart from stages.train_detector so that parameters are checked before TensorFlow loads.
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from stages import detector as detector_module
from stages import kerascompat
from stages.atomic import atomic_directory
from stages.curves import append_row, truncate_curves
from stages.errors import TrainingError
from stages.train_detector import FoldData

keras = kerascompat.keras()

import tensorflow as tf  # noqa: E402
from keras_retinanet.preprocessing.csv_generator import CSVGenerator  # noqa: E402
from keras_retinanet.utils.anchors import make_shapes_callback  # noqa: E402
from keras_retinanet.utils.transform import random_transform_generator  # noqa: E402
from tqdm import tqdm  # noqa: E402

log = logging.getLogger(__name__)
# TensorFlow logs an INFO line for every checkpoint it writes.
for _name in ("tensorflow", "absl"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# Seconds between progress-bar refreshes: often on a terminal, rarely in a log file.
BAR_INTERVAL_S = 0.2 if sys.stderr.isatty() else 10.0

# The cosine schedule ends at this fraction of the initial learning rate.
FINAL_LEARNING_RATE_FRACTION = 0.01
STEP_COLUMNS = ("epoch", "step", "global_step", "loss", "regression_loss", "classification_loss", "seconds")
LOSS_KEYS = ("loss", "regression_loss", "classification_loss")
EPOCH_COLUMNS = ("epoch", "loss", "regression_loss", "classification_loss", "seconds", "peak_memory_mib")


def make_generator(train_csv: Path, classes_csv: Path, params: dict, model, seed: int) -> CSVGenerator:
    """Create the augmenting training generator of keras-retinanet for one fold.

    keras-retinanet draws its random transforms from OS entropy unless it gets a generator, so
    ``seed`` seeds them here. A resumed run continues with a fresh draw from the same seed, so its
    augmentation differs from that of an uninterrupted run.
    """
    augmentation = params["augmentation"]
    shift = augmentation["max_translation"]
    transform = random_transform_generator(
        min_scaling=(augmentation["min_scaling"],) * 2,
        max_scaling=(augmentation["max_scaling"],) * 2,
        min_translation=(-shift, -shift),
        max_translation=(shift, shift),
        flip_x_chance=augmentation["flip_x_chance"],
        prng=np.random.RandomState(seed),
    )
    return CSVGenerator(
        str(train_csv),
        str(classes_csv),
        batch_size=params["batch_size"],
        image_min_side=params["image_min_side"],
        image_max_side=params["image_max_side"],
        preprocess_image=detector_module.preprocess_function(params["backbone"]),
        transform_generator=transform,
        # Image sides that are not multiples of 32 need the model's own feature-map shapes.
        compute_shapes=make_shapes_callback(model),
        shuffle_groups=True,
    )


def endless_batches(generator: CSVGenerator):
    """Yield the generator's batches epoch after epoch, reshuffling between passes.

    Keras restarts its worker thread at every epoch of a ``Sequence``, which cost about 5 to 10
    seconds per epoch on a 2-core CPU (tf-keras 2.21); one endless stream avoids the restarts.
    """
    while True:
        for index in range(len(generator)):
            yield generator[index]
        generator.on_epoch_end()


class TrainingMonitor(keras.callbacks.Callback):
    """Log losses per step and per epoch, show progress, save checkpoints, stop on a non-finite loss."""

    def __init__(self, fold: int, epochs: int, steps_per_epoch: int, manager, epoch_variable,
                 steps_path: Path, epochs_path: Path):
        super().__init__()
        self.fold = fold
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.manager = manager
        self.epoch_variable = epoch_variable
        self.steps_path = steps_path
        self.epochs_path = epochs_path
        self.bar = None
        self.epoch = 0
        self.epoch_start = 0.0
        self.step_start = 0.0
        self.diverged: dict | None = None

    def on_train_begin(self, logs=None):
        done = int(self.epoch_variable.numpy()) * self.steps_per_epoch
        self.bar = tqdm(total=self.epochs * self.steps_per_epoch, initial=done, desc=f"fold {self.fold} training",
                        unit="step", dynamic_ncols=True, mininterval=BAR_INTERVAL_S)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epoch_start = time.perf_counter()
        self.previous_means = None

    def on_train_batch_begin(self, batch, logs=None):
        self.step_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        seconds = time.perf_counter() - self.step_start
        means = {key: float(logs.get(key, math.nan)) for key in LOSS_KEYS}
        values = batch_losses(means, self.previous_means, batch)
        self.previous_means = means
        if not all(math.isfinite(value) for value in values.values()):
            self.diverged = {"epoch": self.epoch + 1, "step": batch + 1, **values}
            self.model.stop_training = True
            return
        global_step = self.epoch * self.steps_per_epoch + batch + 1
        append_row(self.steps_path, STEP_COLUMNS, (self.epoch + 1, batch + 1, global_step, *values.values(), seconds))
        self.bar.update(1)
        self.bar.set_postfix(epoch=self.epoch + 1, loss=f"{values['loss']:.3f}", step_s=f"{seconds:.2f}")

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged is not None:
            return
        logs = logs or {}
        seconds = time.perf_counter() - self.epoch_start
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        values = [float(logs.get(key, math.nan)) for key in LOSS_KEYS]
        append_row(self.epochs_path, EPOCH_COLUMNS, (epoch + 1, *values, seconds, peak_mib))
        self.epoch_variable.assign(epoch + 1)
        self.manager.save()
        log.info("fold %d epoch %d/%d: loss %.4f (regression %.4f, classification %.4f), %.0f s, peak memory %.0f MiB",
                 self.fold, epoch + 1, self.epochs, *values, seconds, peak_mib)

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()


def batch_losses(means: dict, previous_means: dict | None, batch: int) -> dict:
    """Recover one batch's losses from Keras' running means over the epoch.

    Keras logs the mean over batches 0..batch of the epoch, so the loss of batch b is
    (b + 1) * mean_b - b * mean_(b-1).
    """
    if previous_means is None or batch == 0:
        return dict(means)
    return {key: (batch + 1) * means[key] - batch * previous_means[key] for key in means}


def train_fold(fold: FoldData, classes_csv: Path, params: dict, weights_path: Path | None, work_dir: Path) -> Path:
    """Train (or resume, or reuse) one fold in ``work_dir``; return the finished model folder."""
    final_dir = work_dir / "final"
    if (final_dir / detector_module.CONFIG_FILE).is_file():
        log.info("fold %d: reusing the finished model in %s", fold.index, final_dir)
        return final_dir

    keras.backend.clear_session()
    keras.utils.set_random_seed(params["seed"] + fold.index)
    model = detector_module.build_training_model(params, pretrained=weights_path is not None)
    if weights_path is not None:
        model.load_weights(str(weights_path), by_name=True, skip_mismatch=True)

    generator = make_generator(fold.train_csv, classes_csv, params, model, seed=params["seed"] + fold.index)
    steps_per_epoch = params["steps_per_epoch"] or math.ceil(generator.size() / params["batch_size"])
    total_steps = steps_per_epoch * params["epochs"]
    schedule = keras.optimizers.schedules.CosineDecay(
        params["learning_rate"], decay_steps=total_steps, alpha=FINAL_LEARNING_RATE_FRACTION)
    detector_module.compile_training_model(model, params["focal"], schedule, params["clipnorm"])

    epoch_variable = tf.Variable(0, dtype=tf.int64, name="completed_epochs")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, completed_epochs=epoch_variable)
    manager = tf.train.CheckpointManager(checkpoint, str(work_dir / "checkpoints"), max_to_keep=1)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint)
        log.info("fold %d: resuming after epoch %d from %s", fold.index, int(epoch_variable.numpy()),
                 manager.latest_checkpoint)
    start_epoch = int(epoch_variable.numpy())
    steps_path, epochs_path = work_dir / "steps.csv", work_dir / "epochs.csv"
    truncate_curves(steps_path, STEP_COLUMNS, start_epoch)
    truncate_curves(epochs_path, EPOCH_COLUMNS, start_epoch)

    log.info("fold %d: %d training images, %d epochs of %d steps, batch %d, %s weights", fold.index, fold.images,
             params["epochs"], steps_per_epoch, params["batch_size"],
             "ImageNet" if weights_path is not None else "random")
    monitor = TrainingMonitor(fold.index, params["epochs"], steps_per_epoch, manager, epoch_variable,
                              steps_path, epochs_path)
    model.fit(endless_batches(generator), epochs=params["epochs"], initial_epoch=start_epoch,
              steps_per_epoch=steps_per_epoch, callbacks=[monitor], verbose=0, workers=1, use_multiprocessing=False)
    if monitor.diverged is not None:
        parts = monitor.diverged
        raise TrainingError(
            f"fold {fold.index}: non-finite loss at epoch {parts['epoch']}, step {parts['step']}: "
            f"loss {parts['loss']}, regression {parts['regression_loss']}, "
            f"classification {parts['classification_loss']}; lower detector.learning_rate or check the annotations")

    with atomic_directory(final_dir) as staging:
        detector_module.save_model(model, params, staging)
        shutil.copy2(steps_path, staging / "steps.csv")
        shutil.copy2(epochs_path, staging / "epochs.csv")
    return final_dir


