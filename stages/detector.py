"""Build, load and run the keras-retinanet RetinaNet face detector.

A trained model folder holds ``weights.h5`` (weights of the training model) and
``model.json`` (the settings needed to rebuild the network), so prediction needs no params.yaml.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from stages import kerascompat
from stages.errors import ModelError

keras = kerascompat.keras()

import cv2  # noqa: E402
import keras_resnet.models  # noqa: E402
from keras_retinanet import losses, models  # noqa: E402
from keras_retinanet.models import retinanet as retinanet_module  # noqa: E402
from keras_retinanet.utils.anchors import AnchorParameters  # noqa: E402
from keras_retinanet.utils.image import resize_image  # noqa: E402
import tensorflow as tf  # noqa: E402

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.h5"
CONFIG_FILE = "model.json"
CLASS_NAMES = ("face",)

# keras-retinanet names its pyramid builder with a double underscore, which hides it from
# ``from ... import``; it accepts the channel count we want to shrink.
_create_pyramid_features = getattr(retinanet_module, "__create_pyramid_features")

# Settings a model folder stores so that it can be rebuilt without params.yaml.
MODEL_CONFIG_KEYS = ("backbone", "image_min_side", "image_max_side", "feature_size")

def _resnet_retinanet(backbone: str, freeze_batch_norm: bool, **kwargs: Any):
    """Build a ResNet RetinaNet like keras-retinanet, but with batch norm trainable on request.

    keras-retinanet always freezes batch normalization, which suits ImageNet weights; from
    random weights the frozen statistics make the first losses about 2000.
    """
    inputs = keras.layers.Input(shape=(None, None, 3))
    builders = {
        "resnet50": keras_resnet.models.ResNet50,
        "resnet101": keras_resnet.models.ResNet101,
        "resnet152": keras_resnet.models.ResNet152,
    }
    resnet = builders[backbone](inputs, include_top=False, freeze_bn=freeze_batch_norm)
    backbone_layers = dict(zip(("C2", "C3", "C4", "C5"), resnet.outputs))
    return retinanet_module.retinanet(inputs=inputs, num_classes=len(CLASS_NAMES), backbone_layers=backbone_layers, **kwargs)


def build_training_model(config: dict, pretrained: bool):
    """Build the RetinaNet training model (outputs: regression and classification per anchor).

    ``config`` holds MODEL_CONFIG_KEYS. Pyramid and head width come from ``feature_size``;
    keras-retinanet's default is 256.
    """
    width = config["feature_size"]
    num_anchors = AnchorParameters.default.num_anchors()
    submodels = [
        ("regression", retinanet_module.default_regression_model(
            4, num_anchors, pyramid_feature_size=width, regression_feature_size=width)),
        ("classification", retinanet_module.default_classification_model(
            len(CLASS_NAMES), num_anchors, pyramid_feature_size=width, classification_feature_size=width)),
    ]
    kwargs = {
        "submodels": submodels,
        "create_pyramid_features": functools.partial(_create_pyramid_features, feature_size=width),
    }
    backbone = config["backbone"]
    if backbone.startswith("resnet"):
        return _resnet_retinanet(backbone, freeze_batch_norm=pretrained, **kwargs)
    return models.backbone(backbone).retinanet(num_classes=len(CLASS_NAMES), **kwargs)


# Predicted probabilities are clipped to [PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON] in the
# focal loss, as Keras clips them in its binary cross-entropy.
PROBABILITY_EPSILON = 1e-7


def focal_loss(alpha: float, gamma: float, epsilon: float = PROBABILITY_EPSILON):
    """Return the focal classification loss FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t).

    It follows keras-retinanet's ``losses.focal``. The last column of ``y_true`` is the anchor
    state (-1 ignored, 0 background, 1 face). The loss sums over the anchors that are not ignored
    and divides by the number of face anchors, at least 1. Unlike keras-retinanet's version it
    clips the probabilities before the power as well as before the logarithm: there the gradient
    of (1 - p)^gamma at a saturated output p = 1 is NaN for gamma below 1, which stops training
    with gamma 0 (alpha-weighted cross-entropy) or 0.5.
    """
    # YAML reads "alpha: 1" as an int, and tf.where cannot mix an int32 branch with float32 ones.
    alpha = float(alpha)
    gamma = float(gamma)

    def _focal(y_true, y_pred):
        labels = y_true[:, :, :-1]
        anchor_state = y_true[:, :, -1]
        scored = tf.where(tf.not_equal(anchor_state, -1))
        labels = tf.gather_nd(labels, scored)
        probabilities = tf.clip_by_value(tf.gather_nd(y_pred, scored), epsilon, 1.0 - epsilon)
        is_face = tf.equal(labels, 1)
        p_t = tf.where(is_face, probabilities, 1.0 - probabilities)
        alpha_t = tf.where(is_face, alpha, 1.0 - alpha)
        loss = -alpha_t * tf.pow(1.0 - p_t, gamma) * tf.math.log(p_t)
        faces = tf.cast(tf.math.count_nonzero(tf.equal(anchor_state, 1)), loss.dtype)
        return tf.reduce_sum(loss) / tf.maximum(faces, 1.0)

    return _focal


def compile_training_model(model, focal: dict, learning_rate, clipnorm: float) -> None:
    """Compile with smooth L1 box regression and focal classification loss (Lin et al., 2017)."""
    model.compile(
        loss={
            "regression": losses.smooth_l1(),
            "classification": focal_loss(alpha=focal["alpha"], gamma=focal["gamma"]),
        },
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=clipnorm),
    )


def preprocess_function(backbone: str):
    """Return the backbone's pixel normalization (caffe for ResNet, tf for MobileNet)."""
    return models.backbone(backbone).preprocess_image


def save_model(model, config: dict, model_dir: Path) -> None:
    """Write ``weights.h5`` and ``model.json`` into ``model_dir`` (created if needed)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_weights(model_dir / WEIGHTS_FILE)
    settings = {key: config[key] for key in MODEL_CONFIG_KEYS}
    settings["classes"] = list(CLASS_NAMES)
    (model_dir / CONFIG_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_model_config(model_dir: Path) -> dict:
    """Read ``model.json`` of a trained model folder."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"{path}: not found; train the detector first (python -m stages.train_detector)")
    config = json.loads(path.read_text(encoding="utf-8"))
    missing = [key for key in MODEL_CONFIG_KEYS if key not in config]
    if missing:
        raise ModelError(f"{path}: missing keys {', '.join(missing)}")
    return config


def load_prediction_model(model_dir: Path, detector_params: dict | None = None, max_detections: int = 100,
                          score_threshold: float = 0.05):
    """Rebuild the network from ``model_dir`` and wrap it to output boxes after NMS.

    ``detector_params`` is accepted for symmetry with training but the folder's model.json wins,
    so a model always runs with the image size it was trained at.
    """
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{weights}: not found")
    training_model = build_training_model(config, pretrained=True)
    training_model.load_weights(weights)
    prediction_model = retinanet_module.retinanet_bbox(
        model=training_model, max_detections=max_detections, score_threshold=score_threshold)
    return Predictor(prediction_model, config)


class Predictor:
    """A prediction model with the preprocessing and scaling it was trained with."""

    def __init__(self, model, config: dict):
        self.model = model
        self.config = config
        self.preprocess = preprocess_function(config["backbone"])

    def __call__(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detect faces in one BGR image (H, W, 3) uint8.

        Returns boxes (K, 4) as x1, y1, x2, y2 in the input image's pixels and scores (K,),
        sorted by descending score.
        """
        image = self.preprocess(image_bgr.astype(np.float32, copy=True))
        image, scale = resize_image(image, min_side=self.config["image_min_side"], max_side=self.config["image_max_side"])
        boxes, scores, _labels = self.model.predict_on_batch(np.expand_dims(image, axis=0))
        boxes = np.asarray(boxes[0], dtype=np.float32) / scale
        scores = np.asarray(scores[0], dtype=np.float32)
        # keras-retinanet pads its output with score -1 up to max_detections.
        keep = scores >= 0
        boxes, scores = boxes[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")
        return boxes[order], scores[order]


def predict_image(model: Predictor, image_bgr: np.ndarray, detector_params: dict | None = None,
                  max_detections: int | None = None, score_threshold: float = 0.0):
    """Detect faces in ``image_bgr``; keep at most ``max_detections`` with score >= ``score_threshold``."""
    boxes, scores = model(image_bgr)
    keep = scores >= score_threshold
    boxes, scores = boxes[keep], scores[keep]
    if max_detections is not None:
        boxes, scores = boxes[:max_detections], scores[:max_detections]
    return boxes, scores


def read_image_bgr(path: Path | str) -> np.ndarray:
    """Read an image as 3-channel BGR uint8, as stored; grayscale and RGBA files are converted.

    The EXIF orientation tag is ignored, because keras-retinanet's training loader (PIL's
    ``Image.open(...).convert("RGB")``) and stages.predict read the pixels as stored. Rotating
    here would put the annotated boxes of a rotated JPEG on the wrong pixels.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ModelError(f"{path}: cannot read image (missing, unreadable or not an image)")
    return image
