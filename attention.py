"""Shared-prefix attention: one prompt's keys and values serve all G of its responses, in the rollout
(KV cache: prefill once, decode n rows) and in the training forward (one packed sequence per group).

    import attention
    path = attention.choose("auto", device, half=True)  # 'flash' on CUDA with flash-attn, else 'torch'
    with attention.setting(model):                      # our function replaces the model's attention
        ...                                              # rollout.generate / policy.forward_logprobs_shared

    python -m pytest -q test_attention.py    # every kernel against plain attention, strict flash stand-in
    PYTHONPATH=stand_ins python train.py --attention flash --precision bf16   # the GPU's code, on CPU

This is where the kernels are chosen and called (the rollout's are here, the training forward's in
packing.py): one probe of flash-attn, one chooser, one function registered with
`transformers.AttentionInterface`, one switch of the model's attention setting. The Hugging Face
modules are unchanged: they project and rotate q, k, v and hand them to `shared_prefix_attention`,
which reads what to do from a keyword the caller passes down the decoder layers: `rollout_cache` (a
SharedPrefixCache: prefill or decode) or `shared_prefix` (a packing.PackedGroups: the training
forward, whose kernels are in packing.py). HF builds no mask for a name it does not know, so
no [S, S] mask is ever made.

Two kernel families, the same semantics:
- "flash": flash-attn 2 (`flash_attn_varlen_func`, `flash_attn_with_kvcache`), CUDA only, fp16/bf16.
  Every call goes through `to_flash_dtype` first: under bf16 autocast over float32 master weights
  the projections come out bf16, but Qwen3's float32 q/k norms and rotary tables promote q and k back
  to float32, which flash-attn refuses (transformers' flash integration casts to the autocast dtype too).
- "torch": `scaled_dot_product_attention`, exact, any device. Never a dense [q, k] mask where the
  sequence is long: on CUDA a dense mask sends SDPA to its math kernel, O(S^2) memory. Causal
  attention whose queries are the last q of k keys uses torch's lower-right causal bias, which the
  efficient kernels take (`sdpa_lower_right`).
"""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention.bias import causal_lower_right
from torch.nn.functional import scaled_dot_product_attention
from torch.utils._python_dispatch import _disable_current_modes

ATTN_NAME = "golongrl_shared_prefix"  # the name shared_prefix_attention is registered under
_SAID: set = set()  # say_once keys already printed in this process


def say_once(key: str, text: str):
    """Print text the first time `key` comes up in this process (every rank and step repeats it)."""
    if key not in _SAID:
        _SAID.add(key)
        print(text, flush=True)


# -----------------------------------------------------------------------------
# Which kernels: one probe, one chooser

def flash_attn_module():
    """The flash_attn module when it imports, else None (the one probe; a test puts a stand-in in
    sys.modules or on PYTHONPATH)."""
    try:
        import flash_attn
        return flash_attn
    except ImportError:
        return None


def choose(attention: str, device: torch.device, half: bool) -> str:
    """'auto' | 'flash' | 'torch' -> the kernel family, said once per process.

    auto : flash-attn on CUDA when it imports and compute runs in half precision (half=True), else torch.
    flash: flash-attn wherever a flash_attn module imports (on CPU: the stand-in, to run the GPU's code);
           ValueError when none does.
    """
    if attention not in ("auto", "flash", "torch"):
        raise ValueError(f"attention must be 'auto', 'flash' or 'torch', got {attention!r}")
    have = flash_attn_module() is not None
    if attention == "flash" and not have:
        raise ValueError("attention='flash' but flash_attn does not import (pip install flash-attn, "
                         "or --attention torch)")
    if attention == "auto":
        why = ("flash_attn does not import" if not have else f"flash-attn needs CUDA, device is {device.type}"
               if device.type != "cuda" else "flash-attn needs bf16, precision is fp32" if not half else
               "flash_attn imports, CUDA, bf16")
        path = "flash" if have and device.type == "cuda" and half else "torch"
    else:
        path, why = attention, f"--attention {attention}"
    say_once(f"attention:{path}", f"attention kernels: {path} ({why})")
    return path


def to_flash_dtype(*ts: Tensor) -> list:
    """q, k, v in the dtype flash-attn computes in: the autocast dtype when autocast is on (float32
    inputs are promoted float32 norms/rotary outputs), else their own half dtype. One place, before
    every flash call. Float32 outside autocast is refused here with the fix, not deep in the kernel."""
    device = ts[0].device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
    elif ts[0].dtype in (torch.float16, torch.bfloat16):
        dtype = ts[0].dtype
    else:
        raise RuntimeError(f"flash-attn computes in fp16/bf16, got {ts[0].dtype} outside autocast: "
                           "run with --precision bf16 (or --attention torch)")
    return [t if t.dtype == dtype else t.to(dtype) for t in ts]


# -----------------------------------------------------------------------------
# Plain torch helpers: attention with its log-sum-exp, the merge of two partial attentions, and
# causal attention aligned bottom-right (flash-attn's alignment) without a dense mask

FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # -> (out, lse float32)
CPU_FLASH_DECODE = True  # decode's prompt part through FLASH_CPU on CPU (a test turns it off: CUDA's path)


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor, scale: float,
                       mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Softmax attention that also returns the log-sum-exp of the scores (the softmax normalizer).

    q [B, Hkv, M, D] (grouped-query heads folded into M), k, v [B, Hkv, N, D], mask bool broadcastable
    to [B, Hkv, M, N] (True = attend). Returns out [B, Hkv, M, D] in q's dtype, lse [B, Hkv, M] float32.
    Used for decode only, where M is a few rows: the [M, N] scores are O(N).
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # [B, Hkv, M, N]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [B, Hkv, M]
    probs = torch.exp(scores - lse.unsqueeze(-1))
    return torch.matmul(probs.to(v.dtype), v), lse


def merge_attention(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Exact attention over the union of two disjoint key sets, from attention over each set.

    out_* [B, S, H, D], lse_* [B, H, S] (flash-attn's layout). softmax over a union = each part's
    softmax reweighted by exp(lse_part - lse_total), where lse_total = logaddexp(lse_a, lse_b).
    """
    lse = torch.logaddexp(lse_a, lse_b)  # [B, H, S]
    w_a = torch.exp(lse_a - lse).transpose(1, 2).unsqueeze(-1)  # [B, S, H, 1]
    w_b = torch.exp(lse_b - lse).transpose(1, 2).unsqueeze(-1)
    out = out_a.float() * w_a + out_b.float() * w_b
    return out.to(out_a.dtype), lse


def sdpa_lower_right(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal attention of the last Sq positions over Sk keys (query i sees keys j <= i + Sk - Sq).

    q [B, H, Sq, D], k, v [B, Hkv, Sk, D] -> [B, H, Sq, D]. torch's lower-right causal bias keeps SDPA
    on its flash / memory-efficient kernels (O(S) memory). Grouped-query keys are expanded to H heads
    (a transient of H/Hkv times the keys) because not every efficient kernel takes enable_gqa; torch's
    CPU flash kernel does, and reads them as they are when Sq == Sk (plain is_causal, no bias).
    """
    if torch.is_autocast_enabled(q.device.type):  # as SDPA under autocast would, before the bias's
        dtype = torch.get_autocast_dtype(q.device.type)  # own dispatch, which checks dtypes first
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    Sq, Sk = q.shape[2], k.shape[2]
    if Sq == Sk and q.device.type == "cpu":
        return scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    if k.shape[1] != q.shape[1]:
        g = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    if Sq == Sk:
        return scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    with _disable_current_modes():  # selective checkpointing's dispatch mode refuses to see torch's
        bias = causal_lower_right(Sq, Sk)  # CausalBias subclass made; it is shapes only, no data
    return scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


# -----------------------------------------------------------------------------
# The rollout's KV cache: prompt K/V once per prompt, generated K/V per row, plus the metadata
# the kernels read (one wave of prompts; rollout.generate builds one per wave)

@dataclass
class Segment:
    """A piece of one prompt inside a packed prefill chunk."""
    prompt: int   # prompt slot in the wave
    start: int    # first prompt position in this chunk
    end: int      # one past the last
    q0: int       # offset of this segment inside the packed chunk


class SharedPrefixCache:
    """KV storage for one wave of P prompts and its A rows (P*n at first, fewer as rows finish), in
    flash-attn's [batch, seq, kv_heads, head_dim] layout, plus the metadata the kernels read.

    prefill_wave calls set_prefill once per chunk; decode_wave calls set_decode once per step and
    keep_rows every few steps; the kernels read the fields once per layer.
    gen_capacity: generated tokens stored per row (the last sampled token is never fed back).
    """

    def __init__(self, layers: int, prompt_lens: list[int], n: int, gen_capacity: int,
                 kv_heads: int, head_dim: int, dtype, device, path: str):
        P, Lmax = len(prompt_lens), max(prompt_lens)
        # flash-attn reads [batch, seq, Hkv, D]; the torch kernels keep the heads first so that their
        # batched matmuls read the cache in place (flash's layout made decode copy every prompt's K/V)
        self.seq_dim = 1 if path == "flash" else 2
        lay = (lambda b, s: (b, s, kv_heads, head_dim) if path == "flash" else (b, kv_heads, s, head_dim))
        shape_p, shape_g = lay(P, Lmax), lay(P * n, gen_capacity)
        # --- storage, one tensor per layer
        self.prompt_k = [torch.zeros(shape_p, dtype=dtype, device=device) for _ in range(layers)]
        self.prompt_v = [torch.zeros(shape_p, dtype=dtype, device=device) for _ in range(layers)]
        # ^ [P, Lmax, Hkv, D] (torch: [P, Hkv, Lmax, D]): one copy per prompt, read by all n rows
        self.gen_k = [torch.zeros(shape_g, dtype=dtype, device=device) for _ in range(layers)]
        self.gen_v = [torch.zeros(shape_g, dtype=dtype, device=device) for _ in range(layers)]
        # ^ [A, gen_capacity, Hkv, D] (torch: [A, Hkv, ...]): slot t holds the row's token t
        self.prompt_lens = torch.tensor(prompt_lens, device=device)  # [P] int64
        self.bytes = sum(t.numel() * t.element_size()  # allocated once: the wave's KV peak
                         for t in self.prompt_k + self.prompt_v + self.gen_k + self.gen_v)
        self.n, self.path = n, path  # samples per prompt; kernels: "torch" | "flash"
        self.phase = "prefill"       # "prefill" | "decode": which kernel runs
        # --- rows (decode): row r of the step batch is sample row_sample[r] of prompt slot row_prompt[r]
        self.row_prompt = torch.arange(P, device=device).repeat_interleave(n)  # [A] int64
        self.row_sample = torch.arange(n, device=device).repeat(P)             # [A] int64
        # --- prefill metadata, one chunk at a time (set_prefill)
        self.segments: list[Segment] = []        # the chunk's pieces of prompts, in packed order
        self.cu_q: Tensor | None = None          # flash: [segments + 1] int32 cumulative query lengths
        self.cu_k: Tensor | None = None          # flash: [segments + 1] int32 cumulative key lengths
        self.max_q = self.max_k = 0              # flash: longest query / key segment
        # --- decode metadata, one step at a time (set_decode)
        self.step = 0                              # the gen slot this step's K/V is written to
        self.prompt_seqlens: Tensor | None = None  # flash: [P] int32, length of each live prompt
        self.gen_seqlens: Tensor | None = None     # flash: [A] int32, = step (own tokens before it)

    def set_prefill(self, segments: list[Segment]):
        """Metadata of one packed prefill chunk, read by every layer's prefill kernel."""
        self.phase, self.segments = "prefill", segments
        if self.path == "flash":  # flash-attn varlen wants int32 cumulative lengths of the packed q and k
            device = self.prompt_lens.device
            q_lens = [s.end - s.start for s in segments]
            k_lens = [s.end for s in segments]
            self.cu_q = torch.tensor([0] + q_lens, device=device).cumsum(0).to(torch.int32)
            self.cu_k = torch.tensor([0] + k_lens, device=device).cumsum(0).to(torch.int32)
            self.max_q, self.max_k = max(q_lens), max(k_lens)

    def keep_rows(self, keep: Tensor) -> Tensor:
        """Drop finished rows. keep: [A] bool over the current rows; returns idx [A'] of the kept ones,
        with which the caller compacts its own per-row tensors. Changes, in place:

          gen_k, gen_v, row_prompt, row_sample   -> the kept rows only, in order;
          and if every row of some prompt has now finished, that prompt is freed:
          prompt_k, prompt_v, prompt_lens        -> the live prompts only, padding trimmed to the
                                                    new longest; row_prompt renumbered to new slots.
        Layer by layer: each old tensor is released as soon as its compacted copy exists, so the
        transient is one layer's KV, not a second copy of the whole cache (at a paper-sized wave
        the generated KV alone is tens of GB).
        """
        idx = keep.nonzero().squeeze(1)
        for store in (self.gen_k, self.gen_v):
            for i in range(len(store)):
                store[i] = store[i].index_select(0, idx)  # the old tensor is freed on assignment
        self.row_prompt, self.row_sample = self.row_prompt[idx], self.row_sample[idx]
        live = torch.zeros_like(self.prompt_lens, dtype=torch.bool)
        live[self.row_prompt] = True
        if not bool(live.all()):  # free the prompt KV of prompts whose n rows all finished
            p_idx = live.nonzero().squeeze(1)
            self.prompt_lens = self.prompt_lens[p_idx]
            Lmax = int(self.prompt_lens.max())  # trim padding too
            for store in (self.prompt_k, self.prompt_v):
                for i in range(len(store)):
                    store[i] = store[i].narrow(self.seq_dim, 0, Lmax).index_select(0, p_idx)
            self.row_prompt = (live.cumsum(0) - 1)[self.row_prompt]  # old slot -> new slot
        return idx

    def set_decode(self, step: int):
        """Metadata of one decode step (every active row writes gen slot `step`)."""
        self.phase, self.step = "decode", step
        if self.path == "flash":  # int32 metadata for flash_attn_with_kvcache
            self.prompt_seqlens = self.prompt_lens.to(torch.int32)
            self.gen_seqlens = torch.full((len(self.row_prompt),), step, dtype=torch.int32,
                                          device=self.prompt_lens.device)


# -----------------------------------------------------------------------------
# Rollout kernels: prefill / decode x torch / flash. HF gives q [B, H, S, D], k, v [B, Hkv, S, D].

def write_prompt_kv(cache: SharedPrefixCache, layer: int, k: Tensor, v: Tensor):
    """Each segment of the chunk writes its K/V into its prompt's slots [start, end)."""
    for seg in cache.segments:
        c = seg.end - seg.start
        for store, x in ((cache.prompt_k, k), (cache.prompt_v, v)):
            part = x[0, :, seg.q0:seg.q0 + c]  # [Hkv, c, D]; the slots: [c, Hkv, D] (flash) or [Hkv, c, D]
            dst = store[layer][seg.prompt].narrow(cache.seq_dim - 1, seg.start, c)
            dst.copy_(part.transpose(0, 1) if cache.seq_dim == 1 else part)


def prefill_torch(cache, layer, q, k, v, scale):
    """Packed chunk (B=1): each segment attends causally to its prompt[:end] (earlier chunks too)."""
    write_prompt_kv(cache, layer, k, v)
    out = torch.empty_like(q.transpose(1, 2))  # [1, S, H, D]
    for seg in cache.segments:
        c = seg.end - seg.start
        keys = cache.prompt_k[layer][seg.prompt, :, :seg.end][None]  # [1, Hkv, end, D]
        vals = cache.prompt_v[layer][seg.prompt, :, :seg.end][None]
        o = sdpa_lower_right(q[:, :, seg.q0:seg.q0 + c], keys, vals, scale)     # [1, H, c, D]
        out[0, seg.q0:seg.q0 + c] = o[0].transpose(0, 1)
    return out


def prefill_flash(cache, layer, q, k, v, scale):
    """Same as prefill_torch with one flash_attn_varlen_func call over the packed segments."""
    from flash_attn import flash_attn_varlen_func
    write_prompt_kv(cache, layer, k, v)
    keys = torch.cat([cache.prompt_k[layer][s.prompt, :s.end] for s in cache.segments])  # [sum end, Hkv, D]
    vals = torch.cat([cache.prompt_v[layer][s.prompt, :s.end] for s in cache.segments])
    q, keys, vals = to_flash_dtype(q[0].transpose(0, 1), keys, vals)                     # q [S, H, D]
    out = flash_attn_varlen_func(q, keys, vals, cache.cu_q, cache.cu_k, cache.max_q, cache.max_k,
                                 softmax_scale=scale, causal=True)  # causal = bottom-right aligned
    return out[None]  # [1, S, H, D]


def prompt_grid(cache, q: Tensor) -> tuple[Tensor, Tensor]:
    """The decode queries laid out per prompt: q [A, H, 1, D] -> grid [P, n, H, D] (the rows of a
    prompt side by side, a finished row's slot zero) and slot [A], each row's place in it."""
    A, H, _, D = q.shape
    P, n = cache.prompt_lens.shape[0], cache.n
    slot = cache.row_prompt * n + cache.row_sample  # [A]
    if A == P * n:  # no row dropped yet: the rows already are the grid, in order
        return q[:, :, 0].reshape(P, n, H, D), slot
    return q.new_zeros(P * n, H, D).index_put_((slot,), q[:, :, 0]).reshape(P, n, H, D), slot


def decode_torch(cache, layer, q, k, v, scale):
    """One new token per row: attention over the shared prompt + over the row's own tokens, merged.
    The prompt part reads each prompt's K/V once for its n rows (one query block per prompt)."""
    A, H, _, D = q.shape
    Hkv, n = k.shape[1], cache.n
    g = H // Hkv
    cache.gen_k[layer][:, :, cache.step], cache.gen_v[layer][:, :, cache.step] = k[:, :, 0], v[:, :, 0]  # own slot
    grid, slot = prompt_grid(cache, q)  # [P, n, H, D]
    P = grid.shape[0]
    grid = grid.reshape(P, n, Hkv, g, D).permute(0, 2, 1, 3, 4).reshape(P, Hkv, n * g, D)
    pk, pv = cache.prompt_k[layer], cache.prompt_v[layer]  # [P, Hkv, Lmax, D], read in place
    if q.device.type == "cpu" and CPU_FLASH_DECODE:  # torch's CPU flash kernel: one fused pass (x2.3)
        parts = [FLASH_CPU(grid[p:p + 1], pk[p:p + 1, :, :L], pv[p:p + 1, :, :L], 0.0, False, scale=scale)
                 for p, L in enumerate(cache.prompt_lens.tolist())]  # each prompt's own keys: no mask
        o_p, lse_p = torch.cat([o for o, _ in parts]), torch.cat([s for _, s in parts])
    else:  # CUDA without flash-attn: scores [P, Hkv, n x g, Lmax], then log-sum-exp and a matmul
        key_ok = torch.arange(pk.shape[2], device=q.device) < cache.prompt_lens[:, None]  # [P, Lmax]
        o_p, lse_p = attention_with_lse(grid, pk, pv, scale, key_ok[:, None, None, :])
    o_p = o_p.view(P, Hkv, n, g, D).permute(0, 2, 1, 3, 4).reshape(P * n, H, D)[slot]  # [A, H, D]
    lse_p = lse_p.view(P, Hkv, n, g).permute(0, 2, 1, 3).reshape(P * n, H)[slot]        # [A, H]
    # Own part: all active rows are at the same step, so their own keys are the slots :step+1
    gk, gv = (c[layer][:, :, :cache.step + 1] for c in (cache.gen_k, cache.gen_v))  # [A, Hkv, step+1, D]
    o_g, lse_g = attention_with_lse(q.reshape(A, Hkv, g, D), gk, gv, scale)
    out, _ = merge_attention(o_p[:, None], lse_p[:, :, None],
                             o_g.reshape(A, 1, H, D), lse_g.reshape(A, H, 1))
    return out  # [A, 1, H, D]


def decode_flash(cache, layer, q, k, v, scale):
    """decode_torch with two flash_attn_with_kvcache calls. Prompt part: one query block of n rows
    per live prompt (seqlen_q = n, not causal) over that prompt's cache, so a long prompt's K/V is
    read once per step, not once per row. Own part: each row's cache, the new K/V appended in place
    by the kernel (causal; one query, so flash-attn treats it as non-causal)."""
    from flash_attn import flash_attn_with_kvcache
    grid, slot = prompt_grid(cache, q)                 # [P, n, H, D]
    A, H, _, D = q.shape
    q_row = q.transpose(1, 2)                          # [A, 1, H, D]
    grid, q_row, pk, pv = to_flash_dtype(grid, q_row, cache.prompt_k[layer], cache.prompt_v[layer])
    o_p, lse_p = flash_attn_with_kvcache(grid, pk, pv, cache_seqlens=cache.prompt_seqlens,
                                         softmax_scale=scale, causal=False, return_softmax_lse=True)
    o_p = o_p.reshape(-1, H, D)[slot][:, None]                      # [A, 1, H, D]
    lse_p = lse_p.transpose(1, 2).reshape(-1, H)[slot][:, :, None]  # [P, H, n] -> [A, H, 1]
    k_new, v_new = to_flash_dtype(k.transpose(1, 2), v.transpose(1, 2))  # [A, 1, Hkv, D]
    o_g, lse_g = flash_attn_with_kvcache(q_row, cache.gen_k[layer], cache.gen_v[layer], k=k_new, v=v_new,
                                         cache_seqlens=cache.gen_seqlens, softmax_scale=scale,
                                         causal=True, return_softmax_lse=True)
    out, _ = merge_attention(o_p, lse_p, o_g, lse_g)
    return out  # [A, 1, H, D]


ROLLOUT_KERNELS = {("prefill", "torch"): prefill_torch, ("prefill", "flash"): prefill_flash,
                   ("decode", "torch"): decode_torch, ("decode", "flash"): decode_flash}


# -----------------------------------------------------------------------------
# The one attention function, its registration and the switch of the model's attention setting

def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            **kwargs):
    """What the model's attention layers call inside `setting` (AttentionInterface signature).

    query [B, H, S, D], key, value [B, Hkv, S, D], projected and rotated by HF. With `rollout_cache`:
    the rollout's prefill or decode kernel. With `shared_prefix`: the packed training kernels. With
    neither (a plain right-padded batch, e.g. the zero-row pass of a rank without data): causal
    attention, exact for every non-pad position of right-padded rows. Returns ([B, S, H, D], None).
    """
    if kwargs.get("sliding_window"):
        raise ValueError("sliding-window attention layers are not supported by the shared-prefix attention")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    cache, lay = kwargs.get("rollout_cache"), kwargs.get("shared_prefix")
    if cache is not None:
        return ROLLOUT_KERNELS[cache.phase, cache.path](cache, module.layer_idx, query, key, value, scale), None
    if lay is not None:
        return lay.attend(query, key, value, scale), None  # packing.py's kernels
    return sdpa_lower_right(query, key, value, scale).transpose(1, 2), None


@contextmanager
def setting(model):
    """`with attention.setting(model):` our attention function for the duration (re-entrant), the
    model's own restored afterwards, also on error. Training keeps it open across backward:
    gradient checkpointing recomputes each layer then and looks the function up by name again."""
    from transformers import AttentionInterface
    AttentionInterface.register(ATTN_NAME, shared_prefix_attention)  # idempotent
    previous = model.config._attn_implementation
    model.config._attn_implementation = ATTN_NAME  # the config setter also updates sub-configs
    try:
        yield
    finally:
        model.config._attn_implementation = previous
