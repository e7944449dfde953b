"""TMN-Reweight: the advantage estimator of GoLongRL (arXiv 2605.19577), one function to copy.

    from tmn import tmn_reweight
    adv = tmn_reweight(rewards, group_ids, task_ids)          # [B], broadcast over each response

The problem. GoLongRL trains on nine task types at once, each rewarded by its natural metric: binary
exact match next to graded ROUGE-L or NDCG. Vanilla GRPO divides each prompt's centred rewards by that
prompt's own std, so a graded prompt whose samples differ by 0.05 gets the same advantage magnitude as
a binary prompt whose samples differ by 1: tiny, noisy reward gaps are blown up to full-size updates.

The fix, in two steps (x = prompt, j = sample, k = the task of x, eps = 1e-6):

    TMN       A_xj = (r_xj - mu_x) / (sigma_k + eps),   sigma_k = sqrt(mean_{x in k} var_x)
    Reweight  t_x = alpha*mu_x + (1 - alpha)*mbar_k,    mbar_k = mean_{x in k} mu_x
              p_x = #{j : r_xj > t_x} / n_x              (the prompt's pass rate)
              A_xj *= exp(gamma*(0.5 - p_x))  if r_xj > mu_x   (better than its group)
              A_xj *= exp(gamma*(p_x - 0.5))  otherwise

Centering stays per prompt; only the scale is shared by the task, so a task's advantages keep the
spread its metric really has. Then hard prompts (p < 0.5) push their good samples up harder and
their bad ones down softer; easy prompts the reverse. For binary rewards p_x is the fraction correct.
A prompt with one sample has mu_x = 0, var_x = 1 and t_x = mbar_k. All statistics are over the whole
batch (all ranks), after dynamic sampling has removed the zero-variance groups.

Imports only torch: copy this file, or one function, into any trainer. Nothing loops over samples in
Python except turning string labels into integers.
"""

from typing import Hashable, Sequence, Union

import torch
from torch import Tensor

Ids = Union[Tensor, Sequence[Hashable]]


# -----------------------------------------------------------------------------
# Labels -> dense indices, and per-group sums with scatter_add

def _dense(ids: Ids, n: int, device) -> tuple[Tensor, int]:
    """Any labels (1-D int tensor, or a list of ints / strings / tuples) -> (index [n] in 0..K-1, K)."""
    if isinstance(ids, Tensor):
        if ids.dim() != 1 or ids.numel() != n:
            raise ValueError(f"ids must be a 1-D tensor of length {n}, got shape {tuple(ids.shape)}")
        _, index = torch.unique(ids, return_inverse=True)
        return index.to(device), int(index.max()) + 1 if n else 0
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"ids must have length {n}, got {len(ids)}")
    codes: dict = {}
    index = [codes.setdefault(i, len(codes)) for i in ids]  # label encoding, first seen = 0
    return torch.tensor(index, dtype=torch.long, device=device), len(codes)


def _group_sum(values: Tensor, index: Tensor, k: int) -> Tensor:
    """[B] values, [B] group index -> [K] per-group sums."""
    return torch.zeros(k, dtype=values.dtype, device=values.device).scatter_add_(0, index, values)


# -----------------------------------------------------------------------------
# Per-prompt and per-task statistics (shared by tmn_reweight and pass_rates)

def group_stats(rewards: Tensor, group_ids: Ids, task_ids: Ids, alpha: float = 0.8) -> dict:
    """Everything TMN-Reweight computes before touching a sample, for logging or reuse.

    rewards [B] float. Returns a dict of tensors:
      group [B]        dense prompt index of each sample (0..X-1)
      group_task [X]   dense task index of each prompt (0..K-1)
      count [X]        samples per prompt n_x
      mean [X]         mu_x   (0 when n_x == 1)
      var [X]          unbiased var_x (1 when n_x == 1)
      task_sigma [K]   sigma_k = sqrt(mean over the task's prompts of var_x)
      threshold [X]    t_x = alpha*mu_x + (1-alpha)*mbar_k  (mbar_k when n_x == 1)
      pass_rate [X]    p_x = fraction of the prompt's samples with r > t_x
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    B, dev = rewards.numel(), rewards.device
    group, X = _dense(group_ids, B, dev)
    task, K = _dense(task_ids, B, dev)

    # Each prompt belongs to exactly one task: take the task of its first sample, then check.
    group_task = torch.full((X,), -1, dtype=torch.long, device=dev).scatter_(0, group, task)
    if B and not torch.equal(group_task[group], task):
        raise ValueError("a group_id appears with two different task_ids: one prompt, one task")

    count = _group_sum(torch.ones_like(rewards), group, X)                       # [X]
    single = count == 1
    mean = _group_sum(rewards, group, X) / count                                 # [X]
    sq = _group_sum((rewards - mean[group]) ** 2, group, X)                      # [X]
    var = sq / (count - 1).clamp(min=1)
    # the recipe: a single-sample prompt has mu = 0, var = 1 (nothing to compare it with).
    mean = torch.where(single, torch.zeros_like(mean), mean)
    var = torch.where(single, torch.ones_like(var), var)

    per_task = _group_sum(torch.ones_like(mean), group_task, K)                  # prompts per task [K]
    task_sigma = (_group_sum(var, group_task, K) / per_task).sqrt()              # [K]
    task_mean = _group_sum(mean, group_task, K) / per_task                       # mbar_k [K]

    threshold = alpha * mean + (1 - alpha) * task_mean[group_task]               # [X]
    threshold = torch.where(single, task_mean[group_task], threshold)
    passed = (rewards > threshold[group]).to(rewards.dtype)                      # strict >, [B]
    pass_rate = _group_sum(passed, group, X) / count                             # [X]
    return dict(group=group, group_task=group_task, count=count, mean=mean, var=var,
                task_sigma=task_sigma, threshold=threshold, pass_rate=pass_rate)


def pass_rates(rewards: Tensor, group_ids: Ids, task_ids: Ids, alpha: float = 0.8) -> Tensor:
    """Per-prompt pass rate p_x broadcast to its samples, [B]. For logging: with equal group sizes the
    mean of this tensor is the batch mean of p_x ("difficulty/mean_pass_rate")."""
    s = group_stats(rewards, group_ids, task_ids, alpha)
    return s["pass_rate"][s["group"]]


# -----------------------------------------------------------------------------
# The estimator

def tmn_reweight(rewards: Tensor, group_ids: Ids, task_ids: Ids, alpha: float = 0.8,
                 gamma: float = 1.0, eps: float = 1e-6, reweight: bool = True) -> Tensor:
    """TMN-Reweight advantages, [B] in the dtype of `rewards` (see the module docstring).

    rewards   [B] float, one per sampled response, the whole batch (all ranks, after filtering)
    group_ids [B] which prompt each sample answers (tensor of ints, or a list of any hashable labels)
    task_ids  [B] which task type each sample's prompt is (same accepted types)
    reweight  False gives plain TMN (task-level scale, no difficulty weights)
    """
    s = group_stats(rewards, group_ids, task_ids, alpha)
    r = rewards if rewards.is_floating_point() else rewards.float()
    g = s["group"]
    mu = s["mean"][g]                                                            # [B]
    adv = (r - mu) / (s["task_sigma"][s["group_task"]][g] + eps)                 # TMN, [B]
    if not reweight:
        return adv
    p = s["pass_rate"][g]                                                        # [B]
    w_pos = torch.exp(gamma * (0.5 - p))     # hard prompt (p small): good samples count more
    w_neg = torch.exp(gamma * (p - 0.5))     # ... and bad samples count less; easy prompts reverse
    return adv * torch.where(r > mu, w_pos, w_neg)
