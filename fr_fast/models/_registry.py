"""Model registry: architectures are chosen by name from configs and the CLI."""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn as nn

from .head import has_head
from .low_pass import LowPass
from .normalize import Normalize

ModelFactory = Callable[..., nn.Module]

# name -> factory(num_classes, in_channels, **kwargs) returning the bare network (no Normalize), whose last
# layer is a ClassifierHead (float32 logits under autocast).
_MODELS: dict[str, ModelFactory] = {}


def register_model(*names: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory under one or more names (aliases share the same factory)."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        for name in names:
            if name in _MODELS:
                raise ValueError(f"model name {name!r} is already registered")
            _MODELS[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Return the sorted names accepted by :func:`build_model`."""
    return sorted(_MODELS)


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    low_pass_bandwidth: int | None = None,
    **kwargs,
) -> nn.Module:
    """Build a classifier that takes images in [0, 1] and normalises them itself.

    Parameters
    ----------
    name : str
        One of :func:`list_models` ("small_cnn", "preact_resnet18", "resnet18", "resnet152",
        "wrn", "wrn34_10", "wrn34_15").
    num_classes : int
        Number of output logits, >= 1.
    in_channels : int, default 3
        Image channels (1 for MNIST/Fashion-MNIST).
    mean, std : float or sequence of floats, optional
        Per-channel normalisation applied inside the model (a scalar is broadcast to all channels).
        ``None`` means no normalisation (mean 0, std 1). Usually ``DATASETS[name].mean/std``.
    low_pass_bandwidth : int, optional
        The L-model: a :class:`LowPass` first layer keeps only the centred ``k x k`` frequency square of
        every input (clipped to [0, 1]); ``None`` means no filter.
    **kwargs
        Architecture options, e.g. ``width`` (small_cnn), ``depth``/``widen``/``dropout`` (wrn).

    Returns
    -------
    nn.Module
        ``nn.Sequential([LowPass,] Normalize, network)``; ``model(x)`` maps (B, in_channels, H, W) float in
        [0, 1], H, W >= 28, contiguous or channels_last, to logits (B, num_classes).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    try:
        network = _MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as err:  # unknown architecture kwarg: name the model, not the internal class
        raise ValueError(f"bad options {sorted(kwargs)} for model {name!r}: {err}") from err
    except (ValueError, RuntimeError, OverflowError, MemoryError) as err:  # e.g. width=1e11: no memory for it
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
        raise ValueError(f"cannot build model {name!r} with {shown or 'its defaults'}: "
                         f"{' '.join(str(err).split()) or type(err).__name__}") from err
    if not has_head(network):
        raise ValueError(f"model {name!r} does not mark its last layer: build its classifier with "
                         "fr_fast.models.ClassifierHead (a Linear that stays float32 under autocast)")
    normalize = Normalize(
        0.0 if mean is None else mean, 1.0 if std is None else std, channels=in_channels
    )
    model = nn.Sequential()
    if low_pass_bandwidth is not None:
        model.add_module("low_pass", LowPass(low_pass_bandwidth))
    model.add_module("normalize", normalize)
    model.add_module("net", network)
    return model
