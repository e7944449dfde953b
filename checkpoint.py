"""The run folder: checkpoints (a Hugging Face folder + trainer state, written atomically, the last K
kept), the random generators they restore, and the reward plot drawn from metrics.jsonl.

    import checkpoint
    ckpt = checkpoint.latest_checkpoint(Path("runs/default"))   # newest complete one, or None

No collectives here: train.py gathers what every rank must contribute and calls these on rank 0.
"""

import json
import os
import random
import shutil
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
    Rank 0 only; `rngs` holds every rank's generators (train.py gathers them), restored rank by rank."""
    root = out_dir / "checkpoints"
    final, tmp = root / f"step_{step:06d}", root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "data": batches.state_dict(), "rng": rngs}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out_dir: Path):
    """The newest complete checkpoint folder, or None (temporary folders are never complete)."""
    done = [p for p in sorted((out_dir / "checkpoints").glob("step_*")) if (p / "trainer_state.pt").exists()]
    return done[-1] if done else None


# -----------------------------------------------------------------------------
# The reward plot

def plot_rewards(out_dir: Path):
    """Per-task mean reward against step, from metrics.jsonl, to rewards.png."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib); skipped")
        return
    lines = [json.loads(l) for l in open(out_dir / "metrics.jsonl")]
    keys = sorted({k for l in lines for k in l if k.startswith("reward/") and k.endswith("/mean")})
    fig, ax = plt.subplots(figsize=(8, 5))
    for k in keys:
        pts = [(l["step"], l[k]) for l in lines if k in l]
        ax.plot(*zip(*pts), label=k.split("/")[1], lw=2.5 if "/all/" in k else 1)
    ax.set_xlabel("step"), ax.set_ylabel("mean reward"), ax.legend(fontsize=7)
    fig.savefig(out_dir / "rewards.png", dpi=120)
    print(f"wrote {out_dir / 'rewards.png'}")
