import json

import pytest

from simslm import __version__
from simslm.cli import build_parser, main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in ("assets", "synth", "align", "manifest"))


@pytest.mark.parametrize("command", ["assets", "synth", "align", "manifest"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: simslm " + command in capsys.readouterr().out


def test_the_top_level_help_lists_each_group_s_actions_and_only_those(capsys):
    # It once offered `sequences inspect` and `units measure`, which do not exist.
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    groups = build_parser()._subparsers._group_actions[0].choices
    for group in ("units", "sequences", "sweep", "manifest", "model", "textlm", "bench"):
        actions = list(groups[group]._subparsers._group_actions[0].choices)
        assert f"{group} " in help_text and f": {', '.join(actions)} " in help_text, (group, actions)


def test_field_docstrings_become_help_text():
    synth = build_parser()._subparsers._group_actions[0].choices["synth"]
    voice_set = next(a for a in synth._actions if a.dest == "voice_set")
    assert "Named voice set" in voice_set.help and "default: train" in voice_set.help


def test_a_command_line_builds_the_options_of_its_command_only(monkeypatch):
    # Every command's options cost ~1 s to build (imports, help text from source), paid by each sweep run.
    import simslm.cli as cli

    built = []
    real = cli.add_config_arguments
    monkeypatch.setattr(cli, "add_config_arguments", lambda parser, cls, **kw: (built.append(cls.__name__),
                                                                                 real(parser, cls, **kw)))
    argv = ["--debug", "sweep", "run-one", "some/sweep", "a-run", "--print-config"]
    args = cli.parse_arguments(argv)
    assert built == ["RunOneConfig"]
    full, _ = cli.build_parser().parse_known_args(argv)
    assert vars(args) == vars(full)
    built.clear()
    assert cli.parse_arguments(["train", "data=x", "--lr", "0.1"]).overrides == ["data=x"] and built == ["TrainConfig"]
    built.clear()
    with pytest.raises(SystemExit):
        cli.parse_arguments(["sweep", "--help"])
    assert built == []


def test_assets_list_and_verify(capsys):
    assert main(["assets", "list"]) == 0
    assert "tinystories-sample" in capsys.readouterr().out
    assert main(["assets", "verify", "stories260K", "librispeech-samples"]) == 0
    assert capsys.readouterr().out.count("sha256 match") == 2


def test_missing_asset_exits_nonzero_with_the_reason(monkeypatch, capsys):
    monkeypatch.delenv("SIMSLM_MIRROR")
    assert main(["assets", "verify", "blimp"]) == 1
    assert "asset 'blimp' is not available" in capsys.readouterr().err


def test_synth_then_validate_from_the_command_line(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "A tiny story. The end."}) + "\n")
    assert main(["synth", "--corpus", str(corpus), "--out", str(tmp_path / "o"), "--num-workers", "1"]) == 0
    assert "synthesized 1 utterance(s)" in capsys.readouterr().out
    assert main(["manifest", "validate", str(tmp_path / "o" / "manifest.jsonl")]) == 0
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    assert main(["manifest", "validate", "--no-audio", str(tmp_path / "bad.jsonl")]) == 1
    assert "bad.jsonl:1: missing field(s)" in capsys.readouterr().out


def test_bad_option_values_are_errors_not_tracebacks(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--voice-set", "nobody"]) == 2
    assert "--voice-set must be one of" in capsys.readouterr().err
    assert main(["align", "--manifest", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    # An output folder where a file is: one line naming it.
    (tmp_path / "taken").write_text("")
    capsys.readouterr()
    assert main(["demo", "--out", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err == f"simslm demo: error: {tmp_path / 'taken'}: a file, where a folder is needed\n"


def test_align_from_the_command_line_imports_a_ctm(tmp_path, capsys):
    from simslm import assets
    from simslm.speech.manifest import Utterance, read_manifest, write_manifest

    resolved = assets.resolve("librispeech-samples")
    utterance_id = "1272-128104-0000"
    write_manifest(tmp_path / "in.jsonl", [Utterance(
        id=utterance_id, audio=str(resolved.file(f"{utterance_id}.flac")), sample_rate=16000, duration_sec=5.855,
        transcript=assets.LIBRISPEECH_TRANSCRIPTS[utterance_id])])
    assert main(["align", "--manifest", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl"),
                 "--method", "ctm", "--source", str(resolved.file(f"{utterance_id}.ctm"))]) == 0
    assert "aligned 1, kept 0, skipped 0" in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "out.jsonl")[0].words) == 17
    assert main(["manifest", "validate", str(tmp_path / "out.jsonl")]) == 0


def test_units_commands_fit_extract_convert(tmp_path, capsys, synthetic_corpus):
    import pickle

    import numpy as np
    from sklearn.cluster import KMeans

    assert main(["units", "fit", "--manifest", str(synthetic_corpus), "--out", str(tmp_path / "km"), "--num-units", "8",
                 "--max-utterances", "2", "--num-workers", "1"]) == 0
    assert "k-means codebook k=8" in capsys.readouterr().out
    assert main(["units", "extract", "--manifest", str(synthetic_corpus), "--codebook", str(tmp_path / "km.npy"),
                 "--out", str(tmp_path / "units"), "--num-workers", "1"]) == 0
    assert "encoded 4 utterance(s), skipped 0" in capsys.readouterr().out

    model = KMeans(n_clusters=2, n_init=1, random_state=0).fit(np.arange(20, dtype=float).reshape(10, 2))
    (tmp_path / "km500.bin").write_bytes(pickle.dumps(model))
    convert = ["units", "convert", "--pickle", str(tmp_path / "km500.bin"), "--out", str(tmp_path / "converted")]
    assert main(convert) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(convert + ["--trust-pickle"]) == 0
    assert (tmp_path / "converted.npy").exists()
    # A published mHuBERT codebook encodes as slamkit does, 40 zero samples at each end, unless told otherwise.
    recorded = lambda name: json.loads((tmp_path / f"{name}.json").read_text())["encoder"]["edge_pad"]  # noqa: E731
    assert recorded("converted") == 40 and recorded("km") == 0  # the logmel codebook above
    assert main(convert + ["--trust-pickle", "--edge-pad", "0", "--out", str(tmp_path / "bare")]) == 0
    assert recorded("bare") == 0
    # ... and resamples audio not at 16 kHz as slamkit's extraction does (torchaudio's default), unless told.
    resampler = lambda name: json.loads((tmp_path / f"{name}.json").read_text())["encoder"]["resampler"]  # noqa: E731
    assert resampler("converted") == "sinc-hann" and resampler("km") == "soxr"
    assert main(convert + ["--trust-pickle", "--resampler", "soxr", "--out", str(tmp_path / "soxr")]) == 0
    assert resampler("soxr") == "soxr"
    assert main(convert + ["--trust-pickle", "--resampler", "linear", "--out", str(tmp_path / "linear")]) == 2
    assert "linear" in capsys.readouterr().err and not (tmp_path / "linear.npy").exists()
    assert main(convert + ["--trust-pickle", "--encoder", "logmel", "--edge-pad", "40",
                           "--out", str(tmp_path / "odd")]) == 2
    assert "edge padding is for HuBERT encoders" in capsys.readouterr().err
    assert not (tmp_path / "odd.npy").exists()


def test_sequences_build_stats_show(tmp_path, capsys, extracted):
    config, _, _ = extracted
    out = str(tmp_path / "seq")
    assert main(["sequences", "build", "--out", out, "--manifest", config.manifest, "--units", config.out,
                 "--streams", "interleaved,speech", "--context-length", "128"]) == 0
    assert "built 1 epoch(s)" in capsys.readouterr().out
    assert main(["sequences", "stats", out]) == 0
    printed = capsys.readouterr().out
    assert "interleaved words spoken" in printed and " documents of " in printed
    assert main(["sequences", "show", out, "--chunk", "0"]) == 0
    assert "units:" in capsys.readouterr().out
    assert main(["sequences", "show", out, "--chunk", "100000"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["sequences", "build", "--out", out, "--manifest", config.manifest, "--units", config.out]) == 2
    assert "the text stream needs --text-corpus" in capsys.readouterr().err
    assert main(["sequences", "build", "--out", out, "--manifest", config.manifest, "--units", config.out,
                 "--streams", "speech"]) == 2
    assert "not empty" in capsys.readouterr().err


_LIBRARY_BAR = """
import sys
from simslm import cli
cli.main(["assets", "list"])  # any command: it sets up the process as every command does
from tqdm.auto import tqdm
for _ in tqdm(range(3), desc="a library's own bar"):  # as transformers' GGUF dequantisation draws one
    pass
"""


def test_a_librarys_own_progress_bar_stays_out_of_a_log(tmp_path):
    """Loading a GGUF base model drew transformers' tqdm bar into a SLURM log: a line redrawn with carriage returns
    for each of its 272 tensors."""
    import os
    import subprocess
    import sys

    script = tmp_path / "bar.py"
    script.write_text(_LIBRARY_BAR)
    env = {key: value for key, value in os.environ.items() if key != "TQDM_DISABLE"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "a library's own bar" not in done.stderr


_RUN_AS_RANK = """
import atexit, concurrent.futures, os, sys, threading, time
import torch.distributed as dist
from simslm import cli


class Finalised:
    def __del__(self, write=sys.stderr.write):  # bound now: by then the module's globals are gone
        write("finalised\\n")


def command(argv):
    if argv == ["in a group"]:  # as `train` makes one under torchrun
        dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}", rank=0, world_size=1)
    threading.Thread(target=lambda: time.sleep(0.5) or print("thread done")).start()
    # A pool never shut down, as torch.compile's inductor leaves one: its workers wait for work until the
    # interpreter's own exit tells them to stop (threading's exit hooks), so joining them first waited forever.
    globals()["pool"] = concurrent.futures.ThreadPoolExecutor(2)  # held, as inductor holds its own
    pool.submit(time.sleep, 0.1)
    atexit.register(lambda: print("exit handler"))
    globals()["finalised"] = Finalised()  # its __del__ runs as the interpreter is finalised
    print("said")
    return 3


cli.main = command
cli.run(sys.argv[2:])
"""


@pytest.mark.parametrize("in_group", [True, False])
def test_a_command_that_made_a_process_group_exits_without_the_interpreters_finalisation(tmp_path, in_group):
    # A rank whose gloo threads outlive the group (DDP, FSDP) could abort in finalisation (SIGABRT) after its run
    # had finished. Left without it, the process still joins its threads, runs its exit handlers (the group's
    # destruction is one), flushes its output (a pipe: block-buffered) and exits with the command's status. A
    # thread pool left open (torch.compile's) is told to stop first, as the interpreter tells it: a compiled rank
    # of `--compile --fsdp` waited for its pool's workers for ever after its run (CI, 2026-12-07).
    import os
    import subprocess
    import sys

    environment = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    script = tmp_path / "rank.py"
    script.write_text(_RUN_AS_RANK)
    told = subprocess.run([sys.executable, str(script), str(tmp_path / "store"), *(["in a group"] if in_group else [])],
                          capture_output=True, text=True, env=environment, timeout=120)
    assert told.returncode == 3, told.stderr[-2000:]
    assert told.stdout.split("\n") == ["said", "thread done", "exit handler", ""]
    assert ("finalised" in told.stderr) is not in_group


def _readme_commands() -> list[list[str]]:
    """Each `simslm ...` command in the README's bash blocks (continuation lines joined, comments dropped), also
    the one a `python -m simslm.torchrun ... -m simslm`, `sbatch --wrap` or `.venv/bin/simslm` line holds."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for start, word in enumerate(words):
                if word.endswith("simslm") and word != "simslm.torchrun" and (start == 0 or words[start - 1] in (
                        "-m", "&&") or words[start - 1].startswith("SIMSLM_")):
                    rest = words[start + 1:]
                    commands.append(rest[:rest.index("&&")] if "&&" in rest else rest)
                elif word == "--wrap":
                    commands += [shlex.split(words[start + 1])[1:]]
    return commands


def test_every_command_the_readme_shows_parses():
    """The README's commands are what a user copies first: an option renamed or removed since must fail here, not
    in their terminal."""
    from simslm.cli import parse_arguments

    commands = _readme_commands()
    assert len(commands) >= 15 and ["demo", "--out", "out/demo"] in commands
    for argv in commands:
        try:
            parse_arguments(argv)
        except SystemExit as error:
            pytest.fail(f"README: `simslm {' '.join(argv)}` does not parse (exit {error.code})")
