"""On a CUDA GPU: the CUDA-graph token step (captured once per row count, refilled per patch) gives
exactly the eager result, and the Triton path keeps the parallel/pooled invariant."""

import pytest
import torch

from model_helpers import relative_error, tiny_model
from nuwa_ds.model.generation import GenerationConfig, run_generation

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("order, wavefront, rope", [("down", False, 0), ("down", True, 0), ("right", True, 8),
                                                   ("left", False, 8)])
def test_cuda_graph_generation_equals_eager(order, wavefront, rope):
    model = tiny_model(extents=(0, 1, 1), rope_dims=rope).cuda()
    cfg = dict(temperature=1.0, top_k=30, seed=5, wavefront=wavefront)
    graph = run_generation(model, (1, 16, 24), order, 2, config=GenerationConfig(**cfg, cuda_graph=True))
    eager = run_generation(model, (1, 16, 24), order, 2, config=GenerationConfig(**cfg, cuda_graph=False))
    assert torch.equal(graph.tokens, eager.tokens)
    assert graph.stats["slots_in_use_at_end"] == 0


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("rope", [0, 8])
def test_teacher_forced_decode_on_gpu(dtype, tol, rope):
    model = tiny_model(extents=(1, 1, 1), rope_dims=rope).cuda().to(dtype)
    tokens = torch.randint(0, 256, (2, 2, 8, 12), device="cuda")
    with torch.no_grad():
        parallel = model(tokens, order="right").logits.float()
    pooled = model.teacher_forced_decode(tokens, order="right").float()
    assert relative_error(pooled, parallel) <= tol


def test_wavefront_equals_sequential_on_gpu():
    model = tiny_model().cuda().to(torch.bfloat16)
    cfg = dict(temperature=1.0, top_p=0.9, seed=3)
    seq = run_generation(model, (1, 16, 32), "down", 1, config=GenerationConfig(**cfg, wavefront=False))
    wav = run_generation(model, (1, 16, 32), "down", 1, config=GenerationConfig(**cfg, wavefront=True))
    assert torch.equal(seq.tokens, wav.tokens) and wav.stats["steps"] < seq.stats["steps"]


# ----------------------------------------------------------------------------------------------
# Batch-invariant generation (issue 16): nuwa-350m's width, random weights, bf16. Canvases of 2 x 6
# patches keep each test to seconds; `nuwa-ds bench generate` measures the 8 x 24 canvas.


@pytest.fixture(scope="module")
def model_350m(tmp_path_factory):
    from model_helpers import write_tiny_text_encoder
    from nuwa_ds import NuwaConfig, NuwaInfinity

    torch.manual_seed(0)
    model = NuwaInfinity(NuwaConfig.preset("nuwa-350m", attn_backend="triton", max_frames=2))
    model.attach_text_encoder(write_tiny_text_encoder(tmp_path_factory.mktemp("t5")))
    return model.cuda().to(torch.bfloat16).eval()


SHAPE = (1, 32, 96)  # 2 x 6 patches of 16 x 16 tokens
SAMPLING = {"top-k 100": dict(temperature=1.0, top_k=100, seed=11), "greedy": dict(temperature=0.0)}


@pytest.mark.parametrize("order", ["down", "right"])
@pytest.mark.parametrize("sampling", list(SAMPLING))
def test_batch_invariant_canvas_whatever_the_schedule_or_the_graph(model_350m, order, sampling):
    runs = {}
    for wavefront, graph in ((False, True), (True, True), (True, False)):
        cfg = GenerationConfig(**SAMPLING[sampling], wavefront=wavefront, cuda_graph=graph, batch_invariant=True)
        runs[wavefront, graph] = run_generation(model_350m, SHAPE, order, 2, config=cfg)
    first = runs[False, True]
    assert first.stats["batch_invariant"]
    for key, run in runs.items():
        assert torch.equal(run.tokens, first.tokens), key


def test_batch_invariant_example_alone_equals_its_row_in_a_batch(model_350m):
    cfg = GenerationConfig(temperature=1.0, top_k=100, seed=11, wavefront=True, batch_invariant=True)
    batch = run_generation(model_350m, SHAPE, "down", 8, config=cfg).tokens
    assert torch.equal(run_generation(model_350m, SHAPE, "down", 1, config=cfg).tokens[0], batch[0])
    greedy = GenerationConfig(temperature=0.0, wavefront=True, batch_invariant=True)
    rows = run_generation(model_350m, SHAPE, "down", 8, config=greedy).tokens
    alone = run_generation(model_350m, SHAPE, "down", 1, config=greedy).tokens[0]
    assert all(torch.equal(row, alone) for row in rows)


def test_batch_invariant_outpainting_animation_and_guidance(model_350m):
    """Given tokens (the left half, or a first frame), and classifier-free guidance with 8 captions (up to
    8 x 2 x 2 = 32 rows a step: past the row counts where cuBLAS, topk and cumsum change their method):
    sequential and wavefront, alone and in a batch, the same canvas."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    text = ["a red fox", "a blue sea", "snow on a hill", "a city at night", "green fields", "a desert road",
            "clouds over a lake", "a forest path"]
    for shape, keep in (((1, 32, 96), (slice(None), slice(None), slice(0, 48))),
                        ((2, 32, 48), (slice(0, 1), slice(None), slice(None)))):
        prompt = torch.randint(0, 16384, (8, *shape), device="cuda", generator=gen)
        mask = torch.zeros(shape, dtype=torch.bool, device="cuda")
        mask[keep] = True
        canvases = []
        for batch, wavefront in ((8, False), (8, True), (1, True)):
            cfg = GenerationConfig(temperature=1.0, top_k=100, seed=3, cfg_scale=3.0, wavefront=wavefront,
                                   batch_invariant=True)
            canvases.append(run_generation(model_350m, shape, "down", batch, prompt=prompt[:batch],
                                           prompt_mask=mask, text=text[:batch], config=cfg).tokens)
        assert torch.equal(canvases[0], canvases[1]) and torch.equal(canvases[2][0], canvases[0][0])
        assert torch.equal(canvases[0][:, mask], prompt[:, mask])


def test_batch_invariant_logits_match_the_default_path(model_350m):
    """The invariant kernels compute the same model: logits of given tokens within bf16 rounding of the
    default path's (cuBLAS, torch's norm, the default decode splits)."""
    tokens = torch.randint(0, 16384, (2, *SHAPE), device="cuda")
    mask = torch.ones_like(tokens, dtype=torch.bool)
    logits = [run_generation(model_350m, SHAPE, "down", 2, prompt=tokens, prompt_mask=mask, text=["a", "b"],
                             config=GenerationConfig(batch_invariant=on), return_logits=True).logits
              for on in (False, True)]
    assert relative_error(logits[1], logits[0]) <= 3e-2
