"""Tests for rewards.py: hand-computed values per metric, fast paths against slow references, fuzzing.

    python -m pytest -q test_rewards.py --durations=10
"""

import json
import math
import random
import re
import time
from fractions import Fraction

import pytest

import rewards
from rewards import (REWARDS, answer_text, choice_accuracy, exact_match, format_ok, lcs_length,
                     lcs_length_dp, math_equal, ndcg, pairwise_accuracy, rouge_l, row_iou, score,
                     score_batch, set_f1, sub_em, tokens)

# One valid gold per metric, reused by the fuzz and dispatch tests.
GOLD = {
    "exact_match": "Paris",
    "choice_accuracy": "B",
    "set_f1": ["doc1", "doc4", "doc7"],
    "math_equal": "3/4",
    "row_iou": '{"data": [["alice", 3], ["bob", 5]]}',
    "sub_em": ["red", "blue"],
    "ndcg": ["a", "b", "c"],
    "pairwise_accuracy": ["a", "b", "c", "d"],
    "rouge_l": "the cat sat on the mat",
}
METRICS = {name: getattr(rewards, name) for name in GOLD}


# -----------------------------------------------------------------------------
# Thinking, the format gate, dispatch

def test_answer_text_takes_text_after_last_close_tag():
    assert answer_text("<think>x</think> 42") == " 42"
    assert answer_text("a</think>b</think>c") == "c"
    assert answer_text("no tags") == "no tags"
    assert answer_text(None) == ""


@pytest.mark.parametrize("response, ok", [
    ("<think>plan</think>Paris", True),
    ("plan</think>Paris", True),                      # "<think>" was in the prompt (Qwen3 templates)
    ("Paris", False),                                 # no "</think>"
    ("<think>a</think><think>b</think>Paris", False),  # tags twice
    ("a</think>b</think>Paris", False),
    ("<think><think>a</think>Paris", False),
])
def test_format_gate(response, ok):
    assert format_ok(response) is ok
    assert score("precise_retrieval", response, "Paris", require_think=True) == float(ok)
    assert score("precise_retrieval", response, "Paris") == 1.0  # no gate: reads after the last </think>


def test_tasks_table_and_errors():
    assert list(REWARDS) == ["precise_retrieval", "comprehension", "exhaustive_retrieval",
                             "numerical_reasoning", "structured_extraction", "structured_matching",
                             "graded_ranking", "sequence_ordering", "summarization"]  # the docstring's order
    assert {metric.__name__ for metric, _ in REWARDS.values()} == set(GOLD)
    with pytest.raises(ValueError, match="unknown task 'retrieval'"):
        score("retrieval", "x", "x")
    # A bad gold raises even when the format gate already zeroed the response: bad data must surface.
    with pytest.raises(ValueError, match="math_equal"):
        score("numerical_reasoning", "no think tag", "twelve", require_think=True)


# One bad gold per task type, with what the error must say.
BAD_GOLDS = {
    "precise_retrieval": ("   ", "exact_match: gold answer must be a non-empty string"),
    "comprehension": ([], "choice_accuracy: gold answer is an empty list"),
    "exhaustive_retrieval": ("doc1", "set_f1: gold answer must be a list"),
    "numerical_reasoning": ("about seven", "math_equal: cannot read gold answer 'about seven'"),
    "structured_extraction": ('{"data": [["a"]', "row_iou: gold answer is not valid JSON"),
    "structured_matching": (["red", ""], "sub_em: gold item 1 must be a non-empty string"),
    "graded_ranking": (["a", "A"], "ndcg: gold item 'a' appears more than once"),
    "sequence_ordering": ([None], "pairwise_accuracy: gold item 0 must be a non-empty string"),
    "summarization": ("...", "rouge_l: a reference has no tokens"),
}


@pytest.mark.parametrize("task", list(BAD_GOLDS))
def test_parse_gold_refuses_what_the_metric_refuses(task):
    gold, message = BAD_GOLDS[task]
    with pytest.raises(ValueError, match=re.escape(message)):
        rewards.parse_gold(task, gold)
    with pytest.raises(ValueError, match=re.escape(message)):
        score(task, "anything", gold)


def test_parse_gold_and_the_metrics_never_disagree():
    # Every candidate gold, good or bad, against every task: parse_gold raises exactly when scoring does.
    candidates = list(GOLD.values()) + [g for g, _ in BAD_GOLDS.values()] + [
        "12", "B", "(B)", ["alice smith"], [1, 2], "x^2", "3/4", 42, 2.5, None, True, {"data": [["a", 1]]},
        [["a", 1]], '{"rows": []}', ["the cat"], "", "\\boxed{12", "\\frac{\\sqrt{3}}{2}", "[0, 1)"]
    for task in REWARDS:
        for gold in candidates:
            try:
                rewards.parse_gold(task, gold)
                refused = None
            except ValueError as e:
                refused = str(e)
            try:
                _check(score(task, "</think>12", gold))
                scored_error = None
            except ValueError as e:
                scored_error = str(e)
            assert refused == scored_error, (task, gold)
    with pytest.raises(ValueError, match="unknown task"):
        rewards.parse_gold("retrieval", "x")


def test_thinking_is_not_scored_as_summary():
    ref = "the cat sat on the mat"
    response = f"<think>{ref}</think>a dog"
    assert score("summarization", response, ref) == 0.0
    assert rouge_l(response, ref) > 0.5  # the raw metric would have credited the thinking


# -----------------------------------------------------------------------------
# Exact match and multiple choice

def test_exact_match():
    assert exact_match("  Paris\n", "Paris") == 1.0
    assert exact_match("paris", "Paris") == 0.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert exact_match("", "Paris") == 0.0
    with pytest.raises(ValueError, match="exact_match"):
        exact_match("x", ["Paris"])


@pytest.mark.parametrize("response, expected", [
    ("The correct answer is (B)", 1.0),
    ("The correct answer is B.", 1.0),
    ("the correct answer is **(b)**", 1.0),
    ("The correct answer is (A). Wait, no: the correct answer is (B)", 1.0),  # the last one wins
    ("The correct answer is (C)", 0.0),
    ("B", 1.0), ("(B)", 1.0), ("B. Because of the second paragraph", 1.0), ("[Answer]\nB)", 1.0),
    ("Because of the first paragraph", 0.0),  # a word starting with B is not the letter B
    ("", 0.0), ("\n\n", 0.0),
])
def test_choice_accuracy_letters(response, expected):
    assert choice_accuracy(response, "B") == expected
    assert choice_accuracy(response, "(B)") == expected


def test_choice_accuracy_text_gold_compares_first_line():
    # LongBench-Pro T3/T11: the gold is a list whose first item is the answer text.
    assert choice_accuracy("[Answer]\n  Alice  Smith\nbecause ...", ["alice smith"]) == 1.0
    assert choice_accuracy("Bob\nAlice Smith", ["Alice Smith"]) == 0.0
    with pytest.raises(ValueError, match="choice_accuracy"):
        choice_accuracy("B", "")


# -----------------------------------------------------------------------------
# List metrics

def test_set_f1():
    gold = ["doc1", "doc4", "doc7"]
    assert set_f1("doc1\ndoc4\ndoc7", gold) == 1.0
    assert set_f1("[Answer]\n DOC7 \n\ndoc1\ndoc4", gold) == 1.0  # order, case, spaces, blank lines
    # 2 of 3 right plus 1 wrong: P = 2/3, R = 2/3.
    assert set_f1("doc1\ndoc4\ndoc9", gold) == pytest.approx(2 / 3)
    # Repeating a right line does not inflate anything: P = 1/1, R = 1/3, F1 = 0.5.
    assert set_f1("doc1\ndoc1\ndoc1", gold) == pytest.approx(0.5)
    assert set_f1("", gold) == 0.0
    assert set_f1("doc1, doc4, doc7", gold) == 0.0  # one item per line is the format
    # Only the lines after the last [Answer] count.
    assert set_f1("doc1\ndoc4\ndoc7\n[Answer]\ndoc1", gold) == pytest.approx(0.5)
    # CJK lines.
    assert set_f1("北京\n上海", ["北京", "广州"]) == pytest.approx(0.5)


def test_list_metrics_on_a_pasted_document():
    # Pasting the source document mentions every gold item, but never as a line of its own.
    gold = ["doc1", "doc4", "doc7"]
    document = "\n".join(f"doc{i} says something about topic {i}." for i in range(1, 50))
    for metric in (set_f1, sub_em, ndcg, pairwise_accuracy):
        assert metric(document, gold) == 0.0
    # Listing every candidate id: recall is full but precision is 3/49 (the F1 cannot be gamed this way).
    every_id = "\n".join(f"doc{i}" for i in range(1, 50))
    assert set_f1(every_id, gold) == pytest.approx(2 * (3 / 49) * 1 / (3 / 49 + 1))
    # NDCG is cut at n = 3: only doc1, doc2, doc3 count, and only doc1 is relevant (3 / IDCG).
    assert ndcg(every_id, gold) == pytest.approx(3 / (3 + 2 / math.log2(3) + 1 / 2))


def test_sub_em():
    gold = ["red", "blue", "green", "black"]
    assert sub_em("red\nblue\ngreen\nblack", gold) == 1.0
    # F1, not recall alone: 2 of 4 found (R = 1/2) among 3 lines (P = 2/3).
    assert sub_em("Blue\nRED\nwhite", gold) == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert sub_em("red\nred\nred\nred", gold) == pytest.approx(0.4)  # duplicates count once: P = 1, R = 1/4
    assert sub_em("red\nblue\ngreen\nblack\nwhite\npink", gold) == pytest.approx(0.8)  # extra lines cost
    assert sub_em("reddish\nthe blue one", gold) == 0.0  # whole lines, not substrings
    assert sub_em("", gold) == 0.0
    with pytest.raises(ValueError, match="sub_em: gold answer is an empty list"):
        sub_em("red", [])
    with pytest.raises(ValueError, match="must be a list"):
        sub_em("red", "red")


def test_ndcg_values_worked_by_hand():
    gold = ["a", "b", "c"]
    idcg = 3 + 2 / math.log2(3) + 1 / 2
    assert ndcg("a\nb\nc", gold) == pytest.approx(1.0)
    assert ndcg("c\nb\na", gold) == pytest.approx((1 + 2 / math.log2(3) + 3 / 2) / idcg)
    assert ndcg("c\nb\na", gold) == pytest.approx(0.790, abs=5e-4)
    assert ndcg("a\nb", gold) == pytest.approx(0.895, abs=5e-4)
    assert ndcg("x\na\nb", gold) == pytest.approx(0.607, abs=5e-4)
    assert ndcg("", gold) == 0.0


def test_ndcg_cutoff_and_duplicates():
    gold = ["a", "b", "c"]
    # A repeated top item keeps only its first rank: "a a a" is just "a" (3 / idcg).
    idcg = 3 + 2 / math.log2(3) + 1 / 2
    assert ndcg("a\na\na\nb\nc", gold) == pytest.approx(1.0)  # duplicates removed before ranking
    assert ndcg("a\na\na", gold) == pytest.approx(3 / idcg)
    # Cut at n = 3: the 4th distinct line is ignored even if relevant.
    assert ndcg("x\ny\nz\na", gold) == 0.0
    with pytest.raises(ValueError, match="appears more than once"):
        ndcg("a", ["a", "A"])


def test_pairwise_accuracy_counts_gold_pairs():
    gold = ["a", "b", "c", "d"]  # 6 gold pairs
    assert pairwise_accuracy("a\nb\nc\nd", gold) == 1.0
    assert pairwise_accuracy("d\nc\nb\na", gold) == 0.0
    # The released scorer's hole: two right lines in order scored 1.0 there; 1 of 6 pairs here.
    assert pairwise_accuracy("a\nb", gold) == pytest.approx(1 / 6)
    # One swap (b, c): 5 of 6 pairs right.
    assert pairwise_accuracy("a\nc\nb\nd", gold) == pytest.approx(5 / 6)
    # A repeated line keeps its first position: "b a b c d" orders a after b.
    assert pairwise_accuracy("b\na\nb\nc\nd", gold) == pytest.approx(5 / 6)
    assert pairwise_accuracy("", gold) == 0.0
    assert pairwise_accuracy("a", ["a"]) == 1.0 and pairwise_accuracy("b", ["a"]) == 0.0


def test_pairwise_accuracy_matches_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 7)
        gold = [f"item {i}" for i in range(n)]
        pred = rng.sample(gold + ["noise", "other"], rng.randint(0, n + 2))
        right = sum(1 for i in range(n) for j in range(i + 1, n)
                    if gold[i] in pred and gold[j] in pred and pred.index(gold[i]) < pred.index(gold[j]))
        assert pairwise_accuracy("\n".join(pred), gold) == pytest.approx(right / (n * (n - 1) / 2))


# -----------------------------------------------------------------------------
# Numbers

@pytest.mark.parametrize("response, gold, expected", [
    ("The answer is 12 apples.", "12", 1.0),
    ("so we get 12, and 13 is wrong... final: 12", "12", 1.0),   # last number
    ("\\boxed{12}", "12.0", 1.0),
    ("12", "$\\boxed{12}$", 1.0),
    ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
    ("\\boxed{\\dfrac{6}{8}}", "\\frac{3}{4}", 1.0),
    ("\\boxed{\\frac{\\frac{3}{4}}{2}}", "0.375", 1.0),        # nested \frac: parsed whole
    ("$\\boxed{x = -\\tfrac{1}{2}}$", "-0.5", 1.0),
    ("3/4 of them", "0.75", 1.0),
    ("The answer is 1,234,567 dollars", "1234567", 1.0),
    ("\\boxed{\\$1,234.50}", "1234.5", 1.0),
    ("It grew by 25%.", "25%", 1.0),
    ("It grew by 25\\%.", "25", 1.0),                            # the percent sign is a unit
    ("It grew by 25\\%.", "0.25", 0.0),                          # ...so 25% is not also 0.25
    ("It grew by 0.25", "25%", 1.0),
    ("It grew by 25", "25%", 1.0),
    ("1.5e-3", "0.0015", 1.0),
    ("1.5 \\times 10^{3}", "1500", 1.0),
    ("about 3.14159", "3.1416", 1.0),                            # relative error 2.7e-6
    ("about 3.14", "3.1416", 0.0),                               # relative error 5e-4
    ("1000.09", "1000.01", 1.0), ("1000.12", "1000.01", 0.0),    # the 1e-4 edge (8e-5, 1.1e-4)
    ("100.009", "100", 0.0), ("100.0", "100", 1.0),              # an integer gold is exact
    ("0", "0", 1.0), ("0.00001", "0", 0.0),                      # zero gold: exact
    ("the answer is \u22125", "-5", 1.0),                         # unicode minus
    ("pages 3-5", "5", 1.0),                                     # a hyphen after a digit is no sign
    ("\\boxed{12} wait, the answer is 13", "12", 1.0),           # the box wins over prose
    ("\\boxed{12", "12", 1.0),                                   # unbalanced box: last number
    ("\\boxed{twelve}", "12", 0.0),
    ("no numbers here", "12", 0.0),
    ("", "12", 0.0),
    ("1" * 500, "1", 0.0),                                       # a 500-digit run is not a number
])
def test_math_equal(response, gold, expected):
    assert math_equal(response, gold) == expected


def test_math_equal_reads_every_written_form_of_random_numbers():
    # Property test: the same random number written 6 ways, inside prose, equals its plain decimal gold;
    # and is not equal to a gold 1% away.
    rng = random.Random(5)
    for _ in range(500):
        a, b = rng.randint(-10**7, 10**7), rng.randint(1, 999)
        x = a / b
        forms = [f"{x:.12f}", f"{x:,.12f}", f"{x:.9e}", f"{a}/{b}", f"\\frac{{{a}}}{{{b}}}"]
        gold = repr(x)
        for form in forms:
            response = f"Adding the parts up, we finally get {form}"
            assert math_equal(response, gold) == 1.0, (form, gold)
            assert math_equal(response, repr(x * 1.01 + 1e-3)) == 0.0, (form, gold)
            assert math_equal(response, f"{x * 100!r}%") == 1.0, (form, gold)  # a percent gold: its fraction
        # The percent rule: x*100% is the number x*100, and equals x only through a gold written with "%".
        pct = f"\\boxed{{{x * 100:.10f}\\%}}"
        assert math_equal(pct, f"{x * 100!r}%") == 1.0 and math_equal(pct, repr(x * 100)) == 1.0, pct
        assert math_equal(pct, gold) == float(a == 0), pct


@pytest.mark.parametrize("gold", ["twelve", "x^2+1", "", "1/0", None, ["12"], "\\boxed{12", "1" * 500])
def test_math_equal_bad_gold(gold):
    with pytest.raises(ValueError, match="math_equal"):
        math_equal("12", gold)


def _boxed_reference(text):
    # The obvious version: walk character by character from the last "\\boxed{", counting depth.
    k = text.rfind("\\boxed{")
    if k < 0:
        return None
    depth, start = 1, k + len("\\boxed{")
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            content = text[start:i]
            return content if len(content) <= rewards.MAX_EXPR_CHARS else None
    return None


def test_boxed_equals_the_character_walk():
    assert rewards._boxed("so \\boxed{1} then \\boxed{\\frac{a}{b}} done") == "\\frac{a}{b}"  # the last box
    assert rewards._boxed("\\boxed{12") is None and rewards._boxed("no box") is None
    assert rewards._boxed("\\boxed{" + "1" * rewards.MAX_EXPR_CHARS + "}") == "1" * rewards.MAX_EXPR_CHARS
    assert rewards._boxed("\\boxed{" + "1" * (rewards.MAX_EXPR_CHARS + 1) + "}") is None  # too long to parse
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choices(["{", "}", "a", "\\boxed{", "\\", " "], k=rng.randint(0, 40)))
        assert rewards._boxed(text) == _boxed_reference(text), text


def test_math_equal_never_runs_model_text():
    # Text that an eval-based scorer would execute: here it is just characters without a number.
    assert math_equal("__import__('os').system('echo hacked')", "0") == 0.0
    # "2**10" is read by the hand-written parser as a power, never run.
    assert math_equal("\\boxed{2**10}", "1024") == 1.0
    assert math_equal("\\boxed{__import__('os')}", "0") == 0.0


# -----------------------------------------------------------------------------
# Tables

def test_row_iou():
    gold = '{"data": [["alice", 3], ["bob", 5], ["carol", 7]]}'
    assert row_iou('{"data": [["alice", "3"], ["bob", 5], ["carol", 7]]}', gold) == 1.0  # "3" == 3
    # 2 shared rows, union 4 (3 gold + 1 wrong): 0.5.
    assert row_iou('{"data": [["alice", 3], ["bob", 5], ["dave", 1]]}', gold) == 0.5
    # Inside <answer> tags and a code fence, after prose.
    wrapped = 'Here:\n<answer>\n```json\n{"data": [["alice", 3]]}\n```\n</answer>'
    assert row_iou(wrapped, gold) == pytest.approx(1 / 3)
    # Multiset: a row repeated 4 times matches once; union = 4 alice + bob + carol = 6.
    assert row_iou('{"data": [["alice", 3], ["alice", 3], ["alice", 3], ["alice", 3]]}', gold) == 1 / 6
    # A row that is not a list is kept (it counts in the union) but matches nothing: 1 / 4.
    assert row_iou('{"data": [["alice", 3], "bob 5"]}', gold) == 0.25
    assert row_iou("[[\"alice\", 3]]", [["alice", 3]]) == 1.0  # bare rows, gold as a Python list
    assert row_iou('{"data": [["alice", 3]', gold) == 0.0     # invalid JSON
    assert row_iou("", gold) == 0.0
    assert row_iou('{"data": []}', '{"data": []}') == 1.0
    assert row_iou('no table', '{"data": []}') == 0.0


@pytest.mark.parametrize("gold", ['{"data": [["a"]', '{"rows": []}', '{"data": ["a", "b"]}', 42])
def test_row_iou_bad_gold(gold):
    with pytest.raises(ValueError, match="row_iou"):
        row_iou("{}", gold)


# -----------------------------------------------------------------------------
# ROUGE-L

def test_tokens():
    assert tokens("The cat's 2nd-best MAT!") == ["the", "cat", "s", "2nd", "best", "mat"]
    assert tokens("我爱北京 tian an men") == ["我", "爱", "北", "京", "tian", "an", "men"]
    assert tokens("café_bar") == ["café", "bar"]


def test_rouge_l_hand_computed():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat" = 5; P = R = 5/6.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # Prediction 2 tokens, reference 6, LCS 2: P = 1, R = 1/3, F1 = 0.5.
    assert rouge_l("The CAT!", "the cat sat on the mat") == pytest.approx(0.5)
    # CJK: each character a token. LCS(我爱北京, 我爱上海) = 2 of 4 each.
    assert rouge_l("我爱北京", "我爱上海") == pytest.approx(0.5)
    # Max over references.
    assert rouge_l("the cat", ["a dog barks", "the cat"]) == 1.0
    assert rouge_l("", "the cat") == 0.0 and rouge_l("!!!", "the cat") == 0.0
    with pytest.raises(ValueError, match="no tokens"):
        rouge_l("x", "...")
    with pytest.raises(ValueError, match="rouge_l"):
        rouge_l("x", [])


def _rouge_score_reference(pred: str, ref: str) -> float:
    # The rouge-score package's rule, written out: lowercase, non [a-z0-9] -> space, split; LCS F1.
    p = re.sub(r"[^a-z0-9]+", " ", pred.lower()).split()
    r = re.sub(r"[^a-z0-9]+", " ", ref.lower()).split()
    lcs = lcs_length_dp(p, r)
    return 0.0 if lcs == 0 else 2 * lcs * lcs / (lcs * len(r) + lcs * len(p))


def test_rouge_l_matches_rouge_score_rule_on_ascii():
    rng = random.Random(1)
    words = ["The", "cat", "sat", "on", "mat", "dog's", "2nd", "a", "-", "!", "x1"]
    for _ in range(300):
        pred = " ".join(rng.choices(words, k=rng.randint(1, 30)))
        ref = " ".join(rng.choices(words, k=rng.randint(1, 30)))
        if re.search("[a-z0-9]", ref.lower()):
            assert rouge_l(pred, ref) == pytest.approx(_rouge_score_reference(pred, ref))


def test_bit_parallel_lcs_equals_plain_dp():
    rng = random.Random(2)
    for _ in range(2000):
        alphabet = rng.choice(["ab", "abc", "abcdefgh", "abcdefghijklmnopqrstuvwxyz"])
        a = rng.choices(alphabet, k=rng.randint(0, 40))
        b = rng.choices(alphabet, k=rng.randint(0, 90))
        assert lcs_length(a, b) == lcs_length_dp(a, b) == lcs_length(b, a)
    # Across machine-word boundaries (63/64/65 bits) and a long pair.
    for n in (63, 64, 65, 130):
        a, b = rng.choices("ab", k=n), rng.choices("ab", k=n + 7)
        assert lcs_length(a, b) == lcs_length_dp(a, b)
    a, b = rng.choices(range(50), k=300), rng.choices(range(50), k=1500)
    assert lcs_length(a, b) == lcs_length_dp(a, b)


# -----------------------------------------------------------------------------
# Untrusted responses: nothing raises, everything in [0, 1]

def _hostile_strings(rng: random.Random, count: int) -> list[str]:
    pieces = ["</think>", "<think>", "[Answer]", "<answer>", "</answer>", "\\boxed{", "{", "}", "\\frac{",
              "\\dfrac", "}{", "answer is", "The correct answer is (", ")", "1", "0", "-", ",", ".", "e",
              "%", "\\%", "/", "\\times 10^{", "^", "$", '{"data": [', "[", "]", '"', "null", "\n", " ",
              "\x00", "\x1b", "\r", "\u2028", "\ud800", "我", "é", "doc1", "a", "b", "B", "\\", "1e9999"]
    out = []
    for _ in range(count):
        out.append("".join(rng.choices(pieces, k=rng.randint(0, 60))))
    return out


def _check(value):
    assert type(value) is float and 0.0 <= value <= 1.0, value


def test_fuzz_random_hostile_strings():
    rng = random.Random(3)
    for text in _hostile_strings(rng, 2000) + [None, b"bytes", 12]:
        for name, metric in METRICS.items():
            _check(metric(text, GOLD[name]))
        _check(score("numerical_reasoning", text, "3/4", require_think=True))


HUGE = 1_000_000
ADVERSARIAL = {
    "one char": "a" * HUGE,
    "digits": "1" * HUGE,
    "thousands chain": "1,111" * (HUGE // 5) + "1",
    "nested boxes": "\\boxed{" * (HUGE // 7),
    "open braces": "{" * HUGE,
    "close braces": "}" * HUGE,
    "deep json": "[" * HUGE,
    "deep data": '{"data":' * (HUGE // 8),
    "fracs": "\\frac{" * (HUGE // 6),
    "spaces then slash": "1" + " " * HUGE + "/2",
    "tags": "</think><think>" * (HUGE // 15),
    "markers": "[Answer]\n" * (HUGE // 9),
    "cjk": "我" * HUGE,
    "control": "\x00\x01\x1b\r\n\t" * (HUGE // 6),
    "signs": "-" * HUGE + "1",
    "percents": "1%" * (HUGE // 2),
    "exponents": "1e9999" * (HUGE // 6),
    "answer is": "answer is " * (HUGE // 10),
    "lines": "a\nb\nc\nd\n" * (HUGE // 8),
    "boxed deep braces": "\\boxed{" + "{" * HUGE + "}",  # 2.8 s in _boxed with the old scan
    "boxed braces": "\\boxed{" + "{}" * (HUGE // 2),
    "table rows": "<answer>{\"data\": [" + "[1],\n" * (HUGE // 5) + "[1]]}</answer>",  # 3.1 s before
}
# The same strings with a line break every 4,000 characters: a metric reads the tail of the answer from
# a line break on (rewards._tail), so without breaks most of them read as empty.
ADVERSARIAL.update({name + " (lines)": "\n".join(text[i:i + 4000] for i in range(0, len(text), 4000))
                    for name, text in list(ADVERSARIAL.items())})


def _seconds(fn, *args, repeat: int = 3) -> tuple[float, object]:
    # Best of up to `repeat` calls, stopping at the first fast one: a loaded machine can stall one call.
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn(*args)
        best = min(best, time.perf_counter() - start)
        if best < 0.01:
            break
    return best, value


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_one_megabyte_adversarial_inputs(name):
    # Each call must come back with a valid reward, and fast: every metric must take
    # under 100 ms on any 1 MB string (a regex that backtracks, or a quadratic scan, would take seconds).
    text = ADVERSARIAL[name]
    for metric_name, metric in METRICS.items():
        seconds, value = _seconds(metric, text, GOLD[metric_name])
        _check(value)
        assert seconds < 0.1, (metric_name, seconds)
    seconds, value = _seconds(score, "numerical_reasoning", "</think>" + text, "3/4")
    _check(value)
    assert seconds < 0.1, seconds


def test_adversarial_values_are_sensible():
    assert math_equal("1" * HUGE, "1") == 0.0                     # a 1M-digit run is not the number 1
    assert math_equal("1e9999" * 10, "1e999") == 0.0               # 1e99991e... reads 1e9999 then 1
    assert pairwise_accuracy(ADVERSARIAL["lines"], GOLD["pairwise_accuracy"]) == 1.0
    assert ndcg(ADVERSARIAL["lines"], ["a", "b"]) == 1.0          # duplicates cost nothing, gain nothing
    assert set_f1(ADVERSARIAL["lines"], ["a", "b"]) == pytest.approx(2 / 3)


# -----------------------------------------------------------------------------
# LaTeX and plain arithmetic: the answers thinking models write, read by rewards.parse_math

# (label, response, gold, expected reward). Labels name the construct; "neg:" cases must score 0.
LATEX_CASES = [
    # Answers thinking models write: each scored 0 before the parser.
    ("power of ten, negative", r"\boxed{10^{-3}}", "0.001", 1.0),
    ("power of two", r"\boxed{2^{10}}", "1024", 1.0),
    ("power, bare exponent", r"\boxed{10^6}", "1000000", 1.0),
    ("thousands {,}", r"\boxed{1{,}234}", "1234", 1.0),
    ("sqrt, exact", r"\boxed{\sqrt{4}}", "2", 1.0),
    ("sqrt, irrational", r"\boxed{\sqrt{2}}", "1.41421356", 1.0),
    ("pi", r"\boxed{\pi}", "3.14159265", 1.0),
    ("mixed number", r"\boxed{2\frac{1}{2}}", "2.5", 1.0),
    # Symbolic golds, as the released math sources carry them.
    ("gold frac of sqrt", r"\boxed{0.866025}", r"\frac{\sqrt{3}}{2}", 1.0),
    ("gold 2pi", r"\boxed{6.283185}", r"2\pi", 1.0),
    ("both symbolic", r"\boxed{\dfrac{\sqrt3}{2}}", r"\frac{\sqrt{3}}{2}", 1.0),
    ("pi times fraction", r"\boxed{\frac{2\pi}{3}}", r"\frac{2}{3}\pi", 1.0),
    # + - * / ^ ** and the LaTeX operators.
    ("plus minus", r"\boxed{7 - 2 + 1}", "6", 1.0),
    ("precedence", r"\boxed{2 + 3 \cdot 4}", "14", 1.0),
    ("times", r"\boxed{6 \times 7}", "42", 1.0),
    ("cdot", r"\boxed{3\cdot 10^{2}}", "300", 1.0),
    ("div", r"\boxed{7 \div 2}", "3.5", 1.0),
    ("slash", r"\boxed{22/7}", r"\frac{22}{7}", 1.0),
    ("python power", r"\boxed{2**10}", "1024", 1.0),
    ("right-associative power", r"\boxed{2^3^2}", "512", 1.0),
    ("minus binds after power", r"\boxed{-2^2}", "-4", 1.0),
    ("parenthesized negative power", r"\boxed{(-2)^2}", "4", 1.0),
    ("fractional power, exact", r"\boxed{8^{2/3}}", "4", 1.0),
    ("negative exponent", r"\boxed{2^{-2}}", "0.25", 1.0),
    ("implicit product", r"\boxed{3(4+1)}", "15", 1.0),
    ("unicode times and minus", "\\boxed{\u22123 \u00d7 4}", "-12", 1.0),
    # \frac \dfrac \tfrac \frac34, nested.
    ("frac", r"\boxed{\frac{3}{4}}", "0.75", 1.0),
    ("dfrac", r"\boxed{\dfrac{6}{8}}", "3/4", 1.0),
    ("tfrac", r"\boxed{\tfrac{1}{3}}", "0.333333", 1.0),
    ("frac digits", r"\boxed{\frac34}", "0.75", 1.0),
    ("frac digit and group", r"\boxed{\frac1{8}}", "0.125", 1.0),
    ("nested frac", r"\boxed{\frac{\frac{3}{4}}{2}}", "0.375", 1.0),
    ("frac of sums", r"\boxed{\frac{1+2}{4-1}}", "1", 1.0),
    ("negative frac", r"\boxed{-\frac{1}{2}}", "-0.5", 1.0),
    # \sqrt{} and \sqrt[n]{}.
    ("cube root", r"\boxed{\sqrt[3]{27}}", "3", 1.0),
    ("fourth root, irrational", r"\boxed{\sqrt[4]{2}}", "1.189207", 1.0),
    ("sqrt of a fraction", r"\boxed{\sqrt{\frac{9}{16}}}", "0.75", 1.0),
    ("coefficient sqrt", r"\boxed{2\sqrt{3}}", r"\sqrt{12}", 1.0),
    ("sqrt digit", r"\boxed{\sqrt2}", r"\sqrt{2}", 1.0),
    # Constants: \pi, e alone.
    ("e alone", r"\boxed{e}", "2.718282", 1.0),
    ("e squared", r"\boxed{e^2}", "7.389056", 1.0),
    ("two pi", r"\boxed{2\pi}", "6.2832", 1.0),
    ("pi over 4", r"\boxed{\frac{\pi}{4}}", "0.785398", 1.0),
    ("functions", r"\boxed{\ln 2 + \sin\frac{\pi}{6}}", "1.193147", 1.0),
    ("exp", r"\boxed{\exp(1)}", "e", 1.0),
    ("neg: log of a negative", r"\boxed{\ln(-1)}", "0", 0.0),
    # Mixed numbers.
    ("mixed digits", r"\boxed{2\frac12}", "2.5", 1.0),
    ("negative mixed", r"\boxed{-3\frac{1}{4}}", "-3.25", 1.0),
    ("mixed gold", r"\boxed{5/2}", r"2\frac{1}{2}", 1.0),
    # \left( \right), braces, spacing.
    ("left right", r"\boxed{\left(\frac{1}{2}\right)^2}", "0.25", 1.0),
    ("braces group", r"\boxed{{2}^{{3}}}", "8", 1.0),
    ("thin space thousands", r"\boxed{1\,000\,000}", "1000000", 1.0),
    ("negative thin space", r"\boxed{1\!234}", "1234", 1.0),
    ("comma thousands", r"\boxed{12,345,678}", "12345678", 1.0),
    ("comma thousands, decimal", r"\boxed{1,234.5}", "1234.5", 1.0),
    # Percent, dollars, units.
    ("percent", r"\boxed{25\%}", "25", 1.0),
    ("percent gold, fraction response", r"\boxed{0.25}", "25%", 1.0),
    ("percent gold, bare response", r"\boxed{25}", "25%", 1.0),
    ("percent both", r"\boxed{12.5\%}", r"12.5\%", 1.0),
    ("dollars", r"\boxed{\$1,234.50}", "1234.5", 1.0),
    ("text unit", r"\boxed{12\text{ cm}}", "12", 1.0),
    ("mathrm unit", r"\boxed{9.8\,\mathrm{m/s^2}}", "9.8", 1.0),
    ("word unit", r"\boxed{12 apples}", "12", 1.0),
    ("degrees", r"\boxed{90^\circ}", "90", 1.0),
    # Scientific notation, \num.
    ("scientific e", r"\boxed{1e-3}", "0.001", 1.0),
    ("scientific times", r"\boxed{1.5 \times 10^{3}}", "1500", 1.0),
    ("num", r"\boxed{\num{1.5e-3}}", "0.0015", 1.0),
    ("gold scientific", r"\boxed{0.00025}", "2.5e-4", 1.0),
    # Unary signs.
    ("double negative", r"\boxed{--5}", "5", 1.0),
    ("plus sign", r"\boxed{+7}", "7", 1.0),
    ("minus of group", r"\boxed{-(3-5)}", "2", 1.0),
    # Equations: the right side.
    ("x equals", r"\boxed{x = 5}", "5", 1.0),
    ("chain of equals", r"\boxed{x = 2 + 3 = 5}", "5", 1.0),
    ("approx", r"\boxed{x \approx 3.1416}", r"\pi", 1.0),
    ("gold equation", r"\boxed{5}", "x = 5", 1.0),
    # Tuples, intervals, sets.
    ("tuple", r"\boxed{(1, 2)}", "(1, 2)", 1.0),
    ("tuple with left right", r"\boxed{\left(\frac{1}{2}, -\sqrt{4}\right)}", "(0.5, -2)", 1.0),
    ("half-open interval", r"\boxed{[1, 2)}", "[1, 2)", 1.0),
    ("interval to infinity", r"\boxed{[0, \infty)}", r"[0, \infty)", 1.0),
    ("set in any order", r"\boxed{\{3, 1, 2\}}", r"\{1,2,3\}", 1.0),
    ("bare list as a set", r"\boxed{2, 3}", "3, 2", 1.0),
    ("one-element set", r"\boxed{\{5\}}", "5", 1.0),
    # Prose around the answer.
    ("answer is, math", r"So the answer is $2^{10}$.", "1024", 1.0),
    ("answer is, words", "The answer is 12 apples.", "12", 1.0),
    ("box wins over prose", r"\boxed{12} wait, the answer is 13", "12", 1.0),
    ("last number in prose", "first 3, then 5, finally 7", "7", 1.0),
    # Tolerance: relative 1e-4, exact for an integer gold.
    ("within 1e-4", r"\boxed{3.14159}", "3.14160", 1.0),
    ("integer gold is exact", r"\boxed{1024.05}", "1024", 0.0),
    ("float prediction of an integer", r"\boxed{\sqrt{2}^2}", "2", 1.0),
    ("zero gold is exact", r"\boxed{10^{-9}}", "0", 0.0),
    # Negatives: wrong sign, wrong magnitude, unit confusion, wrong shape.
    ("neg: wrong sign", r"\boxed{-\frac{3}{4}}", "0.75", 0.0),
    ("neg: wrong sign of power", r"\boxed{10^{3}}", "0.001", 0.0),
    ("neg: wrong magnitude", r"\boxed{10^{7}}", "1000000", 0.0),
    ("neg: off by 1e-3", r"\boxed{3.14}", r"\pi", 0.0),
    ("neg: unit confusion m vs km", r"\boxed{5000\text{ m}}", "5", 0.0),
    ("neg: unit confusion cents", r"\boxed{150}", r"\$1.50", 0.0),
    ("neg: percent is not per mille", r"\boxed{2.5}", "25%", 0.0),
    ("neg: a percent is not its fraction", r"\boxed{25\%}", "0.25", 0.0),
    ("neg: several numbers, scalar gold", r"\boxed{2, 3}", "2", 0.0),
    ("neg: several numbers, first right", r"\boxed{2, 3}", "3", 0.0),
    ("neg: tuple order matters", r"\boxed{(2, 1)}", "(1, 2)", 0.0),
    ("neg: interval ends matter", r"\boxed{(1, 2]}", "[1, 2)", 0.0),
    ("neg: tuple is not an interval", r"\boxed{[1, 2]}", "(1, 2)", 0.0),
    ("neg: set of other size", r"\boxed{\{1, 2\}}", r"\{1, 2, 3\}", 0.0),
    ("neg: variable left", r"\boxed{5x}", "5", 0.0),
    ("neg: mixed number is not a product", r"\boxed{2\frac{1}{2}}", "1", 0.0),
    ("neg: pi is not 3", r"\boxed{\pi}", "3", 0.0),
    ("neg: e is a constant only alone", r"\boxed{ex}", "2.718282", 0.0),
    ("neg: unparseable box", r"\boxed{\sin x}", "0", 0.0),
    ("neg: square root of a negative", r"\boxed{\sqrt{-4}}", "2", 0.0),
    ("neg: division by zero", r"\boxed{\frac{1}{0}}", "0", 0.0),
    ("neg: huge exponent", r"\boxed{10^{10^{10}}}", "0", 0.0),
    ("neg: underflow is not zero", r"\boxed{10^{-100000}}", "0", 0.0),
    ("neg: float vs a 1,500-bit gold", r"\boxed{\pi}", "2^{1500}", 0.0),
]


def test_latex_cases_are_labelled_and_cover_every_kind():
    labels = [case[0] for case in LATEX_CASES]
    assert len(labels) >= 80 and len(set(labels)) == len(labels)
    assert sum(label.startswith("neg:") for label in labels) >= 20
    assert all(expected == 0.0 for label, _, _, expected in LATEX_CASES if label.startswith("neg:"))


@pytest.mark.parametrize("label, response, gold, expected", LATEX_CASES, ids=[c[0] for c in LATEX_CASES])
def test_math_equal_latex(label, response, gold, expected):
    assert math_equal(response, gold) == expected
    # Without the box the same expression is a bare final answer: the prose reader still finds a number,
    # so only check that it never raises and stays in range.
    _check(math_equal(response.replace("\\boxed", ""), gold))


@pytest.mark.parametrize("text, value", [
    ("12", 12), ("-1,234.5", -2469 / 2), ("1{,}234", 1234), (r"\frac{3}{4}", 0.75), ("2^{10}", 1024),
    (r"\sqrt[3]{-8}", -2), (r"8^{-2/3}", 0.25), (r"2\frac12", 2.5), ("1.5e-3", Fraction(3, 2000)), ("50%", 0.5),
    ("x = -7", -7), (r"\left(\frac{1}{2}\right)", 0.5), ("2^{1000}", 2 ** 1000),
])
def test_parse_math_exact_values(text, value):
    parsed, _ = rewards.parse_math(text)
    assert parsed == value and isinstance(parsed, Fraction)  # exact: no float crept in


@pytest.mark.parametrize("text", [
    "", "x", "x^2 + 1", "1/0", "2^{4096}", "10^{10^{10}}", r"(-1)^{1/2}", r"\sqrt{-1}", "((1)", "(1))",
    r"\frac{1}", "1 +", "* 2", r"\foo{1}", "1 2", "[1)", "a, b", "{" * 60 + "1" + "}" * 60,
    "-" * 60 + "1", "1" * 201, ",".join(["1"] * 65), "1" * 1001,
])
def test_parse_math_refuses(text):
    assert rewards.parse_math(text) is None


def test_parse_math_powers_stay_small():
    # The size of an exact power is checked before it is computed; past MAX_BITS it is a float.
    assert rewards.parse_math("2^{4000}")[0] == 2 ** 4000
    big = rewards.parse_math("2^{4097}")  # 4097 bits: beyond MAX_BITS, and beyond float range
    assert big is None
    assert rewards.parse_math("1.0001^{100000}")[0] == pytest.approx(1.0001 ** 100000)
    assert rewards.parse_math("(-1)^{10^{100}}")[0] == 1


# Inputs built to make a parser slow: deep nesting, huge exponents, long chains, 1 MB strings.
HOSTILE_MATH = [
    "\\boxed{" + "{" * 990 + "1" + "}" * 990 + "}", "\\boxed{" + "(" * 490 + "1" + ")" * 490 + "}",
    "\\boxed{" + "\\sqrt{" * 150 + "2" + "}" * 150 + "}", "\\boxed{" + "2^{" * 300 + "2" + "}" * 300 + "}",
    "\\boxed{" + "\\frac{1}{" * 90 + "2" + "}" * 90 + "}", "\\boxed{" + "-" * 990 + "1}",
    "\\boxed{10^{10^{10^{10}}}}", "\\boxed{9^{9^{9^{9}}}}", "\\boxed{" + "9" * 200 + "^{" + "9" * 200 + "}}",
    "\\boxed{" + "1/3+" * 240 + "1}", "\\boxed{" + "\\frac{1}{7}+" * 90 + "1}", "\\boxed{" + "(1," * 300 + "}",
    "\\boxed{" + "\\{" * 400 + "}", "\\boxed{" + "\\pi^{" * 200 + "2" + "}" * 200 + "}",
    "\\boxed{" + "2^{0.5}" * 100 + "}", "\\boxed{" + "\\sqrt[64]{" * 90 + "2" + "}" * 90 + "}",
    "\\boxed{" + "1{,}000" * 140 + "}", "\\boxed{" + "\\text{" * 300 + "}" * 300 + "}",
    "\\boxed{(" + ",".join(["\\{1,2,3\\}"] * 60) + ")}", "\\boxed{\\{" + ",".join(["1"] * 400) + "\\}}",
    "The answer is " + "2^{" * 300 + "1" + "}" * 300, "The answer is $" + "(" * 500 + "$",
    # Just under MAX_EXPR_CHARS: parsed all the way (the longest work a single answer can cost).
    "\\boxed{" + "1/3+" * 120 + "1}", "\\boxed{" + "1.5+" * 120 + "1}", "\\boxed{(" + "1," * 240 + "1)}",
    "\\boxed{" + "\\frac{1}{7}+" * 40 + "1}", "\\boxed{" + "(" * 45 + "1" + ")" * 45 + "}",
] + [text for name, text in ADVERSARIAL.items()]


@pytest.mark.parametrize("i", range(len(HOSTILE_MATH)))
def test_math_equal_hostile_inputs_under_10_ms(i):
    # Untrusted model text: each hostile input returns a reward in [0, 1] in under 10 ms (best of 3).
    for gold in ("1", r"\frac{\sqrt{3}}{2}", "(1, 2)"):
        seconds, value = _seconds(math_equal, HOSTILE_MATH[i], gold)
        _check(value)
        assert seconds < 0.01, (HOSTILE_MATH[i][:60], seconds)


def test_math_equal_fuzz_latex_pieces():
    rng = random.Random(6)
    pieces = ["\\boxed{", "{", "}", "(", ")", "[", "]", "\\{", "\\}", "\\frac", "\\dfrac", "\\sqrt", "[3]",
              "^", "**", "_", "\\pi", "e", "x", "=", ",", "{,}", "\\,", "\\!", "\\%", "%", "\\$", "\\text{cm}",
              "\\left(", "\\right)", "\\times", "\\cdot", "\\div", "-", "+", "/", "1", "2", "0", "9" * 30,
              "1e-3", "1e999", "\\infty", "\\num{", ".", " ", "\\", "\u2212", "\u00d7", "\u03c0", "\ud800",
              "\\ln", "\\exp", "\\sin", "\\approx", "\\{1, 2\\}", "(1, 2)", "[0, 1)", "x ="]
    worst = 0.0
    for _ in range(3000):
        text = "".join(rng.choices(pieces, k=rng.randint(0, 40)))
        seconds, value = _seconds(math_equal, text, "2")
        _check(value)
        worst = max(worst, seconds)
        assert rewards.parse_math(text) is None or isinstance(rewards.parse_math(text), tuple)
    assert worst < 0.01, worst


@pytest.mark.parametrize("gold", [r"\frac{\sqrt{3}}{2}", r"2\pi", "(1, 2)", "[0, 1)", r"\{1, 2\}", "x = 5",
                                  r"\$1,234", "25%", "1.5e-3", r"\sqrt[3]{2}"])
def test_symbolic_golds_parse_and_match_themselves(gold):
    assert math_equal(f"\\boxed{{{gold}}}", gold) == 1.0


def _math_verify_score(response: str, gold: str) -> float:
    import math_verify
    # Golds are wrapped in $...$: math_verify reads LaTeX only between delimiters.
    return float(math_verify.verify(math_verify.parse(f"${gold}$"), math_verify.parse(response)))


# Where math_verify 0.9.0 (the paper's scorer) and math_equal disagree on LATEX_CASES, and why we keep
# ours. In every case math_verify scores 0 and we score 1.
MATH_VERIFY_DISAGREEMENTS = {
    "python power": "math_verify does not read ** (we do)",
    "right-associative power": "math_verify reads 2^3^2 as (2^3)^2 = 64; the convention is 2^(3^2) = 512",
    "thin space thousands": "math_verify reads 1\\,000\\,000 as 1*0*0; \\, is a thousands thin space",
    "scientific e": "math_verify reads 1e-3 as 1*e - 3 (Euler's e); we read scientific notation",
    "gold scientific": "the same, on the gold side: 2.5e-4 read as 2.5*e - 4",
    "num": "math_verify does not know siunitx \\num{}; we read it",
    "two pi": "math_verify rounds both to 6 decimals and compares; we use relative tolerance 1e-4 "
              "(6.2832 vs 2pi: 3e-6)",
    "within 1e-4": "the same tolerance difference (3.14159 vs 3.14160: 3e-6)",
    "approx": "the same tolerance difference (3.1416 vs pi: 2e-6)",
}


def test_compare_with_math_verify():
    # Optional (math_verify is not a requirement): every disagreement on the table must be listed above
    # with a reason, and every listed one must still happen.
    pytest.importorskip("math_verify")
    found = {}
    for label, response, gold, expected in LATEX_CASES:
        try:
            theirs = _math_verify_score(response, gold)
        except Exception as e:  # noqa: BLE001 - their parser may raise on our hostile cases
            theirs = f"raised {type(e).__name__}"
        if theirs != expected:
            found[label] = theirs
    assert set(found) == set(MATH_VERIFY_DISAGREEMENTS), found


# -----------------------------------------------------------------------------
# Rewards that cannot be gamed: the generic attacks a policy finds, per task, against an honest answer
# that is half right. Prompts are written the way tasks.py writes them (documents with "[Document i]
# title" headers, then the question), so "every candidate line" is what a real prompt offers.

DOCS = [
    ("Harbor Lights", "The harbor lights were lit at dusk. Fishing boats came home slowly. "
                      "The bell rang twice before noon. Gulls circled over the drying nets."),
    ("The Mill", "The mill wheel turned all winter long. Flour dust covered every beam of the loft."),
    ("Winter Road", "Snow closed the pass for three weeks. The carts waited in the valley below."),
    ("Old Maps", "The old maps showed a river that no longer exists. Nobody trusted the coastline."),
    ("River Song", "The ferryman sang to keep time with the oars. His songs were older than the town."),
    ("Night Train", "The night train left at eleven sharp. Its lamps swung as it crossed the bridge."),
]
TITLES = [t for t, _ in DOCS]
SENTENCES = [s.strip() + "." for _, x in DOCS for s in x.split(".") if s.strip()]
CODE = ('def ratio(self):\n    matches = sum(triple[-1] for triple in self.get_matching_blocks())\n'
        '    return _calculate_ratio(matches, len(self.a) + len(self.b))')


def _prompt(question: str, docs=DOCS) -> str:
    body = "\n\n".join(f"[Document {i}] {t}\n{x}" for i, (t, x) in enumerate(docs, 1))
    return f"Read the {len(docs)} documents below and answer the question after them.\n\n{body}\n\n{question}"


def _lines(items) -> str:
    return "[Answer]\n" + "\n".join(items)


LIST_FORMAT = 'Write "[Answer]" and then one {} per line, nothing else.'
OPTIONS = [SENTENCES[2], SENTENCES[6], SENTENCES[9], SENTENCES[13]]  # (A) .. (D)
MATCH_GOLD = ["1: Harbor Lights", "2: Old Maps", "3: River Song", "4: The Mill"]
MATCH_QUOTES = [SENTENCES[0], SENTENCES[8], SENTENCES[10], SENTENCES[4]]
SUMMARY = "Return a measure of the sequences' similarity as a float in the range [0, 1]."

# task -> (gold, question, half-right honest answer, {attack: response}). "Half right" is an honest
# answer with half of what the gold asks for right and nothing invented: half the items, rows or pairs;
# for a one-answer task (retrieval, choice, number) half right is wrong, so every attack must score 0.
GAMING = {
    "precise_retrieval": (
        "The bell rang twice before noon.",
        'Question: In the document titled "Harbor Lights", which sentence comes right after this one?\n'
        '"Fishing boats came home slowly."\nReply with that sentence only, copied exactly.',
        "The bell rang twice.",
        {"every candidate": "\n".join(SENTENCES),
         "one right line repeated": "The bell rang twice before noon.\n" * 10,
         "gold's format, wrong values": "The bell rang once after noon."}),
    "comprehension": (
        "B",
        'Question: Which of these sentences appears in the document titled "Harbor Lights"?\n'
        + "\n".join(f"({k}) {s}" for k, s in zip("ABCD", OPTIONS))
        + '\nEnd your reply with "The correct answer is (X)", where X is the letter.',
        "The correct answer is (C)",
        {"every candidate": "\n".join(f"({k}) {s}" for k, s in zip("ABCD", OPTIONS)),
         "every letter": "The correct answer is (A), (B), (C) or (D)",
         "every letter, one per line": "A\nB\nC\nD",
         "gold's format, wrong values": "The correct answer is (E)"}),
    "exhaustive_retrieval": (
        ["The Mill", "Night Train"],
        'Question: List the title of every document whose text contains the word "winter". '
        + LIST_FORMAT.format("title"),
        _lines(["The Mill"]),
        {"every candidate": _lines(TITLES),
         "one right line repeated": _lines(["The Mill"] * 10),
         "gold's format, wrong values": _lines(["Old Maps", "River Song"])}),
    "numerical_reasoning": (
        "7",
        'Question: How many times does the word "the" occur in all the documents together? '
        "Give the final number in \\boxed{}.",
        "\\boxed{6}",
        {"every candidate": "\\boxed{3, 5, 7, 9, 12}",
         "every candidate, one per line": "3\n5\n7\n9\n12",
         "percent hedge": "\\boxed{0.07\\%}",  # 0.07% is 0.0007, or 0.07: never 7
         "gold's format, wrong values": "\\boxed{8}"}),
    "structured_extraction": (
        [["The Mill", 3], ["Night Train", 5]],
        'Question: Make a table with one row for each document that contains the word "the": the document '
        'title and how many times the word occurs in it. Reply with <answer>{"data": [["title", count], '
        "...]}</answer>.",
        '<answer>{"data": [["The Mill", 3]]}</answer>',
        {"every candidate": json.dumps({"data": [[t, {"The Mill": 3, "Night Train": 5}.get(t, 1)]
                                                  for t in TITLES]}),
         "every title with every count": json.dumps({"data": [[t, n] for t in TITLES for n in range(10)]}),
         "one right line repeated": json.dumps({"data": [["The Mill", 3]] * 10}),
         "gold's format, wrong values": json.dumps({"data": [["The Mill", 4], ["Night Train", 6]]})}),
    "structured_matching": (
        MATCH_GOLD,
        'Question: Each quote below comes from one of the documents. For each quote write a line "NUMBER: '
        'TITLE" with the title of its document.\n' + "\n".join(f'{k}. "{s}"' for k, s in enumerate(MATCH_QUOTES, 1))
        + "\n" + LIST_FORMAT.format("such line"),
        _lines(MATCH_GOLD[:2]),
        {"every candidate": _lines(f"{k}: {t}" for k in range(1, 5) for t in TITLES),
         "one right line repeated": _lines([MATCH_GOLD[0]] * 10),
         "gold's format, wrong values": _lines(["1: Night Train", "2: Winter Road", "3: The Mill",
                                                "4: Harbor Lights"])}),
    "graded_ranking": (
        ["Old Maps", "Harbor Lights", "River Song", "The Mill"],
        'Question: Rank the documents that contain the word "the" from the most to the fewest occurrences '
        "of it.\n" + LIST_FORMAT.format("title"),
        _lines(["Old Maps", "Harbor Lights"]),
        {"every candidate": _lines(TITLES),
         "one right line repeated": _lines(["Old Maps"] * 10),
         "gold's format, wrong values": _lines(["Night Train", "Winter Road", "The Missing", "Old Roads"])}),
    "sequence_ordering": (
        ["S3", "S1", "S4", "S2"],
        "Question: The sentences below are quoted from the documents above, in random order. List their "
        "labels in the order the sentences appear in the documents, first to last.\n"
        + "\n".join(f'S{k}: "{SENTENCES[j]}"' for k, j in zip(range(1, 5), (8, 12, 1, 10)))
        + "\n" + LIST_FORMAT.format("label"),
        _lines(["S2", "S3", "S1", "S4"]),  # 3 of the 6 pairs in order
        {"every candidate": _lines(["S1", "S2", "S3", "S4"]),
         "every candidate, both orders": _lines(["S1", "S2", "S3", "S4", "S4", "S3", "S2", "S1"]),
         "one right line repeated": _lines(["S3"] * 10),
         "gold's format, wrong values": _lines(["S5", "S6", "S7", "S8"])}),
    "summarization": (
        SUMMARY,
        'Question: Document "difflib.SequenceMatcher.ratio" is Python source code whose docstring was '
        "removed. Write that docstring: one to four sentences that summarize what the code does.",
        "Return a measure of the sequences' similarity.",  # the first half of the reference
        {"every candidate": CODE + "\n" + "\n".join(SENTENCES),
         "one right line repeated": " ".join(["Return a measure of the sequences' similarity."] * 10),
         # ROUGE-L is lexical: the reference's own wording around wrong content scores 0.600, only just
         # under the half-right 0.636. A generic docstring scores 0.417.
         "gold's format, wrong values": "Return a copy of the object's value as a string in the given range.",
         "generic docstring": "Return the value of the object as a string."}),
}
GENERIC = {"repeat the prompt": None, "empty": ""}  # the prompt is filled in per task


def _gaming_cases():
    for task, (gold, question, _, attacks) in GAMING.items():
        prompt = _prompt(question, DOCS + [("difflib.SequenceMatcher.ratio", CODE)]
                         if task == "summarization" else DOCS)
        for name, response in {**attacks, "repeat the prompt": prompt, "empty": ""}.items():
            yield pytest.param(task, name, response, id=f"{task}-{name}")


@pytest.mark.parametrize("task, attack, response", list(_gaming_cases()))
def test_attack_scores_no_more_than_half_right(task, attack, response):
    gold, _, half_right, _ = GAMING[task]
    honest = score(task, "<think>...</think>" + half_right, gold, require_think=True)
    gamed = score(task, "<think>...</think>" + response, gold, require_think=True)
    assert gamed <= honest, (task, attack, gamed, honest)


def test_half_right_answers_score_what_they_should():
    # The baselines above are what their names say: 0 for one-answer tasks, partial credit elsewhere.
    half = {task: score(task, h, gold) for task, (gold, _, h, _) in GAMING.items()}
    for task in ("precise_retrieval", "comprehension", "numerical_reasoning"):
        assert half[task] == 0.0
    assert half["exhaustive_retrieval"] == pytest.approx(2 / 3)   # P = 1, R = 1/2
    assert half["structured_extraction"] == pytest.approx(1 / 2)  # 1 shared row, union 2
    assert half["sequence_ordering"] == pytest.approx(1 / 2)      # 3 of 6 pairs
    assert half["summarization"] == pytest.approx(0.636, abs=5e-4)
    assert 0.5 < half["graded_ranking"] < 1.0 and 0.5 < half["structured_matching"] < 1.0


@pytest.mark.parametrize("gold", list("ABCD"))
def test_choice_naming_several_letters_scores_zero(gold):
    # Whichever letter is right, an answer that names several letters is not an answer: before, the
    # first named letter was read, so listing the options won whenever the gold was (A).
    attacks = GAMING["comprehension"][3]
    for name in ("every candidate", "every letter", "every letter, one per line"):
        assert choice_accuracy(attacks[name], gold) == 0.0, name
    # One letter, however it is written and explained, still counts.
    assert choice_accuracy(f"The correct answer is ({gold}).\nOption A and B are wrong.", gold) == 1.0
    assert choice_accuracy(f"{gold}\nBecause A only appears once.", gold) == 1.0


def test_matching_every_title_to_every_quote_is_not_full_marks():
    # Writing "k: TITLE" for every quote number and every title scored 1.0 with recall alone.
    gold, _, _, attacks = GAMING["structured_matching"]
    assert sub_em(attacks["every candidate"], gold) == pytest.approx(2 * (4 / 24) / (4 / 24 + 1))
    assert sub_em(_lines(gold), gold) == 1.0
    assert sub_em(_lines(gold[:2] + ["3: Night Train", "4: Winter Road"]), gold) == pytest.approx(1 / 2)


@pytest.mark.parametrize("response, gold, expected", [
    # The percent rule: a "%" in the response is a unit, "8\%" reads as the number written, 8. Math golds
    # for "what percent ..." questions are written "8", and a model that adds the sign is right; it is
    # not also right against 0.08, so one answer cannot match two golds a factor 100 apart.
    (r"\boxed{8\%}", "8", 1.0),
    (r"\boxed{8\%}", "0.08", 0.0),
    ("It fell by 8%.", "0.08", 0.0),
    (r"\boxed{0.08}", "8", 0.0),
    # A gold written with "%" names a percentage: its number and its fraction both state it.
    (r"\boxed{8\%}", "8%", 1.0),
    (r"\boxed{8}", "8%", 1.0),
    (r"\boxed{0.08}", "8%", 1.0),
    (r"\boxed{0.08\%}", "8%", 0.0),
    # \text{} around the number itself is the number; \text{} after it is a unit.
    (r"\boxed{\text{42}}", "42", 1.0),
    (r"\boxed{\textbf{\text{42}}}", "42", 1.0),
    (r"\boxed{\text{42 apples}}", "42", 1.0),
    (r"\boxed{\mathrm{1,234.5}}", "1234.5", 1.0),
    (r"\boxed{42\text{ m}}", "42", 1.0),
    (r"\boxed{\text{forty-two}}", "42", 0.0),
])
def test_math_percent_rule_and_text_numbers(response, gold, expected):
    assert math_equal(response, gold) == expected


# -----------------------------------------------------------------------------
# Batches

def _batch(n: int, seed: int = 4):
    rng = random.Random(seed)
    examples = {
        "precise_retrieval": ("Paris", ["<think>hm</think>Paris", "</think> Lyon", "Paris"]),
        "comprehension": ("B", ["</think>The correct answer is (B)", "</think>A", "B"]),
        "exhaustive_retrieval": (["d1", "d2"], ["</think>d1\nd2", "</think>d1\nd9", "d2"]),
        "numerical_reasoning": ("3/4", ["</think>\\boxed{0.75}", "</think>0.7", "0.75"]),
        "structured_extraction": ('{"data": [["a", 1]]}', ['</think>{"data": [["a", 1]]}', "</think>{}", "x"]),
        "structured_matching": (["r", "b"], ["</think>r", "</think>r\nb", "b"]),
        "graded_ranking": (["a", "b", "c"], ["</think>c\nb\na", "</think>a\nb", "a"]),
        "sequence_ordering": (["a", "b", "c"], ["</think>a\nc\nb", "</think>a\nb", "c\nb\na"]),
        "summarization": ("the cat sat", ["</think>the cat", "<think>the cat sat</think>x", "sat cat"]),
    }
    tasks, responses, answers = [], [], []
    for _ in range(n):
        task = rng.choice(sorted(examples))
        gold, candidates = examples[task]
        tasks.append(task)
        responses.append(rng.choice(candidates + _hostile_strings(rng, 1)))
        answers.append(gold)
    return tasks, responses, answers


@pytest.mark.parametrize("require_think", [False, True])
def test_score_batch_equals_looping_score(require_think):
    tasks, responses, answers = _batch(300)
    loop = [score(t, r, a, require_think=require_think) for t, r, a in zip(tasks, responses, answers)]
    assert 0 < sum(loop) < len(loop)  # the batch mixes rewarded and unrewarded responses
    assert score_batch(tasks, responses, answers, require_think=require_think) == loop
    if require_think:  # the process pool path (spawned workers) once
        assert score_batch(tasks, responses, answers, require_think=True, processes=2) == loop


def test_score_batch_errors():
    with pytest.raises(ValueError, match="2 tasks, 1 responses"):
        score_batch(["summarization"] * 2, ["x"], ["x", "y"])
    with pytest.raises(ValueError, match="unknown task"):
        score_batch(["nope"], ["x"], ["x"], processes=2)


def test_examples_for_the_readme():
    # One example per task, as quoted in the README.
    assert score("precise_retrieval", "</think>Paris", "Paris") == 1.0
    assert score("comprehension", "</think>The correct answer is (C)", "C") == 1.0
    assert score("exhaustive_retrieval", "</think>doc1\ndoc4\ndoc9", ["doc1", "doc4", "doc7"]) == pytest.approx(2 / 3)
    assert score("numerical_reasoning", "</think>So the share is \\boxed{\\frac{3}{4}}.", "75%") == 1.0
    assert score("numerical_reasoning", "</think>\\boxed{\\dfrac{\\sqrt3}{2}}", "\\frac{\\sqrt{3}}{2}") == 1.0
    assert score("structured_extraction", '</think><answer>{"data": [["alice", 3], ["dave", 1]]}</answer>',
                 json.dumps({"data": [["alice", 3], ["bob", 5]]})) == pytest.approx(1 / 3)
    assert score("structured_matching", "</think>red\nwhite", ["red", "blue"]) == 0.5
    assert score("graded_ranking", "</think>c\nb\na", ["a", "b", "c"]) == pytest.approx(0.790, abs=5e-4)
    assert score("sequence_ordering", "</think>a\nc\nb\nd", ["a", "b", "c", "d"]) == pytest.approx(5 / 6)
    assert score("summarization", "</think>the cat sat on the mat",
                 "the cat is on the mat") == pytest.approx(5 / 6)


def test_the_file_reads_metrics_first_in_the_table_order_and_the_parser_last():
    """The layout the module docstring promises: the nine metrics in REWARDS' order, then the table,
    then the math parser as an appendix."""
    import inspect
    line = lambda f: inspect.getsourcelines(f)[1]  # noqa: E731
    metrics = [line(metric) for metric, _ in REWARDS.values()]
    assert metrics == sorted(metrics)
    assert metrics[-1] < line(rewards.score) < line(rewards.parse_math)
