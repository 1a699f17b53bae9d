"""Input normalisation against hand-computed pixels."""

from __future__ import annotations

import pytest
import torch

from lightning_gsf.normalization import NORMALIZATIONS, normalize


def test_bgr255_subtracts_the_caffe_mean_per_bgr_channel() -> None:
    # RGB pixel (128, 117, 104) is BGR (104, 117, 128): exactly the Caffe mean, so it maps to 0.
    clip = torch.tensor([128, 117, 104], dtype=torch.uint8).view(1, 1, 3, 1, 1)
    out = normalize(clip, "bgr255")
    assert torch.equal(out, torch.zeros_like(out, dtype=torch.float32))
    # A pure-red RGB pixel lands in the last (R) channel of the BGR output.
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)
    assert normalize(red, "bgr255").flatten().tolist() == [-104.0, -117.0, 255.0 - 128.0]


def test_imagenet_keeps_rgb_and_scales_to_unit_range() -> None:
    clip = torch.tensor([255, 0, 128], dtype=torch.uint8).view(3, 1, 1)
    expected = torch.tensor(
        [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    )
    torch.testing.assert_close(normalize(clip, "imagenet").flatten(), expected)


@pytest.mark.parametrize("shape", [(3, 5, 6), (4, 3, 5, 6), (2, 4, 3, 5, 6)], ids=["frame", "clip", "batch"])
@pytest.mark.parametrize("name", sorted(NORMALIZATIONS))
def test_shapes_and_dtype_are_kept(name: str, shape: tuple[int, ...]) -> None:
    clip = torch.randint(0, 256, shape, dtype=torch.uint8)
    out = normalize(clip, name, dtype=torch.bfloat16)
    assert out.shape == clip.shape and out.dtype == torch.bfloat16


@pytest.mark.parametrize("name", sorted(NORMALIZATIONS))
def test_the_output_stays_on_the_clips_device(name: str) -> None:
    # The constants are made on the clip's device (the model normalises on the accelerator);
    # "meta" stands in for an accelerator on a CPU-only machine.
    clip = torch.zeros(2, 3, 4, 4, dtype=torch.uint8, device="meta")
    assert normalize(clip, name).device == clip.device


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="unknown normalization 'hsv'"):
        normalize(torch.zeros(3, 2, 2, dtype=torch.uint8), "hsv")
    with pytest.raises(ValueError, match=r"expected RGB clips"):
        normalize(torch.zeros(4, 2, 2, dtype=torch.uint8), "imagenet")
