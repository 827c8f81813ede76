"""`orchestrate datasets synth|check` through the real CLI: synthetic data in the real layout, and exit 2 with
what was expected where when a dataset cannot be used."""

from __future__ import annotations

import json
from pathlib import Path

from tests.orchestrator.conftest import run_cli


def test_synth_then_check_and_a_missing_root(tmp_path: Path) -> None:
    out = tmp_path / "adience"
    run_cli(
        tmp_path,
        "datasets",
        "synth",
        "adience",
        "--out",
        str(out),
        "--limit",
        "120",
        "--size",
        "48",
        check=True,
    )
    assert sorted(p.name for p in out.glob("fold_*_data.txt")) == [f"fold_{i}_data.txt" for i in range(5)]
    assert list((out / "aligned").glob("*/landmark_aligned_face.*.jpg"))
    report = json.loads(
        run_cli(
            tmp_path, "datasets", "check", "adience", "--root", str(out), "--format", "json", check=True
        ).stdout
    )
    assert report["ok"] and report["samples"] == 120 and report["problems"]["missing_images"] == 0

    missing = run_cli(tmp_path, "datasets", "check", "adience", "--root", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "nowhere" in missing.stderr and "Traceback" not in missing.stderr


def test_check_counts_undecodable_images(tmp_path: Path) -> None:
    """`datasets check` decodes every image as training would and counts the ones that cannot be."""
    out = tmp_path / "adience"
    run_cli(
        tmp_path,
        "datasets",
        "synth",
        "adience",
        "--out",
        str(out),
        "--limit",
        "60",
        "--size",
        "32",
        check=True,
    )
    jpgs = sorted(out.glob("aligned/*/*.jpg"))
    for p in jpgs[:2]:
        p.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    report = json.loads(
        run_cli(
            tmp_path, "datasets", "check", "adience", "--root", str(out), "--format", "json", check=True
        ).stdout
    )
    assert report["problems"]["undecodable_images"] == 2
    assert sorted(report["info"]["undecodable_examples"]) == sorted(str(p.relative_to(out)) for p in jpgs[:2])
    fast = json.loads(
        run_cli(
            tmp_path, "datasets", "check", "adience", "--root", str(out), "--format", "json", "--no-images",
            check=True,
        ).stdout
    )  # fmt: skip
    assert "undecodable_images" not in fast["problems"]
