"""Classifiers chosen by name: ``build_model("resnet18", num_classes=10)``.

Every model takes images in [0, 1] (NCHW, contiguous or channels_last) and normalises them with
a parameter-free :class:`Normalize` first layer (after the L-model's :class:`LowPass` filter when
``low_pass_bandwidth`` is given). Global average pooling before the classifier
makes every architecture accept any input size >= 28 pixels and any number of input channels. The last
layer is a :class:`ClassifierHead`: logits are float32 under any autocast.
"""
from ._registry import build_model, list_models, register_model
from .head import ClassifierHead
from .low_pass import LowPass
from .normalize import Normalize

# Importing the architecture modules registers their names.
from . import preact_resnet, resnet, small_cnn, wide_resnet  # noqa: E402,F401  isort:skip

__all__ = ["ClassifierHead", "build_model", "list_models", "register_model", "LowPass", "Normalize"]
