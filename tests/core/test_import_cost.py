"""import modelport, --help and plugins stay light: no torch, no transformers."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "safetensors", "huggingface_hub", "gguf", "modelscope")


def _imported_after(code: str) -> dict[str, bool]:
    probe = code + f"\nimport sys, json; print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_modelport_imports_neither_torch_nor_transformers():
    assert _imported_after("import modelport") == dict.fromkeys(HEAVY, False)


def test_public_names_and_hookspecs_stay_light():
    code = "import modelport\nmodelport.LoadOptions; modelport.hookimpl; modelport.PluginHost; modelport.resolve"
    assert _imported_after(code) == dict.fromkeys(HEAVY, False)


def test_help_and_plugins_listing_stay_light():
    code = (
        "import contextlib, io\nfrom modelport.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['plugins', '--json'])\n"
        "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
    )
    assert _imported_after(code) == dict.fromkeys(HEAVY, False)
