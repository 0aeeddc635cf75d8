"""GLSMamba (glsmamba_b / glsmamba_blr) and its ViTPose-style encoder.

The scan layouts are checked against a slow float64 loop that walks the visiting orders written out in
the module docstring (explicit Python loops over positions, a naive S6 recurrence per sequence); the
parameter and FLOP counts against hand-written formulas and the paper's figures (docs/glsmamba_notes.md).
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import ssmpose
from ssmpose.checkpoint import CheckpointError
from ssmpose.custom_ops import reference
from ssmpose.training.models import list_models
from ssmpose.training.models import glsmamba as gm
from ssmpose.training.models.flops import count_flops
from ssmpose.training.models.vit import ViTEncoder, load_vitpose_weights, vitpose_state_dict

NAMES = ("glsmamba_b", "glsmamba_blr")
PAPER_TRAINABLE = 9.8e6
PAPER_GFLOPS = {"glsmamba_b": 138.9, "glsmamba_blr": 85.1}
SMALL = {"glsmamba_b": (64, 48), "glsmamba_blr": (128, 96)}   # the smallest input each variant takes


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def frozen(model):
    return sum(p.numel() for p in model.parameters() if not p.requires_grad)


@pytest.fixture(scope="module")
def small_b():
    torch.manual_seed(0)
    model = ssmpose.build_model("glsmamba_b", input_size=SMALL["glsmamba_b"]).eval()
    with torch.no_grad():   # non-trivial offsets/masks of the merge (a few pixels) and SSM parameters
        for name, p in model.named_parameters():
            if "offsets" in name or "A_logs" in name or "Ds" in name:
                p.add_(torch.randn_like(p) * (0.02 if name.endswith("offsets.weight") else 0.3))
    return model


def clip(batch=1, size=(64, 48), seed=0):
    return torch.randn(batch, 5, 3, *size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# Registry, parameters, FLOPs

def vit_b_parameters(grid_h, grid_w, dim=768, depth=12, mlp=3072):
    block = 2 * 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (dim * mlp + mlp) + (mlp * dim + dim)
    return (3 * 16 * 16 * dim + dim) + (1 + grid_h * grid_w) * dim + depth * block + 2 * dim


def glsmamba_trainable(c=256, d_state=1, frames=5, keypoints=17, groups=8):
    d, r, n = 2 * c, math.ceil(c / 16), d_state
    pair = 2 * (r + 2 * n) * d + 2 * d * r + 2 * d + 2 * d * n + 2 * d
    width = math.ceil(groups * 27 / 8) * 8
    merge = 2 * (d * width + width)
    common = (2 * c + c * 2 * d + (9 * d + d + 2 * d) + 2 * d + d * c + 2 * c
              + (c * 4 * c + 4 * c + 4 * c * c + c))
    gsm = common + (frames * c * c + c + c * frames * c + frames * c) + 3 * pair + merge
    lrm = common + pair
    return (768 * c + c) + 4 * gsm + 2 * lrm + 2 * c + (c * keypoints + keypoints)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts(name):
    with torch.device("meta"):
        model = ssmpose.build_model(name)
    assert name in list_models("pose")
    assert trainable(model) == glsmamba_trainable()
    assert abs(trainable(model) - PAPER_TRAINABLE) <= 0.1 * PAPER_TRAINABLE
    assert frozen(model) == vit_b_parameters(16, 12) == 85_794_816     # the whole ViT-B encoder, frozen
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_both_variants_have_the_same_parameters():
    with torch.device("meta"):
        b, blr = (ssmpose.build_model(n) for n in NAMES)
    assert [(k, v.shape) for k, v in b.state_dict().items()] == [(k, v.shape) for k, v in blr.state_dict().items()]


def vit_b_macs(frames, grid_h, grid_w, dim=768, depth=12, mlp=3072):
    tokens = grid_h * grid_w
    per_layer = tokens * (dim * 3 * dim + dim * dim + 2 * dim * mlp) + 2 * tokens * tokens * dim
    return frames * (tokens * 3 * 16 * 16 * dim + depth * per_layer)


@pytest.mark.parametrize("name,expected_gflops", [("glsmamba_b", 196.797), ("glsmamba_blr", 92.636)])
def test_flops_at_256x192(name, expected_gflops):
    """Multiply-adds per 5-frame clip (docs/glsmamba_notes.md tables them against the paper)."""
    with torch.device("meta"):
        model = ssmpose.build_model(name)
    total = count_flops(model, torch.empty(1, 5, 3, 256, 192, device="meta"))["total"]
    encoder = count_flops(model.backbone, torch.empty(5, 3, 256, 192, device="meta"))["total"]
    assert encoder == vit_b_macs(5, 16, 12)                  # 85.50 G: ViT-B on 5 frames
    assert total / 1e9 == pytest.approx(expected_gflops, abs=0.002)
    # ours over the paper's: B counts 42% more (the paper's Mamba part is ~54 G, ours 111 G), BLR 9% more
    assert 1.0 < total / 1e9 / PAPER_GFLOPS[name] < 1.45


# ---------------------------------------------------------------------------------------------------------
# Forward, backward, contract

def test_meta_and_options():
    with torch.device("meta"):
        model = ssmpose.build_model("glsmamba_b", input_size=(128, 96), dataset="posetrack18")
        reference_meta = ssmpose.build_model("hrvmamba_tiny").meta
        mpii = ssmpose.build_model("glsmamba_blr", input_size=(128, 96), dataset="mpii")
    assert model.input_size == (128, 96) and model.num_frames == 5
    assert set(model.meta) == (set(reference_meta) - {"dcn_variant"}) | {"num_frames"}
    assert model.meta["num_frames"] == 5 and model.meta["dataset"] == "posetrack18"
    assert model.meta["codec"]["heatmap_size"] == [32, 24]
    assert mpii.head.out_channels == 16 and mpii.meta["num_keypoints"] == 16


def test_forward_backward_and_frozen_encoder(small_b):
    model = copy.deepcopy(small_b).train()
    assert not model.backbone.training                      # the encoder stays in eval mode
    out = model(clip())
    assert out.shape == (1, 17, 16, 12) and torch.isfinite(out).all()
    assert list(out.shape[-2:]) == model.meta["codec"]["heatmap_size"]
    out.square().mean().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(g.abs().sum() > 0 for g in grads.values())


def test_blr_forward_at_its_smallest_input():
    model = ssmpose.build_model("glsmamba_blr", input_size=SMALL["glsmamba_blr"]).eval()
    with torch.no_grad():
        out = model(clip(size=SMALL["glsmamba_blr"]))
    assert out.shape == (1, 17, 32, 24) and torch.isfinite(out).all()
    assert model.features(clip(size=SMALL["glsmamba_blr"])).shape == (1, 5, 8, 6, 256)


def test_neighbour_frames_and_their_order_change_the_centre_prediction(small_b):
    x = clip(seed=1)
    changed, swapped = x.clone(), x.clone()
    changed[:, 0] = torch.randn(changed[:, 0].shape, generator=torch.Generator().manual_seed(5))
    swapped[:, [0, 1]] = x[:, [1, 0]]
    with torch.no_grad():
        base, after_change, after_swap = small_b(torch.cat([x, changed, swapped]))
        alone = small_b(x)[0]
    scale = base.abs().max()
    torch.testing.assert_close(alone, base, rtol=1e-4, atol=1e-5 * scale)   # clips of a batch stay apart
    assert (after_change - base).abs().max() > 1e-2 * scale
    assert (after_swap - base).abs().max() > 1e-2 * scale


@pytest.mark.parametrize("bad,error,match", [
    (torch.randn(1, 3, 64, 48), ValueError, "got a 4-D tensor"),
    (torch.randn(1, 3, 3, 64, 48), ValueError, "expected 5 frames"),
    (torch.randn(1, 5, 4, 64, 48), ValueError, "3 colour channels"),
    (torch.zeros(1, 5, 3, 64, 48, dtype=torch.uint8), TypeError, "floating-point"),
    (torch.randn(1, 5, 3, 64, 40), ValueError, "width a multiple of 48"),
    (torch.randn(1, 5, 3, 48, 48), ValueError, "height must be a multiple of 32"),
    ([[0.0]], TypeError, "torch.Tensor"),
])
def test_bad_input_is_refused_with_the_model_name(small_b, bad, error, match):
    with pytest.raises(error, match=match) as info:
        small_b(bad)
    assert "glsmamba_b" in str(info.value)


@pytest.mark.parametrize("name,size,match", [("glsmamba_b", (64, 40), "multiple of 48"),
                                             ("glsmamba_blr", (64, 48), "multiple of 128"),
                                             ("glsmamba_blr", (256, 144), "multiple of 96")])
def test_input_size_must_fit_patches_and_windows(name, size, match):
    with pytest.raises(ValueError, match=match) as info:
        ssmpose.build_model(name, input_size=size)
    assert name in str(info.value)


@pytest.mark.slow
def test_torch_export_with_clips_and_a_dynamic_batch(small_b):
    """What the exporter traces: a (batch, 5, 3, H, W) input, batch symbolic."""
    program = torch.export.export(small_b, (clip(batch=2),), strict=False,
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    x = clip(batch=3, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), small_b(x), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Scan layouts against a slow loop over the documented visiting orders

def visiting_orders(kind, t, h, w, window=None):
    """{direction: [sequence of (frame, row, column)]}, written out position by position."""
    if kind == "unified":
        return {0: [[(f, r, c) for r in range(h) for f in range(t) for c in range(w)]],
                1: [[(f, r, c) for f in range(t) for c in range(w) for r in range(h)]]}
    if kind == "spatial":
        forward = [[(f, r, c) for r in range(h) for c in range(w)] for f in range(t)]
    elif kind == "temporal":
        forward = [[(f, r, c) for f in range(t)] for r in range(h) for c in range(w)]
    elif kind == "window":
        wh, ww = window
        forward = [[(f, r0 + r, c0 + c) for f in range(t) for r in range(wh) for c in range(ww)]
                   for r0 in range(0, h, wh) for c0 in range(0, w, ww)]
    return {0: forward, 1: [seq[::-1] for seq in forward]}


def naive_pair(pair, x, orders):
    """Per direction: per-token x_proj/dt_proj, softplus, then h = exp(dt A) h + dt B u, y = C.h + D u along
    each sequence, from a zero state; outputs summed at their positions. x (B, T, H, W, D) float64."""
    d, r, n = pair.d_inner, pair.dt_rank, pair.d_state
    out = torch.zeros_like(x)
    for k in (0, 1):
        w_x, w_dt, bias = pair.x_proj_weight[k], pair.dt_projs_weight[k], pair.dt_projs_bias[k]
        a = -torch.exp(pair.A_logs[k * d:(k + 1) * d])
        skip = pair.Ds[k * d:(k + 1) * d]
        for b in range(x.shape[0]):
            for sequence in orders[k]:
                state = x.new_zeros(d, n)
                for f, row, col in sequence:
                    u = x[b, f, row, col]
                    proj = w_x @ u
                    dt = F.softplus(w_dt @ proj[:r] + bias)
                    state = torch.exp(dt[:, None] * a) * state + (dt * u)[:, None] * proj[r:r + n][None, :]
                    out[b, f, row, col] += state @ proj[r + n:] + skip * u
    return out


def randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def test_global_scan_paths_follow_the_documented_orders():
    t, h, w, d = 3, 4, 6, 4
    scan = randomise(gm.GlobalScan(d, dt_rank=2, d_state=2, merge_groups=4).double())
    x = torch.randn(2, t, h, w, d, dtype=torch.float64)
    with torch.no_grad():
        y_u, y_s, y_t = scan.streams(x)
        for got, pair, kind in ((y_u, scan.unified, "unified"), (y_s, scan.spatial, "spatial"),
                                (y_t, scan.temporal, "temporal")):
            torch.testing.assert_close(got, naive_pair(pair, x, visiting_orders(kind, t, h, w)),
                                       rtol=1e-9, atol=1e-9, msg=kind)


def test_window_scan_follows_the_documented_order():
    t, h, w, d = 3, 4, 6, 3
    scan = randomise(gm.WindowScan(d, dt_rank=2, d_state=2, window=(2, 3)).double())
    x = torch.randn(2, t, h, w, d, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(scan(x), naive_pair(scan.tubes, x, visiting_orders("window", t, h, w, (2, 3))),
                                   rtol=1e-9, atol=1e-9)


def test_temporal_scan_order_matters():
    scan = randomise(gm.GlobalScan(4, dt_rank=2, d_state=2, merge_groups=4).double())
    x = torch.randn(1, 5, 4, 6, 4, dtype=torch.float64)
    swapped = x[:, [1, 0, 2, 3, 4]]
    with torch.no_grad():
        centre, centre_swapped = scan.streams(x)[2][:, 2], scan.streams(swapped)[2][:, 2]
    assert (centre - centre_swapped).abs().max() > 1e-3


def shifted_loop(y, groups):
    """temporal_shift written per frame and per group."""
    b, t, h, w, d = y.shape
    gc = d // groups
    out = torch.zeros_like(y)
    for g in range(groups):
        step = -1 if g < groups // 4 else (1 if g >= groups - groups // 4 else 0)
        for f in range(t):
            if 0 <= f + step < t:
                out[:, f, :, :, g * gc:(g + 1) * gc] = y[:, f + step, :, :, g * gc:(g + 1) * gc]
    return out


def test_modulated_merge_against_the_reference_operator():
    b, t, h, w, d, groups = 2, 3, 5, 4, 16, 8
    merge = gm.ModulatedMerge(d, groups).double()
    y_u, y_s, y_t = (torch.randn(b, t, h, w, d, dtype=torch.float64) for _ in range(3))
    with torch.no_grad():   # at initialisation the merge is y_u + y_s + shifted y_t
        torch.testing.assert_close(merge(y_u, y_s, y_t), y_u + y_s + shifted_loop(y_t, groups))
        for linear in (merge.spatial_offsets, merge.temporal_offsets):
            linear.weight.copy_(torch.randn_like(linear.weight) * 0.3)
        guide = (y_u + y_s + y_t).reshape(-1, h, w, d)
        expected = y_u.clone()
        for value, linear in ((y_s, merge.spatial_offsets), (shifted_loop(y_t, groups), merge.temporal_offsets)):
            expected += reference.deform_aggregate_reference(
                value.reshape(-1, h, w, d), linear(guide), 3, 3, 1, 1, 1, 1, 1, 1, groups, d // groups, 1.0,
                0).reshape(b, t, h, w, d)
        torch.testing.assert_close(merge(y_u, y_s, y_t), expected, rtol=1e-9, atol=1e-9)


def test_channel_attention_weights_each_frame_and_channel():
    ca = randomise(gm.SequentialChannelAttention(4, 3).double())
    x = torch.randn(2, 3, 5, 6, 4, dtype=torch.float64)
    descriptor = torch.stack([x[:, f].mean(dim=(1, 2)) for f in range(3)], dim=1).reshape(2, 12)   # [f0 | f1 | f2]
    weights = torch.sigmoid(ca.fc2(torch.relu(ca.fc1(descriptor)))).reshape(2, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(ca(x), x * weights[:, :, None, None, :])


# ---------------------------------------------------------------------------------------------------------
# The ViT encoder and ViTPose weights

VITPOSE_B_KEYS = {   # names and shapes of a ViTPose-B (256x192) checkpoint's backbone entries
    "backbone.patch_embed.proj.weight": (768, 3, 16, 16), "backbone.patch_embed.proj.bias": (768,),
    "backbone.pos_embed": (1, 193, 768),
    "backbone.blocks.0.norm1.weight": (768,), "backbone.blocks.0.attn.qkv.weight": (2304, 768),
    "backbone.blocks.0.attn.qkv.bias": (2304,), "backbone.blocks.0.attn.proj.weight": (768, 768),
    "backbone.blocks.11.norm2.bias": (768,), "backbone.blocks.11.mlp.fc1.weight": (3072, 768),
    "backbone.blocks.11.mlp.fc2.weight": (768, 3072), "backbone.last_norm.weight": (768,),
}


def test_encoder_uses_vitpose_key_names():
    with torch.device("meta"):
        encoder = ViTEncoder((256, 192))
    keys = {k: tuple(v.shape) for k, v in vitpose_state_dict(encoder).items()}
    assert all(keys[k] == shape for k, shape in VITPOSE_B_KEYS.items())
    assert len(keys) == 3 + 12 * 12 + 2     # patch_embed (2), pos_embed, 12 blocks of 12, last_norm (2)


def vit_functional(enc, images):
    """The same ViT written with scaled_dot_product_attention and functional layers."""
    x = F.conv2d(images, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias, stride=16, padding=2)
    b, c, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2) + enc.pos_embed[:, 1:] + enc.pos_embed[:, :1]
    heads = enc.blocks[0].attn.num_heads
    for blk in enc.blocks:
        y = F.layer_norm(x, (c,), blk.norm1.weight, blk.norm1.bias, 1e-6)
        q, k, v = F.linear(y, blk.attn.qkv.weight, blk.attn.qkv.bias).split(c, dim=-1)
        q, k, v = (z.reshape(b, -1, heads, c // heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        x = x + F.linear(y, blk.attn.proj.weight, blk.attn.proj.bias)
        y = F.layer_norm(x, (c,), blk.norm2.weight, blk.norm2.bias, 1e-6)
        x = x + blk.mlp.fc2(F.gelu(blk.mlp.fc1(y)))
    x = F.layer_norm(x, (c,), enc.last_norm.weight, enc.last_norm.bias, 1e-6)
    return x.transpose(1, 2).reshape(b, c, gh, gw)


def test_encoder_matches_a_functional_vit():
    encoder = randomise(ViTEncoder((64, 48), dim=64, depth=2, num_heads=4).double(), seed=3)
    images = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    with torch.no_grad():
        out = encoder(images)
        assert out.shape == (2, 64, 4, 3)
        torch.testing.assert_close(out, vit_functional(encoder, images), rtol=1e-10, atol=1e-10)


def small_encoder(seed):
    torch.manual_seed(seed)
    return ViTEncoder((64, 48), dim=64, depth=2, num_heads=4)


def test_vitpose_weights_round_trip(tmp_path, small_b):
    source = randomise(small_encoder(1), seed=7)
    checkpoint = {"meta": {"mmpose_version": "0.24.0"},
                  "state_dict": {**vitpose_state_dict(source), "keypoint_head.final_layer.weight": torch.zeros(17, 256)}}
    path = tmp_path / "vitpose.pth"
    torch.save(checkpoint, path)
    images = torch.randn(2, 3, 64, 48)
    for given in (path, checkpoint, source.state_dict()):   # file, mmpose dict, bare encoder keys
        target = small_encoder(2)
        assert load_vitpose_weights(target, given) is target
        assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))
        assert all(not p.requires_grad for p in target.parameters())
        with torch.no_grad():
            torch.testing.assert_close(target(images), source(images), rtol=0, atol=0)
    # into a pose model: its encoder is `backbone`, so the ViTPose keys are the model's own
    model = copy.deepcopy(small_b)
    full = {"state_dict": {k: v.clone() + 1.0 for k, v in vitpose_state_dict(model.backbone).items()}}
    assert load_vitpose_weights(model, full) is model.backbone
    assert torch.equal(model.state_dict()["backbone.last_norm.bias"], full["state_dict"]["backbone.last_norm.bias"])


def test_vitpose_weights_errors():
    encoder = small_encoder(0)
    good = vitpose_state_dict(encoder)
    with pytest.raises(ValueError, match=r"pos_embed has shape \(1, 193, 64\).*needs \(1, 13, 64\)"):
        load_vitpose_weights(encoder, {**good, "backbone.pos_embed": torch.zeros(1, 193, 64)})
    bad = {**good, "backbone.blocks.1.mlp.fc1.weight": torch.zeros(10, 64), "backbone.cls_token": torch.zeros(1)}
    del bad["backbone.last_norm.bias"]
    with pytest.raises(ValueError) as info:
        load_vitpose_weights(encoder, bad)
    message = str(info.value)
    assert "1 missing keys: last_norm.bias" in message and "1 unexpected keys: cls_token" in message
    assert "blocks.1.mlp.fc1.weight: checkpoint [10, 64] vs encoder [256, 64]" in message
    with pytest.raises(TypeError, match="no ViT encoder"):
        load_vitpose_weights(torch.nn.Linear(2, 2), good)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_vitpose_weights(encoder, "/nonexistent/vitpose.pth")
