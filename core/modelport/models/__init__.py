"""Model implementations and the protocol every implementation keeps.

:mod:`modelport.models.protocol` defines what the pipeline and the executors
expect of a model class (native or backend); native implementations live
beside it and are registered through ``modelport_register_architectures``.
"""
