"""Provenance: an invisible watermark in every frame, a C2PA-signed MP4, and a detector for both.

    from spacetime.provenance import stamp_video, verify_file, format_report
    info = stamp_video(frames, "out.mp4", fps=16, generation={"model": "toyworld", "seed": 7})
    print(format_report(verify_file(info["path"])))

Parts: ``watermark`` (the scheme, numpy only), ``video`` (PyAV encode / decode), ``identity`` (signing certificate
and key), ``manifest`` (c2pa-python), ``stamp`` (write), ``verify`` (read). Importing this package is cheap: PyAV,
c2pa and cryptography are imported when first used.
"""

__all__ = ["stamp_video", "verify_file", "format_report", "embed_watermark", "detect_watermark",
           "signing_identity", "config_dir"]


def __getattr__(name):
    if name == "stamp_video":
        from .stamp import stamp_video
        return stamp_video
    if name in ("verify_file", "format_report"):
        from . import verify
        return getattr(verify, name)
    if name == "embed_watermark":
        from .watermark import embed_rgb
        return embed_rgb
    if name == "detect_watermark":
        from .watermark import detect_rgb
        return detect_rgb
    if name in ("signing_identity", "config_dir"):
        from . import identity
        return getattr(identity, name)
    raise AttributeError(name)
