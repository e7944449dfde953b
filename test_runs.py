"""The run folder as a new user meets it: a finished run is never overwritten silently,
--plot alone only draws, --eval-only scores the newest checkpoint, the output is readable, checkpoints
can leave the optimizer out, and the help texts say what the code does.

    python -m pytest -q test_runs.py

Training runs use test_train.py's tiny random Qwen3 and its length-based reward (a random model earns
no real reward); everything else calls the small helpers directly. One test runs train.py in a
subprocess, to see its exit code with matplotlib made unimportable.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench
import checkpoint
import config
import data
import harness
import report
import rewards
import rollout
import tasks
import train
from test_train import ROOT, args, length_reward, metrics, params, tiny  # noqa: F401 (tiny: fixture)


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: proves that a check came first."""
    def fail(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(harness, "load_policy", fail)


def fake_run(out: Path, lines: list) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    return out


# -----------------------------------------------------------------------------
# Item 1: never start over a run without --resume or --overwrite

def test_check_run_dir_sees_metrics_or_checkpoints(tmp_path, capsys):
    checkpoint.check_run_dir(tmp_path / "missing", resume=False, overwrite=False)  # no folder: fine
    (tmp_path / "metrics.jsonl").write_text("")  # a run that crashed before its first step
    checkpoint.check_run_dir(tmp_path, resume=False, overwrite=False)
    (tmp_path / "checkpoints" / "step_000004").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        checkpoint.check_run_dir(tmp_path, resume=False, overwrite=False)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "step_000004" in err and "--resume" in err and "--overwrite" in err
    checkpoint.check_run_dir(tmp_path, resume=True, overwrite=False)
    checkpoint.check_run_dir(tmp_path, resume=False, overwrite=True)
    fake_run(tmp_path / "b", [{"step": 1}])
    with pytest.raises(SystemExit):
        checkpoint.check_run_dir(tmp_path / "b", resume=False, overwrite=False)


def test_second_run_is_refused_before_loading_then_overwrite_replaces(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    train.main(args(tiny, tmp_path, "--steps", "2"))
    before = (tmp_path / "metrics.jsonl").read_text()
    real_load = harness.load_policy
    monkeypatch.setattr(harness, "load_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as e:
        train.main(args(tiny, tmp_path, "--steps", "1"))
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    monkeypatch.setattr(harness, "load_policy", real_load)
    assert (tmp_path / "metrics.jsonl").read_text() == before  # untouched
    with pytest.raises(SystemExit):
        config.parse_config(["--resume", "--overwrite"])
    train.main(args(tiny, tmp_path, "--steps", "1", "--overwrite"))
    assert [m["step"] for m in metrics(tmp_path)] == [1]
    # the old step-2 checkpoint is gone: it would otherwise be "the newest" of the new run
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000001"]
    assert not (tmp_path / "previous_run").exists()  # set aside at start, deleted after step 1's save
    out = capsys.readouterr().out
    assert "--overwrite: moved metrics.jsonl" in out and "previous_run (the previous run)" in out


# -----------------------------------------------------------------------------
# Item 2: --plot alone draws an existing run; matplotlib is checked first

def test_plot_has_markers_for_single_points_and_integer_ticks(tmp_path):
    pytest.importorskip("matplotlib")
    lines = [{"step": s, "reward/all/mean": 0.1 * s, "reward/comprehension/mean": 0.2} for s in (1, 2, 3)]
    lines[1]["reward/summarization/mean"] = 0.4  # sampled at step 2 only: one point
    fig = report.plot_rewards(fake_run(tmp_path, lines))
    assert (tmp_path / "rewards.png").stat().st_size > 0
    drawn = {l.get_label(): l for l in fig.axes[0].lines}
    assert set(drawn) == {"all", "comprehension", "summarization"}
    assert list(drawn["summarization"].get_xdata()) == [2]
    assert all(l.get_marker() not in (None, "None", "") for l in drawn.values())
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_plot_alone_on_a_run_only_draws(tmp_path, no_model_load):
    pytest.importorskip("matplotlib")
    run = fake_run(tmp_path, [{"step": 1, "reward/all/mean": 0.5}])
    before = (run / "metrics.jsonl").read_text()
    assert train.main(["--plot", "--out-dir", str(run)]) is None
    assert (run / "rewards.png").exists() and (run / "metrics.jsonl").read_text() == before


def test_plot_without_matplotlib_fails_at_once(tmp_path, monkeypatch, no_model_load):
    run = fake_run(tmp_path / "run", [{"step": 1, "reward/all/mean": 0.5}])
    # plot-only, as a user runs it: a non-zero exit code and the package named
    code = ("import sys, runpy; sys.modules['matplotlib'] = None; "  # None in sys.modules: ImportError
            f"sys.argv = ['train.py', '--plot', '--out-dir', {str(run)!r}]; "
            f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "pip install matplotlib" in p.stderr
    assert not (run / "rewards.png").exists()
    # training with --plot: refused before the model loads, not after the training
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        train.main(["--plot", "--out-dir", str(tmp_path / "new")])


# -----------------------------------------------------------------------------
# Item 3: --eval-only scores what was trained

def evals(out) -> list:
    return [json.loads(l) for l in open(Path(out) / "evals.jsonl")]


def test_eval_only_scores_the_newest_checkpoint_or_the_one_named(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    evalset = data.load_jsonl(tiny / "tasks.jsonl")[::6]
    data.save_jsonl(evalset, tmp_path / "eval.jsonl")
    run = tmp_path / "run"
    trained = params(train.main(args(tiny, run, "--steps", "2", "--save-every", "1")))
    ev = ["--eval-only", "--eval-data", str(tmp_path / "eval.jsonl")]
    scored = params(train.main(args(tiny, run, *ev)))
    assert all(torch.equal(trained[k], scored[k]) for k in trained)  # the step-2 weights, not the base
    last = evals(run)[-1]
    assert last["step"] == 2 and last["checkpoint"] == str(run / "checkpoints" / "step_000002")
    names = {s.task for s in evalset}
    assert {k.split("/")[1] for k in last if k.startswith("eval_n/")} == names
    assert sum(last[f"eval_n/{t}"] for t in names) == len(evalset)
    out = capsys.readouterr().out
    assert "prompts  score" in out and all(t in out for t in names)  # the per-task table
    train.main(args(tiny, run, *ev, "--checkpoint", str(run / "checkpoints" / "step_000001")))
    assert evals(run)[-1]["step"] == 1
    # the run's own settings (model, data, limits) from its config.json; flags given here win
    cfg = config.parse_config(["--eval-only", "--out-dir", str(run), "--max-new-tokens", "5"])
    assert (cfg.model, cfg.data, cfg.group_size, cfg.max_new_tokens) == (str(tiny / "model"),
                                                                         str(tiny / "tasks.jsonl"), 4, 5)
    assert cfg.out_dir == str(run) and cfg.eval_only and not config.parse_config(["--out-dir", str(run)]).model
    # a folder without checkpoints: the base model, said out loud, recorded as step 0
    train.main(args(tiny, tmp_path / "empty", *ev))
    assert evals(tmp_path / "empty")[-1]["step"] == 0
    assert "no checkpoint in" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--eval-data"):
        train.main(args(tiny, run, "--eval-only"))  # --data has no held-out split
    with pytest.raises(SystemExit):
        config.parse_config(["--checkpoint", "x"])  # only with --eval-only


def test_task_scores_are_means_of_prompt_means_with_standard_errors():
    prompts = [{"task": "a", "scores": [1.0, 0.0]}, {"task": "a", "scores": [1.0, 1.0]},
               {"task": "a", "scores": [0.0, 0.0]}, {"task": "b", "scores": [1.0, 0.0]},
               {"task": "b", "scores": [0.0, 0.0]}]
    m = report.task_scores(prompts)
    # a: prompt means 0.5, 1, 0 -> mean 0.5, sample sd 0.5, SE 0.5 / sqrt(3); b: 0.5, 0 -> 0.25, SE 0.25
    assert m["eval/a"] == 0.5 and m["eval_se/a"] == pytest.approx(0.5 / 3 ** 0.5)
    assert m["eval/b"] == 0.25 and m["eval_se/b"] == pytest.approx(0.25)
    assert m["eval/mean"] == 0.375 and m["eval_n/a"] == 3 and m["eval_n/b"] == 2
    assert m["eval_se/mean"] == pytest.approx((0.25 / 3 + 0.25 ** 2) ** 0.5 / 2)  # mean of two task means
    one = report.task_scores([{"task": "a", "scores": [1.0, 0.0]}])  # one prompt: no spread to measure
    assert one["eval/a"] == 0.5 and one["eval_se/a"] != one["eval_se/a"]  # NaN
    assert report.mean_se(0.5, one["eval_se/a"]) == "0.500 ± n/a"
    assert report.json_line(one).count("null") == 2  # NaN is written as null


def test_eval_only_with_several_samples_keeps_prompt_scores_and_prints_standard_errors(tiny, tmp_path,
                                                                                        monkeypatch, capsys):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    evalset = data.load_jsonl(tiny / "tasks.jsonl")[:4]  # two tasks, two prompts each
    data.save_jsonl(evalset, tmp_path / "eval.jsonl")
    train.main(args(tiny, tmp_path / "run", "--eval-only", "--eval-data", str(tmp_path / "eval.jsonl"),
                    "--eval-samples", "4"))
    line = evals(tmp_path / "run")[-1]
    assert line["eval_samples"] == 4
    assert [p["id"] for p in line["prompts"]] == [s.id for s in evalset]
    assert all(len(p["scores"]) == 4 for p in line["prompts"])
    names = {s.task for s in evalset}
    assert set(line["responses"]) == names and all("response" in r for r in line["responses"].values())
    assert line == {**line, **report.task_scores(line["prompts"])}  # the metrics are the prompts' own
    assert all(line[f"eval_se/{t}"] is not None for t in names) and line["eval_se/mean"] is not None
    out = capsys.readouterr().out
    assert "score ± standard error (4 samples per prompt)" in out
    for t in names:  # a row per task with its SE, and one response per task
        assert f"{line[f'eval/{t}']:.3f} ± {line[f'eval_se/{t}']:.3f}" in out
        assert f"{line['responses'][t]['id']}: " in out
    assert f"eval at step 0 (4 prompts x 4 samples): " in out
    assert any(len(set(p["scores"])) > 1 for p in line["prompts"])  # K draws, not one draw K times
    train.main(args(tiny, tmp_path / "run", "--eval-only", "--eval-data", str(tmp_path / "eval.jsonl"),
                    "--eval-samples", "4"))
    assert evals(tmp_path / "run")[-1]["prompts"] == line["prompts"]  # the same seeds: the same scores
    with pytest.raises(SystemExit):
        config.parse_config(["--eval-samples", "0"])


def test_eval_only_builds_only_the_held_out_tasks(qwen_tokenizer, monkeypatch):
    """--eval-only builds eval_per_task samples per task, and they are the training run's held-out ones."""
    calls = []
    real = tasks.build_tasks
    monkeypatch.setattr(tasks, "build_tasks", lambda *a, **k: calls.append((a[2], a[4])) or real(*a, **k))
    monkeypatch.setattr(tasks, "load_documents", lambda real_docs=tasks.load_documents(): real_docs[:40])
    flags = ["--context-tokens", "400", "--n-per-task", "1", "--eval-per-task", "1"]
    _, held = harness.load_data(config.parse_config(flags), qwen_tokenizer)
    train_set, only = harness.load_data(config.parse_config(flags + ["--eval-only"]), qwen_tokenizer)
    assert calls == [(1, "heldout"), (1, 0), (1, "heldout")] and train_set == []
    assert [(s.id, s.answer) for s in only] == [(s.id, s.answer) for s in held]


def test_held_out_split_is_fixed_by_id_not_by_seed(qwen_tokenizer, monkeypatch):
    """Runs with different --seed train on different built tasks but are scored on the same held-out
    ones, and no training prompt is a held-out one."""
    monkeypatch.setattr(tasks, "load_documents", lambda real_docs=tasks.load_documents(): real_docs[:40])
    flags = ["--context-tokens", "400", "--n-per-task", "2", "--eval-per-task", "2"]
    train0, held0 = harness.load_data(config.parse_config(flags + ["--seed", "0"]), qwen_tokenizer)
    train1, held1 = harness.load_data(config.parse_config(flags + ["--seed", "1"]), qwen_tokenizer)
    assert [(s.id, s.prompt, s.answer) for s in held0] == [(s.id, s.prompt, s.answer) for s in held1]
    assert {s.id for s in train0} != {s.id for s in train1}
    assert len(held0) == 2 * len(data.TASK_NAMES) and all("-heldout-" in s.id for s in held0)
    prompts = {json.dumps(s.prompt) for s in held0}
    assert not any(json.dumps(s.prompt) in prompts for s in train0 + train1)


# -----------------------------------------------------------------------------
# Item 4: config, step line, summary

def test_config_text_lists_changed_fields_aligned():
    text = report.config_text(config.parse_config(["--steps", "10", "--out-dir", "runs/x"]), config.Config(),
                                 "runs/x/config.json")
    lines = text.splitlines()
    assert "runs/x/config.json" in lines[0]
    assert lines[1:] == ["  steps   = 10", "  out_dir = 'runs/x'"]
    assert "defaults" in report.config_text(config.Config(), config.Config(), None)


def test_every_task_has_a_short_label_in_the_step_line_and_readme():
    labels = report.TASK_LABELS
    assert set(labels) == set(data.TASK_NAMES) and len(set(labels.values())) == len(labels)
    m = {"step": 3, "reward/all/mean": 0.25, "reward/comprehension/mean": 0.5, "kept_prompts": 2, "update_s": 1.0}
    line = report.step_line(m, report.task_order(data.TASK_NAMES))
    assert "mcq 0.50" in line and "summ -" in line  # summarization not in this step's batch
    assert all(f"{l} " in line for l in labels.values())
    readme = " ".join((ROOT / "README.md").read_text().split())  # line breaks as spaces
    assert all(f"`{l}` {t}" in readme for t, l in labels.items())


def test_run_summary_compares_first_and_last_steps(tmp_path):
    lines = [{"step": s, "reward/all/mean": s / 10, "reward/comprehension/mean": s / 20} for s in range(1, 11)]
    for s in (2, 4, 7):  # a task in the batch of a few steps only: its own first and last of them
        lines[s - 1]["reward/summarization/mean"] = s / 10
    text = report.run_summary(lines, 179.6, tmp_path, plotted=False)
    assert text.startswith("done: steps 1-10 in 3 min 0 s")
    rows = {l.split()[0]: l for l in text.splitlines()[2:]}
    assert rows["all"].endswith("0.300 (steps 1-5) -> 0.800 (steps 6-10)")  # means of 0.1..0.5, 0.6..1.0
    assert rows["comprehension"].endswith("0.150 (steps 1-5) -> 0.400 (steps 6-10)")
    assert rows["summarization"].endswith("0.200 (step 2) -> 0.700 (step 7)")
    assert list(rows)[:3] == ["comprehension", "summarization", "all"]  # README order, "all" last
    assert "python train.py --plot" in text and "checkpoint: none" in text


def test_run_summary_does_not_compare_a_step_with_itself(tmp_path):
    one = report.run_summary([{"step": 1, "reward/all/mean": 0.25, "reward/comprehension/mean": 0.5}],
                                 30, tmp_path, plotted=False)
    rows = {l.split()[0]: l for l in one.splitlines()[2:]}
    assert one.splitlines()[1] == "  mean reward per task (one step: no comparison):" and "->" not in one
    assert rows["all"].endswith("0.250 (step 1)") and rows["comprehension"].endswith("0.500 (step 1)")
    lines = [{"step": s, "reward/all/mean": s / 10} for s in (1, 2)]
    lines[1]["reward/summarization/mean"] = 0.4  # in one step's batch only
    lines[0].update({"eval/mean": 0.25, "eval_se/mean": 0.05})
    lines[1].update({"eval/mean": 0.5, "eval_se/mean": None})  # null: one prompt per task
    text = report.run_summary(lines, 30, tmp_path, plotted=False)
    rows = {l.split()[0]: l for l in text.splitlines()[2:]}
    assert rows["all"].endswith("0.100 (step 1) -> 0.200 (step 2)")
    assert rows["summarization"].endswith("0.400 (step 2), one step: no comparison")
    assert "evaluation, mean over tasks ± standard error: 0.250 ± 0.050 (step 1) -> 0.500 ± n/a (step 2)" in text
    lines[1].pop("eval/mean")
    assert "0.250 ± 0.050 (step 1), one evaluation: no comparison" in report.run_summary(lines, 30, tmp_path, False)


def test_training_writes_a_few_responses_per_step_to_samples_jsonl(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    train.main(args(tiny, tmp_path, "--steps", "2", "--log-samples", "2", "--save-every", "1"))
    rows = [json.loads(l) for l in open(tmp_path / "samples.jsonl")]
    # a resume from step 1 redoes step 2: its responses are replaced, not written twice
    shutil.rmtree(tmp_path / "checkpoints" / "step_000002")
    train.main(args(tiny, tmp_path, "--steps", "2", "--log-samples", "2", "--resume"))
    again = [json.loads(l) for l in open(tmp_path / "samples.jsonl")]
    assert [r["step"] for r in again] == [r["step"] for r in rows]
    ids = {s.id: s.task for s in data.load_jsonl(tiny / "tasks.jsonl")}
    assert sorted({r["step"] for r in rows}) == [1, 2]
    for step in (1, 2):
        mine = [r for r in rows if r["step"] == step]
        assert 1 <= len(mine) <= 2 and len({r["task"] for r in mine}) == len(mine)  # one per task
    for r in rows:
        assert ids[r["id"]] == r["task"] and r["reward"] == length_reward(None, [r["response"]], None)[0]
    assert str(tmp_path / "samples.jsonl") in capsys.readouterr().out  # the summary says where
    train.main(args(tiny, tmp_path / "none", "--steps", "1", "--log-samples", "0"))
    assert not (tmp_path / "none" / "samples.jsonl").exists()
    # a long response is cut, its length kept
    cut = report.shorten("x" * 50, limit=10)
    assert cut == {"response": "x" * 10 + " [... cut: 50 characters in all]", "response_chars": 50}
    assert report.shorten("short") == {"response": "short"}


def test_training_run_writes_config_and_summary(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    train.main(args(tiny, tmp_path, "--steps", "1"))
    saved = json.loads((tmp_path / "config.json").read_text())
    given = config.dataclasses.asdict(config.parse_config(args(tiny, tmp_path, "--steps", "1")))
    assert saved == {**given, "precision": "fp32", "attention": "torch"}  # 'auto' resolved on this CPU
    out = capsys.readouterr().out
    assert f"  steps              = 1" in out and "done: steps 1 in" in out
    assert str(tmp_path / "checkpoints" / "step_000001") in out


# -----------------------------------------------------------------------------
# Item 5: checkpoints without the optimizer

def test_no_save_optimizer_checkpoint_is_smaller_and_resume_says_so(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rewards, "score_batch", length_reward)
    train.main(args(tiny, tmp_path / "a", "--steps", "1"))
    train.main(args(tiny, tmp_path / "b", "--steps", "1", "--no-save-optimizer"))
    size = lambda d: (d / "checkpoints" / "step_000001" / "trainer_state.pt").stat().st_size
    with_opt = torch.load(tmp_path / "a" / "checkpoints" / "step_000001" / "trainer_state.pt", weights_only=True)
    without = torch.load(tmp_path / "b" / "checkpoints" / "step_000001" / "trainer_state.pt", weights_only=True)
    assert "optimizer" in with_opt and "optimizer" not in without and size(tmp_path / "b") < size(tmp_path / "a")
    train.main(args(tiny, tmp_path / "b", "--steps", "2", "--resume"))
    assert "AdamW's moments restart from zero" in capsys.readouterr().out
    assert [m["step"] for m in metrics(tmp_path / "b")] == [1, 2]


# -----------------------------------------------------------------------------
# Item 6: help texts agree with the code

def test_bench_only_takes_several_sections():
    assert bench.parse_args(["--only", "rewards,logprobs"]).only == ["rewards", "logprobs"]
    assert bench.parse_args(["--only", "rewards", "--only", "learn"]).only == ["rewards", "learn"]
    assert bench.parse_args([]).only == []
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "rewards,nope"])
    assert bench.parse_args(["--trl-sides", "ours"]).trl_sides == ["ours"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--trl-sides", "ours,tlr"])


def test_kv_budget_zero_is_one_wave_as_the_help_says(capsys):
    with pytest.raises(SystemExit):
        config.parse_config(["--help"])
    assert "0 = no limit: all prompts in one wave" in " ".join(capsys.readouterr().out.split())
    # train.py passes kv_budget_tokens or None; rollout plans None as a single wave
    assert rollout.plan_waves([900, 10, 500], n=16, max_new_tokens=16384, budget=None) == [[0, 2, 1]]
    assert len(rollout.plan_waves([900, 10, 500], n=16, max_new_tokens=16384, budget=1000)) == 3
