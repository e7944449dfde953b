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

def bench_logprobs(args):
    print("logprobs: not written yet")


SECTIONS = {"rewards": bench_rewards, "rollout": bench_rollout, "logprobs": bench_logprobs}

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    args = p.parse_args()
    for name in args.only or SECTIONS:
        print(f"\n=== {name} ===")
        SECTIONS[name](args)
