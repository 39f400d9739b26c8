"""Recovery after pruning: knowledge distillation from the original model, bounded in time.

The teacher is the unpruned model, so no labels are needed: the calibration split (unlabelled arrays)
is enough. Classifiers match the teacher's softened class probabilities (KL at a temperature, scaled
by T^2 as Hinton et al. do so gradients keep their size); other outputs match by mean squared error.
A couple of hundred samples overfit quickly, so image-like inputs get mixup, applied to teacher and
student alike: half the batch blended with other samples (the teacher labels any input, so blends are
new samples for free: the usual remedy when distilling from little data). No shifts or noise: a network
trained without them answers differently under them, and the student spends itself copying those answers.
Measured on the zoo's digits (channels x0.5, 405 samples, test accuracy; teacher 98.8 %, 98.0 %, 98.5 %):
with shifts of 2 px and 2 % noise besides mixup, the MobileNetV2-like at 96x96 reached 86.6 %, at 32x32
96.3 %, the ResNet-like 97.0 %; with mixup alone 98.0 %, 98.5 %, 98.5 % (the 96x96 teacher itself agrees
with its clean answers on 91 % of the digits under that noise, 85 % under that shift). The learning rate decays on a cosine
over whichever ends first, the planned steps or the time budget (a run cut short by time still ends
at a low rate instead of mid-schedule); the budget is checked after every step, so a search can
afford one short fine-tune per candidate.

Convolutional networks train at 3e-3: at 1e-3, 30 epochs left the three models above at 95.3 %, 97.8 % and
97.8 %, well short of what the pruned widths can reach (a pruned network starts close to chance: it is
trained again, not nudged). Transformers (any model with a LayerNorm) train at 1e-4, the rate BERT and ViT fine-tuning recipes use;
at the convolutional default of 1e-3, a few steps wrecked a freshly initialised 6-layer encoder (cosine
with its teacher 0.99 after pruning one head, 0.63 after 0.5 s of distillation). Whatever the rate, a
student that ends worse on its loss, measured on the same unaugmented samples before and after, gets its
starting weights back: a short fine-tune may fail to help, never harm.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from edgekit.errors import BadInput

MIXUP = 0.5  # share of each batch blended with another sample (weight uniform in [0, 1))


@dataclass(frozen=True)
class DistillReport:
    epochs: int  # full passes over the inputs completed
    steps: int
    planned_steps: int
    seconds: float
    first_loss: float  # mean over the first epoch's steps (or fewer, if stopped sooner)
    last_loss: float  # mean over the last epoch's worth of steps
    stopped_by: Literal["epochs", "time"]
    loss: Literal["kl", "mse"]  # of the first output
    kept: bool = True  # False: the trained weights did worse than the starting ones and were put back

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DistillSettings:
    """How long and how a distillation trains: whichever of `seconds` and `epochs` ends first; `lr`
    default_lr(student) unless given; `objective` one of OBJECTIVES. Checked when the distillation starts."""

    seconds: float = 60
    epochs: int = 30
    lr: float | None = None
    temperature: float = 2.0
    batch: int = 32
    seed: int = 0
    objective: str = "auto"


def _check(inputs: dict[str, np.ndarray], settings: DistillSettings, lr: float) -> int:
    if not inputs:
        raise BadInput("distill: no inputs to train on")
    sizes = {name: len(a) for name, a in inputs.items()}
    if len(set(sizes.values())) != 1:
        raise BadInput(f"distill: inputs have different sample counts {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise BadInput("distill: the inputs hold no samples")
    checked = {"seconds": settings.seconds, "epochs": settings.epochs, "lr": lr, "temperature": settings.temperature,
               "batch": settings.batch}
    for name, value in checked.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise BadInput(f"distill: {name} must be positive, not {value!r}")
    for name, value in {"epochs": settings.epochs, "batch": settings.batch}.items():
        if not isinstance(value, int):
            raise BadInput(f"distill: {name} must be a whole number, not {value!r}")
    return n


def _mixup(x, generator):
    """For MIXUP of the samples of an N,C,H,W float batch, a blend with another sample of the batch."""
    import torch

    n = len(x)
    mix = torch.rand(n, generator=generator) * (torch.rand(n, generator=generator) < MIXUP).float()
    partner = x[torch.randperm(n, generator=generator)]
    return (1 - mix.view(-1, 1, 1, 1)) * x + mix.view(-1, 1, 1, 1) * partner


def _batches(order, batch: int) -> list:
    """Index batches of one epoch; a last batch of one sample joins the one before (BatchNorm in
    training mode cannot normalise a single sample)."""
    import torch

    chunks = list(order.split(batch))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def _flat(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _is_classifier(out) -> bool:
    return out.dim() == 2 and out.shape[1] > 1 and out.is_floating_point()


OBJECTIVES = ("auto", "mse")  # auto: KL for class scores, MSE otherwise; mse: MSE on every output


def _loss(student_out, teacher_out, temperature: float, objective: str = "auto"):
    import torch.nn.functional as F

    total = 0.0
    for s, t in zip(_flat(student_out), _flat(teacher_out), strict=True):
        if objective == "auto" and _is_classifier(t):
            log_p = F.log_softmax(s / temperature, dim=1)
            q = F.softmax(t / temperature, dim=1)
            total = total + F.kl_div(log_p, q, reduction="batchmean") * temperature**2
        else:
            total = total + F.mse_loss(s, t)
    return total


CHECK_SAMPLES = 64  # the before/after loss is measured on this many samples, unaugmented


CONV_LR, TRANSFORMER_LR = 3e-3, 1e-4


def is_transformer(model) -> bool:
    """A LayerNorm anywhere: trained at the rate of BERT and ViT fine-tuning recipes."""
    import torch

    return any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())


def default_lr(model) -> float:
    """TRANSFORMER_LR for transformers, else CONV_LR."""
    return TRANSFORMER_LR if is_transformer(model) else CONV_LR


def _check_outputs(teacher, tensors: list):
    """The teacher's outputs on the CHECK_SAMPLES the before/after loss is measured on (once per distillation:
    the teacher only reads)."""
    import torch

    with torch.no_grad():
        return teacher(*[t[:CHECK_SAMPLES] for t in tensors])


def _plain_loss(student, reference, tensors: list, temperature: float, objective: str = "auto") -> float:
    import torch

    args = [t[:CHECK_SAMPLES] for t in tensors]
    student.eval()
    with torch.no_grad():
        return float(_loss(student(*args), reference, temperature, objective))


def distill(student, teacher, inputs: dict[str, np.ndarray], settings: DistillSettings = DistillSettings()) -> DistillReport:
    """Train `student` in place to match `teacher` on `inputs` ([N, ...] arrays in the model's input
    order); returns when `settings.epochs` are done or `settings.seconds` are spent, whichever comes first
    (at least one step runs). The student comes back in eval mode; the teacher is put in eval mode and only
    read. The same seed and thread count give the same weights. `objective`: "mse" where the task metric
    compares outputs as vectors (cosine, relative MSE): the KL of a random head's near-uniform class scores
    is too flat to train on (a 2-layer encoder's QAT only ever made it worse)."""
    import torch

    lr = default_lr(student) if settings.lr is None else settings.lr
    if settings.objective not in OBJECTIVES:
        raise BadInput(f"distill: objective must be one of {', '.join(OBJECTIVES)}, not {settings.objective!r}")
    n = _check(inputs, settings, lr)
    if student is teacher:
        raise BadInput("distill: the student must be a copy, not the teacher itself")
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs.values()]
    per_epoch = len(_batches(torch.arange(n), settings.batch))
    planned = settings.epochs * per_epoch
    teacher.eval()
    reference = _check_outputs(teacher, tensors)
    before = _plain_loss(student, reference, tensors, settings.temperature, settings.objective)
    start_state = copy.deepcopy(student.state_dict())
    start = time.perf_counter()
    losses, stopped_by, target = _train(student, teacher, tensors, settings, lr, planned, start)
    kept = _plain_loss(student, reference, tensors, settings.temperature, settings.objective) <= before
    if not kept:
        student.load_state_dict(start_state)
    student.eval()
    probe = _flat(target)[0]
    return DistillReport(
        epochs=len(losses) // per_epoch,
        steps=len(losses),
        planned_steps=planned,
        seconds=round(time.perf_counter() - start, 3),
        first_loss=float(np.mean(losses[:per_epoch])),
        last_loss=float(np.mean(losses[-per_epoch:])),
        stopped_by=stopped_by,
        loss="kl" if settings.objective == "auto" and _is_classifier(probe) else "mse",
        kept=kept,
    )


def _train(student, teacher, tensors: list, settings: DistillSettings, lr: float, planned: int,
           start: float) -> tuple[list[float], str, object]:
    """The training steps: their losses, what stopped them ("epochs" or "time"), and the teacher's outputs
    on the last batch (what the report's loss kind is read from)."""
    import torch

    n = len(tensors[0])
    losses: list[float] = []
    stopped_by = "epochs"
    with torch.random.fork_rng(devices=[]):  # seeded here without moving the caller's global RNG
        torch.manual_seed(settings.seed)
        generator = torch.Generator().manual_seed(settings.seed)
        optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
        student.train()
        for _ in range(settings.epochs):
            for idx in _batches(torch.randperm(n, generator=generator), settings.batch):
                args = [t[idx] for t in tensors]
                args = [_mixup(a, generator) if a.dim() == 4 and a.is_floating_point() else a for a in args]
                with torch.no_grad():
                    target = teacher(*args)
                loss = _loss(student(*args), target, settings.temperature, settings.objective)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                done = max(len(losses) / planned, (time.perf_counter() - start) / settings.seconds)
                for group in optimizer.param_groups:  # cosine over steps or time, whichever ends first
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
                if time.perf_counter() - start >= settings.seconds and len(losses) < planned:
                    stopped_by = "time"
                    break
            if stopped_by == "time":
                break
    return losses, stopped_by, target
