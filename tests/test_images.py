"""Image observations: CNN encoder and decoder shapes."""

import pytest
import torch

from rssm.networks import ConvDecoder, ConvEncoder, image_stages


@pytest.mark.parametrize("size, depth, stages", [(64, 4, 4), (16, 8, 2), (96, 2, 4)])
def test_conv_encoder_halves_to_a_few_pixels_and_the_decoder_mirrors_it(size, depth, stages):
    assert image_stages(size) == stages
    encoder, decoder = ConvEncoder(size, 3, depth), ConvDecoder(20, size, 3, depth)
    last = size >> stages  # 64 -> 4, 16 -> 4, 96 -> 6
    assert encoder.out_dim == depth * 2 ** (stages - 1) * last**2
    assert encoder(torch.rand(5, size, size, 3) - 0.5).shape == (5, encoder.out_dim)
    assert decoder(torch.randn(5, 20)).shape == (5, size, size, 3)
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    deconvs = [m for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [depth * 2**i for i in range(stages)]
    assert [c.in_channels for c in deconvs] == [depth * 2**i for i in reversed(range(stages))]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs + deconvs)


@pytest.mark.parametrize("size", [4, 7, 84, 100])
def test_image_sizes_the_cnn_cannot_halve_evenly_are_refused(size):
    with pytest.raises(ValueError, match="4 to 7 times a power of two"):
        image_stages(size)
