"""The run's state in and out: checkpoints (a Hugging Face folder + trainer state, written atomically
and verified before a resume takes one, the last K kept), the random generators they restore,
metrics.jsonl trimmed safely on resume, the guard against starting over a finished run (and
--overwrite's old run set aside until the new run's first checkpoint), the disk check, and the
sharded AdamW state of --shard fsdp. What a person reads of a run (lines, tables, the plot) is
report.py's.

    import checkpoint
    ckpt = checkpoint.latest_checkpoint(Path("runs/default"))   # newest intact one, or None
    checkpoint.checkpoint_problem(ckpt)                          # '' = intact, else why not
    checkpoint.resume_metrics(Path("runs/default/metrics.jsonl"), step=12)   # keep steps 1..12

A run folder holds: config.json (the full training config), metrics.jsonl (one line per step),
evals.jsonl (one line per evaluation), samples.jsonl (a few responses per step),
checkpoints/step_NNNNNN/ and rewards.png.

No collectives here except the last section (the sharded optimizer state of --shard fsdp, which
every rank writes and reads): train.py gathers what every rank must contribute and calls the rest
on rank 0. Functions that read the config take it as an argument (cfg: a config.Config, read by
field name).
"""
import dataclasses
import json
import os
import random
import shutil
import sys
import zipfile
from pathlib import Path

import torch


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
# metrics.jsonl kept safe across a resume (report.json_line writes its lines)


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


# -----------------------------------------------------------------------------
# What the user reads: the config, one line per step, the evaluation table, the end-of-run summary
# (train.py prints them on rank 0)


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
