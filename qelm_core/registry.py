"""Alias-based promotion, one gate for every registered model: `challenger` replaces `champion` only
when it is better on the same test data, and only if it loads and answers.

Each version carries its gate in its tags: `gate_metric` (the tag holding the version's own test
score: `ppl_test` for the LM student, `accuracy_test` for the classifier), `gate_better` (`lower` or
`higher`) and `test_data_hash`. The decision is plain Python over those tags; tracking.py does the
MLflow calls. Nothing moves unless every check passed, so a refused promotion leaves the registry
exactly as it was.
"""
from __future__ import annotations

from dataclasses import dataclass

from qelm_core import tracking
from qelm_core.config import QelmError

# Versions registered before the gate tags existed are LM students gated on their test perplexity.
DEFAULT_GATE = ("ppl_test", "lower")


def gate_tags(metric: str, better: str, value: float, test_data_hash: str) -> dict[str, str]:
    """The tags a registration writes so that `promote` can judge the version."""
    if better not in ("lower", "higher"):
        raise ValueError(f"gate_better must be 'lower' or 'higher', got {better!r}")
    return {"gate_metric": metric, "gate_better": better, metric: str(value), "test_data_hash": test_data_hash}


class PromotionError(QelmError):
    pass


@dataclass
class Decision:
    promote: bool
    reason: str
    rows: list[tuple[str, str, str, str]]  # (alias, version, gated metric value, test_data_hash)
    metric: str = DEFAULT_GATE[0]


def gate_of(version) -> tuple[str, str]:
    """(metric tag, "lower" | "higher") of a registered version."""
    return version.tags.get("gate_metric", DEFAULT_GATE[0]), version.tags.get("gate_better", DEFAULT_GATE[1])


def _row(alias: str, version, metric: str) -> tuple[str, str, str, str]:
    if version is None:
        return (alias, "-", "-", "-")
    return (alias, str(version.version), version.tags.get(metric, "?"), version.tags.get("test_data_hash", "?"))


def decide(challenger, champion, force: bool) -> Decision:
    if challenger is None:
        raise PromotionError("no `challenger` version to promote; run the pipeline (dvc repro) to register one")
    metric, better = gate_of(challenger)
    rows = [_row("champion", champion, metric), _row("challenger", challenger, metric)]
    if champion is not None and gate_of(champion) != (metric, better):
        raise PromotionError(f"champion v{champion.version} is gated on {gate_of(champion)[0]} and challenger "
                             f"v{challenger.version} on {metric}; register both with the same gate")
    for version, alias in ((challenger, "challenger"), (champion, "champion")):
        if version is not None and metric not in version.tags:
            raise PromotionError(f"{alias} version {version.version} has no {metric} tag; re-run its register stage")
    if champion is None:
        return Decision(True, "first model: no champion yet", rows, metric)
    if champion.version == challenger.version:
        return Decision(False, f"version {challenger.version} already is the champion", rows, metric)
    if challenger.tags.get("test_data_hash") != champion.tags.get("test_data_hash"):
        raise PromotionError(
            f"challenger v{challenger.version} was evaluated on different test data than champion v{champion.version} "
            f"({challenger.tags.get('test_data_hash')} vs {champion.tags.get('test_data_hash')}); re-evaluate both "
            "on the same data")
    new, old = float(challenger.tags[metric]), float(champion.tags[metric])
    if (new < old) if better == "lower" else (new > old):
        return Decision(True, f"{metric} {new:.4g} {'<' if better == 'lower' else '>'} {old:.4g}", rows, metric)
    if force:
        return Decision(True, f"forced: {metric} {new:.4g} is not better than {old:.4g}", rows, metric)
    return Decision(False, f"kept champion: {metric} {new:.4g} is not better than {old:.4g}", rows, metric)


def promote(name: str, force: bool = False) -> Decision:
    challenger = tracking.alias_version(name, "challenger")
    champion = tracking.alias_version(name, "champion")
    decision = decide(challenger, champion, force)
    if decision.promote:
        check_loads(name, challenger.version)
        tracking.set_alias(name, "champion", challenger.version, decision.reason)
    return decision


def register_challenger(uri: str, name: str, tags: dict[str, str], result_path) -> dict:
    """Register `uri` as a new version of `name` aliased `challenger`; the very first version also
    becomes `champion` through the gate. The result is written to `result_path` last: if anything
    fails, the new version is deleted again (tracking.registered_version) and nothing is written."""
    from qelm_core.io import atomic_write_json

    with tracking.registered_version(uri, name, tags) as version:
        result = {"model_name": name, "version": int(version), "challenger": int(version)}
        if tracking.alias_version(name, "champion") is None:
            result["promotion"] = promote(name).reason
        result["champion"] = int(tracking.alias_version(name, "champion").version)
        atomic_write_json(result_path, result)
    return result


def check_loads(name: str, version: str) -> None:
    """A champion must load and answer its own probe request (qelm_core/pyfunc_base.py); a broken model
    file is refused before any alias moves."""
    from mlflow.exceptions import MlflowException

    try:
        model = tracking.load_registered(f"models:/{name}/{version}")
        model.predict(model.unwrap_python_model().probe())
    except (MlflowException, QelmError, OSError) as err:
        raise PromotionError(f"{name} v{version} does not load ({str(err).splitlines()[0][:200]}); "
                             "re-run its register stage before promoting") from None
