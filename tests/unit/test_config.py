"""Configuration: MINIFLOW_* variables and TOML, validated with messages naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from miniflow.config import load_config, redact_url
from miniflow.errors import ConfigError


def test_defaults_give_the_embedded_sqlite_database(tmp_path: Path) -> None:
    config = load_config({"MINIFLOW_STATE_DIR": str(tmp_path)})
    assert config.launcher == "local"
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'miniflow.db'}"


def test_environment_overrides_toml(tmp_path: Path) -> None:
    toml = tmp_path / "miniflow.toml"
    toml.write_text('[miniflow]\nparallelism = 8\nnamespace = "jobs"\nunknown_key = 1\n')
    config = load_config({"MINIFLOW_CONFIG": str(toml), "MINIFLOW_PARALLELISM": "4"})
    assert config.parallelism == 4 and config.namespace == "jobs"
    assert config.extra == {"unknown_key": "1"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MINIFLOW_LAUNCHER": "docker"}, "MINIFLOW_LAUNCHER must be one of local, kubernetes"),
        ({"MINIFLOW_PARALLELISM": "lots"}, "MINIFLOW_PARALLELISM must be an integer"),
        ({"MINIFLOW_PARALLELISM": "0"}, "MINIFLOW_PARALLELISM must be positive"),
        ({"MINIFLOW_PARSE_TIMEOUT": "soon"}, "MINIFLOW_PARSE_TIMEOUT must be a number"),
        ({"MINIFLOW_POD_CLEANUP": "sometimes"}, "MINIFLOW_POD_CLEANUP must be one of"),
        ({"MINIFLOW_DATABASE_URL": "mysql://u:pw@h/db"}, "MINIFLOW_DATABASE_URL must start with"),
        ({"MINIFLOW_CONFIG": "/nonexistent/miniflow.toml"}, "no such file"),
        ({"MINIFLOW_HTTP_PORT": "http"}, "MINIFLOW_HTTP_PORT must be an integer"),
        ({"MINIFLOW_HTTP_PORT": "-1"}, "MINIFLOW_HTTP_PORT must not be negative"),
        ({"MINIFLOW_HTTP_PORT": "70000"}, r"MINIFLOW_HTTP_PORT must be a port \(0 to 65535\)"),
        ({"MINIFLOW_LOG_FORMAT": "xml"}, "MINIFLOW_LOG_FORMAT must be one of auto, text, json"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(env)
    assert "pw" not in str(info.value)


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("parallelism = = 3")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config({}, toml_path=bad)


def test_redact_url_hides_the_password() -> None:
    assert (
        redact_url("postgresql+asyncpg://bob:s3cret@db:5432/x")
        == "postgresql+asyncpg://bob:***@db:5432/x"
    )


# --- MINIFLOW_HOME ---------------------------------------------------------------------------


def test_home_holds_the_config_file_the_database_and_the_dags(tmp_path: Path) -> None:
    (tmp_path / "miniflow.toml").write_text("parallelism = 7\n")
    config = load_config({"MINIFLOW_HOME": str(tmp_path)})
    assert config.home == tmp_path
    assert config.parallelism == 7  # <home>/miniflow.toml was read
    assert config.state_dir == tmp_path
    assert config.dags_folder == tmp_path / "dags"
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'miniflow.db'}"
    assert not (tmp_path / "dags").exists()  # loading a config creates nothing


def test_default_home_is_miniflow_in_the_user_home(tmp_path: Path) -> None:
    config = load_config({"HOME": str(tmp_path)})
    assert config.home == tmp_path / "miniflow"
    assert config.state_dir == tmp_path / "miniflow"
    assert config.dags_folder == tmp_path / "miniflow" / "dags"


def test_explicit_settings_win_over_the_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "miniflow.toml").write_text('dags_folder = "/from/home/toml"\nparallelism = 7\n')
    other = tmp_path / "other.toml"
    other.write_text("parallelism = 9\n")
    env = {
        "MINIFLOW_HOME": str(home),
        "MINIFLOW_STATE_DIR": str(tmp_path / "state"),
        "MINIFLOW_DAGS_FOLDER": str(tmp_path / "dags"),
    }
    config = load_config(env)
    assert config.state_dir == tmp_path / "state"
    assert config.dags_folder == tmp_path / "dags"  # the variable wins over the file
    assert config.parallelism == 7
    config = load_config({**env, "MINIFLOW_CONFIG": str(other)})
    assert config.parallelism == 9  # MINIFLOW_CONFIG replaces <home>/miniflow.toml


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+asyncpg://u:pw@127.0.0.1:abc/x", "the port must be a number"),
        ("postgresql+asyncpg://u:pw@127.0.0.1:99999/x", "port 99999 is out of range"),
    ],
)
def test_malformed_database_url_is_a_config_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config({"MINIFLOW_DATABASE_URL": url})
    assert "MINIFLOW_DATABASE_URL" in str(info.value) and "pw" not in str(info.value)


@pytest.mark.parametrize("content", ["miniflow = 3\n", "[[miniflow]]\nx = 1\n"])
def test_a_config_file_whose_miniflow_entry_is_not_a_table(content: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(content)
    with pytest.raises(ConfigError, match="must be a table"):
        load_config({}, toml_path=bad)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("ZOMBIE_THRESHOLD", "abc", "must be a number"),
        ("ZOMBIE_THRESHOLD", "0", "must be positive"),
        ("SANITY_INTERVAL", "-1", "must be positive"),
        ("QUEUED_TIMEOUT", "nan", "finite"),
        ("REPARSE_INTERVAL", "inf", "finite"),
        ("MAX_LAUNCH_ATTEMPTS", "0", "must be positive"),
        ("MAX_LAUNCH_ATTEMPTS", "2.5", "must be an integer"),
        ("POD_KEEP_FAILED_FOR", "-5", "must not be negative"),
        ("DAG_IMPORT_PER_TRY", "sometimes", "must be true or false"),
    ],
)
def test_bad_sanity_settings_name_the_variable(name: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"MINIFLOW_{name} {message}|MINIFLOW_{name} .*{message}"):
        load_config({f"MINIFLOW_{name}": raw})


def test_sanity_settings_and_the_failed_pod_retention_default() -> None:
    config = load_config({"MINIFLOW_ZOMBIE_THRESHOLD": "12.5", "MINIFLOW_MAX_LAUNCH_ATTEMPTS": "3"})
    assert (config.zombie_threshold, config.max_launch_attempts) == (12.5, 3)
    assert config.keep_failed_for() == 3600.0  # on_success keeps failed pods an hour
    assert load_config({"MINIFLOW_POD_CLEANUP": "always"}).keep_failed_for() == 0.0
    assert load_config({"MINIFLOW_POD_KEEP_FAILED_FOR": "60"}).keep_failed_for() == 60.0


def test_ops_server_is_off_and_the_log_format_follows_the_terminal_unless_asked() -> None:
    config = load_config({})
    assert (config.http_port, config.log_format, config.worker_service_account) == (
        0,
        "auto",
        None,
    )
    assert load_config({"MINIFLOW_LOG_FORMAT": "text"}).log_format == "text"
    asked = load_config(
        {
            "MINIFLOW_HTTP_PORT": "8080",
            "MINIFLOW_LOG_FORMAT": "json",
            "MINIFLOW_WORKER_SERVICE_ACCOUNT": "miniflow-worker",
        }
    )
    assert (asked.http_port, asked.http_host, asked.log_format) == (8080, "0.0.0.0", "json")
    assert asked.worker_service_account == "miniflow-worker"


def test_dag_import_per_try_is_off_unless_asked_and_reaches_the_local_launcher() -> None:
    from miniflow.cli import wiring

    assert load_config({}).dag_import_per_try is False
    config = load_config({"MINIFLOW_DAG_IMPORT_PER_TRY": "yes", "MINIFLOW_LAUNCHER": "local"})
    assert config.dag_import_per_try is True
    assert wiring.make_launcher(config).preimport is False  # type: ignore[attr-defined]
