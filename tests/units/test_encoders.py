import numpy as np
import pytest

from simslm.units.encoders import ENCODERS, EncoderSpec, build_encoder, mel_filterbank


def test_registry_declares_frame_rates():
    assert {name: spec[0] for name, spec in ENCODERS.items()} == {
        "logmel": 25.0, "mhubert-25hz": 25.0, "hubert-base-l9": 50.0}
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder(EncoderSpec(name="nope"))


def test_logmel_runs_at_25_hz_and_is_normalised_per_utterance():
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.normal(size=16000 * 3)).astype(np.float32)
    features = build_encoder(EncoderSpec(name="logmel")).encode(samples)
    assert features.shape == (74, 160)  # 3 s at 25 Hz, less the last partial window
    assert np.allclose(features.mean(axis=0), 0, atol=1e-4) and np.allclose(features.std(axis=0), 1, atol=1e-3)


def test_mel_filterbank_covers_the_band_with_peaks_in_order():
    filters = mel_filterbank(40, 512)
    assert filters.shape == (40, 257) and filters.max() <= 1.0
    assert list(np.argmax(filters, axis=1)) == sorted(np.argmax(filters, axis=1))


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    """Tiny random HubertModels saved locally: one at 50 Hz (base strides), one at 25 Hz."""
    from transformers import HubertConfig, HubertModel

    paths = {}
    for name, strides in (("50hz", (5, 2, 2, 2, 2, 2, 2)), ("25hz", (5, 2, 2, 2, 2, 2, 4))):
        config = HubertConfig(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64,
                              conv_dim=(32,) * 7, conv_stride=strides, num_conv_pos_embeddings=16,
                              num_conv_pos_embedding_groups=2)
        path = tmp_path_factory.mktemp(f"hubert{name}")
        HubertModel(config).eval().save_pretrained(path)
        paths[name] = path
    return paths


@pytest.mark.parametrize("name,rate_key,layer", [("mhubert-25hz", "25hz", 11), ("hubert-base-l9", "50hz", 9)])
def test_hubert_encoders_load_a_saved_model_and_take_the_declared_layer(tiny_hubert, name, rate_key, layer):
    import torch
    from transformers import HubertModel

    encoder = build_encoder(EncoderSpec(name=name, model_path=str(tiny_hubert[rate_key])))
    samples = np.random.default_rng(0).normal(size=32000).astype(np.float32) * 0.1
    features = encoder.encode(samples)
    assert encoder.layer == layer and features.shape[1] == 32
    assert abs(features.shape[0] - 2 * encoder.frame_rate_hz) <= 1
    reference = HubertModel.from_pretrained(tiny_hubert[rate_key]).eval()
    with torch.inference_mode():
        expected = reference(torch.from_numpy(samples)[None], output_hidden_states=True).hidden_states[layer][0]
    assert np.allclose(features, expected.numpy(), atol=1e-5)


def test_hubert_with_the_wrong_frame_rate_or_no_checkpoint_is_refused(tiny_hubert, tmp_path):
    with pytest.raises(ValueError, match="give 50 frames/s"):
        build_encoder(EncoderSpec(name="mhubert-25hz", model_path=str(tiny_hubert["50hz"])))
    with pytest.raises(ValueError, match="cannot load HuBERT"):
        build_encoder(EncoderSpec(name="hubert-base-l9", model_path=str(tmp_path / "missing")))
