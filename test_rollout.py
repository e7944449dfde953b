"""Tests for rollout.py: the shared-prefix generation loop against slow obvious references.

    python -m pytest -q test_rollout.py --durations=10

References: `model.generate(do_sample=False)` (greedy tokens), a teacher-forced forward of the same
model (log-probs), and the rollout's flash path against its torch path (test_attention.py, through the strict
flash_attn stand-in).
Tiny random models use initializer_range=0.3 so that they do not just repeat the last token.
"""

import math
import sys

import pytest
import torch

import attention
import rollout
from conftest import tiny_llama, tiny_qwen3

INIT = 0.3  # random weights large enough for varied, attention-dependent continuations


def random_prompts(vocab: int, lengths, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (L,), generator=g).tolist() for L in lengths]


def hf_greedy(model, prompt: list[int], max_new_tokens: int, eos: int) -> list[int]:
    """The reference: transformers' own greedy generate, one prompt at a time (no padding)."""
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def teacher_forced_logprobs(model, prompt: list[int], gen: list[int], temperature: float) -> torch.Tensor:
    """log softmax(logits / T) of each generated token, from one plain forward over prompt + gen."""
    ids = torch.tensor([prompt + gen])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1].float()  # predicts gen[0], gen[1], ...
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(gen)[:, None])[:, 0]


def check_row_invariants(ro, eos: set[int], pad: int, max_new_tokens: int):
    """EOS ends a row, pad after it, mask/lengths/truncated consistent, the limit respected."""
    assert ro.tokens.shape[1] <= max_new_tokens
    for r in range(ro.tokens.shape[0]):
        toks, L = ro.tokens[r].tolist(), int(ro.lengths[r])
        assert ro.mask[r].tolist() == [True] * L + [False] * (len(toks) - L)
        assert all(t == pad for t in toks[L:]) and (ro.logprobs[r, L:] == 0).all()
        hits = [i for i, t in enumerate(toks[:L]) if t in eos]
        if ro.truncated[r]:
            assert hits == [] and L == max_new_tokens
        else:
            assert hits == [L - 1]  # the first EOS is the last valid token


# -----------------------------------------------------------------------------
# Greedy == model.generate, token for token

@pytest.mark.parametrize("decode", ["cpu-flash", "matmul"])  # matmul: CUDA's torch path, run on CPU
@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_greedy_equals_hf_generate(family, decode, monkeypatch):
    monkeypatch.setattr(attention, "CPU_FLASH_DECODE", decode == "cpu-flash")
    model = tiny_qwen3(initializer_range=INIT) if family == "qwen3" else tiny_llama(initializer_range=INIT)
    V, new, n = model.config.vocab_size, 14, 3
    prompts = random_prompts(V, [9, 2, 23, 5])
    # EOS = a token prompt 0 emits mid-way, so rows end (and are dropped) at different steps
    eos = hf_greedy(model, prompts[0], new, eos=V + 1)[6]
    refs = [hf_greedy(model, p, new, eos) for p in prompts]
    assert any(len(r) < new for r in refs) and any(len(r) == new for r in refs)
    ro = rollout.generate(model, prompts, n, new, temperature=0, eos_token_ids=eos, pad_token_id=0,
                          prefill_chunk_tokens=8, check_every=3)  # chunks span and pack prompts
    for r in range(len(prompts) * n):
        ref = refs[r // n]  # rows are prompt-major
        assert ro.tokens[r, :len(ref)].tolist() == ref, (r, ro.tokens[r].tolist(), ref)
        assert int(ro.lengths[r]) == len(ref) and bool(ro.truncated[r]) == (ref[-1] != eos)
    check_row_invariants(ro, {eos}, 0, new)
    assert model.config._attn_implementation == "sdpa" and not model.training


def test_kv_memory_is_prompt_plus_n_times_generated():
    model = tiny_llama(initializer_range=INIT)
    c = model.config
    prompts, n, new = random_prompts(c.vocab_size, [30, 20]), 4, 6
    ro = rollout.generate(model, prompts, n, new, temperature=0, eos_token_ids=2, pad_token_id=0)
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    # prompt slots padded to the longest prompt of the wave; n rows x (new - 1) generated slots
    assert ro.stats["kv_bytes"] == per_token * (2 * 30 + 2 * n * (new - 1))
    assert ro.stats["kv_bytes_per_row_cache"] == per_token * 2 * n * (30 + new)


def test_waves_under_kv_budget_give_the_same_rollout():
    model = tiny_llama(initializer_range=INIT)
    prompts = random_prompts(model.config.vocab_size, [12, 30, 7, 19])
    kw = dict(temperature=0, eos_token_ids=2, pad_token_id=0)
    one = rollout.generate(model, prompts, 2, 8, **kw)
    waves = rollout.generate(model, prompts, 2, 8, kv_budget_tokens=60, **kw)
    assert one.stats["waves"] == 1 and waves.stats["waves"] == 3
    assert torch.equal(one.tokens, waves.tokens) and torch.equal(one.lengths, waves.lengths)
    assert waves.stats["over_budget_waves"] == 0


def test_prompt_over_the_kv_budget_runs_in_a_wave_of_its_own(capsys, monkeypatch):
    # the 30-token prompt alone needs 30 + 2 x 8 = 46 KV tokens > 40; it used to raise
    model = tiny_llama(initializer_range=INIT)
    prompts = random_prompts(model.config.vocab_size, [12, 30, 7, 19])
    kw = dict(temperature=0, eos_token_ids=2, pad_token_id=0)  # greedy: sampled draws follow wave order
    monkeypatch.setattr(attention, "_SAID", set())
    plain = rollout.generate(model, prompts, 2, 8, **kw)
    capsys.readouterr()
    small = [rollout.generate(model, prompts, 2, 8, kv_budget_tokens=40, **kw) for _ in range(2)]
    for ro in small:
        assert ro.stats["waves"] == 4 and ro.stats["over_budget_waves"] == 1
        for a, b in zip((ro.tokens, ro.mask, ro.lengths, ro.truncated),
                        (plain.tokens, plain.mask, plain.lengths, plain.truncated)):
            assert torch.equal(a, b)
        torch.testing.assert_close(ro.logprobs, plain.logprobs, atol=3e-5, rtol=0)  # summation order
    said = capsys.readouterr().out
    assert said.count("kv_budget_tokens=40") == 1 and "46 KV tokens" in said  # once per process


def test_plan_waves_at_the_paper_recipe_sizes():
    # G=16 x 16,384 new tokens is 262,144 KV tokens before any prompt; prompts up to 163,840 tokens
    n, new, longest = 16, 16_384, 163_840
    lengths = [100, longest, 50_000, 8_000, 100_000, 100, 120_000]
    kv = lambda wave: rollout.wave_kv_tokens([lengths[i] for i in wave], n, new)  # noqa: E731
    recipe = 425_984  # train.py's PAPER kv_budget_tokens = 163,840 + 16 x 16,384
    assert recipe == longest + n * new
    for budget in (recipe, 262_144):  # the recipe's budget, and the old one that crashed
        waves = rollout.plan_waves(lengths, n, new, budget)
        assert sorted(i for w in waves for i in w) == list(range(len(lengths)))  # each prompt once
        assert [lengths[w[0]] for w in waves] == sorted(lengths, reverse=True)  # longest first
        # two prompts never fit (2 x 262,144 alone is over either budget): one prompt per wave
        assert all(len(w) == 1 for w in waves)
        over = [lengths[w[0]] for w in waves if kv(w) > budget]
        assert over == ([] if budget == recipe else sorted(lengths, reverse=True))
    assert kv([1]) == recipe  # the longest prompt fills the recipe's budget exactly
    assert rollout.plan_waves([100, 100], n, new, 262_144) == [[0], [1]]  # the paper's sizes: used to raise
    # an oversized prompt does not stop smaller ones from sharing a wave: 6 + 5 + 2 x 2 x 4 = 28 <= 30
    assert rollout.plan_waves([5, 50, 6], 2, 4, 30) == [[1], [2, 0]]


# -----------------------------------------------------------------------------
# Sampling: log-probs, EOS, limits, seeds, top-k, top-p

@pytest.mark.parametrize("decode", ["cpu-flash", "matmul"])  # matmul: CUDA's torch path, run on CPU
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (0.7, 8, 0.9)])
def test_sampled_logprobs_equal_teacher_forced_forward(temperature, top_k, top_p, decode, monkeypatch):
    monkeypatch.setattr(attention, "CPU_FLASH_DECODE", decode == "cpu-flash")
    # vocab 32: EOS (id 2) comes up often, so rows end at different steps and are dropped mid-batch
    model = tiny_llama(vocab_size=32, initializer_range=INIT)
    prompts, n, new = random_prompts(32, [6, 13, 3]), 4, 20
    ro = rollout.generate(model, prompts, n, new, temperature=temperature, top_k=top_k, top_p=top_p,
                          eos_token_ids=[2], pad_token_id=0, seed=3, check_every=2)
    assert ro.truncated.any() and not ro.truncated.all()  # both kinds of rows are exercised
    for r in range(len(prompts) * n):
        L = int(ro.lengths[r])
        ref = teacher_forced_logprobs(model, prompts[r // n], ro.tokens[r, :L].tolist(), temperature)
        torch.testing.assert_close(ro.logprobs[r, :L], ref, atol=1e-4, rtol=0)
    check_row_invariants(ro, {2}, 0, new)


def test_bfloat16_model_runs_and_matches_its_forward_to_bf16_precision():
    # the dtype used on GPU; CPU bf16 exercises the same casts (scores and merge in float32)
    model = tiny_llama(vocab_size=32, initializer_range=INIT).to(torch.bfloat16)
    prompts = random_prompts(32, [5, 9])
    ro = rollout.generate(model, prompts, 3, 10, eos_token_ids=[2], pad_token_id=0, seed=0)
    assert ro.logprobs.dtype == torch.float32
    check_row_invariants(ro, {2}, 0, 10)
    for r in range(6):
        L = int(ro.lengths[r])
        ref = teacher_forced_logprobs(model, prompts[r // 3], ro.tokens[r, :L].tolist(), 1.0)
        torch.testing.assert_close(ro.logprobs[r, :L], ref, atol=0.25, rtol=0)  # bf16: ~3 digits


def test_eos_list_pad_and_max_new_tokens():
    model = tiny_llama(vocab_size=32, initializer_range=INIT)
    prompts = random_prompts(32, [4, 9])
    ro = rollout.generate(model, prompts, 6, 11, eos_token_ids=[2, 5], pad_token_id=31, seed=0)
    check_row_invariants(ro, {2, 5}, 31, 11)
    assert (~ro.truncated).any()
    short = rollout.generate(model, prompts, 2, 1, eos_token_ids=[2], pad_token_id=0, seed=0)
    assert short.tokens.shape == (4, 1) and short.mask.all()


def test_same_seed_same_tokens():
    model = tiny_llama(initializer_range=INIT)
    prompts = random_prompts(model.config.vocab_size, [5, 8])
    run = lambda seed: rollout.generate(model, prompts, 4, 10, eos_token_ids=2, pad_token_id=0,  # noqa: E731
                                        seed=seed).tokens
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_1_equals_greedy():
    model = tiny_qwen3(initializer_range=INIT)
    prompts = random_prompts(model.config.vocab_size, [6, 11])
    kw = dict(eos_token_ids=151645, pad_token_id=0)
    greedy = rollout.generate(model, prompts, 3, 10, temperature=0, **kw)
    top1 = rollout.generate(model, prompts, 3, 10, temperature=0.8, top_k=1, seed=5, **kw)
    assert torch.equal(greedy.tokens, top1.tokens)


def test_top_p_top_k_keep_the_right_support():
    # probabilities 0.5, 0.25, 0.125, 0.0625 x 2: nucleus 0.7 = {0, 1}; 0.8 = {0, 1, 2}; top-k 1 = {0}
    logits = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625]))[[3, 0, 2, 1, 4]]  # shuffled
    ids = {0: 1, 1: 3, 2: 2}  # rank -> vocab id after the shuffle
    g = torch.Generator().manual_seed(0)
    for top_k, top_p, support in [(0, 0.7, {0, 1}), (0, 0.8, {0, 1, 2}), (2, 0.95, {0, 1}), (1, 1.0, {0})]:
        kept = rollout.filter_logits(logits[None], top_k, top_p)[0].isfinite().nonzero()[:, 0].tolist()
        assert set(kept) == {ids[i] for i in support}
        tok, logp = rollout.sample_next(logits.expand(2000, 5), 1.0, top_k, top_p, g)
        assert set(tok.tolist()) == {ids[i] for i in support}  # every kept token drawn, nothing else
        # log-probs are those of the unfiltered distribution
        torch.testing.assert_close(logp, torch.log_softmax(logits, -1)[tok])


def test_sampling_frequencies_follow_the_filtered_distribution():
    # top-p 0.8 keeps ranks {0, 1, 2} of [0.5, 0.25, 0.125, 0.0625, 0.0625] -> renormalized 4/7, 2/7, 1/7
    logits = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625]))
    g = torch.Generator().manual_seed(1)
    tok, _ = rollout.sample_next(logits.expand(20000, 5), 1.0, 0, 0.8, g)
    freq = torch.bincount(tok, minlength=5) / 20000
    torch.testing.assert_close(freq, torch.tensor([4 / 7, 2 / 7, 1 / 7, 0, 0]), atol=0.015, rtol=0)
    # temperature 0.5 squares the probabilities: [16, 4, 1, 1/4, 1/4] / 21.5
    tok, _ = rollout.sample_next(logits.expand(20000, 5), 0.5, 0, 1.0, g)
    freq = torch.bincount(tok, minlength=5) / 20000
    torch.testing.assert_close(freq, torch.tensor([16, 4, 1, 0.25, 0.25]) / 21.5, atol=0.015, rtol=0)


# -----------------------------------------------------------------------------
# The bf16 sampler the rollouts run on (policy.make_sampler): RoPE frequencies stay float32

def tail_logprobs(model, ids: torch.Tensor, k: int) -> torch.Tensor:
    """log p of the last k tokens of ids [1, L] given the ones before, float32 [k]. The LM head runs
    on those k positions only: at Qwen's vocabulary all 8K positions would be a 5 GB logits tensor."""
    with torch.no_grad():
        h = model.model(ids).last_hidden_state[0, -k - 1:-1]  # [k, C], predicts ids[-k:]
        logits = model.lm_head(h).float()
    return torch.log_softmax(logits, -1).gather(-1, ids[0, -k:, None])[:, 0]


def test_bf16_sampler_keeps_rope_buffers_and_matches_the_fp32_trainer_at_8k_tokens():
    import copy
    import policy
    # Qwen3-4B's head_dim (128) and rope theta (5e6); one layer keeps an 8K forward a few seconds
    theta, L, k = 5e6, 8192, 512
    trainer = tiny_qwen3(layers=1, hidden=256, heads=2, kv_heads=1, initializer_range=INIT,
                         rope_parameters={"rope_type": "default", "rope_theta": theta})
    D = trainer.config.head_dim
    inv_freq = trainer.model.rotary_emb.inv_freq
    assert D == 128 and inv_freq.dtype == torch.float32  # the override took effect
    torch.testing.assert_close(inv_freq, 1.0 / theta ** (torch.arange(0, D, 2).float() / D))
    sampler = policy.make_sampler(trainer)
    assert {p.dtype for p in sampler.parameters()} == {torch.bfloat16}
    mine = dict(trainer.named_buffers())
    assert {"model.rotary_emb.inv_freq", "model.rotary_emb.original_inv_freq"} <= set(mine)
    for name, buf in sampler.named_buffers():  # every buffer bit for bit, same dtype
        assert buf.dtype == mine[name].dtype and torch.equal(buf, mine[name]), name
    # log-probs of the last 512 tokens of an 8K sequence (where a phase error is largest)
    ids = torch.randint(0, trainer.config.vocab_size, (1, L), generator=torch.Generator().manual_seed(0))
    ref = tail_logprobs(trainer, ids, k)
    err = (tail_logprobs(sampler, ids, k) - ref).abs().mean()
    assert err < 0.1, err  # the bf16 level (measured 0.046)
    # the old sampler, deepcopy().to(bf16), also cast inv_freq: its buffers differ and its log-probs
    # are off by ~1 nat (measured 1.02), the defect this test guards against
    old = copy.deepcopy(trainer).to(torch.bfloat16)
    assert old.model.rotary_emb.inv_freq.dtype == torch.bfloat16
    assert not torch.equal(old.model.rotary_emb.inv_freq.float(), inv_freq)
    old_err = (tail_logprobs(old, ids, k) - ref).abs().mean()
    assert old_err > 0.3 and old_err > 5 * err, (old_err, err)


def test_forcing_flash_without_flash_attn_is_an_error(monkeypatch):
    model = tiny_llama()
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # makes `import flash_attn` fail
    with pytest.raises(ValueError, match="flash_attn"):
        rollout.generate(model, [[5, 6]], 1, 2, eos_token_ids=2, pad_token_id=0, attention="flash")


# -----------------------------------------------------------------------------
# The model comes back as it was; bad input is refused

def test_attention_setting_and_training_flag_restored_also_on_error(capsys, monkeypatch):
    model = tiny_llama(initializer_range=INIT).train()
    model.model.layers[0].eval()  # a mixed state, restored exactly
    monkeypatch.setattr(attention, "_SAID", set())
    rollout.generate(model, [[5, 6, 7]], 2, 3, eos_token_ids=2, pad_token_id=0, seed=0)
    rollout.generate(model, [[5, 6, 7]], 2, 3, eos_token_ids=2, pad_token_id=0, seed=0)
    assert capsys.readouterr().out.count("attention kernels: torch") == 1  # said once
    assert model.config._attn_implementation == "sdpa"
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training

    def boom(*args):
        assert model.config._attn_implementation == attention.ATTN_NAME  # our hook was active
        raise RuntimeError("boom")
    handle = model.model.layers[1].register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        rollout.generate(model, [[5, 6, 7]], 2, 3, eos_token_ids=2, pad_token_id=0)
    handle.remove()
    assert model.config._attn_implementation == "sdpa"
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    # the restored model still trains with its own attention
    model(torch.tensor([[5, 6, 7]])).logits.sum().backward()


def test_refuses_unsupported_family_and_bad_input():
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="gpt2"):
        rollout.generate(gpt2, [[1, 2]], 1, 2, eos_token_ids=0, pad_token_id=0)
    model = tiny_llama()
    for prompts in ([[]], [[1, 512]], [[-1]]):
        with pytest.raises(ValueError, match="prompt 0"):
            rollout.generate(model, prompts, 1, 2, eos_token_ids=2, pad_token_id=0)
    with pytest.raises(ValueError, match="pad_token_id"):
        rollout.generate(model, [[5]], 1, 2, eos_token_ids=2, pad_token_id=None)
    with pytest.raises(ValueError, match="top_p"):
        rollout.generate(model, [[5]], 1, 2, eos_token_ids=2, pad_token_id=0, top_p=0.0)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("path", ["torch", "flash"])
def test_cache_fields_declared_in_init_and_what_keep_rows_compacts(path):
    # 2 layers, prompts of 5 and 3 tokens, n=2 (rows 0, 1 -> prompt 0; rows 2, 3 -> prompt 1)
    cache = attention.SharedPrefixCache(2, [5, 3], 2, 4, 1, 8, torch.float32, "cpu", path)
    declared = set(vars(cache))
    for layer in range(2):  # mark each row's and each prompt's storage with its own number
        cache.gen_k[layer][:] = torch.arange(4.)[:, None, None, None]
        cache.prompt_k[layer][:] = torch.arange(2.)[:, None, None, None]
    cache.set_prefill(rollout.plan_chunks([5, 3], 4)[0])
    cache.set_decode(0)
    # rows 0-2 finished: prompt 0 has no row left and is freed, padding trimmed to prompt 1's 3
    idx = cache.keep_rows(torch.tensor([False, False, False, True]))
    cache.set_decode(1)
    assert set(vars(cache)) == declared  # no field appears outside __init__
    assert idx.tolist() == [3]
    assert cache.row_prompt.tolist() == [0] and cache.row_sample.tolist() == [1]  # prompt 1 is slot 0
    assert cache.prompt_lens.tolist() == [3]
    for layer in range(2):
        # flash: [rows or prompts, positions, kv heads, head dim]; torch: kv heads before positions
        gen, prompt = ((1, 4, 1, 8), (1, 3, 1, 8)) if path == "flash" else ((1, 1, 4, 8), (1, 1, 3, 8))
        assert cache.gen_k[layer].shape == cache.gen_v[layer].shape == gen
        assert cache.prompt_k[layer].shape == cache.prompt_v[layer].shape == prompt
        assert (cache.gen_k[layer] == 3).all() and (cache.prompt_k[layer] == 1).all()
    if path == "flash":
        assert cache.prompt_seqlens.tolist() == [3] and cache.prompt_seqlens.dtype == torch.int32
        assert cache.gen_seqlens.tolist() == [1] and cache.gen_seqlens.dtype == torch.int32


def test_plan_chunks_packs_and_splits_prompts():
    chunks = rollout.plan_chunks([5, 2, 9], 4)
    flat = [(s.prompt, s.start, s.end, s.q0) for c in chunks for s in c]
    assert flat == [(0, 0, 4, 0), (0, 4, 5, 0), (1, 0, 2, 1), (2, 0, 1, 3), (2, 1, 5, 0), (2, 5, 9, 0)]
    assert [sum(s.end - s.start for s in c) for c in chunks] == [4, 4, 4, 4]
    assert math.isclose(sum(s.end - s.start for c in chunks for s in c), 16)
