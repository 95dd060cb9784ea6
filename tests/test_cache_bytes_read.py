"""``cache_read_bytes``: the cache bytes a decode step's layers read; shared (CLA) K/V counts once per reader."""

from __future__ import annotations

import torch

from archzoo.cache import cache_bytes, cache_bytes_per_layer, cache_read_bytes
from archzoo.config import load_config
from archzoo.layers import state_owners

from conftest import MODEL_CONFIGS


def test_read_bytes_count_each_reader():
    for path in MODEL_CONFIGS:
        cfg = load_config(path)
        owners = state_owners(cfg)
        own = cache_bytes(cfg, 2, 40, torch.float32)
        read = cache_read_bytes(cfg, 2, 40, torch.float32)
        if all(o == i for i, o in enumerate(owners)):
            assert read == own, path.stem
        else:  # CLA: members read their leader's buffers too
            sizes = cache_bytes_per_layer(cfg, 2, 40, torch.float32)
            assert read == own + sum(sizes[o] for i, o in enumerate(owners) if o != i) and read > own, path.stem
    assert any(len(set(state_owners(load_config(p)))) < load_config(p).n_layers for p in MODEL_CONFIGS), "a CLA config"
