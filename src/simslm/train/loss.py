"""Losses of packed rows: which targets count, cross-entropy summed per modality (speech, text) in one pass on the
device, optionally in chunks of the output head or compiled, and validation cross-entropy per modality.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from simslm import jobs
from simslm.sequences.loader import PackedLoader
from simslm.sequences.vocabulary import Vocabulary
from simslm.train.plan import Losses


def scored_targets(tokens: np.ndarray, positions: np.ndarray, pad_id: int) -> np.ndarray:
    """Which next-token targets of packed rows count: not padding, and not the first token of a document
    (slamkit's flattening collator labels it -100: nothing before it in the row belongs to its document)."""
    return (positions[:, 1:] != 0) & (tokens[:, 1:] != pad_id)


def _head_losses(hidden, targets, weight):
    """Cross-entropy of one chunk of tokens: its logits exist only inside this call (and its recomputation)."""
    import torch.nn.functional as F

    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="none")


def chunked_loss_module(model, chunk_tokens: int):
    """A module holding `model` whose forward gives per-token losses with the output head applied
    `chunk_tokens` at a time (TrainConfig.loss_chunk_tokens); it holds the LM so DDP and FSDP see every
    parameter used through its forward."""
    import torch
    from torch.utils.checkpoint import checkpoint

    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None or getattr(model.config, "final_logit_softcapping", None) or \
            getattr(model.config, "logit_scale", None) not in (None, 1, 1.0):
        raise ValueError(f"--loss-chunk-tokens: {model.config.model_type}'s output head is not a plain "
                         f"projection (bias, softcapping or scale); train it with --loss-chunk-tokens 0")

    class ChunkedLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = model

        def forward(self, input_ids, position_ids, targets):
            hidden = self.lm.base_model(input_ids=input_ids, position_ids=position_ids,
                                        use_cache=False).last_hidden_state
            hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
            weight = self.lm.get_output_embeddings().weight
            return torch.cat([checkpoint(_head_losses, hidden[start:start + chunk_tokens],
                                         targets[start:start + chunk_tokens], weight, use_reentrant=False)
                              for start in range(0, len(targets), chunk_tokens)])

    return ChunkedLoss()


def _token_losses(model, tokens, positions, vocabulary: Vocabulary, autocast,
                  chunked: bool = False) -> tuple[Any, list[float]]:
    """Summed loss over the scored targets, and [sum, count] of losses on all / speech / text targets."""
    loss_sum, totals = _loss_and_totals(model, tokens, positions, loss_token_ids(vocabulary, tokens.device), autocast,
                                        chunked)
    return loss_sum, sum_count_pairs(totals.tolist())


def sum_count_pairs(totals: list[float]) -> list[float]:
    """[sum, count] of all / speech / text from the values of `_loss_and_totals`'s tensor."""
    return [totals[0], totals[3], totals[1], totals[4], totals[2], totals[5]]


def loss_token_ids(vocabulary: Vocabulary, device) -> tuple[int, int, int, Any]:
    """What `_loss_and_totals` needs of the vocabulary: pad id, unit id range, and the ids neither text nor speech."""
    import torch

    specials = torch.tensor([vocabulary.speech_id, vocabulary.text_id, vocabulary.pad_id,
                             *vocabulary.tokenizer.all_special_ids], device=device)
    return vocabulary.pad_id, vocabulary.unit_offset, vocabulary.unit_offset + vocabulary.num_units, specials


def _loss_and_totals(model, tokens, positions, kinds, autocast, chunked: bool = False):
    """Summed loss over the scored targets, and the loss sums on all / speech / text targets then their counts, as
    one tensor. Tensors only, no transfer to the host: `--compile` compiles this whole function, so the cross-
    entropy and the masks fuse with the model's last layers.

    The positions restart at every document of a packed row; with them (and no attention
    mask) transformers attends within each document only, as variable-length attention does.
    `chunked`: `model` is a `chunked_loss_module`, which gives the per-token losses itself.
    """
    import torch
    import torch.nn.functional as F

    pad_id, unit_low, unit_high, specials = kinds
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    with autocast:
        if chunked:
            losses = model(inputs, positions[:, :-1], targets)
        else:
            # use_cache=False: a training forward must not build a KV cache it never reads.
            logits = model(input_ids=inputs, position_ids=positions[:, :-1], use_cache=False).logits
    if not chunked:
        losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                 reduction="none")
    flat = targets.reshape(-1)
    scored = ((positions[:, 1:] != 0) & (targets != pad_id)).reshape(-1)
    speech = (flat >= unit_low) & (flat < unit_high) & scored
    text = scored & ~speech & ~torch.isin(flat, specials)
    # One (3 x N) product and one transfer: per-modality bookkeeping costs ~1% of a step
    # this way, against ~8% with boolean indexing and separate .item() calls (docs/LOG.md).
    masks = torch.stack([scored, speech, text]).to(losses.dtype)
    return (losses * masks[0]).sum(), torch.cat([masks @ losses.detach(), masks.sum(dim=1)])


class StepLosses:
    """`_loss_and_totals`, compiled with torch.compile when asked: the whole function, or with `layers` (FSDP's
    units) each layer's forward alone. FSDP gathers a layer's weights in hooks around its forward, and those stay
    outside the compiled code (torchtitan compiles per block for the same reason). A first call that cannot compile
    says why and falls back to eager for the rest of the run (later failures are real ones and raise)."""

    def __init__(self, compile_step: bool, quiet: bool, mode: str = "default", layers=None,
                 dynamic: bool | None = False):
        import torch

        self.layers = list(layers) if compile_step and layers is not None else []
        for layer in self.layers:
            # An attribute of the instance, ahead of its class's forward: the module, its hooks and its
            # state_dict's names stay as they are. Every layer shares one compiled graph (a training forward
            # reads no layer index: no KV cache).
            layer.forward = torch.compile(layer.forward, dynamic=dynamic, mode=mode)
        self.function = (torch.compile(_loss_and_totals, dynamic=dynamic, mode=mode) if compile_step and not self.layers
                         else _loss_and_totals)
        self.untried, self.quiet = compile_step, quiet

    def __call__(self, *arguments):
        if not self.untried:
            return self.function(*arguments)
        self.untried = False
        try:
            return self.function(*arguments)
        except Exception as error:  # inductor's failures have many types (no C++ compiler, an unsupported op)
            if not self.quiet:
                print(f"simslm train: warning: --compile failed ({error.__class__.__name__}: "
                      f"{str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}); training eagerly",
                      file=sys.stderr)
            self.function = _loss_and_totals
            for layer in self.layers:
                del layer.forward  # its class's own again
            return self.function(*arguments)


def to_device(batch, device: str, one_row: bool = False):
    """A batch's tokens and positions on `device`; with `one_row` (`ONE_ROW_KERNELS`), its rows end to end as one.
    Each row starts a document, so the row that follows another's last token is a target never scored (position 0)."""
    import torch

    tokens, positions = (torch.from_numpy(batch.tokens.astype(np.int64)),
                         torch.from_numpy(batch.positions.astype(np.int64)))
    if one_row:
        tokens, positions = tokens.reshape(1, -1), positions.reshape(1, -1)
    if not str(device).startswith("cuda"):
        return tokens.to(device), positions.to(device)
    # A copy from pageable memory waits for the GPU's queue to drain; from pinned memory it is queued behind the
    # previous step's kernels while the host goes on launching this one.
    return (tokens.pin_memory().to(device, non_blocking=True), positions.pin_memory().to(device, non_blocking=True))


# What each entry of `RunResult.validation_batches` holds, in order.
VALIDATION_SUMS = ("loss_sum", "tokens", "speech_loss_sum", "speech_tokens", "text_loss_sum", "text_tokens")


def loss_ratios(sums: list[float]) -> Losses:
    ratio = lambda total, count: total / count if count else None  # noqa: E731
    return Losses(loss=ratio(sums[0], sums[1]), loss_speech=ratio(sums[2], sums[3]), loss_text=ratio(sums[4], sums[5]))


def evaluate_modalities(model, folder: str, vocabulary: Vocabulary, batch_size: int, num_batches: int,
                        device: str, per_batch: list[list[float]] | None = None, quiet: bool = False,
                        chunked: bool = False, one_row: bool = False) -> Losses:
    """Validation cross-entropy overall and per modality (speech-only CE is the paper's main loss). `chunked`:
    `model` is a `chunked_loss_module`; `one_row`: its kernel takes a batch as one row (`ONE_ROW_KERNELS`).

    `per_batch`, when given, receives each batch's sums (`VALIDATION_SUMS`): the batches are the folder's
    first ones in a fixed order, the same for every run with this batch size, so two runs' losses can be
    compared by a paired bootstrap over batches (`simslm.scaling.collect.speech_loss_difference`)."""
    import contextlib

    import torch

    loader = PackedLoader(folder, batch_size)
    totals = [0.0] * 6
    model.eval()
    batches = range(min(num_batches, loader.batches_per_epoch()))
    with torch.no_grad():
        for _ in (batches if quiet else jobs.progress(batches, "validation", unit="batch")):
            _, sums = _token_losses(model, *to_device(next(loader), device, one_row), vocabulary,
                                    contextlib.nullcontext(), chunked)
            totals = [a + b for a, b in zip(totals, sums)]
            if per_batch is not None:
                per_batch.append([float(value) for value in sums])
    model.train()
    return loss_ratios(totals)

