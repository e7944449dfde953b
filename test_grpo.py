"""grpo.py against direct transcriptions of the recipe's formulas and the naive full-vocab log-softmax."""

import math

import pytest
import torch

from grpo import group_advantages, kl_k3, policy_loss, rollout_is_weights, token_logprobs


# -----------------------------------------------------------------------------
# group_advantages

def test_grpo_advantages_by_hand():
    r = torch.tensor([1., 0., 0., 0., .9, .1, .5, .5, .3])
    g = [0] * 4 + [1] * 4 + [2]
    a = group_advantages(r, g)
    assert a[:4].tolist() == pytest.approx([1.5, -.5, -.5, -.5], abs=1e-5)
    s = math.sqrt((.16 + .16) / 3)
    assert a[4:8].tolist() == pytest.approx([.4 / s, -.4 / s, 0, 0], abs=1e-5)
    assert a[8].item() == pytest.approx(.3, abs=1e-5)  # single sample: mu = 0, s = 1
    dr = group_advantages(r, g, scale=False)  # Dr. GRPO: centred, not scaled
    assert dr[:8].tolist() == pytest.approx([.75, -.25, -.25, -.25, .4, -.4, 0, 0], abs=1e-6)
    assert dr[8].item() == pytest.approx(.3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grpo_all_equal_group_and_dtype(dtype):
    a = group_advantages(torch.tensor([1., 1., 1., 0., 1.], dtype=dtype), ["a", "a", "a", "b", "b"])
    assert a.dtype == dtype and a[:3].tolist() == [0, 0, 0] and torch.isfinite(a).all()


def test_grpo_order_and_id_types():
    r = torch.rand(40, generator=torch.Generator().manual_seed(0))
    g = [i // 5 for i in range(40)]
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(group_advantages(r[perm], [g[i] for i in perm]), group_advantages(r, g)[perm])
    assert torch.equal(group_advantages(r, torch.tensor(g) * 13), group_advantages(r, [f"p{x}" for x in g]))


# -----------------------------------------------------------------------------
# policy_loss

def loss_reference(logp, old, adv, mask, is_w=None, cl=0.2, ch=0.28, dc=3.0):
    """The clipped loss token by token in Python floats. Returns (token-mean, seq-mean-token-mean, metrics)."""
    B, T = logp.shape
    total, n, seq_means, clip, kl, lower = 0.0, 0, [], 0, 0.0, 0
    for i in range(B):
        s, m = 0.0, 0
        for t in range(T):
            if not mask[i][t]:
                continue
            a = float(adv[i]) if adv.dim() == 1 else float(adv[i][t])
            lr = max(-20.0, min(20.0, float(logp[i][t] - old[i][t])))
            ratio = math.exp(lr)
            l1, l2 = -a * ratio, -a * min(max(ratio, 1 - cl), 1 + ch)
            L = max(l1, l2)
            if a < 0:
                lower += L > -a * dc
                L = min(L, -a * dc)
            if is_w is not None:
                L *= float(is_w[i][t])
            clip += l2 > l1
            kl += -lr
            s, m = s + L, m + 1
        total, n = total + s, n + m
        if m:
            seq_means.append(s / m)
    return total / n, sum(seq_means) / len(seq_means), dict(
        pg_clipfrac=clip / n, ppo_kl=kl / n, pg_clipfrac_lower=lower / n)


def random_batch(B=6, T=9, seed=0, per_token_adv=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 3
    # wide log-ratios so that the low clip, high clip and dual clip all fire
    logp = old + torch.randn(B, T, generator=g, dtype=dtype) * 1.5
    adv = torch.randn(B, T, generator=g, dtype=dtype) * 2 if per_token_adv else torch.randn(B, generator=g, dtype=dtype) * 2
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = 0  # an empty row must not count as a sequence
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return logp, old, adv, mask


@pytest.mark.parametrize("per_token_adv", [False, True])
@pytest.mark.parametrize("with_is", [False, True])
def test_policy_loss_matches_transcription(per_token_adv, with_is):
    for seed in range(5):
        logp, old, adv, mask = random_batch(seed=seed, per_token_adv=per_token_adv)
        is_w = torch.rand(logp.shape, dtype=logp.dtype, generator=torch.Generator().manual_seed(9)) if with_is else None
        tok, seq, m = loss_reference(logp, old, adv, mask, is_w)
        loss, metrics = policy_loss(logp, old, adv, mask, is_weights=is_w)
        assert loss.item() == pytest.approx(tok, rel=1e-9)
        loss_s, _ = policy_loss(logp, old, adv, mask, is_weights=is_w, agg="seq-mean-token-mean")
        assert loss_s.item() == pytest.approx(seq, rel=1e-9)
        for k in m:
            assert metrics[k] == pytest.approx(m[k], abs=1e-12), k
    # the batch really exercises both clips and the dual clip
    assert 0 < m["pg_clipfrac"] < 1 and 0 < m["pg_clipfrac_lower"] < 1


def test_policy_loss_gradient_and_on_policy_value():
    logp, old, adv, mask = random_batch(seed=3)
    # at the first update logp == old: ratio 1, loss = -token-mean of A, gradient = -A / N per token
    x = old.clone().requires_grad_(True)
    loss, m = policy_loss(x, old, adv, mask)
    loss.backward()
    N = mask.sum()
    assert loss.item() == pytest.approx((-(adv[:, None] * mask).sum() / N).item())
    assert torch.allclose(x.grad, -adv[:, None].expand_as(mask) * mask / N)
    assert m["pg_clipfrac"] == 0 and m["ppo_kl"] == 0 and m["pg_clipfrac_lower"] == 0
    # clipped tokens carry no gradient: ratio 2 with A > 0 is past 1.28
    y = (old + math.log(2.0)).requires_grad_(True)
    policy_loss(y, old, adv.abs(), mask)[0].backward()
    assert y.grad.abs().max() == 0


def test_data_parallel_num_tokens_arithmetic():
    """Simulate W ranks in one process with a parameter shared by all ranks. Each rank uses the
    global token count N, splits its rows into micro-batches (gradient accumulation) and scales its
    loss by W; averaging the ranks' gradients (what DDP's all-reduce does) then gives exactly the
    gradient of the global token-mean loss, and the ranks' unscaled losses sum to that loss."""
    logp0, old, adv, mask = random_batch(B=8, T=7, seed=5)
    x = torch.randn(logp0.shape, dtype=logp0.dtype, generator=torch.Generator().manual_seed(2))

    def logp_of(theta, rows):  # a toy policy: log-probs move with one shared parameter vector
        return logp0[rows] + x[rows] * theta                                     # [b, T]

    theta = torch.tensor([0.3] * 7, dtype=logp0.dtype, requires_grad=True)
    full, _ = policy_loss(logp_of(theta, slice(None)), old, adv, mask)
    (g_full,) = torch.autograd.grad(full, theta)

    W, N = 4, int(mask.sum())  # N: an all_reduce of each rank's mask.sum() in a real run
    rank_losses, rank_grads = [], []
    for r in range(W):
        th = theta.detach().clone().requires_grad_(True)  # each rank's replica of the parameter
        loss_r = 0.0
        for i in (2 * r, 2 * r + 1):  # two micro-batches of one row each
            rows = slice(i, i + 1)
            part, _ = policy_loss(logp_of(th, rows), old[rows], adv[rows], mask[rows], num_tokens=N)
            (W * part).backward()     # gradients accumulate across micro-steps
            loss_r += part.item()
        rank_losses.append(loss_r)
        rank_grads.append(th.grad)
    assert sum(rank_losses) == pytest.approx(full.item(), rel=1e-12)
    assert torch.allclose(torch.stack(rank_grads).mean(0), g_full, rtol=1e-10, atol=1e-12)
    # the per-rank mean (num_tokens = local count) is NOT the global mean when counts differ
    local = [policy_loss(logp0[2 * r:2 * r + 2], old[2 * r:2 * r + 2], adv[2 * r:2 * r + 2],
                         mask[2 * r:2 * r + 2])[0].item() for r in range(W)]
    assert sum(local) / W != pytest.approx(full.item(), rel=1e-6)


def test_policy_loss_bad_agg():
    logp, old, adv, mask = random_batch()
    with pytest.raises(ValueError, match="agg"):
        policy_loss(logp, old, adv, mask, agg="sum")


# -----------------------------------------------------------------------------
# rollout_is_weights and kl_k3

def test_is_weights_band_and_veto():
    old = torch.zeros(3, 4)
    roll = torch.tensor([
        [0.0, math.log(1 / 0.4), math.log(1 / 6.0), math.log(1 / 2.0)],  # w = 1, .4 (out), 6 (out), 2
        [0.0, 12.0, 0.0, 0.0],                                             # w = e^-12 < 1e-4: veto row
        [0.0, 0.0, 12.0, 0.0],                                             # same, but on a padded token
    ])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    w, m = rollout_is_weights(old, roll, mask)
    assert w[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 2.0])
    assert w[1].tolist() == [0, 0, 0, 0]          # vetoed whole
    assert w[2].tolist() == [1, 1, 0, 0]          # padding never vetoes or counts
    assert m["is_veto_frac"] == pytest.approx(1 / 3)
    assert m["is_zeroed_frac"] == pytest.approx((2 + 3) / 9)
    kl = (-(old - roll) * mask).sum() / mask.sum()
    assert m["is_mismatch_kl"] == pytest.approx(kl.item())
    assert not w.requires_grad


def test_kl_k3():
    lp = torch.tensor([-1.0, -2.0, -0.5])
    assert kl_k3(lp, lp).tolist() == [0, 0, 0]
    ref = torch.tensor([-1.5, -1.0, -0.5])
    d = ref - lp
    assert torch.allclose(kl_k3(lp, ref), torch.exp(d) - d - 1)
    assert (kl_k3(lp, ref) >= 0).all()


def test_kl_k3_clamps_as_documented():
    # d = ref - logp: 2 is inside both clamps (e^2 - 3 = 4.4); 5 gives e^5 - 6 = 142 -> clamped to 10; 1000 and
    # -1000 would overflow (inf) or grow without bound without the d clamp and end at 10 too.
    lp = torch.zeros(4, requires_grad=True)
    ref = torch.tensor([2.0, 5.0, 1000.0, -1000.0])
    out = kl_k3(lp, ref)
    assert out[0].item() == pytest.approx(math.exp(2) - 3) and out[1:].tolist() == [10.0, 10.0, 10.0]
    out.sum().backward()
    # Where a clamp is active the gradient is zero: d(k3)/d(logp) = 1 - exp(d) only for the first token.
    assert lp.grad.tolist() == pytest.approx([1 - math.exp(2), 0.0, 0.0, 0.0])


# -----------------------------------------------------------------------------
# token_logprobs: chunked vs naive log_softmax, value and gradient

@pytest.mark.parametrize("chunk", [1, 7, 16, 50, 1000])  # divides 50 or not, bigger than N
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_equals_naive(chunk, temperature):
    g = torch.Generator().manual_seed(0)
    N, H, V = 50, 32, 301
    h = torch.randn(N, H, generator=g, requires_grad=True)
    # logits of a realistic size (std ~3, like a trained LM head), not std ~sqrt(H)
    W = (torch.randn(V, H, generator=g) * 3 / H ** 0.5).requires_grad_(True)
    y = torch.randint(0, V, (N,), generator=g)
    upstream = torch.randn(N, generator=g)  # a non-uniform upstream gradient
    naive = torch.log_softmax((h @ W.T) / temperature, -1).gather(1, y[:, None])[:, 0]
    gh, gw = torch.autograd.grad((naive * upstream).sum(), (h, W))
    fast = token_logprobs(h, W, y, temperature=temperature, chunk_size=chunk)
    fh, fw = torch.autograd.grad((fast * upstream).sum(), (h, W))
    assert fast.dtype == torch.float32
    assert torch.allclose(fast, naive, atol=1e-5)
    assert torch.allclose(fh, gh, atol=1e-5) and torch.allclose(fw, gw, atol=1e-5)


def test_token_logprobs_only_hidden_grad_and_shapes():
    h = torch.randn(10, 8, requires_grad=True)
    W = torch.randn(20, 8)  # frozen head
    y = torch.randint(0, 20, (10,))
    token_logprobs(h, W, y, chunk_size=3).sum().backward()
    assert h.grad is not None and W.grad is None
    with pytest.raises(ValueError, match="targets"):
        token_logprobs(h, W, y[:5])


def test_token_logprobs_no_tokens_gives_zero_weight_grad():
    """No response tokens (the backward's chunk loop never runs): a zero [V, H] gradient, not None."""
    h = torch.randn(0, 8, requires_grad=True)
    W = torch.randn(20, 8, requires_grad=True)
    token_logprobs(h, W, torch.zeros(0, dtype=torch.long)).sum().backward()
    assert W.grad.shape == W.shape and not W.grad.any() and h.grad.shape == (0, 8)


def test_token_logprobs_never_holds_full_logits():
    """Autograd keeps nothing of size [N, V]: the saved tensors are the inputs and a [N] logsumexp."""
    N, H, V, chunk = 256, 16, 4096, 32
    h = torch.randn(N, H, requires_grad=True)
    W = torch.randn(V, H, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = token_logprobs(h, W, torch.randint(0, V, (N,)), chunk_size=chunk)
    assert max(saved) <= max(N * H, V * H)  # the inputs themselves, nothing [N, V]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        saved.clear()
        naive = torch.log_softmax(h @ W.T, -1)
    assert max(saved) >= N * V  # the naive way keeps the full [N, V] block for backward
    out.sum().backward()
