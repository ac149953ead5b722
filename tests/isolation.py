"""Test folders and settings of a test's own."""


def isolate_dirs(tmp_path, tmp_path_factory, monkeypatch, config_name):
    """Output and temp folders of the test's own, a config folder shared by the module (``config_name``), and no
    signing or safety settings from the environment: the folders as a dict."""
    out = tmp_path / "output"
    out.mkdir()
    monkeypatch.setenv("SPACETIME_OUTPUT_DIR", str(out))
    monkeypatch.setenv("SPACETIME_TEMP_DIR", str(tmp_path / "temp"))
    monkeypatch.setenv("SPACETIME_CONFIG_DIR", str(tmp_path_factory.getbasetemp() / config_name))
    for var in ("SPACETIME_SIGN_CERT", "SPACETIME_SIGN_KEY", "SPACETIME_TRUST_ANCHORS", "SPACETIME_SAFETY_POLICY"):
        monkeypatch.delenv(var, raising=False)
    return {"output": out, "temp": tmp_path / "temp"}
