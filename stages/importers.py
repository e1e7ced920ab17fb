"""Read face annotations in several formats into one table, check them, and write keras-retinanet CSV.

Every source becomes a ``Dataset``: a list of ``ImageEntry`` (one per image file, with zero or
more ``Face`` boxes in integer pixels), the class mapping, and the ``Problem`` list that the
checks found. Readers:

- ``read_csv``: a keras-retinanet annotation CSV (``path,x1,y1,x2,y2,class_name``, no header,
  ``path,,,,,`` for an image without faces) and its class CSV (``class_name,id``);
- ``read_voc``: a folder of Pascal VOC XML files and the folder of their images;
- ``read_fddb``: FDDB fold files (``FDDB-fold-NN.txt`` and ``FDDB-fold-NN-ellipseList.txt``) and
  the folder of the FDDB images; each ellipse becomes the tight box of the rotated ellipse;
- the Caltech archive (``ImageData.mat``) is read by ``stages.convert.read_caltech``.

Coordinates are 0-based pixel edges: a box (x1, y1, x2, y2) covers x1 <= x < x2, and a box
that covers the whole image is (0, 0, width, height).

Validation policy, one row per case. "fixed" and "dropped" are counted and logged as a warning,
"error" stops the conversion (all errors are listed, not only the first):

=========================================  ========  ==================================================
Case                                       Action    What happens
=========================================  ========  ==================================================
integer written as float (``210.0``)       fixed     read as the integer
fractional coordinate (``210.4``)          fixed     rounded outward: floor x1 and y1, ceil x2 and y2
box without area (x2 == x1 or y2 == y1)    dropped   the face is left out, the image is kept (see
                                                     "image with every box left out")
corners in the wrong order (x2 < x1)       error     keras-retinanet rejects such rows too
x and y swapped                            error     the box reaches past the right or bottom edge,
                                                     less than half of it is inside, and its
                                                     transpose (y1, x1, y2, x2) fits the image
box partly outside the image               fixed     clipped to [0, width] x [0, height]
box wholly outside the image               dropped   the face is left out, the image is kept
background row ``path,,,,,``               (none)    kept as an image without faces, not a problem
background row of an image with faces      fixed     the row is ignored, the image keeps its faces
class name with stray spaces or other case fixed     replaced by the name in the class mapping
unknown class name                         error     the name matches no mapping entry
VOC <name> empty or only spaces            error     the object's class is unknown
VOC object of a class not in the mapping   dropped   with a class CSV, objects of other classes (person,
                                                     car, ...) are left out; an image with no face left
                                                     is dropped as below
duplicate name or id in the class mapping  error     names compared after stripping and case folding
class mapping name with stray spaces       fixed     stripped
Windows path separator (``a\\b.jpg``)       fixed     replaced by ``/``
image path                                 (none)    resolved against the CSV's folder (or the
                                                     images folder), never the working folder
missing image                              dropped   the image and its faces are left out
image cut short or not decodable           dropped   the image and its faces are left out
image mode other than RGB (L, RGBA, ...)   fixed     kept, and every loader converts it to 3-channel RGB
VOC size differs from the image            error     boxes may be scaled for another image
VOC size missing or zero                   fixed     the image's own size is used
image with every box left out              dropped   not kept as an image without faces, where every
                                                     detection would count as a false positive
malformed row, XML or fold file            error     wrong field count, invalid number, bad nesting
blank CSV line                             fixed     skipped
the same image in several rows or files    (none)    one image with several faces
the same box twice on one image            dropped   the second copy is left out, because it would
                                                     count as a face that no detection can match
image with 16-bit or float pixels          error     Pillow's RGB conversion clips it to 0..255
class mapping other than one class id 0    error     the detector has one output class
empty annotation CSV                       error     nothing to convert
file that is not UTF-8 text                error     the line of the first invalid byte is named
FDDB angle outside [-pi/2, pi/2]           error     probably degrees, as FDDB uses radians
FDDB image listed twice                    error     in one fold or in two folds
FDDB face count unlike its face lines      error     reading goes on at the next image line
VOC <object> not directly in <annotation>  error     wrong nesting
VOC file with several <size> elements      error     the image size is ambiguous
VOC file with a DTD or entities            error     defusedxml rejects them (no entity expansion)
=========================================  ========  ==================================================

The Caltech archive and FDDB store float coordinates by design, so their rounding is not
reported as a problem.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from defusedxml import DefusedXmlException, ElementTree
from PIL import Image
from tqdm import tqdm

from stages.errors import DataError

logger = logging.getLogger(__name__)

FIXED = "fixed"
DROPPED = "dropped"
ERROR = "error"

# Case names, as printed by ``emotivelens validate`` and counted in the log.
INTEGER_AS_FLOAT = "integer written as float"
FRACTIONAL_COORDINATE = "fractional coordinate"
BOX_WITHOUT_AREA = "box without area"
CORNER_ORDER = "corners in the wrong order"
SWAPPED_XY = "x and y swapped"
PARTLY_OUTSIDE = "box partly outside the image"
WHOLLY_OUTSIDE = "box wholly outside the image"
CLASS_NAME_SPELLING = "class name with stray spaces or other case"
UNKNOWN_CLASS = "unknown class name"
OTHER_CLASS = "VOC object of a class not in the mapping"
DUPLICATE_CLASS = "duplicate class in the mapping"
MAPPING_SPACES = "class mapping name with stray spaces"
WINDOWS_SEPARATOR = "Windows path separator"
MISSING_IMAGE = "missing image"
UNREADABLE_IMAGE = "image cut short or not decodable"
NOT_RGB = "image mode other than RGB"
SIZE_MISMATCH = "VOC size differs from the image"
SIZE_MISSING = "VOC size missing or zero"
NO_FACE_LEFT = "image with every box left out"
MALFORMED = "malformed input"
BLANK_LINE = "blank CSV line"
BACKGROUND_WITH_FACES = "background row of an image with faces"
DUPLICATE_BOX = "duplicate box"
HIGH_BIT_DEPTH = "image with more than 8 bits per channel"
UNSUPPORTED_CLASSES = "class mapping other than one class with id 0"
FDDB_ANGLE = "FDDB angle outside [-pi/2, pi/2]"

# Warnings log this many examples per case after the count.
LOGGED_EXAMPLES = 3
CSV_FIELDS = 6
FDDB_FACE_FIELDS = 6
FDDB_FOLD_PATTERN = re.compile(r"^FDDB-fold-(\d+)\.txt$")
FDDB_IMAGE_SUFFIX = ".jpg"
FDDB_CLASS = "face"
RGB_MODE = "RGB"
# Pillow's convert("RGB") clips these modes to 0..255 instead of scaling them, so keras-retinanet's
# CSVGenerator turns every pixel above 255 of a 16-bit image white (checked with Pillow 13.0).
HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# The FDDB fold files give every angle in [-pi/2, pi/2] radians. The slack covers their 6 decimals.
FDDB_MAX_ANGLE = math.pi / 2 + 1e-3


@dataclass(frozen=True)
class Face:
    """One face box in integer pixels after rounding and clipping, and the line it came from."""

    x1: int
    y1: int
    x2: int
    y2: int
    class_name: str
    source: str
    clipped: bool = False


@dataclass
class ImageEntry:
    """One image file and its faces. ``faces`` is empty for an image without faces (a background image).

    ``key`` is the image's posix path relative to the dataset root, and ``source`` is the first
    line that names the image. ``width`` and ``height`` are in pixels. ``group`` is the fold or
    person id that the format brings: the FDDB fold number, or None for other formats.
    """

    key: str
    path: Path
    width: int | None
    height: int | None
    faces: list[Face]
    group: int | None
    source: str


@dataclass(frozen=True)
class Problem:
    """A problem found in the input: its case, where (``FILE line N``), the value and the action taken."""

    case: str
    where: str
    value: str
    action: str
    message: str

    def line(self) -> str:
        """Return ``where: case: value: action (message)``, the form ``emotivelens validate`` prints."""
        return f"{self.where}: {self.case}: {self.value}: {self.action} ({self.message})"


@dataclass
class Dataset:
    """Images with their faces, the class mapping (name -> id) and every problem found."""

    images: list[ImageEntry]
    classes: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    # Keys of every image the annotations name, and of those whose file does not exist.
    listed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def errors(self) -> list[Problem]:
        """Return the problems whose action is ``error``."""
        return [problem for problem in self.problems if problem.action == ERROR]


@dataclass
class RawBox:
    """A box as read, in float pixel edges, before the image checks round and clip it."""

    box: tuple[float, float, float, float]
    class_name: str
    source: str


@dataclass
class PendingImage:
    """An image and its raw boxes, gathered from every row or file that names it."""

    key: str
    path: Path
    group: int | None
    source: str
    boxes: list[RawBox] = field(default_factory=list)
    declared_size: tuple[int, int] | None = None
    # Objects left out because their class is not in the mapping (VOC with a class CSV).
    other_objects: int = 0


class ProblemLog:
    """Problems collected while a reader runs."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, case: str, where: str, value: object, action: str, message: str) -> None:
        self.problems.append(Problem(case, where, str(value), action, message))


# --- boxes -------------------------------------------------------------------------------


def ellipse_box(
    major_radius: float, minor_radius: float, angle_rad: float, center_x: float, center_y: float
) -> tuple[float, float, float, float]:
    """Return the tight axis-aligned box (x1, y1, x2, y2) of a rotated ellipse, in pixels.

    The ellipse has semi-axes ``major_radius`` (a) and ``minor_radius`` (b), and the a axis is
    rotated by ``angle_rad`` (t) from the x axis. The extreme points of the parametric ellipse
    give half-width sqrt(a^2 cos^2 t + b^2 sin^2 t) and half-height sqrt(a^2 sin^2 t + b^2 cos^2 t).
    FDDB ellipse lists use this parameterization (Jain and Learned-Miller, FDDB technical report
    UM-CS-2010-009, 2010).
    """
    cos_t = math.cos(angle_rad)
    sin_t = math.sin(angle_rad)
    half_width = math.sqrt((major_radius * cos_t) ** 2 + (minor_radius * sin_t) ** 2)
    half_height = math.sqrt((major_radius * sin_t) ** 2 + (minor_radius * cos_t) ** 2)
    return (center_x - half_width, center_y - half_height, center_x + half_width, center_y + half_height)


def round_outward(box: Sequence[float]) -> tuple[int, int, int, int]:
    """Round a float box to the smallest integer box that contains it: floor x1 and y1, ceil x2 and y2."""
    x1, y1, x2, y2 = box
    return math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)


def clip_box(box: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """Clip an integer box to [0, width] x [0, height]."""
    x1, y1, x2, y2 = box
    return (min(max(x1, 0), width), min(max(y1, 0), height), min(max(x2, 0), width), min(max(y2, 0), height))


def _area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def looks_swapped(box: Sequence[float], width: int, height: int) -> bool:
    """Return True when x and y of ``box`` were probably swapped.

    That is the case when the box reaches past the right or bottom edge, less than half of its
    area is inside the image, and the transposed box (y1, x1, y2, x2) lies wholly inside it.
    A swap cannot make a coordinate negative, so boxes that reach past the left or top edge
    only are clipped instead.
    """
    x1, y1, x2, y2 = box
    if min(box) < 0 or (x2 <= width and y2 <= height):
        return False
    inside = _area((x1, y1, min(x2, width), min(y2, height)))
    transpose_fits = y2 <= width and x2 <= height
    return transpose_fits and inside < 0.5 * _area(box)


def format_box(box: Sequence[float]) -> str:
    """Format a box as ``x1=.. y1=.. x2=.. y2=..``, floats with up to 6 significant digits."""
    return " ".join(f"{name}={value:.6g}" for name, value in zip(("x1", "y1", "x2", "y2"), box))


def check_box(raw: RawBox, width: int, height: int, log: ProblemLog) -> Face | None:
    """Round and clip one box to its image by the policy of this module; return None if it is left out."""
    value = format_box(raw.box)
    x1, y1, x2, y2 = raw.box
    if x2 < x1 or y2 < y1:
        log.add(CORNER_ORDER, raw.source, value, ERROR, "expected x1 <= x2 and y1 <= y2, so swap the corners")
        return None
    if looks_swapped(raw.box, width, height):
        log.add(SWAPPED_XY, raw.source, value, ERROR,
                f"the box does not fit the {width}x{height} image but its transpose does, "
                "so write the columns in the order x1,y1,x2,y2")
        return None
    rounded = round_outward(raw.box)
    if rounded[2] <= rounded[0] or rounded[3] <= rounded[1]:
        log.add(BOX_WITHOUT_AREA, raw.source, value, DROPPED, "x2 must be greater than x1 and y2 greater than y1")
        return None
    clipped = clip_box(rounded, width, height)
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        log.add(WHOLLY_OUTSIDE, raw.source, value, DROPPED, f"no part of the box is inside the {width}x{height} image")
        return None
    if clipped != rounded:
        log.add(PARTLY_OUTSIDE, raw.source, value, FIXED, f"clipped to the {width}x{height} image: {format_box(clipped)}")
    return Face(*clipped, class_name=raw.class_name, source=raw.source, clipped=clipped != rounded)


# --- images ------------------------------------------------------------------------------


def inspect_image(path: Path) -> tuple[int, int, str]:
    """Decode the whole image and return (width, height, mode); raise OSError if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size[0], image.size[1], image.mode
    except (SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise OSError(str(error)) from error


def check_image(pending: PendingImage, log: ProblemLog) -> ImageEntry | None:
    """Read the image of ``pending`` and check its boxes; return None if the image is left out."""
    if not pending.path.is_file():
        log.add(MISSING_IMAGE, pending.source, pending.path, DROPPED,
                f"image file not found, boxes left out: {len(pending.boxes)}")
        return None
    try:
        width, height, mode = inspect_image(pending.path)
    except OSError as error:
        log.add(UNREADABLE_IMAGE, pending.source, pending.path, DROPPED,
                f"{error}, boxes left out: {len(pending.boxes)}")
        return None
    if mode in HIGH_BIT_MODES:
        log.add(HIGH_BIT_DEPTH, pending.source, f"{pending.path} mode {mode}", ERROR,
                "the training loader clips it to 8 bits, so convert it to 8-bit RGB or grayscale first")
        return None
    if mode != RGB_MODE:
        log.add(NOT_RGB, pending.source, f"{pending.path} mode {mode}", FIXED,
                "kept, because the training and prediction loaders convert it to 3-channel RGB")
    if pending.declared_size is not None:
        declared_width, declared_height = pending.declared_size
        if declared_width <= 0 or declared_height <= 0:
            log.add(SIZE_MISSING, pending.source, f"{declared_width}x{declared_height}", FIXED,
                    f"used the image's own size {width}x{height}")
        elif (declared_width, declared_height) != (width, height):
            log.add(SIZE_MISMATCH, pending.source, f"{declared_width}x{declared_height}", ERROR,
                    f"{pending.path} is {width}x{height}, so fix the size or the boxes")
            return None
    checked = [face for face in (check_box(raw, width, height, log) for raw in pending.boxes) if face is not None]
    faces = drop_duplicate_faces(checked, log)
    if (pending.boxes or pending.other_objects) and not faces:
        # Kept, the image would read as one without faces, and every detection on it would count
        # as a false positive (a face that was never annotated, next to a person, included).
        log.add(NO_FACE_LEFT, pending.source, pending.path, DROPPED,
                f"all {len(pending.boxes) + pending.other_objects} of its boxes were dropped, rejected "
                "or of other classes")
        return None
    return ImageEntry(pending.key, pending.path, width, height, faces, pending.group, pending.source)


def drop_duplicate_faces(faces: Sequence[Face], log: ProblemLog) -> list[Face]:
    """Return ``faces`` without repeats of the same integer box and class, each repeat logged as dropped."""
    first_source: dict[tuple[int, int, int, int, str], str] = {}
    kept = []
    for face in faces:
        key = (face.x1, face.y1, face.x2, face.y2, face.class_name)
        if key in first_source:
            log.add(DUPLICATE_BOX, face.source, format_box(key[:4]), DROPPED, f"same box as {first_source[key]}")
            continue
        first_source[key] = face.source
        kept.append(face)
    return kept


def check_images(pending: Iterable[PendingImage], classes: dict[str, int], log: ProblemLog) -> Dataset:
    """Decode every image and round, clip and check its boxes; return the dataset with all problems."""
    pending = list(pending)
    images = []
    # The context manager closes the bar before an error propagates, so the error message is printed last.
    with tqdm(pending, desc="check images", unit="image") as bar:
        for item in bar:
            entry = check_image(item, log)
            if entry is not None:
                images.append(entry)
    missing = [item.key for item in pending if not item.path.is_file()]
    return Dataset(images, classes, log.problems, [item.key for item in pending], missing)


# --- coordinates, classes and paths ------------------------------------------------------


def parse_coordinate(text: str, name: str, where: str, log: ProblemLog) -> float | None:
    """Parse one coordinate; record a float written for an integer, a fraction, or an invalid number."""
    stripped = text.strip()
    try:
        value = float(stripped)
    except ValueError:
        log.add(MALFORMED, where, f"{name}={text!r}", ERROR, f"{name} must be a number of pixels")
        return None
    if not math.isfinite(value):
        log.add(MALFORMED, where, f"{name}={text!r}", ERROR, f"{name} must be a finite number of pixels")
        return None
    if re.fullmatch(r"[+-]?\d+", stripped):
        return value
    if value.is_integer():
        log.add(INTEGER_AS_FLOAT, where, f"{name}={text}", FIXED, f"read as {int(value)}")
    else:
        log.add(FRACTIONAL_COORDINATE, where, f"{name}={text}", FIXED,
                "rounded outward (floor for x1 and y1, ceil for x2 and y2)")
    return value


def match_class(name: str, classes: dict[str, int], where: str, log: ProblemLog) -> str | None:
    """Return the mapping's spelling of ``name``; record a respelled or unknown name."""
    if name in classes:
        return name
    folded = {known.casefold(): known for known in classes}
    known = folded.get(name.strip().casefold())
    if known is None:
        log.add(UNKNOWN_CLASS, where, repr(name), ERROR,
                f"not in the class mapping ({', '.join(sorted(classes)) or 'empty'})")
        return None
    log.add(CLASS_NAME_SPELLING, where, repr(name), FIXED, f"replaced by {known!r} from the class mapping")
    return known


def read_classes(path: Path, log: ProblemLog) -> dict[str, int]:
    """Read a keras-retinanet class CSV (``class_name,id`` per line) into name -> id."""
    classes: dict[str, int] = {}
    seen_names: dict[str, str] = {}
    seen_ids: dict[int, str] = {}
    try:
        rows = _read_csv_rows(path)
    except OSError as error:
        raise DataError(f"{path}: cannot read the class mapping: {error.strerror or error}") from None
    for number, row in rows:
        where = f"{path} line {number}"
        if not row:
            continue
        if len(row) != 2:
            log.add(MALFORMED, where, ",".join(row), ERROR, "expected 'class_name,id'")
            continue
        raw_name, raw_id = row
        name = raw_name.strip()
        if name != raw_name:
            log.add(MAPPING_SPACES, where, repr(raw_name), FIXED, f"stripped to {name!r}")
        try:
            class_id = int(raw_id)
        except ValueError:
            log.add(MALFORMED, where, f"id={raw_id!r}", ERROR, "the class id must be an integer")
            continue
        if not name:
            log.add(MALFORMED, where, ",".join(row), ERROR, "the class name is empty")
            continue
        if class_id < 0:
            log.add(MALFORMED, where, f"id={class_id}", ERROR, "the class id must be 0 or greater")
            continue
        folded = name.casefold()
        if folded in seen_names:
            log.add(DUPLICATE_CLASS, where, repr(raw_name), ERROR, f"same name as {seen_names[folded]}")
            continue
        if class_id in seen_ids:
            log.add(DUPLICATE_CLASS, where, f"id={class_id}", ERROR, f"same id as {seen_ids[class_id]}")
            continue
        seen_names[folded] = where
        seen_ids[class_id] = where
        classes[name] = class_id
    if not classes and not log.problems:
        log.add(MALFORMED, str(path), "empty", ERROR, "the class mapping has no classes")
    return classes


def check_detector_classes(classes: dict[str, int], where: str, log: ProblemLog) -> None:
    """Record an error unless ``classes`` is one class with id 0, the only mapping the detector can train.

    keras-retinanet's CSVGenerator.num_classes is the largest id + 1, and stages.detector builds a
    model with one output class. Any other mapping makes training fail on a shape mismatch, or with
    id -1 write the labels into the anchor-state column of the targets.
    """
    if not classes or list(classes.values()) == [0]:
        return
    found = "; ".join(f"{name},{class_id}" for name, class_id in sorted(classes.items(), key=lambda item: item[1]))
    log.add(UNSUPPORTED_CLASSES, where, found, ERROR,
            "the detector has one output class, so the mapping must be a single line such as 'face,0'")


def resolve_image_path(text: str, root: Path, where: str, log: ProblemLog) -> tuple[str, Path]:
    """Return (key, path) of an image named in an annotation file, relative to ``root``.

    Windows separators become ``/``. A relative path is resolved against ``root`` (the folder
    of the annotation CSV or the images folder), never against the working folder.
    """
    if "\\" in text:
        fixed = text.replace("\\", "/")
        log.add(WINDOWS_SEPARATOR, where, text, FIXED, f"read as {fixed}")
        text = fixed
    path = Path(text)
    if path.is_absolute():
        # normpath, so that /data/x/../a.jpg and /data/a.jpg are one image, as relative paths are.
        normalized = Path(os.path.normpath(text))
        return normalized.as_posix(), normalized
    return Path(os.path.normpath(text)).as_posix(), root / path


def read_utf8(path: Path) -> str:
    """Return the text of ``path`` without a byte order mark; raise DataError naming the line of invalid UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line}: byte {data[error.start]:#04x} is not valid UTF-8, so save the file as UTF-8"
        ) from None


def _read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    # csv.reader's line_num counts physical lines, so quoted fields with newlines keep true numbers.
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""))
    return [(reader.line_num, row) for row in reader]


# --- readers -----------------------------------------------------------------------------


def read_csv(annotations: Path, classes_csv: Path | None = None) -> Dataset:
    """Read a keras-retinanet annotation CSV and its class CSV into a checked Dataset.

    ``classes_csv`` defaults to ``classes.csv`` next to the annotation CSV.
    """
    log = ProblemLog()
    classes_csv = classes_csv if classes_csv is not None else annotations.parent / "classes.csv"
    classes = read_classes(classes_csv, log)
    check_detector_classes(classes, str(classes_csv), log)
    try:
        rows = _read_csv_rows(annotations)
    except OSError as error:
        raise DataError(f"{annotations}: cannot read the annotations: {error.strerror or error}") from None
    if not any(value.strip() for _, row in rows for value in row):
        log.add(MALFORMED, str(annotations), "no rows", ERROR, "the annotation CSV lists no images")

    pending: dict[str, PendingImage] = {}
    background_rows: dict[str, str] = {}
    for number, row in tqdm(rows, desc="read CSV", unit="row"):
        where = f"{annotations} line {number}"
        if not row or all(not value.strip() for value in row):
            log.add(BLANK_LINE, where, repr(",".join(row)), FIXED, "skipped")
            continue
        if len(row) != CSV_FIELDS:
            log.add(MALFORMED, where, ",".join(row), ERROR,
                    f"{len(row)} fields, expected 'path,x1,y1,x2,y2,class_name' or 'path,,,,,'")
            continue
        key, path = resolve_image_path(row[0], annotations.parent, where, log)
        if all(not value.strip() for value in row[1:]):
            pending.setdefault(key, PendingImage(key, path, None, where))
            background_rows.setdefault(key, where)
            continue
        # A row with an error adds no image, so a header line does not also report a missing image "path".
        raw = _parse_csv_box(row, where, classes, log)
        if raw is not None:
            pending.setdefault(key, PendingImage(key, path, None, where)).boxes.append(raw)
    for key, where in background_rows.items():
        if pending[key].boxes:
            log.add(BACKGROUND_WITH_FACES, where, key, FIXED,
                    f"ignored: other rows give the image {len(pending[key].boxes)} face(s)")
    return check_images(pending.values(), classes, log)


def _parse_csv_box(row: list[str], where: str, classes: dict[str, int], log: ProblemLog) -> RawBox | None:
    names = ("x1", "y1", "x2", "y2")
    values = [parse_coordinate(text, name, where, log) for text, name in zip(row[1:5], names)]
    class_name = match_class(row[5], classes, where, log)
    if any(value is None for value in values) or class_name is None:
        return None
    return RawBox(tuple(values), class_name, where)


def _xml_text(element, tag: str, where: str, log: ProblemLog) -> str | None:
    child = element.find(tag)
    if child is None or child.text is None:
        log.add(MALFORMED, where, f"<{tag}> missing", ERROR, f"expected a <{tag}> element with a value")
        return None
    return child.text.strip()


def read_voc(xml_dir: Path, images_dir: Path | None = None, classes_csv: Path | None = None) -> Dataset:
    """Read a folder of Pascal VOC XML files into a checked Dataset.

    Image files are ``images_dir / <filename>`` (default: the XML folder). VOC pixel indices
    are 1-based and inclusive (VOC development kit documentation), so the box edges are
    (xmin - 1, ymin - 1, xmax, ymax). keras-retinanet's own VOC reader subtracts 1 from xmax
    and ymax too, one pixel less on the right and bottom. Without ``classes_csv`` the classes
    are the object names found, sorted, with ids 0, 1, ... Names that differ only in case are one
    class, spelled as the first of them in sorted order, and the other spellings are fixed to it.
    With ``classes_csv``, objects of classes it does not list are left out (counted as dropped).
    """
    log = ProblemLog()
    images_dir = images_dir if images_dir is not None else xml_dir
    xml_files = sorted(xml_dir.glob("*.xml"))
    if not xml_files:
        raise DataError(f"{xml_dir}: no .xml files found, expected Pascal VOC annotation files")

    parsed = []
    for xml_path in tqdm(xml_files, desc="read VOC", unit="file"):
        try:
            root = ElementTree.parse(xml_path).getroot()
        except ElementTree.ParseError as error:
            line, column = error.position
            log.add(MALFORMED, f"{xml_path} line {line}", f"column {column}", ERROR, f"invalid XML: {error}")
            continue
        except DefusedXmlException as error:
            log.add(MALFORMED, str(xml_path), repr(error), ERROR,
                    "DTDs and entities are not read, so write the values in place")
            continue
        parsed.append((xml_path, root))

    if classes_csv is not None:
        classes = read_classes(classes_csv, log)
        check_detector_classes(classes, str(classes_csv), log)
    else:
        names = sorted({(obj.findtext("name") or "").strip() for _, root in parsed for obj in root.iter("object")})
        names = sorted({name.casefold(): name for name in reversed(names)}.values())
        classes = {name: class_id for class_id, name in enumerate(name for name in names if name)}
        if len(classes) > 1:
            log.add(UNSUPPORTED_CLASSES, str(xml_dir), ", ".join(classes), ERROR,
                    "the detector has one output class: give a class CSV with the face class only, "
                    "such as 'face,0', and objects of the other classes are left out")

    pending: dict[str, PendingImage] = {}
    for xml_path, root in parsed:
        _read_voc_file(xml_path, root, images_dir, classes, pending, log, skip_other_classes=classes_csv is not None)
    return check_images(pending.values(), classes, log)


def _read_voc_file(xml_path: Path, root, images_dir: Path, classes: dict[str, int],
                   pending: dict[str, PendingImage], log: ProblemLog, skip_other_classes: bool) -> None:
    filename = _xml_text(root, "filename", str(xml_path), log)
    if filename is None:
        return
    if len(root.findall("size")) > 1:
        log.add(MALFORMED, f"{xml_path} <size>", f"{len(root.findall('size'))} elements", ERROR,
                "expected one <size> element")
        return
    top_level = set(root.findall("object"))
    nested = [obj for obj in root.iter("object") if obj not in top_level]
    if nested:
        log.add(MALFORMED, f"{xml_path} <object>", f"{len(nested)} nested", ERROR,
                "every <object> must be a direct child of <annotation>")
        return
    key, path = resolve_image_path(filename, images_dir, f"{xml_path} <filename>", log)
    image = pending.setdefault(key, PendingImage(key, path, None, str(xml_path)))
    width = root.findtext("size/width")
    height = root.findtext("size/height")
    try:
        declared = (int(float(width or 0)), int(float(height or 0)))
    except ValueError:
        log.add(MALFORMED, f"{xml_path} <size>", f"{width}x{height}", ERROR, "width and height must be numbers")
        return
    image.declared_size = declared

    for index, obj in enumerate(root.iter("object"), start=1):
        where = f"{xml_path} object {index}"
        name = _xml_text(obj, "name", where, log)
        if name == "":
            log.add(MALFORMED, where, "<name> empty", ERROR, "every object needs a class name")
            continue
        if name is not None and skip_other_classes and name.casefold() not in {known.casefold() for known in classes}:
            # Checked before the box, which is never used.
            log.add(OTHER_CLASS, where, repr(name), DROPPED, f"left out: the class mapping lists {', '.join(classes)}")
            image.other_objects += 1
            continue
        box = obj.find("bndbox")
        if box is None:
            log.add(MALFORMED, where, "<bndbox> missing", ERROR, "expected <bndbox> with xmin, ymin, xmax, ymax")
            continue
        texts = [_xml_text(box, tag, where, log) for tag in ("xmin", "ymin", "xmax", "ymax")]
        if name is None or any(text is None for text in texts):
            continue
        values = [parse_coordinate(text, tag, where, log) for text, tag in zip(texts, ("xmin", "ymin", "xmax", "ymax"))]
        class_name = match_class(name, classes, where, log)
        if any(value is None for value in values) or class_name is None:
            continue
        xmin, ymin, xmax, ymax = values
        image.boxes.append(RawBox((xmin - 1, ymin - 1, xmax, ymax), class_name, where))


def fddb_fold_files(folds_dir: Path) -> list[tuple[int, Path, Path]]:
    """Return (fold number, image list, ellipse list) for every ``FDDB-fold-NN.txt`` in ``folds_dir``."""
    folds = []
    for path in sorted(folds_dir.glob("FDDB-fold-*.txt")):
        match = FDDB_FOLD_PATTERN.match(path.name)
        if match is None:
            continue
        ellipses = path.with_name(f"{path.stem}-ellipseList.txt")
        if not ellipses.is_file():
            raise DataError(f"{path}: the matching ellipse list {ellipses.name} is not found")
        folds.append((int(match.group(1)), path, ellipses))
    if not folds:
        raise DataError(f"{folds_dir}: no FDDB-fold-NN.txt files found")
    return folds


def read_fddb(folds_dir: Path, images_dir: Path) -> Dataset:
    """Read FDDB fold files into a checked Dataset; each image's group is its FDDB fold number.

    Each ellipse-list entry is a path line without ``.jpg`` (``2002/08/11/big/img_591``), a
    face count, and one line ``major_radius minor_radius angle center_x center_y 1`` per face,
    the angle in radians. Each ellipse becomes the tight box of ``ellipse_box``, rounded
    outward and clipped to the image. The image order must equal the fold's image list.
    """
    log = ProblemLog()
    pending: dict[str, PendingImage] = {}
    for fold, list_path, ellipse_path in fddb_fold_files(folds_dir):
        listed = [line.strip() for line in read_utf8(list_path).splitlines() if line.strip()]
        entries = _read_ellipse_list(ellipse_path, log)
        names = [name for name, _, _ in entries]
        if names != listed:
            first = next((i for i, (a, b) in enumerate(zip(names, listed)) if a != b), min(len(names), len(listed)))
            log.add(MALFORMED, f"{list_path} line {first + 1}",
                    listed[first] if first < len(listed) else "end of file", ERROR,
                    f"the image order differs from {ellipse_path.name} ({len(listed)} vs {len(names)} images)")
        for name, where, boxes in entries:
            key = f"{name}{FDDB_IMAGE_SUFFIX}"
            if key in pending:
                log.add(MALFORMED, where, name, ERROR, f"the image is already listed at {pending[key].source}")
                continue
            pending[key] = PendingImage(key, images_dir / key, fold, where, list(boxes))
    return check_images(pending.values(), {FDDB_CLASS: 0}, log)


def _read_ellipse_list(path: Path, log: ProblemLog) -> list[tuple[str, str, list[RawBox]]]:
    """Return (image name, where, boxes) per entry of an FDDB ellipse list, recording malformed lines.

    A face count that disagrees with the face lines is one error naming the image, and reading
    goes on at the next image line, so the images after it are still checked.
    """
    lines = read_utf8(path).splitlines()
    entries: list[tuple[str, str, list[RawBox]]] = []
    index = 0
    while index < len(lines):
        name = lines[index].strip()
        where = f"{path} line {index + 1}"
        if not name:
            index += 1
            continue
        if not _is_image_line(name):
            owner = f"{entries[-1][0]} has more face lines than its face count" if entries else "no image path before it"
            log.add(MALFORMED, where, repr(name), ERROR, f"a face line where an image path was expected: {owner}")
            index = _next_image_line(lines, index)
            continue
        index += 1
        count_text = lines[index].strip() if index < len(lines) else ""
        if not (count_text.isascii() and count_text.isdigit()):
            log.add(MALFORMED, f"{path} line {index + 1}", repr(count_text), ERROR,
                    f"expected the number of faces of {name}")
            entries.append((name, where, []))
            index = _next_image_line(lines, index)
            continue
        count_where = f"{path} line {index + 1}"
        index += 1
        boxes = []
        for face_number in range(int(count_text)):
            while index < len(lines) and not lines[index].strip():
                index += 1
            if index >= len(lines) or _is_image_line(lines[index]):
                found = "the end of the file" if index >= len(lines) else f"the image line {lines[index].strip()!r}"
                log.add(MALFORMED, count_where, f"{count_text} faces", ERROR,
                        f"{name} declares {count_text} faces but has {face_number}: line {index + 1} is {found}")
                break
            face_where = f"{path} line {index + 1}"
            fields = lines[index].split()
            index += 1
            try:
                values = [float(text) for text in fields]
            except ValueError:
                values = []
            if len(values) != FDDB_FACE_FIELDS or not all(math.isfinite(value) for value in values):
                log.add(MALFORMED, face_where, repr(" ".join(fields)), ERROR,
                        "expected 'major_radius minor_radius angle center_x center_y 1' with finite numbers")
                continue
            if values[0] <= 0 or values[1] <= 0:
                log.add(MALFORMED, face_where, repr(" ".join(fields)), ERROR, "the radii must be greater than 0")
                continue
            if abs(values[2]) > FDDB_MAX_ANGLE:
                log.add(FDDB_ANGLE, face_where, f"angle={fields[2]}", ERROR,
                        "FDDB angles are radians in [-pi/2, pi/2], so convert degrees with angle * pi / 180")
                continue
            boxes.append(RawBox(ellipse_box(*values[:5]), FDDB_CLASS, face_where))
        entries.append((name, where, boxes))
    return entries


def _next_image_line(lines: Sequence[str], index: int) -> int:
    # The index of the first image line at or after ``index``, or len(lines).
    while index < len(lines) and not _is_image_line(lines[index]):
        index += 1
    return index


def _is_image_line(line: str) -> bool:
    # An image path such as 2002/08/11/big/img_591: one field that is not a number.
    fields = line.split()
    if len(fields) != 1:
        return False
    try:
        float(fields[0])
    except ValueError:
        return True
    return False


def no_image_left(dataset: Dataset) -> str:
    """Say why ``dataset`` kept none of its annotated images, by cause: missing, unreadable or no face left."""
    causes = Counter(problem.case for problem in dataset.problems
                     if problem.action == DROPPED and problem.case in (MISSING_IMAGE, UNREADABLE_IMAGE, NO_FACE_LEFT))
    parts = [f"{causes[MISSING_IMAGE]} not found", f"{causes[UNREADABLE_IMAGE]} not readable",
             f"{causes[NO_FACE_LEFT]} with every box left out"]
    return f"none of the {len(dataset.listed)} annotated images is kept: " + ", ".join(parts)


# --- reporting and writing ---------------------------------------------------------------


def count_problems(problems: Sequence[Problem]) -> Counter:
    """Count problems by (case, action)."""
    return Counter((problem.case, problem.action) for problem in problems)


def log_problems(problems: Sequence[Problem]) -> None:
    """Log one warning per fixed or dropped case: its count and the first few examples."""
    for (case, action), count in sorted(count_problems(problems).items()):
        if action == ERROR:
            continue
        examples = [problem for problem in problems if problem.case == case and problem.action == action]
        listed = "; ".join(f"{problem.where}: {problem.value}" for problem in examples[:LOGGED_EXAMPLES])
        more = f"; and {count - LOGGED_EXAMPLES} more" if count > LOGGED_EXAMPLES else ""
        logger.warning("%s: %d %s (%s%s)", case, count, action, listed, more)


def raise_on_errors(dataset: Dataset) -> None:
    """Raise DataError listing every error problem of ``dataset``, one per line; do nothing if none."""
    errors = dataset.errors()
    if errors:
        lines = "\n".join(problem.line() for problem in errors)
        raise DataError(f"{len(errors)} error{'' if len(errors) == 1 else 's'} in the annotations:\n{lines}")


def format_annotations_csv(images: Sequence[ImageEntry], csv_dir: Path) -> str:
    """Format keras-retinanet annotation rows, paths relative to ``csv_dir`` with ``/`` separators.

    An image without faces becomes ``path,,,,,`` (keras-retinanet reads it as a background image).
    """
    rows = []
    for image in images:
        path = Path(os.path.relpath(image.path, csv_dir)).as_posix()
        if not image.faces:
            rows.append([path, "", "", "", "", ""])
        for face in image.faces:
            rows.append([path, face.x1, face.y1, face.x2, face.y2, face.class_name])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def format_classes_csv(classes: dict[str, int]) -> str:
    """Format the class mapping as keras-retinanet's ``class_name,id`` lines, by id."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(sorted(classes.items(), key=lambda item: item[1]))
    return buffer.getvalue()

