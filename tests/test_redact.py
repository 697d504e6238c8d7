from biosig.tracking.redact import REDACTED, redact, redact_value


def test_secret_keys_and_url_passwords_are_masked():
    out = redact({"aws_secret_access_key": "abc", "password": "pw", "lr": 0.1, "token": "",
                  "nested": {"api_key": "k"},
                  "storage": "postgresql://optuna:hunter2@db:5432/optuna"})
    assert out["aws_secret_access_key"] == REDACTED and out["password"] == REDACTED
    assert out["nested"]["api_key"] == REDACTED
    assert out["lr"] == 0.1 and out["token"] == ""
    assert out["storage"] == "postgresql://optuna:***@db:5432/optuna"
    assert "hunter2" not in redact_value("failed to reach https://u:hunter2@host/x")
