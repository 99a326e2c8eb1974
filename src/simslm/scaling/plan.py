"""`simslm plan`: the compute-optimal model size and tokens for a FLOP budget, from a fit.

The law's arithmetic (`fit.plan_compute`: N_opt, D_opt and their bootstrap intervals) is the fit's; here is which
fits a plan reads (a fit.json, the fit of a sweep folder, or the textless reference law of Cuervo & Marxer), and the
plan as `simslm plan` states it: the optimum, then the nearest model one can train, a size of the sweep the fit is
of or else a member of simslm's own family, with a note where the law is read past what it was fitted on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from simslm import model as model_lib
from simslm import storage
from simslm.config import Config, ConfigError, check_positive
from simslm.scaling import collect
from simslm.scaling.fit import TEXTLESS_REFERENCE, Law, plan_compute


@dataclass(frozen=True, kw_only=True)
class PlanConfig(Config):
    """What `simslm plan` does."""

    flops: float
    """Training budget C in FLOPs."""
    fit: str | None = None
    """fit.json from `simslm fit`, or the sweep folder holding it (default: the textless reference law of Cuervo
    & Marxer 2024)."""
    variant: str | None = None
    """Which variant of the fit (default: every variant whose law is sound, one plan each)."""
    vocab_size: int = 1015
    """Vocabulary of simslm's own size family, for its nearest member when the fit is not a sweep's (a sweep's
    fit names the nearest size the sweep trained instead). Default: tok512 + 500 units + 3."""

    def check(self) -> None:
        check_positive(self, "flops", "vocab_size")
        if self.variant is not None and self.fit is None:
            # The reference law has no variants: a --variant alone would be ignored, and the plan not be the fit's.
            raise ConfigError("--variant needs --fit (the textless reference law has no variants)")


def plan_budget(config: PlanConfig) -> tuple[str, list[str]]:
    """The plan for `config.flops` from each fit `fits_for_plan` names, as `simslm plan` prints it, and its warnings
    (a sweep whose sizes cannot be read, a fit older than the sweep's finished runs)."""
    stored = None
    if config.fit:  # read once: `simslm fit` may write it again meanwhile
        config = replace(config, fit=fit_file(config.fit))
        stored = storage.read_json(config.fit)
    fits, notes = fits_for_plan(config, stored)
    warnings = []
    rows = None  # the finished runs of the sweep the fit is of, whose sizes a plan is put in
    if config.fit:
        sweep_dir = collect.fitted_sweep(config.fit, stored)
        if sweep_dir is not None:
            try:
                rows = collect.collect(sweep_dir)
            except ValueError as error:  # `report` and `fit` stop on it; a plan from the law need not
                warnings.append(f"the sizes of sweep {sweep_dir} cannot be read ({error}); the plan names simslm's "
                                f"own family's members instead")
        # a sweep's law, fitted before some of its runs finished
        finished = None if rows is None else {row["id"] for row in rows if row.get("loss_speech") is not None}
        stale = collect.stale_fit(config.fit, stored, finished)
        if stale:
            warnings.append(stale)
    plans = [_plan_lines(config, variant, fit, source, rows) for variant, fit, source in fits]
    return "\n\n".join("\n".join(lines) for lines in plans + [[note] for note in notes]), warnings


def _plan_lines(config: PlanConfig, variant: str | None, fit: dict[str, Any], source: str,
                rows: list[dict[str, Any]] | None) -> list[str]:
    plan = plan_compute(config.flops, fit)

    def interval(key: str) -> str:
        return f" [{plan['ci_' + key][0]:.3g}, {plan['ci_' + key][1]:.3g}]" if "ci_" + key in plan else ""

    # A fit's N is all parameters, or with `fit --convention non_embedding` those outside the embeddings (its
    # C = 6 N D counts those): the size is matched, and its tokens read, in the fit's own count.
    non_embedding = fit.get("convention", {}).get("parameters") == "non_embedding"
    counted = "non-embedding parameters" if non_embedding else "parameters"
    lines = [f"budget C = {config.flops:.3g} FLOPs, law from {source}",
             f"N_opt = {plan['n_opt']:.4g} {counted}{interval('n_opt')}",
             f"D_opt = {plan['d_opt']:.4g} tokens{interval('d_opt')}  "
             f"({plan['tokens_per_parameter']:.1f} tokens/parameter)",
             f"predicted loss {plan['loss']:.4f}"]
    sizes = collect.trained_sizes(rows or [], variant, non_embedding=non_embedding) if variant else []
    if sizes:
        # The sweep's own models: simslm's family at another vocabulary or aspect ratio, or a real family,
        # is not the one it trained (the demo's depth 3 has 117,600 parameters, the default family's 429,888).
        name, parameters, total = min(sizes, key=lambda size: abs(math.log(size[1] / plan["n_opt"])))
        lines.append(f"nearest size the sweep trained: {name}, {parameters:,} {counted} -> train it for "
                     f"{config.flops / (6 * parameters):.4g} tokens")
        (smallest, fewest, _), (largest, most, _) = sizes[0], sizes[-1]
        if plan["n_opt"] > most:
            lines.append(f"  note: N_opt is {plan['n_opt'] / most:.3g}x the largest size the sweep trained "
                         f"({largest}): the law is extrapolated there")
        elif plan["n_opt"] < fewest:
            lines.append(f"  note: N_opt is {fewest / plan['n_opt']:.3g}x smaller than the smallest size the sweep "
                         f"trained ({smallest}): the law is extrapolated there")
    else:
        depth, width = model_lib.family_member_for(plan["n_opt"], config.vocab_size, non_embedding=non_embedding)
        parameters = model_lib.member_parameters(depth, width, config.vocab_size, non_embedding=non_embedding)
        total = model_lib.member_parameters(depth, width, config.vocab_size)
        named = f"depth {depth}" + (f" at width {width} ({model_lib.member_label(depth, width)})" if width else "")
        lines.append(f"nearest family member (vocabulary {config.vocab_size}): {named}, {parameters:,} {counted} "
                     f"-> train it for {config.flops / (6 * parameters):.4g} tokens")
        count = lambda depth, width: model_lib.member_parameters(  # noqa: E731
            depth, width, config.vocab_size, non_embedding=non_embedding)
        if (parameters < plan["n_opt"] and depth == model_lib.FAMILY_MAX_DEPTH
                and _past_the_end(parameters, count(depth - 1, None), plan["n_opt"])):
            lines.append(f"  note: capped at the family's largest member (depth {depth}); N_opt is "
                         f"{plan['n_opt'] / parameters:.3g}x larger than it")
        elif (parameters > plan["n_opt"] and width is not None and model_lib.narrower_width(width) is None
              and _past_the_end(parameters, count(1, 2 * width), plan["n_opt"])):
            lines.append(f"  note: capped at the family's smallest member ({model_lib.member_label(depth, width)}); "
                         f"N_opt is {parameters / plan['n_opt']:.3g}x smaller than it")
    if non_embedding:  # C counted the fit's way is not what the training costs
        lines.append(f"  C here is 6 N D with N outside the embeddings, as the fit counts it: with all {total:,} "
                     f"parameters, that training is {6 * total * config.flops / (6 * parameters):.4g} FLOPs")
    return lines


def _past_the_end(end: int, inner: int, n_opt: float) -> bool:
    """Whether the family's end member (`end` parameters, `inner` those of its neighbour within) is nearest to N_opt
    only because the family ends there: N_opt lies past the midpoint, in log space, to where one more member at the
    same step would be. Nearer than that, the end member is the nearest a longer family would name too (N_opt 1.04x
    below d1w4, whose next member is twice its size, was said to be capped)."""
    return abs(math.log(n_opt / end)) > abs(math.log(end / inner)) / 2


def fits_for_plan(config: PlanConfig, stored: Any = None) -> tuple[list[tuple[str | None, dict[str, Any], str]],
                                                                  list[str]]:
    """The fits `simslm plan` plans from, each as (variant, fit, where it comes from in words), and a note for
    each variant it leaves out: the variant named, every variant of a fit.json with several and none named (a
    degenerate law is left out and noted), or the textless reference law (variant None); `stored`, the fit file's
    content when it was read already. Refused: a variant that is not there, a named degenerate one, or no sound one."""
    if not config.fit:
        return ([(None, {"approach3": {"law": TEXTLESS_REFERENCE, "samples": []}},
                  "the textless law of Cuervo & Marxer (2024); pass --fit for your own")], [])
    fits = stored if stored is not None else storage.read_json(config.fit)
    if not isinstance(fits, dict) or not isinstance(fits.get("variants"), dict):
        raise ValueError(f"{config.fit}: not a fit.json (it has no variants); `simslm fit SWEEP` writes one")
    fits = fits["variants"]
    if config.variant is not None and config.variant not in fits:
        raise ValueError(f"{config.fit} has no variant '{config.variant}' ({', '.join(fits) or 'none'})")
    if not fits:
        raise ValueError(f"{config.fit} has no variant to plan from")
    named = [config.variant] if config.variant is not None else list(fits)
    problems = {name: _law_problem(fit) for name, fit in fits.items()}
    for name in named:
        if problems[name]:
            raise ValueError(f"{config.fit}: variant '{name}' {problems[name]}; `simslm fit SWEEP` writes a fit.json")
    sound = [name for name, fit in fits.items() if not problems[name] and not fit["approach3"].get("degenerate")]
    chosen = [name for name in named if name in sound]
    if not chosen:
        name = named[0]
        others = f"; variants with a sound law: {', '.join(sound)} (--variant)" if sound else ""
        raise ValueError(f"{config.fit}: the law of variant '{name}' is degenerate "
                         f"({'; '.join(fits[name]['approach3']['degenerate'])}); fit more runs, or plan from the "
                         f"textless law (no --fit){others}")

    def source(name: str) -> str:
        estimator = fits[name]["approach3"].get("estimator", "huber")
        return f"{config.fit} ({name}{'' if estimator == 'huber' else f', estimator {estimator}'})"

    notes = [f"{name}: not planned, its law is degenerate ({'; '.join(fits[name]['approach3']['degenerate'])})"
             for name in named if name not in sound]
    return [(name, fits[name], source(name)) for name in chosen], notes


def fit_file(path: str) -> str:
    """The fit.json `path` names: itself, or the one a sweep folder holds (`simslm fit SWEEP` writes it there)."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    if (folder / "fit.json").is_file():
        return str(folder / "fit.json")
    others = sorted(p.name for p in folder.glob("fit.*.json"))
    hint = (f"; it holds {', '.join(others)}: name it" if others else
            "; `simslm fit SWEEP` writes it" if (folder / "sweep.json").exists() else "")
    raise ValueError(f"{path}: a folder with no fit.json{hint}")


def _law_problem(fit: Any) -> str | None:
    """What keeps one variant of a fit.json (a file a user may have edited) from being planned from, or None."""
    third = fit.get("approach3") if isinstance(fit, dict) else None
    law = third.get("law") if isinstance(third, dict) else None
    if not isinstance(law, dict):
        return "has no approach 3 law (approach3.law)"
    names = [field.name for field in fields(Law)]
    if set(law) != set(names) or not all(isinstance(law[name], (int, float)) and not isinstance(law[name], bool)
                                         and math.isfinite(law[name]) for name in names):
        return f"has a law that is not {', '.join(names)} as finite numbers ({json.dumps(law)[:200]})"
    samples = third.get("samples") or []
    if not isinstance(samples, list) or not all(isinstance(row, list) and len(row) == len(names) and
                                                all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in row) for row in samples):
        return f"has bootstrap samples that are not rows of {len(names)} numbers (approach3.samples)"
    degenerate = third.get("degenerate", [])
    if not isinstance(degenerate, list) or not all(isinstance(reason, str) for reason in degenerate):
        return "has a degenerate list that is not one of reasons (approach3.degenerate)"
    return None
