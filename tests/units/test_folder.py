import json

import numpy as np

from simslm.units.folder import deduplicate, expand, read_units


def test_dedup_and_durations_rebuild_the_frame_sequence_exactly():
    rng = np.random.default_rng(0)
    for _ in range(50):
        frames = rng.integers(0, 4, size=rng.integers(0, 200))
        deduplicated, durations = deduplicate(frames)
        assert np.array_equal(expand(deduplicated, durations), frames)
        assert not np.any(deduplicated[1:] == deduplicated[:-1])
        assert durations.sum() == len(frames) and (durations > 0).all()


def test_units_of_some_ids_skip_the_other_lines_unparsed_and_equal_the_filtered_whole(tmp_path):
    out = tmp_path / "units"
    (out / "shards").mkdir(parents=True)
    ids = ["plain", 'quote"d', "back\\slash", "caf\u00e9", "skipped-one"]
    lines = [{"id": i, "frame_rate_hz": 25.0, "units": [n, n + 1], "durations": [1, 2]} for n, i in enumerate(ids[:4])]
    lines.append({"id": "skipped-one", "skipped": "silent", "reason": "silent"})
    (out / "shards" / "shard-00000.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (out / "units.json").write_text(json.dumps({"num_shards": 1}))
    wanted = {'quote"d', "caf\u00e9", "skipped-one", "absent"}
    some = [(u.id, u.units.tolist()) for u in read_units(out, wanted)]
    assert some == [(u.id, u.units.tolist()) for u in read_units(out) if u.id in wanted]
    assert some == [('quote"d', [1, 2]), ("caf\u00e9", [3, 4])]

