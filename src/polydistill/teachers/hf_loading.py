"""Loading Hugging Face models for every ``hf:`` adapter: local folder or cache first, clear errors offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import SourceOptions
from .weights import hub_offline


class HubOptions(SourceOptions):
    """Options every ``hf:`` teacher takes."""

    revision: str | None = None


def load_kwargs(trust_remote_code: bool, options: HubOptions) -> dict[str, Any]:
    """Keyword arguments of every ``from_pretrained`` call of one teacher."""
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if options.revision:
        kwargs["revision"] = options.revision
    return kwargs


def load_pretrained(loader: Any, path: str, name: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` from a local folder or the cache first; a clear error when not available or when
    the model ships code of its own that ``trust_remote_code`` does not allow to run."""
    try:
        return _load_pretrained(loader, path, name, **kwargs)
    except ValueError as exc:  # transformers refuses custom code without trust_remote_code (the code did not run)
        if kwargs.get("trust_remote_code") or "trust_remote_code" not in str(exc):
            raise
        raise ConfigError(
            f"teacher '{name}': '{path}' ships its own model code, which polydistill does not run unless told to; "
            "if you trust that code, set trust_remote_code: true on the teacher") from None


def _load_pretrained(loader: Any, path: str, name: str, **kwargs: Any) -> Any:
    if Path(path).is_dir():
        try:
            return loader.from_pretrained(path, **kwargs)
        except OSError as exc:  # no config.json, no weights file, an unreadable file
            raise ConfigError(
                f"teacher '{name}': cannot load {loader.__name__} from the local folder '{path}' "
                f"({' '.join(str(exc).split())}); the folder needs what save_pretrained writes (config.json, "
                "model.safetensors, preprocessor_config.json)") from None
    if path.startswith(("/", "./", "../", "~")):  # a file-system path, not a hub id
        raise ConfigError(f"teacher '{name}': the folder '{path}' does not exist; fix the path (a hub model is "
                          "named 'org/model')")
    try:
        return loader.from_pretrained(path, local_files_only=True, **kwargs)
    except OSError as cached_miss:
        if hub_offline():
            raise ConfigError(
                f"teacher '{name}': '{path}' is not cached locally and HF_HUB_OFFLINE is set; download it once "
                f"with internet (e.g. `huggingface-cli download {path}`) or point path at a local folder"
            ) from cached_miss
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ConfigError(
            f"teacher '{name}': could not load '{path}' from the hub and it is not cached locally ({exc}); "
            "check the id and your connection, or point path at a local folder"
        ) from None
