"""Training: the step (:func:`~fr_fast.training.train.make_step`) and the epoch loop
(:func:`~fr_fast.training.train.train`), the AT/TRADES/MART(+FR) losses, weight averaging and AWP, the
training state that checkpoints hold, resume rules, the runtime (device, precision, DDP) and seeding."""
