import numpy as np
import pytest

from simslm.units import quality as unit_quality


def test_scores_are_one_for_a_bijection_and_near_zero_for_independence():
    rng = np.random.default_rng(0)
    phones = rng.integers(0, 10, size=20000)
    perfect = unit_quality.phone_unit_scores(phones, (phones * 7) % 10)
    assert perfect["pnmi"] == pytest.approx(1.0) and perfect["cluster_purity"] == pytest.approx(1.0)
    independent = unit_quality.phone_unit_scores(phones, rng.integers(0, 10, size=20000))
    assert independent["pnmi"] < 0.01 and independent["cluster_purity"] < 0.15


def test_purities_on_a_hand_computed_table():
    # Phones a,a,a,b,b,b over units 0,1,2,3,3,3. The HuBERT paper's phone purity, E_unit[max_phone P(phone|unit)]:
    # units 0, 1 and 2 (1/6 each) are all a, unit 3 (1/2) all b, so 1. Its cluster purity,
    # E_phone[max_unit P(unit|phone)]: a (1/2) is split in thirds, b (1/2) is all unit 3, so 1/6 + 1/2.
    scores = unit_quality.phone_unit_scores(np.array(list("aaabbb")), np.array([0, 1, 2, 3, 3, 3]))
    assert scores["phone_purity"] == pytest.approx(1.0)
    assert scores["cluster_purity"] == pytest.approx(1 / 6 + 1 / 2)
    # A unit per frame: the paper's extreme case, phone purity 1 whatever the phones.
    phones = np.random.default_rng(0).integers(0, 5, size=50)
    one_per_frame = unit_quality.phone_unit_scores(phones, np.arange(50))
    assert one_per_frame["phone_purity"] == pytest.approx(1.0) and one_per_frame["cluster_purity"] < 0.2


def test_units_are_repeated_to_the_ten_ms_phone_frames_as_fairseq_reads_them():
    # measure_teacher_quality.py reads one phone per 10 ms frame and repeats each unit frame `--upsample` times
    # (4 at 25 Hz), then cuts both to the shorter. AH for 30 ms then B for 70 ms is 10 phone frames; 3 unit frames
    # cover 12, so the last two are cut: unit 0 meets AH AH AH B, unit 1 B B B B, unit 2 B B.
    phones = unit_quality.phone_frames([("AH", 0.0, 0.03), ("B", 0.03, 0.1)])
    assert list(phones) == ["AH"] * 3 + ["B"] * 7
    labels, units = unit_quality.frame_pairs(phones, np.array([0, 1, 2]), 25.0)
    assert list(labels) == list(phones) and list(units) == [0] * 4 + [1] * 4 + [2] * 2
    scores = unit_quality.phone_unit_scores(labels, units)
    # Joint: (AH,0) .3, (B,0) .1, (B,1) .4, (B,2) .2. Phone purity: .3 + .4 + .2; cluster purity: .3 + .4.
    # The phone at each 40 ms frame's centre (AH, B, and past the end) gave neither.
    assert scores["phone_purity"] == pytest.approx(0.9) and scores["cluster_purity"] == pytest.approx(0.7)
    # Units that outlast the phones are cut the other way, and a gap in the alignment is silence.
    labels, units = unit_quality.frame_pairs(unit_quality.phone_frames([("S", 0.0, 0.02), ("T", 0.04, 0.05)]),
                                             np.array([7, 8, 9]), 50.0)
    assert list(labels) == ["S", "S", "SIL", "SIL", "T"] and list(units) == [7, 7, 8, 8, 9]


def test_a_rate_that_does_not_divide_100_hz_takes_the_unit_each_phone_frame_starts_in():
    labels, units = unit_quality.frame_pairs(np.array(["A"] * 10, dtype=object), np.arange(5), 30.0)
    assert list(units) == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]  # frame j starts at j x 10 ms, in unit frame floor(0.3 j)
    for rate, upsample in ((100.0, 1), (50.0, 2), (25.0, 4), (12.5, 8)):  # the integer rates repeat exactly
        _, units = unit_quality.frame_pairs(np.array(["A"] * 40, dtype=object), np.arange(6), rate)
        assert list(units) == list(np.repeat(np.arange(6), upsample)[:40])


def test_one_phone_label_gives_a_pnmi_of_zero_not_fairseqs_minus_one():
    # H(phone) = 0 leaves PNMI undefined; fairseq's 1e-8 epsilons turn it into -1.
    scores = unit_quality.phone_unit_scores(np.array(["A"] * 6, dtype=object), np.array([0, 1, 1, 2, 2, 2]))
    assert scores["pnmi"] == 0.0 and scores["cluster_purity"] == pytest.approx(0.5)


@pytest.mark.slow
def test_logmel_units_carry_phonetic_information(extracted):
    config, _, _ = extracted
    report = unit_quality.unit_quality(unit_quality.QualityConfig(manifest=config.manifest, units=config.out,
                                                                  max_utterances=4, num_workers=2))
    assert report["num_utterances_scored"] >= 3
    assert report["units"]["pnmi"] > 2 * report["shuffled_baseline"]["pnmi"]
    assert report["dedup_ratio"] > 1.0


def test_phone_labels_are_read_as_fairseqs_read_phn_reads_them(tmp_path):
    path = tmp_path / "phones.tsv"
    path.write_text("a\tAH0,AH1,B,SIL\n\nb\tK,K\n")
    labels = unit_quality.read_phone_labels(path)
    assert {key: list(value) for key, value in labels.items()} == {"a": ["AH", "AH", "B", "SIL"], "b": ["K", "K"]}
    for text, problem in (("a AH,B\n", "phones.tsv:1: expected"), ("a\tAH\nb\t\n", "phones.tsv:2: expected"),
                          ("a\tAH\na\tB\n", "phones.tsv:2: a has a line already"), ("\n", "no phone labels")):
        path.write_text(text)
        with pytest.raises(ValueError, match=problem):
            unit_quality.read_phone_labels(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="phones.tsv: not a text file in UTF-8"):
        unit_quality.read_phone_labels(path)


def test_given_phone_labels_are_scored_without_pocketsphinx(extracted, tmp_path, monkeypatch):
    from simslm.units.folder import read_units

    config, _, _ = extracted
    monkeypatch.setattr(unit_quality, "phone_alignments", None)  # must not be called
    items = list(read_units(config.out))
    rng = np.random.default_rng(0)
    # Labels for all but the first utterance, 10 ms frames a little longer or shorter than the units cover.
    lines, expected = [], ([], [])
    for item in items[1:]:
        phones = rng.choice(["AH1", "B", "K0", "SIL"], size=round(item.num_frames * 100 / item.frame_rate_hz)
                            + int(rng.integers(-3, 4)))
        lines.append(f"{item.id}\t{','.join(phones)}")
        labelled, units = unit_quality.frame_pairs(np.array([p.rstrip("01") for p in phones], dtype=object),
                                                   item.frame_units(), item.frame_rate_hz)
        expected[0].append(labelled)
        expected[1].append(units)
    (tmp_path / "phones.tsv").write_text("\n".join(lines) + "\n")
    report = unit_quality.unit_quality(unit_quality.QualityConfig(
        manifest=config.manifest, units=config.out, phone_labels=str(tmp_path / "phones.tsv"),
        out=str(tmp_path / "quality.json")))
    assert report["phone_labels"] == "given"
    assert report["num_utterances_scored"] == len(items) - 1 and report["num_utterances_skipped"] == 1
    assert report["units"] == unit_quality.phone_unit_scores(np.concatenate(expected[0]), np.concatenate(expected[1]))
    assert report["num_phone_labels"] == 4  # AH1 and K0 lost their stress digits
