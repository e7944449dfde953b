"""The machinery around a training step: processes and their collectives, reading the data and
loading the model with every check that can fail early, the optimizer, resume, save and stop. None
of it is the method (train.py is); read it when you run on several GPUs or change how a run starts.

    import harness
    rank, world, device = harness.setup_distributed(cfg)   # torchrun's RANK / WORLD_SIZE, or 0 of 1
    run = harness.Run(cfg, rank, world, device, print)     # what every phase works with
    train_set, eval_set = harness.load_data(cfg, tok)      # JSONL files, or tasks built offline

Two process groups: tensor collectives inside a step run on the default group (NCCL on GPUs, with
--collective-timeout-min), and the waits that last as long as a rollout, an evaluation or a save run
on a gloo group with --dist-timeout-min (NCCL's watchdog would abort a wait of hours). Everything
that is wrong at start ends the run with one line and exit 2 before the first step.
"""

import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

import attention
import checkpoint
import data
import interrupt
import policy
import tasks
from config import Config


# -----------------------------------------------------------------------------
# Processes (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK) and small collectives

WAIT_GROUP = None  # a gloo group for the long waits (gathers of Python objects, barriers): see below


def setup_distributed(cfg: Config) -> tuple[int, int, torch.device]:
    """(rank, world size, device). Without torchrun: rank 0 of 1, no process group.

    Two timeouts. The default group (NCCL between GPUs, gloo on CPU) carries the tensor collectives
    inside a step, where every rank arrives within seconds: --collective-timeout-min (NCCL's own
    default, 10 min). The waits that last as long as the slowest rank's rollout, evaluation or
    checkpoint save (a paper-length round is hours, ranks differ by many minutes) meet on a second,
    gloo group with --dist-timeout-min: an NCCL collective must never sit in such a wait, its
    watchdog would abort the job.
    """
    global WAIT_GROUP
    from datetime import timedelta
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo",
                            timeout=timedelta(minutes=cfg.collective_timeout_min))
    WAIT_GROUP = dist.new_group(backend="gloo", timeout=timedelta(minutes=cfg.dist_timeout_min))
    return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu")


def quiet_other_ranks(rank: int):
    """Ranks other than 0 print nothing to stdout and show no progress bars or library warnings: every
    line would otherwise appear once per GPU. Errors (stderr) still come from every rank."""
    if rank == 0:
        return
    sys.stdout = open(os.devnull, "w")
    warnings.simplefilter("ignore")  # rank 0 shows each warning once
    logging.getLogger("data").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (small Python objects only). On the gloo
    wait group: the ranks may arrive hours apart (after their rollouts)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=WAIT_GROUP)
    return out


def wait_for_all():
    """A barrier on the gloo wait group (a rank may be saving a checkpoint for minutes)."""
    if dist.is_initialized():
        dist.barrier(group=WAIT_GROUP)


def all_reduce_list(xs: list, device: torch.device, op=None) -> list:
    """Elementwise sum (or `op`) of a fixed-length list of numbers over all ranks, in one call.

    Every rank calls this with the same length at the same point of the step, whatever its data:
    a collective that one rank skips hangs the others.
    """
    if not dist.is_initialized():
        return [float(x) for x in xs]
    t = torch.tensor([float(x) for x in xs], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def seconds_since(t0: float, device: torch.device) -> float:
    """Wall seconds since t0 once the GPU has finished its queued work (CUDA kernels run
    asynchronously: without the synchronize, a timing measures the launches, not the work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


# The CPU allocator. glibc's malloc serves a block from its heap unless it is at least the "mmap
# threshold" (then from a fresh mapping, unmapped on free), and hands the heap's free top back to the
# OS once it exceeds the "trim threshold". Memory handed back costs, when next used, a page fault and a
# kernel zero-fill per 4 KB page. The update allocates and frees the same activation sizes layer after
# layer (10-30 MB per layer on SmolLM2 at 2K-4K tokens): at 4K-token prompts an 8 MB threshold meant
# 45 million page faults and 82 s of system time in 3 steps, the steps 21% slower. So on CPU the
# trainer keeps freed memory for reuse: blocks under CPU_MMAP_THRESHOLD come from the heap (glibc's
# own threshold reaches that only after the first such block is freed), and the heap is never trimmed.
# The peak RSS is then the peak of live tensors plus what the heap cannot reuse; blocks over the
# threshold (the LM head's [V, H] gradient) still map and unmap. Measured in the README (CPU memory).
CPU_MMAP_THRESHOLD = 32 << 20
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def reuse_freed_memory(device: torch.device) -> bool:
    """On CPU with glibc, fix malloc's mmap threshold at CPU_MMAP_THRESHOLD and never trim its heap
    (see above); True if set. A threshold the user set through the environment
    (MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_) wins; CUDA memory has its own allocator and is
    not touched; other C libraries (musl, macOS) are left as they are."""
    if device.type != "cpu" or {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return False
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:  # not glibc
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, CPU_MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))


def resolve_precision(cfg: Config, device: torch.device) -> Config:
    """--precision auto -> bf16 on CUDA, fp32 on CPU; --attention auto -> flash or torch
    (attention.choose, said once). Exit 2 with one line when flash is forced and does not import."""
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    try:
        path = attention.choose(cfg.attention, device, half=precision == "bf16")
    except ValueError as e:
        print(f"error: --attention {cfg.attention}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    return dataclasses.replace(cfg, precision=precision, attention=path)


def sharded(cfg: Config) -> bool:
    """--shard fsdp over more than one process (one process has nothing to shard)."""
    return cfg.shard == "fsdp" and dist.is_initialized() and dist.get_world_size() > 1


# -----------------------------------------------------------------------------
# The run context

@dataclass
class Run:
    """What every phase of a run works with, built once by train.main: the config, this process's
    place among the ranks, the tokenizer, the model being trained, the sampler and the optimizer.
    Fields after `log` are filled in as main loads them (None until then)."""
    cfg: Config
    rank: int                  # this process, 0 .. world-1; rank 0 writes the files and prints
    world: int                 # processes (one per GPU)
    device: torch.device
    log: Callable              # print on rank 0, silent on the others
    tok: Any = None            # the tokenizer (pad id, decoding responses)
    eos_ids: list = field(default_factory=list)  # token ids that end a response
    model: nn.Module = None    # the model being trained: a HF causal LM, float32 master weights
    sampler: nn.Module = None  # what generates: `model` itself, or its copy (bf16, or whole under fsdp)
    ref: nn.Module = None      # --kl-coef: policy.Policy of the frozen initial model, else None
    policy: nn.Module = None   # policy.Policy(model) as the update runs it: under DDP / FSDP2 when world > 1
    optimizer: torch.optim.Optimizer = None
    scheduler: torch.optim.lr_scheduler.LRScheduler = None
    state_bytes: int = 0       # weights + grads + AdamW held by this rank, measured at the last step

    def autocast(self):
        """bf16 autocast over the float32 master weights (--precision bf16: CUDA, or CPU to run the
        GPU's numerics); nothing in fp32."""
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()


# -----------------------------------------------------------------------------
# Data: read and checked before the model loads, then the prompts that fit

def fail(message: str, code: int = 2):
    """One line on stderr, no traceback, and exit `code`: 2 (as argparse) for what is wrong at start."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def read_data_files(cfg: Config) -> dict:
    """{"data": samples, "eval_data": samples} of the JSONL files this run reads, read and checked
    before the model loads: a bad record then stops the run in seconds, not after the model load.
    A malformed record or a file without any: one line naming the full path (and line and field), exit 2."""
    files = {}
    for name in (["eval_data"] if cfg.eval_only else ["data", "eval_data"]):
        path = getattr(cfg, name)
        if not path:
            continue
        full = Path(path).absolute()  # skipped records are counted and logged by load_jsonl
        try:
            files[name] = data.load_jsonl(full, skip_unknown=cfg.skip_unknown_sources,
                                          skip_bad_golds=cfg.skip_bad_golds)
        except data.DataError as e:
            fail(f"--{name.replace('_', '-')}: {e}")
        if not files[name]:
            fail(f"--{name.replace('_', '-')} {full}: " + ("the file is empty" if full.stat().st_size == 0
                 else "no records in it (blank lines only, or every record skipped)"))
    return files


# Built evaluation tasks have a seed of their own (ids "<task>-heldout-<i>"): the held-out set is the
# same whatever --seed, so runs with different seeds are scored on the same prompts, and it can never
# be a training sample's (training tasks are built with the integer --seed)
HELDOUT_SEED = "heldout"


def load_data(cfg: Config, tok, files: dict | None = None) -> tuple[list, list]:
    """(training samples, evaluation samples): the JSONL files given (`files`: read_data_files' result,
    read here when None), or tasks built from the built-in documents: cfg.n_per_task of each task type
    for training (seed cfg.seed) and cfg.eval_per_task held out (seed HELDOUT_SEED); a training prompt
    that equals a held-out one is dropped. --eval-only builds or reads the evaluation samples only
    (sample i of a task depends on (seed, task, i) alone, so it builds the same held-out set)."""
    read = lambda name: files[name] if files is not None else data.load_jsonl(
        getattr(cfg, name), skip_unknown=cfg.skip_unknown_sources, skip_bad_golds=cfg.skip_bad_golds)
    if cfg.eval_only:
        if cfg.eval_data:
            return [], read("eval_data")
        if cfg.data:
            sys.exit("--eval-only with --data needs --eval-data: a JSONL training set has no held-out split")
        return [], build_tasks(cfg, tok, cfg.eval_per_task, HELDOUT_SEED)
    if cfg.data:
        train_set, eval_set = read("data"), []
    else:
        eval_set = build_tasks(cfg, tok, cfg.eval_per_task, HELDOUT_SEED) if cfg.eval_per_task else []
        held = {json.dumps(s.prompt) for s in eval_set}  # a context drawn twice by chance stays held out
        train_set = [s for s in build_tasks(cfg, tok, cfg.n_per_task, cfg.seed)
                     if json.dumps(s.prompt) not in held]
    if cfg.eval_data:
        eval_set = read("eval_data")
    if not train_set and not cfg.eval_only:
        sys.exit(f"no training samples (data: {cfg.data or 'built-in tasks'}): nothing to train on")
    return train_set, eval_set


def build_tasks(cfg: Config, tok, n_per_task: int, seed) -> list:
    """tasks.build_tasks on the built-in documents; a context it cannot fill is one line, exit 2."""
    try:
        return tasks.build_tasks(tasks.load_documents(), tok, n_per_task, cfg.context_tokens, seed)
    except RuntimeError as e:  # this tokenizer needs more room than tasks.MIN_CONTEXT_TOKENS
        fail(f"--context-tokens {cfg.context_tokens}: {e}")


def usable_prompts(run: Run, samples: list) -> tuple[list, int]:
    """The training samples whose chat prompt fits --max-prompt-tokens (or, with --truncate-prompts,
    can be cut to fit), decided once before step 1 so that no step runs short of prompts.

    Each rank tokenizes every world-th sample and the verdicts are gathered: the set is tokenized
    once, spread over the ranks. The test is data.encode_prompts' own. Returns (usable samples,
    number dropped); no usable prompt: exit 2.
    """
    cfg, tok = run.cfg, run.tok

    def fits(s) -> bool:
        if len(data.chat_ids(tok, s.prompt)) <= cfg.max_prompt_tokens:
            return True
        return cfg.truncate_prompts and data.truncate_prompt(
            s.prompt, s.meta.get("question"), tok, cfg.max_prompt_tokens) is not None
    t0 = time.perf_counter()
    verdicts = dict(x for part in gather([(i, fits(samples[i])) for i in range(run.rank, len(samples), run.world)])
                    for x in part)
    kept = [s for i, s in enumerate(samples) if verdicts[i]]
    dropped = len(samples) - len(kept)
    run.log(f"data: {dropped} of {len(samples)} training prompts are longer than --max-prompt-tokens "
            f"{cfg.max_prompt_tokens} and were dropped ({time.perf_counter() - t0:.1f} s to check)")
    if not kept:
        print(f"error: no usable training prompt: all {len(samples)} are longer than --max-prompt-tokens "
              f"{cfg.max_prompt_tokens} (data: {cfg.data or 'built-in tasks'}); raise it or pass "
              "--truncate-prompts", file=sys.stderr, flush=True)
        sys.exit(2)
    return kept, dropped


def prepare_data(run: Run, files=None) -> tuple[list, int, list, list]:
    """(training samples that fit, how many were too long, evaluation samples, their prompt ids):
    load_data (`files`: the JSONL files read before the model), then usable_prompts (training only),
    then the evaluation prompts encoded once."""
    cfg, tok = run.cfg, run.tok
    train_set, eval_set = load_data(cfg, tok, files)
    dropped = 0  # training prompts too long for --max-prompt-tokens, dropped at load
    if not cfg.eval_only:
        train_set, dropped = usable_prompts(run, train_set)
    run.log(f"data: {len(train_set)} training samples, {len(eval_set)} evaluation samples; "
            f"tasks: {sorted({s.task for s in train_set or eval_set})}")
    eval_ids, eval_set, _ = data.encode_prompts(eval_set, tok, cfg.max_prompt_tokens,
                                                truncate=cfg.truncate_prompts)
    return train_set, dropped, eval_set, eval_ids


def prompt_batches(run: Run, train_set: list) -> data.PromptBatches:
    """Step 1's source: this rank's share of each generation round's prompts; exit 2 if too few."""
    cfg = run.cfg
    try:
        return data.PromptBatches(train_set, cfg.gen_prompts or cfg.prompts_per_step, run.rank, run.world,
                                  cfg.seed, balanced=cfg.task_balanced)
    except ValueError as e:  # too few usable prompts for one generation batch
        print(f"error: {len(train_set)} usable training prompts: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


# -----------------------------------------------------------------------------
# The model, its sampler and the optimizer

def check_positions(model_path: str, cfg: Config):
    """Exit 2 before the weights load when a prompt + its response can be longer than the model's
    position range (config.json's max_position_embeddings): RoPE past it is untrained, and the run
    would only show it as bad rewards. The fix is the model's rope_scaling (e.g. YaRN), set in its
    config.json together with max_position_embeddings, as its model card describes."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    limit = getattr(config, "max_position_embeddings", None)
    longest = cfg.max_prompt_tokens + max(cfg.max_new_tokens, cfg.eval_max_new_tokens)
    if limit and longest > limit:
        print(f"error: --max-prompt-tokens {cfg.max_prompt_tokens} + --max-new-tokens "
              f"{max(cfg.max_new_tokens, cfg.eval_max_new_tokens)} = {longest} positions, but {model_path} has "
              f"max_position_embeddings {limit}: extend it with rope_scaling in the model's config.json "
              f"(e.g. YaRN, factor {math.ceil(longest / limit)}) or lower the two limits",
              file=sys.stderr, flush=True)
        sys.exit(2)


def load_policy(run: Run, ckpt) -> tuple:
    """(tokenizer, the model to train, the sampler, the frozen reference or None, EOS ids), from
    `ckpt` (a checkpoint folder) or the base model. Rank 0 converts the embedded default once, the
    others wait."""
    cfg, device = run.cfg, run.device
    from transformers import AutoTokenizer
    if not cfg.model and run.rank == 0:
        policy.embedded_model_dir()
    if dist.is_initialized():
        wait_for_all()
    base = cfg.model or str(policy.embedded_model_dir())
    tok = AutoTokenizer.from_pretrained(str(ckpt or base), trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    check_positions(str(ckpt or base), cfg)  # before the weights load: exit 2 if the run cannot fit
    model = policy.load_model(str(ckpt or base), device, cfg.trust_remote_code)
    checkpoint.check_saveable(model, run.log)  # now, not after training
    eos_ids = policy.eos_token_ids(tok, model)
    if cfg.grad_checkpointing:
        policy.enable_checkpointing(model, cfg.keep_attention)
    model.train()
    # The sampler: in bf16 (CUDA's default) a bf16 copy of the weights (as verl's vLLM keeps its own),
    # synced after each update; flash-attn kernels need bf16 and the trainer keeps float32 master
    # weights. In fp32 the sampler is the model itself, except under fsdp (a sharded model cannot
    # generate alone): a float32 copy. Their numeric mismatch is what the rollout IS weights correct.
    if cfg.precision == "bf16" or sharded(cfg):
        sampler = policy.make_sampler(model, torch.bfloat16 if cfg.precision == "bf16" else torch.float32)
    else:
        sampler = model
    ref = None
    if cfg.kl_coef > 0 and not cfg.eval_only:
        ref_model = policy.load_model(base, device, cfg.trust_remote_code).eval().requires_grad_(False)
        ref = policy.Policy(ref_model, cfg.temperature, cfg.logprob_chunk)
    return tok, model, sampler, ref, eos_ids


def make_optimizer(run: Run) -> tuple:
    """(the policy as the update runs it, AdamW, its schedule) for run.model: policy.Policy around the
    model, under DDP or FSDP2 when world > 1 (policy.wrap), then AdamW (under fsdp it must see the
    sharded parameters) with linear warmup then constant."""
    cfg = run.cfg
    trained = policy.wrap(policy.Policy(run.model, cfg.temperature, cfg.logprob_chunk), cfg.shard, run.device,
                          run.world, run.log, bf16=cfg.precision == "bf16")
    # fused, on CUDA and CPU alike: one kernel per parameter, without the foreach implementation's
    # temporary copies of every moment (+4 bytes per parameter at the step, 16 GB at 4B). On CPU it
    # is also 10x faster (bench.py --only profile: the AdamW line)
    optimizer = torch.optim.AdamW(run.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    warm = max(cfg.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
    return trained, optimizer, scheduler


# -----------------------------------------------------------------------------
# Resume, save, stop

def check_disk(run: Run):
    """Before anything is moved or written: half-written checkpoint folders of an earlier run removed
    (rank 0), then one checkpoint must fit on out_dir's disk (every rank asks: under fsdp each writes
    its AdamW shards). Else one line and exit 2, before the first step rather than at the first save."""
    cfg, out_dir = run.cfg, Path(run.cfg.out_dir)
    if run.rank == 0:
        checkpoint.remove_partial_saves(out_dir, run.log)
    need = checkpoint.checkpoint_bytes(sum(p.numel() for p in run.model.parameters()), cfg.save_optimizer)
    problem = checkpoint.disk_problem(out_dir, need)
    if all_reduce_list([bool(problem)], run.device, dist.ReduceOp.MAX)[0]:
        if not problem:
            sys.exit(2)  # the rank that is short of space says why
        if cfg.overwrite and checkpoint.holds_run(out_dir):
            problem += ("; the run --overwrite replaces is kept until this run's first checkpoint: delete "
                        "it yourself to free its space")
        fail(problem)


def resume_state(run: Run, ckpt, batches: data.PromptBatches) -> int:
    """--resume: restore AdamW (when the checkpoint has it), the schedule, the data order and every
    rank's random generators from ckpt/trainer_state.pt. Returns the step to continue after (0: fresh)."""
    if not ckpt:
        return 0
    log = run.log
    state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
    if "optimizer" in state and sharded(run.cfg):  # indexed whole tensors; fsdp holds named shards
        log(f"{ckpt} is a ddp checkpoint, resumed under --shard fsdp: the weights, schedule, data "
            "order and random state continue; AdamW's moments restart from zero")
    elif "optimizer" in state:
        run.optimizer.load_state_dict(state["optimizer"])
    elif (ckpt / "optimizer").is_dir():  # an fsdp checkpoint's AdamW shards (any --shard reads them)
        checkpoint.load_sharded_optimizer(ckpt / "optimizer", policy.unwrap(run.policy), run.optimizer)
    else:
        log(f"{ckpt} was saved with --no-save-optimizer: AdamW's moments restart from zero")
    run.scheduler.load_state_dict(state["scheduler"])
    batches.load_state_dict(state["data"])
    if len(state["rng"]) == run.world:
        checkpoint.set_rng_state(state["rng"][run.rank])
    return state["step"]


def save_step(run: Run, step: int, batches: data.PromptBatches):
    """A checkpoint (checkpoint.save_checkpoint on rank 0). Collective: every rank gathers its random
    state, and under fsdp the weights to rank 0 and its own AdamW shards to disk. A failed save (a
    full disk) ends the run on every rank: one line, exit 1, the last good checkpoint left usable."""
    cfg, rank, out_dir = run.cfg, run.rank, Path(run.cfg.out_dir)
    rngs = gather(checkpoint.rng_state())  # every rank's generators, restored rank by rank
    weights = policy.full_state_dict(run.model, rank)  # fsdp: gathered to rank 0; ddp: None
    failed = ""
    try:
        optim_dir = (checkpoint.save_sharded_optimizer(out_dir, step, policy.unwrap(run.policy), run.optimizer, rank)
                     if sharded(cfg) and cfg.save_optimizer else None)  # fsdp: every rank its shards
        if rank == 0:
            whole = run.optimizer if cfg.save_optimizer and not sharded(cfg) else None
            checkpoint.save_checkpoint(out_dir, step, run.model, run.tok, whole, run.scheduler, batches,
                                       cfg.keep_last, rngs, weights, optim_dir)
    except checkpoint.SaveError as e:
        failed = str(e)
    # every rank learns whether any save failed (this also waits for rank 0, as a barrier would; on
    # the gloo wait group: rank 0 may write for minutes)
    if any(gather(bool(failed))):
        if not failed:
            sys.exit(1)  # the rank whose save failed says why
        last = checkpoint.latest_checkpoint(out_dir, lambda *a: None)
        fail(f"{failed}; the half-written folder was removed. Last good checkpoint: {last or 'none'}"
             + (" (--resume continues from it)" if last else ""), code=1)


def stop_run(run: Run, signum: int, step: int, argv):
    """After SIGINT / SIGTERM: step `step` is saved; say how to continue, exit 128 + the signal."""
    flags = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--overwrite", "--resume")]
    launcher = f"torchrun --nproc_per_node={run.world}" if run.world > 1 else "python"
    run.log(f"\nstopped by {interrupt.NAMES[signum]} after step {step} of {run.cfg.steps}; checkpoint "
        f"{checkpoint.latest_checkpoint(Path(run.cfg.out_dir), run.log)}\n"
        f"  to continue: {launcher} train.py {shlex.join(flags + ['--resume'])}")
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(128 + signum)
