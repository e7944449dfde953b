"""The code a GPU runs, run on CPU: bf16 autocast over float32 master weights, a bf16 sampler, and
flash-attn's kernels through the strict stand-in (stand_ins/flash_attn.py), in one process and on 2
gloo ranks under --shard ddp and --shard fsdp, with the KL reference and evaluation; plus the long
waits between ranks, the training-side memory transients and the CUDA-only choices.

    OMP_NUM_THREADS=1 python -m pytest -q test_gpu_path.py

What stays untested here is only the device: CUDA kernels, NCCL and the allocator (bench.py --only
gpu runs those on a GPU).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import memory
import policy
import config
import harness
import train
from conftest import STAND_INS
from test_scale import torchrun
from test_train import ROOT, args, metrics, tiny  # noqa: F401  (tiny is a fixture)

GPU_FLAGS = ["--attention", "flash", "--precision", "bf16", "--kl-coef", "0.01", "--eval-every", "1",
             "--steps", "2"]


# train.main with a reward a random model earns unevenly (its response's length mod 5): every step
# has a learning signal, so the update (forward, backward, step) really runs
DRIVER = """
import sys
sys.path.insert(0, {root!r})
import rewards, train
rewards.score_batch = lambda tasks, texts, answers, **kw: [(len(t) % 5) / 4 for t in texts]
train.main(sys.argv[1:])
"""


def driver(tmp_path):
    path = tmp_path / "driver.py"
    path.write_text(DRIVER.format(root=str(ROOT)))
    return path


def stand_in_env(monkeypatch, tmp_path):
    """The stand-in first on the path of every process started from here; its call counts logged."""
    log = tmp_path / "flash_calls.txt"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(STAND_INS), str(ROOT)]))
    monkeypatch.setenv("FLASH_ATTN_STAND_IN_LOG", str(log))
    return log


def calls(log) -> list:
    """Per process: (varlen calls, kvcache calls) that the stand-in logged at exit."""
    return [(int(w[3]), int(w[5])) for w in (line.split() for line in open(log))]


def test_one_process_runs_the_gpu_code_on_cpu(tiny, tmp_path, monkeypatch):
    log = stand_in_env(monkeypatch, tmp_path)
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, str(driver(tmp_path)),
                        *args(tiny, out, "--eval-data", str(tiny / "tasks.jsonl"), *GPU_FLAGS)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "attention kernels: flash" in p.stdout
    (varlen, kvcache), = calls(log)
    assert varlen > 0 and kvcache > 0  # training forward/backward and prefill; decode
    m = metrics(out)
    assert [x["step"] for x in m] == [1, 2] and all("eval/mean" in x for x in m)
    cfg = json.load(open(out / "config.json"))
    assert cfg["precision"] == "bf16" and cfg["attention"] == "flash"
    assert all("grad_norm" in x for x in m)  # both steps updated


@pytest.mark.parametrize("shard", ["ddp", "fsdp"])
def test_two_ranks_run_the_gpu_code_on_cpu(shard, tiny, tmp_path, monkeypatch):
    log = stand_in_env(monkeypatch, tmp_path)
    out = tmp_path / "out"
    argv = args(tiny, out, "--eval-data", str(tiny / "tasks.jsonl"), "--shard", shard, *GPU_FLAGS,
                "--prompts-per-step", "4")
    if shard == "fsdp":  # selective checkpointing's dispatch mode around FSDP2's gathers and hooks
        argv.append("--keep-attention")
    proc = torchrun(driver(tmp_path), argv, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    per_rank = calls(log)
    assert len(per_rank) == 2 and all(v > 0 and k > 0 for v, k in per_rank), per_rank
    m = metrics(out)
    assert [x["step"] for x in m] == [1, 2] and all("eval/mean" in x for x in m)
    assert all("grad_norm" in x for x in m)  # both steps updated


def test_flash_with_fp32_is_refused_at_start():
    with pytest.raises(SystemExit) as e:
        config.parse_config(["--attention", "flash", "--precision", "fp32"])
    assert e.value.code == 2


# -----------------------------------------------------------------------------
# Long waits between ranks: one rank's rollout far longer than the collectives' timeout

SLOW_RANK_DRIVER = """
import os, sys, time
sys.path.insert(0, {root!r})
import rewards, rollout, train
rewards.score_batch = lambda tasks, texts, answers, **kw: [(len(t) % 5) / 4 for t in texts]
if os.environ.get("RANK") == "1":  # rank 1's rollouts take 15 s longer than rank 0's
    real = rollout.generate
    def slow(*a, **k):
        time.sleep(15)
        return real(*a, **k)
    rollout.generate = slow
train.main(sys.argv[1:])
"""


def test_a_rank_that_generates_far_longer_does_not_time_out(tiny, tmp_path):
    """The collectives' timeout is 6 s here, rank 1 arrives 15 s late at every gather after a
    rollout: those gathers wait on the gloo group with --dist-timeout-min, so the run finishes.
    The control run puts the wait group's timeout at 6 s too and must fail."""
    driver = tmp_path / "driver.py"
    driver.write_text(SLOW_RANK_DRIVER.format(root=str(ROOT)))
    base = args(tiny, tmp_path / "out", "--steps", "1", "--prompts-per-step", "4",
                "--collective-timeout-min", "0.1")
    ok = torchrun(driver, [*base, "--dist-timeout-min", "5"], tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert [x["step"] for x in metrics(tmp_path / "out")] == [1]
    control = torchrun(driver, [*base[:base.index("--out-dir") + 1], str(tmp_path / "control"),
                                *base[base.index("--out-dir") + 2:], "--dist-timeout-min", "0.1"], tmp_path)
    assert control.returncode != 0 and "timed out" in control.stderr.lower(), control.stderr[-2000:]  # the test can fail


# -----------------------------------------------------------------------------
# Memory transients on the training side, and the CUDA-only choices

def test_sampler_is_built_one_parameter_at_a_time(make_tiny_qwen3):
    """No float32 copy of a parameter is ever made: the deepcopy sees only bf16 parameters; buffers
    (RoPE's inv_freq) keep their float32; ties stay tied."""
    model = make_tiny_qwen3()
    float_copies = []
    real = torch.Tensor.__deepcopy__

    def spy(self, memo):
        if isinstance(self, torch.nn.Parameter) and self.dtype == torch.float32:
            float_copies.append(tuple(self.shape))
        return real(self, memo)
    torch.Tensor.__deepcopy__ = spy
    try:
        sampler = policy.make_sampler(model, torch.bfloat16)
    finally:
        torch.Tensor.__deepcopy__ = real
    assert float_copies == []
    assert all(p.dtype == torch.bfloat16 for p in sampler.parameters())
    assert sampler.model.rotary_emb.inv_freq.dtype == torch.float32
    assert sampler.lm_head.weight is sampler.model.embed_tokens.weight
    for (n, p), q in zip(model.named_parameters(), sampler.parameters()):
        assert torch.equal(p.to(torch.bfloat16), q), n


def test_cuda_choices(tiny, monkeypatch):
    """Fused AdamW on CUDA and CPU (no foreach temporaries); expandable segments set before CUDA starts."""
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny / "model")
    cfg = config.parse_config(["--model", str(tiny / "model")])
    run = harness.Run(cfg, 0, 1, torch.device("cuda"), print, model=model)
    _, optimizer, _ = harness.make_optimizer(run)  # no tensor goes to the device here
    assert optimizer.defaults["fused"] is True
    _, optimizer, _ = harness.make_optimizer(harness.Run(cfg, 0, 1, torch.device("cpu"), print, model=model))
    assert optimizer.defaults["fused"] is True
    monkeypatch.setattr(harness, "setup_distributed", lambda cfg: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train.main(["--model", str(tiny / "model")])
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"


def test_cuda_timings_wait_for_the_gpu(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    harness.seconds_since(0.0, torch.device("cuda", 0))
    harness.seconds_since(0.0, torch.device("cpu"))
    assert synced == [torch.device("cuda", 0)]


def test_positions_beyond_the_model_are_refused_before_loading(tiny, capsys):
    cfg = config.parse_config(["--model", str(tiny / "model"), "--max-prompt-tokens", "32000",
                              "--max-new-tokens", "1000"])  # the tiny model has 32,768 positions
    with pytest.raises(SystemExit) as e:
        harness.check_positions(str(tiny / "model"), cfg)
    assert e.value.code == 2 and "rope_scaling" in capsys.readouterr().err


def test_paper_recipe_packs_a_quarter_group_per_micro_batch_and_fits_141_gb():
    """The recipe's longest prompt with 4 of its 16 longest responses in one micro-batch: a group is
    four sub-groups, its prompt run 4 times (16 with a micro-batch below a prompt plus two
    responses); by memory.phase_memory that fits a 141 GB GPU at 8 GPUs under fsdp, 8 would not."""
    p = config.PAPER
    P, G, R = p["max_prompt_tokens"], p["group_size"], p["max_new_tokens"]
    rows = type("Rows", (), {})()
    rows.prompts = [[1] * P] * G
    rows.mask = torch.ones(G, R, dtype=torch.bool)
    mbs = policy.shared_micro_batches(rows, list(range(G)), p["micro_batch_tokens"])
    assert [len(mb) for mb in mbs] == [4, 4, 4, 4]
    fits = lambda k: max(m["total"] for m in memory.phase_memory("Qwen3-4B", 8, "fsdp", P, G, R, k).values())  # noqa: E731
    assert fits(4) < 141 < fits(8)


def test_ddp_keeps_gradients_in_its_buckets_across_steps(tiny, tmp_path):
    """After an optimizer step under DDP the gradients are zeroed, not freed: freed, the next
    no_sync micro-batch allocates them outside DDP's buckets (a second copy of the gradients)."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = AutoModelForCausalLM.from_pretrained(tiny / "model")
        cfg = config.parse_config(["--model", str(tiny / "model")])
        run = harness.Run(cfg, 0, 1, torch.device("cpu"), print, model=model)
        _, run.optimizer, run.scheduler = harness.make_optimizer(run)
        run.policy = torch.nn.parallel.DistributedDataParallel(policy.Policy(model, 1.0, 64),
                                                               gradient_as_bucket_view=True)
        for _ in range(2):
            with run.policy.no_sync():  # an accumulation micro-batch, then the synced one
                policy.dummy_logprobs(run.policy, torch.device("cpu")).sum().backward()
            policy.dummy_logprobs(run.policy, torch.device("cpu")).sum().backward()
            train.optimizer_step(run, 0.0)
            grads = [p.grad for p in model.parameters() if p.requires_grad]
            assert all(g is not None and not g.any() for g in grads)
    finally:
        dist.destroy_process_group()


# -----------------------------------------------------------------------------
# On a GPU only (bench.py --only gpu runs these): the real kernels, whichever imports

cuda_device = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda_device
@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_cuda_device_training_forward_backward_bf16(family):
    """The first update's forward and backward on CUDA under bf16 autocast, with flash-attn when it
    imports (else torch's SDPA), as close to the float32 per-row reference as bf16 allows."""
    import attention
    from test_policy import make_model, make_rows
    dev = torch.device("cuda")
    net = policy.Policy(make_model(family).to(dev).train(), temperature=1.0, chunk=16)
    rows = make_rows(64, prompt_lens=[300, 40], group_sizes=[4, 3], T=24)
    mb = list(range(len(rows.prompts)))
    path = attention.choose("auto", dev, half=True)
    want = policy.forward_logprobs(net, rows, mb, 0, dev).detach()
    mask = rows.mask.to(dev)
    with attention.setting(net.lm), torch.autocast("cuda", dtype=torch.bfloat16):
        lp = policy.forward_logprobs_shared(net, rows, mb, 0, dev, attention=path)
        loss = -(lp * mask * torch.linspace(-1, 1, len(mb), device=dev)[:, None]).sum() / mask.sum()
        loss.backward()  # inside the setting: checkpointing's recompute (if on) uses it too
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
    assert float((lp.detach() - want)[mask].abs().max()) < 1.0  # bf16 on CPU: 0.08 (qwen3), 0.29 (llama)


@cuda_device
def test_cuda_device_rollout_bf16_matches_teacher_forcing():
    import rollout
    from conftest import tiny_llama
    from test_rollout import teacher_forced_logprobs
    model32 = tiny_llama(vocab_size=64, initializer_range=0.3).cuda()
    model = policy.make_sampler(model32)
    prompts = [list(range(3, 40)), list(range(5, 12))]
    ro = rollout.generate(model, prompts, 4, 16, temperature=0, eos_token_ids=2, pad_token_id=0)
    for r in range(8):
        L = int(ro.lengths[r])
        ref = teacher_forced_logprobs(model32.cpu(), prompts[r // 4], ro.tokens[r, :L].tolist(), 1.0)
        model32.cuda()
        assert float((ro.logprobs[r, :L].cpu() - ref).abs().max()) < 0.5  # bf16 rounding: ~0.2; a wrong kernel: nats
