"""Does training help? The learning evidence behind the README's "Does training help?" section,
run through bench.py (which owns the command line):

    python bench.py --only learn          # the whole loop on an easy exact-match task (~6 min)
    python bench.py --only learn-tasks    # held-out gains on the built tasks: GRPO, TMN, TMN-Reweight (~35 min)

Both run train.py itself, as a user would, and score what it wrote.
"""

import time

# -----------------------------------------------------------------------------
# learn: does the whole loop learn? The embedded SmolLM2 on an easy exact-match task

WORDS = ["apple", "river", "candle", "forest", "silver", "rocket", "garden", "pepper", "marble",
         "violin", "harbor", "meadow", "lantern", "copper", "falcon", "saddle"]


def bench_learn(args):
    """python train.py on an easy task (reply with one given word, scored by exact match) for a few
    dozen steps; prints the mean reward of the first and last five steps. SmolLM2-Instruct answers
    right part of the time ("Apple.", "Sure! apple" score 0): the signal GRPO needs."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    import data
    import train
    out = Path(tempfile.mkdtemp(prefix="golongrl-learn-"))
    samples = [data.Sample(id=f"word-{w}", task="precise_retrieval", source="EM",
                           prompt=[{"role": "user", "content": f"Reply with exactly one word, in lowercase "
                                    f"and with no punctuation: {w}"}], answer=w, meta={})
               for w in WORDS]
    data.save_jsonl(samples, out / "words.jsonl")
    steps = args.learn_steps
    train.main(["--data", str(out / "words.jsonl"), "--out-dir", str(out), "--steps", str(steps),
                "--group-size", "8", "--prompts-per-step", "4", "--max-new-tokens", "12",
                "--lr", "2e-5", "--no-grad-checkpointing", "--max-gen-rounds", "1"])
    r = [json.loads(l)["reward/all/mean"] for l in open(out / "metrics.jsonl")]
    first, last = sum(r[:5]) / 5, sum(r[-5:]) / 5
    print(f"learn: {steps} steps, mean reward of steps 1-5 {first:.3f} -> steps {steps - 4}-{steps} {last:.3f}")
    print("per-step reward: " + " ".join(f"{x:.2f}" for x in r))
    shutil.rmtree(out)  # its checkpoints


# -----------------------------------------------------------------------------
# learn-tasks: held-out gains on the built tasks, with GRPO, TMN and TMN-Reweight side by side

LEARN_CONTEXT = 400     # tokens per built prompt (tasks.py's smallest context): 135M on 2 cores
LEARN_NEW = 48          # tokens per response, as the default run
LEARN_T = 0.6           # training and eval temperature: at 1.0 the 135M model writes noise (see README)
LEARN_LR = 1e-5         # chosen by the sweep in the README
LEARN_MIN_PROMPTS = 4   # a task is trained only if this many of its pool prompts have varied rewards


def paired(after: dict, before: dict, ids: list) -> tuple[float, float]:
    """Mean and standard error of after[i] - before[i] over prompts i (each a mean of K samples): the same
    prompts scored twice, so prompt difficulty cancels and the SE is the difference's own spread."""
    return mean_se([after[i] - before[i] for i in ids])


def mean_se(xs: list) -> tuple[float, float]:
    """Mean and standard error sd / sqrt(n) (sample sd, n - 1), as report.task_scores; NaN SE for n = 1."""
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) ** 0.5 if len(xs) > 1 else float("nan")


def bench_learn_tasks(args):
    """The built tasks, the embedded SmolLM2-135M, three advantage estimators, one held-out set.

    1. Build a pool of prompts of all nine task types; sample each 8 times with the base model and keep
       the prompts whose rewards vary (no variance, no GRPO signal). A task keeps its place only if at
       least LEARN_MIN_PROMPTS of its prompts vary; the others are named as beyond the model at this scale.
    2. Build a held-out set of those tasks with a seed of its own (no training prompt in it); score the
       base model on it: eval samples per prompt at T = 0.6.
    3. For each --learn-arms estimator and --learn-lrs learning rate: `python train.py` on the kept prompts,
       task-balanced (the same number of each task's prompts in every step), G = 8; then the held-out set.
    4. Print, per task, the base score, each arm's score and its paired gain over the base (mean +- SE over
       prompts), and whether the gain exceeds 2 SE. Every run's folder stays on disk for a look; a rerun
       in the same --learn-dir reuses the filter and every finished run whose arguments and data match."""
    import hashlib
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from transformers import AutoTokenizer

    import data
    import policy
    import tasks

    out = Path(args.learn_dir or tempfile.mkdtemp(prefix="golongrl-learn-tasks-"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = str(policy.embedded_model_dir())
    tok = AutoTokenizer.from_pretrained(model_dir)
    docs = tasks.load_documents()
    t0 = time.perf_counter()
    print(f"learn-tasks: runs in {out}; SmolLM2-135M, {LEARN_CONTEXT}-token prompts, {LEARN_NEW} new tokens, "
          f"T = {LEARN_T}")

    # 1. the reward-variance filter over a pool of every task type
    pool = tasks.build_tasks(docs, tok, args.learn_pool, LEARN_CONTEXT, seed=0)
    cache = out / "filter.json"  # {prompt id: its 8 rewards}: a rerun in the same --learn-dir skips this
    known = json.loads(cache.read_text()) if cache.exists() else {}
    how = f"reused from {cache}"
    if sorted(known) != sorted(s.id for s in pool):
        how = "sampled"
        known = dict(zip([s.id for s in pool], tasks.measure_rewards(pool, model_dir, n=8, max_new_tokens=LEARN_NEW,
                                                                    temperature=LEARN_T)))
        cache.write_text(json.dumps(known))
    rewards_of = [known[s.id] for s in pool]
    varied = [s for s, r in zip(pool, rewards_of) if max(r) > min(r)]
    print(f"filter: {len(pool)} prompts x 8 samples, {how}, {time.perf_counter() - t0:.0f} s; per task: prompts "
          "with varied rewards / with any reward / pool, mean reward")
    trained = []
    for task in data.TASK_NAMES:
        rs = [r for s, r in zip(pool, rewards_of) if s.task == task]
        n_var = sum(s.task == task for s in varied)
        verdict = "trained" if n_var >= LEARN_MIN_PROMPTS else "too hard for this model at this scale: not trained"
        print(f"  {task:22s} {n_var:3d} / {sum(max(r) > 0 for r in rs):3d} / {len(rs):3d}   "
              f"{sum(map(sum, rs)) / (8 * len(rs)):.3f}   {verdict}")
        if n_var >= LEARN_MIN_PROMPTS:
            trained.append(task)
    if not trained:
        print("no task has enough prompts with varied rewards: nothing to train")
        return
    train_set = [s for s in varied if s.task in trained]
    data.save_jsonl(train_set, out / "train.jsonl")
    show_advantages(train_set, [known[s.id] for s in train_set])

    # 2. the held-out set: the same task types, its own seed; any prompt text seen in training is dropped
    seen = {json.dumps(s.prompt) for s in pool}
    held = [s for s in tasks.build_tasks(docs, tok, args.learn_eval_per_task, LEARN_CONTEXT, seed="learn-heldout",
                                         tasks=trained) if json.dumps(s.prompt) not in seen]
    print(f"held-out: {len(held)} prompts ({args.learn_eval_per_task} per task, "
          f"{args.learn_eval_per_task * len(trained) - len(held)} dropped as seen in the pool) x "
          f"{args.learn_eval_samples} samples")
    data.save_jsonl(held, out / "heldout.jsonl")

    steps = args.learn_tasks_steps
    per_step = args.learn_prompts_per_task * len(trained)
    data_hash = hashlib.sha256((out / "train.jsonl").read_bytes() + (out / "heldout.jsonl").read_bytes()).hexdigest()
    common = ["--data", str(out / "train.jsonl"), "--eval-data", str(out / "heldout.jsonl"), "--group-size", "8",
              "--prompts-per-step", str(per_step),  # also the eval's chunk: as many rows as a training round
              "--eval-samples", str(args.learn_eval_samples), "--max-new-tokens", str(LEARN_NEW),
              "--temperature", str(LEARN_T), "--seed", "0"]

    def run(name, extra):  # -> (the last evals.jsonl line of out/name, seconds); its output in out/name.log
        argv = [*common, "--out-dir", str(out / name), *extra]
        key = [argv, data_hash]  # written after a run finishes: a rerun with the same arguments and data reuses it
        done = out / f"{name}.argv.json"
        if done.exists() and json.loads(done.read_text()) == key:
            print(f"{name}: reusing the finished run in {out / name} (same arguments)")
            return json.loads((out / name / "evals.jsonl").read_text().splitlines()[-1]), 0.0
        t = time.perf_counter()
        with open(out / f"{name}.log", "w") as f:
            subprocess.run([sys.executable, "train.py", *argv, "--overwrite"], stdout=f, stderr=subprocess.STDOUT,
                           check=True, cwd=Path(__file__).parent)
        done.write_text(json.dumps(key))
        return json.loads((out / name / "evals.jsonl").read_text().splitlines()[-1]), time.perf_counter() - t

    base, secs = run("base", ["--eval-only"])
    print(f"base model on the held-out set: {secs:.0f} s")
    results = {}
    for lr in args.learn_lrs:
        for arm in args.learn_arms:
            name = f"{arm}-lr{lr:g}"
            results[name], secs = run(name, [
                "--advantage", arm, "--lr", f"{lr:g}", "--steps", str(steps), "--eval-every", str(steps),
                "--task-balanced", "--max-gen-rounds", "1", "--warmup-steps", "0", "--save-every", str(steps),
                "--no-grad-checkpointing"])  # one generation round and one save per run: time goes to steps
            train_r = [json.loads(l)["reward/all/mean"] for l in open(out / name / "metrics.jsonl")]
            k = max(1, len(train_r) // 4)
            print(f"{name}: {steps} steps of {per_step} prompts x 8 in {secs:.0f} s; training reward, first "
                  f"{k} steps {sum(train_r[:k]) / k:.3f} -> last {k} {sum(train_r[-k:]) / k:.3f}")

    # 4. per task: base, each arm, paired gain (mean +- SE over the same prompts)
    score = lambda ev: {p["id"]: sum(p["scores"]) / len(p["scores"]) for p in ev["prompts"]}  # noqa: E731
    b = score(base)
    print(f"\nheld-out reward, mean over prompts of {args.learn_eval_samples} samples at T = {LEARN_T} "
          f"(± SE); gain = paired difference from the base model on the same prompts")
    print(f"{'task':22s} {'prompts':>7s} {'run':>22s} {'held-out':>14s} {'gain over base':>18s}")
    for task in trained + ["mean"]:
        ids = [p["id"] for p in base["prompts"] if task in ("mean", p["task"])]
        if task != "mean":  # what one fixed reply would score: a gain up to this needs no reading at all
            reply, best = constant_answer([s for s in held if s.task == task])
            print(f"{task:22s} {len(ids):7d} {'best constant reply':>22s} {best:14.3f}   ({reply[:40]!r})")
        print(f"{task:22s} {len(ids):7d} {'base':>22s} {mean_se_of(b, ids):>14s}")
        for name, ev in results.items():
            g, se = paired(score(ev), b, ids)
            print(f"{'':30s} {name:>22s} {mean_se_of(score(ev), ids):>14s} {g:+9.3f} ± {se:.3f}"
                  + (" *" if g > 2 * se else ""))
    print("* gain > 2 SE")
    if len(args.learn_arms) > 1:
        first = args.learn_arms[0]
        for lr in args.learn_lrs:
            for arm in args.learn_arms[1:]:
                a, r = score(results[f"{arm}-lr{lr:g}"]), score(results[f"{first}-lr{lr:g}"])
                diffs = []
                for task in trained + ["mean"]:
                    ids = [p["id"] for p in base["prompts"] if task in ("mean", p["task"])]
                    g, se = paired(a, r, ids)
                    diffs.append(f"{task} {g:+.3f} ± {se:.3f}")
                print(f"{arm} - {first} at lr {lr:g}: " + ", ".join(diffs))
    plot_learn_tasks(out, trained, ["base", *results])
    print(f"learn-tasks: {time.perf_counter() - t0:.0f} s in all")


def constant_answer(samples: list) -> tuple[str, float]:
    """(reply, its mean score): the best single reply for a set of prompts among their own gold answers
    written out as replies, picked on these same prompts (an upper bound for a guesser). When one gold
    dominates (a count that is almost always 2), a model can score this much by learning to say it,
    whatever the document says."""
    import rewards
    written = {s.answer if isinstance(s.answer, str) else "\n".join(map(str, s.answer)) for s in samples}
    return max(((w, sum(rewards.score(s.task, w, s.answer) for s in samples) / len(samples)) for w in written),
               key=lambda x: x[1])


def show_advantages(samples: list, rewards_of: list):
    """Where the three estimators part, on the base model's own rewards for the kept prompts (as if they
    all made one batch): per task, the mean pass rate p_x, its spread over prompts, and mean |A| under
    GRPO, TMN and TMN-Reweight. GRPO gives every prompt the same |A| scale whatever its task; TMN shares a
    task's scale, so a task of small reward gaps (ROUGE-L) keeps small advantages; Reweight then
    scales each prompt by exp(+-gamma (0.5 - p_x)), which moves nothing when p_x = 0.5."""
    import torch

    import grpo
    import tmn
    r = torch.tensor([x for rs in rewards_of for x in rs], dtype=torch.float64)
    groups = [i for i, rs in enumerate(rewards_of) for _ in rs]
    task_of = [s.task for s, rs in zip(samples, rewards_of) for _ in rs]
    adv = {"GRPO": grpo.group_advantages(r, groups), "TMN": tmn.tmn_reweight(r, groups, task_of, reweight=False),
           "TMN-Reweight": tmn.tmn_reweight(r, groups, task_of)}
    p = tmn.pass_rates(r, groups, task_of)  # [B] each row's prompt's p_x
    print("advantages on these rewards (one batch of all kept prompts): mean |A| per task (lowest-highest prompt)")
    print(f"  {'task':22s} {'prompts':>7s} {'p_x mean':>8s} {'p_x sd':>7s} " + " ".join(f"{k:>16s}" for k in adv))
    for task in sorted(set(task_of)):
        rows = torch.tensor([t == task for t in task_of])
        px = p[rows][::8]  # one per prompt (8 rows each)
        per_prompt = lambda a: a[rows].abs().reshape(-1, 8).mean(1)  # noqa: E731  [prompts] mean |A|
        print(f"  {task:22s} {len(px):7d} {float(px.mean()):8.3f} {float(px.std()):7.3f} " + " ".join(
            f"{float(a[rows].abs().mean()):.2f} ({float(per_prompt(a).min()):.2f}-{float(per_prompt(a).max()):.2f})"
            .rjust(16) for a in adv.values()))


def plot_learn_tasks(out, tasks_trained: list, names: list):
    """out/learn_tasks.png from the runs' files: training reward per step (left) and held-out reward per
    task with its standard error (right), one colour per run. Needs matplotlib (optional: skipped)."""
    import json
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        if (out / name / "metrics.jsonl").exists():
            r = [json.loads(l)["reward/all/mean"] for l in open(out / name / "metrics.jsonl")]
            left.plot(range(1, len(r) + 1), r, marker="o", ms=3, label=name, color=f"C{k}")
        ev = json.loads((out / name / "evals.jsonl").read_text().splitlines()[-1])
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(tasks_trained) + 1)]
        keys = tasks_trained + ["mean"]
        right.bar(xs, [ev[f"eval/{t}"] for t in keys], width, yerr=[ev[f"eval_se/{t}"] for t in keys],
                  label=name, color=f"C{k}", capsize=2)
    from matplotlib.ticker import MaxNLocator
    left.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    left.set_xlabel("step"), left.set_ylabel("training reward (mean over the step's samples)")
    right.set_xticks(range(len(tasks_trained) + 1), [t.replace("_", "\n") for t in tasks_trained] + ["mean"])
    right.set_ylabel("held-out reward (± SE)"), right.legend(fontsize=7), left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learn_tasks.png", dpi=110)
    plt.close(fig)
    print(f"wrote {out / 'learn_tasks.png'}")


def mean_se_of(scores: dict, ids: list) -> str:
    """"0.412 ± 0.051": mean and standard error over prompts `ids` of their scores."""
    m, se = mean_se([scores[i] for i in ids])
    return f"{m:.3f} ± {se:.3f}"
