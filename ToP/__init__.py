"""ToP — constraint-aware, ranking-distilled token pruning (KDD'23, arXiv 2306.14393).

Not implemented yet: see the project issues and this folder's README.md.
"""
