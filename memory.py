"""Memory per GPU, by arithmetic: what training a model of P parameters holds on each GPU under ddp
or fsdp (weights, gradients, AdamW, the sampler, the rollout's KV cache), and each phase's peak at
the paper's sizes (README: Memory). Nothing is allocated: parameter counts come from Qwen3 modules
built on the meta device.

    python memory.py                  # 3 s: GB per GPU, ddp vs fsdp, and each phase of the paper's recipe
    import memory
    memory.memory_estimate(n_params, model.config, kv_positions)   # bytes per GPU, by part
    memory.phase_memory("Qwen3-4B", 8, "fsdp", 163_840, 16, 16_384, 4)   # GB at each phase's peak

Not counted: the CUDA context, NCCL buffers, kernel workspaces and fragmentation.
"""

import torch


# -----------------------------------------------------------------------------
# Model sizes: the Qwen3 family the tables cover

QWEN3 = {  # hidden, layers, heads, kv heads, MLP width, tied embedding (Qwen3 config.json files)
    "Qwen3-0.6B": (1024, 28, 16, 8, 3072, True), "Qwen3-1.7B": (2048, 28, 16, 8, 6144, True),
    "Qwen3-4B": (2560, 36, 32, 8, 9728, True), "Qwen3-8B": (4096, 36, 32, 8, 12288, False),
}


def qwen3_params(name: str) -> int:
    """Parameter count of a Qwen3 size, from the real module built on the meta device (no memory)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    h, n, heads, kv, inter, tied = QWEN3[name]
    cfg = Qwen3Config(vocab_size=151936, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                      num_key_value_heads=kv, head_dim=128, intermediate_size=inter, tie_word_embeddings=tied)
    with torch.device("meta"):
        return sum(p.numel() for p in Qwen3ForCausalLM(cfg).parameters())


def wave_kv_positions(cfg, world: int) -> int:
    """KV positions (per layer) of the largest generation wave: rollout.wave_kv_tokens of the
    longest allowed prompt with its G x max_new rows, or the whole budget if that is larger; with no
    budget (0) all of a rank's prompts of a round share one wave. cfg: config.Config."""
    one = cfg.max_prompt_tokens + cfg.group_size * cfg.max_new_tokens
    if cfg.kv_budget_tokens:
        return max(cfg.kv_budget_tokens, one)
    return max((cfg.gen_prompts or cfg.prompts_per_step) // world, 1) * one


# -----------------------------------------------------------------------------
# Bytes per GPU before activations: one formula (train.py prints it at start-up, report.log_memory)

def memory_estimate(n_params: int, config=None, kv_positions: int = 0, sampler: bool = True,
                    bucket_view: bool = True, shard: str = "ddp", world: int = 1,
                    accumulate: bool = False) -> dict:
    """Bytes per GPU for a model of n_params = N parameters, before activations:

        weights fp32 4N + gradients fp32 4N + AdamW exp_avg, exp_avg_sq 8N   = 16N (ddp), 16N/world (fsdp)
        + DDP's gradient buckets 4N unless gradient_as_bucket_view (then they *are* the gradients)
        + fsdp with several micro-batches per optimizer step (one reduce-scatter per step, grad_sync):
          the unsharded float32 gradients held between micro-batches, 4N
        + bf16 sampler copy 2N (CUDA)
        + rollout KV, bf16: 2 (K and V) x layers x kv_heads x head_dim x 2 bytes x kv_positions

    config: the model's HF config (num_hidden_layers, num_key_value_heads, head_dim); None = no KV.
    kv_positions: KV positions of the largest generation wave (wave_kv_positions).
    """
    share = (lambda b: b / world) if shard == "fsdp" else (lambda b: b)
    kv_per_token = 0
    if config is not None:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2
    m = {"weights": share(4 * n_params), "grads": share(4 * n_params), "adamw": share(8 * n_params),
         "ddp_buckets": 0 if bucket_view or shard == "fsdp" else 4 * n_params,
         "accumulation": 4 * n_params if shard == "fsdp" and accumulate and world > 1 else 0,
         "sampler": 2 * n_params if sampler else 0, "rollout_kv": kv_per_token * kv_positions}
    m["total"] = sum(m.values())
    return m


def gb_per_gpu(params: int, shard: str, world: int, accumulate: bool) -> dict:
    """memory_estimate in GB (1e9 bytes) without the rollout KV cache, P = params, N = world:
    float32 weights + grads + AdamW's two moments 16P (ddp) or 16P/N (fsdp), the bf16 sampler 2P,
    and under fsdp with several micro-batches per optimizer step the unsharded gradients, 4P."""
    m = memory_estimate(params, shard=shard, world=world, accumulate=accumulate)
    return {"states": (m["weights"] + m["grads"] + m["adamw"]) / 1e9, "sampler": m["sampler"] / 1e9,
            "accumulation": m["accumulation"] / 1e9, "total": m["total"] / 1e9}

# -----------------------------------------------------------------------------
# Each phase's peak at the paper's sizes, transients included

def phase_memory(name: str, world: int, shard: str, prompt: int, responses: int, resp_len: int,
                 per_micro: int, vocab: int = 151_936, logprob_chunk: int = 1024,
                 keep_attention: bool = False) -> dict:
    """GB per GPU at the peak of each phase of a step, transients included, for a Qwen3 size (QWEN3)
    on `world` GPUs in bf16 (--precision bf16), by arithmetic. One rollout wave = one prompt of
    `prompt` tokens x `responses` rows of `resp_len`; the update packs `per_micro` responses with
    their prompt into one micro-batch (shared prefix, gradient checkpointing, flash-attn).

    rollout: states (16P, /world under fsdp) + sampler 2P + the wave's KV cache + keep_rows's
             one-layer compaction copy + the decode step's [rows, vocab] float32 logits (x3: logits,
             their scaled copy, the sampling prefix sums). FSDP's unsharded gradients are freed.
    update : states + sampler (resident) + fsdp's unsharded float32 gradients between micro-batches
             (4P) + checkpointed layer inputs (S tokens x hidden x layers, bf16 under fsdp, float32
             residual under ddp's autocast) + one layer's recompute, activations and their gradients
             (~2 x (5 hidden + 4 MLP) bf16 values per token) + the flash gather of the prompt's K/V per
             response (bf16) with its float32 gradient sum + two bf16 layers gathered by FSDP + the
             log-prob chunk's [chunk, vocab] float32 (x2 in backward). Fused AdamW adds nothing.
             keep_attention (--keep-attention) adds every layer's attention output (S x heads x 128,
             bf16) and its float32 log-sum-exp (S x heads), kept from the forward to the backward.
    """
    h, L, heads, kv, inter, tied = QWEN3[name]
    P = qwen3_params(name)
    shard_div = world if shard == "fsdp" else 1
    states = 16 * P / shard_div
    sampler = 2 * P
    kv_token = 2 * L * kv * 128 * 2                     # bf16 K and V, all layers, one position
    wave = prompt + responses * resp_len
    rows = responses
    rollout = {"states": states, "sampler": sampler, "kv_cache": kv_token * wave,
               "keep_rows copy": kv_token * responses * resp_len / L,
               "decode logits": 3 * rows * vocab * 4}
    S = prompt + per_micro * resp_len                     # tokens of one packed micro-batch
    act_bytes = 2 if shard == "fsdp" else 4
    gathered = per_micro * prompt + per_micro * resp_len  # keys handed to the responses' flash call
    layer_params = (P - vocab * h * (1 if tied else 2)) / L
    update = {"states": states, "sampler": sampler,
              "unsharded grads": 4 * P if shard == "fsdp" else 0,
              "checkpointed inputs": S * h * L * act_bytes,
              "layer recompute": 2 * S * (5 * h + 4 * inter) * 2,
              "prompt K/V gather": gathered * kv * 128 * 2 * 2 + S * kv * 128 * 2 * 4,
              "fsdp gathered layers": 2 * layer_params * 2 if shard == "fsdp" else 0,
              "log-prob chunk": 2 * logprob_chunk * vocab * 4}
    if keep_attention:
        update["kept attention"] = S * heads * (128 * 2 + 4) * L
    out = {}
    for phase, parts in (("rollout", rollout), ("update", update)):
        out[phase] = {k: v / 1e9 for k, v in parts.items()}
        out[phase]["total"] = sum(parts.values()) / 1e9
    return out


if __name__ == "__main__":
    print("| model | params | 1 GPU | ddp N=8 / 16 | fsdp N=8 | fsdp N=16 | fsdp N=8, accumulating | "
          "fsdp N=16, accumulating |")
    print("|---|---|---|---|---|---|---|---|")
    for name in QWEN3:
        P = qwen3_params(name)
        cells = [gb_per_gpu(P, "ddp", 1, False), gb_per_gpu(P, "ddp", 8, False)]
        cells += [gb_per_gpu(P, "fsdp", n, acc) for acc in (False, True) for n in (8, 16)]
        print(f"| {name} | {P / 1e9:.2f}B | " + " | ".join(f"{c['total']:.1f}" for c in cells) + " |")
    print("\nQwen3-4B, 8 GPUs, fsdp, bf16, the paper's sizes (prompt 163,840, 16 x 16,384), GB per GPU:")
    for per_micro in (16, 8, 4, 1):
        m = phase_memory("Qwen3-4B", 8, "fsdp", 163_840, 16, 16_384, per_micro)
        print(f"  {per_micro:2d} responses per micro-batch: rollout {m['rollout']['total']:.1f}, update "
              f"{m['update']['total']:.1f} = " + " + ".join(f"{k} {v:.1f}" for k, v in m["update"].items()
                                                           if k != "total"))
    kept = phase_memory("Qwen3-4B", 8, "fsdp", 163_840, 16, 16_384, 4, keep_attention=True)["update"]
    print(f"  --keep-attention at 4 per micro-batch: + {kept['kept attention']:.1f} = update {kept['total']:.1f}")
    m = phase_memory("Qwen3-4B", 8, "fsdp", 163_840, 16, 16_384, 8)
    print("  rollout = " + " + ".join(f"{k} {v:.1f}" for k, v in m["rollout"].items() if k != "total"))
