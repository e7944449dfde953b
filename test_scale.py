"""train.py at scale, tested on CPU: collectives that match across ranks whatever the data, too-long
prompts dropped at load, balanced kept rows, the paper recipe's sizes, the memory estimate, and an
update that would blow up the weights.

    OMP_NUM_THREADS=1 python -m pytest -q test_scale.py

The 2-rank runs use gloo and a tiny random Qwen3 (fixtures shared with test_train.py); each takes
well under a minute.
"""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import config
import data
import harness
import memory
import rollout
import train
from test_train import ROOT, args, free_port, metrics, tiny  # noqa: F401  (tiny is a fixture)

# -----------------------------------------------------------------------------
# Every collective runs the same number of times, in the same order, on every rank

RECORDING_DRIVER = """
import json, os, sys, torch
import torch.distributed as dist
sys.path.insert(0, {root!r})
import data, rewards, train

rank = int(os.environ.get("RANK", "0"))
calls = []  # (collective, tensor shape or None, op) in call order, this rank

def recorded(name, fn):
    def wrapped(*a, **k):
        t = next((x for x in a if isinstance(x, torch.Tensor)), None)
        calls.append([name, list(t.shape) if t is not None else None, str(k.get("op", ""))])
        return fn(*a, **k)
    return wrapped

for name in ("all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list",
             "barrier", "reduce", "gather_object", "scatter_object_list", "reduce_scatter", "all_to_all",
             "send", "recv"):
    setattr(dist, name, recorded(name, getattr(dist, name)))

# DDP all-reduces gradients from C++; a communication hook sees each bucket it sends
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
real_init = torch.nn.parallel.DistributedDataParallel.__init__
OUT = sys.argv[sys.argv.index("--out-dir") + 1]
def ddp_init(self, *a, **k):
    real_init(self, *a, **k)
    json.dump({{n: v for n, v in k.items() if isinstance(v, bool)}},
              open(os.path.join(os.path.dirname(OUT), f"ddp_flags_rank{{rank}}.json"), "w"))
    def hook(state, bucket):
        calls.append(["ddp_bucket", [bucket.buffer().numel()], ""])
        return allreduce_hook(state, bucket)
    self.register_comm_hook(None, hook)
torch.nn.parallel.DistributedDataParallel.__init__ = ddp_init

# Uneven data: rank 1 draws no prompt in step 1 (both rounds) and its groups never vary (it keeps no row:
# dummy backward); rank 0's rewards vary with the response (it keeps rows, several micro-batches).
if rank == 1:
    real_next, drawn = data.PromptBatches.next_batch, [0]
    def next_batch(self):
        drawn[0] += 1
        out = real_next(self)
        return [] if drawn[0] <= 2 else out
    data.PromptBatches.next_batch = next_batch
    rewards.score_batch = lambda tasks, texts, answers, **kw: [0.5] * len(texts)
else:
    rewards.score_batch = lambda tasks, texts, answers, **kw: [(len(t) % 5) / 4 for t in texts]

train.main(sys.argv[1:])
json.dump(calls, open(os.path.join(OUT, f"collectives_rank{{rank}}.json"), "w"))
"""


def child_pids(pid: int) -> list:
    """Processes whose parent is `pid` (Linux /proc): torchrun's ranks, which run in sessions of their own."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


def torchrun(driver: Path, argv: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Two gloo ranks on this machine. A hang fails the test after `timeout` seconds and kills both
    ranks (output goes to files: an orphaned rank holding a pipe would block the test forever)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", str(driver), *argv]
    log_out, log_err = cwd / "torchrun.out", cwd / "torchrun.err"
    with open(log_out, "w") as fo, open(log_err, "w") as fe:
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fo, stderr=fe)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in child_pids(p.pid):
                os.kill(pid, signal.SIGKILL)
            p.kill()
            p.wait()
            pytest.fail(f"2-rank run still running after {timeout} s (a hang?):\n{log_err.read_text()[-3000:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, log_out.read_text(), log_err.read_text())


def prompt_lengths(tiny, qwen_tokenizer) -> list:
    return [len(data.chat_ids(qwen_tokenizer, s.prompt)) for s in data.load_jsonl(tiny / "tasks.jsonl")]


@pytest.fixture(scope="module")
def uneven_run(tiny, qwen_tokenizer, tmp_path_factory):
    """One 2-rank run with uneven data; some prompts of the file are longer than --max-prompt-tokens."""
    d = tmp_path_factory.mktemp("uneven")
    driver = d / "driver.py"
    driver.write_text(RECORDING_DRIVER.format(root=str(ROOT)))
    lengths = sorted(prompt_lengths(tiny, qwen_tokenizer))
    limit = lengths[len(lengths) // 2]  # about half the prompts are too long
    argv = args(tiny, d / "out", "--steps", "2", "--prompts-per-step", "4", "--max-gen-rounds", "2",
                "--max-prompt-tokens", str(limit), "--micro-batch-tokens", str(limit + 20),
                "--mini-batches", "2", "--eval-every", "2", "--save-every", "1",
                "--eval-data", str(tiny / "tasks.jsonl"))
    proc = torchrun(driver, argv, d)
    return d / "out", proc, sum(L > limit for L in lengths)


def test_uneven_ranks_finish(uneven_run):
    out, proc, too_long = uneven_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert too_long > 0
    assert [m["step"] for m in metrics(out)] == [1, 2]
    # DDP keeps no second gradient-sized buffer
    assert json.load(open(out.parent / "ddp_flags_rank0.json"))["gradient_as_bucket_view"] is True
    assert all(m["dropped_too_long"] == too_long for m in metrics(out))


def test_collectives_identical_on_every_rank(uneven_run):
    out, proc, _ = uneven_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.load(open(out / "collectives_rank0.json"))
    r1 = json.load(open(out / "collectives_rank1.json"))
    names = {c[0] for c in r0}
    assert {"all_reduce", "all_gather_object", "ddp_bucket", "barrier"} <= names, names
    assert len(r0) == len(r1)
    for i, (a, b) in enumerate(zip(r0, r1)):
        assert a == b, (i, a, b)


# -----------------------------------------------------------------------------
# Too-long prompts are dropped and counted at load, never mid-run

def test_too_long_prompts_dropped_at_load(tiny, qwen_tokenizer, tmp_path, monkeypatch, capsys):
    """One prompt per step from a mix where about half are too long: every step runs (before, a step
    that drew only too-long prompts ended the run), and the count is reported once, before step 1."""
    monkeypatch.setattr(train.rewards, "score_batch", lambda tasks, texts, answers, **kw:
                        [(len(t) % 5) / 4 for t in texts])
    lengths = prompt_lengths(tiny, qwen_tokenizer)
    limit = sorted(lengths)[len(lengths) // 2]
    too_long = sum(L > limit for L in lengths)
    drawn = []
    real = data.encode_prompts
    def spy(samples, tok, max_prompt_tokens, **kw):
        ids, kept, counts = real(samples, tok, max_prompt_tokens, **kw)
        drawn.append(counts["dropped_too_long"])
        return ids, kept, counts
    monkeypatch.setattr(data, "encode_prompts", spy)
    train.main(args(tiny, tmp_path, "--steps", "4", "--prompts-per-step", "1", "--max-prompt-tokens", str(limit)))
    assert 0 < too_long < len(lengths)
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2, 3, 4]
    assert [m["dropped_too_long"] for m in metrics(tmp_path)] == [too_long] * 4
    assert f"data: {too_long} of {len(lengths)} training prompts are longer" in capsys.readouterr().out
    assert sum(drawn) == 0  # no step met a too-long prompt


# -----------------------------------------------------------------------------
# Kept rows spread evenly over the ranks

def test_pick_groups_balances_kept_rows_over_ranks():
    """8 ranks x 64 prompts, G=16, need 128, half the groups zero-variance (at random): filling rank
    by rank gave kept rows [624, 624, 400, 400, 0, 0, 0, 0]; now every rank is within one group."""
    g = torch.Generator().manual_seed(0)
    ranks, prompts, G, need = 8, 64, 16, 128
    flat = torch.randperm(ranks * prompts, generator=g) < ranks * prompts // 2   # True = zero variance
    all_rows = []
    for r in range(ranks):
        groups, rews = [], []
        for p in range(prompts):
            zero = bool(flat[r * prompts + p])
            groups += [(r, p)] * G
            rews += [0.0] * G if zero else torch.rand(G, generator=g).tolist()
        all_rows.append((groups, rews))
    keep = train.pick_groups(all_rows, need, filtering=True)
    rows = [len(k) for k in keep]
    assert sum(rows) == need * G
    assert max(rows) - min(rows) <= G, rows
    for (groups, rews), k in zip(all_rows, keep):   # only whole groups with a learning signal
        kept = {groups[i] for i in k}
        assert len(k) == len(kept) * G
        assert all(max(rews[i] for i in k if groups[i] == x) > min(rews[i] for i in k if groups[i] == x)
                   for x in kept)
    # a rank with fewer usable prompts than its share gives them all; the others make up the rest
    all_rows[0] = (all_rows[0][0], [0.0] * len(all_rows[0][1]))
    rows = [len(k) for k in train.pick_groups(all_rows, need, filtering=True)]
    assert rows[0] == 0 and sum(rows) == need * G and max(rows[1:]) - min(rows[1:]) <= G, rows


# -----------------------------------------------------------------------------
# The paper recipe's KV budget fits the recipe's own largest prompt

def test_paper_kv_budget_fits_the_largest_prompt():
    cfg = config.parse_config(["--recipe", "paper"])
    n, new, budget = cfg.group_size, cfg.max_new_tokens, cfg.kv_budget_tokens
    assert budget == cfg.max_prompt_tokens + n * new == 425_984
    lengths = [cfg.max_prompt_tokens, 120_000, 40_000, 30_000, 2_000, 100]   # one rank's prompts
    waves = rollout.plan_waves(lengths, n, new, budget)
    assert sorted(i for w in waves for i in w) == list(range(len(lengths)))
    assert all(rollout.wave_kv_tokens([lengths[i] for i in w], n, new) <= budget for w in waves)
    assert rollout.count_over_budget(lengths, waves, n, new, budget) == 0
    assert waves[0] == [0]  # the longest prompt fills a wave by itself
    # the old value (262,144) was below what a single 100-token prompt needs at G=16 x 16,384
    assert rollout.wave_kv_tokens([100], n, new) > 262_144


# -----------------------------------------------------------------------------
# The memory estimate, checked against a hand computation for Qwen3-4B

def test_memory_estimate_qwen3_4b_by_hand():
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cfg = Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
    with torch.device("meta"):  # shapes only, no memory
        n = sum(p.numel() for p in Qwen3ForCausalLM(cfg).parameters())
    # by hand, per layer: q 2560x4096 + k, v 2560x1024 each + o 4096x2560 + q/k norms 128 each
    # + MLP 3 x 2560x9728 + two RMSNorms 2560 = 100,930,816; x 36 layers + tied embedding
    # 151,936 x 2560 + final norm 2560
    assert n == 36 * 100_930_816 + 151_936 * 2560 + 2560 == 4_022_468_096
    kv = memory.wave_kv_positions(config.parse_config(["--recipe", "paper"]), world=8)
    assert kv == 163_840 + 16 * 16_384
    m = memory.memory_estimate(n, cfg, kv)
    assert m["weights"] == m["grads"] == 4 * n and m["adamw"] == 8 * n and m["sampler"] == 2 * n
    assert m["ddp_buckets"] == 0
    assert m["rollout_kv"] == 2 * 36 * 8 * 128 * 2 * 425_984 == 62_813_896_704  # 147,456 bytes a token
    assert m["total"] == 18 * 4_022_468_096 + 62_813_896_704 == 135_218_322_432  # 125.9 GiB: not 80 GB
    assert memory.memory_estimate(n, cfg, kv, bucket_view=False)["total"] == m["total"] + 4 * n
    # without a KV budget all of a rank's prompts of a round share one wave
    cfg0 = config.parse_config(["--recipe", "paper", "--kv-budget-tokens", "0"])
    assert memory.wave_kv_positions(cfg0, world=8) == 512 // 8 * (163_840 + 16 * 16_384)


# -----------------------------------------------------------------------------
# --recipe paper, scaled down by size flags only, on 2 gloo ranks

PAPER_DRIVER = """
import sys
sys.path.insert(0, {root!r})
import rewards, train
# a random model never writes </think>, so the real rewards would all be 0 and nothing would update;
# a reward that varies with the response stands in (the rewards are tested in test_rewards.py)
rewards.score_batch = lambda tasks, texts, answers, **kw: [(len(t) % 5) / 4 for t in texts]
train.main(sys.argv[1:])
"""

# the flags the test may set: sizes (and where the run reads and writes)
SIZES = {"steps": 2, "max_prompt_tokens": 2048, "max_new_tokens": 16, "group_size": 4,
         "prompts_per_step": 2, "gen_prompts": 4, "kv_budget_tokens": 2048 + 4 * 16}


def test_paper_recipe_scaled_down_on_two_ranks(tiny, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(PAPER_DRIVER.format(root=str(ROOT)))
    argv = ["--recipe", "paper", "--model", str(tiny / "model"), "--data", str(tiny / "tasks.jsonl"),
            "--out-dir", str(tmp_path / "out")]
    for k, v in SIZES.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    proc = torchrun(driver, argv, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    resolved = json.load(open(tmp_path / "out" / "config.json"))  # the full resolved config
    for k, v in config.PAPER.items():   # every recipe value other than sizes reached the run
        assert resolved[k] == SIZES.get(k, v), k
    assert set(SIZES) - {"steps"} <= set(config.PAPER)
    m = metrics(tmp_path / "out")
    assert [x["step"] for x in m] == [1, 2]
    assert all(x["lr"] <= config.PAPER["lr"] for x in m) and m[1]["lr"] > m[0]["lr"]  # warmup
    assert any(x["kept_prompts"] > 0 and "grad_norm" in x for x in m)
    from transformers import AutoModelForCausalLM
    import checkpoint
    init = AutoModelForCausalLM.from_pretrained(tiny / "model").state_dict()
    after = AutoModelForCausalLM.from_pretrained(checkpoint.latest_checkpoint(tmp_path / "out")).state_dict()
    assert any(not torch.equal(init[k], after[k]) for k in init), "the update changed nothing"


# -----------------------------------------------------------------------------
# The non-finite guard: a bad loss or gradient skips the step; the learning rate is bounded at start

def test_adamw_moves_a_weight_by_less_than_7_3_lr_whatever_the_gradients():
    """The bound config.MAX_LR rests on: |m_hat / (sqrt(v_hat) + eps)| < 7.3 for torch's default betas.
    Gradients growing by b2 / b1 per step are Cauchy-Schwarz's equality case and come closest (once
    the bias correction has faded: 3,000 steps, float64 to hold 1.11^3000); spikes and noise stay below."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = torch.optim.AdamW([w], lr=1.0, weight_decay=0.0)
    largest = torch.zeros(3, dtype=torch.float64)
    for t in range(3000):
        before = w.detach().clone()
        w.grad = torch.tensor([(0.999 / 0.9) ** t, 1e30 if t == 7 else 1e-30, float(torch.randn(())) * 10.0 ** (t % 9)],
                              dtype=torch.float64)
        opt.step()
        largest = torch.maximum(largest, (w.detach() - before).abs())
    assert 7.0 < float(largest[0]) < 7.3 and float(largest[1:].max()) < 7.3


def test_a_non_finite_gradient_skips_the_step_with_weights_and_adamw_untouched():
    net = torch.nn.Linear(3, 2)
    run = harness.Run(config.Config(), 0, 1, torch.device("cpu"), print, model=net, policy=net,
                      optimizer=torch.optim.AdamW(net.parameters(), lr=1e-3))
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.ones(1, 3)).sum().backward()
    net.weight.grad[0, 0] = float("inf")  # the loss was finite (bad = 0): the gradient norm tells
    norm, skipped = train.optimizer_step(run, 0.0)
    assert skipped and not math.isfinite(norm) and not run.optimizer.state
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    net(torch.ones(1, 3)).sum().backward()
    assert train.optimizer_step(run, 0.0)[1] is False and len(run.optimizer.state) == 2  # stepped


@pytest.mark.parametrize("flags, said", [
    (["--lr", "1e6"], "--lr 1000000.0: must be <= 1.0"),
    (["--lr", "1e39"], "--lr 1e+39: must be <= 1.0"),
    (["--lr", "0.5", "--weight-decay", "2"], "--lr 0.5 x --weight-decay 2.0 >= 1"),
])
def test_absurd_lr_is_refused_at_start(flags, said, capsys):
    with pytest.raises(SystemExit) as e:
        config.parse_config(flags)
    assert e.value.code == 2 and said in capsys.readouterr().err


def test_the_largest_lr_keeps_every_weight_finite(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(train.rewards, "score_batch", lambda tasks, texts, answers, **kw:
                        [(len(t) % 5) / 4 for t in texts])
    model = train.main(args(tiny, tmp_path, "--steps", "2", "--lr", str(config.MAX_LR), "--weight-decay", "0.5"))
    assert [m["skipped_steps"] for m in metrics(tmp_path)] == [0, 0]
    assert all(torch.isfinite(p).all() for p in model.parameters())
