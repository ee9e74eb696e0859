"""The trainable side of a distillation run: student + connectors -> a dict of named losses.

The teacher is deliberately not part of :class:`DistillStudent`: the trainer runs the
:class:`~segdistill.distill.teacher.FrozenTeacher` first and passes its tapped outputs in, so DDP
wraps (and all-reduces) only what trains, as in timm's distillation task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..config import DistillTerm
from ..errors import UserError
from ..models.ops import resize
from ..models.segmentor import EncoderDecoder
from .connectors import build_connector
from .losses import build_loss
from .teacher import Tap


def loss_options(term: DistillTerm) -> dict[str, object]:
    """Keyword arguments of ``term``'s loss class (only the options that loss has)."""
    kwargs: dict[str, object] = {"loss_weight": term.weight}
    if term.type in ("cwd", "kd", "dist"):
        kwargs["tau"] = term.tau
        kwargs["standardize"] = term.standardize
    if term.type == "pairwise":
        kwargs["pool_size"] = term.pool_size
    if term.type == "at":
        kwargs["p"] = term.p
    if term.type == "dist":
        kwargs["inter_weight"] = term.inter_weight
        kwargs["intra_weight"] = term.intra_weight
    if term.type == "mgd":
        kwargs["alpha_mgd"] = term.alpha_mgd
    return kwargs


#: A loss class's argument -> the :class:`DistillTerm` field (config key) that sets it, where they differ.
_ARG_TO_FIELD = {"loss_weight": "weight"}


def config_key_message(message: str, index: int, term: DistillTerm) -> str:
    """A loss's or connector's error in the words of the config: ``distill.losses.<index>.<field>``.

    The loss classes name their own arguments (``'tau'``, ``loss_weight``); the user wrote
    ``distill.losses.0.tau`` (``weight``), so the message says that key instead.
    """
    prefix = f"distill.losses.{index}"
    for arg in (*loss_options(term), "lambda_mgd"):
        field = _ARG_TO_FIELD.get(arg, arg)
        message = message.replace(f"fix '{arg}' in the loss config", f"fix config key '{prefix}.{field}'")
        message = message.replace(f": {arg} must", f": {prefix}.{field} must")
    return f"distill term {term.name!r} ({prefix}): {message}"


def align_maps(student: torch.Tensor, teacher: torch.Tensor, align: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring the two maps of a term to one spatial size as its ``align`` says (see ``DistillTerm.align``).

    ``"student"``: the teacher's map is resized to the student's ``H, W``; ``"teacher"``: the student's map
    is resized to the teacher's; both bilinear with ``align_corners=False``, in float32. ``"none"`` (or
    equal sizes) returns both untouched, and the loss refuses maps of different sizes in one line.
    """
    if align == "none" or student.shape[2:] == teacher.shape[2:]:
        return student, teacher
    if align == "student":
        return student, resize(teacher.float(), student.shape[2:])
    if align == "teacher":
        return resize(student.float(), teacher.shape[2:]), teacher
    raise ValueError(f"align must be 'none', 'student' or 'teacher', got {align!r}")


class DistillStudent(nn.Module):
    """Student, connectors and every loss; ``forward(image, label, teacher_outputs)`` -> named losses.

    Without terms (or without teacher outputs) it is plain supervised training of the student.
    Loss names: ``loss_decode``, ``loss_aux`` and one ``loss_<term name>`` per distillation term.
    """

    def __init__(self, student: EncoderDecoder, terms: Sequence[DistillTerm] = (),
                 tap_channels: Mapping[str, tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.student = student
        self.terms = list(terms)
        self.connectors = nn.ModuleDict()
        self.losses = nn.ModuleDict()
        for i, term in enumerate(self.terms):
            try:
                self.losses[term.name] = build_loss(term.type, **loss_options(term))
                if term.connector:
                    if tap_channels is None or term.name not in tap_channels:
                        raise ValueError(f"connector of {term.name!r} needs its (student, teacher) channel counts")
                    s_ch, t_ch = tap_channels[term.name]
                    self.connectors[term.name] = build_connector(term.connector, s_ch, t_ch,
                                                                 lambda_mgd=term.lambda_mgd)
            except UserError as e:
                raise UserError(config_key_message(str(e), i, term)) from None
        self.student_taps = list(dict.fromkeys(t.student for t in self.terms))
        self._tap = Tap(student, self.student_taps, "student") if self.terms else None

    def forward(self, image: torch.Tensor, label: torch.Tensor,
                teacher_outputs: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        outputs = self.student(image, with_aux=self.student.needs_aux())
        losses = self.student.loss(outputs, label)
        tapped = self._tap.pop() if self._tap is not None else {}
        if teacher_outputs is not None:
            for term in self.terms:
                s = tapped[term.student]
                if term.name in self.connectors:
                    s = self.connectors[term.name](s)
                s, t = align_maps(s, teacher_outputs[term.teacher], term.align)
                losses[f"loss_{term.name}"] = self.losses[term.name](s, t)
        return losses

    def student_state_dict(self) -> dict[str, torch.Tensor]:
        """The student alone (no connectors, no teacher): what gets exported and evaluated."""
        return self.student.state_dict()


@torch.no_grad()
def tap_channels(student: nn.Module, teacher: nn.Module, terms: Sequence[DistillTerm],
                 probe_size: tuple[int, int] = (64, 64)) -> dict[str, tuple[int, int]]:
    """Channel counts of each term's student and teacher taps, from one small probe forward."""
    def channels(model: nn.Module, names: list[str], role: str) -> dict[str, int]:
        tap = Tap(model, names, role)
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            model(torch.zeros(1, 3, *probe_size, device=device))
        finally:
            model.train(was_training)
            tap.close()
        return {k: v.shape[1] for k, v in tap.pop().items()}

    s = channels(student, [t.student for t in terms], "student")
    t = channels(teacher, [t.teacher for t in terms], "teacher")
    return {term.name: (s[term.student], t[term.teacher]) for term in terms}


def check_compatible(student: EncoderDecoder, teacher: EncoderDecoder, terms: Sequence[DistillTerm],
                     channels: Mapping[str, tuple[int, int]]) -> None:
    """User-facing checks before training starts: same classes, matching channels or a connector."""
    if student.num_classes != teacher.num_classes:
        raise UserError(f"teacher predicts {teacher.num_classes} classes but the student {student.num_classes}; "
                        "both must be built for the dataset's classes (check the teacher checkpoint)")
    for term in terms:
        s_ch, t_ch = channels[term.name]
        if s_ch != t_ch and not term.connector:
            raise UserError(f"distill term {term.name!r}: student {term.student} has {s_ch} channels, teacher "
                            f"{term.teacher} has {t_ch}; set connector: convbn for this term")
