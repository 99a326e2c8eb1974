"""The `simslm` command line: one subcommand per pipeline stage, each a thin layer over its module.

Stage options come from the stage's frozen config dataclass: each field becomes a
`--flag` and the docstring under the field becomes its help text.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable

from simslm import __version__
from simslm.eval.benchbuild import BenchBuildConfig, build_benchmark
from simslm.eval.evaluate import EvalConfig, evaluate_run, format_results
from simslm.scaling.fit import TEXTLESS_REFERENCE, fit_all, plan_compute, read_table
from simslm.sequences.build import BuildConfig, build_sequences
from simslm.sequences.loader import PackedLoader
from simslm.sequences.show import rebuild_sample, render_chunk, render_sample, stats
from simslm.sequences.vocabulary import Vocabulary
from simslm.units.encoders import describe_encoders
from simslm.units.extract import ConvertConfig, ExtractConfig, FitConfig, convert_codebook, extract_units, fit_codebook


def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (PEP 257 attribute docstrings), inherited ones too."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[:-1]):
        docs.update(_own_field_docs(base))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def add_config_arguments(parser: argparse.ArgumentParser, cls: type,
                         positional: tuple[str, ...] = ()) -> None:
    """Add one option per field of the dataclass `cls` (required fields without default)."""
    docs = _field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
        if optional:
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        has_default = field.default is not dataclasses.MISSING
        help_text = docs.get(field.name, "")
        if has_default and field.default not in (None, ""):
            help_text += f" (default: {field.default})"
        if field.name in positional:
            parser.add_argument(field.name, help=help_text)
            continue
        flag = "--" + field.name.replace("_", "-")
        if typing.get_origin(kind) is tuple:
            parser.add_argument(flag, nargs="+", required=not has_default, dest=field.name, metavar="VALUE",
                                default=field.default if has_default else None, help=help_text)
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=field.default if has_default else None,
                                required=not has_default, help=help_text, dest=field.name)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build the config dataclass from parsed arguments."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)}
    return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in values.items()})


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# --- assets ---------------------------------------------------------------------------

def _assets_command(args: argparse.Namespace) -> int:
    from simslm import assets

    names = args.names or sorted(assets.REGISTRY)
    if args.action == "list":
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
        if args.action == "verify":
            print(f"ok   {name}: {len(resolved.paths)} file(s), sha256 match, from {resolved.source} ({resolved.root})")
        else:
            print(resolved.root)
    return 1 if failures else 0


# --- synth / align / manifest -------------------------------------------------------------

def _synth_command(args: argparse.Namespace) -> int:
    from simslm.speech.synth import SynthConfig, synthesize_corpus

    report = synthesize_corpus(config_from_args(SynthConfig, args))
    print(f"synthesized {report.num_synthesized} utterance(s), reused {report.num_reused}, "
          f"skipped {report.num_skipped} {report.skipped_by_reason or ''}")
    print(f"{report.audio_sec / 3600:.2f} h of new audio in {report.wall_sec:.1f} s "
          f"({report.realtime_factor:.0f}x real time) -> {report.manifest}")
    return 0


def _align_command(args: argparse.Namespace) -> int:
    from simslm.speech.align import AlignConfig, align_manifest

    report = align_manifest(config_from_args(AlignConfig, args))
    print(f"aligned {report.num_aligned}, kept {report.num_kept}, skipped {report.num_skipped} "
          f"of {report.num_utterances} utterance(s) in {report.wall_sec:.1f} s -> {report.manifest}")
    for utterance_id, reason in list(report.skipped.items())[:20]:
        print(f"  skipped {utterance_id}: {reason}", file=sys.stderr)
    return 0


def _manifest_command(args: argparse.Namespace) -> int:
    from simslm.speech.manifest import validate_manifest

    failed = 0
    for path in args.manifests:
        problems = validate_manifest(path, check_audio=not args.no_audio)
        for problem in problems:
            print(problem)
        print(f"{path}: {'OK' if not problems else f'{len(problems)} problem(s)'}", file=sys.stderr)
        failed += bool(problems)
    return 1 if failed else 0


def _units_command(args: argparse.Namespace) -> int:
    from simslm.units import quality as unit_quality

    if args.action == "fit":
        path = fit_codebook(config_from_args(FitConfig, args))
        meta = json.loads(path.with_suffix(".json").read_text())
        print(f"k-means codebook k={meta['k']} on {meta['num_frames']} frames of {meta['num_utterances']} "
              f"utterance(s) ({meta['backend']}) -> {path}")
    elif args.action == "extract":
        report = extract_units(config_from_args(ExtractConfig, args))
        print(f"encoded {report.num_encoded} utterance(s), skipped {report.num_skipped} "
              f"{report.skipped_by_reason or ''}; {report.num_shards_done_now} of {report.num_shards} shard(s) "
              f"done now in {report.wall_sec:.1f} s")
        print(f"{report.num_frames} frames -> {report.num_units} units "
              f"(dedup ratio {report.num_frames / max(1, report.num_units):.2f}) -> {report.out}")
    elif args.action == "convert":
        path = convert_codebook(config_from_args(ConvertConfig, args))
        print(f"converted to a plain codebook (loads without unpickling) -> {path}")
    else:
        report = unit_quality.unit_quality(config_from_args(unit_quality.QualityConfig, args))
        print(f"{'':<18} {'PNMI':>7} {'cluster purity':>15} {'phone purity':>13}")
        for name in ("units", "shuffled_baseline"):
            scores = report[name]
            print(f"{name:<18} {scores['pnmi']:>7.4f} {scores['cluster_purity']:>15.4f} {scores['phone_purity']:>13.4f}")
        print(f"dedup ratio {report['dedup_ratio']:.3f} frames/unit; {report['num_utterances_scored']} utterance(s), "
              f"{report['num_frames_scored']} frames scored")
    return 0


def _sequences_command(args: argparse.Namespace) -> int:
    import numpy as np


    if args.action == "build":
        index = build_sequences(config_from_args(BuildConfig, args))
        tokens = sum(entry["num_chunks"] for entry in index["epochs"]) * index["context_length"]
        print(f"built {len(index['epochs'])} epoch(s), {tokens} tokens in {index['wall_sec']:.1f} s "
              f"({tokens / max(index['wall_sec'], 1e-9):,.0f} tokens/s) -> {args.out}")
        for entry in index["epochs"]:
            if entry["skipped"]:
                print(f"  epoch {entry['epoch']}: skipped {entry['skipped']}", file=sys.stderr)
        return 0
    if args.action == "stats":
        for row in stats(args.folder):
            word_share = row["interleaved_speech_word_share"]
            print(f"epoch {row['epoch']}: {row['num_chunks']} chunks, {row['tokens']} tokens "
                  f"(speech {row['speech_tokens']}, text {row['text_tokens']}, markers {row['marker_tokens']}, "
                  f"dropped {row['dropped_tokens']}); speech share of tokens {row['speech_token_share']:.3f}"
                  + (f"; interleaved words spoken {word_share:.3f}" if word_share is not None else ""))
            print(f"  tokens by stream {row['tokens_by_stream']}; skipped {row['skipped'] or 'none'}")
        return 0
    if args.sample:
        sample, vocabulary = rebuild_sample(args.folder, args.sample, args.epoch)
        print(render_sample(sample, vocabulary))
    else:
        folder = Path(args.folder)
        vocabulary = Vocabulary.load(folder / "tokenizer")
        loader = PackedLoader(folder, batch_size=1)
        chunks = loader.chunks(args.epoch)
        if not 0 <= args.chunk < len(chunks):
            raise ValueError(f"{folder}: epoch {args.epoch} has {len(chunks)} chunks; --chunk {args.chunk} is out of range")
        print(render_chunk(np.asarray(chunks[args.chunk]), vocabulary))
    return 0


def _train_command(args: argparse.Namespace) -> int:
    from simslm.train import config_with_overrides, train

    result = train(config_with_overrides(args.config, args.overrides))
    if result:
        print(f"trained {result['steps']} steps, {result['tokens']} tokens, {result['flops']:.3g} FLOPs in "
              f"{result['wall_sec']:.1f} s; final train loss {result['final_train']} -> {result['model_dir']}")
    return 0


def _textlm_command(args: argparse.Namespace) -> int:
    from simslm.textlm import TextLMConfig, pretrain_family

    family = pretrain_family(config_from_args(TextLMConfig, args))
    for member in family["members"]:
        print(f"depth {member['depth']}: {member['parameters']:,} parameters, loss {member['final_loss']:.3f} "
              f"after {member['pretraining_tokens']:,} tokens ({member['pretraining_flops']:.3g} FLOPs) "
              f"-> {member['model_dir']}")
    return 0


def _bench_command(args: argparse.Namespace) -> int:

    meta = build_benchmark(config_from_args(BenchBuildConfig, args))
    print(f"built {meta['kind']}: {meta['num_items']} item(s) in the {meta['layout']} layout, "
          f"{meta['num_files_skipped']} file(s) skipped -> {args.out} ({meta['note']})")
    return 0


def _eval_command(args: argparse.Namespace) -> int:

    config = config_from_args(EvalConfig, args)
    results = evaluate_run(config)
    print(format_results(results))
    print(f"-> {Path(config.run) / 'eval.json'}")
    return 0


def _sweep_command(args: argparse.Namespace) -> int:
    from simslm.scaling import sweep

    if args.action == "plan":
        spec = sweep.SweepSpec.from_json(json.loads(Path(args.spec).read_text()))
        planned = sweep.plan_sweep(spec, args.out)
        print(f"planned {len(planned['runs'])} run(s) -> {Path(args.out) / sweep.SWEEP_FILE}")
    elif args.action == "run":
        counts = sweep.run_sweep(args.sweep, executor=args.executor, num_parallel=args.num_parallel,
                                 threads_per_run=args.threads_per_run, cluster=args.cluster,
                                 slurm_partition=args.slurm_partition, timeout_min=args.timeout_min,
                                 gpus_per_node=args.gpus_per_node)
        print("runs: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    elif args.action == "run-one":
        print(sweep.execute_run(args.sweep, args.run_id))
    else:
        print(sweep.status_table(args.sweep))
    return 0


def _fit_command(args: argparse.Namespace) -> int:
    from simslm.scaling import sweep

    source = Path(args.source)
    if source.is_dir():
        fits = sweep.fit_sweep(source, convention=args.convention, num_resamples=args.num_resamples,
                               num_workers=args.num_workers)
        out = source / "fit.json"
    else:
        points = read_table(source, convention=args.convention)
        fits = {"convention": args.convention, "source": str(source),
                "variants": {source.stem: fit_all(points, num_resamples=args.num_resamples,
                                                          convention=args.convention, num_workers=args.num_workers)}}
        out = Path(args.out or source.with_suffix(".fit.json"))
        from simslm import jobs

        jobs.write_json(out, fits)
    for variant, fit in fits["variants"].items():
        law, approach3 = fit["approach3"]["law"], fit["approach3"]
        print(f"{variant}: L = {law['E']:.4g} + {law['A']:.4g}/N^{law['alpha']:.4g} + {law['B']:.4g}/D^{law['beta']:.4g}"
              f"  (alpha CI [{approach3['ci']['alpha'][0]:.3g}, {approach3['ci']['alpha'][1]:.3g}], "
              f"beta CI [{approach3['ci']['beta'][0]:.3g}, {approach3['ci']['beta'][1]:.3g}])")
        print(f"  N_opt ~ C^a: a = {approach3['a']:.3f} [{approach3['ci_a'][0]:.3f}, {approach3['ci_a'][1]:.3f}] "
              f"(approach 2: {fit['approach2']['a']:.3f}, approach 1: {fit['approach1']['a']:.3f})")
    print(f"-> {out}")
    return 0


def _plan_command(args: argparse.Namespace) -> int:
    from simslm import jobs, model

    if args.fit:
        fits = jobs.read_json(args.fit)["variants"]
        variant = args.variant or next(iter(fits))
        if variant not in fits:
            raise ValueError(f"{args.fit} has no variant '{variant}' ({', '.join(fits)})")
        fit, source = fits[variant], f"{args.fit} ({variant})"
    else:
        fit, source = {"approach3": {"law": TEXTLESS_REFERENCE, "samples": []}}, \
            "the textless law of Cuervo & Marxer (2024); pass --fit for your own"
    plan = plan_compute(args.flops, fit)
    interval = lambda key: (f" [{plan['ci_' + key][0]:.3g}, {plan['ci_' + key][1]:.3g}]"  # noqa: E731
                            if "ci_" + key in plan else "")
    print(f"budget C = {args.flops:.3g} FLOPs, law from {source}")
    print(f"N_opt = {plan['n_opt']:.4g} parameters{interval('n_opt')}")
    print(f"D_opt = {plan['d_opt']:.4g} tokens{interval('d_opt')}  ({plan['tokens_per_parameter']:.1f} tokens/parameter)")
    print(f"predicted loss {plan['loss']:.4f}")
    depth = model.family_depth_for(plan["n_opt"], args.vocab_size)
    parameters = model.family_parameters(depth, args.vocab_size)
    print(f"nearest family member (vocabulary {args.vocab_size}): depth {depth}, {parameters:,} parameters "
          f"-> train it for {args.flops / (6 * parameters):.4g} tokens")
    return 0


def _report_command(args: argparse.Namespace) -> int:
    from simslm.scaling import report

    print(f"report -> {report.write_report(args.sweep)}")
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    from simslm import demo

    summary = demo.run_demo(config_from_args(demo.DemoConfig, args))
    print(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full `simslm` argument parser."""
    from simslm.speech.align import AlignConfig
    from simslm.speech.synth import SynthConfig

    parser = argparse.ArgumentParser(prog="simslm", description=__doc__.splitlines()[0] + "\n\n"
                                     "Stages: assets -> synth -> align -> units -> sequences -> train -> bench/eval -> sweep/fit/plan/report.\nStart with `simslm demo`: the whole offline study in one command.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"simslm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    assets_parser = commands.add_parser("assets", help="list, verify or fetch named datasets and models")
    assets_parser.add_argument("action", choices=("list", "verify", "fetch"))
    assets_parser.add_argument("names", nargs="*", help="asset names (default: all)")
    assets_parser.set_defaults(handler=_assets_command)

    synth_parser = commands.add_parser("synth", help="text corpus -> 16 kHz speech + manifest with word timings")
    add_config_arguments(synth_parser, SynthConfig)
    synth_parser.set_defaults(handler=_synth_command)

    align_parser = commands.add_parser("align", help="add word timings to a manifest (import or pocketsphinx)")
    add_config_arguments(align_parser, AlignConfig)
    align_parser.set_defaults(handler=_align_command)

    from simslm.units import quality as unit_quality

    units_parser = commands.add_parser("units", help="audio -> discrete units: fit k-means, extract, measure",
                                       description=f"Encoders: {describe_encoders()}.")
    units_actions = units_parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, config_class, help_text in (
            ("fit", FitConfig, "fit a k-means codebook on encoder features of a corpus"),
            ("extract", ExtractConfig, "encode a manifest into deduplicated units with durations"),
            ("quality", unit_quality.QualityConfig, "PNMI and purities against pocketsphinx phone labels"),
            ("convert", ConvertConfig, "convert a published pickled k-means (needs --trust-pickle)")):
        action_parser = units_actions.add_parser(action, help=help_text)
        add_config_arguments(action_parser, config_class)
    units_parser.set_defaults(handler=_units_command)


    sequences_parser = commands.add_parser("sequences", help="token streams: interleave, mix, pack; inspect")
    sequence_actions = sequences_parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_config_arguments(sequence_actions.add_parser("build", help="build packed token shards"), BuildConfig)
    show_parser = sequence_actions.add_parser("show", help="print a sample (rebuilt with its words) or a chunk")
    show_parser.add_argument("folder")
    show_parser.add_argument("--sample", help="utterance id: rebuild its interleaved sample from (seed, id, epoch)")
    show_parser.add_argument("--chunk", type=int, default=0, help="packed chunk number (when no --sample)")
    show_parser.add_argument("--epoch", type=int, default=0)
    stats_parser = sequence_actions.add_parser("stats", help="tokens per modality and the speech share")
    stats_parser.add_argument("folder")
    sequences_parser.set_defaults(handler=_sequences_command)

    from simslm.train import TrainConfig

    train_parser = commands.add_parser(
        "train", help="train an SLM on a compute budget (resumes when run_dir exists)",
        description="Config from a JSON file plus key=value overrides, e.g. "
                    "simslm train --config run.json lr=1e-3 budget_flops=1e14. Keys: "
                    + ", ".join(f.name for f in dataclasses.fields(TrainConfig)) + ".")
    train_parser.add_argument("--config", help="JSON file with TrainConfig fields")
    train_parser.add_argument("overrides", nargs="*", metavar="key=value")
    train_parser.set_defaults(handler=_train_command)

    from simslm.textlm import TextLMConfig

    textlm_parser = commands.add_parser("textlm", help="pretrain a family of small text LMs (TWIST sources)")
    textlm_actions = textlm_parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_config_arguments(textlm_actions.add_parser("pretrain", help="train the family on a text corpus"), TextLMConfig)
    textlm_parser.set_defaults(handler=_textlm_command)

    from simslm.eval.benchbuild import BenchBuildConfig
    from simslm.eval.evaluate import EvalConfig

    bench_parser = commands.add_parser("bench", help="build offline re-creations of the spoken benchmarks")
    bench_actions = bench_parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_config_arguments(bench_actions.add_parser("build", help="synthesise an sBLIMP- or tSC-style benchmark"),
                         BenchBuildConfig)
    bench_parser.set_defaults(handler=_bench_command)

    eval_parser = commands.add_parser("eval", help="score a trained run on benchmarks; writes RUN/eval.json")
    add_config_arguments(eval_parser, EvalConfig, positional=("run",))
    eval_parser.set_defaults(handler=_eval_command)

    sweep_parser = commands.add_parser("sweep", help="isoFLOP sweeps: plan, run (resumable), status")
    sweep_actions = sweep_parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    plan_parser = sweep_actions.add_parser("plan", help="spec JSON -> sweep.json with content-hashed run ids")
    plan_parser.add_argument("spec", help="sweep spec (JSON: variants, depths, budgets_flops, family, ...)")
    plan_parser.add_argument("--out", required=True, help="sweep folder")
    run_parser = sweep_actions.add_parser("run", help="execute the runs not finished yet (resumes after a kill)")
    run_parser.add_argument("sweep")
    run_parser.add_argument("--executor", default="local", help="local or slurm (submitit)")
    run_parser.add_argument("--num-parallel", type=int, default=2, help="local: runs at once (default 2)")
    run_parser.add_argument("--threads-per-run", type=int, default=1, help="local: threads per run (default 1)")
    run_parser.add_argument("--cluster", default=None, help="slurm: submitit cluster (slurm, local, debug)")
    run_parser.add_argument("--slurm-partition", default="")
    run_parser.add_argument("--timeout-min", type=int, default=240)
    run_parser.add_argument("--gpus-per-node", type=int, default=0)
    one_parser = sweep_actions.add_parser("run-one", help="train and evaluate one run of a sweep (used by executors)")
    one_parser.add_argument("sweep")
    one_parser.add_argument("run_id")
    status_parser = sweep_actions.add_parser("status", help="progress, losses and accuracies per run")
    status_parser.add_argument("sweep")
    sweep_parser.set_defaults(handler=_sweep_command)

    fit_parser = commands.add_parser("fit", help="scaling-law fits (Chinchilla approaches 1-3, bootstrap CIs)")
    fit_parser.add_argument("source", help="sweep folder, or a CSV/JSONL table (parameters, tokens or flops, loss)")
    fit_parser.add_argument("--convention", default="all", choices=("all", "non_embedding"),
                            help="parameters counted in N (default: all, the paper's)")
    fit_parser.add_argument("--num-resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    fit_parser.add_argument("--num-workers", type=int, default=1)
    fit_parser.add_argument("--out", help="fit.json path for a table (default: beside it)")
    fit_parser.set_defaults(handler=_fit_command)

    planner = commands.add_parser("plan", help="compute-optimal model size and tokens for a FLOP budget")
    planner.add_argument("--flops", type=float, required=True, help="training budget C (FLOPs)")
    planner.add_argument("--fit", help="fit.json from `simslm fit` (default: the textless reference law)")
    planner.add_argument("--variant", help="which variant of the fit (default: the first)")
    planner.add_argument("--vocab-size", type=int, default=1015,
                         help="vocabulary of the size family, for the nearest member (default: tok512 + 500 units + 3)")
    planner.set_defaults(handler=_plan_command)

    report_parser = commands.add_parser("report", help="HTML report with plots and fitted laws for a sweep")
    report_parser.add_argument("sweep")
    report_parser.set_defaults(handler=_report_command)

    from simslm.demo import DemoConfig

    demo_parser = commands.add_parser("demo", help="the whole offline scaling study from nothing (~20 min on 2 cores)")
    add_config_arguments(demo_parser, DemoConfig)
    demo_parser.set_defaults(handler=_demo_command)

    manifest_parser = commands.add_parser("manifest", help="check corpus manifests")
    manifest_parser.add_argument("action", choices=("validate",))
    manifest_parser.add_argument("manifests", nargs="+", help="manifest JSONL files")
    manifest_parser.add_argument("--no-audio", action="store_true", help="skip reading the audio headers")
    manifest_parser.set_defaults(handler=_manifest_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `simslm` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    from simslm.assets import AssetError

    try:
        return handler(args)
    except (AssetError, ValueError, FileNotFoundError, PermissionError) as error:
        print(f"simslm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"simslm {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
