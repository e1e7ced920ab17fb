"""Cut a square face crop out of an image, the same way in training and in prediction.

The expression classifier is trained on crops of GENKI-4K images around the boxes that the
project's own face detector finds, and the predictor classifies crops around the boxes that
the same detector finds in new images. Both call :func:`square_crop`, so training and
prediction crops frame faces the same way.
"""

from __future__ import annotations

import cv2
import numpy as np


def square_box(box, margin: float) -> tuple[float, float, float, float]:
    """Return the square around ``box`` (x1, y1, x2, y2) grown by ``margin`` of its size per side.

    The square is centred on the box, and its side is the longer box side times ``1 + 2 * margin``.
    """
    x1, y1, x2, y2 = (float(value) for value in box)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    centre_x, centre_y = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return centre_x - side / 2.0, centre_y - side / 2.0, centre_x + side / 2.0, centre_y + side / 2.0


def square_crop(image: np.ndarray, box, margin: float, size: int) -> np.ndarray:
    """Return the square crop around ``box`` as a ``size`` x ``size`` image of ``image``'s type.

    Parts of the square outside the image are filled by repeating the border pixels, so a face
    at the edge of a frame keeps its position in the crop.
    """
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty image of shape (H, W) or (H, W, C), got {image.shape}")
    x1, y1, x2, y2 = square_box(box, margin)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box {tuple(box)} has no area")
    left, top = int(np.floor(x1)), int(np.floor(y1))
    side = max(1, int(round(x2 - x1)))
    height, width = image.shape[:2]
    pad_left, pad_top = max(0, -left), max(0, -top)
    pad_right, pad_bottom = max(0, left + side - width), max(0, top + side - height)
    if pad_left or pad_top or pad_right or pad_bottom:
        image = cv2.copyMakeBorder(image, pad_top, pad_bottom, pad_left, pad_right, cv2.BORDER_REPLICATE)
    region = image[top + pad_top:top + pad_top + side, left + pad_left:left + pad_left + side]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=interpolation)


def whole_image_box(image: np.ndarray) -> tuple[float, float, float, float]:
    """Return the largest centred square inside ``image``, the crop used when no face is found."""
    height, width = image.shape[:2]
    side = min(height, width)
    x1 = (width - side) / 2.0
    y1 = (height - side) / 2.0
    return x1, y1, x1 + side, y1 + side
