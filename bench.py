"""Performance claims, each measured side by side with the obvious alternative in one run.

    python bench.py                    # every section
    python bench.py --only rewards     # one section (list: --help)
    python bench.py --only learn-tasks # held-out gains on the built tasks: GRPO, TMN, TMN-Reweight (~35 min)
    python bench.py --only trl         # one step here vs TRL's GRPOTrainer (pip install trl: bench only)
    python bench.py --only gpu         # the prepared check on a lent GPU (says so and returns on CPU)
    python bench.py --only rewards,logprobs   # several (or --only rewards --only logprobs)

The trl section lives in bench_trl.py, learn and learn-tasks in bench_learn.py; this file owns the
command line of all of them. Each section prints a small table and the ratio fast/plain. Numbers depend on the machine: the README
quotes them with the command and the hardware. No timing threshold lives in the unit tests.
"""

import argparse
import statistics
import time

from bench_learn import LEARN_LR, bench_learn, bench_learn_tasks
from bench_trl import bench_trl


def timeit(fn, repeat: int = 3) -> float:
    """Median wall seconds of `repeat` calls of fn()."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# -----------------------------------------------------------------------------
# rewards: median time per response per metric; ROUGE-L bit-parallel LCS vs plain DP

def bench_rewards(args):
    import random

    import rewards

    # Realistic text: Zipf-distributed words with some numbers, ~16K ROUGE tokens (a max-length response).
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)] + [str(i) for i in range(100)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    words = lambda n: " ".join(rng.choices(vocab, weights, k=n))  # noqa: E731
    long_text = "\n".join(words(16) for _ in range(1000))  # 16K tokens in 1,000 lines
    thinking = f"<think>{long_text}</think>"
    gold = {
        "precise_retrieval": ("w17 w3", "w17 w3"),
        "comprehension": ("The correct answer is (C)", "C"),
        "exhaustive_retrieval": ("w1\nw2\nw9", ["w1", "w2", "w3"]),
        "numerical_reasoning": ("so it is 3/4", "0.75"),  # no box, no "answer is": the last-number scan
        "structured_extraction": ('{"data": [["a", 1], ["b", 2]]}', '{"data": [["a", 1], ["c", 3]]}'),
        "structured_matching": ("w1\nw2", ["w1", "w2", "w3"]),
        "graded_ranking": ("w3\nw2\nw1", ["w1", "w2", "w3"]),
        "sequence_ordering": ("w1\nw3\nw2", ["w1", "w2", "w3"]),
        "summarization": (words(300), words(1000)),
    }
    print(f"median ms per response over 20 calls; response = {len(long_text):,} chars of thinking + answer, "
          f"or the same text as the answer itself")
    print(f"{'task':24s} {'metric':18s} {'score(think+ans)':>17s} {'metric(16K answer)':>19s}")
    for task, (answer_part, g) in gold.items():
        metric = rewards.REWARDS[task][0]
        t_score = timeit(lambda: rewards.score(task, thinking + answer_part, g, require_think=True), 20)
        t_long = timeit(lambda: metric(long_text + "\n" + answer_part, g), 20)
        print(f"{task:24s} {metric.__name__:18s} {t_score * 1e3:17.3f} {t_long * 1e3:19.3f}")

    # ROUGE-L's LCS at 16K x 1K tokens: bit-parallel over Python ints vs the plain O(n*m) DP.
    pred, ref = rewards.tokens(long_text), rewards.tokens(words(1000))
    fast = timeit(lambda: rewards.lcs_length(pred, ref), 5)
    t = time.perf_counter()
    same = rewards.lcs_length_dp(pred, ref) == rewards.lcs_length(pred, ref)
    plain = time.perf_counter() - t
    print(f"\nLCS {len(pred):,} x {len(ref):,} tokens: bit-parallel {fast * 1e3:.1f} ms, plain DP "
          f"{plain * 1e3:.0f} ms (1 run), ratio plain/fast {plain / fast:.0f}x, same length: {same}")

    # score_batch: a loop vs a spawned process pool, 512 max-length summaries.
    n = 512
    tasks, responses, answers = ["summarization"] * n, [thinking + words(300)] * n, [words(1000)] * n
    loop = timeit(lambda: rewards.score_batch(tasks, responses, answers), 1)
    pool = timeit(lambda: rewards.score_batch(tasks, responses, answers, processes=2), 1)
    print(f"score_batch {n} summaries: loop {loop:.2f} s, 2-process pool {pool:.2f} s "
          f"(incl. start-up), ratio {loop / pool:.2f}x")


# -----------------------------------------------------------------------------
# rollout: rollout.generate (shared prefix) vs model.generate(num_return_sequences=n)

def bench_rollout(args):
    """rollout.generate vs model.generate(num_return_sequences=n, do_sample=True): same model, prompt,
    n=8 and 32 new tokens, for the embedded SmolLM2-135M and a tiny random Qwen3 with the real Qwen
    tokenizer, prompts of 512 / 1K / 2K tokens (this file's neighbour rollout.py, tokenized and tiled).

    Each measurement runs in a fresh process. Memory = growth of the process's peak RSS during the
    call (the peak mark is reset through /proc/self/clear_refs right before it; Linux only), i.e. all
    CPU memory the call added: KV cache, activations, logits. MALLOC_MMAP_THRESHOLD_=256 KiB makes
    glibc unmap most freed buffers of that size or more instead of keeping them for reuse, so RSS
    follows them; free heap space left by the warm-up can still serve a request unseen, so growths of
    a few tens of MiB (the tiny Qwen3 rows, dominated by [8, 151936] logits buffers) are at the
    resolution of this method. The KV column is computed, not measured: rollout's allocated caches vs
    the n x (prompt + new) per-row cache that generate keeps.
    EOS is disabled in both (min_new_tokens for generate, an out-of-vocabulary EOS id for rollout) so
    both produce n x 32 tokens. One run each after a 16-token warm-up. The machine may be shared: the
    load average is printed per row, and a row measured under load is not comparable."""
    import json
    import os
    import subprocess
    import sys
    worker = """
import gc, json, sys, time, torch
sys.path.insert(0, {root!r})
MODEL, L, N, NEW, WAY = {model!r}, {L}, {n}, {new}, {way!r}

def status(key):  # bytes, from /proc/self/status
    return next(int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith(key))

if MODEL == "smollm2":
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from policy import embedded_model_dir
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32).eval()
else:
    from conftest import build_qwen_tokenizer, tiny_qwen3
    tok, model = build_qwen_tokenizer(), tiny_qwen3()
ids = tok(open({root!r} + "/rollout.py").read())["input_ids"]
prompt = (ids * (L // len(ids) + 1))[:L]
cfg = model.config
pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
per_token_kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4  # K and V, fp32

def run(p, n, new):  # -> (generated tokens, KV bytes)
    torch.manual_seed(0)
    if WAY == "rollout":
        from rollout import generate
        ro = generate(model, [p], n, new, eos_token_ids=[cfg.vocab_size], pad_token_id=pad, seed=0)
        return int(ro.mask.sum()), ro.stats["kv_bytes"]
    x = torch.tensor([p])
    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0,
                         top_p=1.0, top_k=0, num_return_sequences=n, max_new_tokens=new,
                         min_new_tokens=new, pad_token_id=pad)
    return (out.shape[1] - len(p)) * n, n * (len(p) + new) * per_token_kv

run(prompt[:16], 2, 2)  # warm-up: first-call costs out of the timing, little memory kept
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark to the current RSS
base = status("VmRSS:")
t, cpu = time.perf_counter(), time.process_time()
tokens, kv = run(prompt, N, NEW)
dt, cpu = time.perf_counter() - t, time.process_time() - cpu
print(json.dumps(dict(seconds=dt, cpu=cpu, tokens=tokens, peak=status("VmHWM:") - base, kv=kv)))
"""
    root = os.path.dirname(os.path.abspath(__file__))
    n, new, MiB = 8, 32, 2 ** 20
    print(f"rollout.generate vs model.generate(num_return_sequences={n}, do_sample=True), {new} new "
          f"tokens, fp32, CPU ({os.cpu_count()} cores), fresh process per row, EOS disabled in both")
    print("peak = growth of peak RSS during the call (measured); KV = cache size (computed); "
          "load = 1-min load average after the row (a quiet machine reads about 2: this run's threads)")
    print(f"{'model':10s} {'prompt':>6s} {'way':9s} {'seconds':>8s} {'CPU s':>7s} {'tok/s':>7s} "
          f"{'peak MiB':>9s} {'KV MiB':>7s} {'load':>5s}")
    ratios = []
    for model in ("smollm2", "qwen3-tiny"):
        for L in (512, 1024, 2048):
            res = {}
            for way in ("generate", "rollout"):
                code = worker.format(root=root, model=model, L=L, n=n, new=new, way=way)
                env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(256 * 1024))
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    raise RuntimeError(f"bench worker {model} {L} {way} failed:\n{out.stderr[-3000:]}")
                r = res[way] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{model:10s} {L:6d} {way:9s} {r['seconds']:8.2f} {r['cpu']:7.2f} "
                      f"{r['tokens'] / r['seconds']:7.1f} {r['peak'] / MiB:9.1f} {r['kv'] / MiB:7.1f} "
                      f"{os.getloadavg()[0]:5.1f}", flush=True)
            g, o = res["generate"], res["rollout"]  # same token count, so time ratios = speed ratios
            ratios.append((model, L, g["seconds"] / o["seconds"], g["cpu"] / o["cpu"],
                           o["peak"] / max(g["peak"], 1), o["kv"] / g["kv"]))
    print("\nrollout vs generate: speed = tok/s ratio by wall time and by CPU time (higher is better), "
          "peak memory and KV ratios (lower is better; peaks of a few tens of MiB, as for the tiny "
          "Qwen3, are at the resolution of the RSS method: read its KV column)")
    for model, L, speed, speed_cpu, mem, kv in ratios:
        print(f"{model:10s} {L:6d}  speed x{speed:5.2f} (CPU x{speed_cpu:5.2f})  peak memory x{mem:5.2f}  "
              f"KV x{kv:5.2f}")


# -----------------------------------------------------------------------------
# logprobs: grpo.token_logprobs (chunked) vs naive full-vocab log_softmax, peak memory and time

LOGPROB_WORKER = """
import resource, sys, time, torch
sys.path.insert(0, {root!r})
from grpo import token_logprobs
N, V, H, way = {N}, {V}, {H}, {way!r}
torch.manual_seed(0)
h = torch.randn(N, H, requires_grad=True)
W = (torch.randn(V, H) / H ** 0.5).requires_grad_(True)
y = torch.randint(0, V, (N,))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if way == "naive":
    lp = torch.log_softmax(h @ W.T, -1).gather(1, y[:, None])[:, 0]
else:
    lp = token_logprobs(h, W, y, chunk_size=1024)
lp.sum().backward()
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(dt, (peak - base) / 2**20)  # ru_maxrss is in KiB on Linux -> GiB
"""


def bench_logprobs(args):
    """Forward + backward of the response log-probs at 8K tokens and Qwen's 151,936-row vocabulary.
    Each way runs in a fresh process, so the peak-RSS growth it reports is its own (CPU memory; on a
    GPU the same ratio holds for torch.cuda.max_memory_allocated)."""
    import os
    import subprocess
    import sys
    N, V, H = 8192, 151936, 128
    root = os.path.dirname(os.path.abspath(__file__))
    res = {}
    for way in ("naive", "chunked"):
        code = LOGPROB_WORKER.format(root=root, N=N, V=V, H=H, way=way)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        res[way] = [float(x) for x in out.stdout.split()]
    print(f"log-probs fwd+bwd, N={N} tokens, V={V}, H={H} (fp32, CPU, fresh process each)")
    print(f"{'way':10s} {'seconds':>8s} {'peak RSS growth GiB':>20s}")
    for way, (dt, gib) in res.items():
        print(f"{way:10s} {dt:8.2f} {gib:20.2f}")
    print(f"chunked / naive: time x{res['chunked'][0] / res['naive'][0]:.2f}, "
          f"peak memory x{res['chunked'][1] / res['naive'][1]:.3f}")


# -----------------------------------------------------------------------------
# prefix: the training forward+backward with the prompt shared by the group vs one row per response

PREFIX_WORKER = """
import functools, gc, json, sys, time, torch
from types import SimpleNamespace
sys.path.insert(0, {root!r})
import attention, grpo, packing, policy
from transformers import AutoModelForCausalLM
P, G, R, WAY = {P}, {G}, {R}, {way!r}
if WAY == "call-each":  # the shared packing with the kernel CUDA's torch path runs: one call per response
    packing.packed_torch = functools.partial(packing.packed_torch, split_keys=False)

def status(key):  # bytes, from /proc/self/status
    return next(int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith(key))

lm = AutoModelForCausalLM.from_pretrained(policy.embedded_model_dir(), dtype=torch.float32,
                                          attn_implementation="sdpa")
lm.activation_checkpointing_enable()  # as train.py (--grad-checkpointing is on by default)
lm.train()
net = policy.Policy(lm, temperature=1.0, chunk=1024)
forward = policy.forward_logprobs if WAY == "per-row" else policy.forward_logprobs_shared

def group(p, r):  # one prompt of p tokens, G responses of r tokens (random ids: timing only)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, lm.config.vocab_size, (p,), generator=g).tolist()
    return SimpleNamespace(prompts=[prompt] * G, tokens=torch.randint(0, lm.config.vocab_size, (G, r), generator=g),
                           mask=torch.ones(G, r, dtype=torch.bool))

def step(rows):  # train.update's work for one micro-batch holding the whole group
    with attention.setting(lm):  # both ways: checkpointing's recompute runs in it too
        lp = forward(net, rows, list(range(G)), 0, torch.device("cpu"))
        loss, _ = grpo.policy_loss(lp, lp.detach(), torch.linspace(-1, 1, G), rows.mask, 0.2, 0.28, 3.0,
                                   None, "token-mean", num_tokens=int(rows.mask.sum()))
        loss.backward()

step(group(16, 4))  # warm-up: first-call costs, and the gradient buffers (the same for both ways)
for p in net.parameters():
    p.grad.zero_()  # kept allocated
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark to the current RSS
base = status("VmRSS:")
t, cpu = time.perf_counter(), time.process_time()
step(group(P, R))
dt, cpu = time.perf_counter() - t, time.process_time() - cpu
print(json.dumps(dict(seconds=dt, cpu=cpu, peak=status("VmHWM:") - base)))
"""


def bench_prefix(args):
    """forward + backward of the policy loss for one group on the embedded SmolLM2-135M (fp32, CPU,
    gradient checkpointing on as in train.py): G=8 responses of R=48 tokens after a prompt of P
    tokens, per-row (policy.forward_logprobs: G rows [prompt, r_j], G*(P+R) tokens) vs shared
    (policy.forward_logprobs_shared: one packed [prompt, r_1..r_G], P+G*R tokens), and shared with
    one attention call per response (call-each: the torch kernel off CPU) instead of CPU's split keys
    (packing.responses_split_keys); the whole group in one micro-batch each way. Each measurement runs in a fresh process; peak = growth of peak RSS
    during the call (as in the rollout section), gradient buffers allocated by a warm-up before, so
    the column is the activations, masks and temporaries of the forward and backward. The 2K prompt
    runs first (its ratio is the headline), the load average is printed per row."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.abspath(__file__))
    G, R, MiB = 8, 48, 2 ** 20
    print(f"shared-prefix training forward+backward, SmolLM2-135M, G={G}, R={R}, fp32, CPU "
          f"({os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
          f"fresh process per row")
    print(f"{'prompt':>6s} {'way':9s} {'tokens':>7s} {'seconds':>8s} {'CPU s':>7s} {'peak MiB':>9s} {'load':>5s}")
    res = {}
    for P in (2048, 1024, 4096):
        for way in ("per-row", "call-each", "shared"):
            code = PREFIX_WORKER.format(root=root, P=P, G=G, R=R, way=way)
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(256 * 1024))
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"bench worker P={P} {way} failed:\n{out.stderr[-3000:]}")
            r = res[P, way] = json.loads(out.stdout.strip().splitlines()[-1])
            tokens = G * (P + R) if way == "per-row" else P + G * R
            print(f"{P:6d} {way:9s} {tokens:7d} {r['seconds']:8.2f} {r['cpu']:7.2f} {r['peak'] / MiB:9.1f} "
                  f"{os.getloadavg()[0]:5.1f}", flush=True)
    print("\nshared vs per-row: speed = time ratio (higher is better), peak memory ratio (lower is better)")
    for P in (1024, 2048, 4096):
        a, b = res[P, "per-row"], res[P, "shared"]
        print(f"P={P:5d}  tokens x{(P + G * R) / (G * (P + R)):.3f}  speed x{a['seconds'] / b['seconds']:5.2f} "
              f"(CPU x{a['cpu'] / b['cpu']:5.2f})  peak memory x{b['peak'] / max(a['peak'], 1):5.2f}")
    print("split keys vs one call per response (both shared): speed x"
          + ", ".join(f"{res[P, 'call-each']['seconds'] / res[P, 'shared']['seconds']:.2f} at P={P}"
                      for P in (1024, 2048, 4096)))
    a, b = res[2048, "per-row"], res[2048, "shared"]
    print(f"shared-prefix update: speed x{a['seconds'] / b['seconds']:.2f}, "
          f"peak memory x{b['peak'] / max(a['peak'], 1):.2f}")


# -----------------------------------------------------------------------------
# profile: where a default step's time goes

def bench_profile(args):
    """Two steps of the embedded default (`python train.py --steps 2`), each phase timed by wrapping
    the function that runs it: generation, scoring, old log-probs, the whole update (train.update) with
    its training forwards (train.logprobs) and its optimizer step split into the global-norm clip and
    AdamW itself; plus the sampler sync and the checkpoint save."""
    import collections
    import tempfile

    import torch

    import harness
    import policy
    import rewards
    import rollout
    import train
    spent = collections.defaultdict(float)

    def timed(mod, name, key):
        real = getattr(mod, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            out = real(*a, **k)
            spent[key] += time.perf_counter() - t
            return out
        setattr(mod, name, wrapper)
        return real
    reals = [(rollout, "generate"), (rewards, "score_batch"), (train, "old_logprobs"), (train, "update"),
             (train, "logprobs"), (train, "optimizer_step"), (policy, "clip_grad_norm"),
             (torch.optim.AdamW, "step"), (policy, "sync_sampler"), (harness, "save_step")]
    keys = ["generation (rollout.generate)", "scoring (rewards.score_batch)", "old log-probs (none at 1 mini-batch)",
            "update (train.update, all of it)", "  of which the training forward", "  of which the optimizer step",
            "    the gradient-norm clip", "    AdamW",
            "sampler sync", "checkpoint save"]
    saved = [(mod, name, timed(mod, name, key)) for (mod, name), key in zip(reals, keys)]
    t = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="golongrl-profile-") as out:  # its checkpoint: 1.6 GB
            train.main(["--steps", "2", "--out-dir", out, "--save-minutes", "0"])
    finally:
        for mod, name, real in saved:
            setattr(mod, name, real)
    total = time.perf_counter() - t
    print("(the run's folder named above, its checkpoint and metrics, was temporary and is removed)")
    print("\nseconds over 2 default steps (python train.py --steps 2):")
    for key in keys:
        print(f"  {key:44s} {spent[key]:6.1f}")
    print(f"  {'the whole run (model load and data build too)':44s} {total:6.1f}")


# -----------------------------------------------------------------------------
# gpu: the prepared check for a lent GPU (one command, a few minutes, no network)

def bench_gpu(args):
    """On one CUDA GPU: the CUDA-only tests, a 3-step default run in bf16 with its peak memory against
    memory.memory_estimate, and rollout.generate against model.generate at a long prompt (decode
    tokens/s). Says which attention kernels ran (flash-attn when it imports, else torch's SDPA).
    Without CUDA it says so and returns."""
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import torch
    if not torch.cuda.is_available():
        print("no CUDA device: this section runs on a GPU node (python bench.py --only gpu)")
        return
    import attention
    fa = attention.flash_attn_module()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, "
          f"flash_attn {getattr(fa, '__version__', 'imports') if fa else 'does not import: torch SDPA kernels'}")
    t = time.perf_counter()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "test_gpu_path.py", "-k", "cuda_device"],
                           capture_output=True, text=True)
    print(f"CUDA-only tests ({time.perf_counter() - t:.0f} s): " + (tests.stdout.strip().splitlines() or ["?"])[-1])
    out = Path(tempfile.mkdtemp(prefix="golongrl-gpu-"))
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "train.py", "--steps", "3", "--out-dir", str(out)],
                         capture_output=True, text=True)
    print(f"default run, 3 steps, bf16: exit {run.returncode} in {time.perf_counter() - t:.0f} s; "
          + next((line for line in run.stdout.splitlines() if line.startswith("attention kernels")), ""))
    if run.returncode == 0:
        import config
        import memory
        import policy
        m = [json.loads(line) for line in open(out / "metrics.jsonl")]
        cfg = config.Config(**{k: v for k, v in json.load(open(out / "config.json")).items()
                               if k in config.Config.__dataclass_fields__})
        from transformers import AutoConfig
        mc = AutoConfig.from_pretrained(policy.embedded_model_dir())
        n = sum(p.numel() for p in policy.load_model(str(policy.embedded_model_dir()), torch.device("cpu")).parameters())
        est = memory.memory_estimate(n, mc, memory.wave_kv_positions(cfg, 1))
        print(f"peak allocated per step (GiB): {[round(x['peak_mem_gib'], 2) for x in m]}; estimate before "
              f"activations {est['total'] / 2**30:.2f} GiB; update tokens/s {[round(x.get('update_tokens_per_s', 0)) for x in m]}")
    else:
        print(run.stderr[-2000:])
    # rollout vs model.generate, SmolLM2 in bf16 on the GPU, one long prompt, n = 8
    import policy
    import rollout
    model = policy.make_sampler(policy.load_model(str(policy.embedded_model_dir()), torch.device("cuda")))
    for P in (2048, 8000):
        prompt = torch.randint(10, model.config.vocab_size, (P,), generator=torch.Generator().manual_seed(0)).tolist()
        n, new = 8, 128
        kw = dict(temperature=1.0, eos_token_ids=[model.config.vocab_size + 1], pad_token_id=0, seed=0)
        rollout.generate(model, [prompt[:64]], n, 4, **kw)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        ro = rollout.generate(model, [prompt], n, new, **kw)
        torch.cuda.synchronize()
        ours, ours_mem = time.perf_counter() - t, torch.cuda.max_memory_allocated()
        x = torch.tensor([prompt], device="cuda")
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, num_return_sequences=n,
                           max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
        torch.cuda.synchronize()
        hf, hf_mem = time.perf_counter() - t, torch.cuda.max_memory_allocated()
        print(f"rollout prompt {P} x n={n} x {new} new ({ro.stats['attention']}): {ours:.2f} s, decode "
              f"{ro.stats['generated_tokens'] / max(ro.stats['decode_s'], 1e-9):.0f} tok/s, peak {ours_mem / 2**30:.2f} GiB"
              f" | model.generate (sdpa): {hf:.2f} s, peak {hf_mem / 2**30:.2f} GiB | x{hf / ours:.1f} faster")


SECTIONS = {"rewards": bench_rewards, "rollout": bench_rollout, "logprobs": bench_logprobs,
            "prefix": bench_prefix, "learn": bench_learn, "learn-tasks": bench_learn_tasks,
            "profile": bench_profile, "trl": bench_trl,
            "gpu": bench_gpu}


def parse_args(argv=None) -> argparse.Namespace:
    """--only takes one or more sections, comma separated or repeated: --only rewards,rollout."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", default=[], metavar="SECTION[,SECTION...]",
                   help=f"run only these sections, comma separated or repeated (default: all): {', '.join(SECTIONS)}")
    p.add_argument("--learn-steps", type=int, default=30, help="training steps of the learn section (default: 30)")
    p.add_argument("--learn-tasks-steps", type=int, default=20, help="training steps per learn-tasks run (default: 20)")
    p.add_argument("--learn-lrs", type=lambda s: [float(x) for x in s.split(",")], default=[LEARN_LR],
                   help=f"learn-tasks learning rates, comma separated: several make the sweep (default: {LEARN_LR:g})")
    p.add_argument("--learn-arms", type=lambda s: s.split(","), default=["grpo", "tmn", "tmn_reweight"],
                   help="learn-tasks advantage estimators, comma separated (default: grpo,tmn,tmn_reweight)")
    p.add_argument("--learn-pool", type=int, default=12, help="learn-tasks pool prompts per task type (default: 12)")
    p.add_argument("--learn-prompts-per-task", type=int, default=2,
                   help="learn-tasks prompts of each trained task in every step (default: 2)")
    p.add_argument("--learn-eval-per-task", type=int, default=16,
                   help="learn-tasks held-out prompts per trained task (default: 16)")
    p.add_argument("--learn-eval-samples", type=int, default=4,
                   help="learn-tasks samples per held-out prompt (default: 4)")
    p.add_argument("--learn-dir", default="", help="learn-tasks folder for its runs (default: a new temporary one)")
    p.add_argument("--trl-steps", type=int, default=2, help="measured steps per side in the trl section (default: 2)")
    p.add_argument("--trl-contexts", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 2048, 4096],
                   help="context lengths of the trl section, comma separated (default: 1024,2048,4096)")
    p.add_argument("--trl-sides", type=lambda s: s.split(","), default=["ours", "trl"],
                   help="which sides the trl section runs, comma separated (default: ours,trl; one side "
                        "alone prints its rows and no ratios)")
    args = p.parse_args(argv)
    args.only = [name for arg in args.only for name in arg.split(",") if name]
    if not args.trl_sides or set(args.trl_sides) - {"ours", "trl"}:
        p.error(f"--trl-sides: choose from ours, trl (comma separated), got {','.join(args.trl_sides)!r}")
    unknown = [name for name in args.only if name not in SECTIONS]
    if unknown:
        p.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


if __name__ == "__main__":
    args = parse_args()
    for name in args.only or SECTIONS:
        print(f"\n=== {name} ===")
        SECTIONS[name](args)
