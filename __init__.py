"""comfyui-spacetime: spacetime video diffusion nodes for ComfyUI.

ComfyUI imports this file; it only registers node classes (no torch, no model loading at import).
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
__version__ = "0.1.0"
