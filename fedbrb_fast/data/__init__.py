"""Datasets (loaded locally, never downloaded) and their split among federated clients."""

from fedbrb_fast.data.datasets import DATASETS, Dataset, dataset_vocabulary, load_dataset
from fedbrb_fast.data.federated import FederatedData, make_federated
from fedbrb_fast.data.partition import partition_indices

__all__ = ["DATASETS", "Dataset", "FederatedData", "dataset_vocabulary", "load_dataset", "make_federated",
           "partition_indices"]
