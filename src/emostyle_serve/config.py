"""The service's settings: one frozen dataclass, checked once, passed to the app (and to uvicorn workers as JSON)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from emostyle_rt.errors import InvalidArgumentError, note
from emostyle_rt.options import OPTION_NAMES, StylizerOptions

#: Environment variable that carries the config to ``--workers N`` processes (uvicorn imports the app by name).
CONFIG_ENV = "EMOSTYLE_SERVE_CONFIG"
#: The service's pixel limit per image: 40 Mpx (a 7.3k x 5.5k photo). The library's 100 Mpx would let one
#: request hold 300 MB decoded; this keeps (queue x largest image) within a server's memory.
SERVE_MAX_PIXELS = 40_000_000
#: Largest request body: 32 MiB (a 40 Mpx JPEG is 10-20 MB).
SERVE_MAX_BODY = 32 << 20
#: Seconds a client has to send a request's line and headers (from the connection, or its first byte after an
#: earlier answer): a stalled client holds a connection no longer (nginx's client_header_timeout is 60 s, between reads).
HEADER_TIMEOUT_S = 10.0
#: Seconds a client has to send a request's whole body once its headers are in (32 MiB at 4.5 MB/s): a stalled
#: upload holds one of the --queue slots no longer, then gets 408 (nginx: client_body_timeout, between reads).
BODY_TIMEOUT_S = 60.0


@dataclass(frozen=True, init=False)
class ServeConfig:
    """Everything ``create_app`` needs. Defaults suit one CPU machine; ``check()`` refuses values that cannot work.

    The Stylizer's own options are one :class:`~emostyle_rt.StylizerOptions` (``options``); they may also be
    given, and read, by their names (``ServeConfig(bundle=..., backend="onnxruntime")``, ``config.memory_budget``).
    The service's default ``max_pixels`` is :data:`SERVE_MAX_PIXELS`, not the library's.

    Args:
        bundle: the bundle folder (it must exist on every machine that runs a worker or replica).
        max_batch: images at most in one classifier / style run.
        max_wait_ms: how long the batcher waits after a batch's first request for others to join it.
        queue: requests admitted at once (reading, waiting, running); one more is answered 429 with
            Retry-After, so memory stays within about ``queue x`` (``max_body`` + the decoded image).
        max_body: largest request body in bytes (more: 413).
        quality: JPEG / WebP quality of answers (None: the library's).
        strip_metadata: do not copy an upload's EXIF and ICC profile into its answer.
        warmup: run every graph once before /readyz says ready.
        header_timeout: seconds a client may take to send a request's line and headers; then 408.
        body_timeout: seconds a client may take to send a request's whole body; then 408, and its queue slot
            is freed.
        ui: serve the page at ``GET /`` (``emostyle_serve.ui``; ``--no-ui`` turns it off).
        options: the Stylizer's options (default: ``StylizerOptions(max_pixels=SERVE_MAX_PIXELS)``).
            ``memory_budget`` is one style run's of this process (None: the library's default, which keeps one
            process' peak RSS at about 2.5 GB; ``emostyle serve --workers N`` gives each worker its share of the
            machine: ``emostyle_rt.tiling.worker_budget``).
        **stylizer: options by name (``backend``, ``precision``, ``memory_budget``, ...), replacing those of
            ``options``.

    Raises:
        TypeError: an unknown keyword.
        BackendError, InvalidArgumentError, MemoryBudgetError: a Stylizer option that cannot work.
    """

    bundle: str
    max_batch: int = 8
    max_wait_ms: float = 5.0
    queue: int = 32
    max_body: int = SERVE_MAX_BODY
    quality: int | None = None
    strip_metadata: bool = False
    warmup: bool = True
    header_timeout: float = HEADER_TIMEOUT_S
    body_timeout: float = BODY_TIMEOUT_S
    ui: bool = True
    options: StylizerOptions = StylizerOptions(max_pixels=SERVE_MAX_PIXELS)

    def __init__(self, bundle: str, *, options: StylizerOptions | None = None, **kwargs: Any) -> None:
        own = {f.name: f for f in fields(self)}
        unknown = sorted(k for k in kwargs if k not in own and k not in OPTION_NAMES or k in ("bundle", "options"))
        if unknown:
            raise TypeError(f"ServeConfig got unknown keyword arguments {unknown}.")
        if options is not None and not isinstance(options, StylizerOptions):
            raise InvalidArgumentError("options must be a StylizerOptions."
                                       + note("emostyle_rt.StylizerOptions(...) or None", type(options).__name__))
        flat = {k: v for k, v in kwargs.items() if k in OPTION_NAMES}
        base = own["options"].default if options is None else options
        object.__setattr__(self, "bundle", bundle)
        for name, f in own.items():
            if name not in ("bundle", "options"):
                object.__setattr__(self, name, kwargs.get(name, f.default))
        object.__setattr__(self, "options", base.replace(**flat) if flat else base)

    def __getattr__(self, name: str) -> Any:
        """The Stylizer's options read by name (``config.backend``, ``config.memory_budget``, ...)."""
        options = self.__dict__.get("options")
        if name in OPTION_NAMES and options is not None:
            return getattr(options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def check(self) -> ServeConfig:
        """Raise ``InvalidArgumentError`` for a value that cannot work; the config itself otherwise."""
        ints = {"max_batch": 1, "queue": 1, "max_body": 1}  # the Stylizer's options checked themselves
        for name, low in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InvalidArgumentError(f"{name} must be an integer >= {low}." + note(f">= {low}", repr(v)))
        if isinstance(self.max_wait_ms, bool) or not isinstance(self.max_wait_ms, (int, float)) \
                or not 0 <= self.max_wait_ms <= 1000:
            raise InvalidArgumentError(
                "max_wait_ms must be from 0 to 1000 (milliseconds a batch waits for more requests)."
                + note("0..1000 (a few ms)", repr(self.max_wait_ms)))
        for name in ("header_timeout", "body_timeout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 86400:
                raise InvalidArgumentError(f"{name} must be a positive number of seconds."
                                           + note("0 < seconds <= 86400", repr(v)))
        if self.quality is not None and (isinstance(self.quality, bool) or not isinstance(self.quality, int)
                                         or not 1 <= self.quality <= 100):
            raise InvalidArgumentError("quality must be an integer from 1 to 100." + note("1..100", repr(self.quality)))
        return self

    def as_dict(self) -> dict[str, Any]:
        """The config as one flat dict: the service's fields and the Stylizer's options by name."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        return {**own, **self.options.as_dict()}

    def to_env(self) -> str:
        """The config as JSON, for ``CONFIG_ENV`` (flat: the Stylizer's options by name)."""
        return json.dumps(self.as_dict(), default=os.fspath)

    @classmethod
    def from_env(cls) -> ServeConfig:
        """The config a parent ``emostyle serve`` put in ``CONFIG_ENV``."""
        raw = os.environ.get(CONFIG_ENV)
        if not raw:
            raise InvalidArgumentError(
                f"No service config in ${CONFIG_ENV}." + note("the JSON that `emostyle serve` sets", "nothing"))
        try:
            data: dict[str, Any] = json.loads(raw)
            known = {f.name for f in fields(cls)} | set(OPTION_NAMES)
            return cls(**{k: v for k, v in data.items() if k in known}).check()
        except (ValueError, TypeError) as exc:
            raise InvalidArgumentError(f"${CONFIG_ENV} is not a service config: {exc}." + note("JSON", raw[:80])) from exc

    @property
    def bundle_path(self) -> Path:
        return Path(self.bundle)
