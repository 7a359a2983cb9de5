"""Loading weights safely (`weights_only=True`, safetensors) and finding what network they belong to."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from srkit._fs import sha256_file
from srkit._optional import require
from srkit.errors import InputError, UnsupportedModelError
from srkit.models import layouts, registry, zoo
from srkit.models.base import ArchSpec, Params

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
NCNN_SUFFIX = ".param"  # with its .bin beside it
# keys under which training frameworks nest the generator's weights (BasicSR prefers the EMA copy)
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net", "generator", "netG")


@dataclass
class LoadedModel:
    module: Any  # torch.nn.Module
    spec: ArchSpec
    params: Params
    source: str
    source_sha256: str


def load_state_dict(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(state dict, metadata) from a .safetensors or a torch file, never unpickling code."""
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"checkpoint {path} is empty")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    return _load_torch(path), {}


def _load_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    st = require("safetensors.torch", extra="export", purpose="reading .safetensors")
    safe_open = require("safetensors", extra="export").safe_open
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        return st.load_file(str(path)), meta
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError variants
        raise InputError(f"{path} is not a valid .safetensors file: {exc}") from None


def _load_torch(path: Path) -> dict[str, Any]:
    torch = require("torch", extra="export", purpose="reading PyTorch checkpoints")
    import pickle

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        if refused is None:  # random or damaged bytes also end up in the unpickler
            raise InputError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                             f"{_last_line(exc)}") from None
        # weights_only refused a class or a callable: a pickled nn.Module or a file that would run code
        raise InputError(
            f"{path} holds more than weights (a pickled model or code: {refused}), and srkit loads "
            f"checkpoints with weights_only=True, which refused it without running it; "
            f"save model.state_dict() instead"
        ) from None
    except Exception as exc:  # zip errors, EOF, bad magic, decoding errors: all mean an unreadable file
        raise InputError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                         f"{_first_line(exc)}") from None
    return unwrap_state_dict(obj, path)


def _refused_global(message: str) -> str | None:
    """The class or callable weights_only refused to import, or None if the unpickler failed otherwise."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def _first_line(exc: Exception) -> str:
    text = " ".join(str(exc).split("\n")[0].split())
    return text[:200] if text else type(exc).__name__


def _last_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and "torch.load" not in line]
    return lines[-1][:200] if lines else type(exc).__name__


def unwrap_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    torch = require("torch")
    for _ in range(3):  # wrappers nest at most a couple of levels in practice
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj:
        raise UnsupportedModelError(f"{path} holds no state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UnsupportedModelError(f"{path} holds no tensors")
    return strip_prefix(tensors, "module.")


def strip_prefix(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    if all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def resolve_arch(
    sd: dict[str, Any], meta: dict[str, str], *, arch: str | None, scale: int | None, where: str
) -> tuple[ArchSpec, Params]:
    """Architecture and hyperparameters: file metadata, then detection; user overrides are checked."""
    if "srkit.arch" in meta:
        spec, params = registry.get(meta["srkit.arch"]), json.loads(meta.get("srkit.params", "{}"))
    else:
        try:
            spec, params = registry.detect(sd)
        except UnsupportedModelError:
            if arch is None:
                raise
            # --arch settles an ambiguity; it cannot make weights fit a network they do not describe
            spec = registry.get(arch)
            found = spec.detect(sd)
            if found is None:
                raise UnsupportedModelError(
                    f"--arch {arch}: the weights in {where} are not a {spec.title} checkpoint "
                    f"(first keys: {', '.join(list(sd)[:4])})"
                ) from None
            params = found
    if arch is not None and registry.get(arch).name != spec.name:
        raise InputError(f"--arch {arch} does not match the weights in {where}, which are {spec.name}")
    params = {**spec.defaults, **params}
    if scale is not None:
        if "scale" in params and params["scale"] != scale:
            raise InputError(
                f"--scale {scale} does not match the weights in {where}, which are x{params['scale']}"
            )
        params["scale"] = scale
    if "scale" not in params:
        raise InputError(f"the scale of a {spec.title} cannot be read from its weights; pass --scale N")
    if params["scale"] not in spec.scales:
        raise InputError(f"{spec.title} supports scales {spec.scales}, not x{params['scale']}")
    return spec, params


def load_model(source: str, *, arch: str | None = None, scale: int | None = None) -> LoadedModel:
    """A bundled name or a checkpoint path -> an eval-mode torch module with its description."""
    if zoo.is_bundled(source):
        entry = zoo.get(source)
        path, origin = entry.weights, f"bundled:{source}"
    else:
        # the absolute path lets the torch reference backend find the weights again (checked by sha256)
        path, origin = Path(source), str(Path(source).resolve())
        if not path.exists():
            known = ", ".join(zoo.entries()) or "none"
            raise InputError(f"{source} is neither a file nor a bundled model (bundled: {known})")
        if path.suffix.lower() == NCNN_SUFFIX:
            return load_ncnn(path, arch=arch, scale=scale)
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise InputError(f"{path}: unsupported checkpoint type {path.suffix!r}; "
                             f"use one of {', '.join((*CHECKPOINT_SUFFIXES, NCNN_SUFFIX))}")
    sd, meta = load_state_dict(path)
    sd, _layout = layouts.to_native(sd)  # original ESRGAN / EDSR / RCAN key names -> BasicSR's
    spec, params = resolve_arch(sd, meta, arch=arch, scale=scale, where=str(path))
    module = build_strict(spec, params, sd, path)
    return LoadedModel(module, spec, params, origin, sha256_file(path))


def build_strict(spec: ArchSpec, params: Params, sd: dict[str, Any], path: Path) -> Any:
    module = spec.build(params)
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UnsupportedModelError(f"{path}: the weights do not fit {spec.title} {params}: {detail}") from None
    return module.eval()


def load_ncnn(path: Path, *, arch: str | None = None, scale: int | None = None) -> LoadedModel:
    """An ncnn .param with its .bin beside it (see srkit.models.ncnn) -> the matching torch module.

    The graph names the architecture; detection from the imported weights must agree with it, so the
    module is built exactly as a BasicSR checkpoint of the same network would be.
    """
    from srkit.models import ncnn

    torch = require("torch", extra="export", purpose="importing ncnn models")
    imported = ncnn.import_ncnn(path)
    sd = {k: torch.from_numpy(v) for k, v in imported.state_dict.items()}
    spec, params = resolve_arch(sd, {}, arch=arch, scale=scale, where=str(path))
    params.update(imported.graph_params)  # what only the graph tells (e.g. the tool's padding mode)
    if spec.name != imported.arch or params["scale"] != imported.scale:
        raise UnsupportedModelError(
            f"{path}: the ncnn graph is {imported.arch} x{imported.scale} but its weights were detected as "
            f"{spec.name} x{params['scale']}"
        )
    module = build_strict(spec, params, sd, path)
    return LoadedModel(module, spec, params, str(path.resolve()), sha256_file(imported.bin_path))
