"""Stage 3, token sequences: the extended vocabulary, interleaving, mixing and packing, loading.

`vocabulary` grows a text tokenizer by unit and marker tokens; `interleave` is the paper's
core mechanism (which words are spoken, and the tokens of one interleaved sample); `build`
mixes the streams and packs them into shards; `loader` reads them back, resumably; `show`
prints samples, chunks and statistics.
"""
