"""comfyui-spacetime"""
