"""A CPU stand-in for flash-attn 2: the two functions this project calls, in plain torch, refusing
what the real extension refuses. Tests only; never on the path of a real run.

    PYTHONPATH=stand_ins python train.py --attention flash --precision bf16 --steps 2
    FLASH_ATTN_STAND_IN_LOG=calls.txt ...    # at exit, append "varlen N kvcache M" to that file

Why a folder of its own: a top-level flash_attn.py would shadow the real package for anyone who
runs from the repository root. Nothing imports this file unless its folder is put on the path (or
a test puts it in sys.modules).

The checks are read from flash-attn 2.8's csrc/flash_attn/flash_api.cpp (mha_varlen_fwd,
mha_fwd_kvcache) and the Python wrappers in flash_attn_interface.py (which make q/k/v contiguous in
the last dimension, assert it for k_cache/v_cache, and turn an int cache_seqlens into a tensor):
  - q, k, v (and the caches, and an appended k/v) fp16 or bf16, all of q's dtype
  - cu_seqlens_q/k, cache_seqlens, cache_batch_idx int32 and contiguous, of the right lengths
  - k_cache, v_cache contiguous in the last dimension
  - head_dim <= 256; num_heads a multiple of num_heads_k; consistent shapes
  - with an appended k: seqlen_q <= the cache's seqlen, where a single query with more heads than
    kv heads counts as num_heads / num_heads_k queries (the kernel swaps heads into the sequence
    for that case), and the appended keys must lie inside the cache
  - the output has q's dtype; the log-sum-exp is float32
The math runs in float32 (as the kernel accumulates), the output is cast to q's dtype, and the varlen
function is differentiable (autograd through the torch ops), as the real one is.
"""

import atexit
import os

import torch

CALLS = {"varlen": 0, "kvcache": 0}
HALF = (torch.float16, torch.bfloat16)


def _check(ok: bool, message: str):
    if not ok:
        raise RuntimeError(message)  # the real extension raises c10::Error, a RuntimeError in Python


def _int32_vector(t, name: str, length: int):
    _check(t.dtype == torch.int32, f"{name} must have dtype int32")
    _check(t.is_contiguous(), f"{name} must be contiguous")
    _check(t.dim() == 1 and t.shape[0] == length, f"{name} must have shape ({length},), got {tuple(t.shape)}")


def _half_inputs(q, *others):
    _check(q.dtype in HALF, "FlashAttention only support fp16 and bf16 data type")
    for t in others:
        _check(t.dtype == q.dtype, "query and key must have the same dtype")
        _check(t.device == q.device, "all tensors must be on the same device")


def _heads(num_heads: int, num_heads_k: int, head_dim: int):
    _check(head_dim <= 256, "FlashAttention forward only supports head dimension at most 256")
    _check(num_heads % num_heads_k == 0, "Number of heads in key/value must divide number of heads in query")


def _attend(q, k, v, scale: float, causal: bool):
    """q [Sq, H, D], k, v [Sk, Hkv, D] -> out [Sq, H, D] float32, lse [H, Sq]; bottom-right causal."""
    Sq, H, _ = q.shape
    Sk, Hkv, _ = k.shape
    k, v = k.float().repeat_interleave(H // Hkv, 1), v.float().repeat_interleave(H // Hkv, 1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    if causal:
        i, j = torch.arange(Sq)[:, None], torch.arange(Sk)[None]
        scores = scores.masked_fill(j > i + Sk - Sq, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), v), lse


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                           alibi_slopes=None, deterministic=False, return_attn_probs=False,
                           block_table=None):
    CALLS["varlen"] += 1
    _check(block_table is None and alibi_slopes is None and window_size == (-1, -1) and dropout_p == 0.0,
           "stand-in: only what this project uses (no paging, alibi, windows or dropout)")
    _half_inputs(q, k, v)
    _check(cu_seqlens_q.dtype == torch.int32, "cu_seqlens_q must have dtype int32")
    _check(cu_seqlens_k.dtype == torch.int32, "cu_seqlens_k must have dtype int32")
    _check(q.dim() == 3 and k.dim() == 3 and v.dim() == 3, "q, k, v must be [total, heads, head_dim]")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))  # the wrapper does this
    batch = cu_seqlens_q.numel() - 1
    _check(batch > 0, "batch size must be positive")
    _int32_vector(cu_seqlens_q, "cu_seqlens_q", batch + 1)
    _int32_vector(cu_seqlens_k, "cu_seqlens_k", batch + 1)
    _heads(q.shape[1], k.shape[1], q.shape[2])
    _check(k.shape == v.shape and k.shape[2] == q.shape[2], "k, v must be [total_k, heads_k, head_dim] like q")
    _check(int(cu_seqlens_q[-1]) == q.shape[0] and int(cu_seqlens_k[-1]) == k.shape[0],
           "cu_seqlens must end at the total number of tokens")
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    outs, lses = [], []
    for b in range(batch):
        qs, qe = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        ks, ke = int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])
        _check(0 <= qe - qs <= max_seqlen_q and 0 <= ke - ks <= max_seqlen_k,
               "a sequence is longer than max_seqlen (or cu_seqlens decreases)")
        o, lse = _attend(q[qs:qe], k[ks:ke], v[ks:ke], scale, causal)
        outs.append(o)
        lses.append(lse)
    out = torch.cat(outs).to(q.dtype)
    return (out, torch.cat(lses, 1), None) if return_attn_probs else out


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0,
                            return_softmax_lse=False):
    CALLS["kvcache"] += 1
    _check(rotary_cos is None and block_table is None and cache_leftpad is None and alibi_slopes is None
           and window_size == (-1, -1), "stand-in: only what this project uses")
    _check(k_cache.stride(-1) == 1, "k_cache must have contiguous last dimension")  # the wrapper asserts
    _check(v_cache.stride(-1) == 1, "v_cache must have contiguous last dimension")
    _half_inputs(q, k_cache, v_cache)
    _check(q.dim() == 4 and k_cache.dim() == 4, "q [batch, seqlen_q, heads, d], caches [batch_c, seqlen_k, heads_k, d]")
    B, Sq, H, D = q.shape
    Bc, Sk, Hkv, _ = k_cache.shape
    _check(B > 0, "batch size must be positive")
    _heads(H, Hkv, D)
    _check(k_cache.shape[3] == D and v_cache.shape == k_cache.shape, "cache shapes do not match q")
    if isinstance(cache_seqlens, int):  # the wrapper turns an int into a tensor
        cache_seqlens = torch.full((Bc,), cache_seqlens, dtype=torch.int32, device=k_cache.device)
    _check(cache_seqlens is not None or k is None, "If key is supplied, seqlens_k must also be passed in")
    if cache_seqlens is not None:
        _int32_vector(cache_seqlens, "seqlens_k", B)
    if cache_batch_idx is not None:
        _int32_vector(cache_batch_idx, "cache_batch_idx", B)
        _check(int(cache_batch_idx.min()) >= 0 and int(cache_batch_idx.max()) < Bc, "cache_batch_idx out of range")
    else:
        _check(Bc == B, f"k_cache batch {Bc} != q batch {B} (and no cache_batch_idx)")
    # one query with more heads than kv heads: the kernel treats the groups as the query sequence
    swapped = Sq == 1 and H > Hkv and D % 8 == 0
    seqlen_q = H // Hkv if swapped else Sq
    if k is not None:
        _check(v is not None, "If key is supplied, value must also be passed in")
        _check(seqlen_q <= Sk, "If key is supplied, it must have seqlen <= the seqlen of the KV cache")
        _half_inputs(q, k, v)
        _check(k.shape == (B, k.shape[1], Hkv, D) and v.shape == k.shape, "appended k, v shapes")
        new = k.shape[1]
        _check(int(cache_seqlens.max()) + new <= Sk, "appended keys run past the end of the KV cache")
    scale = softmax_scale if softmax_scale is not None else D ** -0.5
    out = torch.empty(B, Sq, H, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, Sq, dtype=torch.float32, device=q.device)
    for b in range(B):
        c = int(cache_batch_idx[b]) if cache_batch_idx is not None else b
        L = int(cache_seqlens[b]) if cache_seqlens is not None else Sk
        if k is not None:  # append in place at cache_seqlens, then attend to the new keys too
            k_cache[c, L:L + k.shape[1]], v_cache[c, L:L + k.shape[1]] = k[b], v[b]
            L += k.shape[1]
        o, l = _attend(q[b], k_cache[c, :L], v_cache[c, :L], scale, causal and Sq > 1)
        out[b], lse[b] = o.to(q.dtype), l
    return (out, lse) if return_softmax_lse else out


@atexit.register
def _report():
    path = os.environ.get("FLASH_ATTN_STAND_IN_LOG")
    if path and (CALLS["varlen"] or CALLS["kvcache"]):
        with open(path, "a") as f:
            f.write(f"pid {os.getpid()} varlen {CALLS['varlen']} kvcache {CALLS['kvcache']}\n")
