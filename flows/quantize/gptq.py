"""GPTQ through gptqmodel (the optional `gptq` extra; CUDA only). Real code path: calibrate on
training-corpus text, quantize, save, and load back for the same measurements as every other
artifact. Without a GPU the quantize stage refuses a curriculum that asks for it (pre-flight
check), rather than failing hours in."""

from __future__ import annotations

from pathlib import Path


def gptq_available() -> str | None:
    """None when GPTQ can run here, else why not."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "torch is missing"
    if not torch.cuda.is_available():
        return "GPTQ needs a CUDA GPU"
    try:
        import gptqmodel  # noqa: F401
    except ImportError:
        return "GPTQ needs the gptq extra: pip install 'stairs[gptq]'"
    return None


def gptq_quantize(student_dir: Path, out_dir: Path, *, bits: int, group_size: int,
                  calibration: list[str], batch_size: int = 4) -> Path:
    why = gptq_available()
    if why:
        raise RuntimeError(why)
    from gptqmodel import GPTQModel, QuantizeConfig

    model = GPTQModel.load(str(student_dir), QuantizeConfig(bits=bits, group_size=group_size))
    model.quantize(calibration, batch_size=batch_size)
    out_dir = Path(out_dir)
    model.save(str(out_dir))
    return out_dir


def load_gptq(folder: Path):
    """The quantized transformers model inside gptqmodel's wrapper (generate and forward)."""
    from gptqmodel import GPTQModel

    return GPTQModel.load(str(folder)).model
