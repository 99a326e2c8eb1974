"""A tiny random HuBERT and a codebook that names it, for the extraction and fit tests."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def hubert_codebook(tmp_path_factory):
    """A tiny random layer-norm HuBERT at 25 Hz and a random 20-unit codebook that names it."""
    import torch
    from transformers import HubertConfig, HubertModel

    from simslm.units import kmeans

    folder = tmp_path_factory.mktemp("hubert")
    torch.manual_seed(0)
    HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(32,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 4), num_conv_pos_embeddings=16,
                             num_conv_pos_embedding_groups=2, feat_extract_norm="layer", conv_bias=True)
                ).save_pretrained(folder / "model")
    centroids = np.random.default_rng(0).normal(size=(20, 32)).astype(np.float32)
    meta = {"encoder": {"name": "mhubert-25hz", "model_path": str(folder / "model"), "layer": 2},
            "frame_rate_hz": 25.0}
    return kmeans.Codebook(centroids, meta).save(folder / "km20")

