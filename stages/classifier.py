"""Build, save, load and run the happy / non-happy face classifier.

The network is an ImageNet backbone without its top (MobileNet v1 with width 0.25, or VGG19),
then global average pooling, dropout and one sigmoid unit whose output is P(happy).
A trained model folder contains ``weights.h5`` and ``model.json`` (the settings needed to rebuild
the network and prepare its input), so prediction needs no params.yaml.

Every image goes through :func:`prepare_image` both in training and in prediction: grayscale
and BGR become RGB, then the image is resized to the model's square input. The backbone's
ImageNet normalization (:func:`preprocess_batch`) runs outside the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from stages import kerascompat
from stages.errors import ModelError

keras = kerascompat.keras()

import cv2  # noqa: E402
import h5py  # noqa: E402

WEIGHTS_FILE = "weights.h5"
CONFIG_FILE = "model.json"
# Index i is the name of label i; the sigmoid output is the probability of label 1.
CLASS_NAMES = ("not_happy", "happy")

# Pixel normalization of each backbone's ImageNet weights, as named by
# keras.applications.imagenet_utils.preprocess_input: "tf" scales RGB to [-1, 1], "caffe"
# reorders to BGR and subtracts the ImageNet channel means.
PREPROCESSING = {"mobilenet_0.25": "tf", "vgg19": "caffe"}
MOBILENET_ALPHA = 0.25
# Both backbones downsample by 32, and keras.applications rejects inputs under 32 pixels.
MIN_INPUT_SIZE = 32
MODEL_CONFIG_KEYS = ("backbone", "input_size", "preprocessing", "classes")
PREDICT_BATCH_SIZE = 64


def build_backbone(backbone: str, input_size: int):
    """Return the backbone as a Keras model without top and without weights.

    Input: RGB images (input_size, input_size, 3) after :func:`preprocess_batch`.
    Output: the last convolutional feature map.
    """
    shape = (input_size, input_size, 3)
    if backbone == "mobilenet_0.25":
        return keras.applications.MobileNet(input_shape=shape, alpha=MOBILENET_ALPHA, include_top=False, weights=None)
    if backbone == "vgg19":
        return keras.applications.VGG19(input_shape=shape, include_top=False, weights=None)
    raise ModelError(f"unknown classifier backbone {backbone!r}; expected one of {', '.join(PREPROCESSING)}")


def weight_file_layer_names(path: Path) -> set[str]:
    """Return the names of the layers whose weights an HDF5 Keras weights file stores."""
    try:
        with h5py.File(path, "r") as handle:
            group = handle["model_weights"] if "model_weights" in handle else handle
            names = group.attrs.get("layer_names")
            if names is None:
                raise ModelError(f"{path}: not a Keras HDF5 weights file (no layer_names attribute)")
            return {name.decode() if isinstance(name, bytes) else str(name) for name in names}
    except OSError as error:
        raise ModelError(f"{path}: cannot read HDF5 weights ({error})") from None


def load_backbone_weights(backbone_model, path: Path) -> None:
    """Load ImageNet weights into ``backbone_model`` by layer name.

    Loading by name lets the 224-pixel weights serve any input size, because convolution
    kernels do not depend on the image size. Keras silently skips layers whose names are
    absent from the file, so every backbone layer with weights is checked to be present first.
    """
    stored = weight_file_layer_names(path)
    missing = [layer.name for layer in backbone_model.layers if layer.weights and layer.name not in stored]
    if missing:
        raise ModelError(f"{path}: no weights for backbone layers {', '.join(missing[:5])}"
                         f"{' and more' if len(missing) > 5 else ''}; is it the right ImageNet weights file?")
    backbone_model.load_weights(str(path), by_name=True)


def build_classifier(config: dict, weights_path: Path | None):
    """Build the classifier: backbone, global average pooling, dropout, one sigmoid unit.

    ``config`` needs ``backbone`` and ``input_size``. ``frozen_layers`` (default 0) freezes
    that many backbone layers counted from the input layer, as
    ``for layer in base.layers[:n]: layer.trainable = False`` does. ``dropout`` (default 0)
    is the dropout rate before the output unit. ``weights_path`` is an ImageNet weights
    file for the backbone, or None for random weights.
    Input: preprocessed RGB batches (N, input_size, input_size, 3) float32. Output: (N, 1) P(happy).
    """
    input_size = int(config["input_size"])
    if input_size < MIN_INPUT_SIZE:
        raise ModelError(f"classifier input_size {input_size} is below the minimum of {MIN_INPUT_SIZE} pixels")
    base = build_backbone(config["backbone"], input_size)
    if weights_path is not None:
        load_backbone_weights(base, Path(weights_path))
    frozen = int(config.get("frozen_layers", 0))
    if frozen > len(base.layers):
        raise ModelError(f"classifier frozen_layers is {frozen} but backbone {config['backbone']} "
                         f"has only {len(base.layers)} layers")
    for layer in base.layers[:frozen]:
        layer.trainable = False

    inputs = keras.Input(shape=(input_size, input_size, 3), name="image")
    features = base(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    dropped = keras.layers.Dropout(float(config.get("dropout", 0.0)), name="dropout")(pooled)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="happy")(dropped)
    return keras.Model(inputs, outputs, name=f"classifier_{config['backbone']}")


def prepare_image(image: np.ndarray, size: int) -> np.ndarray:
    """Convert one image to the model's input format: RGB uint8 (size, size, 3).

    Accepts uint8 grayscale (H, W) or (H, W, 1), BGR (H, W, 3) and BGRA (H, W, 4), as
    OpenCV reads them. Grayscale is repeated into three channels. Shrinking uses area
    averaging and enlarging bilinear interpolation.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 numpy image, got {kind}")
    if image.ndim in (2, 3) and (image.shape[0] == 0 or image.shape[1] == 0):
        raise ValueError(f"expected a non-empty image, got shape {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.ndim == 3 and image.shape[2] == 3:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    else:
        raise ValueError(f"expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}")
    if rgb.shape[:2] == (size, size):
        return rgb
    shrinking = rgb.shape[0] > size or rgb.shape[1] > size
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def preprocess_batch(batch_rgb: np.ndarray, preprocessing: str) -> np.ndarray:
    """Normalize an RGB uint8 batch (N, S, S, 3) for the backbone; return float32 (N, S, S, 3)."""
    if preprocessing not in ("tf", "caffe"):
        raise ModelError(f"unknown preprocessing {preprocessing!r}; expected tf or caffe")
    batch = np.asarray(batch_rgb, dtype=np.float32).copy()
    return keras.applications.imagenet_utils.preprocess_input(batch, mode=preprocessing)


def model_settings(config: dict) -> dict:
    """Return the model.json content for a classifier built from ``config``."""
    backbone = config["backbone"]
    if backbone not in PREPROCESSING:
        raise ModelError(f"unknown classifier backbone {backbone!r}; expected one of {', '.join(PREPROCESSING)}")
    return {
        "backbone": backbone,
        "input_size": int(config["input_size"]),
        "preprocessing": PREPROCESSING[backbone],
        "classes": list(CLASS_NAMES),
        "dropout": float(config.get("dropout", 0.0)),
    }


def save_classifier(model, config: dict, model_dir: Path) -> None:
    """Write ``weights.h5`` and ``model.json`` into ``model_dir`` (created if needed)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(model_dir / WEIGHTS_FILE))
    text = json.dumps(model_settings(config), indent=2, sort_keys=True) + "\n"
    (model_dir / CONFIG_FILE).write_text(text, encoding="utf-8")


def read_classifier_config(model_dir: Path) -> dict:
    """Read and check ``model.json`` of a trained classifier folder."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"{path}: not found; train the classifier first (python -m stages.train_classifier)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(config).__name__}")
    missing = [key for key in MODEL_CONFIG_KEYS if key not in config]
    if missing:
        raise ModelError(f"{path}: missing keys {', '.join(missing)}")
    backbone = config["backbone"]
    if backbone not in PREPROCESSING:
        raise ModelError(f"{path}: backbone {backbone!r} is unknown; expected one of {', '.join(PREPROCESSING)}")
    size = config["input_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < MIN_INPUT_SIZE:
        raise ModelError(f"{path}: input_size {size!r} must be an integer of at least {MIN_INPUT_SIZE}")
    if config["preprocessing"] != PREPROCESSING[backbone]:
        raise ModelError(f"{path}: preprocessing {config['preprocessing']!r} does not match backbone "
                         f"{backbone} (expected {PREPROCESSING[backbone]!r})")
    if list(config["classes"]) != list(CLASS_NAMES):
        raise ModelError(f"{path}: classes {config['classes']!r} differ from {list(CLASS_NAMES)!r}")
    return config


def load_classifier(model_dir: Path | str) -> "Classifier":
    """Rebuild the classifier stored in ``model_dir`` and load its trained weights."""
    model_dir = Path(model_dir)
    config = read_classifier_config(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{weights}: not found; the model folder is incomplete, train the classifier again")
    model = build_classifier(config, weights_path=None)
    try:
        model.load_weights(str(weights))
    except (OSError, ValueError) as error:
        raise ModelError(f"{weights}: cannot load the classifier weights ({error})") from None
    return Classifier(model, config)


class Classifier:
    """A trained classifier with the input preparation it was trained with."""

    def __init__(self, model, config: dict):
        self.model = model
        self.config = config

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Return the network input (N, S, S, 3) float32 for a list of uint8 BGR or grayscale images."""
        size = self.config["input_size"]
        prepared = []
        for index, image in enumerate(images):
            try:
                prepared.append(prepare_image(image, size))
            except ValueError as error:
                raise ValueError(f"image {index}: {error}") from None
        if not prepared:
            return np.zeros((0, size, size, 3), dtype=np.float32)
        return preprocess_batch(np.stack(prepared), self.config["preprocessing"])

    def predict_proba(self, images: Sequence[np.ndarray], batch_size: int = PREDICT_BATCH_SIZE) -> np.ndarray:
        """Return P(happy) as float32 (N,) for N uint8 images, BGR (H, W, 3) or grayscale (H, W).

        Images may have any size; each is resized to the model's input. An empty list returns
        an empty array.
        """
        images = list(images)
        probabilities = np.zeros(len(images), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            batch = self.prepare(images[start:start + batch_size])
            output = self.model.predict_on_batch(batch)
            probabilities[start:start + len(batch)] = np.asarray(output, dtype=np.float32).reshape(-1)
        return probabilities
