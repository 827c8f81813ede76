"""Which dataset folders a trial reads, how a copy is recognised as up to date, and how trial.json is mapped."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from orchestrator import datasync
from orchestrator.spec.model import HostSpec
from orchestrator.trial.spec import TrialSpec


def _trial(**fields: Any) -> TrialSpec:
    return TrialSpec(sweep="s", trial=0, attempt=1, **{"params": {}, **fields})


def _dataset(root: Path, name: str) -> Path:
    (root / name / "aligned").mkdir(parents=True)
    (root / name / "aligned" / "a.jpg").write_bytes(b"x" * 10)
    (root / name / "fold_0_data.txt").write_text("labels\n")
    return root / name


def test_a_trial_needs_only_its_own_dataset_under_the_data_root(tmp_path: Path) -> None:
    adience = _dataset(tmp_path, "adience")
    celeba = _dataset(tmp_path, "celeba")
    trial = _trial(experiment="train", params={"task": "gender"}, data_root=str(tmp_path))
    assert datasync.units(trial) == [datasync.Unit("data_root", adience)]  # the config's default dataset
    trial = dataclasses.replace(trial, params={"task": "gender", "dataset": "celeba"})
    assert datasync.units(trial) == [datasync.Unit("data_root", celeba)]
    # the data_root is the dataset's own root: all of it
    assert datasync.units(dataclasses.replace(trial, data_root=str(adience))) == [
        datasync.Unit("data_root", adience)
    ]
    # the experiment's own data_root parameter wins; a program or synthetic data needs nothing
    own = _trial(experiment="train", params={"data_root": str(celeba)}, data_root=str(tmp_path))
    assert datasync.units(own) == [datasync.Unit("params.data_root", celeba)]
    assert datasync.units(_trial(experiment=None, data_root=str(tmp_path))) == []
    assert datasync.units(_trial(experiment="train", data_root=None)) == []
    # nested in a group, or a dotted name: the field that holds it (what the trial's copy gets mapped in)
    nested = _trial(experiment="train", params={"data": {"data_root": str(celeba)}})
    assert datasync.units(nested) == [datasync.Unit("params.data.data_root", celeba)]
    dotted = _trial(experiment="train", params={"data.data_root": str(celeba)})
    assert datasync.units(dotted) == [datasync.Unit("params.data.data_root", celeba)]
    assert datasync.remap(nested, {"params.data.data_root": "@@W@@/c"}).params == {
        "data": {"data_root": "@@W@@/c"}
    }


def test_trial_json_points_at_the_hosts_copy(tmp_path: Path) -> None:
    trial = _trial(experiment="train", params={"lr": 0.1, "data_root": "/here/celeba"}, data_root="/here")
    out = datasync.remap(trial, {"data_root": "@@W@@/a", "params.data_root": "@@W@@/b"})
    assert out.data_root == "@@W@@/a" and out.params == {"lr": 0.1, "data_root": "@@W@@/b"}
    assert trial.data_root == "/here"  # the controller's own trial.json is not changed
    name = datasync.copy_name(tmp_path / "adience")
    assert name.startswith(".orchestrate/data/adience-") and name != datasync.copy_name(
        tmp_path / "x" / "adience"
    )


def test_the_manifest_changes_with_any_file_and_the_hosts_own_copy_is_kept(tmp_path: Path) -> None:
    root = _dataset(tmp_path, "adience")
    first = datasync.manifest(root)
    assert (first.files, first.bytes) == (2, 17) and datasync.manifest(root) == first
    (root / "aligned" / "b.jpg").write_bytes(b"y")
    second = datasync.manifest(root)
    assert second.digest != first.digest
    os.utime(root / "aligned" / "a.jpg", ns=(1, 1))  # same size, other time: a new copy is sent
    assert datasync.manifest(root).digest != second.digest
    host = HostSpec(name="h", ssh="me@h", data_roots=(str(tmp_path),))
    assert datasync.host_has(host, root) and not datasync.host_has(HostSpec(name="h", ssh="me@h"), root)


def test_weights_files_a_trial_starts_from_travel_too(tmp_path: Path) -> None:
    weights = tmp_path / "imagenet_resnet50.pth"
    weights.write_bytes(b"w" * 10)
    trial = _trial(
        experiment="train",
        params={"pretrained": str(weights), "dataset": "adience", "init_checkpoint": "missing.pt"},
    )
    (unit,) = datasync.weight_units(trial)  # a missing file, true/false and names are not files to copy
    assert unit == datasync.Unit("params.pretrained", weights)
    assert datasync.weight_units(_trial(params={"pretrained": "true"})) == []
    m = datasync.manifest(weights)
    assert (m.files, m.bytes) == (1, 10)
    weights.write_bytes(b"w" * 11)
    assert datasync.manifest(weights).digest != m.digest
    assert (
        datasync.remap(trial, {"params.pretrained": "/box/copy/imagenet_resnet50.pth"}).params["pretrained"]
        == "/box/copy/imagenet_resnet50.pth"
    )
