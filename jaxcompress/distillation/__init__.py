"""Knowledge distillation: losses, feature capture and one fused teacher/student train step.

>>> import jaxcompress.distillation as distill
>>> loss = distill.combine(distill.kd(temperature=4.0, alpha=0.9),
...                        distill.feature_loss("Conv_1", "Conv_1", "attention", weight=100.0))
>>> sorted(loss.hparams)
['alpha', 'attention_weight', 'temperature']
"""

from jaxcompress.distillation.feature_losses import (
    KINDS,
    attention_loss,
    attention_map,
    cosine_loss,
    feature_loss,
    init_projection,
    mse_loss,
    project,
)
from jaxcompress.distillation.features import available_features, with_features
from jaxcompress.distillation.losses import (
    DistillLoss,
    Outputs,
    combine,
    kd,
    kd_loss,
    kd_objective,
    labeled_cross_entropy,
)
from jaxcompress.distillation.targets import fit_targets
from jaxcompress.distillation.step import (
    DistillState,
    DistillStep,
    cached_batches,
    make_distill_step,
    precompute_teacher_logits,
)

__all__ = [
    "fit_targets",
    "DistillLoss", "Outputs", "kd", "kd_loss", "kd_objective", "labeled_cross_entropy", "combine",
    "KINDS", "feature_loss", "mse_loss", "cosine_loss", "attention_loss", "attention_map", "init_projection",
    "project", "with_features", "available_features",
    "DistillState", "DistillStep", "make_distill_step", "precompute_teacher_logits", "cached_batches",
]
