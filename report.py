"""What a person sees of a run: the metrics of each step (metrics.jsonl, strict JSON lines), the
evaluation's per-task means with their standard errors, the config at start, one console line per
step, the evaluation table, the responses shown (samples.jsonl), the end-of-run summary, the reward
plot and the memory line at start. train.py computes and gathers the numbers; this file turns them
into lines. Nothing here changes the training: skip it when reading the method.

    import report
    report.step_line(m, report.task_order(m_tasks))              # "step 3: reward 0.085 | ret 0.00 ..."
    print(report.run_summary(lines, seconds, Path("runs/default"), plotted=False))
    report.plot_rewards(Path("runs/default"))                     # rewards.png (needs matplotlib)
    python train.py --plot --out-dir runs/default                 # the same from the command line

Functions take plain values: dicts, lists of records, a config read by field name (cfg: a
config.Config). No collectives: train.py all-reduces what every rank contributes and calls these on
rank 0.
"""

import dataclasses
import json
import math
import resource
import sys
from pathlib import Path

import torch

import checkpoint
import data
import memory
import policy
import tmn


# -----------------------------------------------------------------------------
# One training step: rewards per task, pass rates, speed (one line of metrics.jsonl)

def step_metrics(generated: list, kept: list, adv: torch.Tensor, alpha: float) -> dict:
    """Per-task and overall reward statistics from the gathered Records.

    generated: every generated row, all ranks (records with group, task, reward, length, truncated,
    format_ok). kept: the rows kept for training, in the order of `adv`. alpha: TMN-Reweight's mix (the
    pass rate's threshold).
    """
    m: dict = {}
    tasks = sorted({x.task for x in generated})
    for task in tasks + ["all"]:
        rs = [x for x in generated if task in ("all", x.task)]
        vals = [x.reward for x in rs]
        mean = sum(vals) / len(vals)
        m[f"reward/{task}/mean"] = mean
        m[f"reward/{task}/std"] = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        groups: dict = {}
        for x in rs:
            groups.setdefault(x.group, []).append(x.reward)
        m[f"zero_var_frac/{task}"] = sum(max(v) == min(v) for v in groups.values()) / len(groups)
        m[f"response_len/{task}"] = sum(x.length for x in rs) / len(rs)
        m[f"truncated_frac/{task}"] = sum(x.truncated for x in rs) / len(rs)
        m[f"format_ok_frac/{task}"] = sum(x.format_ok for x in rs) / len(rs)
        idx = [i for i, x in enumerate(kept) if task in ("all", x.task)]
        if idx:
            m[f"pos_adv_frac/{task}"] = float((adv[torch.tensor(idx)] > 0).float().mean())
            k = [kept[i] for i in idx]
            r = torch.tensor([x.reward for x in k], dtype=torch.float64)
            p = tmn.group_stats(r, [x.group for x in k], [x.task for x in k], alpha)["pass_rate"]
            m[f"pass_rate/{task}"] = float(p.mean())  # mean over prompts of p_x
    m["difficulty/mean_pass_rate"] = m.pop("pass_rate/all", float("nan"))
    m["kept_prompts"] = len({x.group for x in kept})
    return m


def update_tokens(rows, parts: list, budget: int, shared_prefix: bool) -> tuple[int, int]:
    """(tokens the update's forward actually runs, their per-row equivalent) for this rank's kept rows.
    Per row a prompt counts once per response (what a per-row trainer such as TRL's runs); the
    shared-prefix forward runs it once per packed group or sub-group of a micro-batch.
    rows: data.Rows (prompts, mask); parts: the row indices of each optimizer step, as the
    update splits them; budget: --micro-batch-tokens."""
    idx = list(range(len(rows.prompts)))
    per_row = sum(len(rows.prompts[i]) + int(rows.mask[i].sum()) for i in idx)
    if not shared_prefix:
        return per_row, per_row
    run = 0
    for part in parts:  # the update's own split, micro-batch by micro-batch
        for mb in policy.shared_micro_batches(rows, part, budget):
            run += sum(len(rows.prompts[g[0]]) + sum(int(rows.mask[i].sum()) for i in g)
                       for g in policy.group_rows(rows, mb))
    return run, per_row


def speed_metrics(totals: dict, slowest: dict, device) -> dict:
    """Seconds per phase (slowest rank), tokens per second and peak memory of one step.

    totals: summed over ranks, {"nonfinite_rewards", "gen_tokens", "run_tokens", "row_tokens"};
    slowest: the largest over ranks, {"rollout_s", "reward_s", "update_s"} (train.py all-reduces both).
    update_tokens_per_s counts the tokens the update really runs (a shared prompt once per packed
    group); update_row_tokens_per_s the same work counted per row (the prompt once per response),
    comparable with per-row trainers."""
    rollout_s, update_s = slowest["rollout_s"], slowest["update_s"]
    return {"nonfinite_rewards": totals["nonfinite_rewards"], "rollout_s": rollout_s,
            "reward_s": slowest["reward_s"], "update_s": update_s,
            "gen_tokens_per_s": totals["gen_tokens"] / max(rollout_s, 1e-9),
            "update_tokens_per_s": totals["run_tokens"] / max(update_s, 1e-9),
            "update_row_tokens_per_s": totals["row_tokens"] / max(update_s, 1e-9),
            "peak_mem_gib": (torch.cuda.max_memory_allocated() if device.type == "cuda" else
                             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30}


def json_line(m: dict) -> str:
    """One metrics line, strict JSON: a NaN or infinite number becomes null (bare NaN is not JSON)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def append_jsonl(path: Path, records: list):
    """Append records to a JSON-lines file (metrics.jsonl, samples.jsonl, evals.jsonl), one strict
    JSON line each (json_line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.writelines(json_line(x) for x in records)


# -----------------------------------------------------------------------------
# What the model wrote: responses in samples.jsonl and evals.jsonl, cut to a readable length

SHOWN_CHARS = 2000  # a response longer than this is cut in samples.jsonl and evals.jsonl, its length kept


def shorten(text: str, limit: int = SHOWN_CHARS) -> dict:
    """{"response": text} or, past `limit` characters, its start with a note and the original length."""
    if len(text) <= limit:
        return {"response": text}
    return {"response": text[:limit] + f" [... cut: {len(text)} characters in all]",
            "response_chars": len(text)}


def shorten_responses(shown: dict) -> dict:
    """evaluate's {task: {"id", "response", "score"}} with each response shortened (shorten)."""
    return {t: {**x, **shorten(x["response"])} for t, x in shown.items()}


def responses_to_show(samples: list, texts: list, scores: list, n: int, limit: int, seen: set) -> list:
    """Up to `limit` rows for samples.jsonl: the first response of each task not in `seen` (sample id,
    task, reward, the response cut by shorten). texts, scores: [R], prompt-major, n per prompt."""
    out = []
    for j, s in enumerate(samples):
        if len(out) >= limit:
            break
        if s.task not in seen:
            seen.add(s.task)
            out.append({"id": s.id, "task": s.task, "reward": scores[j * n], **shorten(texts[j * n])})
    return out


# -----------------------------------------------------------------------------
# The console: the config at start, one line per step (rank 0)

# Short labels of the nine tasks in the step line (the README lists them); metrics.jsonl keeps full names.
TASK_LABELS = {"precise_retrieval": "ret", "comprehension": "mcq", "exhaustive_retrieval": "exh",
               "numerical_reasoning": "num", "structured_extraction": "tab", "structured_matching": "match",
               "graded_ranking": "rank", "sequence_ordering": "order", "summarization": "summ"}


def task_order(names) -> list:
    """Task names in the README's order (data.TASK_NAMES), any other name after them."""
    known = [t for t in data.TASK_NAMES if t in names]
    return known + sorted(set(names) - set(known))


def config_text(cfg, defaults, saved_to) -> str:
    """The fields that differ from the defaults as aligned `key = value` lines, and where all are.
    cfg, defaults: the run's config.Config and Config()."""
    diff = {k: v for k, v in dataclasses.asdict(cfg).items() if v != getattr(defaults, k)}
    where = f"all fields in {saved_to}" if saved_to else "all fields: python train.py --help"
    if not diff:
        return f"config: the defaults ({where})"
    w = max(map(len, diff))
    return f"config, fields not at their default ({where}):\n" + "\n".join(
        f"  {k:<{w}} = {v!r}" for k, v in diff.items())


def step_line(m: dict, names: list) -> str:
    """One line per training step: reward overall and per task ("-": not in this step's batch)."""
    per = " ".join(f"{TASK_LABELS.get(t, t)} " + (f"{m[f'reward/{t}/mean']:.2f}" if f"reward/{t}/mean" in m else "-")
                   for t in names)
    return (f"step {m['step']}: reward {m['reward/all/mean']:.3f} | {per} | kept {m['kept_prompts']}"
            f" | clipfrac {m.get('pg_clipfrac', 0):.3f} | rollout {m.get('rollout_s', 0):.1f}s"
            f" update {m['update_s']:.1f}s")


def log_step(bar, m: dict, names: list):
    """One line per step on rank 0 (step_line above), and the progress bar's postfix."""
    bar.set_postfix(reward=f"{m['reward/all/mean']:.3f}", kept=m["kept_prompts"], s=f"{m['step_s']:.0f}")
    bar.write(step_line(m, names))


# -----------------------------------------------------------------------------
# Evaluation: per-task means with their standard errors (evals.jsonl, the table)

def task_scores(prompts: list) -> dict:
    """Per-task mean and standard error from per-prompt scores ([{"task", "scores": [K floats]}]).

    A prompt's score is the mean of its K samples; a task's score the mean over its n prompts, with
    standard error sd / sqrt(n), sd the sample standard deviation (n - 1) of the per-prompt scores: how
    far the mean would move on another draw of prompts and samples (NaN for one prompt: no spread to
    measure). eval/mean is the mean of the task means, so its SE is sqrt(sum of se^2) / tasks."""
    by_task: dict = {}
    for p in prompts:
        by_task.setdefault(p["task"], []).append(sum(p["scores"]) / len(p["scores"]))
    out, se = {}, {}
    for t, xs in sorted(by_task.items()):
        n, mean = len(xs), sum(xs) / len(xs)
        out[f"eval/{t}"] = mean
        se[t] = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n) if n > 1 else float("nan")
    k = max(len(by_task), 1)
    out["eval/mean"] = sum(out.values()) / k
    return {**out, **{f"eval_se/{t}": v for t, v in se.items()},
            "eval_se/mean": math.sqrt(sum(v * v for v in se.values())) / k,
            **{f"eval_n/{t}": len(xs) for t, xs in sorted(by_task.items())}}


def mean_se(v: float, se) -> str:
    """"0.412 ± 0.051": a mean and its standard error ("± n/a" when one prompt leaves no spread)."""
    return f"{v:.3f} ± " + (f"{se:.3f}" if se is not None and math.isfinite(se) else "n/a")


def eval_table(m: dict, samples: int = 1, shown: dict | None = None) -> str:
    """Evaluation result per task as a small table (prompts scored, mean score ± its standard error),
    then one response per task (`shown`: evaluate's first sample of the task's first prompt), cut to
    one line."""
    names = task_order([k.split("/")[1] for k in m if k.startswith("eval_n/")])
    rows = [(t, m[f"eval_n/{t}"], mean_se(m[f"eval/{t}"], m.get(f"eval_se/{t}"))) for t in names]
    rows.append(("mean over tasks", sum(r[1] for r in rows), mean_se(m["eval/mean"], m.get("eval_se/mean"))))
    w = max(len(r[0]) for r in rows)
    per = f"{samples} sample{'s' * (samples > 1)} per prompt"
    lines = [f"  {'task':<{w}}  prompts  score ± standard error ({per})"]
    lines += [f"  {t:<{w}}  {n:>7}  {v}" for t, n, v in rows]
    if shown:
        lines.append("  one response per task (first sample of its first prompt):")
        for t in task_order(shown):
            one = " ".join(shown[t]["response"].split())  # one line
            one = one if len(one) <= 100 else one[:100] + " ..."
            lines.append(f"    {t:<{w}} {shown[t]['score']:.2f} {shown[t]['id']}: {one!r}")
    return "\n".join(lines)



def eval_line(step, m: dict, n_prompts: int, samples: int) -> str:
    """The console line of one evaluation: each task's mean ± standard error, then the mean."""
    return (f"eval at step {step} ({n_prompts} prompts x {samples} samples): " +
            ", ".join(f"{k[5:]} {mean_se(v, m[f'eval_se/{k[5:]}'])}" for k, v in m.items() if k.startswith("eval/")))


def eval_record(step, m: dict, samples: int, prompts: list, shown: dict, weights: str = "") -> dict:
    """One line of evals.jsonl: the metrics, every prompt's sample scores and one response per task
    (shortened); weights names what --eval-only evaluated."""
    return {"step": step, **({"checkpoint": weights} if weights else {}), **m, "eval_samples": samples,
            "prompts": prompts, "responses": shorten_responses(shown)}

# -----------------------------------------------------------------------------
# The reward plot and the end-of-run summary

def require_matplotlib():
    """pyplot on the file-only Agg backend, or exit 1 at once naming the package (before any work)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("--plot needs matplotlib, which is not installed: pip install matplotlib")
    return plt


def reward_curves(lines: list) -> dict:
    """{task: [(step, mean reward), ...]} from metrics.jsonl records; "all" is the whole batch.
    A task appears at the steps where the batch held it, so a rare task may have a single point."""
    curves: dict = {}
    for line in lines:
        for k, v in line.items():
            if k.startswith("reward/") and k.endswith("/mean") and v is not None:  # null: no value that step
                curves.setdefault(k.split("/")[1], []).append((line["step"], v))
    return dict(sorted(curves.items()))


def plot_rewards(out_dir: Path):
    """Per-task mean reward against step, from metrics.jsonl, to out_dir/rewards.png. Every task has
    markers (a task sampled at one step only is one dot, which a line alone would not show) and the
    step axis has integer ticks. Returns the (closed) matplotlib figure."""
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator
    lines = [json.loads(l) for l in open(out_dir / "metrics.jsonl") if l.strip()]
    curves = reward_curves(lines)
    if not curves:
        sys.exit(f"{out_dir / 'metrics.jsonl'}: no training step recorded yet, nothing to plot")
    fig, ax = plt.subplots(figsize=(8, 5))
    for task, pts in curves.items():
        ax.plot(*zip(*pts), label=task, marker="o", ms=3 if task != "all" else 5,
                lw=2.5 if task == "all" else 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("step"), ax.set_ylabel("mean reward"), ax.legend(fontsize=7)
    fig.savefig(out_dir / "rewards.png", dpi=120)
    plt.close(fig)
    print(f"wrote {out_dir / 'rewards.png'}")
    return fig


def run_summary(lines: list, seconds: float, out_dir: Path, plotted: bool) -> str:
    """End of a run: steps, wall time, each task's mean reward over its first vs its last few steps
    (the steps whose batch held the task: k = up to 5, at most half of them; a batch of a few prompts
    leaves most tasks out of most steps; a task seen at one step only is not compared with itself), the
    first and last evaluation with its standard error (--eval-every), and where the metrics, the
    responses, the checkpoint and the plot are."""
    if not lines:
        return "no training step ran"
    span = lambda pts: f"{pts[0][0]}-{pts[-1][0]}" if len(pts) > 1 else f"{pts[0][0]}"
    avg = lambda pts: f"{sum(v for _, v in pts) / len(pts):.3f} (step{'s' * (len(pts) > 1)} {span(pts)})"
    curves = reward_curves(lines)                  # {task: [(step, mean reward), ...]}
    rows = []
    for t in task_order(set(curves) - {"all"}) + ["all"]:
        pts, k = curves.get(t, []), max(1, min(5, len(curves.get(t, [])) // 2))
        if not pts or len(lines) == 1:  # a one-step run: its header says there is no comparison
            rows.append((t, avg(pts) if pts else "-"))
        else:
            rows.append((t, f"{avg(pts)}, one step: no comparison" if len(pts) == 1
                         else f"{avg(pts[:k])} -> {avg(pts[-k:])}"))
    w = max(len(t) for t, _ in rows)
    # --eval-every: the first and the last evaluation, each with its noise
    evals = [f"{mean_se(l['eval/mean'], l.get('eval_se/mean'))} (step {l['step']})"
             for l in lines if l.get("eval/mean") is not None]
    ev = evals[:1] + evals[1:][-1:]
    ckpt = checkpoint.latest_checkpoint(out_dir)
    size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) / 1e9 if ckpt else 0
    return "\n".join(
        [f"done: steps {span([(l['step'],) for l in lines])} in {round(seconds) // 60} min {round(seconds) % 60} s",
         "  mean reward per task (one step: no comparison):" if len(lines) == 1 else
         "  mean reward per task, its first -> its last (up to 5) steps:"] +
        [f"    {t:<{w}} {TASK_LABELS.get(t, ''):>5}  {r}" for t, r in rows] +
        (["  evaluation, mean over tasks ± standard error: " + (" -> ".join(ev) if len(ev) > 1 else
                                                                 f"{ev[0]}, one evaluation: no comparison")]
         if ev else []) +
        [f"  metrics:    {out_dir / 'metrics.jsonl'}",
         *([f"  responses:  {out_dir / 'samples.jsonl'}"] if (out_dir / "samples.jsonl").exists() else []),
         f"  checkpoint: {ckpt} ({size:.2f} GB)" if ckpt else "  checkpoint: none",
         f"  plot:       {out_dir / 'rewards.png'}" if plotted else
         f"  plot:       python train.py --plot --out-dir {out_dir}   (needs matplotlib)"])


def finish_run(cfg, start: int, seconds: float, log):
    """Rank 0, after the last step: the plot (--plot) and the end-of-run summary."""
    out_dir = Path(cfg.out_dir)
    if cfg.plot:
        plot_rewards(out_dir)
    path = out_dir / "metrics.jsonl"
    lines = [json.loads(l) for l in open(path)] if path.exists() else []
    log(run_summary(lines[-(cfg.steps - start):] if cfg.steps > start else [], seconds, out_dir, cfg.plot))


# -----------------------------------------------------------------------------
# Memory at start-up: the estimate per GPU (memory.py)

def log_memory(model, cfg, world: int, device, log, fsdp: bool):
    """The start-up memory line (memory.py's arithmetic): under fsdp (the run shards over several
    processes) its share per GPU; else, on CUDA, the ddp estimate against the GPU's memory, so a run
    that cannot fit is visible before any GPU time is spent."""
    n_params = sum(p.numel() for p in model.parameters())
    if fsdp:  # fsdp's states are sharded: its share per GPU
        gb = memory.gb_per_gpu(n_params, "fsdp", world, accumulate=True)
        log("memory per GPU under fsdp (GB, before activations and rollout KV): " +
            ", ".join(f"{k} {v:.1f}" for k, v in gb.items()))
        return
    if device.type != "cuda":
        return
    kv = memory.wave_kv_positions(cfg, world)
    m = memory.memory_estimate(n_params, model.config, kv)
    have = torch.cuda.get_device_properties(device).total_memory
    gib = lambda b: f"{b / 2**30:.1f}"
    log(f"memory estimate per GPU (GiB, activations not included): weights {gib(m['weights'])} + grads "
        f"{gib(m['grads'])} + AdamW {gib(m['adamw'])} + bf16 sampler {gib(m['sampler'])} + rollout KV "
        f"{gib(m['rollout_kv'])} ({kv:,} positions per wave) = {gib(m['total'])} of {gib(have)}")
    if m["total"] > have:
        log("warning: this does not fit on one GPU under DDP; lower --kv-budget-tokens, --max-new-tokens, "
            "--group-size or --max-prompt-tokens, or use a smaller model (README: Memory)")
