"""The alerting rules (etc/prometheus): promtool accepts them and their unit tests pass; every alert
has a test where it fires and is quiet on the healthy cluster; every alert tells what to do; every
series a rule reads is one the daemon exports, with the labels the rule uses; the scrape-config
example is a valid Prometheus configuration."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promql import SCRAPE_LABELS, exported, family_of, grouping_labels, matched_labels, metric_names

PROMETHEUS = Path(__file__).resolve().parents[2] / "etc" / "prometheus"
RULES = PROMETHEUS / "ceres-supervisor.rules.yml"
TESTS = PROMETHEUS / "tests"
SCRAPE = PROMETHEUS / "scrape-config.example.yml"
NOT_OURS = {
    "up": "Prometheus's own series for each scrape target",
    "ceres_supervisor_last_backup_success_timestamp_seconds": "exported by the backup scheduler, once backups "
    "are configured (absent until then, which keeps CeresBackupTooOld quiet)",
}


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("no promtool on PATH: run scripts/ensure-promtool.sh (make test does)", pytrace=False)
    return subprocess.run(
        [found, *map(str, args)], capture_output=True, text=True, check=False, cwd=cwd, timeout=120
    )


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def unit_tests() -> list[dict[str, Any]]:
    return [
        test for path in sorted(TESTS.glob("*.yml")) for test in yaml.safe_load(path.read_text())["tests"]
    ]


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", *sorted(TESTS.glob("*.yml")))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_fires_in_a_test_and_is_quiet_on_the_healthy_cluster() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names)) >= 14
    fired = {
        alert["exp_labels"]["alertname"]
        for test in unit_tests()
        for case in test["alert_rule_test"]
        for alert in case["exp_alerts"]
    }
    assert set(names) <= fired, sorted(set(names) - fired)
    healthy = next(t for t in unit_tests() if t["name"].startswith("a healthy cluster"))
    quiet = {case["alertname"] for case in healthy["alert_rule_test"] if case["exp_alerts"] == []}
    assert set(names) == quiet


def test_every_alert_says_what_is_wrong_and_what_to_do() -> None:
    for rule in rules():
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description"}, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert (
            "ceres-supervisor" in annotations["description"] or "systemctl" in annotations["description"]
        ), f"{rule['alert']}: the description names no command to run"


def test_every_series_a_rule_reads_is_exported_with_its_labels(tmp_path: Path) -> None:
    families = exported(tmp_path)
    for rule in rules():
        expr = rule["expr"]
        for name in metric_names(expr):
            if name in NOT_OURS:
                continue
            family = family_of(name, families)
            assert family is not None, f"{rule['alert']}: {name} is not exported ({sorted(families)})"
            labels = families[family][1] | SCRAPE_LABELS
            wanted = grouping_labels(expr) | matched_labels(expr)
            assert wanted <= labels, f"{rule['alert']}: labels {sorted(wanted - labels)} are not on {name}"


def test_the_scrape_config_example_is_valid_and_sends_the_token(tmp_path: Path) -> None:
    text = SCRAPE.read_text()
    doc = yaml.safe_load(text)
    job = doc["scrape_configs"][0]
    assert job["job_name"] == "ceres-supervisor"  # what the rules select `up` by
    assert job["authorization"]["type"] == "Bearer" and job["authorization"]["credentials_file"]
    # promtool checks the files it names exist: point them at copies in tmp_path.
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    shutil.copy(RULES, tmp_path / "rules.yml")
    text = text.replace(job["authorization"]["credentials_file"], str(token))
    for rule_file in doc.get("rule_files", []):
        text = text.replace(rule_file, str(tmp_path / "rules.yml"))
    (tmp_path / "prometheus.yml").write_text(text)
    checked = promtool("check", "config", tmp_path / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
