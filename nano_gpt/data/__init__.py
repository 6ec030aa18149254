"""Datasets as GPT-2 token shards: document sources, preparation, and the loader that feeds training.

`prepare_dataset` streams documents from a source (`sources.py`), tokenizes them on all cores and writes
uint16 shards plus a manifest per split (`prepare.py`); `ShardLoader` reads them back as (x, y) batches
through numpy memmaps (`loader.py`). The on-disk layout, its checks and its lock live in `shards.py`.
"""

from nano_gpt.data.loader import ShardLoader
from nano_gpt.data.prepare import DEFAULT_TOKENS_PER_SHARD, prepare_dataset
from nano_gpt.data.shards import DEFAULT_DATASET_DIR
from nano_gpt.data.sources import DATASETS, dataset_slug

__all__ = ["DATASETS", "DEFAULT_DATASET_DIR", "DEFAULT_TOKENS_PER_SHARD", "ShardLoader", "dataset_slug",
           "prepare_dataset"]
