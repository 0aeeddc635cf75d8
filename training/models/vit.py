"""ViTPose-style plain ViT encoder (ViT-B by default), used frozen by the video pose models.

The layout and the parameter names are those of ViTPose's backbone (ViTAE-Transformer/ViTPose,
`mmpose/models/backbones/vit.py`), so that the `backbone.*` entries of a ViTPose checkpoint load strictly:

- `patch_embed.proj`: Conv2d(3, dim, 16, stride 16, padding 2). The padding of 2 on a 16x16 kernel with
  stride 16 gives H/16 x W/16 tokens for H, W divisible by 16 (the last 4 pixels reach no new patch).
- `pos_embed` (1, 1 + Hp*Wp, dim): absolute, with a slot for a class token that ViTPose never uses as a
  token; it adds `pos_embed[:, 1:] + pos_embed[:, :1]` to the patch tokens. Its size is fixed by the input
  size the encoder is built for (ViTPose does not resample it either).
- `blocks.{i}`: pre-norm transformer blocks `norm1`, `attn.qkv` (with bias), `attn.proj`, `norm2`,
  `mlp.fc1`, `mlp.fc2` (GELU, ratio 4); LayerNorm eps 1e-6.
- `last_norm`: a LayerNorm over the output tokens.

Attention is written as plain matmul / softmax / matmul (no scaled_dot_product_attention), which exports
to a handful of standard ONNX nodes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

VITPOSE_PREFIX = "backbone."
LAYER_NORM_EPS = 1e-6


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch_size: int = 16, padding: int = 2):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, patch_size, padding)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> channel-last tokens (B, Hp, Wp, dim)."""
        return self.proj(images).permute(0, 2, 3, 1)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax(torch.matmul(q * self.scale, k.transpose(-2, -1)), dim=-1)
        return self.proj(torch.matmul(attn, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """ViTPose backbone for one input size; frozen by default (no gradients, always in eval mode)."""

    def __init__(self, input_size: Tuple[int, int], dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, patch_size: int = 16, frozen: bool = True):
        super().__init__()
        h, w = input_size
        if h % patch_size or w % patch_size:
            raise ValueError(f"ViT encoder: input size {h}x{w} is not a multiple of the patch size {patch_size}")
        self.input_size = (h, w)
        self.grid = (h // patch_size, w // patch_size)
        self.dim = dim
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(dim, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.last_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.frozen = frozen
        self.reset_parameters()
        if frozen:
            self.requires_grad_(False)
            super().train(False)

    def reset_parameters(self) -> None:
        """ViTPose's initialisation (a ViTPose checkpoint replaces all of it)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def train(self, mode: bool = True) -> "ViTEncoder":
        return super().train(mode and not self.frozen)

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> channel-last features (B, H/16, W/16, dim) after last_norm."""
        x = self.patch_embed(images)
        b, hp, wp, c = x.shape
        x = x.reshape(b, hp * wp, c) + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            x = block(x)
        return self.last_norm(x).reshape(b, hp, wp, c)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, dim, H/16, W/16), as ViTPose's backbone returns it."""
        return self.forward_tokens(images).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------------------
# ViTPose checkpoints

def vitpose_state_dict(encoder: ViTEncoder) -> Dict[str, torch.Tensor]:
    """The encoder's weights under the key names of a ViTPose checkpoint (`backbone.` prefix)."""
    return {VITPOSE_PREFIX + k: v for k, v in encoder.state_dict().items()}


def _find_encoder(model: nn.Module) -> ViTEncoder:
    if isinstance(model, ViTEncoder):
        return model
    encoder = getattr(model, "backbone", None)
    if not isinstance(encoder, ViTEncoder):
        raise TypeError(f"load_vitpose_weights: {type(model).__name__} has no ViT encoder (expected a ViTEncoder "
                        f"or a model whose `backbone` is one)")
    return encoder


def _encoder_entries(source: Union[str, Path, dict]) -> Tuple[Dict[str, torch.Tensor], str]:
    """A ViTPose checkpoint (file or dict, optionally under 'state_dict') -> (encoder entries, source name)."""
    if isinstance(source, (str, Path)):
        from ...checkpoint import read_checkpoint   # reads .pth (state_dict / module. prefixes) and safetensors
        state_dict, _ = read_checkpoint(source)
        name = str(source)
    elif isinstance(source, dict):
        state_dict = source.get("state_dict", source) if isinstance(source.get("state_dict"), dict) else source
        name = "the given state dict"
    else:
        raise TypeError(f"load_vitpose_weights: expected a checkpoint path or a state dict, got "
                        f"{type(source).__name__}")
    state_dict = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    if any(k.startswith(VITPOSE_PREFIX) for k in state_dict):   # a whole pose model: keep its backbone
        state_dict = {k[len(VITPOSE_PREFIX):]: v for k, v in state_dict.items() if k.startswith(VITPOSE_PREFIX)}
    return state_dict, name


def load_vitpose_weights(model: nn.Module, source: Union[str, Path, dict]) -> ViTEncoder:
    """Load ViTPose weights into a ViTEncoder (or the `backbone` of a video pose model); returns the encoder.

    `source`: a ViTPose checkpoint file or state dict. Keys under `backbone.` are the encoder's (the head's
    `keypoint_head.*` entries are ignored); without that prefix every key must be an encoder key. The match
    is strict: any missing, unexpected or mis-shaped entry raises a ValueError that lists them.
    """
    encoder = _find_encoder(model)
    entries, name = _encoder_entries(source)
    expected = encoder.state_dict()
    for key, value in entries.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"ViTPose weights from {name}: entry {key!r} is {type(value).__name__}, not a tensor")
    pos = entries.get("pos_embed")
    if pos is not None and tuple(pos.shape) != tuple(expected["pos_embed"].shape):
        raise ValueError(
            f"ViTPose weights from {name}: pos_embed has shape {tuple(pos.shape)}, the encoder built for "
            f"{encoder.input_size[0]}x{encoder.input_size[1]} input needs {tuple(expected['pos_embed'].shape)} "
            f"(1 + {encoder.grid[0]}*{encoder.grid[1]} positions); build the model for the input size the "
            f"checkpoint was trained at (ViTPose-B: 256x192)")
    missing = [k for k in expected if k not in entries]
    unexpected = [k for k in entries if k not in expected]
    mis_shaped = [f"{k}: checkpoint {list(entries[k].shape)} vs encoder {list(v.shape)}"
                  for k, v in expected.items() if k in entries and entries[k].shape != v.shape]
    if missing or unexpected or mis_shaped:
        parts = [f"ViTPose weights from {name} do not fit the ViT encoder:"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mis_shaped)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
                parts.append(f"{len(items)} {label}: {shown}")
        raise ValueError("\n  ".join(parts))
    encoder.load_state_dict(entries, strict=True)
    return encoder
