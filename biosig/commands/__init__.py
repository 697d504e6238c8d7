"""One module per command: its config dataclass and its `run_<command>` function. Commands compose the
libraries below them (data, models, training, tracking, registry) and are what the CLI, the MLproject entry
points and `main` call."""
