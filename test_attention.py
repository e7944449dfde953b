"""Tests for attention.py and packing.py, and for the strict flash_attn stand-in the GPU path is
tested against.

    python -m pytest -q test_attention.py

References: plain attention with an explicit mask (small sizes, fine on CPU) for every kernel; the
stand-in (stand_ins/flash_attn.py) must refuse what flash-attn 2's flash_api.cpp refuses, so a
test that passes through it runs the dtypes and layouts a GPU would get.
"""

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import attention
import packing
import policy
import rollout
from conftest import load_flash_stand_in, tiny_llama, tiny_qwen3

BF16 = torch.bfloat16


def causal_mask_bottom_right(q_len: int, k_len: int) -> torch.Tensor:
    """[q_len, k_len] bool: query i sees key j iff j <= i + (k_len - q_len) (flash-attn's alignment)."""
    return torch.arange(k_len)[None] <= torch.arange(q_len)[:, None] + (k_len - q_len)


# -----------------------------------------------------------------------------
# Plain helpers: log-sum-exp merge, bottom-right causal without a mask

def test_merge_attention_equals_attention_over_concatenation():
    torch.manual_seed(0)
    B, H, Hkv, D, Na, Nb = 3, 6, 2, 8, 11, 5
    q = torch.randn(B, Hkv, H // Hkv, D)  # grouped-query heads folded into M
    k, v = torch.randn(B, Hkv, Na + Nb, D), torch.randn(B, Hkv, Na + Nb, D)
    ref = F.scaled_dot_product_attention(q, k, v, scale=0.3)  # [B, Hkv, g, D]
    o_a, lse_a = attention.attention_with_lse(q, k[:, :, :Na], v[:, :, :Na], 0.3)
    o_b, lse_b = attention.attention_with_lse(q, k[:, :, Na:], v[:, :, Na:], 0.3)
    as_flash = lambda o, lse: (o.reshape(B, H, 1, D).transpose(1, 2), lse.reshape(B, H, 1))  # noqa: E731
    out, lse = attention.merge_attention(*as_flash(o_a, lse_a), *as_flash(o_b, lse_b))
    torch.testing.assert_close(out[:, 0], ref.reshape(B, H, D), atol=1e-5, rtol=1e-5)
    full = torch.logsumexp(torch.matmul(q, k.transpose(-1, -2)) * 0.3, -1)
    torch.testing.assert_close(lse[:, :, 0], full.reshape(B, H), atol=1e-5, rtol=1e-5)


def test_attention_with_lse_mask_equals_sdpa():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 2, 4, 8), torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    mask = causal_mask_bottom_right(4, 9)
    assert mask[0].tolist() == [True] * 6 + [False] * 3 and mask[3].all()  # bottom-right aligned
    out, _ = attention.attention_with_lse(q, k, v, 0.5, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5))


@pytest.mark.parametrize("sq,sk", [(4, 9), (7, 7), (1, 5)])
def test_sdpa_lower_right_equals_the_masked_reference_with_grouped_heads(sq, sk):
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 6, sq, 8), torch.randn(1, 2, sk, 8), torch.randn(1, 2, sk, 8)
    mask = causal_mask_bottom_right(sq, sk)
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1),
                                          attn_mask=mask, scale=0.4)
    torch.testing.assert_close(attention.sdpa_lower_right(q, k, v, 0.4), want, atol=1e-6, rtol=1e-5)


def test_packed_torch_equals_dense_mask_reference():
    """Each response sees the whole prompt and its own earlier tokens, never another response."""
    torch.manual_seed(3)
    P, rs = 5, [3, 0, 4]
    lay = packing.PackedGroups([P], [rs], "torch", "cpu")
    S = lay.length
    q, k, v = torch.randn(1, 4, S, 8), torch.randn(1, 2, S, 8), torch.randn(1, 2, S, 8)
    rid = torch.tensor([-1] * P + [0] * 3 + [2] * 4)  # -1 = prompt
    i, j = torch.arange(S)[:, None], torch.arange(S)[None]
    mask = (j <= i) & ((rid[None] == -1) | (rid[None] == rid[:, None]))
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                          attn_mask=mask, scale=0.3)
    got = packing.packed_torch(lay, q, k, v, 0.3)  # [1, S, H, D]
    torch.testing.assert_close(got.transpose(1, 2), want, atol=1e-6, rtol=1e-5)


def dense_packed_reference(lay, q, k, v, scale):
    """Plain masked attention over the packed sequence: the slow obvious reference, [1, S, H, D]."""
    gid, rid, o = torch.empty(lay.length, dtype=torch.long), torch.empty(lay.length, dtype=torch.long), 0
    for n, (s, P, rs) in enumerate(lay.parts):
        gid[s:s + P], rid[s:s + P], o = n, -1, s + P
        for j, r in enumerate(rs):
            gid[o:o + r], rid[o:o + r], o = n, j, o + r
    i, j = torch.arange(lay.length)[:, None], torch.arange(lay.length)[None]
    mask = (j <= i) & (gid[None] == gid[:, None]) & ((rid[None] == -1) | (rid[None] == rid[:, None]))
    g = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1),
                                          attn_mask=mask, scale=scale).transpose(1, 2)


@pytest.mark.parametrize("split_keys", [True, False])
def test_packed_torch_values_and_gradients_equal_the_dense_reference(split_keys):
    """Both torch training kernels (CPU: a group's responses split into prompt keys + own keys,
    merged by log-sum-exp; elsewhere: one call per response), outputs and q/k/v gradients."""
    torch.manual_seed(4)
    lay = packing.PackedGroups([7, 5], [[3, 0, 4, 1], [6, 2]], "torch", "cpu")
    q, k, v = (torch.randn(1, h, lay.length, 8, requires_grad=True) for h in (6, 2, 2))
    w = torch.randn(1, lay.length, 6, 8)
    got = packing.packed_torch(lay, q, k, v, 0.3, split_keys=split_keys)
    grads = torch.autograd.grad((got * w).sum(), (q, k, v))
    want = dense_packed_reference(lay, q, k, v, 0.3)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    for a, b in zip(grads, torch.autograd.grad((want * w).sum(), (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_split_keys_under_bf16_autocast_is_as_accurate_as_one_call_per_response():
    """The CPU path in the GPU's dtypes: bf16 kernels under autocast, float32 inputs and gradients;
    its error against the float32 reference stays within that of the per-response path."""
    torch.manual_seed(5)
    lay = packing.PackedGroups([96], [[24, 17, 30, 9]], "torch", "cpu")
    q, k, v = (torch.randn(1, h, lay.length, 64, requires_grad=True) for h in (9, 3, 3))
    w = torch.randn(1, lay.length, 9, 64)
    want = dense_packed_reference(lay, q, k, v, 0.125)
    want_g = torch.autograd.grad((want * w).sum(), (q, k, v))
    err = {}
    for split in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = packing.packed_torch(lay, q, k, v, 0.125, split_keys=split)
        assert got.dtype == torch.bfloat16
        g = torch.autograd.grad((got.float() * w).sum(), (q, k, v))
        assert all(t.dtype == torch.float32 for t in g)
        err[split] = [(got.float() - want).abs().max().item()] + [(a - b).abs().max().item() for a, b in zip(g, want_g)]
    assert max(err[True]) < 0.5, err  # bf16, not a broken kernel (the outputs are O(1), the gradients O(10))
    assert all(a <= 1.5 * b + 1e-3 for a, b in zip(err[True], err[False])), err


# -----------------------------------------------------------------------------
# The chooser and the dtype cast

def test_choose(monkeypatch, flash_stand_in):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert attention.choose("auto", cpu, half=True) == "torch"      # flash-attn needs CUDA
    assert attention.choose("auto", cuda, half=True) == "flash"     # (no tensor is made here)
    assert attention.choose("auto", cuda, half=False) == "torch"    # and bf16
    assert attention.choose("flash", cpu, half=True) == "flash"     # forced: the stand-in on CPU
    assert attention.choose("torch", cuda, half=True) == "torch"
    with pytest.raises(ValueError, match="attention"):
        attention.choose("sdpa", cpu, half=True)
    monkeypatch.setitem(__import__("sys").modules, "flash_attn", None)  # `import flash_attn` fails
    with pytest.raises(ValueError, match="does not import"):
        attention.choose("flash", cpu, half=True)
    assert attention.choose("auto", cuda, half=True) == "torch"


def test_to_flash_dtype_casts_to_autocast_dtype_and_refuses_float32_outside_it():
    q32, k16 = torch.randn(2, 3), torch.randn(2, 3).to(BF16)
    with torch.autocast("cpu", dtype=BF16):
        assert [t.dtype for t in attention.to_flash_dtype(q32, k16)] == [BF16, BF16]
    assert [t.dtype for t in attention.to_flash_dtype(k16, k16)] == [BF16, BF16]
    with pytest.raises(RuntimeError, match="--precision bf16"):
        attention.to_flash_dtype(q32, q32)


# -----------------------------------------------------------------------------
# The stand-in refuses what flash-attn refuses

def varlen_args(dtype=BF16, heads=4, kv_heads=2, d=8):
    q = torch.randn(5, heads, d, dtype=dtype)
    k, v = torch.randn(5, kv_heads, d, dtype=dtype), torch.randn(5, kv_heads, d, dtype=dtype)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    return q, k, v, cu, cu.clone(), 3, 3


@pytest.mark.parametrize("change,message", [
    (lambda a: (a[0].float(), *a[1:]), "fp16 and bf16"),
    (lambda a: (a[0], a[1].half(), *a[2:]), "same dtype"),
    (lambda a: (*a[:3], a[3].long(), *a[4:]), "int32"),
    (lambda a: (*a[:4], torch.tensor([0, 9, 2, 9, 5], dtype=torch.int32)[::2], *a[5:]), "contiguous"),
    (lambda a: (torch.randn(5, 4, 264, dtype=BF16), torch.randn(5, 2, 264, dtype=BF16),
                torch.randn(5, 2, 264, dtype=BF16), *a[3:]), "at most 256"),
    (lambda a: (torch.randn(5, 3, 8, dtype=BF16), *a[1:]), "divide"),
    (lambda a: (*a[:3], torch.tensor([0, 2, 6], dtype=torch.int32), *a[4:]), "total"),
    (lambda a: (*a[:5], 1, a[6]), "max_seqlen"),
])
def test_stand_in_varlen_refuses(change, message):
    fa = load_flash_stand_in()
    with pytest.raises(RuntimeError, match=message):
        fa.flash_attn_varlen_func(*change(varlen_args()), causal=True)


def test_stand_in_varlen_output_dtype_and_gradient():
    fa = load_flash_stand_in()
    q, k, v, cu, cu_k, mq, mk = varlen_args()
    q.requires_grad_(True)
    out = fa.flash_attn_varlen_func(q, k, v, cu, cu_k, mq, mk, causal=True)
    assert out.dtype == BF16 and out.shape == q.shape
    out.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == BF16
    # what it computes: per sequence, bottom-right causal attention (the masked reference)
    ref = F.scaled_dot_product_attention(q[2:5].float().transpose(0, 1), k[2:5].float().repeat_interleave(2, 1)
                                         .transpose(0, 1), v[2:5].float().repeat_interleave(2, 1).transpose(0, 1),
                                         is_causal=True)
    torch.testing.assert_close(out[2:5].float(), ref.transpose(0, 1), atol=1e-2, rtol=1e-2)


def kvcache_args(B=2, Sq=1, H=4, Hkv=2, D=8, Sk=6, dtype=BF16):
    q = torch.randn(B, Sq, H, D, dtype=dtype)
    kc, vc = torch.zeros(B, Sk, Hkv, D, dtype=dtype), torch.zeros(B, Sk, Hkv, D, dtype=dtype)
    return q, kc, vc


def test_stand_in_kvcache_refuses():
    fa = load_flash_stand_in()
    q, kc, vc = kvcache_args()
    new = torch.randn(2, 1, 2, 8, dtype=BF16)
    seq = torch.tensor([1, 2], dtype=torch.int32)
    call = lambda **kw: fa.flash_attn_with_kvcache(**{**dict(q=q, k_cache=kc, v_cache=vc, k=new, v=new,  # noqa: E731
                                                             cache_seqlens=seq, causal=True), **kw})
    call()  # as the rollout calls it
    with pytest.raises(RuntimeError, match="fp16 and bf16"):
        call(q=q.float())
    with pytest.raises(RuntimeError, match="same dtype"):
        call(k_cache=kc.half())
    with pytest.raises(RuntimeError, match="int32"):
        call(cache_seqlens=seq.long())
    with pytest.raises(RuntimeError, match="int32"):
        call(cache_batch_idx=torch.tensor([0, 1]), k=None, v=None)
    with pytest.raises(RuntimeError, match="contiguous last"):
        call(k_cache=torch.zeros(2, 6, 8, 2, dtype=BF16).transpose(2, 3))
    with pytest.raises(RuntimeError, match="past the end"):
        call(cache_seqlens=torch.tensor([1, 6], dtype=torch.int32))
    # one query, 4 heads over 2 kv heads: the kernel counts it as 2 queries; a 1-slot cache is too short
    q1, kc1, vc1 = kvcache_args(Sk=1)
    with pytest.raises(RuntimeError, match="seqlen <= the seqlen of the KV cache"):
        fa.flash_attn_with_kvcache(q1, kc1, vc1, k=new, v=new, cache_seqlens=torch.zeros(2, dtype=torch.int32),
                                   causal=True)
    out, lse = call(return_softmax_lse=True)
    assert out.dtype == BF16 and lse.dtype == torch.float32 and lse.shape == (2, 4, 1)


# -----------------------------------------------------------------------------
# The GPU's training numerics on CPU: float32 master weights under bf16 autocast, through flash

@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_training_forward_backward_under_bf16_autocast_runs_through_strict_flash(family, flash_stand_in):
    """The crash this guards: under autocast Qwen3's float32 q/k norms and the float32 rotary tables
    hand flash-attn float32 q/k, which it refuses. Result as close to the float32 per-row reference
    as the torch kernel under the same autocast is."""
    from test_policy import make_model, make_rows, policy_loss
    lm = make_model(family).train()
    net = policy.Policy(lm, temperature=1.0, chunk=16)
    rows = make_rows(64, prompt_lens=[9, 4], group_sizes=[3, 2])
    mb = list(range(len(rows.prompts)))
    want = policy.forward_logprobs(net, rows, mb, 0, torch.device("cpu")).detach()
    errs = {}
    for path in ("torch", "flash"):
        with torch.autocast("cpu", dtype=BF16):
            lp = policy.forward_logprobs_shared(net, rows, mb, 0, torch.device("cpu"), attention=path)
            loss = policy_loss(lp, rows, mb)
        net.zero_grad(set_to_none=True)
        loss.backward()
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
        errs[path] = float((lp.detach() - want)[rows.mask].abs().max())
    assert flash_stand_in.CALLS["varlen"] > 0
    assert errs["flash"] < 3 * errs["torch"] + 1e-3, errs  # a wrong layout would be off by nats


# -----------------------------------------------------------------------------
# Rollout: the decode kernels, the cache's capacity and compaction

def bf16_model(family, **kw):
    model = tiny_qwen3(initializer_range=0.3, **kw) if family == "qwen3" else tiny_llama(
        vocab_size=64, initializer_range=0.3, **kw)
    return policy.make_sampler(model, BF16)


@pytest.mark.parametrize("heads", [4, 8])
def test_flash_rollout_is_as_accurate_as_torch_rollout_in_bf16(heads, flash_stand_in):
    """Both paths on the bf16 sampler; each row's log-probs against a float32 teacher-forced forward
    of the tokens it generated: flash is as close as torch (a wrong layout or merge is off by nats;
    token-for-token equality is not a bf16 property, near-ties flip with the summation order)."""
    from test_rollout import teacher_forced_logprobs
    model32 = tiny_llama(vocab_size=64, initializer_range=0.3, heads=heads, kv_heads=2)
    model = policy.make_sampler(model32, BF16)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 60, (L,), generator=g).tolist() for L in (10, 3, 17)]
    errs = {}
    for path in ("torch", "flash"):
        ro = rollout.generate(model, prompts, 3, 12, temperature=0, eos_token_ids=2, pad_token_id=0,
                              prefill_chunk_tokens=7, check_every=2, attention=path)
        assert ro.stats["attention"] == path
        errs[path] = max(float((ro.logprobs[r, :int(ro.lengths[r])] - teacher_forced_logprobs(
            model32, prompts[r // 3], ro.tokens[r, :int(ro.lengths[r])].tolist(), 1.0)).abs().max())
            for r in range(len(prompts) * 3))
    assert flash_stand_in.CALLS["varlen"] > 0 and flash_stand_in.CALLS["kvcache"] > 0
    assert errs["flash"] < 3 * errs["torch"] + 1e-2, errs


def test_flash_decode_reads_each_prompt_once_per_step(flash_stand_in):
    """The prompt call gets one query block of n rows per live prompt, not one query per row."""
    model = bf16_model("llama")
    seen = []
    real = flash_stand_in.flash_attn_with_kvcache
    flash_stand_in.flash_attn_with_kvcache = lambda q, k_cache, *a, **kw: (
        seen.append((tuple(q.shape), tuple(k_cache.shape), "k" in kw)), real(q, k_cache, *a, **kw))[1]
    rollout.generate(model, [[5, 6, 7, 8], [9, 10]], 4, 3, temperature=0, eos_token_ids=99, pad_token_id=0,
                     attention="flash")
    prompt_calls = [s for s in seen if not s[2]]
    assert prompt_calls and all(q[:2] == (2, 4) and k[0] == 2 for q, k, _ in prompt_calls)  # [P, n, H, D]


def test_flash_decode_with_fewer_new_tokens_than_heads_per_kv_head(flash_stand_in):
    """8 heads over 2 kv heads: flash-attn treats a decode query as 4, so the generated-KV cache
    needs >= 4 slots even when max_new_tokens is 2 or 3 (it had max(max_new_tokens - 1, 1))."""
    model = bf16_model("llama", heads=8, kv_heads=2)
    for new in (2, 3):
        ro = rollout.generate(model, [[5, 6, 7]], 2, new, temperature=0, eos_token_ids=99, pad_token_id=0,
                              attention="flash")
        assert ro.tokens.shape == (2, new)
    assert rollout.gen_capacity(2, 4) == 4 and rollout.gen_capacity(100, 4) == 99


class LiveOldTensors(TorchDispatchMode):
    """Counts, at each index_select, how many of the watched (old) tensors are still alive."""

    def __init__(self, watched):
        super().__init__()
        self.refs = [weakref.ref(t) for t in watched]
        self.alive = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.index_select.default:
            self.alive.append(sum(r() is not None for r in self.refs))
        return func(*args, **(kwargs or {}))


def test_keep_rows_compacts_layer_by_layer():
    """At most one old layer tensor (the one being copied) is alive per copy: never a second copy
    of the whole generated KV."""
    layers = 6
    cache = attention.SharedPrefixCache(layers, [5, 3], 2, 4, 1, 8, torch.float32, "cpu", "torch")
    watched = cache.gen_k + cache.gen_v
    mode = LiveOldTensors(watched)
    del watched
    gc.collect()
    with mode:
        cache.keep_rows(torch.tensor([True, False, True, True]))
    gen_selects = mode.alive[:2 * layers]
    assert gen_selects == list(range(2 * layers, 0, -1)), gen_selects


def test_gather_sums_repeated_rows_in_float32():
    """The prompt's K/V gradient is the sum of its G responses' gradients: in float32, not bf16."""
    x = torch.zeros(3, 2, requires_grad=True)
    idx = torch.tensor([0, 0, 0, 0, 2])
    y = packing.GatherSumFloat32.apply(x, idx, BF16)
    assert y.dtype == BF16 and y.shape == (5, 2)
    g = torch.tensor([[256.0, 1.0]] * 4 + [[1.0, 1.0]], dtype=BF16)  # 256 + 1 + 1 + 1 is 259, not 256
    y.backward(g)
    assert x.grad.dtype == torch.float32 and x.grad[0].tolist() == [1024.0, 4.0]
    naive = torch.zeros(3, 2, dtype=BF16).index_add_(0, idx[:4], torch.tensor([[256.0, 1.0], [1.0, 1.0]] * 2,
                                                                                 dtype=BF16))
    assert float(naive[0, 0]) != 514.0  # bf16 addition loses the small terms the float32 sum keeps
