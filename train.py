"""GoLongRL training: GRPO with TMN-Reweight on long-context tasks, one step read top to bottom.

    python train.py                        # embedded default: SmolLM2-135M + built-in tasks, CPU, offline
    python train.py --help                 # every config field (config.py)
    torchrun --nproc_per_node=8 train.py --recipe paper --shard fsdp \\
        --model Qwen/Qwen3-4B-Thinking-2507 --data golongrl.jsonl          # the paper's recipe on a node

One training step (the paper's recipe), as main() runs it:
  1. this rank's share of the step's prompts                     data.PromptBatches
  2. n samples per prompt, each prompt prefilled once (no grad)   rollout.generate
  3. each response scored by its task's natural metric            rewards.score_batch
  4. all-gather rewards, prompt ids and task ids: every statistic below uses the global batch
  5. dynamic sampling: drop prompts whose n rewards are all equal, generate more until full
  6. advantages: TMN-Reweight (tmn.py), TMN, or plain GRPO (grpo.py)
  7. training forward: log-probs of the response tokens only      grpo.token_logprobs
     and rollout importance weights (trainer vs sampler numerics) grpo.rollout_is_weights
  8. clipped policy loss, token-mean over the global batch        grpo.policy_loss
  9. gradient clipping, AdamW with linear warmup; a step with a non-finite loss or gradient is skipped
Steps 1-5 are collect_batch, 6 advantages, 7-9 update (one screen: forward, loss, backward per
micro-batch, then clip and step). The machinery around them is in harness.py (processes, loading,
resume, save), config.py (the flags) and report.py (what is printed and written).

How this differs from the paper's released code (a verl fork): plain torch DDP (default) or torch's
FSDP2 (--shard fsdp: weights, gradients and AdamW states sharded across GPUs) replaces verl's FSDP,
with no sequence parallelism (README: Memory); generation is our own loop (rollout.py), not vLLM;
the trainer keeps float32 master weights and runs bf16 autocast on CUDA.
"""

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

import attention
import checkpoint
import data
import grpo
import harness
import interrupt
import policy
import report
import rewards
import rollout
import tmn
from config import Config, parse_config
from data import Record, Rows
from harness import Run, all_reduce_list, gather, seconds_since


# -----------------------------------------------------------------------------
# Steps 2-3: sample n responses per prompt and score them (this rank's prompts only), as data.Rows

class Sampling(NamedTuple):
    """How to sample: training uses the config's settings, evaluation the paper's validation ones."""
    n: int              # samples per prompt
    temperature: float
    top_p: float
    max_new_tokens: int


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


def sample_and_score(run: Run, samples: list, prompt_ids: list, how: Sampling, seed: int,
                     label: tuple) -> tuple[Rows, dict]:
    """rollout.generate on this rank's prompts with run.sampler, then rewards.score_batch on the
    decoded text. label: prefix of the rows' group labels. Returns the rows and this call's seconds,
    generated tokens and decoded responses ([R] texts)."""
    cfg, tok, n = run.cfg, run.tok, how.n
    t0 = time.perf_counter()
    out = rollout.generate(run.sampler, prompt_ids, n, how.max_new_tokens, temperature=how.temperature,
                           top_p=how.top_p, top_k=cfg.top_k, eos_token_ids=run.eos_ids,
                           pad_token_id=tok.pad_token_id, seed=seed,
                           kv_budget_tokens=cfg.kv_budget_tokens or None, attention=cfg.attention)
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
                scores, tasks, expand([(*label, i) for i in range(len(samples))]), out.truncated.cpu().tolist(), fmt)
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


def collect_batch(run: Run, step: int, batches: data.PromptBatches) -> Batch:
    """Steps 1-5: generation rounds until the global batch holds cfg.prompts_per_step prompts with a
    learning signal (or cfg.max_gen_rounds is reached)."""
    cfg, rank = run.cfg, run.rank
    how = Sampling(cfg.group_size, cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    b = Batch(Rows.cat([]), [], [], [], 0, 0, {"rollout_s": 0.0, "reward_s": 0.0})
    need, parts = cfg.prompts_per_step, []
    for rnd in range(cfg.max_gen_rounds if cfg.dynamic_sampling else 1):
        samples = batches.next_batch()                                           # step 1
        # every prompt fits: too-long ones were dropped at load (usable_prompts); truncation may apply
        ids, samples, _ = data.encode_prompts(samples, run.tok, cfg.max_prompt_tokens, truncate=cfg.truncate_prompts)
        seed = hash((cfg.seed, step, rnd, rank)) % 2**31  # reproducible, distinct per rank
        rows = Rows.cat([])
        if samples:                                                              # steps 2-3
            rows, t = sample_and_score(run, samples, ids, how, seed, (step, rnd, rank))
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

def logprobs(run: Run, rows: Rows, mb: list, through: nn.Module = None) -> torch.Tensor:
    """[b, T] log-probs of the response tokens of rows `mb` under run.policy (or `through`: the frozen
    reference, or the policy outside its DDP wrapper). --shared-prefix packs each group as [prompt, r_1, ..., r_G], its prompt run once;
    the per-row forward runs it G times and stays as the reference (equal to 1e-5, test_policy.py)."""
    through = run.policy if through is None else through
    if run.cfg.shared_prefix:
        return policy.forward_logprobs_shared(through, rows, mb, run.tok.pad_token_id, run.device, run.cfg.attention)
    return policy.forward_logprobs(through, rows, mb, run.tok.pad_token_id, run.device)


def micro_batches(run: Run, rows: Rows, part: list) -> list:
    """The rows `part` split into micro-batches of at most --micro-batch-tokens tokens ([[]]: no rows,
    one zero pass), as many on every rank (under fsdp each forward is a collective)."""
    split = policy.shared_micro_batches if run.cfg.shared_prefix else policy.micro_batches
    mbs = split(rows, part, run.cfg.micro_batch_tokens)
    if run.cfg.shared_prefix and (note := policy.split_note(rows, part, mbs, run.cfg.micro_batch_tokens)):
        attention.say_once("split groups", note)  # a memory bound, not an error, but it costs prompt work
    return policy.even_micro_batches(mbs or [[]], run.policy, run.device)


def old_logprobs(run: Run, rows: Rows):
    """[R, T] log-probs under the policy before this batch's first optimizer step, or None.

    With one optimizer step per batch (the paper's mini_batches=1) the policy that is updated *is*
    the one that scored the batch, so the loss uses old = logp.detach(): the ratio is exactly 1, the
    PPO clip never triggers, and no extra forward is spent. With K > 1 mini-batches the later ones are
    off-policy: record the old log-probs once, up front.
    """
    if run.cfg.mini_batches == 1:
        return None
    old_lp = torch.zeros(rows.tokens.shape, device=run.device)
    with torch.no_grad(), run.autocast():
        for mb in micro_batches(run, rows, list(range(len(rows.prompts)))):
            if mb:
                old_lp[mb] = logprobs(run, rows, mb, policy.unwrap(run.policy))
            else:
                policy.dummy_logprobs(run.policy, run.device)
    return old_lp


def dummy_backward(run: Run):
    """A zero loss through the whole model, for a rank that kept no rows in this mini-batch (or,
    under fsdp, fewer micro-batches than another rank).

    DDP all-reduces gradients *inside* backward, bucket by bucket, and FSDP2 all-gathers each layer
    in forward and backward; every rank must take part in each collective, or the others wait
    forever. Its gradients are zero, so it adds nothing to the sum."""
    (policy.dummy_logprobs(run.policy, run.device).sum() * 0.0).backward()   # one 2-token row


def kl_penalty(run: Run, rows: Rows, mb: list, lp: torch.Tensor, n_tok: float) -> torch.Tensor:
    """--kl-coef: k3 KL to the frozen initial policy, a share of the global token mean (off in the paper)."""
    with torch.no_grad():
        ref_lp = logprobs(run, rows, mb, run.ref)
    mask = rows.mask[mb].to(run.device)
    return run.cfg.kl_coef * (grpo.kl_k3(lp, ref_lp) * mask).sum() / max(n_tok, 1)


def optimizer_step(run: Run, bad: float) -> tuple[float, bool]:
    """Step 9: clip the global gradient norm, then AdamW, on every rank or on none.

    The guard: a NaN / inf loss (`bad`: this rank's count) or gradient norm on any rank skips the
    step on all of them, weights and AdamW state untouched. Finite gradients cannot make a weight
    non-finite: AdamW moves it by less than 7.3 x lr per step, and config.py refuses --lr above 1
    (config.MAX_LR). Returns (gradient norm, skipped)."""
    norm = policy.clip_grad_norm(run.model.parameters(), run.cfg.grad_clip)  # global norm, also when sharded
    bad = all_reduce_list([bad + float(not torch.isfinite(norm))], run.device, dist.ReduceOp.MAX)[0]
    if bad:  # every rank sees the same `bad` (the all-reduce): all skip together
        print(f"warning: non-finite loss or gradient (norm {float(norm)}): step skipped", flush=True)
    else:
        run.optimizer.step()
    run.state_bytes = policy.local_state_bytes(run.model, run.optimizer)  # before the grads are freed
    # DDP: keep the gradients (zeroed) in its all-reduce buckets; freed, the next no_sync micro-batch
    # would allocate them outside the buckets, a second copy of the gradients during accumulation
    run.optimizer.zero_grad(set_to_none=not isinstance(run.policy, nn.parallel.DistributedDataParallel))
    return float(norm), bool(bad)


def mini_batch_parts(rows: Rows, cfg: Config) -> list:
    """The row indices of each of the batch's cfg.mini_batches optimizer steps (rows k, k+K, ...)."""
    return [list(range(len(rows.prompts)))[k::cfg.mini_batches] for k in range(cfg.mini_batches)]


def update(run: Run, rows: Rows, adv: torch.Tensor) -> dict:
    """Steps 7-9 on this rank's kept rows: one batch -> cfg.mini_batches optimizer steps. Call inside
    attention.setting(run.model). Returns this rank's metrics, averaged over its micro-batches."""
    cfg, dev = run.cfg, run.device
    old_lp = old_logprobs(run, rows)          # [R, T], or None: one mini-batch, ratio exactly 1
    sums, n_mb, skipped = {}, 0, 0
    for part in mini_batch_parts(rows, cfg):
        # the loss is a token mean over the GLOBAL mini-batch: every micro-batch divides by its
        # token and sequence counts (grpo.policy_loss), summed over all ranks
        n_tok, n_seq = all_reduce_list([sum(int(rows.mask[i].sum()) for i in part),
                                        sum(bool(rows.mask[i].any()) for i in part)], dev)
        mbs, bad = micro_batches(run, rows, part), 0.0
        for j, mb in enumerate(mbs):
            # gradients are all-reduced in the last micro-batch's backward only
            with policy.grad_sync(run.policy, j == len(mbs) - 1), run.autocast():
                if not mb:  # this rank has no rows here: a zero pass keeps the collectives in step
                    dummy_backward(run)
                    continue
                lp = logprobs(run, rows, mb)                                        # [b, T], with grad
                mask = rows.mask[mb].to(dev)
                old = old_lp[mb] if old_lp is not None else lp.detach()
                is_w, m_is = (grpo.rollout_is_weights(old, rows.rollout_lp[mb].to(dev), mask)
                              if cfg.rollout_is else (None, {}))                    # sampler vs trainer
                loss, m = grpo.policy_loss(lp, old, adv[mb].to(dev), mask, cfg.clip_low, cfg.clip_high,
                                           cfg.dual_clip, is_w, cfg.loss_agg, num_tokens=n_tok, num_seqs=n_seq)
                if run.ref is not None:
                    loss = loss + kl_penalty(run, rows, mb, lp, n_tok)
                bad += float(not torch.isfinite(loss))
                (loss * run.world).backward()  # DDP averages gradients over ranks; we want their sum
            for k, v in {**m, **m_is}.items():
                sums[k] = sums.get(k, 0.0) + v
            n_mb += 1
        norm, was_skipped = optimizer_step(run, bad)                            # clip, AdamW
        skipped += was_skipped
    if skipped < cfg.mini_batches:
        run.scheduler.step()  # the schedule counts batches that updated the weights
    return {**{k: v / max(n_mb, 1) for k, v in sums.items()}, "grad_norm": norm,  # of the last mini-batch
            "skipped_steps": float(skipped), "state_gib": run.state_bytes / 2**30}


def speed_metrics(run: Run, batch: Batch, update_s: float) -> dict:
    """report.speed_metrics over the global step: tokens summed over ranks, seconds of the slowest.
    Two collectives with fixed-length lists, the same on every rank whatever its data."""
    cfg, mine = run.cfg, batch.mine
    run_tok, row_tok = report.update_tokens(mine, mini_batch_parts(mine, cfg), cfg.micro_batch_tokens,
                                            cfg.shared_prefix)
    totals = all_reduce_list([batch.nonfinite, batch.gen_tokens, run_tok, row_tok], run.device)
    slowest = all_reduce_list([batch.times["rollout_s"], batch.times["reward_s"], update_s], run.device,
                              dist.ReduceOp.MAX)
    return report.speed_metrics(dict(zip(["nonfinite_rewards", "gen_tokens", "run_tokens", "row_tokens"], totals)),
                                dict(zip(["rollout_s", "reward_s", "update_s"], slowest)), run.device)


# -----------------------------------------------------------------------------
# Evaluation: cfg.eval_samples samples per prompt at T=0.6, top_p=0.95 (the paper's validation setting)

EVAL_SEED_STRIDE = 7919  # a prime: rank r samples with seed + 7919*(r+1) (+ chunk offset), apart from training seeds


def evaluate(run: Run, samples: list, prompt_ids: list) -> tuple[dict, list, dict]:
    """Score `samples` (sharded across ranks) with cfg.eval_samples samples each. Returns
    (report.task_scores' metrics, per-prompt scores [{"id", "task", "scores": [K]}] in sample order,
    and per task one response {"id", "response", "score"}: the first sample of its first prompt).
    Generated in chunks of about as many rows as a training round, so the progress bar moves."""
    from tqdm import tqdm
    cfg, rank, world, k = run.cfg, run.rank, run.world, run.cfg.eval_samples
    how = Sampling(k, 0.6, 0.95, cfg.eval_max_new_tokens or cfg.max_new_tokens)
    mine = list(range(rank, len(samples), world))
    chunk = max(1, (cfg.gen_prompts or cfg.prompts_per_step) * cfg.group_size // (world * k))  # prompts
    bar = tqdm(total=len(samples), desc="eval", unit="prompt", disable=rank != 0, leave=cfg.eval_only,
               dynamic_ncols=True)
    prompts, first = [], {}  # first: task -> (sample index, its first response) on this rank
    for c in range(0, len(mine), chunk):
        idx = mine[c:c + chunk]
        seed = cfg.seed + EVAL_SEED_STRIDE * (rank + 1) + c  # + c: each chunk its own stream
        rows, t = sample_and_score(run, [samples[i] for i in idx], [prompt_ids[i] for i in idx], how, seed,
                                   ("eval", rank, c))
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


def evaluate_and_log(run: Run, step, eval_set: list, eval_ids: list, weights: str = "") -> tuple[dict, dict]:
    """evaluate(), one log line (mean +- standard error), and one line in out_dir/evals.jsonl (rank 0).
    Returns (metrics, the responses). weights: what --eval-only evaluated, named in the line."""
    m, prompts, shown = evaluate(run, eval_set, eval_ids)
    run.log(report.eval_line(step, m, len(prompts), run.cfg.eval_samples))
    if run.rank == 0:
        report.append_jsonl(Path(run.cfg.out_dir) / "evals.jsonl",
                            [report.eval_record(step, m, run.cfg.eval_samples, prompts, shown, weights)])
    return m, shown


# -----------------------------------------------------------------------------
# The main loop

def main(argv=None):
    """Train (or evaluate, or only plot) as the config says; returns the Hugging Face model."""
    cfg = parse_config(argv, __doc__)
    # CUDA's caching allocator: expandable segments reuse freed blocks across phases of different shapes
    # instead of fragmenting (set before the first CUDA allocation; a value the user set wins)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    rank, world, device = harness.setup_distributed(cfg)
    harness.reuse_freed_memory(device)  # CPU: freed activations stay for reuse, no fresh pages to fault in
    log = print if rank == 0 else (lambda *a, **k: None)
    harness.quiet_other_ranks(rank)
    run = Run(harness.resolve_precision(cfg, device), rank, world, device, log)
    cfg, out_dir, t_start = run.cfg, Path(run.cfg.out_dir), time.perf_counter()
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

    files = harness.read_data_files(cfg)  # before the model: a bad record costs seconds, not a model load
    ckpt = checkpoint.weights_to_load(cfg, out_dir, log)
    run.tok, run.model, run.sampler, run.ref, run.eos_ids = harness.load_policy(run, ckpt)
    train_set, dropped, eval_set, eval_ids = harness.prepare_data(run, files)
    if cfg.eval_only:  # score the loaded weights once and print the table; no optimizer or DDP
        if not eval_set:
            sys.exit("--eval-only: no evaluation samples left (all longer than --max-prompt-tokens?)")
        weights = str(ckpt or cfg.model or policy.embedded_model_dir())
        m, shown = evaluate_and_log(run, checkpoint.checkpoint_step(ckpt), eval_set, eval_ids, weights)
        log(report.eval_table(m, cfg.eval_samples, shown))
        return run.model
    batches = harness.prompt_batches(run, train_set)
    run.policy, run.optimizer, run.scheduler = harness.make_optimizer(run)
    report.log_memory(run.model, cfg, world, device, log, harness.sharded(cfg))
    harness.check_disk(run)
    aside = checkpoint.start_run(cfg, out_dir, rank, log)  # all checks passed: the run starts here
    start = harness.resume_state(run, ckpt, batches)
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
        lr = run.scheduler.get_last_lr()[0]
        batch = collect_batch(run, step, batches)                                    # steps 1-5
        adv = advantages(batch.kept, cfg)                                            # step 6
        m = {"step": step, "lr": lr, "dropped_too_long": dropped,
             "generated_prompts": len({x.group for x in batch.generated}),
             **report.step_metrics(batch.generated, batch.kept, adv, cfg.alpha)}
        t_update = time.perf_counter()
        if batch.kept:  # else no rank has rows, and no rank calls a collective in update
            # our attention stays selected through backward: checkpointing recomputes each layer then
            with attention.setting(run.model):
                m.update(update(run, batch.mine, adv[batch.my_pos]))                 # steps 7-9
            if run.sampler is not run.model:  # the sampler takes the new weights (a copy: bf16, fsdp)
                policy.sync_sampler(run.sampler, run.model)
        else:
            log(f"\nstep {step}: all {m['generated_prompts']} generated prompts had all-equal rewards "
                "(no learning signal); no update this step")
        m.update(speed_metrics(run, batch, seconds_since(t_update, device)))
        m["step_s"] = seconds_since(t_step, device)
        if cfg.eval_every and step % cfg.eval_every == 0:
            m.update(evaluate_and_log(run, step, eval_set, eval_ids)[0])
        if rank == 0:
            report.append_jsonl(metrics_path, [m])  # NaN / inf -> null: strict JSON
            report.log_step(bar, m, names)
            if batch.shown:  # what the model wrote (rank 0's own prompts)
                report.append_jsonl(out_dir / "samples.jsonl", [{"step": step, **x} for x in batch.shown])
        # one fixed all-reduce per step on every rank: all see the same signal and the same save clock
        signum, late = all_reduce_list([stop.signum, clock.due()], device, dist.ReduceOp.MAX)
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or late or signum:
            harness.save_step(run, step, batches)
            clock.saved()
            checkpoint.drop_aside(aside if rank == 0 else None, step, log)
            aside = None
        if signum and step < cfg.steps:
            stop.restore()
            harness.stop_run(run, int(signum), step, argv)
    stop.restore()
    if rank == 0:
        report.finish_run(cfg, start, time.perf_counter() - t_start, log)
    if dist.is_initialized():
        dist.destroy_process_group()
    return run.model


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C outside the training loop, which handles it itself
        print("\ninterrupted (Ctrl-C) outside the training steps; checkpoints saved so far are intact",
              file=sys.stderr)
        sys.exit(130)
