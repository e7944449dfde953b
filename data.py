"""The data of GoLongRL (arXiv 2605.19577): the released dataset, tasks built from your own documents,
difficulty filtering, and each rank's share of every step's prompts.

    python data.py build --out tasks.jsonl --context-tokens 1024              # built-in docs, seconds
    python data.py build --out t.jsonl --context-tokens 32768 --docs books/ --tokenizer PATH_OR_ID
    python data.py build --out hard.jsonl --context-tokens 2048 --filter-with PATH_OR_ID --filter-n 8

    from data import load_jsonl, encode_prompts, PromptBatches
    samples = load_jsonl("golongrl.jsonl")                          # the released format, as is
    ids, samples, counts = encode_prompts(samples, tokenizer, max_prompt_tokens=163840)
    batches = PromptBatches(samples, prompts_per_step=128, rank=rank, world_size=world, seed=0)
    my_prompts = batches.next_batch()                               # this rank's disjoint share

The paper builds its ~23K samples in four phases (SPEC section 9): a capability taxonomy, sources
(curated long-context sets plus real books, papers and dialogues), QA pairs written by models on the
real documents and cross-checked, then difficulty labelling by pass rate. We keep the taxonomy (the
nine task types of rewards.TASKS) and phase 4, and replace model-written QA with questions whose
answers are *computed* from the text (which sentence follows a quote, who mentions a word how often,
in what order sentences appear), so every gold answer is correct by construction and the whole
pipeline runs offline on any documents. Summarization needs a reference written by a person that is
not in the context: we use the docstrings of Python's own standard library as summaries of their code
with the docstring removed. The built-in documents are the Python language reference topics that ship
with every Python (`pydoc_data.topics`), so nothing is downloaded.
"""

import argparse
import ast
import dataclasses
import gzip
import json
import logging
import random
import re
import sysconfig
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import rewards

log = logging.getLogger("data")
TASK_NAMES = tuple(rewards.TASKS)  # the nine task types, in the paper's order
BUILD_SOURCE = "golongrl_build"     # data_source of the tasks built here


# -----------------------------------------------------------------------------
# Samples

@dataclass
class Sample:
    id: str                # unique within a file: extra_info.index, else "file:line"
    task: str              # one of rewards.TASKS
    prompt: list           # chat messages [{"role": ..., "content": ...}]
    answer: object         # the gold, in the type rewards.score expects for this task
    source: str            # the record's data_source
    meta: dict = field(default_factory=dict)  # everything else, JSON-able; "question" guards truncation


class DataError(ValueError):
    """Malformed input: the message names the file, the line and the field."""


# -----------------------------------------------------------------------------
# Reading and writing the released format (SPEC section 8)

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
# The other data sources and their task ("*" = any source containing the word, as in the released set).
SOURCES = {"longbench_pro": "(by reward_mode)", "EM": "precise_retrieval", "selection": "comprehension",
           "*math_longcot_math_verify*": "numerical_reasoning",
           "multitableqa_pretraining": "structured_extraction", BUILD_SOURCE: "(extra_info.task)"}


class _Unknown(Exception):
    """A well-formed record whose data_source or reward_mode we do not know (skippable)."""
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


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


def check_answer(task: str, answer) -> Optional[str]:
    """None if `answer` has the type rewards.score expects for `task`, else what is wrong."""
    if task in ("precise_retrieval", "numerical_reasoning"):
        ok = isinstance(answer, str) and answer.strip()
    elif task in ("comprehension", "summarization"):  # a letter / text, or a list (LongBench-Pro)
        ok = (isinstance(answer, str) and answer.strip()) or (
            isinstance(answer, list) and answer and all(isinstance(a, str) and a.strip() for a in answer))
    elif task == "structured_extraction":
        try:
            rows = json.loads(answer)["data"] if isinstance(answer, str) else answer
        except (ValueError, TypeError, KeyError):
            return f'must be rows or a JSON string {{"data": rows}} for {task}'
        ok = isinstance(rows, list) and all(isinstance(r, list) for r in rows)
    else:  # list tasks: F1, SubEM, NDCG, pairwise
        ok = isinstance(answer, list) and answer and all(isinstance(a, str) and a.strip() for a in answer)
    return None if ok else f"is not a valid gold answer for {task}: {str(answer)[:80]!r}"


def parse_record(rec, where: str) -> Sample:
    """One released-format record -> Sample. `where` ("file:line") prefixes every error."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
    source = _get(rec, "data_source", str, where)
    prompt = _get(rec, "prompt", list, where)
    if not prompt:
        raise DataError(f"{where}: field 'prompt' is an empty list")
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field 'prompt[{i}]' must be {{\"role\": str, \"content\": str}}")
    gt = _get(_get(rec, "reward_model", dict, where), "ground_truth", (dict, list, str), where,
              "reward_model.ground_truth")
    if isinstance(gt, list):  # some records wrap it: the last element is the dict (SPEC section 8)
        if not gt or not isinstance(gt[-1], (dict, str)):
            raise DataError(f"{where}: field 'reward_model.ground_truth' is a list without a dict at the end")
        gt = gt[-1]
    extra = rec.get("extra_info") or {}
    if not isinstance(extra, dict):
        raise DataError(f"{where}: field 'extra_info' must be an object, got {type(extra).__name__}")
    gt_name = "reward_model.ground_truth.golden_label"
    if isinstance(gt, str) and "math_longcot_math_verify" not in source:
        raise DataError(f"{where}: field 'reward_model.ground_truth' must be an object for {source!r}")

    # data_source (and LongBench-Pro's reward_mode) -> task type and the gold in its natural type
    rest = {k: v for k, v in gt.items() if k not in ("golden_label", "doc_ids")} if isinstance(gt, dict) else {}
    if source == "longbench_pro":
        mode = _get(extra, "reward_mode", str, where, "extra_info.reward_mode")
        code = (mode.split() or [""])[0]
        if code not in LONGBENCH_PRO:
            known = ", ".join(f"{c} {n}" for c, (n, _) in LONGBENCH_PRO.items())
            raise _Unknown("unknown_reward_mode",
                           f"{where}: unknown LongBench-Pro reward_mode {mode!r}; known: {known}")
        task = LONGBENCH_PRO[code][1]
        gt_name = "reward_model.ground_truth.doc_ids"
        answer = _get(gt, "doc_ids", list, where, gt_name)
    elif source in ("EM", "selection", "multitableqa_pretraining"):
        task = SOURCES[source]
        answer = _get(gt, "golden_label", str, where, gt_name)
    elif "math_longcot_math_verify" in source:
        task = "numerical_reasoning"
        answer = str(gt if isinstance(gt, str) else _get(gt, "golden_label", (str, int, float), where, gt_name))
    elif source == BUILD_SOURCE:
        task = _get(extra, "task", str, where, "extra_info.task")
        if task not in TASK_NAMES:
            raise DataError(f"{where}: field 'extra_info.task' is {task!r}, not one of {', '.join(TASK_NAMES)}")
        answer = _get(gt, "golden_label", (str, list), where, gt_name)
    else:
        raise _Unknown("unknown_data_source",
                       f"{where}: unknown data_source {source!r}; known: {', '.join(SOURCES)}")
    problem = check_answer(task, answer)
    if problem:
        raise DataError(f"{where}: field {gt_name!r} {problem}")

    meta = {k: v for k, v in extra.items() if k not in ("index", "task")}
    if "ability" in rec:
        meta["ability"] = rec["ability"]
    if rest:
        meta["ground_truth"] = rest  # e.g. LongBench-Pro's language in "summary": kept for save_jsonl
    sid = str(extra["index"]) if "index" in extra else where
    return Sample(sid, task, prompt, answer, source, meta)


def load_jsonl(path, *, skip_unknown: bool = False, counts: Optional[dict] = None) -> list[Sample]:
    """Read a released-format JSONL file. Malformed lines raise DataError naming file, line and field.
    Unknown data_source / reward_mode raise too, unless skip_unknown: then they are counted in `counts`
    (reason -> number) and logged. Blank lines are skipped and counted as "blank_line"."""
    counts = {} if counts is None else counts
    samples = []
    with open(path, "rb") as f:  # bytes, so a bad byte is reported with its line number
        for lineno, raw in enumerate(f, 1):
            where = f"{Path(path).name}:{lineno}"
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
            try:
                samples.append(parse_record(rec, where))
            except _Unknown as e:
                if not skip_unknown:
                    raise DataError(str(e)) from None
                counts[e.reason] = counts.get(e.reason, 0) + 1
    if counts:
        log.warning("%s: loaded %d samples, skipped %s", path, len(samples), counts)
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


DOC_HEADER = re.compile(r"^\[Document \d+\] .*$", re.M)  # how build_tasks labels each document
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

    The paper drops longer prompts (SPEC section 6); with truncate=True they are cut in the middle of
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
# Documents: Python's language reference topics by default, or your .txt/.md/.gz files

@dataclass(frozen=True)
class Document:
    title: str
    text: str


MD_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
RST_UNDERLINE = re.compile(r"^([=\-~*^\"#+])\1{2,}\s*$")
LIST_START = re.compile(r"^\s|^([-*+>|#]|\d+[.)])\s")


def _reflow(text: str) -> str:
    """Join the wrapped lines of prose paragraphs into one line each (so a sentence is one line);
    indented blocks (code), lists and tables keep their lines."""
    paras = re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip())
    out = []
    for p in paras:
        lines = [ln.rstrip() for ln in p.split("\n")]
        if any(LIST_START.match(ln) for ln in lines):
            out.append("\n".join(lines))
        else:  # "read-\nonly" was one word broken at its hyphen: no space there
            out.append(re.sub(r"(?<=[A-Za-z]-)\n(?=[a-z])", "", "\n".join(lines)).replace("\n", " "))
    return "\n\n".join(p for p in out if p.strip())


def split_sections(text: str, title: str, max_chars: int = 8000) -> list[Document]:
    """Split text at Markdown (# Title) or reStructuredText (Title / =====) headings, then split any
    section longer than max_chars at paragraph boundaries into "(part k)" pieces."""
    lines = text.replace("\r\n", "\n").split("\n")
    sections, cur_title, cur, fence, underline = [], title, [], False, False
    for ln, nxt in zip(lines, lines[1:] + [""]):
        if underline:  # the ===== of the reStructuredText heading just taken
            underline = False
            continue
        fence ^= ln.lstrip().startswith("```")  # no headings inside a fenced code block
        md = not fence and MD_HEADING.match(ln)
        underline = bool(not fence and not md and ln.strip() and not ln[0].isspace()
                         and RST_UNDERLINE.match(nxt) and len(nxt.strip()) >= len(ln.strip()))
        if md or underline:
            sections.append((cur_title, "\n".join(cur)))
            cur_title, cur = md.group(1) if md else ln.strip(), []
        else:
            cur.append(ln)
    sections.append((cur_title, "\n".join(cur)))
    docs = []
    for t, body in sections:
        body = _reflow(body)
        if not body:
            continue  # a heading directly followed by another heading
        parts, cur = [], ""  # greedy: paragraphs join the current part while it stays under max_chars
        for p in body.split("\n\n"):
            if cur and len(cur) + 2 + len(p) > max_chars:
                parts.append(cur)
                cur = ""
            while len(p) > max_chars:  # one huge paragraph: hard cut at a line end, else at max_chars
                k = p.rfind("\n", 0, max_chars)
                k = k if k > 0 else max_chars
                parts.append(p[:k])
                p = p[k:].lstrip("\n")
            cur = f"{cur}\n\n{p}" if cur else p
        if cur.strip():
            parts.append(cur)
        docs += [Document(t if len(parts) == 1 else f"{t} (part {k})", x) for k, x in enumerate(parts, 1)]
    return docs


def _read_text(path: Path) -> str:
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read as UTF-8 text ({e})") from None


def load_documents(paths: Optional[Sequence] = None, *, max_chars: int = 8000) -> list[Document]:
    """Documents with unique titles, in a deterministic order.

    No paths: the Python language reference topics (`pydoc_data.topics`, ~80 topics, ~465K characters,
    shipped with every Python). Paths: .txt/.md/.gz files, or folders searched recursively for them
    (other files in folders are skipped and counted); each file is split into titled sections."""
    raw: list[tuple[str, str]] = []
    if paths is None:
        from pydoc_data.topics import topics  # a plain dict of strings: import cost only
        raw = [(key, topics[key]) for key in sorted(topics)]
    else:
        skipped = 0
        for p in map(Path, paths):
            if p.is_dir():
                files = sorted(f for f in p.rglob("*") if f.is_file())
                ok = [f for f in files if f.name.endswith((".txt", ".md", ".txt.gz", ".md.gz"))]
                skipped += len(files) - len(ok)
            elif p.name.endswith((".txt", ".md", ".gz")):
                ok = [p]
            else:
                raise ValueError(f"{p}: not a .txt, .md or .gz file or a folder")
            raw += [(f.name.split(".")[0], _read_text(f)) for f in ok]
        if skipped:
            log.warning("load_documents: skipped %d files that are not .txt/.md/.gz", skipped)
    docs, seen, texts, dropped = [], Counter(), set(), 0
    for title, text in raw:
        for d in split_sections(text, title, max_chars):
            if d.text in texts:  # the reference topics repeat whole sections (e.g. "compound" vs "if")
                dropped += 1
                continue
            texts.add(d.text)
            key = d.title.lower()
            seen[key] += 1  # answers name documents by title: titles must differ (ignoring case)
            docs.append(d if seen[key] == 1 else Document(f"{d.title} ({seen[key]})", d.text))
    if dropped:
        log.info("load_documents: dropped %d sections whose text repeats an earlier one", dropped)
    return docs


# Summarization pairs: a human-written docstring summarizing the code it documents, removed from it.
CODE_MODULES = ("argparse", "bisect", "calendar", "configparser", "contextlib", "copy", "csv", "difflib",
                "fnmatch", "fractions", "functools", "gettext", "glob", "heapq", "ipaddress", "json/decoder",
                "json/encoder", "pprint", "queue", "random", "sched", "shlex", "shutil", "statistics",
                "string", "tarfile", "tempfile", "textwrap", "zipfile")


@dataclass(frozen=True)
class CodeSummary:
    title: str    # "difflib.SequenceMatcher.find_longest_match"
    code: str     # its source with the docstring removed
    summary: str  # the docstring, whitespace collapsed: the reference summary


def load_code_summaries(modules: Sequence[str] = CODE_MODULES) -> list[CodeSummary]:
    """(code, docstring) pairs from standard-library sources, read as text (nothing is imported).
    Kept: modules, classes and functions whose docstring is 80-1000 characters of plain prose (no
    doctest, list or indented block) and whose remaining code is at least as long as the docstring."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    pairs = []
    for name in modules:
        path = stdlib / f"{name}.py"
        if not path.exists():
            continue  # moved or removed in this Python version
        src = path.read_text(encoding="utf-8")
        lines = src.splitlines(keepends=True)
        todo = [(ast.parse(src), name.replace("/", "."))]
        while todo:
            node, qual = todo.pop(0)
            todo += [(n, f"{qual}.{n.name}") for n in getattr(node, "body", [])
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            doc = ast.get_docstring(node)  # prose only: doctests, lists, tables, indented examples are not summaries
            if not doc or not 80 <= len(doc) <= 1000 or ">>>" in doc or any(map(LIST_START.match, doc.split("\n"))):
                continue
            decorators = getattr(node, "decorator_list", None)
            first = decorators[0].lineno if decorators else getattr(node, "lineno", 1)  # the module: line 1
            last = getattr(node, "end_lineno", len(lines))
            ds = node.body[0]  # the docstring statement: drop its lines
            keep = [ln for k, ln in enumerate(lines[first - 1:last], first) if not ds.lineno <= k <= ds.end_lineno]
            code = textwrap.dedent("".join(keep)).strip("\n")
            summary = " ".join(doc.split())
            if len(code) >= len(summary):
                pairs.append(CodeSummary(qual, code, summary))
    return pairs


# -----------------------------------------------------------------------------
# Building tasks: pack real documents up to a token budget, ask what the text itself answers

WORD = re.compile(r"\b[A-Za-z]+\b")  # the counting rule stated in every word question
SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def _ntokens(tokenizer, texts: list[str]) -> list[int]:
    return [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # one batched call


@dataclass(frozen=True)
class _PoolDoc:
    title: str
    title_tok: int  # tokens of the "[Document i] title" header, roughly
    paras: list     # paragraphs (prose reflowed to one line each)
    ntok: list      # tokens per paragraph


def _pool(documents: Sequence[Document], tokenizer) -> list[_PoolDoc]:
    """Documents cut into paragraphs with token counts, tokenized once per build."""
    paras = [d.text.split("\n\n") for d in documents]
    heads = [f"[Document 10] {d.title}" for d in documents]
    lens = iter(_ntokens(tokenizer, heads + [p for ps in paras for p in ps]))
    title_tok = [next(lens) + 2 for _ in documents]
    return [_PoolDoc(d.title, t, ps, [next(lens) for _ in ps]) for d, t, ps in zip(documents, title_tok, paras)]


def _excerpt(d: _PoolDoc, budget: int, rng: random.Random) -> Optional[tuple[str, int]]:
    """A run of consecutive paragraphs of d within `budget` tokens, from a random start."""
    if budget <= 0 or not d.paras:
        return None
    whole = sum(d.ntok) + len(d.ntok)
    if whole <= budget:  # long contexts: whole documents
        return "\n\n".join(d.paras), whole
    start = rng.randrange(len(d.paras))
    for s in list(range(start, len(d.paras))) + list(range(start)):
        total, j = 0, s
        while j < len(d.paras) and total + d.ntok[j] + 1 <= budget:
            total, j = total + d.ntok[j] + 1, j + 1
        if j > s:
            return "\n\n".join(d.paras[s:j]), total
    return None


def _pack(pool: list[_PoolDoc], budget: int, rng: random.Random, forced=()) -> list[tuple[str, str]]:
    """(title, text) passages filling ~budget tokens in random order, so the relevant ones (forced here,
    or picked later from the packed set) sit at random depths. Titles differ ignoring case."""
    chosen = [(t, x) for t, x, _ in forced]
    used = {t.lower() for t, _, _ in forced}
    left = budget - sum(n for _, _, n in forced)
    per = max(64, budget // 4)  # ~4+ passages per prompt at short contexts, whole documents at long ones
    misses = 0  # consecutive draws that added nothing: the pool is used up or the room too small
    while left >= 48 and misses < 50:
        d = pool[rng.randrange(len(pool))]
        got = None if d.title.lower() in used else _excerpt(d, min(per, left) - d.title_tok, rng)
        if got is None:
            misses += 1
            continue
        misses = 0
        chosen.append((d.title, got[0]))
        used.add(d.title.lower())
        left -= got[1] + d.title_tok
    rng.shuffle(chosen)
    return chosen


def render_documents(docs: list[tuple[str, str]]) -> str:
    return "\n\n".join(f"[Document {i}] {t}\n{x}" for i, (t, x) in enumerate(docs, 1))


def render_prompt(docs: list[tuple[str, str]], question: str) -> str:
    head = f"Read the {len(docs)} documents below and answer the question after them."
    return f"{head}\n\n{render_documents(docs)}\n\n{question}"


def _sentences(text: str) -> list[list[str]]:
    """Sentences of each prose paragraph (code blocks and lists skipped)."""
    return [SENT_SPLIT.split(p) for p in text.split("\n\n") if p and not LIST_START.match(p) and "\n" not in p]


def _good(s: str) -> bool:
    # A quotable sentence: a full sentence of moderate length, not ending in an abbreviation.
    return (30 <= len(s) <= 200 and s[-1] in ".!?" and len(s.split()) >= 5
            and not re.search(r"\b(e\.g|i\.e|etc|vs|cf)\.$", s))


def _unique_sentences(docs, ctx: str) -> list[tuple[int, str]]:
    """(document index, sentence) for every good sentence that occurs exactly once in the context."""
    return [(i, s) for i, (_, x) in enumerate(docs) for p in _sentences(x) for s in p
            if _good(s) and ctx.count(s) == 1]


def _word_counts(docs) -> tuple[list[Counter], list[str]]:
    """Per-document counts of each word (case-folded, standalone: WORD), and the words a question may
    ask about: 4+ letters and in no title (so headers never change a count). Sorted, not in set order,
    so the same seed gives the same task in every process."""
    counts = [Counter(w.lower() for w in WORD.findall(x)) for _, x in docs]
    title_words = {w.lower() for t, _ in docs for w in WORD.findall(t)}
    return counts, sorted({w for c in counts for w in c if len(w) >= 4 and w not in title_words})


# The nine task makers. Each gets the packed documents [(title, text)], their rendered text `ctx` and
# the sample's rng, and returns (question, gold answer) or None when this context cannot support the
# task (build_tasks then packs another context). Each question states the output format its reward
# reads. Word questions count WORD matches (runs of ASCII letters, case-folded), words of 4+ letters
# that appear in no title; quotes are sentences that occur exactly once in the context.
WORD_RULE = "Count standalone occurrences in any letter case, not parts of longer words"
LIST_FORMAT = 'Write "[Answer]" and then one {} per line, nothing else.'


def make_precise_retrieval(docs, ctx, rng):
    """EM: quote a sentence, ask for the one right after it (the quote occurs once in the context)."""
    cands = [(t, p[i], p[i + 1]) for t, x in docs for p in _sentences(x) for i in range(len(p) - 1)
             if _good(p[i]) and _good(p[i + 1])]
    rng.shuffle(cands)
    for t, a, b in cands:
        if ctx.count(a) == 1:  # the quoted sentence must pin down one place in the context
            return (f'Question: In the document titled "{t}", which sentence comes right after this one?\n'
                    f'"{a}"\nReply with that sentence only, copied exactly.'), b
    return None


def make_comprehension(docs, ctx, rng):
    """Multiple choice: which of four sentences (all from the context) is in document T."""
    sents = _unique_sentences(docs, ctx)
    target = rng.choice(sents)[0] if sents else 0
    gold = [s for i, s in sents if i == target]
    others = [s for i, s in sents if i != target]
    if not gold or len(others) < 3:
        return None
    options = [rng.choice(gold)] + rng.sample(others, 3)
    order = rng.sample(range(4), 4)  # order[k] is shown as letter k; options[0] is the right one
    lines = "\n".join(f"({'ABCD'[k]}) {options[j]}" for k, j in enumerate(order))
    question = (f'Question: Which of these sentences appears in the document titled "{docs[target][0]}"?\n'
                f'{lines}\nEnd your reply with "The correct answer is (X)", where X is the letter.')
    return question, "ABCD"[order.index(0)]


def make_exhaustive_retrieval(docs, ctx, rng):
    """F1: every document that mentions a word (in some but not all documents)."""
    counts, words = _word_counts(docs)
    cands = [w for w in words if 2 <= sum(c[w] > 0 for c in counts) <= max(2, len(docs) - 1)]
    if not cands:
        return None
    w = rng.choice(cands)
    gold = [t for (t, _), c in zip(docs, counts) if c[w]]
    return (f'Question: List the title of every document whose text contains the word "{w}". '
            f'{WORD_RULE}.\n{LIST_FORMAT.format("title")}'), gold


def make_numerical_reasoning(docs, ctx, rng):
    """Math: how often a word occurs, in one document or summed over all of them."""
    counts, words = _word_counts(docs)
    if rng.random() < 0.5:  # one document
        cands = [(i, w) for w in words for i, c in enumerate(counts) if 2 <= c[w] <= 20]
        if not cands:
            return None
        i, w = rng.choice(cands)
        where, n = f'the document titled "{docs[i][0]}"', counts[i][w]
    else:  # all documents together: the count is spread over the context
        cands = [w for w in words if sum(c[w] > 0 for c in counts) >= 2 and sum(c[w] for c in counts) <= 40]
        if not cands:
            return None
        w = rng.choice(cands)
        where, n = "all the documents together", sum(c[w] for c in counts)
    return (f'Question: How many times does the word "{w}" occur in {where}? {WORD_RULE}. '
            f'Give the final number in \\boxed{{}}.'), str(n)


def make_structured_extraction(docs, ctx, rng):
    """IoU: a JSON table, one row [title, count] per document that mentions a word."""
    counts, words = _word_counts(docs)
    cands = [w for w in words if sum(c[w] > 0 for c in counts) >= 2]
    if not cands:
        return None
    w = rng.choice(cands)
    rows = [[t, c[w]] for (t, _), c in zip(docs, counts) if c[w]]
    return (f'Question: Make a table with one row for each document that contains the word "{w}": the '
            f'document title and how many times the word occurs in it. {WORD_RULE}. Reply with '
            f'<answer>{{"data": [["title", count], ...]}}</answer>.'), rows


def make_structured_matching(docs, ctx, rng):
    """SubEM: match up to four quotes (from different documents) to their document titles."""
    by_doc: dict = {}
    for i, s in _unique_sentences(docs, ctx):
        by_doc.setdefault(i, []).append(s)
    if len(by_doc) < 2:
        return None
    picks = [(i, rng.choice(by_doc[i])) for i in rng.sample(sorted(by_doc), min(4, len(by_doc)))]
    quotes = "\n".join(f'{k}. "{s}"' for k, (_, s) in enumerate(picks, 1))
    return ('Question: Each quote below comes from one of the documents. For each quote write a line '
            f'"NUMBER: TITLE" with the title of its document.\n{quotes}\n{LIST_FORMAT.format("such line")}'), \
        [f"{k}: {docs[i][0]}" for k, (i, _) in enumerate(picks, 1)]


def make_graded_ranking(docs, ctx, rng):
    """NDCG: rank the documents that mention a word by how often, counts all different (no ties)."""
    counts, words = _word_counts(docs)
    cands = {2: [], 3: []}  # words by how many documents contain them (3 = three or more)
    for w in words:
        have = [c[w] for c in counts if c[w]]
        if len(have) >= 2 and len(set(have)) == len(have):  # no ties: one right order
            cands[min(3, len(have))].append(w)
    if not cands[3] and (not cands[2] or rng.random() < 0.75):
        return None  # prefer a new context with a longer ranking; short contexts may only allow two
    w = rng.choice(cands[3] or cands[2])
    ranked = sorted((-c[w], k) for k, c in enumerate(counts) if c[w])
    return (f'Question: Rank the documents that contain the word "{w}" from the most to the fewest '
            f'occurrences of it. {WORD_RULE}.\n{LIST_FORMAT.format("title")}'), [docs[k][0] for _, k in ranked]


def make_sequence_ordering(docs, ctx, rng):
    """Pairwise: put three to five shuffled quotes back in the order they appear in the context."""
    sents = [s for _, s in _unique_sentences(docs, ctx)]
    k = min(5, len(sents))
    if k < 3:
        return None
    picked = sorted(rng.sample(sents, k), key=ctx.find)  # context order
    shown = picked[:]
    while shown == picked:
        rng.shuffle(shown)
    labels = {s: f"S{j}" for j, s in enumerate(shown, 1)}
    lines = "\n".join(f'{labels[s]}: "{s}"' for s in shown)
    return ('Question: The sentences below are quoted from the documents above, in random order. List '
            f'their labels in the order the sentences appear in the documents, first to last.\n{lines}\n'
            f'{LIST_FORMAT.format("label")}'), [labels[s] for s in picked]


def make_summarization(docs, ctx, rng, pair: CodeSummary):
    """ROUGE-L: write the removed docstring of a standard-library function, class or module."""
    # The reference must not be readable in the context (e.g. copied into a comment or another docstring).
    squash = " ".join(ctx.lower().split())
    if any(len(s) > 25 and " ".join(s.lower().split()) in squash for s in SENT_SPLIT.split(pair.summary)):
        return None
    return (f'Question: Document "{pair.title}" is Python source code whose docstring was removed. Write '
            'that docstring: one to four sentences that summarize what the code does.'), pair.summary


MAKERS = {"precise_retrieval": make_precise_retrieval, "comprehension": make_comprehension,
          "exhaustive_retrieval": make_exhaustive_retrieval, "numerical_reasoning": make_numerical_reasoning,
          "structured_extraction": make_structured_extraction, "structured_matching": make_structured_matching,
          "graded_ranking": make_graded_ranking, "sequence_ordering": make_sequence_ordering,
          "summarization": make_summarization}
QUESTION_RESERVE = 256  # tokens kept free for the question (quotes included), at most 1/4 of the context


def build_tasks(documents: Sequence[Document], tokenizer, n_per_task: int, context_tokens: int, seed: int, *,
                tasks: Sequence[str] = TASK_NAMES, code: Optional[Sequence[CodeSummary]] = None) -> list[Sample]:
    """n_per_task samples of each task type. Every templated prompt has at most context_tokens tokens
    (checked with `tokenizer`); every answer is computed from the packed context itself. Sample i of a
    task depends only on (seed, task, i) and the inputs. `code`: summarization pairs (default: the
    standard library's, load_code_summaries())."""
    if len(documents) < 2:
        raise ValueError("build_tasks needs at least 2 documents")
    pool = _pool(documents, tokenizer)
    overhead = len(chat_ids(tokenizer, [{"role": "user", "content": "x"}])) + 16
    if "summarization" in tasks:
        code = load_code_summaries() if code is None else code
        code_tok = _ntokens(tokenizer, [c.code for c in code])
    samples = []
    for task in tasks:
        for i in range(n_per_task):
            rng = random.Random(f"{seed}:{task}:{i}")  # str seeds hash with sha512: same in every process
            budget = context_tokens - overhead - min(QUESTION_RESERVE, context_tokens // 4)
            for _ in range(60):
                forced, pair = (), None
                if task == "summarization":  # the code to summarize, at most ~60% of the documents' room
                    fits = [k for k, n in enumerate(code_tok) if 48 <= n <= 0.6 * budget]
                    if not fits:
                        raise RuntimeError(f"no code to summarize fits in context_tokens={context_tokens}")
                    k = rng.choice(fits)
                    pair = code[k]
                    forced = [(pair.title, pair.code, code_tok[k] + 16)]
                docs = _pack(pool, budget, rng, forced)
                ctx = render_documents(docs)
                made = MAKERS[task](docs, ctx, rng, pair) if pair else MAKERS[task](docs, ctx, rng)
                if len(docs) < 2 or made is None:
                    continue
                question, answer = made
                prompt = [{"role": "user", "content": render_prompt(docs, question)}]
                n = len(chat_ids(tokenizer, prompt))
                if n > context_tokens:  # our estimate was short: shrink the documents and draw again
                    budget -= n - context_tokens + 16
                    continue
                meta = {"question": question, "prompt_tokens": n, "documents": [t for t, _ in docs]}
                samples.append(Sample(f"{task}-{seed}-{i}", task, prompt, answer, BUILD_SOURCE, meta))
                break
            else:
                raise RuntimeError(f"could not build a {task} task (context_tokens={context_tokens}) in 60 "
                                   "tries: give more or longer documents, or a larger context")
    return samples


# -----------------------------------------------------------------------------
# Difficulty filtering (the paper's phase 4): keep the band of pass rates you ask for

def pass_rate(rewards_of_prompt: Sequence[float], threshold: float = 0.5) -> float:
    """Fraction of a prompt's G samples that pass (reward >= threshold). For binary rewards this is the
    fraction correct; for graded ones (F1, NDCG, ROUGE-L) "at least half right" by default."""
    if not rewards_of_prompt:
        raise ValueError("pass_rate of an empty list of rewards")
    return sum(r >= threshold for r in rewards_of_prompt) / len(rewards_of_prompt)


def keep_by_pass_rate(pass_rates: Sequence[float], low: float = 0.0, high: float = 1.0) -> list[bool]:
    """Keep prompts with low < p < high. The default (0, 1) drops what the model always solves and what
    it never solves, the two kinds of prompt that give GRPO no signal."""
    return [low < p < high for p in pass_rates]


def filter_by_difficulty(samples: Sequence[Sample], pass_rates: Sequence[float], low: float = 0.0,
                         high: float = 1.0) -> tuple[list[Sample], dict]:
    """The kept samples (meta["pass_rate"] recorded) and counts: kept, too_easy (p >= high), too_hard."""
    if len(samples) != len(pass_rates):
        raise ValueError(f"{len(samples)} samples but {len(pass_rates)} pass rates")
    keep = keep_by_pass_rate(pass_rates, low, high)
    kept = [dataclasses.replace(s, meta={**s.meta, "pass_rate": p})
            for s, p, k in zip(samples, pass_rates, keep) if k]
    counts = {"kept": len(kept), "too_easy": sum(p >= high for p in pass_rates),
              "too_hard": sum(p <= low for p in pass_rates)}
    return kept, counts


def measure_pass_rates(samples: Sequence[Sample], model_path: str, *, n: int = 8, max_new_tokens: int = 256,
                       threshold: float = 0.5, seed: int = 0, prompts_per_call: int = 4) -> list[float]:
    """Sample each prompt n times with the model at `model_path` (temperature 1, the training sampler)
    and return each prompt's pass rate under rewards.score. Prompts are encoded with the model's own
    tokenizer; a prompt too long for it raises (build with that tokenizer's budget)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import rollout  # imported here so `import data` stays cheap

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    rates = []
    for a in range(0, len(samples), prompts_per_call):
        chunk = samples[a:a + prompts_per_call]
        prompts = [chat_ids(tok, s.prompt) for s in chunk]
        out = rollout.generate(model, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                               eos_token_ids=eos, pad_token_id=pad, seed=seed + a)
        for j, s in enumerate(chunk):  # rows are prompt-major: prompt j owns rows j*n .. j*n+n-1
            texts = [tok.decode(out.tokens[r][out.mask[r].bool()], skip_special_tokens=True)
                     for r in range(j * n, (j + 1) * n)]
            rates.append(pass_rate([rewards.score(s.task, t, s.answer) for t in texts], threshold))
    return rates


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


# -----------------------------------------------------------------------------
# Command line: python data.py build ...

def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build tasks of all nine types from documents and write JSONL")
    b.add_argument("--out", required=True, help="output JSONL (released record format)")
    b.add_argument("--context-tokens", type=int, default=1024, help="max templated prompt tokens")
    b.add_argument("--n-per-task", type=int, default=10, help="samples per task type")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--docs", nargs="+", help=".txt/.md/.gz files or folders (default: Python's reference topics)")
    b.add_argument("--tokenizer", help="tokenizer folder or id (default: the embedded SmolLM2)")
    b.add_argument("--filter-with", help="model folder or id: keep prompts by its pass rate (phase 4)")
    b.add_argument("--filter-n", type=int, default=8, help="samples per prompt for the pass rate")
    b.add_argument("--filter-max-new-tokens", type=int, default=256)
    b.add_argument("--filter-threshold", type=float, default=0.5, help="reward that counts as a pass")
    b.add_argument("--filter-low", type=float, default=0.0, help="keep pass rates > low")
    b.add_argument("--filter-high", type=float, default=1.0, help="keep pass rates < high")
    args = p.parse_args(argv)

    from transformers import AutoTokenizer
    t0 = time.time()
    if args.tokenizer is None:
        from policy import embedded_model_dir
        args.tokenizer = str(embedded_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    documents = load_documents(args.docs)
    chars = sum(len(d.text) for d in documents)
    print(f"{len(documents)} documents ({chars:,} characters), tokenizer {args.tokenizer}")
    samples = build_tasks(documents, tokenizer, args.n_per_task, args.context_tokens, args.seed)
    if args.filter_with:
        rates = measure_pass_rates(samples, args.filter_with, n=args.filter_n, seed=args.seed,
                                   max_new_tokens=args.filter_max_new_tokens, threshold=args.filter_threshold)
        samples, counts = filter_by_difficulty(samples, rates, args.filter_low, args.filter_high)
        print(f"difficulty filter with {args.filter_with}: {counts}")
    save_jsonl(samples, args.out)
    lens = [s.meta["prompt_tokens"] for s in samples]
    per_task = Counter(s.task for s in samples)
    print("samples per task: " + ", ".join(f"{t} {per_task[t]}" for t in TASK_NAMES))
    if lens:
        print(f"prompt tokens: min {min(lens)}, mean {sum(lens) / len(lens):.0f}, max {max(lens)} "
              f"(limit {args.context_tokens})")
        if sum(lens) < 0.5 * len(lens) * args.context_tokens:
            print("note: the documents run out before the context is full; pass more with --docs")
    print(f"wrote {len(samples)} samples to {args.out} in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
