"""What the student would cost on real quantum hardware: transpiled size and an estimated wall time.

The circuit is built directly from `CircuitSpec.ops` with Qiskit gates (the same list the QNode and
the fused engine compile): "data_ry" -> RY(x[s, q]), "rot" -> RY(a) RZ(b) RY(c), "cnot" -> CX, "cz" -> CZ, "cphase" -> CP(phi), then
all wires measured. The data angles stay Qiskit Parameters: one transpiled template serves every test
position (that is how it would run on hardware, with the angles bound per position); the trained
circuit weights are bound when given, else they stay symbolic too.

`cost_report` transpiles the template for a backend (offline fake by default, e.g. FakeGuadalupeV2,
16 qubits; devices.py resolves the name) with a fixed seed and reports:

    hw_depth               depth of the transpiled circuit (measurements included)
    hw_two_qubit_gates     two-qubit gates after routing (the spec's CNOTs/CZs plus the SWAPs', in the
                           backend's native two-qubit gate)
    hw_gates               all gates after transpilation (measurements, barriers and delays excluded)
    hw_circuit_seconds     ESTIMATE of one shot's duration: the longest path through the transpiled
                           circuit with the backend's instruction durations (`backend.target`);
                           None when the backend publishes no durations (then hw_est_seconds
                           counts the per-shot overhead only)
    hw_shots_total         shots x test positions x circuits per position
    hw_circuits_per_position  1 for the basis read-out (one sampled circuit gives every token's probability);
                           V for the tied read-out (a compute-uncompute circuit per candidate token; the
                           transpiled figures above are the circuit without its final RY(-theta) layer, which
                           the transpiler merges into the last rotations with the cphase ring)
    hw_est_seconds         ESTIMATE of the QPU time to evaluate the test set:
                           shots x positions x (hw_circuit_seconds + SHOT_OVERHEAD_S)

SHOT_OVERHEAD_S is the repetition delay between shots (the backend's `default_rep_delay` where it
has one, else IBM's default 250 us): the qubits relax/reset between shots, and this overhead dominates
a ~10 us circuit. Queueing, compilation, classical communication and job overheads are NOT included:
the estimate is a lower bound on wall time, useful for comparing configurations, not a quote.
"""
from __future__ import annotations

import math

import numpy as np

from qelm_core.quantum.circuits import CircuitSpec
from qelm_core.config import QelmError
from qelm_core.quantum.devices import (_resolve_backend, fake_backend_names, fake_hardware, is_fake_backend_name,
                                      transpile_options)

SHOT_OVERHEAD_S = 250e-6  # IBM default repetition delay between shots (used if the backend has none)
NOT_GATES = ("measure", "barrier", "delay")


class HardwareError(QelmError):
    pass


def qiskit_circuit(spec: CircuitSpec, weights=None):
    """`spec` as a measured Qiskit circuit. weights: (k, L, n, 3) array-like to bind, or None (symbolic)."""
    from qiskit.circuit import ParameterVector, QuantumCircuit

    n, k, L = spec.n_qubits, spec.context, spec.layers
    d = spec.data_wires  # ancilla wires (if any) carry no data
    x = ParameterVector("x", k * d)  # x[s * d + q] = data angle of wire q, slot s
    if weights is None:
        w = ParameterVector("w", spec.n_weights)

        def weight(s, l, q, i):
            return w[((s * L + l) * n + q) * spec.weight_shape[-1] + i]
    else:
        values = np.asarray(weights, dtype=np.float64)
        if values.shape != spec.weight_shape:
            raise ValueError(f"weights must have shape {spec.weight_shape}, got {values.shape}")

        def weight(s, l, q, i):
            return float(values[s, l, q, i])

    qc = QuantumCircuit(n, n, name=f"qelm_n{n}_k{k}_L{L}")
    for op in spec.ops:
        kind = op[0]
        if kind == "data_ry":
            _, q, s = op
            qc.ry(x[s * d + q], q)
        elif kind == "rot":
            _, q, s, l = op
            qc.ry(weight(s, l, q, 0), q)
            qc.rz(weight(s, l, q, 1), q)
            qc.ry(weight(s, l, q, 2), q)
        elif kind == "cnot":
            qc.cx(op[1], op[2])
        elif kind == "cz":
            qc.cz(op[1], op[2])
        elif kind == "h":
            qc.h(op[1])
        elif kind == "cphase":
            _, a, b, s, l = op
            qc.cp(weight(s, l, a, 3), a, b)
        else:
            raise ValueError(f"unknown op {op!r}")
    qc.measure(range(n), range(n))
    return qc


def resolve_backend(name: str):
    """A Qiskit backend by name: a fake one offline, or a real IBM one (needs $QISKIT_IBM_TOKEN)."""
    if is_fake_backend_name(name) and name not in fake_backend_names():
        raise HardwareError(f"evaluate.hardware_backend: unknown fake backend {name!r}; "
                            "e.g. FakeGuadalupeV2 (16 qubits) or FakeKolkataV2 (27 qubits)")
    return _resolve_backend(fake_hardware(name))


def transpile_for(qc, backend, backend_name: str, optimization_level: int, seed: int):
    from qiskit import transpile

    if qc.num_qubits > backend.num_qubits:
        raise HardwareError(
            f"evaluate.hardware_backend: {backend_name} has {backend.num_qubits} qubits but the circuit needs "
            f"{qc.num_qubits}; pick a larger backend (e.g. FakeKolkataV2, 27 qubits) or fewer student.n_qubits")
    return transpile(qc, backend=backend, optimization_level=optimization_level, **transpile_options(seed))


def gate_counts(tqc) -> tuple[int, int]:
    """-> (all gates, two-qubit gates) of a circuit; measurements, barriers and delays are not gates."""
    gates = [inst.operation for inst in tqc.data if inst.operation.name not in NOT_GATES]
    return len(gates), sum(1 for op in gates if op.num_qubits == 2)


def circuit_seconds(tqc, backend) -> float | None:
    """Longest path through `tqc` with the backend's instruction durations, in seconds (None if unknown)."""
    from qiskit.circuit.exceptions import CircuitError

    target = getattr(backend, "target", None)
    if target is None:
        return None
    try:
        seconds = float(tqc.estimate_duration(target, unit="s"))
    except (CircuitError, KeyError, TypeError, ValueError):  # an instruction without a published duration
        return None
    return seconds if math.isfinite(seconds) else None


def shot_overhead(backend) -> float:
    value = getattr(backend, "default_rep_delay", None)
    return float(value) if isinstance(value, (int, float)) and value > 0 else SHOT_OVERHEAD_S


def cost_report(spec: CircuitSpec, backend_name: str, shots: int, positions: int, optimization_level: int = 1,
                seed: int = 0, weights=None, circuits_per_position: int = 1) -> dict:
    """Transpile the student's circuit for `backend_name` and estimate the cost of `positions` x `shots`
    (x `circuits_per_position`: V for the tied read-out, one compute-uncompute circuit per candidate)."""
    backend = resolve_backend(backend_name)
    tqc = transpile_for(qiskit_circuit(spec, weights), backend, backend_name, optimization_level, seed)
    gates, two_qubit = gate_counts(tqc)
    duration = circuit_seconds(tqc, backend)
    per_shot = shot_overhead(backend)
    shots_total = int(shots) * int(positions) * int(circuits_per_position)
    return {"hw_backend": backend_name, "hw_optimization_level": optimization_level, "hw_qubits": spec.n_qubits,
            "hw_backend_qubits": int(backend.num_qubits), "hw_depth": int(tqc.depth()),
            "hw_two_qubit_gates": int(two_qubit), "hw_gates": int(gates), "hw_spec_two_qubit_gates": count_two_qubit_gates(spec),
            "hw_circuit_seconds": duration, "hw_shot_overhead_seconds": per_shot, "hw_shots_total": shots_total,
            "hw_circuits_per_position": int(circuits_per_position),
            "hw_est_seconds": shots_total * ((duration or 0.0) + per_shot)}


def count_two_qubit_gates(spec: CircuitSpec) -> int:
    return sum(1 for op in spec.ops if op[0] in ("cnot", "cz", "cphase"))
