"""The parts cache of NAS candidates (moonlit.litepred.predict.parts): JSONL round trip on toy parts,
unknown kernel types."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch import nn

from moonlit.litepred.predict.parts import ModelPart, PartKernelCache


def test_unknown_kernel_types_are_left_out_and_counted() -> None:
    part = ModelPart("toy-head:c8h4", lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)),
                     (1, 8, 4, 4))
    cache = PartKernelCache("ort-fp32")
    # by hand: conv+relu, global average pool, gemm; a part listed three times counts three times
    assert [c.type for c in cache.configs(part)] == ["conv", "gap", "fc"]
    rows = cache.rows([part, part, part], known_types=["conv", "fc"])
    assert sorted(rows) == ["conv", "fc"] and len(rows["conv"]) == 3
    assert dict(cache.unpredicted) == {"gap": 3}


def test_jsonl_cache_round_trip_skips_exports(tmp_path) -> None:
    path = tmp_path / "parts.jsonl"
    built: list[str] = []

    def part(channels: int, side: int) -> ModelPart:
        def build() -> nn.Module:
            built.append(f"{channels}x{side}")
            return nn.Sequential(nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels),
                                 nn.ReLU())
        return ModelPart(f"toy-conv:c{channels}h{side}", build, (1, channels, side, side))

    model = [part(4, 8), part(4, 8), part(8, 8)]
    first = PartKernelCache("ort-fp32", path)
    rows = first.rows(model)
    assert built == ["4x8", "8x8"] and first.stats["detected"] == 2
    # a conv+bn+relu per part, as the hand count says: 3 conv rows with cin 4, 4, 8
    assert rows["conv"].shape[0] == 3
    assert [c["cin"] for c in first.model_configs(model)] == [4, 4, 8]
    with path.open("a") as handle:
        handle.write(json.dumps({"format": "moonlit-litepred-part-kernels", "platform": "ort-int8",
                                 "rules": "x", "key": "toy-conv:c4h8", "kernels": []}) + "\n")
        handle.write('{"format": "moonlit-litepred-part-kern')  # an interrupted write
    second = PartKernelCache("ort-fp32", path)
    assert second.stats["loaded"] == 2 and len(second) == 2 and "toy-conv:c8h8" in second
    again = second.rows(model)
    assert built == ["4x8", "8x8"] and second.stats["detected"] == 0
    for kernel_type, matrix in rows.items():
        np.testing.assert_array_equal(again[kernel_type], matrix)
    assert len(PartKernelCache("ort-int8", path)) == 0  # other rules: nothing reused
    path.write_text('{"format": "something-else"}\n')
    with pytest.raises(ValueError, match="expected 'moonlit-litepred-part-kernels'"):
        PartKernelCache("ort-fp32", path)
