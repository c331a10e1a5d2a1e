"""Rotary position embedding over canvas token coordinates (model.rope_dims): relative by
construction, applied identically by training and by the generation pool, and really applied."""

import pytest
import torch

from model_helpers import relative_error, tiny_model, write_tiny_text_encoder
from nuwa_ds.config import ConfigError, NuwaConfig
from nuwa_ds.model import ORDERS
from nuwa_ds.model.rope import apply_rotation, patch_token_coordinates, rotation

# decoding loops of tiny ops: one intra-op thread (conftest.one_torch_thread says why)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_rotated_dot_products_depend_only_on_the_offset():
    torch.manual_seed(0)
    q, k = torch.randn(64, 1, 2, 16, dtype=torch.float64), torch.randn(64, 1, 2, 16, dtype=torch.float64)
    a, b = torch.randint(0, 40, (64, 1, 2)), torch.randint(0, 40, (64, 1, 2))
    shift = torch.tensor([[[7, 301]]])  # far beyond any training crop

    def dots(ca, cb):
        ra = tuple(t.double() for t in rotation(ca, 8, 100.0))
        rb = tuple(t.double() for t in rotation(cb, 8, 100.0))
        return (apply_rotation(q, ra) * apply_rotation(k, rb)).sum(-1)

    near, far = dots(a, b), dots(a + shift, b + shift)
    assert torch.allclose(near, far, atol=1e-3)  # float32 angles at x ~ 340: a few 1e-5 rad off
    assert not torch.allclose(near, (q * k).sum(-1), atol=1e-3)  # and the offset does matter
    # the dims past rope_dims are untouched
    r = rotation(a, 8, 100.0)
    assert torch.equal(apply_rotation(q.float(), r)[..., 8:], q.float()[..., 8:])


def test_token_coordinates_follow_the_canonical_patch_order():
    coords = patch_token_coordinates((2, 2, 3), 2)  # 2 frames of 2 x 3 patches of 2 x 2 tokens
    assert coords.shape == (12, 4, 2)
    assert coords[0].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert coords[5].tolist() == [[2, 4], [2, 5], [3, 4], [3, 5]]  # row 1, column 2
    assert torch.equal(coords[6:], coords[:6])  # every frame has the same spatial coordinates


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return write_tiny_text_encoder(tmp_path_factory.mktemp("t5"))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("canvas, wavefront, with_text", [((1, 8, 12), False, False), ((1, 12, 8), True, True),
                                                          ((3, 8, 8), False, False)])
def test_pooled_decoding_equals_parallel_forward_with_rope(order, canvas, wavefront, with_text, text_dir):
    model = tiny_model(rope_dims=8, row_embedding=4, rope_max_freq=1.5 if canvas[0] == 3 else 1.0)
    text = None
    if with_text:
        model.attach_text_encoder(text_dir)
        text = ["a lake at dusk", ""]
    tokens = torch.randint(0, 256, (2, *canvas))
    with torch.no_grad():
        parallel = model(tokens, order=order, text=text, rows=torch.tensor([0, 1])).logits
    pooled = model.teacher_forced_decode(tokens, order=order, text=text, wavefront=wavefront,
                                         rows=torch.tensor([0, 1]))
    assert relative_error(pooled, parallel) <= 1e-4


def test_rotation_is_applied_in_both_stacks():
    model = tiny_model(rope_dims=8)
    tokens = torch.randint(0, 256, (1, 1, 8, 8))
    with torch.no_grad():
        for block in [*model.global_model.blocks, *model.local_model.blocks]:
            block.qkv.weight.mul_(20)  # sharp attention, so positions decide where it goes
        rotated = model(tokens, order="right").logits
        model.config.rope_dims = 0
        plain = model(tokens, order="right").logits
        model.config.rope_dims = 8
        pooled = model.teacher_forced_decode(tokens, order="right")
    assert relative_error(rotated, plain) > 1e-2
    assert relative_error(pooled, rotated) <= 1e-4
    # a sampled canvas runs through the CUDA-graph-style static buffers as well
    sample = model.generate((1, 8, 16), order="right", batch_size=2)
    assert sample.shape == (2, 1, 8, 16)


@pytest.mark.parametrize("dims", [-4, 6, 20])
def test_bad_rope_dims_are_refused(dims):
    with pytest.raises(ConfigError, match="rope_dims"):
        NuwaConfig.preset("tiny", rope_dims=dims).validate()


def test_the_highest_frequency_scales_every_angle():
    coords = torch.tensor([[0, 0], [1, 0], [0, 3]])
    cos1, sin1 = rotation(coords, 8, 100.0)
    cos2, sin2 = rotation(coords, 8, 100.0, max_freq=torch.pi / 2)
    angles1, angles2 = torch.atan2(sin1, cos1), torch.atan2(sin2, cos2)
    assert torch.allclose(angles2[1, 0], torch.tensor(torch.pi / 2))  # one row down, top frequency
    assert torch.allclose(angles2[:2], angles1[:2] * torch.pi / 2, atol=1e-6)  # small angles: no wrap
    for bad in (0.0, -1.0, 3.2):
        with pytest.raises(ConfigError, match="rope_max_freq"):
            NuwaConfig.preset("tiny", rope_dims=8, rope_max_freq=bad).validate()
