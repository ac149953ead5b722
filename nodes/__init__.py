"""ComfyUI node adapters, one module per group. Each module exports NODE_CLASS_MAPPINGS and
NODE_DISPLAY_NAME_MAPPINGS; this package merges them. Nothing heavy is imported here."""
from importlib import import_module

GROUPS = ("model_nodes", "lora_nodes", "latent_nodes", "sampler_nodes", "media_nodes", "safety_nodes",
          "provenance_nodes", "long_nodes")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _name in GROUPS:
    try:
        _mod = import_module(f".{_name}", __name__)
    except ModuleNotFoundError as _exc:          # a group not present in this checkout
        if _exc.name != f"{__name__}.{_name}":
            raise
        continue
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)
