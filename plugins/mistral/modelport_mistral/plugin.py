"""Hook implementations of modelport-mistral: none yet (a skeleton).

This module is what the ``modelport-mistral`` entry point names. It implements no
hook and registers nothing; the modelport-mistral issue fills it in (see the
README). Like every plugin, it will import mistral-common inside hook bodies only.
"""
