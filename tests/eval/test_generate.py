import json

import pytest

from simslm.cli import main
from simslm.eval.generate import GenerateConfig, generate, read_prompts
from simslm.speech import audio
from simslm.units import kmeans
from simslm.units.encoders import LogMelEncoder
from simslm.units.folder import deduplicate

# The fixture's model, TWIST-initialised from stories260K and trained 8 steps, draws BOS far more often than any
# unit: speech may take BOS and EOS, as slamkit's `get_ignore_tokens("SPEECH")` leaves them (the demo's models draw
# none). A flatter draw over every allowed token gives these tests units to speak.
FLAT = {"temperature": 3.0, "top_k": 0}


def test_spoken_and_written_prompts_in_every_mode(trained_run, tmp_path):
    run, bench = trained_run
    spoken = sorted((bench / "audio").glob("*.flac"))[0]
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "a.txt").write_text("Once upon a time there was a cat")
    records = {}
    for mode, prompt in (("S2S", spoken), ("S2T", spoken), ("T2S", tmp_path / "prompts" / "a.txt"),
                         ("T2T", "Lily went to the park")):
        (record,) = generate(GenerateConfig(model=str(run), prompt=str(prompt), out=str(tmp_path / mode), mode=mode,
                                            max_new_tokens=30, reference_audio=str(spoken), **FLAT))
        records[mode] = record
    for mode in ("S2S", "T2S"):
        record = records[mode]
        wav = tmp_path / mode / record["wav"]
        assert record["text"] is None and len(record["units"]) > 0 and all(0 <= u < 32 for u in record["units"])
        # One 40 ms logmel frame group per unit: the WAV is as long as the units say.
        assert audio.audio_info(wav)[1] == pytest.approx(0.04 * len(record["units"]), abs=0.05)
        assert json.loads((tmp_path / mode / wav.with_suffix(".json").name).read_text()) == record
    assert isinstance(records["S2T"]["text"], str) and records["S2T"]["units"] is None
    assert records["T2T"]["prompt"]["text"] == "Lily went to the park"
    # The same seed gives the same continuation.
    again = generate(GenerateConfig(model=str(run), prompt=str(spoken), out=str(tmp_path / "again"), mode="S2S",
                                    max_new_tokens=30, **FLAT))[0]
    assert again["units"] == records["S2S"]["units"]


def test_a_spoken_prompt_cut_to_its_first_seconds_as_slamkit_cuts_it(trained_run, tmp_path):
    """--prompt-sec: the prompt's waveform cut before its units are extracted, as slamkit's generation and
    `eval generation=` cut it; the whole recording by default, and a cut past its end is the whole of it."""
    from simslm.eval.bench_units import bench_units_cache, cut_prompt, run_unit_source, units_for_audio
    from simslm.eval.evaluate import load_run_model
    from simslm.eval.generation import speech_prompt
    from simslm.sequences.vocabulary import SPEECH_MARKER

    run, bench = trained_run
    spoken = str(sorted((bench / "audio").glob("*.flac"))[0])

    def prompt_tokens(**options):
        (record,) = generate(GenerateConfig(model=str(run), prompt=spoken, out=str(tmp_path / str(len(options))),
                                            max_new_tokens=5, **options, **FLAT))
        return record["prompt_tokens"], record["options"].get("prompt_sec")

    (whole, no_cut), (cut, one), (past, _) = prompt_tokens(), prompt_tokens(prompt_sec=1.0), \
        prompt_tokens(prompt_sec=600.0)
    source = run_unit_source(run)
    first_second = cut_prompt(spoken, source, 1.0)
    units = units_for_audio([first_second], source, bench_units_cache())[first_second]
    _, vocabulary, _ = load_run_model(run, "cpu")
    assert cut == speech_prompt(vocabulary, units, SPEECH_MARKER).tolist() and one == 1.0 and no_cut is None
    assert len(cut) < len(whole) and past == whole


def test_the_units_of_a_generated_wav_round_trip_better_than_chance(trained_run, tmp_path):
    from simslm.eval.bench_units import run_unit_source

    run, bench = trained_run
    spoken = sorted((bench / "audio").glob("*.flac"))[0]
    # Sampled, not greedy: a greedy tiny model can repeat one unit, and the logmel encoder normalises each
    # recording, so a constant sound re-encodes as whatever unit is nearest to its mean.
    (record,) = generate(GenerateConfig(model=str(run), prompt=str(spoken), out=str(tmp_path), max_new_tokens=60,
                                        **FLAT))
    codebook = kmeans.Codebook.load(run_unit_source(run).codebook)
    again, _ = deduplicate(codebook.assign(LogMelEncoder().encode(audio.load_audio(tmp_path / record["wav"]))))
    generated = set(record["units"])
    assert len(generated) >= 8
    # Measured over 4 prompts x 2 seeds with this draw: 58-95% of the distinct units come back (chance: about a third).
    assert len(generated & set(again.tolist())) / len(generated) >= 0.5


def test_prompts_and_modes_that_do_not_fit_are_refused(trained_run, tmp_path, capsys):
    run, bench = trained_run
    spoken = sorted((bench / "audio").glob("*.flac"))[0]
    assert read_prompts("a story about a dog")[0].name == "a-story-about-a-dog"
    # A file in a folder of prompts whose name is not UTF-8 cannot be opened or written as NAME.json: skipped, named.
    import os

    (tmp_path / "prompts").mkdir()
    for name in ("a", os.fsdecode(b"caf\xe9")):
        (tmp_path / "prompts" / f"{name}.txt").write_text("once upon a time")
    assert [prompt.name for prompt in read_prompts(str(tmp_path / "prompts"))] == ["a"]
    assert "caf\\xe9.txt: its file name is not UTF-8 (rename it)" in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt", "hello there", "--mode", "S2T", "--out", str(tmp_path)]) == 2
    assert "a written prompt cannot be continued in mode S2T" in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt", "hello", "--mode", "T2S", "--out", str(tmp_path)]) == 2
    assert "T2S needs --reference-audio" in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt", str(spoken.with_name("missing.flac")), "--out",
                 str(tmp_path)]) == 2
    assert "no such prompt file" in capsys.readouterr().err
    # A file of another kind (a manifest, say) was read as the text to continue.
    (tmp_path / "utterances.jsonl").write_text('{"id": "a", "audio": "a.wav"}\n')
    with pytest.raises(ValueError, match=r"utterances.jsonl: not a prompt file \(audio: .wav, .*; text: .txt\)"):
        read_prompts(str(tmp_path / "utterances.jsonl"))


def test_a_prompt_past_the_model_positions_is_skipped_and_one_near_them_says_it_stopped(trained_run, tmp_path, capsys):
    """Sampling stops at the model's positions: a prompt that filled them came out as "0 units (it drew BOS or EOS
    alone ...)", as if the model had chosen to stop, and one near them as fewer tokens than asked, unsaid."""
    run, _ = trained_run
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "long.txt").write_text("the cat sat on the mat and " * 120)
    (tmp_path / "prompts" / "near.txt").write_text("the cat sat on the mat and " * 48)
    records = generate(GenerateConfig(model=str(run), prompt=str(tmp_path / "prompts"), out=str(tmp_path / "out"),
                                      max_new_tokens=60, **FLAT))
    assert [record["prompt"]["name"] for record in records] == ["near"]
    assert "skipped long: its prompt is" in capsys.readouterr().err and not (tmp_path / "out" / "long.json").exists()
    (near,) = records
    assert near["stopped_at_positions"] == 512 and len(near["prompt_tokens"]) + len(near["new_tokens"]) == 512
    assert main(["generate", str(run), "--prompt", str(tmp_path / "prompts" / "long.txt"), "--out",
                 str(tmp_path / "out2")]) == 2
    assert "every prompt fills the model's 512 positions" in capsys.readouterr().err


def test_a_model_whose_scores_are_not_numbers_is_named_not_sampled(nan_model, tmp_path):
    """torch.multinomial's "probability tensor contains either `inf`, `nan`" came out, named nothing; greedy
    decoding took the first allowed token at every step, as if the model had chosen it."""
    for temperature in (0.0, 1.0):
        with pytest.raises(ValueError, match=f"^{nan_model}: the model's next-token scores are not finite numbers"):
            generate(GenerateConfig(model=str(nan_model), prompt="Lily went to the park", mode="T2T",
                                    out=str(tmp_path / f"out-{temperature}"), max_new_tokens=4,
                                    temperature=temperature))


def test_a_folder_of_prompts_goes_on_past_one_that_cannot_be_read(trained_run, tmp_path, capsys):
    import shutil

    run, bench = trained_run
    (tmp_path / "prompts").mkdir()
    shutil.copy(sorted((bench / "audio").glob("*.flac"))[0], tmp_path / "prompts" / "good.flac")
    (tmp_path / "prompts" / "broken.wav").write_bytes(b"RIFF....")
    assert main(["generate", str(run), "--prompt", str(tmp_path / "prompts"), "--out", str(tmp_path / "out"),
                 "--max-new-tokens", "10"]) == 0
    assert "skipped " + str(tmp_path / "prompts" / "broken.wav") in capsys.readouterr().err
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["good.json", "good.wav"]
    # Alone, or with nothing else readable, the prompt is the error.
    (tmp_path / "prompts" / "good.flac").unlink()
    assert main(["generate", str(run), "--prompt", str(tmp_path / "prompts"), "--out", str(tmp_path / "none")]) == 2
    assert "could be encoded ({'not a readable audio file (WAV, FLAC, MP3, Ogg)': 1})" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_a_recording_and_its_transcript_in_one_folder_are_two_prompts(trained_run, tmp_path, capsys):
    """A folder of a.flac and a.txt (the layout `manifest import` reads) gave two prompts named "a": one mode per
    name, so the recording took the transcript's T2T and `generate` failed ('NoneType' object has no attribute
    'codebook'); both would have written a.json. And with --mode S2T the transcripts refused the folder."""
    import shutil

    run, bench = trained_run
    (tmp_path / "prompts").mkdir()
    shutil.copy(sorted((bench / "audio").glob("*.flac"))[0], tmp_path / "prompts" / "a.flac")
    (tmp_path / "prompts" / "a.txt").write_text("Once upon a time there was a cat")
    (tmp_path / "prompts" / "b.txt").write_text("Lily went to the park")
    assert [(p.name, p.audio is not None) for p in read_prompts(str(tmp_path / "prompts"))] == [
        ("a.flac", True), ("a.txt", False), ("b", False)]
    assert main(["generate", str(run), "--prompt", str(tmp_path / "prompts"), "--out", str(tmp_path / "auto"),
                 "--max-new-tokens", "10"]) == 0
    assert sorted(path.name for path in (tmp_path / "auto").iterdir()) == [
        "a.flac.json", "a.flac.wav", "a.txt.json", "b.json"]
    assert json.loads((tmp_path / "auto" / "a.flac.json").read_text())["mode"] == "S2S"
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", str(tmp_path / "prompts"), "--mode", "S2T", "--out",
                 str(tmp_path / "s2t"), "--max-new-tokens", "10"]) == 0
    assert "2 written prompt(s) in" in capsys.readouterr().err
    assert sorted(path.name for path in (tmp_path / "s2t").iterdir()) == ["a.json"]


def test_an_empty_text_prompt_is_refused_alone_and_skipped_in_a_folder(trained_run, tmp_path, capsys):
    run, _ = trained_run
    # "" was read as the current folder, and an empty .txt in a folder stopped the whole folder with a reshape error.
    assert main(["generate", str(run), "--prompt", " ", "--out", str(tmp_path / "a")]) == 2
    assert "--prompt is empty" in capsys.readouterr().err
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "blank.txt").write_text(" \n")
    assert main(["generate", str(run), "--prompt", str(tmp_path / "prompts"), "--out", str(tmp_path / "b")]) == 2
    assert "no prompt to continue (every one is empty)" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    (tmp_path / "prompts" / "dog.txt").write_text("The dog")
    assert main(["generate", str(run), "--prompt", str(tmp_path / "prompts"), "--out", str(tmp_path / "c"),
                 "--max-new-tokens", "5"]) == 0
    assert "skipped blank.txt: it is empty" in capsys.readouterr().err
    assert [path.name for path in (tmp_path / "c").iterdir()] == ["dog.json"]


VOCODER = '''
import json, sys
import numpy as np, soundfile
units = json.load(open(sys.argv[1]))
json.dump(units, open(sys.argv[3], "w"))
if not units["units"]:
    sys.exit("no units to speak")
t = np.arange(640) / 16000  # one 40 ms tone per unit, its pitch the unit's number
soundfile.write(sys.argv[2], np.concatenate([0.3 * np.sin(2 * np.pi * (200 + 20 * u) * t) for u in units["units"]]),
                16000)
'''


def test_a_unit_vocoder_given_as_a_command_speaks_the_units(trained_run, tmp_path, capsys):
    import sys

    run, _ = trained_run
    script = tmp_path / "my vocoder.py"  # a space in the path: arguments are never re-split
    script.write_text(VOCODER)
    seen = tmp_path / "seen.json"
    command = f"{sys.executable} '{script}' {{units}} {{wav}} {seen}"
    (record,) = generate(GenerateConfig(model=str(run), prompt="Once upon a time", mode="T2S", out=str(tmp_path / "o"),
                                        max_new_tokens=20, vocoder_command=command, **FLAT))  # no --reference-audio
    received = json.loads(seen.read_text())
    assert received["units"] == record["units"] and received["encoder"]["name"] == "logmel" and received["k"] == 32
    assert audio.audio_info(tmp_path / "o" / record["wav"])[1] == pytest.approx(0.04 * len(record["units"]), abs=1e-3)
    # A vocoder that fails is named with its last line of stderr; a command without the placeholders is refused.
    assert main(["generate", str(run), "--prompt", "Once", "--mode", "T2S", "--out", str(tmp_path / "f"),
                 "--vocoder-command", f"{sys.executable} -c 'import sys; sys.exit(\"out of memory\")' {{units}} {{wav}}"
                 ]) == 2
    err = capsys.readouterr().err
    assert "exited with status 1: out of memory" in err and "Traceback" not in err
    assert main(["generate", str(run), "--prompt", "Once", "--out", str(tmp_path / "g"),
                 "--vocoder-command", "hifigan --in units.json"]) == 2
    assert "needs {units} and {wav}" in capsys.readouterr().err
