"""The run's configuration: one dataclass (a comment per field, shown by --help), the paper's recipe,
the bounds of each number with the reason, and the checks that run before anything heavy loads.

    import config
    cfg = config.parse_config(["--recipe", "paper", "--lr", "1e-6"])   # explicit flags win
    config.validate_config(cfg)                                       # [] = fine, else one line per problem
    python train.py --help                                            # every field, its default and why

The command line is generated from the dataclass (--field value, --flag / --no-flag for booleans);
`--recipe paper` applies PAPER first. Every problem is reported at once, one line each, exit 2, as
argparse does for its own errors: a bad flag costs a second, not a model load.
"""

import argparse
import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import checkpoint
import tasks


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
    skip_unknown_sources: bool = option(False, "skip and count JSONL records of an unknown data_source "
                                        "or reward_mode instead of stopping at the first")
    skip_bad_golds: bool = option(False, "skip and count JSONL records whose gold its metric cannot score")
    context_tokens: int = option(512, "context length of built tasks (ignored with --data)")
    n_per_task: int = option(8, "built tasks per task type (ignored with --data)")
    eval_per_task: int = option(4, "built tasks per type held out for evaluation (built with a seed of "
                                   "their own: the same prompts whatever --seed)")
    eval_samples: int = option(2, "samples per evaluation prompt: a prompt scores the mean of its samples")
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
    kv_budget_tokens: int = option(0, "KV positions per generation wave (prompts padded to the wave's "
                                     "longest + n x max_new_tokens each); 0 = no limit: all prompts in one wave "
                                     "(a rank's own) (paper: 425,984)")
    require_think: bool = option(False, "format gate: reward 0 without exactly one </think> (paper: on)")
    # objective
    advantage: str = option("tmn_reweight", "grpo | tmn | tmn_reweight")
    alpha: float = option(0.8, "TMN-Reweight threshold mix: t = alpha*mu_x + (1-alpha)*mean_k(mu)")
    gamma: float = option(1.0, "TMN-Reweight strength: w = exp(+-gamma*(0.5 - pass rate))")
    clip_low: float = option(0.2, "PPO clip below 1")
    clip_high: float = option(0.28, "PPO clip above 1 (clip-higher)")
    dual_clip: float = option(3.0, "dual-clip bound for negative advantages")
    loss_agg: str = option("token-mean", "token-mean | seq-mean-token-mean")
    rollout_is: bool = option(True, "rollout importance-sampling correction (trainer vs sampler numerics)")
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
    keep_attention: bool = option(False, "with --grad-checkpointing: keep each layer's attention output for backward "
                                         "instead of recomputing it (faster; + tokens x heads x head_dim values per "
                                         "layer, 69 GB per GPU at the paper's 160K: README Memory)")
    shard: str = option("ddp", "ddp = every GPU holds the whole model and AdamW state; fsdp = FSDP2 shards them")
    precision: str = option("auto", "auto = bf16 on CUDA, fp32 on CPU; bf16 = float32 master weights, bf16 "
                                    "autocast in the trainer, bf16 sampler (on CPU too: the GPU's numerics)")
    attention: str = option("auto", "auto = flash-attn on CUDA in bf16 when it imports, else torch; flash = "
                                    "flash-attn wherever a flash_attn module imports; torch = exact SDPA path")
    logprob_chunk: int = option(1024, "tokens per chunk in grpo.token_logprobs")
    # run
    out_dir: str = option("runs/default", "metrics.jsonl, checkpoints/ and the plot go here")
    seed: int = option(0, "seed of data order and sampling (each rank samples with its own stream)")
    eval_every: int = option(0, "evaluate every k steps (0 = only with --eval-only)")
    eval_only: bool = option(False, "evaluate out_dir's newest checkpoint (the base model if it has none) and exit")
    checkpoint: str = option("", "with --eval-only: evaluate this checkpoint folder instead of out_dir's newest")
    eval_max_new_tokens: int = option(0, "response limit at evaluation, 0 = max_new_tokens")
    log_samples: int = option(3, "sampled responses per step written to out_dir/samples.jsonl, one per task "
                                 "(rank 0's own prompts: under torchrun the other ranks write none); 0 = none")
    save_every: int = option(0, "checkpoint every k steps (0 = at the end only; --save-minutes also saves)")
    save_minutes: float = option(10.0, "also checkpoint when this many minutes passed since the last one "
                                       "(0 = off): a crash or kill loses at most that much work, whatever "
                                       "a step costs, for a few percent of the time spent writing")
    keep_last: int = option(2, "checkpoints kept")
    save_optimizer: bool = option(True, "AdamW state in checkpoints (2/3 of their size); without it --resume "
                                        "restarts the optimizer")
    resume: bool = option(False, "continue from the newest complete checkpoint in out_dir")
    overwrite: bool = option(False, "start again in an out_dir that holds a run: delete its metrics and checkpoints")
    task_balanced: bool = option(False, "equal prompts per task in each batch (as QwenLong-L1.5)")
    plot: bool = option(False, "draw per-task reward curves to out_dir/rewards.png (needs matplotlib); "
                               "on a folder holding a run, without --resume/--overwrite: only draw, no training")
    recipe: str = option("", "'paper' = the paper's hyperparameters (explicit flags still win)")
    dist_timeout_min: float = option(720.0, "timeout of the waits between ranks that last as long as a "
                                     "rollout, an evaluation or a save (a gloo group); a paper-length round "
                                     "runs for hours")
    collective_timeout_min: float = option(10.0, "timeout of the tensor collectives inside a step (NCCL's default)")


# The paper's recipe, applied before explicit command-line flags.
PAPER = dict(lr=2e-6, warmup_steps=5, weight_decay=0.1, grad_clip=1.0, group_size=16, prompts_per_step=128,
             gen_prompts=512, max_gen_rounds=4, clip_low=0.2, clip_high=0.28, dual_clip=3.0,
             temperature=1.0, top_p=1.0, top_k=0, max_prompt_tokens=163_840, max_new_tokens=16_384,
             require_think=True, advantage="tmn_reweight", alpha=0.8,
             # the longest prompt with 4 of its longest responses per shared-prefix micro-batch (a
             # group = 4 sub-groups, its prompt run 4 times, not 16): the most that fits a 141 GB GPU
             # under fsdp at 8 GPUs, 128 GB by memory.phase_memory (8 per micro-batch: 158 GB)
             micro_batch_tokens=163_840 + 4 * 16_384,
             # KV positions per generation wave: the recipe's largest prompt with its G x max_new rows
             # (rollout.wave_kv_tokens), so that prompt fits a wave of its own: 163,840 + 16 x 16,384
             kv_budget_tokens=163_840 + 16 * 16_384)


# Lower bounds of the numeric fields, and why (each would fail late, or never).
AT_LEAST = {
    "group_size": (2, "a group of one has no spread: every advantage is 0 and no step ever updates"),
    "prompts_per_step": (1, "a step needs prompts"), "max_gen_rounds": (1, "a step needs a generation round"),
    "gen_prompts": (0, "0 means prompts_per_step"), "max_new_tokens": (1, "a response needs a token"),
    "eval_max_new_tokens": (0, "0 means max_new_tokens"), "max_prompt_tokens": (1, "a prompt has tokens"),
    "mini_batches": (1, "one batch makes at least one optimizer step"),
    "micro_batch_tokens": (1, "a micro-batch holds at least one token"),
    "logprob_chunk": (1, "a chunk holds at least one token"),
    "keep_last": (1, "0 or less would delete the checkpoint just saved"),
    "steps": (1, "a run trains at least one step; --eval-only only evaluates"),
    "warmup_steps": (0, "a count"), "save_every": (0, "0 means at the end only"),
    "eval_every": (0, "0 means never"), "top_k": (0, "0 means off"), "kv_budget_tokens": (0, "0 means one wave"),
    "log_samples": (0, "0 means none"),
    "save_minutes": (0.0, "0 means off"),
    "context_tokens": (tasks.MIN_CONTEXT_TOKENS, "two documents and a question need that room"),
    "n_per_task": (0, "a count"), "eval_per_task": (0, "a count"),
    "eval_samples": (1, "a prompt is scored on at least one sample"),
    "weight_decay": (0.0, "a decay"), "kl_coef": (0.0, "a penalty weight"), "gamma": (0.0, "a strength"),
    "clip_low": (0.0, "a clip range"), "clip_high": (0.0, "a clip range"),
}
# Floats that must be strictly positive.
POSITIVE = {"lr": "a step size", "temperature": "logits are divided by it", "grad_clip": "a norm bound",
            "dist_timeout_min": "a timeout", "collective_timeout_min": "a timeout"}

# The largest learning rate, and why it makes a non-finite weight impossible with finite gradients.
# AdamW moves a weight w by lr * m_hat / (sqrt(v_hat) + eps) + lr * weight_decay * w per step, and
# |m_hat| < 7.3 sqrt(v_hat) for torch's default betas (0.9, 0.999) whatever the gradients (Cauchy-
# Schwarz on the two moving averages; test_scale.py reaches 7.27). So below lr 1, with
# lr * weight_decay < 1 (the decay shrinks weights, never flips or grows them), a step moves a weight
# by less than 7.3: the trainer checks only the loss and the gradient norm (train.optimizer_step).
MAX_LR = 1.0  # the paper trains at 2e-6


def looks_like_path(s: str) -> bool:
    """A hub id is "name" or "org/name"; anything else that names a place on disk is a path."""
    return s.startswith(("/", ".", "~")) or s.count("/") > 1 or Path(s).exists()


def writable_problem(flag: str, path: Path) -> str:
    """'' if `path` is (or can be made as) a folder this process can write into."""
    if path.exists() and not path.is_dir():
        return f"{flag} {path} is a file, not a folder: pass a folder path"
    here = checkpoint.nearest_existing(path)  # the one that must let us create the rest
    if not here.is_dir():
        return f"{flag} {path}: {here} is a file, not a folder"
    if not os.access(here, os.W_OK | os.X_OK):
        return f"{flag} {path}: {here} is not writable: pass a folder you can write to"
    try:  # permission bits do not tell: /proc and read-only mounts refuse files even to root
        tempfile.TemporaryFile(dir=here).close()
    except OSError as e:
        return f"{flag} {path}: cannot create a file in {here} ({e.strerror}): pass a folder on a normal disk"
    return ""


def hub_problem(model_id: str) -> str:
    """'' if hub id `model_id` can be loaded: it is in the local Hugging Face cache, or the hub knows it.
    Asked now (under a second), not after the rest of the start-up: a typo in an id otherwise ends
    in an OSError from the model load. Offline (HF_HUB_OFFLINE) the cache is all there is."""
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.utils import RepositoryNotFoundError
    flag = f"--model {model_id}"
    if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return ""  # downloaded before: loads offline
    cache = constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return (f"{flag}: not in the local Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set, so the "
                "hub is not asked: download it first (hf download ID) or pass a local folder")
    try:
        model_info(model_id, timeout=10)
    except RepositoryNotFoundError:
        return (f"{flag}: the Hugging Face hub has no such model (or it is private: log in with "
                f"hf auth login); not in the local cache ({cache}) either")
    except Exception as e:  # no network, a proxy, a timeout: say what was tried
        return (f"{flag}: not in the local Hugging Face cache ({cache}) and the hub could not be asked "
                f"({type(e).__name__}: {str(e)[:120]}): pass a local folder, or check the network")
    return ""


def validate_config(cfg: Config) -> list:
    """Every problem with `cfg`, one line each, found before anything heavy is loaded ([] = fine)."""
    problems = []
    flag = lambda name: "--" + name.replace("_", "-")
    for f in dataclasses.fields(Config):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            problems.append(f"{flag(f.name)} {v}: must be a finite number")
        elif f.name in AT_LEAST and v < AT_LEAST[f.name][0]:
            least, why = AT_LEAST[f.name]
            problems.append(f"{flag(f.name)} {v}: must be >= {least} ({why})")
        elif f.name in POSITIVE and v <= 0:
            problems.append(f"{flag(f.name)} {v}: must be > 0 ({POSITIVE[f.name]})")
    if math.isfinite(cfg.lr) and cfg.lr > MAX_LR:
        problems.append(f"--lr {cfg.lr}: must be <= {MAX_LR} (AdamW moves a weight by up to 7.3 x lr per step: "
                        "larger steps outgrow the weights themselves and can overflow them to inf; paper: 2e-6)")
    elif math.isfinite(cfg.lr * cfg.weight_decay) and cfg.lr * cfg.weight_decay >= 1:
        problems.append(f"--lr {cfg.lr} x --weight-decay {cfg.weight_decay} >= 1: the decay multiplies every "
                        "weight by 1 - lr x weight_decay per step, which must stay in (0, 1]")
    if not 0 < cfg.top_p <= 1 and math.isfinite(cfg.top_p):
        problems.append(f"--top-p {cfg.top_p}: must be in (0, 1] (a probability mass)")
    if not 0 <= cfg.alpha <= 1 and math.isfinite(cfg.alpha):
        problems.append(f"--alpha {cfg.alpha}: must be in [0, 1] (a mix weight)")
    if cfg.advantage not in ("grpo", "tmn", "tmn_reweight"):
        problems.append(f"--advantage {cfg.advantage!r}: must be grpo, tmn or tmn_reweight")
    if cfg.shard not in ("ddp", "fsdp"):
        problems.append(f"--shard {cfg.shard!r}: must be ddp or fsdp")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        problems.append(f"--precision {cfg.precision!r}: must be auto, fp32 or bf16")
    if cfg.attention not in ("auto", "flash", "torch"):
        problems.append(f"--attention {cfg.attention!r}: must be auto, flash or torch")
    if cfg.attention == "flash" and cfg.precision == "fp32":
        problems.append("--attention flash --precision fp32: flash-attn computes in bf16; use --precision bf16")
    if cfg.loss_agg not in ("token-mean", "seq-mean-token-mean"):
        problems.append(f"--loss-agg {cfg.loss_agg!r}: must be token-mean or seq-mean-token-mean")
    if cfg.keep_attention and not cfg.grad_checkpointing:
        problems.append("--keep-attention keeps attention outputs that gradient checkpointing would recompute: "
                        "it needs --grad-checkpointing (without it every activation is kept anyway)")
    if cfg.resume and cfg.overwrite:
        problems.append("--resume continues the run in --out-dir, --overwrite deletes it: give one of them")
    if cfg.checkpoint and not cfg.eval_only:
        problems.append("--checkpoint chooses what --eval-only evaluates; to continue a run use --resume")
    if math.isfinite(cfg.dual_clip) and cfg.dual_clip <= 1:
        problems.append(f"--dual-clip {cfg.dual_clip}: must be > 1 (it bounds the ratio from above)")
    if cfg.gen_prompts and cfg.gen_prompts < cfg.prompts_per_step:
        problems.append(f"--gen-prompts {cfg.gen_prompts}: must be 0 or >= --prompts-per-step "
                        f"{cfg.prompts_per_step} (each round draws the candidates a batch is filled from; "
                        "paper: 512 for 128)")
    builds = not cfg.data and not (cfg.eval_only and cfg.eval_data)  # tasks built from built-in docs
    if builds and cfg.context_tokens > cfg.max_prompt_tokens and not cfg.truncate_prompts:
        problems.append(f"--context-tokens {cfg.context_tokens} > --max-prompt-tokens {cfg.max_prompt_tokens}: "
                        "built prompts reach --context-tokens and longer ones are dropped; raise "
                        "--max-prompt-tokens or pass --truncate-prompts")
    if cfg.eval_every and not cfg.eval_data and (cfg.data or cfg.eval_per_task == 0):
        problems.append(f"--eval-every {cfg.eval_every}: no evaluation data ("
                        + ("--data has no held-out split" if cfg.data else "--eval-per-task is 0")
                        + "): pass --eval-data, or --eval-every 0")
    if cfg.model and not looks_like_path(cfg.model):
        problems.append(hub_problem(cfg.model))
    elif cfg.model:
        m = Path(cfg.model).expanduser()
        if not m.exists():
            problems.append(f"--model {cfg.model}: no such folder (a hub id looks like org/name)")
        elif not (m / "config.json").is_file():
            problems.append(f"--model {cfg.model}: no config.json there (not a Hugging Face model folder)")
        elif not any((m / t).is_file() for t in checkpoint.TOKENIZER_FILES):
            problems.append(f"--model {cfg.model}: no tokenizer file there (one of "
                            f"{', '.join(checkpoint.TOKENIZER_FILES)}); save the model's tokenizer into "
                            "the folder (tokenizer.save_pretrained)")
    for name in ("data", "eval_data"):
        if getattr(cfg, name) and not Path(getattr(cfg, name)).is_file():
            problems.append(f"{flag(name)} {getattr(cfg, name)}: no such file")
    out = Path(cfg.out_dir)
    problems.append(writable_problem("--out-dir", out))
    if not problems[-1] and (out / "checkpoints").exists() and not (out / "checkpoints").is_dir():
        problems[-1] = f"--out-dir {out}: {out / 'checkpoints'} is a file; checkpoints go in a folder of that name"
    return [x for x in problems if x]


def run_settings(given: dict) -> dict:
    """--eval-only on a run folder starts from the run's own config (out_dir/config.json): the same
    model, held-out split and generation limits. Fields that say what this command does are not taken;
    flags given on the command line win (applied after)."""
    path = Path(given.get("out_dir", Config.out_dir)) / "config.json"
    if not given.get("eval_only") or not path.exists():
        return {}
    skip = {"out_dir", "eval_only", "checkpoint", "resume", "overwrite", "plot", "recipe",
            "precision", "attention"}  # the last two describe the machine, not the run
    return {k: v for k, v in json.loads(path.read_text()).items()
            if k in {f.name for f in dataclasses.fields(Config)} - skip}


def parse_config(argv=None, doc: str = "") -> Config:
    """The command line (sys.argv when argv is None) -> a checked Config; exit 2 on any problem.
    doc: the --help description (train.py passes its own docstring)."""
    p = argparse.ArgumentParser(description=doc or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    cfg = dataclasses.replace(cfg, **{**run_settings(given), **given})
    problems = validate_config(cfg)
    if problems:  # every problem at once, one line each, exit code 2 (as argparse's own errors)
        p.exit(2, "".join(f"{p.prog}: error: {x}\n" for x in problems) + f"{p.prog} --help lists every field\n")
    return cfg

