"""Typed settings of the whole app: defaults, then ``SMALLFIRST_*`` variables, then CLI flags.

The service, the ingest CLI, the worker and the offline tools all read this one object.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

ENV_PREFIX = "SMALLFIRST_"
MIN_TYPED_TOKENS = 64
DEFAULT_GROUNDING_THRESHOLD = 0.28  # used until a collection is calibrated (measured on docs/)  # room an autocomplete slot keeps for the typed text


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "smallfirst"


@dataclass(frozen=True)
class Settings:
    """Every tunable of the service, the CLI and ingestion."""

    # Network
    host: str = _opt("127.0.0.1", "Address the service listens on.")
    port: int = _opt(8000, "Port the service listens on.")
    # Storage
    data_dir: Path = field(
        default_factory=_default_data_dir,
        metadata={"help": "Folder for the embedded Qdrant store and other state."},
    )
    qdrant_url: str | None = _opt(None, "Qdrant server URL; unset uses the embedded store in DATA_DIR/qdrant.")
    qdrant_api_key: str | None = _opt(None, "API key for the Qdrant server.")
    collection: str = _opt("docs", "Qdrant collection holding the document chunks.")
    # Embedding
    embed_model: str | None = _opt(None, "Sentence-transformers model folder; unset uses the bundled all-MiniLM-L6-v2.")
    embed_backend: str = _opt("onnx", "Embedding runtime: onnx (an int8 copy of the model on onnxruntime, made once and cached; no torch on the request path) or torch (sentence-transformers).")
    embed_cache_dir: Path | None = _opt(None, "Folder for the int8 ONNX copy of the embedding model; unset: ~/.cache/smallfirst/embedder.")
    embed_batch_size: int = _opt(32, "Chunks embedded per batch by the ingest CLI.")
    ingest_batch_size: int = _opt(1, "Chunks embedded per scheduler step by the service's ingest worker (bounds how long a keystroke waits).")
    query_cache_size: int = _opt(2048, "Query vectors kept in the LRU cache.")
    # Chunking
    chunk_tokens: int = _opt(220, "Target size of a chunk in embedding-model tokens.")
    chunk_overlap_tokens: int = _opt(32, "Tokens of the previous chunk repeated at the start of the next.")
    watch_folders: tuple[str, ...] = _opt((), "Folders the service ingests at start and again whenever their files change (comma separated).")
    max_file_mb: float = _opt(50.0, "Files larger than this many megabytes are reported and skipped by ingest.")
    # Small model
    model_path: str | None = _opt(None, "GGUF file of the small model; unset uses the bundled Gemma 3 270M.")
    model_threads: int = _opt(0, "Threads for llama.cpp; 0 uses every core.")
    answer_ctx: int = _opt(2048, "Context window of the answer context in tokens.")
    complete_ctx: int = _opt(1024, "Tokens each autocomplete slot (one per typist) holds: grounding plus typed text plus suggestion.")
    complete_slots: int = _opt(8, "Autocomplete slots in the shared context: one per recent typist, plus one while new grounding is prefilled.")
    complete_grounding: bool = _opt(True, "Put a retrieved passage in front of the typed text (looked up off the keystroke path, at word boundaries).")
    complete_context_tokens: int = _opt(120, "Model tokens of the retrieved passage in front of the typed text.")
    complete_copy: bool = _opt(True, "Where the last words typed stand in the grounding passage (or another passage found for the typed words), suggest that passage's next words to the end of the clause, with no model step.")
    complete_fast_output: bool = _opt(True, "Serve keystrokes from a copy of the model whose output layer is stored at Q4_0 (made once per machine under the cache folder): about a quarter less time per step on a few cores; answers keep the model as it is. Off: keystrokes use the model file as it is too.")
    complete_prefix_reuse: bool = _opt(True, "Reuse the KV prefix and cached retrieval between keystrokes (off: every keystroke retrieves and prefills from scratch, a baseline for benchmarks).")
    answer_kv_cache_mb: float = _opt(256.0, "Saved KV states of answer prompts, taken where each source passage ends: a new question on sources seen before evaluates only its own few tokens, and the same question again too; least recently used out first; 0 turns it off.")
    answer_assemble_passages: bool = _opt(False, "Also place a passage saved in another prompt, after other text, into a new prompt (shifted into place, its first tokens evaluated again): fewer tokens to evaluate when sources come in new combinations, but not exact, so off by default. Keeps a second store of passage states, as large again as answer_kv_cache_mb.")
    adapter_path: Path | None = _opt(None, "Folder written by `smallfirst distill`: its accepted LoRA adapter is applied to the small tier's answers.")
    complete_adapter: bool = _opt(False, "Apply the adapter to autocomplete too (off: suggestions stay on the base model).")
    prefill_step_tokens: int = _opt(32, "Prompt tokens evaluated per scheduler step (bounds how long a keystroke waits).")
    # Retrieval and answers
    top_k: int = _opt(8, "Chunks retrieved for an answer when the request gives no top_k: its sources, and its evidence sentences' pool.")
    max_top_k: int = _opt(16, "Largest top_k a request may ask for.")
    min_score: float = _opt(0.2, "Hits scoring below this cosine similarity are not used as context.")
    context_tokens: int = _opt(360, "Token budget of the whole chunks in the large tier's answer prompt (the small tier's holds evidence sentences).")
    answer_max_tokens: int = _opt(200, "Most tokens generated for an answer.")
    answer_temperature: float = _opt(0.0, "Sampling temperature for answers (0: greedy, the same answer every time).")
    evidence_windows: int = _opt(3, "Evidence sentences (each with its label and neighbours) in the small tier's answer prompt.")
    answer_name_choice: bool = _opt(True, "For a question that asks for a name (\"Which method ...?\"), the small tier answers with the name its two best evidence sentences give that the small model scores likeliest, instead of writing a sentence.")
    answer_pick: bool = _opt(True, "The small tier picks its answer from the evidence for every shape of question (a value, a count, yes or no, a description, as well as a name): the span of its best sentences the small model scores likeliest, cited, instead of a sentence it writes; where no span fits, it writes.")
    answer_learned_check: bool = _opt(True, "Choose the picked answer, and mark it supported, by the learned pick model (retrieval/data/pick_model.json: each candidate span's probability of being right, from features of the span, its sentence and the retrieval; supported at the threshold chosen on the dev QA sets); false: the small model's likeliest span, checked by the rules.")
    complete_max_tokens: int = _opt(16, "Default and upper bound of max_tokens for autocomplete.")
    # Routing and the large tier
    grounding_threshold: float | None = _opt(None, "Top retrieval score below which an answer escalates (low_grounding); unset: calibrated on each collection at start and after each ingest job.")
    calibration_questions: int = _opt(120, "Pseudo-questions drawn from a collection's own headings and sentences when calibrating its grounding threshold.")
    hard_query_threshold: float = _opt(0.5, "Classifier probability above which a question is hard and escalates (hard_query).")
    hard_query_strong_threshold: float = _opt(0.75, "Probability needed instead when retrieval is strong (top score 0.25 above the grounding threshold); in between it rises linearly.")
    large_url: str | None = _opt(None, "Base URL of an OpenAI-compatible API for the large tier, e.g. http://host:8080/v1; unset disables it.")
    large_model: str = _opt("large", "Model name sent to the large tier.")
    large_api_key: str | None = _opt(None, "Bearer key for the large tier.")
    large_send_context: bool = _opt(True, "Send retrieved document text to the large tier (off: the question alone).")
    large_max_tokens: int = _opt(400, "Most tokens asked of the large tier for an answer.")
    large_temperature: float = _opt(0.0, "Sampling temperature asked of the large tier.")
    large_connect_timeout_s: float = _opt(3.0, "Connect timeout for the large tier.")
    large_first_token_timeout_s: float = _opt(15.0, "Time allowed until the large tier's first token.")
    large_token_timeout_s: float = _opt(10.0, "Time allowed between two tokens of the large tier.")
    large_total_timeout_s: float = _opt(120.0, "Time allowed for a whole large-tier answer.")
    large_retries: int = _opt(1, "Retries of a large-tier request that failed before its first token.")
    breaker_failures: int = _opt(3, "Consecutive large-tier failures that open the circuit breaker.")
    breaker_reset_s: float = _opt(30.0, "Seconds the open breaker waits before letting one trial request through.")
    # Cost
    small_price_in_per_m: float = _opt(0.0, "Small tier: USD per million prompt tokens (electricity/CPU, if you count it).")
    small_price_out_per_m: float = _opt(0.0, "Small tier: USD per million generated tokens.")
    large_price_in_per_m: float = _opt(2.5, "Large tier: USD per million prompt tokens.")
    large_price_out_per_m: float = _opt(10.0, "Large tier: USD per million generated tokens.")
    distill_log: Path | None = _opt(None, "Append every large-tier answer (escalated or forced) with its sources to this JSONL file: teacher data for `smallfirst distill`.")
    distill_max_bytes: int = _opt(50_000_000, "Rotate the distillation log past this size.")
    distill_backups: int = _opt(5, "Rotated distillation logs kept.")
    # Limits
    max_frame_bytes: int = _opt(65536, "Largest WebSocket frame answered normally; 4x this closes with 1009.")
    max_question_chars: int = _opt(2000, "Longest question accepted.")
    max_text_chars: int = _opt(8000, "Longest autocomplete text accepted (only its tail is used).")
    rate_limit_per_s: float = _opt(30.0, "Messages per second allowed on one connection (token bucket).")
    rate_burst: int = _opt(60, "Burst size of the per-connection rate limit.")
    max_inflight: int = _opt(4, "Requests one connection may have in flight.")
    answer_queue_limit: int = _opt(16, "Answers waiting for the model before new ones get 'busy'.")
    answer_wait_budget_s: float = _opt(5.0, "Longest predicted wait behind other requests before a small answer takes the model (measured service times x queue ahead; never its own prefill, so an idle model always admits); past it an answer goes to the large tier (small_unavailable), or gets 'busy' with retry_after_ms at once. An admitted answer whose turn can no longer come within it while queued is given up the same way.")
    idle_timeout_s: float = _opt(600.0, "Close a connection that sent nothing for this long.")
    max_chunk_chars: int = _opt(4000, "Longest chunk in characters, for every format (long words and lines are cut).")
    max_json_bytes: int = _opt(65536, "Largest JSON request body.")
    max_upload_mb: float = _opt(100.0, "Largest multipart upload (all its files together) in megabytes.")
    upload_quota_mb: float = _opt(500.0, "Megabytes of uploaded files one collection may hold.")
    max_collections: int = _opt(32, "Most collections; ingesting into a new one past this is refused.")
    max_connections: int = _opt(256, "WebSocket connections served at once; more are closed with 1013.")
    max_connections_per_client: int = _opt(32, "WebSocket connections one client address may hold; more are closed with 1013.")
    http_concurrency: int = _opt(512, "Connections and requests the HTTP server handles at once; more are answered 503.")
    header_timeout_s: float = _opt(10.0, "Close an HTTP connection whose request headers are not complete in this many seconds.")
    keep_alive_timeout_s: float = _opt(5.0, "Close an idle keep-alive HTTP connection after this many seconds.")
    # Security
    api_token: str | None = _opt(None, "Token for writes, admin reads and non-browser WebSocket clients; unset: one is generated into DATA_DIR/api-token.")
    require_token: bool = _opt(True, "Require the token (off: a trusted lab on loopback only; logged as a warning).")
    ingest_roots: tuple[str, ...] = _opt((), "Folders under which POST /api/ingest may read (comma separated); watch folders and uploads are always allowed.")
    allowed_hosts: tuple[str, ...] = _opt((), "Host names the service answers besides localhost and --host (comma separated; '*.example.com' allowed).")
    allowed_origins: tuple[str, ...] = _opt((), "Browser origins allowed besides the service's own, on the WebSocket and the API (comma separated).")
    log_level: str = _opt("info", "Log level: debug, info, warning, error.")
    log_format: str = _opt("text", "Log format: text, or json (one object a line, with request and connection ids).")
    thread_checks: bool = _opt(False, "Debug: fail every llama.cpp or embedding call made off the thread that owns the model (the scheduler thread in the service); the tests turn it on.")

    @property
    def service_file(self) -> Path:
        """Where a running service that holds the embedded store announces its URL to the ingest CLI."""
        return self.data_dir / "service.json"

    @property
    def grounding_threshold_or_default(self) -> float:
        """The set threshold, or the fallback used until a collection is calibrated."""
        return self.grounding_threshold if self.grounding_threshold is not None else DEFAULT_GROUNDING_THRESHOLD

    @property
    def token_file(self) -> Path:
        """Where the generated API token is kept (mode 0600) for the CLI on this machine."""
        return self.data_dir / "api-token"

    @property
    def local_key_file(self) -> Path:
        """The per-start key (mode 0600) that marks the local CLI user, whose ingest paths are not restricted."""
        return self.data_dir / "local-key"

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded files are kept, one folder per collection."""
        return self.data_dir / "uploads"

    @property
    def qdrant_path(self) -> Path:
        """Folder of the embedded Qdrant store."""
        return self.data_dir / "qdrant"

    def validate(self) -> "Settings":
        """Reject values that would fail later and less clearly."""
        positive = (
            "port", "embed_batch_size", "ingest_batch_size", "query_cache_size", "chunk_tokens", "answer_ctx", "complete_ctx", "complete_slots", "complete_context_tokens",
            "prefill_step_tokens", "top_k", "max_top_k", "context_tokens", "answer_max_tokens",
            "complete_max_tokens", "max_frame_bytes", "max_question_chars", "max_text_chars",
            "rate_burst", "max_inflight", "answer_queue_limit", "large_max_tokens", "large_connect_timeout_s",
            "large_first_token_timeout_s", "large_token_timeout_s", "large_total_timeout_s", "breaker_failures",
            "breaker_reset_s", "distill_max_bytes", "evidence_windows", "calibration_questions", "max_chunk_chars",
            "max_json_bytes", "max_upload_mb", "upload_quota_mb", "max_collections", "max_connections",
            "max_connections_per_client", "http_concurrency", "header_timeout_s", "keep_alive_timeout_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.complete_ctx < self.complete_context_tokens + self.complete_max_tokens + MIN_TYPED_TOKENS:
            raise SettingsError(
                f"complete_ctx ({self.complete_ctx}) must hold complete_context_tokens ({self.complete_context_tokens}), "
                f"complete_max_tokens ({self.complete_max_tokens}) and at least {MIN_TYPED_TOKENS} tokens of typed text"
            )
        if not 0 <= self.chunk_overlap_tokens < self.chunk_tokens:
            raise SettingsError("chunk_overlap_tokens must be at least 0 and below chunk_tokens")
        if self.max_chunk_chars < 200:
            raise SettingsError(f"max_chunk_chars must be at least 200, got {self.max_chunk_chars}")
        if self.port > 65535:
            raise SettingsError(f"port must be at most 65535, got {self.port}")
        if self.model_threads < 0:
            raise SettingsError("model_threads must be 0 (all cores) or positive")
        if self.embed_backend not in ("onnx", "torch"):
            raise SettingsError(f"embed_backend must be onnx or torch, got {self.embed_backend!r}")
        if self.answer_kv_cache_mb < 0:
            raise SettingsError("answer_kv_cache_mb must not be negative")
        if self.answer_wait_budget_s < 0:
            raise SettingsError("answer_wait_budget_s must not be negative")
        if self.rate_limit_per_s <= 0 or self.idle_timeout_s <= 0 or self.max_file_mb <= 0:
            raise SettingsError("rate_limit_per_s, idle_timeout_s and max_file_mb must be positive")
        prices = (self.small_price_in_per_m, self.small_price_out_per_m, self.large_price_in_per_m, self.large_price_out_per_m)
        if min(prices) < 0 or self.large_retries < 0 or self.distill_backups < 0:
            raise SettingsError("prices, large_retries and distill_backups must not be negative")
        if not 0 <= self.hard_query_threshold <= 1 or not 0 <= self.hard_query_strong_threshold <= 1:
            raise SettingsError("hard_query_threshold and hard_query_strong_threshold must be between 0 and 1")
        if self.grounding_threshold is not None and not -1 <= self.grounding_threshold <= 1:
            raise SettingsError("grounding_threshold must be a cosine similarity between -1 and 1")
        if self.answer_temperature < 0 or self.large_temperature < 0:
            raise SettingsError("answer_temperature and large_temperature must not be negative")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"log_format must be text or json, got {self.log_format!r}")
        return self

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from the environment, then explicit overrides (None means 'not given')."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if name in env:
                values[f.name] = parse_value(hints[f.name], env[name], name)
        for key, value in overrides.items():
            if value is not None:
                values[key] = value
        return cls(**values).validate()


def _base_type(hint: Any) -> tuple[Any, bool]:
    """Strip ``Optional`` from a type hint; say whether it was optional."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def parse_value(hint: Any, raw: str, source: str) -> Any:
    """Convert one textual value to the field's type, with an error that names its source."""
    base, optional = _base_type(hint)
    text = raw.strip()
    if optional and text == "":
        return None
    try:
        if base is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if typing.get_origin(base) is tuple:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        if base is Path:
            return Path(text).expanduser()
        return base(text)
    except ValueError as exc:
        raise SettingsError(f"{source}={raw!r} is not a valid value: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """Add one ``--flag`` per setting (or per named setting), documented with its variable."""
    hints = typing.get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        if names is not None and f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        base, _ = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text = f"{f.metadata['help']} [env {ENV_PREFIX}{f.name.upper()}; default {shown}]"
        if base is bool:
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                                type=_flag_parser(hints[f.name], flag), help=help_text)


def _flag_parser(hint: Any, flag: str) -> Callable[[str], Any]:
    """The argparse ``type`` of a settings flag: parses a raw value as the setting's type."""
    return lambda raw: _parse_flag(hint, raw, flag)


def _parse_flag(hint: Any, raw: str, flag: str) -> Any:
    try:
        return parse_value(hint, raw, flag)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags given on the command line."""
    names = {f.name for f in dataclasses.fields(Settings)}
    return Settings.load(**{k: v for k, v in vars(args).items() if k in names})
