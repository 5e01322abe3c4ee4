"""Stage 1 of LitePred's pipeline: a model as a graph IR with static shapes (LitePred §3).

:mod:`.onnx_import` checks an ONNX file (or exports a torch module) and loads it,
:mod:`.shapes` fixes input dimensions and infers every tensor's shape, :mod:`.ir` is the
:class:`~moonlit.litepred.graph.ir.Graph` that kernel detection (:mod:`moonlit.litepred.kernels`) reads.
"""
