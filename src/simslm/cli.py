"""The `simslm` command line: one subcommand per pipeline stage, each a thin layer over its module.

Every command reads its options through its stage's config dataclass (`simslm.config`): a
`--flag` per field with its docstring and default as help, `--config FILE` for a JSON or
YAML file of the same names, and `--print-config` to show what it resolved to. A user's
mistake ends in one line, `simslm CMD: error: ...`, and exit status 2 (`--debug` shows the
traceback instead).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

from simslm import __version__
from simslm.config import add_config_arguments, config_from_args

# --- handlers: each takes its config and prints what happened ------------------------------------


def _assets(config) -> int:
    from simslm import assets

    names = config.names or sorted(assets.REGISTRY)
    if config.action == "list":
        print(f"mirror: {assets.mirror_dir() or '(SIMSLM_MIRROR not set)'}   cache: {assets.cache_dir()}")
        print(f"{'asset':<22} {'where':<13} {'files':>5}  description")
        for name in names:
            asset = assets.get(name)
            print(f"{name:<22} {assets.status(name):<13} {len(asset.files):>5}  {asset.description}")
        return 0
    failures = 0
    for name in names:
        try:
            resolved = assets.resolve(name)
        except assets.AssetError as error:
            failures += 1
            print(f"FAIL {name}: {error}", file=sys.stderr)
            continue
        if config.action == "verify":
            print(f"ok   {name}: {len(resolved.paths)} file(s), sha256 match, from {resolved.source} ({resolved.root})")
        else:
            print(resolved.root)
    return 1 if failures else 0


def _synth(config) -> int:
    from simslm.speech.synth import synthesize_corpus

    report = synthesize_corpus(config)
    print(f"synthesized {report.num_synthesized} utterance(s), reused {report.num_reused}, "
          f"skipped {report.num_skipped} {report.skipped_by_reason or ''}")
    print(f"{report.audio_sec / 3600:.2f} h of new audio in {report.wall_sec:.1f} s "
          f"({report.realtime_factor:.0f}x real time) -> {report.manifest}")
    return 0


def _align(config) -> int:
    from simslm.speech.align import align_manifest

    report = align_manifest(config)
    print(f"aligned {report.num_aligned}, kept {report.num_kept}, skipped {report.num_skipped} "
          f"of {report.num_utterances} utterance(s) in {report.wall_sec:.1f} s"
          f"{f' ({report.num_resumed} done by an interrupted run before)' if report.num_resumed else ''} "
          f"-> {report.manifest}")
    for utterance_id, reason in list(report.skipped.items())[:20]:
        print(f"  skipped {utterance_id}: {reason}", file=sys.stderr)
    return 0


def _manifest_import(config) -> int:
    from simslm.speech.importers import import_manifest

    report = import_manifest(config)
    notes = [f"{report.audio_sec / 3600:.2f} h"]
    notes += [f"{report.num_timed} with word timings"] if report.num_timed else []
    notes += ["transcripts lowercased"] if report.case == "lowercased" else []
    print(f"imported {report.num_imported} utterance(s) ({', '.join(notes)}), skipped "
          f"{report.num_skipped}{f' {report.skipped_by_reason}' if report.skipped_by_reason else ''} "
          f"-> {report.manifest}")
    return 0


def _segment(config) -> int:
    from simslm.speech.segment import segment_manifest

    report = segment_manifest(config)
    print(f"cut {report.num_recordings - report.num_skipped} recording(s) ({report.audio_sec / 3600:.2f} h) into "
          f"{report.num_segments} segment(s), skipped {report.num_skipped} {report.skipped_by_reason or ''}"
          f"{' ' + str(report.notes) if report.notes else ''} -> {report.manifest}")
    return 0


def _generate(config) -> int:
    from simslm.eval.generate import generate

    for record in generate(config):
        produced = record["text"] if record["text"] is not None else \
            f"{len(record['units'])} units" + (f" -> {record['wav']}" if record.get("wav") else "" if record["units"]
                                              else " (it drew BOS or EOS alone, which speech may take as in slamkit)")
        stopped = (f" (stopped at the model's {record['stopped_at_positions']} positions)"
                   if record.get("stopped_at_positions") else "")
        print(f"{record['prompt']['name']} ({record['mode']}): {produced}{stopped}")
    print(f"-> {config.out}")
    return 0


def _validate(config) -> int:
    from simslm.speech.manifest import validate_manifest

    failed = 0
    for path in config.manifests:
        problems = validate_manifest(path, check_audio=config.audio)
        for problem in problems:
            print(problem)
        print(f"{path}: {'OK' if not problems else f'{len(problems)} problem(s)'}", file=sys.stderr)
        failed += bool(problems)
    return 1 if failed else 0


def _units_fit(config) -> int:
    from simslm import storage
    from simslm.units.fit import fit_codebook

    path = fit_codebook(config)
    meta = storage.read_json(path.with_suffix(".json"))
    skipped = f", skipped {meta['num_skipped']} {meta['skipped_by_reason']}" if meta["num_skipped"] else ""
    print(f"k-means codebook k={meta['k']} on {meta['num_frames']} frames of {meta['num_utterances']} "
          f"utterance(s){skipped} ({meta['backend']}) -> {path}")
    return 0


def _units_extract(config) -> int:
    from simslm.units.extract import extract_on_slurm, extract_units

    report = extract_on_slurm(config) if config.executor == "slurm" else extract_units(config)
    partial = report.num_shards_present < report.num_shards
    print(f"encoded {report.num_encoded} utterance(s), skipped {report.num_skipped}"
          f"{f' {report.skipped_by_reason}' if report.skipped_by_reason else ''}"
          f"{' in the shards done now' if partial else ''}; {report.num_shards_done_now} of "
          f"{report.num_shards} shard(s) done now in {report.wall_sec:.1f} s"
          f"{f'; the folder holds {report.num_shards_present}, the other processes write the rest' if partial else ''}")
    print(f"{report.num_frames} frames -> {report.num_units} units "
          f"(dedup ratio {report.num_frames / max(1, report.num_units):.2f}) -> {report.out}")
    return 0


def _units_convert(config) -> int:
    from simslm.units.fit import convert_codebook

    print(f"converted to a plain codebook (loads without unpickling) -> {convert_codebook(config)}")
    return 0


def _units_import(config) -> int:
    from simslm.units.extract import import_slamkit_features

    report = import_slamkit_features(config)
    print(f"imported {report['num_imported']} utterance(s), skipped {report['num_skipped']} "
          f"{report['skipped_by_reason'] or ''} -> {report['out']}")
    return 0


def _model_from_checkpoint(config) -> int:
    from simslm.train.checkpoint import model_from_checkpoint

    print(f"model at the checkpoint's step (simslm eval and generate read it) -> {model_from_checkpoint(config)}")
    return 0


def _model_from_gguf(config) -> int:
    from simslm.model import from_gguf

    print(f"converted (loads with AutoModelForCausalLM.from_pretrained and AutoTokenizer) -> {from_gguf(config)}")
    return 0


def _model_from_slamkit(config) -> int:
    from simslm.model import from_slamkit

    print(f"converted (loads with AutoModelForCausalLM.from_pretrained) -> {from_slamkit(config)}")
    return 0


def _units_quality(config) -> int:
    from simslm.units.quality import unit_quality

    report = unit_quality(config)
    print(f"{'':<18} {'PNMI':>7} {'phone purity':>13} {'cluster purity':>15}")
    for name in ("units", "shuffled_baseline"):
        scores = report[name]
        print(f"{name:<18} {scores['pnmi']:>7.4f} {scores['phone_purity']:>13.4f} {scores['cluster_purity']:>15.4f}")
    print(f"dedup ratio {report['dedup_ratio']:.3f} frames/unit; {report['num_utterances_scored']} utterance(s), "
          f"{report['num_frames_scored']} frames of 10 ms scored")
    return 0


def _sequences_build(config) -> int:
    from simslm.sequences.build import build_sequences
    from simslm.sequences.show import drawn_summary, undrawn_streams

    index = build_sequences(config)
    tokens = sum(entry["num_chunks"] for entry in index["epochs"]) * index["context_length"]
    built = index["config"]
    part = f"part {built['shard_index']} of {built['num_shards']}: " if built["num_shards"] > 1 else ""
    print(f"built {part}{len(index['epochs'])} epoch(s), {tokens} tokens in {index['wall_sec']:.1f} s "
          f"({tokens / max(index['wall_sec'], 1e-9):,.0f} tokens/s) -> {config.out}")
    for entry in index["epochs"]:
        if entry["skipped"]:
            print(f"  epoch {entry['epoch']}: skipped {entry['skipped']}", file=sys.stderr)
        if undrawn := undrawn_streams(entry):
            print(f"  warning: epoch {entry['epoch']}: no piece of {', '.join(undrawn)} was drawn ({drawn_summary(entry)} "
                  f"pieces): the mixture ends when its first stream runs out, as slamkit's `first_exhausted` does, so "
                  f"a stream of few pieces ends it early", file=sys.stderr)
    return 0


def _sequences_merge(config) -> int:
    from simslm.sequences.build import merge_sequences

    index = merge_sequences(config)
    tokens = sum(entry["num_chunks"] for entry in index["epochs"]) * index["context_length"]
    print(f"merged {index['merged_from']['num_shards']} parts: {len(index['epochs'])} epoch(s), {tokens} tokens "
          f"-> {config.out}")
    return 0


def _sequences_stats(config) -> int:
    from simslm.sequences.build import part_note
    from simslm.sequences.loader import read_index
    from simslm.sequences.show import drawn_summary, stats

    index = read_index(config.folder)
    rows = stats(config.folder, index)
    if note := part_note(index.get("config", {})):
        print(f"{config.folder}: {note}")
    for row in rows:
        word_share = row["interleaved_speech_word_share"]
        print(f"epoch {row['epoch']}: {row['num_chunks']} chunks, {row['tokens']} tokens "
              f"(speech {row['speech_tokens']}, text {row['text_tokens']}, markers {row['marker_tokens']}, "
              f"padding {row['padding_tokens']}); speech share of tokens {row['speech_token_share']:.3f}"
              + (f"; interleaved words spoken {word_share:.3f}" if word_share is not None else ""))
        print(f"  tokens by stream {row['tokens_by_stream']}; skipped {row['skipped'] or 'none'}")
        if summary := drawn_summary(row):
            print(f"  pieces drawn by stream: {summary}")
        if row["num_documents"]:
            mean = row["mean_document_tokens"]
            print(f"  {row['num_documents']} documents of {mean:.1f} tokens on average, "
                  f"{mean / index['context_length']:.2f} of the context: a step of `train --batching pieces` holds "
                  f"about that share of a step of rows")
    return 0


def _sequences_show(config) -> int:
    from simslm.sequences.show import show

    print(show(config))
    return 0


def _train(config) -> int:
    from simslm.train.loop import train

    result = train(config)
    if result is not None:  # the main process of a torchrun
        print(f"trained {result.steps} steps, {result.tokens} tokens, {result.flops:.3g} FLOPs in "
              f"{result.wall_sec:.1f} s; final train loss {result.final_train.loss:.4f} -> "
              f"{result.model_path(config.run_dir)}")
    return 0


def _textlm(config) -> int:
    from simslm.textlm import family_tokenizer, pretrain_family

    for member in pretrain_family(config)["members"]:
        width = f", width {member['width']}" if member.get("width") else ""
        print(f"depth {member['depth']}{width}: {member['parameters']:,} parameters, loss {member['final_loss']:.3f} "
              f"after {member['pretraining_tokens']:,} tokens ({member['pretraining_flops']:.3g} FLOPs) "
              f"-> {Path(config.out) / member['model_dir']}")
    print(f"build TWIST sequences for this family with --tokenizer {family_tokenizer(config.out)}")
    return 0


def _bench_build(config) -> int:
    from simslm.eval.benchbuild import build_benchmark

    meta = build_benchmark(config)
    print(f"built {meta['kind']}: {meta['num_items']} item(s) in the {meta['layout']} layout, "
          f"{meta['num_files_skipped']} file(s) skipped -> {config.out} ({meta['note']})")
    return 0


def _eval(config) -> int:
    from simslm.eval.evaluate import EVAL_FILE, SCORES_FOLDER, eval_folder, evaluate_run, format_results

    print(format_results(evaluate_run(config)))
    out = eval_folder(config)
    print(f"-> {out / EVAL_FILE}" + (f", {out / SCORES_FOLDER}/" if config.write_scores else ""))
    return 0


def _sweep_plan(config) -> int:
    from simslm.scaling.sweep import SWEEP_FILE, SweepSpec, plan_sweep

    planned = plan_sweep(SweepSpec.read(config.spec), config.out)
    print(f"planned {len(planned['runs'])} run(s) -> {Path(config.out) / SWEEP_FILE}")
    return 0


def _sweep_run(config) -> int:
    from simslm.scaling.execute import run_sweep

    options = {key: value for key, value in config.to_dict().items() if key not in ("sweep", "executor")}
    counts = run_sweep(config.sweep, executor=config.executor, **options)
    print("runs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return 0


def _sweep_wait(config) -> int:
    from simslm.scaling.execute import wait_for_sweep

    counts = wait_for_sweep(config.sweep, poll_sec=config.poll_sec)
    print("runs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    return 0


def _sweep_run_one(config) -> int:
    from simslm.scaling.execute import execute_run

    status = execute_run(config.sweep, config.run_id)
    if int(os.environ.get("RANK", "0")) == 0:  # a run of several processes logs its status once
        print(status)
    return 0


def _sweep_status(config) -> int:
    from simslm.scaling.collect import status_table

    print(status_table(config.sweep))
    return 0


def _fit(config) -> int:
    from simslm.scaling.collect import fit_source
    from simslm.scaling.fit import fit_summary

    fits, out = fit_source(config)
    print("\n".join(fit_summary(fits)))
    print(f"-> {out}")
    return 0


def _plan(config) -> int:
    from simslm.scaling.plan import plan_budget

    text, warnings = plan_budget(config)
    for warning in warnings:
        print(f"simslm plan: warning: {warning}", file=sys.stderr)
    print(text)
    return 0


def _report(config) -> int:
    from simslm import machine
    from simslm.scaling.report import write_report

    print(f"report -> {write_report(config.sweep, out=config.out, num_workers=machine.default_workers())}")
    return 0


def _demo(config) -> int:
    from simslm.demo import run_demo

    print(run_demo(config))
    return 0


# --- the command table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A (sub)command: its words, help, config class (imported when the parser is built) and handler."""

    words: tuple[str, ...]
    help: str
    config: Callable[[], type]
    handler: Callable[[Any], int]
    positional: tuple[str, ...] = ()
    also_positional: tuple[str, ...] = ()
    overrides: bool = False


def _config(module: str, name: str) -> Callable[[], type]:
    def load() -> type:
        import importlib

        return getattr(importlib.import_module(module), name)
    return load


COMMANDS: tuple[Command, ...] = (
    Command(("assets",), "list, verify or fetch named datasets and models", _config("simslm.assets", "AssetsConfig"),
            _assets, positional=("action", "names")),
    Command(("synth",), "text corpus -> 16 kHz speech + manifest with word timings",
            _config("simslm.speech.synth", "SynthConfig"), _synth),
    Command(("align",), "add word timings to a manifest (import or pocketsphinx)",
            _config("simslm.speech.align", "AlignConfig"), _align),
    Command(("manifest", "import"), "a corpus in another layout (folder, LibriSpeech, Kaldi, lhotse, HF datasets, "
            "JSONL) as a manifest",
            _config("simslm.speech.importers", "ImportManifestConfig"), _manifest_import),
    Command(("segment",), "cut long recordings into utterances at pauses (word timings or Silero VAD)",
            _config("simslm.speech.segment", "SegmentConfig"), _segment),
    Command(("manifest", "validate"), "check corpus manifests and their audio",
            _config("simslm.speech.manifest", "ValidateConfig"), _validate, positional=("manifests",)),
    Command(("units", "fit"), "fit a k-means codebook on encoder features of a corpus",
            _config("simslm.units.fit", "FitConfig"), _units_fit),
    Command(("units", "extract"), "encode a manifest into deduplicated units with durations",
            _config("simslm.units.extract", "ExtractConfig"), _units_extract),
    Command(("units", "quality"), "PNMI and purities against phone labels (pocketsphinx's or given), as HuBERT's",
            _config("simslm.units.quality", "QualityConfig"), _units_quality),
    Command(("units", "convert"), "convert a published pickled k-means (needs --trust-pickle)",
            _config("simslm.units.fit", "ConvertConfig"), _units_convert),
    Command(("units", "import"), "units slamkit extracted (its features JSONL) as a units folder",
            _config("simslm.units.extract", "ImportConfig"), _units_import),
    Command(("sequences", "build"), "build packed token shards: interleave, mix, pack",
            _config("simslm.sequences.build", "BuildConfig"), _sequences_build),
    Command(("sequences", "merge"), "join the parts of a sharded build into one folder",
            _config("simslm.sequences.build", "MergeConfig"), _sequences_merge, positional=("parts",)),
    Command(("sequences", "show"), "print a sample (rebuilt with its words) or a chunk",
            _config("simslm.sequences.show", "ShowConfig"), _sequences_show, positional=("folder",)),
    Command(("sequences", "stats"), "tokens per modality and the speech share",
            _config("simslm.sequences.show", "StatsConfig"), _sequences_stats, positional=("folder",)),
    Command(("train",), "train an SLM on a compute budget (resumes when run_dir exists)",
            _config("simslm.train.plan", "TrainConfig"), _train, overrides=True),
    Command(("model", "from-slamkit"), "a model slamkit trained (UnitLM) as a folder plain from_pretrained loads",
            _config("simslm.model", "FromSlamkitConfig"), _model_from_slamkit),
    Command(("model", "from-gguf"), "a GGUF checkpoint (SmolLM2's) as a model folder, dequantised once",
            _config("simslm.model", "FromGgufConfig"), _model_from_gguf, positional=("gguf", "out")),
    Command(("model", "from-checkpoint"), "a run's model at one of its checkpoints (mid-run) as a model folder",
            _config("simslm.train.checkpoint", "FromCheckpointConfig"), _model_from_checkpoint,
            positional=("checkpoint", "out")),
    Command(("textlm", "pretrain"), "pretrain a family of small text LMs (TWIST sources) on a text corpus",
            _config("simslm.textlm", "TextLMConfig"), _textlm),
    Command(("bench", "build"), "synthesise an offline sBLIMP-, tSC- or sWUGGY-style benchmark",
            _config("simslm.eval.benchbuild", "BenchBuildConfig"), _bench_build),
    Command(("eval",), "score a run or a model folder on benchmarks; writes eval.json into it",
            _config("simslm.eval.evaluate", "EvalConfig"), _eval, positional=("run",)),
    Command(("generate",), "continue audio or text prompts in speech (units and a WAV) or text",
            _config("simslm.eval.generate", "GenerateConfig"), _generate, positional=("model",)),
    Command(("sweep", "plan"), "spec JSON -> sweep.json with content-hashed run ids",
            _config("simslm.scaling.sweep", "PlanSweepConfig"), _sweep_plan, positional=("spec",)),
    Command(("sweep", "run"), "execute the runs not finished yet (resumes after a kill)",
            _config("simslm.scaling.execute", "RunSweepConfig"), _sweep_run, positional=("sweep",)),
    Command(("sweep", "run-one"), "train and evaluate one run of a sweep (used by executors)",
            _config("simslm.scaling.execute", "RunOneConfig"), _sweep_run_one, positional=("sweep", "run_id")),
    Command(("sweep", "wait"), "follow the jobs `sweep run --executor slurm --no-wait` submitted until they end",
            _config("simslm.scaling.execute", "WaitConfig"), _sweep_wait, positional=("sweep",)),
    Command(("sweep", "status"), "progress, losses and accuracies per run",
            _config("simslm.scaling.collect", "StatusConfig"), _sweep_status, positional=("sweep",)),
    Command(("fit",), "scaling-law fits (Chinchilla approaches 1-3, bootstrap CIs)",
            _config("simslm.scaling.collect", "FitConfig"), _fit, positional=("source",)),
    Command(("plan",), "compute-optimal model size and tokens for a FLOP budget",
            _config("simslm.scaling.plan", "PlanConfig"), _plan, also_positional=("fit",)),
    Command(("report",), "HTML report with plots and fitted laws for a sweep",
            _config("simslm.scaling.report", "ReportConfig"), _report, positional=("sweep",)),
    Command(("demo",), "the whole offline scaling study from nothing, bracketed (10-28 min on 2 cores)",
            _config("simslm.demo", "DemoConfig"), _demo),
)

# What each group of commands is for; `simslm --help` adds its actions, read from COMMANDS so the two never differ.
GROUP_ABOUT = {"units": "audio -> discrete units", "sequences": "token streams",
               "textlm": "text-LM families (TWIST sources)", "bench": "offline re-creations of the spoken benchmarks",
               "sweep": "sweeps over model sizes", "manifest": "corpus manifests", "model": "model folders"}


def group_help(group: str) -> str:
    """`GROUP_ABOUT[group]` and the group's actions, in COMMANDS' order."""
    actions = [command.words[1] for command in COMMANDS if len(command.words) == 2 and command.words[0] == group]
    return f"{GROUP_ABOUT[group]}: {', '.join(actions)}"


def _named_command(argv: list[str]) -> tuple[str, ...]:
    """The words of the command `argv` names: those of its first two words that are not options (the
    top-level options take no value) which make up a command; () when they make up none."""
    words = tuple(word for word in argv if not word.startswith("-"))[:2]
    return next((command.words for command in COMMANDS if words[:len(command.words)] == command.words), ())


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line as every other error of simslm's (not the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `simslm` argument parser: every command's options, or, given the `argv` it will parse, the options of
    the command `argv` names only. Each command's options take its module's import and the parse of its source
    for the help text (~1 s for all of them), which every `simslm` call, and every run of a sweep, would pay."""
    named = None if argv is None else _named_command(argv)
    parser = _Parser(
        prog="simslm", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.splitlines()[0] + "\n\nStages: assets -> synth -> align -> units -> sequences -> "
        "train -> bench/eval -> sweep/fit/plan/report.\nStart with `simslm demo`: the whole offline study in one "
        "command.")
    parser.add_argument("--version", action="version", version=f"simslm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in COMMANDS:
        if len(command.words) == 1:
            sub = commands.add_parser(command.words[0], help=command.help, description=command.help)
        else:
            group, action = command.words
            if group not in groups:
                about = group_help(group)
                group_parser = commands.add_parser(group, help=about, description=about)
                groups[group] = group_parser.add_subparsers(dest="action", metavar="ACTION", required=True)
            sub = groups[group].add_parser(action, help=command.help, description=command.help)
        if named is not None and command.words != named:
            continue  # never parsed: its name and help are enough for `simslm --help` and its group's
        cls = command.config()
        if command.words == ("units", "fit"):
            from simslm.units.encoders import describe_encoders

            sub.description += f". Encoders: {describe_encoders()}."
        add_config_arguments(sub, cls, positional=command.positional, also_positional=command.also_positional,
                             overrides=command.overrides)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of an error")
        sub.set_defaults(command_words=" ".join(command.words), handler=command.handler)
    return parser


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed arguments; `key=value` words may stand anywhere on the line of a command that takes them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    words = [word for word in extra if "=" in word and not word.startswith("-")]
    if extra and (words != extra or not hasattr(args, "overrides")):
        parser.prog = f"simslm {args.command_words}"  # the command's own name and help
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if words:
        args.overrides = [*args.overrides, *words]
    return args


def _quiet_hub_progress_bars() -> None:
    """No Hugging Face progress bars in a log file: they are redrawn with carriage returns, one line per
    weight file, and our own progress lines (`jobs.Progress`) say what is going on."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
    # tqdm's own default (read when tqdm is imported) for bars that libraries draw directly (transformers' GGUF
    # dequantisation, a bar a tensor file); ours draw no tqdm bar here (`jobs.Progress` writes plain lines).
    os.environ.setdefault("TQDM_DISABLE", "1")
    if "transformers" in sys.modules:  # already imported (as in the tests): switch it off directly
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `simslm` command."""
    if not sys.stderr.isatty():  # before tqdm is imported (the parser imports the stages), which reads its defaults
        _quiet_hub_progress_bars()
    args = parse_arguments(argv)
    name = f"simslm {args.command_words}"
    from simslm.jobs import Stopped, stop_on_sigterm
    from simslm.machine import keep_freed_memory, threads_within_quota

    keep_freed_memory()
    threads_within_quota()
    # SIGTERM (`kill`, a scheduler's time limit) ends a command through its `finally` blocks, as Ctrl-C does, so
    # that what it started stops with it; a handler someone else installed (submitit's) stays.
    ours = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    if ours:
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        config = config_from_args(args.config_class, args)
        if args.print_config:
            print(json.dumps(config.to_dict(), indent=2))
            return 0
        return args.handler(config)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Stopped as stopped:
        if os.environ.get("RANK", "0") == "0":  # every rank of a torchrun stops at the same step: said once
            print(f"{name}: {stopped}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:  # the reader went away (`simslm ... | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        if args.debug:
            raise
        from simslm.jobs import error_line

        print(error_line(name, error), file=sys.stderr)
        return 2
    finally:
        if ours:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run(argv: list[str] | None = None) -> NoReturn:
    """The `simslm` command as a process (its console script, `python -m simslm`): `main`, then exit with its
    status. A process of a torchrun that made a process group leaves without the interpreter's finalisation: gloo's
    worker threads, still there (DDP and FSDP keep the group alive past `destroy_process_group`: its threads stayed,
    2026-12-06), may drop a collective's last tensor as the interpreter is torn down, and the GIL they then take
    aborts the process ("terminate called without an active exception", SIGABRT, after a run had finished: twice
    in CI; pytorch/pytorch#179291)."""
    code = main(argv)
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        # All the interpreter's exit does that matters, before os._exit, in its order: threading's exit hooks
        # (which tell a thread pool left open to stop: torch.compile's inductor leaves one, whose workers wait for
        # work until then; joined without them first, a compiled rank waited for ever after its run) and its other
        # threads joined, which is `threading._shutdown`, the interpreter's own call; then its exit handlers (the
        # group's destruction among them, logging's flush, multiprocessing's clean-up), its output flushed.
        # (Both calls are the interpreter's own, and private: there is no public one.)
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()
        else:  # an interpreter without it: the non-daemon threads joined, as before
            for thread in threading.enumerate():
                if thread is not threading.current_thread() and not thread.daemon:
                    thread.join()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed, or its reader gone
                pass
        os._exit(code)
    sys.exit(code)
