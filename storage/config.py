"""Settings: built-in defaults, then a TOML file, then ``PULID_BOT__SECTION__KEY`` variables.

Nothing is read at import time: call :func:`load_settings`. Every section's defaults are the
embedded defaults of ``pulid-bot demo`` (SQLite file, ``tiny`` preset, no tokens, CPU).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

ENV_PREFIX = "PULID_BOT__"
ENV_CONFIG_FILE = "PULID_BOT_CONFIG"
DEFAULT_CONFIG_FILE = "config.toml"


class ConfigError(ValueError):
    """A setting that cannot be read or validated; the message names the key and value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, coerce_numbers_to_str=True)


DB_SCHEMES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")


class DatabaseSettings(_Section):
    url: str = "sqlite+aiosqlite:///./data/pulid-bot.db"
    pool_size: int = Field(default=5, ge=1, le=100)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not v.startswith(DB_SCHEMES):
            raise ValueError(f"must start with {' or '.join(DB_SCHEMES)}")
        return v


class StorageSettings(_Section):
    data_dir: Path = Path("./data")
    keep_source_photos: bool = False
    result_retention_days: int = Field(default=30, ge=1, le=3650)


class LimitSettings(_Section):
    max_identities_per_user: int = Field(default=20, ge=1, le=1000)
    max_queued_per_user: int = Field(default=5, ge=1, le=1000)
    max_batch_prompts: int = Field(default=8, ge=1, le=100)
    max_compare_prompts: int = Field(default=12, ge=1, le=100)
    max_prompt_chars: int = Field(default=1000, ge=16, le=2000)
    max_pixels: int = Field(default=1536 * 1536, ge=256 * 256)
    max_steps: int = Field(default=50, ge=1, le=50)
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    jobs_per_hour: int = Field(default=60, ge=1)


class QueueSettings(_Section):
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    poll_seconds: float = Field(default=1.0, gt=0)


class EngineSettings(_Section):
    preset: Literal["tiny", "flux-dev"] = "tiny"
    pulid_version: Literal["v0.9.1", "v0.9.0"] = "v0.9.1"
    devices: list[str] = Field(default_factory=lambda: ["cpu"])
    memory_mode: Literal["gpu", "offload", "fp8"] = "gpu"
    model_dir: Path = Path("./models")
    hf_cache: Path | None = None
    compile: bool = False
    onnx_provider: Literal["cpu", "gpu"] = "cpu"
    fusion: Literal["mean", "max", "norm_id", "max_token", "concat"] = "mean"
    eva_source: Literal["eva-clip", "timm"] = "eva-clip"
    min_face_px: int = Field(default=64, ge=16, le=1024)


class ModerationSettings(_Section):
    blocked_words: list[str] = Field(default_factory=list)
    blocked_patterns: list[str] = Field(default_factory=list)
    admin_ids: list[str] = Field(default_factory=list, description="platform:user_id")


class DiscordSettings(_Section):
    token: SecretStr | None = None
    test_guild_id: int | None = None


class TelegramSettings(_Section):
    token: SecretStr | None = None
    mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str | None = None
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = Field(default=8443, ge=1, le=65535)
    webhook_secret: SecretStr | None = None
    base_url: str | None = None


class Settings(_Section):
    database: DatabaseSettings = DatabaseSettings()
    storage: StorageSettings = StorageSettings()
    limits: LimitSettings = LimitSettings()
    queue: QueueSettings = QueueSettings()
    engine: EngineSettings = EngineSettings()
    moderation: ModerationSettings = ModerationSettings()
    discord: DiscordSettings = DiscordSettings()
    telegram: TelegramSettings = TelegramSettings()


def load_settings(
    path: str | Path | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read the TOML file (if any), overlay ``PULID_BOT__SECTION__KEY`` variables, validate."""
    env = dict(os.environ if environ is None else environ)
    data = _read_toml(_config_path(path, env))
    _overlay_env(data, env)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, data)) from None


def _config_path(path: str | Path | None, env: dict[str, str]) -> Path | None:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    if env.get(ENV_CONFIG_FILE):
        return _config_path(env[ENV_CONFIG_FILE], {})
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def _read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _overlay_env(data: dict[str, Any], env: dict[str, str]) -> None:
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"{key}: expected {ENV_PREFIX}SECTION__KEY")
        section = data.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"{key}: [{parts[0]}] is not a section")
        section[parts[1]] = _env_value(raw)


def _env_value(raw: str) -> Any:
    """Parse a variable as a TOML value (numbers, booleans, lists); else keep the string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _describe(exc: ValidationError, data: dict[str, Any]) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    value = _lookup(data, err["loc"])
    secret = any(s in loc for s in ("token", "secret", "url"))
    shown = "<hidden>" if secret else repr(value)
    return f"setting {loc} = {shown}: {err['msg']}"


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and part < len(data)
        if not (in_dict or in_list):
            return None
        data = data[part]
    return data


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as a plain dict with every secret (and database password) masked."""
    data = settings.model_dump(mode="json")
    for section in data.values():
        for key, value in section.items():
            if _is_secret(key) and value is not None:
                section[key] = "********"
    data["database"]["url"] = mask_url(settings.database.url)
    return data


def _is_secret(key: str) -> bool:
    return key in ("token", "webhook_secret") or key.endswith("_secret")


def mask_url(url: str) -> str:
    """Hide the password of a database URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:********@{host}" if ":" in creds else url
