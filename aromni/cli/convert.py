"""``aromni convert META_DIR HF_DIR``: a Meta-format Chameleon / AR-Omni checkpoint -> an HF model dir."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from aromni.cli.app import app
from aromni.cli.common import WORK_FAILED, fail, out_console


@app.command()
def convert(
    meta_dir: Path = typer.Argument(..., help="Meta layout: models/<size>/consolidated*.pth + params.json, "
                                              "tokenizer/text_tokenizer.json, tokenizer/vqgan.yaml + vqgan.ckpt"),
    hf_dir: Path = typer.Argument(..., help="where the HF dir goes (config.json, safetensors, tokenizer.json, "
                                            "tokenizer/ with the VQGAN decoder)"),
    size: Optional[str] = typer.Option(None, "--size", help="models/<size> to convert when there are several "
                                                            "(7b, 30b)"),
    force: bool = typer.Option(False, "--force", help="write into a non-empty HF_DIR"),
):
    """Convert a Meta-format checkpoint (what upstream AR-Omni inference reads) to the HF format aromni's trainer
    and decoder load. Same key mapping and rotary permutation as transformers' Chameleon conversion; sharded
    (model-parallel) checkpoints are merged. `aromni infer --model META_DIR` and `model.path: META_DIR` in a train
    recipe do this on the fly into $AROMNI_CACHE (default ~/.cache/aromni); this command writes it where you say.

    Example: aromni convert /ckpt/AR-Omni-Chat /ckpt/AR-Omni-Chat-hf
    """
    from aromni.model.meta_checkpoint import MetaCheckpointError, convert_meta_checkpoint, is_meta_checkpoint

    if not is_meta_checkpoint(meta_dir):
        fail(f"{meta_dir} is not a Meta-format checkpoint (no models/<size>/params.json with consolidated*.pth)")
    if hf_dir.exists() and any(hf_dir.iterdir()) and not force:
        fail(f"{hf_dir} is not empty (use --force to write into it)")
    try:
        out = convert_meta_checkpoint(meta_dir, hf_dir, size=size)
    except MetaCheckpointError as e:
        fail(str(e))
    except (OSError, RuntimeError) as e:
        fail(f"cannot convert {meta_dir}: {e}", WORK_FAILED)
    out_console.print(f"wrote {out} (load it with --model {out}, or transformers' "
                      f"ChameleonForConditionalGeneration.from_pretrained)", highlight=False)
