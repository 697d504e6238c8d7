"""@candidate by rule: a fine-tuned version takes it only when at least as good as the holder on the same test
split (or none holds it, or forced); the decision is recorded on the versions; concurrent claims leave one holder."""

import subprocess
import sys
import textwrap

import mlflow
from mlflow.tracking import MlflowClient

from biosig.registry.candidate import claim_candidate
from biosig.registry.publish import publish_version

NAME = "ttm_ppg-ecg_c1024_p128_m40_mae_finetuned"


def registered(auroc: float, digest: str = "d" * 64, loss: float = 0.5) -> str:
    """A version without an alias, tagged with its test metrics as finetune tags them."""
    with mlflow.start_run() as run:
        mlflow.log_text("x", "model/MLmodel")
    mv = publish_version(NAME, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id, alias=None,
                         tags={"biosig.test.digest": digest, "biosig.test.auroc": f"{auroc:.6g}",
                               "biosig.test.loss": f"{loss:.6g}"})
    return str(mv.version)


def holder() -> str:
    return str(MlflowClient().get_registered_model(NAME).aliases.get("candidate", ""))


def tags(version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(NAME, version).tags


def test_the_first_version_takes_it_a_worse_one_does_not_a_better_one_does(workdir):
    first = registered(0.80)
    assert claim_candidate(NAME, first, metric="auroc").taken and holder() == first
    worse = registered(0.70)
    decision = claim_candidate(NAME, worse, metric="auroc", run_id="r2")
    assert not decision.taken and holder() == first
    assert "test auroc 0.7000 < 0.8000 of version 1 on the same test split" in decision.reason
    assert tags(worse)["candidate.decision"] == "declined" and tags(worse)["candidate.compared_with"] == first
    assert tags(worse)["candidate.run_id"] == "r2"
    better = registered(0.80)  # a tie is "at least as good"
    assert claim_candidate(NAME, better, metric="auroc").taken and holder() == better
    assert tags(first)["candidate.holds"] == "false" and tags(first)["candidate.replaced_by"] == better
    assert tags(better)["candidate.decision"] == "taken" and tags(better)["candidate.holds"] == "true"


def test_loss_is_lower_is_better(workdir):
    claim_candidate(NAME, registered(0.8, loss=0.4), metric="loss")
    assert not claim_candidate(NAME, registered(0.9, loss=0.6), metric="loss").taken
    assert claim_candidate(NAME, registered(0.1, loss=0.3), metric="loss").taken


def test_another_test_split_is_not_comparable_unless_forced(workdir):
    first = registered(0.80)
    claim_candidate(NAME, first, metric="auroc")
    elsewhere = registered(0.99, digest="e" * 64)
    decision = claim_candidate(NAME, elsewhere, metric="auroc")
    assert not decision.taken and "another test split" in decision.reason and holder() == first
    forced = registered(0.10, digest="e" * 64)
    assert claim_candidate(NAME, forced, metric="auroc", force=True).taken and holder() == forced
    assert tags(forced)["candidate.reason"] == "force_candidate=true"


def test_concurrent_claims_leave_one_holder_the_best(workdir):
    claim_candidate(NAME, registered(0.50), metric="auroc")
    versions = {registered(auroc): auroc for auroc in (0.60, 0.90, 0.70)}
    script = textwrap.dedent("""
        import sys, mlflow
        from biosig.registry.candidate import claim_candidate
        mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
        claim_candidate(sys.argv[2], sys.argv[3], metric="auroc")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, mlflow.get_tracking_uri(), NAME, v]) for v in versions]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert versions[holder()] == 0.90
    holding = [v for v in ["1", *versions] if tags(v).get("candidate.holds") == "true"]
    assert holding == [holder()]  # every other version that took it along the way records that it was replaced
