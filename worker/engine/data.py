"""The engine's datasets: the loaders live in core/datasets.py (torch-free, so the backend shows a job's
validation images through the same code); the engine and its callers name them here."""
from core.datasets import (  # noqa: F401
    ARCHIVE_NAME, BATCHES_DIR, CIFAR10, CIFAR10_MD5, CIFAR10_URL, CIFAR100, CIFAR100_ARCHIVE, CIFAR100_DIR,
    CIFAR100_MD5, CIFAR100_URL, LAYOUTS, Cifar10, Dataset, DatasetError, FolderDataset, Layout, Split, download,
    fingerprint, generated, limit, load, load_cifar10, load_cifar100, load_folder, locate, present, read_image,
    skipped_summary, stratified_subset, write_cifar100, write_cifar_batches)
