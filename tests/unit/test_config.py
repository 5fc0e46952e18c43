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
