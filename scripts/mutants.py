"""Mutation check of the numbers simslm names after a source: change one line at a time, run the tests that
should notice, put the line back.

Each entry below is a small wrong change to a line that decides a number (a percentile, a Huber delta, a
normaliser, a tie rule); the suite must fail under every one of them. A change that passes ("SURVIVED") is a
number no test would defend. Run from the repository root with the dev environment installed:

    SIMSLM_MIRROR=../shared/data .venv/bin/python scripts/mutants.py            # all of them, about 20 minutes
    SIMSLM_MIRROR=../shared/data .venv/bin/python scripts/mutants.py 3 17       # entries 3 and 17

It edits files under src/ in place and restores each one, also when interrupted; it refuses a file with
uncommitted changes, so nothing of yours is overwritten. Exit status 1 when a change survived, or its tests
could not run (a -k that selects nothing counts so, not as killed). The results of
2026-12-08 are in docs/LOG.md (19 survived at first; each now has a test that fails under it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (file under src/simslm, exact text of the line's part, its wrong replacement, the tests that should fail)
MUTANTS = [
    ('eval/generation.py',
     'counts[gram] > 1 for gram',
     'counts[gram] > 2 for gram',
     'tests/eval/test_generation.py'),
    ('eval/generation.py',
     'starts[gram][0] <= p - n',
     'starts[gram][0] < p - n',
     'tests/eval/test_generation.py'),
    ('eval/generation.py',
     '0.5 * math.log',
     '0.6 * math.log',
     'tests/eval/test_generation.py'),
    ('eval/generation.py',
     'if precisions[0].numerator == 0',
     'if precisions[1].numerator == 0',
     'tests/eval/test_generation.py'),
    ('eval/generation.py',
     '"gen_ppl": float(np.exp(nlls.mean()))',
     '"gen_ppl": float(np.exp(scored.mean()))',
     'tests/eval/test_generation.py'),
    ('eval/generation.py',
     'cross_entropy(logits, torch.tensor(ids[1:]',
     'cross_entropy(logits[1:], torch.tensor(ids[2:]',
     'tests/eval/test_generation.py'),
    ('eval/scoring.py',
     'positive == negative, 0.5',
     'positive == negative, 0.0',
     'tests/eval/test_scoring.py'),
    ('eval/scoring.py',
     'sums / np.maximum(counts, 1)',
     'sums / np.maximum(counts + 1, 1)',
     'tests/eval/test_scoring.py tests/eval/test_evaluate.py'),
    ('eval/scoring.py',
     'logits[..., low:high]',
     'logits[..., low:high + 1]',
     'tests/eval/test_scoring.py tests/eval/test_evaluate.py'),
    ('eval/scoring.py',
     'low, high = np.quantile(draws, [tail, 1 - tail])',
     'low, high = np.quantile(draws, [tail / 2, 1 - tail / 2])',
     'tests/eval/test_scoring.py'),
    ('eval/scoring.py',
     'return np.array([outcomes[at].mean() for at in members])',
     'return np.array([outcomes[at].max() for at in members])',
     'tests/eval/test_scoring.py tests/eval/test_evaluate.py'),
    ('train/plan.py',
     'math.ceil(config.warmup_fraction',
     'math.floor(config.warmup_fraction',
     'tests/train/test_plan.py tests/train/test_loop.py'),
    ('train/plan.py',
     'config.lr * step / max(1, warmup_steps)',
     'config.lr * (step + 1) / max(1, warmup_steps)',
     'tests/train/test_plan.py tests/train/test_loop.py'),
    ('train/plan.py',
     'math.cos(math.pi * progress)',
     'math.cos(math.pi * progress * 0.99)',
     'tests/train/test_plan.py tests/train/test_loop.py'),
    ('train/plan.py',
     'max(1, round(budget_tokens / tokens_per_step))',
     'max(1, math.ceil(budget_tokens / tokens_per_step))',
     'tests/train/test_plan.py tests/train/test_loop.py'),
    ('sequences/interleave.py',
     'eligible[end] = False  #',
     'pass  #',
     'tests/sequences/test_interleave.py'),
    ('sequences/interleave.py',
     'math.ceil(speech_ratio * num_words)',
     'round(speech_ratio * num_words)',
     'tests/sequences/test_interleave.py'),
    ('sequences/interleave.py',
     'np.searchsorted(ends, start_sec, "left")',
     'np.searchsorted(ends, start_sec, "right")',
     'tests/sequences/test_interleave.py'),
    ('model.py',
     'attention = 6.0 * config.num_hidden_layers',
     'attention = 2.0 * config.num_hidden_layers',
     'tests/test_model.py tests/train/test_plan.py'),
    ('scaling/fit.py',
     'HUBER_DELTA = 1e-3',
     'HUBER_DELTA = 1e-2',
     'tests/scaling/test_fit.py'),
    ('scaling/fit.py',
     'return -p1 / (2 * p2) if p2 > 0 else None',
     'return -p1 / (3 * p2) if p2 > 0 else None',
     'tests/scaling/test_fit.py'),
    ('scaling/fit.py',
     'a, b = self.beta / (self.alpha + self.beta), self.alpha / (self.alpha + self.beta)',
     'b, a = self.beta / (self.alpha + self.beta), self.alpha / (self.alpha + self.beta)',
     'tests/scaling/test_fit.py tests/scaling/test_plan.py'),
    ('scaling/fit.py',
     'return g * (flops / 6) ** a, (flops / 6) ** b / g',
     'return g * (flops / 2) ** a, (flops / 2) ** b / g',
     'tests/scaling/test_fit.py tests/scaling/test_plan.py'),
    ('scaling/fit.py',
     'rng.choice(np.flatnonzero(budgets == b), np.sum(budgets == b))',
     'np.flatnonzero(budgets == b)',
     'tests/scaling/test_fit.py'),
    ('scaling/fit.py',
     'return [float(v) for v in np.quantile(finite, [tail, 1 - tail])]',
     'return [float(v) for v in np.quantile(finite, [tail * 2, 1 - tail * 2])]',
     'tests/scaling/test_fit.py'),
    ('scaling/fit.py',
     'APPROACH1_NUM_FLOPS = 1500',
     'APPROACH1_NUM_FLOPS = 150',
     'tests/scaling/test_fit.py'),
    ('scaling/fit.py',
     'CURVE_SMOOTHING = 0.05',
     'CURVE_SMOOTHING = 0.5',
     'tests/scaling/test_fit.py'),
    ('units/quality.py',
     'mutual_information / phone_entropy',
     'mutual_information / (phone_entropy + 0.01)',
     'tests/units/test_quality.py'),
    ('train/loss.py',
     'return (positions[:, 1:] != 0) & (tokens[:, 1:] != pad_id)',
     'return (tokens[:, 1:] != pad_id)',
     'tests/train/test_loop.py -k slamkits_hf_trainer'),
    ('train/loop.py',
     'scale, stopping = 1.0 / max(num_scored, 1.0), stop.noted',
     'scale, stopping = 2.0 / max(num_scored, 1.0), stop.noted',
     'tests/train/test_loop.py -k slamkits_hf_trainer'),
    ('train/loop.py',
     'clip_grad_norm_(model.parameters(), config.grad_clip)',
     'clip_grad_norm_(model.parameters(), config.grad_clip * 2)',
     'tests/train/test_loop.py tests/test_batching.py'),
    ('model.py',
     'model.resize_token_embeddings(new_size, mean_resizing=True)',
     'model.resize_token_embeddings(new_size, mean_resizing=False)',
     'tests/test_model.py'),
    ('model.py',
     'non_embedding=total - embedding.numel() - head_count',
     'non_embedding=total - embedding.numel()',
     'tests/test_model.py tests/train/test_plan.py'),
    ('model.py',
     'matrix[old_size:] = mean + std * noise',
     'matrix[old_size:] = mean + 0.5 * std * noise',
     'tests/test_model.py'),
    ('sequences/build.py',
     'if cursor[name] == len(samples[name]):',
     'if cursor[name] == len(samples[name]) - 1:',
     'tests/sequences/test_build.py'),
    ('sequences/build.py',
     'shares[name] / (np.mean([len(s.tokens) for s in samples[name]])',
     'shares[name] / (np.median([len(s.tokens) for s in samples[name]])',
     'tests/sequences/test_build.py'),
    ('sequences/loader.py',
     'self.batch_in_epoch = -(-items_read // (self.world_size * self.batch_size))',
     'self.batch_in_epoch = items_read // (self.world_size * self.batch_size)',
     'tests/sequences/test_loader.py'),
    ('sequences/loader.py',
     'start = (self.batch_in_epoch * self.world_size + self.rank) * self.batch_size',
     'start = (self.rank * self.world_size + self.batch_in_epoch) * self.batch_size',
     'tests/sequences/test_loader.py tests/test_batching.py'),
    ('sequences/interleave.py',
     'return rng.random(num_words) < speech_ratio',
     'return rng.random(num_words) > speech_ratio',
     'tests/sequences/test_interleave.py'),
    ('sequences/interleave.py',
     'mask[start:start + span_length] = True',
     'mask[start:start + span_length - 1] = True',
     'tests/sequences/test_interleave.py'),
    ('units/quality.py',
     'phone_entropy = float((-p_phone * np.log(p_phone + 1e-8)).sum())',
     'phone_entropy = float((-p_phone * np.log2(p_phone + 1e-8)).sum())',
     'tests/units/test_quality.py'),
    ('scaling/collect.py',
     'tokens = every[0][index, 1].sum(axis=1)',
     'tokens = every[0][:, 1].sum() * np.ones(num_resamples)',
     'tests/scaling/test_collect.py tests/scaling/test_report.py'),
    ('scaling/collect.py',
     'shares = [np.var(side, ddof=1) / len(side) for side in per_run]',
     'shares = [np.var(side, ddof=0) / len(side) for side in per_run]',
     'tests/scaling/test_collect.py'),
    ('scaling/collect.py',
     'half = stats.t.ppf(0.5 + confidence / 2, freedom)',
     'half = stats.norm.ppf(0.5 + confidence / 2)',
     'tests/scaling/test_collect.py'),
    ('scaling/collect.py',
     '* math.sqrt(sum(shares) + np.var(draws, ddof=1))',
     '* math.sqrt(sum(shares))',
     'tests/scaling/test_collect.py'),
    ('scaling/plan.py',
     'return abs(math.log(n_opt / end)) > abs(math.log(end / inner)) / 2',
     'return abs(math.log(n_opt / end)) > abs(math.log(end / inner))',
     'tests/scaling/test_plan.py'),
    ('units/folder.py',
     'durations = np.diff(np.append(starts, len(frame_units))).astype(np.int32)',
     'durations = np.diff(np.append(starts, len(frame_units) + 1)).astype(np.int32)',
     'tests/units'),
    ('eval/layouts.py',
     'subsets=(("in-vocab", lambda group: group not in ("oov", NO_BAND)),), zerospeech=True),',
     'subsets=(("in-vocab", lambda group: group not in ("oov",)),), zerospeech=True),',
     'tests/eval/test_layouts.py tests/eval/test_evaluate.py'),
    ('eval/layouts.py',
     'lambda folder, mode: load_slm21_lexical(folder), aggregation="items", groups_are_folders=False,',
     'lambda folder, mode: load_slm21_lexical(folder), aggregation="pairs", groups_are_folders=False,',
     'tests/eval/test_layouts.py tests/eval/test_evaluate.py'),
    ('eval/layouts.py',
     'lambda folder, mode: load_salmon(folder), aggregation="macro", groups_are_folders=False,',
     'lambda folder, mode: load_salmon(folder), aggregation="pairs", groups_are_folders=False,',
     'tests/eval/test_layouts.py tests/eval/test_evaluate.py'),
    ('eval/generation.py',
     'logits = logits.masked_fill(logits < threshold, float("-inf"))',
     'logits = logits.masked_fill(logits <= threshold, float("-inf"))',
     'tests/eval/test_generation.py tests/eval/test_generate.py'),
    ('eval/generation.py',
     'logits = logits / temperature',
     'logits = logits * temperature',
     'tests/eval/test_generation.py tests/eval/test_generate.py'),
    ('units/kmeans.py',
     'np.argmin(squared_norms - 2.0 * block @ centroids.T, axis=1)',
     'np.argmin(squared_norms - 1.0 * block @ centroids.T, axis=1)',
     'tests/units'),
    ('units/encoders.py',
     'SLAMKIT_EDGE_PAD = 40',
     'SLAMKIT_EDGE_PAD = 39',
     'tests/units/test_encoders.py'),
    ('speech/audio.py',
     'window = np.cos(u * f32(np.pi) / f32(SINC_ZERO_CROSSINGS) / f32(2)) ** 2',
     'window = np.cos(u * f32(np.pi) / f32(SINC_ZERO_CROSSINGS) / f32(2))',
     'tests/speech/test_audio.py'),
    ('speech/audio.py',
     'return np.ascontiguousarray(out[:int(np.ceil(f32(down * len(samples) / up)))])',
     'return np.ascontiguousarray(out[:int(np.ceil(down * len(samples) / up))])',
     'tests/speech/test_audio.py'),
    ('speech/audio.py',
     'mono = samples.mean(axis=1)',
     'mono = samples[:, 0]',
     'tests/speech/test_audio.py'),
    ('speech/segment.py',
     'if speech_sec > 0 and speech_sec + (offset - onset) > max_sec:',
     'if speech_sec > 0 and speech_sec + (offset - onset) >= max_sec:',
     'tests/speech/test_segment.py'),
    ('speech/segment.py',
     'before = before / 2 if first else before',
     'before = before if first else before',
     'tests/speech/test_segment.py'),
    ('speech/segment.py',
     'last = max(candidates, key=lambda k: (round(stretches[k + 1][0] - stretches[k][1], 6), k))',
     'last = max(candidates, key=lambda k: (round(stretches[k + 1][0] - stretches[k][1], 6), -k))',
     'tests/speech/test_segment.py'),
    ('speech/segment.py',
     'while last + 1 < len(stretches) and stretches[last + 1][1] - start + 2 * margin_sec <= max_sec:',
     'while last + 1 < len(stretches) and stretches[last + 1][1] - start + margin_sec <= max_sec:',
     'tests/speech/test_segment.py'),
    ('eval/benchbuild.py',
     'order = np.random.default_rng([seed, number]).permutation(len(rows))[:per_phenomenon]',
     'order = np.arange(len(rows))[:per_phenomenon]',
     'tests/eval/test_benchbuild.py'),
    ('eval/scoring.py',
     'head = 2 if vocabulary.bos_id is not None else 1  # BOS and the first marker stay',
     'head = 1 if vocabulary.bos_id is not None else 1  # BOS and the first marker stay',
     'tests/eval/test_scoring.py'),
    ('eval/scoring.py',
     'tokens = np.asarray(ids if max_length is None else ids[-max_length:])',
     'tokens = np.asarray(ids if max_length is None else ids[:max_length])',
     'tests/eval/test_scoring.py tests/eval/test_evaluate.py'),
    ('eval/scoring.py',
     'if previous == "speech" and ids and tokens and ids[0] == tokens[-1]:',
     'if False:',
     'tests/eval/test_scoring.py tests/eval/test_evaluate.py'),
    ('eval/scoring.py',
     'out.append(TEXT_MARKER + "".join(part.text for part in run))',
     'out.append(TEXT_MARKER + " ".join(part.text for part in run))',
     'tests/eval/test_scoring.py tests/eval/test_evaluate.py'),
    ('eval/scoring.py',
     'if len(parts) == 1 and parts[0].modality == "speech":',
     'if False:',
     'tests/eval/test_scoring.py tests/eval/test_evaluate.py'),
    ('eval/scoring.py',
     'ending = tokens[owners == last]',
     'ending = tokens[owners >= last - 1]',
     'tests/eval/test_scoring.py'),
    ('train/checkpoint.py',
     '        if _sha256(folder / name) != digest:\n',
     '        if False:\n',
     'tests/train/test_checkpoint.py'),
    ('train/checkpoint.py',
     '        if name in unread:\n            continue\n',
     "        if name in unread or name.endswith('.pt'):\n            continue\n",
     'tests/train/test_checkpoint.py -k corrupt_checkpoint_is'),
    ('assets.py',
     '        if digest == asset_file.sha256:\n',
     '        if True:\n',
     'tests/test_assets.py'),
    ('train/plan.py',
     'MAX_DATA_PASSES = 4',
     'MAX_DATA_PASSES = 40',
     'tests/train/test_plan.py -k passes_over'),
    ('units/quality.py',
     '"phone_purity": float(joint.max(axis=0).sum()),',
     '"phone_purity": float(joint.max(axis=1).sum()),',
     'tests/units/test_quality.py'),
    ('train/plan.py',
     'data_passes=(round(total_steps * config.grad_accumulation / batches_per_epoch, 3)',
     'data_passes=(round(total_steps / batches_per_epoch, 3)',
     'tests/train/test_plan.py -k passes_over'),
]


def _uncommitted(path: Path) -> bool:
    status = subprocess.run(["git", "status", "--porcelain", "--", str(path)], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    return bool(status.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entries", nargs="*", type=int, help="numbers of the entries to run (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers per run")
    args = parser.parse_args()
    chosen = args.entries or list(range(len(MUTANTS)))
    survived = []
    for number in chosen:
        file, original, mutant, tests = MUTANTS[number]
        path = ROOT / "src" / "simslm" / file
        text = path.read_text()
        if text.count(original) != 1:
            print(f"{number}: {file}: the line is not there once; the entry needs updating", flush=True)
            survived.append(number)
            continue
        if _uncommitted(path):
            sys.exit(f"mutants: {file} has uncommitted changes; commit or stash them first")
        started = time.perf_counter()
        try:
            path.write_text(text.replace(original, mutant))
            result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                     "-n", str(args.workers), *tests.split()], cwd=ROOT, capture_output=True,
                                    text=True)
        finally:
            path.write_text(text)
        # Killed: a test failed or errored (under -x, pytest exits 2, "interrupted", after the first). An exit with
        # no test failing (5: a -k that selects nothing; 4: a usage error) says nothing about the change.
        failed = next((line for line in result.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))), "")
        killed = result.returncode != 0 and bool(failed)
        verdict = "killed" if killed else "SURVIVED" if result.returncode == 0 else \
            f"ERROR (pytest exit {result.returncode}, no test failed)"
        print(f"{number}: {verdict} in {time.perf_counter() - started:.0f} s: {file}: {original!r} -> {mutant!r}"
              f"{'  [' + failed[:120] + ']' if failed else ''}", flush=True)
        if not killed:
            survived.append(number)
    print(f"{len(chosen) - len(survived)} of {len(chosen)} killed" + (f"; survived: {survived}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
