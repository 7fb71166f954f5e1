"""The ViT's attention is torch's multi-head attention, and an elastic subnet's fewer heads are
exactly the supernet's leading heads (the checks behind the vit-chars training diagnosis)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cimc.models.elastic import family
from cimc.models.vit import SelfAttention

# float32 sums of <= 64 products of O(1) terms in a different order: a few ulps, far below 1e-5.
# (With std-1 weights the logits reach ~50 and the softmax amplified the kernels' ulps to 3e-4
# on an AVX2-only CPU.)
TOL = {"rtol": 1e-5, "atol": 1e-5}


def test_self_attention_is_torch_multihead_attention():
    g = torch.Generator().manual_seed(0)
    ours = SelfAttention(dim=64, num_heads=4, seq_length=9)
    ref = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    with torch.no_grad():  # weights of std 1/sqrt(64), as a trained layer's: O(1) logits
        for t in (ours.in_proj_weight, ours.in_proj_bias):
            t.copy_(torch.randn(t.shape, generator=g) / 8)
        ours.out_proj.weight.copy_(torch.randn(64, 64, generator=g) / 8)
        ours.out_proj.bias.copy_(torch.randn(64, generator=g))
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(3, 9, 64, generator=g)
        torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0], **TOL)


def test_head_dim_path_is_per_head_scaled_dot_product_attention():
    """3 heads of 16 on a width-64 stream: inner width 48, softmax(q k^T / 4) v per head."""
    g = torch.Generator().manual_seed(1)
    att = SelfAttention(dim=64, num_heads=3, seq_length=5, head_dim=16)
    with torch.no_grad():
        for t in (att.in_proj_weight, att.in_proj_bias, att.out_proj.weight, att.out_proj.bias):
            t.copy_(torch.randn(t.shape, generator=g) * 0.3)
        x = torch.randn(2, 5, 64, generator=g)
        q, k, v = F.linear(x, att.in_proj_weight, att.in_proj_bias).split(48, dim=-1)
        heads = [
            F.scaled_dot_product_attention(*(t[..., 16 * h : 16 * (h + 1)] for t in (q, k, v)))
            for h in range(3)
        ]
        expected = att.out_proj(torch.cat(heads, dim=-1))
        torch.testing.assert_close(att(x), expected, **TOL)


def test_fewer_heads_are_the_supernets_leading_heads():
    """A subnet with 2 heads in block 0 computes the supernet with heads 2 and 3 of block 0 cut
    off (their out_proj columns zeroed): the q, k and v rows are sliced per third."""
    fam = family("elastic-vit-chars", trained=False)
    config = fam.largest() | {"heads0": 2}
    x = fam.example(4)
    cut = fam.subnet(fam.largest())
    with torch.no_grad():
        cut.encoder.layers[0].self_attention.out_proj.weight[:, 32:] = 0
        torch.testing.assert_close(fam.subnet(config)(x), cut(x), **TOL)
        assert not torch.allclose(fam.subnet(fam.largest())(x), cut(x), **TOL)


def test_logits_depend_on_the_image():
    """At initialisation the class token already reads the patches: the logits of different
    images differ by a sizeable fraction of their spread."""
    fam = family("elastic-vit-chars", trained=False)
    with torch.no_grad():
        logits = fam.subnet(fam.largest())(fam.example(64))
    assert logits.std(0).mean() > 0.1 * logits.std()
