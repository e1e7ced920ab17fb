"""Make keras-retinanet 1.0.0 and keras-resnet 0.2.0 run on TensorFlow 2.16 or newer.

Both libraries use the Keras 2 API. TensorFlow 2.16 switched ``tf.keras`` to Keras 3, so
this module selects the legacy Keras 2 package (``tf-keras``) through ``TF_USE_LEGACY_KERAS``
and registers it under the name ``keras``, because keras-resnet does a plain ``import keras``.
Import this module before anything that imports TensorFlow or keras-retinanet.
"""

import importlib
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow prints C++ start-up notices at level 0 and 1; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tf_keras  # noqa: E402  (the environment variables above must be set first)

# The submodules keras-resnet imports as ``keras.<name>``.
_ALIASED_SUBMODULES = ("layers", "regularizers", "backend", "initializers", "models", "utils")

sys.modules["keras"] = tf_keras
for _name in _ALIASED_SUBMODULES:
    sys.modules[f"keras.{_name}"] = importlib.import_module(f"tf_keras.{_name}")


def keras():
    """Return the Keras 2 module that keras-retinanet uses (``tf_keras``)."""
    return tf_keras
