"""The GRPO objective of GoLongRL: advantages, the clipped policy loss, rollout IS weights, and
memory-safe log-probs. Imports only torch; every function can be copied on its own.

    from grpo import group_advantages, policy_loss, rollout_is_weights, token_logprobs

What is here (the GoLongRL recipe's advantages, loss and importance weights, arXiv 2605.19577):
  group_advantages   vanilla GRPO (or Dr. GRPO with scale=False): per-prompt mean and std
  policy_loss        PPO clip with clip-higher (0.2 / 0.28) and dual-clip (3.0), token-mean, no KL
  rollout_is_weights per-token importance weights between the trainer's and the sampler's log-probs
  token_logprobs     log p(target) chunk by chunk, never holding [tokens, vocab] floats at once
  kl_k3              optional k3 estimator of KL to a frozen reference (off in the paper's recipe)
TMN-Reweight, the paper's own advantage, lives in tmn.py.
"""

import math
from typing import Hashable, Optional, Sequence, Union

import torch
from torch import Tensor

Ids = Union[Tensor, Sequence[Hashable]]


# -----------------------------------------------------------------------------
# Advantages: vanilla GRPO

def _dense(ids: Ids, n: int, device) -> tuple[Tensor, int]:
    """Labels (1-D int tensor or a list of hashables) -> (dense index [n], number of groups).
    (Same helper as in tmn.py: each file stays copyable on its own.)"""
    if isinstance(ids, Tensor):
        if ids.dim() != 1 or ids.numel() != n:
            raise ValueError(f"ids must be a 1-D tensor of length {n}, got shape {tuple(ids.shape)}")
        _, index = torch.unique(ids, return_inverse=True)
        return index.to(device), int(index.max()) + 1 if n else 0
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"ids must have length {n}, got {len(ids)}")
    codes: dict = {}
    index = [codes.setdefault(i, len(codes)) for i in ids]
    return torch.tensor(index, dtype=torch.long, device=device), len(codes)


def group_advantages(rewards: Tensor, group_ids: Ids, eps: float = 1e-6, scale: bool = True) -> Tensor:
    """GRPO advantages A_xj = (r_xj - mu_x) / (s_x + eps), [B].

    rewards [B]; group_ids [B] says which prompt each sample answers. s_x is the unbiased std of the
    prompt's rewards. A prompt with a single sample uses mu = 0, s = 1 (the recipe's convention), so its
    advantage is its reward. scale=False is Dr. GRPO: A = r - mu, no division by the std.
    """
    r = rewards if rewards.is_floating_point() else rewards.float()
    group, X = _dense(group_ids, r.numel(), r.device)
    zeros = torch.zeros(X, dtype=r.dtype, device=r.device)
    count = zeros.scatter_add(0, group, torch.ones_like(r))                      # [X]
    mean = zeros.scatter_add(0, group, r) / count                                # [X]
    var = zeros.scatter_add(0, group, (r - mean[group]) ** 2) / (count - 1).clamp(min=1)
    single = count == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(var), var.sqrt())
    adv = r - mean[group]
    return adv / (std[group] + eps) if scale else adv


# -----------------------------------------------------------------------------
# The policy loss

def policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                clip_low: float = 0.2, clip_high: float = 0.28, dual_clip: float = 3.0,
                is_weights: Optional[Tensor] = None, agg: str = "token-mean",
                num_tokens: Optional[float] = None, num_seqs: Optional[float] = None
                ) -> tuple[Tensor, dict]:
    """Clipped policy-gradient loss (clip-higher and dual-clip, as the recipe). Returns (scalar loss, metrics of floats).

    logprobs, old_logprobs [B, T]: log p of each response token under the current policy (with grad)
        and under the policy that made the batch (no grad; equal to logprobs at the first update).
    advantages [B] (one per sequence, broadcast) or [B, T].  mask [B, T]: 1 on response tokens.
    is_weights [B, T]: rollout importance weights (rollout_is_weights), applied as constants.

    Per token: ratio = exp(clamp(logp - old, -20, 20)); L = max(-A*ratio, -A*clamp(ratio, 1-0.2, 1+0.28));
    when A < 0 also L = min(L, -A*3) (dual-clip: a hugely off-policy token cannot blow up the loss).

    agg="token-mean": sum(L*mask) / num_tokens, num_tokens defaulting to this call's mask.sum().
    agg="seq-mean-token-mean": each sequence's token mean, summed and divided by num_seqs (default:
        this call's number of non-empty sequences). The paper's runs, with one sequence per
        micro-batch, effectively used this.

    Data parallel arithmetic (why num_tokens exists). Rank r holds tokens n_r of N = sum_r n_r and
    calls policy_loss(..., num_tokens=N), so loss_r = S_r / N with S_r = sum of its L*mask, and
    sum_r loss_r = (sum_r S_r) / N: exactly the global token mean. DDP *averages* gradients over the
    W ranks, giving (1/W) * grad(global mean); multiply each rank's loss by W before backward (or pass
    num_tokens = N / W) to get the gradient of the global token mean itself. Gradient accumulation
    over micro-batches is the same sum: pass the global N to every micro-batch and add them up.
    Metrics are means over this call's valid tokens.
    """
    mask = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv[:, None]                                                       # [B, 1] -> broadcast
    # Clamp before exp so the ratio stays finite (float32 exp overflows past 88). A ratio of e^20 = 5e8
    # or e^-20 = 2e-9 is far outside the clip range, so the loss is the same; only ppo_kl is capped.
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(loss1, loss2)                                        # [B, T]
    loss3 = -adv * dual_clip
    per_token = torch.where(adv < 0, torch.minimum(clipped, loss3), clipped)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()

    if agg == "token-mean":
        denom = mask.sum() if num_tokens is None else num_tokens
        loss = (per_token * mask).sum() / max(float(denom), 1.0)
    elif agg == "seq-mean-token-mean":
        seq_tokens = mask.sum(-1)                                                # [B]
        seq_mean = (per_token * mask).sum(-1) / seq_tokens.clamp(min=1)
        denom = (seq_tokens > 0).sum() if num_seqs is None else num_seqs
        loss = seq_mean.sum() / max(float(denom), 1.0)
    else:
        raise ValueError(f"agg must be 'token-mean' or 'seq-mean-token-mean', got {agg!r}")

    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        metrics = {
            "pg_clipfrac": float(((loss2 > loss1).to(mask.dtype) * mask).sum() / n),
            "ppo_kl": float((-log_ratio * mask).sum() / n),
            "pg_clipfrac_lower": float((((clipped > loss3) & (adv < 0)).to(mask.dtype) * mask).sum() / n),
        }
    return loss, metrics


# -----------------------------------------------------------------------------
# Rollout importance sampling: the sampler's numerics differ from the trainer's

def rollout_is_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor,
                       low: float = 0.5, high: float = 5.0, veto: float = 1e-4) -> tuple[Tensor, dict]:
    """Per-token weights w = p_train / p_rollout, [B, T], no gradient (the rollout importance-sampling correction).

    Tokens whose weight falls outside [low, high] get weight 0 (dropped, not clamped). A sequence with
    any valid token whose ratio is below `veto` is dropped whole: one catastrophically mismatched
    token means the sampler followed a path the trainer would not have.
    """
    with torch.no_grad():
        valid = mask.bool()
        log_w = torch.where(valid, old_logprobs - rollout_logprobs, torch.zeros_like(old_logprobs))
        # Clamp only keeps exp finite: weights outside [low, high] are zeroed below anyway, and the
        # veto reads the unclamped log_w.
        w = torch.exp(log_w.clamp(-20.0, 20.0))
        in_band = (w >= low) & (w <= high)
        vetoed = ((log_w < math.log(veto)) & valid).any(-1)                      # [B]
        w = torch.where(in_band & valid & ~vetoed[:, None], w, torch.zeros_like(w))
        n = valid.sum().clamp(min=1)
        has_tokens = valid.any(-1)
        metrics = {
            "is_weight_mean": float(w[valid].mean()) if valid.any() else 0.0,
            "is_zeroed_frac": float(((w == 0) & valid).sum() / n),
            "is_veto_frac": float((vetoed & has_tokens).sum() / has_tokens.sum().clamp(min=1)),
            "is_mismatch_kl": float((-log_w * valid).sum() / n),
        }
    return w, metrics


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 estimator of KL(pi || ref) per token: exp(d) - d - 1 with d = ref - logp, >= 0. Off by default
    (the paper uses no KL term).

    Unbiased for tokens sampled from pi, before two clamps that trade that for stability: d is clamped
    to [-20, 20] so exp(d) stays finite, and the output to [-10, 10] (in effect [0, 10], since k3 >= 0)
    so one token the policy has moved far from the reference cannot dominate the loss (verl clamps the
    same way). Where a clamp is active the estimate is biased low and its gradient is zero."""
    d = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return (torch.exp(d) - d - 1).clamp(-10.0, 10.0)


# -----------------------------------------------------------------------------
# Log-probs of the response tokens without materializing [tokens, vocab]

def _chunk_logits(h: Tensor, weight: Tensor, temperature: float) -> Tensor:
    """[c, H] x [V, H] -> float32 logits / temperature [c, V], with no second [c, V] copy."""
    logits = (h @ weight.T).float()
    return logits.div_(temperature) if temperature != 1.0 else logits


class _ChunkedLogprobs(torch.autograd.Function):
    """log softmax(h @ W^T / temperature)[target], computed and differentiated chunk by chunk.

    Forward keeps only the per-token logsumexp [N]. Backward recomputes each chunk's logits and uses
    d logp / d logits = (onehot(target) - softmax) / temperature, so peak extra memory is one chunk's
    [chunk, V] float32 block in both passes (autograd would otherwise keep every chunk's logits).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size):
        N = hidden.shape[0]
        out = torch.empty(N, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(N, dtype=torch.float32, device=hidden.device)
        for s in range(0, N, chunk_size):
            logits = _chunk_logits(hidden[s:s + chunk_size], weight, temperature)  # [c, V] fp32
            lse[s:s + chunk_size] = torch.logsumexp(logits, dim=-1)
            out[s:s + chunk_size] = logits.gather(1, targets[s:s + chunk_size, None])[:, 0] - lse[s:s + chunk_size]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, lse = ctx.saved_tensors
        t, c = ctx.temperature, ctx.chunk_size
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = None  # [V, H] float32: the first chunk's product, the others added in place (no zero fill)
        for s in range(0, hidden.shape[0], c):
            h = hidden[s:s + c]
            # g = d logp / d logits = onehot - softmax, built in place in the one [c, V] buffer
            g = _chunk_logits(h, weight, t).sub_(lse[s:s + c, None]).exp_().neg_()
            g.scatter_add_(1, targets[s:s + c, None], torch.ones_like(g[:, :1]))
            g.mul_(grad_out[s:s + c, None].float() / t)                          # chain rule, [c, V]
            if want_h:
                grad_h[s:s + c] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
            if want_w:  # [V, H] fp32; addmm_ adds in place, no second [V, H] per chunk
                grad_w = g.T @ h.float() if grad_w is None else grad_w.addmm_(g.T, h.float())
        if want_w and grad_w is None:  # no tokens: a zero gradient
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        return grad_h, (grad_w.to(weight.dtype) if want_w else None), None, None, None


def token_logprobs(hidden: Tensor, lm_head_weight: Tensor, targets: Tensor,
                   temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """log p(targets) under softmax(hidden @ lm_head_weight^T / temperature), float32 [N].

    hidden [N, H]: the final hidden states at the positions that *predict* the response tokens
    (position t predicts token t+1; select those rows before calling, never the prompt's).
    lm_head_weight [V, H]; targets [N] int64. At V = 151,936 and N = 16K, the naive
    log_softmax(logits) needs ~10 GB of float32 [N, V] (twice over in backward); this needs
    chunk_size * V * 4 bytes (~0.6 GB at 1024) in forward and in backward.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be [N, H] and targets [N]; got {tuple(hidden.shape)}, {tuple(targets.shape)}")
    return _ChunkedLogprobs.apply(hidden, lm_head_weight, targets.long(), float(temperature), int(chunk_size))
