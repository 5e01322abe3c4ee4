"""Stage 2 of LitePred's pipeline: a graph's kernels on a platform (LitePred §3).

:mod:`.detect` partitions a :class:`~moonlit.litepred.graph.ir.Graph` into kernels and reads each
kernel's configuration (:class:`~moonlit.litepred.kernels.detect.KernelConfig`); which nodes fuse
into one kernel is data: ``rules/<platform>.yaml``, loaded and checked by :mod:`.fusion`, matched by
:mod:`.matching` with the named conditions of :mod:`.predicates`; :mod:`.params` reads a matched
kernel's parameters.
"""
