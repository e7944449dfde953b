"""--shard fsdp (FSDP2) against --shard ddp and one process, on 2 CPU ranks with gloo.

    OMP_NUM_THREADS=1 python -m pytest -q test_fsdp.py

One torchrun launch runs five trainings back to back in each rank (train.main sets up and tears down
its process group each time), one in-process run is the reference, and the checks read what the runs
wrote: the final Hugging Face folders, metrics.jsonl and the log.

    ddp      2 ranks, 2 steps, checkpoint every step
    fsdp     2 ranks, 2 steps, checkpoint every step
    resume   fsdp's step-1 checkpoint, then --resume to step 2          == fsdp
             with --keep-attention (the attention outputs kept, not recomputed: the same bits)
    mixed    ddp's step-1 checkpoint, --resume under fsdp to step 2 (AdamW restarts), with one
             prompt per step and two mini-batches: one rank keeps no rows and joins by dummy passes;
             also the per-row forward (--no-shared-prefix) and the KL reference (--kl-coef)
    nan      fsdp, 1 step with a NaN loss: skipped, weights untouched
    one      1 process (in pytest), 2 steps                             == ddp == fsdp

Prompts per step 3 of 4 generated: the kept rows differ between ranks (8 and 4 when every group
has a learning signal), and --micro-batch-tokens 1100 makes several micro-batches per rank, so under
fsdp the shorter rank pads with dummy passes. The samples are the same in every run (see
per_prompt_generate for why and how); the sampler's own log-probs of them enter the loss through the
rollout IS weights.
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
import data
import rewards
import rollout
import tasks
import train
from conftest import tiny_qwen3

ROOT = Path(__file__).resolve().parent
REAL_GENERATE = rollout.generate


_FROZEN = []  # the initial tiny model, built on first use in each process


@torch.no_grad()
def per_prompt_generate(model, prompts, n, max_new_tokens, **kw):
    """Samples that are the same in every run; log-probs from the sampler actually handed in.

    A random model over Qwen's 151,936 tokens is nearly uniform, so weights that differ by 1e-8
    (summation order: 2 ranks vs 1, shards vs whole tensors) already flip ~1% of sampled tokens, and
    step 2 would train on other samples. So the tokens come from the frozen initial model, one prompt
    at a time with a seed of its own (its token ids: whichever rank holds it), and the sampler
    (`model`) scores them by teacher forcing: a stale or wrong weight sync changes the rollout
    log-probs, hence the IS weights and the update, and the weight checks below see it."""
    if not _FROZEN:
        _FROZEN.append(tiny_qwen3(seed=0))
    outs = [REAL_GENERATE(_FROZEN[0], [p], n, max_new_tokens, **{**kw, "seed": sum(p) % 100003})
            for p in prompts]
    T = max(o.tokens.shape[1] for o in outs)
    pad = lambda x, v: torch.nn.functional.pad(x, (0, T - x.shape[1]), value=v)
    tokens = torch.cat([pad(o.tokens, kw["pad_token_id"]) for o in outs])                 # [R, T]
    mask = torch.cat([pad(o.mask, False) for o in outs])
    lp = torch.zeros(tokens.shape)
    for j, p in enumerate(prompts):  # the n rows of prompt j: [n, P + T] through the sampler
        rows = slice(j * n, (j + 1) * n)
        ids = torch.cat([torch.tensor([p] * n), tokens[rows]], 1)
        hidden = model.model(ids).last_hidden_state[:, len(p) - 1:-1]                     # [n, T, H]
        logp = torch.log_softmax(model.lm_head(hidden).float() / kw["temperature"], -1)  # [n, T, V]
        lp[rows] = logp.gather(2, tokens[rows, :, None])[..., 0]
    return rollout.Rollout(tokens, mask, lp * mask, torch.cat([o.lengths for o in outs]),
                           torch.cat([o.truncated for o in outs]), {})


def length_reward(tasks, texts, answers, **kw):
    """A reward a random model earns unevenly: its response's length mod 5."""
    return [(len(t) % 5) / 4 for t in texts]


def args(d: Path, out: str, *extra) -> list:
    return ["--model", str(d / "model"), "--data", str(d / "tasks.jsonl"), "--out-dir", str(d / out),
            "--group-size", "4", "--prompts-per-step", "3", "--gen-prompts", "4", "--max-new-tokens", "8",
            "--max-gen-rounds", "1", "--lr", "1e-3", "--micro-batch-tokens", "1100", "--steps", "2",
            "--save-every", "1", *extra]


# Runs in each of the 2 ranks. Each train.main gets a fresh rendezvous store (its own port): reusing
# torchrun's store, a rank could read the other's address left over from the previous run and hang.
# Rank 0 copies the step-1 checkpoints before the runs that resume from them; rank 1 cannot get
# ahead, because train.main's process-group setup waits for every rank.
DRIVER = """
import os, shutil, sys
from pathlib import Path
sys.path.insert(0, {root!r})
import rewards, rollout, train, test_fsdp
rollout.generate = test_fsdp.per_prompt_generate
rewards.score_batch = test_fsdp.length_reward
d, rank, ports = Path({d!r}), int(os.environ["RANK"]), {ports!r}

def run(i, *argv):
    os.environ.update(MASTER_PORT=str(ports[i]), TORCHELASTIC_USE_AGENT_STORE="False")
    train.main(list(argv))

run(0, *test_fsdp.args(d, "ddp", "--shard", "ddp"))
run(1, *test_fsdp.args(d, "fsdp", "--shard", "fsdp"))
if rank == 0:
    for src, dst in (("fsdp", "resume"), ("ddp", "mixed")):
        shutil.copytree(d / src / "checkpoints" / "step_000001", d / dst / "checkpoints" / "step_000001")
run(2, *test_fsdp.args(d, "resume", "--shard", "fsdp", "--resume", "--keep-attention"))
run(3, *test_fsdp.args(d, "mixed", "--shard", "fsdp", "--resume", "--prompts-per-step", "1",
                       "--mini-batches", "2", "--no-shared-prefix", "--kl-coef", "0.1"))
real = train.grpo.policy_loss  # a NaN loss on every rank: the step must be skipped, weights untouched
train.grpo.policy_loss = lambda *a, **k: (real(*a, **k)[0] * float("nan"), real(*a, **k)[1])
run(4, *test_fsdp.args(d, "nan", "--shard", "fsdp", "--steps", "1"))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_weights(d: Path, out: str) -> dict:
    from safetensors.torch import load_file
    return load_file(d / out / "checkpoints" / "step_000002" / "model.safetensors")


def metrics(d: Path, out: str) -> list:
    return [json.loads(l) for l in open(d / out / "metrics.jsonl")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, qwen_tokenizer):
    """Every run above, once for all tests in this file; returns (folder, log of the 2-rank launch)."""
    d = tmp_path_factory.mktemp("fsdp")
    tiny_qwen3(seed=0).save_pretrained(d / "model")
    qwen_tokenizer.save_pretrained(d / "model")
    data.save_jsonl(tasks.build_tasks(tasks.load_documents(), qwen_tokenizer, 2, 400, seed=0), d / "tasks.jsonl")
    (d / "driver.py").write_text(DRIVER.format(root=str(ROOT), d=str(d), ports=[free_port() for _ in range(5)]))
    launch = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={free_port()}", str(d / "driver.py")], capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=d, timeout=300)
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-5000:]
    mp = pytest.MonkeyPatch()
    mp.setattr(rollout, "generate", per_prompt_generate)
    mp.setattr(rewards, "score_batch", length_reward)
    train.main(args(d, "one"))
    mp.undo()
    return d, launch.stdout + launch.stderr


def test_fsdp_equals_ddp_equals_one_process(runs):
    d, _ = runs
    one, ddp, fsdp = (final_weights(d, o) for o in ("one", "ddp", "fsdp"))
    init = tiny_qwen3(seed=0).state_dict()
    assert set(one) == set(ddp) == set(fsdp)
    assert any(not torch.equal(init[k], one[k]) for k in one), "the updates changed nothing"
    for k in one:
        # Adam moves every weight by ~lr (1e-3) per step whatever the gradient's scale, so summation
        # order shows up as ~1e-6; 1e-5 is 1% of one step
        assert torch.allclose(ddp[k], one[k], atol=1e-5), k
        assert torch.allclose(fsdp[k], one[k], atol=1e-5), k
    m1, m2, m3 = (metrics(d, o) for o in ("one", "ddp", "fsdp"))
    for a, b, c in zip(m1, m2, m3):
        assert a["kept_prompts"] == b["kept_prompts"] == c["kept_prompts"] >= 2
        assert a["reward/all/mean"] == pytest.approx(b["reward/all/mean"]) == pytest.approx(c["reward/all/mean"])
        # the clip uses the global norm: sharded gradients must add up to the unsharded norm
        assert c["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    # the sampler holds the trainer's weights at every step (on CPU both are float32): its log-probs
    # of the samples equal the training forward's up to summation order (~1e-7); a missed sync after
    # step 1 is off by the whole update (lr 1e-3 on every weight)
    for x in m1 + m2 + m3 + metrics(d, "resume") + metrics(d, "mixed"):
        assert abs(x["is_mismatch_kl"]) < 1e-5 and x["is_weight_mean"] == pytest.approx(1, abs=1e-5), x


def test_fsdp_holds_about_half_the_state_per_rank(runs):
    d, _ = runs
    ddp, fsdp = metrics(d, "ddp")[-1]["state_gib"], metrics(d, "fsdp")[-1]["state_gib"]
    params = sum(p.numel() for p in tiny_qwen3(seed=0).parameters())
    assert ddp == pytest.approx(16 * params / 2**30, rel=0.01)  # fp32 weights + grads + 2 AdamW moments
    assert fsdp <= 0.6 * ddp, (fsdp, ddp)


def test_fsdp_resume_equals_straight_run(runs):
    d, _ = runs
    straight, resumed = final_weights(d, "fsdp"), final_weights(d, "resume")
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    assert (d / "fsdp" / "checkpoints" / "step_000001" / "optimizer" / ".metadata").exists()
    state = torch.load(d / "fsdp" / "checkpoints" / "step_000001" / "trainer_state.pt", weights_only=True)
    assert "optimizer" not in state  # the AdamW shards live in optimizer/, not here
    assert not checkpoint.checkpoint_problem(d / "fsdp" / "checkpoints" / "step_000001")
    listed = json.loads((d / "fsdp" / "checkpoints" / "step_000001" / checkpoint.MARKER).read_text())["sizes"]
    assert any(k.startswith("optimizer/") for k in listed)  # the shards' sizes are verified on resume
    strip = lambda m: {k: v for k, v in m.items() if not k.endswith(("_s", "tokens_per_s", "peak_mem_gib"))}
    assert strip(metrics(d, "fsdp")[1]) == strip(metrics(d, "resume")[-1])


def test_ddp_checkpoint_resumes_under_fsdp_with_a_fresh_optimizer(runs):
    d, log = runs
    assert "AdamW's moments restart from zero" in log
    m = metrics(d, "mixed")[-1]
    assert m["step"] == 2 and m["kept_prompts"] == 1  # one prompt: the other rank ran dummy passes only
    start = final_weights(d, "ddp")  # not the same step 2: the optimizer restarted
    from safetensors.torch import load_file
    step1 = load_file(d / "ddp" / "checkpoints" / "step_000001" / "model.safetensors")
    mixed = final_weights(d, "mixed")
    assert all(torch.isfinite(v).all() for v in mixed.values())
    assert any(not torch.equal(step1[k], mixed[k]) for k in step1), "the resumed update changed nothing"
    assert any(not torch.allclose(start[k], mixed[k], atol=1e-6) for k in start)


def test_fsdp_checkpoint_is_a_hugging_face_folder_that_generates(runs):
    d, _ = runs
    from transformers import AutoModelForCausalLM
    path = d / "fsdp" / "checkpoints" / "step_000002"
    model = AutoModelForCausalLM.from_pretrained(path)
    saved = final_weights(d, "fsdp")
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved.get(k, saved.get("model.embed_tokens.weight"))), k  # lm_head is tied
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    out = model.generate(torch.tensor([[9707, 11]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 5)


def test_fsdp_non_finite_loss_skips_the_step(runs):
    d, log = runs
    assert metrics(d, "nan")[0]["skipped_steps"] == 1 and "step skipped" in log
    from safetensors.torch import load_file
    after = load_file(d / "nan" / "checkpoints" / "step_000001" / "model.safetensors")
    init = tiny_qwen3(seed=0).state_dict()
    assert all(torch.equal(init[k], v) for k, v in after.items())
