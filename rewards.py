"""The nine capability rewards of GoLongRL (arXiv 2605.19577): one natural metric per task type.

    from rewards import score, score_batch, REWARDS
    r = score("graded_ranking", response, ["doc3", "doc1", "doc7"], require_think=True)   # float in [0, 1]
    rs = score_batch(tasks, responses, answers, processes=8)                                # list[float]

GoLongRL's first claim is that each long-context capability needs its own metric as reward instead of one
binary check (the paper's format gate). Each metric below is a pure function `(response, answer) -> float in [0, 1]`:
`response` is the model's answer text, `answer` the gold in its natural type. `score` first cuts the
thinking off (text up to the last "</think>"), optionally applies the format gate, then dispatches.

    task type               metric             gold
    precise_retrieval       exact_match        str
    comprehension           choice_accuracy    str: "B" (a letter) or the text of the right answer
    exhaustive_retrieval    set_f1             list[str]
    numerical_reasoning     math_equal         str: "12", "3/4", "\\frac{\\sqrt{3}}{2}", "2\\pi", "25%", "(1, 2)", "[0, 1)"
    structured_extraction   row_iou            rows, or a JSON string / dict {"data": rows}
    structured_matching     sub_em (F1)        list[str]
    graded_ranking          ndcg               list[str], best first
    sequence_ordering       pairwise_accuracy  list[str], in order
    summarization           rouge_l            str, or list[str] of references (max over them)

Model output is untrusted text, thousands of responses per step, each up to 16K tokens. So:
  * nothing here raises on any `response` (garbage scores 0.0); a malformed *gold* is the caller's bug
    and raises ValueError naming the metric and the problem. `parse_gold(task, gold)` runs the very
    check the metric runs, so a loader can refuse a bad gold before training (data.py does);
  * final answers are read by a small hand-written parser of LaTeX and plain arithmetic (`parse_math`:
    \\frac, \\sqrt, ^, \\pi, 2\\frac12, 1{,}234, \\text{} units, tuples, intervals, sets) into exact
    Fractions where possible: no eval, exec or sympy touches model text;
  * every metric reads at most the last MAX_ANSWER_CHARS = 65,536 characters of the answer (about 16K
    tokens; from a line break on, so no line is read in part), and the parser at most MAX_EXPR_CHARS =
    500, nested at most MAX_DEPTH deep, with exact numbers of at most MAX_BITS bits (model output is
    untrusted text). exact_match alone compares the whole answer, a C-speed string compare. Every metric on
    any 1 MB string returns in well under 100 ms (tested); the regexes have no nested quantifiers and
    never rescan text, and ROUGE-L's LCS is bit-parallel over Python ints (`lcs_length`; the plain
    O(n*m) DP `lcs_length_dp` is kept next to it as the reference: ~900x slower at 16K x 1K tokens,
    see bench.py).

Where this departs from the released scorers (and why):
  * pairwise_accuracy divides by the number of *gold* pairs. The released scorer divides by the pairs of
    *predicted* lines, so printing two correct lines in order scores 1.0: a reward hole RL finds fast.
  * sub_em (structured matching) is an F1 over lines, not recall alone: the released SubEM counts the gold
    items found among the predicted lines, so writing "k: TITLE" for every quote number and every title
    scored 1.0. Extra lines now cost precision, as in set_f1.
  * a percent sign in a numerical answer is a unit: "8\\%" equals a gold 8, not a gold 0.08. Graders
    that accept either reading give every answer a second guess a factor 100 away for the price of a "%".
    A gold written "8%" accepts 8%, 8 or 0.08.
  * choice_accuracy scores 0 when the answer names several letters ("(A), (B), (C) or (D)", or the
    options copied out line by line): reading the first letter named paid the listing whenever it was (A).
  * ROUGE-L reads only the answer after "</think>": the thinking would otherwise be scored as summary text.
  * list metrics compare whole lines (lowercased, whitespace collapsed), never substrings, and duplicate
    predicted lines count once: pasting the document, or one right line ten times, earns nothing extra.
  * summarization uses ROUGE-L as GoLongRL's recipe does; LongBench-Pro's own evaluator
    scores summaries with an embedding model, which a stdlib-only reward cannot run.
  * ROUGE-L tokens are Unicode alphanumeric runs with each CJK character one token. On ASCII text this is
    exactly rouge-score's tokenizer (no stemming); rouge-score drops non-ASCII letters such as "é".

The file reads in the order of the table above: the helpers every metric shares, the nine metrics,
then REWARDS (task -> (metric, gold reader), the one table a new reward is added to) with score and
score_batch, and last an appendix: the parser that reads a final math answer (numbers, LaTeX,
arithmetic) for math_equal.

Imports only the Python standard library: copy the file, or one function, into any trainer. Needs
Python 3.10 or newer (int.bit_count in lcs_length).
"""

import functools
import json
import math
import multiprocessing
import re
from collections import Counter
from fractions import Fraction
from math import log2
from typing import Callable, Optional, Sequence

# Bounds on what untrusted text can cost: every metric on any 1 MB string
# returns in well under 100 ms, math_equal in under 10 ms.
MAX_ANSWER_CHARS = 65_536  # every metric reads at most this tail of the answer (~16K tokens)
MAX_EXPR_CHARS = 500       # a boxed or final answer longer than this is not parsed
MAX_DEPTH = 50             # nesting of groups, fractions, roots, signs and powers
MAX_BITS = 4_096           # a larger Fraction continues as a float; beyond float range: unparseable
MAX_ITEMS = 64             # elements of one tuple, interval, set or list


# -----------------------------------------------------------------------------
# Response helpers: the answer after the thinking, the format gate, answer lines

def _as_text(response) -> str:
    # The response is untrusted: anything that is not a string (None, bytes) is an empty answer.
    return response if isinstance(response, str) else ""


def _tail(response) -> str:
    """What a metric reads: the last MAX_ANSWER_CHARS characters of the answer. When that cuts the text,
    reading starts after the first line break in the tail, so no line is read in part ("xdoc1" must not
    become "doc1"); a tail without a line break is read as empty. This bounds every
    metric's work on hostile text (1 MB in well under 100 ms) and costs a real answer nothing."""
    return _last_chars(_as_text(response), MAX_ANSWER_CHARS)


def _last_chars(text: str, n: int, seps: str = "\n") -> str:
    # The last n characters, from just after the first of `seps` found in them ("" if none is).
    if len(text) <= n:
        return text
    if text[-n - 1] in seps:  # the cut falls on a separator: nothing is read in part
        return text[-n:]
    text = text[-n:]
    for sep in seps:
        k = text.find(sep)
        if k >= 0:
            return text[k + 1:]
    return ""


def answer_text(response: str) -> str:
    """The text after the last "</think>" (the whole response when there is none)."""
    response = _as_text(response)
    k = response.rfind("</think>")
    return response if k < 0 else response[k + len("</think>"):]


def format_ok(response: str) -> bool:
    """The paper's format gate for thinking models: exactly one "</think>" and at most one "<think>".

    Qwen3 thinking templates put "<think>" in the prompt, so the response may hold only the closing tag.
    """
    response = _as_text(response)
    return response.count("</think>") == 1 and response.count("<think>") <= 1


def _norm(line: str) -> str:
    # Lowercase and collapse runs of whitespace: how list items are compared.
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
# 1-2. precise retrieval, comprehension: exact match, multiple choice

def _gold_text(answer) -> str:
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"exact_match: gold answer must be a non-empty string, got {answer!r:.80}")
    return answer.strip()


def exact_match(response: str, answer: str) -> float:
    """1.0 if the stripped answer text equals the stripped gold string (precise retrieval)."""
    return float(_as_text(response).strip() == _gold_text(answer))


def _leading_letter(s: str) -> Optional[str]:
    """"B", "(B)", "**B**", "B.", "B) text" -> "B"; "Because" -> None (a letter must stand alone)."""
    s = s.lstrip(" \t\n*([:")
    if s[:1].isascii() and s[:1].isalpha() and not (s[1:2].isascii() and s[1:2].isalnum()):
        return s[0].upper()
    return None


def _gold_choice(answer) -> str:
    if isinstance(answer, (list, tuple)):
        answer = _gold_items(answer, "choice_accuracy", distinct=False)[0]
    if not isinstance(answer, str) or not _norm(answer):
        raise ValueError(f"choice_accuracy: gold answer must be a letter or text, got {answer!r:.80}")
    return answer


# Option letters a hedge names: "(C)" in any case, or a bare capital A-H ("A or B"; "I" is a word).
_OPTION = re.compile(r"\(([A-Za-z])\)|(?<![\w'])([A-H])(?![\w'])")
# An answer line that is an option label: "B", "(B)", "**B**", "B.", "B) text", "[B]" (lines are lowercased).
_LABEL_LINE = re.compile(r"[*(\[]*([a-z])(?:$|[).:\]*])")
_MARKER = re.compile(r"correct answer is", re.IGNORECASE)


def _named_letters(span: str) -> set:
    return {(a or b).upper() for a, b in _OPTION.findall(span)}


def choice_accuracy(response: str, answer) -> float:
    """Multiple choice (comprehension): the letter from "The correct answer is (X)", else the first
    answer line, must equal the gold letter. A gold that is not a single letter (LongBench-Pro T3/T11:
    a list whose first item is the answer text) is compared with the first answer line instead.

    An answer that names several letters scores 0 whichever is right: "The correct answer is (A), (B),
    (C) or (D)" in the sentence after the marker, or (with no marker) two or more answer lines that are
    option labels, such as the options copied out "(A) ...", "(B) ...". Reading the first letter named
    gave the listing full marks whenever the gold was (A)."""
    answer = _gold_choice(answer)
    text = _tail(response)
    lines = _answer_lines(text)
    gold = answer.strip().strip("()").strip()
    if not (len(gold) == 1 and gold.isascii() and gold.isalpha()):
        return float(bool(lines) and lines[0] == _norm(answer))
    # Letter mode. The last "correct answer is" wins: a model that corrects itself means the later one.
    marker, pred = None, None
    for marker in _MARKER.finditer(text):  # C-speed scan; keep the last
        pass
    if marker is not None:
        after = text[marker.end():marker.end() + 80]
        sentence = re.split(r"\n|\.(?:\s|$)", after, maxsplit=1)[0]  # up to the sentence end
        pred = _leading_letter(after.lower())
        if pred is not None and len(_named_letters(sentence) | {pred}) > 1:
            return 0.0  # "(A), (B) or (C)": a hedge, not an answer
    if pred is None:
        pred = _leading_letter(lines[0]) if lines else None
        labels = {m.group(1) for m in map(_LABEL_LINE.match, lines) if m}
        if len(labels) > 1:
            return 0.0  # several lines that each name an option: a list of options, not an answer
    return float(pred == gold.upper())


# -----------------------------------------------------------------------------
# 3. exhaustive retrieval: set F1 over answer lines

def _line_f1(gold: set, pred: set) -> float:
    # F1 of two sets of lines: recall alone would pay for listing every candidate line.
    hit = len(gold & pred)
    if hit == 0:
        return 0.0
    precision, recall = hit / len(pred), hit / len(gold)
    return 2 * precision * recall / (precision + recall)


def set_f1(response: str, answer: list[str]) -> float:
    """F1 between the set of predicted lines and the set of gold items (exhaustive retrieval)."""
    gold = set(_gold_items(answer, "set_f1", distinct=False))
    return _line_f1(gold, set(_answer_lines(_tail(response))))


# -----------------------------------------------------------------------------
# 4. numerical reasoning: math equivalence (reading the final answer is the appendix at the end)

def _gold_math(answer):
    """A numerical_reasoning gold parsed by the same parser as the responses; ValueError if unreadable."""
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = repr(answer)
    if not isinstance(answer, str):
        raise ValueError(f"math_equal: gold answer must be a number string, got {answer!r}")
    box = _boxed(answer)
    parsed = parse_math(answer if box is None else box)
    if parsed is None:
        raise ValueError(f"math_equal: cannot read gold answer {answer!r:.80} as a number or tuple "
                         "(LaTeX or plain arithmetic: 12, 3/4, \\frac{\\sqrt{3}}{2}, 2\\pi, 25%, (1, 2), [0, 1))")
    return parsed


def math_equal(response: str, answer: str) -> float:
    """1.0 if the final answer equals the gold (relative tolerance 1e-4; exact for an integer gold).

    Both sides go through parse_math. Several numbers against a scalar gold ("\\boxed{2, 3}" vs 2): 0.

    The percent rule: a "%" in the response is a unit and "8\\%" reads as 8, the number written. Math
    golds for "what percent ..." questions are written "8", and a model that adds the sign is right.
    It is not also right against a gold 0.08: reading the sign both ways (as before, and as some
    released graders do) let one answer match two golds a factor 100 apart, so appending "%" was a
    free second guess. A gold written with "%" names a percentage, and then its fraction states the
    same quantity: gold "8%" accepts 8%, 8 and 0.08 (one of them per answer; 0.08% is not 8%)."""
    g, g_pct = _gold_math(answer)
    found = _final_answer(_tail(response))
    if found is None:
        return 0.0
    p, p_pct = found
    p, written = _as_written(p, p_pct), _as_written(g, g_pct)
    golds = [written, g] if g_pct and not p_pct else [written]
    return float(any(_values_equal(p, y) for y in golds))


# -----------------------------------------------------------------------------
# 5. structured extraction: multiset IoU of rows

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
    pred = _response_rows(_tail(response))
    if pred is None:
        return 0.0
    union = sum((pred | gold).values())
    if union == 0:  # both tables empty
        return 1.0
    return sum((pred & gold).values()) / union


# -----------------------------------------------------------------------------
# 6-8. structured matching, graded ranking, sequence ordering: SubEM as F1, NDCG, pairwise order

def sub_em(response: str, answer: list[str]) -> float:
    """SubEM with precision (structured matching): F1 between the distinct predicted lines and the gold
    items, so every gold line written and nothing else scores 1.0; half of them and nothing else 2/3.

    The released scorer counts recall only (the fraction of gold items found as a line): writing
    "k: TITLE" for every quote number k and every title found them all and scored 1.0. Here each extra
    line costs precision, as in set_f1: that answer scores 2P/(P+1) with P = 1/(number of titles).
    A whole line must match, not a substring: pasting the document does not match its items."""
    gold = set(_gold_items(answer, "sub_em", distinct=False))
    return _line_f1(gold, set(_answer_lines(_tail(response))))


def ndcg(response: str, answer: list[str]) -> float:
    """trec_eval ndcg_cut@n with linear gain: gold item i of n (best first) has relevance n - i,
    the j-th distinct predicted line (j = 0, 1, ...) is discounted by log2(j + 2), lines past n ignored.
    Reversed 3-list: 0.790; first 2 of 3: 0.895; a wrong item first then the top 2: 0.607."""
    gold = _gold_items(answer, "ndcg", distinct=True)
    n = len(gold)
    rel = {item: n - i for i, item in enumerate(gold)}
    pred = _unique(_answer_lines(_tail(response)))[:n]
    dcg = sum(rel.get(item, 0) / log2(j + 2) for j, item in enumerate(pred))
    ideal = sum((n - i) / log2(i + 2) for i in range(n))
    return dcg / ideal


def pairwise_accuracy(response: str, answer: list[str]) -> float:
    """Fraction of the n(n-1)/2 gold pairs (a before b) that the prediction puts in the same order
    (sequence ordering); a pair with a missing item counts as wrong. Denominator = gold pairs, not
    predicted pairs as in the released scorer, so two correct lines no longer score 1.0.
    A one-item gold scores 1.0 if that item is predicted."""
    gold = _gold_items(answer, "pairwise_accuracy", distinct=True)
    pred = _unique(_answer_lines(_tail(response)))
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
# 9. summarization: ROUGE-L, token LCS bit-parallel over Python ints

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


def _gold_references(answer) -> list[list[str]]:
    refs = [answer] if isinstance(answer, str) else answer
    if not isinstance(refs, (list, tuple)) or not refs or not all(isinstance(r, str) for r in refs):
        raise ValueError(f"rouge_l: gold must be a reference string or a non-empty list of them, got {answer!r:.80}")
    ref_tokens = [tokens(r) for r in refs]
    if not all(ref_tokens):
        raise ValueError(f"rouge_l: a reference has no tokens: {answer!r:.80}")
    return ref_tokens


def rouge_l(response: str, answer) -> float:
    """ROUGE-L F1 = 2PR/(P+R) with P = LCS/len(pred), R = LCS/len(ref), max over the references."""
    ref_tokens = _gold_references(answer)
    pred = tokens(_tail(response))
    best = 0.0
    for ref in ref_tokens:
        lcs = lcs_length(pred, ref) if pred else 0
        if lcs:
            p, r = lcs / len(pred), lcs / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return best


# -----------------------------------------------------------------------------
# The table: task -> (its metric, its gold reader); score one response or a batch

# One row per task type, in the order of the table in the module docstring: the metric, and the
# function it reads the gold with (each metric calls the same function first, so a gold that
# parse_gold accepts is one the metric can score, and a gold it refuses would have made the metric
# raise: load-time checks and scoring cannot disagree). data.py, tasks.py and report.py take their
# task names from here: a new reward is one metric function and one row (plus, to build tasks for it
# offline, a tasks.make_<task> function).
REWARDS: dict[str, tuple[Callable, Callable]] = {
    "precise_retrieval": (exact_match, _gold_text),
    "comprehension": (choice_accuracy, _gold_choice),
    "exhaustive_retrieval": (set_f1, functools.partial(_gold_items, metric="set_f1", distinct=False)),
    "numerical_reasoning": (math_equal, _gold_math),
    "structured_extraction": (row_iou, _gold_rows),
    "structured_matching": (sub_em, functools.partial(_gold_items, metric="sub_em", distinct=False)),
    "graded_ranking": (ndcg, functools.partial(_gold_items, metric="ndcg", distinct=True)),
    "sequence_ordering": (pairwise_accuracy, functools.partial(_gold_items, metric="pairwise_accuracy", distinct=True)),
    "summarization": (rouge_l, _gold_references),
}
POOL_MIN_BATCH = 64  # below this a process pool costs more to start than it saves


def _reward(task: str) -> tuple[Callable, Callable]:
    if task not in REWARDS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(REWARDS)}")
    return REWARDS[task]


def parse_gold(task: str, gold):
    """The gold answer of `task` read exactly as its metric reads it (a number, rows, normalized lines,
    reference tokens); ValueError naming the metric and the problem if it cannot be scored. Call it
    once per record at load time (data.py does) so a bad gold stops the run before any rollout."""
    return _reward(task)[1](gold)


def score(task: str, response: str, answer, *, require_think: bool = False) -> float:
    """Reward of one response: format gate (if require_think), strip the thinking, apply the task metric."""
    metric = _reward(task)[0]
    if require_think and not format_ok(response):
        parse_gold(task, answer)  # still validate the gold: bad data must not hide behind the gate
        return 0.0
    return metric(answer_text(response), answer)


def score_batch(tasks: Sequence[str], responses: Sequence[str], answers: Sequence, *,
                require_think: bool = False, processes: int = 0) -> list[float]:
    """score() over a batch; with processes > 0 and at least POOL_MIN_BATCH items, in a process pool
    (spawned, not forked: safe in a trainer that already holds CUDA state and threads).

    Spawned workers re-import the calling script, so a script that calls this with processes > 0 needs
    the usual guard, or each worker starts the script again:

        if __name__ == "__main__":
            main()
    """
    tasks, responses, answers = list(tasks), list(responses), list(answers)
    if not len(tasks) == len(responses) == len(answers):
        raise ValueError(f"score_batch: {len(tasks)} tasks, {len(responses)} responses, {len(answers)} answers")
    for task in set(tasks):
        _reward(task)  # fail fast on a bad task name, before starting any worker
    one = functools.partial(score, require_think=require_think)
    if processes > 0 and len(tasks) >= POOL_MIN_BATCH:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            chunk = max(1, len(tasks) // (4 * processes))
            return pool.starmap(one, zip(tasks, responses, answers), chunksize=chunk)
    return [one(t, r, a) for t, r, a in zip(tasks, responses, answers)]


# -----------------------------------------------------------------------------
# Appendix: reading a final math answer (numerical reasoning)
#
# Everything below serves math_equal (section 4): numbers hand-parsed into exact Fractions, a small
# recursive-descent parser of LaTeX and plain arithmetic (no eval), and the comparison of a final
# answer with the gold. Standard library only, like the rest of the file.


# -----------------------------------------------------------------------------
# A. Numbers: hand-parsed into exact Fractions

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


_BRACE = re.compile(r"[{}]")


def _boxed(text: str) -> Optional[str]:
    """Contents of the last \\boxed{...}, nested braces allowed; None if absent, unbalanced, or not
    closed within MAX_EXPR_CHARS characters (the parser would not read a longer answer anyway).

    One pass over at most MAX_EXPR_CHARS characters (the old find-hops rescanned
    the text after every brace, 2.8 s on a 1 MB "\\boxed{{{{...")."""
    k = text.rfind("\\boxed{")
    if k < 0:
        return None
    start = k + len("\\boxed{")
    stop = start + MAX_EXPR_CHARS + 1
    depth = 1
    for m in _BRACE.finditer(text, start, stop):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return text[start:m.start()]
    return None


# -----------------------------------------------------------------------------
# B. LaTeX and plain arithmetic: a small recursive-descent parser, no eval

# The grammar, loosest binding first (each line one method of _Parser):
#   answer  := item ("," item)*                 several items: a bare list, compared as a set
#   item    := expr (("=" | \approx) expr)*     "x = 5" is its right side
#   expr    := term (("+" | "-") term)*
#   term    := factor (("*" | \times | \cdot | "/" | \div) factor | implicit product)*
#   factor  := ("-" | "+") factor | power ("%")*
#   power   := primary (("^" | "**") factor)?   right-associative: 2^3^2 = 2^9
#   primary := number | mixed number 2\frac12 | (..) [..] {..} \{..\} groups, tuples, intervals, sets
#            | \frac{a}{b} | \frac34 | \sqrt{x} | \sqrt[n]{x} | \ln \exp \sin \cos \tan power
#            | \pi | e | \infty | a letter (a variable)
# Values are exact Fractions while they stay small (MAX_BITS per numerator and denominator) and floats
# otherwise (\pi, e, irrational roots, huge powers). The bounds at the top of the file (MAX_EXPR_CHARS,
# MAX_DEPTH, MAX_BITS, MAX_ITEMS) make one parse O(length) with O(1) work per token.

_FRAC = {"\\frac", "\\dfrac", "\\tfrac", "\\cfrac"}
_MUL = {"*", "\\times", "\\cdot", "\\ast"}
_DIV = {"/", "\\div"}
_EQ = {"=", "\\approx"}
# Functions with one unambiguous reading (\log is left out: base e or base 10 depends on the field).
_FUNCTIONS = {"\\ln": math.log, "\\exp": math.exp, "\\sin": math.sin, "\\cos": math.cos, "\\tan": math.tan}
# Dropped with their braced argument: units and words (\text{ cm}); \operatorname{...} ends the parse.
# An argument that starts with a number is read instead: \text{42} is 42.
_TEXT = {"\\text", "\\textrm", "\\textnormal", "\\mathrm", "\\mbox", "\\unit", "\\si", "\\textit"}
# Ignored tokens: sizing, fonts and siunitx wrappers; their braced argument is read as a group.
_SKIP = {"\\left", "\\right", "\\big", "\\Big", "\\bigl", "\\bigr", "\\Bigl", "\\Bigr", "\\bigg",
         "\\Bigg", "\\displaystyle", "\\textstyle", "\\mathbf", "\\textbf", "\\boldsymbol", "\\bf",
         "\\num", "\\quad", "\\qquad", "\\$", "\\boxed", "\\mathit"}
_TEXT_NUMBER = re.compile(r"\s*[-+]?\.?[0-9]")  # a \text{} argument that starts with a number is read
_OPEN = {"(": ")", "[": None, "{": "}", "\\{": "\\}", "\\lbrace": "\\rbrace"}  # None: ")" or "]"

# Plain-text look-alikes and thin spaces, rewritten before tokenizing (linear str.replace passes).
# "{,}" is LaTeX's thousands comma (1{,}234); "\," "\!" "\;" "\ " are spaces; degrees are dropped.
_REWRITE = [("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", " "), ("~", " "), ("{,}", ","),
            ("\\$", ""), ("$", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\u00b0", ""),
            ("\u2212", "-"), ("\u00d7", "*"), ("\u22c5", "*"), ("\u00b7", "*"), ("\u00f7", "/"),
            ("\u03c0", "\\pi "), ("\u221e", "\\infty "), ("\u221a", "\\sqrt "), ("\\%", "%")]
_LEX = re.compile(
    r"\s*(?:"
    r"(?P<num>(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:[eE][-+]?[0-9]+)?)"                      # 12  1,234.5  .5  1.5e-3 (a thousands comma
    r"|(?P<cmd>\\(?:[a-zA-Z]+|.))"                #   needs groups of exactly 3 digits)
    r"|(?P<word>[a-zA-Z]+)"
    r"|(?P<op>\*\*|.))", re.S)


class _Unparsable(ValueError):
    pass


class _Var:
    """An unknown (a letter other than e): fine on the left of "=", unparseable anywhere else."""


_VAR = _Var()


class _Seq(tuple):
    """A tuple, interval, set or bare list of values. `kind`: the brackets, "()" "[)" "(]" "[]" (a
    tuple or an interval: compared in order), or "set" (\\{..\\} or a bare list: in any order)."""
    kind = ""

    @staticmethod
    def make(kind: str, items: list) -> "_Seq":
        if len(items) > MAX_ITEMS:
            raise _Unparsable("too many items")
        seq = _Seq(items)
        seq.kind = kind
        return seq


def _tokens(s: str) -> list[tuple[str, str]]:
    """(kind, text) tokens; \\text{...} groups and trailing plain words ("12 apples") dropped."""
    for old, new in _REWRITE:
        s = s.replace(old, new)
    out, i, n = [], 0, len(s)
    keep_close = set()  # positions of "}" that close a \text{...} read as a number
    while i < n:
        m = _LEX.match(s, i)
        i = m.end()
        kind = m.lastgroup
        text = m.group(kind)
        if text.isspace():
            continue  # trailing whitespace: the lexer's "\s*" then "." matched a space
        if kind == "op" and text == "}" and m.start(kind) in keep_close:
            continue  # the closing brace of a \text{...} whose contents were read
        if kind == "cmd" and text in _TEXT:
            j = s.find("{", i)  # skip the braced argument, nesting allowed
            if j < 0 or s[i:j].strip():
                raise _Unparsable(text)
            depth = 0
            for b in _BRACE.finditer(s, j):
                depth += 1 if b.group() == "{" else -1
                if depth == 0:
                    break
            else:
                raise _Unparsable("unclosed " + text)
            if _TEXT_NUMBER.match(s, j + 1):
                # \text{42}, \text{42 apples}: the number itself is in the text. Read its contents (a
                # trailing word is dropped below) and drop the closing brace when it comes.
                keep_close.add(b.start())
                i = j + 1
            else:
                i = b.end()  # \text{ cm}, \mathrm{m/s^2}: a unit or a word, not the value
            continue
        if kind == "cmd" and text in _SKIP:
            continue
        if kind == "op" and text == "**":
            text = "^"
        out.append((kind, text))
    # Units written as words after the number ("12 apples", "5 cm", a final period) are not the value.
    while out and ((out[-1][0] == "word" and len(out[-1][1]) > 1) or out[-1][1] == "."):
        out.pop()
    return out


def _number(text: str) -> Fraction:
    """An exact literal: "1,234.5" -> 2469/2, "1.5e-3" -> 3/2000 (a float if its exponent is huge)."""
    if text.isdigit() and len(text) <= _MAX_DIGITS:
        return Fraction(int(text))  # the common case, 4x faster than the general one below
    mantissa, _, exp = text.replace(",", "").lower().partition("e")
    whole, _, decimals = mantissa.partition(".")
    digits = (whole + decimals).lstrip("0") or "0"
    if len(digits) > _MAX_DIGITS:
        raise _Unparsable("too many digits")
    scale = (int(exp) if exp else 0) - len(decimals)
    if abs(scale) > 1000:  # 10^1000 is ~3,300 bits: leave such values to float (and inf: unparseable)
        return _finite(float(mantissa + "e" + (exp or "0")))
    return Fraction(int(digits)) * Fraction(10) ** scale


def _finite(x):
    """Keep exact values small and floats finite: the two bounds that make arithmetic O(1) per step."""
    if isinstance(x, Fraction):
        if x.numerator.bit_length() > MAX_BITS or x.denominator.bit_length() > MAX_BITS:
            x = x.numerator / x.denominator  # int true division: OverflowError beyond float range
        else:
            return x
    if not math.isfinite(x):
        raise _Unparsable("out of range")
    return x


def _scalar(x):
    if isinstance(x, _Seq):
        raise _Unparsable("arithmetic on a tuple")
    return x


def _arith(op: str, a, b):
    a, b = _scalar(a), _scalar(b)
    if a is _VAR or b is _VAR:
        return _VAR
    if isinstance(a, float) and math.isinf(a) or isinstance(b, float) and math.isinf(b):
        raise _Unparsable("arithmetic on infinity")
    if op == "+":
        r = a + b
    elif op == "-":
        r = a - b
    elif op == "*":
        r = a * b
    else:
        if b == 0:
            raise _Unparsable("division by zero")
        r = a / b
    return _finite(r)


def _iroot(p: int, n: int) -> Optional[int]:
    """The integer r >= 0 with r^n = p, or None (p >= 0)."""
    if p < 2:
        return p
    if n == 2:
        r = math.isqrt(p)
    elif p.bit_length() > 50 * n:
        return None  # a root above 2^50: the float estimate below is too coarse to hit it; use floats
    else:
        r = round(math.exp(math.log(p) / n))
    for c in (r - 1, r, r + 1):
        if c >= 0 and c ** n == p:
            return c
    return None


def _root(x, n):
    """The n-th root of x: exact when x is a Fraction with exact integer roots, else a float."""
    x, n = _scalar(x), _scalar(n)
    if x is _VAR or n is _VAR:
        return _VAR
    if not (isinstance(n, Fraction) and n.denominator == 1 and 1 <= n <= 64):
        return _power(x, _arith("/", Fraction(1), n))  # \sqrt[2.5]{x} = x^(1/2.5)
    n = int(n)
    sign = -1 if x < 0 else 1
    if sign < 0 and n % 2 == 0:
        raise _Unparsable("even root of a negative number")
    if isinstance(x, Fraction):
        p, q = _iroot(abs(x.numerator), n), _iroot(x.denominator, n)
        if p is not None and q is not None:
            return sign * Fraction(p, q)
    return _finite(sign * float(abs(x)) ** (1.0 / n))


def _power(a, b):
    a, b = _scalar(a), _scalar(b)
    if a is _VAR or b is _VAR:
        return _VAR
    if isinstance(b, Fraction) and b.denominator == 1:
        e = b.numerator
        if a == 0 and e < 0:
            raise _Unparsable("division by zero")
        if isinstance(a, Fraction):
            if abs(a) == 1:
                return a ** (e % 2)
            # Size of the exact result, known before computing it: 10^{10^{10}} never gets built.
            if (max(a.numerator.bit_length(), a.denominator.bit_length()) - 1) * abs(e) <= MAX_BITS:
                return _finite(a ** e)
        if a == 0:
            return a
        return _no_underflow(float(a) ** float(e))
    if isinstance(b, Fraction) and b.denominator <= 64 and isinstance(a, Fraction) and a >= 0:
        r = _root(a, Fraction(b.denominator))  # 8^{2/3} = (8^{1/3})^2 = 4, exactly
        if isinstance(r, Fraction):
            return _power(r, Fraction(b.numerator))
    if a < 0:
        raise _Unparsable("non-integer power of a negative number")
    return _no_underflow(float(a) ** float(b)) if a != 0 else a


def _no_underflow(x: float) -> float:
    # A nonzero base to a huge negative power rounds to 0.0, which would then "equal" a gold of 0.
    if x == 0.0:
        raise _Unparsable("underflow")
    return _finite(x)


class _Parser:
    """Recursive descent over _tokens(s); one method per grammar rule above, each token read once."""

    def __init__(self, toks: list):
        self.toks, self.n, self.i, self.depth, self.percent = toks, len(toks), 0, 0, False

    def peek(self, k: int = 0) -> tuple[str, str]:
        j = self.i + k
        return self.toks[j] if j < self.n else ("end", "")

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, text: str):
        if self.take()[1] != text:
            raise _Unparsable(f"expected {text}")

    def answer(self):
        items = [self.item()]
        while self.peek()[1] == ",":
            self.take()
            items.append(self.item())
        if self.peek()[0] != "end":
            raise _Unparsable(f"unexpected {self.peek()[1]!r}")
        return items[0] if len(items) == 1 else _Seq.make("set", items)  # a bare "2, 3": a set

    def item(self):
        value = self.expr()
        while self.peek()[1] in _EQ:
            self.take()
            value = self.expr()
        if value is _VAR:
            raise _Unparsable("a variable")
        return value

    def expr(self):
        value = self.term()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            value = _arith(op, value, self.term())
        return value

    def term(self):
        value = self.factor()
        while True:
            kind, text = self.peek()
            if text in _MUL or text in _DIV:
                self.take()
                value = _arith("*" if text in _MUL else "/", value, self.factor())
            elif kind in ("cmd", "word") and text not in _EQ and text not in ("\\}", "\\rbrace") \
                    or text in ("(", "{"):
                value = _arith("*", value, self.power())  # implicit product: 2\pi, 3(4), 2\sqrt{3}
            else:
                return value

    def enter(self):
        # One level per nested group or sign: bounds the recursion (the Python stack) and the work.
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Unparsable("nested too deep")

    def factor(self):
        if self.peek()[1] in ("-", "+"):
            self.enter()
            sign = self.take()[1]
            value = _scalar(self.factor())
            if sign == "-":
                value = _VAR if value is _VAR else -value
            self.depth -= 1
            return value
        value = self.power()
        while self.peek()[1] == "%":
            self.take()
            self.percent = True
            value = _arith("/", value, Fraction(100))
        return value

    def power(self):
        self.enter()
        value = self.primary()
        if self.peek()[1] == "^":
            self.take()
            value = _power(value, self.factor())
        self.depth -= 1
        return value

    def group(self):
        """Comma-separated items and the token that closed them (checked by the caller)."""
        items = [self.item()]
        while self.peek()[1] == ",":
            self.take()
            items.append(self.item())
        return items, self.take()[1]

    def primary(self):
        kind, text = self.take()
        if kind == "num":
            return self.number(text)
        if text in _OPEN:
            items, close = self.group()
            if text in ("(", "["):
                if close not in (")", "]"):
                    raise _Unparsable("unclosed group")
                if len(items) == 1:
                    if text + close != "()" and text + close != "[]":
                        raise _Unparsable("an interval needs two ends")
                    return items[0]
                return _Seq.make(text + close, items)  # (1, 2) tuple or open interval, [1, 2) interval
            if close != _OPEN[text]:
                raise _Unparsable("unclosed group")
            if text == "{" and len(items) == 1:
                return items[0]
            return _Seq.make("set", items)
        if text in _FRAC:
            return _arith("/", self.arg(), self.arg())
        if text == "\\sqrt":
            n = Fraction(2)
            if self.peek()[1] == "[":
                self.take()
                n = self.expr()
                self.expect("]")
            return _root(self.arg(), n)
        if text in _FUNCTIONS:  # \ln 2, \sin\frac{\pi}{6}, \exp(1): the argument binds like a power
            x = _scalar(self.power())
            return _VAR if x is _VAR else _finite(_FUNCTIONS[text](float(x)))
        if text == "\\pi":
            return math.pi
        if text == "\\infty":
            return math.inf
        if kind == "word":
            # "e" alone is Euler's number; any other letter is an unknown ("x" in "x = 5").
            return math.e if text == "e" else _VAR
        raise _Unparsable(f"unexpected {text!r}")

    def number(self, text: str):
        value = _number(text)
        # A mixed number: an integer directly followed by \frac of two integer literals, 2\frac{1}{2}
        # or 2\frac12, means 2 + 1/2 (not 2 * 1/2). Decided by looking at tokens, never by re-parsing.
        if text.isdigit() and self.peek()[1] in _FRAC:
            t = [self.peek(k)[1] for k in range(1, 7)]
            if len(t[0]) == 2 and t[0].isdigit():                               # 2\frac12
                self.i += 2
                return value + _arith("/", Fraction(int(t[0][0])), Fraction(int(t[0][1])))
            if [t[0], t[2], t[3], t[5]] == ["{", "}", "{", "}"] and t[1].isdigit() and t[4].isdigit():
                self.i += 7                                                     # 2\frac{1}{2}
                return value + _arith("/", _number(t[1]), _number(t[4]))
        return value

    def arg(self):
        """A LaTeX argument: {expr}, or one digit (\\frac34 is 3/4), or one command (\\sqrt\\pi)."""
        kind, text = self.peek()
        if text == "{":
            self.take()
            value = self.expr()
            self.expect("}")
            return value
        if kind == "num" and text.isdigit():
            if len(text) == 1:
                self.take()
            else:  # split "34" after \frac: the first digit is this argument, the rest the next
                self.toks[self.i] = ("num", text[1:])
            return Fraction(int(text[0]))
        if kind in ("cmd", "word"):
            return self.primary()
        raise _Unparsable("missing argument")


def parse_math(s: str):
    """Value of a LaTeX or plain arithmetic answer, or None if it cannot be read.

    Returns (value, percent): value a Fraction (exact), a float, or a _Seq of them (tuple, interval,
    set); percent says whether a "%" was read (25% is 1/4, and also matches 25). Never raises on any
    string; O(len(s)), and strings longer than MAX_EXPR_CHARS are not read at all."""
    if not isinstance(s, str) or len(s) > MAX_EXPR_CHARS:
        return None
    try:
        p = _Parser(_tokens(s))
        if not p.toks:
            return None
        return p.answer(), p.percent
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):  # _Unparsable is a ValueError
        return None


# -----------------------------------------------------------------------------
# C. A final answer against the gold: tolerance, tuples and sets, percent as a unit

def _close(p, g) -> bool:
    """One predicted scalar vs one gold scalar: relative tolerance 1e-4; exact for an integer gold
    (a float prediction there may differ only by float rounding, 1e-9)."""
    if isinstance(p, _Seq) or isinstance(g, _Seq):
        return _values_equal(p, g)
    if isinstance(p, float) and math.isinf(p) or isinstance(g, float) and math.isinf(g):
        return p == g
    exact_int = isinstance(g, Fraction) and g.denominator == 1
    if exact_int and isinstance(p, Fraction):
        return p == g
    # Compared as Fractions (a finite float converts exactly): no float overflow on a 4,000-bit gold.
    tol = Fraction(1, 10**9) if exact_int else Fraction(1, 10_000)
    return abs(Fraction(p) - Fraction(g)) <= tol * abs(Fraction(g))


def _values_equal(p, g) -> bool:
    """Tuples and intervals element by element in order; sets (and bare lists) in any order."""
    if not isinstance(p, _Seq) and not isinstance(g, _Seq):
        return _close(p, g)
    if not isinstance(p, _Seq):  # a scalar equals only a one-element set ({5} vs 5)
        return g.kind == "set" and len(g) == 1 and _close(p, g[0])
    if not isinstance(g, _Seq):
        return p.kind == "set" and len(p) == 1 and _close(p[0], g)
    if p.kind != g.kind or len(p) != len(g):
        return False
    if p.kind != "set":
        return all(_close(x, y) for x, y in zip(p, g))
    left = list(p)  # greedy matching, at most MAX_ITEMS^2 comparisons
    for y in g:
        j = next((j for j, x in enumerate(left) if _close(x, y)), None)
        if j is None:
            return False
        left.pop(j)
    return True


def _as_written(value, percent: bool):
    # The number before the "%": parse_math reads "8%" as 8/100, the percent rule reads it as 8.
    # (In a tuple or set the items stay as parsed: which of them had the sign is not recorded.)
    return value * 100 if percent and not isinstance(value, _Seq) else value


def _final_answer(text: str):
    """The response's final answer as parse_math's (value, percent), or None: the last \\boxed{...}
    (parsed whole: "x = 5" reads 5, "12 apples" reads 12, "2, 3" is a list), else the expression
    after the last "answer is", else the last number in the last 4,000 characters (the regex reading
    of prose)."""
    box = _boxed(text)
    if box is not None:
        return parse_math(box)
    low = text.lower()  # only used to find the marker; numbers read the same lowercased
    k = low.rfind("answer is")
    if k >= 0:
        rest = text[k + len("answer is"):k + len("answer is") + MAX_EXPR_CHARS].lstrip(" :*")
        if rest[:1] == "$" and rest.find("$", 1) > 0:
            phrase = rest[:rest.find("$", 1) + 1]  # "answer is $2^{10}$ because ..."
        else:
            phrase = re.split(r"\n|\.\s|\.$", rest, maxsplit=1)[0].rstrip(" *")  # to the sentence end
        found = parse_math(phrase)
        if found is None:
            found = _from_regex(_first_number(_clean_math(low[k + len("answer is"):])))
        if found is not None:
            return found
    # The last number of the last few lines: on 64K characters of dense numbers, finditer alone takes
    # ~20 ms (one match object per number); the final answer is near the end, and cutting at a line
    # break (or a space) never reads a number in part.
    return _from_regex(_last_number(_last_chars(text, 4_000, seps="\n ")))


def _from_regex(found):
    # The prose reader gives (number before "%", is_percent); parse_math's form is (value, percent).
    if found is None:
        return None
    value, pct = found
    try:  # the regex allows 1e9999: keep values in the parser's range (huge -> float -> refused)
        return _finite(value / 100 if pct else value), pct
    except (ValueError, OverflowError):
        return None
