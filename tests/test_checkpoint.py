"""Checkpoint reading: formats, strict matching, and clear errors for bad files."""
import os

import pytest
import torch

import ssmpose
from ssmpose.checkpoint import CheckpointError, read_checkpoint, save_official_checkpoint


@pytest.fixture(scope="module")
def tiny():
    return ssmpose.build_model("hrvmamba_tiny").eval()


@pytest.fixture(scope="module")
def official(tiny, tmp_path_factory):
    return save_official_checkpoint(tiny, tmp_path_factory.mktemp("ckpt") / "tiny.pth")


def test_ssmpose_format_round_trip(tiny, tmp_path):
    model = ssmpose.build_model("hrvmamba_small", input_size=(384, 288))
    path = ssmpose.save_checkpoint(model, tmp_path / "small.safetensors")
    loaded = ssmpose.load_checkpoint(path)
    assert loaded.name == "hrvmamba_small" and loaded.input_size == (384, 288)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_convert_official_to_safetensors(official, tmp_path):
    out = ssmpose.convert_checkpoint(official, tmp_path / "tiny.safetensors")
    state_dict, info = read_checkpoint(out)
    assert info["format"] == "ssmpose" and info["config"]["model"] == "hrvmamba_tiny"
    original, _ = read_checkpoint(official)
    assert state_dict.keys() == original.keys()
    assert all(torch.equal(state_dict[k], original[k]) for k in original)


def test_wrong_variant_names_the_keys(official):
    with pytest.raises(CheckpointError) as err:
        ssmpose.load_checkpoint(official, "hrvmamba_small")
    text = str(err.value)
    assert "does not fit model hrvmamba_small" in text
    assert "unexpected keys: backbone.stage2.0.branches.0.0.cpe1.weight" in text
    assert "backbone.layer1.0.conv1.weight: checkpoint [32, 64, 1, 1] vs model [64, 64, 1, 1]" in text
    assert "looks like hrvmamba_tiny" in text


def test_missing_and_extra_keys_are_listed(tiny, tmp_path):
    state = dict(tiny.state_dict())
    state.pop("head.final_layer.bias")
    state["backbone.extra.weight"] = torch.zeros(1)
    path = tmp_path / "edited.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys: head.final_layer.bias[\s\S]*1 unexpected keys: "
                                              r"backbone.extra.weight"):
        ssmpose.load_checkpoint(path, "hrvmamba_tiny")


@pytest.mark.parametrize("cut", [0, 100, 5000, -100])
def test_truncated_file_is_a_clear_error(official, tmp_path, cut):
    data = official.read_bytes()
    bad = tmp_path / "cut.pth"
    bad.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(CheckpointError, match="cut.pth"):
        ssmpose.load_checkpoint(bad)


def test_garbage_and_missing_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        ssmpose.load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        ssmpose.load_checkpoint(tmp_path / "nope.pth")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pth"):
        ssmpose.load_checkpoint(text)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch should-never-exist",))


def test_pickled_code_is_never_executed(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "hostile.pth"
    torch.save({"state_dict": tiny.state_dict(), "meta": {"hook": _RunsCode()}}, path)
    model = ssmpose.load_checkpoint(path)
    assert model.name == "hrvmamba_tiny"
    assert not (tmp_path / "should-never-exist").exists()


def test_non_tensor_in_state_dict_is_rejected(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": [1, 2, 3]}}, path)
    with pytest.raises(CheckpointError, match="'backbone.conv1.weight' of the state dict is list"):
        ssmpose.load_checkpoint(path)


def test_unknown_layout_cannot_be_inferred(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointError, match="cannot tell which model"):
        ssmpose.load_checkpoint(path)
