"""Performance claims, each measured side by side with the obvious alternative in one run.

    python bench.py                    # every section
    python bench.py --only rewards     # one section (list: --help)
    python bench.py --only learn-tasks # held-out gains on the built tasks: GRPO, TMN, TMN-Reweight (~35 min)
    python bench.py --only trl         # one step here vs TRL's GRPOTrainer (pip install trl: bench only)
    python bench.py --only gpu         # the prepared check on a lent GPU (says so and returns on CPU)
    python bench.py --only rewards,logprobs   # several (or --only rewards --only logprobs)

Each section prints a small table and the ratio fast/plain. Numbers depend on the machine: the README
quotes them with the command and the hardware. No timing threshold lives in the unit tests.
"""

import argparse
import statistics
import time


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
import gc, json, sys, time, torch
from types import SimpleNamespace
sys.path.insert(0, {root!r})
import attention, grpo, policy
from transformers import AutoModelForCausalLM
P, G, R, WAY = {P}, {G}, {R}, {way!r}

def status(key):  # bytes, from /proc/self/status
    return next(int(x.split()[1]) * 1024 for x in open("/proc/self/status") if x.startswith(key))

lm = AutoModelForCausalLM.from_pretrained(policy.embedded_model_dir(), dtype=torch.float32,
                                          attn_implementation="sdpa")
lm.activation_checkpointing_enable()  # as train.py (--grad-checkpointing is on by default)
lm.train()
net = policy.Policy(lm, temperature=1.0, chunk=1024)
forward = policy.forward_logprobs_shared if WAY == "shared" else policy.forward_logprobs

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
    (policy.forward_logprobs_shared: one packed [prompt, r_1..r_G], P+G*R tokens); the whole group
    in one micro-batch both ways. Each measurement runs in a fresh process; peak = growth of peak RSS
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
    print(f"{'prompt':>6s} {'way':7s} {'tokens':>7s} {'seconds':>8s} {'CPU s':>7s} {'peak MiB':>9s} {'load':>5s}")
    res = {}
    for P in (2048, 1024, 4096):
        for way in ("per-row", "shared"):
            code = PREFIX_WORKER.format(root=root, P=P, G=G, R=R, way=way)
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(256 * 1024))
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"bench worker P={P} {way} failed:\n{out.stderr[-3000:]}")
            r = res[P, way] = json.loads(out.stdout.strip().splitlines()[-1])
            tokens = G * (P + R) if way == "per-row" else P + G * R
            print(f"{P:6d} {way:7s} {tokens:7d} {r['seconds']:8.2f} {r['cpu']:7.2f} {r['peak'] / MiB:9.1f} "
                  f"{os.getloadavg()[0]:5.1f}", flush=True)
    print("\nshared vs per-row: speed = time ratio (higher is better), peak memory ratio (lower is better)")
    for P in (1024, 2048, 4096):
        a, b = res[P, "per-row"], res[P, "shared"]
        print(f"P={P:5d}  tokens x{(P + G * R) / (G * (P + R)):.3f}  speed x{a['seconds'] / b['seconds']:5.2f} "
              f"(CPU x{a['cpu'] / b['cpu']:5.2f})  peak memory x{b['peak'] / max(a['peak'], 1):5.2f}")
    a, b = res[2048, "per-row"], res[2048, "shared"]
    print(f"shared-prefix update: speed x{a['seconds'] / b['seconds']:.2f}, "
          f"peak memory x{b['peak'] / max(a['peak'], 1):.2f}")


# -----------------------------------------------------------------------------
# learn: does the whole loop learn? The embedded SmolLM2 on an easy exact-match task

WORDS = ["apple", "river", "candle", "forest", "silver", "rocket", "garden", "pepper", "marble",
         "violin", "harbor", "meadow", "lantern", "copper", "falcon", "saddle"]


def bench_learn(args):
    """python train.py on an easy task (reply with one given word, scored by exact match) for a few
    dozen steps; prints the mean reward of the first and last five steps. SmolLM2-Instruct answers
    right part of the time ("Apple.", "Sure! apple" score 0): the signal GRPO needs."""
    import json
    import tempfile
    from pathlib import Path

    import data
    import train
    out = Path(tempfile.mkdtemp(prefix="golongrl-learn-"))
    samples = [data.Sample(id=f"word-{w}", task="precise_retrieval", source="EM",
                           prompt=[{"role": "user", "content": f"Reply with exactly one word, in lowercase "
                                    f"and with no punctuation: {w}"}], answer=w, meta={})
               for w in WORDS]
    data.save_jsonl(samples, out / "words.jsonl")
    steps = args.learn_steps
    train.main(["--data", str(out / "words.jsonl"), "--out-dir", str(out), "--steps", str(steps),
                "--group-size", "8", "--prompts-per-step", "4", "--max-new-tokens", "12",
                "--lr", "2e-5", "--no-grad-checkpointing", "--max-gen-rounds", "1"])
    r = [json.loads(l)["reward/all/mean"] for l in open(out / "metrics.jsonl")]
    first, last = sum(r[:5]) / 5, sum(r[-5:]) / 5
    print(f"learn: {steps} steps, mean reward of steps 1-5 {first:.3f} -> steps {steps - 4}-{steps} {last:.3f}")
    print("per-step reward: " + " ".join(f"{x:.2f}" for x in r))


# -----------------------------------------------------------------------------
# learn-tasks: held-out gains on the built tasks, with GRPO, TMN and TMN-Reweight side by side

LEARN_CONTEXT = 400     # tokens per built prompt (tasks.py's smallest context): 135M on 2 cores
LEARN_NEW = 48          # tokens per response, as the default run
LEARN_T = 0.6           # training and eval temperature: at 1.0 the 135M model writes noise (see README)
LEARN_LR = 1e-5         # chosen by the sweep in the README
LEARN_MIN_PROMPTS = 4   # a task is trained only if this many of its pool prompts have varied rewards


def paired(after: dict, before: dict, ids: list) -> tuple[float, float]:
    """Mean and standard error of after[i] - before[i] over prompts i (each a mean of K samples): the same
    prompts scored twice, so prompt difficulty cancels and the SE is the difference's own spread."""
    return mean_se([after[i] - before[i] for i in ids])


def mean_se(xs: list) -> tuple[float, float]:
    """Mean and standard error sd / sqrt(n) (sample sd, n - 1), as report.task_scores; NaN SE for n = 1."""
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) ** 0.5 if len(xs) > 1 else float("nan")


def bench_learn_tasks(args):
    """The built tasks, the embedded SmolLM2-135M, three advantage estimators, one held-out set.

    1. Build a pool of prompts of all nine task types; sample each 8 times with the base model and keep
       the prompts whose rewards vary (no variance, no GRPO signal). A task keeps its place only if at
       least LEARN_MIN_PROMPTS of its prompts vary; the others are named as beyond the model at this scale.
    2. Build a held-out set of those tasks with a seed of its own (no training prompt in it); score the
       base model on it: eval samples per prompt at T = 0.6.
    3. For each --learn-arms estimator and --learn-lrs learning rate: `python train.py` on the kept prompts,
       task-balanced (the same number of each task's prompts in every step), G = 8; then the held-out set.
    4. Print, per task, the base score, each arm's score and its paired gain over the base (mean +- SE over
       prompts), and whether the gain exceeds 2 SE. Every run's folder stays on disk for a look; a rerun
       in the same --learn-dir reuses the filter and every finished run whose arguments and data match."""
    import hashlib
    import json
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from transformers import AutoTokenizer

    import data
    import policy
    import tasks

    out = Path(args.learn_dir or tempfile.mkdtemp(prefix="golongrl-learn-tasks-"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = str(policy.embedded_model_dir())
    tok = AutoTokenizer.from_pretrained(model_dir)
    docs = tasks.load_documents()
    t0 = time.perf_counter()
    print(f"learn-tasks: runs in {out}; SmolLM2-135M, {LEARN_CONTEXT}-token prompts, {LEARN_NEW} new tokens, "
          f"T = {LEARN_T}")

    # 1. the reward-variance filter over a pool of every task type
    pool = tasks.build_tasks(docs, tok, args.learn_pool, LEARN_CONTEXT, seed=0)
    cache = out / "filter.json"  # {prompt id: its 8 rewards}: a rerun in the same --learn-dir skips this
    known = json.loads(cache.read_text()) if cache.exists() else {}
    how = f"reused from {cache}"
    if sorted(known) != sorted(s.id for s in pool):
        how = "sampled"
        known = dict(zip([s.id for s in pool], tasks.measure_rewards(pool, model_dir, n=8, max_new_tokens=LEARN_NEW,
                                                                    temperature=LEARN_T)))
        cache.write_text(json.dumps(known))
    rewards_of = [known[s.id] for s in pool]
    varied = [s for s, r in zip(pool, rewards_of) if max(r) > min(r)]
    print(f"filter: {len(pool)} prompts x 8 samples, {how}, {time.perf_counter() - t0:.0f} s; per task: prompts "
          "with varied rewards / with any reward / pool, mean reward")
    trained = []
    for task in data.TASK_NAMES:
        rs = [r for s, r in zip(pool, rewards_of) if s.task == task]
        n_var = sum(s.task == task for s in varied)
        verdict = "trained" if n_var >= LEARN_MIN_PROMPTS else "too hard for this model at this scale: not trained"
        print(f"  {task:22s} {n_var:3d} / {sum(max(r) > 0 for r in rs):3d} / {len(rs):3d}   "
              f"{sum(map(sum, rs)) / (8 * len(rs)):.3f}   {verdict}")
        if n_var >= LEARN_MIN_PROMPTS:
            trained.append(task)
    if not trained:
        print("no task has enough prompts with varied rewards: nothing to train")
        return
    train_set = [s for s in varied if s.task in trained]
    data.save_jsonl(train_set, out / "train.jsonl")
    show_advantages(train_set, [known[s.id] for s in train_set])

    # 2. the held-out set: the same task types, its own seed; any prompt text seen in training is dropped
    seen = {json.dumps(s.prompt) for s in pool}
    held = [s for s in tasks.build_tasks(docs, tok, args.learn_eval_per_task, LEARN_CONTEXT, seed="learn-heldout",
                                         tasks=trained) if json.dumps(s.prompt) not in seen]
    print(f"held-out: {len(held)} prompts ({args.learn_eval_per_task} per task, "
          f"{args.learn_eval_per_task * len(trained) - len(held)} dropped as seen in the pool) x "
          f"{args.learn_eval_samples} samples")
    data.save_jsonl(held, out / "heldout.jsonl")

    steps = args.learn_tasks_steps
    per_step = args.learn_prompts_per_task * len(trained)
    data_hash = hashlib.sha256((out / "train.jsonl").read_bytes() + (out / "heldout.jsonl").read_bytes()).hexdigest()
    common = ["--data", str(out / "train.jsonl"), "--eval-data", str(out / "heldout.jsonl"), "--group-size", "8",
              "--prompts-per-step", str(per_step),  # also the eval's chunk: as many rows as a training round
              "--eval-samples", str(args.learn_eval_samples), "--max-new-tokens", str(LEARN_NEW),
              "--temperature", str(LEARN_T), "--seed", "0"]

    def run(name, extra):  # -> (the last evals.jsonl line of out/name, seconds); its output in out/name.log
        argv = [*common, "--out-dir", str(out / name), *extra]
        key = [argv, data_hash]  # written after a run finishes: a rerun with the same arguments and data reuses it
        done = out / f"{name}.argv.json"
        if done.exists() and json.loads(done.read_text()) == key:
            print(f"{name}: reusing the finished run in {out / name} (same arguments)")
            return json.loads((out / name / "evals.jsonl").read_text().splitlines()[-1]), 0.0
        t = time.perf_counter()
        with open(out / f"{name}.log", "w") as f:
            subprocess.run([sys.executable, "train.py", *argv, "--overwrite"], stdout=f, stderr=subprocess.STDOUT,
                           check=True, cwd=Path(__file__).parent)
        done.write_text(json.dumps(key))
        return json.loads((out / name / "evals.jsonl").read_text().splitlines()[-1]), time.perf_counter() - t

    base, secs = run("base", ["--eval-only"])
    print(f"base model on the held-out set: {secs:.0f} s")
    results = {}
    for lr in args.learn_lrs:
        for arm in args.learn_arms:
            name = f"{arm}-lr{lr:g}"
            results[name], secs = run(name, [
                "--advantage", arm, "--lr", f"{lr:g}", "--steps", str(steps), "--eval-every", str(steps),
                "--task-balanced", "--max-gen-rounds", "1", "--warmup-steps", "0", "--save-every", str(steps),
                "--no-grad-checkpointing"])  # one generation round and one save per run: time goes to steps
            train_r = [json.loads(l)["reward/all/mean"] for l in open(out / name / "metrics.jsonl")]
            k = max(1, len(train_r) // 4)
            print(f"{name}: {steps} steps of {per_step} prompts x 8 in {secs:.0f} s; training reward, first "
                  f"{k} steps {sum(train_r[:k]) / k:.3f} -> last {k} {sum(train_r[-k:]) / k:.3f}")

    # 4. per task: base, each arm, paired gain (mean +- SE over the same prompts)
    score = lambda ev: {p["id"]: sum(p["scores"]) / len(p["scores"]) for p in ev["prompts"]}  # noqa: E731
    b = score(base)
    print(f"\nheld-out reward, mean over prompts of {args.learn_eval_samples} samples at T = {LEARN_T} "
          f"(± SE); gain = paired difference from the base model on the same prompts")
    print(f"{'task':22s} {'prompts':>7s} {'run':>22s} {'held-out':>14s} {'gain over base':>18s}")
    for task in trained + ["mean"]:
        ids = [p["id"] for p in base["prompts"] if task in ("mean", p["task"])]
        if task != "mean":  # what one fixed reply would score: a gain up to this needs no reading at all
            reply, best = constant_answer([s for s in held if s.task == task])
            print(f"{task:22s} {len(ids):7d} {'best constant reply':>22s} {best:14.3f}   ({reply[:40]!r})")
        print(f"{task:22s} {len(ids):7d} {'base':>22s} {mean_se_of(b, ids):>14s}")
        for name, ev in results.items():
            g, se = paired(score(ev), b, ids)
            print(f"{'':30s} {name:>22s} {mean_se_of(score(ev), ids):>14s} {g:+9.3f} ± {se:.3f}"
                  + (" *" if g > 2 * se else ""))
    print("* gain > 2 SE")
    if len(args.learn_arms) > 1:
        first = args.learn_arms[0]
        for lr in args.learn_lrs:
            for arm in args.learn_arms[1:]:
                a, r = score(results[f"{arm}-lr{lr:g}"]), score(results[f"{first}-lr{lr:g}"])
                diffs = []
                for task in trained + ["mean"]:
                    ids = [p["id"] for p in base["prompts"] if task in ("mean", p["task"])]
                    g, se = paired(a, r, ids)
                    diffs.append(f"{task} {g:+.3f} ± {se:.3f}")
                print(f"{arm} - {first} at lr {lr:g}: " + ", ".join(diffs))
    plot_learn_tasks(out, trained, ["base", *results])
    print(f"learn-tasks: {time.perf_counter() - t0:.0f} s in all")


def constant_answer(samples: list) -> tuple[str, float]:
    """(reply, its mean score): the best single reply for a set of prompts among their own gold answers
    written out as replies, picked on these same prompts (an upper bound for a guesser). When one gold
    dominates (a count that is almost always 2), a model can score this much by learning to say it,
    whatever the document says."""
    import rewards
    written = {s.answer if isinstance(s.answer, str) else "\n".join(map(str, s.answer)) for s in samples}
    return max(((w, sum(rewards.score(s.task, w, s.answer) for s in samples) / len(samples)) for w in written),
               key=lambda x: x[1])


def show_advantages(samples: list, rewards_of: list):
    """Where the three estimators part, on the base model's own rewards for the kept prompts (as if they
    all made one batch): per task, the mean pass rate p_x, its spread over prompts, and mean |A| under
    GRPO, TMN and TMN-Reweight. GRPO gives every prompt the same |A| scale whatever its task; TMN shares a
    task's scale, so a task of small reward gaps (ROUGE-L) keeps small advantages; Reweight then
    scales each prompt by exp(+-gamma (0.5 - p_x)), which moves nothing when p_x = 0.5."""
    import torch

    import grpo
    import tmn
    r = torch.tensor([x for rs in rewards_of for x in rs], dtype=torch.float64)
    groups = [i for i, rs in enumerate(rewards_of) for _ in rs]
    task_of = [s.task for s, rs in zip(samples, rewards_of) for _ in rs]
    adv = {"GRPO": grpo.group_advantages(r, groups), "TMN": tmn.tmn_reweight(r, groups, task_of, reweight=False),
           "TMN-Reweight": tmn.tmn_reweight(r, groups, task_of)}
    p = tmn.pass_rates(r, groups, task_of)  # [B] each row's prompt's p_x
    print("advantages on these rewards (one batch of all kept prompts): mean |A| per task (lowest-highest prompt)")
    print(f"  {'task':22s} {'prompts':>7s} {'p_x mean':>8s} {'p_x sd':>7s} " + " ".join(f"{k:>16s}" for k in adv))
    for task in sorted(set(task_of)):
        rows = torch.tensor([t == task for t in task_of])
        px = p[rows][::8]  # one per prompt (8 rows each)
        per_prompt = lambda a: a[rows].abs().reshape(-1, 8).mean(1)  # noqa: E731  [prompts] mean |A|
        print(f"  {task:22s} {len(px):7d} {float(px.mean()):8.3f} {float(px.std()):7.3f} " + " ".join(
            f"{float(a[rows].abs().mean()):.2f} ({float(per_prompt(a).min()):.2f}-{float(per_prompt(a).max()):.2f})"
            .rjust(16) for a in adv.values()))


def plot_learn_tasks(out, tasks_trained: list, names: list):
    """out/learn_tasks.png from the runs' files: training reward per step (left) and held-out reward per
    task with its standard error (right), one colour per run. Needs matplotlib (optional: skipped)."""
    import json
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        if (out / name / "metrics.jsonl").exists():
            r = [json.loads(l)["reward/all/mean"] for l in open(out / name / "metrics.jsonl")]
            left.plot(range(1, len(r) + 1), r, marker="o", ms=3, label=name, color=f"C{k}")
        ev = json.loads((out / name / "evals.jsonl").read_text().splitlines()[-1])
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(tasks_trained) + 1)]
        keys = tasks_trained + ["mean"]
        right.bar(xs, [ev[f"eval/{t}"] for t in keys], width, yerr=[ev[f"eval_se/{t}"] for t in keys],
                  label=name, color=f"C{k}", capsize=2)
    from matplotlib.ticker import MaxNLocator
    left.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    left.set_xlabel("step"), left.set_ylabel("training reward (mean over the step's samples)")
    right.set_xticks(range(len(tasks_trained) + 1), [t.replace("_", "\n") for t in tasks_trained] + ["mean"])
    right.set_ylabel("held-out reward (± SE)"), right.legend(fontsize=7), left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learn_tasks.png", dpi=110)
    plt.close(fig)
    print(f"wrote {out / 'learn_tasks.png'}")


def mean_se_of(scores: dict, ids: list) -> str:
    """"0.412 ± 0.051": mean and standard error over prompts `ids` of their scores."""
    m, se = mean_se([scores[i] for i in ids])
    return f"{m:.3f} ± {se:.3f}"


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
        train.main(["--steps", "2", "--out-dir", tempfile.mkdtemp(prefix="golongrl-profile-"), "--save-minutes", "0"])
    finally:
        for mod, name, real in saved:
            setattr(mod, name, real)
    total = time.perf_counter() - t
    print("\nseconds over 2 default steps (python train.py --steps 2):")
    for key in keys:
        print(f"  {key:44s} {spent[key]:6.1f}")
    print(f"  {'the whole run (model load and data build too)':44s} {total:6.1f}")


# -----------------------------------------------------------------------------
# trl: one training step here vs TRL's GRPOTrainer, the same run set up on both sides

TRL_WORKER = """
import json, resource, sys, tempfile, time
sys.path.insert(0, {root!r})
import torch
WAY, DATA, STEPS, G, PROMPTS, NEW, LR = {way!r}, {data!r}, {steps}, {G}, {prompts}, {new}, {lr}
MAXP = {maxp}
torch.manual_seed(0)
if WAY == "ours":
    import train
    out = tempfile.mkdtemp()
    train.main(["--data", DATA, "--out-dir", out, "--steps", str(STEPS), "--group-size", str(G),
                "--prompts-per-step", str(PROMPTS), "--max-new-tokens", str(NEW), "--lr", str(LR),
                "--advantage", "grpo", "--no-dynamic-sampling", "--max-gen-rounds", "1", "--precision", "fp32",
                "--grad-checkpointing", "--max-prompt-tokens", str(MAXP), "--micro-batch-tokens", "1000000",
                "--save-every", "0", "--save-minutes", "0", "--no-save-optimizer", "--kl-coef", "0"])
    m = [json.loads(l) for l in open(out + "/metrics.jsonl")]
    steps = [(x["step_s"], x["rollout_s"] + x["reward_s"], x["update_s"]) for x in m]
else:
    import datasets, rewards, data, policy
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    samples = data.load_jsonl(DATA)
    ds = datasets.Dataset.from_list([dict(prompt=s.prompt, task=s.task, answer=json.dumps(s.answer))
                                     for s in samples])
    def reward(prompts, completions, task, answer, **kw):  # the same natural metrics as train.py
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [rewards.score(t, x, json.loads(a)) for t, x, a in zip(task, texts, answer)]
    times, gen = [], []
    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)
    cfg = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=G * PROMPTS, num_generations=G,
                     max_completion_length=NEW, learning_rate=LR, gradient_checkpointing=True, use_cpu=True,
                     bf16=False, max_steps=STEPS, logging_steps=1, report_to="none", save_strategy="no",
                     beta=0.0, temperature=1.0, top_p=1.0, seed=0, steps_per_generation=1, num_iterations=1,
                     dataloader_num_workers=0, disable_tqdm=True, lr_scheduler_type="constant",
                     warmup_steps=0, weight_decay=0.1, max_grad_norm=1.0)
    model_dir = str(policy.embedded_model_dir())
    tr = GRPOTrainer(model=model_dir, reward_funcs=reward, args=cfg, train_dataset=ds,
                     processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[Clock()])
    real = tr._generate_and_score_completions
    def timed(*a, **k):
        t = time.perf_counter()
        out = real(*a, **k)
        gen.append(time.perf_counter() - t)
        return out
    tr._generate_and_score_completions = timed
    tr.train()
    steps = [(s, g, s - g) for s, g in zip(times, gen)]
print(json.dumps(dict(steps=steps, peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)))
"""


def bench_trl(args):
    """One GRPO step here vs TRL's GRPOTrainer (trl, a bench-only package: pip install trl), the same
    run on both sides: the embedded SmolLM2-135M, the same built prompts (one per task for two tasks
    per step), the same reward (rewards.score, the natural metrics), G = 8, 2 prompts per step, 48 new
    tokens, lr 1e-6, float32, gradient checkpointing, no dynamic sampling, no KL, one optimizer step per
    batch; per context length one warm-up step and args.trl_steps measured ones, each side in a fresh
    process (peak RSS of that process). Generation = sampling and scoring; update = the rest of the step.
    What differs, and cannot be made equal: TRL's default loss ("dapo": token-mean over the batch, PPO
    clip 0.2 both sides) vs ours (token-mean, clip 0.2 / 0.28 clip-higher, dual-clip 3, rollout
    importance weights: a handful of element-wise ops); TRL generates with model.generate
    (G copies of each prompt) and scores G rows of [prompt, response], we prefill each prompt once
    and run one packed [prompt, r_1..r_G] sequence per group; TRL's loss uses its own advantage
    scaling ("group" std), ours plain GRPO (--advantage grpo); on CPU our trainer fixes glibc's mmap
    threshold so that freed activations return to the OS (harness.return_freed_memory), TRL's process
    keeps glibc's default. A side that fails (killed for memory at a long context) is reported, and
    the other rows still run."""
    import importlib.util
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path
    if importlib.util.find_spec("trl") is None:
        print("trl is not installed: pip install trl==1.16.0 (bench only, not in requirements.txt); skipped")
        return
    import data
    import policy
    import tasks
    from transformers import AutoTokenizer
    root = os.path.dirname(os.path.abspath(__file__))
    tok = AutoTokenizer.from_pretrained(policy.embedded_model_dir())
    steps = 1 + args.trl_steps
    print(f"this project vs TRL GRPOTrainer: SmolLM2-135M, fp32, G=8, 2 prompts/step, 48 new tokens, "
          f"{args.trl_steps} measured steps after 1 warm-up, fresh process per side")
    print(f"{'context':>7s} {'side':5s} {'step s':>7s} {'gen s':>6s} {'update s':>8s} {'peak GiB':>8s} {'load':>5s}")
    rows = []
    for ctx in args.trl_contexts:
        built = tasks.build_tasks(tasks.load_documents(), tok, steps, ctx, 0)
        pick = [s for s in built if s.task in ("precise_retrieval", "summarization")][:2 * steps]
        path = Path(tempfile.mkdtemp()) / "prompts.jsonl"
        data.save_jsonl(pick, path)
        res = {}
        for way in args.trl_sides:
            code = TRL_WORKER.format(root=root, way=way, data=str(path), steps=steps, G=8, prompts=2, new=48,
                                     lr=1e-6, maxp=ctx + 1024)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
            if out.returncode != 0:  # e.g. killed for memory at a long context: say so, go on
                last = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
                print(f"{ctx:7d} {way:5s} failed (exit code {out.returncode}): {last[:200]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            measured = r["steps"][1:] or r["steps"]  # drop the warm-up step
            mean = [sum(x[i] for x in measured) / len(measured) for i in range(3)]
            res[way] = (*mean, r["peak"])
            print(f"{ctx:7d} {way:5s} {mean[0]:7.1f} {mean[1]:6.1f} {mean[2]:8.1f} {r['peak'] / 2**30:8.2f} "
                  f"{os.getloadavg()[0]:5.1f}", flush=True)
        rows.append((ctx, res))
    if set(args.trl_sides) != {"ours", "trl"}:
        return
    print("\nwhat differs: the loss (TRL's default 'dapo': clip 0.2 both sides, 'group' std scaling; ours "
          "--advantage grpo: clip 0.2 / 0.28, dual-clip 3, rollout importance weights); TRL generates and "
          "trains G rows [prompt, response] per prompt, we prefill each prompt once and train one packed "
          "[prompt, r_1..r_G] per group; on CPU our trainer fixes glibc's mmap threshold (harness."
          "return_freed_memory), TRL runs with glibc's default. The same on both: fused AdamW, fp32, "
          "gradient checkpointing, no KL, one optimizer step per batch.")
    print("ratios TRL / ours (higher = ours faster or smaller):")
    for ctx, res in rows:
        if len(res) < 2:
            print(f"  {ctx:5d} tokens: a side failed, no ratio")
            continue
        o, t = res["ours"], res["trl"]
        print(f"  {ctx:5d} tokens: step x{t[0] / o[0]:.1f}, generation x{t[1] / o[1]:.1f}, update "
              f"x{t[2] / o[2]:.1f}, peak RSS x{t[3] / o[3]:.2f}")


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
    unknown = [name for name in args.only if name not in SECTIONS]
    if unknown:
        p.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


if __name__ == "__main__":
    args = parse_args()
    for name in args.only or SECTIONS:
        print(f"\n=== {name} ===")
        SECTIONS[name](args)
