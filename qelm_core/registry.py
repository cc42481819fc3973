"""Alias-based promotion: `challenger` replaces `champion` only when it is better on the same test data.

The decision is plain Python over the versions' tags (ppl_test: the version's own test
perplexity; test_data_hash); tracking.py
does the MLflow calls. Nothing moves unless every check passed, so a refused promotion leaves the
registry exactly as it was.
"""
from __future__ import annotations

from dataclasses import dataclass

from qelm_core import tracking
from qelm_core.config import QelmError

GATED_METRIC = "ppl_test"  # the registered model's own test perplexity (not the mean over seeds); lower is better


class PromotionError(QelmError):
    pass


@dataclass
class Decision:
    promote: bool
    reason: str
    rows: list[tuple[str, str, str, str]]  # (alias, version, ppl_test, test_data_hash)


def _row(alias: str, version) -> tuple[str, str, str, str]:
    if version is None:
        return (alias, "-", "-", "-")
    return (alias, str(version.version), version.tags.get(GATED_METRIC, "?"), version.tags.get("test_data_hash", "?"))


def decide(challenger, champion, force: bool) -> Decision:
    rows = [_row("champion", champion), _row("challenger", challenger)]
    if challenger is None:
        raise PromotionError("no `challenger` version to promote; run the pipeline (dvc repro) to register one")
    for version, alias in ((challenger, "challenger"), (champion, "champion")):
        if version is not None and GATED_METRIC not in version.tags:
            raise PromotionError(f"{alias} version {version.version} has no {GATED_METRIC} tag; re-run `qelm register`")
    if champion is None:
        return Decision(True, "first model: no champion yet", rows)
    if champion.version == challenger.version:
        return Decision(False, f"version {challenger.version} already is the champion", rows)
    if challenger.tags.get("test_data_hash") != champion.tags.get("test_data_hash"):
        raise PromotionError(
            f"challenger v{challenger.version} was evaluated on different test data than champion v{champion.version} "
            f"({challenger.tags.get('test_data_hash')} vs {champion.tags.get('test_data_hash')}); re-evaluate both "
            "on the same data")
    new, old = float(challenger.tags[GATED_METRIC]), float(champion.tags[GATED_METRIC])
    if new < old:
        return Decision(True, f"{GATED_METRIC} {new:.3f} < {old:.3f}", rows)
    if force:
        return Decision(True, f"forced: {GATED_METRIC} {new:.3f} is not better than {old:.3f}", rows)
    return Decision(False, f"kept champion: {GATED_METRIC} {new:.3f} is not better than {old:.3f}", rows)


def promote(name: str, force: bool = False) -> Decision:
    challenger = tracking.alias_version(name, "challenger")
    champion = tracking.alias_version(name, "champion")
    decision = decide(challenger, champion, force)
    if decision.promote:
        check_loads(name, challenger.version)
        tracking.set_alias(name, "champion", challenger.version, decision.reason)
    return decision


def check_loads(name: str, version: str) -> None:
    """A champion must load and answer; a broken model file is refused before any alias moves."""
    import pandas as pd

    from mlflow.exceptions import MlflowException

    try:
        model = tracking.load_registered(f"models:/{name}/{version}")
        model.predict(pd.DataFrame({"context_ids": [[0] * int(model.metadata.metadata["context"])]}))
    except (MlflowException, QelmError, OSError) as err:
        raise PromotionError(f"{name} v{version} does not load ({str(err).splitlines()[0][:200]}); "
                             "re-run `qelm register` before promoting") from None
