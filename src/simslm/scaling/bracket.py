"""Grids that bracket: `extend_to_bracket` grows a sweep until each budget's best size is inside it.

A (variant, budget) cell whose best run is its smallest or largest size has not found its
isoFLOP minimum (`edges`); the grid grows by the family's next member on that side (a
`simslm textlm` depth pretrained as the others were, or a held-back model of a real family),
or, below depth 1, by a narrower depth-1 model in that cell only. `bracket.json` records what
was added and why a cell could not grow.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from simslm import model as model_lib
from simslm import storage
from simslm.scaling.collect import best_runs, collect
from simslm.scaling.ledger import cluster_jobs, run_status, to_start
from simslm.scaling.sweep import SweepSpec, growing, load_sweep, plan_sweep
from simslm.train.plan import RunResult

BRACKET_FILE = "bracket.json"


def edges(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (variant, budget) whose best run is its smallest or largest size: the minimum is not bracketed."""
    found = []
    for (variant, budget), best in sorted(best_runs(rows).items(), key=lambda item: (item[0][0], item[0][1])):
        sizes = sorted({row["parameters"] for row in rows if row["variant"] == variant and row["budget"] == budget})
        for side, edge in (("smaller", sizes[0]), ("larger", sizes[-1])):
            if best["parameters"] == edge:
                found.append({"variant": variant, "budget": budget, "member": best["member"], "needs": side,
                              "family": best["family"]})
    return found


def _meta_parameters(model: str) -> int:
    """Parameters of a model from its config alone (built on the meta device: no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    return sum(parameter.numel() for parameter in built.parameters())


def _next_size(spec: SweepSpec, family: str, side: str) -> tuple[SweepSpec | None, str]:
    """The spec grown by one size beyond `family`'s edge on `side`, and what was added (or why nothing)."""
    if spec.depths:
        depth = min(spec.depths) - 1 if side == "smaller" else max(spec.depths) + 1
        if not 1 <= depth <= model_lib.FAMILY_MAX_DEPTH:
            return None, f"no depth {depth} in simslm's family (depths 1 to {model_lib.FAMILY_MAX_DEPTH})"
        if spec.family:
            _pretrain_member(Path(spec.family), depth)
        return dataclasses.replace(spec, depths=tuple(sorted({*spec.depths, depth}))), f"depth {depth}"
    members = list(spec.families[family])
    held = [model for model in spec.bracket_models.get(family, ()) if model not in members]
    if not held:
        return None, (f"family {family} has no model {side} than its members; list one under bracket_models "
                      f"to let the grid grow")
    sizes = {model: _meta_parameters(model) for model in (*members, *held)}
    bound = min(sizes[m] for m in members) if side == "smaller" else max(sizes[m] for m in members)
    beyond = [m for m in held if (sizes[m] < bound if side == "smaller" else sizes[m] > bound)]
    if not beyond:
        return None, f"family {family}: none of bracket_models is {side} than its members"
    chosen = max(beyond, key=lambda m: sizes[m]) if side == "smaller" else min(beyond, key=lambda m: sizes[m])
    grown = sorted([*members, chosen], key=lambda m: sizes[m])
    return dataclasses.replace(spec, families={**spec.families, family: tuple(grown)}), \
        f"{chosen} ({sizes[chosen]:,} parameters)"


def _narrower_in_cell(spec: SweepSpec, edge: dict[str, Any]) -> tuple[SweepSpec | None, str]:
    """The spec with depth 1 at half the width of `edge`'s best size (depth 1, the cell's smallest) added to that
    cell alone, and what was added (or why nothing).

    Not to the whole grid, as a depth is: these members take the most steps of all for a budget (2.3x depth 1's
    at width 8), and a tiny model's step costs its launches, not its FLOPs (a depth-1 step of the demo: 10 ms for
    46 MFLOP), so at every budget of every variant they would cost more than the rest of the sweep."""
    from simslm.textlm import family_aspect_ratio

    _, width = model_lib.parse_member_label(edge["member"])
    narrower = model_lib.narrower_width(width or family_aspect_ratio(spec.family))
    if narrower is None:
        return None, (f"no size below {edge['member']} in simslm's family (depth 1 narrows down to width "
                      f"{model_lib.FAMILY_MIN_WIDTH})")
    if spec.family and next(v for v in spec.variants if v.name == edge["variant"]).init == "twist":
        _pretrain_member(Path(spec.family), 1, narrower)
    size = model_lib.member_label(1, narrower)
    cell = {"variant": edge["variant"], "budget_flops": edge["budget"], "size": size}
    return dataclasses.replace(spec, cell_sizes=(*spec.cell_sizes, cell)), size


def _pretrain_member(family_dir: Path, depth: int, width: int | None = None) -> None:
    """Pretrain one more member of a `simslm textlm` family, as its others were (family.json's config): a depth,
    or depth 1 at a narrower width."""
    from simslm.textlm import TextLMConfig, pretrain_family

    family = storage.read_json(family_dir / "family.json")
    config = TextLMConfig.from_dict(family["config"], source=str(family_dir / "family.json"))
    depths = tuple(sorted({*(member["depth"] for member in family["members"]), depth}))
    narrow = tuple(sorted({*config.narrow_widths, *([width] if width else [])}))
    pretrain_family(dataclasses.replace(config, out=str(family_dir), depths=depths, narrow_widths=narrow))


def _note_added(record: dict[str, Any], entry: dict[str, Any]) -> None:
    """Record a size bracketing added, once: a sweep planned again from its first spec (`simslm demo` does, from
    its options) grows the same sizes again, finding their runs done."""
    if entry not in record["added"]:
        record["added"].append(entry)


def extend_to_bracket(sweep_dir: str | os.PathLike, settled_only: bool = False) -> bool:
    """Add the next size beyond each edge where a budget's best run sits; record what stays unbracketed in
    bracket.json. True when the grid grew (its new runs are still to run).

    `settled_only`: judge only the (variant, budget) cells whose planned runs have all finished, and leave what
    stays unbracketed to the call after the last run (a cell still running may yet find its minimum inside)."""
    sweep_dir = Path(sweep_dir)
    with growing(sweep_dir):  # what it reads is what it grows
        return _extend_to_bracket(sweep_dir, settled_only)


def _extend_to_bracket(sweep_dir: Path, settled_only: bool) -> bool:
    sweep = load_sweep(sweep_dir)
    spec = SweepSpec.from_json(sweep["spec"])
    rows = [row for row in collect(sweep_dir) if row.get("loss_speech") is not None]
    if settled_only:
        finished = {row["id"] for row in rows}
        unfinished = {(run["variant"], run["budget_flops"]) for run in sweep["runs"] if run["id"] not in finished}
        rows = [row for row in rows if (row["variant"], row["budget"]) not in unfinished]
    record = storage.read_json(sweep_dir / BRACKET_FILE) if (sweep_dir / BRACKET_FILE).exists() else {"added": []}
    unbracketed, grown = [], False
    found = edges(rows)
    # Below depth 1, cell by cell; elsewhere the next size joins the whole grid.
    narrow = [edge for edge in found if spec.depths and edge["needs"] == "smaller" and
              model_lib.parse_member_label(edge["member"])[0] == 1]
    for edge in narrow:
        narrowed, added = _narrower_in_cell(spec, edge)
        if narrowed is None:
            unbracketed.append({**edge, "reason": added})
            continue
        spec, grown = narrowed, True
        _note_added(record, {"family": edge["family"], "side": "smaller", "size": added, "variant": edge["variant"],
                             "budget": edge["budget"]})
        print(f"simslm sweep: bracketing: {edge['variant']} at C={edge['budget']:.3g} gets {added}, smaller than "
              f"{edge['member']}", file=sys.stderr)
    for family, side in sorted({(edge["family"], edge["needs"]) for edge in found if edge not in narrow}):
        larger, added = _next_size(spec, family, side)
        if larger is None:
            unbracketed += [{**edge, "reason": added} for edge in found
                            if (edge["family"], edge["needs"]) == (family, side) and edge not in narrow]
            continue
        spec, grown = larger, True
        _note_added(record, {"family": family, "side": side, "size": added})
        print(f"simslm sweep: bracketing: family {family} gets {added}, {side} than its sizes", file=sys.stderr)
    if grown or not settled_only:
        record["unbracketed"] = [] if grown else unbracketed
        storage.write_json(sweep_dir / BRACKET_FILE, record)
    if grown:
        plan_sweep(spec, sweep_dir)
    elif not settled_only:  # the sweep ends with these minima unknown: said here, not only in bracket.json
        grouped: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for edge in unbracketed:
            grouped.setdefault((edge["variant"], edge["needs"], edge["reason"]), []).append(edge)
        for (variant, needs, reason), group in grouped.items():
            where = "smallest" if needs == "smaller" else "largest"
            budgets = ", ".join(f"{edge['budget']:.3g}" for edge in group)
            print(f"simslm sweep: warning: not bracketed: {variant} at C = {budgets}, best at its {where} size "
                  f"({', '.join(sorted({edge['member'] for edge in group}))}); {reason}", file=sys.stderr)
    return grown


def grown_after(sweep_dir: Path, ended: str) -> list[dict[str, Any]]:
    """`_grown_runs` once run `ended` was the last of its (variant, budget) cell to finish, else none: only a cell's
    last run lets bracketing find something new, and the ledger it reads (every run's result) would otherwise be
    read after each run, growing with the square of the sweep."""
    runs = load_sweep(sweep_dir)["runs"]
    cell = next(((run["variant"], run["budget_flops"]) for run in runs if run["id"] == ended), None)
    if cell is None or not all(RunResult.exists(Path(run["config"]["run_dir"])) for run in runs
                               if (run["variant"], run["budget_flops"]) == cell):
        return []
    return _grown_runs(sweep_dir)


def _grown_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The runs still to do after bracketing the cells finished so far (`extend_to_bracket(settled_only=True)`);
    none when the grid did not grow."""
    if not extend_to_bracket(sweep_dir, settled_only=True):
        return []
    sweep = load_sweep(sweep_dir)
    bench = tuple(sweep["spec"].get("bench") or ())
    ledger = cluster_jobs(Path(sweep_dir))
    return [run for run in sweep["runs"] if to_start(run_status(run, bench, ledger))]

