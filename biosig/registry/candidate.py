"""`@candidate` with a rule: a new fine-tuned version takes the alias only when it is at least as good as the
version holding it, by the selection metric, on the same test split (same test digest); or when no version
holds it; or when forced. Otherwise the version is registered without the alias and says why.

The decision is made and applied under the promotion lock (so concurrent fine-tunes are judged one after
the other and leave exactly one holder) and recorded on the version (`candidate.*` tags: decision, reason,
the holder it was compared with, when, by which run), and on a replaced holder (`candidate.holds=false`,
`candidate.replaced_by`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math

import mlflow
from mlflow.tracking import MlflowClient

from biosig.registry.promotion import promotion_lock
from biosig.registry.publish import CANDIDATE_ALIAS
from biosig.tracking.tags import TEST_DIGEST_TAG, TEST_METRIC_TAG_PREFIX

TAG_PREFIX = "candidate."


@dataclasses.dataclass
class CandidateDecision:
    taken: bool
    reason: str
    holder: str = ""  # the version that held @candidate when this one was judged

    def describe(self) -> str:
        verdict = f"it takes @{CANDIDATE_ALIAS}" if self.taken else f"it does not take @{CANDIDATE_ALIAS}"
        return f"{verdict}: {self.reason}"


def claim_candidate(name: str, version: str, *, metric: str, force: bool = False,
                    run_id: str = "") -> CandidateDecision:
    """Judge `version` of `name` against the @candidate holder and move the alias when it wins (see module)."""
    client = MlflowClient()
    with promotion_lock(mlflow.get_tracking_uri(), name):
        holder = str(client.get_registered_model(name).aliases.get(CANDIDATE_ALIAS, ""))
        decision = judge(client, name, version, holder, metric, force)
        at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        if decision.taken:
            client.set_registered_model_alias(name, CANDIDATE_ALIAS, version)
            if holder and holder != version:
                for key, value in {"holds": "false", "replaced_by": version, "replaced_at": at}.items():
                    client.set_model_version_tag(name, holder, TAG_PREFIX + key, value)
        record = {"decision": "taken" if decision.taken else "declined", "reason": decision.reason[:5000],
                  "compared_with": holder, "metric": metric, "at": at, "run_id": run_id,
                  **({"holds": "true"} if decision.taken else {})}
        for key, value in record.items():
            client.set_model_version_tag(name, version, TAG_PREFIX + key, value)
    return decision


def judge(client: MlflowClient, name: str, version: str, holder: str, metric: str, force: bool) -> CandidateDecision:
    if force:
        return CandidateDecision(True, "force_candidate=true", holder)
    if not holder or holder == version:
        return CandidateDecision(True, f"no version held @{CANDIDATE_ALIAS}", holder)
    ours, theirs = client.get_model_version(name, version).tags, client.get_model_version(name, holder).tags
    if ours.get(TEST_DIGEST_TAG) != theirs.get(TEST_DIGEST_TAG):
        return CandidateDecision(False, f"version {holder} holds it and was tested on another test split (digest "
                                 f"{theirs.get(TEST_DIGEST_TAG, 'none')[:12]} vs "
                                 f"{ours.get(TEST_DIGEST_TAG, 'none')[:12]}): not comparable; `biosig compare` "
                                 "them on one split, or fine-tune with force_candidate=true", holder)
    mine, held = _value(ours, metric), _value(theirs, metric)
    if not math.isfinite(held):
        return CandidateDecision(True, f"version {holder} holds it but has no test {metric}", holder)
    better = mine <= held if metric == "loss" else mine >= held
    relation = ("<=" if better else ">") if metric == "loss" else (">=" if better else "<")
    return CandidateDecision(better, f"test {metric} {mine:.4f} {relation} {held:.4f} of version {holder} on the "
                             "same test split", holder)


def _value(tags: dict[str, str], metric: str) -> float:
    try:
        return float(tags.get(TEST_METRIC_TAG_PREFIX + metric, "nan"))
    except ValueError:
        return math.nan
