"""The run folder: checkpoints (a Hugging Face folder + trainer state, written atomically and
verified before a resume takes one, the last K kept), the random generators they restore,
metrics.jsonl (strict JSON lines, trimmed safely on resume), the guard against starting over a
finished run (and --overwrite's old run set aside until the new run's first checkpoint), the disk
check, the reward plot drawn from metrics.jsonl, and what the user reads: the config at start, one
line per step, the evaluation table and the end-of-run summary (train.py prints them).

    import checkpoint
    ckpt = checkpoint.latest_checkpoint(Path("runs/default"))   # newest intact one, or None
    checkpoint.resume_metrics(Path("runs/default/metrics.jsonl"), step=12)   # keep steps 1..12
    checkpoint.plot_rewards(Path("runs/default"))               # rewards.png (needs matplotlib)
    print(checkpoint.run_summary(lines, seconds, Path("runs/default"), plotted=False))

A run folder holds: config.json (the full training config), metrics.jsonl (one line per step),
evals.jsonl (one line per evaluation), samples.jsonl (a few responses per step),
checkpoints/step_NNNNNN/ and rewards.png.

No collectives here except the last section (the sharded optimizer state of --shard fsdp, which
every rank writes and reads): train.py gathers what every rank must
contribute and calls the rest on rank 0. This file does not import train.py: functions that read the
config take it as an argument (cfg: a config.Config, read by field name).
"""

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import zipfile
from pathlib import Path

import torch

import data


# -----------------------------------------------------------------------------
# Checkpoints: HF folder (safetensors) + trainer state, written atomically, verified, last K kept

# The completeness marker: written last into the temporary folder, once every other file is on disk
# (fsync); then the folder is synced and renamed. It lists each file's size, so a file truncated or
# emptied later (a full disk, a copy cut short) is caught before a resume reads it.
MARKER = "complete.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")  # any one will do


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


def fsync_dir(path: Path):
    """Make a folder's entries (new files, a rename) durable: a power cut after this keeps them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SaveError(RuntimeError):
    """A checkpoint could not be written (a full disk, most often); its temporary folder is removed."""


def save_checkpoint(out_dir: Path, step: int, model, tok, optimizer, scheduler, batches, keep: int,
                    rngs: list, state_dict=None, optimizer_dir=None):
    """out_dir/checkpoints/step_000012/{model.safetensors, config.json, tokenizer..., trainer_state.pt,
    complete.json}. Written to a temporary folder, flushed to disk (fsync), marked complete and renamed,
    so a crash mid-save leaves the previous one intact.
    Rank 0 only; `rngs` holds every rank's generators (train.py gathers them), restored rank by rank.
    optimizer=None (--no-save-optimizer) leaves AdamW's state out: a resume then restarts its moments.
    Under fsdp, `state_dict` is the gathered full state dict (the model itself holds shards) and
    `optimizer_dir` the AdamW shards (save_sharded_optimizer), moved in as optimizer/ (optimizer=None).
    A failed write (a full disk ends in an OSError, a SafetensorError or torch's RuntimeError) removes
    the temporary folder, which would otherwise keep the disk full, and raises SaveError."""
    root = out_dir / "checkpoints"
    final, tmp = root / f"step_{step:06d}", root / f".tmp_step_{step:06d}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        write_checkpoint(tmp, step, model, tok, optimizer, scheduler, batches, rngs, state_dict, optimizer_dir)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except Exception as e:
        for p in (tmp, optimizer_dir):
            if p is not None:
                shutil.rmtree(p, ignore_errors=True)
        raise SaveError(f"could not save the checkpoint of step {step} to {final} "
                        f"({type(e).__name__}: {str(e)[:200]})") from e
    fsync_dir(root)  # the rename itself
    # Keep the newest `keep` intact checkpoints. A damaged one never counts, so it cannot push a good
    # one out; it is left where it is for the user to look at.
    intact = [p for p in sorted(root.glob("step_*")) if not checkpoint_problem(p)]
    for old in intact[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def write_checkpoint(tmp: Path, step: int, model, tok, optimizer, scheduler, batches, rngs: list,
                     state_dict, optimizer_dir):
    """Every file of a checkpoint into the folder `tmp`, synced, the completeness marker last."""
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    tok.save_pretrained(tmp)
    if optimizer_dir is not None:
        os.replace(optimizer_dir, tmp / "optimizer")
    state = {"step": step, "scheduler": scheduler.state_dict(), "data": batches.state_dict(), "rng": rngs}
    if optimizer is not None:  # AdamW's two moments: 8 bytes per parameter, twice the fp32 weights
        state["optimizer"] = optimizer.state_dict()
    torch.save(state, tmp / "trainer_state.pt")
    sizes = {}
    for p in sorted(x for x in tmp.rglob("*") if x.is_file()):  # optimizer/ shards included
        with open(p, "rb") as f:
            os.fsync(f.fileno())
        sizes[str(p.relative_to(tmp))] = p.stat().st_size
    with open(tmp / MARKER, "w") as f:  # last: its presence says every file above is whole
        json.dump({"step": step, "sizes": sizes}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)


def safetensors_problem(path: Path) -> str:
    """'' if `path` is a whole safetensors file: an 8-byte header length, a JSON header, and tensor
    data that ends exactly at the end of the file (a truncated file fails the last check)."""
    size = path.stat().st_size
    if size < 8:
        return f"{path.name} is {size} bytes (truncated or empty)"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            return f"{path.name}: header of {n} bytes in a {size}-byte file (truncated)"
        try:
            header = json.loads(f.read(n))
            end = max([t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"], default=0)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            return f"{path.name}: unreadable header ({e})"
    if 8 + n + end != size:
        return f"{path.name}: tensors end at byte {8 + n + end}, file has {size} (truncated)"
    return ""


def checkpoint_problem(ckpt: Path) -> str:
    """'' if checkpoint folder `ckpt` is complete and whole, else what is wrong with it (one line)."""
    sizes = {}  # a folder saved before the marker existed has none: the checks below still run
    if (ckpt / MARKER).exists():
        try:
            sizes = json.loads((ckpt / MARKER).read_text())["sizes"]
        except (ValueError, KeyError, TypeError) as e:
            return f"{MARKER} unreadable ({e})"
    for name, size in sizes.items():
        p = ckpt / name
        if not p.exists():
            return f"{name} is missing"
        if p.stat().st_size != size:
            return f"{name} is {p.stat().st_size} bytes, was saved with {size}"
    weights = sorted(ckpt.glob("*.safetensors"))
    if not weights:
        return "no *.safetensors weights"
    for p in weights:
        problem = safetensors_problem(p)
        if problem:
            return problem
    if not (ckpt / "config.json").exists():
        return "config.json is missing"
    if not any((ckpt / t).exists() for t in TOKENIZER_FILES):
        return f"no tokenizer file (one of {', '.join(TOKENIZER_FILES)})"
    try:  # torch.save writes a zip archive: a cut one has no central directory
        with zipfile.ZipFile(ckpt / "trainer_state.pt") as z:
            if not any(n.endswith("data.pkl") for n in z.namelist()):
                return "trainer_state.pt has no data.pkl"
    except (OSError, zipfile.BadZipFile) as e:
        return f"trainer_state.pt unreadable ({e})"
    return ""


def latest_checkpoint(out_dir: Path, log=print):
    """The newest intact checkpoint folder, or None. Newer damaged ones are skipped, each with a line
    saying which and why (temporary folders are never candidates: they are not named step_*)."""
    for ckpt in sorted((out_dir / "checkpoints").glob("step_*"), reverse=True):
        problem = checkpoint_problem(ckpt)
        if not problem:
            return ckpt
        log(f"checkpoint {ckpt} is damaged, skipped: {problem}")
    return None


def check_saveable(model, log=print):
    """Refuse at start what save_pretrained would refuse after training.

    A folder converted from GGUF keeps `quantization_config` in its config.json although its weights
    are plain floats; transformers then refuses to save it ("not serializable"). Strip it, as
    policy.embedded_model_dir does for the embedded model. Any other quantized model is refused."""
    qc = getattr(model.config, "quantization_config", None)
    if qc is None:
        return
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    method = getattr(method, "value", method)  # an enum in recent transformers
    if method == "gguf" and all(p.is_floating_point() for p in model.parameters()):
        del model.config.quantization_config
        model.hf_quantizer, model.is_quantized = None, False
        log("model: dropped quantization_config (gguf, weights already float), as the embedded "
            "model's converter does, so checkpoints can be saved")
        return
    sys.exit(f"model is quantized ({method}): its checkpoints could not be saved and its weights not "
             "trained. Dequantize it to a float folder first (load it, then save_pretrained a float "
             "copy without quantization_config) and pass that folder to --model.")


# -----------------------------------------------------------------------------
# metrics.jsonl: strict JSON lines, kept safe across a resume

def json_line(m: dict) -> str:
    """One metrics line, strict JSON: a NaN or infinite number becomes null (bare NaN is not JSON)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def resume_metrics(path: Path, step: int, log=print) -> dict:
    """Make metrics.jsonl hold exactly the lines of steps 1..`step` (the checkpoint's), without ever
    truncating it first.

    Every line is read and checked before anything is written: lines that are not a JSON object with
    an integer "step" are damaged; they are dropped and the whole original file is moved aside to
    metrics.jsonl.damaged[.N] (said in the log). Lines of later steps are dropped (they are redone);
    the original is then kept as metrics.jsonl.before_resume_at_step_S[.N], so no line is ever lost.
    The new content goes to a temporary file that replaces the old one by rename. Returns counts.
    """
    out = {"kept": 0, "damaged": 0, "later": 0, "moved_to": None}
    if not path.exists():
        return out
    keep, bad = [], []
    for i, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            ok = isinstance(rec, dict) and isinstance(rec.get("step"), int)
        except ValueError:  # also UnicodeDecodeError
            ok = False
        if not ok:
            bad.append(i)
        elif rec["step"] <= step:
            keep.append(raw.decode() + "\n")
        else:
            out["later"] += 1
    out["kept"], out["damaged"] = len(keep), len(bad)
    if bad or out["later"]:  # something is dropped: the original file is kept whole beside it
        suffix = ".damaged" if bad else f".before_resume_at_step_{step}"
        aside = path.with_name(path.name + suffix)
        n = 1
        while aside.exists():
            aside, n = path.with_name(f"{path.name}{suffix}.{n}"), n + 1
        shutil.copy2(path, aside)  # a copy: the original stays in place until the rename below
        out["moved_to"] = str(aside)
    if bad:
        log(f"{path}: {len(bad)} damaged line(s) (line {', '.join(map(str, bad[:5]))}"
            f"{' ...' if len(bad) > 5 else ''}) dropped; the original file is kept as {aside}")
    if out["later"]:
        log(f"{path}: {out['later']} line(s) of steps after {step} dropped "
            f"({'a fresh start' if step == 0 else 'the checkpoint is at step ' + str(step)}; the run redoes "
            f"them); the original file is kept as {aside}")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return out


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


RUN_FILES = ["metrics.jsonl", "evals.jsonl", "samples.jsonl", "rewards.png", "config.json",
             "checkpoints"]  # one run's own


def move_run_aside(out_dir: Path) -> tuple[Path | None, list]:
    """--overwrite: move what an earlier run left (RUN_FILES) into out_dir/previous_run[.N] (a rename:
    instant, no copy). It is deleted only once the new run's first checkpoint is saved (drop_aside),
    so a new run that fails before that leaves the old one whole. Other files in the folder stay.
    Returns (the folder, the names moved), or (None, []) when there was nothing to move."""
    names = [n for n in RUN_FILES if (out_dir / n).exists()]
    if not names:
        return None, []
    aside, k = out_dir / "previous_run", 1
    while aside.exists():  # an earlier overwrite's, never finished: kept as it is
        aside, k = out_dir / f"previous_run.{k}", k + 1
    aside.mkdir()
    for n in names:
        os.replace(out_dir / n, aside / n)
    return aside, names


def drop_aside(aside: Path | None, step: int, log):
    """The new run's first checkpoint (of `step`) is on disk: delete the run that --overwrite set aside."""
    if aside is not None and aside.exists():
        shutil.rmtree(aside, ignore_errors=True)
        log(f"--overwrite: deleted {aside} (the previous run) now that step {step} is saved")


# -----------------------------------------------------------------------------
# Disk: one checkpoint must fit before training starts, and a failed save leaves nothing behind

def nearest_existing(path: Path) -> Path:
    """`path` or its nearest parent that exists (where a new folder would be created)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def checkpoint_bytes(n_params: int, with_optimizer: bool) -> int:
    """A checkpoint's size on disk: float32 weights (4 B/param) and, with the optimizer, AdamW's two
    float32 moments (8 B/param); the tokenizer, config and trainer state fit in the 64 MiB margin."""
    return n_params * (4 + 8 * with_optimizer) + 64 * 2**20


def disk_problem(out_dir: Path, need: int) -> str:
    """'' if a checkpoint of `need` bytes fits on out_dir's disk now, else one line saying what to do.
    One, what the first save needs; --keep-last of them are on disk later, and a later save that runs
    out of space still ends cleanly, the last good checkpoint kept (save_checkpoint)."""
    free = shutil.disk_usage(nearest_existing(out_dir)).free
    gb = lambda b: f"{b / 1e9:.2f} GB"
    if free < need:
        return (f"--out-dir {out_dir}: {gb(free)} free, one checkpoint needs {gb(need)} (4 B/param weights"
                " + 8 B/param AdamW unless --no-save-optimizer): free space, or pass another --out-dir")
    return ""


def remove_partial_saves(out_dir: Path, log) -> list:
    """Delete temporary folders of saves that never finished (a killed process, a power cut): never
    a checkpoint, only disk space. Returns their names."""
    gone = sorted((out_dir / "checkpoints").glob(".tmp_*"))
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    if gone:
        log(f"removed {len(gone)} half-written checkpoint folder(s) of an earlier save: "
            f"{', '.join(p.name for p in gone)}")
    return [p.name for p in gone]


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


# -----------------------------------------------------------------------------
# What the user reads: the config, one line per step, the evaluation table, the end-of-run summary
# (train.py prints them on rank 0)

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
    cfg, defaults: the run's config.Config and Config() (passed in: this file does not import train)."""
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


def mean_se(v: float, se) -> str:
    """"0.412 ± 0.051": a mean and its standard error ("± n/a" when one prompt leaves no spread)."""
    return f"{v:.3f} ± " + (f"{se:.3f}" if se is not None and math.isfinite(se) else "n/a")


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
    ckpt = latest_checkpoint(out_dir)
    size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) / 1e9 if ckpt else 0
    return "\n".join(
        [f"done: steps {span([(l['step'],) for l in lines])} in {round(seconds) // 60} min {round(seconds) % 60} s",
         "  mean reward per task (one step: no comparison):" if len(lines) == 1 else
         "  mean reward per task, its first -> its last (up to 5) steps:"] +
        [f"    {t:<{w}} {TASK_LABELS.get(t, ''):>5}  {r}" for t, r in rows] +
        ([f"  evaluation, mean over tasks ± standard error: " + (" -> ".join(ev) if len(ev) > 1 else
                                                                 f"{ev[0]}, one evaluation: no comparison")]
         if ev else []) +
        [f"  metrics:    {out_dir / 'metrics.jsonl'}",
         *([f"  responses:  {out_dir / 'samples.jsonl'}"] if (out_dir / "samples.jsonl").exists() else []),
         f"  checkpoint: {ckpt} ({size:.2f} GB)" if ckpt else "  checkpoint: none",
         f"  plot:       {out_dir / 'rewards.png'}" if plotted else
         f"  plot:       python train.py --plot --out-dir {out_dir}   (needs matplotlib)"])


# -----------------------------------------------------------------------------
# The run folder: what this command does with it (cfg: config.Config, read by field name)

def plot_only(cfg, out_dir: Path) -> bool:
    """--plot on a folder that holds a run, with neither --resume nor --overwrite: draw it, train nothing."""
    return cfg.plot and not (cfg.resume or cfg.overwrite or cfg.eval_only) and bool(holds_run(out_dir))


def prepare_run_dir(cfg, out_dir: Path, rank: int, log) -> Path | None:
    """Before the model loads: refuse a folder holding a run (exit 2) unless --resume/--overwrite.
    Nothing is moved or written yet (start_run does that, once the run is known to start). Returns
    where the full config will be; None for --eval-only, which only adds to evals.jsonl."""
    if cfg.eval_only:
        return None
    check_run_dir(out_dir, cfg.resume, cfg.overwrite)
    return out_dir / "config.json"


def start_run(cfg, out_dir: Path, rank: int, log) -> Path | None:
    """Rank 0, once config, data, model and disk have passed their checks, just before step 1: on
    --overwrite move the earlier run aside (move_run_aside), then write the full config to
    out_dir/config.json (a temporary file renamed: a full disk never leaves it empty). Returns the
    folder set aside, for drop_aside after the first checkpoint."""
    aside = None
    if rank == 0:
        if cfg.overwrite:
            aside, moved = move_run_aside(out_dir)
            if aside:
                log(f"--overwrite: moved {', '.join(moved)} to {aside}; deleted once this run's first "
                    "checkpoint is saved")
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / "config.json.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(cfg), indent=1) + "\n")
        os.replace(tmp, out_dir / "config.json")
    return aside


def weights_to_load(cfg, out_dir: Path, log):
    """The checkpoint folder to start from (--resume) or to evaluate (--eval-only: --checkpoint, else
    out_dir's newest), or None for the base model."""
    if cfg.checkpoint:
        if not (Path(cfg.checkpoint) / "config.json").exists():
            sys.exit(f"--checkpoint {cfg.checkpoint}: not a model folder (no config.json there)")
        return Path(cfg.checkpoint)
    if not (cfg.resume or cfg.eval_only):
        return None
    ckpt = latest_checkpoint(out_dir, log)  # damaged ones skipped, and said
    if ckpt:
        log(f"{'evaluating' if cfg.eval_only else 'resuming from'} {ckpt}")
    elif cfg.eval_only:
        log(f"--eval-only: no checkpoint in {out_dir}; evaluating the base model {cfg.model or 'SmolLM2-135M'}")
    else:
        log(f"--resume: no intact checkpoint in {out_dir}; fresh start")
    return ckpt


def checkpoint_step(ckpt) -> int | None:
    """The training step of a checkpoint folder from its name (step_000012 -> 12); 0 for the base
    model (None); None for a folder not named by save_checkpoint."""
    if ckpt is None:
        return 0
    name = Path(ckpt).name
    return int(name[5:]) if name.startswith("step_") and name[5:].isdigit() else None


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
    try:
        dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=path)
    except Exception as e:  # a full disk: no half-written shards left behind
        shutil.rmtree(path, ignore_errors=True)
        raise SaveError(f"could not save the AdamW shards of step {step} to {path} "
                        f"({type(e).__name__}: {str(e)[:200]})") from e
    return path


def load_sharded_optimizer(path: Path, model, optimizer):
    """Read what save_sharded_optimizer wrote into `optimizer` (sharded or not: DCP reshards to the
    tensors the current optimizer holds). Collective under a process group: call on every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}  # the shapes to fill in
    dcp.load(state, checkpoint_id=path)
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
