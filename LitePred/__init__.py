"""LitePred — transferable kernel-level latency prediction (NSDI'24).

Not implemented yet: see the project issues and this folder's README.md.
"""
