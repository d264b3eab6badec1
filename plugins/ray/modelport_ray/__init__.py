"""modelport-ray: tensor-parallel workers as Ray actors, on one machine or across a Ray cluster."""

__version__ = "0.1.0"
