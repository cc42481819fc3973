"""Hardware cost report: the ansatz as a Qiskit circuit, transpiled for a fake IBM backend."""
import numpy as np
import pytest

from qelm_core.quantum.circuits import ansatz
from qelm_core.config import QelmError
from qelm_core.quantum.hardware import count_two_qubit_gates, cost_report, qiskit_circuit


@pytest.mark.parametrize("entangler, gate", [("cz", "cz"), ("cnot", "cx"), ("cphase", "cp")])
def test_qiskit_circuit_is_the_spec_gate_for_gate(entangler, gate):
    spec = ansatz(3, 2, 2, entangler)
    ops = qiskit_circuit(spec).count_ops()
    n_rot = sum(1 for op in spec.ops if op[0] == "rot")
    assert ops[gate] == count_two_qubit_gates(spec) == 2 * 2 * 3
    assert ops["ry"] == 2 * 3 + 2 * n_rot and ops["rz"] == n_rot and ops["measure"] == 3
    bound = qiskit_circuit(spec, np.zeros(spec.weight_shape))
    assert len(bound.parameters) == spec.context * spec.n_qubits  # only the data angles stay symbolic


def test_cost_report_of_a_tiny_spec():
    spec = ansatz(4, 2, 1)
    weights = np.random.default_rng(0).normal(size=spec.weight_shape)
    m = cost_report(spec, "FakeGuadalupeV2", shots=1000, positions=7, optimization_level=1, seed=0, weights=weights)
    assert m["hw_backend"] == "FakeGuadalupeV2" and m["hw_backend_qubits"] == 16
    assert m["hw_depth"] > 0 and m["hw_gates"] >= m["hw_two_qubit_gates"] >= count_two_qubit_gates(spec) == 8
    assert m["hw_shots_total"] == 7000
    assert 0 < m["hw_circuit_seconds"] < 1e-2  # microseconds, from the backend's instruction durations
    assert m["hw_est_seconds"] == pytest.approx(7000 * (m["hw_circuit_seconds"] + m["hw_shot_overhead_seconds"]))
    again = cost_report(spec, "FakeGuadalupeV2", 1000, 7, 1, 0, weights)
    assert again == m and m["hw_circuits_per_position"] == 1  # the transpiler seed is fixed
    tied = cost_report(spec, "FakeGuadalupeV2", 1000, 7, 1, 0, weights, circuits_per_position=16)  # one per candidate
    assert tied["hw_shots_total"] == 16 * 7000 and tied["hw_est_seconds"] == pytest.approx(16 * m["hw_est_seconds"])


def test_more_qubits_than_the_backend_is_one_line():
    with pytest.raises(QelmError, match="has 5 qubits but the circuit needs 6") as err:
        cost_report(ansatz(6, 1, 1), "FakeManilaV2", shots=10, positions=1)
    assert "\n" not in str(err.value)


def test_unknown_fake_backend_is_one_line():
    with pytest.raises(QelmError, match="evaluate.hardware_backend: unknown fake backend 'FakeNopeV2'"):
        cost_report(ansatz(2, 1, 1), "FakeNopeV2", shots=10, positions=1)


@pytest.mark.slow
def test_eval_json_holds_the_hardware_cost(tiny_repo):
    import json

    m = json.loads((tiny_repo / "metrics" / "eval.json").read_text())
    assert m["hw_backend"] == "FakeGuadalupeV2" and m["hw_qubits"] == 4
    assert m["hw_depth"] > 0 and m["hw_two_qubit_gates"] >= m["hw_spec_two_qubit_gates"] == 2 * 2 * 4
    assert m["hw_shots_total"] == 500 * m["test_tokens"] and m["hw_est_seconds"] > 0
