import numpy as np
import pytest
import torch

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
    """Tiny random HubertModels saved locally: at 50 Hz (base strides) and 25 Hz with a group-norm feature
    extractor (as HuBERT-base and mHuBERT-25Hz), and at 25 Hz with a layer-norm one, with and without the
    stable-layer-norm encoder (as HuBERT-large)."""
    from transformers import HubertConfig, HubertModel

    paths = {}
    for name, strides, norm, stable in (("50hz", (5, 2, 2, 2, 2, 2, 2), "group", False),
                                        ("25hz", (5, 2, 2, 2, 2, 2, 4), "group", False),
                                        ("25hz-layer", (5, 2, 2, 2, 2, 2, 4), "layer", False),
                                        ("25hz-stable", (5, 2, 2, 2, 2, 2, 4), "layer", True)):
        config = HubertConfig(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64,
                              conv_dim=(32,) * 7, conv_stride=strides, num_conv_pos_embeddings=16,
                              num_conv_pos_embedding_groups=2, feat_extract_norm=norm, do_stable_layer_norm=stable,
                              conv_bias=norm == "layer")
        path = tmp_path_factory.mktemp(f"hubert{name}")
        torch.manual_seed(0)
        HubertModel(config).eval().save_pretrained(path)
        paths[name] = path
    return paths


@pytest.mark.parametrize("name,rate_key,layer", [("mhubert-25hz", "25hz", 11), ("hubert-base-l9", "50hz", 9)])
def test_hubert_encoders_load_a_saved_model_and_take_the_declared_layer(tiny_hubert, name, rate_key, layer):
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


def test_hubert_and_gguf_weights_load_with_the_dtype_keyword_this_transformers_reads(tiny_hubert, monkeypatch):
    """`torch_dtype=` put "`torch_dtype` is deprecated! Use `dtype` instead!" in every extraction's and every GGUF
    run's log under transformers 4.56 and later."""
    import transformers
    from transformers import HubertModel

    from simslm.machine import float32_weights

    newer = tuple(int(part) for part in transformers.__version__.split(".")[:2]) >= (4, 56)
    assert set(float32_weights()) == {"dtype" if newer else "torch_dtype"}
    given = []
    loader = HubertModel.from_pretrained.__func__
    monkeypatch.setattr(HubertModel, "from_pretrained",
                        classmethod(lambda cls, *args, **kwargs: given.append(kwargs) or loader(cls, *args, **kwargs)))
    build_encoder(EncoderSpec(name="mhubert-25hz", model_path=str(tiny_hubert["25hz"])))
    assert given and all(set(kwargs) == set(float32_weights()) for kwargs in given)


def test_hubert_with_the_wrong_frame_rate_or_no_checkpoint_is_refused(tiny_hubert, tmp_path):
    with pytest.raises(ValueError, match="give 50 frames/s"):
        build_encoder(EncoderSpec(name="mhubert-25hz", model_path=str(tiny_hubert["50hz"])))
    with pytest.raises(ValueError, match="cannot load HuBERT"):
        build_encoder(EncoderSpec(name="hubert-base-l9", model_path=str(tmp_path / "missing")))


def _utterances(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.normal(size=length)).astype(np.float32) for length in lengths]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["25hz", "25hz-layer", "25hz-stable"])
def test_batched_hubert_gives_the_features_and_units_of_one_at_a_time(tiny_hubert, model):
    from simslm.units.kmeans import Codebook

    encoder = build_encoder(EncoderSpec(name="mhubert-25hz", model_path=str(tiny_hubert[model])))
    # Mixed lengths, three of them equal: a group-norm extractor may batch only those three.
    batch = _utterances([16000, 24000, 31000, 24000, 8000, 24000, 12345])
    alone = [encoder.encode(samples) for samples in batch]
    from transformers import HubertModel

    full = HubertModel.from_pretrained(tiny_hubert[model]).eval()  # all its layers: dropping later ones is exact
    with torch.inference_mode():
        expected = full(torch.from_numpy(batch[0])[None], output_hidden_states=True).hidden_states[11][0]
    np.testing.assert_allclose(alone[0], expected.numpy(), atol=1e-5)
    groups = encoder.batches([len(samples) for samples in batch], batch_size=4)
    assert sorted(i for group in groups for i in group) == list(range(len(batch)))
    if model == "25hz":  # group norm: equal lengths only, never padded
        assert all(len({len(batch[i]) for i in group}) == 1 for group in groups) and [1, 3, 5] in groups
    else:  # layer norm: padded, with a mask
        assert max(len({len(batch[i]) for i in group}) for group in groups) > 1
    together = [None] * len(batch)
    for group in groups:
        for index, features in zip(group, encoder.encode_batch([batch[i] for i in group])):
            together[index] = features
    codebook = Codebook(np.random.default_rng(1).normal(size=(50, 32)).astype(np.float32))
    for one, many in zip(alone, together):
        assert one.shape == many.shape
        np.testing.assert_allclose(many, one, atol=1e-5)
        assert np.array_equal(codebook.assign(many), codebook.assign(one))
    if model == "25hz":
        with pytest.raises(ValueError, match="only utterances of one length"):
            encoder.encode_batch(batch[:2])


def test_batched_logmel_gives_the_features_of_one_at_a_time_and_of_numpy():
    encoder = build_encoder(EncoderSpec(name="logmel"))
    batch = _utterances([16000, 24000, 31000, 8000])
    for one, many in zip([encoder.encode(s) for s in batch], encoder.encode_batch(batch)):
        np.testing.assert_allclose(many, one, atol=1e-5)
    # The log-mel energies equal a direct numpy computation (its float64 FFT) of the same definition.
    samples = batch[2]
    frames = np.stack([samples[i * 160:i * 160 + 400] for i in range(1 + (len(samples) - 400) // 160)])
    power = np.abs(np.fft.rfft(frames.astype(np.float64) * encoder.window, n=512)) ** 2
    np.testing.assert_allclose(encoder.log_mel(samples), np.log(power @ encoder.filters.T + 1e-6), atol=1e-4)


@pytest.mark.parametrize("model", ["25hz", "25hz-layer", "50hz"])
def test_hubert_pads_each_end_with_40_zero_samples_as_slamkit_extracts(tiny_hubert, model):
    """slamkit's HubertFeatureExtractor.extract encodes `F.pad(wav, (40, 40))`: its units of an utterance alone
    are those of the model's hidden states of the waveform with 40 zeros before and after. A new spec pads so; a
    spec recorded without `edge_pad` (codebooks fit before it) goes on without padding."""
    import torch.nn.functional as F
    from transformers import HubertModel

    name = "hubert-base-l9" if model == "50hz" else "mhubert-25hz"
    spec = EncoderSpec.standard(name, str(tiny_hubert[model]))
    assert spec.edge_pad == 40 and EncoderSpec(name=name).edge_pad == 0
    encoder = build_encoder(spec)
    layer = encoder.layer
    reference = HubertModel.from_pretrained(tiny_hubert[model]).eval()
    batch = _utterances([16000, 24000, 24000, 12345], seed=3)
    for samples in batch:
        with torch.inference_mode():
            expected = reference(F.pad(torch.from_numpy(samples)[None], (40, 40)),
                                 output_hidden_states=True).hidden_states[layer][0].numpy()
            unpadded = reference(torch.from_numpy(samples)[None], output_hidden_states=True).hidden_states[layer][0]
        features = encoder.encode(samples)
        assert features.shape == expected.shape
        np.testing.assert_allclose(features, expected, atol=1e-5)
        assert unpadded.shape != expected.shape or not np.allclose(unpadded.numpy(), expected, atol=1e-3)
    # Batched (padded with a mask for the layer-norm model, equal lengths only for group norm) as alone.
    for group in encoder.batches([len(samples) for samples in batch], batch_size=4):
        for index, features in zip(group, encoder.encode_batch([batch[i] for i in group])):
            np.testing.assert_allclose(features, encoder.encode(batch[index]), atol=1e-5)


def test_edge_padding_is_for_hubert_and_not_negative():
    assert EncoderSpec.standard("logmel").edge_pad == 0
    assert EncoderSpec.standard("mhubert-25hz", edge_pad=0).edge_pad == 0
    with pytest.raises(ValueError, match="edge padding is for HuBERT"):
        EncoderSpec.standard("logmel", edge_pad=40)
    with pytest.raises(ValueError, match="edge padding is for HuBERT"):
        build_encoder(EncoderSpec(name="mhubert-25hz", edge_pad=-1))


def test_new_hubert_specs_resample_as_slamkits_extraction_and_old_ones_as_before():
    """slamkit's `WavDataset` resamples with torchaudio's default (`sinc-hann`): a new HuBERT codebook records it;
    logmel, simslm's own, and a spec recorded before the field existed (a codebook fit before) use soxr."""
    assert EncoderSpec.standard("mhubert-25hz").resampler == "sinc-hann"
    assert EncoderSpec.standard("hubert-base-l9", resampler="soxr").resampler == "soxr"
    assert EncoderSpec.standard("logmel").resampler == "soxr"
    assert EncoderSpec.recorded({"name": "mhubert-25hz", "edge_pad": 40}).resampler == "soxr"
    with pytest.raises(ValueError, match="--resampler linear: not one of soxr, sinc-hann"):
        EncoderSpec.standard("mhubert-25hz", resampler="linear")
