"""Hook implementations of modelport-gguf: none yet (a skeleton).

This module is what the ``modelport-gguf`` entry point names. It implements no
hook and registers nothing; the modelport-gguf issue fills it in (see the
README). Like every plugin, it will import gguf inside hook bodies only.
"""
