"""The data GoLongRL (arXiv 2605.19577) trains on: the released dataset format, prompt encoding, and
each rank's share of every step's prompts. Building tasks from your own documents and the
difficulty filter live in tasks.py (`python tasks.py build ...`).

    from data import load_jsonl, encode_prompts, PromptBatches
    samples = load_jsonl("golongrl.jsonl")                          # the released format, as is
    ids, samples, counts = encode_prompts(samples, tokenizer, max_prompt_tokens=163840)
    batches = PromptBatches(samples, prompts_per_step=128, rank=rank, world_size=world, seed=0)
    my_prompts = batches.next_batch()                               # this rank's disjoint share

Every record of the released set maps to one of the nine task types of rewards.REWARDS and a gold
answer in the type its metric reads (the released format); a malformed record is a DataError naming the
file, the line and the field, and so is a gold its metric could not score (checked by rewards.parse_gold,
the code that scores it). The paper drops prompts longer than the context budget;
encode_prompts does that by default and can instead cut the middle of the longest document.
What a step generates from the prompts is a Rows (one response per row, its reward, task and
sampler log-probs): what the update trains on and the metrics read.
"""

import dataclasses
import fnmatch
import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch

import rewards

log = logging.getLogger("data")
TASK_NAMES = tuple(rewards.REWARDS)  # the task types, in the order of rewards.py's table (the paper's)
BUILD_SOURCE = "golongrl_build"     # data_source of the tasks tasks.py builds


# -----------------------------------------------------------------------------
# Samples

@dataclass
class Sample:
    id: str                # unique within a file: extra_info.index, else "file:line"
    task: str              # one of rewards.REWARDS
    prompt: list           # chat messages [{"role": ..., "content": ...}]
    answer: object         # the gold, in the type rewards.score expects for this task
    source: str            # the record's data_source
    meta: dict = field(default_factory=dict)  # everything else, JSON-able; "question" guards truncation


class DataError(ValueError):
    """Malformed input: the message names the file, the line and the field."""


# -----------------------------------------------------------------------------
# Reading and writing the released format

# LongBench-Pro's 25 sub-tasks, keyed by their code, with the task type their metric belongs to.
LONGBENCH_PRO = {
    "T1.1": ("Global Cohesive Retrieval", "graded_ranking"),
    "T1.2": ("Key-Snippet Retrieval", "graded_ranking"),
    "T2.1": ("Global Timeline Reconstruction", "sequence_ordering"),
    "T2.2": ("Local Causal Chain Sorting", "sequence_ordering"),
    "T3.1": ("Multi-Doc Integration QA", "comprehension"),
    "T3.2": ("Single-Hop Fact QA", "comprehension"),
    "T4.1": ("Global-Coverage Constrained Summary", "summarization"),
    "T4.2": ("Query-Focused Summary", "summarization"),
    "T5.1": ("Full-Sentence Citation Alignment", "exhaustive_retrieval"),
    "T5.2": ("Key-Statement Citation Alignment", "exhaustive_retrieval"),
    "T6.1": ("Large-Scale Document Clustering", "structured_matching"),
    "T6.2": ("Targeted Subset Cluster Identification", "exhaustive_retrieval"),
    "T6.3": ("Global Frequency Analysis", "sequence_ordering"),
    "T7.1": ("Global Conflict & Inconsistency Localization", "exhaustive_retrieval"),
    "T7.2": ("Targeted Rule or Condition Violation Detection", "exhaustive_retrieval"),
    "T7.3": ("Comprehensive Error & Anomaly Sweep", "exhaustive_retrieval"),
    "T8.1": ("Structured Multi-Source Consistency Verification", "structured_matching"),
    "T8.2": ("Single-Source Targeted Aggregation", "structured_matching"),
    "T8.3": ("Long-Context Procedural State Tracking", "structured_matching"),
    "T9.1": ("Dependency-Aware Multi-Version Impact Analysis", "exhaustive_retrieval"),
    "T9.2": ("Localized Interface Change Detection", "exhaustive_retrieval"),
    "T10.1": ("Large-Scale In-Context Rule Induction", "structured_matching"),
    "T10.2": ("Targeted Example-Based Rule Induction", "structured_matching"),
    "T11.1": ("Long-Range Entity & Commitment Tracking", "comprehension"),
    "T11.2": ("Short-Range Reference Resolution & State Query", "comprehension"),
}


class _Unknown(Exception):
    """A well-formed record whose data_source or reward_mode we do not know (skippable)."""
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class _BadGold(DataError):
    """A record whose gold its metric cannot score (skippable with skip_bad_golds; else a DataError)."""


def _get(obj: dict, key: str, types, where: str, name: str = ""):
    """obj[key], checked to be of `types`; a DataError naming the field otherwise."""
    name = name or key
    if key not in obj:
        raise DataError(f"{where}: missing field {name!r}")
    value = obj[key]
    if not isinstance(value, types) or isinstance(value, bool):
        want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise DataError(f"{where}: field {name!r} must be {want}, got {type(value).__name__}")
    return value


# How each data_source names its task type and gold. A reader takes (ground_truth, extra_info, where)
# and returns (task type, gold, the gold's field name for error messages).
GOLD = "reward_model.ground_truth.golden_label"


def _object(gt, where: str) -> dict:
    """The ground_truth as an object: only the math sources may give the gold as a bare string."""
    if isinstance(gt, str):
        raise DataError(f"{where}: field 'reward_model.ground_truth' must be an object for this data_source "
                        "(only math sources allow a bare string)")
    return gt


def _longbench_pro(gt, extra: dict, where: str) -> tuple:
    """The task from the code that starts extra_info.reward_mode ("T1.1 Global ..."); gold: doc_ids."""
    gt = _object(gt, where)
    mode = _get(extra, "reward_mode", str, where, "extra_info.reward_mode")
    code = (mode.split() or [""])[0]
    if code not in LONGBENCH_PRO:
        known = ", ".join(f"{c} {n}" for c, (n, _) in LONGBENCH_PRO.items())
        raise _Unknown("unknown_reward_mode", f"{where}: unknown LongBench-Pro reward_mode {mode!r}; known: {known}")
    name = "reward_model.ground_truth.doc_ids"
    return LONGBENCH_PRO[code][1], _get(gt, "doc_ids", list, where, name), name


def _label(task: str):
    """A source of one task type whose gold is the string golden_label."""
    def read(gt, extra: dict, where: str) -> tuple:
        return task, _get(_object(gt, where), "golden_label", str, where, GOLD), GOLD
    return read


def _math(gt, extra: dict, where: str) -> tuple:
    """Math: golden_label (a string or a number), or the ground_truth itself as a bare string."""
    gold = gt if isinstance(gt, str) else _get(gt, "golden_label", (str, int, float), where, GOLD)
    return "numerical_reasoning", str(gold), GOLD


def _built(gt, extra: dict, where: str) -> tuple:
    """Tasks built by tasks.py: the task type is extra_info.task."""
    gt = _object(gt, where)
    task = _get(extra, "task", str, where, "extra_info.task")
    if task not in TASK_NAMES:
        raise DataError(f"{where}: field 'extra_info.task' is {task!r}, not one of {', '.join(TASK_NAMES)}")
    return task, _get(gt, "golden_label", (str, list), where, GOLD), GOLD


# data_source -> its reader: the one place a source is mapped to a task. A key with "*" is a pattern
# (fnmatch): the released set has several math sources, all containing "math_longcot_math_verify".
SOURCES = {"longbench_pro": _longbench_pro, "EM": _label("precise_retrieval"), "selection": _label("comprehension"),
           "*math_longcot_math_verify*": _math, "multitableqa_pretraining": _label("structured_extraction"),
           BUILD_SOURCE: _built}


SURROGATE = re.compile("[\ud800-\udfff]")  # only a JSON escape (\\ud800) can put one in a str


def _lone_surrogate(rec) -> Optional[tuple[str, int]]:
    """(field path, character index) of the first lone surrogate in any key or string of `rec`, or None.
    UTF-8 cannot encode one, so the tokenizer (and save_jsonl) would fail on it later; a valid pair of
    escapes (an emoji) has already been joined into one character by json.loads. Iterative: records
    nest as deep as json.loads allows."""
    todo = [("", rec)]
    while todo:
        path, x = todo.pop()
        if isinstance(x, str):
            m = None if x.isascii() else SURROGATE.search(x)
            if m:
                return path or "(the record)", m.start()
        elif isinstance(x, dict):
            for k, v in x.items():
                if not k.isascii() and SURROGATE.search(k):
                    return f"{path}.{k!a}".lstrip("."), SURROGATE.search(k).start()
                todo.append((f"{path}.{k}".lstrip("."), v))
        elif isinstance(x, list):
            todo += [(f"{path}[{i}]", v) for i, v in enumerate(x)]
    return None


def parse_record(rec, where: str, default_id: Optional[str] = None) -> Sample:
    """One released-format record -> Sample. `where` ("file:line") prefixes every error; the id is
    extra_info.index, else `default_id` (else `where`)."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
    bad = _lone_surrogate(rec)
    if bad:  # rejected, not replaced: the user's text is never silently changed
        raise DataError(f"{where}: field {bad[0]!r} holds a lone UTF-16 surrogate at character {bad[1]} (a JSON "
                        "escape like \\ud800 without its pair), which is not text: fix or drop that escape")
    source = _get(rec, "data_source", str, where)
    prompt = _get(rec, "prompt", list, where)
    if not prompt:
        raise DataError(f"{where}: field 'prompt' is an empty list")
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field 'prompt[{i}]' must be {{\"role\": str, \"content\": str}}")
    gt = _get(_get(rec, "reward_model", dict, where), "ground_truth", (dict, list, str), where,
              "reward_model.ground_truth")
    if isinstance(gt, list):  # some records wrap it: the last element is the dict
        if not gt or not isinstance(gt[-1], (dict, str)):
            raise DataError(f"{where}: field 'reward_model.ground_truth' is a list without a dict at the end")
        gt = gt[-1]
    extra = rec.get("extra_info") or {}
    if not isinstance(extra, dict):
        raise DataError(f"{where}: field 'extra_info' must be an object, got {type(extra).__name__}")

    read = next((r for pattern, r in SOURCES.items() if fnmatch.fnmatchcase(source, pattern)), None)
    if read is None:
        raise _Unknown("unknown_data_source", f"{where}: unknown data_source {source!r}; known: {', '.join(SOURCES)}")
    task, answer, gt_name = read(gt, extra, where)
    try:  # the gold read by the same code that will score it : a bad one stops here, not at the first step that scores it
        rewards.parse_gold(task, answer)
    except ValueError as e:
        raise _BadGold(f"{where}: field {gt_name!r} is not a valid gold for {task}: {e}") from None

    meta = {k: v for k, v in extra.items() if k not in ("index", "task")}
    if "ability" in rec:
        meta["ability"] = rec["ability"]
    rest = {k: v for k, v in gt.items() if k not in ("golden_label", "doc_ids")} if isinstance(gt, dict) else {}
    if rest:
        meta["ground_truth"] = rest  # e.g. LongBench-Pro's language in "summary": kept for save_jsonl
    sid = str(extra["index"]) if "index" in extra else (default_id or where)
    return Sample(sid, task, prompt, answer, source, meta)


def load_jsonl(path, *, skip_unknown: bool = False, skip_bad_golds: bool = False,
               counts: Optional[dict] = None) -> list[Sample]:
    """Read a released-format JSONL file. Malformed lines raise DataError naming the path (as given),
    the line and the field.
    Unknown data_source / reward_mode raise too, unless skip_unknown: then they are counted in `counts`
    (reason -> number) and logged. A gold its metric cannot score (rewards.parse_gold) raises too,
    unless skip_bad_golds: then it is counted as "bad_gold" and each one logged with its line.
    Blank lines are skipped and counted as "blank_line". Records that reuse an earlier record's id are
    kept (they may be deliberate repeats), counted as "duplicate_id" and logged with their lines."""
    counts = {} if counts is None else counts
    samples, first_line, dups = [], {}, {}  # id -> line of its first record; id -> lines that reuse it
    with open(path, "rb") as f:  # bytes, so a bad byte is reported with its line number
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"  # errors name the path as given; ids the file name alone
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # tolerate a leading BOM
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                counts["blank_line"] = counts.get("blank_line", 0) + 1
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:  # message stays short even for a 10 MB line
                raise DataError(f"{where}: invalid JSON ({str(e)[:200]})") from None
            except RecursionError:  # e.g. 100K nested "[": json's C parser recurses once per level
                raise DataError(f"{where}: invalid JSON (nested too deeply for Python's json parser)") from None
            try:
                samples.append(parse_record(rec, where, f"{Path(path).name}:{lineno}"))
            except _Unknown as e:
                if not skip_unknown:
                    raise DataError(str(e)) from None
                counts[e.reason] = counts.get(e.reason, 0) + 1
                continue
            except _BadGold as e:
                if not skip_bad_golds:
                    raise
                counts["bad_gold"] = counts.get("bad_gold", 0) + 1
                log.warning("skipped: %s", e)
                continue
            sid = samples[-1].id
            if sid in first_line:
                dups.setdefault(sid, [first_line[sid]]).append(lineno)
                counts["duplicate_id"] = counts.get("duplicate_id", 0) + 1
            first_line.setdefault(sid, lineno)
    if dups:
        shown = "; ".join(f"{i!r} at lines {', '.join(map(str, n))}" for i, n in list(dups.items())[:5])
        log.warning("%s: %d records reuse an earlier id (kept): %s%s", path, counts["duplicate_id"], shown,
                    "; ..." if len(dups) > 5 else "")
    if counts:
        log.warning("%s: loaded %d samples; counts %s", path, len(samples), counts)
    return samples


def to_record(s: Sample) -> dict:
    """Sample -> released-format record (the inverse of parse_record)."""
    meta = dict(s.meta)
    gt = dict(meta.pop("ground_truth", {}))
    ability = meta.pop("ability", None)
    gt["doc_ids" if s.source == "longbench_pro" else "golden_label"] = s.answer
    rec = {"data_source": s.source, "prompt": s.prompt}
    if ability is not None:
        rec["ability"] = ability
    rec["reward_model"] = {"style": "rule", "ground_truth": gt}
    rec["extra_info"] = {"index": s.id, **({"task": s.task} if s.source == BUILD_SOURCE else {}), **meta}
    return rec


def save_jsonl(samples: Sequence[Sample], path) -> None:
    """Write samples in the released record structure; load_jsonl reads back equal samples."""
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(to_record(s), ensure_ascii=False) + "\n")


# -----------------------------------------------------------------------------
# Prompt encoding: chat template, drop what is too long, or (opt-in) cut the middle of a document

def chat_ids(tokenizer, messages: list) -> list[int]:
    """Token ids of the chat-templated prompt with the generation prompt (the assistant turn opened).
    Rendering to text first sidesteps transformers 5 returning a BatchEncoding for tokenize=True."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


DOC_HEADER = re.compile(r"^\[Document \d+\] .*$", re.M)  # how tasks.render_documents labels each one
CUT_MARK = "\n[...]\n"


def _longest_part(messages: list, question: Optional[str]) -> tuple[int, int, int]:
    """(message index, start, end) of the longest stretch of text that is neither the question nor a
    document header: where truncation may cut. For released records without document markers this
    is the longer side of the question (or the whole message when the question is not found)."""
    best = (-1, 0, 0)
    for i, m in enumerate(messages):
        text = m["content"]
        fixed = [mt.span() for mt in DOC_HEADER.finditer(text)]
        k = text.rfind(question) if question else -1
        if k >= 0:
            fixed.append((k, k + len(question)))
        start = 0
        for a, b in sorted(fixed) + [(len(text), len(text))]:
            if a - start > best[2] - best[1]:
                best = (i, start, a)
            start = max(start, b)
    return best


def truncate_prompt(messages: list, question: Optional[str], tokenizer, max_tokens: int) -> Optional[list]:
    """Cut the middle of the longest document part until the templated prompt fits max_tokens.
    The chat template, the question and document headers are never cut. None if it cannot fit."""
    for _ in range(8):  # token counts of re-joined text shift by a few tokens: re-check, cut again
        excess = len(chat_ids(tokenizer, messages)) - max_tokens
        if excess <= 0:
            return messages
        i, a, b = _longest_part(messages, question)
        if i < 0:
            return None
        text = messages[i]["content"]
        part = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        keep = len(part) - excess - 8  # 8: room for the cut mark and re-tokenization at the seams
        if keep < 2:
            return None
        head, tail = part[:keep // 2], part[len(part) - (keep - keep // 2):]
        middle = tokenizer.decode(head) + CUT_MARK + tokenizer.decode(tail)
        messages = [dict(m) for m in messages]
        messages[i]["content"] = text[:a] + middle + text[b:]
    return None


def encode_prompts(samples: Sequence[Sample], tokenizer, max_prompt_tokens: int, *,
                   truncate: bool = False) -> tuple[list[list[int]], list[Sample], dict]:
    """Token ids of each chat-templated prompt (generation prompt included) within max_prompt_tokens.

    The paper drops longer prompts; with truncate=True they are cut in the middle of
    their longest document part instead (the returned Sample carries the cut prompt and
    meta["truncated"] = True). Returns (ids, kept samples in input order, counts)."""
    ids, kept = [], []
    counts = {"kept": 0, "dropped_too_long": 0, "truncated": 0}
    for s in samples:
        x = chat_ids(tokenizer, s.prompt)
        if len(x) > max_prompt_tokens:
            cut = truncate_prompt(s.prompt, s.meta.get("question"), tokenizer, max_prompt_tokens) if truncate else None
            if cut is None:
                counts["dropped_too_long"] += 1
                continue
            s = dataclasses.replace(s, prompt=cut, meta={**s.meta, "truncated": True})
            x = chat_ids(tokenizer, cut)
            counts["truncated"] += 1
        ids.append(x)
        kept.append(s)
        counts["kept"] += 1
    if counts["dropped_too_long"] or counts["truncated"]:
        log.warning("prompts over %d tokens: %s", max_prompt_tokens, counts)
    return ids, kept, counts


# -----------------------------------------------------------------------------
# Sampled rows: what a step generated, one response per row, as the update and the metrics read them

class Record(NamedTuple):
    """One generated row as every rank sees it after the gather: small, no token ids."""
    group: tuple      # globally unique prompt label (step, round, rank, index)
    task: str
    reward: float
    length: int       # response tokens
    truncated: bool   # no EOS before max_new_tokens
    format_ok: bool   # the thinking-format gate passed


@dataclass
class Rows:
    """This rank's sampled responses, one row each, prompt-major (row i answers prompt i // n)."""
    prompts: list        # [R] prompt token ids (list[int]), shared by the n rows of a prompt
    tokens: torch.Tensor     # [R, T] response tokens, pad after EOS
    mask: torch.Tensor       # [R, T] bool, True on response tokens (EOS included)
    rollout_lp: torch.Tensor  # [R, T] float32 log-probs the sampler computed
    rewards: list        # [R] floats
    tasks: list          # [R] task names
    groups: list         # [R] globally unique prompt labels (step, round, rank, index)
    truncated: list      # [R] bools: no EOS before max_new_tokens
    format_ok: list      # [R] bools: the thinking-format gate passed

    @staticmethod
    def cat(parts: list) -> "Rows":
        """Rows of several generation rounds in one, response width padded to the widest."""
        if not parts:  # a rank that drew no prompt
            e = torch.zeros(0, 1)
            return Rows([], e.long(), e.bool(), e, [], [], [], [], [])
        T = max(p.tokens.shape[1] for p in parts)
        pad = lambda x, v: torch.nn.functional.pad(x, (0, T - x.shape[1]), value=v)
        flat = lambda name: [x for p in parts for x in getattr(p, name)]
        return Rows(flat("prompts"), torch.cat([pad(p.tokens, 0) for p in parts]),
                    torch.cat([pad(p.mask, False) for p in parts]),
                    torch.cat([pad(p.rollout_lp, 0.0) for p in parts]), flat("rewards"), flat("tasks"),
                    flat("groups"), flat("truncated"), flat("format_ok"))

    def select(self, keep: list) -> "Rows":
        idx = torch.tensor(keep, dtype=torch.long)
        pick = lambda xs: [xs[i] for i in keep]
        return Rows(pick(self.prompts), self.tokens[idx], self.mask[idx], self.rollout_lp[idx],
                    pick(self.rewards), pick(self.tasks), pick(self.groups), pick(self.truncated),
                    pick(self.format_ok))

    def records(self) -> list:
        """[R] Record of each row (what the other ranks need to know about it)."""
        return [Record(*x) for x in zip(self.groups, self.tasks, self.rewards, self.mask.sum(1).tolist(),
                                        self.truncated, self.format_ok)]


# -----------------------------------------------------------------------------
# Batches for training: each rank's disjoint share of every step's prompts, resumable

class PromptBatches:
    """Global batches of prompts_per_step prompts in an order fixed by (seed, epoch); rank r gets
    positions r, r + world_size, ... of each. An epoch is one shuffled pass; the tail that does not
    fill a batch is dropped (it is in a different place next epoch). balanced=True draws equal numbers
    of prompts per task type in every batch (each task cycles through its own shuffled epochs), as
    QwenLong-L1.5 does. next_batch() is O(batch) except once per epoch (one shuffle)."""

    def __init__(self, samples: Sequence[Sample], prompts_per_step: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, balanced: bool = False):
        if prompts_per_step % world_size:
            raise ValueError(f"prompts_per_step={prompts_per_step} must be divisible by world_size={world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.samples, self.B, self.seed, self.balanced = list(samples), prompts_per_step, seed, balanced
        self.rank, self.world = rank, world_size
        if balanced:  # one stream per task present, in TASK_NAMES order
            self.pools = {t: [i for i, s in enumerate(self.samples) if s.task == t] for t in TASK_NAMES}
            self.pools = {t: p for t, p in self.pools.items() if p}
        else:
            self.pools = {"all": list(range(len(self.samples)))}
        need = -(-self.B // len(self.pools)) if self.pools else self.B
        small = {t: len(p) for t, p in self.pools.items() if len(p) < need}
        if not self.pools or small:
            raise ValueError(f"each stream needs at least {need} samples per batch of {self.B}: "
                             f"{small or 'no samples'}")
        self.step, self._perms = 0, {}  # stream -> (epoch, its shuffled order): one shuffle per epoch
        self.epochs, self.cursors = dict.fromkeys(self.pools, 0), dict.fromkeys(self.pools, 0)

    @property
    def epoch(self) -> int:
        return min(self.epochs.values())

    def _take(self, key: str, k: int) -> list[int]:
        if self.cursors[key] + k > len(self.pools[key]):  # epoch over: drop the tail, reshuffle
            self.epochs[key] += 1
            self.cursors[key] = 0
        e, c = self.epochs[key], self.cursors[key]
        if self._perms.get(key, (None,))[0] != e:
            perm = list(self.pools[key])
            random.Random(f"{self.seed}:{key}:{e}").shuffle(perm)
            self._perms[key] = (e, perm)
        self.cursors[key] = c + k
        return self._perms[key][1][c:c + k]

    def next_global(self) -> list[int]:
        """Indices of the next global batch (every rank computes the same list)."""
        if not self.balanced:
            out = self._take("all", self.B)
        else:
            keys = list(self.pools)
            base, extra = divmod(self.B, len(keys))
            plus = {keys[(self.step * extra + j) % len(keys)] for j in range(extra)}  # rotate the remainder
            out = [i for k in keys for i in self._take(k, base + (k in plus))]
            random.Random(f"{self.seed}:batch:{self.step}").shuffle(out)  # mix tasks across ranks
        self.step += 1
        return out

    def next_batch(self) -> list[Sample]:
        """This rank's share (prompts_per_step / world_size samples) of the next global batch."""
        return [self.samples[i] for i in self.next_global()[self.rank::self.world]]

    def _identity(self) -> dict:
        # What fixes the global order. rank and world_size do not: resuming on another number of GPUs
        # continues the same sequence of global batches, only sliced differently.
        return {"n_samples": len(self.samples), "seed": self.seed, "prompts_per_step": self.B,
                "balanced": self.balanced}

    def state_dict(self) -> dict:
        """Plain ints and dicts (JSON-able): the position in every stream."""
        return {"step": self.step, "epochs": dict(self.epochs), "cursors": dict(self.cursors), **self._identity()}

    def load_state_dict(self, state: dict) -> None:
        for k, mine in self._identity().items():
            if state[k] != mine:
                raise ValueError(f"batch state was saved with {k}={state[k]}, this run has {mine}")
        self.step, self.epochs, self.cursors = state["step"], dict(state["epochs"]), dict(state["cursors"])

