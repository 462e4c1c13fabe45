"""One record per optimizer step: metrics.jsonl (always), TensorBoard (when installed), and the console."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def trim_metrics(path: Path, last_step: int) -> None:
    """A killed run may have logged steps after its last checkpoint; the resumed run logs them again."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= last_step]
    path.write_text("".join(ln + "\n" for ln in keep))


class MetricsSink:
    def __init__(self, out: Path, resumed_step: int, console, progress: bool, total: int):
        self.path = out / "metrics.jsonl"
        if resumed_step:
            trim_metrics(self.path, resumed_step)
        elif self.path.exists():
            self.path.unlink()
        self.f = self.path.open("a")
        self.tb = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tensorboard"))
        self.console = console
        self.bar = None
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), TextColumn("{task.description}"), console=console)
            self.task = self.bar.add_task("", total=total, completed=resumed_step)
            self.bar.start()

    def write(self, rec: dict, show: bool) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, rec["step"])
        img = "-" if rec["ce_image"] is None else f"{rec['ce_image']:.3f}"
        text = (f"loss {rec['loss']:.4f} ntp {rec['ntp']:.4f} pl {rec['perceptual']:.4f} "
                f"({rec['perceptual_positions']} pos) img {img} lr {rec['lr']:.2e}")
        if self.bar is not None:
            self.bar.update(self.task, completed=rec["step"], description=text)
        elif show:
            self.console.print(f"step {rec['step']}: {text} ({rec['tokens_per_s']:.0f} tok/s)", highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.tb is not None:
            self.tb.close()
        self.f.close()
