"""`simslm generate MODEL`: continue audio or text prompts in speech or text, and write what came out.

Modes, as the paper's cross-modal table names them: S→S and S→T continue a spoken prompt
(its units from the model's own encoder and codebook), T→S and T→T a written one. Prompts are
written as slamkit's `build_prompt` writes them (`generation.speech_prompt`): S→S its units, then
`<speech>` (the speech-only `generate`'s form); S→T `<speech>`, its units, `<text>` and T→S
`<text>`, the text, `<speech>` (`cm_generate`'s interleaved inputs); T→T the text alone, as
text-only training samples are (`cm_generate` would write `<text>TEXT<text>`). Sampling
follows slamkit's `SpeechLM.generate` (`generation.continuation_options`): speech draws units,
BOS or EOS, text anything but units, and the model's EOS ends a continuation;
`benchmarks/side_by_side_generation.py` checks S→S, S→T and T→S against slamkit's own.
Speech comes out as units and a WAV: through the unit vocoder `--vocoder-command` names (any
program, e.g. a wrapper around textlesslib's unit HiFi-GAN for mHuBERT units, run without a
shell with `{units}` replaced by a JSON file of the units and `{wav}` by the WAV to write), or
else, for `logmel` units, through the log-mel inversion vocoder (levels from the prompt's
audio, or `--reference-audio`); other units without a vocoder get no WAV, and the JSON says
why.

Each prompt gives `<name>.json` (prompt, mode, seed, sampling options, tokens, units, text,
wav) and `<name>.wav` when there is speech, written atomically into `--out`.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simslm import jobs, machine, storage
from simslm.config import Config, ConfigError, check_device, check_positive
from simslm.eval.bench_units import bench_units_cache, cut_prompt, run_unit_source, units_for_audio
from simslm.eval.evaluate import load_run_model
from simslm.eval.generation import continuation_options, continuation_text, sample_continuation, speech_prompt
from simslm.sequences.vocabulary import SPEECH_MARKER, TEXT_MARKER
from simslm.speech import audio


@dataclass(frozen=True, kw_only=True)
class GenerateConfig(Config):
    """What `simslm generate` does."""

    model: str
    """A run folder or a model folder (`simslm eval` reads the same)."""
    prompt: str
    """An audio file (.wav, .flac, .mp3, .ogg, .opus), a text file (.txt), a folder of such files, or the prompt
    text itself."""
    out: str
    """Folder for <name>.json and <name>.wav per prompt."""
    mode: Literal["auto", "S2S", "S2T", "T2S", "T2T"] = "auto"
    """What to continue in: auto is S2S for audio prompts and T2T for text."""
    max_new_tokens: int = 150
    """Tokens to sample at most (units for speech: 150 logmel units are 6 s)."""
    temperature: float = 0.8
    """Sampling temperature (slamkit's generation setting); 0 = greedy."""
    top_k: int = 25
    """Sample among the top k tokens (slamkit's setting); 0 = all of the modality's tokens."""
    seed: int = 0
    """Seed of the sampling (prompt n uses seed + n)."""
    reference_audio: str | None = None
    """T2S: a recording whose level and timbre the vocoder follows (S2S uses the prompt's own audio)."""
    speech_units: str | None = None
    """The `simslm units extract` folder of the model's codebook, when the model folder does not record one."""
    vocoder_command: str | None = None
    """A unit vocoder to run for each speech output, e.g. "python my_hifigan.py --units {units} --out {wav}": run
    without a shell; {units} becomes a JSON file ({"units": [...], "encoder": ..., "frame_rate_hz": ...}), {wav}
    the WAV it must write."""
    prompt_sec: float | None = None
    """Continue only the first seconds of each spoken prompt, cut from its waveform before its units are extracted,
    as slamkit's generation cuts its prompts (`prompt_length: 3` in its configs; `eval generation=` does); default:
    the whole recording."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""

    def check(self) -> None:
        check_device(self)
        check_positive(self, "prompt_sec")
        if not self.prompt.strip():  # Path("") is the current folder, which would be read as a folder of prompts
            raise ConfigError("--prompt is empty: give an audio or text file, a folder of them, or the text itself")
        try:
            arguments = shlex.split(self.vocoder_command or "")
        except ValueError as error:  # an unclosed quote
            raise ConfigError(f"--vocoder-command: {error} in '{self.vocoder_command}'") from None
        if self.vocoder_command is not None and not {"{units}", "{wav}"} <= set(arguments):
            raise ConfigError(f"--vocoder-command needs {{units}} and {{wav}} as arguments of their own, not "
                              f"'{self.vocoder_command}'")
        check_positive(self, "max_new_tokens")
        check_positive(self, "temperature", "top_k", allow_zero=True)
        if self.reference_audio is not None and not Path(self.reference_audio).is_file():
            raise ConfigError(f"{self.reference_audio}: no such file (--reference-audio)")


@dataclass(frozen=True)
class Prompt:
    name: str
    audio: str | None = None
    text: str | None = None


def read_prompts(spec: str, mode: str = "auto") -> list[Prompt]:
    """The prompts `--prompt` names: a file, every audio and .txt file of a folder, or literal text. A `mode` other
    than auto fixes the prompts' modality, and a folder then gives only its files of that modality: a folder of
    recordings with their transcripts beside them is a folder of spoken prompts for S2S."""
    path = Path(spec)
    modality = None if mode == "auto" else mode[0]

    def one(file: Path, name: str) -> Prompt:
        if file.suffix.lower() in audio.AUDIO_SUFFIXES:
            return Prompt(name, audio=str(file))
        return Prompt(name, text=storage.read_text(file).strip())

    if path.is_dir():
        kinds = {"S": audio.AUDIO_SUFFIXES, "T": (".txt",)}
        wanted = kinds[modality] if modality else (*kinds["S"], *kinds["T"])
        listed = sorted(path.iterdir())
        files = [f for f in listed if f.suffix.lower() in wanted]
        for file in [f for f in files if storage.undecodable_name(f)]:  # its name could be neither opened nor written
            print(f"simslm generate: skipped {storage.shown_path(file)}: its file name is not UTF-8 (rename it)",
                  file=sys.stderr)
            files.remove(file)
        aside = [f for f in listed if modality and f.suffix.lower() in kinds["T" if modality == "S" else "S"]]
        if not files:
            raise ValueError(f"{path}: no prompts (files ending {', '.join(wanted)})")
        if aside:
            print(f"simslm generate: {len(aside)} {'written' if modality == 'S' else 'spoken'} prompt(s) in {path} "
                  f"left aside: --mode {mode} continues {'spoken' if modality == 'S' else 'written'} ones",
                  file=sys.stderr)
        # Each prompt's name is its outputs' (NAME.json, NAME.wav): a recording and its transcript (a.wav, a.txt)
        # share a stem, so those are named by their whole file names.
        stems = collections.Counter(f.stem for f in files)
        return [one(f, f.stem if stems[f.stem] == 1 else f.name) for f in files]
    if path.is_file():
        if path.suffix.lower() not in (*audio.AUDIO_SUFFIXES, ".txt"):  # a manifest's JSON was continued as text
            raise ValueError(f"{path}: not a prompt file (audio: {', '.join(audio.AUDIO_SUFFIXES)}; text: .txt)")
        return [one(path, path.stem)]
    if path.suffix.lower() in (*audio.AUDIO_SUFFIXES, ".txt") or "/" in spec:
        raise ValueError(f"{spec}: no such prompt file")
    return [Prompt(re.sub(r"[^A-Za-z0-9]+", "-", spec.strip())[:40].strip("-") or "prompt", text=spec)]


def generate(config: GenerateConfig) -> list[dict[str, Any]]:
    """Continue every prompt; write <name>.json (and <name>.wav for speech) into `out`; the records."""
    prompts = read_prompts(config.prompt, config.mode)
    # An empty .txt in a folder of prompts is skipped like unreadable audio (below); there is nothing to continue.
    for prompt in [prompt for prompt in prompts if prompt.audio is None and not prompt.text]:
        print(f"simslm generate: skipped {prompt.name}.txt: it is empty", file=sys.stderr)
        prompts.remove(prompt)
    if not prompts:
        raise ValueError(f"{config.prompt}: no prompt to continue (every one is empty)")
    _refuse_outputs_over_inputs(config, prompts)
    modes = {prompt.name: _mode(config.mode, prompt) for prompt in prompts}
    if any(mode == "T2S" for mode in modes.values()) and config.reference_audio is None \
            and config.vocoder_command is None:
        raise ValueError(f"{config.prompt}: T2S needs --reference-audio (a recording for the vocoder's level)")
    device = machine.torch_device(config.device)
    model, vocabulary, _ = load_run_model(Path(config.model), device)
    needs_units = any(mode[0] == "S" or mode[-1] == "S" for mode in modes.values())
    source = run_unit_source(Path(config.model), config.speech_units) if needs_units else None
    spoken = [prompt.audio for prompt in prompts if prompt.audio]
    cut = {path: path if config.prompt_sec is None else cut_prompt(path, source, config.prompt_sec) for path in spoken}
    units_of_cut = units_for_audio(list(cut.values()), source, bench_units_cache(), device=device) if spoken else {}
    units_of = {path: units_of_cut[cut[path]] for path in spoken if cut[path] in units_of_cut}
    vocoder, no_vocoder = None, None
    if needs_units:
        if config.vocoder_command is not None:
            vocoder = CommandVocoder(config.vocoder_command, source)
        elif source.encoder.get("name") == "logmel" and source.codebook is not None:
            from simslm.units.vocoder import LogMelInversionVocoder

            vocoder = LogMelInversionVocoder(str(source.codebook))
        else:
            no_vocoder = f"no vocoder for {source.encoder.get('name')} units (logmel's inversion is the only one " \
                         f"offline; name one with --vocoder-command)"
    # A folder of prompts goes on past one whose audio cannot be read, as every long job skips a bad item and
    # says so (extraction has already failed the job if no audio at all could be read).
    for prompt in [prompt for prompt in prompts if prompt.audio and prompt.audio not in units_of]:
        print(f"simslm generate: skipped {prompt.audio}: its units could not be extracted (unreadable or silent "
              f"audio)", file=sys.stderr)
        prompts.remove(prompt)
    in_speech, in_text = (continuation_options(vocabulary, model, speech) for speech in (True, False))
    positions = int(model.config.max_position_embeddings)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    records, too_long = [], []
    for number, prompt in enumerate(jobs.progress(prompts, "generate", unit="prompt")):
        mode = modes[prompt.name]
        output_marker = SPEECH_MARKER if mode.endswith("S") else TEXT_MARKER
        if prompt.audio:
            ids = speech_prompt(vocabulary, units_of[prompt.audio], output_marker)
        else:
            # T2S as slamkit's `cm_generate` writes it. T2T as a text-only training sample is, with no marker:
            # `cm_generate` would write `<text>TEXT<text>`, the marker twice (a named difference, docs/LOG.md).
            written = prompt.text if mode == "T2T" else f"{TEXT_MARKER}{prompt.text}{SPEECH_MARKER}"
            ids = np.asarray(vocabulary.encode_samples([written])[0], dtype=np.int64)
            if vocabulary.tokenizer.eos_token_id is not None and len(ids) and ids[-1] == vocabulary.tokenizer.eos_token_id:
                ids = ids[:-1]
        if len(ids) >= positions:
            # Sampling stops at the model's positions: a 70 s prompt's 1,380 units left no room, and the output
            # read "0 units (it drew BOS or EOS alone ...)", as if the model had chosen to stop.
            print(f"simslm generate: skipped {prompt.name}: its prompt is {len(ids)} tokens, and the model has "
                  f"{positions} positions{' (--prompt-sec keeps its first seconds)' if prompt.audio else ''}",
                  file=sys.stderr)
            too_long.append(prompt.name)
            continue
        try:
            new = sample_continuation(model, ids, max_new_tokens=config.max_new_tokens,
                                      temperature=config.temperature, top_k=config.top_k or None,
                                      seed=config.seed + number, device=device,
                                      **(in_speech if mode.endswith("S") else in_text))
        except ValueError as error:  # scores that are not numbers: the model's fault, named
            raise ValueError(f"{config.model}: {error}") from None
        # The prompt's audio as `model` is: relative to the output folder, so the JSON stays true when moved.
        written_prompt = {**asdict(prompt), "audio": storage.portable_path(prompt.audio, out) if prompt.audio else None}
        record: dict[str, Any] = {"prompt": written_prompt, "mode": mode, "seed": config.seed + number,
                                  "options": {"temperature": config.temperature, "top_k": config.top_k,
                                              "max_new_tokens": config.max_new_tokens,
                                              **({"prompt_sec": config.prompt_sec} if prompt.audio else {})},
                                  "prompt_tokens": ids.tolist(), "new_tokens": new.tolist(),
                                  "model": storage.portable_path(config.model, out)}
        if len(new) < config.max_new_tokens and len(ids) + len(new) >= positions:
            record["stopped_at_positions"] = positions  # fewer tokens than asked: the model has no more positions
        if mode.endswith("S"):
            units = (new[vocabulary.is_unit(new)] - vocabulary.unit_offset).astype(int)  # BOS may be drawn
            record.update(units=units.tolist(), text=None, wav=None)
            if vocoder is not None and len(units):
                wav = out / f"{prompt.name}.wav"
                audio.write_audio(wav, vocoder(units, prompt.audio or config.reference_audio))
                record.update(wav=wav.name, duration_sec=round(audio.audio_info(wav)[1], 3))
            elif no_vocoder:
                record["wav_missing"] = no_vocoder
        else:
            record.update(units=None, text=continuation_text(vocabulary, new))
        storage.write_json(out / f"{prompt.name}.json", record)
        records.append(record)
    if not records and too_long:
        raise ValueError(f"{config.prompt}: every prompt fills the model's {positions} positions; nothing was "
                         f"continued")
    return records


def _refuse_outputs_over_inputs(config: GenerateConfig, prompts: list[Prompt]) -> None:
    """Before any work: `--out` the folder of prompts (`--prompt recordings --out recordings`) wrote each prompt's
    continuation over a prompt of the same name (p.wav), and its outputs would be read as prompts by the next run;
    an output named as a prompt file or the reference recording elsewhere would replace it too."""
    out = Path(config.out)
    if Path(config.prompt).is_dir() and os.path.realpath(config.prompt) == os.path.realpath(out):
        raise ValueError(f"{out}: the folder of prompts, whose recordings the outputs would replace and whose next "
                         f"run would read them as prompts; write to another --out")
    inputs = {os.path.realpath(path): what for path, what in
              [(prompt.audio, "a prompt") for prompt in prompts if prompt.audio] +
              [(config.reference_audio, "the --reference-audio")] if path}
    for prompt in prompts:
        for target in (out / f"{prompt.name}.wav", out / f"{prompt.name}.json"):
            if (what := inputs.get(os.path.realpath(target))) is not None:
                raise ValueError(f"{target}: {what}, which an output of prompt {prompt.name} would replace; write to "
                                 f"another --out")


class CommandVocoder:
    """A unit vocoder that is another program: it reads the units from a JSON file and writes a WAV."""

    def __init__(self, command: str, source):
        self.arguments = shlex.split(command)
        self.header = {"encoder": source.encoder, "frame_rate_hz": source.frame_rate_hz, "k": source.k}

    def __call__(self, units: np.ndarray, reference_audio: str | None) -> np.ndarray:
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory(prefix="simslm-vocoder-") as scratch:
            units_file, wav = Path(scratch) / "units.json", Path(scratch) / "out.wav"
            storage.write_json(units_file, {**self.header, "units": [int(u) for u in units],
                                            "reference_audio": reference_audio})
            arguments = [{"{units}": str(units_file), "{wav}": str(wav)}.get(a, a) for a in self.arguments]
            try:
                done = subprocess.run(arguments, capture_output=True, text=True)
            except OSError as error:
                raise ValueError(f"--vocoder-command: cannot run {arguments[0]} ({error.strerror})") from None
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                raise ValueError(f"--vocoder-command: {arguments[0]} exited with status {done.returncode}: {last}")
            try:
                return audio.load_audio(wav, allow_silent=True)
            except audio.AudioError as error:
                raise ValueError(f"--vocoder-command: {arguments[0]} wrote no usable WAV ({error.kind.value})") from None


def _mode(mode: str, prompt: Prompt) -> str:
    spoken = prompt.audio is not None
    if mode == "auto":
        return "S2S" if spoken else "T2T"
    if (mode[0] == "S") != spoken:
        raise ValueError(f"{prompt.audio or prompt.name}: a {'spoken' if spoken else 'written'} prompt cannot be "
                         f"continued in mode {mode}")
    return mode
