"""Tests for tasks.py: documents, built tasks (right by construction, within budget, deterministic),
the difficulty filter and the build command line.

    python -m pytest -q test_tasks.py

Built tasks are checked against independent recomputations from the prompt text itself (regex counts,
substring positions), and every gold answer is scored with the real rewards.score. The second corpus
is written by the tests from docstrings of standard-library modules (read as text with `ast`, so it
exists on every Python, needs no download and no apt), as a Markdown file with headings, a gzipped
.txt without headings, and a file that load_documents must skip.
"""

import ast
import gzip
import json
import re
import sysconfig
from pathlib import Path

import pytest

import data
import rewards
import tasks
from data import Sample
from test_data import near_miss, perfect, released_records, write_jsonl

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
    docs = tasks.load_documents()
    assert len(docs) > 50 and docs == tasks.load_documents()
    assert len({d.title.lower() for d in docs}) == len(docs) and all(d.text.strip() for d in docs)
    assert len({d.text for d in docs}) == len(docs)  # repeated sections are dropped (and logged)
    with caplog.at_level("WARNING", logger="tasks"):
        docs2 = tasks.load_documents([second_corpus], max_chars=3000)
    assert "skipped 1 files" in caplog.text
    titles = [d.title for d in docs2]
    assert "LogRecord" in titles and "stdlib_a" not in titles  # headings are titles; empty preamble dropped
    assert any(t.startswith("stdlib_b (part ") for t in titles)  # no headings: split by size
    assert all(len(d.text) <= 3000 for d in docs2) and len(set(titles)) == len(titles)
    with pytest.raises(ValueError, match="image.png"):
        tasks.load_documents([second_corpus / "sub" / "image.png"])


def test_split_sections_headings_and_reflow():
    text = ("Intro line one\nwraps here.\n\nTitle A\n=======\n\nBody a is\nwrapped.\n\n   code()\n   more()\n\n"
            "# Title B\n\nBody b.\n\n```\n# not a heading\n```\n")
    docs = tasks.split_sections(text, "file")
    assert [d.title for d in docs] == ["file", "Title A", "Title B"]
    assert docs[0].text == "Intro line one wraps here."
    assert docs[1].text == "Body a is wrapped.\n\n   code()\n   more()"
    assert "# not a heading" in docs[2].text
    paras = ["a" * 50] * 5 + ["b" * 300, "c" * 20]  # no headings; one paragraph longer than max_chars
    parts = tasks.split_sections("\n\n".join(paras), "f", max_chars=120)
    assert [d.title for d in parts] == [f"f (part {k})" for k in range(1, 7)]
    assert all(len(d.text) <= 120 for d in parts)
    assert "".join(d.text for d in parts).replace("\n", "") == "".join(paras)  # nothing lost


# -----------------------------------------------------------------------------
# Built tasks: right by construction, within budget, deterministic

@pytest.fixture(scope="module")
def built_default(qwen_tokenizer):
    return tasks.build_tasks(tasks.load_documents(), qwen_tokenizer, 3, 1024, seed=0)


@pytest.fixture(scope="module")
def built_second(qwen_tokenizer, second_corpus):
    return tasks.build_tasks(tasks.load_documents([second_corpus]), qwen_tokenizer, 3, 1024, seed=0)


def split_prompt(s: Sample) -> tuple[dict, str]:
    """{title: text} of the documents in a built prompt, and the documents' text as one string."""
    content = s.prompt[0]["content"]
    assert content.endswith(s.meta["question"])
    ctx = content[: len(content) - len(s.meta["question"])]
    parts = re.split(r"^\[Document \d+\] (.*)$", ctx, flags=re.M)
    return {t: x.strip("\n") for t, x in zip(parts[1::2], parts[2::2])}, ctx


def recount(word: str, text: str) -> int:
    # Independent of tasks.WORD: a case-insensitive \b-delimited search for this one word.
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
    docs = tasks.load_documents()
    again = tasks.build_tasks(docs, qwen_tokenizer, 3, 1024, seed=0)
    assert again == built_default
    other = tasks.build_tasks(docs, qwen_tokenizer, 3, 1024, seed=1)
    assert sum(a.prompt != b.prompt for a, b in zip(other, built_default)) >= 25


def test_build_longer_context_packs_more_documents(qwen_tokenizer):
    docs = tasks.load_documents()
    samples = tasks.build_tasks(docs, qwen_tokenizer, 1, 8192, seed=3)
    for s in samples:
        check_built(s)
        assert 4096 < s.meta["prompt_tokens"] <= 8192 and len(s.meta["documents"]) >= 5
    with pytest.raises(RuntimeError, match="no code to summarize fits"):
        tasks.build_tasks(docs, qwen_tokenizer, 1, 100, seed=0, tasks=["summarization"])
    with pytest.raises(RuntimeError, match="could not build a sequence_ordering task"):
        tasks.build_tasks(docs, qwen_tokenizer, 1, 100, seed=0, tasks=["sequence_ordering"])


def test_cli_build_writes_loadable_file(tmp_path, qwen_tokenizer, second_corpus, capsys):
    from conftest import CACHE
    out = tmp_path / "tasks.jsonl"
    tasks.main(["build", "--out", str(out), "--context-tokens", "768", "--n-per-task", "2", "--seed", "5",
               "--docs", str(second_corpus), "--tokenizer", str(CACHE / "qwen-tokenizer")])
    samples = data.load_jsonl(out)
    assert [s.task for s in samples] == [t for t in data.TASK_NAMES for _ in range(2)]
    assert all(s.meta["prompt_tokens"] <= 768 for s in samples)
    assert "wrote 18 samples" in capsys.readouterr().out



def test_cli_build_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        tasks.main(["build", "--help"])
    text = " ".join(capsys.readouterr().out.split()).split(" options: ", 1)[1]  # unwrapped, after usage
    build = tasks.make_parser()._subparsers._group_actions[0].choices["build"]
    options = [a for a in build._actions if a.option_strings != ["-h", "--help"]]
    assert len(options) == 12
    for a in options:
        if a.required:
            continue
        shown = f"(default: {a.default})" if a.default is not None else "default: "  # None: says what then
        assert shown in text.split(a.option_strings[0] + " ", 1)[1].split(" --", 1)[0], a.option_strings

# -----------------------------------------------------------------------------
# Difficulty filtering

def test_solve_rates_and_band():
    assert tasks.solve_rate([1, 0, 1, 1]) == 0.75 and tasks.solve_rate([0.4, 0.6], threshold=0.5) == 0.5
    assert tasks.keep_by_solve_rate([0.0, 0.25, 1.0, 0.5], 0.0, 1.0) == [False, True, False, True]
    assert tasks.keep_by_solve_rate([0.1, 0.3, 0.7], 0.2, 0.7) == [False, True, False]
    samples = [Sample(str(i), "precise_retrieval", [], "x", "EM") for i in range(4)]
    kept, counts = tasks.filter_by_difficulty(samples, [0.0, 0.5, 1.0, 0.125])
    assert [s.id for s in kept] == ["1", "3"] and kept[0].meta["solve_rate"] == 0.5
    assert counts == {"kept": 2, "too_easy": 1, "too_hard": 1}
    with pytest.raises(ValueError):
        tasks.filter_by_difficulty(samples, [0.5])


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, qwen_tokenizer):
    """A tiny random Qwen3 with the real tokenizer, saved like any Hugging Face model folder."""
    from conftest import tiny_qwen3
    path = tmp_path_factory.mktemp("tiny-qwen3")
    tiny_qwen3().save_pretrained(path)
    qwen_tokenizer.save_pretrained(path)
    return path


def test_measure_solve_rates_with_a_tiny_model(tiny_model_dir, built_default):
    pytest.importorskip("rollout")
    samples = [built_default[0], built_default[12]]
    # 4 random tokens never reproduce a gold answer: solve rate 0. With threshold 0 every reward passes.
    assert tasks.measure_solve_rates(samples, str(tiny_model_dir), n=2, max_new_tokens=4) == [0.0, 0.0]
    assert tasks.measure_solve_rates(samples, str(tiny_model_dir), n=2, max_new_tokens=4, threshold=0.0) == [1.0, 1.0]


def test_measure_rewards_gives_each_prompt_its_n_rewards_reproducibly(tiny_model_dir, built_default):
    pytest.importorskip("rollout")
    samples = [built_default[0], built_default[12], built_default[24]]
    got = tasks.measure_rewards(samples, str(tiny_model_dir), n=3, max_new_tokens=4, temperature=0.6, seed=5,
                                prompts_per_call=2)  # 2 calls: the second chunk's rows map back to prompt 3
    assert [len(r) for r in got] == [3, 3, 3] and all(0.0 <= x <= 1.0 for r in got for x in r)
    assert got == tasks.measure_rewards(samples, str(tiny_model_dir), n=3, max_new_tokens=4, temperature=0.6,
                                        seed=5, prompts_per_call=2)



def test_filter_stops_on_the_training_eos_ids(tiny_model_dir, built_default, monkeypatch):
    """The filter's responses end where training's do: policy.eos_token_ids, which for the Qwen
    tokenizer holds <|endoftext|> as well as the tokenizer's own EOS <|im_end|>."""
    rollout = pytest.importorskip("rollout")
    import policy
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    want = policy.eos_token_ids(tok, AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    assert len(want) > 1 and tok.eos_token_id in want  # more than [tok.eos_token_id]: the test can fail
    seen, generate = [], rollout.generate
    monkeypatch.setattr(rollout, "generate", lambda *a, **k: seen.append(k["eos_token_ids"]) or generate(*a, **k))
    tasks.measure_solve_rates(built_default[:1], str(tiny_model_dir), n=2, max_new_tokens=2)
    assert seen == [want]

def test_cli_build_with_difficulty_filter(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("rollout")
    out = tmp_path / "f.jsonl"
    base = ["build", "--out", str(out), "--context-tokens", "512", "--n-per-task", "1", "--tokenizer",
            str(tiny_model_dir), "--filter-with", str(tiny_model_dir), "--filter-n", "2", "--filter-max-new-tokens", "2"]
    tasks.main(base)  # the default band (0, 1) drops all: a random model solves nothing
    assert data.load_jsonl(out) == [] and "'too_hard': 9" in capsys.readouterr().out
    tasks.main(base + ["--filter-low", "-1", "--filter-high", "2", "--filter-threshold", "0.5"])  # keep all
    kept = data.load_jsonl(out)
    assert len(kept) == 9 and all(s.meta["solve_rate"] == 0.0 for s in kept)


def test_round_trip_released_and_built(tmp_path, built_default):
    samples = data.load_jsonl(write_jsonl(tmp_path / "r.jsonl", released_records()))
    data.save_jsonl(samples + built_default, tmp_path / "out.jsonl")
    again = data.load_jsonl(tmp_path / "out.jsonl")
    assert again == samples + built_default
    rec = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[-1])
    assert rec["data_source"] == data.BUILD_SOURCE and rec["extra_info"]["task"] == built_default[-1].task
