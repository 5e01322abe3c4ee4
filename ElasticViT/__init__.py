"""ElasticViT — conflict-aware supernet training for hybrid CNN+ViT models (ICCV'23, arXiv 2303.09730).

Not implemented yet: see the project issues and this folder's README.md.
"""
