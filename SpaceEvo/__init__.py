"""SpaceEvo — INT8-quantization-friendly search-space design (ICCV'23, arXiv 2303.08308).

The pipeline as modules: ``space`` (hyperspaces, space and subnet encodings), ``ops`` (dynamic
blocks, LSQ+), ``lut`` (block look-up tables in the reference's CSV format), ``qt_score`` (the Q-T
score of a space on its LUTs), ``space_search`` (aging evolution over spaces). See this folder's
README.md for what runs and what is measured.
"""
