"""Stage 5, evaluation: spoken benchmarks, pairwise likelihood scoring, generation metrics.

`layouts` reads benchmark folders in their published layouts; `benchbuild` writes offline
re-creations; `bench_units` turns benchmark audio into a run's units; `scoring` scores pairs
and computes accuracies with bootstrap intervals; `generation` continues prompts and
measures the continuations; `evaluate` is `simslm eval`, which writes a run's eval.json.
"""
