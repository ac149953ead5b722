"""The one place that talks to ComfyUI: output folders, progress bars with cancellation, model management,
model folders. Every ComfyUI import is lazy; outside ComfyUI (headless runner, CLI, tests) the same functions fall
back to small headless equivalents.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Callable, Optional

_headless_cancel = threading.Event()
_progress_hook: Optional[Callable[[int, int, str], None]] = None


def in_comfy() -> bool:
    """True when running inside a ComfyUI server (its modules are already imported)."""
    return "comfy.model_management" in sys.modules and "folder_paths" in sys.modules


def _folder_paths():
    import folder_paths  # noqa: WPS433 (ComfyUI module)
    _register_model_folders(folder_paths)
    return folder_paths


# Our folder keys and the older names of the same folders: ComfyUI before mid-2024 has no "diffusion_models" and
# "text_encoders" keys (it calls those folders "unet" and "clip"), and newer releases list both folders per key.
_FOLDER_NAMES = {"diffusion_models": ("diffusion_models", "unet"), "text_encoders": ("text_encoders", "clip"),
                 "vae": ("vae",), "loras": ("loras",)}


def _register_model_folders(fp):
    """Add any of our model folder keys this ComfyUI lacks (idempotent), so lookups never hit a KeyError."""
    table = fp.folder_names_and_paths
    for key, names in _FOLDER_NAMES.items():
        if key not in table:
            table[key] = ([os.path.join(fp.models_dir, n) for n in names], set(fp.supported_pt_extensions))


def output_directory() -> Path:
    if in_comfy():
        return Path(_folder_paths().get_output_directory())
    return Path(os.environ.get("SPACETIME_OUTPUT_DIR", "output")).absolute()


def temp_directory() -> Path:
    if in_comfy():
        return Path(_folder_paths().get_temp_directory())
    d = Path(os.environ.get("SPACETIME_TEMP_DIR", output_directory() / ".temp"))
    return d


def input_directory() -> Path:
    if in_comfy():
        return Path(_folder_paths().get_input_directory())
    return Path(os.environ.get("SPACETIME_INPUT_DIR", "input")).absolute()


class Interrupted(RuntimeError):
    """Raised when the user cancels (headless: ``request_cancel()``)."""


def request_cancel():
    _headless_cancel.set()


def clear_cancel():
    _headless_cancel.clear()


def check_interrupted():
    """Raise if the user asked to stop (ComfyUI's Cancel button, or ``request_cancel()`` headless)."""
    if in_comfy():
        import comfy.model_management as mm
        mm.throw_exception_if_processing_interrupted()
    elif _headless_cancel.is_set():
        _headless_cancel.clear()
        raise Interrupted("cancelled")


def set_progress_hook(hook: Optional[Callable[[int, int, str], None]]):
    """Headless: a function (done, total, label) called on every progress update (the CLI draws a bar with it)."""
    global _progress_hook
    _progress_hook = hook


class Progress:
    """A progress bar for one node's work; every update also checks for cancellation."""

    def __init__(self, total: int, label: str = ""):
        self.total, self.label, self.done = max(1, int(total)), label, 0
        self._bar = None
        if in_comfy():
            import comfy.utils
            self._bar = comfy.utils.ProgressBar(self.total)

    def update(self, n: int = 1, preview=None):
        self.done = min(self.total, self.done + n)
        if self._bar is not None:
            if preview is not None:
                self._bar.update_absolute(self.done, self.total, preview)
            else:
                self._bar.update_absolute(self.done, self.total)
        elif _progress_hook is not None:
            _progress_hook(self.done, self.total, self.label)
        check_interrupted()


# ----------------------------------------------------------------------------------------------------------------------
# Model folders and the shared model
# ----------------------------------------------------------------------------------------------------------------------

MODEL_FOLDERS = {                      # ComfyUI folder key -> what we look for there
    "diffusion_models": "DiT checkpoints (Wan native / ComfyUI repackaged / diffusers; bf16, fp16, fp8, GGUF)",
    "vae": "Wan 2.1 / 2.2 VAE files",
    "text_encoders": "umT5-XXL encoder weights and tokenizer.json",
    "loras": "LoRA files for the DiT",
}
# Files ComfyUI's own folder lists leave out (its extension sets are shared with core loaders, so we add ours here
# rather than to its sets): tokenizers next to text encoders, GGUF DiTs.
_EXTRA_FILES = {"text_encoders": ("tokenizer.json",), "diffusion_models": ("*.gguf",)}
_models: dict = {}
_models_lock = threading.Lock()
_patchers: dict = {}


def list_model_files(folder: str) -> list[str]:
    """Files in one of ComfyUI's model folders (empty headless unless SPACETIME_MODELS_DIR/<folder> exists)."""
    if in_comfy():
        fp = _folder_paths()
        names = list(fp.get_filename_list(folder))
        for pattern in _EXTRA_FILES.get(folder, ()):
            names += [n for n in _files_matching(fp.get_folder_paths(folder), pattern) if n not in names]
        return sorted(names)
    root = os.environ.get("SPACETIME_MODELS_DIR")
    if not root or not (Path(root) / folder).is_dir():
        return []
    base = Path(root) / folder
    return sorted(str(p.relative_to(base)) for p in base.rglob("*")
                  if p.suffix in (".safetensors", ".pth", ".pt", ".json", ".gguf") and p.is_file())


def _files_matching(dirs, pattern: str) -> list[str]:
    out = []
    for d in dirs:
        base = Path(d)
        if base.is_dir():
            out += [str(p.relative_to(base)) for p in base.rglob(pattern)]
    return out


def model_file_path(folder: str, name: str) -> Path:
    if in_comfy():
        fp = _folder_paths()
        for d in fp.get_folder_paths(folder):
            p = Path(d) / name
            if p.exists():
                return p
        return Path(fp.get_full_path_or_raise(folder, name))
    root = os.environ.get("SPACETIME_MODELS_DIR")
    p = Path(root or ".") / folder / name
    if not p.exists():
        raise ValueError(f"{folder} file {name!r} not found (looked in {p.parent})")
    return p


def get_model(preset: str, dit=None, vae=None, text_encoder=None, tokenizer=None, dtype="fp32", device="auto",
              dit_low_noise=None):
    """The shared model bundle for these files/settings: built once, then the same object for every node and
    every run. Inside ComfyUI parts live on the offload device and move to the GPU through model management.
    ``dit_low_noise``: the low-noise expert of a two-expert model (Wan 2.2 A14B)."""
    from ..model.pipeline import Spacetime
    if in_comfy():
        import comfy.model_management as mm
        load_dev = mm.unet_offload_device() if device == "auto" else device
    else:
        load_dev = device
    key = (preset, str(dit), str(vae), str(text_encoder), str(tokenizer), dtype, str(load_dev), str(dit_low_noise))
    with _models_lock:
        if key not in _models:
            _models[key] = Spacetime.load(preset, dit=dit, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                          dtype=dtype, device=load_dev, dit_low_noise=dit_low_noise)
        return _models[key]


DIT_PARTS = ("dit", "dit_low")          # the DiT, or the high- and low-noise experts of a two-expert model


def use(bundle, part: str):
    """Make a part ready on its compute device and return it (ComfyUI: through a ModelPatcher and
    ``load_models_gpu``, so it is offloaded with everything else when memory is needed; a DiT part (either expert of
    a pair) of a bundle with LoRAs through a clone of that part's patcher carrying them, so they come off again when
    another bundle runs)."""
    if part in DIT_PARTS and in_comfy():
        import comfy.model_management as mm
        mm.load_models_gpu([_dit_patcher(bundle, part)])
        return getattr(bundle, part)             # the run-time share of the LoRAs is attached here
    module = getattr(bundle, {"text": "text_encoder"}.get(part, part))
    if not in_comfy():
        return module
    import comfy.model_management as mm
    mm.load_models_gpu([_patcher(module, part)])
    return module


def _patcher(module, part: str):
    import comfy.model_management as mm
    import comfy.model_patcher
    patcher = _patchers.get(id(module))
    if patcher is None:
        compute = mm.text_encoder_device() if part == "text" else (
            mm.vae_device() if part == "vae" else mm.get_torch_device())
        patcher = comfy.model_patcher.ModelPatcher(_holder(module), load_device=compute,
                                                   offload_device=mm.unet_offload_device())
        _patchers[id(module)] = patcher
    return patcher


def _dit_patcher(bundle, part: str):
    """ComfyUI: the patcher that runs a DiT part of this bundle. LoRA changes to dense weights become patches on a
    clone of the part's ModelPatcher (ComfyUI applies them when it loads the model and restores the weights when it
    unloads or switches clones); changes to quantised weights (and unmerged mode) run as forward hooks, attached by
    the bundle itself."""
    bundle.host_merges_loras = True              # before the part is built: the bundle must not merge itself
    module = bundle.base_dit(part)
    patcher = _patcher(module, part)
    specs = bundle.lora_specs(part)
    if specs:
        key = (id(module), specs, bundle.lora_mode)
        clone = _patchers.get(key)
        if clone is None:
            clone = _lora_clone(patcher, module, bundle, part)
            _patchers[key] = clone
        patcher = clone
    return patcher


def _lora_clone(patcher, module, bundle, part: str):
    import inspect
    import comfy.lora
    from ..model.lora import LoraError, comfy_patch_dict, plan
    merged, _ = plan(module, bundle.lora_changes(module, part), bundle.lora_mode)
    clone = patcher.clone()
    quiet = "log_missing" in inspect.signature(comfy.lora.load_lora).parameters
    for strength, lora_sd, to_load, diffs in comfy_patch_dict(module, merged, prefix="inner."):
        patches = dict(diffs)
        if lora_sd:
            low = comfy.lora.load_lora(lora_sd, to_load, log_missing=False) if quiet else \
                comfy.lora.load_lora(lora_sd, to_load)
            if set(low) != set(to_load.values()):
                lost = sorted(set(to_load.values()) - set(low))
                raise LoraError(f"ComfyUI did not take the LoRA patches for {', '.join(lost[:6])}")
            patches.update(low)
        added = set(clone.add_patches(patches, strength))
        if added != set(patches):
            missing = sorted(set(patches) - added)[:6]
            raise LoraError(f"ComfyUI's model patcher has no weights named {', '.join(missing)}")
    return clone


def release(bundle, part: str):
    """Take a loaded part off its compute device now (ComfyUI: unload its ModelPatcher, the LoRA clone for a DiT
    part of a bundle with LoRAs), e.g. the high-noise expert when the low-noise one takes over. Headless the
    pipeline moves parts itself: nothing to do."""
    module = bundle.loaded_parts().get(part)
    if not in_comfy() or module is None:
        return
    patcher = _dit_patcher(bundle, part) if part in DIT_PARTS else _patchers.get(id(module))
    import comfy.model_management as mm
    for loaded in list(mm.current_loaded_models):
        if getattr(loaded, "model", None) is patcher:
            try:
                loaded.model_unload()
            except (AttributeError, TypeError):      # another ComfyUI release: leave it to model management
                return
            mm.current_loaded_models.remove(loaded)
            mm.soft_empty_cache()
            return


def _holder(module):
    """The module ModelPatcher manages: a bare torch module with ours as its only child. ModelPatcher keeps its
    bookkeeping as plain attributes of the model it manages (ComfyUI 0.3.x assigns ``model.device``,
    ``model.model_lowvram``, ...), and our modules expose ``device`` as a read-only property; moving the holder
    moves our module. The holder's class takes our module's class name, so ComfyUI's log names the real model."""
    import torch
    cls = type(type(module).__name__, (torch.nn.Module,), {"__doc__": _holder.__doc__})
    holder = cls()
    holder.add_module("inner", module)
    first = next(module.parameters(), None)
    holder.device = first.device if first is not None else None
    return holder


def free_memory():
    if in_comfy():
        import comfy.model_management as mm
        mm.soft_empty_cache()
