import json
from pathlib import Path

import numpy as np
import pytest

from simslm.eval.evaluate import EvalConfig, evaluate_run, read_results

# --- end to end on a tiny trained run -----------------------------------------------------------


def test_eval_writes_accuracy_ci_and_options_for_every_mode(trained_run):
    run, bench = trained_run
    config = EvalConfig(run=str(run), bench=(f"tsc={bench}", "validation"), num_resamples=200)
    results = evaluate_run(config)
    assert set(results) == {"tsc/S", "tsc/S2T", "tsc/T2S", "tsc/T", "validation"}
    for mode in ("S", "S2T", "T2S", "T"):
        entry = results[f"tsc/{mode}"]
        assert entry.num_pairs == 4 and entry.aggregation == "pairs" and entry.mode == mode
        assert entry.ci_low <= entry.accuracy <= entry.ci_high
        assert entry.scoring == {"preset": "reference", "reduction": "mean", "speech_vocab": False,
                                 "long_sides": "whole"}
    assert results["validation"]["loss_speech"] > 0
    # Each entry says how many sides outgrew the model's positions (none do stories260K's 512).
    assert results["tsc/S"].context == 512 and results["tsc/S"].num_cut == 0
    written = json.loads((run / "eval.json").read_text())
    assert read_results(run)["tsc/T"] == results["tsc/T"]
    assert written["benchmarks"]["tsc/T"]["accuracy"] == results["tsc/T"].accuracy
    # A second evaluation reuses the extracted units and merges into eval.json.
    evaluate_run(EvalConfig(run=str(run), bench=(f"again={bench}",), modes=("S",), reduction="sum"))
    written = json.loads((run / "eval.json").read_text())
    assert {"tsc/S", "again/S", "validation"} <= set(written["benchmarks"])
    assert written["benchmarks"]["again/S"]["scoring"]["reduction"] == "sum"
    evaluate_run(EvalConfig(run=str(run), bench=(f"pmi={bench}",), modes=("S",), preset="pmi"))
    evaluate_run(EvalConfig(run=str(run), bench=(f"ending={bench}",), modes=("S",), preset="ending"))
    written = json.loads((run / "eval.json").read_text())
    assert written["benchmarks"]["pmi/S"]["scoring"]["preset"] == "pmi"
    # The plain score comes free with the baseline one: the same as scoring the ending alone.
    assert written["benchmarks"]["pmi/S"]["without_baseline"]["accuracy"] == \
        written["benchmarks"]["ending/S"]["accuracy"]


def test_eval_cli_prints_the_table(trained_run, capsys):
    from simslm.cli import main

    run, bench = trained_run
    assert main(["eval", str(run), "--bench", f"cli={bench}", "--modes", "T", "--num-resamples", "100",
                 "--write-scores"]) == 0
    out = capsys.readouterr().out
    assert "cli/T" in out and "95% CI" in out and "eval.json" in out and "positions" not in out
    # Text sides have no audio file: the TSV shows their text (and no ZeroSpeech file is written for them).
    tsv = (run / "scores" / "cli-T.tsv").read_text().splitlines()
    assert len(tsv) == 1 + 4 and all("text: " in line for line in tsv[1:]) and str(run / "scores") in out
    assert not (run / "scores" / "cli-T.zerospeech.txt").exists()


@pytest.mark.slow
def test_a_run_one_may_only_read_is_evaluated_into_another_folder(trained_run, tmp_path):
    """A colleague's run (or a shared model folder) one may read but not write: `eval` scored every benchmark and
    then failed on eval.json's lock ("permission denied"); now it refuses before the model loads, naming --out,
    and with --out writes eval.json (and scores/) there, pointing back at the model it scored."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import as_reader

    reader = as_reader()
    run, bench = trained_run
    theirs = tmp_path / "theirs"
    shutil.copytree(run, theirs, ignore=shutil.ignore_patterns("eval.json", "scores", "checkpoints"))
    for folder, _, files in os.walk(theirs):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)
    try:
        def simslm(*arguments):
            done = subprocess.run([*reader, sys.executable, "-m", "simslm", "eval", str(theirs), "--bench",
                                   f"tsc={bench}", "--modes", "T", "--num-resamples", "50", *arguments],
                                  capture_output=True, text=True, timeout=300)
            return done.returncode, done.stdout + done.stderr

        code, said = simslm()
        assert code == 2 and f"{theirs / 'eval.json'}: cannot write into {theirs}" in said and "--out" in said
        code, said = simslm("--out", str(tmp_path / "mine"), "--write-scores")
        assert code == 0, said
        written = json.loads((tmp_path / "mine" / "eval.json").read_text())
        assert written["benchmarks"]["tsc/T"]["num_pairs"] == 4
        assert (tmp_path / "mine" / written["model_dir"]).resolve() == (theirs / "model").resolve()
        # The benchmark scored, relative to eval.json's folder (so found when both move) and absolute (absolute
        # alone before: a copy of a project named the original's benchmarks).
        scored = written["benchmarks"]["tsc/T"]["folder"]
        assert (tmp_path / "mine" / scored["relative"]).resolve() == Path(scored["absolute"]) == Path(bench).resolve()
        assert (tmp_path / "mine" / "scores" / "tsc-T.tsv").exists() and not (theirs / "eval.json").exists()
    finally:
        for folder, _, _ in os.walk(theirs):
            os.chmod(folder, 0o755)


def test_eval_out_may_name_a_folder_that_is_not_there_yet(trained_run, tmp_path):
    # It scored every benchmark, then failed on the lock of eval.json in the folder it had not made (unless
    # --write-scores had made it for its scores/).
    from simslm.eval.evaluate import EvalConfig, evaluate_run

    run, _ = trained_run
    out = tmp_path / "new" / "evaluation"
    evaluate_run(EvalConfig(run=str(run), bench=("validation",), out=str(out)))
    written = json.loads((out / "eval.json").read_text())
    assert "validation" in written["benchmarks"] and (out / written["model_dir"]).resolve() == (run / "model").resolve()


def test_the_table_says_how_many_sides_were_cut_to_the_context():
    from dataclasses import replace

    from simslm.eval.evaluate import BenchmarkResult, format_results

    entry = BenchmarkResult(accuracy=0.5, ci_low=0.4, ci_high=0.6, confidence=0.95, num_pairs=91, num_groups=1,
                            aggregation="pairs", num_resamples=10, per_group={}, layout="cross-modal", mode="S",
                            folder="tsc", num_skipped=0,
                            scoring={}, wall_sec=1.0, note=None, num_cut=154, context=256)
    # An entry from before the option (no long_sides among its scoring options) was cut: simslm's only way then.
    assert "154 of 182 sides longer than the model's 256 positions, their oldest tokens dropped (--long-sides cut; " \
           "slamkit scores them whole)" in format_results({"tsc/S": entry})
    assert "154 of 182 sides longer than the model's 256 positions, scored whole past them, as slamkit scores them" \
        in format_results({"tsc/S": replace(entry, scoring={"long_sides": "whole"})})
    assert "positions" not in format_results({"tsc/S": replace(entry, num_cut=0)})



def test_the_table_shows_a_few_groups_and_not_many():
    from dataclasses import replace

    from simslm.eval.evaluate import BenchmarkResult, format_results

    bands = {"21-100": {"accuracy": 1.0, "num_pairs": 2, "num_items": 1},
             "1-5": {"accuracy": 0.75, "num_pairs": 8, "num_items": 2}, "oov": {"accuracy": 0.5, "num_pairs": 4,
                                                                              "num_items": 1},
             "6-20": {"accuracy": 0.0, "num_pairs": 2, "num_items": 1}}
    entry = BenchmarkResult(accuracy=2 / 3, ci_low=0.4, ci_high=0.9, confidence=0.95, num_pairs=16, num_groups=4,
                            aggregation="items", num_resamples=10, per_group=bands, layout="slm21-lexical", mode=None,
                            folder="sw", num_skipped=0, scoring={}, wall_sec=1.0, note=None, num_items=5)
    lines = format_results({"sw": entry}).splitlines()
    assert lines[1].split()[-2:] == ["items", "(5)"]
    # sWUGGY's bands in their own order (sorted as text, "21-100" came before "6-20" and "oov" last).
    assert lines[2].split() == ["oov", "50.0%", "4", "(1)"] and lines[3].split() == ["1-5", "75.0%", "8", "(2)"]
    assert [line.split()[0] for line in lines[4:]] == ["6-20", "21-100"]
    many = {f"p{i}": {"accuracy": 0.5, "num_pairs": 2} for i in range(9)}
    assert len(format_results({"sb": replace(entry, per_group=many)}).splitlines()) == 2


def test_a_model_folder_alone_is_evaluated_like_its_run(trained_run, tmp_path):
    import shutil

    import pytest

    run, bench = trained_run
    folder = tmp_path / "model"
    shutil.copytree(run / "model", folder)
    (folder / "eval.json").unlink(missing_ok=True)
    config = {"bench": (f"tsc={bench}",), "modes": ("T", "S2T"), "num_resamples": 50}
    alone = evaluate_run(EvalConfig(run=str(folder), **config))
    with_run = evaluate_run(EvalConfig(run=str(run), **config))
    assert set(alone) == {"tsc/T", "tsc/S2T"}
    assert all(alone[name].accuracy == with_run[name].accuracy for name in alone)
    assert read_results(folder)["tsc/T"].accuracy == alone["tsc/T"].accuracy
    with pytest.raises(ValueError, match="bare model folder"):
        evaluate_run(EvalConfig(run=str(folder), bench=("validation",)))
    with pytest.raises(ValueError, match="neither a run folder"):
        evaluate_run(EvalConfig(run=str(tmp_path), **config))


def test_a_run_trained_with_relative_paths_is_evaluated_from_anywhere_and_after_a_move(trained_run, tmp_path,
                                                                                        monkeypatch):
    """config.json keeps `validation_data` as typed ("seq", from where `train` ran): `eval --bench validation`
    from another folder said "seq: not a sequences folder", and so after the project moved whole."""
    import shutil

    from simslm.train.plan import placed_input

    run, _ = trained_run
    stored = json.loads((run / "config.json").read_text())
    project = tmp_path / "project"
    shutil.copytree(run, project / "run")
    shutil.copytree(stored["validation_data"], project / "seq")
    (project / "run" / "eval.json").unlink(missing_ok=True)
    (project / "run" / "config.json").write_text(json.dumps({**stored, "run_dir": "run", "data": "seq",
                                                             "validation_data": "seq"}))  # as `train` run in project
    monkeypatch.chdir(tmp_path)
    expected = evaluate_run(EvalConfig(run=str(run), bench=("validation",), out=str(tmp_path / "there")))
    shutil.move(project, tmp_path / "moved")
    results = evaluate_run(EvalConfig(run=str(tmp_path / "moved" / "run"), bench=("validation",)))
    assert results["validation"]["loss_speech"] == pytest.approx(expected["validation"]["loss_speech"])
    # eval.json names the held-out data it scored relative to its own folder, and absolute, as a benchmark's folder:
    # it held "moved/run/../seq", relative to the folder eval ran in, which names nothing from anywhere else.
    again = evaluate_run(EvalConfig(run="moved/run", bench=("validation",), out=str(tmp_path / "relative")))
    assert again["validation"]["data"] == {"relative": "../moved/seq", "absolute": str(tmp_path / "moved" / "seq")}
    assert json.loads((tmp_path / "relative" / "eval.json").read_text())["benchmarks"]["validation"]["data"]["relative"] == \
        "../moved/seq"
    assert placed_input(tmp_path / "moved" / "run", {"run_dir": "run", "data": "seq"}, "data") == \
        str(tmp_path / "moved" / "run" / ".." / "seq")
    # Absolute paths moved together are found the same way; ones that lead nowhere are left as typed.
    assert placed_input(tmp_path / "moved" / "run", {"run_dir": "/old/run", "data": "/old/seq"}, "data") == \
        str(tmp_path / "moved" / "run" / ".." / "seq")
    assert placed_input(tmp_path / "moved" / "run", {"run_dir": "/old/run", "data": "/old/other"}, "data") == \
        "/old/other"


def test_a_model_whose_scores_are_not_numbers_is_refused_not_reported(nan_model, trained_run):
    """NaN compares as neither higher nor equal: a model of NaN weights was reported at 0% on every benchmark."""
    import pytest

    _, bench = trained_run
    with pytest.raises(ValueError, match=r"\(T\): the model gives a log-likelihood that is not a finite number for "
                                         r"4 of 4 pairs \(first: tsc-"):
        evaluate_run(EvalConfig(run=str(nan_model), bench=(f"tsc={bench}",), modes=("T",), num_resamples=50))
    assert not (nan_model / "eval.json").exists()


def test_a_run_stopped_while_saving_its_model_is_not_evaluated(trained_run, tmp_path):
    """train writes model/ and then result.json: a run folder with model/ but no result.json was stopped while it
    saved its model, whose files may be half written. eval says so instead of loading them."""
    import shutil

    run, bench = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "result.json").unlink()
    with pytest.raises(ValueError, match=f"^{copy}: its training has not finished \\(no result.json; model/ may be "
                                         f"half written\\); run the same `simslm train` again to finish it$"):
        evaluate_run(EvalConfig(run=str(copy), bench=(f"tsc={bench}",), modes=("T",)))
    # Still training (no model/ yet): the way to score it now is named, at its latest checkpoint.
    shutil.rmtree(copy / "model")
    latest = max((copy / "checkpoints").glob("step-*"))
    with pytest.raises(ValueError, match=f"no model/ yet\\); .*; or score it at its latest checkpoint: `simslm model "
                                         f"from-checkpoint {latest} FOLDER`, then `simslm eval FOLDER`$"):
        evaluate_run(EvalConfig(run=str(copy), bench=(f"tsc={bench}",), modes=("T",)))


def test_validation_is_refused_where_packed_documents_would_see_each_other(trained_run, monkeypatch):
    """The validation CE runs over packed rows, in a process that may have another transformers than the run's
    training had: `eval` checks, as `train` does, that the documents of a row stay apart (`documents_moved`, tested
    on real architectures in tests/train/test_build.py), rather than report a CE over tokens that saw other
    documents."""
    import simslm.train.build as train_module
    from simslm.config import ConfigError

    run, _ = trained_run
    written = (run / "eval.json").read_bytes() if (run / "eval.json").exists() else None
    seen = []
    monkeypatch.setattr(train_module, "documents_moved", lambda *given: seen.append(given) or 0.8)
    with pytest.raises(ConfigError, match="^sdpa attention lets the documents packed in a row attend to one another in "
                                          "llama on cpu .* use the transformers version the run was trained with$"):
        evaluate_run(EvalConfig(run=str(run), bench=("validation",)))
    assert seen[0][1:] == ("sdpa", "cpu", False, False)
    assert ((run / "eval.json").read_bytes() if (run / "eval.json").exists() else None) == written


def test_a_benchmark_with_no_scorable_pair_is_refused_and_keeps_eval_json(trained_run, tmp_path):
    import pytest

    run, bench = trained_run
    evaluate_run(EvalConfig(run=str(run), bench=(f"kept={bench}",), modes=("S",), num_resamples=20))
    before = (run / "eval.json").read_text()
    (tmp_path / "no-units" / "shards").mkdir(parents=True)  # pre-extracted units of other audio: none match
    from simslm.sequences.build import speech_units_folder

    units_header = speech_units_folder(json.loads((run / "config.json").read_text())["data"]) / "units.json"
    header = json.loads(units_header.read_text())
    (tmp_path / "no-units" / "units.json").write_text(json.dumps({**header, "num_shards": 1}))
    (tmp_path / "no-units" / "shards" / "shard-00000.jsonl").write_text(json.dumps(
        {"id": "another-corpus-0", "frame_rate_hz": 25.0, "units": [1, 2], "durations": [1, 1]}) + "\n")
    with pytest.raises(ValueError, match="no pair could be scored"):
        evaluate_run(EvalConfig(run=str(run), bench=(f"kept={bench}",), modes=("S",),
                                units=str(tmp_path / "no-units")))
    assert (run / "eval.json").read_text() == before


def test_a_pair_whose_audio_cannot_be_read_is_skipped_and_said(trained_run, tmp_path, capsys):
    """A long job skips and counts a bad item: the count was in eval.json only, and the table showed one pair fewer
    without a word. The table and a warning say it now, the warning naming the file."""
    import shutil

    from simslm.cli import main

    run, bench = trained_run
    shutil.copytree(bench, tmp_path / "bench")
    broken = sorted(path for path in (tmp_path / "bench").rglob("*") if path.suffix in (".flac", ".wav"))[0]
    broken.write_bytes(b"not audio")
    capsys.readouterr()
    assert main(["eval", str(run), "--bench", f"broken={tmp_path / 'bench'}", "--modes", "S", "--num-resamples",
                 "20", "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    entry = json.loads((tmp_path / "out" / "eval.json").read_text())["benchmarks"]["broken/S"]
    assert entry["num_skipped"] >= 1
    total = entry["num_pairs"] + entry["num_skipped"]
    assert f"{entry['num_skipped']} pair(s) of the set skipped: the units of their audio are missing" in out
    assert f"{entry['num_skipped']} of {total} pair(s) skipped" in err and str(broken) in err


def test_an_evaluation_stopped_part_way_keeps_the_benchmarks_it_has_scored(trained_run, monkeypatch):
    import pytest

    from simslm.eval import evaluate

    run, bench = trained_run
    pairs = evaluate.BENCHMARK_KINDS["pairs"]

    def killed_on_the_second(context, label, target):
        if label == "second":
            raise KeyboardInterrupt  # a kill, or a job's time limit, while the second benchmark is scored
        return pairs(context, label, target)

    monkeypatch.setitem(evaluate.BENCHMARK_KINDS, "pairs", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(EvalConfig(run=str(run), bench=(f"first={bench}", f"second={bench}"), modes=("T",),
                                num_resamples=20))
    written = json.loads((run / "eval.json").read_text())["benchmarks"]
    assert "first/T" in written and "second/T" not in written


def test_a_published_set_by_hub_id_is_read_from_the_hub_cache_offline(trained_run, tmp_path, monkeypatch, capsys):
    import shutil

    import huggingface_hub

    from simslm.cli import main

    run, bench = trained_run
    # The hub cache as `hf download` leaves it: blobs named by revision under snapshots/, refs/main naming it.
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "datasets--acme--tiny-tsc"
    shutil.copytree(bench, repo / "snapshots" / revision / "tsc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    by_id = evaluate_run(EvalConfig(run=str(run), bench=("acme/tiny-tsc:tsc",), modes=("T",), num_resamples=50))
    by_folder = evaluate_run(EvalConfig(run=str(run), bench=(f"local={bench}",), modes=("T",), num_resamples=50))
    assert set(by_id) == {"tiny-tsc/tsc/T"} and by_id["tiny-tsc/tsc/T"].accuracy == by_folder["local/T"].accuracy
    # Offline and not cached: one line that says how to bring it.
    capsys.readouterr()
    assert main(["eval", str(run), "--bench", "acme/absent:tSC"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not in the Hugging Face cache" in err
    assert "hf download acme/absent --repo-type dataset" in err and "--bench absent/tSC=DIR/tSC" in err


def test_a_zerospeech_lexical_folder_is_scored_as_zerospeech_scores_swuggy(trained_run, tmp_path):
    """sWUGGY's score is the mean over items (a word and its non-word, in every voice) of each item's mean over
    its voices, and its in-vocab score leaves out the oov band (ZeroSpeech 2021's leaderboard)."""
    import csv
    import shutil

    run, bench = trained_run
    audio = iter(sorted(bench.rglob("*.flac"))[:12])
    rows = []
    # Items in 1, 3 and 2 voices, so that the mean over items differs from the mean over pairs.
    for item, count, voices in (("w0", "0", 1), ("w1", "3", 3), ("w2", "50", 2)):
        for voice in range(voices):
            for correct in (1, 0):
                source = next(audio)
                shutil.copy(source, tmp_path / source.name)
                rows.append({"id": item, "filename": source.stem, "voice": f"v{voice}", "frequency": count,
                             "word": item, "phones": "a", "length": 1, "correct": correct})
    with open(tmp_path / "gold.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # The reference preset counts pairs, as slamkit does.
    by_pair = evaluate_run(EvalConfig(run=str(run), bench=(f"sw-pairs={tmp_path}",), num_resamples=50))
    assert set(by_pair) == {"sw-pairs", "sw-pairs/in-vocab"} and by_pair["sw-pairs"].aggregation == "pairs"
    results = evaluate_run(EvalConfig(run=str(run), bench=(f"sw={tmp_path}",), aggregation="auto", preset="ending",
                                      num_resamples=50, write_scores=True))
    whole, in_vocab = results["sw"], results["sw/in-vocab"]
    assert whole.layout == "slm21-lexical" and whole.aggregation == "items" and whole.scoring["preset"] == "ending"
    assert (whole.num_pairs, whole.num_items, in_vocab.num_pairs, in_vocab.num_items) == (6, 3, 5, 2)
    # Each band holds one item: the pair outcomes, band by band, are that item's voices.
    plain = evaluate_run(EvalConfig(run=str(run), bench=(f"sw-ending={tmp_path}",), aggregation="pairs",
                                    preset="ending", num_resamples=50))["sw-ending"]
    assert plain.groups() == ["1-5"] * 3 + ["21-100"] * 2 + ["oov"]
    voices = {"1-5": plain.outcomes[:3], "21-100": plain.outcomes[3:5], "oov": plain.outcomes[5:]}
    item_means = {band: sum(values) / len(values) for band, values in voices.items()}
    assert whole.accuracy == pytest.approx(sum(item_means.values()) / 3)
    assert in_vocab.accuracy == pytest.approx((item_means["1-5"] + item_means["21-100"]) / 2)
    # The fixture tells the two apart (on this seeded run: 0.78 over items, 0.67 over pairs).
    assert plain.accuracy == pytest.approx(sum(plain.outcomes) / 6) != pytest.approx(whole.accuracy)
    # --write-scores: a TSV of the pairs, and each file's score as ZeroSpeech's submission, which scored by
    # ZeroSpeech's definition from gold.csv alone gives the same number.
    tsv = (run / "scores" / "sw.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[-3:] == ["positive_score", "negative_score", "outcome"] and len(tsv) == 1 + 6
    submission = dict(line.split() for line in (run / "scores" / "sw.zerospeech.txt").read_text().splitlines())
    assert sorted(submission) == sorted(row["filename"] for row in rows)
    by_item = {}
    for word in (row for row in rows if row["correct"] == 1):
        nonword = next(r for r in rows if r["correct"] == 0 and (r["id"], r["voice"]) == (word["id"], word["voice"]))
        first, second = float(submission[word["filename"]]), float(submission[nonword["filename"]])
        by_item.setdefault(word["id"], []).append(1.0 if first > second else 0.5 if first == second else 0.0)
    assert whole.accuracy == pytest.approx(sum(sum(v) / len(v) for v in by_item.values()) / len(by_item))
    assert not (run / "scores" / "sw-pairs.tsv").exists()  # only when asked


@pytest.mark.parametrize("stored", ["folders", "hub"])
def test_salmon_is_reported_part_by_part_as_salmon_reports_it(trained_run, tmp_path, stored):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile

    from simslm.speech import audio

    run, bench = trained_run
    flacs = iter(sorted(bench.rglob("*.flac"))[:10])
    for part, samples in (("gender_consistency", 3), ("speaker_consistency", 2)):
        (tmp_path / part).mkdir()
        rows = []
        for number in range(samples):
            sides = {}
            for side, name in (("0", "positive_audio"), ("1", "negative_audio")):
                samples_ = audio.load_audio(next(flacs))
                if stored == "folders":  # SALMon's download: <name>_<sample>_... .wav, a folder per part
                    audio.write_audio(tmp_path / part / f"s_{number}_{side}.wav", samples_)
                buffer = io.BytesIO()
                soundfile.write(buffer, samples_, 16000, format="WAV")
                sides[name] = {"bytes": buffer.getvalue(), "path": None}
            rows.append({"task": part, "ind": number, **sides})
        if stored == "hub":  # slprl/SALMon: a parquet shard per part
            pq.write_table(pa.Table.from_pylist(rows), tmp_path / part / "train-00000-of-00001.parquet")
    # slamkit's `salmon` reports each part alone and no whole. The whole set is, under the reference preset, the
    # mean over pairs, as every benchmark's there; under another, the layout's own: the mean of the parts'
    # accuracies (3 and 2 pairs here). Each store is scored under one of the two.
    preset = "reference" if stored == "folders" else "ending"
    results = evaluate_run(EvalConfig(run=str(run), bench=(f"salmon={tmp_path}",), num_resamples=50, preset=preset))
    assert set(results) == {"salmon", "salmon/gender_consistency", "salmon/speaker_consistency"}
    whole = results["salmon"]
    assert whole.layout == ("salmon" if stored == "folders" else "salmon-hub")
    assert whole.num_pairs == 5 and whole.num_groups == 2
    parts = [entry["accuracy"] for entry in whole.per_group.values()]
    if preset == "reference":
        assert whole.aggregation == "pairs" and whole.accuracy == pytest.approx(np.mean(whole.outcomes))
    else:
        assert whole.aggregation == "macro" and whole.accuracy == pytest.approx(np.mean(parts))
    for part, entry in whole.per_group.items():  # each part alone: SALMon's own number, the mean over its pairs
        alone = results[f"salmon/{part}"]
        assert alone.accuracy == entry["accuracy"] and alone.num_pairs == entry["num_pairs"]


def test_a_zerospeech_submission_names_files_as_gold_csv_does(tmp_path):
    """ZeroSpeech's `filename` is the file's path in the set's folder without its extension (a stem in the published
    sets, `audio/00001-good` in simslm's re-creations): the submission names each file the same way."""

    from simslm.eval.evaluate import write_pair_scores
    from simslm.eval.layouts import Pair, Part
    from simslm.eval.scoring import PairScores

    bench = tmp_path / "sblimp"
    pairs = [Pair(f"p{i}", "g", (Part("speech", audio=str(bench / "audio" / f"{i}-good.flac")),),
                  (Part("speech", audio=str(bench / "audio" / f"{i}-bad.flac")),)) for i in range(3)]
    scores = PairScores(np.array([-1.0, -2.0]), np.array([-1.5, -1.0]), ["g", "g"], 1, None, kept=[0, 2],
                        items=["p0", "p2"])
    write_pair_scores(tmp_path / "scores", "sblimp", pairs, scores, zerospeech=bench)
    lines = (tmp_path / "scores" / "sblimp.zerospeech.txt").read_text().splitlines()
    assert lines == ["audio/0-good -1.0", "audio/0-bad -1.5", "audio/2-good -2.0", "audio/2-bad -1.0"]
    tsv = (tmp_path / "scores" / "sblimp.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in tsv[1:]] == ["p0", "p2"] and tsv[2].endswith("\t0.0")


def test_a_quick_look_on_a_sample_of_pairs_never_replaces_a_whole_score(trained_run, tmp_path):
    """`eval RUN --max-pairs 10` (a quick look) filed its sample under the benchmark's name in the run's own
    eval.json, over the sweep's scores of every pair, and the sweep, its fit and its report then read the sample."""
    import shutil

    from simslm.scaling.ledger import unevaluated

    run, bench = trained_run
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    (mine / "eval.json").unlink(missing_ok=True)
    evaluate_run(EvalConfig(run=str(mine), bench=(str(bench),), modes=("T",), max_pairs=2))
    sampled = json.loads((mine / "eval.json").read_text())["benchmarks"]["tsc/T"]
    assert (sampled["num_pairs"], sampled["sampled_from"]) == (2, 4)
    assert unevaluated(mine, (str(bench),)) == (str(bench),)  # a sweep scores it again, whole
    evaluate_run(EvalConfig(run=str(mine), bench=(str(bench),), modes=("T",)))
    whole = (mine / "eval.json").read_text()
    assert json.loads(whole)["benchmarks"]["tsc/T"]["sampled_from"] is None and unevaluated(mine, (str(bench),)) == ()
    with pytest.raises(ValueError, match=r"eval.json: holds results of tsc on every pair, which --max-pairs 2 would "
                                         r"replace with a sample; write the quick look elsewhere with --out FOLDER"):
        evaluate_run(EvalConfig(run=str(mine), bench=(str(bench),), modes=("T",), max_pairs=2))
    assert (mine / "eval.json").read_text() == whole
    evaluate_run(EvalConfig(run=str(mine), bench=(str(bench),), modes=("T",), max_pairs=2, out=str(tmp_path / "look")))
