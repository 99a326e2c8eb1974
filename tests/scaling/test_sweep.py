import dataclasses
import functools
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from simslm.scaling import execute, sweep
from simslm.train.plan import TrainConfig
from tests.conftest import tiny_base_model
from tests.scaling.helpers import _spec


def test_plan_gives_content_hashed_ids_and_refuses_twist_without_a_family(data, tmp_path):
    planned = sweep.plan_sweep(_spec(data), tmp_path / "a")
    assert len(planned["runs"]) == 4 and len({r["id"] for r in planned["runs"]}) == 4
    again = sweep.plan_sweep(_spec(data), tmp_path / "b")
    assert [r["id"] for r in planned["runs"]] == [r["id"] for r in again["runs"]]
    changed = sweep.plan_sweep(_spec(data, train={"batch_size": 4, "num_validation_batches": 1, "lr": 1e-3}), tmp_path / "c")
    assert not {r["id"] for r in changed["runs"]} & {r["id"] for r in planned["runs"]}
    with pytest.raises(ValueError, match="TWIST but the spec names no text-LM family"):
        sweep.plan_sweep(_spec(data, variants=(sweep.Variant(name="t", data=data),)), tmp_path / "d")
    spec = sweep.SweepSpec.from_json(json.loads(json.dumps({"variants": [{"name": "r", "data": data, "init": "random"}],
                                                            "depths": [1], "budgets_flops": [1e9]})))
    assert spec.depths == (1,) and spec.variants[0].init == "random"


def test_planning_over_a_sweep_says_which_runs_leave_it(data, tmp_path, capsys):
    """A spec planned again over its sweep with more (a budget, seeds) keeps every run; with fewer or others, the
    runs so far leave sweep.json, and so status, fit and report: said, with their folders kept for a plan again."""
    sweep.plan_sweep(_spec(data), tmp_path)
    more = sweep.plan_sweep(_spec(data, budgets_flops=(4e8, 8e8, 1.6e9)), tmp_path)
    assert len(more["runs"]) == 6 and "not in this plan" not in capsys.readouterr().err
    fewer = sweep.plan_sweep(_spec(data, budgets_flops=(4e8,)), tmp_path)
    assert len(fewer["runs"]) == 2  # 8e8's two and 1.6e9's two leave it
    assert f"{tmp_path}: 4 run(s) planned there before are not in this plan" in capsys.readouterr().err


def test_variants_of_units_from_different_codebooks_are_said_and_validation_data_of_another_refused(data, tmp_path,
                                                                                                     capsys):
    """A variant built from units of another codebook (of the same size) planned beside the others without a word,
    and its speech CE went into the report beside theirs; validation data of another codebook gave every run a
    held-out loss over other sounds."""
    from simslm.sequences.build import speech_units_folder

    units = tmp_path / "other-units"
    shutil.copytree(speech_units_folder(data), units)
    header = json.loads((units / "units.json").read_text())
    (units / "units.json").write_text(json.dumps({**header, "codebook_sha256": "f" * 64}))
    other = tmp_path / "other-seq"
    shutil.copytree(data, other)
    index = json.loads((other / "index.json").read_text())
    (other / "index.json").write_text(json.dumps({**index, "units_folder": {"relative": "../other-units",
                                                                              "absolute": str(units)}}))
    variants = (sweep.Variant(name="random", data=data, init="random"),
                sweep.Variant(name="other", data=str(other), init="random"))
    sweep.plan_sweep(_spec(data, variants=variants, validation_data=""), tmp_path / "sweep")
    assert ("warning: variants read units of different codebooks (random; other): their speech CEs are losses over "
            "other tokens, not comparable") in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"{other}: its units are of another codebook .* \\(validation_data of "
                                         f"variant random\\)"):
        sweep.plan_sweep(_spec(data, validation_data=str(other)), tmp_path / "sweep2")
    assert not (tmp_path / "sweep2").exists()


def test_a_spec_reads_paths_from_the_home_folder(data, tmp_path, monkeypatch):
    """`"data": "~/seq"` in a spec is the home folder's, as in every other file simslm reads options from."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "seq").symlink_to(data)
    spec = sweep.SweepSpec.from_json({"variants": [{"name": "r", "data": "~/seq", "init": "random"}],
                                      "depths": [1], "budgets_flops": [4e8], "validation_data": "~/seq"})
    assert spec.variants[0].data == spec.validation_data == str(tmp_path / "home" / "seq")
    planned = sweep.plan_sweep(spec, tmp_path / "sweep")
    assert Path(planned["runs"][0]["config"]["data"]).resolve() == Path(data).resolve()


def test_a_sweep_finds_its_data_after_a_move_and_when_copied_alone(data, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(data, tmp_path / "study" / "data")
    monkeypatch.chdir(tmp_path / "study")  # paths as a user types them: relative to where `sweep plan` runs
    planned = sweep.plan_sweep(_spec("data", validation_data="data"), "sweep")
    stored = json.loads((tmp_path / "study" / "sweep" / "sweep.json").read_text())
    assert {run["config"]["data"] for run in stored["runs"]} == {"../data"}
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tmp_path / "study" / "sweep", tmp_path / "sweep-alone")  # the sweep without its data
    assert {r["config"]["data"] for r in sweep.load_sweep("sweep-alone")["runs"]} == {str(tmp_path / "study" / "data")}
    (tmp_path / "study").rename(tmp_path / "moved")  # the whole study, data and sweep together
    runs = sweep.load_sweep(tmp_path / "moved" / "sweep")["runs"]
    assert {(Path(r["config"]["data"]).resolve(), Path(r["config"]["validation_data"]).resolve()) for r in runs} == {
        ((tmp_path / "moved" / "data").resolve(),) * 2}
    # The ids do not depend on the directory `sweep plan` ran from.
    again = sweep.plan_sweep(_spec(str(tmp_path / "moved" / "data"), validation_data=str(tmp_path / "moved" / "data")),
                             tmp_path / "moved" / "sweep2")
    assert [r["id"] for r in again["runs"]] == [r["id"] for r in planned["runs"]]
    with pytest.raises(ValueError, match="no index.json"):
        sweep.plan_sweep(_spec(str(tmp_path / "nowhere")), tmp_path / "bad")


def test_a_sweep_over_data_built_again_since_its_plan_is_refused(data, tmp_path):
    # Its finished runs saw the data before; runs trained now would see the new, and one fit would mix the two.
    from simslm.sequences.build import BuildConfig, build_sequences

    shutil.copytree(data, tmp_path / "seq")
    spec = _spec(str(tmp_path / "seq"), depths=(1,), budgets_flops=(4e8,))
    sweep.plan_sweep(spec, tmp_path / "study" / "sweep")
    sweep.plan_sweep(spec, tmp_path / "study" / "sweep")  # planned again on the same data: as before
    stored = json.loads((tmp_path / "seq" / "index.json").read_text())["config"]
    build_sequences(BuildConfig.from_dict({**stored, "out": str(tmp_path / "seq"), "overwrite": True, "seed": 1}))
    for attempt in (lambda: execute.run_sweep(tmp_path / "study" / "sweep", num_parallel=1),
                    lambda: sweep.plan_sweep(spec, tmp_path / "study" / "sweep")):
        with pytest.raises(ValueError, match="seq was built again since the sweep was planned"):
            attempt()
    assert not (tmp_path / "study" / "sweep" / "runs").exists() or \
        not any((tmp_path / "study" / "sweep" / "runs").iterdir())
    # Moved with the sweep, the data is still the data it was planned on.
    shutil.copytree(data, tmp_path / "other" / "seq")
    sweep.plan_sweep(_spec(str(tmp_path / "other" / "seq"), depths=(1,), budgets_flops=(4e8,)),
                     tmp_path / "other" / "sweep")
    (tmp_path / "other").rename(tmp_path / "moved")
    moved = sweep.load_sweep(tmp_path / "moved" / "sweep")
    assert list(moved["data_sha256"]) == [str(tmp_path / "moved" / "seq")]
    sweep.check_inputs_unchanged(moved)


def test_a_sweep_whose_twist_source_changed_since_its_plan_is_refused(data, tmp_path):
    # A text LM pretrained again into the same folder: the finished TWIST runs started from the old weights.
    # Llama: transformers 5 reads the tok512 beside a qwen2 config as a Qwen2Tokenizer of 513 tokens, which `plan`
    # refuses for the data built with tok512 (`tiny_base_model`).
    source = tiny_base_model(tmp_path / "models" / "llama-32", "llama", 32, 1)
    families = {"llama": [source]}
    one_cell = {"families": families, "depths": (), "budgets_flops": (4e8,)}
    twist = _spec(data, **one_cell, variants=(sweep.Variant(name="t", data=data),))
    scratch = _spec(data, **one_cell)
    planned = sweep.plan_sweep(twist, tmp_path / "twist")
    sweep.plan_sweep(twist, tmp_path / "twist")  # planned again, nothing changed: as before
    assert list(planned["base_sha256"]) == [str(Path(source).resolve())]
    sweep.plan_sweep(scratch, tmp_path / "scratch")  # a random init reads the source's architecture only
    tiny_base_model(Path(source), "llama", 32, 1)  # the same architecture, other weights
    for attempt in (lambda: execute.run_sweep(tmp_path / "twist", num_parallel=1),
                    lambda: sweep.plan_sweep(twist, tmp_path / "twist")):
        with pytest.raises(ValueError, match="llama-32 changed since the sweep was planned"):
            attempt()
    assert not (tmp_path / "twist" / "runs").exists() or not any((tmp_path / "twist" / "runs").iterdir())
    sweep.plan_sweep(scratch, tmp_path / "scratch")
    sweep.check_inputs_unchanged(sweep.load_sweep(tmp_path / "scratch"))


def test_a_sweep_of_models_its_runs_cannot_start_from_is_refused_when_planned(data, tmp_path, monkeypatch):
    """A family of hub ids not in the cache, with no network, was planned; every run then failed at its start, each
    after half a minute of retries. So were data built with another tokenizer than a family's models, refused by
    each run. Both are refused once, when planned, and leave no folder."""
    import huggingface_hub

    other = tiny_base_model(tmp_path / "models" / "qwen2-32", "qwen2", 32, 1)  # a Qwen2Tokenizer of 513 tokens
    with pytest.raises(ValueError, match=r"seq: built with another tokenizer than .*qwen2-32's, which has 513 tokens, "
                                         r"but the data's text tokens are 512; build the sequences with --tokenizer"):
        sweep.plan_sweep(_spec(data, families={"qwen2": [other]}, depths=()), tmp_path / "mixed")
    hub = _spec(data, families={"qwen2.5": ["Qwen/Qwen2.5-0.5B"]}, depths=())
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # nothing cached
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("SIMSLM_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"^Qwen/Qwen2.5-0.5B: not in the Hugging Face cache, and downloads are off "
                                         r"\(SIMSLM_OFFLINE / HF_HUB_OFFLINE\); where there is a network, run `hf "
                                         r"download Qwen/Qwen2.5-0.5B`"):
        sweep.plan_sweep(hub, tmp_path / "hub")
    monkeypatch.delenv("SIMSLM_OFFLINE")

    def unreachable(*_, **__):
        raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    with pytest.raises(ValueError, match=r"Qwen/Qwen2.5-0.5B: not in the Hugging Face cache and the hub cannot be "
                                         r"reached \(OSError\)"):
        sweep.plan_sweep(hub, tmp_path / "hub")
    assert not (tmp_path / "mixed").exists() and not (tmp_path / "hub").exists()
    # Found in the cache, a hub model is planned without asking the hub.
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *_: str(tmp_path / "config.json"))
    assert len(sweep.plan_sweep(hub, tmp_path / "hub")["runs"]) == 2


def test_a_large_file_is_digested_from_samples_and_still_tells_weights_apart(tmp_path, monkeypatch):
    from simslm import storage

    monkeypatch.setattr(storage, "DIGEST_WHOLE_BYTES", 1000)
    monkeypatch.setattr(storage, "DIGEST_SAMPLE_BYTES", 100)
    weights = tmp_path / "model" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(bytes(range(256)) * 40)
    before = storage.content_digest(tmp_path / "model")
    changed = bytearray(weights.read_bytes())
    changed[len(changed) // 2] ^= 1  # inside the middle sample
    weights.write_bytes(bytes(changed))
    assert storage.content_digest(tmp_path / "model") != before
    (tmp_path / "model" / "config.json").write_text("{}")  # a small file, read whole
    assert storage.content_digest(tmp_path / "model") != storage.content_digest(weights)


def test_seeds_plan_one_run_per_replicate_and_a_sweep_without_them_plans_as_before(data, tmp_path):
    single = sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,)), tmp_path / "single")["runs"]
    assert len(single) == 1 and single[0]["config"]["seed"] == 0 and "-s" not in single[0]["id"]
    replicated = sweep.plan_sweep(_spec(data, depths=(1,), budgets_flops=(4e8,), seeds=(3, 4)), tmp_path / "two")
    assert [run["config"]["seed"] for run in replicated["runs"]] == [3, 4]
    assert [run["id"].split("-")[2:4] for run in replicated["runs"]] == [["c4e08", "s3"], ["c4e08", "s4"]]
    assert sweep.SweepSpec.from_json(replicated["spec"]).seeds == (3, 4)  # as sweep.json stores it
    for seeds, train, message in (((1, 1), {}, "distinct"), ((-1,), {}, ">= 0"), ((1, 2), {"seed": 5}, "not both")):
        with pytest.raises(ValueError, match=message):
            _spec(data, seeds=seeds, train=train)
    with pytest.raises(ValueError, match="seeds must be a list, not 3"):  # not blamed on a variant
        sweep.SweepSpec.from_json({"variants": [{"name": "r", "data": data, "init": "random"}], "depths": [1],
                                   "budgets_flops": [1e9], "seeds": 3})


def test_a_sweep_given_seeds_later_keeps_its_runs_as_those_of_their_seed(data, tmp_path):
    spec = functools.partial(_spec, data, depths=(1,), budgets_flops=(4e8,))
    (single,) = sweep.plan_sweep(spec(), tmp_path)["runs"]
    (tmp_path / single["config"]["run_dir"]).mkdir(parents=True)  # a run started (or finished) under that plan
    # Seed 0 is the same run (same content, same hash): it keeps its folder; seed 1 is new.
    zero, one = sweep.plan_sweep(spec(seeds=(0, 1)), tmp_path)["runs"]
    assert zero["id"] == single["id"] and zero["config"] == single["config"]
    assert one["id"].split("-")[3] == "s1" and one["config"]["seed"] == 1
    # And back: a replicated sweep planned with one run per cell keeps that seed's run.
    (tmp_path / one["config"]["run_dir"]).mkdir(parents=True)
    (back,) = sweep.plan_sweep(spec(train={**_spec(data).train, "seed": 1}), tmp_path)["runs"]
    assert back["id"] == one["id"] and back["config"] == one["config"]
    # Without a folder on disk, each plan names its runs its own way.
    assert "-s0-" in sweep.plan_sweep(spec(seeds=(0, 1)), tmp_path / "fresh")["runs"][0]["id"]


def test_a_run_planned_before_validation_every_precision_and_batching_existed_keeps_its_name():
    # run ids hash a run's config; a field added since, at its default, stays out of the hash, or every sweep
    # planned before would name its finished runs anew and train them again.
    config = dataclasses.asdict(TrainConfig(run_dir="runs/x", data="d", budget_flops=1e12))
    before = {key: value for key, value in config.items()
              if key not in ("run_dir", "validation_every", "precision", "checkpoint_format", "batching")}
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:8]
    assert sweep.run_id("v", "d1", "c1e12", config) == f"v-d1-c1e12-{digest}"
    assert sweep.run_id("v", "d1", "c1e12", {**config, "validation_every": 100}) != f"v-d1-c1e12-{digest}"
    assert sweep.run_id("v", "d1", "c1e12", {**config, "precision": "bf16"}) != f"v-d1-c1e12-{digest}"
    assert sweep.run_id("v", "d1", "c1e12", {**config, "checkpoint_format": "sharded"}) != f"v-d1-c1e12-{digest}"
    assert sweep.run_id("v", "d1", "c1e12", {**config, "batching": "pieces"}) != f"v-d1-c1e12-{digest}"


def test_a_sweep_with_two_benchmarks_of_one_name_is_refused():
    """Every run's eval.json would file both under one name, the second's results over the first's."""
    with pytest.raises(ValueError, match=r"^bench: 2 benchmarks named sblimp \(mine/sblimp, theirs/sblimp\), whose "
                                         r"results would take one name in eval.json"):
        sweep.check_benchmarks({"bench": ["mine/sblimp", "theirs/sblimp"]})
    sweep.check_benchmarks({"bench": []})


def test_a_size_or_grid_point_given_twice_is_refused(data, tmp_path):
    """A family listing a model twice (or a depth, a budget) planned its runs twice under one id, and the fit
    counted each of them twice."""
    for changes, said in (({"depths": (1, 1)}, "depths lists 1 more than once"),
                          ({"budgets_flops": (4e8, 4e8)}, "budgets_flops lists 400000000.0 more than once"),
                          ({"families": {"f": ("a", "a")}, "depths": ()}, "family f lists a more than once")):
        with pytest.raises(ValueError, match=said):
            _spec(data, **changes)
    model = tiny_base_model(tmp_path / "models" / "llama-32", "llama", 32, 1)
    aliased = _spec(data, families={"f": (model, model + "/")}, depths=())  # one folder, spelled twice
    with pytest.raises(ValueError, match=r"the spec plans the same run more than once \(random-llama-32-c4e08-"):
        sweep.plan_sweep(aliased, tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()

