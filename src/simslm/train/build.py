"""The model a run trains: the base LM as asked (TWIST or random init, vocabulary grown, precision), the attention
kernel, and the check at each run's start that the kernel keeps packed documents apart on this device.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import sys

import numpy as np

from simslm import model as model_lib
from simslm.config import ConfigError
from simslm.sequences.vocabulary import Vocabulary, load_base_tokenizer, speech_vocabulary
from simslm.train.loss import to_device
from simslm.train.plan import TrainConfig


def uses_bf16(precision: str, device: str) -> bool:
    """Whether a run at `--precision` on `device` trains in bf16 autocast: asked for, or auto on CUDA (most CPUs
    lack native bf16 products)."""
    return precision in ("bf16", "bf16-weights") or (precision == "auto" and str(device).startswith("cuda"))


def weights_to(model, dtype) -> None:
    """The model's parameters (not its buffers) in `dtype`, as `from_pretrained(torch_dtype=...)` builds them:
    RoPE's inverse frequencies are computed in fp32 and stay so (`--precision bf16-weights`)."""
    for parameter in model.parameters():
        parameter.data = parameter.data.to(dtype)


FP32_ATTENTION = "sdpa_fp32"


# Attention kernels whose cost follows each document's length in a row of several, not the row's: these take a batch
# of pieces as one row (`TrainConfig.batching`).
ROW_FREE_KERNELS = ("flash_attention_2", "flex_attention")


# Kernels that keep packed documents apart only in a batch of one row: transformers reads restarting positions as
# documents for flash-attn's variable-length path at batch size 1 alone (`_is_packed_sequence`; slamkit's flattening
# collator gives it one row), and runs a batch of several rows causally over each whole row, its documents seeing
# one another. These take each batch's rows end to end as one row (`to_device`): every row starts a document.
ONE_ROW_KERNELS = ("flash_attention_2",)


def attention_kernel(choice: str, device: str, bf16: bool = False) -> str:
    """The attention implementation to train with: `auto` is flash-attn's variable-length kernel on CUDA when it
    is installed (slamkit trains with flash_attention_2), `sdpa_fp32` for bf16 on a CPU, else PyTorch's SDPA."""
    if choice == "auto":
        on_cuda = device.startswith("cuda")
        choice = ("flash_attention_2" if on_cuda and importlib.util.find_spec("flash_attn")
                  else FP32_ATTENTION if bf16 and not on_cuda else "sdpa")
    if choice == FP32_ATTENTION:
        _register_fp32_attention()
    return choice


def _register_fp32_attention() -> None:
    """`sdpa_fp32`: PyTorch's SDPA on fp32 inputs with autocast off, its output cast back to the inputs' dtype,
    and sdpa's masks. Under bf16 autocast a CPU's flash kernel runs slower in bf16 than in fp32, casts included:
    forward and backward at 8 x 4 heads x 256 x 32 with a document mask, 10.7-11.5 ms against 8.1-9.8 ms on 2 Zen 4
    cores (docs/LOG.md, 2026-12-04). Autocast would cast the inputs back to bf16, hence off. In fp32 training it is
    sdpa, bit for bit."""
    import torch
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    def attention(module, query, key, value, attention_mask, **kwargs):
        with torch.autocast(query.device.type, enabled=False):
            output, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                                     attention_mask, **kwargs)
        return output.to(query.dtype), weights

    AttentionInterface.register(FP32_ATTENTION, attention)
    AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)


# A model may have more embedding rows than its tokenizer has tokens (Qwen2.5 pads 151,665 to
# 151,936); more than this many extra, or fewer rows than tokens, means another tokenizer.
ROW_PADDING_SLACK = 1024


def another_tokenizer(data: str, base_model: str, problem: str) -> str:
    """The refusal of sequences built with another tokenizer than the base model's (`Vocabulary.base_mismatch`)."""
    return (f"{data}: built with another tokenizer than {base_model}'s, which has {problem}; build the sequences "
            f"with --tokenizer {base_model}")


def check_base_tokenizer(config: TrainConfig, vocabulary: Vocabulary, model) -> None:
    """Refuse data whose text tokens are not the base model's: compared token by token with the model's own
    tokenizer when it has one, else by its number of embedding rows."""
    fix = f"build the sequences with --tokenizer {config.base_model}"
    if not config.base_model.startswith(model_lib.FAMILY_SOURCE) and \
            (extended := speech_vocabulary(config.base_model)) is not None:
        # A speech LM trained on (continued training): the data must be built on its vocabulary, units included.
        if problem := vocabulary.mismatch(extended):
            raise ValueError(another_tokenizer(config.data, config.base_model, problem))
        return
    try:
        base_tokenizer = load_base_tokenizer(config.base_model)
    except ValueError:
        base_tokenizer = None  # e.g. a llama2.c .bin given as a file: only its rows can be compared
    if base_tokenizer is not None:
        problem = vocabulary.base_mismatch(base_tokenizer)
        if problem:
            raise ValueError(another_tokenizer(config.data, config.base_model, problem))
        return
    rows = model.get_input_embeddings().weight.shape[0]
    if not vocabulary.unit_offset <= rows <= vocabulary.unit_offset + ROW_PADDING_SLACK:
        raise ValueError(f"{config.data}: its tokenizer has {vocabulary.unit_offset} text tokens but "
                         f"{config.base_model} has {rows} embedding rows: the data was built with another "
                         f"tokenizer; {fix}")


def build_model(config: TrainConfig, vocab_size: int, context_length: int, device: str = "cpu",
                vocabulary: Vocabulary | None = None, *, quiet: bool = False):
    """The base LM, initialised as asked, with its vocabulary grown to `vocab_size`; the data's `vocabulary`,
    when given, is checked against the base model's tokenizer first (`quiet`: no warnings, as on every process
    but the main one)."""
    import torch

    if config.base_model.startswith(model_lib.FAMILY_SOURCE):
        depth, aspect_ratio = model_lib.parse_family_source(config.base_model)
        model = model_lib.build_family_model(depth, vocab_size, config.seed, context_length, aspect_ratio)
    else:
        model = model_lib.load_base_model(config.base_model)
        if vocabulary is not None:
            check_base_tokenizer(config, vocabulary, model)
        if config.init == "random":
            model = model_lib.reinitialise(model, config.seed)
        if config.precision == "bf16-weights":
            # slamkit loads the base model in bf16 (`torch_dtype: bfloat16`) and only then resizes its vocabulary
            # (`UnitLM.__init__`): the new rows are the mean of the bf16-rounded rows, which differs from the
            # rounded mean of the fp32 ones in about one entry in eight, by a bf16 step.
            weights_to(model, torch.bfloat16)
        model_lib.extend_vocabulary(model, vocab_size, seed=config.seed, new_rows=config.new_rows,
                                    text_tokens=vocabulary.unit_offset if vocabulary is not None else None)
        trained_positions = model.config.max_position_embeddings
        if trained_positions < context_length:
            if config.init == "twist" and not quiet:  # a random init has learnt no positions to go past
                print(f"simslm train: warning: {config.base_model} was trained on {trained_positions} positions, and "
                      f"the data's documents run to {context_length} tokens (its context): positions past "
                      f"{trained_positions} are new to it (RoPE extrapolates them); `simslm sequences build "
                      f"--context-length {trained_positions}` keeps every document within", file=sys.stderr)
            model.config.max_position_embeddings = context_length  # RoPE extrapolates; the data decides
    model.set_attn_implementation(attention_kernel(config.attention, device, bf16=uses_bf16(config.precision, device)))
    return model


# The documents the probe packs two to a row (lengths; each row as long as the other), and how far a document's
# hidden states may move when packed after another, relative to their largest value alone: bf16's rounding moves them
# by ~1e-2; a document that sees the one before it moves by the order of its values (0.75-1.1, docs/LOG.md).
PROBE_DOCUMENTS = ((9, 7), (5, 11))


PROBE_TOLERANCE = 0.1


def documents_moved(model_config, kernel: str, device: str, bf16: bool, one_row: bool) -> float:
    """How far packing moves a document's hidden states under `kernel`, on `device`, in the layout `train` gives it
    (`one_row`), relative to their largest value alone: 0 up to rounding where the kernel keeps packed documents
    apart. A model of the run's architecture cut to one layer (its attention as it is; MLP and vocabulary small, no
    token ids) encodes rows of two random documents each, and each document alone. The random state is left as it
    was."""
    import torch
    from transformers import AutoModelForCausalLM

    from simslm.sequences.loader import Batch

    probe_config = copy.deepcopy(model_config)
    for name, value in (("num_hidden_layers", 1), ("intermediate_size", 64), ("vocab_size", 64)):
        if hasattr(probe_config, name):
            setattr(probe_config, name, value)
    for name in [name for name in vars(probe_config) if name.endswith("_token_id")]:
        setattr(probe_config, name, None)  # ids past the 64 rows: a pad id is refused, the others warned of
    if isinstance(getattr(probe_config, "layer_types", None), list):  # per-layer attention kinds (Qwen2's windows)
        probe_config.layer_types = probe_config.layer_types[:1]
    on_cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda" if on_cuda else "cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[torch.device(device).index or 0] if on_cuda else []):
        torch.manual_seed(0)
        probe = AutoModelForCausalLM.from_config(probe_config, dtype=torch.float32).to(device).eval()
        probe.set_attn_implementation(kernel)
        rows = [[torch.randint(1, 64, (length,)) for length in lengths] for lengths in PROBE_DOCUMENTS]

    def hidden(ids, places):
        with torch.no_grad(), autocast:
            return probe.base_model(input_ids=ids, position_ids=places, use_cache=False).last_hidden_state.float()

    batch = Batch(np.stack([torch.cat(row).numpy() for row in rows]),
                  np.stack([np.concatenate([np.arange(len(document)) for document in row]) for row in rows]))
    packed = hidden(*to_device(batch, device, one_row)).reshape(*batch.tokens.shape, -1)
    moved = 0.0
    for number, row in enumerate(rows):
        cursor = 0
        for document in row:
            alone = hidden(document[None].to(device), torch.arange(len(document), device=device)[None])[0]
            change = float((packed[number, cursor:cursor + len(document)] - alone).abs().max() / alone.abs().max())
            moved = max(moved, change) if math.isfinite(change) else math.inf
            cursor += len(document)
    return moved


def check_documents_apart(model_config, kernel: str, device: str, bf16: bool, one_row: bool,
                          quiet: bool = False, command: str = "train") -> None:
    """A ConfigError when `kernel` lets the documents packed in a row attend to one another on this device, with the
    installed transformers, in the layout `train` gives it (`documents_moved`). transformers keeps packed documents
    apart by reading restarting positions, differently for each kernel (flash-attn did it only for a batch of one
    row), so this is checked where the run trains (and where `eval` computes its validation CE over packed rows,
    perhaps with another transformers) rather than assumed. A probe that cannot run at all (a config it cannot cut
    down) is a warning, not a refusal."""
    try:
        moved = documents_moved(model_config, kernel, device, bf16, one_row)
    except Exception as error:  # from_config and the forward raise many types for configs they do not take
        if not quiet:
            print(f"simslm {command}: warning: could not check that {kernel} keeps packed documents apart in "
                  f"{model_config.model_type} ({error.__class__.__name__}: {str(error).strip()[:200]})",
                  file=sys.stderr)
        return
    if not moved <= PROBE_TOLERANCE:
        import transformers

        remedy = ("try another --attention, or a base model of another architecture (Llama's and Qwen2's keep them "
                  "apart under SDPA)" if command == "train" else
                  "a validation CE over packed rows would score tokens that saw the documents before them; use the "
                  "transformers version the run was trained with")
        subject = f"--attention {kernel}" if command == "train" else f"{kernel} attention"
        raise ConfigError(f"{subject} lets the documents packed in a row attend to one another in "
                          f"{model_config.model_type} on {device} with transformers {transformers.__version__} (a "
                          f"document's hidden states moved by {moved:.2g} of their size); {remedy}")


def model_skeleton(model_config, config: TrainConfig, device: str):
    """A causal LM of `model_config` on the meta device: its modules without weights."""
    import torch
    from transformers import AutoModelForCausalLM

    # First: the kernel may be simslm's own (sdpa_fp32), registered with transformers by attention_kernel, and
    # the config names it.
    kernel = attention_kernel(config.attention, device, bf16=uses_bf16(config.precision, device))
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    skeleton.set_attn_implementation(kernel)
    return skeleton

