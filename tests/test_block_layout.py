"""The channel-last HRVMamba blocks compute what the official channel-first code computes.

The models run a branch's blocks channel-last (ChannelsLastBlocks) and the SS2D projections as grouped
1x1 convolutions. The reference here is written independently in the official code's order and layout:
NCHW tensors, LayerNorm2d as permute -> layer_norm -> permute, 1x1 convolutions, the cross-scan built with
stack/flip/cat into (B, 4, D, L), einsum projections and cross-merge from (B, 4, D, L).
"""
import pytest
import torch
import torch.nn.functional as F

from ssmpose.custom_ops import ops
from ssmpose.training.models.hrvmamba_blocks import ChannelsLastBlocks, HRVMambaBlock, HRVMambaSEBlock


def layer_norm_nchw(norm, x):
    return F.layer_norm(x.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias,
                        norm.eps).permute(0, 3, 1, 2)


def conv1x1(linear, x):
    return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)


def ss2d_official(m, x):
    x = conv1x1(m.in_proj, x)
    x = F.silu(m.conv2d(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    b, d, h, w = x.shape
    r, n = m.dt_rank, m.d_state
    xs = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
    xs = torch.cat([xs, xs.flip(-1)], dim=1)                                  # (B, 4, D, L)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, m.x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, m.dt_projs_weight)
    ys = ops.selective_scan(xs.reshape(b, 4 * d, h * w), dts.reshape(b, 4 * d, h * w), -torch.exp(m.A_logs.float()),
                            Bs.contiguous(), Cs.contiguous(), m.Ds.float(), m.dt_projs_bias.float().reshape(-1), True)
    ys = ys.reshape(b, 4, d, h * w)
    y = ys[:, 0:2] + ys[:, 2:4].flip(-1)
    y = y[:, 0].reshape(b, d, h, w) + y[:, 1].reshape(b, d, w, h).transpose(2, 3)
    y = layer_norm_nchw(m.out_norm, y)
    if m.se is not None:
        y = y * m.se.fc(y.mean(dim=(2, 3)))[:, :, None, None]
    return conv1x1(m.out_proj, y)


def multi_kernel_official(convs, x):
    """The four depthwise convolutions (kernels 3/5/7/9) on their channel groups, one by one."""
    parts = torch.split(x, convs.splits, dim=1)
    return torch.cat([F.conv2d(p, c.weight, c.bias, padding=c.kernel_size[0] // 2, groups=p.shape[1])
                      for c, p in zip(convs, parts)], dim=1)


def lpu_official(block, x):
    t = multi_kernel_official(block.conv2d, layer_norm_nchw(block.norm0, x))
    b, c, h, w = t.shape
    t = t.view(b, 4, c // 4, h, w).transpose(1, 2).reshape(b, c, h, w)   # channel shuffle, 4 groups
    return F.gelu(t)


def mlp_official(block, x):
    x = layer_norm_nchw(block.norm2, x)
    return conv1x1(block.mlp.fc2, F.gelu(conv1x1(block.mlp.fc1, x)))


def block_official(block, x):
    if isinstance(block, HRVMambaSEBlock):
        x = x + lpu_official(block, x + block.cpe1(x))
        x = x + ss2d_official(block.op, layer_norm_nchw(block.norm, x))
        x = x + block.cpe2(x)
        return x + mlp_official(block, x)
    x = x + lpu_official(block, x)
    x = x + ss2d_official(block.op, layer_norm_nchw(block.norm, x))
    return x + mlp_official(block, x)


def randomised(module, seed):
    """Non-trivial values for every parameter (the initialisation zeroes the DCNv4 offsets and A_logs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.05 if "offset_mask" in name else 0.3
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if name.endswith("norm.weight") else 0.0))
    return module.eval()


@pytest.mark.parametrize("block_cls, channels", [(HRVMambaBlock, 32), (HRVMambaSEBlock, 16), (HRVMambaBlock, 80)])
def test_channel_last_block_matches_official_order(block_cls, channels):
    torch.manual_seed(0)
    blocks = [randomised(block_cls(channels), seed) for seed in (1, 2)]
    x = torch.randn(2, channels, 7, 5)                      # H != W catches row/column mix-ups
    with torch.no_grad():
        expected = block_official(blocks[1], block_official(blocks[0], x))
        got = ChannelsLastBlocks(*blocks)(x)
        single = blocks[0](x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-5 * expected.abs().max().item())
    torch.testing.assert_close(single, block_official(blocks[0], x), rtol=0, atol=2e-5 * expected.abs().max().item())



@pytest.mark.parametrize("block_cls, channels", [(HRVMambaBlock, 32), (HRVMambaSEBlock, 16)])
def test_block_with_both_scan_paths_matches_official_order_in_float64(block_cls, channels):
    """SelectiveScan2D (the default) and the version-1 path both compute the official order; in float64 they
    agree with each other to float64 rounding."""
    block = randomised(block_cls(channels), 3).double()
    x = torch.randn(2, channels, 6, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = block_official(block, x)
        v2 = block(x)
        with ops.scan_2d(False):
            v1 = block(x)
    scale = expected.abs().max().item()
    torch.testing.assert_close(v2, v1, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(v2, expected, rtol=0, atol=2e-5 * scale)
