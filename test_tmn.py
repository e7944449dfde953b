"""TMN-Reweight against a worked example and a direct per-prompt transcription of its formulas."""

import math
import random

import pytest
import torch

from grpo import group_advantages
from tmn import group_stats, pass_rates, tmn_reweight

# Worked example: G = 4; task A binary, task B graded.
REWARDS = [1, 0, 0, 0, 1, 1, 1, 0, .2, .25, .3, .35, .9, .1, .5, .5]
GROUPS = ["A1"] * 4 + ["A2"] * 4 + ["B1"] * 4 + ["B2"] * 4
TASKS = ["A"] * 8 + ["B"] * 8
GRPO = [1.5, -.5, -.5, -.5, .5, .5, .5, -1.5, -1.162, -.387, .387, 1.162, 1.225, -1.225, 0, 0]
TMN = GRPO[:8] + [-.319, -.106, .106, .319, 1.699, -1.699, 0, 0]
TMN_RW = [1.926, -.389, -.389, -.389, .389, .389, .389, -1.926, -.319, -.106, .106, .319,
          1.323, -2.182, 0, 0]


def reference(rewards, groups, tasks, alpha=0.8, gamma=1.0, eps=1e-6, reweight=True):
    """TMN-Reweight written out prompt by prompt with Python floats: the slow obvious version."""
    by_group = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    mu, var, task_of = {}, {}, {}
    for g, idx in by_group.items():
        rs = [rewards[i] for i in idx]
        task_of[g] = tasks[idx[0]]
        if len(rs) == 1:
            mu[g], var[g] = 0.0, 1.0
        else:
            m = sum(rs) / len(rs)
            mu[g], var[g] = m, sum((r - m) ** 2 for r in rs) / (len(rs) - 1)
    sigma, mbar = {}, {}
    for k in set(tasks):
        gs = [g for g in by_group if task_of[g] == k]
        sigma[k] = math.sqrt(sum(var[g] for g in gs) / len(gs))
        mbar[k] = sum(mu[g] for g in gs) / len(gs)
    out = [0.0] * len(rewards)
    for g, idx in by_group.items():
        k = task_of[g]
        t = mbar[k] if len(idx) == 1 else alpha * mu[g] + (1 - alpha) * mbar[k]
        p = sum(rewards[i] > t for i in idx) / len(idx)
        for i in idx:
            a = (rewards[i] - mu[g]) / (sigma[k] + eps)
            if reweight:
                a *= math.exp(gamma * (0.5 - p)) if rewards[i] > mu[g] else math.exp(gamma * (p - 0.5))
            out[i] = a
    return out


def test_worked_example():
    r = torch.tensor(REWARDS, dtype=torch.float64)
    assert group_advantages(r, GROUPS).tolist() == pytest.approx(GRPO, abs=1e-3)
    assert tmn_reweight(r, GROUPS, TASKS, reweight=False).tolist() == pytest.approx(TMN, abs=1e-3)
    assert tmn_reweight(r, GROUPS, TASKS).tolist() == pytest.approx(TMN_RW, abs=1e-3)
    # pass rates: A1 1/4, A2 3/4, B1 2/4, B2 3/4
    p = pass_rates(r, GROUPS, TASKS)
    assert p[::4].tolist() == pytest.approx([.25, .75, .5, .75])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_on_random_batches(dtype):
    rng = random.Random(0)
    for trial in range(30):
        rewards, groups, tasks = [], [], []
        for x in range(rng.randint(1, 12)):
            n = rng.choice([1, 2, 4, 5])  # includes single-sample prompts
            task = rng.choice(["em", "f1", "rouge"])
            binary = task == "em"
            for _ in range(n):
                rewards.append(float(rng.random() < .5) if binary else round(rng.random(), 3))
                groups.append(f"p{x}")
                tasks.append(task)
        r = torch.tensor(rewards, dtype=dtype)
        got = tmn_reweight(r, groups, tasks, alpha=0.7, gamma=1.3)
        assert got.dtype == dtype
        want = reference(rewards, groups, tasks, alpha=0.7, gamma=1.3)
        tol = 1e-9 if dtype == torch.float64 else 1e-4
        assert got.tolist() == pytest.approx(want, rel=tol, abs=tol), trial
        assert tmn_reweight(r, groups, tasks, reweight=False).tolist() == pytest.approx(
            reference(rewards, groups, tasks, reweight=False), rel=tol, abs=tol)


def test_order_of_samples_does_not_matter():
    r = torch.tensor(REWARDS, dtype=torch.float64)
    want = tmn_reweight(r, GROUPS, TASKS)
    perm = torch.randperm(len(REWARDS), generator=torch.Generator().manual_seed(3))
    got = tmn_reweight(r[perm], [GROUPS[i] for i in perm], [TASKS[i] for i in perm])
    assert torch.allclose(got, want[perm], atol=1e-12)


def test_string_and_integer_ids_agree():
    r = torch.tensor(REWARDS)
    gi = torch.tensor([hash(g) % 1000 for g in GROUPS])  # arbitrary, non-contiguous integers
    ti = torch.tensor([7 if t == "A" else -2 for t in TASKS])
    assert torch.equal(tmn_reweight(r, GROUPS, TASKS), tmn_reweight(r, gi, ti))
    assert torch.equal(tmn_reweight(r, GROUPS, TASKS), tmn_reweight(r, [hash(g) % 1000 for g in GROUPS], TASKS))


def test_single_sample_and_all_equal_groups():
    # single sample: mu = 0, var = 1, threshold = task mean of mu
    r = torch.tensor([0.7, 1.0, 1.0, 1.0, 0.0, 1.0])
    groups = ["s", "eq", "eq", "eq", "m", "m"]
    tasks = ["t"] * 6
    got = tmn_reweight(r, groups, tasks)
    assert torch.isfinite(got).all()
    assert got[1:4].tolist() == [0.0, 0.0, 0.0]  # all-equal group: zero advantage, no NaN
    assert got.tolist() == pytest.approx(reference(r.tolist(), groups, tasks), abs=1e-5)
    s = group_stats(r, groups, tasks)
    assert s["mean"][0] == 0 and s["var"][0] == 1
    # a batch of one sample
    assert tmn_reweight(torch.tensor([0.5]), [0], [0]).tolist() == pytest.approx(reference([0.5], [0], [0]))


def test_binary_pass_rate_is_fraction_correct():
    r = torch.tensor([1., 1., 0., 0., 0., 0., 1., 0.])
    p = pass_rates(r, [0] * 4 + [1] * 4, ["x"] * 8)
    assert p.tolist() == [.5] * 4 + [.25] * 4


def test_hard_prompt_pushes_correct_samples_harder():
    # one correct of four (hard) vs three of four (easy): the correct sample of the hard prompt
    # gets a bigger advantage than plain TMN gives it, the easy prompt's correct ones a smaller one.
    r = torch.tensor([1., 0, 0, 0, 1, 1, 1, 0])
    g, t = [0] * 4 + [1] * 4, ["x"] * 8
    tmn, rw = tmn_reweight(r, g, t, reweight=False), tmn_reweight(r, g, t)
    assert rw[0] > tmn[0] > 0 and 0 < rw[4] < tmn[4]
    assert rw[1] > tmn[1] and rw[7] < tmn[7]  # wrong answers: softer on the hard prompt


def test_bad_inputs():
    with pytest.raises(ValueError, match="two different task_ids"):
        tmn_reweight(torch.tensor([1., 0.]), [0, 0], ["a", "b"])
    with pytest.raises(ValueError, match="length"):
        tmn_reweight(torch.tensor([1., 0.]), [0], ["a", "a"])
    with pytest.raises(ValueError, match="1-D"):
        tmn_reweight(torch.ones(2, 2), [0, 0], [0, 0])
