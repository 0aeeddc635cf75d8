"""Small building blocks shared by the model families (channel-first, NCHW)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_channels_last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """The same norm over the last dimension of a (B, H, W, C) tensor."""
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class Linear2d(nn.Linear):
    """nn.Linear applied as a 1x1 convolution; the weight stays 2-D [out, in] like the official code."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def conv_channels_last(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply an NCHW convolution module to a (B, H, W, C) tensor; returns (B, H, W, C')."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or with rate 0)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        noise = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * noise / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class Mlp(nn.Module):
    def __init__(self, channels: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear2d(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden, channels)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1.forward_channels_last(x)))
        return self.drop(self.fc2.forward_channels_last(x))


def channel_shuffle_to_channels_last(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle of an NCHW tensor, returned channel-last (B, H, W, C): channel
    g*(C/groups)+i moves to i*groups+g. Shuffle and layout change are one permutation, so one copy."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).permute(0, 3, 4, 2, 1).reshape(b, h, w, c)


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True):
    """Conv (no bias) + BatchNorm [+ ReLU] as an nn.Sequential with keys 0, 1 (2)."""
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """ResNet bottleneck (expansion 4) with the mmcv key names conv1..3 / bn1..3 / downsample."""

    expansion = 4

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        mid = out_ch // self.expansion
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = conv_bn(in_ch, out_ch, 1, stride, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)
