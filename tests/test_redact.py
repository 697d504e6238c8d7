import pytest

from biosig.secrets import REDACTED, redact, redact_value


def test_secret_keys_and_url_passwords_are_masked():
    out = redact({"aws_secret_access_key": "abc", "password": "pw", "lr": 0.1, "token": "",
                  "nested": {"api_key": "k"},
                  "storage": "postgresql://optuna:hunter2@db:5432/optuna"})
    assert out["aws_secret_access_key"] == REDACTED and out["password"] == REDACTED
    assert out["nested"]["api_key"] == REDACTED
    assert out["lr"] == 0.1 and out["token"] == ""
    assert out["storage"] == "postgresql://optuna:***@db:5432/optuna"
    assert "hunter2" not in redact_value("failed to reach https://u:hunter2@host/x")


@pytest.mark.slow
def test_a_password_in_any_key_is_refused_before_a_run_exists(workdir, capsys, monkeypatch):
    from biosig.cli import main
    from tests.helpers import finished_runs

    assert main(["log-dataset", "--tracking-uri", "http://alice:hunter2@localhost:5000"]) == 2
    err = capsys.readouterr().err
    assert "config key 'tracking_uri'" in err and "MLFLOW_TRACKING_PASSWORD" in err and "hunter2" not in err
    assert main(["tune", "--storage", "postgresql://alice:hunter2@db/optuna"]) == 2
    assert "BIOSIG_OPTUNA_STORAGE" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:hunter2@localhost:5000")
    assert main(["log-dataset"]) == 2
    err = capsys.readouterr().err
    assert "holds a password" in err and "hunter2" not in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    assert finished_runs() == [] and not (workdir / "data").exists()


def test_a_run_whose_params_hold_a_password_is_deleted(workdir, monkeypatch, capsys):
    """`mlflow run -P tracking_uri=…:pw@…` logs the param before biosig runs: biosig refuses the value
    and deletes the run that holds it."""
    import mlflow

    from biosig.cli import main

    with mlflow.start_run(experiment_id=mlflow.create_experiment("leaky")) as run:
        mlflow.log_param("tracking_uri", "http://alice:hunter2@localhost:5000")
    mlflow.tracking.MlflowClient().update_run(run.info.run_id, "RUNNING")
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    assert main(["log-dataset", "--tracking_uri", "http://alice:hunter2@localhost:5000"]) == 2
    assert "was deleted" in capsys.readouterr().err
    stored = mlflow.tracking.MlflowClient().get_run(run.info.run_id)
    assert stored.info.lifecycle_stage == "deleted" and stored.info.status == "FAILED"


def test_only_credential_words_are_masked_not_words_that_contain_them():
    out = redact({"tokenization": "per_channel", "max_tokens": 5, "author": "lab", "passage": "x",
                  "api_token": "t", "DB_PASSWORD": "p", "auth": "a", "MLFLOW_TRACKING_TOKEN": "t"})
    assert out["tokenization"] == "per_channel" and out["max_tokens"] == 5 and out["author"] == "lab"
    assert out["passage"] == "x"
    assert all(out[k] == REDACTED for k in ("api_token", "DB_PASSWORD", "auth", "MLFLOW_TRACKING_TOKEN"))
