"""comfyui-spacetime: spacetime video diffusion nodes for ComfyUI.

ComfyUI imports this file; it only registers node classes (no torch, no model loading at import).
"""
# pytest imports this file on its own, with no parent package, when the checkout's folder name is not an identifier
# (e.g. comfyui-spacetime); ComfyUI and `import spacetime` always import it as a package.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
__version__ = "0.1.0"
