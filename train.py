"""GoLongRL training: GRPO with TMN-Reweight on long-context tasks, one step read top to bottom.

    python train.py                        # embedded default: SmolLM2-135M + built-in tasks, CPU, offline
    python train.py --help                 # every config field
    torchrun --nproc_per_node=8 train.py --recipe paper \\
        --model Qwen/Qwen3-4B-Thinking-2507 --data golongrl.jsonl          # the paper's recipe on a node

One training step (the paper's recipe, SPEC sections 2-6):
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

How this differs from the paper's released code (a verl fork): plain torch DDP replaces FSDP and
sequence parallelism, so every GPU holds the whole model and its optimizer state (see README for
memory advice); generation is our own loop (rollout.py) instead of vLLM; the trainer keeps float32
master weights and runs bf16 autocast on CUDA.
"""

import argparse
import dataclasses
import json
import math
import os
import random
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import checkpoint
import data
import grpo
import policy
import rewards
import rollout
import tmn


# -----------------------------------------------------------------------------
# Config: one dataclass; the command line is generated from it (--field value)

def option(default, help: str):
    """A config field whose help text is its comment (shown by --help)."""
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # model and data
    model: str = option("", "HF hub id or local folder; empty = embedded SmolLM2-135M-Instruct (offline)")
    trust_remote_code: bool = option(False, "allow model code from the hub (off unless asked)")
    data: str = option("", "training JSONL in the released GoLongRL format; empty = build tasks from built-in docs")
    eval_data: str = option("", "evaluation JSONL; empty = a held-out split of the built tasks")
    context_tokens: int = option(512, "context length of built tasks (ignored with --data)")
    n_per_task: int = option(8, "built tasks per task type (ignored with --data)")
    eval_per_task: int = option(1, "built tasks per type held out for evaluation")
    max_prompt_tokens: int = option(1024, "longer prompts are dropped and counted (paper: 163,840)")
    truncate_prompts: bool = option(False, "cut the middle of the longest document instead of dropping")
    # rollout
    group_size: int = option(4, "samples per prompt, G (paper: 16); not --n: torchrun would take that as its own")
    prompts_per_step: int = option(2, "prompts in one training batch, global (paper: 128)")
    gen_prompts: int = option(0, "prompts generated per round, global; 0 = prompts_per_step (paper: 512)")
    max_gen_rounds: int = option(2, "dynamic sampling: at most this many generation rounds per step")
    dynamic_sampling: bool = option(True, "drop prompts whose n rewards are all equal (DAPO filter groups)")
    max_new_tokens: int = option(48, "response length limit (paper: 16,384)")
    temperature: float = option(1.0, "sampling temperature (paper: 1.0)")
    top_p: float = option(1.0, "nucleus sampling (paper: 1.0)")
    top_k: int = option(0, "top-k sampling, 0 = off (paper: off)")
    kv_budget_tokens: int = option(0, "KV tokens per generation wave, 0 = rollout.py's default")
    require_think: bool = option(False, "format gate: reward 0 without exactly one </think> (paper: on)")
    # objective
    advantage: str = option("tmn_reweight", "grpo | tmn | tmn_reweight")
    alpha: float = option(0.8, "TMN-Reweight threshold mix: t = alpha*mu_x + (1-alpha)*mean_k(mu)")
    gamma: float = option(1.0, "TMN-Reweight strength: w = exp(+-gamma*(0.5 - pass rate))")
    clip_low: float = option(0.2, "PPO clip below 1")
    clip_high: float = option(0.28, "PPO clip above 1 (clip-higher)")
    dual_clip: float = option(3.0, "dual-clip bound for negative advantages")
    loss_agg: str = option("token-mean", "token-mean | seq-mean-token-mean")
    rollout_is: bool = option(True, "rollout importance-sampling correction (SPEC section 4)")
    kl_coef: float = option(0.0, "k3 KL to the frozen initial policy; 0 = off (paper: off)")
    # optimization
    steps: int = option(3, "training steps (one batch each)")
    lr: float = option(1e-5, "AdamW learning rate (paper: 2e-6)")
    warmup_steps: int = option(1, "linear warmup, then constant (paper: 5)")
    weight_decay: float = option(0.1, "AdamW weight decay")
    grad_clip: float = option(1.0, "max global gradient norm")
    mini_batches: int = option(1, "optimizer steps per batch (paper: 1; >1 makes the clip matter)")
    micro_batch_tokens: int = option(4096, "tokens per forward/backward micro-batch (padded rows; packed groups with --shared-prefix)")
    shared_prefix: bool = option(True, "training forward packs a group as [prompt, r_1..r_G]: its prompt once, not G times")
    grad_checkpointing: bool = option(True, "recompute activations in backward (long contexts)")
    logprob_chunk: int = option(1024, "tokens per chunk in grpo.token_logprobs")
    # run
    out_dir: str = option("runs/default", "metrics.jsonl, checkpoints/ and the plot go here")
    seed: int = option(0, "seed of data order and sampling (each rank samples with its own stream)")
    eval_every: int = option(0, "evaluate every k steps (0 = only with --eval-only)")
    eval_only: bool = option(False, "evaluate and exit")
    eval_max_new_tokens: int = option(0, "response limit at evaluation, 0 = max_new_tokens")
    save_every: int = option(0, "checkpoint every k steps (0 = at the end only)")
    keep_last: int = option(2, "checkpoints kept")
    resume: bool = option(False, "continue from the newest complete checkpoint in out_dir")
    task_balanced: bool = option(False, "equal prompts per task in each batch (as QwenLong-L1.5)")
    plot: bool = option(False, "draw per-task reward curves to out_dir/rewards.png (needs matplotlib)")
    recipe: str = option("", "'paper' = the paper's hyperparameters (explicit flags still win)")


# The paper's recipe (SPEC section 6), applied before explicit command-line flags.
PAPER = dict(lr=2e-6, warmup_steps=5, weight_decay=0.1, grad_clip=1.0, group_size=16, prompts_per_step=128,
             gen_prompts=512, max_gen_rounds=4, clip_low=0.2, clip_high=0.28, dual_clip=3.0,
             temperature=1.0, top_p=1.0, top_k=0, max_prompt_tokens=163_840, max_new_tokens=16_384,
             require_think=True, advantage="tmn_reweight", alpha=0.8, micro_batch_tokens=32_768,
             kv_budget_tokens=262_144)  # KV positions per generation wave: ~30-40 GB bf16 for Qwen3-1.7B/4B


def parse_config(argv=None) -> Config:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        kw = dict(default=argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {f.default!r})")
        if f.type is bool or isinstance(f.default, bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, **kw)
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), **kw)
    given = vars(p.parse_args(argv))
    cfg = Config()
    if given.get("recipe", "") == "paper":
        cfg = dataclasses.replace(cfg, **PAPER)
    elif given.get("recipe", "") not in ("", "paper"):
        p.error(f"--recipe must be 'paper' or empty, got {given['recipe']!r}")
    cfg = dataclasses.replace(cfg, **given)
    if cfg.advantage not in ("grpo", "tmn", "tmn_reweight"):
        p.error(f"--advantage must be grpo, tmn or tmn_reweight, got {cfg.advantage!r}")
    return cfg


# -----------------------------------------------------------------------------
# Distributed setup (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK) and small collectives

def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device). Without torchrun: rank 0 of 1, no process group."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")  # NCCL between GPUs, gloo on CPU
    return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu")


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (small Python objects only)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce(x: float, device: torch.device, op=None) -> float:
    """Sum (or `op`) of a number over all ranks. NCCL reduces CUDA tensors only, hence `device`."""
    if not dist.is_initialized():
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return float(t)


# -----------------------------------------------------------------------------
# Steps 2-3: sample n responses per prompt and score them (this rank's prompts only)

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
        if not parts:  # a rank with nothing to generate (all its prompts too long)
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


def sample_and_score(model, tok, samples, prompt_ids, cfg: Config, eos_ids, seed: int, label,
                     n: int, temperature: float, top_p: float, max_new: int) -> tuple[Rows, dict]:
    """rollout.generate on this rank's prompts, then rewards.score_batch on the decoded text."""
    t0 = time.perf_counter()
    out = rollout.generate(model, prompt_ids, n, max_new, temperature=temperature, top_p=top_p,
                           top_k=cfg.top_k, eos_token_ids=eos_ids, pad_token_id=tok.pad_token_id,
                           seed=seed, kv_budget_tokens=cfg.kv_budget_tokens or None)
    t1 = time.perf_counter()
    texts = [tok.decode(out.tokens[i][out.mask[i]].tolist(), skip_special_tokens=True)
             for i in range(out.tokens.shape[0])]
    expand = lambda xs: [x for x in xs for _ in range(n)]                        # per prompt -> per row
    tasks, answers = expand([s.task for s in samples]), expand([s.answer for s in samples])
    scores = rewards.score_batch(tasks, texts, answers, require_think=cfg.require_think)
    fmt = [rewards.format_ok(t) for t in texts] if cfg.require_think else [True] * len(texts)
    t2 = time.perf_counter()
    rows = Rows(expand(prompt_ids), out.tokens.cpu(), out.mask.cpu(), out.logprobs.float().cpu(),
                scores, tasks, expand([(*label, i) for i in range(len(samples))]),
                out.truncated.cpu().tolist(), fmt)
    return rows, {"rollout_s": t1 - t0, "reward_s": t2 - t1, "gen_tokens": int(out.mask.sum())}


# -----------------------------------------------------------------------------
# Steps 4-6: the global batch, dynamic sampling, advantages

def pick_groups(all_rows: list, need: int, filtering: bool) -> list:
    """Which prompts of a generation round to keep, decided identically on every rank.

    all_rows: every rank's (groups, rewards) lists of this round, in rank order (gathered: small).
    Returns, per rank, the kept row indices.
    A prompt is kept if its rewards are not all equal (or filtering is off), in global order, until
    `need` prompts are kept; the surplus is discarded (SPEC section 5).
    """
    keep = [[] for _ in all_rows]
    for r, (groups, rewards_) in enumerate(all_rows):
        by_group: dict = {}
        for i, g in enumerate(groups):
            by_group.setdefault(g, []).append(i)
        for idx in by_group.values():
            if need <= 0:
                break
            vals = [rewards_[i] for i in idx]
            if filtering and max(vals) == min(vals):
                continue  # zero variance: no learning signal, only noise in the statistics
            keep[r].extend(idx)
            need -= 1
    return keep


def advantages(rewards_: list, groups: list, tasks: list, cfg: Config) -> torch.Tensor:
    """[R_global] advantages of the kept global batch, with the estimator the config names."""
    r = torch.tensor(rewards_, dtype=torch.float64)
    if cfg.advantage == "grpo":
        return grpo.group_advantages(r, groups).float()
    return tmn.tmn_reweight(r, groups, tasks, alpha=cfg.alpha, gamma=cfg.gamma,
                            reweight=cfg.advantage == "tmn_reweight").float()


# -----------------------------------------------------------------------------
# Steps 7-9: training forward, loss, one synced backward, clip, AdamW

def update(net, ddp, optimizer, scheduler, rows: Rows, adv: torch.Tensor, ref, cfg: Config,
           world: int, device, pad_id: int) -> dict:
    """One batch -> cfg.mini_batches optimizer steps. Returns averaged metrics of this rank.

    Token-mean over the *global* mini-batch: every micro-batch divides by the global token count N,
    and the loss is multiplied by the world size because DDP averages gradients (grpo.policy_loss).
    Only the last micro-step of each mini-batch syncs gradients (DDP no_sync on the others).
    """
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext())
    R = len(rows.prompts)
    model = ddp if ddp is not None else net
    # issue 10: the shared-prefix forward runs a group's prompt once; the per-row one G times
    fwd, split = ((policy.forward_logprobs_shared, policy.shared_micro_batches) if cfg.shared_prefix
                  else (policy.forward_logprobs, policy.micro_batches))
    old_lp = None
    # With one optimizer step per batch the policy that made the batch is the one being updated:
    # old = logp.detach() inside the loss, no extra pass. With K > 1, record it once up front.
    if cfg.mini_batches > 1:
        with torch.no_grad(), autocast:
            old_lp = torch.zeros(rows.tokens.shape, device=device)
            for mb in split(rows, list(range(R)), cfg.micro_batch_tokens):
                old_lp[mb] = fwd(net, rows, mb, pad_id, device)
    metrics, n_metrics, skipped = {}, 0, 0
    parts = [list(range(R))[k::cfg.mini_batches] for k in range(cfg.mini_batches)]
    for part in parts:
        n_tok = all_reduce(sum(int(rows.mask[i].sum()) for i in part), device)
        n_seq = all_reduce(sum(bool(rows.mask[i].any()) for i in part), device)
        mbs = split(rows, part, cfg.micro_batch_tokens) or [[]]  # [] = no rows: dummy pass
        bad = 0.0
        for j, mb in enumerate(mbs):
            sync = j == len(mbs) - 1
            with (nullcontext() if sync or ddp is None else ddp.no_sync()), autocast:
                if not mb:  # this rank kept no rows: a zero loss through the model still joins
                    z = torch.zeros(1, dtype=torch.long, device=device)  # DDP's gradient all-reduce
                    lp = model(z[None].repeat(1, 2), z[None].repeat(1, 2), z, z, z)
                    (lp.sum() * 0.0).backward()
                    continue
                lp = fwd(model, rows, mb, pad_id, device)                                 # [b, T] with grad
                mask = rows.mask[mb].to(device)
                old = old_lp[mb] if old_lp is not None else lp.detach()
                is_w = None
                if cfg.rollout_is:
                    is_w, m_is = grpo.rollout_is_weights(old, rows.rollout_lp[mb].to(device), mask)
                loss, m = grpo.policy_loss(lp, old, adv[mb].to(device), mask, cfg.clip_low,
                                           cfg.clip_high, cfg.dual_clip, is_w, cfg.loss_agg,
                                           num_tokens=n_tok, num_seqs=n_seq)
                if ref is not None:  # optional k3 KL to the frozen initial policy, token-mean
                    with torch.no_grad():
                        ref_lp = fwd(ref, rows, mb, pad_id, device)
                    loss = loss + cfg.kl_coef * (grpo.kl_k3(lp, ref_lp) * mask).sum() / max(n_tok, 1)
                bad += float(not torch.isfinite(loss))
                (loss * world).backward()
            for k, v in {**m, **(m_is if cfg.rollout_is else {})}.items():
                metrics[k] = metrics.get(k, 0.0) + v
            n_metrics += 1
        # Step 9. A non-finite loss or gradient on any rank skips the step everywhere, weights untouched.
        norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        bad = all_reduce(bad + float(not torch.isfinite(norm)), device)
        if bad:
            print(f"warning: non-finite loss or gradient (norm {float(norm)}): step skipped", flush=True)
            skipped += 1
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if skipped < len(parts):
        scheduler.step()  # the schedule counts batches that updated the weights
    return {**{k: v / max(n_metrics, 1) for k, v in metrics.items()},
            "grad_norm": float(norm), "skipped_steps": float(skipped)}  # norm of the last mini-batch


def collect_batch(step: int, cfg: Config, batches, sampler, tok, eos_ids, rank: int, device):
    """Steps 1-5: generation rounds until the global batch holds cfg.prompts_per_step prompts with a
    learning signal (or cfg.max_gen_rounds is reached).

    Returns this rank's kept Rows; light records (group, task, reward, length, truncated, format_ok)
    of every generated row and of the kept rows, all ranks, in one global order; the positions of
    this rank's kept rows in that order; and timings.
    """
    need, parts, light_all, kept_light, my_pos = cfg.prompts_per_step, [], [], [], []
    times = {"dropped": 0}
    for rnd in range(cfg.max_gen_rounds if cfg.dynamic_sampling else 1):
        samples = batches.next_batch()                                           # step 1
        ids, samples, counts = data.encode_prompts(samples, tok, cfg.max_prompt_tokens,
                                                   truncate=cfg.truncate_prompts)
        times["dropped"] += counts.get("dropped_too_long", 0)
        seed = hash((cfg.seed, step, rnd, rank)) % 2**31  # reproducible, distinct per rank
        rows, t = (sample_and_score(sampler, tok, samples, ids, cfg, eos_ids, seed, (step, rnd, rank),
                                    cfg.group_size, cfg.temperature, cfg.top_p, cfg.max_new_tokens)
                   if samples else (Rows.cat([]), {}))                           # steps 2-3
        for k, v in t.items():
            times[k] = times.get(k, 0) + v
        light = list(zip(rows.groups, rows.tasks, rows.rewards, rows.mask.sum(1).tolist(),
                         rows.truncated, rows.format_ok))
        all_light = gather(light)                                                # step 4
        keep = pick_groups([([x[0] for x in l], [x[2] for x in l]) for l in all_light],
                           need, cfg.dynamic_sampling)                           # step 5
        for r, idx in enumerate(keep):
            for i in idx:
                if r == rank:
                    my_pos.append(len(kept_light))
                kept_light.append(all_light[r][i])
        parts.append(rows.select(keep[rank]))
        light_all += [x for l in all_light for x in l]
        need = cfg.prompts_per_step - len({x[0] for x in kept_light})
        if need <= 0:
            break
    times["dropped"] = all_reduce(times["dropped"], device)
    if not light_all:
        sys.exit(f"step {step}: no prompt left to generate from ({int(times['dropped'])} dropped as longer "
                 f"than --max-prompt-tokens {cfg.max_prompt_tokens}; try --truncate-prompts)")
    return Rows.cat(parts), light_all, kept_light, my_pos, times


# -----------------------------------------------------------------------------
# Evaluation: one sample per prompt at T=0.6, top_p=0.95 (the paper's validation setting)

def evaluate(model, tok, samples, prompt_ids, cfg: Config, eos_ids, rank: int, world: int) -> dict:
    """Per-task mean score over `samples` (sharded across ranks), as {"eval/<task>": mean}."""
    mine = list(range(rank, len(samples), world))
    scores = []
    if mine:
        rows, _ = sample_and_score(model, tok, [samples[i] for i in mine], [prompt_ids[i] for i in mine],
                                   cfg, eos_ids, cfg.seed + 7919 * (rank + 1), ("eval", rank), 1,
                                   0.6, 0.95, cfg.eval_max_new_tokens or cfg.max_new_tokens)
        scores = list(zip(rows.tasks, rows.rewards))
    by_task: dict = {}
    for part in gather(scores):
        for task, s in part:
            by_task.setdefault(task, []).append(s)
    out = {f"eval/{k}": sum(v) / len(v) for k, v in sorted(by_task.items())}
    out["eval/mean"] = sum(out.values()) / max(len(out), 1)
    return out


# -----------------------------------------------------------------------------
# Metrics of one step (rank 0 writes them to metrics.jsonl)

def step_metrics(light: list, kept_light: list, adv: torch.Tensor, cfg: Config) -> dict:
    """Per-task and overall reward statistics from the gathered per-row records.

    light: (group, task, reward, length, truncated, format_ok) of every generated row, all ranks.
    kept_light: the same for the rows kept for training, in the order of `adv`.
    """
    m: dict = {}
    tasks = sorted({t for _, t, *_ in light})
    for task in tasks + ["all"]:
        rs = [x for x in light if task in ("all", x[1])]
        vals = [x[2] for x in rs]
        mean = sum(vals) / len(vals)
        m[f"reward/{task}/mean"] = mean
        m[f"reward/{task}/std"] = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        groups: dict = {}
        for g, _, r, *_ in rs:
            groups.setdefault(g, []).append(r)
        m[f"zero_var_frac/{task}"] = sum(max(v) == min(v) for v in groups.values()) / len(groups)
        m[f"response_len/{task}"] = sum(x[3] for x in rs) / len(rs)
        m[f"truncated_frac/{task}"] = sum(x[4] for x in rs) / len(rs)
        m[f"format_ok_frac/{task}"] = sum(x[5] for x in rs) / len(rs)
        kept = [i for i, x in enumerate(kept_light) if task in ("all", x[1])]
        if kept:
            k = torch.tensor(kept)
            m[f"pos_adv_frac/{task}"] = float((adv[k] > 0).float().mean())
            r = torch.tensor([kept_light[i][2] for i in kept], dtype=torch.float64)
            g = [kept_light[i][0] for i in kept]
            p = tmn.group_stats(r, g, [kept_light[i][1] for i in kept], cfg.alpha)["pass_rate"]
            m[f"pass_rate/{task}"] = float(p.mean())  # mean over prompts of p_x
    m["difficulty/mean_pass_rate"] = m.pop("pass_rate/all", float("nan"))
    m["kept_prompts"] = len({x[0] for x in kept_light})
    return m


# -----------------------------------------------------------------------------
# The main loop

def load_data(cfg: Config, tok) -> tuple[list, list]:
    """(training samples, evaluation samples): the JSONL files given, or tasks built from the
    built-in documents with the first cfg.eval_per_task of each task type held out."""
    if cfg.data:
        train_set = data.load_jsonl(cfg.data)
        eval_set = []
    else:
        built = data.build_tasks(data.load_documents(), tok, cfg.n_per_task + cfg.eval_per_task,
                                 cfg.context_tokens, cfg.seed)
        held: dict = {}
        train_set, eval_set = [], []
        for s in built:
            held[s.task] = held.get(s.task, 0) + 1
            (eval_set if held[s.task] <= cfg.eval_per_task else train_set).append(s)
    if cfg.eval_data:
        eval_set = data.load_jsonl(cfg.eval_data)
    if not train_set and not cfg.eval_only:
        sys.exit(f"no training samples (data: {cfg.data or 'built-in tasks'}): nothing to train on")
    return train_set, eval_set


def main(argv=None):
    """Train (or evaluate) as the config says; returns the trained Hugging Face model."""
    cfg = parse_config(argv)
    rank, world, device = setup_distributed()
    log = print if rank == 0 else (lambda *a, **k: None)
    log("config: " + json.dumps(dataclasses.asdict(cfg)))
    out_dir = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed + rank)  # sampling seeds below are explicit; this covers the rest
    random.seed(cfg.seed + rank)

    # --- model and tokenizer (rank 0 converts the embedded default once, the others wait) ---------
    from transformers import AutoTokenizer
    if not cfg.model and rank == 0:
        policy.embedded_model_dir()
    if dist.is_initialized():
        dist.barrier()
    base = cfg.model or str(policy.embedded_model_dir())
    ckpt = checkpoint.latest_checkpoint(out_dir) if cfg.resume else None
    if cfg.resume:
        log(f"resuming from {ckpt}" if ckpt else f"--resume: no complete checkpoint in {out_dir}; fresh start")
    tok = AutoTokenizer.from_pretrained(str(ckpt or base), trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = policy.load_model(str(ckpt or base), device, cfg.trust_remote_code, log)
    eos_ids = policy.eos_token_ids(tok, model)
    if cfg.grad_checkpointing:
        model.activation_checkpointing_enable()  # non-reentrant: works under DDP
    model.train()
    # The sampler: on CUDA a bf16 copy of the weights (as verl's vLLM keeps its own), synced after each
    # update; flash-attn kernels need bf16 and the trainer keeps float32 master weights. On CPU the
    # sampler is the model itself. Their numeric mismatch is what the rollout IS weights correct.
    sampler = policy.make_sampler(model) if device.type == "cuda" else model
    ref = None
    if cfg.kl_coef > 0:
        ref_lm = policy.load_model(base, device, cfg.trust_remote_code, log).eval().requires_grad_(False)
        ref = policy.Policy(ref_lm, cfg.temperature, cfg.logprob_chunk)

    # --- data ---------------------------------------------------------------------------------------
    train_set, eval_set = load_data(cfg, tok)
    log(f"data: {len(train_set)} training samples, {len(eval_set)} evaluation samples; "
        f"tasks: {sorted({s.task for s in train_set})}")
    eval_ids, eval_set, _ = data.encode_prompts(eval_set, tok, cfg.max_prompt_tokens,
                                                truncate=cfg.truncate_prompts)
    batches = data.PromptBatches(train_set, cfg.gen_prompts or cfg.prompts_per_step, rank, world,
                                 cfg.seed, balanced=cfg.task_balanced)

    # --- optimizer, schedule, DDP ---------------------------------------------------------------------
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(cfg.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm))
    net = policy.Policy(model, cfg.temperature, cfg.logprob_chunk)
    ddp = None
    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    def run_eval(step):
        m = evaluate(sampler, tok, eval_set, eval_ids, cfg, eos_ids, rank, world)
        log(f"eval at step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
        if rank == 0:
            with open(out_dir / "evals.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **m}) + "\n")
        return m

    state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True) if ckpt else None
    start = state["step"] if state else 0
    if cfg.eval_only:
        run_eval(start)
        return model
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        batches.load_state_dict(state["data"])
        if len(state["rng"]) == world:
            checkpoint.set_rng_state(state["rng"][rank])
    metrics_path = out_dir / "metrics.jsonl"
    if rank == 0:
        old = open(metrics_path).read().splitlines() if metrics_path.exists() and start else []
        with open(metrics_path, "w") as f:  # keep only the steps the checkpoint had seen
            f.writelines(l + "\n" for l in old if json.loads(l).get("step", 0) <= start)

    from tqdm import tqdm
    bar = tqdm(range(start + 1, cfg.steps + 1), disable=rank != 0, desc="train", dynamic_ncols=True)
    for step in bar:
        t_step = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # --- steps 1-5: generate rounds until the batch is full of prompts with a learning signal --
        mine, light_all, kept_light, my_pos, times = collect_batch(step, cfg, batches, sampler, tok,
                                                                   eos_ids, rank, device)
        m = {"step": step, "lr": scheduler.get_last_lr()[0], "dropped_too_long": times.pop("dropped"),
             "generated_prompts": len({x[0] for x in light_all})}
        # --- step 6: advantages over the global kept batch ---------------------------------------
        adv = advantages([x[2] for x in kept_light], [x[0] for x in kept_light],
                         [x[1] for x in kept_light], cfg) if kept_light else torch.zeros(0)
        m.update(step_metrics(light_all, kept_light, adv, cfg))
        # --- steps 7-9: the update ---------------------------------------------------------------
        t_up = time.perf_counter()
        if kept_light:
            # the shared-prefix attention stays selected through backward: checkpointing recomputes
            with policy.shared_prefix_setting(model) if cfg.shared_prefix else nullcontext():
                m.update(update(net, ddp, optimizer, scheduler, mine, adv[my_pos], ref, cfg, world,
                                device, tok.pad_token_id))
            if sampler is not model:
                with torch.no_grad():  # weight sync trainer -> sampler
                    for ps, pm in zip(sampler.parameters(), model.parameters()):
                        ps.copy_(pm)
        else:
            log(f"\nstep {step}: all {m['generated_prompts']} generated prompts had all-equal rewards "
                "(no learning signal); no update this step")
        times["update_s"] = time.perf_counter() - t_up
        train_tokens = all_reduce(sum(len(p) for p in mine.prompts) + int(mine.mask.sum()), device)
        m.update({k: all_reduce(v, device, dist.ReduceOp.MAX) for k, v in times.items() if k.endswith("_s")})
        m["gen_tokens_per_s"] = all_reduce(times.get("gen_tokens", 0), device) / max(m.get("rollout_s", 0), 1e-9)
        m["update_tokens_per_s"] = train_tokens / max(times["update_s"], 1e-9)
        m["step_s"] = time.perf_counter() - t_step
        m["peak_mem_gib"] = (torch.cuda.max_memory_allocated() if device.type == "cuda" else
                             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
        if cfg.eval_every and step % cfg.eval_every == 0:
            m.update(run_eval(step))
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(m) + "\n")
            tasks = sorted(k.split("/")[1] for k in m if k.startswith("reward/") and k.endswith("/mean") and "/all/" not in k)
            bar.set_postfix(reward=f"{m['reward/all/mean']:.3f}", kept=m["kept_prompts"], s=f"{m['step_s']:.0f}")
            bar.write(f"step {step}: reward {m['reward/all/mean']:.3f} | " +
                      " ".join(f"{t[:12]} {m[f'reward/{t}/mean']:.2f}" for t in tasks) +
                      f" | kept {m['kept_prompts']} | clipfrac {m.get('pg_clipfrac', 0):.3f}"
                      f" | rollout {m.get('rollout_s', 0):.1f}s update {m['update_s']:.1f}s")
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
            rngs = gather(checkpoint.rng_state())  # every rank's generators, restored rank by rank
            if rank == 0:
                checkpoint.save_checkpoint(out_dir, step, model, tok, optimizer, scheduler, batches,
                                           cfg.keep_last, rngs)
            if dist.is_initialized():
                dist.barrier()
    if rank == 0:
        log(f"metrics: {metrics_path}; checkpoint: {checkpoint.latest_checkpoint(out_dir)}")
        if cfg.plot:
            checkpoint.plot_rewards(out_dir)
    if dist.is_initialized():
        dist.destroy_process_group()
    return model

if __name__ == "__main__":
    main()
