"""The only module that knows quantum device names: DeviceParams -> a PennyLane device + diff method.

    default.qubit     exact statevector in torch; backprop (the training fast path, broadcasts)
    lightning.qubit   C++ statevector; adjoint
    lightning.gpu     CUDA statevector (needs pennylane-lightning-gpu); adjoint
    qiskit.aer        Aer: analytic statevector when shots is None, else sampled; parameter-shift
    qiskit.remote     device.backend = a fake backend class name from qiskit_ibm_runtime.fake_provider
                      (FakeManilaV2, ...: offline, noisy, sampled) or a real IBM backend name, reached
                      with QiskitRuntimeService and the API key in $QISKIT_IBM_TOKEN (never stored,
                      logged or echoed back; it is redacted from error messages)

Shots are given to the QNode (`qml.set_shots`, see circuits.build_qnode), not the device: setting
them on a device is deprecated in PennyLane 0.45. `make_device` only uses them to pick the Aer method
and to refuse combinations that cannot work. Qiskit is imported lazily: training on default.qubit
never pays for it.
"""
from __future__ import annotations

import logging
import os
from typing import get_args

from qelm_core.config import DeviceName, DeviceParams, QelmError

DEVICE_NAMES = get_args(DeviceName)  # params.yaml validation refuses any other name

# Supported gradient methods per device, preferred ("auto") first.
DIFF_METHODS = {
    "default.qubit": ("backprop", "adjoint", "parameter-shift", "finite-diff"),
    "lightning.qubit": ("adjoint", "parameter-shift", "finite-diff"),
    "lightning.gpu": ("adjoint", "parameter-shift", "finite-diff"),
    "qiskit.aer": ("parameter-shift", "finite-diff"),
    "qiskit.remote": ("parameter-shift", "finite-diff"),
}
EXACT_ONLY = ("backprop", "adjoint")  # need the statevector, impossible with shots

TOKEN_ENV = "QISKIT_IBM_TOKEN"


def _check_name(name: str) -> None:
    if name not in DEVICE_NAMES:
        raise QelmError(f"device.name: unknown device {name!r}; valid: {', '.join(DEVICE_NAMES)}")


def diff_method_for(device_params: DeviceParams, training: bool) -> str | None:
    """The gradient method for this device; None when not training (inference needs none).

    An explicit `device.diff_method` is validated against the device even when not training, so a
    bad params.yaml fails on the first stage that reads it.
    """
    name, wanted = device_params.name, device_params.diff_method
    _check_name(name)
    supported = DIFF_METHODS[name]
    if wanted != "auto" and wanted not in supported:
        raise QelmError(
            f"device.diff_method: {wanted!r} is not supported on {name}; use 'auto' or one of {', '.join(supported)}"
        )
    if wanted in EXACT_ONLY and device_params.shots:
        raise QelmError(
            f"device.diff_method: {wanted} needs exact simulation; unset device.shots or use parameter-shift"
        )
    if not training:
        return None
    if wanted != "auto":
        return wanted
    method = supported[0]
    return "parameter-shift" if (method in EXACT_ONLY and device_params.shots) else method


def make_device(device_params: DeviceParams, n_wires: int, shots: int | None = None, seed: int | None = None):
    """A PennyLane device with `n_wires` wires. `seed` fixes simulator sampling (and transpilation)."""
    import pennylane as qml

    name = device_params.name
    _check_name(name)
    if name in ("default.qubit", "lightning.qubit"):
        return qml.device(name, wires=n_wires, seed=seed)
    if name == "lightning.gpu":
        if "lightning.gpu" not in qml.plugin_devices:
            raise QelmError(
                "device.name: lightning.gpu is not installed (pip install pennylane-lightning-gpu; needs an NVIDIA GPU "
                "with CUDA); use lightning.qubit or default.qubit"
            )
        try:
            return qml.device(name, wires=n_wires, seed=seed)
        except (ImportError, RuntimeError, OSError, qml.exceptions.DeviceError) as err:
            raise QelmError(f"device.name: lightning.gpu could not start ({_first_line(err)})") from None
    if name == "qiskit.aer":
        kwargs = {"method": "statevector"} if shots is None else {}  # analytic probs need the statevector
        if seed is not None:
            kwargs["seed_simulator"] = seed
        return qml.device(name, wires=n_wires, **kwargs)
    # qiskit.remote
    if not shots:
        raise QelmError("device.shots: qiskit.remote only samples; set device.shots (e.g. 4000)")
    backend = _resolve_backend(device_params)
    if backend.num_qubits < n_wires:
        raise QelmError(
            f"device.backend: {device_params.backend} has {backend.num_qubits} qubits but the student needs {n_wires} "
            "(student.n_qubits + student.ancillas); pick a larger backend or fewer qubits"
        )
    kwargs = transpile_options(seed)
    if seed is not None:
        if is_fake_backend_name(device_params.backend):  # local simulation: make the sampling reproducible
            # +1: qiskit-ibm-runtime's local mode drops a seed of 0 (`if seed_simulator := ...`), which left
            # the default seed 0 unseeded and the noisy figures different on every run
            kwargs["options"] = {"simulator": {"seed_simulator": seed + 1}}
    return qml.device(name, wires=n_wires, backend=backend, **kwargs)


def transpile_options(seed: int | None) -> dict:
    """Transpiler arguments that make a seeded transpilation reproducible. qiskit <= 2.5 (pennylane-qiskit 0.45
    needs <= 2.3) scores the layouts of VF2Layout / VF2PostLayout with a float sum taken in hash-set order
    (Qiskit #16490, fixed after 2.5): layouts of equal error tie-break differently from call to call, so the
    same seed gave other circuits and other noisy results (an 11-qubit chain on FakeGuadalupeV2). With an
    explicit layout method neither VF2 pass runs, and SabreLayout is seeded."""
    return {} if seed is None else {"seed_transpiler": seed, "layout_method": "sabre"}


def is_fake_backend_name(name: str) -> bool:
    return name.startswith("Fake")


def fake_backend_names() -> list[str]:
    import qiskit_ibm_runtime.fake_provider as fp
    from qiskit.providers import BackendV2

    return sorted(n for n, obj in vars(fp).items()
                  if n.startswith("Fake") and isinstance(obj, type) and issubclass(obj, BackendV2))


def _resolve_backend(device_params: DeviceParams):
    name = device_params.backend
    if not name:
        raise QelmError(
            "device.backend: qiskit.remote needs a backend: a fake one (e.g. FakeManilaV2) or a real IBM backend name"
        )
    if is_fake_backend_name(name):
        import qiskit_ibm_runtime.fake_provider as fp

        if name not in fake_backend_names():
            examples = ", ".join(n for n in fake_backend_names() if n.endswith("V2"))
            raise QelmError(f"device.backend: unknown fake backend {name!r}; valid include {examples}")
        backend = getattr(fp, name)()
        # Aer fuses gates only from 14 active qubits on; with a noise model, fusion folds each gate and
        # its noise into one Kraus op (the same channel, so the same distribution): the default student
        # (12 active qubits after routing on FakeGuadalupeV2) samples 4x faster (10.1 s -> 2.5 s, 1,000 shots)
        backend.set_options(fusion_threshold=1)
        return backend
    return _real_backend(device_params)


def _real_backend(device_params: DeviceParams):
    """Connect to IBM Quantum. The token is read here, passed on, and never kept or printed."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise QelmError(
            f"device.backend: {device_params.backend!r} is a real IBM backend; "
            f"export {TOKEN_ENV}=<your IBM Quantum API key> first (it is read only from the environment)"
        )
    import qiskit_ibm_runtime
    from qiskit.exceptions import QiskitError

    # it warns "Loading account with the given token..." on stderr: one line of error output is enough
    quiet = logging.getLogger("qiskit_ibm_runtime.qiskit_runtime_service")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        service = qiskit_ibm_runtime.QiskitRuntimeService(
            channel=device_params.ibm_channel, token=token, instance=device_params.ibm_instance or None
        )
        return service.backend(device_params.backend)
    except (QiskitError, ValueError, OSError) as err:  # auth, unknown backend, network
        msg = _first_line(err).replace(token, "***")
        raise QelmError(
            f"device.backend: could not reach IBM backend {device_params.backend!r} ({msg}); check {TOKEN_ENV}, "
            "device.ibm_channel and device.ibm_instance"
        ) from None
    finally:
        quiet.setLevel(level)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def fake_hardware(backend: str) -> DeviceParams:
    """Device params for the same weights on an offline fake IBM backend (noisy, sampled)."""
    return DeviceParams(name="qiskit.remote", backend=backend)


def is_exact_simulator(device_params: DeviceParams) -> bool:
    """True where a fused statevector simulation gives what the device would: default.qubit, no shots."""
    return device_params.name == "default.qubit" and not device_params.shots
