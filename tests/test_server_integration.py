"""The team set-up for real, on loopback: PostgreSQL (a fresh database per test), moto's S3 server, and
`mlflow server` on that database with its artifacts in that bucket. biosig talks to the server only."""

import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from biosig.cli import main
from biosig.data import write_parquet
from biosig.data.storage import fetch, upload
from biosig.data.synthetic import synthetic_cardio
from biosig.errors import DataError
from tests.helpers import TINY_NAME, finished_runs, free_port

pytestmark = pytest.mark.integration
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


@pytest.fixture
def postgres_db():
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=3, **PG)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 with trust auth ({exc})")
    admin.autocommit = True
    name = f"biosig_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()


class ServerProcess:
    """`biosig server` (MLflow's own server) on a free port, started and stopped by PID."""

    def __init__(self, workdir: Path, backend: str, *extra: str, env: dict | None = None) -> None:
        self.workdir, self.backend, self.extra, self.port = workdir, backend, extra, free_port()
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    **(env or {})}
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        log = open(self.workdir / "server.log", "a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "biosig.cli", "server", "--backend-store-uri", self.backend,
             "--artifacts-destination", "s3://models/artifacts", "--port", str(self.port), "--workers", "1",
             *self.extra], stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited: {(self.workdir / 'server.log').read_text()[-3000:]}")
        self.stop()
        pytest.fail("mlflow server did not become healthy in 120 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def use_server(url: str, monkeypatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)


@pytest.fixture
def server(postgres_db, s3, workdir, monkeypatch):
    process = ServerProcess(workdir, postgres_db).start()
    use_server(process.url, monkeypatch)
    yield process
    process.stop()


@pytest.fixture
def mlflow_server(server):
    return server.url


@pytest.mark.slow
def test_dataset_from_s3_pretrain_finetune_promote_through_the_server(mlflow_server, s3, tiny_pretrain, workdir):
    ws = synthetic_cardio(n_subjects=8, windows_per_subject=6, with_acc=True, window_s=2.0, good_fraction=0.4, seed=5)
    write_parquet(ws, workdir / "quality.parquet")
    upload(workdir / "quality.parquet", "s3://models/datasets/quality.parquet")
    source = "s3://models/datasets/quality.parquet"

    assert main(["log-dataset", "--source", source]) == 0
    assert main(["pretrain", "--config", str(tiny_pretrain)]) == 0
    assert main(["finetune", "--pretrain-config", str(tiny_pretrain), "--data", source, "--stage1-epochs", "1",
                 "--stage2-epochs", "1", "--unfreeze-last-n", "1", "--batch-size", "8"]) == 0
    policy = workdir / "lenient.yaml"
    policy.write_text("applies_to: '*'\nsync_stages: true\ntargets:\n  staging:\n    metrics: ['test_auroc >= 0.0']\n")
    assert main(["promote", "--model", f"{TINY_NAME}_finetuned", "--to", "staging", "--policies", str(policy)]) == 0

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)  # a new client reads it back
    runs = {r.data.tags["biosig.command"]: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])}
    assert set(runs) == {"log_dataset", "pretrain", "finetune", "promote"}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert runs["log_dataset"].inputs.dataset_inputs[0].dataset.source.find(source) >= 0
    assert [m.step for m in client.get_metric_history(runs["pretrain"].info.run_id, "val/loss")] == [1, 2]
    model = client.get_registered_model(f"{TINY_NAME}_finetuned")
    assert {k: str(v) for k, v in model.aliases.items()} == {"candidate": "1", "staging": "1"}  # str over REST
    assert client.get_model_version(f"{TINY_NAME}_finetuned", "1").current_stage == "Staging"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="artifacts/")["Contents"]]
    assert any(k.endswith("checkpoint/model.safetensors") for k in keys)  # artifacts live in the bucket
    assert any(k.endswith("evaluation/predictions.parquet") for k in keys)
    import mlflow

    probs = mlflow.pyfunc.load_model(f"models:/{TINY_NAME}_finetuned@staging").predict(
        __import__("pandas").read_parquet(workdir / "quality.parquet").head(3))
    assert probs.shape == (3, 2)


@pytest.mark.slow
def test_a_second_machine_finds_the_datasets_of_the_first_by_digest(mlflow_server, tiny_pretrain, workdir, tmp_path,
                                                                    monkeypatch, capsys):
    """Machine A logs, pretrains and fine-tunes through the team server; machine B (another working
    directory, another cache, none of A's folders) evaluates, fine-tunes by dataset name and runs doctor."""
    assert main(["log-dataset", "--source", "synthetic:quality", "--n_subjects", "8", "--windows_per_subject",
                 "6"]) == 0
    assert main(["pretrain", "--config", str(tiny_pretrain)]) == 0
    assert main(["finetune", "--pretrain-config", str(tiny_pretrain), "--data", "synthetic:quality",
                 "--n-subjects", "8", "--windows-per-subject", "6", "--stage1-epochs", "1", "--stage2-epochs", "1",
                 "--unfreeze-last-n", "1", "--batch-size", "8", "--bootstrap", "0", "--reference", "features"]) == 0
    client = MlflowClient()
    runs = finished_runs()
    uris = {r.data.tags["biosig.dataset.uri"] for r in runs if "biosig.dataset.uri" in r.data.tags}
    assert uris and all(u.startswith("mlflow-artifacts:/") for u in uris), uris  # no path of machine A
    finetune_run = next(r for r in runs if r.data.tags.get("biosig.command") == "finetune"
                        and "biosig.reference" not in r.data.tags)
    logged = finetune_run.inputs.dataset_inputs[0].dataset
    assert logged.source.find("mlflow-artifacts:") >= 0
    name, digest = logged.name, finetune_run.data.tags["biosig.dataset.digest"]
    uploads = [o["Key"] for o in __import__("boto3").client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
               .list_objects_v2(Bucket="models", Prefix="artifacts/")["Contents"] if "/datasets/" in o["Key"]]
    assert len([k for k in uploads if digest[:12] in k]) == 1  # uploaded once, reused by later runs

    machine_b = tmp_path / "machine-b"
    machine_b.mkdir()
    shutil.rmtree(workdir / "data")  # A's folder is gone: nothing may be read from it
    monkeypatch.chdir(machine_b)
    monkeypatch.setenv("BIOSIG_CACHE_DIR", str(machine_b / "cache"))
    capsys.readouterr()
    assert main(["evaluate", "--model", f"{TINY_NAME}_finetuned@candidate"]) == 0
    assert main(["finetune", "--pretrain-config", str(tiny_pretrain), "--data", name, "--stage1-epochs", "1",
                 "--stage2-epochs", "0", "--bootstrap", "0", "--register", "false"]) == 0
    assert main(["finetune", "--pretrain-config", str(tiny_pretrain), "--data", f"digest:{digest[:10]}",
                 "--stage1-epochs", "1", "--stage2-epochs", "0", "--bootstrap", "0", "--register", "false"]) == 0
    assert main(["doctor"]) == 0, capsys.readouterr().out
    later = [r for r in finished_runs() if r.info.run_id not in {x.info.run_id for x in runs}]
    assert {r.data.tags.get("biosig.dataset.digest") for r in later if "biosig.dataset.digest" in r.data.tags} == \
        {digest} and len(client.search_registered_models()) == 2


def test_s3_cache_reuses_content_and_reports_missing_objects(s3, workdir):
    write_parquet(synthetic_cardio(n_subjects=2, windows_per_subject=2, window_s=2.0, seed=1), workdir / "a.parquet")
    upload(workdir / "a.parquet", "s3://models/a.parquet")
    first = fetch("s3://models/a.parquet")
    assert fetch("s3://models/a.parquet") == first and first.read_bytes() == (workdir / "a.parquet").read_bytes()
    with pytest.raises(DataError, match="s3://models/missing.parquet does not exist"):
        fetch("s3://models/missing.parquet")
    os.environ["AWS_SECRET_ACCESS_KEY"] = "wrong"  # moto accepts any key: the refusal path is the server's
    assert fetch("s3://models/a.parquet") == first


@pytest.mark.slow
def test_a_server_restart_mid_run_loses_no_metric(server):
    from biosig.config import BaseConfig
    from biosig.tracking.run import tracked_run

    with tracked_run("restart-check", BaseConfig()) as ctx:
        for step in range(1, 4):
            ctx.log_metrics({"loss": 1.0 / step}, step=step)
            ctx.metrics.flush(wait=False)
        ctx.metrics.flush()
        server.stop()  # the same database, the same port, a new process
        server.start()
        for step in range(4, 7):
            ctx.log_metrics({"loss": 1.0 / step}, step=step)
            ctx.metrics.flush(wait=False)
        run_id = ctx.run_id
    history = MlflowClient(tracking_uri=server.url).get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3, 4, 5, 6]
    assert MlflowClient(tracking_uri=server.url).get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_wrong_credentials_give_a_clear_auth_error(postgres_db, s3, workdir, monkeypatch, capsys):
    auth = workdir / "basic_auth.ini"
    auth.write_text("[mlflow]\ndefault_permission = READ\n"
                    f"database_uri = sqlite:///{workdir / 'auth.db'}\n"
                    "admin_username = admin\nadmin_password = s3cret-admin-pw\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    process = ServerProcess(workdir, postgres_db, "--basic-auth", env={
        "MLFLOW_AUTH_CONFIG_PATH": str(auth), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret"}).start()
    try:
        use_server(process.url, monkeypatch)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
        assert main(["log-dataset", "--n-subjects", "2", "--windows-per-subject", "2"]) == 2
        err = capsys.readouterr().err
        assert "refused the credentials" in err and "MLFLOW_TRACKING_USERNAME" in err
        assert "not-the-password" not in err
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-admin-pw")
        assert main(["log-dataset", "--n-subjects", "2", "--windows-per-subject", "2"]) == 0
    finally:
        process.stop()


def test_the_plain_postgresql_form_works_out_of_the_box(postgres_db, capsys):
    """postgresql:// (what biosig's messages suggest) maps to psycopg 3 under SQLAlchemy 2.1: a dependency."""
    uri = postgres_db.replace("postgresql+psycopg2://", "postgresql://")
    assert main(["doctor", "--tracking-uri", uri]) == 0
    assert "0 finding(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_tune_study_in_postgresql(postgres_db, pretrained, workdir):
    import optuna

    from tests.test_tune import TUNE

    assert main([*TUNE, "--n-trials", "2", "--study", "pg", "--pruner", "none", "--storage", postgres_db]) == 0
    study = optuna.load_study(study_name="pg", storage=postgres_db)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]


@pytest.mark.slow
def test_a_study_is_refused_in_mlflows_own_database_and_kept_in_its_own_schema(postgres_db, pretrained, workdir,
                                                                              monkeypatch, capsys):
    import optuna
    import sqlalchemy

    from tests.test_tune import TINY_FINETUNE

    checkpoint = MlflowClient().download_artifacts(MlflowClient().get_model_version(TINY_NAME, "1").run_id,
                                                   "checkpoint", str(workdir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_db)  # the team's database holds MLflow's tables
    tune = ["tune", "--checkpoint", checkpoint, *TINY_FINETUNE, "--n-trials", "1", "--pruner", "none"]
    capsys.readouterr()
    assert main([*tune, "--storage", postgres_db]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if " INFO " not in x]
    assert line.startswith("biosig: error: config key 'storage'") and "is the MLflow tracking database" in line
    in_schema = f"{postgres_db}?options=-csearch_path%3Doptuna"
    assert main([*tune, "--storage", in_schema, "--study", "own-schema"]) == 0
    engine = sqlalchemy.create_engine(postgres_db)
    with engine.connect() as conn:
        tables = conn.execute(sqlalchemy.text(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_name IN "
            "('studies', 'trials', 'alembic_version', 'runs')")).all()
    engine.dispose()
    assert {("optuna", "studies"), ("optuna", "trials"), ("optuna", "alembic_version"), ("public", "runs"),
            ("public", "alembic_version")} <= set(tables)
    assert ("public", "studies") not in tables  # nothing of Optuna's among MLflow's tables
    assert len(optuna.load_study(study_name="own-schema", storage=in_schema).trials) == 1
    parent = [r for r in finished_runs() if r.data.tags.get("biosig.command") == "tune"][0]
    assert parent.data.tags["optuna.storage"] == in_schema and parent.data.tags["optuna.storage_from"] == (
        "config key 'storage'")


def test_the_default_study_next_to_a_remote_server_says_it_is_local(workdir, monkeypatch):
    from biosig.commands.tune import STORAGE_ENV, StudyStorage

    monkeypatch.delenv(STORAGE_ENV, raising=False)
    where = StudyStorage.of("", "http://mlflow.lab.example:5000")
    assert where.origin == "default" and where.url == str(workdir / "optuna.journal")
    assert "local to this machine: workers on other machines cannot join it" in where.describe()
    assert StudyStorage.of("", f"sqlite:///{workdir}/mlflow.db").note == ""  # one machine: nothing to share


def test_s3_prefix_source_records_unreadable_objects(s3, workdir):
    from biosig.data.sources import load_source
    from biosig.errors import FileProblem

    for i in range(2):
        write_parquet(synthetic_cardio(n_subjects=2, windows_per_subject=2, window_s=2.0, seed=i), workdir / f"{i}.parquet")
        upload(workdir / f"{i}.parquet", f"s3://models/recordings/{i}.parquet")
    s3.put_object(Bucket="models", Key="recordings/broken.parquet", Body=b"garbage")
    errors: list[FileProblem] = []
    ws = load_source("s3://models/recordings/", errors=errors)
    assert ws.n_windows == 8 and [e.file for e in errors] == ["s3://models/recordings/broken.parquet"]
    with pytest.raises(DataError, match="broken.parquet"):
        load_source("s3://models/recordings/")  # without an error list the first failure is raised
