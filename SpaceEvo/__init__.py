"""SpaceEvo — INT8-quantization-friendly search-space design (ICCV'23, arXiv 2303.08308).

Not implemented yet: see the project issues and this folder's README.md.
"""
