import dataclasses
import json

import pytest

from simslm.cli import COMMANDS, main, parse_arguments
from simslm.config import ConfigError, config_from_args, flag
from simslm.sequences.build import BuildConfig
from simslm.train.plan import TrainConfig


def _config(argv):
    args = parse_arguments(argv)
    return config_from_args(args.config_class, args)


def test_flags_key_value_and_a_config_file_give_the_same_train_config(tmp_path):
    by_flags = _config(["train", "--run-dir", "r", "--data", "d", "--budget-tokens", "1e6", "--init", "random",
                        "--validation-data", "v", "--fsdp"])
    by_words = _config(["train", "run_dir=r", "data=d", "budget_tokens=1000000", "init=random",
                        "validation_data=v", "fsdp=true"])
    (tmp_path / "run.json").write_text(json.dumps({"run_dir": "r", "data": "d", "budget_tokens": 10**6,
                                                   "init": "random", "validation_data": "v", "fsdp": True}))
    by_file = _config(["train", "--config", str(tmp_path / "run.json")])
    assert by_flags == by_words == by_file == TrainConfig(run_dir="r", data="d", budget_tokens=10**6, init="random",
                                                          validation_data="v", fsdp=True)


def test_flags_override_key_value_which_override_the_file(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"run_dir": "r", "data": "d", "lr": 1e-3, "budget_flops": 1e14}))
    config = _config(["train", "--config", str(tmp_path / "run.json"), "lr=2e-3", "batch_size=4", "--lr", "3e-3",
                      "validation_data=none"])
    assert (config.lr, config.batch_size, config.budget_flops, config.validation_data) == (3e-3, 4, 1e14, None)


def test_a_yaml_config_file_is_read_too(tmp_path):
    (tmp_path / "run.yaml").write_text("run_dir: r\ndata: d\nbudget_flops: 1.0e+14\nlr: 0.001\n")
    assert _config(["train", "--config", str(tmp_path / "run.yaml")]).lr == 1e-3


def test_train_help_lists_every_field_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(TrainConfig):
        assert flag(field.name) in text
    assert "(default: 0.5)" in text and "--init {twist,random}" in text and "(required)" in text


@pytest.mark.parametrize("command", [["eval"], ["units", "fit"], ["units", "convert"]])
def test_help_lists_the_options_to_give_before_those_a_shared_base_adds(command, capsys):
    # eval's options build on the scoring ones, and units fit and convert on a codebook's encoder options.
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    options = capsys.readouterr().out.split("options:")[1]
    first_optional = options.index("(default:")
    assert options.rfind("(required)") < first_optional
    assert options.index("--bench" if command == ["eval"] else "--out") < first_optional


def test_help_says_an_options_default_once(capsys):
    """An option whose docstring says what leaving it out does gets no "(default: None)" after it; one with a
    value of its own keeps it."""
    def described(command: list[str]) -> str:
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    plan = described(["plan"])
    assert "(default: the textless reference law of Cuervo & Marxer 2024). --variant" in plan
    assert "(default: None)" not in plan and "tok512 + 500 units + 3. (default: 1015)" in plan
    assets = described(["assets", "list"])
    assert "Asset names (default: all)." in assets and "(default: none)" not in assets
    assert "for quick looks. (default: None)" in described(["eval"])  # --max-pairs: its docstring says nothing of it


def test_print_config_lists_the_options_in_the_order_of_help(capsys):
    assert main(["units", "convert", "--pickle", "km.bin", "--out", "km", "--print-config"]) == 0
    assert list(json.loads(capsys.readouterr().out))[:3] == ["pickle", "out", "encoder"]


@pytest.mark.parametrize("argv, message", [
    (["train"], "missing --run-dir, --data"),
    (["train", "run_dir=r", "data=d"], "exactly one of --budget-flops, --budget-tokens and --budget-tokens-per"),
    (["train", "run_dir=r", "data=d", "budget_tokens=10", "batch_size=0"], "--batch-size must be"),
    (["train", "run_dir=r", "data=d", "budget_flops=inf"], "--budget-flops must be a finite number"),
    (["train", "run_dir=r", "data=d", "budget_tokens=10", "grad_accumulation=-1"], "--grad-accumulation"),
    (["train", "run_dir=r", "data=d", "budget_tokens=10", "checkpoint_every=0"], "--checkpoint-every"),
    (["train", "run_dir=r", "data=d", "budget_tokens=10", "init=warm"], "--init must be one of twist, random"),
    (["train", "run_dir=r", "data=d", "budget_tokens=1.5"], "not a valid int"),
    (["train", "run_dir=r", "data=d", "budget_tokens=10", "validation_every=5"],
     "--validation-every needs --validation-data"),
    (["train", "run_dir=r", "data=d", "budget_tokens=10", "validation_every=-1"], "--validation-every must be"),
    # argparse's own errors: one line too (not its usage first), the type error in words, not a repr
    (["train", "--lr", "abc"], "simslm train: error: argument --lr: 'abc' is not a valid float (see simslm train"),
    (["units", "fit", "--num-units", "1.5"], "argument --num-units: '1.5' is not a valid int"),
    # past int64: numpy's ufuncs and torch's seeding failed on it deep inside (TypeError, OverflowError)
    (["plan", "--flops", "1e18", "--vocab-size", "1e30"], "argument --vocab-size: 1e+30 is too large"),
    (["train", "run_dir=r", "data=d", "budget_tokens=10", "seed=-1e19"], "--seed: -1e+19 is too large"),
    (["train", "run_dir=r", "data=d", "budget_tokens=10", "seed=-1"], "--seed must be 0 or more, not -1"),
    (["sequences", "build", "--out", "o", "--streams", "text", "--text-corpus", "c", "--poisson-lambda", "1e30"],
     "--poisson-lambda must be at most 1e18"),
    (["train", "--depths", "3"], "simslm train: error: unrecognized arguments: --depths"),
    (["sweep", "plan"], "simslm sweep plan: error: the following arguments are required: spec"),
    (["train", "learning_rate=1"], "known key"),
    (["sequences", "build", "--out", "o", "--streams", "speech,audio"], "--streams must be one of"),
    (["sequences", "build", "--out", "o", "--streams", "text"], "the text stream needs --text-corpus"),
    (["sequences", "build", "--out", "o", "--method", "zigzag", "--streams", "text", "--text-corpus", "c"],
     "--method must be one of poisson, span, random, utterance"),
    (["units", "fit", "--manifest", "m", "--out", "o", "--num-units", "0"], "--num-units must be"),
    (["eval", "run", "--bench", "b", "--modes", "S", "X"], "--modes must be one of S, S2T, T2S, T"),
    (["model", "from-slamkit", "--checkpoint", "nowhere", "--out", "o"], "no config.json"),
    (["units", "import", "--features", "nowhere.jsonl", "--out", "o"], "nowhere.jsonl"),
])


def test_bad_values_fail_before_anything_loads(argv, message, capsys):
    # None of the named files exist: a check that ran after loading would report that instead.
    try:
        assert main(argv) == 2
    except SystemExit as exit:  # argparse's errors end the parse
        assert exit.code == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "Traceback" not in error


def test_a_bad_config_file_is_named(tmp_path, capsys):
    (tmp_path / "broken.json").write_text('{"run_dir": ')
    (tmp_path / "typed.json").write_text(json.dumps({"run_dir": "r", "data": "d", "budget_tokens": "many"}))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "huge.json").write_text('{"run_dir": "r", "data": "d", "budget_tokens": 10, "seed": 1e30}')
    for name in ("broken.json", "typed.json", "list.json", "missing.json", "huge.json"):
        assert main(["train", "--config", str(tmp_path / name)]) == 2
        assert str(tmp_path / name) in capsys.readouterr().err


def test_list_fields_take_words_or_commas_and_files_take_lists(tmp_path):
    assert _config(["demo", "--depths", "1", "2", "4"]).depths == (1, 2, 4)
    assert _config(["demo", "--depths", "1,2,4", "--budgets-flops", "1e9,2e9"]).budgets_flops == (1e9, 2e9)
    (tmp_path / "demo.json").write_text(json.dumps({"depths": [2, 3]}))
    assert _config(["demo", "--config", str(tmp_path / "demo.json")]).depths == (2, 3)


def test_a_path_from_the_home_folder_is_one_in_a_config_file_and_after_an_equals_sign(tmp_path, monkeypatch):
    """The shell expands `~/x` on the command line, but not in a --config file nor after `--out=`: there it named a
    folder called "~" in the working one. An option taking LABEL=PATH (`eval --bench`) expands its path too; a "~"
    inside a word is left alone."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = str(tmp_path / "home")
    (tmp_path / "synth.json").write_text(json.dumps({"out": "~/speech", "corpus": "~"}))
    config = _config(["synth", "--config", str(tmp_path / "synth.json")])
    assert (config.out, config.corpus) == (f"{home}/speech", home)
    assert _config(["synth", "--out=~/other"]).out == f"{home}/other"
    assert _config(["eval", "run", "--bench", "tsc=~/tsc", "~/sblimp", "a~/b"]).bench == (
        f"tsc={home}/tsc", f"{home}/sblimp", "a~/b")
    untouched = _config(["synth", "--out", "x/~/y", "--id-prefix", "~x"])
    assert (untouched.out, untouched.id_prefix) == ("x/~/y", "~x")


def test_renamed_options_still_load_from_older_files():
    config = TrainConfig.from_dict({"run_dir": "r", "data": "d", "budget_tokens": 8, "validation_batches": 3,
                                    "keep_checkpoints": 4})
    assert (config.num_validation_batches, config.num_checkpoints_kept) == (3, 4)


def test_print_config_shows_the_resolved_config(capsys):
    assert main(["sequences", "build", "--out", "o", "--streams", "text", "--text-corpus", "c", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["streams"] == ["text"] and printed["method"] == "poisson"
    assert BuildConfig.from_dict(printed) == BuildConfig(out="o", streams=("text",), text_corpus="c")


def test_every_command_config_round_trips_through_a_dict():
    for command in COMMANDS:
        cls = command.config()
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        samples = {"action": "list", "manifests": ("m.jsonl",), "bench": ("b",), "flops": 1e18,
                   "run_id": "x", "kind": "tsc", "budget_tokens": 10, "out": "written",  # not its own input
                   "gguf": "x.gguf"}
        values = {name: samples.get(name, "x") for name in required}
        if cls is TrainConfig:
            values["budget_tokens"] = 10
        if cls is BuildConfig:
            values.update(streams=("text",), text_corpus="c")
        config = cls.from_dict(values)
        assert cls.from_dict(config.to_dict()) == config, cls


def test_unknown_options_in_a_dict_are_refused():
    with pytest.raises(ConfigError, match="unknown option 'speed'"):
        TrainConfig.from_dict({"run_dir": "r", "data": "d", "budget_tokens": 1, "speed": 2}, source="x.json")
