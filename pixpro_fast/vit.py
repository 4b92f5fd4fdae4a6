"""ViT encoders (timm's VisionTransformer, random init) that return patch tokens.

No class token; a learned position embedding for the native grid (224 px / 16 = 14 x 14),
resized bilinearly (antialiased, like ``jax.image.resize``) for other input sizes; stochastic
depth rising linearly over the blocks. ``forward(x, keep)`` can run the blocks on a kept
subset of tokens only (token dropping after the position embedding).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# name -> (embed_dim, depth, heads); all patch 16, MLP ratio 4.
VIT_ARCHS: dict[str, tuple[int, int, int]] = {
    "vit_tiny_patch16": (192, 12, 3),
    "vit_small_patch16": (384, 12, 6),
    "vit_base_patch16": (768, 12, 12),
}
PATCH = 16


def timm_name(arch: str) -> str:
    """The timm model name whose layout the encoder's state_dict follows (any img_size)."""
    return f"{arch}_224"


def timm_kwargs(img_size: int = 224) -> dict:
    """Arguments to ``timm.create_model(timm_name(arch), pretrained=False, **timm_kwargs())``."""
    return dict(img_size=img_size, class_token=False, global_pool="", num_classes=0)


class ViTEncoder(nn.Module):
    """Patch-token ViT. ``forward(x) -> (B, N, D)``; ``feature_map(x) -> (B, D, h, w)``;
    ``forward_stages(x)``: the token maps after every block, for dense probing."""

    def __init__(self, arch: str = "vit_small_patch16", img_size: int = 224, stochastic_depth: float = 0.1):
        super().__init__()
        if arch not in VIT_ARCHS:
            raise ValueError(f"unknown ViT arch {arch!r}; choose one of {sorted(VIT_ARCHS)}")
        if img_size % PATCH:
            raise ValueError(f"img_size must be a multiple of {PATCH}, got {img_size}")
        from timm.models.vision_transformer import VisionTransformer
        dim, depth, heads = VIT_ARCHS[arch]
        self.arch, self.img_size, self.dim = arch, img_size, dim
        self.grid = img_size // PATCH
        self.vit = VisionTransformer(img_size=img_size, patch_size=PATCH, embed_dim=dim, depth=depth,
                                     num_heads=heads, drop_path_rate=stochastic_depth,
                                     dynamic_img_size=True, **{k: v for k, v in timm_kwargs(img_size).items()
                                                              if k != "img_size"})

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """(1, h*w, D): the native-grid embedding, bilinearly resized when the grid differs."""
        pos = self.vit.pos_embed
        if (h, w) == (self.grid, self.grid):
            return pos
        grid = pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return grid.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(pos.dtype)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embedding plus position embedding: ((B, h*w, D), (h, w))."""
        if x.shape[-1] % PATCH or x.shape[-2] % PATCH:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not a multiple of the patch size {PATCH}")
        t = self.vit.patch_embed(x)                                    # (B, h, w, D)
        b, h, w, d = t.shape
        return t.reshape(b, h * w, d) + self.position_embedding(h, w), (h, w)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised patch tokens (B, N, D); with ``keep`` (B, k) indices only those k tokens."""
        t, _ = self.embed(x)
        if keep is not None:
            t = t.gather(1, keep[..., None].expand(-1, -1, t.shape[-1]))
        t = self.vit.norm_pre(t)
        t = self.vit.blocks(t)
        return self.vit.norm(t)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens as a (B, D, h, w) map, for dense probing."""
        h, w = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        t = self.forward(x)
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[-1], h, w)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Patch tokens as (B, D, H/16, W/16) maps: ``block1`` .. ``blockN`` after each block (before
        the final norm) and ``tokens``, the normalised output of the last block (what
        :meth:`forward` returns), the interface of ``ResNetTrunk.forward_stages``."""
        h, w = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        t = self.vit.norm_pre(self.embed(x)[0])

        def as_map(tokens):
            return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], h, w)
        out = {}
        for i, block in enumerate(self.vit.blocks, 1):
            t = block(t)
            out[f"block{i}"] = as_map(t)
        out["tokens"] = as_map(self.vit.norm(t))
        return out

    def timm_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights loadable into ``timm.create_model(timm_name(arch), pretrained=False,
        **timm_kwargs(img_size))``."""
        return {k: v.detach().clone() for k, v in self.vit.state_dict().items()}
