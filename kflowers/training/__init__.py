"""The training layer: strategies, recipes' optimizers, the run loop and what makes it resumable.

loop           `train` and `RunLoop`: a strategy's stages, backups, early stopping
strategies     scratch, frozen, finetune, two-stage, discriminative
callbacks      `UnfreezeBackbone`, `BackupAndRestore` (Keras's, recording the stage), `SetDatasetEpoch`
backup         the state written after every epoch
feature_cache  frozen epochs on backbone features computed once
lr_find        the learning-rate sweep
distributed    torchrun and jax data parallelism
"""

from kflowers.lazy import lazy_exports


_EXPORTS = {
    "TrainingResult": "kflowers.training.loop",
    "train": "kflowers.training.loop",
    "Stage": "kflowers.training.loop",
    "plan_stages": "kflowers.training.loop",
    "EarlyStopping": "kflowers.training.loop",
    "RunLoop": "kflowers.training.loop",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
