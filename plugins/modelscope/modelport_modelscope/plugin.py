"""Hook implementations of modelport-modelscope: none yet (a skeleton).

This module is what the ``modelport-modelscope`` entry point names. It implements no
hook and registers nothing; the modelport-modelscope issue fills it in (see the
README). Like every plugin, it will import modelscope inside hook bodies only.
"""
