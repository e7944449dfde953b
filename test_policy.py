"""Tests for policy.py's shared-prefix training forward against the per-row forward (the reference).

    python -m pytest -q test_policy.py --durations=5

The per-row path (policy.forward_logprobs: one padded row [prompt, r_j] per response) is the slow
obvious reference; the shared path (policy.forward_logprobs_shared: one packed [prompt, r_1..r_G]
per group) must give the same log-probs and the same gradients, on the torch kernel and on the
flash-attn kernel (run on CPU through the strict flash_attn stand-in, which computes in bf16 only:
those runs go under bf16 autocast and are held to the torch kernel's error under the same autocast).
Tiny random float32 Qwen3 and Llama models.
"""

import contextlib
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import grpo
import policy
from conftest import tiny_llama, tiny_qwen3
import attention
import packing

CPU = torch.device("cpu")
INIT = 0.3  # random weights large enough that attention matters (as in test_rollout)


def make_model(family: str):
    if family == "qwen3":  # Qwen's full vocabulary (its special ids live at the end); tokens below 64
        return tiny_qwen3(initializer_range=INIT)
    return tiny_llama(vocab_size=64, initializer_range=INIT)


def make_rows(vocab: int, prompt_lens, group_sizes, T: int = 7, eos: int = 2, seed: int = 1):
    """Rows as data.Rows holds them (prompt-major, the n rows of a prompt share its list): responses
    of T tokens where EOS lands at a different step per row, then pad 0 and mask False. One row of
    the last group has no response token at all (a row the forward must skip, not break on)."""
    g = torch.Generator().manual_seed(seed)
    prompts, tokens, mask, k = [], [], [], 0
    for L, n in zip(prompt_lens, group_sizes):
        p = torch.randint(3, vocab, (L,), generator=g).tolist()
        for _ in range(n):
            r = 1 + (3 * k + L) % T  # response length = EOS step + 1, varies row to row
            t = torch.randint(3, vocab, (T,), generator=g)
            t[r - 1] = eos
            m = torch.arange(T) < r
            prompts.append(p)
            tokens.append(torch.where(m, t, 0))
            mask.append(m)
            k += 1
    mask[-1][:] = False
    tokens[-1][:] = 0
    return SimpleNamespace(prompts=prompts, tokens=torch.stack(tokens), mask=torch.stack(mask))


def policy_loss(lp, rows, mb):
    """The trainer's loss on these rows (token-mean, clip, the per-row advantages below)."""
    adv = torch.linspace(-1, 1, len(mb))
    old = lp.detach() + 0.05 * torch.cos(torch.arange(lp.numel()).view_as(lp))  # off-policy: clip acts
    loss, _ = grpo.policy_loss(lp, old, adv, rows.mask[mb], 0.2, 0.28, 3.0, None, "token-mean",
                               num_tokens=int(rows.mask[mb].sum()))
    return loss


def grads(net, rows, batches, forward):
    """Parameter gradients of the policy loss summed over micro-batches (as train.update does)."""
    net.zero_grad(set_to_none=True)
    for mb in batches:
        lp = forward(net, rows, mb, 0, CPU)
        policy_loss(lp, rows, mb).backward()
    return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


def assert_same_grads(a: dict, b: dict, rel: float = 1e-4):
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        err = float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12))
        assert err < rel, (k, err)


@pytest.fixture(params=["torch", "flash"])
def path(request, monkeypatch):
    """Which kernel forward_logprobs_shared runs; 'flash' installs the strict flash_attn stand-in."""
    if request.param == "flash":
        from conftest import load_flash_stand_in
        monkeypatch.setitem(sys.modules, "flash_attn", load_flash_stand_in())
    return request.param


def shared(path):
    """The shared-prefix forward on `path`; flash runs under bf16 autocast (all it computes in)."""
    def fwd(net, rows, mb, pad, dev):
        with torch.autocast("cpu", dtype=torch.bfloat16) if path == "flash" else contextlib.nullcontext():
            return policy.forward_logprobs_shared(net, rows, mb, pad, dev, attention=path)
    return fwd


# -----------------------------------------------------------------------------
# Log-probs and gradients equal the per-row path

@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_shared_logprobs_and_grads_equal_per_row(family, path):
    net = policy.Policy(make_model(family).train(), temperature=0.8, chunk=16)
    rows = make_rows(64, prompt_lens=[9, 4, 15], group_sizes=[3, 1, 4])
    mb = list(range(len(rows.prompts)))
    want = policy.forward_logprobs(net, rows, mb, 0, CPU)
    got = shared(path)(net, rows, mb, 0, CPU)
    assert got.shape == want.shape and (got[~rows.mask] == 0).all()
    assert float(want[rows.mask].abs().min().detach()) > 0  # every response token was scored
    if path == "torch":  # float32: exact up to summation order
        assert float((got - want).abs().max().detach()) < 1e-4
        assert_same_grads(grads(net, rows, [mb], policy.forward_logprobs), grads(net, rows, [mb], shared(path)))
        return
    # flash computes in bf16: as close to the float32 per-row result as the torch kernel under bf16 is
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref16 = policy.forward_logprobs_shared(net, rows, mb, 0, CPU, attention="torch")
    err, err_torch = float((got - want).abs().max().detach()), float((ref16 - want).abs().max().detach())
    assert err < 3 * err_torch + 1e-3, (err, err_torch)
    g32, g_flash = grads(net, rows, [mb], policy.forward_logprobs), grads(net, rows, [mb], shared(path))

    def torch16(net, rows, mb, pad, dev):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return policy.forward_logprobs_shared(net, rows, mb, pad, dev, attention="torch")
    g_torch16 = grads(net, rows, [mb], torch16)
    for k in g32:
        e, e16 = float((g_flash[k] - g32[k]).norm()), float((g_torch16[k] - g32[k]).norm())
        assert e < 3 * e16 + 1e-3 * float(g32[k].norm()), (k, e, e16)


def test_rows_of_a_group_need_not_be_adjacent_or_ordered():
    """The result follows the order of `mb` whatever the packing order (train's mini-batches pick
    rows k::K, old_lp[mb] writes them back by position)."""
    net = policy.Policy(make_model("llama"), temperature=1.0, chunk=16)
    rows = make_rows(64, prompt_lens=[6, 11], group_sizes=[3, 3])
    mb = [4, 0, 5, 2, 1]
    want = policy.forward_logprobs(net, rows, mb, 0, CPU)
    got = policy.forward_logprobs_shared(net, rows, mb, 0, CPU)
    assert float((got - want).abs().max().detach()) < 1e-4


# -----------------------------------------------------------------------------
# Micro-batching by packed tokens; a group over the budget split into sub-groups

def packed_tokens(rows, mb):
    return sum(len(rows.prompts[g[0]]) + sum(int(rows.mask[i].sum()) for i in g)
               for g in policy.group_rows(rows, mb))


def test_shared_micro_batches_count_the_prompt_once_and_split_big_groups():
    rows = make_rows(64, prompt_lens=[20, 5, 8], group_sizes=[4, 2, 3])
    idx = list(range(len(rows.prompts)))
    budget = 30
    mbs = policy.shared_micro_batches(rows, idx, budget)
    assert sorted(i for mb in mbs for i in mb) == idx  # every row exactly once
    for mb in mbs:
        assert packed_tokens(rows, mb) <= budget or len(mb) == 1
    # group 0 (20 + 4 responses) does not fit 30 tokens: sub-groups, each carrying the prompt
    holders = [mb for mb in mbs if set(mb) & {0, 1, 2, 3}]
    assert len(holders) > 1
    # with a large budget the whole batch is one micro-batch, prompts counted once
    assert policy.shared_micro_batches(rows, idx, 10_000) == [idx]
    assert packed_tokens(rows, idx) == 33 + int(rows.mask.sum())
    # the split is said, with the budget that avoids it; none said when nothing is split
    note = policy.split_note(rows, idx, mbs, budget)
    need = max(packed_tokens(rows, g) for g in policy.group_rows(rows, idx))
    pieces = sum(len(policy.group_rows(rows, mb)) for mb in mbs)
    assert f"{pieces} pieces instead of 3 groups" in note and f"--micro-batch-tokens {need} or more" in note
    assert policy.split_note(rows, idx, mbs=policy.shared_micro_batches(rows, idx, need), budget=need) is None


def test_group_split_across_micro_batches_gives_the_same_logprobs_and_grads(path):
    net = policy.Policy(make_model("qwen3").train(), temperature=1.0, chunk=16)
    rows = make_rows(64, prompt_lens=[12, 7], group_sizes=[5, 3])
    idx = list(range(len(rows.prompts)))
    mbs = policy.shared_micro_batches(rows, idx, 24)
    assert any(len(set(mb) & set(range(5))) not in (0, 5) for mb in mbs)  # group 0 is split
    fwd = shared(path)
    got = torch.zeros(rows.tokens.shape)
    for mb in mbs:
        got[mb] = fwd(net, rows, mb, 0, CPU).detach()
    # flash computes in bf16: its reference is the same kernel on the unsplit groups, to bf16 rounding
    ref = policy.forward_logprobs if path == "torch" else fwd
    tol, rel = (1e-4, 1e-4) if path == "torch" else (3e-2, 5e-2)
    want = ref(net, rows, idx, 0, CPU)
    assert float((got - want).abs().max().detach()) < tol
    # the loss is a sum over micro-batches only when each divides by the same global token count
    n_tok = int(rows.mask.sum())

    def grads_mb(batches, forward):
        net.zero_grad(set_to_none=True)
        for mb in batches:
            lp = forward(net, rows, mb, 0, CPU)
            adv = torch.linspace(-1, 1, len(rows.prompts))[mb]
            loss, _ = grpo.policy_loss(lp, lp.detach(), adv, rows.mask[mb], 0.2, 0.28, 3.0, None,
                                       "token-mean", num_tokens=n_tok)
            loss.backward()
        return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    assert_same_grads(grads_mb([idx], ref), grads_mb(mbs, fwd), rel)


# -----------------------------------------------------------------------------
# The attention setting: selected only while needed, through backward under checkpointing

def test_gradient_checkpointing_needs_the_setting_through_backward():
    """HF's checkpointing recomputes each layer in backward and looks the attention function up by
    name then. Outside attention.setting that would be the model's own attention over the
    packed sequence: wrong gradients. So the forward refuses; inside the setting the gradients are
    the per-row ones."""
    lm = make_model("llama").train()
    lm.activation_checkpointing_enable()  # as train.py does (non-reentrant)
    net = policy.Policy(lm, temperature=1.0, chunk=16)
    rows = make_rows(64, prompt_lens=[8, 5], group_sizes=[2, 3])
    mb = list(range(len(rows.prompts)))
    for forward in (policy.forward_logprobs_shared, policy.forward_logprobs):
        with pytest.raises(RuntimeError, match="attention.setting"):
            forward(net, rows, mb, 0, CPU)
    with attention.setting(lm):
        want = grads(net, rows, [mb], policy.forward_logprobs)
        got = grads(net, rows, [mb], policy.forward_logprobs_shared)
    assert lm.config._attn_implementation == "sdpa"  # restored
    assert_same_grads(want, got)
    # what the check prevents: the setting dropped before backward. The recompute then runs the
    # model's own attention, which saves other tensors than the forward did; torch's checkpoint
    # notices here (a kernel that saved the same shapes would give wrong gradients silently)
    with attention.setting(lm):
        lp = policy.forward_logprobs_shared(net, rows, mb, 0, CPU)
    with pytest.raises(torch.utils.checkpoint.CheckpointError):
        policy_loss(lp, rows, mb).backward()


class CountAttention(TorchDispatchMode):
    """Counts the attention kernels' op calls that actually run (a kept output is not a call)."""

    def __init__(self):
        super().__init__()
        self.calls, self.ops = 0, set(policy.attention_ops())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func in self.ops
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("forward", ["shared", "per-row", "per-response"])
def test_keep_attention_gives_the_same_gradients_without_recomputing_attention(forward, monkeypatch):
    """--keep-attention: the gradients are bit-identical to full recomputation, and backward runs no
    attention kernel (checkpointing alone runs each one twice: the forward and its recompute).
    per-response is the torch kernel without split keys (CUDA's, lower-right causal bias)."""
    if forward == "per-response":  # CausalBias, a tensor subclass, built under the checkpoint's mode
        monkeypatch.setattr(packing.packed_torch, "__defaults__", (False,))
    fwd = policy.forward_logprobs if forward == "per-row" else policy.forward_logprobs_shared
    rows = make_rows(64, prompt_lens=[8, 5], group_sizes=[2, 3])
    mb = list(range(len(rows.prompts)))
    got = {}
    for keep in (False, True):
        lm = make_model("qwen3").train()
        policy.enable_checkpointing(lm, keep)
        net = policy.Policy(lm, temperature=1.0, chunk=16)
        with attention.setting(lm), CountAttention() as count:
            lp = fwd(net, rows, mb, 0, CPU)
            forward_calls = count.calls
            policy_loss(lp, rows, mb).backward()
        assert forward_calls > 0
        got[keep] = count.calls - forward_calls, {k: p.grad for k, p in net.named_parameters()}
    (recomputed, full), (kept, sel) = got[False], got[True]
    assert recomputed == forward_calls and kept == 0
    assert all(torch.equal(full[k], sel[k]) for k in full)


def test_keep_attention_runs_the_flash_path_unchanged(flash_stand_in):
    """The GPU's code (bf16 autocast, flash-attn varlen, the float32 gather-sum) under selective
    checkpointing: bit-identical gradients. Recent flash-attn releases register the forward as a
    torch op, which attention_ops lists; the stand-in is plain Python, so here its calls are
    recomputed either way."""
    rows = make_rows(64, prompt_lens=[8, 5], group_sizes=[2, 3])
    mb = list(range(len(rows.prompts)))
    got = []
    for keep in (False, True):
        lm = make_model("llama").train()
        policy.enable_checkpointing(lm, keep)
        net = policy.Policy(lm, temperature=1.0, chunk=16)
        with attention.setting(lm):
            got.append(grads(net, rows, [mb], shared("flash")))
    assert flash_stand_in.CALLS["varlen"] > 0
    assert got[0].keys() == got[1].keys() and all(torch.equal(got[0][k], got[1][k]) for k in got[0])


def test_setting_restores_the_attention_also_on_error_and_plain_calls_still_work():
    lm = make_model("qwen3")
    net = policy.Policy(lm, temperature=1.0, chunk=16)
    rows = make_rows(64, prompt_lens=[5, 9], group_sizes=[2, 2])
    mb = [0, 1, 2, 3]
    want = policy.forward_logprobs(net, rows, mb, 0, CPU)
    with pytest.raises(KeyError):
        with attention.setting(lm):
            assert lm.config._attn_implementation == attention.ATTN_NAME
            raise KeyError("boom")
    assert lm.config._attn_implementation == "sdpa"
    # a plain right-padded per-row batch inside the setting (train.update's zero-row pass) is exact
    with attention.setting(lm):
        inside = policy.forward_logprobs(net, rows, mb, 0, CPU)
    assert float((inside - want).abs().max().detach()) < 1e-5


def test_flash_kernel_is_the_one_called(flash_stand_in):
    net = policy.Policy(make_model("llama"), temperature=1.0, chunk=16)
    rows = make_rows(64, prompt_lens=[5, 3], group_sizes=[2, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        policy.forward_logprobs_shared(net, rows, [0, 1, 2, 3], 0, CPU, attention="flash")
    assert flash_stand_in.CALLS["varlen"] == 2 * net.lm.config.num_hidden_layers  # prompts + responses
    with pytest.raises(ValueError, match="attention"):
        policy.forward_logprobs_shared(net, rows, [0, 1], 0, CPU, attention="auto")
