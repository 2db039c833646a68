"""The recurrent study in quick form: on the `recall` task at T = 20, after 400 Adam steps, an
LSTM under chrono initialisation (its forget gates' time constants spread over 2 to T + 1
steps) learns to recall the first token in every seed, while the same LSTM with PyTorch's
initialisation (every gate near 0.5) is still at chance in every seed."""
import os

from experiments import studies


def test_an_lstm_remembers_when_its_forget_gate_starts_out_holding(tmp_path):
    results = studies.run("recurrent", str(tmp_path), quick=True, seeds=3)
    d = results["data"]
    t = str(max(d["distances"]))
    accuracy = {v: d["accuracy"][v][t] for v in d["variants"]}
    print(f"T = {t}: test accuracy {accuracy} (chance {d['chance']})")
    assert d["solved"]["lstm_chrono"][t] == 3 and min(accuracy["lstm_chrono"]) >= 0.95
    assert d["solved"]["lstm"][t] == 0
    assert max(accuracy["lstm"]) < d["chance"] + 0.05  # has not started to learn the task
    assert d["comparisons"][t]["lstm_chrono vs lstm"]["verdict"] == "a"
    assert "LSTM (chrono) 3/3" in results["finding"] and "LSTM 0/3" in results["finding"]
    folder = tmp_path / "recurrent"
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.exists(folder / file), file
    assert results["figures"] == ["fraction_solved.png", "accuracy_per_seed.png",
                                  "learning_curves.png"]
