"""Elastic operators of the ElasticViT supernet and the static layers they extract to.

Every elastic op is a :class:`moonlit.common.nn.elastic.ElasticModule` (the once-for-all contract):
weights at max size, ``active_*`` state set by the keyword-only ``set_active``, slicing in
``forward``, and ``get_active_subnet(in_channels)`` returning a plain static module whose output
equals the elastic one's.
"""

from .attention import (
                    AttentionLayer,
                    ElasticAttention,
                    levit_attention,
                    relative_position_index,
)
from .mbconv import ElasticMBConv, MBConvBlock
from .norms import (
                    ElasticTokenBatchNorm,
                    ElasticTokenNorm,
                    TokenBatchNorm,
                    TokenGroupNorm,
                    TokenNormKind,
                    make_token_norm,
)
from .stages import (
                    ClassifierHead,
                    ElasticClassifierHead,
                    ElasticConvStage,
                    ElasticViTStage,
                    ViTStage,
)
from .transformer import (
                    ElasticFFN,
                    ElasticTransformerBlock,
                    FeedForward,
                    TransformerBlock,
)

__all__ = [
    "AttentionLayer", "ClassifierHead", "ElasticAttention", "ElasticClassifierHead",
    "ElasticConvStage", "ElasticFFN", "ElasticMBConv", "ElasticTokenBatchNorm", "ElasticTokenNorm",
    "ElasticTransformerBlock", "ElasticViTStage", "FeedForward", "MBConvBlock", "TokenBatchNorm", "TokenGroupNorm",
    "TokenNormKind", "TransformerBlock", "ViTStage", "levit_attention", "make_token_norm",
    "relative_position_index",
]
