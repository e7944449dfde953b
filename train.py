"""GoLongRL training: GRPO with TMN-Reweight on long-context tasks, one step read top to bottom.

    python train.py                        # embedded default: SmolLM2-135M + built-in tasks, CPU, offline
    python train.py --help                 # every config field
    torchrun --nproc_per_node=8 train.py --recipe paper --shard fsdp \\
        --model Qwen/Qwen3-4B-Thinking-2507 --data golongrl.jsonl          # the paper's recipe on a node

One training step (the paper's recipe):
  1. this rank's share of the step's prompts                     data.PromptBatches
  2. n samples per prompt, each prompt prefilled once (no grad)   rollout.generate
  3. each response scored by its task's natural metric            rewards.score_batch
  4. all-gather rewards, prompt ids and task ids: every statistic below uses the global batch
  5. dynamic sampling: drop prompts whose n rewards are all equal, generate more until full
  6. advantages: TMN-Reweight (tmn.py), TMN, or plain GRPO (grpo.py)
  7. training forward: log-probs of the response tokens only      grpo.token_logprobs
     and rollout importance weights (trainer vs sampler numerics) grpo.rollout_is_weights
  8. clipped policy loss, token-mean over the global batch, one gradient sync per optimizer step
  9. gradient clipping, AdamW with linear warmup

How this differs from the paper's released code (a verl fork): plain torch DDP (default) or torch's
FSDP2 (--shard fsdp: weights, gradients and AdamW states sharded across GPUs) replaces verl's FSDP,
and there is no sequence parallelism (README: Memory, and Scaling past one GPU: FSDP2); generation is
our own loop (rollout.py) instead of vLLM; the trainer keeps float32 master weights and runs
bf16 autocast on CUDA.
"""

import dataclasses
import json
import logging
import math
import os
import random
import shlex
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

import attention
import checkpoint
from config import Config, parse_config
import data
import grpo
import interrupt
import policy
import report
import rewards
import rollout
import tasks
import tmn


# -----------------------------------------------------------------------------
# Distributed setup (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK) and small collectives

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


def seconds_since(t0: float, device: torch.device) -> float:
    """Wall seconds since t0 once the GPU has finished its queued work (CUDA kernels run
    asynchronously: without the synchronize, a timing measures the launches, not the work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


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


# -----------------------------------------------------------------------------
# Steps 2-3: sample n responses per prompt and score them (this rank's prompts only)

class Record(NamedTuple):
    """One generated row as every rank sees it after the gather: small, no token ids."""
    group: tuple      # globally unique prompt label (step, round, rank, index)
    task: str
    reward: float
    length: int       # response tokens
    truncated: bool   # no EOS before max_new_tokens
    format_ok: bool   # the thinking-format gate passed


@dataclass
class Rows:
    """This rank's sampled responses, one row each, prompt-major (row i answers prompt i // n)."""
    prompts: list        # [R] prompt token ids (list[int]), shared by the n rows of a prompt
    tokens: torch.Tensor     # [R, T] response tokens, pad after EOS
    mask: torch.Tensor       # [R, T] bool, True on response tokens (EOS included)
    rollout_lp: torch.Tensor  # [R, T] float32 log-probs the sampler computed
    rewards: list        # [R] floats
    tasks: list          # [R] task names
    groups: list         # [R] globally unique prompt labels (step, round, rank, index)
    truncated: list      # [R] bools: no EOS before max_new_tokens
    format_ok: list      # [R] bools: the thinking-format gate passed

    @staticmethod
    def cat(parts: list) -> "Rows":
        """Rows of several generation rounds in one, response width padded to the widest."""
        if not parts:  # a rank that drew no prompt
            e = torch.zeros(0, 1)
            return Rows([], e.long(), e.bool(), e, [], [], [], [], [])
        T = max(p.tokens.shape[1] for p in parts)
        pad = lambda x, v: torch.nn.functional.pad(x, (0, T - x.shape[1]), value=v)
        flat = lambda name: [x for p in parts for x in getattr(p, name)]
        return Rows(flat("prompts"), torch.cat([pad(p.tokens, 0) for p in parts]),
                    torch.cat([pad(p.mask, False) for p in parts]),
                    torch.cat([pad(p.rollout_lp, 0.0) for p in parts]), flat("rewards"), flat("tasks"),
                    flat("groups"), flat("truncated"), flat("format_ok"))

    def select(self, keep: list) -> "Rows":
        idx = torch.tensor(keep, dtype=torch.long)
        pick = lambda xs: [xs[i] for i in keep]
        return Rows(pick(self.prompts), self.tokens[idx], self.mask[idx], self.rollout_lp[idx],
                    pick(self.rewards), pick(self.tasks), pick(self.groups), pick(self.truncated),
                    pick(self.format_ok))

    def records(self) -> list:
        """[R] Record of each row (what the other ranks need to know about it)."""
        return [Record(*x) for x in zip(self.groups, self.tasks, self.rewards, self.mask.sum(1).tolist(),
                                        self.truncated, self.format_ok)]


def finite_rewards(scores: list, tasks: list) -> tuple[list, int]:
    """(scores with every NaN / infinite one set to 0, how many were). One such reward would make the
    task's mean, and through TMN's mean over tasks every advantage of the global batch, NaN: it is
    reported with its task and counted in the metric nonfinite_rewards instead."""
    out, bad = [], 0
    for task, r in zip(tasks, scores):
        if not math.isfinite(r):
            print(f"warning: task {task}: reward {r} is not a finite number; scored 0", flush=True)
            r, bad = 0.0, bad + 1
        out.append(float(r))
    return out, bad


def sample_and_score(model, tok, samples, prompt_ids, cfg: Config, eos_ids, seed: int, label,
                     n: int, temperature: float, top_p: float, max_new: int) -> tuple[Rows, dict]:
    """rollout.generate on this rank's prompts, then rewards.score_batch on the decoded text.
    Returns the rows and this call's seconds, generated tokens and decoded responses ([R] texts)."""
    t0 = time.perf_counter()
    out = rollout.generate(model, prompt_ids, n, max_new, temperature=temperature, top_p=top_p,
                           top_k=cfg.top_k, eos_token_ids=eos_ids, pad_token_id=tok.pad_token_id,
                           seed=seed, kv_budget_tokens=cfg.kv_budget_tokens or None, attention=cfg.attention)
    t1 = time.perf_counter()
    texts = [tok.decode(out.tokens[i][out.mask[i]].tolist(), skip_special_tokens=True)
             for i in range(out.tokens.shape[0])]
    expand = lambda xs: [x for x in xs for _ in range(n)]                        # per prompt -> per row
    tasks, answers = expand([s.task for s in samples]), expand([s.answer for s in samples])
    scores, nonfinite = finite_rewards(rewards.score_batch(tasks, texts, answers, require_think=cfg.require_think),
                                       tasks)
    fmt = [rewards.format_ok(t) for t in texts] if cfg.require_think else [True] * len(texts)
    t2 = time.perf_counter()
    rows = Rows(expand(prompt_ids), out.tokens.cpu(), out.mask.cpu(), out.logprobs.float().cpu(),
                scores, tasks, expand([(*label, i) for i in range(len(samples))]),
                out.truncated.cpu().tolist(), fmt)
    return rows, {"rollout_s": t1 - t0, "reward_s": t2 - t1, "gen_tokens": int(out.mask.sum()),
                  "nonfinite_rewards": nonfinite, "texts": texts}


# -----------------------------------------------------------------------------
# Steps 4-5: the global batch and dynamic sampling

def pick_groups(all_rows: list, need: int, filtering: bool) -> list:
    """Which prompts of a generation round to keep, decided identically on every rank.

    all_rows: every rank's (groups, rewards) lists of this round, in rank order (gathered: small).
    Returns, per rank, the kept row indices.
    A prompt is usable if its rewards are not all equal (or filtering is off); the surplus beyond
    `need` usable prompts is discarded (the paper's dynamic sampling). Usable prompts are taken round-robin over
    the ranks (each rank's first, then each rank's second, ...; a rank that runs out is skipped), so
    every rank ends with (almost) the same number of kept rows: filling rank by rank left half the
    GPUs of an 8-rank step idle in a dummy backward (kept rows [624, 624, 400, 400, 0, 0, 0, 0]).
    """
    usable = []  # per rank: the row indices of each usable prompt, in the rank's order
    for groups, scores in all_rows:
        by_group: dict = {}
        for i, g in enumerate(groups):
            by_group.setdefault(g, []).append(i)
        # zero variance: no learning signal, only noise in the statistics
        usable.append([idx for idx in by_group.values()
                       if not (filtering and max(scores[i] for i in idx) == min(scores[i] for i in idx))])
    keep = [[] for _ in all_rows]
    for j in range(max((len(u) for u in usable), default=0)):   # j-th usable prompt of every rank
        for r, u in enumerate(usable):
            if need > 0 and j < len(u):
                keep[r].extend(u[j])
                need -= 1
    return keep


@dataclass
class Batch:
    """What steps 1-5 hand to the update: this rank's kept rows and every rank's records."""
    mine: Rows         # this rank's kept rows (token ids and sampler log-probs)
    generated: list    # [Record] of every generated row, all ranks, in one global order
    kept: list         # [Record] of the kept rows, all ranks, in the order of the advantages
    my_pos: list       # [int] where this rank's kept rows sit in `kept`
    gen_tokens: int    # tokens generated by this rank
    nonfinite: int     # rewards that were NaN / infinite, scored 0 (this rank)
    times: dict        # seconds on this rank: rollout_s, reward_s
    shown: list = field(default_factory=list)  # this rank's rows for samples.jsonl (responses_to_show)


def collect_batch(step: int, cfg: Config, batches, sampler, tok, eos_ids, rank: int, device) -> Batch:
    """Steps 1-5: generation rounds until the global batch holds cfg.prompts_per_step prompts with a
    learning signal (or cfg.max_gen_rounds is reached)."""
    b = Batch(Rows.cat([]), [], [], [], 0, 0, {"rollout_s": 0.0, "reward_s": 0.0})
    need, parts = cfg.prompts_per_step, []
    for rnd in range(cfg.max_gen_rounds if cfg.dynamic_sampling else 1):
        samples = batches.next_batch()                                           # step 1
        # every prompt fits: too-long ones were dropped at load (usable_prompts); truncation may apply
        ids, samples, _ = data.encode_prompts(samples, tok, cfg.max_prompt_tokens, truncate=cfg.truncate_prompts)
        seed = hash((cfg.seed, step, rnd, rank)) % 2**31  # reproducible, distinct per rank
        rows = Rows.cat([])
        if samples:                                                              # steps 2-3
            rows, t = sample_and_score(sampler, tok, samples, ids, cfg, eos_ids, seed, (step, rnd, rank),
                                       cfg.group_size, cfg.temperature, cfg.top_p, cfg.max_new_tokens)
            b.gen_tokens += t.pop("gen_tokens")
            b.nonfinite += t.pop("nonfinite_rewards")
            b.shown += report.responses_to_show(samples, t.pop("texts"), rows.rewards, cfg.group_size,
                                         cfg.log_samples - len(b.shown), {x["task"] for x in b.shown})
            for k, v in t.items():
                b.times[k] += v
        all_records = [[Record(*x) for x in recs] for recs in gather(rows.records())]  # step 4
        keep = pick_groups([([x.group for x in recs], [x.reward for x in recs]) for recs in all_records],
                           need, cfg.dynamic_sampling)                           # step 5
        for r, idx in enumerate(keep):
            if r == rank:
                b.my_pos += range(len(b.kept), len(b.kept) + len(idx))
            b.kept += [all_records[r][i] for i in idx]
        parts.append(rows.select(keep[rank]))
        b.generated += [x for recs in all_records for x in recs]
        need = cfg.prompts_per_step - len({x.group for x in b.kept})
        if need <= 0:
            break
    b.mine = Rows.cat(parts)
    return b


# -----------------------------------------------------------------------------
# Step 6: advantages over the global kept batch

def advantages(kept: list, cfg: Config) -> torch.Tensor:
    """[R_global] advantages of the kept rows (Records, all ranks), with the estimator the config names."""
    if not kept:
        return torch.zeros(0)
    r = torch.tensor([x.reward for x in kept], dtype=torch.float64)
    groups, tasks = [x.group for x in kept], [x.task for x in kept]
    if cfg.advantage == "grpo":
        return grpo.group_advantages(r, groups).float()
    return tmn.tmn_reweight(r, groups, tasks, alpha=cfg.alpha, gamma=cfg.gamma,
                            reweight=cfg.advantage == "tmn_reweight").float()


# -----------------------------------------------------------------------------
# Steps 7-9: training forward, loss, one synced backward, clip, AdamW

@dataclass
class Trainer:
    """What the update works with: the policy, its DDP or FSDP2 wrapper, the optimizer and its schedule."""
    net: policy.Policy        # the policy itself (under fsdp: sharded in place, net is the FSDP root)
    wrapped: nn.Module        # policy.wrap(net): DDP(net), the FSDP2 root, or net alone (one process)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    world: int
    device: torch.device
    state_bytes: int = 0      # weights + grads + AdamW held by this rank, measured at the last step

    @property
    def model(self) -> nn.Module:
        """What the forward with gradient goes through."""
        return self.wrapped

    bf16: bool = False        # --precision bf16: float32 master weights, bf16 autocast

    def autocast(self):
        """bf16 autocast over the float32 master weights (CUDA, or CPU to run the GPU's numerics)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()


def forward_fns(cfg: Config):
    """(training forward, micro-batch planner): the shared-prefix pair runs a group's prompt once,
    the per-row pair G times (the per-row one stays as the reference)."""
    if cfg.shared_prefix:
        return partial(policy.forward_logprobs_shared, attention=cfg.attention), policy.shared_micro_batches
    return policy.forward_logprobs, policy.micro_batches


def old_logprobs(tr: Trainer, rows: Rows, cfg: Config, pad_id: int):
    """[R, T] log-probs under the policy before this batch's first optimizer step, or None.

    With one optimizer step per batch (the paper's mini_batches=1) the policy that is updated *is*
    the one that scored the batch, so the loss uses old = logp.detach(): the ratio is exactly 1, the
    PPO clip never triggers, and no extra forward is spent. With K > 1 mini-batches the later ones are
    off-policy: record the old log-probs once, up front.
    """
    if cfg.mini_batches == 1:
        return None
    fwd, split = forward_fns(cfg)
    old_lp = torch.zeros(rows.tokens.shape, device=tr.device)
    mbs = policy.even_micro_batches(split(rows, list(range(len(rows.prompts))), cfg.micro_batch_tokens),
                                    tr.model, tr.device)  # fsdp: every forward is a collective
    with torch.no_grad(), tr.autocast():
        for mb in mbs:
            if mb:
                old_lp[mb] = fwd(tr.net, rows, mb, pad_id, tr.device)
            else:
                policy.dummy_logprobs(tr.model, tr.device)
    return old_lp


def micro_batch_loss(tr: Trainer, rows: Rows, mb: list, adv: torch.Tensor, old_lp, ref, cfg: Config,
                     pad_id: int, n_tok: float, n_seq: float) -> tuple[torch.Tensor, dict]:
    """Steps 7-8 for the rows `mb`: the policy loss (a share of the global token mean) and its metrics."""
    fwd, _ = forward_fns(cfg)
    lp = fwd(tr.model, rows, mb, pad_id, tr.device)                                  # [b, T] with grad
    mask = rows.mask[mb].to(tr.device)
    old = old_lp[mb] if old_lp is not None else lp.detach()  # ratio 1 at mini_batches=1 (old_logprobs)
    is_w, m_is = None, {}
    if cfg.rollout_is:
        is_w, m_is = grpo.rollout_is_weights(old, rows.rollout_lp[mb].to(tr.device), mask)
    loss, m = grpo.policy_loss(lp, old, adv[mb].to(tr.device), mask, cfg.clip_low, cfg.clip_high,
                               cfg.dual_clip, is_w, cfg.loss_agg, num_tokens=n_tok, num_seqs=n_seq)
    if ref is not None:  # optional k3 KL to the frozen initial policy, token-mean
        with torch.no_grad():
            ref_lp = fwd(ref, rows, mb, pad_id, tr.device)
        loss = loss + cfg.kl_coef * (grpo.kl_k3(lp, ref_lp) * mask).sum() / max(n_tok, 1)
    return loss, {**m, **m_is}


def dummy_backward(tr: Trainer):
    """A zero loss through the whole model, for a rank that kept no rows in this mini-batch (or,
    under fsdp, fewer micro-batches than another rank).

    DDP all-reduces gradients *inside* backward, bucket by bucket, and FSDP2 all-gathers each layer
    in forward and backward; every rank must take part in each collective, or the others wait
    forever. Its gradients are zero, so it adds nothing to the sum."""
    (policy.dummy_logprobs(tr.model, tr.device).sum() * 0.0).backward()   # one 2-token row


def mini_batch_backward(tr: Trainer, rows: Rows, part: list, adv, old_lp, ref, cfg: Config,
                        pad_id: int) -> tuple[dict, int, float]:
    """Backward over the rows `part`, micro-batch by micro-batch; gradients sync on the last one only.

    The loss is a token mean over the *global* mini-batch: every micro-batch divides by the global
    token count N and is multiplied by the world size, because DDP averages gradients (grpo.policy_loss).
    Returns summed metrics, the number of micro-batches they came from, and the non-finite loss count.
    """
    n_tok, n_seq = all_reduce_list([sum(int(rows.mask[i].sum()) for i in part),
                                    sum(bool(rows.mask[i].any()) for i in part)], tr.device)
    mbs = forward_fns(cfg)[1](rows, part, cfg.micro_batch_tokens) or [[]]  # [] = no rows: dummy pass
    mbs = policy.even_micro_batches(mbs, tr.model, tr.device)  # fsdp: as many passes as any rank
    metrics, n, bad = {}, 0, 0.0
    for j, mb in enumerate(mbs):
        sync = j == len(mbs) - 1
        with policy.grad_sync(tr.model, sync), tr.autocast():
            if not mb:
                dummy_backward(tr)
                continue
            loss, m = micro_batch_loss(tr, rows, mb, adv, old_lp, ref, cfg, pad_id, n_tok, n_seq)
            bad += float(not torch.isfinite(loss))
            (loss * tr.world).backward()
        for k, v in m.items():
            metrics[k] = metrics.get(k, 0.0) + v
        n += 1
    return metrics, n, bad


ABSURD_UPDATE_RATIO = 1.0  # ||update|| / ||weights||: Adam at lr 1e-5 moves weights ~1e-3 of their norm


@torch.no_grad()
def preview_adamw(optimizer: torch.optim.Optimizer, chunk: int = 2**24) -> tuple[torch.Tensor, torch.Tensor]:
    """What optimizer.step() (AdamW, no amsgrad) would do to the weights, without doing it.

    Returns (1 if any new weight would be non-finite else 0, ||new - old|| / ||old|| over all weights),
    both 0-dim tensors (no host sync). Per parameter, as torch.optim.AdamW computes it:
        m' = b1 m + (1 - b1) g      v' = b2 v + (1 - b2) g^2      t' = t + 1
        p' = p (1 - lr wd) - lr / (1 - b1^t') * m' / (sqrt(v') / sqrt(1 - b2^t') + eps)
    A chunk of `chunk` elements at a time, so the extra memory is a few chunks, not a weight copy.
    Under fsdp each rank previews its own shards: the ratio is then its shards' (optimizer_step takes
    the largest over ranks), the non-finite check is exact.
    """
    device = optimizer.param_groups[0]["params"][0].device
    bad, upd2, w2 = (torch.zeros((), dtype=torch.float64, device=device) for _ in range(3))
    for group in optimizer.param_groups:
        lr, wd, eps, (b1, b2) = group["lr"], group["weight_decay"], group["eps"], group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            st = optimizer.state.get(p, {})
            t = float(st["step"]) + 1 if "step" in st else 1.0
            flat = lambda x: policy.local_shard(x).detach().reshape(-1).split(chunk)  # fsdp: own shard
            ms = flat(st["exp_avg"]) if "exp_avg" in st else [None] * len(flat(p))
            vs = flat(st["exp_avg_sq"]) if "exp_avg_sq" in st else [None] * len(flat(p))
            for w, g, m, v in zip(flat(p), flat(p.grad), ms, vs):
                g = g.float()  # new temporaries below, updated in place: the state is never touched
                m = g.mul(1 - b1) if m is None else m.mul(b1).add_(g, alpha=1 - b1)
                v = g.square().mul_(1 - b2) if v is None else v.mul(b2).addcmul_(g, g, value=1 - b2)
                # step = old - new = lr wd p + lr / (1 - b1^t') * m' / (sqrt(v') / sqrt(1 - b2^t') + eps)
                step = m.div_(v.sqrt_().div_(math.sqrt(1 - b2 ** t)).add_(eps)).mul_(lr / (1 - b1 ** t))
                step.add_(w, alpha=lr * wd)
                bad = torch.maximum(bad, (~torch.isfinite(w - step)).any().double())
                # float32 norms (pairwise sums), squared in float64: a ratio, not a checksum
                upd2 += torch.linalg.vector_norm(step).double() ** 2
                w2 += torch.linalg.vector_norm(w.float()).double() ** 2
    return bad, (upd2 / w2.clamp_min(1e-30)).sqrt()


def optimizer_step(tr: Trainer, cfg: Config, bad: float) -> tuple[float, bool, float]:
    """Step 9: clip the global gradient norm, then AdamW. Every rank skips the step (weights and
    optimizer state untouched) when a loss or the gradient is non-finite on any rank, or when the
    step would make any weight non-finite (--lr 1e39); an update larger than the weights
    themselves (--lr 1e6) is applied with a loud warning. Returns (gradient norm, skipped, ratio)."""
    norm = policy.clip_grad_norm(tr.net.parameters(), cfg.grad_clip)  # global norm, also when sharded
    blowup, ratio = preview_adamw(tr.optimizer)
    bad, blowup, ratio = all_reduce_list([bad + float(not torch.isfinite(norm)), float(blowup), float(ratio)],
                                         tr.device, dist.ReduceOp.MAX)  # one fixed call: ranks agree
    if bad:
        print(f"warning: non-finite loss or gradient (norm {float(norm)}): step skipped", flush=True)
    elif blowup:
        print(f"warning: this update would make weights non-finite (update/weight norm ratio {ratio:.3g}, "
              f"lr {tr.optimizer.param_groups[0]['lr']:.3g}): step skipped, weights untouched", flush=True)
    else:
        if ratio > ABSURD_UPDATE_RATIO:
            print(f"WARNING: update/weight norm ratio {ratio:.3g} > {ABSURD_UPDATE_RATIO}: this step moves "
                  f"the weights by more than their own size (lr {tr.optimizer.param_groups[0]['lr']:.3g}); "
                  "the run is very likely diverging, check --lr", flush=True)
        tr.optimizer.step()
    tr.state_bytes = policy.local_state_bytes(tr.net, tr.optimizer)  # before the grads are freed
    # DDP: keep the gradients (zeroed) in its all-reduce buckets; freed, the next no_sync micro-batch
    # would allocate them outside the buckets, a second copy of the gradients during accumulation
    tr.optimizer.zero_grad(set_to_none=not isinstance(tr.wrapped, nn.parallel.DistributedDataParallel))
    return float(norm), bool(bad or blowup), ratio


def mini_batch_parts(rows: Rows, cfg: Config) -> list:
    """The row indices of each of the batch's cfg.mini_batches optimizer steps (rows k, k+K, ...)."""
    return [list(range(len(rows.prompts)))[k::cfg.mini_batches] for k in range(cfg.mini_batches)]


def update(tr: Trainer, rows: Rows, adv: torch.Tensor, ref, cfg: Config, pad_id: int) -> dict:
    """Steps 7-9: one batch -> cfg.mini_batches optimizer steps. Returns this rank's averaged metrics."""
    old_lp = old_logprobs(tr, rows, cfg, pad_id)
    metrics, n_metrics, skipped = {}, 0, 0
    parts = mini_batch_parts(rows, cfg)
    for part in parts:
        m, n, bad = mini_batch_backward(tr, rows, part, adv, old_lp, ref, cfg, pad_id)
        for k, v in m.items():
            metrics[k] = metrics.get(k, 0.0) + v
        n_metrics += n
        norm, was_skipped, ratio = optimizer_step(tr, cfg, bad)
        skipped += was_skipped
    if skipped < len(parts):
        tr.scheduler.step()  # the schedule counts batches that updated the weights
    return {**{k: v / max(n_metrics, 1) for k, v in metrics.items()},
            "grad_norm": norm, "update_ratio": ratio,   # of the last mini-batch
            "skipped_steps": float(skipped), "state_gib": tr.state_bytes / 2**30}


def sync_sampler(sampler: nn.Module, model: nn.Module):
    """Copy the trainer's weights into the sampler (a no-op when they are one model: CPU, no fsdp);
    under fsdp each parameter is gathered from its shards, already in the sampler's dtype."""
    if sampler is not model:
        policy.sync_sampler(sampler, model)


# -----------------------------------------------------------------------------
# Evaluation: cfg.eval_samples samples per prompt at T=0.6, top_p=0.95 (the paper's validation setting)

EVAL_SEED_STRIDE = 7919  # a prime: rank r samples with seed + 7919*(r+1) (+ chunk offset), apart from training seeds


def evaluate(model, tok, samples, prompt_ids, cfg: Config, eos_ids, rank: int,
             world: int) -> tuple[dict, list, dict]:
    """Score `samples` (sharded across ranks) with cfg.eval_samples samples each. Returns
    (task_scores' metrics, per-prompt scores [{"id", "task", "scores": [K]}] in sample order, and per
    task one response {"id", "response", "score"}: the first sample of its first prompt). Generated in
    chunks of about as many rows as a training round, so the progress bar (rank 0, over prompts) moves."""
    from tqdm import tqdm
    k = cfg.eval_samples
    mine = list(range(rank, len(samples), world))
    chunk = max(1, (cfg.gen_prompts or cfg.prompts_per_step) * cfg.group_size // (world * k))  # prompts
    bar = tqdm(total=len(samples), desc="eval", unit="prompt", disable=rank != 0, leave=cfg.eval_only,
               dynamic_ncols=True)
    prompts, first = [], {}  # first: task -> (sample index, its first response) on this rank
    for c in range(0, len(mine), chunk):
        idx = mine[c:c + chunk]
        seed = cfg.seed + EVAL_SEED_STRIDE * (rank + 1) + c  # + c: each chunk its own stream
        rows, t = sample_and_score(model, tok, [samples[i] for i in idx], [prompt_ids[i] for i in idx],
                                   cfg, eos_ids, seed, ("eval", rank, c), k,
                                   0.6, 0.95, cfg.eval_max_new_tokens or cfg.max_new_tokens)
        for j, i in enumerate(idx):  # rows are prompt-major: prompt j's samples are rows j*k .. j*k+k-1
            s = samples[i]
            prompts.append((i, {"id": s.id, "task": s.task, "scores": rows.rewards[j * k:(j + 1) * k]}))
            if s.task not in first:
                first[s.task] = (i, {"id": s.id, "response": t["texts"][j * k], "score": rows.rewards[j * k]})
        bar.update(min(len(idx) * world, bar.total - bar.n))  # every rank works on a chunk this size
    bar.close()
    everyone = gather((prompts, first))  # small: K numbers per prompt, one response per task per rank
    prompts = [p for _, p in sorted(x for part, _ in everyone for x in part)]
    shown: dict = {}
    for _, f in everyone:  # the task's first prompt, whichever rank scored it
        for task, (i, ex) in f.items():
            if task not in shown or i < shown[task][0]:
                shown[task] = (i, ex)
    return report.task_scores(prompts), prompts, {t: shown[t][1] for t in sorted(shown)}


# -----------------------------------------------------------------------------
# Speed of one step: the numbers every rank contributes (report.py turns them into metrics)

def speed_metrics(batch: Batch, update_s: float, cfg: Config, device) -> dict:
    """report.speed_metrics over the global step: tokens summed over ranks, seconds of the slowest.
    Two collectives with fixed-length lists, the same on every rank whatever its data."""
    run, per_row = report.update_tokens(batch.mine, mini_batch_parts(batch.mine, cfg), cfg.micro_batch_tokens,
                                        cfg.shared_prefix)
    totals = all_reduce_list([batch.nonfinite, batch.gen_tokens, run, per_row], device)
    slowest = all_reduce_list([batch.times["rollout_s"], batch.times["reward_s"], update_s], device,
                              dist.ReduceOp.MAX)
    return report.speed_metrics(dict(zip(["nonfinite_rewards", "gen_tokens", "run_tokens", "row_tokens"], totals)),
                                dict(zip(["rollout_s", "reward_s", "update_s"], slowest)), device)


# -----------------------------------------------------------------------------
# Setup: data, model, optimizer

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


def usable_prompts(samples: list, tok, cfg: Config, rank: int, world: int, log) -> tuple[list, int]:
    """The training samples whose chat prompt fits --max-prompt-tokens (or, with --truncate-prompts,
    can be cut to fit), decided once before step 1 so that no step runs short of prompts.

    Each rank tokenizes every world-th sample and the verdicts are gathered: the set is tokenized
    once, spread over the ranks. The test is data.encode_prompts' own. Returns (usable samples,
    number dropped); no usable prompt: exit 2.
    """
    def fits(s) -> bool:
        if len(data.chat_ids(tok, s.prompt)) <= cfg.max_prompt_tokens:
            return True
        return cfg.truncate_prompts and data.truncate_prompt(
            s.prompt, s.meta.get("question"), tok, cfg.max_prompt_tokens) is not None
    t0 = time.perf_counter()
    verdicts = dict(x for part in gather([(i, fits(samples[i])) for i in range(rank, len(samples), world)])
                    for x in part)
    kept = [s for i, s in enumerate(samples) if verdicts[i]]
    dropped = len(samples) - len(kept)
    log(f"data: {dropped} of {len(samples)} training prompts are longer than --max-prompt-tokens "
        f"{cfg.max_prompt_tokens} and were dropped ({time.perf_counter() - t0:.1f} s to check)")
    if not kept:
        print(f"error: no usable training prompt: all {len(samples)} are longer than --max-prompt-tokens "
              f"{cfg.max_prompt_tokens} (data: {cfg.data or 'built-in tasks'}); raise it or pass "
              "--truncate-prompts", file=sys.stderr, flush=True)
        sys.exit(2)
    return kept, dropped


def prepare_data(cfg: Config, tok, rank: int, world: int, log, files=None) -> tuple[list, int, list, list]:
    """(training samples that fit, how many were too long, evaluation samples, their prompt ids):
    load_data (`files`: the JSONL files read before the model), then usable_prompts (training only),
    then the evaluation prompts encoded once."""
    train_set, eval_set = load_data(cfg, tok, files)
    dropped = 0  # training prompts too long for --max-prompt-tokens, dropped at load
    if not cfg.eval_only:
        train_set, dropped = usable_prompts(train_set, tok, cfg, rank, world, log)
    log(f"data: {len(train_set)} training samples, {len(eval_set)} evaluation samples; "
        f"tasks: {sorted({s.task for s in train_set or eval_set})}")
    eval_ids, eval_set, _ = data.encode_prompts(eval_set, tok, cfg.max_prompt_tokens,
                                                truncate=cfg.truncate_prompts)
    return train_set, dropped, eval_set, eval_ids


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


def load_policy(cfg: Config, ckpt, rank: int, device, log):
    """(tokenizer, trainer model, sampler, frozen reference or None, EOS ids). Rank 0 converts the
    embedded default once, the others wait."""
    from transformers import AutoTokenizer
    if not cfg.model and rank == 0:
        policy.embedded_model_dir()
    if dist.is_initialized():
        wait_for_all()
    base = cfg.model or str(policy.embedded_model_dir())
    tok = AutoTokenizer.from_pretrained(str(ckpt or base), trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    check_positions(str(ckpt or base), cfg)  # before the weights load: exit 2 if the run cannot fit
    model = policy.load_model(str(ckpt or base), device, cfg.trust_remote_code)
    checkpoint.check_saveable(model, log)  # now, not after training
    eos_ids = policy.eos_token_ids(tok, model)
    if cfg.grad_checkpointing:
        model.activation_checkpointing_enable()  # non-reentrant: works under DDP
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
        ref_lm = policy.load_model(base, device, cfg.trust_remote_code).eval().requires_grad_(False)
        ref = policy.Policy(ref_lm, cfg.temperature, cfg.logprob_chunk)
    return tok, model, sampler, ref, eos_ids


def sharded(cfg: Config) -> bool:
    """--shard fsdp over more than one process (one process has nothing to shard)."""
    return cfg.shard == "fsdp" and dist.is_initialized() and dist.get_world_size() > 1


def make_trainer(model, cfg: Config, world: int, device, log=print) -> Trainer:
    """DDP or FSDP2 around the policy when world > 1 (policy.wrap), then AdamW (under fsdp it must
    see the sharded parameters) with linear warmup then constant."""
    net = policy.Policy(model, cfg.temperature, cfg.logprob_chunk)
    wrapped = policy.wrap(net, cfg.shard, device, world, log, bf16=cfg.precision == "bf16")
    # fused on CUDA: one kernel per parameter group, without the foreach implementation's temporary
    # copies of every moment (+4 bytes per parameter at the step, 16 GB at 4B)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    warm = max(cfg.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
    return Trainer(net, wrapped, optimizer, scheduler, world, device, bf16=cfg.precision == "bf16")


# -----------------------------------------------------------------------------
# The pieces of main(), in the order it calls them

def evaluate_and_log(step: int, sampler, tok, eval_set, eval_ids, cfg: Config, eos_ids, rank: int,
                     world: int, log, weights=None) -> tuple[dict, dict]:
    """evaluate(), one log line (mean +- standard error), and one line in out_dir/evals.jsonl (rank 0:
    the metrics, the per-prompt scores and one response per task). Returns (metrics, the responses).
    weights: what was evaluated (--eval-only names the checkpoint or model in the line)."""
    m, prompts, shown = evaluate(sampler, tok, eval_set, eval_ids, cfg, eos_ids, rank, world)
    log(f"eval at step {step} ({len(prompts)} prompts x {cfg.eval_samples} samples): " +
        ", ".join(f"{k[5:]} {report.mean_se(v, m[f'eval_se/{k[5:]}'])}" for k, v in m.items()
                   if k.startswith("eval/")))
    if rank == 0:
        out_dir = Path(cfg.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "evals.jsonl", "a") as f:
            f.write(report.json_line({"step": step, **({"checkpoint": weights} if weights else {}), **m,
                                          "eval_samples": cfg.eval_samples, "prompts": prompts,
                                          "responses": report.shorten_responses(shown)}))
    return m, shown


def eval_only(ckpt, model, sampler, tok, eval_set, eval_ids, cfg: Config, eos_ids, rank: int, world: int,
              log):
    """--eval-only: score the loaded weights once and print the table; no batches, optimizer or DDP."""
    if not eval_set:
        sys.exit("--eval-only: no evaluation samples left (all longer than --max-prompt-tokens?)")
    weights = str(ckpt or cfg.model or policy.embedded_model_dir())
    m, shown = evaluate_and_log(checkpoint.checkpoint_step(ckpt), sampler, tok, eval_set, eval_ids, cfg, eos_ids,
                                rank, world, log, weights)
    log(report.eval_table(m, cfg.eval_samples, shown))
    return model


def prompt_batches(train_set: list, cfg: Config, rank: int, world: int) -> data.PromptBatches:
    """Step 1's source: this rank's share of each generation round's prompts; exit 2 if too few."""
    try:
        return data.PromptBatches(train_set, cfg.gen_prompts or cfg.prompts_per_step, rank, world,
                                  cfg.seed, balanced=cfg.task_balanced)
    except ValueError as e:  # too few usable prompts for one generation batch
        print(f"error: {len(train_set)} usable training prompts: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def resume_state(ckpt, tr: Trainer, batches, cfg: Config, rank: int, world: int, log) -> int:
    """--resume: restore AdamW (when the checkpoint has it), the schedule, the data order and every
    rank's random generators from ckpt/trainer_state.pt. Returns the step to continue after (0: fresh)."""
    if not ckpt:
        return 0
    state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
    if "optimizer" in state and sharded(cfg):  # indexed whole tensors; fsdp holds named shards
        log(f"{ckpt} is a ddp checkpoint, resumed under --shard fsdp: the weights, schedule, data "
            "order and random state continue; AdamW's moments restart from zero")
    elif "optimizer" in state:
        tr.optimizer.load_state_dict(state["optimizer"])
    elif (ckpt / "optimizer").is_dir():  # an fsdp checkpoint's AdamW shards (any --shard reads them)
        checkpoint.load_sharded_optimizer(ckpt / "optimizer", tr.net, tr.optimizer)
    else:
        log(f"{ckpt} was saved with --no-save-optimizer: AdamW's moments restart from zero")
    tr.scheduler.load_state_dict(state["scheduler"])
    batches.load_state_dict(state["data"])
    if len(state["rng"]) == world:
        checkpoint.set_rng_state(state["rng"][rank])
    return state["step"]


def train_step(tr: Trainer, batch: Batch, adv: torch.Tensor, ref, sampler, model, cfg: Config,
               pad_id: int) -> dict:
    """Steps 7-9 on this rank's kept rows, then the sampler takes the new weights. {} (no update)
    when the step kept no prompt: then no rank has rows, and no rank calls a collective here."""
    if not batch.kept:
        return {}
    # our attention stays selected through backward: checkpointing recomputes each layer then
    with attention.setting(model):
        m = update(tr, batch.mine, adv[batch.my_pos], ref, cfg, pad_id)
    sync_sampler(sampler, model)
    return m


def save_step(step: int, cfg: Config, tr: Trainer, model, tok, batches, rank: int):
    """A checkpoint (checkpoint.save_checkpoint on rank 0). Collective: every rank gathers its random
    state, and under fsdp the weights to rank 0 and its own AdamW shards to disk. A failed save (a
    full disk) ends the run on every rank: one line, exit 1, the last good checkpoint left usable."""
    out_dir = Path(cfg.out_dir)
    rngs = gather(checkpoint.rng_state())  # every rank's generators, restored rank by rank
    weights = policy.full_state_dict(model, rank)  # fsdp: gathered to rank 0; ddp: None
    failed = ""
    try:
        optim_dir = (checkpoint.save_sharded_optimizer(out_dir, step, tr.net, tr.optimizer, rank)
                     if sharded(cfg) and cfg.save_optimizer else None)  # fsdp: every rank its shards
        if rank == 0:
            whole = tr.optimizer if cfg.save_optimizer and not sharded(cfg) else None
            checkpoint.save_checkpoint(out_dir, step, model, tok, whole, tr.scheduler, batches,
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


def check_disk(cfg: Config, model, rank: int, device, log):
    """Before anything is moved or written: half-written checkpoint folders of an earlier run removed
    (rank 0), then one checkpoint must fit on out_dir's disk (every rank asks: under fsdp each writes
    its AdamW shards). Else one line and exit 2, before the first step rather than at the first save."""
    out_dir = Path(cfg.out_dir)
    if rank == 0:
        checkpoint.remove_partial_saves(out_dir, log)
    need = checkpoint.checkpoint_bytes(sum(p.numel() for p in model.parameters()), cfg.save_optimizer)
    problem = checkpoint.disk_problem(out_dir, need)
    if all_reduce_list([bool(problem)], device, dist.ReduceOp.MAX)[0]:
        if not problem:
            sys.exit(2)  # the rank that is short of space says why
        if cfg.overwrite and checkpoint.holds_run(out_dir):
            problem += ("; the run --overwrite replaces is kept until this run's first checkpoint: delete "
                        "it yourself to free its space")
        fail(problem)


def stop_run(signum: int, step: int, cfg: Config, argv, world: int, log):
    """After SIGINT / SIGTERM: step `step` is saved; say how to continue, exit 128 + the signal."""
    flags = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--overwrite", "--resume")]
    launcher = f"torchrun --nproc_per_node={world}" if world > 1 else "python"
    log(f"\nstopped by {interrupt.NAMES[signum]} after step {step} of {cfg.steps}; checkpoint "
        f"{checkpoint.latest_checkpoint(Path(cfg.out_dir), log)}\n"
        f"  to continue: {launcher} train.py {shlex.join(flags + ['--resume'])}")
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(128 + signum)


# -----------------------------------------------------------------------------
# The main loop

def main(argv=None):
    """Train (or evaluate, or only plot) as the config says; returns the Hugging Face model."""
    cfg = parse_config(argv, __doc__)
    # CUDA's caching allocator: expandable segments let freed blocks of the rollout's KV cache and the
    # update's activations be reused across phases of different shapes instead of fragmenting
    # (set before the first CUDA allocation; a value the user set wins)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    rank, world, device = setup_distributed(cfg)
    log = print if rank == 0 else (lambda *a, **k: None)
    quiet_other_ranks(rank)
    cfg = resolve_precision(cfg, device)
    out_dir, t_start = Path(cfg.out_dir), time.perf_counter()
    if checkpoint.plot_only(cfg, out_dir):
        log(f"--plot: {out_dir} holds a run; drawing it, no training (--resume or --overwrite to train)")
        if rank == 0:
            report.plot_rewards(out_dir)
        return None
    if cfg.plot:
        report.require_matplotlib()  # now, not after the training
    saved_to = checkpoint.prepare_run_dir(cfg, out_dir, rank, log)
    log(report.config_text(cfg, Config(), saved_to))
    torch.manual_seed(cfg.seed + rank)  # sampling seeds below are explicit; this covers the rest
    random.seed(cfg.seed + rank)

    files = read_data_files(cfg)  # before the model: a bad record costs seconds, not a model load
    ckpt = checkpoint.weights_to_load(cfg, out_dir, log)
    tok, model, sampler, ref, eos_ids = load_policy(cfg, ckpt, rank, device, log)
    train_set, dropped, eval_set, eval_ids = prepare_data(cfg, tok, rank, world, log, files)
    if cfg.eval_only:
        return eval_only(ckpt, model, sampler, tok, eval_set, eval_ids, cfg, eos_ids, rank, world, log)
    batches = prompt_batches(train_set, cfg, rank, world)
    tr = make_trainer(model, cfg, world, device, log)
    report.log_memory(model, cfg, world, device, log, sharded(cfg))
    check_disk(cfg, model, rank, device, log)
    aside = checkpoint.start_run(cfg, out_dir, rank, log)  # all checks passed: the run starts here
    start = resume_state(ckpt, tr, batches, cfg, rank, world, log)
    metrics_path, names = out_dir / "metrics.jsonl", report.task_order({s.task for s in train_set})
    if rank == 0:  # keep only the steps the checkpoint had seen; damaged lines set aside, never lost
        checkpoint.resume_metrics(metrics_path, start, log)
        checkpoint.resume_metrics(out_dir / "samples.jsonl", start, log)  # the same steps' responses

    from tqdm import tqdm
    bar = tqdm(range(start + 1, cfg.steps + 1), disable=rank != 0, desc="train", dynamic_ncols=True)
    stop, clock = interrupt.StopRequest().install(), interrupt.SaveClock(cfg.save_minutes)
    for step in bar:
        t_step = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        lr = tr.scheduler.get_last_lr()[0]
        batch = collect_batch(step, cfg, batches, sampler, tok, eos_ids, rank, device)    # steps 1-5
        adv = advantages(batch.kept, cfg)                                                 # step 6
        m = {"step": step, "lr": lr, "dropped_too_long": dropped,
             "generated_prompts": len({x.group for x in batch.generated}),
             **report.step_metrics(batch.generated, batch.kept, adv, cfg.alpha)}
        t_update = time.perf_counter()
        m.update(train_step(tr, batch, adv, ref, sampler, model, cfg, tok.pad_token_id))  # steps 7-9
        if not batch.kept:
            log(f"\nstep {step}: all {m['generated_prompts']} generated prompts had all-equal rewards "
                "(no learning signal); no update this step")
        m.update(speed_metrics(batch, seconds_since(t_update, device), cfg, device))
        m["step_s"] = seconds_since(t_step, device)
        if cfg.eval_every and step % cfg.eval_every == 0:
            m.update(evaluate_and_log(step, sampler, tok, eval_set, eval_ids, cfg, eos_ids, rank, world, log)[0])
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(report.json_line(m))  # NaN / inf -> null: strict JSON
            report.log_step(bar, m, names)
            if batch.shown:  # what the model wrote (rank 0's own prompts)
                with open(out_dir / "samples.jsonl", "a") as f:
                    f.writelines(report.json_line({"step": step, **x}) for x in batch.shown)
        # one fixed all-reduce per step on every rank: all see the same signal and the same save clock
        signum, late = all_reduce_list([stop.signum, clock.due()], device, dist.ReduceOp.MAX)
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or late or signum:
            save_step(step, cfg, tr, model, tok, batches, rank)
            clock.saved()
            checkpoint.drop_aside(aside if rank == 0 else None, step, log)
            aside = None
        if signum and step < cfg.steps:
            stop.restore()
            stop_run(int(signum), step, cfg, argv, world, log)
    stop.restore()
    if rank == 0:
        report.finish_run(cfg, start, time.perf_counter() - t_start, log)
    if dist.is_initialized():
        dist.destroy_process_group()
    return model


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C outside the training loop, which handles it itself
        print("\ninterrupted (Ctrl-C) outside the training steps; checkpoints saved so far are intact",
              file=sys.stderr)
        sys.exit(130)
