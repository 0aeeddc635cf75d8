"""Bad input to the models and the registry gives clear errors naming the problem."""
import pytest
import torch

import ssmpose


@pytest.fixture(scope="module")
def model():
    return ssmpose.build_model("hrvmamba_tiny").eval()


def test_wrong_channel_count(model):
    with pytest.raises(ValueError, match=r"hrvmamba_tiny: expected images of shape \(B, 3, H, W\), got \(1, 4, 64, 64\)"):
        model(torch.randn(1, 4, 64, 64))


def test_spatial_size_not_divisible_by_32(model):
    with pytest.raises(ValueError, match="divisible by 32, got 100x64"):
        model(torch.randn(1, 3, 100, 64))


def test_wrong_dtype(model):
    with pytest.raises(TypeError, match="floating-point images.*torch.uint8"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_wrong_rank(model):
    with pytest.raises(ValueError, match=r"got \(3, 64, 64\)"):
        model(torch.randn(3, 64, 64))


def test_unknown_model_and_bad_override():
    with pytest.raises(KeyError, match="unknown model 'hrvmamba_huge'.*hrvmamba_small"):
        ssmpose.build_model("hrvmamba_huge")
    with pytest.raises(TypeError, match="bad override"):
        ssmpose.build_model("hrvmamba_tiny", colour="red")
    with pytest.raises(ValueError, match="input_size must be"):
        ssmpose.build_model("hrvmamba_small", input_size=(250, 192))
    with pytest.raises(ValueError, match="DCNv4 variant"):
        ssmpose.build_model("hrvmamba_small", dcn_variant="v5")
