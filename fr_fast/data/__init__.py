"""Data: file readers (:mod:`.readers`), the dataset registry with the 9:1 split (:mod:`.datasets`) and the
loader with batched augmentation (:mod:`.loader`). The names below are the package's public interface."""
from fr_fast.data.datasets import (
    DATASETS,
    SPLITS,
    DatasetInfo,
    FolderImageDataset,
    TensorImageDataset,
    dataset_info,
    load_dataset,
    to_float,
    train_val_indices,
)
from fr_fast.data.loader import BatchLoader, augment_batch, parse_augment
from fr_fast.data.readers import DATA_DIR_ENV, FASHION_MNIST_DEBIAN_DIR, read_idx

__all__ = ["DATASETS", "DATA_DIR_ENV", "FASHION_MNIST_DEBIAN_DIR", "SPLITS", "BatchLoader", "DatasetInfo",
           "FolderImageDataset", "TensorImageDataset", "augment_batch", "dataset_info", "load_dataset",
           "parse_augment", "read_idx", "to_float", "train_val_indices"]
