"""Tasks of all nine GoLongRL types built from real documents, and the difficulty filter
(arXiv 2605.19577). Writes the released JSONL format, which data.py reads for training.

    python tasks.py build --out tasks.jsonl --context-tokens 1024              # built-in docs, seconds
    python tasks.py build --out t.jsonl --context-tokens 32768 --docs books/ --tokenizer PATH_OR_ID
    python tasks.py build --out hard.jsonl --context-tokens 2048 --filter-with PATH_OR_ID --filter-n 8

    import tasks
    samples = tasks.build_tasks(tasks.load_documents(), tokenizer, n_per_task=8, context_tokens=1024, seed=0)

The paper builds its ~23K samples in four phases: a capability taxonomy, sources
(curated long-context sets plus real books, papers and dialogues), QA pairs written by models on the
real documents and cross-checked, then difficulty labelling by pass rate (solve_rate here). We keep
the taxonomy (the nine task types of rewards.REWARDS) and phase 4, and replace model-written QA with
questions whose answers are *computed* from the text (which sentence follows a quote, who mentions a
word how often, in what order sentences appear), so every gold answer is correct by construction and
the whole pipeline runs offline on any documents. Summarization needs a reference written by a person that is
not in the context: we use the docstrings of Python's own standard library as summaries of their code
with the docstring removed. The built-in documents are the Python language reference topics that ship
with every Python (`pydoc_data.topics`), so nothing is downloaded.
"""

import argparse
import ast
import dataclasses
import gzip
import logging
import random
import re
import sysconfig
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import rewards
from data import BUILD_SOURCE, TASK_NAMES, Sample, chat_ids, save_jsonl

log = logging.getLogger("tasks")


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
# Packing: real documents up to a token budget, relevant passages at random depths

# Token budgets. Counts of passages and headers are estimates (each piece tokenized alone); the final
# prompt is counted exactly with chat_ids and redrawn smaller when an estimate was short.
QUESTION_RESERVE = 256  # tokens kept free for the question (quotes included), at most 1/4 of the context
SLACK = 16              # tokens of margin: on the template's count, and the extra cut after a short estimate
HEADER_TOKENS = 16      # "[Document i] title" of the summarized code (pool documents count their own)
MIN_PASSAGE = 48        # tokens: packing stops when less room is left; the shortest code to summarize
MAX_MISSES = 50         # consecutive draws that add nothing before packing stops (pool used up, room too small)
MAX_TRIES = 60          # contexts drawn for one sample before build_tasks gives up
CODE_SHARE = 0.6        # the code to summarize takes at most this share of the documents' room
# The smallest context every task type fits in: below it two documents and a question leave no room
# (measured on the built-in documents with SmolLM2's and Qwen's tokenizers: 384 already fails graded
# ranking); train.py and `tasks.py build` refuse less at start instead of failing in the builder.
MIN_CONTEXT_TOKENS = 400

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
    heads = [f"[Document 10] {d.title}" for d in documents]  # a two-digit number: rarely an underestimate
    lens = iter(_ntokens(tokenizer, heads + [p for ps in paras for p in ps]))
    title_tok = [next(lens) + 2 for _ in documents]  # + 2: the newlines around the header
    return [_PoolDoc(d.title, t, ps, [next(lens) for _ in ps]) for d, t, ps in zip(documents, title_tok, paras)]


def _excerpt(d: _PoolDoc, budget: int, rng: random.Random) -> Optional[tuple[str, int]]:
    """A run of consecutive paragraphs of d within `budget` tokens, from a random start."""
    if budget <= 0 or not d.paras:
        return None
    whole = sum(d.ntok) + len(d.ntok)  # + 1 token per paragraph for the blank line that joins them
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
    or picked later from the packed set) sit at random depths. Titles differ ignoring case.
    forced: [(title, text, tokens)] passages that must be in (the code to summarize)."""
    chosen = [(t, x) for t, x, _ in forced]
    used = {t.lower() for t, _, _ in forced}
    left = budget - sum(n for _, _, n in forced)
    per = max(64, budget // 4)  # ~4+ passages per prompt at short contexts, whole documents at long ones
    misses = 0
    while left >= MIN_PASSAGE and misses < MAX_MISSES:
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
    return "\n\n".join(f"[Document {i}] {t}\n{x}" for i, (t, x) in enumerate(docs, 1))  # data.DOC_HEADER


def render_prompt(docs: list[tuple[str, str]], question: str) -> str:
    head = f"Read the {len(docs)} documents below and answer the question after them."
    return f"{head}\n\n{render_documents(docs)}\n\n{question}"


# -----------------------------------------------------------------------------
# The nine task makers: ask what the packed text itself answers

@dataclass(frozen=True)
class Context:
    """What every task maker gets: the packed passages and their text as the prompt shows it."""
    docs: list                          # [(title, text)] in prompt order
    text: str                           # render_documents(docs): what the makers search and count in
    code: Optional[CodeSummary] = None  # summarization only: the code packed into docs (its docstring removed)


def _sentences(text: str) -> list[list[str]]:
    """Sentences of each prose paragraph (code blocks and lists skipped)."""
    return [SENT_SPLIT.split(p) for p in text.split("\n\n") if p and not LIST_START.match(p) and "\n" not in p]


def _good(s: str) -> bool:
    # A quotable sentence: a full sentence of moderate length, not ending in an abbreviation.
    return (30 <= len(s) <= 200 and s[-1] in ".!?" and len(s.split()) >= 5
            and not re.search(r"\b(e\.g|i\.e|etc|vs|cf)\.$", s))


def _unique_sentences(c: Context) -> list[tuple[int, str]]:
    """(document index, sentence) for every good sentence that occurs exactly once in the context."""
    return [(i, s) for i, (_, x) in enumerate(c.docs) for p in _sentences(x) for s in p
            if _good(s) and c.text.count(s) == 1]


def _word_counts(c: Context) -> tuple[list[Counter], list[str]]:
    """Per-document counts of each word (case-folded, standalone: WORD), and the words a question may
    ask about: 4+ letters and in no title (so headers never change a count). Sorted, not in set order,
    so the same seed gives the same task in every process."""
    counts = [Counter(w.lower() for w in WORD.findall(x)) for _, x in c.docs]
    title_words = {w.lower() for t, _ in c.docs for w in WORD.findall(t)}
    return counts, sorted({w for n in counts for w in n if len(w) >= 4 and w not in title_words})


# Each maker takes (context, rng) and returns (question, gold answer), or None when this context cannot
# support the task (build_tasks then packs another). Each question states the output format its reward
# reads. Word questions count WORD matches (runs of ASCII letters, case-folded), words of 4+ letters
# that appear in no title; quotes are sentences that occur exactly once in the context.
WORD_RULE = "Count standalone occurrences in any letter case, not parts of longer words"
LIST_FORMAT = 'Write "[Answer]" and then one {} per line, nothing else.'


def make_precise_retrieval(c: Context, rng: random.Random):
    """EM: quote a sentence, ask for the one right after it (the quote occurs once in the context)."""
    cands = [(t, p[i], p[i + 1]) for t, x in c.docs for p in _sentences(x) for i in range(len(p) - 1)
             if _good(p[i]) and _good(p[i + 1])]
    rng.shuffle(cands)
    for t, a, b in cands:
        if c.text.count(a) == 1:  # the quoted sentence must pin down one place in the context
            return (f'Question: In the document titled "{t}", which sentence comes right after this one?\n'
                    f'"{a}"\nReply with that sentence only, copied exactly.'), b
    return None


def make_comprehension(c: Context, rng: random.Random):
    """Multiple choice: which of four sentences (all from the context) is in document T."""
    sents = _unique_sentences(c)
    target = rng.choice(sents)[0] if sents else 0
    gold = [s for i, s in sents if i == target]
    others = [s for i, s in sents if i != target]
    if not gold or len(others) < 3:
        return None
    options = [rng.choice(gold)] + rng.sample(others, 3)
    order = rng.sample(range(4), 4)  # order[k] is shown as letter k; options[0] is the right one
    lines = "\n".join(f"({'ABCD'[k]}) {options[j]}" for k, j in enumerate(order))
    question = (f'Question: Which of these sentences appears in the document titled "{c.docs[target][0]}"?\n'
                f'{lines}\nEnd your reply with "The correct answer is (X)", where X is the letter.')
    return question, "ABCD"[order.index(0)]


def make_exhaustive_retrieval(c: Context, rng: random.Random):
    """F1: every document that mentions a word (in some but not all documents)."""
    counts, words = _word_counts(c)
    cands = [w for w in words if 2 <= sum(n[w] > 0 for n in counts) <= max(2, len(c.docs) - 1)]
    if not cands:
        return None
    w = rng.choice(cands)
    gold = [t for (t, _), n in zip(c.docs, counts) if n[w]]
    return (f'Question: List the title of every document whose text contains the word "{w}". '
            f'{WORD_RULE}.\n{LIST_FORMAT.format("title")}'), gold


def make_numerical_reasoning(c: Context, rng: random.Random):
    """Math: how often a word occurs, in one document (2-20 times) or over all of them (at most 40)."""
    counts, words = _word_counts(c)
    if rng.random() < 0.5:  # one document
        cands = [(i, w) for w in words for i, n in enumerate(counts) if 2 <= n[w] <= 20]
        if not cands:
            return None
        i, w = rng.choice(cands)
        where, total = f'the document titled "{c.docs[i][0]}"', counts[i][w]
    else:  # all documents together: the count is spread over the context
        cands = [w for w in words if sum(n[w] > 0 for n in counts) >= 2 and sum(n[w] for n in counts) <= 40]
        if not cands:
            return None
        w = rng.choice(cands)
        where, total = "all the documents together", sum(n[w] for n in counts)
    return (f'Question: How many times does the word "{w}" occur in {where}? {WORD_RULE}. '
            f'Give the final number in \\boxed{{}}.'), str(total)


def make_structured_extraction(c: Context, rng: random.Random):
    """IoU: a JSON table, one row [title, count] per document that mentions a word."""
    counts, words = _word_counts(c)
    cands = [w for w in words if sum(n[w] > 0 for n in counts) >= 2]
    if not cands:
        return None
    w = rng.choice(cands)
    rows = [[t, n[w]] for (t, _), n in zip(c.docs, counts) if n[w]]
    return (f'Question: Make a table with one row for each document that contains the word "{w}": the '
            f'document title and how many times the word occurs in it. {WORD_RULE}. Reply with '
            f'<answer>{{"data": [["title", count], ...]}}</answer>.'), rows


def make_structured_matching(c: Context, rng: random.Random):
    """SubEM: match up to four quotes (from different documents) to their document titles."""
    by_doc: dict = {}
    for i, s in _unique_sentences(c):
        by_doc.setdefault(i, []).append(s)
    if len(by_doc) < 2:
        return None
    picks = [(i, rng.choice(by_doc[i])) for i in rng.sample(sorted(by_doc), min(4, len(by_doc)))]
    quotes = "\n".join(f'{k}. "{s}"' for k, (_, s) in enumerate(picks, 1))
    return ('Question: Each quote below comes from one of the documents. For each quote write a line '
            f'"NUMBER: TITLE" with the title of its document.\n{quotes}\n{LIST_FORMAT.format("such line")}'), \
        [f"{k}: {c.docs[i][0]}" for k, (i, _) in enumerate(picks, 1)]


def make_graded_ranking(c: Context, rng: random.Random):
    """NDCG: rank the documents that mention a word by how often, counts all different (no ties)."""
    counts, words = _word_counts(c)
    cands = {2: [], 3: []}  # words by how many documents contain them (3 = three or more)
    for w in words:
        have = [n[w] for n in counts if n[w]]
        if len(have) >= 2 and len(set(have)) == len(have):  # no ties: one right order
            cands[min(3, len(have))].append(w)
    if not cands[3] and (not cands[2] or rng.random() < 0.75):
        return None  # prefer a new context with a longer ranking; short contexts may only allow two
    w = rng.choice(cands[3] or cands[2])
    ranked = sorted((-n[w], k) for k, n in enumerate(counts) if n[w])
    return (f'Question: Rank the documents that contain the word "{w}" from the most to the fewest '
            f'occurrences of it. {WORD_RULE}.\n{LIST_FORMAT.format("title")}'), [c.docs[k][0] for _, k in ranked]


def make_sequence_ordering(c: Context, rng: random.Random):
    """Pairwise: put three to five shuffled quotes back in the order they appear in the context."""
    sents = [s for _, s in _unique_sentences(c)]
    k = min(5, len(sents))
    if k < 3:
        return None
    picked = sorted(rng.sample(sents, k), key=c.text.find)  # context order
    shown = picked[:]
    while shown == picked:
        rng.shuffle(shown)
    labels = {s: f"S{j}" for j, s in enumerate(shown, 1)}
    lines = "\n".join(f'{labels[s]}: "{s}"' for s in shown)
    return ('Question: The sentences below are quoted from the documents above, in random order. List '
            f'their labels in the order the sentences appear in the documents, first to last.\n{lines}\n'
            f'{LIST_FORMAT.format("label")}'), [labels[s] for s in picked]


def make_summarization(c: Context, rng: random.Random):
    """ROUGE-L: write the removed docstring of a standard-library function, class or module (c.code)."""
    # The reference must not be readable in the context (e.g. copied into a comment or another docstring).
    squash = " ".join(c.text.lower().split())
    if any(len(s) > 25 and " ".join(s.lower().split()) in squash for s in SENT_SPLIT.split(c.code.summary)):
        return None
    return (f'Question: Document "{c.code.title}" is Python source code whose docstring was removed. Write '
            'that docstring: one to four sentences that summarize what the code does.'), c.code.summary


# task -> its maker: make_<task> above, for every task of rewards.REWARDS that has one. A new reward
# needs no row here: its maker is found by name, and without one it trains from JSONL data only.
MAKERS = {task: globals()[f"make_{task}"] for task in TASK_NAMES if f"make_{task}" in globals()}


# -----------------------------------------------------------------------------
# Building: draw contexts until a maker can ask its question within the token limit

def _draw_code(code: Sequence[CodeSummary], code_tok: list, budget: int, rng: random.Random,
               context_tokens: int) -> tuple[CodeSummary, int]:
    """Summarization: a (code, docstring) pair whose code fits in CODE_SHARE of the documents' room,
    and the code's token count."""
    fits = [k for k, n in enumerate(code_tok) if MIN_PASSAGE <= n <= CODE_SHARE * budget]
    if not fits:
        raise RuntimeError(f"no code to summarize fits in context_tokens={context_tokens}")
    k = rng.choice(fits)
    return code[k], code_tok[k]


def _build_one(task: str, i: int, seed: int | str, pool: list, tokenizer, context_tokens: int, overhead: int,
               code: Sequence[CodeSummary], code_tok: list) -> Sample:
    """Sample i of `task`: draw a context, ask, count the templated prompt; redraw (smaller when the
    token estimate was short) up to MAX_TRIES times."""
    rng = random.Random(f"{seed}:{task}:{i}")  # str seeds hash with sha512: same in every process
    budget = context_tokens - overhead - min(QUESTION_RESERVE, context_tokens // 4)
    for _ in range(MAX_TRIES):
        pair, forced = None, ()
        if task == "summarization":  # the code to summarize is packed first, at a random depth
            pair, n_code = _draw_code(code, code_tok, budget, rng, context_tokens)
            forced = [(pair.title, pair.code, n_code + HEADER_TOKENS)]
        docs = _pack(pool, budget, rng, forced)
        made = MAKERS[task](Context(docs, render_documents(docs), pair), rng)
        if len(docs) < 2 or made is None:
            continue
        question, answer = made
        prompt = [{"role": "user", "content": render_prompt(docs, question)}]
        n = len(chat_ids(tokenizer, prompt))
        if n > context_tokens:  # our estimate was short: shrink the documents and draw again
            budget -= n - context_tokens + SLACK
            continue
        meta = {"question": question, "prompt_tokens": n, "documents": [t for t, _ in docs]}
        return Sample(f"{task}-{seed}-{i}", task, prompt, answer, BUILD_SOURCE, meta)
    raise RuntimeError(f"could not build a {task} task (context_tokens={context_tokens}) in {MAX_TRIES} "
                       "tries: give more or longer documents, or a larger context")


def build_tasks(documents: Sequence[Document], tokenizer, n_per_task: int, context_tokens: int, seed: int | str, *,
                tasks: Sequence[str] = tuple(MAKERS), code: Optional[Sequence[CodeSummary]] = None) -> list[Sample]:
    """n_per_task samples of each task type. Every templated prompt has at most context_tokens tokens
    (checked with `tokenizer`); every answer is computed from the packed context itself. Sample i of a
    task depends only on (seed, task, i) and the inputs; its id is "<task>-<seed>-<i>". A string seed
    draws a set of its own (train.py's held-out tasks). `code`: summarization pairs (default: the
    standard library's, load_code_summaries())."""
    if len(documents) < 2:
        raise ValueError("build_tasks needs at least 2 documents")
    pool = _pool(documents, tokenizer)
    overhead = len(chat_ids(tokenizer, [{"role": "user", "content": "x"}])) + SLACK  # the chat template
    code_tok = []
    if "summarization" in tasks:
        code = load_code_summaries() if code is None else code
        code_tok = _ntokens(tokenizer, [c.code for c in code])
    return [_build_one(task, i, seed, pool, tokenizer, context_tokens, overhead, code, code_tok)
            for task in tasks for i in range(n_per_task)]


# -----------------------------------------------------------------------------
# Difficulty filtering (the paper's phase 4): keep the band of solve rates you ask for
#
# A prompt's solve rate here is the fraction of its samples with reward >= threshold (default 0.5).
# It is not tmn.pass_rates, the paper's p_x (reward > the task's threshold t_x, from the batch), which
# train.py logs as pass_rate/{task}: two quantities, two names.

def solve_rate(rewards_of_prompt: Sequence[float], threshold: float = 0.5) -> float:
    """Fraction of a prompt's G samples that solve it (reward >= threshold). For binary rewards this is
    the fraction correct; for graded ones (F1, NDCG, ROUGE-L) "at least half right" by default."""
    if not rewards_of_prompt:
        raise ValueError("solve_rate of an empty list of rewards")
    return sum(r >= threshold for r in rewards_of_prompt) / len(rewards_of_prompt)


def keep_by_solve_rate(solve_rates: Sequence[float], low: float = 0.0, high: float = 1.0) -> list[bool]:
    """Keep prompts with low < p < high. The default (0, 1) drops what the model always solves and what
    it never solves, the two kinds of prompt that give GRPO no signal."""
    return [low < p < high for p in solve_rates]


def filter_by_difficulty(samples: Sequence[Sample], solve_rates: Sequence[float], low: float = 0.0,
                         high: float = 1.0) -> tuple[list[Sample], dict]:
    """The kept samples (meta["solve_rate"] recorded) and counts: kept, too_easy (p >= high), too_hard."""
    if len(samples) != len(solve_rates):
        raise ValueError(f"{len(samples)} samples but {len(solve_rates)} solve rates")
    keep = keep_by_solve_rate(solve_rates, low, high)
    kept = [dataclasses.replace(s, meta={**s.meta, "solve_rate": p})
            for s, p, k in zip(samples, solve_rates, keep) if k]
    counts = {"kept": len(kept), "too_easy": sum(p >= high for p in solve_rates),
              "too_hard": sum(p <= low for p in solve_rates)}
    return kept, counts


def measure_rewards(samples: Sequence[Sample], model_path: str, *, n: int = 8, max_new_tokens: int = 256,
                    temperature: float = 1.0, seed: int = 0, prompts_per_call: int = 4) -> list[list[float]]:
    """Sample each prompt n times with the model at `model_path` (temperature 1 by default, the paper's
    training sampler) and return each prompt's n rewards under rewards.score. A response ends at the
    same ids as in training (policy.eos_token_ids: the tokenizer's EOS, the generation config's,
    ChatML's), so the filter scores the responses training would see. Prompts are encoded with the
    model's own tokenizer; a prompt too long for it raises (build with that tokenizer's budget)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import policy  # imported here: only measuring needs the model code (transformers)
    import rollout

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    eos = policy.eos_token_ids(tok, model)  # where training ends a response
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    out = []
    for a in range(0, len(samples), prompts_per_call):
        chunk = samples[a:a + prompts_per_call]
        prompts = [chat_ids(tok, s.prompt) for s in chunk]
        gen = rollout.generate(model, prompts, n, max_new_tokens, temperature=temperature, top_p=1.0, top_k=0,
                               eos_token_ids=eos, pad_token_id=pad, seed=seed + a)
        for j, s in enumerate(chunk):  # rows are prompt-major: prompt j owns rows j*n .. j*n+n-1
            texts = [tok.decode(gen.tokens[r][gen.mask[r].bool()], skip_special_tokens=True)
                     for r in range(j * n, (j + 1) * n)]
            out.append([rewards.score(s.task, t, s.answer) for t in texts])
    return out


def measure_solve_rates(samples: Sequence[Sample], model_path: str, *, n: int = 8, max_new_tokens: int = 256,
                        threshold: float = 0.5, seed: int = 0, prompts_per_call: int = 4) -> list[float]:
    """Each prompt's solve rate (see solve_rate) over n samples of measure_rewards."""
    per_prompt = measure_rewards(samples, model_path, n=n, max_new_tokens=max_new_tokens, seed=seed,
                                 prompts_per_call=prompts_per_call)
    return [solve_rate(r, threshold) for r in per_prompt]


# -----------------------------------------------------------------------------
# Command line: python tasks.py build ...

class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Help texts end with "(default: X)", except where there is none (None: the help says what then)."""
    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def make_parser() -> argparse.ArgumentParser:
    """`python tasks.py build ...`; --help shows every default."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build tasks of all nine types from documents and write JSONL",
                       description="Build tasks of all nine types from documents and write them as JSONL "
                                   "in the released record format (data.load_jsonl reads it).",
                       formatter_class=_ShowDefaults)
    b.add_argument("--out", required=True, help="output JSONL (released record format)")
    b.add_argument("--context-tokens", type=int, default=512,
                   help="max templated prompt tokens (train.py's default too)")
    b.add_argument("--n-per-task", type=int, default=10, help="samples per task type")
    b.add_argument("--seed", type=int, default=0, help="sample i of a task depends only on (seed, task, i)")
    b.add_argument("--docs", nargs="+", help=".txt/.md/.gz files or folders (default: Python's reference topics)")
    b.add_argument("--tokenizer", help="tokenizer folder or id (default: the embedded SmolLM2)")
    b.add_argument("--filter-with", help="model folder or id: keep prompts by its solve rate (phase 4; "
                                         "default: no filter)")
    b.add_argument("--filter-n", type=int, default=8, help="samples per prompt for the solve rate")
    b.add_argument("--filter-max-new-tokens", type=int, default=256, help="tokens per filter sample")
    b.add_argument("--filter-threshold", type=float, default=0.5, help="reward that counts as solved (>= this)")
    b.add_argument("--filter-low", type=float, default=0.0, help="keep solve rates > low")
    b.add_argument("--filter-high", type=float, default=1.0, help="keep solve rates < high")
    return p


def check_args(p: argparse.ArgumentParser, args) -> None:
    """Numbers the builder cannot use, refused at start (argparse's exit 2, one line each)."""
    problems = [f"--{k.replace('_', '-')} {getattr(args, k)}: must be >= {least}"
                for k, least in [("n_per_task", 1), ("filter_n", 1), ("filter_max_new_tokens", 1)]
                if getattr(args, k) < least]
    if args.context_tokens < MIN_CONTEXT_TOKENS:
        problems.append(f"--context-tokens {args.context_tokens}: must be >= {MIN_CONTEXT_TOKENS} "
                        "(two documents and a question need that room)")
    if not args.filter_low < args.filter_high:
        problems.append(f"--filter-low {args.filter_low} must be below --filter-high {args.filter_high}")
    if problems:
        p.exit(2, "".join(f"{p.prog}: error: {x}\n" for x in problems))


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = make_parser()
    args = p.parse_args(argv)
    check_args(p, args)

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
        rates = measure_solve_rates(samples, args.filter_with, n=args.filter_n, seed=args.seed,
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
