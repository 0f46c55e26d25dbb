"""Skip configuration of a whole model: the rule, its parameters, MoDES's per-layer alpha; saved as JSON."""
from __future__ import annotations

import dataclasses
import json
from typing import List, Optional, Sequence

from .ref import SKIP_RULES

__all__ = ["SkipConfig"]


def _number(name: str, value) -> float:
    if not isinstance(value, (str, bytes, bool)) and value is not None:
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")


@dataclasses.dataclass
class SkipConfig:
    """How a patched model skips routed experts.

    Parameters
    ----------
    rule : one of ``"none"``, ``"modes"``, ``"naee"``, ``"top_p"``, ``"min_p"``, ``"top_k"``.
    alpha : MoDES's layer importance, ``alpha[l] = (alpha_text, alpha_vision)`` per MoE layer l (in model order);
        each modality's column sums to 1 after calibration. Only for ``"modes"``.
    tau_text, tau_vision : MoDES thresholds on ``alpha * w``.
    param : the baseline's parameter (NAEE's beta, top-p's p, min-p's p, top-k's k).
    renormalize : rescale survivors to the row's original mass (None: the rule's default, True only for NAEE).
    """

    rule: str = "none"
    alpha: Optional[List[List[float]]] = None
    tau_text: float = 0.0
    tau_vision: float = 0.0
    param: float = 0.0
    renormalize: Optional[bool] = None

    def __post_init__(self):
        if self.rule not in SKIP_RULES:
            raise ValueError(f"rule: expected one of {SKIP_RULES}, got {self.rule!r}")
        if self.alpha is not None:
            self.alpha = [[float(a) for a in row] for row in self.alpha]
            bad = [row for row in self.alpha if len(row) != 2]
            if bad:
                raise ValueError(f"alpha: expected one (alpha_text, alpha_vision) pair per MoE layer, got {bad[0]}")
        if self.rule == "modes" and self.alpha is None:
            raise ValueError("alpha: rule 'modes' needs per-layer alpha (leankern.moe.calibrate_alpha), got None")
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` naming the field (``param``, ``tau_text``, ``alpha[l][m]`` ...) unless the rule's
        parameters pass the ops' own checks (:func:`leankern.moe.ops.check_skip_params`: finite values, NAEE's beta
        and top-p / min-p's p in [0, 1], top-k's k an integer >= 1) for every MoE layer. Run when the config is built
        and again by :func:`leankern.moe.hf.patch_model` / ``set_skip_config`` (a field may change in between)."""
        from .ops import check_skip_params  # here: the ops register themselves on import

        if self.rule == "none":
            return
        if self.rule == "modes":
            if self.alpha is None:
                raise ValueError("alpha: rule 'modes' needs per-layer alpha (leankern.moe.calibrate_alpha), got None")
            taus = [_number("tau_text", self.tau_text), _number("tau_vision", self.tau_vision)]
            for layer, row in enumerate(self.alpha):
                if len(row) != 2:
                    raise ValueError(f"alpha: expected one (alpha_text, alpha_vision) pair per MoE layer, got {row}")
                a = [_number(f"alpha[{layer}][{m}]", v) for m, v in enumerate(row)]
                check_skip_params("modes", a + taus,
                                  names=(f"alpha[{layer}][0]", f"alpha[{layer}][1]", "tau_text", "tau_vision"))
            return
        check_skip_params(self.rule, [_number("param", self.param)], names=("param",))

    def skip_params(self, layer: int) -> Sequence[float]:
        """The ``skip_params`` of the ops for MoE layer ``layer`` (0-based, model order)."""
        if self.rule == "none":
            return []
        if self.rule == "modes":
            if not 0 <= layer < len(self.alpha):
                raise ValueError(f"layer: expected 0 <= layer < {len(self.alpha)} (MoE layers in alpha), got {layer}")
            a_t, a_v = self.alpha[layer]
            return [a_t, a_v, self.tau_text, self.tau_vision]
        return [self.param]

    def skip_renormalize(self) -> bool:
        return self.rule == "naee" if self.renormalize is None else bool(self.renormalize)

    def to_json(self, path: Optional[str] = None) -> str:
        text = json.dumps(dataclasses.asdict(self), indent=1)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, path_or_text: str) -> "SkipConfig":
        text = path_or_text
        if not path_or_text.lstrip().startswith("{"):
            with open(path_or_text) as f:
                text = f.read()
        data = json.loads(text)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"SkipConfig JSON: unknown keys {sorted(unknown)}")
        return cls(**data)
