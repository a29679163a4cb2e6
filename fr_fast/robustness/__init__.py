"""Robustness: the attacks (:mod:`~fr_fast.robustness.attacks`, one call shape), the evaluation report
(:mod:`~fr_fast.robustness.evaluate`), RobustBench entries and the batching/accuracy helpers they share."""
