"""Experiments: configs, the `descent` command line, and the functions that wire nets, data
and train together (`experiments.run.train_and_evaluate`, `restore`, `evaluate`)."""
