"""The fused ops (C++/CUDA kernels in csrc/, registered as ``torch.ops.fr_fast``) and their pure-PyTorch
references: :mod:`fr_fast.ops.functional` checks inputs and dispatches, :mod:`fr_fast.ops.reference` is the
readable definition every kernel is tested against."""
from fr_fast.ops.functional import EXTENSION_ERROR, FRLoss, backend, fr_loss, pgd_step_, random_start_

__all__ = ["EXTENSION_ERROR", "FRLoss", "backend", "fr_loss", "pgd_step_", "random_start_"]
