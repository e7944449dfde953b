"""A new user's second day: mistakes refused at start (before the model loads), an --overwrite that
never loses the old run before the new one is safely under way, a full disk that ends in one line,
and Ctrl-C / SIGTERM that save and say how to resume.

    python -m pytest -q test_run_safety.py

Training runs use test_train.py's tiny random Qwen3 and its length-based reward; the Ctrl-C test runs
train.py in a subprocess (a real SIGINT), the rest in-process.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoint
import config
import harness
import rewards
import tasks
import train
from test_train import ROOT, args, length_reward, metrics, tiny  # noqa: F401 (tiny: fixture)


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: proves that a check came first."""
    monkeypatch.setattr(harness, "load_policy", lambda *a, **k: pytest.fail("a model was loaded"))


def error_lines(err: str) -> list:
    assert "Traceback" not in err, err
    return [l for l in err.splitlines() if "error:" in l]


def bad_jsonl(path: Path) -> Path:
    good = {"data_source": "EM", "prompt": [{"role": "user", "content": "say x"}],
            "reward_model": {"ground_truth": {"golden_label": "x"}}}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "prompt": "not a list"}) + "\n")
    return path


# -----------------------------------------------------------------------------
# --overwrite: the old run stays until the new one is known to start, and until its first checkpoint

def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    run = tmp_path / "run"
    train.main(args(tiny, run, "--steps", "1"))
    before = (run / "metrics.jsonl").read_text()
    # bad data: refused before anything is touched
    real_load = harness.load_policy
    monkeypatch.setattr(harness, "load_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as e:
        train.main(args(tiny, run, "--overwrite", "--data", str(bad_jsonl(tmp_path / "bad.jsonl"))))
    assert e.value.code == 2
    assert (run / "metrics.jsonl").read_text() == before
    assert checkpoint.latest_checkpoint(run).name == "step_000001"
    # a new run that fails after it started, before its first checkpoint: the old run is set aside whole
    monkeypatch.setattr(harness, "load_policy", real_load)
    monkeypatch.setattr(train, "collect_batch", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError, match="crash"):
        train.main(args(tiny, run, "--overwrite", "--steps", "1"))
    aside = run / "previous_run"
    assert (aside / "metrics.jsonl").read_text() == before
    assert checkpoint.latest_checkpoint(aside).name == "step_000001"
    assert "moved metrics.jsonl" in capsys.readouterr().out


# -----------------------------------------------------------------------------
# Disk: one checkpoint must fit at start; a save that runs out of space ends in one line

def test_checkpoint_size_is_weights_and_adamw():
    assert checkpoint.checkpoint_bytes(10**9, True) == 12 * 10**9 + 64 * 2**20
    assert checkpoint.checkpoint_bytes(10**9, False) == 4 * 10**9 + 64 * 2**20


def test_too_little_disk_refused_before_the_first_step(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    stale = tmp_path / "checkpoints" / ".tmp_step_000007"  # a killed save's leftovers fill the disk
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"x" * 100)
    usage = checkpoint.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage._replace(free=10 * 2**20))
    monkeypatch.setattr(train, "collect_batch", lambda *a, **k: pytest.fail("a step ran"))
    with pytest.raises(SystemExit) as e:
        train.main(args(tiny, tmp_path, "--steps", "1"))
    assert e.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "0.01 GB free, one checkpoint needs" in line and "--out-dir" in line
    assert not stale.exists() and not (tmp_path / "metrics.jsonl").exists()


def test_save_that_runs_out_of_space_ends_in_one_line(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    real_save = torch.save

    def disk_full_at_step_2(obj, path, *a, **k):  # writes part of the file, then the disk is full
        if "step_000002" in str(path):
            Path(path).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **k)
    monkeypatch.setattr(checkpoint.torch, "save", disk_full_at_step_2)
    with pytest.raises(SystemExit) as e:
        train.main(args(tiny, tmp_path, "--steps", "3", "--save-every", "1"))
    assert e.value.code == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "step 2" in line and "No space left on device" in line and "step_000001" in line
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000001"]  # no .tmp_step_*
    last = checkpoint.latest_checkpoint(tmp_path)
    assert last.name == "step_000001" and checkpoint.checkpoint_problem(last) == ""
    assert torch.load(last / "trainer_state.pt", weights_only=True)["step"] == 1
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    train.main(args(tiny, tmp_path, "--steps", "2", "--resume"))  # the last good checkpoint continues
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2]


# -----------------------------------------------------------------------------
# Bad data: read and checked before the model loads, one line naming the full path, line and field

def test_bad_data_refused_before_the_model_with_path_line_and_field(tmp_path, no_model_load, monkeypatch, capsys):
    bad = bad_jsonl(tmp_path / "bad.jsonl")
    monkeypatch.chdir(tmp_path)  # given as a relative path; the message names the full one
    for flag in ("--data", "--eval-data"):
        with pytest.raises(SystemExit) as e:
            train.main([flag, "bad.jsonl", "--out-dir", str(tmp_path / "run")])
        assert e.value.code == 2
        (line,) = error_lines(capsys.readouterr().err)
        assert f"{bad}:2:" in line and "'prompt'" in line and line.startswith(f"error: {flag}"), line
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(SystemExit) as e:
        train.main(["--data", str(tmp_path / "empty.jsonl"), "--out-dir", str(tmp_path / "run")])
    assert e.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"{tmp_path / 'empty.jsonl'}: the file is empty" in line
    assert not (tmp_path / "run").exists()


# -----------------------------------------------------------------------------
# Flags that failed late or never: refused at start, exit 2, one line each

def refused(flags: list, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        config.parse_config(flags)
    assert e.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    return line


@pytest.mark.parametrize("flags, says", [
    (["--steps", "0"], "--steps 0: must be >= 1"),
    (["--eval-every", "1", "--data", "DATA"], "--eval-every 1: no evaluation data (--data has no held-out split)"),
    (["--eval-every", "2", "--eval-per-task", "0"], "--eval-every 2: no evaluation data"),
    (["--context-tokens", "100"], "--context-tokens 100: must be >= 400"),
    (["--context-tokens", "256"], "--context-tokens 256: must be >= 400"),
    (["--context-tokens", "2048"], "--context-tokens 2048 > --max-prompt-tokens 1024"),
    (["--gen-prompts", "1", "--prompts-per-step", "2"], "--gen-prompts 1: must be 0 or >= --prompts-per-step 2"),
    (["--out-dir", "/proc/golongrl_run"], "--out-dir /proc/golongrl_run"),
])
def test_flags_refused_at_start(flags, says, tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text("{}\n")
    flags = [str(tmp_path / "d.jsonl") if f == "DATA" else f for f in flags]
    out = [] if "--out-dir" in flags else ["--out-dir", str(tmp_path / "run")]
    assert says in refused(flags + out, capsys)


def test_build_at_the_smallest_context_allowed(qwen_tokenizer):
    """MIN_CONTEXT_TOKENS is honest: every task type builds there."""
    docs = tasks.load_documents()
    assert len(tasks.build_tasks(docs, qwen_tokenizer, 2, tasks.MIN_CONTEXT_TOKENS, seed=1)) == 18


def test_hub_id_missing_offline_refused_at_start(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import constants
    out = ["--out-dir", str(tmp_path / "run")]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    line = refused(["--model", "nobody/no-such-model"] + out, capsys)
    assert "not in the local Hugging Face cache" in line and "HF_HUB_OFFLINE" in line
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(*a, **k):
        raise ConnectionError("Name or service not known")
    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    line = refused(["--model", "nobody/no-such-model"] + out, capsys)
    assert "the hub could not be asked" in line and "Name or service not known" in line
    # with a network the hub is asked and a known id passes; a cached one never asks
    monkeypatch.setattr(huggingface_hub, "model_info", lambda *a, **k: object())
    assert config.parse_config(["--model", "Qwen/Qwen3-4B"] + out).model == "Qwen/Qwen3-4B"
    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/cache/config.json")
    assert config.parse_config(["--model", "Qwen/Qwen3-4B"] + out).model == "Qwen/Qwen3-4B"


@pytest.mark.parametrize("flags, says", [
    (["--n-per-task", "-3"], "--n-per-task -3: must be >= 1"),
    (["--context-tokens", "100"], "--context-tokens 100: must be >= 400"),
])
def test_tasks_build_refuses_bad_numbers(flags, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        tasks.main(["build", "--out", str(tmp_path / "t.jsonl"), *flags])
    assert e.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "t.jsonl").exists()


def test_tasks_build_default_context_is_train_default():
    assert tasks.make_parser().parse_args(["build", "--out", "x"]).context_tokens == config.Config().context_tokens


# -----------------------------------------------------------------------------
# SIGINT / SIGTERM: the step ends, a checkpoint is saved, the resume command is printed, exit 128 + signal

DRIVER = """
import sys
sys.path.insert(0, {root!r})
import rewards, train
rewards.score_batch = lambda tasks, texts, answers, **kw: [(len(t) % 5) / 4 for t in texts]
sys.argv = ["train.py", *sys.argv[1:]]
exec(compile(open({train!r}).read(), {train!r}, "exec"), {{"__name__": "__main__"}})
"""


def test_ctrl_c_saves_prints_resume_and_exits_130(tiny, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT), train=str(ROOT / "train.py")))
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, str(driver), *args(tiny, run, "--steps", "500")], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    t0 = time.time()
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().strip()):
        assert p.poll() is None and time.time() - t0 < 240, "the run ended before its first step"
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)  # after step 1, while the run goes on
    out, err = p.communicate(timeout=240)
    assert p.returncode == 130, (out, err)
    assert "Traceback" not in err and "SIGINT" in err
    last = checkpoint.latest_checkpoint(run)
    step = int(last.name[5:])
    assert checkpoint.checkpoint_problem(last) == "" and [m["step"] for m in metrics(run)][-1] == step
    assert f"stopped by SIGINT (Ctrl-C) after step {step} of 500" in out
    assert "to continue: python train.py --model" in out and out.rstrip().endswith("--resume")


def test_sigterm_saves_and_exits_143_then_resume_continues(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    real_step, handler = train.collect_batch, signal.getsignal(signal.SIGTERM)

    def terminated_during_step_1(*a, **k):  # the scheduler's SIGTERM arrives mid-step
        if not (tmp_path / "metrics.jsonl").exists():
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*a, **k)
    monkeypatch.setattr(train, "collect_batch", terminated_during_step_1)
    with pytest.raises(SystemExit) as e:
        train.main(args(tiny, tmp_path, "--steps", "3"))  # --save-every 0: only the end would save
    assert e.value.code == 143
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_000001"
    assert "stopped by SIGTERM after step 1 of 3" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) == handler  # the run's own handler is gone
    train.main(args(tiny, tmp_path, "--steps", "2", "--resume"))
    assert [m["step"] for m in metrics(tmp_path)] == [1, 2]


def test_save_minutes_checkpoints_by_time(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    train.main(args(tiny, tmp_path, "--steps", "2", "--keep-last", "5", "--save-minutes", "1e-9"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    assert config.Config().save_minutes > 0  # on by default
