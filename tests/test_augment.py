"""``data.augment`` resolved at config load (config/augment.py): false, flips or an albumentations pipeline."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from urd_lightning.config import load_config, to_yaml
from urd_lightning.config.augment import FLIPS, INSTALL, Pipeline, albumentations, resolve_augment
from urd_lightning.config.files import CONFIG_DIR
from urd_lightning.errors import ConfigError

CAMERA = CONFIG_DIR / "augment" / "camera.yaml"


def camera() -> dict:
    return yaml.safe_load(CAMERA.read_text())


def test_false_flips_and_true_resolve_to_themselves():
    assert resolve_augment(False) is False and resolve_augment(None) is False
    assert resolve_augment(True) == FLIPS and resolve_augment(FLIPS) == FLIPS
    assert load_config(["dataset=demo"]).data.augment is False
    assert load_config(["dataset=demo", "data.augment=true"]).data.augment == FLIPS


def test_a_name_a_yaml_file_a_json_file_and_the_inline_dict_resolve_to_one_recorded_pipeline(tmp_path):
    A = albumentations()  # noqa: N806
    as_json = tmp_path / "camera.json"
    A.save(A.from_dict(camera()), str(as_json), data_format="json")
    resolved = resolve_augment("camera")
    assert resolved == resolve_augment(str(CAMERA)) == resolve_augment(str(as_json)) == resolve_augment(camera())
    assert resolve_augment(resolved) == resolved  # a recorded config loads to the same pipeline
    assert [t["__class_fullname__"] for t in resolved["transform"]["transforms"]] == ["Affine", "ColorJitter",
                                                                                      "GaussianBlur"]
    # The config holds the pipeline itself (every argument), so its identity follows the content, not the path.
    by_name = load_config(["dataset=demo", "data.augment=camera"])
    by_path = load_config(["dataset=demo", f"data.augment={as_json}"])
    assert OmegaConf.to_container(by_name.data.augment) == resolved
    assert by_name.run == by_path.run != load_config(["dataset=demo"]).run
    assert "__class_fullname__: Affine" in to_yaml(by_name)


def test_a_single_saved_transform_becomes_a_one_transform_compose():
    single = {"__version__": "2.0.8", "transform": camera()["transform"]["transforms"][2]}
    resolved = resolve_augment(single)
    assert resolved["transform"]["__class_fullname__"] == "Compose"
    assert [t["__class_fullname__"] for t in resolved["transform"]["transforms"]] == ["GaussianBlur"]


def _broken(change) -> dict:
    spec = copy.deepcopy(camera())
    change(spec["transform"]["transforms"])
    return spec


@pytest.mark.parametrize(("change", "expected"), [
    (lambda t: t[0].update(rotat=[-5, 5]), "Affine (transform.transforms[0]): Argument(s) 'rotat' are not valid"),
    (lambda t: t[1].update(p=3), "ColorJitter (transform.transforms[1]): argument 'p': Input should be less"),
    (lambda t: t[0].update(rotate="abc"), "Affine (transform.transforms[0]): argument 'rotate':"),
    (lambda t: t[1].update(__class_fullname__="ColourJitter"), "no transform 'ColourJitter'; did you mean ColorJitter"),
    (lambda t: t.append({"__class_fullname__": "OneOf", "p": 1, "transforms": [
        {"__class_fullname__": "GaussNoise", "std_range": [0.5, 0.1], "p": 1}]}),
     "GaussNoise (transform.transforms[3].transforms[0]): argument 'std_range':"),
    (lambda t: t.append({"__class_fullname__": "Resize", "p": 1}),
     "Resize (transform.transforms[3]): argument 'height' is required"),
])
def test_an_invalid_pipeline_gets_one_line_naming_the_transform_and_the_argument(change, expected):
    with pytest.raises(ConfigError) as caught:
        resolve_augment(_broken(change))
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_a_pipeline_that_changes_the_image_size_or_type_stops_at_set_up():
    crop = resolve_augment(_broken(lambda t: t.append({"__class_fullname__": "RandomCrop", "height": 24,
                                                       "width": 24, "p": 1})))
    with pytest.raises(ConfigError, match=r"RandomCrop \(transform.transforms\[3\]\) turns the \(32, 32, 3\) uint8"):
        Pipeline(crop, 32)
    normalize = resolve_augment(_broken(lambda t: t.append({"__class_fullname__": "Normalize", "p": 1})))
    with pytest.raises(ConfigError, match=r"Normalize .* into \(32, 32, 3\) float32"):
        Pipeline(normalize, 32)
    Pipeline(camera(), 32)  # the example keeps size and type


def test_bad_files_and_names_get_one_line(tmp_path):
    with pytest.raises(ConfigError, match="data.augment=nope: no such file; .* one of: camera"):
        resolve_augment("nope")
    text = tmp_path / "p.yaml"
    text.write_text("just: [a, list\n")
    with pytest.raises(ConfigError, match="cannot read the pipeline file"):
        resolve_augment(str(text))
    text.write_text(json.dumps({"transforms": []}))
    with pytest.raises(ConfigError, match="not an albumentations pipeline; expected what A.save writes"):
        resolve_augment(str(text))


def test_the_command_line_prints_the_one_line_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_broken(lambda t: t[2].update(sigma=2))))
    done = subprocess.run([sys.executable, "-m", "urd_lightning", "print-config", "dataset=demo",
                           f"data.augment={bad}"], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "GaussianBlur (transform.transforms[2]): Argument(s) 'sigma' are not valid" in done.stderr


def test_a_pipeline_without_albumentations_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "albumentations", None)
    with pytest.raises(ConfigError, match=r"albumentations is not installed: " + INSTALL.replace("[", r"\[")):
        load_config(["dataset=demo", "data.augment=camera"])
    assert load_config(["dataset=demo", "data.augment=flips"]).data.augment == FLIPS  # flips need no extra


def test_albumentations_is_imported_without_its_network_version_check():
    code = ("import urllib.request\n"
            "calls = []\n"
            "urllib.request.build_opener = lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(OSError('net'))\n"
            "from urd_lightning.config.augment import albumentations\n"
            "albumentations()\n"
            "print(len(calls))\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0", "albumentations asked the network for its latest version at import"


def test_a_run_records_the_resolved_pipeline_in_config_yaml_and_metrics_json(mvtec_root, tmp_path):
    from helpers.training import train_tiny
    from urd_lightning.run.folder import RunFolder

    cfg, _ = train_tiny(mvtec_root, tmp_path, f"data.augment={CAMERA}")
    run_dir = RunFolder.of(cfg).path
    resolved = resolve_augment("camera")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["augment"] == resolved
    assert json.loads((run_dir / "metrics.json").read_text())["augment"] == resolved


@pytest.mark.slow
def test_a_run_with_a_pipeline_resumed_after_two_iterations_equals_four_uninterrupted(mvtec_root, tmp_path):
    import torch

    from helpers.training import tiny
    from urd_lightning.run.folder import RunFolder
    from urd_lightning.training.train import train

    # 6 train images, batch 4 -> the resume point (2 iterations) is in the middle of the second epoch.
    common = ["data.train_batch_size=4", "checkpoint_every_n_steps=2", "data.augment=camera", "run=r"]
    four = load_config(tiny(mvtec_root, tmp_path / "a", *common, "trainer.max_steps=4"))
    train(four)
    train(load_config(tiny(mvtec_root, tmp_path / "b", *common, "trainer.max_steps=2")))
    resumed = load_config(tiny(mvtec_root, tmp_path / "b", *common, "trainer.max_steps=4", "resume=last"))
    train(resumed)

    def weights(cfg):
        state = torch.load(RunFolder.of(cfg).last_checkpoint, map_location="cpu", weights_only=True)
        return {k: v for k, v in state["state_dict"].items() if k.startswith("model.")}

    a, b = weights(four), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
