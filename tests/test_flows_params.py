"""The Run form (flows/params.py): typed overrides of params.yaml read from qelm_core/config.py's fields."""
from __future__ import annotations


def test_run_form_shows_the_settings_each_with_its_params_key_meaning_and_range():
    """The Run form (the JSON schema Prefect's UI draws) holds the settings and `extra`, nothing internal; each
    field's text is its qelm_core/config.py field's description, named by the key it overrides, with the range."""
    from flows.params import KEYS, Overrides

    fields = Overrides.model_json_schema()["properties"]
    assert set(fields) == {*KEYS, "extra"}
    for name, key in KEYS.items():
        text = fields[name]["description"]
        assert text.startswith(f"{key}: ") and "None" not in text, (name, text)
    assert fields["n_qubits"]["description"].endswith("(>= 1, <= 20)") and fields["shots"]["description"].endswith("(> 0)")
    assert {"type": "number", "minimum": 0, "maximum": 1} in fields["alpha"]["anyOf"]
    assert Overrides(n_qubits=10, shots=100, extra={"evaluate.shots": 5}).dotted() == \
        {"student.n_qubits": 10, "device.shots": 100, "evaluate.shots": 5}
