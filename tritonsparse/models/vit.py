"""A small Vision Transformer: patch embedding, pre-norm blocks, class token."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .mlp import scaled


class Attention(nn.Module):
    """Multi-head self-attention with ``qkv`` and ``proj`` linear projections (the sparse ones)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Small ViT for CIFAR-sized images.

    Args:
        num_classes, in_channels, image_size: the data.
        patch_size: side of a square patch (image_size must be a multiple).
        dim, depth, heads, mlp_ratio: the transformer. width_mult multiplies ``dim``
            (rounded down to a multiple of ``heads``) and the MLP width (Sparse Wide).
    The attention (``qkv``, ``proj``) and MLP (``fc1``, ``fc2``) projections are the
    sparse layers; ``default_dense_modules`` = ("patch_embed", "head").
    """

    default_dense_modules = ("patch_embed", "head")

    def __init__(self, num_classes=10, in_channels=3, image_size=32, patch_size=4, dim=192, depth=6, heads=3,
                 mlp_ratio=2.0, width_mult: float = 1.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        self.config = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                           patch_size=patch_size, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
                           width_mult=width_mult)
        d = max(heads, scaled(dim, width_mult) // heads * heads)
        mlp_dim = scaled(int(dim * mlp_ratio), width_mult)
        n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, d, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))
