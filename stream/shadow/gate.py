"""Whether a candidate may go live: enough shadowing, and a comparison within its thresholds
(TECAFLOW_GATE_*). What it refuses is said in words, so that `--force` can say what it overrides."""
from __future__ import annotations

from dataclasses import dataclass

from stream.config import Settings


@dataclass(frozen=True)
class Thresholds:
    min_segments: int = Settings.gate_min_segments
    min_shadow_s: float = Settings.gate_min_shadow_s
    max_wasserstein: float = Settings.gate_max_wasserstein
    max_psi: float = Settings.gate_max_psi
    max_mae: float = Settings.gate_max_mae
    max_failure_rate: float = Settings.gate_max_failure_rate

    @classmethod
    def of(cls, settings: Settings) -> "Thresholds":
        return cls(settings.gate_min_segments, settings.gate_min_shadow_s, settings.gate_max_wasserstein,
                   settings.gate_max_psi, settings.gate_max_mae, settings.gate_max_failure_rate)

    def limits(self) -> dict[str, float]:
        """The measures with an upper bound, as the divergence metric names them."""
        return {"wasserstein": self.max_wasserstein, "psi": self.max_psi, "mae": self.max_mae,
                "failure_rate": self.max_failure_rate}


def divergences(report: dict) -> dict[str, float]:
    """The bounded measures of a report (those it has)."""
    found = {k: report["overall"][k] for k in ("wasserstein", "psi", "mae") if k in report.get("overall", {})}
    if "calls" in report:
        found["failure_rate"] = report["calls"]["failure_rate"]
    return found


def refusals(report: dict, limits: Thresholds) -> list[str]:
    """Why the gate refuses the report's candidate (empty: it passes)."""
    if not report.get("candidate"):
        return ["no candidate is shadowing"]
    found = []
    segments = report["overall"]["segments"]
    if segments < limits.min_segments:
        found.append(f"{segments} segments compared, fewer than TECAFLOW_GATE_MIN_SEGMENTS={limits.min_segments}")
    if report["shadowed_s"] < limits.min_shadow_s:
        found.append(f"shadowed {report['shadowed_s']:.0f} s, less than TECAFLOW_GATE_MIN_SHADOW_S="
                     f"{limits.min_shadow_s:g}")
    for measure, value in divergences(report).items():
        bound = limits.limits()[measure]
        if value > bound:
            found.append(f"{measure} {value:.3f} is above TECAFLOW_GATE_MAX_{measure.upper()}={bound:g}")
    return found
