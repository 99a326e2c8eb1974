"""Stage 2, speech units: audio -> encoder features -> k-means ids -> deduplicated units.

`encoders` (logmel, mHuBERT-25Hz, HuBERT-base layer 9, by registry), `kmeans` (codebooks),
`extract` (fit, resumable sharded extraction, run-length deduplication with durations),
`quality` (PNMI and purities) and `vocoder` (units back to audio for the logmel encoder).
"""
