"""Faults and bad input: bad flags refused at start, damaged checkpoints and metrics files
survived, non-finite numbers kept out of metrics.jsonl and out of the advantages.

    python -m pytest -q test_faults.py

Most tests call pure functions (validate_config, resume_metrics, checkpoint_problem) on tiny files;
one runs train.py in-process on a tiny random Qwen3 through a save, a corruption and a resume.
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch

import checkpoint
import config
import data
import harness
import report
import rewards
import tasks
import train
from conftest import tiny_llama, tiny_qwen3


def strict_json(line: str):
    """json.loads that refuses NaN / Infinity (which Python's json accepts but JSON does not)."""
    def refuse(c):
        raise ValueError(f"bare {c} is not JSON")
    return json.loads(line, parse_constant=refuse)


def word_tokenizer():
    """A tiny word-level tokenizer (fast to save; the checkpoint tests only need one on disk)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<unk>")


# -----------------------------------------------------------------------------
# Item 5: every bad flag refused at start, all at once, exit code 2

@pytest.mark.parametrize("flags, says", [
    (["--mini-batches", "0"], "--mini-batches 0: must be >= 1"),
    (["--keep-last", "-1"], "--keep-last -1: must be >= 1"),
    (["--keep-last", "0"], "--keep-last 0: must be >= 1"),
    (["--temperature", "nan"], "--temperature nan: must be a finite number"),
    (["--temperature", "0"], "--temperature 0.0: must be > 0"),
    (["--group-size", "0"], "--group-size 0: must be >= 2"),
    (["--group-size", "1"], "no step ever updates"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: must be >= 1"),
    (["--prompts-per-step", "0"], "--prompts-per-step 0: must be >= 1"),
    (["--max-gen-rounds", "0"], "--max-gen-rounds 0: must be >= 1"),
    (["--lr", "nan"], "--lr nan: must be a finite number"),
    (["--lr=-1e-5"], "--lr -1e-05: must be > 0"),
    (["--clip-high", "inf"], "--clip-high inf: must be a finite number"),
    (["--top-p", "0"], "--top-p 0.0: must be in (0, 1]"),
    (["--model", "/nonexistent"], "--model /nonexistent: no such folder"),
    (["--data", "/nonexistent.jsonl"], "--data /nonexistent.jsonl: no such file"),
    (["--eval-data", "missing.jsonl"], "--eval-data missing.jsonl: no such file"),
    (["--advantage", "ppo"], "--advantage 'ppo': must be grpo, tmn or tmn_reweight"),
    (["--keep-attention", "--no-grad-checkpointing"], "it needs --grad-checkpointing"),
])
def test_bad_flag_refused_at_parse_with_exit_2(flags, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        config.parse_config(flags + ["--out-dir", str(tmp_path / "run")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert says in err, err
    assert "Traceback" not in err


def test_every_problem_reported_one_line_each(tmp_path, capsys):
    flags = ["--mini-batches", "0", "--keep-last", "-1", "--temperature", "nan", "--group-size", "1",
             "--lr", "nan", "--model", "/nonexistent", "--out-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit):
        config.parse_config(flags)
    errors = [l for l in capsys.readouterr().err.splitlines() if ": error: " in l]
    assert len(errors) == 6, errors
    for name in ("--mini-batches", "--keep-last", "--temperature", "--group-size", "--lr", "--model"):
        assert sum(name in l for l in errors) == 1, name


def test_defaults_and_paper_recipe_are_valid(tmp_path):
    assert config.validate_config(config.Config(out_dir=str(tmp_path / "run"))) == []
    assert config.validate_config(config.parse_config(["--recipe", "paper", "--out-dir", str(tmp_path)])) == []


def test_model_folder_without_tokenizer_refused(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "m")  # weights and config, no tokenizer files
    problems = config.validate_config(config.Config(model=str(tmp_path / "m"), out_dir=str(tmp_path / "run")))
    assert len(problems) == 1 and "no tokenizer file" in problems[0] and "save_pretrained" in problems[0]
    word_tokenizer().save_pretrained(tmp_path / "m")
    assert config.validate_config(config.Config(model=str(tmp_path / "m"), out_dir=str(tmp_path / "run"))) == []


def test_hub_ids_are_asked_of_the_hub(tmp_path, monkeypatch):
    """org/name is a hub id, not a missing folder: the hub is asked (test_run_safety.py: offline)."""
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: object())
    assert config.validate_config(config.Config(model="Qwen/Qwen3-4B", out_dir=str(tmp_path))) == []


# -----------------------------------------------------------------------------
# Item 3: what would fail at save is found at start

def test_out_dir_that_is_a_file_or_holds_a_checkpoints_file_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    problems = config.validate_config(config.Config(out_dir=str(tmp_path / "file")))
    assert len(problems) == 1 and "is a file, not a folder" in problems[0]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("x")
    problems = config.validate_config(config.Config(out_dir=str(tmp_path / "run")))
    assert len(problems) == 1 and "checkpoints is a file" in problems[0]
    problems = config.validate_config(config.Config(out_dir=str(tmp_path / "file" / "sub")))
    assert len(problems) == 1 and "is a file, not a folder" in problems[0]


def test_read_only_out_dir_refused(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root ignores permission bits: answer as any other user would
        real = os.access
        monkeypatch.setattr(config.os, "access", lambda p, m: False if Path(p) == ro else real(p, m))
    for out in (ro, ro / "new_run"):  # existing, and to be created inside it
        problems = config.validate_config(config.Config(out_dir=str(out)))
        assert len(problems) == 1 and "is not writable" in problems[0], problems
    ro.chmod(0o755)


def gguf_converted_folder(path: Path, tok) -> Path:
    """A model folder as GGUF conversions leave it: float weights, `quantization_config` in config.json."""
    tiny_qwen3(seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    c = json.loads((path / "config.json").read_text())
    c["quantization_config"] = {"quant_method": "gguf"}
    (path / "config.json").write_text(json.dumps(c))
    return path


def test_gguf_quantization_config_is_stripped_so_the_model_saves(tmp_path):
    import policy
    from transformers import AutoModelForCausalLM
    src = gguf_converted_folder(tmp_path / "m", word_tokenizer())
    model = policy.load_model(str(src), torch.device("cpu"))
    with pytest.raises(ValueError, match="not serializable"):  # what training ran into at the end
        model.save_pretrained(tmp_path / "before")
    said = []
    checkpoint.check_saveable(model, said.append)
    assert "quantization_config" in said[0]
    model.save_pretrained(tmp_path / "out")
    assert "quantization_config" not in json.loads((tmp_path / "out" / "config.json").read_text())
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def test_other_quantized_model_refused_with_a_fix():
    model = tiny_llama()
    model.config.quantization_config = {"quant_method": "bitsandbytes"}
    with pytest.raises(SystemExit, match="quantized \\(bitsandbytes\\).*Dequantize"):
        checkpoint.check_saveable(model)
    checkpoint.check_saveable(tiny_llama())  # a plain model passes, untouched


# -----------------------------------------------------------------------------
# Item 2: a damaged newest checkpoint is skipped, saying which and why

class FakeBatches:
    def state_dict(self):
        return {"epoch": 0, "pos": 3}


def save_steps(out: Path, steps, keep=5):
    model = tiny_llama()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()  # so the optimizer has state worth saving
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for s in steps:
        checkpoint.save_checkpoint(out, s, model, word_tokenizer(), opt, sched, FakeBatches(), keep,
                                   [checkpoint.rng_state()])


def truncate(p: Path, keep: float):
    p.write_bytes(p.read_bytes()[:int(p.stat().st_size * keep)])


@pytest.mark.parametrize("damage, reason", [
    (lambda c: truncate(c / "model.safetensors", 0.5), "model.safetensors"),
    (lambda c: truncate(c / "model.safetensors", 0.0), "model.safetensors"),
    (lambda c: truncate(c / "trainer_state.pt", 0.5), "trainer_state.pt"),
    (lambda c: (c / "tokenizer.json").unlink(), "tokenizer.json"),
    (lambda c: (c / "config.json").unlink(), "config.json"),
    (lambda c: (c / "complete.json").write_text("{"), "complete.json"),
])
def test_damaged_newest_checkpoint_falls_back_to_intact_one(tmp_path, damage, reason):
    save_steps(tmp_path, [1, 2])
    newest = tmp_path / "checkpoints" / "step_000002"
    assert checkpoint.checkpoint_problem(newest) == ""
    damage(newest)
    said = []
    got = checkpoint.latest_checkpoint(tmp_path, said.append)
    assert got.name == "step_000001"
    assert len(said) == 1 and "step_000002" in said[0] and reason in said[0], said
    state = torch.load(got / "trainer_state.pt", weights_only=True)  # the one chosen really loads
    assert state["step"] == 1


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.999])
def test_truncated_weights_found_without_the_marker(tmp_path, keep):
    """The safetensors header check alone catches a cut file (a folder saved before the marker)."""
    save_steps(tmp_path, [1])
    ckpt = tmp_path / "checkpoints" / "step_000001"
    (ckpt / "complete.json").unlink()
    assert checkpoint.checkpoint_problem(ckpt) == ""  # older folders stay usable
    truncate(ckpt / "model.safetensors", keep)
    assert "model.safetensors" in checkpoint.checkpoint_problem(ckpt)


def test_files_and_folder_synced_before_the_marker_and_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (events.append(
        ("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name)), real_fsync(fd)))
    monkeypatch.setattr(checkpoint.os, "replace", lambda a, b: (events.append(("rename", Path(a).name)),
                                                                 real_replace(a, b)))
    save_steps(tmp_path, [1])
    names = [n for _, n in events]
    files = {p.name for p in (tmp_path / "checkpoints" / "step_000001").iterdir()} - {"complete.json"}
    marker = names.index("complete.json")
    assert set(names[:marker]) == files                       # every file on disk before the marker
    assert events[marker + 1:] == [("fsync", ".tmp_step_000001"), ("rename", ".tmp_step_000001"),
                                   ("fsync", "checkpoints")]  # then the folder, the rename, the parent


def test_damaged_checkpoint_never_evicts_an_intact_one(tmp_path):
    save_steps(tmp_path, [5])
    truncate(tmp_path / "checkpoints" / "step_000005" / "model.safetensors", 0.5)
    save_steps(tmp_path, [3], keep=1)  # resumed from an older one; step 5 sorts last but is damaged
    assert checkpoint.latest_checkpoint(tmp_path, lambda *a: None).name == "step_000003"


# -----------------------------------------------------------------------------
# Item 1: --resume reads and checks metrics.jsonl before it writes anything

def write_lines(path: Path, lines: list):
    path.write_text("".join(l + "\n" for l in lines))


def test_resume_metrics_keeps_every_valid_line_and_sets_the_damaged_file_aside(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = ['{"step": 1, "r": 0.5}', '{"step": 2, "r": 0.', '{"step": 3, "r": 0.7}', '{"step": 4}',
             '{"step": 5}']  # line 2 was cut by a crash mid-write; step 5 is after the checkpoint
    write_lines(path, lines)
    said = []
    got = checkpoint.resume_metrics(path, 4, said.append)
    assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 3, 4]
    assert got == {"kept": 3, "damaged": 1, "later": 1, "moved_to": str(path) + ".damaged"}
    assert (tmp_path / "metrics.jsonl.damaged").read_text().splitlines() == lines  # nothing lost
    assert any("line 2" in s and "metrics.jsonl.damaged" in s for s in said), said
    write_lines(path, ["garbage"])  # a second damaged file does not overwrite the first one aside
    assert checkpoint.resume_metrics(path, 4, said.append)["moved_to"] == str(path) + ".damaged.1"


def test_resume_without_a_checkpoint_keeps_the_dropped_lines_beside(tmp_path):
    """--resume on a folder whose checkpoints are all damaged starts fresh (step 0): every metrics line
    is dropped from metrics.jsonl, but the original file stays whole beside it, named for the step."""
    path = tmp_path / "metrics.jsonl"
    lines = ['{"step": 1}', '{"step": 2}']
    write_lines(path, lines)
    said = []
    got = checkpoint.resume_metrics(path, 0, said.append)
    assert path.read_text() == "" and got["later"] == 2
    kept = tmp_path / "metrics.jsonl.before_resume_at_step_0"
    assert got["moved_to"] == str(kept) and kept.read_text().splitlines() == lines
    assert any("a fresh start" in s and str(kept) in s for s in said), said


def test_embedded_model_dir_tolerates_a_conversion_that_finished_first(tmp_path, monkeypatch):
    """Two processes converting the embedded model at once: the second rename fails because the folder
    now exists; the loser drops its own copy and uses the winner's, no error, no stray .tmp folder."""
    import transformers
    import policy

    class Fake:  # stands in for the GGUF read and the model rebuild (50 s on 2 cores): only the
        config = object()  # rename race is under test here
        state_dict = load_state_dict = lambda self, *a: {}
        save_pretrained = lambda self, p: Path(p).mkdir(parents=True, exist_ok=True)
    fake = classmethod(lambda cls, *a, **k: Fake())
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", fake)
    out = tmp_path / "smollm2-135m-instruct"
    real_replace = policy.os.replace

    def other_process_won(src, dst):
        Path(dst).mkdir()
        (Path(dst) / "config.json").write_text("{}")
        raise OSError(39, "Directory not empty")
    monkeypatch.setattr(policy.os, "replace", other_process_won)
    assert policy.embedded_model_dir(tmp_path) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    monkeypatch.setattr(policy.os, "replace", real_replace)


def test_resume_metrics_leaves_the_file_whole_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    write_lines(path, ['{"step": 1}', '{"step": 2}', '{"step": 3}'])
    before = path.read_bytes()

    def disk_full(*a):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr(checkpoint.os, "replace", disk_full)
    with pytest.raises(OSError, match="simulated"):
        checkpoint.resume_metrics(path, 2, lambda *a: None)
    assert path.read_bytes() == before  # never truncated before the new content was safely written


def test_resume_metrics_without_a_file_does_nothing(tmp_path):
    assert checkpoint.resume_metrics(tmp_path / "metrics.jsonl", 3)["kept"] == 0
    assert not (tmp_path / "metrics.jsonl").exists()


# -----------------------------------------------------------------------------
# Item 9: strict JSON metrics; a non-finite reward is reported, scored 0 and counted

def test_json_line_writes_null_for_non_finite_numbers():
    line = report.json_line({"step": 1, "a": float("nan"), "b": float("inf"), "c": -float("inf"),
                                 "d": 0.5, "e": "text"})
    assert strict_json(line) == {"step": 1, "a": None, "b": None, "c": None, "d": 0.5, "e": "text"}


def test_metrics_with_nothing_kept_are_strict_json():
    light = [data.Record((1, 0, 0, 0), "qa", 0.5, 3, False, True)] * 4  # one group, all equal: nothing kept
    m = report.step_metrics(light, [], torch.zeros(0), alpha=0.8)
    assert math.isnan(m["difficulty/mean_pass_rate"])
    assert strict_json(report.json_line(m))["difficulty/mean_pass_rate"] is None


def test_finite_rewards_reports_and_zeroes_non_finite(capsys):
    got, bad = train.finite_rewards([1.0, float("nan"), 0.25, float("-inf")], ["qa", "math", "qa", "code"])
    assert got == [1.0, 0.0, 0.25, 0.0] and bad == 2
    out = capsys.readouterr().out
    assert "task math: reward nan" in out and "task code: reward -inf" in out


def test_nan_reward_does_not_poison_the_advantages():
    """The rewards that reach advantages() are finite, so every advantage is (TMN averages tasks)."""
    r, _ = train.finite_rewards([0.0, 1.0, float("nan"), 1.0, 0.0, 1.0], ["a"] * 4 + ["b"] * 2)
    kept = [data.Record(g, t, x, 3, False, True)
            for g, t, x in zip([0, 0, 1, 1, 2, 2], ["a"] * 4 + ["b"] * 2, r)]
    adv = train.advantages(kept, config.Config())
    assert torch.isfinite(adv).all() and (adv != 0).any()


# -----------------------------------------------------------------------------
# Item 10: --skip-unknown-sources reaches data.load_jsonl

def test_skip_unknown_sources_flag(tmp_path, capsys):
    rec = {"prompt": [{"role": "user", "content": "say x"}], "reward_model": {"ground_truth": {"golden_label": "x"}}}
    write_lines(tmp_path / "d.jsonl", [json.dumps({**rec, "data_source": "EM"}),
                                       json.dumps({**rec, "data_source": "someone_elses_set"})])
    base = ["--data", str(tmp_path / "d.jsonl"), "--out-dir", str(tmp_path / "run")]
    with pytest.raises(data.DataError, match="d.jsonl:2: unknown data_source 'someone_elses_set'"):
        harness.load_data(config.parse_config(base), tok=None)
    train_set, _ = harness.load_data(config.parse_config(base + ["--skip-unknown-sources"]), tok=None)
    assert [s.source for s in train_set] == ["EM"]


# -----------------------------------------------------------------------------
# End to end: a GGUF-converted model folder, a NaN reward, then a damaged checkpoint and metrics file

def test_train_save_damage_and_resume(tmp_path, monkeypatch, qwen_tokenizer, capsys):
    model_dir = gguf_converted_folder(tmp_path / "model", qwen_tokenizer)
    samples = tasks.build_tasks(tasks.load_documents(), qwen_tokenizer, 1, 512, seed=0)
    data.save_jsonl(samples, tmp_path / "tasks.jsonl")

    def nan_first(tasks, texts, answers, **kw):  # rewards that vary, and one NaN per batch
        return [float("nan")] + [(len(t) % 5) / 4 for t in texts[1:]]
    monkeypatch.setattr(rewards, "score_batch", nan_first)
    out = tmp_path / "run"
    flags = ["--model", str(model_dir), "--data", str(tmp_path / "tasks.jsonl"), "--out-dir", str(out),
             "--group-size", "4", "--prompts-per-step", "2", "--max-new-tokens", "8", "--max-gen-rounds", "1",
             "--lr", "1e-3", "--micro-batch-tokens", "2000", "--steps", "2", "--save-every", "1"]
    straight = {k: v.clone() for k, v in train.main(flags).state_dict().items()}  # saved: item 3
    lines = (out / "metrics.jsonl").read_text().splitlines()
    m = [strict_json(l) for l in lines]  # item 9: strict JSON
    assert [x["step"] for x in m] == [1, 2] and all(x["nonfinite_rewards"] == 1 for x in m)
    assert all(math.isfinite(x["reward/all/mean"]) for x in m)
    assert all(torch.isfinite(v).all() for v in straight.values())
    assert "reward nan is not a finite number" in capsys.readouterr().out

    # a crash left a cut line in metrics.jsonl, and the newest checkpoint lost half its weights
    write_lines(out / "metrics.jsonl", [lines[0], lines[1][:20], lines[1]])
    truncate(out / "checkpoints" / "step_000002" / "model.safetensors", 0.5)
    resumed = train.main(flags + ["--resume"])
    said = capsys.readouterr().out
    assert "step_000002 is damaged" in said and "resuming from" in said and "step_000001" in said
    assert [strict_json(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (out / "metrics.jsonl.damaged").exists()
    for k, v in resumed.state_dict().items():  # step 2 redone from step 1: the same weights
        assert torch.allclose(v, straight[k], atol=1e-6), k
    assert checkpoint.checkpoint_problem(out / "checkpoints" / "step_000002") == ""
