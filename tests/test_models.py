"""The U-Net's geometry: shrink, receptive field, parameter count, size checks."""
import pytest
import torch

from cellulus_fast.models import UNet


def conv_params(i, o, k, dims=2):
    return i * o * k**dims + o


def block_params(i, o):
    return conv_params(i, o, 3) + 2 * conv_params(o, o, 1) + conv_params(o, o, 3)


def test_paper_network_shape_and_parameter_count():
    model = UNet()  # App. A: depth 1, 64 feature maps, x3
    assert model.context == 16
    assert model(torch.zeros(1, 1, 252, 252)).shape == (1, 2, 236, 236)
    expected = block_params(1, 64) + block_params(64, 192) + block_params(192 + 64, 64) \
        + conv_params(64, 64, 1) + conv_params(64, 2, 1)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected and abs(count - 0.76e6) < 0.01e6


@pytest.mark.parametrize("position", [20, 21])
def test_receptive_field_measured_by_gradients(position):
    torch.manual_seed(0)
    model = UNet(num_fmaps=8)
    x = torch.rand(1, 1, 60, 60, requires_grad=True)
    model(x)[0, :, position, position].sum().backward()
    support = (x.grad[0, 0].abs() > 0).nonzero()
    extent = support.max(0).values - support.min(0).values + 1
    assert extent.tolist() == [18, 18]  # the docstring's receptive_field
    # centred on input pixel p + context/2, one pixel wider on one side (the pooling phase decides which)
    assert support.min() >= position - 1 and support.max() <= position + model.context + 1


def test_depth_and_3d_and_output_size():
    deep = UNet(num_fmaps=4, depth=3)
    size = deep.valid_size(100)
    out = deep(torch.zeros(1, 1, size, size))
    assert out.shape[2] == deep.output_size(size) == size - deep.context
    volume = UNet(num_fmaps=2, dims=3)
    assert volume(torch.zeros(1, 1, 20, 22, 24)).shape == (1, 3, 4, 6, 8)


def test_invalid_sizes_and_options():
    model = UNet(num_fmaps=4)
    with pytest.raises(ValueError, match="nearest larger valid extent is 64"):
        model(torch.zeros(1, 1, 63, 64))
    with pytest.raises(ValueError, match="expected input"):
        model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="dims"):
        UNet(dims=4)
    with pytest.raises(ValueError, match="num_fmaps"):
        UNet(num_fmaps=0)
