"""Pretraining a family of small text LMs offline, to serve as TWIST sources.

The paper starts from pretrained text LM families (Qwen2.5, Llama-3.2, SmolLM2). Offline
there is one pretrained model (stories260K), so `simslm textlm pretrain` trains a size
family on a text corpus with the same loop as the SLMs (`simslm.train`). Each member's
own training FLOPs are recorded in `family.json`; they are not part of an SLM's budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simslm import model as model_lib
from simslm import storage
from simslm.config import Config, ConfigError, check_positive
from simslm.sequences.build import BuildConfig, build_sequences
from simslm.sequences.vocabulary import Vocabulary
from simslm.train.loop import train
from simslm.train.plan import RunResult, TrainConfig, changed_settings


@dataclass(frozen=True, kw_only=True)
class TextLMConfig(Config):
    """What `simslm textlm pretrain` does."""

    out: str
    """Folder: data/ (text sequences), depth-N/ (one run per member), family.json."""
    text_corpus: str = "tinystories-sample"
    """Asset name or .jsonl/.txt file."""
    tokenizer: str = "stories260K"
    """Base tokenizer (tok512 by default)."""
    depths: tuple[int, ...] = (1, 2, 3, 4)
    """Depths of the family (width = aspect_ratio x depth; see simslm.model)."""
    aspect_ratio: int = model_lib.FAMILY_ASPECT_RATIO
    """Width per layer: 32 as nanochat-style families; 16 gives a finer ladder of tiny sizes."""
    narrow_widths: tuple[int, ...] = ()
    """Depth-1 members narrower than the aspect ratio (the family below depth 1; simslm.model): sweep bracketing
    adds them when depth 1 is a budget's best size."""
    tokens_per_parameter: float = 20.0
    """Training tokens per parameter for each member (Chinchilla's compute-optimal ratio)."""
    context_length: int = 256
    """Tokens per packed sequence."""
    batch_size: int = 16
    """Sequences per training step."""
    lr: float = 2e-3
    """Peak learning rate: higher than the SLM default, as usual for tiny models from scratch."""
    seed: int = 0
    """Seed of the data order and the initialisation."""

    def check(self) -> None:
        check_positive(self, "tokens_per_parameter", "aspect_ratio", "context_length", "batch_size", "lr")
        if not self.depths or min(self.depths) < 1:
            raise ConfigError(f"--depths must be positive depths, not {self.depths}")
        if problem := model_lib.aspect_ratio_problem(self.aspect_ratio):
            raise ConfigError(f"--aspect-ratio {problem}")
        for width in self.narrow_widths:
            if not model_lib.FAMILY_MIN_WIDTH <= width < self.aspect_ratio:
                raise ConfigError(f"--narrow-widths must lie in [{model_lib.FAMILY_MIN_WIDTH}, aspect ratio "
                                  f"{self.aspect_ratio}), not {width}")
            if problem := model_lib.width_problem(width):
                raise ConfigError(f"--narrow-widths: {problem}")


# Every member reads the same tokenizer: the base one plus simslm's markers. Sequences for TWIST
# runs from this family must be built with it, so that the units come after the marker rows the
# members trained (`simslm train` refuses any other).
FAMILY_TOKENIZER = "data/tokenizer"


def family_tokenizer(family: str | Path) -> Path:
    """The tokenizer to build a family's TWIST sequences with (`sequences build --tokenizer`)."""
    return Path(family) / FAMILY_TOKENIZER


def family_aspect_ratio(family: str | Path) -> int:
    """The width per layer a family folder was pretrained with (simslm's default without a folder)."""
    path = Path(family) / "family.json" if family else None
    if path is None or not path.exists():
        return model_lib.FAMILY_ASPECT_RATIO
    try:
        return int(storage.read_json(path)["config"].get("aspect_ratio", model_lib.FAMILY_ASPECT_RATIO))
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        message = str(error)
        raise ValueError(message if message.startswith(str(path)) else
                         f"{path}: not a family record (no config.aspect_ratio: {error!r})") from None


def member_folder(depth: int, width: int | None = None) -> str:
    """A member's run folder in the family folder: depth-3, or depth-1-w8 for a narrower depth 1."""
    return f"depth-{depth}" + (f"-w{width}" if width else "")


def pretrain_family(config: TextLMConfig) -> dict[str, Any]:
    """Build the text sequences once, train each member, write family.json; resumable per member."""
    out = Path(config.out)
    data = out / "data"
    if not (data / "index.json").exists():
        build_sequences(BuildConfig(out=str(data), tokenizer=config.tokenizer, streams=("text",),
                                                        text_corpus=config.text_corpus,
                                                        context_length=config.context_length, seed=config.seed))
    vocab_size = len(Vocabulary.load(data / "tokenizer"))
    members = []
    # Smallest first: the narrow depth-1 members (width W is aspect ratio W at depth 1), then the depths.
    sizes = [(1, width, width) for width in sorted(set(config.narrow_widths))] + \
        [(depth, None, config.aspect_ratio) for depth in sorted(set(config.depths))]
    for depth, width, ratio in sizes:
        parameters = model_lib.family_parameters(depth, vocab_size, ratio)
        run_dir = out / member_folder(depth, width)
        started = time.perf_counter()
        member = TrainConfig(run_dir=str(run_dir), data=str(data), init="random",
                             base_model=model_lib.family_source(depth, ratio),
                             budget_tokens=int(config.tokens_per_parameter * parameters),
                             batch_size=config.batch_size, lr=config.lr, lr_min=config.lr / 10,
                             seed=config.seed, checkpoint_every=200)
        if RunResult.exists(run_dir):
            # Every setting, not just the architecture: a member trained on other tokens per parameter would
            # otherwise be kept as if it were this family's. Its data is the family's own folder, wherever the
            # family has moved.
            changed = [name for name in changed_settings(member, run_dir) if name != "data"]
            if changed:
                stored = storage.read_json(run_dir / "config.json")
                raise ValueError(f"{run_dir}: a finished member trained with other settings (" + "; ".join(
                    f"{name} {stored.get(name)}, not {getattr(member, name)}" for name in changed) +
                    "): this family folder was pretrained otherwise; use a new --out")
            result = RunResult.load(run_dir)
        else:
            result = train(member)
        # Paths relative to the family folder, so the family can move (sweep specs name the folder).
        members.append({"depth": depth, "width": width or ratio * depth, "parameters": parameters,
                        "model_dir": f"{member_folder(depth, width)}/model",
                        "pretraining_tokens": result.tokens, "pretraining_flops": result.flops,
                        "final_loss": result.final_train.loss,
                        "wall_sec": round(time.perf_counter() - started, 3)})
    family = {"config": config.to_dict(), "tokenizer": FAMILY_TOKENIZER, "members": members}
    storage.write_json(out / "family.json", family)
    return family
