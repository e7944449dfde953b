"""Batched rollout generation that prefills each prompt once and shares its KV cache across n samples.

    from rollout import generate
    ro = generate(model, [prompt_ids, ...], n=16, max_new_tokens=1024, eos_token_ids=[tok.eos_token_id],
                  pad_token_id=tok.pad_token_id, seed=0)
    ro.tokens, ro.mask, ro.logprobs, ro.lengths, ro.truncated, ro.stats

    python -m pytest -q test_rollout.py      # equals model.generate greedy, logprobs (flash: test_attention.py)
    python bench.py --only rollout           # vs model.generate(num_return_sequences=n)

Why: in long-context GRPO the prompt is huge and each prompt is sampled G times.
`model.generate(num_return_sequences=G)` prefills the prompt G times and keeps G copies of its KV cache.
Here each prompt is prefilled once (in chunks, LM head on the last position only), its keys/values are
stored once, and only the generated tokens get per-row storage: KV memory is prompt + n x generated
instead of n x (prompt + generated). A decode step attends to the shared prompt part and to the row's
own part separately and merges the two exactly with their log-sum-exp (`attention.merge_attention`).

The model is the Hugging Face model itself (embedding, decoder layers with their RoPE, norm, LM head);
only attention is swapped, through the one function of attention.py (`shared_prefix_attention`,
which also holds the KV cache and the prefill/decode kernels). The model's attention setting and
train/eval flags are restored afterwards. Kernels: on CUDA with flash-attn 2 installed and a bf16
sampler, `flash_attn_varlen_func` for prefill and `flash_attn_with_kvcache` for decode; otherwise an
exact torch path with the same semantics. Which one runs is printed once per process.
Supported families: Qwen2, Qwen3, Llama (checked by config.model_type); others get a ValueError.

Departures from verl (the paper's rollout engine is vLLM): no paged memory or continuous batching.
Prompts are processed in waves that fit `kv_budget_tokens` (a prompt that alone needs more gets a
wave of its own); rows that finish are dropped from the batch at the next EOS check (every
`check_every` steps, to avoid a host sync per token).

Read top to bottom: sampling, model plumbing, planning (chunks, waves), then `generate` and the
steps it calls, in call order.
"""

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from attention import Segment, SharedPrefixCache, say_once
from attention import choose as choose_attention, setting as attention_setting

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama")


@dataclass
class Rollout:
    tokens: Tensor      # [P*n, T] int64, generated only, pad_token_id after EOS; row i is prompt i // n
    mask: Tensor        # [P*n, T] bool, True on generated tokens including the EOS token itself
    logprobs: Tensor    # [P*n, T] float32, log p(token) under softmax(logits / temperature), 0 off-mask
    lengths: Tensor     # [P*n] int64, valid generated tokens (incl. EOS)
    truncated: Tensor   # [P*n] bool, True if no EOS before max_new_tokens
    stats: dict = field(default_factory=dict)  # seconds, tokens/s, KV bytes, attention path, waves


# -----------------------------------------------------------------------------
# Sampling: temperature, top-k, top-p; log-probs before filtering

def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """logits [B, V] -> same with -inf outside the top-k / top-p (nucleus) support, HF's order (k, then p).
    Top-p keeps the smallest prefix (by probability) whose mass reaches top_p; the top token always stays."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # probability of the tokens ranked above
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, mass_before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """logits [B, V] float32 -> (tokens [B], logprobs [B]). logprobs are under softmax(logits / T),
    before filtering: what the training forward computes. Greedy (T=0) reports T=1 log-probs."""
    if temperature == 0:
        tok = logits.argmax(-1)
        return tok, torch.log_softmax(logits, -1).gather(-1, tok[:, None])[:, 0]
    scaled = logits if temperature == 1.0 else logits / temperature  # [B, V]
    m = scaled.amax(-1, keepdim=True)  # [B, 1]
    if top_k > 0 or top_p < 1.0:
        log_z = m + (scaled - m).exp_().sum(-1, keepdim=True).log()  # normalizer before filtering
        weights = (filter_logits(scaled, top_k, top_p) - m).exp_()  # 0 outside the kept support
    else:
        weights, log_z = (scaled - m).exp_(), None  # unnormalized probabilities
    # Inverse-CDF sampling: one uniform number per row, no host sync. The prefix sums overwrite the
    # weights (one [B, V] buffer); their float32 rounding moves a token's probability by ~1e-7 of the
    # total (ATen accumulates CPU cumsum in double), far below what sampling can resolve.
    cdf = weights.cumsum_(-1)  # [B, V]
    total = cdf[:, -1:]  # [B, 1]
    if log_z is None:
        log_z = m + total.log()
    u = torch.rand(total.shape, generator=generator, dtype=cdf.dtype, device=cdf.device)
    tok = torch.searchsorted(cdf, u * total, right=True)  # first token whose prefix sum exceeds u*total
    # u * total can round up to total itself: fall back to the last token of non-zero weight
    tok = torch.minimum(tok, (cdf < total).sum(-1, keepdim=True))[:, 0]
    return tok, (scaled.gather(-1, tok[:, None]) - log_z)[:, 0]


# -----------------------------------------------------------------------------
# Model plumbing: HF modules, one forward over packed tokens, switching the attention setting

def check_model(model):
    """The model's base (embed, layers, norm, rotary) for the supported families, else ValueError."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"rollout.generate supports model_type in {SUPPORTED_MODEL_TYPES}, got "
                         f"{model_type!r} ({type(model).__name__}); other families need their own check")
    if getattr(model.config, "use_sliding_window", False):
        raise ValueError(f"{type(model).__name__}: sliding-window attention is not supported by rollout")
    return model.model


def forward_tokens(model, base, ids: Tensor, positions: Tensor, cache: SharedPrefixCache,
                   last: Tensor) -> Tensor:
    """ids, positions [B, S] -> float32 logits [len(last), V] at the flat (b*S + s) indices `last`.
    The HF decoder layers do the work; attention goes to shared_prefix_attention with `cache`."""
    h = base.embed_tokens(ids)  # [B, S, C]
    rope = base.rotary_emb(h, positions)  # (cos, sin) [B, S, D], from each token's own position
    for layer in base.layers[:model.config.num_hidden_layers]:
        h = layer(h, attention_mask=None, position_ids=positions, position_embeddings=rope,
                  rollout_cache=cache)
    h = h.flatten(0, 1)[last]  # LM head on the positions we sample from only
    return model.lm_head(base.norm(h)).float()


@contextmanager
def inference_setting(model):
    """eval mode + the shared-prefix attention for the duration; restores every module's training
    flag and the model's attention setting afterwards, also on error (training shares the model)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with attention_setting(model):
            yield
    finally:
        for m, was in flags:
            m.training = was


def plan_chunks(lengths: list[int], chunk_tokens: int) -> list[list[Segment]]:
    """Cut the concatenated prompts into chunks of <= chunk_tokens tokens; a long prompt spans chunks,
    short ones share a chunk (packed, attention stays within each prompt)."""
    chunks, cur, room = [], [], chunk_tokens
    for p, L in enumerate(lengths):
        s = 0
        while s < L:
            e = min(L, s + room)
            cur.append(Segment(p, s, e, chunk_tokens - room))
            room -= e - s
            s = e
            if room == 0:
                chunks.append(cur)
                cur, room = [], chunk_tokens
    return chunks + ([cur] if cur else [])


def wave_kv_tokens(wave_lengths: list[int], n: int, max_new_tokens: int) -> int:
    """KV positions (per layer) a wave holds: its prompts padded to the longest + n rows x new tokens."""
    return max(wave_lengths) * len(wave_lengths) + len(wave_lengths) * n * max_new_tokens


def plan_waves(lengths: list[int], n: int, max_new_tokens: int, budget: int | None) -> list[list[int]]:
    """Prompt indices grouped into waves whose KV (`wave_kv_tokens`) fits budget.
    Longest first, so prompts of similar length share a wave and padding stays small.

    A prompt that alone needs more than the budget forms a wave of its own instead of failing
    (the paper's G=16 x 16,384 new tokens alone is 262,144 KV tokens); that wave holds
    more than the budget, and `generate` says so once per process. The greedy loop does this by
    itself: adding a prompt to a wave never lowers its cost, so such a prompt joins no wave and no
    prompt joins it.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if budget is None:
        return [order]
    waves, cur = [], []
    for i in order:
        if cur and wave_kv_tokens([lengths[j] for j in cur + [i]], n, max_new_tokens) > budget:
            waves.append(cur)
            cur = []
        cur.append(i)
    return waves + ([cur] if cur else [])


# -----------------------------------------------------------------------------
# generate, in call order: check_inputs -> choose_attention -> plan_waves -> per wave:
# prefill_wave -> decode_wave (decode_step, keep_rows every few steps) -> Rollout

def check_inputs(vocab: int, prompts, n: int, max_new_tokens: int, eos: list[int], pad_token_id,
                 temperature: float, top_p: float, top_k: int, check_every: int, prefill_chunk_tokens: int):
    """ValueError naming the bad argument, before the model is touched."""
    if not prompts:
        raise ValueError("generate needs at least one prompt")
    if n < 1 or max_new_tokens < 1 or not eos or check_every < 1 or prefill_chunk_tokens < 1:
        raise ValueError(f"need n, max_new_tokens, check_every, prefill_chunk_tokens >= 1 and an EOS id "
                         f"(n={n}, max_new_tokens={max_new_tokens}, eos={eos})")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"bad sampling settings temperature={temperature} top_p={top_p} top_k={top_k}")
    if not isinstance(pad_token_id, int) or not 0 <= pad_token_id < vocab:
        raise ValueError(f"pad_token_id={pad_token_id} outside the vocabulary [0, {vocab})")
    for i, p in enumerate(prompts):
        if len(p) == 0 or min(p) < 0 or max(p) >= vocab:
            raise ValueError(f"prompt {i}: empty or token id outside [0, {vocab}) (len {len(p)})")


def count_over_budget(lengths: list[int], waves: list[list[int]], n: int, max_new_tokens: int,
                      budget: int | None) -> int:
    """Waves over the budget (a prompt that alone needs more, see plan_waves); said once per process."""
    over = [w for w in waves if budget is not None
            and wave_kv_tokens([lengths[i] for i in w], n, max_new_tokens) > budget]
    if over:
        L = lengths[over[0][0]]
        say_once("over_budget", f"rollout: a prompt of {L} tokens x n={n} x {max_new_tokens} new needs "
                 f"{wave_kv_tokens([L], n, max_new_tokens)} KV tokens > kv_budget_tokens={budget}; "
                 f"such prompts run in a wave of their own, over the budget (said once; "
                 f"stats['over_budget_waves'] counts them per call)")
    return len(over)


def prefill_wave(model, base, prompts: list[list[int]], cache: SharedPrefixCache,
                 chunk_tokens: int) -> Tensor:
    """Each prompt of the wave once, in packed chunks of <= chunk_tokens tokens; its K/V land in
    cache.prompt_k/v. Returns the logits at each prompt's last token, [P, V] float32."""
    device = cache.prompt_lens.device
    lens = [len(p) for p in prompts]
    first_logits = torch.empty(len(prompts), model.config.vocab_size, device=device)  # [P, V]
    for segs in plan_chunks(lens, chunk_tokens):
        ids = torch.tensor([t for s in segs for t in prompts[s.prompt][s.start:s.end]],
                           device=device)[None]  # [1, S]
        pos = torch.cat([torch.arange(s.start, s.end, device=device) for s in segs])[None]  # [1, S]
        ends = [s for s in segs if s.end == lens[s.prompt]]  # segments that finish their prompt
        cache.set_prefill(segs)
        last = torch.tensor([s.q0 + s.end - s.start - 1 for s in ends], dtype=torch.long, device=device)
        first_logits[[s.prompt for s in ends]] = forward_tokens(model, base, ids, pos, cache, last)
    return first_logits


def decode_step(model, base, cache: SharedPrefixCache, tok: Tensor, t: int) -> Tensor:
    """Feed each active row's token t - 1 (tok [A]), at position prompt_len + t - 1 and gen slot
    t - 1; returns the logits for token t, [A, V] float32."""
    cache.set_decode(t - 1)
    pos = (cache.prompt_lens[cache.row_prompt] + t - 1)[:, None]  # [A, 1]
    return forward_tokens(model, base, tok[:, None], pos, cache, torch.arange(len(tok), device=tok.device))


def decode_wave(model, base, cache: SharedPrefixCache, first_logits: Tensor, sample, stop: Tensor,
                pad_token_id: int, max_new_tokens: int, check_every: int):
    """Sample up to max_new_tokens for the wave's P*n rows (prompt-major), from first_logits [P, V].

    sample: logits [B, V] -> (tokens [B], logprobs [B]); stop: [E] ids that end a row.
    Returns ((tokens, mask, logprobs) each [P*n, max_new_tokens], number of decode forwards).
    A finished row feeds pad, masked out, until the next EOS check drops it from the batch: every
    check_every steps, the loop's only host sync.
    """
    A, device = first_logits.shape[0] * cache.n, first_logits.device
    tokens = torch.full((A, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((A, max_new_tokens), dtype=torch.bool, device=device)
    logprobs = torch.zeros((A, max_new_tokens), dtype=torch.float32, device=device)
    rows = torch.arange(A, device=device)  # [A'] wave row of each active row
    done = torch.zeros(A, dtype=torch.bool, device=device)
    tok, lp = sample(first_logits.repeat_interleave(cache.n, 0))  # token 0 of every row
    steps = 0
    for t in range(max_new_tokens):
        if t > 0:
            if t % check_every == 0:  # drop finished rows
                keep = ~done
                if not bool(keep.any()):
                    break
                if not bool(keep.all()):
                    idx = cache.keep_rows(keep)
                    rows, done, tok = rows[idx], done[idx], tok[idx]
            tok, lp = sample(decode_step(model, base, cache, tok, t))
            steps += 1
        # record token t of each row; rows that already ended get pad / masked out
        tokens[rows, t] = torch.where(done, pad_token_id, tok)
        logprobs[rows, t] = torch.where(done, 0.0, lp)
        mask[rows, t] = ~done
        done = done | torch.isin(tok, stop)
        tok = torch.where(done, pad_token_id, tok)  # finished rows feed pad until dropped
    return (tokens, mask, logprobs), steps


def gen_capacity(max_new_tokens: int, heads_per_kv: int) -> int:
    """Generated-token slots per row: the last sampled token is never fed back, so max_new_tokens - 1
    suffice; but flash-attn's decode with an appended key treats one query of a grouped-query model
    as heads_per_kv queries and refuses a cache shorter than that, so never fewer."""
    return max(max_new_tokens - 1, heads_per_kv, 1)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(model, prompts: list[list[int]], n: int, max_new_tokens: int, *, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, eos_token_ids: list[int] | int, pad_token_id: int,
             seed: int | None = None, kv_budget_tokens: int | None = None,
             prefill_chunk_tokens: int = 2048, check_every: int = 8,
             attention: str = "auto") -> Rollout:
    """Sample n continuations of each prompt (see the module docstring and `Rollout`).

    T of the outputs = the longest row (<= max_new_tokens). eos_token_ids may hold ids outside the
    vocabulary (never produced: bench.py uses one to run every row to the limit).
    kv_budget_tokens: max KV positions per wave (per layer), counted as P*Lmax + P*n*max_new_tokens;
    a prompt that alone needs more runs in a wave of its own (said once per process).
    prefill_chunk_tokens: tokens per prefill forward. check_every: decode steps between EOS checks.
    attention: 'auto' (flash-attn on CUDA with a bf16/fp16 model when it imports), 'torch', or 'flash'
    (wherever a flash_attn module imports: on CPU the tests' stand-in).
    """
    base, cfg = check_model(model), model.config
    eos = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
    check_inputs(cfg.vocab_size, prompts, n, max_new_tokens, eos, pad_token_id, temperature, top_p,
                 top_k, check_every, prefill_chunk_tokens)
    embed = base.embed_tokens.weight
    device, dtype = embed.device, embed.dtype
    path = choose_attention(attention, device, half=dtype in (torch.float16, torch.bfloat16))
    heads_per_kv = cfg.num_attention_heads // cfg.num_key_value_heads
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    sample = lambda logits: sample_next(logits, temperature, top_k, top_p, generator)  # noqa: E731
    stop = torch.tensor(eos, device=device)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    lengths = [len(p) for p in prompts]
    waves = plan_waves(lengths, n, max_new_tokens, kv_budget_tokens)
    over_budget = count_over_budget(lengths, waves, n, max_new_tokens, kv_budget_tokens)  # says so once
    # Outputs for all rows [P*n, max_new_tokens], filled wave by wave; trimmed to the longest row.
    rows_total = len(prompts) * n
    tokens = torch.full((rows_total, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((rows_total, max_new_tokens), dtype=torch.bool, device=device)
    logprobs = torch.zeros((rows_total, max_new_tokens), dtype=torch.float32, device=device)
    stats = dict(attention=path, prefill_s=0.0, decode_s=0.0, kv_bytes=0, waves=len(waves),
                 decode_steps=0, prompt_tokens=sum(lengths), over_budget_waves=over_budget)

    with inference_setting(model):
        for wave in waves:
            cache = SharedPrefixCache(cfg.num_hidden_layers, [lengths[i] for i in wave], n,
                                      gen_capacity(max_new_tokens, heads_per_kv), cfg.num_key_value_heads, head_dim,
                                      dtype, device, path)
            stats["kv_bytes"] = max(stats["kv_bytes"], cache.bytes)
            t0 = time.perf_counter()
            first_logits = prefill_wave(model, base, [prompts[i] for i in wave], cache, prefill_chunk_tokens)
            _sync(device)
            t1 = time.perf_counter()
            out, steps = decode_wave(model, base, cache, first_logits, sample, stop, pad_token_id,
                                     max_new_tokens, check_every)
            _sync(device)
            stats["prefill_s"] += t1 - t0
            stats["decode_s"] += time.perf_counter() - t1
            stats["decode_steps"] += steps
            del cache
            # wave row r is global row wave[r // n] * n + r % n
            rows = (torch.tensor(wave, device=device)[:, None] * n + torch.arange(n, device=device)).flatten()
            tokens[rows], mask[rows], logprobs[rows] = out

    lengths_out = mask.sum(1)
    T = max(int(lengths_out.max()), 1)
    ended = (torch.isin(tokens, stop) & mask).any(1)
    total = float(lengths_out.sum())
    secs = stats["prefill_s"] + stats["decode_s"]
    stats.update(generated_tokens=int(total), tokens_per_s=total / max(secs, 1e-9),
                 # what per-row caches (model.generate with num_return_sequences) would hold
                 kv_bytes_per_row_cache=rows_total * (max(lengths) + max_new_tokens) * 2
                 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * embed.element_size())
    return Rollout(tokens[:, :T], mask[:, :T], logprobs[:, :T], lengths_out, ~ended, stats)
