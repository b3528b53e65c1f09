"""`config.toml` + environment overrides + validation (CORE-13..17, BEY-12, BEY-23).

Three parts: `schema` (what the file may say, as frozen structs), `load` (reading, overriding
and validating it) and `render` (showing it with secrets masked). Credentials are `Secret`s
that mask themselves wherever they are printed.
"""

from serbero.config.load import (
    config_from_toml,
    load_config,
    load_view_config,
    resolve_config_path,
    validate_for_daemon,
)
from serbero.config.render import masked, render_toml
from serbero.config.schema import (
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG,
    ENV_DB_PATH,
    ENV_LOG,
    ENV_PRIVATE_KEY,
    ChatConfig,
    Config,
    ConfigError,
    ConfigWarning,
    EscalationConfig,
    HealthConfig,
    LoadedConfig,
    MediationConfig,
    MostroConfig,
    NotificationsConfig,
    Permission,
    PromptsConfig,
    ReasoningConfig,
    RelayConfig,
    SerberoConfig,
    SolverConfig,
    TimeoutsConfig,
    ViewConfig,
    shown_pubkey,
)
from serbero.config.secret import MASK, Secret

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_CONFIG",
    "ENV_DB_PATH",
    "ENV_LOG",
    "ENV_PRIVATE_KEY",
    "MASK",
    "ChatConfig",
    "Config",
    "ConfigError",
    "ConfigWarning",
    "EscalationConfig",
    "HealthConfig",
    "LoadedConfig",
    "MediationConfig",
    "MostroConfig",
    "NotificationsConfig",
    "Permission",
    "PromptsConfig",
    "ReasoningConfig",
    "RelayConfig",
    "Secret",
    "SerberoConfig",
    "SolverConfig",
    "TimeoutsConfig",
    "ViewConfig",
    "config_from_toml",
    "load_config",
    "load_view_config",
    "masked",
    "render_toml",
    "resolve_config_path",
    "shown_pubkey",
    "validate_for_daemon",
]
