"""Where every artefact of a run lives: the one place the run folder's paths are spelled.

Stages write here, and the application (export, status, dashboard, compare) reads here, so a path
renamed in this module is renamed everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EVAL_FILE = "eval.json"
RANKS_FILE = "ranks.json"  # per-user rank of the target, beside eval.json
SPEC_FILE = "spec.yaml"  # the resolved spec the run's last stage ran under (gream serve reads it)
METRICS_FILE = "metrics.jsonl"
STAGE_MARKER = "stage.json"
MODEL_DIR = "model"
INDEX_SUFFIX = ".index.json"
SID_VOCAB_FILE = "sid_vocab.txt"
SELECTION_FILE = "selection.json"  # which checkpoint became rl/model
STAGE_FOLDERS = {"sasrec": "baselines/sasrec"}  # launch stages whose folder is not their name


def ranks_file(mode: str | None = None) -> str:
    """ranks.json for the direct mode (the default), ranks-<mode>.json for another answer mode."""
    return RANKS_FILE if mode in (None, "direct") else f"ranks-{mode}.json"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def stage(self, name: str) -> Path:
        """A stage's folder (`index`, `sft`, `rl`, `eval`) or a baseline's (`baselines/sasrec`); the
        launch stage `sasrec` writes the SASRec baseline's."""
        return self.root / STAGE_FOLDERS.get(name, name)

    def model(self, stage: str) -> Path:
        return self.stage(stage) / MODEL_DIR

    def eval_file(self, stage: str) -> Path:
        return self.stage(stage) / EVAL_FILE

    def metrics(self, stage: str) -> Path:
        return self.stage(stage) / METRICS_FILE

    def stage_marker(self, stage: str) -> Path:
        return self.stage(stage) / STAGE_MARKER

    @property
    def spec_file(self) -> Path:
        return self.root / SPEC_FILE

    def index_file(self, dataset: str) -> Path:
        return self.stage("index") / f"{dataset}{INDEX_SUFFIX}"

    def index_files(self) -> list[Path]:
        return sorted(self.stage("index").glob(f"*{INDEX_SUFFIX}"))

    @property
    def sid_vocab(self) -> Path:
        return self.stage("index") / SID_VOCAB_FILE

    @property
    def related_items(self) -> Path:
        """Each item's most similar items by text embedding (indexing.neighbours)."""
        return self.stage("index") / "related_items.npy"

    @property
    def train_summary(self) -> Path:
        return self.stage("sft") / "train_summary.json"

    @property
    def reasoning(self) -> Path:
        """The teacher's reasoning records (`gream teach`), which SFT reads."""
        return self.stage("teach") / "reasoning"

    @property
    def preference(self) -> Path:
        """The teacher's per-user preference summaries (`gream teach`), which SFT reads."""
        return self.stage("teach") / "preference"

    @property
    def selection(self) -> Path:
        return self.model("rl") / SELECTION_FILE

    @property
    def checkpoints(self) -> Path:
        return self.stage("rl") / "checkpoints"

    @property
    def sft_checkpoints(self) -> Path:
        return self.stage("sft") / "checkpoints"

    @property
    def sft_tune(self) -> Path:
        """`gream sft --tune`: a run folder per trial, and tune.json."""
        return self.root / "sft_tune"

    @property
    def status(self) -> Path:
        return self.stage("rl") / "status.json"

    @property
    def control(self) -> Path:
        return self.stage("rl") / "control.json"

    @property
    def baselines(self) -> Path:
        return self.root / "baselines"

    def baseline(self, name: str) -> Path:
        return self.baselines / name
