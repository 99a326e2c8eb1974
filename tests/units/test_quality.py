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


def test_frame_labels_take_the_phone_at_each_frame_centre():
    labels = unit_quality.frame_phone_labels([("AH", 0.0, 0.05), ("B", 0.05, 0.1)], 4, 25.0)
    assert list(labels) == ["AH", "B", "SIL", "SIL"]


@pytest.mark.slow
def test_logmel_units_carry_phonetic_information(extracted):
    config, _, _ = extracted
    report = unit_quality.unit_quality(unit_quality.QualityConfig(manifest=config.manifest, units=config.out,
                                                                  max_utterances=4, num_workers=2))
    assert report["num_utterances_scored"] >= 3
    assert report["units"]["pnmi"] > 2 * report["shuffled_baseline"]["pnmi"]
    assert report["dedup_ratio"] > 1.0
