"""Hook implementations of modelport-cuda: none yet (a skeleton).

This module is what the ``modelport-cuda`` entry point names. It implements no
hook and registers nothing; the modelport-cuda issue fills it in (see the
README). Like every plugin, it will import torch inside hook bodies only.
"""
