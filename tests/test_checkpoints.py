"""Checkpoints as people have them: each public layout is built here with the exact key names of the public
files (random weights), detected without flags, and loaded strictly; bad files give one clear error."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from srkit.cli.main import run as cli_run  # noqa: E402
from srkit.errors import InputError, SrkitError, UnsupportedModelError  # noqa: E402
from srkit.models import layouts, registry  # noqa: E402
from srkit.models.loader import load_model  # noqa: E402

RRDB_TINY = {"in_channels": 3, "out_channels": 3, "num_feat": 8, "num_block": 2, "num_grow_ch": 4}


def built(arch: str, **params: Any) -> Any:
    spec = registry.get(arch)
    torch.manual_seed(0)
    return spec.build({**spec.defaults, **params}).eval()


def same_outputs(a: Any, b: Any, channels: int = 3, size: int = 8) -> bool:
    x = torch.rand(1, channels, size, size)
    with torch.no_grad():
        return bool(torch.equal(a(x), b(x)))


# ---- foreign layouts, written with the public files' key names ---------------------------------------
def esrgan_trunk_layout(sd: dict[str, Any], conv_suffix: str) -> dict[str, Any]:
    """xinntao/ESRGAN RRDBNet_arch.py (also BSRGAN, RealSR): RRDB_trunk / trunk_conv / upconv / HRconv."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"^body\.(\d+)\.rdb(\d)\.conv(\d)\.", rf"RRDB_trunk.\1.RDB\2.conv\3{conv_suffix}.", key)
        key = key.replace("conv_body.", "trunk_conv.").replace("conv_up", "upconv")
        key = key.replace("conv_hr.", "HRconv.")
        out[key] = value
    return out


def esrgan_sequential_layout(sd: dict[str, Any], num_block: int) -> dict[str, Any]:
    """The old sequential ESRGAN files (RRDB_ESRGAN_x4.pth): model.0, model.1.sub.N.RDBk.convJ.0, ..."""
    names = {"conv_first.": "model.0.", "conv_body.": f"model.1.sub.{num_block}.", "conv_up1.": "model.3.",
             "conv_up2.": "model.6.", "conv_hr.": "model.8.", "conv_last.": "model.10."}
    out = {}
    for key, value in sd.items():
        key = re.sub(r"^body\.(\d+)\.rdb(\d)\.conv(\d)\.", r"model.1.sub.\1.RDB\2.conv\3.0.", key)
        for new, old in names.items():
            key = key.replace(new, old) if key.startswith(new) else key
        out[key] = value
    return out


def edsr_pytorch_layout(sd: dict[str, Any], num_block: int) -> dict[str, Any]:
    """sanghyun-son/EDSR-PyTorch: head/body/tail, and MeanShift 1x1 convs (rgb_range 255, std 1)."""
    out: dict[str, Any] = {}
    for key, value in sd.items():
        key = re.sub(r"^body\.(\d+)\.conv([12])\.", lambda m: f"body.{m[1]}.body.{2 * (int(m[2]) - 1)}.", key)
        key = re.sub(r"^conv_first\.", "head.0.", key)
        key = re.sub(r"^conv_after_body\.", f"body.{num_block}.", key)
        key = re.sub(r"^upsample\.", "tail.0.", key)
        key = re.sub(r"^conv_last\.", "tail.1.", key)
        out[key] = value
    mean = torch.tensor((0.4488, 0.4371, 0.4040))
    for name, sign in (("sub_mean", -1), ("add_mean", 1)):
        out[f"{name}.weight"] = torch.eye(3).view(3, 3, 1, 1)
        out[f"{name}.bias"] = sign * 255 * mean
    return out


def rcan_original_layout(sd: dict[str, Any], num_group: int, num_block: int) -> dict[str, Any]:
    """yulunzhang/RCAN: head/body/tail, body.G.body.B.body.{0,2}, CALayer conv_du.{0,2}, group tail conv."""
    out: dict[str, Any] = {}
    rules = [
        (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.([02])\.", r"body.\1.body.\2.body.\3."),
        (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.1\.",
         r"body.\1.body.\2.body.3.conv_du.0."),
        (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.3\.",
         r"body.\1.body.\2.body.3.conv_du.2."),
        (r"^body\.(\d+)\.conv\.", rf"body.\1.body.{num_block}."),
        (r"^conv_first\.", "head.0."), (r"^conv_after_body\.", f"body.{num_group}."),
        (r"^upsample\.", "tail.0."), (r"^conv_last\.", "tail.1."),
    ]
    for key, value in sd.items():
        for pattern, repl in rules:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    mean = torch.tensor((0.4488, 0.4371, 0.4040))
    out["sub_mean.weight"], out["sub_mean.bias"] = torch.eye(3).view(3, 3, 1, 1), -255 * mean
    out["add_mean.weight"], out["add_mean.bias"] = torch.eye(3).view(3, 3, 1, 1), 255 * mean
    return out


@pytest.mark.parametrize("conv_suffix", ["", ".0"])
def test_esrgan_trunk_layout(tmp_path: Path, conv_suffix: str) -> None:
    native = built("rrdbnet", scale=4, **RRDB_TINY)
    path = tmp_path / "RRDB_ESRGAN_x4.pth"
    torch.save(esrgan_trunk_layout(native.state_dict(), conv_suffix), path)
    loaded = load_model(str(path))
    assert loaded.spec.name == "rrdbnet"
    assert loaded.params == {**RRDB_TINY, "scale": 4}
    assert same_outputs(loaded.module, native)


def test_esrgan_sequential_layout(tmp_path: Path) -> None:
    native = built("rrdbnet", scale=4, **RRDB_TINY)
    sd = esrgan_sequential_layout(native.state_dict(), RRDB_TINY["num_block"])
    assert {"model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight", "model.1.sub.2.weight", "model.3.weight",
            "model.6.weight", "model.8.weight", "model.10.weight"} <= set(sd)
    path = tmp_path / "old_esrgan.pth"
    torch.save(sd, path)
    loaded = load_model(str(path))
    assert (loaded.spec.name, loaded.params["scale"], loaded.params["num_block"]) == ("rrdbnet", 4, 2)
    assert same_outputs(loaded.module, native)


def test_basicsr_wrappers_module_prefix_and_ema(tmp_path: Path) -> None:
    """Real-ESRGAN x2plus as BasicSR saves it: {'params_ema': ..., 'params': ...}; the EMA copy wins."""
    ema = built("rrdbnet", scale=2, **RRDB_TINY)
    torch.manual_seed(1)
    plain = registry.get("rrdbnet").build({**RRDB_TINY, "scale": 2})
    path = tmp_path / "RealESRGAN_x2plus.pth"
    torch.save({"params_ema": {f"module.{k}": v for k, v in ema.state_dict().items()},
                "params": plain.state_dict()}, path)
    loaded = load_model(str(path))
    assert (loaded.spec.name, loaded.params["scale"]) == ("rrdbnet", 2)
    assert loaded.module.conv_first.in_channels == 12  # pixel-unshuffle by 2 in front
    assert same_outputs(loaded.module, ema)


def test_safetensors(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    native = built("srvgg", scale=4, num_feat=8, num_conv=3)
    path = tmp_path / "realesr-animevideov3.safetensors"
    safetensors_torch.save_file(native.state_dict(), str(path))
    loaded = load_model(str(path))
    assert loaded.spec.name == "srvgg" and loaded.params["num_conv"] == 3
    assert loaded.params["act_type"] == "prelu"
    assert same_outputs(loaded.module, native)


def test_edsr_original_layout(tmp_path: Path) -> None:
    native = built("edsr", scale=3, num_feat=16, num_block=2)
    path = tmp_path / "edsr_baseline_x3.pt"
    torch.save(edsr_pytorch_layout(native.state_dict(), 2), path)
    loaded = load_model(str(path))
    assert loaded.spec.name == "edsr"
    assert (loaded.params["scale"], loaded.params["num_block"], loaded.params["res_scale"]) == (3, 2, 1.0)
    assert same_outputs(loaded.module, native)


def test_rcan_original_layout(tmp_path: Path) -> None:
    native = built("rcan", scale=2, num_feat=16, num_group=2, num_block=3, squeeze_factor=4)
    path = tmp_path / "RCAN_BIX2.pt"
    torch.save(rcan_original_layout(native.state_dict(), 2, 3), path)
    loaded = load_model(str(path))
    assert loaded.spec.name == "rcan"
    assert {k: loaded.params[k] for k in ("scale", "num_group", "num_block", "squeeze_factor")} == {
        "scale": 2, "num_group": 2, "num_block": 3, "squeeze_factor": 4}
    assert same_outputs(loaded.module, native)


def test_full_size_defaults_detect_exactly() -> None:
    """The released configurations, by shapes alone (meta tensors: no memory, no init time)."""
    cases = {
        "rrdbnet": {"scale": 4},  # Real-ESRGAN x4plus: 23 blocks, 64 feat, 32 growth
        "srvgg": {"scale": 4},  # realesr-animevideov3: 64 feat, 16 convs, PReLU
        "edsr": {"scale": 4, "num_feat": 256, "num_block": 32, "res_scale": 0.1},  # EDSR full
        "rcan": {"scale": 4},
        "rdn": {"scale": 4},
        "srresnet": {"scale": 4},
    }
    for arch, extra in cases.items():
        spec = registry.get(arch)
        with torch.device("meta"):
            module = spec.build({**spec.defaults, **extra})
        found, params = registry.detect(module.state_dict())
        assert found.name == arch
        assert params == {**spec.defaults, **extra}


def test_no_ambiguity_with_the_small_models() -> None:
    for arch in ("espcn", "srcnn", "fsrcnn", "vdsr"):
        spec = registry.get(arch)
        module = spec.build({**spec.defaults, "scale": 3})
        assert registry.detect(module.state_dict())[0].name == arch


def test_layouts_leave_native_files_alone() -> None:
    sd = built("edsr", scale=2, num_feat=16, num_block=2).state_dict()
    assert layouts.to_native(sd) == (sd, None)


# ---- overrides and mismatches ------------------------------------------------------------------------
@pytest.fixture
def rrdb_x4(tmp_path: Path) -> Path:
    path = tmp_path / "x4.pth"
    torch.save(built("rrdbnet", scale=4, **RRDB_TINY).state_dict(), path)
    return path


def test_arch_and_scale_overrides(rrdb_x4: Path) -> None:
    assert load_model(str(rrdb_x4), arch="rrdbnet", scale=4).params["scale"] == 4
    with pytest.raises(InputError, match=r"--arch edsr .* which are rrdbnet"):
        load_model(str(rrdb_x4), arch="edsr")
    with pytest.raises(InputError, match=r"--scale 2 .* which are x4"):
        load_model(str(rrdb_x4), scale=2)


def test_arch_given_for_weights_of_no_known_arch(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2)).state_dict(), path)
    with pytest.raises(UnsupportedModelError, match=r"--arch rrdbnet: .* not a RRDBNet"):
        load_model(str(path), arch="rrdbnet")


def test_scale_not_in_weights_needs_scale(tmp_path: Path) -> None:
    path = tmp_path / "vdsr.pth"
    torch.save(built("vdsr", scale=2, num_feat=8, num_layers=4).state_dict(), path)
    with pytest.raises(InputError, match="--scale"):
        load_model(str(path))
    assert load_model(str(path), scale=3).params["scale"] == 3


# ---- bad files: one clear error, through the API and the CLI -----------------------------------------
class Exploit:
    """Unpickling this would create a file: the load must refuse before running it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def bad_checkpoint(kind: str, folder: Path) -> tuple[Path, type[SrkitError], str]:
    path = folder / f"{kind}.pth"
    if kind == "corrupt":
        path.write_bytes(os.urandom(4096))
        return path, InputError, "not a readable PyTorch checkpoint"
    if kind == "truncated":
        torch.save(built("srvgg", scale=2, num_feat=8, num_conv=2).state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, InputError, "truncated or corrupt"
    if kind == "foreign":
        classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                         torch.nn.Linear(8, 10))
        torch.save(classifier.state_dict(), path)
        return path, UnsupportedModelError, "supported: .*rrdbnet.*srvgg"
    if kind == "wrong-scale":  # a compact model whose last conv means x5: not a scale SRVGG supports here
        torch.save(built("srvgg", scale=5, num_feat=8, num_conv=2).state_dict(), path)
        return path, InputError, "not x5"
    if kind == "pickled-module":
        torch.save(built("srvgg", scale=2, num_feat=8, num_conv=2), path)
        return path, InputError, "more than weights"
    if kind == "code":
        torch.save({"params": Exploit(folder / "MARKER")}, path)
        return path, InputError, "more than weights"
    raise AssertionError(kind)


BAD = ["corrupt", "truncated", "foreign", "wrong-scale", "pickled-module", "code"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_checkpoints(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, error, message = bad_checkpoint(kind, tmp_path)
    with pytest.raises(error, match=message):
        load_model(str(path))
    out = tmp_path / "x.onnx"
    assert cli_run(["export", str(path), "-o", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("srkit: error:"), lines
    assert not out.exists()
    assert not (tmp_path / "MARKER").exists()  # nothing in the file ran


def test_code_pickle_refused_by_the_real_command(tmp_path: Path) -> None:
    """The same through `python -m srkit`, in a fresh process."""
    import subprocess
    import sys

    path, _, _ = bad_checkpoint("code", tmp_path)
    out = tmp_path / "x.onnx"
    proc = subprocess.run([sys.executable, "-m", "srkit", "export", str(path), "-o", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("srkit: error:") and "weights_only" in lines[0]
    assert not out.exists() and not (tmp_path / "MARKER").exists()
