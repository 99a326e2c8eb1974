"""Side by side with slamkit's own HuBERT units: its `HubertFeatureExtractor.extract` and `simslm units extract`
on the same audio, HuBERT checkpoint and k-means.

    .venv/bin/pip install omegaconf   # one of slamkit's own imports, not a simslm dependency
    SIMSLM_MIRROR=../shared/data PYTHONPATH=<a checkout of slp-rl/slamkit> \
        .venv/bin/python benchmarks/side_by_side_units.py

slamkit's code is imported from the checkout and run, not copied. Both get:

- a tiny random `HubertModel` at 25 Hz with a group-norm feature extractor (mHuBERT-25Hz's architecture; there
  are no weights offline), saved to a folder;
- a scikit-learn k-means of 50 units fit on its layer's features, pickled as the published km500.bin files are:
  slamkit loads it with joblib from its cache folder, `simslm units convert --trust-pickle` turns it into a
  codebook (which records slamkit's 40-sample edge padding, or none with `--edge-pad 0`);
- the three LibriSpeech utterances and cuts of them, 8 recordings of 8 lengths.

Compared per recording: the unit of every frame (simslm's deduplicated units expanded by their run lengths),
against slamkit's `extract` of the recording alone (batch 1) and within slamkit's own batch of 8 (zero-padded
to the longest, the lengths passed), as its `extract_features` and evaluators call it.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=50)
    parser.add_argument("--layer", type=int, default=3)
    args = parser.parse_args()

    import torch
    from sklearn.cluster import KMeans
    from slamkit.feature_extractor.hubert_feature_extractor import HubertFeatureExtractor
    from transformers import HubertConfig, HubertModel

    from simslm import assets
    from simslm.speech import audio
    from simslm.units.extract import ExtractConfig, extract_units
    from simslm.units.fit import ConvertConfig, convert_codebook
    from simslm.units.folder import expand, read_units

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        torch.manual_seed(0)
        model = HubertModel(HubertConfig(hidden_size=64, num_hidden_layers=args.layer, num_attention_heads=4,
                                         intermediate_size=128, conv_dim=(64,) * 7,
                                         conv_stride=(5, 2, 2, 2, 2, 2, 4), num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=4, feat_extract_norm="group")).eval()
        model.save_pretrained(scratch / "hubert")

        # Eight recordings of eight lengths: the LibriSpeech utterances whole and cut.
        librispeech = assets.resolve("librispeech-samples")
        sources = [audio.load_audio(path) for name, path in sorted(librispeech.paths.items()) if name.endswith(".flac")]
        recordings = []
        for index, fraction in enumerate((1.0, 0.83, 0.61, 0.47, 0.35, 0.29, 0.2, 0.13)):
            samples = sources[index % len(sources)]
            recordings.append(samples[:int(len(samples) * fraction)])
        lines = []
        for index, samples in enumerate(recordings):
            path = scratch / "audio" / f"r{index}.wav"
            path.parent.mkdir(exist_ok=True)
            audio.write_audio(path, samples)
            recordings[index] = audio.load_audio(path)  # as both tools read it back
            lines.append({"id": f"r{index}", "path": str(path), "duration_sec": len(samples) / 16000})

        with torch.inference_mode():
            features = np.concatenate([model(torch.from_numpy(samples)[None], output_hidden_states=True)
                                       .hidden_states[args.layer][0].numpy() for samples in recordings[:3]])
        kmeans = KMeans(n_clusters=args.units, n_init=1, random_state=0).fit(features)
        (scratch / "cache").mkdir()
        (scratch / "cache" / "kmeans_model.bin").write_bytes(pickle.dumps(kmeans))

        theirs = HubertFeatureExtractor(pretrained_model=str(scratch / "hubert"), layer=args.layer,
                                        num_units=args.units, cache_path=str(scratch / "cache"))
        alone = [theirs.extract(torch.from_numpy(samples)[None])[0] for samples in recordings]
        lengths = torch.tensor([len(samples) for samples in recordings])
        padded = torch.zeros(len(recordings), int(lengths.max()))
        for row, samples in enumerate(recordings):
            padded[row, :len(samples)] = torch.from_numpy(samples)
        batched = theirs.extract(padded, lengths)

        rows = []
        for edge_pad in (None, 0):
            name = "default" if edge_pad is None else f"edge-pad-{edge_pad}"
            codebook = convert_codebook(ConvertConfig(pickle=str(scratch / "cache" / "kmeans_model.bin"),
                                                      out=str(scratch / name), encoder="mhubert-25hz",
                                                      model_path=str(scratch / "hubert"), layer=args.layer,
                                                      edge_pad=edge_pad, trust_pickle=True))
            extract_units(ExtractConfig(manifest="side by side", codebook=str(codebook), out=str(scratch / f"u-{name}"),
                                        num_workers=1), records=lines)
            ours = {u.id: expand(u.units, u.durations) for u in read_units(scratch / f"u-{name}")}
            for label, reference in (("alone", alone), ("in slamkit's batch of 8", batched)):
                same_length = sum(len(ours[f"r{i}"]) == len(reference[i]) for i in range(len(recordings)))
                frames = [(ours[f"r{i}"] == reference[i]).mean() if len(ours[f"r{i}"]) == len(reference[i]) else 0.0
                          for i in range(len(recordings))]
                identical = sum(np.array_equal(ours[f"r{i}"], reference[i]) for i in range(len(recordings)))
                rows.append((f"simslm ({name}) vs slamkit, {label}", f"{same_length} of {len(recordings)}",
                             f"{identical} of {len(recordings)}", f"{100 * np.mean(frames):.1f}%"))
    print("| comparison | same frame count | identical units | frames equal (mean) |\n| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
