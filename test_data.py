"""Tests for data.py: the released format, prompt encoding, batches. (Built tasks: test_tasks.py.)

    python -m pytest -q test_data.py

Every source and LongBench-Pro sub-task of the released format is loaded and its gold scored with the
real rewards.score (a right response scores 1, a near miss less); every malformed line must name the
file, the line and the field.
"""

import json
import random
import re

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
        assert s.task in rewards.REWARDS
        assert rewards.score(s.task, perfect(s.task, s.answer), s.answer) == 1.0, s
        assert rewards.score(s.task, near_miss(s.task, s.answer), s.answer) < 1.0, s
        assert rewards.score(s.task, "I do not know.", s.answer) < 1.0, s
    lbp = {s.meta["reward_mode"].split()[0]: s for s in samples if s.source == "longbench_pro"}
    assert len(lbp) == 25 and lbp["T1.1"].task == "graded_ranking" and lbp["T6.3"].task == "sequence_ordering"
    assert lbp["T3.1"].task == lbp["T11.2"].task == "comprehension" and lbp["T4.2"].task == "summarization"
    assert lbp["T6.2"].task == "exhaustive_retrieval" and lbp["T10.1"].task == "structured_matching"
    assert lbp["T5.1"].id == "lbp-T5.1" and samples[0].id == "r.jsonl:1"
    assert samples[3].answer == "3/4" and samples[5].answer == "wrapped in a list"


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


def lbp_record(code, doc_ids):
    return record("longbench_pro", {"doc_ids": doc_ids}, reward_mode=f"{code} {data.LONGBENCH_PRO[code][0]}")


# One bad gold per task type: (record, field named in the error, the metric's reason).
BAD_GOLD_RECORDS = {
    "precise_retrieval": (record("EM", {"golden_label": "   "}), "golden_label", "non-empty string"),
    "comprehension": (record("selection", {"golden_label": ""}), "golden_label", "a letter or text"),
    "numerical_reasoning": (record("long_math_longcot_math_verify_v2", {"golden_label": "about seven"}),
                            "golden_label", "cannot read gold answer 'about seven'"),
    "structured_extraction": (record("multitableqa_pretraining", {"golden_label": '{"rows": []}'}),
                              "golden_label", "gold must be rows"),
    "exhaustive_retrieval": (lbp_record("T6.2", ["doc1", " "]), "doc_ids", "gold item 1 must be a non-empty"),
    "structured_matching": (lbp_record("T10.1", []), "doc_ids", "empty list"),
    "graded_ranking": (lbp_record("T1.1", ["doc1", "DOC1"]), "doc_ids", "appears more than once"),
    "sequence_ordering": (lbp_record("T6.3", ["e1", ["e2"]]), "doc_ids", "gold item 1 must be a non-empty"),
    "summarization": (lbp_record("T4.2", ["..."]), "doc_ids", "a reference has no tokens"),
}


@pytest.mark.parametrize("task", list(BAD_GOLD_RECORDS))
def test_bad_gold_is_a_data_error_at_load(tmp_path, task):
    # The record loads without complaint on the old code; rewards.score then raised mid-training.
    rec, field_name, reason = BAD_GOLD_RECORDS[task]
    path = write_jsonl(tmp_path / "r.jsonl", [record("EM", {"golden_label": "ok"}), rec])
    with pytest.raises(DataError) as e:
        data.load_jsonl(path)
    message = str(e.value)
    for words in ("r.jsonl:2", field_name, f"for {task}", reason):
        assert words in message, (words, message)
    # ... the reason scoring this gold would have raised mid-training.
    gold = rec["reward_model"]["ground_truth"].get("golden_label", rec["reward_model"]["ground_truth"].get("doc_ids"))
    with pytest.raises(ValueError, match=re.escape(reason)):
        rewards.score(task, "a response", gold)


def test_bad_golds_skipped_and_counted(tmp_path, caplog):
    good = record("EM", {"golden_label": "ok"})
    bad = [rec for rec, _, _ in BAD_GOLD_RECORDS.values()]
    path = write_jsonl(tmp_path / "r.jsonl", [good] + bad + [good])
    counts = {}
    with caplog.at_level("WARNING", logger="data"):
        samples = data.load_jsonl(path, skip_bad_golds=True, counts=counts)
    assert [s.answer for s in samples] == ["ok", "ok"]
    assert counts == {"bad_gold": 9}
    assert "r.jsonl:4" in caplog.text and "about seven" in caplog.text  # each skipped line is named
    # Skipping unknown sources does not skip bad golds: the two options are separate.
    with pytest.raises(DataError, match="r.jsonl:2"):
        data.load_jsonl(path, skip_unknown=True)


def test_skip_bad_golds_flag_reaches_load_jsonl(tmp_path):
    import config
    import harness  # the one place the flag is read
    path = write_jsonl(tmp_path / "d.jsonl", [record("EM", {"golden_label": "ok"}),
                                              BAD_GOLD_RECORDS["numerical_reasoning"][0]])
    base = ["--data", str(path), "--out-dir", str(tmp_path / "run")]
    with pytest.raises(DataError, match="d.jsonl:2: field 'reward_model.ground_truth.golden_label'"):
        harness.load_data(config.parse_config(base), tok=None)
    train_set, _ = harness.load_data(config.parse_config(base + ["--skip-bad-golds"]), tok=None)
    assert [s.answer for s in train_set] == ["ok"]


def test_deep_nesting_is_a_data_error_naming_the_line(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [record("EM", {"golden_label": "ok"}), "[" * 100_000])
    with pytest.raises(DataError, match=r"r.jsonl:2: invalid JSON \(nested too deeply"):
        data.load_jsonl(path)  # json.loads raises RecursionError here, which is not a ValueError
    deep_gold = record("multitableqa_pretraining", {"golden_label": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(DataError, match=r"r.jsonl:1: field 'reward_model.ground_truth.golden_label'"):
        data.load_jsonl(write_jsonl(path, [deep_gold]))


@pytest.mark.parametrize("where, field", [("prompt", "prompt[0].content"),
                                          ("gold", "reward_model.ground_truth.golden_label"),
                                          ("extra", "extra_info.question")])
def test_lone_surrogate_is_rejected_with_line_and_field(tmp_path, where, field):
    bad = record("EM", {"golden_label": "\ud800 gold" if where == "gold" else "ok"})
    if where == "prompt":
        bad["prompt"][0]["content"] = "Documents \udfff... Question?"
    if where == "extra":
        bad["extra_info"]["question"] = "Question \udbff?"
    line = json.dumps(bad)  # ensure_ascii: the surrogate is written as the escape \\udXXX, as a user reported it
    assert "\\ud" in line
    path = write_jsonl(tmp_path / "r.jsonl", [record("EM", {"golden_label": "ok"}), line])
    with pytest.raises(DataError) as e:
        data.load_jsonl(path)
    assert str(e.value).startswith(f"{path}:2: field {field!r} holds a lone UTF-16 surrogate"), str(e.value)
    pair = record("EM", {"golden_label": "ok"})
    pair["prompt"][0]["content"] = "smile \ud83d\ude00"  # a valid pair: json.loads joins it into one character
    (s,) = data.load_jsonl(write_jsonl(path, [json.dumps(pair)]))
    assert s.prompt[0]["content"] == "smile \U0001F600"


def test_duplicate_ids_are_kept_counted_and_logged(tmp_path, caplog):
    recs = [record("EM", {"golden_label": g}, index=i) for g, i in
            [("a1", "a"), ("b1", "b"), ("a2", "a"), ("c1", 7), ("a3", "a"), ("c2", "7")]]
    path = write_jsonl(tmp_path / "r.jsonl", recs + [record("EM", {"golden_label": "no index"})])
    counts = {}
    with caplog.at_level("WARNING", logger="data"):
        samples = data.load_jsonl(path, counts=counts)
    assert [s.answer for s in samples] == ["a1", "b1", "a2", "c1", "a3", "c2", "no index"]  # nothing dropped
    assert counts == {"duplicate_id": 3}  # a twice more, 7 once more (ids are strings)
    assert "3 records reuse an earlier id (kept): 'a' at lines 1, 3, 5; '7' at lines 4, 6" in caplog.text

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


def test_encode_drops_or_truncates_long_prompts(qwen_tokenizer):
    question = "Question: which tide is mentioned first?"
    short = Sample("short", "precise_retrieval", [{"role": "user", "content": "Read the 2 documents below.\n\n"
                   "[Document 1] Tides\nThe sea rises.\n\n[Document 2] Moon\nIt pulls.\n\n" + question}],
                   "x", "EM", {"question": question})
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
