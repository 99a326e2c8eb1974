"""Pairwise likelihood scoring: token log-likelihoods, pair outcomes, accuracy with a bootstrap CI.

A pair is right when the positive side's score beats the negative's, 0.5 on a tie
(design brief). The score is the mean token log-likelihood of the scored tokens (slamkit's
default) or their sum, optionally with speech tokens normalised over the unit vocabulary
alone. Accuracy comes with a bootstrap 95% CI, the number of pairs and the aggregation:
the mean over pairs (slamkit's), the mean over items (ZeroSpeech 2021's sBLIMP and sWUGGY
score: the pairs of one item, its voices, averaged first), or the macro mean over groups
(phenomena, frequency bands: the mean of ZeroSpeech's by-type table).
"""

from __future__ import annotations

import collections
import inspect
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, NamedTuple

import numpy as np

from simslm import jobs, machine
from simslm.config import Config, check_positive
from simslm.eval.layouts import Pair, Part
from simslm.sequences.vocabulary import SPEECH_MARKER, TEXT_MARKER, Vocabulary

SPECIAL_PART = -1  # BOS and modality markers: never scored


def reference_string(parts: tuple[Part, ...], vocabulary: Vocabulary,
                     units_of: Callable[[str | tuple[str, ...]], np.ndarray]) -> str:
    """One side of a pair written out as slamkit's evaluation writes it.

    A speech-only item (sBLIMP, sSC, tSC) is its units alone, with no marker (the speech
    tokeniser's `stringify_representation`). A cross-modal item has a marker at the start
    and at each change of modality (`_stringify_interleaved`); consecutive speech parts are
    one recording, encoded as one (S mode joins context and ending audio); consecutive text
    parts are joined as they are, with no separator (the T mode's context and ending).
    """
    if len(parts) == 1 and parts[0].modality == "speech":
        return vocabulary.unit_string(units_of(parts[0].audio))
    out, index = [], 0
    while index < len(parts):
        modality = parts[index].modality
        run = []
        while index < len(parts) and parts[index].modality == modality:
            run.append(parts[index])
            index += 1
        if modality == "speech":
            key = run[0].audio if len(run) == 1 else tuple(part.audio for part in run)
            out.append(SPEECH_MARKER + vocabulary.unit_string(units_of(key)))
        else:
            out.append(TEXT_MARKER + "".join(part.text for part in run))
    return "".join(out)


def encode_parts(parts: tuple[Part, ...], vocabulary: Vocabulary,
                 units_of: Callable[[str], np.ndarray], max_length: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of one side of a pair and, per token, the index of its part (SPECIAL_PART for markers).

    A marker opens each change of modality, as in training. Consecutive speech parts are
    one recording cut in two, so a unit repeated across the cut is merged (deduplication).
    When the side is longer than `max_length` (the model's context), the oldest context tokens are dropped.
    """
    tokens: list[int] = [] if vocabulary.bos_id is None else [vocabulary.bos_id]
    owners: list[int] = [SPECIAL_PART] * len(tokens)
    previous = None
    for index, part in enumerate(parts):
        if part.modality == "speech":
            ids = (np.asarray(units_of(part.audio)) + vocabulary.unit_offset).tolist()
            if previous == "speech" and ids and tokens and ids[0] == tokens[-1]:
                ids = ids[1:]
        else:
            ids = vocabulary.tokenizer(part.text, add_special_tokens=False)["input_ids"]
        if part.modality != previous:
            tokens.append(vocabulary.speech_id if part.modality == "speech" else vocabulary.text_id)
            owners.append(SPECIAL_PART)
        tokens.extend(ids)
        owners.extend([index] * len(ids))
        previous = part.modality
    return _keep_recent(np.asarray(tokens), np.asarray(owners), max_length, vocabulary)


def _keep_recent(tokens: np.ndarray, owners: np.ndarray, max_length: int | None,
                 vocabulary: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """An `encode_parts` side cut to `max_length` tokens: BOS and the first marker, then the most recent."""
    excess = len(tokens) - max_length if max_length is not None else 0
    if excess > 0:
        head = 2 if vocabulary.bos_id is not None else 1  # BOS and the first marker stay
        keep = np.r_[0:head, head + excess:len(tokens)]
        return tokens[keep], owners[keep]
    return tokens, owners


def _token_log_likelihoods(logits, targets, speech_vocab: bool, units: tuple[int, int]):
    """log p(target) at every position of `logits` (..., vocab), normalised over the whole vocabulary or, for
    unit targets with `speech_vocab`, over the unit tokens only."""
    import torch

    logits = logits.float()
    normaliser = torch.logsumexp(logits, dim=-1)
    if speech_vocab:
        low, high = units
        is_unit = (targets >= low) & (targets < high)
        normaliser = torch.where(is_unit, torch.logsumexp(logits[..., low:high], dim=-1), normaliser)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normaliser


def _padded(rows: list[np.ndarray], pad_id: int):
    """Rows of token ids right-padded to the longest, as one long tensor."""
    import torch

    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, :len(row)] = torch.from_numpy(np.asarray(row, dtype=np.int64))
    return ids


# A pair's two sides share their first tokens (a tSC context, a cross-modal context) when at least this many
# are the same: below it, the second pass (the sides after a kept cache, under a mask) costs more than the tokens
# it saves. Sharing from 8, the demo's sBLIMP pairs (57 tokens on average, its depth-4 model) scored at 0.82x the
# 0ed204d scorer, against 1.12x at 64, where they run alone; tSC-shaped pairs (a shared 80% of 120-256 tokens)
# keep their 2.1x (docs/BENCHMARKS.md, "Scoring on the demo's own benchmarks, with a committed harness").
MIN_SHARED_TOKENS = 64


def _shared_length(first: np.ndarray, second: np.ndarray) -> int:
    """How many leading tokens two sequences share, when each goes on past them (else 0)."""
    limit = min(len(first), len(second))
    differ = np.flatnonzero(first[:limit] != second[:limit])
    shared = int(differ[0]) if len(differ) else limit
    return shared if MIN_SHARED_TOKENS <= shared < limit else 0


def sequence_log_likelihoods(model, sequences: list[np.ndarray], scored: list[np.ndarray], *,
                             vocabulary: Vocabulary, speech_vocab: bool = False, batch_size: int = 16,
                             device: str = "cpu", pairs: list[tuple[int, int]] = (),
                             concurrent_batches: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence: the summed log-likelihood of its scored targets, and how many there are.

    `scored[i][t]` says whether token t + 1 of sequence i (predicted from tokens 0..t) counts.
    Sequences are sorted by length and padded on the right, so a batch wastes little; causal
    attention never lets a real token see the padding after it, so no attention mask is needed
    and the results do not depend on the batch. With `speech_vocab`, a unit target is normalised
    over the unit tokens only.

    `pairs` names sequences that are two sides of one item. When they begin with the same
    tokens (a shared context), that prefix runs once, its keys and values are kept, and only
    each side's own tokens run after it: the same numbers, for the prefix's cost once.

    `concurrent_batches` > 1 on the CPU scores that many batches at once (at most one per torch thread), each on
    its share of torch's threads (`_run_concurrently`).
    """
    import torch

    machine.keep_freed_memory()  # each batch's logits would otherwise be page-faulted in anew
    sums, counts = np.zeros(len(sequences)), np.zeros(len(sequences))
    units = (vocabulary.unit_offset, vocabulary.unit_offset + vocabulary.num_units)
    shared = [(i, j, length) for i, j in pairs if (length := _shared_length(sequences[i], sequences[j]))]
    alone = sorted(set(range(len(sequences))) - {k for i, j, _ in shared for k in (i, j)},
                   key=lambda k: -len(sequences[k]))
    model.eval()
    batches = [("alone", alone[start:start + batch_size]) for start in range(0, len(alone), batch_size)]
    shared.sort(key=lambda item: -item[2])
    # Half as many pairs as sequences per batch: the second pass holds both sides of each.
    step = max(1, batch_size // 2)
    batches += [("shared", shared[start:start + step]) for start in range(0, len(shared), step)]

    def score_part(kind, chosen) -> None:
        # Each batch writes the entries of its own sequences only, so batches may run at once.
        with torch.no_grad():
            if kind == "shared":
                _score_shared(model, chosen, sequences, scored, vocabulary, speech_vocab, units, device, sums, counts)
                return
            ids = _padded([sequences[k] for k in chosen], vocabulary.pad_id).to(device)
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
            per_token = _token_log_likelihoods(logits, ids[:, 1:], speech_vocab, units).cpu().double().numpy()
        for row, k in enumerate(chosen):
            mask = np.asarray(scored[k], dtype=bool)
            sums[k], counts[k] = per_token[row, :len(mask)][mask].sum(), mask.sum()

    # A batch that runs out of memory (a large vocabulary's logits, long tSC sides, a smaller GPU than the default
    # batch was sized for) is scored again in halves, and every later batch at most at the size that last failed,
    # halved: the numbers do not depend on the batch (above), and an evaluation is not lost for its --batch-size.
    largest = {"alone": batch_size, "shared": step}

    def score(batch) -> None:
        kind, chosen = batch
        size = largest[kind]
        pending = [chosen[start:start + size] for start in range(0, len(chosen), size)][::-1]
        while pending:
            part = pending.pop()
            try:
                score_part(kind, part)
                continue
            except (RuntimeError, MemoryError) as error:
                if len(part) == 1 or not machine.out_of_memory(error):
                    raise
            machine.release_device_memory(device)
            if len(part) <= largest[kind]:
                largest[kind] = len(part) // 2
                what = "pairs sharing a context" if kind == "shared" else "sequences"
                print(f"simslm: warning: out of memory scoring {len(part)} {what} at once on {device}; going on with "
                      f"{largest[kind]} (a smaller --batch-size avoids the retries)", file=sys.stderr, flush=True)
            pending += [part[len(part) // 2:], part[:len(part) // 2]]

    # Never more batches at once than torch has threads: a sweep's runs, one thread each, score one at a time.
    workers = min(concurrent_batches, torch.get_num_threads()) if torch.device(device).type == "cpu" else 1
    for _ in jobs.progress(_run_concurrently(score, batches, workers), "scoring", total=len(batches), unit="batch"):
        pass
    return sums, counts


def _run_concurrently(function: Callable[[Any], None], tasks: list[Any], workers: int) -> Iterator[None]:
    """`function(task)` for every task, `workers` at a time in threads that split torch's intra-op threads
    between them (one each on 2 cores); yields as each finishes, in order.

    A model of stories260K's size (width 64, heads of 8 dims) keeps two cores busy far better as two
    one-thread forward passes than as one two-thread pass: its matrices are too small to split well
    (docs/BENCHMARKS.md, "Pairwise scoring: two batches at once"). torch releases the GIL inside
    its kernels, so threads suffice, with the model shared rather than copied into processes.
    """
    import torch

    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield function(task)
        return
    threads = torch.get_num_threads()
    # A new thread takes torch's thread count when it first runs an op: set it before the pool starts.
    torch.set_num_threads(max(1, threads // workers))
    pool = ThreadPoolExecutor(min(workers, len(tasks)), thread_name_prefix="scoring")
    try:
        yield from pool.map(function, tasks)
    finally:
        # On an error or an interrupt, batches not yet started are dropped rather than run.
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def _score_shared(model, chosen, sequences, scored, vocabulary, speech_vocab, units, device, sums, counts) -> None:
    """Both sides of each pair in `chosen` (i, j, shared length): the shared prefix once, then the sides."""
    import torch

    # Pass 1: the prefixes (right-padded; causal attention keeps each row's real tokens to themselves), keeping
    # their keys and values. Its logits predict every target up to the first that differs.
    prefixes = [sequences[i][:length] for i, _, length in chosen]
    ids = _padded(prefixes, vocabulary.pad_id).to(device)
    out = model(input_ids=ids, use_cache=True)
    # transformers 5.24 renamed past_key_values to cache (the old name warns); earlier versions know only the old.
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache, prefix_logits = out.cache if hasattr(out, "cache") else out.past_key_values, out.logits
    # Pass 2: each side's own tokens after its prefix, both sides of a pair beside each other. The cache holds
    # each prefix padded to the longest, so the mask shows each row its own prefix (and not the padding after
    # it) and the positions go on from where that prefix ends.
    cache.batch_repeat_interleave(2)
    sides = [sequences[k][length:] for i, j, length in chosen for k in (i, j)]
    lengths = [length for _, _, length in chosen for _ in (0, 1)]
    tail = _padded(sides, vocabulary.pad_id).to(device)
    mask = torch.zeros((len(sides), ids.shape[1] + tail.shape[1]), dtype=torch.long)
    for row, (length, side) in enumerate(zip(lengths, sides)):
        mask[row, :length] = 1
        mask[row, ids.shape[1]:ids.shape[1] + len(side)] = 1
    positions = torch.tensor(lengths)[:, None] + torch.arange(tail.shape[1])[None]
    tail_logits = model(input_ids=tail, attention_mask=mask.to(device), position_ids=positions.to(device),
                        use_cache=True, **{cache_name: cache}).logits
    # Targets 1..length-1 are the same tokens on both sides: scored once. Target `length`, the first that differs,
    # is predicted from the last shared position; the rest come from pass 2.
    inside = _token_log_likelihoods(prefix_logits[:, :-1], ids[:, 1:], speech_vocab, units).cpu().double().numpy()
    last = torch.tensor([length - 1 for _, _, length in chosen], device=prefix_logits.device)
    first_own = torch.tensor([sequences[k][length] for i, j, length in chosen for k in (i, j)],
                             device=prefix_logits.device)
    boundary = _token_log_likelihoods(prefix_logits[torch.arange(len(chosen)), last].repeat_interleave(2, dim=0),
                                      first_own, speech_vocab, units).cpu().double().numpy()
    own = _token_log_likelihoods(tail_logits[:, :-1], tail[:, 1:], speech_vocab, units).cpu().double().numpy()
    for row, (i, j, length) in enumerate(chosen):
        for side, k in enumerate((i, j)):
            mask = np.asarray(scored[k], dtype=bool)
            rest = mask[length:]
            sums[k] = (inside[row, :length - 1][mask[:length - 1]].sum() + boundary[2 * row + side] * mask[length - 1]
                       + own[2 * row + side, :len(rest)][rest].sum())
            counts[k] = mask.sum()


def side_scores(sums: np.ndarray, counts: np.ndarray, reduction: str) -> np.ndarray:
    """Mean (slamkit's default) or sum of the scored token log-likelihoods."""
    if reduction == "sum":
        return sums
    if reduction == "mean":
        return sums / np.maximum(counts, 1)
    raise ValueError(f"reduction must be mean or sum, not '{reduction}'")


def pair_outcomes(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """1 when the positive scores higher, 0.5 on a tie, 0 otherwise."""
    return np.where(positive > negative, 1.0, np.where(positive == negative, 0.5, 0.0))


Aggregation = Literal["pairs", "items", "macro"]


def item_outcomes(outcomes: np.ndarray, groups: list[str], items: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each item's outcome, the mean over its pairs (one per voice), and its group; items in order of first
    appearance. ZeroSpeech 2021 scores sBLIMP and sWUGGY so (`evaluate_by_pair` of its syntactic and lexical
    tasks: the pairs grouped by item id, their scores averaged, then the mean over items), which weighs an item
    spoken in fewer voices as much as one spoken in all."""
    order: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        order.setdefault(item, []).append(index)
    outcomes = np.asarray(outcomes, dtype=float)
    members = list(order.values())
    mixed = next((item for item, at in order.items() if len({groups[i] for i in at}) > 1), None)
    if mixed is not None:
        raise ValueError(f"item {mixed} has pairs in more than one group")
    return np.array([outcomes[at].mean() for at in members]), [groups[at[0]] for at in members]


@dataclass(frozen=True, kw_only=True)
class Accuracy:
    """An accuracy with its percentile-bootstrap interval and what it was computed over."""

    accuracy: float
    ci_low: float
    ci_high: float
    confidence: float
    num_pairs: int
    num_groups: int
    aggregation: Aggregation
    """pairs: the mean over pairs; items: the mean over items, each the mean of its pairs; macro: the mean of the
    per-group accuracies (over items, where a pair knows its item)."""
    num_resamples: int
    per_group: dict[str, dict[str, float]]
    """Accuracy and number of pairs (and of items, where pairs were averaged into items) of each group (phenomenon,
    speaker, frequency band)."""
    outcomes: list[float] | None = None
    """Each pair's outcome (1 right, 0 wrong, 0.5 tie), or each item's mean outcome where pairs were averaged into
    items, grouped by sorted group name (`per_group` gives the sizes) and in benchmark order within a group: two
    models' outcomes on one benchmark pair up item by item, for an interval on the difference of their accuracies
    (`difference_with_ci`)."""
    num_items: int | None = None
    """Items the pairs were averaged into (None: every pair counted alone)."""

    def groups(self) -> list[str]:
        """The group of each entry of `outcomes`."""
        sizes = {name: int(entry.get("num_items", entry["num_pairs"])) for name, entry in self.per_group.items()}
        return [name for name in sorted(sizes) for _ in range(sizes[name])]


def difference_with_ci(first: Accuracy, second: Accuracy, *, num_resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float, float] | None:
    """`first` minus `second` accuracy on the same benchmark, with a paired percentile-bootstrap interval
    (pairs resampled together; within groups for a macro accuracy, as `accuracy_with_ci` does). Both
    aggregations are means, so the difference is the accuracy of the outcome differences. None when either
    result has no stored outcomes or they are not of the same items."""
    if first.outcomes is None or second.outcomes is None or first.per_group.keys() != second.per_group.keys() \
            or first.aggregation != second.aggregation or first.groups() != second.groups():
        return None
    difference = accuracy_with_ci(np.subtract(first.outcomes, second.outcomes), first.groups(),
                                  aggregation=first.aggregation, num_resamples=num_resamples,
                                  confidence=confidence, seed=seed)
    return difference.accuracy, difference.ci_low, difference.ci_high


def accuracy_draws(outcomes: np.ndarray, groups: list[str], *, aggregation: str = "pairs",
                   num_resamples: int = 1000, seed: int = 0) -> tuple[float, np.ndarray]:
    """The accuracy of `outcomes` and its percentile-bootstrap draws: outcomes resampled freely (`pairs`, and
    `items` once pairs are averaged into items), or within each group with the per-group accuracies averaged
    (`macro`)."""
    outcomes = np.asarray(outcomes, dtype=float)
    names = sorted(set(groups))
    members = {name: np.flatnonzero(np.asarray(groups) == name) for name in names}
    rng = np.random.default_rng(seed)
    if aggregation in ("pairs", "items"):
        return float(outcomes.mean()), outcomes[rng.integers(0, len(outcomes),
                                                             (num_resamples, len(outcomes)))].mean(axis=1)
    if aggregation == "macro":
        return (float(np.mean([outcomes[members[name]].mean() for name in names])),
                np.mean([outcomes[members[name]][rng.integers(0, len(members[name]),
                                                              (num_resamples, len(members[name])))].mean(axis=1)
                         for name in names], axis=0))
    raise ValueError(f"aggregation must be pairs, items or macro, not '{aggregation}'")


def accuracy_with_ci(outcomes: np.ndarray, groups: list[str] | None = None, *, items: list[str] | None = None,
                     aggregation: str = "pairs", num_resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> Accuracy:
    """Accuracy, percentile-bootstrap CI and counts; `macro` averages the per-group accuracies.

    With `items` (each pair's item: the pairs of one item are its voices), `items` and `macro` first average
    each item's pairs (`item_outcomes`), and the bootstrap resamples items: an item's voices share its words, so
    they are not independent draws. The macro bootstrap resamples within each group (stratified), so every group
    keeps its size, as the per-phenomenon design of sBLIMP has it.
    """
    outcomes = np.asarray(outcomes, dtype=float)
    groups = list(groups) if groups is not None else ["all"] * len(outcomes)
    pairs_in = collections.Counter(groups)
    averaged = items is not None and aggregation != "pairs"
    if averaged:
        outcomes, groups = item_outcomes(outcomes, groups, list(items))
    names = sorted(set(groups))
    members = {name: np.flatnonzero(np.asarray(groups) == name) for name in names}
    accuracy, draws = accuracy_draws(outcomes, groups, aggregation=aggregation, num_resamples=num_resamples,
                                     seed=seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Accuracy(accuracy=accuracy, ci_low=float(low), ci_high=float(high), confidence=confidence,
                    num_pairs=sum(pairs_in.values()), num_groups=len(names), aggregation=aggregation,
                    num_resamples=num_resamples,
                    per_group={name: {"accuracy": float(outcomes[members[name]].mean()), "num_pairs": pairs_in[name],
                                      **({"num_items": int(len(members[name]))} if averaged else {})}
                               for name in names},
                    outcomes=[float(value) for name in names for value in outcomes[members[name]]],
                    num_items=len(outcomes) if averaged else None)


@dataclass(frozen=True, kw_only=True)
class ScoringOptions(Config):
    """How pairs are scored (recorded beside every accuracy)."""

    # reference: slamkit's `log_likelihood` over the sequence `reference_string` writes, every
    # token after the first scored. ending: simslm's first score, the ending given its context
    # (BOS and a marker before every part, as in training). pmi: the ending given its context
    # minus the ending alone, the domain-conditional PMI of Holtzman et al. (2021), "Surface Form
    # Competition": a tSC ending's own likelihood varies far more between two sentences than a
    # small model's context moves it (docs/LOG.md, 2026-11-29: 0.75 vs 0.05 nats per token).
    preset: Literal["reference", "ending", "pmi"] = "reference"
    """reference (slamkit: the whole sequence, mean over its tokens), ending (the ending given its context), or
    pmi (the ending given its context minus the ending alone)."""
    reduction: Literal["mean", "sum"] = "mean"
    """Mean (slamkit's default) or sum of the scored token log-likelihoods."""
    speech_vocab: bool = False
    """Normalise speech targets over the unit tokens only."""
    long_sides: Literal["whole", "cut"] = "whole"
    """A side longer than the model's positions: whole (slamkit's `log_likelihood`, which truncates nothing: every
    token scored, past the positions the model trained on; a model with learned positions has none there and is
    refused), or cut (its oldest tokens dropped to the model's positions, BOS and the first marker kept)."""
    batch_size: int = 32
    """Sequences scored per forward pass (32: 1.1-1.2x 16 for a stories260K-sized model on 2 cores)."""
    concurrent_batches: int = 2
    """On the CPU, batches scored at once, each on its share of torch's threads (1: one batch at a time on all
    of them). Two one-thread batches are 1.1-1.4x one two-thread batch for a stories260K-sized model on 2 cores,
    and level for a SmolLM2-135M-sized one; each batch running holds its own activations."""

    def check(self) -> None:
        check_positive(self, "batch_size", "concurrent_batches")


def _whole(ids: list[int], max_length: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A reference-preset side: every token owned by part 0 (all scored); the oldest dropped past `max_length`."""
    tokens = np.asarray(ids if max_length is None else ids[-max_length:])
    return tokens, np.zeros(len(tokens), dtype=np.int64)


def continuation_alone(tokens: np.ndarray, owners: np.ndarray, vocabulary: Vocabulary,
                       modality: str) -> tuple[np.ndarray, np.ndarray]:
    """The last part of an encoded side on its own: BOS, its modality marker, its tokens."""
    last = owners.max()
    head = ([] if vocabulary.bos_id is None else [vocabulary.bos_id]) + \
        [vocabulary.speech_id if modality == "speech" else vocabulary.text_id]
    ending = tokens[owners == last]
    return (np.concatenate([np.asarray(head, dtype=tokens.dtype), ending]),
            np.concatenate([np.full(len(head), SPECIAL_PART), np.full(len(ending), last)]))


class PairScores(NamedTuple):
    """Scores of the pairs that could be encoded (with the baseline applied, when asked)."""

    positive: np.ndarray
    negative: np.ndarray
    groups: list[str]
    num_skipped: int
    without_baseline: tuple[np.ndarray, np.ndarray] | None
    """The same pairs' plain scores, when a baseline was subtracted from any (free: computed anyway)."""
    num_cut: int = 0
    """Sides longer than the model's context (`EncodedPairs.num_cut`), scored as `ScoringOptions.long_sides` says."""
    items: list[str] | None = None
    """Each pair's item (`Pair.item`, else the pair's own id)."""
    kept: list[int] | None = None
    """Each scored pair's index in the pairs given (those whose units were missing are not scored)."""
    skipped_files: tuple[str, ...] = ()
    """The first files (`SKIPPED_FILES_NAMED`) of the skipped pairs whose units are missing."""


class EncodedPairs(NamedTuple):
    """The token sequences that score a list of pairs, with what to score in each."""

    sequences: list[np.ndarray]
    scored: list[np.ndarray]
    """Per sequence, whether each target (token t + 1, predicted from tokens 0..t) counts."""
    sides: list[tuple[int, int]]
    """Per pair, its two sides' sequences (their shared context runs once)."""
    with_baseline: list[bool]
    """Per pair, whether its sides' continuations alone follow them (two more sequences)."""
    groups: list[str]
    num_skipped: int
    num_cut: int = 0
    """Sides longer than the model's context (`max_position_embeddings`): scored whole past it, as slamkit scores
    them, or on their most recent tokens (`ScoringOptions.long_sides`). Whole asks a model with rotary positions
    about positions it never trained on; a model with learned ones cannot be asked at all."""
    items: list[str] | None = None
    """Each pair's item (`Pair.item`, else the pair's own id)."""
    kept: list[int] | None = None
    """Each scored pair's index in the pairs given (those whose units were missing are not scored)."""
    skipped_files: tuple[str, ...] = ()
    """The first files (`SKIPPED_FILES_NAMED`) of the skipped pairs whose units are missing."""


SKIPPED_FILES_NAMED = 3


def encode_pairs(pairs: list[Pair], vocabulary: Vocabulary, units_of: Callable[[str], np.ndarray],
                 options: ScoringOptions, max_length: int) -> EncodedPairs:
    """The sequences `score_pairs` scores, of the pairs that can be encoded; a pair whose units are missing is
    counted, not fatal."""
    sequences, scored, sides_of, with_baseline, groups, items, kept, skipped, cut = [], [], [], [], [], [], [], 0, 0
    missing: list[str] = []
    for index, pair in enumerate(pairs):
        try:
            if options.preset == "reference":
                whole = [(vocabulary.encode_samples([reference_string(side, vocabulary, units_of)])[0], None)
                         for side in (pair.positive, pair.negative)]
            else:
                whole = [encode_parts(side, vocabulary, units_of, None) for side in (pair.positive, pair.negative)]
        except KeyError as error:  # a file whose units could not be extracted
            skipped += 1
            key = error.args[0]  # a file, or the parts of a recording joined (S mode)
            named = " + ".join(map(str, key)) if isinstance(key, tuple) else str(key)
            if len(missing) < SKIPPED_FILES_NAMED and named not in missing:
                missing.append(named)
            continue
        cut += sum(len(tokens) > max_length for tokens, _ in whole)
        limit = max_length if options.long_sides == "cut" else None
        sides = [_whole(tokens, limit) if options.preset == "reference" else
                 _keep_recent(tokens, owners, limit, vocabulary) for tokens, owners in whole]
        continuation_only = options.preset != "reference" and len(pair.positive) > 1
        baseline = options.preset == "pmi" and continuation_only
        sides_of.append((len(sequences), len(sequences) + 1))
        for tokens, owners in sides:
            wanted = owners == (len(pair.positive) - 1) if continuation_only else owners != SPECIAL_PART
            sequences.append(tokens)
            scored.append(wanted[1:])
        if baseline:
            for (tokens, owners), side in zip(sides, (pair.positive, pair.negative)):
                alone, alone_owners = continuation_alone(tokens, owners, vocabulary, side[-1].modality)
                sequences.append(alone)
                scored.append((alone_owners != SPECIAL_PART)[1:])
        with_baseline.append(baseline)
        groups.append(pair.group)
        items.append(pair.item if pair.item is not None else pair.id)
        kept.append(index)
    return EncodedPairs(sequences, scored, sides_of, with_baseline, groups, skipped, cut, items, kept, tuple(missing))


class LongSidesError(ValueError):
    """Sides longer than a model's learned positions, asked to be scored whole."""


def has_rotary_positions(model) -> bool:
    """Whether the model places tokens by rotary embeddings (Llama, Qwen2, Mistral: computed for any position), not
    by a learned table of `max_position_embeddings` rows (GPT-2, OPT), which ends there."""
    return any("rotary" in type(module).__name__.lower() for module in model.modules())


def score_pairs(model, pairs: list[Pair], vocabulary: Vocabulary, units_of: Callable[[str], np.ndarray],
                options: ScoringOptions, device: str = "cpu") -> PairScores:
    """Positive and negative scores of the pairs that can be encoded, their groups, and how many were skipped."""
    positions = int(model.config.max_position_embeddings)
    encoded = encode_pairs(pairs, vocabulary, units_of, options, positions)
    if encoded.num_cut and options.long_sides == "whole" and not has_rotary_positions(model):
        raise LongSidesError(f"{encoded.num_cut} of {2 * len(encoded.sides)} sides are longer than the model's "
                             f"{positions} positions, which it learned (it has no rotary positions), so it cannot "
                             f"score them whole as slamkit would; --long-sides cut scores their latest {positions} "
                             f"tokens")
    sums, counts = sequence_log_likelihoods(model, encoded.sequences, encoded.scored, vocabulary=vocabulary,
                                            speech_vocab=options.speech_vocab, batch_size=options.batch_size,
                                            device=device, pairs=encoded.sides,
                                            concurrent_batches=options.concurrent_batches)
    scores = side_scores(sums, counts, options.reduction)
    plain, alone, cursor = np.zeros((len(encoded.groups), 2)), np.zeros((len(encoded.groups), 2)), 0
    for index, baseline in enumerate(encoded.with_baseline):
        plain[index] = scores[cursor:cursor + 2]
        if baseline:  # the same tokens scored alone: what the context adds
            alone[index] = scores[cursor + 2:cursor + 4]
        cursor += 4 if baseline else 2
    final = plain - alone
    return PairScores(final[:, 0], final[:, 1], encoded.groups, encoded.num_skipped,
                      (plain[:, 0], plain[:, 1]) if any(encoded.with_baseline) else None, encoded.num_cut,
                      encoded.items, encoded.kept, encoded.skipped_files)
