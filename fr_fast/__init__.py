"""fr_fast: fast adversarial training with Frequency Regularization.

The fused ops are imported here; the rest loads on first use, so ``import fr_fast`` stays cheap and
``fr_fast.attacks.pgd(...)``, ``fr_fast.train(cfg)`` and ``fr_fast.evaluate(model, data, eps=...)`` work
after a plain ``import fr_fast``. Packages by job: ``ops`` (fused kernels and references), ``models``,
``data``, ``config``, ``runs`` (run files), ``robustness`` (attacks, evaluation), ``spectral`` (Fourier
analyses), ``training`` (step and loop); ``cli`` is the command line on top.
"""
from __future__ import annotations

import importlib
import os
import sys

from fr_fast._version import __version__

try:
    from fr_fast.ops import FRLoss, backend, fr_loss, pgd_step_, random_start_
except KeyboardInterrupt:  # Ctrl-C while torch loads: the command line ends in one line, a library user gets it
    if os.path.basename(sys.argv[0]) in ("fr-fast", "fr-fast.exe") or sys.argv[:1] == ["-m"]:  # -m: locating
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the goodbye
        print("fr-fast: interrupted (Ctrl-C)", file=sys.stderr)
        raise SystemExit(130) from None
    raise

# attribute -> (module, attribute in it; None for the module itself)
_LAZY = {
    "attacks": ("fr_fast.robustness.attacks", None),
    "reference": ("fr_fast.ops.reference", None),
    "config": ("fr_fast.config", None), "data": ("fr_fast.data", None), "models": ("fr_fast.models", None),
    "robustness": ("fr_fast.robustness", None), "runs": ("fr_fast.runs", None),
    "spectral": ("fr_fast.spectral", None), "training": ("fr_fast.training", None),
    "TrainConfig": ("fr_fast.config.train_config", "TrainConfig"),
    "load_config": ("fr_fast.config.train_config", "load_config"),
    "train": ("fr_fast.training.train", "train"),
    "evaluate": ("fr_fast.robustness.evaluate", "evaluate"),
    "load_model": ("fr_fast.runs.checkpoint", "load_model"),
}
__all__ = ["FRLoss", "backend", "fr_loss", "pgd_step_", "random_start_", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        loaded = importlib.import_module(module)
        return loaded if attribute is None else getattr(loaded, attribute)
    raise AttributeError(f"module 'fr_fast' has no attribute {name!r}")
