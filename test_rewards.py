"""Tests for rewards.py: hand-computed values per metric, fast paths against slow references, fuzzing.

    python -m pytest -q test_rewards.py --durations=10
"""

import json
import math
import random
import re

import pytest

import rewards
from rewards import (TASKS, answer_text, choice_accuracy, exact_match, format_ok, lcs_length,
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
    assert set(TASKS) == {"precise_retrieval", "comprehension", "exhaustive_retrieval",
                          "numerical_reasoning", "structured_extraction", "structured_matching",
                          "graded_ranking", "sequence_ordering", "summarization"}
    assert {f.__name__ for f in TASKS.values()} == set(GOLD)
    with pytest.raises(ValueError, match="unknown task 'retrieval'"):
        score("retrieval", "x", "x")
    # A bad gold raises even when the format gate already zeroed the response: bad data must surface.
    with pytest.raises(ValueError, match="math_equal"):
        score("numerical_reasoning", "no think tag", "twelve", require_think=True)


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
    assert sub_em("Blue\nRED\nwhite", gold) == 0.5
    assert sub_em("red\nred\nred\nred", gold) == 0.25  # duplicates count once
    assert sub_em("reddish\nthe blue one", gold) == 0.0  # whole lines, not substrings
    assert sub_em("", gold) == 0.0
    with pytest.raises(ValueError, match="sub_em: gold answer is an empty list"):
        sub_em("red", [])
    with pytest.raises(ValueError, match="must be a list"):
        sub_em("red", "red")


def test_ndcg_values_from_the_issue():
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
    ("\\boxed{\\frac{\\frac{3}{4}}{2}}", "0.375", 0.0),        # nested \frac: reads the inner 3/4 only
    ("$\\boxed{x = -\\tfrac{1}{2}}$", "-0.5", 1.0),
    ("3/4 of them", "0.75", 1.0),
    ("The answer is 1,234,567 dollars", "1234567", 1.0),
    ("\\boxed{\\$1,234.50}", "1234.5", 1.0),
    ("It grew by 25%.", "25%", 1.0),
    ("It grew by 25\\%.", "0.25", 1.0),                          # 25% read as 0.25 too
    ("It grew by 0.25", "25%", 1.0),
    ("It grew by 25", "25%", 1.0),
    ("1.5e-3", "0.0015", 1.0),
    ("1.5 \\times 10^{3}", "1500", 1.0),
    ("about 3.14159", "3.1416", 1.0),                            # relative error 2.7e-6
    ("about 3.14", "3.1416", 0.0),                               # relative error 5e-4
    ("100.009", "100", 1.0), ("100.011", "100", 0.0),            # the 1e-4 edge
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
        forms = [f"{x:.12f}", f"{x:,.12f}", f"{x:.9e}", f"{a}/{b}", f"\\frac{{{a}}}{{{b}}}",
                 f"\\boxed{{{x * 100:.10f}\\%}}"]
        gold = repr(x)
        for form in forms:
            response = f"Adding the parts up, we finally get {form}"
            assert math_equal(response, gold) == 1.0, (form, gold)
            assert math_equal(response, repr(x * 1.01 + 1e-3)) == 0.0, (form, gold)


@pytest.mark.parametrize("gold", ["twelve", "x^2+1", "", "1/0", None, ["12"], "\\boxed{12", "1" * 500])
def test_math_equal_bad_gold(gold):
    with pytest.raises(ValueError, match="math_equal"):
        math_equal("12", gold)


def test_math_equal_never_runs_model_text():
    # Text that an eval-based scorer would execute: here it is just characters without a number.
    assert math_equal("__import__('os').system('echo hacked')", "0") == 0.0
    assert math_equal("\\boxed{2**10}", "1024") == 0.0  # first number in the box is 2


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
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_one_megabyte_adversarial_inputs(name):
    # Each call must simply come back (a regex that backtracks would hang here) with a valid reward.
    text = ADVERSARIAL[name]
    for metric_name, metric in METRICS.items():
        _check(metric(text, GOLD[metric_name]))


def test_adversarial_values_are_sensible():
    assert math_equal("1" * HUGE, "1") == 0.0                     # a 1M-digit run is not the number 1
    assert math_equal("1e9999" * 10, "1e9999") == 0.0              # 1e99991e... reads 1e9999 then 1
    assert pairwise_accuracy(ADVERSARIAL["lines"], GOLD["pairwise_accuracy"]) == 1.0
    assert ndcg(ADVERSARIAL["lines"], ["a", "b"]) == 1.0          # duplicates cost nothing, gain nothing
    assert set_f1(ADVERSARIAL["lines"], ["a", "b"]) == pytest.approx(2 / 3)


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
    assert score("structured_extraction", '</think><answer>{"data": [["alice", 3], ["dave", 1]]}</answer>',
                 json.dumps({"data": [["alice", 3], ["bob", 5]]})) == pytest.approx(1 / 3)
    assert score("structured_matching", "</think>red\nwhite", ["red", "blue"]) == 0.5
    assert score("graded_ranking", "</think>c\nb\na", ["a", "b", "c"]) == pytest.approx(0.790, abs=5e-4)
    assert score("sequence_ordering", "</think>a\nc\nb\nd", ["a", "b", "c", "d"]) == pytest.approx(5 / 6)
    assert score("summarization", "</think>the cat sat on the mat",
                 "the cat is on the mat") == pytest.approx(5 / 6)
