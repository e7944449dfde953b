"""The training forward's attention: a group as ONE packed sequence [prompt, r_1, ..., r_G], its
layout (PackedGroups, built once per forward) and its two exact kernels, forward and backward:
flash-attn's varlen call (CUDA) and an O(S)-memory torch one (on CPU split keys: all responses over
the prompt in one call, each over its own tokens in another, merged by log-sum-exp).

    import packing
    lay = packing.PackedGroups([P], [[r_1, r_2]], "torch", "cpu")
    out = lay.attend(q, k, v, scale)          # q [1, H, S, D], k, v [1, Hkv, S, D] -> [1, S, H, D]

    python -m pytest -q test_attention.py    # against a dense masked reference, values and gradients

policy.forward_logprobs_shared builds the layout and hands it down the decoder layers; attention.py's
shared_prefix_attention (the function registered with transformers) calls `lay.attend`. The helpers
both this file and the rollout use (merge_attention, sdpa_lower_right, to_flash_dtype, FLASH_CPU)
live in attention.py.
"""

import torch
from torch import Tensor

from attention import FLASH_CPU, merge_attention, sdpa_lower_right, to_flash_dtype

FLASH_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


# -----------------------------------------------------------------------------
# Training: a group as ONE packed sequence [prompt, r_1, ..., r_G]
#
# Position ids 0..P-1 for the prompt and P..P+len(r_j)-1 for every response; prompt tokens are
# causal among themselves and r_j sees the whole prompt plus its own earlier tokens, never another
# response. Every r_j then computes exactly what its own row [prompt, r_j] would (same keys,
# positions, values), and the backward sums the G responses' gradients into the one copy of the
# prompt's keys/values. Both kernels hand r_j the keys [prompt, r_j] as one contiguous block: a
# gather (flash: index_select over the packed sequence; torch: a cat per response), a per-layer
# transient of the prompt's K/V once per response, whose backward sums every response's gradient
# into the prompt's K/V. That sum runs in float32 (GatherSumFloat32; the torch kernel's cat of
# float32 slices does the same), while the gathered copy stays in the kernel's dtype. On CPU the torch
# kernel splits the keys instead: all responses over the prompt in one call, each over its own keys,
# merged by log-sum-exp (responses_split_keys: the private op of torch's CPU flash kernel returns
# that log-sum-exp; CUDA runs flash-attn, and without it one SDPA call per response).

class PackedGroups:
    """Layout of one packed micro-batch [prompt_1, r_11..r_1k, prompt_2, r_21.., ...] (batch 1, S tokens)
    and the metadata of its kernels; built once per forward, read by every layer.

    prompt_lens [g], resp_lens [g][k] (a group may hold any number of responses, of any length >= 0).
    """

    def __init__(self, prompt_lens: list, resp_lens: list, path: str, device):
        self.path = path  # "torch" | "flash"
        self.parts = []  # per group: (start, P, [response lengths]) in the packed sequence
        pos, prompt_idx, resp_idx, key_idx, q_lens, k_lens = [], [], [], [], [], []
        s = 0
        for P, rs in zip(prompt_lens, resp_lens):
            self.parts.append((s, P, [r for r in rs if r]))
            pos.append(torch.arange(P))
            prompt_idx.append(torch.arange(s, s + P))
            o = s + P  # where r_j starts
            for r in filter(None, rs):  # a response without tokens takes no place (no empty segment)
                pos.append(torch.arange(P, P + r))           # each response continues the prompt
                resp_idx.append(torch.arange(o, o + r))
                key_idx += [torch.arange(s, s + P), torch.arange(o, o + r)]  # [prompt, own] keys
                q_lens.append(r)
                k_lens.append(P + r)
                o += r
            s = o
        self.length = s
        self.positions = torch.cat(pos).to(device)[None]  # [1, S] position ids
        if path == "flash":  # int32 cumulative lengths and gather indices for flash_attn_varlen_func
            cu = lambda lens: torch.tensor([0] + lens).cumsum(0).to(torch.int32).to(device)  # noqa: E731
            self.cu_p, self.max_p = cu(list(prompt_lens)), max(prompt_lens)
            self.prompt_idx = torch.cat(prompt_idx).to(device)  # [sum P]
            self.resp_idx = torch.cat(resp_idx or [torch.zeros(0, dtype=torch.long)]).to(device)  # [sum R]
            self.key_idx = torch.cat(key_idx or [torch.zeros(0, dtype=torch.long)]).to(device)
            # ^ [sum_j (P + r_j)]: the prompt's positions again for every response (the transient gather)
            self.cu_rq, self.cu_rk = cu(q_lens), cu(k_lens)
            self.max_rq, self.max_rk = max(q_lens, default=0), max(k_lens, default=0)
            # packed order = [all prompt tokens, all response tokens]; `unpack` puts them back in place
            self.unpack = torch.argsort(torch.cat([self.prompt_idx, self.resp_idx]))


    def attend(self, q, k, v, scale):
        """What shared_prefix_attention calls per layer: this layout's kernel (packed_flash or
        packed_torch) on q [1, H, S, D], k, v [1, Hkv, S, D] -> [1, S, H, D]."""
        return (packed_flash if self.path == "flash" else packed_torch)(self, q, k, v, scale)

def packed_torch(lay: PackedGroups, q, k, v, scale, split_keys: bool = True):
    """Exact torch kernel, O(S) memory: per group the prompt causal, then each response over
    [prompt, own] keys, causal aligned bottom-right. q [1, H, S, D], k, v [1, Hkv, S, D].
    On CPU (split_keys) a group's responses go through responses_split_keys instead of a call each."""
    # one split per tensor, not a slice per piece (a slice's backward zero-fills the whole input)
    sizes = [n for _, P, rs in lay.parts for n in [P, *rs]]
    qs, ks, vs = (iter(x.split(sizes, 2)) for x in (q, k, v))
    out = []
    for _, _, rs in lay.parts:
        kp, vp = next(ks), next(vs)  # the group's prompt keys / values, read by all of it
        out.append(sdpa_lower_right(next(qs), kp, vp, scale))
        if rs and q.device.type == "cpu" and split_keys:  # all responses at once, see below
            r_q, r_k, r_v = ([next(it) for _ in rs] for it in (qs, ks, vs))
            out.append(responses_split_keys(kp, vp, r_q, r_k, r_v, scale))
            continue
        for _ in rs:
            keys = torch.cat([kp.float(), next(ks).float()], 2).to(k.dtype)  # [1, Hkv, P + r, D]
            vals = torch.cat([vp.float(), next(vs).float()], 2).to(v.dtype)
            out.append(sdpa_lower_right(next(qs), keys, vals, scale))
    return torch.cat(out, 2).transpose(1, 2)  # [1, S, H, D]


def responses_split_keys(kp, vp, r_q: list, r_k: list, r_v: list, scale: float) -> Tensor:
    """A group's responses over [prompt, own] keys, CPU only: one call of every response's queries
    over the prompt (not causal), one causal call per response over its own keys, merged by
    log-sum-exp. Exact, and it reads the prompt's K/V once per group instead of copying it per
    response (`python bench.py --only prefix`: shared vs call-each). kp, vp [1, Hkv, P, D]; r_q[j]
    [1, H, r_j, D], r_k[j], r_v[j] [1, Hkv, r_j, D]. Returns [1, H, sum r_j, D]."""
    if torch.is_autocast_enabled("cpu"):  # the kernels take one dtype, as SDPA's autocast would give
        dtype = torch.get_autocast_dtype("cpu")
        kp, vp = kp.to(dtype), vp.to(dtype)
        r_q, r_k, r_v = ([t.to(dtype) for t in ts] for ts in (r_q, r_k, r_v))
    lens = [t.shape[2] for t in r_q]
    return SplitKeys.apply(kp, vp, torch.cat(r_q, 2), torch.cat(r_k, 2), torch.cat(r_v, 2), lens, scale)


class SplitKeys(torch.autograd.Function):
    """responses_split_keys' autograd: torch's CPU flash kernel, which returns the log-sum-exp and
    has a backward that takes the output and log-sum-exp as arguments. Each part's backward is given
    the MERGED output and log-sum-exp (as ring attention does): then softmax(scores - lse) is each key's
    true probability and rowsum(dO * O) the true correction, so the parts' gradients add up exactly."""

    @staticmethod
    def forward(ctx, kp, vp, q, k, v, lens, scale):
        # the kernel reads grouped-query K/V itself (Hkv heads, each serving H/Hkv query heads)
        o_p, lse_p = FLASH_CPU(q, kp, vp, 0.0, False, scale=scale)  # [1, H, T, D], [1, H, T]
        pieces = zip(*(x.split(lens, 2) for x in (q, k, v)))
        own = [FLASH_CPU(*p, 0.0, True, scale=scale) for p in pieces]  # each response over its own keys
        o_g, lse_g = torch.cat([o for o, _ in own], 2), torch.cat([s for _, s in own], 2)
        out, lse = merge_attention(o_p.transpose(1, 2), lse_p, o_g.transpose(1, 2), lse_g)
        out = out.transpose(1, 2).contiguous()  # [1, H, T, D], q's dtype
        ctx.save_for_backward(kp, vp, q, k, v, out, lse)
        ctx.lens, ctx.scale = lens, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        kp, vp, q, k, v, out, lse = ctx.saved_tensors
        lens, scale = ctx.lens, ctx.scale
        grad = grad.contiguous()
        dq, dkp, dvp = FLASH_CPU_BACKWARD(grad, q, kp, vp, out, lse, 0.0, False, scale=scale)  # dkp [1, Hkv, P, D]
        pieces = zip(*(x.split(lens, 2) for x in (grad, q, k, v, out, lse)))
        own = [FLASH_CPU_BACKWARD(*p, 0.0, True, scale=scale) for p in pieces]  # (dq, dk, dv) each
        dq = dq + torch.cat([d[0] for d in own], 2)
        return (dkp, dvp, dq, torch.cat([d[1] for d in own], 2), torch.cat([d[2] for d in own], 2), None, None)


class GatherSumFloat32(torch.autograd.Function):
    """x.index_select(0, idx) in `dtype`, whose backward sums the gradients of rows gathered more than
    once (the prompt's K/V, once per response) in float32, chunk by chunk: the gathered copy stays
    in the kernel's dtype (bf16: 4 KB per token at 8 kv heads of 128, not 8), and the sum of G
    responses' gradients is not rounded to bf16 at every addition."""

    @staticmethod
    def forward(ctx, x, idx, dtype):
        ctx.save_for_backward(idx)
        ctx.shape, ctx.dtype = x.shape, x.dtype
        return x.to(dtype).index_select(0, idx)

    @staticmethod
    def backward(ctx, grad, chunk: int = 1 << 16):
        idx, = ctx.saved_tensors
        out = torch.zeros(ctx.shape, dtype=torch.float32, device=grad.device)
        for s in range(0, len(idx), chunk):  # a float32 copy of one chunk of the gradient at a time
            out.index_add_(0, idx[s:s + chunk], grad[s:s + chunk].float())
        return out.to(ctx.dtype), None, None


def packed_flash(lay: PackedGroups, q, k, v, scale):
    """flash-attn kernel: prompts causal (varlen), responses over gathered [prompt, own] keys."""
    from flash_attn import flash_attn_varlen_func
    q, k, v = q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1)  # [S, H(kv), D]
    qp, kp, vp = to_flash_dtype(q.index_select(0, lay.prompt_idx), k.index_select(0, lay.prompt_idx),
                                v.index_select(0, lay.prompt_idx))
    outs = [flash_attn_varlen_func(qp, kp, vp, lay.cu_p, lay.cu_p, lay.max_p, lay.max_p,
                                   softmax_scale=scale, causal=True)]              # [sum P, H, D]
    if lay.resp_idx.numel():
        qr, = to_flash_dtype(q.index_select(0, lay.resp_idx))
        kr = GatherSumFloat32.apply(k, lay.key_idx, qr.dtype)  # [sum_j (P + r_j), Hkv, D]
        vr = GatherSumFloat32.apply(v, lay.key_idx, qr.dtype)
        outs.append(flash_attn_varlen_func(qr, kr, vr, lay.cu_rq, lay.cu_rk, lay.max_rq, lay.max_rk,
                                           softmax_scale=scale, causal=True))
        # ^ causal = bottom-right: query t of r_j sees the P prompt keys and its own keys 0..t
    return torch.cat(outs).index_select(0, lay.unpack)[None]  # [1, S, H, D]
