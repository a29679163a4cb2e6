"""Run files: checkpoints, the run folder and its lock, the metrics log, the run's environment record, and
reading finished runs back (:mod:`~fr_fast.runs.compare`)."""
