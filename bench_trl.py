"""One training step here vs TRL's GRPOTrainer, the same run set up on both sides, run through
bench.py (which owns the command line):

    pip install trl==1.16.0                  # bench only, not in requirements.txt
    python bench.py --only trl               # 1K, 2K and 4K-token prompts, a fresh process per side
    python bench.py --only trl --trl-contexts 2048 --trl-steps 1 --trl-sides ours

Each side runs in a fresh Python process (TRL_WORKER), so its peak RSS is that process's own.
"""

# -----------------------------------------------------------------------------
# trl: one training step here vs TRL's GRPOTrainer, the same run set up on both sides

DIFFERS = ("the loss (TRL's default 'dapo': token-mean, clip 0.2 both sides, 'group' std scaling; ours "
           "--advantage grpo: token-mean, clip 0.2 / 0.28, dual-clip 3, rollout importance weights); TRL "
           "generates and trains G rows [prompt, response] per prompt, we prefill each prompt once and train "
           "one packed [prompt, r_1..r_G] per group; TRL trains its 16 rows in one forward/backward, ours one "
           "group at a time (--micro-batch-tokens = the longest prompt allowed + G x new tokens; the same "
           "gradient); both checkpoint every layer, but ours keeps each layer's attention output for its "
           "backward (--keep-attention: 6.5 MB per layer at 2K, 0.2 GB per group; TRL recomputes it); on CPU "
           "our trainer keeps freed memory in glibc's heap for reuse (harness.reuse_freed_memory), TRL runs "
           "with glibc's default. The same on both: fused AdamW, fp32, gradient checkpointing, no KL, one optimizer step "
           "per batch.")

TRL_WORKER = """
import json, resource, shutil, sys, tempfile, time
sys.path.insert(0, {root!r})
import torch
WAY, DATA, STEPS, G, PROMPTS, NEW, LR = {way!r}, {data!r}, {steps}, {G}, {prompts}, {new}, {lr}
MAXP = {maxp}
torch.manual_seed(0)
if WAY == "ours":
    import train
    out = tempfile.mkdtemp()
    train.main(["--data", DATA, "--out-dir", out, "--steps", str(STEPS), "--group-size", str(G),
                "--prompts-per-step", str(PROMPTS), "--max-new-tokens", str(NEW), "--lr", str(LR),
                "--advantage", "grpo", "--no-dynamic-sampling", "--max-gen-rounds", "1", "--precision", "fp32",
                "--grad-checkpointing", "--keep-attention", "--max-prompt-tokens", str(MAXP),
                "--micro-batch-tokens", str(MAXP + G * NEW),  # the largest group: one per forward/backward
                "--save-every", "0", "--save-minutes", "0", "--no-save-optimizer", "--kl-coef", "0"])
    m = [json.loads(l) for l in open(out + "/metrics.jsonl")]
    steps = [(x["step_s"], x["rollout_s"] + x["reward_s"], x["update_s"]) for x in m]
    shutil.rmtree(out)  # the run's final checkpoint: 0.5 GB per side and context otherwise left in /tmp
else:
    import datasets, rewards, data, policy
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    samples = data.load_jsonl(DATA)
    ds = datasets.Dataset.from_list([dict(prompt=s.prompt, task=s.task, answer=json.dumps(s.answer))
                                     for s in samples])
    def reward(prompts, completions, task, answer, **kw):  # the same natural metrics as train.py
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [rewards.score(t, x, json.loads(a)) for t, x, a in zip(task, texts, answer)]
    times, gen = [], []
    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)
    cfg = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=G * PROMPTS, num_generations=G,
                     max_completion_length=NEW, learning_rate=LR, gradient_checkpointing=True, use_cpu=True,
                     bf16=False, max_steps=STEPS, logging_steps=1, report_to="none", save_strategy="no",
                     beta=0.0, temperature=1.0, top_p=1.0, seed=0, steps_per_generation=1, num_iterations=1,
                     dataloader_num_workers=0, disable_tqdm=True, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.1, max_grad_norm=1.0)
    model_dir = str(policy.embedded_model_dir())
    tr = GRPOTrainer(model=model_dir, reward_funcs=reward, args=cfg, train_dataset=ds,
                     processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[Clock()])
    real = tr._generate_and_score_completions
    def timed(*a, **k):
        t = time.perf_counter()
        out = real(*a, **k)
        gen.append(time.perf_counter() - t)
        return out
    tr._generate_and_score_completions = timed
    tr.train()
    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    steps = [(s, g, s - g) for s, g in zip(times, gen)]
print(json.dumps(dict(steps=steps, peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))
"""


def bench_trl(args):
    """One GRPO step here vs TRL's GRPOTrainer (trl, a bench-only package: pip install trl), the same
    run on both sides: the embedded SmolLM2-135M, the same built prompts (one per task for two tasks
    per step), the same reward (rewards.score, the natural metrics), G = 8, 2 prompts per step, 48 new
    tokens, lr 1e-6, float32, gradient checkpointing, no dynamic sampling, no KL, one optimizer step per
    batch; per context length one warm-up step and args.trl_steps measured ones, each side in a fresh
    process (peak RSS of that process). Generation = sampling and scoring; update = the rest of the step.
    What differs, and cannot be made equal, is printed with the table (DIFFERS). A side that fails
    (killed for memory at a long context) is reported, and the other rows still run."""
    import importlib.util
    import json
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path
    if importlib.util.find_spec("trl") is None:
        print("trl is not installed: pip install trl==1.16.0 (bench only, not in requirements.txt); skipped")
        return
    import data
    import policy
    import tasks
    from transformers import AutoTokenizer
    root = os.path.dirname(os.path.abspath(__file__))
    tok = AutoTokenizer.from_pretrained(policy.embedded_model_dir())
    steps = 1 + args.trl_steps
    print(f"this project vs TRL GRPOTrainer: SmolLM2-135M, fp32, G=8, 2 prompts/step, 48 new tokens, "
          f"{args.trl_steps} measured steps after 1 warm-up, fresh process per side")
    print(f"{'context':>7s} {'side':5s} {'step s':>7s} {'gen s':>6s} {'update s':>8s} {'peak GiB':>8s} {'load':>5s}")
    rows = []
    for ctx in args.trl_contexts:
        built = tasks.build_tasks(tasks.load_documents(), tok, steps, ctx, 0)
        pick = [s for s in built if s.task in ("precise_retrieval", "summarization")][:2 * steps]
        path = Path(tempfile.mkdtemp()) / "prompts.jsonl"
        data.save_jsonl(pick, path)
        res = {}
        for way in args.trl_sides:
            code = TRL_WORKER.format(root=root, way=way, data=str(path), steps=steps, G=8, prompts=2, new=48,
                                     lr=1e-6, maxp=ctx + 1024)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
            if out.returncode != 0:  # e.g. killed for memory at a long context: say so, go on
                last = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
                print(f"{ctx:7d} {way:5s} failed (exit code {out.returncode}): {last[:200]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            measured = r["steps"][1:] or r["steps"]  # drop the warm-up step
            mean = [sum(x[i] for x in measured) / len(measured) for i in range(3)]
            res[way] = (*mean, r["peak"])
            print(f"{ctx:7d} {way:5s} {mean[0]:7.1f} {mean[1]:6.1f} {mean[2]:8.1f} {r['peak'] / 2**30:8.2f} "
                  f"{os.getloadavg()[0]:5.1f}", flush=True)
        rows.append((ctx, res))
        shutil.rmtree(path.parent)
    if set(args.trl_sides) != {"ours", "trl"}:
        return
    print("\nwhat differs: " + DIFFERS)
    print("ratios TRL / ours (higher = ours faster or smaller):")
    for ctx, res in rows:
        if len(res) < 2:
            print(f"  {ctx:5d} tokens: a side failed, no ratio")
            continue
        o, t = res["ours"], res["trl"]
        print(f"  {ctx:5d} tokens: step x{t[0] / o[0]:.1f}, generation x{t[1] / o[1]:.1f}, update "
              f"x{t[2] / o[2]:.1f}, peak RSS x{t[3] / o[3]:.2f}")
