"""The job spec's `index` section: how item text becomes semantic IDs (indexing/build.py reads it)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from cluster.cluster_spec import Section as _Section


class RewriteSpec(_Section):
    """Optional teacher-LLM rewrite of item text (GREAM), cached and resumable."""

    enabled: bool = False
    endpoint: str | None = None  # OpenAI-compatible base URL; None = local vLLM engine
    model: str | None = None
    max_tokens: int = Field(160, ge=8)


class CollaborativeSpec(_Section):
    """Co-occurrence vectors from the training split, mixed into what residual k-means clusters."""

    weight: float = Field(0.0, ge=0.0, lt=1.0)  # share of the squared distance; 0 = text only
    dim: int = Field(64, ge=2)
    window: int = Field(5, ge=1)  # items before each training target that count as bought with it


class FlexcodeSpec(_Section):
    """FlexCode's collaborative codebook and token split (indexing/flexcode.py), for index.scheme: flexcode."""

    # Item vectors of the collaborative codebook: gream's SASRec trained on the training split, or
    # co-occurrence PPMI vectors (index.collaborative's dim and window), which need no training.
    cf_source: Literal["sasrec", "cooccurrence"] = "sasrec"
    # SASRec settings (fields of sft/sasrec.py SasrecConfig) for cf_source sasrec; the default is
    # configs/sasrec_office.json, the validation-best SASRec on Office (BENCHMARKS.md at 1878e6b, "Office quality"),
    # small enough that the Office index builds in minutes on two cores (the SasrecConfig defaults
    # were still training after 17 CPU-minutes).
    sasrec: dict[str, Any] = {"hidden": 64, "blocks": 1, "dropout": 0.2, "lr": 0.001}
    cf_codes: int = Field(256, ge=2, le=65536)  # codes per collaborative level
    # An item gets one collaborative token per quantile its training popularity reaches (the rest
    # of index.levels are semantic): [0.5, 0.8] gives the top 20% two, the next 30% one, the rest none.
    cf_quantiles: list[float] = [0.5, 0.8]
    align: bool = True  # InfoNCE map of the collaborative vectors into the text space before quantizing
    align_steps: int = Field(300, ge=1)
    temperature: float = Field(0.07, gt=0)

    @model_validator(mode="after")
    def _ascending_quantiles(self) -> "FlexcodeSpec":
        q = self.cf_quantiles
        if not q or any(not 0.0 < x < 1.0 for x in q) or any(a >= b for a, b in zip(q, q[1:])):
            raise ValueError(f"cf_quantiles: {q}; expected ascending values strictly between 0 and 1")
        return self


class IndexSpec(_Section):
    levels: int = Field(3, ge=1, le=8)
    codes: int = Field(256, ge=2, le=65536)
    balanced: bool = True
    seed: int = 0
    kmeans_iters: int = Field(25, ge=1)
    encoder: str = "minilm"  # "minilm" | a Hugging Face causal LM folder (mean pooled)
    text_fields: list[str] = ["title", "brand", "categories", "description", "reviews"]
    max_text_chars: int = Field(1024, ge=16)
    embed_batch_size: int = Field(64, ge=1)
    # bfloat16 (opt-in) embeds 1.6x faster on AMX/AVX512-BF16 CPUs, but rounds differently per CPU: SIDs vary
    embed_dtype: Literal["float32", "bfloat16"] = "float32"
    import_file: str | None = None  # an existing NAME.*.index.json to use instead of k-means
    # Where code tuples collide: "level" appends a dedup level (every SID one token longer), "reassign"
    # moves the colliding items to the nearest free code of the last level (k-means only: it needs
    # the centres).
    collisions: Literal["level", "reassign"] = "level"
    rewrite: RewriteSpec = RewriteSpec()
    collaborative: CollaborativeSpec = CollaborativeSpec()
    # kmeans: one codebook over text (+ collaborative.weight of co-occurrence); flexcode: a
    # collaborative and a semantic codebook, tokens split by popularity (flexcode section).
    scheme: Literal["kmeans", "flexcode"] = "kmeans"
    flexcode: FlexcodeSpec = FlexcodeSpec()

    @model_validator(mode="after")
    def _kmeans_only_settings(self) -> "IndexSpec":
        if self.scheme == "flexcode" and self.import_file:
            raise ValueError("scheme flexcode builds its own IDs; an import_file brings them: drop one")
        if self.scheme == "flexcode" and self.collaborative.weight > 0:
            raise ValueError("collaborative.weight mixes co-occurrence into scheme kmeans' one codebook; "
                             "scheme flexcode has a collaborative codebook of its own: set the weight to 0")
        if self.scheme == "flexcode" and len(self.flexcode.cf_quantiles) > self.levels:
            raise ValueError(f"flexcode.cf_quantiles has {len(self.flexcode.cf_quantiles)} entries, more than "
                             f"the {self.levels} tokens (levels) an item has")
        if self.import_file and self.collaborative.weight > 0:
            raise ValueError("collaborative.weight applies to residual k-means; an import_file brings its own IDs")
        if self.import_file and self.collisions == "reassign":
            raise ValueError("collisions: reassign needs the k-means centres; an import_file gets a dedup level")
        return self
