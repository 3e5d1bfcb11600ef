import math

import pytest
import torch

from lamda.attention import RelativeBias, relative_position_bucket


def t5_reference(relative_position: int, num_buckets=32, max_distance=128) -> int:
    """T5's _relative_position_bucket for one integer, bidirectional=False, written out plainly."""
    n = max(-relative_position, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return n
    val = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
    return min(val, num_buckets - 1)


@pytest.mark.parametrize("rel,bucket", [
    (0, 0), (-1, 1), (-15, 15), (-16, 16), (-20, 17), (-31, 21), (-32, 21), (-64, 26),
    (-100, 30), (-127, 31), (-128, 31), (-1000, 31),
    (1, 0), (50, 0),  # future keys: distance 0 (they are masked anyway)
])
def test_bucket_hand_checked_values(rel, bucket):
    assert relative_position_bucket(torch.tensor([rel])).item() == bucket


def test_bucket_matches_t5_everywhere():
    rel = torch.arange(-3000, 50)
    got = relative_position_bucket(rel).tolist()
    assert got == [t5_reference(r) for r in rel.tolist()]
    got16 = relative_position_bucket(rel, num_buckets=16, max_distance=64).tolist()
    assert got16 == [t5_reference(r, 16, 64) for r in rel.tolist()]


def test_bucket_matches_hf_transformers_t5():
    """Against the reference implementation itself: T5Attention in HF transformers (a dev
    dependency), unidirectional as in a decoder."""
    from transformers.models.t5.modeling_t5 import T5Attention
    rel = torch.arange(-5000, 50)
    for buckets, distance in ((32, 128), (16, 64), (32, 1024)):
        ref = T5Attention._relative_position_bucket(rel, bidirectional=False,
                                                    num_buckets=buckets, max_distance=distance)
        assert torch.equal(relative_position_bucket(rel, buckets, distance), ref)


def test_bucket_is_monotone_and_in_range():
    b = relative_position_bucket(-torch.arange(0, 5000))
    assert b.min() == 0 and b.max() == 31
    assert bool((b[1:] >= b[:-1]).all())


def test_materialised_bias_masks_future_and_padding():
    H = 2
    table = torch.randn(32, H)
    pos = torch.arange(4)
    key_mask = torch.tensor([[False, True, True, True]])
    bias = RelativeBias(table, pos, pos, key_mask, 32, 128).materialize(torch.float32)
    assert bias.shape == (1, H, 4, 4)
    for q in range(4):
        for k in range(4):
            v = bias[0, 0, q, k]
            if k > q or (k == 0 and q != 0):
                assert v == float("-inf")
            else:
                assert v == table[relative_position_bucket(torch.tensor(k - q)), 0]
    # the padding query at position 0 still sees itself: no empty row, no NaN
    assert torch.isfinite(bias[0, :, 0, 0]).all()
