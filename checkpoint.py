"""The run folder: checkpoints (a Hugging Face folder + trainer state, written atomically, the last K
kept), the random generators they restore, the guard against starting over a finished run, and the
reward plot drawn from metrics.jsonl.

    import checkpoint
    ckpt = checkpoint.latest_checkpoint(Path("runs/default"))   # newest complete one, or None
    checkpoint.plot_rewards(Path("runs/default"))               # rewards.png (needs matplotlib)

A run folder holds: config.json (the full training config), metrics.jsonl (one line per step),
evals.jsonl (one line per evaluation), checkpoints/step_NNNNNN/ and rewards.png.

No collectives here: train.py gathers what every rank must contribute and calls these on rank 0.
"""

import json
import os
import random
import shutil
import sys
from pathlib import Path

import torch


# -----------------------------------------------------------------------------
# Checkpoints: HF folder (safetensors) + trainer state, written atomically, last K kept

def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state()
    return s


def set_rng_state(s: dict):
    torch.set_rng_state(s["torch"])
    random.setstate((3, tuple(s["python"]), None))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


def save_checkpoint(out_dir: Path, step: int, model, tok, optimizer, scheduler, batches, keep: int,
                    rngs: list):
    """out_dir/checkpoints/step_000012/{model.safetensors, config.json, tokenizer..., trainer_state.pt}.
    Written to a temporary folder and renamed, so a crash mid-save leaves the previous one intact.
    Rank 0 only; `rngs` holds every rank's generators (train.py gathers them), restored rank by rank.
    optimizer=None (--no-save-optimizer) leaves AdamW's state out: a resume then restarts its moments."""
    root = out_dir / "checkpoints"
    final, tmp = root / f"step_{step:06d}", root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    state = {"step": step, "scheduler": scheduler.state_dict(), "data": batches.state_dict(), "rng": rngs}
    if optimizer is not None:  # AdamW's two moments: 8 bytes per parameter, twice the fp32 weights
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out_dir: Path):
    """The newest complete checkpoint folder, or None (temporary folders are never complete)."""
    done = [p for p in sorted((out_dir / "checkpoints").glob("step_*")) if (p / "trainer_state.pt").exists()]
    return done[-1] if done else None


# -----------------------------------------------------------------------------
# Never lose a run: a folder that holds one is only continued (--resume) or replaced (--overwrite)

def holds_run(out_dir: Path) -> list:
    """What in out_dir belongs to an earlier run: a non-empty metrics.jsonl and the checkpoint folders."""
    found = [p for p in [out_dir / "metrics.jsonl"] if p.exists() and p.stat().st_size > 0]
    return found + sorted((out_dir / "checkpoints").glob("step_*"))


def check_run_dir(out_dir: Path, resume: bool, overwrite: bool):
    """Refuse (exit 2, a usage error) to start training into a folder that holds a run, unless the
    user said --resume (continue it) or --overwrite (replace it). Called before the model loads."""
    found = holds_run(out_dir)
    if not found or resume or overwrite:
        return
    print(f"error: {out_dir} already holds a run ({', '.join(p.name for p in found)}).\n"
          f"  --resume     continues it from its newest checkpoint\n"
          f"  --overwrite  deletes it and starts again at step 0\n"
          f"  --out-dir    names another folder; --plot or --eval-only alone only read it",
          file=sys.stderr)
    sys.exit(2)


def clear_run_dir(out_dir: Path) -> list:
    """--overwrite: delete what an earlier run left (metrics, evaluations, checkpoints, plot, config).
    Other files in the folder stay. Returns the names deleted, for the log."""
    gone = []
    for name in ["metrics.jsonl", "evals.jsonl", "rewards.png", "config.json", "checkpoints"]:
        p = out_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        gone.append(name)
    return gone


# -----------------------------------------------------------------------------
# The reward plot

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
            if k.startswith("reward/") and k.endswith("/mean"):
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
