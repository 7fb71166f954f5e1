"""torchvision's vit_b_16 in plain torch, same parameter names, with attention written as
plain MatMul/Softmax so the ONNX export shows them to the compiler."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter layout.

    Written with explicit matmuls + softmax (not nn.MultiheadAttention /
    scaled_dot_product_attention) so the ONNX export contains plain
    MatMul/Softmax nodes that downstream passes can see and map. Reshapes use
    the static sequence length (fixed by image_size) and -1 for the batch, so
    the exported graph has constant Reshape shapes instead of Shape/Slice/Concat
    arithmetic even with a dynamic batch axis. ``head_dim`` (default dim / num_heads) lets
    elastic ViTs vary the number of heads at a fixed head size (inner width heads * head_dim).
    """

    def __init__(
        self, dim: int, num_heads: int, seq_length: int, head_dim: int | None = None
    ) -> None:
        super().__init__()
        if head_dim is None and dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.seq_length = seq_length
        self.num_heads = num_heads
        self.head_dim = dim // num_heads if head_dim is None else head_dim
        self.dim = num_heads * self.head_dim  # inner width of q, k, v
        self.scale = self.head_dim**-0.5
        # Packed [q; k; v] rows, as in nn.MultiheadAttention.
        self.in_proj_weight = nn.Parameter(torch.empty(3 * self.dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * self.dim))
        self.out_proj = nn.Linear(self.dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, h, hd = self.seq_length, self.num_heads, self.head_dim
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3*D)
        qkv = qkv.reshape(-1, n, 3, h, hd).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, hd)
        attn = torch.softmax(torch.matmul(q * self.scale, k.transpose(-2, -1)), dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(-1, n, self.dim)  # (B, N, D)
        return self.out_proj(out)


class MLPBlock(nn.Sequential):
    """Linear -> GELU -> Dropout -> Linear -> Dropout (torchvision MLPBlock)."""

    def __init__(self, dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self,
        num_heads: int,
        dim: int,
        mlp_dim: int,
        dropout: float,
        seq_length: int,
        head_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = SelfAttention(dim, num_heads, seq_length, head_dim)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attention(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Learned positional embedding + stack of encoder blocks + final LayerNorm."""

    def __init__(
        self, seq_length: int, num_layers: int, num_heads: int, dim: int, mlp_dim: int
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(
            OrderedDict(
                (f"encoder_layer_{i}", EncoderBlock(num_heads, dim, mlp_dim, 0.0, seq_length))
                for i in range(num_layers)
            )
        )
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """torchvision vit_b_16: conv patchify, class token, encoder, linear head on the token."""

    def __init__(
        self,
        image_size: int,
        num_classes: int,
        patch_size: int = 16,
        num_layers: int = 12,
        num_heads: int = 12,
        hidden_dim: int = 768,
        mlp_dim: int = 3072,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.conv_proj = nn.Conv2d(
            in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size
        )
        self.class_token = nn.Parameter(torch.empty(1, 1, hidden_dim))
        self.num_patches = (image_size // patch_size) ** 2
        seq_length = self.num_patches + 1  # patches + class token
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reshape with static sizes (not flatten) keeps the ONNX Reshape shape constant.
        x = self.conv_proj(x).reshape(-1, self.hidden_dim, self.num_patches).transpose(1, 2)
        cls = self.class_token.expand(x.shape[0], -1, -1)
        x = self.encoder(torch.cat([cls, x], dim=1))
        return self.heads(x[:, 0])
