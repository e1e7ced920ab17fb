"""Find faces in images, classify each face as happy or not happy, and draw the results.

The predictor chains the project's two final models. The RetinaNet face detector
(``stages.detector``) finds face boxes, and each box is cut out with
``stages.facecrop.square_crop`` using the margin and size the classifier was trained with.
The expression classifier (``stages.classifier``) then returns P(happy) for every crop.

This module contains the model loading, the per-image work and the drawing. The command line
that reads and writes files is ``stages.app`` (the ``emotivelens`` console script).
"""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from stages.errors import DataError, ModelError
from stages.facecrop import square_crop

# The final models that the pipeline writes, relative to the working folder.
DEFAULT_DETECTOR_DIR = Path("data/models/final/detector")
DEFAULT_CLASSIFIER_DIR = Path("data/models/final/classifier")
# The pipeline stages (dvc.yaml and the Snakefile use the same names) that write them.
DETECTOR_STAGE = "train_final_detector"
CLASSIFIER_STAGE = "train_final_classifier"

# Crop framing used when the classifier's model.json does not record it. These equal
# smiles.crop.margin and smiles.crop.size in params.yaml, the settings of the training crops.
DEFAULT_CROP_MARGIN = 0.2
DEFAULT_CROP_SIZE = 128

DEFAULT_FACE_THRESHOLD = 0.5
DEFAULT_HAPPY_THRESHOLD = 0.5
# keras-retinanet keeps at most this many boxes after non-maximum suppression (its default).
DETECTOR_MAX_DETECTIONS = 100
# The detector network fails on an input side of 24 pixels or less (measured with the project's
# MobileNet detector, whose backbone downsamples by 32; 31 pixels worked), so images are padded
# to keep at least this many.
MIN_DETECTOR_INPUT_SIDE = 32
DETECTOR_SIZE_KEYS = ("image_min_side", "image_max_side", "feature_size")

HAPPY_LABEL = "happy"
NOT_HAPPY_LABEL = "not happy"
# BGR colours of the two classes: orange and blue stay apart for red-green colour blindness.
LABEL_COLOURS = {HAPPY_LABEL: (0, 165, 255), NOT_HAPPY_LABEL: (230, 120, 20)}
TEXT_COLOUR = (255, 255, 255)

# Files taken from a folder input; other files there are ignored.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
GLOB_CHARACTERS = frozenset("*?[")


class ImageReadError(DataError):
    """An input image that is missing, unreadable, truncated or not an image."""


@dataclass(frozen=True)
class Face:
    """One detected face: box (x1, y1, x2, y2) in input pixels, detector score, P(happy), label."""

    box: tuple[float, float, float, float]
    face_score: float
    happy_probability: float
    label: str

    def to_dict(self) -> dict:
        """Return the JSON form used in the predictor's outputs."""
        return {
            "box": [round(value, 2) for value in self.box],
            "face_score": round(self.face_score, 6),
            "happy_probability": round(self.happy_probability, 6),
            "label": self.label,
        }


@dataclass(frozen=True)
class CropSettings:
    """Framing of the classifier's input crops (see ``stages.facecrop.square_crop``)."""

    margin: float
    size: int


def label_for(happy_probability: float, happy_threshold: float) -> str:
    """Return "happy" when ``happy_probability`` >= ``happy_threshold``, else "not happy"."""
    return HAPPY_LABEL if happy_probability >= happy_threshold else NOT_HAPPY_LABEL


def crop_settings(classifier_config: dict, source: str) -> CropSettings:
    """Read the crop margin and size from a classifier's model.json settings.

    The keys are ``crop_margin`` and ``crop_size``. A model that lacks them gets
    DEFAULT_CROP_MARGIN and DEFAULT_CROP_SIZE. Raises ModelError naming ``source`` for a
    value of the wrong type or range.
    """
    margin = classifier_config.get("crop_margin", DEFAULT_CROP_MARGIN)
    size = classifier_config.get("crop_size", DEFAULT_CROP_SIZE)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 10:
        raise ModelError(f"{source}: crop_margin is {margin!r}, expected a number from 0 to 10")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ModelError(f"{source}: crop_size is {size!r}, expected a positive integer")
    return CropSettings(float(margin), size)


def check_model_dir(model_dir: Path, what: str, stage: str, flag: str) -> None:
    """Raise ModelError when ``model_dir`` is not a folder, naming the stage that writes it."""
    if not model_dir.is_dir():
        raise ModelError(
            f"{what} folder {model_dir} not found; train it with `dvc repro {stage}` "
            f"(or `snakemake {stage}`) in the project folder, or pass {flag} DIR")


class ExpressionPredictor:
    """Face detector and expression classifier run together on whole images."""

    def __init__(self, detector, classifier, crop: CropSettings, face_threshold: float,
                 happy_threshold: float, max_faces: int | None):
        self.detector = detector
        self.classifier = classifier
        self.crop = crop
        self.face_threshold = face_threshold
        self.happy_threshold = happy_threshold
        self.max_faces = max_faces

    def predict(self, image_bgr: np.ndarray) -> list[Face]:
        """Detect and classify the faces in one BGR uint8 image (H, W, 3).

        Returns the faces with score >= face_threshold, highest score first, at most
        max_faces of them.
        """
        from stages.detector import predict_image

        height, width = image_bgr.shape[:2]
        detector_config = getattr(self.detector, "config", None)
        detector_input = image_bgr
        if detector_config is not None:
            detector_input = pad_for_detector(image_bgr, detector_config["image_min_side"],
                                              detector_config["image_max_side"])
        boxes, scores = predict_image(self.detector, detector_input, max_detections=self.max_faces,
                                      score_threshold=self.face_threshold)
        boxes, scores = clip_boxes(boxes, scores, width, height)
        if len(boxes) == 0:
            return []
        crops = [square_crop(image_bgr, box, self.crop.margin, self.crop.size) for box in boxes]
        probabilities = np.asarray(self.classifier.predict_proba(crops), dtype=np.float64).reshape(-1)
        if probabilities.shape[0] != len(crops):
            raise ModelError(f"the classifier returned {probabilities.shape[0]} probabilities for {len(crops)} crops")
        return [
            Face(tuple(float(value) for value in box), float(score), float(probability),
                 label_for(float(probability), self.happy_threshold))
            for box, score, probability in zip(boxes, scores, probabilities)
        ]


def pad_for_detector(image: np.ndarray, min_side: int, max_side: int) -> np.ndarray:
    """Pad ``image`` with black at the bottom or right so that the detector can run on it.

    keras-retinanet scales an image so that its shorter side becomes ``min_side``, or its
    longer side ``max_side`` when that is smaller. A very long, thin image (10 x 10000
    pixels) would then have a shorter side under MIN_DETECTOR_INPUT_SIDE, or even 0. Such an
    image is padded just enough. Padding at the bottom and right keeps the box coordinates
    of the original image. Any other image is returned unchanged.
    """
    height, width = image.shape[:2]
    shorter, longer = min(height, width), max(height, width)
    scale = min(min_side / shorter, max_side / longer)
    if shorter * scale >= MIN_DETECTOR_INPUT_SIDE:
        return image
    # With the shorter side at least MIN_DETECTOR_INPUT_SIDE * longer / max_side, the scale
    # max_side / longer keeps it at MIN_DETECTOR_INPUT_SIDE or more. One more pixel absorbs rounding.
    padded_side = min(longer, math.ceil(MIN_DETECTOR_INPUT_SIDE * longer / max_side) + 1)
    bottom = padded_side - height if height < width else 0
    right = padded_side - width if width <= height else 0
    return cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_CONSTANT, value=0)


def clip_boxes(boxes: np.ndarray, scores: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes (K, 4) to a ``width`` x ``height`` image; drop boxes left without area, with their scores."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    scores = np.asarray(scores).reshape(-1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], scores[keep]


def check_detector_config(model_dir: Path) -> None:
    """Raise ModelError naming the detector's model.json when a setting has the wrong type or range.

    stages.detector checks only that the keys exist, so a damaged file would otherwise fail
    inside Keras with a traceback.
    """
    from keras_retinanet import models

    path = Path(model_dir) / "model.json"
    if not path.is_file():
        raise ModelError(f"{path}: not found; the detector folder is incomplete, train the detector again")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ModelError(f"{path}: not UTF-8 text ({error})") from None
    except json.JSONDecodeError as error:
        raise ModelError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(config).__name__}")
    backbone = config.get("backbone")
    try:
        models.backbone(backbone if isinstance(backbone, str) else "")
    except (NotImplementedError, ValueError):
        raise ModelError(f"{path}: backbone is {backbone!r}, expected a keras-retinanet backbone name "
                         "such as mobilenet224_0.25 or resnet50") from None
    for key in DETECTOR_SIZE_KEYS:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{path}: {key} is {value!r}, expected a positive integer")
    if config["image_min_side"] > config["image_max_side"]:
        raise ModelError(f"{path}: image_min_side {config['image_min_side']} is larger than "
                         f"image_max_side {config['image_max_side']}")


def load_detector(model_dir: Path, max_detections: int = DETECTOR_MAX_DETECTIONS, score_threshold: float = 0.05):
    """Load the face detector of ``model_dir`` with ``stages.detector.load_prediction_model``.

    Checks model.json first (see ``check_detector_config``). Raises ModelError naming the file
    for an invalid model.json or a weights.h5 that is missing, truncated or of another network.
    """
    from stages.detector import load_prediction_model

    model_dir = Path(model_dir)
    check_detector_config(model_dir)
    try:
        return load_prediction_model(model_dir, max_detections=max_detections, score_threshold=score_threshold)
    except ModelError:
        raise
    except (OSError, ValueError) as error:
        raise ModelError(f"{model_dir / 'weights.h5'}: cannot load the detector weights ({error})") from None


def load_predictor(detector_dir: Path, classifier_dir: Path, face_threshold: float = DEFAULT_FACE_THRESHOLD,
                   happy_threshold: float = DEFAULT_HAPPY_THRESHOLD,
                   max_faces: int | None = None) -> ExpressionPredictor:
    """Load the detector and the classifier from their model folders.

    Raises ModelError naming the folder and the pipeline stage that writes it when a folder
    is missing.
    """
    detector_dir, classifier_dir = Path(detector_dir), Path(classifier_dir)
    check_model_dir(detector_dir, "detector", DETECTOR_STAGE, "--detector")
    check_model_dir(classifier_dir, "classifier", CLASSIFIER_STAGE, "--classifier")

    from stages.classifier import load_classifier

    try:
        classifier = load_classifier(classifier_dir)
    except (TypeError, UnicodeDecodeError) as error:
        # stages.classifier checks the keys of model.json, not every value's type or encoding.
        raise ModelError(f"{classifier_dir / 'model.json'}: damaged classifier settings ({error})") from None
    crop = crop_settings(classifier.config, str(classifier_dir / "model.json"))
    detector = load_detector(detector_dir, max_detections=DETECTOR_MAX_DETECTIONS, score_threshold=face_threshold)
    return ExpressionPredictor(detector, classifier, crop, face_threshold, happy_threshold, max_faces)


def _check_decodes_completely(path: Path) -> None:
    # OpenCV decodes a truncated JPEG without an error (libjpeg fills the rest with grey and
    # prints a warning), so Pillow decodes the file once more to find truncation. Formats
    # that Pillow cannot identify are left to OpenCV alone.
    try:
        with Image.open(path) as image:
            image.load()
    except UnidentifiedImageError:
        return
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{path}: corrupt or truncated image ({error})") from None


def read_image(path: Path) -> np.ndarray:
    """Read ``path`` as a 3-channel BGR uint8 image; grayscale and RGBA files are converted.

    The pixels equal those of keras-retinanet's training loader (``read_image_bgr`` of
    keras-retinanet 1.0, Pillow's ``convert("RGB")``): gray is repeated in the three channels,
    alpha is dropped, and an EXIF orientation tag is ignored, so the image is not rotated.
    Raises ImageReadError naming the file and the reason for a missing file, a folder, a file
    that is not an image, or a truncated or corrupt one.
    """
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise ImageReadError(f"{path}: permission denied")
    # OpenCV applies the EXIF orientation by default, and Pillow, which training uses, does not.
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ImageReadError(f"{path}: not a readable image (OpenCV cannot decode it)")
    _check_decodes_completely(path)
    return image


def _folder_images(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS)


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Turn command-line inputs (files, folders, glob patterns) into a list of image paths.

    A folder contributes its image files (IMAGE_EXTENSIONS, not recursive) in sorted order.
    A glob pattern (``*``, ``?`` or ``[``, and ``**`` to recurse) contributes its sorted matches,
    so quoted patterns work without a shell. A path that matches nothing stays in the list, so reading it reports
    it. A file named by two inputs is listed once. Returns the paths and (input, reason) pairs
    for patterns and folders that gave no image.
    """
    paths: list[Path] = []
    problems: list[tuple[str, str]] = []
    for entry in inputs:
        candidate = Path(entry)
        if candidate.is_dir():
            found = _folder_images(candidate)
            if not found:
                problems.append((entry, f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder"))
        elif not candidate.exists() and GLOB_CHARACTERS & set(entry):
            found = []
            for match in sorted(glob.glob(entry, recursive=True)):
                match_path = Path(match)
                found.extend(_folder_images(match_path) if match_path.is_dir() else [match_path])
            if not found:
                problems.append((entry, "no files match this pattern"))
        else:
            found = [candidate]
        paths.extend(found)

    unique: list[Path] = []
    seen: set[str] = set()
    for path in paths:
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique, problems


def split_by_folder(paths: Sequence[Path], folder: Path) -> tuple[list[Path], list[Path]]:
    """Split ``paths`` into those outside ``folder`` and those inside it at any depth.

    Symbolic links are resolved first, so a path is inside ``folder`` when its file is.
    """
    resolved_folder = Path(folder).resolve()
    outside: list[Path] = []
    inside: list[Path] = []
    for path in paths:
        (inside if Path(path).resolve().is_relative_to(resolved_folder) else outside).append(path)
    return outside, inside


def output_names(paths: Sequence[Path]) -> list[str]:
    """Return one output name (file name without extension) per input path, all different.

    A name is the input's stem. When several inputs share a stem (``a/x.jpg`` and ``b/x.png``),
    the first keeps it and the others get ``-2``, ``-3`` and so on, skipping names that another
    input's own stem takes. Names are compared case-insensitively, because outputs on a
    case-insensitive file system would otherwise replace each other.
    """
    stems = [path.stem or "image" for path in paths]
    taken = {stem.casefold() for stem in stems}
    used: set[str] = set()
    names = []
    for stem in stems:
        name = stem
        counter = 1
        while name.casefold() in used or (name != stem and name.casefold() in taken):
            counter += 1
            name = f"{stem}-{counter}"
        used.add(name.casefold())
        names.append(name)
    return names


def image_record(image_path: Path, image: np.ndarray, faces: Iterable[Face], detector_dir: Path,
                 classifier_dir: Path) -> dict:
    """Return the JSON record of one predicted image (see ``stages.app`` for the schema)."""
    height, width = image.shape[:2]
    return {
        "image": str(image_path),
        "width": int(width),
        "height": int(height),
        "faces": [face.to_dict() for face in faces],
        "detector": str(detector_dir),
        "classifier": str(classifier_dir),
    }


def _drawing_scale(image: np.ndarray) -> tuple[int, float]:
    # Lines and text grow with the image, so they stay readable on a 4000-pixel photo and
    # do not cover a 100-pixel one.
    shorter_side = min(image.shape[:2])
    thickness = max(1, round(shorter_side / 300))
    font_scale = max(0.35, shorter_side / 900)
    return thickness, font_scale


def _draw_label(image: np.ndarray, text: str, anchor: tuple[int, int], colour, font_scale: float,
                thickness: int) -> None:
    # The text sits on a filled box of the face's colour above ``anchor``, or below it when
    # there is no room above.
    (text_width, text_height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    x, y = anchor
    # Keep the label inside the image when the face touches the right edge.
    x = max(0, min(x, image.shape[1] - text_width - 2 * thickness))
    top = y - text_height - baseline - 2 * thickness
    if top < 0:
        top = y
    bottom = top + text_height + baseline + 2 * thickness
    cv2.rectangle(image, (x, top), (x + text_width + 2 * thickness, bottom), colour, cv2.FILLED)
    cv2.putText(image, text, (x + thickness, bottom - baseline - thickness), cv2.FONT_HERSHEY_SIMPLEX,
                font_scale, TEXT_COLOUR, thickness, cv2.LINE_AA)


def annotate(image_bgr: np.ndarray, faces: Iterable[Face], fps: float | None = None) -> np.ndarray:
    """Return a copy of ``image_bgr`` with a box and a "happy 0.87" label per face.

    The number is P(happy) for both labels, and the colour shows the label. With ``fps``, the
    frame rate is written in the top left corner.
    """
    annotated = image_bgr.copy()
    thickness, font_scale = _drawing_scale(annotated)
    for face in faces:
        colour = LABEL_COLOURS[face.label]
        x1, y1, x2, y2 = (int(round(value)) for value in face.box)
        cv2.rectangle(annotated, (x1, y1), (x2, y2), colour, thickness)
        _draw_label(annotated, f"{face.label} {face.happy_probability:.2f}", (x1, y1), colour, font_scale, thickness)
    if fps is not None:
        _draw_label(annotated, f"FPS {fps:.1f}", (0, 0), (40, 40, 40), font_scale, thickness)
    return annotated


def _current_umask() -> int:
    # os.umask can only be read by setting it, so set it and put it back at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def encode_jpeg(image_bgr: np.ndarray, quality: int = 92) -> bytes:
    """Encode a BGR image as JPEG bytes."""
    ok, buffer = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError(f"OpenCV failed to encode an image of shape {image_bgr.shape} as JPEG")
    return buffer.tobytes()


def to_json_line(record: dict) -> str:
    """Return ``record`` as one line of JSON (for JSON Lines files)."""
    return json.dumps(record) + "\n"
