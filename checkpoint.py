"""The run folder: checkpoints (a Hugging Face folder + trainer state, written atomically, the last K
kept), the random generators they restore, and the reward plot drawn from metrics.jsonl.

    import checkpoint
    ckpt = checkpoint.latest_checkpoint(Path("runs/default"))   # newest complete one, or None

No collectives here except in the last section (the sharded optimizer state, which every rank
writes and reads): train.py gathers what every rank must contribute and calls the rest on rank 0.
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
                    rngs: list, state_dict=None, optimizer_dir=None):
    """out_dir/checkpoints/step_000012/{model.safetensors, config.json, tokenizer..., trainer_state.pt}.
    Written to a temporary folder and renamed, so a crash mid-save leaves the previous one intact.
    Rank 0 only; `rngs` holds every rank's generators (train.py gathers them), restored rank by rank.
    Under fsdp, `state_dict` is the gathered full state dict (the model itself holds shards) and
    `optimizer_dir` the sharded optimizer state (save_sharded_optimizer), moved in as optimizer/;
    trainer_state.pt then has optimizer None."""
    root = out_dir / "checkpoints"
    final, tmp = root / f"step_{step:06d}", root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    tok.save_pretrained(tmp)
    if optimizer_dir is not None:
        os.replace(optimizer_dir, tmp / "optimizer")
    torch.save({"step": step, "optimizer": None if optimizer_dir else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "data": batches.state_dict(), "rng": rngs},
               tmp / "trainer_state.pt")
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


# -----------------------------------------------------------------------------
# Sharded optimizer state (--shard fsdp): torch.distributed.checkpoint, one file per rank

def save_sharded_optimizer(out_dir: Path, step: int, model, optimizer, rank: int) -> Path:
    """Every rank writes its AdamW shards to out_dir/checkpoints/.tmp_optim_step_000012/ (one
    .distcp file each, plus rank 0's .metadata); save_checkpoint then moves the folder into the
    step's. Collective: call on every rank. Several nodes need a shared file system for out_dir.
    Keys are parameter names (not optimizer indices), so the files load at another world size."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    path = out_dir / "checkpoints" / f".tmp_optim_step_{step:06d}"
    if rank == 0:
        shutil.rmtree(path, ignore_errors=True)  # a crashed save's files, maybe from another world size
    dist.barrier()
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=path)
    return path


def load_sharded_optimizer(path: Path, model, optimizer):
    """Read what save_sharded_optimizer wrote into `optimizer` (sharded or not: DCP reshards to the
    tensors the current optimizer holds). Collective under a process group: call on every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}  # the shapes to fill in
    dcp.load(state, checkpoint_id=path)
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
