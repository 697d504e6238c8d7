"""Promotion policies: validation, every rule kind, champion comparison, dry run, stage sync, audit, race."""

import subprocess
import sys
import textwrap

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.errors import ConfigError
from biosig.registry.policies import load_policies, load_policy, select_policy
from biosig.registry.publish import publish_version
from tests.helpers import finished_runs

NAME = "ttm_ppg-ecg_c1024_p128_m40_mae_finetuned"
POLICY = """\
name: test-quality
applies_to: ["ttm_*_finetuned"]
sync_stages: true
targets:
  staging:
    metrics: ["test_auroc >= 0.80", "test_f1 >= 0.70"]
    min_class_recall: 0.40
  production:
    requires_alias: staging
    metrics: ["test_auroc >= 0.85"]
    champion: {metric: test_auroc, min_delta: 0.01}
"""
GOOD = {"test_auroc": 0.90, "test_f1": 0.80, "test_recall.poor": 0.85, "test_recall.good": 0.70}


@pytest.fixture
def policies(workdir):
    path = workdir / "policies"
    path.mkdir()
    (path / "quality.yaml").write_text(POLICY)
    (path / "default.yaml").write_text("applies_to: '*'\ntargets:\n  staging:\n    metrics: ['test_auroc >= 0.99']\n")
    return path


def version(metrics=GOOD, digest="d" * 64, name=NAME):
    """A registered version whose source run logged `metrics`, like finetune registers them."""
    with mlflow.start_run() as run:
        mlflow.log_metrics(metrics)
        mlflow.log_text("x", "model/MLmodel")
    mv = publish_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                         tags={"biosig.test.digest": digest, "biosig.parent.name": name[:-10],
                               "biosig.dataset.name": "PPG_10s_x_480windows_primary"})
    return str(mv.version)


def promote(policies, *args):
    return main(["promote", "--model", NAME, "--policies", str(policies), *args])


def aliases():
    return {k: str(v) for k, v in MlflowClient().get_registered_model(NAME).aliases.items()}


def test_policy_errors_name_file_and_line(tmp_path):
    cases = {
        "targets:\n  staging:\n    metrics: ['test_auroc >= 0.8']\n    max_ece: 0.1\napplies_to: '*'\n":
            r"bad.yaml:4: unknown key 'max_ece' in target 'staging'",
        "applies_to: '*'\ntargets:\n  staging:\n    metrics:\n      - 'test_auroc => 0.8'\n":
            r"bad.yaml:5: unknown operator '=>'",
        "applies_to: '*'\ntargets:\n  production: {}\n": r"bad.yaml:3: target 'production' has no thresholds",
        "applies_to: '*'\ntargets:\n  prod:\n    metrics: []\n": r"bad.yaml:3: unknown target 'prod'",
        "applies_to: '*'\ntargets: [staging\n": r"bad.yaml:\d+: not valid YAML",
        "targets:\n  staging:\n    metrics: ['test_f1 >= 0.7']\n": r"bad.yaml:1: missing required key 'applies_to'",
        "applies_to: '*'\ntargets:\n  staging:\n    metrics: ['test_f1 >= high']\n":
            r"bad.yaml:4: threshold 'high' .* is not a number",
    }
    for text, message in cases.items():
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_policy(tmp_path / "bad.yaml")


def test_shipped_policies_load_and_select_by_model_family():
    shipped = load_policies("registry_policies")
    assert {p.name for p in shipped} >= {"default", "ppg-quality", "eeg-remission"}
    assert select_policy(shipped, NAME).name == "ppg-quality"
    assert select_policy(shipped, "mamba2_eeg_d256_l2_m20_mae_finetuned").name == "eeg-remission"
    assert select_policy(shipped, "something_else").name == "default"
    with pytest.raises(ConfigError, match="policy 'eeg-remission' .* not to model"):
        select_policy(shipped, NAME, "eeg-remission")


def test_staging_then_production_with_stage_sync_and_audit(policies, capsys):
    v1 = version()
    assert promote(policies, "--to", "staging") == 0  # @candidate by default
    assert aliases() == {"candidate": v1, "staging": v1}
    mv = MlflowClient().get_model_version(NAME, v1)
    assert mv.current_stage == "Staging" and mv.tags["promotion.staging.decision"] == "promoted"
    assert "test_auroc" in mv.tags["promotion.staging.metrics"]
    assert promote(policies, "--to", "production", "--version", v1) == 0
    assert aliases()["production"] == v1 and MlflowClient().get_model_version(NAME, v1).current_stage == "Production"
    v2 = version({**GOOD, "test_auroc": 0.95})
    assert promote(policies, "--to", "staging", "--version", v2) == 0
    assert promote(policies, "--to", "production", "--version", v2) == 0  # beats v1 by 0.05 >= 0.01
    client = MlflowClient()
    assert aliases()["production"] == v2 and client.get_model_version(NAME, v1).current_stage == "Archived"
    assert "promoted" in capsys.readouterr().out
    assert main(["registry", "history", NAME]) == 0
    out = capsys.readouterr().out
    assert "4 promotion attempt(s)" in out and out.count("promoted") == 4
    assert main(["registry", "show", NAME]) == 0
    shown = capsys.readouterr().out
    assert "production" in shown and "0.950" in shown and "Archived" in shown


@pytest.mark.parametrize("metrics, target, reason", [
    ({**GOOD, "test_auroc": 0.70}, "staging", "test_auroc >= 0.8: 0.7000"),
    ({k: v for k, v in GOOD.items() if k != "test_f1"}, "staging", "test_f1 >= 0.7: missing from the run"),
    ({**GOOD, "test_recall.good": 0.05}, "staging", "min_class_recall: 0.0500 (good)"),
    (GOOD, "production", "requires_alias staging: never held @staging"),
])
def test_each_failing_rule_is_recorded_and_moves_nothing(policies, metrics, target, reason, capsys):
    v = version(metrics)
    assert promote(policies, "--to", target, "--version", v) == 1
    assert "FAIL" in capsys.readouterr().out
    assert target not in aliases()
    mv = MlflowClient().get_model_version(NAME, v)
    assert mv.tags[f"promotion.{target}.decision"] == "rejected" and reason in mv.tags[f"promotion.{target}.reason"]
    assert mv.current_stage == "None"
    (run,) = [r for r in finished_runs("FINISHED") if r.data.tags.get("biosig.command") == "promote"]
    assert run.data.tags["biosig.promote.decision"] == "rejected"  # a rejection is a finished audit record


def test_champion_worse_and_not_comparable(policies):
    v1 = version()
    assert promote(policies, "--to", "staging", "--version", v1) == 0
    assert promote(policies, "--to", "production", "--version", v1) == 0
    worse = version({**GOOD, "test_auroc": 0.905})  # better, but by less than min_delta
    assert promote(policies, "--to", "staging", "--version", worse) == 0
    assert promote(policies, "--to", "production", "--version", worse) == 1
    assert ">= 0.9100 (v1 0.9000 + 0.01)" in MlflowClient().get_model_version(NAME, worse).tags[
        "promotion.production.metrics"]
    other_data = version({**GOOD, "test_auroc": 0.99}, digest="e" * 64)
    assert promote(policies, "--to", "staging", "--version", other_data) == 0
    assert promote(policies, "--to", "production", "--version", other_data) == 1
    assert "not comparable" in MlflowClient().get_model_version(NAME, other_data).tags["promotion.production.reason"]
    assert aliases()["production"] == v1


def test_dry_run_changes_nothing(policies, capsys):
    v = version()
    assert promote(policies, "--to", "staging", "--dry-run", "true") == 0
    out = capsys.readouterr().out
    assert "rule" in out and "test_auroc >= 0.8" in out and "pass" in out and "nothing changed" in out
    assert aliases() == {"candidate": v}
    assert not any(k.startswith("promotion.") for k in MlflowClient().get_model_version(NAME, v).tags)
    assert len(finished_runs()) == 1  # only the run that produced the version


def test_bad_input_is_a_clear_error_and_moves_nothing(policies, capsys):
    assert main(["promote", "--model", "nope_finetuned", "--policies", str(policies)]) == 2
    assert "no registered model named 'nope_finetuned'" in capsys.readouterr().err
    version()
    assert promote(policies, "--version", "9") == 2
    assert "has no version 9" in capsys.readouterr().err
    assert promote(policies, "--policy", "default", "--to", "production") == 2
    assert "policy 'default'" in capsys.readouterr().err and "no rules for target 'production'" in \
        finished_runs("FAILED")[0].data.tags["biosig.error"]
    assert main(["promote", "--model", NAME, "--policies", str(policies / "missing.yaml")]) == 2
    assert "config key 'policies': file not found" in capsys.readouterr().err
    with mlflow.start_run() as run:
        pass
    MlflowClient().create_model_version(NAME, f"{run.info.artifact_uri}/m", run_id=run.info.run_id)
    assert promote(policies, "--version", "2") == 2
    assert "logged no test_* metrics" in capsys.readouterr().err
    assert aliases() == {"candidate": "1"}


@pytest.mark.slow
def test_two_simultaneous_production_promotions_leave_one_holder(policies, workdir):
    v1, v2 = version({**GOOD, "test_auroc": 0.90}), version({**GOOD, "test_auroc": 0.95})
    for v in (v1, v2):
        assert promote(policies, "--to", "staging", "--version", v) == 0
    code = textwrap.dedent("""
        import sys
        from biosig.cli import main
        sys.exit(main(["promote", "--model", sys.argv[1], "--version", sys.argv[2], "--to", "production",
                       "--policies", sys.argv[3]]))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, NAME, v, str(policies)], cwd=workdir,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in (v1, v2)]
    codes = [p.wait(timeout=300) for p in procs]
    history = [h for h in __import__("biosig.registry.promotion", fromlist=["x"]).promotion_history(
        MlflowClient(), NAME) if h["target"] == "production"]
    assert len(history) == 2 and {h["version"] for h in history} == {v1, v2}
    holder = aliases()["production"]
    promoted = [h for h in history if h["decision"] == "promoted"]
    # Serialised: v2 always ends up holding production; v1 either never got it (rejected against v2)
    # or got it first and was then beaten by v2.
    assert holder == v2 and promoted[-1]["version"] == v2 and sorted(codes) in ([0, 0], [0, 1])
    stages = {v: MlflowClient().get_model_version(NAME, v).current_stage for v in (v1, v2)}
    assert list(stages.values()).count("Production") == 1


@pytest.mark.slow
def test_first_registration_of_a_new_name_from_four_processes_at_once(workdir):
    """Check-then-create failed one of two concurrent first registrations (8 of 8 tries); create-and-
    tolerate lets every process register its version."""
    code = textwrap.dedent("""
        import sys, mlflow
        from biosig.registry.publish import publish_version
        with mlflow.start_run() as run:
            mlflow.log_text("x", "model/MLmodel")
        mv = publish_version(sys.argv[1], source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags={})
        print(mv.version)
    """)
    MlflowClient().search_experiments()  # create the store's tables once: the race under test is the registry's
    procs = [subprocess.Popen([sys.executable, "-c", code, "race_model_finetuned"], cwd=workdir,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0, 0], [err[-800:] for _, _, err in results]
    versions = MlflowClient().search_model_versions("name = 'race_model_finetuned'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]


def test_a_replaced_holder_is_recorded_and_a_late_replacement_is_said(policies, workdir, capsys, monkeypatch):
    v1, v2, v3 = (version({**GOOD, "test_auroc": auroc}) for auroc in (0.90, 0.95, 0.97))
    for v in (v1, v2):
        assert promote(policies, "--to", "staging", "--version", v) == 0
    client = MlflowClient()
    tags = client.get_model_version(NAME, v1).tags
    assert tags["promotion.staging.holds"] == "false" and tags["promotion.staging.replaced_by"] == v2
    assert tags["promotion.staging.replaced_at"] and tags["promotion.staging.replaced_by_run"]
    new = client.get_model_version(NAME, v2).tags
    assert new["promotion.staging.holds"] == "true" and new["promotion.staging.replaced"] == v1
    assert f"now holds @staging (replacing version {v1})" in capsys.readouterr().out

    # another process moves the alias on between our decision and our summary: the command says so
    import biosig.registry.promotion as promotion

    record = promotion._record

    def then_a_concurrent_promotion(client, decision):
        record(client, decision)
        client.set_registered_model_alias(NAME, "staging", v2)

    monkeypatch.setattr(promotion, "_record", then_a_concurrent_promotion)
    assert promote(policies, "--to", "staging", "--version", v3) == 0
    out = capsys.readouterr().out
    assert f"promoted, then replaced: {NAME} version {v3} took @staging, but version {v2} holds it now" in out
    (run,) = [r for r in finished_runs() if r.data.tags.get("biosig.command") == "promote"
              and r.data.tags.get("biosig.promote.version") == v3]
    assert run.data.tags["biosig.promote.replaced_by"] == v2
