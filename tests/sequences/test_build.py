from dataclasses import replace

import numpy as np
import pytest

from simslm import storage
from simslm.sequences.build import BuildConfig, build_sequences, context_pieces, mix_streams, pack, parse_mix
from simslm.sequences.interleave import Sample
from simslm.sequences.show import stats
from simslm.sequences.vocabulary import Vocabulary
from simslm.speech.manifest import Word, read_manifest, write_manifest
from tests.sequences.conftest import epoch_documents


def test_build_packs_whole_documents_with_positions_that_restart(build, extracted):
    index, out = build(mix=("interleaved=0.5", "speech=0.25", "text=0.25"), mix_by="tokens")
    vocabulary = Vocabulary.load(f"{out}/tokenizer")
    for entry in index["epochs"]:
        folder = f"{out}/epoch-{entry['epoch']:03d}"
        rows, positions = np.load(f"{folder}/{entry['shards'][0]}"), np.load(f"{folder}/{entry['position_shards'][0]}")
        assert rows.dtype == np.uint32 and rows.shape == positions.shape and rows.shape[1] == 256
        for row, position in zip(rows, positions):
            starts = np.flatnonzero(position == 0)
            # Every document starts at position 0 and counts up; padding only fills a row's end.
            for a, b in zip(starts, [*starts[1:], len(row)]):
                assert np.array_equal(position[a:b], np.arange(b - a))
            padding = np.flatnonzero(row == vocabulary.pad_id)
            assert len(padding) == 0 or padding[0] in starts and (row[padding[0]:] == vocabulary.pad_id).all()
        counts = entry["token_counts"]
        assert counts["speech"] + counts["text"] + counts["marker"] + counts["padding"] == entry["num_chunks"] * 256
        assert counts["padding"] < 0.1 * entry["num_chunks"] * 256
    rows = stats(out)
    assert 0.3 <= rows[0]["interleaved_speech_word_share"] < 0.6
    for row, entry in zip(rows, index["epochs"]):  # the documents, as the rows hold them
        documents = epoch_documents(out, entry)
        assert row["num_documents"] == len(documents)
        assert row["mean_document_tokens"] == pytest.approx(np.mean([len(document) for document in documents]))
    assert rows[0]["skipped"] == {"no units extracted": 2}  # the empty and the corrupt file


def _stream(name, lengths):
    return [Sample(id=f"{name}{i}", tokens=np.zeros(n, np.uint32), kinds=np.zeros(n, np.uint8))
            for i, n in enumerate(lengths)]


def test_mixing_draws_samples_as_interleave_datasets_does():
    samples = {"interleaved": _stream("i", [100] * 2000), "speech": _stream("s", [37] * 3000),
               "text": _stream("t", [11] * 20000)}
    shares = {"interleaved": 0.5, "speech": 0.3, "text": 0.2}
    chosen, taken = mix_streams(samples, shares, np.random.default_rng(0), by="samples")
    counts = {name: sum(s.id.startswith(name[0]) for s in chosen) for name in samples}
    # first_exhausted: the mixture ends with the sample that empties a stream.
    assert counts["interleaved"] == 2000 and chosen[-1].id == "i1999" and abs(counts["speech"] / 1200 - 1) < 0.1
    assert abs(counts["text"] / 800 - 1) < 0.1
    assert [s.id for s in chosen if s.id.startswith("s")] == [f"s{i}" for i in range(counts["speech"])]
    # by tokens: the same draw, with each stream's expected share of the tokens as asked, whatever the spread of a
    # stream's lengths (its mean length per draw counts, not its median).
    samples["text"] = _stream("t", [5, 5, 5, 50, 50] * 4000)
    chosen, taken = mix_streams(samples, shares, np.random.default_rng(0), by="tokens")
    total = sum(taken.values())
    assert all(abs(taken[name] / total - share) < 0.03 for name, share in shares.items())
    assert sum(len(s.tokens) for s in chosen) == total
    with pytest.raises(ValueError, match="not built"):
        parse_mix(("audio=1",), ["text"])


def test_the_mixture_is_sample_for_sample_what_datasets_interleave_datasets_gives_slamkit():
    datasets = pytest.importorskip("datasets")
    # slamkit: interleave_datasets(streams, probabilities=train_ratios, stopping_strategy="first_exhausted", seed=0)
    lengths = {"text": 120, "interleaved": 700, "speech": 350}  # text, drawn least, runs out first
    shares = {"text": 0.2023584112, "interleaved": 0.5433262899, "speech": 0.2543152989}  # its scaling config
    samples = {name: _stream(name[0], [5] * n) for name, n in lengths.items()}
    ours, _ = mix_streams(samples, shares, np.random.default_rng(0))
    theirs = datasets.interleave_datasets(
        [datasets.Dataset.from_dict({"id": [s.id for s in samples[name]]}) for name in lengths],
        probabilities=list(shares.values()), stopping_strategy="first_exhausted", seed=0)
    assert [s.id for s in ours] == theirs["id"]
    # Before, the mixture went on after a stream had run out, until a draw fell on it again.
    assert len(ours) == len(theirs)


def test_streams_are_cut_to_the_context_before_they_are_mixed_as_slamkit_does():
    datasets = pytest.importorskip("datasets")
    # slamkit maps chunk_texts (pieces of context_len and the rest) over each stream, then interleaves: a draw takes
    # a piece. Long text documents are 4 pieces each, so the text stream lasts 4 times as many draws.
    samples = {"text": _stream("t", [100] * 30), "speech": _stream("s", [20] * 200)}
    pieces = {name: context_pieces(stream, 32) for name, stream in samples.items()}
    assert [p.id for p in pieces["text"][:5]] == ["t0#0", "t0#1", "t0#2", "t0#3", "t1#0"]
    assert [len(p.tokens) for p in pieces["text"][:4]] == [32, 32, 32, 4] and len(pieces["speech"]) == 200
    ours, taken = mix_streams(pieces, {"text": 0.5, "speech": 0.5}, np.random.default_rng(0))

    def chunked(stream):  # each document's tokens in consecutive pieces of 32, the rest kept
        ids = [f"{s.id}#{k}" if len(s.tokens) > 32 else s.id for s in stream for k in range(-(-len(s.tokens) // 32))]
        return datasets.Dataset.from_dict({"id": ids})

    theirs = datasets.interleave_datasets([chunked(samples["text"]), chunked(samples["speech"])], probabilities=[0.5, 0.5],
                                          stopping_strategy="first_exhausted", seed=0)
    assert [p.id for p in ours] == theirs["id"]
    assert sum(p.id.startswith("t") for p in ours) == 120  # all 4 pieces of all 30 documents: text ran out first


def test_a_build_mixes_pieces_of_the_context_not_wholeepoch_documents(build, monkeypatch):
    from simslm.sequences import build as build_module

    drawn = []
    monkeypatch.setattr(build_module, "mix_streams", lambda pieces, *a, **k: drawn.append(pieces) or
                        mix_streams(pieces, *a, **k))
    index, _ = build(context_length=32, num_epochs=1)
    epoch = index["epochs"][0]
    # Documents longer than 32 tokens reached the mixture as pieces, each drawn on its own.
    assert all(len(piece.tokens) <= 32 for pieces in drawn for stream in pieces.values() for piece in stream)
    assert epoch["pieces_by_stream"]["text"] > epoch["samples_by_stream"]["text"]


def test_a_stream_the_mixture_never_drew_is_said(extracted, tmp_path, capsys):
    """With a stream of few pieces, the mixture (slamkit's `first_exhausted`) could end before it drew any piece of
    another: a corpus asked for interleaved samples came out with none, and nothing said so."""
    from simslm.cli import main

    config, _, _ = extracted
    out = tmp_path / "seq"
    assert main(["sequences", "build", "--out", str(out), "--manifest", config.manifest, "--units", config.out,
                 "--text-corpus", "tinystories-sample[0:50]", "--context-length", "256",
                 "--mix", "interleaved=0.001", "speech=0.5", "text=0.5"]) == 0
    epoch = storage.read_json(out / "index.json")["epochs"][0]
    drawn = epoch["pieces_drawn_by_stream"]
    assert drawn["interleaved"] == 0 and epoch["tokens_by_stream"]["interleaved"] == 0
    assert sum(drawn.values()) == epoch["num_documents"] and drawn["speech"] == epoch["pieces_by_stream"]["speech"]
    err = capsys.readouterr().err
    assert "warning: epoch 0: no piece of interleaved was drawn" in err and "first_exhausted" in err
    assert main(["sequences", "stats", str(out)]) == 0
    counts = epoch["pieces_by_stream"]
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "pieces drawn by stream: " in line]
    assert sorted(line.split(": ")[1].split(", ")) == sorted(f"{name} {drawn[name]} of {counts[name]}" for name in drawn)
    # A stream given no share is not mixed: nothing to say of it.
    assert main(["sequences", "build", "--out", str(out), "--overwrite", "--manifest", config.manifest, "--units",
                 config.out, "--text-corpus", "tinystories-sample[0:50]", "--context-length", "256",
                 "--mix", "interleaved=0", "speech=0.5", "text=0.5"]) == 0
    assert "interleaved" not in storage.read_json(out / "index.json")["epochs"][0]["pieces_drawn_by_stream"]
    assert "no piece of" not in capsys.readouterr().err


def test_a_long_sample_is_cut_into_context_long_pieces_and_short_ones_share_rows():
    vocabulary = Vocabulary.build("stories260K", 8)
    samples = [Sample(id=f"d{i}", tokens=np.full(n, i + 1, np.uint32), kinds=np.zeros(n, np.uint8))
               for i, n in enumerate([70, 10, 25, 30, 5])]
    rows, positions, counts = pack(samples, 32, vocabulary)
    documents = [row[a:b].tolist() for row, position in zip(rows, positions)
                 for a, b in zip(np.flatnonzero(position == 0), [*np.flatnonzero(position == 0)[1:], 32])
                 if row[a] != vocabulary.pad_id]
    # slamkit's chunk_texts: 70 tokens -> 32 + 32 + 6, each its own document; nothing is dropped.
    assert sorted(map(len, documents)) == sorted([32, 32, 6, 10, 25, 30, 5])
    assert sum(map(len, documents)) + counts["padding"] == rows.size


def test_bad_utterances_are_skipped_and_counted(build, extracted, tmp_path):
    config, _, _ = extracted
    good = [u for u in read_manifest(config.manifest) if u.id not in ("empty", "corrupt")]
    words = good[0].words
    bad = [
        replace(good[0], id=good[1].id, transcript=good[1].transcript + " extra words"),        # mismatch
        replace(good[2], words=words[:-1] + (Word(word=words[-1].word, start_sec=500.0, end_sec=501.0),),
                transcript=good[0].transcript),                                                 # past the end
        replace(good[3], words=()),                                                             # empty
    ]
    manifest = tmp_path / "bad.jsonl"
    write_manifest(manifest, [good[0], *bad])
    index, _ = build(manifest=str(manifest), streams=("interleaved",), num_epochs=1)
    skipped = index["epochs"][0]["skipped"]
    assert skipped == {"word timings do not match the transcript": 1, "empty utterance": 1,
                       "word timings past the end of the audio": 1} and index["epochs"][0]["samples_by_stream"]["interleaved"] == 1


def test_text_all_in_capitals_is_said(build, corpus, tmp_path, capsys):
    """LibriSpeech's transcripts (and its LM corpus) are all in capitals: a manifest imported before `manifest
    import` lowercased them, or written by a user's script, gave the text runs in capitals without a word."""
    utterances = corpus[0]
    capitals = tmp_path / "capitals.jsonl"
    write_manifest(capitals, [replace(u, transcript=u.transcript.upper(),
                                      words=tuple(replace(w, word=w.word.upper()) for w in u.words))
                              for u in utterances])
    (tmp_path / "capitals.txt").write_text("ONCE UPON A TIME THERE WAS A GIRL.\nSHE LIKED THE PARK.\n")
    build(manifest=str(capitals), streams=("interleaved", "text"), text_corpus=str(tmp_path / "capitals.txt"),
          num_epochs=1)
    said = capsys.readouterr().err
    assert f"--manifest {capitals}: all its text is in capitals" in said and "manifest import --case lower" in said
    assert f"--text-corpus {tmp_path / 'capitals.txt'}: all its text is in capitals" in said
    build(streams=("interleaved", "text"), num_epochs=1, overwrite=True)  # the corpus as written: nothing to say
    assert "capitals" not in capsys.readouterr().err
    build(manifest=str(capitals), streams=("speech",), num_epochs=1, overwrite=True)  # no text read from it
    assert "capitals" not in capsys.readouterr().err


def test_units_of_another_recording_under_an_utterances_id_are_skipped(build, corpus, tmp_path):
    """Units extracted from another manifest whose ids name other recordings: a shorter recording's words were laid
    over the units of the one its id named before, without a word, whenever they ended before its units did."""
    good = sorted(corpus[0], key=lambda u: u.duration_sec)
    short, long = good[0], good[-1]
    assert long.duration_sec - short.duration_sec > 1.0
    manifest = tmp_path / "renumbered.jsonl"
    write_manifest(manifest, [replace(short, id=long.id), *[u for u in good if u.id not in (short.id, long.id)]])
    index, _ = build(manifest=str(manifest), streams=("interleaved",), num_epochs=1)
    assert index["epochs"][0]["skipped"] == {
        "units of another length than the recording (another recording's units under its id?)": 1}
    assert index["epochs"][0]["samples_by_stream"]["interleaved"] == len(good) - 2


def test_a_failed_build_leaves_nothing_behind(build, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr("simslm.sequences.build.pack", explode)
    with pytest.raises(RuntimeError):
        build()
    assert not (tmp_path / "seq").exists()


def test_a_build_in_parts_merges_into_the_documents_of_the_whole(build, tmp_path):
    from simslm.sequences.build import MergeConfig, merge_sequences, speech_manifest, speech_units_folder
    from simslm.sequences.loader import PackedLoader, read_index

    # One stream, so every piece is mixed in: the parts together must hold exactly the whole build's documents.
    whole, whole_out = build(streams=("interleaved",), num_epochs=2, out=str(tmp_path / "whole"))
    parts = [build(streams=("interleaved",), num_epochs=2, num_shards=3, shard_index=k,
                   out=str(tmp_path / f"part{k}"))[1] for k in (2, 0, 1)]  # given in any order
    out = str(tmp_path / "merged")
    merged = merge_sequences(MergeConfig(parts=tuple(parts), out=out))
    for epoch in (0, 1):
        # Every utterance is in one part, with the spans the whole build drew for it (seeded by sample, not part).
        assert epoch_documents(out, merged["epochs"][epoch]) == epoch_documents(whole_out, whole["epochs"][epoch])
        assert merged["epochs"][epoch]["samples_by_stream"] == whole["epochs"][epoch]["samples_by_stream"]
        assert merged["epochs"][epoch]["num_chunks"] == sum(read_index(p)["epochs"][epoch]["num_chunks"] for p in parts)
    assert all(0 < read_index(p)["epochs"][0]["samples_by_stream"]["interleaved"] for p in parts)
    loader = PackedLoader(out, batch_size=2)  # trains as any sequences folder
    assert next(loader).tokens.shape == (2, 256)
    assert speech_units_folder(out).resolve() == speech_units_folder(whole_out).resolve()
    assert speech_manifest(out).resolve() == speech_manifest(whole_out).resolve()
    assert (tmp_path / "merged" / "tokenizer").is_dir()


def test_a_merge_refuses_parts_that_do_not_make_one_whole_build(build, tmp_path):
    from simslm.sequences.build import MergeConfig, merge_sequences

    parts = [build(streams=("speech",), num_epochs=1, num_shards=2, shard_index=k, out=str(tmp_path / f"p{k}"))[1]
             for k in (0, 1)]
    other = build(streams=("speech",), num_epochs=1, num_shards=2, shard_index=1, seed=7, out=str(tmp_path / "o"))[1]

    def merge(*folders):
        return merge_sequences(MergeConfig(parts=folders, out=str(tmp_path / "m")))

    with pytest.raises(ValueError, match=r"p0: the build has 2 parts and part\(s\) 1 are not given"):
        merge(parts[0])
    with pytest.raises(ValueError, match=r"p1: the same part \(1 of 2\) as .*p1"):
        merge(parts[0], parts[1], parts[1])
    with pytest.raises(ValueError, match=r"o: a part of another build than .*p0 \(it differs in seed\)"):
        merge(parts[0], other)
    assert not (tmp_path / "m").exists()
    assert merge(*parts)["merged_from"]["num_shards"] == 2


def test_a_slurm_array_numbered_from_1_builds_every_part_without_shard_index(build, tmp_path, monkeypatch):
    # `sbatch --array=1-2` without --shard-index: each task builds the part its task id names (modulo the parts),
    # not part 0 twice. RANK (torchrun) comes first, as for `units extract`.
    from simslm.sequences.build import MergeConfig, merge_sequences
    from simslm.sequences.loader import read_index

    monkeypatch.delenv("RANK", raising=False)
    parts = []
    for task in ("1", "2"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        parts.append(build(streams=("speech",), num_epochs=1, num_shards=2, out=str(tmp_path / f"p{task}"))[1])
    assert [read_index(p)["config"]["shard_index"] for p in parts] == [1, 0]
    assert merge_sequences(MergeConfig(parts=tuple(parts), out=str(tmp_path / "m")))["merged_from"]["num_shards"] == 2
    monkeypatch.setenv("RANK", "3")
    assert read_index(build(streams=("speech",), num_epochs=1, num_shards=2, out=str(tmp_path / "r"))[1])[
        "config"]["shard_index"] == 1


def test_training_on_one_part_of_a_build_in_parts_is_said(build, tmp_path, capsys):
    # A part is a sequences folder of its own, so a forgotten merge would train on a share of the corpus, silently.
    from simslm.sequences.build import MergeConfig, merge_sequences
    from simslm.train.loop import train
    from simslm.train.plan import TrainConfig

    parts = [build(streams=("speech",), num_epochs=1, num_shards=2, shard_index=k, out=str(tmp_path / f"p{k}"))[1]
             for k in (0, 1)]
    merged = str(tmp_path / "merged")
    merge_sequences(MergeConfig(parts=tuple(parts), out=merged))
    for data, said in ((parts[1], True), (merged, False)):
        capsys.readouterr()
        train(TrainConfig(run_dir=str(tmp_path / f"run-{said}"), data=data, budget_tokens=256,
                          batch_size=1))
        assert (f"warning: {parts[1]} is part 1 of the 2 of a build in parts; `simslm sequences merge` joins them"
                in capsys.readouterr().err) == said
    from simslm.cli import main

    for data, said in ((parts[1], True), (merged, False)):
        assert main(["sequences", "stats", data]) == 0
        assert capsys.readouterr().out.startswith(f"{data}: part 1 of the 2 of a build in parts") == said


@pytest.mark.parametrize("span_draws", ["epoch", "once"])
def test_span_draws_once_gives_every_epoch_the_first_epochs_spans_as_slamkit(build, span_draws):
    # slamkit's prepare_tokens writes each interleaved sample once; every epoch reads the same strings again.
    index, out = build(streams=("interleaved",), num_epochs=3, span_draws=span_draws)
    epochs = [epoch_documents(out, entry) for entry in index["epochs"]]
    assert all(entry["samples_by_stream"]["interleaved"] >= 3 for entry in index["epochs"]), index["epochs"]
    if span_draws == "once":
        assert epochs[0] == epochs[1] == epochs[2]
    else:  # new spans: the same utterances spoken in other places
        assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    # The order of the rows is drawn per epoch either way.
    first_rows = [np.load(f"{out}/epoch-{e:03d}/shard-00000.npy")[0].tolist() for e in range(3)]
    assert first_rows[0] != first_rows[1]


def test_a_part_parses_only_its_share_of_a_manifest_its_units_checked(build, tmp_path, monkeypatch):
    # units.json stamps the manifest its extraction checked line by line; a part of a build then parses its own
    # lines alone (each part parsed all of them: 19 minutes at 21M lines), and builds the same part.
    from simslm.sequences import build as build_module

    checked_passes = []
    every_line = build_module.iter_utterances
    monkeypatch.setattr(build_module, "iter_utterances", lambda path: checked_passes.append(path) or every_line(path))
    fast, fast_out = build(streams=("interleaved",), num_shards=2, shard_index=1, out=str(tmp_path / "fast"))
    assert checked_passes == []
    monkeypatch.setattr(build_module, "checked_manifest", lambda units, manifest: False)  # as an unstamped folder
    slow, slow_out = build(streams=("interleaved",), num_shards=2, shard_index=1, out=str(tmp_path / "slow"))
    assert len(checked_passes) == 1
    for epoch in (0, 1):
        assert epoch_documents(fast_out, fast["epochs"][epoch]) == epoch_documents(slow_out, slow["epochs"][epoch])
    assert fast["epochs"][0]["skipped"] == slow["epochs"][0]["skipped"]


def test_a_sequences_folder_finds_its_units_and_manifest_after_all_move(extracted, tmp_path):
    import shutil

    from simslm.sequences.build import speech_manifest, speech_units_folder
    from simslm.sequences.show import rebuild_sample
    from simslm.speech.manifest import read_manifest

    config, _, _ = extracted
    shutil.copytree(config.out, tmp_path / "a" / "units")
    shutil.copyfile(config.manifest, tmp_path / "a" / "manifest.jsonl")
    build_sequences(BuildConfig(out=str(tmp_path / "a" / "seq"), manifest=str(tmp_path / "a" / "manifest.jsonl"),
                                units=str(tmp_path / "a" / "units"), streams=("interleaved",), context_length=64))
    (tmp_path / "a").rename(tmp_path / "b")
    moved = tmp_path / "b" / "seq"
    assert speech_units_folder(moved) == moved / ".." / "units"
    assert speech_manifest(moved) == moved / ".." / "manifest.jsonl"
    # `sequences show --sample` reads both where they are now (the build config names them where they were).
    utterance = next(u for u in read_manifest(config.manifest) if u.words)
    assert rebuild_sample(moved, utterance.id)[0].tokens.size > 0
    build_sequences(BuildConfig(out=str(tmp_path / "text"), text_corpus="tinystories-sample[:20]", streams=("text",),
                                context_length=64))
    assert speech_units_folder(tmp_path / "text") is None and speech_manifest(tmp_path / "text") is None
