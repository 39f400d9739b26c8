"""edgekit: find the fastest version of a model that still meets its budget on a device, and ship it."""

__version__ = "0.1.0"
