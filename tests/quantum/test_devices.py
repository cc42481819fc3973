"""Device selection and its one-line errors. No network: real IBM is mocked at QiskitRuntimeService."""
import pennylane as qml
import pytest

from qelm_core.config import DeviceParams, QelmError
from qelm_core.quantum.devices import DEVICE_NAMES, TOKEN_ENV, diff_method_for, fake_backend_names, make_device


def dp(**kw) -> DeviceParams:
    return DeviceParams(**kw)


def test_unknown_device_lists_valid_names():
    from qelm_core.config import ConfigError, parse_params

    with pytest.raises(ConfigError, match="device.name: Input should be 'default.qubit', 'lightning.qubit'"):
        parse_params({"device": {"name": "default.qbit"}})
    unvalidated = DeviceParams.model_construct(name="default.qbit")  # model_copy(update=...) skips validation
    with pytest.raises(QelmError, match="unknown device 'default.qbit'; valid: default.qubit, lightning.qubit"):
        make_device(unvalidated, 2)
    with pytest.raises(QelmError, match="unknown device"):
        diff_method_for(DeviceParams.model_construct(name="braket.sv1"), training=True)


@pytest.mark.parametrize("name, method", [("default.qubit", "backprop"), ("lightning.qubit", "adjoint"),
                                          ("lightning.gpu", "adjoint"), ("qiskit.aer", "parameter-shift"),
                                          ("qiskit.remote", "parameter-shift")])
def test_auto_diff_method(name, method):
    assert diff_method_for(dp(name=name), training=True) == method
    assert diff_method_for(dp(name=name), training=False) is None


def test_explicit_diff_method_is_validated():
    assert diff_method_for(dp(name="default.qubit", diff_method="parameter-shift"), training=True) == "parameter-shift"
    assert diff_method_for(dp(name="lightning.qubit", diff_method="adjoint"), training=True) == "adjoint"
    msg = "'backprop' is not supported on qiskit.aer; use 'auto' or one of parameter-shift"
    with pytest.raises(QelmError, match=msg):
        diff_method_for(dp(name="qiskit.aer", diff_method="backprop"), training=True)
    with pytest.raises(QelmError, match="'adjoint' is not supported on qiskit.remote"):
        diff_method_for(dp(name="qiskit.remote", diff_method="adjoint"), training=False)  # validated even for inference
    with pytest.raises(QelmError, match="'spsa-ish' is not supported on default.qubit"):
        diff_method_for(dp(name="default.qubit", diff_method="spsa-ish"), training=True)
    with pytest.raises(QelmError, match="backprop needs exact simulation"):
        diff_method_for(dp(name="default.qubit", diff_method="backprop", shots=100), training=True)
    # auto with shots falls back to a shot-compatible method
    assert diff_method_for(dp(name="default.qubit", shots=100), training=True) == "parameter-shift"


@pytest.mark.parametrize("name", ["default.qubit", "lightning.qubit", "qiskit.aer"])
def test_local_simulators(name):
    dev = make_device(dp(name=name), 3)
    assert len(dev.wires) == 3


def test_lightning_gpu_missing_is_a_clear_error():
    if "lightning.gpu" in qml.plugin_devices:
        pytest.skip("lightning.gpu is installed here")
    with pytest.raises(QelmError, match="lightning.gpu is not installed"):
        make_device(dp(name="lightning.gpu"), 2)


def test_fake_backend():
    dev = make_device(dp(name="qiskit.remote", backend="FakeManilaV2"), 2, shots=100, seed=1)
    assert len(dev.wires) == 2 and dev.backend.num_qubits == 5
    assert "FakeManilaV2" in fake_backend_names()


@pytest.mark.parametrize("seed", [0, 7])
def test_fake_hardware_sampling_is_reproducible_with_a_seed(seed):
    """The same seed (0 included: qiskit-ibm-runtime's local mode ignores a seed_simulator of 0) gives
    the same noisy counts; another seed gives other counts."""
    import torch

    from qelm_core.quantum.circuits import ansatz, build_qnode

    spec = ansatz(2, 1, 1)
    angles, weights = torch.rand(1, 1, 2, dtype=torch.float64), torch.rand(spec.weight_shape, dtype=torch.float64)

    def sample(s):
        dev = make_device(dp(name="qiskit.remote", backend="FakeManilaV2"), 2, shots=2000, seed=s)
        return build_qnode(spec, dev, diff_method=None, shots=2000)(angles, weights)

    first = sample(seed)
    assert torch.equal(first, sample(seed))
    assert not torch.equal(first, sample(seed + 1))


def test_seeded_transpilation_is_reproducible_where_vf2_layouts_tie():
    """An 11-qubit chain fits FakeGuadalupeV2's heavy hex in many equally good ways: with qiskit's default
    layout stage (VF2Layout, tie-broken by a float sum in hash order) the same seed gave different circuits
    from one call to the next; with the options the devices and the cost report use, every call agrees."""
    import numpy as np
    from qiskit import QuantumCircuit, qasm2, transpile

    from qelm_core.quantum.devices import _resolve_backend, fake_hardware, transpile_options

    rng = np.random.default_rng(0)
    qc = QuantumCircuit(11)
    for layer in range(2):
        for q in range(11):
            qc.ry(rng.uniform(0, 3), q)
        for q in range(layer % 2, 10, 2):
            qc.cz(q, q + 1)
    qc.measure_all()
    backend = _resolve_backend(fake_hardware("FakeGuadalupeV2"))
    assert len({qasm2.dumps(transpile(qc, backend=backend, **transpile_options(0))) for _ in range(20)}) == 1
    dev = make_device(dp(name="qiskit.remote", backend="FakeGuadalupeV2"), 11, shots=10, seed=0)
    assert dev._transpile_args == transpile_options(0)  # what pennylane-qiskit passes to qiskit.transpile


def test_fake_hardware_fuses_noisy_gates_without_changing_the_distribution():
    """The fake backend's Aer simulator fuses each gate with its noise (one Kraus op: the same channel)
    even below Aer's default 14-qubit threshold: fused and unfused sampling agree to shot noise."""
    import numpy as np
    import torch
    from qiskit import transpile

    from qelm_core.quantum.circuits import ansatz
    from qelm_core.quantum.hardware import qiskit_circuit

    spec = ansatz(3, 2, 2, "cphase")
    qc = qiskit_circuit(spec, torch.rand(spec.weight_shape, generator=torch.Generator().manual_seed(0)).numpy())
    qc = qc.assign_parameters(np.linspace(0.3, 2.8, qc.num_parameters))
    backend = make_device(dp(name="qiskit.remote", backend="FakeManilaV2"), 3, shots=100, seed=1).backend
    tqc = transpile(qc, backend=backend, seed_transpiler=1)

    def sample(seed, **options):
        result = backend.run(tqc, shots=20000, seed_simulator=seed, **options).result()
        probs = np.zeros(8)
        for bits, n in result.get_counts().items():
            probs[int(bits, 2)] += n / 20000
        return probs, result.results[0].metadata["fusion"]["applied"]

    fused, applied = sample(1)
    unfused, not_applied = sample(10**6, fusion_threshold=14)
    assert applied and not not_applied
    assert 0.5 * np.abs(fused - unfused).sum() < 0.03  # shot noise of 20,000 shots over 8 outcomes: ~0.01


def test_remote_errors():
    with pytest.raises(QelmError, match="FakeManilaV2 has 5 qubits but the student needs 6"):
        make_device(dp(name="qiskit.remote", backend="FakeManilaV2"), 6, shots=100)
    with pytest.raises(QelmError, match="unknown fake backend 'FakeNowhereV2'; valid include .*FakeManilaV2"):
        make_device(dp(name="qiskit.remote", backend="FakeNowhereV2"), 2, shots=100)
    with pytest.raises(QelmError, match="qiskit.remote only samples; set device.shots"):
        make_device(dp(name="qiskit.remote", backend="FakeManilaV2"), 2)
    with pytest.raises(QelmError, match="qiskit.remote needs a backend"):
        make_device(dp(name="qiskit.remote"), 2, shots=100)


def test_real_backend_without_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(QelmError, match=f"'ibm_brisbane' is a real IBM backend; export {TOKEN_ENV}="):
        make_device(dp(name="qiskit.remote", backend="ibm_brisbane"), 2, shots=100)


class _FakeService:
    """Stands in for QiskitRuntimeService: records its arguments, hands out an offline fake backend."""
    calls: list = []
    fail_with: Exception | None = None

    def __init__(self, **kwargs):
        _FakeService.calls.append(kwargs)
        if _FakeService.fail_with is not None:
            raise _FakeService.fail_with

    def backend(self, name):
        from qiskit_ibm_runtime.fake_provider import FakeManilaV2
        return FakeManilaV2()


def test_real_backend_mocked_service(monkeypatch, capsys):
    import qiskit_ibm_runtime
    from qiskit_ibm_runtime.exceptions import IBMNotAuthorizedError

    secret = "tok-123-secret"
    monkeypatch.setenv(TOKEN_ENV, secret)
    monkeypatch.setattr(qiskit_ibm_runtime, "QiskitRuntimeService", _FakeService)
    monkeypatch.setattr(_FakeService, "calls", [])
    params = dp(name="qiskit.remote", backend="ibm_fake_real", ibm_instance="crn:abc")
    dev = make_device(params, 3, shots=100)
    assert len(dev.wires) == 3
    assert _FakeService.calls == [{"channel": "ibm_quantum_platform", "token": secret, "instance": "crn:abc"}]

    monkeypatch.setattr(_FakeService, "fail_with", IBMNotAuthorizedError(f"token {secret} rejected"))
    with pytest.raises(QelmError, match="could not reach IBM backend 'ibm_fake_real'") as err:
        make_device(params, 3, shots=100)
    assert secret not in str(err.value) and "***" in str(err.value)
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err


def test_valid_names_are_the_documented_ones():
    assert DEVICE_NAMES == ("default.qubit", "lightning.qubit", "lightning.gpu", "qiskit.aer", "qiskit.remote")
