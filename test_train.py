"""train.py end to end on a tiny random Qwen3 (CPU): steps, resume, checkpoints, DDP, bad states.

A random model earns no real reward, so most tests swap in a reward that depends on the response
text (its length mod 5): the rewards themselves are tested in test_rewards.py; here we need groups
whose rewards differ so that the update has something to do.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoint
import config
import data
import policy
import report
import rewards
import tasks
import train
from conftest import tiny_qwen3

ROOT = Path(__file__).resolve().parent


def length_reward(tasks, texts, answers, **kw):
    return [(len(t) % 5) / 4 for t in texts]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, qwen_tokenizer):
    """A tiny random Qwen3 folder with the real Qwen tokenizer, and a JSONL of built tasks for it."""
    d = tmp_path_factory.mktemp("tiny")
    tiny_qwen3(seed=0).save_pretrained(d / "model")
    qwen_tokenizer.save_pretrained(d / "model")
    samples = tasks.build_tasks(tasks.load_documents(), qwen_tokenizer, 2, 768, seed=0)
    data.save_jsonl(samples, d / "tasks.jsonl")
    return d


def args(tiny, out, *extra):
    return ["--model", str(tiny / "model"), "--data", str(tiny / "tasks.jsonl"), "--out-dir", str(out),
            "--group-size", "4", "--prompts-per-step", "2", "--max-new-tokens", "8", "--max-gen-rounds", "1",
            "--lr", "1e-3", "--micro-batch-tokens", "2000", *extra]


def metrics(out) -> list:
    return [json.loads(l) for l in open(Path(out) / "metrics.jsonl")]


def params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -----------------------------------------------------------------------------
# Config and small pure pieces

def test_help_lists_every_config_field(capsys):
    with pytest.raises(SystemExit):
        config.parse_config(["--help"])
    text = capsys.readouterr().out
    for f in config.dataclasses.fields(config.Config):
        assert f"--{f.name.replace('_', '-')}" in text, f.name


def test_recipe_paper_and_explicit_flags_win():
    cfg = config.parse_config(["--recipe", "paper", "--lr", "1e-6"])
    assert (cfg.group_size, cfg.prompts_per_step, cfg.gen_prompts, cfg.max_new_tokens) == (16, 128, 512, 16384)
    assert cfg.max_prompt_tokens == 163_840 and cfg.require_think and cfg.lr == 1e-6
    assert config.parse_config([]).lr == 1e-5
    with pytest.raises(SystemExit):
        config.parse_config(["--advantage", "ppo"])


def test_pick_groups_drops_zero_variance_and_surplus():
    # rank 0: groups a (varied), b (all equal); rank 1: c (varied), d (varied)
    r0 = (["a"] * 2 + ["b"] * 2, [0.0, 1.0, 0.5, 0.5])
    r1 = (["c"] * 2 + ["d"] * 2, [0.1, 0.2, 1.0, 0.0])
    assert train.pick_groups([r0, r1], need=2, filtering=True) == [[0, 1], [0, 1]]  # a, c; d surplus
    assert train.pick_groups([r0, r1], need=9, filtering=True) == [[0, 1], [0, 1, 2, 3]]
    assert train.pick_groups([r0, r1], need=9, filtering=False) == [[0, 1, 2, 3], [0, 1, 2, 3]]


def test_training_forward_equals_full_logits(tiny):
    """forward_logprobs (decoder + chunked head at response positions only, padded micro-batch)
    equals log_softmax of the model's own full logits, row by row."""
    from transformers import AutoModelForCausalLM
    lm = AutoModelForCausalLM.from_pretrained(tiny / "model", dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 1000, (n,), generator=g).tolist() for n in (5, 9, 3)]
    toks = torch.randint(0, 1000, (3, 6), generator=g)
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 4 + [0] * 2], dtype=torch.bool)
    rows = data.Rows(prompts, toks, mask, torch.zeros(3, 6), [0.0] * 3, ["t"] * 3, [0, 1, 2],
                      [False] * 3, [True] * 3)
    net = policy.Policy(lm, temperature=0.7, chunk=4)
    got = policy.forward_logprobs(net, rows, [0, 1, 2], pad_id=151643, device=torch.device("cpu"))
    for i in range(3):
        r = int(mask[i].sum())
        ids = torch.tensor([prompts[i] + toks[i, :r].tolist()])
        logits = lm(ids).logits[0, len(prompts[i]) - 1:-1] / 0.7                  # [r, V]
        want = torch.log_softmax(logits, -1).gather(1, toks[i, :r, None])[:, 0]
        assert torch.allclose(got[i, :r], want, atol=1e-5)
        assert (got[i, r:] == 0).all()


def test_micro_batches_respect_the_token_budget():
    rows = data.Rows([[1] * 10, [1] * 50, [1] * 10, [1] * 10], torch.zeros(4, 5, dtype=torch.long),
                      torch.ones(4, 5, dtype=torch.bool), torch.zeros(4, 5), [0.0] * 4, ["t"] * 4,
                      [0] * 4, [False] * 4, [True] * 4)
    mbs = policy.micro_batches(rows, [0, 1, 2, 3], budget=60)
    assert sorted(i for mb in mbs for i in mb) == [0, 1, 2, 3]
    for mb in mbs:
        width = max(len(rows.prompts[i]) + 5 for i in mb)
        assert len(mb) == 1 or width * len(mb) <= 60
    assert mbs == [[0], [1], [2, 3]]


# -----------------------------------------------------------------------------
# End to end

def test_two_steps_end_to_end(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    from transformers import AutoModelForCausalLM
    before = params(AutoModelForCausalLM.from_pretrained(tiny / "model"))
    model = train.main(args(tiny, tmp_path, "--steps", "2", "--save-every", "1", "--keep-last", "1"))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000002"]  # last K kept
    m = metrics(tmp_path)
    assert [x["step"] for x in m] == [1, 2]
    for x in m:
        tasks = {k.split("/")[1] for k in x if k.startswith("reward/") and k != "reward/all/mean"}
        assert tasks - {"all"}, x
        for t in tasks:
            for key in ("reward/{}/mean", "reward/{}/std", "zero_var_frac/{}", "response_len/{}",
                        "truncated_frac/{}", "format_ok_frac/{}"):
                assert key.format(t) in x, (key, t)
        for key in ("difficulty/mean_pass_rate", "pg_clipfrac", "ppo_kl", "pg_clipfrac_lower",
                    "is_weight_mean", "is_zeroed_frac", "is_veto_frac", "is_mismatch_kl", "grad_norm",
                    "rollout_s", "reward_s", "update_s", "gen_tokens_per_s", "update_tokens_per_s", "update_row_tokens_per_s",
                    "peak_mem_gib", "kept_prompts", "lr"):
            assert key in x, key
        assert any(k.startswith("pos_adv_frac/") for k in x) and any(k.startswith("pass_rate/") for k in x)
    after = params(model)
    assert any(not torch.equal(before[k], after[k]) for k in before), "the update changed nothing"
    # the checkpoint is a Hugging Face folder that loads and generates
    ckpt = checkpoint.latest_checkpoint(tmp_path)
    assert ckpt.name == "step_000002"
    loaded = AutoModelForCausalLM.from_pretrained(ckpt)
    for k, v in params(loaded).items():
        assert torch.equal(v, after[k]), k
    out = loaded.generate(torch.tensor([[9707, 11]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 5)


def test_shared_prefix_step_equals_per_row_step(tiny, tmp_path, monkeypatch):
    """One training step with the shared-prefix forward (default) and with the per-row one
    gives the same weights. Two optimizer steps per batch and a k3 reference, so the old-log-prob
    pass and the reference forward take the shared path too. Prompts here are 549-704 tokens and
    responses <= 8: under a 600-token budget some groups run whole and some are split into
    sub-groups that each carry their prompt."""
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    plans = []  # every shared micro-batch plan: (row -> prompt, micro-batches)
    real = policy.shared_micro_batches

    def spy(rows, idx, budget):
        plans.append(({i: tuple(rows.prompts[i]) for i in idx}, real(rows, idx, budget)))
        return plans[-1][1]
    monkeypatch.setattr(policy, "shared_micro_batches", spy)
    common = ("--steps", "1", "--mini-batches", "2", "--kl-coef", "0.1", "--micro-batch-tokens", "600")
    shared = params(train.main(args(tiny, tmp_path / "shared", *common)))
    per_row = params(train.main(args(tiny, tmp_path / "rows", *common, "--no-shared-prefix")))
    # micro-batches per prompt: 1 = the group ran whole (its prompt shared), > 1 = split
    spread = [len({j for j, mb in enumerate(mbs) for i in mb if prompt_of[i] == p})
              for prompt_of, mbs in plans for p in set(prompt_of.values())]
    assert 1 in spread and max(spread) > 1, spread
    init = tiny_qwen3(seed=0).state_dict()
    assert any(not torch.equal(init[k], shared[k]) for k in shared), "the update changed nothing"
    for k in shared:  # Adam moves each weight by ~lr = 1e-3; summation order shows as ~1e-6, and up to
        # ~2e-5 on a weight whose gradient is near 0 (Adam divides by its tiny second moment)
        assert torch.allclose(shared[k], per_row[k], atol=5e-5), k
    m1, m2 = metrics(tmp_path / "shared")[0], metrics(tmp_path / "rows")[0]
    assert m1["reward/all/mean"] == m2["reward/all/mean"]  # same samples
    # (not ppo_kl / clipfrac: update() averages those over micro-batches, whose plans differ here)
    assert m1["grad_norm"] == pytest.approx(m2["grad_norm"], rel=1e-4)


def test_resume_equals_straight_run(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    straight = params(train.main(args(tiny, tmp_path / "a", "--steps", "4")))
    train.main(args(tiny, tmp_path / "b", "--steps", "2"))
    resumed = params(train.main(args(tiny, tmp_path / "b", "--steps", "4", "--resume")))
    for k in straight:
        assert torch.allclose(straight[k], resumed[k], atol=1e-6), k
    timing = ("_s", "tokens_per_s", "peak_mem_gib")
    strip = lambda m: {k: v for k, v in m.items() if not k.endswith(timing)}
    assert [strip(m) for m in metrics(tmp_path / "a")] == [strip(m) for m in metrics(tmp_path / "b")]


def test_crash_while_saving_keeps_previous_checkpoint(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    real_save = torch.save

    def crash_on_step_2(obj, path, *a, **k):
        if "step_000002" in str(path):
            raise OSError("disk full (simulated)")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(train.torch, "save", crash_on_step_2)
    with pytest.raises(SystemExit) as e:  # one line, no traceback (test_run_safety.py)
        train.main(args(tiny, tmp_path, "--steps", "2", "--save-every", "1"))
    assert e.value.code == 1
    monkeypatch.setattr(train.torch, "save", real_save)
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_000001"  # the half-written one is ignored
    train.main(args(tiny, tmp_path, "--steps", "2", "--resume"))
    assert [x["step"] for x in metrics(tmp_path)] == [1, 2]
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_000002"


def test_non_finite_loss_skips_the_step(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    real = train.grpo.policy_loss
    monkeypatch.setattr(train.grpo, "policy_loss", lambda *a, **k: (real(*a, **k)[0] * float("nan"), real(*a, **k)[1]))
    from transformers import AutoModelForCausalLM
    before = params(AutoModelForCausalLM.from_pretrained(tiny / "model"))
    after = params(train.main(args(tiny, tmp_path, "--steps", "1")))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert metrics(tmp_path)[0]["skipped_steps"] == 1


def test_all_groups_filtered_out_leaves_weights(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rewards, "score_batch", lambda tasks, texts, answers, **kw: [0.5] * len(texts))
    from transformers import AutoModelForCausalLM
    before = params(AutoModelForCausalLM.from_pretrained(tiny / "model"))
    after = params(train.main(args(tiny, tmp_path, "--steps", "1")))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "all-equal rewards" in capsys.readouterr().out
    assert metrics(tmp_path)[0]["kept_prompts"] == 0


# -----------------------------------------------------------------------------
# DDP: two gloo ranks == one process over the same global batch

DRIVER = """
import os, sys, torch
sys.path.insert(0, {root!r})
import rollout, rewards, train

real = rollout.generate
def per_prompt(model, prompts, n, max_new_tokens, **kw):
    # each prompt sampled with a seed of its own, so the samples do not depend on how the prompts
    # are split between ranks; the real generate does the work
    outs = [real(model, [p], n, max_new_tokens, **{{**kw, "seed": sum(p) % 100003}}) for p in prompts]
    T = max(o.tokens.shape[1] for o in outs)
    pad = lambda x, v: torch.nn.functional.pad(x, (0, T - x.shape[1]), value=v)
    return rollout.Rollout(torch.cat([pad(o.tokens, kw["pad_token_id"]) for o in outs]),
                           torch.cat([pad(o.mask, False) for o in outs]),
                           torch.cat([pad(o.logprobs, 0.0) for o in outs]),
                           torch.cat([o.lengths for o in outs]), torch.cat([o.truncated for o in outs]), {{}})
rollout.generate = per_prompt
rewards.score_batch = lambda tasks, texts, answers, **kw: [(len(t) % 5) / 4 for t in texts]
model = train.main(sys.argv[1:])
torch.save(model.state_dict(), os.path.join(sys.argv[sys.argv.index("--out-dir") + 1],
                                            f"params_rank{{os.environ.get('RANK', '0')}}.pt"))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_match_one_process(tiny, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = args(tiny, "OUT", "--steps", "1", "--prompts-per-step", "4")
    one = [a if a != "OUT" else str(tmp_path / "one") for a in common]
    two = [a if a != "OUT" else str(tmp_path / "two") for a in common]
    subprocess.run([sys.executable, str(driver), *one], check=True, env=env, cwd=tmp_path, timeout=300)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={free_port()}", str(driver), *two],
                       env=env, cwd=tmp_path, timeout=300, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    # rank 0 alone prints; DDP's deprecation notice for broadcast_buffers is silenced
    assert r.stdout.count("attention kernels:") == 1 and r.stdout.count("training samples") == 1
    assert "broadcast_buffers" not in r.stderr
    p1 = torch.load(tmp_path / "one" / "params_rank0.pt", weights_only=True)
    r0 = torch.load(tmp_path / "two" / "params_rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "two" / "params_rank1.pt", weights_only=True)
    init = tiny_qwen3(seed=0).state_dict()
    assert any(not torch.equal(init[k], p1[k]) for k in p1), "the update changed nothing"
    for k in p1:
        assert torch.equal(r0[k], r1[k]), k                       # ranks stay identical
        # and equal the 1-process run. Adam's first step moves every weight by ~lr (1e-3) whatever
        # the gradient's scale, so a summation-order difference on a near-zero gradient shows up
        # as ~1e-6 here; 1e-5 is 1% of the step.
        assert torch.allclose(r0[k], p1[k], atol=1e-5), k
    # Adam hides a wrong gradient *scale*; the global gradient norm does not (the per-rank losses
    # must add up to the global token mean, times the world size that DDP's averaging divides out)
    m1, m2 = metrics(tmp_path / "one")[0], metrics(tmp_path / "two")[0]
    assert m1["kept_prompts"] == m2["kept_prompts"] == 4
    assert m1["reward/all/mean"] == pytest.approx(m2["reward/all/mean"])
    assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5)


def test_other_options_run(tiny, tmp_path, monkeypatch):
    """GRPO advantages, two optimizer steps per batch (the clip then matters), seq-mean-token-mean,
    a k3 KL to the frozen start, task-balanced batches, evaluation every step and --eval-only."""
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    evalset = data.load_jsonl(tiny / "tasks.jsonl")[::6]  # 3 prompts: evaluation is one sample each
    data.save_jsonl(evalset, tmp_path / "eval_data.jsonl")
    train.main(args(tiny, tmp_path, "--steps", "2", "--advantage", "grpo", "--mini-batches", "2",
                    "--loss-agg", "seq-mean-token-mean", "--kl-coef", "0.1", "--task-balanced",
                    "--eval-every", "1", "--eval-data", str(tmp_path / "eval_data.jsonl"), "--no-rollout-is"))
    m = metrics(tmp_path)
    assert len(m) == 2 and all("eval/mean" in x for x in m)
    # the second mini-batch is sampled from the policy before the first optimizer step: off-policy
    assert any(x["ppo_kl"] != 0 for x in m)
    assert not any(k.startswith("is_") for k in m[0])
    evals = [json.loads(l) for l in open(tmp_path / "evals.jsonl")]
    assert [e["step"] for e in evals] == [1, 2]
    train.main(args(tiny, tmp_path, "--eval-only", "--eval-data", str(tmp_path / "eval_data.jsonl"), "--resume"))
    evals = [json.loads(l) for l in open(tmp_path / "evals.jsonl")]
    assert len(evals) == 3 and evals[-1]["step"] == 2
    tasks = {s.task for s in evalset}
    assert {k.split("/")[1] for k in evals[-1] if k.startswith("eval/")} - {"mean"} == tasks


def test_bad_inputs_get_clear_messages(tiny, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit) as e:
        train.main(args(tiny, tmp_path) + ["--data", str(tmp_path / "empty.jsonl")])
    assert e.value.code == 2 and "the file is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # found at load, before step 1
        train.main(args(tiny, tmp_path, "--max-prompt-tokens", "50"))
    assert e.value.code == 2
    n = len(data.load_jsonl(tiny / "tasks.jsonl"))
    assert f"no usable training prompt: all {n} are longer than --max-prompt-tokens 50" in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_every_flag_passes_through_torchrun():
    """torchrun parses the whole command line and rejects an option that abbreviates one of its own
    (that is why the group size is --group-size, not --n): every flag must reach train.py intact."""
    from torch.distributed.run import get_args_parser
    flags = []
    for f in config.dataclasses.fields(config.Config):
        name = f"--{f.name.replace('_', '-')}"
        flags += [name] if isinstance(f.default, bool) else [name, str(f.default) or "x"]
        if isinstance(f.default, bool):
            flags += [f"--no-{f.name.replace('_', '-')}"]
    ns = get_args_parser().parse_args(["--nproc_per_node=2", "train.py", *flags])
    assert ns.training_script == "train.py" and ns.training_script_args == flags


def test_update_tokens_count_a_shared_prompt_once_and_per_row_once_per_response():
    """update_tokens_per_s is what the forward really runs; update_row_tokens_per_s the per-row count."""
    p1, p2 = list(range(3, 103)), list(range(5, 105))  # two prompts of 100 tokens, 4 responses of 5
    rows = data.Rows([p1] * 4 + [p2] * 4, torch.ones(8, 5, dtype=torch.long), torch.ones(8, 5, dtype=torch.bool),
                      torch.zeros(8, 5), [0.0] * 8, ["t"] * 8, [1] * 4 + [2] * 4, [False] * 8, [True] * 8)
    parts = train.mini_batch_parts(rows, config.Config())  # one optimizer step: all 8 rows
    assert report.update_tokens(rows, parts, 10_000, shared_prefix=True) == (2 * (100 + 4 * 5), 8 * 105)
    # a budget that splits each group in two: every sub-group runs its prompt again
    assert report.update_tokens(rows, parts, 110, shared_prefix=True)[0] == 4 * (100 + 2 * 5)
    assert report.update_tokens(rows, parts, 10_000, shared_prefix=False) == (8 * 105, 8 * 105)


FREED = """
import json, resource, sys, torch
sys.path.insert(0, {root!r})
import harness
print(harness.reuse_freed_memory(torch.device("cpu")))
faults = []
for _ in range(6):  # the same 16 MB block, allocated, every page touched, freed, six times
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(4 << 20)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del x
print(json.dumps(faults))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.parametrize("user_setting", [False, True])
def test_cpu_reuses_freed_activations(user_setting):
    """harness.reuse_freed_memory: a freed 16 MB block is served again from the heap, its pages already
    there (a fresh mapping, or a heap trimmed on free, page-faults all 4,096 of them again); a threshold
    the user set wins (here 1 MB: every block mapped and unmapped)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    if user_setting:
        env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    out = subprocess.run([sys.executable, "-c", FREED.format(root=str(Path(__file__).parent))],
                         capture_output=True, text=True, env=env, check=True).stdout.splitlines()
    faults = json.loads(out[1])
    assert out[0] == str(not user_setting)  # the user's threshold is left in place
    assert faults[0] > 3000, faults  # the first time the pages are new either way
    # (the first two or three also see torch's worker threads start, with their own arena and stacks)
    if user_setting:
        assert min(faults[3:]) > 3000, faults
    else:
        assert max(faults[3:]) < 300, faults
