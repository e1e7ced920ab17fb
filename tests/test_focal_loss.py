"""The detector's focal loss: its values, and finite values and gradients where keras-retinanet's fail."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages import detector

tf = detector.tf


def anchors(labels, states, probabilities):
    """Build (y_true, y_pred) for one image: labels, anchor states (-1, 0, 1) and face probabilities."""
    labels = np.asarray(labels, dtype=np.float32).reshape(1, -1, 1)
    states = np.asarray(states, dtype=np.float32).reshape(1, -1, 1)
    y_true = tf.constant(np.concatenate([labels, states], axis=-1))
    y_pred = tf.Variable(np.asarray(probabilities, dtype=np.float32).reshape(1, -1, 1))
    return y_true, y_pred


def loss_and_gradient(loss, y_true, y_pred):
    with tf.GradientTape() as tape:
        value = loss(y_true, y_pred)
    return float(value), tape.gradient(value, y_pred).numpy()


def test_matches_a_hand_computed_value():
    # One face anchor at p = 0.8, one background anchor at p = 0.3, one ignored anchor.
    y_true, y_pred = anchors([1, 0, 0], [1, 0, -1], [0.8, 0.3, 0.99])
    alpha, gamma = 0.25, 2.0
    face = -alpha * (1 - 0.8) ** gamma * math.log(0.8)
    background = -(1 - alpha) * 0.3**gamma * math.log(1 - 0.3)
    value = float(detector.focal_loss(alpha, gamma)(y_true, y_pred))
    assert value == pytest.approx((face + background) / 1, rel=1e-5)


@pytest.mark.parametrize(("gamma", "alpha"), [(0.0, 0.25), (0.5, 0.5), (1.0, 0.75), (2.0, 0.25), (5.0, 0.5)])
def test_equals_keras_retinanet_focal_away_from_saturation(gamma, alpha):
    from keras_retinanet import losses

    rng = np.random.default_rng(3)
    states = rng.choice([-1, 0, 1], size=(2, 60), p=[0.1, 0.8, 0.1]).astype(np.float32)
    labels = (states == 1).astype(np.float32)
    y_true = tf.constant(np.stack([labels, states], axis=-1))
    y_pred = tf.constant(rng.uniform(0.01, 0.99, size=(2, 60, 1)).astype(np.float32))
    ours = float(detector.focal_loss(alpha, gamma)(y_true, y_pred))
    theirs = float(losses.focal(alpha, gamma)(y_true, y_pred))
    assert ours == pytest.approx(theirs, rel=1e-5)


@pytest.mark.parametrize(("gamma", "alpha"), [(0.0, 1.0), (0.0, 0.25), (0.5, 0.25), (2.0, 0.25)])
def test_saturated_outputs_give_finite_loss_and_gradient(gamma, alpha):
    # Right and wrong predictions at exactly 0 and 1, as a saturated sigmoid returns them.
    y_true, y_pred = anchors([1, 1, 0, 0], [1, 1, 0, 0], [1.0, 0.0, 0.0, 1.0])
    value, gradient = loss_and_gradient(detector.focal_loss(alpha, gamma), y_true, y_pred)
    assert math.isfinite(value)
    assert np.isfinite(gradient).all()


def test_upstream_focal_nan_at_saturation():
    # The reason for the project's own loss: d/dp (1 - p)^0.5 at p = 1 is infinite.
    from keras_retinanet import losses

    y_true, y_pred = anchors([1], [1], [1.0])
    _, gradient = loss_and_gradient(losses.focal(alpha=0.25, gamma=0.5), y_true, y_pred)
    assert np.isnan(gradient).any()
    _, gradient = loss_and_gradient(detector.focal_loss(alpha=0.25, gamma=0.5), y_true, y_pred)
    assert np.isfinite(gradient).all()


@pytest.mark.parametrize(("gamma", "alpha"), [(0.0, 1.0), (0.0, 0.25), (2.0, 0.25)])
def test_batch_without_face_anchors_gives_finite_loss(gamma, alpha):
    y_true, y_pred = anchors([0, 0, 0], [0, 0, -1], [0.2, 0.9, 0.5])
    value, gradient = loss_and_gradient(detector.focal_loss(alpha, gamma), y_true, y_pred)
    expected = -(1 - alpha) * (0.2**gamma * math.log(0.8) + 0.9**gamma * math.log(0.1))
    assert value == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(gradient).all()


def test_all_anchors_ignored_gives_zero():
    y_true, y_pred = anchors([0, 1], [-1, -1], [0.4, 0.6])
    value, gradient = loss_and_gradient(detector.focal_loss(0.25, 2.0), y_true, y_pred)
    assert value == 0.0
    assert np.all(gradient == 0)


def test_gamma_zero_is_weighted_cross_entropy():
    y_true, y_pred = anchors([1, 0], [1, 0], [0.7, 0.4])
    value = float(detector.focal_loss(alpha=0.6, gamma=0.0)(y_true, y_pred))
    assert value == pytest.approx(-(0.6 * math.log(0.7) + 0.4 * math.log(0.6)), rel=1e-5)


def test_integer_alpha_and_gamma_give_finite_loss():
    # YAML reads "alpha: 1" and "gamma: 0" as Python ints.
    y_true, y_pred = anchors([1, 0], [1, 0], [0.7, 0.4])
    value = float(detector.focal_loss(alpha=1, gamma=0)(y_true, y_pred))
    assert math.isfinite(value)
    assert value == pytest.approx(-math.log(0.7), rel=1e-5)
