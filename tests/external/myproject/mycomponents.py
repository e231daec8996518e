"""A user's own components, kept outside diffexp: named from config by ``_target_``."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl


class StepCounter(pl.Callback):
    """Writes the number of optimizer steps the run trained into ``filename`` in its run folder."""

    def __init__(self, filename: str = "steps.txt"):
        self.filename = filename

    def on_train_end(self, trainer, module):
        Path(trainer.default_root_dir, self.filename).write_text(f"{trainer.global_step}\n")
