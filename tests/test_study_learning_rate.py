"""The learning-rate study in quick mode, over 5 seeds: plain SGD crawls at the smallest rate,
diverges at the largest, and 0.3 is best: a lower final training loss than 0.1 by a paired
t-test over the seeds, while at 1 the loss jumps around (the U of final loss against learning
rate)."""
import os

from experiments import studies


def test_too_large_diverges_too_small_crawls_and_a_middle_rate_is_best(tmp_path):
    results = studies.run("learning_rate", str(tmp_path), quick=True)
    data = results["data"]
    rates = data["learning_rates"]
    by_rate = {r["learning_rate"]: r for r in data["runs"]}
    smallest, largest = by_rate[rates[0]], by_rate[rates[-1]]
    print(f"initial loss {data['initial_loss']}; final loss per rate "
          f"{[(r['learning_rate'], r['final_loss'], r['diverged']) for r in data['runs']]}; "
          f"best {data['best_learning_rate']}: {data['best_against_neighbours']}")
    assert len(results["seeds"]) == 5
    assert len(rates) >= 5 and max(rates) / min(rates) >= 1e4
    # the largest rate diverges on every seed
    assert all(largest["diverged"])
    # the smallest removes less than a tenth of the initial loss, on every seed
    assert all(d < 0.10 for d in smallest["relative_decrease"])
    # 0.3 is best, lower than 0.1 by the paired test (against 1, whose seeds split between
    # oscillating and converging, the default-size run measured a tie)
    assert data["best_learning_rate"] == 0.3
    neighbours = {c["learning_rate"]: c for c in data["best_against_neighbours"]}
    assert set(neighbours) == {0.1, 1.0}
    assert neighbours[0.1]["verdict"] == "a" and neighbours[0.1]["p"] < 0.05, neighbours
    # above it the loss jumps around: seeds end well above the lowest loss they logged
    above = by_rate[1.0]
    assert sum(f > 2 * lo for f, lo in zip(above["final_loss"], above["lowest_loss"])) >= 2
    assert "0.3 is best" in results["finding"] and "lower than at 0.1" in results["finding"]
    study_dir = tmp_path / "learning_rate"
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.isfile(study_dir / file), file
    assert len(results["figures"]) == 2
