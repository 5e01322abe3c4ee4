"""ElasticViT — conflict-aware supernet training for hybrid CNN+ViT models (ICCV'23, arXiv 2303.09730).

The pipeline as modules: ``space`` (the search space and subnet encoding), ``ops`` and ``supernet``
(elastic MBConv / attention stages, ``get_active_subnet``), ``models`` (the nine named models),
``flops`` (exact MAC and parameter counts), ``tables`` (offline FLOPs tables), ``sampling``
(complexity- and performance-aware samplers), ``teachers``/``train_step``/``train`` (supernet
training), ``search`` and ``latency`` (evolution under MACs or LitePred-predicted latency),
``evaluate``, ``quickstart``. See this folder's README.md.
"""
