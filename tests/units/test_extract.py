import json
import os
from pathlib import Path

import numpy as np
import pytest

from simslm.units.extract import ExtractConfig, extract_units
from simslm.units.folder import read_units
from tests.conftest import logmel_held_until_started
from tests.units.helpers import _DYING_EXTRACTION, _manifest_records


def test_extraction_skips_and_counts_bad_audio_and_covers_each_utterance(extracted):
    config, report, utterances = extracted
    assert (report.num_encoded, report.num_skipped, report.num_shards) == (4, 2, 3)
    assert report.skipped_by_reason == {"empty file": 1, "not a readable audio file (WAV, FLAC, MP3, Ogg)": 1}
    by_id = {u.id: u for u in read_units(config.out)}
    for utterance in utterances:
        result = by_id[utterance.id]
        assert abs(result.num_frames / result.frame_rate_hz - utterance.duration_sec) < 0.1
        assert result.units.max() < 32 and not np.any(result.units[1:] == result.units[:-1])
    assert report.num_frames > report.num_units  # deduplication removed repeats


def test_rerunning_extraction_does_no_new_work(extracted):
    config, first, _ = extracted
    again = extract_units(config)
    assert again.num_shards_done_now == 0
    assert (again.num_encoded, again.num_frames, again.num_units) == (first.num_encoded, first.num_frames,
                                                                       first.num_units)


def test_a_folder_extracted_before_edge_padding_was_recorded_resumes(extracted, tmp_path):
    """Its codebook and units.json have no `edge_pad`: the same settings as 0, not "units made with other
    settings"."""
    import shutil
    from dataclasses import replace

    config, first, _ = extracted
    shutil.copytree(config.out, tmp_path / "units")
    for suffix in (".npy", ".json"):
        shutil.copyfile(config.codebook.replace(".npy", suffix), tmp_path / f"km{suffix}")
    for path in (tmp_path / "km.json", tmp_path / "units" / "units.json"):
        recorded = json.loads(path.read_text())
        recorded["encoder"].pop("edge_pad")
        path.write_text(json.dumps(recorded))
    again = extract_units(replace(config, codebook=str(tmp_path / "km.npy"), out=str(tmp_path / "units")))
    assert again.num_shards_done_now == 0 and again.num_encoded == first.num_encoded


def test_extracting_into_a_folder_made_with_another_codebook_is_refused(extracted, tmp_path):
    config, _, _ = extracted
    from simslm.units import kmeans

    other = kmeans.Codebook(np.zeros((32, 160), np.float32), {"encoder": {"name": "logmel"}}).save(tmp_path / "o")
    with pytest.raises(ValueError, match="other settings"):
        extract_units(ExtractConfig(manifest=config.manifest, codebook=str(other), out=config.out))


def test_slamkit_features_import_as_a_units_folder(tmp_path):
    from simslm.units.extract import ImportConfig, import_slamkit_features

    lines = [{"units": [3, 49, 7, 254], "duration": [1, 1, 2, 1], "file_name": "../audio/audio2.flac"},
             {"units": [381, 267], "duration": [2, 3], "file_name": "../audio/audio1.flac"},
             {"units": [1, 2], "duration": [1], "file_name": "bad.flac"},        # lengths differ
             {"units": [600], "duration": [1], "file_name": "big.flac"}]         # beyond the codebook
    features = tmp_path / "features.jsonl"
    features.write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n")
    report = import_slamkit_features(ImportConfig(features=str(features), out=str(tmp_path / "units")))
    assert report["num_imported"] == 2 and report["num_skipped"] == 3
    imported = {u.id: u for u in read_units(tmp_path / "units")}
    assert imported["audio2"].units.tolist() == [3, 49, 7, 254] and imported["audio2"].frame_rate_hz == 25.0
    assert imported["audio1"].num_frames == 5
    header = json.loads((tmp_path / "units" / "units.json").read_text())
    assert header["k"] == 500 and header["encoder"]["edge_pad"] == 40  # slamkit's extraction pads its audio


def test_extraction_split_over_three_workers_gives_the_same_units(extracted, tmp_path, monkeypatch):
    from dataclasses import replace

    config, whole_report, _ = extracted  # shard_size 2 over 6 utterances: 3 shards
    whole = {u.id: (u.units.tolist(), u.durations.tolist()) for u in read_units(config.out)}
    split = replace(config, out=str(tmp_path / "split"), num_shards=3, num_workers=1)
    first = extract_units(replace(split, shard_index=0))
    monkeypatch.setenv("RANK", "1")  # as torchrun numbers its processes
    report = extract_units(split)
    assert report.num_shards_done_now == 1 and report.num_shards_present == 2
    with pytest.raises(ValueError, match="2 of 3 shards extracted"):  # a part is never read as the whole
        list(read_units(tmp_path / "split"))
    # Until the folder is whole, a process counts its own shards (the others' are still being written), and
    # report.json, the whole extraction's, is not written.
    assert not (tmp_path / "split" / "report.json").exists()
    last = extract_units(replace(split, shard_index=2))
    assert {u.id: (u.units.tolist(), u.durations.tolist()) for u in read_units(tmp_path / "split")} == whole
    for shard, partial in enumerate((first, report)):
        lines = [json.loads(line) for line in (tmp_path / "split" / "shards" / f"shard-{shard:05d}.jsonl").open()]
        assert (partial.num_encoded, partial.num_skipped, partial.num_units) == (
            sum("units" in line for line in lines), sum("skipped" in line for line in lines),
            sum(len(line.get("units", ())) for line in lines))
    # The process that completes the folder reports it all.
    fields = ("num_encoded", "num_skipped", "num_frames", "num_units")
    assert last.num_shards_present == 3
    assert [getattr(last, name) for name in (*fields, "audio_sec", "skipped_by_reason")] == \
        [getattr(whole_report, name) for name in (*fields, "audio_sec", "skipped_by_reason")]
    written = json.loads((tmp_path / "split" / "report.json").read_text())
    assert [written[name] for name in fields] == [getattr(whole_report, name) for name in fields]
    # The completing process summed each shard's counts, kept beside it, without reading the manifest or the
    # shards again; a folder whose shards have none (written before they were kept) is counted from its lines.
    from simslm.units import extract

    def unread(*args, **kwargs):  # a pass over the manifest fails at its first line
        pytest.fail("the manifest was read again")
        yield

    monkeypatch.setattr(extract, "manifest_records", unread)
    monkeypatch.setattr(extract, "_prepare_folder", lambda *args: 6)  # the header's pass, not under test here
    again = extract_units(split)
    assert [getattr(again, name) for name in (*fields, "audio_sec", "skipped_by_reason")] == \
        [getattr(whole_report, name) for name in (*fields, "audio_sec", "skipped_by_reason")]
    monkeypatch.undo()
    for counts in (tmp_path / "split" / "shards").glob("*.totals.json"):
        counts.unlink()
    older = extract_units(split)
    assert [getattr(older, name) for name in (*fields, "audio_sec", "skipped_by_reason")] == \
        [getattr(whole_report, name) for name in (*fields, "audio_sec", "skipped_by_reason")]


def test_a_later_process_takes_the_manifests_check_from_units_json(extracted, tmp_path, monkeypatch):
    """The first process checks the manifest line by line (19 minutes at Libri-Light's size); a later one (the
    rest of an array, a requeued job) whose manifest is the one units.json stamps reads only its JSON."""
    import shutil
    from dataclasses import replace

    from simslm.speech.manifest import iter_utterances
    from simslm.units import extract

    config, _, _ = extracted
    shutil.copyfile(config.manifest, tmp_path / "manifest.jsonl")
    mine = replace(config, manifest=str(tmp_path / "manifest.jsonl"), out=str(tmp_path / "units"), num_workers=1)
    checked = []
    monkeypatch.setattr(extract, "iter_utterances", lambda path: checked.append(path) or iter_utterances(path))
    first = extract_units(mine)
    assert len(checked) == 1
    again = extract_units(mine)
    assert len(checked) == 1 and again.num_encoded == first.num_encoded
    # Touched (or copied, or moved): checked again, and stamped anew for the next.
    os.utime(tmp_path / "manifest.jsonl")
    extract_units(mine)
    extract_units(mine)
    assert len(checked) == 2
    # Edited, its size and time as they were: the ends differ, it is checked, and its other ids refused.
    text = (tmp_path / "manifest.jsonl").read_text()
    status = (tmp_path / "manifest.jsonl").stat()
    (tmp_path / "manifest.jsonl").write_text(text.replace('"id": "', '"id": "X', 1)[:-1])
    os.utime(tmp_path / "manifest.jsonl", ns=(status.st_atime_ns, status.st_mtime_ns))
    with pytest.raises(ValueError, match="other settings .*utterance_ids_sha256"):
        extract_units(mine)
    assert len(checked) == 3


@pytest.mark.slow
def test_extraction_as_a_submitit_job_array(extracted, tmp_path):
    from dataclasses import replace

    from simslm.units.extract import extract_on_slurm

    pytest.importorskip("submitit")
    config, _, _ = extracted
    whole = {u.id: u.units.tolist() for u in read_units(config.out)}
    report = extract_on_slurm(replace(config, out=str(tmp_path / "array"), num_shards=2, num_workers=1,
                                      executor="slurm", cluster="local", timeout_min=10))
    assert report.num_shards == 3 and report.num_shards_done_now == 3  # the array's work, not the counting call's
    assert json.loads((tmp_path / "array" / "report.json").read_text())["num_shards_done_now"] == 3
    assert {u.id: u.units.tolist() for u in read_units(tmp_path / "array")} == whole
    assert list((tmp_path / "array" / "submitit").iterdir())  # it went through submitit, inside --out
    # Each job is requeued when warned of its time limit (submitit asks its function for `checkpoint`), to go on
    # with the shards not yet written.
    from submitit.core.utils import DelayedSubmission

    submitted = list((tmp_path / "array" / "submitit").glob("*_submitted.pkl"))
    assert len(submitted) == 2 and all(hasattr(DelayedSubmission.load(path).function, "checkpoint")
                                       for path in submitted)


def test_each_process_reads_its_own_shards_from_where_they_start(extracted, tmp_path, monkeypatch):
    """The first process records where each shard starts in the manifest; the others read their shards' lines
    alone. Blank lines, CRLF ends and a byte-order mark are counted as the readers count them."""
    from dataclasses import replace

    from simslm.units import extract

    config, _, _ = extracted
    whole = {u.id: (u.units.tolist(), u.durations.tolist()) for u in read_units(config.out)}
    lines = open(config.manifest, encoding="utf-8").read().splitlines()
    (tmp_path / "m.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n\r\n".join(lines).encode() + b"\r\n  \r\n")
    split = replace(config, manifest=str(tmp_path / "m.jsonl"), out=str(tmp_path / "units"), num_shards=2,
                    num_workers=1)
    extract_units(replace(split, shard_index=0))
    read_at = []
    shard_records = extract._shard_records
    monkeypatch.setattr(extract, "_shard_records", lambda *args: read_at.append(args[1]) or shard_records(*args))
    extract_units(replace(split, shard_index=1))
    offsets = np.load(tmp_path / "units" / "shard_offsets.npy")
    assert len(offsets) == 3 and read_at == [offsets[1]]  # shard 1 of 3, read from where it starts
    assert {u.id: (u.units.tolist(), u.durations.tolist()) for u in read_units(tmp_path / "units")} == whole
    # Offsets that do not match the digest units.json holds are not used: the manifest is read in turn.
    np.save(tmp_path / "units" / "shard_offsets.npy", offsets + 1)
    (tmp_path / "units" / "shards" / "shard-00001.jsonl").unlink()
    read_at.clear()
    extract_units(replace(split, shard_index=1))
    assert read_at == [] and {u.id: (u.units.tolist(), u.durations.tolist())
                              for u in read_units(tmp_path / "units")} == whole


def test_a_bad_manifest_stops_a_job_array_before_any_job_is_queued(extracted, tmp_path):
    # Each job of the array would check the whole manifest and fail alike; it is checked once, where it is submitted.
    from dataclasses import replace

    from simslm.speech.manifest import ManifestError
    from simslm.units.extract import extract_on_slurm

    config, _, _ = extracted
    lines = open(config.manifest).read().splitlines()
    (tmp_path / "bad.jsonl").write_text("\n".join(lines[:2] + ["{not json"] + lines[2:]) + "\n")
    with pytest.raises(ManifestError, match=r"bad\.jsonl:3: "):
        extract_on_slurm(replace(config, manifest=str(tmp_path / "bad.jsonl"), out=str(tmp_path / "array"),
                                 num_shards=2, executor="slurm", cluster="local", timeout_min=10))
    assert not (tmp_path / "array" / "submitit").exists()


def test_batch_size_does_not_change_the_units(extracted, tmp_path):
    from dataclasses import replace

    config, _, _ = extracted  # extracted 16 at a time (the default for logmel)
    whole = {u.id: (u.units.tolist(), u.durations.tolist()) for u in read_units(config.out)}
    extract_units(replace(config, out=str(tmp_path / "one"), batch_size=1, num_workers=1))
    assert {u.id: (u.units.tolist(), u.durations.tolist()) for u in read_units(tmp_path / "one")} == whole


def test_a_shard_s_audio_is_decoded_by_threads_in_order_with_each_failure_in_its_place(extracted, monkeypatch):
    # On a GPU the one worker decodes with all cores (libsndfile and soxr let go of the GIL); the encoder must
    # still see each utterance where it was, and a bad file must still be skipped under its own id.
    import threading
    import time

    from simslm.speech import audio
    from simslm.units.extract import load_all

    config, _, _ = extracted
    records = _manifest_records(config.manifest)
    alone = load_all(records, threads=1, resampler="soxr")
    decoders, real = set(), audio.load_audio

    def slowly(path, *args, **kwargs):
        decoders.add(threading.get_ident())
        time.sleep(0.05)  # long enough that one thread cannot take every file
        return real(path, *args, **kwargs)

    monkeypatch.setattr(audio, "load_audio", slowly)
    together = load_all(records, threads=4, resampler="soxr")
    assert len(decoders) > 1
    assert len(together) == len(alone) == len(records)
    for first, second in zip(alone, together):
        if isinstance(first, audio.AudioError):
            assert isinstance(second, audio.AudioError) and str(second) == str(first)
        else:
            assert np.array_equal(first, second)
    assert sum(isinstance(result, audio.AudioError) for result in together) == 2  # the empty and unreadable files


@pytest.mark.slow
def test_hubert_extraction_batched_and_in_half_precision(extracted, hubert_codebook, tmp_path):
    from dataclasses import replace

    config, _, _ = extracted
    base = replace(config, codebook=str(hubert_codebook), num_workers=1, shard_size=3)
    one = extract_units(replace(base, out=str(tmp_path / "one"), batch_size=1))
    four = extract_units(replace(base, out=str(tmp_path / "four"), batch_size=4))
    assert (one.num_encoded, one.num_skipped) == (four.num_encoded, four.num_skipped) == (4, 2)
    units = lambda out: {u.id: (u.units.tolist(), u.durations.tolist()) for u in read_units(out)}  # noqa: E731
    assert units(tmp_path / "four") == units(tmp_path / "one")
    # bfloat16 is checked against float32 on each shard's first batch; the agreement goes into report.json.
    half = extract_units(replace(base, out=str(tmp_path / "bf16"), dtype="bfloat16", min_agreement=0.01))
    agreement = json.loads((tmp_path / "bf16" / "report.json").read_text())["half_precision_agreement"]
    assert half.num_encoded == 4 and 0.01 <= agreement <= 1
    if agreement < 1:  # too low an agreement stops the extraction, naming it
        with pytest.raises(ValueError, match="float32 units on only"):
            extract_units(replace(base, out=str(tmp_path / "strict"), dtype="bfloat16", min_agreement=1.0))


@pytest.mark.parametrize(("failure", "dtype"), [("cuda", "float32"), ("cpu allocator", "float32"),
                                                ("cuda", "bfloat16")])
@pytest.mark.slow
def test_an_utterance_too_long_for_memory_is_skipped_and_counted(extracted, hubert_codebook, tmp_path, monkeypatch,
                                                                 failure, dtype):
    """An allocation that fails on one recording (CUDA's out of memory; the CPU allocator's, under a memory limit)
    skips that recording, counted under its own reason, and the rest of its batch and shard is encoded as before;
    it used to end the extraction, and every rerun of it at the same shard. In half precision the check against
    float32 on the shard's first batch leaves it to the extraction too (it ended the extraction there)."""
    from dataclasses import replace

    import torch
    from transformers import HubertModel

    from simslm.speech import audio
    from simslm.units.fit import FitConfig, fit_codebook

    config, _, _ = extracted
    base = replace(config, codebook=str(hubert_codebook), num_workers=1, shard_size=6, batch_size=4, dtype=dtype,
                   min_agreement=0.01)
    before = extract_units(replace(base, out=str(tmp_path / "before")))
    lengths = {r["id"]: len(audio.load_audio(r["path"])) for r in _manifest_records(config.manifest)
               if r["id"] in {u.id for u in read_units(tmp_path / "before")}}
    longest = max(lengths, key=lengths.get)
    limit = sorted(lengths.values())[-2] + 2 * 40  # the edge padding
    forward = HubertModel.forward
    errors = {"cuda": lambda n: torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n} bytes."),
              "cpu allocator": lambda n: RuntimeError(f"[enforce fail at alloc_cpu.cpp:127] err == 0. "
                                                      f"DefaultCPUAllocator: can't allocate memory: you tried to "
                                                      f"allocate {n} bytes. Error code 12")}

    def short_only(self, input_values, *args, **kwargs):
        if input_values.shape[1] > limit:
            raise errors[failure](input_values.numel() * 4 * 512)
        return forward(self, input_values, *args, **kwargs)

    monkeypatch.setattr(HubertModel, "forward", short_only)
    after = extract_units(replace(base, out=str(tmp_path / "after")))
    assert after.num_encoded == before.num_encoded - 1
    assert after.skipped_by_reason == {**before.skipped_by_reason, "out of memory (too long to encode whole)": 1}
    units = lambda out: {u.id: u.units.tolist() for u in read_units(out)}  # noqa: E731
    assert units(tmp_path / "after") == {k: v for k, v in units(tmp_path / "before").items() if k != longest}
    line = next(json.loads(line) for line in (tmp_path / "after" / "shards" / "shard-00000.jsonl").open()
                if json.loads(line)["id"] == longest)
    assert "ran out of memory" in line["skipped"] and "simslm segment" in line["skipped"]
    # A codebook fit on the same corpus skips it alike, and says so.
    fitted = fit_codebook(FitConfig(manifest=config.manifest, out=str(tmp_path / "km"), encoder="mhubert-25hz",
                                    model_path=json.loads(Path(hubert_codebook).with_suffix(".json").read_text())
                                    ["encoder"]["model_path"], layer=2, num_units=2, num_workers=1))
    assert json.loads(fitted.with_suffix(".json").read_text())["skipped_by_reason"][
        "out of memory (too long to encode whole)"] == 1


@pytest.mark.slow
def test_an_utterance_that_ends_the_process_encoding_it_twice_alone_is_skipped(extracted, hubert_codebook,
                                                                                tmp_path, monkeypatch, capsys):
    """The kernel's OOM killer ends a process without a Python error: every run of the extraction ended at the
    same shard. Now the group being encoded when the process ended is encoded one at a time next, and an utterance
    that ends it twice alone is skipped and counted; the rest of its shard, and its batch, are encoded as before.
    A run stopped in Python (Ctrl-C, SIGTERM) in between holds nothing against the utterance in hand."""
    import subprocess
    import sys
    from dataclasses import asdict, replace

    from transformers import HubertModel

    from simslm.speech import audio
    from simslm.units.journal import ENDED_THE_PROCESS, ShardJournal

    config, _, _ = extracted
    base = replace(config, codebook=str(hubert_codebook), num_workers=1, shard_size=6, batch_size=4)
    before = extract_units(replace(base, out=str(tmp_path / "before")))
    lengths = {r["id"]: len(audio.load_audio(r["path"])) for r in _manifest_records(config.manifest)
               if r["id"] in {u.id for u in read_units(tmp_path / "before")}}
    longest = max(lengths, key=lengths.get)
    limit = sorted(lengths.values())[-2] + 2 * 40  # past every input but the longest's, edge padding included
    killed = replace(base, out=str(tmp_path / "killed"))
    forward = HubertModel.forward

    def stopped(self, input_values, *args, **kwargs):
        if input_values.shape[1] > limit:
            raise KeyboardInterrupt  # Ctrl-C (SIGTERM comes as jobs.Stopped, a BaseException too)
        return forward(self, input_values, *args, **kwargs)

    codes = []
    for number in range(3):  # killed (first in a batch of several, then twice alone), stopped in Python between
        codes.append(subprocess.run([sys.executable, "-c", _DYING_EXTRACTION, str(limit), json.dumps(asdict(killed))],
                                    capture_output=True, text=True, timeout=300).returncode)
        if number < 2:
            with monkeypatch.context() as patch:
                patch.setattr(HubertModel, "forward", stopped)
                with pytest.raises(KeyboardInterrupt):
                    extract_units(killed)
    assert codes == [-9, -9, -9]
    attempts = ShardJournal.of(tmp_path / "killed" / "shards" / "shard-00000.jsonl").attempts()
    last_groups = [[line["encoding"] for line in lines if "encoding" in line][-1] for _, lines in attempts]
    assert len(last_groups[0]) > 1 and last_groups[1:] == [[longest]] * 4
    assert [any("stopped" in line for line in lines) for _, lines in attempts] == [False, True, False, True, False]
    capsys.readouterr()
    after = extract_units(killed)  # the forward as it is: the longest is not encoded again
    # Said, since a run killed in the command's own process could say nothing ("Killed").
    assert f"an earlier run's process ended while encoding {longest}; skipping {longest}" in capsys.readouterr().err
    assert after.skipped_by_reason == {**before.skipped_by_reason, ENDED_THE_PROCESS: 1}
    units = lambda out: {u.id: u.units.tolist() for u in read_units(out)}  # noqa: E731
    assert units(tmp_path / "killed") == {k: v for k, v in units(tmp_path / "before").items() if k != longest}
    assert not (tmp_path / "killed" / "shards" / ".shard-00000.encoding").exists()


_DYING_READ = """
import json, os, signal, sys
from simslm.speech import audio
from simslm.units.extract import ExtractConfig, extract_units
victim, config = sys.argv[1], json.loads(sys.argv[2])
load = audio.load_audio
def dying(path, *args, **kwargs):
    if str(path).endswith(victim):  # as decoding a recording of ten hours ends a job's memory
        os.kill(os.getpid(), signal.SIGKILL)
    return load(path, *args, **kwargs)
audio.load_audio = dying
extract_units(ExtractConfig(**config))
"""


def test_a_recording_that_ends_the_process_reading_it_is_read_alone_then_skipped(extracted, tmp_path, capsys):
    """A shard's audio is read before any of it is encoded: a process killed there held nothing against any
    utterance, so every run ended at that shard. Now the shard's reading is journaled too: a group that died
    being read is read one at a time next, and a recording that ends its process twice being read alone is not
    read again, but skipped and counted."""
    import subprocess
    import sys
    from dataclasses import asdict, replace

    from simslm.units.journal import ENDED_THE_PROCESS, ShardJournal

    config, before, utterances = extracted
    killed = replace(config, out=str(tmp_path / "killed"), num_workers=1, shard_size=6)
    victim = utterances[1].audio.split("/")[-1]
    codes, said = [], []
    for _ in range(3):  # killed reading the shard, then twice reading the recording alone
        done = subprocess.run([sys.executable, "-c", _DYING_READ, victim, json.dumps(asdict(killed))],
                              capture_output=True, text=True, timeout=300)
        codes.append(done.returncode)
        said.append(done.stderr)
    assert codes == [-9, -9, -9]
    shard = [u.id for u in utterances] + ["empty", "corrupt"]  # in the manifest's order
    assert (f"an earlier run's process ended while reading {', '.join(shard)}; reading {', '.join(sorted(shard))} "
            f"one at a time") in said[1]
    # Read alone, the first one cleared: the rest are still read one at a time.
    assert (f"ended while reading {utterances[1].id}; reading {', '.join(sorted(shard[1:]))} one at a time"
            ) in said[2]
    attempts = ShardJournal.of(tmp_path / "killed" / "shards" / "shard-00000.jsonl").attempts()
    assert [[line["reading"] for line in lines if "reading" in line][-1] for _, lines in attempts][1:] == [
        [utterances[1].id]] * 2
    capsys.readouterr()
    after = extract_units(killed)  # the audio as it is: the recording is not read again
    assert f"skipping {utterances[1].id} (2 times alone)" in capsys.readouterr().err
    assert after.skipped_by_reason == {**before.skipped_by_reason, ENDED_THE_PROCESS: 1}
    units = lambda out: {u.id: u.units.tolist() for u in read_units(out)}  # noqa: E731
    assert units(tmp_path / "killed") == {k: v for k, v in units(config.out).items() if k != utterances[1].id}


def test_other_runtime_errors_of_an_encoder_are_not_taken_for_memory():
    import torch

    from simslm.machine import out_of_memory

    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory")) and out_of_memory(MemoryError())
    assert not out_of_memory(RuntimeError("Given groups=1, weight of size [512, 1, 10], expected input"))
    assert not out_of_memory(ValueError("out of memory"))


def test_a_codebook_extracts_with_the_edge_padding_it_records(extracted, hubert_codebook, tmp_path):
    """A codebook recorded before edge padding existed (no `edge_pad`) goes on encoding without it, so a run's
    benchmarks match its training units; one that records slamkit's 40 pads each utterance by 40 samples a side."""
    from dataclasses import replace

    from transformers import HubertModel

    from simslm.speech import audio
    from simslm.units import kmeans

    config, _, _ = extracted
    old = kmeans.Codebook.load(hubert_codebook)
    assert "edge_pad" not in old.meta["encoder"]
    padded = kmeans.Codebook(old.centroids, {**old.meta, "encoder": {**old.meta["encoder"], "edge_pad": 40}}
                             ).save(tmp_path / "km20-padded")
    model = HubertModel.from_pretrained(old.meta["encoder"]["model_path"])
    frames = {}
    for name, codebook in (("old", hubert_codebook), ("padded", padded)):
        extract_units(replace(config, codebook=str(codebook), out=str(tmp_path / name), num_workers=1))
        frames[name] = {u.id: u.num_frames for u in read_units(tmp_path / name)}
    assert frames["old"] != frames["padded"]
    paths = {r["id"]: r["path"] for r in _manifest_records(config.manifest)}
    for identifier, count in frames["old"].items():
        length = len(audio.load_audio(paths[identifier]))
        assert count == int(model._get_feat_extract_output_lengths(length))
        assert frames["padded"][identifier] == int(model._get_feat_extract_output_lengths(length + 80))


def test_audio_at_another_rate_is_resampled_as_its_codebook_records(hubert_codebook, tmp_path):
    """A 24 kHz recording gets the units of its audio brought to 16 kHz by the codebook's resampler: torchaudio's
    `sinc-hann` for a codebook that records it (as slamkit's extraction resamples), soxr for one recorded before
    the field existed. Each equals the units of a 16 kHz file holding that resampler's output."""
    import soundfile

    from simslm.speech import audio
    from simslm.units import kmeans

    rng = np.random.default_rng(4)
    samples = np.cumsum(rng.standard_normal(24000 * 3)).astype(np.float32)  # energy up to the band's top too
    samples = (0.5 * (samples - np.convolve(samples, np.ones(8) / 8, "same")) / np.abs(samples).max()).astype(
        np.float32)
    soundfile.write(tmp_path / "at24k.wav", samples, 24000, subtype="FLOAT")
    old = kmeans.Codebook.load(hubert_codebook)
    assert "resampler" not in old.meta["encoder"]
    codebooks = {"soxr": hubert_codebook, "sinc-hann": kmeans.Codebook(
        old.centroids, {**old.meta, "encoder": {**old.meta["encoder"], "resampler": "sinc-hann"}}
    ).save(tmp_path / "km-sinc")}
    units = {}
    for resampler, codebook in codebooks.items():
        soundfile.write(tmp_path / f"{resampler}.wav", audio.resample(samples, 24000, 16000, resampler), 16000,
                        subtype="FLOAT")
        for name in ("at24k", resampler):
            manifest = tmp_path / f"{name}-{resampler}.jsonl"
            manifest.write_text(json.dumps({"id": "u", "audio": str(tmp_path / f"{name}.wav"), "sample_rate": 16000,
                                            "duration_sec": 3.0, "transcript": "x"}) + "\n")
            out = tmp_path / f"units-{name}-{resampler}"
            extract_units(ExtractConfig(manifest=str(manifest), codebook=str(codebook), out=str(out), num_workers=1))
            units[name, resampler] = next(read_units(out)).units.tolist()
        assert units["at24k", resampler] == units[resampler, resampler]
    assert units["at24k", "soxr"] != units["at24k", "sinc-hann"]


def test_devices_and_precisions_that_cannot_be_used_are_refused(extracted, tmp_path, capsys):
    from simslm.cli import main

    config, _, _ = extracted
    common = ["units", "extract", "--manifest", config.manifest, "--codebook", config.codebook]
    assert main(common + ["--out", str(tmp_path / "a"), "--dtype", "float16"]) == 2
    assert "logmel encoder computes in float32" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert main(common + ["--out", str(tmp_path / "b"), "--device", "cuda"]) == 2
        assert "torch sees no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_importing_slamkit_units_with_a_codebook_that_does_not_pad_warns(tmp_path, capsys):
    """slamkit padded the audio of the units it extracted, and resampled it with torchaudio's default; a codebook
    converted before simslm recorded the padding (or with --edge-pad 0), or the resampler, would encode benchmark
    audio otherwise."""
    from simslm.units import kmeans
    from simslm.units.extract import ImportConfig, import_slamkit_features

    features = tmp_path / "features.jsonl"
    features.write_text(json.dumps({"units": [1, 2], "duration": [1, 2], "file_name": "a.flac"}) + "\n")
    centroids = np.zeros((4, 8), np.float32)
    padding, resampling = "encodes audio with 0 zero samples at each end", "resampled by soxr"
    for name, encoder, warned in (
            ("old", {"name": "mhubert-25hz", "model_path": None, "layer": None}, {padding, resampling}),
            ("padded", {"name": "mhubert-25hz", "edge_pad": 40}, {resampling}),
            ("new", {"name": "mhubert-25hz", "edge_pad": 40, "resampler": "sinc-hann"}, set())):
        codebook = kmeans.Codebook(centroids, {"encoder": encoder}).save(tmp_path / name)
        import_slamkit_features(ImportConfig(features=str(features), out=str(tmp_path / f"units-{name}"),
                                             num_units=4, codebook=str(codebook)))
        err = capsys.readouterr().err
        assert {said for said in (padding, resampling) if said in err} == warned


def test_the_quick_passes_over_a_checked_manifest_read_the_records_the_checked_pass_reads(tmp_path):
    # `units extract` checks its manifest in a first pass, then streams it twice reading only the JSON.
    from simslm.units.extract import manifest_records

    lines = [{"id": "a", "audio": "x/a.flac", "sample_rate": 16000, "duration_sec": 1.5, "transcript": "hi",
              "words": [{"word": "hi", "start_sec": 0.1, "end_sec": 0.4}]},
             {"id": "b", "audio": str(tmp_path / "elsewhere" / "b.wav"), "sample_rate": 16000, "duration_sec": 2,
              "transcript": ""}]
    # A byte-order mark, Windows line ends and a blank line, as an editor may leave them.
    (tmp_path / "m.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n\r\n".join(json.dumps(line) for line in lines)
                                       .encode() + b"\r\n")
    manifest = tmp_path / "m.jsonl"
    checked, quick = list(manifest_records(manifest, checked=True)), list(manifest_records(manifest))
    assert quick == checked == [{"id": "a", "path": str(tmp_path / "x" / "a.flac"), "duration_sec": 1.5},
                                {"id": "b", "path": str(tmp_path / "elsewhere" / "b.wav"), "duration_sec": 2}]


TWICE_AT_ONCE = """
import sys
from pathlib import Path
manifest, codebook, out, started, number = sys.argv[1:]
""" + logmel_held_until_started(3, 0.7) + """
from simslm.units.extract import ExtractConfig, extract_units
(Path(started) / number).touch()
extract_units(ExtractConfig(manifest=manifest, codebook=codebook, out=out, shard_size=1, num_workers=1,
                            batch_size=1))
"""


def test_the_same_extraction_run_three_times_at_once_shares_the_shards_and_skips_nothing(extracted, tmp_path):
    """The same `units extract` started three times at once into one folder (a command run twice; an evaluation's
    cache, filled by runs that finish together): each read the others' live attempts in the shards' journals as
    processes that had died there, encoded those utterances again one at a time, and, with one utterance a group,
    a third one counted two deaths and skipped an utterance, writing the shard without it. A shard is now held by
    the process extracting it: the others leave it, and take the rest."""
    import subprocess
    import sys

    from simslm.units.folder import units_complete

    config, _, utterances = extracted
    (tmp_path / "started").mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", TWICE_AT_ONCE, config.manifest, config.codebook,
                                   str(tmp_path / "units"), str(tmp_path / "started"), str(number)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for number in range(3)]
    outcomes = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err for _, err in outcomes]
    errors = "".join(err for _, err in outcomes)
    assert "process ended while" not in errors and "skipping" not in errors, errors
    assert "were being extracted by another process" in errors, errors  # they did overlap, and shared the work
    assert units_complete(tmp_path / "units")
    assert sorted(u.id for u in read_units(tmp_path / "units")) == sorted(u.id for u in utterances)
    report = json.loads((tmp_path / "units" / "report.json").read_text())  # by the one that wrote the last shard
    assert (report["num_encoded"], report["num_skipped"]) == (len(utterances), 2)  # the empty and corrupt files
    assert "ended the process" not in json.dumps(report["skipped_by_reason"])

