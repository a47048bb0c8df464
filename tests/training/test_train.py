"""End-to-end training through ``train(cfg)`` on the tiny fake MVTec tree (resnet18, random weights, 32-64 px).

Heavy cases (several trainings) are marked ``slow``; the 2-process run is in ``test_ddp.py`` (marker ``ddp``).
"""

import json

import pytest
import torch

from helpers.training import tiny
from urd_lightning.benchmark.records import read_run
from urd_lightning.config import load_config
from urd_lightning.errors import DataError
from urd_lightning.hardware import native_bf16
from urd_lightning.run.folder import RunFolder
from urd_lightning.training.module import NonFiniteLossError
from urd_lightning.training.train import main, train

METRICS = {"image_AUROC", "image_AP", "image_F1Max", "pixel_AUROC", "pixel_AP", "pixel_F1Max", "pixel_AUPRO",
           "pixel_AUPRO_per_image"}


def test_train_smoke_writes_results_tree(mvtec_root, tmp_path):
    cfg = load_config(tiny(mvtec_root, tmp_path))
    metrics = train(cfg)
    assert set(metrics) == METRICS and all(0.0 <= v <= 1.0 for v in metrics.values())
    run = RunFolder.of(cfg).path
    payload = json.loads((run / "metrics.json").read_text())
    assert payload["final"] == pytest.approx(metrics) and payload["steps"] == 1 and "oracle" not in payload
    assert {"dataset", "category", "run", "injection", "durations"} <= set(payload)
    precision = "bf16-mixed" if native_bf16(cuda=False) else "32-true"  # trainer.precision: null, on this CPU
    assert payload["texture_source"] == cfg.data.textures in ("dtd", "procedural")  # said where read
    assert (run / "config.yaml").is_file() and (run / "roc_curve.png").is_file() and (run / "pro_curve.png").is_file()
    # How it ran, effective values (the config's precision/channels_last are null = "pick for the hardware").
    runtime = payload["runtime"]  # one block: every fact once (no second "execution" block)
    assert "execution" not in payload
    assert (runtime["precision"], runtime["channels_last"], runtime["accelerator"]) == (precision, False, "cpu")
    assert {k: runtime[k] for k in ("deterministic", "cudnn_benchmark", "compile", "batched_eval_forwards")} == {
        "deterministic": False, "cudnn_benchmark": False, "compile": False, "batched_eval_forwards": True}
    assert (runtime["processes"], runtime["devices_per_node"], runtime["strategy"]) == (1, 1, "single_device")
    assert runtime["version"] and all(runtime["versions"][p] for p in ("torch", "lightning", "timm"))
    assert runtime["git_commit"] is None or len(runtime["git_commit"].split("+")[0]) == 40
    assert read_run(run).config["runtime.precision"] == precision  # a results.csv column (config.runtime.*)
    assert len(list((run / "images").glob("*.png"))) == 2
    # The checkpoint names no Python class (no module path of this package): it survives moving code around.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(run / "checkpoints" / "last.ckpt") == []
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    extras = ckpt["urd_lightning"]
    assert extras["image_size"] == 32 and extras["category"] == "bottle" and extras["model"]["backbone"] == "resnet18"
    assert extras["thresholds"]["source"] == "test" and set(extras["score_stats"]) == {
        "image_min", "image_max", "pixel_min", "pixel_max"}
    assert any(k.startswith("model.student.") for k in ckpt["state_dict"])


def test_missing_data_stops_before_training_with_the_check_message(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        train(load_config(tiny(tmp_path / "nowhere", tmp_path)))
    assert not (tmp_path / "mvtec").exists()  # nothing was written: the run never started


def test_nan_loss_stops_naming_iteration_and_term(mvtec_root, tmp_path, monkeypatch):
    from urd_lightning.models import losses

    real = losses.student_loss

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        terms["s_normal_teacher"] = terms["s_normal_teacher"] * float("nan")
        return terms

    monkeypatch.setattr(losses, "student_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"student loss term 's_normal_teacher' is nan at iteration 1"):
        train(load_config(tiny(mvtec_root, tmp_path)))


def test_cli_help_lists_keys_with_the_defaults_these_arguments_resolve_to(capsys):
    assert main(["--help", "data.category=cable"]) == 0
    out = capsys.readouterr().out
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("trainer.max_steps "))
    assert row[1:4] == ["int", "10000", "training"] and "urd train dataset=demo" in out  # type, default, description


def _weights(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


@pytest.mark.slow
def test_resume_two_plus_two_equals_four(mvtec_root, tmp_path):
    # 6 train images, batch 3 -> 2 iterations per epoch, so the resume point is the end of an epoch.
    common = ["data.train_batch_size=3", "checkpoint_every_n_steps=2"]
    four = load_config(tiny(mvtec_root, tmp_path / "a", *common, "trainer.max_steps=4", "run=r"))
    train(four)
    two = load_config(tiny(mvtec_root, tmp_path / "b", *common, "trainer.max_steps=2", "run=r"))
    train(two)
    resumed = load_config(tiny(mvtec_root, tmp_path / "b", *common, "trainer.max_steps=4", "run=r", "resume=last"))
    train(resumed)
    a, b = _weights(RunFolder.of(four).path), _weights(RunFolder.of(resumed).path)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_periodic_evaluation_gives_oracle_beside_final(mvtec_root, tmp_path):
    cfg = load_config(tiny(mvtec_root, tmp_path, "trainer.max_steps=2", "eval.every_n_steps=1"))
    metrics = train(cfg)
    payload = json.loads((RunFolder.of(cfg).path / "metrics.json").read_text())
    assert [row["step"] for row in payload["periodic"]] == [1, 2]
    assert set(payload["oracle"]) >= METRICS and {f"oracle/{k}" for k in METRICS} <= set(metrics)
    assert payload["final"] == pytest.approx({k: metrics[k] for k in METRICS})


@pytest.mark.slow
def test_wandb_offline_smoke(mvtec_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    cfg = load_config(tiny(mvtec_root, tmp_path, "logger=wandb", "wandb.mode=offline"))
    train(cfg)
    assert list(RunFolder.of(cfg).path.glob("wandb/offline-run-*")), "no offline W&B run was written"


@pytest.mark.slow
def test_test_command_reproduces_final_metrics(mvtec_root, tmp_path):
    from urd_lightning.training.evaluate import evaluate_checkpoint

    cfg = load_config(tiny(mvtec_root, tmp_path))
    metrics = train(cfg)
    ckpt = RunFolder.of(cfg).path / "checkpoints" / "last.ckpt"
    assert evaluate_checkpoint([f"ckpt={ckpt}", f"data.root={mvtec_root}", "data.num_workers=0",
                                "trainer.accelerator=cpu", "data.cache_dir=" + str(tmp_path / "cache")]) == 0
    again = json.loads((RunFolder.of(cfg).path / "test_metrics.json").read_text())["final"]
    assert again == pytest.approx(metrics, abs=1e-6)


@pytest.mark.slow
def test_wandb_key_without_network_logs_offline_after_a_bounded_wait(tmp_path, monkeypatch):
    """Compute nodes: a configured key, no server. The run must stay a W&B run (offline, syncable), not CSV."""
    from lightning.pytorch.loggers import WandbLogger

    from urd_lightning.training.loggers import build_logger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there: connection refused
    cfg = load_config(["wandb.init_timeout=3", f"output_dir={tmp_path}"])
    logger = build_logger(cfg, tmp_path)
    assert isinstance(logger, WandbLogger) and logger.experiment.settings.mode == "offline"
    logger.experiment.finish()
    assert list(tmp_path.glob("wandb/offline-run-*"))
