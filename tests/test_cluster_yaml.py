"""ray_cluster.yaml: parses, has what the Ray cluster launcher needs, and passes Ray's own schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

YAML_PATH = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


@pytest.fixture(scope="module")
def cfg() -> dict[str, Any]:
    with open(YAML_PATH) as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict)
    return data


def test_top_level_keys(cfg: dict[str, Any]) -> None:
    """cluster_name, global max_workers, an AWS provider with a region, auth user."""
    assert isinstance(cfg["cluster_name"], str) and cfg["cluster_name"]
    assert isinstance(cfg["max_workers"], int) and cfg["max_workers"] >= 1
    assert cfg["provider"]["type"] == "aws"
    assert isinstance(cfg["provider"]["region"], str) and cfg["provider"]["region"]
    assert cfg["auth"]["ssh_user"]
    assert cfg["idle_timeout_minutes"] > 0


def test_node_types(cfg: dict[str, Any]) -> None:
    """Head type exists and schedules nothing (CPU 0); GPU worker types autoscale from zero."""
    types = cfg["available_node_types"]
    head = cfg["head_node_type"]
    assert head in types
    assert types[head]["resources"] == {"CPU": 0}
    assert types[head].get("max_workers", 0) == 0
    workers = {k: v for k, v in types.items() if k != head}
    assert workers, "no worker node types"
    for name, t in workers.items():
        assert t["resources"].get("GPU", 0) >= 1, name
        assert t["resources"].get("CPU", 0) >= 1, name
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name
        assert t["node_config"]["InstanceType"].split(".")[0] in ("g5", "g6", "g6e", "p4d", "p5")
    assert any(t["max_workers"] > t["min_workers"] for t in workers.values()), "no autoscaling"
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cfg["max_workers"]
    for t in types.values():
        for v in t["resources"].values():
            assert isinstance(v, int) and v >= 0


def test_docker_image_matches_ray_pin(cfg: dict[str, Any]) -> None:
    """The image is Ray 2.60.0 (the version pyproject pins), Python 3.11, with CUDA."""
    image = cfg["docker"]["image"]
    assert image.startswith("rayproject/ray:") and "2.60.0" in image
    assert "py311" in image and image.endswith("-gpu")
    assert cfg["docker"]["container_name"]
    pyproject = (YAML_PATH.parent / "pyproject.toml").read_text()
    assert "ray[default,data,train]==2.60.0" in pyproject


def test_setup_installs_this_project(cfg: dict[str, Any]) -> None:
    """The project is mounted and pip-installed on every node (setup_commands run on all nodes)."""
    cmds = [c for c in cfg["setup_commands"] if "pip install" in c]
    mounts = cfg.get("file_mounts", {})
    project = [remote for remote, local in mounts.items() if local in (".", "./")]
    from_mount = any(remote in c for c in cmds for remote in project)
    from_git = any("liif-pipeline @ git+" in c for c in cmds)
    assert from_mount or from_git, f"no setup command installs the project: {cmds}"


def test_start_commands_and_auth_mode(cfg: dict[str, Any]) -> None:
    """Head starts with the autoscaling config; workers join the head; RAY_AUTH_MODE is explicit
    and the same on both (a mismatch breaks every connection)."""
    head = " ".join(cfg["head_start_ray_commands"])
    worker = " ".join(cfg["worker_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    modes = [c.split("RAY_AUTH_MODE=")[1].split()[0] for c in (head, worker)]
    assert modes[0] == modes[1] and modes[0] in ("token", "disabled")
    if modes[0] == "token":
        token_path = head.split("RAY_AUTH_TOKEN_PATH=")[1].split()[0]
        assert token_path.startswith(tuple(cfg["file_mounts"])), "the token file is not mounted"


def test_validates_against_ray_schema(cfg: dict[str, Any]) -> None:
    """Ray's own checks: defaults filled in as `ray up` does, then its JSON schema + sanity checks."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    pytest.importorskip("jsonschema")
    prepared = util.prepare_config(copy.deepcopy(cfg))
    util.validate_config(prepared)
    assert prepared["head_node_type"] == cfg["head_node_type"]


def test_schema_file_rejects_a_broken_copy(cfg: dict[str, Any]) -> None:
    """Control: the same schema check fails on a typo'd key, so the test above can fail."""
    jsonschema = pytest.importorskip("jsonschema")
    ray_autoscaler = pytest.importorskip("ray.autoscaler")
    schema_path = Path(ray_autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(cfg, schema)
    broken = copy.deepcopy(cfg)
    head = broken["available_node_types"][broken["head_node_type"]]
    head["resource"] = head.pop("resources")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
