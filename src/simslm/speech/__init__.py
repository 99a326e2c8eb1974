"""Stage 1, speech: audio files, text, corpora and manifests; speech synthesised with espeak-ng; word alignment.

`audio` reads and writes 16 kHz mono; `text` splits words by one rule; `corpus` reads text
corpora; `manifest` is the JSONL format every later stage reads; `espeak` and `synth` turn
text into speech with exact word timings; `align` adds timings to real speech.
"""
