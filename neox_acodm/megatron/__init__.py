"""megatron-core adapter (never imported together with the GPT-NeoX adapter: both ship a
top-level ``megatron`` package). Importing it requires ``megatron-core``."""

from .data import DynamicBlendedDataset, DynamicBlendedIterator, build_domain_datasets
from .model import GlobalLayerView

__all__ = ["DynamicBlendedDataset", "DynamicBlendedIterator", "GlobalLayerView", "build_domain_datasets"]
