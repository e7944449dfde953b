"""The nine capability rewards of GoLongRL (arXiv 2605.19577): one natural metric per task type.

    from rewards import score, score_batch, TASKS
    r = score("graded_ranking", response, ["doc3", "doc1", "doc7"], require_think=True)   # float in [0, 1]
    rs = score_batch(tasks, responses, answers, processes=8)                                # list[float]

GoLongRL's first claim is that each long-context capability needs its own metric as reward instead of one
binary check (SPEC section 7). Each metric below is a pure function `(response, answer) -> float in [0, 1]`:
`response` is the model's answer text, `answer` the gold in its natural type. `score` first cuts the
thinking off (text up to the last "</think>"), optionally applies the format gate, then dispatches.

    task type               metric             gold
    precise_retrieval       exact_match        str
    comprehension           choice_accuracy    str: "B" (a letter) or the text of the right answer
    exhaustive_retrieval    set_f1             list[str]
    numerical_reasoning     math_equal         str: "12", "3/4", "\\frac{3}{4}", "25%", "1,234", "1.5e-3"
    structured_extraction   row_iou            rows, or a JSON string / dict {"data": rows}
    structured_matching     sub_em             list[str]
    graded_ranking          ndcg               list[str], best first
    sequence_ordering       pairwise_accuracy  list[str], in order
    summarization           rouge_l            str, or list[str] of references (max over them)

Model output is untrusted text, thousands of responses per step, each up to 16K tokens. So:
  * nothing here raises on any `response` (garbage scores 0.0); a malformed *gold* is the caller's bug
    and raises ValueError naming the metric and the problem;
  * numbers are parsed by hand into exact Fractions: no eval, exec or sympy touches model text;
  * every metric is linear (or near-linear) in the response length: the two regexes have no nested
    quantifiers and never rescan text (1 MB of hostile input takes well under a second), and ROUGE-L's
    LCS is bit-parallel over Python ints (`lcs_length`; the plain O(n*m) DP `lcs_length_dp` is kept next
    to it as the reference: ~900x slower at 16K x 1K tokens, see bench.py).

Where this departs from the released scorers (and why):
  * pairwise_accuracy divides by the number of *gold* pairs. The released scorer divides by the pairs of
    *predicted* lines, so printing two correct lines in order scores 1.0: a reward hole RL finds fast.
  * ROUGE-L reads only the answer after "</think>": the thinking would otherwise be scored as summary text.
  * list metrics compare whole lines (lowercased, whitespace collapsed), never substrings, and duplicate
    predicted lines count once: pasting the document, or one right line ten times, earns nothing extra.
  * summarization uses ROUGE-L as GoLongRL's recipe does (SPEC section 7); LongBench-Pro's own evaluator
    scores summaries with an embedding model, which a stdlib-only reward cannot run.
  * ROUGE-L tokens are Unicode alphanumeric runs with each CJK character one token. On ASCII text this is
    exactly rouge-score's tokenizer (no stemming); rouge-score drops non-ASCII letters such as "é".

Imports only the Python standard library: copy the file, or one function, into any trainer.
"""

import functools
import json
import multiprocessing
import re
from collections import Counter
from fractions import Fraction
from math import log2
from typing import Callable, Optional, Sequence


# -----------------------------------------------------------------------------
# Response helpers: the answer after the thinking, the format gate, answer lines

def _as_text(response) -> str:
    # The response is untrusted: anything that is not a string (None, bytes) is an empty answer.
    return response if isinstance(response, str) else ""


def answer_text(response: str) -> str:
    """The text after the last "</think>" (the whole response when there is none)."""
    response = _as_text(response)
    k = response.rfind("</think>")
    return response if k < 0 else response[k + len("</think>"):]


def format_ok(response: str) -> bool:
    """SPEC section 7 gate for thinking models: exactly one "</think>" and at most one "<think>".

    Qwen3 thinking templates put "<think>" in the prompt, so the response may hold only the closing tag.
    """
    response = _as_text(response)
    return response.count("</think>") == 1 and response.count("<think>") <= 1


def _norm(line: str) -> str:
    # Lowercase and collapse runs of whitespace: how list items are compared (SPEC section 7).
    return " ".join(line.lower().split())


def _answer_lines(text: str) -> list[str]:
    """Normalized non-blank lines after the last "[Answer]" marker (all of `text` if there is none)."""
    k = text.rfind("[Answer]")
    if k >= 0:
        text = text[k + len("[Answer]"):]
    lines = (_norm(line) for line in text.splitlines())
    return [line for line in lines if line]


def _unique(items: list[str]) -> list[str]:
    # Keep the first occurrence: a repeated line cannot be counted twice (F1, SubEM, NDCG, pairwise).
    return list(dict.fromkeys(items))


def _gold_items(answer, metric: str, *, distinct: bool) -> list[str]:
    """Validate a gold list and normalize its items like answer lines. Raises ValueError if malformed."""
    if not isinstance(answer, (list, tuple)):
        raise ValueError(f"{metric}: gold answer must be a list of strings, got {type(answer).__name__}")
    if not answer:
        raise ValueError(f"{metric}: gold answer is an empty list")
    items = []
    for i, item in enumerate(answer):
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)  # numeric ids in JSON are fine
        if not isinstance(item, str) or not _norm(item):
            raise ValueError(f"{metric}: gold item {i} must be a non-empty string, got {item!r}")
        items.append(_norm(item))
    if distinct and len(set(items)) != len(items):
        # Ranking and ordering need each item once: a repeated item has no single rank.
        dup = next(x for x, c in Counter(items).items() if c > 1)
        raise ValueError(f"{metric}: gold item {dup!r} appears more than once")
    return items


# -----------------------------------------------------------------------------
# Single answers: exact match and multiple choice

def exact_match(response: str, answer: str) -> float:
    """1.0 if the stripped answer text equals the stripped gold string (precise retrieval)."""
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"exact_match: gold answer must be a non-empty string, got {answer!r}")
    return float(_as_text(response).strip() == answer.strip())


def _leading_letter(s: str) -> Optional[str]:
    """"B", "(B)", "**B**", "B.", "B) text" -> "B"; "Because" -> None (a letter must stand alone)."""
    s = s.lstrip(" \t\n*([:")
    if s[:1].isascii() and s[:1].isalpha() and not (s[1:2].isascii() and s[1:2].isalnum()):
        return s[0].upper()
    return None


def choice_accuracy(response: str, answer) -> float:
    """Multiple choice (comprehension): the letter from "The correct answer is (X)", else the first
    answer line, must equal the gold letter. A gold that is not a single letter (LongBench-Pro T3/T11:
    a list whose first item is the answer text) is compared with the first answer line instead."""
    if isinstance(answer, (list, tuple)):
        answer = _gold_items(answer, "choice_accuracy", distinct=False)[0]
    if not isinstance(answer, str) or not _norm(answer):
        raise ValueError(f"choice_accuracy: gold answer must be a letter or text, got {answer!r}")
    text = _as_text(response)
    lines = _answer_lines(text)
    gold = answer.strip().strip("()").strip()
    if not (len(gold) == 1 and gold.isascii() and gold.isalpha()):
        return float(bool(lines) and lines[0] == _norm(answer))
    # Letter mode. The last "correct answer is" wins: a model that corrects itself means the later one.
    low = text.lower()
    k = low.rfind("correct answer is")
    pred = _leading_letter(low[k + len("correct answer is"):k + 40]) if k >= 0 else None
    if pred is None and lines:
        pred = _leading_letter(lines[0])
    return float(pred == gold.upper())


# -----------------------------------------------------------------------------
# List answers: set F1, SubEM, NDCG, pairwise order accuracy

def set_f1(response: str, answer: list[str]) -> float:
    """F1 between the set of predicted lines and the set of gold items (exhaustive retrieval)."""
    gold = set(_gold_items(answer, "set_f1", distinct=False))
    pred = set(_answer_lines(_as_text(response)))
    hit = len(gold & pred)
    if hit == 0:
        return 0.0
    precision, recall = hit / len(pred), hit / len(gold)
    return 2 * precision * recall / (precision + recall)


def sub_em(response: str, answer: list[str]) -> float:
    """Fraction of gold items that appear as a predicted line (structured matching).

    A whole line must match, not a substring: pasting the document does not match its items."""
    gold = _unique(_gold_items(answer, "sub_em", distinct=False))
    pred = set(_answer_lines(_as_text(response)))
    return sum(item in pred for item in gold) / len(gold)


def ndcg(response: str, answer: list[str]) -> float:
    """trec_eval ndcg_cut@n with linear gain: gold item i of n (best first) has relevance n - i,
    the j-th distinct predicted line (j = 0, 1, ...) is discounted by log2(j + 2), lines past n ignored.
    Reversed 3-list: 0.790; first 2 of 3: 0.895; a wrong item first then the top 2: 0.607."""
    gold = _gold_items(answer, "ndcg", distinct=True)
    n = len(gold)
    rel = {item: n - i for i, item in enumerate(gold)}
    pred = _unique(_answer_lines(_as_text(response)))[:n]
    dcg = sum(rel.get(item, 0) / log2(j + 2) for j, item in enumerate(pred))
    ideal = sum((n - i) / log2(i + 2) for i in range(n))
    return dcg / ideal


def pairwise_accuracy(response: str, answer: list[str]) -> float:
    """Fraction of the n(n-1)/2 gold pairs (a before b) that the prediction puts in the same order
    (sequence ordering); a pair with a missing item counts as wrong. Denominator = gold pairs, not
    predicted pairs as in the released scorer, so two correct lines no longer score 1.0.
    A one-item gold scores 1.0 if that item is predicted."""
    gold = _gold_items(answer, "pairwise_accuracy", distinct=True)
    pred = _unique(_answer_lines(_as_text(response)))
    pos = {item: j for j, item in enumerate(pred)}
    ranks = [pos.get(item) for item in gold]  # predicted position of each gold item, None if absent
    n = len(gold)
    if n == 1:
        return float(ranks[0] is not None)
    # O(n^2) over the gold list (small and trusted), O(1) per predicted line.
    right = sum(1 for i in range(n) if ranks[i] is not None
                for j in range(i + 1, n) if ranks[j] is not None and ranks[i] < ranks[j])
    return right / (n * (n - 1) // 2)


# -----------------------------------------------------------------------------
# Numbers: hand-parsed into exact Fractions (numerical reasoning)

# One numeric token. Every piece is a fixed string, a bounded run, or a greedy run of one character
# class followed only by optional parts, so a match attempt never rescans text: finditer over the
# whole response is linear (no nested quantifiers, no lookahead after an unbounded run).
# Groups: sign, then fn/fd (\frac{a}{b}) | fn1/fd1 (\frac34) | int, frac, exp, sci, den, pct.
_NUMBER = re.compile(
    r"(?=[\\0-9.\-\u2212])"  # cheap first-character filter: lets re skip prose at C speed (7x)
    r"(?P<sign>(?<![\w)])[-\u2212])?"                                   # sign, not a subtraction
    r"(?:\\[dt]?frac\{(?P<fn>[^{}]{1,64})\}\{(?P<fd>[^{}]{1,64})\}"      # \frac{a}{b}, \dfrac, \tfrac
    r"|\\[dt]?frac(?P<fn1>[0-9])(?P<fd1>[0-9])"                          # \frac34
    r"|(?P<int>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+|(?=\.[0-9]))"              # 1,234,567 | 1234 | (.5)
    r"(?P<frac>\.[0-9]+)?"
    r"(?P<exp>[eE][-+]?[0-9]{1,4}(?![0-9]))?"                            # 1.5e-3
    r"(?: ?(?:\\times|\\cdot|\u00d7) ?10\^\{?(?P<sci>[-+]?[0-9]{1,4})\}?)?"  # 1.5 \times 10^{3}
    r"(?: ?/ ?(?P<den>[0-9]{1,64})(?![0-9.]))?"                          # a/b
    r"(?P<pct> ?\\?%)?)"                                                 # 25%  25\%
)
_MAX_DIGITS = 200  # longer runs of digits are not an answer (and would be slow exact arithmetic)


def _number_value(m: "re.Match") -> Optional[tuple[Fraction, bool]]:
    """(value, is_percent) of a _NUMBER match, or None if it is not a sensible number."""
    if m.group("fn") is not None or m.group("fn1") is not None:
        num = _NUMBER.fullmatch((m.group("fn") or m.group("fn1")).strip())
        den = _NUMBER.fullmatch((m.group("fd") or m.group("fd1")).strip())
        a, b = (_number_value(num) if num else None), (_number_value(den) if den else None)
        if a is None or b is None or b[0] == 0:
            return None
        return (-1 if m.group("sign") else 1) * a[0] / b[0], False
    digits = m.group("int").replace(",", "") + (m.group("frac") or ".")[1:]
    if not digits or len(digits) > _MAX_DIGITS:
        return None
    # value = int(all digits) * 10^(exponent - number of decimals): exact, no float rounding.
    scale = int(m.group("exp")[1:]) if m.group("exp") else 0
    scale += int(m.group("sci")) if m.group("sci") else 0
    scale -= len((m.group("frac") or ".")[1:])
    value = Fraction(int(digits)) * Fraction(10) ** scale
    if m.group("den") is not None:
        if len(m.group("den")) > _MAX_DIGITS or int(m.group("den")) == 0:
            return None
        value /= int(m.group("den"))
    if m.group("sign"):
        value = -value
    return value, m.group("pct") is not None


def _clean_math(s: str) -> str:
    # LaTeX decoration that sits around numbers: $..$, \left( \right), thin spaces, "\!".
    for junk in ("$", "\\left", "\\right", "\\!", "\\,", "\\;", "\\ "):
        s = s.replace(junk, "")
    return s.strip()


def _first_number(text: str) -> Optional[tuple[Fraction, bool]]:
    m = _NUMBER.search(text)
    return _number_value(m) if m else None


def _last_number(text: str) -> Optional[tuple[Fraction, bool]]:
    last = None
    for last in _NUMBER.finditer(text):  # C-speed scan; we only keep the last match
        pass
    return _number_value(last) if last else None


def _boxed(text: str) -> Optional[str]:
    """Contents of the last \\boxed{...}, nested braces allowed; None if absent or unbalanced."""
    k = text.rfind("\\boxed{")
    if k < 0:
        return None
    start = k + len("\\boxed{")
    depth = 1
    # Count braces with str.find hops, not char by char: linear, and fast on long text.
    i = start
    while depth:
        o, c = text.find("{", i), text.find("}", i)
        if c < 0:
            return None
        if 0 <= o < c:
            depth, i = depth + 1, o + 1
        else:
            depth, i = depth - 1, c + 1
    return text[start:i - 1]


def _final_answer(text: str) -> Optional[tuple[Fraction, bool]]:
    """The response's final number: last \\boxed{...}, else after the last "answer is", else the last
    number anywhere. Inside a box, "x = 5" reads the part after the last "=" and "12 apples" the 12."""
    box = _boxed(text)
    if box is not None:
        box = _clean_math(box)
        return _first_number(box[box.rfind("=") + 1:])
    low = text.lower()  # only used to find the marker; numbers read the same lowercased
    k = low.rfind("answer is")
    if k >= 0:
        found = _first_number(_clean_math(low[k + len("answer is"):]))
        if found is not None:
            return found
    return _last_number(text)


def _gold_number(answer) -> tuple[Fraction, bool]:
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = repr(answer)
    if not isinstance(answer, str):
        raise ValueError(f"math_equal: gold answer must be a number string, got {answer!r}")
    box = _boxed(answer)
    s = _clean_math(answer if box is None else box)
    m = _NUMBER.fullmatch(s)
    value = _number_value(m) if m else None
    if value is None:
        raise ValueError(f"math_equal: cannot read gold answer {answer!r} as a number "
                         "(integers, decimals, 1,234, 25%, 1.5e-3, a/b, \\frac{a}{b})")
    return value


def math_equal(response: str, answer: str) -> float:
    """1.0 if the final answer equals the gold number within relative tolerance 1e-4 (exact for 0).

    A percent matches either reading: gold "25%" accepts 25% / 25 / 0.25; gold "0.25" accepts "25%"."""
    g, g_pct = _gold_number(answer)
    found = _final_answer(_as_text(response))
    if found is None:
        return 0.0
    p, p_pct = found
    golds = {g, g / 100} if g_pct else {g}
    preds = {p, p / 100} if p_pct else {p}
    tol = Fraction(1, 10_000)
    return float(any(abs(x - y) <= tol * abs(y) for x in preds for y in golds))


# -----------------------------------------------------------------------------
# Tables: multiset IoU of rows (structured extraction)

def _cell(c) -> str:
    # Cells compare as strings: "12" and 12 are the same cell; nested values by their JSON text.
    return c.strip() if isinstance(c, str) else json.dumps(c, ensure_ascii=False, sort_keys=True)


def _loads(s: str):
    try:
        return json.loads(s)
    except (ValueError, RecursionError):  # invalid JSON, or nesting deeper than the parser allows
        return None


def _rows_of(obj) -> Optional[list]:
    if isinstance(obj, dict):
        obj = obj.get("data")
    return obj if isinstance(obj, list) else None


def _response_rows(text: str) -> Optional[Counter]:
    """Multiset of rows from {"data": rows} (or bare rows), inside the last <answer>...</answer> if present,
    code fences allowed; None if no table can be read. A row that is not a list is kept as a row that
    matches nothing (it still counts in the union)."""
    k = text.rfind("<answer>")
    if k >= 0:
        end = text.find("</answer>", k)
        text = text[k + len("<answer>"):end if end >= 0 else len(text)]
    text = text.strip()
    rows = _rows_of(_loads(text))
    if rows is None:  # prose or ```json fences around the object: try from the first "{" to the last "}"
        a, b = text.find("{"), text.rfind("}")
        rows = _rows_of(_loads(text[a:b + 1])) if 0 <= a < b else None
    if rows is None:
        return None
    out = Counter()
    for i, row in enumerate(rows):
        try:
            key = tuple(_cell(c) for c in row) if isinstance(row, list) else ("\0not a row", i)
        except (ValueError, RecursionError):  # a cell nested too deep to serialize
            key = ("\0not a row", i)
        out[key] += 1
    return out


def _gold_rows(answer) -> Counter:
    obj = answer
    if isinstance(obj, str):
        obj = _loads(obj)
        if obj is None:
            raise ValueError(f"row_iou: gold answer is not valid JSON: {answer[:80]!r}")
    rows = _rows_of(obj)
    if rows is None or not all(isinstance(r, list) for r in rows):
        raise ValueError(f"row_iou: gold must be rows (a list of lists) or {{\"data\": rows}}, got {answer!r:.80}")
    return Counter(tuple(_cell(c) for c in r) for r in rows)


def row_iou(response: str, answer) -> float:
    """|pred & gold| / |pred | gold| over multisets of rows; no readable table scores 0.
    An empty gold table scores 1.0 only against an empty predicted table."""
    gold = _gold_rows(answer)
    pred = _response_rows(_as_text(response))
    if pred is None:
        return 0.0
    union = sum((pred | gold).values())
    if union == 0:  # both tables empty
        return 1.0
    return sum((pred & gold).values()) / union


# -----------------------------------------------------------------------------
# ROUGE-L: token LCS, bit-parallel over Python ints (summarization)

# CJK ideographs and kana: one token per character. Everything else: runs of Unicode letters/digits.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")  # two single-class alternatives: linear


def tokens(text: str) -> list[str]:
    """ROUGE tokens: lowercase alphanumeric runs, each CJK character one token."""
    return _TOKEN.findall(text.lower())


def lcs_length_dp(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence, the plain O(len(a)*len(b)) DP (the reference)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the LCS, bit-parallel (Crochemore et al. 2001; Hyyro 2004): the same number as
    lcs_length_dp in O(len(a) * len(b) / 64) machine-word operations, run by CPython's big-int code.

    Bit i of V stands for position i of the shorter sequence. For each element y of the longer one,
    with M = the positions where the shorter holds y and U = V & M:  V <- (V + U) | (V - U).
    The LCS length is the number of zero bits among the low len(shorter) bits of V.
    Bits over the shorter sequence (the reference, ~1K tokens) keep the ints small and the memory
    bounded; elements of the response that the reference never uses are skipped for free."""
    if len(a) > len(b):
        a, b = b, a  # a: the shorter, one bit per position; b: the longer, one loop step per element
    masks: dict = {}
    for i, x in enumerate(a):
        masks[x] = masks.get(x, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    get = masks.get
    for y in b:
        m = get(y)
        if m is not None:
            u = v & m
            v = ((v + u) | (v - u)) & full  # & full: drop the carry out of the top bit
    return len(a) - v.bit_count()


def rouge_l(response: str, answer) -> float:
    """ROUGE-L F1 = 2PR/(P+R) with P = LCS/len(pred), R = LCS/len(ref), max over the references."""
    refs = [answer] if isinstance(answer, str) else answer
    if not isinstance(refs, (list, tuple)) or not refs or not all(isinstance(r, str) for r in refs):
        raise ValueError(f"rouge_l: gold must be a reference string or a non-empty list of them, got {answer!r:.80}")
    ref_tokens = [tokens(r) for r in refs]
    if not all(ref_tokens):
        raise ValueError(f"rouge_l: a reference has no tokens: {answer!r:.80}")
    pred = tokens(_as_text(response))
    best = 0.0
    for ref in ref_tokens:
        lcs = lcs_length(pred, ref) if pred else 0
        if lcs:
            p, r = lcs / len(pred), lcs / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


# -----------------------------------------------------------------------------
# Dispatch: task name -> metric, one response or a batch

TASKS: dict[str, Callable] = {
    "precise_retrieval": exact_match,
    "comprehension": choice_accuracy,
    "exhaustive_retrieval": set_f1,
    "numerical_reasoning": math_equal,
    "structured_extraction": row_iou,
    "structured_matching": sub_em,
    "graded_ranking": ndcg,
    "sequence_ordering": pairwise_accuracy,
    "summarization": rouge_l,
}
POOL_MIN_BATCH = 64  # below this a process pool costs more to start than it saves


def _metric(task: str) -> Callable:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]


def score(task: str, response: str, answer, *, require_think: bool = False) -> float:
    """Reward of one response: format gate (if require_think), strip the thinking, apply the task metric."""
    metric = _metric(task)
    if require_think and not format_ok(response):
        metric(response="", answer=answer)  # still validate the gold: bad data must not hide behind the gate
        return 0.0
    return metric(answer_text(response), answer)


def score_batch(tasks: Sequence[str], responses: Sequence[str], answers: Sequence, *,
                require_think: bool = False, processes: int = 0) -> list[float]:
    """score() over a batch; with processes > 0 and at least POOL_MIN_BATCH items, in a process pool
    (spawned, not forked: safe in a trainer that already holds CUDA state and threads)."""
    tasks, responses, answers = list(tasks), list(responses), list(answers)
    if not len(tasks) == len(responses) == len(answers):
        raise ValueError(f"score_batch: {len(tasks)} tasks, {len(responses)} responses, {len(answers)} answers")
    for task in set(tasks):
        _metric(task)  # fail fast on a bad task name, before starting any worker
    one = functools.partial(score, require_think=require_think)
    if processes > 0 and len(tasks) >= POOL_MIN_BATCH:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            chunk = max(1, len(tasks) // (4 * processes))
            return pool.starmap(one, zip(tasks, responses, answers), chunksize=chunk)
    return [one(t, r, a) for t, r, a in zip(tasks, responses, answers)]
