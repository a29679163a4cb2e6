"""Configuration: :class:`TrainConfig` (every training field, validated), presets (configs/*.yaml), field
parsing (:mod:`~fr_fast.config.fields`) and the paper's table rows (:mod:`~fr_fast.config.paper`)."""
from fr_fast.config.train_config import TrainConfig, config_to_dict, load_config

__all__ = ["TrainConfig", "config_to_dict", "load_config"]
