"""The students: a variational-circuit classifier and its classical baselines, safetensors + JSON on disk.

QuantumClassifier (x: (B, d) sentence features):
    z      = (x - mean) / std                                  standardised with train statistics
    angles = offset + scale * tanh(W_in z + b_in)              Dense(d -> n), (B, n), default in (0, pi)
    <Z_q>  = circuit(angles, weights)                          (B, n)
    logits = W_out <Z> + b_out                                 Dense(n -> C)
The circuit is a gate list (circuits.CircuitSpec, context 1): RY(angle_q) on every wire, then `layers`
times { RY-RZ-RY on every wire, one entangling layer }, read out as <Z_q> per wire.
  entangler "cz_brick" (default): CZs on pairs (0,1),(2,3),... after even blocks, (1,2),(3,4),... after odd ones
  entangler "cz_ring":  CZ(0,1),(1,2),...,(n-1,0) after every block
  entangler "brick":    the cz_brick pairs as CNOTs (control first), after every block
  entangler "ring":     circuits.ansatz's CNOT ring (0,1),(1,2),...,(n-1,0) after every block
The CZ variants stop after the last block: CZ is diagonal, so directly before the <Z> read-out it commutes
with every Z_q and changes neither an output nor a gradient (a test shows it); between blocks it is a real
entangler. So with 3 blocks the CZ circuits hold 2 entangling layers, the CNOT circuits 3.
Why these choices (validation split only; 11 qubits, 3 blocks, 12 epochs, best epoch's val accuracy,
mean +- sd over seeds 0, 1, 2; issue 16 item 8):
                 cz_brick         cz_ring          brick (CNOT)     ring (CNOT)      no entangler
  sentiment      0.791 +- 0.004   0.792 +- 0.017   0.772 +- 0.010   0.636 +- 0.025   0.784 +- 0.008
  topic          0.947 +- 0.003   0.946 +- 0.004   0.942 +- 0.021   0.791 +- 0.016   0.945 +- 0.005
A CNOT maps Z_t to Z_c Z_t, so CNOT layers turn each <Z_q> into a parity of several wires; a sequential
ring makes those parities long (up to n qubits per layer), close to 0 for typical inputs, and even the
brick's short ones score below the unentangled circuit. CZ leaves Z_q alone and entangles through the
X/Y parts of the next block's rotations instead. cz_brick and cz_ring tie; cz_brick is the default: fewer
two-qubit gates (10 vs 22 on 11 qubits, less noise on hardware) and the smaller spread. The gain over no
entangler at all is within about one sd: the circuit's entanglement is not what makes this model work.
And RY(t)|0> has <Z> = cos t, which folds t and -t together on (-pi, pi): the usual pi * tanh encoding lost
the sign of each projection (val accuracy 0.50-0.55 in an earlier exploratory run, CNOT brick or ring);
the (0, pi) range keeps it.
Every parameter matters: the last block's rotations sit before CNOTs, which map Z's to Z-strings, or
directly before the read-out (CZ variants), and a final RY changes those (unlike an RZ, RZZ or CZ right
before a Z read-out, which commutes with it); tests/classify/test_models.py checks that every gradient
entry is non-zero, for every entangler.
Training runs the circuit on the fused engine (fused.compile_fused, readout="z"); `z_qnode` compiles the
same gate list to a PennyLane QNode for default.qubit or noisy/hardware devices.

MLPClassifier:    z -> tanh(Dense(d -> h)) -> Dense(h -> C), h sized so its params <= the quantum total
LinearClassifier: z -> Dense(d -> C) (logistic regression)
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from qelm_core.quantum.circuits import CircuitSpec, ansatz, apply_ops, ring
from qelm_core.config import QelmError
from qelm_core.quantum.fused import compile_fused
from qelm_core.weights import CONFIG_FILE, load_matching, read_folder, save_folder

FORMAT = "qelm-classifier/1"
KINDS = ("quantum", "mlp", "logreg")


ENTANGLERS = ("brick", "ring", "cz_brick", "cz_ring")


def _brick_pairs(n: int, layer: int) -> list[tuple[int, int]]:
    """(0,1),(2,3),... in even layers, (1,2),(3,4),... in odd ones; an even n closes the ring in odd layers."""
    first = layer % 2
    pairs = [(q, (q + 1) % n) for q in range(first, n - 1 + first, 2)]
    return [(a, b) for a, b in pairs if a != b]


def classifier_spec(n_qubits: int, layers: int, entangler: str = "cz_brick") -> CircuitSpec:
    """The classifier's gate list (context 1); see the module docstring."""
    if entangler not in ENTANGLERS:
        raise ValueError(f"entangler must be one of {ENTANGLERS}, got {entangler!r}")
    if entangler == "ring":
        return ansatz(n_qubits, context=1, layers=layers, entangler="cnot")
    gate = "cz" if entangler.startswith("cz_") else "cnot"
    ops: list[tuple] = [("data_ry", q, 0) for q in range(n_qubits)]
    for layer in range(layers):
        ops += [("rot", q, 0, layer) for q in range(n_qubits)]
        if gate == "cz" and layer == layers - 1:
            break  # CZ is diagonal: right before the <Z> read-out it commutes with it and changes nothing
        pairs = ring(n_qubits) if entangler == "cz_ring" else _brick_pairs(n_qubits, layer)
        ops += [(gate, a, b) for a, b in pairs]
    return CircuitSpec(n_qubits, 1, layers, tuple(ops), gate)


def _init_linear(layer: nn.Linear, g: torch.Generator) -> nn.Linear:
    """torch's default init (U(-1/sqrt(fan_in), +1/sqrt(fan_in))) drawn from our generator."""
    bound = 1 / math.sqrt(layer.in_features)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=g)
        layer.bias.uniform_(-bound, bound, generator=g)
    return layer


class _Base(nn.Module):
    kind = ""

    def __init__(self, d: int, n_classes: int, mean=None, std=None):
        super().__init__()
        self.d, self.n_classes = d, n_classes
        self.register_buffer("feat_mean", torch.as_tensor(mean if mean is not None else np.zeros(d), dtype=torch.float32))
        self.register_buffer("feat_std", torch.as_tensor(std if std is not None else np.ones(d), dtype=torch.float32))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.d:
            raise QelmError(f"{self.kind}: expected features of shape (batch, {self.d}), got {tuple(x.shape)}")
        return (x.float() - self.feat_mean) / self.feat_std

    def config(self) -> dict:
        return {"kind": self.kind, "d": self.d, "n_classes": self.n_classes}


class QuantumClassifier(_Base):
    kind = "quantum"

    def __init__(self, d: int, n_classes: int, n_qubits: int = 11, layers: int = 3, entangler: str = "cz_brick",
                 angle_offset: float = math.pi / 2, angle_scale: float = math.pi / 2, mean=None, std=None,
                 generator: torch.Generator | None = None):
        super().__init__(d, n_classes, mean, std)
        g = generator or torch.Generator().manual_seed(0)
        self.n_qubits, self.layers, self.entangler = n_qubits, layers, entangler
        self.angle_offset, self.angle_scale = float(angle_offset), float(angle_scale)
        self.spec = classifier_spec(n_qubits, layers, entangler)
        self.encoder = _init_linear(nn.Linear(d, n_qubits), g)  # (n, d)
        self.circuit_weights = nn.Parameter(0.1 * torch.randn(self.spec.weight_shape, generator=g))  # (1, L, n, 3)
        self.head = _init_linear(nn.Linear(n_qubits, n_classes), g)  # (C, n)
        self._circuit = compile_fused(self.spec, dtype=torch.complex64, readout="z")

    def angles(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d) features -> (B, n) encoding angles in offset +- scale."""
        return self.angle_offset + self.angle_scale * torch.tanh(self.encoder(self.standardise(x)))

    def expvals(self, x: torch.Tensor, circuit=None) -> torch.Tensor:
        """(B, d) -> (B, n) <Z_q>; `circuit(angles (B, 1, n), weights)` defaults to the fused engine."""
        return (circuit or self._circuit)(self.angles(x)[:, None, :], self.circuit_weights).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.expvals(x))  # (B, C) logits

    def config(self) -> dict:
        return {**super().config(), "n_qubits": self.n_qubits, "layers": self.layers, "entangler": self.entangler,
                "angle_offset": self.angle_offset, "angle_scale": self.angle_scale}


class MLPClassifier(_Base):
    kind = "mlp"

    def __init__(self, d: int, n_classes: int, hidden: int, mean=None, std=None, generator: torch.Generator | None = None):
        super().__init__(d, n_classes, mean, std)
        g = generator or torch.Generator().manual_seed(0)
        self.hidden = hidden
        self.encoder = _init_linear(nn.Linear(d, hidden), g)  # (h, d)
        self.head = _init_linear(nn.Linear(hidden, n_classes), g)  # (C, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.encoder(self.standardise(x))))

    def config(self) -> dict:
        return {**super().config(), "hidden": self.hidden}


class LinearClassifier(_Base):
    kind = "logreg"

    def __init__(self, d: int, n_classes: int, mean=None, std=None, generator: torch.Generator | None = None):
        super().__init__(d, n_classes, mean, std)
        self.head = _init_linear(nn.Linear(d, n_classes), generator or torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.standardise(x))


def quantum_param_count(d: int, n_classes: int, n_qubits: int, layers: int) -> int:
    return (d + 1) * n_qubits + layers * n_qubits * 3 + (n_qubits + 1) * n_classes


def mlp_hidden_for(budget: int, d: int, n_classes: int) -> int:
    """The largest h >= 1 with (d + 1) h + (h + 1) C <= budget."""
    return max(1, (budget - n_classes) // (d + 1 + n_classes))


def build_model(kind: str, d: int, n_classes: int, sp, mean=None, std=None, seed: int = 0) -> _Base:
    """A freshly initialised student of `kind` for StudentParams `sp`; init drawn from `seed`."""
    g = torch.Generator().manual_seed(seed)
    if kind == "quantum":
        return QuantumClassifier(d, n_classes, sp.n_qubits, sp.layers, sp.entangler, sp.angle_offset, sp.angle_scale,
                                 mean, std, g)
    if kind == "mlp":
        hidden = sp.mlp_hidden or mlp_hidden_for(quantum_param_count(d, n_classes, sp.n_qubits, sp.layers), d, n_classes)
        return MLPClassifier(d, n_classes, hidden, mean, std, g)
    if kind == "logreg":
        return LinearClassifier(d, n_classes, mean, std, g)
    raise ValueError(f"unknown student kind {kind!r}; one of {KINDS}")


def param_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters split into circuit angles and classical weights (buffers not counted)."""
    circuit = sum(p.numel() for n, p in model.named_parameters() if n.startswith("circuit"))
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"circuit": circuit, "classical": total - circuit, "total": total}


# ------------------------------------------------------------------ PennyLane compilation of the same gates

def z_qnode(spec, device, shots: int | None = None, diff_method: str | None = None):
    """`spec` on a PennyLane device -> f(angles (B, 1, n), weights (1, L, n, 3)) -> (B, n) <Z_q> (float64).

    Explicit RY/RZ/RY gates (any device understands them); batches are broadcast, which devices that
    cannot broadcast (qiskit) split into one circuit per example."""
    import pennylane as qml

    n = spec.n_qubits

    def circuit(angles, weights):
        apply_ops(spec, angles, weights)
        return [qml.expval(qml.PauliZ(q)) for q in range(n)]

    qnode = qml.QNode(circuit, device, interface="torch", diff_method=diff_method)
    qnode = qml.set_shots(qnode, shots=shots) if shots else qnode

    def f(angles: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.stack([torch.as_tensor(v) for v in qnode(angles.double(), weights.double())], -1)  # (B, n)
        return out.reshape(*angles.shape[:-2], n)

    return f


# ------------------------------------------------------------------ save / load (safetensors + JSON, no pickle)

def save_model(model: _Base, folder: Path, extra: dict | None = None) -> Path:
    """folder/model.safetensors + folder/config.json (qelm_core/weights.py), atomically."""
    return save_folder(folder, model, {**model.config(), "param_counts": param_counts(model), **(extra or {})}, FORMAT)


def load_model(folder: Path) -> tuple[_Base, dict]:
    """Rebuild from config.json, load the safetensors weights; any problem is one QelmError line."""
    fix = "re-run: dvc repro classify/dvc.yaml"
    cfg, state = read_folder(folder, FORMAT, fix)
    if cfg.get("kind") not in KINDS:
        raise QelmError(f"{Path(folder) / CONFIG_FILE}: kind must be one of {', '.join(KINDS)}; {fix}")
    try:
        d, c = cfg["d"], cfg["n_classes"]
        if cfg["kind"] == "quantum":
            model = QuantumClassifier(d, c, cfg["n_qubits"], cfg["layers"], cfg["entangler"], cfg["angle_offset"],
                                      cfg["angle_scale"])
        elif cfg["kind"] == "mlp":
            model = MLPClassifier(d, c, cfg["hidden"])
        else:
            model = LinearClassifier(d, c)
    except KeyError as err:
        raise QelmError(f"{Path(folder) / CONFIG_FILE}: missing key {err}; {fix}") from None
    return load_matching(model, state, folder, fix).eval(), cfg
