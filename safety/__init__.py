"""Safety: a prompt classifier that runs before any sampling and a frame classifier that reviews every generated
frame before anyone sees it, both driven by one policy file.

    from spacetime.safety import check_prompt, check_frames
    verdict = check_prompt("a killer whale jumps at sunset")     # .blocked, .summary(), .to_dict()
    report = check_frames(frames)                                # frames [T, H, W, C], float 0..1 or uint8

Parts: ``policy`` (policy.toml, user overrides), ``normalize`` (undoing spelling tricks), ``lexical`` (terms and
term combinations), ``semantic`` (MiniLM sentence embeddings against exemplars), ``prompt`` (the decision),
``frames`` (ONNX image classifiers), ``eval`` (the labelled prompt evaluation). Importing this package is cheap:
torch and onnxruntime are imported when a check first needs them.
"""

__all__ = ["check_prompt", "check_frames", "load_policy", "PromptVerdict", "FrameReport", "PromptBlockedError",
           "FramesWithheldError", "FrameReview", "OnnxImageClassifier", "default_classifiers", "PolicyError"]

_WHERE = {"check_prompt": "prompt", "PromptVerdict": "prompt", "PromptBlockedError": "prompt",
          "check_frames": "frames", "FrameReport": "frames", "FramesWithheldError": "frames",
          "FrameReview": "frames", "OnnxImageClassifier": "frames", "default_classifiers": "frames",
          "load_policy": "policy", "PolicyError": "policy"}


def __getattr__(name):
    if name in _WHERE:
        from importlib import import_module
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(name)
