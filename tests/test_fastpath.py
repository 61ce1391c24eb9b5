"""The diffusion fast path: SDPA attention, the exact fp32 path and loader, bf16 (CPU autocast), the compiled
forward and its fallback, the batched bf16 VAE decode, and the card switch between them."""

import logging

import pytest
import torch

from ddbench.diffusion import ddpm_sample, load_dit, to_uint8
from ddbench.diffusion.dit import Attention
from ddbench.diffusion.fast import CompiledForward, resolve_compile, resolve_precision
from ddbench.diffusion.generator import Generator
from ddbench.errors import ConfigError
from test_diffusion import inputs, tiny_dit


def explicit_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """The reference attention (timm's Attention as facebookresearch/DiT ran it): softmax(q·kᵀ·scale)·v."""
    n, t, d = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).reshape(n, t, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
    w = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5
    return attn.proj((w.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, t, d))


def reference_dit(model):
    """The same weights in the reference's modules: timm Attention with explicit attention, timm Mlp."""
    import copy

    from timm.models.vision_transformer import Attention as TimmAttention
    from timm.models.vision_transformer import Mlp

    ref = copy.deepcopy(model)
    for block in ref.blocks:
        d, heads = block.attn.qkv.in_features, block.attn.num_heads
        attn = TimmAttention(d, num_heads=heads, qkv_bias=True)
        attn.fused_attn = False  # the explicit q·kᵀ softmax of timm 0.4 (DiT's environment)
        attn.load_state_dict(block.attn.state_dict())
        mlp = Mlp(d, block.mlp.fc1.out_features, act_layer=lambda: torch.nn.GELU(approximate="tanh"), drop=0)
        mlp.load_state_dict(block.mlp.state_dict())
        block.attn, block.mlp = attn, mlp
    return ref.eval()


# ---------------------------------------------------------------------------------------------------------
# The exact fp32 path
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("heads,tokens", [(2, 16), (16, 256)])
def test_sdpa_attention_equals_explicit_attention_in_fp32(heads, tokens):
    torch.manual_seed(0)
    attn = Attention(32 * heads // 2, heads).eval()
    x = torch.randn(3, tokens, 32 * heads // 2)
    with torch.no_grad():
        got, want = attn(x), explicit_attention(attn, x)
    assert got.dtype == torch.float32
    assert (got - want).abs().max().item() <= 1e-5


def test_original_checkpoint_in_fp32_matches_the_reference_model(tmp_path):
    model = tiny_dit()
    torch.save(model.state_dict(), tmp_path / "DiT-tiny.pt")  # the released checkpoints' layout: a state dict
    loaded = load_dit(tmp_path / "DiT-tiny.pt", num_heads=2)
    assert next(loaded.parameters()).dtype == torch.float32
    x, t, y = inputs()
    ref = reference_dit(model)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model(x, t, y))  # loading changes no bit
        assert (loaded(x, t, y) - ref(x, t, y)).abs().max().item() <= 1e-5
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = ddpm_sample(loaded, (2, 4, 8, 8), [3, 7], steps=5, generator=g())
    b = ddpm_sample(ref, (2, 4, 8, 8), [3, 7], steps=5, generator=g(), null_label=10)
    # 5 steps of random weights amplify the 1e-7 attention rounding (samples reach magnitude ~100)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_auto_is_the_exact_fp32_path_on_cpu():
    model = tiny_dit()

    def run(**kw):
        return ddpm_sample(model, (2, 4, 8, 8), [1, 2], steps=5, generator=torch.Generator().manual_seed(0), **kw)

    exact = run(autocast=False)
    assert torch.equal(run(autocast="auto"), exact) and torch.equal(run(), exact)
    fast = run(autocast=True)  # CPU bf16 autocast: the fast path's arithmetic, measurable without a GPU
    assert fast.dtype == torch.float32 and not torch.equal(fast, exact)
    assert (fast - exact).abs().mean().item() < 0.05 * exact.abs().mean().item()


def test_settings_resolve_per_device_and_bad_values_say_how_to_fix():
    assert resolve_precision("auto", "cpu") == "fp32" and resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision(None, "cuda:0") == "bf16"
    assert resolve_precision(False, "cuda") == "fp32" and resolve_precision(True, "cpu") == "bf16"
    assert resolve_precision("false", "cuda") == "fp32"
    assert resolve_compile("auto", "cpu") is False and resolve_compile("auto", "cuda") is True
    with pytest.raises(ConfigError, match=r"autocast='fast'.*--set autocast=false"):
        resolve_precision("fast", "cpu")
    with pytest.raises(ConfigError, match="compile=2"):
        resolve_compile(2, "cuda")


def test_dit_card_defaults_to_the_fast_path_and_checks_the_setting():
    from ddbench.method import load_method, resolve_method_config

    for name in ("dit", "minimax"):
        cfg = resolve_method_config(name, "nette")[1]
        assert cfg["autocast"] == "auto" and cfg["compile"] == "auto"
    assert resolve_method_config("dit", "fashion", {"autocast": False})[1]["autocast"] is False
    with pytest.raises(ConfigError, match="autocast='sometimes': expected true or false, or one of auto"):
        load_method("dit", "digits", {"autocast": "sometimes"})  # refused when the config is resolved


# ---------------------------------------------------------------------------------------------------------
# Compiled forward
# ---------------------------------------------------------------------------------------------------------


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no compiler in this test")


def test_compiled_forward_falls_back_cleanly(caplog):
    model = tiny_dit()
    fast = CompiledForward(model, backend=_failing_backend)
    assert fast.num_classes == 10 and fast.in_channels == 4  # the samplers read these through the wrapper
    x, t, y = inputs()
    with caplog.at_level(logging.WARNING, logger="ddbench.diffusion.fast"), torch.no_grad():
        out = fast(x, t, y)
        again = fast(x, t, y)
    assert fast.fallback and "no compiler in this test" in fast.fallback
    assert sum("eager mode" in r.message for r in caplog.records) == 1  # said once, not per step
    with torch.no_grad():
        assert torch.equal(out, model(x, t, y)) and torch.equal(again, out)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(ddpm_sample(fast, (2, 4, 8, 8), [1, 2], steps=3, generator=g(), device="cpu"),
                       ddpm_sample(model, (2, 4, 8, 8), [1, 2], steps=3, generator=g()))


def test_compiled_forward_traces_the_dit_on_cpu():
    """Dynamo traces the whole forward (the `eager` backend runs the captured graph without a C++ compiler)."""
    torch._dynamo.reset()
    model = tiny_dit()
    fast = CompiledForward(model, backend="eager")
    x, t, y = inputs()
    with torch.no_grad():
        got = fast(x, t, y)
        torch.testing.assert_close(got, model(x, t, y), rtol=0, atol=1e-6)
    assert fast.fallback is None


def test_generator_compiles_once_per_setting():
    gen = Generator(tiny_dit(), torch.arange(10), 8, None, "all", {})
    assert gen.model_fn("auto") is gen.model and gen.model_fn(False) is gen.model  # CPU: eager
    wrapped = gen.model_fn(True)
    assert isinstance(wrapped, CompiledForward) and gen.model_fn(True) is wrapped
    with pytest.raises(ConfigError, match="class labels"):
        gen.sample_latents([11], torch.Generator().manual_seed(0), steps=2, compile=True)


# ---------------------------------------------------------------------------------------------------------
# VAE decode: batched, bf16
# ---------------------------------------------------------------------------------------------------------


def test_vae_decode_batched_and_bf16(tmp_path):
    from diffusers import AutoencoderKL

    from ddbench.diffusion import load_vae

    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  sample_size=16).save_pretrained(tmp_path / "vae")
    vae = load_vae(tmp_path / "vae")
    z = vae.encode(torch.rand(5, 3, 16, 16) * 2 - 1)
    whole = vae.decode(z)
    torch.testing.assert_close(vae.decode(z, batch_size=2), whole, rtol=0, atol=1e-5)
    fast = vae.decode(z, batch_size=2, precision="bf16")
    assert fast.dtype == torch.float32 and not torch.equal(fast, whole)
    delta = (to_uint8(fast).float() - to_uint8(whole).float()).abs()
    assert delta.mean().item() < 2.0  # grey levels of 255

    gen = Generator(tiny_dit(in_channels=4), torch.arange(10), 16, vae, 3, {}, decode_batch=2)
    # the same batches of 2 as the generator decodes (batching moves floats by < 1e-5: a uint8 can round over)
    exact = to_uint8(vae.decode(z, batch_size=2))
    assert torch.equal(gen.decode(z), exact) and torch.equal(gen.decode(z, "auto"), exact)
    assert torch.equal(gen.decode(z, True), to_uint8(fast))
