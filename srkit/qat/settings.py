"""What a quantization-aware fine-tuning run does (no heavy imports: the CLI reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_STEPS = 600
DEFAULT_LR = 1e-4
DEFAULT_BATCH = 16
DEFAULT_PATCH = 32  # LR pixels
INIT_SAMPLES = 64  # patches that set the initial quantizer ranges


@dataclass(frozen=True)
class QatSettings:
    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_LR
    batch: int = DEFAULT_BATCH
    patch: int = DEFAULT_PATCH
    seed: int = 0

    def describe(self) -> str:
        return (f"{self.steps} steps, batch {self.batch} of {self.patch}x{self.patch} LR patches, Adam lr "
                f"{self.lr:g} (cosine), MSE to ground truth, seed {self.seed}")
