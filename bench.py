"""Performance claims, each measured side by side with the obvious alternative in one run.

    python bench.py                    # every section
    python bench.py --only rewards     # one section: rewards, rollout, logprobs

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
        metric = rewards.TASKS[task]
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
    print("rollout: not written yet")


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


SECTIONS = {"rewards": bench_rewards, "rollout": bench_rollout, "logprobs": bench_logprobs}

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    args = p.parse_args()
    for name in args.only or SECTIONS:
        print(f"\n=== {name} ===")
        SECTIONS[name](args)
