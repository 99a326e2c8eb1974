"""Stage 2, speech units: audio -> encoder features -> k-means ids -> deduplicated units.

`encoders` (logmel, mHuBERT-25Hz, HuBERT-base layer 9, by registry), `kmeans` (codebooks),
`fit` (a codebook fitted on a corpus, or converted), `extract` (resumable sharded extraction),
`journal` (what a process that died held), `folder` (a units folder: run-length units with
durations, read back), `quality` (PNMI and purities) and `vocoder` (units back to audio for
the logmel encoder).
"""
