"""The learning-rate study in quick mode: plain SGD diverges at the largest rate, crawls at the
smallest, and does best in between (the U of final loss against learning rate)."""
import os

from experiments import studies


def test_too_large_diverges_too_small_crawls_and_a_middle_rate_is_best(tmp_path):
    results = studies.run("learning_rate", str(tmp_path), quick=True, seeds=1)
    data = results["data"]
    rates = data["learning_rates"]
    by_rate = {r["learning_rate"]: r for r in data["runs"]}
    smallest, largest = by_rate[rates[0]], by_rate[rates[-1]]
    print(f"initial loss {data['initial_loss']}; final loss per rate "
          f"{[(r['learning_rate'], r['final_loss'], r['diverged']) for r in data['runs']]}; "
          f"best {data['best_learning_rate']}")
    assert len(rates) >= 7 and max(rates) / min(rates) >= 1e4
    # the largest rate diverges, or at least ends above where it started
    assert all(largest["above_start"])
    # the smallest removes less than a tenth of the initial loss
    assert all(d < 0.10 for d in smallest["relative_decrease"])
    # and the best rate is neither end of the range
    assert rates[0] < data["best_learning_rate"] < rates[-1]
    study_dir = tmp_path / "learning_rate"
    for file in ["report.md", "results.json", *results["figures"]]:
        assert os.path.isfile(study_dir / file), file
    assert len(results["figures"]) == 2
