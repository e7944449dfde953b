"""Tests for data.py: the released format, prompt encoding, built tasks, difficulty filter, batches.

    python -m pytest -q test_data.py

Built tasks are checked against independent recomputations from the prompt text itself (regex counts,
substring positions), and every gold answer is scored with the real rewards.score. The second corpus
is written by the tests from docstrings of standard-library modules (read as text with `ast`, so it
exists on every Python, needs no download and no apt), as a Markdown file with headings, a gzipped
.txt without headings, and a file that load_documents must skip.
"""

import ast
import gzip
import json
import random
import re
import sysconfig
from pathlib import Path

import pytest

import data
import rewards
from data import DataError, PromptBatches, Sample


# -----------------------------------------------------------------------------
# Helpers: a right and a wrong response for any gold answer

def perfect(task, answer) -> str:
    """A response that the task's metric must score 1.0."""
    if task == "comprehension":
        return f"The correct answer is ({answer})" if isinstance(answer, str) else answer[0]
    if task == "numerical_reasoning":
        return f"So the answer is \\boxed{{{answer}}}."
    if task == "structured_extraction":
        rows = json.loads(answer)["data"] if isinstance(answer, str) else answer
        return f"<answer>{json.dumps({'data': rows})}</answer>"
    if task == "summarization":
        return answer if isinstance(answer, str) else answer[0]
    if isinstance(answer, list):
        return "[Answer]\n" + "\n".join(answer)
    return answer


def near_miss(task, answer) -> str:
    """A plausible but wrong response: must score less than 1."""
    if task == "comprehension":
        if isinstance(answer, str):
            return f"The correct answer is ({'B' if answer != 'B' else 'C'})"
        return answer[0] + " (probably)"
    if task == "numerical_reasoning":
        return f"\\boxed{{9{answer}}}"  # 9 prepended: 4 -> 94, 3/4 -> 93/4
    if task == "structured_extraction":
        rows = json.loads(answer)["data"] if isinstance(answer, str) else answer
        return f"<answer>{json.dumps({'data': rows[:-1] + [[*rows[-1][:-1], 'wrong']]})}</answer>"
    if task == "summarization":
        text = answer if isinstance(answer, str) else answer[0]
        return " ".join(text.split()[: max(1, len(text.split()) // 2)])
    if task in ("graded_ranking", "sequence_ordering"):
        return "[Answer]\n" + "\n".join(answer[::-1])
    if isinstance(answer, list):  # F1, SubEM: one item missing, one invented
        return "[Answer]\n" + "\n".join(answer[:-1] + ["no such item"])
    return answer + " (and more)"


def record(source, gt, **extra):
    return {"data_source": source, "prompt": [{"role": "user", "content": "Documents... Question?"}],
            "ability": "long_context", "reward_model": {"style": "rule", "ground_truth": gt},
            "extra_info": {"question": "Question?", **extra}}


def write_jsonl(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def lbp_gold(task):
    return {"comprehension": ["Paris"], "summarization": ["The text explains how tides work in detail."],
            "graded_ranking": ["doc3", "doc1", "doc7"], "sequence_ordering": ["e2", "e4", "e1", "e3"]
            }.get(task, ["doc2", "doc5", "doc9"])


def released_records():
    """One record per data_source, plus all 25 LongBench-Pro sub-tasks (by their full names)."""
    recs = [record("EM", {"golden_label": "The tide came in at 6 pm."}),
            record("selection", {"golden_label": "C"}),
            record("long_math_longcot_math_verify_v2", {"golden_label": "1,234.5"}),
            record("math_longcot_math_verify", "3/4"),  # a bare string
            record("multitableqa_pretraining", {"golden_label": json.dumps({"data": [["a", 1], ["b", 2]]})}),
            record("EM", [{"note": "wrapped"}, {"golden_label": "wrapped in a list"}])]
    for code, (name, task) in data.LONGBENCH_PRO.items():
        recs.append(record("longbench_pro", {"doc_ids": lbp_gold(task), "summary": "English"},
                           reward_mode=f"{code} {name}", index=f"lbp-{code}"))
    return recs


# -----------------------------------------------------------------------------
# Reading the released format

def test_every_source_and_subtask_maps_and_scores(tmp_path):
    recs = released_records()
    samples = data.load_jsonl(write_jsonl(tmp_path / "r.jsonl", recs))
    assert len(samples) == len(recs) == 6 + 25
    want = {"EM": "precise_retrieval", "selection": "comprehension", "multitableqa_pretraining": "structured_extraction"}
    for s in samples:
        if s.source in want:
            assert s.task == want[s.source]
        if "math_longcot_math_verify" in s.source:
            assert s.task == "numerical_reasoning"
        assert s.task in rewards.TASKS
        assert rewards.score(s.task, perfect(s.task, s.answer), s.answer) == 1.0, s
        assert rewards.score(s.task, near_miss(s.task, s.answer), s.answer) < 1.0, s
        assert rewards.score(s.task, "I do not know.", s.answer) < 1.0, s
    lbp = {s.meta["reward_mode"].split()[0]: s for s in samples if s.source == "longbench_pro"}
    assert len(lbp) == 25 and lbp["T1.1"].task == "graded_ranking" and lbp["T6.3"].task == "sequence_ordering"
    assert lbp["T3.1"].task == lbp["T11.2"].task == "comprehension" and lbp["T4.2"].task == "summarization"
    assert lbp["T6.2"].task == "exhaustive_retrieval" and lbp["T10.1"].task == "structured_matching"
    assert lbp["T5.1"].id == "lbp-T5.1" and samples[0].id == "r.jsonl:1"
    assert samples[3].answer == "3/4" and samples[5].answer == "wrapped in a list"


def test_round_trip_released_and_built(tmp_path, built_default):
    samples = data.load_jsonl(write_jsonl(tmp_path / "r.jsonl", released_records()))
    data.save_jsonl(samples + built_default, tmp_path / "out.jsonl")
    again = data.load_jsonl(tmp_path / "out.jsonl")
    assert again == samples + built_default
    rec = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[-1])
    assert rec["data_source"] == data.BUILD_SOURCE and rec["extra_info"]["task"] == built_default[-1].task


@pytest.mark.parametrize("line, words", [
    ('{"data_source": "EM", ', ["r.jsonl:2", "invalid JSON"]),
    ('[1, 2]', ["r.jsonl:2", "JSON object"]),
    ('{"data_source": "EM", "reward_model": {"ground_truth": {"golden_label": "x"}}}', ["r.jsonl:2", "'prompt'", "missing"]),
    ('{"data_source": "EM", "prompt": "text", "reward_model": {"ground_truth": {"golden_label": "x"}}}',
     ["r.jsonl:2", "'prompt'", "must be list"]),
    ('{"data_source": "EM", "prompt": [{"role": "user"}], "reward_model": {"ground_truth": {"golden_label": "x"}}}',
     ["r.jsonl:2", "prompt[0]"]),
    ('{"data_source": 7, "prompt": [], "reward_model": {}}', ["r.jsonl:2", "'data_source'", "must be str"]),
    ('{"data_source": "EM", "prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": 5}}',
     ["r.jsonl:2", "reward_model.ground_truth"]),
    ('{"data_source": "EM", "prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": {"golden_label": 3}}}',
     ["r.jsonl:2", "golden_label", "must be str"]),
    ('{"data_source": "longbench_pro", "prompt": [{"role": "user", "content": "q"}], "reward_model": '
     '{"ground_truth": {"doc_ids": "a"}}, "extra_info": {"reward_mode": "T1.1 Global Cohesive Retrieval"}}',
     ["r.jsonl:2", "doc_ids", "must be list"]),
    ('{"data_source": "longbench_pro", "prompt": [{"role": "user", "content": "q"}], "reward_model": '
     '{"ground_truth": {"doc_ids": ["a"]}}}', ["r.jsonl:2", "extra_info.reward_mode", "missing"]),
    ('{"data_source": "multitableqa_pretraining", "prompt": [{"role": "user", "content": "q"}], "reward_model": '
     '{"ground_truth": {"golden_label": "{not json"}}}', ["r.jsonl:2", "ground_truth.golden_label", "structured_extraction"]),
])
def test_malformed_lines_name_file_line_and_field(tmp_path, line, words):
    path = write_jsonl(tmp_path / "r.jsonl", [record("EM", {"golden_label": "ok"}), line])
    with pytest.raises(DataError) as e:
        data.load_jsonl(path)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_encoding_errors_name_the_line(tmp_path):
    good = json.dumps(record("EM", {"golden_label": "ok"})).encode()
    path = tmp_path / "enc.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + good[:30] + b"\xff\xfe" + good[30:] + b"\n")
    with pytest.raises(DataError, match=r"enc.jsonl:2: not UTF-8"):  # line 1's BOM is fine
        data.load_jsonl(path)
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n")
    assert [s.answer for s in data.load_jsonl(path)] == ["ok"]


def test_unknown_source_and_mode_error_or_skip_with_counts(tmp_path, caplog):
    good = record("EM", {"golden_label": "ok"})
    src = record("my_new_source", {"golden_label": "x"})
    mode = record("longbench_pro", {"doc_ids": ["a"]}, reward_mode="T99.9 Invented Task")
    path = write_jsonl(tmp_path / "r.jsonl", [good, src, "", "   ", mode, mode])
    with pytest.raises(DataError, match=r"r.jsonl:2: unknown data_source 'my_new_source'; known: .*selection"):
        data.load_jsonl(path)
    path2 = write_jsonl(tmp_path / "m.jsonl", [mode])
    with pytest.raises(DataError, match=r"m.jsonl:1: unknown LongBench-Pro reward_mode .*T1.1 Global Cohesive"):
        data.load_jsonl(path2)
    counts = {}
    with caplog.at_level("WARNING", logger="data"):
        samples = data.load_jsonl(path, skip_unknown=True, counts=counts)
    assert [s.answer for s in samples] == ["ok"]
    assert counts == {"unknown_data_source": 1, "unknown_reward_mode": 2, "blank_line": 2}
    assert "unknown_reward_mode" in caplog.text


def test_ten_megabyte_lines(tmp_path):
    big = record("EM", {"golden_label": "needle"})
    big["prompt"][0]["content"] = "haystack " * 1_200_000  # ~10.8 MB on one line
    path = write_jsonl(tmp_path / "big.jsonl", [big])
    assert path.stat().st_size > 10_000_000
    (s,) = data.load_jsonl(path)
    assert s.answer == "needle" and len(s.prompt[0]["content"]) == 10_800_000
    path.write_text(path.read_text()[:-10] + "\n")  # the same line, cut short: invalid JSON
    with pytest.raises(DataError) as e:
        data.load_jsonl(path)
    assert "big.jsonl:1: invalid JSON" in str(e.value) and len(str(e.value)) < 400  # no 10 MB message


# -----------------------------------------------------------------------------
# Prompt encoding: chat template, drop, truncate

def test_chat_ids_match_apply_chat_template(qwen_tokenizer):
    msgs = [{"role": "user", "content": "Read this.\n\nQuestion: what?"}]
    want = qwen_tokenizer.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    want = want["input_ids"] if hasattr(want, "keys") else want  # transformers 5: a BatchEncoding
    assert data.chat_ids(qwen_tokenizer, msgs) == list(want)
    assert qwen_tokenizer.decode(want).endswith("<|im_start|>assistant\n")


def test_encode_drops_or_truncates_long_prompts(qwen_tokenizer, built_default):
    short = built_default[0]
    question = "Question: which tide is mentioned first?"
    content = ("Read the 2 documents below.\n\n[Document 1] Tides\n" + "The sea rises and falls. " * 400
               + "\n\n[Document 2] Moon\nThe moon pulls the water.\n\n" + question)
    long = Sample("long", "precise_retrieval", [{"role": "user", "content": content}], "x", "EM",
                  {"question": question})
    ids, kept, counts = data.encode_prompts([short, long], qwen_tokenizer, 1024)
    assert [s.id for s in kept] == [short.id] and counts == {"kept": 1, "dropped_too_long": 1, "truncated": 0}
    assert ids[0] == data.chat_ids(qwen_tokenizer, short.prompt)
    ids, kept, counts = data.encode_prompts([short, long], qwen_tokenizer, 300, truncate=True)
    assert counts["truncated"] >= 1 and counts["kept"] + counts["dropped_too_long"] == 2
    cut = kept[-1]
    assert cut.id == "long" and cut.meta["truncated"] and len(ids[-1]) <= 300
    text = cut.prompt[0]["content"]
    assert text.endswith(question) and "[Document 2] Moon\nThe moon pulls the water." in text  # intact
    assert text.startswith("Read the 2 documents below.\n\n[Document 1] Tides\nThe sea") and data.CUT_MARK in text
    assert qwen_tokenizer.decode(ids[-1]).startswith("<|im_start|>user\n")  # the template is untouched
    _, kept, counts = data.encode_prompts([long], qwen_tokenizer, 20, truncate=True)
    assert kept == [] and counts["dropped_too_long"] == 1  # the question alone does not fit


# -----------------------------------------------------------------------------
# Documents

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CORPUS_MODULES = ["email/message", "logging/__init__", "unittest/case", "http/client", "urllib/parse",
                  "threading", "subprocess", "smtplib", "optparse", "socketserver"]


def docstrings(module: str) -> list[tuple[str, str]]:
    tree = ast.parse((STDLIB / f"{module}.py").read_text(encoding="utf-8"))
    out = []
    for node in [tree] + [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))]:
        doc = ast.get_docstring(node)
        if doc and len(doc) > 150:
            out.append((getattr(node, "name", module.replace("/", ".")), doc))
    return out


@pytest.fixture(scope="module")
def second_corpus(tmp_path_factory):
    """Folder: a Markdown file with headings, a gzipped text without headings, one file to skip."""
    root = tmp_path_factory.mktemp("corpus")
    mods = [m for m in CORPUS_MODULES if (STDLIB / f"{m}.py").exists()]
    md = [f"# {m.replace('/', '.')}\n\n" + "\n\n".join(f"## {n}\n\n{d}" for n, d in docstrings(m)) for m in mods[:6]]
    (root / "stdlib_a.md").write_text("\n\n".join(md), encoding="utf-8")
    (root / "sub").mkdir()
    plain = "\n\n".join(d for m in mods[6:] for _, d in docstrings(m))
    plain = re.sub(r"^[=\-~*^]{3,}\s*$", "", plain, flags=re.M)  # drop reST underlines: no headings at all
    with gzip.open(root / "sub" / "stdlib_b.txt.gz", "wt", encoding="utf-8") as f:
        f.write(plain)
    (root / "sub" / "image.png").write_bytes(b"\x89PNG not text")
    return root


def test_load_documents_default_and_folders(second_corpus, caplog):
    docs = data.load_documents()
    assert len(docs) > 50 and docs == data.load_documents()
    assert len({d.title.lower() for d in docs}) == len(docs) and all(d.text.strip() for d in docs)
    assert len({d.text for d in docs}) == len(docs)  # repeated sections are dropped (and logged)
    with caplog.at_level("WARNING", logger="data"):
        docs2 = data.load_documents([second_corpus], max_chars=3000)
    assert "skipped 1 files" in caplog.text
    titles = [d.title for d in docs2]
    assert "LogRecord" in titles and "stdlib_a" not in titles  # headings are titles; empty preamble dropped
    assert any(t.startswith("stdlib_b (part ") for t in titles)  # no headings: split by size
    assert all(len(d.text) <= 3000 for d in docs2) and len(set(titles)) == len(titles)
    with pytest.raises(ValueError, match="image.png"):
        data.load_documents([second_corpus / "sub" / "image.png"])


def test_split_sections_headings_and_reflow():
    text = ("Intro line one\nwraps here.\n\nTitle A\n=======\n\nBody a is\nwrapped.\n\n   code()\n   more()\n\n"
            "# Title B\n\nBody b.\n\n```\n# not a heading\n```\n")
    docs = data.split_sections(text, "file")
    assert [d.title for d in docs] == ["file", "Title A", "Title B"]
    assert docs[0].text == "Intro line one wraps here."
    assert docs[1].text == "Body a is wrapped.\n\n   code()\n   more()"
    assert "# not a heading" in docs[2].text
    paras = ["a" * 50] * 5 + ["b" * 300, "c" * 20]  # no headings; one paragraph longer than max_chars
    parts = data.split_sections("\n\n".join(paras), "f", max_chars=120)
    assert [d.title for d in parts] == [f"f (part {k})" for k in range(1, 7)]
    assert all(len(d.text) <= 120 for d in parts)
    assert "".join(d.text for d in parts).replace("\n", "") == "".join(paras)  # nothing lost


# -----------------------------------------------------------------------------
# Built tasks: right by construction, within budget, deterministic

@pytest.fixture(scope="module")
def built_default(qwen_tokenizer):
    return data.build_tasks(data.load_documents(), qwen_tokenizer, 3, 1024, seed=0)


@pytest.fixture(scope="module")
def built_second(qwen_tokenizer, second_corpus):
    return data.build_tasks(data.load_documents([second_corpus]), qwen_tokenizer, 3, 1024, seed=0)


def split_prompt(s: Sample) -> tuple[dict, str]:
    """{title: text} of the documents in a built prompt, and the documents' text as one string."""
    content = s.prompt[0]["content"]
    assert content.endswith(s.meta["question"])
    ctx = content[: len(content) - len(s.meta["question"])]
    parts = re.split(r"^\[Document \d+\] (.*)$", ctx, flags=re.M)
    return {t: x.strip("\n") for t, x in zip(parts[1::2], parts[2::2])}, ctx


def recount(word: str, text: str) -> int:
    # Independent of data.WORD: a case-insensitive \b-delimited search for this one word.
    return len(re.findall(rf"\b{re.escape(word)}\b", text, flags=re.I))


def check_built(s: Sample):
    """Recompute the gold answer from the prompt text alone."""
    docs, ctx = split_prompt(s)
    q = s.meta["question"]
    word = re.search(r'the word "([A-Za-z]+)"', q)
    word = word and word.group(1)
    titled = re.search(r'titled "(.*?)"[,?]', q)
    if s.task == "precise_retrieval":
        quote = re.search(r'\n"(.*)"\n', q).group(1)
        assert ctx.count(quote) == 1 and re.search(re.escape(quote) + r"\s+" + re.escape(s.answer), docs[titled.group(1)])
    elif s.task == "comprehension":
        options = dict(re.findall(r"^\(([A-D])\) (.*)$", q, flags=re.M))
        assert len(options) == 4 and options[s.answer] in docs[titled.group(1)]
        assert not any(o in docs[titled.group(1)] for k, o in options.items() if k != s.answer)
    elif s.task == "exhaustive_retrieval":
        assert s.answer == [t for t, x in docs.items() if recount(word, x)] and 2 <= len(s.answer) < len(docs)
    elif s.task == "numerical_reasoning":
        text = docs[titled.group(1)] if titled else ctx
        assert int(s.answer) == recount(word, text) > 0
    elif s.task == "structured_extraction":
        assert s.answer == [[t, recount(word, x)] for t, x in docs.items() if recount(word, x)]
    elif s.task == "structured_matching":
        quotes = re.findall(r'^(\d+)\. "(.*)"$', q, flags=re.M)
        assert len(quotes) == len(s.answer) >= 2
        for (k, quote), gold in zip(quotes, s.answer):
            num, title = gold.split(": ", 1)
            assert num == k and ctx.count(quote) == 1 and quote in docs[title]
    elif s.task == "graded_ranking":
        n = [recount(word, docs[t]) for t in s.answer]
        assert n == sorted(n, reverse=True) and len(set(n)) == len(n) >= 2 and min(n) > 0
        assert set(s.answer) == {t for t, x in docs.items() if recount(word, x)}
    elif s.task == "sequence_ordering":
        quotes = dict(re.findall(r'^(S\d+): "(.*)"$', q, flags=re.M))
        pos = [ctx.find(quotes[label]) for label in s.answer]
        assert sorted(quotes) == sorted(s.answer) and min(pos) >= 0 and pos == sorted(pos)
    elif s.task == "summarization":
        title = re.search(r'Document "(.*)" is Python source', q).group(1)
        assert title in docs and len(docs[title]) > len(s.answer) / 2
        squashed = " ".join(ctx.lower().split())
        assert " ".join(s.answer.lower().split())[:60] not in squashed  # the reference is not in the context


@pytest.mark.parametrize("corpus", ["built_default", "built_second"])
def test_built_tasks_are_right_and_fit(corpus, request, qwen_tokenizer):
    samples = request.getfixturevalue(corpus)
    assert [s.task for s in samples] == [t for t in data.TASK_NAMES for _ in range(3)]
    for s in samples:
        check_built(s)
        assert rewards.score(s.task, perfect(s.task, s.answer), s.answer) == 1.0, s.id
        assert rewards.score(s.task, near_miss(s.task, s.answer), s.answer) < 1.0, s.id
        n = len(data.chat_ids(qwen_tokenizer, s.prompt))
        assert n == s.meta["prompt_tokens"] <= 1024
        assert len(split_prompt(s)[0]) >= 2
    assert len({s.prompt[0]["content"] for s in samples}) == len(samples)


def test_build_is_deterministic_and_seed_dependent(qwen_tokenizer, built_default):
    docs = data.load_documents()
    again = data.build_tasks(docs, qwen_tokenizer, 3, 1024, seed=0)
    assert again == built_default
    other = data.build_tasks(docs, qwen_tokenizer, 3, 1024, seed=1)
    assert sum(a.prompt != b.prompt for a, b in zip(other, built_default)) >= 25


def test_build_longer_context_packs_more_documents(qwen_tokenizer):
    docs = data.load_documents()
    samples = data.build_tasks(docs, qwen_tokenizer, 1, 8192, seed=3)
    for s in samples:
        check_built(s)
        assert 4096 < s.meta["prompt_tokens"] <= 8192 and len(s.meta["documents"]) >= 5
    with pytest.raises(RuntimeError, match="no code to summarize fits"):
        data.build_tasks(docs, qwen_tokenizer, 1, 100, seed=0, tasks=["summarization"])
    with pytest.raises(RuntimeError, match="could not build a sequence_ordering task"):
        data.build_tasks(docs, qwen_tokenizer, 1, 100, seed=0, tasks=["sequence_ordering"])


def test_cli_build_writes_loadable_file(tmp_path, qwen_tokenizer, second_corpus, capsys):
    from conftest import CACHE
    out = tmp_path / "tasks.jsonl"
    data.main(["build", "--out", str(out), "--context-tokens", "768", "--n-per-task", "2", "--seed", "5",
               "--docs", str(second_corpus), "--tokenizer", str(CACHE / "qwen-tokenizer")])
    samples = data.load_jsonl(out)
    assert [s.task for s in samples] == [t for t in data.TASK_NAMES for _ in range(2)]
    assert all(s.meta["prompt_tokens"] <= 768 for s in samples)
    assert "wrote 18 samples" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# Difficulty filtering

def test_pass_rates_and_band():
    assert data.pass_rate([1, 0, 1, 1]) == 0.75 and data.pass_rate([0.4, 0.6], threshold=0.5) == 0.5
    assert data.keep_by_pass_rate([0.0, 0.25, 1.0, 0.5], 0.0, 1.0) == [False, True, False, True]
    assert data.keep_by_pass_rate([0.1, 0.3, 0.7], 0.2, 0.7) == [False, True, False]
    samples = [Sample(str(i), "precise_retrieval", [], "x", "EM") for i in range(4)]
    kept, counts = data.filter_by_difficulty(samples, [0.0, 0.5, 1.0, 0.125])
    assert [s.id for s in kept] == ["1", "3"] and kept[0].meta["pass_rate"] == 0.5
    assert counts == {"kept": 2, "too_easy": 1, "too_hard": 1}
    with pytest.raises(ValueError):
        data.filter_by_difficulty(samples, [0.5])


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, qwen_tokenizer):
    """A tiny random Qwen3 with the real tokenizer, saved like any Hugging Face model folder."""
    from conftest import tiny_qwen3
    path = tmp_path_factory.mktemp("tiny-qwen3")
    tiny_qwen3().save_pretrained(path)
    qwen_tokenizer.save_pretrained(path)
    return path


def test_measure_pass_rates_with_a_tiny_model(tiny_model_dir, built_default):
    pytest.importorskip("rollout")
    samples = [built_default[0], built_default[12]]
    # 4 random tokens never reproduce a gold answer: pass rate 0. With threshold 0 every reward passes.
    assert data.measure_pass_rates(samples, str(tiny_model_dir), n=2, max_new_tokens=4) == [0.0, 0.0]
    assert data.measure_pass_rates(samples, str(tiny_model_dir), n=2, max_new_tokens=4, threshold=0.0) == [1.0, 1.0]


def test_cli_build_with_difficulty_filter(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("rollout")
    out = tmp_path / "f.jsonl"
    base = ["build", "--out", str(out), "--context-tokens", "512", "--n-per-task", "1", "--tokenizer",
            str(tiny_model_dir), "--filter-with", str(tiny_model_dir), "--filter-n", "2", "--filter-max-new-tokens", "2"]
    data.main(base)  # the default band (0, 1) drops all: a random model solves nothing
    assert data.load_jsonl(out) == [] and "'too_hard': 9" in capsys.readouterr().out
    data.main(base + ["--filter-low", "-1", "--filter-high", "2", "--filter-threshold", "0.5"])  # keep all
    kept = data.load_jsonl(out)
    assert len(kept) == 9 and all(s.meta["pass_rate"] == 0.0 for s in kept)


# -----------------------------------------------------------------------------
# Batches for training

def toy(n, tasks=data.TASK_NAMES):
    return [Sample(f"s{i}", tasks[i % len(tasks)], [], "x", "EM") for i in range(n)]


def test_rank_shares_are_disjoint_and_cover_the_batch():
    samples = toy(50)
    world = 4
    shards = [PromptBatches(samples, 8, rank=r, world_size=world, seed=7) for r in range(world)]
    ref = PromptBatches(samples, 8, seed=7)
    for _ in range(20):  # crosses two epoch ends (50 // 8 = 6 batches per epoch)
        parts = [[s.id for s in b.next_batch()] for b in shards]
        whole = [s.id for s in ref.next_batch()]
        assert all(len(p) == 2 for p in parts)
        assert sorted(sum(parts, [])) == sorted(whole) and len(set(whole)) == 8
    assert ref.epoch == 3


def test_epoch_order_depends_on_seed_and_epoch():
    samples = toy(24)
    b = PromptBatches(samples, 8, seed=1)
    epochs = [[s.id for _ in range(3) for s in b.next_batch()] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(s.id for s in samples)  # each once per epoch
    assert epochs[0] != epochs[1]
    c = PromptBatches(samples, 8, seed=2)
    assert [s.id for _ in range(3) for s in c.next_batch()] != epochs[0]
    again = PromptBatches(samples, 8, seed=1)
    assert [s.id for _ in range(3) for s in again.next_batch()] == epochs[0]


@pytest.mark.parametrize("balanced", [False, True])
def test_resume_gives_the_same_sequence(balanced):
    samples = toy(100)
    run = PromptBatches(samples, 18, rank=1, world_size=2, seed=3, balanced=balanced)
    first = [[s.id for s in run.next_batch()] for _ in range(7)]
    state = json.loads(json.dumps(run.state_dict()))  # survives a checkpoint file
    rest = [[s.id for s in run.next_batch()] for _ in range(9)]
    resumed = PromptBatches(samples, 18, rank=1, world_size=2, seed=3, balanced=balanced)
    resumed.load_state_dict(state)
    assert [[s.id for s in resumed.next_batch()] for _ in range(9)] == rest
    fresh = PromptBatches(samples, 18, rank=1, world_size=2, seed=3, balanced=balanced)
    assert [[s.id for s in fresh.next_batch()] for _ in range(16)] == first + rest
    with pytest.raises(ValueError, match="seed"):
        PromptBatches(samples, 18, seed=4, balanced=balanced).load_state_dict(state)


def test_balanced_batches_have_equal_task_counts():
    rng = random.Random(0)
    samples = [Sample(f"s{i}", rng.choice(data.TASK_NAMES[:3] * 5 + data.TASK_NAMES[3:]), [], "x", "EM")
               for i in range(400)]  # three tasks are much more common than the others
    b = PromptBatches(samples, 18, seed=0, balanced=True)
    for _ in range(30):
        counts = {t: 0 for t in data.TASK_NAMES}
        ids = b.next_global()
        for i in ids:
            counts[samples[i].task] += 1
        assert set(counts.values()) == {2} and len(set(ids)) == 18
    b = PromptBatches(samples, 20, seed=0, balanced=True)  # 20 = 9 * 2 + 2: the two extras rotate
    totals = {t: 0 for t in data.TASK_NAMES}
    for _ in range(9):
        for i in b.next_global():
            totals[samples[i].task] += 1
    assert set(totals.values()) == {20}


def test_batch_errors():
    with pytest.raises(ValueError, match="divisible"):
        PromptBatches(toy(20), 6, rank=0, world_size=4)
    with pytest.raises(ValueError, match="at least"):
        PromptBatches(toy(5), 8)
    with pytest.raises(ValueError, match="at least"):
        PromptBatches(toy(20, tasks=("comprehension", "summarization")) + toy(1, tasks=("graded_ranking",)), 6,
                      balanced=True)
