import csv
from pathlib import Path

import numpy as np
import pytest

from simslm.eval.layouts import LAYOUTS, BenchError, bench_digest, load
from simslm.speech import audio


def _tone(path, seconds=0.5, hz=220.0):
    t = np.arange(int(16000 * seconds)) / 16000
    audio.write_audio(path, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32))


def test_slm21_layout_pairs_by_id_and_voice_with_phenomenon_groups(tmp_path):
    rows = []
    for item, phenomenon in (("a1", "agreement"), ("a2", "agreement"), ("b1", "island")):
        for voice in ("v1", "v2"):
            for correct in (1, 0):
                name = f"{item}-{voice}-{correct}"
                _tone(tmp_path / f"{name}.wav")
                rows.append({"id": item, "filename": name, "type": phenomenon, "subtype": "x",
                             "correct": correct, "voice": voice})
    with open(tmp_path / "gold.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    layout, pairs = load(tmp_path)
    assert layout == "slm21" and len(pairs) == 6
    assert sorted({p.group for p in pairs}) == ["agreement", "island"]
    for pair in pairs:
        assert pair.positive[0].audio.endswith("-1.wav") and pair.negative[0].audio.endswith("-0.wav")


def test_slm21_reports_the_file_and_id_of_a_pair_without_a_negative(tmp_path):
    _tone(tmp_path / "x.wav")
    (tmp_path / "gold.csv").write_text("id,filename,type,correct\nitem7,x,agr,1\n")
    with pytest.raises(BenchError, match=r"gold.csv: id item7 has no negative"):
        load(tmp_path)
    # A header alone, and a file that is not UTF-8 text, each name the file.
    (tmp_path / "gold.csv").write_text("id,filename,type,correct\n")
    with pytest.raises(BenchError, match=r"gold.csv: no rows under its header"):
        load(tmp_path)
    (tmp_path / "gold.csv").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(BenchError, match=r"gold.csv: not a CSV file in UTF-8"):
        load(tmp_path)


def _write_gold(folder, rows):
    with open(folder / "gold.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_slm21_items_are_type_subtype_and_id_so_an_id_reused_by_another_phenomenon_pairs_apart(tmp_path):
    rows = []
    for phenomenon in ("agreement", "island"):  # both use id 1, as ZeroSpeech groups by (type, subtype, id)
        for voice in ("v1", "v2"):
            for correct in (1, 0):
                name = f"{phenomenon}-{voice}-{correct}"
                _tone(tmp_path / f"{name}.wav")
                rows.append({"filename": name, "type": phenomenon, "subtype": "s", "correct": correct, "id": "1",
                             "voice": voice})
    _write_gold(tmp_path, rows)
    layout, pairs = load(tmp_path)
    assert layout == "slm21" and len(pairs) == 4
    assert sorted(p.item for p in pairs) == ["agreement/s/1"] * 2 + ["island/s/1"] * 2
    for pair in pairs:
        phenomenon, voice, _ = Path(pair.positive[0].audio).stem.split("-")
        assert pair.item == f"{phenomenon}/s/1" and pair.id == f"{pair.item}/{voice}" and pair.group == phenomenon
        assert Path(pair.negative[0].audio).stem == f"{phenomenon}-{voice}-0"


def test_zerospeech_lexical_pairs_each_word_with_its_non_words_in_frequency_bands(tmp_path):
    # ZeroSpeech 2021's bands are [0,1) oov, [1,5) "1-5", [5,20) "6-20", [20,100) "21-100", [100,inf) ">100"
    # (so a count of 5 is labelled 6-20); a word with no count is in no band.
    counts = {"w0": "0", "w1": "1", "w4": "4", "w5": "5", "w19": "19", "w20": "20", "w100": "100", "wx": ""}
    rows = []
    for item, count in counts.items():
        for voice in ("v1", "v2"):
            names = [(f"{item}-{voice}", 1), (f"{item}-{voice}-n1", 0)]
            if item == "w4" and voice == "v1":  # two non-words for one word and voice: two pairs
                names.append((f"{item}-{voice}-n2", 0))
            if voice == "v2":  # the non-word's row (no count of its own) first: the band is still the word's
                names.reverse()
            for name, correct in names:
                _tone(tmp_path / f"{name}.wav")
                rows.append({"id": item, "filename": name, "voice": voice, "frequency": count if correct else "",
                             "word": item if correct else "", "phones": "a b", "length": 2, "correct": correct})
    _write_gold(tmp_path, rows)
    layout, pairs = load(tmp_path)
    assert layout == "slm21-lexical" and len(pairs) == 2 * len(counts) + 1
    bands = {pair.item: pair.group for pair in pairs}
    assert bands == {"w0": "oov", "w1": "1-5", "w4": "1-5", "w5": "6-20", "w19": "6-20", "w20": "21-100",
                     "w100": ">100", "wx": "no frequency"}
    w4 = sorted((p.id, Path(p.negative[0].audio).name) for p in pairs if p.item == "w4")
    assert [name for _, name in w4] == ["w4-v1-n1.wav", "w4-v1-n2.wav", "w4-v2-n1.wav"] and len({i for i, _ in w4}) == 3
    for pair in pairs:
        assert Path(pair.positive[0].audio).stem == pair.id.split("/")[0] + "-" + pair.id.split("/")[1]
    # The in-vocab score (ZeroSpeech's `lexical_invocab`) takes the bands of words LibriSpeech holds: not oov, and
    # not a word without a count.
    (name, in_vocab), = LAYOUTS["slm21-lexical"].subsets
    assert name == "in-vocab" and sorted({band for band in bands.values() if in_vocab(band)}) == [
        "1-5", "21-100", "6-20", ">100"]


def test_storycloze_layout_groups_pairs_by_speaker_folder(tmp_path):
    for speaker in ("spk1", "spk2"):
        for story in ("s1", "s2", "s3"):
            _tone(tmp_path / speaker / f"{story}_correct.wav")
            _tone(tmp_path / speaker / f"{story}_incorrect.wav", hz=330)
    layout, pairs = load(tmp_path)
    assert layout == "storycloze" and len(pairs) == 6
    assert sorted({p.group for p in pairs}) == ["spk1", "spk2"]
    (tmp_path / "spk1" / "s3_incorrect.wav").unlink()
    with pytest.raises(BenchError, match="s3_correct.wav: no matching s3_incorrect"):
        load(tmp_path)


def test_a_benchmark_file_whose_name_is_not_utf8_is_named_before_any_scoring(tmp_path):
    """soundfile cannot open such a name, nor JSON hold its pair's id: the set is refused whole, naming the file (the
    folder's digest, which a result records, read it before and failed with "surrogates not allowed")."""
    import os

    for story in ("s1", "cafe"):
        _tone(tmp_path / f"{story}_correct.wav")
        _tone(tmp_path / f"{story}_incorrect.wav", hz=330)
    for side in ("correct", "incorrect"):  # soundfile cannot write one either
        (tmp_path / f"cafe_{side}.wav").rename(tmp_path / os.fsdecode(b"caf\xe9_" + side.encode() + b".wav"))
    assert len(bench_digest(tmp_path)) == 16
    with pytest.raises(BenchError, match=r"caf\\xe9_(in)?correct.wav: its file name is not UTF-8 \(rename it\)"):
        load(tmp_path)


def test_a_storycloze_folder_of_upper_case_endings_loads(tmp_path):
    # Files as TIMIT and many recorders name them: .WAV, read as .wav is.
    for story in ("s1", "s2"):
        _tone(tmp_path / f"{story}_correct.WAV")
        _tone(tmp_path / f"{story}_incorrect.WAV", hz=330)
    layout, pairs = load(tmp_path)
    assert layout == "storycloze" and sorted(p.id for p in pairs) == ["s1", "s2"]
    assert Path(pairs[0].negative[0].audio).name.endswith("_incorrect.WAV")


def test_cross_modal_layout_gives_the_four_pairings(tmp_path):
    for role, text in (("mutual", "Tom had a red ball."), ("correct", "He played with it."),
                       ("incorrect", "The moon was cheese.")):
        _tone(tmp_path / f"st1_{role}.wav")
        (tmp_path / f"st1_{role}.txt").write_text(text + "\n")
    expected = {"S": ("speech", "speech"), "S2T": ("speech", "text"), "T2S": ("text", "speech"), "T": ("text", "text")}
    for mode, modalities in expected.items():
        layout, [pair] = load(tmp_path, mode)
        assert layout == "cross-modal"
        assert tuple(p.modality for p in pair.positive) == modalities
        assert pair.positive[0] == pair.negative[0]  # the shared context
        assert pair.positive[1].text == "He played with it." and pair.negative[1].text == "The moon was cheese."
        assert all((p.audio is not None) == (p.modality == "speech") for p in pair.positive + pair.negative)


def _slamkit_order(folder, separator):
    """slamkit's ModellingMetricDataset with subfolder=True, from its definition: each sub-folder's .wav files
    sorted by the integer before the separator, the lists concatenated, then taken two by two."""
    files = []
    for sub in folder.iterdir():
        if sub.is_dir():
            files += sorted(sub.glob("*.wav"), key=lambda f: int(f.name.split(separator)[0]))
    return {(str(files[2 * i]), str(files[2 * i + 1])) for i in range(len(files) // 2)}


def test_slamkits_own_pairs_folders_are_recognised_with_or_without_sub_folders(tmp_path):
    # Sub-folders as slamkit's sBLIMP config reads them (`subfolder: true`, '+'), numbers past 9 to sort as numbers.
    sblimp = tmp_path / "sblimp"
    for sub, numbers in (("agreement", (8, 9, 10, 11)), ("island", (0, 1))):
        (sblimp / sub).mkdir(parents=True)
        for number in numbers:
            _tone(sblimp / sub / f"{number}+{sub}_{'pos' if number % 2 == 0 else 'neg'}.wav")
    layout, pairs = load(sblimp)
    assert layout == "slamkit-pairs" and len(pairs) == 3
    assert {(p.positive[0].audio, p.negative[0].audio) for p in pairs} == _slamkit_order(sblimp, "+")
    assert all(p.positive[0].audio.endswith("_pos.wav") for p in pairs)
    assert sorted(p.group for p in pairs) == ["agreement", "agreement", "island"]
    # One flat folder of '_' names (sWUGGY, StoryCloze) is one group.
    swuggy = tmp_path / "swuggy"
    swuggy.mkdir()
    for number in range(4):
        _tone(swuggy / f"{number}_w.wav")
    layout, pairs = load(swuggy)
    assert layout == "slamkit-pairs" and len(pairs) == 2 and {p.group for p in pairs} == {"all"}
    # Numbered StoryCloze pairs end in _correct / _incorrect, but no <id>_correct has its <id>_incorrect beside it:
    # slamkit's layout, not the Spoken StoryCloze's.
    tsc = tmp_path / "tsc"
    tsc.mkdir()
    for number, role in ((0, "correct"), (1, "incorrect"), (2, "correct"), (3, "incorrect")):
        _tone(tsc / f"{number}_story{number // 2}_{role}.wav")
    layout, pairs = load(tsc)
    assert layout == "slamkit-pairs" and [Path(p.negative[0].audio).name for p in pairs] == \
        ["1_story0_incorrect.wav", "3_story1_incorrect.wav"]
    # slamkit would pair an odd sub-folder's last file with the next one's first: refused, naming it.
    (sblimp / "island" / "1+island_neg.wav").unlink()
    with pytest.raises(BenchError, match=r"island: 1 .wav files cannot form pairs"):
        load(sblimp)
    # Names without a number and separator throughout are no slamkit set.
    _tone(swuggy / "extra.wav")
    with pytest.raises(BenchError, match="not a benchmark folder"):
        load(swuggy)


def test_salmon_parts_pair_each_samples_two_files_in_path_order(tmp_path):
    # SalmonDataset, from its definition: in a part's folder, the files of sample n (name.split("_")[1]) sorted
    # by path, the first the positive. Sample 10 sorts after 9 as a number; its files as paths.
    for part, numbers in (("gender_consistency", (9, 10)), ("speaker_consistency", (0,))):
        (tmp_path / part).mkdir()
        for number in numbers:
            for side in ("a_pos", "b_neg"):
                _tone(tmp_path / part / f"sample_{number}_{side}.wav")
    layout, pairs = load(tmp_path)
    assert layout == "salmon" and [p.id for p in pairs] == ["gender_consistency/9", "gender_consistency/10",
                                                           "speaker_consistency/0"]
    assert all(p.positive[0].audio.endswith("a_pos.wav") and p.negative[0].audio.endswith("b_neg.wav") for p in pairs)
    assert [p.group for p in pairs] == ["gender_consistency"] * 2 + ["speaker_consistency"]
    # SALMon's parts are tasks of their own: outside the reference preset the whole is the mean over them, both
    # as its folders and from the hub (tests/eval/test_evaluate.py scores it so).
    assert LAYOUTS["salmon"].aggregation == LAYOUTS["salmon-hub"].aggregation == "macro"
    # A sample with a third file cannot be a pair (SALMon's loader would fail unpacking it).
    _tone(tmp_path / "speaker_consistency" / "sample_0_c.wav")
    with pytest.raises(BenchError, match=r"speaker_consistency: sample 0 has 3 .wav files"):
        load(tmp_path)
    _tone(tmp_path / "speaker_consistency" / "stray.wav")
    with pytest.raises(BenchError, match=r"stray.wav: a SALMon file is named <name>_<sample number>_...wav"):
        load(tmp_path)


def test_not_a_benchmark_folder_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match="not a benchmark folder"):
        load(tmp_path)
    # ZeroSpeech's dataset root: the sets are two levels down, and the error names them.
    for task in ("lexical", "syntactic"):
        (tmp_path / task / "dev").mkdir(parents=True)
        (tmp_path / task / "dev" / "gold.csv").write_text("id,filename,correct\n")
    with pytest.raises(BenchError, match=r"not a benchmark folder .*inside it are: lexical/dev, syntactic/dev$"):
        load(tmp_path)


def test_hub_parquet_layout_writes_the_audio_once_and_groups_by_speaker(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile

    def wav_bytes(hz):
        buffer = io.BytesIO()
        t = np.arange(24000) / 24000  # Kokoro-TTS writes 24 kHz
        soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 24000, format="WAV")
        return buffer.getvalue()

    for speaker in ("bm", "af"):
        rows = [{"id": f"story{i}", "correct_text": "He went home.", "negative_text": "The sea sang.",
                 "correct_audio": {"bytes": wav_bytes(220), "path": "a.wav"},
                 "negative_audio": {"bytes": wav_bytes(330), "path": "b.wav"}} for i in range(3)]
        (tmp_path / "sSC" / speaker).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "sSC" / speaker / "train-00000.parquet")
    layout, pairs = load(tmp_path)
    assert layout == "hf-parquet" and len(pairs) == 6
    assert sorted({p.group for p in pairs}) == ["sSC/af", "sSC/bm"]
    samples = audio.load_audio(pairs[0].positive[0].audio)
    assert len(samples) == 16000 and pairs[0].positive[0].text == "He went home."
    assert load(tmp_path)[1][0].positive[0].audio == pairs[0].positive[0].audio  # cached, not rewritten
    # Ids come from the data: one that is a path names a file inside the cache all the same.
    escape = tmp_path / "outside"
    rows = [{"id": identifier, "correct_text": "a.", "negative_text": "b.",
             "correct_audio": {"bytes": wav_bytes(220), "path": "/x/../a.wav"},
             "negative_audio": {"bytes": wav_bytes(330), "path": "b"}}
            for identifier in (str(escape / "abs"), "../../" + str(escape.name) + "/rel", "..")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "evil.parquet")
    _, evil = load(tmp_path)
    cache = Path(evil[0].positive[0].audio).parents[2]
    assert not escape.exists() and len({p.positive[0].audio for p in evil}) == len(evil)
    assert all(Path(part.audio).resolve().is_relative_to(cache.resolve()) for p in evil for part in p.positive)
    (tmp_path / "evil.parquet").unlink()
    pq.write_table(pa.Table.from_pylist([{"id": "x"}]), tmp_path / "sSC" / "bm" / "train-00001.parquet")
    with pytest.raises(BenchError, match="train-00001.parquet: no column"):
        load(tmp_path)
    # SALMon on the hub (`slprl/SALMon`): positive_audio and negative_audio, with task and ind, a folder per part.
    salmon = tmp_path / "salmon" / "gender_consistency"
    salmon.mkdir(parents=True)
    rows = [{"task": "gender_consistency", "ind": 7 + i, "positive_audio": {"bytes": wav_bytes(220 + i), "path": None},
             "negative_audio": {"bytes": wav_bytes(330 + i), "path": None}} for i in range(2)]
    pq.write_table(pa.Table.from_pylist(rows), salmon / "train-00000.parquet")
    layout, pairs = load(salmon.parent)
    assert layout == "salmon-hub" and [p.id for p in pairs] == ["gender_consistency/7", "gender_consistency/8"]
    assert pairs[0].positive[0].text is None and audio.load_audio(pairs[1].negative[0].audio).size == 16000
