"""Stage 4, training: a compute budget fixes the number of steps before step 1; one linear loop.

The run directory holds `config.json` (as given), `plan.json` (everything derived before
the first step), `metrics.jsonl`, `checkpoints/` and, written last and atomically,
`result.json` plus the final `model/` folder that plain `from_pretrained` loads.
Checkpoints hold model, optimiser, loader and RNG state, so a killed run resumes with
bit-identical losses on CPU. `torchrun` gives data parallelism (gloo on CPU, NCCL on GPU).

`plan` is the run's contract (its config, the plan fixed before step 1, the schedule, its
result); `build` makes the model and picks the attention kernel; `distributed` is the group
of processes and requests to stop; `checkpoint` writes, checks and reads checkpoints;
`peak` measures the MFU denominator; `loss` computes losses per modality; `metrics` reads
a run's logs back; `loop` is `simslm train` itself.
"""
