
import numpy as np
import pytest

from simslm.eval.bench_units import run_unit_source, units_lookup
from simslm.eval.evaluate import load_run_model
from simslm.eval.layouts import load
from simslm.eval.scoring import ScoringOptions, score_pairs
from simslm.units.extract import ExtractConfig, extract_units
from tests.conftest import logmel_held_until_started


def test_pre_extracted_units_give_the_same_scores_as_audio(trained_run, tmp_path):
    from simslm.speech import audio

    run, bench = trained_run
    codebook = run_unit_source(run).codebook
    files = sorted((bench / "audio").glob("*.flac"))
    records = [{"id": f.stem, "path": str(f), "duration_sec": audio.audio_info(f)[1]} for f in files]
    extract_units(ExtractConfig(manifest="bench", codebook=str(codebook), out=str(tmp_path / "u"),
                                            num_workers=1), records=records)
    model, vocabulary, _ = load_run_model(run, "cpu")
    for mode in ("S", "T2S"):
        _, pairs = load(bench, mode)
        options = ScoringOptions(preset="ending")
        from_audio = score_pairs(model, pairs, vocabulary, units_lookup(pairs, run, None), options)
        from_units = score_pairs(model, pairs, vocabulary,
                                          units_lookup(pairs, run, str(tmp_path / "u")), options)
        assert from_units[3] == 0  # nothing skipped
        np.testing.assert_allclose(from_units[0], from_audio[0], rtol=1e-6)
        np.testing.assert_allclose(from_units[1], from_audio[1], rtol=1e-6)


def test_the_reference_s_mode_encodes_context_and_ending_as_one_recording(trained_run):
    run, bench = trained_run
    _, pairs = load(bench, "S")
    units_of = units_lookup(pairs, run, None, join=True)
    context, ending = pairs[0].positive[0].audio, pairs[0].positive[1].audio
    joined, parts = units_of((context, ending)), np.concatenate([units_of(context), units_of(ending)])
    # The joined recording has its own units (per-utterance normalisation and the frames at
    # the cut differ), about as many as the two parts'.
    assert abs(len(joined) - len(parts)) < 0.2 * len(parts) and not np.array_equal(joined, parts)
    model, vocabulary, _ = load_run_model(run, "cpu")
    scores = score_pairs(model, pairs, vocabulary, units_of, ScoringOptions())
    assert scores.num_skipped == 0 and len(scores.positive) == len(pairs)


def test_benchmark_units_once_cached_are_read_without_opening_the_audio_again(trained_run, tmp_path, monkeypatch):
    from simslm.eval import bench_units
    from simslm.speech import audio

    run, bench = trained_run
    monkeypatch.setattr(bench_units, "bench_units_cache", lambda: tmp_path / "cache")
    _, pairs = load(bench, "S")
    first = units_lookup(pairs, run, None)
    opened = []
    monkeypatch.setattr(audio, "audio_info", lambda path: opened.append(path) or (16000, 1.0))
    again = units_lookup(pairs, run, None)  # every run of a sweep after the first
    assert opened == []
    for pair in pairs:
        for part in pair.positive + pair.negative:
            if part.audio:
                np.testing.assert_array_equal(again(part.audio), first(part.audio))
    # A folder missing a shard is not complete: the headers are read and the shard extracted again.
    folder = next(path for path in (tmp_path / "cache").iterdir() if path.is_dir())
    next((folder / "shards").glob("shard-*.jsonl")).unlink()  # a shard, not the counts kept beside it
    units_lookup(pairs, run, None)
    assert opened


CONCURRENT_EXTRACTION = """
import json, sys
from pathlib import Path
run, cache, started, number, *paths = sys.argv[1:]
""" + logmel_held_until_started(3, 1.5) + """
from simslm.eval.bench_units import run_unit_source, units_for_audio
source = run_unit_source(Path(run))
(Path(started) / number).touch()
table = units_for_audio(paths, source, Path(cache), num_workers=1)
print(json.dumps({path: table[path].tolist() for path in paths}))
"""


def test_runs_evaluated_at_once_extract_their_benchmark_once_and_read_the_same_units(trained_run, tmp_path):
    """A sweep's runs that finish together evaluate together. Each extracted the benchmark's units into the same
    cache folder, and read the others' live work in the shards' journals as processes that had died there: it
    encoded those utterances again one at a time, and a third process would skip an utterance "that ended the
    process twice", writing the shard without it. One extracts now; the others wait for it and read its units."""
    import json
    import subprocess
    import sys

    run, bench = trained_run
    paths = [str(path) for path in sorted((bench / "audio").glob("*.flac"))]
    (tmp_path / "started").mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", CONCURRENT_EXTRACTION, str(run), str(tmp_path / "cache"),
                                   str(tmp_path / "started"), str(number), *paths],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for number in range(3)]
    outcomes = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err for _, err in outcomes]
    errors = "".join(err for _, err in outcomes)
    assert "ended the process" not in errors and "process ended while" not in errors, errors
    assert errors.count("being extracted into") == 2, errors  # the two that waited said so
    tables = [json.loads(out) for out, _ in outcomes]
    assert tables[0] == tables[1] == tables[2] and len(tables[0]) == len(paths)
    assert all(len(units) for units in tables[0].values())


def test_a_benchmark_built_again_into_its_folder_gets_its_own_units(trained_run, tmp_path, monkeypatch):
    # The cache was named by the files' paths alone: new audio under an old name kept the units of the old.
    import shutil

    from simslm.eval import bench_units

    run, bench = trained_run
    monkeypatch.setattr(bench_units, "bench_units_cache", lambda: tmp_path / "cache")
    shutil.copytree(bench, tmp_path / "bench")
    _, pairs = load(tmp_path / "bench", "S")
    context, ending = pairs[0].positive[0].audio, pairs[0].positive[1].audio
    before = units_lookup(pairs, run, None, join=True)
    old_context, old_joined = before(context), before((context, ending))
    shutil.copyfile(pairs[1].positive[0].audio, context)  # another story's context, under the first's name
    after = units_lookup(pairs, run, None, join=True)
    np.testing.assert_array_equal(after(context), before(pairs[1].positive[0].audio))
    assert not np.array_equal(after(context), old_context)
    assert not np.array_equal(after((context, ending)), old_joined)


def test_codebooks_of_the_same_centroids_with_other_encoder_settings_do_not_share_units(trained_run, tmp_path):
    """The cache was named by the centroids alone: a codebook converted again with another edge padding (or
    layer) would have been read the units the first one's settings made."""
    from dataclasses import replace

    from simslm.eval.bench_units import units_for_audio
    from simslm.units import kmeans

    run, bench = trained_run
    source = run_unit_source(run)
    codebook = kmeans.Codebook.load(source.codebook)
    other = kmeans.Codebook(codebook.centroids, {**codebook.meta, "encoder": {**codebook.meta["encoder"],
                                                                               "model_path": "elsewhere"}})
    paths = [str(path) for path in sorted((bench / "audio").glob("*.flac"))[:2]]
    first = units_for_audio(paths, source, tmp_path / "cache")
    again = units_for_audio(paths, replace(source, codebook=other.save(tmp_path / "other")), tmp_path / "cache")
    assert len([path for path in (tmp_path / "cache").iterdir() if path.is_dir()]) == 2  # two, not one read twice
    for path in paths:  # logmel ignores a checkpoint: the same units, from their own folder
        np.testing.assert_array_equal(first[path], again[path])


def test_benchmark_units_are_encoded_on_the_evaluations_device_in_a_folder_of_their_own(trained_run, tmp_path,
                                                                                        monkeypatch):
    """`eval --device cuda` encoded the benchmark's audio on the CPU (HuBERT over hours of audio, in each run's GPU
    job of a sweep). Now on the evaluation's device, as slamkit encodes a benchmark on the model's, into a folder of
    its own: a GPU's float32 units need not be the CPU's to the last frame."""
    from simslm.eval import bench_units

    run, bench = trained_run
    source = run_unit_source(run)
    paths = [str(path) for path in sorted((bench / "audio").glob("*.flac"))[:2]]
    asked = []

    def extract(config, records):
        asked.append(config)
        raise RuntimeError("stop here")

    monkeypatch.setattr(bench_units, "extract_units", extract)
    for device in ("cuda:1", "cpu"):
        with pytest.raises(RuntimeError, match="stop here"):
            bench_units.units_for_audio(paths, source, tmp_path / "cache", device=device)
    assert [config.device for config in asked] == ["cuda:1", "cpu"]
    assert asked[0].out != asked[1].out and asked[0].dtype == "float32"


def test_parts_joined_for_s_mode_are_each_resampled_as_the_codebook_records(tmp_path):
    """slamkit's cross-modal metric resamples each part (torchaudio's default) before joining them: the joined
    recording is the parts each brought to 16 kHz by the codebook's resampler, and another resampler's is
    another file."""
    import soundfile

    from simslm.eval.bench_units import _join_audio
    from simslm.speech import audio

    rng = np.random.default_rng(0)
    parts = []
    for name, seconds in (("context", 1.5), ("ending", 0.7)):
        samples = rng.uniform(-0.5, 0.5, int(24000 * seconds)).astype(np.float32)
        soundfile.write(tmp_path / f"{name}.wav", samples, 24000, subtype="FLOAT")
        parts.append((str(tmp_path / f"{name}.wav"), samples))
    paths = tuple(path for path, _ in parts)
    joined = {r: _join_audio(paths, tmp_path / "joined", r) for r in audio.RESAMPLERS}
    assert joined["soxr"] != joined["sinc-hann"]
    for resampler, path in joined.items():
        expected = np.concatenate([audio.resample(samples, 24000, 16000, resampler) for _, samples in parts])
        np.testing.assert_allclose(audio.load_audio(path), expected, atol=1 / 32768)  # written as 16-bit PCM


def test_a_generation_prompt_is_its_recordings_first_seconds_encoded_alone(tmp_path):
    """slamkit's PromptDataset cuts a prompt's waveform at `prompt_length` seconds (3) before its tokeniser
    encodes it; simslm cut the units of the whole recording at 60, about as long but not the same units."""
    import soundfile

    from simslm.eval.bench_units import _join_audio
    from simslm.speech import audio

    samples = (np.random.default_rng(1).uniform(-0.5, 0.5, 5 * 16000) * 32768).astype(np.int16)
    soundfile.write(tmp_path / "story.wav", samples, 16000, subtype="PCM_16")
    cut = _join_audio((str(tmp_path / "story.wav"),), tmp_path / "joined", "sinc-hann", 3.0)
    assert audio.audio_info(cut)[1] == 3.0
    np.testing.assert_array_equal(audio.load_audio(cut), audio.load_audio(tmp_path / "story.wav")[:48000])
    assert cut != _join_audio((str(tmp_path / "story.wav"),), tmp_path / "joined", "sinc-hann", 2.0)
    assert cut != _join_audio((str(tmp_path / "story.wav"),), tmp_path / "joined", "sinc-hann")  # whole
