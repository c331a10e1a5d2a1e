"""The core model: the parallel/pooled equivalence (docs/design.md, section 3), causality, text, the loss,
persistence, and bad input."""

import pytest
import torch
import torch.nn.functional as F

from model_helpers import relative_error, tiny_model, write_tiny_text_encoder
from nuwa_ds import ConfigError, NuwaConfig, NuwaInfinity
from nuwa_ds.model import ORDERS, context_table
from nuwa_ds.model.orders import offset_id
from nuwa_ds.model.nuwa import to_patches

# teacher-forced decoding loops of tiny ops: one intra-op thread (conftest.one_torch_thread says why)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return write_tiny_text_encoder(tmp_path_factory.mktemp("t5"))


CANVASES = {"image": (1, 8, 12), "video": (3, 8, 8)}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("canvas", list(CANVASES))
@pytest.mark.parametrize("with_text", [False, True])
def test_teacher_forced_decode_equals_parallel_forward(order, canvas, with_text, text_dir):
    model = tiny_model(extents=(1, 1, 1))
    text = None
    if with_text:
        model.attach_text_encoder(text_dir)
        text = ["a red fox in snow", ""]  # the second caption is empty: still a valid text block
    tokens = torch.randint(0, model.config.vocab_size, (2, *CANVASES[canvas]))
    with torch.no_grad():
        parallel = model(tokens, order=order, text=text).logits
    pooled = model.teacher_forced_decode(tokens, order=order, text=text)
    assert pooled.shape == parallel.shape == (2, *CANVASES[canvas], model.config.vocab_size)
    assert relative_error(pooled, parallel) <= 1e-4


@pytest.mark.parametrize("order", ["down", "left"])
def test_aligned_bias_keeps_pooled_equal_to_parallel_and_changes_the_logits(order):
    """model.aligned_bias: the pooled decode still equals the parallel forward (video, two frames
    back), and the table is used (other values, other logits); aligned_bias_init sets the offsets
    straight back in time only."""
    model = tiny_model(extents=(2, 1, 1), aligned_bias=True)
    tokens = torch.randint(0, model.config.vocab_size, (2, 3, 8, 8))
    with torch.no_grad():
        parallel = model(tokens, order=order).logits
    assert relative_error(model.teacher_forced_decode(tokens, order=order), parallel) <= 1e-4
    with torch.no_grad():
        model.local_model.blocks[0].aligned_bias.zero_()
        assert relative_error(model(tokens, order=order).logits, parallel) > 1e-3
    primed = tiny_model(extents=(2, 1, 1), aligned_bias=True, aligned_bias_init=4.0)
    fresh = NuwaInfinity(primed.config)
    table = fresh.local_model.blocks[0].aligned_bias
    back = {column for column in range(table.shape[1]) if bool((table[:, column] == 4.0).all())}
    assert back == {offset_id(-1, 0, 0, (2, 1, 1)), offset_id(-2, 0, 0, (2, 1, 1))}
    assert int((table != 0).sum()) == 2 * table.shape[0]
    # aligned_bias_prior_heads: only the first heads of every layer of both stacks get the prior
    one = NuwaInfinity(NuwaConfig.preset("tiny", extents=(2, 1, 1), aligned_bias=True, aligned_bias_init=4.0,
                                         aligned_bias_prior_heads=1))
    for block in [*one.global_model.blocks, *one.local_model.blocks]:
        assert block.aligned_bias.shape[0] > 1
        assert bool((block.aligned_bias[0, sorted(back)] == 4.0).all()) and int((block.aligned_bias != 0).sum()) == 2
    for bad in ({"aligned_bias_prior_heads": 1}, {"aligned_bias_init": 4.0, "aligned_bias_prior_heads": 0},
                {"aligned_bias_init": 4.0, "aligned_bias_prior_heads": 99}):
        with pytest.raises(ConfigError, match="aligned_bias_prior_heads"):
            NuwaConfig.preset("tiny", aligned_bias=True, **bad).validate()


def test_equivalence_with_wavefront_and_mixed_unconditional_rows(text_dir):
    model = tiny_model().attach_text_encoder(text_dir)
    tokens = torch.randint(0, 256, (2, 1, 12, 8))
    text = model.tokenize_text(["left", "right"])
    text["attention_mask"][1] = 0  # row 1: caption dropped
    with torch.no_grad():
        parallel = model(tokens, order="down", text=text).logits
        no_text_row = model(tokens[1:], order="down").logits
    assert relative_error(parallel[1:], no_text_row) <= 1e-5  # dropped caption == no text at all
    pooled = model.teacher_forced_decode(tokens, order="down", text=text, wavefront=True)
    assert relative_error(pooled, parallel) <= 1e-4


@pytest.mark.parametrize("order", ORDERS)
def test_causality_patches_and_tokens(order):
    """Changing one patch changes no logits of patches generated before it, and changing token k of
    a patch changes no logit at positions <= k of that patch."""
    model = tiny_model(extents=(0, 1, 1))
    P = model.config.patch_size
    shape = (1, 3 * P, 3 * P)
    tokens = torch.randint(0, 256, (1, *shape))
    table = context_table((1, 3, 3), order, (0, 1, 1))
    target = int(table.sequence[4])  # the 5th patch generated
    changed = to_patches(tokens, P).clone()
    changed[0, target] = (changed[0, target] + 1) % 256
    from nuwa_ds.model.nuwa import from_patches

    with torch.no_grad():
        a = to_patches(model(tokens, order=order).logits, P)
        b = to_patches(model(from_patches(changed, shape, P), order=order).logits, P)
    diff = (a - b).abs().amax(dim=(0, 2, 3))  # per patch
    for p in range(9):
        if table.position[p] < table.position[target]:
            assert diff[p] == 0, f"patch {p} (earlier than {target}) changed"
    assert diff[target] > 0
    later_readers = [p for p in range(9) if target in table.ctx_index[p].tolist()]
    assert all(diff[p] > 0 for p in later_readers)

    # within a patch: token k only influences positions > k
    k = 5
    within = to_patches(tokens, P).clone()
    within[0, target, k] = (within[0, target, k] + 1) % 256
    with torch.no_grad():
        c = to_patches(model(from_patches(within, shape, P), order=order).logits, P)
    d = (a - c).abs().amax(dim=(0, 3))  # [patches, positions]
    assert (d[target, : k + 1] == 0).all() and d[target, k + 1 :].max() > 0


def test_canvas_larger_than_trained_uses_only_relative_offsets():
    model = tiny_model()
    tokens = torch.randint(0, 256, (1, 1, 8, 40))
    with torch.no_grad():
        parallel = model(tokens, order="right").logits
    assert relative_error(model.teacher_forced_decode(tokens, order="right"), parallel) <= 1e-4


def test_per_example_orders_in_one_batch():
    model = tiny_model()
    tokens = torch.randint(0, 256, (4, 1, 8, 8))
    with torch.no_grad():
        mixed = model(tokens, order=list(ORDERS)).logits
        for i, o in enumerate(ORDERS):
            single = model(tokens[i : i + 1], order=o).logits
            assert relative_error(mixed[i : i + 1], single) <= 1e-5


def test_loss_is_chunked_cross_entropy_with_matching_gradients():
    model = tiny_model(loss_chunk_tokens=37).train()
    tokens = torch.randint(0, 256, (2, 1, 8, 8))
    out = model(tokens, order="down", return_logits=False)
    out.loss.backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(tokens, order="down").logits
    ref = F.cross_entropy(logits.reshape(-1, 256), tokens.reshape(-1))
    ref.backward()
    assert torch.allclose(out.loss, ref, rtol=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(fused[n], p.grad, rtol=1e-4, atol=1e-7), n


def test_gradients_reach_every_trainable_parameter(text_dir):
    model = tiny_model().attach_text_encoder(text_dir).train()
    out = model(torch.randint(0, 256, (2, 2, 8, 8)), order=["down", "left"], text=["a", "b"], return_logits=False)
    out.loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("text_encoder."):
            assert not p.requires_grad  # frozen by default
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_activation_checkpointing_gives_the_same_gradients():
    tokens = torch.randint(0, 256, (2, 1, 8, 8))
    grads = []
    for ckpt in (False, True):
        model = tiny_model(activation_checkpointing=ckpt).train()
        model(tokens, order="down", return_logits=False).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8)


def test_save_and_load_pretrained(tmp_path, text_dir):
    model = tiny_model().attach_text_encoder(text_dir)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "config.json").is_file()
    loaded = NuwaInfinity.from_pretrained(tmp_path / "m")
    tokens = torch.randint(0, 256, (1, 1, 8, 8))
    with torch.no_grad():
        a = model(tokens, order="up", text=["x"]).logits
        b = loaded(tokens, order="up", text=["x"]).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad, message", [
    (lambda m: m(torch.zeros(1, 1, 6, 8, dtype=torch.long)), "multiples of the patch size"),
    (lambda m: m(torch.zeros(1, 1, 8, 8, dtype=torch.long), order="diagonal"), "unknown order"),
    (lambda m: m(torch.full((1, 1, 8, 8), 256)), r"token ids must lie in \[0, 256\)"),
    (lambda m: m(torch.full((1, 1, 8, 8), -1)), "token ids"),
    (lambda m: m(torch.zeros(1, 8, 8, dtype=torch.long)), r"\[B, T, H, W\]"),
    (lambda m: m(torch.zeros(1, 1, 8, 8)), "integer tensor"),
    (lambda m: m(torch.zeros(2, 1, 8, 8, dtype=torch.long), order=["down"]), "orders for a batch"),
    (lambda m: m(torch.zeros(1, 1, 8, 8, dtype=torch.long), text=["a"]), "no text encoder"),
    (lambda m: m.generate((1, 8, 6)), "multiples of the patch size"),
    (lambda m: m.generate((1, 8, 8), order="sideways"), "unknown order"),
    (lambda m: m.generate((1, 8, 8), prompt=torch.full((1, 1, 8, 8), 300),
                          prompt_mask=torch.ones(1, 1, 8, 8, dtype=torch.bool)), "prompt token ids"),
    (lambda m: m.generate((1, 8, 8), batch_size=0), "batch_size"),
])
def test_bad_input_raises_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        bad(tiny_model())


def test_negative_extents_rejected_before_building():
    with pytest.raises(ValueError, match="extents"):
        tiny_model(extents=(0, -1, 1))


@pytest.mark.parametrize("order", ["down", "right", "up"])
@pytest.mark.parametrize("wavefront", [False, True])
def test_row_embedding_equivalence_and_effect(order, wavefront):
    """Absolute patch rows (model.row_embedding): pooled decoding equals the parallel forward with
    per-example rows, the rows change the prediction, and rows past the table share its last row."""
    model = tiny_model(row_embedding=6)
    with torch.no_grad():  # zero-initialised tables: give them values so the rows matter
        model.global_model.row_embed.normal_(std=0.5)
        model.local_model.row_embed.normal_(std=0.5)
    tokens = torch.randint(0, 256, (2, 1, 12, 8))  # 3 patch rows
    rows = torch.tensor([0, 2])
    with torch.no_grad():
        parallel = model(tokens, order=order, rows=rows).logits
        at_top = model(tokens, order=order).logits  # rows=None: every example starts at row 0
        far = model(tokens, order=order, rows=torch.tensor([40, 3])).logits
        last = model(tokens, order=order, rows=torch.tensor([5, 4])).logits
    pooled = model.teacher_forced_decode(tokens, order=order, rows=rows, wavefront=wavefront)
    assert relative_error(pooled, parallel) <= 1e-4
    assert relative_error(at_top[0], parallel[0]) <= 1e-6 and relative_error(at_top[1], parallel[1]) > 1e-3
    # the table has 6 rows: patch rows 40..42 and 5..7 all read its last row; 3..5 and 4..6 differ
    assert relative_error(far[0], last[0]) <= 1e-6 and relative_error(far[1], last[1]) > 1e-3
    with pytest.raises(ValueError, match="one non-negative patch row per example"):
        model(tokens, rows=torch.tensor([-1, 0]))


def test_context_noise_reaches_only_the_context_and_only_in_training():
    """``context_noise`` changes what the global stack reads (the context of *other* patches): a lone
    patch's loss is untouched even in training, a video's changes, and eval mode (validation,
    generation) reads clean tokens; bad values are refused."""
    clean, noisy = tiny_model(3), tiny_model(3, context_noise=0.3)
    P, K = clean.config.patch_size, clean.config.vocab_size
    g = torch.Generator().manual_seed(5)
    lone = torch.randint(0, K, (2, 1, P, P), generator=g)  # one patch: no context at all
    video = torch.randint(0, K, (2, 3, P, 2 * P), generator=g)
    for m in (clean, noisy):
        m.train()
    with torch.no_grad():
        assert torch.equal(noisy(lone).loss, clean(lone).loss)
        torch.manual_seed(0)
        assert not torch.equal(noisy(video).loss, clean(video).loss)
        noisy.eval(), clean.eval()
        assert torch.equal(noisy(video).logits, clean(video).logits)
    for bad in (-0.1, 1.0, float("nan"), True, "x"):
        with pytest.raises(ConfigError, match="context_noise"):
            NuwaConfig.preset("tiny", context_noise=bad)


@pytest.mark.parametrize("wavefront", [False, True])
def test_global_stack_without_earlier_frames_reaches_back_extents_frames_only(wavefront):
    """``global_time_context=False``: the logits of frame 3 do not depend on frame 0 when the local stack
    looks 2 frames back (they do with the default), and the pooled generation path still equals the
    parallel forward."""
    extents = (2, 1, 1)
    P = NuwaConfig.preset("tiny").patch_size
    g = torch.Generator().manual_seed(7)
    video = torch.randint(0, 64, (1, 4, P, 2 * P), generator=g)
    changed = video.clone()
    changed[:, 0] = torch.randint(0, 64, changed[:, 0].shape, generator=g)
    for looks_back, depends in ((True, True), (False, False)):
        model = tiny_model(2, extents=extents, global_time_context=looks_back, vocab_size=64)
        with torch.no_grad():
            a, b = model(video).logits, model(changed).logits
            # masked keys weigh exactly 0 (exp underflows), so "does not depend" is bitwise
            assert (not torch.equal(a[:, 3], b[:, 3])) == depends
            assert not torch.equal(a[:, 1], b[:, 1])  # frame 1 reads frame 0 either way
            pooled = model.teacher_forced_decode(video, wavefront=wavefront)
        assert relative_error(pooled, a) < 1e-5
