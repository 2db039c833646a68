"""The recurrent study in quick form: on the `recall` task at T = 20, after 400 Adam steps, an
LSTM whose forget gate starts out holding (half-life T) learns to recall the first token, while
the same LSTM with PyTorch's initialisation (every gate near 0.5) is still at chance."""
import os

from experiments import studies


def test_an_lstm_remembers_when_its_forget_gate_starts_out_holding(tmp_path):
    results = studies.run("recurrent", str(tmp_path), quick=True, seeds=2)
    d = results["data"]
    longest = str(max(d["distances"]))
    accuracy = {v: d["accuracy"][v][longest] for v in d["variants"]}
    print(f"T = {longest}: test accuracy {accuracy} (chance {d['chance']})")
    assert min(accuracy["lstm_hold"]) >= 0.95
    assert max(accuracy["lstm"]) < d["chance"] + 0.05  # has not started to learn the task
    folder = tmp_path / "recurrent"
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.exists(folder / file), file
    assert len(results["figures"]) == 2
