"""The laptop instance (root dagster.yaml) monitors runs like the deployed ones: a stuck run is failed
(and reported by the run-failure sensor) instead of holding its slot and its staging forever."""

import shutil

from covid_lakehouse.runtime import REPO_ROOT


def test_the_root_instance_fails_stuck_and_overlong_runs(tmp_path):
    from dagster._core.instance.config import dagster_instance_config

    shutil.copy(REPO_ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))  # validated against Dagster's schema
    monitoring = config.get("run_monitoring") or {}
    assert monitoring.get("enabled") is True
    assert 0 < monitoring.get("start_timeout_seconds", 0) <= 600
    assert 0 < monitoring.get("max_runtime_seconds", 0) <= 24 * 3600  # the default for a run without a tag
