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
    print("rewards: not written yet")


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
